//! What the mount serves: the store's images under each mode and Secret, and the views
//! behind them. Everything here is plain Rust, testable without FUSE; the adapter only turns
//! its answers and errors into replies.
//!
//! Unlocked volume keys are cached per (mode, image, Secret) for the life of the mount, so an
//! Argon2 unlock happens once per mount, not once per open. A wrong passphrase is cached too
//! (while the image is unchanged): retrying an open must not cost an Argon2 run each time.
//!
//! A catalog made from a [`SecretSource`] follows its files: it looks for changes at most once
//! a second when listing, and on every keyed open. A Secret that was rotated, added or removed
//! loses its cached unlocks (only that Secret's), so the next open uses the new passphrase.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fs;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant, SystemTime};

use crate::store::{HeaderRecord, SourceIdentity, Store, StoredImage, Watched};
use bifs_core::image::{self, raw::RawFile, ReadAt};
use bifs_core::kdf::KdfLimits;
use bifs_core::keys::VolumeKey;
use bifs_core::luks::{Luks2Header, LuksError, LuksHeader, DATA_OFFSET};
use bifs_core::view::{encrypt, DecryptView, EncryptView, ViewError};
use bifs_k8s::{CryptoParams, Secret, SecretRef, SecretSource};

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
}

impl CatalogError {
    /// The errno a caller sees. Refused combinations are EINVAL (the path names something
    /// bifs will not make), unknown names ENOENT, a wrong passphrase EACCES, and a source
    /// that vanished or changed EIO.
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
        }
    }
}

/// Size, allocation and time of a file in the mount.
#[derive(Debug, Clone, Copy)]
pub struct FileInfo {
    pub size: u64,
    /// 512-byte blocks: what `cp --sparse=auto` uses to decide whether to look for holes.
    pub blocks: u64,
    pub mtime: SystemTime,
}

enum Cached {
    Encrypt {
        padded_len: u64,
        header: Arc<RawFile>,
        parsed: Luks2Header,
        key: VolumeKey,
    },
    Decrypt {
        identity: SourceIdentity,
        header: LuksHeader,
        key: VolumeKey,
    },
    WrongPassphrase {
        identity: SourceIdentity,
    },
}

type Slot = Arc<Mutex<Option<Cached>>>;

type SecretMap = BTreeMap<SecretRef, Arc<CryptoParams>>;

/// How often listing looks at the Secret files (keyed opens always look).
const SECRETS_RECHECK: Duration = Duration::from_secs(1);

struct Watch {
    source: SecretSource,
    checked: Instant,
}

/// Told which Secrets changed; see [`Catalog::on_secrets_changed`].
type SecretsHook = Box<dyn Fn(&BTreeSet<SecretRef>) + Send + Sync>;

pub struct Catalog {
    store: Store,
    secrets: RwLock<Arc<SecretMap>>,
    watch: Option<Mutex<Watch>>,
    limits: KdfLimits,
    keys: Mutex<HashMap<(Mode, String, SecretRef), Slot>>,
    secrets_hooks: RwLock<Vec<SecretsHook>>,
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
            store,
            secrets: RwLock::new(Arc::new(secrets)),
            watch,
            limits: KdfLimits::default(),
            keys: Mutex::new(HashMap::new()),
            secrets_hooks: RwLock::new(Vec::new()),
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

    /// Puts `map` in force and forgets the cached unlocks of the `changed` Secrets.
    fn replace_secrets(&self, map: SecretMap, changed: &BTreeSet<SecretRef>) {
        *self.secrets.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(map);
        if changed.is_empty() {
            return;
        }
        // An open that already holds a forgotten slot finishes in it; later opens get new ones.
        let mut keys = self.keys.lock().unwrap_or_else(|e| e.into_inner());
        keys.retain(|(_, _, secret), _| !changed.contains(secret));
        drop(keys);
        for secret in changed {
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
        let file = image::open_image_file(&img.path).map_err(io_err)?;
        let meta = file.metadata().map_err(io_err)?;
        let mtime = meta.modified().unwrap_or(SystemTime::UNIX_EPOCH);
        let file_blocks = meta.blocks();
        let (size, blocks) = match mode {
            Mode::Ignore => (meta.len(), file_blocks),
            Mode::Raw => (self.disk_of(img, file)?.len(), file_blocks),
            Mode::Encrypt => {
                let size = DATA_OFFSET + encrypt::padded_len(self.disk_of(img, file)?.len());
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
                (size, file_blocks.saturating_sub(DATA_OFFSET / 512))
            }
        };
        Ok(FileInfo {
            size,
            blocks: blocks.min(size.div_ceil(512)),
            mtime,
        })
    }

    /// The disk `img` holds, read through `file` (a descriptor of `img.path`).
    fn disk_of(&self, img: &StoredImage, file: fs::File) -> Result<Arc<dyn ReadAt>, CatalogError> {
        image::virtual_disk_of(file, &img.path).map_err(|e| match e {
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
    pub fn open(
        &self,
        mode: Mode,
        secret: Option<&SecretRef>,
        img: &StoredImage,
    ) -> Result<(Arc<dyn ReadAt>, SourceIdentity), CatalogError> {
        let io_err = |error| CatalogError::Io {
            image: img.name.clone(),
            error,
        };
        if secret.is_some() {
            self.secrets(true);
        }
        // The identity and every byte come from this one descriptor (see `Watched::open`).
        let (file, identity) = Watched::open(&img.path).map_err(io_err)?;
        let dup = || file.try_clone().map_err(io_err);
        let stored = || -> Result<Arc<dyn ReadAt>, CatalogError> {
            Ok(Arc::new(RawFile::from_file(dup()?).map_err(io_err)?))
        };
        let view: Arc<dyn ReadAt> = match (mode, secret) {
            (Mode::Ignore, _) => stored()?,
            (Mode::Raw, _) => self.disk_of(img, dup()?)?,
            (Mode::Encrypt, Some(secret)) => {
                self.open_encrypt(img, secret, identity, self.disk_of(img, dup()?)?)?
            }
            (Mode::Decrypt, Some(secret)) => self.open_decrypt(img, secret, identity, stored()?)?,
            (_, None) => return Err(CatalogError::NoImage(img.name.clone())),
        };
        Ok((
            Arc::new(Watched::new(view, file, img.path.clone(), identity)),
            identity,
        ))
    }

    fn slot(&self, mode: Mode, img: &StoredImage, secret: &SecretRef) -> Slot {
        let mut keys = self.keys.lock().unwrap_or_else(|e| e.into_inner());
        keys.entry((mode, img.name.clone(), secret.clone()))
            .or_default()
            .clone()
    }

    fn open_encrypt(
        &self,
        img: &StoredImage,
        secret: &SecretRef,
        identity: SourceIdentity,
        disk: Arc<dyn ReadAt>,
    ) -> Result<Arc<dyn ReadAt>, CatalogError> {
        // The slot before the Secret: a rotation in between forgets this slot, not a new one.
        let slot = self.slot(Mode::Encrypt, img, secret);
        let params = self.check_secret(secret)?;
        let padded = encrypt::padded_len(disk.len());
        let view_err = |error| CatalogError::View {
            image: img.name.clone(),
            error,
        };
        // Held while a header is loaded or made: two first opens must not make two headers.
        let mut cached = slot.lock().unwrap_or_else(|e| e.into_inner());
        let fits =
            matches!(&*cached, Some(Cached::Encrypt { padded_len, .. }) if *padded_len == padded);
        if !fits {
            *cached = Some(self.encrypt_header(img, &params, disk.len(), identity)?);
        }
        let Some(Cached::Encrypt {
            header,
            parsed,
            key,
            ..
        }) = &*cached
        else {
            return Err(view_err(ViewError::Io(io::Error::other(
                "key cache in an impossible state",
            ))));
        };
        let header: Arc<dyn ReadAt> = header.clone();
        Ok(Arc::new(
            EncryptView::with_key(disk, header, parsed, key).map_err(view_err)?,
        ))
    }

    /// The persisted header when it still fits the source and opens with the Secret, else a
    /// new one (persisted before it is served, so every reader sees the same bytes).
    fn encrypt_header(
        &self,
        img: &StoredImage,
        params: &CryptoParams,
        source_len: u64,
        identity: SourceIdentity,
    ) -> Result<Cached, CatalogError> {
        let secret = &params.secret;
        let state = self.store.state();
        let io_err = |error| CatalogError::Io {
            image: img.name.clone(),
            error,
        };
        let view_err = |error| CatalogError::View {
            image: img.name.clone(),
            error,
        };
        let padded_len = encrypt::padded_len(source_len);
        let record = HeaderRecord {
            source: identity,
            padded_len,
        };
        match state.load_header(&img.name, secret).map_err(io_err)? {
            Some((file, old)) if old.padded_len == padded_len => {
                match self.unlock_persisted(file, params) {
                    Ok((header, parsed, key)) => {
                        if old.source != identity {
                            tracing::info!(
                                image = %img.name, %secret,
                                "source changed but its size did not; reusing its persisted LUKS2 header"
                            );
                            state
                                .save_record(&img.name, secret, &record)
                                .map_err(io_err)?;
                        }
                        return Ok(Cached::Encrypt {
                            padded_len,
                            header,
                            parsed,
                            key,
                        });
                    }
                    Err(e) => {
                        if matches!(e, ViewError::Luks(LuksError::WrongPassphrase)) {
                            crate::events::unlock_failed(Mode::Encrypt.name(), &img.name);
                        }
                        tracing::warn!(
                            image = %img.name, %secret, error = %e,
                            "persisted LUKS2 header unusable; making a new one (the encrypt view's bytes change)"
                        )
                    }
                }
            }
            Some((_, old)) => tracing::info!(
                image = %img.name, %secret, old_size = old.padded_len, new_size = padded_len,
                "source size changed; making a new LUKS2 header"
            ),
            None => {
                tracing::info!(image = %img.name, %secret, "making the LUKS2 header of a new encrypt view")
            }
        }
        let (bytes, key) =
            encrypt::new_header_and_key(&params.luks, source_len, None).map_err(view_err)?;
        let file = state
            .save_header(&img.name, secret, &bytes, &record)
            .map_err(io_err)?;
        drop(bytes);
        crate::events::header_created(&img.name);
        let header = Arc::new(RawFile::from_file(file).map_err(io_err)?);
        let parsed = Luks2Header::read(&*header).map_err(|e| view_err(e.into()))?;
        Ok(Cached::Encrypt {
            padded_len,
            header,
            parsed,
            key,
        })
    }

    fn unlock_persisted(
        &self,
        file: fs::File,
        params: &CryptoParams,
    ) -> Result<(Arc<RawFile>, Luks2Header, VolumeKey), ViewError> {
        let header = Arc::new(RawFile::from_file(file)?);
        let parsed = Luks2Header::read(&*header)?;
        encrypt::check_region(header.len(), &parsed)?;
        let (key, _) = parsed.unlock(&*header, &params.luks.passphrase, &self.limits)?;
        Ok((header, parsed, key))
    }

    fn open_decrypt(
        &self,
        img: &StoredImage,
        secret: &SecretRef,
        identity: SourceIdentity,
        image: Arc<dyn ReadAt>,
    ) -> Result<Arc<dyn ReadAt>, CatalogError> {
        let slot = self.slot(Mode::Decrypt, img, secret);
        let params = self.check_secret(secret)?;
        let view_err = |error| CatalogError::View {
            image: img.name.clone(),
            error,
        };
        let wrong = || CatalogError::WrongPassphrase {
            image: img.name.clone(),
            secret: secret.clone(),
        };
        let mut cached = slot.lock().unwrap_or_else(|e| e.into_inner());
        match &*cached {
            Some(Cached::Decrypt {
                identity: id,
                header,
                key,
            }) if *id == identity => {
                return Ok(Arc::new(
                    DecryptView::with_key(image, header.clone(), key).map_err(view_err)?,
                ));
            }
            Some(Cached::WrongPassphrase { identity: id }) if *id == identity => {
                return Err(wrong())
            }
            _ => {}
        }
        let header = read_luks(img, &*image)?;
        match header.unlock(&*image, &params.luks.passphrase, &self.limits) {
            Ok(key) => {
                let view = DecryptView::with_key(image, header.clone(), &key).map_err(view_err)?;
                *cached = Some(Cached::Decrypt {
                    identity,
                    header,
                    key,
                });
                Ok(Arc::new(view))
            }
            Err(LuksError::WrongPassphrase) => {
                crate::events::unlock_failed(Mode::Decrypt.name(), &img.name);
                *cached = Some(Cached::WrongPassphrase { identity });
                Err(wrong())
            }
            Err(e) => Err(view_err(e.into())),
        }
    }
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
