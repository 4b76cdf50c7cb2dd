//! The two on-disk layouts of a store.

use std::collections::BTreeMap;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use super::valid_component;

/// Longhorn keeps backing images under this directory of a disk.
pub const LONGHORN_DIR: &str = "backing-images";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    /// A directory of image files.
    Flat,
    /// `backing-images/<name>-<uuid>/backing` + `backing.cfg`.
    Longhorn,
}

#[derive(serde::Deserialize)]
struct BackingCfg {
    #[serde(default)]
    name: String,
}

impl Layout {
    pub fn detect(root: &Path) -> Self {
        if root.join(LONGHORN_DIR).is_dir() {
            Layout::Longhorn
        } else {
            Layout::Flat
        }
    }

    /// (name, path) of every image, sorted by name.
    pub fn scan(self, root: &Path, state: &Path) -> io::Result<Vec<(String, PathBuf)>> {
        match self {
            Layout::Flat => scan_flat(root, state),
            Layout::Longhorn => scan_longhorn(&root.join(LONGHORN_DIR)),
        }
    }

    /// The path of image `name`, without listing the whole store when the layout allows it.
    pub fn locate(self, root: &Path, state: &Path, name: &str) -> io::Result<Option<PathBuf>> {
        if !valid_component(name) {
            return Ok(None);
        }
        match self {
            Layout::Flat => {
                let path = root.join(name);
                Ok(flat_entry(&path, name, state).then_some(path))
            }
            Layout::Longhorn => Ok(scan_longhorn(&root.join(LONGHORN_DIR))?
                .into_iter()
                .find(|(n, _)| n == name)
                .map(|(_, p)| p)),
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

fn scan_longhorn(dir: &Path) -> io::Result<Vec<(String, PathBuf)>> {
    let mut by_name: BTreeMap<String, PathBuf> = BTreeMap::new();
    let mut dirs: Vec<PathBuf> = fs::read_dir(dir)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .collect();
    dirs.sort();
    for d in dirs {
        let backing = d.join("backing");
        // A directory without a finished `backing` file is a download or copy in progress.
        if !fs::metadata(&backing).is_ok_and(|m| m.is_file()) {
            continue;
        }
        let Some(name) = longhorn_name(&d) else {
            tracing::warn!(dir = %d.display(), "skipping a backing image without a usable name");
            continue;
        };
        if let Some(first) = by_name.get(&name) {
            tracing::warn!(
                name, kept = %first.display(), skipped = %backing.display(),
                "two backing images share a name; keeping the first"
            );
            continue;
        }
        by_name.insert(name, backing);
    }
    Ok(by_name.into_iter().collect())
}

/// The name from `backing.cfg`, else the directory name without its `-<uuid>` suffix.
fn longhorn_name(dir: &Path) -> Option<String> {
    let from_cfg = fs::read(dir.join("backing.cfg"))
        .ok()
        .and_then(|b| serde_json::from_slice::<BackingCfg>(&b).ok())
        .map(|c| c.name)
        .filter(|n| !n.is_empty());
    let name = from_cfg.or_else(|| {
        let dir_name = dir.file_name()?.to_str()?;
        Some(
            dir_name
                .rsplit_once('-')
                .map_or(dir_name, |(n, _)| n)
                .to_owned(),
        )
    })?;
    valid_component(&name).then_some(name)
}
