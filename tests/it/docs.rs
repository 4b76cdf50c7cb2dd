//! The README's and the docs' command blocks that are marked runnable are run, so they cannot
//! go stale. A block is runnable when its fence says so: ```` ```sh runnable ````. Within one
//! page the blocks run in order, in one fresh directory (a later block may use what an earlier
//! one made), with `bash -euo pipefail`, `bifs` (the binary under test) first on `PATH` and
//! `$BIFS_REPO` pointing at this checkout (for `examples/`). A page whose blocks need root,
//! FUSE or system tools is run in the full tier only; one without such blocks runs everywhere.

use std::path::{Path, PathBuf};
use std::process::Command;

/// A runnable block: where it is and its text.
struct Block {
    line: usize,
    text: String,
}

/// The runnable blocks of a Markdown page.
fn runnable_blocks(markdown: &str) -> Vec<Block> {
    let mut out = Vec::new();
    let mut current: Option<Block> = None;
    for (i, line) in markdown.lines().enumerate() {
        let trimmed = line.trim_start();
        match current.as_mut() {
            None => {
                if let Some(info) = trimmed.strip_prefix("```") {
                    let words: Vec<&str> = info.split_whitespace().collect();
                    if words.first().is_some_and(|w| *w == "sh" || *w == "bash")
                        && words.contains(&"runnable")
                    {
                        current = Some(Block {
                            line: i + 1,
                            text: String::new(),
                        });
                    }
                }
            }
            Some(block) => {
                if trimmed.starts_with("```") {
                    out.extend(current.take());
                } else {
                    block.text.push_str(line);
                    block.text.push('\n');
                }
            }
        }
    }
    out
}

/// Markdown pages with runnable blocks: README.md and docs/*.md.
fn pages() -> Vec<PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut pages = vec![root.join("README.md")];
    let mut docs: Vec<PathBuf> = std::fs::read_dir(root.join("docs"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "md"))
        .collect();
    docs.sort();
    pages.extend(docs);
    pages
}

/// Commands that make a block need the full tier (root, FUSE or tools the fast tier lacks).
const FULL_TIER_WORDS: [&str; 6] = [
    "bifs mount",
    "cryptsetup",
    "qemu-img",
    "bifs verify",
    "curl",
    "bifs serve",
];

fn run_page(page: &Path) {
    let text = std::fs::read_to_string(page).unwrap();
    let blocks = runnable_blocks(&text);
    if blocks.is_empty() {
        return;
    }
    let rel = page
        .strip_prefix(env!("CARGO_MANIFEST_DIR"))
        .unwrap_or(page)
        .display()
        .to_string();
    let needs_full = blocks
        .iter()
        .any(|b| FULL_TIER_WORDS.iter().any(|w| b.text.contains(w)));
    if needs_full && crate::support::tier::skipped(&format!("root and system tools for {rel}")) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let bin_dir = Path::new(crate::support::BIFS).parent().unwrap();
    let path = format!(
        "{}:{}",
        bin_dir.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    for b in &blocks {
        let out = Command::new("bash")
            .args(["-euo", "pipefail", "-c", &b.text])
            .current_dir(dir.path())
            .env("PATH", &path)
            .env("BIFS_REPO", env!("CARGO_MANIFEST_DIR"))
            .env("BIFS_LOG", "warn")
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{rel}:{}: the block failed ({}):\n{}\n--- stdout\n{}\n--- stderr\n{}",
            b.line,
            out.status,
            b.text,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

#[test]
fn runnable_blocks_of_every_page_run() {
    let pages = pages();
    let mut runnable = 0;
    for p in &pages {
        runnable += runnable_blocks(&std::fs::read_to_string(p).unwrap()).len();
        run_page(p);
    }
    assert!(runnable > 0, "no runnable block in README.md or docs/");
}

#[test]
fn fences_are_found_with_their_lines() {
    let md = "text\n```sh runnable\necho a\n```\n```sh\nnot run\n```\n```bash runnable\necho b\necho c\n```\n";
    let blocks = runnable_blocks(md);
    assert_eq!(blocks.len(), 2);
    assert_eq!((blocks[0].line, blocks[0].text.as_str()), (2, "echo a\n"));
    assert_eq!(blocks[1].text, "echo b\necho c\n");
}
