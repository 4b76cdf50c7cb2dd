//! The LUKS2 JSON metadata, in the exact shapes cryptsetup writes: u64 values as decimal
//! strings, small integers as numbers, object keys as decimal strings.

use std::collections::BTreeMap;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Metadata {
    pub keyslots: BTreeMap<String, Keyslot>,
    #[serde(default)]
    pub tokens: serde_json::Map<String, serde_json::Value>,
    pub segments: BTreeMap<String, Segment>,
    pub digests: BTreeMap<String, DigestJson>,
    pub config: Config,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
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
    pub priority: Option<u32>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Af {
    #[serde(rename = "type")]
    pub kind: String,
    pub stripes: u32,
    pub hash: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
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
    pub key_size: Option<u32>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "type")]
pub enum KdfJson {
    #[serde(rename = "pbkdf2")]
    Pbkdf2 {
        hash: String,
        iterations: u32,
        salt: String,
    },
    #[serde(rename = "argon2i")]
    Argon2i {
        time: u32,
        memory: u32,
        cpus: u32,
        salt: String,
    },
    #[serde(rename = "argon2id")]
    Argon2id {
        time: u32,
        memory: u32,
        cpus: u32,
        salt: String,
    },
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Segment {
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(with = "u64_str")]
    pub offset: u64,
    pub size: SegmentSize,
    #[serde(with = "u64_str", default)]
    pub iv_tweak: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub encryption: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sector_size: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub flags: Option<Vec<String>>,
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

impl<'de> Deserialize<'de> for SegmentSize {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        if s == "dynamic" {
            return Ok(SegmentSize::Dynamic);
        }
        s.parse().map(SegmentSize::Bytes).map_err(|_| {
            serde::de::Error::custom(format!(
                "segment size {s:?} is neither \"dynamic\" nor a number"
            ))
        })
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DigestJson {
    #[serde(rename = "type")]
    pub kind: String,
    pub keyslots: Vec<String>,
    pub segments: Vec<String>,
    pub hash: String,
    pub iterations: u32,
    pub salt: String,
    pub digest: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Config {
    #[serde(with = "u64_str")]
    pub json_size: u64,
    #[serde(with = "u64_str")]
    pub keyslots_size: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub flags: Option<Vec<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub requirements: Option<Requirements>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Requirements {
    #[serde(default)]
    pub mandatory: Vec<String>,
}

/// u64 values are decimal strings in LUKS2 JSON (JSON numbers lose precision past 2^53).
pub mod u64_str {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &u64, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&v.to_string())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
        let s = String::deserialize(d)?;
        s.parse()
            .map_err(|_| serde::de::Error::custom(format!("{s:?} is not a u64 string")))
    }
}
