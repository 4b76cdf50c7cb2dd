//! Keys and access: no passphrase or volume key in any output at `--log trace`, state files
//! 0600 in a 0700 directory, the warning for a Secret manifest others can read, a
//! non-dumpable daemon, and who may read a mount (default vs `--allow-other`, with a second
//! uid through setpriv).
//!
//! Needs root, /dev/fuse, fusermount3, cryptsetup, setpriv; fails loudly without them.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Output, Stdio};

use crate::support::mount::*;

const MIB: usize = 1 << 20;
const PASS: &str = "Tr0ub4dor-zebra-quartz-71";

fn secret_yaml() -> String {
    format!(
        "apiVersion: v1\nkind: Secret\nmetadata: {{name: s1, namespace: ns}}\nstringData:\n  CRYPTO_KEY_VALUE: \"{PASS}\"\n  CRYPTO_PBKDF: pbkdf2\n  CRYPTO_PBKDF_FORCE_ITERATIONS: \"1000\"\n"
    )
}

fn bifs_trace(args: &[&str]) -> Output {
    Command::new(BIFS)
        .args(["--log", "trace"])
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Everything a log could show of the secrets: the passphrase, its base64, the volume key in
/// hex (either case) and base64.
fn assert_no_secrets(out: &str, what: &str, key: &[u8]) {
    use base64::Engine;
    let b64 = base64::engine::general_purpose::STANDARD;
    let kh = hex(key);
    for needle in [
        PASS.to_string(),
        b64.encode(PASS),
        kh.clone(),
        kh.to_uppercase(),
        b64.encode(key),
        kh[..16].to_string(),
    ] {
        assert!(
            !out.contains(&needle),
            "{what} printed secret material ({needle}):\n{out}"
        );
    }
}

/// The volume key of `img`, from cryptsetup (an independent reader).
fn volume_key(img: &Path, dir: &Path) -> Vec<u8> {
    let kf = dir.join("kf");
    fs::write(&kf, PASS).unwrap();
    let vk = dir.join("vk");
    let o = Command::new("cryptsetup")
        .args(["luksDump", "-q", "--dump-volume-key", "--volume-key-file"])
        .arg(&vk)
        .arg("--key-file")
        .arg(&kf)
        .arg(img)
        .output()
        .expect("cryptsetup not found (apt-get install cryptsetup-bin)");
    assert!(o.status.success(), "{}", text(&o));
    fs::read(vk).unwrap()
}

#[test]
fn no_key_material_in_any_output_at_trace() {
    full_tier_only!("root, /dev/fuse and fusermount3, cryptsetup");
    require_tools(&["fusermount3", "cryptsetup", "cp"]);
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let secret = d.join("secret.yaml");
    fs::write(&secret, secret_yaml()).unwrap();
    fs::set_permissions(&secret, fs::Permissions::from_mode(0o600)).unwrap();
    let s = secret.to_str().unwrap();
    fs::write(d.join("plain"), noise(1, 2 * MIB)).unwrap();
    let mut all = String::new();

    let o = bifs_trace(&[
        "encrypt",
        "--secret",
        s,
        d.join("plain").to_str().unwrap(),
        d.join("enc").to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", text(&o));
    all += &text(&o);
    let key = volume_key(&d.join("enc"), d);
    assert!(key.len() >= 32);
    let o = bifs_trace(&[
        "decrypt",
        "--secret",
        s,
        d.join("enc").to_str().unwrap(),
        d.join("dec").to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", text(&o));
    all += &text(&o);
    let o = bifs_trace(&[
        "verify",
        "--secret",
        s,
        "--against",
        d.join("plain").to_str().unwrap(),
        d.join("enc").to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", text(&o));
    all += &text(&o);

    // apply: an encrypted clone through the Longhorn workflow.
    let store = d.join("store");
    fs::create_dir_all(&store).unwrap();
    let mf = d.join("bi.yaml");
    fs::write(&mf, format!(
        "apiVersion: longhorn.io/v1beta2\nkind: BackingImage\nmetadata:\n  name: src-img\n  namespace: longhorn-system\nspec:\n  sourceType: download\n  sourceParameters:\n    url: file://{}\n---\napiVersion: longhorn.io/v1beta2\nkind: BackingImage\nmetadata:\n  name: enc-img\n  namespace: longhorn-system\nspec:\n  sourceType: clone\n  sourceParameters:\n    backing-image: src-img\n    encryption: encrypt\n    secret: s1\n    secret-namespace: ns\n",
        d.join("plain").display())).unwrap();
    let o = bifs_trace(&[
        "apply",
        "-f",
        mf.to_str().unwrap(),
        "--secrets",
        s,
        "--store",
        store.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", text(&o));
    all += &text(&o);

    // mount: every view read, at trace.
    let mstore = d.join("mstore");
    fs::create_dir_all(&mstore).unwrap();
    fs::copy(d.join("enc"), mstore.join("enc.luks")).unwrap();
    fs::copy(d.join("plain"), mstore.join("plain.img")).unwrap();
    let mnt = d.join("mnt");
    fs::create_dir_all(&mnt).unwrap();
    let log = d.join("mount.log");
    let mut child = Command::new(BIFS)
        .args(["--log", "trace", "mount", "--store"])
        .arg(&mstore)
        .arg("--secrets")
        .arg(&secret)
        .arg(&mnt)
        .stdin(Stdio::null())
        .stdout(fs::File::create(d.join("mount.out")).unwrap())
        .stderr(fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while !is_mountpoint(&mnt) {
        assert!(
            std::time::Instant::now() < deadline,
            "mount did not come up"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    for v in [
        "decrypt/ns/s1/enc.luks",
        "encrypt/ns/s1/plain.img",
        "raw/plain.img",
    ] {
        run(Command::new("cp").arg(mnt.join(v)).arg(d.join("out")));
    }
    assert!(fs::read(d.join("out")).unwrap() == noise(1, 2 * MIB));
    // The state directory: 0700, its files 0600.
    let state = mstore.join(".bifs");
    assert_eq!(
        fs::metadata(&state).unwrap().permissions().mode() & 0o777,
        0o700
    );
    let mut n = 0;
    for e in walk(&state) {
        let p = state.join(&e);
        let mode = fs::metadata(&p).unwrap().permissions().mode() & 0o777;
        if p.is_dir() {
            assert_eq!(mode, 0o700, "{e}");
        } else {
            assert_eq!(mode, 0o600, "{e}");
            n += 1;
        }
    }
    assert!(n > 0, "no persisted header in {}", state.display());
    // The daemon is not dumpable: its /proc entries belong to root and core dumps are off.
    let status = fs::read_to_string(format!("/proc/{}/status", child.id())).unwrap();
    let limits = fs::read_to_string(format!("/proc/{}/limits", child.id())).unwrap();
    let core = limits
        .lines()
        .find(|l| l.starts_with("Max core file size"))
        .unwrap();
    assert!(core.split_whitespace().nth(4) == Some("0"), "{core}");
    assert!(status.contains("VmLck:"), "{status}");
    crate::support::signal(child.id(), rustix::process::Signal::TERM);
    child.wait().unwrap();
    all += &fs::read_to_string(&log).unwrap();
    all += &fs::read_to_string(d.join("mount.out")).unwrap();

    assert!(
        all.contains("TRACE") || all.contains("DEBUG"),
        "trace logging produced nothing"
    );
    assert_no_secrets(&all, "encrypt/decrypt/verify/apply/mount", &key);
}

#[test]
fn world_readable_secret_manifest_is_warned_about() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let secret = d.join("secret.yaml");
    fs::write(&secret, secret_yaml()).unwrap();
    fs::write(d.join("plain"), noise(2, MIB)).unwrap();
    for (mode, warned) in [(0o644, true), (0o600, false)] {
        fs::set_permissions(&secret, fs::Permissions::from_mode(mode)).unwrap();
        let o = Command::new(BIFS)
            .args(["encrypt", "--force", "--secret", secret.to_str().unwrap()])
            .arg(d.join("plain"))
            .arg(d.join("enc"))
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", text(&o));
        assert_eq!(
            text(&o).contains("readable by all users"),
            warned,
            "mode {mode:o}: {}",
            text(&o)
        );
    }
}

/// `cat PATH` as uid/gid 65534 (nobody), with an optional extra group.
fn cat_as_nobody(path: &Path, gid: u32) -> Output {
    Command::new("setpriv")
        .args([
            "--reuid=65534",
            &format!("--regid={gid}"),
            "--clear-groups",
            "cat",
        ])
        .arg(path)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .output()
        .expect("setpriv not found (apt-get install util-linux)")
}

#[test]
fn other_users_cannot_read_unless_allow_other_and_the_mode_permits() {
    full_tier_only!("root, /dev/fuse and fusermount3, setpriv");
    require_tools(&["fusermount3", "setpriv"]);
    assert_eq!(
        rustix::process::geteuid().as_raw(),
        0,
        "this test switches uid with setpriv: run it as root"
    );
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    // Let nobody reach the mount point at all: otherwise the tempdir's 0700 would be the test.
    fs::set_permissions(d, fs::Permissions::from_mode(0o755)).unwrap();
    let secret = d.join("secret.yaml");
    fs::write(&secret, secret_yaml()).unwrap();
    fs::set_permissions(&secret, fs::Permissions::from_mode(0o600)).unwrap();
    let store = d.join("store");
    fs::create_dir_all(&store).unwrap();
    fs::write(d.join("plain"), noise(3, MIB)).unwrap();
    run(Command::new(BIFS)
        .args(["encrypt", "--secret", secret.to_str().unwrap()])
        .arg(d.join("plain"))
        .arg(store.join("e.luks")));
    let view = "decrypt/ns/s1/e.luks";

    // Default: read-only, not allow_other. Root (the mounting user) reads; nobody cannot even
    // with root's group, since the kernel refuses other uids before any permission check.
    let m = Mounted::start(&store, &secret, None, &d.join("m1"), &[]);
    assert!(fs::read(m.path(view)).unwrap() == noise(3, MIB));
    let o = cat_as_nobody(&m.path(view), 0);
    assert!(
        !o.status.success() && o.stdout.is_empty(),
        "nobody read the default mount"
    );
    let mi = fs::read_to_string("/proc/self/mountinfo").unwrap();
    let line = mi
        .lines()
        .find(|l| l.contains(m.mnt.to_str().unwrap()))
        .unwrap();
    assert!(
        line.contains(" ro,") || line.contains(" ro "),
        "not read-only: {line}"
    );
    assert!(
        line.contains("default_permissions") && !line.contains("allow_other"),
        "{line}"
    );
    let e = fs::OpenOptions::new()
        .write(true)
        .open(m.path(view))
        .unwrap_err();
    assert!(
        matches!(e.raw_os_error(), Some(libc::EROFS) | Some(libc::EACCES)),
        "{e}"
    );
    m.stop_with_sigterm();

    // --allow-other: the file's mode 0440, owner the mounting user, governs. Another uid in
    // the mounting user's group reads; another uid outside it does not.
    let m = Mounted::start(&store, &secret, None, &d.join("m2"), &["--allow-other"]);
    let meta = fs::metadata(m.path(view)).unwrap();
    assert_eq!(meta.permissions().mode() & 0o777, 0o440);
    let o = cat_as_nobody(&m.path(view), 65534);
    assert!(
        !o.status.success() && o.stdout.is_empty(),
        "nobody (other group) read an allow_other mount"
    );
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("Permission denied"),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let o = cat_as_nobody(&m.path(view), 0);
    assert!(
        o.status.success() && o.stdout == noise(3, MIB),
        "a member of the mounting group could not read"
    );
    m.stop_with_sigterm();
}
