//! Key material: volume keys and passphrases that are wiped when dropped and never printed.

use std::fmt;

use zeroize::Zeroizing;

/// A LUKS volume key (the XTS key of the data segment). Its bytes live only in memory, are
/// zeroized on drop, and `Debug` shows only the length.
#[derive(Clone)]
pub struct VolumeKey(Zeroizing<Vec<u8>>);

impl VolumeKey {
    /// A fresh key from the OS CSPRNG.
    pub fn random(len: usize) -> Result<Self, getrandom::Error> {
        let mut key = Zeroizing::new(vec![0u8; len]);
        getrandom::fill(&mut key)?;
        Ok(Self(key))
    }

    pub fn from_bytes(bytes: Zeroizing<Vec<u8>>) -> Self {
        Self(bytes)
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Debug for VolumeKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "VolumeKey(<{} bytes, redacted>)", self.0.len())
    }
}

impl PartialEq for VolumeKey {
    /// Constant-time enough for our use: both sides are secret and equal-length checks leak
    /// nothing an attacker controls.
    fn eq(&self, other: &Self) -> bool {
        self.0.len() == other.0.len()
            && self.0.iter().zip(other.0.iter()).fold(0u8, |acc, (a, b)| acc | (a ^ b)) == 0
    }
}

/// A passphrase from a Secret. Zeroized on drop; `Debug`/`Display` never show it.
#[derive(Clone)]
pub struct Passphrase(Zeroizing<Vec<u8>>);

impl Passphrase {
    pub fn new(bytes: impl Into<Vec<u8>>) -> Self {
        Self(Zeroizing::new(bytes.into()))
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }
}

impl fmt::Debug for Passphrase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Passphrase(<redacted>)")
    }
}
