//! Printing answers as a table for people or as JSON for programs.
//!
//! The JSON is the API value itself; the text for people is drawn by [`views`], one pure
//! function per view, so every table is tested without a running fabric. This module only
//! chooses between the two and writes to stdout.

pub mod views;

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

/// Prints `value` as JSON, or as the text `view` draws of it.
pub fn print<T: Serialize + ?Sized>(
    output: Output,
    value: &T,
    view: impl FnOnce(&T) -> String,
) -> anyhow::Result<()> {
    match output {
        Output::Json => emit(serde_json::to_string_pretty(value)?),
        Output::Table => emit(view(value)),
    }
    Ok(())
}

/// A table with the CLI's borders, `header` over `rows`, drawn as text.
pub fn table(header: &[&str], rows: impl IntoIterator<Item = Vec<String>>) -> String {
    let mut table = Table::new();
    table.load_preset(UTF8_BORDERS_ONLY);
    table.set_header(header.to_vec());
    for row in rows {
        table.add_row(row);
    }
    table.to_string()
}

/// The wall clock (unix ms) that [`ago`] measures from; read once per command.
pub use siteagent::clock::unix_ms as now_ms;

/// How long before `now_ms` a unix-ms time was, for people; `-` for a time never set (0).
pub fn ago(ms: u64, now_ms: u64) -> String {
    if ms == 0 {
        return "-".into();
    }
    let secs = now_ms.saturating_sub(ms) / 1000;
    match secs {
        0..=119 => format!("{secs}s ago"),
        120..=7199 => format!("{}m ago", secs / 60),
        _ => format!("{}h ago", secs / 3600),
    }
}

/// An enum's name in lower case (`HostState::Draining` → `draining`).
pub fn lower<T: std::fmt::Debug>(v: &T) -> String {
    format!("{v:?}").to_lowercase()
}

/// `println!` that ends quietly on a closed pipe.
#[macro_export]
macro_rules! out {
    ($($t:tt)*) => { $crate::output::emit(format_args!($($t)*)) };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ago_counts_seconds_then_minutes_then_hours_and_marks_unset_times() {
        let now = 10_000_000;
        assert_eq!(ago(0, now), "-");
        assert_eq!(ago(now - 5_000, now), "5s ago");
        assert_eq!(ago(now - 119_999, now), "119s ago");
        assert_eq!(ago(now - 120_000, now), "2m ago");
        assert_eq!(ago(now - 7_200_000, now), "2h ago");
        // A time ahead of this clock (another node's skew) is "now", not a panic.
        assert_eq!(ago(now + 5_000, now), "0s ago");
    }
}
