//! `bifs verify`: a second opinion on a LUKS image from libcryptsetup and, where the kernel has
//! device-mapper, from dm-crypt itself.
//!
//! 1. libcryptsetup loads the header, checks the passphrase and hands out the volume key; our
//!    engine must unlock the same key and agree on the data segment's geometry.
//! 2. The plaintext is read either through a read-only dm-crypt mapping (the kernel decrypts)
//!    or, without device-mapper, by decrypting the data segment with libcryptsetup's key and
//!    geometry through the `xts-mode` crate, an XTS implementation that is not ours.
//! 3. The plaintext is hashed (SHA-512) and, given a SOURCE, compared with SOURCE's raw content,
//!    naming the first differing offset.

use std::io::{self, Write};
use std::path::Path;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use bifs_core::image::{self, ReadAt};
use bifs_core::kdf::KdfLimits;
use bifs_core::keys::Passphrase;
use bifs_core::luks::LuksHeader;

pub mod compare;
mod error;
pub mod libcs;

pub use libcs::dm_available;
pub mod plain;

pub use compare::{Mismatch, MismatchKind, Outcome};
pub use error::{DeviceMapperError, GeometryDiff, GeometryError, IoStep, Unsupported, VerifyError};
pub use libcs::Geometry;

use bifs_core::image::raw::RawFile;
use plain::{MappedDevice, XtsPlaintext};

/// What the plain statement of the fallback says, word for word (tests and CI grep for it).
pub const NO_DM_MESSAGE: &str =
    "device-mapper not available: comparing through libcryptsetup's volume key and an independent XTS path";

/// How the plaintext is obtained.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Method {
    /// dm-crypt when device-mapper is available, else the XTS path.
    #[default]
    Auto,
    /// A read-only dm-crypt mapping; an error where device-mapper is not available.
    DmCrypt,
    /// libcryptsetup's volume key and the `xts-mode` crate, even where dm-crypt would work.
    Xts,
}

/// The method that was used.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UsedMethod {
    DmCrypt,
    Xts,
}

impl UsedMethod {
    pub fn name(self) -> &'static str {
        match self {
            UsedMethod::DmCrypt => "dm-crypt",
            UsedMethod::Xts => "xts",
        }
    }
}

pub struct VerifyOptions<'a> {
    pub image: &'a Path,
    pub against: Option<&'a Path>,
    pub passphrase: &'a Passphrase,
    pub method: Method,
    pub limits: KdfLimits,
}

#[derive(Debug, Clone)]
pub struct Report {
    pub geometry: Geometry,
    /// The keyslot libcryptsetup opened.
    pub keyslot: u32,
    pub method: UsedMethod,
    pub outcome: Outcome,
}

impl Report {
    pub fn passed(&self) -> bool {
        self.outcome.mismatch.is_none()
    }
}

fn io_err(what: IoStep) -> impl FnOnce(io::Error) -> VerifyError {
    move |source| VerifyError::Io { what, source }
}

fn is_block_device(path: &Path) -> bool {
    use std::os::unix::fs::FileTypeExt;
    std::fs::metadata(path).is_ok_and(|m| m.file_type().is_block_device())
}

/// Opens a file or block device as a source of bytes; regular files through
/// `open_virtual_disk` so a qcow2 SOURCE is compared by its virtual disk.
fn open_source(path: &Path) -> Result<Arc<dyn ReadAt>, VerifyError> {
    if is_block_device(path) {
        let dev = RawFile::open(path).map_err(io_err(IoStep::Opening(path.to_owned())))?;
        return Ok(Arc::new(dev));
    }
    Ok(image::open_virtual_disk(path)?)
}

/// The report's lines, written as they are found.
struct Lines<'a>(&'a mut dyn Write);

impl Lines<'_> {
    fn say(&mut self, line: impl std::fmt::Display) -> Result<(), VerifyError> {
        writeln!(self.0, "{line}").map_err(io_err(IoStep::WritingReport))
    }
}

/// Runs the whole check, writing what it finds to `out` line by line. A mismatch is not an
/// error: the returned report says so (`Report::passed`), and the caller picks the exit code.
pub fn verify(
    opts: &VerifyOptions<'_>,
    cancel: &AtomicBool,
    out: &mut dyn Write,
) -> Result<Report, VerifyError> {
    let mut out = Lines(out);
    libcs::init_logging();
    out.say(format!("image: {}", opts.image.display()))?;

    // 1. libcryptsetup's view of the header, and its volume key.
    let mut lib = libcs::LibImage::load(opts.image)?;
    let geo = lib.geometry()?;
    out.say(describe_geometry(&geo))?;
    let (keyslot, lib_key) = lib.volume_key(opts.passphrase.as_bytes(), geo.key_bytes)?;
    out.say(format!(
        "passphrase: opens keyslot {keyslot} (libcryptsetup)"
    ))?;
    if cancel.load(std::sync::atomic::Ordering::Relaxed) {
        return Err(VerifyError::Interrupted);
    }

    // 2. Our engine must reach the same key and the same geometry.
    let image_file =
        RawFile::open(opts.image).map_err(io_err(IoStep::Opening(opts.image.to_owned())))?;
    let our_slot = engine_agrees(&image_file, opts, &geo, &lib_key)?;
    out.say(format!(
        "bifs engine: same volume key{}, same data segment geometry",
        our_slot
            .map(|s| format!(" (opened keyslot {s})"))
            .unwrap_or_default()
    ))?;

    // 3. The plaintext, by dm-crypt or by the independent XTS path.
    let source = opts.against.map(open_source).transpose()?;
    let use_dm = use_dm(opts.method)?;
    let seg_len = geo.segment_len(image_file.len())?;
    let (method, outcome) = if use_dm {
        drop(image_file);
        let outcome = through_dm_crypt(
            lib,
            lib_key,
            opts.image,
            seg_len,
            source.as_deref(),
            cancel,
            &mut out,
        )?;
        (UsedMethod::DmCrypt, outcome)
    } else {
        drop(lib);
        if opts.method == Method::Auto {
            out.say(NO_DM_MESSAGE)?;
        }
        let outcome = through_xts(
            &image_file,
            &lib_key,
            &geo,
            seg_len,
            source.as_deref(),
            cancel,
            &mut out,
        )?;
        (UsedMethod::Xts, outcome)
    };

    // 4. What was checked.
    report_outcome(&outcome, opts.against, &mut out)?;
    Ok(Report {
        geometry: geo,
        keyslot,
        method,
        outcome,
    })
}

/// What libcryptsetup says of the header, as one report line.
fn describe_geometry(geo: &Geometry) -> String {
    format!(
        "header (libcryptsetup): {}, cipher {}, {}-bit key, sector size {}, data offset {} bytes, segment {}",
        geo.luks_type,
        geo.cipher_spec(),
        geo.key_bytes * 8,
        geo.sector_size,
        geo.data_offset,
        geo.segment_size.map_or_else(|| "dynamic".to_string(), |s| format!("{s} bytes")),
    )
}

/// Step 2: bifs's engine unlocks the same volume key as libcryptsetup and reads the same data
/// segment geometry. Returns the LUKS2 keyslot our engine opened.
fn engine_agrees(
    image: &RawFile,
    opts: &VerifyOptions<'_>,
    geo: &Geometry,
    lib_key: &[u8],
) -> Result<Option<u32>, VerifyError> {
    let ours = LuksHeader::read(image).map_err(VerifyError::EngineFailed)?;
    let (our_key, our_slot) = match &ours {
        LuksHeader::V2(h) => h
            .unlock(image, opts.passphrase, &opts.limits)
            .map(|(k, s)| (k, Some(s))),
        LuksHeader::V1(_) => ours
            .unlock(image, opts.passphrase, &opts.limits)
            .map(|k| (k, None)),
    }
    .map_err(VerifyError::EngineFailed)?;
    if !bifs_core::keys::ct_eq(our_key.as_bytes(), lib_key) {
        return Err(VerifyError::KeyMismatch);
    }
    let seg = ours.segment();
    let mut diffs = Vec::new();
    if seg.offset != geo.data_offset {
        diffs.push(GeometryDiff::DataOffset {
            ours: seg.offset,
            theirs: geo.data_offset,
        });
    }
    if seg.sector_size != geo.sector_size {
        diffs.push(GeometryDiff::SectorSize {
            ours: seg.sector_size,
            theirs: geo.sector_size,
        });
    }
    if seg.iv_tweak != geo.iv_offset {
        diffs.push(GeometryDiff::IvOffset {
            ours: seg.iv_tweak,
            theirs: geo.iv_offset,
        });
    }
    if geo.luks_type == "LUKS2" && seg.size != geo.segment_size {
        diffs.push(GeometryDiff::SegmentSize {
            ours: seg.size,
            theirs: geo.segment_size,
        });
    }
    if !diffs.is_empty() {
        return Err(VerifyError::GeometryMismatch(diffs));
    }
    Ok(our_slot)
}

/// Whether step 3 goes through dm-crypt.
fn use_dm(method: Method) -> Result<bool, VerifyError> {
    match method {
        Method::Auto => Ok(dm_available()),
        Method::DmCrypt if dm_available() => Ok(true),
        Method::DmCrypt => Err(DeviceMapperError::NotAvailable.into()),
        Method::Xts => Ok(false),
    }
}

/// Step 3 by dm-crypt: a read-only mapping, read while it exists, removed after.
fn through_dm_crypt(
    lib: libcs::LibImage,
    lib_key: zeroize::Zeroizing<Vec<u8>>,
    image_path: &Path,
    seg_len: u64,
    source: Option<&dyn ReadAt>,
    cancel: &AtomicBool,
    out: &mut Lines<'_>,
) -> Result<Outcome, VerifyError> {
    let name = mapping_name();
    let mapping = lib.activate_read_only(&name, &lib_key)?;
    drop(lib_key);
    let path = mapping.path()?;
    // libcryptsetup puts a loop device under a regular file; a block device is mapped as is.
    let under = if is_block_device(image_path) {
        format!("on {}", image_path.display())
    } else {
        "on a read-only loop device".to_string()
    };
    out.say(format!(
        "method: dm-crypt (read-only mapping {} {under}, decrypted by the kernel)",
        path.display()
    ))?;
    if mapping.size() != seg_len {
        out.say(format!(
            "note: the mapping is {} bytes; libcryptsetup's geometry implies {seg_len}",
            mapping.size()
        ))?;
    }
    let outcome = {
        let dev = RawFile::open(&path).map_err(io_err(IoStep::Opening(path.to_owned())))?;
        let plain = MappedDevice {
            len: mapping.size(),
            dev,
        };
        compare::run(&plain, source, cancel)?
        // `plain` closes here, before the mapping is removed.
    };
    mapping.deactivate()?;
    Ok(outcome)
}

/// Step 3 without device-mapper: libcryptsetup's key and geometry, the `xts-mode` crate.
fn through_xts(
    image: &RawFile,
    lib_key: &[u8],
    geo: &Geometry,
    seg_len: u64,
    source: Option<&dyn ReadAt>,
    cancel: &AtomicBool,
    out: &mut Lines<'_>,
) -> Result<Outcome, VerifyError> {
    out.say(
        "method: xts (libcryptsetup's volume key and geometry, decrypted by the xts-mode crate)",
    )?;
    if geo.cipher != "aes" || geo.cipher_mode != "xts-plain64" {
        return Err(Unsupported::XtsCipher(geo.cipher_spec()).into());
    }
    let plain = XtsPlaintext::new(
        image,
        lib_key,
        geo.data_offset,
        seg_len,
        geo.sector_size,
        geo.iv_offset,
    )?;
    compare::run(&plain, source, cancel)
}

/// Step 4: what was checked, and what was found.
fn report_outcome(
    outcome: &Outcome,
    against: Option<&Path>,
    out: &mut Lines<'_>,
) -> Result<(), VerifyError> {
    out.say(format!("plaintext: {} bytes", outcome.plaintext_len))?;
    out.say(format!("plaintext SHA-512: {}", outcome.sha512))?;
    let Some(against) = against else {
        return Ok(());
    };
    match &outcome.mismatch {
        None => out.say(format!("against {}: identical", against.display()))?,
        Some(m) => out.say(format!("against {}: MISMATCH: {m}", against.display()))?,
    }
    if outcome.past_source > 0 {
        let what = match outcome.past_source_nonzero {
            None => "all zeros".to_string(),
            Some(at) => format!("not all zeros, first non-zero at offset {at}"),
        };
        out.say(format!(
            "past the end of SOURCE: {} more plaintext bytes, not compared ({what})",
            outcome.past_source
        ))?;
    }
    if let Some(h) = &outcome.compared_sha512 {
        out.say(format!(
            "compared part SHA-512 (first {} bytes): {h}",
            outcome.plaintext_len - outcome.past_source
        ))?;
    }
    Ok(())
}

/// A mapping name unique to this run, recognizably ours if ever left behind.
fn mapping_name() -> String {
    let mut r = [0u8; 4];
    // A fixed suffix is still unique enough with the pid; the RNG cannot fail in practice.
    let _ = getrandom::fill(&mut r);
    format!(
        "bifs-verify-{}-{}",
        std::process::id(),
        r.iter().map(|b| format!("{b:02x}")).collect::<String>()
    )
}
