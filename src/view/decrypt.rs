//! The decrypt view: the plaintext of a LUKS1/LUKS2 image's data segment.

use std::io;
use std::sync::Arc;

use crate::image::ReadAt;
use crate::kdf::KdfLimits;
use crate::keys::{Passphrase, VolumeKey};
use crate::luks::{LuksError, LuksHeader};
use crate::xts::Xts;

use super::sectors::{Direction, SectorTransform};
use super::ViewError;

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
        };
        Ok(Self { header, data })
    }

    pub fn header(&self) -> &LuksHeader {
        &self.header
    }
}

impl ReadAt for DecryptView {
    fn len(&self) -> u64 {
        self.data.len
    }

    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<usize> {
        self.data.read_at(offset, buf)
    }
}
