//! LUKS2 header + JSON parser, then an unlock attempt with a cheap passphrase under tight
//! `KdfLimits` (a hostile keyslot may ask for anything; the limits must refuse it first).
//!
//! The input is an image prefix. Before parsing, the SHA-256 checksum of every header copy
//! found at a legal offset is recomputed: otherwise almost every mutation would stop at the
//! checksum and the fuzzer would never reach the JSON metadata or the keyslot code.
#![no_main]

use bifs_core::io::MemSource;
use bifs_core::kdf::KdfLimits;
use bifs_core::keys::Passphrase;
use bifs_core::luks::{binary, LuksHeader};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut img = data.to_vec();
    for off in std::iter::once(0).chain(binary::HDR_SIZES) {
        binary::fix_checksum_for_fuzzing(&mut img, off as usize);
    }
    let src = MemSource(img);
    let Ok(header) = LuksHeader::read(&src) else {
        return;
    };
    // Describing a parsed header must not panic either (inspect does this).
    let _ = (
        header.version(),
        header.uuid(),
        header.cipher(),
        header.segment().len_in(src.0.len() as u64),
    );
    // Nor must its luksDump text (inspect prints it).
    let _ = bifs_core::luks::dump::luks_dump(&header, "fuzz");
    let limits = KdfLimits {
        max_argon2_memory_kib: 64,
        max_argon2_time: 4,
        max_argon2_cpus: 4,
        max_pbkdf2_iterations: 2000,
        max_keyslots: 32,
    };
    let _ = header.unlock(&src, &Passphrase::new("fuzz"), &limits);
});
