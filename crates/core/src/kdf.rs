//! Password-based key derivation (PBKDF2, Argon2i, Argon2id) as LUKS uses it, the hashes LUKS
//! names, hostile-cost limits, and the fixed costs of the keyslots bifs makes.

use std::any::Any;
use std::cell::{Cell, RefCell};
use std::fmt;
use std::sync::{Arc, OnceLock};

use serde::{Deserialize, Serialize};
use sha2::Digest;

/// A hash as LUKS names it (`"sha256"`), used for PBKDF2, AF diffusion and digests.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Hash {
    Sha1,
    Sha256,
    Sha512,
}

impl Hash {
    pub fn from_name(name: &str) -> Option<Self> {
        match name.to_ascii_lowercase().as_str() {
            "sha1" => Some(Hash::Sha1),
            "sha256" => Some(Hash::Sha256),
            "sha512" => Some(Hash::Sha512),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Hash::Sha1 => "sha1",
            Hash::Sha256 => "sha256",
            Hash::Sha512 => "sha512",
        }
    }

    pub fn output_len(self) -> usize {
        match self {
            Hash::Sha1 => 20,
            Hash::Sha256 => 32,
            Hash::Sha512 => 64,
        }
    }

    /// Hash of the concatenation of `parts`.
    pub fn digest(self, parts: &[&[u8]]) -> Vec<u8> {
        fn run<D: Digest>(parts: &[&[u8]]) -> Vec<u8> {
            let mut d = D::new();
            for p in parts {
                d.update(p);
            }
            d.finalize().to_vec()
        }
        match self {
            Hash::Sha1 => run::<sha1::Sha1>(parts),
            Hash::Sha256 => run::<sha2::Sha256>(parts),
            Hash::Sha512 => run::<sha2::Sha512>(parts),
        }
    }

    /// PBKDF2-HMAC with this hash.
    pub fn pbkdf2(self, password: &[u8], salt: &[u8], iterations: u32, out: &mut [u8]) {
        match self {
            Hash::Sha1 => pbkdf2::pbkdf2_hmac::<sha1::Sha1>(password, salt, iterations, out),
            Hash::Sha256 => pbkdf2::pbkdf2_hmac::<sha2::Sha256>(password, salt, iterations, out),
            Hash::Sha512 => pbkdf2::pbkdf2_hmac::<sha2::Sha512>(password, salt, iterations, out),
        }
    }
}

/// Argon2 flavour, as LUKS2 names it in a keyslot's `kdf.type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Argon2Type {
    Argon2i,
    Argon2id,
}

/// A keyslot's KDF with its cost, as stored in LUKS metadata.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kdf {
    Pbkdf2 {
        hash: Hash,
        iterations: u32,
    },
    Argon2 {
        kind: Argon2Type,
        time: u32,
        memory_kib: u32,
        cpus: u32,
    },
}

/// What we refuse to run when opening a keyslot or checking a digest, so a hostile header
/// cannot make us allocate or spin beyond what cryptsetup itself would
/// (lib/crypto_backend/pbkdf_check.c: Argon2 memory <= 4 GiB, 1..=4 lanes).
///
/// `KdfLimits::default()` is cryptsetup's limits unless the process set others at start
/// ([`KdfLimits::set_process_default`], from `--max-kdf-memory` / `BIFS_MAX_KDF_MEMORY`):
/// a node daemon may want a lower memory ceiling than a 4 GiB Argon2 per unlock.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KdfLimits {
    pub max_argon2_memory_kib: u32,
    pub max_argon2_time: u32,
    pub max_argon2_cpus: u32,
    /// Applies to keyslot PBKDF2 and to the volume key digest's PBKDF2.
    pub max_pbkdf2_iterations: u32,
    /// Keyslots one unlock tries (each a KDF run) before it gives up.
    pub max_keyslots: u32,
}

static PROCESS_LIMITS: std::sync::OnceLock<KdfLimits> = std::sync::OnceLock::new();

impl KdfLimits {
    /// cryptsetup's own ceilings, plus time/iteration caps cryptsetup does not have.
    pub const fn cryptsetup() -> Self {
        Self {
            max_argon2_memory_kib: 4 * 1024 * 1024,
            // cryptsetup allows any u32 time; a cap keeps a hostile header from hanging us
            // for days. 1000 passes at 4 GiB is already far beyond any real keyslot.
            max_argon2_time: 1000,
            max_argon2_cpus: 4,
            // cryptsetup allows any u32 (~4e9: an hour or more per keyslot). Its 2 s benchmark
            // picks a few million on today's CPUs; 2^30 is ~100x that and still ends in minutes.
            max_pbkdf2_iterations: 1 << 30,
            // cryptsetup's LUKS2_KEYSLOTS_MAX: it tries every keyslot it has.
            max_keyslots: 32,
        }
    }

    /// Makes `limits` what `KdfLimits::default()` returns from now on in this process. The
    /// first call wins; returns false when limits were already set.
    pub fn set_process_default(limits: KdfLimits) -> bool {
        PROCESS_LIMITS.set(limits).is_ok()
    }
}

impl Default for KdfLimits {
    fn default() -> Self {
        PROCESS_LIMITS.get().copied().unwrap_or(Self::cryptsetup())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum KdfError {
    #[error("{kdf} cost {what}={value} is outside the accepted range {min}..={max}")]
    CostOutOfRange {
        kdf: &'static str,
        what: &'static str,
        value: u32,
        min: u32,
        max: u32,
    },
    #[error("argon2 failed: {0}")]
    Argon2(String),
}

/// cryptsetup's minimums: NIST SP 800-132 for PBKDF2; Argon2 t>=4, m>=32 KiB, 1..=4 lanes.
const PBKDF2_MIN_ITERATIONS: u32 = 1000;
const ARGON2_MIN_TIME: u32 = 4;
const ARGON2_MIN_MEMORY_KIB: u32 = 32;

impl Kdf {
    pub fn type_name(&self) -> &'static str {
        match self {
            Kdf::Pbkdf2 { .. } => "pbkdf2",
            Kdf::Argon2 {
                kind: Argon2Type::Argon2i,
                ..
            } => "argon2i",
            Kdf::Argon2 {
                kind: Argon2Type::Argon2id,
                ..
            } => "argon2id",
        }
    }

    /// Checks the cost against `limits` before any work is done.
    pub fn check(&self, limits: &KdfLimits) -> Result<(), KdfError> {
        let range = |what, value: u32, min: u32, max: u32| {
            if (min..=max).contains(&value) {
                Ok(())
            } else {
                Err(KdfError::CostOutOfRange {
                    kdf: self.type_name(),
                    what,
                    value,
                    min,
                    max,
                })
            }
        };
        match *self {
            // Reading: LUKS1 and old LUKS2 keyslots may have fewer than 1000 iterations.
            Kdf::Pbkdf2 { iterations, .. } => {
                range("iterations", iterations, 1, limits.max_pbkdf2_iterations)
            }
            Kdf::Argon2 {
                time,
                memory_kib,
                cpus,
                ..
            } => {
                range("time", time, 1, limits.max_argon2_time)?;
                range("memory", memory_kib, 8, limits.max_argon2_memory_kib)?;
                range("cpus", cpus, 1, limits.max_argon2_cpus)
            }
        }
    }

    /// Checks a digest's PBKDF2 iteration count (the LUKS volume key digest) against `limits`.
    pub fn check_digest_iterations(iterations: u32, limits: &KdfLimits) -> Result<(), KdfError> {
        if (1..=limits.max_pbkdf2_iterations).contains(&iterations) {
            Ok(())
        } else {
            Err(KdfError::CostOutOfRange {
                kdf: "pbkdf2 digest",
                what: "iterations",
                value: iterations,
                min: 1,
                max: limits.max_pbkdf2_iterations,
            })
        }
    }

    /// Derives `out.len()` bytes from `password` and `salt`.
    pub fn derive(
        &self,
        password: &[u8],
        salt: &[u8],
        out: &mut [u8],
        limits: &KdfLimits,
    ) -> Result<(), KdfError> {
        self.check(limits)?;
        let _step = step(KdfStep::Derive(*self));
        match *self {
            Kdf::Pbkdf2 { hash, iterations } => {
                hash.pbkdf2(password, salt, iterations, out);
                Ok(())
            }
            Kdf::Argon2 {
                kind,
                time,
                memory_kib,
                cpus,
            } => {
                let algorithm = match kind {
                    Argon2Type::Argon2i => argon2::Algorithm::Argon2i,
                    Argon2Type::Argon2id => argon2::Algorithm::Argon2id,
                };
                // Argon2 needs at least 8 KiB per lane; cryptsetup raises memory the same way.
                let memory = memory_kib.max(8 * cpus);
                let params = argon2::Params::new(memory, time, cpus, Some(out.len()))
                    .map_err(|e| KdfError::Argon2(e.to_string()))?;
                argon2::Argon2::new(algorithm, argon2::Version::V0x13, params)
                    .hash_password_into(password, salt, out)
                    .map_err(|e| KdfError::Argon2(e.to_string()))
            }
        }
    }
}

/// How to pick a new keyslot's cost: forced values from the Secret, else bifs's fixed costs
/// ([`ARGON2_TIME`], [`ARGON2_MEMORY_KIB`], [`ARGON2_CPUS`], [`keyslot_iterations`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KdfRequest {
    pub kind: KdfKind,
    pub hash: Hash,
    /// `CRYPTO_PBKDF_FORCE_ITERATIONS`: PBKDF2 iterations or Argon2 time cost.
    pub force_iterations: Option<u32>,
    /// `CRYPTO_PBKDF_MEMORY` in KiB (Argon2 only).
    pub memory_kib: Option<u32>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KdfKind {
    Pbkdf2,
    Argon2i,
    Argon2id,
}

impl KdfKind {
    pub fn from_name(name: &str) -> Option<Self> {
        match name.to_ascii_lowercase().as_str() {
            "pbkdf2" => Some(KdfKind::Pbkdf2),
            "argon2i" => Some(KdfKind::Argon2i),
            "argon2id" => Some(KdfKind::Argon2id),
            _ => None,
        }
    }
}

// bifs's costs for a new keyslot where the Secret sets none. Fixed, never benchmarked: a
// header must not depend on the machine that made it (an encrypt view is the same bytes on
// every node), and a slow or busy node must not make weaker keyslots.
//
// Argon2: cryptsetup's own ceiling for memory (1 GiB) and its minimum time (4), with 4 lanes
// (its maximum): what cryptsetup's 2 s benchmark picks on any machine fast enough to reach
// the ceiling, and more than it picks on slower ones.
/// Argon2 passes of a new keyslot (cryptsetup's minimum).
pub const ARGON2_TIME: u32 = 4;
/// Argon2 memory of a new keyslot in KiB: 1 GiB, cryptsetup's default ceiling.
pub const ARGON2_MEMORY_KIB: u32 = 1024 * 1024;
/// Argon2 lanes of a new keyslot (cryptsetup's maximum, min(4, CPUs), on a 4-CPU machine).
pub const ARGON2_CPUS: u32 = 4;

/// PBKDF2 work of a new keyslot per hash, in hash blocks (an iteration costs one block per
/// hash-sized piece of the derived key): 1.2 x what cryptsetup 2.6.1's 2 s target gives on
/// the build machine (`cryptsetup benchmark --pbkdf pbkdf2`, CPU time: sha1 2.09M, sha256
/// 4.19M, sha512 1.75M iterations per second for a 256-bit key). cryptsetup's `luksFormat
/// --pbkdf pbkdf2` picked there: sha256 8.14M (256-bit key) / 4.03M (512-bit); sha1 4.06M /
/// 2.04M; sha512 3.39M / 3.28M. See [`keyslot_iterations`].
fn pbkdf2_block_budget(hash: Hash) -> u64 {
    match hash {
        Hash::Sha1 => 10_000_000,
        Hash::Sha256 => 10_000_000,
        Hash::Sha512 => 4_200_000,
    }
}

/// Hash blocks per PBKDF2 iteration for a derived key of `key_len` bytes.
fn blocks(hash: Hash, key_len: usize) -> u64 {
    key_len.max(1).div_ceil(hash.output_len()) as u64
}

/// PBKDF2 iterations of a new keyslot deriving `key_len` bytes (when the Secret forces none):
/// about 2.4 s here, never fewer than cryptsetup picks on the build machine (see
/// `pbkdf2_block_budget`). sha256: 10M for a 256-bit key, 5M for 512 bits.
pub fn keyslot_iterations(hash: Hash, key_len: usize) -> u32 {
    let n = pbkdf2_block_budget(hash) / blocks(hash, key_len);
    n.clamp(u64::from(PBKDF2_MIN_ITERATIONS), u64::from(u32::MAX)) as u32
}

/// PBKDF2 iterations of a new volume key digest (`key_len`-byte key, when the Secret forces
/// no cost): 1/16 of [`keyslot_iterations`], as cryptsetup's 125 ms digest target is 1/16 of
/// its 2 s keyslot target. Measured cryptsetup picks on the build machine: sha256 518k
/// (256-bit key) / 252k (512-bit); sha1 252k / 126k; sha512 212k / 190k; bifs: 625k / 312k,
/// 312k / 156k, 262k / 262k.
pub fn digest_iterations(hash: Hash, key_len: usize) -> u32 {
    (keyslot_iterations(hash, key_len) / 16).max(PBKDF2_MIN_ITERATIONS)
}

impl KdfRequest {
    /// Resolves the request to a concrete KDF: the Secret's forced values, bifs's fixed costs
    /// for the rest. Never depends on the machine.
    pub fn resolve(&self, key_len: usize) -> Result<Kdf, KdfError> {
        let argon2 = |kind| -> Result<Kdf, KdfError> {
            let kdf = Kdf::Argon2 {
                kind,
                time: self.force_iterations.unwrap_or(ARGON2_TIME),
                memory_kib: self
                    .memory_kib
                    .unwrap_or(ARGON2_MEMORY_KIB)
                    .max(8 * ARGON2_CPUS),
                cpus: ARGON2_CPUS,
            };
            check_new_cost(&kdf)?;
            Ok(kdf)
        };
        match self.kind {
            KdfKind::Pbkdf2 => {
                let kdf = Kdf::Pbkdf2 {
                    hash: self.hash,
                    iterations: self
                        .force_iterations
                        .unwrap_or_else(|| keyslot_iterations(self.hash, key_len)),
                };
                check_new_cost(&kdf)?;
                Ok(kdf)
            }
            KdfKind::Argon2i => argon2(Argon2Type::Argon2i),
            KdfKind::Argon2id => argon2(Argon2Type::Argon2id),
        }
    }

    /// The digest iterations of a new header: cryptsetup skips its digest benchmark when the
    /// costs are forced (1000, its minimum); otherwise bifs's fixed [`digest_iterations`].
    pub fn digest_iterations(&self, key_len: usize) -> u32 {
        match self.force_iterations {
            Some(_) => PBKDF2_MIN_ITERATIONS,
            None => digest_iterations(self.hash, key_len),
        }
    }
}

/// A new keyslot must meet cryptsetup's minimums, or cryptsetup would refuse to make it.
fn check_new_cost(kdf: &Kdf) -> Result<(), KdfError> {
    let err = |what, value, min, max| KdfError::CostOutOfRange {
        kdf: kdf.type_name(),
        what,
        value,
        min,
        max,
    };
    match *kdf {
        Kdf::Pbkdf2 { iterations, .. } if iterations < PBKDF2_MIN_ITERATIONS => Err(err(
            "iterations",
            iterations,
            PBKDF2_MIN_ITERATIONS,
            u32::MAX,
        )),
        Kdf::Argon2 { time, .. } if time < ARGON2_MIN_TIME => {
            Err(err("time", time, ARGON2_MIN_TIME, u32::MAX))
        }
        Kdf::Argon2 { memory_kib, .. }
            if !(ARGON2_MIN_MEMORY_KIB..=KdfLimits::cryptsetup().max_argon2_memory_kib)
                .contains(&memory_kib) =>
        {
            Err(err(
                "memory",
                memory_kib,
                ARGON2_MIN_MEMORY_KIB,
                KdfLimits::cryptsetup().max_argon2_memory_kib,
            ))
        }
        _ => Ok(()),
    }
}

impl KdfKind {
    /// The name LUKS and cryptsetup use.
    pub fn name(self) -> &'static str {
        match self {
            KdfKind::Pbkdf2 => "pbkdf2",
            KdfKind::Argon2i => "argon2i",
            KdfKind::Argon2id => "argon2id",
        }
    }
}

/// A cost as an operator reads it: `argon2i, 1 GiB, t=4, 2 lanes`, `pbkdf2-sha256, 1000
/// iterations`.
impl fmt::Display for Kdf {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Kdf::Pbkdf2 { hash, iterations } => {
                write!(f, "pbkdf2-{}, {iterations} iterations", hash.name())
            }
            Kdf::Argon2 {
                time,
                memory_kib,
                cpus,
                ..
            } => {
                // Whole units when exact, else one decimal (a benchmarked cost is rarely round).
                let unit = |m: u32, shift: u32, name: &str| {
                    if m.is_multiple_of(1 << shift) {
                        format!("{} {name}", m >> shift)
                    } else {
                        format!("{:.1} {name}", f64::from(m) / f64::from(1u32 << shift))
                    }
                };
                let memory = match memory_kib {
                    m if m >= 1 << 20 => unit(m, 20, "GiB"),
                    m if m >= 1 << 10 => unit(m, 10, "MiB"),
                    m => format!("{m} KiB"),
                };
                let lanes = if cpus == 1 { "lane" } else { "lanes" };
                write!(
                    f,
                    "{}, {memory}, t={time}, {cpus} {lanes}",
                    self.type_name()
                )
            }
        }
    }
}

/// A key-derivation step that may take seconds (Argon2 at 1 GiB), reported to observers so
/// a front end can say what the wait is: a spinner, a log line, a status record's phase.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KdfStep {
    /// Deriving a keyslot's key at this cost: for a new keyslot, or to try to unlock one.
    Derive(Kdf),
}

impl fmt::Display for KdfStep {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KdfStep::Derive(kdf) => write!(f, "deriving the key: {kdf}"),
        }
    }
}

/// Told when a [`KdfStep`] starts (on the thread that runs it); what it returns is dropped
/// when the step ends.
pub type KdfObserver = dyn Fn(&KdfStep) -> Box<dyn Any> + Send + Sync;

static PROCESS_OBSERVER: OnceLock<Arc<KdfObserver>> = OnceLock::new();

thread_local! {
    static SCOPED_OBSERVERS: RefCell<Vec<Arc<KdfObserver>>> = const { RefCell::new(Vec::new()) };
    /// Steps running on this thread: a derivation inside another is not reported again.
    static STEP_DEPTH: Cell<u32> = const { Cell::new(0) };
}

/// Makes `observer` told of every step in this process (a command line's spinner). The first
/// call wins; returns false when one was already set.
pub fn set_process_observer(observer: Arc<KdfObserver>) -> bool {
    PROCESS_OBSERVER.set(observer).is_ok()
}

/// Runs `f` with `observer` also told of the steps `f` runs on this thread (an apply writing
/// its phase into a status record).
pub fn with_observer<R>(observer: Arc<KdfObserver>, f: impl FnOnce() -> R) -> R {
    struct Pop;
    impl Drop for Pop {
        fn drop(&mut self) {
            SCOPED_OBSERVERS.with(|o| o.borrow_mut().pop());
        }
    }
    SCOPED_OBSERVERS.with(|o| o.borrow_mut().push(observer));
    let _pop = Pop;
    f()
}

/// The end of a step: drops the observers' values, innermost first.
struct StepGuard {
    ends: Vec<Box<dyn Any>>,
    counted: bool,
}

impl Drop for StepGuard {
    fn drop(&mut self) {
        while let Some(end) = self.ends.pop() {
            drop(end);
        }
        if self.counted {
            STEP_DEPTH.with(|d| d.set(d.get().saturating_sub(1)));
        }
    }
}

fn step(step: KdfStep) -> StepGuard {
    if STEP_DEPTH.with(|d| d.get()) > 0 {
        return StepGuard {
            ends: Vec::new(),
            counted: false,
        };
    }
    STEP_DEPTH.with(|d| d.set(d.get() + 1));
    let mut ends = Vec::new();
    if let Some(o) = PROCESS_OBSERVER.get() {
        ends.push(o(&step));
    }
    // Cloned out first: an observer may itself run code that looks at the list.
    let scoped: Vec<Arc<KdfObserver>> = SCOPED_OBSERVERS.with(|o| o.borrow().clone());
    for o in scoped {
        ends.push(o(&step));
    }
    StepGuard {
        ends,
        counted: true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pbkdf2_rfc6070_sha1() {
        let mut out = [0u8; 20];
        Hash::Sha1.pbkdf2(b"password", b"salt", 2, &mut out);
        assert_eq!(
            out.to_vec(),
            [
                0xea, 0x6c, 0x01, 0x4d, 0xc7, 0x2d, 0x6f, 0x8c, 0xcd, 0x1e, 0xd9, 0x2a, 0xce, 0x1d,
                0x41, 0xf0, 0xd8, 0xde, 0x89, 0x57
            ]
        );
    }

    #[test]
    fn hostile_costs_are_refused_before_work() {
        let limits = KdfLimits::default();
        let kdf = Kdf::Argon2 {
            kind: Argon2Type::Argon2id,
            time: 4,
            memory_kib: u32::MAX,
            cpus: 4,
        };
        assert!(matches!(
            kdf.derive(b"p", &[0; 32], &mut [0; 32], &limits),
            Err(KdfError::CostOutOfRange { what: "memory", .. })
        ));
        let kdf = Kdf::Argon2 {
            kind: Argon2Type::Argon2i,
            time: 4,
            memory_kib: 64,
            cpus: 99,
        };
        assert!(kdf.check(&limits).is_err());
    }

    #[test]
    fn forced_costs_are_used_as_given() {
        let req = KdfRequest {
            kind: KdfKind::Argon2id,
            hash: Hash::Sha256,
            force_iterations: Some(5),
            memory_kib: Some(64),
        };
        match req.resolve(64).unwrap() {
            Kdf::Argon2 {
                time,
                memory_kib,
                kind,
                ..
            } => {
                assert_eq!((time, memory_kib, kind), (5, 64, Argon2Type::Argon2id))
            }
            other => panic!("unexpected {other:?}"),
        }
        let low = KdfRequest {
            kind: KdfKind::Pbkdf2,
            force_iterations: Some(10),
            ..req
        };
        assert!(
            low.resolve(64).is_err(),
            "cryptsetup refuses fewer than 1000 iterations"
        );
    }

    #[test]
    fn steps_are_reported_once_with_their_cost() {
        use std::sync::Mutex;
        let seen: Arc<Mutex<Vec<String>>> = Arc::default();
        let log = seen.clone();
        let observer: Arc<KdfObserver> = Arc::new(move |step: &KdfStep| {
            log.lock().unwrap().push(format!("begin {step}"));
            let log = log.clone();
            struct End(Arc<Mutex<Vec<String>>>);
            impl Drop for End {
                fn drop(&mut self) {
                    self.0.lock().unwrap().push("end".into());
                }
            }
            Box::new(End(log)) as Box<dyn Any>
        });
        let req = KdfRequest {
            kind: KdfKind::Argon2id,
            hash: Hash::Sha256,
            force_iterations: Some(4),
            memory_kib: Some(1024),
        };
        with_observer(observer, || {
            let kdf = req.resolve(32).unwrap();
            kdf.derive(b"p", &[0; 32], &mut [0; 32], &KdfLimits::default())
                .unwrap();
        });
        assert_eq!(
            *seen.lock().unwrap(),
            [
                format!("begin deriving the key: argon2id, 1 MiB, t=4, {ARGON2_CPUS} lanes"),
                "end".to_string()
            ]
        );
        // Outside the scope nobody is told.
        req.resolve(32)
            .unwrap()
            .derive(b"p", &[0; 32], &mut [0; 32], &KdfLimits::default())
            .unwrap();
        assert_eq!(seen.lock().unwrap().len(), 2);
        let pbkdf2 = Kdf::Pbkdf2 {
            hash: Hash::Sha512,
            iterations: 1000,
        };
        assert_eq!(pbkdf2.to_string(), "pbkdf2-sha512, 1000 iterations");
        let argon2 = |memory_kib| Kdf::Argon2 {
            kind: Argon2Type::Argon2i,
            time: 4,
            memory_kib,
            cpus: 1,
        };
        assert_eq!(argon2(1 << 20).to_string(), "argon2i, 1 GiB, t=4, 1 lane");
        assert_eq!(
            argon2(249_805).to_string(),
            "argon2i, 244.0 MiB, t=4, 1 lane"
        );
        assert_eq!(argon2(64).to_string(), "argon2i, 64 KiB, t=4, 1 lane");
        assert_eq!(
            KdfStep::Derive(argon2(1 << 20)).to_string(),
            "deriving the key: argon2i, 1 GiB, t=4, 1 lane"
        );
    }
}
