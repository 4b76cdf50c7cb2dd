//! What the mount and the server serve: the store's images under each mode and Secret, and
//! the views behind them. Everything here is plain Rust, testable without FUSE; the faces only
//! turn its answers and errors into replies.
//!
//! No key derivation happens on the path of a request: encrypt views (their stable LUKS2
//! headers, [`bifs_core::view::stable`]) and decrypt views (unlocked keys) are prepared by
//! jobs on the derivation pool (`prepare`, [`crate::kdfpool`]), ahead of requests by the
//! background pass ([`Catalog::start_background`]) or when a request finds its pair not
//! ready ([`Catalog::open_now`] hands back a [`Pending`] to wait on). Results are kept per
//! version of the stored file: a wrong passphrase too, so a retry costs no KDF.
//!
//! A catalog made from a [`SecretSource`] follows its files: it looks for changes at most once
//! a second when listing, and on every keyed open. A Secret that was rotated, added or removed
//! loses its prepared views (only that Secret's), so the next open uses the new passphrase.

mod prepare;

pub use prepare::{Counts, Pending, Readiness, WorkConfig};

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fs;
use std::io;
use std::ops::Deref;
use std::os::unix::fs::MetadataExt;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex, OnceLock, RwLock};
use std::time::{Duration, Instant, SystemTime};

use crate::kdfpool::{Busy, Class};
use crate::store::digests::FileStamp;
use crate::store::{ChainFile, SourceIdentity, Store, StoredImage, Watched};
use bifs_core::image::{self, raw::RawFile, ReadAt};
use bifs_core::kdf::KdfLimits;
use bifs_core::luks::{LuksError, LuksHeader, DATA_OFFSET};
use bifs_core::view::{encrypt, DecryptView, EncryptView, ViewError};
use bifs_k8s::{CryptoParams, Secret, SecretRef, SecretSource};

use prepare::{Pair, Readiness as ReadinessState, Settled, Work};

/// The four views of an image: one top-level directory each in the mount, one path prefix
/// each over HTTP.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Mode {
    Ignore,
    Raw,
    Encrypt,
    Decrypt,
}

impl Mode {
    pub const ALL: [Mode; 4] = [Mode::Ignore, Mode::Raw, Mode::Encrypt, Mode::Decrypt];

    pub fn name(self) -> &'static str {
        match self {
            Mode::Ignore => "ignore",
            Mode::Raw => "raw",
            Mode::Encrypt => "encrypt",
            Mode::Decrypt => "decrypt",
        }
    }

    pub fn from_name(name: &str) -> Option<Self> {
        Mode::ALL.into_iter().find(|m| m.name() == name)
    }

    /// Whether the mode needs a Secret (images sit under `<namespace>/<secret>/`).
    pub fn keyed(self) -> bool {
        matches!(self, Mode::Encrypt | Mode::Decrypt)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum CatalogError {
    #[error("no image {0:?} in the store")]
    NoImage(String),
    #[error("no Secret {0} was loaded from --secrets")]
    UnknownSecret(SecretRef),
    #[error("no Secret in namespace {0:?} was loaded from --secrets")]
    UnknownNamespace(String),
    #[error("image {image:?} is {format}: {refusal}")]
    Refused {
        image: String,
        format: image::Format,
        refusal: ViewError,
    },
    #[error("image {image:?}: Secret {secret}'s passphrase opens no keyslot")]
    WrongPassphrase { image: String, secret: SecretRef },
    #[error("image {image:?}: {error}")]
    View { image: String, error: ViewError },
    #[error("image {image:?}: {error}")]
    Io { image: String, error: io::Error },
    /// Preparing the view failed (cached for this version of the file); `over_budget` when
    /// the work it needs is beyond the server's limits.
    #[error("image {image:?}: {message}")]
    Failed {
        image: String,
        message: String,
        over_budget: bool,
    },
    /// Too many key derivations wait already.
    #[error("image {image:?}: {busy}")]
    Busy { image: String, busy: Busy },
    /// Still being prepared when the caller stopped waiting.
    #[error(
        "image {image:?}: its view is still being prepared (a key derivation); try again shortly"
    )]
    Preparing { image: String },
}

impl CatalogError {
    /// The errno a caller sees. Refused combinations are EINVAL (the path names something
    /// bifs will not make), unknown names ENOENT, a wrong passphrase EACCES, a source that
    /// vanished or changed EIO, work beyond the server's limits EPERM, a full derivation
    /// queue EAGAIN.
    pub fn errno(&self) -> i32 {
        match self {
            CatalogError::NoImage(_)
            | CatalogError::UnknownSecret(_)
            | CatalogError::UnknownNamespace(_) => libc::ENOENT,
            CatalogError::Refused { .. } => libc::EINVAL,
            CatalogError::WrongPassphrase { .. } => libc::EACCES,
            CatalogError::View {
                error: ViewError::Io(e),
                ..
            }
            | CatalogError::Io { error: e, .. } => match e.raw_os_error() {
                Some(libc::ENOENT) => libc::EIO,
                Some(n) => n,
                None => libc::EIO,
            },
            CatalogError::View { .. } => libc::EIO,
            CatalogError::Failed {
                over_budget: true, ..
            } => libc::EPERM,
            CatalogError::Failed { .. } => libc::EIO,
            CatalogError::Busy { .. } | CatalogError::Preparing { .. } => libc::EAGAIN,
        }
    }
}

/// Size, allocation and time of a file in the mount.
#[derive(Debug, Clone)]
pub struct FileInfo {
    pub size: u64,
    /// 512-byte blocks: what `cp --sparse=auto` uses to decide whether to look for holes.
    pub blocks: u64,
    /// The latest modification time of the files the view reads.
    pub mtime: SystemTime,
    /// The stored file's version the sizes are of (with its backing chain's, for a view
    /// that reads one).
    pub identity: SourceIdentity,
    /// The backing files the view reads besides the stored file (a qcow2 image's chain,
    /// raw/ and encrypt/ only), in chain order.
    pub chain: Vec<std::path::PathBuf>,
}

/// A view opened, or the hold of a request on its preparation.
pub enum Opening {
    Ready(Arc<dyn ReadAt>, SourceIdentity),
    Pending(Pending),
}

pub(crate) type PairKey = (Mode, String, SecretRef);

type SecretMap = BTreeMap<SecretRef, Arc<CryptoParams>>;

/// How often listing looks at the Secret files (keyed opens always look).
const SECRETS_RECHECK: Duration = Duration::from_secs(1);

/// How long a blocking open (FUSE) waits for its view to be prepared: a header at bifs's
/// default cost takes seconds, a queue of them a minute; an unlock of a hostile image may take
/// hours, and must not hold a FUSE thread that long (EAGAIN: the job goes on while wanted).
const OPEN_WAIT: Duration = Duration::from_secs(120);

struct Watch {
    source: SecretSource,
    checked: Instant,
}

/// Told which Secrets changed; see [`Catalog::on_secrets_changed`].
type SecretsHook = Box<dyn Fn(&BTreeSet<SecretRef>) + Send + Sync>;

/// The catalog: cheap to clone (every clone is the same catalog).
#[derive(Clone)]
pub struct Catalog {
    inner: Arc<Inner>,
}

/// The catalog's state (a [`Catalog`] derefs to it; its fields are private).
pub struct Inner {
    store: Store,
    secrets: RwLock<Arc<SecretMap>>,
    watch: Option<Mutex<Watch>>,
    limits: KdfLimits,
    pairs: Mutex<HashMap<PairKey, Arc<Pair>>>,
    /// A token per Secret that changes whenever the Secret does (for validators such as ETags:
    /// never derived from its values).
    versions: Mutex<HashMap<SecretRef, [u8; 16]>>,
    work: OnceLock<Work>,
    work_config: Mutex<WorkConfig>,
    readiness: Mutex<ReadinessState>,
    digest_memo: Mutex<HashMap<String, (FileStamp, [u8; 64])>>,
    /// What an unlock of a LUKS image would cost (default keyslots), per version of the file.
    unlock_costs: Mutex<HashMap<String, (FileStamp, f64)>>,
    background: AtomicBool,
    secrets_hooks: RwLock<Vec<SecretsHook>>,
}

impl Deref for Catalog {
    type Target = Inner;
    fn deref(&self) -> &Inner {
        &self.inner
    }
}

/// Secrets whose CRYPTO_* keys are invalid are left out with a warning: they can neither
/// encrypt nor be trusted to decrypt.
fn params_of<'a>(secrets: impl IntoIterator<Item = &'a Secret>) -> SecretMap {
    let mut map = BTreeMap::new();
    for s in secrets {
        match s.crypto_params() {
            Ok(p) => {
                if map.insert(s.id.clone(), Arc::new(p)).is_some() {
                    tracing::warn!(secret = %s.id, "Secret defined twice; the last one wins");
                }
            }
            Err(e) => {
                tracing::warn!(secret = %s.id, error = %e, "Secret left out of the mount")
            }
        }
    }
    map
}

impl Catalog {
    /// A catalog with a fixed set of Secrets.
    pub fn new(store: Store, secrets: Vec<Secret>) -> Self {
        Self::build(store, params_of(&secrets), None)
    }

    /// A catalog that follows the Secret files of `source` (rotation without a restart).
    pub fn watching(store: Store, source: SecretSource) -> Self {
        let map = params_of(source.secrets());
        let watch = Watch {
            source,
            checked: Instant::now(),
        };
        Self::build(store, map, Some(Mutex::new(watch)))
    }

    fn build(store: Store, secrets: SecretMap, watch: Option<Mutex<Watch>>) -> Self {
        Self {
            inner: Arc::new(Inner {
                store,
                secrets: RwLock::new(Arc::new(secrets)),
                watch,
                limits: KdfLimits::default(),
                pairs: Mutex::new(HashMap::new()),
                versions: Mutex::new(HashMap::new()),
                work: OnceLock::new(),
                work_config: Mutex::new(WorkConfig::default()),
                readiness: Mutex::new(ReadinessState::default()),
                digest_memo: Mutex::new(HashMap::new()),
                unlock_costs: Mutex::new(HashMap::new()),
                background: AtomicBool::new(false),
                secrets_hooks: RwLock::new(Vec::new()),
            }),
        }
    }

    /// Calls `hook` with the Secrets that were added, changed or removed, each time a change
    /// of the Secret files is put in force (after their cached unlocks are forgotten, so an
    /// encrypt view opened from then on may get a new header). A face that keeps view bytes
    /// (the FUSE page cache) drops those of the views under these Secrets. The hook runs on
    /// whichever thread noticed the change (an open, a listing, [`Catalog::refresh_secrets`]):
    /// it must be quick and must not call back into the catalog.
    pub fn on_secrets_changed(&self, hook: impl Fn(&BTreeSet<SecretRef>) + Send + Sync + 'static) {
        self.secrets_hooks
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .push(Box::new(hook));
    }

    /// Looks at the Secret files for changes (at most once a second, as listing does), so that
    /// a rotation is noticed, and its hooks called, without waiting for an open.
    pub fn refresh_secrets(&self) {
        self.secrets(false);
    }

    /// The current Secrets, after reading any change to their files (`always`: even when
    /// they were looked at less than a second ago).
    fn secrets(&self, always: bool) -> Arc<SecretMap> {
        if let Some(watch) = &self.watch {
            let mut w = watch.lock().unwrap_or_else(|e| e.into_inner());
            if always || w.checked.elapsed() >= SECRETS_RECHECK {
                w.checked = Instant::now();
                match w.source.refresh() {
                    Ok(Some(changed)) => {
                        self.replace_secrets(params_of(w.source.secrets()), &changed)
                    }
                    Ok(None) => {}
                    Err(e) => tracing::warn!(
                        path = %w.source.path().display(), error = %e,
                        "Secrets changed but cannot be read; keeping the previous ones"
                    ),
                }
            }
        }
        self.secrets
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Puts `map` in force and forgets the prepared views of the `changed` Secrets.
    fn replace_secrets(&self, map: SecretMap, changed: &BTreeSet<SecretRef>) {
        *self.secrets.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(map);
        if changed.is_empty() {
            return;
        }
        {
            // An open that already holds a forgotten pair finishes with it; later opens get new
            // ones. A job still running for a forgotten pair has its result dropped.
            let mut pairs = self.pairs.lock().unwrap_or_else(|e| e.into_inner());
            pairs.retain(|(_, _, secret), _| !changed.contains(secret));
        }
        let mut versions = self.versions.lock().unwrap_or_else(|e| e.into_inner());
        for secret in changed {
            versions.remove(secret);
            tracing::info!(%secret, "Secret added, changed or removed; its cached unlocks are forgotten");
        }
        for hook in self
            .secrets_hooks
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
        {
            hook(changed);
        }
    }

    /// A token for `secret` that changes whenever the Secret does (and at every start): what a
    /// validator of a view keyed by it may include. Random, never derived from its values.
    pub fn secret_version(&self, secret: &SecretRef) -> [u8; 16] {
        self.secrets(false);
        let mut versions = self.versions.lock().unwrap_or_else(|e| e.into_inner());
        *versions.entry(secret.clone()).or_insert_with(|| {
            // A random (v4) UUID's bytes.
            uuid::Uuid::new_v4().into_bytes()
        })
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    pub fn namespaces(&self) -> Vec<String> {
        let mut v: Vec<String> = self
            .secrets(false)
            .keys()
            .map(|s| s.namespace.clone())
            .collect();
        v.dedup();
        v
    }

    pub fn secrets_in(&self, namespace: &str) -> Result<Vec<String>, CatalogError> {
        let v: Vec<String> = self
            .secrets(false)
            .keys()
            .filter(|s| s.namespace == namespace)
            .map(|s| s.name.clone())
            .collect();
        if v.is_empty() {
            return Err(CatalogError::UnknownNamespace(namespace.to_owned()));
        }
        Ok(v)
    }

    pub fn check_secret(&self, secret: &SecretRef) -> Result<Arc<CryptoParams>, CatalogError> {
        self.secrets(false)
            .get(secret)
            .cloned()
            .ok_or_else(|| CatalogError::UnknownSecret(secret.clone()))
    }

    /// The images listed under `mode`: encrypt only non-LUKS images, decrypt only LUKS ones.
    pub fn images(&self, mode: Mode) -> Result<Vec<StoredImage>, CatalogError> {
        let all = self.store.list().map_err(|error| CatalogError::Io {
            image: String::new(),
            error,
        })?;
        Ok(all
            .into_iter()
            .filter(|i| refusal(mode, i).is_none())
            .collect())
    }

    /// The image behind `mode/[secret/]name`, or why there is none.
    pub fn image(
        &self,
        mode: Mode,
        secret: Option<&SecretRef>,
        name: &str,
    ) -> Result<StoredImage, CatalogError> {
        if let Some(s) = secret {
            self.check_secret(s)?;
        }
        let img = self
            .store
            .find(name)
            .map_err(|error| CatalogError::Io {
                image: name.to_owned(),
                error,
            })?
            .ok_or_else(|| CatalogError::NoImage(name.to_owned()))?;
        if let Some(refusal) = refusal(mode, &img) {
            return Err(CatalogError::Refused {
                image: img.name,
                format: img.format,
                refusal,
            });
        }
        Ok(img)
    }

    /// Size and allocation of the file `mode` makes of `img`, without unlocking anything.
    pub fn info(&self, mode: Mode, img: &StoredImage) -> Result<FileInfo, CatalogError> {
        let io_err = |error| CatalogError::Io {
            image: img.name.clone(),
            error,
        };
        // One descriptor for the metadata and the bytes: a rename in between must not mix
        // one file's size with another's content.
        let file = self.store.open_image(&img.path).map_err(io_err)?;
        let meta = file.metadata().map_err(io_err)?;
        let file_blocks = meta.blocks();
        let mut chain = Vec::new();
        let (size, blocks) = match mode {
            Mode::Ignore => (meta.len(), file_blocks),
            Mode::Raw => {
                let (disk, c) = self.disk_of(img, file)?;
                chain = c;
                (disk.len(), file_blocks)
            }
            Mode::Encrypt => {
                let (disk, c) = self.disk_of(img, file)?;
                chain = c;
                let size = DATA_OFFSET + encrypt::padded_len(disk.len());
                (size, size / 512)
            }
            Mode::Decrypt => {
                let file = Arc::new(RawFile::from_file(file).map_err(io_err)?);
                let header = read_luks(img, &*file)?;
                let size = header
                    .segment()
                    .len_in(file.len())
                    .map_err(|e| CatalogError::View {
                        image: img.name.clone(),
                        error: e.into(),
                    })?;
                (
                    size,
                    payload_blocks(&*file, header.segment().offset, file_blocks).map_err(io_err)?,
                )
            }
        };
        let ids: Vec<SourceIdentity> = chain.iter().map(|c| c.identity).collect();
        let identity = SourceIdentity::of(&meta).with_chain(&ids);
        let mtime_ns = u64::try_from(identity.latest_mtime_ns()).unwrap_or(0);
        Ok(FileInfo {
            size,
            blocks: blocks.min(size.div_ceil(512)),
            mtime: SystemTime::UNIX_EPOCH + std::time::Duration::from_nanos(mtime_ns),
            identity,
            chain: chain.into_iter().map(|c| c.path).collect(),
        })
    }

    /// The disk `img` holds, read through `file` (a descriptor of `img.path`), and the
    /// backing files it reads too (a qcow2 image's chain, each with the identity it had when
    /// opened: the view is of those versions).
    fn disk_of(
        &self,
        img: &StoredImage,
        file: fs::File,
    ) -> Result<(Arc<dyn ReadAt>, Vec<ChainFile>), CatalogError> {
        // A qcow2's backing files are opened beneath the store's root too.
        let chain = std::cell::RefCell::new(Vec::<ChainFile>::new());
        let opener = |p: &std::path::Path| -> io::Result<fs::File> {
            let f = self.store.open_image(p)?;
            let identity = SourceIdentity::of(&f.metadata()?);
            let path = lexically_normal(p);
            let mut chain = chain.borrow_mut();
            // A backing file without a format is opened twice (to detect it, then to read
            // it): one check of the same file is enough.
            let again = chain
                .last()
                .is_some_and(|c| c.path == path && c.identity == identity);
            if !again {
                chain.push(ChainFile {
                    file: f.try_clone()?,
                    path,
                    identity,
                });
            }
            Ok(f)
        };
        let disk = image::virtual_disk_with(file, &img.path, &opener);
        let chain = chain.into_inner();
        disk.map(|d| (d, chain)).map_err(|e| match e {
            image::OpenError::Io { error, .. } => CatalogError::Io {
                image: img.name.clone(),
                error,
            },
            other => CatalogError::Io {
                image: img.name.clone(),
                error: io::Error::other(other.to_string()),
            },
        })
    }

    /// The view `mode` makes of `img` (with `secret` for encrypt/decrypt), guarded so that
    /// its reads fail with EIO once the stored file changes, and the identity it is pinned to.
    /// Blocks while the view is being prepared (a key derivation on the pool), up to two
    /// minutes: for callers that may wait (the FUSE mount, tests).
    pub fn open(
        &self,
        mode: Mode,
        secret: Option<&SecretRef>,
        img: &StoredImage,
    ) -> Result<(Arc<dyn ReadAt>, SourceIdentity), CatalogError> {
        let deadline = Instant::now() + OPEN_WAIT;
        loop {
            match self.open_now(mode, secret, img)? {
                Opening::Ready(view, id) => return Ok((view, id)),
                Opening::Pending(p) => {
                    let (tx, rx) = std::sync::mpsc::channel();
                    p.on_settled(move || {
                        let _ = tx.send(());
                    });
                    let left = deadline.saturating_duration_since(Instant::now());
                    if rx.recv_timeout(left).is_err() {
                        return Err(CatalogError::Preparing {
                            image: img.name.clone(),
                        });
                    }
                }
            }
        }
    }

    /// The view if it is ready now, else a hold on its preparation (queued as a request:
    /// [`CatalogError::Busy`] when the request queue is full) to wait on. Never derives a key
    /// itself.
    pub fn open_now(
        &self,
        mode: Mode,
        secret: Option<&SecretRef>,
        img: &StoredImage,
    ) -> Result<Opening, CatalogError> {
        let io_err = |error| CatalogError::Io {
            image: img.name.clone(),
            error,
        };
        if secret.is_some() {
            self.secrets(true);
        }
        // The identity and every byte come from this one descriptor (see `Watched::open`).
        let (file, identity) = self
            .store
            .open_image(&img.path)
            .and_then(Watched::pin)
            .map_err(io_err)?;
        let stamp = FileStamp::of(&file.metadata().map_err(io_err)?);
        let dup = || file.try_clone().map_err(io_err);
        let stored = || -> Result<Arc<dyn ReadAt>, CatalogError> {
            Ok(Arc::new(RawFile::from_file(dup()?).map_err(io_err)?))
        };
        // The backing files a raw or encrypt view of a qcow2 image reads besides `file`.
        let chain = std::cell::RefCell::new(Vec::new());
        let disk = || -> Result<Arc<dyn ReadAt>, CatalogError> {
            let (d, c) = self.disk_of(img, dup()?)?;
            *chain.borrow_mut() = c;
            Ok(d)
        };
        let view: Arc<dyn ReadAt> = match (mode, secret) {
            (Mode::Ignore, _) => stored()?,
            (Mode::Raw, _) => disk()?,
            (Mode::Encrypt | Mode::Decrypt, Some(secret)) => {
                self.check_secret(secret)?;
                let key = (mode, img.name.clone(), secret.clone());
                let pair = self.pair(&key);
                let ready = {
                    let st = pair.lock();
                    match st.current(&stamp) {
                        Some(v) => Some(self.view_of(img, secret, v, &|| {
                            if mode == Mode::Encrypt {
                                disk()
                            } else {
                                stored()
                            }
                        })?),
                        _ => None,
                    }
                };
                match ready {
                    Some(v) => v,
                    None => {
                        let pending =
                            self.ensure(&key, img, stamp, Class::Request)
                                .map_err(|busy| CatalogError::Busy {
                                    image: img.name.clone(),
                                    busy,
                                })?;
                        return Ok(Opening::Pending(pending));
                    }
                }
            }
            (_, None) => return Err(CatalogError::NoImage(img.name.clone())),
        };
        let chain = chain.into_inner();
        let ids: Vec<SourceIdentity> = chain.iter().map(|c| c.identity).collect();
        Ok(Opening::Ready(
            Arc::new(Watched::new(view, file, img.path.clone(), identity).with_chain(chain)),
            identity.with_chain(&ids),
        ))
    }

    /// The refusal already settled for `img`'s current version under `secret` (a wrong
    /// passphrase, work beyond the limits), if any: what a HEAD answers without waiting.
    pub fn known_refusal(
        &self,
        mode: Mode,
        secret: Option<&SecretRef>,
        img: &StoredImage,
    ) -> Result<(), CatalogError> {
        let Some(secret) = secret.filter(|_| mode.keyed()) else {
            return Ok(());
        };
        let Ok(stamp) = fs::metadata(&img.path).map(|m| FileStamp::of(&m)) else {
            return Ok(());
        };
        let pair = self.pair(&(mode, img.name.clone(), secret.clone()));
        let st = pair.lock();
        match st.current(&stamp) {
            Some(v @ (Settled::WrongPassphrase | Settled::Failed { .. })) => self
                .view_of(img, secret, v, &|| unreachable_source())
                .map(drop),
            _ => Ok(()),
        }
    }

    /// The view a settled pair gives over `source` (the disk for encrypt, the stored file for
    /// decrypt), or its refusal.
    fn view_of(
        &self,
        img: &StoredImage,
        secret: &SecretRef,
        settled: &Settled,
        source: &dyn Fn() -> Result<Arc<dyn ReadAt>, CatalogError>,
    ) -> Result<Arc<dyn ReadAt>, CatalogError> {
        let view_err = |error| CatalogError::View {
            image: img.name.clone(),
            error,
        };
        match settled {
            Settled::Encrypt {
                header,
                parsed,
                key,
            } => {
                let header: Arc<dyn ReadAt> = header.clone();
                Ok(Arc::new(
                    EncryptView::with_key(source()?, header, parsed, key).map_err(view_err)?,
                ))
            }
            Settled::Decrypt { header, key } => Ok(Arc::new(
                DecryptView::with_key(source()?, header.clone(), key).map_err(view_err)?,
            )),
            Settled::WrongPassphrase => Err(CatalogError::WrongPassphrase {
                image: img.name.clone(),
                secret: secret.clone(),
            }),
            Settled::Failed {
                message,
                over_budget,
                ..
            } => Err(CatalogError::Failed {
                image: img.name.clone(),
                message: message.clone(),
                over_budget: *over_budget,
            }),
        }
    }
}

/// `p` with `.` and `..` taken out by name (`dir/sub/../b` is `dir/b`): a backing file's
/// path as the store watch names it. The file itself was opened beneath the store's root.
fn lexically_normal(p: &std::path::Path) -> std::path::PathBuf {
    use std::path::Component;
    let mut out = std::path::PathBuf::new();
    for c in p.components() {
        match c {
            Component::CurDir => {}
            Component::ParentDir => {
                if !out.pop() {
                    out.push(c);
                }
            }
            other => out.push(other),
        }
    }
    out
}

/// Never called: a refusal builds no view.
fn unreachable_source() -> Result<Arc<dyn ReadAt>, CatalogError> {
    Err(CatalogError::NoImage(String::new()))
}

/// Why `mode` refuses `img`, if it does.
fn refusal(mode: Mode, img: &StoredImage) -> Option<ViewError> {
    match mode {
        Mode::Encrypt if img.format.is_luks() => Some(ViewError::AlreadyEncrypted(
            if img.format == image::Format::Luks1 {
                "LUKS1"
            } else {
                "LUKS2"
            },
        )),
        Mode::Decrypt if !img.format.is_luks() => Some(ViewError::NotEncrypted),
        _ => None,
    }
}

/// The 512-byte blocks a LUKS file allocates past its header (`payload` on): what a decrypt
/// view reports, so that `cp --sparse=auto` looks for holes (and pays a decryption of what it
/// scans, [`DecryptView`]'s `SEEK_HOLE`) only when the ciphertext itself is sparse, never for
/// the unwritten gaps every LUKS header has. A header region too fragmented to walk counts as
/// all allocated.
fn payload_blocks(file: &dyn ReadAt, payload: u64, file_blocks: u64) -> io::Result<u64> {
    let header = bifs_core::io::data_bytes_in(file, 0, payload, 256)?.unwrap_or(payload);
    Ok(file_blocks.saturating_sub(header / 512))
}

fn read_luks(img: &StoredImage, src: &dyn ReadAt) -> Result<LuksHeader, CatalogError> {
    LuksHeader::read(src).map_err(|e| match e {
        LuksError::NotLuks => CatalogError::Refused {
            image: img.name.clone(),
            format: img.format,
            refusal: ViewError::NotEncrypted,
        },
        other => CatalogError::View {
            image: img.name.clone(),
            error: other.into(),
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::FileExt;
    use std::path::Path;

    fn secret_yaml(namespace: &str, name: &str, passphrase: &str, extra: &str) -> String {
        format!(
            "apiVersion: v1\nkind: Secret\nmetadata: {{name: {name}, namespace: {namespace}}}\n\
             stringData:\n  CRYPTO_KEY_VALUE: \"{passphrase}\"\n  CRYPTO_KEY_PROVIDER: secret\n  \
             CRYPTO_PBKDF: pbkdf2\n  CRYPTO_PBKDF_FORCE_ITERATIONS: \"1000\"\n{extra}---\n"
        )
    }

    fn secret(namespace: &str, name: &str) -> SecretRef {
        SecretRef {
            namespace: namespace.into(),
            name: name.into(),
        }
    }

    fn noise(seed: u64, len: usize) -> Vec<u8> {
        let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        (0..len)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect()
    }

    fn read_all(view: &dyn ReadAt) -> Vec<u8> {
        let mut buf = vec![0u8; usize::try_from(view.len()).unwrap()];
        image::read_full_at(view, 0, &mut buf).unwrap();
        buf
    }

    /// A store with two raw images and a catalog with Secrets ns/good and ns/wrong (another
    /// passphrase), other/s, and ns/bad (an unsupported cipher: left out).
    fn fixture(dir: &Path) -> Catalog {
        fs::write(dir.join("a.img"), noise(1, 256 << 10)).unwrap();
        fs::write(dir.join("b.img"), noise(2, 64 << 10)).unwrap();
        let yaml = [
            secret_yaml("ns", "good", "right horse", ""),
            secret_yaml("ns", "wrong", "wrong horse", ""),
            secret_yaml("other", "s", "x", ""),
            secret_yaml(
                "ns",
                "bad",
                "x",
                "  CRYPTO_KEY_CIPHER: aes-cbc-essiv:sha256\n",
            ),
        ]
        .concat();
        let secrets = bifs_k8s::secret::parse_secrets(&yaml, Path::new("test.yaml")).unwrap();
        Catalog::new(Store::open(dir, None).unwrap(), secrets)
    }

    /// Materializes the encrypt view of a.img as `enc.img`: a LUKS2 image made by bifs's own
    /// format code (pbkdf2, 1000 iterations).
    fn add_luks_image(catalog: &Catalog, dir: &Path) -> Vec<u8> {
        let good = secret("ns", "good");
        let img = catalog.image(Mode::Encrypt, Some(&good), "a.img").unwrap();
        let (view, _) = catalog.open(Mode::Encrypt, Some(&good), &img).unwrap();
        let bytes = read_all(&*view);
        fs::write(dir.join("enc.img"), &bytes).unwrap();
        bytes
    }

    #[test]
    fn secrets_are_listed_by_namespace_and_bad_ones_left_out() {
        let dir = tempfile::tempdir().unwrap();
        let catalog = fixture(dir.path());
        assert_eq!(catalog.namespaces(), ["ns", "other"]);
        assert_eq!(catalog.secrets_in("ns").unwrap(), ["good", "wrong"]);
        assert_eq!(catalog.secrets_in("other").unwrap(), ["s"]);
        let e = catalog.secrets_in("nope").unwrap_err();
        assert!(matches!(e, CatalogError::UnknownNamespace(_)), "{e}");
        assert_eq!(e.errno(), libc::ENOENT);
        assert!(catalog.check_secret(&secret("ns", "good")).is_ok());
        let e = catalog.check_secret(&secret("ns", "bad")).unwrap_err();
        assert!(matches!(e, CatalogError::UnknownSecret(_)), "{e}");
        assert_eq!(e.errno(), libc::ENOENT);
    }

    #[test]
    fn names_resolve_to_images_and_misses_are_enoent() {
        let dir = tempfile::tempdir().unwrap();
        let catalog = fixture(dir.path());
        let names = |mode| -> Vec<String> {
            catalog
                .images(mode)
                .unwrap()
                .into_iter()
                .map(|i| i.name)
                .collect()
        };
        assert_eq!(names(Mode::Ignore), ["a.img", "b.img"]);
        assert_eq!(names(Mode::Raw), ["a.img", "b.img"]);
        assert_eq!(names(Mode::Encrypt), ["a.img", "b.img"]);
        assert!(names(Mode::Decrypt).is_empty());

        let img = catalog.image(Mode::Raw, None, "a.img").unwrap();
        assert_eq!(img.path, dir.path().canonicalize().unwrap().join("a.img"));
        let info = catalog.info(Mode::Raw, &img).unwrap();
        assert_eq!(info.size, 256 << 10);
        let info = catalog.info(Mode::Encrypt, &img).unwrap();
        assert_eq!(info.size, DATA_OFFSET + (256 << 10));

        let e = catalog.image(Mode::Raw, None, "nope.img").unwrap_err();
        assert!(matches!(e, CatalogError::NoImage(_)), "{e}");
        assert_eq!(e.errno(), libc::ENOENT);
        let e = catalog
            .image(Mode::Encrypt, Some(&secret("ns", "nope")), "a.img")
            .unwrap_err();
        assert!(matches!(e, CatalogError::UnknownSecret(_)), "{e}");
        assert_eq!(e.errno(), libc::ENOENT);

        // A source that vanished after it was found is EIO (the name existed), not ENOENT.
        fs::remove_file(&img.path).unwrap();
        let e = catalog.info(Mode::Raw, &img).unwrap_err();
        assert_eq!(e.errno(), libc::EIO, "{e}");
        let e = catalog.open(Mode::Ignore, None, &img).err().unwrap();
        assert_eq!(e.errno(), libc::EIO, "{e}");
    }

    #[test]
    fn refusals_are_einval_and_a_wrong_passphrase_eacces() {
        let dir = tempfile::tempdir().unwrap();
        let catalog = fixture(dir.path());
        add_luks_image(&catalog, dir.path());
        let good = secret("ns", "good");
        let wrong = secret("ns", "wrong");

        let e = catalog
            .image(Mode::Encrypt, Some(&good), "enc.img")
            .unwrap_err();
        assert!(
            matches!(
                e,
                CatalogError::Refused {
                    refusal: ViewError::AlreadyEncrypted("LUKS2"),
                    ..
                }
            ),
            "{e}"
        );
        assert_eq!(e.errno(), libc::EINVAL);
        let e = catalog
            .image(Mode::Decrypt, Some(&good), "a.img")
            .unwrap_err();
        assert!(
            matches!(
                e,
                CatalogError::Refused {
                    refusal: ViewError::NotEncrypted,
                    ..
                }
            ),
            "{e}"
        );
        assert_eq!(e.errno(), libc::EINVAL);
        let decrypt: Vec<String> = catalog
            .images(Mode::Decrypt)
            .unwrap()
            .into_iter()
            .map(|i| i.name)
            .collect();
        assert_eq!(decrypt, ["enc.img"]);

        let img = catalog
            .image(Mode::Decrypt, Some(&wrong), "enc.img")
            .unwrap();
        for _ in 0..2 {
            // The second answer comes from the cache, with the same error.
            let e = catalog
                .open(Mode::Decrypt, Some(&wrong), &img)
                .err()
                .unwrap();
            assert!(matches!(e, CatalogError::WrongPassphrase { .. }), "{e}");
            assert_eq!(e.errno(), libc::EACCES);
        }
    }

    #[test]
    fn decrypt_of_encrypt_is_the_source_and_the_header_is_kept() {
        let dir = tempfile::tempdir().unwrap();
        let catalog = fixture(dir.path());
        let first = add_luks_image(&catalog, dir.path());
        let good = secret("ns", "good");
        // The persisted header makes the encrypt view the same bytes on every open.
        let img = catalog.image(Mode::Encrypt, Some(&good), "a.img").unwrap();
        let (again, _) = catalog.open(Mode::Encrypt, Some(&good), &img).unwrap();
        assert!(
            read_all(&*again) == first,
            "encrypt view changed between opens"
        );

        let img = catalog
            .image(Mode::Decrypt, Some(&good), "enc.img")
            .unwrap();
        let info = catalog.info(Mode::Decrypt, &img).unwrap();
        assert_eq!(info.size, 256 << 10);
        let (view, identity) = catalog.open(Mode::Decrypt, Some(&good), &img).unwrap();
        assert_eq!(identity, SourceIdentity::of_path(&img.path).unwrap());
        assert!(
            read_all(&*view) == noise(1, 256 << 10),
            "decrypt(encrypt(a)) != a"
        );
    }

    /// Writes `bytes` to `path` as the copier does (every all-zero block a hole), with `gap`
    /// left a hole too.
    fn write_sparse(path: &Path, bytes: &[u8], gap: std::ops::Range<usize>) {
        let mut bytes = bytes.to_vec();
        bytes[gap].fill(0);
        let f = fs::File::create(path).unwrap();
        f.set_len(bytes.len() as u64).unwrap();
        crate::copier::write_sparse(&f, &bytes, 0).unwrap();
    }

    /// A decrypt view reports the payload's allocation: a LUKS file whose only holes are in
    /// its header looks whole (so `cp` does not decrypt it all to look for holes first), and
    /// one whose ciphertext has a hole looks sparse.
    #[test]
    fn a_decrypt_view_counts_the_payload_blocks_only() {
        let dir = tempfile::tempdir().unwrap();
        let catalog = fixture(dir.path());
        let bytes = add_luks_image(&catalog, dir.path());
        let enc = dir.path().join("enc.img");
        let good = secret("ns", "good");
        let blocks = |catalog: &Catalog| {
            let img = catalog
                .image(Mode::Decrypt, Some(&good), "enc.img")
                .unwrap();
            catalog.info(Mode::Decrypt, &img).unwrap().blocks
        };
        write_sparse(&enc, &bytes, 0..0);
        let header_holes = fs::metadata(&enc).unwrap().blocks() < bytes.len() as u64 / 512;
        assert!(
            header_holes,
            "the file system here keeps no holes: nothing to test"
        );
        assert_eq!(blocks(&catalog), (256 << 10) / 512);
        let payload = DATA_OFFSET as usize;
        write_sparse(&enc, &bytes, payload + 65536..payload + 131072);
        // 128 blocks fewer, give or take the file system's own blocks (ext4 counts its
        // extent tree in st_blocks).
        let sparse = blocks(&catalog);
        assert!(sparse <= (256 << 10) / 512 - 64, "{sparse} blocks");
    }

    #[test]
    fn a_source_changed_in_place_fails_reads_with_eio() {
        let dir = tempfile::tempdir().unwrap();
        let catalog = fixture(dir.path());
        let img = catalog.image(Mode::Raw, None, "b.img").unwrap();
        let (view, _) = catalog.open(Mode::Raw, None, &img).unwrap();
        let mut buf = [0u8; 512];
        view.read_at(0, &mut buf).unwrap();
        fs::OpenOptions::new()
            .write(true)
            .open(&img.path)
            .unwrap()
            .write_all_at(b"more", 64 << 10)
            .unwrap();
        let e = view.read_at(0, &mut buf).unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::EIO), "{e}");
    }

    #[test]
    fn a_view_reads_the_file_it_was_opened_on_after_a_rename() {
        let dir = tempfile::tempdir().unwrap();
        let catalog = fixture(dir.path());
        let img = catalog.image(Mode::Raw, None, "b.img").unwrap();
        let (view, identity) = catalog.open(Mode::Raw, None, &img).unwrap();
        // Replace b.img by rename: the open view keeps the old inode, consistently.
        let new = dir.path().join("new.tmp");
        fs::write(&new, noise(3, 64 << 10)).unwrap();
        fs::rename(&new, &img.path).unwrap();
        assert!(read_all(&*view) == noise(2, 64 << 10));
        let (view, now) = catalog.open(Mode::Raw, None, &img).unwrap();
        assert_ne!(now, identity);
        assert!(read_all(&*view) == noise(3, 64 << 10));
    }

    #[test]
    fn a_rotation_is_told_to_the_hooks_with_the_secrets_it_changed() {
        let dir = tempfile::tempdir().unwrap();
        let store_dir = dir.path().join("store");
        fs::create_dir(&store_dir).unwrap();
        fs::write(store_dir.join("a.img"), noise(1, 64 << 10)).unwrap();
        let file = dir.path().join("secrets.yaml");
        let write = |pass: &str| {
            let yaml = [
                secret_yaml("ns", "good", pass, ""),
                secret_yaml("ns", "other", "unchanged", ""),
            ]
            .concat();
            fs::write(&file, yaml).unwrap();
        };
        write("first");
        let catalog = Catalog::watching(
            Store::open(&store_dir, None).unwrap(),
            SecretSource::open(&file).unwrap(),
        );
        let told = Arc::new(Mutex::new(Vec::<BTreeSet<SecretRef>>::new()));
        let t = told.clone();
        catalog.on_secrets_changed(move |changed| t.lock().unwrap().push(changed.clone()));
        let good = secret("ns", "good");
        let img = catalog.image(Mode::Encrypt, Some(&good), "a.img").unwrap();
        let before = read_all(&*catalog.open(Mode::Encrypt, Some(&good), &img).unwrap().0);
        assert!(told.lock().unwrap().is_empty());

        // A new passphrase of another length (the file's size changes with it).
        write("the second passphrase");
        let after = read_all(&*catalog.open(Mode::Encrypt, Some(&good), &img).unwrap().0);
        assert_eq!(*told.lock().unwrap(), [BTreeSet::from([good.clone()])]);
        assert!(
            before != after,
            "the rotated Secret's encrypt view kept its bytes"
        );
    }
}
