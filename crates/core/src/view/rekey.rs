//! Rekey: a LUKS image whose new LUKS2 header wraps the *same* volume key under a new
//! passphrase, followed by the source's data segment byte for byte (no re-encryption).
//!
//! Why the ciphertext stays valid at a new offset: with `aes-xts-plain64` the IV of a sector
//! is its number counted from the start of the data segment (plus the segment's `iv_tweak`),
//! not from the start of the file. Moving the segment (a LUKS1 source at 2 MiB, a LUKS2 one
//! made with `--offset`) to bifs' 16 MiB keeps every IV as long as the tweak is kept: the new
//! header is always made with tweak 0, so a source with another tweak is refused.

use std::io;
use std::sync::Arc;

use crate::io::{MemSource, ReadAt};
use crate::kdf::KdfLimits;
use crate::keys::Passphrase;
use crate::luks::{FormatParams, Luks2Header, LuksError, LuksHeader, DATA_OFFSET};

use super::LuksParams;

#[derive(Debug, thiserror::Error)]
pub enum RekeyError {
    #[error("the source is not encrypted (no LUKS header); there is nothing to rekey")]
    NotEncrypted,
    #[error("the source's passphrase: {0}")]
    Unlock(LuksError),
    #[error(transparent)]
    Luks(#[from] LuksError),
    #[error("new keyslot KDF: {0}")]
    Kdf(#[from] crate::kdf::KdfError),
    #[error("the source's data segment has iv_tweak {0}; bifs rekeys only segments with tweak 0")]
    IvTweak(u64),
}

/// The rekeyed image, as a view: a fresh 16 MiB header region, then the source's ciphertext.
pub struct RekeyView {
    header: MemSource,
    source: Arc<dyn ReadAt>,
    data_offset: u64,
    data_len: u64,
}

impl RekeyView {
    /// Unlocks `source` with `old` and formats a header for `new` around the same volume key,
    /// with the source's sector size.
    pub fn create(
        source: Arc<dyn ReadAt>,
        old: &Passphrase,
        new: &LuksParams,
    ) -> Result<Self, RekeyError> {
        let header = match LuksHeader::read(&*source) {
            Err(LuksError::NotLuks) => return Err(RekeyError::NotEncrypted),
            other => other?,
        };
        let key = header
            .unlock(&*source, old, &KdfLimits::default())
            .map_err(RekeyError::Unlock)?;
        let seg = header.segment();
        if seg.iv_tweak != 0 {
            return Err(RekeyError::IvTweak(seg.iv_tweak));
        }
        let data_len = seg.len_in(source.len())?;
        if key.len() != new.key_bytes() {
            // The volume key is what it is: rekeying cannot change its size without
            // re-encrypting. The requested size (a Secret's CRYPTO_KEY_SIZE) only matters for
            // new images.
            tracing::warn!(
                source_key_bits = key.len() * 8,
                requested_key_bits = new.key_bits,
                "the requested key size (CRYPTO_KEY_SIZE) differs from the source's volume key; keeping the source's"
            );
        }
        let kdf = new.kdf.resolve(key.len())?;
        let params = FormatParams {
            hash: new.hash,
            kdf,
            sector_size: seg.sector_size,
            // As for encrypt: cryptsetup skips the digest benchmark when costs are forced.
            digest_iterations: Some(new.kdf.digest_iterations(key.len())),
            uuid: None,
            label: String::new(),
        };
        let region = Luks2Header::format(&params, &key, &new.passphrase)?;
        Ok(Self {
            header: MemSource(region),
            source,
            data_offset: seg.offset,
            data_len,
        })
    }

    /// Where the source's ciphertext starts and how long it is.
    pub fn source_segment(&self) -> (u64, u64) {
        (self.data_offset, self.data_len)
    }
}

impl ReadAt for RekeyView {
    fn len(&self) -> u64 {
        DATA_OFFSET + self.data_len
    }

    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<usize> {
        let mut done = 0;
        if offset < DATA_OFFSET {
            let take = buf.len().min((DATA_OFFSET - offset) as usize);
            crate::io::read_full_at(&self.header, offset, &mut buf[..take])?;
            done = take;
        }
        let at = offset + done as u64;
        if done < buf.len() && at >= DATA_OFFSET && at - DATA_OFFSET < self.data_len {
            let pos = at - DATA_OFFSET;
            let take = (buf.len() - done).min((self.data_len - pos) as usize);
            crate::io::read_full_at(
                &*self.source,
                self.data_offset + pos,
                &mut buf[done..done + take],
            )?;
            done += take;
        }
        Ok(done)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::view::EncryptView;

    use crate::view::params::cheap_params as params;

    #[test]
    fn reads_straddling_the_header_match_a_whole_read() {
        let data: Vec<u8> = (0..64 * 1024u32).map(|i| (i * 7 % 251) as u8).collect();
        let old = params("old");
        let enc = EncryptView::create(Arc::new(MemSource(data)), &old, None).unwrap();
        let mut image = vec![0u8; enc.len() as usize];
        crate::io::read_full_at(&enc, 0, &mut image).unwrap();
        let view = RekeyView::create(
            Arc::new(MemSource(image.clone())),
            &old.passphrase,
            &params("new"),
        )
        .unwrap();
        assert_eq!(view.len(), image.len() as u64);
        let mut whole = vec![0u8; image.len()];
        assert_eq!(view.read_at(0, &mut whole).unwrap(), image.len());
        assert_eq!(whole[DATA_OFFSET as usize..], image[DATA_OFFSET as usize..]);
        for (off, len) in [
            (DATA_OFFSET - 100, 300),
            (0, 10),
            (DATA_OFFSET + 5, 1000),
            (image.len() as u64 - 10, 100),
        ] {
            let mut buf = vec![0u8; len];
            let n = view.read_at(off, &mut buf).unwrap();
            let end = (off as usize + len).min(image.len());
            assert_eq!(&buf[..n], &whole[off as usize..end]);
        }
        let header = match LuksHeader::read(&view).unwrap() {
            LuksHeader::V2(h) => h,
            LuksHeader::V1(_) => unreachable!(),
        };
        assert!(header
            .unlock(&view, &Passphrase::new("new"), &KdfLimits::default())
            .is_ok());
        assert!(header
            .unlock(&view, &Passphrase::new("old"), &KdfLimits::default())
            .is_err());
    }
}
