//! Helpers for `tests/it/apply.rs`: the bifs binary, a local HTTP server, test images, the
//! Longhorn example manifests rewritten for the local server, store inspection.

pub use crate::support::noise;
use std::fs;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};

use sha2::{Digest, Sha512};

pub const MIB: u64 = 1024 * 1024;
pub const PASSPHRASE: &str = "Your encryption passphrase";

pub fn bifs_bin() -> &'static str {
    crate::support::BIFS
}

pub fn bifs(args: &[&str]) -> Output {
    Command::new(bifs_bin())
        .args(args)
        .env("BIFS_LOG", "warn")
        .output()
        .expect("run bifs")
}

/// Runs bifs and expects success; returns stdout.
pub fn ok(args: &[&str]) -> String {
    let out = bifs(args);
    assert!(
        out.status.success(),
        "bifs {args:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Runs bifs and expects failure; returns stderr.
pub fn fails(args: &[&str]) -> String {
    let out = bifs(args);
    assert!(
        !out.status.success(),
        "bifs {args:?} succeeded: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    String::from_utf8_lossy(&out.stderr).into_owned()
}

pub fn tool(cmd: &str, args: &[&str]) -> Output {
    Command::new(cmd).args(args).output().unwrap_or_else(|e| {
        panic!("`{cmd}` could not run ({e}); the apply tests need cryptsetup-bin and qemu-utils")
    })
}

pub fn tool_ok(cmd: &str, args: &[&str]) -> String {
    let out = tool(cmd, args);
    assert!(
        out.status.success(),
        "{cmd} {args:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `cryptsetup open --test-passphrase` with `pass` on stdin: whether it opens.
pub fn cryptsetup_opens(image: &Path, pass: &str) -> bool {
    use std::io::Write;
    let mut child = Command::new("cryptsetup")
        .args(["open", "--test-passphrase", "--key-file", "-"])
        .arg(image)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("cryptsetup (apt-get install cryptsetup-bin)");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(pass.as_bytes())
        .unwrap();
    child.wait().unwrap().success()
}

pub fn sha512_hex(bytes: &[u8]) -> String {
    hex::encode(Sha512::digest(bytes))
}

/// A disk-like test image: data, a long run of zeros (a hole once stored), more data.
pub fn disk_image(len: usize, seed: u64) -> Vec<u8> {
    let mut v = noise(seed, len);
    v[len / 4..len * 3 / 4].fill(0);
    v
}

/// A local HTTP server (python3) serving `dir` on 127.0.0.1, optionally slowed to
/// 64 KiB per `delay_s` seconds. Killed on drop.
pub struct HttpServer {
    child: Child,
    pub port: u16,
}

const SERVER: &str = r#"
import sys, time, http.server
root, delay = sys.argv[1], float(sys.argv[2])
class H(http.server.SimpleHTTPRequestHandler):
    def __init__(self, *a, **k):
        super().__init__(*a, directory=root, **k)
    def copyfile(self, src, dst):
        while True:
            b = src.read(65536)
            if not b:
                break
            dst.write(b)
            if delay:
                time.sleep(delay)
    def log_message(self, *a):
        pass
srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), H)
print(srv.server_address[1], flush=True)
srv.serve_forever()
"#;

impl HttpServer {
    pub fn start(dir: &Path, delay_s: f64) -> Self {
        let mut child = Command::new("python3")
            .args(["-u", "-c", SERVER])
            .arg(dir)
            .arg(delay_s.to_string())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("python3 for the test HTTP server");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let port = line.trim().parse().expect("server port");
        Self { child, port }
    }

    pub fn url(&self, file: &str) -> String {
        format!("http://127.0.0.1:{}/{file}", self.port)
    }
}

impl Drop for HttpServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn examples() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/longhorn")
}

const DOCS_URL: &str = "https://longhorn-backing-image.s3-us-west-1.amazonaws.com/parrot.raw";
const DOCS_SUM: &str = "304f3ed30ca6878e9056ee6f1b02b328239f0d0c2c1272840998212f9734b196371560b3b939037e4f4c2884ce457c2cbc9f0621f4f5d1ca983983c8cdf8cd9a";

/// Longhorn's example `name.yaml`, with the download URL and checksum replaced when given.
pub fn example(name: &str, url: Option<&str>, checksum: Option<&str>) -> String {
    let mut text = fs::read_to_string(examples().join(format!("{name}.yaml"))).unwrap();
    if let Some(u) = url {
        assert!(text.contains(DOCS_URL));
        text = text.replace(DOCS_URL, u);
    }
    if let Some(c) = checksum {
        assert!(text.contains(DOCS_SUM));
        text = text.replace(DOCS_SUM, c);
    }
    text
}

/// Longhorn's `longhorn-crypto` Secret with cheap Argon2i costs (the docs' Secret benchmarks
/// toward 2 s per unlock, too slow for a test suite).
pub fn cheap_secret(dir: &Path) -> PathBuf {
    let mut text = example("longhorn-crypto", None, None);
    text.push_str("  CRYPTO_PBKDF_MEMORY: \"64\"\n  CRYPTO_PBKDF_FORCE_ITERATIONS: \"4\"\n");
    write_secret(&dir.join("longhorn-crypto.yaml"), &text)
}

/// Secret manifests are written 0600, as bifs asks of them.
fn write_secret(p: &Path, text: &str) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    fs::write(p, text).unwrap();
    fs::set_permissions(p, fs::Permissions::from_mode(0o600)).unwrap();
    p.to_path_buf()
}

/// A Secret manifest with PBKDF2 at 1000 iterations.
pub fn pbkdf2_secret(dir: &Path, name: &str, pass: &str) -> PathBuf {
    write_secret(
        &dir.join(format!("{name}.yaml")),
        &format!(
            "apiVersion: v1\nkind: Secret\nmetadata:\n  name: {name}\n  namespace: longhorn-system\nstringData:\n  CRYPTO_KEY_VALUE: \"{pass}\"\n  CRYPTO_PBKDF: pbkdf2\n  CRYPTO_PBKDF_FORCE_ITERATIONS: \"1000\"\n"
        ),
    )
}

pub fn write(dir: &Path, file: &str, text: &str) -> PathBuf {
    let p = dir.join(file);
    fs::write(&p, text).unwrap();
    p
}

/// A BackingImage manifest.
pub fn backing_image(name: &str, spec: &str) -> String {
    format!(
        "apiVersion: longhorn.io/v1beta2\nkind: BackingImage\nmetadata:\n  name: {name}\n  namespace: longhorn-system\nspec:\n{spec}"
    )
}

pub fn clone_spec(source: &str, encryption: &str, secret: Option<&str>) -> String {
    let mut s = format!("  sourceType: clone\n  sourceParameters:\n    backing-image: {source}\n    encryption: {encryption}\n");
    if let Some(sec) = secret {
        s.push_str(&format!(
            "    secret: {sec}\n    secret-namespace: longhorn-system\n"
        ));
    }
    s
}

/// The record bifs keeps for `name`, as JSON.
pub fn record(store: &Path, name: &str) -> serde_json::Value {
    let text = fs::read(store.join(".bifs/records").join(format!("{name}.json"))).unwrap();
    serde_json::from_slice(&text).unwrap()
}

/// `bifs get NAME -o yaml`, parsed.
pub fn get_yaml(store: &Path, name: &str) -> serde_json::Value {
    let out = ok(&[
        "get",
        name,
        "--store",
        store.to_str().unwrap(),
        "-o",
        "yaml",
    ]);
    serde_norway::from_str(&out).unwrap()
}

/// The directories `backing-images/<name>-<uuid>` of `name` (exactly `name`, not a prefix).
pub fn image_dirs(store: &Path, name: &str) -> Vec<PathBuf> {
    let Ok(rd) = fs::read_dir(store.join("backing-images")) else {
        return Vec::new();
    };
    rd.filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| {
            let f = p.file_name().unwrap().to_string_lossy().into_owned();
            f.strip_prefix(&format!("{name}-"))
                .is_some_and(|u| u.len() == 8 && u.bytes().all(|b| b.is_ascii_hexdigit()))
        })
        .collect()
}

/// `backing` of a ready image.
pub fn backing(store: &Path, name: &str) -> PathBuf {
    let uuid = record(store, name)["status"]["uuid"]
        .as_str()
        .unwrap()
        .to_string();
    store
        .join("backing-images")
        .join(format!("{name}-{uuid}"))
        .join("backing")
}

/// Whether any `backing` file exists for `name`.
pub fn has_backing(store: &Path, name: &str) -> bool {
    image_dirs(store, name)
        .iter()
        .any(|d| d.join("backing").exists())
}

/// Bytes allocated under `dir` (what `du` counts).
pub fn usage(dir: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    let mut total = 0;
    let Ok(rd) = fs::read_dir(dir) else { return 0 };
    for e in rd.flatten() {
        let Ok(m) = e.path().symlink_metadata() else {
            continue;
        };
        if m.is_dir() {
            total += usage(&e.path());
        } else {
            total += m.blocks() * 512;
        }
    }
    total
}

/// The store's disk UUID (`longhorn-disk.cfg`).
pub fn disk_uuid(store: &Path) -> String {
    let cfg: serde_json::Value =
        serde_json::from_slice(&fs::read(store.join("longhorn-disk.cfg")).unwrap()).unwrap();
    cfg["diskUUID"].as_str().unwrap().to_string()
}

/// The one disk file status of a BackingImage object (`status.diskFileStatusMap.<disk>`).
pub fn file_status(object: &serde_json::Value) -> serde_json::Value {
    let map = object["status"]["diskFileStatusMap"].as_object().unwrap();
    assert_eq!(map.len(), 1, "{object}");
    map.values().next().unwrap().clone()
}

/// The disk file state of `name` as `get -o yaml` shows it.
pub fn state(store: &Path, name: &str) -> String {
    file_status(&get_yaml(store, name))["state"]
        .as_str()
        .unwrap()
        .to_string()
}

/// Compares `actual` with a golden shape: the same keys everywhere (in the same order for
/// objects when `ordered`), equal leaves except where the golden has `"<any>"`. `subst` turns
/// placeholders (`<disk>`, `<backing>`) into this run's values first.
pub fn assert_shape(golden: &serde_json::Value, actual: &serde_json::Value, at: &str) {
    use serde_json::Value;
    match (golden, actual) {
        (Value::String(g), _) if g == "<any>" => {}
        (Value::Object(g), Value::Object(a)) => {
            let gk: Vec<&String> = g.keys().collect();
            let ak: Vec<&String> = a.keys().collect();
            let (mut gs, mut as_) = (gk.clone(), ak.clone());
            gs.sort();
            as_.sort();
            assert_eq!(gs, as_, "fields of {at}");
            for (k, gv) in g {
                assert_shape(gv, &a[k], &format!("{at}.{k}"));
            }
        }
        _ => assert_eq!(golden, actual, "{at}"),
    }
}

pub fn golden(file: &str, subst: &[(&str, &str)]) -> String {
    let mut text = fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/golden")
            .join(file),
    )
    .unwrap();
    for (from, to) in subst {
        text = text.replace(from, to);
    }
    text
}
