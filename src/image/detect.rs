//! Image format detection by magic bytes.

use std::fmt;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::Path;

/// What a stored image file is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    Raw,
    Qcow2,
    Luks1,
    Luks2,
}

impl Format {
    pub fn is_luks(self) -> bool {
        matches!(self, Format::Luks1 | Format::Luks2)
    }

    /// Detects the format from the first bytes of an image.
    pub fn from_magic(head: &[u8]) -> Format {
        if head.len() >= 8 && &head[..6] == b"LUKS\xba\xbe" {
            match u16::from_be_bytes([head[6], head[7]]) {
                1 => return Format::Luks1,
                2 => return Format::Luks2,
                _ => {}
            }
        }
        if head.len() >= 8 && &head[..4] == b"QFI\xfb" {
            let version = u32::from_be_bytes([head[4], head[5], head[6], head[7]]);
            if version == 2 || version == 3 {
                return Format::Qcow2;
            }
        }
        Format::Raw
    }
}

impl fmt::Display for Format {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Format::Raw => "raw",
            Format::Qcow2 => "qcow2",
            Format::Luks1 => "luks1",
            Format::Luks2 => "luks2",
        })
    }
}

/// Detects the format of the file at `path`.
pub fn detect(path: &Path) -> io::Result<Format> {
    detect_file(&super::open_image_file(path)?)
}

/// Detects the format of an open file from its first bytes.
pub fn detect_file(file: &std::fs::File) -> io::Result<Format> {
    let mut head = [0u8; 8];
    let mut n = 0;
    while n < head.len() {
        match file.read_at(&mut head[n..], n as u64)? {
            0 => break,
            k => n += k,
        }
    }
    Ok(Format::from_magic(&head[..n]))
}
