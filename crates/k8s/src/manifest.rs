//! BackingImage manifests (`longhorn.io/v1beta2`): the object model, parsing of multi-document
//! YAML, and the checks that need nothing but the manifest itself (Longhorn's webhook rules
//! that need the store live in `apply.rs`). Every refusal names the field it is about.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

pub const API_VERSION: &str = "longhorn.io/v1beta2";
pub const KIND: &str = "BackingImage";

/// `sourceParameters` keys, as Longhorn spells them.
pub const PARAM_URL: &str = "url";
pub const PARAM_PATH: &str = "path";
pub const PARAM_BACKING_IMAGE: &str = "backing-image";
pub const PARAM_ENCRYPTION: &str = "encryption";
pub const PARAM_SECRET: &str = "secret";
pub const PARAM_SECRET_NAMESPACE: &str = "secret-namespace";

/// A refusal that names the manifest field it is about, e.g.
/// `spec.sourceParameters.encryption: "foo" is not supported`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct FieldError {
    pub field: String,
    pub message: String,
}

impl FieldError {
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            message: message.into(),
        }
    }

    /// `spec.sourceParameters.<key>`.
    pub fn param(key: &str, message: impl Into<String>) -> Self {
        Self::new(format!("spec.sourceParameters.{key}"), message)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    #[error("reading {}: {source}", .path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{}: not valid YAML: {message}", .path.display())]
    Yaml { path: PathBuf, message: String },
    #[error("{}: BackingImage {name}: {source}", .path.display())]
    Field {
        path: PathBuf,
        name: String,
        source: FieldError,
    },
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ObjectMeta {
    #[serde(default)]
    pub name: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub namespace: String,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

/// The labels longhorn-manager's mutator puts on every BackingImage
/// (`types.GetBackingImageLabels`: `GetBaseLabelsForSystemManagedComponent` plus the
/// component), merged over the object's own.
pub const LONGHORN_LABELS: [(&str, &str); 2] = [
    ("longhorn.io/component", "backing-image"),
    ("longhorn.io/managed-by", "longhorn-manager"),
];

/// The annotation bifs puts on the BackingImages it lists but did not make: image
/// directories backing-image-manager filled on this disk. bifs serves and clones them, and
/// never changes or deletes them.
pub const MANAGED_BY_LONGHORN: (&str, &str) = ("bifs/managed-by", "longhorn");

/// How a backing image gets its bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SourceType {
    Download,
    Upload,
    Clone,
}

impl SourceType {
    pub fn parse(s: &str) -> Option<Self> {
        match s.trim() {
            "download" => Some(SourceType::Download),
            "upload" => Some(SourceType::Upload),
            "clone" => Some(SourceType::Clone),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            SourceType::Download => "download",
            SourceType::Upload => "upload",
            SourceType::Clone => "clone",
        }
    }
}

/// What a clone does to the bytes of its source.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encryption {
    /// Bytes copied as they are; the clone inherits the source's secret.
    Ignore,
    /// LUKS2 of the source's raw disk (qcow2 flattened), keyed by the given secret.
    Encrypt,
    /// Plaintext of the source's data segment, unlocked by the given secret.
    Decrypt,
    /// bifs only: the source's LUKS data unchanged under a new header for the given secret.
    Rekey,
}

impl Encryption {
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "ignore" => Some(Encryption::Ignore),
            "encrypt" => Some(Encryption::Encrypt),
            "decrypt" => Some(Encryption::Decrypt),
            "rekey" => Some(Encryption::Rekey),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Encryption::Ignore => "ignore",
            Encryption::Encrypt => "encrypt",
            Encryption::Decrypt => "decrypt",
            Encryption::Rekey => "rekey",
        }
    }
}

impl fmt::Display for Encryption {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The spec as applied, with every field of longhorn-manager's `BackingImageSpec`
/// (`k8s/pkg/apis/longhorn/v1beta2/backingimage.go`), filled in as its mutator and controller
/// leave them. Unknown fields are kept so that `get -o yaml` shows what was applied and a
/// change to them counts as a change.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BackingImageSpec {
    #[serde(default)]
    pub disks: BTreeMap<String, String>,
    #[serde(default)]
    pub disk_file_spec_map: BTreeMap<String, DiskFileSpec>,
    #[serde(default)]
    pub checksum: String,
    #[serde(default)]
    pub source_type: String,
    #[serde(default)]
    pub source_parameters: BTreeMap<String, String>,
    #[serde(default)]
    pub min_number_of_copies: i64,
    #[serde(default)]
    pub disk_selector: Option<Vec<String>>,
    #[serde(default)]
    pub node_selector: Option<Vec<String>>,
    /// The Secret that opens the image; empty when it is not encrypted (Longhorn reads
    /// "encrypted" from here).
    #[serde(default)]
    pub secret: String,
    #[serde(default)]
    pub secret_namespace: String,
    #[serde(default)]
    pub data_engine: String,
    #[serde(flatten)]
    pub other: BTreeMap<String, serde_json::Value>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DiskFileSpec {
    #[serde(default)]
    pub eviction_requested: bool,
    #[serde(default)]
    pub data_engine: String,
}

/// Longhorn's `BackingImageState`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum State {
    #[default]
    Pending,
    Starting,
    InProgress,
    ReadyForTransfer,
    Ready,
    Failed,
    FailedAndCleanup,
    Unknown,
}

impl State {
    /// Every state, in the order of Longhorn's `BackingImageState` constants.
    pub const ALL: [State; 8] = [
        State::Pending,
        State::Starting,
        State::InProgress,
        State::ReadyForTransfer,
        State::Ready,
        State::Failed,
        State::FailedAndCleanup,
        State::Unknown,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            State::Pending => "pending",
            State::Starting => "starting",
            State::InProgress => "in-progress",
            State::ReadyForTransfer => "ready-for-transfer",
            State::Ready => "ready",
            State::Failed => "failed",
            State::FailedAndCleanup => "failed-and-cleanup",
            State::Unknown => "unknown",
        }
    }

    pub fn is_settled(self) -> bool {
        matches!(self, State::Ready | State::Failed | State::FailedAndCleanup)
    }
}

/// One disk's file of a backing image: longhorn-manager's `BackingImageDiskFileStatus`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DiskFileStatus {
    #[serde(default)]
    pub data_engine: String,
    #[serde(default)]
    pub state: State,
    /// Percent of the bytes written, 0–100.
    #[serde(default)]
    pub progress: u8,
    #[serde(default)]
    pub message: String,
    /// RFC 3339, set when `state` changes.
    #[serde(default)]
    pub last_state_transition_time: String,
}

/// longhorn-manager's `BackingImageStatus`, every field, for the one disk a store is.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BackingImageStatus {
    /// The node that made it (Longhorn: the node whose controller owns the object).
    #[serde(default, rename = "ownerID")]
    pub owner_id: String,
    /// The `<uuid>` of `backing-images/<name>-<uuid>/`, kept across retries.
    #[serde(default)]
    pub uuid: String,
    /// File size of `backing`.
    #[serde(default)]
    pub size: u64,
    /// Size of the disk it holds (a qcow2's virtual size; else the file size).
    #[serde(default)]
    pub virtual_size: u64,
    /// Bytes allocated on disk (holes not counted).
    #[serde(default)]
    pub real_size: u64,
    /// SHA-512 of `backing`; immutable once set.
    #[serde(default)]
    pub checksum: String,
    /// Keyed by the disk's UUID (`longhorn-disk.cfg`).
    #[serde(default)]
    pub disk_file_status_map: BTreeMap<String, DiskFileStatus>,
    #[serde(default)]
    pub disk_last_ref_at_map: BTreeMap<String, String>,
    #[serde(default)]
    pub v2_first_copy_status: String,
    #[serde(default)]
    pub v2_first_copy_disk: String,
}

impl BackingImageStatus {
    /// The file on this store's disk (the only one a store has).
    pub fn file(&self) -> DiskFileStatus {
        self.disk_file_status_map
            .values()
            .next()
            .cloned()
            .unwrap_or_default()
    }

    pub fn state(&self) -> State {
        self.file().state
    }

    /// Sets the disk file's state, progress and message; the transition time moves only
    /// when the state changes (as longhorn-manager's `updateStatusWithFileInfo`).
    pub fn set_file(&mut self, disk: &str, state: State, progress: u8, message: &str) {
        let f = self
            .disk_file_status_map
            .entry(disk.to_string())
            .or_insert_with(|| DiskFileStatus {
                data_engine: DATA_ENGINE_V1.into(),
                ..Default::default()
            });
        if f.state != state || f.last_state_transition_time.is_empty() {
            f.last_state_transition_time = crate::time::rfc3339_now();
        }
        f.state = state;
        f.progress = progress;
        f.message = message.to_string();
    }

    pub fn set_progress(&mut self, progress: u8) {
        if let Some(f) = self.disk_file_status_map.values_mut().next() {
            f.progress = progress;
        }
    }
}

/// Longhorn's only data engine for backing image files.
pub const DATA_ENGINE_V1: &str = "v1";

/// A BackingImage object: what `-f` files hold, and (with `status`) what the store records.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BackingImage {
    pub api_version: String,
    pub kind: String,
    pub metadata: ObjectMeta,
    pub spec: BackingImageSpec,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<BackingImageStatus>,
}

/// The validated meaning of a spec.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    Download {
        url: String,
    },
    Upload {
        path: PathBuf,
    },
    Clone {
        backing_image: String,
        encryption: Encryption,
        secret: Option<crate::SecretRef>,
    },
}

impl BackingImage {
    pub fn name(&self) -> &str {
        &self.metadata.name
    }

    /// The checksum the user asked for, normalized (trimmed, lower case); `None` when empty.
    pub fn expected_checksum(&self) -> Option<String> {
        let c = self.spec.checksum.trim();
        (!c.is_empty()).then(|| c.to_ascii_lowercase())
    }

    /// The checks Longhorn's webhook makes without looking at other objects (on a name
    /// already auto-corrected, see [`auto_correct_name`]).
    pub fn validate(&self) -> Result<Source, FieldError> {
        if !valid_name(&self.metadata.name) {
            return Err(FieldError::new(
                "metadata.name",
                format!(
                    "invalid name {:?}: lower-case letters, digits, '_', '.', '-', at least 2 characters, starting with a letter or digit",
                    self.metadata.name
                ),
            ));
        }
        if let Some(c) = self.expected_checksum() {
            if c.len() != 128 || !c.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(FieldError::new(
                    "spec.checksum",
                    format!("invalid checksum {c:?}: not a SHA-512 hex digest (128 hex digits)"),
                ));
            }
        }
        match self.spec.data_engine.trim() {
            "" | DATA_ENGINE_V1 => {}
            "v2" => {
                return Err(FieldError::new(
                    "spec.dataEngine",
                    "v2 backing image is not supported",
                ))
            }
            other => {
                return Err(FieldError::new(
                    "spec.dataEngine",
                    format!("{other:?} is not a data engine (v1)"),
                ))
            }
        }
        if self.spec.min_number_of_copies < 0 {
            return Err(FieldError::new(
                "spec.minNumberOfCopies",
                "must not be negative",
            ));
        }
        let param = |key: &str| {
            self.spec
                .source_parameters
                .get(key)
                .map(|v| v.trim())
                .filter(|v| !v.is_empty())
        };
        let source_type = self.spec.source_type.trim();
        if source_type.is_empty() {
            return Err(FieldError::new(
                "spec.sourceType",
                "required (download, upload or clone)",
            ));
        }
        let Some(source_type) = SourceType::parse(source_type) else {
            return Err(FieldError::new(
                "spec.sourceType",
                format!("{source_type:?} is not supported by bifs (download, upload or clone)"),
            ));
        };
        match source_type {
            SourceType::Download => {
                let url = param(PARAM_URL).ok_or_else(|| {
                    FieldError::param(PARAM_URL, "required for sourceType download")
                })?;
                let scheme = url.split_once("://").map(|(s, _)| s.to_ascii_lowercase());
                match scheme.as_deref() {
                    Some("http" | "https" | "file") => Ok(Source::Download {
                        url: url.to_string(),
                    }),
                    _ => Err(FieldError::param(
                        PARAM_URL,
                        format!("{url:?}: only http://, https:// and file:// URLs are supported"),
                    )),
                }
            }
            SourceType::Upload => {
                let path = param(PARAM_PATH).ok_or_else(|| {
                    FieldError::param(
                        PARAM_PATH,
                        "required for sourceType upload: bifs uploads from a local file",
                    )
                })?;
                Ok(Source::Upload {
                    path: PathBuf::from(path),
                })
            }
            SourceType::Clone => {
                let backing_image = param(PARAM_BACKING_IMAGE).ok_or_else(|| {
                    FieldError::param(PARAM_BACKING_IMAGE, "required for sourceType clone")
                })?;
                let encryption = match param(PARAM_ENCRYPTION) {
                    None => Encryption::Ignore,
                    Some(e) => Encryption::parse(e).ok_or_else(|| {
                        FieldError::param(
                            PARAM_ENCRYPTION,
                            format!("encryption {e:?} is not supported (ignore, encrypt, decrypt or rekey)"),
                        )
                    })?,
                };
                let secret = match encryption {
                    Encryption::Ignore => None,
                    _ => {
                        let missing = |key: &str| {
                            FieldError::param(key, format!("required for encryption {encryption}: the Secret that keys the image"))
                        };
                        let name = param(PARAM_SECRET).ok_or_else(|| missing(PARAM_SECRET))?;
                        let namespace = param(PARAM_SECRET_NAMESPACE)
                            .ok_or_else(|| missing(PARAM_SECRET_NAMESPACE))?;
                        Some(crate::SecretRef {
                            namespace: namespace.into(),
                            name: name.into(),
                        })
                    }
                };
                Ok(Source::Clone {
                    backing_image: backing_image.to_string(),
                    encryption,
                    secret,
                })
            }
        }
    }

    /// The spec as Longhorn's mutator and controller leave it, for a clone whose source
    /// has `source` (its spec's Secret and its status checksum) on the disk `disk_uuid`:
    /// values trimmed; a clone's `encryption` defaulted to `ignore`; an `ignore` clone takes
    /// the source's Secret and checksum, `encrypt` (and bifs's `rekey`) the parameters'
    /// Secret and no checksum, `decrypt` no checksum and the manifest's own Secret (if any); `disks`, `diskFileSpecMap`,
    /// `minNumberOfCopies` and `dataEngine` defaulted. bifs also lower-cases the checksum.
    pub fn mutated_spec(&self, source: Option<&SourceFacts>, disk_uuid: &str) -> BackingImageSpec {
        let mut spec = self.spec.clone();
        spec.source_type = spec.source_type.trim().to_string();
        for v in spec.source_parameters.values_mut() {
            *v = v.trim().to_string();
        }
        spec.checksum = spec.checksum.trim().to_ascii_lowercase();
        spec.secret = spec.secret.trim().to_string();
        spec.secret_namespace = spec.secret_namespace.trim().to_string();
        if SourceType::parse(&spec.source_type) == Some(SourceType::Clone) {
            let e = spec
                .source_parameters
                .entry(PARAM_ENCRYPTION.into())
                .or_default();
            if e.is_empty() {
                *e = Encryption::Ignore.as_str().into();
            }
            let param = |k: &str| spec.source_parameters.get(k).cloned().unwrap_or_default();
            match Encryption::parse(&param(PARAM_ENCRYPTION)) {
                Some(Encryption::Ignore) => {
                    if let Some(src) = source {
                        spec.secret = src.secret.clone();
                        spec.secret_namespace = src.secret_namespace.clone();
                        spec.checksum = src.checksum.clone();
                    }
                }
                Some(Encryption::Encrypt | Encryption::Rekey) => {
                    spec.secret = param(PARAM_SECRET);
                    spec.secret_namespace = param(PARAM_SECRET_NAMESPACE);
                    spec.checksum.clear();
                }
                // Longhorn's mutator rewrites spec.secret only for `ignore`: a decrypt clone
                // keeps what its manifest says (usually nothing: the plaintext needs none).
                Some(Encryption::Decrypt) => spec.checksum.clear(),
                None => {}
            }
        } else if !spec.secret.is_empty() && spec.secret_namespace.is_empty() {
            // A download/upload that is already encrypted: the Secret in the object's namespace.
            spec.secret_namespace = if self.metadata.namespace.is_empty() {
                "default".into()
            } else {
                self.metadata.namespace.clone()
            };
        }
        if spec.min_number_of_copies == 0 {
            spec.min_number_of_copies = DEFAULT_MIN_NUMBER_OF_COPIES;
        }
        if spec.data_engine.trim().is_empty() {
            spec.data_engine = DATA_ENGINE_V1.into();
        }
        if !disk_uuid.is_empty() {
            spec.disk_file_spec_map
                .entry(disk_uuid.to_string())
                .or_insert_with(|| DiskFileSpec {
                    eviction_requested: false,
                    data_engine: DATA_ENGINE_V1.into(),
                });
        }
        spec
    }
}

/// What a clone's spec takes from its source.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SourceFacts {
    pub secret: String,
    pub secret_namespace: String,
    pub checksum: String,
}

/// Longhorn's default for the setting `default-min-number-of-backing-image-copies`.
pub const DEFAULT_MIN_NUMBER_OF_COPIES: i64 = 1;

/// longhorn-manager's `datastore.NameMaximumLength`.
pub const NAME_MAXIMUM_LENGTH: usize = 40;

/// Longhorn's `util.AutoCorrectName(name, 40)`: lower case, and a name longer than 40 bytes
/// cut to end in `-` and the first 8 hex digits of the SHA-512 of the name as given.
pub fn auto_correct_name(name: &str) -> String {
    let lower = name.to_lowercase();
    if name.len() <= NAME_MAXIMUM_LENGTH {
        return lower;
    }
    use sha2::Digest;
    let sum = hex::encode(sha2::Sha512::digest(name.as_bytes()));
    let suffix = format!("-{}", &sum[..8]);
    let cut = NAME_MAXIMUM_LENGTH - suffix.len();
    let prefix = String::from_utf8_lossy(&lower.as_bytes()[..cut.min(lower.len())]).into_owned();
    format!("{}{suffix}", prefix.trim_end_matches('-'))
}

/// The first field where two specs differ, for "changed spec" refusals.
pub fn first_difference(old: &BackingImageSpec, new: &BackingImageSpec) -> Option<String> {
    if old.source_type != new.source_type {
        return Some("spec.sourceType".into());
    }
    let keys: std::collections::BTreeSet<&String> = old
        .source_parameters
        .keys()
        .chain(new.source_parameters.keys())
        .collect();
    for k in keys {
        if old.source_parameters.get(k) != new.source_parameters.get(k) {
            return Some(format!("spec.sourceParameters.{k}"));
        }
    }
    if old.checksum != new.checksum {
        return Some("spec.checksum".into());
    }
    if old.secret != new.secret {
        return Some("spec.secret".into());
    }
    if old.secret_namespace != new.secret_namespace {
        return Some("spec.secretNamespace".into());
    }
    if old.min_number_of_copies != new.min_number_of_copies {
        return Some("spec.minNumberOfCopies".into());
    }
    if old.data_engine != new.data_engine {
        return Some("spec.dataEngine".into());
    }
    if old.disk_selector != new.disk_selector {
        return Some("spec.diskSelector".into());
    }
    if old.node_selector != new.node_selector {
        return Some("spec.nodeSelector".into());
    }
    let keys: std::collections::BTreeSet<&String> =
        old.other.keys().chain(new.other.keys()).collect();
    keys.into_iter()
        .find(|k| old.other.get(*k) != new.other.get(*k))
        .map(|k| format!("spec.{k}"))
}

/// Longhorn's `util.ValidateName`: `^[a-z0-9][a-z0-9_.-]+$`. The name becomes a directory
/// name, so this also keeps it a single path component.
pub fn valid_name(name: &str) -> bool {
    let b = name.as_bytes();
    b.len() >= 2
        && (b[0].is_ascii_lowercase() || b[0].is_ascii_digit())
        && b.iter().all(|&c| {
            c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, b'_' | b'.' | b'-')
        })
}

/// YAML scalars as Kubernetes would hold them in a `map[string]string`.
fn scalar(v: &serde_norway::Value) -> Option<String> {
    match v {
        serde_norway::Value::String(s) => Some(s.clone()),
        serde_norway::Value::Number(n) => Some(n.to_string()),
        serde_norway::Value::Bool(b) => Some(b.to_string()),
        serde_norway::Value::Null => Some(String::new()),
        _ => None,
    }
}

/// The objects a document holds: the items of a list (`kind: List`, as `kubectl get -o yaml`
/// and `bifs get -o yaml` print several objects; also the typed `SecretList`,
/// `BackingImageList`), else the document itself. Lists in lists are opened too, a few
/// levels deep.
pub(crate) fn list_items(value: serde_norway::Value) -> Vec<serde_norway::Value> {
    fn go(value: serde_norway::Value, depth: usize, out: &mut Vec<serde_norway::Value>) {
        let is_list = value
            .get("kind")
            .and_then(|k| k.as_str())
            .is_some_and(|k| k.ends_with("List"));
        if is_list && depth < 4 {
            if let Some(serde_norway::Value::Sequence(items)) = value.get("items") {
                for item in items.clone() {
                    go(item, depth + 1, out);
                }
                return;
            }
        }
        out.push(value);
    }
    let mut out = Vec::new();
    go(value, 0, &mut out);
    out
}

/// Parses every `kind: BackingImage` object in `text` (documents, and the items of lists);
/// other kinds (Secrets, …) are skipped.
pub fn parse_backing_images(text: &str, path: &Path) -> Result<Vec<BackingImage>, ManifestError> {
    let mut objects = Vec::new();
    for doc in serde_norway::Deserializer::from_str(text) {
        let value = serde_norway::Value::deserialize(doc).map_err(|e| ManifestError::Yaml {
            path: path.into(),
            // Only the location: the same files hold Secrets, whose values must not be echoed.
            message: e.location().map_or_else(
                || "malformed document".to_string(),
                |l| format!("malformed at line {}, column {}", l.line(), l.column()),
            ),
        })?;
        objects.extend(list_items(value));
    }
    let mut out = Vec::new();
    for value in objects {
        let Some(map) = value.as_mapping() else {
            continue;
        };
        if map.get("kind").and_then(|k| k.as_str()) != Some(KIND) {
            continue;
        }
        let api_version = map
            .get("apiVersion")
            .and_then(|v| v.as_str())
            .unwrap_or_default()
            .to_string();
        let name = map
            .get("metadata")
            .and_then(|m| m.get("name"))
            .and_then(|n| n.as_str())
            .unwrap_or_default()
            .to_string();
        let field_err = |source| ManifestError::Field {
            path: path.into(),
            name: name.clone(),
            source,
        };
        if !api_version.starts_with("longhorn.io/") {
            return Err(field_err(FieldError::new(
                "apiVersion",
                format!("{api_version:?}: expected {API_VERSION}"),
            )));
        }
        let metadata: ObjectMeta = map
            .get("metadata")
            .map(|m| serde_norway::from_value(m.clone()))
            .transpose()
            .map_err(|e| field_err(FieldError::new("metadata", e.to_string())))?
            .unwrap_or_default();
        let spec_value = map
            .get("spec")
            .cloned()
            .unwrap_or(serde_norway::Value::Null);
        let mut spec = BackingImageSpec::default();
        if let Some(spec_map) = spec_value.as_mapping() {
            for (k, v) in spec_map {
                let Some(key) = k.as_str() else { continue };
                let text_field = |what: &str| {
                    scalar(v).ok_or_else(|| {
                        field_err(FieldError::new(format!("spec.{what}"), "must be a string"))
                    })
                };
                match key {
                    "sourceType" => spec.source_type = text_field("sourceType")?,
                    "checksum" => spec.checksum = text_field("checksum")?,
                    "secret" => spec.secret = text_field("secret")?,
                    "secretNamespace" => spec.secret_namespace = text_field("secretNamespace")?,
                    "sourceParameters" => {
                        let Some(params) = v.as_mapping() else {
                            if v.is_null() {
                                continue;
                            }
                            return Err(field_err(FieldError::new(
                                "spec.sourceParameters",
                                "must be a map of strings",
                            )));
                        };
                        for (pk, pv) in params {
                            let pk = pk
                                .as_str()
                                .map(str::to_string)
                                .unwrap_or_else(|| format!("{pk:?}"));
                            let pv = scalar(pv).ok_or_else(|| {
                                field_err(FieldError::param(&pk, "must be a string"))
                            })?;
                            spec.source_parameters.insert(pk, pv);
                        }
                    }
                    "disks" | "diskFileSpecMap" | "minNumberOfCopies" | "diskSelector"
                    | "nodeSelector" | "dataEngine" => {
                        let bad = |e: String| field_err(FieldError::new(format!("spec.{key}"), e));
                        let json: serde_json::Value =
                            serde_norway::from_value(v.clone()).map_err(|e| bad(e.to_string()))?;
                        let typed = |e: serde_json::Error| bad(e.to_string());
                        match key {
                            "disks" => spec.disks = serde_json::from_value(json).map_err(typed)?,
                            "diskFileSpecMap" => {
                                spec.disk_file_spec_map =
                                    serde_json::from_value(json).map_err(typed)?
                            }
                            "minNumberOfCopies" => {
                                spec.min_number_of_copies =
                                    serde_json::from_value(json).map_err(typed)?
                            }
                            "diskSelector" => {
                                spec.disk_selector = serde_json::from_value(json).map_err(typed)?
                            }
                            "nodeSelector" => {
                                spec.node_selector = serde_json::from_value(json).map_err(typed)?
                            }
                            _ => spec.data_engine = serde_json::from_value(json).map_err(typed)?,
                        }
                    }
                    other => {
                        let json: serde_json::Value =
                            serde_norway::from_value(v.clone()).map_err(|e| {
                                field_err(FieldError::new(format!("spec.{other}"), e.to_string()))
                            })?;
                        spec.other.insert(other.to_string(), json);
                    }
                }
            }
        } else if !spec_value.is_null() {
            return Err(field_err(FieldError::new("spec", "must be a map")));
        }
        out.push(BackingImage {
            api_version,
            kind: KIND.into(),
            metadata,
            spec,
            status: None,
        });
    }
    Ok(out)
}

/// The files that `-f PATH` names: the file itself, or a directory's `.yaml`/`.yml`/`.json`
/// files in name order (as `kubectl apply -f DIR`).
pub fn manifest_files(path: &Path) -> Result<Vec<PathBuf>, ManifestError> {
    let read_err = |source| ManifestError::Read {
        path: path.into(),
        source,
    };
    if !std::fs::metadata(path).map_err(read_err)?.is_dir() {
        return Ok(vec![path.to_path_buf()]);
    }
    let mut v: Vec<PathBuf> = std::fs::read_dir(path)
        .map_err(read_err)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            matches!(
                p.extension().and_then(|e| e.to_str()),
                Some("yaml" | "yml" | "json")
            )
        })
        .collect();
    v.sort();
    Ok(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    const DOCS: &str = r#"
apiVersion: longhorn.io/v1beta2
kind: BackingImage
metadata:
  name: parrot-cloned-encrypted
  namespace: longhorn-system
spec:
  sourceType: clone
  sourceParameters:
    backing-image: parrot
    encryption: encrypt
    secret: longhorn-crypto
    secret-namespace: longhorn-system
---
apiVersion: v1
kind: Secret
metadata: {name: longhorn-crypto}
stringData: {CRYPTO_KEY_VALUE: hunter2}
"#;

    fn parse(text: &str) -> Vec<BackingImage> {
        parse_backing_images(text, Path::new("t.yaml")).unwrap()
    }

    #[test]
    fn parses_the_docs_clone() {
        let bi = parse(DOCS);
        assert_eq!(bi.len(), 1);
        match bi[0].validate().unwrap() {
            Source::Clone {
                backing_image,
                encryption,
                secret,
            } => {
                assert_eq!(backing_image, "parrot");
                assert_eq!(encryption, Encryption::Encrypt);
                assert_eq!(
                    secret.unwrap().to_string(),
                    "longhorn-system/longhorn-crypto"
                );
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn the_items_of_a_list_are_read() {
        // As `bifs get -o json` prints several (JSON is YAML), with a status to ignore.
        let json = r#"{"apiVersion": "v1", "kind": "List", "items": [
            {"apiVersion": "longhorn.io/v1beta2", "kind": "BackingImage", "metadata": {"name": "p1"},
             "spec": {"sourceType": "download", "sourceParameters": {"url": "http://x/y"}},
             "status": {"uuid": "1a2b3c4d"}},
            {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "s"}}]}"#;
        let bi = parse(json);
        assert_eq!(bi.len(), 1);
        assert_eq!((bi[0].name(), bi[0].status.is_none()), ("p1", true));
        let both = parse(&format!("{DOCS}---\napiVersion: v1\nkind: BackingImageList\nitems:\n- {{apiVersion: longhorn.io/v1beta2, kind: BackingImage, metadata: {{name: p2}}, spec: {{sourceType: upload}}}}\n"));
        let names: Vec<&str> = both.iter().map(|b| b.name()).collect();
        assert_eq!(names, ["parrot-cloned-encrypted", "p2"]);
    }

    fn refusal(spec: &str) -> FieldError {
        let y = format!("apiVersion: longhorn.io/v1beta2\nkind: BackingImage\nmetadata: {{name: x1}}\nspec:\n{spec}");
        parse(&y)[0].validate().unwrap_err()
    }

    #[test]
    fn refusals_name_the_field() {
        let cases = [
            ("  sourceType: clone\n  sourceParameters: {encryption: ignore}\n", "spec.sourceParameters.backing-image"),
            ("  sourceType: clone\n  sourceParameters: {backing-image: a, encryption: scramble}\n", "spec.sourceParameters.encryption"),
            ("  sourceType: clone\n  sourceParameters: {backing-image: a, encryption: encrypt}\n", "spec.sourceParameters.secret"),
            (
                "  sourceType: clone\n  sourceParameters: {backing-image: a, encryption: decrypt, secret: s}\n",
                "spec.sourceParameters.secret-namespace",
            ),
            ("  sourceType: download\n  sourceParameters: {}\n", "spec.sourceParameters.url"),
            ("  sourceType: download\n  sourceParameters: {url: ftp://x/y}\n", "spec.sourceParameters.url"),
            ("  sourceType: upload\n", "spec.sourceParameters.path"),
            ("  sourceType: restore\n", "spec.sourceType"),
            ("  sourceType: download\n  sourceParameters: {url: http://x/y}\n  checksum: abc\n", "spec.checksum"),
        ];
        for (spec, field) in cases {
            let e = refusal(spec);
            assert_eq!(e.field, field, "{e}");
            assert!(e.to_string().starts_with(field), "{e}");
        }
    }

    #[test]
    fn mutated_specs_compare_as_longhorn_would() {
        let a = parse("kind: BackingImage\napiVersion: longhorn.io/v1beta2\nmetadata: {name: ab}\nspec: {sourceType: clone, sourceParameters: {backing-image: ' p '}}\n");
        let b = parse("kind: BackingImage\napiVersion: longhorn.io/v1beta2\nmetadata: {name: ab}\nspec: {sourceType: clone, sourceParameters: {backing-image: p, encryption: ignore}}\n");
        let src = SourceFacts {
            secret: "s".into(),
            secret_namespace: "ns".into(),
            checksum: "c".into(),
        };
        let ma = a[0].mutated_spec(Some(&src), "disk-1");
        assert_eq!(ma, b[0].mutated_spec(Some(&src), "disk-1"));
        // An ignore clone takes its source's Secret and checksum; defaults as the mutator.
        assert_eq!(
            (
                ma.secret.as_str(),
                ma.secret_namespace.as_str(),
                ma.checksum.as_str()
            ),
            ("s", "ns", "c")
        );
        assert_eq!(
            (ma.min_number_of_copies, ma.data_engine.as_str()),
            (1, "v1")
        );
        assert_eq!(ma.disk_file_spec_map["disk-1"].data_engine, "v1");
        let c = parse("kind: BackingImage\napiVersion: longhorn.io/v1beta2\nmetadata: {name: ab}\nspec: {sourceType: clone, sourceParameters: {backing-image: q}}\n");
        assert_eq!(
            first_difference(&ma, &c[0].mutated_spec(Some(&src), "disk-1")).as_deref(),
            Some("spec.sourceParameters.backing-image")
        );
        // encrypt: the parameters' Secret, no checksum; decrypt: neither.
        let e = &parse(DOCS)[0];
        let me = e.mutated_spec(Some(&src), "d");
        assert_eq!(
            (
                me.secret.as_str(),
                me.secret_namespace.as_str(),
                me.checksum.as_str()
            ),
            ("longhorn-crypto", "longhorn-system", "")
        );
        let d = parse(&DOCS.replace("encryption: encrypt", "encryption: decrypt"));
        let md = d[0].mutated_spec(Some(&src), "d");
        assert_eq!((md.secret.as_str(), md.checksum.as_str()), ("", ""));
    }

    #[test]
    fn names() {
        assert!(valid_name("parrot-cloned-encrypted"));
        for bad in ["", "a", "-a", "a/b", "../x", "a b", "Parrot"] {
            assert!(!valid_name(bad), "{bad}");
        }
        assert_eq!(auto_correct_name("Parrot"), "parrot");
        let long = "a-very-long-backing-image-name-that-is-over-forty";
        let fixed = auto_correct_name(long);
        use sha2::Digest;
        let sum = hex::encode(sha2::Sha512::digest(long.as_bytes()));
        assert_eq!(
            fixed,
            format!("a-very-long-backing-image-name-{}", &sum[..8])
        );
        assert_eq!(fixed.len(), 39);
        // A cut that ends in '-' loses it, as Go's TrimRight.
        let dash = "abcdefghijklmnopqrstuvwxyzabcd-efghijklmnop";
        let sum = hex::encode(sha2::Sha512::digest(dash.as_bytes()));
        assert_eq!(
            auto_correct_name(dash),
            format!("abcdefghijklmnopqrstuvwxyzabcd-{}", &sum[..8])
        );
    }
}
