//! The crates are the floors of the house (docs/architecture.md). The compiler refuses an
//! import of a crate that is not a dependency; this test holds the dependencies themselves to
//! the floors, from `cargo metadata`, so an arrow that runs up cannot be added by editing a
//! Cargo.toml either. It also holds where `unsafe` may be written.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;

/// Each workspace crate and its floor: a crate may depend only on crates of lower floors, so
/// the three faces (same floor) never depend on one another.
const FLOORS: [(&str, u8); 8] = [
    ("bifs-sys", 0),
    ("bifs-core", 1),
    ("bifs-k8s", 2),
    ("bifs-node", 3),
    ("bifs-fuse", 4),
    ("bifs-http", 4),
    ("bifs-verify", 4),
    ("bifs", 5),
];

fn metadata(manifest: &Path) -> serde_json::Value {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let out = Command::new(cargo)
        .args([
            "metadata",
            "--format-version",
            "1",
            "--no-deps",
            "--offline",
        ])
        .arg("--manifest-path")
        .arg(manifest)
        .output()
        .expect("running cargo metadata");
    assert!(
        out.status.success(),
        "cargo metadata: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("cargo metadata prints JSON")
}

/// Workspace-internal dependencies of each package (every kind: normal, dev, build).
fn internal_deps(meta: &serde_json::Value) -> BTreeMap<String, Vec<String>> {
    let mut out = BTreeMap::new();
    for pkg in meta["packages"].as_array().unwrap() {
        let deps = pkg["dependencies"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|d| d["path"].is_string())
            .map(|d| d["name"].as_str().unwrap().to_owned())
            .collect();
        out.insert(pkg["name"].as_str().unwrap().to_owned(), deps);
    }
    out
}

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

#[test]
fn every_dependency_runs_down_a_floor() {
    let floors: BTreeMap<&str, u8> = FLOORS.into_iter().collect();
    let deps = internal_deps(&metadata(&root().join("Cargo.toml")));
    assert_eq!(
        deps.keys().map(String::as_str).collect::<Vec<_>>(),
        floors.keys().copied().collect::<Vec<_>>(),
        "the workspace's crates and this test's floors differ: give a new crate its floor"
    );
    let mut wrong = Vec::new();
    for (pkg, ds) in &deps {
        // The binary's dev-dependencies are the integration tests: they may use any crate.
        for d in ds {
            let (from, to) = (floors[pkg.as_str()], floors[d.as_str()]);
            if to >= from {
                wrong.push(format!("{pkg} (floor {from}) -> {d} (floor {to})"));
            }
        }
    }
    assert!(
        wrong.is_empty(),
        "dependencies that do not run down: {wrong:#?}"
    );
}

#[test]
fn fuzz_targets_link_the_formats_only() {
    let deps = internal_deps(&metadata(&root().join("fuzz/Cargo.toml")));
    let fuzz = &deps["bifs-fuzz"];
    for d in fuzz {
        assert!(
            ["bifs-core", "bifs-k8s"].contains(&d.as_str()),
            "fuzz/ depends on {d}: the parsers' fuzzers must not build the faces"
        );
    }
}

/// `unsafe` appears only in the audited crates: bifs-sys (SIMD kernels, mlock, libcrypto) and
/// bifs-verify's libcryptsetup module. Everything else inherits the workspace's
/// `unsafe_code = "forbid"`, which this checks is still there.
#[test]
fn unsafe_lives_in_the_audited_places_only() {
    let audited = ["crates/sys/", "crates/verify/src/libcs.rs"];
    let mut found = Vec::new();
    let mut stack = vec![root().join("src"), root().join("crates")];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
                continue;
            }
            if path.extension().is_none_or(|e| e != "rs") {
                continue;
            }
            let rel = path
                .strip_prefix(root())
                .unwrap()
                .to_string_lossy()
                .into_owned();
            let text = std::fs::read_to_string(&path).unwrap();
            let uses_unsafe = text.lines().any(|l| {
                let code = l.split("//").next().unwrap_or("");
                code.contains("unsafe {")
                    || code.contains("unsafe fn")
                    || code.contains("unsafe impl")
            });
            if uses_unsafe && !audited.iter().any(|a| rel.starts_with(a)) {
                found.push(rel);
            }
        }
    }
    assert!(
        found.is_empty(),
        "unsafe outside the audited places: {found:?}"
    );
    let ws = std::fs::read_to_string(root().join("Cargo.toml")).unwrap();
    assert!(ws.contains("[workspace.lints.rust]\nunsafe_code = \"forbid\""));
    for krate in ["core", "k8s", "node", "fuse", "http"] {
        let toml =
            std::fs::read_to_string(root().join(format!("crates/{krate}/Cargo.toml"))).unwrap();
        assert!(
            toml.contains("[lints]\nworkspace = true"),
            "crates/{krate} must inherit the workspace's unsafe_code = forbid"
        );
    }
}
