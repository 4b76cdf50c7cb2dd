//! Secret manifests as Longhorn reads them for backing-image encryption.
//!
//! Longhorn's keys: `CRYPTO_KEY_VALUE` (the passphrase), `CRYPTO_KEY_PROVIDER` (empty or
//! `secret`), `CRYPTO_KEY_CIPHER`, `CRYPTO_KEY_HASH`, `CRYPTO_KEY_SIZE`, `CRYPTO_PBKDF`,
//! `CRYPTO_PBKDF_MEMORY`, `CRYPTO_PBKDF_FORCE_ITERATIONS`; defaults aes-xts-plain64, sha256,
//! 256, argon2i. Values come from `stringData` or base64 `data` (`stringData` wins, as the API
//! server merges them).

use std::collections::{BTreeMap, HashSet};
use std::fmt;
use std::path::{Path, PathBuf};

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use serde::Deserialize;
use zeroize::Zeroizing;

use bifs_core::kdf::{Hash, KdfKind, KdfRequest};
use bifs_core::keys::Passphrase;
use bifs_core::view::LuksParams;

const KEY_VALUE: &str = "CRYPTO_KEY_VALUE";
const KEY_PROVIDER: &str = "CRYPTO_KEY_PROVIDER";
const KEY_CIPHER: &str = "CRYPTO_KEY_CIPHER";
const KEY_HASH: &str = "CRYPTO_KEY_HASH";
const KEY_SIZE: &str = "CRYPTO_KEY_SIZE";
const KEY_PBKDF: &str = "CRYPTO_PBKDF";
const KEY_PBKDF_MEMORY: &str = "CRYPTO_PBKDF_MEMORY";
const KEY_PBKDF_FORCE_ITERATIONS: &str = "CRYPTO_PBKDF_FORCE_ITERATIONS";

/// Every `CRYPTO_*` key Longhorn reads (and so bifs).
pub const CRYPTO_KEYS: [&str; 8] = [
    KEY_VALUE,
    KEY_PROVIDER,
    KEY_CIPHER,
    KEY_HASH,
    KEY_SIZE,
    KEY_PBKDF,
    KEY_PBKDF_MEMORY,
    KEY_PBKDF_FORCE_ITERATIONS,
];

/// A `CRYPTO_*` key of a Secret that Longhorn does not read: a misspelling would otherwise
/// leave a default in force without a word (`CRYPTO_CIPHER`, `CRYPTO_PBKDF_MEMORY_KIB`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnknownKey {
    pub key: String,
    /// The valid key nearest to it (edit distance), when one is near enough to be meant.
    pub suggestion: Option<&'static str>,
}

impl fmt::Display for UnknownKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.suggestion {
            Some(s) => write!(f, "unknown key {} is ignored; did you mean {s}?", self.key),
            None => write!(
                f,
                "unknown key {} is ignored (the keys are {})",
                self.key,
                CRYPTO_KEYS.join(", ")
            ),
        }
    }
}

/// The valid key nearest to `key`: compared in upper case (keys are case-sensitive, so a
/// lower-case spelling of a valid key is unknown too), near enough when at most a third of
/// it (at least 3 characters) differs.
fn nearest_key(key: &str) -> Option<&'static str> {
    let upper = key.to_ascii_uppercase();
    let (best, distance) = CRYPTO_KEYS
        .iter()
        .map(|k| (*k, strsim::levenshtein(&upper, k)))
        .min_by_key(|(_, d)| *d)?;
    (distance <= (key.len() / 3).max(3)).then_some(best)
}

/// `namespace/name` of a Secret.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SecretRef {
    pub namespace: String,
    pub name: String,
}

impl fmt::Display for SecretRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

impl SecretRef {
    /// Parses `namespace/name`, or a bare `name` in `default_namespace`.
    pub fn parse(s: &str, default_namespace: &str) -> Self {
        match s.split_once('/') {
            Some((ns, name)) => Self {
                namespace: ns.into(),
                name: name.into(),
            },
            None => Self {
                namespace: default_namespace.into(),
                name: s.into(),
            },
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    #[error("reading {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: not valid YAML: {message}")]
    Yaml { path: PathBuf, message: String },
    #[error("{path}: a Secret has no metadata.name")]
    NoName { path: PathBuf },
    #[error("{path}: Secret {secret}: data.{key} is not valid base64")]
    Base64 {
        path: PathBuf,
        secret: SecretRef,
        key: String,
    },
    #[error("{path}: no Secret manifest found")]
    NoSecrets { path: PathBuf },
    #[error("Secret {0} not found")]
    NotFound(SecretRef),
    #[error("{count} Secrets found ({names}); choose one with --secret-name NAMESPACE/NAME")]
    Ambiguous { count: usize, names: String },
    #[error("Secret {secret}: {key} is missing or empty")]
    Missing {
        secret: SecretRef,
        key: &'static str,
    },
    #[error("Secret {secret}: {key}={value:?} is not supported (expected {expected})")]
    Invalid {
        secret: SecretRef,
        key: &'static str,
        value: String,
        expected: &'static str,
    },
    #[error("Secret {secret}: unsupported cipher {value:?} in CRYPTO_KEY_CIPHER (bifs supports aes-xts-plain64)")]
    UnsupportedCipher { secret: SecretRef, value: String },
    #[error("Secret {secret}: key {key} is not UTF-8 text")]
    NotText { secret: SecretRef, key: String },
    #[error("{path} is one Secret volume (it has ..data); point --secrets at the directory that holds NAMESPACE/NAME/ volumes")]
    SingleVolume { path: PathBuf },
    #[error("{path} is a Secret volume beside the NAMESPACE/ directories, so its keys must be Secret manifests (*.yaml, *.yml, *.json), but it has the key {key}; mount one Secret's volume at NAMESPACE/NAME instead")]
    NotManifests { path: PathBuf, key: String },
}

/// A Secret's identity and string data. Values are zeroized on drop and never printed.
pub struct Secret {
    pub id: SecretRef,
    pub source: PathBuf,
    data: BTreeMap<String, Zeroizing<String>>,
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Secret")
            .field("id", &self.id)
            .field("keys", &self.data.keys().collect::<Vec<_>>())
            .finish()
    }
}

/// What a Secret asks of LUKS: plain LUKS parameters (what the views take), and the Secret
/// they came from (for messages).
#[derive(Debug, Clone)]
pub struct CryptoParams {
    pub secret: SecretRef,
    pub luks: LuksParams,
}

#[derive(Deserialize)]
struct Manifest {
    #[serde(default)]
    kind: String,
    #[serde(default)]
    metadata: Metadata,
    #[serde(default, rename = "stringData")]
    string_data: BTreeMap<String, serde_norway::Value>,
    #[serde(default)]
    data: BTreeMap<String, serde_norway::Value>,
}

#[derive(Deserialize, Default)]
struct Metadata {
    #[serde(default)]
    name: String,
    #[serde(default)]
    namespace: String,
}

/// YAML scalars as Kubernetes would have them: strings, with numbers written as numbers.
fn scalar(v: &serde_norway::Value) -> Zeroizing<String> {
    Zeroizing::new(match v {
        serde_norway::Value::String(s) => s.clone(),
        serde_norway::Value::Number(n) => n.to_string(),
        serde_norway::Value::Bool(b) => b.to_string(),
        _ => String::new(),
    })
}

/// Parses every `kind: Secret` document in `text`; other kinds are skipped.
pub fn parse_secrets(text: &str, path: &Path) -> Result<Vec<Secret>, SecretError> {
    let mut out = Vec::new();
    for doc in serde_norway::Deserializer::from_str(text) {
        let value = serde_norway::Value::deserialize(doc).map_err(|e| SecretError::Yaml {
            path: path.into(),
            // Only the location: a message could quote a value, and values are secrets.
            message: e.location().map_or_else(
                || "malformed document".to_string(),
                |l| format!("malformed at line {}, column {}", l.line(), l.column()),
            ),
        })?;
        for object in crate::manifest::list_items(value) {
            if let Some(secret) = parse_secret(object, path)? {
                out.push(secret);
            }
        }
    }
    Ok(out)
}

/// One object, if it is a Secret.
fn parse_secret(value: serde_norway::Value, path: &Path) -> Result<Option<Secret>, SecretError> {
    if value.is_null() {
        return Ok(None);
    }
    let Ok(m) = serde_norway::from_value::<Manifest>(value) else {
        return Ok(None);
    };
    if m.kind != "Secret" {
        return Ok(None);
    }
    if m.metadata.name.is_empty() {
        return Err(SecretError::NoName { path: path.into() });
    }
    let namespace = if m.metadata.namespace.is_empty() {
        "default".into()
    } else {
        m.metadata.namespace
    };
    let id = SecretRef {
        namespace,
        name: m.metadata.name,
    };
    let mut data = BTreeMap::new();
    for (k, v) in &m.data {
        let encoded = scalar(v);
        let decoded =
            Zeroizing::new(
                B64.decode(encoded.trim())
                    .map_err(|_| SecretError::Base64 {
                        path: path.into(),
                        secret: id.clone(),
                        key: k.clone(),
                    })?,
            );
        let mut decoded = decoded;
        // Moves the bytes (no copy); on invalid UTF-8 the rejected bytes are wiped too.
        let text = String::from_utf8(std::mem::take(&mut *decoded)).map_err(|e| {
            Zeroizing::new(e.into_bytes());
            SecretError::Base64 {
                path: path.into(),
                secret: id.clone(),
                key: k.clone(),
            }
        })?;
        data.insert(k.clone(), Zeroizing::new(text));
    }
    for (k, v) in &m.string_data {
        data.insert(k.clone(), scalar(v));
    }
    Ok(Some(Secret {
        id,
        source: path.into(),
        data,
    }))
}

/// Picks the Secret named `wanted`, or the only one when none is named.
pub fn select(secrets: Vec<Secret>, wanted: Option<&SecretRef>) -> Result<Secret, SecretError> {
    match wanted {
        Some(w) => secrets
            .into_iter()
            .find(|s| &s.id == w)
            .ok_or_else(|| SecretError::NotFound(w.clone())),
        None if secrets.len() == 1 => {
            Ok(secrets.into_iter().next().ok_or(SecretError::Ambiguous {
                count: 0,
                names: String::new(),
            })?)
        }
        None => Err(SecretError::Ambiguous {
            count: secrets.len(),
            names: secrets
                .iter()
                .map(|s| s.id.to_string())
                .collect::<Vec<_>>()
                .join(", "),
        }),
    }
}

impl Secret {
    /// A Secret read from somewhere else than a manifest (a Secret volume).
    pub(crate) fn from_data(
        id: SecretRef,
        source: PathBuf,
        data: BTreeMap<String, Zeroizing<String>>,
    ) -> Self {
        Self { id, source, data }
    }

    /// Whether both Secrets hold the same keys and values.
    pub fn same_data(&self, other: &Secret) -> bool {
        self.data.len() == other.data.len()
            && self
                .data
                .iter()
                .zip(&other.data)
                .all(|((k1, v1), (k2, v2))| k1 == k2 && v1.as_bytes() == v2.as_bytes())
    }

    /// Its `CRYPTO_*` keys (any case) that Longhorn does not read, with the nearest valid name.
    /// Other keys are the Secret owner's business and are not reported.
    pub fn unknown_keys(&self) -> Vec<UnknownKey> {
        self.data
            .keys()
            .filter(|k| k.to_ascii_uppercase().starts_with("CRYPTO_"))
            .filter(|k| !CRYPTO_KEYS.contains(&k.as_str()))
            .map(|k| UnknownKey {
                key: k.clone(),
                suggestion: nearest_key(k),
            })
            .collect()
    }

    /// Warns about each unknown `CRYPTO_*` key, once per version of the Secret in this
    /// process: the Secret files are read again on every change (a mount) or every request
    /// (the HTTP API), and the same mistake must not fill the log.
    pub fn warn_unknown_keys(&self) {
        use std::hash::BuildHasher;
        use std::sync::{Mutex, OnceLock};
        let unknown = self.unknown_keys();
        if unknown.is_empty() {
            return;
        }
        // A version is its data: fingerprinted with the process's random SipHash key, so
        // nothing about the values can be learnt from what is kept.
        type Versions = Mutex<HashSet<(SecretRef, u64)>>;
        static WARNED: OnceLock<(std::hash::RandomState, Versions)> = OnceLock::new();
        let (hasher, warned) = WARNED.get_or_init(Default::default);
        let version = hasher.hash_one(
            self.data
                .iter()
                .map(|(k, v)| (k.as_str(), v.as_str()))
                .collect::<Vec<_>>(),
        );
        let first = warned
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert((self.id.clone(), version));
        if !first {
            return;
        }
        for u in unknown {
            tracing::warn!(secret = %self.id, source = %self.source.display(), key = %u.key, suggestion = u.suggestion, "Secret {}: {u}", self.id);
        }
    }

    fn get(&self, key: &str) -> Option<&str> {
        self.data
            .get(key)
            .map(|v| v.trim())
            .filter(|v| !v.is_empty())
    }

    fn number(&self, key: &'static str) -> Result<Option<u32>, SecretError> {
        self.get(key)
            .map(|v| {
                v.parse::<u32>().map_err(|_| SecretError::Invalid {
                    secret: self.id.clone(),
                    key,
                    value: v.to_string(),
                    expected: "a whole number",
                })
            })
            .transpose()
    }

    /// Validates the Secret and returns its LUKS parameters, with Longhorn's defaults.
    pub fn crypto_params(&self) -> Result<CryptoParams, SecretError> {
        let id = &self.id;
        // The passphrase is used as-is: only the other values are trimmed.
        let passphrase = match self.data.get(KEY_VALUE) {
            Some(v) if !v.is_empty() => Passphrase::new(v.as_bytes()),
            _ => {
                return Err(SecretError::Missing {
                    secret: id.clone(),
                    key: KEY_VALUE,
                })
            }
        };
        let invalid = |key, value: &str, expected| SecretError::Invalid {
            secret: id.clone(),
            key,
            value: value.to_string(),
            expected,
        };
        match self.get(KEY_PROVIDER) {
            None | Some("secret") => {}
            Some(other) => return Err(invalid(KEY_PROVIDER, other, "\"secret\" or empty")),
        }
        match self.get(KEY_CIPHER) {
            None | Some("aes-xts-plain64") => {}
            Some(other) => {
                return Err(SecretError::UnsupportedCipher {
                    secret: id.clone(),
                    value: other.into(),
                })
            }
        }
        let hash = match self.get(KEY_HASH) {
            None => Hash::Sha256,
            Some(h) => {
                Hash::from_name(h).ok_or_else(|| invalid(KEY_HASH, h, "sha1, sha256 or sha512"))?
            }
        };
        let key_bits = match self.get(KEY_SIZE) {
            None | Some("256") => 256,
            Some("512") => 512,
            Some(other) => {
                return Err(invalid(
                    KEY_SIZE,
                    other,
                    "256 (AES-128-XTS) or 512 (AES-256-XTS)",
                ))
            }
        };
        let kind = match self.get(KEY_PBKDF) {
            None => KdfKind::Argon2i,
            Some(k) => KdfKind::from_name(k)
                .ok_or_else(|| invalid(KEY_PBKDF, k, "argon2i, argon2id or pbkdf2"))?,
        };
        let memory_kib = self.number(KEY_PBKDF_MEMORY)?;
        let force_iterations = self.number(KEY_PBKDF_FORCE_ITERATIONS)?;
        Ok(CryptoParams {
            secret: id.clone(),
            luks: LuksParams {
                passphrase,
                hash,
                key_bits,
                kdf: KdfRequest {
                    kind,
                    hash,
                    force_iterations,
                    memory_kib,
                },
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TWO: &str = r#"
apiVersion: v1
kind: Secret
metadata:
  name: longhorn-crypto
  namespace: longhorn-system
stringData:
  CRYPTO_KEY_VALUE: "Simple passphrase"
  CRYPTO_KEY_PROVIDER: "secret"
  CRYPTO_KEY_CIPHER: "aes-xts-plain64"
  CRYPTO_KEY_HASH: "sha512"
  CRYPTO_KEY_SIZE: 512
  CRYPTO_PBKDF: "pbkdf2"
  CRYPTO_PBKDF_FORCE_ITERATIONS: "1000"
---
apiVersion: v1
kind: ConfigMap
metadata: {name: other}
---
apiVersion: v1
kind: Secret
metadata:
  name: b64
data:
  CRYPTO_KEY_VALUE: cGFzcw==
  CRYPTO_KEY_CIPHER: YWVzLWNiYy1lc3NpdjpzaGEyNTY=
"#;

    #[test]
    fn string_data_and_base64_data() {
        let s = parse_secrets(TWO, Path::new("t.yaml")).unwrap();
        assert_eq!(s.len(), 2);
        let CryptoParams { secret, luks: p } = s[0].crypto_params().unwrap();
        assert_eq!(secret.to_string(), "longhorn-system/longhorn-crypto");
        assert_eq!(p.passphrase.as_bytes(), b"Simple passphrase");
        assert_eq!(
            (p.hash, p.key_bits, p.kdf.kind),
            (Hash::Sha512, 512, KdfKind::Pbkdf2)
        );
        assert_eq!(p.kdf.force_iterations, Some(1000));
        assert_eq!(s[1].id.namespace, "default");
        let err = s[1].crypto_params().unwrap_err().to_string();
        assert!(
            err.contains("unsupported cipher") && err.contains("aes-cbc-essiv"),
            "{err}"
        );
        assert!(!err.contains("pass\""));
    }

    #[test]
    fn misspelled_keys_are_found_with_the_nearest_valid_name() {
        let y = "kind: Secret\nmetadata: {name: x}\nstringData:\n  CRYPTO_KEY_VALUE: pw\n  CRYPTO_CIPHER: aes-xts-plain64\n  CRYPTO_PBKDF_MEMORY_KIB: '65536'\n  crypto_key_hash: sha512\n  CRYPTO_WHATEVER_THIS_IS: x\n  username: not-ours\n";
        let s = parse_secrets(y, Path::new("x")).unwrap();
        let found: Vec<(String, Option<&str>)> = s[0]
            .unknown_keys()
            .into_iter()
            .map(|u| (u.key, u.suggestion))
            .collect();
        assert_eq!(
            found,
            [
                ("CRYPTO_CIPHER".to_string(), Some("CRYPTO_KEY_CIPHER")),
                (
                    "CRYPTO_PBKDF_MEMORY_KIB".to_string(),
                    Some("CRYPTO_PBKDF_MEMORY")
                ),
                ("CRYPTO_WHATEVER_THIS_IS".to_string(), None),
                ("crypto_key_hash".to_string(), Some("CRYPTO_KEY_HASH")),
            ]
        );
        let text = UnknownKey {
            key: "CRYPTO_CIPHER".into(),
            suggestion: Some("CRYPTO_KEY_CIPHER"),
        }
        .to_string();
        assert_eq!(
            text,
            "unknown key CRYPTO_CIPHER is ignored; did you mean CRYPTO_KEY_CIPHER?"
        );
    }

    #[test]
    fn a_list_of_secrets_as_kubectl_prints_it() {
        let y = "apiVersion: v1\nkind: List\nitems:\n- apiVersion: v1\n  kind: Secret\n  metadata: {name: a, namespace: ns}\n  data: {CRYPTO_KEY_VALUE: cGFzcw==}\n- apiVersion: v1\n  kind: ConfigMap\n  metadata: {name: c}\n- apiVersion: v1\n  kind: Secret\n  metadata: {name: b}\n  stringData: {CRYPTO_KEY_VALUE: pw}\nmetadata: {resourceVersion: ''}\n";
        let s = parse_secrets(y, Path::new("x")).unwrap();
        let ids: Vec<String> = s.iter().map(|s| s.id.to_string()).collect();
        assert_eq!(ids, ["ns/a", "default/b"]);
        assert_eq!(
            s[0].crypto_params().unwrap().luks.passphrase.as_bytes(),
            b"pass"
        );
    }

    #[test]
    fn defaults_are_longhorns() {
        let s = parse_secrets(
            "kind: Secret\nmetadata: {name: x}\nstringData: {CRYPTO_KEY_VALUE: pw}\n",
            Path::new("x"),
        )
        .unwrap();
        let p = s[0].crypto_params().unwrap().luks;
        assert_eq!(
            (p.hash, p.key_bits, p.kdf.kind),
            (Hash::Sha256, 256, KdfKind::Argon2i)
        );
    }

    #[test]
    fn bad_values_name_the_key_not_the_passphrase() {
        for (extra, key) in [
            ("CRYPTO_KEY_PROVIDER: vault", "CRYPTO_KEY_PROVIDER"),
            ("CRYPTO_KEY_SIZE: '384'", "CRYPTO_KEY_SIZE"),
            ("CRYPTO_PBKDF: scrypt", "CRYPTO_PBKDF"),
            ("CRYPTO_KEY_HASH: md5", "CRYPTO_KEY_HASH"),
            ("CRYPTO_PBKDF_MEMORY: lots", "CRYPTO_PBKDF_MEMORY"),
        ] {
            let y = format!("kind: Secret\nmetadata: {{name: x}}\nstringData:\n  CRYPTO_KEY_VALUE: hunter2\n  {extra}\n");
            let err = parse_secrets(&y, Path::new("x")).unwrap()[0]
                .crypto_params()
                .unwrap_err()
                .to_string();
            assert!(err.contains(key), "{err}");
            assert!(!err.contains("hunter2"), "{err}");
        }
        let y = "kind: Secret\nmetadata: {name: x}\nstringData: {CRYPTO_KEY_HASH: sha1}\n";
        let err = parse_secrets(y, Path::new("x")).unwrap()[0]
            .crypto_params()
            .unwrap_err();
        assert!(err.to_string().contains("CRYPTO_KEY_VALUE is missing"));
    }
}
