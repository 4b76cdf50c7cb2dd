//! LUKS2: read (both header copies and cryptsetup's rules for choosing and recovering one,
//! [`super::validate`] on the JSON), unlock (keyslots bound to the data segment,
//! PBKDF2/Argon2i/Argon2id), and format a new header laid out exactly as
//! `cryptsetup luksFormat --type luks2` lays out a regular file.

use std::collections::BTreeMap;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use serde_json::Value;
use zeroize::Zeroizing;

use super::binary::{self, BinaryHeader, BINARY_HEADER_SIZE, HDR_SIZES};
use super::error::{Invalid, Unsupported};
use super::metadata::{
    Af, Area, Config, DigestJson, KdfJson, Keyslot, Metadata, Segment, SegmentSize,
};
use super::random::{OsRandom, Randomness};
use super::{
    af, ct_eq, open_key_material, validate, DataSegment, LuksError, CIPHER, DATA_OFFSET, STRIPES,
};
use crate::io::ReadAt;
use crate::kdf::{Argon2Type, Hash, Kdf, KdfLimits};
use crate::keys::{Passphrase, VolumeKey};
use crate::xts::Xts;

/// cryptsetup's default metadata size (binary header + JSON), per copy.
const DEFAULT_HDR_SIZE: u64 = 0x4000;
/// cryptsetup's default keyslots area: 16 MiB minus both metadata copies.
const DEFAULT_KEYSLOTS_SIZE: u64 = DATA_OFFSET - 2 * DEFAULT_HDR_SIZE;
const SALT_LEN: usize = 32;
/// cryptsetup's LUKS2_KEYSLOTS_MAX.
const MAX_KEYSLOTS: usize = 32;
/// json-c's default nesting limit: deeper JSON does not parse for cryptsetup.
const MAX_JSON_DEPTH: usize = 32;

/// A parsed LUKS2 header that passed cryptsetup's validation.
#[derive(Debug, Clone)]
pub struct Luks2Header {
    /// The copy that won (higher seqid, or the only valid one).
    pub binary: BinaryHeader,
    /// The metadata exactly as stored (for `luksDump`'s view of it).
    pub json: Value,
    pub metadata: Metadata,
    /// Segment 0 as bifs would decrypt it; meaningful only when [`Self::unsupported`] is
    /// `None` (unlocking checks that first).
    pub segment: DataSegment,
    /// The data segment's cipher as the header names it (`aes-xts-plain64` is the one we do).
    pub cipher: String,
    /// Set when the primary copy was damaged (or older) and the secondary was used.
    pub recovered_from_secondary: bool,
}

/// What a new LUKS2 header is made of.
#[derive(Debug, Clone)]
pub struct FormatParams {
    pub hash: Hash,
    pub kdf: Kdf,
    pub sector_size: usize,
    /// Digest iterations; `None` benchmarks toward 125 ms as cryptsetup does.
    pub digest_iterations: Option<u32>,
    pub uuid: Option<String>,
    pub label: String,
}

/// One header copy as read: valid, readable but with metadata cryptsetup refuses, or absent.
enum Copy {
    Valid(BinaryHeader, Value),
    Obsolete(BinaryHeader, Invalid),
    Failed(LuksError),
}

impl Copy {
    fn load(src: &dyn ReadAt, offset: u64) -> Copy {
        match read_area(src, offset) {
            Err(e) => Copy::Failed(e),
            Ok((bin, area)) => match parse_json(&area[BINARY_HEADER_SIZE..]) {
                Ok(json) => Copy::Valid(bin, json),
                Err(e) => Copy::Obsolete(bin, e),
            },
        }
    }

    fn error(self) -> Result<Invalid, LuksError> {
        match self {
            Copy::Valid(..) => Err(LuksError::NotLuks),
            Copy::Obsolete(_, e) => Ok(e),
            Copy::Failed(LuksError::Invalid(e)) => Ok(e),
            Copy::Failed(e) => Err(e),
        }
    }

    fn seqid(&self) -> Option<u64> {
        match self {
            Copy::Valid(b, _) => Some(b.seqid),
            _ => None,
        }
    }
}

/// Reads into `buf` until it is full or the source ends; returns how many bytes were read.
fn read_up_to(src: &dyn ReadAt, offset: u64, buf: &mut [u8]) -> Result<usize, LuksError> {
    let mut done = 0;
    while done < buf.len() {
        match src.read_at(offset + done as u64, &mut buf[done..])? {
            0 => break,
            n => done += n,
        }
    }
    Ok(done)
}

/// Reads one copy's bytes at `offset`: the binary header checks, then the whole copy and
/// its checksum (cryptsetup's `hdr_read_disk`).
fn read_area(src: &dyn ReadAt, offset: u64) -> Result<(BinaryHeader, Vec<u8>), LuksError> {
    let mut head = vec![0u8; BINARY_HEADER_SIZE];
    let n = read_up_to(src, offset, &mut head)?;
    head.truncate(n);
    // A copy whose magic is there but whose bytes are cut off is a truncated image, not "no
    // LUKS here": it must never be taken for plain data.
    let magic = if offset == 0 {
        binary::MAGIC_PRIMARY
    } else {
        binary::MAGIC_SECONDARY
    };
    let has_magic = head.starts_with(magic);
    if has_magic && head.len() < BINARY_HEADER_SIZE {
        return Err(LuksError::Truncated("LUKS2 binary header"));
    }
    // The size is checked (at most 4 MiB) before it is allocated.
    let hdr_size = binary::check_pre(&head, offset)?;
    let mut area = vec![0u8; hdr_size as usize];
    if read_up_to(src, offset, &mut area)? < area.len() {
        return Err(LuksError::Truncated("LUKS2 JSON area"));
    }
    let bin = BinaryHeader::parse(&area, offset)?;
    Ok((bin, area))
}

fn depth(v: &Value) -> usize {
    match v {
        Value::Array(a) => 1 + a.iter().map(depth).max().unwrap_or(0),
        Value::Object(o) => 1 + o.values().map(depth).max().unwrap_or(0),
        _ => 0,
    }
}

/// The JSON area: `{`, one JSON object, then only NUL bytes (at least one), and metadata
/// that passes cryptsetup's validation.
fn parse_json(area: &[u8]) -> Result<Value, Invalid> {
    if area.first() != Some(&b'{') {
        return Err(Invalid::JsonOpening);
    }
    // cryptsetup's parser (json-c, without JSON_TOKENER_VALIDATE_UTF8) takes strings as bytes:
    // a header whose JSON strings are not valid UTF-8 loads and opens. serde_json wants UTF-8,
    // so invalid sequences become U+FFFD: the header loads and opens as it does for
    // cryptsetup (only such a string, where printed, shows U+FFFD instead of the raw bytes).
    let area_len = area.len() as u64;
    let text = String::from_utf8_lossy(area);
    let area = text.as_bytes();
    let mut stream = serde_json::Deserializer::from_slice(area).into_iter::<Value>();
    let json = match stream.next() {
        Some(Ok(v)) => v,
        Some(Err(e)) => return Err(Invalid::JsonSyntax(e)),
        None => return Err(Invalid::JsonOpening),
    };
    let end = stream.byte_offset();
    if end >= area.len() {
        return Err(Invalid::JsonNotTerminated);
    }
    if let Some(pos) = area[end..].iter().position(|&b| b != 0) {
        return Err(Invalid::JsonTrailing {
            byte: area[end + pos],
            offset: end + pos,
        });
    }
    if depth(&json) > MAX_JSON_DEPTH {
        return Err(Invalid::JsonDepth(MAX_JSON_DEPTH));
    }
    validate::validate(&json, area_len)?;
    Ok(json)
}

impl Luks2Header {
    /// Reads the header as cryptsetup does: the primary copy at 0; the secondary after it, or,
    /// when the primary is unreadable, at the first legal offset (16 KiB to 4 MiB) holding one;
    /// of two valid copies the higher seqid wins. [`LuksError::NotLuks`] only when no copy
    /// carries LUKS2 magic anywhere cryptsetup looks.
    pub fn read(src: &dyn ReadAt) -> Result<Self, LuksError> {
        let primary = Copy::load(src, 0);
        let secondary = match &primary {
            Copy::Valid(b, _) | Copy::Obsolete(b, _) => Copy::load(src, b.hdr_size),
            Copy::Failed(_) => scan_secondary(src)?,
        };
        let use_secondary = match (&primary, &secondary) {
            (Copy::Valid(..), Copy::Valid(..)) => secondary.seqid() > primary.seqid(),
            (Copy::Valid(..), _) => false,
            (_, Copy::Valid(..)) => true,
            _ => {
                let no_magic = |c: &Copy| {
                    matches!(
                        c,
                        Copy::Failed(LuksError::Invalid(Invalid::NoCopyAt { .. }))
                    )
                };
                let nothing_anywhere = no_magic(&primary) && no_magic(&secondary);
                let (p, s) = (primary.error()?, secondary.error()?);
                if nothing_anywhere && is_no_magic(&p) {
                    return Err(LuksError::NotLuks);
                }
                // The same fault in both copies (an edit written twice) is reported once.
                if p.to_string() == s.to_string() {
                    return Err(p.into());
                }
                return Err(Invalid::BothCopies {
                    primary: Box::new(p),
                    secondary: Box::new(s),
                }
                .into());
            }
        };
        let chosen = if use_secondary { secondary } else { primary };
        let Copy::Valid(binary, json) = chosen else {
            return Err(LuksError::NotLuks);
        };
        let need = 2 * validate::metadata_size(&json) + validate::keyslots_size(&json);
        if src.len() < need {
            return Err(Invalid::DeviceTooSmall {
                len: src.len(),
                need,
            }
            .into());
        }
        Ok(Self::from_parts(binary, json, use_secondary))
    }

    fn from_parts(binary: BinaryHeader, json: Value, recovered_from_secondary: bool) -> Self {
        let metadata = Metadata::from_json(&json);
        let seg = metadata.segments.get("0");
        let key_len = metadata
            .digest_of_segment("0")
            .into_iter()
            .flat_map(|(_, d)| d.keyslots.iter())
            .filter_map(|id| metadata.keyslots.get(id))
            .map(|ks| ks.key_size as usize)
            .next()
            .unwrap_or(0);
        let segment = DataSegment {
            offset: seg.map_or(0, |s| s.offset),
            size: match seg.map(|s| s.size) {
                Some(SegmentSize::Bytes(n)) => Some(n),
                _ => None,
            },
            sector_size: seg.and_then(|s| s.sector_size).unwrap_or(512) as usize,
            iv_tweak: seg.map_or(0, |s| s.iv_tweak),
            key_len,
        };
        let cipher = seg.and_then(|s| s.encryption.clone()).unwrap_or_default();
        Luks2Header {
            binary,
            json,
            metadata,
            segment,
            cipher,
            recovered_from_secondary,
        }
    }

    /// What keeps bifs from decrypting this (valid) header's data, if anything: requirements,
    /// more than one segment, a segment type, flags, integrity, cipher, sector or key size.
    pub fn unsupported(&self) -> Option<Unsupported> {
        let md = &self.metadata;
        if let Some(req) = md
            .config
            .requirements
            .as_ref()
            .filter(|r| !r.mandatory.is_empty())
        {
            return Some(Unsupported::Requirements(req.mandatory.clone()));
        }
        if md.segments.len() != 1 {
            return Some(Unsupported::SegmentCount {
                count: md.segments.len(),
            });
        }
        let Some(seg) = md.segments.get("0") else {
            return Some(Unsupported::SegmentCount { count: 0 });
        };
        if seg.kind != "crypt" {
            return Some(Unsupported::SegmentType(seg.kind.clone()));
        }
        if !seg.flags.is_empty() {
            return Some(Unsupported::SegmentFlags(seg.flags.clone()));
        }
        if let Some(integrity) = &seg.integrity {
            return Some(Unsupported::Integrity(integrity.clone()));
        }
        if self.cipher != CIPHER {
            return Some(Unsupported::Cipher(self.cipher.clone()));
        }
        let sector = u64::from(seg.sector_size.unwrap_or(0));
        if !matches!(sector, 512 | 1024 | 2048 | 4096) {
            return Some(Unsupported::SectorSize(sector));
        }
        if self.segment.key_len == 0 {
            return Some(Unsupported::NoBoundKeyslot);
        }
        if !matches!(self.segment.key_len, 32 | 64) {
            let bits = self.segment.key_len as u64 * 8;
            return Some(Unsupported::KeySize {
                cipher: self.cipher.clone(),
                bits,
            });
        }
        if seg.offset == 0 {
            return Some(Unsupported::DetachedHeader);
        }
        None
    }

    /// Tries the keyslots bound to the data segment (preferred ones first, "ignored" ones
    /// never, as cryptsetup); returns the volume key and the keyslot that opened. A keyslot
    /// bound to no segment (`luksAddKey --unbound`) never opens the data.
    pub fn unlock(
        &self,
        src: &dyn ReadAt,
        passphrase: &Passphrase,
        limits: &KdfLimits,
    ) -> Result<(VolumeKey, u32), LuksError> {
        self.unlock_until(src, passphrase, limits, &|| false)
    }

    /// [`Self::unlock`] that asks `stop` before each keyslot (a KDF run cannot be interrupted,
    /// but the next one need not start) and tries at most `limits.max_keyslots` of them.
    pub fn unlock_until(
        &self,
        src: &dyn ReadAt,
        passphrase: &Passphrase,
        limits: &KdfLimits,
        stop: &dyn Fn() -> bool,
    ) -> Result<(VolumeKey, u32), LuksError> {
        if let Some(u) = self.unsupported() {
            return Err(u.into());
        }
        let md = &self.metadata;
        let Some((digest_id, digest)) = md.digest_of_segment("0") else {
            return Err(Unsupported::NoBoundKeyslot.into());
        };
        let mut last_err = LuksError::WrongPassphrase;
        for (tried, (id, ks)) in (0u32..).zip(self.keyslots_to_try()) {
            if stop() {
                return Err(LuksError::Cancelled);
            }
            if tried >= limits.max_keyslots {
                return Err(LuksError::KeyslotBudget { tried });
            }
            match open_keyslot(
                src,
                id,
                ks,
                self.segment.key_len,
                (digest_id, digest),
                passphrase,
                limits,
            ) {
                Ok(key) => return Ok((key, id.parse().unwrap_or(0))),
                Err(LuksError::WrongPassphrase) => {}
                // A keyslot we cannot use must not hide another that opens.
                Err(e) => {
                    tracing::debug!(keyslot = %id, error = %e, "keyslot skipped");
                    last_err = e;
                }
            }
        }
        Err(last_err)
    }

    /// The keyslots an unlock tries, in its order: bound to the data segment's digest,
    /// preferred ones (priority 2) first, "ignore" (0) never, ids 0..31 only (cryptsetup opens
    /// no others; this also bounds the KDF runs).
    fn keyslots_to_try(&self) -> Vec<(&String, &Keyslot)> {
        let md = &self.metadata;
        let Some((digest_id, _)) = md.digest_of_segment("0") else {
            return Vec::new();
        };
        let mut out = Vec::new();
        for priority in [2, 1] {
            for (id, ks) in &md.keyslots {
                if id.parse::<usize>().map_or(true, |n| n >= MAX_KEYSLOTS)
                    || ks.priority.unwrap_or(1) != priority
                    || md.digest_of_keyslot(id).map(|(d, _)| d) != Some(digest_id)
                {
                    continue;
                }
                out.push((id, ks));
            }
        }
        out
    }

    /// The KDF of every keyslot an unlock would try, in order (those whose KDF cannot be read
    /// are left out: they fail before any work), and the digest's PBKDF2 (hash, iterations).
    pub fn kdf_plan(&self) -> (Vec<Kdf>, Option<(Hash, u32)>) {
        let kdfs = self
            .keyslots_to_try()
            .into_iter()
            .filter_map(|(id, ks)| ks.kdf.as_ref().and_then(|k| keyslot_kdf(id, k).ok()))
            .map(|(kdf, _)| kdf)
            .collect();
        let digest = self.metadata.digest_of_segment("0").and_then(|(_, d)| {
            let hash = Hash::from_name(d.hash.as_deref()?)?;
            Some((hash, cost(d.iterations)))
        });
        (kdfs, digest)
    }

    /// Checks `key` against the data segment's digest: the volume key is right.
    pub fn verify_key(&self, key: &VolumeKey) -> Result<bool, LuksError> {
        if let Some(u) = self.unsupported() {
            return Err(u.into());
        }
        match self.metadata.digest_of_segment("0") {
            Some(digest) => check_digest(digest, key, &KdfLimits::default()),
            None => Ok(false),
        }
    }

    /// Produces the whole header region of a new image (`DATA_OFFSET` bytes: both metadata
    /// copies, keyslot 0 wrapping `key` under `passphrase`, the rest of the keyslots area
    /// random), as `cryptsetup luksFormat --type luks2` does for a regular file.
    pub fn format(
        params: &FormatParams,
        key: &VolumeKey,
        passphrase: &Passphrase,
    ) -> Result<Vec<u8>, LuksError> {
        Self::format_with(
            params,
            key,
            KeyslotKey::Passphrase(passphrase),
            &mut OsRandom,
        )
    }

    /// [`Self::format`] with the keyslot's key given or derived here, and every other value
    /// that cryptsetup takes from its RNG drawn from `rng`, in this order (a format: the
    /// stable encrypt views depend on it): the keyslots area's fill (all of it, before keyslot
    /// 0 is written over its start), keyslot 0's KDF salt (only when derived here), its AF
    /// stripes, the digest's salt, the UUID (when `params.uuid` is `None`), then the primary
    /// and the secondary binary header's salt.
    pub fn format_with(
        params: &FormatParams,
        key: &VolumeKey,
        keyslot: KeyslotKey<'_>,
        rng: &mut dyn Randomness,
    ) -> Result<Vec<u8>, LuksError> {
        check_format_params(params, key)?;
        let mut region = vec![0u8; DATA_OFFSET as usize];
        let area_offset = 2 * DEFAULT_HDR_SIZE;
        rng.fill(&mut region[area_offset as usize..])?;
        let (kdf_json, material) = new_keyslot(params, key, keyslot, rng)?;
        region[area_offset as usize..area_offset as usize + material.len()]
            .copy_from_slice(&material);
        let digest = new_digest(params, key, rng)?;
        let metadata = new_metadata(params, key.len(), kdf_json, digest);
        write_copies(&mut region, params, &metadata, rng)?;
        Ok(region)
    }
}

/// Keyslot 0's key (the key of its area): derived by [`Luks2Header::format_with`] from a
/// passphrase under a salt it draws, or already derived by the caller with the keyslot's KDF
/// (`params.kdf`) under `salt` (then stored as the keyslot's salt).
pub enum KeyslotKey<'a> {
    Passphrase(&'a Passphrase),
    Derived { salt: &'a [u8], key: &'a [u8] },
}

/// No valid primary: the first legal secondary offset with a readable copy.
fn scan_secondary(src: &dyn ReadAt) -> Result<Copy, LuksError> {
    let mut first_err = None;
    for off in HDR_SIZES {
        match read_area(src, off) {
            Ok((bin, area)) => {
                return Ok(match parse_json(&area[BINARY_HEADER_SIZE..]) {
                    Ok(json) => Copy::Valid(bin, json),
                    Err(e) => Copy::Obsolete(bin, e),
                })
            }
            Err(LuksError::Io(e)) => return Err(LuksError::Io(e)),
            // Report a copy that has magic but is damaged rather than "no magic here".
            Err(LuksError::Invalid(e)) => {
                if first_err.as_ref().is_none_or(is_no_magic) {
                    first_err = Some(e);
                }
            }
            Err(e) => return Err(e),
        }
    }
    Ok(Copy::Failed(
        first_err
            .unwrap_or(Invalid::NoCopyAt {
                offset: HDR_SIZES[0],
                found: "no magic",
            })
            .into(),
    ))
}

fn is_no_magic(e: &Invalid) -> bool {
    matches!(e, Invalid::NoCopyAt { .. })
}

fn check_format_params(params: &FormatParams, key: &VolumeKey) -> Result<(), LuksError> {
    if key.len() != 32 && key.len() != 64 {
        return Err(Unsupported::VolumeKey(key.len()).into());
    }
    if !matches!(params.sector_size, 512 | 1024 | 2048 | 4096) {
        return Err(Unsupported::SectorSize(params.sector_size as u64).into());
    }
    Ok(())
}

/// Keyslot 0: KDF(passphrase) keys the area, which holds the AF-split volume key. Returns
/// the keyslot's KDF as JSON and the encrypted area contents.
fn new_keyslot(
    params: &FormatParams,
    key: &VolumeKey,
    keyslot: KeyslotKey<'_>,
    rng: &mut dyn Randomness,
) -> Result<(KdfJson, Zeroizing<Vec<u8>>), LuksError> {
    let key_len = key.len();
    let mut area_key = Zeroizing::new(vec![0u8; key_len]);
    let kdf_salt = match keyslot {
        KeyslotKey::Passphrase(passphrase) => {
            let mut salt = vec![0u8; SALT_LEN];
            rng.fill(&mut salt)?;
            // Our own parameters: checked against cryptsetup's limits, not a reader's lower cap.
            params.kdf.derive(
                passphrase.as_bytes(),
                &salt,
                &mut area_key,
                &KdfLimits::cryptsetup(),
            )?;
            salt
        }
        KeyslotKey::Derived { salt, key: derived } => {
            if salt.len() != SALT_LEN || derived.len() != key_len {
                return Err(Unsupported::KeyslotKeySize {
                    id: "0".into(),
                    key_size: derived.len() as u64,
                    area_key_size: key_len as i64,
                }
                .into());
            }
            area_key.copy_from_slice(derived);
            salt.to_vec()
        }
    };
    let mut rng_err = None;
    let mut material = af::split(key.as_bytes(), STRIPES as usize, params.hash, |b| {
        rng_err = rng.fill(b).err();
    });
    if let Some(e) = rng_err {
        return Err(e);
    }
    let material_len = key_len * STRIPES as usize;
    material.resize(material_len.div_ceil(512) * 512, 0);
    Xts::new(&area_key)?.encrypt_sectors(&mut material, 512, 0)?;
    let salt = Some(B64.encode(&kdf_salt));
    let kdf = match params.kdf {
        Kdf::Pbkdf2 { hash, iterations } => KdfJson {
            kind: "pbkdf2".into(),
            hash: Some(hash.name().into()),
            iterations: Some(iterations.into()),
            time: None,
            memory: None,
            cpus: None,
            salt,
        },
        Kdf::Argon2 {
            kind,
            time,
            memory_kib,
            cpus,
        } => KdfJson {
            kind: match kind {
                Argon2Type::Argon2i => "argon2i",
                Argon2Type::Argon2id => "argon2id",
            }
            .into(),
            hash: None,
            iterations: None,
            time: Some(time.into()),
            memory: Some(memory_kib.into()),
            cpus: Some(cpus.into()),
            salt,
        },
    };
    Ok((kdf, material))
}

/// The volume key digest: PBKDF2 over the key, at the given iterations or bifs's fixed count
/// for the hash and key size ([`crate::kdf::digest_iterations`]).
fn new_digest(
    params: &FormatParams,
    key: &VolumeKey,
    rng: &mut dyn Randomness,
) -> Result<DigestJson, LuksError> {
    let iterations = params
        .digest_iterations
        .unwrap_or_else(|| crate::kdf::digest_iterations(params.hash, key.len()));
    let mut salt = vec![0u8; SALT_LEN];
    rng.fill(&mut salt)?;
    let mut digest = vec![0u8; params.hash.output_len()];
    params
        .hash
        .pbkdf2(key.as_bytes(), &salt, iterations, &mut digest);
    Ok(DigestJson {
        kind: "pbkdf2".into(),
        keyslots: vec!["0".into()],
        segments: vec!["0".into()],
        hash: Some(params.hash.name().into()),
        iterations: Some(iterations.into()),
        salt: Some(B64.encode(&salt)),
        digest: Some(B64.encode(&digest)),
    })
}

/// The JSON metadata of a new header: keyslot 0, one dynamic crypt segment at 16 MiB, its
/// digest, cryptsetup's default sizes.
fn new_metadata(
    params: &FormatParams,
    key_len: usize,
    kdf: KdfJson,
    digest: DigestJson,
) -> Metadata {
    let area_offset = 2 * DEFAULT_HDR_SIZE;
    let area_size = ((key_len * STRIPES as usize) as u64).div_ceil(4096) * 4096;
    let keyslot = Keyslot {
        kind: "luks2".into(),
        key_size: key_len as u32,
        af: Some(Af {
            kind: "luks1".into(),
            stripes: STRIPES.into(),
            hash: params.hash.name().into(),
        }),
        area: Area {
            kind: "raw".into(),
            offset: area_offset,
            size: area_size,
            encryption: Some(CIPHER.into()),
            key_size: Some(key_len as i64),
        },
        kdf: Some(kdf),
        priority: None,
    };
    let segment = Segment {
        kind: "crypt".into(),
        offset: DATA_OFFSET,
        size: SegmentSize::Dynamic,
        iv_tweak: 0,
        encryption: Some(CIPHER.into()),
        sector_size: Some(params.sector_size as u32),
        integrity: None,
        flags: Vec::new(),
    };
    Metadata {
        keyslots: BTreeMap::from([("0".to_string(), keyslot)]),
        tokens: serde_json::Map::new(),
        segments: BTreeMap::from([("0".to_string(), segment)]),
        digests: BTreeMap::from([("0".to_string(), digest)]),
        config: Config {
            json_size: DEFAULT_HDR_SIZE - BINARY_HEADER_SIZE as u64,
            keyslots_size: DEFAULT_KEYSLOTS_SIZE,
            flags: Vec::new(),
            requirements: None,
        },
    }
}

/// Both metadata copies (seqid 1, one UUID, each its own salt and checksum) into `region`.
fn write_copies(
    region: &mut [u8],
    params: &FormatParams,
    metadata: &Metadata,
    rng: &mut dyn Randomness,
) -> Result<(), LuksError> {
    let json = serde_json::to_vec(metadata).map_err(LuksError::SerializeMetadata)?;
    let uuid = match &params.uuid {
        Some(u) => u.clone(),
        None => {
            let mut bytes = [0u8; 16];
            rng.fill(&mut bytes)?;
            // A version 4 (random) UUID, as cryptsetup's libuuid makes.
            uuid::Builder::from_random_bytes(bytes)
                .into_uuid()
                .to_string()
        }
    };
    for hdr_offset in [0, DEFAULT_HDR_SIZE] {
        let bin = BinaryHeader {
            hdr_size: DEFAULT_HDR_SIZE,
            seqid: 1,
            label: params.label.clone(),
            uuid: uuid.clone(),
            subsystem: String::new(),
            hdr_offset,
        };
        let mut salt = [0u8; binary::SALT_SIZE];
        rng.fill(&mut salt)?;
        let start = hdr_offset as usize;
        bin.write(
            &mut region[start..start + DEFAULT_HDR_SIZE as usize],
            &json,
            &salt,
        )?;
    }
    Ok(())
}

fn decode_b64(what: &'static str, id: &str, s: Option<&str>) -> Result<Vec<u8>, LuksError> {
    s.and_then(|s| B64.decode(s).ok()).ok_or_else(|| {
        Invalid::Base64 {
            what,
            id: id.into(),
        }
        .into()
    })
}

fn hash_named(what: &'static str, name: Option<&str>) -> Result<Hash, LuksError> {
    let name = name.unwrap_or("(none)");
    Hash::from_name(name).ok_or_else(|| {
        Unsupported::Hash {
            what,
            name: name.into(),
        }
        .into()
    })
}

/// A JSON cost as the KDF takes it: out-of-range values saturate, so the KDF's own range
/// check names them.
fn cost(v: Option<i64>) -> u32 {
    v.unwrap_or(0).clamp(0, i64::from(u32::MAX)) as u32
}

fn keyslot_kdf(id: &str, kdf: &KdfJson) -> Result<(Kdf, Vec<u8>), LuksError> {
    let params = match kdf.kind.as_str() {
        "pbkdf2" => Kdf::Pbkdf2 {
            hash: hash_named("pbkdf2", kdf.hash.as_deref())?,
            iterations: cost(kdf.iterations),
        },
        "argon2i" | "argon2id" => Kdf::Argon2 {
            kind: if kdf.kind == "argon2i" {
                Argon2Type::Argon2i
            } else {
                Argon2Type::Argon2id
            },
            time: cost(kdf.time),
            memory_kib: cost(kdf.memory),
            cpus: cost(kdf.cpus),
        },
        other => {
            return Err(Unsupported::Kdf {
                id: id.into(),
                kind: other.into(),
            }
            .into())
        }
    };
    Ok((params, decode_b64("keyslot salt", id, kdf.salt.as_deref())?))
}

/// The digest's shape and cost, checked before any keyslot work so a hostile digest costs
/// nothing: pbkdf2, a known hash, a digest of that hash's length, iterations within `limits`.
fn check_digest_params(
    (id, digest): (&String, &DigestJson),
    limits: &KdfLimits,
) -> Result<(Hash, Vec<u8>, Vec<u8>, u32), LuksError> {
    if digest.kind != "pbkdf2" {
        return Err(Unsupported::DigestType {
            id: id.clone(),
            kind: digest.kind.clone(),
        }
        .into());
    }
    let hash = hash_named("digest", digest.hash.as_deref())?;
    let want = decode_b64("digest", id, digest.digest.as_deref())?;
    let salt = decode_b64("digest salt", id, digest.salt.as_deref())?;
    if want.len() != hash.output_len() {
        return Err(Unsupported::Digest {
            id: id.clone(),
            what: "digest length differs from its hash's",
        }
        .into());
    }
    let iterations = cost(digest.iterations);
    crate::kdf::Kdf::check_digest_iterations(iterations, limits)?;
    Ok((hash, want, salt, iterations))
}

fn check_digest(
    digest: (&String, &DigestJson),
    key: &VolumeKey,
    limits: &KdfLimits,
) -> Result<bool, LuksError> {
    let (hash, want, salt, iterations) = check_digest_params(digest, limits)?;
    let mut got = Zeroizing::new(vec![0u8; want.len()]);
    hash.pbkdf2(key.as_bytes(), &salt, iterations, &mut got);
    Ok(ct_eq(&got, &want))
}

fn open_keyslot(
    src: &dyn ReadAt,
    id: &str,
    ks: &Keyslot,
    key_len: usize,
    digest: (&String, &DigestJson),
    passphrase: &Passphrase,
    limits: &KdfLimits,
) -> Result<VolumeKey, LuksError> {
    if ks.kind != "luks2" {
        return Err(Unsupported::KeyslotType {
            id: id.into(),
            kind: ks.kind.clone(),
        }
        .into());
    }
    let af_spec = ks.af.as_ref().ok_or(Invalid::Field {
        section: super::error::Section::Keyslot,
        id: id.into(),
        field: "af",
        want: super::error::JsonType::Object,
    })?;
    if af_spec.stripes != i64::from(STRIPES) {
        return Err(Unsupported::Stripes {
            id: id.into(),
            stripes: af_spec.stripes,
        }
        .into());
    }
    let af_hash = hash_named("af", Some(&af_spec.hash))?;
    let area_cipher = ks.area.encryption.as_deref().unwrap_or("");
    if area_cipher != CIPHER {
        return Err(Unsupported::Cipher(area_cipher.to_string()).into());
    }
    let area_key_len = ks.area.key_size.unwrap_or(0);
    if !matches!(area_key_len, 32 | 64) || ks.key_size as usize != key_len {
        return Err(Unsupported::KeyslotKeySize {
            id: id.into(),
            key_size: ks.key_size.into(),
            area_key_size: area_key_len,
        }
        .into());
    }
    let material_len = (key_len * STRIPES as usize).div_ceil(512) as u64 * 512;
    if material_len > ks.area.size {
        return Err(Invalid::AreaTooSmall {
            id: id.into(),
            size: ks.area.size,
            need: material_len,
        }
        .into());
    }
    // Checked before the KDF runs: an area past the end of the image (a truncated or hostile
    // image) could never open, so it must not cost a second of Argon2 first.
    if ks
        .area
        .offset
        .checked_add(material_len)
        .is_none_or(|end| end > src.len())
    {
        return Err(LuksError::Truncated("keyslot area"));
    }
    let kdf_json = ks.kdf.as_ref().ok_or(Invalid::Field {
        section: super::error::Section::Keyslot,
        id: id.into(),
        field: "kdf",
        want: super::error::JsonType::Object,
    })?;
    let (kdf, salt) = keyslot_kdf(id, kdf_json)?;
    kdf.check(limits)?;
    check_digest_params(digest, limits)?;
    let mut area_key = Zeroizing::new(vec![0u8; area_key_len as usize]);
    kdf.derive(passphrase.as_bytes(), &salt, &mut area_key, limits)?;
    let key = open_key_material(src, ks.area.offset, &area_key, key_len, af_hash)?;
    let key = VolumeKey::from_bytes(key);
    if check_digest(digest, &key, limits)? {
        Ok(key)
    } else {
        Err(LuksError::WrongPassphrase)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kdf::Argon2Type;

    struct Mem(Vec<u8>);
    impl ReadAt for Mem {
        fn len(&self) -> u64 {
            self.0.len() as u64
        }
        fn read_at(&self, off: u64, buf: &mut [u8]) -> std::io::Result<usize> {
            let off = (off as usize).min(self.0.len());
            let n = buf.len().min(self.0.len() - off);
            buf[..n].copy_from_slice(&self.0[off..off + n]);
            Ok(n)
        }
    }

    fn params(kdf: Kdf) -> FormatParams {
        FormatParams {
            hash: Hash::Sha256,
            kdf,
            sector_size: 4096,
            digest_iterations: Some(1000),
            uuid: None,
            label: String::new(),
        }
    }

    fn image(kdf: Kdf, key_len: usize) -> (Mem, VolumeKey) {
        let key = VolumeKey::random(key_len).unwrap();
        let mut img = Luks2Header::format(&params(kdf), &key, &Passphrase::new("pw")).unwrap();
        img.extend_from_slice(&[0u8; 8192]);
        (Mem(img), key)
    }

    #[test]
    fn format_parse_unlock_all_kdfs() {
        for kdf in [
            Kdf::Pbkdf2 {
                hash: Hash::Sha256,
                iterations: 1000,
            },
            Kdf::Argon2 {
                kind: Argon2Type::Argon2i,
                time: 4,
                memory_kib: 32,
                cpus: 1,
            },
            Kdf::Argon2 {
                kind: Argon2Type::Argon2id,
                time: 4,
                memory_kib: 64,
                cpus: 2,
            },
        ] {
            for key_len in [32, 64] {
                let (img, key) = image(kdf, key_len);
                let h = Luks2Header::read(&img).unwrap();
                assert_eq!(h.segment.offset, DATA_OFFSET);
                assert_eq!(h.segment.key_len, key_len);
                assert_eq!(h.segment.len_in(img.len()).unwrap(), 8192);
                let limits = KdfLimits::default();
                let (got, slot) = h.unlock(&img, &Passphrase::new("pw"), &limits).unwrap();
                assert!(got == key && slot == 0);
                assert!(matches!(
                    h.unlock(&img, &Passphrase::new("wrong"), &limits),
                    Err(LuksError::WrongPassphrase)
                ));
            }
        }
    }

    #[test]
    fn damaged_primary_is_recovered_from_secondary() {
        let kdf = Kdf::Pbkdf2 {
            hash: Hash::Sha256,
            iterations: 1000,
        };
        let (mut img, key) = image(kdf, 32);
        img.0[5000] ^= 0xff; // inside the primary JSON area
        let h = Luks2Header::read(&img).unwrap();
        assert!(h.recovered_from_secondary);
        let (got, _) = h
            .unlock(&img, &Passphrase::new("pw"), &KdfLimits::default())
            .unwrap();
        assert!(got == key);
        img.0[0x4000 + 5000] ^= 0xff; // and the secondary
        assert!(matches!(
            Luks2Header::read(&img),
            Err(LuksError::Invalid(Invalid::BothCopies { .. }))
        ));
    }

    #[test]
    fn truncated_image_is_an_error() {
        let kdf = Kdf::Pbkdf2 {
            hash: Hash::Sha256,
            iterations: 1000,
        };
        let (img, _) = image(kdf, 32);
        let cut = Mem(img.0[..8192].to_vec());
        assert!(Luks2Header::read(&cut).is_err());
    }

    #[test]
    fn wiped_primary_recovered_from_any_legal_offset_and_unbound_keyslot_never_opens() {
        let kdf = Kdf::Pbkdf2 {
            hash: Hash::Sha256,
            iterations: 1000,
        };
        let (mut img, _) = image(kdf, 32);
        img.0[..4096].fill(0);
        let h = Luks2Header::read(&img).unwrap();
        assert!(h.recovered_from_secondary);
        // No LUKS magic anywhere: not LUKS at all.
        img.0[0x4000..0x4000 + 6].fill(0);
        assert!(matches!(Luks2Header::read(&img), Err(LuksError::NotLuks)));
    }

    #[test]
    fn unbound_keyslot_is_not_tried() {
        let kdf = Kdf::Pbkdf2 {
            hash: Hash::Sha256,
            iterations: 1000,
        };
        let (img, _) = image(kdf, 32);
        let mut h = Luks2Header::read(&img).unwrap();
        // Unbind keyslot 0: its digest no longer names segment 0.
        for d in h.metadata.digests.values_mut() {
            d.segments.clear();
        }
        assert!(!h.metadata.keyslot_is_bound("0"));
        let r = h.unlock(&img, &Passphrase::new("pw"), &KdfLimits::default());
        assert!(
            matches!(r, Err(LuksError::Unsupported(Unsupported::NoBoundKeyslot))),
            "{r:?}"
        );
    }
}
