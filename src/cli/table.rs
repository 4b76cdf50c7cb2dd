//! `bifs get`'s tables, as kubectl prints them: columns padded to a common width, three spaces
//! apart, the last column unpadded.
//!
//! A watch prints rows as they come, so the widths cannot wait for every row: they start at
//! the header's, the known widths of fixed-format values (states, percentages, sizes, UUIDs)
//! and the rows known at the start, and only ever grow.

use bifs_k8s::manifest::{BackingImage, SourceType, State, PARAM_BACKING_IMAGE, PARAM_ENCRYPTION};
use bifs_node::longhorn::status;

const GAP: &str = "   ";

/// A size as the tables print it, in binary units: `512 B`, `8.00 MiB`, `1.00 GiB`
/// (indicatif's `HumanBytes`, as the progress bars show bytes).
pub fn size(bytes: u64) -> String {
    indicatif::HumanBytes(bytes).to_string()
}

/// The widest [`size`]: a number below 1024 with two decimals and a unit (`1023.99 KiB`).
const SIZE_WIDTH: usize = "1023.99 KiB".len();

/// Column widths that only grow.
pub struct Table {
    widths: Vec<usize>,
}

impl Table {
    /// Widths for `header`, at least `minimums` (by column; missing ones are 0).
    pub fn new(header: &[&str], minimums: &[usize]) -> Self {
        let widths = header
            .iter()
            .enumerate()
            .map(|(i, h)| h.chars().count().max(minimums.get(i).copied().unwrap_or(0)))
            .collect();
        Self { widths }
    }

    /// Widens the columns to fit `rows`.
    pub fn fit(&mut self, rows: &[Vec<String>]) {
        for row in rows {
            for (w, cell) in self.widths.iter_mut().zip(row) {
                *w = (*w).max(cell.chars().count());
            }
        }
    }

    /// One line: every column but the last padded to its width.
    pub fn line<S: AsRef<str>>(&self, row: &[S]) -> String {
        let mut line = String::new();
        for (i, cell) in row.iter().enumerate() {
            let cell = cell.as_ref();
            if i + 1 == row.len() {
                line.push_str(cell);
            } else {
                let width = self.widths.get(i).copied().unwrap_or(0);
                line.push_str(cell);
                let pad = width.saturating_sub(cell.chars().count());
                line.extend(std::iter::repeat_n(' ', pad));
                line.push_str(GAP);
            }
        }
        line.truncate(line.trim_end().len());
        line.push('\n');
        line
    }

    /// `header` and `rows`, fitted first.
    pub fn render(mut self, header: &[&str], rows: &[Vec<String>]) -> String {
        self.fit(rows);
        let mut out = self.line(header);
        for r in rows {
            out.push_str(&self.line(r));
        }
        out
    }
}

/// Which columns of a backing image are shown.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Columns {
    Default,
    /// `-o wide`: also UUID, SOURCE, CHECKSUM (a prefix) and AGE.
    Wide,
}

const HEADER: [&str; 7] = [
    "NAME",
    "STATE",
    "PROGRESS",
    "SIZE",
    "VIRTUAL-SIZE",
    "SECRET",
    "MESSAGE",
];
const WIDE_HEADER: [&str; 11] = [
    "NAME",
    "STATE",
    "PROGRESS",
    "SIZE",
    "VIRTUAL-SIZE",
    "SECRET",
    "UUID",
    "SOURCE",
    "CHECKSUM",
    "AGE",
    "MESSAGE",
];

/// Hex digits of the checksum shown by `-o wide` (as `git log --oneline` shortens hashes).
const CHECKSUM_PREFIX: usize = 12;

impl Columns {
    pub fn header(self) -> &'static [&'static str] {
        match self {
            Columns::Default => &HEADER,
            Columns::Wide => &WIDE_HEADER,
        }
    }

    /// The widths of the fixed-format columns: every state bifs writes (`in-progress` is the
    /// longest), `100%`, the widest size (`1023.99 KiB`), an 8-digit UUID, the checksum
    /// prefix, `23h59m`.
    fn minimums(self) -> Vec<usize> {
        let state = State::ALL
            .iter()
            .filter(|s| !matches!(s, State::ReadyForTransfer | State::FailedAndCleanup))
            .map(|s| s.as_str().len())
            .max()
            .unwrap_or(0);
        let size = SIZE_WIDTH;
        let mut m = vec![0, state, "100%".len(), size, size, 0];
        if self == Columns::Wide {
            m.extend([8, 0, CHECKSUM_PREFIX, "23h59m".len()]);
        }
        m
    }

    /// A table fitted to the header, the fixed formats and `images`.
    pub fn table(self, images: &[BackingImage], now: jiff::Timestamp) -> Table {
        let mut t = Table::new(self.header(), &self.minimums());
        t.fit(&self.rows(images, now));
        t
    }

    pub fn rows(self, images: &[BackingImage], now: jiff::Timestamp) -> Vec<Vec<String>> {
        images.iter().map(|b| self.row(b, now)).collect()
    }

    fn row(self, b: &BackingImage, now: jiff::Timestamp) -> Vec<String> {
        let st = b.status.clone().unwrap_or_default();
        let file = st.file();
        let secret = if b.spec.secret.is_empty() {
            "-".into()
        } else {
            format!("{}/{}", b.spec.secret_namespace, b.spec.secret)
        };
        // Before the copy starts (a key being derived, a download connecting) there is no
        // percentage to give: 0% would read as stuck.
        let progress = match file.state {
            State::Pending | State::Starting => "-".to_string(),
            _ => format!("{}%", file.progress),
        };
        let or_dash = |s: String| if s.is_empty() { "-".to_string() } else { s };
        let mut row = vec![
            b.metadata.name.clone(),
            file.state.as_str().to_string(),
            progress,
            size(st.size),
            size(st.virtual_size),
            secret,
        ];
        if self == Columns::Wide {
            row.push(or_dash(st.uuid.clone()));
            row.push(source(b));
            row.push(or_dash(st.checksum.chars().take(CHECKSUM_PREFIX).collect()));
            row.push(age(&file.last_state_transition_time, now));
        }
        row.push(
            if file.message.is_empty() && status::is_longhorn_managed(b) {
                "managed by Longhorn: listed and served, never changed by bifs".to_string()
            } else {
                file.message.clone()
            },
        );
        row
    }
}

/// Where the image came from: `download`, `upload`, `clone parrot (encrypt)`.
fn source(b: &BackingImage) -> String {
    let kind = b.spec.source_type.trim();
    if SourceType::parse(kind) != Some(SourceType::Clone) {
        return if kind.is_empty() {
            "-".into()
        } else {
            kind.into()
        };
    }
    let p = |k: &str| {
        b.spec
            .source_parameters
            .get(k)
            .map(|v| v.trim().to_string())
            .unwrap_or_default()
    };
    let encryption = p(PARAM_ENCRYPTION);
    let encryption = if encryption.is_empty() {
        "ignore".to_string()
    } else {
        encryption
    };
    format!("clone {} ({encryption})", p(PARAM_BACKING_IMAGE))
}

/// kubectl's AGE format (`45s`, `3m12s`, `5h10m`, `12d`) for the time since `rfc3339`: the
/// disk file's last state change (for a ready image, since it was made). `-` when unknown.
pub fn age(rfc3339: &str, now: jiff::Timestamp) -> String {
    let Ok(then) = rfc3339.parse::<jiff::Timestamp>() else {
        return "-".into();
    };
    let secs = now.as_second().saturating_sub(then.as_second()).max(0);
    let (m, h, d) = (secs / 60, secs / 3600, secs / 86400);
    match secs {
        s if s < 120 => format!("{s}s"),
        s if s < 600 => format!("{m}m{}s", s % 60),
        s if s < 3 * 3600 => format!("{m}m"),
        s if s < 8 * 3600 => format!("{h}h{}m", m % 60),
        s if s < 2 * 86400 => format!("{h}h"),
        s if s < 8 * 86400 => format!("{d}d{}h", h % 24),
        _ => format!("{d}d"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_line_up_and_widths_only_grow() {
        let header = ["NAME", "STATE", "MESSAGE"];
        let mut t = Table::new(&header, &[0, 11]);
        let first = vec!["a".to_string(), "ready".into(), "m".into()];
        t.fit(std::slice::from_ref(&first));
        let h = t.line(&header);
        let r = t.line(&first);
        assert_eq!(h, "NAME   STATE         MESSAGE\n");
        assert_eq!(r, "a      ready         m\n");
        // A later state of the known formats keeps the columns.
        let later = t.line(&["a", "in-progress", ""]);
        assert_eq!(later.find("in-progress"), h.find("STATE"));
        assert_eq!(later, "a      in-progress\n");
        // A longer name widens the column for the rows after it.
        t.fit(&[vec!["a-longer-name".into(), "ready".into(), String::new()]]);
        assert_eq!(
            t.line(&["b", "ready", "x"]),
            "b               ready         x\n"
        );
    }

    #[test]
    fn sizes_in_binary_units_never_wider_than_the_column() {
        assert_eq!(size(0), "0 B");
        assert_eq!(size(512), "512 B");
        assert_eq!(size(8 << 20), "8.00 MiB");
        assert_eq!(size((8 << 20) + (16 << 20)), "24.00 MiB");
        assert_eq!(size(1 << 30), "1.00 GiB");
        for b in [1023, 1024 * 1024 - 1, (1 << 30) - 1, u64::MAX] {
            assert!(size(b).len() <= SIZE_WIDTH, "{b}: {}", size(b));
        }
    }

    #[test]
    fn ages_as_kubectl_prints_them() {
        let now: jiff::Timestamp = "2026-01-10T12:00:00Z".parse().unwrap();
        let at = |s: &str| age(s, now);
        assert_eq!(at("2026-01-10T11:59:15Z"), "45s");
        assert_eq!(at("2026-01-10T11:56:48Z"), "3m12s");
        assert_eq!(at("2026-01-10T11:00:00Z"), "60m");
        assert_eq!(at("2026-01-10T06:50:00Z"), "5h10m");
        assert_eq!(at("2026-01-07T10:00:00Z"), "3d2h");
        assert_eq!(at("2025-12-29T12:00:00Z"), "12d");
        assert_eq!(at(""), "-");
    }
}
