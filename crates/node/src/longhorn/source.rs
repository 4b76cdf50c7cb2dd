//! Where a backing image's bytes come from: a download (http, https, file), a local upload,
//! or a clone of another backing image through a view (as-is, encrypt, decrypt, rekey). Each
//! is one pass of the copier into an open file; nothing else is written.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use crate::copier::{copy_stream, copy_view, Copied, CopyError, CopyOptions, ProgressFn};
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

/// Runs `plan`, writing into `file` (at `path`, for messages).
pub fn produce(
    plan: &Plan,
    file: &File,
    path: PathBuf,
    opts: &CopyOptions,
    progress: Option<ProgressFn<'_>>,
) -> Result<Copied, SourceError> {
    match plan {
        Plan::Download { url } => download(url, file, path, opts, progress),
        Plan::Upload { path: src } => {
            let view = open_raw(src, PARAM_PATH)?;
            Ok(copy_view(&*view, file, path, opts, progress)?)
        }
        Plan::Copy { source } => {
            let view = open_raw(source, PARAM_BACKING_IMAGE)?;
            Ok(copy_view(&*view, file, path, opts, progress)?)
        }
        Plan::Encrypt { source, params } => {
            // The source's raw disk: a qcow2 is read through its reader, never expanded into
            // a temporary raw file.
            let disk = image::open_virtual_disk(source)
                .map_err(|e| field(PARAM_BACKING_IMAGE, e.to_string()))?;
            let view = EncryptView::create(disk, &params.luks, None).map_err(|e| {
                field(
                    PARAM_SECRET,
                    format!("encrypting with Secret {}: {e}", params.secret),
                )
            })?;
            Ok(copy_view(&view, file, path, opts, progress)?)
        }
        Plan::Decrypt { source, params } => {
            let raw = open_raw(source, PARAM_BACKING_IMAGE)?;
            let view = DecryptView::open(raw, &params.luks.passphrase, &KdfLimits::default())
                .map_err(|e| match e {
                    ViewError::NotEncrypted => field(PARAM_BACKING_IMAGE, e.to_string()),
                    e => field(
                        PARAM_SECRET,
                        format!("Secret {} does not open the source: {e}", params.secret),
                    ),
                })?;
            Ok(copy_view(&view, file, path, opts, progress)?)
        }
        Plan::Rekey { source, old, new } => {
            let raw = open_raw(source, PARAM_BACKING_IMAGE)?;
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
            Ok(copy_view(&view, file, path, opts, progress)?)
        }
    }
}

fn download(
    url: &str,
    file: &File,
    path: PathBuf,
    opts: &CopyOptions,
    progress: Option<ProgressFn<'_>>,
) -> Result<Copied, SourceError> {
    if let Some(local) = file_url_path(url) {
        let view = open_raw(&local, PARAM_URL)?;
        return Ok(copy_view(&*view, file, path, opts, progress)?);
    }
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_connect(Some(Duration::from_secs(30)))
        // A stalled server must not hang an apply forever; a slow one may take its time.
        .timeout_recv_response(Some(Duration::from_secs(60)))
        .build()
        .into();
    let mut response = agent
        .get(url)
        .call()
        .map_err(|e| field(PARAM_URL, format!("GET {url}: {e}")))?;
    let total = response.body().content_length();
    let mut reader = response.body_mut().as_reader();
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
pub fn virtual_size(path: &Path, file_size: u64) -> u64 {
    match image::detect(path) {
        Ok(image::Format::Qcow2) => image::qcow2::Qcow2Image::open(path)
            .map(|q| q.len())
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
