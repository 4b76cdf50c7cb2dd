//! The workflow's JSON API under `/api/v1`: the same BackingImage objects as
//! `bifs get -o json`, created with the same admission rules and messages as `bifs apply`,
//! a live stream of their status (Server-Sent Events), resumable uploads, and the names of
//! the loaded Secrets (never their values).
//!
//! The work is the library's (`longhorn::apply`, `longhorn::status`); this module only turns
//! requests into its calls and its outcomes into status codes. Every write needs the bearer
//! token (`super::authorize`).

use std::convert::Infallible;
use std::io::SeekFrom;
use std::path::{Path as FsPath, PathBuf};
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
use tokio::io::{AsyncSeekExt, AsyncWriteExt};

use bifs_k8s::manifest::{
    parse_backing_images, valid_name, BackingImage, BackingImageSpec, ObjectMeta, State as Phase,
    API_VERSION, KIND, PARAM_PATH,
};
use bifs_node::longhorn::{self, status, Outcome, StatusError};
use bifs_node::store::{Store, StoreError};

use super::{Access, AppState};
use bifs_k8s::Secret;

/// How long a create waits for the apply before answering 202: admission (the webhook's
/// checks) takes milliseconds, so a refusal is answered with its message, while a long copy
/// goes on in the background and shows in the status stream.
const ADMISSION_WAIT: Duration = Duration::from_millis(1500);
/// How often the status stream looks at the store.
const POLL: Duration = Duration::from_millis(300);
/// Where partial uploads wait for their remaining bytes, inside the store's state directory.
const UPLOADS_DIR: &str = ".bifs/uploads";
const SECTOR: u64 = 512;

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
/// `--public-read`).
async fn node(State(s): State<AppState>, headers: HeaderMap) -> Result<Response, ApiError> {
    authorize(&s, &headers, Access::Read)?;
    let token = s.policy.token.is_some();
    Ok(Json(json!({
        "node": s.node.name,
        "advertiseUrl": s.node.advertise_url,
        "signedViews": if !token { vec![] } else if s.policy.public_read { vec!["raw", "decrypt"] } else { vec!["ignore", "raw", "encrypt", "decrypt"] },
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
    #[error("{0}")]
    Internal(String),
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        ApiError::Internal(format!("store: {e}"))
    }
}

impl From<StatusError> for ApiError {
    fn from(e: StatusError) -> Self {
        match e {
            StatusError::NotFound { .. } => ApiError::NotFound(e.to_string()),
            StatusError::Busy(_) | StatusError::LonghornManaged(_) => {
                ApiError::Conflict(e.to_string())
            }
            e => ApiError::Internal(e.to_string()),
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
        .map_err(|e| ApiError::Internal(format!("worker: {e}")))?
}

fn json_text(code: StatusCode, text: String) -> Response {
    (code, [(header::CONTENT_TYPE, "application/json")], text).into_response()
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
    Ok(json_text(StatusCode::OK, text))
}

async fn get_one(
    State(s): State<AppState>,
    headers: HeaderMap,
    Path(name): Path<String>,
) -> Result<Response, ApiError> {
    authorize(&s, &headers, Access::Read)?;
    Ok(json_text(StatusCode::OK, record_json(&s, name).await?))
}

async fn record_json(s: &AppState, name: String) -> Result<String, ApiError> {
    let root = s.store_root.clone();
    blocking(move || {
        if !valid_name(&name) {
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
    run_apply(&s, image).await
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
    tokio::task::spawn_blocking(move || {
        let opened =
            load_secrets(&st).and_then(|secrets| Ok((Store::open_disk(&st.store_root)?, secrets)));
        let outcome = match opened {
            Ok((store, secrets)) => {
                longhorn::apply(&store, vec![image], &longhorn::Secrets(&secrets))
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
    blocking(move || {
        if !valid_name(&name) {
            return Err(ApiError::NotFound(format!(
                "backing image {name:?} not found"
            )));
        }
        let store = Store::open_disk(&root)?;
        status::delete(&store, &name)?;
        let _ = std::fs::remove_file(upload_path(&root, &name));
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

fn upload_path(root: &FsPath, name: &str) -> PathBuf {
    root.join(UPLOADS_DIR).join(format!("{name}.part"))
}

fn upload_name(name: &str) -> Result<(), ApiError> {
    if valid_name(name) {
        Ok(())
    } else {
        Err(ApiError::Refused(format!(
            "metadata.name: invalid name {name:?}: 2 to 63 characters, letters, digits, '_', '.', '-', starting with a letter or digit"
        )))
    }
}

/// How many bytes of an upload the server holds: where a dropped upload resumes.
async fn upload_offset(
    State(s): State<AppState>,
    headers: HeaderMap,
    Path(name): Path<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    authorize(&s, &headers, Access::Write)?;
    upload_name(&name)?;
    let have = match tokio::fs::metadata(upload_path(&s.store_root, &name)).await {
        Ok(m) => m.len(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => 0,
        Err(e) => return Err(ApiError::Internal(e.to_string())),
    };
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

/// `PUT /api/v1/uploads/{name}?offset=O&size=N[&checksum=SHA512][&minNumberOfCopies=C]
/// [&dataEngine=v1][&nodeSelector=a,b][&diskSelector=c]`: the body is bytes
/// `O..` of an image of `N` bytes. Any number of requests make one upload (a dropped one
/// resumes at `GET`'s offset); the one that completes it applies the image
/// (`sourceType: upload`) and answers as a create does.
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
    let part = upload_path(&s.store_root, &name);
    let image = BackingImage {
        api_version: API_VERSION.into(),
        kind: KIND.into(),
        metadata: ObjectMeta {
            name: name.clone(),
            ..Default::default()
        },
        spec: BackingImageSpec {
            source_type: "upload".into(),
            source_parameters: [(PARAM_PATH.to_string(), part.display().to_string())].into(),
            checksum: q.checksum.clone(),
            min_number_of_copies: q.min_number_of_copies,
            data_engine: q.data_engine.clone(),
            node_selector: tag_list(&q.node_selector),
            disk_selector: tag_list(&q.disk_selector),
            ..Default::default()
        },
        status: None,
    };
    // Refused before any byte is taken: a bad name or checksum, or an image that exists.
    image
        .validate()
        .map_err(|e| ApiError::Refused(e.to_string()))?;
    let root = s.store_root.clone();
    let n = name.clone();
    blocking(move || {
        let store = Store::open_disk(&root)?;
        match status::read(&store, &n)? {
            Some(r) if r.status.as_ref().map(|st| st.state()) != Some(Phase::Failed) => Err(
                ApiError::Conflict(format!("backing image {n} already exists; delete it first")),
            ),
            _ => Ok(()),
        }
    })
    .await?;

    let dir = s.store_root.join(UPLOADS_DIR);
    tokio::fs::create_dir_all(&dir)
        .await
        .map_err(|e| ApiError::Internal(format!("creating {}: {e}", dir.display())))?;
    let io = |e: std::io::Error| ApiError::Internal(format!("{}: {e}", part.display()));
    let mut file = tokio::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&part)
        .await
        .map_err(io)?;
    let have = file.metadata().await.map_err(io)?.len();
    if q.offset > have {
        return Err(ApiError::Offset {
            given: q.offset,
            have,
        });
    }
    // Resending from an earlier offset replaces what followed it.
    file.set_len(q.offset).await.map_err(io)?;
    file.seek(SeekFrom::Start(q.offset)).await.map_err(io)?;
    let mut at = q.offset;
    let mut stream = body.into_data_stream();
    while let Some(chunk) = stream.next().await {
        // A dropped connection ends here: what arrived is kept for the resume.
        let chunk = match chunk {
            Ok(c) => c,
            Err(e) => {
                file.flush().await.map_err(io)?;
                return Err(ApiError::BadRequest(format!(
                    "the upload broke off at byte {at}: {e}; resume from GET /api/v1/uploads/{name}"
                )));
            }
        };
        if at + chunk.len() as u64 > q.size {
            drop(file);
            let _ = tokio::fs::remove_file(&part).await;
            return Err(ApiError::Refused(format!(
                "size: more than the announced {} bytes were sent; the upload was discarded",
                q.size
            )));
        }
        file.write_all(&chunk).await.map_err(io)?;
        at += chunk.len() as u64;
    }
    file.flush().await.map_err(io)?;
    file.sync_data().await.map_err(io)?;
    drop(file);
    if at < q.size {
        return Ok(
            Json(json!({ "offset": at, "size": q.size, "complete": false })).into_response(),
        );
    }
    let result = run_apply_to_end(&s, image).await;
    let _ = tokio::fs::remove_file(&part).await;
    result
}

/// As `run_apply`, but the request stays open until the image is done: the staged upload is
/// removed after, so the copy must have finished with it.
async fn run_apply_to_end(s: &AppState, image: BackingImage) -> Result<Response, ApiError> {
    let name = image.name().to_string();
    let st = s.clone();
    let outcome = blocking(move || {
        let secrets = load_secrets(&st)?;
        let store = Store::open_disk(&st.store_root)?;
        Ok(
            longhorn::apply(&store, vec![image], &longhorn::Secrets(&secrets))
                .pop()
                .map(|r| r.outcome)
                .unwrap_or_else(|| Outcome::Failed("nothing was applied".into())),
        )
    })
    .await?;
    match outcome {
        Outcome::Created | Outcome::Unchanged => {
            Ok(json_text(StatusCode::CREATED, record_json(s, name).await?))
        }
        Outcome::Refused(m) | Outcome::Failed(m) => Err(ApiError::Refused(m)),
        Outcome::Conflict(m) => Err(ApiError::Conflict(m)),
    }
}
