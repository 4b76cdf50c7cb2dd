//! The node image end to end, with podman: built by scripts/image.sh from Debian packages, run
//! the way the DaemonSet runs it (a Longhorn disk read-only as the store, Secret volumes in the
//! kubelet's layout, the mount point shared back to the host), then read from the host, the
//! Secret rotated under it, and stopped with SIGTERM.
//!
//! podman here needs `--runtime runc` and explicit ulimits (see /work/shared/machine-notes.md);
//! a FUSE mount made in the container reaches the host only through an `rshared` bind mount.

use std::fs;
use std::net::TcpListener;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use crate::support::common::{assert_ok, describe, random_file, test_passphrase, MIB};
use crate::support::node::{crypto_keys, kubelet_write};
use sha2::{Digest, Sha512};

const IMAGE: &str = "localhost/bifs-node:test";
const SECRET: &str = "longhorn-system/longhorn-crypto";

fn require_tools() {
    crate::support::common::require_tools();
    let mut missing = Vec::new();
    for (tool, pkg) in [
        ("podman", "podman"),
        ("buildah", "buildah"),
        ("mmdebstrap", "mmdebstrap"),
        ("runc", "runc"),
        ("curl", "curl"),
        ("fusermount3", "fuse3"),
    ] {
        let found = Command::new("sh")
            .args(["-c", &format!("command -v {tool}")])
            .stdout(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !found {
            missing.push(format!("{tool} (apt-get install {pkg})"));
        }
    }
    assert!(
        missing.is_empty(),
        "\n\n*** the node image test needs: {} (or: bash scripts/setup.sh) ***\n\n",
        missing.join(", ")
    );
    assert!(Path::new("/dev/fuse").exists(), "/dev/fuse is missing");
}

fn run(cmd: &mut Command, what: &str) -> Output {
    let o = cmd
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("{what}: {e}"));
    assert_ok(&o, what);
    o
}

/// Builds the image once per test binary, from the binary under test.
fn image() -> &'static str {
    static BUILT: OnceLock<()> = OnceLock::new();
    BUILT.get_or_init(|| {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/image.sh");
        let o = run(
            Command::new("bash").arg(script).args([
                "--tag",
                IMAGE,
                "--binary",
                crate::support::BIFS,
            ]),
            "scripts/image.sh",
        );
        // The size and build time, for the CI log.
        eprintln!("{}", String::from_utf8_lossy(&o.stdout).trim());
        let size: u64 = String::from_utf8_lossy(
            &run(
                Command::new("podman").args(["image", "inspect", "--format", "{{.Size}}", IMAGE]),
                "podman image inspect",
            )
            .stdout,
        )
        .trim()
        .parse()
        .unwrap();
        assert!(
            size > 5_000_000,
            "an image of {size} bytes cannot hold Debian and bifs"
        );
        assert!(
            size < 100_000_000,
            "the node image is {size} bytes; the target is under 100 MB"
        );
    });
    IMAGE
}

/// The mount points of this process's namespace at `path`.
fn mounts_at(path: &Path) -> Vec<String> {
    let want = path.to_str().unwrap();
    fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .filter(|l| l.split(' ').nth(4) == Some(want))
        .map(str::to_string)
        .collect()
}

/// A directory bind-mounted onto itself and made shared, so that a mount made below it in a
/// container propagates to the host. Unmounted (with anything left below) on drop.
struct SharedDir(PathBuf);

impl SharedDir {
    fn new(path: &Path) -> Self {
        fs::create_dir_all(path).unwrap();
        run(
            Command::new("mount").args(["--bind"]).arg(path).arg(path),
            "mount --bind",
        );
        let me = SharedDir(path.to_owned());
        run(
            Command::new("mount").arg("--make-shared").arg(path),
            "mount --make-shared",
        );
        me
    }
}

impl Drop for SharedDir {
    fn drop(&mut self) {
        while !mounts_at(&self.0).is_empty() {
            let ok = Command::new("umount").arg("-l").arg(&self.0).status();
            if !ok.is_ok_and(|s| s.success()) {
                break;
            }
        }
    }
}

/// A container removed (forcefully) on drop, so a failing test leaves nothing running.
struct Container {
    name: String,
}

impl Container {
    fn logs(&self) -> String {
        let o = Command::new("podman")
            .args(["logs", &self.name])
            .output()
            .unwrap();
        format!(
            "{}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        )
    }

    fn inspect(&self, format: &str) -> String {
        let o = run(
            Command::new("podman").args(["inspect", "--format", format, &self.name]),
            "podman inspect",
        );
        String::from_utf8_lossy(&o.stdout).trim().to_string()
    }
}

impl Drop for Container {
    fn drop(&mut self) {
        let _ = Command::new("podman")
            .args(["rm", "-f", "-t", "2", &self.name])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

/// The disk's `longhorn-disk.cfg`, as longhorn-manager writes it for a filesystem disk.
const DISK_CFG: &str = r#"{"diskName":"default-disk-7c1f9e0a2b3d","diskUUID":"0b1d2f1e-8c3a-4f7e-9a51-6f0c2e7d9b10","diskDriver":""}"#;

/// Go's `time.Time.String()` of `path`'s mtime in UTC, as backing-image-manager records it in
/// `modificationTime` (made with `date` here, not with bifs's own formatter).
fn go_mtime(path: &Path) -> String {
    let o = run(
        Command::new("date")
            .args(["-u", "-r"])
            .arg(path)
            .arg("+%Y-%m-%d %H:%M:%S.%N"),
        "date -r",
    );
    let text = String::from_utf8_lossy(&o.stdout).trim().to_string();
    let (secs, nanos) = text.split_once('.').unwrap();
    let nanos = nanos.trim_end_matches('0');
    if nanos.is_empty() {
        format!("{secs} +0000 UTC")
    } else {
        format!("{secs}.{nanos} +0000 UTC")
    }
}

/// A Longhorn disk as backing-image-manager lays it out today: `longhorn-disk.cfg` at the
/// root, `replicas/`, and `backing-images/<name>-<uuid>/` with the finished `backing` and
/// `backing.cfg` in the current `SyncingFileConfig` format (`name` is the path of `backing`
/// inside backing-image-manager's pod, sizes, SHA-512 checksums, Go's mtime string).
fn longhorn_disk(root: &Path, name: &str, uuid: &str, content: &Path) {
    let dir = root.join("backing-images").join(format!("{name}-{uuid}"));
    fs::create_dir_all(&dir).unwrap();
    fs::create_dir_all(root.join("replicas")).unwrap();
    let backing = dir.join("backing");
    fs::copy(content, &backing).unwrap();
    let meta = fs::metadata(&backing).unwrap();
    let sum = hex::encode(Sha512::digest(fs::read(&backing).unwrap()));
    let cfg = serde_json::json!({
        "name": format!("/data/backing-images/{name}-{uuid}/backing"),
        "uuid": uuid,
        "size": meta.len(),
        "virtualSize": meta.len(),
        "realSize": meta.blocks() * 512,
        "expectedChecksum": sum,
        "currentChecksum": sum,
        "modificationTime": go_mtime(&backing),
    });
    fs::write(dir.join("backing.cfg"), cfg.to_string()).unwrap();
    fs::write(root.join("longhorn-disk.cfg"), DISK_CFG).unwrap();
}

/// A second copy of `name` that backing-image-manager is still downloading: only
/// `backing.tmp`, which the store must not serve.
fn downloading_copy(root: &Path, name: &str, uuid: &str) {
    let dir = root.join("backing-images").join(format!("{name}-{uuid}"));
    fs::create_dir_all(&dir).unwrap();
    fs::write(dir.join("backing.tmp"), vec![0x5a; 4096]).unwrap();
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Fields drop in order: the container, then the shared mount, then the directory.
struct Node {
    container: Container,
    shared: SharedDir,
    dir: tempfile::TempDir,
    source: PathBuf,
    vault_plain_len: u64,
    port: u16,
}

impl Node {
    fn path(&self, rel: &str) -> PathBuf {
        self.shared.0.join(rel)
    }

    /// Starts the image as the DaemonSet does (`extra`: more `bifs mount` flags).
    fn start(tag: &str, extra: &[&str]) -> Node {
        let dir = crate::support::common::tempdir(&format!("node-{tag}"));
        let p = |n: &str| dir.path().join(n);
        for d in ["store", "state", "secrets", "token"] {
            fs::create_dir_all(p(d)).unwrap();
        }
        // A plain image and a LUKS2 image that only the rotated passphrase opens.
        let source = p("parrot.raw");
        random_file(&source, 3 * MIB + 512, 11);
        longhorn_disk(&p("store"), "parrot", "6a0f8d7e", &source);
        downloading_copy(&p("store"), "parrot", "0d15ea5e");
        let vault = p("vault.raw");
        random_file(&vault, 18 * MIB, 12);
        crate::support::common::luks2_format_cheap(&vault, b"pp-rotated-Vb3");
        longhorn_disk(&p("store"), "vault", "91c2e4aa", &vault);
        kubelet_write(&p("secrets").join(SECRET), &crypto_keys("pp-first-Kq8"));
        fs::write(p("token/token"), "node-image-test-token-0123456789abcdef").unwrap();

        let shared = SharedDir::new(&p("mnt"));
        let port = free_port();
        let hard = String::from_utf8_lossy(
            &Command::new("sh")
                .args(["-c", "ulimit -Hn"])
                .output()
                .unwrap()
                .stdout,
        )
        .trim()
        .to_string();
        let name = format!("bifs-node-test-{tag}-{}", std::process::id());
        let vol = |host: &str, ctr: &str, opt: &str| format!("{}:{ctr}:{opt}", p(host).display());
        let mut cmd = Command::new("podman");
        cmd.args(["run", "-d", "--name", &name, "--runtime", "runc"])
            .args(["--ulimit", &format!("nofile={hard}:{hard}")])
            .args(["--ulimit", "nproc=32768:32768"])
            .args(["--device", "/dev/fuse", "--cap-add", "SYS_ADMIN"])
            .args(["--security-opt", "label=disable"])
            .args(["-v", &vol("store", "/store", "ro")])
            .args(["-v", &vol("state", "/state", "rw")])
            .args(["-v", &vol("secrets", "/secrets", "ro")])
            .args(["-v", &vol("token", "/etc/bifs/token", "ro")])
            .args(["-v", &vol("mnt", "/mnt/bifs", "rshared")])
            .args(["-p", &format!("127.0.0.1:{port}:8080")])
            .arg(image())
            .args([
                "mount",
                "--store=/store",
                "--state=/state",
                "--secrets=/secrets",
            ])
            .arg("--allow-other")
            .args(extra)
            .arg("/mnt/bifs");
        let o = run(&mut cmd, "podman run");
        assert!(!o.stdout.is_empty(), "{}", describe(&o));
        let container = Container { name };
        let node = Node {
            dir,
            source,
            vault_plain_len: 18 * MIB - 16 * MIB,
            shared,
            port,
            container,
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        while !node.path("raw/parrot").exists() {
            let running = node.container.inspect("{{.State.Running}}");
            assert!(
                running == "true" && Instant::now() < deadline,
                "the mount did not reach the host (running: {running}):\n{}",
                node.container.logs()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
        node
    }

    /// `podman stop` (SIGTERM), then: a clean exit, no mount left, no partial file.
    fn stop_and_check(self) {
        let c = &self.container;
        let t0 = Instant::now();
        run(
            Command::new("podman").args(["stop", "-t", "20", &c.name]),
            "podman stop",
        );
        let code = c.inspect("{{.State.ExitCode}}");
        let logs = c.logs();
        assert_eq!(
            code, "0",
            "bifs did not exit cleanly on SIGTERM (137 = SIGKILL):\n{logs}"
        );
        assert!(
            t0.elapsed() < Duration::from_secs(15),
            "SIGTERM took {:?}",
            t0.elapsed()
        );
        assert!(logs.contains("unmounted"), "{logs}");
        let below: Vec<String> = fs::read_to_string("/proc/self/mountinfo")
            .unwrap()
            .lines()
            .filter(|l| l.contains(self.shared.0.to_str().unwrap()) && l.contains("fuse"))
            .map(str::to_string)
            .collect();
        assert!(
            below.is_empty(),
            "a FUSE mount is left on the host: {below:?}"
        );
        assert!(
            fs::read_dir(&self.shared.0).unwrap().next().is_none(),
            "the shared mount point is not empty after the stop"
        );
        // Only whole persisted headers (16 MiB) and their records in the state directory.
        for entry in walk(&self.dir.path().join("state")) {
            let name = entry.file_name().unwrap().to_string_lossy().to_string();
            let len = fs::metadata(&entry).unwrap().len();
            match entry.extension().and_then(|e| e.to_str()) {
                Some("luks") => assert_eq!(len, 16 * MIB, "{}", entry.display()),
                Some("json") => {
                    let _: serde_json::Value = serde_json::from_slice(&fs::read(&entry).unwrap())
                        .unwrap_or_else(|e| panic!("{}: {e}", entry.display()));
                }
                _ => panic!("unexpected (partial?) file in the state directory: {name}"),
            }
        }
        for pass in ["pp-first-Kq8", "pp-rotated-Vb3"] {
            assert!(!logs.contains(pass), "a passphrase in the logs");
        }
    }
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}

/// The plaintext of a LUKS2 file, decrypted by the Python oracle with the volume key that
/// cryptsetup recovers with `passphrase`.
fn oracle_plaintext(luks: &Path, passphrase: &str, len: u64, work: &Path) -> Vec<u8> {
    let keyfile = crate::support::common::write_keyfile(work, "oracle-key", passphrase);
    let key = crate::support::common::volume_key(luks, &keyfile);
    let out = work.join("oracle.out");
    crate::support::common::oracle_decrypt(luks, &out, &key, 16 * MIB, 512, len);
    fs::read(out).unwrap()
}

#[test]
fn node_image_mounts_a_longhorn_disk_follows_rotation_and_stops_on_sigterm() {
    full_tier_only!("root, podman, buildah, mmdebstrap, /dev/fuse, cryptsetup");
    require_tools();
    let node = Node::start("mount", &[]);
    let work = node.dir.path().to_owned();
    let source = fs::read(&node.source).unwrap();

    // The raw view through the container's FUSE mount, read on the host: the ready copy of
    // each backing image, not the one still downloading.
    let mut images: Vec<String> = fs::read_dir(node.path("raw"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    images.sort();
    assert_eq!(images, ["parrot", "vault"]);
    assert_eq!(fs::read(node.path("raw/parrot")).unwrap(), source);
    let listed: Vec<String> = fs::read_dir(node.path("encrypt/longhorn-system"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert_eq!(listed, ["longhorn-crypto"]);

    // The encrypt view: a LUKS2 image cryptsetup opens with the Secret's passphrase, whose
    // data the independent oracle decrypts back to the source.
    let enc = work.join("parrot.luks");
    fs::copy(node.path(&format!("encrypt/{SECRET}/parrot")), &enc).unwrap();
    assert!(test_passphrase(&enc, b"pp-first-Kq8").status.success());
    let plain = oracle_plaintext(&enc, "pp-first-Kq8", source.len() as u64, &work);
    assert_eq!(plain, source, "the encrypt view decrypts to the source");

    // Rotation: the kubelet swaps ..data; the next open uses the new passphrase.
    let vault = node.path(&format!("decrypt/{SECRET}/vault"));
    assert_eq!(crate::support::mount::open_errno(&vault), libc::EACCES);
    kubelet_write(
        &node.dir.path().join("secrets").join(SECRET),
        &crypto_keys("pp-rotated-Vb3"),
    );
    let opened = fs::read(&vault).expect("the rotated passphrase opens the LUKS image");
    assert_eq!(opened.len() as u64, node.vault_plain_len);
    let enc2 = work.join("parrot2.luks");
    fs::copy(node.path(&format!("encrypt/{SECRET}/parrot")), &enc2).unwrap();
    assert!(test_passphrase(&enc2, b"pp-rotated-Vb3").status.success());
    assert!(!test_passphrase(&enc2, b"pp-first-Kq8").status.success());

    node.stop_and_check();
}

/// Downloads `url` to `out` with curl, retrying while the server starts.
fn download(node: &Node, url: &str, out: &Path) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let o = Command::new("curl")
            .args(["-fsS", "-o"])
            .arg(out)
            .arg(url)
            .output()
            .unwrap();
        if o.status.success() {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "download of {url} failed: {}\n{}",
            describe(&o),
            node.container.logs()
        );
        std::thread::sleep(Duration::from_millis(300));
    }
}

/// `curl` of `path` on the node's published port: (status, body).
fn get(node: &Node, path: &str, token: Option<&str>) -> (String, String) {
    let mut cmd = Command::new("curl");
    cmd.args(["-sS", "-w", "\n%{http_code}"]);
    if let Some(t) = token {
        cmd.args(["-H", &format!("Authorization: Bearer {t}")]);
    }
    let o = cmd
        .arg(format!("http://127.0.0.1:{}{path}", node.port))
        .output()
        .unwrap();
    assert_ok(&o, "curl");
    let text = String::from_utf8_lossy(&o.stdout).to_string();
    let (body, code) = text.rsplit_once('\n').unwrap();
    (code.to_string(), body.to_string())
}

/// The value of the sample `series` (name and labels exactly as rendered) in a scrape.
fn sample(scrape: &str, series: &str) -> Option<f64> {
    scrape
        .lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

#[test]
fn node_image_serves_the_encrypt_view_over_http() {
    full_tier_only!("root, podman, buildah, mmdebstrap, /dev/fuse, cryptsetup, curl");
    require_tools();
    const TOKEN: &str = "node-image-test-token-0123456789abcdef";
    let node = Node::start(
        "serve",
        &[
            "--serve=0.0.0.0:8080",
            "--token-file=/etc/bifs/token/token",
            "--public-read",
            "--insecure",
        ],
    );
    let work = node.dir.path().to_owned();
    let source = fs::read(&node.source).unwrap();
    let url = format!(
        "http://127.0.0.1:{}/views/encrypt/{SECRET}/parrot",
        node.port
    );

    // The encrypt view, downloaded through the published port: a LUKS2 image cryptsetup opens
    // with the Secret's passphrase and the oracle decrypts back to the backing image.
    let http = work.join("http.luks");
    download(&node, &url, &http);
    assert!(test_passphrase(&http, b"pp-first-Kq8").status.success());
    let plain = oracle_plaintext(&http, "pp-first-Kq8", source.len() as u64, &work);
    assert_eq!(plain, source);
    // The HTTP server and the mount are one catalog: the same bytes both ways.
    let fuse = fs::read(node.path(&format!("encrypt/{SECRET}/parrot"))).unwrap();
    assert!(
        fuse == fs::read(&http).unwrap(),
        "HTTP and FUSE serve the same bytes"
    );

    // Probes, as the DaemonSet's liveness and readiness checks call them.
    assert_eq!(get(&node, "/healthz", None).0, "200");
    // Readiness is what the background pass found last (at most a second old, never waiting
    // on a derivation): it turns 200 once the pass has seen every view prepared.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (code, body) = get(&node, "/readyz", None);
        if code == "200" {
            break;
        }
        assert!(Instant::now() < deadline, "{code}: {body}");
        std::thread::sleep(Duration::from_millis(500));
    }

    // Plaintext views need the token.
    assert_eq!(
        get(&node, "/views/raw/parrot", None).0,
        "401",
        "raw view without the token"
    );

    // Rotation (the kubelet swaps ..data): the next download is a new stable header that only
    // the new passphrase opens (made anew, not unlocked: no unlock failure).
    kubelet_write(
        &node.dir.path().join("secrets").join(SECRET),
        &crypto_keys("pp-rotated-Vb3"),
    );
    let rotated = work.join("rotated.luks");
    download(&node, &url, &rotated);
    assert!(test_passphrase(&rotated, b"pp-rotated-Vb3")
        .status
        .success());
    assert!(!test_passphrase(&rotated, b"pp-first-Kq8").status.success());
    let plain = oracle_plaintext(&rotated, "pp-rotated-Vb3", source.len() as u64, &work);
    assert_eq!(plain, source);

    // The counters of all that, scraped as Prometheus would (--public-read: no token needed).
    let (code, scrape) = get(&node, "/metrics", None);
    assert_eq!(code, "200", "{scrape}");
    assert_eq!(
        sample(
            &scrape,
            "bifs_encrypt_headers_created_total{image=\"parrot\"}"
        ),
        Some(2.0),
        "one header per passphrase:\n{scrape}"
    );
    assert_eq!(
        sample(
            &scrape,
            "bifs_unlock_failures_total{mode=\"encrypt\",image=\"parrot\"}"
        ),
        None,
        "{scrape}"
    );
    let enc_bytes = sample(&scrape, "bifs_http_view_bytes_read_total{mode=\"encrypt\"}").unwrap();
    let view_len = fs::metadata(&http).unwrap().len() as f64;
    assert!(enc_bytes >= 2.0 * view_len, "{enc_bytes} < 2 x {view_len}");
    for secret_part in ["pp-first-Kq8", "pp-rotated-Vb3", "longhorn-crypto", TOKEN] {
        assert!(
            !scrape.contains(secret_part),
            "{secret_part} in /metrics:\n{scrape}"
        );
    }
    node.stop_and_check();
}
