//! Every image the store serves or copies is opened *beneath* its root: a symlink (or a qcow2
//! backing file name) that leads out of the store is refused, so no file elsewhere on the node
//! is ever read through a view.
//!
//! The open is `openat2(root, relative path, RESOLVE_BENEATH | RESOLVE_NO_MAGICLINKS)`: the
//! kernel resolves every component (symlinks included) and fails with `EXDEV` when the walk
//! would leave the root, in the same call that opens the file, so nothing can be swapped
//! between a check and the open. Symlinks that stay inside the store are followed (an image
//! may be a relative link to another file of the store); absolute symlinks are refused even
//! when they point into the store (the kernel cannot tell where they land without leaving).
//!
//! Kernels before 5.6 (or seccomp profiles) without `openat2` get a weaker fallback: the path
//! is canonicalized, checked to be under the root, and that canonical path opened with
//! `O_NOFOLLOW`; a symlink swapped into a parent directory between the two steps is not caught.

use std::fs::File;
use std::io;
use std::path::{Component, Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

use rustix::fs::{Mode, OFlags, ResolveFlags};

use bifs_core::image::{checked_image_file, IMAGE_OPEN_FLAGS};

/// Set once `openat2` was found missing, so the fallback is not re-tried per open.
static NO_OPENAT2: AtomicBool = AtomicBool::new(false);

/// The error of a path that leads out of the store.
pub fn outside(path: &Path) -> io::Error {
    io::Error::new(
        io::ErrorKind::PermissionDenied,
        format!(
            "{} leads out of the store (a symlink or qcow2 backing file outside it is refused)",
            path.display()
        ),
    )
}

/// Whether `e` is the refusal of [`outside`] (or the kernel's `EXDEV` for it).
pub fn is_outside(e: &io::Error) -> bool {
    e.kind() == io::ErrorKind::PermissionDenied
        && e.raw_os_error().is_none()
        && e.to_string().contains("leads out of the store")
}

/// Opens the image at `path` (absolute, lexically under `root`, or relative to it) for
/// reading, beneath `root` (whose open directory is `root_dir`). Refuses FIFOs, sockets and
/// character devices as [`bifs_core::image::open_image_file`] does.
pub fn open_beneath(root: &Path, root_dir: &File, path: &Path) -> io::Result<File> {
    let rel = relative(root, path).ok_or_else(|| outside(path))?;
    if !NO_OPENAT2.load(Ordering::Relaxed) {
        let flags =
            OFlags::RDONLY | OFlags::CLOEXEC | OFlags::from_bits_retain(IMAGE_OPEN_FLAGS as u32);
        match rustix::fs::openat2(
            root_dir,
            &rel,
            flags,
            Mode::empty(),
            ResolveFlags::BENEATH | ResolveFlags::NO_MAGICLINKS,
        ) {
            Ok(fd) => return checked_image_file(File::from(fd)),
            Err(rustix::io::Errno::XDEV) => return Err(outside(path)),
            // ENOSYS: a kernel before 5.6; EPERM: a seccomp profile that does not know it
            // (when opening the root itself fails the same way, the call is what is refused).
            Err(e @ (rustix::io::Errno::NOSYS | rustix::io::Errno::PERM))
                if openat2_refused(root_dir) =>
            {
                NO_OPENAT2.store(true, Ordering::Relaxed);
                tracing::warn!(
                    error = %e,
                    "openat2 is not available (kernel before 5.6, or a seccomp profile): \
                     images are confined to the store by canonical path instead"
                );
            }
            Err(e) => return Err(e.into()),
        }
    }
    let canonical = root.join(&rel).canonicalize()?;
    if !canonical.starts_with(root) {
        return Err(outside(path));
    }
    use std::os::unix::fs::OpenOptionsExt;
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(IMAGE_OPEN_FLAGS | libc::O_NOFOLLOW)
        .open(&canonical)?;
    checked_image_file(file)
}

/// Whether `openat2` itself is refused (not the path): opening the root directory with it
/// fails too.
fn openat2_refused(root_dir: &File) -> bool {
    rustix::fs::openat2(
        root_dir,
        ".",
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
        ResolveFlags::BENEATH,
    )
    .is_err()
}

/// `path` relative to `root`, when it is lexically under it (or relative already). `..`
/// components are kept: the open beneath the root decides whether they leave it.
fn relative(root: &Path, path: &Path) -> Option<PathBuf> {
    let rel = if path.is_absolute() {
        path.strip_prefix(root).ok()?.to_path_buf()
    } else {
        path.to_path_buf()
    };
    if rel.as_os_str().is_empty() || rel.components().any(|c| matches!(c, Component::RootDir)) {
        return None;
    }
    Some(rel)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    #[test]
    fn links_inside_are_followed_and_links_outside_refused() {
        let outer = tempfile::tempdir().unwrap();
        let root = outer.path().join("store");
        std::fs::create_dir_all(root.join("sub")).unwrap();
        let root = root.canonicalize().unwrap();
        std::fs::write(root.join("a.img"), b"inside").unwrap();
        std::fs::write(outer.path().join("secret"), b"outside").unwrap();
        symlink("a.img", root.join("rel.img")).unwrap();
        symlink("../a.img", root.join("sub/up.img")).unwrap();
        symlink(outer.path().join("secret"), root.join("abs.img")).unwrap();
        symlink("../secret", root.join("out.img")).unwrap();
        symlink(root.join("a.img"), root.join("abs-in.img")).unwrap();
        let dir = File::open(&root).unwrap();
        let read = |p: &str| -> io::Result<String> {
            let f = open_beneath(&root, &dir, &root.join(p))?;
            std::io::read_to_string(f)
        };
        assert_eq!(read("a.img").unwrap(), "inside");
        assert_eq!(read("rel.img").unwrap(), "inside");
        assert_eq!(read("sub/up.img").unwrap(), "inside");
        for p in [
            "abs.img",
            "out.img",
            "abs-in.img",
            "../secret",
            "sub/../../secret",
        ] {
            let e = read(p).unwrap_err();
            assert!(is_outside(&e), "{p}: {e}");
        }
        let e = open_beneath(&root, &dir, &outer.path().join("secret")).unwrap_err();
        assert!(is_outside(&e), "{e}");
    }
}
