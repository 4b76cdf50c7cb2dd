//! A real `bifs serve` on 127.0.0.1 (port 0) over a fresh Longhorn-style (or flat) store, with
//! one cheap-KDF Secret and a bearer token, its log in `server.log`; stopped when dropped.
//! API downloads come from a local HTTP server of the work directory (allowed with
//! `--allow-download-from 127.0.0.0/8`). Shared by tests/it/serve_api.rs,
//! tests/it/serve_metrics.rs and tests/it/browser.rs, with the curl and manifest helpers they share.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

pub const TOKEN: &str = "test-token-0123456789abcdef";
pub const PASSPHRASE: &str = "browser test passphrase";
pub const SECRET_NS: &str = "longhorn-system";
pub const SECRET_NAME: &str = "longhorn-crypto";

pub struct Server {
    child: Child,
    pub url: String,
    pub dir: tempfile::TempDir,
    store: PathBuf,
    /// `bifs serve`'s arguments, for a restart.
    args: Vec<std::ffi::OsString>,
    /// Serves the work directory over HTTP on 127.0.0.1: the source of API downloads.
    files: Option<crate::support::apply::HttpServer>,
}

/// How to start a [`Server`].
#[derive(Default)]
pub struct Options<'a> {
    /// A flat store (a directory of image files) instead of a Longhorn disk.
    pub flat: bool,
    /// More arguments for `bifs serve`.
    pub args: &'a [&'a str],
    /// Leave out `--allow-download-from 127.0.0.0/8` (the local test source).
    pub no_loopback_downloads: bool,
    /// Files to put in the store before the server starts.
    pub files: &'a [(&'a str, &'a [u8])],
    /// The store directory (made if needed), instead of one in the server's work directory.
    pub store: Option<&'a Path>,
    /// No `--token-file`: the loopback-only server where every local request is allowed.
    pub no_token: bool,
    /// A second Secret (YAML), beside the cheap one.
    pub extra_secret: Option<&'a str>,
}

impl Server {
    pub fn start() -> Server {
        Server::start_with(Options::default())
    }

    pub fn start_with(opts: Options<'_>) -> Server {
        let dir = tempfile::Builder::new()
            .prefix("bifs-serve-test")
            .tempdir()
            .expect("tempdir");
        let store = opts
            .store
            .map_or_else(|| dir.path().join("store"), Path::to_path_buf);
        if opts.flat {
            std::fs::create_dir_all(&store).expect("store dir");
        } else {
            // A Longhorn disk from the start, so the views see the images the API creates.
            std::fs::create_dir_all(store.join("backing-images")).expect("store dir");
        }
        for (name, bytes) in opts.files {
            std::fs::write(store.join(name), bytes).expect("store file");
        }
        let secrets = dir.path().join("secrets");
        std::fs::create_dir_all(&secrets).expect("secrets dir");
        // pbkdf2 with 1000 iterations: a test Secret, not a real one.
        std::fs::write(
            secrets.join("crypto.yaml"),
            format!(
                "apiVersion: v1\nkind: Secret\nmetadata:\n  name: {SECRET_NAME}\n  namespace: {SECRET_NS}\n\
                 type: Opaque\nstringData:\n  CRYPTO_KEY_VALUE: \"{PASSPHRASE}\"\n  CRYPTO_KEY_PROVIDER: secret\n\
                 \x20 CRYPTO_KEY_CIPHER: aes-xts-plain64\n  CRYPTO_KEY_HASH: sha256\n  CRYPTO_KEY_SIZE: \"256\"\n\
                 \x20 CRYPTO_PBKDF: pbkdf2\n  CRYPTO_PBKDF_FORCE_ITERATIONS: \"1000\"\n"
            ),
        )
        .expect("secret");
        if let Some(yaml) = opts.extra_secret {
            std::fs::write(secrets.join("extra.yaml"), yaml).expect("extra secret");
        }
        let token = dir.path().join("token");
        std::fs::write(&token, TOKEN).expect("token");
        let mut args: Vec<std::ffi::OsString> = vec!["serve".into(), "--store".into()];
        args.push(store.clone().into());
        args.push("--secrets".into());
        args.push(secrets.into());
        if !opts.no_token {
            args.push("--token-file".into());
            args.push(token.into());
        }
        args.extend(["--listen".into(), "127.0.0.1:0".into()]);
        if !opts.no_loopback_downloads {
            // The tests' download source is a local HTTP server; a real server refuses it.
            args.extend(["--allow-download-from".into(), "127.0.0.0/8".into()]);
        }
        args.extend(opts.args.iter().map(Into::into));
        let (child, url) = spawn(dir.path(), &args);
        Server {
            child,
            url,
            dir,
            store,
            args,
            files: None,
        }
    }

    /// Stops the server and starts it again on the same store, with the same arguments (a
    /// new port: `url` changes).
    pub fn restart(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let (child, url) = spawn(self.dir.path(), &self.args);
        self.child = child;
        self.url = url;
    }

    pub fn store(&self) -> PathBuf {
        self.store.clone()
    }

    pub fn work(&self) -> &Path {
        self.dir.path()
    }

    /// What the server logged so far (its stderr).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("server.log")).unwrap_or_default()
    }

    /// The server's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The http:// URL of `path`, a file under the work directory, served on 127.0.0.1.
    pub fn file_url(&mut self, path: &Path) -> String {
        let rel = path
            .strip_prefix(self.dir.path())
            .expect("a file of the work directory")
            .to_string_lossy()
            .into_owned();
        let files = self
            .files
            .get_or_insert_with(|| crate::support::apply::HttpServer::start(self.dir.path(), 0.0));
        files.url(&rel)
    }

    /// A BackingImage named `name` that downloads `path` (under the work directory) from the
    /// local HTTP server, as YAML.
    pub fn download_yaml(&mut self, name: &str, path: &Path) -> String {
        download_manifest(name, &self.file_url(path))
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts `bifs ARGS` (a serve) with its stderr appended to `dir/server.log`; returns it with
/// the URL it announced.
fn spawn(dir: &Path, args: &[std::ffi::OsString]) -> (Child, String) {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join("server.log"))
        .expect("log file");
    let mut child = Command::new(crate::support::BIFS)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(log)
        .spawn()
        .expect("starting bifs serve");
    let mut line = String::new();
    let stdout = child.stdout.take().expect("stdout");
    let mut reader = BufReader::new(stdout);
    reader
        .read_line(&mut line)
        .expect("reading bifs serve's stdout");
    let Some(url) = line.trim().strip_prefix("bifs serve: listening on ") else {
        let _ = child.kill();
        let err = std::fs::read_to_string(dir.join("server.log")).unwrap_or_default();
        panic!("bifs serve did not start: {line:?}\n{err}");
    };
    (child, url.trim_end_matches('/').to_string())
}

/// A deterministic image of `len` bytes (varied content, so views differ from zeros).
pub fn image_file(path: &Path, len: usize, seed: u8) {
    let data: Vec<u8> = (0..len)
        .map(|i| {
            (i as u32)
                .wrapping_mul(2654435761)
                .wrapping_add(seed as u32) as u8
                ^ (i >> 9) as u8
        })
        .collect();
    std::fs::write(path, data).expect("writing the test image");
}

/// `curl` with the given arguments: (HTTP status, body).
pub fn curl(args: &[&str]) -> (u16, String) {
    let out = Command::new("curl")
        .args(["-sS", "-w", "\n%{http_code}"])
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("curl not runnable (apt-get install curl)");
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", text.as_str()));
    (code.trim().parse().unwrap_or(0), body.to_string())
}

/// A BackingImage named `name` that downloads `url`, as YAML.
pub fn download_manifest(name: &str, url: &str) -> String {
    format!(
        "apiVersion: longhorn.io/v1beta2\nkind: BackingImage\nmetadata:\n  name: {name}\nspec:\n  sourceType: download\n  sourceParameters:\n    url: {url}\n"
    )
}
