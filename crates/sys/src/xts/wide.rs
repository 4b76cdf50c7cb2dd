//! The tweak kernels on x86-64 vector registers (AVX2, AVX-512): bifs-core's `aes`-crate path
//! runs them before and after the `aes` backend ciphers a chunk. Without them the scalar
//! `u128` code costs more than the AES rounds themselves: the engine measured 3.9 GB/s on
//! 1 MiB with it against 9 GB/s for bare AES-128 ECB on an AVX-512 CPU.

use super::{GeometryError, TweakChain, LANES};

/// An x86-64 tweak kernel the CPU runs: made only by [`TweakKernel::avx512`] and
/// [`TweakKernel::avx2`], which check the CPU first.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TweakKernel(Width);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Width {
    /// Two 128-bit lanes per register (AMD Zen 2/3, Intel client cores).
    Avx2,
    /// Four 128-bit lanes per register.
    Avx512,
}

impl TweakKernel {
    /// The AVX-512 kernel (AVX-512F and AVX-512BW), if this CPU has them.
    pub fn avx512() -> Option<Self> {
        (std::is_x86_feature_detected!("avx512f") && std::is_x86_feature_detected!("avx512bw"))
            .then_some(Self(Width::Avx512))
    }

    /// The AVX2 kernel, if this CPU has AVX2.
    pub fn avx2() -> Option<Self> {
        std::is_x86_feature_detected!("avx2").then_some(Self(Width::Avx2))
    }

    /// Writes the tweaks of the next `chunk.len()` blocks of `chain` into `tweaks` and XORs
    /// them into `chunk`. The chunk must be whole [`LANES`]-block steps, `tweaks` as long as
    /// it, and the chain must have that many blocks left ([`TweakChain::check_chunk`]).
    #[inline]
    pub fn pre_xor(
        self,
        chunk: &mut [[u8; 16]],
        tweaks: &mut [u128],
        chain: &mut TweakChain<'_>,
    ) -> Result<(), GeometryError> {
        chain.check_chunk(chunk.len(), tweaks.len())?;
        match self.0 {
            // SAFETY: a `TweakKernel` of this width exists only if `avx512()` found AVX-512F
            // and AVX-512BW on this CPU; `check_chunk` made `tweaks` as long as `chunk`, both
            // whole steps (the kernel's own bounds come from `chunks_exact`).
            Width::Avx512 => unsafe { avx512::pre_xor(chunk, tweaks, chain) },
            // SAFETY: as above, `avx2()` found AVX2.
            Width::Avx2 => unsafe { avx2::pre_xor(chunk, tweaks, chain) },
        }
        Ok(())
    }

    /// XORs `tweaks` (as [`TweakKernel::pre_xor`] wrote them) into `chunk` again, after the
    /// cipher. `tweaks` must be as long as `chunk`, whole [`LANES`]-block steps.
    #[inline]
    pub fn xor(self, chunk: &mut [[u8; 16]], tweaks: &[u128]) -> Result<(), GeometryError> {
        let blocks = chunk.len();
        if !blocks.is_multiple_of(LANES) {
            return Err(GeometryError::PartialStep { blocks });
        }
        if tweaks.len() != blocks {
            return Err(GeometryError::TweakCount {
                blocks,
                tweaks: tweaks.len(),
            });
        }
        match self.0 {
            // SAFETY: the CPU has the features (as in `pre_xor`); `tweaks` holds a tweak for
            // every block of `chunk`, a whole number of vectors (checked above).
            Width::Avx512 => unsafe { avx512::xor(chunk, tweaks) },
            // SAFETY: as above.
            Width::Avx2 => unsafe { avx2::xor(chunk, tweaks) },
        }
        Ok(())
    }
}

/// `pre_xor` and `xor` for one vector width: `$vec` holds `$per` tweaks (blocks), loaded,
/// stored and XORed with the given intrinsics; the module defines `mul_alpha16` on `$vec`.
macro_rules! tweak_kernel {
    ($feature:literal, $vec:ty, $per:literal, $load:ident, $store:ident, $xor:ident) => {
        // LANES blocks (u128 tweaks) are a whole number of vectors of `$per` blocks.
        const _: () = assert!(size_of::<$vec>() == 16 * $per && LANES.is_multiple_of($per));

        /// # Safety
        /// The CPU must have the module's features. `tweaks` as long as `chunk`; blocks past
        /// the last whole step of `chunk` are left alone.
        #[target_feature(enable = $feature)]
        pub(super) unsafe fn pre_xor(
            chunk: &mut [[u8; 16]],
            tweaks: &mut [u128],
            chain: &mut TweakChain<'_>,
        ) {
            const VECS: usize = LANES / $per;
            for (bs, ts) in chunk
                .chunks_exact_mut(LANES)
                .zip(tweaks.chunks_exact_mut(LANES))
            {
                let Some(lanes) = chain.advance(|lanes| {
                    let p = lanes.as_mut_ptr().cast::<$vec>();
                    for k in 0..VECS {
                        // SAFETY: LANES u128 are VECS vectors; unaligned loads and stores.
                        unsafe { $store(p.add(k), mul_alpha16($load(p.add(k)))) };
                    }
                }) else {
                    // Past the chain's end: `check_chunk` refused such a chunk before.
                    return;
                };
                let l = lanes.as_ptr().cast::<$vec>();
                let t = ts.as_mut_ptr().cast::<$vec>();
                let b = bs.as_mut_ptr().cast::<$vec>();
                for k in 0..VECS {
                    // SAFETY: `lanes`, `ts` and `bs` each hold LANES blocks of 16 bytes =
                    // VECS vectors; unaligned loads and stores.
                    unsafe {
                        let z = $load(l.add(k));
                        $store(t.add(k), z);
                        $store(b.add(k), $xor($load(b.add(k)), z));
                    }
                }
            }
        }

        /// # Safety
        /// The CPU must have the module's features; `tweaks` at least as long as `chunk`.
        #[target_feature(enable = $feature)]
        pub(super) unsafe fn xor(chunk: &mut [[u8; 16]], tweaks: &[u128]) {
            let n = chunk.len() / $per;
            let t = tweaks.as_ptr().cast::<$vec>();
            let b = chunk.as_mut_ptr().cast::<$vec>();
            for k in 0..n {
                // SAFETY: vector `k < n` is blocks `$per * k ..= $per * k + $per - 1`, inside
                // `chunk` and (the caller's promise) `tweaks`; unaligned loads and stores.
                unsafe { $store(b.add(k), $xor($load(b.add(k)), $load(t.add(k)))) };
            }
        }
    };
}

/// Four tweaks per register, four registers per step.
mod avx512 {
    use core::arch::x86_64::*;

    use super::{TweakChain, LANES};

    /// Four 128-bit lanes times alpha^16 each: shift each lane left by two bytes and fold the
    /// two bytes shifted out back in as their carry-less product with 0x87 (x^7+x^2+x+1; at
    /// most 23 bits, so it stays in the lane's low 64 bits).
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw")]
    fn mul_alpha16(z: __m512i) -> __m512i {
        let hi = _mm512_bsrli_epi128::<14>(z);
        let fold = _mm512_ternarylogic_epi64::<0x96>(
            hi,
            _mm512_slli_epi64::<1>(hi),
            _mm512_slli_epi64::<2>(hi),
        );
        _mm512_ternarylogic_epi64::<0x96>(
            _mm512_bslli_epi128::<2>(z),
            fold,
            _mm512_slli_epi64::<7>(hi),
        )
    }

    tweak_kernel!(
        "avx512f,avx512bw",
        __m512i,
        4,
        _mm512_loadu_si512,
        _mm512_storeu_si512,
        _mm512_xor_si512
    );
}

/// Two tweaks per register, eight registers per step (CPUs without AVX-512: AMD Zen 2 and 3,
/// Intel client cores).
mod avx2 {
    use core::arch::x86_64::*;

    use super::{TweakChain, LANES};

    /// As AVX-512's, with each three-way XOR as two XORs.
    #[inline]
    #[target_feature(enable = "avx2")]
    fn mul_alpha16(z: __m256i) -> __m256i {
        let hi = _mm256_bsrli_epi128::<14>(z);
        let fold = _mm256_xor_si256(
            _mm256_xor_si256(hi, _mm256_slli_epi64::<1>(hi)),
            _mm256_xor_si256(_mm256_slli_epi64::<2>(hi), _mm256_slli_epi64::<7>(hi)),
        );
        _mm256_xor_si256(_mm256_bslli_epi128::<2>(z), fold)
    }

    tweak_kernel!(
        "avx2",
        __m256i,
        2,
        _mm256_loadu_si256,
        _mm256_storeu_si256,
        _mm256_xor_si256
    );
}

#[cfg(test)]
mod tests {
    use super::super::tests::{firsts, serial_tweaks};
    use super::*;

    fn kernels() -> Vec<TweakKernel> {
        let all: Vec<_> = [TweakKernel::avx2(), TweakKernel::avx512()]
            .into_iter()
            .flatten()
            .collect();
        if all.is_empty() {
            eprintln!("SKIPPED the wide tweak kernel tests: this CPU has neither AVX2 nor AVX-512");
        }
        all
    }

    fn data(blocks: usize) -> Vec<[u8; 16]> {
        (0..blocks)
            .map(|i| core::array::from_fn(|j| (i * 16 + j) as u8))
            .collect()
    }

    /// Chunks of 16 to 256 blocks over three sectors of each size (so chunks cross sector
    /// boundaries): the tweaks are XTS's serial ones, XORed in, and `xor` takes them out.
    #[test]
    fn kernels_match_the_serial_definition() {
        for kernel in kernels() {
            for sector_size in [512, 1024, 2048, 4096] {
                let first = firsts(3);
                let want = serial_tweaks(&first, sector_size / 16);
                for chunk_len in [16, 48, 64, 256] {
                    let plain = data(want.len());
                    let mut buf = plain.clone();
                    let mut chain = TweakChain::new(&first, sector_size).unwrap();
                    let mut got = Vec::new();
                    for chunk in buf.chunks_mut(chunk_len) {
                        let mut tweaks = vec![0u128; chunk.len()];
                        let before = chunk.to_vec();
                        kernel.pre_xor(chunk, &mut tweaks, &mut chain).unwrap();
                        for ((b, p), t) in chunk.iter().zip(&before).zip(&tweaks) {
                            assert_eq!(u128::from_le_bytes(*b), u128::from_le_bytes(*p) ^ t);
                        }
                        got.extend_from_slice(&tweaks);
                        kernel.xor(chunk, &tweaks).unwrap();
                    }
                    assert_eq!(
                        got, want,
                        "{kernel:?}, {sector_size}, chunks of {chunk_len}"
                    );
                    assert_eq!(buf, plain, "{kernel:?}: xor undoes pre_xor");
                    assert_eq!(chain.remaining(), 0);
                }
            }
        }
    }

    /// Short tweak arrays, partial steps and chunks past the chain's end are refused, and
    /// leave the data untouched.
    #[test]
    fn kernels_refuse_bad_geometry() {
        for kernel in kernels() {
            let first = firsts(1);
            let mut chain = TweakChain::new(&first, 512).unwrap();
            let mut buf = data(64);
            let mut tweaks = vec![0u128; 64];
            assert_eq!(
                kernel.pre_xor(&mut buf[..32], &mut tweaks[..16], &mut chain),
                Err(GeometryError::TweakCount {
                    blocks: 32,
                    tweaks: 16
                })
            );
            assert_eq!(
                kernel.pre_xor(&mut buf[..8], &mut tweaks[..8], &mut chain),
                Err(GeometryError::PartialStep { blocks: 8 })
            );
            assert_eq!(
                kernel.pre_xor(&mut buf[..48], &mut tweaks[..48], &mut chain),
                Err(GeometryError::PastChain {
                    blocks: 48,
                    remaining: 32
                })
            );
            assert_eq!(
                kernel.xor(&mut buf[..32], &tweaks[..16]),
                Err(GeometryError::TweakCount {
                    blocks: 32,
                    tweaks: 16
                })
            );
            assert_eq!(
                kernel.xor(&mut buf[..20], &tweaks[..20]),
                Err(GeometryError::PartialStep { blocks: 20 })
            );
            assert_eq!(buf, data(64));
            assert_eq!(chain.remaining(), 32);
        }
    }
}
