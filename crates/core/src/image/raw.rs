//! A plain file as a source, with holes from `SEEK_DATA`/`SEEK_HOLE`.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::Path;

use super::ReadAt;

/// A regular file read with `pread`. Its length is fixed when opened: a view over it must not
/// silently serve a mix of old and new content, so growth is ignored and shrinkage shows up as
/// an `UnexpectedEof` error from `read_at`.
pub struct RawFile {
    file: File,
    len: u64,
}

impl RawFile {
    pub fn open(path: &Path) -> io::Result<Self> {
        Self::from_file(super::open_image_file(path)?)
    }

    pub fn from_file(mut file: File) -> io::Result<Self> {
        use std::io::{Seek, SeekFrom};
        use std::os::unix::fs::FileTypeExt;
        let meta = file.metadata()?;
        // A block device (a node's disk, a guest's /dev/vdb) reports st_size 0: its size is
        // where a seek to the end lands.
        let len = if meta.file_type().is_block_device() {
            file.seek(SeekFrom::End(0))?
        } else {
            meta.len()
        };
        Ok(Self { file, len })
    }

    pub fn file(&self) -> &File {
        &self.file
    }

    /// `SEEK_DATA`/`SEEK_HOLE` on the file; `None` where the kernel says ENXIO (no data, or
    /// hole, at or after the offset).
    fn lseek(&self, whence: rustix::fs::SeekFrom) -> io::Result<Option<u64>> {
        match rustix::fs::seek(&self.file, whence) {
            Ok(off) => Ok(Some(off)),
            Err(rustix::io::Errno::NXIO) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }
}

impl ReadAt for RawFile {
    fn len(&self) -> u64 {
        self.len
    }

    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<usize> {
        if offset >= self.len {
            return Ok(0);
        }
        let want = buf.len().min((self.len - offset) as usize);
        let buf = &mut buf[..want];
        let mut done = 0;
        while done < want {
            match self.file.read_at(&mut buf[done..], offset + done as u64) {
                Ok(0) => {
                    return Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        format!("source shrank below its opened size of {} bytes", self.len),
                    ))
                }
                Ok(n) => done += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(done)
    }

    fn next_data(&self, offset: u64) -> io::Result<Option<u64>> {
        if offset >= self.len {
            return Ok(None);
        }
        Ok(self
            .lseek(rustix::fs::SeekFrom::Data(offset))?
            .filter(|&o| o < self.len))
    }

    fn next_hole(&self, offset: u64) -> io::Result<u64> {
        if offset >= self.len {
            return Ok(offset);
        }
        Ok(self
            .lseek(rustix::fs::SeekFrom::Hole(offset))?
            .unwrap_or(self.len)
            .min(self.len))
    }
}
