//! The workflow's JSON API under `/api/v1`: the same BackingImage objects as
//! `bifs get -o json`, created with the same admission rules and messages as `bifs apply`,
//! a live stream of their status (Server-Sent Events), resumable uploads, and the names of
//! the loaded Secrets (never their values).
//!
//! The work is the library's (`longhorn::apply`, `longhorn::status`); this module only turns
//! requests into its calls and its outcomes into status codes. Every write needs the bearer
//! token (`super::authorize`).

use std::convert::Infallible;
use std::path::Path as FsPath;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use futures_util::StreamExt;
use serde::Deserialize;
use serde_json::json;

use bifs_k8s::manifest::{
    parse_backing_images, valid_name, BackingImage, BackingImageSpec, ObjectMeta, API_VERSION, KIND,
};
use bifs_node::longhorn::upload::{self, Finished, UploadError, UploadRequest};
use bifs_node::longhorn::{self, status, ApplyOptions, Outcome, StatusError};
use bifs_node::store::{Layout, Store, StoreError};

use super::{Access, AppState};
use bifs_k8s::Secret;

/// How long a create waits for the apply before answering 202: admission (the webhook's
/// checks) takes milliseconds, so a refusal is answered with its message, while a long copy
/// goes on in the background and shows in the status stream.
const ADMISSION_WAIT: Duration = Duration::from_millis(1500);
/// How often the status stream looks at the store.
const POLL: Duration = Duration::from_millis(300);
const SECTOR: u64 = 512;
/// How long a refused upload's remaining body is read (and dropped) before the answer.
const DRAIN_TIME: Duration = Duration::from_secs(10);

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/api/v1/backingimages", get(list).post(create))
        .route("/api/v1/backingimages/{name}", get(get_one).delete(delete))
        .route("/api/v1/uploads/{name}", get(upload_offset).put(upload))
        .route("/api/v1/secrets", get(secrets))
        .route("/api/v1/events", get(events))
        .route("/api/v1/node", get(node))
        .route("/api/v1/sign", axum::routing::post(sign))
}

/// Who this server is and how its views are reached: the base URL for Longhorn (its
/// `--advertise-url`, else the URL the request came in on), the node, and which views need a
/// signed URL (those that need the token: plaintext ones, and all of them without
/// `--public-read`). `ignore/` is signed under `--public-read` too: it is public only for a
/// LUKS image, and a signed URL works for any.
async fn node(State(s): State<AppState>, headers: HeaderMap) -> Result<Response, ApiError> {
    authorize(&s, &headers, Access::Read)?;
    let token = s.policy.token.is_some();
    Ok(Json(json!({
        "node": s.node.name,
        "advertiseUrl": s.node.advertise_url,
        "signedViews": if !token { vec![] } else if s.policy.public_read { vec!["ignore", "raw", "decrypt"] } else { vec!["ignore", "raw", "encrypt", "decrypt"] },
        "defaultExpirySeconds": super::signed::DEFAULT_EXPIRY.as_secs(),
    }))
    .into_response())
}

#[derive(Deserialize)]
struct SignRequest {
    /// The view's path (`/views/...`), as the URL will carry it.
    path: String,
    /// Seconds from now (default: a day).
    #[serde(default)]
    expires_in: Option<u64>,
}

/// Signs a view's path for a token holder: the URL to give Longhorn (which sends no token).
/// Only for the token holder (it grants plaintext reads), only for `/views/` paths.
async fn sign(
    State(s): State<AppState>,
    headers: HeaderMap,
    Json(req): Json<SignRequest>,
) -> Result<Response, ApiError> {
    authorize(&s, &headers, Access::Plaintext)?;
    if !req.path.starts_with("/views/") || req.path.contains(['?', '#']) {
        return Err(ApiError::BadRequest(
            "path must be a view's path, /views/..., without a query".into(),
        ));
    }
    let secs = req
        .expires_in
        .unwrap_or(super::signed::DEFAULT_EXPIRY.as_secs())
        .min(366 * 86400);
    let expires = super::signed::unix_now() + secs;
    let path = match &s.signer {
        Some(signer) => signer.sign_path(&req.path, expires),
        // No token: nothing needs a signature.
        None => req.path.clone(),
    };
    let url = s
        .node
        .advertise_url
        .as_ref()
        .map(|base| format!("{}{path}", base.trim_end_matches('/')));
    Ok(Json(json!({ "path": path, "url": url, "expires": expires })).into_response())
}

#[derive(Debug, thiserror::Error)]
enum ApiError {
    /// Refused by the manifest checks or the admission rules; the message names the field.
    #[error("{0}")]
    Refused(String),
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    BadRequest(String),
    #[error("upload offset {given} does not follow the {have} bytes received so far")]
    Offset { given: u64, have: u64 },
    /// Refused by the access policy (no or wrong token): serve's answer as it is.
    #[error("{}", .0.message)]
    Denied(super::HttpError),
    /// The store has not the room the request needs.
    #[error("{0}")]
    NoSpace(String),
    /// Something failed on the server; the message carries no server path (the log has the
    /// full error).
    #[error("{0}")]
    Internal(String),
}

impl ApiError {
    /// An internal error: logged in full, answered without the server's paths.
    fn internal(public: String, full: &dyn std::fmt::Display) -> Self {
        tracing::error!(error = %full, "API request failed");
        ApiError::Internal(public)
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        ApiError::internal(e.public_message(), &e)
    }
}

impl From<StatusError> for ApiError {
    fn from(e: StatusError) -> Self {
        match e {
            StatusError::NotFound { name, .. } => {
                ApiError::NotFound(format!("backing image {name} not found"))
            }
            StatusError::Busy(_) | StatusError::LonghornManaged(_) => {
                ApiError::Conflict(e.to_string())
            }
            StatusError::Store(e) => e.into(),
            e => ApiError::internal(e.to_string(), &e),
        }
    }
}

impl From<UploadError> for ApiError {
    fn from(e: UploadError) -> Self {
        match e {
            UploadError::Refused(m) | UploadError::Failed(m) => ApiError::Refused(m),
            UploadError::TooLong { .. } => ApiError::Refused(e.to_string()),
            UploadError::Busy(_) | UploadError::Exists(_) | UploadError::Conflict(_) => {
                ApiError::Conflict(e.to_string())
            }
            UploadError::Offset { given, have } => ApiError::Offset { given, have },
            UploadError::NoSpace { .. } => ApiError::NoSpace(e.to_string()),
            UploadError::Store(e) if e.is_no_space() => {
                ApiError::NoSpace(format!("insufficient storage: {}", e.public_message()))
            }
            UploadError::Store(e) => e.into(),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        if let ApiError::Denied(e) = self {
            return e.into_response();
        }
        let code = match &self {
            ApiError::Refused(_) => StatusCode::UNPROCESSABLE_ENTITY,
            ApiError::Conflict(_) | ApiError::Offset { .. } => StatusCode::CONFLICT,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ApiError::Denied(e) => e.status,
            ApiError::NoSpace(_) => StatusCode::INSUFFICIENT_STORAGE,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        };
        let mut body = json!({ "message": self.to_string() });
        if let ApiError::Offset { have, .. } = self {
            body["offset"] = have.into();
        }
        (code, Json(body)).into_response()
    }
}

fn authorize(state: &AppState, headers: &HeaderMap, access: Access) -> Result<(), ApiError> {
    state.authorize(headers, access).map_err(ApiError::Denied)
}

/// The Secrets, read again from the `--secrets` paths for each apply: a Secret added to the
/// directory is usable without a restart. Their values stay in this process.
fn load_secrets(state: &AppState) -> Result<Vec<Secret>, ApiError> {
    let mut out = Vec::new();
    for p in &state.secrets_paths {
        out.extend(
            bifs_k8s::load_secrets(p)
                .map_err(|e| ApiError::Internal(format!("loading Secrets: {e}")))?,
        );
    }
    Ok(out)
}

/// Store work is blocking file I/O (and copies): off the async threads.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, ApiError> + Send + 'static,
) -> Result<T, ApiError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| ApiError::internal("the request's worker stopped".into(), &e))?
}

/// The names the API takes: a backing image name (Longhorn's rules) of at most 63
/// characters. Longer names never exist in a store (an apply shortens names past 40, as
/// Longhorn's webhook does), so they are refused before the disk is looked at.
fn api_name(name: &str) -> bool {
    name.len() <= MAX_NAME && valid_name(name)
}

/// The longest name an upload may have (a Kubernetes label value's limit).
const MAX_NAME: usize = 63;

fn json_text(code: StatusCode, text: String) -> Response {
    (code, [(header::CONTENT_TYPE, "application/json")], text).into_response()
}

/// A GET's JSON answer about live state: a strong ETag of its bytes and `Cache-Control:
/// no-cache` (RFC 9111 5.2.2.4), so a poller may keep it and gets a 304 while nothing changed,
/// and no cache ever serves it without asking.
fn json_current(request: &HeaderMap, text: String) -> Response {
    let etag = super::conditional::etag_of(text.as_bytes());
    super::conditional::fixed(request, &etag, "application/json", text)
}

fn records(root: &FsPath, name: Option<&str>) -> Result<Vec<BackingImage>, ApiError> {
    let store = Store::open_read_only(root)?;
    Ok(status::list(&store, name)?)
}

fn one_json(images: &[BackingImage], single: bool) -> Result<String, ApiError> {
    status::to_json(images, single).map_err(|e| ApiError::Internal(e.to_string()))
}

async fn list(State(s): State<AppState>, headers: HeaderMap) -> Result<Response, ApiError> {
    authorize(&s, &headers, Access::Read)?;
    let text = blocking(move || one_json(&records(&s.store_root, None)?, false)).await?;
    Ok(json_current(&headers, text))
}

async fn get_one(
    State(s): State<AppState>,
    headers: HeaderMap,
    Path(name): Path<String>,
) -> Result<Response, ApiError> {
    authorize(&s, &headers, Access::Read)?;
    Ok(json_current(&headers, record_json(&s, name).await?))
}

async fn record_json(s: &AppState, name: String) -> Result<String, ApiError> {
    let root = s.store_root.clone();
    blocking(move || {
        if !api_name(&name) {
            return Err(ApiError::NotFound(format!(
                "backing image {name:?} not found"
            )));
        }
        let images = records(&root, Some(&name))?;
        if images.is_empty() {
            return Err(ApiError::NotFound(format!(
                "backing image {name} not found"
            )));
        }
        one_json(&images, true)
    })
    .await
}

async fn create(
    State(s): State<AppState>,
    headers: HeaderMap,
    body: String,
) -> Result<Response, ApiError> {
    authorize(&s, &headers, Access::Write)?;
    s.policy
        .check_manifest_type(&headers)
        .map_err(|e| ApiError::Denied(e.into()))?;
    let mut images = parse_backing_images(&body, FsPath::new("request body"))
        .map_err(|e| ApiError::Refused(e.to_string()))?;
    if images.len() != 1 {
        return Err(ApiError::BadRequest(format!(
            "the body must hold exactly one BackingImage (YAML or JSON); it holds {}",
            images.len()
        )));
    }
    let image = images.remove(0);
    if image.spec.source_type.trim() == "upload" {
        return Err(ApiError::Refused(format!(
            "spec.sourceType: an upload sends its bytes with PUT /api/v1/uploads/{}?offset=0&size=N",
            image.name()
        )));
    }
    if s.layout() == Layout::Flat {
        return Err(ApiError::Conflict(
            "the store is a flat directory of images: downloads and clones are made in a \
             Longhorn disk store (one with backing-images/), so the flat store stays as it is; \
             uploads are stored as plain files"
                .into(),
        ));
    }
    run_apply(&s, image).await
}

/// How the server applies for remote callers: their downloads policed, and no waiting for
/// another writer of the same name (409 instead).
fn remote_apply(s: &AppState) -> ApplyOptions {
    ApplyOptions {
        downloads: s.limits.downloads.clone(),
        wait: false,
    }
}

/// Applies one image in the background and answers with its outcome, or with 202 when the
/// copy is still going after the admission wait.
async fn run_apply(s: &AppState, image: BackingImage) -> Result<Response, ApiError> {
    // The manifest checks here, before anything is recorded: a refused create leaves nothing
    // behind, as Longhorn's webhook refuses an object before it exists.
    image
        .validate()
        .map_err(|e| ApiError::Refused(e.to_string()))?;
    let name = image.name().to_string();
    let (tx, rx) = tokio::sync::oneshot::channel();
    let st = s.clone();
    let opts = remote_apply(s);
    tokio::task::spawn_blocking(move || {
        let opened =
            load_secrets(&st).and_then(|secrets| Ok((Store::open_disk(&st.store_root)?, secrets)));
        let outcome = match opened {
            Ok((store, secrets)) => {
                longhorn::apply_with(&store, vec![image], &longhorn::Secrets(&secrets), &opts)
                    .pop()
                    .map(|r| r.outcome)
                    .unwrap_or_else(|| Outcome::Failed("nothing was applied".into()))
            }
            Err(e) => Outcome::Failed(e.to_string()),
        };
        // The client may be gone; the record says the same.
        let _ = tx.send(outcome);
    });
    let outcome = match tokio::time::timeout(ADMISSION_WAIT, rx).await {
        Err(_) => return Ok(json_text(StatusCode::ACCEPTED, record_json(s, name).await?)),
        Ok(Err(_)) => return Err(ApiError::Internal("the apply stopped unexpectedly".into())),
        Ok(Ok(o)) => o,
    };
    match outcome {
        Outcome::Created => Ok(json_text(StatusCode::CREATED, record_json(s, name).await?)),
        Outcome::Unchanged => Ok(json_text(StatusCode::OK, record_json(s, name).await?)),
        Outcome::Refused(m) | Outcome::Failed(m) => Err(ApiError::Refused(m)),
        Outcome::Conflict(m) => Err(ApiError::Conflict(m)),
    }
}

async fn delete(
    State(s): State<AppState>,
    headers: HeaderMap,
    Path(name): Path<String>,
) -> Result<Response, ApiError> {
    authorize(&s, &headers, Access::Write)?;
    let root = s.store_root.clone();
    let layout = s.layout();
    blocking(move || {
        if !api_name(&name) {
            return Err(ApiError::NotFound(format!(
                "backing image {name:?} not found"
            )));
        }
        let store = Store::open_for_writes(&root, layout)?;
        match layout {
            Layout::Longhorn => status::delete(&store, &name)?,
            Layout::Flat => {
                if !upload::delete_flat(&store, &name)? {
                    return Err(ApiError::NotFound(format!(
                        "backing image {name} not found"
                    )));
                }
            }
        }
        Ok(
            Json(json!({ "message": format!("backingimage.longhorn.io/{name} deleted") }))
                .into_response(),
        )
    })
    .await
}

/// Names and namespaces only: a Secret's values never leave the server.
async fn secrets(
    State(s): State<AppState>,
    headers: HeaderMap,
) -> Result<Json<serde_json::Value>, ApiError> {
    authorize(&s, &headers, Access::Read)?;
    let st = s.clone();
    let loaded = blocking(move || load_secrets(&st)).await?;
    let items: Vec<_> = loaded
        .iter()
        .map(|x| json!({ "name": x.id.name, "namespace": x.id.namespace }))
        .collect();
    Ok(Json(json!({ "items": items })))
}

/// The whole list, sent again whenever any record changed (`event: backingimages`).
async fn events(
    State(s): State<AppState>,
    headers: HeaderMap,
) -> Result<Sse<impl futures_util::Stream<Item = Result<Event, Infallible>>>, ApiError> {
    authorize(&s, &headers, Access::Read)?;
    let stream = futures_util::stream::unfold(
        (s.store_root.clone(), None::<String>),
        |(root, mut last)| async move {
            loop {
                if last.is_some() {
                    tokio::time::sleep(POLL).await;
                }
                let r = root.clone();
                let text = match tokio::task::spawn_blocking(move || snapshot(&r)).await {
                    Ok(Ok(t)) => t,
                    Ok(Err(e)) => json!({ "error": e.to_string() }).to_string(),
                    Err(_) => return None,
                };
                if last.as_deref() != Some(text.as_str()) {
                    let event = Event::default().event("backingimages").data(text.clone());
                    return Some((Ok(event), (root, Some(text))));
                }
                last = Some(text);
            }
        },
    );
    Ok(Sse::new(stream).keep_alive(KeepAlive::default()))
}

fn snapshot(root: &FsPath) -> Result<String, ApiError> {
    let images = records(root, None)?;
    serde_json::to_string(&json!({ "apiVersion": "v1", "kind": "List", "items": images }))
        .map_err(|e| ApiError::Internal(e.to_string()))
}

/// An upload's name: checked before anything else, so an odd one is a clear 400 and never
/// reaches the disk.
fn upload_name(name: &str) -> Result<(), ApiError> {
    if name.len() > MAX_NAME {
        return Err(ApiError::BadRequest(format!(
            "metadata.name: {} characters is too long: at most {MAX_NAME}",
            name.chars().count()
        )));
    }
    if valid_name(name) {
        Ok(())
    } else {
        Err(ApiError::BadRequest(format!(
            "metadata.name: invalid name {name:?}: 2 to {MAX_NAME} characters, lower-case letters, digits, '_', '.', '-', starting with a letter or digit"
        )))
    }
}

/// How many bytes of an upload the server holds: where a dropped upload resumes. Not the
/// upload's id: only the client that started the upload has it.
async fn upload_offset(
    State(s): State<AppState>,
    headers: HeaderMap,
    Path(name): Path<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    authorize(&s, &headers, Access::Write)?;
    upload_name(&name)?;
    let root = s.store_root.clone();
    let layout = s.layout();
    let have = blocking(move || {
        let store = Store::open_for_writes(&root, layout)?;
        Ok(upload::received(&store, &name)?)
    })
    .await?;
    Ok(Json(json!({ "offset": have })))
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct UploadQuery {
    #[serde(default)]
    offset: u64,
    size: u64,
    #[serde(default)]
    checksum: String,
    /// The upload's id: required to resume (offset > 0); optional at offset 0 (the client's
    /// choice, else the server makes one).
    #[serde(default)]
    upload: Option<String>,
    /// The spec fields of Longhorn's create dialog, kept in the manifest as a POST keeps
    /// them (the selectors as comma-separated tags: a Kubernetes qualified name has no comma).
    #[serde(default)]
    min_number_of_copies: i64,
    #[serde(default)]
    data_engine: String,
    #[serde(default)]
    node_selector: Option<String>,
    #[serde(default)]
    disk_selector: Option<String>,
}

/// `a, b,,c` as `["a", "b", "c"]`; an empty list is kept (as a manifest's `[]`).
fn tag_list(tags: &Option<String>) -> Option<Vec<String>> {
    tags.as_ref().map(|t| {
        t.split(',')
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .map(str::to_string)
            .collect()
    })
}

/// The response header that carries an upload's id (also the `upload` field of a partial
/// answer).
const UPLOAD_ID_HEADER: &str = "bifs-upload-id";

/// `PUT /api/v1/uploads/{name}?offset=O&size=N[&upload=ID][&checksum=SHA512][&minNumberOfCopies=C]
/// [&dataEngine=v1][&nodeSelector=a,b][&diskSelector=c]`: the body is bytes
/// `O..` of an image of `N` bytes. Any number of requests make one upload (a dropped one
/// resumes at `GET`'s offset, presenting the id its start got: 409 otherwise); the one that
/// completes it stores the image
/// (`sourceType: upload`) and answers as a create does. The bytes land in place in the store
/// (`bifs_node::longhorn::upload`): one writer per name (409), room checked first (507).
async fn upload(
    State(s): State<AppState>,
    headers: HeaderMap,
    Path(name): Path<String>,
    Query(q): Query<UploadQuery>,
    body: Body,
) -> Result<Response, ApiError> {
    authorize(&s, &headers, Access::Write)?;
    upload_name(&name)?;
    if q.size == 0 || !q.size.is_multiple_of(SECTOR) {
        return Err(ApiError::Refused(format!(
            "size: {} bytes is not a multiple of 512: a disk image is whole 512-byte sectors",
            q.size
        )));
    }
    if q.offset > q.size {
        return Err(ApiError::Refused(format!(
            "offset: {} is past the announced size of {} bytes",
            q.offset, q.size
        )));
    }
    let image = BackingImage {
        api_version: API_VERSION.into(),
        kind: KIND.into(),
        metadata: ObjectMeta {
            name: name.clone(),
            ..Default::default()
        },
        spec: BackingImageSpec {
            source_type: "upload".into(),
            checksum: q.checksum.clone(),
            min_number_of_copies: q.min_number_of_copies,
            data_engine: q.data_engine.clone(),
            node_selector: tag_list(&q.node_selector),
            disk_selector: tag_list(&q.disk_selector),
            ..Default::default()
        },
        status: None,
    };
    let req = UploadRequest {
        image,
        offset: q.offset,
        size: q.size,
        upload_id: q.upload.clone(),
    };
    // Refused before any byte is taken: a bad name or checksum, a name another request
    // writes, an image that exists, an offset that does not follow, no room.
    let st = s.clone();
    let layout = s.layout();
    let mut up = blocking(move || {
        let secrets = load_secrets(&st)?;
        let store = Store::open_for_writes(&st.store_root, layout)?;
        Ok(upload::begin(store, req, &longhorn::Secrets(&secrets))?)
    })
    .await?;
    let id = up.id().to_string();
    let id_header = (
        axum::http::HeaderName::from_static(UPLOAD_ID_HEADER),
        axum::http::HeaderValue::from_str(&id)
            .map_err(|e| ApiError::internal("the upload's id".into(), &e))?,
    );

    // The bytes go to a blocking writer through a short queue: at most a few chunks of this
    // request are in memory, whatever the client sends.
    enum Msg {
        Data(bytes::Bytes),
        Broken(String),
    }
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Msg>(4);
    let writer = tokio::task::spawn_blocking(move || -> Result<Finished, UploadError> {
        while let Some(msg) = rx.blocking_recv() {
            match msg {
                Msg::Data(chunk) => up.write(&chunk)?,
                Msg::Broken(why) => {
                    tracing::info!(backing_image = ?up.name(), received = up.received(), why, "upload request broke off");
                    break;
                }
            }
        }
        up.finish()
    });
    let idle = s.limits.send_timeout;
    let mut stream = body.into_data_stream();
    let mut broke: Option<String> = None;
    let mut writer_stopped = false;
    loop {
        let next = match tokio::time::timeout(idle, stream.next()).await {
            Err(_) => Some(Err(format!("no data for {} s", idle.as_secs()))),
            Ok(None) => None,
            Ok(Some(Ok(c))) => Some(Ok(c)),
            Ok(Some(Err(e))) => Some(Err(e.to_string())),
        };
        let msg = match next {
            None => break,
            Some(Ok(chunk)) => Msg::Data(chunk),
            Some(Err(why)) => {
                broke = Some(why.clone());
                Msg::Broken(why)
            }
        };
        let last = matches!(msg, Msg::Broken(_));
        // A closed queue: the writer stopped (its error is the answer).
        if tx.send(msg).await.is_err() {
            writer_stopped = true;
            break;
        }
        if last {
            break;
        }
    }
    drop(tx);
    if writer_stopped {
        // Let the client finish sending what it announced (bounded in bytes and time), so it
        // reads the answer (507, 422) rather than a connection reset under its feet.
        let deadline = tokio::time::Instant::now() + DRAIN_TIME;
        let mut left = q.size;
        while left > 0 {
            match tokio::time::timeout_at(deadline, stream.next()).await {
                Ok(Some(Ok(c))) => left = left.saturating_sub(c.len() as u64),
                _ => break,
            }
        }
    }
    let finished = writer
        .await
        .map_err(|e| ApiError::internal("the upload's writer stopped".into(), &e))??;
    match finished {
        Finished::Partial { offset } => match broke {
            Some(why) => Ok((
                StatusCode::BAD_REQUEST,
                [id_header],
                Json(json!({
                    "message": format!(
                        "the upload broke off at byte {offset}: {why}; resume from GET \
                         /api/v1/uploads/{name} with upload={id}"
                    ),
                    "offset": offset,
                    "upload": id,
                })),
            )
                .into_response()),
            None => Ok((
                [id_header],
                Json(json!({ "offset": offset, "size": q.size, "complete": false, "upload": id })),
            )
                .into_response()),
        },
        Finished::Complete(rec) => {
            let text = one_json(std::slice::from_ref(&*rec), true)?;
            let mut resp = json_text(StatusCode::CREATED, text);
            resp.headers_mut().insert(id_header.0, id_header.1);
            Ok(resp)
        }
    }
}
