//! The Longhorn download client of the tests: `tests/longhorn_client/main.go`, a Go program that
//! downloads a URL as backing-image-manager does for a `sourceType: download` BackingImage and
//! leaves the file on a Longhorn disk as it does (see its doc comment for the functions it
//! follows). Built once per test process with the system's `go` (Debian's `golang-go`), offline:
//! the program uses only Go's standard library.
//!
//! Without `go`: the full tier (`BIFS_TEST_ALL=1`) fails loudly with the install hint; the fast
//! tier prints a loud SKIPPED line and the test returns (`longhorn_client_or_skip!`).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;

/// The built client, or why there is none.
static BUILT: OnceLock<Result<PathBuf, String>> = OnceLock::new();

/// The client binary, built on first use; `None` (after a loud SKIPPED line) when `go` is missing
/// in the fast tier. Panics when the build fails, or when `go` is missing in the full tier.
pub fn binary() -> Option<&'static Path> {
    match BUILT.get_or_init(build) {
        Ok(p) => Some(p),
        Err(why) if why.starts_with(NO_GO) && !crate::support::tier::full() => {
            let thread = std::thread::current();
            let _ = writeln!(
                std::io::stderr().lock(),
                "*** SKIPPED {} ({why}) ***",
                thread.name().unwrap_or("?")
            );
            None
        }
        Err(why) => panic!("the Longhorn download client: {why}"),
    }
}

const NO_GO: &str = "needs `go`";

/// Returns from the calling test when the client cannot be built in the fast tier; else the
/// client.
macro_rules! longhorn_client_or_skip {
    () => {
        match crate::support::longhorn_client::binary() {
            Some(c) => crate::support::longhorn_client::Client(c),
            None => return,
        }
    };
}

fn build() -> Result<PathBuf, String> {
    let found = Command::new("go")
        .arg("version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !found {
        return Err(format!(
            "{NO_GO}: apt-get install golang-go (scripts/setup.sh installs it)"
        ));
    }
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/longhorn_client");
    let work = Path::new(env!("CARGO_TARGET_TMPDIR")).join("longhorn-client");
    std::fs::create_dir_all(&work).map_err(|e| format!("creating {}: {e}", work.display()))?;
    // Built under a name of this process's own, then renamed: a test process running in
    // parallel never sees a half-written binary.
    let partial = work.join(format!("longhorn-download.{}", std::process::id()));
    let bin = work.join("longhorn-download");
    let out = Command::new("go")
        .args(["build", "-o"])
        .arg(&partial)
        .arg(".")
        .current_dir(&src)
        // Offline and self-contained: no module downloads, no VCS stamping (the sources sit in a
        // git worktree), a build cache under target/, no user or toolchain configuration.
        .env("GOPROXY", "off")
        .env("GOFLAGS", "-buildvcs=false")
        .env("GOCACHE", work.join("go-cache"))
        .env("GOPATH", work.join("go-path"))
        .env("GOENV", "off")
        .env("GOTOOLCHAIN", "local")
        .env("GOWORK", "off")
        .env("GO111MODULE", "on")
        .env("CGO_ENABLED", "0")
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("running go build: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "go build in {} failed: {}",
            src.display(),
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    std::fs::rename(&partial, &bin).map_err(|e| format!("renaming the client: {e}"))?;
    Ok(bin)
}

/// The client's answer: its JSON line, its exit status and its stderr (Longhorn's message when
/// the download failed).
#[derive(Debug)]
pub struct Download {
    pub ready: bool,
    pub json: serde_json::Value,
    pub stderr: String,
}

impl Download {
    /// Longhorn's message for a failed download (`failed to process sync file: …`).
    pub fn message(&self) -> &str {
        self.json["message"].as_str().unwrap_or("")
    }

    pub fn checksum(&self) -> &str {
        self.json["checksum"].as_str().unwrap_or("")
    }

    pub fn size(&self) -> u64 {
        self.json["size"].as_u64().unwrap_or(0)
    }

    /// Where the file landed: `DISK/backing-images/NAME-UUID/backing`.
    pub fn file(&self) -> PathBuf {
        PathBuf::from(self.json["file"].as_str().unwrap_or(""))
    }

    pub fn seconds(&self, field: &str) -> f64 {
        self.json[field].as_f64().unwrap_or(f64::NAN)
    }

    /// One line for the test log: outcome and timings.
    pub fn summary(&self) -> String {
        format!(
            "{} HEAD {:.3}s, GET headers {:.3}s, first byte {:.3}s, total {:.3}s{}",
            if self.ready { "ready" } else { "FAILED" },
            self.seconds("headSeconds"),
            self.seconds("getHeadersSeconds"),
            self.seconds("firstByteSeconds"),
            self.seconds("totalSeconds"),
            if self.ready {
                String::new()
            } else {
                format!(": {} (stderr: {})", self.message(), self.stderr.trim())
            }
        )
    }
}

/// The built client.
#[derive(Clone, Copy)]
pub struct Client(pub &'static Path);

/// Where a download goes: a Longhorn disk and the BackingImage's name and uuid.
pub struct Target<'a> {
    pub disk: &'a Path,
    pub name: &'a str,
    pub uuid: &'a str,
}

impl Client {
    /// Downloads `url` as Longhorn v1.7 does (4 s limits), into `target` (a temporary disk when
    /// `None`), checking `checksum` when given.
    pub fn download(&self, url: &str, checksum: Option<&str>, target: Option<&Target>) -> Download {
        let mut args: Vec<String> = vec!["--longhorn".into(), "1.7".into()];
        if let Some(c) = checksum {
            args.extend(["--checksum".into(), c.into()]);
        }
        if let Some(t) = target {
            args.extend([
                "--disk".into(),
                t.disk.display().to_string(),
                "--init-disk".into(),
                "default-disk".into(),
                "--name".into(),
                t.name.into(),
                "--uuid".into(),
                t.uuid.into(),
            ]);
        }
        args.push(url.into());
        self.run(&args)
    }

    /// Runs the client with `args`.
    pub fn run(&self, args: &[String]) -> Download {
        let out = Command::new(self.0)
            .args(args)
            .stdin(Stdio::null())
            .output()
            .expect("running the Longhorn download client");
        let stdout = String::from_utf8_lossy(&out.stdout);
        let line = stdout.lines().last().unwrap_or("");
        let json: serde_json::Value = serde_json::from_str(line).unwrap_or_else(|e| {
            panic!(
                "the client printed no JSON line ({e}): {stdout:?}\n{}",
                String::from_utf8_lossy(&out.stderr)
            )
        });
        let ready = out.status.success();
        assert_eq!(
            ready,
            json["status"] == "ready",
            "exit status and JSON disagree: {json}"
        );
        Download {
            ready,
            json,
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }
}
