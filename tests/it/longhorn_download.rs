//! Longhorn downloads every kind of view from a running `bifs serve` (issue 19), with a client
//! that behaves as backing-image-manager's does: `tests/longhorn_client/` (HEAD then GET with
//! Go's default client, exact 200, no Range, no resume, no header of its own, Longhorn v1.7's
//! 4 s HEAD deadline and 4 s idle limit, the exact SHA-512 string compare with `spec.checksum`,
//! the file renamed into `DISK/backing-images/NAME-UUID/backing` with BIM's `backing.cfg`).
//!
//! The servers run as on a node: `--token-file` and `--public-read` (encrypt/ and LUKS ignore/ open,
//! raw/ and decrypt/ behind the token, reachable by Longhorn through signed URLs).
//!
//! Needs `go` (golang-go) for the client; the tests with `full_tier_only!` also need curl (a
//! view's `.sha512`), cryptsetup (the downloaded LUKS2 image opens) and qemu-img (BIM's virtual
//! size).

use std::fs;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use crate::support::longhorn_client::Target;
use sha2::{Digest, Sha512};

use crate::support::noise;

const MIB: usize = 1 << 20;
const NS: &str = "longhorn-system";
/// A test Secret: PBKDF2 with 1000 iterations.
const CHEAP: &str = "cheap";
const CHEAP_PASS: &str = "cheap test passphrase";
/// Longhorn's documented Secret (examples/longhorn/longhorn-crypto.yaml): argon2i, no cost keys,
/// so cryptsetup's benchmarked defaults.
const DOCS: &str = "longhorn-crypto";
const DOCS_PASS: &str = "Your encryption passphrase";
const TOKEN: &str = "longhorn-download-test-token-0123";

fn bifs(args: &[&str]) -> Output {
    Command::new(crate::support::BIFS)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("running bifs")
}

fn bifs_ok(args: &[&str]) -> String {
    let out = bifs(args);
    assert!(
        out.status.success(),
        "bifs {args:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn sha512_hex(bytes: &[u8]) -> String {
    hex::encode(Sha512::digest(bytes))
}

/// A view's `.sha512`, as a user takes `spec.checksum` before applying a manifest.
fn curl_sha512(view_url: &str) -> String {
    let out = Command::new("curl")
        .args(["-sfS", "--max-time", "120"])
        .arg(format!("{view_url}.sha512"))
        .stdin(Stdio::null())
        .output()
        .expect("curl (apt-get install curl)");
    assert!(
        out.status.success(),
        "curl {view_url}.sha512: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// `cryptsetup open --test-passphrase` with `pass` on stdin.
fn cryptsetup_opens(image: &Path, pass: &str) -> bool {
    let mut child = Command::new("cryptsetup")
        .args(["open", "--test-passphrase", "--key-file", "-"])
        .arg(image)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("cryptsetup (apt-get install cryptsetup-bin)");
    if let Some(mut stdin) = child.stdin.take() {
        stdin.write_all(pass.as_bytes()).expect("passphrase");
    }
    child.wait().expect("cryptsetup").success()
}

/// A disk-like image (a multiple of 512 bytes, as Longhorn's fetch requires): data, a 3 MiB
/// run of zeros (which Longhorn's copy turns into a hole), data.
fn disk_image(seed: u64) -> Vec<u8> {
    let mut v = noise(seed, 6 * MIB);
    v[3 * MIB / 2..9 * MIB / 2].fill(0);
    v
}

fn write_secret(path: &Path, text: &str) {
    use std::os::unix::fs::PermissionsExt;
    // Written aside and renamed, so a server watching the directory never reads half of it.
    let partial = path.with_extension("partial");
    fs::write(&partial, text).expect("secret");
    fs::set_permissions(&partial, fs::Permissions::from_mode(0o600)).expect("secret mode");
    fs::rename(&partial, path).expect("secret rename");
}

fn cheap_secret_text() -> String {
    format!(
        "apiVersion: v1\nkind: Secret\nmetadata:\n  name: {CHEAP}\n  namespace: {NS}\nstringData:\n  CRYPTO_KEY_VALUE: \"{CHEAP_PASS}\"\n  CRYPTO_KEY_PROVIDER: secret\n  CRYPTO_PBKDF: pbkdf2\n  CRYPTO_PBKDF_FORCE_ITERATIONS: \"1000\"\n"
    )
}

/// Longhorn's documented Secret, verbatim from examples/longhorn.
fn docs_secret_text() -> String {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/longhorn/longhorn-crypto.yaml");
    let text = fs::read_to_string(&p).expect("examples/longhorn/longhorn-crypto.yaml");
    assert!(text.contains(DOCS_PASS) && text.contains("argon2i"));
    assert!(!text.contains("CRYPTO_PBKDF_MEMORY") && !text.contains("ITERATIONS"));
    text
}

/// A node: a flat store with `disk.img` (and `luks.img`, its LUKS2 under the cheap Secret),
/// a Secrets directory and a token file.
struct Node {
    _tmp: tempfile::TempDir,
    dir: PathBuf,
    store: PathBuf,
    secrets: PathBuf,
    token: PathBuf,
    image: Vec<u8>,
}

impl Node {
    fn new(with_docs_secret: bool) -> Node {
        let tmp = tempfile::Builder::new()
            .prefix("bifs-longhorn-download")
            .tempdir()
            .expect("tempdir");
        let dir = tmp.path().to_path_buf();
        let store = dir.join("store");
        let secrets = dir.join("secrets");
        fs::create_dir_all(&store).expect("store");
        fs::create_dir_all(&secrets).expect("secrets");
        write_secret(&secrets.join("cheap.yaml"), &cheap_secret_text());
        if with_docs_secret {
            write_secret(&secrets.join("longhorn-crypto.yaml"), &docs_secret_text());
        }
        let token = dir.join("token");
        fs::write(&token, TOKEN).expect("token");
        let image = disk_image(19);
        fs::write(store.join("disk.img"), &image).expect("image");
        fs::write(store.join("other.img"), disk_image(20)).expect("image");
        let cheap = secrets.join("cheap.yaml");
        bifs_ok(&[
            "encrypt",
            "--secret",
            cheap.to_str().expect("path"),
            store.join("disk.img").to_str().expect("path"),
            store.join("luks.img").to_str().expect("path"),
        ]);
        Node {
            _tmp: tmp,
            dir,
            store,
            secrets,
            token,
            image,
        }
    }

    fn serve(&self, state: Option<&Path>) -> Server {
        Server::start(&self.store, &self.secrets, &self.token, state)
    }

    /// A Longhorn disk (not yet created) for the client to fill.
    fn disk(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }
}

/// A running `bifs serve` as on a node (token, public encrypt/ and LUKS ignore/), killed on drop.
/// Its log is kept and printed when it stops (libtest shows it for a failing test only).
struct Server {
    child: Child,
    url: String,
    log: Option<std::thread::JoinHandle<String>>,
}

impl Server {
    fn start(store: &Path, secrets: &Path, token: &Path, state: Option<&Path>) -> Server {
        let mut cmd = Command::new(crate::support::BIFS);
        cmd.arg("serve")
            .arg("--store")
            .arg(store)
            .arg("--secrets")
            .arg(secrets)
            .arg("--token-file")
            .arg(token)
            .arg("--public-read")
            .args(["--listen", "127.0.0.1:0"]);
        if let Some(s) = state {
            cmd.arg("--state").arg(s);
        }
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("starting bifs serve");
        // Drained all along, so the server never blocks on a full pipe.
        let log = child.stderr.take().map(|mut e| {
            std::thread::spawn(move || {
                let mut text = String::new();
                let _ = std::io::Read::read_to_string(&mut e, &mut text);
                text
            })
        });
        let mut line = String::new();
        if let Some(out) = child.stdout.take() {
            BufReader::new(out)
                .read_line(&mut line)
                .expect("bifs serve's stdout");
        }
        let Some(url) = line.trim().strip_prefix("bifs serve: listening on ") else {
            let _ = child.kill();
            let _ = child.wait();
            let log = log.and_then(|h| h.join().ok()).unwrap_or_default();
            panic!("bifs serve did not start: {line:?}\n{log}");
        };
        let url = url.trim_end_matches('/').to_string();
        Server { child, url, log }
    }

    fn view(&self, path: &str) -> String {
        format!("{}/views/{path}", self.url)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if let Some(log) = self.log.take().and_then(|h| h.join().ok()) {
            eprintln!("--- bifs serve at {} ---\n{log}", self.url);
        }
    }
}

fn encrypt_view(secret: &str, image: &str) -> String {
    format!("encrypt/{NS}/{secret}/{image}")
}

/// The ignore/ view, as Longhorn v1.7 downloads it: ready, byte for byte, the checksum and the
/// disk layout as BIM leaves them; a wrong `spec.checksum` fails with Longhorn's words.
#[test]
fn ignore_view_downloads_as_longhorn_does() {
    let client = longhorn_client_or_skip!();
    let node = Node::new(false);
    let srv = node.serve(None);
    // Signed: ignore/ of an image that is not LUKS is plaintext (the token, or a signed URL).
    let url = signed_url(&node, &srv.view("ignore/disk.img"), None);
    let want = sha512_hex(&node.image);
    let disk = node.disk("disk");
    let target = Target {
        disk: &disk,
        name: "parrot",
        uuid: "1a2b3c4d",
    };
    let d = client.download(&url, Some(&want), Some(&target));
    eprintln!("ignore/: {}", d.summary());
    assert!(d.ready, "{}", d.message());
    assert_eq!(d.checksum(), want);
    assert_eq!(d.size(), node.image.len() as u64);
    let file = disk.join("backing-images/parrot-1a2b3c4d/backing");
    assert_eq!(d.file(), file);
    assert!(fs::read(&file).expect("backing") == node.image);
    // backing.cfg as BIM v1.7 writes it: Go's JSON of its SyncingFileConfig, paths as its pods
    // see the disk (/data/).
    let cfg_text = fs::read_to_string(file.with_file_name("backing.cfg")).expect("backing.cfg");
    let prefix = format!(
        "{{\"name\":\"/data/backing-images/parrot-1a2b3c4d/backing\",\"uuid\":\"1a2b3c4d\",\"size\":{},\"virtualSize\":",
        node.image.len()
    );
    assert!(cfg_text.starts_with(&prefix), "{cfg_text}");
    let cfg: serde_json::Value = serde_json::from_str(&cfg_text).expect("backing.cfg JSON");
    assert_eq!(cfg["expectedChecksum"], want.as_str());
    assert_eq!(cfg["currentChecksum"], want.as_str());
    assert!(
        cfg["modificationTime"]
            .as_str()
            .is_some_and(|t| t.ends_with(" +0000 UTC")),
        "{cfg_text}"
    );
    // The zero run was skipped, not written: Longhorn's realSize counts allocated blocks.
    let real = d.json["realSize"].as_u64().expect("realSize");
    assert!(
        real < (node.image.len() - 2 * MIB) as u64,
        "realSize {real}"
    );
    if crate::support::tier::full() {
        // qemu-img (a full-tier tool) probes a raw file: its virtual size is its size.
        assert_eq!(
            d.json["virtualSize"].as_u64(),
            Some(node.image.len() as u64)
        );
    }
    // The data source's work directory is left empty.
    assert_eq!(fs::read_dir(disk.join("tmp")).expect("tmp").count(), 0);

    let wrong = "0".repeat(128);
    let target = Target {
        disk: &disk,
        name: "parrot",
        uuid: "5e6f7a8b",
    };
    let bad = client.download(&url, Some(&wrong), Some(&target));
    assert!(!bad.ready);
    assert_eq!(
        bad.message(),
        format!(
            "failed to process sync file: the expected checksum {wrong} doesn't match the file actual checksum {want}"
        )
    );
    assert!(!disk.join("backing-images/parrot-5e6f7a8b/backing").exists());
}

/// The encrypt/ view of a fresh (image, Secret) pair with a cheap Secret: ready within v1.7's
/// limits; its checksum is the view's `.sha512`; cryptsetup opens it and it decrypts to the image.
#[test]
fn encrypt_view_with_a_cheap_secret_downloads() {
    full_tier_only!("curl, cryptsetup, qemu-img");
    let client = longhorn_client_or_skip!();
    let node = Node::new(false);
    let srv = node.serve(None);
    let url = srv.view(&encrypt_view(CHEAP, "disk.img"));
    let disk = node.disk("disk");
    let target = Target {
        disk: &disk,
        name: "parrot-encrypted",
        uuid: "2b3c4d5e",
    };
    let d = client.download(&url, None, Some(&target));
    eprintln!("encrypt/ (pbkdf2 1000, fresh pair): {}", d.summary());
    assert!(d.ready, "{}", d.message());
    assert_eq!(d.size(), (node.image.len() + 16 * MIB) as u64);
    assert_eq!(d.checksum(), curl_sha512(&url));
    let file = d.file();
    assert!(cryptsetup_opens(&file, CHEAP_PASS));
    let plain = node.dir.join("plain.img");
    bifs_ok(&[
        "decrypt",
        "--secret",
        node.secrets.join("cheap.yaml").to_str().expect("path"),
        file.to_str().expect("path"),
        plain.to_str().expect("path"),
    ]);
    assert!(fs::read(&plain).expect("plaintext") == node.image);
}

/// Issue 19: a fresh (image, Secret) pair with Longhorn's documented argon2i Secret (no cost
/// keys) is ready within v1.7's 4 s HEAD deadline and 4 s idle limit, on the first try.
#[test]
fn fresh_pair_with_longhorns_documented_secret_meets_v17_limits() {
    full_tier_only!("curl, cryptsetup, qemu-img");
    let client = longhorn_client_or_skip!();
    let node = Node::new(true);
    let srv = node.serve(None);
    let url = srv.view(&encrypt_view(DOCS, "disk.img"));
    let disk = node.disk("disk");
    let target = Target {
        disk: &disk,
        name: "parrot-encrypted",
        uuid: "6f7a8b9c",
    };
    let d = client.download(&url, None, Some(&target));
    eprintln!("encrypt/ (documented argon2i, fresh pair): {}", d.summary());
    assert!(d.ready, "{}", d.message());
    assert_eq!(d.checksum(), curl_sha512(&url));
    assert!(cryptsetup_opens(&d.file(), DOCS_PASS));
}

/// Issue 19: a Secret added while the server runs has its views ready 20 s later.
#[test]
fn secret_added_at_run_time_is_ready_20s_later() {
    full_tier_only!("curl, cryptsetup, qemu-img");
    let client = longhorn_client_or_skip!();
    let node = Node::new(false);
    let srv = node.serve(None);
    write_secret(
        &node.secrets.join("longhorn-crypto.yaml"),
        &docs_secret_text(),
    );
    std::thread::sleep(Duration::from_secs(20));
    let url = srv.view(&encrypt_view(DOCS, "disk.img"));
    let disk = node.disk("disk");
    let target = Target {
        disk: &disk,
        name: "parrot-encrypted",
        uuid: "7a8b9c0d",
    };
    let d = client.download(&url, None, Some(&target));
    eprintln!(
        "encrypt/ (documented argon2i added 20 s before): {}",
        d.summary()
    );
    assert!(d.ready, "{}", d.message());
    assert!(cryptsetup_opens(&d.file(), DOCS_PASS));
}

/// raw/ and decrypt/ are plaintext: a client without headers (Longhorn's) is refused with 401,
/// in Longhorn's words. (Issue 19 keeps this refusal and adds signed URLs.)
#[test]
fn plaintext_views_refuse_a_client_without_headers() {
    let client = longhorn_client_or_skip!();
    let node = Node::new(false);
    let srv = node.serve(None);
    for view in [
        "raw/disk.img".to_string(),
        format!("decrypt/{NS}/{CHEAP}/luks.img"),
    ] {
        let url = srv.view(&view);
        let d = client.download(&url, None, None);
        assert!(!d.ready, "{view} was served without the token");
        assert_eq!(
            d.message(),
            format!(
                "failed to process sync file: expected status code 200 from {url}, got 401 Unauthorized"
            )
        );
    }
}

/// `bifs url --token-file F URL`: its last line.
fn signed_url(node: &Node, url: &str, expires: Option<&str>) -> String {
    let token = node.token.to_str().expect("path");
    let mut args = vec!["url", "--token-file", token];
    if let Some(e) = expires {
        args.extend(["--expires", e]);
    }
    args.push(url);
    let out = bifs_ok(&args);
    out.lines().last().unwrap_or("").trim().to_string()
}

/// Issue 19: signed URLs let Longhorn download raw/ and decrypt/; an altered or expired one is
/// refused with 401 or 403.
#[test]
fn signed_urls_let_longhorn_download_plaintext_views() {
    let client = longhorn_client_or_skip!();
    let node = Node::new(false);
    let srv = node.serve(None);
    let want = sha512_hex(&node.image);
    for view in [
        "raw/disk.img".to_string(),
        format!("decrypt/{NS}/{CHEAP}/luks.img"),
    ] {
        let signed = signed_url(&node, &srv.view(&view), None);
        assert!(!signed.contains(TOKEN), "the token itself is in {signed}");
        let d = client.download(&signed, Some(&want), None);
        eprintln!("{view} signed: {}", d.summary());
        assert!(d.ready, "{view}: {}", d.message());
    }
    let refused = |url: &str| {
        let d = client.download(url, None, None);
        assert!(!d.ready, "{url} was served");
        let m = d.message();
        assert!(
            m.ends_with("got 401 Unauthorized") || m.ends_with("got 403 Forbidden"),
            "{m}"
        );
    };
    let signed = signed_url(&node, &srv.view("raw/disk.img"), None);
    refused(&signed.replacen("/raw/disk.img", "/raw/other.img", 1));
    refused(&signed.replacen("/raw/disk.img", "/raw/luks.img", 1));
    let short = signed_url(&node, &srv.view("raw/disk.img"), Some("1s"));
    std::thread::sleep(Duration::from_secs(3));
    refused(&short);
}

/// Issue 19: two nodes with the same image and Secret but separate state serve the same
/// encrypt view, so a `spec.checksum` taken from one node's `.sha512` holds for a download
/// answered by the other.
#[test]
fn two_nodes_with_separate_state_serve_the_same_encrypt_view() {
    full_tier_only!("curl, qemu-img");
    let client = longhorn_client_or_skip!();
    let a = Node::new(false);
    let b = Node::new(false);
    let sa = a.serve(None);
    let sb = b.serve(None);
    let view = encrypt_view(CHEAP, "disk.img");
    let sum_a = curl_sha512(&sa.view(&view));
    let d = client.download(&sb.view(&view), Some(&sum_a), None);
    eprintln!(
        "encrypt/ from node B, checksum from node A: {}",
        d.summary()
    );
    assert!(d.ready, "{}", d.message());
}

/// Issue 19: a node whose state directory was lost serves the same encrypt view as before.
#[test]
fn wiped_state_serves_the_same_encrypt_view() {
    full_tier_only!("qemu-img");
    let client = longhorn_client_or_skip!();
    let node = Node::new(false);
    let state = node.dir.join("state");
    let view = encrypt_view(CHEAP, "disk.img");
    let first = {
        let srv = node.serve(Some(&state));
        client.download(&srv.view(&view), None, None)
    };
    assert!(first.ready, "{}", first.message());
    fs::remove_dir_all(&state).expect("wiping the state");
    let srv = node.serve(Some(&state));
    let again = client.download(&srv.view(&view), Some(first.checksum()), None);
    eprintln!("encrypt/ after the state was wiped: {}", again.summary());
    assert!(again.ready, "{}", again.message());
}

/// Whatever the construction, each (image, Secret) pair keeps its own bytes: encrypt views
/// differ across images and across Secrets.
#[test]
fn encrypt_views_differ_across_images_and_secrets() {
    let client = longhorn_client_or_skip!();
    let node = Node::new(false);
    let mut other = cheap_secret_text().replace(&format!("name: {CHEAP}\n"), "name: cheap-other\n");
    other = other.replace(CHEAP_PASS, "another passphrase");
    write_secret(&node.secrets.join("cheap-other.yaml"), &other);
    let srv = node.serve(None);
    let sums: Vec<String> = [
        encrypt_view(CHEAP, "disk.img"),
        encrypt_view(CHEAP, "other.img"),
        encrypt_view("cheap-other", "disk.img"),
    ]
    .iter()
    .map(|v| {
        let d = client.download(&srv.view(v), None, None);
        assert!(d.ready, "{v}: {}", d.message());
        d.checksum().to_string()
    })
    .collect();
    assert_ne!(sums[0], sums[1], "two images, one Secret: same bytes");
    assert_ne!(sums[0], sums[2], "one image, two Secrets: same bytes");
}

/// A disk that Longhorn filled (through this download) is served by bifs on that node: the
/// second node's download of its ignore/ view is the same file.
#[test]
fn a_disk_longhorn_filled_is_served_to_another_node() {
    let client = longhorn_client_or_skip!();
    let node = Node::new(false);
    let want = sha512_hex(&node.image);
    let disk = node.disk("disk");
    {
        let srv = node.serve(None);
        let target = Target {
            disk: &disk,
            name: "parrot",
            uuid: "3c4d5e6f",
        };
        let d = client.download(
            &signed_url(&node, &srv.view("ignore/disk.img"), None),
            Some(&want),
            Some(&target),
        );
        assert!(d.ready, "{}", d.message());
    }
    let srv = Server::start(&disk, &node.secrets, &node.token, None);
    let d = client.download(
        &signed_url(&node, &srv.view("ignore/parrot"), None),
        Some(&want),
        None,
    );
    eprintln!("ignore/ of a Longhorn-filled disk: {}", d.summary());
    assert!(d.ready, "{}", d.message());
}

/// Issue 19: `bifs get` lists a disk that backing-image-manager filled, with Longhorn's status
/// from its `backing.cfg`.
#[test]
fn bifs_get_lists_the_disk_a_download_filled() {
    let client = longhorn_client_or_skip!();
    let node = Node::new(false);
    let want = sha512_hex(&node.image);
    let disk = node.disk("disk");
    let srv = node.serve(None);
    let target = Target {
        disk: &disk,
        name: "parrot",
        uuid: "4d5e6f7a",
    };
    let d = client.download(
        &signed_url(&node, &srv.view("ignore/disk.img"), None),
        Some(&want),
        Some(&target),
    );
    assert!(d.ready, "{}", d.message());
    let disk_s = disk.to_str().expect("path");

    let table = bifs_ok(&["get", "--store", disk_s]);
    assert!(
        table
            .lines()
            .any(|l| l.starts_with("parrot ") && l.contains("ready")),
        "bifs get --store DISK listed: {table:?}"
    );
    let obj: serde_json::Value = serde_json::from_str(&bifs_ok(&[
        "get", "parrot", "-o", "json", "--store", disk_s,
    ]))
    .expect("bifs get -o json");
    let cfg: serde_json::Value = serde_json::from_slice(
        &fs::read(disk.join("backing-images/parrot-4d5e6f7a/backing.cfg")).expect("backing.cfg"),
    )
    .expect("backing.cfg JSON");
    let disk_cfg: serde_json::Value =
        serde_json::from_slice(&fs::read(disk.join("longhorn-disk.cfg")).expect("disk cfg"))
            .expect("disk cfg JSON");
    let disk_uuid = disk_cfg["diskUUID"].as_str().expect("diskUUID");
    let status = &obj["status"];
    assert_eq!(status["uuid"], "4d5e6f7a", "{obj}");
    assert_eq!(status["checksum"], want.as_str(), "{obj}");
    assert_eq!(
        status["size"].as_u64(),
        Some(node.image.len() as u64),
        "{obj}"
    );
    assert_eq!(status["virtualSize"], cfg["virtualSize"], "{obj}");
    assert_eq!(
        status["diskFileStatusMap"][disk_uuid]["state"], "ready",
        "{obj}"
    );
}

/// The instrument itself, against a plain Python server that logs what it receives: redirects
/// are followed without a Referer; HEAD has no Accept-Encoding, the GET asks for gzip; no Range,
/// no header of its own but Go's User-Agent; and a body that stops for longer than 4 s fails
/// the download at the 4 s idle limit, as Longhorn v1.7 does.
#[test]
fn the_client_behaves_as_longhorns() {
    full_tier_only!("python3");
    let client = longhorn_client_or_skip!();
    const SERVER: &str = r#"
import http.server, json, sys, time
class H(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def do_HEAD(self): self.answer(False)
    def do_GET(self): self.answer(True)
    def answer(self, body):
        sys.stderr.write(json.dumps({"method": self.command, "path": self.path,
                                     "headers": {k.lower(): v for k, v in self.headers.items()}}) + "\n")
        sys.stderr.flush()
        if self.path == "/redirect":
            self.send_response(302)
            self.send_header("Location", "/stall")
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        self.send_response(200)
        self.send_header("Content-Length", str(1 << 20))
        self.end_headers()
        if body:
            self.wfile.write(b"x" * 8192)
            self.wfile.flush()
            time.sleep(9)
    def log_message(self, *args):
        pass
s = http.server.ThreadingHTTPServer(("127.0.0.1", 0), H)
print(s.server_address[1], flush=True)
s.serve_forever()
"#;
    let mut py = Command::new("python3")
        .args(["-c", SERVER])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("python3");
    let mut port = String::new();
    if let Some(out) = py.stdout.take() {
        BufReader::new(out).read_line(&mut port).expect("port");
    }
    let url = format!("http://127.0.0.1:{}/redirect", port.trim());
    let d = client.download(&url, None, None);
    let _ = py.kill();
    let _ = py.wait();
    let mut log = String::new();
    if let Some(mut e) = py.stderr.take() {
        std::io::Read::read_to_string(&mut e, &mut log).expect("server log");
    }
    eprintln!("stalling server: {}", d.summary());
    assert!(!d.ready);
    assert!(
        d.message().starts_with("failed to process sync file: ") && d.message().contains("cancel"),
        "{}",
        d.message()
    );
    // Idle from the first 8 KiB on: cancelled 4 s later, not at the server's 9 s.
    let total = d.seconds("totalSeconds");
    assert!((4.0..8.0).contains(&total), "cancelled after {total} s");

    let requests: Vec<serde_json::Value> = log
        .lines()
        .map(|l| serde_json::from_str(l).expect("server log line"))
        .collect();
    let seen: Vec<(String, String)> = requests
        .iter()
        .map(|r| {
            (
                r["method"].as_str().unwrap_or("").to_string(),
                r["path"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect();
    let want: Vec<(String, String)> = [
        ("HEAD", "/redirect"),
        ("HEAD", "/stall"),
        ("GET", "/redirect"),
        ("GET", "/stall"),
    ]
    .iter()
    .map(|(m, p)| (m.to_string(), p.to_string()))
    .collect();
    assert_eq!(seen, want);
    for r in &requests {
        let h = r["headers"].as_object().expect("headers");
        let mut names: Vec<&str> = h.keys().map(String::as_str).collect();
        names.sort_unstable();
        let expected: &[&str] = if r["method"] == "GET" {
            &["accept-encoding", "host", "user-agent"]
        } else {
            &["host", "user-agent"]
        };
        assert_eq!(names, expected, "{r}");
        assert!(
            h["user-agent"]
                .as_str()
                .is_some_and(|u| u.starts_with("Go-http-client/")),
            "{r}"
        );
        if r["method"] == "GET" {
            assert_eq!(h["accept-encoding"], "gzip", "{r}");
        }
    }
}
