//! The LUKS on-disk formats: LUKS2 (read, write, unlock) and LUKS1 (read, unlock).
//!
//! No file I/O decisions live here: headers are parsed from and keyslot areas read through an
//! [`ReadAt`], and a new header is produced as bytes. Only `aes-xts-plain64` is supported for
//! data and keyslot areas, which is what Longhorn and cryptsetup's defaults use.

use crate::io::{read_full_at, ReadAt};
use crate::kdf::KdfLimits;
use crate::keys::{Passphrase, VolumeKey};

pub mod af;
pub mod binary;
pub mod dump;
pub mod error;
pub mod json;
pub mod luks1;
pub mod luks2;
pub mod metadata;
pub mod random;
pub mod validate;

pub use error::{Invalid, Layout, LuksError, Unsupported};
pub use luks1::Luks1Header;
pub use luks2::{FormatParams, KeyslotKey, Luks2Header};
pub use random::{KeyStream, OsRandom, Randomness};

/// The only cipher bifs implements, as LUKS2 spells it.
pub const CIPHER: &str = "aes-xts-plain64";
/// Where bifs puts the data segment, as cryptsetup's default LUKS2 layout does.
pub const DATA_OFFSET: u64 = 16 * 1024 * 1024;
/// cryptsetup's AF stripes; cryptsetup refuses any other value.
pub const STRIPES: u32 = 4000;

/// A parsed LUKS header of either version.
#[derive(Debug, Clone)]
pub enum LuksHeader {
    V1(Luks1Header),
    V2(Luks2Header),
}

/// Where the encrypted data lives and how it is keyed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DataSegment {
    pub offset: u64,
    /// `None`: to the end of the image ("dynamic").
    pub size: Option<u64>,
    pub sector_size: usize,
    /// IV of the segment's first sector, in 512-byte units.
    pub iv_tweak: u64,
    pub key_len: usize,
}

impl DataSegment {
    /// Bytes of ciphertext in an image of `image_len` bytes: whole sectors only.
    pub fn len_in(&self, image_len: u64) -> Result<u64, LuksError> {
        let avail = image_len
            .checked_sub(self.offset)
            .ok_or(Invalid::DataPastEnd {
                offset: self.offset,
                image_len,
            })?;
        let len = match self.size {
            Some(size) if size > avail => {
                return Err(Invalid::DataTooLong {
                    offset: self.offset,
                    size,
                    image_len,
                }
                .into())
            }
            Some(size) => size,
            None => avail,
        };
        // Only a crypt segment's sector size is validated; a header whose first segment is of
        // another type (which bifs then refuses to open) must not divide by zero here.
        let sector = (self.sector_size as u64).max(1);
        Ok(len - len % sector)
    }
}

impl LuksHeader {
    /// Parses and validates the header of `src` as cryptsetup loads it: LUKS1 when the
    /// primary magic says version 1; otherwise LUKS2, whose primary copy may be damaged or
    /// wiped and recovered from a secondary one.
    pub fn read(src: &dyn ReadAt) -> Result<Self, LuksError> {
        let mut head = [0u8; 8];
        read_full_at(src, 0, &mut head)?;
        let version = if &head[..6] == binary::MAGIC_PRIMARY {
            u16::from_be_bytes([head[6], head[7]])
        } else {
            // cryptsetup reads "no primary magic" as version 0 and tries LUKS2's secondary.
            0
        };
        match version {
            1 => Ok(LuksHeader::V1(Luks1Header::read(src)?)),
            0 | 2 => Ok(LuksHeader::V2(Luks2Header::read(src)?)),
            v => Err(Unsupported::Version(v).into()),
        }
    }

    pub fn version(&self) -> u8 {
        match self {
            LuksHeader::V1(_) => 1,
            LuksHeader::V2(_) => 2,
        }
    }

    pub fn uuid(&self) -> &str {
        match self {
            LuksHeader::V1(h) => &h.uuid,
            LuksHeader::V2(h) => &h.binary.uuid,
        }
    }

    /// The data cipher as the header names it.
    pub fn cipher(&self) -> String {
        match self {
            LuksHeader::V1(h) => h.cipher(),
            LuksHeader::V2(h) => h.cipher.clone(),
        }
    }

    pub fn segment(&self) -> DataSegment {
        match self {
            LuksHeader::V1(h) => h.segment(),
            LuksHeader::V2(h) => h.segment,
        }
    }

    /// Tries every keyslot with `passphrase` and returns the volume key.
    pub fn unlock(
        &self,
        src: &dyn ReadAt,
        passphrase: &Passphrase,
        limits: &KdfLimits,
    ) -> Result<VolumeKey, LuksError> {
        self.unlock_until(src, passphrase, limits, &|| false)
    }

    /// [`Self::unlock`] that asks `stop` before each keyslot ([`LuksError::Cancelled`] when it
    /// says so) and tries at most `limits.max_keyslots` keyslots.
    pub fn unlock_until(
        &self,
        src: &dyn ReadAt,
        passphrase: &Passphrase,
        limits: &KdfLimits,
        stop: &dyn Fn() -> bool,
    ) -> Result<VolumeKey, LuksError> {
        match self {
            LuksHeader::V1(h) => h.unlock_until(src, passphrase, limits, stop),
            LuksHeader::V2(h) => h
                .unlock_until(src, passphrase, limits, stop)
                .map(|(key, _)| key),
        }
    }

    /// The KDFs an unlock would run, in order, and the digest's PBKDF2 (see
    /// [`Luks2Header::kdf_plan`]): what an unlock would cost, known before any work.
    pub fn kdf_plan(&self) -> (Vec<crate::kdf::Kdf>, Option<(crate::kdf::Hash, u32)>) {
        match self {
            LuksHeader::V1(h) => h.kdf_plan(),
            LuksHeader::V2(h) => h.kdf_plan(),
        }
    }
}

/// Reads and decrypts one keyslot's AF material (512-byte sectors, IV from 0 at the area start)
/// and merges it into a candidate key. Shared by LUKS1 and LUKS2.
pub(crate) fn open_key_material(
    src: &dyn ReadAt,
    area_offset: u64,
    area_key: &[u8],
    key_len: usize,
    hash: crate::kdf::Hash,
) -> Result<zeroize::Zeroizing<Vec<u8>>, LuksError> {
    let material_len = key_len * STRIPES as usize;
    let padded = material_len.div_ceil(512) * 512;
    let mut material = zeroize::Zeroizing::new(vec![0u8; padded]);
    let n = src.read_at(area_offset, &mut material)?;
    if n < padded {
        return Err(LuksError::Truncated("keyslot area"));
    }
    crate::xts::Xts::new(area_key)?.decrypt_sectors(&mut material, 512, 0)?;
    Ok(af::merge(&material, key_len, STRIPES as usize, hash))
}

pub use crate::keys::ct_eq;

#[cfg(test)]
mod tests {
    use super::DataSegment;

    #[test]
    fn a_segment_without_a_sector_size_does_not_divide_by_zero() {
        // The first segment of a header may be of a type whose sector size is never validated
        // (a "linear" one with sector_size 0 loads in cryptsetup); its length is asked for on
        // every lookup before the view refuses the segment.
        let seg = DataSegment {
            offset: 4096,
            size: None,
            sector_size: 0,
            iv_tweak: 0,
            key_len: 64,
        };
        assert_eq!(seg.len_in(4096 + 1000).unwrap(), 1000);
        let crypt = DataSegment {
            sector_size: 512,
            ..seg
        };
        assert_eq!(crypt.len_in(4096 + 1000).unwrap(), 512);
    }
}
