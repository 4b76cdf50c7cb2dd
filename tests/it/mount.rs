//! The filesystem mounted for real: every view of every kind of image in a store, read with
//! `cp`, `pread` from several threads, and checked with cryptsetup and qemu-img.
//!
//! Needs /dev/fuse, fusermount3, cryptsetup, qemu-img and qemu-io; fails loudly without them.

use std::fs;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::support::mount::*;

const SECRETS: &str = r#"apiVersion: v1
kind: Secret
metadata: {name: s1, namespace: ns}
stringData:
  CRYPTO_KEY_VALUE: "pass one"
  CRYPTO_PBKDF: pbkdf2
  CRYPTO_PBKDF_FORCE_ITERATIONS: "1000"
---
apiVersion: v1
kind: Secret
metadata: {name: wrong, namespace: ns}
stringData:
  CRYPTO_KEY_VALUE: "not the passphrase"
  CRYPTO_PBKDF: argon2id
  CRYPTO_PBKDF_MEMORY: "64"
  CRYPTO_PBKDF_FORCE_ITERATIONS: "4"
---
apiVersion: v1
kind: Secret
metadata: {name: s2, namespace: other}
stringData:
  CRYPTO_KEY_VALUE: "pass two"
  CRYPTO_PBKDF: argon2i
  CRYPTO_PBKDF_MEMORY: "64"
  CRYPTO_PBKDF_FORCE_ITERATIONS: "4"
"#;

const MIB: usize = 1 << 20;

struct Fixture {
    _dir: tempfile::TempDir,
    root: PathBuf,
    store: PathBuf,
    secrets: PathBuf,
    /// Expected raw content of each image, materialized outside the store.
    expect: PathBuf,
}

impl Fixture {
    fn build() -> Self {
        require_tools(&[
            "fusermount3",
            "cryptsetup",
            "qemu-img",
            "qemu-io",
            "cp",
            "sha512sum",
        ]);
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().to_owned();
        let store = root.join("store");
        let expect = root.join("expect");
        fs::create_dir_all(&store).unwrap();
        fs::create_dir_all(&expect).unwrap();
        let secrets = root.join("secrets.yaml");
        fs::write(&secrets, SECRETS).unwrap();
        let sh = |cmd: &str| run(Command::new("sh").args(["-ec", cmd]).current_dir(&root));

        // A raw image whose size is not a multiple of 512: the encrypt view pads it.
        fs::write(store.join("plain.img"), noise(1, 5 * MIB + 1000)).unwrap();
        fs::copy(store.join("plain.img"), expect.join("plain.img")).unwrap();
        // A sparse raw image: 64 MiB with 2 MiB of data in the middle.
        let sparse = store.join("sparse.img");
        fs::File::create(&sparse)
            .unwrap()
            .set_len(64 * MIB as u64)
            .unwrap();
        fs::OpenOptions::new()
            .write(true)
            .open(&sparse)
            .unwrap()
            .write_all_at(&noise(2, 2 * MIB), 20 * MIB as u64)
            .unwrap();
        fs::copy(&sparse, expect.join("sparse.img")).unwrap();
        // qcow2: compressed, and an overlay on a backing file (both in the store).
        fs::write(
            root.join("q.raw"),
            [noise(3, 3 * MIB), vec![0; 2 * MIB], noise(4, MIB)].concat(),
        )
        .unwrap();
        sh("qemu-img convert -c -O qcow2 q.raw store/compressed.qcow2");
        sh("qemu-img convert -O raw store/compressed.qcow2 expect/compressed.qcow2");
        sh("qemu-img convert -O qcow2 q.raw store/base.qcow2");
        sh("cd store && qemu-img create -q -f qcow2 -b base.qcow2 -F qcow2 overlay.qcow2 && \
            qemu-io -f qcow2 -c 'write -P 0xab 1M 300k' -c 'write -z 4M 64k' overlay.qcow2 >/dev/null");
        sh("qemu-img convert -O raw store/base.qcow2 expect/base.qcow2");
        sh("qemu-img convert -O raw store/overlay.qcow2 expect/overlay.qcow2");
        // LUKS2 by cryptsetup: offline encryption of a file holding the payload.
        fs::write(root.join("payload"), noise(5, 8 * MIB)).unwrap();
        sh("cp payload store/cs.luks && truncate -s +16M store/cs.luks && printf 'pass one' > key && \
            cryptsetup reencrypt --encrypt --type luks2 --reduce-device-size 16M --pbkdf pbkdf2 \
              --pbkdf-force-iterations 1000 --batch-mode --key-file key store/cs.luks");
        // Its plaintext starts with the payload; cryptsetup's data segment runs to the end of
        // the file, so 8 MiB of what the reduce area held follow it.
        fs::write(expect.join("cs.luks.plain"), noise(5, 8 * MIB)).unwrap();
        // LUKS2 by `bifs encrypt`.
        fs::write(root.join("b.src"), noise(6, 4 * MIB)).unwrap();
        run(Command::new(BIFS)
            .args(["encrypt", "--secret"])
            .arg(&secrets)
            .args(["--secret-name", "ns/s1"])
            .arg(root.join("b.src"))
            .arg(store.join("bifs.luks")));
        fs::copy(root.join("b.src"), expect.join("bifs.luks.plain")).unwrap();
        Fixture {
            _dir: dir,
            root,
            store,
            secrets,
            expect,
        }
    }

    fn mount(&self, name: &str) -> Mounted {
        Mounted::start(&self.store, &self.secrets, None, &self.root.join(name), &[])
    }

    fn out(&self, name: &str) -> PathBuf {
        self.root.join(name)
    }
}

const PLAIN: [&str; 5] = [
    "plain.img",
    "sparse.img",
    "compressed.qcow2",
    "base.qcow2",
    "overlay.qcow2",
];
const LUKS: [&str; 2] = ["cs.luks", "bifs.luks"];

fn cp(from: &Path, to: &Path, sparse: &str) {
    let _ = fs::remove_file(to);
    run(Command::new("cp")
        .arg(format!("--sparse={sparse}"))
        .arg(from)
        .arg(to));
}

fn same_file(a: &Path, b: &Path) {
    let (x, y) = (fs::read(a).unwrap(), fs::read(b).unwrap());
    assert!(
        x.len() == y.len() && x == y,
        "{} ({} bytes) differs from {} ({} bytes)",
        a.display(),
        x.len(),
        b.display(),
        y.len()
    );
}

/// Random odd-length preads from 4 threads, across sectors and the 16 MiB header boundary.
fn preads_match(view: &Path, materialized: &Path) {
    let want = fs::read(materialized).unwrap();
    let len = want.len() as u64;
    std::thread::scope(|s| {
        for t in 0..4u64 {
            let want = &want;
            s.spawn(move || {
                let f = fs::File::open(view).unwrap();
                let mut x = 0x1234_5678_9abc_def1u64 ^ (t << 40);
                for i in 0..200 {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    let hot = [16 << 20, 4096, 512, len.saturating_sub(700)];
                    let base = if i % 3 == 0 {
                        hot[(x % 4) as usize]
                    } else {
                        x % len
                    };
                    let off = (base + (x >> 20) % 1500)
                        .saturating_sub(750)
                        .min(len.saturating_sub(1));
                    let n = (((x >> 8) % 300_000) | 1) as usize;
                    let mut buf = vec![0u8; n];
                    let got = f.read_at(&mut buf, off).unwrap();
                    let end = (off as usize + n).min(want.len());
                    assert_eq!(
                        got,
                        end - off as usize,
                        "{} pread({off}, {n})",
                        view.display()
                    );
                    assert!(
                        buf[..got] == want[off as usize..end],
                        "{} pread({off}, {n}) differs",
                        view.display()
                    );
                }
            });
        }
    });
}

#[test]
fn every_view_of_every_image() {
    full_tier_only!("root, /dev/fuse and fusermount3, cryptsetup");
    let fx = Fixture::build();
    let m = fx.mount("mnt");

    // Listing: exactly the allowed combinations.
    let mut want: Vec<String> = vec!["ignore/", "raw/", "encrypt/", "decrypt/"]
        .into_iter()
        .map(String::from)
        .collect();
    let all: Vec<&str> = PLAIN.iter().chain(LUKS.iter()).copied().collect();
    for img in &all {
        want.push(format!("ignore/{img}"));
        want.push(format!("raw/{img}"));
    }
    for ns_secret in ["ns/s1", "ns/wrong", "other/s2"] {
        let ns = ns_secret.split('/').next().unwrap();
        for mode in ["encrypt", "decrypt"] {
            want.push(format!("{mode}/{ns}/"));
            want.push(format!("{mode}/{ns_secret}/"));
        }
        want.extend(PLAIN.iter().map(|i| format!("encrypt/{ns_secret}/{i}")));
        want.extend(LUKS.iter().map(|i| format!("decrypt/{ns_secret}/{i}")));
    }
    want.sort();
    want.dedup();
    assert_eq!(walk(&m.mnt), want);

    // ignore/: the stored bytes; raw/: the virtual disk (qemu's rendering for qcow2).
    for img in &all {
        cp(&m.path(&format!("ignore/{img}")), &fx.out("o"), "auto");
        same_file(&fx.out("o"), &fx.store.join(img));
    }
    for img in PLAIN {
        cp(&m.path(&format!("raw/{img}")), &fx.out("o"), "auto");
        same_file(&fx.out("o"), &fx.expect.join(img));
    }

    // Holes survive `cp --sparse=auto` from the raw view of a sparse raw image and of qcow2.
    cp(&m.path("raw/sparse.img"), &fx.out("sparse.out"), "auto");
    assert!(
        blocks(&fx.out("sparse.out")) <= (4 * MIB / 512) as u64,
        "copy of sparse raw view is not sparse"
    );
    cp(&m.path("raw/compressed.qcow2"), &fx.out("q.out"), "auto");
    assert!(
        blocks(&fx.out("q.out")) < (6 * MIB / 512) as u64,
        "copy of qcow2 raw view is not sparse"
    );

    // decrypt/: the original plaintext.
    cp(&m.path("decrypt/ns/s1/cs.luks"), &fx.out("cs.dec"), "auto");
    let (d, p) = (
        fs::read(fx.out("cs.dec")).unwrap(),
        fs::read(fx.expect.join("cs.luks.plain")).unwrap(),
    );
    assert!(
        d.len() == 16 * MIB && d[..p.len()] == p[..],
        "decrypt view of the cryptsetup image differs"
    );
    cp(&m.path("decrypt/ns/s1/bifs.luks"), &fx.out("o"), "auto");
    same_file(&fx.out("o"), &fx.expect.join("bifs.luks.plain"));

    // encrypt/: exactly raw size (padded to 512) + 16 MiB, a LUKS2 cryptsetup opens, and
    // whose data decrypts to the source.
    for img in PLAIN {
        let enc = fx.out(&format!("{img}.enc"));
        cp(&m.path(&format!("encrypt/ns/s1/{img}")), &enc, "auto");
        let raw_len = fs::metadata(fx.expect.join(img)).unwrap().len();
        assert_eq!(
            fs::metadata(&enc).unwrap().len(),
            raw_len.div_ceil(512) * 512 + 16 * MIB as u64,
            "{img}"
        );
        run(Command::new("cryptsetup").arg("luksDump").arg(&enc));
        run(Command::new("cryptsetup")
            .args(["open", "--test-passphrase", "--key-file"])
            .arg(fx.root.join("key"))
            .arg(&enc));
        let dec = fx.out(&format!("{img}.dec"));
        run(Command::new(BIFS)
            .args(["decrypt", "--secret"])
            .arg(&fx.secrets)
            .args(["--secret-name", "ns/s1"])
            .arg(&enc)
            .arg(&dec));
        let (d, s) = (
            fs::read(&dec).unwrap(),
            fs::read(fx.expect.join(img)).unwrap(),
        );
        assert!(
            d[..s.len()] == s[..] && d[s.len()..].iter().all(|&b| b == 0),
            "{img}: decrypted encrypt view differs"
        );
    }

    // Concurrent odd preads match the materialized files.
    preads_match(&m.path("encrypt/ns/s1/plain.img"), &fx.out("plain.img.enc"));
    preads_match(
        &m.path("encrypt/ns/s1/overlay.qcow2"),
        &fx.out("overlay.qcow2.enc"),
    );
    preads_match(&m.path("decrypt/ns/s1/cs.luks"), &fx.out("cs.dec"));
    preads_match(
        &m.path("raw/compressed.qcow2"),
        &fx.expect.join("compressed.qcow2"),
    );

    // Encrypt views are stable: two reads, and (below) a read after a remount.
    let sums: Vec<String> = ["plain.img", "overlay.qcow2"]
        .iter()
        .map(|i| sha512(&m.path(&format!("encrypt/ns/s1/{i}"))))
        .collect();
    for (i, img) in ["plain.img", "overlay.qcow2"].iter().enumerate() {
        assert_eq!(sha512(&m.path(&format!("encrypt/ns/s1/{img}"))), sums[i]);
        assert_eq!(sha512(&fx.out(&format!("{img}.enc"))), sums[i]);
    }
    // Another Secret makes another image.
    assert_ne!(sha512(&m.path("encrypt/other/s2/plain.img")), sums[0]);

    // Refusals.
    assert_eq!(
        open_errno(&m.path("decrypt/ns/wrong/cs.luks")),
        libc::EACCES
    );
    assert_eq!(
        open_errno(&m.path("decrypt/ns/wrong/cs.luks")),
        libc::EACCES,
        "cached refusal"
    );
    assert_eq!(open_errno(&m.path("encrypt/ns/s1/cs.luks")), libc::EINVAL);
    assert_eq!(open_errno(&m.path("decrypt/ns/s1/plain.img")), libc::EINVAL);
    assert_eq!(
        open_errno(&m.path("encrypt/ns/nope/plain.img")),
        libc::ENOENT
    );
    assert_eq!(
        open_errno(&m.path("encrypt/nowhere/s1/plain.img")),
        libc::ENOENT
    );
    assert_eq!(open_errno(&m.path("raw/missing.img")), libc::ENOENT);
    let w = fs::OpenOptions::new()
        .write(true)
        .open(m.path("raw/plain.img"))
        .unwrap_err();
    assert_eq!(w.raw_os_error(), Some(libc::EROFS));
    assert_eq!(
        fs::metadata(m.path("raw/plain.img"))
            .map(|x| std::os::unix::fs::PermissionsExt::mode(&x.permissions()) & 0o777)
            .unwrap(),
        0o440
    );

    let log = m.stop_with_sigterm();
    for why in [
        "opens no keyslot",
        "already encrypted",
        "not encrypted",
        "no Secret ns/nope",
    ] {
        assert!(log.contains(why), "log lacks {why:?}:\n{log}");
    }
    assert!(
        !log.contains("pass one") && !log.contains("not the passphrase"),
        "passphrase in the log"
    );

    // Remount with the same state: the same encrypt-view bytes.
    let m = fx.mount("mnt");
    for (i, img) in ["plain.img", "overlay.qcow2"].iter().enumerate() {
        assert_eq!(
            sha512(&m.path(&format!("encrypt/ns/s1/{img}"))),
            sums[i],
            "{img} changed across remounts"
        );
    }
    let state_mode = fs::metadata(fx.store.join(".bifs")).unwrap();
    assert_eq!(
        std::os::unix::fs::PermissionsExt::mode(&state_mode.permissions()) & 0o777,
        0o700
    );
    drop(m);
}

/// A Longhorn disk layout; a source rewritten under an open view fails its reads with EIO
/// while a new open serves the new content; `bifs umount` ends the mount.
#[test]
fn longhorn_layout_source_change_and_umount() {
    full_tier_only!("root, /dev/fuse and fusermount3");
    require_tools(&["fusermount3"]);
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let bi = root.join("disk/backing-images/ubuntu-0123abcd");
    fs::create_dir_all(&bi).unwrap();
    fs::write(bi.join("backing"), noise(7, 3 * MIB)).unwrap();
    fs::write(
        bi.join("backing.cfg"),
        r#"{"name":"ubuntu","uuid":"0123abcd"}"#,
    )
    .unwrap();
    let secrets = root.join("secrets.yaml");
    fs::write(&secrets, SECRETS).unwrap();
    let state = root.join("state");
    let m = Mounted::start(
        &root.join("disk"),
        &secrets,
        Some(&state),
        &root.join("mnt"),
        &[],
    );
    assert!(
        walk(&m.mnt).contains(&"raw/ubuntu".to_string()),
        "{:?}",
        walk(&m.mnt)
    );
    same_file(&m.path("raw/ubuntu"), &bi.join("backing"));
    let enc1 = sha512(&m.path("encrypt/ns/s1/ubuntu"));

    let view = fs::File::open(m.path("encrypt/ns/s1/ubuntu")).unwrap();
    let mut buf = vec![0u8; 4096];
    view.read_at(&mut buf, 16 << 20).unwrap();
    let mut before = vec![0u8; 4096];
    view.read_exact_at(&mut before, (16 << 20) + 8192).unwrap();
    // Rewrite the source in place (same size): the open view must not serve a mix.
    std::thread::sleep(std::time::Duration::from_millis(20));
    fs::OpenOptions::new()
        .write(true)
        .open(bi.join("backing"))
        .unwrap()
        .write_all_at(&[1; 4096], 0)
        .unwrap();
    fails_soon_with_eio(&view, (16 << 20) + 8192, &before);
    drop(view);
    // A new open sees the new content under the same header (same size): different data, same header.
    let enc2 = sha512(&m.path("encrypt/ns/s1/ubuntu"));
    assert_ne!(enc1, enc2);
    let hdr = |p: &Path| {
        let mut h = vec![0u8; 16 << 20];
        fs::File::open(p).unwrap().read_exact_at(&mut h, 0).unwrap();
        h
    };
    let persisted = state.join("headers/ns/s1/ubuntu.luks");
    assert!(
        hdr(&m.path("encrypt/ns/s1/ubuntu")) == fs::read(&persisted).unwrap(),
        "header not the persisted one"
    );
    let mode =
        std::os::unix::fs::PermissionsExt::mode(&fs::metadata(&persisted).unwrap().permissions());
    assert_eq!(mode & 0o777, 0o600);

    run(Command::new(BIFS).arg("umount").arg(&m.mnt));
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while is_mountpoint(&m.mnt) && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    assert!(!is_mountpoint(&m.mnt));
    let log = m.log_text();
    assert!(log.contains("source image changed"), "{log}");
    drop(m);
}

/// A store of one raw image `a.img` (`len` bytes of `noise(seed)`) with the module's Secrets,
/// mounted with `extra` options.
struct OneImage {
    _dir: tempfile::TempDir,
    root: PathBuf,
    src: PathBuf,
    secrets: PathBuf,
    m: Mounted,
}

impl OneImage {
    fn mount(bytes: &[u8], extra: &[&str]) -> Self {
        require_tools(&["fusermount3", "cryptsetup"]);
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().to_owned();
        fs::create_dir_all(root.join("store")).unwrap();
        let src = root.join("store/a.img");
        fs::write(&src, bytes).unwrap();
        let secrets = root.join("secrets.yaml");
        fs::write(&secrets, SECRETS).unwrap();
        let m = Mounted::start(
            &root.join("store"),
            &secrets,
            None,
            &root.join("mnt"),
            extra,
        );
        OneImage {
            _dir: dir,
            root,
            src,
            secrets,
            m,
        }
    }

    /// Rewrites the source in place (same inode), in one write.
    fn write_in_place(&self, bytes: &[u8]) {
        fs::OpenOptions::new()
            .write(true)
            .open(&self.src)
            .unwrap()
            .write_all_at(bytes, 0)
            .unwrap();
    }

    /// Replaces the source by a rename, as Longhorn and most tools do.
    fn replace(&self, bytes: &[u8]) {
        let tmp = self.root.join("store/.a.img.tmp");
        fs::write(&tmp, bytes).unwrap();
        fs::rename(&tmp, &self.src).unwrap();
    }
}

/// Reads a whole file through an open handle, 1 MiB per read(2) as `cp` does.
fn read_through(f: &fs::File, len: usize) -> std::io::Result<Vec<u8>> {
    let mut out = vec![0u8; len];
    let mut off = 0;
    while off < len {
        let n = f.read_at(&mut out[off..(off + MIB).min(len)], off as u64)?;
        if n == 0 {
            break;
        }
        off += n;
    }
    out.truncate(off);
    Ok(out)
}

/// The default mount keeps view pages in the kernel's page cache (a second read costs the
/// daemon nothing), and a source changed under a reader whose pages are cached never gives
/// that reader a mix: written in place, its reads fail with EIO; replaced by rename, it keeps
/// reading the old file whole (or gets EIO); a new open reads the new bytes whole, however
/// soon after the change it comes.
#[test]
fn page_cache_by_default_and_a_changed_source_never_mixes() {
    full_tier_only!("root, /dev/fuse and fusermount3");
    let len = 4 * MIB;
    let v1 = noise(11, len);
    let fx = OneImage::mount(&v1, &[]);
    let view = fx.m.path("raw/a.img");

    // Cached: the second read is served without bifs.
    assert!(fs::read(&view).unwrap() == v1);
    let before = fx.m.daemon_read_bytes();
    assert!(fs::read(&view).unwrap() == v1);
    let cost = fx.m.daemon_read_bytes() - before;
    assert!(
        cost < (len / 8) as u64,
        "a second read of a view reached bifs: the daemon read {cost} bytes"
    );

    // Written in place under a reader whose pages are all cached: EIO once the write is heard
    // (inotify, or the attributes' 50 ms lifetime), whole old pages until then, never new
    // bytes through the old handle.
    let h = fs::File::open(&view).unwrap();
    assert!(read_through(&h, len).unwrap() == v1);
    let v2 = noise(12, len);
    fx.write_in_place(&v2);
    for off in [0, MIB, len - 4096] {
        fails_soon_with_eio(&h, off as u64, &v1[off..off + 4096]);
    }
    drop(h);
    assert!(fs::read(&view).unwrap() == v2, "a new open after the write");

    // Replaced by rename under a cached reader: the old file whole, or EIO.
    let h = fs::File::open(&view).unwrap();
    assert!(read_through(&h, len).unwrap() == v2);
    let v3 = noise(13, len);
    fx.replace(&v3);
    match read_through(&h, len) {
        Ok(got) => assert!(got == v2, "a reader of the replaced file got other bytes"),
        Err(e) => assert_eq!(e.raw_os_error(), Some(libc::EIO), "{e}"),
    }
    drop(h);
    assert!(
        fs::read(&view).unwrap() == v3,
        "a new open after the rename"
    );

    // Changes followed at once by a new open (before inotify is heard, the kernel's entry
    // still names the old inode): always exactly the newest bytes.
    for k in 0..20u64 {
        let v = noise(100 + k, len);
        if k % 2 == 0 {
            fx.write_in_place(&v);
        } else {
            fx.replace(&v);
        }
        assert!(
            fs::read(&view).unwrap() == v,
            "open right after change {k} did not read the new bytes"
        );
        assert!(fs::read(fx.m.path("ignore/a.img")).unwrap() == v);
    }
    let log = fx.m.log_text();
    assert!(
        log.contains("source changed: dropping the cached pages"),
        "{log}"
    );
}

/// A Secret rotated under a reader of its encrypt view: the cached pages are dropped (the
/// open handle's re-read reaches bifs again and still gets the bytes it was opened on),
/// and a new open gets the new header, which opens with the new passphrase only.
#[test]
fn a_secret_rotation_drops_the_encrypt_views_cached_pages() {
    full_tier_only!("root, /dev/fuse and fusermount3, cryptsetup");
    let src = noise(21, 3 * MIB);
    let fx = OneImage::mount(&src, &[]);
    let view = fx.m.path("encrypt/ns/s1/a.img");
    let len = 16 * MIB + 3 * MIB;

    let h = fs::File::open(&view).unwrap();
    let e1 = read_through(&h, len).unwrap();
    assert_eq!(e1.len(), len);
    let before = fx.m.daemon_read_bytes();
    assert!(read_through(&h, len).unwrap() == e1);
    let cached_cost = fx.m.daemon_read_bytes() - before;
    assert!(
        cached_cost < MIB as u64,
        "re-read reached bifs: {cached_cost} bytes"
    );

    let rotated = SECRETS.replace("\"pass one\"", "\"pass rotated\"");
    assert_ne!(rotated, SECRETS);
    fs::write(&fx.secrets, rotated).unwrap();
    fx.m.wait_for_log("Secret changed: dropping the cached pages", 10);

    let before = fx.m.daemon_read_bytes();
    assert!(
        read_through(&h, len).unwrap() == e1,
        "the open handle's bytes changed with the rotation"
    );
    let refetched = fx.m.daemon_read_bytes() - before;
    assert!(
        refetched > (len / 2) as u64,
        "after the rotation the open handle was still served from the page cache ({refetched} bytes reached bifs)"
    );
    drop(h);

    let e2 = fs::read(&view).unwrap();
    assert_eq!(e2.len(), len);
    assert!(
        e2[..4096] != e1[..4096],
        "a new open still got the old header"
    );
    let out = fx.root.join("e2.luks");
    fs::write(&out, &e2).unwrap();
    fs::write(fx.root.join("new.key"), "pass rotated").unwrap();
    fs::write(fx.root.join("old.key"), "pass one").unwrap();
    run(Command::new("cryptsetup")
        .args(["open", "--test-passphrase", "--key-file"])
        .arg(fx.root.join("new.key"))
        .arg(&out));
    let old = Command::new("cryptsetup")
        .args(["open", "--test-passphrase", "--key-file"])
        .arg(fx.root.join("old.key"))
        .arg(&out)
        .output()
        .unwrap();
    assert!(
        !old.status.success(),
        "the old passphrase opens the new header"
    );
    let dec = fx.root.join("e2.dec");
    run(Command::new(BIFS)
        .args(["decrypt", "--secret"])
        .arg(&fx.secrets)
        .args(["--secret-name", "ns/s1"])
        .arg(&out)
        .arg(&dec));
    assert!(fs::read(&dec).unwrap()[..src.len()] == src[..]);
    let log = fx.m.log_text();
    assert!(!log.contains("pass one") && !log.contains("pass rotated"));
}

/// A store holding `base.raw` (4 MiB of 0x11, in `backing_dir` under the store: "" for
/// beside the image) and
/// `overlay.qcow2` on it (`qemu-img create -b`), mounted with the default page cache.
struct Chain {
    _dir: tempfile::TempDir,
    root: PathBuf,
    base: PathBuf,
    m: Mounted,
}

impl Chain {
    fn mount(backing_dir: &str) -> Self {
        require_tools(&["fusermount3", "qemu-img"]);
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().to_owned();
        let store = root.join("store");
        fs::create_dir_all(store.join(backing_dir)).unwrap();
        let rel = Path::new(backing_dir).join("base.raw");
        let base = store.join(&rel);
        fs::write(&base, vec![0x11u8; 4 * MIB]).unwrap();
        run(Command::new("qemu-img")
            .args(["create", "-q", "-f", "qcow2", "-F", "raw", "-b"])
            .arg(&rel)
            .arg("overlay.qcow2")
            .current_dir(&store));
        let secrets = root.join("secrets.yaml");
        fs::write(&secrets, SECRETS).unwrap();
        let m = Mounted::start(&store, &secrets, None, &root.join("mnt"), &[]);
        Chain {
            _dir: dir,
            root,
            base,
            m,
        }
    }

    /// Rewrites the backing file in place (same inode) with `byte`.
    fn write_base_in_place(&self, byte: u8) {
        fs::OpenOptions::new()
            .write(true)
            .open(&self.base)
            .unwrap()
            .write_all_at(&vec![byte; 4 * MIB], 0)
            .unwrap();
    }

    /// Replaces the backing file by a rename.
    fn replace_base(&self, byte: u8) {
        let tmp = self.root.join("store/.base.tmp");
        fs::write(&tmp, vec![byte; 4 * MIB]).unwrap();
        fs::rename(&tmp, &self.base).unwrap();
    }
}

/// A qcow2 view reads its backing file too, and the promise holds for it as for the top
/// file: the backing file rewritten in place under an open handle of raw/overlay.qcow2 fails
/// the handle's next reads with EIO (cached page or not), never serves the new bytes; a new
/// open reads the new version whole.
#[test]
fn a_backing_file_written_under_an_open_handle_fails_its_reads() {
    full_tier_only!("root, /dev/fuse, fusermount3 and qemu-img");
    let fx = Chain::mount("");
    let view = fx.m.path("raw/overlay.qcow2");
    let h = fs::File::open(&view).unwrap();
    let mut buf = vec![0u8; MIB];
    h.read_exact_at(&mut buf, 0).unwrap();
    assert!(buf.iter().all(|&b| b == 0x11));
    fx.write_base_in_place(0x22);
    // MiB 2 was never read (no page of it cached), MiB 0 was.
    let old = vec![0x11u8; 4096];
    fails_soon_with_eio(&h, 2 * MIB as u64, &old);
    fails_soon_with_eio(&h, 0, &old);
    drop(h);
    let now = fs::read(&view).unwrap();
    assert_eq!(now.len(), 4 * MIB);
    assert!(now.iter().all(|&b| b == 0x22), "a new open after the write");
    let log = fx.m.log_text();
    assert!(log.contains("source image changed"), "{log}");
}

/// With the page cache kept across opens, a backing file (here in a subdirectory of the
/// store, which the store watch did not cover) changed between two opens: the second open
/// reads only the new version, never a page cached from the old one beside new bytes,
/// however soon after the change it comes; in place or by rename.
#[test]
fn a_backing_file_changed_between_opens_never_mixes_cached_pages() {
    full_tier_only!("root, /dev/fuse, fusermount3 and qemu-img");
    let fx = Chain::mount("sub");
    let view = fx.m.path("raw/overlay.qcow2");
    let read_mib = |off: usize| {
        let h = fs::File::open(&view).unwrap();
        let mut buf = vec![0u8; MIB];
        h.read_exact_at(&mut buf, off as u64).unwrap();
        buf
    };
    assert!(read_mib(0).iter().all(|&b| b == 0x11));
    for (k, byte) in [0x22u8, 0x33, 0x44, 0x55, 0x66, 0x77]
        .into_iter()
        .enumerate()
    {
        // MiB 0 of the old version is cached now.
        assert!(read_mib(0).iter().all(|&b| b == byte - 0x11));
        if k % 2 == 0 {
            fx.write_base_in_place(byte);
        } else {
            fx.replace_base(byte);
        }
        let whole = fs::read(&view).unwrap();
        assert_eq!(whole.len(), 4 * MIB);
        for (i, mib) in whole.chunks(MIB).enumerate() {
            assert!(
                mib.iter().all(|&b| b == byte),
                "change {k}: MiB {i} of a new open is not all {byte:#x}"
            );
        }
    }
}
