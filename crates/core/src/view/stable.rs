//! Stable encrypt views: the LUKS2 header of an encrypt view as a function of what it encrypts
//! and of the Secret, so that every node serves the same bytes for the same image and Secret,
//! and a node that lost its state directory serves the bytes it served before.
//!
//! # Construction (`bifs/encrypt-view/v1`)
//! Inputs: the source's stored file's SHA-512 `D`; the Secret's namespace and name; its
//! passphrase `P`; and `C`, the canonical encoding of everything else the header is made of
//! (cipher, key size, hash, the keyslot's KDF and its cost, the digest's iterations, the
//! sector size and the data segment's size).
//!
//! 1. `salt = SHA-256("bifs/encrypt-view/v1" ‖ lp(namespace) ‖ lp(name) ‖ D ‖ lp(C))`, where
//!    `lp(x)` is `x`'s length as a big-endian u32 followed by `x`.
//! 2. `K = KDF(P, salt)` with the keyslot's KDF at the keyslot's cost: the one key derivation
//!    of a header. Keyslot 0's salt is `salt` and its area key is `K`, exactly what
//!    `cryptsetup luksFormat` would store had its RNG drawn `salt`.
//! 3. Every other value cryptsetup draws from its RNG is drawn, in the order
//!    [`Luks2Header::format_with`] documents (volume key first), from the ChaCha20 keystream
//!    keyed by `HKDF-SHA256(ikm = K, info = "bifs/encrypt-view/v1 rng")`.
//!
//! Why this is as strong as a header cryptsetup makes (docs/longhorn.md says it for users):
//! whatever an attacker holds (the image, the header, any number of other views), a guess at
//! `P` costs one run of the keyslot's KDF, as with cryptsetup: everything secret in the
//! header (volume key, AF stripes) comes from `K`, and `K` only from `P` through the KDF.
//! The salt differs for every (image content, Secret namespace/name, parameters), so no work
//! is shared across images or Secrets (two Secrets with the same passphrase under different
//! names get different salts): no multi-target amortisation, no precomputed tables except for
//! one known (image digest, Secret name) pair at a time. What two views reveal: whether they
//! encrypt the same content under the same Secret (then they are identical), which the
//! sources' checksums reveal already. The public values (UUID, binary header salts) are
//! keystream bytes at known positions; ChaCha20's keystream reveals nothing about its other
//! positions, nor its key.

use hkdf::Hkdf;
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

use crate::kdf::{Kdf, KdfLimits};
use crate::keys::{Passphrase, VolumeKey};
use crate::luks::{FormatParams, KeyStream, KeyslotKey, Luks2Header, LuksError, Unsupported};
use crate::luks::{Randomness, CIPHER};

use super::encrypt::{default_sector_size, padded_len};
use super::{LuksParams, ViewError};

/// The domain of the construction; a change of it is a new version.
pub const DOMAIN: &str = "bifs/encrypt-view/v1";

/// What a stable header is keyed to besides the Secret's parameters.
#[derive(Debug, Clone, Copy)]
pub struct StableSeed<'a> {
    pub namespace: &'a str,
    pub name: &'a str,
    /// SHA-512 of the stored file the view encrypts (`D`).
    pub source_sha512: &'a [u8; 64],
}

/// A stable header before its key derivation: the parameters it will have and its keyslot's
/// salt. Cheap to make; what [`Self::derive`] will cost is [`Self::kdf`].
#[derive(Debug, Clone)]
pub struct StablePlan {
    format: FormatParams,
    key_len: usize,
    salt: [u8; 32],
}

fn lp(out: &mut Vec<u8>, bytes: &[u8]) {
    // Names and parameters are short (a Kubernetes name is at most 253 bytes).
    out.extend_from_slice(&(bytes.len() as u32).to_be_bytes());
    out.extend_from_slice(bytes);
}

/// `C`: the canonical encoding of the header's parameters (all but the passphrase).
fn canonical(format: &FormatParams, key_len: usize, data_len: u64) -> Vec<u8> {
    let mut c = Vec::new();
    lp(&mut c, CIPHER.as_bytes());
    c.extend_from_slice(&(key_len as u32).to_be_bytes());
    lp(&mut c, format.hash.name().as_bytes());
    lp(&mut c, format.kdf.type_name().as_bytes());
    match format.kdf {
        Kdf::Pbkdf2 { hash, iterations } => {
            lp(&mut c, hash.name().as_bytes());
            c.extend_from_slice(&iterations.to_be_bytes());
        }
        Kdf::Argon2 {
            time,
            memory_kib,
            cpus,
            ..
        } => {
            c.extend_from_slice(&time.to_be_bytes());
            c.extend_from_slice(&memory_kib.to_be_bytes());
            c.extend_from_slice(&cpus.to_be_bytes());
        }
    }
    c.extend_from_slice(&format.digest_iterations.unwrap_or(0).to_be_bytes());
    c.extend_from_slice(&(format.sector_size as u32).to_be_bytes());
    c.extend_from_slice(&data_len.to_be_bytes());
    c
}

impl StablePlan {
    /// The plan of the stable header of a source of `source_len` bytes under `params`.
    pub fn new(
        params: &LuksParams,
        source_len: u64,
        seed: &StableSeed<'_>,
    ) -> Result<Self, ViewError> {
        let key_len = params.key_bytes();
        let data_len = padded_len(source_len);
        let sector_size = default_sector_size(data_len);
        let format = FormatParams {
            hash: params.hash,
            kdf: params.kdf.resolve(key_len)?,
            sector_size,
            digest_iterations: Some(params.kdf.digest_iterations(key_len)),
            uuid: None,
            label: String::new(),
        };
        let mut h = Sha256::new();
        h.update(DOMAIN.as_bytes());
        let mut names = Vec::new();
        lp(&mut names, seed.namespace.as_bytes());
        lp(&mut names, seed.name.as_bytes());
        h.update(&names);
        h.update(seed.source_sha512);
        let mut c = Vec::new();
        lp(&mut c, &canonical(&format, key_len, data_len));
        h.update(&c);
        Ok(Self {
            format,
            key_len,
            salt: h.finalize().into(),
        })
    }

    /// The keyslot's KDF and cost: what [`Self::derive`] runs once.
    pub fn kdf(&self) -> Kdf {
        self.format.kdf
    }

    /// The keyslot's salt.
    pub fn salt(&self) -> &[u8; 32] {
        &self.salt
    }

    /// Runs the key derivation (`K`), within `limits` (a cost above them is refused before
    /// any work). The slow part: call it where slowness is allowed.
    pub fn derive(
        &self,
        passphrase: &Passphrase,
        limits: &KdfLimits,
    ) -> Result<Zeroizing<Vec<u8>>, ViewError> {
        let mut k = Zeroizing::new(vec![0u8; self.key_len]);
        self.format
            .kdf
            .derive(passphrase.as_bytes(), &self.salt, &mut k, limits)?;
        Ok(k)
    }

    /// The header region (`DATA_OFFSET` bytes) and its volume key, from `K`. Fast: one
    /// PBKDF2 digest at the digest's iterations, the AF split, 16 MiB of keystream.
    pub fn build(&self, k: &[u8]) -> Result<(Vec<u8>, VolumeKey), ViewError> {
        if k.len() != self.key_len {
            return Err(LuksError::from(Unsupported::VolumeKey(k.len())).into());
        }
        let hk = Hkdf::<Sha256>::new(None, k);
        let mut seed = Zeroizing::new([0u8; 32]);
        hk.expand(format!("{DOMAIN} rng").as_bytes(), seed.as_mut())
            .map_err(|_| LuksError::StreamExhausted)?;
        let mut stream = KeyStream::new(&seed);
        let mut key = Zeroizing::new(vec![0u8; self.key_len]);
        stream.fill(&mut key)?;
        let key = VolumeKey::from_bytes(key);
        let header = Luks2Header::format_with(
            &self.format,
            &key,
            KeyslotKey::Derived {
                salt: &self.salt,
                key: k,
            },
            &mut stream,
        )?;
        Ok((header, key))
    }
}

/// The stable header region of a source of `source_len` bytes and its volume key: the
/// derivation and the build in one call.
pub fn stable_header_and_key(
    params: &LuksParams,
    source_len: u64,
    seed: &StableSeed<'_>,
    limits: &KdfLimits,
) -> Result<(Vec<u8>, VolumeKey), ViewError> {
    let plan = StablePlan::new(params, source_len, seed)?;
    let k = plan.derive(&params.passphrase, limits)?;
    plan.build(&k)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::io::{MemSource, ReadAt};
    use crate::luks::DATA_OFFSET;
    use crate::view::params::cheap_params;
    use crate::view::EncryptView;
    use std::sync::Arc;

    fn seed<'a>(ns: &'a str, name: &'a str, d: &'a [u8; 64]) -> StableSeed<'a> {
        StableSeed {
            namespace: ns,
            name,
            source_sha512: d,
        }
    }

    fn header(params: &LuksParams, len: u64, s: &StableSeed<'_>) -> Vec<u8> {
        stable_header_and_key(params, len, s, &KdfLimits::cryptsetup())
            .unwrap()
            .0
    }

    #[test]
    fn same_inputs_same_header_and_any_change_another() {
        let d = [7u8; 64];
        let p = cheap_params("pw");
        let a = header(&p, 1 << 20, &seed("ns", "s", &d));
        assert_eq!(a.len() as u64, DATA_OFFSET);
        assert!(a == header(&p, 1 << 20, &seed("ns", "s", &d)));
        let differs = |b: Vec<u8>, what: &str| {
            // Different everywhere it is random: salts, UUID, digest, the keyslots area.
            assert!(a[104..168] != b[104..168], "{what}: binary salt");
            assert!(a[168..208] != b[168..208], "{what}: uuid");
            assert!(
                a[1 << 20..2 << 20] != b[1 << 20..2 << 20],
                "{what}: keyslots area"
            );
        };
        differs(header(&p, 1 << 20, &seed("ns", "t", &d)), "Secret name");
        differs(header(&p, 1 << 20, &seed("nt", "s", &d)), "namespace");
        differs(header(&p, 1 << 20, &seed("ns", "s", &[8u8; 64])), "digest");
        differs(header(&p, 2 << 20, &seed("ns", "s", &d)), "size");
        differs(
            header(&cheap_params("pw2"), 1 << 20, &seed("ns", "s", &d)),
            "passphrase",
        );
        // Length prefixes: ("ab", "c") and ("a", "bc") are different Secrets.
        assert!(header(&p, 4096, &seed("ab", "c", &d)) != header(&p, 4096, &seed("a", "bc", &d)));
    }

    #[test]
    fn the_keyslot_salt_is_the_plan_salt_and_it_unlocks_to_the_volume_key() {
        let d = [1u8; 64];
        let p = cheap_params("pw");
        let s = seed("ns", "s", &d);
        let plan = StablePlan::new(&p, 8192, &s).unwrap();
        let (hdr, key) = stable_header_and_key(&p, 8192, &s, &KdfLimits::cryptsetup()).unwrap();
        let parsed = Luks2Header::read(&MemSource(hdr.clone())).unwrap();
        let kdf = parsed.metadata.keyslots["0"].kdf.clone().unwrap();
        use base64::Engine;
        let salt = base64::engine::general_purpose::STANDARD
            .decode(kdf.salt.unwrap())
            .unwrap();
        assert_eq!(salt, plan.salt());
        let (got, _) = parsed
            .unlock(
                &MemSource(hdr.clone()),
                &p.passphrase,
                &KdfLimits::cryptsetup(),
            )
            .unwrap();
        assert!(got == key);
        // And the view over it reads as any encrypt view.
        let src: Arc<dyn ReadAt> = Arc::new(MemSource(vec![3u8; 8192]));
        let view = EncryptView::with_header(src, Arc::new(MemSource(hdr)), &p.passphrase).unwrap();
        assert_eq!(view.len(), DATA_OFFSET + 8192);
    }
}
