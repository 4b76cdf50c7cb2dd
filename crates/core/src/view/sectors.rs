//! Serving byte ranges of a sector-wise XTS transform: the offset arithmetic in one place
//! (as gocryptfs keeps `contentenc/offsets.go` apart from its ciphers).

use std::io;
use std::sync::Arc;

use crate::io::{read_full_at, ReadAt};
use crate::view::read_path::{ReadPath, Way};
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
    /// Whether whole sectors are ciphered from a mapping of the source or read first.
    pub path: ReadPath,
}

impl SectorTransform {
    /// Ciphers the whole sectors at `pos` into `buf`: from `src` where given (out of place),
    /// else the bytes `buf` holds (in place).
    fn crypt(&self, src: Option<&[u8]>, buf: &mut [u8], pos: u64) -> io::Result<()> {
        let (xts, sector_size) = (&self.xts, self.sector_size);
        // plain64 IVs are the sector number modulo 2^64, as dm-crypt counts them: a segment's
        // iv_tweak may be any u64 (cryptsetup accepts one near 2^64), so the sum wraps.
        let iv = self.iv_tweak.wrapping_add(pos / IV_UNIT as u64);
        let r = match (self.direction, src) {
            (Direction::Encrypt, None) => xts.encrypt_sectors(buf, sector_size, iv),
            (Direction::Decrypt, None) => xts.decrypt_sectors(buf, sector_size, iv),
            (Direction::Encrypt, Some(src)) => xts.encrypt_sectors_from(src, buf, sector_size, iv),
            (Direction::Decrypt, Some(src)) => xts.decrypt_sectors_from(src, buf, sector_size, iv),
        };
        r.map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))
    }

    /// Ciphers the whole sectors at `pos` straight from where the source holds them into
    /// `out` ([`ReadAt::with_bytes_at`]: no copy before the cipher); `false` where the source
    /// does not offer its bytes so (or not all of them: a short source's end is read, as
    /// zeros follow it), or the engine has no out-of-place pass.
    fn crypt_from_source(&self, out: &mut [u8], pos: u64) -> io::Result<bool> {
        // A kernel that ciphers in place only would copy the mapped bytes first: the mapping
        // would then cost more than the `pread` it replaces.
        if !self.xts.ciphers_out_of_place() {
            return Ok(false);
        }
        let mut ciphered = Ok(());
        let read = self
            .inner
            .with_bytes_at(self.inner_offset + pos, out.len(), &mut |src| {
                ciphered = self.crypt(Some(src), out, pos);
            });
        match read {
            None => Ok(false),
            Some(r) => r.and(ciphered).map(|()| true),
        }
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
                let chosen = self.path.begin(run);
                let mapped = chosen.way == Way::Mapped && self.crypt_from_source(chunk, pos)?;
                if !mapped {
                    read_full_at(&*self.inner, self.inner_offset + pos, chunk)?;
                    self.crypt(None, chunk, pos)?;
                }
                let way = if mapped { Way::Mapped } else { Way::Copied };
                self.path.end(chosen, way, run);
                done += run;
                pos += run as u64;
            } else {
                let mut scratch = [0u8; MAX_SECTOR_SIZE];
                let sector = &mut scratch[..self.sector_size];
                read_full_at(&*self.inner, self.inner_offset + sector_start, sector)?;
                self.crypt(None, sector, sector_start)?;
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::io::MemSource;

    /// Two different halves (equal halves are refused).
    const KEY: [u8; 32] = {
        let mut k = [0x42u8; 32];
        k[31] = 7;
        k
    };

    /// `len` bytes over `data` placed at `inner_offset` in the inner source.
    fn transform(data: &[u8], inner_offset: u64, len: u64, sector_size: usize) -> SectorTransform {
        let mut inner = vec![0xeeu8; inner_offset as usize];
        inner.extend_from_slice(data);
        SectorTransform {
            inner: Arc::new(MemSource(inner)),
            inner_offset,
            len,
            sector_size,
            iv_tweak: 3,
            direction: Direction::Encrypt,
            xts: Xts::new(&KEY).unwrap(),
            path: Default::default(),
        }
    }

    /// The whole range, transformed independently: sector by sector with its own IV.
    fn expected(data: &[u8], len: u64, sector_size: usize) -> Vec<u8> {
        let mut out = data.to_vec();
        out.resize(len as usize, 0);
        let xts = Xts::new(&KEY).unwrap();
        for (k, sector) in out.chunks_exact_mut(sector_size).enumerate() {
            let iv = 3 + (k * sector_size / IV_UNIT) as u64;
            xts.encrypt_sectors(sector, sector_size, iv).unwrap();
        }
        out
    }

    fn read(t: &SectorTransform, offset: u64, n: usize) -> Vec<u8> {
        let mut buf = vec![0xaau8; n];
        let got = t.read_at(offset, &mut buf).unwrap();
        buf.truncate(got);
        buf
    }

    #[test]
    fn any_range_reads_as_the_same_bytes_as_the_whole() {
        for sector_size in [512usize, 4096] {
            let data: Vec<u8> = (0..6 * 4096u32).map(|i| (i * 31 % 251) as u8).collect();
            let len = data.len() as u64;
            let t = transform(&data, 1024, len, sector_size);
            let whole = expected(&data, len, sector_size);
            let s = sector_size as u64;
            for (offset, n) in [
                (0, len as usize),                // all whole sectors
                (0, 10),                          // partial first sector
                (7, 100),                         // inside one sector
                (s - 1, 2),                       // across one boundary
                (s - 100, 2 * sector_size + 200), // partial, whole, partial
                (s, sector_size),                 // exactly one aligned sector
                (len - 5, 5),                     // the last bytes
                (3, len as usize - 3),            // everything but a partial first
            ] {
                assert_eq!(
                    read(&t, offset, n),
                    whole[offset as usize..offset as usize + n],
                    "sector {sector_size}, offset {offset}, {n} bytes"
                );
            }
        }
    }

    #[test]
    fn reads_at_and_after_the_end_are_clamped() {
        let data = vec![9u8; 8192];
        let t = transform(&data, 0, 8192, 4096);
        let whole = expected(&data, 8192, 4096);
        assert_eq!(read(&t, 8000, 1000), whole[8000..]);
        assert!(read(&t, 8192, 10).is_empty());
        assert!(read(&t, 1 << 40, 10).is_empty());
    }

    #[test]
    fn a_short_inner_source_is_padded_with_zeros() {
        // 1000 bytes of data in a 1024-byte range: the last sector is part data, part zeros.
        let data = vec![5u8; 1000];
        let t = transform(&data, 0, 1024, 512);
        assert_eq!(read(&t, 0, 1024), expected(&data, 1024, 512));
        assert_eq!(read(&t, 990, 30), expected(&data, 1024, 512)[990..1020]);
    }

    #[test]
    fn ivs_wrap_past_two_to_the_64() {
        // A segment whose iv_tweak is near 2^64 (cryptsetup accepts any u64): sector k's IV is
        // (iv_tweak + k * sector_size / 512) mod 2^64, as dm-crypt's plain64 counts.
        let data: Vec<u8> = (0..4 * 512u32).map(|i| (i * 7) as u8).collect();
        let mut t = transform(&data, 0, data.len() as u64, 512);
        t.iv_tweak = u64::MAX - 1;
        let xts = Xts::new(&KEY).unwrap();
        let mut want = data.clone();
        for (k, sector) in want.chunks_exact_mut(512).enumerate() {
            xts.encrypt_sectors(sector, 512, (u64::MAX - 1).wrapping_add(k as u64))
                .unwrap();
        }
        assert_eq!(read(&t, 0, data.len()), want);
        assert_eq!(read(&t, 1500, 300), want[1500..1800]);
    }

    #[test]
    fn decrypt_undoes_encrypt() {
        let data: Vec<u8> = (0..3 * 4096u32).map(|i| i as u8).collect();
        let enc = expected(&data, data.len() as u64, 4096);
        let mut t = transform(&enc, 512, enc.len() as u64, 4096);
        t.direction = Direction::Decrypt;
        assert_eq!(read(&t, 0, data.len()), data);
        assert_eq!(read(&t, 4000, 5000), data[4000..9000]);
    }
}
