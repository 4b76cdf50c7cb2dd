//! The command line against kubectl habits (issue 21): `get` with several names and
//! `-o yaml|json|wide|name`, its output applied back (`-f -`, `kind: List`), `--secret` and
//! `--secrets` as one option, help text and examples, completions and the man page from the
//! clap definitions, misspelled Secret keys, key derivations that say what they do (log lines,
//! the record's phase, the page), refusals that are not recorded, flat stores in `get`,
//! aligned `get -w`; and the mount: a missing or busy mount point, `umount` of a path that is
//! not mounted.
//!
//! Most need nothing but bifs (downloads are `file://` URLs). The man page needs groff and
//! man-db, the completions zsh and fish, the mount FUSE and root, the page Chromium: those are
//! full tier.

use std::fs;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use crate::support::apply::{backing_image, clone_spec, disk_image, file_status, record, MIB};
use crate::support::BIFS;

/// A Secret manifest (0600) with `extra` lines under `stringData`.
fn secret(dir: &Path, file: &str, name: &str, pass: &str, extra: &str) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let p = dir.join(file);
    fs::write(
        &p,
        format!("apiVersion: v1\nkind: Secret\nmetadata:\n  name: {name}\n  namespace: longhorn-system\nstringData:\n  CRYPTO_KEY_VALUE: \"{pass}\"\n{extra}"),
    )
    .unwrap();
    fs::set_permissions(&p, fs::Permissions::from_mode(0o600)).unwrap();
    p
}

/// PBKDF2 at its minimum: keys in milliseconds.
const CHEAP: &str = "  CRYPTO_PBKDF: pbkdf2\n  CRYPTO_PBKDF_FORCE_ITERATIONS: \"1000\"\n";

fn run(args: &[&str], env: &[(&str, &str)], stdin: Option<&[u8]>) -> Output {
    let mut cmd = Command::new(BIFS);
    cmd.args(args)
        .env("BIFS_LOG", "warn")
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().expect("running bifs");
    if let Some(input) = stdin {
        let mut w = child.stdin.take().unwrap();
        w.write_all(input).unwrap();
    }
    child.wait_with_output().unwrap()
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// Runs bifs, expects success, returns (stdout, stderr).
fn ok(args: &[&str]) -> (String, String) {
    ok_with(args, &[], None)
}

fn ok_with(args: &[&str], env: &[(&str, &str)], stdin: Option<&[u8]>) -> (String, String) {
    let out = run(args, env, stdin);
    assert!(
        out.status.success(),
        "bifs {args:?} failed ({}):\n{}{}",
        out.status,
        text(&out.stdout),
        text(&out.stderr)
    );
    (text(&out.stdout), text(&out.stderr))
}

/// Runs bifs, expects failure, returns (stdout, stderr).
fn fails(args: &[&str]) -> (String, String) {
    let out = run(args, &[], None);
    assert!(
        !out.status.success(),
        "bifs {args:?} succeeded:\n{}{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    (text(&out.stdout), text(&out.stderr))
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// A store with `base` (a download) and `base-enc` (its encrypt clone), applied from files.
struct Applied {
    _tmp: tempfile::TempDir,
    dir: PathBuf,
    store: PathBuf,
    secret: PathBuf,
}

fn applied() -> Applied {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().to_path_buf();
    let store = dir.join("store");
    fs::create_dir_all(&store).unwrap();
    fs::write(dir.join("base.raw"), disk_image(2 * MIB as usize, 3)).unwrap();
    let secret = secret(&dir, "crypto.yaml", "longhorn-crypto", "pass one", CHEAP);
    let manifests = format!(
        "{}---\n{}",
        backing_image(
            "base",
            &format!(
                "  sourceType: download\n  sourceParameters:\n    url: file://{}\n",
                dir.join("base.raw").display()
            )
        ),
        backing_image(
            "base-enc",
            &clone_spec("base", "encrypt", Some("longhorn-crypto"))
        )
    );
    let m = dir.join("images.yaml");
    fs::write(&m, manifests).unwrap();
    let (out, _) = ok(&[
        "apply",
        "-f",
        s(&m),
        "--secrets",
        s(&secret),
        "--store",
        s(&store),
    ]);
    assert_eq!(
        out,
        "backingimage.longhorn.io/base created\nbackingimage.longhorn.io/base-enc created\n"
    );
    Applied {
        _tmp: tmp,
        dir,
        store,
        secret,
    }
}

/// The start of each header column, and a check that every row's cells of the fixed columns
/// (all but the last) start there: the rows line up with the header.
fn assert_aligned(table: &str, fixed: &[&str]) {
    let mut lines = table.lines();
    let header = lines.next().expect("a header");
    let starts: Vec<usize> = fixed
        .iter()
        .map(|c| {
            header
                .find(&format!(" {c}"))
                .map(|i| i + 1)
                .unwrap_or_else(|| panic!("no column {c} in {header:?}"))
        })
        .collect();
    for line in lines {
        let chars: Vec<char> = line.chars().collect();
        for (c, &at) in fixed.iter().zip(&starts) {
            assert!(
                at < chars.len() && chars[at - 1] == ' ' && chars[at] != ' ',
                "column {c} of {line:?} does not start under the header {header:?}\n{table}"
            );
        }
    }
}

#[test]
fn get_takes_several_names_and_kubectls_output_formats() {
    let a = applied();
    let st = s(&a.store);

    let (names, _) = ok(&["get", "-o", "name", "--store", st]);
    assert_eq!(
        names,
        "backingimage.longhorn.io/base\nbackingimage.longhorn.io/base-enc\n"
    );
    // Several names, in the order given.
    let (two, _) = ok(&["get", "base-enc", "base", "-o", "name", "--store", st]);
    assert_eq!(
        two,
        "backingimage.longhorn.io/base-enc\nbackingimage.longhorn.io/base\n"
    );

    let (table, _) = ok(&["get", "--store", st]);
    assert!(table.starts_with("NAME "), "{table}");
    assert!(!table.contains("UUID"), "{table}");
    assert_aligned(
        &table,
        &["STATE", "PROGRESS", "SIZE", "VIRTUAL-SIZE", "SECRET"],
    );

    let (wide, _) = ok(&["get", "-o", "wide", "--store", st]);
    let header = wide.lines().next().unwrap();
    for col in ["UUID", "SOURCE", "CHECKSUM", "AGE", "MESSAGE"] {
        assert!(header.contains(col), "{header}");
    }
    let rec = record(&a.store, "base-enc");
    let uuid = rec["status"]["uuid"].as_str().unwrap();
    let checksum = rec["status"]["checksum"].as_str().unwrap();
    let row = wide.lines().find(|l| l.starts_with("base-enc ")).unwrap();
    assert!(row.contains(uuid), "{row}");
    assert!(row.contains("clone base (encrypt)"), "{row}");
    assert!(
        row.contains(&checksum[..12]) && !row.contains(&checksum[..13]),
        "{row}"
    );
    assert_aligned(&wide, &["STATE", "PROGRESS", "SIZE", "SECRET", "UUID"]);

    // One name: one object; several: a List (as kubectl).
    let (one, _) = ok(&["get", "base", "-o", "yaml", "--store", st]);
    let one: serde_json::Value = serde_norway::from_str(&one).unwrap();
    assert_eq!(one["kind"], "BackingImage");
    let (list, _) = ok(&["get", "base", "base-enc", "-o", "json", "--store", st]);
    let list: serde_json::Value = serde_json::from_str(&list).unwrap();
    assert_eq!(list["kind"], "List");
    assert_eq!(list["items"].as_array().unwrap().len(), 2);

    // A missing name among found ones: the found are printed, the missing named, exit 1.
    let (out, err) = fails(&["get", "base", "nope", "-o", "name", "--store", st]);
    assert_eq!(out, "backingimage.longhorn.io/base\n");
    assert!(err.contains("backing image nope not found"), "{err}");

    // Refused before: `[possible values: yaml, json]`.
    let (_, err) = fails(&["get", "-o", "table", "--store", st]);
    assert!(err.contains("yaml, json, wide, name"), "{err}");
}

#[test]
fn get_output_applies_back_with_no_change() {
    let a = applied();
    let st = s(&a.store);
    let unchanged =
        "backingimage.longhorn.io/base unchanged\nbackingimage.longhorn.io/base-enc unchanged\n";

    // A file, as in the issue: `get -o yaml > all.yaml; apply -f all.yaml`.
    let (yaml, _) = ok(&["get", "-o", "yaml", "--store", st]);
    assert!(yaml.contains("kind: List"), "{yaml}");
    let all = a.dir.join("all.yaml");
    fs::write(&all, &yaml).unwrap();
    let (out, _) = ok(&["apply", "-f", s(&all), "--store", st]);
    assert_eq!(out, unchanged);

    // A pipe: `get -o yaml | apply -f -`, and JSON the same way.
    let (out, _) = ok_with(
        &["apply", "-f", "-", "--store", st],
        &[],
        Some(yaml.as_bytes()),
    );
    assert_eq!(out, unchanged);
    let (json, _) = ok(&["get", "-o", "json", "--store", st]);
    let (out, _) = ok_with(
        &["apply", "-f", "-", "--store", st],
        &[],
        Some(json.as_bytes()),
    );
    assert_eq!(out, unchanged);
    // One object (`get NAME -o yaml`) too.
    let (one, _) = ok(&["get", "base", "-o", "yaml", "--store", st]);
    let (out, _) = ok_with(
        &["apply", "-f", "-", "--store", st],
        &[],
        Some(one.as_bytes()),
    );
    assert_eq!(out, "backingimage.longhorn.io/base unchanged\n");

    // Secrets as `kubectl get secret -o yaml` prints several: a List, with base64 data.
    let list = a.dir.join("secrets.yaml");
    fs::write(
        &list,
        "apiVersion: v1\nkind: List\nitems:\n- apiVersion: v1\n  kind: Secret\n  metadata: {name: other, namespace: longhorn-system}\n  data:\n    CRYPTO_KEY_VALUE: cGFzcyB0d28=\n    CRYPTO_PBKDF: cGJrZGYy\n    CRYPTO_PBKDF_FORCE_ITERATIONS: MTAwMA==\nmetadata: {resourceVersion: \"\"}\n",
    )
    .unwrap();
    let m = a.dir.join("other.yaml");
    fs::write(
        &m,
        backing_image("base-other", &clone_spec("base", "encrypt", Some("other"))),
    )
    .unwrap();
    let (out, _) = ok(&["apply", "-f", s(&m), "--secrets", s(&list), "--store", st]);
    assert_eq!(out, "backingimage.longhorn.io/base-other created\n");
    // The clone opens with the List's passphrase: decrypted, it is base.
    let plain = a.dir.join("plain.raw");
    let rec = record(&a.store, "base-other");
    let backing = a.store.join(format!(
        "backing-images/base-other-{}/backing",
        rec["status"]["uuid"].as_str().unwrap()
    ));
    ok(&["decrypt", "--secret", s(&list), s(&backing), s(&plain)]);
    assert!(fs::read(&plain).unwrap() == fs::read(a.dir.join("base.raw")).unwrap());
}

#[test]
fn secret_and_secrets_are_one_option_everywhere() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let src = dir.join("disk.raw");
    fs::write(&src, disk_image(MIB as usize, 5)).unwrap();
    let one = secret(dir, "one.yaml", "one", "pass one", CHEAP);
    let two = secret(dir, "two.yaml", "two", "pass two", CHEAP);
    let luks = dir.join("disk.luks");
    ok(&["encrypt", "--secrets", s(&one), s(&src), s(&luks)]);
    let rekeyed = dir.join("disk2.luks");
    ok(&[
        "rekey",
        "--secrets",
        s(&one),
        "--new-secrets",
        s(&two),
        s(&luks),
        s(&rekeyed),
    ]);
    let back = dir.join("back.raw");
    ok(&["decrypt", "--secret", s(&two), s(&rekeyed), s(&back)]);
    assert!(fs::read(&back).unwrap() == fs::read(&src).unwrap());
    let (verified, _) = ok(&[
        "verify",
        "--secrets",
        s(&two),
        "--method",
        "xts",
        "--against",
        s(&src),
        s(&rekeyed),
    ]);
    assert!(verified.contains("result: OK"), "{verified}");

    // apply: --secret as well as --secrets.
    let store = dir.join("store");
    fs::create_dir_all(&store).unwrap();
    let m = dir.join("m.yaml");
    fs::write(
        &m,
        format!(
            "{}---\n{}",
            backing_image(
                "d1",
                &format!(
                    "  sourceType: download\n  sourceParameters:\n    url: file://{}\n",
                    src.display()
                )
            ),
            backing_image("d1-enc", &clone_spec("d1", "encrypt", Some("one")))
        ),
    )
    .unwrap();
    ok(&[
        "apply",
        "-f",
        s(&m),
        "--secret",
        s(&one),
        "--store",
        s(&store),
    ]);

    // And each help names both spellings.
    for cmd in [
        "encrypt", "decrypt", "verify", "rekey", "apply", "mount", "serve",
    ] {
        let (help, _) = ok(&[cmd, "--help"]);
        assert!(
            help.contains("--secret") && help.contains("--secrets"),
            "bifs {cmd} --help does not show both spellings:\n{help}"
        );
    }
}

#[test]
fn help_has_examples_argument_help_and_the_global_options_apart() {
    let (top, _) = ok(&["--help"]);
    assert!(top.contains("Examples:"), "{top}");
    assert!(top.contains("Global options:"), "{top}");
    for cmd in [
        "encrypt",
        "decrypt",
        "apply",
        "get",
        "delete",
        "rekey",
        "inspect",
        "mount",
        "serve",
        "umount",
        "verify",
        "completions",
        "man",
    ] {
        let (help, _) = ok(&[cmd, "--help"]);
        assert!(
            help.contains("Examples:\n  bifs "),
            "bifs {cmd} --help has no example:\n{help}"
        );
        // The global options once, under their own heading, after the command's own.
        let (own, global) = help
            .split_once("Global options:\n")
            .unwrap_or_else(|| panic!("bifs {cmd} --help has no Global options heading:\n{help}"));
        for g in [
            "--log <LOG>",
            "--log-json",
            "--max-kdf-memory",
            "--max-kdf-iterations",
            "--max-kdf-time",
            "--max-kdf-keyslots",
        ] {
            // An option's own line starts with it (another option's help may name it).
            let defines = |text: &str| {
                text.lines()
                    .filter(|l| l.trim_start().starts_with(g))
                    .count()
            };
            assert_eq!(
                defines(own),
                0,
                "bifs {cmd}: {g} among the command's own options:\n{help}"
            );
            assert_eq!(defines(global), 1, "bifs {cmd}:\n{help}");
        }
    }
    // The positional arguments say what they are.
    for (cmd, arg, words) in [
        ("encrypt", "<SRC>", "The image to encrypt"),
        ("encrypt", "<DST>", "The LUKS2 image to write"),
        ("decrypt", "<SRC>", "The LUKS1 or LUKS2 image to decrypt"),
        ("get", "[NAME]...", "Backing images to show"),
        ("delete", "<NAME>", "The backing image to delete"),
        ("inspect", "<IMAGE>", "The image file"),
        ("mount", "<MOUNTPOINT>", "An existing, empty directory"),
        ("umount", "<MOUNTPOINT>", "The mount point of a running"),
    ] {
        let (help, _) = ok(&[cmd, "--help"]);
        // The help is on the argument's line (`<SRC>  The image…`), or under it when a
        // command's help is long.
        let lines: Vec<&str> = help.lines().collect();
        let described = lines.iter().enumerate().any(|(i, l)| {
            l.trim_start().starts_with(arg)
                && (l.contains(words) || lines.get(i + 1).is_some_and(|n| n.contains(words)))
        });
        assert!(described, "bifs {cmd} --help, {arg}:\n{help}");
    }
    let (get, _) = ok(&["get", "--help"]);
    assert!(get.contains("--store <DIR>\n          The store"), "{get}");
}

#[test]
fn bash_completion_parses_and_completes() {
    let (script, _) = ok(&["completions", "bash"]);
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("bifs.bash");
    fs::write(&file, &script).unwrap();
    let check = Command::new("bash").arg("-n").arg(&file).output().unwrap();
    assert!(check.status.success(), "{}", text(&check.stderr));
    let complete = |words: &str, cword: usize| -> String {
        let out = Command::new("bash")
            .arg("-c")
            .arg(format!(
                "source {}; COMP_WORDS=({words}); COMP_CWORD={cword}; \
                 _bifs bifs \"${{COMP_WORDS[COMP_CWORD]}}\" \"${{COMP_WORDS[COMP_CWORD-1]}}\"; \
                 echo \"${{COMPREPLY[*]}}\"",
                file.display()
            ))
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", text(&out.stderr));
        text(&out.stdout).trim().to_string()
    };
    assert_eq!(complete("bifs enc", 1), "encrypt");
    assert_eq!(complete("bifs get -o ''", 3), "yaml json wide name");
    let secrets = complete("bifs apply --sec", 2);
    assert!(
        secrets.contains("--secret") && secrets.contains("--secrets"),
        "{secrets}"
    );
}

#[test]
fn zsh_and_fish_completions_are_valid() {
    full_tier_only!("zsh and fish");
    crate::support::mount::require_tools(&["zsh", "fish"]);
    let tmp = tempfile::tempdir().unwrap();
    let (zsh, _) = ok(&["completions", "zsh"]);
    let zfile = tmp.path().join("_bifs");
    fs::write(&zfile, zsh).unwrap();
    let out = Command::new("zsh").arg("-n").arg(&zfile).output().unwrap();
    assert!(out.status.success(), "zsh -n: {}", text(&out.stderr));
    // Loaded by compinit as a completion function would be.
    let out = Command::new("zsh")
        .args(["-f", "-c"])
        .arg(format!(
            "autoload -U compinit && compinit -u -D && source {} && (( $+functions[_bifs] )) && echo loaded",
            zfile.display()
        ))
        .output()
        .unwrap();
    assert_eq!(text(&out.stdout).trim(), "loaded", "{}", text(&out.stderr));

    let (fish, _) = ok(&["completions", "fish"]);
    let ffile = tmp.path().join("bifs.fish");
    fs::write(&ffile, fish).unwrap();
    let out = Command::new("fish").arg("-n").arg(&ffile).output().unwrap();
    assert!(out.status.success(), "fish -n: {}", text(&out.stderr));
    let out = Command::new("fish")
        .arg("-c")
        .arg(format!(
            "source {}; complete -C 'bifs enc'; complete -C 'bifs get -o '",
            ffile.display()
        ))
        .env("HOME", tmp.path())
        .output()
        .unwrap();
    let got = text(&out.stdout);
    assert!(got.lines().any(|l| l.starts_with("encrypt\t")), "{got}");
    for v in ["yaml", "json", "wide", "name"] {
        assert!(
            got.lines().any(|l| l.starts_with(&format!("{v}\t"))),
            "{got}"
        );
    }
}

#[test]
fn the_man_page_renders_without_warnings() {
    full_tier_only!("groff and man-db");
    crate::support::mount::require_tools(&["groff", "man"]);
    let (page, _) = ok(&["man"]);
    assert!(
        page.starts_with(".ie \\n(.g .ds Aq") || page.contains(".TH bifs 1"),
        "{}",
        &page[..200.min(page.len())]
    );
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("bifs.1");
    fs::write(&file, &page).unwrap();
    let groff = |f: &Path| {
        let out = Command::new("groff")
            .args(["-man", "-ww", "-z"])
            .arg(f)
            .output()
            .unwrap();
        assert!(
            out.status.success() && out.stderr.is_empty(),
            "groff warns about {}: {}",
            f.display(),
            text(&out.stderr)
        );
    };
    groff(&file);
    let out = Command::new("man")
        .args(["--warnings", "-l"])
        .arg(&file)
        .env("MANWIDTH", "100")
        .env("MANPAGER", "cat")
        .output()
        .unwrap();
    assert!(
        out.status.success() && out.stderr.is_empty(),
        "{}",
        text(&out.stderr)
    );
    let shown = text(&out.stdout);
    for words in [
        "bifs-encrypt(1)",
        "bifs-get(1)",
        "bifs-mount(1)",
        "GLOBAL OPTIONS",
    ] {
        assert!(shown.contains(words), "{words} not in:\n{shown}");
    }
    // One page per command for a package.
    let dir = tmp.path().join("man1");
    ok(&["man", "--dir", s(&dir)]);
    for cmd in [
        "bifs",
        "bifs-encrypt",
        "bifs-get",
        "bifs-mount",
        "bifs-completions",
    ] {
        let f = dir.join(format!("{cmd}.1"));
        assert!(f.is_file(), "{} missing", f.display());
        groff(&f);
    }
    let get = fs::read_to_string(dir.join("bifs-get.1")).unwrap();
    assert!(
        get.contains("wide") && get.contains("backingimage.longhorn.io/NAME"),
        "{get}"
    );
}

#[test]
fn misspelled_secret_keys_warn_with_the_nearest_valid_name() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let src = dir.join("disk.raw");
    fs::write(&src, disk_image(MIB as usize, 9)).unwrap();
    let typo = secret(
        dir,
        "typo.yaml",
        "typo",
        "pass",
        &format!("{CHEAP}  CRYPTO_CIPHER: aes-xts-plain64\n  CRYPTO_PBKDF_MEMORY_KIB: \"65536\"\n  username: not-a-crypto-key\n"),
    );
    // At the default level (the tests' BIFS_LOG=warn shows warnings too).
    let (_, err) = ok_with(
        &[
            "encrypt",
            "--secret",
            s(&typo),
            s(&src),
            s(&dir.join("a.luks")),
        ],
        &[("BIFS_LOG", "info")],
        None,
    );
    let warned = |err: &str, key: &str, meant: &str| {
        err.lines()
            .filter(|l| {
                l.contains(" WARN ")
                    && l.contains(&format!(
                        "unknown key {key} is ignored; did you mean {meant}?"
                    ))
            })
            .count()
    };
    assert_eq!(
        warned(&err, "CRYPTO_CIPHER", "CRYPTO_KEY_CIPHER"),
        1,
        "{err}"
    );
    assert_eq!(
        warned(&err, "CRYPTO_PBKDF_MEMORY_KIB", "CRYPTO_PBKDF_MEMORY"),
        1,
        "{err}"
    );
    assert!(!err.contains("username"), "{err}");
    assert!(!err.contains("\"pass\""), "{err}");

    // A server reads the Secret files again on every API call and every change: the same
    // version warns once, a new version once more.
    let secrets = dir.join("secrets");
    fs::create_dir_all(&secrets).unwrap();
    let file = secret(
        &secrets,
        "typo.yaml",
        "typo",
        "pass",
        "  CRYPTO_CIPHER: aes-xts-plain64\n",
    );
    let store = dir.join("store");
    fs::create_dir_all(store.join("backing-images")).unwrap();
    let log = dir.join("serve.log");
    let mut child = Command::new(BIFS)
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--store",
            s(&store),
            "--secrets",
            s(&secrets),
        ])
        .env("BIFS_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(child.stdout.take().unwrap()),
        &mut line,
    )
    .unwrap();
    let addr = line
        .trim()
        .strip_prefix("bifs serve: listening on http://")
        .unwrap_or_else(|| panic!("{line:?}"))
        .trim_end_matches('/')
        .to_string();
    let get = |path: &str| {
        let mut c = std::net::TcpStream::connect(&addr).unwrap();
        write!(c, "GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n").unwrap();
        let mut resp = String::new();
        c.read_to_string(&mut resp).unwrap();
        assert!(
            resp.starts_with("HTTP/1.0 200") || resp.starts_with("HTTP/1.1 200"),
            "{path}: {resp}"
        );
    };
    let count = || {
        let log = fs::read_to_string(&log).unwrap();
        log.lines()
            .filter(|l| {
                l.contains("unknown key CRYPTO_CIPHER is ignored; did you mean CRYPTO_KEY_CIPHER?")
            })
            .count()
    };
    for _ in 0..3 {
        get("/api/v1/secrets");
        get("/api/v1/backingimages");
    }
    assert_eq!(count(), 1, "{}", fs::read_to_string(&log).unwrap());
    // A new version (the passphrase rotated, the typo kept).
    std::thread::sleep(Duration::from_millis(1100));
    secret(
        &secrets,
        "typo.yaml",
        "typo",
        "pass rotated",
        "  CRYPTO_CIPHER: aes-xts-plain64\n",
    );
    assert!(file.exists());
    for _ in 0..3 {
        get("/api/v1/secrets");
        get("/api/v1/backingimages");
    }
    let _ = child.kill();
    let _ = child.wait();
    assert_eq!(count(), 2, "{}", fs::read_to_string(&log).unwrap());
}

#[test]
fn a_key_derivation_says_what_it_is_doing_and_the_times_are_apart() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let src = dir.join("disk.raw");
    fs::write(&src, disk_image(2 * MIB as usize, 4)).unwrap();
    let argon = secret(
        dir,
        "argon.yaml",
        "argon",
        "pass",
        "  CRYPTO_PBKDF: argon2id\n  CRYPTO_PBKDF_MEMORY: \"1024\"\n  CRYPTO_PBKDF_FORCE_ITERATIONS: \"4\"\n",
    );
    // Every step reported, however short (a KDF is not slow on every machine).
    let env = [("BIFS_LOG", "info"), ("BIFS_KDF_REPORT_AFTER_MS", "0")];
    let luks = dir.join("disk.luks");
    let (_, err) = ok_with(
        &["encrypt", "--secret", s(&argon), s(&src), s(&luks)],
        &env,
        None,
    );
    let deriving = err
        .lines()
        .find(|l| l.contains("deriving the key: argon2id, 1 MiB, t=4, "))
        .unwrap_or_else(|| panic!("no KDF line:\n{err}"));
    assert!(deriving.contains(" INFO "), "{deriving}");
    assert!(
        err.lines()
            .any(|l| l.contains("deriving the key: argon2id, 1 MiB, t=4, ")
                && l.contains(": done")
                && l.contains("seconds=")),
        "{err}"
    );
    // The times: the key apart from the copy; the copier's line says it is the copy's.
    let done = err
        .lines()
        .find(|l| l.contains(" done ") && l.contains("key_seconds="))
        .unwrap_or_else(|| panic!("no done line with the key's time:\n{err}"));
    assert!(
        done.contains("copy_seconds=") && done.contains(" seconds="),
        "{done}"
    );
    let copied = err
        .lines()
        .find(|l| l.contains(" copied "))
        .unwrap_or_else(|| panic!("no copy line:\n{err}"));
    assert!(
        copied.contains("copy_seconds=") && !copied.contains(" seconds="),
        "{copied}"
    );

    // A Secret that sets no cost: bifs's fixed cost (never benchmarked, so that a header does
    // not depend on the machine), and the report names it.
    let bench = secret(
        dir,
        "bench.yaml",
        "bench",
        "pass",
        "  CRYPTO_PBKDF: pbkdf2\n",
    );
    let (_, err) = ok_with(
        &[
            "encrypt",
            "--secret",
            s(&bench),
            s(&src),
            s(&dir.join("b.luks")),
        ],
        &env,
        None,
    );
    assert!(!err.contains("benchmarking"), "{err}");
    assert!(
        err.contains("deriving the key: pbkdf2-sha256, 10000000 iterations"),
        "{err}"
    );

    // Unlocking says the keyslot's cost.
    let (_, err) = ok_with(
        &[
            "decrypt",
            "--secret",
            s(&argon),
            s(&luks),
            s(&dir.join("back.raw")),
        ],
        &env,
        None,
    );
    assert!(
        err.contains("deriving the key: argon2id, 1 MiB, t=4"),
        "{err}"
    );
}

#[test]
fn on_a_terminal_the_key_derivation_is_a_spinner() {
    full_tier_only!("script(1) from util-linux, for a terminal");
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let src = dir.join("disk.raw");
    fs::write(&src, disk_image(MIB as usize, 4)).unwrap();
    let key = secret(dir, "k.yaml", "k", "pass", SLOWISH);
    let cmd = format!(
        "{BIFS} --log warn encrypt --secret {} {} {}",
        key.display(),
        src.display(),
        dir.join("disk.luks").display()
    );
    let out = Command::new("script")
        .args(["-qec", &cmd, "/dev/null"])
        .env("BIFS_KDF_REPORT_AFTER_MS", "0")
        .stdin(Stdio::null())
        .output()
        .expect("script(1) (apt-get install bsdutils)");
    let shown = text(&out.stdout);
    assert!(out.status.success(), "{shown}");
    // indicatif redraws the line (`\r`, erase) with a spinner character before the message.
    let spinning = shown
        .split('\r')
        .filter(|part| part.contains(" deriving the key: argon2i, 64 MiB, t=4, "))
        .count();
    assert!(spinning >= 1, "{shown:?}");
    assert!(dir.join("disk.luks").exists());
}

/// Polls `f` every few milliseconds until it returns something, or panics with `what`.
fn until<T>(what: &str, timeout: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// A Secret whose Argon2 takes a moment anywhere (64 MiB, 4 passes; twice per encrypt clone).
const SLOWISH: &str =
    "  CRYPTO_PBKDF: argon2i\n  CRYPTO_PBKDF_MEMORY: \"65536\"\n  CRYPTO_PBKDF_FORCE_ITERATIONS: \"4\"\n";

#[test]
fn get_and_get_w_show_the_key_phase_not_zero_percent() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let store = dir.join("store");
    fs::create_dir_all(&store).unwrap();
    fs::write(dir.join("base.raw"), disk_image(4 * MIB as usize, 6)).unwrap();
    let slow = secret(dir, "slow.yaml", "slow", "pass", SLOWISH);
    let base = dir.join("base.yaml");
    fs::write(
        &base,
        backing_image(
            "base",
            &format!(
                "  sourceType: download\n  sourceParameters:\n    url: file://{}\n",
                dir.join("base.raw").display()
            ),
        ),
    )
    .unwrap();
    ok(&["apply", "-f", s(&base), "--store", s(&store)]);
    let clone = dir.join("clone.yaml");
    fs::write(
        &clone,
        backing_image(
            "base-encrypted-with-a-longer-name",
            &clone_spec("base", "encrypt", Some("slow")),
        ),
    )
    .unwrap();
    let apply = spawn_apply(&clone, &slow, &store);
    let name = "base-encrypted-with-a-longer-name";
    // Watched from when the clone's record exists (a watch of settled images ends at once).
    let record_path = store.join(format!(".bifs/records/{name}.json"));
    until("the clone's record", Duration::from_secs(60), || {
        record_path.exists().then_some(())
    });
    let watch = Command::new(BIFS)
        .args(["get", "-w", "--store", s(&store)])
        .env("BIFS_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // The record: `starting`, with what the key derivation is doing and its cost.
    let message = until(
        "the key phase in the record",
        Duration::from_secs(60),
        || {
            let path = store.join(format!(".bifs/records/{name}.json"));
            let rec: serde_json::Value = serde_json::from_slice(&fs::read(path).ok()?).ok()?;
            let f = file_status(&rec);
            let m = f["message"].as_str()?.to_string();
            (f["state"] == "starting" && m.contains("deriving it with")).then_some(m)
        },
    );
    assert!(
        message.starts_with("preparing the key: deriving it with argon2i, 64 MiB, t=4, "),
        "{message}"
    );
    let out = apply.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    let watched = watch.wait_with_output().unwrap();
    let watched = text(&watched.stdout);
    // `get -w` rows line up with its header, whatever came first.
    assert!(watched.starts_with("NAME "), "{watched}");
    assert_aligned(
        &watched,
        &["STATE", "PROGRESS", "SIZE", "VIRTUAL-SIZE", "SECRET"],
    );
    assert!(
        watched
            .lines()
            .last()
            .is_some_and(|l| l.starts_with(name) && l.contains(" ready ") && l.contains("100%")),
        "{watched}"
    );
    // Any key-phase row says so, with no percentage.
    for l in watched.lines().filter(|l| l.contains(" starting ")) {
        assert!(l.contains(" - ") && l.contains("preparing the key"), "{l}");
        assert!(!l.contains("0%"), "{l}");
    }
}

#[test]
fn refusals_say_they_are_not_recorded_and_failures_where_to_look() {
    let a = applied();
    let st = s(&a.store);
    let m = a.dir.join("mixed.yaml");
    fs::write(
        &m,
        format!(
            "{}---\n{}",
            // Refused by Longhorn's webhook rule: base has no Secret to decrypt with.
            backing_image(
                "refused-one",
                &clone_spec("base", "decrypt", Some("longhorn-crypto"))
            ),
            // Admitted, then failed: the file is not there.
            backing_image(
                "failed-one",
                &format!(
                    "  sourceType: download\n  sourceParameters:\n    url: file://{}\n",
                    a.dir.join("missing.raw").display()
                )
            ),
        ),
    )
    .unwrap();
    let (_, err) = fails(&[
        "apply",
        "-f",
        s(&m),
        "--secrets",
        s(&a.secret),
        "--store",
        st,
    ]);
    assert!(
        err.contains(
            "backingimage.longhorn.io/refused-one refused: spec.sourceParameters.encryption"
        ),
        "{err}"
    );
    assert!(
        err.contains("backingimage.longhorn.io/failed-one failed: "),
        "{err}"
    );
    let last = err.lines().last().unwrap();
    assert!(last.contains("2 of 2 backing images not applied"), "{last}");
    assert!(
        last.contains("1 refused") && last.contains("nothing was recorded"),
        "{last}"
    );
    assert!(
        last.contains("1 failed") && last.contains(&format!("`bifs get --store {st}`")),
        "{last}"
    );
    assert!(!last.contains("(see `bifs get`)"), "{last}");
    // And so it is: the failure is listed, the refusal is not.
    let (names, _) = ok(&["get", "-o", "name", "--store", st]);
    assert!(
        names.contains("/failed-one\n") && !names.contains("refused-one"),
        "{names}"
    );

    // Only refusals: no pointer to `get` at all.
    let r = a.dir.join("refused.yaml");
    fs::write(
        &r,
        backing_image("refused-two", &clone_spec("nowhere", "ignore", None)),
    )
    .unwrap();
    let (_, err) = fails(&["apply", "-f", s(&r), "--store", st]);
    let last = err.lines().last().unwrap();
    assert!(
        last.contains("1 of 1 backing images not applied: 1 refused"),
        "{last}"
    );
    assert!(!last.contains("bifs get"), "{last}");
}

#[test]
fn get_lists_a_flat_store() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let flat = dir.join("flat");
    fs::create_dir_all(&flat).unwrap();
    fs::write(flat.join("disk.raw"), disk_image(MIB as usize, 2)).unwrap();
    let key = secret(dir, "k.yaml", "k", "pass", CHEAP);
    ok(&[
        "encrypt",
        "--secret",
        s(&key),
        s(&flat.join("disk.raw")),
        s(&flat.join("disk.luks")),
    ]);
    let (table, err) = ok(&["get", "--store", s(&flat)]);
    assert!(!err.contains("No backing images"), "{err}");
    assert!(
        err.contains("is a flat store") && err.contains("bifs mount"),
        "{err}"
    );
    let lines: Vec<&str> = table.lines().collect();
    assert!(
        lines[0].starts_with("NAME ") && lines[0].contains("STATE") && lines[0].contains("FORMAT"),
        "{table}"
    );
    assert!(
        lines[1].starts_with("disk.luks ")
            && lines[1].contains(" ready ")
            && lines[1].contains(" luks2 "),
        "{table}"
    );
    assert!(
        lines[2].starts_with("disk.raw ")
            && lines[2].contains(" ready ")
            && lines[2].contains(" raw "),
        "{table}"
    );
    assert_aligned(&table, &["STATE", "FORMAT", "SIZE"]);
    let (one, _) = ok(&["get", "disk.raw", "-o", "wide", "--store", s(&flat)]);
    assert!(
        one.contains(
            &flat
                .join("disk.raw")
                .canonicalize()
                .unwrap()
                .display()
                .to_string()
        ),
        "{one}"
    );
    // Formats about BackingImage objects say why there are none.
    let (_, err) = fails(&["get", "-o", "yaml", "--store", s(&flat)]);
    assert!(
        err.contains("flat store") && err.contains("no BackingImage objects"),
        "{err}"
    );
    // An empty directory: neither.
    let empty = dir.join("empty");
    fs::create_dir_all(&empty).unwrap();
    let (out, err) = ok(&["get", "--store", s(&empty)]);
    assert!(
        out.is_empty() && err.contains("No backing images and no image files"),
        "{err}"
    );
}

#[test]
fn umount_of_a_path_not_mounted_says_so() {
    let tmp = tempfile::tempdir().unwrap();
    let (_, err) = fails(&["umount", s(tmp.path())]);
    assert!(err.contains("is not mounted"), "{err}");
    assert!(!err.contains("Invalid argument"), "{err}");
    let missing = tmp.path().join("nowhere");
    let (_, err) = fails(&["umount", s(&missing)]);
    assert!(err.contains("does not exist"), "{err}");
    // Someone else's mount is not ours to take down.
    let (_, err) = fails(&["umount", "/proc"]);
    assert!(
        err.contains("not a bifs mount") && err.contains("proc"),
        "{err}"
    );
}

#[test]
fn mount_refuses_a_missing_or_busy_mount_point() {
    full_tier_only!("root and FUSE");
    crate::support::mount::require_tools(&["fusermount3"]);
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let store = dir.join("store");
    fs::create_dir_all(&store).unwrap();
    fs::write(store.join("disk.raw"), disk_image(MIB as usize, 8)).unwrap();
    let secrets = secret(dir, "s.yaml", "s", "pass", CHEAP);
    let mount = |mnt: &Path| {
        run(
            &[
                "mount",
                "--store",
                s(&store),
                "--secrets",
                s(&secrets),
                s(mnt),
            ],
            &[],
            None,
        )
    };
    // Missing: said so (not "is not a directory").
    let out = mount(&dir.join("nowhere"));
    assert!(!out.status.success());
    let err = text(&out.stderr);
    assert!(
        err.contains("does not exist") && !err.contains("not a directory"),
        "{err}"
    );
    // A file.
    let out = mount(&secrets);
    assert!(!out.status.success());
    assert!(text(&out.stderr).contains("is not a directory"));

    let mnt = dir.join("mnt");
    let m = crate::support::mount::Mounted::start(&store, &secrets, None, &mnt, &[]);
    // An encrypt view opens once its header is prepared (in the background since the mount
    // started; an open waits for it): a LUKS2 image.
    let copy = dir.join("copy.luks");
    fs::copy(m.path("encrypt/longhorn-system/s/disk.raw"), &copy).unwrap();
    let luks = fs::read(&copy).unwrap();
    assert_eq!(&luks[..6], b"LUKS\xba\xbe", "not a LUKS image");
    assert!(
        m.log_text().contains("encrypt view prepared"),
        "{}",
        m.log_text()
    );
    // Busy: refused with its own message, and still one mount there.
    let canonical = mnt.canonicalize().unwrap();
    for target in [mnt.clone(), mnt.join("."), dir.join("./mnt")] {
        let out = mount(&target);
        assert!(
            !out.status.success(),
            "a second mount on {} succeeded",
            target.display()
        );
        let err = text(&out.stderr);
        assert!(err.contains("is already a bifs mount"), "{err}");
        assert!(
            err.contains(&format!("bifs umount {}", canonical.display())),
            "{err}"
        );
    }
    let mounts = fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .filter(|l| l.split(' ').nth(4) == canonical.to_str())
        .count();
    assert_eq!(mounts, 1);
    // `bifs umount` takes it down; a second one says it is not mounted.
    ok(&["umount", s(&mnt)]);
    let mut m = m;
    until(
        "the mount to end after `bifs umount`",
        Duration::from_secs(20),
        || (!m.alive()).then_some(()),
    );
    assert!(m.log_text().contains("unmounted"), "{}", m.log_text());
    let (_, err) = fails(&["umount", s(&mnt)]);
    assert!(err.contains("is not mounted"), "{err}");
}

#[test]
fn the_page_shows_the_key_phase() {
    full_tier_only!("chromium, chromium-driver and python3-selenium");
    for (path, pkg) in [
        ("/usr/bin/chromium", "chromium"),
        ("/usr/bin/chromedriver", "chromium-driver"),
    ] {
        assert!(
            Path::new(path).exists(),
            "needs {pkg} (scripts/setup.sh installs it)"
        );
    }
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let store = dir.join("store");
    fs::create_dir_all(store.join("backing-images")).unwrap();
    fs::write(dir.join("base.raw"), disk_image(4 * MIB as usize, 12)).unwrap();
    let secrets = dir.join("secrets");
    fs::create_dir_all(&secrets).unwrap();
    // Slow enough to see in a browser: 512 MiB, 8 passes (seconds on any machine).
    secret(
        &secrets,
        "slow.yaml",
        "slow",
        "pass",
        "  CRYPTO_PBKDF: argon2i\n  CRYPTO_PBKDF_MEMORY: \"524288\"\n  CRYPTO_PBKDF_FORCE_ITERATIONS: \"8\"\n",
    );
    let base = dir.join("base.yaml");
    fs::write(
        &base,
        backing_image(
            "base",
            &format!(
                "  sourceType: download\n  sourceParameters:\n    url: file://{}\n",
                dir.join("base.raw").display()
            ),
        ),
    )
    .unwrap();
    ok(&["apply", "-f", s(&base), "--store", s(&store)]);
    let mut serve = Command::new(BIFS)
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--store",
            s(&store),
            "--secrets",
            s(&secrets),
        ])
        .env("BIFS_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(serve.stdout.take().unwrap()),
        &mut line,
    )
    .unwrap();
    let url = line
        .trim()
        .strip_prefix("bifs serve: listening on ")
        .unwrap_or_else(|| panic!("{line:?}"))
        .trim_end_matches('/')
        .to_string();
    let clone = dir.join("clone.yaml");
    fs::write(
        &clone,
        backing_image("base-slow", &clone_spec("base", "encrypt", Some("slow"))),
    )
    .unwrap();
    const SCRIPT: &str = r##"
import sys
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait
from selenium.common.exceptions import StaleElementReferenceException
# The table is redrawn on status events: an element found a moment ago may be gone.
STALE = [StaleElementReferenceException]
opts = webdriver.ChromeOptions()
opts.binary_location = "/usr/bin/chromium"
for a in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"):
    opts.add_argument(a)
d = webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=opts)
try:
    d.get(sys.argv[1])
    WebDriverWait(d, 60, poll_frequency=0.1).until(lambda drv: drv.find_elements(By.CSS_SELECTOR, "#images tbody tr[data-name='base']"))
    # The test starts the apply only now: the key phase is seconds long, not minutes.
    print("loaded", flush=True)
    seen = []
    def phase(drv):
        rows = drv.find_elements(By.CSS_SELECTOR, "#images tbody tr[data-name='base-slow']")
        if not rows:
            return False
        badge = rows[0].find_element(By.CSS_SELECTOR, "td.state .badge").text.strip()
        msgs = [m.text for m in rows[0].find_elements(By.CSS_SELECTOR, "td.state .row-message")]
        bars = rows[0].find_elements(By.CSS_SELECTOR, "td.state progress")
        seen.append((badge, msgs, len(bars)))
        return badge == "starting" and any(m.startswith("preparing the key: deriving it with argon2i, 512 MiB, t=8") for m in msgs) and not bars
    WebDriverWait(d, 90, poll_frequency=0.1, ignored_exceptions=STALE).until(phase)
    print("phase:", seen[-1][1])
    def copying(drv):
        rows = drv.find_elements(By.CSS_SELECTOR, "#images tbody tr[data-name='base-slow']")
        badge = rows[0].find_element(By.CSS_SELECTOR, "td.state .badge").text.strip()
        return badge == "ready" or (badge == "in-progress" and rows[0].find_elements(By.CSS_SELECTOR, "td.state .row-message.phase"))
    WebDriverWait(d, 120, poll_frequency=0.1, ignored_exceptions=STALE).until(copying)
    print("page: phase shown")
finally:
    d.quit()
"##;
    let mut browser = Command::new("/usr/bin/python3")
        .args(["-c", SCRIPT, &format!("{url}/")])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("python3 with selenium");
    let mut browser_out = std::io::BufReader::new(browser.stdout.take().unwrap());
    let mut loaded = String::new();
    std::io::BufRead::read_line(&mut browser_out, &mut loaded).unwrap();
    assert_eq!(loaded.trim(), "loaded", "the page did not load");
    let apply = spawn_apply(&clone, &secrets, &store);
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut browser_out, &mut rest).unwrap();
    let out = browser.wait_with_output().unwrap();
    let out = std::process::Output {
        stdout: rest.into_bytes(),
        ..out
    };
    let apply = apply.wait_with_output().unwrap();
    let _ = serve.kill();
    let _ = serve.wait();
    let stdout = text(&out.stdout);
    assert!(
        out.status.success() && stdout.contains("page: phase shown"),
        "{stdout}\n{}",
        text(&out.stderr)
    );
    print!("{stdout}");
    assert!(
        stdout.contains("phase: ['preparing the key: deriving it with argon2i, 512 MiB, t=8"),
        "{stdout}"
    );
    assert!(apply.status.success(), "{}", text(&apply.stderr));
}

/// `bifs inspect IMAGE | head` and `bifs get | head` are not errors: a reader that closes the
/// pipe early gets what it read, and bifs exits 0 (as cat does) instead of panicking on the
/// closed pipe.
#[test]
fn output_into_a_closed_pipe_exits_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("disk.raw");
    fs::write(&img, vec![0u8; 4096]).unwrap();
    for args in [
        vec!["inspect", s(&img)],
        vec!["get", "--store", s(dir.path())],
    ] {
        let mut child = Command::new(BIFS)
            .args(&args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        // The read end closed before bifs writes: its write fails with EPIPE.
        drop(child.stdout.take());
        let out = child.wait_with_output().unwrap();
        let stderr = text(&out.stderr);
        assert!(out.status.success(), "{args:?}: {}: {stderr}", out.status);
        assert!(!stderr.contains("panicked"), "{args:?}: {stderr}");
    }
}

/// `bifs apply -f MANIFEST --secrets SECRETS --store STORE` in the background (warnings only on
/// stderr), for a test that watches it run.
fn spawn_apply(manifest: &Path, secrets: &Path, store: &Path) -> std::process::Child {
    Command::new(BIFS)
        .args([
            "apply",
            "-f",
            s(manifest),
            "--secrets",
            s(secrets),
            "--store",
            s(store),
        ])
        .env("BIFS_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}
