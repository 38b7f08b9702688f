//! TOML files as the lab and drills read them: errors are one line that names the file, the
//! line and column, and what was wrong (`sitectl` prints errors on one line).

use std::path::Path;

use anyhow::Context as _;
use serde::de::DeserializeOwned;

/// `line L, column C (`the line`): message` for a parse error in `text`: the quoted line names
/// the field even when toml's message does not (e.g. a value of the wrong kind).
pub fn describe(e: &toml::de::Error, text: &str) -> String {
    const QUOTE_MAX: usize = 80;
    let message = e.message().trim_end().replace('\n', " ");
    let Some(span) = e.span() else {
        return message;
    };
    let start = span.start.min(text.len());
    let line_start = text[..start].rfind('\n').map_or(0, |i| i + 1);
    let line_end = text[start..].find('\n').map_or(text.len(), |i| start + i);
    let (line, column) = position(text, start);
    let source = text[line_start..line_end].trim();
    if source.is_empty() {
        return format!("line {line}, column {column}: {message}");
    }
    let quoted: String = if source.chars().count() > QUOTE_MAX {
        source.chars().take(QUOTE_MAX).chain("…".chars()).collect()
    } else {
        source.to_string()
    };
    format!("line {line}, column {column} (`{quoted}`): {message}")
}

/// Line and column (both 1-based, the column in characters) of byte `offset` of `text`.
pub fn position(text: &str, offset: usize) -> (usize, usize) {
    let mut offset = offset.min(text.len());
    while !text.is_char_boundary(offset) {
        offset -= 1;
    }
    let line_start = text[..offset].rfind('\n').map_or(0, |i| i + 1);
    (
        text[..offset].matches('\n').count() + 1,
        text[line_start..offset].chars().count() + 1,
    )
}

/// Reads and parses `path`.
pub fn read<T: DeserializeOwned>(path: &Path) -> anyhow::Result<T> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    toml::from_str(&text)
        .map_err(|e| anyhow::anyhow!("{}: {}", path.display(), describe(&e, &text)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct File {
        name: String,
        #[serde(default)]
        size: u32,
    }

    fn error(text: &str) -> String {
        let e = toml::from_str::<File>(text).expect_err("bad file");
        describe(&e, text)
    }

    #[test]
    fn errors_name_line_column_and_field_on_one_line() {
        let unknown = error("name = \"a\"\n\n  colour = 3\n");
        assert!(
            unknown.starts_with("line 3, column 3 (`colour = 3`): unknown field `colour`"),
            "{unknown}"
        );
        let wrong = error("name = \"a\"\nsize = \"big\"\n");
        assert!(
            wrong.starts_with("line 2, column 8 (`size = \"big\"`):"),
            "{wrong}"
        );
        assert!(wrong.contains("expected u32"), "{wrong}");
        let missing = error("size = 1\n");
        assert!(missing.contains("missing field `name`"), "{missing}");
        for e in [unknown, wrong, missing] {
            assert!(!e.contains('\n'), "{e}");
        }
    }
}
