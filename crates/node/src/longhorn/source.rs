//! Where a backing image's bytes come from: a download (http, https, file), a local upload,
//! or a clone of another backing image through a view (as-is, encrypt, decrypt, rekey). Each
//! is one pass of the copier into an open file; nothing else is written.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::download::DownloadPolicy;
use crate::copier::{copy_stream, copy_view, Copied, CopyError, CopyOptions, ProgressFn};
use crate::store::Store;
use bifs_core::image::{self, raw::RawFile, ReadAt};
use bifs_core::kdf::KdfLimits;
use bifs_core::view::{DecryptView, EncryptView, RekeyError, RekeyView, ViewError};
use bifs_k8s::CryptoParams;

use bifs_k8s::manifest::{FieldError, PARAM_BACKING_IMAGE, PARAM_PATH, PARAM_SECRET, PARAM_URL};

/// What to copy, resolved against the store and the Secrets.
pub enum Plan {
    Download {
        url: String,
    },
    Upload {
        path: PathBuf,
    },
    /// An `ignore` clone: the source's bytes as they are.
    Copy {
        source: PathBuf,
    },
    Encrypt {
        source: PathBuf,
        params: CryptoParams,
    },
    Decrypt {
        source: PathBuf,
        params: CryptoParams,
    },
    Rekey {
        source: PathBuf,
        old: CryptoParams,
        new: CryptoParams,
    },
}

#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error("{0}")]
    Field(FieldError),
    #[error(transparent)]
    Copy(#[from] CopyError),
}

impl SourceError {
    pub fn is_interrupted(&self) -> bool {
        matches!(self, SourceError::Copy(CopyError::Interrupted(_)))
    }
}

fn field(field: &str, message: impl Into<String>) -> SourceError {
    SourceError::Field(FieldError::param(field, message))
}

fn open_raw(path: &Path, what: &str) -> Result<Arc<dyn ReadAt>, SourceError> {
    match RawFile::open(path) {
        Ok(f) => Ok(Arc::new(f)),
        Err(e) => Err(field(what, format!("opening {}: {e}", path.display()))),
    }
}

impl Plan {
    /// Whether the plan derives a key before its first byte (encrypt, decrypt, rekey: seconds
    /// of Argon2 with a Secret's default cost).
    pub fn needs_key(&self) -> bool {
        matches!(
            self,
            Plan::Encrypt { .. } | Plan::Decrypt { .. } | Plan::Rekey { .. }
        )
    }
}

/// A backing image of the store, opened beneath its root (a `backing` that is a symlink out
/// of the store is refused). Messages name the image's file name, not the server's path.
fn open_stored(store: &Store, path: &Path) -> Result<Arc<dyn ReadAt>, SourceError> {
    match store.open_image(path).and_then(RawFile::from_file) {
        Ok(f) => Ok(Arc::new(f)),
        Err(e) => Err(field(
            PARAM_BACKING_IMAGE,
            format!("opening the source image: {e}"),
        )),
    }
}

/// Runs `plan`, writing into `out`. Clone sources are opened
/// beneath `store`'s root; downloads follow `downloads`. `copying` is called once the key is
/// ready (at once for a plan without one), as the copy begins.
/// Where a plan writes: the open file and its path (for messages).
pub struct Output<'a> {
    pub file: &'a File,
    pub path: PathBuf,
}

pub fn produce(
    store: &Store,
    plan: &Plan,
    downloads: &DownloadPolicy,
    out: Output<'_>,
    opts: &CopyOptions,
    copying: &mut dyn FnMut(),
    progress: Option<ProgressFn<'_>>,
) -> Result<Copied, SourceError> {
    let Output { file, path } = out;
    match plan {
        Plan::Download { url } => {
            copying();
            download(store, url, downloads, file, path, opts, progress)
        }
        Plan::Upload { path: src } => {
            let view = open_raw(src, PARAM_PATH)?;
            copying();
            Ok(copy_view(&*view, file, path, opts, progress)?)
        }
        Plan::Copy { source } => {
            let view = open_stored(store, source)?;
            copying();
            Ok(copy_view(&*view, file, path, opts, progress)?)
        }
        Plan::Encrypt { source, params } => {
            // The source's raw disk: a qcow2 is read through its reader, never expanded into
            // a temporary raw file; its backing files too are opened beneath the store.
            let opener = |p: &Path| store.open_image(p);
            let disk = store
                .open_image(source)
                .map_err(|e| image::OpenError::Io {
                    path: source.clone(),
                    error: e,
                })
                .and_then(|f| image::virtual_disk_with(f, source, &opener))
                .map_err(|e| field(PARAM_BACKING_IMAGE, e.to_string()))?;
            let view = EncryptView::create(disk, &params.luks, None).map_err(|e| {
                field(
                    PARAM_SECRET,
                    format!("encrypting with Secret {}: {e}", params.secret),
                )
            })?;
            copying();
            Ok(copy_view(&view, file, path, opts, progress)?)
        }
        Plan::Decrypt { source, params } => {
            let raw = open_stored(store, source)?;
            let view = DecryptView::open(raw, &params.luks.passphrase, &KdfLimits::default())
                .map_err(|e| match e {
                    ViewError::NotEncrypted => field(PARAM_BACKING_IMAGE, e.to_string()),
                    e => field(
                        PARAM_SECRET,
                        format!("Secret {} does not open the source: {e}", params.secret),
                    ),
                })?;
            copying();
            Ok(copy_view(&view, file, path, opts, progress)?)
        }
        Plan::Rekey { source, old, new } => {
            let raw = open_stored(store, source)?;
            let view =
                RekeyView::create(raw, &old.luks.passphrase, &new.luks).map_err(|e| match e {
                    RekeyError::Unlock(e) => field(
                        PARAM_BACKING_IMAGE,
                        format!("the source's Secret {} does not open it: {e}", old.secret),
                    ),
                    RekeyError::Kdf(e) => {
                        field(PARAM_SECRET, format!("Secret {}: {e}", new.secret))
                    }
                    e => field(PARAM_BACKING_IMAGE, e.to_string()),
                })?;
            copying();
            Ok(copy_view(&view, file, path, opts, progress)?)
        }
    }
}

fn download(
    store: &Store,
    url: &str,
    policy: &DownloadPolicy,
    file: &File,
    path: PathBuf,
    opts: &CopyOptions,
    progress: Option<ProgressFn<'_>>,
) -> Result<Copied, SourceError> {
    if let Some(local) = file_url_path(url) {
        if !policy.local {
            // Admission refuses it already; this is the second lock on the door.
            return Err(field(
                PARAM_URL,
                "file:// URLs are for bifs apply on the node",
            ));
        }
        let view = open_raw(&local, PARAM_URL)?;
        return Ok(copy_view(&*view, file, path, opts, progress)?);
    }
    policy.check_url(url).map_err(|e| field(PARAM_URL, e))?;
    // The most the download may bring: the flag, and never more than the store has free.
    let free = store.free_bytes().ok();
    let limit = match (policy.max_bytes, free) {
        (Some(m), Some(f)) => m.min(f),
        (Some(m), None) => m,
        (None, Some(f)) => f,
        (None, None) => u64::MAX,
    };
    let mut response = policy
        .agent()
        .get(url)
        .call()
        .map_err(|e| field(PARAM_URL, format!("GET {url}: {e}")))?;
    let total = response.body().content_length();
    if let Some(t) = total.filter(|&t| t > limit) {
        return Err(field(
            PARAM_URL,
            format!(
                "GET {url}: the download is {t} bytes, more than the {limit} allowed \
                 (--max-download-size, or the store's free space)"
            ),
        ));
    }
    let mut reader = response.body_mut().with_config().limit(limit).reader();
    match copy_stream(&mut reader, total, file, path, opts, progress) {
        Err(CopyError::Read { offset, source }) => Err(field(
            PARAM_URL,
            format!("GET {url}: the download broke off after {offset} bytes: {source}"),
        )),
        other => Ok(other?),
    }
}

/// The local path of a `file://` URL (`file:///abs/path`, `file://localhost/abs/path`),
/// percent-decoded; `None` for other schemes.
pub fn file_url_path(url: &str) -> Option<PathBuf> {
    let (scheme, rest) = url.split_once("://")?;
    if !scheme.eq_ignore_ascii_case("file") {
        return None;
    }
    let rest = rest.strip_prefix("localhost").unwrap_or(rest);
    let bytes = rest.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            let hexval = |c: u8| (c as char).to_digit(16);
            if let (Some(h), Some(l)) = (hexval(bytes[i + 1]), hexval(bytes[i + 2])) {
                out.push((h * 16 + l) as u8);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    use std::os::unix::ffi::OsStringExt;
    Some(PathBuf::from(std::ffi::OsString::from_vec(out)))
}

/// The size of the disk an image file holds, as backing-image-manager gets it from `qemu-img
/// info` (format probed): a qcow2's virtual size; a LUKS1 image's payload (qemu probes LUKS1
/// as its `luks` format and reports the data after the header); else the file size (qemu has
/// no LUKS2 driver: a LUKS2 image probes as raw).
/// A qcow2's size is read from its header: its backing files are not opened here (their names
/// are hostile input, and only the store's confined opener may follow them).
pub fn virtual_size(path: &Path, file_size: u64) -> u64 {
    match image::detect(path) {
        Ok(image::Format::Qcow2) => image::open_image_file(path)
            .ok()
            .and_then(|f| image::qcow2::declared_size(&f).ok())
            .unwrap_or(file_size),
        Ok(image::Format::Luks1) => RawFile::open(path)
            .ok()
            .and_then(|f| bifs_core::luks::Luks1Header::read(&f).ok())
            .map(|h| file_size.saturating_sub(h.segment().offset))
            .unwrap_or(file_size),
        _ => file_size,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_urls() {
        assert_eq!(
            file_url_path("file:///tmp/a%20b.raw"),
            Some(PathBuf::from("/tmp/a b.raw"))
        );
        assert_eq!(
            file_url_path("FILE://localhost/x"),
            Some(PathBuf::from("/x"))
        );
        assert_eq!(file_url_path("http://h/x"), None);
        assert_eq!(
            file_url_path("file:///bad%zz"),
            Some(PathBuf::from("/bad%zz"))
        );
    }
}
