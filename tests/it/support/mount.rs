//! Helpers for tests that mount bifs for real: tool checks, a mounted `bifs mount` process
//! that is always unmounted (even when a test fails), and small file utilities.

pub use crate::support::noise;

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub const BIFS: &str = crate::support::BIFS;

/// Fails loudly, naming what is missing, when the machine cannot run these tests.
pub fn require_tools(tools: &[&str]) {
    let mut missing = Vec::new();
    if !Path::new("/dev/fuse").exists() {
        missing.push(
            "/dev/fuse (load the fuse module, or run the container with --device /dev/fuse)"
                .to_string(),
        );
    }
    for t in tools {
        let found = Command::new("sh")
            .args(["-c", &format!("command -v {t}")])
            .stdout(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !found {
            missing.push(format!("`{t}`"));
        }
    }
    assert!(
        missing.is_empty(),
        "\n\n*** the mount tests need: {} (Debian: apt-get install fuse3 cryptsetup-bin qemu-utils) ***\n\n",
        missing.join(", ")
    );
}

/// Runs a command, panicking with its output when it fails.
pub fn run(cmd: &mut Command) -> Vec<u8> {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("spawning {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed ({}):\n{}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

pub fn is_mountpoint(path: &Path) -> bool {
    let (Ok(m), Some(parent)) = (fs::metadata(path), path.parent()) else {
        return false;
    };
    fs::metadata(parent).is_ok_and(|p| p.dev() != m.dev())
}

/// A running `bifs mount`. Dropping it unmounts (fusermount3 -u, then -uz) and reaps the
/// process, so a failing test never leaves a stale mount behind.
pub struct Mounted {
    pub mnt: PathBuf,
    pub log: PathBuf,
    child: Option<Child>,
}

impl Mounted {
    pub fn start(
        store: &Path,
        secrets: &Path,
        state: Option<&Path>,
        mnt: &Path,
        extra: &[&str],
    ) -> Self {
        // A dead mount (its daemon killed) is there but answers ENOTCONN to stat: it exists.
        if let Err(e) = fs::create_dir_all(mnt) {
            assert_eq!(e.kind(), std::io::ErrorKind::AlreadyExists, "{e}");
        }
        let log = mnt.with_extension(format!("log{}", std::process::id()));
        let log_file = fs::File::create(&log).unwrap();
        let mut cmd = Command::new(BIFS);
        cmd.args(["--log", "bifs=debug,info", "mount", "--store"])
            .arg(store)
            .arg("--secrets")
            .arg(secrets);
        if let Some(s) = state {
            cmd.arg("--state").arg(s);
        }
        cmd.args(extra)
            .arg(mnt)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log_file);
        let child = cmd.spawn().expect("spawn bifs mount");
        let mut m = Mounted {
            mnt: mnt.to_owned(),
            log,
            child: Some(child),
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        while !is_mountpoint(mnt) {
            if let Some(c) = m.child.as_mut() {
                if let Ok(Some(status)) = c.try_wait() {
                    m.child = None;
                    panic!("bifs mount exited early ({status}):\n{}", m.log_text());
                }
            }
            assert!(
                Instant::now() < deadline,
                "bifs mount did not mount in time:\n{}",
                m.log_text()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        m
    }

    /// The daemon's pid (for fault tests that kill it).
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    /// Bytes the daemon has read so far with read(2) and pread(2) (`rchar` of /proc/PID/io):
    /// a view read served from the kernel's page cache adds nothing to it.
    pub fn daemon_read_bytes(&self) -> u64 {
        let io = fs::read_to_string(format!("/proc/{}/io", self.pid())).unwrap();
        io.lines()
            .find_map(|l| l.strip_prefix("rchar: "))
            .and_then(|v| v.trim().parse().ok())
            .expect("rchar in /proc/PID/io")
    }

    /// Waits until the daemon's log contains `what` (or fails after `secs`).
    pub fn wait_for_log(&self, what: &str, secs: u64) -> String {
        let deadline = Instant::now() + Duration::from_secs(secs);
        loop {
            let log = self.log_text();
            if log.contains(what) {
                return log;
            }
            assert!(
                Instant::now() < deadline,
                "no {what:?} in the daemon's log after {secs} s:\n{log}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Whether the daemon is still running.
    pub fn alive(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| c.try_wait().ok().flatten().is_none())
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.mnt.join(rel)
    }

    pub fn log_text(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Unmounts the way an operator would (SIGTERM) and checks the process exits cleanly.
    pub fn stop_with_sigterm(mut self) -> String {
        let mut child = self.child.take().expect("running");
        // SAFETY: kill(2) on a child we spawned and have not reaped.
        crate::support::signal(child.id(), rustix::process::Signal::TERM);
        let deadline = Instant::now() + Duration::from_secs(20);
        let status = loop {
            if let Some(s) = child.try_wait().unwrap() {
                break s;
            }
            assert!(
                Instant::now() < deadline,
                "bifs mount ignored SIGTERM:\n{}",
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(50));
        };
        assert!(
            status.success(),
            "bifs mount exited with {status}:\n{}",
            self.log_text()
        );
        assert!(!is_mountpoint(&self.mnt), "still mounted after SIGTERM");
        self.log_text()
    }
}

impl Drop for Mounted {
    fn drop(&mut self) {
        if is_mountpoint(&self.mnt) {
            let ok = Command::new("fusermount3")
                .arg("-u")
                .arg(&self.mnt)
                .status()
                .is_ok_and(|s| s.success());
            if !ok {
                let _ = Command::new("fusermount3")
                    .arg("-uz")
                    .arg(&self.mnt)
                    .status();
            }
        }
        if let Some(mut c) = self.child.take() {
            let deadline = Instant::now() + Duration::from_secs(10);
            while c.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Every file under `root`, as paths relative to it, sorted (what `ls -R` shows).
pub fn walk(root: &Path) -> Vec<String> {
    fn go(root: &Path, dir: &Path, out: &mut Vec<String>) {
        for e in fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            let rel = p.strip_prefix(root).unwrap().to_string_lossy().into_owned();
            if p.is_dir() {
                out.push(format!("{rel}/"));
                go(root, &p, out);
            } else {
                out.push(rel);
            }
        }
    }
    let mut out = Vec::new();
    go(root, root, &mut out);
    out.sort();
    out
}

pub fn sha512(path: &Path) -> String {
    let out = run(Command::new("sha512sum").arg(path));
    String::from_utf8_lossy(&out)
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .to_owned()
}

/// The errno of opening `path` for reading (0 when it opens).
pub fn open_errno(path: &Path) -> i32 {
    match fs::File::open(path) {
        Ok(_) => 0,
        Err(e) => e.raw_os_error().unwrap_or(-1),
    }
}

/// 512-byte blocks a file occupies.
pub fn blocks(path: &Path) -> u64 {
    fs::metadata(path).unwrap().blocks()
}

/// Reads `old.len()` bytes at `off` through `h`, whose source was just written, until the
/// read fails: it must fail with EIO within 2 s (once inotify or the 50 ms attribute lifetime
/// tells the kernel), and until then serve exactly `old`, the bytes `h` read before the write
/// (cached pages of the one version the handle was opened on).
pub fn fails_soon_with_eio(h: &fs::File, off: u64, old: &[u8]) {
    use std::os::unix::fs::FileExt;
    let deadline = Instant::now() + Duration::from_secs(2);
    let mut buf = vec![0u8; old.len()];
    loop {
        match h.read_at(&mut buf, off) {
            Ok(n) => assert!(
                buf[..n] == old[..n],
                "read at {off} after its source was written: not the bytes read before"
            ),
            Err(e) => {
                assert_eq!(e.raw_os_error(), Some(libc::EIO), "read at {off}: {e}");
                return;
            }
        }
        assert!(
            Instant::now() < deadline,
            "a cached reader still read at {off} 2 s after its source was written"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}
