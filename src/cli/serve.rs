//! `bifs serve` (and the server half of `bifs mount --serve`): the store's views over HTTP.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;

use bifs_http::{AppState, Listener, Policy, ServeConfig, TlsFiles, Token};
use bifs_node::catalog::Catalog;
use bifs_node::store::Store;

/// Who may reach the server, shared by `bifs serve` and `bifs mount --serve`.
#[derive(clap::Args, Debug, Clone)]
pub struct ExposureArgs {
    /// File holding the bearer token that guards writes and plaintext reads (required off
    /// loopback).
    #[arg(long, value_name = "FILE")]
    token_file: Option<PathBuf>,
    /// Serve encrypt/ and ignore/ views without the token.
    #[arg(long)]
    public_read: bool,
    /// TLS certificate chain (PEM).
    #[arg(long, value_name = "FILE", requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// TLS private key (PEM).
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// Allow plain HTTP on a non-loopback address.
    #[arg(long)]
    insecure: bool,
}

#[derive(clap::Args, Debug)]
pub struct ServeArgs {
    /// Directory of backing images (flat, or a Longhorn disk with backing-images/).
    #[arg(long, env = "BIFS_STORE", value_name = "DIR")]
    store: PathBuf,
    /// Kubernetes Secret manifest file, or a directory of them (for encrypt/ and decrypt/);
    /// `--secret` is the same option.
    #[arg(long, visible_alias = "secret", value_name = "PATH")]
    secrets: Option<PathBuf>,
    /// Where persisted encrypt-view headers live (default: STORE/.bifs); share it with
    /// `bifs mount` so both serve the same bytes.
    #[arg(long, value_name = "DIR")]
    state: Option<PathBuf>,
    /// Address and port to listen on (port 0 picks a free one; the URL is printed).
    #[arg(long, value_name = "ADDR:PORT", default_value = "127.0.0.1:8080")]
    listen: SocketAddr,
    #[command(flatten)]
    exposure: ExposureArgs,
}

impl ExposureArgs {
    fn config(&self, listen: SocketAddr) -> anyhow::Result<(ServeConfig, Policy)> {
        let token = match &self.token_file {
            None => None,
            Some(p) => Some(
                Token::from_file(p)
                    .with_context(|| format!("reading the token from {}", p.display()))?,
            ),
        };
        let tls = match (&self.tls_cert, &self.tls_key) {
            (Some(cert), Some(key)) => Some(TlsFiles {
                cert: cert.clone(),
                key: key.clone(),
            }),
            _ => None,
        };
        let cfg = ServeConfig {
            listen,
            tls,
            insecure: self.insecure,
        };
        let policy = Policy {
            token,
            public_read: self.public_read,
        };
        cfg.check(&policy)?;
        Ok((cfg, policy))
    }
}

pub fn serve(args: &ServeArgs) -> anyhow::Result<()> {
    let (cfg, policy) = args.exposure.config(args.listen)?;
    let store = Store::open(&args.store, args.state.as_deref())?;
    tracing::info!(
        store = %store.root().display(), layout = ?store.layout(), state = %store.state().path().display(),
        "opening store"
    );
    // Secrets from --secrets are followed while serving (a rotated Secret volume takes effect
    // on the next open), as under `bifs mount`.
    let (catalog, secrets_paths) = match &args.secrets {
        Some(p) => (
            Catalog::watching(store, bifs_k8s::SecretSource::open(p)?),
            vec![p.clone()],
        ),
        None => (Catalog::new(store, Vec::new()), Vec::new()),
    };
    let catalog = Arc::new(catalog);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("bifs-http")
        .build()
        .context("starting the HTTP runtime")?;
    runtime.block_on(run(cfg, policy, catalog, secrets_paths, shutdown_signal()))
}

/// Runs the server of `bifs mount --serve` on its own thread; it ends with the process.
pub fn spawn_for_mount(
    listen: SocketAddr,
    exposure: &ExposureArgs,
    catalog: Arc<Catalog>,
    secrets_paths: Vec<PathBuf>,
) -> anyhow::Result<()> {
    let (cfg, policy) = exposure.config(listen)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("bifs-http")
        .build()
        .context("starting the HTTP runtime")?;
    // Bind before the mount starts, so a bad address fails the command at once.
    let listener = runtime.block_on(Listener::bind(&cfg, &policy))?;
    announce(&listener)?;
    std::thread::Builder::new()
        .name("bifs-http".into())
        .spawn(move || {
            let state = AppState::new(catalog, secrets_paths, policy);
            let result =
                runtime.block_on(listener.serve(bifs_http::router(state), std::future::pending()));
            if let Err(e) = result {
                tracing::error!(error = %e, "HTTP server stopped");
            }
        })
        .context("starting the HTTP thread")?;
    Ok(())
}

async fn run(
    cfg: ServeConfig,
    policy: Policy,
    catalog: Arc<Catalog>,
    secrets_paths: Vec<PathBuf>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let listener = Listener::bind(&cfg, &policy).await?;
    announce(&listener)?;
    let state = AppState::new(catalog, secrets_paths, policy);
    listener.serve(bifs_http::router(state), shutdown).await?;
    tracing::info!("server stopped");
    Ok(())
}

/// The one line scripts and tests read to learn the URL (port 0 picks the port).
fn announce(listener: &Listener) -> anyhow::Result<()> {
    use std::io::Write;
    let url = listener.url()?;
    let mut out = std::io::stdout().lock();
    writeln!(out, "bifs serve: listening on {url}")?;
    out.flush()?;
    tracing::info!(%url, "serving views at {url}/views/");
    Ok(())
}

async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut int), Ok(mut term)) = (
        signal(SignalKind::interrupt()),
        signal(SignalKind::terminate()),
    ) else {
        tracing::warn!("no signal handlers; stop the server with SIGKILL");
        return std::future::pending().await;
    };
    tokio::select! {
        _ = int.recv() => {}
        _ = term.recv() => {}
    }
    tracing::info!("stopping");
}
