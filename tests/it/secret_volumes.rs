//! Secret volumes (the kubelet's `..data` layout) behind the catalog and behind a real mount:
//! a rotated Secret reaches the next open without a restart, and only that Secret's cached
//! unlocks are forgotten. Headers are checked with Debian's cryptsetup.

use std::fs;
use std::path::Path;
use std::sync::Arc;

use bifs_core::io::ReadAt;
use bifs_k8s::{SecretRef, SecretSource};
use bifs_node::catalog::{Catalog, CatalogError, Mode};
use bifs_node::store::Store;

use crate::support::common::{random_file, test_passphrase, MIB};
use crate::support::node::{crypto_keys, kubelet_write};

fn read_all(view: &Arc<dyn ReadAt>) -> Vec<u8> {
    let mut out = vec![0u8; view.len() as usize];
    let mut off = 0;
    while off < out.len() {
        let n = view.read_at(off as u64, &mut out[off..]).unwrap();
        assert!(n > 0, "short read at {off}");
        off += n;
    }
    out
}

/// The whole encrypt view of `image` under `secret`, written to `out` for cryptsetup.
fn encrypt_view(cat: &Catalog, image: &str, secret: &SecretRef, out: &Path) -> Vec<u8> {
    let img = cat.image(Mode::Encrypt, Some(secret), image).unwrap();
    let (view, _) = cat.open(Mode::Encrypt, Some(secret), &img).unwrap();
    let bytes = read_all(&view);
    fs::write(out, &bytes).unwrap();
    bytes
}

fn opens(img: &Path, passphrase: &str) -> bool {
    test_passphrase(img, passphrase.as_bytes()).status.success()
}

/// A LUKS2 image made by cryptsetup, opened by `passphrase` only.
fn luks_image(path: &Path, passphrase: &str) {
    random_file(path, 20 * MIB, 7);
    crate::support::common::luks2_format_cheap(path, passphrase.as_bytes());
}

#[test]
fn rotation_reaches_the_next_open_and_only_that_secret_forgets_its_unlocks() {
    full_tier_only!("cryptsetup");
    crate::support::common::require_tools();
    let d = crate::support::common::tempdir("secret-volumes");
    let (store, state, secrets) = (
        d.path().join("store"),
        d.path().join("state"),
        d.path().join("secrets"),
    );
    fs::create_dir_all(&store).unwrap();
    random_file(&store.join("disk.img"), MIB, 1);
    luks_image(&store.join("vault.img"), "rotated");
    let (a, b) = (
        SecretRef::parse("longhorn-system/a", ""),
        SecretRef::parse("longhorn-system/b", ""),
    );
    kubelet_write(&secrets.join("longhorn-system/a"), &crypto_keys("a-first"));
    kubelet_write(&secrets.join("longhorn-system/b"), &crypto_keys("b-only"));

    let cat = Catalog::watching(
        Store::open(&store, Some(&state)).unwrap(),
        SecretSource::open(&secrets).unwrap(),
    );
    let out = |n: &str| d.path().join(n);
    let a1 = encrypt_view(&cat, "disk.img", &a, &out("a1.luks"));
    let b1 = encrypt_view(&cat, "disk.img", &b, &out("b1.luks"));
    assert!(opens(&out("a1.luks"), "a-first") && opens(&out("b1.luks"), "b-only"));
    let vault = cat.image(Mode::Decrypt, Some(&a), "vault.img").unwrap();
    let err = cat.open(Mode::Decrypt, Some(&a), &vault).err().unwrap();
    assert!(matches!(err, CatalogError::WrongPassphrase { .. }), "{err}");

    // Without their persisted headers, the encrypt views can only come from the cache: a
    // Secret whose unlocks were forgotten gets a new header, one whose unlocks were kept
    // serves the same bytes.
    for s in [&a, &b] {
        let (header, record) = cat.store().state().header_paths("disk.img", s).unwrap();
        fs::remove_file(header).unwrap();
        fs::remove_file(record).unwrap();
    }

    kubelet_write(&secrets.join("longhorn-system/a"), &crypto_keys("rotated"));

    let a2 = encrypt_view(&cat, "disk.img", &a, &out("a2.luks"));
    assert_ne!(a1[..4096], a2[..4096], "a rotated Secret gets a new header");
    assert!(
        opens(&out("a2.luks"), "rotated"),
        "the new header uses the new passphrase"
    );
    assert!(!opens(&out("a2.luks"), "a-first"), "and not the old one");
    assert_eq!(a1[16 * MIB as usize..].len(), a2[16 * MIB as usize..].len());

    let b2 = encrypt_view(&cat, "disk.img", &b, &out("b2.luks"));
    assert!(b1 == b2, "the other Secret's cached unlock was kept");

    // The decrypt view's cached wrong passphrase is forgotten too: the new one opens it.
    let (view, _) = cat.open(Mode::Decrypt, Some(&a), &vault).unwrap();
    assert_eq!(view.len(), 4 * MIB);

    // A removed Secret is gone from the catalog at the next open.
    fs::remove_dir_all(secrets.join("longhorn-system/b")).unwrap();
    let err = cat.open(
        Mode::Encrypt,
        Some(&b),
        &cat.image(Mode::Encrypt, None, "disk.img").unwrap(),
    );
    assert!(matches!(err, Err(CatalogError::UnknownSecret(_))));
}

#[test]
fn a_mount_follows_a_rotated_secret_volume() {
    full_tier_only!("root, /dev/fuse and fusermount3, cryptsetup");
    crate::support::common::require_tools();
    let d = crate::support::common::tempdir("secret-volumes-mount");
    let (store, secrets, mnt) = (
        d.path().join("store"),
        d.path().join("secrets"),
        d.path().join("mnt"),
    );
    fs::create_dir_all(&store).unwrap();
    luks_image(&store.join("vault.img"), "pp-second-9Zk");
    let vol = secrets.join("longhorn-system/longhorn-crypto");
    kubelet_write(&vol, &crypto_keys("pp-first-7Qx"));

    let m = crate::support::mount::Mounted::start(
        &store,
        &secrets,
        Some(&d.path().join("state")),
        &mnt,
        &[],
    );
    let file = m.path("decrypt/longhorn-system/longhorn-crypto/vault.img");
    assert_eq!(
        crate::support::mount::open_errno(&file),
        libc::EACCES,
        "the first passphrase is wrong"
    );

    kubelet_write(&vol, &crypto_keys("pp-second-9Zk"));
    let bytes = fs::read(&file).expect("the rotated passphrase opens the image");
    assert_eq!(bytes.len() as u64, 4 * MIB);

    // A Secret added while mounted shows up.
    kubelet_write(
        &secrets.join("longhorn-system/later"),
        &crypto_keys("pp-second-9Zk"),
    );
    std::thread::sleep(std::time::Duration::from_millis(1500));
    let listed = fs::read_dir(m.path("decrypt/longhorn-system"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect::<Vec<_>>();
    assert!(listed.contains(&"later".to_string()), "{listed:?}");
    let log = m.stop_with_sigterm();
    assert!(log.contains("cached unlocks are forgotten"), "{log}");
    for pass in ["pp-first-7Qx", "pp-second-9Zk"] {
        assert!(!log.contains(pass), "a passphrase in the log:\n{log}");
    }
}
