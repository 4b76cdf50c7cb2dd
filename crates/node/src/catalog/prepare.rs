//! Key derivations off the request path: each (view kind, image, Secret) pair is prepared by a
//! job on the derivation pool ([`crate::kdfpool`]), ahead of any request (the background pass)
//! or when a request asks for it, and its result is kept per version of the stored file.
//!
//! A pair's job goes through two stages: the stored file's SHA-512 (encrypt views only: the
//! stable header is keyed to it; on a pool of one thread, since it is reading, not deriving),
//! then the key derivation (the stable header's one KDF, or an unlock of a LUKS image). A
//! request that finds its pair unprepared gets a [`Pending`]: it may wait for the job (its
//! interest is counted), and its job moves to the request queue. A job that no request and no
//! background pass wants any more is cancelled: before it starts, or between two keyslots of
//! an unlock (a KDF run itself cannot be stopped).

use std::collections::BTreeMap;
use std::fs;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bifs_core::image::{self, raw::RawFile, ReadAt};
use bifs_core::kdf::{Hash, Kdf};
use bifs_core::keys::VolumeKey;
use bifs_core::luks::{Luks2Header, LuksError, LuksHeader};
use bifs_core::view::{StablePlan, StableSeed, ViewError};
use bifs_k8s::{CryptoParams, SecretRef};

use super::{Catalog, Mode};
use crate::kdfpool::{Busy, Class, Pool, PoolStats};
use crate::store::digests::{self, FileStamp};
use crate::store::{HeaderRecord, SourceIdentity, StoredImage};

/// Held while a header region is built and persisted (one encrypt view's header build).
static HEADER_BUILDS: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// How the derivation pool is sized (`--max-kdf-jobs`, `--max-kdf-queue`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WorkConfig {
    /// Key derivations at once.
    pub jobs: usize,
    /// Request jobs that may wait for a worker; more are refused as busy.
    pub max_queued: usize,
}

impl Default for WorkConfig {
    fn default() -> Self {
        Self {
            jobs: 2,
            max_queued: 32,
        }
    }
}

pub(super) struct Work {
    pub kdf: Pool,
    pub digests: Pool,
}

/// What a pair's job settled on, for one version of the stored file.
pub(super) enum Settled {
    Encrypt {
        header: Arc<RawFile>,
        parsed: Luks2Header,
        key: VolumeKey,
    },
    Decrypt {
        header: LuksHeader,
        key: VolumeKey,
    },
    WrongPassphrase,
    /// Not servable: the message says why; `over_budget` when the work is beyond the
    /// server's limits (a refusal, not a fault).
    Failed {
        message: String,
        over_budget: bool,
        at: Instant,
    },
}

impl Settled {
    /// A failure settled now; `over_budget` when the work is beyond the server's limits.
    fn failed(message: String, over_budget: bool) -> Self {
        Settled::Failed {
            message,
            over_budget,
            at: Instant::now(),
        }
    }
}

/// A failure that is not a refusal (an I/O error, a full state directory) is tried again
/// after this long.
const FAILED_RETRY: Duration = Duration::from_secs(30);

impl PairState {
    /// The settled result for `stamp`, unless it is a failure old enough to try again.
    pub fn current(&self, stamp: &FileStamp) -> Option<&Settled> {
        match &self.value {
            Some((s, v)) if s == stamp => match v {
                Settled::Failed {
                    over_budget: false,
                    at,
                    ..
                } if at.elapsed() >= FAILED_RETRY => None,
                v => Some(v),
            },
            _ => None,
        }
    }
}

type Waker = Box<dyn FnOnce() + Send>;

#[derive(Default)]
pub(super) struct PairState {
    pub value: Option<(FileStamp, Settled)>,
    job: Option<Arc<Ticket>>,
    waiters: Vec<Waker>,
}

/// One (view kind, image, Secret) pair: its result and the job preparing it.
#[derive(Default)]
pub(super) struct Pair {
    pub state: Mutex<PairState>,
}

impl Pair {
    pub fn lock(&self) -> std::sync::MutexGuard<'_, PairState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

const STAGE_DIGEST: u8 = 0;
const STAGE_KDF: u8 = 1;

/// A job in flight for one version of a pair's stored file.
pub(super) struct Ticket {
    stamp: FileStamp,
    cancelled: AtomicBool,
    /// Requests waiting for it.
    interest: AtomicUsize,
    /// A background pass wants it (then no request's leaving cancels it).
    background: AtomicBool,
    /// Moved to the request queue.
    escalated: AtomicBool,
    stage: AtomicU8,
    digest_started: AtomicBool,
    kdf_started: AtomicBool,
}

impl Ticket {
    fn new(stamp: FileStamp, class: Class) -> Self {
        Self {
            stamp,
            cancelled: AtomicBool::new(false),
            interest: AtomicUsize::new(0),
            background: AtomicBool::new(class != Class::Request),
            escalated: AtomicBool::new(class == Class::Request),
            stage: AtomicU8::new(STAGE_DIGEST),
            digest_started: AtomicBool::new(false),
            kdf_started: AtomicBool::new(false),
        }
    }

    pub fn cancelled(&self) -> bool {
        self.cancelled.load(Ordering::Relaxed)
    }

    fn class(&self) -> Class {
        if self.escalated.load(Ordering::Relaxed) {
            Class::Request
        } else {
            Class::Essential
        }
    }
}

/// A request's hold on a pair being prepared: while it lives, the job is wanted.
pub struct Pending {
    pair: Arc<Pair>,
    ticket: Arc<Ticket>,
}

impl Pending {
    fn new(pair: Arc<Pair>, ticket: Arc<Ticket>) -> Self {
        ticket.interest.fetch_add(1, Ordering::Relaxed);
        Self { pair, ticket }
    }

    /// Calls `wake` once the job has settled (at once if it already has). Then look again:
    /// the pair is ready, refused, or (rarely: a rotation, a change of the file) pending anew.
    pub fn on_settled(&self, wake: impl FnOnce() + Send + 'static) {
        let mut st = self.pair.lock();
        let running = st
            .job
            .as_ref()
            .is_some_and(|j| Arc::ptr_eq(j, &self.ticket));
        if running {
            st.waiters.push(Box::new(wake));
        } else {
            drop(st);
            wake();
        }
    }
}

impl Drop for Pending {
    fn drop(&mut self) {
        let left = self.ticket.interest.fetch_sub(1, Ordering::Relaxed) - 1;
        if left == 0 && !self.ticket.background.load(Ordering::Relaxed) {
            // Nobody wants it any more: a queued job will not start, a running unlock stops
            // before its next keyslot.
            self.ticket.cancelled.store(true, Ordering::Relaxed);
        }
    }
}

/// What a pair is, for a version of its file.
pub(super) enum Status {
    Settled,
    InFlight,
    Absent,
}

/// Counts of pairs by outcome, for `/readyz`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    pub ready: usize,
    pub refused: usize,
    pub preparing: usize,
}

/// What the background pass found last: whether every view the node must serve is prepared.
#[derive(Debug, Clone, Default)]
pub struct Readiness {
    /// A pass has run (a server that just started is not ready before its first pass).
    pub checked: bool,
    pub images: usize,
    /// Encrypt views (every image that is not LUKS, under every Secret).
    pub encrypt: Counts,
    /// Decrypt views of LUKS images under the Secret their record names.
    pub decrypt_own: Counts,
    /// Decrypt views under every other Secret, tried within the speculative budget.
    pub decrypt_other: Counts,
    /// (LUKS image, Secret) pairs left untried because an unlock would cost more than the
    /// background budget; a request still tries them.
    pub decrypt_skipped: usize,
    /// Why the store cannot be listed, if it cannot.
    pub store_error: Option<String>,
    /// Loud problems: directories bifs cannot read, Secrets beyond the limits.
    pub warnings: Vec<String>,
    pub pool: PoolStats,
    pub digests_pending: usize,
}

impl Readiness {
    pub fn ready(&self) -> bool {
        self.checked
            && self.store_error.is_none()
            && self.warnings.is_empty()
            && self.encrypt.preparing == 0
            && self.decrypt_own.preparing == 0
    }
}

/// The background budget of one speculative unlock, in units of a default keyslot (bifs's
/// own cost where a Secret sets none: Argon2 1 GiB x 4 passes, or PBKDF2 at about 2 s): an
/// image whose keyslots (tried in turn) and digest would cost more is only tried on request.
const SPECULATIVE_UNITS: f64 = 4.0;

/// What an unlock with `plan` costs, in default keyslots.
fn unlock_units(kdfs: &[Kdf], digest: Option<(Hash, u32)>) -> f64 {
    let pbkdf2 = |hash: Hash, iterations: u32| {
        f64::from(iterations)
            / f64::from(bifs_core::kdf::keyslot_iterations(hash, hash.output_len()))
    };
    let mut units: f64 = kdfs
        .iter()
        .map(|k| match *k {
            Kdf::Pbkdf2 { hash, iterations } => pbkdf2(hash, iterations),
            Kdf::Argon2 {
                time, memory_kib, ..
            } => {
                f64::from(time) * f64::from(memory_kib)
                    / (f64::from(bifs_core::kdf::ARGON2_TIME)
                        * f64::from(bifs_core::kdf::ARGON2_MEMORY_KIB))
            }
        })
        .sum();
    if let Some((hash, iterations)) = digest {
        // The digest is checked once per keyslot that decrypts to a candidate key: at most
        // once per keyslot, usually once.
        units += pbkdf2(hash, iterations);
    }
    units
}

/// How long a background pass waits before the next.
const PASS_INTERVAL: Duration = Duration::from_secs(1);

impl Catalog {
    /// How the derivation pool is sized.
    pub fn work_config(&self) -> WorkConfig {
        *self.work_config.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Sizes the derivation pool; only before its first use (returns false after).
    pub fn configure_work(&self, config: WorkConfig) -> bool {
        if self.work.get().is_some() {
            return false;
        }
        *self.work_config.lock().unwrap_or_else(|e| e.into_inner()) = config;
        true
    }

    pub(super) fn work(&self) -> &Work {
        self.work.get_or_init(|| {
            let cfg = *self.work_config.lock().unwrap_or_else(|e| e.into_inner());
            let start = |jobs, queued| {
                Pool::new(jobs, queued).unwrap_or_else(|e| {
                    // Without threads nothing can be derived; say so loudly and keep serving
                    // the views that need none.
                    tracing::error!(error = %e, "cannot start the key derivation threads");
                    std::process::abort()
                })
            };
            Work {
                kdf: start(cfg.jobs, cfg.max_queued),
                digests: start(1, 4 * cfg.max_queued.max(1)),
            }
        })
    }

    pub(super) fn pair(&self, key: &super::PairKey) -> Arc<Pair> {
        let mut pairs = self.pairs.lock().unwrap_or_else(|e| e.into_inner());
        pairs.entry(key.clone()).or_default().clone()
    }

    pub(super) fn status_of(&self, key: &super::PairKey, stamp: &FileStamp) -> Status {
        let pair = self.pair(key);
        let st = pair.lock();
        if st.current(stamp).is_some() {
            Status::Settled
        } else if st.job.as_ref().is_some_and(|j| j.stamp == *stamp) {
            Status::InFlight
        } else {
            Status::Absent
        }
    }

    /// Makes sure a job prepares `key` for `stamp` (none is started when one runs already)
    /// and returns a hold on it for a request. `Busy` when a request job cannot be queued.
    pub(super) fn ensure(
        &self,
        key: &super::PairKey,
        img: &StoredImage,
        stamp: FileStamp,
        class: Class,
    ) -> Result<Pending, Busy> {
        let pair = self.pair(key);
        let mut st = pair.lock();
        if let Some(t) = st.job.as_ref().filter(|j| j.stamp == stamp).cloned() {
            drop(st);
            if class == Class::Request {
                self.escalate(key, img, &pair, &t)?;
            } else {
                t.background.store(true, Ordering::Relaxed);
            }
            return Ok(Pending::new(pair, t));
        }
        let ticket = Arc::new(Ticket::new(stamp, class));
        if let Some(old) = st.job.replace(ticket.clone()) {
            // A job for another version of the file: its result would be stale.
            old.cancelled.store(true, Ordering::Relaxed);
        }
        drop(st);
        let pending = Pending::new(pair.clone(), ticket.clone());
        let started = match key.0 {
            Mode::Encrypt if self.known_digest(&img.name, &stamp).is_none() => {
                self.submit_digest(key, img, &pair, &ticket, class)
            }
            _ => {
                ticket.stage.store(STAGE_KDF, Ordering::Relaxed);
                self.submit_kdf(key, img, &pair, &ticket, class)
            }
        };
        if let Err(busy) = started {
            self.settle(&pair, &ticket, None);
            return Err(busy);
        }
        Ok(pending)
    }

    /// A request wants a job that waits in a background queue: queue it as a request too (the
    /// first of its two tasks to run does the work, the other finds it started).
    fn escalate(
        &self,
        key: &super::PairKey,
        img: &StoredImage,
        pair: &Arc<Pair>,
        t: &Arc<Ticket>,
    ) -> Result<(), Busy> {
        if t.escalated.swap(true, Ordering::Relaxed) {
            return Ok(());
        }
        let r = if t.stage.load(Ordering::Relaxed) == STAGE_DIGEST {
            if t.digest_started.load(Ordering::Relaxed) {
                Ok(())
            } else {
                self.submit_digest(key, img, pair, t, Class::Request)
            }
        } else if t.kdf_started.load(Ordering::Relaxed) {
            Ok(())
        } else {
            self.submit_kdf(key, img, pair, t, Class::Request)
        };
        if r.is_err() {
            t.escalated.store(false, Ordering::Relaxed);
        }
        r
    }

    fn known_digest(&self, image: &str, stamp: &FileStamp) -> Option<[u8; 64]> {
        let memo = self.digest_memo.lock().unwrap_or_else(|e| e.into_inner());
        memo.get(image)
            .filter(|(s, _)| s == stamp)
            .map(|(_, d)| *d)
            .or_else(|| {
                drop(memo);
                let d = digests::cached(self.store.state().path(), image, stamp)?;
                self.remember_digest(image, stamp, d);
                Some(d)
            })
    }

    fn remember_digest(&self, image: &str, stamp: &FileStamp, d: [u8; 64]) {
        self.digest_memo
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(image.to_owned(), (*stamp, d));
    }

    fn submit_digest(
        &self,
        key: &super::PairKey,
        img: &StoredImage,
        pair: &Arc<Pair>,
        ticket: &Arc<Ticket>,
        class: Class,
    ) -> Result<(), Busy> {
        let (cat, key, img, pair, ticket) = (
            self.clone(),
            key.clone(),
            img.clone(),
            pair.clone(),
            ticket.clone(),
        );
        self.work().digests.submit(class, move || {
            if ticket.digest_started.swap(true, Ordering::Relaxed) {
                return;
            }
            if ticket.cancelled() {
                cat.settle(&pair, &ticket, None);
                return;
            }
            match cat.digest_of(&img, &ticket.stamp) {
                Ok(d) => cat.remember_digest(&img.name, &ticket.stamp, d),
                Err(message) => {
                    cat.settle(&pair, &ticket, Some(Settled::failed(message, false)));
                    return;
                }
            }
            ticket.stage.store(STAGE_KDF, Ordering::Relaxed);
            if cat
                .submit_kdf(&key, &img, &pair, &ticket, ticket.class())
                .is_err()
            {
                // The request queue filled meanwhile: the waiters look again and are told.
                cat.settle(&pair, &ticket, None);
            }
        })
    }

    fn digest_of(&self, img: &StoredImage, stamp: &FileStamp) -> Result<[u8; 64], String> {
        let started = Instant::now();
        let file = self
            .store
            .open_image(&img.path)
            .map_err(|e| format!("opening: {e}"))?;
        let now = file
            .metadata()
            .map(|m| FileStamp::of(&m))
            .map_err(|e| e.to_string())?;
        if now != *stamp {
            return Err("the stored file changed; it is prepared again".into());
        }
        let (d, source) = digests::digest(
            self.store.state().path(),
            &img.name,
            &img.path,
            &file,
            stamp,
        )
        .map_err(|e| format!("computing the SHA-512 of the stored file: {e}"))?;
        if source == digests::DigestSource::Hashed {
            tracing::info!(image = %img.name, secs = started.elapsed().as_secs_f64(), "SHA-512 of a stored image computed (the key of its stable encrypt headers)");
        }
        Ok(d)
    }

    fn submit_kdf(
        &self,
        key: &super::PairKey,
        img: &StoredImage,
        pair: &Arc<Pair>,
        ticket: &Arc<Ticket>,
        class: Class,
    ) -> Result<(), Busy> {
        let (cat, key, img, pair, ticket) = (
            self.clone(),
            key.clone(),
            img.clone(),
            pair.clone(),
            ticket.clone(),
        );
        self.work().kdf.submit(class, move || {
            if ticket.kdf_started.swap(true, Ordering::Relaxed) {
                return;
            }
            if ticket.cancelled() {
                crate::events::derivation("cancelled");
                cat.settle(&pair, &ticket, None);
                return;
            }
            let (mode, _, secret) = &key;
            let params = match cat.check_secret(secret) {
                Ok(p) => p,
                Err(e) => {
                    cat.settle(&pair, &ticket, Some(Settled::failed(e.to_string(), false)));
                    return;
                }
            };
            let result = match mode {
                Mode::Encrypt => Some(cat.encrypt_job(&img, &params, &ticket)),
                Mode::Decrypt => cat.decrypt_job(&img, &params, &ticket),
                Mode::Ignore | Mode::Raw => None,
            };
            crate::events::derivation(match &result {
                None => "cancelled",
                Some(Settled::Failed { .. }) => "failed",
                Some(Settled::WrongPassphrase) => "refused",
                Some(_) => "ready",
            });
            if let Some(Settled::Failed {
                message,
                over_budget,
                ..
            }) = &result
            {
                tracing::warn!(
                    image = %img.name, mode = mode.name(), %secret, over_budget,
                    "preparing the view failed: {message}"
                );
            }
            cat.settle(&pair, &ticket, result);
        })
    }

    /// Records what a job found (`None`: nothing to keep, e.g. cancelled) and wakes its
    /// waiters. A job that is no longer its pair's (a newer version of the file, a rotated
    /// Secret) has its result dropped.
    fn settle(&self, pair: &Arc<Pair>, ticket: &Arc<Ticket>, result: Option<Settled>) {
        let waiters = {
            let mut st = pair.lock();
            if st.job.as_ref().is_some_and(|j| Arc::ptr_eq(j, ticket)) {
                st.job = None;
                if let Some(r) = result {
                    st.value = Some((ticket.stamp, r));
                }
            }
            std::mem::take(&mut st.waiters)
        };
        for w in waiters {
            w();
        }
    }

    /// The stable header of `img` under `params`: one key derivation, then the header is
    /// compared with the persisted one and written when it differs.
    fn encrypt_job(&self, img: &StoredImage, params: &CryptoParams, ticket: &Ticket) -> Settled {
        let failed = |message: String| Settled::failed(message, false);
        let secret = &params.secret;
        let Some(d) = self.known_digest(&img.name, &ticket.stamp) else {
            return failed("the stored file's SHA-512 is not known".into());
        };
        let (file, identity) = match self
            .store
            .open_image(&img.path)
            .and_then(crate::store::Watched::pin)
        {
            Ok(f) => f,
            Err(e) => return failed(format!("opening: {e}")),
        };
        if file.metadata().map(|m| FileStamp::of(&m)).ok() != Some(ticket.stamp) {
            return failed("the stored file changed; it is prepared again".into());
        }
        // Backing files beneath the store's images too, as every view's disk opens them.
        let opener = |p: &std::path::Path| self.store.open_image(p);
        let disk = match image::virtual_disk_with(file, &img.path, &opener) {
            Ok(d) => d,
            Err(e) => return failed(e.to_string()),
        };
        let seed = StableSeed {
            namespace: &secret.namespace,
            name: &secret.name,
            source_sha512: &d,
        };
        let plan = match StablePlan::new(&params.luks, disk.len(), &seed) {
            Ok(p) => p,
            Err(e) => return failed(format!("Secret {secret}: {e}")),
        };
        if let Err(e) = plan.kdf().check(&self.limits) {
            return Settled::failed(
                format!(
                    "Secret {secret}'s keyslot ({}) is beyond this server's limits: {e}; \
                     lower the Secret's CRYPTO_PBKDF_MEMORY/CRYPTO_PBKDF_FORCE_ITERATIONS or raise \
                     --max-kdf-memory/--max-kdf-iterations/--max-kdf-time",
                    plan.kdf().type_name()
                ),
                true,
            );
        }
        let started = Instant::now();
        let header_failed =
            |e: ViewError| failed(format!("making the LUKS2 header with Secret {secret}: {e}"));
        let k = match plan.derive(&params.luks.passphrase, &self.limits) {
            Ok(k) => k,
            Err(e) => return header_failed(e),
        };
        // The derivations run side by side; the builds, which hold a 16 MiB header region
        // each until it is persisted, one at a time: views prepared together at a start
        // would otherwise add 16 MiB each to the daemon's peak (80 MiB with four, against the
        // 64 MiB target in scripts/bench.sh). A build takes tens of milliseconds.
        let _one_region = HEADER_BUILDS.lock().unwrap_or_else(|e| e.into_inner());
        let (bytes, key) = match plan.build(&k) {
            Ok(b) => b,
            Err(e) => return header_failed(e),
        };
        let took = started.elapsed().as_secs_f64();
        let padded_len = bifs_core::view::encrypt::padded_len(disk.len());
        match self.keep_header(img, secret, &bytes, identity, &d, padded_len) {
            Ok((header, parsed)) => {
                tracing::info!(image = %img.name, %secret, secs = took, "encrypt view prepared (stable LUKS2 header)");
                Settled::Encrypt {
                    header,
                    parsed,
                    key,
                }
            }
            Err(e) => failed(format!(
                "persisting the LUKS2 header in the state directory: {e}"
            )),
        }
    }

    /// Serves the persisted header when it is `bytes`, else persists `bytes` first.
    fn keep_header(
        &self,
        img: &StoredImage,
        secret: &SecretRef,
        bytes: &[u8],
        identity: SourceIdentity,
        d: &[u8; 64],
        padded_len: u64,
    ) -> Result<(Arc<RawFile>, Luks2Header), ViewError> {
        let state = self.store.state();
        let same = state
            .header_paths(&img.name, secret)
            .and_then(|(h, _)| fs::read(h).ok())
            .is_some_and(|old| old == bytes);
        let file = if same {
            match state.load_header(&img.name, secret)? {
                Some((f, _)) => f,
                None => return Err(ViewError::Io(std::io::Error::other("header vanished"))),
            }
        } else {
            let existed = state.load_header(&img.name, secret)?.is_some();
            let record = HeaderRecord {
                source: identity,
                padded_len,
                source_sha512: Some(hex::encode(d)),
            };
            let f = state.save_header(&img.name, secret, bytes, &record)?;
            crate::events::header_created(&img.name);
            if existed {
                tracing::info!(image = %img.name, %secret, "persisted LUKS2 header replaced: the source or the Secret changed, or it was made by an earlier bifs");
            }
            f
        };
        let header = Arc::new(RawFile::from_file(file)?);
        let parsed = Luks2Header::read(&*header)?;
        bifs_core::view::encrypt::check_region(header.len(), &parsed)?;
        Ok((header, parsed))
    }

    /// Unlocks a LUKS image with the Secret's passphrase, stopping between keyslots when the
    /// job is cancelled (`None` then).
    fn decrypt_job(
        &self,
        img: &StoredImage,
        params: &CryptoParams,
        ticket: &Ticket,
    ) -> Option<Settled> {
        let failed = |message: String, over_budget| Some(Settled::failed(message, over_budget));
        let file = match self.store.open_image(&img.path) {
            Ok(f) => f,
            Err(e) => return failed(format!("opening: {e}"), false),
        };
        if file.metadata().map(|m| FileStamp::of(&m)).ok() != Some(ticket.stamp) {
            return failed(
                "the stored file changed; it is prepared again".into(),
                false,
            );
        }
        let raw = match RawFile::from_file(file) {
            Ok(r) => r,
            Err(e) => return failed(e.to_string(), false),
        };
        let header = match LuksHeader::read(&raw) {
            Ok(h) => h,
            Err(e) => return failed(e.to_string(), false),
        };
        let stop = || ticket.cancelled();
        match header.unlock_until(&raw, &params.luks.passphrase, &self.limits, &stop) {
            Ok(key) => Some(Settled::Decrypt { header, key }),
            Err(LuksError::WrongPassphrase) => {
                crate::events::unlock_failed(Mode::Decrypt.name(), &img.name);
                Some(Settled::WrongPassphrase)
            }
            Err(LuksError::Cancelled) => {
                tracing::info!(image = %img.name, secret = %params.secret, "unlock cancelled: nobody waits for it any more");
                None
            }
            Err(e @ (LuksError::Kdf(_) | LuksError::KeyslotBudget { .. })) => {
                failed(format!("{e} (this server's limits)"), true)
            }
            Err(e) => failed(e.to_string(), false),
        }
    }

    /// Starts the background pass (once): every second, every view the node must serve is
    /// checked and the unprepared ones are queued; the findings are [`Self::readiness`].
    pub fn start_background(&self) {
        if self.background.swap(true, Ordering::Relaxed) {
            return;
        }
        let cat = self.clone();
        let spawned = std::thread::Builder::new()
            .name("bifs-prepare".into())
            .spawn(move || loop {
                let r = cat.pass();
                let ready = r.ready();
                let (was, news) = {
                    let mut cur = cat.readiness.lock().unwrap_or_else(|e| e.into_inner());
                    let was = cur.ready();
                    // Each problem once, when it appears: the log has the details an
                    // unauthorized /readyz leaves out (paths, Secret names).
                    let mut news: Vec<String> = r
                        .warnings
                        .iter()
                        .filter(|w| !cur.warnings.contains(w))
                        .cloned()
                        .collect();
                    if let Some(e) = r
                        .store_error
                        .as_ref()
                        .filter(|e| cur.store_error.as_ref() != Some(*e))
                    {
                        news.push(format!("store not readable: {e}"));
                    }
                    *cur = r;
                    (was, news)
                };
                for w in news {
                    tracing::warn!(problem = %w, "not ready");
                }
                if ready && !was {
                    tracing::info!("every view is prepared (ready)");
                }
                std::thread::sleep(PASS_INTERVAL);
            });
        if let Err(e) = spawned {
            tracing::error!(error = %e, "cannot start the background preparation; views are prepared on request only");
        }
    }

    /// What the last background pass found.
    pub fn readiness(&self) -> Readiness {
        let mut r = self
            .readiness
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        if let Some(w) = self.work.get() {
            r.pool = w.kdf.stats();
            r.digests_pending =
                w.digests.stats().queued_request + w.digests.stats().queued_background;
        }
        r
    }

    /// What an unlock of `img` would cost, in default keyslots (cached per version).
    fn unlock_cost(&self, img: &StoredImage, stamp: &FileStamp) -> f64 {
        let mut costs = self.unlock_costs.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((s, c)) = costs.get(&img.name) {
            if s == stamp {
                return *c;
            }
        }
        let cost = RawFile::open(&img.path)
            .ok()
            .and_then(|f| LuksHeader::read(&f).ok())
            .map(|h| {
                let (kdfs, digest) = h.kdf_plan();
                unlock_units(&kdfs, digest)
            })
            .unwrap_or(f64::INFINITY);
        costs.insert(img.name.clone(), (*stamp, cost));
        cost
    }

    /// One background pass.
    fn pass(&self) -> Readiness {
        let mut r = Readiness {
            checked: true,
            ..Default::default()
        };
        r.warnings = self.store.access_warnings();
        let secrets = self.secrets(false);
        let images = match self.store.list() {
            Ok(i) => i,
            Err(e) => {
                r.store_error = Some(e.to_string());
                return r;
            }
        };
        r.images = images.len();
        {
            // Forget pairs of images that are gone.
            let names: std::collections::HashSet<&str> =
                images.iter().map(|i| i.name.as_str()).collect();
            let mut pairs = self.pairs.lock().unwrap_or_else(|e| e.into_inner());
            pairs.retain(|(_, image, _), _| names.contains(image.as_str()));
        }
        for img in &images {
            let Ok(stamp) = fs::metadata(&img.path).map(|m| FileStamp::of(&m)) else {
                continue;
            };
            if img.format.is_luks() {
                self.pass_luks(img, stamp, &secrets, &mut r);
            } else {
                for sref in secrets.keys() {
                    let key = (Mode::Encrypt, img.name.clone(), sref.clone());
                    count(self, &key, img, stamp, Class::Essential, &mut r.encrypt);
                }
            }
        }
        // Secrets beyond the limits are a loud warning: their encrypt views can never be served.
        let mut over: BTreeMap<String, String> = BTreeMap::new();
        {
            let pairs = self.pairs.lock().unwrap_or_else(|e| e.into_inner());
            for ((mode, _, secret), pair) in pairs.iter() {
                if *mode != Mode::Encrypt {
                    continue;
                }
                if let Some((
                    _,
                    Settled::Failed {
                        message,
                        over_budget: true,
                        ..
                    },
                )) = &pair.lock().value
                {
                    over.insert(secret.to_string(), message.clone());
                }
            }
        }
        r.warnings.extend(over.into_values());
        r
    }

    fn pass_luks(
        &self,
        img: &StoredImage,
        stamp: FileStamp,
        secrets: &super::SecretMap,
        r: &mut Readiness,
    ) {
        let own = crate::longhorn::status::read(&self.store, &img.name)
            .ok()
            .flatten()
            .filter(|rec| !rec.spec.secret.is_empty())
            .map(|rec| SecretRef {
                namespace: rec.spec.secret_namespace.clone(),
                name: rec.spec.secret.clone(),
            });
        let mut units = None;
        for sref in secrets.keys() {
            let key = (Mode::Decrypt, img.name.clone(), sref.clone());
            if own.as_ref() == Some(sref) {
                count(self, &key, img, stamp, Class::Essential, &mut r.decrypt_own);
                continue;
            }
            // Beyond the background budget: left to requests, and a request's job for it is
            // not taken over (it stays cancellable when its client leaves).
            let cost = *units.get_or_insert_with(|| self.unlock_cost(img, &stamp));
            if cost > SPECULATIVE_UNITS {
                r.decrypt_skipped += 1;
                continue;
            }
            count(
                self,
                &key,
                img,
                stamp,
                Class::Speculative,
                &mut r.decrypt_other,
            );
        }
    }
}

/// Counts a pair's state for `stamp` into `c`, queuing a job when none is settled or running.
fn count(
    cat: &Catalog,
    key: &super::PairKey,
    img: &StoredImage,
    stamp: FileStamp,
    class: Class,
    c: &mut Counts,
) {
    match cat.status_of(key, &stamp) {
        Status::Settled => {
            let pair = cat.pair(key);
            let st = pair.lock();
            match st.current(&stamp) {
                Some(Settled::Encrypt { .. } | Settled::Decrypt { .. }) => c.ready += 1,
                _ => c.refused += 1,
            }
        }
        Status::InFlight | Status::Absent => {
            c.preparing += 1;
            // Background classes are never refused as busy.
            let _ = cat.ensure(key, img, stamp, class);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bifs_core::kdf::Argon2Type;

    #[test]
    fn unlock_costs_in_default_keyslots() {
        let default_argon2 = Kdf::Argon2 {
            kind: Argon2Type::Argon2i,
            time: bifs_core::kdf::ARGON2_TIME,
            memory_kib: bifs_core::kdf::ARGON2_MEMORY_KIB,
            cpus: 4,
        };
        assert!((unlock_units(&[default_argon2], None) - 1.0).abs() < 1e-9);
        let cheap = Kdf::Pbkdf2 {
            hash: Hash::Sha256,
            iterations: 1000,
        };
        assert!(unlock_units(&[cheap; 8], Some((Hash::Sha256, 1000))) < 0.01);
        let hostile = Kdf::Pbkdf2 {
            hash: Hash::Sha256,
            iterations: 1 << 30,
        };
        assert!(unlock_units(&[hostile], None) > SPECULATIVE_UNITS);
        // Four default keyslots are within the background budget, five are not.
        assert!(unlock_units(&[default_argon2; 4], None) <= SPECULATIVE_UNITS);
        assert!(unlock_units(&[default_argon2; 5], None) > SPECULATIVE_UNITS);
    }
}
