//! The one copier: bytes from a view or a stream into an open file, sequentially. All-zero
//! blocks are skipped (holes), SHA-512 is computed over every byte as it is written (no second
//! pass), progress goes to a terminal bar or periodic log lines and to an optional callback
//! (status records), and SIGINT/SIGTERM ([`crate::signals::stop_flag`]) stop it between chunks.
//!
//! Where the bytes land (a temporary name beside the destination, `backing.tmp` in a Longhorn
//! directory) and when they are renamed into place is the caller's business: the CLI's
//! `materialize` and the Longhorn apply engine both build on [`copy_view`]/[`copy_stream`].

use std::fs::File;
use std::io::{self, IsTerminal, Read};
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use rayon::prelude::*;

use crate::signals::Interrupted;
use bifs_core::io::ReadAt;

/// Bytes per read from the view: large enough for the XTS engine and the page cache to
/// stream, small enough that memory stays bounded.
pub const CHUNK: usize = 8 * 1024 * 1024;
/// Hole granularity: a block of zeros this large (aligned) is not written. 4 KiB, as
/// backing-image-manager's copy (`IdleTimeoutCopy` skips all-zero 4 KiB reads), so a file's
/// allocated size (`realSize`) is what Longhorn's own copy of it would have.
pub const HOLE_BLOCK: usize = 4 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum CopyError {
    #[error(transparent)]
    Interrupted(#[from] Interrupted),
    #[error("reading the source at offset {offset}: {source}")]
    Read { offset: u64, source: io::Error },
    #[error("the source ended at {offset} bytes, before its announced {total}")]
    Short { offset: u64, total: u64 },
    #[error("writing {} at offset {offset}: {source}", .path.display())]
    Write {
        path: PathBuf,
        offset: u64,
        source: io::Error,
    },
    #[error(transparent)]
    Hash(#[from] bifs_sys::sha512::Sha512Error),
    #[error("syncing {}: {source}", .path.display())]
    Sync { path: PathBuf, source: io::Error },
}

/// What a copy produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Copied {
    /// Bytes written (the file's length).
    pub bytes: u64,
    /// Lower-case hex SHA-512 of all `bytes`, holes included as zeros, when asked for.
    pub sha512: Option<String>,
}

/// How a copy reports itself.
#[derive(Debug, Clone, Default)]
pub struct CopyOptions {
    /// What is being made, for progress and logs ("encrypt", "parrot").
    pub label: String,
    /// Replace an existing destination (used by `materialize`).
    pub force: bool,
    /// Compute the SHA-512 of what is written. It is the one serial stage of a copy (reading
    /// and XTS spread over the cores), so it is paid only where a checksum is wanted: Longhorn
    /// backing images always, one-shot commands on request.
    pub sha512: bool,
}

/// Called with (bytes done, total when known) after each chunk.
pub type ProgressFn<'a> = &'a mut dyn FnMut(u64, Option<u64>);

/// The write side: sequential sparse writes, hashing and progress.
struct Writer<'f, 'c> {
    file: &'f File,
    path: PathBuf,
    pos: u64,
    hasher: Option<bifs_sys::sha512::Sha512>,
    progress: Progress,
    callback: Option<ProgressFn<'c>>,
    interrupted: Arc<AtomicBool>,
}

impl<'f, 'c> Writer<'f, 'c> {
    fn new(
        file: &'f File,
        path: PathBuf,
        total: Option<u64>,
        opts: &CopyOptions,
        callback: Option<ProgressFn<'c>>,
    ) -> Result<Self, CopyError> {
        let hasher = if opts.sha512 {
            Some(bifs_sys::sha512::Sha512::new()?)
        } else {
            None
        };
        Ok(Self {
            file,
            progress: Progress::new(total, &opts.label),
            path,
            pos: 0,
            hasher,
            callback,
            interrupted: crate::signals::stop_flag(),
        })
    }

    fn check_interrupt(&self) -> Result<(), CopyError> {
        if self.interrupted.load(Ordering::Relaxed) {
            return Err(Interrupted.into());
        }
        Ok(())
    }

    fn write(&mut self, data: &[u8]) -> Result<(), CopyError> {
        if let Some(h) = self.hasher.as_mut() {
            h.update(data)?;
        }
        write_sparse(self.file, data, self.pos).map_err(|source| CopyError::Write {
            path: self.path.clone(),
            offset: self.pos,
            source,
        })?;
        self.pos += data.len() as u64;
        self.progress.set(self.pos);
        if let Some(cb) = self.callback.as_mut() {
            cb(self.pos, self.progress.total);
        }
        Ok(())
    }

    /// Sizes the file (a trailing hole is not written), syncs it and returns the digest.
    fn finish(self) -> Result<Copied, CopyError> {
        let sync_err = |source| CopyError::Sync {
            path: self.path.clone(),
            source,
        };
        self.file.set_len(self.pos).map_err(sync_err)?;
        self.file.sync_all().map_err(sync_err)?;
        self.progress.finish(self.pos);
        let sha512 = match self.hasher {
            // Lower-case hex, as Longhorn writes checksums.
            Some(h) => Some(hex::encode(h.finish()?)),
            None => None,
        };
        Ok(Copied {
            bytes: self.pos,
            sha512,
        })
    }
}

/// Pieces of a chunk that are read (and so encrypted or decrypted) in parallel: whole 4 KiB
/// sectors, and small enough that two cores split an 8 MiB chunk evenly.
pub const PIECE: usize = 1024 * 1024;

/// Chunks in flight between the reading side and the writing side: one being hashed and
/// written, one ready, one being filled. 24 MiB in all.
const BUFFERS: usize = 3;

/// Copies all of `view` into `file` (from offset 0; the file should be empty).
///
/// Two stages overlap: a reader thread fills chunk `i+1` (its 1 MiB pieces in parallel on the
/// rayon pool, so the XTS work of a transform view spreads over the cores) while this thread
/// hashes and writes chunk `i`. SHA-512 is serial by nature, so the writing side is one thread
/// and sets the pace once reading is spread out. Buffers go round between the two stages:
/// no copies besides the view's own read into them.
pub fn copy_view(
    view: &dyn ReadAt,
    file: &File,
    path: PathBuf,
    opts: &CopyOptions,
    callback: Option<ProgressFn<'_>>,
) -> Result<Copied, CopyError> {
    let total = view.len();
    let mut w = Writer::new(file, path, Some(total), opts, callback)?;
    let (full_tx, full_rx) = mpsc::sync_channel::<Result<Filled, CopyError>>(BUFFERS);
    let (free_tx, free_rx) = mpsc::sync_channel::<Vec<u8>>(BUFFERS);
    for _ in 0..BUFFERS {
        // The channel holds BUFFERS: these sends cannot block or fail.
        let _ = free_tx.send(vec![0u8; CHUNK]);
    }
    std::thread::scope(|scope| {
        scope.spawn(move || read_chunks(view, total, free_rx, full_tx));
        let mut expect = 0u64;
        let result = loop {
            if let Err(e) = w.check_interrupt() {
                break Err(e);
            }
            let Ok(next) = full_rx.recv() else {
                // The reader finished: every chunk arrived.
                break Ok(());
            };
            let filled = match next {
                Ok(f) => f,
                Err(e) => break Err(e),
            };
            debug_assert_eq!(filled.offset, expect);
            if let Err(e) = w.write(&filled.buf[..filled.len]) {
                break Err(e);
            }
            expect += filled.len as u64;
            // The reader may have stopped already (an error it sent earlier): ignore.
            let _ = free_tx.send(filled.buf);
        };
        // Dropping the receiving ends stops the reader at its next send or receive.
        drop(free_tx);
        drop(full_rx);
        result
    })?;
    w.finish()
}

/// A chunk read from the view: `buf[..len]` holds the bytes at `offset`.
struct Filled {
    offset: u64,
    buf: Vec<u8>,
    len: usize,
}

/// The reading stage of [`copy_view`]: takes empty buffers, sends them back filled, in order.
fn read_chunks(
    view: &dyn ReadAt,
    total: u64,
    free: mpsc::Receiver<Vec<u8>>,
    full: mpsc::SyncSender<Result<Filled, CopyError>>,
) {
    let mut offset = 0u64;
    while offset < total {
        let Ok(mut buf) = free.recv() else { return };
        let len = CHUNK.min((total - offset) as usize);
        let r = fill(view, offset, &mut buf[..len]).map(|()| Filled { offset, buf, len });
        let failed = r.is_err();
        if full.send(r).is_err() || failed {
            return;
        }
        offset += len as u64;
    }
}

/// Fills `buf` from `offset`, its pieces in parallel.
fn fill(view: &dyn ReadAt, offset: u64, buf: &mut [u8]) -> Result<(), CopyError> {
    let total = view.len();
    buf.par_chunks_mut(PIECE)
        .enumerate()
        .try_for_each(|(i, piece)| {
            let start = offset + (i * PIECE) as u64;
            let mut done = 0;
            while done < piece.len() {
                let at = start + done as u64;
                match view.read_at(at, &mut piece[done..]) {
                    Ok(0) => return Err(CopyError::Short { offset: at, total }),
                    Ok(n) => done += n,
                    Err(source) => return Err(CopyError::Read { offset: at, source }),
                }
            }
            Ok(())
        })
}

/// Copies `reader` to its end into `file`; `total` (when known) is only for progress.
/// Reads are gathered into whole chunks so that holes are found at the same granularity as
/// for a view.
pub fn copy_stream(
    reader: &mut dyn Read,
    total: Option<u64>,
    file: &File,
    path: PathBuf,
    opts: &CopyOptions,
    callback: Option<ProgressFn<'_>>,
) -> Result<Copied, CopyError> {
    let mut w = Writer::new(file, path, total, opts, callback)?;
    let mut buf = vec![0u8; CHUNK];
    loop {
        w.check_interrupt()?;
        let mut filled = 0;
        while filled < CHUNK {
            match reader.read(&mut buf[filled..]) {
                Ok(0) => break,
                Ok(n) => filled += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {
                    // EINTR from our own signal handler: let the check above decide.
                    w.check_interrupt()?;
                }
                Err(source) => {
                    return Err(CopyError::Read {
                        offset: w.pos + filled as u64,
                        source,
                    })
                }
            }
        }
        if filled == 0 {
            break;
        }
        w.write(&buf[..filled])?;
        if filled < CHUNK {
            break;
        }
    }
    w.finish()
}

/// Writes the non-zero `HOLE_BLOCK`s of `data` at `offset`; zero blocks stay holes. Runs of
/// non-zero blocks go out in one write.
pub(crate) fn write_sparse(file: &File, data: &[u8], offset: u64) -> io::Result<()> {
    let mut pos = 0;
    let mut run: Option<usize> = None;
    while pos < data.len() {
        let end = (pos + HOLE_BLOCK).min(data.len());
        let zero = data[pos..end].iter().all(|&b| b == 0);
        match (zero, run) {
            (false, None) => run = Some(pos),
            (true, Some(start)) => {
                file.write_all_at(&data[start..pos], offset + start as u64)?;
                run = None;
            }
            _ => {}
        }
        pos = end;
    }
    if let Some(start) = run {
        file.write_all_at(&data[start..], offset + start as u64)?;
    }
    Ok(())
}

/// A progress bar on a terminal; periodic log lines otherwise.
struct Progress {
    bar: Option<indicatif::ProgressBar>,
    total: Option<u64>,
    label: String,
    start: Instant,
    last_log: Instant,
}

impl Progress {
    fn new(total: Option<u64>, label: &str) -> Self {
        let bar = std::io::stderr().is_terminal().then(|| {
            let (bar, template) = match total {
                Some(t) => (
                    indicatif::ProgressBar::new(t),
                    "{msg} [{bar:40}] {bytes}/{total_bytes} {bytes_per_sec} ETA {eta}",
                ),
                None => (
                    indicatif::ProgressBar::new_spinner(),
                    "{msg} {spinner} {bytes} {bytes_per_sec}",
                ),
            };
            if let Ok(style) = indicatif::ProgressStyle::with_template(template) {
                bar.set_style(style.progress_chars("=> "));
            }
            bar.set_message(label.to_string());
            bar
        });
        let now = Instant::now();
        Self {
            bar,
            total,
            label: label.to_string(),
            start: now,
            last_log: now,
        }
    }

    fn set(&mut self, done: u64) {
        if let Some(bar) = &self.bar {
            bar.set_position(done);
        } else if self.last_log.elapsed() >= Duration::from_secs(5) {
            self.last_log = Instant::now();
            match self.total {
                Some(total) => {
                    let pct = (done * 100).checked_div(total).unwrap_or(100);
                    tracing::info!(op = %self.label, done, total, percent = pct, "progress");
                }
                None => tracing::info!(op = %self.label, done, "progress"),
            }
        }
    }

    fn finish(&self, done: u64) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
        let secs = self.start.elapsed().as_secs_f64();
        let mib_s = done as f64 / 1048576.0 / secs.max(1e-9);
        // The copy's own time: a key derivation before it (encrypt, decrypt) is not in it.
        tracing::info!(op = %self.label, bytes = done, copy_seconds = format!("{secs:.2}"), mib_per_s = format!("{mib_s:.0}"), "copied");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bifs_core::io::MemSource;
    use sha2::{Digest, Sha512};

    #[test]
    fn view_and_stream_agree_and_hash_once() {
        let mut data = vec![0u8; 3 * HOLE_BLOCK + 100];
        data[HOLE_BLOCK + 7] = 9;
        data[3 * HOLE_BLOCK + 50] = 1;
        let want = hex::encode(Sha512::digest(&data));
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (dir.path().join("a"), dir.path().join("b"));
        let hashed = CopyOptions {
            sha512: true,
            ..CopyOptions::default()
        };
        let fa = File::create(&a).unwrap();
        let got = copy_view(&MemSource(data.clone()), &fa, a.clone(), &hashed, None).unwrap();
        assert_eq!(
            got,
            Copied {
                bytes: data.len() as u64,
                sha512: Some(want.clone())
            }
        );
        let fb = File::create(&b).unwrap();
        let mut calls = 0;
        let mut cb = |_: u64, _: Option<u64>| calls += 1;
        let got =
            copy_stream(&mut &data[..], None, &fb, b.clone(), &hashed, Some(&mut cb)).unwrap();
        assert_eq!(got.sha512, Some(want));
        assert_eq!(calls, 1);
        assert_eq!(std::fs::read(&a).unwrap(), data);
        assert_eq!(std::fs::read(&b).unwrap(), data);
        // Not asked for, not computed: the copy is the same.
        let c = dir.path().join("c");
        let fc = File::create(&c).unwrap();
        let got = copy_view(
            &MemSource(data.clone()),
            &fc,
            c.clone(),
            &CopyOptions::default(),
            None,
        )
        .unwrap();
        assert_eq!(
            got,
            Copied {
                bytes: data.len() as u64,
                sha512: None
            }
        );
        assert_eq!(std::fs::read(&c).unwrap(), data);
    }
}
