//! cryptsetup's LUKS2 metadata rules (2.6, `LUKS2_hdr_validate` and the keyslot checks behind
//! it), applied to the JSON before bifs reads anything out of it: object types, mandatory
//! fields, decimal-string u64 limits, references between sections, keyslot areas inside the
//! keyslots area and apart from each other, `config` sizes against the binary header. A header
//! that passes is one cryptsetup loads; one that fails is one cryptsetup refuses.
//!
//! Unknown values (a KDF, cipher, segment, keyslot or token type, a requirement) are not
//! errors here, as they are not for cryptsetup: they are refused when unlocking.

use serde_json::{Map, Value};

use super::error::{Invalid, JsonType, Section};
use super::json::{self, array_has, is_int, numbered, str_to_u64};

type Obj = Map<String, Value>;
type Check = Result<(), Invalid>;

/// cryptsetup's LUKS2_MAX_KEYSLOTS_SIZE.
const MAX_KEYSLOTS_SIZE: u64 = 0x800_0000;
/// The LUKS2 metadata sizes (binary header + JSON area) cryptsetup accepts.
pub const METADATA_SIZES: [u64; 9] = [
    0x4000, 0x8000, 0x10000, 0x20000, 0x40000, 0x80000, 0x100000, 0x200000, 0x400000,
];

fn field<'a>(
    obj: &'a Value,
    section: Section,
    id: &str,
    key: &'static str,
    want: JsonType,
) -> Result<&'a Value, Invalid> {
    let v = obj.get(key);
    let ok = match (want, v) {
        (JsonType::Object, Some(v)) => v.is_object(),
        (JsonType::Array, Some(v)) => v.is_array(),
        (JsonType::String, Some(Value::String(s))) => !s.is_empty(),
        (JsonType::Integer, Some(v)) => is_int(v),
        _ => false,
    };
    match v {
        Some(v) if ok => Ok(v),
        _ => Err(Invalid::Field {
            section,
            id: id.into(),
            field: key,
            want,
        }),
    }
}

fn object<'a>(
    obj: &'a Value,
    section: Section,
    id: &str,
    key: &'static str,
) -> Result<&'a Obj, Invalid> {
    field(obj, section, id, key, JsonType::Object)?
        .as_object()
        .ok_or(Invalid::Field {
            section,
            id: id.into(),
            field: key,
            want: JsonType::Object,
        })
}

fn string<'a>(
    obj: &'a Value,
    section: Section,
    id: &str,
    key: &'static str,
) -> Result<&'a str, Invalid> {
    Ok(field(obj, section, id, key, JsonType::String)?
        .as_str()
        .unwrap_or_default())
}

fn numbered_key(section: Section, id: &str) -> Check {
    if numbered(id) {
        Ok(())
    } else {
        Err(Invalid::NotNumbered {
            section,
            id: id.into(),
        })
    }
}

/// A decimal-digits string holding a u64 (offsets, sizes, iv_tweak).
fn numbered_u64(section: Section, id: &str, key: &'static str, s: &str) -> Result<u64, Invalid> {
    let not = || Invalid::NotU64 {
        section,
        id: id.into(),
        field: key,
        value: s.into(),
    };
    if !numbered(s) {
        return Err(not());
    }
    str_to_u64(s).ok_or_else(not)
}

fn uint32(section: Section, id: &str, key: &'static str, v: &Value) -> Result<u32, Invalid> {
    v.as_u64()
        .and_then(|n| u32::try_from(n).ok())
        .ok_or_else(|| Invalid::NotU32 {
            section,
            id: id.into(),
            field: key,
            value: v.to_string(),
        })
}

fn string_array(section: Section, id: &str, key: &'static str, v: &Value) -> Check {
    match v.as_array() {
        Some(a) if a.iter().all(Value::is_string) => Ok(()),
        _ => Err(Invalid::NotStringArray {
            section,
            id: id.into(),
            field: key,
        }),
    }
}

/// Every member of `arr` is a string naming an object in `targets`.
fn references(section: Section, id: &str, kind: &'static str, arr: &Value, targets: &Obj) -> Check {
    for v in arr.as_array().map(Vec::as_slice).unwrap_or_default() {
        let Some(name) = v.as_str() else {
            return Err(Invalid::NotStringArray {
                section,
                id: id.into(),
                field: kind,
            });
        };
        if !targets.get(name).is_some_and(Value::is_object) {
            return Err(Invalid::MissingReference {
                section,
                id: id.into(),
                kind,
                target: name.into(),
            });
        }
    }
    Ok(())
}

/// The known requirement names and whether they mean an online reencryption.
fn requirement_is_online_reencrypt(name: &str) -> bool {
    matches!(
        name,
        "online-reencrypt" | "online-reencrypt-v2" | "online-reencrypt-v3"
    )
}

/// cryptsetup's `reencrypt_candidate_flag`.
fn reencrypt_candidate(name: &str) -> bool {
    name == "online-reencrypt"
        || name
            .strip_prefix("online-reencrypt-v")
            .is_some_and(|v| !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()))
}

/// The mandatory requirements, as strings.
pub fn requirements(hdr: &Value) -> Vec<String> {
    json::strings(hdr.pointer("/config/requirements/mandatory"))
}

fn is_backup(segment: &Value) -> bool {
    segment
        .get("flags")
        .and_then(Value::as_array)
        .is_some_and(|f| f.iter().any(|x| json::text(Some(x)).starts_with("backup-")))
}

fn has_flag(segment: &Value, flag: &str) -> bool {
    segment
        .get("flags")
        .and_then(Value::as_array)
        .is_some_and(|f| f.iter().any(|x| json::text(Some(x)) == flag))
}

/// The whole of cryptsetup's LUKS2 metadata validation, in its order. `json_area_len` is the
/// binary header's size minus 4096.
pub fn validate(hdr: &Value, json_area_len: u64) -> Check {
    if !hdr.is_object() {
        return Err(Invalid::JsonNotObject);
    }
    check_entry_counts(hdr)?;
    check_requirements(hdr)?;
    check_tokens(hdr)?;
    check_digests(hdr)?;
    check_segments(hdr)?;
    check_keyslots(hdr)?;
    check_config(hdr)?;
    check_areas(hdr)?;
    check_json_size(hdr, json_area_len)?;
    check_keyslot_types(hdr)
}

/// Entries per section (and references per digest) bifs validates at all. cryptsetup's own
/// tables stop at 32 keyslots, tokens and segments and 8 digests (`LUKS2_*_MAX`), so no header
/// it writes comes near; a hand-made one with tens of thousands of segments fits in the 4 MiB
/// JSON area and would cost tens of seconds of pairwise checks on every lookup of the image.
pub const MAX_ENTRIES: usize = 1024;

fn check_entry_counts(hdr: &Value) -> Check {
    let too_many = |section, count| {
        (count > MAX_ENTRIES).then_some(Invalid::TooManyEntries {
            section,
            count,
            max: MAX_ENTRIES,
        })
    };
    for (section, key) in [
        (Section::Keyslot, "keyslots"),
        (Section::Token, "tokens"),
        (Section::Segment, "segments"),
        (Section::Digest, "digests"),
    ] {
        let entries = hdr.get(key).and_then(Value::as_object);
        if let Some(e) = too_many(section, entries.map_or(0, |o| o.len())) {
            return Err(e);
        }
    }
    let digests = hdr.get("digests").and_then(Value::as_object);
    for digest in digests.into_iter().flat_map(|d| d.values()) {
        for key in ["keyslots", "segments"] {
            let refs = digest.get(key).and_then(Value::as_array);
            if let Some(e) = too_many(Section::Digest, refs.map_or(0, Vec::len)) {
                return Err(e);
            }
        }
    }
    Ok(())
}

fn check_requirements(hdr: &Value) -> Check {
    let config = field(hdr, Section::JsonArea, "", "config", JsonType::Object)?;
    let mut online = 0;
    if let Some(req) = config.get("requirements") {
        field(
            config,
            Section::Config,
            "config",
            "requirements",
            JsonType::Object,
        )?;
        if let Some(mandatory) = req.get("mandatory") {
            field(
                req,
                Section::Requirements,
                "requirements",
                "mandatory",
                JsonType::Array,
            )?;
            string_array(
                Section::Requirements,
                "requirements",
                "mandatory",
                mandatory,
            )?;
            online = json::strings(Some(mandatory))
                .iter()
                .filter(|r| reencrypt_candidate(r))
                .count();
        }
    }
    if online > 1 {
        return Err(Invalid::MultipleReencryptRequirements);
    }
    Ok(())
}

fn check_tokens(hdr: &Value) -> Check {
    let tokens = object(hdr, Section::JsonArea, "", "tokens")?;
    let keyslots = hdr.get("keyslots").and_then(Value::as_object);
    for (id, token) in tokens {
        numbered_key(Section::Token, id)?;
        string(token, Section::Token, id, "type")?;
        let arr = field(token, Section::Token, id, "keyslots", JsonType::Array)?;
        let Some(keyslots) = keyslots else {
            return Err(Invalid::Field {
                section: Section::JsonArea,
                id: String::new(),
                field: "keyslots",
                want: JsonType::Object,
            });
        };
        references(Section::Token, id, "keyslot", arr, keyslots)?;
    }
    Ok(())
}

fn check_digests(hdr: &Value) -> Check {
    let digests = object(hdr, Section::JsonArea, "", "digests")?;
    let keyslots = object(hdr, Section::JsonArea, "", "keyslots")?;
    let segments = object(hdr, Section::JsonArea, "", "segments")?;
    for (id, digest) in digests {
        numbered_key(Section::Digest, id)?;
        string(digest, Section::Digest, id, "type")?;
        let ks = field(digest, Section::Digest, id, "keyslots", JsonType::Array)?;
        let segs = field(digest, Section::Digest, id, "segments", JsonType::Array)?;
        references(Section::Digest, id, "keyslot", ks, keyslots)?;
        references(Section::Digest, id, "segment", segs, segments)?;
    }
    Ok(())
}

fn segment_has_digest(hdr: &Value, id: &str) -> bool {
    hdr.get("digests")
        .and_then(Value::as_object)
        .is_some_and(|d| d.values().any(|dg| array_has(dg.get("segments"), id)))
}

fn check_crypt_segment(hdr: &Value, id: &str, seg: &Value, size: u64) -> Check {
    let iv_tweak = string(seg, Section::Segment, id, "iv_tweak")?;
    string(seg, Section::Segment, id, "encryption")?;
    let sector = field(seg, Section::Segment, id, "sector_size", JsonType::Integer)?;
    if let Some(integrity) = seg.get("integrity") {
        field(seg, Section::Segment, id, "integrity", JsonType::Object)?;
        for key in ["type", "journal_encryption", "journal_integrity"] {
            string(integrity, Section::SegmentIntegrity, id, key)?;
        }
    }
    let sector_size = uint32(Section::Segment, id, "sector_size", sector)?;
    if sector_size == 0 || sector_size % 512 != 0 {
        return Err(Invalid::SectorSize {
            id: id.into(),
            sector_size: sector_size.into(),
        });
    }
    numbered_u64(Section::Segment, id, "iv_tweak", iv_tweak)?;
    if !size.is_multiple_of(u64::from(sector_size)) {
        return Err(Invalid::SegmentAlignment {
            id: id.into(),
            field: "size",
            value: size,
            align: sector_size.into(),
        });
    }
    if !segment_has_digest(hdr, id) {
        return Err(Invalid::SegmentWithoutDigest { id: id.into() });
    }
    Ok(())
}

fn check_segments(hdr: &Value) -> Check {
    let segments = object(hdr, Section::JsonArea, "", "segments")?;
    if segments.is_empty() {
        return Err(Invalid::NoSegments);
    }
    object(hdr, Section::JsonArea, "", "digests")?;
    let count = segments.len() as u64;
    let mut first_backup: Option<u64> = None;
    for (id, seg) in segments {
        numbered_key(Section::Segment, id)?;
        let kind = string(seg, Section::Segment, id, "type")?;
        let offset = string(seg, Section::Segment, id, "offset")?;
        let size = string(seg, Section::Segment, id, "size")?;
        let offset = numbered_u64(Section::Segment, id, "offset", offset)?;
        let size = if size == "dynamic" {
            0
        } else {
            let n = numbered_u64(Section::Segment, id, "size", size)?;
            if n == 0 {
                return Err(Invalid::SegmentSizeZero { id: id.into() });
            }
            n
        };
        for (name, value) in [("offset", offset), ("size", size)] {
            if value % 512 != 0 {
                return Err(Invalid::SegmentAlignment {
                    id: id.into(),
                    field: name,
                    value,
                    align: 512,
                });
            }
        }
        if let Some(flags) = seg.get("flags") {
            field(seg, Section::Segment, id, "flags", JsonType::Array)?;
            string_array(Section::Segment, id, "flags", flags)?;
        }
        // cryptsetup reads the number with atoi; digits only here, so saturate like it.
        let n = id.parse::<u64>().unwrap_or(u64::MAX);
        if is_backup(seg) {
            if first_backup.is_none_or(|b| n < b) {
                first_backup = Some(n);
            }
        } else if let Some(b) = first_backup.filter(|&b| n >= b) {
            return Err(Invalid::SegmentAfterBackup {
                id: id.into(),
                backup: b as u32,
            });
        }
        if kind == "crypt" {
            check_crypt_segment(hdr, id, seg, size)?;
        }
    }
    if first_backup == Some(0) {
        return Err(Invalid::NoRegularSegment);
    }
    if let Some(b) = first_backup.filter(|&b| b >= count) {
        return Err(Invalid::SegmentGap(b.min(u64::from(u32::MAX)) as u32));
    }
    let regular = first_backup.unwrap_or(count);
    let mut intervals = Vec::with_capacity(regular as usize);
    for i in 0..regular {
        let Some(seg) = segments.get(&i.to_string()) else {
            return Err(Invalid::SegmentGap(i as u32));
        };
        let offset = json::uint64(seg.get("offset"));
        let len = match json::uint64(seg.get("size")) {
            0 => u64::MAX,
            n => n,
        };
        intervals.push((offset, len));
    }
    check_segment_intervals(&intervals)?;
    for i in regular..count {
        if !segments.contains_key(&i.to_string()) {
            return Err(Invalid::SegmentGap(i as u32));
        }
    }
    if requirements(hdr)
        .iter()
        .any(|r| requirement_is_online_reencrypt(r))
    {
        let backups: Vec<&Value> = (regular..count)
            .filter_map(|i| segments.get(&i.to_string()))
            .collect();
        if !backups.iter().any(|s| has_flag(s, "backup-final"))
            || !backups.iter().any(|s| has_flag(s, "backup-previous"))
        {
            return Err(Invalid::ReencryptBackupMissing);
        }
    }
    Ok(())
}

/// Regular segments: only the last may be "dynamic" (length `u64::MAX` here), none overlap.
fn check_segment_intervals(ix: &[(u64, u64)]) -> Check {
    let n = ix.len();
    for (i, &(off_i, len_i)) in ix.iter().enumerate() {
        if len_i == u64::MAX && i != n - 1 {
            return Err(Invalid::DynamicNotLast(i as u32));
        }
        for (j, &(off_j, len_j)) in ix.iter().enumerate() {
            if i == j {
                continue;
            }
            let end_j = if len_j == u64::MAX {
                None
            } else {
                Some(off_j.checked_add(len_j))
            };
            match end_j {
                Some(None) => return Err(Invalid::SegmentsOverlap(i as u32, j as u32)),
                Some(Some(end)) if off_i >= off_j && off_i < end => {
                    return Err(Invalid::SegmentsOverlap(i as u32, j as u32))
                }
                None if off_i >= off_j => return Err(Invalid::SegmentsOverlap(i as u32, j as u32)),
                _ => {}
            }
        }
    }
    Ok(())
}

fn check_keyslots(hdr: &Value) -> Check {
    let keyslots = object(hdr, Section::JsonArea, "", "keyslots")?;
    for (id, ks) in keyslots {
        numbered_key(Section::Keyslot, id)?;
        string(ks, Section::Keyslot, id, "type")?;
        let key_size = field(ks, Section::Keyslot, id, "key_size", JsonType::Integer)?;
        uint32(Section::Keyslot, id, "key_size", key_size)?;
    }
    Ok(())
}

/// `config.json_size` + 4096: the size of one metadata copy.
pub fn metadata_size(hdr: &Value) -> u64 {
    json::uint64(hdr.pointer("/config/json_size")).wrapping_add(4096)
}

pub fn keyslots_size(hdr: &Value) -> u64 {
    json::uint64(hdr.pointer("/config/keyslots_size"))
}

/// The lowest offset of a regular segment (0 when one starts at 0: a detached header).
fn minimal_segment_offset(hdr: &Value) -> u64 {
    let mut min = u64::MAX;
    for seg in hdr
        .get("segments")
        .and_then(Value::as_object)
        .into_iter()
        .flat_map(|s| s.values())
    {
        if is_backup(seg) {
            continue;
        }
        let off = json::uint64(seg.get("offset"));
        if off == 0 {
            return 0;
        }
        min = min.min(off);
    }
    min
}

fn check_config(hdr: &Value) -> Check {
    let config = field(hdr, Section::JsonArea, "", "config", JsonType::Object)?;
    let json_size = string(config, Section::Config, "config", "json_size")?;
    let json_size = str_to_u64(json_size).ok_or_else(|| Invalid::NotU64 {
        section: Section::Config,
        id: "config".into(),
        field: "json_size",
        value: json_size.into(),
    })?;
    let metadata = json_size.wrapping_add(4096);
    let keyslots_size = string(config, Section::Config, "config", "keyslots_size")?;
    let keyslots_size = str_to_u64(keyslots_size).ok_or_else(|| Invalid::NotU64 {
        section: Section::Config,
        id: "config".into(),
        field: "keyslots_size",
        value: keyslots_size.into(),
    })?;
    if !METADATA_SIZES.contains(&metadata) {
        return Err(Invalid::MetadataSize { json_size });
    }
    if keyslots_size % 4096 != 0 || keyslots_size > MAX_KEYSLOTS_SIZE {
        return Err(Invalid::KeyslotsSize(keyslots_size));
    }
    let data_offset = minimal_segment_offset(hdr);
    if data_offset != 0
        && (data_offset < keyslots_size || data_offset - keyslots_size < 2 * metadata)
    {
        return Err(Invalid::KeyslotsTooLarge {
            keyslots_size,
            metadata_end: 2 * metadata,
            data_offset,
        });
    }
    if let Some(flags) = config.get("flags") {
        field(config, Section::Config, "config", "flags", JsonType::Array)?;
        string_array(Section::Config, "config", "flags", flags)?;
    }
    Ok(())
}

fn check_areas(hdr: &Value) -> Check {
    let keyslots = object(hdr, Section::JsonArea, "", "keyslots")?;
    let metadata = metadata_size(hdr);
    let mut areas: Vec<(&str, u64, u64)> = Vec::with_capacity(keyslots.len());
    for (id, ks) in keyslots {
        let area = field(ks, Section::Keyslot, id, "area", JsonType::Object)?;
        string(area, Section::KeyslotArea, id, "type")?;
        let offset = string(area, Section::KeyslotArea, id, "offset")?;
        let size = string(area, Section::KeyslotArea, id, "size")?;
        let offset = numbered_u64(Section::KeyslotArea, id, "offset", offset)?;
        let size = numbered_u64(Section::KeyslotArea, id, "size", size)?;
        areas.push((id, offset, size));
    }
    let areas_end = (2 * metadata).wrapping_add(keyslots_size(hdr));
    for &(id, offset, size) in &areas {
        if offset < 2 * metadata {
            return Err(Invalid::AreaInMetadata {
                id: id.into(),
                offset,
                metadata_end: 2 * metadata,
            });
        }
        if size == 0 {
            return Err(Invalid::AreaEmpty { id: id.into() });
        }
        if offset.checked_add(size).is_none_or(|end| end > areas_end) {
            return Err(Invalid::AreaPastEnd {
                id: id.into(),
                offset,
                size,
                areas_end,
            });
        }
        for &(other, o_off, o_size) in &areas {
            if other == id {
                continue;
            }
            let Some(o_end) = o_off.checked_add(o_size) else {
                return Err(Invalid::AreaPastEnd {
                    id: other.into(),
                    offset: o_off,
                    size: o_size,
                    areas_end,
                });
            };
            if offset >= o_off && offset < o_end {
                return Err(Invalid::AreasOverlap(id.into(), other.into()));
            }
        }
    }
    Ok(())
}

fn check_json_size(hdr: &Value, json_area_len: u64) -> Check {
    let json_size = json::uint64(hdr.pointer("/config/json_size"));
    if json_size != json_area_len {
        return Err(Invalid::JsonSizeMismatch {
            json_size,
            area: json_area_len,
        });
    }
    Ok(())
}

/// The checks of cryptsetup's keyslot handlers ("luks2", "reencrypt"); other keyslot types
/// are left alone, as cryptsetup does.
fn check_keyslot_types(hdr: &Value) -> Check {
    let keyslots = object(hdr, Section::JsonArea, "", "keyslots")?;
    let reqs = requirements(hdr);
    let mut reencrypt = 0;
    for (id, ks) in keyslots {
        match ks.get("type").and_then(Value::as_str) {
            Some("luks2") => {
                check_luks2_keyslot(id, ks)?;
                // Digests name keyslots by number, as cryptsetup prints them ("%u").
                let name = id.parse::<u32>().map(|n| n.to_string()).unwrap_or_default();
                let count = hdr
                    .get("digests")
                    .and_then(Value::as_object)
                    .map_or(0, |d| {
                        d.values()
                            .filter(|dg| array_has(dg.get("keyslots"), &name))
                            .count()
                    });
                if count != 1 {
                    return Err(Invalid::KeyslotDigests {
                        id: id.clone(),
                        count,
                    });
                }
            }
            Some("reencrypt") => reencrypt += 1,
            _ => {}
        }
    }
    if reqs.iter().any(|r| requirement_is_online_reencrypt(r)) && reencrypt == 0 {
        return Err(Invalid::ReencryptKeyslotMissing);
    }
    if reencrypt > 0 && !reqs.iter().any(|r| reencrypt_candidate(r)) {
        return Err(Invalid::ReencryptRequirementMissing);
    }
    if reencrypt > 1 {
        return Err(Invalid::ReencryptKeyslots);
    }
    Ok(())
}

fn check_luks2_keyslot(id: &str, ks: &Value) -> Check {
    let kdf = field(ks, Section::Keyslot, id, "kdf", JsonType::Object)?;
    let af = field(ks, Section::Keyslot, id, "af", JsonType::Object)?;
    let area = field(ks, Section::Keyslot, id, "area", JsonType::Object)?;
    // cryptsetup "repairs" extra KDF fields away and then requires exactly the known ones:
    // the same as requiring the known ones.
    match string(kdf, Section::KeyslotKdf, id, "type")? {
        "pbkdf2" => {
            string(kdf, Section::KeyslotKdf, id, "hash")?;
            field(
                kdf,
                Section::KeyslotKdf,
                id,
                "iterations",
                JsonType::Integer,
            )?;
            string(kdf, Section::KeyslotKdf, id, "salt")?;
        }
        "argon2i" | "argon2id" => {
            for key in ["time", "memory", "cpus"] {
                field(kdf, Section::KeyslotKdf, id, key, JsonType::Integer)?;
            }
            string(kdf, Section::KeyslotKdf, id, "salt")?;
        }
        _ => {}
    }
    let af_type = string(af, Section::KeyslotAf, id, "type")?;
    if af_type != "luks1" {
        return Err(Invalid::AfType {
            id: id.into(),
            kind: af_type.into(),
        });
    }
    string(af, Section::KeyslotAf, id, "hash")?;
    field(af, Section::KeyslotAf, id, "stripes", JsonType::Integer)?;
    let area_type = string(area, Section::KeyslotArea, id, "type")?;
    if area_type != "raw" {
        return Err(Invalid::AreaType {
            id: id.into(),
            kind: area_type.into(),
        });
    }
    string(area, Section::KeyslotArea, id, "encryption")?;
    field(
        area,
        Section::KeyslotArea,
        id,
        "key_size",
        JsonType::Integer,
    )?;
    string(area, Section::KeyslotArea, id, "offset")?;
    string(area, Section::KeyslotArea, id, "size")?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_segments(n: usize) -> Value {
        let segments: serde_json::Map<String, Value> = (0..n)
            .map(|i| {
                let seg = serde_json::json!({
                    "type": "linear", "offset": (16_777_216 + 512 * i).to_string(),
                    "size": "512"
                });
                (i.to_string(), seg)
            })
            .collect();
        serde_json::json!({
            "keyslots": {}, "tokens": {}, "digests": {}, "segments": segments,
            "config": {"json_size": "12288", "keyslots_size": "16744448"}
        })
    }

    #[test]
    fn headers_with_thousands_of_entries_are_refused_before_any_pairwise_check() {
        let e = validate(&with_segments(MAX_ENTRIES + 1), 12288).unwrap_err();
        assert!(
            matches!(
                e,
                Invalid::TooManyEntries {
                    section: Section::Segment,
                    count,
                    ..
                } if count == MAX_ENTRIES + 1
            ),
            "{e}"
        );
        // At the limit the count passes (the header fails later checks for other reasons).
        let e = validate(&with_segments(MAX_ENTRIES), 12288).err();
        assert!(!matches!(e, Some(Invalid::TooManyEntries { .. })), "{e:?}");
        let mut refs = with_segments(1);
        refs["digests"] = serde_json::json!({"0": {"type": "pbkdf2", "keyslots": [],
            "segments": vec!["0"; MAX_ENTRIES + 1]}});
        assert!(matches!(
            validate(&refs, 12288),
            Err(Invalid::TooManyEntries {
                section: Section::Digest,
                ..
            })
        ));
    }
}
