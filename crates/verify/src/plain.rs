//! The two plaintext sources `verify` compares: the dm-crypt mapping read as a block device,
//! and the data segment decrypted by the `xts-mode` crate (not our `bifs_core::xts`) with the key
//! and geometry libcryptsetup gave.

use std::io;

use aes::{Aes128, Aes256};
use cipher::KeyInit;
use xts_mode::{get_tweak_default, Xts128};

use bifs_core::image::raw::RawFile;
use bifs_core::io::ReadAt;

/// A plaintext stream read in aligned chunks: `pos` and `buf.len()` are multiples of the
/// encryption sector size, and `pos + buf.len() <= size()`.
pub trait Plaintext {
    /// Bytes of plaintext.
    fn size(&self) -> u64;
    fn read_chunk(&self, pos: u64, buf: &mut [u8]) -> io::Result<()>;
}

/// A plaintext source that ended before the length it was read for.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum EndedEarly {
    #[error("the mapped device ended early")]
    MappedDevice,
    #[error("the image ended inside its data segment")]
    DataSegment,
}

impl From<EndedEarly> for io::Error {
    fn from(e: EndedEarly) -> Self {
        io::Error::new(io::ErrorKind::UnexpectedEof, e)
    }
}

/// The dm-crypt mapping: its bytes are the kernel's plaintext.
pub struct MappedDevice {
    pub dev: RawFile,
    /// The mapping's size as libcryptsetup reports it.
    pub len: u64,
}

impl Plaintext for MappedDevice {
    fn size(&self) -> u64 {
        self.len
    }

    fn read_chunk(&self, pos: u64, buf: &mut [u8]) -> io::Result<()> {
        let n = self.dev.read_at(pos, buf)?;
        if n < buf.len() {
            return Err(EndedEarly::MappedDevice.into());
        }
        Ok(())
    }
}

/// libcryptsetup handed out a volume key of a length no AES-XTS key has.
#[derive(Debug, thiserror::Error)]
#[error("a {0}-byte key is not an AES-XTS key (32 or 64 bytes)")]
pub struct XtsKeyError(pub usize);

// Boxed: the expanded AES-256 key schedules make the variants very unequal in size.
enum Cipher {
    Aes128(Box<Xts128<Aes128>>),
    Aes256(Box<Xts128<Aes256>>),
}

/// The data segment decrypted sector by sector with `xts-mode`. The `aes` key schedules are
/// zeroized on drop (the crate's `zeroize` feature).
pub struct XtsPlaintext<'a> {
    image: &'a dyn ReadAt,
    offset: u64,
    len: u64,
    sector_size: usize,
    iv_offset: u64,
    cipher: Cipher,
}

impl<'a> XtsPlaintext<'a> {
    /// `key`: the whole XTS key (two AES keys); `offset`, `len`: the segment in bytes;
    /// `iv_offset`: IV of its first sector in 512-byte units.
    pub fn new(
        image: &'a dyn ReadAt,
        key: &[u8],
        offset: u64,
        len: u64,
        sector_size: usize,
        iv_offset: u64,
    ) -> Result<Self, XtsKeyError> {
        let half = key.len() / 2;
        let (k1, k2) = key.split_at(half);
        let bad = |_| XtsKeyError(key.len());
        let cipher = match key.len() {
            32 => Cipher::Aes128(Box::new(Xts128::new(
                Aes128::new_from_slice(k1).map_err(bad)?,
                Aes128::new_from_slice(k2).map_err(bad)?,
            ))),
            64 => Cipher::Aes256(Box::new(Xts128::new(
                Aes256::new_from_slice(k1).map_err(bad)?,
                Aes256::new_from_slice(k2).map_err(bad)?,
            ))),
            n => return Err(XtsKeyError(n)),
        };
        Ok(Self {
            image,
            offset,
            len,
            sector_size,
            iv_offset,
            cipher,
        })
    }
}

impl Plaintext for XtsPlaintext<'_> {
    fn size(&self) -> u64 {
        self.len
    }

    fn read_chunk(&self, pos: u64, buf: &mut [u8]) -> io::Result<()> {
        let n = self.image.read_at(self.offset + pos, buf)?;
        if n < buf.len() {
            return Err(EndedEarly::DataSegment.into());
        }
        for (i, sector) in buf.chunks_exact_mut(self.sector_size).enumerate() {
            // plain64: the IV counts 512-byte units from the segment start even for 4096-byte
            // sectors (LUKS2 does not set dm-crypt's iv_large_sectors).
            let byte = pos + (i * self.sector_size) as u64;
            let tweak = get_tweak_default(u128::from(self.iv_offset + byte / 512));
            match &self.cipher {
                Cipher::Aes128(x) => x.decrypt_sector(sector, tweak),
                Cipher::Aes256(x) => x.decrypt_sector(sector, tweak),
            }
        }
        Ok(())
    }
}
