//! Binding and running: the exposure rules (loopback, token, TLS), connection limits and
//! timeouts, graceful shutdown.

use std::future::Future;
use std::io;
use std::net::{SocketAddr, TcpListener};
use std::path::PathBuf;
use std::time::Duration;

use axum::Router;
use axum_server::tls_rustls::RustlsConfig;
use axum_server::Handle;

use super::Policy;

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
}

impl Default for ServeConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], DEFAULT_PORT)),
            tls: None,
            insecure: false,
        }
    }
}

pub const DEFAULT_PORT: u16 = 8080;

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
    /// The rules of who may listen where (README "Who may do what").
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
}

impl Listener {
    /// Checks the rules, loads the TLS files and binds. Needs a Tokio runtime.
    pub async fn bind(cfg: &ServeConfig, policy: &Policy) -> Result<Self, ServeError> {
        cfg.check(policy)?;
        let tls = match &cfg.tls {
            None => None,
            Some(files) => Some(
                RustlsConfig::from_pem_file(&files.cert, &files.key)
                    .await
                    .map_err(|error| ServeError::Tls {
                        cert: files.cert.clone(),
                        key: files.key.clone(),
                        error,
                    })?,
            ),
        };
        let listener = TcpListener::bind(cfg.listen).map_err(|error| ServeError::Bind {
            addr: cfg.listen,
            error,
        })?;
        Ok(Self { listener, tls })
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
    pub async fn serve(
        self,
        app: Router,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), ServeError> {
        let handle = Handle::new();
        let on_shutdown = handle.clone();
        tokio::spawn(async move {
            shutdown.await;
            on_shutdown.graceful_shutdown(Some(GRACE));
        });
        let make = app.into_make_service();
        match self.tls {
            None => {
                let mut server = axum_server::from_tcp(self.listener)?;
                limit(server.http_builder());
                server
                    .first_request_timeout(HEADER_TIMEOUT)
                    .handle(handle)
                    .serve(make)
                    .await?;
            }
            Some(tls) => {
                let acceptor = axum_server::tls_rustls::RustlsAcceptor::new(tls)
                    .handshake_timeout(TLS_HANDSHAKE_TIMEOUT);
                let mut server = axum_server::from_tcp(self.listener)?.acceptor(acceptor);
                limit(server.http_builder());
                server
                    .first_request_timeout(HEADER_TIMEOUT)
                    .handle(handle)
                    .serve(make)
                    .await?;
            }
        }
        Ok(())
    }
}

fn limit(builder: &mut hyper_util::server::conn::auto::Builder<hyper_util::rt::TokioExecutor>) {
    builder
        .http1()
        .max_buf_size(MAX_HEAD_BYTES)
        .header_read_timeout(HEADER_TIMEOUT);
    builder
        .http2()
        .max_header_list_size(MAX_HEAD_BYTES as u32)
        .keep_alive_interval(Some(HEADER_TIMEOUT))
        .keep_alive_timeout(HEADER_TIMEOUT);
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
