//! Image sources: byte ranges readable at any offset, with hole information where known.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

pub mod detect;
pub mod qcow2;
pub mod raw;

pub use crate::io::{read_full_at, MemSource, ReadAt};
pub use detect::{detect, Format};
use raw::RawFile;

/// Opens an image file for reading, refusing anything but a regular file or a block device.
///
/// A path from a hostile image (a qcow2 backing file name) or a store could name a FIFO, a
/// socket or a character device: a plain `open` of a FIFO blocks until a writer comes, which
/// would hang the mount. `O_NONBLOCK` makes that open return at once; the type is then
/// checked on the open file (no race with a rename), and blocking mode restored.
pub fn open_image_file(path: &Path) -> io::Result<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(IMAGE_OPEN_FLAGS)
        .open(path)?;
    checked_image_file(file)
}

/// The flags [`open_image_file`] opens with besides read-only: `O_NONBLOCK` (a FIFO must not
/// block the open) and `O_NOCTTY`. A caller that opens images its own way (the store opens
/// them beneath its root) uses these, then [`checked_image_file`].
pub const IMAGE_OPEN_FLAGS: i32 = libc::O_NONBLOCK | libc::O_NOCTTY;

/// Refuses an opened `file` that is not a regular file or a block device, and restores
/// blocking mode (see [`open_image_file`]).
pub fn checked_image_file(file: std::fs::File) -> io::Result<std::fs::File> {
    use std::os::unix::fs::FileTypeExt;
    let kind = file.metadata()?.file_type();
    if !(kind.is_file() || kind.is_block_device()) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "not a regular file or block device (a FIFO, socket or character device is refused)",
        ));
    }
    let flags = rustix::fs::fcntl_getfl(&file)?;
    rustix::fs::fcntl_setfl(&file, flags - rustix::fs::OFlags::NONBLOCK)?;
    Ok(file)
}

/// How a qcow2 image's backing files are opened: [`open_image_file`] for images the operator
/// names; a store passes its own, which refuses files outside it.
pub type Opener<'a> = &'a dyn Fn(&Path) -> io::Result<std::fs::File>;

#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error("{}: {error}", .path.display())]
    Io { path: PathBuf, error: io::Error },
    #[error("{}: {error}", .path.display())]
    Qcow2 {
        path: PathBuf,
        error: qcow2::Qcow2Error,
    },
}

/// Opens an image file as the disk it holds: a qcow2 image as its virtual disk, anything else
/// (raw, LUKS) as its bytes.
pub fn open_virtual_disk(path: &Path) -> Result<Arc<dyn ReadAt>, OpenError> {
    let file = open_image_file(path).map_err(|error| OpenError::Io {
        path: path.to_owned(),
        error,
    })?;
    virtual_disk_of(file, path)
}

/// [`open_virtual_disk`] of an already open `file` (named `path` in errors and for a qcow2
/// image's relative backing file name): the disk is read through this very descriptor, so it
/// is the same inode the caller took its identity from, whatever was renamed since.
pub fn virtual_disk_of(file: std::fs::File, path: &Path) -> Result<Arc<dyn ReadAt>, OpenError> {
    virtual_disk_with(file, path, &open_image_file)
}

/// [`virtual_disk_of`], opening a qcow2 image's backing files with `opener`.
pub fn virtual_disk_with(
    file: std::fs::File,
    path: &Path,
    opener: Opener<'_>,
) -> Result<Arc<dyn ReadAt>, OpenError> {
    let io_err = |error| OpenError::Io {
        path: path.to_owned(),
        error,
    };
    match detect::detect_file(&file).map_err(io_err)? {
        Format::Qcow2 => match qcow2::Qcow2Image::from_file_with(file, path, opener) {
            Ok(image) => Ok(Arc::new(image)),
            Err(error) => Err(OpenError::Qcow2 {
                path: path.to_owned(),
                error,
            }),
        },
        Format::Raw | Format::Luks1 | Format::Luks2 => {
            Ok(Arc::new(RawFile::from_file(file).map_err(io_err)?))
        }
    }
}
