//! What a new LUKS2 header is made with: plain LUKS parameters, whatever they were read from
//! (a Kubernetes Secret becomes them in [`crate::k8s`]). The cipher is always
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
