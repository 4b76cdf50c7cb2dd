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

    // Dropped: a slow upload cut off by the client, then resumed from the server's offset
    // with the id the client chose for it at the start (it never read an answer).
    let id = "client-chosen-id-0001";
    let (code, _) = put(
        &s,
        "resumed",
        &format!("offset=0&size={len}&upload={id}"),
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
        &format!("offset={}&size={len}&upload={id}", have + 512),
        &rest,
        &[],
    );
    assert_eq!(code, 409, "{v}");
    assert_eq!(v["offset"].as_u64(), Some(have));
    let (code, v) = put(
        &s,
        "resumed",
        &format!("offset={have}&size={len}&upload={id}"),
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
    let id = v["upload"].as_str().expect("the upload's id").to_string();
    assert_eq!(id.len(), 32, "{v}");
    let second = s.work().join("second.bin");
    std::fs::write(&second, &data[len / 2..]).expect("second");
    let (code, v) = put(
        &s,
        "twice",
        &format!("offset={}&size={len}&upload={id}", len / 2),
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

fn message(v: &serde_json::Value) -> &str {
    v["message"].as_str().unwrap_or("")
}

/// The bytes a Longhorn disk holds of `name`'s upload (`backing-images/NAME-UUID/backing.tmp`).
fn partial(s: &Server, name: &str) -> Vec<u8> {
    let (_, v) = get(s, &format!("/api/v1/backingimages/{name}"));
    let uuid = v["status"]["uuid"].as_str().expect("the record's uuid");
    std::fs::read(
        s.store()
            .join(format!("backing-images/{name}-{uuid}/backing.tmp")),
    )
    .expect("the partial upload")
}

#[test]
fn an_upload_resumes_only_with_its_id_size_and_checksum() {
    let s = Server::start();
    let a = s.work().join("a.bin");
    let b = s.work().join("b.bin");
    std::fs::write(&a, [b'A'; 512]).expect("a");
    std::fs::write(&b, [b'B'; 512]).expect("b");
    let mut whole = vec![b'A'; 512];
    whole.extend([b'B'; 512]);
    let whole_path = s.work().join("ab.bin");
    std::fs::write(&whole_path, &whole).expect("ab");
    let want = sha512(&whole_path);

    // Client 1 starts with the checksum of the whole; the id is in the answer and a header.
    let headers = s.work().join("headers");
    let h = format!("{}", headers.display());
    let (code, v) = put(
        &s,
        "mix",
        &format!("offset=0&size=1024&checksum={want}"),
        &a,
        &["-D", &h],
    );
    assert_eq!(code, 200, "{v}");
    assert_eq!(v["offset"], 512, "{v}");
    let id = v["upload"].as_str().expect("the upload's id").to_string();
    let head = std::fs::read_to_string(&headers).expect("headers");
    assert!(
        head.to_ascii_lowercase()
            .contains(&format!("bifs-upload-id: {id}")),
        "{head}"
    );
    // GET says where to resume, not the id; neither does the record.
    let (code, v) = get(&s, "/api/v1/uploads/mix");
    assert_eq!(code, 200);
    assert_eq!(v, serde_json::json!({ "offset": 512 }));
    let (_, rec) = get(&s, "/api/v1/backingimages/mix");
    assert!(!rec.to_string().contains(&id), "{rec}");

    // Client 2 continues at the server's offset without the id, or with another one: 409,
    // and the partial is client 1's bytes still.
    for query in [
        "offset=512&size=1024".to_string(),
        "offset=512&size=1024&upload=someone-elses-id-123".to_string(),
    ] {
        let (code, v) = put(&s, "mix", &query, &b, &[]);
        assert_eq!(code, 409, "{query}: {v}");
        assert!(
            message(&v).contains("an upload of mix from another client is in progress"),
            "{v}"
        );
        assert!(v.get("offset").is_none(), "{v}");
    }
    assert_eq!(partial(&s, "mix"), vec![b'A'; 512]);
    // The right id with another size or checksum: 409 too.
    let (code, v) = put(
        &s,
        "mix",
        &format!("offset=512&size=2048&upload={id}"),
        &b,
        &[],
    );
    assert_eq!(code, 409, "{v}");
    assert!(message(&v).contains("started with size=1024"), "{v}");
    let zeros = "0".repeat(128);
    let (code, v) = put(
        &s,
        "mix",
        &format!("offset=512&size=1024&upload={id}&checksum={zeros}"),
        &b,
        &[],
    );
    assert_eq!(code, 409, "{v}");
    assert!(message(&v).contains("checksum"), "{v}");
    assert_eq!(partial(&s, "mix"), vec![b'A'; 512]);
    // The right id, no checksum repeated: complete, verified against the start's checksum.
    let (code, v) = put(
        &s,
        "mix",
        &format!("offset=512&size=1024&upload={id}"),
        &b,
        &[],
    );
    assert_eq!(code, 201, "{v}");
    assert_eq!(disk_state(&v), "ready");
    assert_eq!(v["status"]["checksum"], want.as_str());
    assert_eq!(v["spec"]["checksum"], want.as_str());

    // A start whose checksum the bytes do not match fails at the end, though the last part
    // gave none.
    let (code, v) = put(
        &s,
        "bad",
        &format!("offset=0&size=1024&checksum={zeros}"),
        &a,
        &[],
    );
    assert_eq!(code, 200, "{v}");
    let id = v["upload"].as_str().expect("the upload's id").to_string();
    let (code, v) = put(
        &s,
        "bad",
        &format!("offset=512&size=1024&upload={id}"),
        &b,
        &[],
    );
    assert_eq!(code, 422, "{v}");
    assert!(
        message(&v).contains("doesn't match the file actual checksum"),
        "{v}"
    );
    assert_eq!(state(&s, "bad"), "failed");
    // A resume of it now: nothing to resume, start at 0.
    let (code, v) = put(
        &s,
        "bad",
        &format!("offset=512&size=1024&upload={id}"),
        &b,
        &[],
    );
    assert_eq!(code, 409, "{v}");
    assert_eq!(v["offset"], 0, "{v}");

    // An id the client chooses must look like one.
    let (code, v) = put(&s, "short", "offset=0&size=512&upload=abc", &a, &[]);
    assert_eq!(code, 422, "{v}");
    assert!(message(&v).contains("upload id"), "{v}");
}

#[test]
fn an_upload_never_takes_over_a_longhorn_managed_name() {
    let s = Server::start();
    // backing-image-manager's image: a directory and its file, no record of bifs's.
    let dir = s.store().join("backing-images/parrot-1a2b3c4d");
    std::fs::create_dir_all(&dir).expect("image dir");
    let theirs = b"LONGHORN-PARROT!".repeat(4096);
    std::fs::write(dir.join("backing"), &theirs).expect("backing");
    let x = s.work().join("x.bin");
    std::fs::write(&x, vec![b'X'; theirs.len()]).expect("x");
    let (code, v) = put(
        &s,
        "parrot",
        &format!("offset=0&size={}", theirs.len()),
        &x,
        &[],
    );
    assert_eq!(code, 409, "{v}");
    assert!(
        message(&v).contains("managed by Longhorn") && message(&v).contains("parrot"),
        "{v}"
    );
    assert_eq!(std::fs::read(dir.join("backing")).expect("backing"), theirs);
    let names: Vec<String> = std::fs::read_dir(s.store().join("backing-images"))
        .expect("backing-images")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names, ["parrot-1a2b3c4d"]);
    assert!(!s.store().join(".bifs/records/parrot.json").exists());
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
