use std::collections::BTreeSet;

use super::*;
use crate::report::ProbeSample;

const SCENARIO: &str = r#"
name = "t"

[topology]
sites = 3

[[service]]
name = "web"

[expect]
rto_max = "10s"
rpo_max_writes = 0
final_owner = "s2"
max_failed_probes = 2
"#;

fn scenario() -> Scenario {
    Scenario::parse(SCENARIO, "t.toml").expect("scenario")
}

/// A probe from `s3` at `t` served by `site` with `epoch` (failed when `site` is `None`).
fn sample(t: f64, site: Option<&str>, epoch: u64) -> ProbeSample {
    ProbeSample {
        t,
        vantage: "s3".into(),
        ok: site.is_some(),
        served_by: site.map(str::to_string),
        host: site.map(|_| 1),
        epoch: site.map(|_| epoch),
        write_seq: None,
        latency_ms: Some(0.0),
        error: site.is_none().then(|| "refused".to_string()),
    }
}

/// s1 serves until 5 s, nothing answers until 12 s, then s2.
fn failover(faults: &[f64]) -> Recording {
    let mut rec = Recording::default();
    for &t in faults {
        rec.mark(t, MarkerKind::Fault, "kill".into());
    }
    for i in 0..40 {
        let t = f64::from(i) * 0.5;
        rec.probes.push(match t {
            t if t < 5.0 => sample(t, Some("s1"), 1),
            t if t < 12.0 => sample(t, None, 0),
            t => sample(t, Some("s2"), 2),
        });
    }
    rec
}

fn end(owner: &str) -> EndState {
    EndState {
        final_owner: Some(owner.into()),
        ..Default::default()
    }
}

fn measure(c: &Conclusion, name: &str) -> Option<f64> {
    c.measures
        .iter()
        .find(|m| m.name == name)
        .unwrap_or_else(|| panic!("no measure {name}"))
        .value
}

fn verdict(c: &Conclusion, name: &str) -> bool {
    c.expectations
        .iter()
        .find(|e| e.name == name)
        .unwrap_or_else(|| panic!("no expectation {name}"))
        .pass
}

#[test]
fn rto_runs_from_the_fault_that_caused_the_outage() {
    // A harmless fault at 1 s, the one that caused the outage at 4.5 s; s2 answers at 12 s.
    let c = measures(
        &failover(&[1.0, 4.5]),
        &end("s2"),
        &LabTiming::default(),
        &scenario(),
        false,
    );
    assert_eq!(measure(&c, "rto"), Some(7.5));
    assert!(verdict(&c, "rto_max"));
}

#[test]
fn rto_runs_from_the_operation_when_nothing_failed() {
    let mut rec = failover(&[]);
    rec.mark(3.0, MarkerKind::Operation, "switchover".into());
    let c = measures(&rec, &end("s2"), &LabTiming::default(), &scenario(), false);
    assert_eq!(measure(&c, "rto"), Some(9.0));
    assert_eq!(
        measure(&c, "detection"),
        None,
        "no fault, nothing to detect"
    );
}

#[test]
fn failed_probes_are_counted_and_judged() {
    let c = measures(
        &failover(&[4.5]),
        &end("s2"),
        &LabTiming::default(),
        &scenario(),
        false,
    );
    assert_eq!(measure(&c, "failed_probes"), Some(14.0));
    assert!(!verdict(&c, "max_failed_probes"));
    assert!(!c.passed, "one failed expectation fails the drill");
}

#[test]
fn lost_writes_are_acknowledged_writes_the_final_owner_does_not_hold() {
    let mut rec = failover(&[4.5]);
    rec.acked = BTreeSet::from([1, 2, 3, 4]);
    let mut e = end("s2");
    e.held = Some(BTreeSet::from([1, 2, 4]));
    let c = measures(&rec, &e, &LabTiming::default(), &scenario(), false);
    assert_eq!(measure(&c, "rpo_writes"), Some(1.0));
    assert!(!verdict(&c, "rpo_max_writes"));
    e.held = None;
    let c = measures(&rec, &e, &LabTiming::default(), &scenario(), false);
    assert_eq!(
        measure(&c, "rpo_writes"),
        None,
        "nobody to ask: not measured"
    );
}

#[test]
fn detection_is_the_first_down_verdict_after_the_first_fault() {
    let event = |at_ms: u64, message: &str| EventView {
        revision: 1,
        at_ms,
        actor: "n1".into(),
        message: message.into(),
    };
    let e = EndState {
        started_unix_ms: 100_000,
        events: vec![
            event(100_500, "site s9 is down"),
            event(106_000, "service web moved"),
            event(107_250, "site s1 is down"),
        ],
        ..end("s2")
    };
    let c = measures(
        &failover(&[4.5]),
        &e,
        &LabTiming::default(),
        &scenario(),
        false,
    );
    assert_eq!(measure(&c, "detection"), Some(2.75));
}

#[test]
fn expectations_judge_the_final_owner() {
    let c = measures(
        &failover(&[4.5]),
        &end("s3"),
        &LabTiming::default(),
        &scenario(),
        false,
    );
    assert!(!verdict(&c, "final_owner"));
}

#[test]
fn a_test_failover_expects_only_no_failed_probe_in_production() {
    let c = measures(
        &failover(&[]),
        &end("s1"),
        &LabTiming::default(),
        &scenario(),
        true,
    );
    let names: Vec<&str> = c.expectations.iter().map(|e| e.name.as_str()).collect();
    assert!(!names.contains(&"final_owner"), "{names:?}");
    assert!(!verdict(&c, "max_failed_probes"));
}
