//! The LUKS2 JSON metadata as bifs uses it. Written in the exact shapes cryptsetup writes (u64
//! values as decimal strings, small integers as numbers, object keys as decimal strings); read
//! from metadata that already passed [`super::validate`], leniently: any value cryptsetup
//! accepts is kept (an unknown KDF, a negative cost) and judged only when unlocking.

use std::collections::BTreeMap;

use serde::{Serialize, Serializer};
use serde_json::Value;

use super::json;

#[derive(Debug, Clone, Serialize)]
pub struct Metadata {
    pub keyslots: BTreeMap<String, Keyslot>,
    pub tokens: serde_json::Map<String, Value>,
    pub segments: BTreeMap<String, Segment>,
    pub digests: BTreeMap<String, DigestJson>,
    pub config: Config,
}

#[derive(Debug, Clone, Serialize)]
pub struct Keyslot {
    #[serde(rename = "type")]
    pub kind: String,
    pub key_size: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub af: Option<Af>,
    pub area: Area,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kdf: Option<KdfJson>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub priority: Option<i64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Af {
    #[serde(rename = "type")]
    pub kind: String,
    pub stripes: i64,
    pub hash: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct Area {
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(with = "u64_str")]
    pub offset: u64,
    #[serde(with = "u64_str")]
    pub size: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub encryption: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key_size: Option<i64>,
}

/// A keyslot's KDF: `pbkdf2` has hash + iterations, `argon2i`/`argon2id` time + memory +
/// cpus; other types (the legacy "argon2") keep whatever they carry. Field order is the
/// order cryptsetup writes.
#[derive(Debug, Clone, Serialize)]
pub struct KdfJson {
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hash: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub iterations: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub time: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub memory: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cpus: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub salt: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Segment {
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(with = "u64_str")]
    pub offset: u64,
    pub size: SegmentSize,
    #[serde(with = "u64_str")]
    pub iv_tweak: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub encryption: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sector_size: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub integrity: Option<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub flags: Vec<String>,
}

/// A segment's size: `"dynamic"` (to the end of the device) or a byte count.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SegmentSize {
    Dynamic,
    Bytes(u64),
}

impl Serialize for SegmentSize {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            SegmentSize::Dynamic => s.serialize_str("dynamic"),
            SegmentSize::Bytes(n) => s.serialize_str(&n.to_string()),
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct DigestJson {
    #[serde(rename = "type")]
    pub kind: String,
    pub keyslots: Vec<String>,
    pub segments: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hash: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub iterations: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub salt: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub digest: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Config {
    #[serde(with = "u64_str")]
    pub json_size: u64,
    #[serde(with = "u64_str")]
    pub keyslots_size: u64,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub flags: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub requirements: Option<Requirements>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Requirements {
    pub mandatory: Vec<String>,
}

fn opt_string(v: Option<&Value>) -> Option<String> {
    v.map(|x| json::text(Some(x)))
}

fn opt_int(v: Option<&Value>) -> Option<i64> {
    v.map(|x| json::int64(Some(x)))
}

impl Metadata {
    /// The typed view of metadata that passed validation. Fields that validation does not
    /// require for a section's type are optional here.
    pub fn from_json(hdr: &Value) -> Self {
        let section = |name: &str| {
            hdr.get(name)
                .and_then(Value::as_object)
                .cloned()
                .unwrap_or_default()
        };
        let keyslots = section("keyslots")
            .iter()
            .map(|(id, v)| (id.clone(), Keyslot::from_json(v)))
            .collect();
        let segments = section("segments")
            .iter()
            .map(|(id, v)| (id.clone(), Segment::from_json(v)))
            .collect();
        let digests = section("digests")
            .iter()
            .map(|(id, v)| (id.clone(), DigestJson::from_json(v)))
            .collect();
        let config = Config {
            json_size: json::uint64(hdr.pointer("/config/json_size")),
            keyslots_size: json::uint64(hdr.pointer("/config/keyslots_size")),
            flags: json::strings(hdr.pointer("/config/flags")),
            requirements: hdr.pointer("/config/requirements").map(|_| Requirements {
                mandatory: super::validate::requirements(hdr),
            }),
        };
        Metadata {
            keyslots,
            tokens: section("tokens"),
            segments,
            digests,
            config,
        }
    }

    /// The digest that binds keyslot `id` (the first that lists it, as cryptsetup looks it up).
    pub fn digest_of_keyslot(&self, id: &str) -> Option<(&String, &DigestJson)> {
        self.digests
            .iter()
            .find(|(_, d)| d.keyslots.iter().any(|k| k == id))
    }

    /// The digest of segment `id`.
    pub fn digest_of_segment(&self, id: &str) -> Option<(&String, &DigestJson)> {
        self.digests
            .iter()
            .find(|(_, d)| d.segments.iter().any(|s| s == id))
    }

    /// Whether keyslot `id` unlocks a regular segment (`luksDump`'s "(unbound)" otherwise).
    pub fn keyslot_is_bound(&self, id: &str) -> bool {
        let Some((digest, _)) = self.digest_of_keyslot(id) else {
            return false;
        };
        let regular = self.segments.values().filter(|s| !s.is_backup()).count();
        (0..regular).any(|s| {
            self.digest_of_segment(&s.to_string())
                .is_some_and(|(d, _)| d == digest)
        })
    }
}

impl Keyslot {
    fn from_json(v: &Value) -> Self {
        let af = v.get("af").filter(|a| a.is_object()).map(|a| Af {
            kind: json::text(a.get("type")),
            stripes: json::int64(a.get("stripes")),
            hash: json::text(a.get("hash")),
        });
        let area = v.get("area");
        let kdf = v.get("kdf").filter(|k| k.is_object()).map(|k| KdfJson {
            kind: json::text(k.get("type")),
            hash: opt_string(k.get("hash")),
            iterations: opt_int(k.get("iterations")),
            time: opt_int(k.get("time")),
            memory: opt_int(k.get("memory")),
            cpus: opt_int(k.get("cpus")),
            salt: opt_string(k.get("salt")),
        });
        Keyslot {
            kind: json::text(v.get("type")),
            key_size: json::uint32(v.get("key_size")),
            af,
            area: Area {
                kind: json::text(area.and_then(|a| a.get("type"))),
                offset: json::uint64(area.and_then(|a| a.get("offset"))),
                size: json::uint64(area.and_then(|a| a.get("size"))),
                encryption: opt_string(area.and_then(|a| a.get("encryption"))),
                key_size: opt_int(area.and_then(|a| a.get("key_size"))),
            },
            kdf,
            priority: opt_int(v.get("priority")),
        }
    }
}

impl Segment {
    fn from_json(v: &Value) -> Self {
        let size = match v.get("size").and_then(Value::as_str) {
            Some("dynamic") => SegmentSize::Dynamic,
            _ => SegmentSize::Bytes(json::uint64(v.get("size"))),
        };
        Segment {
            kind: json::text(v.get("type")),
            offset: json::uint64(v.get("offset")),
            size,
            iv_tweak: json::uint64(v.get("iv_tweak")),
            encryption: opt_string(v.get("encryption")),
            sector_size: v.get("sector_size").map(|s| json::uint32(Some(s))),
            integrity: v.pointer("/integrity/type").map(|t| json::text(Some(t))),
            flags: json::strings(v.get("flags")),
        }
    }

    pub fn is_backup(&self) -> bool {
        self.flags.iter().any(|f| f.starts_with("backup-"))
    }
}

impl DigestJson {
    fn from_json(v: &Value) -> Self {
        DigestJson {
            kind: json::text(v.get("type")),
            keyslots: json::strings(v.get("keyslots")),
            segments: json::strings(v.get("segments")),
            hash: opt_string(v.get("hash")),
            iterations: opt_int(v.get("iterations")),
            salt: opt_string(v.get("salt")),
            digest: opt_string(v.get("digest")),
        }
    }
}

/// u64 values are decimal strings in LUKS2 JSON (JSON numbers lose precision past 2^53).
pub mod u64_str {
    use serde::Serializer;

    pub fn serialize<S: Serializer>(v: &u64, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&v.to_string())
    }
}
