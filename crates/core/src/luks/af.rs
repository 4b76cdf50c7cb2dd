//! The anti-forensic splitter (LUKS "AF", Fruhwirth): a key is stored as `stripes` blocks, all
//! of which are needed to recover it, so wiping any part of a keyslot destroys the key.

use zeroize::Zeroizing;

use crate::kdf::Hash;

/// Diffuses `buf` in place: each hash-sized chunk `j` becomes `H(be32(j) || chunk)`, the
/// last chunk truncated to its length.
fn diffuse(hash: Hash, buf: &mut [u8]) {
    for (j, chunk) in buf.chunks_mut(hash.output_len()).enumerate() {
        let h = Zeroizing::new(hash.digest(&[&(j as u32).to_be_bytes(), chunk]));
        chunk.copy_from_slice(&h[..chunk.len()]);
    }
}

fn xor_into(dst: &mut [u8], src: &[u8]) {
    for (d, s) in dst.iter_mut().zip(src) {
        *d ^= s;
    }
}

/// Splits `key` into `stripes` stripes. `random` supplies the first `stripes - 1` stripes'
/// bytes (from the CSPRNG in production; fixed in tests).
pub fn split(
    key: &[u8],
    stripes: usize,
    hash: Hash,
    random: impl FnOnce(&mut [u8]),
) -> Zeroizing<Vec<u8>> {
    let n = key.len();
    let mut out = Zeroizing::new(vec![0u8; n * stripes]);
    let (head, last) = out.split_at_mut(n * (stripes - 1));
    random(head);
    let mut acc = Zeroizing::new(vec![0u8; n]);
    for stripe in head.chunks(n) {
        xor_into(&mut acc, stripe);
        diffuse(hash, &mut acc);
    }
    last.copy_from_slice(key);
    xor_into(last, &acc);
    out
}

/// Recovers the key from `material` (`key_len * stripes` bytes).
pub fn merge(material: &[u8], key_len: usize, stripes: usize, hash: Hash) -> Zeroizing<Vec<u8>> {
    let mut acc = Zeroizing::new(vec![0u8; key_len]);
    for stripe in material[..key_len * (stripes - 1)].chunks(key_len) {
        xor_into(&mut acc, stripe);
        diffuse(hash, &mut acc);
    }
    xor_into(
        &mut acc,
        &material[key_len * (stripes - 1)..key_len * stripes],
    );
    acc
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_merge_round_trip() {
        for (key_len, hash) in [(32, Hash::Sha256), (64, Hash::Sha512), (64, Hash::Sha1)] {
            let key: Vec<u8> = (0..key_len as u8).collect();
            let mut seed = 7u8;
            let material = split(&key, 4000, hash, |b| {
                b.iter_mut().for_each(|x| {
                    seed = seed.wrapping_mul(31).wrapping_add(17);
                    *x = seed
                })
            });
            assert_eq!(material.len(), key_len * 4000);
            assert_eq!(&merge(&material, key_len, 4000, hash)[..], &key[..]);
            // Any damaged stripe destroys the key.
            let mut damaged = material.clone();
            damaged[key_len * 10] ^= 1;
            assert_ne!(&merge(&damaged, key_len, 4000, hash)[..], &key[..]);
        }
    }

    /// A diffusion over a chunk shorter than the hash (sha512 over 32 bytes) truncates.
    #[test]
    fn diffuse_truncates_short_chunks() {
        let mut buf = [1u8; 40];
        diffuse(Hash::Sha256, &mut buf);
        let first = Hash::Sha256.digest(&[&0u32.to_be_bytes(), &[1u8; 32]]);
        let second = Hash::Sha256.digest(&[&1u32.to_be_bytes(), &[1u8; 8]]);
        assert_eq!(&buf[..32], &first[..]);
        assert_eq!(&buf[32..], &second[..8]);
    }
}
