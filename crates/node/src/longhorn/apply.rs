//! The apply engine: BackingImage manifests in, ready backing images (or failed records that
//! say why) out.
//!
//! Per image, in steps: the name auto-corrected and the manifest checks ([`BackingImage::validate`]);
//! the existing record compared (`existing`); under the image's exclusive lock, admission:
//! the checks and mutations Longhorn's webhook makes against other objects (`admit`). A
//! refusal up to here leaves nothing behind, as a webhook refusal leaves no object. Then the
//! record and one copy into `backing.tmp` with its SHA-512, `backing.cfg` and the rename to
//! `backing` (`create`); the disk file moves pending → starting → in-progress → ready |
//! failed on the way.
//!
//! Library entry point: [`apply`] (one manifest or several, in dependency order).

use std::any::Any;
use std::cell::RefCell;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bifs_core::kdf::{KdfObserver, KdfStep};

use crate::copier::CopyOptions;
use bifs_k8s::{CryptoParams, Secret, SecretRef};

use crate::store::{allocated, BackingCfg, Lock, LockMode, Store, StoreError};

use super::download::DownloadPolicy;
use super::source::{file_url_path, produce, virtual_size, Output, Plan};
use super::status::{self, revalidate};
use bifs_k8s::manifest::{
    auto_correct_name, first_difference, BackingImage, BackingImageSpec, BackingImageStatus,
    Encryption, FieldError, Source, SourceFacts, SourceType, State, PARAM_BACKING_IMAGE,
    PARAM_ENCRYPTION, PARAM_SECRET, PARAM_URL,
};

/// What became of one applied image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Created,
    Unchanged,
    /// Refused by admission (the manifest, or the rules against other objects): nothing was
    /// written, no record made. The message names the field.
    Refused(String),
    /// Failed after admission (download error, checksum mismatch, wrong passphrase): the
    /// record says `failed` on the disk with the same message.
    Failed(String),
    /// A changed spec for an image that exists: refused, the existing image left as it is.
    Conflict(String),
}

impl Outcome {
    /// The outcome's name in logs and metrics labels.
    pub fn label(&self) -> &'static str {
        match self {
            Outcome::Created => "created",
            Outcome::Unchanged => "unchanged",
            Outcome::Refused(_) => "refused",
            Outcome::Failed(_) => "failed",
            Outcome::Conflict(_) => "conflict",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    /// The name as applied (after Longhorn's auto-correction).
    pub name: String,
    /// The name as the manifest gave it, when auto-correction changed it.
    pub renamed_from: Option<String>,
    pub outcome: Outcome,
}

/// The Secrets an apply can use: those in the applied files and those given with `--secrets`.
pub struct Secrets<'a>(pub &'a [Secret]);

impl Secrets<'_> {
    /// The Secret's LUKS parameters, or a refusal naming `field`.
    pub(crate) fn params(&self, id: &SecretRef, field: &str) -> Result<CryptoParams, FieldError> {
        let secret = self.0.iter().find(|s| &s.id == id).ok_or_else(|| {
            FieldError::param(
                field,
                format!("Secret {id} not found (give its manifest with -f or --secrets)"),
            )
        })?;
        secret
            .crypto_params()
            .map_err(|e| FieldError::param(field, e.to_string()))
    }
}

/// How an apply behaves beyond the manifests: who asked (what downloads may reach) and
/// whether it waits for another writer of the same image.
#[derive(Debug, Clone)]
pub struct ApplyOptions {
    /// What downloads may reach ([`DownloadPolicy::operator`] for `bifs apply`).
    pub downloads: DownloadPolicy,
    /// Wait for another apply, upload or delete holding an image (`bifs apply`), or answer
    /// [`Outcome::Conflict`] at once (the server: one writer per name, a second gets 409).
    pub wait: bool,
}

impl ApplyOptions {
    /// `bifs apply`'s: the node's operator, waiting for other writers.
    pub fn operator() -> Self {
        Self {
            downloads: DownloadPolicy::operator(),
            wait: true,
        }
    }
}

/// Applies `images` in dependency order (a clone after its source) and reports on each, as the
/// node's operator ([`ApplyOptions::operator`]).
pub fn apply(store: &Store, images: Vec<BackingImage>, secrets: &Secrets<'_>) -> Vec<Report> {
    apply_with(store, images, secrets, &ApplyOptions::operator())
}

/// [`apply`] with `opts`: what a server applies for remote callers.
pub fn apply_with(
    store: &Store,
    images: Vec<BackingImage>,
    secrets: &Secrets<'_>,
    opts: &ApplyOptions,
) -> Vec<Report> {
    let mut renamed: HashMap<String, String> = HashMap::new();
    let images = images
        .into_iter()
        .map(|mut b| {
            let corrected = auto_correct_name(&b.metadata.name);
            if corrected != b.metadata.name {
                tracing::warn!(from = %b.metadata.name, to = %corrected, "backing image name auto-corrected, as Longhorn's webhook does");
                renamed.insert(corrected.clone(), b.metadata.name.clone());
                b.metadata.name = corrected;
            }
            b
        })
        .collect();
    let (ordered, mut reports) = order(images);
    // Registered up front so that Ctrl-C anywhere in the apply is handled, not only mid-copy.
    let interrupted = crate::signals::stop_flag();
    for image in ordered {
        let name = image.name().to_string();
        if interrupted.load(std::sync::atomic::Ordering::Relaxed) {
            // Not started: its record (if any) is left as it was.
            reports.push(Report {
                name,
                renamed_from: None,
                outcome: Outcome::Failed("interrupted before it was started".into()),
            });
            continue;
        }
        let started = Instant::now();
        let outcome = match apply_one(store, &image, secrets, opts) {
            Ok(o) => o,
            Err(e) => Outcome::Failed(format!("store: {e}")),
        };
        crate::events::apply_finished(outcome.label(), started.elapsed());
        reports.push(Report {
            name,
            renamed_from: None,
            outcome,
        });
    }
    for r in &mut reports {
        r.renamed_from = renamed.get(&r.name).cloned();
    }
    reports
}

/// Orders by dependency (stable otherwise); duplicate names with different specs and cycles
/// are refused here.
fn order(images: Vec<BackingImage>) -> (Vec<BackingImage>, Vec<Report>) {
    let mut refused = Vec::new();
    let mut unique: Vec<BackingImage> = Vec::new();
    for image in images {
        match unique.iter().find(|u| u.name() == image.name()) {
            Some(u) if u.mutated_spec(None, "") == image.mutated_spec(None, "") => {}
            Some(_) => refused.push(Report {
                name: image.name().into(),
                renamed_from: None,
                outcome: Outcome::Refused(
                    FieldError::new(
                        "metadata.name",
                        format!("{} is given twice with different specs", image.name()),
                    )
                    .to_string(),
                ),
            }),
            None => unique.push(image),
        }
    }
    let index: HashMap<String, usize> = unique
        .iter()
        .enumerate()
        .map(|(i, b)| (b.name().to_string(), i))
        .collect();
    let dep = |b: &BackingImage| -> Option<usize> {
        if SourceType::parse(&b.spec.source_type) != Some(SourceType::Clone) {
            return None;
        }
        b.spec
            .source_parameters
            .get(PARAM_BACKING_IMAGE)
            .and_then(|s| index.get(s.trim()).copied())
    };
    #[derive(Clone, Copy, PartialEq)]
    enum Mark {
        New,
        Visiting,
        Done,
    }
    let mut marks = vec![Mark::New; unique.len()];
    let mut out_idx = Vec::new();
    let mut in_cycle = vec![false; unique.len()];
    for start in 0..unique.len() {
        // Iterative walk down the dependency chain (each image has at most one source).
        let mut chain = Vec::new();
        let mut cur = Some(start);
        while let Some(i) = cur {
            match marks[i] {
                Mark::Done => break,
                Mark::Visiting => {
                    if let Some(pos) = chain.iter().position(|&c| c == i) {
                        for &c in &chain[pos..] {
                            in_cycle[c] = true;
                        }
                    }
                    break;
                }
                Mark::New => {
                    marks[i] = Mark::Visiting;
                    chain.push(i);
                    cur = dep(&unique[i]);
                }
            }
        }
        for &i in chain.iter().rev() {
            marks[i] = Mark::Done;
            out_idx.push(i);
        }
    }
    let mut slots: Vec<Option<BackingImage>> = unique.into_iter().map(Some).collect();
    let mut ordered = Vec::new();
    for i in out_idx {
        let Some(image) = slots[i].take() else {
            continue;
        };
        if in_cycle[i] {
            refused.push(Report {
                name: image.name().into(),
                renamed_from: None,
                outcome: Outcome::Refused(
                    FieldError::param(PARAM_BACKING_IMAGE, "clones form a dependency cycle")
                        .to_string(),
                ),
            });
        } else {
            ordered.push(image);
        }
    }
    (ordered, refused)
}

/// The record of an image, if there is one and its state counts (a failed record does not
/// pin the spec: a corrected manifest replaces it).
fn live_record(store: &Store, name: &str) -> Result<Option<BackingImage>, StoreError> {
    let rec = status::read(store, name).map_err(status_to_store)?;
    Ok(rec.filter(|r| r.status.as_ref().map(|s| s.state()) != Some(State::Failed)))
}

fn status_to_store(e: status::StatusError) -> StoreError {
    match e {
        status::StatusError::Store(e) => e,
        other => StoreError::Record {
            path: std::path::PathBuf::from("records"),
            message: other.to_string(),
        },
    }
}

/// Whether a ready record's file is there and (validated again if its mtime moved) ready.
fn is_complete(store: &Store, rec: &BackingImage) -> bool {
    let rec = revalidate(store, rec.clone());
    let Some(st) = &rec.status else { return false };
    st.state() == State::Ready
        && !st.uuid.is_empty()
        && store.backing_path(rec.name(), &st.uuid).is_file()
}

/// What an existing record makes of a new apply: a conflict when the spec changed (as
/// Longhorn's mutator would leave it, the source facts being the record's own), unchanged
/// when it is the same and complete; `None` to go on.
fn existing(store: &Store, image: &BackingImage) -> Result<Option<Outcome>, StoreError> {
    let Some(rec) = live_record(store, image.name())? else {
        return Ok(None);
    };
    let facts = SourceFacts {
        secret: rec.spec.secret.clone(),
        secret_namespace: rec.spec.secret_namespace.clone(),
        checksum: rec.spec.checksum.clone(),
    };
    let spec = image.mutated_spec(Some(&facts), store.disk_uuid());
    if rec.spec != spec {
        let field = first_difference(&rec.spec, &spec).unwrap_or_else(|| "spec".into());
        return Ok(Some(Outcome::Conflict(format!(
            "{field}: backing image {} already exists with a different spec; its spec is immutable (delete it first)",
            rec.name()
        ))));
    }
    Ok(is_complete(store, &rec).then_some(Outcome::Unchanged))
}

fn apply_one(
    store: &Store,
    image: &BackingImage,
    secrets: &Secrets<'_>,
    opts: &ApplyOptions,
) -> Result<Outcome, StoreError> {
    let source = match image.validate() {
        Ok(s) => s,
        Err(e) => return Ok(Outcome::Refused(e.to_string())),
    };
    if let Source::Download { url } = &source {
        if let Err(e) = opts.downloads.check_url(url) {
            return Ok(Outcome::Refused(
                FieldError::param(PARAM_URL, e).to_string(),
            ));
        }
    }
    // Without the lock first: re-applying a ready image must not wait for clones reading it.
    if let Some(done) = existing(store, image)? {
        return Ok(done);
    }
    let _lock = if opts.wait {
        lock_waiting(store, image.name(), LockMode::Exclusive)?
    } else {
        match store.lock(image.name(), LockMode::Exclusive, false)? {
            Some(l) => l,
            None => return Ok(Outcome::Conflict(busy(image.name()))),
        }
    };
    if let Some(done) = existing(store, image)? {
        return Ok(done);
    }
    if status::read(store, image.name())
        .map_err(status_to_store)?
        .is_none()
        && status::longhorn_managed(store, image.name()).is_some()
    {
        return Ok(Outcome::Refused(longhorn_managed_message(image.name())));
    }
    let admitted = match admit(store, image, &source, secrets, opts) {
        Ok(a) => a,
        Err(e) => return Ok(Outcome::Refused(e.to_string())),
    };
    create(store, image, admitted, &opts.downloads)
}

/// The message of a name another writer holds.
/// Why a name backing-image-manager's files hold is refused (to an apply and an upload).
pub(crate) fn longhorn_managed_message(name: &str) -> String {
    format!(
        "metadata.name: backing image {name} is on this disk already, managed by Longhorn \
         (backing-image-manager's files, which bifs never changes); pick another name"
    )
}

pub fn busy(name: &str) -> String {
    format!(
        "backing image {name} is being written by another request (an upload, apply or \
         delete of the same name); try again when it is done"
    )
}

/// Makes the admitted image: record, copy, verification, `backing.cfg`, rename.
fn create(
    store: &Store,
    image: &BackingImage,
    admitted: Admitted,
    downloads: &DownloadPolicy,
) -> Result<Outcome, StoreError> {
    let name = image.name();
    let disk = store.disk_uuid().to_string();
    // A retry keeps the directory name of the earlier attempt and starts it afresh.
    let uuid = status::read(store, name)
        .ok()
        .flatten()
        .and_then(|r| r.status)
        .map(|s| s.uuid)
        .filter(|u| !u.is_empty())
        .unwrap_or_else(new_uuid);
    let mut status = BackingImageStatus {
        owner_id: node_name(),
        uuid: uuid.clone(),
        ..Default::default()
    };
    status.set_file(&disk, State::Pending, 0, "");
    let mut rec = BackingImage {
        spec: admitted.spec.clone(),
        status: Some(status),
        ..image.clone()
    };
    // As Longhorn's mutator, over the manifest's own labels.
    for (k, v) in bifs_k8s::manifest::LONGHORN_LABELS {
        rec.metadata.labels.insert(k.into(), v.into());
    }
    store.write_record(name, &rec)?;
    let dir = store.prepare_dir(name, &uuid)?;
    let (file, tmp) = store.create_tmp(&dir)?;
    // A key to derive first: the record says so from the start (see below).
    let phase = if admitted.plan.needs_key() {
        KEY_PHASE
    } else {
        ""
    };
    set_state(&mut rec, &disk, State::Starting, 0, phase);
    store.write_record(name, &rec)?;
    tracing::info!(backing_image = name, plan = admitted.describe(), dir = %dir.display(), "creating");

    let opts = CopyOptions {
        label: format!("{name} ({})", admitted.describe()),
        force: false,
        sha512: true,
    };
    let copy = |rec: &BackingImage| {
        let mut copying_rec = rec.clone();
        set_state(&mut copying_rec, &disk, State::InProgress, 0, "");
        let progress = RefCell::new(RecordProgress::new(store, copying_rec));
        let mut copying = || progress.borrow_mut().start();
        let mut cb = |done: u64, total: Option<u64>| progress.borrow_mut().update(done, total);
        produce(
            store,
            &admitted.plan,
            downloads,
            Output {
                file: &file,
                path: tmp.clone(),
            },
            &opts,
            &mut copying,
            Some(&mut cb),
        )
    };
    let result = if admitted.plan.needs_key() {
        // Seconds of key derivation come before the first byte: the record says so (state
        // `starting`, the KDF and its cost in the message) rather than `in-progress` at 0%.
        let observer = key_phase_observer(store, &rec, &disk);
        bifs_core::kdf::with_observer(observer, || copy(&rec))
    } else {
        copy(&rec)
    };
    drop(file);
    drop(admitted.source_lock);
    let fail = |rec: &mut BackingImage, message: String| -> Result<Outcome, StoreError> {
        store.discard(name, &uuid);
        set_state(rec, &disk, State::Failed, 0, &message);
        store.write_record(name, rec)?;
        Ok(Outcome::Failed(message))
    };
    let copied = match result {
        Ok(c) => c,
        Err(e) if e.is_interrupted() => {
            return fail(&mut rec, "interrupted; apply again to complete it".into())
        }
        Err(e) => return fail(&mut rec, e.to_string()),
    };
    // Always computed here (`sha512: true` above): a backing image's checksum is its identity.
    let checksum = copied.sha512.clone().unwrap_or_default();
    if let Some(expected) = &admitted.expected_checksum {
        if *expected != checksum {
            return fail(&mut rec, checksum_mismatch(expected, &checksum));
        }
    }
    let tmp_path = dir.join(crate::store::layout::BACKING_TMP);
    let virtual_size = virtual_size(&tmp_path, copied.bytes);
    let real_size = allocated(&tmp_path).unwrap_or(copied.bytes);
    let cfg = BackingCfg {
        uuid: uuid.clone(),
        size: copied.bytes as i64,
        virtual_size: virtual_size as i64,
        real_size: real_size as i64,
        // Longhorn takes the first ready file's checksum as the expected one when none was given.
        expected_checksum: admitted
            .expected_checksum
            .clone()
            .unwrap_or_else(|| checksum.clone()),
        current_checksum: checksum.clone(),
        ..Default::default()
    };
    store.commit(&dir, cfg)?;
    if let Some(st) = rec.status.as_mut() {
        st.size = copied.bytes;
        st.virtual_size = virtual_size;
        st.real_size = real_size;
        st.checksum = checksum;
        st.set_file(&disk, State::Ready, 100, "");
        // No replica uses it yet: Longhorn records when a disk's file was last referenced.
        st.disk_last_ref_at_map
            .entry(disk.clone())
            .or_insert_with(bifs_k8s::time::rfc3339_now);
    }
    store.write_record(name, &rec)?;
    Ok(Outcome::Created)
}

pub(crate) fn set_state(
    rec: &mut BackingImage,
    disk: &str,
    state: State,
    progress: u8,
    message: &str,
) {
    if let Some(st) = rec.status.as_mut() {
        st.set_file(disk, state, progress, message);
    }
}

fn lock_waiting(store: &Store, name: &str, mode: LockMode) -> Result<Lock, StoreError> {
    if let Some(l) = store.lock(name, mode, false)? {
        return Ok(l);
    }
    tracing::info!(
        backing_image = name,
        "another bifs holds this backing image; waiting for it"
    );
    match store.lock(name, mode, true)? {
        Some(l) => Ok(l),
        // A waiting flock only returns without the lock on error, which `lock` reports.
        None => Err(StoreError::Name(name.into())),
    }
}

/// Longhorn's `util.RandomID()`: 8 hex digits of a random UUID.
pub(crate) fn new_uuid() -> String {
    uuid::Uuid::new_v4().simple().to_string()[..8].to_string()
}

/// `status.ownerID`: the node's name (`NODE_NAME`, as Longhorn's pods get it, else the host
/// name).
pub fn node_name() -> String {
    std::env::var("NODE_NAME")
        .ok()
        .filter(|n| !n.is_empty())
        .or_else(|| {
            std::fs::read_to_string("/proc/sys/kernel/hostname")
                .ok()
                .map(|h| h.trim().to_string())
        })
        .unwrap_or_default()
}

/// An admitted apply: what to copy, the spec as admission leaves it, what it must hash to.
struct Admitted {
    plan: Plan,
    spec: BackingImageSpec,
    expected_checksum: Option<String>,
    /// Shared lock on a clone's source, held while it is read: no delete meanwhile.
    source_lock: Option<Lock>,
}

impl Admitted {
    fn describe(&self) -> &'static str {
        match self.plan {
            Plan::Download { .. } => "download",
            Plan::Upload { .. } => "upload",
            Plan::Copy { .. } => "clone",
            Plan::Encrypt { .. } => "clone, encrypt",
            Plan::Decrypt { .. } => "clone, decrypt",
            Plan::Rekey { .. } => "clone, rekey",
        }
    }
}

/// The checks and mutations Longhorn's webhook makes against the other objects.
fn admit(
    store: &Store,
    image: &BackingImage,
    source: &Source,
    secrets: &Secrets<'_>,
    opts: &ApplyOptions,
) -> Result<Admitted, FieldError> {
    match source {
        Source::Download { url } => {
            if opts.downloads.local && (file_url_path(url).is_some() || is_loopback(url)) {
                tracing::info!(backing_image = image.name(), url, "a file:// or loopback URL: reads a file or a service of this node (Longhorn's webhook accepts both until v1.11.4/v1.12.1, which refuse them)");
            }
            admit_own(store, image, secrets, Plan::Download { url: url.clone() })
        }
        Source::Upload { path } => {
            admit_own(store, image, secrets, Plan::Upload { path: path.clone() })
        }
        Source::Clone {
            backing_image,
            encryption,
            secret,
        } => admit_clone(
            store,
            image,
            backing_image,
            *encryption,
            secret,
            secrets,
            opts.wait,
        ),
    }
}

fn is_loopback(url: &str) -> bool {
    let host = url
        .split_once("://")
        .map(|(_, r)| r.split(['/', '?', '#']).next().unwrap_or(""))
        .unwrap_or("");
    let host = host.rsplit_once('@').map_or(host, |(_, h)| h);
    let host = host
        .strip_prefix('[')
        .and_then(|h| h.split_once(']'))
        .map_or_else(
            || host.rsplit_once(':').map_or(host, |(h, _)| h),
            |(h, _)| h,
        );
    host.eq_ignore_ascii_case("localhost")
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// A download or upload: encrypted only if its spec says by which Secret, which must exist.
fn admit_own(
    store: &Store,
    image: &BackingImage,
    secrets: &Secrets<'_>,
    plan: Plan,
) -> Result<Admitted, FieldError> {
    let spec = image.mutated_spec(None, store.disk_uuid());
    if !spec.secret.is_empty() {
        let id = SecretRef {
            namespace: spec.secret_namespace.clone(),
            name: spec.secret.clone(),
        };
        secrets
            .params(&id, PARAM_SECRET)
            .map_err(|e| FieldError::new("spec.secret", e.message))?;
    }
    let expected_checksum = (!spec.checksum.is_empty()).then(|| spec.checksum.clone());
    Ok(Admitted {
        plan,
        spec,
        expected_checksum,
        source_lock: None,
    })
}

/// A clone's source as admission sees it: its file and the facts its spec carries.
struct CloneSource {
    path: std::path::PathBuf,
    facts: SourceFacts,
}

/// The source of a clone: a ready record of this store, else a complete image directory of
/// the disk that bifs did not make (a Longhorn disk's own), whose checksum is its cfg's when
/// the cfg describes the file, else computed now.
fn clone_source(store: &Store, backing_image: &str) -> Result<CloneSource, FieldError> {
    let store_err = |e: String| FieldError::new("store", e);
    let not_ready = |state: &str, message: &str| {
        let why = if message.is_empty() {
            String::new()
        } else {
            format!(": {message}")
        };
        FieldError::param(
            PARAM_BACKING_IMAGE,
            format!("backing image {backing_image} is not ready (state {state}){why}"),
        )
    };
    if let Some(src) = status::read(store, backing_image).map_err(|e| store_err(e.to_string()))? {
        let st = src.status.clone().unwrap_or_default();
        let file = st.file();
        if file.state != State::Ready || !store.backing_path(backing_image, &st.uuid).is_file() {
            return Err(not_ready(file.state.as_str(), &file.message));
        }
        if status::file_changed(store, backing_image, &st.uuid) {
            return Err(not_ready(
                State::Unknown.as_str(),
                "its file changed since it was made and was not validated again yet",
            ));
        }
        return Ok(CloneSource {
            path: store.backing_path(backing_image, &st.uuid),
            facts: SourceFacts {
                secret: src.spec.secret.clone(),
                secret_namespace: src.spec.secret_namespace.clone(),
                checksum: st.checksum.clone(),
            },
        });
    }
    let images = store.disk_images().map_err(|e| store_err(e.to_string()))?;
    let Some(found) = images.into_iter().find(|i| i.name == backing_image) else {
        return Err(FieldError::param(
            PARAM_BACKING_IMAGE,
            format!("backing image {backing_image} not found in the store"),
        ));
    };
    let checksum = match found.cfg.as_ref() {
        Some(c) if found.cfg_current() && !c.current_checksum.is_empty() => {
            c.current_checksum.clone()
        }
        _ => crate::checksum::sha512_file(&found.backing()).map_err(|e| {
            FieldError::param(
                PARAM_BACKING_IMAGE,
                format!("reading {}: {e}", found.backing().display()),
            )
        })?,
    };
    tracing::info!(backing_image, dir = %found.dir.display(), "cloning from a backing image of the disk that has no bifs record");
    Ok(CloneSource {
        path: found.backing(),
        facts: SourceFacts {
            checksum,
            ..Default::default()
        },
    })
}

fn admit_clone(
    store: &Store,
    image: &BackingImage,
    backing_image: &str,
    encryption: Encryption,
    secret: &Option<SecretRef>,
    secrets: &Secrets<'_>,
    wait: bool,
) -> Result<Admitted, FieldError> {
    if backing_image == image.name() {
        return Err(FieldError::param(
            PARAM_BACKING_IMAGE,
            "a backing image cannot be cloned from itself",
        ));
    }
    if !bifs_k8s::manifest::valid_name(backing_image) {
        return Err(FieldError::param(
            PARAM_BACKING_IMAGE,
            format!("invalid backing image name {backing_image:?}"),
        ));
    }
    // Validated again (if its file changed) before the shared lock, which would keep the
    // validation, needing the exclusive lock, from running.
    if let Ok(Some(rec)) = status::read(store, backing_image) {
        revalidate(store, rec);
    }
    let source_lock = store
        .lock(backing_image, LockMode::Shared, wait)
        .map_err(|e| FieldError::new("store", e.to_string()))?;
    if source_lock.is_none() && !wait {
        return Err(FieldError::param(PARAM_BACKING_IMAGE, busy(backing_image)));
    }
    let src = clone_source(store, backing_image)?;
    let spec = image.mutated_spec(Some(&src.facts), store.disk_uuid());
    let plan = clone_plan(image, backing_image, encryption, secret, secrets, &src)?;
    if encryption != Encryption::Ignore && image.expected_checksum().is_some() {
        // As Longhorn's mutator: a user's checksum cannot be known for a new encryption.
        tracing::warn!(
            backing_image = image.name(),
            "spec.checksum is cleared for encryption {encryption}, as Longhorn's webhook does"
        );
    }
    if encryption == Encryption::Ignore {
        if let Some(want) = image.expected_checksum().filter(|w| *w != spec.checksum) {
            tracing::warn!(
                backing_image = image.name(),
                given = %want,
                "spec.checksum replaced by the source's checksum, as Longhorn's webhook does"
            );
        }
    }
    let expected_checksum = (!spec.checksum.is_empty()).then(|| spec.checksum.clone());
    Ok(Admitted {
        plan,
        spec,
        expected_checksum,
        source_lock,
    })
}

/// Longhorn's encryption rules (its validator reads "encrypted" from the source's
/// `spec.secret`) and the plan they lead to.
fn clone_plan(
    image: &BackingImage,
    backing_image: &str,
    encryption: Encryption,
    secret: &Option<SecretRef>,
    secrets: &Secrets<'_>,
    src: &CloneSource,
) -> Result<Plan, FieldError> {
    let source_secret = (!src.facts.secret.is_empty()).then(|| SecretRef {
        namespace: src.facts.secret_namespace.clone(),
        name: src.facts.secret.clone(),
    });
    let given = || -> Result<(SecretRef, CryptoParams), FieldError> {
        let id = secret
            .clone()
            .ok_or_else(|| FieldError::param(PARAM_SECRET, "required"))?;
        let params = secrets.params(&id, PARAM_SECRET)?;
        note_kdf_costs(image.name(), &params);
        Ok((id, params))
    };
    let path = src.path.clone();
    Ok(match encryption {
        Encryption::Ignore => Plan::Copy { source: path },
        Encryption::Encrypt => {
            if let Some(s) = &source_secret {
                return Err(FieldError::param(
                    PARAM_ENCRYPTION,
                    format!("cannot re-encrypt the backing image, {backing_image} is already encrypted (Secret {s})"),
                ));
            }
            let (_, params) = given()?;
            Plan::Encrypt {
                source: path,
                params,
            }
        }
        Encryption::Decrypt => {
            if source_secret.is_none() {
                return Err(FieldError::param(
                    PARAM_ENCRYPTION,
                    format!("cannot re-decrypt the backing image, {backing_image} is already decrypted (it has no secret)"),
                ));
            }
            let (_, params) = given()?;
            Plan::Decrypt {
                source: path,
                params,
            }
        }
        Encryption::Rekey => {
            let Some(old_id) = source_secret else {
                return Err(FieldError::param(
                    PARAM_ENCRYPTION,
                    format!("cannot rekey the backing image, {backing_image} is not encrypted (it has no secret)"),
                ));
            };
            let (_, new) = given()?;
            let old = secrets.params(&old_id, PARAM_BACKING_IMAGE).map_err(|e| {
                FieldError::new(e.field, format!("the source's own Secret: {}", e.message))
            })?;
            Plan::Rekey {
                source: path,
                old,
                new,
            }
        }
    })
}

/// Longhorn does not pass `CRYPTO_PBKDF_MEMORY`/`CRYPTO_PBKDF_FORCE_ITERATIONS` to cryptsetup
/// for backing images; bifs honours them, and says so.
fn note_kdf_costs(image: &str, params: &CryptoParams) {
    if params.luks.kdf.memory_kib.is_some() || params.luks.kdf.force_iterations.is_some() {
        tracing::info!(
            backing_image = image,
            secret = %params.secret,
            memory_kib = ?params.luks.kdf.memory_kib,
            iterations = ?params.luks.kdf.force_iterations,
            "the Secret's CRYPTO_PBKDF_MEMORY/CRYPTO_PBKDF_FORCE_ITERATIONS are honoured (a bifs extension: Longhorn does not pass them to cryptsetup for backing images)"
        );
    }
}

/// A checksum mismatch in backing-image-manager's words (sync_file.go
/// `postProcessSyncFile`), so that what watches Longhorn's messages matches bifs's.
pub(crate) fn checksum_mismatch(expected: &str, actual: &str) -> String {
    format!(
        "failed to process sync file: the expected checksum {expected} doesn't match the file actual checksum {actual}"
    )
}

/// The message of a disk file whose key is being prepared (state `starting`), before the
/// KDF says more.
pub const KEY_PHASE: &str = "preparing the key";

/// What a key-derivation step makes of the record's message.
pub fn key_phase_message(step: &KdfStep) -> String {
    match step {
        KdfStep::Derive(kdf) => format!("{KEY_PHASE}: deriving it with {kdf}"),
    }
}

/// Writes each key-derivation step into the record (on the applying thread, before the KDF
/// runs), so `get -w` and the page show what the wait is.
fn key_phase_observer(store: &Store, rec: &BackingImage, disk: &str) -> Arc<KdfObserver> {
    let store = store.clone();
    let rec = Mutex::new(rec.clone());
    let disk = disk.to_string();
    Arc::new(move |step: &KdfStep| {
        let message = key_phase_message(step);
        if let Ok(mut rec) = rec.lock() {
            tracing::debug!(backing_image = rec.name(), "{message}");
            set_state(&mut rec, &disk, State::Starting, 0, &message);
            if let Err(e) = store.write_record(&rec.metadata.name, &*rec) {
                tracing::warn!(error = %e, "could not update the status record");
            }
        }
        Box::new(()) as Box<dyn Any>
    })
}

/// Progress into the status record: at most every 250 ms, and only when the percentage moved.
struct RecordProgress<'a> {
    store: &'a Store,
    rec: BackingImage,
    last_write: Instant,
    last_percent: u8,
    started: bool,
}

impl<'a> RecordProgress<'a> {
    fn new(store: &'a Store, rec: BackingImage) -> Self {
        Self {
            store,
            rec,
            last_write: Instant::now(),
            last_percent: 0,
            started: false,
        }
    }

    /// The copy begins: the record goes `in-progress` at 0% (once).
    fn start(&mut self) {
        if std::mem::replace(&mut self.started, true) {
            return;
        }
        self.last_write = Instant::now();
        if let Err(e) = self.store.write_record(&self.rec.metadata.name, &self.rec) {
            tracing::warn!(error = %e, "could not update the status record");
        }
    }

    fn update(&mut self, done: u64, total: Option<u64>) {
        let Some(total) = total.filter(|&t| t > 0) else {
            return;
        };
        let percent = (done.saturating_mul(100) / total).min(100) as u8;
        if percent == self.last_percent || self.last_write.elapsed() < Duration::from_millis(250) {
            return;
        }
        self.last_percent = percent;
        self.last_write = Instant::now();
        if let Some(st) = self.rec.status.as_mut() {
            st.set_progress(percent);
        }
        if let Err(e) = self.store.write_record(&self.rec.metadata.name, &self.rec) {
            tracing::warn!(error = %e, "could not update the status record");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bifs_k8s::manifest::parse_backing_images;
    use std::path::Path;

    fn bi(name: &str, src: Option<&str>) -> BackingImage {
        let spec = match src {
            Some(s) => format!("{{sourceType: clone, sourceParameters: {{backing-image: {s}}}}}"),
            None => "{sourceType: download, sourceParameters: {url: 'http://x/y'}}".to_string(),
        };
        let y = format!("apiVersion: longhorn.io/v1beta2\nkind: BackingImage\nmetadata: {{name: {name}}}\nspec: {spec}\n");
        parse_backing_images(&y, Path::new("t")).unwrap().remove(0)
    }

    #[test]
    fn clones_come_after_their_sources_and_cycles_are_refused() {
        let (ordered, refused) = order(vec![
            bi("c2", Some("c1")),
            bi("c1", Some("p0")),
            bi("p0", None),
            bi("x1", Some("y1")),
            bi("y1", Some("x1")),
        ]);
        let names: Vec<&str> = ordered.iter().map(|b| b.name()).collect();
        assert_eq!(names, ["p0", "c1", "c2"]);
        assert_eq!(refused.len(), 2);
        assert!(refused.iter().all(|r| matches!(&r.outcome, Outcome::Refused(m) if m.contains("spec.sourceParameters.backing-image"))));
    }
}
