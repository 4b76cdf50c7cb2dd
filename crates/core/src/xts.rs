//! The XTS engine: AES-XTS over whole sectors with a plain64 tweak, as dm-crypt's
//! `aes-xts-plain64` does.
//!
//! Why not the `xts-mode` crate for data: it encrypts one block at a time and derives tweaks
//! serially, which keeps AES-NI's pipeline (and the VAES paths of `aes` 0.9) mostly idle — about
//! 3x slower than batched sectors here, and ~10x slower than this engine. On CPUs with VAES
//! the whole pass runs in one of bifs-sys's VAES engines (their own AES rounds, tweaks in
//! registers): the 512-bit one where the CPU has AVX-512, else the 256-bit one.
//! Elsewhere the first tweaks of a group of sectors are encrypted in one call, the per-block
//! tweaks are derived sixteen chains at a time (AVX-512 or AVX2 where the CPU has it), and the
//! XOR-encrypt-XOR runs on small chunks inside the `aes` backend while they sit in L1 (see
//! docs/performance.md for the measurements). `xts-mode` stays in the tests as an
//! independent oracle.
//!
//! No `unsafe` here (bifs-core forbids it): the x86-64 SIMD code, the VAES engines and the AVX2
//! and AVX-512 tweak kernels, is in `bifs_sys::xts`, the audited crate, because calling a
//! `#[target_feature]` function and loading vectors through raw pointers are `unsafe`. It is
//! reached through values that only a run-time CPU check makes
//! ([`bifs_sys::xts::Vaes512Keys`], [`bifs_sys::xts::VaesKeys`],
//! [`bifs_sys::xts::TweakKernel`]) and whose methods check every length first, so nothing here
//! can call it wrong. What stays here is the engine's safe part: the `aes` crate's keys and
//! backends, the portable tweak kernel, the grouping and chunking of sectors, the known-answer
//! self-test, and the choice of kernel.

use aes::{Aes128, Aes256};
use bifs_sys::xts::{GeometryError, TweakChain, LANES};
#[cfg(target_arch = "x86_64")]
use bifs_sys::xts::{TweakKernel, Vaes512Keys, VaesKeys};
use cipher::consts::U16;
use cipher::typenum::Unsigned;
use cipher::{
    Array, BlockCipherDecBackend, BlockCipherDecClosure, BlockCipherDecrypt, BlockCipherEncBackend,
    BlockCipherEncClosure, BlockCipherEncrypt, BlockSizeUser, KeyInit, ParBlocks,
};

/// One AES block.
type Block = Array<u8, U16>;

/// IVs count 512-byte units whatever the sector size (LUKS2 never uses `iv_large_sectors`).
pub const IV_UNIT: usize = 512;

/// Largest sector size LUKS2 allows; bounds the batch buffer.
pub const MAX_SECTOR_SIZE: usize = bifs_sys::xts::MAX_SECTOR_SIZE;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum XtsError {
    #[error("XTS key must be 32 bytes (AES-128-XTS) or 64 bytes (AES-256-XTS), got {0} bytes")]
    KeyLength(usize),
    #[error("sector size {0} is not a power of two between 512 and 4096")]
    SectorSize(usize),
    #[error("buffer of {len} bytes is not a whole number of {sector_size}-byte sectors")]
    Unaligned { len: usize, sector_size: usize },
    #[error("XTS data key and tweak key must differ")]
    EqualHalves,
    #[error("source of {src} bytes for a destination of {dst} bytes")]
    Lengths { src: usize, dst: usize },
    #[error(
        "AES-XTS on this CPU gives wrong answers (the IEEE 1619 known-answer test failed): \
         refusing to encrypt or decrypt. An emulator with a faulty AES instruction does this; \
         run on the real CPU or a fixed emulator"
    )]
    SelfTest,
    /// [`Xts::with_kernel_named`] asked for a kernel this CPU does not run (or that failed its
    /// known-answer test here).
    #[error("XTS kernel {name:?} does not run on this CPU (these do: {available})")]
    NoSuchKernel { name: String, available: String },
    /// A SIMD kernel refused a call whose geometry `Xts` had checked: a bug in bifs.
    #[error("XTS kernel refused a call (a bug in bifs): {0}")]
    Kernel(GeometryError),
}

impl From<GeometryError> for XtsError {
    fn from(e: GeometryError) -> Self {
        match e {
            GeometryError::SectorSize(s) => XtsError::SectorSize(s),
            GeometryError::Unaligned { len, sector_size } => {
                XtsError::Unaligned { len, sector_size }
            }
            GeometryError::Lengths { src, dst } => XtsError::Lengths { src, dst },
            other => XtsError::Kernel(other),
        }
    }
}

/// AES-XTS keyed with a LUKS volume key (first half data key, second half tweak key).
pub struct Xts {
    inner: Inner,
    /// The same keys expanded for a VAES engine, when that is the kernel.
    #[cfg(target_arch = "x86_64")]
    direct: Option<Direct>,
    /// Chosen when keyed; the tests set it to run every kernel the CPU has.
    kernel: Kernel,
}

/// The engines that run the whole XTS pass themselves, bypassing the `aes` crate.
#[cfg(target_arch = "x86_64")]
enum Direct {
    Vaes(VaesKeys),
    Vaes512(Vaes512Keys),
}

enum Inner {
    Aes128 {
        data: Box<Aes128>,
        tweak: Box<Aes128>,
    },
    Aes256 {
        data: Box<Aes256>,
        tweak: Box<Aes256>,
    },
}

#[derive(Clone, Copy)]
enum Direction {
    Encrypt,
    Decrypt,
}

impl Xts {
    /// Keys the engine. Refuses equal halves, as the kernel's xts does in FIPS mode and as
    /// IEEE 1619 requires: equal halves make XTS a weak mode.
    pub fn new(key: &[u8]) -> Result<Self, XtsError> {
        if !self_test::passed() {
            return Err(XtsError::SelfTest);
        }
        Self::with_kernel(key, Kernel::best())
    }

    /// [`Xts::new`] on the kernel named `name` instead of the best one, for benchmarks and
    /// comparisons: one of [`kernel_names`], and it must pass the known-answer test on this
    /// CPU.
    pub fn with_kernel_named(key: &[u8], name: &str) -> Result<Self, XtsError> {
        let kernel = Kernel::all()
            .into_iter()
            .find(|k| k.name() == name)
            .filter(|k| self_test::holds_with(*k))
            .ok_or_else(|| XtsError::NoSuchKernel {
                name: name.to_string(),
                available: kernel_names().join(", "),
            })?;
        Self::with_kernel(key, kernel)
    }

    /// The name of the kernel this engine runs (one of [`kernel_names`]).
    pub fn kernel_name(&self) -> &'static str {
        self.kernel.name()
    }

    /// [`Xts::new`] without the known-answer test (which itself needs an engine), on the
    /// given kernel (the CPU must have its features).
    fn with_kernel(key: &[u8], kernel: Kernel) -> Result<Self, XtsError> {
        let (data_key, tweak_key) = key.split_at(key.len() / 2);
        let inner = match key.len() {
            32 => Inner::Aes128 {
                data: Box::new(new_cipher(data_key)?),
                tweak: Box::new(new_cipher(tweak_key)?),
            },
            64 => Inner::Aes256 {
                data: Box::new(new_cipher(data_key)?),
                tweak: Box::new(new_cipher(tweak_key)?),
            },
            n => return Err(XtsError::KeyLength(n)),
        };
        if data_key == tweak_key {
            return Err(XtsError::EqualHalves);
        }
        Ok(Self {
            inner,
            #[cfg(target_arch = "x86_64")]
            direct: match kernel {
                Kernel::Vaes512 => Vaes512Keys::new(data_key, tweak_key).map(Direct::Vaes512),
                Kernel::Vaes => VaesKeys::new(data_key, tweak_key).map(Direct::Vaes),
                _ => None,
            },
            kernel,
        })
    }

    /// Bits of the whole XTS key (256 or 512), as cryptsetup counts them.
    pub fn key_bits(&self) -> u32 {
        match self.inner {
            Inner::Aes128 { .. } => 256,
            Inner::Aes256 { .. } => 512,
        }
    }

    /// Encrypts whole sectors in place. `first_iv` is the IV of the first sector in 512-byte
    /// units; sector `k` of `buf` gets `first_iv + k * sector_size / 512`.
    pub fn encrypt_sectors(
        &self,
        buf: &mut [u8],
        sector_size: usize,
        first_iv: u64,
    ) -> Result<(), XtsError> {
        self.process(buf, sector_size, first_iv, Direction::Encrypt)
    }

    /// Decrypts whole sectors in place; the inverse of [`Xts::encrypt_sectors`].
    pub fn decrypt_sectors(
        &self,
        buf: &mut [u8],
        sector_size: usize,
        first_iv: u64,
    ) -> Result<(), XtsError> {
        self.process(buf, sector_size, first_iv, Direction::Decrypt)
    }

    /// Whether [`Xts::encrypt_sectors_from`] ciphers out of place (the VAES engines); the
    /// other kernels copy `src` into `dst` first and cipher there.
    pub fn ciphers_out_of_place(&self) -> bool {
        #[cfg(target_arch = "x86_64")]
        return self.direct.is_some();
        #[cfg(not(target_arch = "x86_64"))]
        false
    }

    /// [`Xts::encrypt_sectors`] of `src` into `dst` (of the same length), reading each byte of
    /// `src` once: with `src` a file's mapped page cache, no copy comes before the cipher.
    pub fn encrypt_sectors_from(
        &self,
        src: &[u8],
        dst: &mut [u8],
        sector_size: usize,
        first_iv: u64,
    ) -> Result<(), XtsError> {
        self.process_from(src, dst, sector_size, first_iv, Direction::Encrypt)
    }

    /// [`Xts::decrypt_sectors`] of `src` into `dst` (of the same length).
    pub fn decrypt_sectors_from(
        &self,
        src: &[u8],
        dst: &mut [u8],
        sector_size: usize,
        first_iv: u64,
    ) -> Result<(), XtsError> {
        self.process_from(src, dst, sector_size, first_iv, Direction::Decrypt)
    }

    fn process_from(
        &self,
        src: &[u8],
        dst: &mut [u8],
        sector_size: usize,
        first_iv: u64,
        dir: Direction,
    ) -> Result<(), XtsError> {
        bifs_sys::xts::check_same_len(src.len(), dst.len())?;
        check_geometry(dst.len(), sector_size)?;
        #[cfg(target_arch = "x86_64")]
        if let Some(direct) = &self.direct {
            let iv_step = (sector_size / IV_UNIT) as u64;
            let encrypt = matches!(dir, Direction::Encrypt);
            match direct {
                Direct::Vaes512(k) => {
                    k.sectors_from(encrypt, src, dst, sector_size, first_iv, iv_step)
                }
                Direct::Vaes(k) => {
                    k.sectors_from(encrypt, src, dst, sector_size, first_iv, iv_step)
                }
            }?;
            return Ok(());
        }
        // The other kernels cipher in place: the copy they need first.
        dst.copy_from_slice(src);
        self.process(dst, sector_size, first_iv, dir)
    }

    fn process(
        &self,
        buf: &mut [u8],
        sector_size: usize,
        first_iv: u64,
        dir: Direction,
    ) -> Result<(), XtsError> {
        check_geometry(buf.len(), sector_size)?;
        #[cfg(target_arch = "x86_64")]
        if let Some(direct) = &self.direct {
            let iv_step = (sector_size / IV_UNIT) as u64;
            match (direct, dir) {
                (Direct::Vaes512(k), Direction::Encrypt) => {
                    k.encrypt_sectors(buf, sector_size, first_iv, iv_step)
                }
                (Direct::Vaes512(k), Direction::Decrypt) => {
                    k.decrypt_sectors(buf, sector_size, first_iv, iv_step)
                }
                (Direct::Vaes(k), Direction::Encrypt) => {
                    k.encrypt_sectors(buf, sector_size, first_iv, iv_step)
                }
                (Direct::Vaes(k), Direction::Decrypt) => {
                    k.decrypt_sectors(buf, sector_size, first_iv, iv_step)
                }
            }?;
            return Ok(());
        }
        let job = Job {
            sector_size,
            first_iv,
            dir,
            kernel: self.kernel,
        };
        match &self.inner {
            Inner::Aes128 { data, tweak } => process_with(&**data, &**tweak, buf, job),
            Inner::Aes256 { data, tweak } => process_with(&**data, &**tweak, buf, job),
        }
    }
}

fn new_cipher<C: KeyInit>(key: &[u8]) -> Result<C, XtsError> {
    C::new_from_slice(key).map_err(|_| XtsError::KeyLength(key.len() * 2))
}

/// Whole sectors of a size LUKS2 allows (a power of two from 512 to 4096): the kernels' rule.
fn check_geometry(len: usize, sector_size: usize) -> Result<(), XtsError> {
    Ok(bifs_sys::xts::check_sectors(len, sector_size)?)
}

/// Sectors whose first tweaks are encrypted in one `encrypt_blocks` call: with 4 KiB
/// sectors that is 256 KiB of data per group, and the tweak cipher's key schedule is
/// broadcast once per group instead of once per sector.
const TWEAK_GROUP: usize = 64;

/// Upper bound of [`chunk_blocks`]: the per-chunk tweak array lives on the stack (4 KiB).
const MAX_CHUNK: usize = 256;

/// What one `process` call does, apart from the keys and the data.
#[derive(Clone, Copy)]
struct Job {
    sector_size: usize,
    first_iv: u64,
    dir: Direction,
    kernel: Kernel,
}

/// The code that derives tweaks and XORs them in: the widest the CPU runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kernel {
    Portable,
    /// The whole pass in 512-bit VAES registers ([`Vaes512Keys`]), on CPUs with AVX-512.
    #[cfg(target_arch = "x86_64")]
    Vaes512,
    /// The whole pass (tweaks, XORs and AES rounds) in 256-bit VAES registers
    /// ([`VaesKeys`]), bypassing the `aes` crate's backend.
    #[cfg(target_arch = "x86_64")]
    Vaes,
    /// The AVX-512 or AVX2 tweak kernel around the `aes` backend.
    #[cfg(target_arch = "x86_64")]
    Wide(TweakKernel),
}

impl Kernel {
    /// The kernel every [`Xts::new`] of this process uses.
    fn best() -> Kernel {
        static BEST: std::sync::OnceLock<Kernel> = std::sync::OnceLock::new();
        *BEST.get_or_init(Kernel::pick)
    }

    fn pick() -> Kernel {
        // The VAES engines run instructions of their own (VAES, VPCLMULQDQ, AVX-512) outside
        // the `aes` crate; like the probe in vendor/cpufeatures, each must show that it gets
        // them right (an emulator may not), else the next kernel does the work.
        Kernel::all()
            .into_iter()
            .find(|k| !k.is_direct() || self_test::holds_with(*k))
            .unwrap_or(Kernel::Portable)
    }

    /// The kernels this CPU has the instructions for, the fastest first.
    fn all() -> Vec<Kernel> {
        #[allow(unused_mut)]
        let mut all = Vec::new();
        #[cfg(target_arch = "x86_64")]
        {
            if Vaes512Keys::available() {
                all.push(Kernel::Vaes512);
            }
            if VaesKeys::available() {
                all.push(Kernel::Vaes);
            }
            all.extend(
                [TweakKernel::avx512(), TweakKernel::avx2()]
                    .into_iter()
                    .flatten()
                    .map(Kernel::Wide),
            );
        }
        all.push(Kernel::Portable);
        all
    }

    /// Whether this kernel is a VAES engine that ciphers without the `aes` crate.
    fn is_direct(self) -> bool {
        #[cfg(target_arch = "x86_64")]
        if matches!(self, Kernel::Vaes512 | Kernel::Vaes) {
            return true;
        }
        false
    }

    fn name(self) -> &'static str {
        match self {
            Kernel::Portable => "portable",
            #[cfg(target_arch = "x86_64")]
            Kernel::Vaes512 => "vaes512",
            #[cfg(target_arch = "x86_64")]
            Kernel::Vaes => "vaes256",
            #[cfg(target_arch = "x86_64")]
            Kernel::Wide(w) if Some(w) == TweakKernel::avx512() => "avx512",
            #[cfg(target_arch = "x86_64")]
            Kernel::Wide(_) => "avx2",
        }
    }
}

/// The names of the XTS kernels this CPU has the instructions for, the fastest first (the one
/// [`Xts::new`] picks unless it fails its known-answer test): `vaes512` (the whole pass in
/// 512-bit VAES registers), `vaes256` (in 256-bit ones), `avx512` and `avx2` (tweak kernels
/// around the `aes` crate's backend), `portable`.
pub fn kernel_names() -> Vec<&'static str> {
    Kernel::all().into_iter().map(Kernel::name).collect()
}

fn process_with<C>(data: &C, tweak: &C, buf: &mut [u8], job: Job) -> Result<(), XtsError>
where
    C: BlockCipherEncrypt + BlockCipherDecrypt + BlockSizeUser<BlockSize = U16>,
{
    let Job {
        sector_size,
        first_iv,
        dir,
        kernel,
    } = job;
    let blocks_per_sector = sector_size / 16;
    let mut outcome = Ok(());
    let iv_step = (sector_size / IV_UNIT) as u64;
    let (blocks, _) = Block::slice_as_chunks_mut(buf);
    let mut iv = first_iv;
    for group in blocks.chunks_mut(TWEAK_GROUP * blocks_per_sector) {
        let sectors = group.len() / blocks_per_sector;
        // The first tweak of each sector: its IV (little-endian, as plain64) encrypted with
        // the tweak key, all of the group's in one call.
        let mut first = [Block::default(); TWEAK_GROUP];
        let first = &mut first[..sectors];
        for t in first.iter_mut() {
            let mut le = [0u8; 16];
            le[..8].copy_from_slice(&iv.to_le_bytes());
            *t = le.into();
            iv = iv.wrapping_add(iv_step);
        }
        tweak.encrypt_blocks(first);
        let pass = Pass {
            blocks: group,
            first,
            sector_size,
            kernel,
            outcome: &mut outcome,
        };
        // One pass per chunk of the data, inside the AES backend (VAES-512, VAES-256 or
        // AES-NI as the CPU has): XOR tweaks, cipher, XOR again while the chunk is in L1.
        match dir {
            Direction::Encrypt => data.encrypt_with_backend(pass),
            Direction::Decrypt => data.decrypt_with_backend(pass),
        }
        outcome?;
    }
    Ok(())
}

/// One group of whole sectors and the encrypted first tweak of each; `outcome` is where the
/// pass says whether a kernel refused a chunk (the backend's closures return nothing).
struct Pass<'a> {
    blocks: &'a mut [Block],
    first: &'a [Block],
    sector_size: usize,
    kernel: Kernel,
    outcome: &'a mut Result<(), GeometryError>,
}

impl BlockSizeUser for Pass<'_> {
    type BlockSize = U16;
}

impl BlockCipherEncClosure for Pass<'_> {
    #[inline(always)]
    fn call<B: BlockCipherEncBackend<BlockSize = U16>>(self, backend: &B) {
        let par = B::ParBlocksSize::USIZE;
        self.run(par, |chunk| {
            let (pars, tail) = ParBlocks::<B>::slice_as_chunks_mut(chunk);
            for p in pars {
                backend.encrypt_par_blocks_inplace(p);
            }
            backend.encrypt_tail_blocks_inplace(tail);
        });
    }
}

impl BlockCipherDecClosure for Pass<'_> {
    #[inline(always)]
    fn call<B: BlockCipherDecBackend<BlockSize = U16>>(self, backend: &B) {
        let par = B::ParBlocksSize::USIZE;
        self.run(par, |chunk| {
            let (pars, tail) = ParBlocks::<B>::slice_as_chunks_mut(chunk);
            for p in pars {
                backend.decrypt_par_blocks_inplace(p);
            }
            backend.decrypt_tail_blocks_inplace(tail);
        });
    }
}

/// Blocks per chunk: a multiple of the backend's parallel width (so no chunk ends in a slow
/// one-block-at-a-time tail) and of [`LANES`], at least 64 (1 KiB, comfortably in L1).
fn chunk_blocks(par: usize) -> usize {
    let par = par.max(1);
    let mut step = par;
    while !step.is_multiple_of(LANES) {
        step += par;
    }
    let chunk = step * 64usize.div_ceil(step);
    if chunk <= MAX_CHUNK {
        chunk
    } else {
        MAX_CHUNK
    }
}

impl Pass<'_> {
    #[inline(always)]
    fn run(self, par: usize, cipher: impl FnMut(&mut [Block])) {
        // The tweak array is zeroed on every call: 4 KiB of stores would cost as much as a
        // 512-byte sector's AES, so short calls and chunks of up to 64 blocks get 1 KiB.
        let chunk_len = chunk_blocks(par).min(self.blocks.len());
        let Pass {
            blocks,
            first,
            sector_size,
            kernel,
            outcome,
        } = self;
        let chain = TweakChain::new(Block::cast_slice_to_core(first), sector_size);
        *outcome = chain.and_then(|chain| {
            if chunk_len <= 64 {
                run_with::<64>(blocks, chain, kernel, chunk_len, cipher)
            } else {
                run_with::<MAX_CHUNK>(blocks, chain, kernel, chunk_len, cipher)
            }
        });
    }
}

/// The pass over `blocks`, `chunk_len` blocks at a time: tweaks computed and XORed in, the
/// chunk ciphered, the tweaks XORed in again.
#[inline(always)]
fn run_with<const N: usize>(
    blocks: &mut [Block],
    mut chain: TweakChain<'_>,
    kernel: Kernel,
    chunk_len: usize,
    mut cipher: impl FnMut(&mut [Block]),
) -> Result<(), GeometryError> {
    let mut tweaks = [0u128; N];
    for chunk in blocks.chunks_mut(chunk_len) {
        let tw = &mut tweaks[..chunk.len()];
        // Sectors hold a multiple of 32 blocks and the chunk length is a multiple of 16, so
        // every chunk is whole steps of the chain; the kernels check it anyway.
        let raw = Block::cast_slice_to_core_mut(chunk);
        match kernel {
            Kernel::Portable => portable::pre_xor(raw, tw, &mut chain)?,
            // Only if `VaesKeys::new` found no VAES, which `Kernel::all` checked first.
            #[cfg(target_arch = "x86_64")]
            Kernel::Vaes | Kernel::Vaes512 => portable::pre_xor(raw, tw, &mut chain)?,
            #[cfg(target_arch = "x86_64")]
            Kernel::Wide(wide) => wide.pre_xor(raw, tw, &mut chain)?,
        }
        cipher(chunk);
        let raw = Block::cast_slice_to_core_mut(chunk);
        match kernel {
            Kernel::Portable => portable::xor(raw, tw),
            #[cfg(target_arch = "x86_64")]
            Kernel::Vaes | Kernel::Vaes512 => portable::xor(raw, tw),
            #[cfg(target_arch = "x86_64")]
            Kernel::Wide(wide) => wide.xor(raw, tw)?,
        }
    }
    Ok(())
}

/// Tweak generation and XOR on plain `u128`s: any CPU.
mod portable {
    use super::{GeometryError, TweakChain, LANES};

    /// Computes the chunk's tweaks into `tw` and XORs them into `chunk`.
    #[inline(always)]
    pub(super) fn pre_xor(
        chunk: &mut [[u8; 16]],
        tw: &mut [u128],
        chain: &mut TweakChain<'_>,
    ) -> Result<(), GeometryError> {
        chain.check_chunk(chunk.len(), tw.len())?;
        for (bs, ts) in chunk
            .chunks_exact_mut(LANES)
            .zip(tw.chunks_exact_mut(LANES))
        {
            let Some(lanes) = chain.next_lanes() else {
                // `check_chunk` refused a chunk longer than the chain.
                break;
            };
            for ((b, t), l) in bs.iter_mut().zip(ts.iter_mut()).zip(lanes) {
                *t = *l;
                xor_block(b, *l);
            }
        }
        Ok(())
    }

    #[inline(always)]
    pub(super) fn xor(chunk: &mut [[u8; 16]], tw: &[u128]) {
        for (b, t) in chunk.iter_mut().zip(tw) {
            xor_block(b, *t);
        }
    }

    #[inline(always)]
    fn xor_block(b: &mut [u8; 16], t: u128) {
        *b = (u128::from_le_bytes(*b) ^ t).to_le_bytes();
    }
}

/// A known-answer test of the whole engine, once per process, before the first key is used.
///
/// The engine runs on whatever AES instructions the `aes` crate finds, and a CPU that reports
/// an instruction is not always one that computes it: qemu 7.2's TCG (Debian 12's qemu, which
/// runs our dm-crypt VM) reports VAES and gets the upper 128-bit lane of a 256-bit `VAESENC`
/// wrong. An engine that got AES wrong would write images that nothing else opens, and read
/// garbage out of good ones, so bifs refuses to run instead (as the Linux crypto API tests an
/// implementation before it registers it).
mod self_test {
    use std::sync::OnceLock;

    use super::{Kernel, Xts};

    /// IEEE 1619-2007 vectors 4 (XTS-AES-128, data unit 0) and 10 (XTS-AES-256, data unit
    /// 0xff): key, data unit, the first and the last 32 bytes of the 512-byte ciphertext of
    /// the bytes 0, 1, …, 255, 0, …, 255.
    pub(super) const VECTORS: [(&str, u64, &str, &str); 2] = [
        (
            "2718281828459045235360287471352631415926535897932384626433832795",
            0,
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

    pub(super) fn passed() -> bool {
        static PASSED: OnceLock<bool> = OnceLock::new();
        *PASSED.get_or_init(|| {
            let ok = holds_with(Kernel::best());
            if !ok {
                tracing::error!("AES-XTS known-answer test failed on this CPU");
            }
            ok
        })
    }

    /// Both vectors on one kernel.
    pub(super) fn holds_with(kernel: Kernel) -> bool {
        VECTORS.iter().all(|v| vector_holds(*v, kernel))
    }

    /// Encrypts the vector's plaintext (a 4 KiB buffer: eight copies, so that the backend's
    /// batched path runs as on real sectors) and decrypts it again.
    pub(super) fn vector_holds(
        (key, unit, head, tail): (&str, u64, &str, &str),
        kernel: Kernel,
    ) -> bool {
        let (Ok(key), Ok(head), Ok(tail)) =
            (hex::decode(key), hex::decode(head), hex::decode(tail))
        else {
            return false;
        };
        let Ok(xts) = Xts::with_kernel(&key, kernel) else {
            return false;
        };
        let plain: Vec<u8> = (0..4096).map(|i| i as u8).collect();
        let mut buf = plain.clone();
        // Sector k of the buffer has IV unit + k: only sector 0 is the published vector.
        if xts.encrypt_sectors(&mut buf, 512, unit).is_err() {
            return false;
        }
        let ct = &buf[..512];
        let encrypted_right = ct[..32] == head[..] && ct[480..] == tail[..];
        encrypted_right && xts.decrypt_sectors(&mut buf, 512, unit).is_ok() && buf == plain
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use xts_mode::{get_tweak_default, Xts128};

    /// IEEE 1619-2007 vectors 4 (XTS-AES-128) and 10 (XTS-AES-256), through the same check
    /// `Xts::new` runs once per process, on every kernel this CPU can run.
    #[test]
    fn ieee1619_vectors() {
        for kernel in kernels() {
            for v in self_test::VECTORS {
                assert!(
                    self_test::vector_holds(v, kernel),
                    "{kernel:?}: vector with data unit {}",
                    v.1
                );
            }
        }
        assert!(self_test::passed());
    }

    /// The kernels this CPU has, the one `Xts::new` picks first.
    fn kernels() -> Vec<Kernel> {
        let mut all = vec![Kernel::best()];
        all.extend(Kernel::all());
        all
    }

    /// On a CPU with VAES a VAES engine is the one picked, the 512-bit one where the CPU has
    /// AVX-512 (unless it failed its known-answer check, which `ieee1619_vectors` would show),
    /// and it really runs.
    #[cfg(target_arch = "x86_64")]
    #[test]
    fn vaes_engine_is_picked_when_the_cpu_has_it() {
        if !VaesKeys::available() {
            eprintln!("SKIPPED vaes_engine_is_picked_when_the_cpu_has_it: this CPU has no VAES");
            return;
        }
        let xts = Xts::new(&[[1u8; 32], [2u8; 32]].concat()).unwrap();
        if Vaes512Keys::available() {
            assert_eq!(Kernel::best(), Kernel::Vaes512);
            assert!(matches!(xts.direct, Some(Direct::Vaes512(_))));
            assert_eq!(xts.kernel_name(), "vaes512");
        } else {
            eprintln!(
                "vaes_engine_is_picked_when_the_cpu_has_it: this CPU has no AVX-512F/BW, so \
                 only the 256-bit VAES engine is checked"
            );
            assert_eq!(Kernel::best(), Kernel::Vaes);
            assert!(matches!(xts.direct, Some(Direct::Vaes(_))));
        }
        let xts = Xts::with_kernel_named(&[[1u8; 32], [2u8; 32]].concat(), "vaes256").unwrap();
        assert!(matches!(xts.direct, Some(Direct::Vaes(_))));
        let avx2 = Kernel::Wide(TweakKernel::avx2().unwrap());
        let xts = Xts::with_kernel(&[[1u8; 16], [2u8; 16]].concat(), avx2).unwrap();
        assert!(xts.direct.is_none());
    }

    /// Every kernel can be asked for by name (what the benchmark does), and one this CPU does
    /// not run, or that does not exist, is refused with the list of those it does.
    #[test]
    fn kernels_by_name() {
        let key = [[1u8; 16], [2u8; 16]].concat();
        let names = kernel_names();
        assert_eq!(names.last(), Some(&"portable"));
        assert_eq!(names[0], Kernel::best().name());
        for name in &names {
            let xts = Xts::with_kernel_named(&key, name).unwrap();
            assert_eq!(xts.kernel_name(), *name);
        }
        match Xts::with_kernel_named(&key, "aes-ni-9000") {
            Err(XtsError::NoSuchKernel { name, available }) => {
                assert_eq!(name, "aes-ni-9000");
                assert!(available.ends_with("portable"), "{available}");
            }
            Err(e) => panic!("wrong error: {e}"),
            Ok(_) => panic!("an unknown kernel was accepted"),
        }
    }

    /// The check can fail: a wrong expected ciphertext (one bit) or a wrong data unit.
    #[test]
    fn known_answer_check_detects_a_wrong_answer() {
        let (key, unit, head, tail) = self_test::VECTORS[1];
        let mut flipped = head.to_string();
        flipped.replace_range(0..1, "0");
        for kernel in kernels() {
            assert!(!self_test::vector_holds(
                (key, unit, &flipped, tail),
                kernel
            ));
            assert!(!self_test::vector_holds(
                (key, unit + 1, head, tail),
                kernel
            ));
        }
    }

    /// Against `xts-mode` (block at a time, serial tweaks) as an independent implementation:
    /// every sector size, calls of one to many sectors (the VAES engine encrypts first tweaks
    /// eight sectors at a time, one alone), IVs in 512-byte units, an odd starting IV; with
    /// the kernel this CPU picks and with every other kernel it can run.
    #[test]
    fn matches_xts_mode_oracle() {
        oracle(Kernel::best());
    }

    #[test]
    fn portable_kernel_matches_xts_mode_oracle() {
        oracle(Kernel::Portable);
    }

    #[cfg(target_arch = "x86_64")]
    #[test]
    fn vaes_kernel_matches_xts_mode_oracle() {
        if !VaesKeys::available() {
            eprintln!("SKIPPED vaes_kernel_matches_xts_mode_oracle: this CPU has no VAES");
            return;
        }
        oracle(Kernel::Vaes);
    }

    #[cfg(target_arch = "x86_64")]
    #[test]
    fn vaes512_kernel_matches_xts_mode_oracle() {
        if !Vaes512Keys::available() {
            eprintln!(
                "SKIPPED vaes512_kernel_matches_xts_mode_oracle: this CPU has no VAES with \
                 AVX-512F/BW"
            );
            return;
        }
        oracle(Kernel::Vaes512);
    }

    /// The 512-bit VAES engine against the portable kernel (the `aes` crate's rounds, u128
    /// tweaks) and the 256-bit VAES engine on random keys and data: both key sizes, both
    /// directions, every sector size, one and many sectors per call, IV steps of 1 (through
    /// bifs-sys's engines and one portable call per sector) and of the sector size in 512-byte
    /// units (`Xts`'s own), first IVs near the u64 wraparound.
    #[cfg(target_arch = "x86_64")]
    #[test]
    fn vaes512_kernel_matches_portable_and_vaes256() {
        if !Vaes512Keys::available() {
            eprintln!(
                "SKIPPED vaes512_kernel_matches_portable_and_vaes256: this CPU has no VAES \
                 with AVX-512F/BW"
            );
            return;
        }
        let mut seed = 0x2545f4914f6cdd1du64;
        let mut next = || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        for round in 0..4 {
            for key_len in [32usize, 64] {
                let key: Vec<u8> = (0..key_len).map(|_| next() as u8).collect();
                let (d, t) = key.split_at(key_len / 2);
                let wide = Xts::with_kernel(&key, Kernel::Vaes512).unwrap();
                let narrow = Xts::with_kernel(&key, Kernel::Vaes).unwrap();
                let portable = Xts::with_kernel(&key, Kernel::Portable).unwrap();
                let wide_sys = Vaes512Keys::new(d, t).unwrap();
                let narrow_sys = VaesKeys::new(d, t).unwrap();
                for sector in [512usize, 1024, 2048, 4096] {
                    let count = [1usize, 7, 8, 9, 40][round + next() as usize % 2];
                    let data: Vec<u8> = (0..sector * count).map(|_| next() as u8).collect();
                    let near_wrap = u64::MAX - (next() % 16);
                    for first_iv in [next() >> 8, near_wrap] {
                        let what =
                            format!("key {key_len}, {count} sectors of {sector}, iv {first_iv}");
                        for (i, dir) in [Direction::Encrypt, Direction::Decrypt].iter().enumerate()
                        {
                            // `Xts`: IV step sector / 512.
                            let run = |xts: &Xts| {
                                let mut b = data.clone();
                                xts.process(&mut b, sector, first_iv, *dir).unwrap();
                                b
                            };
                            let ours = run(&wide);
                            assert!(ours == run(&portable), "{what} {i}: vs portable");
                            assert!(ours == run(&narrow), "{what} {i}: vs vaes256");
                            assert!(ours != data);
                            // IV step 1.
                            let mut ours = data.clone();
                            let mut theirs = data.clone();
                            let mut each = data.clone();
                            if i == 0 {
                                wide_sys
                                    .encrypt_sectors(&mut ours, sector, first_iv, 1)
                                    .unwrap();
                                narrow_sys
                                    .encrypt_sectors(&mut theirs, sector, first_iv, 1)
                                    .unwrap();
                            } else {
                                wide_sys
                                    .decrypt_sectors(&mut ours, sector, first_iv, 1)
                                    .unwrap();
                                narrow_sys
                                    .decrypt_sectors(&mut theirs, sector, first_iv, 1)
                                    .unwrap();
                            }
                            for (k, s) in each.chunks_mut(sector).enumerate() {
                                let iv = first_iv.wrapping_add(k as u64);
                                portable.process(s, sector, iv, *dir).unwrap();
                            }
                            assert!(ours == theirs, "{what} {i}: step 1 vs vaes256");
                            assert!(ours == each, "{what} {i}: step 1 vs portable");
                        }
                    }
                }
            }
        }
    }

    #[cfg(target_arch = "x86_64")]
    #[test]
    fn avx2_kernel_matches_xts_mode_oracle() {
        let Some(avx2) = TweakKernel::avx2() else {
            eprintln!("SKIPPED avx2_kernel_matches_xts_mode_oracle: this CPU has no AVX2");
            return;
        };
        oracle(Kernel::Wide(avx2));
    }

    #[cfg(target_arch = "x86_64")]
    #[test]
    fn avx512_kernel_matches_xts_mode_oracle() {
        let Some(avx512) = TweakKernel::avx512() else {
            eprintln!("SKIPPED avx512_kernel_matches_xts_mode_oracle: this CPU has no AVX-512");
            return;
        };
        oracle(Kernel::Wide(avx512));
    }

    /// An out-of-place pass needs as many source bytes as destination bytes.
    #[test]
    fn out_of_place_lengths_must_match() {
        let xts = Xts::new(&(0..64u8).collect::<Vec<_>>()).unwrap();
        let mut dst = vec![0u8; 1024];
        assert!(matches!(
            xts.encrypt_sectors_from(&[0u8; 512], &mut dst, 512, 0),
            Err(XtsError::Lengths {
                src: 512,
                dst: 1024
            })
        ));
    }

    fn oracle(kernel: Kernel) {
        use cipher::KeyInit;
        let mut seed = 0x9e3779b97f4a7c15u64;
        let mut next = || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed as u8
        };
        for key_len in [32usize, 64] {
            let key: Vec<u8> = (0..key_len).map(|_| next()).collect();
            let data: Vec<u8> = (0..64 * 1024).map(|_| next()).collect();
            let xts = Xts::with_kernel(&key, kernel).unwrap();
            #[cfg(target_arch = "x86_64")]
            assert_eq!(xts.direct.is_some(), kernel.is_direct());
            for (sector, count) in [512usize, 1024, 2048, 4096].into_iter().flat_map(|s| {
                [1usize, 3, 9]
                    .map(|c| (s, c))
                    .into_iter()
                    .chain([(s, data.len() / s)])
            }) {
                let first_iv = 12345u64;
                let data = &data[..sector * count];
                let mut ours = data.to_vec();
                xts.encrypt_sectors(&mut ours, sector, first_iv).unwrap();
                // Out of place (a mapped source into a reply) is the same pass.
                let mut from = vec![0u8; data.len()];
                xts.encrypt_sectors_from(data, &mut from, sector, first_iv)
                    .unwrap();
                assert!(
                    from == ours,
                    "{kernel:?}: key {key_len}, {count} sectors of {sector}: out of place differs"
                );
                let mut back = vec![0u8; data.len()];
                xts.decrypt_sectors_from(&from, &mut back, sector, first_iv)
                    .unwrap();
                assert!(
                    back == data,
                    "{kernel:?}: key {key_len}, {count} sectors of {sector}: out-of-place round trip"
                );

                let mut theirs = data.to_vec();
                let h = key_len / 2;
                for (k, chunk) in theirs.chunks_mut(sector).enumerate() {
                    let iv = u128::from(first_iv) + (k * sector / 512) as u128;
                    if key_len == 32 {
                        let x = Xts128::new(
                            Aes128::new_from_slice(&key[..h]).unwrap(),
                            Aes128::new_from_slice(&key[h..]).unwrap(),
                        );
                        x.encrypt_sector(chunk, get_tweak_default(iv));
                    } else {
                        let x = Xts128::new(
                            Aes256::new_from_slice(&key[..h]).unwrap(),
                            Aes256::new_from_slice(&key[h..]).unwrap(),
                        );
                        x.encrypt_sector(chunk, get_tweak_default(iv));
                    }
                }
                assert!(
                    ours == theirs,
                    "{kernel:?}: key {key_len}, {count} sectors of {sector}: differs from xts-mode"
                );
                xts.decrypt_sectors(&mut ours, sector, first_iv).unwrap();
                assert!(
                    ours == data,
                    "{kernel:?}: key {key_len}, {count} sectors of {sector}: round trip"
                );
            }
        }
    }

    #[test]
    fn refuses_bad_geometry_and_keys() {
        let xts = Xts::new(
            &[1u8; 16]
                .iter()
                .chain(&[2u8; 16])
                .copied()
                .collect::<Vec<_>>(),
        )
        .unwrap();
        let mut buf = vec![0u8; 1000];
        assert!(matches!(
            xts.encrypt_sectors(&mut buf, 512, 0),
            Err(XtsError::Unaligned { .. })
        ));
        assert_eq!(
            xts.encrypt_sectors(&mut buf, 1000, 0),
            Err(XtsError::SectorSize(1000))
        );
        assert_eq!(Xts::new(&[0u8; 48]).err(), Some(XtsError::KeyLength(48)));
        assert_eq!(Xts::new(&[7u8; 64]).err(), Some(XtsError::EqualHalves));
    }
}
