//! `bifs inspect`: what an image is, and for LUKS its header as `cryptsetup luksDump` shows it.

use std::fmt::Write as _;
use std::path::Path;

use anyhow::Context;
use serde_json::{json, Value};

use bifs::image::{self, Format, ReadAt};
use bifs::luks::metadata::KdfJson;
use bifs::luks::LuksHeader;

pub fn run(path: &Path, as_json: bool) -> anyhow::Result<()> {
    let (format, disk) = super::crypt::open_disk(path).or_else(|_| -> anyhow::Result<_> {
        // A qcow2 we cannot flatten is still worth describing.
        let format = image::detect(path).with_context(|| format!("opening {}", path.display()))?;
        let raw = image::raw::RawFile::open(path)?;
        Ok((
            format,
            std::sync::Arc::new(raw) as std::sync::Arc<dyn ReadAt>,
        ))
    })?;
    let size = std::fs::metadata(path)?.len();
    let luks = if format.is_luks() {
        Some(
            LuksHeader::read(&*disk)
                .with_context(|| format!("reading the LUKS header of {}", path.display()))?,
        )
    } else {
        None
    };
    let summary = json!({
        "path": path.display().to_string(),
        "format": format,
        "size": size,
        "virtual_size": disk.len(),
        "luks": luks.as_ref().map(|h| luks_json(h, size)),
    });
    if as_json {
        println!("{}", serde_json::to_string_pretty(&summary)?);
    } else {
        println!("Image:          {}", path.display());
        println!("Format:         {format}");
        println!("Size:           {size} [bytes]");
        if format == Format::Qcow2 {
            println!("Virtual size:   {} [bytes]", disk.len());
        }
        if let Some(h) = &luks {
            println!();
            print!("{}", luks_text(h, size));
        }
    }
    Ok(())
}

fn kdf_name(k: &KdfJson) -> &'static str {
    match k {
        KdfJson::Pbkdf2 { .. } => "pbkdf2",
        KdfJson::Argon2i { .. } => "argon2i",
        KdfJson::Argon2id { .. } => "argon2id",
    }
}

fn luks_json(h: &LuksHeader, image_len: u64) -> Value {
    let seg = h.segment();
    let keyslots: Vec<Value> = match h {
        LuksHeader::V1(h1) => h1
            .keyslots
            .iter()
            .enumerate()
            .filter(|(_, k)| k.active)
            .map(|(i, k)| json!({"id": i, "kdf": "pbkdf2", "hash": h1.hash.name(), "iterations": k.iterations}))
            .collect(),
        LuksHeader::V2(h2) => h2
            .metadata
            .keyslots
            .iter()
            .map(|(id, k)| {
                let mut v = json!({"id": id.parse::<u32>().unwrap_or(u32::MAX), "type": k.kind, "key_size_bits": k.key_size * 8});
                if let Some(kdf) = &k.kdf {
                    v["kdf"] = json!(kdf_name(kdf));
                    match kdf {
                        KdfJson::Pbkdf2 { hash, iterations, .. } => {
                            v["hash"] = json!(hash);
                            v["iterations"] = json!(iterations);
                        }
                        KdfJson::Argon2i { time, memory, cpus, .. } | KdfJson::Argon2id { time, memory, cpus, .. } => {
                            v["time"] = json!(time);
                            v["memory_kib"] = json!(memory);
                            v["cpus"] = json!(cpus);
                        }
                    }
                }
                v
            })
            .collect(),
    };
    json!({
        "version": h.version(),
        "uuid": h.uuid(),
        "cipher": h.cipher(),
        "key_size_bits": seg.key_len * 8,
        "sector_size": seg.sector_size,
        "data_offset": seg.offset,
        "data_size": seg.len_in(image_len).ok(),
        "keyslots": keyslots,
    })
}

/// The header in `cryptsetup luksDump`'s layout (LUKS2) or its LUKS1 equivalent.
fn luks_text(h: &LuksHeader, image_len: u64) -> String {
    let mut s = String::new();
    let seg = h.segment();
    match h {
        LuksHeader::V1(h1) => {
            let _ = writeln!(s, "LUKS header information for LUKS1\n");
            let _ = writeln!(s, "Version:        1");
            let _ = writeln!(s, "Cipher name:    {}", h1.cipher_name);
            let _ = writeln!(s, "Cipher mode:    {}", h1.cipher_mode);
            let _ = writeln!(s, "Hash spec:      {}", h1.hash.name());
            let _ = writeln!(s, "Payload offset: {}", h1.payload_sector);
            let _ = writeln!(s, "MK bits:        {}", h1.key_bytes * 8);
            let _ = writeln!(s, "MK iterations:  {}", h1.mk_digest_iterations);
            let _ = writeln!(s, "UUID:           {}\n", h1.uuid);
            for (i, k) in h1.keyslots.iter().enumerate() {
                if k.active {
                    let _ = writeln!(s, "Key Slot {i}: ENABLED\n\tIterations:         \t{}\n\tKey material offset:\t{}\n\tAF stripes:         \t{}", k.iterations, k.material_sector, k.stripes);
                } else {
                    let _ = writeln!(s, "Key Slot {i}: DISABLED");
                }
            }
        }
        LuksHeader::V2(h2) => {
            let md = &h2.metadata;
            let _ = writeln!(s, "LUKS header information");
            let _ = writeln!(s, "Version:        2");
            let _ = writeln!(s, "Epoch:          {}", h2.binary.seqid);
            let _ = writeln!(s, "Metadata area:  {} [bytes]", md.config.json_size);
            let _ = writeln!(s, "Keyslots area:  {} [bytes]", md.config.keyslots_size);
            let _ = writeln!(s, "UUID:           {}", h2.binary.uuid);
            let label = if h2.binary.label.is_empty() {
                "(no label)"
            } else {
                &h2.binary.label
            };
            let _ = writeln!(s, "Label:          {label}");
            let _ = writeln!(s, "Subsystem:      (no subsystem)");
            let _ = writeln!(s, "Flags:          (no flags)\n");
            let _ = writeln!(s, "Data segments:");
            for (id, sg) in &md.segments {
                let _ = writeln!(s, "  {id}: {}", sg.kind);
                let _ = writeln!(s, "\toffset: {} [bytes]", sg.offset);
                let _ = match sg.size {
                    bifs::luks::metadata::SegmentSize::Dynamic => {
                        writeln!(s, "\tlength: (whole device)")
                    }
                    bifs::luks::metadata::SegmentSize::Bytes(n) => {
                        writeln!(s, "\tlength: {n} [bytes]")
                    }
                };
                let _ = writeln!(s, "\tcipher: {}", sg.encryption.as_deref().unwrap_or("-"));
                let _ = writeln!(s, "\tsector: {} [bytes]\n", sg.sector_size.unwrap_or(512));
            }
            let _ = writeln!(s, "Keyslots:");
            for (id, k) in &md.keyslots {
                let _ = writeln!(s, "  {id}: {}", k.kind);
                let _ = writeln!(s, "\tKey:        {} bits", k.key_size * 8);
                let prio = match k.priority {
                    Some(0) => "ignored",
                    Some(2) => "preferred",
                    _ => "normal",
                };
                let _ = writeln!(s, "\tPriority:   {prio}");
                let _ = writeln!(
                    s,
                    "\tCipher:     {}",
                    k.area.encryption.as_deref().unwrap_or("-")
                );
                let _ = writeln!(s, "\tCipher key: {} bits", k.area.key_size.unwrap_or(0) * 8);
                match &k.kdf {
                    Some(KdfJson::Pbkdf2 {
                        hash, iterations, ..
                    }) => {
                        let _ = writeln!(s, "\tPBKDF:      pbkdf2\n\tHash:       {hash}\n\tIterations: {iterations}");
                    }
                    Some(
                        kdf @ (KdfJson::Argon2i {
                            time, memory, cpus, ..
                        }
                        | KdfJson::Argon2id {
                            time, memory, cpus, ..
                        }),
                    ) => {
                        let _ = writeln!(s, "\tPBKDF:      {}\n\tTime cost:  {time}\n\tMemory:     {memory}\n\tThreads:    {cpus}", kdf_name(kdf));
                    }
                    None => {}
                }
                if let Some(af) = &k.af {
                    let _ = writeln!(s, "\tAF stripes: {}\n\tAF hash:    {}", af.stripes, af.hash);
                }
                let _ = writeln!(
                    s,
                    "\tArea offset:{} [bytes]\n\tArea length:{} [bytes]",
                    k.area.offset, k.area.size
                );
                for (did, d) in &md.digests {
                    if d.keyslots.iter().any(|x| x == id) {
                        let _ = writeln!(s, "\tDigest ID:  {did}");
                    }
                }
            }
            let _ = writeln!(s, "Tokens:");
            let _ = writeln!(s, "Digests:");
            for (id, d) in &md.digests {
                let _ = writeln!(
                    s,
                    "  {id}: {}\n\tHash:       {}\n\tIterations: {}",
                    d.kind, d.hash, d.iterations
                );
            }
        }
    }
    let _ = writeln!(
        s,
        "\nData: offset {} [bytes], {} bytes in {}-byte sectors, {}-bit key",
        seg.offset,
        seg.len_in(image_len)
            .map(|n| n.to_string())
            .unwrap_or_else(|e| format!("invalid ({e})")),
        seg.sector_size,
        seg.key_len * 8
    );
    s
}
