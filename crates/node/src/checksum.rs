//! The one SHA-512 reader: the checksum of a view or of a stored file, lower-case hex as
//! Longhorn writes checksums. (The copier hashes what it writes, in the same pass, instead.)

use std::io;
use std::path::Path;

use bifs_core::image::raw::RawFile;
use bifs_core::io::{read_full_at, ReadAt};
use bifs_sys::sha512::Sha512;

/// Bytes read per step: large enough that libcrypto's SHA-512 sets the pace.
const STEP: usize = 4 << 20;

/// SHA-512 of all of `src`; `on_read` is told each step's byte count (metrics, progress).
pub fn sha512_hex(src: &dyn ReadAt, mut on_read: impl FnMut(u64)) -> io::Result<String> {
    let mut h = Sha512::new().map_err(io::Error::other)?;
    let mut buf = vec![0u8; STEP];
    let len = src.len();
    let mut off = 0;
    while off < len {
        let n = (len - off).min(STEP as u64) as usize;
        read_full_at(src, off, &mut buf[..n])?;
        h.update(&buf[..n]).map_err(io::Error::other)?;
        off += n as u64;
        on_read(n as u64);
    }
    Ok(hex::encode(h.finish().map_err(io::Error::other)?))
}

/// SHA-512 of the file at `path` (opened as an image file: never a FIFO or a device).
pub fn sha512_file(path: &Path) -> io::Result<String> {
    sha512_hex(&RawFile::open(path)?, |_| {})
}

#[cfg(test)]
mod tests {
    use super::*;
    use bifs_core::io::MemSource;
    use sha2::Digest;

    #[test]
    fn matches_sha2_across_steps() {
        let data: Vec<u8> = (0..STEP * 2 + 12345)
            .map(|i| (i * 31 % 251) as u8)
            .collect();
        let mut seen = 0;
        let got = sha512_hex(&MemSource(data.clone()), |n| seen += n).unwrap();
        assert_eq!(got, hex::encode(sha2::Sha512::digest(&data)));
        assert_eq!(seen, data.len() as u64);
        assert_eq!(
            sha512_hex(&MemSource(Vec::new()), |_| {}).unwrap(),
            hex::encode(sha2::Sha512::digest(b""))
        );
    }
}
