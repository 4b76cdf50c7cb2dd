//! Stable encrypt views (`bifs/encrypt-view/v1`, docs/security.md) checked with Debian's
//! cryptsetup and the Python AES-XTS oracle: the header is cryptsetup's (luksDump reads its
//! JSON, `open --test-passphrase` opens it), its costs where the Secret sets none are bifs's
//! fixed ones whatever the machine, the data decrypts exactly with the volume key cryptsetup
//! dumps; two servers with separate state serve the same bytes; each Secret gets its own
//! header. (tests/it/longhorn_download.rs checks the same through Longhorn's client.)

use std::ffi::OsStr;
use std::fs;
use std::path::Path;

use sha2::{Digest, Sha512};

use crate::support::common::{
    luks2_json, oracle_decrypt, require_tools, test_passphrase, volume_key,
};
use crate::support::noise;
use crate::support::serve_node::{curl, secret_yaml, Serve};

const NS: &str = "longhorn-system";

/// A source whose size is not a multiple of 4096 (so 512-byte sectors) with a zero run.
fn source() -> Vec<u8> {
    let mut v = noise(11, (3 << 20) + 512);
    v[1 << 20..2 << 20].fill(0);
    v
}

fn serve(store: &Path, secrets: &Path, state: &Path) -> Serve {
    Serve::start(&[
        OsStr::new("--store"),
        store.as_os_str(),
        OsStr::new("--secrets"),
        secrets.as_os_str(),
        OsStr::new("--state"),
        state.as_os_str(),
    ])
}

#[test]
fn stable_headers_are_cryptsetups_with_fixed_costs_and_the_same_on_every_server() {
    full_tier_only!("curl, cryptsetup, python3-cryptography");
    require_tools();
    let d = tempfile::tempdir().unwrap();
    let (store, secrets) = (d.path().join("store"), d.path().join("secrets"));
    fs::create_dir_all(&store).unwrap();
    fs::create_dir_all(&secrets).unwrap();
    let src = source();
    fs::write(store.join("disk.img"), &src).unwrap();
    // No cost keys: bifs's fixed PBKDF2 cost. Forced Argon2 memory only: time and lanes fixed.
    let secret_docs = [
        (
            "pb",
            "pb passphrase",
            "  CRYPTO_KEY_SIZE: \"256\"\n  CRYPTO_KEY_HASH: sha256\n  CRYPTO_PBKDF: pbkdf2\n",
        ),
        (
            "a2",
            "a2 passphrase",
            "  CRYPTO_KEY_SIZE: \"512\"\n  CRYPTO_PBKDF: argon2id\n  CRYPTO_PBKDF_MEMORY: \"65536\"\n",
        ),
    ];
    for (name, pass, extra) in secret_docs {
        fs::write(
            secrets.join(format!("{name}.yaml")),
            secret_yaml(NS, name, pass, extra),
        )
        .unwrap();
    }
    let get = |srv: &Serve, name: &str| -> Vec<u8> {
        let r = curl(
            &["-s"],
            &format!("{}/views/encrypt/{NS}/{name}/disk.img", srv.url),
        );
        assert_eq!(r.code, 200, "{name}: {}", r.text());
        r.body
    };
    let first = {
        let srv = serve(&store, &secrets, &d.path().join("state-a"));
        [get(&srv, "pb"), get(&srv, "a2")]
    };
    assert_eq!(first[0].len(), src.len() + (16 << 20));
    assert!(first[0] != first[1], "two Secrets, one header");
    // Another node: its own state, the same bytes.
    let again = {
        let srv = serve(&store, &secrets, &d.path().join("state-b"));
        [get(&srv, "pb"), get(&srv, "a2")]
    };
    for (a, b) in first.iter().zip(&again) {
        assert_eq!(
            hex::encode(Sha512::digest(a)),
            hex::encode(Sha512::digest(b)),
            "a second server with its own state served other bytes"
        );
    }

    for ((name, pass, _), bytes) in secret_docs.iter().zip(&first) {
        let img = d.path().join(format!("{name}.luks"));
        fs::write(&img, bytes).unwrap();
        let j = luks2_json(&img);
        let kdf = &j["keyslots"]["0"]["kdf"];
        let digest = &j["digests"]["0"];
        match *name {
            "pb" => {
                // 10M block-iterations for SHA-256: one block per iteration for a 32-byte key.
                assert_eq!(kdf["type"], "pbkdf2", "{j}");
                assert_eq!(kdf["iterations"], 10_000_000, "{j}");
                assert_eq!(digest["iterations"], 625_000, "{j}");
                assert_eq!(j["keyslots"]["0"]["key_size"], 32, "{j}");
            }
            _ => {
                assert_eq!(
                    (&kdf["type"], &kdf["time"], &kdf["memory"], &kdf["cpus"]),
                    (
                        &serde_json::json!("argon2id"),
                        &serde_json::json!(4),
                        &serde_json::json!(65536),
                        &serde_json::json!(4)
                    ),
                    "{j}"
                );
                assert_eq!(j["keyslots"]["0"]["key_size"], 64, "{j}");
                // A 64-byte key with SHA-256: two blocks per iteration.
                assert_eq!(digest["iterations"], 312_500, "{j}");
            }
        }
        assert_eq!(j["segments"]["0"]["offset"], "16777216", "{j}");
        assert_eq!(j["segments"]["0"]["sector_size"], 512, "{j}");
        assert!(
            test_passphrase(&img, pass.as_bytes()).status.success(),
            "{name}: cryptsetup does not open it"
        );
        assert!(!test_passphrase(&img, b"not it").status.success());
        let keyfile = d.path().join(format!("{name}.key"));
        fs::write(&keyfile, pass).unwrap();
        let key = volume_key(&img, &keyfile);
        let out = d.path().join(format!("{name}.plain"));
        oracle_decrypt(&img, &out, &key, 16 << 20, 512, src.len() as u64);
        assert!(
            fs::read(&out).unwrap() == src,
            "{name}: the oracle's plaintext differs"
        );
    }
}
