//! Image sources: byte ranges readable at any offset, with hole information where known.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

pub mod detect;
pub mod qcow2;
pub mod raw;

pub use detect::{detect, Format};
use raw::RawFile;

/// A read-only random-access byte source: a stored file, a qcow2 virtual disk, or a transform
/// view. Shared across threads (FUSE workers read concurrently), hence `&self` and `Send + Sync`.
#[allow(clippy::len_without_is_empty)] // a source is never asked whether it is empty
pub trait ReadAt: Send + Sync {
    /// Total length in bytes.
    fn len(&self) -> u64;

    /// Reads up to `buf.len()` bytes at `offset`. Returns fewer only at the end of the source
    /// (0 at or past `len()`); a source never returns a short read in the middle.
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<usize>;

    /// `SEEK_DATA`: the first offset `>= offset` that may hold data, or `None` when only holes
    /// remain. Holes read as zeros. The default treats everything as data.
    fn next_data(&self, offset: u64) -> io::Result<Option<u64>> {
        Ok((offset < self.len()).then_some(offset))
    }

    /// `SEEK_HOLE`: the first offset `>= offset` that starts a hole; `len()` when none remains
    /// (the end of a file counts as a hole, as for lseek).
    fn next_hole(&self, offset: u64) -> io::Result<u64> {
        Ok(self.len().max(offset))
    }
}

impl<T: ReadAt + ?Sized> ReadAt for std::sync::Arc<T> {
    fn len(&self) -> u64 {
        (**self).len()
    }
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<usize> {
        (**self).read_at(offset, buf)
    }
    fn next_data(&self, offset: u64) -> io::Result<Option<u64>> {
        (**self).next_data(offset)
    }
    fn next_hole(&self, offset: u64) -> io::Result<u64> {
        (**self).next_hole(offset)
    }
}

impl<T: ReadAt + ?Sized> ReadAt for Box<T> {
    fn len(&self) -> u64 {
        (**self).len()
    }
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<usize> {
        (**self).read_at(offset, buf)
    }
    fn next_data(&self, offset: u64) -> io::Result<Option<u64>> {
        (**self).next_data(offset)
    }
    fn next_hole(&self, offset: u64) -> io::Result<u64> {
        (**self).next_hole(offset)
    }
}

/// Opens an image file for reading, refusing anything but a regular file or a block device.
///
/// A path from a hostile image (a qcow2 backing file name) or a store could name a FIFO, a
/// socket or a character device: a plain `open` of a FIFO blocks until a writer comes, which
/// would hang the mount. `O_NONBLOCK` makes that open return at once; the type is then
/// checked on the open file (no race with a rename), and blocking mode restored.
pub fn open_image_file(path: &Path) -> io::Result<std::fs::File> {
    use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY)
        .open(path)?;
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

/// Fills `buf` completely from `offset`, zero-filling past the end of the source. Views use it
/// where a partial sector must still be whole (the last sector of a source padded to 512 bytes).
pub fn read_full_at(src: &dyn ReadAt, offset: u64, buf: &mut [u8]) -> io::Result<()> {
    let mut done = 0;
    while done < buf.len() {
        let n = src.read_at(offset + done as u64, &mut buf[done..])?;
        if n == 0 {
            buf[done..].fill(0);
            break;
        }
        done += n;
    }
    Ok(())
}

/// Bytes in memory as a source: a freshly formatted LUKS2 header region, test data.
pub struct MemSource(pub Vec<u8>);

impl ReadAt for MemSource {
    fn len(&self) -> u64 {
        self.0.len() as u64
    }

    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<usize> {
        let Ok(start) = usize::try_from(offset) else {
            return Ok(0);
        };
        let Some(rest) = self.0.get(start..) else {
            return Ok(0);
        };
        let n = buf.len().min(rest.len());
        buf[..n].copy_from_slice(&rest[..n]);
        Ok(n)
    }
}

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
    let io_err = |error| OpenError::Io {
        path: path.to_owned(),
        error,
    };
    match detect::detect_file(&file).map_err(io_err)? {
        Format::Qcow2 => match qcow2::Qcow2Image::from_file(file, path) {
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
