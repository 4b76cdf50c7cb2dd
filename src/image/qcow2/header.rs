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
const MAX_L1_ENTRIES: u64 = (32 << 20) / 8;
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
    pub fn read(file: &File, file_len: u64) -> Result<Header, Qcow2Error> {
        let mut fixed = [0u8; 112];
        let got = read_up_to(file, 0, &mut fixed)?;
        let fixed = &fixed[..got];
        if be32(fixed, 0) != Some(MAGIC) {
            return Err(Qcow2Error::BadMagic);
        }
        let field32 = |at| be32(fixed, at).ok_or(Qcow2Error::Truncated { len: file_len });
        let field64 = |at| be64(fixed, at).ok_or(Qcow2Error::Truncated { len: file_len });

        let version = field32(4)?;
        if version != 2 && version != 3 {
            return Err(Qcow2Error::Version(version));
        }
        let cluster_bits = field32(20)?;
        if !CLUSTER_BITS.contains(&cluster_bits) {
            return Err(Qcow2Error::ClusterBits(cluster_bits));
        }
        let cluster_size = 1u64 << cluster_bits;
        let crypt_method = field32(32)?;
        if crypt_method != 0 {
            return Err(Qcow2Error::Encrypted(crypt_method));
        }

        let (header_len, incompatible) = if version == 2 {
            (V2_HEADER_LEN, 0)
        } else {
            let len = field32(100)?;
            if len < V3_MIN_HEADER_LEN || len % 8 != 0 || u64::from(len) > cluster_size {
                return Err(Qcow2Error::HeaderLength(len));
            }
            (len, field64(72)?)
        };
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
        let compression_type = if header_len as usize > COMPRESSION_TYPE_AT {
            *fixed
                .get(COMPRESSION_TYPE_AT)
                .ok_or(Qcow2Error::Truncated { len: file_len })?
        } else {
            0
        };
        let compression = match compression_type {
            0 => Compression::Deflate,
            1 if incompatible & INCOMPAT_COMPRESSION != 0 => Compression::Zstd,
            other => return Err(Qcow2Error::CompressionType(other)),
        };
        let extended_l2 = incompatible & INCOMPAT_EXTENDED_L2 != 0;
        if extended_l2 && cluster_bits < MIN_EXTENDED_L2_CLUSTER_BITS {
            return Err(Qcow2Error::ExtendedL2ClusterBits(cluster_bits));
        }

        let virtual_size = field64(24)?;
        let l1_size = field32(36)?;
        let l1_offset = field64(40)?;
        let l2_entry_bytes = if extended_l2 { 16 } else { 8 };
        let l2_coverage = (cluster_size / l2_entry_bytes) * cluster_size;
        let l1_entries = virtual_size.div_ceil(l2_coverage);
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
        let l1_end = l1_offset.checked_add(l1_entries * 8);
        if l1_entries > 0 && (l1_offset % cluster_size != 0 || l1_end.is_none_or(|e| e > file_len))
        {
            return Err(Qcow2Error::L1Table {
                offset: l1_offset,
                entries: l1_entries,
                file_len,
            });
        }

        // Header extensions and the backing file name live in the first cluster.
        let mut head = vec![0u8; cluster_size.min(file_len) as usize];
        let got = read_up_to(file, 0, &mut head)?;
        head.truncate(got);
        let backing_offset = field64(8)?;
        let backing_len = field32(16)?;
        let extensions_end = if backing_offset != 0 {
            backing_offset
        } else {
            cluster_size
        };
        let backing_format = read_backing_format(&head, header_len as usize, extensions_end)?;

        let backing = if backing_offset != 0 && backing_len != 0 {
            let name = usize::try_from(backing_offset)
                .ok()
                .filter(|_| backing_len <= MAX_BACKING_NAME)
                .and_then(|start| head.get(start..start.checked_add(backing_len as usize)?))
                .ok_or(Qcow2Error::BackingName {
                    offset: backing_offset,
                    len: backing_len,
                })?;
            Some(BackingRef {
                name: name.to_vec(),
                format: backing_format,
            })
        } else {
            None
        };

        Ok(Header {
            cluster_bits,
            virtual_size,
            l1_offset,
            l1_entries,
            compression,
            extended_l2,
            backing,
        })
    }
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
