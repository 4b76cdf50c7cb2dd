//! Kubernetes manifests: Secret documents (and their CRYPTO_* parameters) and Longhorn
//! BackingImage documents (and their validation), from the same YAML text as `bifs apply -f`.
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let path = Path::new("fuzz.yaml");
    if let Ok(secrets) = bifs_k8s::secret::parse_secrets(text, path) {
        for s in &secrets {
            let _ = s.crypto_params();
        }
    }
    if let Ok(images) = bifs_k8s::manifest::parse_backing_images(text, path) {
        for bi in &images {
            let _ = bi.validate();
            let _ = bi.mutated_spec(None, "fuzz-disk-uuid");
            let _ = bifs_k8s::manifest::auto_correct_name(bi.name());
            let _ = bi.expected_checksum();
        }
    }
});
