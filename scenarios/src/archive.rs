//! A drill's report directory: `report.json` (the [`Report`] as data) and `timeline.svg` (its
//! picture), written after a run and read back by `sitectl drill report`.
//!
//! Invariant: `report.json` is the whole report; the picture is derived from it and can always be
//! drawn again ([`crate::svg::timeline`]).
//!
//! It does not build or judge a report (the runner does) nor draw it ([`crate::svg`]).

use std::path::{Path, PathBuf};

use crate::report::Report;

/// File name of the JSON report inside the report directory.
pub const REPORT_JSON: &str = "report.json";
/// File name of the timeline picture inside the report directory.
pub const TIMELINE_SVG: &str = "timeline.svg";

/// Paths of the files [`write`] wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Written {
    /// The report as pretty JSON.
    pub json: PathBuf,
    /// The timeline picture.
    pub svg: PathBuf,
}

/// Why a report could not be written or read.
#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    #[error("cannot create report directory {path}")]
    CreateDir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot encode the report for {path}")]
    Encode {
        path: PathBuf,
        source: serde_json::Error,
    },
    #[error("cannot write {path}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot read {path}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} is not a drill report")]
    Parse {
        path: PathBuf,
        source: serde_json::Error,
    },
}

/// Writes `report.json` (pretty) and `timeline.svg` of `report` into `dir`, creating it.
pub fn write(report: &Report, dir: &Path) -> Result<Written, ReportError> {
    std::fs::create_dir_all(dir).map_err(|source| ReportError::CreateDir {
        path: dir.to_path_buf(),
        source,
    })?;
    let json = dir.join(REPORT_JSON);
    let mut text = serde_json::to_string_pretty(report).map_err(|source| ReportError::Encode {
        path: json.clone(),
        source,
    })?;
    text.push('\n');
    std::fs::write(&json, text).map_err(|source| ReportError::Write {
        path: json.clone(),
        source,
    })?;
    let svg = dir.join(TIMELINE_SVG);
    std::fs::write(&svg, crate::svg::timeline(report)).map_err(|source| ReportError::Write {
        path: svg.clone(),
        source,
    })?;
    Ok(Written { json, svg })
}

/// Reads a `report.json` written by [`write`].
pub fn load(path: impl AsRef<Path>) -> Result<Report, ReportError> {
    let path = path.as_ref();
    let text = std::fs::read_to_string(path).map_err(|source| ReportError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    serde_json::from_str(&text).map_err(|source| ReportError::Parse {
        path: path.to_path_buf(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn load_names_the_missing_file() {
        let err = load("/nonexistent/report.json").expect_err("no such file");
        assert!(
            err.to_string().contains("/nonexistent/report.json"),
            "{err}"
        );
    }
}
