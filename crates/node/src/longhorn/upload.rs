//! Uploads: an image's bytes sent by a remote client, in one request or several (a dropped
//! upload resumes at the offset the store holds), written in place in the store.
//!
//! - **One writer per name.** [`begin`] takes the image's exclusive lock without waiting: a
//!   second upload, apply or delete of the same name while one runs is [`UploadError::Busy`].
//!   The lock is held until the [`Upload`] is dropped.
//! - **In place, no second copy.** A Longhorn disk receives the bytes in the image directory's
//!   `backing.tmp`, finished as an apply finishes (`backing.cfg`, rename to `backing`); a flat
//!   store in `DIR/.<name>.upload`, renamed to `DIR/<name>` (never over an existing file). A
//!   flat store stays flat.
//! - **One client per upload.** The request that starts an upload (offset 0) gets an id
//!   (its own `upload=ID` when it gives one, else a new one); the store keeps it with the
//!   announced size and checksum ([`UploadTicket`]). Every resume must present that id and
//!   may not change the size or the checksum ([`UploadError::Conflict`]): two clients never
//!   merge their bytes into one image, and the checksum given at the start is verified at
//!   the end even when the last part does not repeat it.
//! - **Space first.** The bytes still to come must fit in the store's free space before any is
//!   taken ([`UploadError::NoSpace`], with what is free).
//! - **A failure leaves nothing.** A write error (the disk filled up after all), more bytes
//!   than announced, or a checksum that does not match removes what was received; the record
//!   says `failed` with the reason, so the name is free for the next upload and `delete`
//!   works. A request that ends early (the client stopped, or sends the rest later) keeps the
//!   bytes for the resume: the image stays `in-progress`, its message says where to resume.

use std::fs::File;
use std::io::{self, Seek, SeekFrom, Write};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use bifs_k8s::manifest::{BackingImage, BackingImageStatus, FieldError, State, PARAM_PATH};
use bifs_k8s::SecretRef;

use super::apply::{new_uuid, node_name, set_state, Secrets};
use super::source::virtual_size;
use super::status;
use crate::store::upload::UploadTicket;
use crate::store::{allocated, BackingCfg, Layout, Lock, LockMode, Store, StoreError};

/// How often the record's progress is written while bytes arrive.
const PROGRESS_EVERY: Duration = Duration::from_secs(1);

/// One upload request: the image as the request describes it (name, checksum, the dialog's
/// spec fields; `sourceType: upload`), and where its bytes sit in an image of `size` bytes.
#[derive(Debug, Clone)]
pub struct UploadRequest {
    pub image: BackingImage,
    pub offset: u64,
    pub size: u64,
    /// The upload's id: required to resume (offset > 0); at offset 0 the client's choice of
    /// id (else one is made).
    pub upload_id: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum UploadError {
    /// The manifest or its Secret is refused; nothing was written.
    #[error("{0}")]
    Refused(String),
    /// Another upload, apply or delete holds the name.
    #[error("{}", super::apply::busy(.0))]
    Busy(String),
    #[error("backing image {0} already exists; delete it first")]
    Exists(String),
    /// The request does not belong to the upload under way (another client's id, a
    /// different size or checksum), or the name is Longhorn's; nothing was written.
    #[error("{0}")]
    Conflict(String),
    #[error("upload offset {given} does not follow the {have} bytes received so far")]
    Offset { given: u64, have: u64 },
    #[error(
        "insufficient storage: the upload needs {need} more bytes and the store has {free} free"
    )]
    NoSpace { need: u64, free: u64 },
    #[error("size: more than the announced {size} bytes were sent; the upload was discarded")]
    TooLong { size: u64 },
    /// All bytes arrived but the image was refused (a checksum mismatch); it was removed.
    #[error("{0}")]
    Failed(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl UploadError {
    /// The message for a remote client: no server path.
    pub fn public_message(&self) -> String {
        match self {
            UploadError::Store(e) => e.public_message(),
            e => e.to_string(),
        }
    }
}

/// What a request made of the upload.
#[derive(Debug)]
pub enum Finished {
    /// The request ended before the image did: resume at `offset`.
    Partial { offset: u64 },
    /// The image is complete and stored; the object as `get` shows it.
    Complete(Box<BackingImage>),
}

/// An upload under way: the lock, the file, where the next byte goes.
pub struct Upload {
    store: Store,
    _lock: Lock,
    name: String,
    /// The id a resume presents.
    id: String,
    file: File,
    path: PathBuf,
    at: u64,
    size: u64,
    /// Computed as the bytes arrive when the upload started at 0 (a resumed one is hashed
    /// from the file when complete).
    hasher: Option<bifs_sys::sha512::Sha512>,
    expected: Option<String>,
    target: Target,
    last_progress: Instant,
    /// Set once the upload failed and its bytes were removed.
    failed: bool,
}

enum Target {
    Disk {
        uuid: String,
        disk: String,
        rec: Box<BackingImage>,
    },
    Flat {
        request: Box<BackingImage>,
    },
}

/// The manifest checks Longhorn's webhook makes, on the image an upload makes. bifs's own
/// `sourceType: upload` manifests name a local file (`path`); an uploaded image has none.
fn validate(image: &BackingImage) -> Result<(), UploadError> {
    if image.spec.source_type.trim() != "upload" {
        return Err(UploadError::Refused(
            FieldError::new("spec.sourceType", "an upload is sourceType upload").to_string(),
        ));
    }
    let mut checked = image.clone();
    checked
        .spec
        .source_parameters
        .insert(PARAM_PATH.into(), "-".into());
    checked
        .validate()
        .map(|_| ())
        .map_err(|e| UploadError::Refused(e.to_string()))
}

fn io_err(what: &'static str, path: &std::path::Path) -> impl FnOnce(io::Error) -> StoreError {
    let path = path.to_path_buf();
    move |error| StoreError::Io { what, path, error }
}

/// Starts (or resumes) an upload into `store`, opened for writes in the layout it is served
/// in ([`Store::open_for_writes`]). Takes the name's lock without waiting.
pub fn begin(
    store: Store,
    req: UploadRequest,
    secrets: &Secrets<'_>,
) -> Result<Upload, UploadError> {
    let mut req = req;
    validate(&req.image)?;
    let name = req.image.name().to_string();
    let Some(lock) = store.lock(&name, LockMode::Exclusive, false)? else {
        return Err(UploadError::Busy(name));
    };
    let ticket = if req.offset > 0 {
        resume_ticket(&store, &name, &mut req)?
    } else {
        UploadTicket {
            id: start_id(req.upload_id.as_deref())?,
            size: req.size,
            checksum: req.image.spec.checksum.trim().to_string(),
            uuid: String::new(),
        }
    };
    let expected = req.image.expected_checksum();
    match store.layout() {
        Layout::Longhorn => begin_disk(store, lock, req, secrets, name, expected, ticket),
        Layout::Flat => begin_flat(store, lock, req, name, expected, ticket),
    }
}

/// The shortest and longest id a client may choose for its upload.
const ID_LEN: std::ops::RangeInclusive<usize> = 16..=64;

/// The id of an upload that starts: the client's (checked), else a new random one.
fn start_id(given: Option<&str>) -> Result<String, UploadError> {
    match given.map(str::trim).filter(|g| !g.is_empty()) {
        None => Ok(uuid::Uuid::new_v4().simple().to_string()),
        Some(id)
            if ID_LEN.contains(&id.len())
                && id
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_') =>
        {
            Ok(id.to_string())
        }
        Some(_) => Err(UploadError::Refused(format!(
            "upload: an upload id is {} to {} letters, digits, '-' or '_'",
            ID_LEN.start(),
            ID_LEN.end()
        ))),
    }
}

/// The upload a resume continues: it must present the id its start got, and announce the
/// same size and checksum (a resume that gives no checksum gets the start's, verified at
/// the end).
fn resume_ticket(
    store: &Store,
    name: &str,
    req: &mut UploadRequest,
) -> Result<UploadTicket, UploadError> {
    let Some(ticket) = store.read_ticket(name)? else {
        // No upload of the name is under way: start at 0.
        return Err(UploadError::Offset {
            given: req.offset,
            have: 0,
        });
    };
    if req.upload_id.as_deref().map(str::trim) != Some(ticket.id.as_str()) {
        return Err(UploadError::Conflict(format!(
            "an upload of {name} from another client is in progress; resume with its id \
             (upload=ID, as its first answer gave it), or start again at offset 0"
        )));
    }
    if req.size != ticket.size {
        return Err(UploadError::Conflict(format!(
            "size: the upload of {name} started with size={}, not {}; resume with the same \
             size, or start again at offset 0",
            ticket.size, req.size
        )));
    }
    let given = req.image.spec.checksum.trim().to_ascii_lowercase();
    if given.is_empty() {
        req.image.spec.checksum = ticket.checksum.clone();
    } else if given != ticket.checksum.to_ascii_lowercase() {
        let started = if ticket.checksum.is_empty() {
            "without a checksum".to_string()
        } else {
            format!("with checksum={}", ticket.checksum)
        };
        return Err(UploadError::Conflict(format!(
            "checksum: the upload of {name} started {started}; resume with the same \
             checksum (or none), or start again at offset 0"
        )));
    }
    Ok(ticket)
}

fn check_space(store: &Store, need: u64) -> Result<(), UploadError> {
    let free = store
        .free_bytes()
        .map_err(io_err("statvfs of", store.root()))?;
    if need > free {
        return Err(UploadError::NoSpace { need, free });
    }
    Ok(())
}

/// The file a resumed upload continues, positioned at `offset` (what followed is dropped:
/// resending from an earlier offset replaces it).
fn resume_at(
    store: &Store,
    path: &std::path::Path,
    offset: u64,
) -> Result<(File, u64), UploadError> {
    let file = store.open_upload(path, false)?;
    let have = match &file {
        Some(f) => f.metadata().map_err(io_err("reading", path))?.len(),
        None => 0,
    };
    let Some(mut file) = file.filter(|_| offset <= have) else {
        return Err(UploadError::Offset {
            given: offset,
            have,
        });
    };
    file.set_len(offset).map_err(io_err("truncating", path))?;
    file.seek(SeekFrom::Start(offset))
        .map_err(io_err("seeking", path))?;
    Ok((file, have))
}

fn begin_disk(
    store: Store,
    lock: Lock,
    req: UploadRequest,
    secrets: &Secrets<'_>,
    name: String,
    expected: Option<String>,
    mut ticket: UploadTicket,
) -> Result<Upload, UploadError> {
    let disk = store.disk_uuid().to_string();
    let existing = status::read(&store, &name).map_err(|e| match e {
        status::StatusError::Store(e) => UploadError::Store(e),
        other => UploadError::Failed(other.to_string()),
    })?;
    // We hold the exclusive lock: a record that is not ready is nobody's work in progress
    // (a failed or interrupted upload or apply), so it may be resumed or replaced.
    if let Some(r) = &existing {
        let st = r.status.as_ref().map(|s| s.state());
        if matches!(st, Some(State::Ready) | Some(State::Unknown)) {
            return Err(UploadError::Exists(name));
        }
    } else if status::longhorn_managed(&store, &name).is_some() {
        // backing-image-manager's image of that name: never taken over.
        return Err(UploadError::Conflict(
            super::apply::longhorn_managed_message(&name),
        ));
    }
    let spec = req.image.mutated_spec(None, &disk);
    if !spec.secret.is_empty() {
        let id = SecretRef {
            namespace: spec.secret_namespace.clone(),
            name: spec.secret.clone(),
        };
        secrets.params(&id, "secret").map_err(|e| {
            UploadError::Refused(FieldError::new("spec.secret", e.message).to_string())
        })?;
    }
    if req.offset > 0 {
        // The record of the upload the ticket names (the same directory, size and spec).
        let resumable = existing.as_ref().and_then(|r| {
            let st = r.status.as_ref()?;
            (r.spec.source_type == "upload" && st.uuid == ticket.uuid && st.size == req.size)
                .then_some(r)
        });
        let Some(rec) = resumable else {
            return Err(UploadError::Offset {
                given: req.offset,
                have: 0,
            });
        };
        if rec.spec != spec {
            return Err(UploadError::Conflict(format!(
                "the upload of {name} started with other spec fields (minNumberOfCopies, \
                 dataEngine, nodeSelector, diskSelector); resume with the same ones, or start \
                 again at offset 0"
            )));
        }
        let uuid = ticket.uuid.clone();
        let tmp = store.upload_tmp(&name, &uuid);
        let (file, _) = resume_at(&store, &tmp, req.offset)?;
        check_space(&store, req.size - req.offset)?;
        let mut rec = existing.unwrap_or_else(|| req.image.clone());
        set_state(
            &mut rec,
            &disk,
            State::InProgress,
            percent(req.offset, req.size),
            "",
        );
        store.write_record(&name, &rec)?;
        tracing::info!(backing_image = ?name, offset = req.offset, size = req.size, "upload resumed");
        return Ok(Upload {
            store,
            _lock: lock,
            name,
            id: ticket.id,
            file,
            path: tmp,
            at: req.offset,
            size: req.size,
            hasher: None,
            expected,
            target: Target::Disk {
                uuid,
                disk,
                rec: Box::new(rec),
            },
            last_progress: Instant::now(),
            failed: false,
        });
    }
    check_space(&store, req.size)?;
    // A retry keeps the directory name of the earlier attempt and starts it afresh.
    let uuid = existing
        .as_ref()
        .and_then(|r| r.status.as_ref())
        .map(|s| s.uuid.clone())
        .filter(|u| !u.is_empty())
        .unwrap_or_else(new_uuid);
    let mut status = BackingImageStatus {
        owner_id: node_name(),
        uuid: uuid.clone(),
        size: req.size,
        ..Default::default()
    };
    status.set_file(&disk, State::InProgress, 0, "");
    let rec = BackingImage {
        spec,
        status: Some(status),
        ..req.image.clone()
    };
    store.write_record(&name, &rec)?;
    let dir = store.prepare_dir(&name, &uuid)?;
    let (file, tmp) = store.create_tmp(&dir)?;
    ticket.uuid = uuid.clone();
    store.write_ticket(&name, &ticket)?;
    tracing::info!(backing_image = ?name, size = req.size, "upload started");
    Ok(Upload {
        store,
        _lock: lock,
        name,
        id: ticket.id,
        file,
        path: tmp,
        at: 0,
        size: req.size,
        hasher: Some(new_hasher()?),
        expected,
        target: Target::Disk {
            uuid,
            disk,
            rec: Box::new(rec),
        },
        last_progress: Instant::now(),
        failed: false,
    })
}

fn new_hasher() -> Result<bifs_sys::sha512::Sha512, UploadError> {
    bifs_sys::sha512::Sha512::new().map_err(|e| UploadError::Failed(format!("SHA-512: {e}")))
}

fn begin_flat(
    store: Store,
    lock: Lock,
    req: UploadRequest,
    name: String,
    expected: Option<String>,
    ticket: UploadTicket,
) -> Result<Upload, UploadError> {
    if store.flat_exists(&name)? {
        return Err(UploadError::Exists(name));
    }
    let partial = store.flat_upload_path(&name)?;
    let (file, hasher) = if req.offset > 0 {
        (resume_at(&store, &partial, req.offset)?.0, None)
    } else {
        check_space(&store, req.size)?;
        let file = store
            .open_upload(&partial, true)?
            .ok_or_else(|| UploadError::Failed("the upload file vanished".into()))?;
        store.write_ticket(&name, &ticket)?;
        (file, Some(new_hasher()?))
    };
    if req.offset > 0 {
        check_space(&store, req.size - req.offset)?;
    }
    Ok(Upload {
        store,
        _lock: lock,
        name,
        id: ticket.id,
        file,
        path: partial,
        at: req.offset,
        size: req.size,
        hasher,
        expected,
        target: Target::Flat {
            request: Box::new(req.image),
        },
        last_progress: Instant::now(),
        failed: false,
    })
}

fn percent(done: u64, total: u64) -> u8 {
    if total == 0 {
        return 0;
    }
    (done.saturating_mul(100) / total).min(100) as u8
}

impl Upload {
    /// Bytes of the image the store holds now.
    pub fn received(&self) -> u64 {
        self.at
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// The upload's id, which a resume presents (`upload=ID`).
    pub fn id(&self) -> &str {
        &self.id
    }

    /// Appends the next bytes. An all-zero chunk is not written (the file is extended over a
    /// hole, as Longhorn's download client does). On error the upload has failed and its
    /// bytes are gone.
    pub fn write(&mut self, chunk: &[u8]) -> Result<(), UploadError> {
        if self.failed {
            return Err(UploadError::Failed("the upload already failed".into()));
        }
        let len = chunk.len() as u64;
        if self.at.saturating_add(len) > self.size {
            let size = self.size;
            self.fail(&UploadError::TooLong { size }.to_string());
            return Err(UploadError::TooLong { size });
        }
        if let Some(h) = self.hasher.as_mut() {
            if let Err(e) = h.update(chunk) {
                let e = UploadError::Failed(format!("SHA-512: {e}"));
                self.fail(&e.to_string());
                return Err(e);
            }
        }
        let written = if chunk.iter().all(|&b| b == 0) {
            self.file
                .seek(SeekFrom::Current(len as i64))
                .and_then(|_| self.file.set_len(self.at + len))
        } else {
            self.file.write_all(chunk)
        };
        if let Err(e) = written {
            return Err(self.write_failed(e));
        }
        self.at += len;
        if self.last_progress.elapsed() >= PROGRESS_EVERY {
            self.last_progress = Instant::now();
            let p = percent(self.at, self.size);
            if let Target::Disk { rec, .. } = &mut self.target {
                if let Some(st) = rec.status.as_mut() {
                    st.set_progress(p);
                }
                if let Err(e) = self.store.write_record(&self.name, &**rec) {
                    tracing::warn!(error = %e, "could not update the status record");
                }
            }
        }
        Ok(())
    }

    /// A failed write: ENOSPC (or a quota) is [`UploadError::NoSpace`] with what is free now.
    fn write_failed(&mut self, e: io::Error) -> UploadError {
        let err = if matches!(e.raw_os_error(), Some(libc::ENOSPC) | Some(libc::EDQUOT)) {
            let free = self.store.free_bytes().unwrap_or(0);
            UploadError::NoSpace {
                need: self.size - self.at,
                free,
            }
        } else {
            UploadError::Store(io_err("writing", &self.path)(e))
        };
        self.fail(&err.public_message());
        err
    }

    /// The request's body ended (normally, or because the client went away): the image is
    /// complete, or the upload waits for the rest.
    pub fn finish(mut self) -> Result<Finished, UploadError> {
        if self.failed {
            return Err(UploadError::Failed("the upload failed".into()));
        }
        if self.at < self.size {
            return self.suspend();
        }
        if let Err(e) = self.file.sync_all() {
            return Err(self.write_failed(e));
        }
        let checksum = match self.hasher.take() {
            Some(h) => h
                .finish()
                .map(hex::encode)
                .map_err(|e| io::Error::other(e.to_string())),
            // Hashed from the open file (never again by its path).
            None => self
                .file
                .try_clone()
                .and_then(bifs_core::image::raw::RawFile::from_file)
                .and_then(|f| crate::checksum::sha512_hex(&f, |_| {})),
        };
        let checksum = match checksum {
            Ok(c) => c,
            Err(e) => return Err(self.write_failed(e)),
        };
        if let Some(expected) = self.expected.clone() {
            if expected != checksum {
                let message = FieldError::new(
                    "spec.checksum",
                    format!(
                        "{}; the file was removed",
                        super::apply::checksum_mismatch(&expected, &checksum)
                    ),
                )
                .to_string();
                self.fail(&message);
                return Err(UploadError::Failed(message));
            }
        }
        let bytes = self.at;
        let virtual_size = virtual_size(&self.path, bytes);
        let real_size = allocated(&self.path).unwrap_or(bytes);
        let result = match &mut self.target {
            Target::Disk { uuid, disk, rec } => {
                let cfg = BackingCfg {
                    uuid: uuid.clone(),
                    size: bytes as i64,
                    virtual_size: virtual_size as i64,
                    real_size: real_size as i64,
                    expected_checksum: self.expected.clone().unwrap_or_else(|| checksum.clone()),
                    current_checksum: checksum.clone(),
                    ..Default::default()
                };
                let dir = self.store.image_dir(&self.name, uuid);
                self.store.commit(&dir, cfg).map(|_| {
                    if let Some(st) = rec.status.as_mut() {
                        st.size = bytes;
                        st.virtual_size = virtual_size;
                        st.real_size = real_size;
                        st.checksum = checksum.clone();
                        st.set_file(disk, State::Ready, 100, "");
                        st.disk_last_ref_at_map
                            .entry(disk.clone())
                            .or_insert_with(bifs_k8s::time::rfc3339_now);
                    }
                    (**rec).clone()
                })
            }
            Target::Flat { request } => self.store.publish_flat(&self.path, &self.name).map(|_| {
                let mut rec = (**request).clone();
                let mut st = BackingImageStatus {
                    owner_id: node_name(),
                    size: bytes,
                    virtual_size,
                    real_size,
                    checksum: checksum.clone(),
                    ..Default::default()
                };
                st.set_file(self.store.disk_uuid(), State::Ready, 100, "");
                rec.status = Some(st);
                rec
            }),
        };
        let rec = match result {
            Ok(r) => r,
            Err(e) => {
                let message = e.public_message();
                self.fail(&message);
                return Err(if e.is_no_space() {
                    UploadError::NoSpace {
                        need: 0,
                        free: self.store.free_bytes().unwrap_or(0),
                    }
                } else {
                    UploadError::Store(e)
                });
            }
        };
        if matches!(self.target, Target::Disk { .. }) {
            self.store.write_record(&self.name, &rec)?;
        }
        if let Err(e) = self.store.remove_ticket(&self.name) {
            tracing::warn!(error = %e, "could not remove the upload's ticket");
        }
        tracing::info!(backing_image = ?self.name, size = bytes, "upload complete");
        Ok(Finished::Complete(Box::new(rec)))
    }

    /// Keeps what arrived for a resume and records where to resume (the image stays
    /// `in-progress`, waiting for the rest).
    fn suspend(mut self) -> Result<Finished, UploadError> {
        let _ = self.file.sync_data();
        let offset = self.at;
        let size = self.size;
        let name = self.name.clone();
        if let Target::Disk { disk, rec, .. } = &mut self.target {
            let message = waiting_message(&name, offset, size);
            set_state(
                rec,
                disk,
                State::InProgress,
                percent(offset, size),
                &message,
            );
            self.store.write_record(&name, &**rec)?;
        }
        tracing::info!(backing_image = ?name, offset, size, "upload paused: the request ended before the image");
        Ok(Finished::Partial { offset })
    }

    /// Removes the received bytes and records why (a Longhorn disk's record says `failed`).
    fn fail(&mut self, message: &str) {
        self.failed = true;
        // Emptied first: the file is still open here, and an unlinked open file keeps its
        // blocks, so a full disk would have no room left for the record that says why.
        let _ = self.file.set_len(0);
        tracing::warn!(backing_image = ?self.name, error = message, "upload failed; its bytes were removed");
        if let Err(e) = self.store.remove_ticket(&self.name) {
            tracing::warn!(error = %e, "could not remove the upload's ticket");
        }
        match &mut self.target {
            Target::Disk { uuid, disk, rec } => {
                self.store.discard(&self.name, uuid);
                set_state(rec, disk, State::Failed, 0, message);
                if let Err(e) = self.store.write_record(&self.name, &**rec) {
                    tracing::warn!(error = %e, "could not update the status record");
                }
            }
            Target::Flat { .. } => {
                if let Err(e) = self.store.remove_upload(&self.path) {
                    tracing::warn!(error = %e, "could not remove a failed upload");
                }
            }
        }
    }
}

/// The message of an upload waiting for the rest of its bytes.
pub fn waiting_message(name: &str, offset: u64, size: u64) -> String {
    format!(
        "upload waiting for the rest: {offset} of {size} bytes received; resume with PUT \
         /api/v1/uploads/{name}?offset={offset}&size={size}&upload=ID (the id the upload's \
         first answer gave), or delete it"
    )
}

/// How many bytes of `name`'s upload the store holds (where a dropped upload resumes).
pub fn received(store: &Store, name: &str) -> Result<u64, StoreError> {
    let path = match store.layout() {
        Layout::Flat => store.flat_upload_path(name)?,
        Layout::Longhorn => {
            let Ok(Some(rec)) = status::read(store, name) else {
                return Ok(0);
            };
            match rec.status.as_ref() {
                Some(st)
                    if rec.spec.source_type == "upload"
                        && !st.uuid.is_empty()
                        && st.state() != State::Ready =>
                {
                    store.upload_tmp(name, &st.uuid)
                }
                _ => return Ok(0),
            }
        }
    };
    // Never through a symlink: a link planted at the partial file is an error, not a size.
    match std::fs::symlink_metadata(&path) {
        Ok(m) if m.file_type().is_file() => Ok(m.len()),
        Ok(_) => Err(store.not_regular(&path)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(0),
        Err(e) => Err(io_err("reading", &path)(e)),
    }
}

/// Deletes `name` from a flat store: its partial upload and its file. Refused while another
/// request writes it.
pub fn delete_flat(store: &Store, name: &str) -> Result<bool, UploadError> {
    let Some(_lock) = store.lock(name, LockMode::Exclusive, false)? else {
        return Err(UploadError::Busy(name.into()));
    };
    let partial = store.flat_upload_path(name)?;
    let had_partial = std::fs::symlink_metadata(&partial).is_ok();
    store.remove_upload(&partial)?;
    store.remove_ticket(name)?;
    Ok(store.remove_flat(name)? || had_partial)
}
