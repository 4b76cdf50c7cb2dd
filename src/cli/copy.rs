//! Materializing a view into a file: written beside the destination under a temporary name,
//! synced, then renamed, so the destination is either absent or complete. All-zero blocks
//! are skipped, leaving holes.

use std::fs::{File, OpenOptions};
use std::io::IsTerminal;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

use crate::image::ReadAt;

/// Bytes per read from the view: large enough for the XTS engine and the page cache to
/// stream, small enough that memory stays bounded.
const CHUNK: usize = 8 * 1024 * 1024;
/// Hole granularity: a block of zeros this large is not written.
const HOLE_BLOCK: usize = 64 * 1024;

#[derive(Debug, thiserror::Error)]
#[error("interrupted")]
pub struct Interrupted;

#[derive(Debug, Clone, Default)]
pub struct CopyOptions {
    pub force: bool,
    /// What is being made, for progress and logs ("encrypt", "decrypt").
    pub label: String,
}

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

fn interrupt_flag() -> Arc<AtomicBool> {
    let flag = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        // Registration only fails for forbidden signals; these two are allowed.
        let _ = signal_hook::flag::register(sig, Arc::clone(&flag));
    }
    flag
}

/// Refuses an existing destination unless `force`: checked before any expensive work.
pub fn check_destination(dst: &Path, force: bool) -> anyhow::Result<()> {
    if !force && dst.symlink_metadata().is_ok() {
        bail!("destination {} already exists (use --force to replace it)", dst.display());
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

/// Copies all of `view` to `dst`. Returns the number of bytes written (the view's length).
pub fn materialize(view: &dyn ReadAt, dst: &Path, opts: &CopyOptions) -> anyhow::Result<u64> {
    check_destination(dst, opts.force)?;
    let name = dst
        .file_name()
        .with_context(|| format!("destination {} has no file name", dst.display()))?;
    let tmp = parent_dir(dst).join(format!(".{}.bifs-tmp.{}", name.to_string_lossy(), std::process::id()));
    let file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&tmp)
        .with_context(|| format!("creating {}", tmp.display()))?;
    let mut guard = TempGuard { path: tmp.clone(), keep: false };
    let interrupted = interrupt_flag();
    let total = view.len();
    let progress = Progress::new(total, &opts.label, dst);

    let mut buf = vec![0u8; CHUNK];
    let mut offset = 0u64;
    while offset < total {
        if interrupted.load(Ordering::Relaxed) {
            return Err(Interrupted.into());
        }
        let want = CHUNK.min((total - offset) as usize);
        let n = view
            .read_at(offset, &mut buf[..want])
            .with_context(|| format!("reading the source at offset {offset}"))?;
        if n == 0 {
            bail!("the source ended at {offset} bytes, before its announced {total}");
        }
        write_sparse(&file, &buf[..n], offset)
            .with_context(|| format!("writing {} at offset {offset}", tmp.display()))?;
        offset += n as u64;
        progress.set(offset);
    }
    file.set_len(total).with_context(|| format!("sizing {}", tmp.display()))?;
    file.sync_all().with_context(|| format!("syncing {}", tmp.display()))?;
    drop(file);
    std::fs::rename(&tmp, dst).with_context(|| format!("renaming into {}", dst.display()))?;
    guard.keep = true;
    // The rename is durable only once the directory is synced.
    if let Ok(dir) = File::open(parent_dir(dst)) {
        let _ = dir.sync_all();
    }
    progress.finish();
    Ok(total)
}

/// Writes the non-zero `HOLE_BLOCK`s of `data` at `offset`; zero blocks stay holes.
fn write_sparse(file: &File, data: &[u8], offset: u64) -> std::io::Result<()> {
    let mut pos = 0;
    while pos < data.len() {
        let end = (pos + HOLE_BLOCK).min(data.len());
        let block = &data[pos..end];
        if block.iter().any(|&b| b != 0) {
            file.write_all_at(block, offset + pos as u64)?;
        }
        pos = end;
    }
    Ok(())
}

/// A progress bar on a terminal; periodic log lines otherwise.
struct Progress {
    bar: Option<indicatif::ProgressBar>,
    total: u64,
    label: String,
    start: Instant,
    last_log: std::cell::Cell<Instant>,
}

impl Progress {
    fn new(total: u64, label: &str, dst: &Path) -> Self {
        let bar = std::io::stderr().is_terminal().then(|| {
            let bar = indicatif::ProgressBar::new(total);
            if let Ok(style) = indicatif::ProgressStyle::with_template(
                "{msg} [{bar:40}] {bytes}/{total_bytes} {bytes_per_sec} ETA {eta}",
            ) {
                bar.set_style(style.progress_chars("=> "));
            }
            bar.set_message(format!("{label} {}", dst.display()));
            bar
        });
        let now = Instant::now();
        Self { bar, total, label: label.to_string(), start: now, last_log: std::cell::Cell::new(now) }
    }

    fn set(&self, done: u64) {
        if let Some(bar) = &self.bar {
            bar.set_position(done);
        } else if self.last_log.get().elapsed() >= Duration::from_secs(5) {
            self.last_log.set(Instant::now());
            let pct = if self.total == 0 { 100 } else { done * 100 / self.total };
            tracing::info!(op = %self.label, done, total = self.total, percent = pct, "progress");
        }
    }

    fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
        let secs = self.start.elapsed().as_secs_f64();
        let mib_s = self.total as f64 / 1048576.0 / secs.max(1e-9);
        tracing::info!(op = %self.label, bytes = self.total, seconds = format!("{secs:.2}"), mib_per_s = format!("{mib_s:.0}"), "done");
    }
}
