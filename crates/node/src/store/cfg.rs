//! The two JSON files Longhorn keeps on a disk, as its Go code writes them today.
//!
//! - `backing-images/<name>-<uuid>/backing.cfg`: backing-image-manager's `SyncingFileConfig`
//!   (longhorn/backing-image-manager `pkg/util/util.go`), written compact by `json.Marshal`
//!   when a file becomes ready. `name` is the full path of `backing`, not the image's name.
//!   The format bifs wrote before (and backing-image-manager before 2022), with the image's
//!   name in `name` and no sizes or time, is still read.
//! - `longhorn-disk.cfg` at the disk root: longhorn-manager's `DiskConfig`
//!   (longhorn/longhorn-manager `util/util.go`), which holds the disk's UUID, the key of
//!   `status.diskFileStatusMap`.

use std::fs;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use serde::{Deserialize, Serialize};

use super::atomic::write_atomic;

/// `backing.cfg`, field for field and in the order of backing-image-manager's
/// `SyncingFileConfig` (Go's `json.Marshal` follows the struct's field order).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BackingCfg {
    /// The full path of the `backing` file (the Go field is `FilePath`, tagged `name`).
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub uuid: String,
    #[serde(default)]
    pub size: i64,
    #[serde(default)]
    pub virtual_size: i64,
    #[serde(default)]
    pub real_size: i64,
    #[serde(default)]
    pub expected_checksum: String,
    #[serde(default)]
    pub current_checksum: String,
    /// Go's `time.Time.String()` of `backing`'s mtime in UTC; empty in the old format.
    #[serde(default)]
    pub modification_time: String,
}

impl BackingCfg {
    /// Reads a `backing.cfg` of either format; `None` when it is missing or not JSON.
    pub fn read(path: &Path) -> Option<Self> {
        let bytes = fs::read(path).ok()?;
        match serde_json::from_slice(&bytes) {
            Ok(cfg) => Some(cfg),
            Err(e) => {
                tracing::warn!(file = %path.display(), error = %e, "ignoring an unreadable backing.cfg");
                None
            }
        }
    }

    /// The image name the old format kept in `name`; `None` for the current format, whose
    /// `name` is a path.
    pub fn legacy_name(&self) -> Option<&str> {
        (!self.name.is_empty() && !self.name.contains('/')).then_some(self.name.as_str())
    }

    /// Writes it as backing-image-manager does (compact JSON), but atomically.
    pub fn write(&self, path: &Path) -> io::Result<()> {
        let json = serde_json::to_vec(self).map_err(io::Error::other)?;
        // backing-image-manager writes 0666 under the usual 022 umask.
        write_atomic(path, &json, 0o644)
    }
}

/// `longhorn-disk.cfg`, as longhorn-manager's `DiskConfig` marshals it for a filesystem disk.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DiskCfg {
    #[serde(default)]
    pub disk_name: String,
    #[serde(default, rename = "diskUUID")]
    pub disk_uuid: String,
    #[serde(default)]
    pub disk_driver: String,
    #[serde(default)]
    pub state: String,
}

impl DiskCfg {
    /// The disk's config: the one present (kept as it is), else a new one written now.
    pub fn ensure(path: &Path) -> io::Result<Self> {
        if let Some(cfg) = Self::read(path)? {
            return Ok(cfg);
        }
        let uuid = uuid::Uuid::new_v4();
        let cfg = DiskCfg {
            disk_name: format!("default-disk-{}", &uuid.simple().to_string()[..12]),
            disk_uuid: uuid.to_string(),
            disk_driver: String::new(),
            state: "ready".into(),
        };
        let json = serde_json::to_vec(&cfg).map_err(io::Error::other)?;
        write_atomic(path, &json, 0o644)?;
        tracing::info!(file = %path.display(), disk_uuid = %cfg.disk_uuid, "created longhorn-disk.cfg");
        Ok(cfg)
    }

    /// The config if present; an unreadable one is an error (never silently replaced: its
    /// UUID is what Longhorn knows the disk by).
    pub fn read(path: &Path) -> io::Result<Option<Self>> {
        match fs::read(path) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map(Some)
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }
}

/// Go's `fi.ModTime().UTC().String()` for `path`, as backing-image-manager records it.
pub fn modification_time(path: &Path) -> io::Result<String> {
    let m = fs::metadata(path)?;
    Ok(go_time_string(m.mtime(), m.mtime_nsec() as u32))
}

/// Go's `time.Time.String()` of a UTC instant: `2006-01-02 15:04:05.999999999 +0000 UTC`,
/// the fraction without trailing zeros and absent when zero.
pub fn go_time_string(secs: i64, nanos: u32) -> String {
    let Ok(ts) = jiff::Timestamp::new(secs, nanos as i32) else {
        // Outside jiff's range (years -9999..=9999): no file system gives such an mtime.
        return String::new();
    };
    format!("{} +0000 UTC", ts.strftime("%Y-%m-%d %H:%M:%S%.f"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn go_time_strings() {
        // Checked against Go: time.Unix(1787303812, 123456789).UTC().String()
        assert_eq!(
            go_time_string(1_787_303_812, 123_456_789),
            "2026-08-21 09:16:52.123456789 +0000 UTC"
        );
        assert_eq!(
            go_time_string(1_787_303_812, 120_000_000),
            "2026-08-21 09:16:52.12 +0000 UTC"
        );
        assert_eq!(go_time_string(0, 0), "1970-01-01 00:00:00 +0000 UTC");
        assert_eq!(
            go_time_string(951_782_400, 0),
            "2000-02-29 00:00:00 +0000 UTC"
        );
    }

    #[test]
    fn both_cfg_formats_read() {
        let new: BackingCfg = serde_json::from_str(r#"{"name":"/data/backing-images/p-1a2b3c4d/backing","uuid":"1a2b3c4d","size":512,"virtualSize":512,"realSize":4096,"expectedChecksum":"","currentChecksum":"ab","modificationTime":"2026-08-21 09:16:52 +0000 UTC"}"#).unwrap();
        assert_eq!(new.legacy_name(), None);
        let old: BackingCfg = serde_json::from_str(
            r#"{"name":"p","uuid":"1a2b3c4d","size":512,"expectedChecksum":"","currentChecksum":"ab"}"#,
        )
        .unwrap();
        assert_eq!(old.legacy_name(), Some("p"));
        assert_eq!(old.virtual_size, 0);
    }
}
