//! Synthetic drill reports for the report and timeline tests: a three-site drill in which site
//! `east` is killed at 10 s, the service fails over to `west` at 16 s, and probes fail between.

#![allow(dead_code)]

use scenarios::report::{
    DnsChange, ExpectationResult, Marker, MarkerKind, Measure, OwnerChange, ProbeSample, Report,
};

pub const SITES: [&str; 3] = ["east", "west", "north"];
/// A marker label that must be escaped in XML.
pub const NASTY_LABEL: &str = "kill <east> & \"friends\"";

/// A 40 s drill with a probe every half second from each site.
pub fn failover_drill() -> Report {
    let mut probes = Vec::new();
    let mut seq = 0;
    for step in 0..80 {
        let t = f64::from(step) * 0.5;
        for vantage in SITES {
            // Between the fault (10 s) and the new owner answering (16 s) nothing answers.
            let ok = !(10.0..16.0).contains(&t);
            let served_by = if t < 10.0 { "east" } else { "west" };
            if ok {
                seq += 1;
            }
            probes.push(ProbeSample {
                t: t + 0.01,
                vantage: vantage.into(),
                ok,
                served_by: ok.then(|| served_by.into()),
                host: ok.then_some(if t < 10.0 { 1 } else { 4 }),
                epoch: ok.then_some(if t < 10.0 { 1 } else { 2 }),
                write_seq: ok.then_some(seq),
                latency_ms: ok.then_some(12.5),
                error: (!ok).then(|| "connect: connection refused <tcp>".into()),
            });
        }
    }
    Report {
        scenario: "site-loss".into(),
        description: "Lose the primary site; the service must come back in the west.".into(),
        seed: 42,
        started_unix_ms: 1_790_000_000_000,
        duration_s: 40.0,
        sites: SITES.iter().map(|s| s.to_string()).collect(),
        service: "web".into(),
        probes,
        markers: vec![
            Marker {
                t: 5.0,
                kind: MarkerKind::Wait,
                label: "wait 5s".into(),
            },
            Marker {
                t: 10.0,
                kind: MarkerKind::Fault,
                label: NASTY_LABEL.into(),
            },
            Marker {
                t: 30.0,
                kind: MarkerKind::Heal,
                label: "restart east".into(),
            },
            Marker {
                t: 35.0,
                kind: MarkerKind::Operation,
                label: "switchover to east".into(),
            },
        ],
        owners: vec![
            OwnerChange {
                t: 0.0,
                site: Some("east".into()),
                epoch: 1,
            },
            OwnerChange {
                t: 14.0,
                site: None,
                epoch: 1,
            },
            OwnerChange {
                t: 16.0,
                site: Some("west".into()),
                epoch: 2,
            },
        ],
        dns: vec![
            DnsChange {
                t: 0.2,
                vantage: "east".into(),
                answer: vec!["10.1.0.10".into()],
            },
            DnsChange {
                t: 10.0,
                vantage: "east".into(),
                answer: vec!["SERVFAIL".into()],
            },
            DnsChange {
                t: 0.2,
                vantage: "west".into(),
                answer: vec!["10.1.0.10".into()],
            },
            DnsChange {
                t: 16.5,
                vantage: "west".into(),
                answer: vec!["10.2.0.10".into(), "10.2.0.11".into()],
            },
        ],
        replicas: vec![],
        measures: vec![
            Measure {
                name: "rto".into(),
                value: Some(6.0),
                unit: "s".into(),
                bound: Some(12.0),
                how: "first failed probe to first probe served by west".into(),
            },
            Measure {
                name: "rpo_writes".into(),
                value: Some(0.0),
                unit: "writes".into(),
                bound: None,
                how: "acknowledged writes missing after failover".into(),
            },
            Measure {
                name: "detection".into(),
                value: None,
                unit: "s".into(),
                bound: Some(3.0),
                how: "not logged by the detector".into(),
            },
        ],
        expectations: vec![
            ExpectationResult {
                name: "rto_max".into(),
                expected: "≤ 12 s".into(),
                measured: "6 s".into(),
                pass: true,
                detail: "6 s under the bound".into(),
            },
            ExpectationResult {
                name: "final_owner".into(),
                expected: "east".into(),
                measured: "west".into(),
                pass: false,
                detail: "switchover to east did not complete".into(),
            },
        ],
        passed: false,
    }
}

/// A report with nothing in it: no probes, markers, changes, measures or expectations.
pub fn empty_drill() -> Report {
    Report {
        scenario: String::new(),
        description: String::new(),
        seed: 0,
        started_unix_ms: 0,
        duration_s: 0.0,
        sites: vec![],
        service: String::new(),
        probes: vec![],
        markers: vec![],
        owners: vec![],
        dns: vec![],
        replicas: vec![],
        measures: vec![],
        expectations: vec![],
        passed: true,
    }
}
