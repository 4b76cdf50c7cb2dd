//! The LUKS2 binary header: 4096 bytes before each copy of the JSON area, big-endian fields,
//! a SHA-256 checksum over the binary header and its JSON area.

use super::error::Invalid;
use super::LuksError;
use crate::kdf::Hash;

pub const MAGIC_PRIMARY: &[u8; 6] = b"LUKS\xba\xbe";
pub const MAGIC_SECONDARY: &[u8; 6] = b"SKUL\xba\xbe";
pub const BINARY_HEADER_SIZE: usize = 4096;

/// The header sizes (binary + JSON) LUKS2 allows; also where a secondary copy may sit.
pub const HDR_SIZES: [u64; 9] = [
    0x4000, 0x8000, 0x10000, 0x20000, 0x40000, 0x80000, 0x100000, 0x200000, 0x400000,
];

const OFF_VERSION: usize = 6;
const OFF_HDR_SIZE: usize = 8;
const OFF_SEQID: usize = 16;
const OFF_LABEL: usize = 24;
const OFF_CSUM_ALG: usize = 72;
const OFF_SALT: usize = 104;
/// Bytes of a binary header's salt.
pub const SALT_SIZE: usize = 64;
const OFF_UUID: usize = 168;
const OFF_SUBSYSTEM: usize = 208;
const OFF_HDR_OFFSET: usize = 256;
const OFF_CSUM: usize = 448;
const CSUM_LEN: usize = 64;

/// The fields of one binary header copy that matter to us.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BinaryHeader {
    pub hdr_size: u64,
    pub seqid: u64,
    pub label: String,
    pub uuid: String,
    pub subsystem: String,
    pub hdr_offset: u64,
}

fn be_u64(b: &[u8], off: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[off..off + 8]);
    u64::from_be_bytes(a)
}

/// A NUL-terminated fixed-size string field (LUKS1 and LUKS2 headers alike).
pub(super) fn c_string(b: &[u8]) -> String {
    let end = b.iter().position(|&c| c == 0).unwrap_or(b.len());
    String::from_utf8_lossy(&b[..end]).into_owned()
}

fn put_str(dst: &mut [u8], s: &str) {
    let n = s.len().min(dst.len() - 1);
    dst[..n].copy_from_slice(&s.as_bytes()[..n]);
}

/// The header checksum: the copy hashed with its checksum field zeroed.
fn checksum(hash: Hash, area: &[u8]) -> Vec<u8> {
    hash.digest(&[
        &area[..OFF_CSUM],
        &[0u8; CSUM_LEN],
        &area[OFF_CSUM + CSUM_LEN..],
    ])
}

/// Recomputes the checksum of the header copy at `offset` in `image`, when a copy with a legal
/// `hdr_size` fits there. Only for fuzzing: it lets mutated metadata get past the checksum to
/// the JSON parser and the validation behind it. Never used on real images.
#[doc(hidden)]
pub fn fix_checksum_for_fuzzing(image: &mut [u8], offset: usize) {
    let Some(head) = image.get(offset..offset.saturating_add(BINARY_HEADER_SIZE)) else {
        return;
    };
    let hdr_size = be_u64(head, OFF_HDR_SIZE);
    if !HDR_SIZES.contains(&hdr_size) {
        return;
    }
    let Some(area) = image.get_mut(offset..offset.saturating_add(hdr_size as usize)) else {
        return;
    };
    let sum = checksum(Hash::Sha256, area);
    area[OFF_CSUM..OFF_CSUM + 32].copy_from_slice(&sum);
}

/// cryptsetup's checks of a binary header before its checksum (`hdr_disk_sanity_check_pre`):
/// magic for the copy (primary at 0, secondary elsewhere), version 2, the copy's own offset,
/// a size of 16 KiB to 4 MiB, and a secondary copy sitting right after a primary of its size.
/// Returns the header size.
pub fn check_pre(head: &[u8], offset: u64) -> Result<u64, Invalid> {
    let Some(head) = head.get(..BINARY_HEADER_SIZE) else {
        return Err(Invalid::NoCopyAt {
            offset,
            found: "the image ends before it",
        });
    };
    let want_magic = if offset == 0 {
        MAGIC_PRIMARY
    } else {
        MAGIC_SECONDARY
    };
    if &head[..6] != want_magic {
        return Err(Invalid::NoCopyAt {
            offset,
            found: "no magic",
        });
    }
    let version = u16::from_be_bytes([head[OFF_VERSION], head[OFF_VERSION + 1]]);
    if version != 2 {
        return Err(Invalid::Version { offset, version });
    }
    let claimed = be_u64(head, OFF_HDR_OFFSET);
    if claimed != offset {
        return Err(Invalid::CopyOffset { offset, claimed });
    }
    let size = be_u64(head, OFF_HDR_SIZE);
    if !(HDR_SIZES[0]..=HDR_SIZES[HDR_SIZES.len() - 1]).contains(&size) {
        return Err(Invalid::HeaderSize { offset, size });
    }
    if offset != 0 && offset != size {
        return Err(Invalid::SecondarySize { offset, size });
    }
    Ok(size)
}

impl BinaryHeader {
    /// Parses and verifies one header copy. `area` is the whole copy: `hdr_size` bytes (binary
    /// header + JSON area); `expect_offset` is where it was read from.
    pub fn parse(area: &[u8], expect_offset: u64) -> Result<Self, LuksError> {
        if area.len() < BINARY_HEADER_SIZE {
            return Err(LuksError::Truncated("LUKS2 binary header"));
        }
        let hdr_size = check_pre(area, expect_offset)?;
        if (area.len() as u64) < hdr_size {
            return Err(LuksError::Truncated("LUKS2 JSON area"));
        }
        let area = &area[..hdr_size as usize];
        let alg = c_string(&area[OFF_CSUM_ALG..OFF_SALT]);
        let hash = Hash::from_name(&alg)
            .filter(|_| alg == alg.to_ascii_lowercase())
            .ok_or_else(|| Invalid::ChecksumAlgorithm {
                offset: expect_offset,
                alg: alg.clone(),
            })?;
        let sum = checksum(hash, area);
        if sum[..] != area[OFF_CSUM..OFF_CSUM + sum.len()] {
            return Err(Invalid::Checksum {
                offset: expect_offset,
            }
            .into());
        }
        Ok(Self {
            hdr_size,
            seqid: be_u64(area, OFF_SEQID),
            label: c_string(&area[OFF_LABEL..OFF_CSUM_ALG]),
            uuid: c_string(&area[OFF_UUID..OFF_SUBSYSTEM]),
            subsystem: c_string(&area[OFF_SUBSYSTEM..OFF_HDR_OFFSET]),
            hdr_offset: expect_offset,
        })
    }

    /// Writes this header and `json` into `area` (exactly `hdr_size` bytes, zeroed), with
    /// `salt` (random in cryptsetup's headers; each copy its own) and the checksum.
    pub fn write(
        &self,
        area: &mut [u8],
        json: &[u8],
        salt: &[u8; SALT_SIZE],
    ) -> Result<(), LuksError> {
        let json_area = self.hdr_size as usize - BINARY_HEADER_SIZE;
        // The JSON must leave room for at least one terminating NUL.
        if json.len() >= json_area || area.len() != self.hdr_size as usize {
            return Err(LuksError::Layout(super::error::Layout::JsonTooLarge {
                json_len: json.len(),
                area: json_area,
            }));
        }
        area.fill(0);
        let magic = if self.hdr_offset == 0 {
            MAGIC_PRIMARY
        } else {
            MAGIC_SECONDARY
        };
        area[..6].copy_from_slice(magic);
        area[OFF_VERSION..OFF_VERSION + 2].copy_from_slice(&2u16.to_be_bytes());
        area[OFF_HDR_SIZE..OFF_HDR_SIZE + 8].copy_from_slice(&self.hdr_size.to_be_bytes());
        area[OFF_SEQID..OFF_SEQID + 8].copy_from_slice(&self.seqid.to_be_bytes());
        put_str(&mut area[OFF_LABEL..OFF_CSUM_ALG], &self.label);
        put_str(&mut area[OFF_CSUM_ALG..OFF_SALT], "sha256");
        area[OFF_SALT..OFF_UUID].copy_from_slice(salt);
        put_str(&mut area[OFF_UUID..OFF_SUBSYSTEM], &self.uuid);
        put_str(&mut area[OFF_SUBSYSTEM..OFF_HDR_OFFSET], &self.subsystem);
        area[OFF_HDR_OFFSET..OFF_HDR_OFFSET + 8].copy_from_slice(&self.hdr_offset.to_be_bytes());
        area[BINARY_HEADER_SIZE..BINARY_HEADER_SIZE + json.len()].copy_from_slice(json);
        let sum = checksum(Hash::Sha256, area);
        area[OFF_CSUM..OFF_CSUM + 32].copy_from_slice(&sum);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn write_parse_round_trip_and_checksum() {
        let h = BinaryHeader {
            hdr_size: 0x4000,
            seqid: 7,
            label: "lbl".into(),
            uuid: "0b0e7e4c-0000-4000-8000-000000000001".into(),
            subsystem: String::new(),
            hdr_offset: 0x4000,
        };
        let mut area = vec![0u8; 0x4000];
        h.write(&mut area, b"{\"x\":1}", &[7u8; SALT_SIZE]).unwrap();
        assert_eq!(BinaryHeader::parse(&area, 0x4000).unwrap(), h);
        assert!(
            BinaryHeader::parse(&area, 0).is_err(),
            "secondary magic at offset 0"
        );
        area[5000] ^= 1;
        assert!(matches!(
            BinaryHeader::parse(&area, 0x4000),
            Err(LuksError::Invalid(Invalid::Checksum { offset: 0x4000 }))
        ));
    }
}
