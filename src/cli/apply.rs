//! `bifs apply`, `bifs get`, `bifs delete` (the Longhorn workflow on a store) and `bifs rekey`
//! (one file). Argument handling and printing only; the work is in [`bifs_node::longhorn`].

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use zeroize::Zeroizing;

use super::copy::{check_destination, materialize, CopyOptions};
use super::table::{self, Columns, Table};
use bifs_core::image::raw::RawFile;
use bifs_core::io::ReadAt;
use bifs_core::view::RekeyView;
use bifs_k8s::manifest::{manifest_files, parse_backing_images, BackingImage};
use bifs_k8s::{Secret, SecretRef};
use bifs_node::longhorn::{self, status, Outcome};
use bifs_node::store::{Layout, Store};

const RESOURCE: &str = "backingimage.longhorn.io";

/// Output formats of `bifs get` (kubectl's meanings).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Output {
    /// BackingImage objects with their status (one object for one NAME, else a `kind: List`);
    /// `bifs apply -f` reads it back.
    Yaml,
    /// As yaml, in JSON.
    Json,
    /// The table with more columns: UUID, SOURCE, CHECKSUM (prefix), AGE.
    Wide,
    /// `backingimage.longhorn.io/NAME` lines.
    Name,
}

/// How `-f -` is shown in messages.
const STDIN: &str = "<stdin>";

pub fn apply(files: &[PathBuf], store: &Path, secrets: &[PathBuf]) -> anyhow::Result<()> {
    let mut images: Vec<BackingImage> = Vec::new();
    let mut known: Vec<Secret> = Vec::new();
    let mut stdin_read = false;
    for arg in files {
        let texts: Vec<(PathBuf, Zeroizing<String>)> = if arg.as_os_str() == "-" {
            if std::mem::replace(&mut stdin_read, true) {
                bail!("-f - is given twice (standard input can be read once)");
            }
            let mut text = Zeroizing::new(String::new());
            std::io::stdin()
                .read_to_string(&mut text)
                .context("reading manifests from standard input")?;
            vec![(PathBuf::from(STDIN), text)]
        } else {
            let mut v = Vec::new();
            for file in manifest_files(arg)? {
                // The files may hold Secrets: their text is wiped when dropped.
                let text = Zeroizing::new(
                    std::fs::read_to_string(&file)
                        .with_context(|| format!("reading {}", file.display()))?,
                );
                v.push((file, text));
            }
            v
        };
        for (file, text) in texts {
            images.extend(parse_backing_images(&text, &file)?);
            let found = bifs_k8s::secret::parse_secrets(&text, &file)?;
            for s in &found {
                s.warn_unknown_keys();
            }
            known.extend(found);
        }
    }
    for path in secrets {
        known.extend(bifs_k8s::load_secrets(path)?);
    }
    if images.is_empty() {
        bail!("no BackingImage manifest found in {}", display_list(files));
    }
    let store_dir = store;
    let store = Store::open_disk(store)?;
    let reports = longhorn::apply(&store, images, &longhorn::Secrets(&known));
    let (mut refused, mut failed) = (0, 0);
    for r in &reports {
        if let Some(from) = &r.renamed_from {
            eprintln!(
                "bifs: backing image name {from:?} auto-corrected to {:?} (as Longhorn's webhook does)",
                r.name
            );
        }
        match &r.outcome {
            Outcome::Created => super::outln!("{RESOURCE}/{} created", r.name)?,
            Outcome::Unchanged => super::outln!("{RESOURCE}/{} unchanged", r.name)?,
            Outcome::Failed(m) => {
                failed += 1;
                eprintln!("bifs: {RESOURCE}/{} failed: {m}", r.name);
            }
            Outcome::Refused(m) => {
                refused += 1;
                eprintln!("bifs: {RESOURCE}/{} refused: {m}", r.name);
            }
            Outcome::Conflict(m) => {
                refused += 1;
                eprintln!(
                    "bifs: {RESOURCE}/{} refused: {m}; the existing image is left as it is",
                    r.name
                );
            }
        }
    }
    if bifs_node::signals::stop_flag().load(std::sync::atomic::Ordering::Relaxed) {
        return Err(bifs_node::signals::Interrupted.into());
    }
    if refused + failed > 0 {
        bail!("{}", not_applied(refused, failed, reports.len(), store_dir));
    }
    Ok(())
}

/// The closing line of an apply that did not make everything. Refusals are not recorded (a
/// webhook refusal leaves no object), so only failures point to `bifs get`.
fn not_applied(refused: usize, failed: usize, total: usize, store: &Path) -> String {
    let mut parts = Vec::new();
    if refused > 0 {
        parts.push(format!(
            "{refused} refused (the reasons are above; nothing was recorded, as Longhorn's webhook leaves no object)"
        ));
    }
    if failed > 0 {
        parts.push(format!(
            "{failed} failed (the reasons are above; recorded as failed: `bifs get --store {}` shows them, a corrected apply replaces them)",
            store.display()
        ));
    }
    format!(
        "{} of {total} backing images not applied: {}",
        refused + failed,
        parts.join("; ")
    )
}

fn display_list(paths: &[PathBuf]) -> String {
    paths
        .iter()
        .map(|p| {
            if p.as_os_str() == "-" {
                STDIN.to_string()
            } else {
                p.display().to_string()
            }
        })
        .collect::<Vec<_>>()
        .join(", ")
}

pub fn get(
    store: &Path,
    names: &[String],
    output: Option<Output>,
    watch: bool,
) -> anyhow::Result<()> {
    let store = Store::open_read_only(store)?;
    if store.layout() == Layout::Flat && status::list(&store, None)?.is_empty() {
        return get_flat(&store, names, output, watch);
    }
    let (images, missing) = lookup(&store, names)?;
    if watch {
        // As kubectl: a name that does not exist is an error, not something to wait for.
        if let Some(m) = missing.first() {
            return Err(not_found(&store, m));
        }
        return watch_loop(&store, names, output);
    }
    let single = names.len() == 1;
    let objects = matches!(output, Some(Output::Yaml | Output::Json));
    // As kubectl: an empty store is an empty List in yaml/json, a line on stderr otherwise;
    // names that are all missing print nothing but their errors.
    if !images.is_empty() || (names.is_empty() && objects) {
        print_images(&images, single && missing.is_empty(), output)?;
    } else if names.is_empty() {
        eprintln!("No backing images in {}.", store.root().display());
    }
    match missing.as_slice() {
        [] => Ok(()),
        [one] => Err(not_found(&store, one)),
        many => {
            for m in &many[..many.len() - 1] {
                eprintln!("bifs: error: {}", not_found(&store, m));
            }
            Err(not_found(&store, &many[many.len() - 1]))
        }
    }
}

fn not_found(store: &Store, name: &str) -> anyhow::Error {
    status::StatusError::NotFound {
        name: name.into(),
        store: store.root().display().to_string(),
    }
    .into()
}

/// The images named (all when none is), in the order named, and the names not found.
fn lookup(store: &Store, names: &[String]) -> anyhow::Result<(Vec<BackingImage>, Vec<String>)> {
    if names.is_empty() {
        return Ok((status::list(store, None)?, Vec::new()));
    }
    let (mut found, mut missing) = (Vec::new(), Vec::new());
    for n in names {
        if found.iter().any(|b: &BackingImage| b.name() == n) {
            continue;
        }
        match status::list(store, Some(n))?.pop() {
            Some(b) => found.push(b),
            None => missing.push(n.clone()),
        }
    }
    Ok((found, missing))
}

fn print_images(
    images: &[BackingImage],
    single: bool,
    output: Option<Output>,
) -> anyhow::Result<()> {
    let now = jiff::Timestamp::now();
    match output {
        Some(Output::Yaml) => super::out!("{}", status::to_yaml(images, single)?)?,
        Some(Output::Json) => super::outln!("{}", status::to_json(images, single)?)?,
        Some(Output::Name) => {
            for b in images {
                super::outln!("{RESOURCE}/{}", b.name())?;
            }
        }
        None | Some(Output::Wide) => {
            let columns = columns(output);
            if !images.is_empty() {
                let table = columns.table(images, now);
                super::out!(
                    "{}",
                    table.render(columns.header(), &columns.rows(images, now))
                )?;
            }
        }
    }
    Ok(())
}

fn columns(output: Option<Output>) -> Columns {
    if output == Some(Output::Wide) {
        Columns::Wide
    } else {
        Columns::Default
    }
}

/// Prints the images whose status changes, until every one watched (the named ones, else
/// all) is ready or failed. Tables keep their columns from the first rows on.
fn watch_loop(store: &Store, names: &[String], output: Option<Output>) -> anyhow::Result<()> {
    let columns = columns(output);
    let mut table: Option<Table> = None;
    let mut settled: BTreeMap<String, bool> = BTreeMap::new();
    let wanted = |b: &BackingImage| names.is_empty() || names.iter().any(|n| n == b.name());
    let mut out = std::io::stdout();
    status::watch(store, None, Duration::from_millis(300), false, |changed| {
        let changed: Vec<BackingImage> = changed.iter().filter(|b| wanted(b)).cloned().collect();
        if changed.is_empty() {
            return true;
        }
        let now = jiff::Timestamp::now();
        let text = match output {
            Some(Output::Yaml) => changed
                .iter()
                .map(|b| {
                    status::to_yaml(std::slice::from_ref(b), true).map(|y| format!("---\n{y}"))
                })
                .collect::<Result<String, _>>()
                .unwrap_or_default(),
            Some(Output::Json) => changed
                .iter()
                .map(|b| status::to_json(std::slice::from_ref(b), true).map(|j| j + "\n"))
                .collect::<Result<String, _>>()
                .unwrap_or_default(),
            Some(Output::Name) => changed
                .iter()
                .map(|b| format!("{RESOURCE}/{}\n", b.name()))
                .collect(),
            None | Some(Output::Wide) => {
                let rows = columns.rows(&changed, now);
                let mut text = String::new();
                let t = table.get_or_insert_with(|| {
                    let t = columns.table(&changed, now);
                    text.push_str(&t.line(columns.header()));
                    t
                });
                t.fit(&rows);
                for r in &rows {
                    text.push_str(&t.line(r));
                }
                text
            }
        };
        let _ = out.write_all(text.as_bytes());
        let _ = out.flush();
        for b in &changed {
            let done = b.status.as_ref().is_some_and(|s| s.state().is_settled());
            settled.insert(b.name().to_string(), done);
        }
        let all_seen = names.iter().all(|n| settled.contains_key(n));
        // Keep going while anything watched is unsettled.
        !(all_seen && !settled.is_empty() && settled.values().all(|&d| d))
    })?;
    Ok(())
}

/// `get` on a flat store: its image files, as `bifs mount` shows them. Flat images have no
/// BackingImage record (apply writes into a Longhorn disk layout), so there is no status to
/// give but their being there.
fn get_flat(
    store: &Store,
    names: &[String],
    output: Option<Output>,
    watch: bool,
) -> anyhow::Result<()> {
    let root = store.root().display().to_string();
    if watch || matches!(output, Some(Output::Yaml | Output::Json | Output::Name)) {
        bail!(
            "{root} is a flat store (image files directly in it): it holds no BackingImage objects to {}; `bifs get --store {root}` lists its images",
            if watch { "watch" } else { "print" }
        );
    }
    let mut images = store.list().with_context(|| format!("listing {root}"))?;
    let mut missing = Vec::new();
    if !names.is_empty() {
        missing = names
            .iter()
            .filter(|n| !images.iter().any(|i| &i.name == *n))
            .cloned()
            .collect();
        images.retain(|i| names.contains(&i.name));
    }
    if images.is_empty() && names.is_empty() {
        eprintln!("No backing images and no image files in {root}.");
        return Ok(());
    }
    eprintln!(
        "{root} is a flat store: these are the image files `bifs mount` serves (ready as they are; no BackingImage records, which only a Longhorn disk layout has)."
    );
    let wide = output == Some(Output::Wide);
    let mut header = vec!["NAME", "STATE", "FORMAT", "SIZE", "VIRTUAL-SIZE"];
    if wide {
        header.push("PATH");
    }
    let rows: Vec<Vec<String>> = images
        .iter()
        .map(|i| {
            let size = std::fs::metadata(&i.path).map(|m| m.len()).unwrap_or(0);
            let mut row = vec![
                i.name.clone(),
                "ready".to_string(),
                i.format.to_string(),
                table::size(size),
                table::size(bifs_node::longhorn::source::virtual_size(&i.path, size)),
            ];
            if wide {
                row.push(i.path.display().to_string());
            }
            row
        })
        .collect();
    if !rows.is_empty() {
        super::out!("{}", Table::new(&header, &[]).render(&header, &rows))?;
    }
    match missing.first() {
        None => Ok(()),
        Some(m) => bail!("image {m} not found in the flat store {root}"),
    }
}

pub fn delete(store: &Path, name: &str) -> anyhow::Result<()> {
    let store = Store::open_disk(store)?;
    status::delete(&store, name)?;
    super::outln!("{RESOURCE}/{name} deleted")?;
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
    let key = std::time::Instant::now();
    let view = RekeyView::create(src, &old.luks.passphrase, &new.luks).with_context(|| {
        format!(
            "rekeying {} from Secret {} to Secret {}",
            a.src.display(),
            old.secret,
            new.secret
        )
    })?;
    let key = key.elapsed();
    let (offset, len) = view.source_segment();
    tracing::info!(source = %a.src.display(), data_offset = offset, data_bytes = len, new_secret = %new.secret, "new header around the same volume key; data copied unchanged");
    let opts = CopyOptions {
        force: a.force,
        label: "rekey".into(),
        sha512: a.sha512,
    };
    let copy = std::time::Instant::now();
    super::crypt::print_sha512(&materialize(&view, a.dst, &opts)?, a.dst)?;
    super::crypt::log_done(key, copy.elapsed());
    Ok(())
}
