//! Drops what the kernel cached of views whose source or Secret changed, as soon as bifs
//! hears of it: inotify on the store ([`StoreWatch`]) and the catalog's Secret-change hook,
//! turned into FUSE notifications (`FUSE_NOTIFY_INVAL_INODE` for the pages and attributes,
//! `FUSE_NOTIFY_INVAL_ENTRY` for the name) from a thread of its own. The notifications are
//! never sent from a request handler: the kernel may wait, while it drops a page, for a read
//! of that page that only a free worker can answer.
//!
//! Marking the bindings (stale; written, which fails the reads of handles opened before) is
//! done under one lock with reading the events, by the thread and by every open before it
//! binds (`Changes::catch_up`): the kernel queues a write's event before the write
//! returns, so an open never binds a version and then has an older write's event counted
//! against it.
//!
//! This is the prompt half of the page-cache rules (crate documentation); the bound inodes
//! and the per-read attribute check keep readers from mixed bytes whatever it misses or
//! however late it is.

use std::collections::BTreeSet;
use std::ffi::OsStr;
use std::os::fd::{AsFd, OwnedFd};
use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, Weak};
use std::thread::JoinHandle;
use std::time::Duration;

use bifs_k8s::SecretRef;
use bifs_node::store::layout::{Layout, IMAGES_DIR};
use bifs_node::store::{Change, Store, StoreWatch};
use fuser::{INodeNo, Notifier};
use rustix::event::{EventfdFlags, PollFd, PollFlags, Timespec};

use crate::tree::{Inodes, Node};
use crate::Shared;

/// How long the thread sleeps between looks at the Secret files when nothing wakes it.
const TICK: Duration = Duration::from_millis(500);

/// The store watch and the inode numbers waiting for the thread's notifications.
pub(crate) struct Changes {
    watch: Mutex<Option<StoreWatch>>,
    pending: Mutex<Vec<u64>>,
    /// An eventfd that wakes the thread when numbers are queued.
    wake: Option<OwnedFd>,
}

impl Changes {
    pub(crate) fn new() -> Self {
        let wake = rustix::event::eventfd(0, EventfdFlags::CLOEXEC | EventfdFlags::NONBLOCK)
            .map_err(
                |e| tracing::warn!(error = %e, "no eventfd: cache invalidation waits for its tick"),
            )
            .ok();
        Self {
            watch: Mutex::new(None),
            pending: Mutex::new(Vec::new()),
            wake,
        }
    }

    /// Applies every store change inotify has queued so far to the bindings, and queues the
    /// touched numbers for the thread.
    pub(crate) fn catch_up(&self, inodes: &Inodes, store: &Store) {
        let mut watch = self.watch.lock().unwrap_or_else(|e| e.into_inner());
        let Some(w) = watch.as_mut() else {
            return;
        };
        let changes = match w.drain() {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(error = %e, "reading inotify events failed; no longer watching the store");
                *watch = None;
                return;
            }
        };
        let touched = touched_by(inodes, store, &changes);
        drop(watch);
        if !touched.is_empty() {
            tracing::debug!(
                views = touched.len(),
                ?changes,
                "source changed: dropping the cached pages of its views"
            );
            self.push(touched);
        }
    }

    /// Watches the directories of the backing files `chain` (a view's qcow2 chain), those
    /// the store watch does not cover already.
    pub(crate) fn watch_chain(&self, chain: &[std::path::PathBuf]) {
        if chain.is_empty() {
            return;
        }
        let mut watch = self.watch.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(w) = watch.as_mut() {
            for dir in chain.iter().filter_map(|p| p.parent()) {
                w.watch_dir(dir);
            }
        }
    }

    fn push(&self, inos: Vec<u64>) {
        self.pending
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .extend(inos);
        if let Some(fd) = &self.wake {
            let _ = rustix::io::write(fd, &1u64.to_ne_bytes());
        }
    }

    fn take(&self) -> Vec<u64> {
        std::mem::take(&mut *self.pending.lock().unwrap_or_else(|e| e.into_inner()))
    }
}

/// Started once the session exists ([`crate::BifsFs::invalidator`]).
pub struct Invalidator {
    shared: Arc<Shared>,
}

impl Invalidator {
    pub(crate) fn new(shared: Arc<Shared>) -> Self {
        Self { shared }
    }

    /// Watches the store, hooks the catalog's Secret changes, and starts the thread that
    /// sends the notifications; it ends with the session.
    pub fn start(self, notifier: Notifier) -> std::io::Result<JoinHandle<()>> {
        let shared = self.shared;
        // Weak: the catalog (which keeps the hook) lives in `Shared`.
        let weak: Weak<Shared> = Arc::downgrade(&shared);
        shared.catalog.on_secrets_changed(move |changed| {
            if let Some(shared) = weak.upgrade() {
                let inos = under_secrets(&shared.inodes, changed);
                if !inos.is_empty() {
                    tracing::info!(
                        views = inos.len(),
                        "Secret changed: dropping the cached pages of its encrypt and decrypt views"
                    );
                    shared.changes.push(inos);
                }
            }
        });
        let mut poll_fd = None;
        match StoreWatch::new(shared.catalog.store()) {
            Ok(w) => {
                tracing::info!(
                    directories = w.watched(),
                    "watching the store for changes (cached view pages are dropped when a source changes)"
                );
                poll_fd = rustix::io::dup(w.as_fd()).ok();
                *shared
                    .changes
                    .watch
                    .lock()
                    .unwrap_or_else(|e| e.into_inner()) = Some(w);
            }
            Err(e) => tracing::warn!(
                error = %e,
                "cannot watch the store with inotify: cached pages of a changed source are \
                 dropped on the next read(2) instead of at once (mmap readers keep them until \
                 the kernel drops the inode)"
            ),
        }
        std::thread::Builder::new()
            .name("bifs-invalidate".into())
            .spawn(move || run(&shared, &notifier, poll_fd.as_ref()))
    }
}

fn run(shared: &Shared, notifier: &Notifier, inotify: Option<&OwnedFd>) {
    let tick = Timespec {
        tv_sec: 0,
        tv_nsec: TICK.as_nanos().try_into().unwrap_or(0),
    };
    while !shared.stopped.load(Ordering::SeqCst) {
        let mut fds: Vec<PollFd<'_>> = inotify
            .into_iter()
            .chain(shared.changes.wake.as_ref())
            .map(|fd| PollFd::new(fd, PollFlags::IN))
            .collect();
        if let Err(e) = rustix::event::poll(&mut fds, Some(&tick)) {
            if e != rustix::io::Errno::INTR {
                tracing::warn!(error = %e, "poll failed");
                std::thread::sleep(TICK);
            }
        }
        drop(fds);
        if let Some(fd) = &shared.changes.wake {
            let _ = rustix::io::read(fd, &mut [0u8; 8]);
        }
        shared
            .changes
            .catch_up(&shared.inodes, shared.catalog.store());
        // Rotations are noticed here too, not only when an open or a listing looks.
        shared.catalog.refresh_secrets();
        let mut inos = shared.changes.take();
        inos.sort_unstable();
        inos.dedup();
        for ino in inos {
            if let Err(e) = invalidate(&shared.inodes, notifier, ino) {
                if matches!(
                    e.raw_os_error(),
                    Some(libc::ENODEV | libc::ENOTCONN | libc::EBADF)
                ) {
                    return; // unmounted
                }
                tracing::warn!(ino, error = %e, "dropping cached pages failed");
            }
        }
    }
}

/// Drops the pages and attributes of `ino` and the kernel's entry for its name (the next
/// path walk looks it up, and gets a new number when it is stale).
fn invalidate(inodes: &Inodes, notifier: &Notifier, ino: u64) -> std::io::Result<()> {
    notifier.inval_inode(INodeNo(ino), 0, 0)?;
    if let Some(node) = inodes.node(ino) {
        if let Node::Image { name, .. } = &node {
            let parent = inodes.ino(&node.parent());
            notifier.inval_entry(INodeNo(parent), OsStr::new(name))?;
        }
    }
    Ok(())
}

/// Marks the bound inodes that `changes` touch (written: their handles' reads fail; else
/// stale: no new opens) and returns their numbers. Unbound ones only count the writes.
fn touched_by(inodes: &Inodes, store: &Store, changes: &[Change]) -> Vec<u64> {
    if changes.is_empty() {
        return Vec::new();
    }
    let images_dir = (store.layout() == Layout::Longhorn).then(|| store.root().join(IMAGES_DIR));
    let mut out = Vec::new();
    for (ino, node, binding) in inodes.bindings() {
        let Some(bound) = binding.bound() else {
            // Not bound yet, maybe in the middle of an open that took its source's identity
            // before this write: fail that open's reads rather than guess.
            if let Some(path) = binding.opening() {
                if changes.contains(&Change::Written(path)) {
                    binding.note_write();
                }
            }
            continue;
        };
        let Node::Image { name, .. } = &node else {
            continue;
        };
        let mut hit = false;
        let mut written = false;
        for change in changes {
            match change {
                Change::Lost => hit = true,
                Change::Written(p) if *p == bound.path || bound.chain.contains(p) => {
                    hit = true;
                    written = true;
                }
                Change::Written(p) | Change::Replaced(p) => {
                    hit |= bound.path.starts_with(p)
                        || bound.chain.iter().any(|c| c.starts_with(p))
                        || image_dir_of(images_dir.as_deref(), p, name)
                        || (bound.qcow2 && p.parent() == bound.path.parent());
                }
            }
        }
        if written {
            binding.mark_written();
        } else if hit {
            binding.mark_stale();
        }
        if hit {
            out.push(ino);
        }
    }
    out
}

/// Whether `p` is a Longhorn image directory that may hold image `name` (`<name>-<uuid>`):
/// one appearing or going may change which copy the name leads to.
fn image_dir_of(images_dir: Option<&Path>, p: &Path, name: &str) -> bool {
    images_dir.is_some_and(|d| p.parent() == Some(d))
        && p.file_name().and_then(|f| f.to_str()).is_some_and(|f| {
            f.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with('-'))
        })
}

/// Marks stale the bound encrypt and decrypt inodes under `changed` Secrets and returns their
/// numbers (their handles read on: their view keeps the key it was opened with).
fn under_secrets(inodes: &Inodes, changed: &BTreeSet<SecretRef>) -> Vec<u64> {
    let mut out = Vec::new();
    for (ino, node, binding) in inodes.bindings() {
        if let Node::Image {
            secret: Some(s), ..
        } = &node
        {
            if changed.contains(s) && binding.bound().is_some() {
                binding.mark_stale();
                out.push(ino);
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn longhorn_image_directories_by_name() {
        let d = Path::new("/disk/backing-images");
        let p = d.join("ubuntu-0123");
        assert!(image_dir_of(Some(d), &p, "ubuntu"));
        assert!(!image_dir_of(Some(d), &p, "ubunt"));
        assert!(!image_dir_of(Some(d), &p, "ubuntu-0123"));
        assert!(!image_dir_of(None, &p, "ubuntu"));
        assert!(!image_dir_of(Some(d), &p.join("backing"), "ubuntu"));
    }
}
