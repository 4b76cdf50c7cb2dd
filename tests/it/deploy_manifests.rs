//! deploy/ checked against the Kubernetes API types (no API server runs here).
//!
//! Each document is parsed into its `k8s-openapi` type and serialized back: a field that the
//! type does not know (a typo, a field at the wrong level) is dropped by the round trip, so
//! the input and the round trip must be equal. Then the properties bifs relies on are checked.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::api::core::v1::{Container, PodSpec, Service};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

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

/// Parses `doc` as `T` and refuses anything the type would drop (unknown or misplaced fields).
fn strict<T: DeserializeOwned + Serialize>(doc: &str, what: &str) -> T {
    let input = json_of(doc, what);
    let typed: T = serde_json::from_value(input.clone())
        .unwrap_or_else(|e| panic!("{what}: does not fit the API type: {e}"));
    let back = serde_json::to_value(&typed).unwrap();
    let mut diffs = Vec::new();
    diff("", &input, &back, &mut diffs);
    assert!(
        diffs.is_empty(),
        "{what}: fields the API type does not know or reads differently:\n{}",
        diffs.join("\n")
    );
    typed
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

fn daemonset() -> DaemonSet {
    strict(&one_document("daemonset.yaml"), "deploy/daemonset.yaml")
}

fn service() -> Service {
    strict(&one_document("service.yaml"), "deploy/service.yaml")
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

/// `--flag=value` arguments of the container.
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

#[test]
fn strictness_catches_a_misspelled_field() {
    let bad = one_document("daemonset.yaml").replace("mountPropagation:", "mountPropogation:");
    let r = std::panic::catch_unwind(|| strict::<DaemonSet>(&bad, "misspelled"));
    let msg = *r.unwrap_err().downcast::<String>().unwrap();
    assert!(msg.contains("mountPropogation (unknown field)"), "{msg}");
}

#[test]
fn daemonset_runs_bifs_privileged_with_fuse_and_a_shared_mount() {
    let ds = daemonset();
    let meta = &ds.metadata;
    assert_eq!(meta.namespace.as_deref(), Some("longhorn-system"));
    let spec = ds.spec.as_ref().unwrap();
    let labels = spec.template.metadata.as_ref().unwrap().labels.as_ref();
    let selector = spec.selector.match_labels.as_ref().unwrap();
    for (k, v) in selector {
        assert_eq!(
            labels.and_then(|l| l.get(k)),
            Some(v),
            "selector matches the pods"
        );
    }
    let c = bifs_container(&ds);
    let sc = c.security_context.as_ref().unwrap();
    assert_eq!(sc.privileged, Some(true), "/dev/fuse and mount(2) need it");

    let args = c.args.as_ref().unwrap();
    assert_eq!(args.first().map(String::as_str), Some("mount"));
    let f = flags(c);
    let volumes: BTreeMap<&str, _> = pod(&ds)
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

    // Secret volumes at --secrets/NAMESPACE/NAME, of the pod's namespace, read-only.
    let secrets = &f["secrets"];
    let mut crypto = 0;
    for (path, m) in &mounts {
        let Some(rest) = path.strip_prefix(&format!("{secrets}/")) else {
            continue;
        };
        let (ns, name) = rest.split_once('/').expect("NAMESPACE/NAME");
        assert_eq!(
            ns, "longhorn-system",
            "a pod mounts Secrets of its namespace only"
        );
        let s = volumes[m.name.as_str()]
            .secret
            .as_ref()
            .expect("a Secret volume");
        assert_eq!(s.secret_name.as_deref(), Some(name));
        assert_eq!(m.read_only, Some(true));
        assert_eq!(s.default_mode, Some(0o400));
        crypto += 1;
    }
    assert!(
        crypto >= 1,
        "at least one crypto Secret volume under {secrets}"
    );

    // The token file comes from the token Secret.
    let token = Path::new(&f["token-file"]);
    let (_, v) = host(token.parent().unwrap().to_str().unwrap());
    let s = v.secret.as_ref().expect("token is a Secret volume");
    assert_eq!(s.secret_name.as_deref(), Some("bifs-token"));
    assert_eq!(token.file_name().unwrap(), "token");

    // Resources, both requests and limits.
    let r = c.resources.as_ref().unwrap();
    for set in [&r.requests, &r.limits] {
        let set = set.as_ref().unwrap();
        assert!(
            set.contains_key("cpu") && set.contains_key("memory"),
            "{set:?}"
        );
    }

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

    // The HTTP server listens where the container port says.
    let port = c
        .ports
        .as_ref()
        .unwrap()
        .iter()
        .find(|p| p.name.as_deref() == Some("http"));
    let port = port.expect("a port named http").container_port;
    assert!(f["serve"].ends_with(&format!(":{port}")), "{}", f["serve"]);
    assert!(
        f.contains_key("public-read"),
        "Longhorn downloads without credentials"
    );
}

#[test]
fn service_reaches_the_daemonset_on_the_http_port() {
    let ds = daemonset();
    let svc = service();
    assert_eq!(svc.metadata.name.as_deref(), Some("bifs"));
    assert_eq!(svc.metadata.namespace.as_deref(), Some("longhorn-system"));
    let spec = svc.spec.as_ref().unwrap();
    let pod_labels = ds.spec.unwrap().template.metadata.unwrap().labels.unwrap();
    for (k, v) in spec.selector.as_ref().unwrap() {
        assert_eq!(
            pod_labels.get(k),
            Some(v),
            "Service selector matches the pods"
        );
    }
    let ports = spec.ports.as_ref().unwrap();
    assert_eq!(ports.len(), 1);
    assert_eq!(ports[0].name.as_deref(), Some("http"));
    assert_eq!(ports[0].port, 8080);
    assert_eq!(
        ports[0].target_port,
        Some(IntOrString::String("http".into()))
    );
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct Kustomization {
    api_version: String,
    kind: String,
    namespace: String,
    resources: Vec<String>,
    secret_generator: Vec<SecretGenerator>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SecretGenerator {
    name: String,
    files: Vec<String>,
    options: GeneratorOptions,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct GeneratorOptions {
    disable_name_suffix_hash: bool,
}

#[test]
fn kustomization_lists_every_manifest_and_generates_the_token() {
    let k: Kustomization = serde_norway::from_str(&read("kustomization.yaml")).unwrap();
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
    // The DaemonSet's token volume comes from the generator, under a stable name.
    let g = &k.secret_generator[0];
    assert_eq!(g.name, "bifs-token");
    assert_eq!(g.files, ["token"]);
    assert!(g.options.disable_name_suffix_hash);
    let ignore = read(".gitignore");
    assert!(
        ignore.lines().any(|l| l == "token"),
        "deploy/token is never committed"
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
}

#[test]
fn example_backing_image_downloads_from_the_service() {
    let bi: BackingImage = serde_norway::from_str(&read("examples/backing-image.yaml")).unwrap();
    assert_eq!(
        (bi.api_version.as_str(), bi.kind.as_str()),
        ("longhorn.io/v1beta2", "BackingImage")
    );
    assert_eq!(bi.metadata.namespace, "longhorn-system");
    assert!(!bi.metadata.name.is_empty());
    assert_eq!(bi.spec.source_type, "download");
    let url = &bi.spec.source_parameters["url"];
    let svc = service();
    let host = format!(
        "http://{}.{}.svc:{}/views/encrypt/",
        svc.metadata.name.unwrap(),
        svc.metadata.namespace.unwrap(),
        svc.spec.unwrap().ports.unwrap()[0].port
    );
    let rest = url
        .strip_prefix(&host)
        .unwrap_or_else(|| panic!("{url} not under {host}"));
    // NAMESPACE/SECRET/IMAGE, with the Secret mounted in the DaemonSet.
    let parts: Vec<&str> = rest.split('/').collect();
    assert_eq!(parts.len(), 3, "{rest}");
    let ds = daemonset();
    let c = bifs_container(&ds);
    let want = format!("{}/{}/{}", flags(c)["secrets"], parts[0], parts[1]);
    assert!(
        c.volume_mounts
            .iter()
            .flatten()
            .any(|m| m.mount_path == want),
        "the URL's Secret is mounted at {want}"
    );
}
