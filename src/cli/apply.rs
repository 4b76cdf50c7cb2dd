//! `bifs apply`, `bifs get`, `bifs delete` (the Longhorn workflow on a store) and `bifs rekey`
//! (one file). Argument handling and printing only; the work is in [`bifs_node::longhorn`].

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use zeroize::Zeroizing;

use super::copy::{check_destination, materialize, CopyOptions};
use bifs_core::image::raw::RawFile;
use bifs_core::io::ReadAt;
use bifs_core::view::RekeyView;
use bifs_k8s::manifest::{manifest_files, parse_backing_images, BackingImage};
use bifs_k8s::{Secret, SecretRef};
use bifs_node::longhorn::{self, status, Outcome};
use bifs_node::store::Store;

const RESOURCE: &str = "backingimage.longhorn.io";

/// Output formats of `bifs get`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Output {
    Yaml,
    Json,
}

pub fn apply(files: &[PathBuf], store: &Path, secrets: &[PathBuf]) -> anyhow::Result<()> {
    let mut images: Vec<BackingImage> = Vec::new();
    let mut known: Vec<Secret> = Vec::new();
    for arg in files {
        for file in manifest_files(arg)? {
            // The files may hold Secrets: their text is wiped when dropped.
            let text = Zeroizing::new(
                std::fs::read_to_string(&file)
                    .with_context(|| format!("reading {}", file.display()))?,
            );
            images.extend(parse_backing_images(&text, &file)?);
            known.extend(bifs_k8s::secret::parse_secrets(&text, &file)?);
        }
    }
    for path in secrets {
        known.extend(bifs_k8s::load_secrets(path)?);
    }
    if images.is_empty() {
        bail!("no BackingImage manifest found in {}", display_list(files));
    }
    let store = Store::open_disk(store)?;
    let reports = longhorn::apply(&store, images, &longhorn::Secrets(&known));
    let mut failed = 0;
    for r in &reports {
        if let Some(from) = &r.renamed_from {
            eprintln!(
                "bifs: backing image name {from:?} auto-corrected to {:?} (as Longhorn's webhook does)",
                r.name
            );
        }
        match &r.outcome {
            Outcome::Created => println!("{RESOURCE}/{} created", r.name),
            Outcome::Unchanged => println!("{RESOURCE}/{} unchanged", r.name),
            Outcome::Failed(m) => {
                failed += 1;
                eprintln!("bifs: {RESOURCE}/{} failed: {m}", r.name);
            }
            Outcome::Refused(m) => {
                failed += 1;
                eprintln!("bifs: {RESOURCE}/{} refused: {m}", r.name);
            }
            Outcome::Conflict(m) => {
                failed += 1;
                eprintln!("bifs: {RESOURCE}/{} refused: {m}", r.name);
            }
        }
    }
    if bifs_node::signals::stop_flag().load(std::sync::atomic::Ordering::Relaxed) {
        return Err(bifs_node::signals::Interrupted.into());
    }
    if failed > 0 {
        bail!(
            "{failed} of {} backing images failed (see `bifs get`)",
            reports.len()
        );
    }
    Ok(())
}

fn display_list(paths: &[PathBuf]) -> String {
    paths
        .iter()
        .map(|p| p.display().to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

pub fn get(
    store: &Path,
    name: Option<&str>,
    output: Option<Output>,
    watch: bool,
) -> anyhow::Result<()> {
    let store = Store::open_read_only(store)?;
    if watch {
        return watch_loop(&store, name);
    }
    let images = match name {
        Some(n) => vec![status::get(&store, n)?],
        None => status::list(&store, None)?,
    };
    match output {
        Some(Output::Yaml) => print!("{}", status::to_yaml(&images, name.is_some())?),
        Some(Output::Json) => println!("{}", status::to_json(&images, name.is_some())?),
        None if images.is_empty() => eprintln!("No backing images in {}.", store.root().display()),
        None => print!("{}", status::table(&images, true)),
    }
    Ok(())
}

/// Prints a row whenever an image's state, progress or message changes; returns once every
/// watched image is ready or failed (the named one, or all of them).
fn watch_loop(store: &Store, name: Option<&str>) -> anyhow::Result<()> {
    let mut header = true;
    status::watch(store, name, Duration::from_millis(300), true, |changed| {
        print!("{}", status::table(changed, header));
        header = false;
        true
    })?;
    Ok(())
}

pub fn delete(store: &Path, name: &str) -> anyhow::Result<()> {
    let store = Store::open_disk(store)?;
    status::delete(&store, name)?;
    println!("{RESOURCE}/{name} deleted");
    Ok(())
}

/// One Secret from a manifest file or directory (`NAMESPACE/NAME` picks among several).
fn load_one(path: &Path, which: Option<&str>) -> anyhow::Result<bifs_k8s::CryptoParams> {
    let secrets = bifs_k8s::load_secrets(path)?;
    let wanted = which.map(|s| SecretRef::parse(s, "default"));
    let secret = bifs_k8s::secret::select(secrets, wanted.as_ref())?;
    Ok(secret.crypto_params()?)
}

pub struct RekeyArgs<'a> {
    pub secret: &'a Path,
    pub secret_name: Option<&'a str>,
    pub new_secret: &'a Path,
    pub new_secret_name: Option<&'a str>,
    pub force: bool,
    pub sha512: bool,
    pub src: &'a Path,
    pub dst: &'a Path,
}

pub fn rekey(a: &RekeyArgs<'_>) -> anyhow::Result<()> {
    let old = load_one(a.secret, a.secret_name).context("--secret")?;
    let new = load_one(a.new_secret, a.new_secret_name).context("--new-secret")?;
    check_destination(a.dst, a.force)?;
    let src: Arc<dyn ReadAt> =
        Arc::new(RawFile::open(a.src).with_context(|| format!("opening {}", a.src.display()))?);
    let view = RekeyView::create(src, &old.luks.passphrase, &new.luks).with_context(|| {
        format!(
            "rekeying {} from Secret {} to Secret {}",
            a.src.display(),
            old.secret,
            new.secret
        )
    })?;
    let (offset, len) = view.source_segment();
    tracing::info!(source = %a.src.display(), data_offset = offset, data_bytes = len, new_secret = %new.secret, "new header around the same volume key; data copied unchanged");
    let opts = CopyOptions {
        force: a.force,
        label: "rekey".into(),
        sha512: a.sha512,
    };
    super::crypt::print_sha512(&materialize(&view, a.dst, &opts)?, a.dst);
    Ok(())
}
