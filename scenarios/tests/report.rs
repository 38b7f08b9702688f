//! The drill report as data and as a terminal table: what it says, and that it survives a trip
//! through JSON and through the report directory.

mod common;

use scenarios::archive::{self, REPORT_JSON, ReportError, TIMELINE_SVG};
use scenarios::report::Report;

#[test]
fn failure_windows_of_the_sample_span_the_outage_for_every_vantage() {
    let report = common::failover_drill();
    for site in common::SITES {
        assert_eq!(report.failure_windows(site), vec![(10.01, 16.01)], "{site}");
        assert!(!report.unrecovered(site));
    }
}

#[test]
fn first_ok_after_the_fault_served_by_the_new_owner_gives_the_recovery_time() {
    let report = common::failover_drill();
    let back = report.first_ok_after(10.0, |p| p.served_by.as_deref() == Some("west"));
    assert_eq!(back, Some(16.01));
}

#[test]
fn summary_table_shows_every_expectation_with_its_verdict_and_detail() {
    let report = common::failover_drill();
    let text = report.summary_table();
    for e in &report.expectations {
        let line = text
            .lines()
            .find(|l| l.contains(&e.name))
            .unwrap_or_else(|| panic!("no row for {} in\n{text}", e.name));
        let verdict = if e.pass { "PASS" } else { "FAIL" };
        assert!(line.contains(verdict), "{line}");
        assert!(line.contains(&e.detail), "{line}");
        assert!(line.contains(&e.expected), "{line}");
    }
}

#[test]
fn summary_table_has_verdict_timeline_measures_and_probe_windows() {
    let report = common::failover_drill();
    let text = report.summary_table();
    assert!(text.starts_with("drill site-loss — FAIL"), "{text}");
    assert!(text.contains("seed 42"), "{text}");
    assert!(text.contains("1 of 2 expectations held"), "{text}");
    // Timeline in time order: the fault before the owner change it caused.
    let fault = text.find("fault: kill <east>").expect("fault in timeline");
    let owner = text.find("owner → west (epoch 2)").expect("owner change");
    assert!(fault < owner, "{text}");
    assert!(
        text.contains("dns from west → 10.2.0.10, 10.2.0.11"),
        "{text}"
    );
    // Measures with bounds and the unmeasured one.
    assert!(text.contains("6 s") && text.contains("12 s"), "{text}");
    assert!(text.contains("not measured"), "{text}");
    // Probe counts per vantage: 12 of 80 probes fell in the outage.
    let east = text
        .lines()
        .find(|l| l.contains("east") && l.contains("68"))
        .unwrap_or_else(|| panic!("no probe row for east in\n{text}"));
    assert!(east.contains("12") && east.contains("10.0–16.0"), "{east}");
}

#[test]
fn summary_table_wraps_a_long_how_instead_of_growing_wide() {
    let mut report = common::failover_drill();
    let long = "bound = heartbeat × threshold + lease + margin + DNS TTL + probe interval + 2 × election timeout (a leader lost with the fault is replaced first)";
    report.measures[0].how = long.into();
    let text = report.summary_table();
    let widest = text.lines().map(|l| l.chars().count()).max().unwrap_or(0);
    assert!(widest <= 110, "{widest} columns:\n{text}");
    // Wrapped, not cut: every word of it is still there.
    for word in long.split_whitespace() {
        assert!(text.contains(word), "`{word}` lost:\n{text}");
    }
}

#[test]
fn summary_table_of_an_empty_report_says_none_instead_of_empty_tables() {
    let text = common::empty_drill().summary_table();
    assert!(text.contains("PASS"), "{text}");
    assert!(text.contains("(none)"), "{text}");
}

#[test]
fn json_round_trip_keeps_the_report_equal() {
    let report = common::failover_drill();
    let json = serde_json::to_string_pretty(&report).expect("encode");
    let back: Report = serde_json::from_str(&json).expect("decode");
    assert_eq!(back, report);
    // Marker kinds are lower-case words in the JSON.
    assert!(json.contains(r#""kind": "fault""#), "{json}");
}

#[test]
fn write_then_load_round_trips_and_creates_the_directory() {
    let dir = tempfile::tempdir().expect("tempdir");
    let target = dir.path().join("runs").join("site-loss");
    let report = common::failover_drill();
    let written = archive::write(&report, &target).expect("write");
    assert_eq!(written.json, target.join(REPORT_JSON));
    assert_eq!(written.svg, target.join(TIMELINE_SVG));
    assert_eq!(archive::load(&written.json).expect("load"), report);
    let svg = std::fs::read_to_string(&written.svg).expect("svg written");
    assert!(svg.contains("<svg"));
}

#[test]
fn load_rejects_a_file_that_is_not_a_report_and_names_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("report.json");
    std::fs::write(&path, "{\"scenario\": 3}").expect("write");
    let err = archive::load(&path).expect_err("not a report");
    assert!(matches!(err, ReportError::Parse { .. }), "{err:?}");
    assert!(
        err.to_string().contains(&path.display().to_string()),
        "{err}"
    );
}

#[test]
fn write_into_a_path_that_is_a_file_fails_naming_the_path() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("taken");
    std::fs::write(&file, "x").expect("write");
    let err = archive::write(&common::empty_drill(), &file).expect_err("not a directory");
    assert!(matches!(err, ReportError::CreateDir { .. }), "{err:?}");
    assert!(err.to_string().contains("taken"), "{err}");
}
