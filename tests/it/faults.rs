//! Faults while bifs works: sources truncated or removed under a mount, the daemon killed in
//! the middle of a `cp`, a full disk and a read-only state directory during `apply` and while
//! a header is persisted, and 16 concurrent readers.
//!
//! Needs root (tmpfs mounts), /dev/fuse, fusermount3, cryptsetup; fails loudly without them.

use std::fs;
use std::io::Read;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::support::mount::*;

const MIB: usize = 1 << 20;
const SECRET: &str = r#"apiVersion: v1
kind: Secret
metadata: {name: s1, namespace: ns}
stringData:
  CRYPTO_KEY_VALUE: "fault pass"
  CRYPTO_PBKDF: pbkdf2
  CRYPTO_PBKDF_FORCE_ITERATIONS: "1000"
"#;

struct Fx {
    _dir: tempfile::TempDir,
    root: PathBuf,
    store: PathBuf,
    secrets: PathBuf,
}

fn fixture(images: &[(&str, usize)]) -> Fx {
    require_tools(&["fusermount3", "cp", "sha512sum"]);
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().to_owned();
    let store = root.join("store");
    fs::create_dir_all(&store).unwrap();
    let secrets = root.join("secrets.yaml");
    fs::write(&secrets, SECRET).unwrap();
    for (i, (name, len)) in images.iter().enumerate() {
        fs::write(store.join(name), noise(i as u64 + 1, *len)).unwrap();
    }
    Fx {
        _dir: dir,
        root,
        store,
        secrets,
    }
}

fn bifs(args: &[&str]) -> std::process::Output {
    Command::new(BIFS)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

#[test]
fn source_truncated_or_removed_while_mounted() {
    full_tier_only!("root (tmpfs mounts), root, /dev/fuse and fusermount3, cryptsetup");
    let fx = fixture(&[("a.img", 8 * MIB), ("b.img", 4 * MIB), ("c.img", 4 * MIB)]);
    let src = fx.root.join("b.src");
    fs::write(&src, noise(9, 4 * MIB)).unwrap();
    let o = bifs(&[
        "encrypt",
        "--secret",
        fx.secrets.to_str().unwrap(),
        src.to_str().unwrap(),
        fx.store.join("d.luks").to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let mut m = Mounted::start(&fx.store, &fx.secrets, None, &fx.root.join("mnt"), &[]);

    // Open views first, then cut their sources under them.
    let raw_a = fs::File::open(m.path("raw/a.img")).unwrap();
    let dec = fs::File::open(m.path("decrypt/ns/s1/d.luks")).unwrap();
    let mut buf = vec![0u8; 4096];
    raw_a.read_at(&mut buf, 7 * MIB as u64).unwrap();
    fs::OpenOptions::new()
        .write(true)
        .open(fx.store.join("a.img"))
        .unwrap()
        .set_len(MIB as u64)
        .unwrap();
    fs::OpenOptions::new()
        .write(true)
        .open(fx.store.join("d.luks"))
        .unwrap()
        .set_len(17 * MIB as u64)
        .unwrap();
    // That page was read before the cut: the page cache may answer with it until the
    // change is heard (the attribute lifetime, docs/mount.md), then EIO; never other bytes.
    fails_soon_with_eio(
        &raw_a,
        7 * MIB as u64,
        &noise(1, 8 * MIB)[7 * MIB..7 * MIB + 4096],
    );
    let e = dec.read_at(&mut buf, 3 * MIB as u64).unwrap_err();
    assert_eq!(
        e.raw_os_error(),
        Some(libc::EIO),
        "decrypt read past a truncated source: {e}"
    );
    // The head of the truncated source: EIO or the original bytes, never anything else.
    match raw_a.read_at(&mut buf, 0) {
        Ok(n) => assert_eq!(buf[..n], noise(1, 8 * MIB)[..n]),
        Err(e) => assert_eq!(e.raw_os_error(), Some(libc::EIO), "{e}"),
    }

    // A removed source: an open handle keeps reading the unlinked file; new opens get ENOENT.
    let raw_c = fs::File::open(m.path("raw/c.img")).unwrap();
    fs::remove_file(fx.store.join("c.img")).unwrap();
    raw_c.read_at(&mut buf, 0).unwrap();
    assert_eq!(buf, noise(3, 4 * MIB)[..4096]);
    assert_eq!(open_errno(&m.path("raw/c.img")), libc::ENOENT);

    // The daemon lives and serves the other files whole.
    assert!(m.alive(), "bifs mount died:\n{}", m.log_text());
    let mut all = Vec::new();
    fs::File::open(m.path("raw/b.img"))
        .unwrap()
        .read_to_end(&mut all)
        .unwrap();
    assert!(all == noise(2, 4 * MIB));
    drop((raw_a, dec, raw_c));
    m.stop_with_sigterm();
}

#[test]
fn daemon_killed_during_cp_then_restart_cleans_the_stale_mount() {
    full_tier_only!("root (tmpfs mounts), root, /dev/fuse and fusermount3, cryptsetup");
    let fx = fixture(&[("big.img", 256 * MIB)]);
    let mnt = fx.root.join("mnt");
    let m = Mounted::start(&fx.store, &fx.secrets, None, &mnt, &[]);
    // The encrypt view: slow enough (XTS + header) to be killed midway.
    let cp = Command::new("cp")
        .arg(m.path("encrypt/ns/s1/big.img"))
        .arg(fx.root.join("out"))
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while fs::metadata(fx.root.join("out")).map_or(0, |m| m.len()) < 20 * MIB as u64 {
        assert!(Instant::now() < deadline, "cp never got going");
        std::thread::sleep(Duration::from_millis(5));
    }
    crate::support::signal(m.pid(), rustix::process::Signal::KILL);
    let out = cp.wait_with_output().unwrap();
    assert!(
        !out.status.success(),
        "cp finished although the daemon was killed"
    );
    // What bifs leaves behind after SIGKILL: a dead mount.
    // (stat may still answer from the kernel's attribute cache; listing needs the daemon.)
    let e = fs::read_dir(&mnt).unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::ENOTCONN), "{e}");
    // Not dropped: Mounted's drop would unmount the dead mount itself, which is bifs's job here.
    // (The killed child stays a zombie until this test process exits.)
    std::mem::forget(m);

    // A new `bifs mount` on the same directory detaches the dead one and serves again.
    // (Mounted::start returns at once: the dead mount still looks like a mount point.)
    let mut m2 = Mounted::start(&fx.store, &fx.secrets, None, &mnt, &[]);
    let deadline = Instant::now() + Duration::from_secs(20);
    while !m2.log_text().contains("mounted;") {
        assert!(m2.alive(), "bifs mount exited:\n{}", m2.log_text());
        assert!(
            Instant::now() < deadline,
            "bifs mount did not mount:\n{}",
            m2.log_text()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(m2.log_text().contains("died here"), "{}", m2.log_text());
    let mut head = vec![0u8; 4096];
    fs::File::open(m2.path("raw/big.img"))
        .unwrap()
        .read_exact(&mut head)
        .unwrap();
    assert_eq!(head, noise(1, 4096));
    m2.stop_with_sigterm();
    assert!(
        fs::metadata(&mnt).is_ok(),
        "a mount is left on {}",
        mnt.display()
    );
}

#[test]
fn stale_mount_of_another_filesystem_is_not_touched() {
    full_tier_only!("root (tmpfs mounts), root, /dev/fuse and fusermount3, cryptsetup");
    // Only a dead bifs mount is detached; a healthy directory is left as it is.
    let fx = fixture(&[("x.img", MIB)]);
    let m = Mounted::start(&fx.store, &fx.secrets, None, &fx.root.join("mnt"), &[]);
    assert!(!m.log_text().contains("died here"));
    m.stop_with_sigterm();
}

#[test]
fn sixteen_concurrent_cp_of_many_views() {
    full_tier_only!("root (tmpfs mounts), root, /dev/fuse and fusermount3, cryptsetup");
    let fx = fixture(&[
        ("p1.img", 6 * MIB + 1000),
        ("p2.img", 5 * MIB),
        ("p3.img", 3 * MIB),
    ]);
    let src = fx.root.join("l.src");
    fs::write(&src, noise(7, 4 * MIB)).unwrap();
    let o = bifs(&[
        "encrypt",
        "--secret",
        fx.secrets.to_str().unwrap(),
        src.to_str().unwrap(),
        fx.store.join("l.luks").to_str().unwrap(),
    ]);
    assert!(o.status.success());
    let m = Mounted::start(
        &fx.store,
        &fx.secrets,
        None,
        &fx.root.join("mnt"),
        &["--threads", "8"],
    );
    let views = [
        "raw/p1.img",
        "raw/p2.img",
        "ignore/p3.img",
        "encrypt/ns/s1/p1.img",
        "encrypt/ns/s1/p2.img",
        "encrypt/ns/s1/p3.img",
        "decrypt/ns/s1/l.luks",
        "ignore/l.luks",
    ];
    // References, read one at a time (encrypt headers are persisted, so rereads are equal).
    let want: Vec<String> = views.iter().map(|v| sha512(&m.path(v))).collect();
    assert_eq!(want[0], sha512(&fx.store.join("p1.img")));
    let handles: Vec<_> = (0..16)
        .map(|i| {
            let from = m.path(views[i % views.len()]);
            let to = fx.root.join(format!("c{i}"));
            std::thread::spawn(move || {
                let s = Command::new("cp").arg(&from).arg(&to).status().unwrap();
                assert!(s.success(), "cp {}", from.display());
                sha512(&to)
            })
        })
        .collect();
    for (i, h) in handles.into_iter().enumerate() {
        assert_eq!(
            h.join().unwrap(),
            want[i % views.len()],
            "concurrent cp {i} of {}",
            views[i % views.len()]
        );
    }
    m.stop_with_sigterm();
}

/// A tmpfs of `size` at `dir` (root only), unmounted on drop.
struct Tmpfs(PathBuf);
impl Tmpfs {
    fn new(dir: &Path, opts: &str) -> Self {
        fs::create_dir_all(dir).unwrap();
        let s = Command::new("mount")
            .args(["-t", "tmpfs", "-o", opts, "tmpfs"])
            .arg(dir)
            .status();
        assert!(
            s.is_ok_and(|s| s.success()),
            "\n\n*** mounting a tmpfs needs root (the fault tests run as root in CI) ***\n\n"
        );
        Tmpfs(dir.to_owned())
    }
    fn remount(&self, opts: &str) {
        let s = Command::new("mount")
            .args(["-o", &format!("remount,{opts}")])
            .arg(&self.0)
            .status()
            .unwrap();
        assert!(s.success());
    }
}
impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

fn manifest(dir: &Path, name: &str, spec: &str) -> PathBuf {
    let p = dir.join(format!("{name}.yaml"));
    fs::write(&p, format!(
        "apiVersion: longhorn.io/v1beta2\nkind: BackingImage\nmetadata:\n  name: {name}\n  namespace: longhorn-system\nspec:\n{spec}"
    )).unwrap();
    p
}

fn backings(store: &Path) -> Vec<PathBuf> {
    let mut v = Vec::new();
    if let Ok(rd) = fs::read_dir(store.join("backing-images")) {
        for d in rd.flatten() {
            for f in fs::read_dir(d.path()).unwrap().flatten() {
                v.push(f.path());
            }
        }
    }
    v.sort();
    v
}

#[test]
fn disk_full_during_apply_fails_clearly_and_loses_nothing() {
    full_tier_only!("root (tmpfs mounts), root, /dev/fuse and fusermount3, cryptsetup");
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let store = dir.join("store");
    let _fs = Tmpfs::new(&store, "size=40m");
    let small = noise(1, 8 * MIB);
    let big = noise(2, 48 * MIB);
    fs::write(dir.join("small.raw"), &small).unwrap();
    fs::write(dir.join("big.raw"), &big).unwrap();
    let url = |f: &str| format!("file://{}", dir.join(f).display());
    let s = store.to_str().unwrap();
    let m1 = manifest(
        dir,
        "small",
        &format!(
            "  sourceType: download\n  sourceParameters:\n    url: {}\n",
            url("small.raw")
        ),
    );
    let o = bifs(&["apply", "-f", m1.to_str().unwrap(), "--store", s]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let before = backings(&store);
    let small_backing = before
        .iter()
        .find(|p| p.ends_with("backing"))
        .unwrap()
        .clone();

    let m2 = manifest(
        dir,
        "big",
        &format!(
            "  sourceType: download\n  sourceParameters:\n    url: {}\n",
            url("big.raw")
        ),
    );
    let o = bifs(&["apply", "-f", m2.to_str().unwrap(), "--store", s]);
    let err = String::from_utf8_lossy(&o.stderr).to_string() + &String::from_utf8_lossy(&o.stdout);
    assert!(
        !o.status.success(),
        "apply of 48 MiB into a 40 MiB store succeeded:\n{err}"
    );
    assert!(err.to_lowercase().contains("no space left"), "{err}");
    // No partial backing for the failed image; the earlier image is intact.
    for p in backings(&store) {
        if p.parent() != small_backing.parent() {
            assert!(
                !p.ends_with("backing"),
                "partial backing left: {}",
                p.display()
            );
        }
    }
    assert!(
        fs::read(&small_backing).unwrap() == small,
        "the stored image changed"
    );
    let get = bifs(&["get", "big", "--store", s, "-o", "yaml"]);
    let text = String::from_utf8_lossy(&get.stdout);
    assert!(text.contains("failed"), "{text}");
}

#[test]
fn read_only_store_during_apply_fails_clearly() {
    full_tier_only!("root (tmpfs mounts), root, /dev/fuse and fusermount3, cryptsetup");
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let store = dir.join("store");
    let tfs = Tmpfs::new(&store, "size=40m");
    fs::write(dir.join("a.raw"), noise(3, MIB)).unwrap();
    let s = store.to_str().unwrap();
    let m1 = manifest(
        dir,
        "img-a",
        &format!(
            "  sourceType: download\n  sourceParameters:\n    url: file://{}\n",
            dir.join("a.raw").display()
        ),
    );
    let o = bifs(&["apply", "-f", m1.to_str().unwrap(), "--store", s]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let before: Vec<_> = backings(&store)
        .iter()
        .map(|p| (p.clone(), fs::read(p).unwrap()))
        .collect();
    tfs.remount("ro");
    let m2 = manifest(
        dir,
        "img-b",
        &format!(
            "  sourceType: download\n  sourceParameters:\n    url: file://{}\n",
            dir.join("a.raw").display()
        ),
    );
    let o = bifs(&["apply", "-f", m2.to_str().unwrap(), "--store", s]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success());
    assert!(err.to_lowercase().contains("read-only"), "{err}");
    let after: Vec<_> = backings(&store)
        .iter()
        .map(|p| (p.clone(), fs::read(p).unwrap()))
        .collect();
    assert!(before == after, "the store changed");
}

#[test]
fn read_only_state_dir_while_a_header_is_persisted() {
    full_tier_only!("root (tmpfs mounts), root, /dev/fuse and fusermount3, cryptsetup");
    let fx = fixture(&[("p.img", 2 * MIB)]);
    let state = fx.root.join("state");
    let tfs = Tmpfs::new(&state, "size=1m,mode=0700");
    tfs.remount("ro");
    let mut m = Mounted::start(
        &fx.store,
        &fx.secrets,
        Some(&state),
        &fx.root.join("mnt"),
        &[],
    );
    // Persisting the encrypt view's header fails: the open fails, clearly logged; raw still works.
    let e = open_errno(&m.path("encrypt/ns/s1/p.img"));
    assert_ne!(
        e, 0,
        "encrypt view opened without a place to persist its header"
    );
    assert!(
        m.log_text().to_lowercase().contains("read-only"),
        "{}",
        m.log_text()
    );
    assert_eq!(open_errno(&m.path("raw/p.img")), 0);
    assert!(m.alive());
    assert!(fs::read(fx.store.join("p.img")).unwrap() == noise(1, 2 * MIB));
    drop(m);
}

/// Readers never get bytes of two versions through one handle while a writer rewrites the
/// source, in place and by rename, with the page cache on (the default) and with direct I/O:
/// every version is one repeated byte, and every successful read of a handle holds the one
/// byte its first read had; otherwise the read fails with EIO. Opens are kept out of the
/// middle of a write(2) (a reader that opens while a write is copying can see that write's
/// partial bytes whatever bifs checks: docs/mount.md, "When a source changes").
#[test]
fn readers_never_mix_versions_while_the_source_is_rewritten() {
    full_tier_only!("root, /dev/fuse and fusermount3");
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    use std::sync::RwLock;
    const LEN: usize = 2 * MIB;
    const VERSIONS: u8 = 120;
    for opts in [&[][..], &["--cache", "direct-io"][..]] {
        let fx = fixture(&[("a.img", LEN)]);
        let src = fx.store.join("a.img");
        fs::write(&src, vec![1u8; LEN]).unwrap();
        let m = Mounted::start(&fx.store, &fx.secrets, None, &fx.root.join("mnt"), opts);
        let gate = RwLock::new(());
        let done = AtomicBool::new(false);
        let (whole, failed) = (AtomicU64::new(0), AtomicU64::new(0));
        std::thread::scope(|s| {
            s.spawn(|| {
                for v in 2..=VERSIONS {
                    {
                        let _w = gate.write().unwrap();
                        let bytes = vec![v; LEN];
                        if v % 3 == 0 {
                            let tmp = fx.store.join(".a.tmp");
                            fs::write(&tmp, &bytes).unwrap();
                            fs::rename(&tmp, &src).unwrap();
                        } else {
                            fs::OpenOptions::new()
                                .write(true)
                                .open(&src)
                                .unwrap()
                                .write_all_at(&bytes, 0)
                                .unwrap();
                        }
                    }
                    std::thread::sleep(Duration::from_millis(4));
                }
                done.store(true, Ordering::SeqCst);
            });
            for r in 0..3 {
                let (m, gate, done, whole, failed) = (&m, &gate, &done, &whole, &failed);
                s.spawn(move || {
                    let view = m.path(if r == 0 { "ignore/a.img" } else { "raw/a.img" });
                    let mut buf = vec![0u8; 256 << 10];
                    while !done.load(Ordering::SeqCst) {
                        let f = {
                            let _r = gate.read().unwrap();
                            fs::File::open(&view).unwrap()
                        };
                        let mut seen: Option<u8> = None;
                        // Twice over: the second pass comes from the page cache where it can.
                        // A read may come back short (the pages it could serve before one
                        // failed); the next one then fails.
                        let ok = (0..2).all(|_| {
                            let mut off = 0;
                            while off < LEN {
                                let want = buf.len().min(LEN - off);
                                match f.read_at(&mut buf[..want], off as u64) {
                                    Ok(n) => {
                                        assert!(n > 0, "{}: end of file at {off}", view.display());
                                        let v = *seen.get_or_insert(buf[0]);
                                        assert!(
                                            buf[..n].iter().all(|&b| b == v),
                                            "{}: one handle read version {v} and then other bytes at {off}",
                                            view.display()
                                        );
                                        off += n;
                                    }
                                    Err(e) => {
                                        assert_eq!(e.raw_os_error(), Some(libc::EIO), "{e}");
                                        return false;
                                    }
                                }
                            }
                            true
                        });
                        let counter = if ok { whole } else { failed };
                        counter.fetch_add(1, Ordering::Relaxed);
                    }
                });
            }
        });
        let (whole, failed) = (whole.into_inner(), failed.into_inner());
        eprintln!("{opts:?}: {whole} handles read whole, {failed} ended with EIO");
        assert!(whole > 0, "{opts:?}: no handle read the file whole");
        // Settled: a new open reads the last version, whole.
        for view in ["ignore/a.img", "raw/a.img"] {
            assert!(
                fs::read(m.path(view)).unwrap() == vec![VERSIONS; LEN],
                "{opts:?}: {view} after the last write"
            );
        }
        m.stop_with_sigterm();
    }
}
