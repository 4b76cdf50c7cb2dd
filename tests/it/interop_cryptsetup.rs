//! Interop with the real tools: Debian's cryptsetup (LUKS2, LUKS1), qemu-img (LUKS1, qcow2) and
//! an independent AES-XTS implementation (Python `cryptography`, tests/oracle/luks_xts.py).
//!
//! Every test calls `require_tools()` first: a missing cryptsetup / qemu-img / python3 +
//! cryptography FAILS the test with an install hint, it never passes silently.

use crate::support::common::*;
use serde_json::Value;
use std::ffi::OsStr;
use std::fs;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

/// What these tests need beyond bifs (the full tier, scripts/test.sh).
const NEEDS: &str = "cryptsetup, qemu-img and python3-cryptography (the AES-XTS oracle)";

const WRONG_PASSPHRASE: &str = "Wr0ng-Horse-Battery-Staple-4471";

fn passphrase_for(case: &Case) -> String {
    // Spaces, '=', ':' and '#' exercise YAML quoting and exact-bytes passphrase handling.
    format!("pass: {} #{}", case.tag(), case.key_bits)
}

/// Runs `bifs encrypt` and asserts success.
fn bifs_encrypt(secret: &Path, sector: Option<u32>, src: &Path, dst: &Path, what: &str) {
    let mut args = vec![
        OsStr::new("encrypt").to_owned(),
        "--secret".into(),
        secret.as_os_str().to_owned(),
    ];
    if let Some(sector) = sector {
        args.push("--sector-size".into());
        args.push(sector.to_string().into());
    }
    args.push(src.as_os_str().to_owned());
    args.push(dst.as_os_str().to_owned());
    let o = bifs(&args);
    assert_ok(&o, &format!("{what}: bifs encrypt {}", src.display()));
    assert!(
        dst.exists(),
        "{what}: bifs encrypt succeeded but {} is missing",
        dst.display()
    );
}

/// Runs `bifs decrypt` and asserts success.
fn bifs_decrypt(secret: &Path, src: &Path, dst: &Path, what: &str) {
    let o = bifs([
        OsStr::new("decrypt"),
        OsStr::new("--secret"),
        secret.as_os_str(),
        src.as_os_str(),
        dst.as_os_str(),
    ]);
    assert_ok(&o, &format!("{what}: bifs decrypt {}", src.display()));
    assert!(
        dst.exists(),
        "{what}: bifs decrypt succeeded but {} is missing",
        dst.display()
    );
}

fn s(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

// =============================================================================================
// 0. The harness itself: the oracle agrees with cryptsetup
// =============================================================================================

/// For all 24 cases, a cryptsetup-made LUKS2 image (untrimmed: payload + zero tail) decrypted by
/// the Python oracle with the volume key from `luksDump --dump-volume-key` equals the payload;
/// same for qemu-img and cryptsetup LUKS1 images. Proves the oracle and the image helpers.
fn oracle_decrypts_cryptsetup_images(case: &Case) {
    full_tier_only!(NEEDS);
    require_tools();
    let dir = tempdir("oracle");
    let payload = dir.path().join("payload.raw");
    standard_payload(&payload, 1);
    let what = case.to_string();
    let img = make_luks2_with_cryptsetup(
        dir.path(),
        &case.tag(),
        &payload,
        case,
        &passphrase_for(case),
        false,
    );
    let meta = luks2_json(&img.path);
    let sector = meta["segments"]["0"]["sector_size"].as_u64().unwrap() as u32;
    assert_eq!(sector, case.sector, "{what}: sector size in header");
    let key = volume_key(&img.path, &img.keyfile);
    assert_eq!(
        key.len() * 8,
        case.key_bits as usize,
        "{what}: volume key length"
    );
    let out = dir.path().join(format!("{}.oracle", case.tag()));
    let seg_len = file_len(&img.path) - img.data_offset;
    assert_eq!(
        seg_len,
        file_len(&payload) + 8 * MIB,
        "{what}: segment length"
    );
    assert_eq!(img.unwritten_tail, 8 * MIB, "{what}: unwritten tail");
    oracle_decrypt(&img.path, &out, &key, img.data_offset, sector, seg_len);
    assert_prefix(
        &out,
        &payload,
        seg_len,
        &format!("{what}: oracle vs payload"),
    );
    // Sanity: the ciphertext is not the plaintext (cryptsetup really encrypted it).
    let mut head = [0u8; 64];
    fs::File::open(&img.path)
        .unwrap()
        .read_exact_at(&mut head, img.data_offset)
        .unwrap();
    let mut phead = [0u8; 64];
    fs::File::open(&payload)
        .unwrap()
        .read_exact_at(&mut phead, 0)
        .unwrap();
    assert_ne!(head, phead, "{what}: data segment is not encrypted");
    fs::remove_file(&out).unwrap();
    fs::remove_file(&img.path).unwrap();
}
matrix_tests!(oracle_decrypts_cryptsetup_images);

/// The LUKS1 half of the above: qemu-img and cryptsetup LUKS1 images.
fn oracle_decrypts_luks1_images(which: &&str) {
    full_tier_only!(NEEDS);
    require_tools();
    let dir = tempdir("oracle");
    let payload = dir.path().join("payload.raw");
    standard_payload(&payload, 1);
    let pass = format!("luks1 {which}");
    let img = match *which {
        "qemu aes-128 sha256" => {
            make_luks1_with_qemu(dir.path(), "q128", &payload, "aes-128", "sha256", &pass)
        }
        _ => make_luks1_with_cryptsetup(dir.path(), "c1", &payload, 512, "sha1", &pass),
    };
    let key = volume_key(&img.path, &img.keyfile);
    let out = img.path.with_extension("oracle");
    oracle_decrypt(
        &img.path,
        &out,
        &key,
        img.data_offset,
        512,
        file_len(&img.path) - img.data_offset,
    );
    assert_same(&out, &payload, 0, &format!("{which}: oracle vs payload"));
}
per_case_tests!(oracle_decrypts_luks1_images:
    qemu_aes128_sha256 => "qemu aes-128 sha256",
    cryptsetup_luks1_512_sha1 => "cryptsetup luks1 512 sha1",
);

// =============================================================================================
// 1. Real cryptsetup / qemu-img -> bifs decrypt
// =============================================================================================

/// 24 cases: cryptsetup `reencrypt --encrypt --type luks2 --reduce-device-size 16M` image ->
/// `bifs decrypt` with the matching Secret. sha256 cases are trimmed so the data segment is the
/// payload: output == payload exactly. sha512 cases are left as cryptsetup made them (segment =
/// payload + 8 MiB never written by cryptsetup): output == payload ++ the oracle's decryption of
/// that tail, i.e. the whole segment, byte for byte.
fn cryptsetup_luks2_to_bifs_decrypt(case: &Case) {
    full_tier_only!(NEEDS);
    require_tools();
    let dir = tempdir("cs2bifs");
    let payload = dir.path().join("payload.raw");
    standard_payload(&payload, 2);
    let what = case.to_string();
    let pass = passphrase_for(case);
    let trim = case.hash == "sha256";
    let img = make_luks2_with_cryptsetup(dir.path(), &case.tag(), &payload, case, &pass, trim);
    let secret = write_secret(
        dir.path(),
        &case.tag(),
        &SecretParams::for_case(case, &pass),
    );
    let out = dir.path().join(format!("{}.plain", case.tag()));
    bifs_decrypt(&secret, &img.path, &out, &what);
    if trim {
        assert_same(
            &out,
            &payload,
            0,
            &format!("{what} (trimmed): bifs decrypt vs payload"),
        );
    } else {
        let seg_len = file_len(&img.path) - img.data_offset;
        assert_prefix(
            &out,
            &payload,
            seg_len,
            &format!("{what} (untrimmed): bifs decrypt vs payload"),
        );
        let key = volume_key(&img.path, &img.keyfile);
        let oracle = dir.path().join(format!("{}.oracle", case.tag()));
        oracle_decrypt(
            &img.path,
            &oracle,
            &key,
            img.data_offset,
            case.sector,
            seg_len,
        );
        assert_same(
            &out,
            &oracle,
            0,
            &format!("{what} (untrimmed): bifs decrypt vs oracle, whole segment"),
        );
        fs::remove_file(&oracle).unwrap();
    }
    fs::remove_file(&out).unwrap();
    fs::remove_file(&img.path).unwrap();
}
matrix_tests!(cryptsetup_luks2_to_bifs_decrypt);

/// LUKS1 images from `qemu-img convert -O luks` (aes-256 and aes-128 XTS, plain64, sha256; plus
/// aes-256/sha512) and from cryptsetup (`--type luks1`, sha1) -> `bifs decrypt` == original.
fn luks1_to_bifs_decrypt(which: &&str) {
    full_tier_only!(NEEDS);
    require_tools();
    let dir = tempdir("luks1");
    let payload = dir.path().join("payload.raw");
    // Not a multiple of 4096 (LUKS1 sectors are 512): 1 MiB random, 100 KiB hole, 2.5 KiB random.
    payload_file(
        &payload,
        3,
        &[
            Region::Random(MIB),
            Region::Zero(100 * KIB),
            Region::Random(2560),
        ],
    );
    let pass = format!("LUKS1 {which}");
    let (img, hash) = match *which {
        "qemu aes-256 sha256" => (
            make_luks1_with_qemu(dir.path(), "q256", &payload, "aes-256", "sha256", &pass),
            "sha256",
        ),
        "qemu aes-128 sha256" => (
            make_luks1_with_qemu(dir.path(), "q128", &payload, "aes-128", "sha256", &pass),
            "sha256",
        ),
        "qemu aes-256 sha512" => (
            make_luks1_with_qemu(dir.path(), "q256s512", &payload, "aes-256", "sha512", &pass),
            "sha512",
        ),
        _ => (
            make_luks1_with_cryptsetup(dir.path(), "c1", &payload, 256, "sha1", &pass),
            "sha1",
        ),
    };
    let stem = img.path.file_stem().unwrap().to_str().unwrap().to_string();
    let secret = write_secret(
        dir.path(),
        &stem,
        &SecretParams {
            hash: Some(hash.into()),
            pbkdf: Some("pbkdf2".into()),
            ..SecretParams::cheap(&pass)
        },
    );
    let out = dir.path().join(format!("{stem}.plain"));
    bifs_decrypt(&secret, &img.path, &out, which);
    assert_same(
        &out,
        &payload,
        0,
        &format!("{which}: bifs decrypt of LUKS1"),
    );
}
per_case_tests!(luks1_to_bifs_decrypt:
    qemu_aes256_sha256 => "qemu aes-256 sha256",
    qemu_aes128_sha256 => "qemu aes-128 sha256",
    qemu_aes256_sha512 => "qemu aes-256 sha512",
    cryptsetup_luks1_key256_sha1 => "cryptsetup luks1 key=256 sha1",
);

/// LUKS2 headers cryptsetup can make that differ from the default layout, all -> `bifs decrypt`:
/// (a) 64 KiB metadata areas, 4 MiB keyslots area, label and subsystem;
/// (b) several keyslots with different KDFs, the first one killed, unlocking through slot 5;
///     plus a token (JSON the reader must tolerate); the old passphrase is then refused.
#[test]
fn cryptsetup_header_variants_to_bifs_decrypt() {
    full_tier_only!(NEEDS);
    require_tools();
    let dir = tempdir("variants");
    let payload = dir.path().join("payload.raw");
    standard_payload(&payload, 21);

    // (a)
    let case = Case {
        key_bits: 512,
        sector: 4096,
        kdf: "argon2i",
        hash: "sha256",
    };
    let what = format!(
        "(a) --luks2-metadata-size 64k --luks2-keyslots-size 4M --label --subsystem, {case}"
    );
    let pass = passphrase_for(&case);
    let extra = [
        "--luks2-metadata-size",
        "64k",
        "--luks2-keyslots-size",
        "4M",
        "--label",
        "bifs-label",
        "--subsystem",
        "bifs-sub",
    ];
    let img = make_luks2_with_cryptsetup_ext(
        dir.path(),
        "big-meta",
        &payload,
        &case,
        &pass,
        true,
        &extra,
    );
    assert_eq!(
        luks2_hdr_size(&img.path),
        64 * KIB,
        "{what}: fixture header size"
    );
    let secret = write_secret(
        dir.path(),
        "big-meta",
        &SecretParams::for_case(&case, &pass),
    );
    let out = dir.path().join("big-meta.plain");
    bifs_decrypt(&secret, &img.path, &out, &what);
    assert_same(&out, &payload, 0, &what);
    let j = bifs_inspect_json(&img.path);
    assert_eq!(
        s(&j["luks"]["uuid"]),
        luks_uuid(&img.path),
        "{what}: inspect uuid: {j}"
    );

    // (b)
    let case = Case {
        key_bits: 256,
        sector: 512,
        kdf: "pbkdf2",
        hash: "sha512",
    };
    let what = format!("(b) keyslots 0 killed, 2 (argon2id), 5 (pbkdf2 sha1) + token, {case}");
    let pass0 = passphrase_for(&case);
    let img = make_luks2_with_cryptsetup(dir.path(), "slots", &payload, &case, &pass0, true);
    let k2 = write_keyfile(dir.path(), "slot2", "second passphrase");
    let k5 = write_keyfile(dir.path(), "slot5", "fifth passphrase");
    let add = |slot: &str, newkey: &Path, kdf: &[&str]| {
        let mut a = vec![
            "luksAddKey",
            "--batch-mode",
            "--key-file",
            img.keyfile.to_str().unwrap(),
            "--key-slot",
            slot,
        ];
        a.extend_from_slice(kdf);
        a.extend([img.path.to_str().unwrap(), newkey.to_str().unwrap()]);
        assert_ok(
            &cryptsetup(&a),
            &format!("{what}: cryptsetup luksAddKey slot {slot}"),
        );
    };
    add(
        "2",
        &k2,
        &[
            "--pbkdf",
            "argon2id",
            "--pbkdf-memory",
            "64",
            "--pbkdf-force-iterations",
            "5",
        ],
    );
    add(
        "5",
        &k5,
        &[
            "--pbkdf",
            "pbkdf2",
            "--hash",
            "sha1",
            "--pbkdf-force-iterations",
            "1200",
        ],
    );
    let token = dir.path().join("token.json");
    write_file(
        &token,
        br#"{"type":"bifs-test-token","keyslots":["5"],"note":"ignored by readers"}"#,
    );
    assert_ok(
        &cryptsetup([
            "token",
            "import",
            "--token-id",
            "3",
            "--json-file",
            token.to_str().unwrap(),
            img.path.to_str().unwrap(),
        ]),
        &format!("{what}: cryptsetup token import"),
    );
    assert_ok(
        &cryptsetup([
            "luksKillSlot",
            "--batch-mode",
            img.path.to_str().unwrap(),
            "0",
        ]),
        &format!("{what}: cryptsetup luksKillSlot 0"),
    );
    for (p, slot) in [("fifth passphrase", 5), ("second passphrase", 2)] {
        let secret = write_secret(dir.path(), &format!("slot{slot}"), &SecretParams::cheap(p));
        let out = dir.path().join(format!("slot{slot}.plain"));
        bifs_decrypt(
            &secret,
            &img.path,
            &out,
            &format!("{what}: via slot {slot}"),
        );
        assert_same(&out, &payload, 0, &format!("{what}: via slot {slot}"));
    }
    let j = bifs_inspect_json(&img.path);
    let ids: Vec<u64> = j["luks"]["keyslots"]
        .as_array()
        .unwrap_or_else(|| panic!("{what}: inspect keyslots: {j}"))
        .iter()
        .map(|k| k["id"].as_u64().unwrap())
        .collect();
    assert_eq!(ids, vec![2, 5], "{what}: inspect keyslot ids: {j}");
    let old = write_secret(dir.path(), "slot0", &SecretParams::cheap(&pass0));
    let dst = dir.path().join("out").join("killed.plain");
    fs::create_dir(dst.parent().unwrap()).unwrap();
    expect_refusal(
        &format!("{what}: passphrase of the killed slot 0"),
        &args(&[&"decrypt", &"--secret", &old, &img.path, &dst]),
        &dst,
        &["passphrase", "keyslot", "key slot"],
        &[&pass0],
    );
}

// =============================================================================================
// 2. bifs encrypt -> real cryptsetup + oracle
// =============================================================================================

/// Checks one bifs-made LUKS2 image against cryptsetup and the oracle:
/// (a) size == plaintext size + 16 MiB, (b) luksDump / JSON metadata fields,
/// (c) --test-passphrase right/wrong, (d) oracle decryption == source (+ `zero_tail` zeros).
#[allow(clippy::too_many_arguments)] // each argument is one fact about the image under test
fn check_bifs_image(
    dst: &Path,
    src_plain: &Path,
    zero_tail: u64,
    case: &Case,
    pass: &str,
    costs: Option<(Option<u32>, u32)>,
    keyfile_dir: &Path,
    what: &str,
) {
    // (a)
    let plain_len = file_len(src_plain) + zero_tail;
    assert_eq!(
        file_len(dst),
        plain_len + LUKS2_HEADER_SIZE,
        "{what}: (a) output size must be plaintext size {plain_len} + 16 MiB"
    );
    // (b)
    let o = cryptsetup([OsStr::new("luksDump"), dst.as_os_str()]);
    assert_ok(&o, &format!("{what}: (b) cryptsetup luksDump"));
    let o = cryptsetup([
        OsStr::new("isLuks"),
        OsStr::new("--type"),
        OsStr::new("luks2"),
        dst.as_os_str(),
    ]);
    assert_ok(&o, &format!("{what}: (b) cryptsetup isLuks --type luks2"));
    let m = luks2_json(dst);
    let seg = &m["segments"]["0"];
    assert_eq!(s(&seg["type"]), "crypt", "{what}: (b) segment type: {seg}");
    assert_eq!(
        s(&seg["encryption"]),
        "aes-xts-plain64",
        "{what}: (b) segment cipher: {seg}"
    );
    assert_eq!(
        s(&seg["offset"]),
        "16777216",
        "{what}: (b) segment offset: {seg}"
    );
    assert_eq!(
        seg["sector_size"].as_u64(),
        Some(case.sector as u64),
        "{what}: (b) sector_size: {seg}"
    );
    assert_eq!(s(&seg["iv_tweak"]), "0", "{what}: (b) iv_tweak: {seg}");
    let seg_size = s(&seg["size"]);
    assert!(
        seg_size == "dynamic" || seg_size == plain_len.to_string(),
        "{what}: (b) segment size must be \"dynamic\" or {plain_len}: {seg}"
    );
    let slots = m["keyslots"].as_object().unwrap();
    assert_eq!(
        slots.len(),
        1,
        "{what}: (b) expected exactly one keyslot: {}",
        m["keyslots"]
    );
    let ks = &m["keyslots"]["0"];
    assert!(
        ks.is_object(),
        "{what}: (b) keyslot 0 missing: {}",
        m["keyslots"]
    );
    assert_eq!(s(&ks["type"]), "luks2", "{what}: (b) keyslot type: {ks}");
    assert_eq!(
        ks["key_size"].as_u64(),
        Some(case.key_bits as u64 / 8),
        "{what}: (b) keyslot key_size: {ks}"
    );
    assert_eq!(s(&ks["af"]["type"]), "luks1", "{what}: (b) af type: {ks}");
    assert_eq!(
        ks["af"]["stripes"].as_u64(),
        Some(4000),
        "{what}: (b) af stripes: {ks}"
    );
    assert_eq!(s(&ks["af"]["hash"]), case.hash, "{what}: (b) af hash: {ks}");
    assert_eq!(
        s(&ks["area"]["encryption"]),
        "aes-xts-plain64",
        "{what}: (b) area cipher: {ks}"
    );
    assert_eq!(
        s(&ks["kdf"]["type"]),
        case.kdf,
        "{what}: (b) kdf type: {ks}"
    );
    if let Some((mem, iters)) = costs {
        if case.kdf == "pbkdf2" {
            assert_eq!(
                s(&ks["kdf"]["hash"]),
                case.hash,
                "{what}: (b) pbkdf2 hash: {ks}"
            );
            assert_eq!(
                ks["kdf"]["iterations"].as_u64(),
                Some(iters as u64),
                "{what}: (b) pbkdf2 iterations: {ks}"
            );
        } else {
            assert_eq!(
                ks["kdf"]["time"].as_u64(),
                Some(iters as u64),
                "{what}: (b) argon2 time: {ks}"
            );
            assert_eq!(
                ks["kdf"]["memory"].as_u64(),
                mem.map(u64::from),
                "{what}: (b) argon2 memory: {ks}"
            );
        }
    }
    let digests = m["digests"].as_object().unwrap();
    assert_eq!(
        digests.len(),
        1,
        "{what}: (b) expected one digest: {}",
        m["digests"]
    );
    let dg = digests.values().next().unwrap();
    assert_eq!(s(&dg["type"]), "pbkdf2", "{what}: (b) digest type: {dg}");
    assert_eq!(s(&dg["hash"]), case.hash, "{what}: (b) digest hash: {dg}");
    let refs = |v: &Value| {
        v.as_array()
            .map(|a| a.iter().map(s).collect::<Vec<_>>())
            .unwrap_or_default()
    };
    assert_eq!(
        refs(&dg["keyslots"]),
        vec!["0"],
        "{what}: (b) digest keyslots: {dg}"
    );
    assert_eq!(
        refs(&dg["segments"]),
        vec!["0"],
        "{what}: (b) digest segments: {dg}"
    );

    // (c)
    let o = test_passphrase(dst, pass.as_bytes());
    assert_ok(
        &o,
        &format!("{what}: (c) cryptsetup open --test-passphrase with the right passphrase"),
    );
    let o = test_passphrase(dst, WRONG_PASSPHRASE.as_bytes());
    assert!(
        !o.status.success(),
        "{what}: (c) cryptsetup accepted a WRONG passphrase\n{}",
        describe(&o)
    );

    // (d)
    let keyfile = write_keyfile(keyfile_dir, &format!("{}-dst", case.tag()), pass);
    let key = volume_key(dst, &keyfile);
    assert_eq!(
        key.len() * 8,
        case.key_bits as usize,
        "{what}: (d) volume key size"
    );
    let out = dst.with_extension("oracle");
    oracle_decrypt(dst, &out, &key, LUKS2_HEADER_SIZE, case.sector, plain_len);
    assert_same(
        &out,
        src_plain,
        zero_tail,
        &format!("{what}: (d) oracle decryption vs source"),
    );
    fs::remove_file(&out).unwrap();
}

/// 24 cases: `bifs encrypt --sector-size S` with a Secret carrying key size / KDF / hash and cheap
/// costs -> (a)..(d) of `check_bifs_image`, plus (e) `bifs decrypt` of the result == source.
fn bifs_encrypt_to_cryptsetup(case: &Case) {
    full_tier_only!(NEEDS);
    require_tools();
    let dir = tempdir("bifs2cs");
    let what = case.to_string();
    let pass = passphrase_for(case);
    let src = dir.path().join(format!("{}.raw", case.tag()));
    standard_payload(&src, 100 + case.key_bits as u64 + case.sector as u64);
    let secret = write_secret(
        dir.path(),
        &case.tag(),
        &SecretParams::for_case(case, &pass),
    );
    let dst = dir.path().join(format!("{}.luks2", case.tag()));
    bifs_encrypt(&secret, Some(case.sector), &src, &dst, &what);
    check_bifs_image(
        &dst,
        &src,
        0,
        case,
        &pass,
        Some(case.cheap_costs()),
        dir.path(),
        &what,
    );
    // (e)
    let back = dir.path().join(format!("{}.back", case.tag()));
    bifs_decrypt(&secret, &dst, &back, &what);
    assert_same(
        &back,
        &src,
        0,
        &format!("{what}: (e) bifs decrypt of bifs encrypt"),
    );
    for p in [&src, &dst, &back] {
        fs::remove_file(p).unwrap();
    }
}
matrix_tests!(bifs_encrypt_to_cryptsetup);

/// A source whose size is not a multiple of 512 is padded: output = roundup512(src) + 16 MiB,
/// default sector size 512, plaintext = source + zeros; cryptsetup opens it.
#[test]
fn bifs_encrypt_unaligned_source() {
    full_tier_only!(NEEDS);
    require_tools();
    let dir = tempdir("unaligned");
    let case = Case {
        key_bits: 512,
        sector: 512,
        kdf: "argon2id",
        hash: "sha256",
    };
    let what = format!("unaligned source (1 MiB + 1000 bytes), {case}");
    let pass = passphrase_for(&case);
    let src = dir.path().join("odd.raw");
    payload_file(
        &src,
        7,
        &[
            Region::Random(MIB - 4096),
            Region::Zero(4096),
            Region::Random(1000),
        ],
    );
    let len = file_len(&src);
    assert_ne!(len % 512, 0);
    let pad = len.next_multiple_of(512) - len;
    let secret = write_secret(dir.path(), "odd", &SecretParams::for_case(&case, &pass));
    let dst = dir.path().join("odd.luks2");
    bifs_encrypt(&secret, None, &src, &dst, &what);
    check_bifs_image(
        &dst,
        &src,
        pad,
        &case,
        &pass,
        Some(case.cheap_costs()),
        dir.path(),
        &what,
    );
    let back = dir.path().join("odd.back");
    bifs_decrypt(&secret, &dst, &back, &what);
    assert_same(
        &back,
        &src,
        pad,
        &format!("{what}: bifs decrypt (padded plaintext)"),
    );
}

/// Without --sector-size: 4096 when the data size is a multiple of 4096, else 512.
#[test]
fn bifs_encrypt_default_sector_size() {
    full_tier_only!(NEEDS);
    require_tools();
    let dir = tempdir("defsector");
    for (size, expect) in [(MIB, 4096u64), (MIB + 512, 512), (MIB + 4096 + 1, 512)] {
        let what = format!("default sector size for a {size}-byte source");
        let src = dir.path().join(format!("{size}.raw"));
        random_file(&src, size, size);
        let pass = "default sector";
        let secret = write_secret(dir.path(), &format!("{size}"), &SecretParams::cheap(pass));
        let dst = dir.path().join(format!("{size}.luks2"));
        bifs_encrypt(&secret, None, &src, &dst, &what);
        let m = luks2_json(&dst);
        assert_eq!(
            m["segments"]["0"]["sector_size"].as_u64(),
            Some(expect),
            "{what}: segment {}",
            m["segments"]["0"]
        );
        assert_eq!(
            file_len(&dst),
            size.next_multiple_of(512) + LUKS2_HEADER_SIZE,
            "{what}: output size"
        );
        assert_ok(
            &test_passphrase(&dst, pass.as_bytes()),
            &format!("{what}: cryptsetup --test-passphrase"),
        );
    }
}

/// A qcow2 source (with a hole) is flattened: output = virtual size + 16 MiB and its plaintext
/// (by the oracle) is the raw content.
#[test]
fn bifs_encrypt_qcow2_source() {
    full_tier_only!(NEEDS);
    require_tools();
    let dir = tempdir("qcow2src");
    let case = Case {
        key_bits: 256,
        sector: 4096,
        kdf: "pbkdf2",
        hash: "sha256",
    };
    let what = format!("qcow2 source, {case}");
    let raw = dir.path().join("src.raw");
    standard_payload(&raw, 11);
    let qcow = dir.path().join("src.qcow2");
    make_qcow2_of(&raw, &qcow);
    let pass = passphrase_for(&case);
    let secret = write_secret(dir.path(), "q", &SecretParams::for_case(&case, &pass));
    let dst = dir.path().join("q.luks2");
    bifs_encrypt(&secret, Some(4096), &qcow, &dst, &what);
    check_bifs_image(
        &dst,
        &raw,
        0,
        &case,
        &pass,
        Some(case.cheap_costs()),
        dir.path(),
        &what,
    );
}

/// A bifs image is a normal LUKS2 device for cryptsetup's management commands: luksAddKey
/// (room in the keyslots area), offline re-key (`reencrypt --force-offline-reencrypt`: new
/// volume key, new keyslot/digest ids), after which `bifs decrypt` still yields the source.
#[test]
fn bifs_image_managed_by_cryptsetup() {
    full_tier_only!(NEEDS);
    require_tools();
    let dir = tempdir("managed");
    let case = Case {
        key_bits: 512,
        sector: 4096,
        kdf: "argon2id",
        hash: "sha256",
    };
    let what = format!("bifs image managed by cryptsetup, {case}");
    let pass = passphrase_for(&case);
    let src = dir.path().join("src.raw");
    standard_payload(&src, 31);
    let secret = write_secret(dir.path(), "orig", &SecretParams::for_case(&case, &pass));
    let dst = dir.path().join("dst.luks2");
    bifs_encrypt(&secret, Some(4096), &src, &dst, &what);
    let key = write_keyfile(dir.path(), "orig", &pass);
    let newkey = write_keyfile(dir.path(), "added", "added passphrase");
    let p = |x: &Path| x.to_str().unwrap().to_string();
    assert_ok(
        &cryptsetup([
            "luksAddKey",
            "--batch-mode",
            "--key-file",
            &p(&key),
            "--pbkdf",
            "pbkdf2",
            "--pbkdf-force-iterations",
            "1000",
            &p(&dst),
            &p(&newkey),
        ]),
        &format!("{what}: cryptsetup luksAddKey"),
    );
    assert_ok(
        &test_passphrase(&dst, b"added passphrase"),
        &format!("{what}: added passphrase opens"),
    );
    let before = volume_key(&dst, &key);
    assert_ok(
        &cryptsetup([
            "reencrypt",
            "--batch-mode",
            "--force-offline-reencrypt",
            "--key-file",
            &p(&key),
            "--key-slot",
            "0",
            "--pbkdf",
            "pbkdf2",
            "--pbkdf-force-iterations",
            "1000",
            &p(&dst),
        ]),
        &format!("{what}: cryptsetup reencrypt (offline re-key)"),
    );
    let after = volume_key(&dst, &key);
    assert_ne!(
        before, after,
        "{what}: re-key did not change the volume key"
    );
    let out = dir.path().join("after.plain");
    bifs_decrypt(
        &secret,
        &dst,
        &out,
        &format!("{what}: after cryptsetup re-key"),
    );
    assert_same(&out, &src, 0, &format!("{what}: after cryptsetup re-key"));
}

// =============================================================================================
// 3. cryptsetup's default argon2 cost
// =============================================================================================

/// A Secret without CRYPTO_PBKDF_MEMORY / CRYPTO_PBKDF_FORCE_ITERATIONS (the documented Longhorn
/// example) -> the result opens with `cryptsetup open --test-passphrase` (and not with a wrong
/// passphrase). Slow: real argon2i cost on both sides.
#[test]
fn bifs_encrypt_default_argon2_cost_opens_with_cryptsetup() {
    full_tier_only!(NEEDS);
    require_tools();
    let dir = tempdir("defcost");
    let what = "default argon2i cost (no CRYPTO_PBKDF_MEMORY / FORCE_ITERATIONS)";
    let pass = "Simple passphrase";
    let src = dir.path().join("src.raw");
    random_file(&src, 256 * KIB, 42);
    let secret = write_secret(dir.path(), "default", &SecretParams::new(pass));
    let dst = dir.path().join("dst.luks2");
    let t = std::time::Instant::now();
    bifs_encrypt(&secret, None, &src, &dst, what);
    eprintln!("{what}: bifs encrypt took {:?}", t.elapsed());
    let m = luks2_json(&dst);
    let kdf = &m["keyslots"]["0"]["kdf"];
    eprintln!("{what}: keyslot kdf = {kdf}");
    assert_eq!(s(&kdf["type"]), "argon2i", "{what}: kdf {kdf}");
    let t = std::time::Instant::now();
    assert_ok(
        &test_passphrase(&dst, pass.as_bytes()),
        &format!("{what}: cryptsetup --test-passphrase"),
    );
    eprintln!(
        "{what}: cryptsetup open --test-passphrase took {:?}",
        t.elapsed()
    );
    let key = volume_key(&dst, &write_keyfile(dir.path(), "default", pass));
    let out = dir.path().join("dst.oracle");
    oracle_decrypt(&dst, &out, &key, LUKS2_HEADER_SIZE, 4096, file_len(&src));
    assert_same(&out, &src, 0, &format!("{what}: oracle decryption"));
}

// =============================================================================================
// 4. Refusals
// =============================================================================================

/// Runs bifs with `args` (whose DST is `dst`), expecting a refusal: non-zero exit, stderr
/// containing one of `any_of` (case-insensitive; empty = any non-empty message), none of
/// `forbidden`, DST absent, and DST's directory unchanged (no temp files).
#[track_caller]
fn expect_refusal<S: AsRef<OsStr>>(
    what: &str,
    args: &[S],
    dst: &Path,
    any_of: &[&str],
    forbidden: &[&str],
) {
    let dst_dir = dst.parent().unwrap();
    let existed = dst.exists();
    let before_content = if existed {
        Some(fs::read(dst).unwrap())
    } else {
        None
    };
    let before = dir_entries(dst_dir);
    let o = bifs(args);
    let err = stderr_of(&o);
    assert!(
        !o.status.success(),
        "{what}: bifs should have failed but exited 0\n{}",
        describe(&o)
    );
    assert_ne!(
        o.status.code(),
        None,
        "{what}: bifs died from a signal\n{}",
        describe(&o)
    );
    assert!(
        !err.trim().is_empty(),
        "{what}: no error message on stderr\n{}",
        describe(&o)
    );
    let lower = err.to_lowercase();
    assert!(
        any_of.is_empty() || any_of.iter().any(|w| lower.contains(&w.to_lowercase())),
        "{what}: stderr should mention one of {any_of:?}\n{}",
        describe(&o)
    );
    let stdout = String::from_utf8_lossy(&o.stdout);
    for f in forbidden {
        assert!(
            !err.contains(f) && !stdout.contains(f),
            "{what}: output leaks {f:?}\n{}",
            describe(&o)
        );
    }
    match before_content {
        None => assert!(
            !dst.exists(),
            "{what}: DST {} was left behind",
            dst.display()
        ),
        Some(c) => assert!(
            fs::read(dst).map(|now| now == c).unwrap_or(false),
            "{what}: pre-existing DST {} was modified or removed",
            dst.display()
        ),
    }
    assert_no_leftovers(dst_dir, &before, what);
}

/// Common fixture for refusals: an input dir with a payload, a cryptsetup LUKS2 image, a qemu
/// LUKS1 image and matching Secret; an empty output dir.
struct Fixture {
    _dir: tempfile::TempDir,
    payload: PathBuf,
    luks2: ToolImage,
    luks1: ToolImage,
    secret: PathBuf,
    pass: String,
    out: PathBuf,
}

fn fixture(name: &str) -> Fixture {
    let dir = tempdir(name);
    let input = dir.path().join("in");
    let out = dir.path().join("out");
    fs::create_dir(&input).unwrap();
    fs::create_dir(&out).unwrap();
    let payload = input.join("payload.raw");
    payload_file(
        &payload,
        5,
        &[Region::Random(512 * KIB), Region::Zero(512 * KIB)],
    );
    let case = Case {
        key_bits: 256,
        sector: 4096,
        kdf: "argon2id",
        hash: "sha256",
    };
    let pass = "Simple passphrase".to_string();
    let luks2 = make_luks2_with_cryptsetup(&input, "cs", &payload, &case, &pass, true);
    let luks1 = make_luks1_with_cryptsetup(&input, "c1", &payload, 512, "sha256", &pass);
    let secret = write_secret(&input, "secret", &SecretParams::for_case(&case, &pass));
    Fixture {
        _dir: dir,
        payload,
        luks2,
        luks1,
        secret,
        pass,
        out,
    }
}

fn args(v: &[&dyn AsRef<OsStr>]) -> Vec<std::ffi::OsString> {
    v.iter().map(|a| a.as_ref().to_owned()).collect()
}

#[test]
fn refuse_encrypt_of_luks_image() {
    full_tier_only!(NEEDS);
    require_tools();
    let f = fixture("refuse-enc-luks");
    for (which, img) in [
        ("LUKS2 (cryptsetup)", &f.luks2.path),
        ("LUKS1 (cryptsetup)", &f.luks1.path),
    ] {
        let dst = f.out.join("dst.img");
        expect_refusal(
            &format!("encrypt of a {which} image"),
            &args(&[&"encrypt", &"--secret", &f.secret, img, &dst]),
            &dst,
            &["already encrypted"],
            &[],
        );
    }
}

#[test]
fn refuse_decrypt_of_plain_image() {
    full_tier_only!(NEEDS);
    require_tools();
    let f = fixture("refuse-dec-plain");
    let qcow = f.payload.with_extension("qcow2");
    make_qcow2_of(&f.payload, &qcow);
    for (which, img) in [("raw", &f.payload), ("qcow2", &qcow)] {
        let dst = f.out.join("dst.img");
        expect_refusal(
            &format!("decrypt of a {which} image"),
            &args(&[&"decrypt", &"--secret", &f.secret, img, &dst]),
            &dst,
            &["not encrypted"],
            &[],
        );
    }
}

#[test]
fn refuse_wrong_passphrase() {
    full_tier_only!(NEEDS);
    require_tools();
    let f = fixture("refuse-wrongpass");
    let input = f.secret.parent().unwrap();
    let wrong = write_secret(input, "wrong", &SecretParams::cheap(WRONG_PASSPHRASE));
    for (which, img) in [
        ("LUKS2 (cryptsetup)", &f.luks2.path),
        ("LUKS1 (cryptsetup)", &f.luks1.path),
    ] {
        let dst = f.out.join("dst.img");
        expect_refusal(
            &format!("decrypt of a {which} image with a wrong passphrase"),
            &args(&[&"decrypt", &"--secret", &wrong, img, &dst]),
            &dst,
            &["passphrase", "keyslot", "key slot"],
            &[WRONG_PASSPHRASE, &f.pass],
        );
    }
}

#[test]
fn refuse_unsupported_cipher() {
    full_tier_only!(NEEDS);
    require_tools();
    let f = fixture("refuse-cipher");
    let input = f.secret.parent().unwrap();
    for cipher in [
        "aes-cbc-essiv:sha256",
        "serpent-xts-plain64",
        "aes-xts-plain",
    ] {
        let secret = write_secret(
            input,
            &format!("cipher-{}", cipher.replace(':', "_")),
            &SecretParams {
                cipher: Some(cipher.into()),
                ..SecretParams::cheap(&f.pass)
            },
        );
        let dst = f.out.join("dst.img");
        expect_refusal(
            &format!("encrypt with CRYPTO_KEY_CIPHER={cipher}"),
            &args(&[&"encrypt", &"--secret", &secret, &f.payload, &dst]),
            &dst,
            &["unsupported cipher"],
            &[&f.pass],
        );
    }
}

/// A real LUKS2 image whose cipher is not aes-xts-plain64 (cryptsetup, aes-cbc-essiv:sha256)
/// cannot be decrypted: refused as an unsupported LUKS header naming the cipher, nothing left at DST.
#[test]
fn refuse_decrypt_of_unsupported_cipher_image() {
    full_tier_only!(NEEDS);
    require_tools();
    let f = fixture("refuse-cbc");
    let input = f.secret.parent().unwrap();
    let img = input.join("cbc.luks2");
    fs::File::create(&img)
        .unwrap()
        .set_len(16 * MIB + MIB)
        .unwrap();
    let o = cryptsetup([
        OsStr::new("luksFormat"),
        OsStr::new("--type"),
        OsStr::new("luks2"),
        OsStr::new("--cipher"),
        OsStr::new("aes-cbc-essiv:sha256"),
        OsStr::new("--key-size"),
        OsStr::new("256"),
        OsStr::new("--pbkdf"),
        OsStr::new("pbkdf2"),
        OsStr::new("--pbkdf-force-iterations"),
        OsStr::new("1000"),
        OsStr::new("--batch-mode"),
        OsStr::new("--key-file"),
        f.luks2.keyfile.as_os_str(),
        img.as_os_str(),
    ]);
    assert_ok(
        &o,
        "fixture: cryptsetup luksFormat --cipher aes-cbc-essiv:sha256",
    );
    let dst = f.out.join("dst.img");
    expect_refusal(
        "decrypt of a LUKS2 aes-cbc-essiv:sha256 image",
        &args(&[&"decrypt", &"--secret", &f.secret, &img, &dst]),
        &dst,
        &["unsupported LUKS header: cipher \"aes-cbc-essiv:sha256\" (bifs supports only aes-xts-plain64)"],
        &[&f.pass],
    );
}

#[test]
fn refuse_unknown_key_provider() {
    full_tier_only!(NEEDS);
    require_tools();
    let f = fixture("refuse-provider");
    let input = f.secret.parent().unwrap();
    let secret = write_secret(
        input,
        "vault",
        &SecretParams {
            provider: Some("vault".into()),
            ..SecretParams::cheap(&f.pass)
        },
    );
    let dst = f.out.join("dst.img");
    expect_refusal(
        "encrypt with CRYPTO_KEY_PROVIDER=vault",
        &args(&[&"encrypt", &"--secret", &secret, &f.payload, &dst]),
        &dst,
        &["provider"],
        &[&f.pass],
    );
    expect_refusal(
        "decrypt with CRYPTO_KEY_PROVIDER=vault",
        &args(&[&"decrypt", &"--secret", &secret, &f.luks2.path, &dst]),
        &dst,
        &["provider"],
        &[&f.pass],
    );
}

#[test]
fn refuse_truncated_header() {
    full_tier_only!(NEEDS);
    require_tools();
    let f = fixture("refuse-trunc");
    let img = f.out.parent().unwrap().join("in/truncated.luks2");
    fs::copy(&f.luks2.path, &img).unwrap();
    fs::OpenOptions::new()
        .write(true)
        .open(&img)
        .unwrap()
        .set_len(8 * KIB)
        .unwrap();
    let dst = f.out.join("dst.img");
    expect_refusal(
        "decrypt of a LUKS2 image truncated to 8 KiB",
        &args(&[&"decrypt", &"--secret", &f.secret, &img, &dst]),
        &dst,
        &[],
        &[&f.pass],
    );
}

/// Flips bytes in the JSON area of the primary header (at 4096) and/or of the secondary header
/// (at hdr_size + 4096).
fn corrupt_json(src: &Path, dst: &Path, primary: bool, secondary: bool) {
    fs::copy(src, dst).unwrap();
    let hdr = luks2_hdr_size(dst);
    assert_eq!(
        hdr,
        16 * KIB,
        "cryptsetup's default LUKS2 header size changed"
    );
    let f = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(dst)
        .unwrap();
    let mut targets = Vec::new();
    if primary {
        targets.push(4096 + 2);
    }
    if secondary {
        targets.push(hdr + 4096 + 2);
    }
    for off in targets {
        let mut b = [0u8; 4];
        f.read_exact_at(&mut b, off).unwrap();
        for x in &mut b {
            *x ^= 0x20;
        }
        f.write_all_at(&b, off).unwrap();
    }
}

#[test]
fn refuse_corrupt_header() {
    full_tier_only!(NEEDS);
    require_tools();
    let f = fixture("refuse-corrupt");
    let img = f.out.parent().unwrap().join("in/corrupt.luks2");
    corrupt_json(&f.luks2.path, &img, true, true);
    // The corruption must be fatal for cryptsetup too, or the fixture is wrong.
    let o = cryptsetup([OsStr::new("luksDump"), img.as_os_str()]);
    assert!(
        !o.status.success(),
        "fixture: cryptsetup still reads the corrupted header\n{}",
        describe(&o)
    );
    let dst = f.out.join("dst.img");
    expect_refusal(
        "decrypt of a LUKS2 image with both JSON areas corrupted",
        &args(&[&"decrypt", &"--secret", &f.secret, &img, &dst]),
        &dst,
        &[],
        &[&f.pass],
    );
}

/// Like cryptsetup, a reader should fall back to the secondary header when only the primary
/// JSON area is corrupt (LUKS2 on-disk format spec, "header recovery").
#[test]
fn decrypt_with_only_primary_header_corrupt() {
    full_tier_only!(NEEDS);
    require_tools();
    let f = fixture("primary-corrupt");
    let img = f.out.parent().unwrap().join("in/primary-corrupt.luks2");
    corrupt_json(&f.luks2.path, &img, true, false);
    let o = test_passphrase(&img, f.pass.as_bytes());
    assert_ok(
        &o,
        "fixture: cryptsetup opens an image whose primary header is corrupt",
    );
    let dst = f.out.join("dst.img");
    bifs_decrypt(
        &f.secret,
        &img,
        &dst,
        "decrypt with only the primary JSON area corrupted",
    );
    assert_same(
        &dst,
        &f.payload,
        0,
        "decrypt with only the primary JSON area corrupted",
    );
}

#[test]
fn refuse_existing_dst_without_force() {
    full_tier_only!(NEEDS);
    require_tools();
    let f = fixture("refuse-exists");
    let sentinel = b"precious data, do not overwrite\n";

    // encrypt
    let dst = f.out.join("enc.img");
    write_file(&dst, sentinel);
    let enc = args(&[&"encrypt", &"--secret", &f.secret, &f.payload, &dst]);
    expect_refusal(
        "encrypt onto an existing DST without --force",
        &enc,
        &dst,
        &["exist"],
        &[],
    );
    let o = bifs(args(&[
        &"encrypt",
        &"--secret",
        &f.secret,
        &"--force",
        &f.payload,
        &dst,
    ]));
    assert_ok(&o, "encrypt onto an existing DST with --force");
    assert_eq!(
        file_len(&dst),
        file_len(&f.payload) + LUKS2_HEADER_SIZE,
        "encrypt --force: size"
    );
    assert_ok(
        &test_passphrase(&dst, f.pass.as_bytes()),
        "encrypt --force: cryptsetup --test-passphrase",
    );

    // decrypt
    let dst = f.out.join("dec.img");
    write_file(&dst, sentinel);
    let dec = args(&[&"decrypt", &"--secret", &f.secret, &f.luks2.path, &dst]);
    expect_refusal(
        "decrypt onto an existing DST without --force",
        &dec,
        &dst,
        &["exist"],
        &[],
    );
    let o = bifs(args(&[
        &"decrypt",
        &"--secret",
        &f.secret,
        &"--force",
        &f.luks2.path,
        &dst,
    ]));
    assert_ok(&o, "decrypt onto an existing DST with --force");
    assert_same(&dst, &f.payload, 0, "decrypt --force");
}

// =============================================================================================
// Secret manifest variants (positive)
// =============================================================================================

/// base64 `data:`, empty / missing CRYPTO_KEY_PROVIDER, and a multi-document manifest selected
/// with --secret-name are all accepted; a --secret-name that matches nothing is refused.
#[test]
fn secret_manifest_variants() {
    full_tier_only!(NEEDS);
    require_tools();
    let f = fixture("secret-variants");
    let input = f.secret.parent().unwrap().to_path_buf();
    let base = SecretParams::cheap(&f.pass);
    let variants: Vec<(&str, PathBuf, Option<&str>)> = vec![
        (
            "base64 data",
            write_secret(
                &input,
                "b64",
                &SecretParams {
                    encoding: SecretEncoding::Data,
                    ..base.clone()
                },
            ),
            None,
        ),
        (
            "empty provider",
            write_secret(
                &input,
                "emptyprov",
                &SecretParams {
                    provider: Some(String::new()),
                    ..base.clone()
                },
            ),
            None,
        ),
        (
            "no provider",
            write_secret(
                &input,
                "noprov",
                &SecretParams {
                    provider: None,
                    ..base.clone()
                },
            ),
            None,
        ),
        (
            "multi-document, second selected",
            write_secret_docs(
                &input,
                "multi",
                &[
                    SecretParams {
                        name: "other".into(),
                        ..SecretParams::cheap(WRONG_PASSPHRASE)
                    },
                    SecretParams {
                        name: "right".into(),
                        namespace: "ns2".into(),
                        ..base.clone()
                    },
                ],
            ),
            Some("ns2/right"),
        ),
    ];
    for (what, secret, name) in &variants {
        let mut a = args(&[&"decrypt", &"--secret", secret]);
        if let Some(n) = name {
            a.push("--secret-name".into());
            a.push(n.into());
        }
        let dst = f
            .out
            .join(format!("{}.plain", what.replace([' ', ','], "_")));
        a.push(f.luks2.path.clone().into());
        a.push(dst.clone().into());
        let o = bifs(&a);
        assert_ok(&o, &format!("decrypt with a Secret: {what}"));
        assert_same(
            &dst,
            &f.payload,
            0,
            &format!("decrypt with a Secret: {what}"),
        );

        let enc = f
            .out
            .join(format!("{}.luks2", what.replace([' ', ','], "_")));
        let mut a = args(&[&"encrypt", &"--secret", secret]);
        if let Some(n) = name {
            a.push("--secret-name".into());
            a.push(n.into());
        }
        a.push(f.payload.clone().into());
        a.push(enc.clone().into());
        assert_ok(&bifs(&a), &format!("encrypt with a Secret: {what}"));
        assert_ok(
            &test_passphrase(&enc, f.pass.as_bytes()),
            &format!("encrypt with a Secret: {what}: cryptsetup"),
        );
    }
    let multi = &variants[3].1;
    let dst = f.out.join("nomatch.plain");
    expect_refusal(
        "--secret-name matching no document",
        &args(&[
            &"decrypt",
            &"--secret",
            multi,
            &"--secret-name",
            &"nope/missing",
            &f.luks2.path,
            &dst,
        ]),
        &dst,
        &[],
        &[&f.pass, WRONG_PASSPHRASE],
    );
}

// =============================================================================================
// 5. inspect --json
// =============================================================================================

#[test]
fn inspect_json_raw() {
    full_tier_only!(NEEDS);
    require_tools();
    let f = fixture("inspect-raw");
    let j = bifs_inspect_json(&f.payload);
    assert_eq!(s(&j["format"]), "raw", "inspect raw: {j}");
    assert_eq!(
        j["size"].as_u64(),
        Some(file_len(&f.payload)),
        "inspect raw: size: {j}"
    );
    assert!(
        j.get("luks").is_none_or(Value::is_null),
        "inspect raw: luks must be absent/null: {j}"
    );
}

#[test]
fn inspect_json_qcow2() {
    full_tier_only!(NEEDS);
    require_tools();
    let f = fixture("inspect-qcow2");
    let input = f.secret.parent().unwrap().to_path_buf();
    // qcow2 (virtual size 64 MiB, tiny file). `size` is the file's size (as for every format);
    // `virtual_size`, when reported, must be the qcow2 virtual disk size.
    let qcow = input.join("empty.qcow2");
    assert_ok(
        &qemu_img([
            OsStr::new("create"),
            OsStr::new("-f"),
            OsStr::new("qcow2"),
            qcow.as_os_str(),
            OsStr::new("64M"),
        ]),
        "qemu-img create -f qcow2",
    );
    let j = bifs_inspect_json(&qcow);
    assert_eq!(s(&j["format"]), "qcow2", "inspect qcow2: {j}");
    assert_eq!(
        j["size"].as_u64(),
        Some(file_len(&qcow)),
        "inspect qcow2: size must be the file size: {j}"
    );
    if let Some(v) = j.get("virtual_size") {
        assert_eq!(
            v.as_u64(),
            Some(64 * MIB),
            "inspect qcow2: virtual_size must be the qcow2 virtual size: {j}"
        );
    }
    assert!(
        j.get("luks").is_none_or(Value::is_null),
        "inspect qcow2: luks must be absent/null: {j}"
    );
}

#[test]
fn inspect_json_cryptsetup_luks2() {
    full_tier_only!(NEEDS);
    require_tools();
    let f = fixture("inspect-luks2");
    let input = f.secret.parent().unwrap().to_path_buf();
    // cryptsetup LUKS2 (untrimmed, data offset 8 MiB)
    let case = Case {
        key_bits: 512,
        sector: 4096,
        kdf: "argon2id",
        hash: "sha512",
    };
    let img = make_luks2_with_cryptsetup(&input, "insp", &f.payload, &case, &f.pass, false);
    let j = bifs_inspect_json(&img.path);
    let what = format!("inspect cryptsetup LUKS2 {case}");
    let flen = file_len(&img.path);
    assert_eq!(s(&j["format"]), "luks2", "{what}: {j}");
    assert_eq!(j["size"].as_u64(), Some(flen), "{what}: size: {j}");
    let l = &j["luks"];
    assert_eq!(l["version"].as_u64(), Some(2), "{what}: {j}");
    assert_eq!(s(&l["uuid"]), luks_uuid(&img.path), "{what}: uuid: {j}");
    assert_eq!(s(&l["cipher"]), "aes-xts-plain64", "{what}: {j}");
    assert_eq!(l["key_size_bits"].as_u64(), Some(512), "{what}: {j}");
    assert_eq!(l["sector_size"].as_u64(), Some(4096), "{what}: {j}");
    assert_eq!(
        l["data_offset"].as_u64(),
        Some(img.data_offset),
        "{what}: {j}"
    );
    assert_eq!(
        l["data_size"].as_u64(),
        Some(flen - img.data_offset),
        "{what}: {j}"
    );
    let ks = l["keyslots"]
        .as_array()
        .unwrap_or_else(|| panic!("{what}: keyslots not an array: {j}"));
    assert_eq!(ks.len(), 1, "{what}: {j}");
    assert_eq!(ks[0]["id"].as_u64(), Some(0), "{what}: {j}");
    assert_eq!(s(&ks[0]["kdf"]), "argon2id", "{what}: {j}");
}

#[test]
fn inspect_json_qemu_luks1() {
    full_tier_only!(NEEDS);
    require_tools();
    let f = fixture("inspect-luks1");
    let input = f.secret.parent().unwrap().to_path_buf();
    // qemu LUKS1 (aes-256 -> 512-bit key)
    let what = "inspect qemu LUKS1 aes-256-xts sha256";
    let q = make_luks1_with_qemu(&input, "q", &f.payload, "aes-256", "sha256", &f.pass);
    let j = bifs_inspect_json(&q.path);
    let flen = file_len(&q.path);
    assert_eq!(s(&j["format"]), "luks1", "{what}: {j}");
    assert_eq!(j["size"].as_u64(), Some(flen), "{what}: size: {j}");
    let l = &j["luks"];
    assert_eq!(l["version"].as_u64(), Some(1), "{what}: {j}");
    assert_eq!(s(&l["uuid"]), luks_uuid(&q.path), "{what}: uuid: {j}");
    assert_eq!(s(&l["cipher"]), "aes-xts-plain64", "{what}: {j}");
    assert_eq!(l["key_size_bits"].as_u64(), Some(512), "{what}: {j}");
    assert_eq!(l["sector_size"].as_u64(), Some(512), "{what}: {j}");
    assert_eq!(
        l["data_offset"].as_u64(),
        Some(q.data_offset),
        "{what}: {j}"
    );
    assert_eq!(
        l["data_size"].as_u64(),
        Some(flen - q.data_offset),
        "{what}: {j}"
    );
    let ks = l["keyslots"]
        .as_array()
        .unwrap_or_else(|| panic!("{what}: keyslots not an array: {j}"));
    assert_eq!(ks.len(), 1, "{what}: only keyslot 0 is enabled: {j}");
    assert_eq!(ks[0]["id"].as_u64(), Some(0), "{what}: {j}");
    assert_eq!(s(&ks[0]["kdf"]), "pbkdf2", "{what}: {j}");
}

#[test]
fn inspect_json_bifs_luks2() {
    full_tier_only!(NEEDS);
    require_tools();
    let f = fixture("inspect-bifs");
    // bifs-made LUKS2
    let what = "inspect bifs LUKS2";
    let dst = f.out.join("bifs.luks2");
    bifs_encrypt(&f.secret, Some(512), &f.payload, &dst, what);
    let j = bifs_inspect_json(&dst);
    assert_eq!(s(&j["format"]), "luks2", "{what}: {j}");
    assert_eq!(s(&j["luks"]["uuid"]), luks_uuid(&dst), "{what}: uuid: {j}");
    assert_eq!(
        j["luks"]["data_offset"].as_u64(),
        Some(LUKS2_HEADER_SIZE),
        "{what}: {j}"
    );
    assert_eq!(
        j["luks"]["data_size"].as_u64(),
        Some(file_len(&f.payload)),
        "{what}: {j}"
    );
    assert_eq!(j["luks"]["sector_size"].as_u64(), Some(512), "{what}: {j}");
    assert_eq!(
        j["luks"]["key_size_bits"].as_u64(),
        Some(256),
        "{what}: {j}"
    );
}

// =============================================================================================
// Secrets never reach the logs
// =============================================================================================

/// With `--log trace`, neither encrypt nor decrypt (success or wrong passphrase) prints the
/// passphrase or the volume key (as cryptsetup dumps it, in hex) on stdout/stderr.
#[test]
fn secrets_never_logged_even_at_trace() {
    full_tier_only!(NEEDS);
    require_tools();
    let f = fixture("nolog");
    let key = volume_key(&f.luks2.path, &f.luks2.keyfile);
    let hex: String = key.iter().map(|b| format!("{b:02x}")).collect();
    let hex_spaced: String = key
        .iter()
        .map(|b| format!("{b:02x} "))
        .collect::<String>()
        .trim_end()
        .to_string();
    let input = f.secret.parent().unwrap();
    let wrong = write_secret(input, "wrong", &SecretParams::cheap(WRONG_PASSPHRASE));
    let enc_dst = f.out.join("enc.luks2");
    let dec_dst = f.out.join("dec.raw");
    let wrong_dst = f.out.join("wrong.raw");
    let runs = [
        (
            "encrypt",
            args(&[
                &"--log",
                &"trace",
                &"encrypt",
                &"--secret",
                &f.secret,
                &f.payload,
                &enc_dst,
            ]),
            true,
        ),
        (
            "decrypt",
            args(&[
                &"--log",
                &"trace",
                &"decrypt",
                &"--secret",
                &f.secret,
                &f.luks2.path,
                &dec_dst,
            ]),
            true,
        ),
        (
            "decrypt with a wrong passphrase",
            args(&[
                &"--log",
                &"trace",
                &"decrypt",
                &"--secret",
                &wrong,
                &f.luks2.path,
                &wrong_dst,
            ]),
            false,
        ),
    ];
    for (what, a, ok) in runs {
        let o = bifs(&a);
        assert_eq!(
            o.status.success(),
            ok,
            "{what} --log trace\n{}",
            describe(&o)
        );
        let all = format!(
            "{}\n{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        );
        let lower = all.to_lowercase();
        for secret in [f.pass.as_str(), WRONG_PASSPHRASE, &hex, &hex_spaced] {
            assert!(
                !lower.contains(&secret.to_lowercase()),
                "{what} --log trace leaks {secret:?}\n{}",
                describe(&o)
            );
        }
    }
}
