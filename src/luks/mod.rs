//! The LUKS on-disk formats: LUKS2 (read, write, unlock) and LUKS1 (read, unlock).
//!
//! No file I/O decisions live here: headers are parsed from and keyslot areas read through an
//! [`ReadAt`], and a new header is produced as bytes. Only `aes-xts-plain64` is supported for
//! data and keyslot areas, which is what Longhorn and cryptsetup's defaults use.

use std::io;

use crate::image::{read_full_at, ReadAt};
use crate::kdf::{KdfError, KdfLimits};
use crate::keys::{Passphrase, VolumeKey};

pub mod af;
pub mod binary;
pub mod luks1;
pub mod luks2;
pub mod metadata;

pub use luks1::Luks1Header;
pub use luks2::{FormatParams, Luks2Header};

/// The only cipher bifs implements, as LUKS2 spells it.
pub const CIPHER: &str = "aes-xts-plain64";
/// Where bifs puts the data segment, as cryptsetup's default LUKS2 layout does.
pub const DATA_OFFSET: u64 = 16 * 1024 * 1024;
/// cryptsetup's AF stripes; cryptsetup refuses any other value.
pub const STRIPES: u32 = 4000;

#[derive(Debug, thiserror::Error)]
pub enum LuksError {
    #[error("not a LUKS image (no LUKS magic at offset 0)")]
    NotLuks,
    #[error("truncated LUKS header: the image ends inside the {0}")]
    Truncated(&'static str),
    #[error("corrupt LUKS header: {0}")]
    BadHeader(String),
    #[error("unsupported cipher {0:?}: bifs supports only aes-xts-plain64")]
    UnsupportedCipher(String),
    #[error("unsupported LUKS feature: {0}")]
    Unsupported(String),
    #[error("no keyslot opens with this passphrase")]
    WrongPassphrase,
    #[error("keyslot KDF: {0}")]
    Kdf(#[from] KdfError),
    #[error("reading the LUKS header: {0}")]
    Io(#[from] io::Error),
    #[error("the OS random number generator failed: {0}")]
    Random(getrandom::Error),
}

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
        let avail = image_len.checked_sub(self.offset).ok_or_else(|| {
            LuksError::BadHeader(format!(
                "data segment at {} starts past the end of the {image_len}-byte image",
                self.offset
            ))
        })?;
        let len = match self.size {
            Some(size) if size > avail => {
                return Err(LuksError::BadHeader(format!(
                    "data segment of {size} bytes at {} runs past the end of the {image_len}-byte image",
                    self.offset
                )))
            }
            Some(size) => size,
            None => avail,
        };
        Ok(len - len % self.sector_size as u64)
    }
}

impl LuksHeader {
    /// Parses the header at the start of `src`.
    pub fn read(src: &dyn ReadAt) -> Result<Self, LuksError> {
        let mut head = [0u8; 8];
        read_full_at(src, 0, &mut head)?;
        if &head[..6] != binary::MAGIC_PRIMARY {
            // A LUKS2 image whose primary header is wiped may still have its secondary.
            return match Luks2Header::read(src) {
                Ok(h) => Ok(LuksHeader::V2(h)),
                Err(_) => Err(LuksError::NotLuks),
            };
        }
        match u16::from_be_bytes([head[6], head[7]]) {
            1 => Ok(LuksHeader::V1(Luks1Header::read(src)?)),
            2 => Ok(LuksHeader::V2(Luks2Header::read(src)?)),
            v => Err(LuksError::Unsupported(format!("LUKS version {v}"))),
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
        match self {
            LuksHeader::V1(h) => h.unlock(src, passphrase, limits),
            LuksHeader::V2(h) => h.unlock(src, passphrase, limits).map(|(key, _)| key),
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
    let xts = crate::xts::Xts::new(area_key)
        .map_err(|e| LuksError::BadHeader(format!("keyslot key: {e}")))?;
    xts.decrypt_sectors(&mut material, 512, 0)
        .map_err(|e| LuksError::BadHeader(format!("keyslot area: {e}")))?;
    Ok(af::merge(&material, key_len, STRIPES as usize, hash))
}

pub(crate) use crate::keys::ct_eq;
