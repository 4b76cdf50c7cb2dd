//! SHA-512 through OpenSSL's libcrypto (EVP), for the copier.
//!
//! Why not the `sha2` crate: the copier hashes every byte it writes, and the hash is the one
//! serial stage of a copy (reading and XTS spread over the cores). On the benchmark machine
//! (AMD EPYC, no SHA-512 instructions) a `perf` profile of `bifs encrypt` of 256 MiB counted
//! about 25% fewer samples in libcrypto's SHA-512 than in `sha2`'s AVX2 code (and `ring`
//! picks its portable code on this CPU). bifs links
//! libcrypto already (libcryptsetup needs it; libcryptsetup-dev pulls in libssl-dev), so this
//! adds no dependency. `sha2` stays for the small hashes elsewhere and as the tests' oracle.
//!
//! Each unsafe block (the libcrypto FFI) says why with `SAFETY:`.

use std::ffi::c_void;
use std::ptr::NonNull;

#[allow(non_camel_case_types)]
type EVP_MD_CTX = c_void;
#[allow(non_camel_case_types)]
type EVP_MD = c_void;

#[link(name = "crypto")]
unsafe extern "C" {
    fn EVP_MD_CTX_new() -> *mut EVP_MD_CTX;
    fn EVP_MD_CTX_free(ctx: *mut EVP_MD_CTX);
    fn EVP_sha512() -> *const EVP_MD;
    fn EVP_DigestInit_ex(ctx: *mut EVP_MD_CTX, md: *const EVP_MD, engine: *mut c_void) -> i32;
    fn EVP_DigestUpdate(ctx: *mut EVP_MD_CTX, data: *const c_void, len: usize) -> i32;
    fn EVP_DigestFinal_ex(ctx: *mut EVP_MD_CTX, out: *mut u8, len: *mut u32) -> i32;
}

#[derive(Debug, thiserror::Error)]
#[error("libcrypto SHA-512: {0} failed")]
pub struct Sha512Error(&'static str);

/// A running SHA-512.
pub struct Sha512 {
    ctx: NonNull<EVP_MD_CTX>,
}

// SAFETY: an EVP_MD_CTX is plain state owned by this value; it is used from one thread at a
// time (`&mut self`) and OpenSSL keeps no thread affinity for it.
unsafe impl Send for Sha512 {}

impl Sha512 {
    pub fn new() -> Result<Self, Sha512Error> {
        // SAFETY: plain constructor; a null return is handled.
        let ctx = NonNull::new(unsafe { EVP_MD_CTX_new() }).ok_or(Sha512Error("EVP_MD_CTX_new"))?;
        let me = Self { ctx };
        // SAFETY: `ctx` is a live context; EVP_sha512 returns a static method table.
        if unsafe { EVP_DigestInit_ex(me.ctx.as_ptr(), EVP_sha512(), std::ptr::null_mut()) } != 1 {
            return Err(Sha512Error("EVP_DigestInit_ex"));
        }
        Ok(me)
    }

    pub fn update(&mut self, data: &[u8]) -> Result<(), Sha512Error> {
        // SAFETY: `data` is valid for `data.len()` bytes; the context is initialized.
        if unsafe { EVP_DigestUpdate(self.ctx.as_ptr(), data.as_ptr().cast(), data.len()) } != 1 {
            return Err(Sha512Error("EVP_DigestUpdate"));
        }
        Ok(())
    }

    pub fn finish(self) -> Result<[u8; 64], Sha512Error> {
        let mut out = [0u8; 64];
        let mut len = 0u32;
        // SAFETY: `out` holds the 64 bytes SHA-512 writes.
        let ok = unsafe { EVP_DigestFinal_ex(self.ctx.as_ptr(), out.as_mut_ptr(), &mut len) };
        if ok != 1 || len != 64 {
            return Err(Sha512Error("EVP_DigestFinal_ex"));
        }
        Ok(out)
    }
}

impl Drop for Sha512 {
    fn drop(&mut self) {
        // SAFETY: the context was made by EVP_MD_CTX_new and is freed once.
        unsafe { EVP_MD_CTX_free(self.ctx.as_ptr()) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sha2::Digest;

    #[test]
    fn matches_sha2() {
        let data: Vec<u8> = (0..100_000u32).map(|i| (i * 7 + i / 13) as u8).collect();
        let mut h = Sha512::new().unwrap();
        h.update(&data[..777]).unwrap();
        h.update(&data[777..]).unwrap();
        assert_eq!(h.finish().unwrap()[..], sha2::Sha512::digest(&data)[..]);
    }
}
