//! Shared helpers for the interop tests: the `bifs` binary, Debian's `cryptsetup`, `qemu-img`,
//! Kubernetes Secret manifests, deterministic payloads and the Python AES-XTS oracle
//! (`tests/oracle/luks_xts.py`, an implementation that is not ours).
//!
//! Missing external tools make tests FAIL loudly (see [`require_tools`]); they never skip.
use std::collections::BTreeSet;
use std::ffi::{OsStr, OsString};
use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;

pub const KIB: u64 = 1 << 10;
pub const MIB: u64 = 1 << 20;
/// What `bifs encrypt` adds in front of the data (the LUKS2 header area, Longhorn's layout).
pub const LUKS2_HEADER_SIZE: u64 = 16 * MIB;
pub const PYTHON: &str = "/usr/bin/python3";

/// Path of the Python oracle script.
pub fn oracle_script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/oracle/luks_xts.py")
}

// ---------------------------------------------------------------------------------------------
// Tool availability
// ---------------------------------------------------------------------------------------------

/// Panics (fails the test) with an install hint when cryptsetup, qemu-img or `/usr/bin/python3`
/// with `cryptography` is missing. Checked once per test binary.
pub fn require_tools() {
    static CHECK: OnceLock<Result<(), String>> = OnceLock::new();
    let r = CHECK.get_or_init(|| {
        let mut missing = Vec::new();
        let ok = |cmd: &str, args: &[&str]| {
            Command::new(cmd)
                .args(args)
                .stdin(Stdio::null())
                .output()
                .map(|o| o.status.success())
                .unwrap_or(false)
        };
        if !ok("cryptsetup", &["--version"]) {
            missing.push("`cryptsetup` not found or not runnable (apt-get install cryptsetup-bin)");
        }
        if !ok("qemu-img", &["--version"]) {
            missing.push("`qemu-img` not found or not runnable (apt-get install qemu-utils)");
        }
        if !ok(
            PYTHON,
            &["-c", "import cryptography.hazmat.primitives.ciphers"],
        ) {
            missing.push(
                "`/usr/bin/python3` with the `cryptography` package is missing \
                 (apt-get install python3 python3-cryptography)",
            );
        } else {
            let o = Command::new(PYTHON)
                .arg(oracle_script())
                .arg("selftest")
                .output();
            match o {
                Ok(o) if o.status.success() => {}
                Ok(o) => missing.push(Box::leak(
                    format!(
                        "the AES-XTS oracle {} failed its self-test: {}",
                        oracle_script().display(),
                        String::from_utf8_lossy(&o.stderr)
                    )
                    .into_boxed_str(),
                )),
                Err(e) => missing.push(Box::leak(
                    format!("cannot run the oracle: {e}").into_boxed_str(),
                )),
            }
        }
        if missing.is_empty() {
            Ok(())
        } else {
            Err(missing.join("\n  "))
        }
    });
    if let Err(msg) = r {
        panic!(
            "\n\n*** INTEROP TESTS CANNOT RUN: required external tools are missing ***\n  {msg}\n\
             These tests never skip silently; install the tools above and re-run.\n"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Running commands
// ---------------------------------------------------------------------------------------------

pub fn bifs_bin() -> &'static str {
    crate::support::BIFS
}

/// Runs `bifs ARGS...` with stdin closed.
pub fn bifs<I, S>(args: I) -> Output
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    run(Command::new(bifs_bin()).args(args), None)
}

/// Runs `cryptsetup ARGS...` with stdin closed.
pub fn cryptsetup<I, S>(args: I) -> Output
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    run(Command::new("cryptsetup").args(args), None)
}

/// Runs `cryptsetup ARGS...` feeding `stdin` (e.g. a passphrase for `--key-file -`).
pub fn cryptsetup_stdin<I, S>(args: I, stdin: &[u8]) -> Output
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    run(Command::new("cryptsetup").args(args), Some(stdin))
}

/// `cryptsetup luksFormat` of `path` as LUKS2 with a cheap PBKDF2 keyslot (1000 iterations,
/// so tests stay fast) opened by `passphrase`; asserts it succeeded.
pub fn luks2_format_cheap(path: &Path, passphrase: &[u8]) {
    let o = cryptsetup_stdin(
        [
            "luksFormat",
            "--batch-mode",
            "--type",
            "luks2",
            "--pbkdf",
            "pbkdf2",
            "--pbkdf-force-iterations",
            "1000",
            "--key-file",
            "-",
            path.to_str().expect("test paths are UTF-8"),
        ],
        passphrase,
    );
    assert_ok(&o, "cryptsetup luksFormat");
}

pub fn qemu_img<I, S>(args: I) -> Output
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    run(Command::new("qemu-img").args(args), None)
}

fn run(cmd: &mut Command, stdin: Option<&[u8]>) -> Output {
    cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
    cmd.stdin(if stdin.is_some() {
        Stdio::piped()
    } else {
        Stdio::null()
    });
    let desc = format!("{cmd:?}");
    let mut child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("cannot spawn {desc}: {e} (is the tool installed?)"));
    if let Some(data) = stdin {
        let mut si = child.stdin.take().unwrap();
        // A failing write (process exited early) shows up in its exit status.
        let _ = si.write_all(data);
        drop(si);
    }
    child
        .wait_with_output()
        .unwrap_or_else(|e| panic!("waiting for {desc}: {e}"))
}

/// "exit=N stdout=... stderr=..." for assertion messages.
pub fn describe(o: &Output) -> String {
    format!(
        "exit={:?}\n--- stdout ---\n{}\n--- stderr ---\n{}",
        o.status.code(),
        String::from_utf8_lossy(&o.stdout).trim_end(),
        String::from_utf8_lossy(&o.stderr).trim_end()
    )
}

/// Asserts success, naming `what` (the case and the command) on failure.
#[track_caller]
pub fn assert_ok(o: &Output, what: &str) {
    assert!(
        o.status.success(),
        "{what}: command failed\n{}",
        describe(o)
    );
}

pub fn stderr_of(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

// ---------------------------------------------------------------------------------------------
// Deterministic data
// ---------------------------------------------------------------------------------------------

/// splitmix64 stream: deterministic "random" bytes without a rand dependency.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed ^ 0x6a09_e667_f3bc_c908)
    }
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    pub fn fill(&mut self, buf: &mut [u8]) {
        for chunk in buf.chunks_mut(8) {
            let v = self.next_u64().to_le_bytes();
            chunk.copy_from_slice(&v[..chunk.len()]);
        }
    }
}

/// Writes `size` deterministic pseudo-random bytes (from `seed`) to `path`.
pub fn random_file(path: &Path, size: u64, seed: u64) {
    let mut f = File::create(path).unwrap_or_else(|e| panic!("create {}: {e}", path.display()));
    let mut rng = Rng::new(seed);
    let mut buf = vec![0u8; MIB as usize];
    let mut left = size;
    while left > 0 {
        let n = left.min(buf.len() as u64) as usize;
        rng.fill(&mut buf[..n]);
        f.write_all(&buf[..n]).unwrap();
        left -= n as u64;
    }
}

/// A payload made of regions; `Zero` regions are left as holes (sparse) in the file.
#[derive(Clone, Copy, Debug)]
pub enum Region {
    Random(u64),
    Zero(u64),
}

/// Writes `regions` to `path` (random regions from a stream seeded by `seed`, zero regions as
/// holes). Returns the total size.
pub fn payload_file(path: &Path, seed: u64, regions: &[Region]) -> u64 {
    let f = File::create(path).unwrap_or_else(|e| panic!("create {}: {e}", path.display()));
    let mut rng = Rng::new(seed);
    let mut pos = 0u64;
    for r in regions {
        match *r {
            Region::Random(n) => {
                let mut buf = vec![0u8; n as usize];
                rng.fill(&mut buf);
                f.write_all_at(&buf, pos).unwrap();
                pos += n;
            }
            Region::Zero(n) => pos += n,
        }
    }
    f.set_len(pos).unwrap();
    pos
}

/// The standard interop payload: 3 MiB = 2 MiB random, a 640 KiB hole, 384 KiB random.
/// Its size is a multiple of 4096, so it works with both sector sizes.
pub fn standard_payload(path: &Path, seed: u64) -> u64 {
    payload_file(
        path,
        seed,
        &[
            Region::Random(2 * MIB),
            Region::Zero(640 * KIB),
            Region::Random(384 * KIB),
        ],
    )
}

/// Compares `actual` with `expected` followed by `zero_tail` zero bytes. Returns a description
/// of the first difference.
pub fn compare_files(actual: &Path, expected: &Path, zero_tail: u64) -> Result<(), String> {
    let alen = fs::metadata(actual)
        .map_err(|e| format!("{}: {e}", actual.display()))?
        .len();
    let elen = fs::metadata(expected)
        .map_err(|e| format!("{}: {e}", expected.display()))?
        .len();
    if alen != elen + zero_tail {
        return Err(format!(
            "size mismatch: {} is {alen} bytes, expected {} ({} + {zero_tail} zero bytes)",
            actual.display(),
            elen + zero_tail,
            elen
        ));
    }
    let mut a = File::open(actual).unwrap();
    let mut e = File::open(expected).unwrap();
    let mut ab = vec![0u8; MIB as usize];
    let mut eb = vec![0u8; MIB as usize];
    let mut pos = 0u64;
    while pos < alen {
        let n = (alen - pos).min(MIB) as usize;
        a.read_exact(&mut ab[..n]).unwrap();
        if pos < elen {
            let m = ((elen - pos) as usize).min(n);
            e.read_exact(&mut eb[..m]).unwrap();
            eb[m..n].fill(0);
        } else {
            eb[..n].fill(0);
        }
        if ab[..n] != eb[..n] {
            let i = (0..n).find(|&i| ab[i] != eb[i]).unwrap();
            let at = pos + i as u64;
            return Err(format!(
                "content differs at byte {at} (sector512 {}, in {}): got {:02x?}, expected {:02x?}",
                at / 512,
                if at < elen {
                    "source data"
                } else {
                    "zero padding"
                },
                &ab[i..n.min(i + 8)],
                &eb[i..n.min(i + 8)]
            ));
        }
        pos += n as u64;
    }
    Ok(())
}

/// Compares the first `len(expected)` bytes of `actual` with `expected`; `actual` must be
/// exactly `actual_len` bytes long.
pub fn compare_prefix(actual: &Path, expected: &Path, actual_len: u64) -> Result<(), String> {
    let alen = file_len(actual);
    if alen != actual_len {
        return Err(format!(
            "size mismatch: {} is {alen} bytes, expected {actual_len}",
            actual.display()
        ));
    }
    let elen = file_len(expected);
    let a = File::open(actual).unwrap();
    let mut e = File::open(expected).unwrap();
    let mut ab = vec![0u8; MIB as usize];
    let mut eb = vec![0u8; MIB as usize];
    let mut pos = 0u64;
    while pos < elen {
        let n = (elen - pos).min(MIB) as usize;
        a.read_exact_at(&mut ab[..n], pos).unwrap();
        e.read_exact(&mut eb[..n]).unwrap();
        if ab[..n] != eb[..n] {
            let i = (0..n).find(|&i| ab[i] != eb[i]).unwrap();
            let at = pos + i as u64;
            return Err(format!(
                "content differs at byte {at} (sector512 {}): got {:02x?}, expected {:02x?}",
                at / 512,
                &ab[i..n.min(i + 8)],
                &eb[i..n.min(i + 8)]
            ));
        }
        pos += n as u64;
    }
    Ok(())
}

#[track_caller]
pub fn assert_prefix(actual: &Path, expected: &Path, actual_len: u64, case: &str) {
    if let Err(e) = compare_prefix(actual, expected, actual_len) {
        panic!("{case}: {e}");
    }
}

#[track_caller]
pub fn assert_same(actual: &Path, expected: &Path, zero_tail: u64, case: &str) {
    if let Err(e) = compare_files(actual, expected, zero_tail) {
        panic!("{case}: {e}");
    }
}

pub fn file_len(p: &Path) -> u64 {
    fs::metadata(p)
        .unwrap_or_else(|e| panic!("{}: {e}", p.display()))
        .len()
}

pub fn write_file(p: &Path, data: &[u8]) {
    fs::write(p, data).unwrap_or_else(|e| panic!("write {}: {e}", p.display()));
}

/// Names of the entries of `dir`.
pub fn dir_entries(dir: &Path) -> BTreeSet<OsString> {
    fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("read_dir {}: {e}", dir.display()))
        .map(|e| e.unwrap().file_name())
        .collect()
}

/// Asserts that `dir` holds exactly the entries `before` (nothing new: no DST, no temp file).
#[track_caller]
pub fn assert_no_leftovers(dir: &Path, before: &BTreeSet<OsString>, case: &str) {
    let after = dir_entries(dir);
    let new: Vec<_> = after.difference(before).collect();
    let gone: Vec<_> = before.difference(&after).collect();
    assert!(
        new.is_empty() && gone.is_empty(),
        "{case}: directory {} changed after a refused command: new entries {new:?}, removed {gone:?}",
        dir.display()
    );
}

// ---------------------------------------------------------------------------------------------
// Kubernetes Secret manifests
// ---------------------------------------------------------------------------------------------

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SecretEncoding {
    /// `stringData:` with plain strings.
    StringData,
    /// `data:` with base64 values.
    Data,
}

/// One Secret document. `None` fields are left out of the manifest.
#[derive(Clone, Debug)]
pub struct SecretParams {
    pub name: String,
    pub namespace: String,
    pub passphrase: String,
    pub provider: Option<String>,
    pub cipher: Option<String>,
    pub hash: Option<String>,
    pub key_size: Option<String>,
    pub pbkdf: Option<String>,
    pub pbkdf_memory: Option<String>,
    pub force_iterations: Option<String>,
    pub encoding: SecretEncoding,
}

impl SecretParams {
    /// The documented example Secret (argon2i, sha256, 256-bit key) WITHOUT cost overrides.
    pub fn new(passphrase: &str) -> SecretParams {
        SecretParams {
            name: "longhorn-crypto".into(),
            namespace: "longhorn-system".into(),
            passphrase: passphrase.into(),
            provider: Some("secret".into()),
            cipher: Some("aes-xts-plain64".into()),
            hash: Some("sha256".into()),
            key_size: Some("256".into()),
            pbkdf: Some("argon2i".into()),
            pbkdf_memory: None,
            force_iterations: None,
            encoding: SecretEncoding::StringData,
        }
    }

    /// A Secret for `case` with cheap KDF costs (see [`Case::cheap_costs`]).
    pub fn for_case(case: &Case, passphrase: &str) -> SecretParams {
        let (mem, iters) = case.cheap_costs();
        SecretParams {
            hash: Some(case.hash.into()),
            key_size: Some(case.key_bits.to_string()),
            pbkdf: Some(case.kdf.into()),
            pbkdf_memory: mem.map(|m| m.to_string()),
            force_iterations: Some(iters.to_string()),
            ..SecretParams::new(passphrase)
        }
    }

    /// Cheap argon2i (memory 32 KiB, time 4), for tests that only need *a* Secret.
    pub fn cheap(passphrase: &str) -> SecretParams {
        SecretParams {
            pbkdf_memory: Some("32".into()),
            force_iterations: Some("4".into()),
            ..SecretParams::new(passphrase)
        }
    }

    fn fields(&self) -> Vec<(&'static str, &str)> {
        let mut v = vec![("CRYPTO_KEY_VALUE", self.passphrase.as_str())];
        let opt = [
            ("CRYPTO_KEY_PROVIDER", &self.provider),
            ("CRYPTO_KEY_CIPHER", &self.cipher),
            ("CRYPTO_KEY_HASH", &self.hash),
            ("CRYPTO_KEY_SIZE", &self.key_size),
            ("CRYPTO_PBKDF", &self.pbkdf),
            ("CRYPTO_PBKDF_MEMORY", &self.pbkdf_memory),
            ("CRYPTO_PBKDF_FORCE_ITERATIONS", &self.force_iterations),
        ];
        for (k, val) in opt {
            if let Some(val) = val {
                v.push((k, val.as_str()));
            }
        }
        v
    }

    /// The YAML text of this one document (no leading `---`).
    pub fn to_yaml(&self) -> String {
        // A JSON string literal is a valid YAML double-quoted scalar.
        let q = |s: &str| serde_json::to_string(s).unwrap();
        let mut y = String::new();
        y.push_str("apiVersion: v1\nkind: Secret\nmetadata:\n");
        y.push_str(&format!(
            "  name: {}\n  namespace: {}\n",
            q(&self.name),
            q(&self.namespace)
        ));
        y.push_str("type: Opaque\n");
        match self.encoding {
            SecretEncoding::StringData => {
                y.push_str("stringData:\n");
                for (k, v) in self.fields() {
                    y.push_str(&format!("  {k}: {}\n", q(v)));
                }
            }
            SecretEncoding::Data => {
                use base64::Engine as _;
                y.push_str("data:\n");
                for (k, v) in self.fields() {
                    let b = base64::engine::general_purpose::STANDARD.encode(v.as_bytes());
                    y.push_str(&format!("  {k}: {b}\n"));
                }
            }
        }
        y
    }
}

/// Writes a single-document Secret manifest to `dir/<file_stem>.yaml`.
pub fn write_secret(dir: &Path, file_stem: &str, p: &SecretParams) -> PathBuf {
    write_secret_docs(dir, file_stem, std::slice::from_ref(p))
}

/// Writes a multi-document manifest (documents separated by `---`).
/// Mode 0600, as a Secret should be (bifs warns about world-readable manifests).
pub fn write_secret_docs(dir: &Path, file_stem: &str, docs: &[SecretParams]) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let path = dir.join(format!("{file_stem}.yaml"));
    let text: Vec<String> = docs.iter().map(|d| d.to_yaml()).collect();
    write_file(&path, format!("---\n{}", text.join("---\n")).as_bytes());
    fs::set_permissions(&path, fs::Permissions::from_mode(0o600)).unwrap();
    path
}

/// Writes a passphrase key file (exact bytes, no newline), as cryptsetup/qemu read it.
pub fn write_keyfile(dir: &Path, file_stem: &str, passphrase: &str) -> PathBuf {
    let path = dir.join(format!("{file_stem}.key"));
    write_file(&path, passphrase.as_bytes());
    path
}

// ---------------------------------------------------------------------------------------------
// The parameter matrix
// ---------------------------------------------------------------------------------------------

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Case {
    /// 256 = AES-128-XTS, 512 = AES-256-XTS.
    pub key_bits: u32,
    pub sector: u32,
    pub kdf: &'static str,
    pub hash: &'static str,
}

impl fmt::Display for Case {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "key={} sector={} kdf={} hash={}",
            self.key_bits, self.sector, self.kdf, self.hash
        )
    }
}

impl Case {
    /// (argon2 memory KiB, iterations): pbkdf2 -> (None, 1000), argon2 -> (Some(32), 4).
    pub fn cheap_costs(&self) -> (Option<u32>, u32) {
        if self.kdf == "pbkdf2" {
            (None, 1000)
        } else {
            (Some(32), 4)
        }
    }

    /// cryptsetup arguments for the cheap costs.
    pub fn cryptsetup_cost_args(&self) -> Vec<String> {
        let (mem, iters) = self.cheap_costs();
        let mut v = Vec::new();
        if let Some(m) = mem {
            v.push("--pbkdf-memory".into());
            v.push(m.to_string());
            // --pbkdf-parallel left at cryptsetup's default (min(4, CPUs)): argon2 lanes > 1
            // on any multi-core machine, which the reader must handle.
        }
        v.push("--pbkdf-force-iterations".into());
        v.push(iters.to_string());
        v
    }

    /// A short tag usable in file names.
    pub fn tag(&self) -> String {
        format!(
            "k{}-s{}-{}-{}",
            self.key_bits, self.sector, self.kdf, self.hash
        )
    }
}

/// One `#[test]` per case, so a single case runs by name and the harness runs them in
/// parallel: `per_case_tests!(body: name => case, ...)` makes `mod body { fn name() }`, each
/// calling `body(&case)`. Run one with `cargo test --test FILE body::name`.
#[macro_export]
macro_rules! per_case_tests {
    ($body:ident: $($name:ident => $case:expr),+ $(,)?) => {
        mod $body {
            $(
                #[test]
                fn $name() {
                    super::$body(&$case)
                }
            )+
        }
    };
}

/// [`per_case_tests!`] over the parameter matrix, named `k<key bits>_s<sector>_<kdf>_<hash>`:
/// key size {256, 512} x sector size {512, 4096} x KDF {pbkdf2, argon2i, argon2id} x hash
/// {sha256, sha512}, 24 cases.
#[macro_export]
macro_rules! matrix_tests {
    ($body:ident) => {
        $crate::per_case_tests!($body:
        k256_s512_pbkdf2_sha256 => $crate::support::common::Case { key_bits: 256, sector: 512, kdf: "pbkdf2", hash: "sha256" },
        k256_s512_pbkdf2_sha512 => $crate::support::common::Case { key_bits: 256, sector: 512, kdf: "pbkdf2", hash: "sha512" },
        k256_s512_argon2i_sha256 => $crate::support::common::Case { key_bits: 256, sector: 512, kdf: "argon2i", hash: "sha256" },
        k256_s512_argon2i_sha512 => $crate::support::common::Case { key_bits: 256, sector: 512, kdf: "argon2i", hash: "sha512" },
        k256_s512_argon2id_sha256 => $crate::support::common::Case { key_bits: 256, sector: 512, kdf: "argon2id", hash: "sha256" },
        k256_s512_argon2id_sha512 => $crate::support::common::Case { key_bits: 256, sector: 512, kdf: "argon2id", hash: "sha512" },
        k256_s4096_pbkdf2_sha256 => $crate::support::common::Case { key_bits: 256, sector: 4096, kdf: "pbkdf2", hash: "sha256" },
        k256_s4096_pbkdf2_sha512 => $crate::support::common::Case { key_bits: 256, sector: 4096, kdf: "pbkdf2", hash: "sha512" },
        k256_s4096_argon2i_sha256 => $crate::support::common::Case { key_bits: 256, sector: 4096, kdf: "argon2i", hash: "sha256" },
        k256_s4096_argon2i_sha512 => $crate::support::common::Case { key_bits: 256, sector: 4096, kdf: "argon2i", hash: "sha512" },
        k256_s4096_argon2id_sha256 => $crate::support::common::Case { key_bits: 256, sector: 4096, kdf: "argon2id", hash: "sha256" },
        k256_s4096_argon2id_sha512 => $crate::support::common::Case { key_bits: 256, sector: 4096, kdf: "argon2id", hash: "sha512" },
        k512_s512_pbkdf2_sha256 => $crate::support::common::Case { key_bits: 512, sector: 512, kdf: "pbkdf2", hash: "sha256" },
        k512_s512_pbkdf2_sha512 => $crate::support::common::Case { key_bits: 512, sector: 512, kdf: "pbkdf2", hash: "sha512" },
        k512_s512_argon2i_sha256 => $crate::support::common::Case { key_bits: 512, sector: 512, kdf: "argon2i", hash: "sha256" },
        k512_s512_argon2i_sha512 => $crate::support::common::Case { key_bits: 512, sector: 512, kdf: "argon2i", hash: "sha512" },
        k512_s512_argon2id_sha256 => $crate::support::common::Case { key_bits: 512, sector: 512, kdf: "argon2id", hash: "sha256" },
        k512_s512_argon2id_sha512 => $crate::support::common::Case { key_bits: 512, sector: 512, kdf: "argon2id", hash: "sha512" },
        k512_s4096_pbkdf2_sha256 => $crate::support::common::Case { key_bits: 512, sector: 4096, kdf: "pbkdf2", hash: "sha256" },
        k512_s4096_pbkdf2_sha512 => $crate::support::common::Case { key_bits: 512, sector: 4096, kdf: "pbkdf2", hash: "sha512" },
        k512_s4096_argon2i_sha256 => $crate::support::common::Case { key_bits: 512, sector: 4096, kdf: "argon2i", hash: "sha256" },
        k512_s4096_argon2i_sha512 => $crate::support::common::Case { key_bits: 512, sector: 4096, kdf: "argon2i", hash: "sha512" },
        k512_s4096_argon2id_sha256 => $crate::support::common::Case { key_bits: 512, sector: 4096, kdf: "argon2id", hash: "sha256" },
        k512_s4096_argon2id_sha512 => $crate::support::common::Case { key_bits: 512, sector: 4096, kdf: "argon2id", hash: "sha512" },
        );
    };
}

// ---------------------------------------------------------------------------------------------
// cryptsetup / qemu-img images and the oracle
// ---------------------------------------------------------------------------------------------

/// A LUKS image made by a real tool from a payload file.
#[derive(Debug, Clone)]
pub struct ToolImage {
    pub path: PathBuf,
    pub keyfile: PathBuf,
    /// Byte offset of the data segment.
    pub data_offset: u64,
    /// The data segment is the payload followed by this many bytes that cryptsetup never wrote
    /// (their "plaintext" is the decryption of whatever was on disk: garbage, not zeros).
    pub unwritten_tail: u64,
}

/// Makes a LUKS2 image of `payload` with real cryptsetup the way one encrypts a device in
/// place: copy the payload into a file 16 MiB larger, then offline
/// `cryptsetup reencrypt --encrypt --type luks2 --reduce-device-size 16M` with `case`'s cipher
/// parameters and cheap KDF costs.
///
/// Where the payload lands (cryptsetup 2.6, verified by `oracle_decrypts_cryptsetup_images`):
/// with `--reduce-device-size R` and no detached header, cryptsetup puts the data segment at
/// R/2 (8 MiB here, asserted) and encrypts the first (file size - R) bytes of the original
/// file, shifted up by R/2, into the start of the segment. The segment is "dynamic" (to the end
/// of the file), so it is the encrypted payload followed by R/2 bytes cryptsetup never wrote
/// (still the file's old content, here zeros from the hole; they decrypt to garbage).
///
/// If `trim` is true the file is then truncated to data_offset + payload length, so the data
/// segment is exactly the payload; otherwise `unwritten_tail` = R/2.
pub fn make_luks2_with_cryptsetup(
    dir: &Path,
    stem: &str,
    payload: &Path,
    case: &Case,
    passphrase: &str,
    trim: bool,
) -> ToolImage {
    make_luks2_with_cryptsetup_ext(dir, stem, payload, case, passphrase, trim, &[])
}

/// [`make_luks2_with_cryptsetup`] with extra `cryptsetup reencrypt` arguments (e.g.
/// `--luks2-metadata-size 64k`, `--label X`).
pub fn make_luks2_with_cryptsetup_ext(
    dir: &Path,
    stem: &str,
    payload: &Path,
    case: &Case,
    passphrase: &str,
    trim: bool,
    extra: &[&str],
) -> ToolImage {
    let what = format!("{case}: cryptsetup reencrypt --encrypt of {stem}");
    let plen = file_len(payload);
    let path = dir.join(format!("{stem}.luks2"));
    fs::copy(payload, &path).unwrap();
    OpenOptions::new()
        .write(true)
        .open(&path)
        .unwrap()
        .set_len(plen + 16 * MIB)
        .unwrap();
    let keyfile = write_keyfile(dir, stem, passphrase);
    let mut args: Vec<String> = [
        "reencrypt",
        "--encrypt",
        "--type",
        "luks2",
        "--reduce-device-size",
        "16M",
        "--cipher",
        "aes-xts-plain64",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    args.extend([
        "--key-size".into(),
        case.key_bits.to_string(),
        "--hash".into(),
        case.hash.into(),
        "--pbkdf".into(),
        case.kdf.into(),
        "--sector-size".into(),
        case.sector.to_string(),
    ]);
    args.extend(case.cryptsetup_cost_args());
    args.extend(extra.iter().map(|s| s.to_string()));
    args.extend([
        "--batch-mode".into(),
        "--key-file".into(),
        keyfile.display().to_string(),
    ]);
    args.push(path.display().to_string());
    let o = cryptsetup(&args);
    assert_ok(&o, &what);

    let meta = luks2_json(&path);
    let seg = &meta["segments"]["0"];
    let data_offset: u64 = seg["offset"].as_str().unwrap().parse().unwrap();
    assert_eq!(seg["size"], "dynamic", "{what}: unexpected segment {seg}");
    assert_eq!(
        data_offset,
        8 * MIB,
        "{what}: cryptsetup placed the segment unexpectedly: {seg}"
    );
    let flen = file_len(&path);
    let unwritten_tail = if trim {
        OpenOptions::new()
            .write(true)
            .open(&path)
            .unwrap()
            .set_len(data_offset + plen)
            .unwrap();
        0
    } else {
        flen - data_offset - plen
    };
    ToolImage {
        path,
        keyfile,
        data_offset,
        unwritten_tail,
    }
}

/// Makes a LUKS1 image of `payload` with `qemu-img convert -O luks`, e.g. `cipher_alg` =
/// "aes-256" (AES-256-XTS, 512-bit key) or "aes-128". PBKDF2 with `hash_alg`; iter-time is set
/// low (10 ms) to keep it quick. The data segment is exactly the payload.
pub fn make_luks1_with_qemu(
    dir: &Path,
    stem: &str,
    payload: &Path,
    cipher_alg: &str,
    hash_alg: &str,
    passphrase: &str,
) -> ToolImage {
    let path = dir.join(format!("{stem}.luks1"));
    let keyfile = write_keyfile(dir, stem, passphrase);
    // qemu benchmarks PBKDF2 (~0.5-2 s per run, whatever iter-time says) with thread CPU time;
    // on coarse CPU accounting a fast first round measures 0 ms and qemu gives up with
    // "Unable to get accurate CPU usage" (on a fast CPU with tick-based accounting, often: 8
    // tries in a row failed once here). Retry that specific failure; a failed try costs ms.
    let mut attempt = 0;
    let o = loop {
        attempt += 1;
        let _ = fs::remove_file(&path);
        let o = qemu_luks1_convert(payload, &path, &keyfile, cipher_alg, hash_alg);
        if o.status.success()
            || attempt >= 40
            || !stderr_of(&o).contains("Unable to get accurate CPU usage")
        {
            break o;
        }
    };
    assert_ok(
        &o,
        &format!("qemu-img convert -O luks ({cipher_alg}, {hash_alg}) of {stem}"),
    );
    let data_offset = luks1_payload_offset(&path);
    assert_eq!(
        file_len(&path) - data_offset,
        file_len(payload),
        "qemu-img LUKS1 image {stem}: data segment is not exactly the payload"
    );
    ToolImage {
        path,
        keyfile,
        data_offset,
        unwritten_tail: 0,
    }
}

fn qemu_luks1_convert(
    payload: &Path,
    path: &Path,
    keyfile: &Path,
    cipher_alg: &str,
    hash_alg: &str,
) -> Output {
    qemu_img([
        OsString::from("convert"),
        "-f".into(),
        "raw".into(),
        "-O".into(),
        "luks".into(),
        "-o".into(),
        format!(
            "key-secret=sec0,cipher-alg={cipher_alg},cipher-mode=xts,ivgen-alg=plain64,\
             hash-alg={hash_alg},iter-time=10"
        )
        .into(),
        "--object".into(),
        format!("secret,id=sec0,file={}", keyfile.display()).into(),
        payload.into(),
        path.into(),
    ])
}

/// Makes a LUKS1 image with cryptsetup: LUKS1 offline `reencrypt` needs device-mapper, so this
/// encrypts as LUKS2 (pbkdf2 with 1000 iterations, 512-byte sectors) and then runs
/// `cryptsetup convert --type luks1`. The image is trimmed so the data segment is exactly the
/// payload. Fast and deterministic, unlike qemu-img's PBKDF2 benchmark.
pub fn make_luks1_with_cryptsetup(
    dir: &Path,
    stem: &str,
    payload: &Path,
    key_bits: u32,
    hash: &'static str,
    passphrase: &str,
) -> ToolImage {
    let case = Case {
        key_bits,
        sector: 512,
        kdf: "pbkdf2",
        hash,
    };
    let img = make_luks2_with_cryptsetup(dir, stem, payload, &case, passphrase, true);
    let path = img.path.with_extension("luks1");
    fs::rename(&img.path, &path).unwrap();
    let o = cryptsetup([
        OsStr::new("convert"),
        OsStr::new("--type"),
        OsStr::new("luks1"),
        OsStr::new("--batch-mode"),
        path.as_os_str(),
    ]);
    assert_ok(&o, &format!("cryptsetup convert --type luks1 of {stem}"));
    let data_offset = luks1_payload_offset(&path);
    assert_eq!(
        data_offset, img.data_offset,
        "cryptsetup convert moved the data segment of {stem}"
    );
    assert_eq!(
        file_len(&path) - data_offset,
        file_len(payload),
        "LUKS1 image {stem}: segment size"
    );
    ToolImage {
        path,
        keyfile: img.keyfile,
        data_offset,
        unwritten_tail: 0,
    }
}

/// `cryptsetup luksDump --dump-json-metadata` (LUKS2 only), parsed.
pub fn luks2_json(img: &Path) -> serde_json::Value {
    let o = cryptsetup([
        OsStr::new("luksDump"),
        OsStr::new("--dump-json-metadata"),
        img.as_os_str(),
    ]);
    assert_ok(
        &o,
        &format!("cryptsetup luksDump --dump-json-metadata {}", img.display()),
    );
    serde_json::from_slice(&o.stdout).unwrap_or_else(|e| {
        panic!(
            "luksDump JSON of {} does not parse: {e}\n{}",
            img.display(),
            describe(&o)
        )
    })
}

/// LUKS1 "Payload offset" (sectors) from `cryptsetup luksDump`, in bytes.
pub fn luks1_payload_offset(img: &Path) -> u64 {
    let o = cryptsetup([OsStr::new("luksDump"), img.as_os_str()]);
    assert_ok(&o, &format!("cryptsetup luksDump {}", img.display()));
    let text = String::from_utf8_lossy(&o.stdout);
    let line = text
        .lines()
        .find(|l| l.starts_with("Payload offset:"))
        .unwrap_or_else(|| {
            panic!(
                "no Payload offset in luksDump of {}:\n{text}",
                img.display()
            )
        });
    let sectors: u64 = line["Payload offset:".len()..].trim().parse().unwrap();
    sectors * 512
}

/// `cryptsetup luksUUID`.
pub fn luks_uuid(img: &Path) -> String {
    let o = cryptsetup([OsStr::new("luksUUID"), img.as_os_str()]);
    assert_ok(&o, &format!("cryptsetup luksUUID {}", img.display()));
    String::from_utf8_lossy(&o.stdout).trim().to_string()
}

/// The volume key, from `cryptsetup luksDump --dump-volume-key --batch-mode --key-file F`.
pub fn volume_key(img: &Path, keyfile: &Path) -> Vec<u8> {
    let o = cryptsetup([
        OsStr::new("luksDump"),
        OsStr::new("--dump-volume-key"),
        OsStr::new("--batch-mode"),
        OsStr::new("--key-file"),
        keyfile.as_os_str(),
        img.as_os_str(),
    ]);
    assert_ok(
        &o,
        &format!("cryptsetup luksDump --dump-volume-key {}", img.display()),
    );
    let text = String::from_utf8_lossy(&o.stdout);
    let mut key = Vec::new();
    let mut in_dump = false;
    for line in text.lines() {
        let rest = if let Some(r) = line.strip_prefix("MK dump:") {
            in_dump = true;
            r
        } else if in_dump {
            line
        } else {
            continue;
        };
        let toks: Vec<&str> = rest.split_whitespace().collect();
        if toks.is_empty()
            || !toks
                .iter()
                .all(|t| t.len() == 2 && t.chars().all(|c| c.is_ascii_hexdigit()))
        {
            break;
        }
        key.extend(toks.iter().map(|t| u8::from_str_radix(t, 16).unwrap()));
    }
    assert!(
        key.len() == 32 || key.len() == 64,
        "cannot parse the volume key of {} ({} bytes):\n{text}",
        img.display(),
        key.len()
    );
    key
}

/// `cryptsetup open --test-passphrase --key-file - IMG` with `passphrase` on stdin.
pub fn test_passphrase(img: &Path, passphrase: &[u8]) -> Output {
    cryptsetup_stdin(
        [
            OsStr::new("open"),
            OsStr::new("--test-passphrase"),
            OsStr::new("--key-file"),
            OsStr::new("-"),
            img.as_os_str(),
        ],
        passphrase,
    )
}

/// Decrypts `length` bytes of the data segment at `offset` of `img` into `out` with the Python
/// oracle (AES-XTS, one data unit per sector, tweak = segment byte offset / 512).
pub fn oracle_decrypt(img: &Path, out: &Path, key: &[u8], offset: u64, sector: u32, length: u64) {
    let hex: String = key.iter().map(|b| format!("{b:02x}")).collect();
    let o = run(
        Command::new(PYTHON)
            .arg(oracle_script())
            .arg("decrypt")
            .arg("--key-hex")
            .arg(hex)
            .arg("--offset")
            .arg(offset.to_string())
            .arg("--sector-size")
            .arg(sector.to_string())
            .arg("--length")
            .arg(length.to_string())
            .arg(img)
            .arg(out),
        None,
    );
    assert_ok(&o, &format!("oracle decrypt of {}", img.display()));
}

/// A qcow2 image of `raw` (flattened content == raw), via `qemu-img convert -O qcow2`.
pub fn make_qcow2_of(raw: &Path, dst: &Path) {
    let o = qemu_img([
        OsStr::new("convert"),
        OsStr::new("-f"),
        OsStr::new("raw"),
        OsStr::new("-O"),
        OsStr::new("qcow2"),
        raw.as_os_str(),
        dst.as_os_str(),
    ]);
    assert_ok(&o, &format!("qemu-img convert -O qcow2 {}", raw.display()));
}

/// Reads the LUKS2 binary header field `hdr_size` (offset 8, big-endian u64).
pub fn luks2_hdr_size(img: &Path) -> u64 {
    let f = File::open(img).unwrap();
    let mut b = [0u8; 8];
    f.read_exact_at(&mut b, 8).unwrap();
    u64::from_be_bytes(b)
}

/// `bifs inspect --json IMAGE`, parsed.
pub fn bifs_inspect_json(img: &Path) -> serde_json::Value {
    let o = bifs([OsStr::new("inspect"), OsStr::new("--json"), img.as_os_str()]);
    assert_ok(&o, &format!("bifs inspect --json {}", img.display()));
    serde_json::from_slice(&o.stdout).unwrap_or_else(|e| {
        panic!(
            "bifs inspect --json {} is not JSON: {e}\n{}",
            img.display(),
            describe(&o)
        )
    })
}

/// A fresh temporary directory (removed on drop).
pub fn tempdir(prefix: &str) -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix(&format!("bifs-{prefix}-"))
        .tempdir()
        .unwrap()
}
