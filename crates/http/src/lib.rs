//! `bifs serve`: the store's views (and, from `api`/`page`, the workflow API and the Backing
//! Image page) over HTTP, from the same [`Catalog`] the FUSE mount uses, so a view has the same
//! bytes over both.
//!
//! # Shape
//! - [`AppState`] is the one shared state every handler gets (`axum::extract::State`): a cheap
//!   clone of an `Arc<Shared>`. It holds the [`Catalog`] (store, Secrets, persisted encrypt
//!   headers, cached volume keys), the store root and state directory paths, the paths the
//!   Secrets were loaded from, the access policy and the metrics counters.
//! - [`router`] merges `views::routes()` (GET/HEAD of `/views/...`, this module's owner),
//!   `metrics::routes()` (`/healthz`, `/readyz`, `/metrics`),
//!   `api::routes()` (JSON API, uploads, live stream) and `page::routes()` (the browser page).
//! - [`Listener::bind`] checks the exposure rules of [`ServeConfig`] and binds;
//!   [`Listener::serve`] runs until its shutdown future resolves.
//!
//! # Who may do what (checked per request, by the handler, before any work)
//! Every handler calls [`AppState::authorize`] with the [`Access`] it needs, first thing:
//! - [`Access::Write`]: create, delete, upload. Needs the bearer token when one is set.
//! - [`Access::Plaintext`]: `decrypt/` and `raw/` views, and `ignore/` of an image that is not
//!   LUKS (its stored bytes are plaintext). Needs the token when one is set.
//! - [`Access::Read`]: `encrypt/` views, `ignore/` of LUKS images (ciphertext), listings,
//!   status. Needs the token when one is set, unless `--public-read`.
//!
//! Without a token (`--token-file` absent) the server only listens on loopback (enforced at
//! bind) and every request is allowed: a local tool. Web pages in the user's browser are kept
//! out: a request must name a loopback host (no DNS rebinding), a browser's `Origin` must be a
//! loopback one (no cross-site requests), and a manifest must be sent as JSON or YAML (no
//! preflight-free `text/plain` or form POST); see [`auth::LocalOnly`]. The token travels only in
//! `Authorization: Bearer <token>` (no cookies, so no CSRF), is compared in constant time and
//! is never logged. A refusal is a 401 with `WWW-Authenticate: Bearer`.

pub mod api;
pub mod auth;
pub mod conditional;
pub mod metrics;
pub mod page;
pub mod server;
pub mod signed;
pub mod views;

use std::ops::Deref;
use std::path::PathBuf;
use std::sync::Arc;

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Router;

use bifs_node::catalog::{Catalog, CatalogError};
use bifs_node::longhorn::DownloadPolicy;

pub use auth::{Access, Policy, Token};
pub use metrics::Metrics;
pub use server::{ConnectionLimits, Listener, ServeConfig, ServeError, TlsFiles};

/// The state every handler shares (see the module doc).
#[derive(Clone)]
pub struct AppState {
    inner: Arc<Shared>,
}

pub struct Shared {
    /// The views: the same catalog type (and, under `bifs mount --serve`, the same instance)
    /// the FUSE mount uses.
    pub catalog: Arc<Catalog>,
    /// The store directory given with `--store`.
    pub store_root: PathBuf,
    /// Where persisted encrypt headers (and the served views' SHA-512 cache) live.
    pub state_dir: PathBuf,
    /// The `--secrets` path(s) the catalog's Secrets were loaded from (for `bifs apply`-like
    /// work that needs the Secrets themselves).
    pub secrets_paths: Vec<PathBuf>,
    pub policy: Policy,
    /// Counters for `/metrics`.
    pub metrics: Metrics,
    /// The SHA-512 of views, computed once per view identity.
    pub sums: views::SumCache,
    /// When each Secret version was first seen: part of encrypt views' Last-Modified.
    pub versions_seen: views::VersionsSeen,
    /// What remote callers may make the server do (downloads, time, memory).
    pub limits: ServerLimits,
    /// Memory for responses' view chunks, in KiB: a response reads ahead in 1 MiB chunks while
    /// this budget has room, in small unbudgeted chunks otherwise (see `views`).
    pub response_budget: Arc<tokio::sync::Semaphore>,
    /// Who this server is, for the URLs it hands out and the messages it sends.
    pub node: NodeInfo,
    /// Signs and checks signed URLs (`None` without a token: nothing needs signing).
    pub signer: Option<signed::Signer>,
    /// Set when the server stops: requests waiting for a view to be prepared give up at once.
    stopping: tokio::sync::watch::Sender<bool>,
    /// Requests that may wait for a view being prepared, all views together
    /// (`--max-kdf-jobs` + `--max-kdf-queue`): many requests for one slow view share one job, but each holds a
    /// connection while it waits, and past this they would crowd every other view out of
    /// `--max-connections`.
    pub prepare_waiters: Arc<tokio::sync::Semaphore>,
}

/// What bounds the work remote callers can cause, besides the connection limits
/// ([`ServeConfig::connections`]).
#[derive(Debug, Clone)]
pub struct ServerLimits {
    /// What downloads created through the API may reach (`--allow-download-from`,
    /// `--max-download-size`, `--max-download-time`).
    pub downloads: DownloadPolicy,
    /// An upload body that sends nothing for this long is cut off (`--send-timeout`).
    pub send_timeout: std::time::Duration,
    /// Bytes of view data responses may hold read ahead, all together
    /// (`--response-memory`).
    pub response_memory: u64,
}

pub const DEFAULT_RESPONSE_MEMORY: u64 = 128 << 20;

impl Default for ServerLimits {
    fn default() -> Self {
        Self {
            downloads: DownloadPolicy::remote(
                Vec::new(),
                None,
                bifs_node::longhorn::download::DEFAULT_MAX_TIME,
            ),
            send_timeout: server::DEFAULT_SEND_TIMEOUT,
            response_memory: DEFAULT_RESPONSE_MEMORY,
        }
    }
}

/// Who a server is: what its URLs and its "not here" answers name.
#[derive(Debug, Clone, Default)]
pub struct NodeInfo {
    /// The node's name (`NODE_NAME`, else the host name).
    pub name: String,
    /// The base URL clients (Longhorn's download pods) reach this server at
    /// (`--advertise-url`); `None`: the URL it listens on.
    pub advertise_url: Option<String>,
}

impl NodeInfo {
    /// This node as a message names it: `node NAME (URL)`.
    pub fn describe(&self) -> String {
        match &self.advertise_url {
            Some(u) => format!("node {} ({u})", self.name),
            None => format!("node {}", self.name),
        }
    }
}

impl AppState {
    pub fn new(
        catalog: Arc<Catalog>,
        secrets_paths: Vec<PathBuf>,
        policy: Policy,
        node: NodeInfo,
    ) -> Self {
        Self::with_limits(
            catalog,
            secrets_paths,
            policy,
            node,
            ServerLimits::default(),
        )
    }

    pub fn with_limits(
        catalog: Arc<Catalog>,
        secrets_paths: Vec<PathBuf>,
        policy: Policy,
        node: NodeInfo,
        limits: ServerLimits,
    ) -> Self {
        let store_root = catalog.store().root().to_path_buf();
        let state_dir = catalog.store().state().path().to_path_buf();
        let kib = usize::try_from(limits.response_memory >> 10)
            .unwrap_or(usize::MAX)
            .min(tokio::sync::Semaphore::MAX_PERMITS);
        let signer = policy.token.as_ref().map(Token::signer);
        // As many as the pool holds jobs, running and queued.
        let work = catalog.work_config();
        let waiters = work
            .jobs
            .saturating_add(work.max_queued)
            .clamp(1, tokio::sync::Semaphore::MAX_PERMITS);
        Self {
            inner: Arc::new(Shared {
                catalog,
                store_root,
                state_dir,
                secrets_paths,
                policy,
                metrics: Metrics::default(),
                sums: views::SumCache::default(),
                versions_seen: views::VersionsSeen::default(),
                limits,
                response_budget: Arc::new(tokio::sync::Semaphore::new(kib)),
                node,
                signer,
                stopping: tokio::sync::watch::channel(false).0,
                prepare_waiters: Arc::new(tokio::sync::Semaphore::new(waiters)),
            }),
        }
    }

    /// The layout the served store had when it was opened: writes keep to it.
    pub fn layout(&self) -> bifs_node::store::Layout {
        self.catalog.store().layout()
    }

    /// Tells requests that wait for a view to be prepared that the server is stopping.
    pub fn stop(&self) {
        self.stopping.send_replace(true);
    }

    /// Resolves once [`Self::stop`] was called.
    pub async fn stopped(&self) {
        let mut rx = self.stopping.subscribe();
        let _ = rx.wait_for(|s| *s).await;
    }

    /// Whether the request (its headers) may do `access`; the error is the response to send.
    pub fn authorize(
        &self,
        headers: &axum::http::HeaderMap,
        access: Access,
    ) -> Result<(), HttpError> {
        self.policy.check(headers, access)
    }
}

impl Deref for AppState {
    type Target = Shared;
    fn deref(&self) -> &Shared {
        &self.inner
    }
}

/// All routes, with the state. Request limits and logging are layered on here.
pub fn router(state: AppState) -> Router {
    Router::new()
        .merge(views::routes())
        .merge(api::routes())
        .merge(page::routes())
        .merge(metrics::routes())
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            local_only,
        ))
        .with_state(state)
}

/// Without a token, before any route: the request must be addressed to a loopback name and,
/// when a browser sent it, come from a page of a loopback origin ([`Policy::check_local`]).
async fn local_only(
    axum::extract::State(state): axum::extract::State<AppState>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    if let Err(e) = state.policy.check_local(request.uri(), request.headers()) {
        tracing::warn!(refused = %e, path = %request.uri().path(), "request refused (loopback-only server)");
        return HttpError::from(e).into_response();
    }
    next.run(request).await
}

/// An error answer: a status and a one-line plain-text message (never a key or passphrase:
/// messages are built from image names, Secret names and OS errors only).
#[derive(Debug)]
pub struct HttpError {
    pub status: StatusCode,
    pub message: String,
}

impl HttpError {
    pub fn new(status: StatusCode, message: impl Into<String>) -> Self {
        Self {
            status,
            message: message.into(),
        }
    }
}

impl IntoResponse for HttpError {
    fn into_response(self) -> Response {
        let busy = self.status == StatusCode::SERVICE_UNAVAILABLE;
        let mut resp = (
            self.status,
            [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
            format!("{}\n", self.message),
        )
            .into_response();
        if self.status == StatusCode::UNAUTHORIZED {
            resp.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"bifs\""),
            );
        }
        if busy {
            resp.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(RETRY_AFTER_SECS));
            // Shed the connection too: a refused client kept alive would hold one of the
            // --max-connections slots for the idle timeout, keeping others in the backlog; it
            // comes back after Retry-After on a new one.
            resp.headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        resp
    }
}

/// Seconds a client is told to wait (`Retry-After`) when a view is still being prepared or
/// the derivation queue is full.
pub const RETRY_AFTER_SECS: u64 = 10;

impl From<CatalogError> for HttpError {
    fn from(e: CatalogError) -> Self {
        let status = match &e {
            CatalogError::NoImage(_)
            | CatalogError::UnknownSecret(_)
            | CatalogError::UnknownNamespace(_)
            | CatalogError::Refused { .. } => StatusCode::NOT_FOUND,
            CatalogError::WrongPassphrase { .. }
            | CatalogError::Failed {
                over_budget: true, ..
            } => StatusCode::FORBIDDEN,
            CatalogError::Busy { .. } | CatalogError::Preparing { .. } => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            CatalogError::View { .. } | CatalogError::Io { .. } | CatalogError::Failed { .. } => {
                StatusCode::INTERNAL_SERVER_ERROR
            }
        };
        // I/O errors may carry the server's paths (a qcow2 backing file, the store): the
        // client gets the image and the OS error's kind, the log gets everything.
        let message = match &e {
            CatalogError::Io { image, error }
            | CatalogError::View {
                image,
                error: bifs_core::view::ViewError::Io(error),
            } => {
                tracing::error!(image = ?image, error = %e, "reading a view failed");
                format!(
                    "image {image:?}: reading it failed ({}); the server log has the details",
                    error.kind()
                )
            }
            _ => e.to_string(),
        };
        Self::new(status, message)
    }
}
