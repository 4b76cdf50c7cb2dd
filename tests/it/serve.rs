//! `bifs serve` with real clients: curl, wget, qemu-img (its curl driver), Python's urllib, and
//! `bifs apply` of a second store downloading from the first server (the two-node case).
//! Also: auth refusals, TLS, traversal, 304/416, a source changed during a download, and 50
//! concurrent range downloads while an apply runs.
//!
//! Needs curl, wget, qemu-img (qemu-utils), python3, cryptsetup (cryptsetup-bin), openssl.

use std::fs;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use crate::support::apply::*;

const MIB: usize = 1 << 20;
const TOKEN: &str = "serve-test-token-0123456789";

fn require(tools: &[(&str, &str)]) {
    for (cmd, pkg) in tools {
        let found = Command::new(cmd)
            .arg("--version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok();
        assert!(
            found,
            "`{cmd}` is missing: apt-get install {pkg} (scripts/setup.sh installs it); this test never skips"
        );
    }
}

/// A running `bifs serve`, killed on drop.
struct Server {
    child: Child,
    url: String,
}

impl Server {
    fn start(store: &Path, secrets: &Path, extra: &[&str]) -> Server {
        let mut child = Command::new(bifs_bin())
            .args(["serve", "--store"])
            .arg(store)
            .arg("--secrets")
            .arg(secrets)
            .args(["--listen", "127.0.0.1:0"])
            .args(extra)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let url = line
            .trim()
            .strip_prefix("bifs serve: listening on ")
            .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
            .to_string();
        Server { child, url }
    }

    fn view(&self, path: &str) -> String {
        format!("{}/views/{path}", self.url)
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn run(cmd: &str, args: &[&str]) -> Output {
    Command::new(cmd)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("running {cmd}: {e}"))
}

fn run_ok(cmd: &str, args: &[&str]) -> Output {
    let o = run(cmd, args);
    assert!(
        o.status.success(),
        "{cmd} {args:?} failed: {}\n{}",
        o.status,
        String::from_utf8_lossy(&o.stderr)
    );
    o
}

/// `curl -s -o /dev/null -w CODE` plus the response headers (lower-cased names).
fn status(url: &str, extra: &[&str]) -> (u16, String) {
    let mut args = vec!["-s", "-o", "/dev/null", "-D", "-", "-w", "\n%{http_code}"];
    args.extend_from_slice(extra);
    args.push(url);
    let o = run("curl", &args);
    let text = String::from_utf8_lossy(&o.stdout).to_string();
    let (head, code) = text.rsplit_once('\n').unwrap();
    (code.trim().parse().unwrap(), head.to_ascii_lowercase())
}

fn header<'a>(head: &'a str, name: &str) -> Option<&'a str> {
    head.lines()
        .find_map(|l| l.strip_prefix(&format!("{name}: ")))
        .map(str::trim)
}

/// A store with a plain image `disk.img` and `luks.img` (its LUKS2 encryption by bifs), and a
/// cheap `longhorn-system/longhorn-crypto` Secret.
struct Fixture {
    _tmp: tempfile::TempDir,
    dir: PathBuf,
    store: PathBuf,
    secrets: PathBuf,
    disk: Vec<u8>,
}

fn fixture(size: usize) -> Fixture {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().to_path_buf();
    let store = dir.join("store");
    fs::create_dir_all(&store).unwrap();
    let secrets = cheap_secret(&dir);
    // Not a multiple of 512: the encrypt view pads it.
    let disk = noise(11, size + 1000);
    fs::write(store.join("disk.img"), &disk).unwrap();
    ok(&[
        "encrypt",
        "--secret",
        secrets.to_str().unwrap(),
        store.join("disk.img").to_str().unwrap(),
        store.join("luks.img").to_str().unwrap(),
    ]);
    Fixture {
        _tmp: tmp,
        dir,
        store,
        secrets,
        disk,
    }
}

const ENC: &str = "encrypt/longhorn-system/longhorn-crypto/disk.img";
const DEC: &str = "decrypt/longhorn-system/longhorn-crypto/luks.img";

/// The plaintext of a LUKS file, by `bifs decrypt` (an independent path: the copier).
fn decrypt_file(f: &Fixture, luks: &Path) -> Vec<u8> {
    let out = f.dir.join(format!(
        "plain-{}",
        luks.file_name().unwrap().to_string_lossy()
    ));
    let _ = fs::remove_file(&out);
    ok(&[
        "decrypt",
        "--secret",
        f.secrets.to_str().unwrap(),
        luks.to_str().unwrap(),
        out.to_str().unwrap(),
    ]);
    let v = fs::read(&out).unwrap();
    fs::remove_file(&out).unwrap();
    v
}

fn padded(v: &[u8]) -> Vec<u8> {
    let mut p = v.to_vec();
    p.resize(v.len().div_ceil(512) * 512, 0);
    p
}

#[test]
fn real_clients_read_every_view() {
    full_tier_only!("curl, wget, qemu-img, cryptsetup, python3");
    require(&[
        ("curl", "curl"),
        ("wget", "wget"),
        ("python3", "python3"),
        ("cryptsetup", "cryptsetup-bin"),
    ]);
    let f = fixture(6 * MIB);
    let srv = Server::start(&f.store, &f.secrets, &[]);
    let d = &f.dir;

    // curl, whole: ignore/ and raw/ are the file; decrypt/ is the plaintext of luks.img.
    for (view, want) in [
        ("ignore/disk.img", f.disk.clone()),
        ("raw/disk.img", f.disk.clone()),
        (DEC, padded(&f.disk)),
    ] {
        let out = d.join("whole");
        run_ok(
            "curl",
            &["-sfS", "-o", out.to_str().unwrap(), &srv.view(view)],
        );
        assert!(fs::read(&out).unwrap() == want, "{view}: bytes differ");
    }

    // curl, the encrypt view: a LUKS2 image that cryptsetup opens and that decrypts to the
    // source; its .sha512 is the SHA-512 of the bytes served.
    let enc = d.join("enc.img");
    run_ok(
        "curl",
        &["-sfS", "-o", enc.to_str().unwrap(), &srv.view(ENC)],
    );
    let enc_bytes = fs::read(&enc).unwrap();
    assert_eq!(enc_bytes.len(), 16 * MIB + padded(&f.disk).len());
    assert!(cryptsetup_opens(&enc, PASSPHRASE));
    assert!(decrypt_file(&f, &enc) == padded(&f.disk));
    let sum = run_ok("curl", &["-sfS", &srv.view(&format!("{ENC}.sha512"))]);
    assert_eq!(
        String::from_utf8_lossy(&sum.stdout).trim(),
        sha512_hex(&enc_bytes)
    );
    // Cached: the second answer is the same, and a file under the state directory holds it.
    let again = run_ok("curl", &["-sfS", &srv.view(&format!("{ENC}.sha512"))]);
    assert_eq!(sum.stdout, again.stdout);
    let cached = fs::read_dir(f.store.join(".bifs/http-sha512"))
        .unwrap()
        .count();
    assert_eq!(cached, 1);

    // curl ranges, and `-C -` resuming a partial download.
    let part = run_ok("curl", &["-sfS", "-r", "1000-2999", &srv.view(ENC)]);
    assert!(part.stdout == enc_bytes[1000..3000]);
    let resumed = d.join("resumed.img");
    fs::write(&resumed, &enc_bytes[..5 * MIB + 17]).unwrap();
    run_ok(
        "curl",
        &[
            "-sfS",
            "-C",
            "-",
            "-o",
            resumed.to_str().unwrap(),
            &srv.view(ENC),
        ],
    );
    assert!(
        fs::read(&resumed).unwrap() == enc_bytes,
        "curl -C - resumed wrongly"
    );

    // wget -c resuming.
    let w = d.join("wget.img");
    fs::write(&w, &enc_bytes[..3 * MIB + 5]).unwrap();
    run_ok(
        "wget",
        &["-q", "-c", "-O", w.to_str().unwrap(), &srv.view(ENC)],
    );
    assert!(
        fs::read(&w).unwrap() == enc_bytes,
        "wget -c resumed wrongly"
    );

    // Python's urllib: a HEAD, a range and the whole view.
    let py = r#"
import urllib.request, hashlib, sys
u = sys.argv[1]
h = urllib.request.urlopen(urllib.request.Request(u, method="HEAD"))
assert h.status == 200 and h.headers["Accept-Ranges"] == "bytes", h.headers
n = int(h.headers["Content-Length"])
r = urllib.request.urlopen(urllib.request.Request(u, headers={"Range": "bytes=4096-8191"}))
assert r.status == 206, r.status
part = r.read()
whole = urllib.request.urlopen(u).read()
assert len(whole) == n and whole[4096:8192] == part
print(hashlib.sha512(whole).hexdigest())
"#;
    let o = run_ok("python3", &["-c", py, &srv.view(ENC)]);
    assert_eq!(
        String::from_utf8_lossy(&o.stdout).trim(),
        sha512_hex(&enc_bytes)
    );
}

#[test]
fn qemu_img_reads_over_http() {
    full_tier_only!("curl, wget, qemu-img, cryptsetup, python3");
    require(&[("curl", "curl"), ("qemu-img", "qemu-utils")]);
    let f = fixture(3 * MIB);
    let srv = Server::start(&f.store, &f.secrets, &[]);
    let d = &f.dir;
    let enc = d.join("enc.img");
    run_ok(
        "curl",
        &["-sfS", "-o", enc.to_str().unwrap(), &srv.view(ENC)],
    );
    let enc_bytes = fs::read(&enc).unwrap();
    // qemu-img reading http:// through its curl driver (which reads with ranges). `-m 1`: with
    // its default 8 coroutines, Debian 12's qemu-img 7.2 hangs at the last chunk although every
    // ranged answer is complete (the same ranges read with curl give every byte, and `-m 1`,
    // `-S 0` or `readahead=0` all finish): a known race in qemu's curl driver, not in the server.
    // `timeout` makes a hang a failure instead of a stuck CI run.
    let q = d.join("qemu.raw");
    let o = run(
        "timeout",
        &[
            "300",
            "qemu-img",
            "convert",
            "-m",
            "1",
            "-f",
            "raw",
            "-O",
            "raw",
            &srv.view(ENC),
            q.to_str().unwrap(),
        ],
    );
    assert!(
        o.status.success(),
        "qemu-img convert from http failed (is qemu's curl block driver installed? \
         Debian: qemu-block-extra matching qemu-utils): {}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(
        fs::read(&q).unwrap() == enc_bytes,
        "qemu-img read other bytes"
    );
}

#[test]
fn conditional_and_range_answers() {
    full_tier_only!("curl, wget, qemu-img, cryptsetup, python3");
    require(&[("curl", "curl")]);
    let f = fixture(MIB);
    let srv = Server::start(&f.store, &f.secrets, &[]);
    let url = srv.view("ignore/disk.img");
    let len = f.disk.len();

    // HEAD: length, ranges, validators, no body.
    let (code, head) = status(&url, &["-I"]);
    assert_eq!(code, 200);
    assert_eq!(
        header(&head, "content-length"),
        Some(len.to_string().as_str())
    );
    assert_eq!(header(&head, "accept-ranges"), Some("bytes"));
    assert!(header(&head, "last-modified").is_some());
    let etag = header(&head, "etag").unwrap().to_string();
    assert!(etag.starts_with('"') && !etag.starts_with("W/"), "{etag}");

    // 304 for the current ETag, 200 for another.
    assert_eq!(
        status(&url, &["-H", &format!("If-None-Match: {etag}")]).0,
        304
    );
    assert_eq!(status(&url, &["-H", "If-None-Match: \"nope\""]).0, 200);
    // If-Modified-Since (RFC 9110 13.1.3): 304 at or after Last-Modified, ignored beside an
    // If-None-Match; If-Match / If-Unmodified-Since (13.1.1, 13.1.4): 412 when false.
    // (`status` lower-cases the head: the date as sent, from a HEAD of our own.)
    let raw_head = String::from_utf8_lossy(&run("curl", &["-sI", &url]).stdout).to_string();
    let lm = raw_head
        .lines()
        .find_map(|l| {
            l.to_ascii_lowercase()
                .starts_with("last-modified:")
                .then(|| l[14..].trim().to_string())
        })
        .expect("a Last-Modified");
    let (code, h304) = status(&url, &["-H", &format!("If-Modified-Since: {lm}")]);
    assert_eq!(code, 304);
    assert_eq!(header(&h304, "etag"), Some(etag.as_str()));
    assert_eq!(header(&h304, "content-length"), None);
    let ims = format!("If-Modified-Since: {lm}");
    assert_eq!(
        status(&url, &["-H", "If-None-Match: \"nope\"", "-H", &ims]).0,
        200
    );
    let past = "Sat, 01 Jan 2000 00:00:00 GMT";
    assert_eq!(
        status(&url, &["-H", &format!("If-Modified-Since: {past}")]).0,
        200
    );
    assert_eq!(status(&url, &["-H", &format!("If-Match: {etag}")]).0, 200);
    assert_eq!(status(&url, &["-H", "If-Match: \"nope\""]).0, 412);
    assert_eq!(status(&url, &["-I", "-H", "If-Match: \"nope\""]).0, 412);
    assert_eq!(
        status(&url, &["-H", &format!("If-Unmodified-Since: {past}")]).0,
        412
    );
    // The checksum: its own ETag, answered by If-None-Match; no-cache.
    let (code, sum_head) = status(&format!("{url}.sha512"), &[]);
    assert_eq!(code, 200);
    assert_eq!(header(&sum_head, "cache-control"), Some("no-cache"));
    let sum_etag = header(&sum_head, "etag").unwrap().to_string();
    let inm = format!("If-None-Match: {sum_etag}");
    assert_eq!(status(&format!("{url}.sha512"), &["-H", &inm]).0, 304);
    // 206 / 416.
    let (code, head) = status(&url, &["-r", "10-19"]);
    assert_eq!(code, 206);
    assert_eq!(
        header(&head, "content-range"),
        Some(format!("bytes 10-19/{len}").as_str())
    );
    let (code, head) = status(&url, &["-r", &format!("{len}-")]);
    assert_eq!(code, 416);
    assert_eq!(
        header(&head, "content-range"),
        Some(format!("bytes */{len}").as_str())
    );
    // If-Range: the range only for the current ETag; otherwise the whole view.
    let (code, _) = status(&url, &["-r", "0-9", "-H", &format!("If-Range: {etag}")]);
    assert_eq!(code, 206);
    let (code, head) = status(&url, &["-r", "0-9", "-H", "If-Range: \"old\""]);
    assert_eq!(code, 200);
    assert_eq!(
        header(&head, "content-length"),
        Some(len.to_string().as_str())
    );

    // The ETag is stable while the bytes are, and changes when they change.
    assert_eq!(header(&status(&url, &["-I"]).1, "etag").unwrap(), etag);
    let mut changed = f.disk.clone();
    changed[0] ^= 1;
    std::thread::sleep(Duration::from_millis(20));
    fs::write(f.store.join("disk.img"), &changed).unwrap();
    let etag2 = header(&status(&url, &["-I"]).1, "etag")
        .unwrap()
        .to_string();
    assert_ne!(etag, etag2);
    assert_eq!(
        status(&url, &["-H", &format!("If-None-Match: {etag}")]).0,
        200
    );

    // The encrypt view's ETag is stable across requests (the persisted header is reused).
    let enc = srv.view(ENC);
    let e1 = header(&status(&enc, &["-I"]).1, "etag")
        .unwrap()
        .to_string();
    let e2 = header(&status(&enc, &["-I"]).1, "etag")
        .unwrap()
        .to_string();
    assert_eq!(e1, e2);

    // Unknown names and refused combinations are 404s.
    assert_eq!(status(&srv.view("ignore/none.img"), &[]).0, 404);
    assert_eq!(
        status(
            &srv.view("encrypt/longhorn-system/longhorn-crypto/luks.img"),
            &[]
        )
        .0,
        404
    );
    assert_eq!(
        status(&srv.view("decrypt/longhorn-system/nope/luks.img"), &[]).0,
        404
    );
}

/// A rewrite that puts the mtime back (`touch -m -r`) still moves Last-Modified (the ctime
/// cannot be put back): an If-Range with the old date gets the whole new view (200), not a
/// range of it spliced onto the old copy; If-Modified-Since with the old date gets a 200, not
/// a 304. An If-Range date is honoured only as a strong validator: a Last-Modified at least a
/// second old (RFC 9110 8.8.2.2).
#[test]
fn date_validators_see_a_rewrite_that_restores_the_mtime() {
    full_tier_only!("curl, wget, qemu-img, cryptsetup, python3");
    require(&[("curl", "curl"), ("touch", "coreutils")]);
    let tmp = tempfile::tempdir().unwrap();
    let store = tmp.path().join("store");
    fs::create_dir_all(&store).unwrap();
    let secrets = cheap_secret(tmp.path());
    let image = store.join("plain.img");
    let old = noise(21, 64 * 1024);
    fs::write(&image, &old).unwrap();
    let reference = tmp.path().join("ref");
    run_ok(
        "touch",
        &["-r", image.to_str().unwrap(), reference.to_str().unwrap()],
    );
    let srv = Server::start(&store, &secrets, &[]);
    let url = srv.view("ignore/plain.img");
    let get = |extra: &[&str]| -> (u16, String, Vec<u8>) {
        let body = tmp.path().join("body");
        let mut args = vec![
            "-s",
            "-o",
            body.to_str().unwrap(),
            "-D",
            "-",
            "-w",
            "\n%{http_code}",
        ];
        args.extend_from_slice(extra);
        args.push(&url);
        let o = run("curl", &args);
        let text = String::from_utf8_lossy(&o.stdout).to_string();
        let (head, code) = text.rsplit_once('\n').unwrap();
        (
            code.trim().parse().unwrap(),
            head.to_string(),
            fs::read(&body).unwrap_or_default(),
        )
    };
    // A Last-Modified less than a second old is not a strong validator: no range for it.
    let (_, head, _) = get(&["-I"]);
    let lm = head
        .lines()
        .find_map(|l| {
            l.to_ascii_lowercase()
                .starts_with("last-modified:")
                .then(|| l[14..].trim().to_string())
        })
        .expect("a Last-Modified");
    let if_range = format!("If-Range: {lm}");
    let (code, _, body) = get(&["-r", "0-15", "-H", &if_range]);
    if code == 200 {
        assert_eq!(body, old, "a false If-Range sends the whole view");
    }
    // A second on, the date is strong: the range for the current Last-Modified.
    std::thread::sleep(Duration::from_millis(2100));
    let (code, _, body) = get(&["-r", "0-15", "-H", &if_range]);
    assert_eq!(
        code, 206,
        "If-Range with the current, second-old Last-Modified"
    );
    assert_eq!(body, &old[..16]);
    assert_eq!(get(&["-H", &format!("If-Modified-Since: {lm}")]).0, 304);

    // The first 16 bytes rewritten in place, the mtime put back.
    let mut new = old.clone();
    new[..16].copy_from_slice(b"CHANGED!CHANGED!");
    {
        use std::io::{Seek, Write};
        let mut f = fs::OpenOptions::new().write(true).open(&image).unwrap();
        f.seek(std::io::SeekFrom::Start(0)).unwrap();
        f.write_all(&new[..16]).unwrap();
    }
    run_ok(
        "touch",
        &[
            "-m",
            "-r",
            reference.to_str().unwrap(),
            image.to_str().unwrap(),
        ],
    );
    let (code, head, body) = get(&["-r", "0-15", "-H", &if_range]);
    assert_eq!(
        code, 200,
        "If-Range with the old date after a rewrite: {head}"
    );
    assert_eq!(body, new, "the whole new view, not a range of it");
    let (code, head, _) = get(&["-H", &format!("If-Modified-Since: {lm}")]);
    assert_eq!(
        code, 200,
        "If-Modified-Since with the old date after a rewrite: {head}"
    );
    let lm2 = head
        .lines()
        .find_map(|l| {
            l.to_ascii_lowercase()
                .starts_with("last-modified:")
                .then(|| l[14..].trim().to_string())
        })
        .unwrap();
    assert_ne!(lm2, lm, "Last-Modified moves with the ctime");
}

#[test]
fn traversal_is_refused() {
    full_tier_only!("curl, wget, qemu-img, cryptsetup, python3");
    require(&[("curl", "curl")]);
    let f = fixture(64 * 1024);
    // Something outside the store that a traversal would reach.
    fs::write(f.dir.join("outside.img"), b"SECRET-OUTSIDE").unwrap();
    let srv = Server::start(&f.store, &f.secrets, &[]);
    for path in [
        "/views/ignore/../outside.img",
        "/views/ignore/..%2foutside.img",
        "/views/ignore/%2e%2e/outside.img",
        "/views/ignore/%2e%2e%2foutside.img",
        "/views/raw/..%2F..%2F..%2Fetc%2Fpasswd",
        "/views/ignore/.bifs",
        "/views/encrypt/longhorn-system/..%2f..%2foutside.img",
        "/views/ignore//etc/passwd",
        "/views/../../../etc/passwd",
    ] {
        let o = run(
            "curl",
            &[
                "-s",
                "--path-as-is",
                "-w",
                "\n%{http_code}",
                &format!("{}{path}", srv.url),
            ],
        );
        let text = String::from_utf8_lossy(&o.stdout).to_string();
        let (body, code) = text.rsplit_once('\n').unwrap();
        assert!(
            code == "404" || code == "400",
            "{path}: answered {code}: {body}"
        );
        assert!(
            !body.contains("SECRET-OUTSIDE") && !body.contains("root:"),
            "{path}: {body}"
        );
    }
}

#[test]
fn who_may_do_what() {
    full_tier_only!("curl, wget, qemu-img, cryptsetup, python3");
    require(&[("curl", "curl"), ("openssl", "openssl")]);
    let f = fixture(64 * 1024);
    let token = f.dir.join("token");
    fs::write(&token, format!("{TOKEN}\n")).unwrap();
    let bearer = format!("Authorization: Bearer {TOKEN}");
    let wrong = "Authorization: Bearer serve-test-token-0123456780";

    // Token, no --public-read: every view needs it.
    let srv = Server::start(
        &f.store,
        &f.secrets,
        &["--token-file", token.to_str().unwrap()],
    );
    for view in ["ignore/disk.img", "raw/disk.img", ENC, DEC] {
        let (code, head) = status(&srv.view(view), &[]);
        assert_eq!(code, 401, "{view} without the token");
        assert!(header(&head, "www-authenticate").is_some_and(|v| v.starts_with("bearer")));
        assert_eq!(
            status(&srv.view(view), &["-H", wrong]).0,
            401,
            "{view} wrong token"
        );
        assert_eq!(
            status(&srv.view(view), &["-H", &bearer]).0,
            200,
            "{view} with the token"
        );
    }
    // Refused before any lookup: a missing image is 401 too, not 404.
    assert_eq!(status(&srv.view("ignore/none.img"), &[]).0, 401);
    drop(srv);

    // --public-read: encrypt/ and ignore/ of a LUKS image (ciphertext) without the token;
    // plaintext still needs it, ignore/ of a plain image included. A plain image's ignore/ and
    // a missing image's get the same answer as any plaintext view: no probing for names.
    let srv = Server::start(
        &f.store,
        &f.secrets,
        &["--token-file", token.to_str().unwrap(), "--public-read"],
    );
    assert_eq!(status(&srv.view("ignore/luks.img"), &[]).0, 200);
    assert_eq!(status(&srv.view("ignore/luks.img"), &["-I"]).0, 200);
    let body = |view: &str, extra: &[&str]| {
        let mut args = vec!["-s", "-w", "\n%{http_code}"];
        args.extend_from_slice(extra);
        let url = srv.view(view);
        args.push(&url);
        String::from_utf8_lossy(&run("curl", &args).stdout).to_string()
    };
    let plain = body("ignore/disk.img", &[]);
    assert!(
        plain.ends_with("\n401"),
        "ignore/ of a plain image: {plain}"
    );
    assert_eq!(
        body("ignore/none.img", &[]),
        plain,
        "a missing image answers alike"
    );
    assert_eq!(body("raw/disk.img", &[]), plain, "as raw/ does");
    assert_eq!(body("ignore/disk.img.sha512", &[]), plain);
    assert_eq!(status(&srv.view("ignore/disk.img"), &["-I"]).0, 401);
    assert_eq!(
        status(&srv.view("ignore/disk.img"), &["-H", &bearer]).0,
        200
    );
    // A signed URL opens it (what the page hands Longhorn under --public-read).
    let signed = ok(&[
        "url",
        "--token-file",
        token.to_str().unwrap(),
        &srv.view("ignore/disk.img"),
    ]);
    let signed = signed.lines().last().unwrap().trim().to_string();
    let got = run("curl", &["-sf", &signed]);
    assert!(got.status.success(), "signed ignore/ of a plain image");
    assert_eq!(got.stdout, f.disk);
    assert_eq!(status(&srv.view(ENC), &[]).0, 200);
    assert_eq!(status(&srv.view(&format!("{ENC}.sha512")), &[]).0, 200);
    assert_eq!(status(&srv.view(DEC), &[]).0, 401);
    assert_eq!(status(&srv.view("raw/disk.img"), &[]).0, 401);
    assert_eq!(status(&srv.view(DEC), &["-H", &bearer]).0, 200);
    drop(srv);

    // Off loopback: a token and TLS (or --insecure) are required; refused before binding.
    for (args, want) in [
        (vec!["--listen", "0.0.0.0:0"], "--token-file"),
        (
            vec![
                "--listen",
                "0.0.0.0:0",
                "--token-file",
                token.to_str().unwrap(),
            ],
            "TLS",
        ),
    ] {
        let mut full = vec![
            "serve",
            "--store",
            f.store.to_str().unwrap(),
            "--secrets",
            f.secrets.to_str().unwrap(),
        ];
        full.extend(args);
        let err = fails(&full);
        assert!(err.contains(want), "{err}");
    }
    // A short token is refused.
    let short = f.dir.join("short");
    fs::write(&short, "abc").unwrap();
    let err = fails(&[
        "serve",
        "--store",
        f.store.to_str().unwrap(),
        "--token-file",
        short.to_str().unwrap(),
        "--listen",
        "127.0.0.1:0",
    ]);
    assert!(err.contains("at least"), "{err}");

    // TLS (rustls) with a self-signed certificate, on loopback.
    let (cert, key) = (f.dir.join("cert.pem"), f.dir.join("key.pem"));
    run_ok(
        "openssl",
        &[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=localhost",
            "-addext",
            "subjectAltName=IP:127.0.0.1",
            "-keyout",
            key.to_str().unwrap(),
            "-out",
            cert.to_str().unwrap(),
        ],
    );
    let srv = Server::start(
        &f.store,
        &f.secrets,
        &[
            "--token-file",
            token.to_str().unwrap(),
            "--tls-cert",
            cert.to_str().unwrap(),
            "--tls-key",
            key.to_str().unwrap(),
        ],
    );
    assert!(srv.url.starts_with("https://"), "{}", srv.url);
    let o = run_ok(
        "curl",
        &[
            "-sfS",
            "--cacert",
            cert.to_str().unwrap(),
            "-H",
            &bearer,
            &srv.view("ignore/disk.img"),
        ],
    );
    assert!(o.stdout == f.disk);
    // Passphrases never appear in answers.
    let o = run(
        "curl",
        &[
            "-s",
            "--cacert",
            cert.to_str().unwrap(),
            "-H",
            &bearer,
            &srv.view("decrypt/longhorn-system/longhorn-crypto/disk.img"),
        ],
    );
    assert!(!String::from_utf8_lossy(&o.stdout).contains(PASSPHRASE));
}

#[test]
fn source_changed_during_a_download_fails_it() {
    full_tier_only!("curl, wget, qemu-img, cryptsetup, python3");
    require(&[("curl", "curl")]);
    let f = fixture(48 * MIB);
    let srv = Server::start(&f.store, &f.secrets, &[]);
    let out = f.dir.join("partial");
    let mut curl = Command::new("curl")
        .args(["-sS", "--limit-rate", "8M", "-o"])
        .arg(&out)
        .arg(srv.view("ignore/disk.img"))
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while fs::metadata(&out).map(|m| m.len()).unwrap_or(0) < 4 * MIB as u64 {
        assert!(Instant::now() < deadline, "the download never started");
        std::thread::sleep(Duration::from_millis(50));
    }
    // Rewrite the tail of the source in place (same inode).
    {
        use std::os::unix::fs::FileExt;
        let file = fs::OpenOptions::new()
            .write(true)
            .open(f.store.join("disk.img"))
            .unwrap();
        file.write_at(&vec![0xAB; MIB], 40 * MIB as u64).unwrap();
    }
    let st = curl.wait().unwrap();
    assert!(!st.success(), "curl must see a truncated transfer");
    let got = fs::read(&out).unwrap();
    assert!(got.len() < f.disk.len(), "the whole file came through");
    assert!(got[..] == f.disk[..got.len()], "bytes were mixed");
    // A new request serves the new bytes whole.
    let o = run_ok("curl", &["-sfS", &srv.view("ignore/disk.img")]);
    assert_eq!(o.stdout.len(), f.disk.len());
    assert!(o.stdout[40 * MIB..41 * MIB].iter().all(|&b| b == 0xAB));
}

fn vm_hwm_kib(pid: u32) -> u64 {
    let s = fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    s.lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

#[test]
fn fifty_concurrent_range_downloads_while_an_apply_runs() {
    full_tier_only!("curl, wget, qemu-img, cryptsetup, python3");
    require(&[("curl", "curl")]);
    let f = fixture(40 * MIB);
    let srv = Server::start(&f.store, &f.secrets, &[]);
    let enc = f.dir.join("enc.img");
    run_ok(
        "curl",
        &["-sfS", "-o", enc.to_str().unwrap(), &srv.view(ENC)],
    );
    let whole = fs::read(&enc).unwrap();
    let before = vm_hwm_kib(srv.pid());

    // An apply on the same store: the encrypt clone of a download from this very server.
    let sum = sha512_hex(&f.disk);
    let manifest = write(
        &f.dir,
        "bi.yaml",
        &backing_image(
            "during",
            &format!(
                "  sourceType: download\n  sourceParameters:\n    url: {}\n  checksum: {sum}\n",
                srv.view("ignore/disk.img")
            ),
        ),
    );
    let apply = Command::new(bifs_bin())
        .args(["apply", "-f"])
        .arg(&manifest)
        .arg("--store")
        .arg(&f.store)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();

    let n = 50;
    let len = whole.len();
    let piece = len / n;
    let mut kids = Vec::new();
    for i in 0..n {
        let a = i * piece;
        let b = if i == n - 1 { len - 1 } else { a + piece - 1 };
        let out = f.dir.join(format!("r{i}"));
        let child = Command::new("curl")
            .args([
                "-sfS",
                "--limit-rate",
                "20M",
                "-r",
                &format!("{a}-{b}"),
                "-o",
            ])
            .arg(&out)
            .arg(srv.view(ENC))
            .spawn()
            .unwrap();
        kids.push((child, out, a, b));
    }
    for (mut c, out, a, b) in kids {
        assert!(c.wait().unwrap().success(), "range {a}-{b} failed");
        assert!(
            fs::read(&out).unwrap() == whole[a..=b],
            "range {a}-{b}: other bytes"
        );
    }
    let out = apply.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "apply: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(fs::read(backing(&f.store, "during")).unwrap() == f.disk);
    // Memory bounded: 50 concurrent downloads of a 56 MiB view held little more than a few
    // chunks each (the blocking pool threads' stacks included).
    let after = vm_hwm_kib(srv.pid());
    assert!(
        after < before + 200 * 1024,
        "server high-water memory grew from {before} KiB to {after} KiB"
    );
}

#[test]
fn two_nodes_second_store_downloads_the_encrypt_view() {
    full_tier_only!("curl, wget, qemu-img, cryptsetup, python3");
    require(&[("curl", "curl"), ("cryptsetup", "cryptsetup-bin")]);
    let f = fixture(5 * MIB);
    let srv = Server::start(&f.store, &f.secrets, &[]);
    let sum = run_ok("curl", &["-sfS", &srv.view(&format!("{ENC}.sha512"))]);
    let sum = String::from_utf8(sum.stdout).unwrap().trim().to_string();
    let store_b = f.dir.join("store-b");
    fs::create_dir_all(&store_b).unwrap();
    let manifest = write(
        &f.dir,
        "node-b.yaml",
        &backing_image(
            "disk-encrypted",
            &format!(
                "  sourceType: download\n  sourceParameters:\n    url: {}\n  checksum: {sum}\n  secret: longhorn-crypto\n  secretNamespace: longhorn-system\n",
                srv.view(ENC)
            ),
        ),
    );
    ok(&[
        "apply",
        "-f",
        manifest.to_str().unwrap(),
        "--store",
        store_b.to_str().unwrap(),
        "--secrets",
        f.secrets.to_str().unwrap(),
    ]);
    let got = backing(&store_b, "disk-encrypted");
    assert_eq!(sha512_hex(&fs::read(&got).unwrap()), sum);
    assert!(cryptsetup_opens(&got, PASSPHRASE));
    assert!(decrypt_file(&f, &got) == padded(&f.disk));
}

/// A qcow2 view's validators cover its backing file: after `base.raw` under
/// `overlay.qcow2` is rewritten in place, raw/overlay.qcow2 has a new ETag (the old one no
/// longer answers If-None-Match with 304), its `.sha512` is computed again, and an If-Range
/// resume with the old ETag gets the whole new view (200), not a range spliced onto the old.
#[test]
fn a_backing_file_change_changes_the_qcow2_views_validators() {
    use std::os::unix::fs::FileExt;
    full_tier_only!("curl, wget, qemu-img, cryptsetup, python3");
    require(&[("curl", "curl"), ("qemu-img", "qemu-utils")]);
    let f = fixture(MIB);
    let len = 4 * MIB;
    fs::write(f.store.join("base.raw"), vec![0x11u8; len]).unwrap();
    let o = Command::new("qemu-img")
        .args(["create", "-q", "-f", "qcow2", "-F", "raw", "-b", "base.raw"])
        .arg("overlay.qcow2")
        .current_dir(&f.store)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let srv = Server::start(&f.store, &f.secrets, &[]);
    let url = srv.view("raw/overlay.qcow2");
    let get = |extra: &[&str]| {
        let mut args = vec!["-sfS"];
        args.extend_from_slice(extra);
        args.push(&url);
        run_ok("curl", &args).stdout
    };
    let sum_of =
        || String::from_utf8(run_ok("curl", &["-sfS", &format!("{url}.sha512")]).stdout).unwrap();

    let (code, head) = status(&url, &["-I"]);
    assert_eq!(code, 200);
    let etag = header(&head, "etag").unwrap().to_string();
    assert_eq!(get(&[]), vec![0x11u8; len]);
    let sum = sum_of();
    assert!(sum.contains(&sha512_hex(&vec![0x11u8; len])), "{sum}");

    std::thread::sleep(Duration::from_millis(20));
    fs::OpenOptions::new()
        .write(true)
        .open(f.store.join("base.raw"))
        .unwrap()
        .write_all_at(&vec![0x22u8; len], 0)
        .unwrap();

    let (code, head) = status(&url, &["-I"]);
    assert_eq!(code, 200);
    let etag2 = header(&head, "etag").unwrap().to_string();
    assert_ne!(etag, etag2, "the backing file changed, the ETag did not");
    assert_eq!(
        status(&url, &["-H", &format!("If-None-Match: {etag}")]).0,
        200
    );
    let sum2 = sum_of();
    assert!(sum2.contains(&sha512_hex(&vec![0x22u8; len])), "{sum2}");
    // A resume of the old version: the whole new view, not a 206 of new bytes.
    let (code, head) = status(
        &url,
        &["-r", "1048576-", "-H", &format!("If-Range: {etag}")],
    );
    assert_eq!(code, 200);
    assert_eq!(
        header(&head, "content-length"),
        Some(len.to_string().as_str())
    );
    let body = get(&["-r", "1048576-", "-H", &format!("If-Range: {etag}")]);
    assert_eq!(body, vec![0x22u8; len]);
    // The current ETag resumes.
    assert_eq!(
        status(&url, &["-r", "0-9", "-H", &format!("If-Range: {etag2}")]).0,
        206
    );
}
