//! `bifs encrypt` and `bifs decrypt`: a view materialized into a file.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;

use super::copy::{check_destination, materialize, CopyOptions};
use super::SecretArgs;
use bifs_core::image::{self, Format, ReadAt};
use bifs_core::kdf::KdfLimits;
use bifs_core::view::{encrypt, DecryptView, EncryptView, ViewError};
use bifs_k8s::{CryptoParams, SecretRef};

/// Loads the Secret the arguments name and validates its CRYPTO_* keys.
pub fn load_params(args: &SecretArgs) -> anyhow::Result<CryptoParams> {
    let secrets = bifs_k8s::load_secrets(&args.secret)?;
    let wanted = args
        .secret_name
        .as_deref()
        .map(|s| SecretRef::parse(s, "default"));
    let secret = bifs_k8s::secret::select(secrets, wanted.as_ref())?;
    Ok(secret.crypto_params()?)
}

/// Opens `path` as its raw virtual disk (qcow2 flattened), with its detected format.
pub fn open_disk(path: &Path) -> anyhow::Result<(Format, Arc<dyn ReadAt>)> {
    let format = image::detect(path).with_context(|| format!("opening {}", path.display()))?;
    Ok((format, image::open_virtual_disk(path)?))
}

pub fn encrypt(
    args: &SecretArgs,
    sector_size: Option<usize>,
    force: bool,
    sha512: bool,
    src: &Path,
    dst: &Path,
) -> anyhow::Result<()> {
    let params = load_params(args)?;
    let (format, disk) = open_disk(src)?;
    if format.is_luks() {
        let e = ViewError::AlreadyEncrypted(if format == Format::Luks1 {
            "LUKS1"
        } else {
            "LUKS2"
        });
        return Err(anyhow::Error::new(e).context(format!("{}", src.display())));
    }
    check_destination(dst, force)?;
    let len = disk.len();
    if len % 512 != 0 {
        tracing::warn!(
            source = %src.display(),
            size = len,
            padded = encrypt::padded_len(len),
            "source size is not a multiple of 512 bytes; padding the data segment with zeros"
        );
    }
    tracing::info!(
        source = %src.display(), format = %format, secret = %params.secret,
        key_bits = params.luks.key_bits, hash = params.luks.hash.name(), "formatting LUKS2 header"
    );
    let key = Instant::now();
    let view = EncryptView::create(disk, &params.luks, sector_size)
        .with_context(|| format!("encrypting {} with Secret {}", src.display(), params.secret))?;
    let key = key.elapsed();
    let opts = CopyOptions {
        force,
        label: "encrypt".into(),
        sha512,
    };
    let copy = Instant::now();
    print_sha512(&materialize(&view, dst, &opts)?, dst)?;
    log_done(key, copy.elapsed());
    Ok(())
}

/// The command's times: the key (benchmark and derivation, or unlock) apart from the copy,
/// which is often the smaller part.
pub(super) fn log_done(key: Duration, copy: Duration) {
    let s = |d: Duration| format!("{:.2}", d.as_secs_f64());
    tracing::info!(
        key_seconds = s(key),
        copy_seconds = s(copy),
        seconds = s(key + copy),
        "done"
    );
}

/// `--sha512`: the digest in `sha512sum`'s format, on stdout.
pub(super) fn print_sha512(copied: &bifs_node::copier::Copied, dst: &Path) -> anyhow::Result<()> {
    match &copied.sha512 {
        Some(sum) => super::outln!("{sum}  {}", dst.display()),
        None => Ok(()),
    }
}

pub fn decrypt(
    args: &SecretArgs,
    force: bool,
    sha512: bool,
    src: &Path,
    dst: &Path,
) -> anyhow::Result<()> {
    let params = load_params(args)?;
    let image: Arc<dyn ReadAt> = Arc::new(
        image::raw::RawFile::open(src).with_context(|| format!("opening {}", src.display()))?,
    );
    check_destination(dst, force)?;
    let key = Instant::now();
    let view = DecryptView::open(image, &params.luks.passphrase, &KdfLimits::default())
        .with_context(|| format!("decrypting {} with Secret {}", src.display(), params.secret))?;
    let key = key.elapsed();
    let opts = CopyOptions {
        force,
        label: "decrypt".into(),
        sha512,
    };
    let copy = Instant::now();
    print_sha512(&materialize(&view, dst, &opts)?, dst)?;
    log_done(key, copy.elapsed());
    Ok(())
}
