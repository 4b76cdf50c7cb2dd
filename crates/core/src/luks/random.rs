//! Where the "random" bytes of a new LUKS2 header come from: the OS (what `cryptsetup
//! luksFormat` does, and what `bifs encrypt`, `rekey` and apply use), or a keyed ChaCha20 stream
//! (the stable encrypt views: see [`crate::view::stable`]). Formatting draws every such value
//! through [`Randomness`], in one fixed order, so that a seeded stream gives the same header
//! every time.

use chacha20::cipher::{KeyIvInit, StreamCipher};
use chacha20::ChaCha20;
use zeroize::Zeroizing;

use super::LuksError;

/// A source of the bytes a new header needs (volume key, salts, AF stripes, UUID, the
/// keyslots area's fill).
pub trait Randomness {
    fn fill(&mut self, buf: &mut [u8]) -> Result<(), LuksError>;
}

/// The OS CSPRNG (`getrandom`).
pub struct OsRandom;

impl Randomness for OsRandom {
    fn fill(&mut self, buf: &mut [u8]) -> Result<(), LuksError> {
        getrandom::fill(buf).map_err(LuksError::Random)
    }
}

/// The ChaCha20 keystream (RFC 8439, 96-bit zero nonce, counter from 0) under a 256-bit key:
/// every byte drawn is the next keystream byte. One key must seed one header only (the caller
/// derives it per header).
pub struct KeyStream {
    cipher: ChaCha20,
    /// Bytes drawn so far: a stream never runs past ChaCha20's 256 GiB (it would repeat).
    drawn: u64,
}

/// ChaCha20 with a 32-bit block counter: 2^32 blocks of 64 bytes.
const STREAM_LIMIT: u64 = 1 << 38;

impl KeyStream {
    pub fn new(key: &Zeroizing<[u8; 32]>) -> Self {
        let nonce = [0u8; 12];
        Self {
            cipher: ChaCha20::new(&(**key).into(), &nonce.into()),
            drawn: 0,
        }
    }
}

impl Randomness for KeyStream {
    fn fill(&mut self, buf: &mut [u8]) -> Result<(), LuksError> {
        let n = buf.len() as u64;
        if self.drawn.saturating_add(n) > STREAM_LIMIT {
            return Err(LuksError::StreamExhausted);
        }
        self.drawn += n;
        buf.fill(0);
        self.cipher.apply_keystream(buf);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// RFC 8439 2.4.2's key with a zero nonce: the stream is ChaCha20's keystream, and draws
    /// of any sizes concatenate to the same bytes.
    #[test]
    fn keystream_is_chacha20_and_draws_concatenate() {
        let key = Zeroizing::new(std::array::from_fn::<u8, 32, _>(|i| i as u8));
        let mut whole = vec![0u8; 300];
        KeyStream::new(&key).fill(&mut whole).unwrap();
        let mut parts = vec![0u8; 300];
        let mut s = KeyStream::new(&key);
        let (a, rest) = parts.split_at_mut(7);
        s.fill(a).unwrap();
        let (b, c) = rest.split_at_mut(100);
        s.fill(b).unwrap();
        s.fill(c).unwrap();
        assert_eq!(whole, parts);
        // RFC 8439 A.1 test vector 1: all-zero key and nonce, block 0.
        let mut z = [0u8; 16];
        KeyStream::new(&Zeroizing::new([0u8; 32]))
            .fill(&mut z)
            .unwrap();
        assert_eq!(hex::encode(z), "76b8e0ada0f13d90405d6ae55386bd28");
    }
}
