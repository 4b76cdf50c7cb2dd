//! `/metrics` of a real `bifs serve`, scraped with curl after real work: backing images
//! applied through the API (created and refused), an encrypt view downloaded (one header
//! made), a decrypt view refused twice (one unlock tried). The scrape is checked for the
//! counts, the histogram's shape, the states, and for what it must never hold.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use crate::support::server::{image_file, Server, PASSPHRASE, SECRET_NAME, SECRET_NS, TOKEN};

/// `curl` of `url` (with the token when `auth`): (HTTP status, body).
fn curl(url: &str, auth: bool, extra: &[&str]) -> (u16, String) {
    let bearer = format!("Authorization: Bearer {TOKEN}");
    let mut args = extra.to_vec();
    if auth {
        args.extend(["-H", bearer.as_str()]);
    }
    args.push(url);
    crate::support::server::curl(&args)
}

fn post(s: &Server, manifest: &str) -> u16 {
    let url = format!("{}/api/v1/backingimages", s.url);
    curl(&url, true, &["-X", "POST", "--data-binary", manifest]).0
}

fn create(s: &mut Server, name: &str, file: &Path) -> u16 {
    let manifest = s.download_yaml(name, file);
    post(s, &manifest)
}

fn wait_ready(s: &Server, name: &str) {
    let start = Instant::now();
    loop {
        let (_, body) = curl(&format!("{}/api/v1/backingimages/{name}", s.url), true, &[]);
        let v: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
        let states: Vec<&str> = v["status"]["diskFileStatusMap"]
            .as_object()
            .map(|m| m.values().filter_map(|f| f["state"].as_str()).collect())
            .unwrap_or_default();
        if states == ["ready"] {
            return;
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "{name} is not ready: {body}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The samples of a scrape, `series -> value`, after checking every line is a comment or a
/// sample of the text format.
fn samples(scrape: &str) -> BTreeMap<String, f64> {
    let mut out = BTreeMap::new();
    for line in scrape.lines() {
        if line.starts_with("# HELP ") || line.starts_with("# TYPE ") {
            continue;
        }
        let (series, value) = line
            .rsplit_once(' ')
            .unwrap_or_else(|| panic!("not a sample: {line:?}"));
        let value: f64 = value
            .parse()
            .unwrap_or_else(|_| panic!("not a number: {line:?}"));
        assert!(
            out.insert(series.to_string(), value).is_none(),
            "{series} twice"
        );
    }
    out
}

fn value(s: &BTreeMap<String, f64>, series: &str) -> f64 {
    *s.get(series)
        .unwrap_or_else(|| panic!("no {series} in the scrape: {s:#?}"))
}

#[test]
fn metrics_count_headers_unlock_failures_applies_and_states() {
    full_tier_only!("cryptsetup, curl");
    crate::support::common::require_tools();
    let mut s = Server::start();
    let metrics = format!("{}/metrics", s.url);

    // Image names are in the labels: /metrics needs what a listing needs (the token here).
    assert_eq!(curl(&metrics, false, &[]).0, 401);

    // Two backing images (a plain one, a LUKS2 one whose passphrase is not the Secret's) and
    // a refused third (a clone of an image the store does not have).
    let plain = s.work().join("plain.img");
    image_file(&plain, 1 << 20, 3);
    let vault = s.work().join("vault.img");
    image_file(&vault, 18 << 20, 4);
    crate::support::common::luks2_format_cheap(&vault, b"not the Secret's passphrase");
    for (name, file) in [("base", &plain), ("vault", &vault)] {
        let code = create(&mut s, name, file);
        assert!(code == 201 || code == 202, "create {name}: {code}");
        wait_ready(&s, name);
    }
    let clone = serde_json::json!({
        "apiVersion": "longhorn.io/v1beta2", "kind": "BackingImage",
        "metadata": {"name": "nothing"},
        "spec": {"sourceType": "clone", "sourceParameters": {
            "backing-image": "absent", "encryption": "encrypt",
            "secret": SECRET_NAME, "secret-namespace": SECRET_NS}}
    });
    let code = post(&s, &clone.to_string());
    assert!((400..500).contains(&code), "a clone of nothing: {code}");

    // The encrypt view twice: one header, made and persisted at the first open.
    let enc = format!("{}/views/encrypt/{SECRET_NS}/{SECRET_NAME}/base", s.url);
    for _ in 0..2 {
        let (code, _) = curl(&enc, true, &["-o", "/dev/null"]);
        assert_eq!(code, 200);
    }
    // The decrypt view twice: refused both times, the passphrase tried once.
    let dec = format!("{}/views/decrypt/{SECRET_NS}/{SECRET_NAME}/vault", s.url);
    for _ in 0..2 {
        let (code, body) = curl(&dec, true, &[]);
        assert!(
            (400..500).contains(&code),
            "decrypt with the wrong passphrase: {code} {body}"
        );
    }

    let (code, scrape) = curl(&metrics, true, &[]);
    assert_eq!(code, 200, "{scrape}");
    let m = samples(&scrape);
    assert_eq!(
        value(&m, "bifs_encrypt_headers_created_total{image=\"base\"}"),
        1.0
    );
    assert_eq!(
        value(
            &m,
            "bifs_unlock_failures_total{mode=\"decrypt\",image=\"vault\"}"
        ),
        1.0
    );
    assert!(!m
        .keys()
        .any(|k| k.starts_with("bifs_unlock_failures_total{mode=\"encrypt\"")));
    assert_eq!(
        value(&m, "bifs_apply_duration_seconds_count{outcome=\"created\"}"),
        2.0
    );
    assert_eq!(
        value(&m, "bifs_apply_duration_seconds_count{outcome=\"refused\"}"),
        1.0
    );
    // A histogram: cumulative buckets ending in +Inf = count, and a sum of real durations.
    let buckets: Vec<f64> = m
        .iter()
        .filter(|(k, _)| k.starts_with("bifs_apply_duration_seconds_bucket{outcome=\"created\""))
        .map(|(_, v)| *v)
        .collect();
    assert!(buckets.len() > 2, "{scrape}");
    assert!(buckets.iter().all(|b| *b <= 2.0));
    assert_eq!(
        value(
            &m,
            "bifs_apply_duration_seconds_bucket{outcome=\"created\",le=\"+Inf\"}"
        ),
        2.0
    );
    assert!(value(&m, "bifs_apply_duration_seconds_sum{outcome=\"created\"}") > 0.0);
    // The states: two ready, no image left in a transient state.
    assert_eq!(value(&m, "bifs_backing_images{state=\"ready\"}"), 2.0);
    for st in ["pending", "starting", "in-progress", "failed"] {
        assert_eq!(
            value(&m, &format!("bifs_backing_images{{state=\"{st}\"}}")),
            0.0,
            "{st}"
        );
    }
    // The HTTP counters of the same scrape.
    assert!(
        value(&m, "bifs_http_view_bytes_read_total{mode=\"encrypt\"}") >= 2.0 * (17 << 20) as f64
    );
    for never in [
        PASSPHRASE,
        "not the Secret's passphrase",
        TOKEN,
        SECRET_NAME,
    ] {
        assert!(!scrape.contains(never), "{never:?} in /metrics:\n{scrape}");
    }
}

/// `/readyz` without the token says how much is left, as counts; which Secret is over the
/// limits (and any path) only to a request that may read, and in the log.
#[test]
fn readyz_shows_details_only_to_readers() {
    // An Argon2 Secret asking 64 MiB on a server capped at 32 MiB: its encrypt views can never
    // be made, a warning naming it.
    let argon =
        "apiVersion: v1\nkind: Secret\nmetadata:\n  name: greedy-secret\n  namespace: tenant-ns\n\
                 type: Opaque\nstringData:\n  CRYPTO_KEY_VALUE: \"x\"\n  CRYPTO_PBKDF: argon2id\n\
                 \x20 CRYPTO_PBKDF_MEMORY: \"65536\"\n  CRYPTO_PBKDF_FORCE_ITERATIONS: \"4\"\n";
    let img = vec![5u8; 1 << 20];
    let s = Server::start_with(crate::support::server::Options {
        flat: true,
        files: &[("disk.img", img.as_slice())],
        extra_secret: Some(argon),
        args: &["--max-kdf-memory", "32768"],
        ..Default::default()
    });
    let url = format!("{}/readyz", s.url);
    let start = Instant::now();
    let mut anon = (0, String::new());
    while start.elapsed() < Duration::from_secs(30) {
        anon = curl(&url, false, &[]);
        if anon.1.contains("WARNING") {
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(anon.0, 503, "{}", anon.1);
    assert!(anon.1.contains("WARNING: 1 problems"), "{}", anon.1);
    assert!(anon.1.contains("encrypt views:"), "counts stay: {}", anon.1);
    for secret in ["greedy-secret", "tenant-ns", SECRET_NAME, "/"] {
        assert!(
            !anon.1.contains(secret),
            "{secret:?} without the token: {}",
            anon.1
        );
    }
    let (code, full) = curl(&url, true, &[]);
    assert_eq!(code, 503);
    assert!(
        full.contains("WARNING: ") && full.contains("greedy-secret"),
        "{full}"
    );
    assert!(s.log().contains("greedy-secret"), "the log has the details");
}
