//! The apply engine: BackingImage manifests in, ready backing images (or failed records that
//! say why) out.
//!
//! Per image: the manifest checks, then under the image's exclusive lock the checks Longhorn's
//! webhook makes against other objects (source ready, encryption rules, Secret present), then
//! one copy into `backing.tmp` with its SHA-512, then `backing.cfg` and the rename to
//! `backing`. The record moves pending → in-progress → ready | failed on the way.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use crate::copier::CopyOptions;
use crate::k8s::{CryptoParams, Secret, SecretRef};

use super::layout::{allocated, BackingCfg, LayoutError, Lock, LockMode, Store};
use super::manifest::{
    first_difference, BackingImage, BackingImageStatus, Encryption, FieldError, Source, State,
    PARAM_BACKING_IMAGE, PARAM_ENCRYPTION, PARAM_SECRET,
};
use super::source::{produce, virtual_size, Plan};

/// What became of one applied image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Created,
    Unchanged,
    /// Refused before any byte was written, or failed while writing; the message names the
    /// field. The store's record (when one could be written) says the same.
    Failed(String),
    /// A changed spec for an image that exists: refused, the existing image left as it is.
    Conflict(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    pub name: String,
    pub outcome: Outcome,
}

/// The Secrets an apply can use: those in the applied files and those given with `--secrets`.
pub struct Secrets<'a>(pub &'a [Secret]);

impl Secrets<'_> {
    /// The Secret's LUKS parameters, or a refusal naming `field`.
    fn params(&self, id: &SecretRef, field: &str) -> Result<CryptoParams, FieldError> {
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

/// Applies `images` in dependency order (a clone after its source) and reports on each.
pub fn apply(store: &Store, images: Vec<BackingImage>, secrets: &Secrets<'_>) -> Vec<Report> {
    let (ordered, mut reports) = order(images);
    // Registered up front so that Ctrl-C anywhere in the apply is handled, not only mid-copy.
    let interrupted = crate::signals::stop_flag();
    for image in ordered {
        let name = image.name().to_string();
        if interrupted.load(std::sync::atomic::Ordering::Relaxed) {
            // Not started: its record (if any) is left as it was.
            reports.push(Report {
                name,
                outcome: Outcome::Failed("interrupted before it was started".into()),
            });
            continue;
        }
        let outcome = match apply_one(store, &image, secrets) {
            Ok(o) => o,
            Err(e) => Outcome::Failed(format!("store: {e}")),
        };
        reports.push(Report { name, outcome });
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
            Some(u) if u.normalized_spec() == image.normalized_spec() => {}
            Some(_) => refused.push(Report {
                name: image.name().into(),
                outcome: Outcome::Failed(
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
        if b.spec.source_type.trim() != "clone" {
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
                outcome: Outcome::Failed(
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

fn state_of(rec: &BackingImage) -> State {
    rec.status.as_ref().map(|s| s.state).unwrap_or_default()
}

fn is_complete(store: &Store, rec: &BackingImage) -> bool {
    let Some(st) = &rec.status else { return false };
    st.state == State::Ready
        && !st.uuid.is_empty()
        && store.backing_path(rec.name(), &st.uuid).is_file()
}

fn conflict(rec: &BackingImage, spec: &super::manifest::BackingImageSpec) -> Outcome {
    let field = first_difference(&rec.spec, spec).unwrap_or_else(|| "spec".into());
    Outcome::Conflict(format!(
        "{field}: backing image {} already exists with a different spec; its spec is immutable (delete it first)",
        rec.name()
    ))
}

fn apply_one(
    store: &Store,
    image: &BackingImage,
    secrets: &Secrets<'_>,
) -> Result<Outcome, LayoutError> {
    let name = image.name();
    let spec = image.normalized_spec();
    let source = match image.validate() {
        Ok(s) => s,
        Err(e) => return refuse(store, image, e),
    };
    // Without the lock first: re-applying a ready image must not wait for clones reading it.
    if let Some(rec) = store.read_record(name)? {
        if rec.spec != spec && state_of(&rec) != State::Failed {
            return Ok(conflict(&rec, &spec));
        }
        if rec.spec == spec && is_complete(store, &rec) {
            return Ok(Outcome::Unchanged);
        }
    }
    let _lock = lock_waiting(store, name, LockMode::Exclusive)?;
    let existing = store.read_record(name)?;
    if let Some(rec) = &existing {
        if rec.spec != spec && state_of(rec) != State::Failed {
            return Ok(conflict(rec, &spec));
        }
        if rec.spec == spec && is_complete(store, rec) {
            return Ok(Outcome::Unchanged);
        }
    }
    // A retry keeps the directory name of the earlier attempt and starts it afresh.
    let uuid = existing
        .as_ref()
        .and_then(|r| r.status.as_ref())
        .map(|s| s.uuid.clone())
        .filter(|u| !u.is_empty())
        .unwrap_or_else(new_uuid);

    let admitted = match admit(store, image, &source, secrets) {
        Ok(a) => a,
        Err(e) => {
            store.discard(name, &uuid);
            return record_failure(store, image, &spec, String::new(), e.to_string());
        }
    };
    let mut rec = BackingImage {
        spec: spec.clone(),
        status: Some(BackingImageStatus {
            state: State::Pending,
            uuid: uuid.clone(),
            secret: admitted
                .secret
                .as_ref()
                .map(|s| s.name.clone())
                .unwrap_or_default(),
            secret_namespace: admitted
                .secret
                .as_ref()
                .map(|s| s.namespace.clone())
                .unwrap_or_default(),
            ..Default::default()
        }),
        ..image.clone()
    };
    store.write_record(&rec)?;
    let dir = store.prepare_dir(name, &uuid)?;
    let (file, tmp) = store.create_tmp(&dir)?;
    set_state(&mut rec, State::InProgress, 0, "");
    store.write_record(&rec)?;
    tracing::info!(backing_image = name, plan = admitted.describe(), dir = %dir.display(), "creating");

    let opts = CopyOptions {
        label: format!("{name} ({})", admitted.describe()),
        force: false,
        sha512: true,
    };
    let mut progress = RecordProgress::new(store, rec.clone());
    let mut cb = |done: u64, total: Option<u64>| progress.update(done, total);
    let result = produce(&admitted.plan, &file, tmp, &opts, Some(&mut cb));
    drop(file);
    drop(admitted.source_lock);
    let copied = match result {
        Ok(c) => c,
        Err(e) => {
            store.discard(name, &uuid);
            let message = if e.is_interrupted() {
                "interrupted; apply again to complete it".to_string()
            } else {
                e.to_string()
            };
            fail(&mut rec, message.clone());
            store.write_record(&rec)?;
            return Ok(Outcome::Failed(message));
        }
    };
    // Always computed here (`sha512: true` above): a backing image's checksum is its identity.
    let checksum = copied.sha512.clone().unwrap_or_default();
    if let Some(expected) = &admitted.expected_checksum {
        if *expected != checksum {
            store.discard(name, &uuid);
            let message = FieldError::new(
                "spec.checksum",
                format!(
                    "checksum mismatch: expected {expected}, got {checksum}; the file was removed"
                ),
            )
            .to_string();
            fail(&mut rec, message.clone());
            store.write_record(&rec)?;
            return Ok(Outcome::Failed(message));
        }
    }
    let cfg = BackingCfg {
        name: name.to_string(),
        uuid: uuid.clone(),
        size: copied.bytes as i64,
        // Longhorn takes the first ready file's checksum as the expected one when none was given.
        expected_checksum: admitted
            .expected_checksum
            .clone()
            .unwrap_or_else(|| checksum.clone()),
        current_checksum: checksum.clone(),
    };
    store.commit(&dir, &cfg)?;
    let backing = store.backing_path(name, &uuid);
    if let Some(st) = rec.status.as_mut() {
        st.state = State::Ready;
        st.progress = 100;
        st.size = copied.bytes;
        st.virtual_size = virtual_size(&backing, copied.bytes);
        st.real_size = allocated(&backing).unwrap_or(copied.bytes);
        st.checksum = checksum;
        st.message.clear();
    }
    store.write_record(&rec)?;
    Ok(Outcome::Created)
}

/// Refused by the manifest checks: recorded as failed unless that would overwrite an image
/// that exists (a refused re-apply must not hide a good image).
fn refuse(store: &Store, image: &BackingImage, e: FieldError) -> Result<Outcome, LayoutError> {
    let message = e.to_string();
    if !super::manifest::valid_name(image.name()) {
        return Ok(Outcome::Failed(message));
    }
    let _lock = lock_waiting(store, image.name(), LockMode::Exclusive)?;
    match store.read_record(image.name())? {
        Some(rec) if state_of(&rec) != State::Failed => Ok(Outcome::Failed(message)),
        _ => record_failure(
            store,
            image,
            &image.normalized_spec(),
            String::new(),
            message,
        ),
    }
}

fn record_failure(
    store: &Store,
    image: &BackingImage,
    spec: &super::manifest::BackingImageSpec,
    uuid: String,
    message: String,
) -> Result<Outcome, LayoutError> {
    let rec = BackingImage {
        spec: spec.clone(),
        status: Some(BackingImageStatus {
            state: State::Failed,
            uuid,
            message: message.clone(),
            ..Default::default()
        }),
        ..image.clone()
    };
    store.write_record(&rec)?;
    Ok(Outcome::Failed(message))
}

fn set_state(rec: &mut BackingImage, state: State, progress: u8, message: &str) {
    if let Some(st) = rec.status.as_mut() {
        st.state = state;
        st.progress = progress;
        st.message = message.to_string();
    }
}

fn fail(rec: &mut BackingImage, message: String) {
    if let Some(st) = rec.status.as_mut() {
        st.state = State::Failed;
        st.message = message;
    }
}

fn lock_waiting(store: &Store, name: &str, mode: LockMode) -> Result<Lock, LayoutError> {
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
        None => Err(LayoutError::Name(name.into())),
    }
}

/// Longhorn's `util.RandomID()`: 8 hex digits of a random UUID.
fn new_uuid() -> String {
    uuid::Uuid::new_v4().simple().to_string()[..8].to_string()
}

/// An admitted apply: what to copy, what the result will be keyed by, what it must hash to.
struct Admitted {
    plan: Plan,
    secret: Option<SecretRef>,
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

/// The checks Longhorn's webhook makes against the other objects, with the same meaning.
fn admit(
    store: &Store,
    image: &BackingImage,
    source: &Source,
    secrets: &Secrets<'_>,
) -> Result<Admitted, FieldError> {
    let store_err = |e: LayoutError| FieldError::new("store", e.to_string());
    match source {
        Source::Download { url } => Ok(Admitted {
            plan: Plan::Download { url: url.clone() },
            secret: own_secret(image),
            expected_checksum: image.expected_checksum(),
            source_lock: None,
        }),
        Source::Upload { path } => Ok(Admitted {
            plan: Plan::Upload { path: path.clone() },
            secret: own_secret(image),
            expected_checksum: image.expected_checksum(),
            source_lock: None,
        }),
        Source::Clone {
            backing_image,
            encryption,
            secret,
        } => {
            if backing_image == image.name() {
                return Err(FieldError::param(
                    PARAM_BACKING_IMAGE,
                    "a backing image cannot be cloned from itself",
                ));
            }
            if !super::manifest::valid_name(backing_image) {
                return Err(FieldError::param(
                    PARAM_BACKING_IMAGE,
                    format!("invalid backing image name {backing_image:?}"),
                ));
            }
            let source_lock = store
                .lock(backing_image, LockMode::Shared, true)
                .map_err(store_err)?;
            let src = store
                .read_record(backing_image)
                .map_err(store_err)?
                .ok_or_else(|| {
                    FieldError::param(
                        PARAM_BACKING_IMAGE,
                        format!("backing image {backing_image} not found in the store"),
                    )
                })?;
            let st = src.status.clone().unwrap_or_default();
            if !is_complete(store, &src) {
                let why = if st.message.is_empty() {
                    String::new()
                } else {
                    format!(": {}", st.message)
                };
                return Err(FieldError::param(
                    PARAM_BACKING_IMAGE,
                    format!(
                        "backing image {backing_image} is not ready (state {}){why}",
                        st.state.as_str()
                    ),
                ));
            }
            let path = store.backing_path(backing_image, &st.uuid);
            let source_secret = (!st.secret.is_empty()).then(|| SecretRef {
                namespace: st.secret_namespace.clone(),
                name: st.secret.clone(),
            });
            let given = || {
                secret
                    .clone()
                    .ok_or_else(|| FieldError::param(PARAM_SECRET, "required"))
            };
            if *encryption != Encryption::Ignore && image.expected_checksum().is_some() {
                // As Longhorn's mutator: a user's checksum cannot be known for a new encryption.
                tracing::warn!(
                    backing_image = image.name(),
                    "spec.checksum is ignored for encryption {encryption}"
                );
            }
            let (plan, result_secret, expected) = match encryption {
                Encryption::Ignore => {
                    if let Some(want) = image.expected_checksum() {
                        if want != st.checksum {
                            return Err(FieldError::new(
                                "spec.checksum",
                                format!(
                                    "an ignore clone has its source's checksum: {backing_image} has {}, the manifest says {want}",
                                    st.checksum
                                ),
                            ));
                        }
                    }
                    (
                        Plan::Copy { source: path },
                        source_secret,
                        Some(st.checksum.clone()),
                    )
                }
                Encryption::Encrypt => {
                    if let Some(s) = &source_secret {
                        return Err(FieldError::param(
                            PARAM_ENCRYPTION,
                            format!("cannot re-encrypt the backing image, {backing_image} is already encrypted (Secret {s})"),
                        ));
                    }
                    let id = given()?;
                    let params = secrets.params(&id, PARAM_SECRET)?;
                    (
                        Plan::Encrypt {
                            source: path,
                            params,
                        },
                        Some(id),
                        None,
                    )
                }
                Encryption::Decrypt => {
                    if source_secret.is_none() {
                        return Err(FieldError::param(
                            PARAM_ENCRYPTION,
                            format!("cannot re-decrypt the backing image, {backing_image} is already decrypted (it has no secret)"),
                        ));
                    }
                    let id = given()?;
                    let params = secrets.params(&id, PARAM_SECRET)?;
                    (
                        Plan::Decrypt {
                            source: path,
                            params,
                        },
                        None,
                        None,
                    )
                }
                Encryption::Rekey => {
                    let Some(old_id) = source_secret else {
                        return Err(FieldError::param(
                            PARAM_ENCRYPTION,
                            format!("cannot rekey the backing image, {backing_image} is not encrypted (it has no secret)"),
                        ));
                    };
                    let id = given()?;
                    let new = secrets.params(&id, PARAM_SECRET)?;
                    let old = secrets.params(&old_id, PARAM_BACKING_IMAGE).map_err(|e| {
                        FieldError::new(e.field, format!("the source's own Secret: {}", e.message))
                    })?;
                    (
                        Plan::Rekey {
                            source: path,
                            old,
                            new,
                        },
                        Some(id),
                        None,
                    )
                }
            };
            Ok(Admitted {
                plan,
                secret: result_secret,
                expected_checksum: expected,
                source_lock,
            })
        }
    }
}

/// A downloaded or uploaded image is encrypted only if its spec says by which Secret.
fn own_secret(image: &BackingImage) -> Option<SecretRef> {
    let name = image.spec.secret.trim();
    if name.is_empty() {
        return None;
    }
    let ns = match image.spec.secret_namespace.trim() {
        "" if image.metadata.namespace.is_empty() => "default".to_string(),
        "" => image.metadata.namespace.clone(),
        ns => ns.to_string(),
    };
    Some(SecretRef {
        namespace: ns,
        name: name.to_string(),
    })
}

/// Progress into the status record: at most every 250 ms, and only when the percentage moved.
struct RecordProgress<'a> {
    store: &'a Store,
    rec: BackingImage,
    last_write: Instant,
    last_percent: u8,
}

impl<'a> RecordProgress<'a> {
    fn new(store: &'a Store, rec: BackingImage) -> Self {
        Self {
            store,
            rec,
            last_write: Instant::now(),
            last_percent: 0,
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
            st.progress = percent;
        }
        if let Err(e) = self.store.write_record(&self.rec) {
            tracing::warn!(error = %e, "could not update the status record");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::longhorn::manifest::parse_backing_images;
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
        assert!(refused.iter().all(|r| matches!(&r.outcome, Outcome::Failed(m) if m.contains("spec.sourceParameters.backing-image"))));
    }
}
