//! `bifs serve` (and the server half of `bifs mount --serve`): the store's views over HTTP.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;

use bifs_http::{AppState, Listener, NodeInfo, Policy, ServeConfig, ServerLimits, TlsFiles, Token};
use bifs_node::catalog::Catalog;
use bifs_node::longhorn::DownloadPolicy;
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
    #[command(flatten)]
    limits: LimitArgs,
}

/// What remote clients may make the server do (docs/security.md lists each limit).
#[derive(clap::Args, Debug, Clone)]
pub struct LimitArgs {
    /// Connections served at once; more wait in the kernel's accept queue.
    #[arg(long, value_name = "N", default_value_t = 1024,
          value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    max_connections: u32,
    /// Close a connection whose client takes no byte of a response (or sends no byte of an
    /// upload) for this many seconds.
    #[arg(long, value_name = "SECS", default_value_t = 60,
          value_parser = clap::value_parser!(u64).range(1..))]
    send_timeout: u64,
    /// MiB of view data all responses together may read ahead (1 MiB chunks); past it,
    /// responses go on in 64 KiB chunks.
    #[arg(long, value_name = "MIB", default_value_t = 128,
          value_parser = clap::value_parser!(u64).range(1..=1 << 20))]
    response_memory: u64,
    /// An address range downloads created through the API may reach although it is not
    /// public (loopback, private, link-local...); repeat for several. Default: none.
    #[arg(long, value_name = "CIDR")]
    allow_download_from: Vec<bifs_node::longhorn::Cidr>,
    /// The largest download created through the API, in bytes (suffixes K, M, G, T: powers
    /// of 1024). Default: the store's free space when the download starts.
    #[arg(long, value_name = "SIZE", value_parser = parse_size)]
    max_download_size: Option<u64>,
    /// The longest a download created through the API may take, in seconds.
    #[arg(long, value_name = "SECS", default_value_t = 6 * 3600,
          value_parser = clap::value_parser!(u64).range(1..))]
    max_download_time: u64,
}

/// `123`, `10K`, `4G`: bytes, with binary suffixes.
fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let (num, shift) = match t.char_indices().last() {
        Some((i, c)) if c.is_ascii_alphabetic() => {
            let shift = match c.to_ascii_uppercase() {
                'K' => 10,
                'M' => 20,
                'G' => 30,
                'T' => 40,
                _ => return Err(format!("{s:?}: the suffix is K, M, G or T")),
            };
            (&t[..i], shift)
        }
        _ => (t, 0),
    };
    let n: u64 = num
        .trim()
        .parse()
        .map_err(|_| format!("{s:?} is not a size (bytes, or a number with K, M, G or T)"))?;
    n.checked_mul(1u64 << shift)
        .ok_or_else(|| format!("{s:?} is too large"))
}

impl LimitArgs {
    fn connections(&self) -> bifs_http::ConnectionLimits {
        bifs_http::ConnectionLimits {
            max_connections: self.max_connections as usize,
            send_timeout: Duration::from_secs(self.send_timeout),
        }
    }

    fn server(&self) -> ServerLimits {
        ServerLimits {
            downloads: DownloadPolicy::remote(
                self.allow_download_from.clone(),
                self.max_download_size,
                Duration::from_secs(self.max_download_time),
            ),
            send_timeout: Duration::from_secs(self.send_timeout),
            response_memory: self.response_memory << 20,
        }
    }
}

/// How the node's server is reached and how much key derivation work it takes on, shared by
/// `bifs serve` and `bifs mount` (whose `--serve` half uses the address).
#[derive(clap::Args, Debug, Clone)]
pub struct NodeArgs {
    /// The base URL Longhorn's download pods reach this server at (e.g. http://NODE_IP:8080):
    /// what the page and the API put in the URLs and manifests they hand out, and what a 404
    /// for an image this node does not hold names.
    #[arg(long, env = "BIFS_ADVERTISE_URL", value_name = "URL")]
    advertise_url: Option<String>,
    /// Key derivations (Argon2, PBKDF2: each up to --max-kdf-memory) running at once; more
    /// wait in a queue. Memory for them: this times --max-kdf-memory.
    #[arg(long, value_name = "N", default_value_t = 2,
          value_parser = clap::value_parser!(u16).range(1..=64))]
    max_kdf_jobs: u16,
    /// Requests that may wait for a key derivation; beyond, 503 with Retry-After.
    #[arg(long, value_name = "N", default_value_t = 32,
          value_parser = clap::value_parser!(u16).range(1..))]
    max_kdf_queue: u16,
}

impl NodeArgs {
    /// Sizes the catalog's derivation pool and starts its background preparation.
    pub fn start(&self, catalog: &Catalog) {
        catalog.configure_work(bifs_node::catalog::WorkConfig {
            jobs: usize::from(self.max_kdf_jobs),
            max_queued: usize::from(self.max_kdf_queue),
        });
        catalog.start_background();
    }

    pub fn node_info(&self) -> anyhow::Result<NodeInfo> {
        let advertise_url = match &self.advertise_url {
            Some(u) => Some(check_base_url(u)?),
            None => None,
        };
        Ok(NodeInfo {
            name: bifs_node::longhorn::node_name(),
            advertise_url,
        })
    }
}

/// A base URL: `http(s)://host[:port]` with no query (a trailing `/` is dropped).
pub fn check_base_url(u: &str) -> anyhow::Result<String> {
    let u = u.trim().trim_end_matches('/');
    let ok = (u.starts_with("http://") || u.starts_with("https://"))
        && !u.contains(['?', '#', ' '])
        && u.split_once("://")
            .is_some_and(|(_, rest)| !rest.is_empty());
    if !ok {
        anyhow::bail!("{u:?} is not a base URL (http://HOST:PORT or https://HOST:PORT)");
    }
    Ok(u.to_string())
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
    #[command(flatten)]
    node: NodeArgs,
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
            connections: self.limits.connections(),
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
    let node = args.node.node_info()?;
    args.node.start(&catalog);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("bifs-http")
        .build()
        .context("starting the HTTP runtime")?;
    let limits = args.exposure.limits.server();
    let result = runtime.block_on(run(
        cfg,
        policy,
        limits,
        catalog,
        secrets_paths,
        node,
        shutdown_signal(),
    ));
    // Reads under way are short; a key derivation is not on this runtime (it runs on the
    // derivation pool's own threads, which the process leaves behind when it exits).
    runtime.shutdown_timeout(std::time::Duration::from_millis(500));
    result
}

/// Runs the server of `bifs mount --serve` on its own thread; it ends with the process.
pub fn spawn_for_mount(
    listen: SocketAddr,
    exposure: &ExposureArgs,
    node: NodeInfo,
    catalog: Arc<Catalog>,
    secrets_paths: Vec<PathBuf>,
) -> anyhow::Result<()> {
    let (cfg, policy) = exposure.config(listen)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("bifs-http")
        .build()
        .context("starting the HTTP runtime")?;
    let limits = exposure.limits.server();
    // Bind before the mount starts, so a bad address fails the command at once.
    let listener = runtime.block_on(Listener::bind(&cfg, &policy))?;
    announce(&listener, &node)?;
    std::thread::Builder::new()
        .name("bifs-http".into())
        .spawn(move || {
            let state = AppState::with_limits(catalog, secrets_paths, policy, node, limits);
            let listener = listener.with_metrics(state.metrics.clone());
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
    limits: ServerLimits,
    catalog: Arc<Catalog>,
    secrets_paths: Vec<PathBuf>,
    node: NodeInfo,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let listener = Listener::bind(&cfg, &policy).await?;
    announce(&listener, &node)?;
    let state = AppState::with_limits(catalog, secrets_paths, policy, node, limits);
    let listener = listener.with_metrics(state.metrics.clone());
    let stopping = state.clone();
    let shutdown = async move {
        shutdown.await;
        // Requests waiting for a view to be prepared answer 503 now instead of holding the
        // graceful shutdown.
        stopping.stop();
    };
    listener.serve(bifs_http::router(state), shutdown).await?;
    tracing::info!("server stopped");
    Ok(())
}

/// The one line scripts and tests read to learn the URL (port 0 picks the port).
fn announce(listener: &Listener, node: &NodeInfo) -> anyhow::Result<()> {
    use std::io::Write;
    let url = listener.url()?;
    let mut out = std::io::stdout().lock();
    writeln!(out, "bifs serve: listening on {url}")?;
    out.flush()?;
    match &node.advertise_url {
        Some(a) => {
            tracing::info!(%url, advertised = %a, node = %node.name, "serving views at {url}/views/; Longhorn reaches them at {a}/views/")
        }
        None => {
            tracing::info!(%url, node = %node.name, "serving views at {url}/views/ (no --advertise-url: the URLs handed out name the address a request came in on)")
        }
    }
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
