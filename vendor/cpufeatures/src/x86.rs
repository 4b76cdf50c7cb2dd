//! x86/x86-64 CPU feature detection support.
//!
//! Portable, `no_std`-friendly implementation that relies on the x86 `CPUID`
//! instruction for feature detection.

/// Evaluate the given `$body` expression any of the supplied target features
/// are not enabled. Otherwise returns true.
///
/// The `$body` expression is not evaluated on SGX targets, and returns false
/// on these targets unless *all* supplied target features are enabled.
#[macro_export]
#[doc(hidden)]
macro_rules! __unless_target_features {
    ($($tf:tt),+ => $body:expr ) => {{
        #[cfg(not(all($(target_feature=$tf,)*)))]
        {
            #[cfg(not(any(target_env = "sgx", target_os = "none", target_os = "uefi")))]
            $body

            // CPUID is not available on SGX. Freestanding and UEFI targets
            // do not support SIMD features with default compilation flags.
            #[cfg(any(target_env = "sgx", target_os = "none", target_os = "uefi"))]
            false
        }

        #[cfg(all($(target_feature=$tf,)*))]
        true
    }};
}

/// Use CPUID to detect the presence of all supplied target features.
#[macro_export]
#[doc(hidden)]
macro_rules! __detect_target_features {
    ($($tf:tt),+) => {{
        #[cfg(target_arch = "x86")]
        use core::arch::x86::{__cpuid, __cpuid_count, CpuidResult};
        #[cfg(target_arch = "x86_64")]
        use core::arch::x86_64::{__cpuid, __cpuid_count, CpuidResult};

        unsafe fn cpuid(leaf: u32) -> CpuidResult {
            __cpuid(leaf)
        }

        unsafe fn cpuid_count(leaf: u32, sub_leaf: u32) -> CpuidResult {
            __cpuid_count(leaf, sub_leaf)
        }

        let cr = unsafe {
            [cpuid(1), cpuid_count(7, 0), cpuid_count(7, 1)]
        };

        $($crate::check!(cr, $tf) & )+ true
    }};
}

/// Check that OS supports required SIMD registers
#[macro_export]
#[doc(hidden)]
macro_rules! __xgetbv {
    ($cr:expr, $mask:expr) => {{
        #[cfg(target_arch = "x86")]
        use core::arch::x86 as arch;
        #[cfg(target_arch = "x86_64")]
        use core::arch::x86_64 as arch;

        // Check bits 26 and 27
        let xmask = 0b11 << 26;
        let xsave = $cr[0].ecx & xmask == xmask;
        if xsave {
            let xcr0 = unsafe { arch::_xgetbv(arch::_XCR_XFEATURE_ENABLED_MASK) };
            (xcr0 & $mask) == $mask
        } else {
            false
        }
    }};
}

macro_rules! __expand_check_macro {
    ($(($name:tt, $reg_cap:tt $(, $i:expr, $reg:ident, $offset:expr)*)),* $(,)?) => {
        #[macro_export]
        #[doc(hidden)]
        macro_rules! check {
            $(
                ($cr:expr, $name) => {{
                    // Register bits are listed here:
                    // https://wiki.osdev.org/CPU_Registers_x86#Extended_Control_Registers
                    let reg_cap = match $reg_cap {
                        // Bit 1
                        "xmm" => $crate::__xgetbv!($cr, 0b10),
                        // Bits 1 and 2
                        "ymm" => $crate::__xgetbv!($cr, 0b110),
                        // Bits 1, 2, 5, 6, and 7
                        "zmm" => $crate::__xgetbv!($cr, 0b1110_0110),
                        // bifs: VAES needs only AVX state for its 256-bit forms, and must
                        // compute them right (qemu 7.2's TCG does not). The probe executes
                        // VAES, AES-NI and AVX2, so it runs only when CPUID reports all three
                        // (VAES, AES, AVX2 bits) and the OS saves YMM state.
                        "ymm+vaes-probe" => {
                            ($cr[1].ecx & (1 << 9) != 0)
                                && ($cr[0].ecx & (1 << 25) != 0)
                                && ($cr[1].ebx & (1 << 5) != 0)
                                && $crate::__xgetbv!($cr, 0b110)
                                && unsafe { $crate::__vaes256_computes_right() }
                        }
                        _ => true,
                    };
                    reg_cap
                    $(
                        & ($cr[$i].$reg & (1 << $offset) != 0)
                    )*
                }};
            )*
        }
    };
}

__expand_check_macro! {
    ("sse3", "", 0, ecx, 0),
    ("pclmulqdq", "", 0, ecx, 1),
    ("ssse3", "", 0, ecx, 9),
    ("fma", "ymm", 0, ecx, 12, 0, ecx, 28),
    ("sse4.1", "", 0, ecx, 19),
    ("sse4.2", "", 0, ecx, 20),
    ("popcnt", "", 0, ecx, 23),
    ("aes", "", 0, ecx, 25),
    ("avx", "ymm", 0, ecx, 28),
    ("rdrand", "", 0, ecx, 30),

    ("mmx", "", 0, edx, 23),
    ("sse", "", 0, edx, 25),
    ("sse2", "", 0, edx, 26),

    ("sgx", "", 1, ebx, 2),
    ("bmi1", "", 1, ebx, 3),
    ("bmi2", "", 1, ebx, 8),
    ("avx2", "ymm", 1, ebx, 5, 0, ecx, 28),
    ("avx512f", "zmm", 1, ebx, 16),
    ("avx512dq", "zmm", 1, ebx, 17),
    ("rdseed", "", 1, ebx, 18),
    ("adx", "", 1, ebx, 19),
    ("avx512ifma", "zmm", 1, ebx, 21),
    ("avx512pf", "zmm", 1, ebx, 26),
    ("avx512er", "zmm", 1, ebx, 27),
    ("avx512cd", "zmm", 1, ebx, 28),
    ("sha", "", 1, ebx, 29),
    ("avx512bw", "zmm", 1, ebx, 30),
    ("avx512vl", "zmm", 1, ebx, 31),
    ("avx512vbmi", "zmm", 1, ecx, 1),
    ("avx512vbmi2", "zmm", 1, ecx, 6),
    ("gfni", "zmm", 1, ecx, 8),
    ("vaes", "ymm+vaes-probe", 1, ecx, 9),
    ("vpclmulqdq", "zmm", 1, ecx, 10),
    ("avx512bitalg", "zmm", 1, ecx, 12),
    ("avx512vpopcntdq", "zmm", 1, ecx, 14),

    ("sha512", "ymm", 2, eax, 0),
    ("sm3", "xmm", 2, eax, 1),
    ("sm4", "ymm", 2, eax, 2),
}

/// bifs: the four 256-bit VAES instructions against their 128-bit AES-NI forms on each lane.
/// qemu 7.2's TCG reports VAES and gets the upper lane of `VAESENC` wrong; a CPU like that
/// must not get the VAES backends.
///
/// # Safety
/// The CPU must have VAES, AES-NI and AVX2 and the OS must save YMM state (the `check!` arm
/// that calls this tests all of them first).
#[doc(hidden)]
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "aes,avx2,vaes")]
pub unsafe fn __vaes256_computes_right() -> bool {
    use core::arch::x86_64::*;

    // SAFETY: the CPU features are the caller's promise; the loads and stores stay inside
    // 16- and 32-byte arrays.
    unsafe {
        let a: [u8; 32] = core::array::from_fn(|i| (i * 29 + 1) as u8);
        let k: [u8; 32] = core::array::from_fn(|i| (i * 7 + 3) as u8);
        let va = _mm256_loadu_si256(a.as_ptr().cast());
        let vk = _mm256_loadu_si256(k.as_ptr().cast());
        let wide = [
            _mm256_aesenc_epi128(va, vk),
            _mm256_aesenclast_epi128(va, vk),
            _mm256_aesdec_epi128(va, vk),
            _mm256_aesdeclast_epi128(va, vk),
        ];
        for lane in 0..2 {
            let x = _mm_loadu_si128(a[lane * 16..].as_ptr().cast());
            let y = _mm_loadu_si128(k[lane * 16..].as_ptr().cast());
            let narrow = [
                _mm_aesenc_si128(x, y),
                _mm_aesenclast_si128(x, y),
                _mm_aesdec_si128(x, y),
                _mm_aesdeclast_si128(x, y),
            ];
            for (w, n) in wide.iter().zip(narrow.iter()) {
                let mut wb = [0u8; 32];
                let mut nb = [0u8; 16];
                _mm256_storeu_si256(wb.as_mut_ptr().cast(), *w);
                _mm_storeu_si128(nb.as_mut_ptr().cast(), *n);
                if wb[lane * 16..lane * 16 + 16] != nb {
                    return false;
                }
            }
        }
        true
    }
}

/// bifs: no probe on 32-bit x86, so no VAES there (bifs builds only for x86-64).
///
/// # Safety
/// None needed; `unsafe` to match the x86-64 signature.
#[doc(hidden)]
#[cfg(target_arch = "x86")]
pub unsafe fn __vaes256_computes_right() -> bool {
    false
}
