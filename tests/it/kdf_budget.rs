//! The work budget for key derivations, against a real `bifs serve` (issue 18 findings 4 and 5,
//! issue 19): hostile LUKS images (a PBKDF2 keyslot of 2^30 iterations, 32 keyslots, 4 GiB of
//! Argon2 memory) cost what the limits allow and no more, run on the derivation pool only,
//! stop when their client leaves, and never slow another image's views or `/readyz`; a full
//! request queue is a 503 with `Retry-After`; SIGTERM stops the server while a derivation
//! runs; a Longhorn disk whose directories bifs cannot enter is a loud warning.
//!
//! The bounds on times here are generous (seconds against minutes of work): they catch a
//! server that waits for a derivation, not a slow machine. Measured times are printed.

use std::fs;
use std::path::Path;
use std::time::{Duration, Instant};

use bifs_core::kdf::{Hash, Kdf};
use bifs_core::keys::{Passphrase, VolumeKey};
use bifs_core::luks::{binary, FormatParams, Luks2Header};
use serde_json::{json, Value};

use crate::support::noise;
use crate::support::serve_node::{curl, secret_yaml, Serve};

const HDR: usize = 0x4000;
const NS: &str = "longhorn-system";
const TOKEN: &str = "kdf-budget-test-token-0123456789";

/// A LUKS2 image made by bifs (PBKDF2 1000, passphrase "pw") with 1 MiB of data, its JSON
/// rewritten by `edit` in both copies (checksums fixed, as an attacker would).
fn hostile(edit: impl Fn(&mut Value)) -> Vec<u8> {
    let params = FormatParams {
        hash: Hash::Sha256,
        kdf: Kdf::Pbkdf2 {
            hash: Hash::Sha256,
            iterations: 1000,
        },
        sector_size: 4096,
        digest_iterations: Some(1000),
        uuid: None,
        label: String::new(),
    };
    let key = VolumeKey::random(32).unwrap();
    let mut img = Luks2Header::format(&params, &key, &Passphrase::new("pw")).unwrap();
    img.extend_from_slice(&noise(3, 1 << 20));
    let area = &img[4096..HDR];
    let end = area.iter().position(|&b| b == 0).unwrap();
    let mut v: Value = serde_json::from_slice(&area[..end]).unwrap();
    edit(&mut v);
    let text = serde_json::to_vec(&v).unwrap();
    assert!(text.len() < HDR - 4096, "JSON of {} bytes", text.len());
    for off in [0, HDR] {
        let a = &mut img[off + 4096..off + HDR];
        a.fill(0);
        a[..text.len()].copy_from_slice(&text);
        binary::fix_checksum_for_fuzzing(&mut img, off);
    }
    img
}

/// Keyslot 0 at 2^30 PBKDF2 iterations: minutes of work, within cryptsetup's limits.
fn iterations_image() -> Vec<u8> {
    hostile(|v| v["keyslots"]["0"]["kdf"]["iterations"] = json!(1u64 << 30))
}

/// 32 keyslots (cryptsetup's maximum) of 3 million PBKDF2 iterations each, all bound to the
/// data segment: an unlock with a wrong passphrase tries them all.
fn many_keyslots_image() -> Vec<u8> {
    hostile(|v| {
        let mut ks = v["keyslots"]["0"].clone();
        ks["kdf"]["iterations"] = json!(3_000_000);
        let mut ids = Vec::new();
        for i in 0..32u64 {
            let mut k = ks.clone();
            k["area"]["offset"] = json!((32768 + i * 131072).to_string());
            v["keyslots"][i.to_string()] = k;
            ids.push(json!(i.to_string()));
        }
        v["digests"]["0"]["keyslots"] = json!(ids);
    })
}

/// Argon2id at 4 GiB (cryptsetup's ceiling), time 4, 4 lanes.
fn memory_image() -> Vec<u8> {
    hostile(|v| {
        v["keyslots"]["0"]["kdf"] = json!({"type": "argon2id", "time": 4,
            "memory": 4u64 << 20, "cpus": 4, "salt": v["keyslots"]["0"]["kdf"]["salt"].clone()})
    })
}

fn write_secret(dir: &Path, name: &str, pass: &str) {
    let text = secret_yaml(
        NS,
        name,
        pass,
        "  CRYPTO_PBKDF: pbkdf2\n  CRYPTO_PBKDF_FORCE_ITERATIONS: \"1000\"\n",
    );
    fs::write(dir.join(format!("{name}.yaml")), text).unwrap();
}

/// A store with `good.img` and the three hostile images, Secrets `a` and `b`.
fn node(dir: &Path) -> (std::path::PathBuf, std::path::PathBuf, std::path::PathBuf) {
    let store = dir.join("store");
    let secrets = dir.join("secrets");
    fs::create_dir_all(&store).unwrap();
    fs::create_dir_all(&secrets).unwrap();
    fs::write(store.join("good.img"), noise(1, 4 << 20)).unwrap();
    fs::write(store.join("iter.img"), iterations_image()).unwrap();
    fs::write(store.join("many.img"), many_keyslots_image()).unwrap();
    fs::write(store.join("mem.img"), memory_image()).unwrap();
    write_secret(&secrets, "a", "passphrase a");
    write_secret(&secrets, "b", "passphrase b");
    let token = dir.join("token");
    fs::write(&token, TOKEN).unwrap();
    (store, secrets, token)
}

/// `bifs serve` of [`node`]'s store with its token, `--public-read` and `extra` flags.
fn serve_node(dir: &Path, extra: &[&str]) -> Serve {
    let (store, secrets, token) = node(dir);
    let mut args: Vec<&std::ffi::OsStr> = vec![
        "--store".as_ref(),
        store.as_os_str(),
        "--secrets".as_ref(),
        secrets.as_os_str(),
        "--token-file".as_ref(),
        token.as_os_str(),
        "--public-read".as_ref(),
    ];
    args.extend(extra.iter().map(|a| std::ffi::OsStr::new(*a)));
    Serve::start(&args)
}

fn metric(srv: &Serve, name: &str) -> f64 {
    let r = curl(&["-s"], &format!("{}/metrics", srv.url));
    r.text()
        .lines()
        .find_map(|l| l.strip_prefix(name).and_then(|v| v.trim().parse().ok()))
        .unwrap_or(0.0)
}

#[test]
fn hostile_images_cost_what_the_limits_allow_and_never_slow_other_views() {
    full_tier_only!("curl");
    let d = tempfile::tempdir().unwrap();
    let srv = serve_node(
        d.path(),
        &[
            "--max-kdf-jobs=2",
            "--max-kdf-queue=1",
            "--max-kdf-memory=1048576",
        ],
    );
    // Ready once good.img's encrypt views are prepared: the hostile images cost more than the
    // background budget and are left for requests.
    let ready = srv.wait_ready(Duration::from_secs(60));
    assert_eq!(ready.code, 200, "{}", ready.text());
    assert!(
        ready
            .text()
            .contains("not tried in the background (an unlock would cost more than 4 default keyslots; tried on request): 6"),
        "{}",
        ready.text()
    );
    let auth = format!("Authorization: Bearer {TOKEN}");
    let view = |p: &str| format!("{}/views/{p}", srv.url);

    // 4 GiB of Argon2 is above --max-kdf-memory: refused at once, before any work.
    let r = curl(
        &["-s", "-H", &auth],
        &view(&format!("decrypt/{NS}/a/mem.img")),
    );
    eprintln!("mem.img: {} in {:?}: {}", r.code, r.took, r.text().trim());
    assert_eq!(r.code, 403, "{}", r.text());
    assert!(r.text().contains("memory=4194304"), "{}", r.text());
    assert!(r.took < Duration::from_secs(5), "took {:?}", r.took);

    // Three clients on hostile pairs, each leaving after 4 s: two derivations run (the jobs),
    // one request waits in the queue of one.
    let clients: Vec<_> = [("a", "iter.img"), ("a", "many.img"), ("b", "many.img")]
        .into_iter()
        .map(|(s, img)| {
            let url = view(&format!("decrypt/{NS}/{s}/{img}"));
            let auth = auth.clone();
            let c = std::thread::spawn(move || curl(&["-s", "--max-time", "4", "-H", &auth], &url));
            std::thread::sleep(Duration::from_millis(300));
            c
        })
        .collect();
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(metric(&srv, "bifs_key_derivations_running"), 2.0);
    // A fourth pair finds the queue full: 503, told when to come back.
    let busy = curl(
        &["-s", "-H", &auth],
        &view(&format!("decrypt/{NS}/b/iter.img")),
    );
    assert_eq!(busy.code, 503, "{}", busy.text());
    assert_eq!(busy.header("Retry-After").as_deref(), Some("10"));
    assert!(busy.took < Duration::from_secs(5), "took {:?}", busy.took);

    // Meanwhile everything else answers at once.
    for (what, url, want) in [
        ("ignore/good.img", view("ignore/good.img"), 4 << 20),
        (
            "encrypt/a/good.img",
            view(&format!("encrypt/{NS}/a/good.img")),
            (4 << 20) + (16 << 20),
        ),
    ] {
        // The token: ignore/ of an image that is not LUKS is plaintext.
        let r = curl(&["-s", "-H", &auth], &url);
        eprintln!(
            "{what} during the hostile derivations: {} in {:?}",
            r.code, r.took
        );
        assert_eq!((r.code, r.body.len()), (200, want), "{what}");
        assert!(r.took < Duration::from_secs(3), "{what} took {:?}", r.took);
    }
    let r = curl(
        &["-s", "-I", "-H", &auth],
        &view(&format!("decrypt/{NS}/a/many.img")),
    );
    eprintln!("HEAD of a pair being derived: {} in {:?}", r.code, r.took);
    assert_eq!(r.code, 200);
    assert!(r.took < Duration::from_secs(3), "HEAD took {:?}", r.took);
    let r = curl(&["-s"], &format!("{}/readyz", srv.url));
    eprintln!(
        "/readyz during the hostile derivations: {} in {:?}",
        r.code, r.took
    );
    assert_eq!(r.code, 200, "{}", r.text());
    assert!(r.took < Duration::from_secs(3), "/readyz took {:?}", r.took);

    // The clients give up at 4 s: the 32-keyslot unlock stops before its next keyslot, the
    // queued one never starts.
    for c in clients {
        let r = c.join().unwrap();
        assert_eq!(r.code, 0, "a hostile pair was answered: {}", r.text());
    }
    assert!(
        srv.wait_log("unlock cancelled", Duration::from_secs(15)),
        "the 32-keyslot unlock went on after its client left"
    );
    let end = Instant::now() + Duration::from_secs(15);
    while metric(&srv, "bifs_key_derivations_total{outcome=\"cancelled\"}") < 2.0 {
        assert!(
            Instant::now() < end,
            "fewer than 2 derivations were cancelled"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn sigterm_stops_the_server_while_a_header_is_being_prepared() {
    full_tier_only!("curl");
    let d = tempfile::tempdir().unwrap();
    let store = d.path().join("store");
    let secrets = d.path().join("secrets");
    fs::create_dir_all(&store).unwrap();
    fs::create_dir_all(&secrets).unwrap();
    fs::write(store.join("disk.img"), noise(5, 1 << 20)).unwrap();
    // Longhorn's documented Secret: Argon2i at bifs's fixed 1 GiB, 4 passes.
    let docs = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/longhorn/longhorn-crypto.yaml");
    fs::copy(&docs, secrets.join("longhorn-crypto.yaml")).unwrap();
    let mut srv = Serve::start(&[
        "--store".as_ref(),
        store.as_os_str(),
        "--secrets".as_ref(),
        secrets.as_os_str(),
    ]);
    assert!(srv.wait_log(
        "SHA-512 of a stored image computed",
        Duration::from_secs(30)
    ));
    std::thread::sleep(Duration::from_millis(500));
    let r = curl(&["-s"], &format!("{}/readyz", srv.url));
    assert_eq!(r.code, 503, "{}", r.text());
    assert!(
        r.text()
            .contains("encrypt views: 0 ready, 0 refused, 1 preparing"),
        "{}",
        r.text()
    );
    assert!(
        !srv.log().contains("encrypt view prepared"),
        "the derivation ended already"
    );
    // A download waiting for that header is answered when the server stops, not left hanging.
    let url = format!("{}/views/encrypt/{NS}/longhorn-crypto/disk.img", srv.url);
    let waiting = std::thread::spawn(move || curl(&["-s"], &url));
    std::thread::sleep(Duration::from_millis(500));
    let start = Instant::now();
    crate::support::signal(srv.child.id(), rustix::process::Signal::TERM);
    let status = loop {
        if let Some(s) = srv.child.try_wait().unwrap() {
            break s;
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "still running 10 s after SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    let took = start.elapsed();
    eprintln!("SIGTERM during an Argon2 derivation: exited ({status}) after {took:?}");
    assert!(status.success(), "{status}");
    assert!(took < Duration::from_secs(5), "took {took:?}");
    let r = waiting.join().unwrap();
    assert!(r.code == 503 || r.code == 0, "{} {}", r.code, r.text());
}

#[test]
fn a_longhorn_disk_bifs_cannot_enter_is_a_loud_warning() {
    full_tier_only!("root (setpriv to another uid), curl");
    let d = tempfile::tempdir().unwrap();
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(d.path(), fs::Permissions::from_mode(0o755)).unwrap();
    // A disk as backing-image-manager leaves it: directories made with mode 0666 under the
    // usual umask 022 (0644, no search bit).
    let disk = d.path().join("disk");
    let dir = disk.join("backing-images/parrot-1a2b3c4d");
    fs::create_dir_all(&dir).unwrap();
    fs::write(dir.join("backing"), noise(7, 1 << 20)).unwrap();
    fs::write(
        disk.join("longhorn-disk.cfg"),
        r#"{"diskName":"d","diskUUID":"u","diskDriver":"","state":"ready"}"#,
    )
    .unwrap();
    for p in [disk.join("backing-images"), dir.clone()] {
        fs::set_permissions(&p, fs::Permissions::from_mode(0o644)).unwrap();
    }
    let state = d.path().join("state");
    fs::create_dir_all(&state).unwrap();
    rustix::fs::chown(
        &state,
        Some(rustix::fs::Uid::from_raw(65534)),
        Some(rustix::fs::Gid::from_raw(65534)),
    )
    .unwrap();
    let srv = Serve::start_with(
        &[
            "setpriv",
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
        ],
        &[
            "--store".as_ref(),
            disk.as_os_str(),
            "--state".as_ref(),
            state.as_os_str(),
        ],
    );
    let r = srv.wait_ready(Duration::from_secs(5));
    eprintln!("/readyz as uid 65534: {} {}", r.code, r.text());
    assert_eq!(r.code, 503);
    assert!(
        r.text().contains("WARNING: cannot read") && r.text().contains("backing-images"),
        "{}",
        r.text()
    );
    // As root the same disk lists its image.
    let root = Serve::start(&[
        "--store".as_ref(),
        disk.as_os_str(),
        "--state".as_ref(),
        d.path().join("state-root").as_os_str(),
    ]);
    let r = root.wait_ready(Duration::from_secs(30));
    assert_eq!(r.code, 200, "{}", r.text());
    let r = curl(&["-s"], &format!("{}/api/v1/backingimages", root.url));
    let list: Value = serde_json::from_slice(&r.body).unwrap();
    let item = &list["items"][0];
    assert_eq!(item["metadata"]["name"], "parrot", "{list}");
    assert_eq!(
        item["metadata"]["annotations"]["bifs/managed-by"], "longhorn",
        "{list}"
    );
}

/// Many requests for one slow view share its one job, but each holds a connection while it
/// waits: past `--max-kdf-jobs` + `--max-kdf-queue` waiting requests, the rest are answered 503
/// at once (and their connections closed), so a crowd on one hostile image cannot fill
/// `--max-connections` and keep every other view out (as `scripts/load.sh` showed: 600 requests
/// on one image held their connections for the whole 50 s wait).
#[test]
fn a_crowd_on_one_slow_view_waits_within_the_budget_and_the_rest_is_refused_at_once() {
    full_tier_only!("curl");
    let d = tempfile::tempdir().unwrap();
    let srv = serve_node(d.path(), &["--max-kdf-jobs=1", "--max-kdf-queue=1"]);
    let ready = srv.wait_ready(Duration::from_secs(60));
    assert_eq!(ready.code, 200, "{}", ready.text());
    let auth = format!("Authorization: Bearer {TOKEN}");
    let url = format!("{}/views/decrypt/{NS}/a/iter.img", srv.url);
    // Eight clients on the same 2^30-iteration unlock, each giving up after 6 s.
    let clients: Vec<_> = (0..8)
        .map(|_| {
            let (url, auth) = (url.clone(), auth.clone());
            std::thread::spawn(move || curl(&["-s", "--max-time", "6", "-H", &auth], &url))
        })
        .collect();
    let results: Vec<_> = clients.into_iter().map(|c| c.join().unwrap()).collect();
    let refused: Vec<_> = results.iter().filter(|r| r.code == 503).collect();
    let waited = results.iter().filter(|r| r.code == 0).count();
    eprintln!(
        "8 clients on one slow view: {} refused, {waited} waited until they left",
        refused.len()
    );
    // jobs (1) + queue (1): two wait, six are refused, each at once and told when to return.
    assert_eq!((refused.len(), waited), (6, 2), "{results:?}");
    for r in refused {
        assert!(
            r.took < Duration::from_secs(3),
            "a refusal took {:?}",
            r.took
        );
        assert_eq!(r.header("Retry-After").as_deref(), Some("10"));
        assert!(r.text().contains("being prepared"), "{}", r.text());
    }
    // The budget is free again once they left: another view answers at once.
    let r = curl(
        &["-s", "-H", &auth],
        &format!("{}/views/ignore/good.img", srv.url),
    );
    assert_eq!((r.code, r.body.len()), (200, 4 << 20));
}
