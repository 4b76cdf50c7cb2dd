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
            // SAFETY: munlock only changes the pages' residency; the range is our allocation.
            // Pages shared with another locked key get unlocked too (mlock does not nest):
            // accepted, this is best-effort defence against swap, not a guarantee.
            unsafe { libc::munlock(self.bytes.as_ptr().cast(), self.bytes.capacity().max(1)) };
        }
    }
}

/// `mlock`s the buffer's pages; a failure (RLIMIT_MEMLOCK without CAP_IPC_LOCK) is logged at
/// debug level and otherwise ignored: the key still works, it may only reach swap.
fn lock(bytes: &[u8]) -> bool {
    if bytes.is_empty() {
        return false;
    }
    // SAFETY: mlock only changes residency of pages of a live allocation we own.
    let r = unsafe { libc::mlock(bytes.as_ptr().cast(), bytes.len()) };
    if r != 0 {
        let e = std::io::Error::last_os_error();
        tracing::debug!(error = %e, len = bytes.len(), "mlock of key material failed; it may be swapped");
        return false;
    }
    true
}

/// Makes this process non-dumpable (no core file, no ptrace attach by other users, /proc/PID
/// files owned by root) and sets the core size limit to 0, so a crash never writes key
/// material to disk. Called first thing by the CLI. Errors are logged, not fatal.
pub fn harden_process() {
    // SAFETY: prctl(PR_SET_DUMPABLE) and setrlimit take plain integers/structs.
    unsafe {
        if libc::prctl(libc::PR_SET_DUMPABLE, 0, 0, 0, 0) != 0 {
            tracing::warn!(error = %std::io::Error::last_os_error(), "prctl(PR_SET_DUMPABLE, 0) failed");
        }
        let zero = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        if libc::setrlimit(libc::RLIMIT_CORE, &zero) != 0 {
            tracing::debug!(error = %std::io::Error::last_os_error(), "setrlimit(RLIMIT_CORE, 0) failed");
        }
    }
}

/// Whether the process is dumpable (for tests and `bifs` diagnostics).
pub fn is_dumpable() -> bool {
    // SAFETY: PR_GET_DUMPABLE takes no pointers.
    unsafe { libc::prctl(libc::PR_GET_DUMPABLE, 0, 0, 0, 0) != 0 }
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

/// Constant-time comparison of secrets and digests: no early exit on the first difference.
pub(crate) fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
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
        if unsafe { libc::geteuid() } == 0 {
            assert!(key.is_locked());
            assert!(key.clone().is_locked());
        }
    }

    #[test]
    fn harden_process_makes_it_non_dumpable() {
        // In a child process: PR_SET_DUMPABLE would also affect the test harness.
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0);
        if pid == 0 {
            harden_process();
            let code = if is_dumpable() { 1 } else { 0 };
            unsafe { libc::_exit(code) };
        }
        let mut status = 0;
        unsafe { libc::waitpid(pid, &mut status, 0) };
        assert!(
            libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
            "still dumpable"
        );
    }
}
