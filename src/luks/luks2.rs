//! LUKS2: parse (both header copies, higher seqid wins, a damaged copy recovered from the
//! other), unlock (any keyslot, PBKDF2/Argon2i/Argon2id), and format a new header laid out
//! exactly as `cryptsetup luksFormat --type luks2` lays out a regular file.

use std::collections::BTreeMap;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use zeroize::Zeroizing;

use super::binary::{BinaryHeader, BINARY_HEADER_SIZE, HDR_SIZES, MAGIC_SECONDARY};
use super::metadata::{
    Af, Area, Config, DigestJson, KdfJson, Keyslot, Metadata, Segment, SegmentSize,
};
use super::{af, ct_eq, open_key_material, DataSegment, LuksError, CIPHER, DATA_OFFSET, STRIPES};
use crate::image::{read_full_at, ReadAt};
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

/// A parsed, validated LUKS2 header.
#[derive(Debug, Clone)]
pub struct Luks2Header {
    /// The copy that won (higher seqid, or the only valid one).
    pub binary: BinaryHeader,
    pub metadata: Metadata,
    pub segment: DataSegment,
    /// The data segment's cipher as the header names it (`aes-xts-plain64` is the one we do).
    pub cipher: String,
    /// Set when the primary copy was damaged and the secondary was used.
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

impl Luks2Header {
    /// Reads both header copies from `src` and keeps the better one.
    pub fn read(src: &dyn ReadAt) -> Result<Self, LuksError> {
        let primary = read_copy(src, 0);
        let secondary_offsets: Vec<u64> = match &primary {
            Ok(p) => vec![p.binary.hdr_size],
            Err(_) => HDR_SIZES.to_vec(),
        };
        let mut secondary = Err(LuksError::BadHeader("no secondary header found".into()));
        for off in secondary_offsets {
            let mut magic = [0u8; 6];
            read_full_at(src, off, &mut magic)?;
            if &magic == MAGIC_SECONDARY {
                secondary = read_copy(src, off);
                if secondary.is_ok() {
                    break;
                }
            }
        }
        match (primary, secondary) {
            (Ok(p), Ok(s)) if s.binary.seqid > p.binary.seqid => Ok(Self {
                recovered_from_secondary: true,
                ..s
            }),
            (Ok(p), _) => Ok(p),
            (Err(_), Ok(s)) => Ok(Self {
                recovered_from_secondary: true,
                ..s
            }),
            (Err(e), Err(_)) => Err(e),
        }
    }

    /// Tries the keyslots bound to the data segment, highest priority first; returns the
    /// volume key and the keyslot that opened.
    pub fn unlock(
        &self,
        src: &dyn ReadAt,
        passphrase: &Passphrase,
        limits: &KdfLimits,
    ) -> Result<(VolumeKey, u32), LuksError> {
        if self.cipher != CIPHER {
            return Err(LuksError::UnsupportedCipher(self.cipher.clone()));
        }
        let mut candidates: Vec<(u32, &str, &Keyslot, &DigestJson)> = Vec::new();
        for digest in self.metadata.digests.values() {
            if !digest.segments.iter().any(|s| s == "0") {
                continue;
            }
            for id in &digest.keyslots {
                if let Some(ks) = self.metadata.keyslots.get(id) {
                    let priority = ks.priority.unwrap_or(1);
                    if priority > 0 {
                        candidates.push((priority, id, ks, digest));
                    }
                }
            }
        }
        candidates.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(b.1)));
        let mut last_err = LuksError::WrongPassphrase;
        for (_, id, ks, digest) in candidates {
            match open_keyslot(src, ks, digest, passphrase, limits) {
                Ok(key) => return Ok((key, id.parse().unwrap_or(0))),
                Err(LuksError::WrongPassphrase) => {}
                // A keyslot we cannot use must not hide another that opens.
                Err(e) => {
                    tracing::debug!(keyslot = %id, error = %e, "keyslot skipped");
                    last_err = e;
                }
            }
        }
        Err(match last_err {
            LuksError::WrongPassphrase => LuksError::WrongPassphrase,
            other => other,
        })
    }

    /// Checks `key` against the segment's digest: the volume key is right.
    pub fn verify_key(&self, key: &VolumeKey) -> Result<bool, LuksError> {
        for digest in self.metadata.digests.values() {
            if digest.segments.iter().any(|s| s == "0")
                && check_digest(digest, key, &KdfLimits::default())?
            {
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// Produces the whole header region of a new image (`DATA_OFFSET` bytes: both metadata
    /// copies, keyslot 0 wrapping `key` under `passphrase`, the rest of the keyslots area
    /// random), as `cryptsetup luksFormat --type luks2` does for a regular file.
    pub fn format(
        params: &FormatParams,
        key: &VolumeKey,
        passphrase: &Passphrase,
    ) -> Result<Vec<u8>, LuksError> {
        let key_len = key.len();
        if key_len != 32 && key_len != 64 {
            return Err(LuksError::Unsupported(format!(
                "volume key of {key_len} bytes"
            )));
        }
        if !matches!(params.sector_size, 512 | 1024 | 2048 | 4096) {
            return Err(LuksError::Unsupported(format!(
                "sector size {}",
                params.sector_size
            )));
        }
        let mut region = vec![0u8; DATA_OFFSET as usize];
        let areas_start = 2 * DEFAULT_HDR_SIZE;
        getrandom::fill(&mut region[areas_start as usize..]).map_err(LuksError::Random)?;

        // Keyslot 0: KDF(passphrase) keys the area; the area holds the AF-split volume key.
        let area_offset = areas_start;
        let material_len = key_len * STRIPES as usize;
        let area_size = (material_len as u64).div_ceil(4096) * 4096;
        let kdf_salt = random_bytes(SALT_LEN)?;
        let mut area_key = Zeroizing::new(vec![0u8; key_len]);
        // Our own parameters: checked against cryptsetup's limits, not a reader's lower cap.
        params.kdf.derive(
            passphrase.as_bytes(),
            &kdf_salt,
            &mut area_key,
            &KdfLimits::cryptsetup(),
        )?;
        let mut rng_err = None;
        let mut material = af::split(key.as_bytes(), STRIPES as usize, params.hash, |b| {
            rng_err = getrandom::fill(b).err();
        });
        if let Some(e) = rng_err {
            return Err(LuksError::Random(e));
        }
        material.resize(material_len.div_ceil(512) * 512, 0);
        Xts::new(&area_key)
            .and_then(|x| x.encrypt_sectors(&mut material, 512, 0))
            .map_err(|e| LuksError::BadHeader(format!("keyslot encryption: {e}")))?;
        region[area_offset as usize..area_offset as usize + material.len()]
            .copy_from_slice(&material);

        let digest_iterations = match params.digest_iterations {
            Some(n) => n,
            None => {
                crate::kdf::pbkdf2_iterations_for(params.hash, crate::kdf::DIGEST_TARGET, key_len)
            }
        };
        let digest_salt = random_bytes(SALT_LEN)?;
        let mut digest = vec![0u8; params.hash.output_len()];
        params
            .hash
            .pbkdf2(key.as_bytes(), &digest_salt, digest_iterations, &mut digest);

        let kdf = match params.kdf {
            Kdf::Pbkdf2 { hash, iterations } => KdfJson::Pbkdf2 {
                hash: hash.name().into(),
                iterations,
                salt: B64.encode(&kdf_salt),
            },
            Kdf::Argon2 {
                kind,
                time,
                memory_kib,
                cpus,
            } => {
                let salt = B64.encode(&kdf_salt);
                match kind {
                    Argon2Type::Argon2i => KdfJson::Argon2i {
                        time,
                        memory: memory_kib,
                        cpus,
                        salt,
                    },
                    Argon2Type::Argon2id => KdfJson::Argon2id {
                        time,
                        memory: memory_kib,
                        cpus,
                        salt,
                    },
                }
            }
        };
        let metadata = Metadata {
            keyslots: BTreeMap::from([(
                "0".to_string(),
                Keyslot {
                    kind: "luks2".into(),
                    key_size: key_len as u32,
                    af: Some(Af {
                        kind: "luks1".into(),
                        stripes: STRIPES,
                        hash: params.hash.name().into(),
                    }),
                    area: Area {
                        kind: "raw".into(),
                        offset: area_offset,
                        size: area_size,
                        encryption: Some(CIPHER.into()),
                        key_size: Some(key_len as u32),
                    },
                    kdf: Some(kdf),
                    priority: None,
                },
            )]),
            tokens: serde_json::Map::new(),
            segments: BTreeMap::from([(
                "0".to_string(),
                Segment {
                    kind: "crypt".into(),
                    offset: DATA_OFFSET,
                    size: SegmentSize::Dynamic,
                    iv_tweak: 0,
                    encryption: Some(CIPHER.into()),
                    sector_size: Some(params.sector_size as u32),
                    flags: None,
                },
            )]),
            digests: BTreeMap::from([(
                "0".to_string(),
                DigestJson {
                    kind: "pbkdf2".into(),
                    keyslots: vec!["0".into()],
                    segments: vec!["0".into()],
                    hash: params.hash.name().into(),
                    iterations: digest_iterations,
                    salt: B64.encode(&digest_salt),
                    digest: B64.encode(&digest),
                },
            )]),
            config: Config {
                json_size: DEFAULT_HDR_SIZE - BINARY_HEADER_SIZE as u64,
                keyslots_size: DEFAULT_KEYSLOTS_SIZE,
                flags: None,
                requirements: None,
            },
        };
        let json = serde_json::to_vec(&metadata)
            .map_err(|e| LuksError::BadHeader(format!("serializing metadata: {e}")))?;
        let uuid = params
            .uuid
            .clone()
            .unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
        for hdr_offset in [0, DEFAULT_HDR_SIZE] {
            let bin = BinaryHeader {
                hdr_size: DEFAULT_HDR_SIZE,
                seqid: 1,
                label: params.label.clone(),
                uuid: uuid.clone(),
                subsystem: String::new(),
                hdr_offset,
            };
            let start = hdr_offset as usize;
            bin.write(&mut region[start..start + DEFAULT_HDR_SIZE as usize], &json)?;
        }
        Ok(region)
    }
}

fn random_bytes(n: usize) -> Result<Vec<u8>, LuksError> {
    let mut v = vec![0u8; n];
    getrandom::fill(&mut v).map_err(LuksError::Random)?;
    Ok(v)
}

/// Reads, verifies and validates the header copy at `offset`.
fn read_copy(src: &dyn ReadAt, offset: u64) -> Result<Luks2Header, LuksError> {
    let mut first = vec![0u8; BINARY_HEADER_SIZE];
    if src.read_at(offset, &mut first)? < BINARY_HEADER_SIZE {
        return Err(LuksError::Truncated("LUKS2 binary header"));
    }
    // hdr_size is checked against the legal sizes (max 4 MiB) before we allocate for it.
    let hdr_size = u64::from_be_bytes(first[8..16].try_into().unwrap_or_default());
    if !HDR_SIZES.contains(&hdr_size) {
        return Err(LuksError::BadHeader(format!(
            "header copy at {offset} has header size {hdr_size}, not a LUKS2 size"
        )));
    }
    let mut area = vec![0u8; hdr_size as usize];
    if src.read_at(offset, &mut area)? < area.len() {
        return Err(LuksError::Truncated("LUKS2 JSON area"));
    }
    let binary = BinaryHeader::parse(&area, offset)?;
    let json_area = &area[BINARY_HEADER_SIZE..];
    let end = json_area
        .iter()
        .position(|&b| b == 0)
        .ok_or_else(|| LuksError::BadHeader("JSON area is not NUL-terminated".into()))?;
    let metadata: Metadata = serde_json::from_slice(&json_area[..end])
        .map_err(|e| LuksError::BadHeader(format!("JSON metadata: {e}")))?;
    let segment = validate(&metadata, hdr_size)?;
    let cipher = metadata
        .segments
        .get("0")
        .and_then(|s| s.encryption.clone())
        .unwrap_or_default();
    Ok(Luks2Header {
        binary,
        metadata,
        segment,
        cipher,
        recovered_from_secondary: false,
    })
}

/// The checks that make the rest of the code safe on hostile metadata: sizes agree, areas sit
/// inside the keyslots area, one crypt segment with our cipher.
fn validate(md: &Metadata, hdr_size: u64) -> Result<DataSegment, LuksError> {
    let bad = |m: String| Err(LuksError::BadHeader(m));
    if md.config.json_size != hdr_size - BINARY_HEADER_SIZE as u64 {
        return bad(format!(
            "config.json_size {} does not match header size {hdr_size}",
            md.config.json_size
        ));
    }
    if let Some(req) = &md.config.requirements {
        if !req.mandatory.is_empty() {
            return Err(LuksError::Unsupported(format!(
                "mandatory requirements {:?} (e.g. an unfinished reencryption)",
                req.mandatory
            )));
        }
    }
    let areas_start = 2 * hdr_size;
    let areas_end = areas_start
        .checked_add(md.config.keyslots_size)
        .ok_or_else(|| LuksError::BadHeader("keyslots_size overflows".into()))?;
    // cryptsetup: at most 32 keyslots, named "0".."31". It also bounds the work an unlock
    // may do (one KDF per keyslot).
    if md.keyslots.len() > MAX_KEYSLOTS {
        return bad(format!(
            "{} keyslots (LUKS2 has at most {MAX_KEYSLOTS})",
            md.keyslots.len()
        ));
    }
    for (id, ks) in &md.keyslots {
        if id.parse::<usize>().map_or(true, |n| n >= MAX_KEYSLOTS) {
            return bad(format!("keyslot id {id:?} is not 0..{MAX_KEYSLOTS}"));
        }
        let end = ks.area.offset.checked_add(ks.area.size);
        if ks.area.offset < areas_start || end.is_none_or(|e| e > areas_end) {
            return bad(format!("keyslot {id} area lies outside the keyslots area"));
        }
    }
    if md.segments.len() != 1 {
        return Err(LuksError::Unsupported(format!(
            "{} data segments (an unfinished reencryption?)",
            md.segments.len()
        )));
    }
    let Some(seg) = md.segments.get("0") else {
        return bad("no segment 0".into());
    };
    if seg.kind != "crypt" {
        return Err(LuksError::Unsupported(format!(
            "segment type {:?}",
            seg.kind
        )));
    }
    // Another cipher is not an error here: the header can still be described (inspect);
    // unlocking refuses it.
    let cipher = seg.encryption.as_deref().unwrap_or("");
    let sector_size = seg.sector_size.unwrap_or(512) as usize;
    if !matches!(sector_size, 512 | 1024 | 2048 | 4096) {
        return bad(format!("segment sector size {sector_size}"));
    }
    if seg.offset % 512 != 0 {
        return bad(format!(
            "segment offset {} is not 512-byte aligned",
            seg.offset
        ));
    }
    if seg.offset < 2 * hdr_size {
        return bad(format!(
            "segment offset {} overlaps the metadata",
            seg.offset
        ));
    }
    // As cryptsetup: the data must not overlap the keyslots area (a keyslot write would
    // otherwise destroy data, and data writes a keyslot).
    if seg.offset < areas_end {
        return bad(format!(
            "segment offset {} overlaps the keyslots area (ends at {areas_end})",
            seg.offset
        ));
    }
    if let Some(flags) = &seg.flags {
        if !flags.is_empty() {
            return Err(LuksError::Unsupported(format!("segment flags {flags:?}")));
        }
    }
    if let SegmentSize::Bytes(n) = seg.size {
        if n % sector_size as u64 != 0 {
            return bad(format!(
                "segment size {n} is not a multiple of the sector size"
            ));
        }
    }
    // The segment's key size is the key size of the keyslots its digest binds.
    let key_len = md
        .digests
        .values()
        .filter(|d| d.segments.iter().any(|s| s == "0"))
        .flat_map(|d| d.keyslots.iter())
        .filter_map(|id| md.keyslots.get(id))
        .map(|ks| ks.key_size as usize)
        .next()
        .ok_or_else(|| LuksError::BadHeader("no keyslot is bound to segment 0".into()))?;
    if cipher == CIPHER && key_len != 32 && key_len != 64 {
        return Err(LuksError::UnsupportedCipher(format!(
            "{CIPHER} with a {}-bit key",
            key_len * 8
        )));
    }
    Ok(DataSegment {
        offset: seg.offset,
        size: match seg.size {
            SegmentSize::Dynamic => None,
            SegmentSize::Bytes(n) => Some(n),
        },
        sector_size,
        iv_tweak: seg.iv_tweak,
        key_len,
    })
}

fn decode_b64(what: &str, s: &str) -> Result<Vec<u8>, LuksError> {
    B64.decode(s)
        .map_err(|e| LuksError::BadHeader(format!("{what} is not base64: {e}")))
}

fn hash_named(what: &str, name: &str) -> Result<Hash, LuksError> {
    Hash::from_name(name).ok_or_else(|| LuksError::Unsupported(format!("{what} hash {name:?}")))
}

fn keyslot_kdf(kdf: &KdfJson) -> Result<(Kdf, Vec<u8>), LuksError> {
    Ok(match kdf {
        KdfJson::Pbkdf2 {
            hash,
            iterations,
            salt,
        } => (
            Kdf::Pbkdf2 {
                hash: hash_named("pbkdf2", hash)?,
                iterations: *iterations,
            },
            decode_b64("keyslot salt", salt)?,
        ),
        KdfJson::Argon2i {
            time,
            memory,
            cpus,
            salt,
        } => (
            Kdf::Argon2 {
                kind: Argon2Type::Argon2i,
                time: *time,
                memory_kib: *memory,
                cpus: *cpus,
            },
            decode_b64("keyslot salt", salt)?,
        ),
        KdfJson::Argon2id {
            time,
            memory,
            cpus,
            salt,
        } => (
            Kdf::Argon2 {
                kind: Argon2Type::Argon2id,
                time: *time,
                memory_kib: *memory,
                cpus: *cpus,
            },
            decode_b64("keyslot salt", salt)?,
        ),
    })
}

/// The digest's shape and cost, checked before any keyslot work so a hostile digest costs
/// nothing: pbkdf2, a known hash, a digest of that hash's length, iterations within `limits`.
fn check_digest_params(
    digest: &DigestJson,
    limits: &KdfLimits,
) -> Result<(Hash, Vec<u8>, Vec<u8>), LuksError> {
    if digest.kind != "pbkdf2" {
        return Err(LuksError::Unsupported(format!(
            "digest type {:?}",
            digest.kind
        )));
    }
    let hash = hash_named("digest", &digest.hash)?;
    let want = decode_b64("digest", &digest.digest)?;
    let salt = decode_b64("digest salt", &digest.salt)?;
    if want.len() != hash.output_len() || digest.iterations == 0 {
        return Err(LuksError::BadHeader(
            "digest has the wrong length or no iterations".into(),
        ));
    }
    Kdf::check_digest_iterations(digest.iterations, limits)?;
    Ok((hash, want, salt))
}

fn check_digest(
    digest: &DigestJson,
    key: &VolumeKey,
    limits: &KdfLimits,
) -> Result<bool, LuksError> {
    let (hash, want, salt) = check_digest_params(digest, limits)?;
    let mut got = Zeroizing::new(vec![0u8; want.len()]);
    hash.pbkdf2(key.as_bytes(), &salt, digest.iterations, &mut got);
    Ok(ct_eq(&got, &want))
}

fn open_keyslot(
    src: &dyn ReadAt,
    ks: &Keyslot,
    digest: &DigestJson,
    passphrase: &Passphrase,
    limits: &KdfLimits,
) -> Result<VolumeKey, LuksError> {
    if ks.kind != "luks2" {
        return Err(LuksError::Unsupported(format!(
            "keyslot type {:?}",
            ks.kind
        )));
    }
    let af_spec = ks
        .af
        .as_ref()
        .ok_or_else(|| LuksError::BadHeader("keyslot has no af".into()))?;
    if af_spec.kind != "luks1" || af_spec.stripes != STRIPES {
        return Err(LuksError::Unsupported(format!(
            "AF {:?} with {} stripes",
            af_spec.kind, af_spec.stripes
        )));
    }
    let af_hash = hash_named("af", &af_spec.hash)?;
    if ks.area.kind != "raw" {
        return Err(LuksError::Unsupported(format!(
            "keyslot area type {:?}",
            ks.area.kind
        )));
    }
    let area_cipher = ks.area.encryption.as_deref().unwrap_or("");
    if area_cipher != CIPHER {
        return Err(LuksError::UnsupportedCipher(area_cipher.to_string()));
    }
    let area_key_len = ks.area.key_size.unwrap_or(0) as usize;
    let key_len = ks.key_size as usize;
    if !matches!(area_key_len, 32 | 64) || !(1..=64).contains(&key_len) {
        return Err(LuksError::BadHeader(format!(
            "keyslot key sizes {key_len}/{area_key_len} bytes"
        )));
    }
    let material_len = (key_len * STRIPES as usize).div_ceil(512) as u64 * 512;
    if material_len > ks.area.size {
        return Err(LuksError::BadHeader(
            "keyslot area is smaller than its key material".into(),
        ));
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
    let kdf_json = ks
        .kdf
        .as_ref()
        .ok_or_else(|| LuksError::BadHeader("keyslot has no kdf".into()))?;
    let (kdf, salt) = keyslot_kdf(kdf_json)?;
    kdf.check(limits)?;
    check_digest_params(digest, limits)?;
    let mut area_key = Zeroizing::new(vec![0u8; area_key_len]);
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
            Err(LuksError::BadHeader(_))
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
}
