//! The one interface every layer reads through: [`ReadAt`], a byte range readable at any
//! offset with hole information where known. Image sources, transform views and the faces
//! (FUSE, HTTP) all speak it; it lives below them all so that no format depends on another's
//! module to be read.

use std::io;

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

    /// Runs `f` on the `len` bytes at `offset` where the source holds them (a file's page
    /// cache, mapped), instead of copying them into a buffer first: for a transform that reads
    /// each byte once. `None` where the source does not offer that (the default), for this
    /// range or at all: the caller reads into its buffer instead. `Some(Err)` where the bytes
    /// could not all be read (the source shrank meanwhile): whatever `f` did is void.
    fn with_bytes_at(
        &self,
        _offset: u64,
        _len: usize,
        _f: &mut dyn FnMut(&[u8]),
    ) -> Option<io::Result<()>> {
        None
    }
}

/// The shortest read a source offers mapped ([`ReadAt::with_bytes_at`]); shorter ones are
/// copied with `pread`: a mapping's fixed cost (two system calls and a TLB flush) is not worth
/// a few pages. The views' reads are 128 KiB to 1 MiB (FUSE requests, HTTP chunks):
/// docs/performance.md, "Reading the source where it lies".
pub const MIN_MAPPED_READ: usize = 64 << 10;

/// `ReadAt` for a pointer to a source: every method the source's own.
macro_rules! forward_read_at {
    ($($pointer:ident)::+) => {
        impl<T: ReadAt + ?Sized> ReadAt for $($pointer)::+<T> {
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
            fn with_bytes_at(
                &self,
                offset: u64,
                len: usize,
                f: &mut dyn FnMut(&[u8]),
            ) -> Option<io::Result<()>> {
                (**self).with_bytes_at(offset, len, f)
            }
        }
    };
}

forward_read_at!(std::sync::Arc);
forward_read_at!(Box);

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

/// Bytes of `src` in `start..end` that its hole information calls data, walking at most
/// `max_extents` data extents; `None` past that (a fragmented range: the caller assumes the
/// worst). A source without hole information counts the whole range.
pub fn data_bytes_in(
    src: &dyn ReadAt,
    start: u64,
    end: u64,
    max_extents: usize,
) -> io::Result<Option<u64>> {
    let end = end.min(src.len());
    let mut pos = start;
    let mut total = 0u64;
    for _ in 0..max_extents {
        let Some(data) = src.next_data(pos)?.filter(|&d| d < end) else {
            return Ok(Some(total));
        };
        let hole = src.next_hole(data)?.clamp(data, end);
        total += hole - data;
        if hole >= end {
            return Ok(Some(total));
        }
        pos = hole;
    }
    Ok(None)
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
