//! A `bifs serve` started with any flags (as a node runs it), its log kept as it comes, killed
//! when dropped; and curl with the status code, the headers and the time a request took.

use std::ffi::OsStr;
use std::io::{BufRead, BufReader, Read};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub struct Serve {
    pub child: Child,
    pub url: String,
    log: Arc<Mutex<String>>,
}

impl Serve {
    /// `bifs serve ARGS --listen 127.0.0.1:0` (prefixed by `wrap`, e.g. `setpriv …`), once it
    /// printed its URL.
    pub fn start_with<S: AsRef<OsStr>>(wrap: &[&str], args: &[S]) -> Serve {
        let mut cmd = match wrap.split_first() {
            Some((first, rest)) => {
                let mut c = Command::new(first);
                c.args(rest).arg(crate::support::BIFS);
                c
            }
            None => Command::new(crate::support::BIFS),
        };
        cmd.arg("serve")
            .args(args)
            .args(["--listen", "127.0.0.1:0"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("starting bifs serve");
        let log = Arc::new(Mutex::new(String::new()));
        if let Some(err) = child.stderr.take() {
            let log = log.clone();
            std::thread::spawn(move || {
                let mut r = BufReader::new(err);
                let mut line = String::new();
                while r.read_line(&mut line).is_ok_and(|n| n > 0) {
                    log.lock().unwrap().push_str(&line);
                    line.clear();
                }
            });
        }
        let mut line = String::new();
        if let Some(out) = child.stdout.take() {
            let mut r = BufReader::new(out);
            r.read_line(&mut line).expect("bifs serve's stdout");
            // Drained after the first line, so the server never blocks on a full pipe.
            std::thread::spawn(move || {
                let mut sink = Vec::new();
                let _ = r.read_to_end(&mut sink);
            });
        }
        let Some(url) = line.trim().strip_prefix("bifs serve: listening on ") else {
            let _ = child.kill();
            let _ = child.wait();
            std::thread::sleep(Duration::from_millis(200));
            panic!(
                "bifs serve did not start: {line:?}\n{}",
                log.lock().unwrap()
            );
        };
        Serve {
            url: url.trim_end_matches('/').to_string(),
            child,
            log,
        }
    }

    pub fn start<S: AsRef<OsStr>>(args: &[S]) -> Serve {
        Self::start_with(&[], args)
    }

    /// The log so far.
    pub fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    /// Waits (up to `within`) for the log to contain `needle`.
    pub fn wait_log(&self, needle: &str, within: Duration) -> bool {
        let end = Instant::now() + within;
        while Instant::now() < end {
            if self.log().contains(needle) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        false
    }

    /// Polls `/readyz` until it answers 200 (up to `within`); its last answer.
    pub fn wait_ready(&self, within: Duration) -> Reply {
        let end = Instant::now() + within;
        loop {
            let r = curl(&["-s"], &format!("{}/readyz", self.url));
            if r.code == 200 || Instant::now() > end {
                return r;
            }
            std::thread::sleep(Duration::from_millis(250));
        }
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        eprintln!("--- bifs serve at {} ---\n{}", self.url, self.log());
    }
}

/// A curl answer.
#[derive(Debug)]
pub struct Reply {
    pub code: u16,
    pub headers: String,
    pub body: Vec<u8>,
    pub took: Duration,
}

impl Reply {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// A response header's value (case-insensitive name), if present.
    pub fn header(&self, name: &str) -> Option<String> {
        self.headers.lines().find_map(|l| {
            let (n, v) = l.split_once(':')?;
            n.trim()
                .eq_ignore_ascii_case(name)
                .then(|| v.trim().to_string())
        })
    }
}

/// `curl ARGS URL`, with the status code and the response headers taken apart.
pub fn curl(args: &[&str], url: &str) -> Reply {
    let dir = tempfile::tempdir().expect("tempdir");
    let head = dir.path().join("headers");
    let body = dir.path().join("body");
    let start = Instant::now();
    let out = Command::new("curl")
        .args(args)
        .arg("-o")
        .arg(&body)
        .arg("-D")
        .arg(&head)
        .args(["-w", "%{http_code}"])
        .arg(url)
        .stdin(Stdio::null())
        .output()
        .expect("curl (apt-get install curl)");
    let took = start.elapsed();
    Reply {
        code: String::from_utf8_lossy(&out.stdout)
            .trim()
            .parse()
            .unwrap_or(0),
        headers: std::fs::read_to_string(&head).unwrap_or_default(),
        body: std::fs::read(&body).unwrap_or_default(),
        took,
    }
}

/// A Secret manifest: PBKDF2-SHA256 with `extra` keys (e.g. forced costs).
pub fn secret_yaml(namespace: &str, name: &str, passphrase: &str, extra: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Secret\nmetadata:\n  name: {name}\n  namespace: {namespace}\nstringData:\n  CRYPTO_KEY_VALUE: \"{passphrase}\"\n  CRYPTO_KEY_PROVIDER: secret\n{extra}"
    )
}
