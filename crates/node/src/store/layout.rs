//! The two on-disk layouts of a store, and how a Longhorn disk's image directories are read.

use std::collections::BTreeMap;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use super::cfg::{modification_time, BackingCfg};
use super::valid_component;

/// Longhorn keeps backing images under this directory of a disk.
pub const IMAGES_DIR: &str = "backing-images";
/// The complete image file of a backing image directory.
pub const BACKING: &str = "backing";
/// The image while it is being written (a download in progress on a Longhorn disk).
pub const BACKING_TMP: &str = "backing.tmp";
/// backing-image-manager's `SyncingFileConfig` of `backing`.
pub const BACKING_CFG: &str = "backing.cfg";
/// longhorn-manager's disk config at the disk root.
pub const DISK_CFG: &str = "longhorn-disk.cfg";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    /// A directory of image files.
    Flat,
    /// `backing-images/<name>-<uuid>/backing` + `backing.cfg`.
    Longhorn,
}

/// One complete image directory of a Longhorn disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiskImage {
    pub name: String,
    pub uuid: String,
    pub dir: PathBuf,
    pub cfg: Option<BackingCfg>,
}

impl DiskImage {
    pub fn backing(&self) -> PathBuf {
        self.dir.join(BACKING)
    }

    /// Whether `backing.cfg` describes the file as it is now (its recorded mtime is the
    /// file's): what backing-image-manager calls a ready file that was not modified.
    pub fn cfg_current(&self) -> bool {
        self.cfg.as_ref().is_some_and(|c| {
            !c.modification_time.is_empty()
                && modification_time(&self.backing()).is_ok_and(|t| t == c.modification_time)
        })
    }
}

impl Layout {
    pub fn detect(root: &Path) -> Self {
        if root.join(IMAGES_DIR).is_dir() {
            Layout::Longhorn
        } else {
            Layout::Flat
        }
    }

    /// (name, path) of every image, sorted by name. `preferred` names the uuid bifs's own
    /// record gives an image, if any: that copy wins when a name has several.
    pub fn scan(
        self,
        root: &Path,
        state: &Path,
        preferred: &dyn Fn(&str) -> Option<String>,
    ) -> io::Result<Vec<(String, PathBuf)>> {
        match self {
            Layout::Flat => scan_flat(root, state),
            Layout::Longhorn => Ok(scan_disk(root, preferred)?
                .into_iter()
                .map(|i| {
                    let p = i.backing();
                    (i.name, p)
                })
                .collect()),
        }
    }

    /// The path of image `name`, if the store has it.
    pub fn locate(
        self,
        root: &Path,
        state: &Path,
        name: &str,
        preferred: &dyn Fn(&str) -> Option<String>,
    ) -> io::Result<Option<PathBuf>> {
        if !valid_component(name) {
            return Ok(None);
        }
        match self {
            Layout::Flat => {
                let path = root.join(name);
                Ok(flat_entry(&path, name, state).then_some(path))
            }
            Layout::Longhorn => Ok(scan_disk(root, preferred)?
                .into_iter()
                .find(|i| i.name == name)
                .map(|i| i.backing())),
        }
    }
}

/// A flat-store entry is a regular file (symlinks followed) that is not hidden and not the
/// state directory.
fn flat_entry(path: &Path, name: &str, state: &Path) -> bool {
    if name.starts_with('.') || path == state {
        return false;
    }
    fs::metadata(path).is_ok_and(|m| m.is_file())
}

fn scan_flat(root: &Path, state: &Path) -> io::Result<Vec<(String, PathBuf)>> {
    let mut out = Vec::new();
    for entry in fs::read_dir(root)? {
        let entry = entry?;
        let Ok(name) = entry.file_name().into_string() else {
            tracing::warn!(file = ?entry.path(), "skipping an image whose name is not UTF-8");
            continue;
        };
        let path = entry.path();
        if flat_entry(&path, &name, state) {
            out.push((name, path));
        }
    }
    out.sort();
    Ok(out)
}

/// Directories of `root`'s layout that this process cannot enter (see
/// [`super::Store::access_warnings`]).
pub fn access_warnings(root: &Path, layout: Layout) -> Vec<String> {
    use rustix::fs::{access, Access};
    let can_enter = |d: &Path| access(d, Access::READ_OK | Access::EXEC_OK);
    let mut out = Vec::new();
    if let Err(e) = can_enter(root) {
        out.push(format!(
            "cannot read the store {}: {}",
            root.display(),
            std::io::Error::from(e)
        ));
        return out;
    }
    if layout != Layout::Longhorn {
        return out;
    }
    let dir = root.join(IMAGES_DIR);
    if let Err(e) = can_enter(&dir) {
        out.push(format!(
            "cannot read {}: {}",
            dir.display(),
            std::io::Error::from(e)
        ));
        return out;
    }
    let Ok(entries) = fs::read_dir(&dir) else {
        return out;
    };
    let mut blocked = Vec::new();
    for e in entries.flatten() {
        let p = e.path();
        if e.file_type().is_ok_and(|t| t.is_dir()) && can_enter(&p).is_err() {
            blocked.push(p);
        }
    }
    blocked.sort();
    if let Some(first) = blocked.first() {
        out.push(format!(
            "cannot enter {} image director{} of this Longhorn disk (e.g. {}): backing-image-manager \
             makes them mode 0644 (no search bit), so their images are invisible to this \
             process; run bifs as root (the DaemonSet does) or with CAP_DAC_READ_SEARCH",
            blocked.len(),
            if blocked.len() == 1 { "y" } else { "ies" },
            first.display()
        ));
    }
    out
}

/// Every complete image directory of the disk at `root`, one per name, sorted by name.
///
/// A directory counts once `backing` exists (one holding only `backing.tmp` is a download in
/// progress). Its name is the directory's `<name>-<uuid>` with the uuid taken from
/// `backing.cfg` (both formats) and checked against it. When several uuids of one name are
/// complete, the ready copy is kept: the one bifs's record names, else one whose cfg matches
/// its file, else the newest file.
pub fn scan_disk(
    root: &Path,
    preferred: &dyn Fn(&str) -> Option<String>,
) -> io::Result<Vec<DiskImage>> {
    let dir = root.join(IMAGES_DIR);
    let entries = match fs::read_dir(&dir) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let mut dirs: Vec<PathBuf> = entries.filter_map(|e| e.ok().map(|e| e.path())).collect();
    dirs.sort();
    let mut by_name: BTreeMap<String, Vec<DiskImage>> = BTreeMap::new();
    for d in dirs {
        match fs::metadata(d.join(BACKING)) {
            Ok(m) if m.is_file() => {}
            Err(e) if e.kind() == io::ErrorKind::PermissionDenied => {
                warn_once(&d, &e);
                continue;
            }
            _ => continue,
        }
        if let Some(image) = read_image_dir(&d) {
            by_name.entry(image.name.clone()).or_default().push(image);
        }
    }
    Ok(by_name
        .into_iter()
        .filter_map(|(name, copies)| pick_ready(&name, copies, preferred(&name)))
        .collect())
}

/// A directory that cannot be entered is reported once per process (the listing runs often).
fn warn_once(dir: &Path, e: &io::Error) {
    static SEEN: std::sync::Mutex<std::collections::BTreeSet<PathBuf>> =
        std::sync::Mutex::new(std::collections::BTreeSet::new());
    let mut seen = SEEN.lock().unwrap_or_else(|e| e.into_inner());
    if seen.insert(dir.to_path_buf()) {
        tracing::warn!(dir = %dir.display(), error = %e, "cannot enter a backing image directory: its image is invisible to bifs (backing-image-manager makes these directories mode 0644; run bifs as root)");
    }
}

/// The image of one directory with a `backing` file, or `None` (with a warning) when its
/// name cannot be told or contradicts its cfg.
fn read_image_dir(d: &Path) -> Option<DiskImage> {
    let Some(dir_name) = d.file_name().and_then(|n| n.to_str()) else {
        tracing::warn!(dir = %d.display(), "skipping a backing image directory whose name is not UTF-8");
        return None;
    };
    let cfg = BackingCfg::read(&d.join(BACKING_CFG));
    let split = match cfg.as_ref().filter(|c| !c.uuid.is_empty()) {
        Some(c) => match dir_name.strip_suffix(&format!("-{}", c.uuid)) {
            Some(name) => Some((name.to_owned(), c.uuid.clone())),
            None => {
                tracing::warn!(dir = %d.display(), uuid = %c.uuid, "skipping a backing image whose directory does not end in the uuid of its backing.cfg");
                return None;
            }
        },
        None => dir_name
            .rsplit_once('-')
            .map(|(n, u)| (n.to_owned(), u.to_owned())),
    };
    let Some((name, uuid)) = split.filter(|(n, _)| valid_component(n) && !n.is_empty()) else {
        tracing::warn!(dir = %d.display(), "skipping a backing image directory not named <name>-<uuid>");
        return None;
    };
    if let Some(legacy) = cfg.as_ref().and_then(|c| c.legacy_name()) {
        if legacy != name {
            tracing::warn!(dir = %d.display(), cfg_name = legacy, "skipping a backing image whose backing.cfg names another image");
            return None;
        }
    }
    Some(DiskImage {
        name,
        uuid,
        dir: d.to_path_buf(),
        cfg,
    })
}

fn pick_ready(
    name: &str,
    mut copies: Vec<DiskImage>,
    preferred: Option<String>,
) -> Option<DiskImage> {
    if copies.len() <= 1 {
        return copies.pop();
    }
    let mtime = |i: &DiskImage| fs::metadata(i.backing()).and_then(|m| m.modified()).ok();
    let pos = preferred
        .and_then(|u| copies.iter().position(|i| i.uuid == u))
        .or_else(|| {
            copies
                .iter()
                .enumerate()
                .filter(|(_, i)| i.cfg_current())
                .max_by_key(|(_, i)| mtime(i))
                .map(|(p, _)| p)
        })
        .or_else(|| {
            copies
                .iter()
                .enumerate()
                .max_by_key(|(_, i)| mtime(i))
                .map(|(p, _)| p)
        })?;
    let kept = copies.swap_remove(pos);
    for other in &copies {
        tracing::debug!(name, kept = %kept.dir.display(), skipped = %other.dir.display(), "several copies of one backing image; showing the ready one");
    }
    Some(kept)
}
