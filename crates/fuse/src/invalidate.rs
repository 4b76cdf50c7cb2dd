//! Drops what the kernel cached of views whose source or Secret changed, as soon as bifs
//! hears of it: inotify on the store ([`StoreWatch`]) and the catalog's Secret-change hook,
//! turned into FUSE notifications (`FUSE_NOTIFY_INVAL_INODE` for the pages and attributes,
//! `FUSE_NOTIFY_INVAL_ENTRY` for the name) from a thread of its own. The notifications are
//! never sent from a request handler: the kernel may wait, while it drops a page, for a read
//! of that page that only a free worker can answer.
//!
//! This is the prompt half of the page-cache rules (crate documentation); the bound inodes
//! and the per-read attribute check keep readers from mixed bytes whatever it misses or
//! however late it is.

use std::ffi::OsStr;
use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, Weak};
use std::thread::JoinHandle;
use std::time::Duration;

use bifs_k8s::SecretRef;
use bifs_node::store::layout::{Layout, IMAGES_DIR};
use bifs_node::store::{Change, StoreWatch};
use fuser::{INodeNo, Notifier};

use crate::tree::Node;
use crate::Shared;

/// How long the thread waits for inotify before it looks at the Secret files and the queue
/// of Secret changes noticed elsewhere.
const TICK: Duration = Duration::from_millis(500);

/// Started once the session exists ([`crate::BifsFs::invalidator`]).
pub struct Invalidator {
    shared: Arc<Shared>,
}

/// Inode numbers whose Secret changed, queued by the catalog hook for the thread.
type Queue = Arc<Mutex<Vec<u64>>>;

impl Invalidator {
    pub(crate) fn new(shared: Arc<Shared>) -> Self {
        Self { shared }
    }

    /// Starts the thread; it ends with the session.
    pub fn start(self, notifier: Notifier) -> std::io::Result<JoinHandle<()>> {
        let queue: Queue = Arc::default();
        let weak: Weak<Shared> = Arc::downgrade(&self.shared);
        let q = queue.clone();
        // Weak: the catalog (which keeps the hook) lives in `Shared`.
        self.shared.catalog.on_secrets_changed(move |changed| {
            if let Some(shared) = weak.upgrade() {
                let inos = under_secrets(&shared, changed);
                q.lock().unwrap_or_else(|e| e.into_inner()).extend(inos);
            }
        });
        let watch = match StoreWatch::new(self.shared.catalog.store()) {
            Ok(w) => {
                tracing::info!(
                    directories = w.watched(),
                    "watching the store for changes (cached view pages are dropped when a source changes)"
                );
                Some(w)
            }
            Err(e) => {
                tracing::warn!(
                    error = %e,
                    "cannot watch the store with inotify: cached pages of a changed source are \
                     dropped on the next read(2) instead of at once (mmap readers keep them \
                     until the inode is dropped)"
                );
                None
            }
        };
        let shared = self.shared;
        std::thread::Builder::new()
            .name("bifs-invalidate".into())
            .spawn(move || run(&shared, &notifier, watch, &queue))
    }
}

fn run(shared: &Shared, notifier: &Notifier, mut watch: Option<StoreWatch>, queue: &Queue) {
    while !shared.stopped.load(Ordering::SeqCst) {
        let changes = match watch.as_mut() {
            Some(w) => w.wait(TICK).unwrap_or_else(|e| {
                tracing::warn!(error = %e, "reading inotify events failed; no longer watching the store");
                watch = None;
                Vec::new()
            }),
            None => {
                std::thread::sleep(TICK);
                Vec::new()
            }
        };
        let from_sources = touched_by(shared, &changes);
        // Rotations are noticed here too, not only when an open or a listing looks.
        shared.catalog.refresh_secrets();
        let from_secrets: Vec<u64> =
            std::mem::take(&mut *queue.lock().unwrap_or_else(|e| e.into_inner()));
        if !from_sources.is_empty() {
            tracing::debug!(
                views = from_sources.len(),
                ?changes,
                "source changed: dropping the cached pages of its views"
            );
        }
        if !from_secrets.is_empty() {
            tracing::info!(
                views = from_secrets.len(),
                "Secret changed: dropping the cached pages of its encrypt and decrypt views"
            );
        }
        let mut inos = from_sources;
        inos.extend(from_secrets);
        inos.sort_unstable();
        inos.dedup();
        for ino in inos {
            if let Err(e) = invalidate(shared, notifier, ino) {
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
fn invalidate(shared: &Shared, notifier: &Notifier, ino: u64) -> std::io::Result<()> {
    notifier.inval_inode(INodeNo(ino), 0, 0)?;
    if let Some(node) = shared.inodes.node(ino) {
        if let Node::Image { name, .. } = &node {
            let parent = shared.inodes.ino(&node.parent());
            notifier.inval_entry(INodeNo(parent), OsStr::new(name))?;
        }
    }
    Ok(())
}

/// Marks the bound inodes that `changes` touch (written: their handles' reads fail; else
/// stale: no new opens) and returns their numbers.
fn touched_by(shared: &Shared, changes: &[Change]) -> Vec<u64> {
    if changes.is_empty() {
        return Vec::new();
    }
    let store = shared.catalog.store();
    let images_dir = (store.layout() == Layout::Longhorn).then(|| store.root().join(IMAGES_DIR));
    let mut out = Vec::new();
    for (ino, node, binding) in shared.inodes.bindings() {
        // Never opened: no pages, and lookup checks it afresh.
        let Some(bound) = binding.bound() else {
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
                Change::Written(p) if *p == bound.path => {
                    hit = true;
                    written = true;
                }
                Change::Written(p) | Change::Replaced(p) => {
                    hit |= bound.path.starts_with(p)
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
fn under_secrets(shared: &Shared, changed: &std::collections::BTreeSet<SecretRef>) -> Vec<u64> {
    let mut out = Vec::new();
    for (ino, node, binding) in shared.inodes.bindings() {
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
