//! GET/HEAD of the views at the mount's paths: `/views/<mode>/[<ns>/<secret>/]<image>`, and
//! the SHA-512 of each at `…/<image>.sha512`.
//!
//! A response is pinned to the view it opened: the bytes come from one `Catalog::open`, whose
//! reads fail with EIO once the stored file changes. Such a failure errors the body stream, so
//! hyper closes the connection before `Content-Length` bytes: the client sees a truncated
//! transfer, never a mix of old and new bytes.

use std::collections::{HashMap, VecDeque};
use std::io;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use bytes::Bytes;
use sha2::Digest;
use tokio::task::JoinHandle;

use super::{conditional, Access, AppState, HttpError};
use bifs_core::io::ReadAt;
use bifs_k8s::SecretRef;
use bifs_node::catalog::{CatalogError, Mode, Opening};
use bifs_node::store::valid_component;
use bifs_node::store::SourceIdentity;

/// Bytes per blocking read: large enough that the per-chunk hop to the blocking pool is
/// noise, small enough that a request holds little memory (`READ_AHEAD` chunks read ahead, one
/// being sent, and those kept for reuse: all within the response budget).
const CHUNK: u64 = 1 << 20;
/// Bytes per read when the server's response budget (`--response-memory`) is spent: a
/// response always makes progress, in chunks small enough that any number of connections
/// (up to `--max-connections`) fit in memory.
const SMALL_CHUNK: u64 = 64 << 10;
/// Chunks read ahead of the one being sent: two, so that two blocking threads read (and
/// encrypt) while the socket takes the current one.
const READ_AHEAD: usize = 2;

const SUM_SUFFIX: &str = ".sha512";

pub fn routes() -> Router<AppState> {
    Router::new().route("/views/{*path}", get(view))
}

/// What a `/views/...` path names.
#[derive(Debug, PartialEq, Eq)]
struct ViewPath {
    mode: Mode,
    secret: Option<SecretRef>,
    image: String,
}

fn bad_path(msg: &str) -> HttpError {
    HttpError::new(StatusCode::NOT_FOUND, msg.to_owned())
}

/// Parses the (percent-decoded) path after `/views/`. Every component must be a plain name:
/// `..`, `.`, empty components and embedded NULs are refused, so no path escapes the store.
fn parse(path: &str) -> Result<ViewPath, HttpError> {
    let parts: Vec<&str> = path.split('/').collect();
    if !parts.iter().all(|p| valid_component(p)) {
        return Err(bad_path(
            "not a view path: components must be plain names (no '..', '.', or empty ones)",
        ));
    }
    let Some((mode, rest)) = parts.split_first() else {
        return Err(bad_path("no view mode"));
    };
    let Some(mode) = Mode::from_name(mode) else {
        return Err(bad_path(
            "unknown view mode (ignore, raw, encrypt, decrypt)",
        ));
    };
    match (mode.keyed(), rest) {
        (false, [image]) => Ok(ViewPath {
            mode,
            secret: None,
            image: (*image).to_owned(),
        }),
        (true, [ns, name, image]) => Ok(ViewPath {
            mode,
            secret: Some(SecretRef {
                namespace: (*ns).to_owned(),
                name: (*name).to_owned(),
            }),
            image: (*image).to_owned(),
        }),
        (false, _) => Err(bad_path("expected /views/<mode>/<image>")),
        (true, _) => Err(bad_path(
            "expected /views/<mode>/<namespace>/<secret>/<image>",
        )),
    }
}

/// One opened view and its validators.
struct Opened {
    view: Arc<dyn ReadAt>,
    etag: String,
    /// The stored file's version the view is pinned to.
    id: SourceIdentity,
    modified: SystemTime,
    mode: Mode,
    image: String,
}

/// How long a request waits for its view to be prepared (a key derivation) before a 503 with
/// `Retry-After`: under the ~55 s backing-image-manager allows before the first byte of a
/// download (its sync file fails when no byte came 60 s after it was created, and the HEAD
/// before the GET takes some of that).
const PREPARE_WAIT: Duration = Duration::from_secs(50);

/// A view's validators: its ETag and its Last-Modified.
///
/// The ETag: the view kind, the Secret and its version (a token that changes whenever the
/// Secret does, never derived from its values), the stored file's version and the view's
/// length. Known from the file's metadata alone: a HEAD needs no key derivation.
///
/// Last-Modified: the stored file's mtime or ctime, the later ([`modified_of`]); for an encrypt view, whose bytes also change with
/// the Secret, the later of that and the time this server first saw the Secret's version (so an
/// `If-Modified-Since` from before a Secret change gets the new bytes). Never later than now
/// (RFC 9110 8.8.2.1).
fn validators(
    state: &AppState,
    mode: Mode,
    secret: Option<&SecretRef>,
    id: &SourceIdentity,
    len: u64,
) -> (String, SystemTime) {
    let mut h = sha2::Sha256::new();
    h.update(mode.name().as_bytes());
    let mut modified = modified_of(id);
    if let Some(s) = secret {
        h.update(format!("\0{}\0{}\0", s.namespace, s.name).as_bytes());
        // Decrypt views are the image's plaintext whatever Secret opens them: only encrypt
        // views change with the Secret.
        if mode == Mode::Encrypt {
            let version = state.catalog.secret_version(s);
            h.update(version);
            modified = modified.max(state.versions_seen.first_seen(version));
        }
    }
    identity_bytes(&mut h, id);
    h.update(len.to_le_bytes());
    let etag = format!("\"{}\"", hex::encode(&h.finalize()[..16]));
    (etag, modified.min(SystemTime::now()))
}

/// When this server first saw each Secret version (see [`validators`]).
#[derive(Default)]
pub struct VersionsSeen(Mutex<HashMap<[u8; 16], SystemTime>>);

impl VersionsSeen {
    fn first_seen(&self, version: [u8; 16]) -> SystemTime {
        let mut seen = self.0.lock().unwrap_or_else(|e| e.into_inner());
        *seen.entry(version).or_insert_with(SystemTime::now)
    }
}

fn identity_bytes(h: &mut sha2::Sha256, id: &SourceIdentity) {
    h.update(id.dev.to_le_bytes());
    h.update(id.ino.to_le_bytes());
    h.update(id.size.to_le_bytes());
    h.update(id.mtime_ns.to_le_bytes());
    // The change time too: a rewrite that puts the mtime back must not keep the ETag
    // (If-Range would then splice two versions, and the cached SHA-512 would be stale).
    h.update(id.ctime_ns.to_le_bytes());
    // A qcow2 image's backing files, for a view that reads them: a backing file rewritten
    // must change the ETag as the top file would. Nothing for a view of one file, whose
    // ETags (and the sums cached under them) stay what they were.
    if id.chain != 0 {
        h.update(b"\0chain\0");
        h.update(id.chain.to_le_bytes());
    }
}

/// The view's Last-Modified: the latest of the stored file's mtime and change time and the
/// mtimes of the backing files it reads. A writer can put an mtime back (`touch -m -r`), never
/// the ctime, so a rewrite always moves the date (as it moves the ETag): If-Modified-Since and
/// an If-Range date see it.
fn modified_of(id: &SourceIdentity) -> SystemTime {
    let ns = id.latest_mtime_ns().max(id.ctime_ns);
    match u64::try_from(ns) {
        Ok(ns) => SystemTime::UNIX_EPOCH + Duration::from_nanos(ns),
        Err(_) => SystemTime::UNIX_EPOCH,
    }
}

/// Opens the view, waiting (up to [`PREPARE_WAIT`]) while it is being prepared. The wait
/// holds no thread; a client that goes away drops it, and with it its claim on the job (an
/// unlock nobody else wants stops before its next keyslot).
async fn open(
    state: &AppState,
    vp: ViewPath,
    ciphertext_only: Option<HttpError>,
) -> Result<Opened, HttpError> {
    let deadline = tokio::time::Instant::now() + PREPARE_WAIT;
    let vp = Arc::new(vp);
    let only = ciphertext_only.is_some();
    loop {
        let catalog = state.catalog.clone();
        let v = vp.clone();
        let opening = tokio::task::spawn_blocking(move || {
            let img = catalog.image(v.mode, v.secret.as_ref(), &v.image)?;
            if only && !img.format.is_luks() {
                return Ok(None);
            }
            let o = catalog.open_now(v.mode, v.secret.as_ref(), &img)?;
            Ok::<_, CatalogError>(Some((img, o)))
        })
        .await
        .map_err(|e| HttpError::new(StatusCode::INTERNAL_SERVER_ERROR, format!("open: {e}")))?;
        let (img, opening) = match opening {
            Ok(Some(found)) => found,
            // Not ciphertext, or not there: the answer a missing token gets, whichever.
            _ if only => return Err(ciphertext_only.unwrap_or_else(denied_plaintext)),
            Err(e) => return Err(not_here(state, e)),
            Ok(None) => return Err(denied_plaintext()),
        };
        let pending = match opening {
            Opening::Ready(view, id) => return opened(state, &vp, img.name, view, id).await,
            Opening::Pending(p) => p,
        };
        let Ok(_waiting) = state.prepare_waiters.clone().try_acquire_owned() else {
            return Err(HttpError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                format!(
                    "image {:?}: its view is being prepared and --max-kdf-jobs + --max-kdf-queue requests already wait for views being prepared; retry later",
                    img.name
                ),
            ));
        };
        let (tx, rx) = tokio::sync::oneshot::channel();
        pending.on_settled(move || {
            let _ = tx.send(());
        });
        tokio::select! {
            _ = rx => {}
            _ = tokio::time::sleep_until(deadline) => {
                return Err(CatalogError::Preparing { image: img.name }.into());
            }
            _ = state.stopped() => {
                return Err(HttpError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "the server is stopping",
                ));
            }
        }
        drop(pending);
    }
}

async fn opened(
    state: &AppState,
    vp: &ViewPath,
    image: String,
    view: Arc<dyn ReadAt>,
    id: SourceIdentity,
) -> Result<Opened, HttpError> {
    let (etag, modified) = validators(state, vp.mode, vp.secret.as_ref(), &id, view.len());
    Ok(Opened {
        view,
        etag,
        id,
        modified,
        mode: vp.mode,
        image,
    })
}

/// What a view's SHA-512 is cached under across restarts (the ETag of an encrypt view changes
/// at every start; its bytes need not). For an encrypt view, its first 4 KiB (the binary
/// header: salt, UUID, checksum of the metadata) identify its stable header.
async fn sum_key(o: &Opened) -> Result<String, HttpError> {
    if o.mode != Mode::Encrypt {
        return Ok(o.etag.clone());
    }
    let v = o.view.clone();
    let hdr = tokio::task::spawn_blocking(move || {
        let mut hdr = vec![0u8; 4096];
        bifs_core::io::read_full_at(&*v, 0, &mut hdr).map(|()| hdr)
    })
    .await
    .map_err(|e| HttpError::new(StatusCode::INTERNAL_SERVER_ERROR, format!("open: {e}")))?
    .map_err(|error| CatalogError::Io {
        image: o.image.clone(),
        error,
    })?;
    let mut h = sha2::Sha256::new();
    h.update(b"encrypt\0");
    identity_bytes(&mut h, &o.id);
    h.update(&hdr);
    Ok(format!("\"{}\"", hex::encode(&h.finalize()[..16])))
}

/// The refusal of a plaintext view to a request without the token; only reached when the
/// policy refused it already (a ciphertext-only open always carries that refusal).
fn denied_plaintext() -> HttpError {
    HttpError::new(StatusCode::UNAUTHORIZED, crate::auth::PLAINTEXT_NEEDS_TOKEN)
}

/// A catalog error as the answer; an image this node does not hold is a 404 that names the
/// node (each node serves the images of its own disks).
///
/// A message may name the server's files (a view that could not be prepared says what failed
/// to open: the image, a qcow2 backing file): the client gets them relative to the store
/// (`<store>/...`), the log gets the message as it was.
fn not_here(state: &AppState, e: CatalogError) -> HttpError {
    let no_image = matches!(e, CatalogError::NoImage(_));
    let mut err = HttpError::from(e);
    let store = state.catalog.store();
    let scrubbed = without_server_paths(&err.message, store.root(), store.state().path());
    if scrubbed != err.message {
        tracing::warn!(error = %err.message, "a view could not be opened");
        err.message = scrubbed;
    }
    // Any other absolute path (a qcow2's backing file named outside the store, say): the
    // image's name only; the log has the rest, and `bifs get` on the node.
    if names_an_absolute_path(&err.message) {
        err.message = format!(
            "{}: its view could not be made; the server log (or `bifs get` on the node) says why",
            err.message.split(':').next().unwrap_or("the image")
        );
    }
    if no_image {
        err.message = format!(
            "{} on {}: each node serves the images of its own disks; ask the node that holds it",
            err.message,
            state.node.describe()
        );
    }
    err
}

/// Whether `message` holds a word that is an absolute path.
fn names_an_absolute_path(message: &str) -> bool {
    message
        .split(|c: char| c.is_whitespace() || matches!(c, '"' | '\'' | '(' | '`'))
        .any(|w| w.len() > 1 && w.starts_with('/'))
}

/// `message` with the store's root and its state directory written as `<store>` and
/// `<state>`.
fn without_server_paths(message: &str, root: &std::path::Path, state: &std::path::Path) -> String {
    let mut m = message.to_owned();
    // The longer first: a state directory inside the store is `<state>`, not `<store>/.bifs`.
    let mut dirs = [(state, "<state>"), (root, "<store>")];
    dirs.sort_by_key(|(p, _)| std::cmp::Reverse(p.as_os_str().len()));
    for (dir, name) in dirs {
        let dir = dir.to_string_lossy();
        if !dir.is_empty() && dir != "/" {
            m = m.replace(&*dir, name);
        }
    }
    m
}

/// HEAD: the headers a GET would send, from the file's metadata alone (sizes, never a key
/// derivation), so a client's HEAD deadline (4 s in Longhorn v1.7) is met whether or not the
/// view is prepared yet. A refusal already known for this version of the file (a wrong
/// passphrase) is answered as the GET would.
async fn head(
    state: &AppState,
    vp: ViewPath,
    headers: &HeaderMap,
    ciphertext_only: Option<HttpError>,
) -> Result<Response, HttpError> {
    let catalog = state.catalog.clone();
    let only = ciphertext_only.is_some();
    let found = tokio::task::spawn_blocking(move || {
        let img = catalog.image(vp.mode, vp.secret.as_ref(), &vp.image)?;
        if only && !img.format.is_luks() {
            return Ok(None);
        }
        catalog.known_refusal(vp.mode, vp.secret.as_ref(), &img)?;
        let info = catalog.info(vp.mode, &img)?;
        Ok::<_, CatalogError>(Some((vp, info)))
    })
    .await
    .map_err(|e| HttpError::new(StatusCode::INTERNAL_SERVER_ERROR, format!("head: {e}")))?;
    let (vp, info) = match found {
        Ok(Some(found)) => found,
        // As in `open`: not ciphertext, or not there, is what a missing token gets.
        _ if only => return Err(ciphertext_only.unwrap_or_else(denied_plaintext)),
        Err(e) => return Err(not_here(state, e)),
        Ok(None) => return Err(denied_plaintext()),
    };
    let (etag, modified) = validators(
        state,
        vp.mode,
        vp.secret.as_ref(),
        &info.identity,
        info.size,
    );
    let mut out = HeaderMap::new();
    common(&mut out, &etag, modified);
    let pre = conditional::evaluate(headers, Some(&etag), Some(modified));
    if let Some(r) = conditional::stopped(pre, out.clone()) {
        return Ok(r);
    }
    out.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    out.insert(header::CONTENT_LENGTH, HeaderValue::from(info.size));
    Ok((StatusCode::OK, out).into_response())
}

async fn view(
    State(state): State<AppState>,
    Path(path): Path<String>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
) -> Response {
    match serve_view(&state, &path, &method, &uri, &headers).await {
        Ok(r) => r,
        Err(e) => e.into_response(),
    }
}

/// A signed URL's check (before any lookup): `Ok(true)` when the request carries a valid
/// signature for its exact path, `Ok(false)` when it carries none.
fn signed(state: &AppState, uri: &Uri) -> Result<bool, HttpError> {
    let Some((expires, signature)) = uri.query().and_then(crate::signed::signature_params) else {
        return Ok(false);
    };
    let Some(signer) = &state.signer else {
        // No token: every request is allowed already (loopback only).
        return Ok(true);
    };
    signer
        .verify(uri.path(), &expires, &signature, crate::signed::unix_now())
        .map(|()| true)
        .map_err(|e| HttpError::new(StatusCode::FORBIDDEN, e.to_string()))
}

async fn serve_view(
    state: &AppState,
    path: &str,
    method: &Method,
    uri: &Uri,
    headers: &HeaderMap,
) -> Result<Response, HttpError> {
    // Before anything else: a signed URL is checked against the path exactly as sent.
    let signed = signed(state, uri)?;
    let vp = parse(path)?;
    let access = match vp.mode {
        Mode::Raw | Mode::Decrypt => Access::Plaintext,
        Mode::Ignore | Mode::Encrypt => Access::Read,
    };
    // Before any lookup: no probing for names without the right to read.
    if !signed {
        state.authorize(headers, access)?;
    }
    // `ignore/` is the stored bytes: ciphertext for a LUKS image, plaintext otherwise. A reader
    // who may not read plaintext (`--public-read` without the token) gets it only for a LUKS
    // file; for any other, or no file at all, the same answer as a missing token (no probing).
    let ciphertext_only = match (vp.mode, signed) {
        (Mode::Ignore, false) => state.authorize(headers, Access::Plaintext).err(),
        _ => None,
    };
    // `<image>.sha512` is the checksum, unless an image is really named so.
    let (vp, sum) = match vp.image.strip_suffix(SUM_SUFFIX) {
        Some(base)
            if !base.is_empty()
                && !matches!(state.catalog.store().find(&vp.image), Ok(Some(_))) =>
        {
            let image = base.to_owned();
            (ViewPath { image, ..vp }, true)
        }
        _ => (vp, false),
    };
    if *method == Method::HEAD && !sum {
        return head(state, vp, headers, ciphertext_only).await;
    }
    let opened = open(state, vp, ciphertext_only).await?;
    if sum {
        return checksum(state, opened, headers).await;
    }
    Ok(respond(state, opened, headers))
}

fn common_headers(h: &mut HeaderMap, o: &Opened) {
    common(h, &o.etag, o.modified);
}

fn common(h: &mut HeaderMap, etag: &str, modified: SystemTime) {
    if let Ok(v) = HeaderValue::from_str(etag) {
        h.insert(header::ETAG, v);
    }
    if let Ok(v) = HeaderValue::from_str(&httpdate::fmt_http_date(modified)) {
        h.insert(header::LAST_MODIFIED, v);
    }
    h.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    h.insert(header::CACHE_CONTROL, conditional::REVALIDATE);
}

fn respond(state: &AppState, o: Opened, headers: &HeaderMap) -> Response {
    let len = o.view.len();
    let mut out = HeaderMap::new();
    common_headers(&mut out, &o);
    let pre = conditional::evaluate(headers, Some(&o.etag), Some(o.modified));
    if let Some(r) = conditional::stopped(pre, out.clone()) {
        return r;
    }
    let range = headers
        .get(header::RANGE)
        .filter(|_| if_range_holds(headers.get(header::IF_RANGE), &o))
        .and_then(|r| r.to_str().ok())
        .map(|r| parse_range(r, len));
    let (status, start, end) = match range {
        None | Some(RangeSpec::Ignored) => (StatusCode::OK, 0, len),
        Some(RangeSpec::Unsatisfiable) => {
            if let Ok(v) = HeaderValue::from_str(&format!("bytes */{len}")) {
                out.insert(header::CONTENT_RANGE, v);
            }
            return (
                StatusCode::RANGE_NOT_SATISFIABLE,
                out,
                format!("range not satisfiable: the view is {len} bytes\n"),
            )
                .into_response();
        }
        Some(RangeSpec::Range(a, b)) => {
            if let Ok(v) = HeaderValue::from_str(&format!("bytes {a}-{}/{len}", b - 1)) {
                out.insert(header::CONTENT_RANGE, v);
            }
            (StatusCode::PARTIAL_CONTENT, a, b)
        }
    };
    out.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    out.insert(header::CONTENT_LENGTH, HeaderValue::from(end - start));
    let body = body_stream(state, o, start, end);
    (status, out, body).into_response()
}

/// `If-Range`: the range applies only if the client's copy is this one (RFC 9110 13.1.5): an
/// entity tag by strong comparison (`headers`' `ETag`); a date only if it is exactly the
/// Last-Modified and a strong validator, and never for encrypt views, whose header may be
/// remade without the source's mtime changing. (The `headers` crate's `IfRange` takes any date
/// not before Last-Modified, which the RFC does not: so the date is compared here.)
///
/// A date is strong only when the Last-Modified is at least one second before the response's
/// Date (RFC 9110 8.8.2.2): within its own second the file may change again without the
/// (whole-second) date moving. Otherwise the condition is false: the whole view is sent.
fn if_range_holds(value: Option<&HeaderValue>, o: &Opened) -> bool {
    if_range_holds_at(value, o, SystemTime::now())
}

fn if_range_holds_at(value: Option<&HeaderValue>, o: &Opened, now: SystemTime) -> bool {
    let Some(v) = value.and_then(|v| v.to_str().ok()).map(str::trim) else {
        return true;
    };
    // "A valid entity-tag can be distinguished from a valid HTTP-date by examining the first
    // three characters for a DQUOTE" (13.1.5).
    if v.get(..3).is_some_and(|p| p.contains('"')) {
        return match (v.parse::<headers::ETag>(), o.etag.parse::<headers::ETag>()) {
            // If-Match's comparison is the strong one If-Range needs.
            (Ok(theirs), Ok(ours)) => headers::IfMatch::from(theirs).precondition_passes(&ours),
            _ => false,
        };
    }
    if o.mode == Mode::Encrypt {
        return false;
    }
    match httpdate::parse_http_date(v) {
        Ok(d) => d == trunc_secs(o.modified) && date_is_strong(o.modified, now),
        Err(_) => false,
    }
}

/// Whether a Last-Modified of `modified` is a strong validator in a response dated `now`
/// (RFC 9110 8.8.2.2): the Date's whole second at least one second after it. The Date
/// header is `now` truncated to the second.
fn date_is_strong(modified: SystemTime, now: SystemTime) -> bool {
    modified + Duration::from_secs(1) <= trunc_secs(now)
}

fn trunc_secs(t: SystemTime) -> SystemTime {
    let secs = t
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    SystemTime::UNIX_EPOCH + Duration::from_secs(secs)
}

/// What a `Range` field asks of a view of `len` bytes. Parsed here rather than with the
/// `headers` crate's `Range`, whose `satisfiable_ranges` drops a suffix longer than the
/// representation (RFC 9110 14.1.2: it selects the whole representation) and passes through
/// first-pos > last-pos and first-pos >= len (invalid and unsatisfiable ranges).
#[derive(Debug, PartialEq, Eq)]
enum RangeSpec {
    /// Not a single byte range we serve (multiple ranges, other units, bad syntax): the
    /// whole view is sent (RFC 9110 14.2 lets a server ignore Range).
    Ignored,
    Unsatisfiable,
    /// `[start, end)`.
    Range(u64, u64),
}

fn parse_range(value: &str, len: u64) -> RangeSpec {
    let Some(spec) = value.trim().strip_prefix("bytes=") else {
        return RangeSpec::Ignored;
    };
    let spec = spec.trim();
    if spec.contains(',') {
        return RangeSpec::Ignored;
    }
    let Some((a, b)) = spec.split_once('-') else {
        return RangeSpec::Ignored;
    };
    let (a, b) = (a.trim(), b.trim());
    let num = |s: &str| -> Option<u64> {
        (!s.is_empty() && s.bytes().all(|c| c.is_ascii_digit()))
            .then(|| s.parse().ok())
            .flatten()
    };
    match (a.is_empty(), num(a), num(b)) {
        // bytes=-N: the last N bytes.
        (true, _, Some(n)) => {
            if n == 0 || len == 0 {
                RangeSpec::Unsatisfiable
            } else {
                RangeSpec::Range(len - n.min(len), len)
            }
        }
        (false, Some(start), None) if b.is_empty() => {
            if start >= len {
                RangeSpec::Unsatisfiable
            } else {
                RangeSpec::Range(start, len)
            }
        }
        (false, Some(start), Some(last)) if last >= start => {
            if start >= len {
                RangeSpec::Unsatisfiable
            } else {
                RangeSpec::Range(start, last.saturating_add(1).min(len))
            }
        }
        _ => RangeSpec::Ignored,
    }
}

/// Reads `[start, end)` of the view in chunks on the blocking pool, up to [`READ_AHEAD`]
/// chunks ahead of the one being sent, so that reading (and encrypting) the next chunks
/// overlaps the socket write of this one. Dropping the stream (the client went away) drops
/// the reads ahead: at most those are read, nothing after.
///
/// A response reuses its full chunks (each goes back to the response's pool when hyper has
/// sent it): no allocation, no zeroing and no page faults per chunk (docs/performance.md,
/// "HTTP views": they cost the encrypt and the plain view about a sixth of their CPU).
fn body_stream(state: &AppState, o: Opened, start: u64, end: u64) -> Body {
    struct Cursor {
        view: Arc<dyn ReadAt>,
        next: u64,
        end: u64,
        pending: VecDeque<JoinHandle<io::Result<Bytes>>>,
        image: String,
        mode: Mode,
        metrics: super::Metrics,
        budget: Arc<tokio::sync::Semaphore>,
        pool: Arc<Pool>,
    }
    impl Cursor {
        /// Starts reads until [`READ_AHEAD`] are in flight or the whole range is asked for.
        fn fill(&mut self) {
            while self.pending.len() < READ_AHEAD && self.next < self.end && self.spawn_next() {}
        }

        /// Starts the next read; false when it must wait for the one in flight.
        fn spawn_next(&mut self) -> bool {
            // A full chunk holds its share of the response budget for as long as it lives
            // (sent, in flight or kept for reuse); with the budget spent, a small chunk
            // outside it, not kept, and only one at a time (as before read-ahead was
            // deeper: memory per connection stays two small chunks).
            let chunk = self.pool.take().or_else(|| {
                let permit = self
                    .budget
                    .clone()
                    .try_acquire_many_owned((CHUNK >> 10) as u32)
                    .ok()?;
                Some(Chunk::new(CHUNK as usize, Some(permit), &self.metrics))
            });
            if chunk.is_none() && !self.pending.is_empty() {
                return false;
            }
            let size = chunk.as_ref().map_or(SMALL_CHUNK, |_| CHUNK);
            // Chunks after the first are aligned, so views read whole sectors.
            let len = (size - self.next % size).min(self.end - self.next) as usize;
            let mut chunk = chunk.unwrap_or_else(|| Chunk::new(len, None, &self.metrics));
            let (view, off) = (self.view.clone(), self.next);
            let metrics = self.metrics.clone();
            let mode = self.mode;
            let pool = self.pool.clone();
            self.next += len as u64;
            self.pending.push_back(tokio::task::spawn_blocking(move || {
                let _in_flight = metrics.read_started();
                let buf = &mut chunk.buf[..len];
                let mut done = 0;
                while done < len {
                    let n = view.read_at(off + done as u64, &mut buf[done..])?;
                    if n == 0 {
                        return Err(io::Error::new(
                            io::ErrorKind::UnexpectedEof,
                            "the view ended early (its source shrank)",
                        ));
                    }
                    done += n;
                }
                metrics.bytes_read(mode, len as u64);
                Ok(Bytes::from_owner(Sent {
                    chunk: Some(chunk),
                    len,
                    pool,
                }))
            }));
            true
        }
    }
    let cursor = Cursor {
        view: o.view,
        next: start,
        end,
        pending: VecDeque::new(),
        image: o.image,
        mode: o.mode,
        metrics: state.metrics.clone(),
        budget: state.response_budget.clone(),
        pool: Arc::default(),
    };
    cursor.metrics.handle_opened();
    let guard = HandleGuard(cursor.metrics.clone());
    let stream = futures_util::stream::unfold((cursor, guard), |(mut c, guard)| async move {
        c.fill();
        let task = c.pending.pop_front()?;
        let result = match task.await {
            Ok(r) => r,
            Err(e) => Err(io::Error::other(format!("read task: {e}"))),
        };
        match result {
            Ok(bytes) => {
                c.fill();
                Some((Ok(bytes), (c, guard)))
            }
            Err(e) => {
                tracing::warn!(
                    image = ?c.image, mode = c.mode.name(), error = %e,
                    "aborting a download: the view failed to read (a changed source fails its open views)"
                );
                c.next = c.end;
                c.pending.clear();
                Some((Err(e), (c, guard)))
            }
        }
    });
    Body::from_stream(stream)
}

/// A chunk buffer, and its share of the response budget while it lives.
struct Chunk {
    buf: Vec<u8>,
    _permit: Option<tokio::sync::OwnedSemaphorePermit>,
    metrics: super::Metrics,
}

impl Chunk {
    fn new(
        len: usize,
        permit: Option<tokio::sync::OwnedSemaphorePermit>,
        metrics: &super::Metrics,
    ) -> Self {
        metrics.buffered(len as i64);
        Self {
            buf: vec![0u8; len],
            _permit: permit,
            metrics: metrics.clone(),
        }
    }
}

impl Drop for Chunk {
    fn drop(&mut self) {
        self.metrics.buffered(-(self.buf.len() as i64));
    }
}

/// One response's sent full chunks, kept for its next reads.
#[derive(Default)]
struct Pool(Mutex<Vec<Chunk>>);

impl Pool {
    fn take(&self) -> Option<Chunk> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).pop()
    }

    fn give(&self, chunk: Chunk) {
        // Only budgeted full chunks, and no more than can be in flight at once.
        if chunk._permit.is_none() || chunk.buf.len() != CHUNK as usize {
            return;
        }
        let mut free = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if free.len() <= READ_AHEAD {
            free.push(chunk);
        }
    }
}

/// A chunk being sent: the first `len` bytes of its buffer, which goes back to the pool when
/// hyper drops it (sent, or the connection closed).
struct Sent {
    chunk: Option<Chunk>,
    len: usize,
    pool: Arc<Pool>,
}

impl AsRef<[u8]> for Sent {
    fn as_ref(&self) -> &[u8] {
        self.chunk.as_ref().map_or(&[], |c| &c.buf[..self.len])
    }
}

impl Drop for Sent {
    fn drop(&mut self) {
        if let Some(c) = self.chunk.take() {
            self.pool.give(c);
        }
    }
}

/// Counts a served view as an open handle for as long as its body lives.
struct HandleGuard(super::Metrics);

impl Drop for HandleGuard {
    fn drop(&mut self) {
        self.0.handle_closed();
    }
}

/// Single-flight SHA-512 of views, cached by ETag under the state directory.
#[derive(Default)]
pub struct SumCache {
    running: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

async fn checksum(state: &AppState, o: Opened, request: &HeaderMap) -> Result<Response, HttpError> {
    let key = sum_key(&o).await?;
    let gate = {
        let mut running = state.sums.running.lock().unwrap_or_else(|e| e.into_inner());
        running.entry(o.etag.clone()).or_default().clone()
    };
    // One computation per view identity; the others wait for it and read the cache.
    let _turn = gate.lock().await;
    let etag = o.etag.clone();
    let image = o.image.clone();
    let metrics = state.metrics.clone();
    let catalog = state.catalog.clone();
    let sum = tokio::task::spawn_blocking(move || -> io::Result<String> {
        // The cache is the store's: written atomically (temporary file, fsync, rename).
        let cache = catalog.store().state();
        if let Some(s) = cache.view_sum(&key) {
            return Ok(s);
        }
        let started = std::time::Instant::now();
        let sum =
            bifs_node::checksum::sha512_hex(&*o.view, |n| metrics.bytes_read(o.mode, n))?;
        tracing::info!(image = ?o.image, mode = o.mode.name(), secs = started.elapsed().as_secs_f64(), "SHA-512 of a view computed");
        if let Err(e) = cache.save_view_sum(&key, &sum) {
            // The sum is right; only the next request computes it again.
            tracing::warn!(image = ?o.image, error = %e, "could not cache a view's SHA-512");
        }
        Ok(sum)
    })
    .await
    .map_err(|e| HttpError::new(StatusCode::INTERNAL_SERVER_ERROR, format!("checksum: {e}")))?
    .map_err(|e| {
        tracing::error!(image = ?image, error = %e, "computing the SHA-512 of a view failed");
        HttpError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!(
                "image {image:?}: computing the SHA-512 failed ({}); the server log has the details",
                e.kind()
            ),
        )
    })?;
    {
        let mut running = state.sums.running.lock().unwrap_or_else(|e| e.into_inner());
        if Arc::strong_count(&gate) <= 2 {
            running.remove(&etag);
        }
    }
    // The ETag is the sum's own prefix (the same for the same bytes, across restarts and
    // nodes); `no-cache`: the sum changes whenever the view does.
    let etag = format!("\"{}\"", sum.get(..32).unwrap_or(&sum));
    Ok(conditional::fixed(
        request,
        &etag,
        "text/plain; charset=utf-8",
        format!("{sum}\n"),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_name_files_relative_to_the_store() {
        let root = std::path::Path::new("/var/lib/longhorn");
        let state = std::path::Path::new("/var/lib/longhorn/.bifs");
        assert_eq!(
            without_server_paths(
                "/var/lib/longhorn/backing-images/p-1a2b3c4d/backing: backing file /x: gone; \
                 header /var/lib/longhorn/.bifs/h",
                root,
                state
            ),
            "<store>/backing-images/p-1a2b3c4d/backing: backing file /x: gone; header <state>/h"
        );
        assert_eq!(without_server_paths("no path", root, state), "no path");
        assert!(names_an_absolute_path("x: backing file /tmp/a: gone"));
        assert!(names_an_absolute_path("x (\"/etc/hostname\")"));
        assert!(!names_an_absolute_path(
            "Secret ns/s: <store>/a.img is truncated"
        ));
        assert!(!names_an_absolute_path("a / b"));
        let outside = std::path::Path::new("/var/lib/bifs");
        assert_eq!(
            without_server_paths("/var/lib/bifs/a and /var/lib/longhorn/b", root, outside),
            "<state>/a and <store>/b"
        );
    }

    #[test]
    fn paths() {
        assert_eq!(
            parse("encrypt/ns/s/a.img").unwrap(),
            ViewPath {
                mode: Mode::Encrypt,
                secret: Some(SecretRef {
                    namespace: "ns".into(),
                    name: "s".into()
                }),
                image: "a.img".into()
            }
        );
        assert_eq!(parse("raw/a.qcow2").unwrap().mode, Mode::Raw);
        for bad in [
            "ignore/../x",
            "ignore/..",
            "../../etc/passwd",
            "ignore//x",
            "ignore/./x",
            "encrypt/a.img",
            "decrypt/ns/..",
            "raw/a/b",
            "other/x",
            "ignore/x\0y",
            "",
        ] {
            assert!(parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn if_range_dates_are_strong_one_second_on() {
        let t = |s: u64, ms: u64| {
            SystemTime::UNIX_EPOCH + Duration::from_secs(s) + Duration::from_millis(ms)
        };
        // Modified at 100.0: strong in a response dated 101 or later, not within second 100.
        assert!(!date_is_strong(t(100, 0), t(100, 999)));
        assert!(date_is_strong(t(100, 0), t(101, 0)));
        // Modified at 100.5: its header says 100, but a response dated 101 may still share
        // its second with a change; only from 102 (Date >= Last-Modified + 1 s) is it strong.
        assert!(!date_is_strong(t(100, 500), t(101, 400)));
        assert!(date_is_strong(t(100, 500), t(102, 0)));
    }

    #[test]
    fn ranges() {
        use RangeSpec::*;
        assert_eq!(parse_range("bytes=0-99", 1000), Range(0, 100));
        assert_eq!(parse_range("bytes=900-", 1000), Range(900, 1000));
        assert_eq!(parse_range("bytes=900-5000", 1000), Range(900, 1000));
        assert_eq!(parse_range("bytes=-100", 1000), Range(900, 1000));
        assert_eq!(parse_range("bytes=-5000", 1000), Range(0, 1000));
        assert_eq!(parse_range("bytes=1000-", 1000), Unsatisfiable);
        assert_eq!(parse_range("bytes=-0", 1000), Unsatisfiable);
        assert_eq!(parse_range("bytes=0-0", 0), Unsatisfiable);
        assert_eq!(parse_range("bytes=5-1", 1000), Ignored);
        assert_eq!(parse_range("bytes=0-1,5-6", 1000), Ignored);
        assert_eq!(parse_range("items=0-1", 1000), Ignored);
        assert_eq!(parse_range("bytes=a-b", 1000), Ignored);
    }
}
