//! deploy/ checked against the Kubernetes API (no API server runs here).
//!
//! Fast tier: each manifest file is parsed into its `k8s-openapi` type and serialized back; a
//! field that the type does not know (a typo, a field at the wrong level) is dropped by the
//! round trip, so the input and the round trip must be equal. The kustomization and the
//! example BackingImage are read into closed structs.
//!
//! Full tier (`kubectl`, `kubernetes-validate`): `kubectl kustomize deploy/` as checked out,
//! and with each documented addition (one crypto Secret line, the tolerations patch, the live
//! Secret volume example), is validated by `kubernetes-validate --strict` against several
//! Kubernetes versions and parsed strictly again; then what bifs relies on is checked on the
//! rendered objects: labels, image, token automount, priority, the node's address, the memory
//! budget, Secret volumes, and that adding a Secret is one line that restarts nothing.

use std::collections::BTreeMap;
use std::fs;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::api::core::v1::{Container, PodSpec, Secret, Service};
use k8s_openapi::api::scheduling::v1::PriorityClass;
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

/// The Kubernetes versions the rendered manifests must validate against: the oldest still
/// common under Longhorn (1.29), the one k8s-openapi is built for here (1.33), and the newest
/// kubernetes-validate knows (1.37).
const KUBERNETES_VERSIONS: [&str; 3] = ["1.29", "1.33", "1.37"];

/// Longhorn's own PriorityClass (Longhorn's chart/templates/priorityclass.yaml).
const LONGHORN_CRITICAL: i32 = 1_000_000_000;

/// The recommended labels every object and pod carries.
const RECOMMENDED_LABELS: [&str; 6] = [
    "app.kubernetes.io/name",
    "app.kubernetes.io/instance",
    "app.kubernetes.io/version",
    "app.kubernetes.io/component",
    "app.kubernetes.io/part-of",
    "app.kubernetes.io/managed-by",
];

const GIB: u64 = 1 << 30;

fn deploy() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy")
}

fn read(name: &str) -> String {
    let p = deploy().join(name);
    fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

/// The JSON the API server would see for one YAML document.
fn json_of(doc: &str, what: &str) -> serde_json::Value {
    serde_norway::from_str(doc).unwrap_or_else(|e| panic!("{what}: not YAML: {e}"))
}

/// Parses `input` as `T` and refuses anything the type would drop (unknown or misplaced fields).
fn strict_value<T: DeserializeOwned + Serialize>(input: &serde_json::Value, what: &str) -> T {
    let typed: T = serde_json::from_value(input.clone())
        .unwrap_or_else(|e| panic!("{what}: does not fit the API type: {e}"));
    let back = serde_json::to_value(&typed).unwrap();
    let mut diffs = Vec::new();
    diff("", input, &back, &mut diffs);
    assert!(
        diffs.is_empty(),
        "{what}: fields the API type does not know or reads differently:\n{}",
        diffs.join("\n")
    );
    typed
}

fn strict<T: DeserializeOwned + Serialize>(doc: &str, what: &str) -> T {
    strict_value(&json_of(doc, what), what)
}

fn diff(path: &str, a: &serde_json::Value, b: &serde_json::Value, out: &mut Vec<String>) {
    use serde_json::Value::{Array, Object};
    match (a, b) {
        (Object(x), Object(y)) => {
            for (k, v) in x {
                match y.get(k) {
                    Some(w) => diff(&format!("{path}.{k}"), v, w, out),
                    None => out.push(format!("  {path}.{k} (unknown field)")),
                }
            }
            for k in y.keys().filter(|k| !x.contains_key(*k)) {
                out.push(format!("  {path}.{k} (added by the type)"));
            }
        }
        (Array(x), Array(y)) if x.len() == y.len() => {
            for (i, (v, w)) in x.iter().zip(y).enumerate() {
                diff(&format!("{path}[{i}]"), v, w, out);
            }
        }
        _ if a == b => {}
        _ => out.push(format!("  {path}: {a} became {b}")),
    }
}

fn one_document(name: &str) -> String {
    let text = read(name);
    let docs: Vec<&str> = text
        .split("\n---")
        .filter(|d| {
            d.lines()
                .any(|l| !l.trim().is_empty() && !l.starts_with('#'))
        })
        .collect();
    assert_eq!(docs.len(), 1, "{name}: expected one document");
    docs[0].to_string()
}

fn pod(ds: &DaemonSet) -> &PodSpec {
    ds.spec
        .as_ref()
        .and_then(|s| s.template.spec.as_ref())
        .expect("pod spec")
}

fn bifs_container(ds: &DaemonSet) -> &Container {
    let p = pod(ds);
    assert_eq!(p.containers.len(), 1, "one container");
    &p.containers[0]
}

/// `--flag=value` arguments of the container (`--flag` alone maps to "").
fn flags(c: &Container) -> BTreeMap<String, String> {
    c.args
        .iter()
        .flatten()
        .filter_map(|a| a.strip_prefix("--"))
        .map(|a| match a.split_once('=') {
            Some((k, v)) => (k.to_string(), v.to_string()),
            None => (a.to_string(), String::new()),
        })
        .collect()
}

/// Bytes of a Kubernetes memory quantity with a binary suffix (or none).
fn bytes(q: &Quantity) -> u64 {
    let s = q.0.as_str();
    let digits = s.trim_end_matches(|c: char| c.is_ascii_alphabetic());
    let n: u64 = digits
        .parse()
        .unwrap_or_else(|_| panic!("{s}: not an integer quantity"));
    let unit = match &s[digits.len()..] {
        "" => 1,
        "Ki" => 1 << 10,
        "Mi" => 1 << 20,
        "Gi" => 1 << 30,
        "Ti" => 1 << 40,
        other => panic!("{s}: use a binary suffix (Ki, Mi, Gi), not {other:?}"),
    };
    n * unit
}

/// What the pod may use at worst must fit its limit: bifs's own bound (the memory request)
/// plus every derivation that may run at once at the Argon2 memory bifs accepts.
fn memory_budget(limit: u64, request: u64, kdf_kib: u64, jobs: u64) -> Result<(), String> {
    let need = request + jobs * kdf_kib * 1024;
    if need > limit {
        return Err(format!(
            "limit {limit} B < request {request} B + {jobs} x {kdf_kib} KiB of key derivation = {need} B"
        ));
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------
// Fast tier: the files as written.

#[test]
fn strictness_catches_a_misspelled_field() {
    let bad = one_document("daemonset.yaml").replace("mountPropagation:", "mountPropogation:");
    let r = std::panic::catch_unwind(|| strict::<DaemonSet>(&bad, "misspelled"));
    let msg = *r.unwrap_err().downcast::<String>().unwrap();
    assert!(msg.contains("mountPropogation (unknown field)"), "{msg}");
}

#[test]
fn every_manifest_file_fits_its_api_type() {
    strict::<DaemonSet>(&one_document("daemonset.yaml"), "deploy/daemonset.yaml");
    strict::<Service>(&one_document("service.yaml"), "deploy/service.yaml");
    strict::<PriorityClass>(
        &one_document("priorityclass.yaml"),
        "deploy/priorityclass.yaml",
    );
}

#[test]
fn the_memory_check_refuses_the_old_budget() {
    // Before: a 2Gi limit, no --max-kdf-memory (cryptsetup's 4 GiB ceiling), no job cap.
    let old = memory_budget(2 * GIB, 128 << 20, 4 * 1024 * 1024, 1);
    assert!(old.is_err(), "{old:?}");
    assert_eq!(memory_budget(2304 << 20, 256 << 20, 1 << 20, 2), Ok(()));
    assert!(memory_budget(2303 << 20, 256 << 20, 1 << 20, 2).is_err());
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct Kustomization {
    api_version: String,
    kind: String,
    namespace: String,
    resources: Vec<String>,
    labels: Vec<LabelSet>,
    images: Vec<Image>,
    secret_generator: Vec<SecretGenerator>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct LabelSet {
    pairs: BTreeMap<String, String>,
    include_templates: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct Image {
    name: String,
    new_name: String,
    new_tag: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SecretGenerator {
    name: String,
    options: GeneratorOptions,
    /// Empty (YAML null) until the operator adds the first crypto Secret.
    files: Option<Vec<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct GeneratorOptions {
    disable_name_suffix_hash: bool,
}

fn kustomization() -> Kustomization {
    serde_norway::from_str(&read("kustomization.yaml")).unwrap()
}

#[test]
fn kustomization_lists_every_manifest_and_sets_labels_and_image_in_one_place() {
    let k = kustomization();
    assert_eq!(k.api_version, "kustomize.config.k8s.io/v1beta1");
    assert_eq!(k.kind, "Kustomization");
    assert_eq!(k.namespace, "longhorn-system");
    let mut listed = k.resources.clone();
    listed.sort();
    let mut present: Vec<String> = fs::read_dir(deploy())
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| n.ends_with(".yaml") && n != "kustomization.yaml")
        .collect();
    present.sort();
    assert_eq!(
        listed, present,
        "every manifest in deploy/ is in the kustomization"
    );

    // Recommended labels, on pod templates too, and the version is the image's tag, which is
    // the crate's version (scripts/image.sh tags localhost/bifs-node:VERSION).
    let [labels] = &k.labels[..] else {
        panic!("one label set")
    };
    assert!(labels.include_templates);
    for l in RECOMMENDED_LABELS {
        assert!(labels.pairs.contains_key(l), "{l} missing");
    }
    assert_eq!(labels.pairs["app.kubernetes.io/part-of"], "longhorn");
    assert_eq!(labels.pairs["app.kubernetes.io/managed-by"], "kustomize");
    let [image] = &k.images[..] else {
        panic!("one image")
    };
    assert_eq!(image.name, "bifs-node");
    assert_eq!(image.new_tag, env!("CARGO_PKG_VERSION"));
    assert_eq!(labels.pairs["app.kubernetes.io/version"], image.new_tag);
    let ds = strict::<DaemonSet>(&one_document("daemonset.yaml"), "daemonset.yaml");
    assert_eq!(
        bifs_container(&ds).image.as_deref(),
        Some(image.name.as_str()),
        "the DaemonSet names the image kustomize rewrites"
    );

    // The crypto Secrets' generator: a stable name (no restart on change), and no file in
    // the repository (the operator's manifests are never committed).
    let [g] = &k.secret_generator[..] else {
        panic!("one generator: the crypto Secrets (the token is created by hand)")
    };
    assert_eq!(g.name, "bifs-crypto-secrets");
    assert!(g.options.disable_name_suffix_hash);
    assert_eq!(g.files, None, "the repository lists no crypto Secret");
    let ignore = read(".gitignore");
    assert!(
        ignore.lines().any(|l| l == "crypto-secrets/"),
        "deploy/crypto-secrets/ is never committed"
    );
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct BackingImage {
    api_version: String,
    kind: String,
    metadata: BackingImageMeta,
    spec: BackingImageSpec,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct BackingImageMeta {
    name: String,
    namespace: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct BackingImageSpec {
    source_type: String,
    source_parameters: BTreeMap<String, String>,
    secret: String,
    secret_namespace: String,
}

#[test]
fn example_backing_image_downloads_from_a_node_address() {
    let bi: BackingImage = serde_norway::from_str(&read("examples/backing-image.yaml")).unwrap();
    assert_eq!(
        (bi.api_version.as_str(), bi.kind.as_str()),
        ("longhorn.io/v1beta2", "BackingImage")
    );
    assert_eq!(bi.metadata.namespace, "longhorn-system");
    assert!(!bi.metadata.name.is_empty());
    assert_eq!(bi.spec.source_type, "download");
    let url = &bi.spec.source_parameters["url"];

    // http://NODE_IP:HOSTPORT/views/encrypt/NAMESPACE/SECRET/IMAGE: the node's address where
    // bifs's hostPort listens, never the Service (which picks any node).
    let ds = strict::<DaemonSet>(&one_document("daemonset.yaml"), "daemonset.yaml");
    let port = bifs_container(&ds).ports.as_ref().unwrap()[0]
        .host_port
        .expect("a hostPort");
    let rest = url.strip_prefix("http://").expect("plain HTTP");
    let (authority, path) = rest.split_once('/').unwrap();
    let (host, p) = authority.rsplit_once(':').unwrap();
    assert!(host.parse::<IpAddr>().is_ok(), "{host}: a node IP");
    assert_eq!(p, port.to_string());
    let parts: Vec<&str> = path.split('/').collect();
    let ["views", "encrypt", ns, secret, image] = parts[..] else {
        panic!("{path}: not views/encrypt/NAMESPACE/SECRET/IMAGE")
    };
    assert!(!image.is_empty());
    // Longhorn records the Secret of an encrypted backing image; it must be the URL's.
    assert_eq!(
        (ns, secret),
        (bi.spec.secret_namespace.as_str(), bi.spec.secret.as_str())
    );
}

// ---------------------------------------------------------------------------------------
// Full tier: what `kubectl kustomize` makes of deploy/.

/// Runs `kubectl kustomize DIR`, offline.
fn kustomize(dir: &Path) -> String {
    let out = Command::new("kubectl")
        .args(["kustomize"])
        .arg(dir)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| {
            panic!("kubectl not runnable ({e}): install it (scripts/setup.sh says how)")
        });
    assert!(
        out.status.success(),
        "kubectl kustomize {}: {}",
        dir.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// `kubernetes-validate --strict` of `files` against every version in KUBERNETES_VERSIONS.
fn validate(files: &[PathBuf]) {
    for v in KUBERNETES_VERSIONS {
        let out = Command::new("kubernetes-validate")
            .args(["--strict", "--quiet", "-k", v])
            .args(files)
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| {
                panic!("kubernetes-validate not runnable ({e}): bash scripts/setup.sh installs it")
            });
        assert!(
            out.status.success(),
            "kubernetes-validate {v}:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// The rendered objects, each parsed strictly into its API type.
struct Rendered {
    daemonset: DaemonSet,
    service: Service,
    priority: PriorityClass,
    crypto: Secret,
    /// Every object as rendered, for the labels check.
    all: Vec<serde_json::Value>,
}

/// A Secret with its `data` values unwrapped: kustomize folds long base64 into lines, which
/// the API server's decoder (Go's encoding/base64) skips; k8s-openapi's does not.
fn unwrapped_data(secret: &serde_json::Value) -> serde_json::Value {
    let mut s = secret.clone();
    if let Some(data) = s.get_mut("data").and_then(|d| d.as_object_mut()) {
        for v in data.values_mut() {
            if let Some(text) = v.as_str() {
                *v = text.replace(['\n', '\r'], "").into();
            }
        }
    }
    s
}

fn parse_rendered(yaml: &str, what: &str) -> Rendered {
    let mut all = Vec::new();
    for doc in serde_norway::Deserializer::from_str(yaml) {
        let v = serde_json::Value::deserialize(doc).unwrap();
        if !v.is_null() {
            all.push(v);
        }
    }
    let one = |kind: &str| -> &serde_json::Value {
        let found: Vec<_> = all.iter().filter(|o| o["kind"] == kind).collect();
        assert_eq!(found.len(), 1, "{what}: one {kind}");
        found[0]
    };
    let r = Rendered {
        daemonset: strict_value(one("DaemonSet"), &format!("{what}: DaemonSet")),
        service: strict_value(one("Service"), &format!("{what}: Service")),
        priority: strict_value(one("PriorityClass"), &format!("{what}: PriorityClass")),
        crypto: strict_value(&unwrapped_data(one("Secret")), &format!("{what}: Secret")),
        all: all.clone(),
    };
    assert_eq!(r.all.len(), 4, "{what}: nothing else is rendered");
    r
}

/// deploy/ copied to a scratch directory, without the operator's files (token, Secrets).
fn copy_deploy(to: &Path) {
    fn copy(from: &Path, to: &Path) {
        fs::create_dir_all(to).unwrap();
        for e in fs::read_dir(from).unwrap() {
            let e = e.unwrap();
            let name = e.file_name();
            if name == "crypto-secrets" || name == "token" {
                continue;
            }
            if e.file_type().unwrap().is_dir() {
                copy(&e.path(), &to.join(&name));
            } else {
                fs::copy(e.path(), to.join(&name)).unwrap();
            }
        }
    }
    copy(&deploy(), to);
}

/// The one commented-out example line of the crypto Secrets' generator, uncommented: what
/// docs/deploy.md tells the operator to add.
fn add_documented_secret_line(kustomization: &str) -> (String, String) {
    let examples: Vec<&str> = kustomization
        .lines()
        .filter(|l| l.trim_start().starts_with("# - crypto-secrets/"))
        .collect();
    let [example] = examples[..] else {
        panic!("one documented example line, found {examples:?}")
    };
    let line = example.replacen("# ", "", 1);
    let file = line.trim_start().trim_start_matches("- ").to_string();
    (kustomization.replacen(example, &line, 1), file)
}

/// A crypto Secret manifest as the operator keeps it (Longhorn's documented keys; a cheap KDF).
const LONGHORN_CRYPTO: &str = "\
apiVersion: v1
kind: Secret
metadata:
  name: longhorn-crypto
  namespace: longhorn-system
stringData:
  CRYPTO_KEY_VALUE: \"a passphrase for the deploy test\"
  CRYPTO_KEY_PROVIDER: \"secret\"
  CRYPTO_KEY_CIPHER: \"aes-xts-plain64\"
  CRYPTO_KEY_HASH: \"sha256\"
  CRYPTO_KEY_SIZE: \"256\"
  CRYPTO_PBKDF: \"pbkdf2\"
  CRYPTO_PBKDF_FORCE_ITERATIONS: \"1000\"
";

/// Every documented way to render deploy/: (what, directory).
fn variants(scratch: &Path) -> Vec<(&'static str, PathBuf)> {
    let mut out = vec![("deploy/ as checked out", deploy())];

    let one = scratch.join("one-secret");
    copy_deploy(&one);
    let k = fs::read_to_string(one.join("kustomization.yaml")).unwrap();
    let (k, file) = add_documented_secret_line(&k);
    fs::write(one.join("kustomization.yaml"), k).unwrap();
    fs::create_dir_all(one.join(&file).parent().unwrap()).unwrap();
    fs::write(one.join(&file), LONGHORN_CRYPTO).unwrap();
    out.push(("one crypto Secret added", one));

    // The commented tolerations/nodeSelector patch at the end of kustomization.yaml.
    let tol = scratch.join("tolerations");
    copy_deploy(&tol);
    let k = fs::read_to_string(tol.join("kustomization.yaml")).unwrap();
    let at = k.find("\n# patches:").expect("the commented patches block") + 1;
    let block: Vec<&str> = k[at..]
        .lines()
        .map(|l| l.strip_prefix("# ").unwrap_or_else(|| panic!("{l:?}")))
        .collect();
    fs::write(
        tol.join("kustomization.yaml"),
        format!("{}{}\n", &k[..at], block.join("\n")),
    )
    .unwrap();
    out.push(("tolerations patch", tol));

    // examples/live-secret-volume.yaml, listed as its comment says.
    let live = scratch.join("live-secret");
    copy_deploy(&live);
    let mut k = fs::read_to_string(live.join("kustomization.yaml")).unwrap();
    let usage = read("examples/live-secret-volume.yaml");
    let usage: Vec<&str> = usage
        .lines()
        .skip_while(|l| !l.contains("patches:"))
        .take(2)
        .map(|l| l.strip_prefix("#   ").unwrap())
        .collect();
    k.push_str(&format!("{}\n", usage.join("\n")));
    fs::write(live.join("kustomization.yaml"), k).unwrap();
    out.push(("live Secret volume example", live));
    out
}

#[test]
fn every_documented_rendering_validates_against_the_kubernetes_schema() {
    full_tier_only!("kubectl and kubernetes-validate");
    let scratch = tempfile::tempdir().unwrap();
    let mut files = Vec::new();
    for (i, (what, dir)) in variants(scratch.path()).into_iter().enumerate() {
        let yaml = kustomize(&dir);
        parse_rendered(&yaml, what);
        let f = scratch.path().join(format!("rendered-{i}.yaml"));
        fs::write(&f, yaml).unwrap();
        files.push(f);
    }
    validate(&files);

    // The validator does refuse a misplaced field (so a pass above means something).
    let bad = scratch.path().join("bad.yaml");
    let yaml = fs::read_to_string(&files[0]).unwrap();
    fs::write(&bad, yaml.replace("hostPort:", "hostPorts:")).unwrap();
    let r = std::panic::catch_unwind(|| validate(&[bad]));
    assert!(r.is_err(), "kubernetes-validate accepted hostPorts");
}

fn rendered() -> Rendered {
    parse_rendered(&kustomize(&deploy()), "deploy/")
}

#[test]
fn rendered_objects_carry_the_recommended_labels_and_the_image_set_once() {
    full_tier_only!("kubectl");
    let r = rendered();
    let k = kustomization();
    let want = &k.labels[0].pairs;
    let labels_of = |v: &serde_json::Value| -> BTreeMap<String, String> {
        serde_json::from_value(v["labels"].clone()).unwrap_or_default()
    };
    let ds_json = serde_json::to_value(&r.daemonset).unwrap();
    let mut checked = vec![(
        "pod template".to_string(),
        labels_of(&ds_json["spec"]["template"]["metadata"]),
    )];
    for o in &r.all {
        checked.push((
            format!("{} {}", o["kind"], o["metadata"]["name"]),
            labels_of(&o["metadata"]),
        ));
    }
    for (what, labels) in checked {
        for (k, v) in want {
            assert_eq!(labels.get(k), Some(v), "{what}: label {k}");
        }
    }
    // Selectors stay the name alone: the version changes with every release.
    let spec = r.daemonset.spec.as_ref().unwrap();
    let sel = spec.selector.match_labels.as_ref().unwrap();
    assert_eq!(sel.keys().collect::<Vec<_>>(), ["app.kubernetes.io/name"]);
    let svc_sel = r.service.spec.as_ref().unwrap().selector.as_ref().unwrap();
    assert_eq!(svc_sel, sel);

    let image = &k.images[0];
    assert_eq!(
        bifs_container(&r.daemonset).image.as_deref(),
        Some(format!("{}:{}", image.new_name, image.new_tag).as_str())
    );
    // Namespaced objects land in longhorn-system; the PriorityClass is cluster-scoped.
    for o in &r.all {
        let ns = o["metadata"]["namespace"].as_str();
        if o["kind"] == "PriorityClass" {
            assert_eq!(ns, None);
        } else {
            assert_eq!(ns, Some("longhorn-system"), "{}", o["kind"]);
        }
    }
}

#[test]
fn the_pod_has_no_api_token_and_a_priority_below_longhorns() {
    full_tier_only!("kubectl");
    let r = rendered();
    let p = pod(&r.daemonset);
    assert_eq!(p.automount_service_account_token, Some(false));
    assert_eq!(
        p.priority_class_name.as_deref(),
        r.priority.metadata.name.as_deref(),
        "the pod uses the PriorityClass deploy/ creates"
    );
    assert!(
        (1_000_000..LONGHORN_CRITICAL).contains(&r.priority.value),
        "{}: above workloads, below longhorn-critical",
        r.priority.value
    );
    assert_eq!(r.priority.global_default, Some(false));
    // Runs where longhorn-manager does by default: Linux nodes, no other condition.
    let sel = p.node_selector.as_ref().unwrap();
    assert_eq!(
        sel.iter().collect::<Vec<_>>(),
        [(&"kubernetes.io/os".to_string(), &"linux".to_string())]
    );
    assert_eq!(p.tolerations, None);
}

#[test]
fn each_node_advertises_its_own_address_on_the_host_port() {
    full_tier_only!("kubectl");
    let r = rendered();
    let c = bifs_container(&r.daemonset);
    let port = c
        .ports
        .as_ref()
        .unwrap()
        .iter()
        .find(|p| p.name.as_deref() == Some("http"))
        .expect("a port named http");
    let host_port = port
        .host_port
        .expect("a hostPort: Longhorn's pods reach the node's IP");
    assert_eq!(host_port, port.container_port);
    assert_eq!(
        pod(&r.daemonset).host_network,
        None,
        "hostPort, not hostNetwork"
    );
    // NODE_IP from the downward API, expanded by the kubelet in the argument.
    let env = c.env.as_ref().unwrap();
    let node_ip = env.iter().find(|e| e.name == "NODE_IP").expect("NODE_IP");
    let field = node_ip
        .value_from
        .as_ref()
        .unwrap()
        .field_ref
        .as_ref()
        .unwrap();
    assert_eq!(field.field_path, "status.hostIP");
    let f = flags(c);
    assert_eq!(f["advertise-url"], format!("http://$(NODE_IP):{host_port}"));
    assert!(
        f["serve"].ends_with(&format!(":{}", port.container_port)),
        "{}",
        f["serve"]
    );
    // A rolling update cannot surge: the new pod needs the old pod's hostPort.
    let ru = r
        .daemonset
        .spec
        .as_ref()
        .unwrap()
        .update_strategy
        .as_ref()
        .unwrap();
    let ru = ru.rolling_update.as_ref().unwrap();
    assert_eq!(ru.max_surge, Some(IntOrString::Int(0)));

    // The Service stays for the page and the API, on the same named port.
    let spec = r.service.spec.as_ref().unwrap();
    let ports = spec.ports.as_ref().unwrap();
    assert_eq!(ports.len(), 1);
    assert_eq!(ports[0].name.as_deref(), Some("http"));
    assert_eq!(ports[0].port, port.container_port);
    assert_eq!(
        ports[0].target_port,
        Some(IntOrString::String("http".into()))
    );
}

#[test]
fn the_memory_limit_covers_the_key_derivations_bifs_allows() {
    full_tier_only!("kubectl");
    let r = rendered();
    let c = bifs_container(&r.daemonset);
    let f = flags(c);
    let kdf_kib: u64 = f
        .get("max-kdf-memory")
        .expect("--max-kdf-memory given: its default (4 GiB) exceeds any sane limit")
        .parse()
        .unwrap();
    let jobs: u64 = f
        .get("max-kdf-jobs")
        .expect("--max-kdf-jobs given: without a cap the derivations are unbounded")
        .parse()
        .unwrap();
    assert!(jobs >= 1);
    // cryptsetup's default Argon2 ceiling for a new keyslot is 1 GiB: every keyslot Longhorn
    // (cryptsetup on a node) makes without an explicit --pbkdf-memory still opens.
    assert!(kdf_kib * 1024 >= GIB, "{kdf_kib} KiB");
    let res = c.resources.as_ref().unwrap();
    let request = bytes(&res.requests.as_ref().unwrap()["memory"]);
    let limit = bytes(&res.limits.as_ref().unwrap()["memory"]);
    assert!(request >= 128 << 20, "bifs's own bound: {request} B");
    memory_budget(limit, request, kdf_kib, jobs).unwrap();
    assert!(res.requests.as_ref().unwrap().contains_key("cpu"));
    assert!(res.limits.as_ref().unwrap().contains_key("cpu"));
}

#[test]
fn every_flag_the_daemonset_passes_is_one_bifs_mount_accepts() {
    full_tier_only!("kubectl");
    let r = rendered();
    let c = bifs_container(&r.daemonset);
    let args = c.args.as_ref().unwrap();
    assert_eq!(args.first().map(String::as_str), Some("mount"));
    let out = Command::new(crate::support::BIFS)
        .args(["mount", "--help"])
        .output()
        .unwrap();
    assert!(out.status.success());
    let help = String::from_utf8_lossy(&out.stdout);
    let unknown: Vec<String> = flags(c)
        .into_keys()
        .filter(|f| !help.contains(&format!("--{f}")))
        .collect();
    assert!(
        unknown.is_empty(),
        "the DaemonSet passes flags `bifs mount` does not have: {unknown:?} \
         (--max-kdf-jobs comes with issue 18's work budget, --advertise-url with issue 19)"
    );
}

#[test]
fn daemonset_runs_bifs_privileged_with_fuse_and_a_shared_mount() {
    full_tier_only!("kubectl");
    let r = rendered();
    let ds = &r.daemonset;
    assert_eq!(ds.metadata.namespace.as_deref(), Some("longhorn-system"));
    let spec = ds.spec.as_ref().unwrap();
    let labels = spec.template.metadata.as_ref().unwrap().labels.as_ref();
    for (k, v) in spec.selector.match_labels.as_ref().unwrap() {
        assert_eq!(
            labels.and_then(|l| l.get(k)),
            Some(v),
            "selector matches the pods"
        );
    }
    let c = bifs_container(ds);
    let sc = c.security_context.as_ref().unwrap();
    assert_eq!(sc.privileged, Some(true), "/dev/fuse and mount(2) need it");

    let args = c.args.as_ref().unwrap();
    let f = flags(c);
    let volumes: BTreeMap<&str, _> = pod(ds)
        .volumes
        .iter()
        .flatten()
        .map(|v| (v.name.as_str(), v))
        .collect();
    let mounts: BTreeMap<&str, _> = c
        .volume_mounts
        .iter()
        .flatten()
        .map(|m| (m.mount_path.as_str(), m))
        .collect();
    let host = |path: &str| {
        let m = mounts
            .get(path)
            .unwrap_or_else(|| panic!("nothing mounted at {path}"));
        (m, volumes[m.name.as_str()])
    };

    // /dev/fuse from the host.
    let (_, v) = host("/dev/fuse");
    let hp = v.host_path.as_ref().unwrap();
    assert_eq!(
        (hp.path.as_str(), hp.type_.as_deref()),
        ("/dev/fuse", Some("CharDevice"))
    );

    // The Longhorn data path, read-only, is the store.
    let (m, v) = host(&f["store"]);
    assert_eq!(m.read_only, Some(true), "the store is mounted read-only");
    assert_eq!(v.host_path.as_ref().unwrap().path, "/var/lib/longhorn");

    // State on the host (persisted headers survive restarts), writable.
    let (m, v) = host(&f["state"]);
    assert_ne!(m.read_only, Some(true));
    assert!(v.host_path.is_some(), "state is a hostPath");

    // The mount point (the last argument) propagates to the host.
    let mountpoint = args.last().unwrap();
    let (m, v) = host(mountpoint);
    assert_eq!(m.mount_propagation.as_deref(), Some("Bidirectional"));
    assert!(v.host_path.is_some());

    // The crypto Secrets: the generated Secret, one directory below --secrets (where bifs
    // reads a volume of manifests), read-only, root only.
    let secrets = &f["secrets"];
    let crypto_name = r.crypto.metadata.name.as_deref().unwrap();
    let (m, v) = host(&format!("{secrets}/{crypto_name}"));
    assert_eq!(m.read_only, Some(true));
    let s = v.secret.as_ref().expect("a Secret volume");
    assert_eq!(s.secret_name.as_deref(), Some(crypto_name));
    assert_eq!(s.default_mode, Some(0o400));

    // The token file comes from the hand-made token Secret, which deploy/ never renders.
    let token = Path::new(&f["token-file"]);
    let (_, v) = host(token.parent().unwrap().to_str().unwrap());
    let s = v.secret.as_ref().expect("token is a Secret volume");
    assert_eq!(s.secret_name.as_deref(), Some("bifs-token"));
    assert_eq!(s.default_mode, Some(0o400));
    assert_eq!(token.file_name().unwrap(), "token");
    assert!(
        !r.all.iter().any(|o| o["metadata"]["name"] == "bifs-token"),
        "the token is never a file kustomize reads"
    );

    // Probes: liveness looks at the FUSE mount, readiness at the HTTP port.
    let live = c.liveness_probe.as_ref().unwrap();
    let cmd = live.exec.as_ref().unwrap().command.as_ref().unwrap();
    assert!(
        cmd.iter().any(|a| a.starts_with(mountpoint.as_str())),
        "{cmd:?}"
    );
    let ready = c.readiness_probe.as_ref().unwrap();
    let get = ready
        .http_get
        .as_ref()
        .expect("readiness asks the HTTP server");
    assert_eq!(get.path.as_deref(), Some("/readyz"));
    assert_eq!(get.port, IntOrString::String("http".into()));
    assert!(
        f.contains_key("public-read"),
        "Longhorn downloads without credentials"
    );
}

#[test]
fn adding_a_crypto_secret_is_one_line_that_restarts_nothing() {
    full_tier_only!("kubectl");
    let scratch = tempfile::tempdir().unwrap();
    let before = rendered();
    let variants = variants(scratch.path());
    let (_, dir) = &variants[1];

    // One line of kustomization.yaml differs.
    let old = read("kustomization.yaml");
    let new = fs::read_to_string(dir.join("kustomization.yaml")).unwrap();
    let changed: Vec<(&str, &str)> = old
        .lines()
        .zip(new.lines())
        .filter(|(a, b)| a != b)
        .collect();
    assert_eq!(old.lines().count(), new.lines().count());
    assert_eq!(changed.len(), 1, "{changed:?}");

    let after = parse_rendered(&kustomize(dir), "one Secret added");
    // The pod template is untouched: no rolling restart. The kubelet updates the existing
    // Secret volume in place.
    assert_eq!(
        serde_json::to_value(&before.daemonset).unwrap(),
        serde_json::to_value(&after.daemonset).unwrap(),
        "adding a Secret changed the DaemonSet"
    );
    assert_eq!(after.crypto.metadata.name, before.crypto.metadata.name);
    assert_eq!(before.crypto.data.as_ref().map(|d| d.len()).unwrap_or(0), 0);
    let data = after.crypto.data.as_ref().unwrap();
    assert_eq!(data.len(), 1);
    assert_eq!(&data["longhorn-crypto.yaml"].0, LONGHORN_CRYPTO.as_bytes());

    // What bifs sees: the kubelet's layout of that Secret at the mount path, under --secrets.
    let c = bifs_container(&after.daemonset);
    let secrets_dir = scratch.path().join("node/secrets");
    let mount = c
        .volume_mounts
        .iter()
        .flatten()
        .find(|m| m.name == "crypto-secrets")
        .unwrap();
    let rel = Path::new(&mount.mount_path)
        .strip_prefix(&flags(c)["secrets"])
        .expect("mounted under --secrets");
    let keys: Vec<(&str, &[u8])> = data.iter().map(|(k, v)| (k.as_str(), &v.0[..])).collect();
    crate::support::node::kubelet_write(&secrets_dir.join(rel), &keys);
    let src = bifs_k8s::SecretSource::open(&secrets_dir).unwrap();
    let found: Vec<String> = src.secrets().map(|s| s.id.to_string()).collect();
    assert_eq!(found, ["longhorn-system/longhorn-crypto"]);
    let params = src.secrets().next().unwrap().crypto_params().unwrap();
    assert_eq!(
        params.luks.passphrase.as_bytes(),
        b"a passphrase for the deploy test"
    );
}
