//! Changes to a store's image files, as inotify reports them: what a face that caches view
//! bytes (the FUSE page cache) needs to drop what it cached from a source that changed.
//!
//! A flat store is one watched directory. A Longhorn disk is `backing-images/` (image
//! directories appearing, going, renamed) plus one watch per image directory (its `backing`
//! written, replaced by the rename of `backing.tmp`, removed); directories that appear later
//! are watched as they appear. inotify is not recursive and says nothing of writes through a
//! shared `mmap`, of files outside the watched directories (a qcow2 backing file elsewhere,
//! the target of a symlink) or of changes made on another host of a network filesystem: the
//! faces' own identity checks stay the guard; this is the prompt signal on top.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::io;
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use rustix::event::{PollFd, PollFlags, Timespec};
use rustix::fs::inotify::{self, CreateFlags, ReadFlags, WatchFlags};

use super::layout::{Layout, IMAGES_DIR};
use super::Store;

/// One thing that happened under a watched directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// The file at this path was written or truncated in place: readers of it may now get
    /// bytes that did not exist when they opened it.
    Written(PathBuf),
    /// This path (a file or a directory) was created, removed, renamed or had its metadata
    /// changed: new opens may find another file there; open descriptors keep theirs.
    Replaced(PathBuf),
    /// Events were lost (inotify's queue overflowed): anything may have changed.
    Lost,
}

/// inotify on a store's image directories.
pub struct StoreWatch {
    fd: OwnedFd,
    dirs: HashMap<i32, PathBuf>,
    /// The Longhorn `backing-images/` directory, whose new subdirectories get watches.
    images: Option<PathBuf>,
}

/// Events on an image directory's entries, and on the directory itself.
const DIR_EVENTS: WatchFlags = WatchFlags::MODIFY
    .union(WatchFlags::ATTRIB)
    .union(WatchFlags::CREATE)
    .union(WatchFlags::DELETE)
    .union(WatchFlags::MOVED_FROM)
    .union(WatchFlags::MOVED_TO)
    .union(WatchFlags::DELETE_SELF)
    .union(WatchFlags::MOVE_SELF)
    .union(WatchFlags::ONLYDIR);

impl StoreWatch {
    /// Watches the image directories of `store`. Fails when inotify is unavailable or the
    /// store's top directory cannot be watched; an image directory that cannot (the watch
    /// limit reached) is logged and skipped.
    pub fn new(store: &Store) -> io::Result<Self> {
        let fd = inotify::init(CreateFlags::CLOEXEC | CreateFlags::NONBLOCK)?;
        let mut w = Self {
            fd,
            dirs: HashMap::new(),
            images: None,
        };
        match store.layout() {
            Layout::Flat => w.add(store.root())?,
            Layout::Longhorn => {
                let images = store.root().join(IMAGES_DIR);
                w.add(&images)?;
                for entry in std::fs::read_dir(&images)? {
                    let path = entry?.path();
                    if path.is_dir() {
                        w.add_or_warn(&path);
                    }
                }
                w.images = Some(images);
            }
        }
        Ok(w)
    }

    fn add(&mut self, dir: &Path) -> io::Result<()> {
        let wd = inotify::add_watch(&self.fd, dir, DIR_EVENTS)?;
        self.dirs.insert(wd, dir.to_owned());
        Ok(())
    }

    fn add_or_warn(&mut self, dir: &Path) {
        if let Err(e) = self.add(dir) {
            tracing::warn!(
                dir = %dir.display(), error = %e,
                "cannot watch an image directory (fs.inotify.max_user_watches?); cached view \
                 pages of its image are dropped on the next read instead of at once"
            );
        }
    }

    /// Watches `dir` too (the directory of a view's qcow2 backing file), unless it is
    /// already.
    pub fn watch_dir(&mut self, dir: &Path) {
        if !self.dirs.values().any(|d| d == dir) {
            self.add_or_warn(dir);
        }
    }

    /// How many directories are watched.
    pub fn watched(&self) -> usize {
        self.dirs.len()
    }

    /// Waits up to `timeout` for changes and returns them (empty after a quiet `timeout`).
    pub fn wait(&mut self, timeout: Duration) -> io::Result<Vec<Change>> {
        let ts = Timespec {
            tv_sec: timeout.as_secs().try_into().unwrap_or(i64::MAX),
            tv_nsec: timeout.subsec_nanos().into(),
        };
        let mut fds = [PollFd::new(&self.fd, PollFlags::IN)];
        match rustix::event::poll(&mut fds, Some(&ts)) {
            Ok(_) => {}
            Err(rustix::io::Errno::INTR) => return Ok(Vec::new()),
            Err(e) => return Err(e.into()),
        }
        self.drain()
    }

    /// Every change queued so far, without blocking. A reader that must not act on a change
    /// it comes after (an open binding the version it sees) drains the queue first: the
    /// kernel queues a write's event before the write returns.
    pub fn drain(&mut self) -> io::Result<Vec<Change>> {
        let mut out = Vec::new();
        let mut new_dirs = Vec::new();
        let mut buf = [MaybeUninit::<u8>::uninit(); 16 * 1024];
        let mut reader = inotify::Reader::new(&self.fd, &mut buf);
        loop {
            let event = match reader.next() {
                Ok(e) => e,
                Err(rustix::io::Errno::AGAIN) => break,
                Err(rustix::io::Errno::INTR) => continue,
                Err(e) => return Err(e.into()),
            };
            let flags = event.events();
            if flags.contains(ReadFlags::QUEUE_OVERFLOW) {
                out.push(Change::Lost);
                continue;
            }
            let Some(dir) = self.dirs.get(&event.wd()) else {
                continue;
            };
            if flags.contains(ReadFlags::IGNORED) {
                // The directory went away (or was unmounted); its watch is gone with it.
                out.push(Change::Replaced(dir.clone()));
                self.dirs.remove(&event.wd());
                continue;
            }
            let path = match event.file_name() {
                Some(name) => dir.join(OsStr::from_bytes(name.to_bytes())),
                None => dir.clone(),
            };
            let in_images = self.images.as_deref() == Some(dir.as_path());
            if in_images
                && flags.contains(ReadFlags::ISDIR)
                && flags.intersects(ReadFlags::CREATE | ReadFlags::MOVED_TO)
            {
                new_dirs.push(path.clone());
            }
            if flags.contains(ReadFlags::MODIFY) {
                out.push(Change::Written(path));
            } else {
                out.push(Change::Replaced(path));
            }
        }
        for dir in new_dirs {
            self.add_or_warn(&dir);
        }
        out.dedup();
        Ok(out)
    }
}

/// The inotify descriptor, readable when changes are queued (to `poll` it beside others).
impl AsFd for StoreWatch {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;
    use std::io::Write;

    fn wait_for(w: &mut StoreWatch, want: &Change) -> Vec<Change> {
        let mut seen = Vec::new();
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while std::time::Instant::now() < deadline {
            seen.extend(w.wait(Duration::from_millis(100)).unwrap());
            if seen.contains(want) {
                return seen;
            }
        }
        panic!("no {want:?} in {seen:?}");
    }

    #[test]
    fn flat_store_writes_and_replacements() {
        let dir = tempfile::tempdir().unwrap();
        let a = dir.path().join("a.img");
        fs::write(&a, vec![1u8; 4096]).unwrap();
        let store = Store::open(dir.path(), None).unwrap();
        let root = store.root().to_owned();
        let mut w = StoreWatch::new(&store).unwrap();
        assert_eq!(w.watched(), 1);
        assert!(w.wait(Duration::from_millis(10)).unwrap().is_empty());

        fs::OpenOptions::new()
            .write(true)
            .open(&a)
            .unwrap()
            .write_all(b"x")
            .unwrap();
        wait_for(&mut w, &Change::Written(root.join("a.img")));
        // Queued before the write returned: a drain right after it sees it.
        fs::write(&a, b"again").unwrap();
        assert!(w
            .drain()
            .unwrap()
            .contains(&Change::Written(root.join("a.img"))));
        assert!(w.drain().unwrap().is_empty());

        let tmp = root.join("a.img.tmp");
        fs::write(&tmp, b"new").unwrap();
        fs::rename(&tmp, root.join("a.img")).unwrap();
        wait_for(&mut w, &Change::Replaced(root.join("a.img")));

        fs::remove_file(root.join("a.img")).unwrap();
        wait_for(&mut w, &Change::Replaced(root.join("a.img")));
    }

    #[test]
    fn longhorn_image_directories_are_followed() {
        let dir = tempfile::tempdir().unwrap();
        fs::create_dir_all(dir.path().join("backing-images/old-0001")).unwrap();
        fs::write(dir.path().join("backing-images/old-0001/backing"), b"x").unwrap();
        let store = Store::open(dir.path(), None).unwrap();
        let images = store.root().join("backing-images");
        let mut w = StoreWatch::new(&store).unwrap();
        assert_eq!(w.watched(), 2);

        fs::write(images.join("old-0001/backing"), b"y").unwrap();
        wait_for(&mut w, &Change::Written(images.join("old-0001/backing")));

        // A directory made after the watch started is watched from then on.
        fs::create_dir(images.join("new-0002")).unwrap();
        wait_for(&mut w, &Change::Replaced(images.join("new-0002")));
        assert_eq!(w.watched(), 3);
        fs::write(images.join("new-0002/backing.tmp"), b"z").unwrap();
        fs::rename(
            images.join("new-0002/backing.tmp"),
            images.join("new-0002/backing"),
        )
        .unwrap();
        wait_for(&mut w, &Change::Replaced(images.join("new-0002/backing")));

        fs::remove_dir_all(images.join("old-0001")).unwrap();
        wait_for(&mut w, &Change::Replaced(images.join("old-0001")));
    }
}
