//! Hostile headers: every case must end in a clear error, quickly, without a panic or a huge
//! allocation. Each LUKS2 case starts from a valid header made by bifs, rewrites its JSON
//! metadata in both copies (checksums recomputed, as an attacker would) and then parses and
//! unlocks it. Timing bounds are generous (seconds) against costs that would take hours.

use std::time::{Duration, Instant};

use bifs_core::io::{MemSource, ReadAt};
use bifs_core::kdf::{Argon2Type, Hash, Kdf, KdfError, KdfLimits};
use bifs_core::keys::{Passphrase, VolumeKey};
use bifs_core::luks::{
    binary, FormatParams, Invalid, Luks1Header, Luks2Header, LuksError, LuksHeader, Unsupported,
};
use serde_json::{json, Value};

const HDR: usize = 0x4000;

/// A bifs-made LUKS2 image (header region + 64 KiB of data) opened by "pw".
fn luks2_image() -> Vec<u8> {
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
    let key = VolumeKey::random(64).unwrap();
    let mut img = Luks2Header::format(&params, &key, &Passphrase::new("pw")).unwrap();
    img.extend_from_slice(&[0u8; 65536]);
    img
}

fn json_of(img: &[u8]) -> Value {
    let area = &img[4096..HDR];
    let end = area.iter().position(|&b| b == 0).unwrap();
    serde_json::from_slice(&area[..end]).unwrap()
}

/// Rewrites the JSON of both header copies and fixes their checksums.
fn with_json(mut img: Vec<u8>, edit: impl Fn(&mut Value)) -> Vec<u8> {
    let mut v = json_of(&img);
    edit(&mut v);
    let text = serde_json::to_vec(&v).unwrap();
    assert!(text.len() < HDR - 4096);
    for off in [0, HDR] {
        let area = &mut img[off + 4096..off + HDR];
        area.fill(0);
        area[..text.len()].copy_from_slice(&text);
        binary::fix_checksum_for_fuzzing(&mut img, off);
    }
    img
}

/// Parses and unlocks with "pw"; must finish within `within`.
fn open(img: Vec<u8>, limits: &KdfLimits, within: Duration) -> Result<VolumeKey, LuksError> {
    let start = Instant::now();
    let src = MemSource(img);
    let r = LuksHeader::read(&src).and_then(|h| {
        h.segment().len_in(src.len())?;
        h.unlock(&src, &Passphrase::new("pw"), limits)
    });
    assert!(start.elapsed() < within, "took {:?}", start.elapsed());
    r
}

fn err_of(img: Vec<u8>) -> LuksError {
    match open(img, &KdfLimits::default(), Duration::from_secs(5)) {
        Ok(_) => panic!("a hostile header unlocked"),
        Err(e) => e,
    }
}

fn set_kdf(v: &mut Value, kdf: Value) {
    v["keyslots"]["0"]["kdf"] = kdf;
}

#[test]
fn valid_image_opens() {
    open(luks2_image(), &KdfLimits::default(), Duration::from_secs(5)).unwrap();
}

#[test]
fn argon2_memory_beyond_cryptsetup_cap_is_refused_before_allocating() {
    full_tier_only!("cryptsetup");
    let img = with_json(luks2_image(), |v| {
        set_kdf(
            v,
            json!({"type": "argon2id", "time": 4, "memory": u32::MAX, "cpus": 4, "salt": "AAAA"}),
        )
    });
    let e = err_of(img);
    assert!(
        matches!(
            e,
            LuksError::Kdf(KdfError::CostOutOfRange { what: "memory", .. })
        ),
        "{e}"
    );
    assert!(e.to_string().contains("memory"), "{e}");
}

#[test]
fn argon2_memory_beyond_a_lowered_cap_is_refused() {
    full_tier_only!("cryptsetup");
    // 64 MiB is a fine keyslot for cryptsetup; a node that set --max-kdf-memory 1024 refuses it.
    let img = with_json(luks2_image(), |v| {
        set_kdf(
            v,
            json!({"type": "argon2i", "time": 4, "memory": 65536, "cpus": 1, "salt": "AAAA"}),
        )
    });
    let limits = KdfLimits {
        max_argon2_memory_kib: 1024,
        ..KdfLimits::cryptsetup()
    };
    let e = open(img, &limits, Duration::from_secs(2)).unwrap_err();
    assert!(
        e.to_string().contains("memory=65536") && e.to_string().contains("1024"),
        "{e}"
    );
}

#[test]
fn argon2_time_and_lanes_and_pbkdf2_iterations_absurd() {
    for kdf in [
        json!({"type": "argon2id", "time": u32::MAX, "memory": 32, "cpus": 1, "salt": "AAAA"}),
        json!({"type": "argon2i", "time": 4, "memory": 32, "cpus": 1000, "salt": "AAAA"}),
        json!({"type": "argon2i", "time": 0, "memory": 32, "cpus": 1, "salt": "AAAA"}),
        json!({"type": "pbkdf2", "hash": "sha256", "iterations": u32::MAX, "salt": "AAAA"}),
        json!({"type": "pbkdf2", "hash": "sha256", "iterations": 0, "salt": "AAAA"}),
    ] {
        let img = with_json(luks2_image(), |v| set_kdf(v, kdf.clone()));
        let e = err_of(img);
        assert!(
            matches!(e, LuksError::Kdf(KdfError::CostOutOfRange { .. })),
            "{kdf}: {e}"
        );
    }
}

#[test]
fn digest_iterations_absurd_are_refused_before_the_keyslot_kdf() {
    let img = with_json(luks2_image(), |v| {
        v["digests"]["0"]["iterations"] = json!(u32::MAX)
    });
    let e = err_of(img);
    assert!(
        e.to_string().contains("digest") && e.to_string().contains("iterations"),
        "{e}"
    );
}

#[test]
fn json_size_and_hdr_size_out_of_range() {
    let e = err_of(with_json(luks2_image(), |v| {
        v["config"]["json_size"] = json!("99999999999")
    }));
    assert!(
        matches!(e, LuksError::Invalid(Invalid::MetadataSize { .. })),
        "{e}"
    );
    // hdr_size not one of LUKS2's sizes, in both copies (checksums fixed): never allocated.
    let mut img = luks2_image();
    for off in [0usize, HDR] {
        img[off + 8..off + 16].copy_from_slice(&(1u64 << 60).to_be_bytes());
        binary::fix_checksum_for_fuzzing(&mut img, off);
    }
    let e = err_of(img);
    assert!(
        matches!(e, LuksError::Invalid(Invalid::BothCopies { .. })),
        "{e}"
    );
}

#[test]
fn keyslot_areas_outside_their_region_or_the_file() {
    // Outside the keyslots area the header declares.
    let e = err_of(with_json(luks2_image(), |v| {
        v["keyslots"]["0"]["area"]["offset"] = json!("4096")
    }));
    assert!(e.to_string().contains("inside the metadata"), "{e}");
    let e = err_of(with_json(luks2_image(), |v| {
        v["keyslots"]["0"]["area"]["offset"] = json!(u64::MAX.to_string())
    }));
    assert!(
        matches!(e, LuksError::Invalid(Invalid::AreaPastEnd { .. })),
        "{e}"
    );
    // Inside the declared area, but the image ends first: refused before an expensive KDF.
    let mut img = luks2_image();
    img.truncate(2 * HDR + 4096);
    let img = with_json(img, |v| {
        set_kdf(
            v,
            json!({"type": "argon2id", "time": 4, "memory": 1 << 20, "cpus": 4, "salt": "AAAA"}),
        );
        v["segments"]["0"]["offset"] = json!((2 * HDR + 4096).to_string());
        v["config"]["keyslots_size"] = json!("4096");
        v["keyslots"]["0"]["area"]["size"] = json!("4096");
    });
    let e = open(img, &KdfLimits::default(), Duration::from_millis(500)).unwrap_err();
    assert!(
        matches!(e, LuksError::Invalid(_) | LuksError::Truncated(_)),
        "{e}"
    );
}

#[test]
fn segments_outside_the_file_or_over_the_metadata() {
    let e = err_of(with_json(luks2_image(), |v| {
        v["segments"]["0"]["offset"] = json!("1099511627776")
    }));
    assert!(e.to_string().contains("past the end"), "{e}");
    let e = err_of(with_json(luks2_image(), |v| {
        v["segments"]["0"]["offset"] = json!("1048576")
    }));
    assert!(
        matches!(e, LuksError::Invalid(Invalid::KeyslotsTooLarge { .. })),
        "{e}"
    );
    let e = err_of(with_json(luks2_image(), |v| {
        v["segments"]["0"]["offset"] = json!("512")
    }));
    assert!(
        matches!(e, LuksError::Invalid(Invalid::KeyslotsTooLarge { .. })),
        "{e}"
    );
    let e = err_of(with_json(luks2_image(), |v| {
        v["segments"]["0"]["size"] = json!("18446744073709547520")
    }));
    assert!(e.to_string().contains("past the end"), "{e}");
}

#[test]
fn absurd_stripes_key_sizes_and_keyslot_counts() {
    for stripes in [0u64, 1, 3999, 4001, u32::MAX as u64] {
        let e = err_of(with_json(luks2_image(), |v| {
            v["keyslots"]["0"]["af"]["stripes"] = json!(stripes)
        }));
        assert!(e.to_string().contains("stripes"), "{stripes}: {e}");
    }
    let e = err_of(with_json(luks2_image(), |v| {
        v["keyslots"]["0"]["key_size"] = json!(u32::MAX)
    }));
    assert!(
        matches!(e, LuksError::Unsupported(Unsupported::KeySize { .. })),
        "{e}"
    );
    let e = err_of(with_json(luks2_image(), |v| {
        // Minimal keyslots: 33 full ones would not fit the 12 KiB JSON area.
        let ks = json!({"type": "x", "key_size": 1, "area": {"type": "raw", "offset": "32768", "size": "0"}});
        for i in 1..33 {
            v["keyslots"][i.to_string()] = ks.clone();
        }
        v["keyslots"]["100"] = ks;
    }));
    assert!(
        matches!(e, LuksError::Invalid(Invalid::AreaEmpty { .. })),
        "{e}"
    );
    let e = err_of(with_json(luks2_image(), |v| {
        let ks = v["keyslots"]["0"].clone();
        v["keyslots"]["x"] = ks;
    }));
    assert!(
        matches!(e, LuksError::Invalid(Invalid::NotNumbered { .. })),
        "{e}"
    );
}

#[test]
fn garbage_json_and_deep_nesting() {
    for (deep, opening) in [("[".repeat(10_000), true), ("{\"a\":".repeat(2_000), false)] {
        let mut img = luks2_image();
        for off in [0usize, HDR] {
            let area = &mut img[off + 4096..off + HDR];
            area.fill(0);
            area[..deep.len()].copy_from_slice(deep.as_bytes());
            binary::fix_checksum_for_fuzzing(&mut img, off);
        }
        let e = err_of(img);
        if opening {
            assert!(matches!(e, LuksError::Invalid(Invalid::JsonOpening)), "{e}");
        } else {
            assert!(
                matches!(e, LuksError::Invalid(Invalid::JsonSyntax(_))),
                "{e}"
            );
        }
    }
}

// ----- LUKS1 -----

/// Sectors between two keyslots' material (a 32-byte key needs 250).
const L1_SLOT: u32 = 256;
/// The payload sector: after 8 keyslots from sector 8.
const L1_PAYLOAD: u32 = 8 + 8 * L1_SLOT;

/// A LUKS1 header by hand: aes-xts-plain64, 32-byte key, one active keyslot (0, with its
/// material at `material_sector`; the others at their own places, as cryptsetup requires).
fn luks1_image(
    material_sector: u32,
    stripes: u32,
    iterations: u32,
    digest_iterations: u32,
) -> Vec<u8> {
    let mut h = vec![0u8; L1_PAYLOAD as usize * 512 + 4096];
    h[..6].copy_from_slice(b"LUKS\xba\xbe");
    h[6..8].copy_from_slice(&1u16.to_be_bytes());
    h[8..11].copy_from_slice(b"aes");
    h[40..52].copy_from_slice(b"xts-plain64\0");
    h[72..78].copy_from_slice(b"sha256");
    h[104..108].copy_from_slice(&L1_PAYLOAD.to_be_bytes());
    h[108..112].copy_from_slice(&32u32.to_be_bytes());
    h[164..168].copy_from_slice(&digest_iterations.to_be_bytes());
    for i in 0..8 {
        let k = 208 + i * 48;
        let state: u32 = if i == 0 { 0x00AC_71F3 } else { 0x0000_DEAD };
        h[k..k + 4].copy_from_slice(&state.to_be_bytes());
        h[k + 4..k + 8].copy_from_slice(&iterations.to_be_bytes());
        let sector = if i == 0 {
            material_sector
        } else {
            8 + i as u32 * L1_SLOT
        };
        h[k + 40..k + 44].copy_from_slice(&sector.to_be_bytes());
        h[k + 44..k + 48].copy_from_slice(&stripes.to_be_bytes());
    }
    h
}

fn luks1_err(img: Vec<u8>) -> LuksError {
    let start = Instant::now();
    let src = MemSource(img);
    let r = Luks1Header::read(&src)
        .and_then(|h| h.unlock(&src, &Passphrase::new("pw"), &KdfLimits::default()));
    assert!(
        start.elapsed() < Duration::from_secs(5),
        "took {:?}",
        start.elapsed()
    );
    match r {
        Ok(_) => panic!("a hostile LUKS1 header unlocked"),
        Err(e) => e,
    }
}

#[test]
fn luks1_hostile_headers() {
    // Sane shape, wrong passphrase: the baseline reaches the digest.
    assert!(matches!(
        luks1_err(luks1_image(8, 4000, 1000, 1000)),
        LuksError::WrongPassphrase
    ));
    // Material outside the file / over the header / over the payload.
    let e = luks1_err(luks1_image(u32::MAX, 4000, 1000, 1000));
    assert!(e.to_string().contains("material"), "{e}");
    let e = luks1_err(luks1_image(0, 4000, 1000, 1000));
    assert!(e.to_string().contains("material"), "{e}");
    let mut cut = luks1_image(8, 4000, 1000, 1000);
    cut.truncate(8192);
    let e = luks1_err(cut);
    assert!(
        matches!(e, LuksError::Invalid(Invalid::Luks1DeviceTooSmall { .. })),
        "{e}"
    );
    // Stripes, iterations, digest iterations absurd.
    let e = luks1_err(luks1_image(8, u32::MAX, 1000, 1000));
    assert!(e.to_string().contains("stripes"), "{e}");
    let e = luks1_err(luks1_image(8, 4000, u32::MAX, 1000));
    assert!(matches!(e, LuksError::Kdf(_)), "{e}");
    let e = luks1_err(luks1_image(8, 4000, 1000, u32::MAX));
    assert!(
        matches!(e, LuksError::Kdf(_)) && e.to_string().contains("digest"),
        "{e}"
    );
    // Key size outside 1..=64.
    let mut img = luks1_image(8, 4000, 1000, 1000);
    img[108..112].copy_from_slice(&u32::MAX.to_be_bytes());
    assert!(matches!(luks1_err(img), LuksError::Invalid(_)));
}

#[test]
fn kdf_limits_defaults_are_cryptsetups() {
    full_tier_only!("cryptsetup");
    let l = KdfLimits::default();
    assert_eq!(l.max_argon2_memory_kib, 4 * 1024 * 1024);
    assert_eq!(l.max_argon2_cpus, 4);
    let k = Kdf::Argon2 {
        kind: Argon2Type::Argon2id,
        time: 4,
        memory_kib: 4 * 1024 * 1024 + 1,
        cpus: 4,
    };
    assert!(k.check(&l).is_err());
}

// ----- qcow2: special files as backing files -----

#[test]
fn qcow2_backing_fifo_is_refused_without_hanging() {
    full_tier_only!("qemu-img");
    let dir = tempfile::tempdir().unwrap();
    let fifo = dir.path().join("fifo");
    rustix::fs::mknodat(
        rustix::fs::CWD,
        &fifo,
        rustix::fs::FileType::Fifo,
        rustix::fs::Mode::from_raw_mode(0o600),
        0,
    )
    .unwrap();
    let img = dir.path().join("top.qcow2");
    let out = std::process::Command::new("qemu-img")
        .args([
            "create", "-q", "-f", "qcow2", "-u", "-b", "fifo", "-F", "raw",
        ])
        .arg(&img)
        .arg("1M")
        .output()
        .expect("qemu-img not found (apt-get install qemu-utils)");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        tx.send(
            bifs_core::image::open_virtual_disk(&img)
                .map(|_| ())
                .map_err(|e| e.to_string()),
        )
    });
    let r = rx
        .recv_timeout(Duration::from_secs(5))
        .expect("opening a qcow2 with a FIFO backing file hung");
    let e = r.expect_err("a FIFO backing file was accepted");
    assert!(e.contains("FIFO"), "{e}");
    // And a FIFO as the image itself.
    let r = bifs_core::image::open_virtual_disk(&fifo);
    assert!(r.is_err());
}
