//! Streaming comparison of a plaintext with a source, hashing the plaintext as it goes.
//! Memory is bounded by one chunk of each, whatever the image size.

use std::sync::atomic::{AtomicBool, Ordering};

use sha2::{Digest, Sha512};

use super::plain::Plaintext;
use super::{IoStep, VerifyError};
use bifs_core::io::{read_full_at, ReadAt};

/// Bytes per read: a multiple of every sector size, large enough to stream.
const CHUNK: usize = 4 * 1024 * 1024;

/// Why the plaintext and the source differ, at [`Mismatch::offset`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MismatchKind {
    /// A byte differs.
    Content,
    /// The source goes on past the end of the plaintext.
    SourceLonger { source_len: u64 },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mismatch {
    /// Offset in the plaintext (the data segment's decrypted bytes) of the first difference.
    pub offset: u64,
    pub kind: MismatchKind,
}

impl std::fmt::Display for Mismatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.kind {
            MismatchKind::Content => {
                write!(f, "plaintext differs from SOURCE at offset {}", self.offset)
            }
            MismatchKind::SourceLonger { source_len } => write!(
                f,
                "SOURCE ({source_len} bytes) is longer than the plaintext: it ends at offset {}",
                self.offset
            ),
        }
    }
}

#[derive(Debug, Clone)]
pub struct Outcome {
    pub plaintext_len: u64,
    /// Lowercase hex SHA-512 of all `plaintext_len` bytes.
    pub sha512: String,
    pub mismatch: Option<Mismatch>,
    /// Plaintext bytes past the source's end. They are not compared: a data segment may be
    /// longer than its source for good reasons (zero padding to a whole sector; a volume grown
    /// past its backing image; `cryptsetup reencrypt --reduce-device-size`, whose segment ends
    /// with bytes that were never plaintext). Only reported.
    pub past_source: u64,
    /// The first non-zero plaintext offset past the source's end, if any.
    pub past_source_nonzero: Option<u64>,
    /// SHA-512 of the compared part (the plaintext's first `source_len` bytes), when the
    /// plaintext is longer than the source; it then equals the source's own SHA-512.
    pub compared_sha512: Option<String>,
}

fn first_difference(a: &[u8], b: &[u8]) -> Option<usize> {
    a.iter().zip(b).position(|(x, y)| x != y)
}

/// Reads all of `plain`, hashing it, and compares its first `source.len()` bytes with `source`
/// when given. The comparison stops at the first difference; hashing goes on so the digest is
/// of the whole plaintext.
pub fn run(
    plain: &dyn Plaintext,
    source: Option<&dyn ReadAt>,
    cancel: &AtomicBool,
) -> Result<Outcome, VerifyError> {
    let len = plain.size();
    let source_len = source.map(|s| s.len());
    let mut hasher = Sha512::new();
    // A second digest of just the compared prefix, when the plaintext runs past the source.
    let mut prefix_hasher = source_len.filter(|&s| s < len).map(|_| Sha512::new());
    let mut buf = vec![0u8; CHUNK];
    let mut theirs = vec![0u8; if source.is_some() { CHUNK } else { 0 }];
    let mut mismatch = None;
    let mut past_source_nonzero = None;
    let mut pos = 0u64;
    while pos < len {
        if cancel.load(Ordering::Relaxed) {
            return Err(VerifyError::Interrupted);
        }
        let n = usize::try_from(len - pos).map_or(CHUNK, |rest| rest.min(CHUNK));
        let ours = &mut buf[..n];
        plain.read_chunk(pos, ours).map_err(|e| VerifyError::Io {
            what: IoStep::ReadingPlaintext { offset: pos },
            source: e,
        })?;
        hasher.update(&*ours);
        if let (Some(src), Some(src_len)) = (source, source_len) {
            // The part of this chunk the source covers is compared; the rest only looked at.
            let covered = usize::try_from(src_len.saturating_sub(pos)).map_or(n, |c| c.min(n));
            if let Some(h) = prefix_hasher.as_mut() {
                h.update(&ours[..covered]);
            }
            if covered > 0 && mismatch.is_none() {
                let theirs = &mut theirs[..covered];
                read_full_at(src, pos, theirs).map_err(|e| VerifyError::Io {
                    what: IoStep::ReadingSource { offset: pos },
                    source: e,
                })?;
                if let Some(i) = first_difference(&ours[..covered], theirs) {
                    mismatch = Some(Mismatch {
                        offset: pos + i as u64,
                        kind: MismatchKind::Content,
                    });
                }
            }
            if past_source_nonzero.is_none() {
                if let Some(i) = ours[covered..].iter().position(|&b| b != 0) {
                    past_source_nonzero = Some(pos + (covered + i) as u64);
                }
            }
        }
        pos += n as u64;
    }
    if let (Some(src_len), None) = (source_len, &mismatch) {
        if src_len > len {
            mismatch = Some(Mismatch {
                offset: len,
                kind: MismatchKind::SourceLonger {
                    source_len: src_len,
                },
            });
        }
    }
    Ok(Outcome {
        plaintext_len: len,
        sha512: hex::encode(hasher.finalize()),
        mismatch,
        past_source: source_len.map_or(0, |s| len.saturating_sub(s)),
        past_source_nonzero,
        compared_sha512: prefix_hasher.map(|h| hex::encode(h.finalize())),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use bifs_core::io::MemSource;
    use std::io;

    struct Mem(Vec<u8>);
    impl Plaintext for Mem {
        fn size(&self) -> u64 {
            self.0.len() as u64
        }
        fn read_chunk(&self, pos: u64, buf: &mut [u8]) -> io::Result<()> {
            let p = pos as usize;
            buf.copy_from_slice(&self.0[p..p + buf.len()]);
            Ok(())
        }
    }

    fn go(plain: Vec<u8>, src: Vec<u8>) -> Outcome {
        run(&Mem(plain), Some(&MemSource(src)), &AtomicBool::new(false)).expect("compare")
    }

    #[test]
    fn equal_and_hash() {
        let data: Vec<u8> = (0..CHUNK * 2 + 512).map(|i| (i * 7) as u8).collect();
        let out = go(data.clone(), data.clone());
        assert_eq!(out.mismatch, None);
        assert_eq!(out.sha512, hex::encode(Sha512::digest(&data)));
        assert_eq!(out.compared_sha512, None);
    }

    #[test]
    fn first_difference_in_a_later_chunk() {
        let data = vec![5u8; CHUNK * 2 + 512];
        let mut other = data.clone();
        other[CHUNK + 77] ^= 1;
        other[CHUNK + 900] ^= 1;
        let out = go(data, other);
        assert_eq!(
            out.mismatch,
            Some(Mismatch {
                offset: CHUNK as u64 + 77,
                kind: MismatchKind::Content
            })
        );
    }

    #[test]
    fn plaintext_past_source_is_reported_not_compared() {
        let mut plain = vec![9u8; 4096];
        plain[1000..].fill(0);
        let out = go(plain.clone(), vec![9u8; 1000]);
        assert_eq!(
            (out.mismatch, out.past_source, out.past_source_nonzero),
            (None, 3096, None)
        );
        assert_eq!(
            out.compared_sha512,
            Some(hex::encode(Sha512::digest([9u8; 1000])))
        );
        plain[3000] = 1;
        let out = go(plain, vec![9u8; 1000]);
        assert_eq!((out.mismatch, out.past_source_nonzero), (None, Some(3000)));
    }

    #[test]
    fn longer_source_is_a_mismatch() {
        let m = go(vec![1u8; 512], vec![1u8; 1024])
            .mismatch
            .expect("mismatch");
        assert_eq!(
            m,
            Mismatch {
                offset: 512,
                kind: MismatchKind::SourceLonger { source_len: 1024 }
            }
        );
    }
}
