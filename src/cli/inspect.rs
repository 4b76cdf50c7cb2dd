//! `bifs inspect`: what an image is; for LUKS, bifs's summary (data segment, whether bifs can
//! unlock it) and then the header exactly as `cryptsetup luksDump` prints it.

use std::fmt::Write as _;
use std::path::Path;
use std::sync::Arc;

use anyhow::Context;
use serde_json::{json, Value};

use bifs_core::image::{self, Format, ReadAt};
use bifs_core::luks::{dump, LuksError, LuksHeader};

pub fn run(path: &Path, as_json: bool) -> anyhow::Result<()> {
    let (format, disk) = open(path)?;
    let size = std::fs::metadata(path)?.len();
    let luks = format.is_luks().then(|| LuksHeader::read(&*disk));
    let mut out = String::new();
    if as_json {
        out =
            serde_json::to_string_pretty(&summary_json(path, format, size, &*disk, luks.as_ref()))?;
        out.push('\n');
    } else {
        out.push_str(&summary_text(path, format, size, &*disk, luks.as_ref()));
        if let Some(Ok(h)) = &luks {
            out.push_str(&dump::luks_dump(h, &path.display().to_string()));
        }
    }
    super::print_all(&out)?;
    match luks {
        Some(Err(e)) => {
            Err(e).with_context(|| format!("reading the LUKS header of {}", path.display()))
        }
        _ => Ok(()),
    }
}

/// The image as its disk: qcow2 flattened when possible, else its bytes.
fn open(path: &Path) -> anyhow::Result<(Format, Arc<dyn ReadAt>)> {
    super::crypt::open_disk(path).or_else(|_| -> anyhow::Result<_> {
        // A qcow2 we cannot flatten is still worth describing.
        let format = image::detect(path).with_context(|| format!("opening {}", path.display()))?;
        let raw = image::raw::RawFile::open(path)?;
        Ok((format, Arc::new(raw) as Arc<dyn ReadAt>))
    })
}

fn summary_json(
    path: &Path,
    format: Format,
    size: u64,
    disk: &dyn ReadAt,
    luks: Option<&Result<LuksHeader, LuksError>>,
) -> Value {
    let mut v = json!({
        "path": path.display().to_string(),
        "format": format,
        "size": size,
        "virtual_size": disk.len(),
        "luks": luks.and_then(|r| r.as_ref().ok()).map(|h| luks_json(h, size)),
    });
    if let Some(Err(e)) = luks {
        v["luks_error"] = json!(e.to_string());
    }
    v
}

fn keyslots_json(h: &LuksHeader) -> Vec<Value> {
    match h {
        LuksHeader::V1(h1) => h1
            .keyslots
            .iter()
            .enumerate()
            .filter(|(_, k)| k.active)
            .map(|(i, k)| json!({"id": i, "kdf": "pbkdf2", "hash": h1.hash_spec, "iterations": k.iterations}))
            .collect(),
        LuksHeader::V2(h2) => h2
            .metadata
            .keyslots
            .iter()
            .map(|(id, k)| {
                let mut v = json!({
                    "id": id.parse::<u32>().unwrap_or(u32::MAX),
                    "type": k.kind,
                    "key_size_bits": u64::from(k.key_size) * 8,
                    "bound": h2.metadata.keyslot_is_bound(id),
                });
                if let Some(kdf) = &k.kdf {
                    v["kdf"] = json!(kdf.kind);
                    for (name, value) in [
                        ("iterations", kdf.iterations),
                        ("time", kdf.time),
                        ("memory_kib", kdf.memory),
                        ("cpus", kdf.cpus),
                    ] {
                        if let Some(n) = value {
                            v[name] = json!(n);
                        }
                    }
                    if let Some(hash) = &kdf.hash {
                        v["hash"] = json!(hash);
                    }
                }
                v
            })
            .collect(),
    }
}

fn unsupported(h: &LuksHeader) -> Option<String> {
    match h {
        LuksHeader::V1(h1) => {
            let ok = h1.cipher() == bifs_core::luks::CIPHER
                && matches!(h1.key_bytes, 32 | 64)
                && h1.hash().is_ok()
                && h1.payload_sector != 0;
            (!ok).then(|| {
                format!(
                    "{} with a {}-bit key, hash {}",
                    h1.cipher(),
                    h1.key_bytes * 8,
                    h1.hash_spec
                )
            })
        }
        LuksHeader::V2(h2) => h2.unsupported().map(|u| u.to_string()),
    }
}

fn luks_json(h: &LuksHeader, image_len: u64) -> Value {
    let seg = h.segment();
    json!({
        "version": h.version(),
        "uuid": h.uuid(),
        "cipher": h.cipher(),
        "key_size_bits": seg.key_len * 8,
        "sector_size": seg.sector_size,
        "data_offset": seg.offset,
        "data_size": seg.len_in(image_len).ok(),
        "keyslots": keyslots_json(h),
        "unsupported": unsupported(h),
        "recovered_from_secondary": matches!(h, LuksHeader::V2(h2) if h2.recovered_from_secondary),
    })
}

/// bifs's own lines, above the `luksDump` part.
fn summary_text(
    path: &Path,
    format: Format,
    size: u64,
    disk: &dyn ReadAt,
    luks: Option<&Result<LuksHeader, LuksError>>,
) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "Image:          {}", path.display());
    let invalid = if matches!(luks, Some(Err(_))) {
        " (invalid header)"
    } else {
        ""
    };
    let _ = writeln!(s, "Format:         {format}{invalid}");
    let _ = writeln!(s, "Size:           {size} [bytes]");
    if format == Format::Qcow2 {
        let _ = writeln!(s, "Virtual size:   {} [bytes]", disk.len());
    }
    if let Some(Ok(h)) = luks {
        luks_summary(&mut s, h, size);
        s.push('\n');
    }
    s
}

fn luks_summary(s: &mut String, h: &LuksHeader, image_len: u64) {
    let seg = h.segment();
    let data = match seg.len_in(image_len) {
        Ok(n) => format!("{n} bytes"),
        Err(e) => format!("invalid ({e})"),
    };
    let _ = writeln!(
        s,
        "Data:           offset {} [bytes], {data} in {}-byte sectors, {}-bit key",
        seg.offset,
        seg.sector_size,
        seg.key_len * 8
    );
    let _ = match unsupported(h) {
        None => writeln!(s, "bifs unlocks:   yes"),
        Some(why) => writeln!(s, "bifs unlocks:   no ({why})"),
    };
    if matches!(h, LuksHeader::V2(h2) if h2.recovered_from_secondary) {
        let _ = writeln!(
            s,
            "Recovered:      from the secondary header (the primary is damaged or older)"
        );
    }
}
