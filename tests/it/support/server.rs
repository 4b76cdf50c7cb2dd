//! A real `bifs serve` on 127.0.0.1 (port 0) over a fresh Longhorn-style store, with one
//! cheap-KDF Secret and a bearer token; stopped when dropped. Shared by tests/serve_api.rs,
//! tests/serve_metrics.rs and tests/browser.rs, with the curl and manifest helpers they share.

use std::io::{BufRead, BufReader, Read};
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
}

impl Server {
    pub fn start() -> Server {
        let dir = tempfile::Builder::new()
            .prefix("bifs-serve-test")
            .tempdir()
            .expect("tempdir");
        let store = dir.path().join("store");
        // A Longhorn disk from the start, so the views see the images the API creates.
        std::fs::create_dir_all(store.join("backing-images")).expect("store dir");
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
        let token = dir.path().join("token");
        std::fs::write(&token, TOKEN).expect("token");
        let mut child = Command::new(crate::support::BIFS)
            .arg("serve")
            .arg("--store")
            .arg(&store)
            .arg("--secrets")
            .arg(&secrets)
            .arg("--token-file")
            .arg(&token)
            .args(["--listen", "127.0.0.1:0"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("starting bifs serve");
        let mut line = String::new();
        let stdout = child.stdout.take().expect("stdout");
        let mut reader = BufReader::new(stdout);
        reader
            .read_line(&mut line)
            .expect("reading bifs serve's stdout");
        let Some(url) = line.trim().strip_prefix("bifs serve: listening on ") else {
            let mut err = String::new();
            if let Some(mut e) = child.stderr.take() {
                let _ = e.read_to_string(&mut err);
            }
            let _ = child.kill();
            panic!("bifs serve did not start: {line:?}\n{err}");
        };
        let url = url.trim_end_matches('/').to_string();
        // Keep draining stderr so the server never blocks on a full pipe.
        if let Some(mut e) = child.stderr.take() {
            std::thread::spawn(move || {
                let mut sink = Vec::new();
                let _ = e.read_to_end(&mut sink);
            });
        }
        Server { child, url, dir }
    }

    #[allow(dead_code)] // used by tests/serve_api.rs and tests/browser.rs, not tests/serve_metrics.rs
    pub fn store(&self) -> PathBuf {
        self.dir.path().join("store")
    }

    pub fn work(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
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
#[allow(dead_code)] // used by tests/serve_api.rs and tests/serve_metrics.rs
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

/// A BackingImage named `name` that downloads `path` (a `file://` URL), as YAML.
#[allow(dead_code)] // used by tests/serve_api.rs and tests/serve_metrics.rs
pub fn download_yaml(name: &str, path: &Path) -> String {
    format!(
        "apiVersion: longhorn.io/v1beta2\nkind: BackingImage\nmetadata:\n  name: {name}\nspec:\n  sourceType: download\n  sourceParameters:\n    url: file://{}\n",
        path.display()
    )
}
