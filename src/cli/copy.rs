//! Materializing a view into a file: written beside the destination under a temporary name,
//! synced, then renamed, so the destination is either absent or complete. The copying itself
//! (holes, SHA-512, progress, Ctrl-C) is [`bifs_node::copier`]'s.

use std::fs::OpenOptions;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};

use bifs_core::io::ReadAt;
pub use bifs_node::copier::CopyOptions;
use bifs_node::copier::{copy_view, Copied, CopyError};
pub use bifs_node::signals::Interrupted;
use bifs_node::store::atomic::sync_dir;

/// Removes the temporary file unless the copy completed.
struct TempGuard {
    path: PathBuf,
    keep: bool,
}

impl Drop for TempGuard {
    fn drop(&mut self) {
        if !self.keep {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// Refuses an existing destination unless `force`: checked before any expensive work.
pub fn check_destination(dst: &Path, force: bool) -> anyhow::Result<()> {
    if !force && dst.symlink_metadata().is_ok() {
        bail!(
            "destination {} already exists (use --force to replace it)",
            dst.display()
        );
    }
    let parent = parent_dir(dst);
    if !parent.is_dir() {
        bail!("destination directory {} does not exist", parent.display());
    }
    Ok(())
}

fn parent_dir(path: &Path) -> PathBuf {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

/// Copies all of `view` to `dst`. Returns the number of bytes written and their SHA-512.
pub fn materialize(view: &dyn ReadAt, dst: &Path, opts: &CopyOptions) -> anyhow::Result<Copied> {
    check_destination(dst, opts.force)?;
    let name = dst
        .file_name()
        .with_context(|| format!("destination {} has no file name", dst.display()))?;
    let tmp = parent_dir(dst).join(format!(
        ".{}.bifs-tmp.{}",
        name.to_string_lossy(),
        std::process::id()
    ));
    let file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&tmp)
        .with_context(|| format!("creating {}", tmp.display()))?;
    let mut guard = TempGuard {
        path: tmp.clone(),
        keep: false,
    };
    let opts = CopyOptions {
        label: format!("{} {}", opts.label, dst.display()),
        ..opts.clone()
    };
    let copied = match copy_view(view, &file, tmp.clone(), &opts, None) {
        Ok(c) => c,
        // Kept as its own type: the CLI's exit code 130 keys on it.
        Err(CopyError::Interrupted(i)) => return Err(i.into()),
        Err(e) => return Err(e.into()),
    };
    drop(file);
    std::fs::rename(&tmp, dst).with_context(|| format!("renaming into {}", dst.display()))?;
    guard.keep = true;
    sync_dir(&parent_dir(dst));
    Ok(copied)
}
