//! The decrypt view: the plaintext of a LUKS1/LUKS2 image's data segment.

use std::io;
use std::sync::Arc;

use crate::io::ReadAt;
use crate::kdf::KdfLimits;
use crate::keys::{Passphrase, VolumeKey};
use crate::luks::{LuksError, LuksHeader};
use crate::xts::Xts;

use super::sectors::{Direction, SectorTransform};
use super::ViewError;

/// How much plaintext one step of a hole scan decrypts: memory stays bounded whatever the size.
const SCAN_CHUNK: usize = 1 << 20;

pub struct DecryptView {
    header: LuksHeader,
    data: SectorTransform,
}

impl DecryptView {
    /// Parses `image`'s header and unlocks it with `passphrase`.
    pub fn open(
        image: Arc<dyn ReadAt>,
        passphrase: &Passphrase,
        limits: &KdfLimits,
    ) -> Result<Self, ViewError> {
        let header = match LuksHeader::read(&*image) {
            Err(LuksError::NotLuks) => return Err(ViewError::NotEncrypted),
            other => other?,
        };
        let key = header.unlock(&*image, passphrase, limits)?;
        Self::with_key(image, header, &key)
    }

    /// With a volume key already unlocked (cached per mount).
    pub fn with_key(
        image: Arc<dyn ReadAt>,
        header: LuksHeader,
        key: &VolumeKey,
    ) -> Result<Self, ViewError> {
        let seg = header.segment();
        let len = seg.len_in(image.len())?;
        let data = SectorTransform {
            inner: image,
            inner_offset: seg.offset,
            len,
            sector_size: seg.sector_size,
            iv_tweak: seg.iv_tweak,
            direction: Direction::Decrypt,
            xts: Xts::new(key.as_bytes())?,
            path: Default::default(),
        };
        Ok(Self { header, data })
    }

    pub fn header(&self) -> &LuksHeader {
        &self.header
    }

    /// The start of the first sector at or after the one holding `offset` whose plaintext is
    /// all zeros (`want_zero`) or not. A hole in the ciphertext decrypts to noise, not zeros,
    /// so the only way to know a sector is a hole is to decrypt it.
    fn find_sector(&self, offset: u64, want_zero: bool) -> io::Result<Option<u64>> {
        let s = self.data.sector_size as u64;
        let len = self.data.len;
        let mut pos = offset / s * s;
        let mut buf = vec![0u8; SCAN_CHUNK.min(len.saturating_sub(pos) as usize)];
        while pos < len {
            let n = (len - pos).min(buf.len() as u64) as usize;
            let chunk = &mut buf[..n];
            self.data.read_at(pos, chunk)?;
            for (i, sector) in chunk.chunks(s as usize).enumerate() {
                let zero = sector.iter().fold(0u8, |acc, &b| acc | b) == 0;
                if zero == want_zero {
                    return Ok(Some(pos + i as u64 * s));
                }
            }
            pos += n as u64;
        }
        Ok(None)
    }
}

impl ReadAt for DecryptView {
    fn len(&self) -> u64 {
        self.data.len
    }

    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<usize> {
        self.data.read_at(offset, buf)
    }

    /// Holes are sectors verified to decrypt to zeros; the scan costs a decryption of the
    /// bytes up to the answer, which `cp` only pays when the ciphertext file looks sparse.
    fn next_data(&self, offset: u64) -> io::Result<Option<u64>> {
        if offset >= self.data.len {
            return Ok(None);
        }
        Ok(self.find_sector(offset, false)?.map(|p| p.max(offset)))
    }

    fn next_hole(&self, offset: u64) -> io::Result<u64> {
        if offset >= self.data.len {
            return Ok(offset);
        }
        Ok(self
            .find_sector(offset, true)?
            .map_or(self.data.len, |p| p.max(offset)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::io::MemSource;

    #[test]
    fn holes_are_verified_zero_sectors() {
        let params = crate::view::params::cheap_params("pw");
        let mut plain = vec![7u8; 64 * 1024];
        plain[8192..40960].fill(0);
        let enc = crate::view::EncryptView::create(
            Arc::new(MemSource(plain.clone())),
            &params,
            Some(4096),
        )
        .unwrap();
        let mut image = vec![0u8; enc.len() as usize];
        crate::io::read_full_at(&enc, 0, &mut image).unwrap();
        let view = DecryptView::open(
            Arc::new(MemSource(image)),
            &params.passphrase,
            &KdfLimits::default(),
        )
        .unwrap();
        assert_eq!(view.next_hole(0).unwrap(), 8192);
        assert_eq!(view.next_hole(9000).unwrap(), 9000);
        assert_eq!(view.next_data(8192).unwrap(), Some(40960));
        assert_eq!(view.next_hole(40960).unwrap(), 65536);
        assert_eq!(view.next_data(65536).unwrap(), None);
    }
}
