//! Key material: volume keys and passphrases that are wiped when dropped, locked in RAM while
//! they live (best-effort `mlock`, so they do not reach swap), and never printed.
//!
//! What this does not cover: copies made by libraries we hand the bytes to (the AES key
//! schedule in `aes` is zeroized by its `zeroize` feature; libcryptsetup wipes its own), and the
//! YAML parser's internal buffers while a Secret manifest is read.

use std::fmt;

use zeroize::{Zeroize, Zeroizing};

/// Secret bytes: zeroized on drop and, while alive, `mlock`ed where the OS allows it.
///
/// The buffer is never resized after locking (a reallocation would leave an unlocked,
/// unwiped copy behind), hence no mutable access to the `Vec` itself.
struct LockedBytes {
    bytes: Zeroizing<Vec<u8>>,
    locked: bool,
}

impl LockedBytes {
    fn new(bytes: Zeroizing<Vec<u8>>) -> Self {
        let locked = lock(&bytes);
        Self { bytes, locked }
    }
}

impl Clone for LockedBytes {
    fn clone(&self) -> Self {
        Self::new(Zeroizing::new(self.bytes.to_vec()))
    }
}

impl Drop for LockedBytes {
    fn drop(&mut self) {
        // Wipe first, then unlock: the bytes are gone before the pages may be swapped.
        self.bytes.zeroize();
        if self.locked {
            memlock::unlock(&self.bytes, self.bytes.capacity());
        }
    }
}

/// `mlock`s the buffer's pages; a failure (RLIMIT_MEMLOCK without CAP_IPC_LOCK) is logged at
/// debug level and otherwise ignored: the key still works, it may only reach swap.
fn lock(bytes: &[u8]) -> bool {
    if bytes.is_empty() {
        return false;
    }
    match memlock::lock(bytes) {
        Ok(()) => true,
        Err(e) => {
            tracing::debug!(error = %e, len = bytes.len(), "mlock of key material failed; it may be swapped");
            false
        }
    }
}

use bifs_sys::mlock as memlock;

/// Makes this process non-dumpable (no core file, no ptrace attach by other users, /proc/PID
/// files owned by root) and sets the core size limit to 0, so a crash never writes key
/// material to disk. Called by the CLI right after logging is set up, before any key exists.
/// Errors are logged, not fatal.
pub fn harden_process() {
    use rustix::process::{set_dumpable_behavior, setrlimit, DumpableBehavior, Resource, Rlimit};
    if let Err(e) = set_dumpable_behavior(DumpableBehavior::NotDumpable) {
        tracing::warn!(error = %std::io::Error::from(e), "prctl(PR_SET_DUMPABLE, 0) failed");
    }
    let zero = Rlimit {
        current: Some(0),
        maximum: Some(0),
    };
    if let Err(e) = setrlimit(Resource::Core, zero) {
        tracing::debug!(error = %std::io::Error::from(e), "setrlimit(RLIMIT_CORE, 0) failed");
    }
}

/// Whether the process is dumpable (for tests and `bifs` diagnostics).
pub fn is_dumpable() -> bool {
    !matches!(
        rustix::process::dumpable_behavior(),
        Ok(rustix::process::DumpableBehavior::NotDumpable)
    )
}

/// A LUKS volume key (the XTS key of the data segment). Its bytes live only in memory, are
/// zeroized on drop, and `Debug` shows only the length.
#[derive(Clone)]
pub struct VolumeKey(LockedBytes);

impl VolumeKey {
    /// A fresh key from the OS CSPRNG.
    pub fn random(len: usize) -> Result<Self, getrandom::Error> {
        let mut key = Zeroizing::new(vec![0u8; len]);
        getrandom::fill(&mut key)?;
        Ok(Self(LockedBytes::new(key)))
    }

    pub fn from_bytes(bytes: Zeroizing<Vec<u8>>) -> Self {
        Self(LockedBytes::new(bytes))
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.0.bytes
    }

    pub fn len(&self) -> usize {
        self.0.bytes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.bytes.is_empty()
    }

    /// Whether the key's pages are locked in RAM (false where mlock was refused).
    pub fn is_locked(&self) -> bool {
        self.0.locked
    }
}

impl fmt::Debug for VolumeKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "VolumeKey(<{} bytes, redacted>)", self.len())
    }
}

impl PartialEq for VolumeKey {
    /// Constant-time enough for our use: both sides are secret and equal-length checks leak
    /// nothing an attacker controls.
    fn eq(&self, other: &Self) -> bool {
        ct_eq(self.as_bytes(), other.as_bytes())
    }
}

/// Constant-time comparison of secrets and digests (`subtle`): no early exit on the first
/// difference. Lengths are not secret (a key size, a digest size, a token's length).
pub fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    use subtle::ConstantTimeEq;
    a.ct_eq(b).into()
}

/// A passphrase from a Secret. Zeroized on drop; `Debug`/`Display` never show it.
#[derive(Clone)]
pub struct Passphrase(LockedBytes);

impl Passphrase {
    /// Takes ownership of `bytes` (no copy when given a `Vec`); pass a slice only when its
    /// owner wipes it (a `Zeroizing<String>`).
    pub fn new(bytes: impl Into<Vec<u8>>) -> Self {
        Self(LockedBytes::new(Zeroizing::new(bytes.into())))
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.0.bytes
    }
}

impl fmt::Debug for Passphrase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Passphrase(<redacted>)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_never_shows_bytes() {
        let key = VolumeKey::from_bytes(Zeroizing::new(vec![0xab; 64]));
        let pass = Passphrase::new("hunter2-secret");
        let text = format!("{key:?} {pass:?}");
        assert!(!text.contains("ab") && !text.contains("hunter2"), "{text}");
        assert!(text.contains("64 bytes"));
    }

    #[test]
    fn keys_are_locked_when_allowed() {
        // As root (the tests' CI) mlock always succeeds; elsewhere RLIMIT_MEMLOCK may refuse.
        let key = VolumeKey::random(64).unwrap();
        if rustix::process::geteuid().is_root() {
            assert!(key.is_locked());
            assert!(key.clone().is_locked());
        }
    }

    /// Set in the child run by `harden_process_makes_it_non_dumpable`.
    const HARDEN_CHILD: &str = "BIFS_TEST_HARDEN_CHILD";

    #[test]
    fn harden_process_makes_it_non_dumpable() {
        // PR_SET_DUMPABLE would also affect the test harness, so the check runs in a child:
        // this test binary again, running only `harden_child`.
        let exe = std::env::current_exe().unwrap();
        let out = std::process::Command::new(exe)
            .args(["--exact", "keys::tests::harden_child", "--nocapture"])
            .env(HARDEN_CHILD, "1")
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success() && stdout.contains("1 passed"),
            "child: {stdout}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    #[test]
    fn harden_child() {
        if std::env::var_os(HARDEN_CHILD).is_none() {
            return; // only meaningful in the child process above
        }
        assert!(is_dumpable());
        harden_process();
        assert!(!is_dumpable(), "still dumpable");
    }
}
