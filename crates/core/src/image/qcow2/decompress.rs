//! Compressed clusters: each decompresses to exactly one cluster.
//!
//! zstd goes through `ruzstd` rather than the `zstd` crate: it is pure Rust, so a hostile
//! image meets a memory-safe decoder (the rustls model), and CI needs no C toolchain for
//! libzstd. It is slower than libzstd, but a cluster is at most 2 MiB and the cost is small next
//! to the I/O a FUSE read does. Deflate goes through `flate2`'s pure-Rust backend.

use std::io::Read;

/// qemu compresses one cluster (at most 2 MiB) per frame, so its windows are small. The cap
/// keeps a hostile frame from making the decoder buffer more; 8 MiB is zstd's recommended
/// minimum for decoders.
const MAX_ZSTD_WINDOW: u64 = 8 << 20;

#[derive(Debug, thiserror::Error)]
pub enum DecompressError {
    #[error("deflate: {0}")]
    Deflate(String),
    #[error("zstd: {0}")]
    Zstd(String),
    #[error("decompressed to {got} bytes, expected a whole cluster of {want}")]
    Short { got: u64, want: u64 },
}

/// Raw deflate (no zlib header), as qemu writes it. Like qemu, data after the stream's end, or
/// a stream that goes on past one cluster, is ignored once the cluster is full.
pub fn inflate(input: &[u8], out: &mut [u8]) -> Result<(), DecompressError> {
    let mut inflater = flate2::Decompress::new(false);
    inflater
        .decompress(input, out, flate2::FlushDecompress::Finish)
        .map_err(|e| DecompressError::Deflate(e.to_string()))?;
    match inflater.total_out() {
        got if got == out.len() as u64 => Ok(()),
        got => Err(DecompressError::Short {
            got,
            want: out.len() as u64,
        }),
    }
}

/// One zstd frame; the bytes after it are padding up to the next 512-byte sector.
pub fn unzstd(mut input: &[u8], out: &mut [u8]) -> Result<(), DecompressError> {
    let mut decoder =
        ruzstd::decoding::StreamingDecoder::new_with_max_window_size(&mut input, MAX_ZSTD_WINDOW)
            .map_err(|e| DecompressError::Zstd(e.to_string()))?;
    let mut done = 0;
    while done < out.len() {
        match decoder.read(&mut out[done..]) {
            Ok(0) => break,
            Ok(n) => done += n,
            Err(e) => return Err(DecompressError::Zstd(e.to_string())),
        }
    }
    match done {
        got if got == out.len() => Ok(()),
        got => Err(DecompressError::Short {
            got: got as u64,
            want: out.len() as u64,
        }),
    }
}
