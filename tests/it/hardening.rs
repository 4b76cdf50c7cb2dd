//! Issue 18, "fit to face a cluster": one test (or more) per finding, each with a real
//! `bifs serve` (or `bifs mount`) and real clients (curl, Python's http.client and sockets,
//! the FUSE mount, cryptsetup, qemu-img). Each failed on the code before the fix.
//!
//! Findings 4 and 5 (the key-derivation budget) are the unlock scheduler's (issue 19).

use std::fs;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::support::server::{
    curl, download_manifest, image_file, Options, Server, PASSPHRASE, SECRET_NAME, SECRET_NS, TOKEN,
};

const AUTH: &str = "Authorization: Bearer test-token-0123456789abcdef";

fn json(body: &str) -> serde_json::Value {
    serde_json::from_str(body).unwrap_or(serde_json::Value::Null)
}

fn api(s: &Server, method: &str, path: &str, data: Option<&str>) -> (u16, serde_json::Value) {
    let url = format!("{}{path}", s.url);
    let mut args = vec!["-X", method, "-H", AUTH];
    if let Some(d) = data {
        args.extend(["--data-binary", d]);
    }
    args.push(&url);
    let (code, body) = curl(&args);
    (code, json(&body))
}

fn message(v: &serde_json::Value) -> String {
    v["message"].as_str().unwrap_or_default().to_string()
}

fn disk_state(v: &serde_json::Value) -> (String, String) {
    let f = v["status"]["diskFileStatusMap"]
        .as_object()
        .and_then(|m| m.values().next().cloned())
        .unwrap_or_default();
    (
        f["state"].as_str().unwrap_or_default().to_string(),
        f["message"].as_str().unwrap_or_default().to_string(),
    )
}

/// Polls an image until it is ready or failed; returns (state, message).
fn settle(s: &Server, name: &str) -> (String, String) {
    let start = Instant::now();
    loop {
        let (_, v) = api(s, "GET", &format!("/api/v1/backingimages/{name}"), None);
        let (state, msg) = disk_state(&v);
        if state == "ready" || state == "failed" {
            return (state, msg);
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "{name} never settled: {v}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn sha512_of(bytes: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha512::digest(bytes))
}

/// A Python program run with `args`, its stdout and stderr piped.
fn python(script: &str, args: &[&str]) -> Child {
    Command::new("python3")
        .arg("-u")
        .arg("-c")
        .arg(script)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("python3 (apt-get install python3)")
}

fn host_port(url: &str) -> (String, String) {
    let hp = url.trim_start_matches("http://");
    let (h, p) = hp.rsplit_once(':').expect("host:port");
    (h.to_string(), p.to_string())
}

/// A Python HTTP server on `host` (any 127/8 address): serves `dir`, or, with `redirect`,
/// answers every request with a 302 to `redirect` + the request path. Killed on drop.
struct PyServer {
    child: Child,
    port: u16,
}

const PY_SERVER: &str = r#"
import sys, http.server
host, root, redirect = sys.argv[1], sys.argv[2], sys.argv[3]
class H(http.server.SimpleHTTPRequestHandler):
    def __init__(self, *a, **k):
        super().__init__(*a, directory=root, **k)
    def do_GET(self):
        if redirect:
            self.send_response(302)
            self.send_header("Location", redirect + self.path)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        super().do_GET()
    def log_message(self, *a):
        pass
srv = http.server.ThreadingHTTPServer((host, 0), H)
print(srv.server_address[1], flush=True)
srv.serve_forever()
"#;

impl PyServer {
    fn start(host: &str, dir: &Path, redirect: &str) -> Self {
        let mut child = Command::new("python3")
            .args(["-u", "-c", PY_SERVER, host])
            .arg(dir)
            .arg(redirect)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("python3");
        let mut line = String::new();
        BufReader::new(child.stdout.take().expect("stdout"))
            .read_line(&mut line)
            .expect("port");
        let port = line.trim().parse().expect("server port");
        Self { child, port }
    }
}

impl Drop for PyServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

// =============================================================================================
// 1. Downloads created through the API: http(s) to public addresses only
// =============================================================================================

#[test]
fn f1_api_downloads_reach_only_public_http_addresses() {
    full_tier_only!("python3 (HTTP servers), curl");
    let s = Server::start_with(Options {
        no_loopback_downloads: true,
        args: &[
            "--allow-download-from",
            "127.0.0.2/32",
            "--max-download-size",
            "1M",
        ],
        ..Default::default()
    });
    let src = s.work().join("files");
    fs::create_dir_all(&src).unwrap();
    image_file(&src.join("small.img"), 512 << 10, 1);
    image_file(&src.join("big.img"), 2 << 20, 2);
    let local = PyServer::start("127.0.0.1", &src, "");
    let allowed = PyServer::start("127.0.0.2", &src, "");
    let redirector = PyServer::start(
        "127.0.0.2",
        &src,
        &format!("http://127.0.0.1:{}", local.port),
    );

    // Refused at admission: nothing recorded, nothing served.
    let refused = [
        ("shadow", "file:///etc/shadow".to_string(), "file://"),
        (
            "loop",
            format!("http://127.0.0.1:{}/small.img", local.port),
            "loopback",
        ),
        (
            "loop6",
            format!("http://[::1]:{}/small.img", local.port),
            "loopback",
        ),
        (
            "lname",
            format!("http://localhost:{}/small.img", local.port),
            "loopback",
        ),
        (
            "meta",
            "http://169.254.169.254/latest/meta-data/".to_string(),
            "link-local",
        ),
        ("private", "http://10.1.2.3/x.img".to_string(), "private"),
        ("ftp", "ftp://example.com/x.img".to_string(), "url"),
    ];
    for (name, url, why) in &refused {
        let (code, v) = api(
            &s,
            "POST",
            "/api/v1/backingimages",
            Some(&download_manifest(name, url)),
        );
        assert_eq!(code, 422, "{url}: {v}");
        assert!(message(&v).contains(why), "{url}: {v}");
        let (code, _) = api(&s, "GET", &format!("/api/v1/backingimages/{name}"), None);
        assert_eq!(code, 404, "a refused create left a record for {url}");
        let (code, _) = curl(&["-H", AUTH, &format!("{}/views/ignore/{name}", s.url)]);
        assert_eq!(code, 404);
    }
    assert!(
        !s.store()
            .join("backing-images")
            .read_dir()
            .unwrap()
            .any(|_| true),
        "a refused download wrote into the store"
    );

    // A redirect is resolved and checked again: an allowed server sending the client to
    // loopback fails, and the loopback file is never stored.
    let url = format!("http://127.0.0.2:{}/small.img", redirector.port);
    let (code, v) = api(
        &s,
        "POST",
        "/api/v1/backingimages",
        Some(&download_manifest("redir", &url)),
    );
    assert!(code == 422 || code == 202, "redirect: {code} {v}");
    let (state, msg) = settle(&s, "redir");
    assert_eq!(
        state, "failed",
        "a redirect to loopback was followed: {msg}"
    );
    assert!(
        msg.contains("127.0.0.1") && msg.contains("loopback"),
        "{msg}"
    );

    // A host name is checked on what it resolves to (the machine's name resolves to
    // loopback in /etc/hosts here).
    let host = fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
    let host = host.trim();
    let resolves_to_loopback = std::net::ToSocketAddrs::to_socket_addrs(&(host, 80))
        .map(|a| {
            let a: Vec<_> = a.collect();
            !a.is_empty() && a.iter().all(|x| x.ip().is_loopback())
        })
        .unwrap_or(false);
    if resolves_to_loopback && host != "localhost" {
        let url = format!("http://{host}:{}/small.img", local.port);
        api(
            &s,
            "POST",
            "/api/v1/backingimages",
            Some(&download_manifest("byname", &url)),
        );
        let (state, msg) = settle(&s, "byname");
        assert_eq!(state, "failed", "{url}: {msg}");
        assert!(msg.contains("loopback"), "{msg}");
    } else {
        eprintln!("note: {host:?} does not resolve to loopback only; name resolution case skipped");
    }

    // The operator's range is reachable; the size bound holds.
    let ok = format!("http://127.0.0.2:{}/small.img", allowed.port);
    let (code, v) = api(
        &s,
        "POST",
        "/api/v1/backingimages",
        Some(&download_manifest("fine", &ok)),
    );
    assert!(code == 201 || code == 202, "{v}");
    assert_eq!(settle(&s, "fine").0, "ready");
    let big = format!("http://127.0.0.2:{}/big.img", allowed.port);
    api(
        &s,
        "POST",
        "/api/v1/backingimages",
        Some(&download_manifest("toobig", &big)),
    );
    let (state, msg) = settle(&s, "toobig");
    assert_eq!(state, "failed");
    assert!(msg.contains("1048576"), "{msg}");

    // The node's operator keeps file:// (bifs apply).
    let disk = s.work().join("operator-disk");
    fs::create_dir_all(&disk).unwrap();
    let manifest = s.work().join("op.yaml");
    fs::write(
        &manifest,
        download_manifest("op", &format!("file://{}", src.join("small.img").display())),
    )
    .unwrap();
    let out = Command::new(crate::support::BIFS)
        .arg("apply")
        .arg("-f")
        .arg(&manifest)
        .arg("--store")
        .arg(&disk)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "bifs apply of a file:// URL: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

// =============================================================================================
// 2. One writer per name
// =============================================================================================

const PY_TWO_UPLOADS: &str = r#"
import http.client, sys, time, json
host, port, token, name = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
size = 8 << 20
a = bytes((i * 7 + 1) % 251 for i in range(size))
b = bytes((i * 13 + 5) % 241 for i in range(size))
auth = {"Authorization": "Bearer " + token}
def begin(body_len):
    c = http.client.HTTPConnection(host, port, timeout=20)
    c.putrequest("PUT", f"/api/v1/uploads/{name}?offset=0&size={size}")
    c.putheader("Authorization", "Bearer " + token)
    c.putheader("Content-Length", str(body_len))
    c.endheaders()
    return c
def offset():
    c = http.client.HTTPConnection(host, port, timeout=20)
    c.request("GET", f"/api/v1/uploads/{name}", headers=auth)
    return json.loads(c.getresponse().read())["offset"]
ca = begin(size)
ca.send(a[: 1 << 20])
deadline = time.time() + 20
while offset() == 0 and time.time() < deadline:
    time.sleep(0.05)
# A second upload of the same name while the first runs: answered before its body.
cb = begin(size)
cb.send(b[: 64 << 10])
rb = cb.getresponse()
print("B", rb.status, rb.read().decode(), flush=True)
# An apply and a delete of the name meanwhile.
c = http.client.HTTPConnection(host, port, timeout=20)
manifest = ("apiVersion: longhorn.io/v1beta2\nkind: BackingImage\nmetadata:\n  name: " + name +
            "\nspec:\n  sourceType: download\n  sourceParameters:\n    url: http://127.0.0.1:9/x\n")
c.request("POST", "/api/v1/backingimages", body=manifest, headers=auth)
r = c.getresponse(); print("POST", r.status, r.read().decode(), flush=True)
c = http.client.HTTPConnection(host, port, timeout=20)
c.request("DELETE", f"/api/v1/backingimages/{name}", headers=auth)
r = c.getresponse(); print("DELETE", r.status, r.read().decode(), flush=True)
ca.send(a[1 << 20 :])
ra = ca.getresponse()
print("A", ra.status, json.loads(ra.read())["status"]["checksum"], flush=True)
import hashlib
print("WANT", hashlib.sha512(a).hexdigest(), flush=True)
"#;

#[test]
fn f2_a_second_writer_of_a_name_gets_409_while_the_first_runs() {
    full_tier_only!("python3 (http.client)");
    let s = Server::start();
    let (host, port) = host_port(&s.url);
    let out = python(PY_TWO_UPLOADS, &[&host, &port, TOKEN, "racex"])
        .wait_with_output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success(),
        "{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let line = |tag: &str| -> String {
        text.lines()
            .find(|l| l.starts_with(&format!("{tag} ")))
            .unwrap_or_else(|| panic!("no {tag} line in\n{text}"))
            .to_string()
    };
    assert!(line("B").starts_with("B 409"), "{text}");
    assert!(
        line("B").contains("being written by another request"),
        "{text}"
    );
    assert!(line("POST").starts_with("POST 409"), "{text}");
    assert!(line("DELETE").starts_with("DELETE 409"), "{text}");
    assert!(line("A").starts_with("A 201"), "{text}");
    let want = line("WANT").split_whitespace().nth(1).unwrap().to_string();
    assert_eq!(line("A").split_whitespace().nth(2), Some(want.as_str()));
    // The stored file is exactly the first upload's bytes.
    let (_, v) = api(&s, "GET", "/api/v1/backingimages/racex", None);
    assert_eq!(disk_state(&v).0, "ready");
    let uuid = v["status"]["uuid"].as_str().unwrap();
    let stored = fs::read(
        s.store()
            .join(format!("backing-images/racex-{uuid}/backing")),
    )
    .unwrap();
    assert_eq!(
        sha512_of(&stored),
        want,
        "the stored image is not the first upload"
    );
}

// =============================================================================================
// 3. A flat store stays flat
// =============================================================================================

fn put_file(s: &Server, name: &str, query: &str, body: &Path) -> (u16, serde_json::Value) {
    let url = format!("{}/api/v1/uploads/{name}?{query}", s.url);
    let b = format!("@{}", body.display());
    let (code, text) = curl(&["-X", "PUT", "-H", AUTH, "--data-binary", &b, &url]);
    (code, json(&text))
}

#[test]
fn f3_an_upload_into_a_flat_store_is_a_flat_file_and_the_store_stays_flat() {
    full_tier_only!("curl");
    let a = crate::support::noise(3, 1 << 20);
    let mut s = Server::start_with(Options {
        flat: true,
        files: &[("a.img", a.as_slice())],
        ..Default::default()
    });
    let up = s.work().join("up.img");
    image_file(&up, 2 << 20, 9);
    let bytes = fs::read(&up).unwrap();
    let (code, v) = put_file(
        &s,
        "up.img",
        &format!(
            "offset=0&size={}&checksum={}",
            bytes.len(),
            sha512_of(&bytes)
        ),
        &up,
    );
    assert_eq!(code, 201, "{v}");
    assert_eq!(disk_state(&v).0, "ready");
    let store = s.store();
    assert!(
        !store.join("backing-images").exists(),
        "the flat store became a Longhorn disk"
    );
    assert!(!store.join("longhorn-disk.cfg").exists());
    assert!(
        fs::read(store.join("up.img")).unwrap() == bytes,
        "the file is not the upload"
    );
    let left: Vec<String> = fs::read_dir(&store)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".upload") || n.ends_with(".part"))
        .collect();
    assert!(left.is_empty(), "{left:?}");
    // The same name again: it exists.
    let (code, _) = put_file(&s, "up.img", &format!("offset=0&size={}", bytes.len()), &up);
    assert_eq!(code, 409);
    // Downloads and clones are not made in a flat store (they would need Longhorn's layout).
    let (code, v) = api(
        &s,
        "POST",
        "/api/v1/backingimages",
        Some(&download_manifest("dl", "http://127.0.0.1:9/x")),
    );
    assert_eq!(code, 409, "{v}");
    assert!(!store.join("backing-images").exists());

    // After a restart every image is still in every view.
    s.restart();
    for (name, want) in [("a.img", &a), ("up.img", &bytes)] {
        let out = s.work().join(format!("got-{name}"));
        let (code, _) = curl(&[
            "-H",
            AUTH,
            "-o",
            out.to_str().unwrap(),
            &format!("{}/views/ignore/{name}", s.url),
        ]);
        assert_eq!(code, 200, "{name} after a restart");
        assert!(fs::read(&out).unwrap() == **want);
    }
    // And the API deletes what it made.
    let (code, _) = api(&s, "DELETE", "/api/v1/backingimages/up.img", None);
    assert_eq!(code, 200);
    assert!(!store.join("up.img").exists());
}

#[test]
fn f3_a_flat_upload_resumes_only_with_its_id_size_and_checksum() {
    full_tier_only!("curl");
    let s = Server::start_with(Options {
        flat: true,
        ..Default::default()
    });
    let store = s.store();
    let a = s.work().join("a.bin");
    let b = s.work().join("b.bin");
    fs::write(&a, [b'A'; 512]).unwrap();
    fs::write(&b, [b'B'; 512]).unwrap();
    let mut whole = vec![b'A'; 512];
    whole.extend([b'B'; 512]);
    let want = sha512_of(&whole);

    let (code, v) = put_file(
        &s,
        "mix",
        &format!("offset=0&size=1024&checksum={want}"),
        &a,
    );
    assert_eq!(code, 200, "{v}");
    let id = v["upload"].as_str().expect("the upload's id").to_string();
    let (_, v) = api(&s, "GET", "/api/v1/uploads/mix", None);
    assert_eq!(v, serde_json::json!({ "offset": 512 }));
    // Another client (no id, another id), then the right id with another size or checksum:
    // all 409, and the partial file is the first client's bytes.
    for query in [
        "offset=512&size=1024".to_string(),
        "offset=512&size=1024&upload=someone-elses-id-123".to_string(),
        format!("offset=512&size=2048&upload={id}"),
        format!(
            "offset=512&size=1024&upload={id}&checksum={}",
            "0".repeat(128)
        ),
    ] {
        let (code, v) = put_file(&s, "mix", &query, &b);
        assert_eq!(code, 409, "{query}: {v}");
        assert!(v.get("offset").is_none(), "{query}: {v}");
    }
    let (_, v) = put_file(&s, "mix", "offset=512&size=1024", &b);
    assert!(
        message(&v).contains("an upload of mix from another client is in progress"),
        "{v}"
    );
    assert_eq!(
        fs::read(store.join(".mix.upload")).unwrap(),
        vec![b'A'; 512]
    );
    assert!(!store.join("mix").exists());
    // The id, no checksum repeated: published, verified against the start's checksum.
    let (code, v) = put_file(&s, "mix", &format!("offset=512&size=1024&upload={id}"), &b);
    assert_eq!(code, 201, "{v}");
    assert_eq!(v["status"]["checksum"], want.as_str());
    assert_eq!(fs::read(store.join("mix")).unwrap(), whole);
    assert!(!store.join(".mix.upload").exists());
    assert!(!store.join(".bifs/uploads/mix.json").exists());

    // The start's checksum is remembered: a last part without one is still verified.
    let zeros = "0".repeat(128);
    let (code, v) = put_file(
        &s,
        "bad",
        &format!("offset=0&size=1024&checksum={zeros}"),
        &a,
    );
    assert_eq!(code, 200, "{v}");
    let id = v["upload"].as_str().expect("the upload's id").to_string();
    let (code, v) = put_file(&s, "bad", &format!("offset=512&size=1024&upload={id}"), &b);
    assert_eq!(code, 422, "{v}");
    assert!(
        message(&v).contains("doesn't match the file actual checksum"),
        "{v}"
    );
    assert!(!store.join("bad").exists());
    assert!(!store.join(".bad.upload").exists());
}

// =============================================================================================
// 8. A full disk: 507 with what is free, nothing left behind, no second copy
// =============================================================================================

/// A tmpfs of `mib` MiB at `dir`, unmounted on drop.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(dir: &Path, mib: u64) -> Self {
        fs::create_dir_all(dir).unwrap();
        let st = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={mib}m"), "tmpfs"])
            .arg(dir)
            .status()
            .expect("mount");
        assert!(st.success(), "mount -t tmpfs (needs root)");
        Tmpfs(dir.to_path_buf())
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

const PY_UPLOAD_FILLED_MIDWAY: &str = r#"
import http.client, sys, os
host, port, token, name, filler = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4], sys.argv[5]
size = 12 << 20
data = os.urandom(size)
c = http.client.HTTPConnection(host, port, timeout=30)
c.putrequest("PUT", f"/api/v1/uploads/{name}?offset=0&size={size}")
c.putheader("Authorization", "Bearer " + token)
c.putheader("Content-Length", str(size))
c.endheaders()
c.send(data[: 4 << 20])
# Another writer fills the disk meanwhile.
try:
    with open(filler, "wb") as f:
        f.write(os.urandom(64 << 20))
except OSError:
    pass
try:
    c.send(data[4 << 20 :])
except OSError:
    pass
r = c.getresponse()
print(r.status, r.read().decode(), flush=True)
"#;

#[test]
fn f8_a_full_disk_is_507_leaves_nothing_and_an_upload_needs_its_size_once() {
    full_tier_only!("root (mount -t tmpfs), python3, curl");
    let work = tempfile::Builder::new()
        .prefix("bifs-full")
        .tempdir()
        .unwrap();
    let disk = work.path().join("disk");
    let _tmpfs = Tmpfs::mount(&disk, 40);
    let s = Server::start_with(Options {
        store: Some(&disk.join("store")),
        ..Default::default()
    });
    let (host, port) = host_port(&s.url);

    // More than the disk holds: refused before a byte is taken, with what is free.
    let empty = s.work().join("empty");
    fs::write(&empty, b"").unwrap();
    let (code, v) = put_file(&s, "huge", &format!("offset=0&size={}", 64 << 20), &empty);
    assert_eq!(code, 507, "{v}");
    assert!(message(&v).contains("free"), "{v}");
    let (code, _) = api(&s, "GET", "/api/v1/backingimages/huge", None);
    assert_eq!(code, 404, "a refused upload left a record");

    // 24 MiB into a 40 MiB disk: it lands in place (no second copy needs 48 MiB).
    let img = s.work().join("big.img");
    fs::write(&img, crate::support::noise(5, 24 << 20)).unwrap();
    let (code, v) = put_file(&s, "big", &format!("offset=0&size={}", 24 << 20), &img);
    assert_eq!(code, 201, "{v}");

    // The disk fills up during an upload: 507, its bytes are gone, the record says why,
    // DELETE works and the name is free once there is room again.
    let filler = disk.join("filler");
    let out = python(
        PY_UPLOAD_FILLED_MIDWAY,
        &[&host, &port, TOKEN, "mid", filler.to_str().unwrap()],
    )
    .wait_with_output()
    .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        text.starts_with("507"),
        "{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("free"), "{text}");
    let (_, v) = api(&s, "GET", "/api/v1/backingimages/mid", None);
    let (state, msg) = disk_state(&v);
    assert_eq!(state, "failed", "{v}");
    assert!(msg.contains("insufficient storage"), "{msg}");
    let dirs: Vec<_> = fs::read_dir(disk.join("store/backing-images"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("mid-"))
        .collect();
    assert!(dirs.is_empty(), "a failed upload left {dirs:?}");
    let (_, v) = api(&s, "GET", "/api/v1/uploads/mid", None);
    assert_eq!(v["offset"], 0);
    let (code, v) = api(&s, "DELETE", "/api/v1/backingimages/mid", None);
    assert_eq!(code, 200, "{v}");
    fs::remove_file(&filler).unwrap();
    let small = s.work().join("small.img");
    fs::write(&small, crate::support::noise(6, 4 << 20)).unwrap();
    let (code, v) = put_file(&s, "mid", &format!("offset=0&size={}", 4 << 20), &small);
    assert_eq!(code, 201, "{v}");
}

// =============================================================================================
// 6 and 10. Connections: a client that stops reading, the cap, memory, TCP_NODELAY
// =============================================================================================

/// Opens N connections that each ask for PATH and read nothing (a 4 KiB receive buffer);
/// prints "ready", waits for a line on stdin, then reads each to its end and prints how many
/// bytes it got (-1 when it did not end within 20 s). A 6th argument adds
/// `Connection: close`.
const PY_STALLED: &str = r#"
import socket, sys
host, port, path, token, n = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4], int(sys.argv[5])
close = "Connection: close\r\n" if len(sys.argv) > 6 else ""
socks = []
for i in range(n):
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    s.connect((host, port))
    s.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\n{close}\r\n".encode())
    socks.append(s)
print("ready", flush=True)
sys.stdin.readline()
for s in socks:
    s.settimeout(20)
    total = 0
    try:
        while True:
            b = s.recv(1 << 20)
            if not b:
                break
            total += len(b)
    except socket.timeout:
        total = -1
    except OSError:
        pass
    print(total, flush=True)
"#;

struct Stalled {
    child: Child,
    out: BufReader<std::process::ChildStdout>,
}

impl Stalled {
    fn start(s: &Server, path: &str, n: usize) -> Self {
        Self::start_args(s, path, n, false)
    }

    fn start_args(s: &Server, path: &str, n: usize, close: bool) -> Self {
        let (host, port) = host_port(&s.url);
        let n = n.to_string();
        let mut args = vec![host.as_str(), port.as_str(), path, TOKEN, n.as_str()];
        if close {
            args.push("close");
        }
        let mut child = python(PY_STALLED, &args);
        let mut out = BufReader::new(child.stdout.take().unwrap());
        let mut line = String::new();
        out.read_line(&mut line).unwrap();
        assert_eq!(line.trim(), "ready", "the stalled readers did not start");
        Self { child, out }
    }

    /// Lets them read: the bytes each got.
    fn drain(mut self) -> Vec<i64> {
        writeln!(self.child.stdin.as_mut().unwrap()).unwrap();
        let mut got = Vec::new();
        let mut line = String::new();
        while self.out.read_line(&mut line).unwrap() > 0 {
            got.push(line.trim().parse().unwrap());
            line.clear();
        }
        let _ = self.child.wait();
        got
    }
}

impl Drop for Stalled {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn metric(s: &Server, name: &str) -> i64 {
    let (_, body) = curl(&["-H", AUTH, &format!("{}/metrics", s.url)]);
    body.lines()
        .find_map(|l| l.strip_prefix(&format!("{name} ")))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {name} in /metrics:\n{body}"))
}

fn proc_status(pid: u32, key: &str) -> u64 {
    let text = fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("{key}:")))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap()
}

fn fds(pid: u32) -> usize {
    fs::read_dir(format!("/proc/{pid}/fd")).unwrap().count()
}

/// The process's open sockets (listening and connected).
fn sockets(pid: u32) -> usize {
    fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .filter_map(|e| fs::read_link(e.ok()?.path()).ok())
        .filter(|target| target.to_string_lossy().starts_with("socket:"))
        .count()
}

fn wait_for(what: &str, mut cond: impl FnMut() -> bool) {
    let start = Instant::now();
    while !cond() {
        assert!(start.elapsed() < Duration::from_secs(60), "never: {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn f6_a_client_that_stops_reading_is_dropped_and_memory_stays_bounded() {
    full_tier_only!("python3 (sockets), curl");
    let big = crate::support::noise(8, 64 << 20);
    // Memory: 64 stalled readers hold at most the response budget plus small chunks each.
    let s = Server::start_with(Options {
        flat: true,
        files: &[("big.img", big.as_slice())],
        args: &["--response-memory", "8", "--send-timeout", "120"],
        ..Default::default()
    });
    let rss_before = proc_status(s.pid(), "VmRSS");
    let fds_before = fds(s.pid());
    let stalled = Stalled::start(&s, "/views/ignore/big.img", 64);
    wait_for("64 connections open", || fds(s.pid()) >= fds_before + 64);
    // Until every response has filled what it may hold (its socket buffers and chunks).
    let mut last = 0;
    wait_for("the responses to stop reading ahead", || {
        std::thread::sleep(Duration::from_millis(500));
        let now = proc_status(s.pid(), "VmRSS");
        let settled = now == last;
        last = now;
        settled
    });
    let rss = proc_status(s.pid(), "VmRSS");
    assert!(
        rss.saturating_sub(rss_before) < 48 << 10,
        "RSS grew from {rss_before} to {rss} KiB with 64 stalled readers"
    );
    let buffered = metric(&s, "bifs_http_response_buffer_bytes");
    let bound = (8 << 20) + 64 * 2 * (64 << 10);
    assert!(
        buffered <= bound,
        "{buffered} bytes held for 64 stalled readers (bound {bound})"
    );
    drop(stalled);

    // A client that takes nothing for --send-timeout is dropped: it gets a cut response.
    let s = Server::start_with(Options {
        flat: true,
        files: &[("big.img", big.as_slice())],
        args: &["--send-timeout", "2"],
        ..Default::default()
    });
    // Sockets, not all descriptors: the background pass may hold an image open meanwhile.
    let sockets_before = sockets(s.pid());
    let stalled = Stalled::start(&s, "/views/ignore/big.img", 4);
    wait_for("4 connections open", || {
        sockets(s.pid()) >= sockets_before + 4
    });
    wait_for("the server to close the 4 stalled connections", || {
        sockets(s.pid()) <= sockets_before
    });
    for got in stalled.drain() {
        assert!(
            (0..64 << 20).contains(&got),
            "a stalled reader got {got} bytes: it was not dropped"
        );
    }
    assert_eq!(metric(&s, "bifs_http_send_timeouts_total"), 4);
    assert!(s.log().contains("send timeout"), "{}", s.log());
}

#[test]
fn f6_connections_past_the_cap_wait_in_the_backlog() {
    full_tier_only!("python3 (sockets)");
    let big = crate::support::noise(9, 32 << 20);
    let mid = crate::support::noise(10, 8 << 20);
    let s = Server::start_with(Options {
        flat: true,
        files: &[("big.img", big.as_slice()), ("mid.img", mid.as_slice())],
        args: &["--max-connections", "2", "--send-timeout", "30"],
        ..Default::default()
    });
    let fds_before = fds(s.pid());
    // Two stalled readers take both slots; 50 more readers then wait in the kernel's accept
    // queue, costing the server no descriptor and no memory.
    let stalled = Stalled::start(&s, "/views/ignore/big.img", 2);
    let waiting = Stalled::start_args(&s, "/views/ignore/mid.img", 50, true);
    std::thread::sleep(Duration::from_millis(500));
    // The two served connections: a socket and the view's image descriptors each.
    let open = fds(s.pid());
    assert!(
        open <= fds_before + 10,
        "{open} descriptors (from {fds_before}) with 52 connections and a cap of 2"
    );
    // Once the stalled readers go, the waiting ones are served, each in full.
    drop(stalled);
    let got = waiting.drain();
    assert_eq!(got.len(), 50);
    assert!(
        got.iter().all(|&n| n > 8 << 20),
        "the connections that waited were not served in full: {got:?}"
    );
}

#[test]
fn f10_accepted_connections_have_tcp_nodelay() {
    full_tier_only!("root (pidfd_getfd of the server's socket)");
    let s = Server::start();
    let addr = s.url.trim_start_matches("http://").to_string();
    let mut client = std::net::TcpStream::connect(&addr).unwrap();
    client
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let mut buf = [0u8; 512];
    let _ = std::io::Read::read(&mut client, &mut buf).unwrap();
    let mine = client.local_addr().unwrap();
    // The server's end of this connection, fetched from its process.
    let pid = rustix::process::Pid::from_raw(s.pid() as i32).unwrap();
    let pidfd = rustix::process::pidfd_open(pid, rustix::process::PidfdFlags::empty()).unwrap();
    let mut found = None;
    for e in fs::read_dir(format!("/proc/{}/fd", s.pid())).unwrap() {
        let e = e.unwrap();
        let Ok(n) = e.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let target = fs::read_link(e.path()).unwrap_or_default();
        if !target.to_string_lossy().starts_with("socket:") {
            continue;
        }
        let Ok(fd) =
            rustix::process::pidfd_getfd(&pidfd, n, rustix::process::PidfdGetfdFlags::empty())
        else {
            continue;
        };
        let peer = rustix::net::getpeername(&fd)
            .ok()
            .flatten()
            .and_then(|a| std::net::SocketAddr::try_from(a).ok());
        if peer == Some(mine) {
            found = Some(rustix::net::sockopt::tcp_nodelay(&fd).unwrap());
        }
    }
    assert_eq!(
        found,
        Some(true),
        "the server's socket of this connection lacks TCP_NODELAY"
    );
}

// =============================================================================================
// 7. A writer that puts the mtime back is caught, over HTTP and FUSE, in every view
// =============================================================================================

/// The source modified in place at `at` (1 MiB of new bytes, same size), then its mtime put
/// back with `touch -d` (nanoseconds kept), as `rsync --times` or a careful writer does.
fn modify_keeping_mtime(path: &Path, at: u64, seed: u64) {
    let out = Command::new("stat")
        .args(["-c", "%.9Y"])
        .arg(path)
        .output()
        .unwrap();
    let mtime = String::from_utf8_lossy(&out.stdout).trim().to_string();
    let before = fs::metadata(path).unwrap().modified().unwrap();
    // The change time must move past the open's: a tick of the file system's clock.
    std::thread::sleep(Duration::from_millis(20));
    let f = fs::OpenOptions::new().write(true).open(path).unwrap();
    f.write_all_at(&crate::support::noise(seed, 1 << 20), at)
        .unwrap();
    drop(f);
    let st = Command::new("touch")
        .args(["-m", "-d", &format!("@{mtime}")])
        .arg(path)
        .status()
        .unwrap();
    assert!(st.success());
    assert_eq!(
        fs::metadata(path).unwrap().modified().unwrap(),
        before,
        "touch -d did not put the mtime back"
    );
}

/// Reads PATH with http.client: 1 MiB, then "started" and a wait for a line on stdin, then
/// the rest into FILE; prints "complete" or "incomplete".
const PY_SLOW_READER: &str = r#"
import http.client, socket, sys
host, port, path, token, out = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4], sys.argv[5]
c = http.client.HTTPConnection(host, port, timeout=60)
c.connect()
c.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
c.request("GET", path, headers={"Authorization": "Bearer " + token})
r = c.getresponse()
assert r.status == 200, r.status
got = r.read(1 << 20)
print("started", flush=True)
sys.stdin.readline()
state = "complete"
try:
    got += r.read()
except http.client.IncompleteRead as e:
    got += e.partial
    state = "incomplete"
open(out, "wb").write(got)
print(state, flush=True)
"#;

/// A store with `data.img` (raw, 48 MiB) and `enc.img` (LUKS2 of the server's Secret).
fn views_store(dir: &Path) -> (Vec<u8>, Vec<u8>) {
    let data = crate::support::noise(11, 48 << 20);
    fs::write(dir.join("data.img"), &data).unwrap();
    let enc = dir.join("enc.img");
    fs::write(&enc, crate::support::noise(12, 64 << 20)).unwrap();
    crate::support::common::luks2_format_cheap(&enc, PASSPHRASE.as_bytes());
    (data, fs::read(&enc).unwrap())
}

fn view_paths() -> Vec<(String, &'static str)> {
    vec![
        ("ignore/data.img".to_string(), "data.img"),
        ("raw/data.img".to_string(), "data.img"),
        (
            format!("encrypt/{SECRET_NS}/{SECRET_NAME}/data.img"),
            "data.img",
        ),
        (
            format!("decrypt/{SECRET_NS}/{SECRET_NAME}/enc.img"),
            "enc.img",
        ),
    ]
}

#[test]
fn f7_a_writer_that_restores_the_mtime_is_caught_over_http() {
    full_tier_only!("cryptsetup, python3, curl");
    crate::support::common::require_tools();
    let s = Server::start_with(Options {
        flat: true,
        ..Default::default()
    });
    views_store(&s.store());
    let (host, port) = host_port(&s.url);
    for (i, (view, source)) in view_paths().into_iter().enumerate() {
        let before = s.work().join(format!("before-{i}"));
        let (code, _) = curl(&[
            "-H",
            AUTH,
            "-o",
            before.to_str().unwrap(),
            &format!("{}/views/{view}", s.url),
        ]);
        assert_eq!(code, 200, "{view}");
        let before = fs::read(&before).unwrap();
        let got = s.work().join(format!("got-{i}"));
        let mut reader = python(
            PY_SLOW_READER,
            &[
                &host,
                &port,
                &format!("/views/{view}"),
                TOKEN,
                got.to_str().unwrap(),
            ],
        );
        let mut out = BufReader::new(reader.stdout.take().unwrap());
        let mut line = String::new();
        out.read_line(&mut line).unwrap();
        assert_eq!(line.trim(), "started", "{view}");
        modify_keeping_mtime(&s.store().join(source), 40 << 20, 100 + i as u64);
        writeln!(reader.stdin.as_mut().unwrap()).unwrap();
        line.clear();
        out.read_line(&mut line).unwrap();
        let _ = reader.wait();
        let got = fs::read(&got).unwrap();
        assert_eq!(
            line.trim(),
            "incomplete",
            "{view}: the response went on after its source changed ({} bytes)",
            got.len()
        );
        assert!(
            got.len() < before.len() && got[..] == before[..got.len()],
            "{view}: the bytes sent are not the view as it was"
        );
    }
    assert!(s.log().contains("source image changed"), "{}", s.log());
}

#[test]
fn f7_a_writer_that_restores_the_mtime_is_caught_over_fuse() {
    full_tier_only!("FUSE (root), cryptsetup");
    crate::support::mount::require_tools(&["fusermount3", "cryptsetup"]);
    let work = tempfile::Builder::new()
        .prefix("bifs-ctime")
        .tempdir()
        .unwrap();
    let store = work.path().join("store");
    fs::create_dir_all(&store).unwrap();
    views_store(&store);
    let secrets = work.path().join("secret.yaml");
    write_mount_secret(&secrets);
    let m = crate::support::mount::Mounted::start(
        &store,
        &secrets,
        None,
        &work.path().join("mnt"),
        &[],
    );
    for (i, (view, source)) in view_paths().into_iter().enumerate() {
        let f = fs::File::open(m.path(&view)).unwrap();
        let mut buf = vec![0u8; 1 << 20];
        f.read_exact_at(&mut buf, 0).unwrap();
        modify_keeping_mtime(&store.join(source), 40 << 20, 200 + i as u64);
        let e = f.read_exact_at(&mut buf, 40 << 20).unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::EIO), "{view}: {e}");
    }
}

// =============================================================================================
// 9. Symlinks (and qcow2 backing files) that leave the store are refused
// =============================================================================================

/// A flat store with a.img, links in and out of it, a secret outside, and a qcow2 whose
/// backing file is the secret.
fn links_store(work: &Path) -> (PathBuf, Vec<u8>) {
    let store = work.join("store");
    fs::create_dir_all(&store).unwrap();
    let a = crate::support::noise(21, 1 << 20);
    fs::write(store.join("a.img"), &a).unwrap();
    let secret = work.join("secret");
    fs::write(&secret, vec![0xa5; 1 << 20]).unwrap();
    std::os::unix::fs::symlink(&secret, store.join("out.img")).unwrap();
    std::os::unix::fs::symlink("../secret", store.join("rel.img")).unwrap();
    std::os::unix::fs::symlink("a.img", store.join("in.img")).unwrap();
    let o = crate::support::common::qemu_img([
        "create",
        "-f",
        "qcow2",
        "-b",
        secret.to_str().unwrap(),
        "-F",
        "raw",
        store.join("q.qcow2").to_str().unwrap(),
        "1M",
    ]);
    crate::support::common::assert_ok(&o, "qemu-img create");
    (store, a)
}

/// A symlink planted where an upload writes (a flat store's `.NAME.upload`, a Longhorn
/// disk's image directory) is refused, and the file it points to stays as it was.
#[test]
fn f9_an_upload_never_writes_through_a_planted_symlink() {
    full_tier_only!("curl");
    // A flat store: `.evil.upload` -> a file outside the store.
    let s = Server::start_with(Options {
        flat: true,
        ..Default::default()
    });
    let victim = s.work().join("victim.txt");
    let original = b"ORIGINAL VICTIM CONTENT (outside the store)\n".to_vec();
    fs::write(&victim, &original).unwrap();
    std::os::unix::fs::symlink(&victim, s.store().join(".evil.upload")).unwrap();
    let a = s.work().join("a.bin");
    fs::write(&a, [b'A'; 512]).unwrap();
    for query in ["offset=0&size=512", "offset=0&size=1024"] {
        let (code, v) = put_file(&s, "evil", query, &a);
        assert_eq!(code, 500, "{v}");
        assert!(
            message(&v).contains(".evil.upload in the store is a symlink"),
            "{v}"
        );
        assert!(!message(&v).contains(s.work().to_str().unwrap()), "{v}");
    }
    assert_eq!(fs::read(&victim).unwrap(), original);
    assert!(fs::symlink_metadata(s.store().join(".evil.upload"))
        .unwrap()
        .file_type()
        .is_symlink());
    assert!(!s.store().join("evil").exists());
    let (code, v) = api(&s, "GET", "/api/v1/uploads/evil", None);
    assert_eq!(code, 500, "{v}");
    drop(s);

    // A Longhorn disk: the image directory of a waiting upload swapped for a link to a
    // directory outside the store that has a backing.tmp of its own.
    let s = Server::start();
    let (code, v) = put_file(&s, "swap", "offset=0&size=1024", &a);
    assert_eq!(code, 200, "{v}");
    let id = v["upload"].as_str().unwrap().to_string();
    let (_, rec) = api(&s, "GET", "/api/v1/backingimages/swap", None);
    let uuid = rec["status"]["uuid"].as_str().unwrap().to_string();
    let dir = s.store().join(format!("backing-images/swap-{uuid}"));
    let outside = s.work().join("outside");
    fs::create_dir_all(&outside).unwrap();
    fs::write(outside.join("backing.tmp"), &original).unwrap();
    fs::remove_dir_all(&dir).unwrap();
    std::os::unix::fs::symlink(&outside, &dir).unwrap();
    let (code, v) = put_file(&s, "swap", &format!("offset=512&size=1024&upload={id}"), &a);
    assert_eq!(code, 500, "{v}");
    assert!(message(&v).contains("is a symlink"), "{v}");
    // Starting again reuses the directory name: refused too, nothing emptied out there.
    let (code, v) = put_file(&s, "swap", "offset=0&size=1024", &a);
    assert_eq!(code, 500, "{v}");
    assert!(message(&v).contains("is a symlink"), "{v}");
    assert_eq!(fs::read(outside.join("backing.tmp")).unwrap(), original);
    assert_eq!(fs::read_dir(&outside).unwrap().count(), 1);
}

#[test]
fn f9_links_out_of_the_store_are_refused_over_http() {
    full_tier_only!("qemu-img, curl");
    crate::support::common::require_tools();
    let work = tempfile::Builder::new()
        .prefix("bifs-links")
        .tempdir()
        .unwrap();
    let (store, a) = links_store(work.path());
    let s = Server::start_with(Options {
        flat: true,
        store: Some(&store),
        args: &["--public-read"],
        ..Default::default()
    });
    let get = |path: &str| -> (u16, Vec<u8>) {
        let out = s.work().join("body");
        let (code, _) = curl(&[
            "-H",
            AUTH,
            "-o",
            out.to_str().unwrap(),
            &format!("{}{path}", s.url),
        ]);
        (code, fs::read(&out).unwrap_or_default())
    };
    for name in ["out.img", "rel.img"] {
        let (code, body) = get(&format!("/views/ignore/{name}"));
        assert_eq!(code, 404, "{name}: {}", String::from_utf8_lossy(&body));
        let (code, _) = get(&format!("/views/encrypt/{SECRET_NS}/{SECRET_NAME}/{name}"));
        assert_eq!(code, 404, "{name}");
    }
    let (code, body) = get("/views/ignore/in.img");
    assert_eq!(code, 200);
    assert!(body == a, "a link inside the store serves its target");
    // The qcow2 itself is served; its disk (through the backing file outside) is not, and
    // the error names no server path.
    let (code, _) = get("/views/ignore/q.qcow2");
    assert_eq!(code, 200);
    for view in [
        "raw/q.qcow2".to_string(),
        format!("encrypt/{SECRET_NS}/{SECRET_NAME}/q.qcow2"),
    ] {
        let (code, body) = get(&format!("/views/{view}"));
        let text = String::from_utf8_lossy(&body);
        assert_ne!(code, 200, "{view} served the file outside the store");
        assert!(!body.contains(&0xa5), "{view}: outside bytes served");
        assert!(
            !text.contains(work.path().to_str().unwrap()),
            "{view}: the error shows a server path: {text}"
        );
    }
}

/// A Longhorn disk's root holds `replicas/` (every volume's data on the node) beside
/// `backing-images/`: an image whose qcow2 backing file name or symlink climbs into it is
/// refused, though both stay inside the disk.
#[test]
fn f9_a_longhorn_disk_serves_nothing_outside_backing_images() {
    full_tier_only!("qemu-img, curl");
    crate::support::common::require_tools();
    let work = tempfile::Builder::new()
        .prefix("bifs-links")
        .tempdir()
        .unwrap();
    let disk = work.path().join("disk");
    let replica = disk.join("replicas/pvc-victim-0a1b2c3d");
    fs::create_dir_all(&replica).unwrap();
    let volume = replica.join("volume-head-000.img");
    fs::write(&volume, vec![0xa5; 1 << 20]).unwrap();
    let (qdir, ldir, adir) = (
        disk.join("backing-images/evil-1a2b3c4d"),
        disk.join("backing-images/link-2b3c4d5e"),
        disk.join("backing-images/fine-3c4d5e6f"),
    );
    for d in [&qdir, &ldir, &adir] {
        fs::create_dir_all(d).unwrap();
    }
    let a = crate::support::noise(23, 1 << 20);
    fs::write(adir.join("backing"), &a).unwrap();
    let o = crate::support::common::qemu_img([
        "create",
        "-u",
        "-f",
        "qcow2",
        "-b",
        "../../replicas/pvc-victim-0a1b2c3d/volume-head-000.img",
        "-F",
        "raw",
        qdir.join("backing").to_str().unwrap(),
        "1M",
    ]);
    crate::support::common::assert_ok(&o, "qemu-img create");
    std::os::unix::fs::symlink(
        "../../replicas/pvc-victim-0a1b2c3d/volume-head-000.img",
        ldir.join("backing"),
    )
    .unwrap();
    let s = Server::start_with(Options {
        store: Some(&disk),
        args: &["--public-read"],
        ..Default::default()
    });
    let get = |path: &str| -> (u16, Vec<u8>) {
        let out = s.work().join("body");
        let _ = fs::remove_file(&out);
        let (code, _) = curl(&[
            "-H",
            AUTH,
            "-o",
            out.to_str().unwrap(),
            &format!("{}{path}", s.url),
        ]);
        (code, fs::read(&out).unwrap_or_default())
    };
    let (code, body) = get("/views/raw/fine");
    assert_eq!(code, 200, "{}", String::from_utf8_lossy(&body));
    assert!(body == a);
    for view in [
        "raw/evil".to_string(),
        format!("encrypt/{SECRET_NS}/{SECRET_NAME}/evil"),
        "ignore/link".to_string(),
        "raw/link".to_string(),
    ] {
        let (code, body) = get(&format!("/views/{view}"));
        let text = String::from_utf8_lossy(&body);
        assert_ne!(code, 200, "{view} served a replica: {text}");
        assert!(
            !body.contains(&0xa5),
            "{view}: the replica's bytes were served"
        );
        assert!(
            !text.contains(work.path().to_str().unwrap()),
            "{view}: the error shows a server path: {text}"
        );
    }
}

#[test]
fn f9_links_out_of_the_store_are_not_in_the_mount() {
    full_tier_only!("FUSE (root), qemu-img");
    crate::support::mount::require_tools(&["fusermount3", "qemu-img"]);
    let work = tempfile::Builder::new()
        .prefix("bifs-links")
        .tempdir()
        .unwrap();
    let (store, a) = links_store(work.path());
    let secrets = work.path().join("secret.yaml");
    write_mount_secret(&secrets);
    let m = crate::support::mount::Mounted::start(
        &store,
        &secrets,
        None,
        &work.path().join("mnt"),
        &[],
    );
    let mut names: Vec<String> = fs::read_dir(m.path("ignore"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(names, ["a.img", "in.img", "q.qcow2"]);
    for name in ["out.img", "rel.img"] {
        let e = fs::File::open(m.path(&format!("ignore/{name}"))).unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::ENOENT), "{name}");
    }
    assert!(fs::read(m.path("ignore/in.img")).unwrap() == a);
    let e = fs::read(m.path("raw/q.qcow2")).unwrap_err();
    assert!(
        matches!(
            e.raw_os_error(),
            Some(libc::EIO) | Some(libc::EACCES) | Some(libc::EPERM)
        ),
        "raw/q.qcow2: {e}"
    );
}

// =============================================================================================
// 10. Logs, names, messages, odd LUKS images
// =============================================================================================

#[test]
fn f10_a_name_with_a_newline_cannot_forge_a_log_line() {
    full_tier_only!("curl");
    let forged = "x\nINFO forged: all is well";
    let s = Server::start_with(Options {
        flat: true,
        files: &[(
            forged,
            b"some bytes of an image, 512 of them".repeat(16).as_slice(),
        )],
        ..Default::default()
    });
    // The SHA-512 of a view logs its image name at info.
    let (code, body) = curl(&[
        "-H",
        AUTH,
        &format!(
            "{}/views/ignore/x%0AINFO%20forged%3A%20all%20is%20well.sha512",
            s.url
        ),
    ]);
    assert_eq!(code, 200, "{body}");
    let log = s.log();
    assert!(log.contains("SHA-512 of a view computed"), "{log}");
    assert!(
        !log.lines()
            .any(|l| l.trim_start().starts_with("INFO forged")),
        "a file name forged a log line:\n{log}"
    );
    assert!(
        log.contains("\\nINFO forged"),
        "the name is shown escaped:\n{log}"
    );
}

#[test]
fn f10_unknown_names_in_the_mount_are_not_logged_at_info() {
    full_tier_only!("FUSE (root)");
    crate::support::mount::require_tools(&["fusermount3"]);
    let work = tempfile::Builder::new()
        .prefix("bifs-lookups")
        .tempdir()
        .unwrap();
    let store = work.path().join("store");
    fs::create_dir_all(&store).unwrap();
    fs::write(store.join("a.img"), vec![1u8; 4096]).unwrap();
    let secrets = work.path().join("secret.yaml");
    write_mount_secret(&secrets);
    let m = crate::support::mount::Mounted::start(
        &store,
        &secrets,
        None,
        &work.path().join("mnt"),
        &["--log", "info"],
    );
    for i in 0..200 {
        assert!(fs::metadata(m.path(&format!("encrypt/nons{i}"))).is_err());
        assert!(fs::metadata(m.path(&format!("encrypt/{SECRET_NS}/nosecret{i}"))).is_err());
        assert!(fs::metadata(m.path(&format!("decrypt/{SECRET_NS}/{SECRET_NAME}/a.img"))).is_err());
    }
    let log = m.log_text();
    assert!(
        !log.contains("nons") && !log.contains("nosecret") && !log.contains("refused"),
        "lookups of names that do not exist were logged at info:\n{log}"
    );
}

#[test]
fn f10_a_long_upload_name_is_a_400_that_shows_no_server_path() {
    full_tier_only!("curl");
    let s = Server::start();
    let name = "a".repeat(300);
    let url = format!("{}/api/v1/uploads/{name}?offset=0&size=512", s.url);
    let (code, body) = curl(&["-X", "PUT", "-H", AUTH, "--data-binary", "x", &url]);
    assert_eq!(code, 400, "{body}");
    assert!(body.contains("63"), "{body}");
    assert!(
        !body.contains(s.work().to_str().unwrap()) && !body.contains('/'),
        "the error shows a server path: {body}"
    );
    let (code, body) = curl(&[
        "-H",
        AUTH,
        &format!("{}/api/v1/backingimages/{name}", s.url),
    ]);
    assert_eq!(code, 404, "{body}");
    assert!(!body.contains(s.work().to_str().unwrap()), "{body}");
    let (code, body) = curl(&["-H", AUTH, &format!("{}/api/v1/uploads/{name}", s.url)]);
    assert_eq!(code, 400, "{body}");
}

#[test]
fn f10_a_truncated_luks_image_is_reported_as_truncated() {
    full_tier_only!("cryptsetup, curl");
    crate::support::common::require_tools();
    let s = Server::start_with(Options {
        flat: true,
        ..Default::default()
    });
    let img = s.store().join("cut.img");
    fs::write(&img, vec![0u8; 20 << 20]).unwrap();
    crate::support::common::luks2_format_cheap(&img, PASSPHRASE.as_bytes());
    fs::OpenOptions::new()
        .write(true)
        .open(&img)
        .unwrap()
        .set_len(8 << 10)
        .unwrap();
    let (_, body) = curl(&[
        "-H",
        AUTH,
        &format!("{}/views/decrypt/{SECRET_NS}/{SECRET_NAME}/cut.img", s.url),
    ]);
    assert!(body.contains("truncated"), "{body}");
    assert!(!body.contains("not encrypted"), "{body}");
    let out = Command::new(crate::support::BIFS)
        .arg("inspect")
        .arg(&img)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stderr);
    assert!(text.contains("truncated"), "bifs inspect: {text}");
}

/// Adds a token whose string is not valid UTF-8 to both JSON copies of a LUKS2 header and
/// recomputes their checksums (sha256, as cryptsetup writes them).
const PY_NON_UTF8_JSON: &str = r#"
import sys, json, hashlib, struct
p = sys.argv[1]
b = bytearray(open(p, "rb").read())
size = struct.unpack(">Q", b[8:16])[0]
area = b[4096:size]
j = json.loads(area[: area.index(0)])
j["tokens"]["3"] = {"type": "bifs-test", "keyslots": [], "note": "AAAA"}
t = json.dumps(j, separators=(",", ":")).encode().replace(b'"AAAA"', b'"A\xff\xfeA"')
for off in (0, size):
    a = bytearray(size - 4096)
    a[: len(t)] = t
    b[off + 4096 : off + size] = a
    b[off + 0x1C0 : off + 0x1C0 + 64] = bytes(64)
    b[off + 0x1C0 : off + 0x1C0 + 32] = hashlib.sha256(bytes(b[off : off + size])).digest()
open(p, "wb").write(b)
"#;

#[test]
fn f10_luks2_json_that_is_not_utf8_opens_as_cryptsetup_opens_it() {
    full_tier_only!("cryptsetup, python3");
    crate::support::common::require_tools();
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("odd.img");
    fs::write(&img, crate::support::noise(31, 20 << 20)).unwrap();
    crate::support::common::luks2_format_cheap(&img, PASSPHRASE.as_bytes());
    let plain = dir.path().join("plain.img");
    fs::copy(&img, &plain).unwrap();
    let out = python(PY_NON_UTF8_JSON, &[img.to_str().unwrap()])
        .wait_with_output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // cryptsetup 2.6 loads and opens it (json-c takes strings as bytes).
    let o = crate::support::common::cryptsetup_stdin(
        [
            "open",
            "--test-passphrase",
            "--key-file",
            "-",
            img.to_str().unwrap(),
        ],
        PASSPHRASE.as_bytes(),
    );
    crate::support::common::assert_ok(&o, "cryptsetup open --test-passphrase of non-UTF-8 JSON");
    let inspect = Command::new(crate::support::BIFS)
        .arg("inspect")
        .arg(&img)
        .output()
        .unwrap();
    assert!(
        inspect.status.success(),
        "bifs inspect refuses what cryptsetup loads: {}",
        String::from_utf8_lossy(&inspect.stderr)
    );
    let secret = dir.path().join("secret.yaml");
    fs::write(
        &secret,
        format!(
            "apiVersion: v1\nkind: Secret\nmetadata: {{name: s, namespace: ns}}\nstringData:\n  \
             CRYPTO_KEY_VALUE: \"{PASSPHRASE}\"\n  CRYPTO_KEY_PROVIDER: secret\n"
        ),
    )
    .unwrap();
    let decrypt = |src: &Path, dst: &Path| {
        let o = Command::new(crate::support::BIFS)
            .arg("decrypt")
            .arg("--secret")
            .arg(&secret)
            .arg(src)
            .arg(dst)
            .output()
            .unwrap();
        assert!(
            o.status.success(),
            "bifs decrypt: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        fs::read(dst).unwrap()
    };
    let a = decrypt(&img, &dir.path().join("a.out"));
    let b = decrypt(&plain, &dir.path().join("b.out"));
    assert!(a == b, "the odd header does not open to the same plaintext");
}

/// The servers' test Secret (PBKDF2 at 1000 iterations) as one manifest file, for a mount.
fn write_mount_secret(path: &Path) {
    let yaml = crate::support::serve_node::secret_yaml(
        SECRET_NS,
        SECRET_NAME,
        PASSPHRASE,
        "  CRYPTO_PBKDF: pbkdf2\n  CRYPTO_PBKDF_FORCE_ITERATIONS: \"1000\"\n",
    );
    fs::write(path, yaml).unwrap();
}
