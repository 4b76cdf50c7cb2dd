//! The unsafe half of bifs-core's XTS engine (`bifs_core::xts`): its x86-64 SIMD code, behind
//! safe types that cannot be misused.
//!
//! - [`VaesKeys`]: the whole XTS pass in 256-bit VAES registers (its own AES key expansion and
//!   rounds, tweaks in registers), for CPUs with VAES and VPCLMULQDQ.
//! - [`Vaes512Keys`]: the same pass in 512-bit registers (four blocks per instruction), for
//!   CPUs that also have AVX-512F and AVX-512BW; it shares the 256-bit engine's key expansion.
//! - [`TweakKernel`]: the AVX2 and AVX-512 tweak kernels that bifs-core's `aes`-crate path runs
//!   around the `aes` backend on other x86-64 CPUs: they derive the tweaks of a chunk along a
//!   [`TweakChain`] and XOR them in, before and after the backend ciphers the chunk.
//!
//! Why `unsafe`: a `#[target_feature]` function may only run on a CPU that has the features,
//! which only a run-time check can know, and the vector loads and stores take raw pointers.
//! How the safe API holds: a [`VaesKeys`] or a [`TweakKernel`] can only be made by a run-time
//! check of the CPU (`None` without the features), so holding one is the proof the
//! `#[target_feature]` code needs; their methods check every length and geometry precondition
//! of that code ([`GeometryError`]) before entering it. Everything else of XTS (the `aes`
//! crate's key schedules and backends, the portable kernel, chunking, the known-answer self-test
//! and the choice of kernel) is safe code in bifs-core, which forbids `unsafe`.
//!
//! Tweaks: XTS's tweak of block `k+1` of a sector is the tweak of block `k` times alpha (x in
//! GF(2^128) mod x^128 + x^7 + x^2 + x + 1), starting from the sector's encrypted IV. Blocks
//! are passed as `[u8; 16]` and tweaks as little-endian `u128`s (bit `i` is the coefficient of
//! x^i), as IEEE 1619 lays them out.

/// The safe face of a VAES engine (`vaes`, `vaes512`): the key type, its expansion and the two
/// calls, one copy for both widths. Invoked inside the engine's module, where `Keys<RK>` (with
/// `unsafe fn broadcast(&Schedule<RK>) -> Box<Self>`), `KeyPair`, `STEP_BLOCKS` and
/// `unsafe fn sectors::<RK, ENCRYPT>(&Keys<RK>, *const u8, *mut u8, usize, usize, u64, u64)`
/// (source, destination, length, sector size, first IV, IV step) are that
/// module's own, and next to an `available()` that checks every target feature the module's
/// code is compiled for (its module comment lists them).
#[cfg(target_arch = "x86_64")]
macro_rules! vaes_engine {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        pub struct $name(Schedules);

        enum Schedules {
            Aes128(Box<Keys<11>>),
            Aes256(Box<Keys<15>>),
        }

        impl $name {
            /// Expands an AES-128 (two 16-byte keys) or AES-256 (two 32-byte keys) XTS key
            /// pair; `None` if this CPU cannot run the engine (`available()`) or the keys are
            /// not two AES-128 or two AES-256 keys.
            pub fn new(data_key: &[u8], tweak_key: &[u8]) -> Option<Self> {
                if !Self::available() {
                    return None;
                }
                // SAFETY: `available()` just found every feature this module's code needs,
                // `Keys::broadcast`'s among them.
                let keys = unsafe {
                    match KeyPair::expand(data_key, tweak_key)? {
                        KeyPair::Aes128(s) => Schedules::Aes128(Keys::broadcast(&s)),
                        KeyPair::Aes256(s) => Schedules::Aes256(Keys::broadcast(&s)),
                    }
                };
                Some(Self(keys))
            }

            /// Encrypts whole sectors in place: `buf` is sectors of `sector_size` bytes (a
            /// power of two from 512 to 4096, [`check_sectors`]), sector `k` with IV
            /// `first_iv + k * iv_step` (little-endian, as dm-crypt's plain64).
            #[inline]
            pub fn encrypt_sectors(
                &self,
                buf: &mut [u8],
                sector_size: usize,
                first_iv: u64,
                iv_step: u64,
            ) -> Result<(), GeometryError> {
                let p = buf.as_mut_ptr();
                self.run::<true>(p, p, buf.len(), sector_size, first_iv, iv_step)
            }

            /// Decrypts whole sectors in place; the inverse of `encrypt_sectors`.
            #[inline]
            pub fn decrypt_sectors(
                &self,
                buf: &mut [u8],
                sector_size: usize,
                first_iv: u64,
                iv_step: u64,
            ) -> Result<(), GeometryError> {
                let p = buf.as_mut_ptr();
                self.run::<false>(p, p, buf.len(), sector_size, first_iv, iv_step)
            }

            /// `encrypt_sectors` (or, with `encrypt` false, `decrypt_sectors`) of `src` into
            /// `dst`, of the same length: each byte of `src` is read once, so a source that is a
            /// file's mapped page cache costs no copy of its own.
            #[inline]
            pub fn sectors_from(
                &self,
                encrypt: bool,
                src: &[u8],
                dst: &mut [u8],
                sector_size: usize,
                first_iv: u64,
                iv_step: u64,
            ) -> Result<(), GeometryError> {
                super::check_same_len(src.len(), dst.len())?;
                let (from, to, len) = (src.as_ptr(), dst.as_mut_ptr(), dst.len());
                if encrypt {
                    self.run::<true>(from, to, len, sector_size, first_iv, iv_step)
                } else {
                    self.run::<false>(from, to, len, sector_size, first_iv, iv_step)
                }
            }

            /// `len` bytes from `src` ciphered into `dst`: the same buffer (in place) or two
            /// that do not overlap, both borrowed by the caller for `len` bytes.
            #[inline]
            fn run<const ENCRYPT: bool>(
                &self,
                src: *const u8,
                dst: *mut u8,
                len: usize,
                sector_size: usize,
                first_iv: u64,
                iv_step: u64,
            ) -> Result<(), GeometryError> {
                check_sectors(len, sector_size)?;
                // SAFETY: a value of this type exists only where `available()` found every
                // feature `sectors` needs (`new` checks it); `check_sectors` made `len` whole
                // sectors of a power of two of at least 512 bytes, so each sector is whole
                // steps of STEP_BLOCKS blocks; `src` and `dst` are `len` bytes the callers
                // borrowed, one `&mut` slice or a `&` and a `&mut` (which cannot overlap).
                unsafe {
                    match &self.0 {
                        Schedules::Aes128(k) => {
                            sectors::<11, ENCRYPT>(k, src, dst, len, sector_size, first_iv, iv_step)
                        }
                        Schedules::Aes256(k) => {
                            sectors::<15, ENCRYPT>(k, src, dst, len, sector_size, first_iv, iv_step)
                        }
                    }
                }
                Ok(())
            }
        }

        impl core::fmt::Debug for $name {
            fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
                let bits = match self.0 {
                    Schedules::Aes128(_) => 128,
                    Schedules::Aes256(_) => 256,
                };
                // Never the keys.
                f.debug_struct(stringify!($name))
                    .field("aes_bits", &bits)
                    .finish_non_exhaustive()
            }
        }
    };
}

/// How far ahead of the step being ciphered the VAES engines prefetch its source, in bytes.
/// Measured with `bifs serve` of an encrypt view from a mapped source on a 2-vCPU Xeon:
/// 1 KiB left the engine waiting on memory, 4 KiB was slower than 2 KiB.
#[cfg(target_arch = "x86_64")]
const PREFETCH_AHEAD: usize = 2048;

/// Asks for the `STEP` bytes at `at + PREFETCH_AHEAD`, one cache line at a time, while a step
/// of the engine ciphers the bytes at `at`: the source may be a file's pages straight from
/// memory (`crate::mapped`), not a buffer a copy just put in the cache. A prefetch never
/// faults, so an address past the end of the buffer costs nothing (`wrapping_add`: no claim
/// that it is inside).
#[cfg(target_arch = "x86_64")]
#[inline(always)]
fn prefetch<const STEP: usize>(at: *const i8) {
    use core::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
    let mut line = 0;
    while line < STEP {
        // SAFETY: SSE is part of x86-64 (every x86-64 CPU has it); a prefetch reads no
        // memory the program sees and never faults.
        unsafe { _mm_prefetch::<_MM_HINT_T0>(at.wrapping_add(PREFETCH_AHEAD + line)) };
        line += 64;
    }
}

#[cfg(target_arch = "x86_64")]
mod vaes;
#[cfg(target_arch = "x86_64")]
mod vaes512;
#[cfg(target_arch = "x86_64")]
mod wide;

#[cfg(target_arch = "x86_64")]
pub use vaes::VaesKeys;
#[cfg(target_arch = "x86_64")]
pub use vaes512::Vaes512Keys;
#[cfg(target_arch = "x86_64")]
pub use wide::TweakKernel;

/// Smallest sector size the kernels take (LUKS2's smallest).
pub const MIN_SECTOR_SIZE: usize = 512;

/// Largest sector size the kernels take (LUKS2's largest).
pub const MAX_SECTOR_SIZE: usize = 4096;

/// Tweaks a [`TweakChain`] produces per step, and the granule of a [`TweakKernel`] chunk:
/// sixteen interleaved chains (each stepping by alpha^16, a 2-byte shift plus a small fold)
/// that the CPU runs side by side; with AVX-512 they are four registers of four 128-bit lanes.
pub const LANES: usize = 16;

// Every sector size taken is whole steps of the tweak chain (and of the VAES engine).
const _: () = assert!((MIN_SECTOR_SIZE / 16).is_multiple_of(LANES));

/// A call the kernels refuse: they run only on whole sectors and whole steps.
#[derive(Debug, thiserror::Error, PartialEq, Eq, Clone, Copy)]
pub enum GeometryError {
    #[error("sector size {0} is not a power of two between 512 and 4096")]
    SectorSize(usize),
    #[error("buffer of {len} bytes is not a whole number of {sector_size}-byte sectors")]
    Unaligned { len: usize, sector_size: usize },
    #[error("chunk of {blocks} blocks is not a whole number of {LANES}-block steps")]
    PartialStep { blocks: usize },
    #[error("{tweaks} tweak slots for a chunk of {blocks} blocks")]
    TweakCount { blocks: usize, tweaks: usize },
    #[error("chunk of {blocks} blocks runs past the {remaining} blocks left in the tweak chain")]
    PastChain { blocks: usize, remaining: usize },
    #[error("source of {src} bytes for a destination of {dst} bytes")]
    Lengths { src: usize, dst: usize },
}

/// Checks that `len` bytes are whole sectors of a size the kernels take: a power of two from
/// [`MIN_SECTOR_SIZE`] to [`MAX_SECTOR_SIZE`].
#[inline]
pub fn check_sectors(len: usize, sector_size: usize) -> Result<(), GeometryError> {
    check_sector_size(sector_size)?;
    if !len.is_multiple_of(sector_size) {
        return Err(GeometryError::Unaligned { len, sector_size });
    }
    Ok(())
}

/// Checks that an out-of-place pass has as many source bytes as destination bytes.
#[inline]
pub fn check_same_len(src: usize, dst: usize) -> Result<(), GeometryError> {
    if src != dst {
        return Err(GeometryError::Lengths { src, dst });
    }
    Ok(())
}

#[inline]
fn check_sector_size(sector_size: usize) -> Result<(), GeometryError> {
    if !sector_size.is_power_of_two() || !(MIN_SECTOR_SIZE..=MAX_SECTOR_SIZE).contains(&sector_size)
    {
        return Err(GeometryError::SectorSize(sector_size));
    }
    Ok(())
}

/// The tweaks of a run of whole sectors, [`LANES`] at a time: where the sequence stands (the
/// sector, the block within it) and the last [`LANES`] tweaks produced.
pub struct TweakChain<'a> {
    /// The first tweak of each sector: its encrypted IV.
    first: &'a [[u8; 16]],
    blocks_per_sector: usize,
    sector: usize,
    in_sector: usize,
    lanes: [u128; LANES],
}

impl<'a> TweakChain<'a> {
    /// The chain of `first.len()` sectors of `sector_size` bytes, sector `k` starting from the
    /// tweak `first[k]`.
    pub fn new(first: &'a [[u8; 16]], sector_size: usize) -> Result<Self, GeometryError> {
        check_sector_size(sector_size)?;
        Ok(Self {
            first,
            blocks_per_sector: sector_size / 16,
            sector: 0,
            in_sector: 0,
            lanes: [0; LANES],
        })
    }

    /// Blocks whose tweaks are still to come.
    pub fn remaining(&self) -> usize {
        // `sector <= first.len()`, and `in_sector` is 0 when they are equal.
        (self.first.len() - self.sector).saturating_mul(self.blocks_per_sector) - self.in_sector
    }

    /// Checks that a chunk of `blocks` blocks with `tweaks` tweak slots is whole steps, has a
    /// slot per block and a tweak per block left in the chain.
    pub fn check_chunk(&self, blocks: usize, tweaks: usize) -> Result<(), GeometryError> {
        if !blocks.is_multiple_of(LANES) {
            return Err(GeometryError::PartialStep { blocks });
        }
        if tweaks != blocks {
            return Err(GeometryError::TweakCount { blocks, tweaks });
        }
        let remaining = self.remaining();
        if blocks > remaining {
            return Err(GeometryError::PastChain { blocks, remaining });
        }
        Ok(())
    }

    /// The tweaks of the next [`LANES`] blocks (`None` past the last sector), computed on
    /// plain `u128`s: bifs-core's portable kernel.
    #[inline(always)]
    pub fn next_lanes(&mut self) -> Option<&[u128; LANES]> {
        self.advance(|lanes| {
            for l in lanes {
                *l = mul_alpha16(*l);
            }
        })
    }

    /// The next [`LANES`] tweaks: from the sector's first tweak at a sector start, else the
    /// last [`LANES`] through `step`, which multiplies each by alpha^16.
    #[inline(always)]
    fn advance(&mut self, step: impl FnOnce(&mut [u128; LANES])) -> Option<&[u128; LANES]> {
        if self.in_sector == 0 {
            let mut t = u128::from_le_bytes(*self.first.get(self.sector)?);
            for l in &mut self.lanes {
                *l = t;
                t = mul_alpha(t);
            }
        } else {
            step(&mut self.lanes);
        }
        // Sectors hold a multiple of LANES blocks, so a step never straddles two sectors.
        self.in_sector += LANES;
        if self.in_sector == self.blocks_per_sector {
            self.in_sector = 0;
            self.sector += 1;
        }
        Some(&self.lanes)
    }
}

#[inline(always)]
fn mul_alpha(t: u128) -> u128 {
    let carry = (t >> 127) as u8;
    (t << 1) ^ u128::from(0x87 * carry)
}

/// `t * alpha^16`: shift by 16 and fold the two bytes shifted out back in as their carry-less
/// product with 0x87 (bits 0, 1, 2, 7); at most 23 bits, so no second reduction.
#[inline(always)]
fn mul_alpha16(t: u128) -> u128 {
    let hi = t >> 112;
    (t << 16) ^ hi ^ (hi << 1) ^ (hi << 2) ^ (hi << 7)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// XTS's tweak sequence by its definition: one multiplication by alpha per block.
    pub(crate) fn serial_tweaks(first: &[[u8; 16]], blocks_per_sector: usize) -> Vec<u128> {
        let mut out = Vec::new();
        for f in first {
            let mut t = u128::from_le_bytes(*f);
            for _ in 0..blocks_per_sector {
                out.push(t);
                let carry = t >> 127 == 1;
                t <<= 1;
                if carry {
                    t ^= 0x87;
                }
            }
        }
        out
    }

    /// Pseudo-random first tweaks, with the top bit set in some (the reduction's case).
    pub(crate) fn firsts(n: usize) -> Vec<[u8; 16]> {
        let mut x = 0x243f6a8885a308d3_13198a2e03707344u128;
        (0..n)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x.to_le_bytes()
            })
            .collect()
    }

    #[test]
    fn portable_chain_matches_the_serial_definition() {
        for sector_size in [512, 1024, 2048, 4096] {
            let first = firsts(5);
            let mut chain = TweakChain::new(&first, sector_size).unwrap();
            let mut got = Vec::new();
            assert_eq!(chain.remaining(), 5 * sector_size / 16);
            while let Some(lanes) = chain.next_lanes() {
                got.extend_from_slice(lanes);
            }
            assert_eq!(chain.remaining(), 0);
            assert_eq!(got, serial_tweaks(&first, sector_size / 16));
        }
    }

    #[test]
    fn refuses_bad_geometry() {
        for bad in [0, 16, 256, 1000, 3072, 8192] {
            assert_eq!(
                TweakChain::new(&[], bad).err(),
                Some(GeometryError::SectorSize(bad))
            );
            assert_eq!(
                check_sectors(4096, bad),
                Err(GeometryError::SectorSize(bad))
            );
        }
        assert_eq!(
            check_sectors(1000, 512),
            Err(GeometryError::Unaligned {
                len: 1000,
                sector_size: 512
            })
        );
        assert_eq!(check_sectors(0, 512), Ok(()));
        assert_eq!(check_sectors(3 * 4096, 4096), Ok(()));

        let first = firsts(2);
        let chain = TweakChain::new(&first, 512).unwrap();
        assert_eq!(
            chain.check_chunk(24, 24),
            Err(GeometryError::PartialStep { blocks: 24 })
        );
        assert_eq!(
            chain.check_chunk(32, 16),
            Err(GeometryError::TweakCount {
                blocks: 32,
                tweaks: 16
            })
        );
        assert_eq!(
            chain.check_chunk(80, 80),
            Err(GeometryError::PastChain {
                blocks: 80,
                remaining: 64
            })
        );
        assert_eq!(chain.check_chunk(64, 64), Ok(()));
    }
}
