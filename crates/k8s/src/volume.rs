//! Secrets as the kubelet mounts them, and a Secret set that follows them while bifs runs.
//!
//! `--secrets DIR` may hold, side by side, manifest files (`*.yaml`, `*.yml`, `*.json`) and
//! Secret volumes named `NAMESPACE/NAME/`: one file per key, as a Secret volume shows them.
//! The kubelet writes a volume as `..<timestamp>/KEY` files, a `..data -> ..<timestamp>`
//! symlink and `KEY -> ..data/KEY` links, and updates it by writing a new timestamped
//! directory and renaming a new `..data` over the old one. Reading every key through the
//! target of `..data` therefore sees one version of the Secret, never a mix of two.
//!
//! An empty volume directory is a Secret that does not exist yet (an `optional: true` Secret
//! volume): it is skipped, and picked up once the kubelet fills it.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::io::{self, Read};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use zeroize::Zeroizing;

use super::secret::{parse_secrets, Secret, SecretError, SecretRef};

/// The kubelet's symlink to the current version of a Secret volume.
const DATA_LINK: &str = "..data";

/// One place Secrets come from.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Unit {
    Manifest(PathBuf),
    Volume { dir: PathBuf, id: SecretRef },
}

/// What a unit looked like when it was read: a change means it must be read again.
type Stamp = Vec<(PathBuf, String)>;

fn read_err(path: &Path) -> impl FnOnce(io::Error) -> SecretError + '_ {
    move |source| SecretError::Read {
        path: path.into(),
        source,
    }
}

fn hidden(name: &std::ffi::OsStr) -> bool {
    name.as_encoded_bytes().starts_with(b".")
}

fn file_stamp(meta: &fs::Metadata) -> String {
    format!(
        "{}:{}:{}.{}",
        meta.ino(),
        meta.len(),
        meta.mtime(),
        meta.mtime_nsec()
    )
}

/// Sorted entries of `dir` (names that start with a dot left out).
fn entries(dir: &Path) -> Result<Vec<(PathBuf, fs::Metadata)>, SecretError> {
    let mut out = Vec::new();
    for entry in fs::read_dir(dir).map_err(read_err(dir))? {
        let entry = entry.map_err(read_err(dir))?;
        if hidden(&entry.file_name()) {
            continue;
        }
        let path = entry.path();
        // Follows symlinks: the kubelet's keys are links into `..data`.
        match fs::metadata(&path) {
            Ok(meta) => out.push((path, meta)),
            // A link whose target went away in a concurrent update: seen on the next scan.
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(read_err(&path)(e)),
        }
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(out)
}

fn is_manifest(path: &Path) -> bool {
    matches!(
        path.extension().and_then(|e| e.to_str()),
        Some("yaml" | "yml" | "json")
    )
}

/// The units under `path` and their stamps.
fn scan(path: &Path) -> Result<Vec<(Unit, String)>, SecretError> {
    let meta = fs::metadata(path).map_err(read_err(path))?;
    if !meta.is_dir() {
        return Ok(vec![(Unit::Manifest(path.into()), file_stamp(&meta))]);
    }
    if fs::symlink_metadata(path.join(DATA_LINK)).is_ok() {
        return Err(SecretError::SingleVolume { path: path.into() });
    }
    let mut units = Vec::new();
    for (entry, meta) in entries(path)? {
        if meta.is_file() && is_manifest(&entry) {
            units.push((Unit::Manifest(entry), file_stamp(&meta)));
        } else if meta.is_dir() {
            let namespace = entry.file_name().unwrap_or_default().to_string_lossy();
            for (dir, meta) in entries(&entry)? {
                if !meta.is_dir() {
                    continue;
                }
                let id = SecretRef {
                    namespace: namespace.to_string(),
                    name: dir.file_name().unwrap_or_default().to_string_lossy().into(),
                };
                let stamp = volume_stamp(&dir)?;
                units.push((Unit::Volume { dir, id }, stamp));
            }
        }
    }
    Ok(units)
}

/// Where the current keys of a Secret volume are: the target of `..data` when the kubelet
/// wrote it, else the directory itself (a volume laid out by hand).
fn volume_data(dir: &Path) -> Result<(PathBuf, Option<PathBuf>), SecretError> {
    let link = dir.join(DATA_LINK);
    match fs::read_link(&link) {
        Ok(target) => Ok((dir.join(&target), Some(target))),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok((dir.to_path_buf(), None)),
        // `..data` is a plain directory.
        Err(e) if e.kind() == io::ErrorKind::InvalidInput => Ok((link, None)),
        Err(e) => Err(read_err(&link)(e)),
    }
}

fn volume_stamp(dir: &Path) -> Result<String, SecretError> {
    let (data, target) = volume_data(dir)?;
    if let Some(target) = target {
        // The kubelet never changes a timestamped directory in place.
        return Ok(format!("-> {}", target.display()));
    }
    Ok(entries(&data)?
        .iter()
        .map(|(p, m)| format!("{}={}", p.display(), file_stamp(m)))
        .collect::<Vec<_>>()
        .join(" "))
}

/// Reads a Secret volume: one key per regular file. `None` when it holds no key yet.
fn read_volume(dir: &Path, id: &SecretRef) -> Result<Option<Secret>, SecretError> {
    // A rename of `..data` between listing and reading removes the old version under us:
    // start again from the new `..data` (the kubelet updates at most every few seconds).
    let mut attempts = 0;
    loop {
        attempts += 1;
        match read_volume_once(dir, id) {
            Err(SecretError::Read { source, .. })
                if source.kind() == io::ErrorKind::NotFound && attempts < 3 => {}
            other => return other,
        }
    }
}

fn read_volume_once(dir: &Path, id: &SecretRef) -> Result<Option<Secret>, SecretError> {
    let (data, _) = volume_data(dir)?;
    let mut values = BTreeMap::new();
    for (path, meta) in entries(&data)? {
        if !meta.is_file() {
            continue;
        }
        let key = path
            .file_name()
            .unwrap_or_default()
            .to_string_lossy()
            .into_owned();
        let mut bytes = Zeroizing::new(Vec::with_capacity(meta.len() as usize));
        fs::File::open(&path)
            .and_then(|mut f| f.read_to_end(&mut bytes))
            .map_err(read_err(&path))?;
        // Moves the bytes (no copy); on invalid UTF-8 the rejected bytes are wiped too.
        let text = String::from_utf8(std::mem::take(&mut *bytes)).map_err(|e| {
            drop(Zeroizing::new(e.into_bytes()));
            SecretError::NotText {
                secret: id.clone(),
                key: key.clone(),
            }
        })?;
        values.insert(key, Zeroizing::new(text));
    }
    if values.is_empty() {
        return Ok(None);
    }
    Ok(Some(Secret::from_data(
        id.clone(),
        dir.to_path_buf(),
        values,
    )))
}

fn read_unit(unit: &Unit) -> Result<Vec<Secret>, SecretError> {
    match unit {
        Unit::Manifest(file) => {
            let text = Zeroizing::new(fs::read_to_string(file).map_err(read_err(file))?);
            if let Ok(m) = fs::metadata(file) {
                if m.mode() & 0o004 != 0 {
                    tracing::warn!(file = %file.display(), "Secret manifest is readable by all users; chmod 600 it");
                }
            }
            parse_secrets(&text, file)
        }
        Unit::Volume { dir, id } => Ok(read_volume(dir, id)?.into_iter().collect()),
    }
}

/// The Secrets under a `--secrets` path, read again when the files change.
pub struct SecretSource {
    path: PathBuf,
    stamp: Stamp,
    /// The stamp of a change that could not be read: not retried (nor warned about) until
    /// the files change again.
    failed: Option<Stamp>,
    secrets: BTreeMap<SecretRef, Secret>,
}

impl std::fmt::Debug for SecretSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SecretSource")
            .field("path", &self.path)
            .field("secrets", &self.secrets.keys().collect::<Vec<_>>())
            .finish()
    }
}

fn stamp_of(units: &[(Unit, String)]) -> Stamp {
    units
        .iter()
        .map(|(u, s)| {
            let p = match u {
                Unit::Manifest(p) | Unit::Volume { dir: p, .. } => p.clone(),
            };
            (p, s.clone())
        })
        .collect()
}

fn read_all(units: &[(Unit, String)]) -> Result<BTreeMap<SecretRef, Secret>, SecretError> {
    let mut out = BTreeMap::new();
    for (unit, _) in units {
        for s in read_unit(unit)? {
            if let Some(old) = out.insert(s.id.clone(), s) {
                tracing::warn!(secret = %old.id, "Secret defined twice; the last one wins");
            }
        }
    }
    Ok(out)
}

impl SecretSource {
    /// Reads the Secrets under `path` (a manifest file, or a directory of manifests and
    /// `NAMESPACE/NAME/` Secret volumes). Fails when `path` holds neither; a directory whose
    /// Secret volumes are all still empty is allowed (they may be filled later).
    pub fn open(path: &Path) -> Result<Self, SecretError> {
        let units = scan(path)?;
        if units.is_empty() {
            return Err(SecretError::NoSecrets { path: path.into() });
        }
        let secrets = read_all(&units)?;
        if secrets.is_empty() {
            if units.iter().all(|(u, _)| matches!(u, Unit::Volume { .. })) {
                tracing::warn!(path = %path.display(), "no Secret volume holds keys yet; waiting for the kubelet to fill them");
            } else {
                return Err(SecretError::NoSecrets { path: path.into() });
            }
        }
        Ok(Self {
            path: path.into(),
            stamp: stamp_of(&units),
            failed: None,
            secrets,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn secrets(&self) -> impl Iterator<Item = &Secret> {
        self.secrets.values()
    }

    pub fn into_secrets(self) -> Vec<Secret> {
        self.secrets.into_values().collect()
    }

    /// Looks for changes and reads them. Returns the Secrets that were added, removed or
    /// changed (`None` when nothing changed). On error the previous Secrets stay in force.
    pub fn refresh(&mut self) -> Result<Option<BTreeSet<SecretRef>>, SecretError> {
        let units = scan(&self.path)?;
        let stamp = stamp_of(&units);
        if stamp == self.stamp || self.failed.as_ref() == Some(&stamp) {
            return Ok(None);
        }
        let new = match read_all(&units) {
            Ok(new) => new,
            Err(e) => {
                self.failed = Some(stamp);
                return Err(e);
            }
        };
        let ids: BTreeSet<&SecretRef> = self.secrets.keys().chain(new.keys()).collect();
        let changed: BTreeSet<SecretRef> = ids
            .into_iter()
            .filter(|id| match (self.secrets.get(*id), new.get(*id)) {
                (Some(a), Some(b)) => !a.same_data(b),
                _ => true,
            })
            .cloned()
            .collect();
        self.secrets = new;
        self.stamp = stamp;
        self.failed = None;
        Ok(Some(changed))
    }
}

/// Loads Secrets from a manifest file, or from a directory of manifest files
/// (`.yaml`/`.yml`/`.json`) and `NAMESPACE/NAME/` Secret volumes (see [`SecretSource`]).
/// Warns when a manifest is readable by other users: it holds passphrases.
pub fn load_secrets(path: &Path) -> Result<Vec<Secret>, SecretError> {
    let out = SecretSource::open(path)?.into_secrets();
    if out.is_empty() {
        return Err(SecretError::NoSecrets { path: path.into() });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::kubelet::kubelet_write;

    fn pass(src: &SecretSource, ns: &str, name: &str) -> Vec<u8> {
        let id = SecretRef::parse(&format!("{ns}/{name}"), "");
        let s = src.secrets().find(|s| s.id == id).unwrap();
        s.crypto_params()
            .unwrap()
            .luks
            .passphrase
            .as_bytes()
            .to_vec()
    }

    #[test]
    fn volumes_and_manifests_side_by_side() {
        let d = tempfile::tempdir().unwrap();
        kubelet_write(
            &d.path().join("longhorn-system/crypto"),
            &[("CRYPTO_KEY_VALUE", "one"), ("CRYPTO_KEY_HASH", "sha512")],
        );
        fs::write(
            d.path().join("m.yaml"),
            "kind: Secret\nmetadata: {name: m, namespace: ns}\nstringData: {CRYPTO_KEY_VALUE: mm}\n",
        )
        .unwrap();
        // An optional Secret that does not exist yet, and a stray file: both ignored.
        fs::create_dir_all(d.path().join("longhorn-system/later")).unwrap();
        fs::write(d.path().join("longhorn-system/stray"), "x").unwrap();
        let src = SecretSource::open(d.path()).unwrap();
        let ids: Vec<String> = src.secrets().map(|s| s.id.to_string()).collect();
        assert_eq!(ids, ["longhorn-system/crypto", "ns/m"]);
        assert_eq!(pass(&src, "longhorn-system", "crypto"), b"one");
        let p = src.secrets().next().unwrap().crypto_params().unwrap();
        assert_eq!(p.luks.hash, bifs_core::kdf::Hash::Sha512);
        assert_eq!(pass(&src, "ns", "m"), b"mm");
    }

    #[test]
    fn rotation_addition_and_removal_are_reported_per_secret() {
        let d = tempfile::tempdir().unwrap();
        let a = d.path().join("ns/a");
        let b = d.path().join("ns/b");
        kubelet_write(&a, &[("CRYPTO_KEY_VALUE", "a1")]);
        kubelet_write(&b, &[("CRYPTO_KEY_VALUE", "b1")]);
        let mut src = SecretSource::open(d.path()).unwrap();
        assert_eq!(src.refresh().unwrap(), None);

        kubelet_write(&a, &[("CRYPTO_KEY_VALUE", "a2")]);
        let changed = src.refresh().unwrap().unwrap();
        assert_eq!(
            changed.into_iter().map(|s| s.name).collect::<Vec<_>>(),
            ["a"]
        );
        assert_eq!(pass(&src, "ns", "a"), b"a2");
        assert_eq!(pass(&src, "ns", "b"), b"b1");

        // The kubelet rewrites a Secret whose data did not change: nothing to invalidate.
        kubelet_write(&b, &[("CRYPTO_KEY_VALUE", "b1")]);
        assert_eq!(src.refresh().unwrap(), Some(BTreeSet::new()));

        kubelet_write(&d.path().join("other/c"), &[("CRYPTO_KEY_VALUE", "c")]);
        fs::remove_dir_all(&a).unwrap();
        let changed = src.refresh().unwrap().unwrap();
        let names: Vec<String> = changed.iter().map(|s| s.to_string()).collect();
        assert_eq!(names, ["ns/a", "other/c"]);
        assert_eq!(src.secrets().count(), 2);
    }

    #[test]
    fn a_broken_change_keeps_the_old_secrets() {
        let d = tempfile::tempdir().unwrap();
        let f = d.path().join("s.yaml");
        fs::write(
            &f,
            "kind: Secret\nmetadata: {name: s}\nstringData: {CRYPTO_KEY_VALUE: old}\n",
        )
        .unwrap();
        let mut src = SecretSource::open(d.path()).unwrap();
        fs::write(&f, "kind: Secret\nmetadata: [\n").unwrap();
        assert!(src.refresh().is_err());
        assert_eq!(pass(&src, "default", "s"), b"old");
        // Reported once, not on every look.
        assert_eq!(src.refresh().unwrap(), None);
        fs::write(
            &f,
            "kind: Secret\nmetadata: {name: s}\nstringData: {CRYPTO_KEY_VALUE: new}\n",
        )
        .unwrap();
        assert_eq!(src.refresh().unwrap().unwrap().len(), 1);
        assert_eq!(pass(&src, "default", "s"), b"new");
    }

    #[test]
    fn one_volume_alone_is_refused_with_a_hint() {
        let d = tempfile::tempdir().unwrap();
        kubelet_write(d.path(), &[("CRYPTO_KEY_VALUE", "x")]);
        let err = SecretSource::open(d.path()).unwrap_err().to_string();
        assert!(err.contains("NAMESPACE/NAME"), "{err}");
    }

    #[test]
    fn a_key_that_is_not_text_names_the_key_only() {
        let d = tempfile::tempdir().unwrap();
        let v = d.path().join("ns/bin");
        fs::create_dir_all(&v).unwrap();
        fs::write(v.join("CRYPTO_KEY_VALUE"), [0xff, 0xfe, b's', b'e', b'k']).unwrap();
        let err = SecretSource::open(d.path()).unwrap_err().to_string();
        assert!(
            err.contains("ns/bin") && err.contains("CRYPTO_KEY_VALUE"),
            "{err}"
        );
        assert!(!err.contains("sek"), "{err}");
    }

    #[test]
    fn empty_volumes_wait_but_an_empty_directory_is_an_error() {
        let d = tempfile::tempdir().unwrap();
        assert!(SecretSource::open(d.path()).is_err());
        fs::create_dir_all(d.path().join("ns/later")).unwrap();
        let mut src = SecretSource::open(d.path()).unwrap();
        assert_eq!(src.secrets().count(), 0);
        kubelet_write(&d.path().join("ns/later"), &[("CRYPTO_KEY_VALUE", "now")]);
        assert_eq!(src.refresh().unwrap().unwrap().len(), 1);
        assert_eq!(pass(&src, "ns", "later"), b"now");
    }
}
