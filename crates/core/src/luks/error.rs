//! What can go wrong with a LUKS header, by kind: a header cryptsetup itself refuses
//! ([`Invalid`]), a valid header bifs cannot unlock ([`Unsupported`]), and the rest (I/O, a
//! wrong passphrase, a KDF cost refused).

use std::io;

use crate::kdf::KdfError;

#[derive(Debug, thiserror::Error)]
pub enum LuksError {
    #[error("not a LUKS image (no LUKS magic where cryptsetup looks for it)")]
    NotLuks,
    #[error("truncated LUKS header: the image ends inside the {0}")]
    Truncated(&'static str),
    /// The header breaks one of cryptsetup's rules: cryptsetup refuses it too.
    #[error("invalid LUKS header: {0}")]
    Invalid(#[from] Invalid),
    /// A valid header (cryptsetup loads it) that bifs cannot unlock.
    #[error("unsupported LUKS header: {0}")]
    Unsupported(#[from] Unsupported),
    /// A header made for another purpose than the one asked (an encrypt view's header region).
    #[error("LUKS header not in bifs's layout: {0}")]
    Layout(#[from] Layout),
    #[error("no keyslot opens with this passphrase")]
    WrongPassphrase,
    #[error("keyslot KDF: {0}")]
    Kdf(#[from] KdfError),
    #[error("reading the LUKS header: {0}")]
    Io(#[from] io::Error),
    #[error("keyslot cipher: {0}")]
    Xts(#[from] crate::xts::XtsError),
    #[error("the OS random number generator failed: {0}")]
    Random(getrandom::Error),
    /// A seeded key stream asked for more bytes than ChaCha20 gives under one key.
    #[error("the header's key stream ran out")]
    StreamExhausted,
    /// An unlock stopped between keyslots because its caller no longer wants it.
    #[error("unlock cancelled (its client went away or the server is stopping)")]
    Cancelled,
    /// An unlock tried as many keyslots as its limits allow (each a KDF run) and none opened.
    #[error("no keyslot opened within the limit of {tried} keyslots tried per unlock (--max-kdf-keyslots)")]
    KeyslotBudget { tried: u32 },
    /// Our own new metadata did not serialize (cannot happen with serde_json's maps, but the
    /// API says it may).
    #[error("serializing new LUKS2 metadata: {0}")]
    SerializeMetadata(#[source] serde_json::Error),
}

/// A LUKS2 JSON section, as messages name it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Section {
    Keyslot,
    Token,
    Segment,
    Digest,
    Config,
    Requirements,
    KeyslotArea,
    KeyslotKdf,
    KeyslotAf,
    SegmentIntegrity,
    JsonArea,
}

impl std::fmt::Display for Section {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Section::Keyslot => "keyslot",
            Section::Token => "token",
            Section::Segment => "segment",
            Section::Digest => "digest",
            Section::Config => "config",
            Section::Requirements => "config.requirements",
            Section::KeyslotArea => "keyslot area",
            Section::KeyslotKdf => "keyslot kdf",
            Section::KeyslotAf => "keyslot af",
            Section::SegmentIntegrity => "segment integrity",
            Section::JsonArea => "JSON metadata",
        })
    }
}

/// The JSON type a field must have.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JsonType {
    Object,
    Array,
    /// A non-empty string.
    String,
    Integer,
}

impl std::fmt::Display for JsonType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            JsonType::Object => "an object",
            JsonType::Array => "an array",
            JsonType::String => "a non-empty string",
            JsonType::Integer => "an integer",
        })
    }
}

/// A rule of cryptsetup's header validation that the header breaks (LUKS2:
/// `luks2_json_metadata.c`, `luks2_disk_metadata.c`; LUKS1: `keymanage.c`).
#[derive(Debug, thiserror::Error)]
pub enum Invalid {
    // --- the binary header and the JSON area's bytes ---
    #[error("no LUKS2 header copy at offset {offset} ({found})")]
    NoCopyAt { offset: u64, found: &'static str },
    #[error("LUKS2 header copy at {offset} has version {version} (expected 2)")]
    Version { offset: u64, version: u16 },
    #[error("LUKS2 header copy at {offset} claims to sit at offset {claimed}")]
    CopyOffset { offset: u64, claimed: u64 },
    #[error("LUKS2 header copy at {offset} has header size {size} (expected 16 KiB to 4 MiB)")]
    HeaderSize { offset: u64, size: u64 },
    #[error("secondary LUKS2 header at {offset} has header size {size} (expected its own offset)")]
    SecondarySize { offset: u64, size: u64 },
    #[error("LUKS2 header copy at {offset} uses checksum algorithm {alg:?} (expected sha256)")]
    ChecksumAlgorithm { offset: u64, alg: String },
    #[error("checksum mismatch in the LUKS2 header copy at offset {offset}")]
    Checksum { offset: u64 },
    #[error("the JSON area does not start with '{{'")]
    JsonOpening,
    #[error("JSON metadata does not parse: {0}")]
    JsonSyntax(#[source] serde_json::Error),
    #[error("JSON metadata does not parse: nested deeper than {0} levels")]
    JsonDepth(usize),
    #[error("the JSON area has no NUL byte after the JSON text")]
    JsonNotTerminated,
    #[error("byte {byte:#04x} after the JSON text at offset {offset} of the JSON area (expected only NUL bytes)")]
    JsonTrailing { byte: u8, offset: usize },
    #[error("the JSON metadata is not an object")]
    JsonNotObject,
    #[error("both LUKS2 header copies are damaged (primary: {primary}; secondary: {secondary})")]
    BothCopies {
        primary: Box<Invalid>,
        secondary: Box<Invalid>,
    },

    // --- object shapes and values ---
    #[error("{section} {id:?}: {field:?} is missing or not {want}")]
    Field {
        section: Section,
        id: String,
        field: &'static str,
        want: JsonType,
    },
    #[error("{section} id {id:?} is not a decimal number")]
    NotNumbered { section: Section, id: String },
    #[error("{section} {id:?}: {field} {value:?} is not a decimal string of a 64-bit number")]
    NotU64 {
        section: Section,
        id: String,
        field: &'static str,
        value: String,
    },
    #[error("{section} {id:?}: {field} {value} is not a 32-bit unsigned number")]
    NotU32 {
        section: Section,
        id: String,
        field: &'static str,
        value: String,
    },
    #[error("{section} {id:?}: {field} has an element that is not a string")]
    NotStringArray {
        section: Section,
        id: String,
        field: &'static str,
    },
    #[error("{section} {id:?} references {kind} {target:?}, which does not exist")]
    MissingReference {
        section: Section,
        id: String,
        kind: &'static str,
        target: String,
    },
    #[error("keyslot {id:?}: af type {kind:?} (expected luks1)")]
    AfType { id: String, kind: String },
    #[error("keyslot {id:?}: area type {kind:?} (expected raw)")]
    AreaType { id: String, kind: String },

    // --- segments ---
    #[error("no segments")]
    NoSegments,
    #[error("segment {id:?}: {field} {value} is not a multiple of {align}")]
    SegmentAlignment {
        id: String,
        field: &'static str,
        value: u64,
        align: u64,
    },
    #[error("{count} {section} entries or references (bifs validates at most {max})")]
    TooManyEntries {
        section: Section,
        count: usize,
        max: usize,
    },
    #[error("segment {id:?}: size 0")]
    SegmentSizeZero { id: String },
    #[error("segment {id:?}: sector size {sector_size} (expected a non-zero multiple of 512)")]
    SectorSize { id: String, sector_size: u64 },
    #[error("crypt segment {id:?} is not assigned to any digest")]
    SegmentWithoutDigest { id: String },
    #[error("segment {id:?} is a regular segment after backup segment {backup:?}")]
    SegmentAfterBackup { id: String, backup: u32 },
    #[error("no regular segment (segment 0 is a backup segment)")]
    NoRegularSegment,
    #[error("segments are not numbered 0, 1, 2... without a gap (segment {0} is missing)")]
    SegmentGap(u32),
    #[error("only the last regular segment may have a \"dynamic\" size (segment {0} has one)")]
    DynamicNotLast(u32),
    #[error("segments {0} and {1} overlap")]
    SegmentsOverlap(u32, u32),
    #[error("an online reencryption requirement without its backup segments")]
    ReencryptBackupMissing,

    // --- config ---
    #[error("config.json_size {json_size} + 4096 is not a LUKS2 header size (16 KiB to 4 MiB, a power of two)")]
    MetadataSize { json_size: u64 },
    #[error("config.keyslots_size {0} is not a multiple of 4096 or exceeds 128 MiB")]
    KeyslotsSize(u64),
    #[error("config.keyslots_size {keyslots_size} does not fit between the metadata ({metadata_end} bytes) and the data at {data_offset}")]
    KeyslotsTooLarge {
        keyslots_size: u64,
        metadata_end: u64,
        data_offset: u64,
    },
    #[error("config.json_size {json_size} does not match the header's JSON area of {area} bytes")]
    JsonSizeMismatch { json_size: u64, area: u64 },
    #[error("more than one online reencryption requirement")]
    MultipleReencryptRequirements,

    // --- keyslot areas and keyslots ---
    #[error("keyslot {id:?}: area at {offset} lies inside the metadata (ends at {metadata_end})")]
    AreaInMetadata {
        id: String,
        offset: u64,
        metadata_end: u64,
    },
    #[error("keyslot {id:?}: area has length 0")]
    AreaEmpty { id: String },
    #[error(
        "keyslot {id:?}: area {offset}+{size} runs past the keyslots area (ends at {areas_end})"
    )]
    AreaPastEnd {
        id: String,
        offset: u64,
        size: u64,
        areas_end: u64,
    },
    #[error("keyslot areas of keyslots {0:?} and {1:?} overlap")]
    AreasOverlap(String, String),
    #[error("keyslot {id:?} is assigned to {count} digests (expected exactly 1)")]
    KeyslotDigests { id: String, count: usize },
    #[error("an online reencryption requirement without a reencrypt keyslot")]
    ReencryptKeyslotMissing,
    #[error("a reencrypt keyslot without an online reencryption requirement")]
    ReencryptRequirementMissing,
    #[error("more than one reencrypt keyslot")]
    ReencryptKeyslots,
    #[error(
        "the image of {len} bytes is smaller than its LUKS2 metadata and keyslots ({need} bytes)"
    )]
    DeviceTooSmall { len: u64, need: u64 },

    #[error("{what} of {id:?} is not base64")]
    Base64 { what: &'static str, id: String },
    #[error(
        "keyslot {id:?}: area of {size} bytes is smaller than its key material ({need} bytes)"
    )]
    AreaTooSmall { id: String, size: u64, need: u64 },

    // --- LUKS1 ---
    #[error("LUKS1 hash {0:?} is not a hash cryptsetup knows (with at least 20 bytes of output)")]
    Luks1Hash(String),
    #[error("LUKS1 key size of 0 bytes")]
    Luks1KeySize,
    #[error("LUKS1 keyslot {slot} has {stripes} AF stripes (expected 4000)")]
    Luks1Stripes { slot: usize, stripes: u32 },
    #[error("LUKS1 keyslot {slot} key material at sector {sector} overlaps the header")]
    Luks1MaterialInHeader { slot: usize, sector: u32 },
    #[error("LUKS1 keyslot {slot} key material (sectors {start}..{end}) runs into the payload at sector {payload}")]
    Luks1MaterialInPayload {
        slot: usize,
        start: u64,
        end: u64,
        payload: u32,
    },
    #[error("LUKS1 keyslots {0} and {1} overlap")]
    Luks1Overlap(usize, usize),
    #[error(
        "the image of {len} bytes is smaller than its LUKS1 header and keyslots ({need} bytes)"
    )]
    Luks1DeviceTooSmall { len: u64, need: u64 },

    // --- data ---
    #[error("data segment at {offset} starts past the end of the {image_len}-byte image")]
    DataPastEnd { offset: u64, image_len: u64 },
    #[error(
        "data segment of {size} bytes at {offset} runs past the end of the {image_len}-byte image"
    )]
    DataTooLong {
        offset: u64,
        size: u64,
        image_len: u64,
    },
}

/// A value of a valid header that bifs does not implement; unlocking refuses it, naming it.
#[derive(Debug, thiserror::Error)]
pub enum Unsupported {
    #[error("LUKS version {0}")]
    Version(u16),
    #[error("cipher {0:?} (bifs supports only aes-xts-plain64)")]
    Cipher(String),
    #[error("{cipher} with a {bits}-bit key (bifs supports 256 and 512)")]
    KeySize { cipher: String, bits: u64 },
    #[error("{what} hash {name:?} (bifs supports sha1, sha256, sha512)")]
    Hash { what: &'static str, name: String },
    #[error("keyslot {id}: KDF {kind:?} (bifs supports pbkdf2, argon2i, argon2id)")]
    Kdf { id: String, kind: String },
    #[error("keyslot {id}: type {kind:?} (bifs opens luks2 keyslots)")]
    KeyslotType { id: String, kind: String },
    #[error("keyslot {id}: {stripes} AF stripes (bifs supports 4000)")]
    Stripes { id: String, stripes: i64 },
    #[error("keyslot {id}: key sizes {key_size}/{area_key_size} bytes")]
    KeyslotKeySize {
        id: String,
        key_size: u64,
        area_key_size: i64,
    },
    #[error("digest {id}: type {kind:?} (bifs supports pbkdf2)")]
    DigestType { id: String, kind: String },
    #[error("digest {id}: {what}")]
    Digest { id: String, what: &'static str },
    #[error("{count} data segments (bifs supports one; an unfinished reencryption?)")]
    SegmentCount { count: usize },
    #[error("segment type {0:?} (bifs supports crypt)")]
    SegmentType(String),
    #[error("segment flags {0:?}")]
    SegmentFlags(Vec<String>),
    #[error("segment with integrity protection ({0})")]
    Integrity(String),
    #[error("segment sector size {0} (bifs supports 512, 1024, 2048, 4096)")]
    SectorSize(u64),
    #[error("mandatory requirements {0:?} (e.g. an unfinished reencryption)")]
    Requirements(Vec<String>),
    #[error("no keyslot is bound to the data segment")]
    NoBoundKeyslot,
    #[error("LUKS1 header with the payload at offset 0 (a detached header)")]
    DetachedHeader,
    #[error("volume key of {0} bytes (bifs formats 32 or 64)")]
    VolumeKey(usize),
    #[error("sector size {sector_size} for {data_len} bytes of data (not a multiple)")]
    SectorSizeFor { sector_size: usize, data_len: u64 },
    #[error("a LUKS1 header for an encrypt view")]
    Luks1EncryptView,
}

/// A header region that is not the one bifs itself writes for its encrypt views.
#[derive(Debug, thiserror::Error)]
pub enum Layout {
    #[error("header region of {len} bytes with data at {data_offset} (expected {expected} and {expected})")]
    Region {
        len: u64,
        data_offset: u64,
        expected: u64,
    },
    #[error("JSON metadata of {json_len} bytes does not fit a {area}-byte JSON area")]
    JsonTooLarge { json_len: usize, area: usize },
    #[error("the header's {sector_size}-byte sectors do not divide the {len}-byte source")]
    SectorSize { sector_size: usize, len: u64 },
}
