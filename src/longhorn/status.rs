//! What `bifs get` shows: records as observed now (an in-progress record whose apply is gone
//! reads as failed), as a table or as BackingImage objects in YAML or JSON.

use serde::Serialize;

use super::layout::Store;
use super::manifest::{BackingImage, State};

/// The message of a record whose apply stopped without finishing (killed, machine down).
pub const INTERRUPTED: &str =
    "interrupted: the apply making it stopped before it finished; apply again to complete it";

/// The record as it stands: pending/in-progress with nobody holding the image's lock means
/// the apply died, which is reported as failed (the record itself is left for the next apply).
pub fn observe(store: &Store, mut rec: BackingImage) -> BackingImage {
    if let Some(st) = rec.status.as_mut() {
        if !st.state.is_settled() && store.is_busy(&rec.metadata.name) == Some(false) {
            st.state = State::Failed;
            st.message = INTERRUPTED.to_string();
        }
    }
    rec
}

/// All records, or the one named; observed.
pub fn list(
    store: &Store,
    name: Option<&str>,
) -> Result<Vec<BackingImage>, super::layout::LayoutError> {
    let recs = match name {
        Some(n) => store.read_record(n)?.into_iter().collect(),
        None => store.list_records()?,
    };
    Ok(recs.into_iter().map(|r| observe(store, r)).collect())
}

/// `kubectl get`-style table.
pub fn table(images: &[BackingImage], header: bool) -> String {
    let mut rows: Vec<[String; 7]> = Vec::new();
    if header {
        rows.push(
            [
                "NAME",
                "STATE",
                "PROGRESS",
                "SIZE",
                "VIRTUAL-SIZE",
                "SECRET",
                "MESSAGE",
            ]
            .map(String::from),
        );
    }
    for b in images {
        let st = b.status.clone().unwrap_or_default();
        let secret = if st.secret.is_empty() {
            "-".into()
        } else {
            format!("{}/{}", st.secret_namespace, st.secret)
        };
        rows.push([
            b.metadata.name.clone(),
            st.state.as_str().into(),
            format!("{}%", st.progress),
            human(st.size),
            human(st.virtual_size),
            secret,
            st.message.clone(),
        ]);
    }
    let mut widths = [0usize; 7];
    for r in &rows {
        for (w, c) in widths.iter_mut().zip(r) {
            *w = (*w).max(c.chars().count());
        }
    }
    let mut out = String::new();
    for r in rows {
        let mut line = String::new();
        for (i, c) in r.iter().enumerate() {
            if i + 1 == r.len() {
                line.push_str(c);
            } else {
                line.push_str(&format!("{c:<w$}   ", w = widths[i]));
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

/// Sizes as kubectl prints quantities: binary units, one decimal when small.
pub fn human(bytes: u64) -> String {
    const UNITS: [&str; 6] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    let mut v = bytes as f64;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < UNITS.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{bytes}B")
    } else if v < 10.0 {
        format!("{v:.1}{}", UNITS[u])
    } else {
        format!("{v:.0}{}", UNITS[u])
    }
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct List<'a> {
    api_version: &'static str,
    kind: &'static str,
    items: &'a [BackingImage],
}

/// One object when a name was asked for, else a `v1` `List` (as kubectl prints).
pub fn to_yaml(images: &[BackingImage], single: bool) -> Result<String, serde_norway::Error> {
    match images {
        [one] if single => serde_norway::to_string(one),
        _ => serde_norway::to_string(&List {
            api_version: "v1",
            kind: "List",
            items: images,
        }),
    }
}

pub fn to_json(images: &[BackingImage], single: bool) -> Result<String, serde_json::Error> {
    match images {
        [one] if single => serde_json::to_string_pretty(one),
        _ => serde_json::to_string_pretty(&List {
            api_version: "v1",
            kind: "List",
            items: images,
        }),
    }
}
