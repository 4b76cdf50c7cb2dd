//! The Backing Image page in a real browser: Debian's headless Chromium driven over WebDriver
//! (python3-selenium + chromium-driver) by tests/browser/backing_image_page.py, against a real
//! `bifs serve` on 127.0.0.1. Screenshots go to a temp dir (printed), kept after the test.

use std::path::Path;
use std::process::{Command, Stdio};

use crate::support::server::{image_file, Server, PASSPHRASE, SECRET_NAME, SECRET_NS, TOKEN};

const PYTHON: &str = "/usr/bin/python3";

/// Fails loudly, with the install line, when a tool the test needs is missing.
fn require_browser_tools() {
    let mut missing = Vec::new();
    for (path, pkg) in [
        ("/usr/bin/chromium", "chromium"),
        ("/usr/bin/chromedriver", "chromium-driver"),
    ] {
        if !Path::new(path).exists() {
            missing.push(pkg);
        }
    }
    let selenium = Command::new(PYTHON)
        .args(["-c", "import selenium"])
        .stdin(Stdio::null())
        .output()
        .is_ok_and(|o| o.status.success());
    if !selenium {
        missing.push("python3-selenium");
    }
    let cryptsetup = Command::new("cryptsetup")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !cryptsetup {
        missing.push("cryptsetup-bin");
    }
    assert!(
        missing.is_empty(),
        "the browser test needs: apt-get install {} (scripts/setup.sh installs them)",
        missing.join(" ")
    );
}

#[test]
fn backing_image_page_in_chromium() {
    full_tier_only!("chromium, chromium-driver, python3-selenium and cryptsetup");
    require_browser_tools();
    let s = Server::start();
    let source = s.work().join("disk.img");
    image_file(&source, 4 << 20, 11);
    let upload = s.work().join("upload.img");
    image_file(&upload, 1 << 20, 29);
    // Kept after the test (a temp dir, not the tree), so a failure's screenshots can be looked at.
    let shots = std::env::temp_dir().join(format!("bifs-browser-shots-{}", std::process::id()));
    std::fs::create_dir_all(&shots).expect("the screenshot directory");
    println!("browser: screenshots in {}", shots.display());
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/browser/backing_image_page.py");
    let out = Command::new(PYTHON)
        .arg(&script)
        .env("BIFS_URL", &s.url)
        .env("BIFS_TOKEN", TOKEN)
        .env("BIFS_SOURCE", &source)
        .env("BIFS_UPLOAD", &upload)
        .env("BIFS_PASSPHRASE", PASSPHRASE)
        .env("BIFS_SECRET", format!("{SECRET_NS}/{SECRET_NAME}"))
        .env("BIFS_SHOTS", &shots)
        .env("BIFS_WORK", s.work())
        .env("BIFS_BIN", env!("CARGO_BIN_EXE_bifs"))
        .env("BIFS_STORE", s.store())
        .stdin(Stdio::null())
        .output()
        .expect("running the WebDriver script");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    print!("{stdout}");
    assert!(
        out.status.success() && stdout.contains("browser: all steps passed"),
        "the browser script failed ({}):\n{stdout}\n{stderr}",
        out.status
    );
    for shot in [
        "01-table",
        "02-clone-dialog",
        "04-detail",
        "05-refusal",
        "07-create-dialog",
        "09-last-row-menu",
        "10-narrow-table",
    ] {
        let p = shots.join(format!("{shot}.png"));
        let len = std::fs::metadata(&p).map(|m| m.len()).unwrap_or(0);
        assert!(len > 10_000, "{} is missing or empty", p.display());
    }
}
