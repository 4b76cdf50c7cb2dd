//! The SHA-512 of stored files, computed once per version of a file and kept in the state
//! directory: `STATE/digests/<image>.json` = the file's stamp and its digest. A stable encrypt
//! view's header is keyed to its source's digest ([`bifs_core::view::stable`]), so a restart
//! must not hash every image again.
//!
//! A file's version is its [`FileStamp`]: device, inode, size, mtime and ctime. ctime moves on
//! every write and every metadata change and cannot be set by a writer, so a writer that
//! restores the mtime still changes the stamp.

use std::fs::{self, File};
use std::io::{self, Read};
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::atomic::write_atomic;
use super::cfg::{modification_time, BackingCfg};
use super::layout::{BACKING, BACKING_CFG};
use super::valid_component;

/// Which version of a file a digest was taken of: the identity views are pinned to.
pub use super::identity::SourceIdentity as FileStamp;

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Entry {
    stamp: FileStamp,
    sha512: String,
}

/// Where a digest came from (for the log).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DigestSource {
    /// The state directory's cache (same file version).
    Cache,
    /// Longhorn's `backing.cfg`, whose `modificationTime` is the file's.
    BackingCfg,
    /// Read and hashed now.
    Hashed,
}

/// Parses 128 lower- or upper-case hex digits.
pub fn parse_sha512(hex_text: &str) -> Option<[u8; 64]> {
    let mut out = [0u8; 64];
    (hex_text.len() == 128)
        .then(|| hex::decode_to_slice(hex_text, &mut out).ok())
        .flatten()
        .map(|()| out)
}

fn cache_path(state: &Path, image: &str) -> Option<PathBuf> {
    valid_component(image).then(|| state.join("digests").join(format!("{image}.json")))
}

/// The cached digest of `image` if it was taken of this `stamp`.
pub fn cached(state: &Path, image: &str, stamp: &FileStamp) -> Option<[u8; 64]> {
    let bytes = fs::read(cache_path(state, image)?).ok()?;
    let entry: Entry = serde_json::from_slice(&bytes).ok()?;
    (entry.stamp == *stamp)
        .then(|| parse_sha512(&entry.sha512))
        .flatten()
}

/// The digest `backing.cfg` records for a Longhorn image file, when the cfg describes the file
/// as it is (its `modificationTime` is the file's, as backing-image-manager checks it).
fn from_backing_cfg(path: &Path) -> Option<[u8; 64]> {
    if path.file_name()? != BACKING {
        return None;
    }
    let cfg = BackingCfg::read(&path.with_file_name(BACKING_CFG))?;
    let now = modification_time(path).ok()?;
    (!cfg.modification_time.is_empty() && cfg.modification_time == now)
        .then(|| parse_sha512(&cfg.current_checksum))
        .flatten()
}

/// The SHA-512 of the stored file `image` at `path`, read through `file` (a descriptor of it,
/// whose stamp is `stamp`): from the cache, from `backing.cfg`, or hashed now and cached.
/// Hashing checks the stamp again after reading: a file that changed meanwhile is an error,
/// never a digest of mixed versions.
pub fn digest(
    state: &Path,
    image: &str,
    path: &Path,
    file: &File,
    stamp: &FileStamp,
) -> io::Result<([u8; 64], DigestSource)> {
    if let Some(d) = cached(state, image, stamp) {
        return Ok((d, DigestSource::Cache));
    }
    let (d, source) = match from_backing_cfg(path) {
        Some(d) => (d, DigestSource::BackingCfg),
        None => (hash(file)?, DigestSource::Hashed),
    };
    if FileStamp::of(&file.metadata()?) != *stamp {
        return Err(io::Error::other(
            "the file changed while its SHA-512 was computed",
        ));
    }
    if let Some(p) = cache_path(state, image) {
        let entry = Entry {
            stamp: *stamp,
            sha512: hex::encode(d),
        };
        if let Some(dir) = p.parent() {
            fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)?;
        }
        let json = serde_json::to_vec(&entry).map_err(io::Error::other)?;
        // A cache: a state directory that cannot be written costs a hash at the next start.
        if let Err(e) = write_atomic(&p, &json, 0o600) {
            tracing::warn!(image, error = %e, "could not cache the image's SHA-512 in the state directory");
        }
    }
    Ok((d, source))
}

fn hash(file: &File) -> io::Result<[u8; 64]> {
    let mut f = file.try_clone()?;
    use std::io::Seek;
    f.seek(io::SeekFrom::Start(0))?;
    let mut h = bifs_sys::sha512::Sha512::new().map_err(io::Error::other)?;
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = match f.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        h.update(&buf[..n]).map_err(io::Error::other)?;
    }
    let d = h.finish().map_err(io::Error::other)?;
    let mut out = [0u8; 64];
    out.copy_from_slice(&d);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use sha2::Digest;

    #[test]
    fn hashed_once_then_cached_until_the_file_changes() {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("state");
        let img = dir.path().join("a.img");
        fs::write(&img, b"hello").unwrap();
        let f = File::open(&img).unwrap();
        let stamp = FileStamp::of(&f.metadata().unwrap());
        let (d, src) = digest(&state, "a.img", &img, &f, &stamp).unwrap();
        assert_eq!(src, DigestSource::Hashed);
        assert_eq!(d.to_vec(), sha2::Sha512::digest(b"hello").to_vec());
        let (again, src) = digest(&state, "a.img", &img, &f, &stamp).unwrap();
        assert_eq!((again, src), (d, DigestSource::Cache));
        // Rewritten with its mtime restored: the ctime still moves, the cache misses.
        std::thread::sleep(std::time::Duration::from_millis(20));
        let mtime = fs::metadata(&img).unwrap().modified().unwrap();
        fs::write(&img, b"world").unwrap();
        File::options()
            .write(true)
            .open(&img)
            .unwrap()
            .set_modified(mtime)
            .unwrap();
        let f = File::open(&img).unwrap();
        let stamp2 = FileStamp::of(&f.metadata().unwrap());
        assert_ne!(stamp, stamp2);
        assert!(cached(&state, "a.img", &stamp2).is_none());
        let (d2, _) = digest(&state, "a.img", &img, &f, &stamp2).unwrap();
        assert_eq!(d2.to_vec(), sha2::Sha512::digest(b"world").to_vec());
    }

    #[test]
    fn a_current_backing_cfg_gives_the_digest_without_reading() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().join("backing-images/p-1a2b3c4d");
        fs::create_dir_all(&d).unwrap();
        let backing = d.join(BACKING);
        fs::write(&backing, b"data").unwrap();
        let claimed = "ab".repeat(64);
        let cfg = BackingCfg {
            current_checksum: claimed.clone(),
            modification_time: modification_time(&backing).unwrap(),
            ..Default::default()
        };
        fs::write(d.join(BACKING_CFG), serde_json::to_vec(&cfg).unwrap()).unwrap();
        let f = File::open(&backing).unwrap();
        let stamp = FileStamp::of(&f.metadata().unwrap());
        let state = dir.path().join("state");
        let (got, src) = digest(&state, "p", &backing, &f, &stamp).unwrap();
        assert_eq!(src, DigestSource::BackingCfg);
        assert_eq!(hex::encode(got), claimed);
    }
}
