//! `bifs completions` and `bifs man`: generated from the clap definitions in this module's
//! parent, so they cannot drift from the options the binary takes.
//!
//! The man page is printed by the binary rather than generated at build time: a build script
//! cannot see the clap types of a binary crate without moving them into a library, and a
//! checked-in `docs/bifs.1` would go stale the day an option changes. `bifs man --dir DIR`
//! writes the pages for a package (bifs.1 and bifs-COMMAND.1).

use std::io::Write;
use std::path::Path;

use anyhow::Context;

pub fn completions(shell: clap_complete::Shell) -> anyhow::Result<()> {
    let mut cmd = super::command();
    let mut out = Vec::new();
    clap_complete::generate(shell, &mut cmd, "bifs", &mut out);
    std::io::stdout()
        .lock()
        .write_all(&out)
        .context("writing the completion script")
}

pub fn man(dir: Option<&Path>) -> anyhow::Result<()> {
    let cmd = super::command();
    match dir {
        None => {
            let mut out = Vec::new();
            clap_mangen::Man::new(cmd)
                .render(&mut out)
                .context("rendering the man page")?;
            std::io::stdout()
                .lock()
                .write_all(&out)
                .context("writing the man page")
        }
        Some(dir) => {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
            clap_mangen::generate_to(cmd, dir)
                .with_context(|| format!("writing the man pages into {}", dir.display()))
        }
    }
}
