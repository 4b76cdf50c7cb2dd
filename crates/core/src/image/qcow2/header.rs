//! The qcow2 header: parsed and checked once at open, so the reader can trust its geometry.
//!
//! Layout: <https://gitlab.com/qemu-project/qemu/-/blob/master/docs/interop/qcow2.txt>.

use std::fs::File;
use std::os::unix::fs::FileExt;

use super::Qcow2Error;

const MAGIC: u32 = u32::from_be_bytes(*b"QFI\xfb");
/// qemu's own limits; outside them no qemu-written image exists.
const CLUSTER_BITS: std::ops::RangeInclusive<u32> = 9..=21;
/// qemu's QCOW_MAX_L1_SIZE (32 MiB of L1 table): also bounds what a header can make us allocate.
pub const MAX_L1_ENTRIES: u64 = (32 << 20) / 8;
const MAX_BACKING_NAME: u32 = 1023;
/// Subclusters are 1/32 of a cluster and at least 512 bytes.
const MIN_EXTENDED_L2_CLUSTER_BITS: u32 = 14;

const INCOMPAT_DIRTY: u64 = 1 << 0;
const INCOMPAT_CORRUPT: u64 = 1 << 1;
const INCOMPAT_DATA_FILE: u64 = 1 << 2;
const INCOMPAT_COMPRESSION: u64 = 1 << 3;
const INCOMPAT_EXTENDED_L2: u64 = 1 << 4;
/// Dirty only means refcounts may be stale; the mapping tables are sound, so reading is safe.
const INCOMPAT_KNOWN: u64 = INCOMPAT_DIRTY
    | INCOMPAT_CORRUPT
    | INCOMPAT_DATA_FILE
    | INCOMPAT_COMPRESSION
    | INCOMPAT_EXTENDED_L2;

const EXT_END: u32 = 0;
const EXT_BACKING_FORMAT: u32 = 0xe279_2aca;

#[cfg(test)]
pub mod tests_support {
    pub const EXT_BACKING_FORMAT: u32 = super::EXT_BACKING_FORMAT;
}

const V2_HEADER_LEN: u32 = 72;
const V3_MIN_HEADER_LEN: u32 = 104;
const COMPRESSION_TYPE_AT: usize = 104;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    Deflate,
    Zstd,
}

/// What the header says about the backing file, before it is opened.
#[derive(Debug)]
pub struct BackingRef {
    pub name: Vec<u8>,
    /// The `backing_fmt` header extension, when the image has one.
    pub format: Option<String>,
}

#[derive(Debug)]
pub struct Header {
    pub cluster_bits: u32,
    pub virtual_size: u64,
    pub l1_offset: u64,
    /// L1 entries that cover `virtual_size` (the table may be longer; the rest is unused).
    pub l1_entries: u64,
    pub compression: Compression,
    pub extended_l2: bool,
    pub backing: Option<BackingRef>,
}

impl Header {
    /// Parses and checks the header, step by step in the order qemu does; each step refuses
    /// what it cannot trust before the next one relies on it.
    pub fn read(file: &File, file_len: u64) -> Result<Header, Qcow2Error> {
        let mut buf = [0u8; 112];
        let got = read_up_to(file, 0, &mut buf)?;
        let fixed = Fixed::parse(&buf[..got], file_len)?;
        let features = Features::read(&fixed)?;
        let virtual_size = fixed.u64(24)?;
        let (l1_offset, l1_entries) = l1_table(&fixed, &features, virtual_size)?;
        let backing = backing(file, &fixed, &features)?;
        Ok(Header {
            cluster_bits: features.cluster_bits,
            virtual_size,
            l1_offset,
            l1_entries,
            compression: features.compression,
            extended_l2: features.extended_l2,
            backing,
        })
    }
}

/// The fixed part of the header (its first 112 bytes, fewer in a short file), past the magic.
struct Fixed<'a> {
    bytes: &'a [u8],
    file_len: u64,
}

impl<'a> Fixed<'a> {
    fn parse(bytes: &'a [u8], file_len: u64) -> Result<Self, Qcow2Error> {
        if be32(bytes, 0) != Some(MAGIC) {
            return Err(Qcow2Error::BadMagic);
        }
        Ok(Self { bytes, file_len })
    }

    fn u32(&self, at: usize) -> Result<u32, Qcow2Error> {
        be32(self.bytes, at).ok_or(Qcow2Error::Truncated { len: self.file_len })
    }

    fn u64(&self, at: usize) -> Result<u64, Qcow2Error> {
        be64(self.bytes, at).ok_or(Qcow2Error::Truncated { len: self.file_len })
    }

    fn byte(&self, at: usize) -> Result<u8, Qcow2Error> {
        self.bytes
            .get(at)
            .copied()
            .ok_or(Qcow2Error::Truncated { len: self.file_len })
    }
}

/// What the version, the cluster size and the feature bits say about how to read the image.
struct Features {
    cluster_bits: u32,
    /// Where the header extensions start.
    header_len: u32,
    compression: Compression,
    extended_l2: bool,
}

impl Features {
    fn read(fixed: &Fixed<'_>) -> Result<Self, Qcow2Error> {
        let version = fixed.u32(4)?;
        if version != 2 && version != 3 {
            return Err(Qcow2Error::Version(version));
        }
        let cluster_bits = cluster_bits(fixed)?;
        let crypt_method = fixed.u32(32)?;
        if crypt_method != 0 {
            return Err(Qcow2Error::Encrypted(crypt_method));
        }
        let (header_len, incompatible) = if version == 2 {
            (V2_HEADER_LEN, 0)
        } else {
            let len = fixed.u32(100)?;
            if len < V3_MIN_HEADER_LEN || len % 8 != 0 || u64::from(len) > 1u64 << cluster_bits {
                return Err(Qcow2Error::HeaderLength(len));
            }
            (len, fixed.u64(72)?)
        };
        check_incompatible(incompatible)?;
        let compression = compression(fixed, header_len, incompatible)?;
        let extended_l2 = incompatible & INCOMPAT_EXTENDED_L2 != 0;
        if extended_l2 && cluster_bits < MIN_EXTENDED_L2_CLUSTER_BITS {
            return Err(Qcow2Error::ExtendedL2ClusterBits(cluster_bits));
        }
        Ok(Self {
            cluster_bits,
            header_len,
            compression,
            extended_l2,
        })
    }

    fn cluster_size(&self) -> u64 {
        1 << self.cluster_bits
    }

    /// Virtual bytes one L2 table maps.
    fn l2_coverage(&self) -> u64 {
        let l2_entry_bytes = if self.extended_l2 { 16 } else { 8 };
        (self.cluster_size() / l2_entry_bytes) * self.cluster_size()
    }
}

fn cluster_bits(fixed: &Fixed<'_>) -> Result<u32, Qcow2Error> {
    let cluster_bits = fixed.u32(20)?;
    if !CLUSTER_BITS.contains(&cluster_bits) {
        return Err(Qcow2Error::ClusterBits(cluster_bits));
    }
    Ok(cluster_bits)
}

/// Incompatible feature bits: a corrupt image, an external data file and bits we do not know
/// are refused; dirty, compression type and extended L2 are read.
fn check_incompatible(incompatible: u64) -> Result<(), Qcow2Error> {
    if incompatible & INCOMPAT_CORRUPT != 0 {
        return Err(Qcow2Error::MarkedCorrupt);
    }
    if incompatible & INCOMPAT_DATA_FILE != 0 {
        return Err(Qcow2Error::ExternalDataFile);
    }
    if incompatible & !INCOMPAT_KNOWN != 0 {
        return Err(Qcow2Error::UnknownIncompatibleFeatures(
            incompatible & !INCOMPAT_KNOWN,
        ));
    }
    Ok(())
}

/// The compression type byte (v3 headers long enough to have it), which needs its feature bit.
fn compression(
    fixed: &Fixed<'_>,
    header_len: u32,
    incompatible: u64,
) -> Result<Compression, Qcow2Error> {
    let compression_type = if header_len as usize > COMPRESSION_TYPE_AT {
        fixed.byte(COMPRESSION_TYPE_AT)?
    } else {
        0
    };
    match compression_type {
        0 => Ok(Compression::Deflate),
        1 if incompatible & INCOMPAT_COMPRESSION != 0 => Ok(Compression::Zstd),
        other => Err(Qcow2Error::CompressionType(other)),
    }
}

/// The L1 table's offset and the entries that cover `virtual_size`: bounded by qemu's limit
/// (which also bounds what we allocate), within the table's declared size and inside the file.
fn l1_table(
    fixed: &Fixed<'_>,
    features: &Features,
    virtual_size: u64,
) -> Result<(u64, u64), Qcow2Error> {
    let l1_size = fixed.u32(36)?;
    let l1_offset = fixed.u64(40)?;
    let l1_entries = virtual_size.div_ceil(features.l2_coverage());
    if l1_entries > MAX_L1_ENTRIES {
        return Err(Qcow2Error::VirtualSizeTooLarge(virtual_size));
    }
    if l1_entries > u64::from(l1_size) {
        return Err(Qcow2Error::L1TooSmall {
            virtual_size,
            needed: l1_entries,
            l1_size,
        });
    }
    let file_len = fixed.file_len;
    let l1_end = l1_offset.checked_add(l1_entries * 8);
    if l1_entries > 0
        && (l1_offset % features.cluster_size() != 0 || l1_end.is_none_or(|e| e > file_len))
    {
        return Err(Qcow2Error::L1Table {
            offset: l1_offset,
            entries: l1_entries,
            file_len,
        });
    }
    Ok((l1_offset, l1_entries))
}

/// The backing file's name and format. Both live in the first cluster: the extensions after
/// the header, the name where the header points, at most `MAX_BACKING_NAME` bytes.
fn backing(
    file: &File,
    fixed: &Fixed<'_>,
    features: &Features,
) -> Result<Option<BackingRef>, Qcow2Error> {
    let cluster_size = features.cluster_size();
    let mut head = vec![0u8; cluster_size.min(fixed.file_len) as usize];
    let got = read_up_to(file, 0, &mut head)?;
    head.truncate(got);
    let backing_offset = fixed.u64(8)?;
    let backing_len = fixed.u32(16)?;
    let extensions_end = if backing_offset != 0 {
        backing_offset
    } else {
        cluster_size
    };
    let backing_format = read_backing_format(&head, features.header_len as usize, extensions_end)?;
    if backing_offset == 0 || backing_len == 0 {
        return Ok(None);
    }
    let name = usize::try_from(backing_offset)
        .ok()
        .filter(|_| backing_len <= MAX_BACKING_NAME)
        .and_then(|start| head.get(start..start.checked_add(backing_len as usize)?))
        .ok_or(Qcow2Error::BackingName {
            offset: backing_offset,
            len: backing_len,
        })?;
    Ok(Some(BackingRef {
        name: name.to_vec(),
        format: backing_format,
    }))
}

/// Walks the header extensions for `backing_fmt`; other extensions (feature names, bitmaps)
/// do not change how data reads.
fn read_backing_format(head: &[u8], start: usize, end: u64) -> Result<Option<String>, Qcow2Error> {
    let end = usize::try_from(end).unwrap_or(usize::MAX).min(head.len());
    let mut at = start;
    let mut format = None;
    while at.saturating_add(8) <= end {
        let (Some(kind), Some(len)) = (be32(head, at), be32(head, at + 4)) else {
            break;
        };
        if kind == EXT_END {
            break;
        }
        let data_start = at + 8;
        let data = data_start
            .checked_add(len as usize)
            .filter(|&data_end| data_end <= end)
            .and_then(|data_end| head.get(data_start..data_end))
            .ok_or(Qcow2Error::HeaderExtension { offset: at as u64 })?;
        if kind == EXT_BACKING_FORMAT {
            let name = data.split(|&b| b == 0).next().unwrap_or_default();
            format = Some(String::from_utf8_lossy(name).into_owned());
        }
        at = data_start + (len as usize).next_multiple_of(8);
    }
    Ok(format)
}

/// Reads until `buf` is full or the file ends; returns how much was read.
fn read_up_to(file: &File, offset: u64, buf: &mut [u8]) -> Result<usize, Qcow2Error> {
    let mut done = 0;
    while done < buf.len() {
        match file.read_at(&mut buf[done..], offset + done as u64) {
            Ok(0) => break,
            Ok(n) => done += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(error) => {
                return Err(Qcow2Error::Io {
                    what: "header",
                    error,
                })
            }
        }
    }
    Ok(done)
}

pub(super) fn be32(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_be_bytes(
        b.get(at..at.checked_add(4)?)?.try_into().ok()?,
    ))
}

pub(super) fn be64(b: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_be_bytes(
        b.get(at..at.checked_add(8)?)?.try_into().ok()?,
    ))
}
