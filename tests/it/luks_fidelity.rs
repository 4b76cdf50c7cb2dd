//! bifs's LUKS loader against cryptsetup 2.6 itself, case by case: headers made by
//! `cryptsetup luksFormat` (some with their JSON edited and both checksums recomputed, as a
//! damaged or hand-made header would be). For each case:
//! - `bifs inspect` succeeds exactly when `cryptsetup luksDump` does, and from the line
//!   `LUKS header information` to the end its text is byte-identical to luksDump's;
//! - `bifs decrypt` opens with a passphrase exactly when `cryptsetup open --test-passphrase`
//!   does, and then yields the data cryptsetup wrote.
//!
//! Run one case by name: `cargo test --release --test luks_fidelity invalid_overlapping_areas`.

use std::ffi::{OsStr, OsString};
use std::fs;
use std::path::{Path, PathBuf};

use crate::support::common::*;
use bifs_core::luks::binary;
use serde_json::{json, Value};

/// Every case compares with cryptsetup itself: the full tier only.
const NEEDS: &str = "cryptsetup";
const PASS: &str = "fidelity-pass";
const OTHER: &str = "other-pass";
/// Cheap keyslots: Argon2id with 32 KiB and 4 iterations.
const CHEAP: [&str; 6] = [
    "--pbkdf",
    "argon2id",
    "--pbkdf-memory",
    "32",
    "--pbkdf-force-iterations",
    "4",
];

fn os(v: &[&dyn AsRef<OsStr>]) -> Vec<OsString> {
    v.iter().map(|a| a.as_ref().to_os_string()).collect()
}

/// A scratch directory for one case.
struct Case {
    _dir: tempfile::TempDir,
    dir: PathBuf,
    name: &'static str,
}

impl Case {
    fn new(name: &'static str) -> Case {
        require_tools();
        let dir = tempdir(name);
        Case {
            dir: dir.path().to_path_buf(),
            _dir: dir,
            name,
        }
    }

    fn path(&self, file: &str) -> PathBuf {
        self.dir.join(file)
    }

    /// `cryptsetup luksFormat` on a new sparse file of `size` bytes, passphrase [`PASS`].
    fn format(&self, file: &str, size: u64, extra: &[&str]) -> PathBuf {
        let img = self.path(file);
        fs::File::create(&img).unwrap().set_len(size).unwrap();
        let mut a: Vec<OsString> = os(&[&"-q", &"luksFormat"]);
        a.extend(extra.iter().map(OsString::from));
        a.extend(os(&[&"--key-file", &"-", &img]));
        assert_ok(
            &cryptsetup_stdin(&a, PASS.as_bytes()),
            &format!("{}: luksFormat", self.name),
        );
        img
    }

    fn luks2(&self) -> PathBuf {
        let mut extra = vec!["--type", "luks2"];
        extra.extend(CHEAP);
        self.format("img", 20 * MIB, &extra)
    }

    fn luks1(&self) -> PathBuf {
        self.format(
            "img",
            4 * MIB,
            &["--type", "luks1", "--pbkdf-force-iterations", "1000"],
        )
    }

    /// `luksAddKey` of `new` (unlocked by [`PASS`]), with `extra` arguments.
    fn add_key(&self, img: &Path, new: &str, extra: &[&str]) {
        let keyfile = self.path(&format!("key-{new}"));
        fs::write(&keyfile, new).unwrap();
        let mut a: Vec<OsString> = os(&[&"-q", &"luksAddKey"]);
        a.extend(extra.iter().map(OsString::from));
        a.extend(["--pbkdf-force-iterations", "1000", "--pbkdf", "pbkdf2"].map(OsString::from));
        a.extend(os(&[&"--key-file", &"-", &img, &keyfile]));
        assert_ok(
            &cryptsetup_stdin(&a, PASS.as_bytes()),
            &format!("{}: luksAddKey", self.name),
        );
    }

    fn secret(&self, passphrase: &str) -> PathBuf {
        write_secret(
            &self.dir,
            &format!("secret-{}", passphrase.len()),
            &SecretParams::cheap(passphrase),
        )
    }

    /// `bifs decrypt` of `img` with `passphrase`: the plaintext, or the error output.
    fn bifs_decrypt(&self, img: &Path, passphrase: &str) -> Result<PathBuf, String> {
        let dst = self.path("plain.out");
        let _ = fs::remove_file(&dst);
        let o = bifs(os(&[
            &"decrypt",
            &"--secret",
            &self.secret(passphrase),
            &img,
            &dst,
        ]));
        if o.status.success() {
            Ok(dst)
        } else {
            Err(stderr_of(&o))
        }
    }
}

/// The LUKS2 metadata size of `img`: from the primary, else the first secondary found.
fn hdr_size(img: &[u8]) -> usize {
    for off in std::iter::once(0).chain(binary::HDR_SIZES.map(|o| o as usize)) {
        if img.len() >= off + 16 && (img[off..off + 4] == *b"LUKS" || img[off..off + 4] == *b"SKUL")
        {
            return u64::from_be_bytes(img[off + 8..off + 16].try_into().unwrap()) as usize;
        }
    }
    panic!("no LUKS2 header copy");
}

/// Rewrites the JSON area of the copies at `offsets` with `area` (NUL-padded) and recomputes
/// their checksums, as cryptsetup would have written them.
fn write_json_area(img: &Path, offsets: &[usize], text: &[u8]) {
    let mut bytes = fs::read(img).unwrap();
    let size = hdr_size(&bytes);
    assert!(text.len() <= size - 4096, "JSON too large for the area");
    for &off in offsets {
        let area = &mut bytes[off + 4096..off + size];
        area.fill(0);
        area[..text.len()].copy_from_slice(text);
        binary::fix_checksum_for_fuzzing(&mut bytes, off);
    }
    fs::write(img, bytes).unwrap();
}

fn read_json(img: &Path) -> Value {
    let bytes = fs::read(img).unwrap();
    let size = hdr_size(&bytes);
    let area = &bytes[4096..size];
    let end = area.iter().position(|&b| b == 0).unwrap();
    serde_json::from_slice(&area[..end]).unwrap()
}

/// Edits the JSON metadata of both copies (checksums recomputed).
fn edit(img: &Path, f: impl FnOnce(&mut Value)) {
    let mut v = read_json(img);
    f(&mut v);
    let size = hdr_size(&fs::read(img).unwrap());
    write_json_area(img, &[0, size], &serde_json::to_vec(&v).unwrap());
}

/// From `LUKS header information` to the end.
fn dump_part(text: &str) -> &str {
    text.find("LUKS header information")
        .map_or("", |i| &text[i..])
}

/// `bifs inspect` agrees with `cryptsetup luksDump`: both succeed with identical dumps, or
/// both fail. Returns whether the header is valid. bifs runs first: luksDump may repair a
/// damaged copy on disk.
fn agree(img: &Path, what: &str) -> bool {
    let ours = bifs(os(&[&"inspect", &img]));
    let theirs = cryptsetup(os(&[&"luksDump", &img]));
    assert_eq!(
        ours.status.success(),
        theirs.status.success(),
        "{what}: bifs inspect and cryptsetup luksDump disagree on validity\n-- bifs:\n{}\n-- cryptsetup:\n{}",
        describe(&ours),
        describe(&theirs)
    );
    if theirs.status.success() {
        let (a, b) = (
            String::from_utf8_lossy(&ours.stdout),
            String::from_utf8_lossy(&theirs.stdout),
        );
        assert_eq!(
            dump_part(&a),
            b.as_ref(),
            "{what}: dump differs\n-- bifs:\n{a}\n-- cryptsetup:\n{b}"
        );
    } else {
        assert!(
            stderr_of(&ours).contains("LUKS header"),
            "{what}: bifs must say the LUKS header is at fault\n{}",
            describe(&ours)
        );
    }
    theirs.status.success()
}

fn assert_valid(img: &Path, what: &str) {
    assert!(
        agree(img, what),
        "{what}: expected a header cryptsetup loads"
    );
}

fn assert_invalid(img: &Path, what: &str) {
    assert!(
        !agree(img, what),
        "{what}: expected a header cryptsetup refuses"
    );
    // Never plain data: the image stays LUKS for every command.
    let o = bifs(os(&[&"inspect", &"--json", &img]));
    let j: Value = serde_json::from_slice(&o.stdout).unwrap_or(Value::Null);
    let format = j["format"].as_str().unwrap_or("");
    assert!(
        format.starts_with("luks"),
        "{what}: an invalid LUKS header must not be `{format}`\n{}",
        describe(&o)
    );
    assert!(
        j["luks_error"].is_string(),
        "{what}: inspect --json names the error\n{}",
        describe(&o)
    );
}

/// `cryptsetup open --test-passphrase` and `bifs decrypt` agree on `passphrase`. Returns the
/// plaintext bifs wrote when both open.
fn opens(case: &Case, img: &Path, passphrase: &str, what: &str) -> Option<PathBuf> {
    let theirs = test_passphrase(img, passphrase.as_bytes()).status.success();
    let ours = case.bifs_decrypt(img, passphrase);
    assert_eq!(
        ours.is_ok(),
        theirs,
        "{what}: bifs decrypt {:?} vs cryptsetup test-passphrase {theirs}",
        ours
    );
    ours.ok()
}

// =============================================================================================
// Valid headers: inspect prints what luksDump prints
// =============================================================================================

#[test]
fn valid_default_luks2() {
    full_tier_only!(NEEDS);
    let c = Case::new("default");
    let img = c.luks2();
    assert_valid(&img, "luksFormat luks2 argon2id");
    let out = opens(&c, &img, PASS, "right passphrase").unwrap();
    assert_eq!(file_len(&out), 4 * MIB);
    assert!(opens(&c, &img, OTHER, "wrong passphrase").is_none());
}

#[test]
fn valid_pbkdf2_label_subsystem_sha512() {
    full_tier_only!(NEEDS);
    let c = Case::new("pbkdf2");
    let img = c.format(
        "img",
        20 * MIB,
        &[
            "--type",
            "luks2",
            "--pbkdf",
            "pbkdf2",
            "--pbkdf-force-iterations",
            "1000",
            "--hash",
            "sha512",
            "--label",
            "my label",
            "--subsystem",
            "sub",
            "--key-size",
            "256",
            "--sector-size",
            "512",
        ],
    );
    assert_valid(&img, "pbkdf2 sha512 label subsystem");
    opens(&c, &img, PASS, "pbkdf2").unwrap();
}

#[test]
fn valid_luks1_with_two_keyslots() {
    full_tier_only!(NEEDS);
    let c = Case::new("luks1");
    let img = c.luks1();
    c.add_key(&img, OTHER, &[]);
    assert_valid(&img, "luks1");
    opens(&c, &img, OTHER, "luks1 keyslot 1").unwrap();
}

#[test]
fn valid_metadata_and_keyslots_sizes() {
    full_tier_only!(NEEDS);
    for (md, ks) in [
        ("16384", "262144"),
        ("65536", "1048576"),
        ("1048576", "262144"),
        ("4194304", "4194304"),
    ] {
        let c = Case::new("mdsize");
        let mut extra = vec![
            "--type",
            "luks2",
            "--luks2-metadata-size",
            md,
            "--luks2-keyslots-size",
            ks,
        ];
        extra.extend(CHEAP);
        let img = c.format("img", 32 * MIB, &extra);
        let what = format!("metadata {md} keyslots {ks}");
        assert_valid(&img, &what);
        opens(&c, &img, PASS, &what).unwrap();
    }
}

#[test]
fn valid_legacy_argon2_kdf_is_shown_but_not_opened() {
    full_tier_only!(NEEDS);
    let c = Case::new("argon2");
    let img = c.luks2();
    edit(&img, |v| {
        v["keyslots"]["0"]["kdf"]["type"] = json!("argon2")
    });
    assert_valid(&img, "kdf type argon2");
    let e = c.bifs_decrypt(&img, PASS).unwrap_err();
    assert!(e.contains("\"argon2\""), "the refusal names the KDF: {e}");
    assert!(opens(&c, &img, PASS, "argon2").is_none());
}

#[test]
fn valid_unknown_segment_type() {
    full_tier_only!(NEEDS);
    let c = Case::new("segtype");
    let img = c.luks2();
    edit(&img, |v| v["segments"]["0"]["type"] = json!("future"));
    assert_valid(&img, "segment type future");
    let e = c.bifs_decrypt(&img, PASS).unwrap_err();
    assert!(
        e.contains("\"future\""),
        "the refusal names the segment type: {e}"
    );
}

#[test]
fn valid_two_segments() {
    full_tier_only!(NEEDS);
    let c = Case::new("twoseg");
    let img = c.luks2();
    edit(&img, |v| {
        let mut second = v["segments"]["0"].clone();
        v["segments"]["0"]["size"] = json!("1048576");
        second["offset"] = json!((16 * MIB + MIB).to_string());
        v["segments"]["1"] = second;
        v["digests"]["0"]["segments"] = json!(["0", "1"]);
    });
    assert_valid(&img, "two segments");
    let e = c.bifs_decrypt(&img, PASS).unwrap_err();
    assert!(e.contains("2 data segments"), "{e}");
}

#[test]
fn valid_tokens_flags_and_priorities() {
    full_tier_only!(NEEDS);
    let c = Case::new("tokens");
    let img = c.luks2();
    c.add_key(&img, OTHER, &[]);
    let o = cryptsetup(os(&[
        &"token",
        &"add",
        &"--key-description",
        &"bifs:test",
        &"--key-slot",
        &"1",
        &img,
    ]));
    assert_ok(&o, "token add");
    assert_ok(
        &cryptsetup(os(&[
            &"config",
            &"--priority",
            &"prefer",
            &"--key-slot",
            &"1",
            &img,
        ])),
        "prio",
    );
    edit(&img, |v| {
        v["tokens"]["5"] = json!({"type": "future-token", "keyslots": ["0", "1"], "x": {"y": [1]}});
        v["config"]["flags"] = json!(["allow-discards", "no-journal"]);
        v["segments"]["0"]["flags"] = json!(["a-flag", "b"]);
    });
    assert_valid(&img, "tokens, config and segment flags, priority");
    let e = c.bifs_decrypt(&img, OTHER).unwrap_err();
    assert!(e.contains("segment flags"), "{e}");
}

#[test]
fn valid_ignored_priority_is_never_tried() {
    full_tier_only!(NEEDS);
    let c = Case::new("ignored");
    let img = c.luks2();
    c.add_key(&img, OTHER, &[]);
    assert_ok(
        &cryptsetup(os(&[
            &"config",
            &"--priority",
            &"ignore",
            &"--key-slot",
            &"1",
            &img,
        ])),
        "prio",
    );
    assert_valid(&img, "priority ignore");
    assert!(opens(&c, &img, OTHER, "ignored keyslot").is_none());
    opens(&c, &img, PASS, "normal keyslot").unwrap();
}

#[test]
fn valid_unknown_requirement() {
    full_tier_only!(NEEDS);
    let c = Case::new("reqs");
    let img = c.luks2();
    edit(&img, |v| {
        v["config"]["requirements"] = json!({"mandatory": ["future-requirement"]})
    });
    if agree(&img, "unknown requirement") {
        assert!(c
            .bifs_decrypt(&img, PASS)
            .unwrap_err()
            .contains("future-requirement"));
    }
}

// =============================================================================================
// Unbound keyslots never open the data
// =============================================================================================

#[test]
fn unbound_keyslot_is_a_wrong_passphrase() {
    full_tier_only!(NEEDS);
    let c = Case::new("unbound");
    let img = c.luks2();
    let keyfile = c.path("unbound-key");
    fs::write(&keyfile, OTHER).unwrap();
    let o = cryptsetup_stdin(
        os(&[
            &"-q",
            &"luksAddKey",
            &"--unbound",
            &"--key-size",
            &"256",
            &"--pbkdf",
            &"pbkdf2",
            &"--pbkdf-force-iterations",
            &"1000",
            &img,
            &keyfile,
        ]),
        b"",
    );
    assert_ok(&o, "luksAddKey --unbound");
    assert_valid(&img, "unbound keyslot");
    assert!(opens(&c, &img, OTHER, "unbound keyslot passphrase").is_none());
    let e = c.bifs_decrypt(&img, OTHER).unwrap_err();
    assert!(
        e.contains("no keyslot opens"),
        "a wrong passphrase, not another error: {e}"
    );
    opens(&c, &img, PASS, "bound keyslot").unwrap();
    let o = bifs(os(&[
        &"verify",
        &"--method",
        &"xts",
        &"--secret",
        &c.secret(OTHER),
        &img,
    ]));
    assert!(
        !o.status.success(),
        "verify must refuse the unbound passphrase\n{}",
        describe(&o)
    );
}

// =============================================================================================
// Invalid headers: both refuse
// =============================================================================================

fn invalid_edit(name: &'static str, f: impl FnOnce(&mut Value)) {
    let c = Case::new(name);
    let img = c.luks2();
    edit(&img, f);
    assert_invalid(&img, name);
    assert!(
        c.bifs_decrypt(&img, PASS).is_err(),
        "{name}: decrypt must refuse"
    );
}

/// Takes `field` out of the JSON object `obj` (a test edit of a header section).
fn remove_field(obj: &mut Value, field: &str) {
    obj.as_object_mut()
        .expect("the edited section is a JSON object")
        .remove(field);
}

#[test]
fn invalid_segment_without_encryption() {
    full_tier_only!(NEEDS);
    invalid_edit("no-encryption", |v| {
        remove_field(&mut v["segments"]["0"], "encryption")
    });
}

#[test]
fn invalid_segment_with_empty_encryption() {
    full_tier_only!(NEEDS);
    invalid_edit("empty-encryption", |v| {
        v["segments"]["0"]["encryption"] = json!("")
    });
}

#[test]
fn invalid_segment_without_iv_tweak() {
    full_tier_only!(NEEDS);
    invalid_edit("no-iv-tweak", |v| {
        remove_field(&mut v["segments"]["0"], "iv_tweak")
    });
}

#[test]
fn invalid_segment_without_sector_size() {
    full_tier_only!(NEEDS);
    invalid_edit("no-sector-size", |v| {
        remove_field(&mut v["segments"]["0"], "sector_size")
    });
}

#[test]
fn invalid_segment_offset_misaligned() {
    full_tier_only!(NEEDS);
    invalid_edit("seg-offset", |v| {
        v["segments"]["0"]["offset"] = json!("16777217")
    });
}

#[test]
fn invalid_u64_not_a_decimal_string() {
    full_tier_only!(NEEDS);
    invalid_edit("u64-number", |v| {
        v["segments"]["0"]["offset"] = json!(16777216)
    });
}

#[test]
fn invalid_digest_references_missing_keyslot() {
    full_tier_only!(NEEDS);
    invalid_edit("digest-keyslot", |v| {
        v["digests"]["0"]["keyslots"] = json!(["0", "7"])
    });
}

#[test]
fn invalid_digest_references_missing_segment() {
    full_tier_only!(NEEDS);
    invalid_edit("digest-segment", |v| {
        v["digests"]["0"]["segments"] = json!(["0", "3"])
    });
}

#[test]
fn invalid_token_references_missing_keyslot() {
    full_tier_only!(NEEDS);
    invalid_edit("token-keyslot", |v| {
        v["tokens"]["0"] = json!({"type": "t", "keyslots": ["9"]})
    });
}

#[test]
fn invalid_keyslot_without_digest() {
    full_tier_only!(NEEDS);
    invalid_edit("keyslot-no-digest", |v| {
        let mut k = v["keyslots"]["0"].clone();
        k["area"]["offset"] = json!((32768 + 258048).to_string());
        v["keyslots"]["1"] = k;
    });
}

#[test]
fn invalid_keyslot_with_two_digests() {
    full_tier_only!(NEEDS);
    invalid_edit("keyslot-two-digests", |v| {
        let mut d = v["digests"]["0"].clone();
        d["segments"] = json!([]);
        v["digests"]["1"] = d;
    });
}

#[test]
fn invalid_overlapping_areas() {
    full_tier_only!(NEEDS);
    invalid_edit("overlap", |v| {
        let mut k = v["keyslots"]["0"].clone();
        k["area"]["offset"] = json!("36864");
        v["keyslots"]["1"] = k;
        v["digests"]["0"]["keyslots"] = json!(["0", "1"]);
    });
}

#[test]
fn invalid_area_inside_the_header() {
    full_tier_only!(NEEDS);
    invalid_edit("area-in-header", |v| {
        v["keyslots"]["0"]["area"]["offset"] = json!("16384")
    });
}

#[test]
fn invalid_keyslots_size_unaligned() {
    full_tier_only!(NEEDS);
    invalid_edit("keyslots-size", |v| {
        v["config"]["keyslots_size"] = json!("16744447")
    });
}

#[test]
fn invalid_json_size_mismatch() {
    full_tier_only!(NEEDS);
    invalid_edit("json-size", |v| v["config"]["json_size"] = json!("28672"));
}

#[test]
fn invalid_pbkdf2_without_iterations() {
    full_tier_only!(NEEDS);
    invalid_edit("kdf-fields", |v| {
        v["keyslots"]["0"]["kdf"] = json!({"type": "pbkdf2", "hash": "sha256", "salt": "AAAA"});
    });
}

#[test]
fn invalid_bytes_after_the_json() {
    full_tier_only!(NEEDS);
    let c = Case::new("trailing");
    let img = c.luks2();
    let mut text = serde_json::to_vec(&read_json(&img)).unwrap();
    text.extend_from_slice(b"\0\0x");
    write_json_area(&img, &[0, 16384], &text);
    assert_invalid(&img, "non-NUL after the JSON");
}

#[test]
fn invalid_json_not_opening_with_a_brace() {
    full_tier_only!(NEEDS);
    let c = Case::new("brace");
    let img = c.luks2();
    let mut text = b" ".to_vec();
    text.extend(serde_json::to_vec(&read_json(&img)).unwrap());
    write_json_area(&img, &[0, 16384], &text);
    assert_invalid(&img, "JSON after a blank");
}

#[test]
fn invalid_luks2_image_too_small() {
    full_tier_only!(NEEDS);
    let c = Case::new("small2");
    let img = c.luks2();
    fs::OpenOptions::new()
        .write(true)
        .open(&img)
        .unwrap()
        .set_len(8 * MIB)
        .unwrap();
    assert_invalid(&img, "image shorter than its keyslots area");
}

// =============================================================================================
// Damaged copies: recovery from the secondary, and "LUKS, invalid" rather than raw
// =============================================================================================

#[test]
fn primary_wiped_is_recovered_at_every_metadata_size() {
    full_tier_only!(NEEDS);
    for md in ["16384", "32768", "131072", "524288", "2097152", "4194304"] {
        let c = Case::new("wiped");
        let mut extra = vec![
            "--type",
            "luks2",
            "--luks2-metadata-size",
            md,
            "--luks2-keyslots-size",
            "1048576",
        ];
        extra.extend(CHEAP);
        let img = c.format("img", 32 * MIB, &extra);
        let mut bytes = fs::read(&img).unwrap();
        bytes[..4096].fill(0);
        fs::write(&img, &bytes).unwrap();
        let j = bifs_inspect_json(&img);
        assert_eq!(
            j["format"], "luks2",
            "metadata {md}: a wiped primary is still LUKS2: {j}"
        );
        assert_eq!(j["luks"]["recovered_from_secondary"], true, "{j}");
        let what = format!("primary wiped, metadata {md}");
        // Decrypt before luksDump, which writes the recovered primary back.
        opens(&c, &img, PASS, &what).unwrap();
        assert_valid(&img, &what);
    }
}

#[test]
fn secondary_damaged_primary_used() {
    full_tier_only!(NEEDS);
    let c = Case::new("sec-damaged");
    let img = c.luks2();
    let mut bytes = fs::read(&img).unwrap();
    bytes[16384 + 5000] ^= 0x55;
    fs::write(&img, &bytes).unwrap();
    assert_valid(&img, "damaged secondary");
}

#[test]
fn newer_secondary_wins() {
    full_tier_only!(NEEDS);
    let c = Case::new("seqid");
    let img = c.luks2();
    let mut v = read_json(&img);
    v["keyslots"]["0"]["priority"] = json!(2);
    write_json_area(&img, &[16384], &serde_json::to_vec(&v).unwrap());
    let mut bytes = fs::read(&img).unwrap();
    bytes[16384 + 16..16384 + 24].copy_from_slice(&7u64.to_be_bytes());
    binary::fix_checksum_for_fuzzing(&mut bytes, 16384);
    fs::write(&img, &bytes).unwrap();
    assert_valid(&img, "secondary with a higher seqid");
}

#[test]
fn invalid_primary_and_secondary_is_luks_invalid_not_raw() {
    full_tier_only!(NEEDS);
    let c = Case::new("both-bad");
    let img = c.luks2();
    let mut bytes = fs::read(&img).unwrap();
    bytes[..4096].fill(0);
    bytes[16384 + 4096] = b'[';
    fs::write(&img, &bytes).unwrap();
    assert_invalid(&img, "wiped primary, secondary with broken JSON");
    // The mount/apply view of it: never plain data to encrypt again.
    let dst = c.path("enc");
    let o = bifs(os(&[&"encrypt", &"--secret", &c.secret(PASS), &img, &dst]));
    assert!(
        !o.status.success() && stderr_of(&o).contains("already encrypted"),
        "{}",
        describe(&o)
    );
}

#[test]
fn secondary_at_every_offset_is_detected() {
    full_tier_only!(NEEDS);
    let c = Case::new("offsets");
    let img = c.luks2();
    let bytes = fs::read(&img).unwrap();
    let secondary = bytes[16384..32768].to_vec();
    // A raw image with nothing but a copy of the secondary header, moved: at an illegal
    // offset it is not LUKS; at a legal one it is (and invalid there: its offset field says
    // 16384).
    for (off, luks) in [
        (16384usize, true),
        (65536, true),
        (4194304, true),
        (20480, false),
    ] {
        let mut raw = vec![0u8; 8 * MIB as usize];
        raw[off..off + secondary.len()].copy_from_slice(&secondary);
        let p = c.path("moved");
        fs::write(&p, &raw).unwrap();
        let o = bifs(os(&[&"inspect", &"--json", &p]));
        let j: Value = serde_json::from_slice(&o.stdout).unwrap_or(Value::Null);
        let format = j["format"].as_str().unwrap_or("").to_string();
        assert_eq!(
            format.starts_with("luks"),
            luks,
            "secondary magic at {off}: {format}\n{}",
            describe(&o)
        );
    }
}

// =============================================================================================
// LUKS1: cryptsetup's keyslot checks
// =============================================================================================

fn luks1_edit(name: &'static str, f: impl FnOnce(&mut Vec<u8>)) {
    let c = Case::new(name);
    let img = c.luks1();
    let mut bytes = fs::read(&img).unwrap();
    f(&mut bytes);
    fs::write(&img, &bytes).unwrap();
    assert_invalid(&img, name);
    assert!(
        c.bifs_decrypt(&img, PASS).is_err(),
        "{name}: decrypt must refuse"
    );
}

const KS: usize = 208;

#[test]
fn invalid_luks1_stripes_in_a_disabled_keyslot() {
    full_tier_only!(NEEDS);
    luks1_edit("l1-stripes", |b| {
        b[KS + 5 * 48 + 44..KS + 5 * 48 + 48].copy_from_slice(&3999u32.to_be_bytes())
    });
}

#[test]
fn invalid_luks1_material_overlaps_another_keyslot() {
    full_tier_only!(NEEDS);
    luks1_edit("l1-overlap", |b| {
        let first = b[KS + 40..KS + 44].to_vec();
        b[KS + 48 + 40..KS + 48 + 44]
            .copy_from_slice(&(u32::from_be_bytes(first.try_into().unwrap()) + 8).to_be_bytes());
    });
}

#[test]
fn invalid_luks1_material_in_payload() {
    full_tier_only!(NEEDS);
    luks1_edit("l1-payload", |b| {
        b[104..108].copy_from_slice(&1000u32.to_be_bytes())
    });
}

#[test]
fn invalid_luks1_material_in_header() {
    full_tier_only!(NEEDS);
    luks1_edit("l1-header", |b| {
        b[KS + 40..KS + 44].copy_from_slice(&1u32.to_be_bytes())
    });
}

#[test]
fn invalid_luks1_unknown_hash() {
    full_tier_only!(NEEDS);
    luks1_edit("l1-hash", |b| {
        b[72..104].fill(0);
        b[72..77].copy_from_slice(b"nohsh");
    });
}

#[test]
fn invalid_luks1_image_too_small() {
    full_tier_only!(NEEDS);
    let c = Case::new("l1-small");
    let img = c.luks1();
    fs::OpenOptions::new()
        .write(true)
        .open(&img)
        .unwrap()
        .set_len(MIB)
        .unwrap();
    assert_invalid(&img, "LUKS1 image shorter than its keyslots");
}

#[test]
fn valid_luks1_odd_keyslot_state_is_disabled() {
    full_tier_only!(NEEDS);
    let c = Case::new("l1-state");
    let img = c.luks1();
    let mut b = fs::read(&img).unwrap();
    b[KS + 3 * 48..KS + 3 * 48 + 4].copy_from_slice(&0x1234u32.to_be_bytes());
    fs::write(&img, &b).unwrap();
    assert_valid(&img, "LUKS1 keyslot state neither enabled nor disabled");
}

// =============================================================================================
// Data cryptsetup wrote: keyslots and metadata of every size decrypt exactly
// =============================================================================================

/// Offline `reencrypt --encrypt` of a known payload with the given metadata and keyslots
/// sizes; bifs must return the payload byte for byte.
#[test]
fn reencrypt_encrypt_decrypts_exactly() {
    full_tier_only!(NEEDS);
    for (md, ks, reduce) in [
        ("16384", "1048576", "4M"),
        ("262144", "4194304", "12M"),
        ("4194304", "1048576", "20M"),
    ] {
        let c = Case::new("reenc");
        let img = c.path("img");
        let reduce_bytes = reduce.trim_end_matches('M').parse::<u64>().unwrap() * MIB;
        random_file(&img, 40 * MIB, 42);
        let payload = c.path("payload");
        fs::copy(&img, &payload).unwrap();
        let mut a = os(&[
            &"-q",
            &"reencrypt",
            &"--encrypt",
            &"--type",
            &"luks2",
            &"--reduce-device-size",
            &reduce,
            &"--luks2-metadata-size",
            &md,
            &"--luks2-keyslots-size",
            &ks,
        ]);
        a.extend(CHEAP.map(OsString::from));
        a.extend(os(&[&"--key-file", &"-", &img]));
        let what = format!("reencrypt --encrypt metadata {md} keyslots {ks}");
        assert_ok(&cryptsetup_stdin(&a, PASS.as_bytes()), &what);
        assert_valid(&img, &what);
        let out = opens(&c, &img, PASS, &what).unwrap();
        // The device shrank by `reduce`: that much of the payload's tail is gone.
        let kept = 40 * MIB - reduce_bytes;
        let (plain, want) = (fs::read(&out).unwrap(), fs::read(&payload).unwrap());
        assert!(
            plain.len() as u64 >= kept,
            "{what}: {} bytes of data",
            plain.len()
        );
        let k = kept as usize;
        let first_diff = (0..k).find(|&i| plain[i] != want[i]);
        assert_eq!(
            first_diff, None,
            "{what}: the plaintext differs from the payload"
        );
    }
}

/// A keyslot whose area sits at the end of the keyslots area (cryptsetup opens any offset).
#[test]
fn keyslot_area_moved_to_the_end() {
    full_tier_only!(NEEDS);
    let c = Case::new("moved-area");
    let img = c.luks2();
    let v = read_json(&img);
    let size: u64 = v["keyslots"]["0"]["area"]["size"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    let new_off = 16 * MIB - size;
    let mut bytes = fs::read(&img).unwrap();
    let area = bytes[32768..32768 + size as usize].to_vec();
    bytes[new_off as usize..(new_off + size) as usize].copy_from_slice(&area);
    fs::write(&img, &bytes).unwrap();
    edit(&img, |v| {
        v["keyslots"]["0"]["area"]["offset"] = json!(new_off.to_string())
    });
    assert_valid(&img, "area at the end");
    opens(&c, &img, PASS, "area at the end").unwrap();
}
