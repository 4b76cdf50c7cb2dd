//! The whole XTS pass in 256-bit VAES registers, for CPUs with VAES (AMD Zen 3 and later,
//! Intel Ice Lake and later, Intel client cores without AVX-512); it uses no AVX-512
//! instruction, so CPUs with AVX-512 run the same code.
//!
//! Why not the `aes` crate's backend here: its VAES-256 backend ciphers 30 blocks per batch,
//! so a 512-byte sector (32 blocks) is a batch plus two blocks one at a time on 128-bit
//! AES-NI, a 4 KiB chunk of the old engine ended in sixteen such blocks, and the tweaks went
//! through memory (computed into an array, XORed into the data, XORed again after the backend
//! call, which broadcast its round keys on every call). Here each step loads eight blocks,
//! XORs in tweaks held in registers, runs the rounds, and folds the second tweak XOR into the
//! last round key (`AESENCLAST` ends with an XOR of its key operand): a sector is one pass with
//! no tail and no tweak array, and the round keys are broadcast once, when keyed. They are
//! expanded here with AES-NI (the `aes` crate does not hand them out); the `aes` crate stays
//! the engine on every other CPU.
//!
//! Tweaks: a sector's first eight come from its encrypted IV in one fan-out (each `T·x^k`
//! computed from `T` directly, not as a chain), the next eight from these times x^8, a byte
//! shift and a carry-less multiply of the byte shifted out. Four 256-bit vectors per step keep
//! data, tweaks and a round key in the sixteen YMM registers of an AVX2 CPU.
//!
//! Every `#[target_feature]` function here needs AES-NI, AVX2 and VAES (and the kernels
//! VPCLMULQDQ): a [`VaesKeys`] is made only after [`VaesKeys::available`] found them, and its
//! methods check the geometry ([`check_sectors`]) before they enter that code.

use core::arch::x86_64::*;

use zeroize::Zeroize;

use super::{check_sectors, prefetch, GeometryError};

/// Tweak vectors (two blocks each) in flight per step.
const VECS: usize = 4;

/// Blocks per step; sectors are a multiple of it.
const STEP_BLOCKS: usize = 2 * VECS;

// Every sector size `check_sectors` lets through is whole steps.
const _: () = assert!((super::MIN_SECTOR_SIZE / 16).is_multiple_of(STEP_BLOCKS));

vaes_engine! {
    /// An XTS key pair expanded for the VAES engine, on a CPU that runs it: the only way to reach
    /// the engine. Zeroized on drop.
    VaesKeys
}

impl VaesKeys {
    /// Whether this CPU runs the engine: AES-NI, AVX2 and VAES as the patched `cpufeatures`
    /// reports them (VAES only when a probe finds 256-bit VAES right on both lanes; qemu 7.2's
    /// TCG fails it), and VPCLMULQDQ (every CPU with VAES so far has it).
    pub fn available() -> bool {
        cpufeatures::new!(vaes_cpu, "aes", "avx2", "vaes");
        vaes_cpu::get() && std::is_x86_feature_detected!("vpclmulqdq")
    }
}

/// Round keys of an XTS key pair, each 128-bit key broadcast to both lanes of a 256-bit
/// register: `enc` and `tweak` for encryption, `dec` the equivalent inverse cipher's.
/// `RK` is 11 (AES-128) or 15 (AES-256).
struct Keys<const RK: usize> {
    enc: [__m256i; RK],
    dec: [__m256i; RK],
    tweak: [__m256i; RK],
}

impl<const RK: usize> Drop for Keys<RK> {
    fn drop(&mut self) {
        self.enc.zeroize();
        self.dec.zeroize();
        self.tweak.zeroize();
    }
}

impl<const RK: usize> Keys<RK> {
    /// Each key of `s` broadcast to both lanes.
    ///
    /// # Safety
    /// The CPU must have AVX2.
    #[target_feature(enable = "avx2")]
    unsafe fn broadcast(s: &Schedule<RK>) -> Box<Self> {
        let b = |k: &[__m128i; RK]| core::array::from_fn(|i| _mm256_broadcastsi128_si256(k[i]));
        Box::new(Self {
            enc: b(&s.enc),
            dec: b(&s.dec),
            tweak: b(&s.tweak),
        })
    }
}

/// The 128-bit round keys of an XTS key pair, as AES-NI expands them: `enc` and `tweak` for
/// encryption, `dec` the equivalent inverse cipher's. `RK` is 11 (AES-128) or 15 (AES-256).
/// The wider kernels broadcast them to their registers (this one and `vaes512`'s). Zeroized on
/// drop.
pub(super) struct Schedule<const RK: usize> {
    pub(super) enc: [__m128i; RK],
    pub(super) dec: [__m128i; RK],
    pub(super) tweak: [__m128i; RK],
}

impl<const RK: usize> Drop for Schedule<RK> {
    fn drop(&mut self) {
        self.enc.zeroize();
        self.dec.zeroize();
        self.tweak.zeroize();
    }
}

/// The schedules of an AES-128 or an AES-256 XTS key pair.
pub(super) enum KeyPair {
    Aes128(Schedule<11>),
    Aes256(Schedule<15>),
}

impl KeyPair {
    /// Expands two AES-128 or two AES-256 keys; `None` for any other pair of lengths.
    ///
    /// # Safety
    /// The CPU must have AES-NI.
    #[target_feature(enable = "aes")]
    pub(super) unsafe fn expand(data_key: &[u8], tweak_key: &[u8]) -> Option<Self> {
        if let (Ok(d), Ok(t)) = (
            <&[u8; 16]>::try_from(data_key),
            <&[u8; 16]>::try_from(tweak_key),
        ) {
            return Some(Self::Aes128(Schedule::new(expand128(d), expand128(t))));
        }
        if let (Ok(d), Ok(t)) = (
            <&[u8; 32]>::try_from(data_key),
            <&[u8; 32]>::try_from(tweak_key),
        ) {
            return Some(Self::Aes256(Schedule::new(expand256(d), expand256(t))));
        }
        None
    }
}

impl<const RK: usize> Schedule<RK> {
    #[inline]
    #[target_feature(enable = "aes")]
    fn new(mut data: [__m128i; RK], mut tweak: [__m128i; RK]) -> Self {
        // The equivalent inverse cipher: the encryption keys in reverse order, the middle ones
        // through InvMixColumns.
        let dec_key = |i: usize| {
            let k = data[RK - 1 - i];
            if i == 0 || i == RK - 1 {
                k
            } else {
                _mm_aesimc_si128(k)
            }
        };
        let s = Self {
            enc: data,
            dec: core::array::from_fn(dec_key),
            tweak,
        };
        data.zeroize();
        tweak.zeroize();
        s
    }
}

/// One AES-128 key expansion step: `prev` and the `AESKEYGENASSIST` word.
#[inline]
#[target_feature(enable = "aes")]
fn expand_step(prev: __m128i, assist: __m128i) -> __m128i {
    let mut k = prev;
    k = _mm_xor_si128(k, _mm_slli_si128::<4>(k));
    k = _mm_xor_si128(k, _mm_slli_si128::<4>(k));
    k = _mm_xor_si128(k, _mm_slli_si128::<4>(k));
    _mm_xor_si128(k, assist)
}

#[inline]
#[target_feature(enable = "aes")]
fn load_key(bytes: &[u8; 16]) -> __m128i {
    // SAFETY: 16 readable bytes; an unaligned load.
    unsafe { _mm_loadu_si128(bytes.as_ptr().cast()) }
}

/// FIPS-197 key expansion for AES-128.
#[target_feature(enable = "aes")]
fn expand128(key: &[u8; 16]) -> [__m128i; 11] {
    let mut k = [_mm_setzero_si128(); 11];
    k[0] = load_key(key);
    macro_rules! round {
        ($i:literal, $rcon:literal) => {
            k[$i] = expand_step(
                k[$i - 1],
                _mm_shuffle_epi32::<0xff>(_mm_aeskeygenassist_si128::<$rcon>(k[$i - 1])),
            );
        };
    }
    round!(1, 0x01);
    round!(2, 0x02);
    round!(3, 0x04);
    round!(4, 0x08);
    round!(5, 0x10);
    round!(6, 0x20);
    round!(7, 0x40);
    round!(8, 0x80);
    round!(9, 0x1b);
    round!(10, 0x36);
    k
}

/// FIPS-197 key expansion for AES-256.
#[target_feature(enable = "aes")]
fn expand256(key: &[u8; 32]) -> [__m128i; 15] {
    let mut k = [_mm_setzero_si128(); 15];
    // SAFETY: 32 readable bytes: two unaligned 16-byte loads.
    unsafe {
        k[0] = _mm_loadu_si128(key.as_ptr().cast());
        k[1] = _mm_loadu_si128(key.as_ptr().add(16).cast());
    }
    // Even keys: RotWord/SubWord of the previous key's last word with a round constant; odd
    // keys: SubWord alone.
    macro_rules! even {
        ($i:literal, $rcon:literal) => {
            k[$i] = expand_step(
                k[$i - 2],
                _mm_shuffle_epi32::<0xff>(_mm_aeskeygenassist_si128::<$rcon>(k[$i - 1])),
            );
        };
    }
    macro_rules! odd {
        ($i:literal) => {
            k[$i] = expand_step(
                k[$i - 2],
                _mm_shuffle_epi32::<0xaa>(_mm_aeskeygenassist_si128::<0>(k[$i - 1])),
            );
        };
    }
    even!(2, 0x01);
    odd!(3);
    even!(4, 0x02);
    odd!(5);
    even!(6, 0x04);
    odd!(7);
    even!(8, 0x08);
    odd!(9);
    even!(10, 0x10);
    odd!(11);
    even!(12, 0x20);
    odd!(13);
    even!(14, 0x40);
    k
}

/// The low qword of each lane: x^7 + x^2 + x + 1, the XTS polynomial's low terms.
#[inline]
#[target_feature(enable = "avx2")]
fn poly() -> __m256i {
    _mm256_set_epi64x(0, 0x87, 0, 0x87)
}

/// Each 128-bit lane times x^K (K < 64): shift both qwords left, carry the low qword's top
/// bits into the high one and fold the high qword's top bits back in as their carry-less
/// product with the polynomial (at most K + 7 bits, so no second reduction).
#[inline]
#[target_feature(enable = "avx2,vpclmulqdq")]
fn mul_xk<const K: i32, const R: i32>(t: __m256i) -> __m256i {
    const { assert!(K + R == 64 && K > 0 && K < 57) };
    let carries = _mm256_srli_epi64::<R>(t);
    let folded = _mm256_clmulepi64_epi128::<0x01>(carries, poly());
    let shifted = _mm256_slli_epi64::<K>(t);
    _mm256_xor_si256(
        _mm256_xor_si256(shifted, _mm256_bslli_epi128::<8>(carries)),
        folded,
    )
}

/// Each lane times x^(8B): a B-byte lane shift and the bytes shifted out folded back in.
#[inline]
#[target_feature(enable = "avx2,vpclmulqdq")]
fn mul_xbytes<const B: i32, const R: i32>(t: __m256i) -> __m256i {
    const { assert!(B + R == 16 && B > 0 && B < 7) };
    let out = _mm256_bsrli_epi128::<R>(t);
    _mm256_xor_si256(
        _mm256_bslli_epi128::<B>(t),
        _mm256_clmulepi64_epi128::<0x00>(out, poly()),
    )
}

/// Each lane times x^(2 VECS): the tweaks of the next step.
#[inline]
#[target_feature(enable = "avx2,vpclmulqdq")]
fn next_step(t: __m256i) -> __m256i {
    const { assert!(VECS == 4 || VECS == 8) };
    if VECS == 4 {
        mul_xbytes::<1, 15>(t)
    } else {
        mul_xbytes::<2, 14>(t)
    }
}

/// The sector's first `2 * VECS` tweaks from its encrypted IV `t0`: lanes
/// (t0·x^2i, t0·x^(2i+1)) in vector `i`, each computed from `t0` directly so that they do not
/// wait on each other.
#[inline]
#[target_feature(enable = "avx2,vpclmulqdq")]
fn first_tweaks(t0: __m128i) -> [__m256i; VECS] {
    let b = _mm256_broadcastsi128_si256(t0);
    // (t0, t0·x): the upper lane through the same shift-and-fold by one bit.
    let b = _mm256_blend_epi32::<0xf0>(b, mul_xk::<1, 63>(b));
    let all = [
        b,
        mul_xk::<2, 62>(b),
        mul_xk::<4, 60>(b),
        mul_xk::<6, 58>(b),
        mul_xk::<8, 56>(b),
        mul_xk::<10, 54>(b),
        mul_xk::<12, 52>(b),
        mul_xk::<14, 50>(b),
    ];
    core::array::from_fn(|i| all[i])
}

/// The encrypted IVs (little-endian `iv + k * step`, as plain64) of up to eight sectors.
#[inline]
#[target_feature(enable = "aes,avx2,vaes")]
fn encrypt_ivs<const RK: usize>(keys: &Keys<RK>, iv: u64, step: u64, n: usize) -> [__m128i; 8] {
    let iv_at = |k: u64| iv.wrapping_add(k.wrapping_mul(step)) as i64;
    let k = &keys.tweak;
    if n == 1 {
        // One sector per call (openssl speed's unit): one block, not four pairs.
        let mut x = _mm_xor_si128(_mm_set_epi64x(0, iv_at(0)), _mm256_castsi256_si128(k[0]));
        for key in &k[1..RK - 1] {
            x = _mm_aesenc_si128(x, _mm256_castsi256_si128(*key));
        }
        x = _mm_aesenclast_si128(x, _mm256_castsi256_si128(k[RK - 1]));
        let mut out = [_mm_setzero_si128(); 8];
        out[0] = x;
        return out;
    }
    let mut x: [__m256i; 4] = core::array::from_fn(|p| {
        let p = 2 * p as u64;
        _mm256_xor_si256(_mm256_set_epi64x(0, iv_at(p + 1), 0, iv_at(p)), k[0])
    });
    for key in &k[1..RK - 1] {
        for v in &mut x {
            *v = _mm256_aesenc_epi128(*v, *key);
        }
    }
    for v in &mut x {
        *v = _mm256_aesenclast_epi128(*v, k[RK - 1]);
    }
    core::array::from_fn(|i| {
        let v = x[i / 2];
        if i % 2 == 0 {
            _mm256_castsi256_si128(v)
        } else {
            _mm256_extracti128_si256::<1>(v)
        }
    })
}

/// Ciphers `len` bytes of whole sectors from `src` into `dst` (`ENCRYPT` or decrypt); sector
/// `k` has IV `first_iv + k * iv_step`.
///
/// # Safety
/// The CPU must have AES-NI, AVX2, VAES and VPCLMULQDQ ([`VaesKeys::available`]); `src` and
/// `dst` point at `len` bytes, the same bytes (in place) or ones that do not overlap; `len` is
/// whole sectors of `sector_size` bytes, each a multiple of [`STEP_BLOCKS`] blocks.
#[target_feature(enable = "aes,avx2,vaes,vpclmulqdq")]
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
#[target_feature(enable = "aes,avx2,vaes,vpclmulqdq")]
unsafe fn sector_pass<const RK: usize, const ENCRYPT: bool>(
    rk: &[__m256i; RK],
    src: *const u8,
    dst: *mut u8,
    steps: usize,
    t0: __m128i,
) {
    let mut t = first_tweaks(t0);
    let (src, dst) = (src.cast::<__m256i>(), dst.cast::<__m256i>());
    for step in 0..steps {
        if step > 0 {
            for tw in &mut t {
                *tw = next_step(*tw);
            }
        }
        // SAFETY: step `step` of `steps` is VECS vectors inside the sector, in both buffers.
        let (from, to) = unsafe { (src.add(step * VECS), dst.add(step * VECS)) };
        prefetch::<{ VECS * 32 }>(from.cast());
        let mut x: [__m256i; VECS] = core::array::from_fn(|i| {
            // SAFETY: as above; an unaligned load.
            let d = unsafe { _mm256_loadu_si256(from.add(i)) };
            _mm256_xor_si256(d, _mm256_xor_si256(t[i], rk[0]))
        });
        for key in &rk[1..RK - 1] {
            for b in &mut x {
                *b = if ENCRYPT {
                    _mm256_aesenc_epi128(*b, *key)
                } else {
                    _mm256_aesdec_epi128(*b, *key)
                };
            }
        }
        for (i, b) in x.iter().enumerate() {
            // The last round's key XOR takes the tweak XOR with it.
            let last = _mm256_xor_si256(rk[RK - 1], t[i]);
            let out = if ENCRYPT {
                _mm256_aesenclast_epi128(*b, last)
            } else {
                _mm256_aesdeclast_epi128(*b, last)
            };
            // SAFETY: as above; an unaligned store.
            unsafe { _mm256_storeu_si256(to.add(i), out) };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bytes(v: __m128i) -> [u8; 16] {
        let mut out = [0u8; 16];
        // SAFETY: 16 writable bytes; an unaligned store.
        unsafe { _mm_storeu_si128(out.as_mut_ptr().cast(), v) };
        out
    }

    /// FIPS-197 appendix A.1 and A.3: the first and last round keys of the expansions.
    #[test]
    fn key_expansion_matches_fips197() {
        if !std::is_x86_feature_detected!("aes") {
            eprintln!("SKIPPED key_expansion_matches_fips197: this CPU has no AES-NI");
            return;
        }
        let k128: [u8; 16] = hex::decode("2b7e151628aed2a6abf7158809cf4f3c")
            .unwrap()
            .try_into()
            .unwrap();
        // SAFETY: AES-NI checked above.
        let s = unsafe { expand128(&k128) };
        assert_eq!(hex::encode(bytes(s[1])), "a0fafe1788542cb123a339392a6c7605");
        assert_eq!(
            hex::encode(bytes(s[10])),
            "d014f9a8c9ee2589e13f0cc8b6630ca6"
        );
        let k256: [u8; 32] =
            hex::decode("603deb1015ca71be2b73aef0857d77811f352c073b6108d72d9810a30914dff4")
                .unwrap()
                .try_into()
                .unwrap();
        // SAFETY: as above.
        let s = unsafe { expand256(&k256) };
        assert_eq!(hex::encode(bytes(s[2])), "9ba354118e6925afa51a8b5f2067fcde");
        assert_eq!(
            hex::encode(bytes(s[14])),
            "fe4890d1e6188d0b046df344706c631e"
        );
    }
}

#[cfg(test)]
mod engine_tests {
    use super::*;

    fn engine() -> bool {
        let ok = VaesKeys::available();
        if !ok {
            eprintln!("SKIPPED a VAES engine test: this CPU has no (working) VAES or VPCLMULQDQ");
        }
        ok
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
            let keys = VaesKeys::new(d, t).unwrap();
            let plain: Vec<u8> = (0..512).map(|i| i as u8).collect();
            let mut buf = plain.clone();
            keys.encrypt_sectors(&mut buf, 512, unit, 1).unwrap();
            assert_eq!(hex::encode(&buf[..32]), head);
            assert_eq!(hex::encode(&buf[480..]), tail);
            keys.decrypt_sectors(&mut buf, 512, unit, 1).unwrap();
            assert_eq!(buf, plain);
        }
    }

    /// One call over many sectors (IVs encrypted eight at a time) gives what one call per
    /// sector (one IV alone) gives, for every sector size, with IVs that wrap around.
    #[test]
    fn one_call_matches_sector_by_sector() {
        if !engine() {
            return;
        }
        let key: Vec<u8> = (0..64u8).map(|i| i.wrapping_mul(29) ^ 0x5c).collect();
        for key_len in [32, 64] {
            let (d, t) = key[..key_len].split_at(key_len / 2);
            let keys = VaesKeys::new(d, t).unwrap();
            for sector_size in [512usize, 1024, 2048, 4096] {
                let step = (sector_size / 512) as u64;
                for first_iv in [12345u64, u64::MAX - 5] {
                    let count = 19;
                    let plain: Vec<u8> = (0..count * sector_size)
                        .map(|i| (i * 7 + i / 251) as u8)
                        .collect();
                    let mut whole = plain.clone();
                    keys.encrypt_sectors(&mut whole, sector_size, first_iv, step)
                        .unwrap();
                    let mut each = plain.clone();
                    for (k, s) in each.chunks_mut(sector_size).enumerate() {
                        let iv = first_iv.wrapping_add(k as u64 * step);
                        keys.encrypt_sectors(s, sector_size, iv, step).unwrap();
                    }
                    assert!(
                        whole == each,
                        "{key_len}-byte key, {sector_size}-byte sectors"
                    );
                    assert!(whole != plain);
                    keys.decrypt_sectors(&mut whole, sector_size, first_iv, step)
                        .unwrap();
                    assert!(whole == plain, "round trip");
                }
            }
        }
    }

    /// Keys that are not two AES-128 or two AES-256 keys, and buffers that are not whole
    /// sectors of a power of two from 512 to 4096 bytes, are refused (the data untouched).
    #[test]
    fn refuses_bad_keys_and_geometry() {
        for (d, t) in [(16, 32), (32, 16), (24, 24), (0, 0), (64, 64)] {
            assert!(VaesKeys::new(&vec![1; d], &vec![2; t]).is_none());
        }
        if !engine() {
            return;
        }
        let keys = VaesKeys::new(&[1; 16], &[2; 16]).unwrap();
        assert_eq!(
            format!("{keys:?}"),
            "VaesKeys { aes_bits: 128, .. }",
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
