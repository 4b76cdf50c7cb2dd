//! The header as `cryptsetup luksDump` (2.6) prints it, byte for byte: the same sections in
//! the same order, tabs, hex salts 16 bytes to a line, trailing blanks and all. LUKS2 is
//! printed from the stored JSON with cryptsetup's reading of each value (see [`super::json`]),
//! so odd but valid metadata prints as cryptsetup prints it.

use std::fmt::Write as _;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use serde_json::Value;

use super::json::{self, text};
use super::luks1::Luks1Header;
use super::luks2::Luks2Header;
use super::validate;
use super::LuksHeader;

/// cryptsetup's LUKS2_KEYSLOTS_MAX, LUKS2_TOKENS_MAX, LUKS2_SEGMENT_MAX: luksDump shows the
/// objects numbered below these; LUKS2_DIGEST_MAX for digests.
const KEYSLOTS_MAX: u32 = 32;
const TOKENS_MAX: u32 = 32;
const SEGMENTS_MAX: u32 = 32;
const DIGESTS_MAX: u32 = 8;

/// `luksDump`'s text for `header`. `device` is the path as the user named the image
/// (LUKS1's first line shows it).
pub fn luks_dump(header: &LuksHeader, device: &str) -> String {
    match header {
        LuksHeader::V1(h) => luks1(h, device),
        LuksHeader::V2(h) => luks2(h),
    }
}

/// Bytes in hex, each followed by `sep` (cryptsetup's `crypt_log_hex`).
fn hex(out: &mut String, bytes: &[u8], sep: &str) {
    for b in bytes {
        let _ = write!(out, "{b:02x}{sep}");
    }
}

pub fn luks1(h: &Luks1Header, device: &str) -> String {
    let mut s = String::new();
    luks1_fields(&mut s, h, device);
    for (i, ks) in h.keyslots.iter().enumerate() {
        luks1_keyslot(&mut s, i, ks);
    }
    s
}

fn luks1_fields(s: &mut String, h: &Luks1Header, device: &str) {
    let _ = write!(s, "LUKS header information for {device}\n\n");
    let _ = writeln!(s, "Version:       \t1");
    let _ = writeln!(s, "Cipher name:   \t{}", h.cipher_name);
    let _ = writeln!(s, "Cipher mode:   \t{}", h.cipher_mode);
    let _ = writeln!(s, "Hash spec:     \t{}", h.hash_spec);
    let _ = writeln!(s, "Payload offset:\t{}", h.payload_sector);
    let _ = writeln!(s, "MK bits:       \t{}", h.key_bytes.wrapping_mul(8));
    s.push_str("MK digest:     \t");
    hex(s, &h.mk_digest, " ");
    s.push_str("\nMK salt:       \t");
    hex(s, &h.mk_digest_salt[..16], " ");
    s.push_str("\n               \t");
    hex(s, &h.mk_digest_salt[16..], " ");
    let _ = writeln!(s);
    let _ = writeln!(s, "MK iterations: \t{}", h.mk_digest_iterations);
    let _ = write!(s, "UUID:          \t{}\n\n", h.uuid);
}

fn luks1_keyslot(s: &mut String, i: usize, ks: &super::luks1::Luks1Keyslot) {
    if !ks.active {
        let _ = writeln!(s, "Key Slot {i}: DISABLED");
        return;
    }
    let _ = writeln!(s, "Key Slot {i}: ENABLED");
    let _ = writeln!(s, "\tIterations:         \t{}", ks.iterations);
    s.push_str("\tSalt:               \t");
    hex(s, &ks.salt[..16], " ");
    s.push_str("\n\t                      \t");
    hex(s, &ks.salt[16..], " ");
    let _ = writeln!(s);
    let _ = writeln!(s, "\tKey material offset:\t{}", ks.material_sector);
    let _ = writeln!(s, "\tAF stripes:            \t{}", ks.stripes);
}

pub fn luks2(h: &Luks2Header) -> String {
    let mut s = String::new();
    luks2_fields(&mut s, h);
    luks2_config(&mut s, &h.json);
    luks2_segments(&mut s, &h.json);
    luks2_keyslots(&mut s, h);
    luks2_tokens(&mut s, &h.json);
    luks2_digests(&mut s, &h.json);
    s
}

fn or<'a>(v: &'a str, none: &'a str) -> &'a str {
    if v.is_empty() {
        none
    } else {
        v
    }
}

fn luks2_fields(s: &mut String, h: &Luks2Header) {
    let b = &h.binary;
    let _ = writeln!(s, "LUKS header information");
    let _ = writeln!(s, "Version:       \t2");
    let _ = writeln!(s, "Epoch:         \t{}", b.seqid);
    let _ = writeln!(
        s,
        "Metadata area: \t{} [bytes]",
        validate::metadata_size(&h.json)
    );
    let _ = writeln!(
        s,
        "Keyslots area: \t{} [bytes]",
        validate::keyslots_size(&h.json)
    );
    let _ = writeln!(s, "UUID:          \t{}", or(&b.uuid, "(no UUID)"));
    let _ = writeln!(s, "Label:         \t{}", or(&b.label, "(no label)"));
    let _ = writeln!(s, "Subsystem:     \t{}", or(&b.subsystem, "(no subsystem)"));
}

fn luks2_config(s: &mut String, hdr: &Value) {
    let flags = json::strings(hdr.pointer("/config/flags"));
    let reqs = json::strings(hdr.pointer("/config/requirements/mandatory"));
    s.push_str("Flags:       \t");
    for f in &flags {
        let _ = write!(s, "{f} ");
    }
    let _ = write!(
        s,
        "{}\n{}",
        if flags.is_empty() { "(no flags)" } else { "" },
        if reqs.is_empty() { "\n" } else { "" }
    );
    if !reqs.is_empty() {
        s.push_str("Requirements:\t");
        for r in &reqs {
            let _ = write!(s, "{r} ");
        }
        s.push_str("\n\n");
    }
}

/// A member of a section by its number, as cryptsetup looks it up (`"%u"`).
fn member<'a>(hdr: &'a Value, section: &str, n: u32) -> Option<&'a Value> {
    hdr.get(section)?.get(n.to_string())
}

fn luks2_segments(s: &mut String, hdr: &Value) {
    s.push_str("Data segments:\n");
    for i in 0..SEGMENTS_MAX {
        let Some(seg) = member(hdr, "segments", i) else {
            continue;
        };
        let _ = writeln!(s, "  {i}: {}", text(seg.get("type")));
        let _ = writeln!(s, "\toffset: {} [bytes]", json::uint64(seg.get("offset")));
        if seg.get("size").and_then(Value::as_str) == Some("dynamic") {
            s.push_str("\tlength: (whole device)\n");
        } else {
            let _ = writeln!(s, "\tlength: {} [bytes]", json::uint64(seg.get("size")));
        }
        if let Some(c) = seg.get("encryption") {
            let _ = writeln!(s, "\tcipher: {}", text(Some(c)));
        }
        if let Some(sector) = seg.get("sector_size") {
            let _ = writeln!(s, "\tsector: {} [bytes]", json::uint32(Some(sector)));
        }
        if let Some(t) = seg.pointer("/integrity/type") {
            let _ = writeln!(s, "\tintegrity: {}", text(Some(t)));
        }
        let flags = json::strings(seg.get("flags"));
        if !flags.is_empty() {
            let _ = writeln!(s, "\tflags : {}", flags.join(", "));
        }
        s.push('\n');
    }
}

fn priority(ks: &Value) -> &'static str {
    match ks.get("priority") {
        None => "normal",
        Some(p) => match json::int32(Some(p)) {
            0 => "ignored",
            1 => "normal",
            2 => "preferred",
            _ => "invalid",
        },
    }
}

/// A base64 value as hex, 16 bytes to a line (cryptsetup's `hexprint_base64`); nothing at all
/// when it does not decode, as there.
fn hex_base64(s: &mut String, v: Option<&Value>) {
    let Ok(bytes) = B64.decode(v.and_then(Value::as_str).unwrap_or_default()) else {
        return;
    };
    for (i, b) in bytes.iter().enumerate() {
        if i > 0 && i % 16 == 0 {
            s.push_str("\n\t            ");
        }
        let _ = write!(s, "{b:02x} ");
    }
    s.push('\n');
}

fn luks2_keyslots(s: &mut String, h: &Luks2Header) {
    let hdr = &h.json;
    s.push_str("Keyslots:\n");
    for j in 0..KEYSLOTS_MAX {
        let Some(ks) = member(hdr, "keyslots", j) else {
            continue;
        };
        let id = j.to_string();
        let kind = text(ks.get("type"));
        let unbound = if h.metadata.keyslot_is_bound(&id) {
            ""
        } else {
            " (unbound)"
        };
        let _ = writeln!(s, "  {id}: {kind}{unbound}");
        if let Some(k) = ks.get("key_size") {
            let _ = writeln!(
                s,
                "\tKey:        {} bits",
                json::uint32(Some(k)).wrapping_mul(8)
            );
        }
        let _ = writeln!(s, "\tPriority:   {}", priority(ks));
        match kind.as_str() {
            "luks2" => luks2_keyslot_body(s, ks),
            "reencrypt" => reencrypt_keyslot_body(s, ks),
            _ => {}
        }
        for (did, d) in hdr
            .get("digests")
            .and_then(Value::as_object)
            .into_iter()
            .flatten()
        {
            for k in json::strings(d.get("keyslots")) {
                if k == id {
                    let _ = writeln!(s, "\tDigest ID:  {did}");
                }
            }
        }
    }
}

fn luks2_keyslot_body(s: &mut String, ks: &Value) {
    let (Some(kdf), Some(af), Some(area)) = (ks.get("kdf"), ks.get("af"), ks.get("area")) else {
        return;
    };
    let _ = writeln!(s, "\tCipher:     {}", text(area.get("encryption")));
    let _ = writeln!(
        s,
        "\tCipher key: {} bits",
        json::uint32(area.get("key_size")).wrapping_mul(8)
    );
    let kdf_type = text(kdf.get("type"));
    let _ = writeln!(s, "\tPBKDF:      {kdf_type}");
    if kdf_type == "pbkdf2" {
        let _ = writeln!(s, "\tHash:       {}", text(kdf.get("hash")));
        let _ = writeln!(s, "\tIterations: {}", json::uint64(kdf.get("iterations")));
    } else {
        let _ = writeln!(s, "\tTime cost:  {}", json::int64(kdf.get("time")) as u64);
        let _ = writeln!(s, "\tMemory:     {}", json::int64(kdf.get("memory")) as u64);
        let _ = writeln!(s, "\tThreads:    {}", json::int64(kdf.get("cpus")) as u64);
    }
    s.push_str("\tSalt:       ");
    hex_base64(s, kdf.get("salt"));
    let _ = writeln!(s, "\tAF stripes: {}", json::int32(af.get("stripes")) as u32);
    let _ = writeln!(s, "\tAF hash:    {}", text(af.get("hash")));
    area_extent(s, area);
}

/// A keyslot area's place in the keyslots area, as cryptsetup prints it for every keyslot type.
fn area_extent(s: &mut String, area: &Value) {
    let _ = writeln!(
        s,
        "\tArea offset:{} [bytes]",
        json::uint64(area.get("offset"))
    );
    let _ = writeln!(
        s,
        "\tArea length:{} [bytes]",
        json::uint64(area.get("size"))
    );
}

fn reencrypt_keyslot_body(s: &mut String, ks: &Value) {
    let (Some(direction), Some(mode), Some(area)) =
        (ks.get("direction"), ks.get("mode"), ks.get("area"))
    else {
        return;
    };
    let Some(resilience) = area.get("type") else {
        return;
    };
    let resilience = text(Some(resilience));
    let _ = writeln!(s, "\t{:<12}{}", "Mode:", text(Some(mode)));
    let _ = writeln!(s, "\t{:<12}{}", "Direction:", text(Some(direction)));
    let _ = writeln!(s, "\t{:<12}{}", "Resilience:", resilience);
    if resilience == "checksum" {
        let _ = writeln!(s, "\t{:<12}{}", "Hash:", text(area.get("hash")));
        let _ = writeln!(
            s,
            "\t{:<12}{} [bytes]",
            "Hash data:",
            json::int32(area.get("sector_size"))
        );
    } else if resilience == "datashift" {
        let _ = writeln!(
            s,
            "\t{:<12}{}[bytes]",
            "Shift size:",
            json::uint64(area.get("shift_size"))
        );
    }
    area_extent(s, area);
}

fn luks2_tokens(s: &mut String, hdr: &Value) {
    s.push_str("Tokens:\n");
    for j in 0..TOKENS_MAX {
        let Some(token) = member(hdr, "tokens", j) else {
            continue;
        };
        let kind = text(token.get("type"));
        let _ = writeln!(s, "  {j}: {kind}");
        // The one token type built into libcryptsetup prints its key description.
        if kind == "luks2-keyring" {
            if let Some(desc) = token.get("key_description") {
                let _ = writeln!(s, "\tKey description: {}", text(Some(desc)));
            }
        }
        for k in json::strings(token.get("keyslots")) {
            let _ = writeln!(s, "\tKeyslot:    {k}");
        }
    }
}

fn luks2_digests(s: &mut String, hdr: &Value) {
    s.push_str("Digests:\n");
    for i in 0..DIGESTS_MAX {
        let Some(d) = member(hdr, "digests", i) else {
            continue;
        };
        let kind = text(d.get("type"));
        let _ = writeln!(s, "  {i}: {kind}");
        if kind == "pbkdf2" {
            let _ = writeln!(s, "\tHash:       {}", text(d.get("hash")));
            let _ = writeln!(
                s,
                "\tIterations: {}",
                json::int64(d.get("iterations")) as u64
            );
            s.push_str("\tSalt:       ");
            hex_base64(s, d.get("salt"));
            s.push_str("\tDigest:     ");
            hex_base64(s, d.get("digest"));
        }
    }
}
