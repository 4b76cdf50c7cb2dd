//! The store: where backing images live on a node, and the state bifs keeps beside them.
//!
//! Two layouts, told apart by the presence of `backing-images/`: a flat directory of image
//! files (name = file name; dotfiles and the state directory are skipped), or Longhorn's disk
//! layout, `backing-images/<name>-<uuid>/backing` with the name in `backing.cfg`.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use crate::image::{self, Format};

pub mod identity;
pub mod layout;
pub mod state;

pub use identity::{SourceIdentity, Watched};
pub use layout::Layout;
pub use state::{HeaderRecord, StateDir};

/// Name of the default state directory inside the store.
pub const DEFAULT_STATE_DIR: &str = ".bifs";

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("store {}: {error}", .path.display())]
    Open { path: PathBuf, error: io::Error },
    #[error("store {} is not a directory", .0.display())]
    NotADirectory(PathBuf),
    #[error("state directory {}: {error}", .path.display())]
    State { path: PathBuf, error: io::Error },
}

/// One image of the store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredImage {
    pub name: String,
    pub path: PathBuf,
    pub format: Format,
}

pub struct Store {
    root: PathBuf,
    layout: Layout,
    state: StateDir,
}

impl Store {
    /// Opens the store at `root`; the state directory defaults to `root/.bifs`.
    pub fn open(root: &Path, state: Option<&Path>) -> Result<Self, StoreError> {
        let meta = fs::metadata(root).map_err(|error| StoreError::Open {
            path: root.to_owned(),
            error,
        })?;
        if !meta.is_dir() {
            return Err(StoreError::NotADirectory(root.to_owned()));
        }
        let root = root.canonicalize().map_err(|error| StoreError::Open {
            path: root.to_owned(),
            error,
        })?;
        let layout = Layout::detect(&root);
        let state_path = state.map_or_else(|| root.join(DEFAULT_STATE_DIR), Path::to_path_buf);
        let state = StateDir::open(&state_path).map_err(|error| StoreError::State {
            path: state_path.clone(),
            error,
        })?;
        Ok(Self {
            root,
            layout,
            state,
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

    /// Every image, sorted by name, with its detected format. Unreadable files are skipped
    /// with a warning: one bad file must not hide the others.
    pub fn list(&self) -> io::Result<Vec<StoredImage>> {
        let mut out = Vec::new();
        for (name, path) in self.layout.scan(&self.root, self.state.path())? {
            match image::detect(&path) {
                Ok(format) => out.push(StoredImage { name, path, format }),
                Err(e) => {
                    tracing::warn!(image = %path.display(), error = %e, "skipping unreadable image")
                }
            }
        }
        Ok(out)
    }

    /// The image called `name`, if the store has it.
    pub fn find(&self, name: &str) -> io::Result<Option<StoredImage>> {
        let Some(path) = self.layout.locate(&self.root, self.state.path(), name)? else {
            return Ok(None);
        };
        match image::detect(&path) {
            Ok(format) => Ok(Some(StoredImage {
                name: name.to_owned(),
                path,
                format,
            })),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
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

    #[test]
    fn longhorn_layout_names_from_cfg() {
        let dir = tempfile::tempdir().unwrap();
        let bi = dir.path().join("backing-images");
        let one = bi.join("ubuntu-3f2a");
        fs::create_dir_all(&one).unwrap();
        fs::write(one.join("backing"), vec![1u8; 512]).unwrap();
        fs::write(
            one.join("backing.cfg"),
            r#"{"name":"ubuntu","uuid":"3f2a","size":512}"#,
        )
        .unwrap();
        let two = bi.join("no-cfg-77aa");
        fs::create_dir_all(&two).unwrap();
        fs::write(two.join("backing"), vec![1u8; 512]).unwrap();
        fs::create_dir_all(bi.join("in-progress-1")).unwrap();
        let store = Store::open(dir.path(), None).unwrap();
        assert_eq!(store.layout(), Layout::Longhorn);
        let names: Vec<_> = store.list().unwrap().into_iter().map(|i| i.name).collect();
        assert_eq!(names, ["no-cfg", "ubuntu"]);
        assert_eq!(
            store.find("ubuntu").unwrap().unwrap().path,
            one.canonicalize().unwrap().join("backing")
        );
    }
}
