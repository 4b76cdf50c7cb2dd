//! Status records: reading them (records of the previous format are upgraded), observing
//! them (an apply that died reads as failed; a ready file that changed is validated again),
//! and showing them as `bifs get -o yaml|json` does (the tables are the command line's own).
//!
//! Library entry points for other front ends (the HTTP server): [`list`] / [`get`] for the
//! objects, [`watch`] to be told of status changes, [`delete`] to remove one.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Serialize;

use crate::store::cfg::modification_time;
use crate::store::{LockMode, Store, StoreError};

use bifs_k8s::manifest::{
    BackingImage, BackingImageStatus, DiskFileStatus, Encryption, SourceType, State,
    DATA_ENGINE_V1, MANAGED_BY_LONGHORN, PARAM_ENCRYPTION,
};

/// The message of a record whose apply stopped without finishing (killed, machine down).
pub const INTERRUPTED: &str =
    "interrupted: the apply making it stopped before it finished; apply again to complete it";

#[derive(Debug, thiserror::Error)]
pub enum StatusError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("record of {name}: {message}")]
    Record { name: String, message: String },
    #[error("backing image {name} not found in {store}")]
    NotFound { name: String, store: String },
    #[error(
        "backing image {0} is busy (being applied, or cloned from); try again when that is done"
    )]
    Busy(String),
    #[error("backing image {0} is managed by Longhorn (backing-image-manager's files on this disk): bifs never deletes or changes it; delete the BackingImage in Longhorn")]
    LonghornManaged(String),
}

/// The record of `name` in the current shape, if there is one.
pub fn read(store: &Store, name: &str) -> Result<Option<BackingImage>, StatusError> {
    let Some(value) = store.read_record(name)? else {
        return Ok(None);
    };
    upgrade(value, store.disk_uuid())
        .map(Some)
        .map_err(|message| StatusError::Record {
            name: name.into(),
            message,
        })
}

/// Reads a record of either shape. Before, bifs kept one flat status (`state`, `progress`,
/// `message`, `secret`, `secretNamespace` beside the sizes); now the state is per disk in
/// `diskFileStatusMap` and the Secret is in the spec, as in Longhorn.
pub fn upgrade(mut value: serde_json::Value, disk_uuid: &str) -> Result<BackingImage, String> {
    let old = value
        .get("status")
        .and_then(|s| s.as_object())
        .filter(|s| s.contains_key("state") && !s.contains_key("diskFileStatusMap"))
        .cloned();
    if old.is_some() {
        if let Some(status) = value.get_mut("status").and_then(|s| s.as_object_mut()) {
            for k in ["state", "progress", "message", "secret", "secretNamespace"] {
                status.remove(k);
            }
        }
    }
    let mut rec: BackingImage = serde_json::from_value(value).map_err(|e| e.to_string())?;
    let Some(old) = old else {
        return Ok(rec);
    };
    let text = |k: &str| {
        old.get(k)
            .and_then(|v| v.as_str())
            .unwrap_or_default()
            .to_string()
    };
    let state: State = old
        .get("state")
        .cloned()
        .and_then(|v| serde_json::from_value(v).ok())
        .unwrap_or_default();
    let progress = old
        .get("progress")
        .and_then(|v| v.as_u64())
        .unwrap_or(0)
        .min(100) as u8;
    let st = rec.status.get_or_insert_with(Default::default);
    st.disk_file_status_map.insert(
        disk_uuid.to_string(),
        DiskFileStatus {
            data_engine: DATA_ENGINE_V1.into(),
            state,
            progress,
            message: text("message"),
            last_state_transition_time: String::new(),
        },
    );
    let checksum = st.checksum.clone();
    if rec.spec.secret.is_empty() {
        rec.spec.secret = text("secret");
        rec.spec.secret_namespace = text("secretNamespace");
    }
    // The spec as the mutator would have left it (the source facts are this record's own).
    let facts = bifs_k8s::manifest::SourceFacts {
        secret: rec.spec.secret.clone(),
        secret_namespace: rec.spec.secret_namespace.clone(),
        checksum,
    };
    let encryption = rec
        .spec
        .source_parameters
        .get(PARAM_ENCRYPTION)
        .and_then(|e| Encryption::parse(e));
    if SourceType::parse(&rec.spec.source_type) == Some(SourceType::Clone) {
        rec.spec = rec.mutated_spec(Some(&facts), disk_uuid);
        if encryption == Some(Encryption::Decrypt) {
            rec.spec.secret.clear();
            rec.spec.secret_namespace.clear();
        }
    } else {
        rec.spec = rec.mutated_spec(None, disk_uuid);
    }
    Ok(rec)
}

/// The record as it stands: an interrupted apply is reported as failed (see
/// [`mark_interrupted`]); a ready file whose mtime moved is validated again (see
/// [`revalidate`]).
pub fn observe(store: &Store, rec: BackingImage) -> BackingImage {
    mark_interrupted(store, revalidate(store, rec))
}

/// A non-settled state with nobody holding the image's lock means the apply died: reported
/// as failed (the record itself is left for the next apply). Reads only the lock, never the
/// image, so it is cheap enough for every scrape of `/metrics`. An upload is the exception:
/// between its requests nobody holds it, and it waits, `in-progress`, for the rest of its
/// bytes (its message says where to resume).
pub fn mark_interrupted(store: &Store, mut rec: BackingImage) -> BackingImage {
    let disk = store.disk_uuid().to_string();
    let upload = rec.spec.source_type.trim() == "upload" && rec.spec.source_parameters.is_empty();
    if let Some(st) = rec.status.as_mut() {
        let f = st.file();
        if !upload && !f.state.is_settled() && store.is_busy(&rec.metadata.name) == Some(false) {
            st.set_file(&disk_key(st, &disk), State::Failed, f.progress, INTERRUPTED);
        }
    }
    rec
}

/// The key of the disk file in `st` (the store's disk, or the key an old record was upgraded
/// under).
fn disk_key(st: &BackingImageStatus, disk: &str) -> String {
    st.disk_file_status_map
        .keys()
        .next()
        .cloned()
        .unwrap_or_else(|| disk.to_string())
}

/// Longhorn's ready-file validation: when `backing`'s mtime is not the one `backing.cfg`
/// recorded, the disk file goes `unknown`, the file is hashed again, and it is `ready` again
/// (the cfg takes the new time) or `failed` if the checksum differs. Done under the image's
/// exclusive lock; when the lock is taken (an apply or clone is running) the record is
/// returned as it is.
pub fn revalidate(store: &Store, rec: BackingImage) -> BackingImage {
    let Some(st) = rec.status.as_ref() else {
        return rec;
    };
    if st.state() != State::Ready || st.uuid.is_empty() {
        return rec;
    }
    let name = rec.metadata.name.clone();
    let uuid = st.uuid.clone();
    let backing = store.backing_path(&name, &uuid);
    let Some(cfg) = store.read_cfg(&name, &uuid) else {
        return rec;
    };
    let Ok(now) = modification_time(&backing) else {
        return rec;
    };
    if cfg.modification_time.is_empty() || now == cfg.modification_time {
        return rec;
    }
    let lock = match store.lock(&name, LockMode::Exclusive, false) {
        Ok(Some(l)) => l,
        _ => return rec,
    };
    // Read again under the lock: another process may have validated it meanwhile.
    let mut rec = match read(store, &name) {
        Ok(Some(r)) => r,
        _ => return rec,
    };
    let disk = rec
        .status
        .as_ref()
        .map(|st| disk_key(st, store.disk_uuid()))
        .unwrap_or_default();
    let Some(mut cfg) = store.read_cfg(&name, &uuid) else {
        return rec;
    };
    if cfg.modification_time == now {
        return rec;
    }
    let message =
        format!("ready file is suddenly modified at {now}, need to re-check the checksum");
    tracing::warn!(backing_image = %name, file = %backing.display(), "{message}");
    if let Some(st) = rec.status.as_mut() {
        st.set_file(&disk, State::Unknown, 100, &message);
    }
    let _ = store.write_record(&name, &rec);
    let previous = rec
        .status
        .as_ref()
        .map(|s| s.checksum.clone())
        .unwrap_or_default();
    let (state, message) = match crate::checksum::sha512_file(&backing) {
        Ok(sum) if sum == previous => (State::Ready, String::new()),
        Ok(sum) => (
            State::Failed,
            format!("ready file is modified at {now} with a different checksum {sum}, previous checksum {previous}"),
        ),
        Err(e) => (
            State::Failed,
            format!("failed to re-calculate checksum after ready file being modified, will mark the file as failed: {e}"),
        ),
    };
    if let Some(st) = rec.status.as_mut() {
        st.set_file(&disk, state, 100, &message);
    }
    if state == State::Ready {
        cfg.modification_time = now;
        if let Err(e) = store.write_cfg(&name, &uuid, &cfg) {
            tracing::warn!(backing_image = %name, error = %e, "could not update backing.cfg");
        }
    } else {
        tracing::error!(backing_image = %name, "{message}");
    }
    if let Err(e) = store.write_record(&name, &rec) {
        tracing::warn!(backing_image = %name, error = %e, "could not update the status record");
    }
    drop(lock);
    rec
}

/// Whether `backing`'s mtime is no longer the one its `backing.cfg` recorded.
pub fn file_changed(store: &Store, name: &str, uuid: &str) -> bool {
    let Some(cfg) = store.read_cfg(name, uuid) else {
        return false;
    };
    !cfg.modification_time.is_empty()
        && modification_time(&store.backing_path(name, uuid))
            .is_ok_and(|now| now != cfg.modification_time)
}

/// All records, or the one named; observed. The image directories of the disk that have no
/// bifs record (backing-image-manager filled them) are listed too, after the records, as
/// [`longhorn_managed`] shows them.
pub fn list(store: &Store, name: Option<&str>) -> Result<Vec<BackingImage>, StatusError> {
    let names = match name {
        Some(n) => vec![n.to_string()],
        None => store.record_names()?,
    };
    let mut out = Vec::new();
    for n in &names {
        if let Some(r) = read(store, n)? {
            out.push(observe(store, r));
        }
    }
    let recorded: std::collections::BTreeSet<String> =
        out.iter().map(|b| b.metadata.name.clone()).collect();
    let disk = match store.disk_images() {
        Ok(d) => d,
        Err(e) => {
            tracing::warn!(store = %store.root().display(), error = %e, "cannot list the disk's image directories");
            Vec::new()
        }
    };
    for img in disk {
        if recorded.contains(&img.name) || name.is_some_and(|n| n != img.name) {
            continue;
        }
        out.push(from_disk(store, &img));
    }
    Ok(out)
}

/// The BackingImage of an image directory of the disk that bifs has no record of (Longhorn's
/// backing-image-manager filled it), if there is one by that name.
pub fn longhorn_managed(store: &Store, name: &str) -> Option<BackingImage> {
    let images = store.disk_images().ok()?;
    images
        .iter()
        .find(|i| i.name == name)
        .map(|i| from_disk(store, i))
}

/// What an image directory backing-image-manager filled says of itself, in a BackingImage's
/// shape: its `backing.cfg` (name, uuid, sizes, checksum) when the cfg describes the file as
/// it is (`ready`), else `unknown` with Longhorn's words for a file changed since. Marked
/// [`MANAGED_BY_LONGHORN`] and labelled as Longhorn labels its objects; its spec is what can
/// be known from the disk (nothing of its source).
pub fn from_disk(store: &Store, img: &crate::store::DiskImage) -> BackingImage {
    let disk = store.disk_uuid().to_string();
    let backing = img.backing();
    let file_size = std::fs::metadata(&backing).map(|m| m.len()).unwrap_or(0);
    let cfg = img.cfg.clone().unwrap_or_default();
    let current = img.cfg_current();
    let mut st = BackingImageStatus {
        uuid: img.uuid.clone(),
        size: file_size,
        virtual_size: u64::try_from(cfg.virtual_size)
            .ok()
            .filter(|v| *v > 0)
            .unwrap_or_else(|| super::source::virtual_size(&backing, file_size)),
        real_size: u64::try_from(cfg.real_size)
            .ok()
            .filter(|v| *v > 0)
            .unwrap_or_else(|| crate::store::allocated(&backing).unwrap_or(0)),
        checksum: if current {
            cfg.current_checksum.clone()
        } else {
            String::new()
        },
        ..Default::default()
    };
    if current {
        st.set_file(&disk, State::Ready, 100, "");
    } else {
        let now = modification_time(&backing).unwrap_or_default();
        st.set_file(
            &disk,
            State::Unknown,
            100,
            &format!("ready file is suddenly modified at {now}, need to re-check the checksum (backing-image-manager re-checks it; bifs does not touch Longhorn's files)"),
        );
    }
    let mut labels = BTreeMap::new();
    for (k, v) in bifs_k8s::manifest::LONGHORN_LABELS {
        labels.insert(k.to_string(), v.to_string());
    }
    let annotations = BTreeMap::from([(
        MANAGED_BY_LONGHORN.0.to_string(),
        MANAGED_BY_LONGHORN.1.to_string(),
    )]);
    let mut spec = bifs_k8s::manifest::BackingImageSpec {
        checksum: cfg.expected_checksum.clone(),
        min_number_of_copies: bifs_k8s::manifest::DEFAULT_MIN_NUMBER_OF_COPIES,
        data_engine: DATA_ENGINE_V1.into(),
        ..Default::default()
    };
    if !disk.is_empty() {
        spec.disk_file_spec_map.insert(
            disk.clone(),
            bifs_k8s::manifest::DiskFileSpec {
                eviction_requested: false,
                data_engine: DATA_ENGINE_V1.into(),
            },
        );
    }
    BackingImage {
        api_version: bifs_k8s::manifest::API_VERSION.into(),
        kind: bifs_k8s::manifest::KIND.into(),
        metadata: bifs_k8s::manifest::ObjectMeta {
            name: img.name.clone(),
            namespace: "longhorn-system".into(),
            labels,
            annotations,
        },
        spec,
        status: Some(st),
    }
}

/// Whether `b` is an image of the disk that Longhorn manages (listed, never changed by bifs).
pub fn is_longhorn_managed(b: &BackingImage) -> bool {
    b.metadata
        .annotations
        .get(MANAGED_BY_LONGHORN.0)
        .map(String::as_str)
        == Some(MANAGED_BY_LONGHORN.1)
}

/// One BackingImage, observed (a Longhorn-managed one too); `NotFound` when the store has
/// neither a record nor an image directory of that name.
pub fn get(store: &Store, name: &str) -> Result<BackingImage, StatusError> {
    list(store, Some(name))?
        .pop()
        .ok_or_else(|| StatusError::NotFound {
            name: name.into(),
            store: store.root().display().to_string(),
        })
}

/// Polls the records every `interval` and calls `changed` with each image whose status
/// changed (every image the first time). Stops when `changed` returns false, or when every
/// image shown is settled and `until_settled` is set.
pub fn watch(
    store: &Store,
    name: Option<&str>,
    interval: Duration,
    until_settled: bool,
    mut changed: impl FnMut(&[BackingImage]) -> bool,
) -> Result<(), StatusError> {
    let mut seen: BTreeMap<String, String> = BTreeMap::new();
    loop {
        let images = list(store, name)?;
        let mut news = Vec::new();
        for b in &images {
            let key =
                serde_json::to_string(&b.status.as_ref().map(|s| s.file())).unwrap_or_default();
            if seen.get(b.metadata.name.as_str()) != Some(&key) {
                seen.insert(b.metadata.name.clone(), key);
                news.push(b.clone());
            }
        }
        if !news.is_empty() && !changed(&news) {
            return Ok(());
        }
        let settled = images
            .iter()
            .all(|b| b.status.as_ref().is_some_and(|s| s.state().is_settled()));
        if until_settled && !images.is_empty() && settled {
            return Ok(());
        }
        std::thread::sleep(interval);
    }
}

/// Deletes a backing image: its directory and its record. Refused while it is applied or
/// cloned from.
pub fn delete(store: &Store, name: &str) -> Result<(), StatusError> {
    let Some(_lock) = store.lock(name, LockMode::Exclusive, false)? else {
        return Err(StatusError::Busy(name.into()));
    };
    let Some(rec) = read(store, name)? else {
        if longhorn_managed(store, name).is_some() {
            return Err(StatusError::LonghornManaged(name.into()));
        }
        return Err(StatusError::NotFound {
            name: name.into(),
            store: store.root().display().to_string(),
        });
    };
    if let Some(uuid) = rec
        .status
        .as_ref()
        .map(|s| s.uuid.as_str())
        .filter(|u| !u.is_empty())
    {
        store.remove_dir(name, uuid)?;
    }
    store.remove_record(name)?;
    store.remove_ticket(name)?;
    Ok(())
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct List<'a> {
    api_version: &'static str,
    kind: &'static str,
    items: &'a [BackingImage],
}

/// One object when a name was asked for, else a `v1` `List` (as kubectl prints).
pub fn to_yaml(images: &[BackingImage], single: bool) -> Result<String, serde_norway::Error> {
    match images {
        [one] if single => serde_norway::to_string(one),
        _ => serde_norway::to_string(&List {
            api_version: "v1",
            kind: "List",
            items: images,
        }),
    }
}

pub fn to_json(images: &[BackingImage], single: bool) -> Result<String, serde_json::Error> {
    match images {
        [one] if single => serde_json::to_string_pretty(one),
        _ => serde_json::to_string_pretty(&List {
            api_version: "v1",
            kind: "List",
            items: images,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_record_of_the_previous_format_is_upgraded() {
        let old = serde_json::json!({
            "apiVersion": "longhorn.io/v1beta2", "kind": "BackingImage",
            "metadata": {"name": "enc", "namespace": "longhorn-system"},
            "spec": {"sourceType": "clone", "sourceParameters": {"backing-image": "parrot",
                "encryption": "encrypt", "secret": "longhorn-crypto", "secret-namespace": "longhorn-system"}},
            "status": {"state": "ready", "progress": 100, "uuid": "1a2b3c4d", "size": 5,
                "virtualSize": 5, "realSize": 4096, "checksum": "ab",
                "secret": "longhorn-crypto", "secretNamespace": "longhorn-system"}
        });
        let rec = upgrade(old, "disk-1").unwrap();
        assert_eq!(rec.spec.secret, "longhorn-crypto");
        assert_eq!(rec.spec.secret_namespace, "longhorn-system");
        assert_eq!(rec.spec.checksum, "");
        assert_eq!(rec.spec.data_engine, "v1");
        let st = rec.status.unwrap();
        assert_eq!(st.uuid, "1a2b3c4d");
        assert_eq!(st.checksum, "ab");
        let f = &st.disk_file_status_map["disk-1"];
        assert_eq!((f.state, f.progress), (State::Ready, 100));
        // The current shape reads as it is.
        let again = upgrade(
            serde_json::to_value(upgrade(serde_json::json!({"apiVersion": "longhorn.io/v1beta2",
                "kind": "BackingImage", "metadata": {"name": "p"}, "spec": {"sourceType": "download"},
                "status": {"state": "failed", "message": "m"}}), "d").unwrap()).unwrap(),
            "other",
        )
        .unwrap();
        assert_eq!(again.status.unwrap().disk_file_status_map["d"].message, "m");
    }
}
