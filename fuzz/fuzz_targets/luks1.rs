//! LUKS1 header parser and unlock (PBKDF2 keyslots, material offsets, digest) under tight
//! `KdfLimits`: offsets or counts from a hostile header must give errors, never panics.
#![no_main]

use bifs_core::io::MemSource;
use bifs_core::kdf::KdfLimits;
use bifs_core::keys::Passphrase;
use bifs_core::luks::Luks1Header;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let src = MemSource(data.to_vec());
    let Ok(header) = Luks1Header::read(&src) else {
        return;
    };
    let _ = (header.cipher(), header.segment().len_in(data.len() as u64));
    let _ = bifs_core::luks::dump::luks1(&header, "fuzz");
    let limits = KdfLimits {
        max_argon2_memory_kib: 64,
        max_argon2_time: 4,
        max_argon2_cpus: 4,
        max_pbkdf2_iterations: 2000,
        max_keyslots: 32,
    };
    let _ = header.unlock(&src, &Passphrase::new("fuzz"), &limits);
});
