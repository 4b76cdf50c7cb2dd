//! What can go wrong in `bifs verify`, by kind: libcryptsetup refusing, our engine disagreeing
//! with it, a geometry that cannot be read, something verify does not handle, device-mapper.

use std::fmt;
use std::io;
use std::path::PathBuf;

use libcryptsetup_rs::consts::vals::EncryptionFormat;

use bifs_core::image;
use bifs_core::luks::LuksError;

use super::plain;

#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    #[error("libcryptsetup {op} failed: {}", .message.as_deref().map_or_else(|| .source.to_string(), |m| format!("{m} ({})", .source)))]
    Libcryptsetup {
        op: &'static str,
        /// libcryptsetup's own last error message, when it logged one.
        message: Option<String>,
        #[source]
        source: libcryptsetup_rs::LibcryptErr,
    },
    #[error("libcryptsetup does not recognize a LUKS header{}", .message.as_deref().map(|m| format!(": {m}")).unwrap_or_default())]
    NotLuks { message: Option<String> },
    #[error(
        "wrong passphrase: no keyslot opens with the Secret's CRYPTO_KEY_VALUE (libcryptsetup)"
    )]
    WrongPassphrase,
    #[error("bifs's LUKS engine cannot open the image that libcryptsetup opened: {0}")]
    EngineFailed(#[source] LuksError),
    #[error("bifs's LUKS engine unlocked a different volume key than libcryptsetup")]
    KeyMismatch,
    #[error("bifs's LUKS engine and libcryptsetup disagree on the data segment: {}", Joined(.0))]
    GeometryMismatch(Vec<GeometryDiff>),
    #[error("data segment geometry: {0}")]
    Geometry(#[from] GeometryError),
    #[error("unsupported by verify: {0}")]
    Unsupported(#[from] Unsupported),
    #[error("device-mapper: {0}")]
    DeviceMapper(#[from] DeviceMapperError),
    #[error("{what}: {source}")]
    Io {
        what: IoStep,
        #[source]
        source: io::Error,
    },
    #[error(transparent)]
    OpenSource(#[from] image::OpenError),
    #[error("libcryptsetup's volume key: {0}")]
    XtsKey(#[from] plain::XtsKeyError),
    #[error("interrupted")]
    Interrupted,
}

/// One value of the data segment's geometry on which bifs's engine (`ours`) and libcryptsetup
/// (`theirs`) differ.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GeometryDiff {
    DataOffset {
        ours: u64,
        theirs: u64,
    },
    SectorSize {
        ours: usize,
        theirs: usize,
    },
    IvOffset {
        ours: u64,
        theirs: u64,
    },
    /// `None`: the segment runs to the end of the device ("dynamic").
    SegmentSize {
        ours: Option<u64>,
        theirs: Option<u64>,
    },
}

impl fmt::Display for GeometryDiff {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            GeometryDiff::DataOffset { ours, theirs } => {
                write!(f, "data offset {ours} vs libcryptsetup's {theirs}")
            }
            GeometryDiff::SectorSize { ours, theirs } => {
                write!(f, "sector size {ours} vs libcryptsetup's {theirs}")
            }
            GeometryDiff::IvOffset { ours, theirs } => {
                write!(f, "IV offset {ours} vs libcryptsetup's {theirs}")
            }
            GeometryDiff::SegmentSize { ours, theirs } => {
                write!(f, "segment size {ours:?} vs libcryptsetup's {theirs:?}")
            }
        }
    }
}

/// The differences as one `; `-separated list.
struct Joined<'a>(&'a [GeometryDiff]);

impl fmt::Display for Joined<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, d) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("; ")?;
            }
            write!(f, "{d}")?;
        }
        Ok(())
    }
}

/// What libcryptsetup reports of the data segment that cannot be a segment verify reads.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum GeometryError {
    #[error("the data segment at {data_offset} starts past the end of the {image_len}-byte image")]
    StartsPastEnd { data_offset: u64, image_len: u64 },
    #[error("the {size}-byte data segment at {data_offset} runs past the end of the {image_len}-byte image")]
    RunsPastEnd {
        size: u64,
        data_offset: u64,
        image_len: u64,
    },
    #[error("negative volume key size")]
    NegativeKeySize,
    #[error("libcryptsetup reports no valid sector size")]
    SectorSize,
    #[error("libcryptsetup's JSON has no segments")]
    NoSegments,
    #[error("libcryptsetup's JSON has no segment 0")]
    NoSegmentZero,
    #[error("segment size {0:?} is not a number")]
    SegmentSizeNotNumber(String),
    #[error("segment 0 has no size")]
    NoSegmentSize,
    #[error("keyslot {0}")]
    Keyslot(i64),
}

/// A valid LUKS image that verify does not read.
#[derive(Debug, thiserror::Error)]
pub enum Unsupported {
    #[error("{0:?} devices")]
    DeviceType(EncryptionFormat),
    #[error("{0} data segments (a reencryption in progress?)")]
    SegmentCount(usize),
    #[error("cipher {0} on the XTS path (only aes-xts-plain64)")]
    XtsCipher(String),
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DeviceMapperError {
    #[error("not available here (no device-mapper in this kernel, or not root)")]
    NotAvailable,
    #[error("{} did not appear after activation", .0.display())]
    NodeMissing(PathBuf),
    #[error("deactivation failed")]
    DeactivationFailed,
}

/// What verify was doing when an I/O error struck.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IoStep {
    Opening(PathBuf),
    WritingReport,
    ReadingPlaintext { offset: u64 },
    ReadingSource { offset: u64 },
}

impl fmt::Display for IoStep {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            IoStep::Opening(path) => write!(f, "opening {}", path.display()),
            IoStep::WritingReport => f.write_str("writing the report"),
            IoStep::ReadingPlaintext { offset } => {
                write!(f, "reading plaintext at offset {offset}")
            }
            IoStep::ReadingSource { offset } => write!(f, "reading SOURCE at offset {offset}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn geometry_mismatch_lists_each_difference() {
        let e = VerifyError::GeometryMismatch(vec![
            GeometryDiff::DataOffset {
                ours: 16_777_216,
                theirs: 4096,
            },
            GeometryDiff::SegmentSize {
                ours: None,
                theirs: Some(512),
            },
        ]);
        assert_eq!(
            e.to_string(),
            "bifs's LUKS engine and libcryptsetup disagree on the data segment: data offset 16777216 vs libcryptsetup's 4096; segment size None vs libcryptsetup's Some(512)"
        );
    }

    #[test]
    fn messages_keep_their_context() {
        let e = VerifyError::from(GeometryError::StartsPastEnd {
            data_offset: 8192,
            image_len: 4096,
        });
        assert_eq!(
            e.to_string(),
            "data segment geometry: the data segment at 8192 starts past the end of the 4096-byte image"
        );
        let e = VerifyError::from(DeviceMapperError::NotAvailable);
        assert_eq!(
            e.to_string(),
            "device-mapper: not available here (no device-mapper in this kernel, or not root)"
        );
    }
}
