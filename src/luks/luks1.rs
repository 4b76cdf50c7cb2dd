//! LUKS1, read-only: the 592-byte header, PBKDF2 keyslots, a 20-byte PBKDF2 master key digest.
//! Images made by `qemu-img convert -O luks` and old `cryptsetup luksFormat --type luks1`.

use zeroize::Zeroizing;

use super::binary::c_string;
use super::{ct_eq, open_key_material, DataSegment, LuksError, STRIPES};
use crate::image::ReadAt;
use crate::kdf::{Hash, Kdf, KdfLimits};
use crate::keys::{Passphrase, VolumeKey};

const HEADER_LEN: usize = 592;
const DIGEST_LEN: usize = 20;
const KEYSLOT_ACTIVE: u32 = 0x00AC_71F3;
const KEYSLOT_DISABLED: u32 = 0x0000_DEAD;

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
    pub hash: Hash,
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
        let cipher_name = c_string(&h[8..40]);
        let cipher_mode = c_string(&h[40..72]);
        let hash_name = c_string(&h[72..104]);
        let hash = Hash::from_name(&hash_name)
            .ok_or_else(|| LuksError::Unsupported(format!("LUKS1 hash {hash_name:?}")))?;
        let key_bytes = be32(&h, 108);
        if !(1..=64).contains(&key_bytes) {
            return Err(LuksError::BadHeader(format!(
                "LUKS1 key size of {key_bytes} bytes"
            )));
        }
        let mut keyslots = Vec::with_capacity(8);
        for i in 0..8 {
            let k = &h[208 + i * 48..208 + (i + 1) * 48];
            let state = be32(k, 0);
            if state != KEYSLOT_ACTIVE && state != KEYSLOT_DISABLED {
                return Err(LuksError::BadHeader(format!(
                    "LUKS1 keyslot {i} state {state:#x}"
                )));
            }
            let mut salt = [0u8; 32];
            salt.copy_from_slice(&k[8..40]);
            keyslots.push(Luks1Keyslot {
                active: state == KEYSLOT_ACTIVE,
                iterations: be32(k, 4),
                salt,
                material_sector: be32(k, 40),
                stripes: be32(k, 44),
            });
        }
        let mut mk_digest = [0u8; DIGEST_LEN];
        mk_digest.copy_from_slice(&h[112..132]);
        let mut mk_digest_salt = [0u8; 32];
        mk_digest_salt.copy_from_slice(&h[132..164]);
        Ok(Self {
            cipher_name,
            cipher_mode,
            hash,
            payload_sector: be32(&h, 104),
            key_bytes,
            mk_digest,
            mk_digest_salt,
            mk_digest_iterations: be32(&h, 164),
            uuid: c_string(&h[168..208]),
            keyslots,
        })
    }

    /// The cipher as LUKS2 would spell it: `name-mode`.
    pub fn cipher(&self) -> String {
        format!("{}-{}", self.cipher_name, self.cipher_mode)
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
        let spec = self.cipher();
        if spec != super::CIPHER || (self.key_bytes != 32 && self.key_bytes != 64) {
            return Err(LuksError::UnsupportedCipher(format!(
                "{spec} with a {}-bit key",
                self.key_bytes * 8
            )));
        }
        if self.mk_digest_iterations == 0 {
            return Err(LuksError::BadHeader(
                "LUKS1 digest has no iterations".into(),
            ));
        }
        Kdf::check_digest_iterations(self.mk_digest_iterations, limits)?;
        let key_len = self.key_bytes as usize;
        for (i, ks) in self.keyslots.iter().enumerate().filter(|(_, k)| k.active) {
            if ks.stripes != STRIPES {
                return Err(LuksError::Unsupported(format!(
                    "LUKS1 keyslot {i} with {} stripes",
                    ks.stripes
                )));
            }
            let material_offset = u64::from(ks.material_sector) * 512;
            let material_end =
                material_offset + (key_len * STRIPES as usize).div_ceil(512) as u64 * 512;
            // The material sits between the header and the payload, as cryptsetup lays it
            // out; past the end of the image it could never open, so fail before the KDF.
            if material_offset < HEADER_LEN as u64 || material_end > self.segment().offset {
                return Err(LuksError::BadHeader(format!(
                    "LUKS1 keyslot {i} material at {material_offset}..{material_end} is outside \
                     the keyslot region (592..{})",
                    self.segment().offset
                )));
            }
            if material_end > src.len() {
                return Err(LuksError::Truncated("LUKS1 keyslot material"));
            }
            let kdf = Kdf::Pbkdf2 {
                hash: self.hash,
                iterations: ks.iterations,
            };
            let mut area_key = Zeroizing::new(vec![0u8; key_len]);
            kdf.derive(passphrase.as_bytes(), &ks.salt, &mut area_key, limits)?;
            let key = open_key_material(src, material_offset, &area_key, key_len, self.hash)?;
            let mut digest = Zeroizing::new([0u8; DIGEST_LEN]);
            self.hash.pbkdf2(
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
