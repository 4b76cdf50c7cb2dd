//! The store: the one module that knows, and writes, what is on disk.
//!
//! A store is a flat directory of image files (name = file name; dotfiles and the state
//! directory skipped), or a Longhorn disk, told apart by the presence of `backing-images/`:
//!
//! ```text
//! DIR/longhorn-disk.cfg                             longhorn-manager's DiskConfig: the disk's UUID
//! DIR/backing-images/<name>-<uuid>/backing          the image, complete (renamed into place last)
//! DIR/backing-images/<name>-<uuid>/backing.tmp      the image while it is being written
//! DIR/backing-images/<name>-<uuid>/backing.cfg      backing-image-manager's SyncingFileConfig
//! DIR/.bifs/records/<name>.json                     the BackingImage as applied, with its status
//! DIR/.bifs/locks/<name>.lock                       flock: exclusive while applied or deleted,
//!                                                   shared while cloned from
//! STATE/headers/<namespace>/<secret>/<image>.luks   persisted encrypt-view headers (+ .json);
//!                                                   STATE is --state, default DIR/.bifs
//! ```
//!
//! The first four are what Longhorn keeps on a disk, so either side can take the other's files
//! over. bifs's own state stays in `.bifs` (mode 0700), out of the image directories. Every
//! small file is written by [`atomic::write_atomic`].

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use bifs_core::image::{self, Format};

pub mod atomic;
pub mod cfg;
pub mod confine;
pub mod digests;
pub mod disk;
pub mod identity;
pub mod layout;
pub mod state;
pub mod sums;
pub mod upload;
pub mod watch;

pub use atomic::write_atomic;
pub use cfg::{BackingCfg, DiskCfg};
pub use disk::{allocated, Lock, LockMode};
pub use identity::{ChainFile, SourceIdentity, Watched};
pub use layout::{DiskImage, Layout};
pub use state::{HeaderRecord, StateDir};
pub use watch::{Change, StoreWatch};

/// bifs's state directory inside the store: records, locks and (by default) headers.
pub const DEFAULT_STATE_DIR: &str = ".bifs";

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("store {}: {error}", .path.display())]
    Open { path: PathBuf, error: io::Error },
    #[error("store {} is not a directory", .0.display())]
    NotADirectory(PathBuf),
    #[error("state directory {}: {error}", .path.display())]
    State { path: PathBuf, error: io::Error },
    #[error("{what} {}: {error}", .path.display())]
    Io {
        what: &'static str,
        path: PathBuf,
        error: io::Error,
    },
    #[error("record {}: {message}", .path.display())]
    Record { path: PathBuf, message: String },
    #[error("invalid backing image name {0:?}")]
    Name(String),
    #[error("{0:?} already exists in the store")]
    Exists(String),
    /// A file bifs writes (an upload's partial file, `backing.tmp`, an image directory) is a
    /// symlink, a hard link or not a regular file: never followed, never written. The path is
    /// relative to the store.
    #[error(
        "{} in the store is a symlink, a hard link or not a regular file: bifs does not \
         write through it (remove it)",
        .0.display()
    )]
    NotRegular(PathBuf),
}

impl StoreError {
    /// The error without the server's paths, for a remote client (the full error goes to
    /// the log): what was being done and the OS error.
    pub fn public_message(&self) -> String {
        match self {
            StoreError::Open { error, .. } => format!("store: {error}"),
            StoreError::NotADirectory(_) => "store: not a directory".into(),
            StoreError::State { error, .. } => format!("state directory: {error}"),
            StoreError::Io { what, error, .. } => format!("store: {what}: {error}"),
            StoreError::Record { message, .. } => format!("record: {message}"),
            StoreError::Name(_) | StoreError::Exists(_) | StoreError::NotRegular(_) => {
                self.to_string()
            }
        }
    }

    /// Whether the disk (or a quota) is full.
    pub fn is_no_space(&self) -> bool {
        let e = match self {
            StoreError::Open { error, .. }
            | StoreError::State { error, .. }
            | StoreError::Io { error, .. } => error,
            _ => return false,
        };
        matches!(e.raw_os_error(), Some(libc::ENOSPC) | Some(libc::EDQUOT))
    }
}

pub(crate) fn io_err(what: &'static str, path: &Path) -> impl FnOnce(io::Error) -> StoreError {
    let path = path.to_path_buf();
    move |error| StoreError::Io { what, path, error }
}

/// One image of the store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredImage {
    pub name: String,
    pub path: PathBuf,
    pub format: Format,
}

#[derive(Debug, Clone)]
pub struct Store {
    root: PathBuf,
    /// The root, open (free space is asked of it).
    root_dir: std::sync::Arc<fs::File>,
    /// Where every image and qcow2 backing file is opened beneath ([`confine`]).
    images: std::sync::Arc<ImagesDir>,
    layout: Layout,
    state: StateDir,
    /// The UUID of `longhorn-disk.cfg`; empty when the store has none (a flat store, or a
    /// Longhorn disk opened read-only before any apply).
    disk_uuid: String,
}

/// The directory images are confined to: a flat store's root, or a Longhorn disk's
/// `backing-images/`. A disk's root also holds `replicas/` (every volume's data on the node) and
/// bifs's state, which no view may reach, not even through a qcow2 backing file name such as
/// `../../replicas/...`.
#[derive(Debug)]
struct ImagesDir {
    path: PathBuf,
    dir: fs::File,
}

impl ImagesDir {
    fn open(
        root: &Path,
        root_dir: &fs::File,
        layout: Layout,
    ) -> Result<std::sync::Arc<Self>, StoreError> {
        let (path, dir) = match layout {
            Layout::Flat => (root.to_owned(), root_dir.try_clone()),
            // Not through a symlink: `backing-images` itself must be the disk's directory.
            Layout::Longhorn => (
                root.join(layout::IMAGES_DIR),
                rustix::fs::openat(
                    root_dir,
                    layout::IMAGES_DIR,
                    rustix::fs::OFlags::RDONLY
                        | rustix::fs::OFlags::DIRECTORY
                        | rustix::fs::OFlags::NOFOLLOW
                        | rustix::fs::OFlags::CLOEXEC,
                    rustix::fs::Mode::empty(),
                )
                .map(fs::File::from)
                .map_err(io::Error::from),
            ),
        };
        let dir = dir.map_err(|error| StoreError::Open {
            path: path.clone(),
            error,
        })?;
        Ok(std::sync::Arc::new(Self { path, dir }))
    }
}

fn open_root(root: &Path) -> Result<fs::File, StoreError> {
    fs::File::open(root).map_err(|error| StoreError::Open {
        path: root.to_owned(),
        error,
    })
}

fn check_dir(root: &Path) -> Result<PathBuf, StoreError> {
    let meta = fs::metadata(root).map_err(|error| StoreError::Open {
        path: root.to_owned(),
        error,
    })?;
    if !meta.is_dir() {
        return Err(StoreError::NotADirectory(root.to_owned()));
    }
    root.canonicalize().map_err(|error| StoreError::Open {
        path: root.to_owned(),
        error,
    })
}

impl Store {
    /// Opens the store at `root` for a mount; the state directory (headers) defaults to
    /// `root/.bifs` and is created.
    pub fn open(root: &Path, state: Option<&Path>) -> Result<Self, StoreError> {
        let root = check_dir(root)?;
        let layout = Layout::detect(&root);
        let state_path = state.map_or_else(|| root.join(DEFAULT_STATE_DIR), Path::to_path_buf);
        let state = StateDir::open(&state_path).map_err(|error| StoreError::State {
            path: state_path.clone(),
            error,
        })?;
        let disk_uuid = read_disk_uuid(&root);
        let root_dir = open_root(&root)?;
        Ok(Self {
            images: ImagesDir::open(&root, &root_dir, layout)?,
            root_dir: std::sync::Arc::new(root_dir),
            root,
            layout,
            state,
            disk_uuid,
        })
    }

    /// Opens `root` for a server's writes in the `layout` it serves: a Longhorn disk as
    /// [`Store::open_disk`] does, a flat store as it is (images are written as plain files
    /// beside the others; only the lock directory is made). A flat store never becomes a
    /// Longhorn disk behind the views' back.
    pub fn open_for_writes(root: &Path, layout: Layout) -> Result<Self, StoreError> {
        if layout == Layout::Longhorn {
            return Self::open_disk(root);
        }
        let root = check_dir(root)?;
        let state = StateDir::at(&root.join(DEFAULT_STATE_DIR));
        let root_dir = open_root(&root)?;
        let store = Self {
            images: ImagesDir::open(&root, &root_dir, Layout::Flat)?,
            root_dir: std::sync::Arc::new(root_dir),
            disk_uuid: read_disk_uuid(&root),
            root,
            layout: Layout::Flat,
            state,
        };
        let locks = store.locks_dir();
        fs::create_dir_all(&locks).map_err(io_err("creating", &locks))?;
        Ok(store)
    }

    /// Opens `root` as a Longhorn disk to write backing images into: creates
    /// `backing-images/`, the state directory and `longhorn-disk.cfg` when absent.
    pub fn open_disk(root: &Path) -> Result<Self, StoreError> {
        let root = check_dir(root)?;
        let images = root.join(layout::IMAGES_DIR);
        fs::create_dir_all(&images).map_err(io_err("creating", &images))?;
        let state_path = root.join(DEFAULT_STATE_DIR);
        let state = StateDir::open(&state_path).map_err(|error| StoreError::State {
            path: state_path.clone(),
            error,
        })?;
        let disk_cfg = root.join(layout::DISK_CFG);
        let disk = DiskCfg::ensure(&disk_cfg).map_err(io_err("disk config", &disk_cfg))?;
        let root_dir = open_root(&root)?;
        let store = Self {
            images: ImagesDir::open(&root, &root_dir, Layout::Longhorn)?,
            root_dir: std::sync::Arc::new(root_dir),
            root,
            layout: Layout::Longhorn,
            state,
            disk_uuid: disk.disk_uuid,
        };
        for dir in [store.records_dir(), store.locks_dir()] {
            fs::create_dir_all(&dir).map_err(io_err("creating", &dir))?;
        }
        Ok(store)
    }

    /// Opens a store for reading only: nothing is created.
    pub fn open_read_only(root: &Path) -> Result<Self, StoreError> {
        let root = check_dir(root)?;
        let layout = Layout::detect(&root);
        let state = StateDir::at(&root.join(DEFAULT_STATE_DIR));
        let disk_uuid = read_disk_uuid(&root);
        let root_dir = open_root(&root)?;
        Ok(Self {
            images: ImagesDir::open(&root, &root_dir, layout)?,
            root_dir: std::sync::Arc::new(root_dir),
            root,
            layout,
            state,
            disk_uuid,
        })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn layout(&self) -> Layout {
        self.layout
    }

    pub fn state(&self) -> &StateDir {
        &self.state
    }

    /// The disk's UUID from `longhorn-disk.cfg` (the key of `diskFileStatusMap`).
    pub fn disk_uuid(&self) -> &str {
        &self.disk_uuid
    }

    /// Opens an image of the store for reading, beneath the directory images live in (a flat
    /// store's root, a Longhorn disk's `backing-images/`): a symlink or qcow2 backing file
    /// name that leads out of it is refused ([`confine`]).
    pub fn open_image(&self, path: &Path) -> io::Result<fs::File> {
        confine::open_beneath(&self.images.path, &self.images.dir, path)
    }

    /// Bytes the store's file system has free for this process (`statvfs`: `f_bavail`).
    pub fn free_bytes(&self) -> io::Result<u64> {
        let st = rustix::fs::fstatvfs(&self.root_dir)?;
        Ok(st.f_bavail.saturating_mul(st.f_frsize))
    }

    /// The format of the image at `path`, opened beneath the root; `None` (with a warning,
    /// once per path) when it leads out of the store.
    fn detect_confined(&self, name: &str, path: &Path) -> io::Result<Option<Format>> {
        match self.open_image(path) {
            Ok(file) => image::detect::detect_file(&file).map(Some),
            Err(e) if confine::is_outside(&e) => {
                warn_once(
                    path,
                    || tracing::warn!(image = ?name, "refusing an image that leads out of the store (a symlink to a file outside it)"),
                );
                Ok(None)
            }
            Err(e) => Err(e),
        }
    }

    /// Every image, sorted by name, with its detected format. Unreadable files are skipped
    /// with a warning: one bad file must not hide the others. Files that lead out of the
    /// store (symlinks) are not images of it.
    pub fn list(&self) -> io::Result<Vec<StoredImage>> {
        let preferred = |n: &str| self.recorded_uuid(n);
        let mut out = Vec::new();
        for (name, path) in self
            .layout
            .scan(&self.root, self.state.path(), &preferred)?
        {
            match self.detect_confined(&name, &path) {
                Ok(Some(format)) => out.push(StoredImage { name, path, format }),
                Ok(None) => {}
                Err(e) => {
                    tracing::warn!(image = ?name, error = %e, "skipping unreadable image")
                }
            }
        }
        Ok(out)
    }

    /// The image called `name`, if the store has it.
    pub fn find(&self, name: &str) -> io::Result<Option<StoredImage>> {
        let preferred = |n: &str| self.recorded_uuid(n);
        let Some(path) = self
            .layout
            .locate(&self.root, self.state.path(), name, &preferred)?
        else {
            return Ok(None);
        };
        match self.detect_confined(name, &path) {
            Ok(Some(format)) => Ok(Some(StoredImage {
                name: name.to_owned(),
                path,
                format,
            })),
            Ok(None) => Ok(None),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// What keeps bifs from seeing the whole store, loudly: a Longhorn disk's image
    /// directories it cannot enter. backing-image-manager creates them with mode 0666 less
    /// the umask (0644: no search bit), so only root (or CAP_DAC_READ_SEARCH) sees inside.
    pub fn access_warnings(&self) -> Vec<String> {
        layout::access_warnings(&self.root, self.layout)
    }

    /// The complete image directories of the disk, one per name (the ready copy).
    pub fn disk_images(&self) -> io::Result<Vec<DiskImage>> {
        let preferred = |n: &str| self.recorded_uuid(n);
        Ok(layout::scan_disk(&self.root, &preferred)?
            .into_iter()
            .filter(|i| !matches!(self.detect_confined(&i.name, &i.backing()), Ok(None)))
            .collect())
    }
}

/// Runs `warn` the first time `path` is seen (listings run every second: one line, not a
/// flood).
fn warn_once(path: &Path, warn: impl FnOnce()) {
    static SEEN: std::sync::Mutex<Option<std::collections::HashSet<PathBuf>>> =
        std::sync::Mutex::new(None);
    let mut seen = SEEN.lock().unwrap_or_else(|e| e.into_inner());
    if seen
        .get_or_insert_with(Default::default)
        .insert(path.to_owned())
    {
        warn();
    }
}

fn read_disk_uuid(root: &Path) -> String {
    match DiskCfg::read(&root.join(layout::DISK_CFG)) {
        Ok(Some(c)) => c.disk_uuid,
        Ok(None) => String::new(),
        Err(e) => {
            tracing::warn!(store = ?root, error = %e, "unreadable longhorn-disk.cfg");
            String::new()
        }
    }
}

/// A name usable as one path component (image names, Secret namespaces and names).
pub fn valid_component(name: &str) -> bool {
    !name.is_empty() && name != "." && name != ".." && !name.contains('/') && !name.contains('\0')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flat_store_skips_dotfiles_and_state() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join("a.img"), vec![0u8; 1024]).unwrap();
        fs::write(dir.path().join(".hidden"), b"x").unwrap();
        fs::create_dir(dir.path().join("sub")).unwrap();
        let mut luks = vec![0u8; 4096];
        luks[..8].copy_from_slice(b"LUKS\xba\xbe\x00\x02");
        fs::write(dir.path().join("b.luks"), luks).unwrap();
        let store = Store::open(dir.path(), None).unwrap();
        assert_eq!(store.layout(), Layout::Flat);
        let list = store.list().unwrap();
        let names: Vec<_> = list.iter().map(|i| (i.name.as_str(), i.format)).collect();
        assert_eq!(names, [("a.img", Format::Raw), ("b.luks", Format::Luks2)]);
        assert!(store.find(".bifs").unwrap().is_none());
        assert!(store.find("sub").unwrap().is_none());
        assert!(store.find("../x").unwrap().is_none());
        assert_eq!(store.find("a.img").unwrap().unwrap().format, Format::Raw);
    }

    fn image_dir(root: &Path, dir: &str, backing: bool, cfg: Option<String>) -> PathBuf {
        let d = root.join("backing-images").join(dir);
        fs::create_dir_all(&d).unwrap();
        if backing {
            fs::write(d.join("backing"), vec![1u8; 512]).unwrap();
        } else {
            fs::write(d.join("backing.tmp"), vec![1u8; 100]).unwrap();
        }
        if let Some(c) = cfg {
            fs::write(d.join("backing.cfg"), c).unwrap();
        }
        d
    }

    /// A disk as backing-image-manager leaves it: `name` in backing.cfg is a path, one image
    /// is still downloading (only `backing.tmp`), one name has two uuids (one of them ready,
    /// the other's file modified since its cfg was written), one cfg is in the old format.
    #[test]
    fn a_real_longhorn_disk() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        let bim_cfg = |dir: &Path, uuid: &str| {
            let backing = dir.join("backing");
            let cfg = BackingCfg {
                name: format!(
                    "/data/backing-images/{}/backing",
                    dir.file_name().unwrap().to_str().unwrap()
                ),
                uuid: uuid.into(),
                size: 512,
                virtual_size: 512,
                real_size: 4096,
                expected_checksum: String::new(),
                current_checksum: "ab".into(),
                modification_time: cfg::modification_time(&backing).unwrap(),
            };
            fs::write(dir.join("backing.cfg"), serde_json::to_vec(&cfg).unwrap()).unwrap();
        };
        let p = image_dir(root, "parrot-1a2b3c4d", true, None);
        bim_cfg(&p, "1a2b3c4d");
        image_dir(root, "downloading-5e6f7a8b", false, None);
        let old = image_dir(root, "ubuntu-00000001", true, None);
        let new = image_dir(root, "ubuntu-00000002", true, None);
        bim_cfg(&old, "00000001");
        bim_cfg(&new, "00000002");
        // The older copy's file changed after its cfg was written: not the ready one.
        std::thread::sleep(std::time::Duration::from_millis(20));
        fs::write(old.join("backing"), vec![2u8; 512]).unwrap();
        image_dir(
            root,
            "legacy-3f2a0000",
            true,
            Some(r#"{"name":"legacy","uuid":"3f2a0000","size":512,"expectedChecksum":"","currentChecksum":""}"#.into()),
        );
        image_dir(
            root,
            "liar-3f2a0001",
            true,
            Some(r#"{"name":"other","uuid":"3f2a0001","size":512,"expectedChecksum":"","currentChecksum":""}"#.into()),
        );
        image_dir(root, "no-cfg-77aa", true, None);
        let store = Store::open(root, None).unwrap();
        assert_eq!(store.layout(), Layout::Longhorn);
        let names: Vec<_> = store
            .list()
            .unwrap()
            .into_iter()
            .map(|i| (i.name, i.path))
            .collect();
        let root = root.canonicalize().unwrap();
        let bi = root.join("backing-images");
        assert_eq!(
            names,
            [
                ("legacy".to_string(), bi.join("legacy-3f2a0000/backing")),
                ("no-cfg".to_string(), bi.join("no-cfg-77aa/backing")),
                ("parrot".to_string(), bi.join("parrot-1a2b3c4d/backing")),
                ("ubuntu".to_string(), bi.join("ubuntu-00000002/backing")),
            ]
        );
        assert!(store.find("downloading").unwrap().is_none());
        assert!(store.find("liar").unwrap().is_none());
        assert_eq!(
            store.find("ubuntu").unwrap().unwrap().path,
            bi.join("ubuntu-00000002/backing")
        );
    }
}
