//! The XTS engine: AES-XTS over whole sectors with a plain64 tweak, as dm-crypt's
//! `aes-xts-plain64` does.
//!
//! Why not the `xts-mode` crate for data: it encrypts one block at a time and derives tweaks
//! serially, which keeps AES-NI's pipeline (and the VAES paths of `aes` 0.9) mostly idle — about
//! 3x slower than this engine here. We compute every tweak of a batch of sectors first, XOR,
//! run one wide `encrypt_blocks` over the whole batch, and XOR again. `xts-mode` stays in the
//! tests as an independent oracle.

use aes::{Aes128, Aes256};
use cipher::{Array, BlockCipherDecrypt, BlockCipherEncrypt, KeyInit};

/// One AES block.
type Block = Array<u8, cipher::consts::U16>;

/// IVs count 512-byte units whatever the sector size (LUKS2 never uses `iv_large_sectors`).
pub const IV_UNIT: usize = 512;

/// Largest sector size LUKS2 allows; bounds the batch buffer.
pub const MAX_SECTOR_SIZE: usize = 4096;

/// Blocks processed per batch: 16 KiB, enough for the widest AES backend to stay busy, small
/// enough to stay in L1/L2 between the three passes.
const BATCH_BLOCKS: usize = 1024;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum XtsError {
    #[error("XTS key must be 32 bytes (AES-128-XTS) or 64 bytes (AES-256-XTS), got {0} bytes")]
    KeyLength(usize),
    #[error("sector size {0} is not a power of two between 512 and 4096")]
    SectorSize(usize),
    #[error("buffer of {len} bytes is not a whole number of {sector_size}-byte sectors")]
    Unaligned { len: usize, sector_size: usize },
    #[error("XTS data key and tweak key must differ")]
    EqualHalves,
}

/// AES-XTS keyed with a LUKS volume key (first half data key, second half tweak key).
pub struct Xts {
    inner: Inner,
}

enum Inner {
    Aes128 { data: Box<Aes128>, tweak: Box<Aes128> },
    Aes256 { data: Box<Aes256>, tweak: Box<Aes256> },
}

#[derive(Clone, Copy)]
enum Direction {
    Encrypt,
    Decrypt,
}

impl Xts {
    /// Keys the engine. Refuses equal halves, as the kernel's xts does in FIPS mode and as
    /// IEEE 1619 requires: equal halves make XTS a weak mode.
    pub fn new(key: &[u8]) -> Result<Self, XtsError> {
        let (data_key, tweak_key) = key.split_at(key.len() / 2);
        let inner = match key.len() {
            32 => Inner::Aes128 {
                data: Box::new(new_cipher(data_key)?),
                tweak: Box::new(new_cipher(tweak_key)?),
            },
            64 => Inner::Aes256 {
                data: Box::new(new_cipher(data_key)?),
                tweak: Box::new(new_cipher(tweak_key)?),
            },
            n => return Err(XtsError::KeyLength(n)),
        };
        if data_key == tweak_key {
            return Err(XtsError::EqualHalves);
        }
        Ok(Self { inner })
    }

    /// Bits of the whole XTS key (256 or 512), as cryptsetup counts them.
    pub fn key_bits(&self) -> u32 {
        match self.inner {
            Inner::Aes128 { .. } => 256,
            Inner::Aes256 { .. } => 512,
        }
    }

    /// Encrypts whole sectors in place. `first_iv` is the IV of the first sector in 512-byte
    /// units; sector `k` of `buf` gets `first_iv + k * sector_size / 512`.
    pub fn encrypt_sectors(
        &self,
        buf: &mut [u8],
        sector_size: usize,
        first_iv: u64,
    ) -> Result<(), XtsError> {
        self.process(buf, sector_size, first_iv, Direction::Encrypt)
    }

    /// Decrypts whole sectors in place; the inverse of [`Xts::encrypt_sectors`].
    pub fn decrypt_sectors(
        &self,
        buf: &mut [u8],
        sector_size: usize,
        first_iv: u64,
    ) -> Result<(), XtsError> {
        self.process(buf, sector_size, first_iv, Direction::Decrypt)
    }

    fn process(
        &self,
        buf: &mut [u8],
        sector_size: usize,
        first_iv: u64,
        dir: Direction,
    ) -> Result<(), XtsError> {
        check_geometry(buf.len(), sector_size)?;
        match &self.inner {
            Inner::Aes128 { data, tweak } => {
                process_with(&**data, &**tweak, buf, sector_size, first_iv, dir)
            }
            Inner::Aes256 { data, tweak } => {
                process_with(&**data, &**tweak, buf, sector_size, first_iv, dir)
            }
        }
        Ok(())
    }
}

fn new_cipher<C: KeyInit>(key: &[u8]) -> Result<C, XtsError> {
    C::new_from_slice(key).map_err(|_| XtsError::KeyLength(key.len() * 2))
}

fn check_geometry(len: usize, sector_size: usize) -> Result<(), XtsError> {
    if !sector_size.is_power_of_two() || !(IV_UNIT..=MAX_SECTOR_SIZE).contains(&sector_size) {
        return Err(XtsError::SectorSize(sector_size));
    }
    if len % sector_size != 0 {
        return Err(XtsError::Unaligned { len, sector_size });
    }
    Ok(())
}

fn process_with<C: BlockCipherEncrypt + BlockCipherDecrypt + cipher::BlockSizeUser<BlockSize = cipher::consts::U16>>(
    data: &C,
    tweak: &C,
    buf: &mut [u8],
    sector_size: usize,
    first_iv: u64,
    dir: Direction,
) {
    let blocks_per_sector = sector_size / 16;
    let sectors_per_batch = BATCH_BLOCKS / blocks_per_sector;
    let iv_step = (sector_size / IV_UNIT) as u64;
    let (blocks, _) = Block::slice_as_chunks_mut(buf);
    let mut tweaks = [Block::default(); BATCH_BLOCKS];
    let mut sector_tweaks = [Block::default(); BATCH_BLOCKS / (IV_UNIT / 16)];
    let mut iv = first_iv;

    for batch in blocks.chunks_mut(sectors_per_batch * blocks_per_sector) {
        let sectors = batch.len() / blocks_per_sector;
        // Encrypt every sector's IV in one call: the first tweak of each sector.
        for t in &mut sector_tweaks[..sectors] {
            let mut le = [0u8; 16];
            le[..8].copy_from_slice(&iv.to_le_bytes());
            *t = le.into();
            iv = iv.wrapping_add(iv_step);
        }
        tweak.encrypt_blocks(&mut sector_tweaks[..sectors]);
        // Expand each to the tweak of every block: multiply by alpha in GF(2^128).
        for (s, first) in sector_tweaks[..sectors].iter().enumerate() {
            let mut t = u128::from_le_bytes((*first).into());
            for slot in &mut tweaks[s * blocks_per_sector..(s + 1) * blocks_per_sector] {
                *slot = t.to_le_bytes().into();
                t = mul_alpha(t);
            }
        }
        let tweaks = &tweaks[..batch.len()];
        xor_blocks(batch, tweaks);
        match dir {
            Direction::Encrypt => data.encrypt_blocks(batch),
            Direction::Decrypt => data.decrypt_blocks(batch),
        }
        xor_blocks(batch, tweaks);
    }
}

#[inline]
fn mul_alpha(t: u128) -> u128 {
    let carry = (t >> 127) as u8;
    (t << 1) ^ u128::from(0x87 * carry)
}

#[inline]
fn xor_blocks(blocks: &mut [Block], tweaks: &[Block]) {
    for (b, t) in blocks.iter_mut().zip(tweaks) {
        let x = u128::from_ne_bytes((*b).into()) ^ u128::from_ne_bytes((*t).into());
        *b = x.to_ne_bytes().into();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use xts_mode::{get_tweak_default, Xts128};

    fn hex(s: &str) -> Vec<u8> {
        (0..s.len()).step_by(2).map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap()).collect()
    }

    fn pattern() -> Vec<u8> {
        (0..512).map(|i| i as u8).collect()
    }

    fn check_vector(key: &str, iv: u64, head: &str, tail: &str) {
        let xts = Xts::new(&hex(key)).unwrap();
        let mut buf = pattern();
        xts.encrypt_sectors(&mut buf, 512, iv).unwrap();
        assert_eq!(buf[..32], hex(head)[..]);
        assert_eq!(buf[480..], hex(tail)[..]);
        xts.decrypt_sectors(&mut buf, 512, iv).unwrap();
        assert_eq!(buf, pattern());
    }

    /// IEEE 1619-2007 vector 4 (XTS-AES-128, data unit 0, 512 bytes).
    #[test]
    fn ieee1619_vector_4_aes128() {
        check_vector(
            "2718281828459045235360287471352631415926535897932384626433832795",
            0,
            "27a7479befa1d476489f308cd4cfa6e2a96e4bbe3208ff25287dd3819616e89c",
            "eb4a427d1923ce3ff262735779a418f20a282df920147beabe421ee5319d0568",
        );
    }

    /// IEEE 1619-2007 vector 10 (XTS-AES-256, data unit 0xff, 512 bytes).
    #[test]
    fn ieee1619_vector_10_aes256() {
        check_vector(
            concat!(
                "2718281828459045235360287471352662497757247093699959574966967627",
                "3141592653589793238462643383279502884197169399375105820974944592"
            ),
            0xff,
            "1c3b3a102f770386e4836c99e370cf9bea00803f5e482357a4ae12d414a3e63b",
            "773dad38014bd2092fa755c824bb5e54c4f36ffda9fcea70b9c6e693e148c151",
        );
    }

    /// Against `xts-mode` (block at a time, serial tweaks) as an independent implementation:
    /// many sectors, both sector sizes, IVs in 512-byte units, an odd starting IV.
    #[test]
    fn matches_xts_mode_oracle() {
        use cipher::KeyInit;
        let mut seed = 0x9e3779b97f4a7c15u64;
        let mut next = || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed as u8
        };
        for key_len in [32usize, 64] {
            let key: Vec<u8> = (0..key_len).map(|_| next()).collect();
            let data: Vec<u8> = (0..64 * 1024).map(|_| next()).collect();
            for sector in [512usize, 4096] {
                let first_iv = 12345u64;
                let mut ours = data.clone();
                Xts::new(&key).unwrap().encrypt_sectors(&mut ours, sector, first_iv).unwrap();

                let mut theirs = data.clone();
                let h = key_len / 2;
                for (k, chunk) in theirs.chunks_mut(sector).enumerate() {
                    let iv = u128::from(first_iv) + (k * sector / 512) as u128;
                    if key_len == 32 {
                        let x = Xts128::new(
                            Aes128::new_from_slice(&key[..h]).unwrap(),
                            Aes128::new_from_slice(&key[h..]).unwrap(),
                        );
                        x.encrypt_sector(chunk, get_tweak_default(iv));
                    } else {
                        let x = Xts128::new(
                            Aes256::new_from_slice(&key[..h]).unwrap(),
                            Aes256::new_from_slice(&key[h..]).unwrap(),
                        );
                        x.encrypt_sector(chunk, get_tweak_default(iv));
                    }
                }
                assert!(ours == theirs, "key {key_len} sector {sector}: differs from xts-mode");
                Xts::new(&key).unwrap().decrypt_sectors(&mut ours, sector, first_iv).unwrap();
                assert!(ours == data, "key {key_len} sector {sector}: round trip");
            }
        }
    }

    #[test]
    fn refuses_bad_geometry_and_keys() {
        let xts = Xts::new(&[1u8; 16].iter().chain(&[2u8; 16]).copied().collect::<Vec<_>>())
            .unwrap();
        let mut buf = vec![0u8; 1000];
        assert!(matches!(
            xts.encrypt_sectors(&mut buf, 512, 0),
            Err(XtsError::Unaligned { .. })
        ));
        assert_eq!(xts.encrypt_sectors(&mut buf, 1000, 0), Err(XtsError::SectorSize(1000)));
        assert_eq!(Xts::new(&[0u8; 48]).err(), Some(XtsError::KeyLength(48)));
        assert_eq!(Xts::new(&[7u8; 64]).err(), Some(XtsError::EqualHalves));
    }
}
