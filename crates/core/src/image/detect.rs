//! Image format detection by magic bytes.

use std::fmt;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::Path;

use crate::luks::binary::{HDR_SIZES, MAGIC_PRIMARY, MAGIC_SECONDARY};

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

    /// Detects the format from the first bytes of an image. A LUKS magic with any version
    /// is LUKS: cryptsetup takes version 1 as LUKS1 and every other as LUKS2 (or refuses it),
    /// never as plain data. [`detect`] also finds LUKS2 images whose primary header is gone.
    pub fn from_magic(head: &[u8]) -> Format {
        if head.len() >= 8 && &head[..6] == MAGIC_PRIMARY {
            return match u16::from_be_bytes([head[6], head[7]]) {
                1 => Format::Luks1,
                _ => Format::Luks2,
            };
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

/// Reads up to 8 bytes at `offset`; fewer at the end of the file.
fn read_head(file: &std::fs::File, offset: u64) -> io::Result<Vec<u8>> {
    let mut head = [0u8; 8];
    let mut n = 0;
    while n < head.len() {
        match file.read_at(&mut head[n..], offset + n as u64)? {
            0 => break,
            k => n += k,
        }
    }
    Ok(head[..n].to_vec())
}

/// Detects the format of the file at `path`. Like cryptsetup, an image without a primary
/// LUKS header but with a secondary LUKS2 header at any of the offsets where one may sit
/// (16 KiB to 4 MiB) is LUKS2: its header is recovered from that copy or refused, and the
/// image is never taken for plain data (to be encrypted a second time).
pub fn detect(path: &Path) -> io::Result<Format> {
    detect_file(&super::open_image_file(path)?)
}

/// [`detect`] on an open file (the descriptor a view then reads, so both see one inode).
pub fn detect_file(file: &std::fs::File) -> io::Result<Format> {
    let format = Format::from_magic(&read_head(file, 0)?);
    if format != Format::Raw {
        return Ok(format);
    }
    for offset in HDR_SIZES {
        if read_head(file, offset)?.starts_with(MAGIC_SECONDARY) {
            return Ok(Format::Luks2);
        }
    }
    Ok(Format::Raw)
}
