//! The Longhorn workflow end to end, through the `bifs` binary: Longhorn's own example
//! manifests against a local HTTP server, Longhorn's refusals, a qcow2 encrypted without a
//! temporary raw copy, rekey, status and `get`, idempotence, crash safety and parallel clones.
//!
//! Needs `python3` (the HTTP server), `cryptsetup` (cryptsetup-bin) and `qemu-img`/`qemu-io`
//! (qemu-utils).

use std::fs;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::support::apply::*;

/// A store with Longhorn's four example images applied one manifest at a time, in the docs'
/// order, from a local server serving `parrot.raw` with its real SHA-512 in `spec.checksum`.
struct Seeded {
    _tmp: tempfile::TempDir,
    dir: std::path::PathBuf,
    store: std::path::PathBuf,
    parrot: Vec<u8>,
    checksum: String,
    secret: std::path::PathBuf,
    _server: HttpServer,
}

fn seed() -> Seeded {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().to_path_buf();
    let www = dir.join("www");
    let store = dir.join("store");
    fs::create_dir_all(&www).unwrap();
    fs::create_dir_all(&store).unwrap();
    let parrot = disk_image(4 * MIB as usize, 7);
    fs::write(www.join("parrot.raw"), &parrot).unwrap();
    let checksum = sha512_hex(&parrot);
    let server = HttpServer::start(&www, 0.0);
    let secret = cheap_secret(&dir);
    let s = store.to_str().unwrap();
    let parrot_yaml = write(
        &dir,
        "parrot.yaml",
        &example("parrot", Some(&server.url("parrot.raw")), Some(&checksum)),
    );
    let out = ok(&["apply", "-f", parrot_yaml.to_str().unwrap(), "--store", s]);
    assert_eq!(out.trim(), "backingimage.longhorn.io/parrot created");
    for name in [
        "parrot-cloned",
        "parrot-cloned-encrypted",
        "parrot-cloned-decrypt",
    ] {
        let m = examples().join(format!("{name}.yaml"));
        let out = ok(&apply_with_secrets(&m, &secret, s));
        assert_eq!(
            out.trim(),
            format!("backingimage.longhorn.io/{name} created")
        );
    }
    Seeded {
        _tmp: tmp,
        dir,
        store,
        parrot,
        checksum,
        secret,
        _server: server,
    }
}

/// The arguments of `bifs apply -f MANIFEST --secrets SECRETS --store STORE`.
fn apply_with_secrets<'a>(manifest: &'a Path, secrets: &'a Path, store: &'a str) -> [&'a str; 7] {
    [
        "apply",
        "-f",
        manifest.to_str().unwrap(),
        "--secrets",
        secrets.to_str().unwrap(),
        "--store",
        store,
    ]
}

/// `bifs encrypt|decrypt --secret SECRET INPUT OUTPUT`, which must succeed.
fn crypt(command: &str, secret: &Path, input: &Path, output: &Path) {
    ok(&[
        command,
        "--secret",
        secret.to_str().unwrap(),
        input.to_str().unwrap(),
        output.to_str().unwrap(),
    ]);
}

/// `bifs rekey --secret OLD --new-secret NEW INPUT OUTPUT`, which must succeed.
fn rekey(old: &Path, new: &Path, input: &Path, output: &Path) {
    ok(&[
        "rekey",
        "--secret",
        old.to_str().unwrap(),
        "--new-secret",
        new.to_str().unwrap(),
        input.to_str().unwrap(),
        output.to_str().unwrap(),
    ]);
}

/// The volume key as cryptsetup itself unlocks it (`luksDump --dump-volume-key`), into
/// `key_file`.
fn dump_volume_key(image: &Path, pass_file: &Path, key_file: &Path) {
    tool_ok(
        "cryptsetup",
        &[
            "luksDump",
            "--batch-mode",
            "--dump-volume-key",
            "--volume-key-file",
            key_file.to_str().unwrap(),
            "--key-file",
            pass_file.to_str().unwrap(),
            image.to_str().unwrap(),
        ],
    );
}

#[test]
fn longhorns_examples_in_order() {
    full_tier_only!("cryptsetup and python3 (a local HTTP server)");
    let sd = seed();
    let store = &sd.store;
    let s = store.to_str().unwrap();

    // parrot: downloaded, verified, laid out as Longhorn does.
    let parrot_file = backing(store, "parrot");
    assert_eq!(fs::read(&parrot_file).unwrap(), sd.parrot);
    let cfg: serde_json::Value =
        serde_json::from_slice(&fs::read(parrot_file.with_file_name("backing.cfg")).unwrap())
            .unwrap();
    let uuid = record(store, "parrot")["status"]["uuid"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(
        cfg["name"],
        parrot_file.canonicalize().unwrap().to_str().unwrap()
    );
    assert_eq!(cfg["uuid"], uuid.as_str());
    assert_eq!(cfg["size"], sd.parrot.len());
    assert_eq!(cfg["virtualSize"], sd.parrot.len());
    assert_eq!(cfg["expectedChecksum"], sd.checksum.as_str());
    assert_eq!(cfg["currentChecksum"], sd.checksum.as_str());
    assert!(!parrot_file.with_file_name("backing.tmp").exists());

    // parrot-cloned (ignore): byte-identical, same checksum, no secret.
    let cloned = backing(store, "parrot-cloned");
    assert_eq!(fs::read(&cloned).unwrap(), sd.parrot);
    let y = get_yaml(store, "parrot-cloned");
    assert_eq!(y["status"]["checksum"], sd.checksum.as_str());
    // As Longhorn's mutator: the ignore clone's spec takes its source's checksum and Secret.
    assert_eq!(y["spec"]["checksum"], sd.checksum.as_str());
    assert_eq!(y["spec"]["secret"], "");

    // parrot-cloned-encrypted: what cryptsetup reads, opens and what decrypts to parrot.
    let enc = backing(store, "parrot-cloned-encrypted");
    let dump = tool_ok("cryptsetup", &["luksDump", enc.to_str().unwrap()]);
    assert!(
        dump.contains("Version:       \t2")
            && dump.contains("aes-xts-plain64")
            && dump.contains("offset: 16777216 [bytes]"),
        "{dump}"
    );
    assert!(cryptsetup_opens(&enc, PASSPHRASE));
    assert!(!cryptsetup_opens(&enc, "not the passphrase"));
    let plain = sd.dir.join("enc-plain.raw");
    crypt("decrypt", &sd.secret, &enc, &plain);
    assert_eq!(fs::read(&plain).unwrap(), sd.parrot);
    let enc_bytes = fs::read(&enc).unwrap();
    let y = get_yaml(store, "parrot-cloned-encrypted");
    let st = &y["status"];
    assert_eq!(file_status(&y)["state"], "ready");
    assert_eq!(file_status(&y)["progress"], 100);
    assert_eq!(st["size"], 16 * MIB + sd.parrot.len() as u64);
    assert_eq!(st["virtualSize"], 16 * MIB + sd.parrot.len() as u64);
    assert_eq!(st["checksum"], sha512_hex(&enc_bytes).as_str());
    assert_eq!(
        (
            y["spec"]["secret"].as_str(),
            y["spec"]["secretNamespace"].as_str()
        ),
        (Some("longhorn-crypto"), Some("longhorn-system"))
    );
    assert_eq!(y["spec"]["checksum"], "");
    assert_eq!(y["spec"]["sourceParameters"]["encryption"], "encrypt");
    assert_eq!(y["apiVersion"], "longhorn.io/v1beta2");
    assert_eq!(y["kind"], "BackingImage");

    // parrot-cloned-decrypt == parrot, holes kept, no secret: the design proposal's own check,
    // the decrypt clone of an encrypt clone of parrot has the checksum of parrot.
    let dec = backing(store, "parrot-cloned-decrypt");
    assert_eq!(fs::read(&dec).unwrap(), sd.parrot);
    let y = get_yaml(store, "parrot-cloned-decrypt");
    let st = &y["status"];
    assert_eq!(st["checksum"], sd.checksum.as_str());
    assert_eq!(y["spec"]["secret"], "");
    assert_eq!(y["spec"]["checksum"], "");
    assert!(
        st["realSize"].as_u64().unwrap() < sd.parrot.len() as u64 * 3 / 4,
        "holes were filled: {st}"
    );

    // Golden shapes: backing.cfg, longhorn-disk.cfg and `get -o yaml`, field by field with
    // the Go structs' JSON names (tests/golden/README.md says where each comes from).
    let disk = disk_uuid(store);
    let parrot_path = parrot_file.canonicalize().unwrap();
    let subst = [
        ("<disk>", disk.as_str()),
        ("<backing>", parrot_path.to_str().unwrap()),
    ];
    let cfg_text = fs::read_to_string(parrot_file.with_file_name("backing.cfg")).unwrap();
    let want: serde_json::Value =
        serde_json::from_str(&golden("backing.cfg.json", &subst)).unwrap();
    let got: serde_json::Value = serde_json::from_str(&cfg_text).unwrap();
    assert_shape(&want, &got, "backing.cfg");
    // Compact, in the Go struct's field order (json.Marshal's): backing-image-manager
    // pkg/util/util.go, SyncingFileConfig.
    let keys = [
        "name",
        "uuid",
        "size",
        "virtualSize",
        "realSize",
        "expectedChecksum",
        "currentChecksum",
        "modificationTime",
    ];
    let mut at = 0;
    for k in keys {
        let pos = cfg_text[at..]
            .find(&format!("\"{k}\":"))
            .unwrap_or_else(|| panic!("{k} out of order: {cfg_text}"));
        at += pos;
    }
    assert!(
        !cfg_text.contains('\n') && !cfg_text.contains(": "),
        "{cfg_text}"
    );
    let mtime = fs::metadata(&parrot_file).unwrap().modified().unwrap();
    let secs = mtime
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let t = got["modificationTime"].as_str().unwrap();
    assert!(t.ends_with(" +0000 UTC") && t.len() >= 29, "{t}");
    let date = tool_ok(
        "date",
        &["-u", "-d", &format!("@{secs}"), "+%Y-%m-%d %H:%M:%S"],
    );
    assert!(t.starts_with(date.trim()), "{t} vs {date}");
    let want: serde_json::Value =
        serde_json::from_str(&golden("longhorn-disk.cfg.json", &subst)).unwrap();
    let got: serde_json::Value =
        serde_json::from_slice(&fs::read(store.join("longhorn-disk.cfg")).unwrap()).unwrap();
    assert_shape(&want, &got, "longhorn-disk.cfg");
    let want: serde_json::Value =
        serde_norway::from_str(&golden("backingimage.yaml", &subst)).unwrap();
    assert_shape(
        &want,
        &get_yaml(store, "parrot-cloned-encrypted"),
        "get -o yaml",
    );

    // The table lists all four, ready.
    let table = ok(&["get", "--store", s]);
    for name in [
        "parrot",
        "parrot-cloned",
        "parrot-cloned-encrypted",
        "parrot-cloned-decrypt",
    ] {
        assert!(
            table
                .lines()
                .any(|l| l.starts_with(&format!("{name} ")) && l.contains(" ready ")),
            "{table}"
        );
    }
    assert!(table.contains("longhorn-system/longhorn-crypto"), "{table}");

    // Re-applying everything (the directory, Secret included) changes nothing.
    let all = sd.dir.join("all");
    fs::create_dir_all(&all).unwrap();
    fs::copy(sd.dir.join("parrot.yaml"), all.join("parrot.yaml")).unwrap();
    fs::copy(&sd.secret, all.join("longhorn-crypto.yaml")).unwrap();
    for name in [
        "parrot-cloned",
        "parrot-cloned-encrypted",
        "parrot-cloned-decrypt",
    ] {
        fs::copy(
            examples().join(format!("{name}.yaml")),
            all.join(format!("{name}.yaml")),
        )
        .unwrap();
    }
    let before = fs::metadata(&enc).unwrap().modified().unwrap();
    let out = ok(&["apply", "-f", all.to_str().unwrap(), "--store", s]);
    assert_eq!(
        out.lines().filter(|l| l.ends_with(" unchanged")).count(),
        4,
        "{out}"
    );
    assert_eq!(fs::metadata(&enc).unwrap().modified().unwrap(), before);
    assert_eq!(fs::read(&enc).unwrap(), enc_bytes);

    // A changed spec for an existing name is refused, naming the field; the image stays.
    let changed = write(
        &sd.dir,
        "changed.yaml",
        &example(
            "parrot",
            Some("http://127.0.0.1:1/other.raw"),
            Some(&sd.checksum),
        ),
    );
    let err = fails(&["apply", "-f", changed.to_str().unwrap(), "--store", s]);
    assert!(
        err.contains("spec.sourceParameters.url") && err.contains("already exists"),
        "{err}"
    );
    assert_eq!(state(store, "parrot"), "ready");
    assert_eq!(fs::read(backing(store, "parrot")).unwrap(), sd.parrot);

    // Delete removes the directory and the record.
    ok(&["delete", "parrot-cloned", "--store", s]);
    assert!(image_dirs(store, "parrot-cloned").is_empty());
    assert!(fails(&["get", "parrot-cloned", "--store", s]).contains("not found"));
    assert!(has_backing(store, "parrot-cloned-encrypted"));
}

/// Applies `yaml` (with the test Secret) and expects a refusal naming `field`: as a webhook
/// refusal leaves no object, nothing is left for `name` (no record, no directory).
fn refused(sd: &Seeded, name: &str, yaml: &str, field: &str, words: &str) {
    let s = sd.store.to_str().unwrap();
    let m = write(&sd.dir, &format!("{name}.yaml"), yaml);
    let err = fails(&apply_with_secrets(&m, &sd.secret, s));
    assert!(
        err.contains(&format!("{field}: ")) && err.contains(words) && err.contains("refused"),
        "{name}: expected {field} / {words}: {err}"
    );
    assert!(
        image_dirs(&sd.store, name).is_empty(),
        "{name} left a directory"
    );
    assert!(fails(&["get", name, "--store", s]).contains("not found"));
}

#[test]
fn longhorns_refusals_name_the_field() {
    let sd = seed();
    let url = sd._server.url("parrot.raw");
    let wrong = "ab".repeat(64);
    // A checksum mismatch is found after admission: the record says failed on the disk, and
    // the failed download's directory is gone entirely.
    let s = sd.store.to_str().unwrap();
    let m = write(
        &sd.dir,
        "parrot-wrong-sum.yaml",
        &backing_image("parrot-wrong-sum", &format!("  sourceType: download\n  sourceParameters:\n    url: {url}\n  checksum: {wrong}\n")),
    );
    let err = fails(&["apply", "-f", m.to_str().unwrap(), "--store", s]);
    // backing-image-manager's words for it (sync_file.go postProcessSyncFile).
    let longhorns = format!("failed to process sync file: the expected checksum {wrong} doesn't match the file actual checksum ");
    assert!(
        err.contains(&longhorns) && err.contains(" failed: "),
        "{err}"
    );
    assert!(image_dirs(&sd.store, "parrot-wrong-sum").is_empty());
    let y = get_yaml(&sd.store, "parrot-wrong-sum");
    let f = file_status(&y);
    assert_eq!(f["state"], "failed", "{y}");
    assert!(
        f["message"].as_str().unwrap().starts_with(&longhorns),
        "{y}"
    );
    refused(
        &sd,
        "parrot-twice-encrypted",
        &backing_image(
            "parrot-twice-encrypted",
            &clone_spec(
                "parrot-cloned-encrypted",
                "encrypt",
                Some("longhorn-crypto"),
            ),
        ),
        "spec.sourceParameters.encryption",
        "already encrypted",
    );
    refused(
        &sd,
        "parrot-decrypted",
        &backing_image(
            "parrot-decrypted",
            &clone_spec("parrot", "decrypt", Some("longhorn-crypto")),
        ),
        "spec.sourceParameters.encryption",
        "already decrypted",
    );
    refused(
        &sd,
        "parrot-no-such-secret",
        &backing_image(
            "parrot-no-such-secret",
            &clone_spec("parrot", "encrypt", Some("no-such-secret")),
        ),
        "spec.sourceParameters.secret",
        "longhorn-system/no-such-secret not found",
    );
    refused(
        &sd,
        "parrot-secret-unset",
        &backing_image(
            "parrot-secret-unset",
            &clone_spec("parrot", "encrypt", None),
        ),
        "spec.sourceParameters.secret",
        "required for encryption encrypt",
    );
    refused(
        &sd,
        "parrot-scrambled",
        &backing_image(
            "parrot-scrambled",
            &clone_spec("parrot", "scramble", Some("longhorn-crypto")),
        ),
        "spec.sourceParameters.encryption",
        "\"scramble\" is not supported",
    );
    refused(
        &sd,
        "parrot-no-source",
        &backing_image(
            "parrot-no-source",
            "  sourceType: clone\n  sourceParameters:\n    encryption: ignore\n",
        ),
        "spec.sourceParameters.backing-image",
        "required",
    );
    refused(
        &sd,
        "parrot-unknown-source",
        &backing_image(
            "parrot-unknown-source",
            &clone_spec("no-such-image", "ignore", None),
        ),
        "spec.sourceParameters.backing-image",
        "no-such-image not found",
    );
    // An ignore clone's checksum is its source's (Longhorn's mutator replaces a given one).
    let m = write(
        &sd.dir,
        "parrot-ignore-bad-sum.yaml",
        &backing_image(
            "parrot-ignore-bad-sum",
            &format!(
                "{}  checksum: {wrong}\n",
                clone_spec("parrot", "ignore", None)
            ),
        ),
    );
    ok(&["apply", "-f", m.to_str().unwrap(), "--store", s]);
    assert_eq!(
        get_yaml(&sd.store, "parrot-ignore-bad-sum")["spec"]["checksum"],
        sd.checksum.as_str()
    );
    // Names as Longhorn's webhook treats them: lower-cased (and said so), then validated.
    let m = write(
        &sd.dir,
        "upper.yaml",
        &backing_image("Parrot-Upper", &clone_spec("parrot", "ignore", None)),
    );
    let out = bifs(&["apply", "-f", m.to_str().unwrap(), "--store", s]);
    assert!(out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr)
            .contains("\"Parrot-Upper\" auto-corrected to \"parrot-upper\""),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(state(&sd.store, "parrot-upper"), "ready");
    refused(
        &sd,
        "_parrot",
        &backing_image("_parrot", &clone_spec("parrot", "ignore", None)),
        "metadata.name",
        "invalid name",
    );

    // `get -o json` lists the failures beside the good images.
    let out = ok(&["get", "--store", sd.store.to_str().unwrap(), "-o", "json"]);
    let list: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(list["kind"], "List");
    let items = list["items"].as_array().unwrap();
    let failed = items
        .iter()
        .filter(|i| file_status(i)["state"] == "failed")
        .count();
    let ready = items
        .iter()
        .filter(|i| file_status(i)["state"] == "ready")
        .count();
    assert_eq!((failed, ready), (1, 6), "{out}");
    // The good images are untouched by the refusals.
    assert_eq!(fs::read(backing(&sd.store, "parrot")).unwrap(), sd.parrot);

    // A corrected manifest for a failed name is accepted (a refusal does not pin the spec).
    let fixed = write(
        &sd.dir,
        "fixed.yaml",
        &backing_image("parrot-scrambled", &clone_spec("parrot", "ignore", None)),
    );
    let out = ok(&[
        "apply",
        "-f",
        fixed.to_str().unwrap(),
        "--store",
        sd.store.to_str().unwrap(),
    ]);
    assert!(out.contains("parrot-scrambled created"), "{out}");
    assert_eq!(
        fs::read(backing(&sd.store, "parrot-scrambled")).unwrap(),
        sd.parrot
    );
}

/// Makes a qcow2 of `virtual_mib` MiB with a few MiB of data, returns (path, its raw content).
fn make_qcow2(dir: &Path, virtual_mib: u64) -> (std::path::PathBuf, Vec<u8>) {
    let q = dir.join("disk.qcow2");
    tool_ok(
        "qemu-img",
        &[
            "create",
            "-q",
            "-f",
            "qcow2",
            q.to_str().unwrap(),
            &format!("{virtual_mib}M"),
        ],
    );
    for (pattern, off) in [(0x5a, "0"), (0x33, "9M"), (0xc1, "20M")] {
        tool_ok(
            "qemu-io",
            &[
                "-f",
                "qcow2",
                "-c",
                &format!("write -P {pattern} {off} 1M"),
                q.to_str().unwrap(),
            ],
        );
    }
    let raw = dir.join("disk.raw");
    tool_ok(
        "qemu-img",
        &[
            "convert",
            "-f",
            "qcow2",
            "-O",
            "raw",
            q.to_str().unwrap(),
            raw.to_str().unwrap(),
        ],
    );
    (q, fs::read(raw).unwrap())
}

#[test]
fn qcow2_encrypted_without_a_temporary_raw_copy() {
    full_tier_only!("cryptsetup, qemu-img and python3");
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let store = dir.join("store");
    fs::create_dir_all(&store).unwrap();
    let s = store.to_str().unwrap();
    let (qcow2, raw) = make_qcow2(dir, 32);
    let secret = cheap_secret(dir);

    // Uploaded as-is from a local path: a qcow2 with its virtual size in the status.
    let up = write(
        dir,
        "up.yaml",
        &backing_image(
            "vm",
            &format!(
                "  sourceType: upload\n  sourceParameters:\n    path: {}\n",
                qcow2.display()
            ),
        ),
    );
    ok(&["apply", "-f", up.to_str().unwrap(), "--store", s]);
    assert_eq!(
        fs::read(backing(&store, "vm")).unwrap(),
        fs::read(&qcow2).unwrap()
    );
    let st = &get_yaml(&store, "vm")["status"];
    assert_eq!(st["virtualSize"], 32 * MIB);
    assert_eq!(st["size"], fs::metadata(&qcow2).unwrap().len());

    // Encrypt it, watching the store's disk usage meanwhile.
    let enc_yaml = write(
        dir,
        "enc.yaml",
        &backing_image(
            "vm-encrypted",
            &clone_spec("vm", "encrypt", Some("longhorn-crypto")),
        ),
    );
    let before = usage(&store);
    let peak = Arc::new(AtomicU64::new(before));
    let stop = Arc::new(AtomicBool::new(false));
    let poller = {
        let (peak, stop, store) = (Arc::clone(&peak), Arc::clone(&stop), store.clone());
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                peak.fetch_max(usage(&store), Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(5));
            }
        })
    };
    let mut apply = Command::new(bifs_bin())
        .args(apply_with_secrets(&enc_yaml, &secret, s))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    assert!(apply.wait().unwrap().success());
    stop.store(true, Ordering::Relaxed);
    poller.join().unwrap();
    let after = usage(&store);
    let peak = peak.load(Ordering::Relaxed);
    let output = fs::metadata(backing(&store, "vm-encrypted")).unwrap().len();
    assert_eq!(output, 16 * MIB + 32 * MIB);
    // No temporary raw copy: the peak is the final usage (records and locks aside), never
    // the final usage plus the 32 MiB raw disk.
    assert!(
        peak <= after + MIB,
        "peak {peak} > final {after} + 1 MiB (before {before})"
    );
    assert!(
        after - before <= output + MIB,
        "store grew by {} for a {output}-byte image",
        after - before
    );

    // The LUKS2 image holds the qcow2's raw disk.
    let enc = backing(&store, "vm-encrypted");
    assert!(cryptsetup_opens(&enc, PASSPHRASE));
    let plain = dir.join("plain.raw");
    crypt("decrypt", &secret, &enc, &plain);
    assert!(
        fs::read(&plain).unwrap() == raw,
        "decrypted image differs from qemu-img's raw rendering"
    );
    // The design proposal's check: the decrypt clone of the encrypt clone of a qcow2 has the
    // checksum of its raw conversion.
    let dec_yaml = write(
        dir,
        "dec.yaml",
        &backing_image(
            "vm-decrypted",
            &clone_spec("vm-encrypted", "decrypt", Some("longhorn-crypto")),
        ),
    );
    ok(&apply_with_secrets(&dec_yaml, &secret, s));
    assert_eq!(
        get_yaml(&store, "vm-decrypted")["status"]["checksum"],
        sha512_hex(&raw).as_str()
    );
}

/// A ready file that changes: `get` sees its mtime move, hashes it again, and shows it ready
/// (same bytes; backing.cfg takes the new time) or failed with Longhorn's message.
#[test]
fn a_ready_file_that_changes_is_validated_again() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let store = dir.join("store");
    fs::create_dir_all(&store).unwrap();
    let s = store.to_str().unwrap();
    let data = disk_image(MIB as usize, 3);
    let src = write(dir, "src.raw", "");
    fs::write(&src, &data).unwrap();
    let m = write(
        dir,
        "img.yaml",
        &backing_image(
            "img",
            &format!(
                "  sourceType: upload\n  sourceParameters:\n    path: {}\n",
                src.display()
            ),
        ),
    );
    ok(&["apply", "-f", m.to_str().unwrap(), "--store", s]);
    let b = backing(&store, "img");
    let cfg_time = |b: &Path| -> String {
        let v: serde_json::Value =
            serde_json::from_slice(&fs::read(b.with_file_name("backing.cfg")).unwrap()).unwrap();
        v["modificationTime"].as_str().unwrap().to_string()
    };
    let before = cfg_time(&b);
    // Same bytes, new mtime: ready again, and the cfg records the new time.
    std::thread::sleep(Duration::from_millis(20));
    fs::write(&b, &data).unwrap();
    assert_eq!(state(&store, "img"), "ready");
    assert_ne!(cfg_time(&b), before);
    // Other bytes: failed, never a silent ready; a re-apply makes it again.
    let mut other = data.clone();
    other[0] ^= 1;
    std::thread::sleep(Duration::from_millis(20));
    fs::write(&b, &other).unwrap();
    let f = file_status(&get_yaml(&store, "img"));
    assert_eq!(f["state"], "failed", "{f}");
    assert!(
        f["message"]
            .as_str()
            .unwrap()
            .contains("with a different checksum"),
        "{f}"
    );
    let out = ok(&["apply", "-f", m.to_str().unwrap(), "--store", s]);
    assert!(out.contains("img created"), "{out}");
    assert_eq!(fs::read(backing(&store, "img")).unwrap(), data);
}

/// A disk as backing-image-manager writes it (cfg `name` is a path, a download in progress,
/// two uuids of one name): `apply` clones from its images, which have no bifs record.
#[test]
fn apply_clones_from_a_real_longhorn_disk() {
    let tmp = tempfile::tempdir().unwrap();
    let store = tmp.path().join("disk");
    let bi = store.join("backing-images");
    fs::create_dir_all(&bi).unwrap();
    let disk = "0f8f2e6c-8a1b-4a49-9d36-3b4b0e1d2c3a";
    let disk_cfg = format!(
        "{{\"diskName\":\"default-disk-fd00\",\"diskUUID\":\"{disk}\",\"diskDriver\":\"\",\"state\":\"ready\"}}"
    );
    fs::write(store.join("longhorn-disk.cfg"), &disk_cfg).unwrap();
    let lay = |dir: &str, uuid: &str, data: &[u8], cfg_sum: &str| {
        let d = bi.join(dir);
        fs::create_dir_all(&d).unwrap();
        fs::write(d.join("backing"), data).unwrap();
        let m = d.join("backing").metadata().unwrap();
        let t = tool_ok(
            "date",
            &[
                "-u",
                "-r",
                d.join("backing").to_str().unwrap(),
                "+%Y-%m-%d %H:%M:%S.%N",
            ],
        );
        let t = t
            .trim()
            .trim_end_matches('0')
            .trim_end_matches('.')
            .to_string()
            + " +0000 UTC";
        let cfg = serde_json::json!({"name": format!("/data/backing-images/{dir}/backing"),
            "uuid": uuid, "size": m.len(), "virtualSize": m.len(), "realSize": 4096,
            "expectedChecksum": "", "currentChecksum": cfg_sum, "modificationTime": t});
        fs::write(d.join("backing.cfg"), serde_json::to_vec(&cfg).unwrap()).unwrap();
    };
    let a = disk_image(MIB as usize, 21);
    let b = disk_image(MIB as usize, 22);
    lay("src-1a2b3c4d", "1a2b3c4d", &a, &sha512_hex(&a));
    // A stale copy of `twin` (its cfg's checksum is wrong and its time is not the file's) and
    // the ready one.
    lay("twin-00000001", "00000001", &b, "00");
    std::thread::sleep(Duration::from_millis(20));
    fs::write(bi.join("twin-00000001/backing"), &a).unwrap();
    lay("twin-00000002", "00000002", &b, &sha512_hex(&b));
    fs::create_dir_all(bi.join("downloading-5e6f7a8b")).unwrap();
    fs::write(bi.join("downloading-5e6f7a8b/backing.tmp"), b"partial").unwrap();
    let s = store.to_str().unwrap();
    let m = write(
        tmp.path(),
        "clones.yaml",
        &format!(
            "{}---\n{}",
            backing_image("src-copy", &clone_spec("src", "ignore", None)),
            backing_image("twin-copy", &clone_spec("twin", "ignore", None)),
        ),
    );
    ok(&["apply", "-f", m.to_str().unwrap(), "--store", s]);
    assert_eq!(fs::read(backing(&store, "src-copy")).unwrap(), a);
    assert_eq!(fs::read(backing(&store, "twin-copy")).unwrap(), b);
    let y = get_yaml(&store, "twin-copy");
    assert_eq!(y["spec"]["checksum"], sha512_hex(&b).as_str());
    assert!(y["status"]["diskFileStatusMap"][disk].is_object(), "{y}");
    // The disk's own config is kept.
    assert_eq!(
        fs::read_to_string(store.join("longhorn-disk.cfg")).unwrap(),
        disk_cfg
    );
    let m = write(
        tmp.path(),
        "dl.yaml",
        &backing_image("dl-copy", &clone_spec("downloading", "ignore", None)),
    );
    let err = fails(&["apply", "-f", m.to_str().unwrap(), "--store", s]);
    assert!(err.contains("downloading not found"), "{err}");
}

#[test]
fn rekey_wraps_the_same_key_and_keeps_the_data() {
    full_tier_only!("cryptsetup");
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let old = pbkdf2_secret(dir, "old-key", "old passphrase");
    let new = pbkdf2_secret(dir, "new-key", "new passphrase");
    let plain = dir.join("plain.raw");
    let data = disk_image(3 * MIB as usize, 11);
    fs::write(&plain, &data).unwrap();
    let enc = dir.join("enc.img");
    crypt("encrypt", &old, &plain, &enc);

    // `bifs rekey` of one file.
    let rekeyed = dir.join("rekeyed.img");
    rekey(&old, &new, &enc, &rekeyed);
    assert!(cryptsetup_opens(&rekeyed, "new passphrase"));
    assert!(!cryptsetup_opens(&rekeyed, "old passphrase"));
    let (e, r) = (fs::read(&enc).unwrap(), fs::read(&rekeyed).unwrap());
    assert_eq!(e.len(), r.len());
    assert!(
        e[16 * MIB as usize..] == r[16 * MIB as usize..],
        "data segment changed"
    );
    assert!(e[..16 * MIB as usize] != r[..16 * MIB as usize]);
    let out = dir.join("out.raw");
    crypt("decrypt", &new, &rekeyed, &out);
    assert!(fs::read(&out).unwrap() == data);

    // A source whose data segment is elsewhere (a cryptsetup header with --offset 2 MiB around
    // the same volume key): the ciphertext is still right at bifs' 16 MiB.
    let key = dir.join("volume.key");
    let pass_file = write(dir, "old.pass", "old passphrase");
    dump_volume_key(&enc, &pass_file, &key);
    let moved = dir.join("moved.img");
    let ciphertext = &e[16 * MIB as usize..];
    fs::File::create(&moved)
        .unwrap()
        .set_len(2 * MIB + ciphertext.len() as u64)
        .unwrap();
    tool_ok(
        "cryptsetup",
        &[
            "luksFormat",
            "--batch-mode",
            "--type",
            "luks2",
            "--offset",
            "4096",
            "--sector-size",
            "4096",
            "--volume-key-file",
            key.to_str().unwrap(),
            "--key-size",
            "256",
            "--pbkdf",
            "pbkdf2",
            "--pbkdf-force-iterations",
            "1000",
            "--key-file",
            pass_file.to_str().unwrap(),
            moved.to_str().unwrap(),
        ],
    );
    {
        use std::os::unix::fs::FileExt;
        let f = fs::OpenOptions::new().write(true).open(&moved).unwrap();
        f.write_all_at(ciphertext, 2 * MIB).unwrap();
    }
    let dump = tool_ok("cryptsetup", &["luksDump", moved.to_str().unwrap()]);
    assert!(dump.contains("offset: 2097152 [bytes]"), "{dump}");
    let moved_plain = dir.join("moved.raw");
    crypt("decrypt", &old, &moved, &moved_plain);
    assert!(fs::read(&moved_plain).unwrap() == data);
    let moved_rekeyed = dir.join("moved-rekeyed.img");
    rekey(&old, &new, &moved, &moved_rekeyed);
    let dump = tool_ok("cryptsetup", &["luksDump", moved_rekeyed.to_str().unwrap()]);
    assert!(
        dump.contains("offset: 16777216 [bytes]") && dump.contains("sector: 4096 [bytes]"),
        "{dump}"
    );
    assert!(cryptsetup_opens(&moved_rekeyed, "new passphrase"));
    assert!(!cryptsetup_opens(&moved_rekeyed, "old passphrase"));
    assert!(fs::read(&moved_rekeyed).unwrap()[16 * MIB as usize..] == *ciphertext);
    // The volume key is the same one cryptsetup reports for the original.
    let key2 = dir.join("volume2.key");
    let new_pass = write(dir, "new.pass", "new passphrase");
    dump_volume_key(&moved_rekeyed, &new_pass, &key2);
    assert_eq!(fs::read(&key).unwrap(), fs::read(&key2).unwrap());
    let out2 = dir.join("out2.raw");
    crypt("decrypt", &new, &moved_rekeyed, &out2);
    assert!(fs::read(&out2).unwrap() == data);

    // Through apply: an uploaded encrypted image (spec.secret says by which Secret), then a
    // `rekey` clone keyed by the new Secret.
    let store = dir.join("store");
    fs::create_dir_all(&store).unwrap();
    let s = store.to_str().unwrap();
    let m = write(
        dir,
        "rekey.yaml",
        &format!(
            "{}---\n{}",
            backing_image("img", &format!("  sourceType: upload\n  sourceParameters:\n    path: {}\n  secret: old-key\n  secretNamespace: longhorn-system\n", enc.display())),
            backing_image("img-rekeyed", &clone_spec("img", "rekey", Some("new-key"))),
        ),
    );
    let out = ok(&[
        "apply",
        "-f",
        m.to_str().unwrap(),
        "--secrets",
        old.to_str().unwrap(),
        "--secrets",
        new.to_str().unwrap(),
        "--store",
        s,
    ]);
    assert!(out.contains("img-rekeyed created"), "{out}");
    let r = backing(&store, "img-rekeyed");
    assert!(cryptsetup_opens(&r, "new passphrase"));
    assert!(!cryptsetup_opens(&r, "old passphrase"));
    assert!(fs::read(&r).unwrap()[16 * MIB as usize..] == e[16 * MIB as usize..]);
    let y = get_yaml(&store, "img-rekeyed");
    assert_eq!(
        (
            y["spec"]["secret"].as_str(),
            file_status(&y)["state"].as_str()
        ),
        (Some("new-key"), Some("ready"))
    );
    // Rekeying an image with no secret is refused, naming the field.
    let m = write(
        dir,
        "bad-rekey.yaml",
        &format!(
            "{}---\n{}",
            backing_image(
                "plain",
                &format!(
                    "  sourceType: upload\n  sourceParameters:\n    path: {}\n",
                    plain.display()
                )
            ),
            backing_image(
                "plain-rekeyed",
                &clone_spec("plain", "rekey", Some("new-key"))
            ),
        ),
    );
    let err = fails(&apply_with_secrets(&m, &new, s));
    assert!(
        err.contains("spec.sourceParameters.encryption: cannot rekey"),
        "{err}"
    );
}

#[test]
fn interrupted_apply_leaves_no_backing_and_completes_on_reapply() {
    full_tier_only!("python3 (a local HTTP server)");
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let www = dir.join("www");
    let store = dir.join("store");
    fs::create_dir_all(&www).unwrap();
    fs::create_dir_all(&store).unwrap();
    let s = store.to_str().unwrap();
    let big = noise(5, 24 * MIB as usize);
    fs::write(www.join("big.raw"), &big).unwrap();
    let sum = sha512_hex(&big);
    // 64 KiB every 10 ms: about 4 s for the whole file, time enough to kill it midway.
    let server = HttpServer::start(&www, 0.01);
    let m = write(
        dir,
        "big.yaml",
        &backing_image(
            "big",
            &format!(
                "  sourceType: download\n  sourceParameters:\n    url: {}\n  checksum: {sum}\n",
                server.url("big.raw")
            ),
        ),
    );

    let mut child = Command::new(bifs_bin())
        .args(["apply", "-f", m.to_str().unwrap(), "--store", s])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let tmp_len = image_dirs(&store, "big")
            .first()
            .and_then(|d| fs::metadata(d.join("backing.tmp")).ok())
            .map_or(0, |m| m.len());
        if tmp_len >= 2 * MIB {
            break;
        }
        assert!(Instant::now() < deadline, "the download never got going");
        assert!(
            child.try_wait().unwrap().is_none(),
            "apply finished before it could be interrupted"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    child.kill().unwrap(); // SIGKILL: no cleanup runs
    child.wait().unwrap();

    assert!(
        !has_backing(&store, "big"),
        "a killed apply left a backing file"
    );
    assert_eq!(file_status(&record(&store, "big"))["state"], "in-progress");
    let st = &file_status(&get_yaml(&store, "big"));
    assert_eq!(st["state"], "failed", "{st}");
    assert!(
        st["message"].as_str().unwrap().contains("interrupted"),
        "{st}"
    );

    // The second apply completes it, and `get -w` follows it (the server is slow) to ready.
    let reapply = Command::new(bifs_bin())
        .args(["apply", "-f", m.to_str().unwrap(), "--store", s])
        .stderr(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    // Until the new apply holds the image, `get` reports the dead one's record as failed.
    let deadline = Instant::now() + Duration::from_secs(30);
    while state(&store, "big") != "in-progress" {
        assert!(Instant::now() < deadline, "the second apply never started");
        std::thread::sleep(Duration::from_millis(5));
    }
    let watch = Command::new(bifs_bin())
        .args(["get", "big", "-w", "--store", s])
        .output()
        .unwrap();
    let out = reapply.wait_with_output().unwrap();
    assert!(out.status.success());
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "backingimage.longhorn.io/big created"
    );
    let watched = String::from_utf8_lossy(&watch.stdout);
    assert!(watch.status.success(), "{watched}");
    assert!(watched.starts_with("NAME "), "{watched}");
    assert!(
        watched
            .lines()
            .any(|l| l.starts_with("big ") && l.contains(" in-progress ")),
        "{watched}"
    );
    assert!(
        watched
            .lines()
            .last()
            .is_some_and(|l| l.starts_with("big ") && l.contains(" ready ") && l.contains("100%")),
        "{watched}"
    );
    assert_eq!(image_dirs(&store, "big").len(), 1);
    let b = backing(&store, "big");
    assert!(fs::read(&b).unwrap() == big);
    assert!(!b.with_file_name("backing.tmp").exists());
    let y = get_yaml(&store, "big");
    assert_eq!(
        (
            file_status(&y)["state"].as_str(),
            y["status"]["checksum"].as_str()
        ),
        (Some("ready"), Some(sum.as_str()))
    );

    // Two applies of different clones of the same source, at once, in two processes.
    let secret = cheap_secret(dir);
    let a = write(
        dir,
        "a.yaml",
        &backing_image(
            "big-a",
            &clone_spec("big", "encrypt", Some("longhorn-crypto")),
        ),
    );
    let b = write(
        dir,
        "b.yaml",
        &backing_image("big-b", &clone_spec("big", "ignore", None)),
    );
    let spawn = |m: &Path| {
        Command::new(bifs_bin())
            .args(apply_with_secrets(m, &secret, s))
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    };
    let (pa, pb) = (spawn(&a), spawn(&b));
    for p in [pa, pb] {
        let out = p.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    assert!(fs::read(backing(&store, "big-b")).unwrap() == big);
    let plain = dir.join("a.raw");
    crypt("decrypt", &secret, &backing(&store, "big-a"), &plain);
    assert!(fs::read(&plain).unwrap() == big);
    // While a clone reads its source, the source cannot be deleted; afterwards it can.
    ok(&["delete", "big", "--store", s]);
    assert!(image_dirs(&store, "big").is_empty());
}

/// Sizes as Longhorn computes them (backing-image-manager `updateVirtualSizeNoLock`, `qemu-img
/// info` with the format probed; `GetFileRealSize` after `IdleTimeoutCopy` left every all-zero
/// 4 KiB read as a hole): a LUKS1 image's virtual size is its payload, a LUKS2 image's its file
/// size (qemu has no LUKS2 driver: it probes raw), and realSize leaves out every zero 4 KiB
/// block. A decrypt clone keeps the `spec.secret` its manifest sets (Longhorn's mutator
/// rewrites it for `ignore` clones only).
#[test]
fn sizes_and_spec_as_longhorn_computes_them() {
    full_tier_only!("qemu-img, cryptsetup");
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let store = dir.join("store");
    fs::create_dir_all(&store).unwrap();
    let s = store.to_str().unwrap();
    // 1 MiB where every other 4 KiB block is zero: half of it is holes at 4 KiB, none at 64 KiB.
    let mut payload = crate::support::noise(41, MIB as usize);
    for block in payload.chunks_mut(8192) {
        block[4096..].fill(0);
    }
    let raw = write(dir, "half.raw", "");
    fs::write(&raw, &payload).unwrap();
    let luks1 = crate::support::common::make_luks1_with_qemu(
        dir,
        "l1",
        &raw,
        "aes-128",
        "sha256",
        "luks1 pass",
    );
    let luks2 = dir.join("l2.img");
    fs::write(&luks2, disk_image(20 * MIB as usize, 43)).unwrap();
    crate::support::common::luks2_format_cheap(&luks2, b"luks2 pass");
    let qemu_virtual = |p: &Path| -> u64 {
        let out = tool_ok("qemu-img", &["info", "--output=json", p.to_str().unwrap()]);
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        v["virtual-size"].as_u64().unwrap()
    };
    for (name, file) in [
        ("half", &raw),
        ("luks-one", &luks1.path),
        ("luks-two", &luks2),
    ] {
        let m = write(
            dir,
            &format!("{name}.yaml"),
            &backing_image(
                name,
                &format!(
                    "  sourceType: upload\n  sourceParameters:\n    path: {}\n",
                    file.display()
                ),
            ),
        );
        ok(&["apply", "-f", m.to_str().unwrap(), "--store", s]);
        let st = get_yaml(&store, name)["status"].clone();
        let stored = backing(&store, name);
        assert_eq!(
            st["virtualSize"].as_u64(),
            Some(qemu_virtual(&stored)),
            "{name}: {st}"
        );
    }
    let luks1_len = fs::metadata(&luks1.path).unwrap().len();
    assert_eq!(
        get_yaml(&store, "luks-one")["status"]["virtualSize"].as_u64(),
        Some(luks1_len - luks1.data_offset),
        "LUKS1: the payload"
    );
    let real = get_yaml(&store, "half")["status"]["realSize"]
        .as_u64()
        .unwrap();
    assert!(
        (MIB / 2..MIB * 3 / 4).contains(&real),
        "realSize {real}: the zero 4 KiB blocks were written"
    );

    // A decrypt clone of the LUKS2 upload (made encrypted: spec.secret) keeps a spec.secret it sets.
    let secret = pbkdf2_secret(dir, "l2", "luks2 pass");
    let m = write(
        dir,
        "luks-two-enc.yaml",
        &backing_image(
            "luks-two-enc",
            &format!(
                "  sourceType: upload\n  sourceParameters:\n    path: {}\n  secret: l2\n  secretNamespace: longhorn-system\n",
                luks2.display()
            ),
        ),
    );
    ok(&[
        "apply",
        "-f",
        m.to_str().unwrap(),
        "--secrets",
        secret.to_str().unwrap(),
        "--store",
        s,
    ]);
    let m = write(
        dir,
        "luks-two-dec.yaml",
        &backing_image(
            "luks-two-dec",
            &format!(
                "{}  secret: l2\n  secretNamespace: longhorn-system\n",
                clone_spec("luks-two-enc", "decrypt", Some("l2"))
            ),
        ),
    );
    ok(&[
        "apply",
        "-f",
        m.to_str().unwrap(),
        "--secrets",
        secret.to_str().unwrap(),
        "--store",
        s,
    ]);
    let y = get_yaml(&store, "luks-two-dec");
    assert_eq!(y["spec"]["secret"], "l2", "{y}");
    assert_eq!(y["spec"]["checksum"], "", "{y}");
    assert_eq!(
        y["metadata"]["labels"]["longhorn.io/component"], "backing-image",
        "{y}"
    );
}
