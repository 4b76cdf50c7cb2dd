//! Text log lines that a name cannot forge: every field value (image names, paths, URLs, error
//! messages) is written with its control characters escaped, so a newline in a file name
//! shows as `\n` inside its own line instead of starting a line of its own, and a terminal
//! escape sequence in a name is shown, not run. Strings show in Debug form (quoted).

use std::fmt;

use tracing::field::Field;
use tracing_subscriber::field::MakeExt;
use tracing_subscriber::fmt::format::{self, Writer};
use tracing_subscriber::fmt::FormatFields;

/// The field formatter of the text logs.
pub fn fields() -> impl for<'w> FormatFields<'w> + Send + Sync + 'static {
    format::debug_fn(
        |w: &mut Writer<'_>, field: &Field, value: &dyn fmt::Debug| {
            // Debug of a `%display` field or of the message is the raw text: escape it here.
            let text = format!("{value:?}");
            if field.name() != "message" {
                write!(w, "{}=", field.name())?;
            }
            write_escaped(w, &text)
        },
    )
    .delimited(" ")
}

fn write_escaped(w: &mut impl fmt::Write, text: &str) -> fmt::Result {
    for c in text.chars() {
        match c {
            '\n' => w.write_str("\\n")?,
            '\r' => w.write_str("\\r")?,
            '\t' => w.write_str("\\t")?,
            c if c.is_control() => write!(w, "\\u{{{:x}}}", c as u32)?,
            c => w.write_char(c)?,
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_characters_are_escaped() {
        let mut out = String::new();
        write_escaped(&mut out, "a\nINFO forged\r\x1b[31m\u{85}ok").unwrap();
        assert_eq!(out, "a\\nINFO forged\\r\\u{1b}[31m\\u{85}ok");
    }
}
