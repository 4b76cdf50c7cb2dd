//! qcow2 images read as their raw virtual disk: versions 2 and 3, deflate and zstd compressed
//! clusters, zero clusters, extended L2 entries (subclusters) and backing chains.
//!
//! Read-only and stateless apart from caches, so one image serves concurrent FUSE readers.
//! Every offset taken from the file is checked before use: a hostile image yields an error,
//! never a panic, a hang or a huge allocation.

mod cache;
mod decompress;
mod header;

use std::ffi::OsString;
use std::fs::File;
use std::io;
use std::os::unix::ffi::OsStringExt;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use super::{raw::RawFile, read_full_at, Format, ReadAt};
use cache::L2Cache;
use header::{BackingRef, Compression, Header};

/// Backing files below the top image; deeper chains are refused.
const MAX_CHAIN_DEPTH: usize = 16;
/// Memory for cached L2 tables, per image in a chain.
const L2_CACHE_BYTES: u64 = 16 << 20;
/// Enough L2 tables to map a large request; few enough that eviction scans stay cheap.
const L2_CACHE_TABLES: std::ops::RangeInclusive<u64> = 4..=1024;

/// Host offsets in L1 and standard L2 entries: bits 9..=55.
const OFFSET_MASK: u64 = 0x00ff_ffff_ffff_fe00;
const L2_COMPRESSED: u64 = 1 << 62;
/// Standard L2 entries only; extended entries carry zero flags per subcluster.
const L2_ZERO: u64 = 1;
const SUBCLUSTERS: u32 = 32;
/// Work allowed for one `next_data`/`next_hole`, in L2 entries examined across the chain. A
/// 32 MiB hostile image can map 2^40 of them; 2^24 covers 1 TiB of 64 KiB clusters and takes
/// ~0.15 s. Past it the answers are conservative, never wrong.
const SEEK_BUDGET: u64 = 1 << 24;

#[derive(Debug, thiserror::Error)]
pub enum Qcow2Error {
    #[error("reading the {what}: {error}")]
    Io {
        what: &'static str,
        error: io::Error,
    },
    #[error("not a qcow2 image (expected the magic QFI\\xfb)")]
    BadMagic,
    #[error("unsupported qcow2 version {0} (expected 2 or 3)")]
    Version(u32),
    #[error("file too short for a qcow2 header ({len} bytes)")]
    Truncated { len: u64 },
    #[error("cluster_bits {0} outside the supported 9..=21")]
    ClusterBits(u32),
    #[error(
        "invalid header_length {0} (expected a multiple of 8 from 104 up to the cluster size)"
    )]
    HeaderLength(u32),
    #[error("encrypted qcow2 (crypt_method {0}) is not supported; expected an unencrypted image")]
    Encrypted(u32),
    #[error(
        "qcow2 with an external data file is not supported; expected the data inside the image"
    )]
    ExternalDataFile,
    #[error(
        "image is marked corrupt (expected a clean image; `qemu-img check -r all` repairs it)"
    )]
    MarkedCorrupt,
    #[error("unknown incompatible qcow2 feature bits {0:#x}")]
    UnknownIncompatibleFeatures(u64),
    #[error(
        "unsupported compression type {0} (expected 0 = deflate, or 1 = zstd with its feature bit)"
    )]
    CompressionType(u8),
    #[error("extended L2 entries need clusters of at least 16 KiB, got cluster_bits {0}")]
    ExtendedL2ClusterBits(u32),
    #[error("header extension at {offset:#x} runs past the header cluster")]
    HeaderExtension { offset: u64 },
    #[error("virtual size {0} is too large (needs more than 32 MiB of L1 table)")]
    VirtualSizeTooLarge(u64),
    #[error("virtual size {virtual_size} needs {needed} L1 entries but l1_size is {l1_size}")]
    L1TooSmall {
        virtual_size: u64,
        needed: u64,
        l1_size: u32,
    },
    #[error("L1 table at {offset:#x} ({entries} entries) is misaligned or outside the file ({file_len} bytes)")]
    L1Table {
        offset: u64,
        entries: u64,
        file_len: u64,
    },
    #[error(
        "backing file name at {offset:#x} ({len} bytes) is too long or outside the header cluster"
    )]
    BackingName { offset: u64, len: u32 },
    #[error("unsupported backing file format {0:?} (expected raw or qcow2)")]
    BackingFormat(String),
    #[error(
        "backing chain's L1 tables hold more than {} entries together (32 MiB)",
        header::MAX_L1_ENTRIES
    )]
    ChainL1TooLarge,
    #[error("backing chain deeper than {MAX_CHAIN_DEPTH} images")]
    ChainTooDeep,
    #[error("backing chain loops back to {}", .0.display())]
    BackingLoop(PathBuf),
    #[error("backing file {}: {error}", .path.display())]
    Backing {
        path: PathBuf,
        error: Box<Qcow2Error>,
    },
}

/// An open qcow2 image; `ReadAt` serves its virtual disk.
pub struct Qcow2Image {
    file: File,
    /// Fixed at open, like `RawFile`: offsets are checked against it.
    file_len: u64,
    virtual_size: u64,
    cluster_bits: u32,
    extended_l2: bool,
    compression: Compression,
    l1: Box<[u64]>,
    l2_cache: L2Cache,
    /// The last partly read compressed cluster, keyed by its host offset: small sequential
    /// reads would otherwise decompress the same cluster again and again.
    last_compressed: Mutex<Option<(u64, Arc<[u8]>)>>,
    backing: Option<Backing>,
}

impl std::fmt::Debug for Qcow2Image {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Qcow2Image")
            .field("virtual_size", &self.virtual_size)
            .field("cluster_bits", &self.cluster_bits)
            .field("extended_l2", &self.extended_l2)
            .field("compression", &self.compression)
            .field("has_backing", &self.backing.is_some())
            .finish_non_exhaustive()
    }
}

/// How a run of the virtual disk is stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mapping {
    /// Stored uncompressed at this host offset.
    Data { host: u64 },
    /// Inside a compressed cluster stored at `host`, `size` bytes at most.
    Compressed { host: u64, size: u64 },
    /// Reads as zeros whatever the backing file holds.
    Zero,
    /// Not in this image: reads from the backing file, or as zeros without one.
    Unallocated,
}

/// A run starting at a virtual offset: `len` bytes stored as `mapping` says.
struct Extent {
    mapping: Mapping,
    len: u64,
}

/// The virtual size a qcow2 image in `file` declares, from its header alone: no backing file
/// is opened (a backing file name is hostile input until a store's opener has checked it).
pub fn declared_size(file: &File) -> Result<u64, Qcow2Error> {
    let meta = file.metadata().map_err(|error| Qcow2Error::Io {
        what: "image",
        error,
    })?;
    Ok(Header::read(file, meta.len())?.virtual_size)
}

/// What the images above one being opened took.
#[derive(Default)]
struct Chain {
    /// (device, inode) of each.
    ids: Vec<(u64, u64)>,
    /// Their L1 entries, together.
    l1_entries: u64,
}

impl Qcow2Image {
    pub fn open(path: &Path) -> Result<Self, Qcow2Error> {
        Self::open_in_chain(path, &super::open_image_file, &mut Chain::default())
    }

    /// The image in an already open `file`; `path` names it (backing file names are
    /// relative to its directory).
    pub fn from_file(file: File, path: &Path) -> Result<Self, Qcow2Error> {
        Self::from_file_with(file, path, &super::open_image_file)
    }

    /// [`Self::from_file`], opening backing files with `opener` (a store's refuses files
    /// outside it: a backing file name is hostile input).
    pub fn from_file_with(
        file: File,
        path: &Path,
        opener: super::Opener<'_>,
    ) -> Result<Self, Qcow2Error> {
        Self::from_file_in_chain(file, path, opener, &mut Chain::default())
    }

    /// `chain` holds what the images above this one took: their (device, inode), to catch
    /// loops, and their L1 entries, bounded together.
    fn open_in_chain(
        path: &Path,
        opener: super::Opener<'_>,
        chain: &mut Chain,
    ) -> Result<Self, Qcow2Error> {
        let file = opener(path).map_err(|error| Qcow2Error::Io {
            what: "image",
            error,
        })?;
        Self::from_file_in_chain(file, path, opener, chain)
    }

    fn from_file_in_chain(
        file: File,
        path: &Path,
        opener: super::Opener<'_>,
        chain: &mut Chain,
    ) -> Result<Self, Qcow2Error> {
        let io_err = |what| move |error| Qcow2Error::Io { what, error };
        let meta = file.metadata().map_err(io_err("image"))?;
        let id = (meta.dev(), meta.ino());
        if chain.ids.contains(&id) {
            return Err(Qcow2Error::BackingLoop(path.to_owned()));
        }
        if chain.ids.len() > MAX_CHAIN_DEPTH {
            return Err(Qcow2Error::ChainTooDeep);
        }
        chain.ids.push(id);
        let file_len = meta.len();
        let header = Header::read(&file, file_len)?;
        // Each image's table is bounded by qemu's limit; a chain of them is bounded together,
        // so that 17 small files cannot make one open hold 17 tables of 32 MiB.
        chain.l1_entries = chain.l1_entries.saturating_add(header.l1_entries);
        if chain.l1_entries > header::MAX_L1_ENTRIES {
            return Err(Qcow2Error::ChainL1TooLarge);
        }

        // Bounded by the file size: Header::read checked that the table lies inside it.
        let mut l1_bytes = vec![0u8; (header.l1_entries * 8) as usize];
        file.read_exact_at(&mut l1_bytes, header.l1_offset)
            .map_err(io_err("L1 table"))?;
        let l1 = l1_bytes
            .chunks_exact(8)
            .filter_map(|entry| header::be64(entry, 0))
            .collect();
        // Not held while the backing files below are opened.
        drop(l1_bytes);

        let backing = match header.backing {
            Some(backing) => Some(open_backing(path, backing, opener, chain)?),
            None => None,
        };
        let l2_tables = (L2_CACHE_BYTES >> header.cluster_bits)
            .clamp(*L2_CACHE_TABLES.start(), *L2_CACHE_TABLES.end());
        Ok(Self {
            file,
            file_len,
            virtual_size: header.virtual_size,
            cluster_bits: header.cluster_bits,
            extended_l2: header.extended_l2,
            compression: header.compression,
            l1,
            l2_cache: L2Cache::new(l2_tables as usize),
            last_compressed: Mutex::new(None),
            backing,
        })
    }

    fn cluster_size(&self) -> u64 {
        1 << self.cluster_bits
    }

    /// u64 words per L2 entry.
    fn l2_stride(&self) -> u64 {
        if self.extended_l2 {
            2
        } else {
            1
        }
    }

    /// log2 of the virtual bytes one L2 table maps.
    fn l2_coverage_bits(&self) -> u32 {
        let entries_bits = self.cluster_bits - 3 - u32::from(self.extended_l2);
        self.cluster_bits + entries_bits
    }

    /// log2 of the smallest unit with its own mapping: a subcluster or a cluster.
    fn unit_bits(&self) -> u32 {
        if self.extended_l2 {
            self.cluster_bits - SUBCLUSTERS.trailing_zeros()
        } else {
            self.cluster_bits
        }
    }

    /// The L2 table offset of L1 entry `index`, `None` when unallocated.
    fn l1_entry(&self, index: u64) -> Option<u64> {
        let entry = usize::try_from(index).ok().and_then(|i| self.l1.get(i))?;
        Some(entry & OFFSET_MASK).filter(|&offset| offset != 0)
    }

    /// How the disk is stored from `voff` (< virtual size) for at most `max_len` (> 0) bytes.
    /// The extent is never empty, and never crosses an L2 table or, if compressed, a cluster.
    fn map(&self, voff: u64, max_len: u64) -> io::Result<Extent> {
        let end = voff.saturating_add(max_len).min(self.virtual_size);
        let coverage_bits = self.l2_coverage_bits();
        let l1_index = voff >> coverage_bits;
        let table_end = (l1_index + 1) << coverage_bits;

        let Some(l2_offset) = self.l1_entry(l1_index) else {
            // A whole sparse region skips L2 tables altogether; take all of it at once.
            let mut run_end = table_end;
            let mut next = l1_index + 1;
            while run_end < end && self.l1_entry(next).is_none() {
                run_end += 1 << coverage_bits;
                next += 1;
            }
            return Ok(Extent {
                mapping: Mapping::Unallocated,
                len: run_end.min(end) - voff,
            });
        };
        let table = self
            .l2_cache
            .get_or_load(l2_offset, || self.load_l2(l2_offset, voff))?;
        let end = end.min(table_end);

        let unit = 1u64 << self.unit_bits();
        let unit_start = voff & !(unit - 1);
        let first = self.unit_mapping(&table, unit_start, voff)?;
        if let Mapping::Compressed { .. } = first {
            let cluster_end = (voff | (self.cluster_size() - 1)) + 1;
            return Ok(Extent {
                mapping: first,
                len: cluster_end.min(end) - voff,
            });
        }
        let mut run_end = unit_start + unit;
        while run_end < end {
            let continues = match (first, self.unit_mapping(&table, run_end, voff)?) {
                (Mapping::Data { host: first_host }, Mapping::Data { host }) => {
                    first_host.checked_add(run_end - unit_start) == Some(host)
                }
                (Mapping::Zero, Mapping::Zero) | (Mapping::Unallocated, Mapping::Unallocated) => {
                    true
                }
                _ => false,
            };
            if !continues {
                break;
            }
            run_end += unit;
        }
        let mapping = match first {
            Mapping::Data { host } => Mapping::Data {
                host: host + (voff - unit_start),
            },
            other => other,
        };
        Ok(Extent {
            mapping,
            len: run_end.min(end) - voff,
        })
    }

    /// The mapping of the unit (cluster or subcluster) starting at `vpos`, from its L2 `table`.
    fn unit_mapping(&self, table: &[u64], vpos: u64, voff: u64) -> io::Result<Mapping> {
        let entries = 1u64 << (self.l2_coverage_bits() - self.cluster_bits);
        let index = ((vpos >> self.cluster_bits) & (entries - 1)) * self.l2_stride();
        let word = |i: u64| {
            usize::try_from(i)
                .ok()
                .and_then(|i| table.get(i).copied())
                .ok_or_else(|| invalid(voff, "L2 table shorter than a cluster"))
        };
        let entry = word(index)?;
        if entry & L2_COMPRESSED != 0 {
            return self.compressed_mapping(entry, voff);
        }
        let host = entry & OFFSET_MASK;
        if !self.extended_l2 {
            return Ok(if entry & L2_ZERO != 0 {
                Mapping::Zero
            } else if host == 0 {
                Mapping::Unallocated
            } else {
                Mapping::Data {
                    host: self.checked_cluster(host, voff)?,
                }
            });
        }
        let bitmap = word(index + 1)?;
        let sub = (vpos >> self.unit_bits()) & u64::from(SUBCLUSTERS - 1);
        let allocated = bitmap >> sub & 1 != 0;
        let zero = bitmap >> (u64::from(SUBCLUSTERS) + sub) & 1 != 0;
        match (allocated, zero) {
            (true, true) => Err(invalid(voff, "subcluster marked both allocated and zero")),
            (true, false) if host == 0 => Err(invalid(
                voff,
                "allocated subcluster in an unallocated cluster",
            )),
            (true, false) => Ok(Mapping::Data {
                host: self.checked_cluster(host, voff)? + (sub << self.unit_bits()),
            }),
            (false, true) => Ok(Mapping::Zero),
            (false, false) => Ok(Mapping::Unallocated),
        }
    }

    /// Decodes a compressed cluster descriptor: the host offset in the low bits, then the
    /// number of extra 512-byte sectors the compressed data spans.
    fn compressed_mapping(&self, entry: u64, voff: u64) -> io::Result<Mapping> {
        let size_bits = self.cluster_bits - 8;
        let size_shift = 62 - size_bits;
        let host = entry & ((1 << size_shift) - 1);
        let sectors = ((entry >> size_shift) & ((1 << size_bits) - 1)) + 1;
        let size = sectors * 512 - (host & 511);
        if host == 0 || host >= self.file_len {
            return Err(invalid(
                voff,
                &format!(
                    "compressed cluster at {host:#x} outside the file ({} bytes)",
                    self.file_len
                ),
            ));
        }
        Ok(Mapping::Compressed { host, size })
    }

    /// Checks a data cluster's host offset: aligned, and starting inside the file.
    fn checked_cluster(&self, host: u64, voff: u64) -> io::Result<u64> {
        if !host.is_multiple_of(self.cluster_size()) || host >= self.file_len {
            return Err(invalid(
                voff,
                &format!(
                    "data cluster at {host:#x} is misaligned or outside the file ({} bytes)",
                    self.file_len
                ),
            ));
        }
        Ok(host)
    }

    fn load_l2(&self, offset: u64, voff: u64) -> io::Result<Arc<[u64]>> {
        let size = self.cluster_size();
        if !offset.is_multiple_of(size)
            || offset
                .checked_add(size)
                .is_none_or(|end| end > self.file_len)
        {
            return Err(invalid(
                voff,
                &format!(
                    "L2 table at {offset:#x} is misaligned or outside the file ({} bytes)",
                    self.file_len
                ),
            ));
        }
        let mut bytes = vec![0u8; size as usize];
        self.file.read_exact_at(&mut bytes, offset).map_err(|e| {
            io::Error::new(
                e.kind(),
                format!("reading the L2 table at {offset:#x}: {e}"),
            )
        })?;
        Ok(bytes
            .chunks_exact(8)
            .filter_map(|word| header::be64(word, 0))
            .collect())
    }

    /// Reads stored data. Only the cluster holding the file's last byte can reach past the end
    /// (every cluster's start was checked), and qemu reads that tail as zeros, so do we.
    fn read_data(&self, host: u64, buf: &mut [u8]) -> io::Result<()> {
        let mut done = 0;
        while done < buf.len() {
            match self.file.read_at(&mut buf[done..], host + done as u64) {
                Ok(0) => break,
                Ok(n) => done += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        buf[done..].fill(0);
        Ok(())
    }

    /// Reads part of a compressed cluster; `voff` is the virtual offset of `buf[0]`.
    fn read_compressed(&self, host: u64, size: u64, voff: u64, buf: &mut [u8]) -> io::Result<()> {
        let in_cluster = (voff & (self.cluster_size() - 1)) as usize;
        if in_cluster == 0 && buf.len() as u64 == self.cluster_size() {
            return self.decompress(host, size, voff, buf);
        }
        let cached = {
            let last = self
                .last_compressed
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            last.as_ref()
                .filter(|(at, _)| *at == host)
                .map(|(_, data)| Arc::clone(data))
        };
        let cluster = match cached {
            Some(cluster) => cluster,
            None => {
                let mut cluster = vec![0u8; self.cluster_size() as usize];
                self.decompress(host, size, voff, &mut cluster)?;
                let cluster: Arc<[u8]> = cluster.into();
                *self
                    .last_compressed
                    .lock()
                    .unwrap_or_else(|p| p.into_inner()) = Some((host, Arc::clone(&cluster)));
                cluster
            }
        };
        let part = in_cluster
            .checked_add(buf.len())
            .and_then(|end| cluster.get(in_cluster..end))
            .ok_or_else(|| invalid(voff, "read past a compressed cluster"))?;
        buf.copy_from_slice(part);
        Ok(())
    }

    /// Decompresses the cluster at `host` into `out` (one cluster long).
    fn decompress(&self, host: u64, size: u64, voff: u64, out: &mut [u8]) -> io::Result<()> {
        // The size is rounded up to whole sectors, so the last cluster's may reach past the end.
        let size = size.min(self.file_len - host);
        let mut input = vec![0u8; size as usize];
        self.file.read_exact_at(&mut input, host)?;
        let result = match self.compression {
            Compression::Deflate => decompress::inflate(&input, out),
            Compression::Zstd => decompress::unzstd(&input, out),
        };
        result.map_err(|e| invalid(voff, &format!("compressed cluster at {host:#x}: {e}")))
    }
}

impl ReadAt for Qcow2Image {
    fn len(&self) -> u64 {
        self.virtual_size
    }

    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<usize> {
        if offset >= self.virtual_size {
            return Ok(0);
        }
        let want = (buf.len() as u64).min(self.virtual_size - offset) as usize;
        let mut done = 0;
        while done < want {
            let voff = offset + done as u64;
            let extent = self.map(voff, (want - done) as u64)?;
            let chunk = usize::try_from(extent.len)
                .ok()
                .filter(|&len| len > 0)
                .and_then(|len| buf.get_mut(done..done.checked_add(len)?))
                .ok_or_else(|| invalid(voff, "empty or oversized mapping"))?;
            match extent.mapping {
                Mapping::Data { host } => self.read_data(host, chunk)?,
                Mapping::Compressed { host, size } => {
                    self.read_compressed(host, size, voff, chunk)?
                }
                Mapping::Zero => chunk.fill(0),
                Mapping::Unallocated => match &self.backing {
                    // A backing file shorter than this disk reads as zeros past its end.
                    Some(backing) => read_full_at(backing.source(), voff, chunk)?,
                    None => chunk.fill(0),
                },
            }
            done += chunk.len();
        }
        Ok(want)
    }

    fn next_data(&self, offset: u64) -> io::Result<Option<u64>> {
        let mut budget = SEEK_BUDGET;
        self.seek_data(offset, self.virtual_size, &mut budget)
    }

    fn next_hole(&self, offset: u64) -> io::Result<u64> {
        let mut budget = SEEK_BUDGET;
        self.seek_hole(offset, self.virtual_size, &mut budget)
    }
}

impl Qcow2Image {
    /// The first offset in `offset..limit` that may hold data, spending `budget` (L2 entries
    /// examined, shared down the chain). When the budget runs out the answer is "data here":
    /// always safe, as data is simply read.
    fn seek_data(&self, offset: u64, limit: u64, budget: &mut u64) -> io::Result<Option<u64>> {
        let end = limit.min(self.virtual_size);
        let mut pos = offset;
        while pos < end {
            if *budget == 0 {
                return Ok(Some(pos));
            }
            let extent = self.map(pos, end - pos)?;
            self.spend(budget, &extent);
            let run_end = pos + extent.len;
            match (extent.mapping, &self.backing) {
                (Mapping::Data { .. } | Mapping::Compressed { .. }, _) => return Ok(Some(pos)),
                (Mapping::Unallocated, Some(backing)) => {
                    if let Some(data) = backing.seek_data(pos, run_end, budget)? {
                        return Ok(Some(data));
                    }
                }
                (Mapping::Zero | Mapping::Unallocated, _) => {}
            }
            pos = run_end;
        }
        Ok(None)
    }

    /// The first offset in `offset..limit` that starts a hole (past the virtual size counts),
    /// or `limit` when there is none before it. When the budget runs out the answer is "no
    /// hole": always safe, as the zeros are simply read.
    fn seek_hole(&self, offset: u64, limit: u64, budget: &mut u64) -> io::Result<u64> {
        let end = limit.min(self.virtual_size);
        let mut pos = offset;
        while pos < end {
            if *budget == 0 {
                return Ok(limit);
            }
            let extent = self.map(pos, end - pos)?;
            self.spend(budget, &extent);
            let run_end = pos + extent.len;
            match (extent.mapping, &self.backing) {
                (Mapping::Data { .. } | Mapping::Compressed { .. }, _) => {}
                (Mapping::Unallocated, Some(backing)) => {
                    let hole = backing.seek_hole(pos, run_end, budget)?;
                    if hole < run_end {
                        return Ok(hole);
                    }
                }
                (Mapping::Zero | Mapping::Unallocated, _) => return Ok(pos),
            }
            pos = run_end;
        }
        Ok(pos)
    }

    /// Charges the L2 entries `map` examined for `extent` (at most one table's worth).
    fn spend(&self, budget: &mut u64, extent: &Extent) {
        let examined = extent.len.min(1 << self.l2_coverage_bits()) >> self.unit_bits();
        *budget = budget.saturating_sub(1 + examined);
    }
}

/// A backing file, by format: seeks within a qcow2 backing share the caller's budget and
/// stop at the caller's extent instead of scanning the rest of the backing disk.
enum Backing {
    Raw(RawFile),
    Qcow2(Box<Qcow2Image>),
}

impl Backing {
    fn source(&self) -> &dyn ReadAt {
        match self {
            Backing::Raw(raw) => raw,
            Backing::Qcow2(image) => &**image,
        }
    }

    fn seek_data(&self, offset: u64, limit: u64, budget: &mut u64) -> io::Result<Option<u64>> {
        match self {
            Backing::Raw(raw) => Ok(raw.next_data(offset)?.filter(|&data| data < limit)),
            Backing::Qcow2(image) => image.seek_data(offset, limit, budget),
        }
    }

    fn seek_hole(&self, offset: u64, limit: u64, budget: &mut u64) -> io::Result<u64> {
        match self {
            Backing::Raw(raw) => Ok(raw.next_hole(offset)?.clamp(offset, limit)),
            Backing::Qcow2(image) => image.seek_hole(offset, limit, budget),
        }
    }
}

/// Opens the backing file named in the header: relative names are relative to the image's
/// directory; the `backing_fmt` extension decides the format, else the magic does.
fn open_backing(
    image: &Path,
    backing: BackingRef,
    opener: super::Opener<'_>,
    chain: &mut Chain,
) -> Result<Backing, Qcow2Error> {
    let name = PathBuf::from(OsString::from_vec(backing.name));
    let path = image.parent().unwrap_or(Path::new("")).join(name);
    let wrap = |error| Qcow2Error::Backing {
        path: path.clone(),
        error: Box::new(error),
    };
    let io_err = |error| {
        wrap(Qcow2Error::Io {
            what: "backing file",
            error,
        })
    };
    let format = match backing.format.as_deref() {
        Some("qcow2") => Format::Qcow2,
        Some("raw") => Format::Raw,
        Some(other) => return Err(Qcow2Error::BackingFormat(other.to_owned())),
        None => super::detect::detect_file(&opener(&path).map_err(io_err)?).map_err(io_err)?,
    };
    match format {
        Format::Qcow2 => Ok(Backing::Qcow2(Box::new(
            Qcow2Image::open_in_chain(&path, opener, chain).map_err(wrap)?,
        ))),
        Format::Raw => Ok(Backing::Raw(
            RawFile::from_file(opener(&path).map_err(io_err)?).map_err(io_err)?,
        )),
        other => Err(Qcow2Error::BackingFormat(other.to_string())),
    }
}

/// A read error caused by the image's contents, naming the virtual offset being read.
fn invalid(voff: u64, what: &str) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!("qcow2 read at offset {voff:#x}: {what}"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    const CLUSTER: usize = 512;

    fn put32(b: &mut [u8], at: usize, v: u32) {
        b[at..at + 4].copy_from_slice(&v.to_be_bytes());
    }
    fn put64(b: &mut [u8], at: usize, v: u64) {
        b[at..at + 8].copy_from_slice(&v.to_be_bytes());
    }

    /// A hand-made v3 image with 512-byte clusters: header, L1 (cluster 1), L2 (cluster 2),
    /// data clusters 0xaa and 0xbb (3, 4), a deflate-compressed cluster of 0xcc (5).
    /// Virtual clusters: 0 = aa, 1 = bb (contiguous with 0), 2 unallocated, 3 zero, 4 = aa,
    /// 5 compressed, 6..8 unallocated.
    fn sample() -> Vec<u8> {
        let mut b = vec![0u8; 6 * CLUSTER];
        b[..4].copy_from_slice(b"QFI\xfb");
        put32(&mut b, 4, 3);
        put32(&mut b, 20, 9);
        put64(&mut b, 24, 8 * CLUSTER as u64);
        put32(&mut b, 36, 1);
        put64(&mut b, 40, CLUSTER as u64);
        put32(&mut b, 100, 104);
        put64(&mut b, CLUSTER, 2 * CLUSTER as u64);
        let l2 = 2 * CLUSTER;
        put64(&mut b, l2, 3 * CLUSTER as u64);
        put64(&mut b, l2 + 8, 4 * CLUSTER as u64);
        put64(&mut b, l2 + 24, L2_ZERO);
        put64(&mut b, l2 + 32, 3 * CLUSTER as u64);
        put64(&mut b, l2 + 40, L2_COMPRESSED | (5 * CLUSTER as u64));
        b[3 * CLUSTER..4 * CLUSTER].fill(0xaa);
        b[4 * CLUSTER..5 * CLUSTER].fill(0xbb);
        let mut deflate =
            flate2::write::DeflateEncoder::new(Vec::new(), flate2::Compression::default());
        deflate.write_all(&[0xcc; CLUSTER]).unwrap();
        let compressed = deflate.finish().unwrap();
        b[5 * CLUSTER..5 * CLUSTER + compressed.len()].copy_from_slice(&compressed);
        b.truncate(5 * CLUSTER + compressed.len());
        b
    }

    fn open(bytes: &[u8]) -> Result<Qcow2Image, Qcow2Error> {
        let mut file = tempfile::NamedTempFile::new().unwrap();
        file.write_all(bytes).unwrap();
        Qcow2Image::open(file.path())
    }

    #[test]
    fn a_chain_of_large_l1_tables_is_bounded_together() {
        use std::os::unix::fs::FileExt;
        let dir = tempfile::tempdir().unwrap();
        // 24 MiB of L1 each: under qemu's limit for one image, over it for the two together.
        let entries: u64 = 3 << 20;
        let make = |name: &str, backing: Option<&str>| {
            let mut h = vec![0u8; CLUSTER];
            h[..4].copy_from_slice(b"QFI\xfb");
            put32(&mut h, 4, 3);
            put32(&mut h, 20, 9);
            put64(&mut h, 24, entries * (CLUSTER as u64 / 8) * CLUSTER as u64);
            put32(&mut h, 36, entries as u32);
            put64(&mut h, 40, CLUSTER as u64);
            put32(&mut h, 100, 104);
            if let Some(b) = backing {
                put64(&mut h, 8, 200);
                put32(&mut h, 16, b.len() as u32);
                h[200..200 + b.len()].copy_from_slice(b.as_bytes());
            }
            let f = std::fs::File::create(dir.path().join(name)).unwrap();
            f.write_all_at(&h, 0).unwrap();
            f.set_len(CLUSTER as u64 + entries * 8).unwrap();
        };
        make("base.qcow2", None);
        make("top.qcow2", Some("base.qcow2"));
        assert!(Qcow2Image::open(&dir.path().join("base.qcow2")).is_ok());
        let e = Qcow2Image::open(&dir.path().join("top.qcow2"))
            .err()
            .unwrap();
        assert!(
            matches!(&e, Qcow2Error::Backing { error, .. } if matches!(**error, Qcow2Error::ChainL1TooLarge)),
            "{e}"
        );
    }

    fn open_patched(f: impl FnOnce(&mut Vec<u8>)) -> Result<Qcow2Image, Qcow2Error> {
        let mut bytes = sample();
        f(&mut bytes);
        open(&bytes)
    }

    #[test]
    fn reads_every_kind_of_cluster() {
        let image = open(&sample()).unwrap();
        let mut disk = vec![0x55u8; 8 * CLUSTER];
        assert_eq!(image.read_at(0, &mut disk).unwrap(), disk.len());
        let fills = [0xaa, 0xbb, 0, 0, 0xaa, 0xcc, 0, 0];
        for (cluster, fill) in disk.chunks(CLUSTER).zip(fills) {
            assert!(cluster.iter().all(|&b| b == fill), "expected {fill:#x}");
        }
        // Across a boundary, into the compressed cluster, then past the end.
        let mut buf = [0u8; 3];
        image.read_at(5 * CLUSTER as u64 - 1, &mut buf).unwrap();
        assert_eq!(buf, [0xaa, 0xcc, 0xcc]);
        assert_eq!(image.read_at(8 * CLUSTER as u64 - 1, &mut buf).unwrap(), 1);
    }

    #[test]
    fn contiguous_clusters_map_as_one_run() {
        let image = open(&sample()).unwrap();
        let extent = image.map(100, 1 << 20).unwrap();
        assert_eq!(
            extent.mapping,
            Mapping::Data {
                host: 3 * CLUSTER as u64 + 100
            }
        );
        assert_eq!(extent.len, 2 * CLUSTER as u64 - 100);
    }

    #[test]
    fn unallocated_and_zero_clusters_are_holes() {
        let image = open(&sample()).unwrap();
        let c = CLUSTER as u64;
        assert_eq!(image.next_hole(0).unwrap(), 2 * c);
        assert_eq!(image.next_data(2 * c).unwrap(), Some(4 * c));
        assert_eq!(image.next_hole(4 * c).unwrap(), 6 * c);
        assert_eq!(image.next_data(6 * c).unwrap(), None);
        assert_eq!(image.next_hole(8 * c).unwrap(), 8 * c);
    }

    #[test]
    fn refuses_bad_headers() {
        let e = |f: fn(&mut Vec<u8>)| open_patched(f).unwrap_err();
        assert!(matches!(
            e(|b| b.truncate(50)),
            Qcow2Error::Truncated { .. }
        ));
        assert!(matches!(
            e(|b| put32(b, 20, 40)),
            Qcow2Error::ClusterBits(40)
        ));
        assert!(matches!(e(|b| put32(b, 32, 1)), Qcow2Error::Encrypted(1)));
        assert!(matches!(
            e(|b| put32(b, 100, 100)),
            Qcow2Error::HeaderLength(100)
        ));
        assert!(matches!(
            e(|b| put64(b, 72, 1 << 2)),
            Qcow2Error::ExternalDataFile
        ));
        assert!(matches!(
            e(|b| put64(b, 72, 1 << 40)),
            Qcow2Error::UnknownIncompatibleFeatures(_)
        ));
        assert!(matches!(
            e(|b| put64(b, 72, 1 << 4)),
            Qcow2Error::ExtendedL2ClusterBits(9)
        ));
        assert!(matches!(
            e(|b| put32(b, 36, 0)),
            Qcow2Error::L1TooSmall { needed: 1, .. }
        ));
        let e2 = |f: fn(&mut Vec<u8>)| open_patched(f).unwrap_err();
        // zstd needs its feature bit; type 7 does not exist.
        assert!(matches!(
            e2(|b| {
                put32(b, 100, 112);
                b[104] = 1;
            }),
            Qcow2Error::CompressionType(1)
        ));
        assert!(matches!(
            e2(|b| {
                put32(b, 100, 112);
                put64(b, 72, 1 << 3);
                b[104] = 7;
            }),
            Qcow2Error::CompressionType(7)
        ));
        // A header extension whose length runs past the header cluster.
        assert!(matches!(
            e2(|b| {
                put32(b, 104, 0x1234);
                put32(b, 108, 10_000);
            }),
            Qcow2Error::HeaderExtension { offset: 104 }
        ));
        // A backing name past the header cluster, or too long.
        assert!(matches!(
            e2(|b| {
                put64(b, 8, 500);
                put32(b, 16, 20);
            }),
            Qcow2Error::BackingName { .. }
        ));
        assert!(matches!(
            e2(|b| {
                put64(b, 8, 200);
                put32(b, 16, 2000);
            }),
            Qcow2Error::BackingName { .. }
        ));
    }

    #[test]
    fn backing_format_extension_is_honored() {
        let image = open_patched(|b| {
            put32(b, 104, header::tests_support::EXT_BACKING_FORMAT);
            put32(b, 108, 4);
            b[112..116].copy_from_slice(b"vmdk");
            put64(b, 8, 200);
            put32(b, 16, 4);
            b[200..204].copy_from_slice(b"base");
        });
        assert!(matches!(image, Err(Qcow2Error::BackingFormat(f)) if f == "vmdk"));
        let missing = open_patched(|b| {
            put64(b, 8, 200);
            put32(b, 16, 12);
            b[200..212].copy_from_slice(b"/nonexistent");
        });
        assert!(
            matches!(missing, Err(Qcow2Error::Backing { .. })),
            "{missing:?}"
        );
    }

    #[test]
    fn bad_mappings_fail_reads_naming_the_offset() {
        // (Misalignment needs clusters above 512 bytes; the integration tests cover it.)
        type Patch = fn(&mut Vec<u8>);
        let cases: [(Patch, u64); 4] = [
            (|b| put64(b, CLUSTER, 1 << 20), 0), // L2 table past EOF
            (|b| put64(b, 2 * CLUSTER + 32, 1 << 30), 2048), // data past EOF
            (
                |b| put64(b, 2 * CLUSTER + 40, L2_COMPRESSED | (1 << 40)),
                2560,
            ), // compressed past EOF
            (|b| b[5 * CLUSTER..5 * CLUSTER + 8].fill(0xff), 2560), // garbage deflate
        ];
        for (patch, offset) in cases {
            let image = open_patched(patch).unwrap();
            let err = image.read_at(offset, &mut [0u8; 512]).unwrap_err();
            assert_eq!(err.kind(), io::ErrorKind::InvalidData, "{err}");
            assert!(err.to_string().contains(&format!("{offset:#x}")), "{err}");
        }
    }
}
