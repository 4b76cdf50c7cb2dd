//! Serving byte ranges of a sector-wise XTS transform: the offset arithmetic in one place
//! (as gocryptfs keeps `contentenc/offsets.go` apart from its ciphers).

use std::io;
use std::sync::Arc;

use crate::image::{read_full_at, ReadAt};
use crate::xts::{Xts, IV_UNIT, MAX_SECTOR_SIZE};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    Encrypt,
    Decrypt,
}

/// `len` bytes of `inner` starting at `inner_offset`, encrypted or decrypted sector by sector.
/// Sector `k` (at byte `k * sector_size` of the range) has IV `iv_tweak + k * sector_size / 512`.
/// Bytes of `inner` past its end read as zeros (a source padded to whole sectors).
pub struct SectorTransform {
    pub inner: Arc<dyn ReadAt>,
    pub inner_offset: u64,
    pub len: u64,
    pub sector_size: usize,
    pub iv_tweak: u64,
    pub direction: Direction,
    pub xts: Xts,
}

impl SectorTransform {
    fn crypt(&self, buf: &mut [u8], pos: u64) -> io::Result<()> {
        let iv = self.iv_tweak + pos / IV_UNIT as u64;
        let r = match self.direction {
            Direction::Encrypt => self.xts.encrypt_sectors(buf, self.sector_size, iv),
            Direction::Decrypt => self.xts.decrypt_sectors(buf, self.sector_size, iv),
        };
        r.map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))
    }

    /// Reads `buf.len()` bytes (clamped to the range) at `offset` within the range. Whole
    /// sectors are transformed in the caller's buffer; only a partial first or last sector
    /// goes through a scratch sector.
    pub fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<usize> {
        if offset >= self.len {
            return Ok(0);
        }
        let n = buf.len().min((self.len - offset) as usize);
        let s = self.sector_size as u64;
        let (mut pos, mut done) = (offset, 0usize);
        while done < n {
            let sector_start = pos / s * s;
            if pos == sector_start && n - done >= self.sector_size {
                let run = (n - done) / self.sector_size * self.sector_size;
                let chunk = &mut buf[done..done + run];
                read_full_at(&*self.inner, self.inner_offset + pos, chunk)?;
                self.crypt(chunk, pos)?;
                done += run;
                pos += run as u64;
            } else {
                let mut scratch = [0u8; MAX_SECTOR_SIZE];
                let sector = &mut scratch[..self.sector_size];
                read_full_at(&*self.inner, self.inner_offset + sector_start, sector)?;
                self.crypt(sector, sector_start)?;
                let from = (pos - sector_start) as usize;
                let take = (self.sector_size - from).min(n - done);
                buf[done..done + take].copy_from_slice(&sector[from..from + take]);
                done += take;
                pos += take as u64;
            }
        }
        Ok(n)
    }
}
