//! Printing answers as a table for people or as JSON for programs.

use clap::ValueEnum;
use comfy_table::{Table, presets::UTF8_BORDERS_ONLY};
use serde::Serialize;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Default)]
pub enum Output {
    #[default]
    Table,
    Json,
}

/// Writes a line to stdout; a closed pipe (`sitectl ... | head`) ends output quietly.
pub fn emit(text: impl std::fmt::Display) {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    if let Err(e) = writeln!(out, "{text}")
        && e.kind() != std::io::ErrorKind::BrokenPipe
    {
        eprintln!("sitectl: cannot write output: {e}");
    }
}

/// Prints `value` as JSON, or as a table built from `rows`.
pub fn print<T: Serialize>(
    output: Output,
    value: &T,
    header: &[&str],
    rows: impl FnOnce() -> Vec<Vec<String>>,
) -> anyhow::Result<()> {
    match output {
        Output::Json => emit(serde_json::to_string_pretty(value)?),
        Output::Table => {
            let mut table = Table::new();
            table.load_preset(UTF8_BORDERS_ONLY);
            table.set_header(header.to_vec());
            for row in rows() {
                table.add_row(row);
            }
            emit(table);
        }
    }
    Ok(())
}

/// How long ago a unix-ms time was, for people.
pub fn ago(ms: u64) -> String {
    let now = siteagent::clock::unix_ms();
    if ms == 0 {
        return "-".into();
    }
    let secs = now.saturating_sub(ms) / 1000;
    match secs {
        0..=119 => format!("{secs}s ago"),
        120..=7199 => format!("{}m ago", secs / 60),
        _ => format!("{}h ago", secs / 3600),
    }
}

pub fn lower<T: std::fmt::Debug>(v: &T) -> String {
    format!("{v:?}").to_lowercase()
}

/// `println!` that ends quietly on a closed pipe.
#[macro_export]
macro_rules! out {
    ($($t:tt)*) => { $crate::output::emit(format_args!($($t)*)) };
}
