//! The workflow's JSON API of a real `bifs serve`, driven with curl on 127.0.0.1: list, get,
//! create, delete, the admission messages, the token, the status stream, and uploads (whole,
//! resumed by offset after a dropped connection, refused when not whole sectors).

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::support::server::{curl, image_file, Server, SECRET_NAME, SECRET_NS, TOKEN};

const AUTH: &str = "Authorization: Bearer test-token-0123456789abcdef";

fn get(s: &Server, path: &str) -> (u16, serde_json::Value) {
    let (code, body) = curl(&["-H", AUTH, &format!("{}{path}", s.url)]);
    (
        code,
        serde_json::from_str(&body).unwrap_or(serde_json::Value::Null),
    )
}

fn post(s: &Server, manifest: &str, token: bool) -> (u16, serde_json::Value) {
    let mut args = vec!["-X", "POST", "--data-binary", manifest];
    if token {
        args.extend(["-H", AUTH]);
    }
    let url = format!("{}/api/v1/backingimages", s.url);
    args.push(&url);
    let (code, body) = curl(&args);
    (
        code,
        serde_json::from_str(&body).unwrap_or(serde_json::Value::Null),
    )
}

fn state(s: &Server, name: &str) -> String {
    let (_, v) = get(s, &format!("/api/v1/backingimages/{name}"));
    disk_state(&v)
}

fn wait_state(s: &Server, name: &str, want: &str) {
    let start = Instant::now();
    loop {
        let st = state(s, name);
        if st == want {
            return;
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "{name} stayed {st:?}, expected {want}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn sha512(path: &Path) -> String {
    let out = Command::new("sha512sum")
        .arg(path)
        .output()
        .expect("sha512sum");
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap_or("")
        .to_string()
}

fn clone_json(name: &str, source: &str, encryption: &str) -> String {
    serde_json::json!({
        "apiVersion": "longhorn.io/v1beta2", "kind": "BackingImage",
        "metadata": {"name": name},
        "spec": {"sourceType": "clone", "sourceParameters": {
            "backing-image": source, "encryption": encryption,
            "secret": SECRET_NAME, "secret-namespace": SECRET_NS}}
    })
    .to_string()
}

#[test]
fn list_get_create_delete_admission_and_the_status_stream() {
    let mut s = Server::start();
    let src = s.work().join("plain.img");
    image_file(&src, 2 << 20, 1);

    // Reads and writes both need the token (no --public-read).
    let (code, _) = curl(&[&format!("{}/api/v1/backingimages", s.url)]);
    assert_eq!(code, 401);
    let base = s.download_yaml("base", &src);
    let (code, _) = post(&s, &base, false);
    assert_eq!(code, 401, "a create without the token must be refused");
    assert!(
        !s.store().join(".bifs/records/base.json").exists(),
        "a refused create left a record"
    );

    // Create (YAML), get, list: the objects of `bifs get -o json`.
    let (code, v) = post(&s, &base, true);
    assert!(code == 201 || code == 202, "create: {code} {v}");
    wait_state(&s, "base", "ready");
    let (code, v) = get(&s, "/api/v1/backingimages/base");
    assert_eq!(code, 200);
    assert_eq!(v["kind"], "BackingImage");
    assert_eq!(v["status"]["checksum"], sha512(&src).as_str());
    assert_eq!(v["status"]["size"], 2 << 20);
    let (_, list) = get(&s, "/api/v1/backingimages");
    assert_eq!(list["kind"], "List");
    assert_eq!(list["items"][0]["metadata"]["name"], "base");
    let (code, _) = get(&s, "/api/v1/backingimages/nope");
    assert_eq!(code, 404);

    // The loaded Secrets by name only.
    let (code, body) = curl(&["-H", AUTH, &format!("{}/api/v1/secrets", s.url)]);
    assert_eq!(code, 200);
    assert!(
        body.contains(SECRET_NAME) && body.contains(SECRET_NS),
        "{body}"
    );
    assert!(
        !body.contains(crate::support::server::PASSPHRASE) && !body.contains("CRYPTO"),
        "Secret values leaked: {body}"
    );

    // Admission rules, with `apply`'s messages: the manifest checks and the webhook's.
    let bad = s
        .download_yaml("bad-url", &src)
        .replace("http://", "ftp://");
    let (code, v) = post(&s, &bad, true);
    assert_eq!(code, 422, "{v}");
    let m = v["message"].as_str().unwrap_or("");
    assert!(
        m.contains("spec.sourceParameters.url") && m.contains("only http://, https:// and file://"),
        "{m}"
    );
    let (code, v) = post(&s, &clone_json("base-dec", "base", "decrypt"), true);
    assert_eq!(code, 422, "{v}");
    let m = v["message"].as_str().unwrap_or("");
    assert!(
        m.contains("spec.sourceParameters.encryption") && m.contains("already decrypted"),
        "{m}"
    );

    // The status stream: an event without the image, then one with it ready.
    let events = s.work().join("events.txt");
    let mut sse = Command::new("curl")
        .args(["-sS", "-N", "-H", AUTH, "-o"])
        .arg(&events)
        .arg(format!("{}/api/v1/events", s.url))
        .stdin(Stdio::null())
        .spawn()
        .expect("curl");
    std::thread::sleep(Duration::from_millis(700));
    let (code, v) = post(&s, &clone_json("base-enc", "base", "encrypt"), true);
    assert!(code == 201 || code == 202, "encrypt clone: {code} {v}");
    wait_state(&s, "base-enc", "ready");
    std::thread::sleep(Duration::from_millis(900));
    let _ = sse.kill();
    let _ = sse.wait();
    let text = std::fs::read_to_string(&events).unwrap_or_default();
    let lists: Vec<serde_json::Value> = text
        .lines()
        .filter_map(|l| l.strip_prefix("data:"))
        .filter_map(|d| serde_json::from_str(d.trim()).ok())
        .collect();
    let has = |l: &serde_json::Value, state: Option<&str>| {
        l["items"].as_array().is_some_and(|items| {
            items.iter().any(|i| {
                i["metadata"]["name"] == "base-enc" && state.is_none_or(|st| disk_state(i) == st)
            })
        })
    };
    assert!(
        lists.first().is_some_and(|l| !has(l, None)),
        "the first event should predate base-enc:\n{text}"
    );
    assert!(
        lists.iter().any(|l| has(l, Some("ready"))),
        "no event shows base-enc ready:\n{text}"
    );
    let (_, v) = get(&s, "/api/v1/backingimages/base-enc");
    assert_eq!(v["spec"]["secret"], SECRET_NAME);

    // Delete: token, then gone (record and directory).
    let del = format!("{}/api/v1/backingimages/base-enc", s.url);
    let (code, _) = curl(&["-X", "DELETE", &del]);
    assert_eq!(code, 401);
    let (code, body) = curl(&["-X", "DELETE", "-H", AUTH, &del]);
    assert_eq!(code, 200, "{body}");
    let (code, _) = get(&s, "/api/v1/backingimages/base-enc");
    assert_eq!(code, 404);
    let left: Vec<_> = std::fs::read_dir(s.store().join("backing-images"))
        .expect("backing-images")
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().to_string())
        .collect();
    assert!(left.iter().all(|n| !n.starts_with("base-enc-")), "{left:?}");
}

fn put(
    s: &Server,
    name: &str,
    query: &str,
    body: &Path,
    extra: &[&str],
) -> (u16, serde_json::Value) {
    let url = format!("{}/api/v1/uploads/{name}?{query}", s.url);
    let mut args = vec![
        "-X",
        "PUT",
        "-H",
        AUTH,
        "-H",
        "Content-Type: application/octet-stream",
    ];
    args.extend(extra);
    let b = format!("@{}", body.display());
    args.extend(["--data-binary", &b, &url]);
    let (code, text) = curl(&args);
    (
        code,
        serde_json::from_str(&text).unwrap_or(serde_json::Value::Null),
    )
}

#[test]
fn uploads_whole_resumed_and_refused() {
    let s = Server::start();
    let len: usize = 3 << 20;
    let img = s.work().join("up.img");
    image_file(&img, len, 7);
    let want = sha512(&img);

    // Not whole sectors: refused before a byte is kept.
    let odd = s.work().join("odd.img");
    image_file(&odd, 1000, 3);
    let (code, v) = put(&s, "odd", "offset=0&size=1000", &odd, &[]);
    assert_eq!(code, 422, "{v}");
    assert!(
        v["message"]
            .as_str()
            .unwrap_or("")
            .contains("not a multiple of 512"),
        "{v}"
    );
    assert!(!s.store().join(".bifs/uploads/odd.part").exists());
    let (code, _) = get(&s, "/api/v1/backingimages/odd");
    assert_eq!(code, 404);

    // Whole, in one request, with the expected checksum.
    let (code, v) = put(
        &s,
        "whole",
        &format!("offset=0&size={len}&checksum={want}"),
        &img,
        &[],
    );
    assert_eq!(code, 201, "{v}");
    assert_eq!(disk_state(&v), "ready");
    assert_eq!(v["status"]["checksum"], want.as_str());

    // The fields of Longhorn's create dialog travel in the query and stay in the spec, as a
    // POST keeps them; Data Engine v2 is refused as Longhorn's webhook refuses it.
    let (code, v) = put(
        &s,
        "tagged",
        &format!("offset=0&size={len}&minNumberOfCopies=2&dataEngine=v1&nodeSelector=storage&diskSelector=ssd,fast"),
        &img,
        &[],
    );
    assert_eq!(code, 201, "{v}");
    assert_eq!(v["spec"]["minNumberOfCopies"], 2, "{v}");
    assert_eq!(v["spec"]["dataEngine"], "v1", "{v}");
    assert_eq!(
        v["spec"]["nodeSelector"],
        serde_json::json!(["storage"]),
        "{v}"
    );
    assert_eq!(
        v["spec"]["diskSelector"],
        serde_json::json!(["ssd", "fast"]),
        "{v}"
    );
    let (code, v) = put(
        &s,
        "engine2",
        &format!("offset=0&size={len}&dataEngine=v2"),
        &img,
        &[],
    );
    assert_eq!(code, 422, "{v}");
    assert!(
        v["message"]
            .as_str()
            .unwrap_or("")
            .contains("v2 backing image is not supported"),
        "{v}"
    );

    // A wrong expected checksum fails with apply's message.
    let zeros = "0".repeat(128);
    let (code, v) = put(
        &s,
        "wrongsum",
        &format!("offset=0&size={len}&checksum={zeros}"),
        &img,
        &[],
    );
    assert_eq!(code, 422, "{v}");
    assert!(
        v["message"]
            .as_str()
            .unwrap_or("")
            .contains("doesn't match the file actual checksum"),
        "{v}"
    );

    // Dropped: a slow upload cut off by the client, then resumed from the server's offset.
    let (code, _) = put(
        &s,
        "resumed",
        &format!("offset=0&size={len}"),
        &img,
        &["--limit-rate", "512K", "--max-time", "2"],
    );
    assert!(
        code < 200,
        "the throttled upload should have been cut off, got {code}"
    );
    std::thread::sleep(Duration::from_millis(300));
    let (code, v) = get(&s, "/api/v1/uploads/resumed");
    assert_eq!(code, 200);
    let have = v["offset"].as_u64().unwrap_or(0);
    assert!(
        have > 0 && (have as usize) < len,
        "offset after the drop: {v}"
    );
    let data = std::fs::read(&img).expect("image");
    let rest = s.work().join("rest.bin");
    std::fs::write(&rest, &data[have as usize..]).expect("rest");
    // An offset past what the server holds is refused with the offset to resume from.
    let (code, v) = put(
        &s,
        "resumed",
        &format!("offset={}&size={len}", have + 512),
        &rest,
        &[],
    );
    assert_eq!(code, 409, "{v}");
    assert_eq!(v["offset"].as_u64(), Some(have));
    let (code, v) = put(
        &s,
        "resumed",
        &format!("offset={have}&size={len}"),
        &rest,
        &[],
    );
    assert_eq!(code, 201, "{v}");
    assert_eq!(v["status"]["checksum"], want.as_str());
    assert!(!s.store().join(".bifs/uploads/resumed.part").exists());

    // In two parts on purpose (a page refresh between them).
    let half = s.work().join("half.bin");
    std::fs::write(&half, &data[..len / 2]).expect("half");
    let (code, v) = put(&s, "twice", &format!("offset=0&size={len}"), &half, &[]);
    assert_eq!(code, 200, "{v}");
    assert_eq!(v["complete"], false);
    assert_eq!(v["offset"].as_u64(), Some(len as u64 / 2));
    let second = s.work().join("second.bin");
    std::fs::write(&second, &data[len / 2..]).expect("second");
    let (code, v) = put(
        &s,
        "twice",
        &format!("offset={}&size={len}", len / 2),
        &second,
        &[],
    );
    assert_eq!(code, 201, "{v}");
    assert_eq!(v["status"]["checksum"], want.as_str());

    // Without the token: refused.
    let (code, _) = curl(&[
        "-X",
        "PUT",
        "--data-binary",
        "x",
        &format!("{}/api/v1/uploads/nope?offset=0&size=512", s.url),
    ]);
    assert_eq!(code, 401);
    let _ = TOKEN;
}

/// The state on the (one) disk, where Longhorn keeps it: `status.diskFileStatusMap[<diskUUID>].state`.
fn disk_state(v: &serde_json::Value) -> String {
    v["status"]["diskFileStatusMap"]
        .as_object()
        .and_then(|m| m.values().next())
        .and_then(|f| f["state"].as_str())
        .unwrap_or("")
        .to_string()
}

/// Without `--token-file` (loopback only, every local request allowed) web pages in the user's
/// browser must not drive the server: a foreign `Host` (DNS rebinding) is 421, a foreign
/// `Origin` (a cross-site request) 403, a manifest POSTed as `text/plain` or as a form (no
/// preflight) 415; none of them creates anything. Loopback names, a same-origin page, a JSON or
/// YAML manifest and an upload body are served as before.
#[test]
fn no_token_refuses_foreign_hosts_origins_and_plain_text_posts() {
    let mut s = Server::start_with(crate::support::server::Options {
        no_token: true,
        ..Default::default()
    });
    let src = s.work().join("plain.img");
    image_file(&src, 1 << 20, 3);
    let yaml = s.download_yaml("base", &src);
    let api = format!("{}/api/v1/backingimages", s.url);
    let port = s.url.rsplit(':').next().unwrap().to_string();
    let own_origin = format!("Origin: http://127.0.0.1:{port}");
    let record = s.store().join(".bifs/records/base.json");

    // The reviewer's request: a cross-site text/plain POST through a rebound name.
    let (code, body) = curl(&[
        "-H",
        "Host: attacker.example",
        "-H",
        "Origin: http://attacker.example",
        "-H",
        "Content-Type: text/plain",
        "--data-binary",
        &yaml,
        &api,
    ]);
    assert_eq!(code, 421, "{body}");
    assert!(
        body.contains("\"attacker.example\"") && body.contains("loopback"),
        "{body}"
    );
    for path in [
        "/api/v1/backingimages",
        "/views/ignore/base",
        "/",
        "/readyz",
    ] {
        let (code, body) = curl(&[
            "-H",
            "Host: attacker.example:80",
            &format!("{}{path}", s.url),
        ]);
        assert_eq!(code, 421, "GET {path} with a foreign Host: {body}");
    }
    // Foreign or opaque origins.
    for origin in [
        "http://attacker.example",
        "null",
        "http://127.0.0.1.attacker.example",
    ] {
        let (code, body) = curl(&[
            "-H",
            &format!("Origin: {origin}"),
            "-H",
            "Content-Type: application/yaml",
            "--data-binary",
            &yaml,
            &api,
        ]);
        assert_eq!(code, 403, "Origin {origin}: {body}");
        assert!(body.contains("cross-site"), "{body}");
    }
    // Types a browser sends cross-site without a preflight; curl's default is a form.
    for ct in [
        &["-H", "Content-Type: text/plain"][..],
        &["-H", "Content-Type: multipart/form-data; boundary=x"][..],
        &[][..],
    ] {
        let mut args = ct.to_vec();
        args.extend(["--data-binary", yaml.as_str(), api.as_str()]);
        let (code, body) = curl(&args);
        assert_eq!(code, 415, "{ct:?}: {body}");
        assert!(body.contains("application/json"), "{body}");
    }
    assert!(!record.exists(), "a refused create left a record");

    // Allowed: loopback names with any port, the page's own origin, JSON or YAML.
    for host in [
        "localhost",
        "LocalHost:9",
        "127.0.0.1",
        "127.1.2.3:80",
        "[::1]:8080",
    ] {
        let (code, _) = curl(&["-H", &format!("Host: {host}"), &api]);
        assert_eq!(code, 200, "Host {host}");
    }
    let (code, page) = curl(&["-H", &own_origin, &format!("{}/", s.url)]);
    assert_eq!(code, 200, "the page: {page}");
    let (code, v) = curl(&[
        "-H",
        &own_origin,
        "-H",
        "Content-Type: application/yaml",
        "--data-binary",
        &yaml,
        &api,
    ]);
    assert!(
        code == 201 || code == 202,
        "YAML create from the page's origin: {code} {v}"
    );
    let json = serde_json::json!({
        "apiVersion": "longhorn.io/v1beta2", "kind": "BackingImage",
        "metadata": {"name": "copy"},
        "spec": {"sourceType": "clone", "sourceParameters": {
            "backing-image": "base", "encryption": "ignore"}}
    })
    .to_string();
    wait_state_no_token(&s, "base");
    let (code, v) = curl(&[
        "-H",
        "Content-Type: application/json; charset=utf-8",
        "--data-binary",
        &json,
        &api,
    ]);
    assert!(code == 201 || code == 202, "JSON create: {code} {v}");
    // An upload's body is bytes (curl -T sends no type): not a manifest, not concerned.
    let part = s.work().join("part");
    std::fs::write(&part, vec![7u8; 512]).unwrap();
    let (code, v) = curl(&[
        "-T",
        part.to_str().unwrap(),
        &format!("{}/api/v1/uploads/up?offset=0&size=512", s.url),
    ]);
    assert_eq!(code, 201, "upload: {v}");
}

fn wait_state_no_token(s: &Server, name: &str) {
    let start = Instant::now();
    loop {
        let (_, body) = curl(&[&format!("{}/api/v1/backingimages/{name}", s.url)]);
        let v: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
        if disk_state(&v) == "ready" {
            return;
        }
        assert!(start.elapsed() < Duration::from_secs(60), "{name}: {body}");
        std::thread::sleep(Duration::from_millis(100));
    }
}
