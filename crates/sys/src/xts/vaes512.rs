//! The whole XTS pass in 512-bit VAES registers, for CPUs with AVX-512 and VAES (Intel Ice
//! Lake and later Xeons, AMD Zen 4 and later): four blocks per instruction where
//! [`super::VaesKeys`] runs two.
//!
//! The same design as the 256-bit engine (`vaes.rs`, whose module comment says why not the
//! `aes` crate's backend): each step loads sixteen blocks, XORs in tweaks held in registers,
//! runs the rounds, and folds the second tweak XOR into the last round key; a sector is whole
//! steps (a 512-byte sector two, a 4 KiB one sixteen) with no tail and no tweak array. The
//! AES-NI key expansion is `vaes.rs`'s ([`KeyPair`]); here its round keys are broadcast to all
//! four lanes of a ZMM register, once, when keyed.
//!
//! Tweaks: a sector's first sixteen come from its encrypted IV `T`: vector `i` holds
//! `T·x^4i` to `T·x^(4i+3)` in its four lanes, each vector one shift-and-fold of `T` by
//! per-lane counts; the next step's are these times x^16, a two-byte lane shift and a
//! carry-less multiply of the bytes shifted out.
//!
//! Every `#[target_feature]` function here needs AES-NI, AVX-512F, AVX-512BW (the byte shifts
//! within lanes), VAES and VPCLMULQDQ: a [`Vaes512Keys`] is made only after
//! [`Vaes512Keys::available`] found them, and its methods check the geometry
//! ([`check_sectors`]) before they enter that code. No AVX-512VL instruction is used (the 128-
//! and 256-bit work is AES-NI and AVX2).

use core::arch::x86_64::*;

use zeroize::Zeroize;

use super::vaes::{KeyPair, Schedule, VaesKeys};
use super::{check_sectors, prefetch, GeometryError};

/// Tweak vectors (four blocks each) in flight per step.
const VECS: usize = 4;

/// Blocks per step; sectors are a multiple of it.
const STEP_BLOCKS: usize = 4 * VECS;

// Every sector size `check_sectors` lets through is whole steps.
const _: () = assert!((super::MIN_SECTOR_SIZE / 16).is_multiple_of(STEP_BLOCKS));

vaes_engine! {
    /// An XTS key pair expanded for the 512-bit VAES engine, on a CPU that runs it: the only way to
    /// reach the engine. Zeroized on drop.
    Vaes512Keys
}

impl Vaes512Keys {
    /// Whether this CPU runs the engine: what the 256-bit engine needs
    /// ([`VaesKeys::available`]: AES-NI, AVX2, VAES found right by the probe, VPCLMULQDQ),
    /// and AVX-512F and AVX-512BW with the OS saving ZMM state (as `std`'s detection checks).
    pub fn available() -> bool {
        VaesKeys::available()
            && std::is_x86_feature_detected!("avx512f")
            && std::is_x86_feature_detected!("avx512bw")
    }
}

/// Round keys of an XTS key pair, each 128-bit key broadcast to the four lanes of a 512-bit
/// register (as [`Schedule`] has them). `RK` is 11 (AES-128) or 15 (AES-256).
struct Keys<const RK: usize> {
    enc: [__m512i; RK],
    dec: [__m512i; RK],
    tweak: [__m512i; RK],
}

impl<const RK: usize> Drop for Keys<RK> {
    fn drop(&mut self) {
        self.enc.zeroize();
        self.dec.zeroize();
        self.tweak.zeroize();
    }
}

impl<const RK: usize> Keys<RK> {
    /// Each key of `s` broadcast to the four lanes.
    ///
    /// # Safety
    /// The CPU must have AVX-512F.
    #[target_feature(enable = "avx512f")]
    unsafe fn broadcast(s: &Schedule<RK>) -> Box<Self> {
        let b = |k: &[__m128i; RK]| core::array::from_fn(|i| _mm512_broadcast_i32x4(k[i]));
        Box::new(Self {
            enc: b(&s.enc),
            dec: b(&s.dec),
            tweak: b(&s.tweak),
        })
    }
}

/// The low qword of each lane: x^7 + x^2 + x + 1, the XTS polynomial's low terms.
#[inline]
#[target_feature(enable = "avx512f")]
fn poly() -> __m512i {
    _mm512_set_epi64(0, 0x87, 0, 0x87, 0, 0x87, 0, 0x87)
}

/// `a ^ b ^ c` in one instruction.
#[inline]
#[target_feature(enable = "avx512f")]
fn xor3(a: __m512i, b: __m512i, c: __m512i) -> __m512i {
    _mm512_ternarylogic_epi64::<0x96>(a, b, c)
}

/// Each 128-bit lane times x^k, where `left` holds k (0 <= k < 57) in both qwords of the lane
/// and `right` 64 - k: shift both qwords left, carry the low qword's top bits into the high
/// one and fold the high qword's top bits back in as their carry-less product with the
/// polynomial (at most k + 7 bits, so no second reduction). A count of 64 shifts to zero.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,vpclmulqdq")]
fn mul_xv(t: __m512i, left: __m512i, right: __m512i) -> __m512i {
    let carries = _mm512_srlv_epi64(t, right);
    let folded = _mm512_clmulepi64_epi128::<0x01>(carries, poly());
    xor3(
        _mm512_sllv_epi64(t, left),
        _mm512_bslli_epi128::<8>(carries),
        folded,
    )
}

/// Each lane times x^(4 VECS) = x^16, the tweaks of the next step: a two-byte lane shift and
/// the bytes shifted out folded back in (at most 23 bits, so no second reduction).
#[inline]
#[target_feature(enable = "avx512f,avx512bw,vpclmulqdq")]
fn next_step(t: __m512i) -> __m512i {
    const { assert!(VECS == 4) };
    let out = _mm512_bsrli_epi128::<14>(t);
    _mm512_xor_si512(
        _mm512_bslli_epi128::<2>(t),
        _mm512_clmulepi64_epi128::<0x00>(out, poly()),
    )
}

/// The sector's first `4 * VECS` tweaks from its encrypted IV `t0`: lanes
/// (t0·x^4i, t0·x^(4i+1), t0·x^(4i+2), t0·x^(4i+3)) in vector `i`, each computed from `t0`
/// directly (one shift-and-fold by per-lane counts) so that they do not wait on each other: a
/// one-sector call waits for them before its first round.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,vpclmulqdq")]
fn first_tweaks(t0: __m128i) -> [__m512i; VECS] {
    let b = _mm512_broadcast_i32x4(t0);
    core::array::from_fn(|i| {
        // Lane j of vector i times x^(4i + j) (`_mm512_set_epi64` lists qwords from the top).
        let k = 4 * i as i64;
        let left = _mm512_set_epi64(k + 3, k + 3, k + 2, k + 2, k + 1, k + 1, k, k);
        let right = _mm512_sub_epi64(_mm512_set1_epi64(64), left);
        mul_xv(b, left, right)
    })
}

/// The encrypted IVs (little-endian `iv + k * step`, as plain64) of up to eight sectors.
#[inline]
#[target_feature(enable = "aes,avx2,avx512f,vaes")]
fn encrypt_ivs<const RK: usize>(keys: &Keys<RK>, iv: u64, step: u64, n: usize) -> [__m128i; 8] {
    let iv_at = |k: u64| iv.wrapping_add(k.wrapping_mul(step)) as i64;
    let k = &keys.tweak;
    if n == 1 {
        // One sector per call (openssl speed's unit): one block, not eight.
        let mut x = _mm_xor_si128(_mm_set_epi64x(0, iv_at(0)), _mm512_castsi512_si128(k[0]));
        for key in &k[1..RK - 1] {
            x = _mm_aesenc_si128(x, _mm512_castsi512_si128(*key));
        }
        x = _mm_aesenclast_si128(x, _mm512_castsi512_si128(k[RK - 1]));
        let mut out = [_mm_setzero_si128(); 8];
        out[0] = x;
        return out;
    }
    let mut x: [__m512i; 2] = core::array::from_fn(|q| {
        let p = 4 * q as u64;
        let ivs = _mm512_set_epi64(
            0,
            iv_at(p + 3),
            0,
            iv_at(p + 2),
            0,
            iv_at(p + 1),
            0,
            iv_at(p),
        );
        _mm512_xor_si512(ivs, k[0])
    });
    for key in &k[1..RK - 1] {
        for v in &mut x {
            *v = _mm512_aesenc_epi128(*v, *key);
        }
    }
    for v in &mut x {
        *v = _mm512_aesenclast_epi128(*v, k[RK - 1]);
    }
    [
        _mm512_castsi512_si128(x[0]),
        _mm512_extracti32x4_epi32::<1>(x[0]),
        _mm512_extracti32x4_epi32::<2>(x[0]),
        _mm512_extracti32x4_epi32::<3>(x[0]),
        _mm512_castsi512_si128(x[1]),
        _mm512_extracti32x4_epi32::<1>(x[1]),
        _mm512_extracti32x4_epi32::<2>(x[1]),
        _mm512_extracti32x4_epi32::<3>(x[1]),
    ]
}

/// Ciphers `len` bytes of whole sectors from `src` into `dst` (`ENCRYPT` or decrypt); sector
/// `k` has IV `first_iv + k * iv_step`.
///
/// # Safety
/// The CPU must have AES-NI, AVX2, AVX-512F/BW, VAES and VPCLMULQDQ
/// ([`Vaes512Keys::available`]); `src` and `dst` point at `len` bytes, the same bytes (in
/// place) or ones that do not overlap; `len` is whole sectors of `sector_size` bytes, each a
/// multiple of [`STEP_BLOCKS`] blocks.
#[target_feature(enable = "aes,avx2,avx512f,avx512bw,vaes,vpclmulqdq")]
unsafe fn sectors<const RK: usize, const ENCRYPT: bool>(
    keys: &Keys<RK>,
    src: *const u8,
    dst: *mut u8,
    len: usize,
    sector_size: usize,
    first_iv: u64,
    iv_step: u64,
) {
    let count = len / sector_size;
    let steps = sector_size / (16 * STEP_BLOCKS);
    let rk = if ENCRYPT { &keys.enc } else { &keys.dec };
    let mut done = 0;
    while done < count {
        let n = (count - done).min(8);
        let iv = first_iv.wrapping_add((done as u64).wrapping_mul(iv_step));
        let firsts = encrypt_ivs(keys, iv, iv_step, n);
        for (s, t0) in firsts.iter().take(n).enumerate() {
            let at = (done + s) * sector_size;
            // SAFETY: sector `done + s` of `count` lies inside both `len`-byte buffers; it
            // holds `steps` steps; the CPU features are the caller's.
            unsafe { sector_pass::<RK, ENCRYPT>(rk, src.add(at), dst.add(at), steps, *t0) };
        }
        done += n;
    }
}

/// One sector of `steps * STEP_BLOCKS` blocks from `src` into `dst`, whose first tweak is `t0`.
///
/// # Safety
/// As [`sectors`]; `src` and `dst` (the same, or not overlapping) point at
/// `steps * STEP_BLOCKS * 16` bytes.
#[inline]
#[target_feature(enable = "aes,avx2,avx512f,avx512bw,vaes,vpclmulqdq")]
unsafe fn sector_pass<const RK: usize, const ENCRYPT: bool>(
    rk: &[__m512i; RK],
    src: *const u8,
    dst: *mut u8,
    steps: usize,
    t0: __m128i,
) {
    let mut t = first_tweaks(t0);
    let (src, dst) = (src.cast::<__m512i>(), dst.cast::<__m512i>());
    for step in 0..steps {
        if step > 0 {
            for tw in &mut t {
                *tw = next_step(*tw);
            }
        }
        // SAFETY: step `step` of `steps` is VECS vectors inside the sector, in both buffers.
        let (from, to) = unsafe { (src.add(step * VECS), dst.add(step * VECS)) };
        prefetch::<{ VECS * 64 }>(from.cast());
        let mut x: [__m512i; VECS] = core::array::from_fn(|i| {
            // SAFETY: as above; an unaligned load.
            let d = unsafe { _mm512_loadu_si512(from.add(i)) };
            xor3(d, t[i], rk[0])
        });
        for key in &rk[1..RK - 1] {
            for b in &mut x {
                *b = if ENCRYPT {
                    _mm512_aesenc_epi128(*b, *key)
                } else {
                    _mm512_aesdec_epi128(*b, *key)
                };
            }
        }
        for (i, b) in x.iter().enumerate() {
            // The last round's key XOR takes the tweak XOR with it.
            let last = _mm512_xor_si512(rk[RK - 1], t[i]);
            let out = if ENCRYPT {
                _mm512_aesenclast_epi128(*b, last)
            } else {
                _mm512_aesdeclast_epi128(*b, last)
            };
            // SAFETY: as above; an unaligned store.
            unsafe { _mm512_storeu_si512(to.add(i), out) };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn engine() -> bool {
        let ok = Vaes512Keys::available();
        if !ok {
            eprintln!(
                "SKIPPED a VAES-512 engine test: this CPU has no (working) VAES, VPCLMULQDQ, \
                 AVX-512F or AVX-512BW"
            );
        }
        ok
    }

    /// The tweak fan-out and step against XTS's definition (one multiplication by alpha per
    /// block), from first tweaks with and without their top bits set.
    #[test]
    fn tweaks_match_the_serial_definition() {
        if !engine() {
            return;
        }
        let firsts = super::super::tests::firsts(6);
        let steps = 4096 / (16 * STEP_BLOCKS);
        for f in &firsts {
            let want = super::super::tests::serial_tweaks(&[*f], 4096 / 16);
            let mut got = Vec::new();
            // SAFETY: `engine()` found the features; 16-byte loads and stores of locals.
            unsafe {
                let mut t = first_tweaks(_mm_loadu_si128(f.as_ptr().cast()));
                for step in 0..steps {
                    if step > 0 {
                        for tw in &mut t {
                            *tw = next_step(*tw);
                        }
                    }
                    for v in t {
                        let mut lanes = [0u8; 64];
                        _mm512_storeu_si512(lanes.as_mut_ptr().cast(), v);
                        got.extend(
                            lanes
                                .chunks_exact(16)
                                .map(|l| u128::from_le_bytes(l.try_into().unwrap())),
                        );
                    }
                }
            }
            assert_eq!(got, want);
        }
    }

    /// IEEE 1619-2007 vectors 4 (XTS-AES-128, data unit 0) and 10 (XTS-AES-256, data unit
    /// 0xff): the first and last 32 bytes of the 512-byte ciphertext of 0, 1, …, 255, 0, …, 255.
    #[test]
    fn ieee1619_vectors() {
        if !engine() {
            return;
        }
        let vectors = [
            (
                "2718281828459045235360287471352631415926535897932384626433832795",
                0u64,
                "27a7479befa1d476489f308cd4cfa6e2a96e4bbe3208ff25287dd3819616e89c",
                "eb4a427d1923ce3ff262735779a418f20a282df920147beabe421ee5319d0568",
            ),
            (
                concat!(
                    "2718281828459045235360287471352662497757247093699959574966967627",
                    "3141592653589793238462643383279502884197169399375105820974944592"
                ),
                0xff,
                "1c3b3a102f770386e4836c99e370cf9bea00803f5e482357a4ae12d414a3e63b",
                "773dad38014bd2092fa755c824bb5e54c4f36ffda9fcea70b9c6e693e148c151",
            ),
        ];
        for (key, unit, head, tail) in vectors {
            let key = hex::decode(key).unwrap();
            let (d, t) = key.split_at(key.len() / 2);
            let keys = Vaes512Keys::new(d, t).unwrap();
            let plain: Vec<u8> = (0..512).map(|i| i as u8).collect();
            let mut buf = plain.clone();
            keys.encrypt_sectors(&mut buf, 512, unit, 1).unwrap();
            assert_eq!(hex::encode(&buf[..32]), head);
            assert_eq!(hex::encode(&buf[480..]), tail);
            keys.decrypt_sectors(&mut buf, 512, unit, 1).unwrap();
            assert_eq!(buf, plain);
        }
    }

    /// Byte for byte what the 256-bit engine gives: both key sizes, both directions, every
    /// sector size, IV steps of 1 and of the sector size in 512-byte units, IVs that wrap
    /// around, one call over many sectors (IVs encrypted eight at a time) and one per sector.
    #[test]
    fn matches_the_256_bit_engine() {
        if !engine() {
            return;
        }
        let key: Vec<u8> = (0..64u8).map(|i| i.wrapping_mul(29) ^ 0x5c).collect();
        for key_len in [32, 64] {
            let (d, t) = key[..key_len].split_at(key_len / 2);
            let wide = Vaes512Keys::new(d, t).unwrap();
            let narrow = VaesKeys::new(d, t).unwrap();
            for sector_size in [512usize, 1024, 2048, 4096] {
                for step in [1, (sector_size / 512) as u64] {
                    for first_iv in [12345u64, u64::MAX - 5] {
                        let count = 19;
                        let plain: Vec<u8> = (0..count * sector_size)
                            .map(|i| (i * 7 + i / 251) as u8)
                            .collect();
                        let mut ours = plain.clone();
                        wide.encrypt_sectors(&mut ours, sector_size, first_iv, step)
                            .unwrap();
                        let mut theirs = plain.clone();
                        narrow
                            .encrypt_sectors(&mut theirs, sector_size, first_iv, step)
                            .unwrap();
                        let what = format!("{key_len}-byte key, {sector_size}-byte sectors");
                        assert!(ours == theirs, "{what}: encrypt");
                        assert!(ours != plain);
                        let mut each = plain.clone();
                        for (k, s) in each.chunks_mut(sector_size).enumerate() {
                            let iv = first_iv.wrapping_add(k as u64 * step);
                            wide.encrypt_sectors(s, sector_size, iv, step).unwrap();
                        }
                        assert!(each == theirs, "{what}: sector by sector");
                        wide.decrypt_sectors(&mut ours, sector_size, first_iv, step)
                            .unwrap();
                        assert!(ours == plain, "{what}: round trip");
                        narrow
                            .decrypt_sectors(&mut each, sector_size, first_iv, step)
                            .unwrap();
                        assert!(each == plain, "{what}: decrypted by the 256-bit engine");
                    }
                }
            }
        }
    }

    /// Keys that are not two AES-128 or two AES-256 keys, and buffers that are not whole
    /// sectors of a power of two from 512 to 4096 bytes, are refused (the data untouched).
    #[test]
    fn refuses_bad_keys_and_geometry() {
        for (d, t) in [(16, 32), (32, 16), (24, 24), (0, 0), (64, 64)] {
            assert!(Vaes512Keys::new(&vec![1; d], &vec![2; t]).is_none());
        }
        if !engine() {
            return;
        }
        let keys = Vaes512Keys::new(&[1; 32], &[2; 32]).unwrap();
        assert_eq!(
            format!("{keys:?}"),
            "Vaes512Keys { aes_bits: 256, .. }",
            "Debug shows no key"
        );
        let mut buf = vec![7u8; 8192];
        assert_eq!(
            keys.encrypt_sectors(&mut buf[..1000], 512, 0, 1),
            Err(GeometryError::Unaligned {
                len: 1000,
                sector_size: 512
            })
        );
        for bad in [0, 16, 256, 1000, 8192] {
            assert_eq!(
                keys.decrypt_sectors(&mut buf, bad, 0, 1),
                Err(GeometryError::SectorSize(bad))
            );
        }
        assert!(buf.iter().all(|b| *b == 7));
        assert_eq!(keys.encrypt_sectors(&mut [], 4096, 0, 8), Ok(()));
    }
}
