//! What a new LUKS2 header is made with: plain LUKS parameters, whatever they were read from
//! (a Kubernetes Secret becomes them in `bifs_k8s`, a crate above this one). The cipher is always
//! `aes-xts-plain64`: the only one bifs supports, checked where the parameters are read.

use crate::kdf::{Hash, KdfRequest};
use crate::keys::Passphrase;

#[derive(Debug, Clone)]
pub struct LuksParams {
    /// The passphrase of the new keyslot (and the one that opens an existing image).
    pub passphrase: Passphrase,
    /// The digest's and the keyslot's hash.
    pub hash: Hash,
    /// Bits of the whole XTS key: 256 (AES-128-XTS) or 512 (AES-256-XTS).
    pub key_bits: u32,
    /// The keyslot's KDF, as asked for (costs resolved when a header is made).
    pub kdf: KdfRequest,
}

impl LuksParams {
    pub fn key_bytes(&self) -> usize {
        self.key_bits as usize / 8
    }
}

/// Cheap but real parameters for unit tests: PBKDF2-SHA256 at 1000 iterations, AES-128-XTS.
#[cfg(test)]
pub(crate) fn cheap_params(pass: &str) -> LuksParams {
    use crate::kdf::KdfKind;
    LuksParams {
        passphrase: Passphrase::new(pass),
        hash: Hash::Sha256,
        key_bits: 256,
        kdf: KdfRequest {
            kind: KdfKind::Pbkdf2,
            hash: Hash::Sha256,
            force_iterations: Some(1000),
            memory_kib: None,
        },
    }
}
