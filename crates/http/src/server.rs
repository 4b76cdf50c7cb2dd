//! Binding and running: the exposure rules (loopback, token, TLS), connection limits and
//! timeouts, graceful shutdown.

use std::future::Future;
use std::io;
use std::net::{SocketAddr, TcpListener};
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use axum_server::tls_rustls::RustlsConfig;
use axum_server::Handle;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::{Metrics, Policy};

/// Certificate chain and private key (PEM) for `--tls-cert`/`--tls-key`.
#[derive(Debug, Clone)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// Where and how to listen.
#[derive(Debug, Clone)]
pub struct ServeConfig {
    pub listen: SocketAddr,
    pub tls: Option<TlsFiles>,
    /// Plain HTTP on a non-loopback address (the token then travels in clear).
    pub insecure: bool,
    pub connections: ConnectionLimits,
}

impl Default for ServeConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], DEFAULT_PORT)),
            tls: None,
            insecure: false,
            connections: ConnectionLimits::default(),
        }
    }
}

pub const DEFAULT_PORT: u16 = 8080;

/// What bounds the connections, whatever the clients do.
#[derive(Debug, Clone, Copy)]
pub struct ConnectionLimits {
    /// Connections served at once (`--max-connections`). More wait in the kernel's accept
    /// queue (backlog) until one ends: no file descriptor and no memory is spent on them.
    pub max_connections: usize,
    /// A connection whose peer takes no byte for this long while a response waits to be sent
    /// is closed (`--send-timeout`): a client that stops reading gives its memory back. The
    /// same bound applies to an upload's body that stops arriving.
    pub send_timeout: Duration,
}

pub const DEFAULT_MAX_CONNECTIONS: usize = 1024;
pub const DEFAULT_SEND_TIMEOUT: Duration = Duration::from_secs(60);

impl Default for ConnectionLimits {
    fn default() -> Self {
        Self {
            max_connections: DEFAULT_MAX_CONNECTIONS,
            send_timeout: DEFAULT_SEND_TIMEOUT,
        }
    }
}

/// Largest request head (request line + headers) a connection may send.
const MAX_HEAD_BYTES: usize = 64 * 1024;
/// A connection that sends no complete request head for this long is closed.
const HEADER_TIMEOUT: Duration = Duration::from_secs(30);
/// Time a TLS handshake may take.
const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// On shutdown, responses under way get this long to finish.
const GRACE: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error(
        "listening on {0} (not loopback) needs --token-file: without it anyone who can reach \
         the port could read plaintext and change the store"
    )]
    NeedsToken(SocketAddr),
    #[error(
        "listening on {0} (not loopback) needs TLS (--tls-cert and --tls-key), or --insecure to \
         send the token and the data in clear"
    )]
    NeedsTls(SocketAddr),
    #[error("binding {addr}: {error}")]
    Bind { addr: SocketAddr, error: io::Error },
    #[error("loading the TLS certificate {cert} and key {key}: {error}")]
    Tls {
        cert: PathBuf,
        key: PathBuf,
        error: io::Error,
    },
    #[error("serving: {0}")]
    Io(#[from] io::Error),
}

impl ServeConfig {
    /// The rules of who may listen where (docs/security.md, "Who can do what").
    pub fn check(&self, policy: &Policy) -> Result<(), ServeError> {
        if self.listen.ip().is_loopback() {
            return Ok(());
        }
        if policy.token.is_none() {
            return Err(ServeError::NeedsToken(self.listen));
        }
        if self.tls.is_none() && !self.insecure {
            return Err(ServeError::NeedsTls(self.listen));
        }
        Ok(())
    }
}

/// A bound socket, ready to serve: the address is known before the first request (port 0
/// picks a free one).
pub struct Listener {
    listener: TcpListener,
    tls: Option<RustlsConfig>,
    limits: ConnectionLimits,
    metrics: Metrics,
}

impl Listener {
    /// Checks the rules, loads the TLS files and binds. Needs a Tokio runtime.
    pub async fn bind(cfg: &ServeConfig, policy: &Policy) -> Result<Self, ServeError> {
        cfg.check(policy)?;
        let tls = match &cfg.tls {
            None => None,
            Some(files) => {
                let config = RustlsConfig::from_pem_file(&files.cert, &files.key)
                    .await
                    .map_err(|error| ServeError::Tls {
                        cert: files.cert.clone(),
                        key: files.key.clone(),
                        error,
                    })?;
                // HTTP/1.1 only (see `serve`): never offer h2 in ALPN.
                let mut inner = (*config.get_inner()).clone();
                inner.alpn_protocols = vec![b"http/1.1".to_vec()];
                config.reload_from_config(std::sync::Arc::new(inner));
                Some(config)
            }
        };
        let listener = TcpListener::bind(cfg.listen).map_err(|error| ServeError::Bind {
            addr: cfg.listen,
            error,
        })?;
        Ok(Self {
            listener,
            tls,
            limits: cfg.connections,
            metrics: Metrics::default(),
        })
    }

    /// Counts connections into `metrics` (the server's, so `/metrics` shows them).
    pub fn with_metrics(mut self, metrics: Metrics) -> Self {
        self.metrics = metrics;
        self
    }

    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// The base URL clients use (`http://` or `https://`, the bound address).
    pub fn url(&self) -> io::Result<String> {
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        Ok(format!("{scheme}://{}", self.local_addr()?))
    }

    /// Serves `app` until `shutdown` resolves; then lets responses under way finish (briefly).
    ///
    /// HTTP/1.1 only: one response in flight per connection, so memory is bounded by the
    /// connection cap (an HTTP/2 connection could hold a hundred streams, and a stream whose
    /// peer stops reading stalls on flow control, which the send timeout cannot see).
    pub async fn serve(
        self,
        app: Router,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), ServeError> {
        let handle: Handle<Peer> = Handle::new();
        let on_shutdown = handle.clone();
        tokio::spawn(async move {
            shutdown.await;
            on_shutdown.graceful_shutdown(Some(GRACE));
        });
        let make = app.into_make_service();
        self.listener.set_nonblocking(true)?;
        let max = fd_room(self.limits.max_connections.max(1));
        let limited = Limited {
            inner: tokio::net::TcpListener::from_std(self.listener)?,
            permits: Arc::new(Semaphore::new(max)),
            send_timeout: self.limits.send_timeout,
            metrics: self.metrics,
        };
        let mut server = axum_server::Server::<Peer>::from_listener(limited).http1_only();
        limit(server.http_builder());
        let server = server.first_request_timeout(HEADER_TIMEOUT).handle(handle);
        match self.tls {
            None => server.serve(make).await?,
            Some(tls) => {
                let acceptor = axum_server::tls_rustls::RustlsAcceptor::new(tls)
                    .handshake_timeout(TLS_HANDSHAKE_TIMEOUT);
                server.acceptor(acceptor).serve(make).await?
            }
        }
        Ok(())
    }
}

/// File descriptors kept for everything but connections (images, headers, Secrets, logs).
const SPARE_FDS: u64 = 256;

/// Raises the soft `RLIMIT_NOFILE` so that `max` connections fit (many containers start
/// with 1024); when even the hard limit is too low, serves fewer connections and says so.
fn fd_room(max: usize) -> usize {
    use rustix::process::{getrlimit, setrlimit, Resource};
    let want = max as u64 + SPARE_FDS;
    let mut lim = getrlimit(Resource::Nofile);
    let hard = lim.maximum.unwrap_or(u64::MAX);
    if lim.current.is_some_and(|c| c < want) {
        lim.current = Some(want.min(hard));
        if let Err(e) = setrlimit(Resource::Nofile, lim) {
            tracing::warn!(error = %e, "could not raise the open file limit");
        }
    }
    let have = getrlimit(Resource::Nofile).current.unwrap_or(u64::MAX);
    if have >= want {
        return max;
    }
    let fit = have.saturating_sub(SPARE_FDS).max(16) as usize;
    tracing::warn!(
        max_connections = max,
        open_file_limit = have,
        serving = fit,
        "the open file limit is too low for --max-connections; serving fewer at once"
    );
    fit
}

fn limit(builder: &mut hyper_util::server::conn::auto::Builder<hyper_util::rt::TokioExecutor>) {
    // The head timeout also closes a kept-alive connection that sends no next request.
    builder
        .http1()
        .max_buf_size(MAX_HEAD_BYTES)
        .header_read_timeout(HEADER_TIMEOUT);
}

/// The peer's address: axum-server's address type for [`Limited`].
#[derive(Debug, Clone)]
pub struct Peer(pub SocketAddr);

impl axum_server::Address for Peer {
    type Stream = Guarded;
    type Listener = Limited;
}

/// The listening socket, accepting only while fewer than the cap are open: the accept waits
/// for a free slot, so the connections past the cap wait in the kernel's backlog.
pub struct Limited {
    inner: tokio::net::TcpListener,
    permits: Arc<Semaphore>,
    send_timeout: Duration,
    metrics: Metrics,
}

impl axum_server::AddrListener<Guarded, Peer> for Limited {
    async fn bind_to(_addr: Peer) -> io::Result<Self> {
        Err(io::Error::new(
            io::ErrorKind::Unsupported,
            "bifs binds its listener itself",
        ))
    }

    async fn accept_stream(&self) -> io::Result<(Guarded, Peer)> {
        let permit = self
            .permits
            .clone()
            .acquire_owned()
            .await
            .map_err(io::Error::other)?;
        let (stream, addr) = self.inner.accept().await?;
        // Small responses go out at once (no 40 ms Nagle wait on kept-alive connections).
        stream.set_nodelay(true)?;
        self.metrics.connection_opened();
        Ok((
            Guarded {
                inner: stream,
                send_timeout: self.send_timeout,
                stalled: None,
                metrics: self.metrics.clone(),
                _permit: permit,
            },
            Peer(addr),
        ))
    }

    fn get_local_addr(&self) -> io::Result<Peer> {
        self.inner.local_addr().map(Peer)
    }
}

/// An accepted connection: holds its slot of the cap, and fails a write that makes no
/// progress for the send timeout (the peer stopped reading), which closes the connection.
pub struct Guarded {
    inner: tokio::net::TcpStream,
    send_timeout: Duration,
    /// Running while a write waits for the peer.
    stalled: Option<Pin<Box<tokio::time::Sleep>>>,
    metrics: Metrics,
    _permit: OwnedSemaphorePermit,
}

impl Drop for Guarded {
    fn drop(&mut self) {
        self.metrics.connection_closed();
    }
}

impl Guarded {
    /// Turns a pending write into a timeout error once it stayed pending too long.
    fn pending_write<T>(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<T>> {
        let timeout = self.send_timeout;
        let sleep = self
            .stalled
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(timeout)));
        if sleep.as_mut().poll(cx).is_ready() {
            self.stalled = None;
            self.metrics.send_timed_out();
            tracing::info!(
                secs = timeout.as_secs(),
                "closing a connection: the client took no data for the send timeout"
            );
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "the client took no data for the send timeout",
            )));
        }
        Poll::Pending
    }
}

impl AsyncRead for Guarded {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for Guarded {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match Pin::new(&mut self.inner).poll_write(cx, buf) {
            Poll::Ready(r) => {
                self.stalled = None;
                Poll::Ready(r)
            }
            Poll::Pending => self.pending_write(cx),
        }
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match Pin::new(&mut self.inner).poll_write_vectored(cx, bufs) {
            Poll::Ready(r) => {
                self.stalled = None;
                Poll::Ready(r)
            }
            Poll::Pending => self.pending_write(cx),
        }
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match Pin::new(&mut self.inner).poll_flush(cx) {
            Poll::Ready(r) => Poll::Ready(r),
            Poll::Pending => self.pending_write(cx),
        }
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Token;

    fn policy(token: bool) -> Policy {
        Policy {
            token: token.then(|| Token::new("0123456789abcdef0").unwrap()),
            public_read: false,
        }
    }

    #[test]
    fn exposure_rules() {
        let mut cfg = ServeConfig::default();
        assert!(cfg.check(&policy(false)).is_ok());
        cfg.listen = "0.0.0.0:8080".parse().unwrap();
        assert!(matches!(
            cfg.check(&policy(false)),
            Err(ServeError::NeedsToken(_))
        ));
        assert!(matches!(
            cfg.check(&policy(true)),
            Err(ServeError::NeedsTls(_))
        ));
        cfg.insecure = true;
        assert!(cfg.check(&policy(true)).is_ok());
        cfg.insecure = false;
        cfg.tls = Some(TlsFiles {
            cert: "c".into(),
            key: "k".into(),
        });
        assert!(cfg.check(&policy(true)).is_ok());
        cfg.listen = "[::1]:0".parse().unwrap();
        cfg.tls = None;
        assert!(cfg.check(&policy(false)).is_ok());
    }
}
