//! REDbot, the HTTP linter, against a real `bifs serve` (issue 22): the ignore, raw, encrypt
//! and decrypt views, the `.sha512` of each, the page, an asset and the API's list draw no
//! WARN or BAD note. REDbot sends the conditional (If-None-Match, If-Modified-Since) and Range
//! requests a cache would, and checks the answers against RFC 9110/9111.
//!
//! The server has a token and `--public-read`, as a node does: ignore/ and encrypt/ views and
//! the list are open, raw/ and decrypt/ are reached through signed URLs (what Longhorn gets),
//! since REDbot sends no Authorization header.

use std::path::Path;
use std::process::{Command, Stdio};

use crate::support::server::{
    curl, image_file, Options, Server, PASSPHRASE, SECRET_NAME, SECRET_NS, TOKEN,
};

/// Where scripts/setup.sh installs REDbot (a venv), else the one on PATH.
fn redbot() -> String {
    let venv = Path::new("/opt/redbot/bin/redbot");
    if venv.exists() {
        venv.display().to_string()
    } else {
        "redbot".to_string()
    }
}

/// REDbot's notes on `url` as (level, id, summary), from its HAR output (`_red_messages`).
fn notes(url: &str) -> Vec<(String, String, String)> {
    let out = Command::new(redbot())
        .args(["-o", "har", url])
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("redbot not runnable ({e}): bash scripts/setup.sh installs it"));
    assert!(
        out.status.success(),
        "redbot {url}: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let har: serde_json::Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("redbot {url}: not HAR JSON ({e})"));
    let entries = har["log"]["entries"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    assert!(!entries.is_empty(), "redbot {url}: no entry in its HAR");
    let mut v = Vec::new();
    for e in entries {
        for m in e["_red_messages"].as_array().cloned().unwrap_or_default() {
            let s = |k: &str| m[k].as_str().unwrap_or("?").to_string();
            v.push((s("level"), s("note_id"), s("summary")));
        }
    }
    assert!(
        !v.is_empty(),
        "redbot {url}: no notes (did it reach the server?)"
    );
    v
}

/// A signed path for `path` (a view), from the API, for the token holder.
fn signed(s: &Server, path: &str) -> String {
    let auth = format!("Authorization: Bearer {TOKEN}");
    let body = format!("{{\"path\":\"{path}\"}}");
    let url = format!("{}/api/v1/sign", s.url);
    let (code, text) = curl(&[
        "-X",
        "POST",
        "-H",
        &auth,
        "-H",
        "Content-Type: application/json",
        "--data-binary",
        &body,
        &url,
    ]);
    assert_eq!(code, 200, "sign {path}: {text}");
    let v: serde_json::Value = serde_json::from_str(&text).expect("sign: JSON");
    v["path"].as_str().expect("sign: path").to_string()
}

#[test]
fn no_warn_or_bad_note_on_any_answer() {
    full_tier_only!("redbot (PyPI; scripts/setup.sh installs it into /opt/redbot)");
    let work = tempfile::tempdir().unwrap();
    let store = work.path().join("store");
    std::fs::create_dir_all(&store).unwrap();
    image_file(&store.join("disk.img"), 3 << 20, 7);
    // A LUKS2 image of the server's Secret, for the decrypt view.
    let secret = work.path().join("secret.yaml");
    std::fs::write(
        &secret,
        format!(
            "apiVersion: v1\nkind: Secret\nmetadata: {{name: {SECRET_NAME}, namespace: {SECRET_NS}}}\n\
             stringData:\n  CRYPTO_KEY_VALUE: \"{PASSPHRASE}\"\n  CRYPTO_KEY_CIPHER: aes-xts-plain64\n\
             \x20 CRYPTO_KEY_HASH: sha256\n  CRYPTO_KEY_SIZE: \"256\"\n  CRYPTO_PBKDF: pbkdf2\n\
             \x20 CRYPTO_PBKDF_FORCE_ITERATIONS: \"1000\"\n"
        ),
    )
    .unwrap();
    let out = Command::new(crate::support::BIFS)
        .arg("encrypt")
        .arg("--secret")
        .arg(&secret)
        .arg(store.join("disk.img"))
        .arg(store.join("disk.luks"))
        .output()
        .expect("bifs encrypt");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let s = Server::start_with(Options {
        flat: true,
        store: Some(&store),
        args: &["--public-read"],
        ..Options::default()
    });
    let keyed = format!("{SECRET_NS}/{SECRET_NAME}");
    let mut paths = Vec::new();
    // Public under --public-read: ciphertext (ignore/ of a LUKS image, encrypt/).
    for view in [
        "/views/ignore/disk.luks".to_string(),
        format!("/views/encrypt/{keyed}/disk.img"),
    ] {
        paths.push(format!("{view}.sha512"));
        paths.push(view);
    }
    // Plaintext, by signed URL: ignore/ of a plain image, raw/, decrypt/.
    for view in [
        "/views/ignore/disk.img".to_string(),
        "/views/raw/disk.img".to_string(),
        format!("/views/decrypt/{keyed}/disk.luks"),
    ] {
        paths.push(signed(&s, &format!("{view}.sha512")));
        paths.push(signed(&s, &view));
    }
    paths.extend(["/", "/app.js", "/style.css", "/api/v1/backingimages"].map(String::from));

    let mut failures = Vec::new();
    for p in &paths {
        let url = format!("{}{p}", s.url);
        let all = notes(&url);
        // That REDbot did check what matters here: conditional requests everywhere, and If-Modified-Since
        // and Range on the views themselves (the answers that carry Last-Modified).
        let view =
            p.starts_with("/views/") && !p.split('?').next().unwrap_or(p).ends_with(".sha512");
        let mut want = vec!["INM_304"];
        if view {
            want.extend(["IMS_304", "RANGE_CORRECT"]);
        }
        for id in want {
            if !all.iter().any(|(_, n, _)| n == id) {
                failures.push(format!(
                    "{p}: no {id} note (REDbot did not see that check pass)"
                ));
            }
        }
        let bad: Vec<_> = all
            .iter()
            .filter(|(level, _, _)| level == "WARN" || level == "BAD")
            .collect();
        if !bad.is_empty() {
            let lines: Vec<String> = all
                .iter()
                .map(|(l, id, summary)| format!("    {l} {id}: {summary}"))
                .collect();
            failures.push(format!("{p}:\n{}", lines.join("\n")));
        }
    }
    assert!(
        failures.is_empty(),
        "REDbot found WARN or BAD notes:\n{}",
        failures.join("\n")
    );
}
