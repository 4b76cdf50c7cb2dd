//! `bifs verify`: images made by `bifs encrypt` and by Debian's `cryptsetup` pass, and the check
//! demonstrably fails on a flipped ciphertext byte, a wrong passphrase and a different source.
//!
//! On machines without device-mapper (containers, CI) verify uses libcryptsetup's volume key and
//! the `xts-mode` crate; with device-mapper and root it reads a real dm-crypt mapping. The tests
//! expect whichever method this machine supports. Missing `cryptsetup` FAILS the tests that need
//! it (apt-get install cryptsetup-bin); nothing is skipped.

use std::fs;
use std::os::unix::fs::{FileExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use sha2::{Digest, Sha512};

const MIB: usize = 1 << 20;
const PASSPHRASE: &str = "correct horse battery staple";

struct Run {
    ok: bool,
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

impl Run {
    fn all(&self) -> String {
        format!("{}\n{}", self.stdout, self.stderr)
    }
}

impl std::fmt::Debug for Run {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "exit {:?}\n--- stdout\n{}--- stderr\n{}",
            self.code, self.stdout, self.stderr
        )
    }
}

fn run(cmd: &mut Command) -> Run {
    let out: Output = cmd.stdin(Stdio::null()).output().expect("spawn");
    Run {
        ok: out.status.success(),
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

fn bifs(args: &[&str]) -> Run {
    run(Command::new(crate::support::BIFS).args(args))
}

fn p(path: &Path) -> &str {
    path.to_str().expect("utf-8 temp path")
}

/// A Secret manifest with `passphrase` and extra CRYPTO_* entries, mode 0600 (bifs warns
/// about world-readable Secrets).
fn secret(dir: &Path, name: &str, passphrase: &str, extra: &[(&str, &str)]) -> PathBuf {
    let mut yaml = format!(
        "apiVersion: v1\nkind: Secret\nmetadata:\n  name: {name}\n  namespace: test\nstringData:\n  CRYPTO_KEY_VALUE: \"{passphrase}\"\n"
    );
    for (k, v) in extra {
        yaml.push_str(&format!("  {k}: \"{v}\"\n"));
    }
    let path = dir.join(format!("{name}.yaml"));
    fs::write(&path, yaml).expect("write secret");
    fs::set_permissions(&path, fs::Permissions::from_mode(0o600)).expect("chmod secret");
    path
}

const PBKDF2: &[(&str, &str)] = &[
    ("CRYPTO_PBKDF", "pbkdf2"),
    ("CRYPTO_PBKDF_FORCE_ITERATIONS", "1000"),
];

/// Deterministic non-repeating bytes with a zero run in the middle (a hole in the making).
fn payload(len: usize, seed: u64) -> Vec<u8> {
    let mut s = seed | 1;
    let mut v: Vec<u8> = (0..len)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            (s >> 24) as u8
        })
        .collect();
    let hole = len / 3..len / 3 + len / 5;
    v[hole].fill(0);
    v
}

fn sha512_hex(data: &[u8]) -> String {
    Sha512::digest(data)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Which method this machine gives verify, and the lines that say so.
fn assert_method(out: &Run) {
    if bifs_verify::dm_available() {
        assert!(out.stdout.contains("method: dm-crypt"), "{out:?}");
        assert!(out.stdout.contains("result: OK (dm-crypt)"), "{out:?}");
    } else {
        assert!(out.stdout.contains(bifs_verify::NO_DM_MESSAGE), "{out:?}");
        assert!(out.stdout.contains("method: xts"), "{out:?}");
        assert!(out.stdout.contains("result: OK (xts)"), "{out:?}");
    }
}

fn require_cryptsetup() {
    let ok = Command::new("cryptsetup")
        .arg("--version")
        .stdin(Stdio::null())
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    assert!(
        ok,
        "`cryptsetup` not found or not runnable (apt-get install cryptsetup-bin)"
    );
}

/// `bifs encrypt` of a fresh payload; returns (dir, secret, source, image, source bytes).
fn encrypted(
    len: usize,
    extra: &[(&str, &str)],
    sector_size: Option<&str>,
) -> (tempfile::TempDir, PathBuf, PathBuf, PathBuf, Vec<u8>) {
    let dir = tempfile::tempdir().expect("tempdir");
    let sec = secret(dir.path(), "vol", PASSPHRASE, extra);
    let data = payload(len, len as u64 ^ 0x5eed);
    let src = dir.path().join("src.raw");
    fs::write(&src, &data).expect("write source");
    let img = dir.path().join("enc.img");
    let mut args = vec!["encrypt", "--secret", p(&sec)];
    if let Some(s) = sector_size {
        args.extend(["--sector-size", s]);
    }
    args.extend([p(&src), p(&img)]);
    let out = bifs(&args);
    assert!(out.ok, "encrypt: {out:?}");
    (dir, sec, src, img, data)
}

/// A passing verify: method, keyslot, engine agreement, and the SHA-512 of the plaintext
/// (the source padded with zeros to the data segment's length).
fn check_passes(
    extra: &[(&str, &str)],
    len: usize,
    sector_size: Option<&str>,
    expect_sector: usize,
) {
    let (_dir, sec, src, img, data) = encrypted(len, extra, sector_size);
    let out = bifs(&["verify", "--secret", p(&sec), p(&img), "--against", p(&src)]);
    assert!(out.ok, "{out:?}");
    assert_method(&out);
    assert!(
        out.stdout
            .contains("passphrase: opens keyslot 0 (libcryptsetup)"),
        "{out:?}"
    );
    assert!(
        out.stdout.contains("bifs engine: same volume key"),
        "{out:?}"
    );
    assert!(
        out.stdout
            .contains(&format!("sector size {expect_sector},")),
        "{out:?}"
    );
    assert!(out.stdout.contains("data offset 16777216 bytes"), "{out:?}");
    assert!(
        out.stdout
            .contains(&format!("against {}: identical", src.display())),
        "{out:?}"
    );
    let mut plain = data.clone();
    plain.resize(len.div_ceil(expect_sector) * expect_sector, 0);
    assert!(
        out.stdout
            .contains(&format!("plaintext SHA-512: {}", sha512_hex(&plain))),
        "{out:?}"
    );
    if plain.len() > len {
        assert!(out.stdout.contains("not compared (all zeros)"), "{out:?}");
        assert!(out.stdout.contains(&format!(
            "compared part SHA-512 (first {len} bytes): {}",
            sha512_hex(&data)
        )));
    }
}

#[test]
fn bifs_image_pbkdf2_256_verifies() {
    check_passes(
        &[PBKDF2, &[("CRYPTO_KEY_SIZE", "256")]].concat(),
        2 * MIB,
        None,
        4096,
    );
}

#[test]
fn bifs_image_pbkdf2_512_unaligned_source_verifies() {
    // 1000 bytes past a MiB: 512-byte sectors, the last one zero-padded.
    check_passes(
        &[PBKDF2, &[("CRYPTO_KEY_SIZE", "512")]].concat(),
        2 * MIB + 1000,
        None,
        512,
    );
}

#[test]
fn bifs_image_argon2id_512_verifies() {
    let argon = [
        ("CRYPTO_KEY_SIZE", "512"),
        ("CRYPTO_PBKDF", "argon2id"),
        ("CRYPTO_PBKDF_MEMORY", "64"),
        ("CRYPTO_PBKDF_FORCE_ITERATIONS", "4"),
    ];
    check_passes(&argon, 2 * MIB, Some("512"), 512);
}

#[test]
fn bifs_image_argon2id_256_sector_4096_verifies() {
    let argon = [
        ("CRYPTO_KEY_SIZE", "256"),
        ("CRYPTO_PBKDF", "argon2id"),
        ("CRYPTO_PBKDF_MEMORY", "64"),
        ("CRYPTO_PBKDF_FORCE_ITERATIONS", "4"),
    ];
    check_passes(&argon, MIB, Some("4096"), 4096);
}

#[test]
fn without_against_prints_the_plaintext_sha512() {
    let (_dir, sec, _src, img, data) = encrypted(MIB, PBKDF2, None);
    let out = bifs(&["verify", "--secret", p(&sec), p(&img)]);
    assert!(out.ok, "{out:?}");
    assert_method(&out);
    assert!(
        out.stdout
            .contains(&format!("plaintext SHA-512: {}", sha512_hex(&data))),
        "{out:?}"
    );
    assert!(!out.stdout.contains("against"), "{out:?}");
}

#[test]
fn cryptsetup_reencrypt_image_verifies_against_its_payload() {
    full_tier_only!("cryptsetup");
    require_cryptsetup();
    let dir = tempfile::tempdir().expect("tempdir");
    let sec = secret(dir.path(), "re", PASSPHRASE, &[]);
    let key = dir.path().join("key");
    fs::write(&key, PASSPHRASE).expect("key file");
    // cryptsetup's in-place encryption: the payload, then the 16 MiB it may take for the
    // header. The plaintext of the result starts with the payload.
    let data = payload(3 * MIB, 77);
    let img = dir.path().join("re.img");
    let mut image = data.clone();
    image.resize(data.len() + 16 * MIB, 0);
    fs::write(&img, &image).expect("write image");
    let src = dir.path().join("payload.raw");
    fs::write(&src, &data).expect("write payload");
    let cs = run(Command::new("cryptsetup").args([
        "reencrypt",
        "--batch-mode",
        "--encrypt",
        "--type",
        "luks2",
        "--reduce-device-size",
        "16M",
        "--pbkdf",
        "pbkdf2",
        "--pbkdf-force-iterations",
        "1000",
        "--key-file",
        p(&key),
        p(&img),
    ]));
    assert!(cs.ok, "cryptsetup reencrypt: {cs:?}");

    let out = bifs(&["verify", "--secret", p(&sec), p(&img), "--against", p(&src)]);
    assert!(out.ok, "{out:?}");
    assert_method(&out);
    assert!(
        out.stdout.contains("bifs engine: same volume key"),
        "{out:?}"
    );
    assert!(
        out.stdout
            .contains(&format!("against {}: identical", src.display())),
        "{out:?}"
    );
    let want = format!(
        "compared part SHA-512 (first {} bytes): {}",
        data.len(),
        sha512_hex(&data)
    );
    assert!(out.stdout.contains(&want), "{out:?}");

    // Forcing the independent XTS path works everywhere and agrees.
    let xts = bifs(&[
        "verify",
        "--method",
        "xts",
        "--secret",
        p(&sec),
        p(&img),
        "--against",
        p(&src),
    ]);
    assert!(
        xts.ok && xts.stdout.contains("result: OK (xts)") && xts.stdout.contains(&want),
        "{xts:?}"
    );
}

#[test]
fn cryptsetup_luks1_image_agrees_with_bifs_decrypt() {
    full_tier_only!("cryptsetup");
    require_cryptsetup();
    let dir = tempfile::tempdir().expect("tempdir");
    let sec = secret(dir.path(), "l1", PASSPHRASE, &[]);
    let key = dir.path().join("key");
    fs::write(&key, PASSPHRASE).expect("key file");
    let img = dir.path().join("l1.img");
    fs::write(&img, vec![0u8; 3 * MIB]).expect("write image");
    let cs = run(Command::new("cryptsetup").args([
        "luksFormat",
        "--batch-mode",
        "--type",
        "luks1",
        "--pbkdf-force-iterations",
        "1000",
        "--key-file",
        p(&key),
        p(&img),
    ]));
    assert!(cs.ok, "cryptsetup luksFormat: {cs:?}");
    let dec = dir.path().join("l1.dec");
    let d = bifs(&["decrypt", "--secret", p(&sec), p(&img), p(&dec)]);
    assert!(d.ok, "{d:?}");
    let plain = fs::read(&dec).expect("read decrypted");
    let out = bifs(&["verify", "--secret", p(&sec), p(&img), "--against", p(&dec)]);
    assert!(out.ok, "{out:?}");
    assert!(
        out.stdout.contains("header (libcryptsetup): LUKS1"),
        "{out:?}"
    );
    assert!(
        out.stdout
            .contains(&format!("plaintext SHA-512: {}", sha512_hex(&plain))),
        "{out:?}"
    );
}

#[test]
fn flipped_ciphertext_byte_fails_at_the_right_offset() {
    let (_dir, sec, src, img, data) = encrypted(2 * MIB, PBKDF2, Some("4096"));
    // Byte 100 of sector 37 of the data segment. XTS garbles only the 16-byte block holding it,
    // so the first plaintext difference lies in [37*4096 + 96, 37*4096 + 112).
    let sector = 37u64;
    let at = 16 * MIB as u64 + sector * 4096 + 100;
    let f = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&img)
        .expect("open image");
    let mut b = [0u8; 1];
    f.read_exact_at(&mut b, at).expect("read byte");
    f.write_all_at(&[b[0] ^ 0x01], at).expect("flip byte");
    drop(f);

    // The exact expected offset: the first byte that differs in bifs's own decryption.
    let dec = img.with_extension("dec");
    let d = bifs(&["decrypt", "--secret", p(&sec), p(&img), p(&dec)]);
    assert!(d.ok, "{d:?}");
    let plain = fs::read(&dec).expect("read decrypted");
    let first = plain
        .iter()
        .zip(&data)
        .position(|(a, b)| a != b)
        .expect("decryption differs") as u64;
    let block = sector * 4096 + 96;
    assert!(
        (block..block + 16).contains(&first),
        "first difference {first} outside the flipped block"
    );

    let out = bifs(&["verify", "--secret", p(&sec), p(&img), "--against", p(&src)]);
    assert!(!out.ok, "a flipped ciphertext byte must fail: {out:?}");
    assert_eq!(out.code, Some(1), "{out:?}");
    assert!(out.stdout.contains("result: FAILED"), "{out:?}");
    let msg = format!("plaintext differs from SOURCE at offset {first}");
    assert!(
        out.stdout.contains(&msg) && out.stderr.contains(&msg),
        "{out:?}"
    );
}

#[test]
fn wrong_passphrase_fails_clearly_without_printing_it() {
    full_tier_only!("cryptsetup");
    let (dir, _sec, src, img, _data) = encrypted(MIB, PBKDF2, None);
    let wrong_words = "tr0ub4dor and three";
    let wrong = secret(dir.path(), "wrong", wrong_words, PBKDF2);
    // Debug logging on: libcryptsetup's own messages must not leak either passphrase.
    for log in ["info", "trace"] {
        let out = bifs(&[
            "--log",
            log,
            "verify",
            "--secret",
            p(&wrong),
            p(&img),
            "--against",
            p(&src),
        ]);
        assert!(!out.ok, "{out:?}");
        assert!(out.stderr.contains("wrong passphrase"), "{out:?}");
        assert!(
            !out.all().contains(wrong_words),
            "passphrase printed: {out:?}"
        );
        assert!(
            !out.all().contains(PASSPHRASE),
            "passphrase printed: {out:?}"
        );
        assert!(!out.stdout.contains("result: OK"), "{out:?}");
    }
}

#[test]
fn different_source_is_a_mismatch() {
    let (dir, sec, _src, img, data) = encrypted(MIB, PBKDF2, None);
    // One byte off deep inside: named exactly.
    let mut near = data.clone();
    near[777_777] ^= 0x80;
    let near_path = dir.path().join("near.raw");
    fs::write(&near_path, &near).expect("write");
    let out = bifs(&[
        "verify",
        "--secret",
        p(&sec),
        p(&img),
        "--against",
        p(&near_path),
    ]);
    assert!(!out.ok, "{out:?}");
    assert!(
        out.stderr
            .contains("plaintext differs from SOURCE at offset 777777"),
        "{out:?}"
    );

    // Another payload altogether.
    let other = dir.path().join("other.raw");
    fs::write(&other, payload(MIB, 999)).expect("write");
    let out = bifs(&[
        "verify",
        "--secret",
        p(&sec),
        p(&img),
        "--against",
        p(&other),
    ]);
    assert!(!out.ok, "{out:?}");
    assert!(out.stdout.contains("MISMATCH"), "{out:?}");

    // A longer source: the plaintext ends first.
    let mut longer = data.clone();
    longer.extend_from_slice(&[1u8; 4096]);
    let longer_path = dir.path().join("longer.raw");
    fs::write(&longer_path, &longer).expect("write");
    let out = bifs(&[
        "verify",
        "--secret",
        p(&sec),
        p(&img),
        "--against",
        p(&longer_path),
    ]);
    assert!(!out.ok, "{out:?}");
    assert!(
        out.stderr.contains(&format!("it ends at offset {}", MIB)),
        "{out:?}"
    );
}

#[test]
fn not_luks_and_forced_dm_crypt_are_clear_errors() {
    let dir = tempfile::tempdir().expect("tempdir");
    let sec = secret(dir.path(), "s", PASSPHRASE, PBKDF2);
    let raw = dir.path().join("plain.raw");
    fs::write(&raw, payload(MIB, 3)).expect("write");
    let out = bifs(&["verify", "--secret", p(&sec), p(&raw)]);
    assert!(!out.ok, "{out:?}");
    assert!(
        out.stderr.contains("does not recognize a LUKS header"),
        "{out:?}"
    );

    if !bifs_verify::dm_available() {
        let (_d, sec, _src, img, _data) = encrypted(MIB, PBKDF2, None);
        let out = bifs(&[
            "verify",
            "--method",
            "dm-crypt",
            "--secret",
            p(&sec),
            p(&img),
        ]);
        assert!(!out.ok, "{out:?}");
        assert!(
            out.stderr.contains("device-mapper: not available"),
            "{out:?}"
        );
    }
}

#[test]
fn qcow2_source_is_compared_by_its_virtual_disk() {
    full_tier_only!("qemu-img");
    let ok = Command::new("qemu-img")
        .arg("--version")
        .stdin(Stdio::null())
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    assert!(
        ok,
        "`qemu-img` not found or not runnable (apt-get install qemu-utils)"
    );
    let (dir, sec, src, img, _data) = encrypted(MIB, PBKDF2, None);
    let qcow = dir.path().join("src.qcow2");
    let q = run(Command::new("qemu-img").args([
        "convert",
        "-f",
        "raw",
        "-O",
        "qcow2",
        p(&src),
        p(&qcow),
    ]));
    assert!(q.ok, "qemu-img convert: {q:?}");
    let out = bifs(&[
        "verify",
        "--secret",
        p(&sec),
        p(&img),
        "--against",
        p(&qcow),
    ]);
    assert!(out.ok, "{out:?}");
    assert!(
        out.stdout
            .contains(&format!("against {}: identical", qcow.display())),
        "{out:?}"
    );
}
