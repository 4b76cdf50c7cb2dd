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

/// The README is a front door, not the manual (issue 20): the rest lives under docs/.
const README_MAX_LINES: usize = 250;

#[test]
fn the_readme_is_short() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let lines = std::fs::read_to_string(root.join("README.md"))
        .unwrap()
        .lines()
        .count();
    assert!(
        lines <= README_MAX_LINES,
        "README.md has {lines} lines; keep it under {README_MAX_LINES} and move the rest to docs/"
    );
}

/// The lines of a Markdown page outside fenced code blocks.
fn prose_lines(markdown: &str) -> Vec<&str> {
    let mut fenced = false;
    let mut out = Vec::new();
    for line in markdown.lines() {
        if line.trim_start().starts_with("```") {
            fenced = !fenced;
            continue;
        }
        if !fenced {
            out.push(line);
        }
    }
    out
}

/// GitHub's anchor of a heading: lower-cased, punctuation dropped (letters, digits, `-`, `_`
/// and spaces kept), spaces turned into `-`; a repeated heading gets `-1`, `-2`, ...
fn anchors(markdown: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut seen: std::collections::HashMap<String, usize> = std::collections::HashMap::new();
    for line in prose_lines(markdown) {
        let Some(text) = line
            .strip_prefix('#')
            .map(|t| t.trim_start_matches('#'))
            .filter(|t| t.starts_with(' '))
        else {
            continue;
        };
        let slug: String = text
            .trim()
            .to_lowercase()
            .chars()
            .filter(|c| c.is_alphanumeric() || matches!(c, '-' | '_' | ' '))
            .map(|c| if c == ' ' { '-' } else { c })
            .collect();
        let n = seen.entry(slug.clone()).or_insert(0);
        out.push(if *n == 0 { slug } else { format!("{slug}-{n}") });
        *n += 1;
    }
    out
}

/// The targets of the page's links and images: `[text](target)`, `![alt](target)`,
/// `<img src="target">`, outside code blocks and inline code.
fn link_targets(markdown: &str) -> Vec<(usize, String)> {
    let mut out = Vec::new();
    for (i, line) in prose_lines(markdown).into_iter().enumerate() {
        // Inline code spans hold examples, not links.
        let prose: String = line.split('`').step_by(2).collect::<Vec<_>>().join(" ");
        let mut rest = prose.as_str();
        while let Some(at) = rest.find("](") {
            rest = &rest[at + 2..];
            let end = rest.find([')', ' ']).unwrap_or(rest.len());
            out.push((i, rest[..end].to_string()));
        }
        let mut rest = prose.as_str();
        while let Some(at) = rest.find("src=\"") {
            rest = &rest[at + 5..];
            let end = rest.find('"').unwrap_or(rest.len());
            out.push((i, rest[..end].to_string()));
        }
    }
    out
}

#[test]
fn every_relative_link_and_anchor_of_the_docs_exists() {
    let mut broken = Vec::new();
    let mut checked = 0;
    for page in pages() {
        let text = std::fs::read_to_string(&page).unwrap();
        let dir = page.parent().unwrap();
        for (_, target) in link_targets(&text) {
            if target.contains("://") || target.starts_with("mailto:") {
                continue;
            }
            checked += 1;
            let (path, anchor) = match target.split_once('#') {
                Some((p, a)) => (p, Some(a)),
                None => (target.as_str(), None),
            };
            let file = if path.is_empty() {
                page.clone()
            } else {
                dir.join(path)
            };
            if !file.exists() {
                broken.push(format!("{}: {target} (no such file)", page.display()));
                continue;
            }
            if let Some(a) = anchor {
                let heads = match std::fs::read_to_string(&file) {
                    Ok(t) if file.extension().is_some_and(|e| e == "md") => anchors(&t),
                    _ => continue,
                };
                if !heads.iter().any(|h| h == a) {
                    broken.push(format!("{}: {target} (no such heading)", page.display()));
                }
            }
        }
    }
    assert!(
        checked > 20,
        "only {checked} relative links found: is the parser broken?"
    );
    assert!(broken.is_empty(), "broken links:\n{}", broken.join("\n"));
}

#[test]
fn anchors_and_links_are_read_as_github_does() {
    let md = "# The mount: `bifs mount`\n```sh\n# a comment, not a heading\n```\n## Page cache: `--cache keep-cache` (default) vs `direct-io`\n## Tests\n## Tests\n";
    assert_eq!(
        anchors(md),
        [
            "the-mount-bifs-mount",
            "page-cache---cache-keep-cache-default-vs-direct-io",
            "tests",
            "tests-1"
        ]
    );
    let md = "see [a](docs/a.md#x) and `[not](a link)`, ![img](p.png \"t\")\n<img src=\"q.png\" alt=\"\">\n```\n[code](skipped.md)\n```\n";
    let targets: Vec<String> = link_targets(md).into_iter().map(|(_, t)| t).collect();
    assert_eq!(targets, ["docs/a.md#x", "p.png", "q.png"]);
}

/// The README's two commands exist, and the test command is what CI runs (`.ci/run`).
#[test]
fn the_readmes_two_commands_are_the_scripts_ci_runs() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let readme = std::fs::read_to_string(root.join("README.md")).unwrap();
    for script in ["scripts/demo.sh", "scripts/test.sh"] {
        assert!(
            readme
                .lines()
                .any(|l| l.starts_with(&format!("bash {script} "))),
            "README.md does not show `bash {script}`"
        );
        assert!(root.join(script).is_file(), "{script} is missing");
    }
    let ci = std::fs::read_to_string(root.join(".ci/run")).unwrap();
    assert!(
        ci.lines().any(|l| l.trim() == "exec bash scripts/test.sh"),
        ".ci/run no longer runs the README's test command:\n{ci}"
    );
}
