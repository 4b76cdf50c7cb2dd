//! LUKS1, read-only: the 592-byte header, PBKDF2 keyslots, a 20-byte PBKDF2 master key digest.
//! Images made by `qemu-img convert -O luks` and old `cryptsetup luksFormat --type luks1`.
//! Reading applies cryptsetup's LUKS1 checks (`keymanage.c`): a known hash, 4000 AF stripes
//! in every keyslot, key material between the header and the payload without overlaps, an
//! image large enough for all of it.

use zeroize::Zeroizing;

use super::binary::c_string;
use super::error::{Invalid, Unsupported};
use super::{ct_eq, open_key_material, DataSegment, LuksError, STRIPES};
use crate::io::ReadAt;
use crate::kdf::{Hash, Kdf, KdfLimits};
use crate::keys::{Passphrase, VolumeKey};

const HEADER_LEN: usize = 592;
const DIGEST_LEN: usize = 20;
const KEYSLOT_ACTIVE: u32 = 0x00AC_71F3;
const KEYSLOTS: usize = 8;

/// Hashes cryptsetup's crypto backend knows with at least 20 bytes of output (its check is
/// `crypt_hmac_size(hash) >= 20`); bifs computes only sha1, sha256 and sha512 of them.
const KNOWN_HASHES: [&str; 19] = [
    "sha1",
    "sha224",
    "sha256",
    "sha384",
    "sha512",
    "ripemd160",
    "whirlpool",
    "sha3-224",
    "sha3-256",
    "sha3-384",
    "sha3-512",
    "sm3",
    "stribog256",
    "stribog512",
    "blake2b-256",
    "blake2b-384",
    "blake2b-512",
    "blake2s-160",
    "blake2s-256",
];

#[derive(Debug, Clone)]
pub struct Luks1Keyslot {
    pub active: bool,
    pub iterations: u32,
    pub salt: [u8; 32],
    pub material_sector: u32,
    pub stripes: u32,
}

#[derive(Debug, Clone)]
pub struct Luks1Header {
    pub cipher_name: String,
    pub cipher_mode: String,
    /// The hash as the header names it (`hashSpec`).
    pub hash_spec: String,
    pub payload_sector: u32,
    pub key_bytes: u32,
    pub mk_digest: [u8; DIGEST_LEN],
    pub mk_digest_salt: [u8; 32],
    pub mk_digest_iterations: u32,
    pub uuid: String,
    pub keyslots: Vec<Luks1Keyslot>,
}

fn be32(b: &[u8], off: usize) -> u32 {
    u32::from_be_bytes([b[off], b[off + 1], b[off + 2], b[off + 3]])
}

impl Luks1Header {
    pub fn read(src: &dyn ReadAt) -> Result<Self, LuksError> {
        let mut h = [0u8; HEADER_LEN];
        if src.read_at(0, &mut h)? < HEADER_LEN {
            return Err(LuksError::Truncated("LUKS1 header"));
        }
        if &h[..6] != super::binary::MAGIC_PRIMARY || u16::from_be_bytes([h[6], h[7]]) != 1 {
            return Err(LuksError::NotLuks);
        }
        let keyslots = (0..KEYSLOTS)
            .map(|i| {
                let k = &h[208 + i * 48..208 + (i + 1) * 48];
                let mut salt = [0u8; 32];
                salt.copy_from_slice(&k[8..40]);
                // cryptsetup: any state other than "enabled" is a disabled keyslot.
                Luks1Keyslot {
                    active: be32(k, 0) == KEYSLOT_ACTIVE,
                    iterations: be32(k, 4),
                    salt,
                    material_sector: be32(k, 40),
                    stripes: be32(k, 44),
                }
            })
            .collect();
        let mut mk_digest = [0u8; DIGEST_LEN];
        mk_digest.copy_from_slice(&h[112..132]);
        let mut mk_digest_salt = [0u8; 32];
        mk_digest_salt.copy_from_slice(&h[132..164]);
        let header = Self {
            cipher_name: c_string(&h[8..40]),
            cipher_mode: c_string(&h[40..72]),
            hash_spec: c_string(&h[72..104]),
            payload_sector: be32(&h, 104),
            key_bytes: be32(&h, 108),
            mk_digest,
            mk_digest_salt,
            mk_digest_iterations: be32(&h, 164),
            uuid: c_string(&h[168..208]),
            keyslots,
        };
        header.validate(src.len())?;
        Ok(header)
    }

    /// Sectors of key material per keyslot (cryptsetup's `AF_split_sectors`).
    fn material_sectors(&self) -> u64 {
        (u64::from(self.key_bytes) * u64::from(STRIPES)).div_ceil(512)
    }

    /// cryptsetup's `_check_and_convert_hdr`, `LUKS_check_keyslots` and the device size check.
    fn validate(&self, image_len: u64) -> Result<(), Invalid> {
        if !KNOWN_HASHES.contains(&self.hash_spec.to_ascii_lowercase().as_str()) {
            return Err(Invalid::Luks1Hash(self.hash_spec.clone()));
        }
        let secs = self.material_sectors();
        for (slot, ks) in self.keyslots.iter().enumerate() {
            if ks.stripes != STRIPES {
                return Err(Invalid::Luks1Stripes {
                    slot,
                    stripes: ks.stripes,
                });
            }
            // 32-bit arithmetic, as cryptsetup computes it.
            if (ks.material_sector.wrapping_mul(512) as usize) < HEADER_LEN {
                return Err(Invalid::Luks1MaterialInHeader {
                    slot,
                    sector: ks.material_sector,
                });
            }
            // A payload at 0 is a detached header: the keyslots are not bounded by it.
            if self.payload_sector == 0 {
                continue;
            }
            let start = u64::from(ks.material_sector);
            if u64::from(self.payload_sector) <= start
                || u64::from(self.payload_sector) < start + secs
            {
                return Err(Invalid::Luks1MaterialInPayload {
                    slot,
                    start,
                    end: start + secs,
                    payload: self.payload_sector,
                });
            }
        }
        let mut order: Vec<usize> = (0..KEYSLOTS).collect();
        order.sort_by_key(|&i| self.keyslots[i].material_sector);
        for pair in order.windows(2) {
            let (prev, next) = (pair[0], pair[1]);
            let prev_end = u64::from(self.keyslots[prev].material_sector) + secs;
            if u64::from(self.keyslots[next].material_sector) < prev_end {
                return Err(Invalid::Luks1Overlap(prev, next));
            }
        }
        if self.key_bytes == 0 {
            return Err(Invalid::Luks1KeySize);
        }
        let last = order
            .last()
            .map_or(0, |&i| u64::from(self.keyslots[i].material_sector));
        let need = (last + secs) * 512;
        if need > image_len {
            return Err(Invalid::Luks1DeviceTooSmall {
                len: image_len,
                need,
            });
        }
        Ok(())
    }

    /// The cipher as LUKS2 would spell it: `name-mode`.
    pub fn cipher(&self) -> String {
        format!("{}-{}", self.cipher_name, self.cipher_mode)
    }

    /// The hash, when bifs implements it.
    pub fn hash(&self) -> Result<Hash, LuksError> {
        Hash::from_name(&self.hash_spec).ok_or_else(|| {
            Unsupported::Hash {
                what: "LUKS1",
                name: self.hash_spec.clone(),
            }
            .into()
        })
    }

    pub fn segment(&self) -> DataSegment {
        DataSegment {
            offset: u64::from(self.payload_sector) * 512,
            size: None,
            sector_size: 512,
            iv_tweak: 0,
            key_len: self.key_bytes as usize,
        }
    }

    pub fn unlock(
        &self,
        src: &dyn ReadAt,
        passphrase: &Passphrase,
        limits: &KdfLimits,
    ) -> Result<VolumeKey, LuksError> {
        self.unlock_until(src, passphrase, limits, &|| false)
    }

    /// The PBKDF2 of every active keyslot, in the order an unlock tries them, and the master
    /// key digest's (hash, iterations); empty when the hash is not one bifs computes.
    pub fn kdf_plan(&self) -> (Vec<Kdf>, Option<(Hash, u32)>) {
        let Ok(hash) = self.hash() else {
            return (Vec::new(), None);
        };
        let kdfs = self
            .keyslots
            .iter()
            .filter(|k| k.active)
            .map(|k| Kdf::Pbkdf2 {
                hash,
                iterations: k.iterations,
            })
            .collect();
        (kdfs, Some((hash, self.mk_digest_iterations)))
    }

    /// [`Self::unlock`] that asks `stop` before each keyslot and tries at most
    /// `limits.max_keyslots` of them.
    pub fn unlock_until(
        &self,
        src: &dyn ReadAt,
        passphrase: &Passphrase,
        limits: &KdfLimits,
        stop: &dyn Fn() -> bool,
    ) -> Result<VolumeKey, LuksError> {
        let spec = self.cipher();
        if spec != super::CIPHER {
            return Err(Unsupported::Cipher(spec).into());
        }
        if self.key_bytes != 32 && self.key_bytes != 64 {
            return Err(Unsupported::KeySize {
                cipher: spec,
                bits: u64::from(self.key_bytes) * 8,
            }
            .into());
        }
        if self.payload_sector == 0 {
            return Err(Unsupported::DetachedHeader.into());
        }
        let hash = self.hash()?;
        Kdf::check_digest_iterations(self.mk_digest_iterations, limits)?;
        let key_len = self.key_bytes as usize;
        for (tried, ks) in (0u32..).zip(self.keyslots.iter().filter(|k| k.active)) {
            if stop() {
                return Err(LuksError::Cancelled);
            }
            if tried >= limits.max_keyslots {
                return Err(LuksError::KeyslotBudget { tried });
            }
            let material_offset = u64::from(ks.material_sector) * 512;
            // Validation put the material before the payload; the image may still be cut.
            if material_offset + self.material_sectors() * 512 > src.len() {
                return Err(LuksError::Truncated("LUKS1 keyslot material"));
            }
            let kdf = Kdf::Pbkdf2 {
                hash,
                iterations: ks.iterations,
            };
            let mut area_key = Zeroizing::new(vec![0u8; key_len]);
            kdf.derive(passphrase.as_bytes(), &ks.salt, &mut area_key, limits)?;
            let key = open_key_material(src, material_offset, &area_key, key_len, hash)?;
            let mut digest = Zeroizing::new([0u8; DIGEST_LEN]);
            hash.pbkdf2(
                &key,
                &self.mk_digest_salt,
                self.mk_digest_iterations,
                &mut *digest,
            );
            if ct_eq(&*digest, &self.mk_digest) {
                return Ok(VolumeKey::from_bytes(key));
            }
        }
        Err(LuksError::WrongPassphrase)
    }
}
