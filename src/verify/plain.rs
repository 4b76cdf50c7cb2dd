//! The two plaintext sources `verify` compares: the dm-crypt mapping read as a block device,
//! and the data segment decrypted by the `xts-mode` crate (not our `crate::xts`) with the key
//! and geometry libcryptsetup gave.

use std::fs::File;
use std::io::{self, Seek, SeekFrom};
use std::os::unix::fs::FileExt;
use std::path::Path;

use aes::{Aes128, Aes256};
use cipher::KeyInit;
use xts_mode::{get_tweak_default, Xts128};

use crate::image::ReadAt;

/// A plaintext stream read in aligned chunks: `pos` and `buf.len()` are multiples of the
/// encryption sector size, and `pos + buf.len() <= size()`.
pub trait Plaintext {
    /// Bytes of plaintext.
    fn size(&self) -> u64;
    fn read_chunk(&self, pos: u64, buf: &mut [u8]) -> io::Result<()>;
}

/// A file or block device read with `pread`. `RawFile` takes its length from the metadata,
/// which is 0 for block devices; this takes it from the end of the device.
pub struct DeviceFile {
    file: File,
    len: u64,
}

impl DeviceFile {
    pub fn open(path: &Path) -> io::Result<Self> {
        let mut file = File::open(path)?;
        let len = file.seek(SeekFrom::End(0))?;
        Ok(Self { file, len })
    }

    pub fn is_block_device(path: &Path) -> bool {
        use std::os::unix::fs::FileTypeExt;
        std::fs::metadata(path)
            .map(|m| m.file_type().is_block_device())
            .unwrap_or(false)
    }
}

impl ReadAt for DeviceFile {
    fn len(&self) -> u64 {
        self.len
    }

    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<usize> {
        if offset >= self.len {
            return Ok(0);
        }
        let want = buf
            .len()
            .min(usize::try_from(self.len - offset).unwrap_or(usize::MAX));
        let mut done = 0;
        while done < want {
            match self
                .file
                .read_at(&mut buf[done..want], offset + done as u64)
            {
                Ok(0) => {
                    return Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "device shrank while read",
                    ))
                }
                Ok(n) => done += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(done)
    }
}

/// The dm-crypt mapping: its bytes are the kernel's plaintext.
pub struct MappedDevice {
    pub dev: DeviceFile,
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
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the mapped device ended early",
            ));
        }
        Ok(())
    }
}

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
    ) -> Result<Self, String> {
        let half = key.len() / 2;
        let (k1, k2) = key.split_at(half);
        let bad = |_| format!("a {}-byte key is not an AES-XTS key", key.len());
        let cipher = match key.len() {
            32 => Cipher::Aes128(Box::new(Xts128::new(
                Aes128::new_from_slice(k1).map_err(bad)?,
                Aes128::new_from_slice(k2).map_err(bad)?,
            ))),
            64 => Cipher::Aes256(Box::new(Xts128::new(
                Aes256::new_from_slice(k1).map_err(bad)?,
                Aes256::new_from_slice(k2).map_err(bad)?,
            ))),
            n => {
                return Err(format!(
                    "a {n}-byte key is not an AES-XTS key (32 or 64 bytes)"
                ))
            }
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
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the image ended inside its data segment",
            ));
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
