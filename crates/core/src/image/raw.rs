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
    /// A regular file whose pages can be mapped ([`ReadAt::with_bytes_at`]); cleared when a
    /// mapping fails (a file system without mmap, a security module's refusal), so that the
    /// next reads do not try again.
    mappable: std::sync::atomic::AtomicBool,
}

use crate::io::MIN_MAPPED_READ;

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
        Ok(Self {
            file,
            len,
            mappable: meta.file_type().is_file().into(),
        })
    }

    pub fn file(&self) -> &File {
        &self.file
    }

    fn shrank(&self) -> io::Error {
        io::Error::new(
            io::ErrorKind::UnexpectedEof,
            format!("source shrank below its opened size of {} bytes", self.len),
        )
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
                Ok(0) => return Err(self.shrank()),
                Ok(n) => done += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(done)
    }

    fn with_bytes_at(
        &self,
        offset: u64,
        len: usize,
        f: &mut dyn FnMut(&[u8]),
    ) -> Option<io::Result<()>> {
        let inside = offset
            .checked_add(len as u64)
            .is_some_and(|end| end <= self.len);
        // Only pages the page cache holds: a page still on disk is read with `pread`, which
        // reads ahead (a mapping's fault would read it without).
        if !self.mappable.load(std::sync::atomic::Ordering::Relaxed)
            || len < MIN_MAPPED_READ
            || !inside
            || !bifs_sys::mapped::cached(&self.file, offset, len)
        {
            return None;
        }
        match bifs_sys::mapped::with_mapped(&self.file, offset, len, f) {
            // Too many mapped reads at once: this one copies.
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => None,
            // A file that cannot be mapped (a file system without mmap) is read instead.
            Err(e) if e.kind() != io::ErrorKind::UnexpectedEof => {
                self.mappable
                    .store(false, std::sync::atomic::Ordering::Relaxed);
                None
            }
            Err(e) => Some(Err(e)),
            // A file system with large folios may keep a shrunk file's last folio mapped,
            // zeroed, instead of raising the fault the guard catches: the length tells.
            Ok(()) => Some(match self.file.metadata() {
                Ok(m) if m.len() < offset + len as u64 => Err(self.shrank()),
                Ok(_) => Ok(()),
                Err(e) => Err(e),
            }),
        }
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::view::sectors::{Direction, SectorTransform};
    use crate::xts::Xts;
    use std::io::Write;
    use std::sync::Arc;

    /// A file of `len` patterned bytes, written through the page cache (so all of it is
    /// cached, as a mapped read wants).
    fn patterned(len: usize) -> (tempfile::NamedTempFile, Vec<u8>) {
        let data: Vec<u8> = (0..len as u32).map(|i| (i * 31 % 251) as u8).collect();
        let mut f = tempfile::NamedTempFile::new().unwrap();
        f.write_all(&data).unwrap();
        f.flush().unwrap();
        (f, data)
    }

    fn mapped(raw: &RawFile, offset: u64, len: usize) -> Option<io::Result<Vec<u8>>> {
        let mut got = Vec::new();
        raw.with_bytes_at(offset, len, &mut |b| got = b.to_vec())
            .map(|r| r.map(|()| got))
    }

    #[test]
    fn mapped_reads_give_the_bytes_pread_gives() {
        let (f, data) = patterned(3 << 20);
        let raw = RawFile::open(f.path()).unwrap();
        if mapped(&raw, 0, MIN_MAPPED_READ).is_none() {
            eprintln!(
                "SKIPPED mapped_reads_give_the_bytes_pread_gives: no mapped reads here (a kernel \
                 without cachestat(2), or a file system without mmap)"
            );
            return;
        }
        for (offset, len) in [
            (0u64, 1usize << 20),
            (4095, MIN_MAPPED_READ),
            (1 << 20, 2 << 20),
        ] {
            let got = mapped(&raw, offset, len).expect("mapped").unwrap();
            assert_eq!(
                got,
                data[offset as usize..offset as usize + len],
                "{offset} +{len}"
            );
        }
        // Short reads, and ranges past the end, are left to pread.
        assert!(mapped(&raw, 0, MIN_MAPPED_READ - 1).is_none());
        assert!(mapped(&raw, (3 << 20) - 4096, MIN_MAPPED_READ).is_none());
    }

    fn transform(raw: RawFile, len: u64) -> SectorTransform {
        SectorTransform {
            inner: Arc::new(raw),
            inner_offset: 4096,
            len,
            sector_size: 4096,
            iv_tweak: 9,
            direction: Direction::Encrypt,
            xts: Xts::new(&(0..64u8).collect::<Vec<_>>()).unwrap(),
            path: Default::default(),
        }
    }

    /// Each range is read twice in a row: a transform's first reads alternate between
    /// ciphering from the mapping and from a `pread` copy (`view::read_path`), so both ways
    /// are held to the same bytes.
    #[test]
    fn a_transform_over_a_file_gives_what_it_gives_over_the_same_bytes_in_memory() {
        let (f, data) = patterned(2 << 20);
        let len = (2 << 20) - 4096;
        let over_file = transform(RawFile::open(f.path()).unwrap(), len);
        let over_memory = SectorTransform {
            inner: Arc::new(crate::io::MemSource(data.clone())),
            ..transform(RawFile::open(f.path()).unwrap(), len)
        };
        for (offset, n) in [(0u64, len as usize), (4096, 1 << 20), (100, 300_000)] {
            let mut want = vec![1u8; n];
            over_memory.read_at(offset, &mut want).unwrap();
            for round in 0..2 {
                let mut got = vec![0u8; n];
                over_file.read_at(offset, &mut got).unwrap();
                assert!(got == want, "offset {offset}, {n} bytes, read {round}");
            }
        }
    }

    #[test]
    fn a_transform_over_a_file_that_shrank_fails_instead_of_serving_zeros() {
        let (f, _) = patterned(2 << 20);
        let t = transform(RawFile::open(f.path()).unwrap(), (2 << 20) - 4096);
        f.as_file().set_len(1 << 20).unwrap();
        let mut buf = vec![0u8; 1 << 20];
        let e = t.read_at(1 << 20, &mut buf).expect_err("past the new end");
        assert_eq!(e.kind(), io::ErrorKind::UnexpectedEof);
    }
}
