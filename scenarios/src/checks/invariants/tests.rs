use super::*;
use crate::scenario::Expect;

fn direct(round: u64, t: f64, addr: &str, site: &str, epoch: u64) -> DirectSample {
    DirectSample {
        round,
        sent: t,
        answered: t + 0.002,
        addr: addr.into(),
        site: site.into(),
        host: 1,
        epoch,
    }
}

fn probe(t: f64, vantage: &str, served: Option<(&str, u64)>) -> ProbeSample {
    ProbeSample {
        t,
        vantage: vantage.into(),
        ok: served.is_some(),
        served_by: served.map(|(s, _)| s.to_string()),
        host: served.map(|_| 1),
        epoch: served.map(|(_, e)| e),
        write_seq: None,
        latency_ms: Some(10.0),
        error: served.is_none().then(|| "connect refused".to_string()),
    }
}

fn event(at_s: f64, actor: &str, message: &str) -> EventView {
    EventView {
        revision: 1,
        at_ms: 1_000_000 + (at_s * 1000.0) as u64,
        actor: actor.into(),
        message: message.into(),
    }
}

/// s1 answers directly until round 10, s2 (epoch 2) from round 14 on.
fn clean_handover() -> Vec<DirectSample> {
    (0u32..20)
        .filter_map(|r| {
            let t = f64::from(r) * 0.25;
            match r {
                0..10 => Some(direct(r.into(), t, "127.10.1.1:8080", "s1", 1)),
                10..14 => None,
                _ => Some(direct(r.into(), t, "127.10.2.1:8080", "s2", 2)),
            }
        })
        .collect()
}

#[test]
fn a_clean_handover_seen_directly_is_one_site_at_a_time() {
    assert_eq!(instances_split(&clean_handover()), None);
    assert_eq!(double_rounds(&clean_handover()), 0);
}

#[test]
fn two_instances_of_one_site_in_a_round_are_counted_not_failed() {
    let mut doubled = clean_handover();
    doubled.push(direct(3, 0.75, "127.10.1.2:8080", "s1", 1));
    assert_eq!(instances_split(&doubled), None);
    assert_eq!(double_rounds(&doubled), 1);
}

#[test]
fn two_sites_answering_one_round_of_direct_probes_is_split_brain() {
    let mut split = clean_handover();
    // s1's instance still answers in round 15, beside s2's.
    split.push(direct(15, 3.75, "127.10.1.1:8080", "s1", 1));
    let found = instances_split(&split).expect("split brain");
    assert!(found.contains("answered by 2 sites"), "{found}");
    assert!(found.contains("127.10.1.1:8080 = site s1"), "{found}");
}

#[test]
fn an_older_epoch_answering_directly_after_a_newer_one_is_split_brain() {
    // Not in the same round, so only the epoch order can tell.
    let mut late = clean_handover();
    late.push(direct(100, 30.0, "127.10.1.2:8080", "s1", 1));
    let found = instances_split(&late).expect("split brain");
    assert!(found.starts_with("direct probes:"), "{found}");
}

#[test]
fn epochs_going_up_everywhere_pass() {
    let probes = vec![
        probe(0.0, "s1", Some(("s1", 1))),
        probe(5.0, "s1", Some(("s2", 2))),
        probe(6.0, "s2", Some(("s2", 2))),
    ];
    let owners = vec![
        OwnerChange {
            t: 0.0,
            site: Some("s1".into()),
            epoch: 1,
        },
        OwnerChange {
            t: 4.0,
            site: Some("s2".into()),
            epoch: 2,
        },
    ];
    assert_eq!(
        epoch_regressions(&probes, &clean_handover(), &owners),
        Vec::<String>::new()
    );
}

#[test]
fn an_epoch_going_backwards_in_a_stream_or_in_the_owner_record_fails() {
    let probes = vec![
        probe(0.0, "s3", Some(("s2", 2))),
        probe(1.0, "s3", Some(("s1", 1))),
    ];
    let found = epoch_regressions(&probes, &[], &[]);
    assert!(
        found
            .iter()
            .any(|f| f.starts_with("probes from s3: epoch 2")),
        "{found:?}"
    );
    let owners = vec![
        OwnerChange {
            t: 0.0,
            site: Some("s2".into()),
            epoch: 3,
        },
        OwnerChange {
            t: 4.0,
            site: Some("s1".into()),
            epoch: 1,
        },
    ];
    let found = epoch_regressions(&[], &[], &owners);
    assert_eq!(
        found,
        vec!["owner record: epoch 3 at 0.00 s, then epoch 1 at 4.00 s".to_string()]
    );
}

#[test]
fn an_epoch_going_backwards_across_streams_fails() {
    // Each stream alone goes up; s1's vantage sees epoch 1 after s2's saw epoch 2.
    let probes = vec![
        probe(0.0, "s2", Some(("s2", 2))),
        probe(1.0, "s1", Some(("s1", 1))),
    ];
    let found = epoch_regressions(&probes, &[], &[]);
    assert_eq!(found.len(), 1, "{found:?}");
    assert!(found[0].starts_with("across all streams:"), "{found:?}");
}

#[test]
fn served_at_end_looks_at_each_vantages_last_probe() {
    let probes = vec![
        probe(0.0, "s1", None),
        probe(1.0, "s1", Some(("s2", 2))),
        probe(0.5, "s2", Some(("s2", 2))),
        probe(1.5, "s2", None),
    ];
    let v = served_at_end(&probes, &["s1".into(), "s2".into(), "s3".into()]);
    assert!(v[0].1.is_ok());
    assert_eq!(v[1].1, Err("failed at 1.50 s: connect refused".to_string()));
    assert_eq!(v[2].1, Err("no probe".to_string()));
    let expect = Expect {
        served_at_end: true,
        ..Expect::default()
    };
    let o = Observed {
        served_at_end: v,
        ..Observed::default()
    };
    let r = evaluate(&expect, &o);
    assert!(
        !r[0].pass && r[0].measured == "1 of 3 vantages served",
        "{r:?}"
    );
}

/// Served by s1 until 4 s, nothing from 4 s to `end`, then s2; another vantage failing alone
/// in between is no outage of the service.
fn outage_until(end: f64) -> Vec<ProbeSample> {
    let mut probes = vec![
        probe(0.0, "s1", Some(("s1", 1))),
        probe(1.0, "s2", None),
        probe(2.0, "s1", Some(("s1", 1))),
    ];
    let mut t = 4.0;
    while t < end {
        probes.push(probe(t, "s1", None));
        probes.push(probe(t + 0.1, "s2", None));
        t += 0.5;
    }
    probes.push(probe(end, "s2", Some(("s2", 2))));
    probes
}

#[test]
fn outages_are_times_when_no_vantage_was_served() {
    let found = outages(&outage_until(20.0), &[], 1_000_000, "web");
    // s2 failing alone at 1 s is only the gap between two of s1's answers.
    assert_eq!(found.len(), 2, "{found:?}");
    assert!((found[0].length() - 2.0).abs() < 1e-9, "{found:?}");
    let o = &found[1];
    assert!(
        (o.from - 2.01).abs() < 1e-9 && (o.to - 20.01).abs() < 1e-9,
        "{o:?}"
    );
    assert!(!o.open);
}

#[test]
fn an_unexplained_long_outage_fails_and_an_explained_one_passes() {
    let expect = Expect {
        outages_explained: true,
        ..Expect::default()
    };
    let judge = |events: &[EventView]| {
        let o = Observed {
            outages: outages(&outage_until(20.0), events, 1_000_000, "web"),
            outage_bound: 11.25,
            ..Observed::default()
        };
        evaluate(&expect, &o).remove(0)
    };
    // Before and after the outage, and one observer's view of a peer inside it: silent.
    let silent = judge(&[
        event(1.0, "planner (node 1)", "site s3 is down"),
        event(6.0, "node 4", "node 4 sees node 1 down"),
        event(25.0, "planner (node 1)", "host 2 is up"),
    ]);
    assert!(!silent.pass, "{silent:?}");
    assert!(silent.detail.contains("with no event"), "{silent:?}");
    let verdict = judge(&[event(5.5, "planner (node 2)", "site s1 is down")]);
    assert!(verdict.pass, "{verdict:?}");
    assert!(verdict.detail.contains("site s1 is down"), "{verdict:?}");
    let fenced = judge(&[event(
        9.0,
        "node 1",
        "service web on host 1 exited (lease expired)",
    )]);
    assert!(fenced.pass, "{fenced:?}");
    // A short outage needs no event.
    let o = Observed {
        outages: outages(&outage_until(8.0), &[], 1_000_000, "web"),
        outage_bound: 11.25,
        ..Observed::default()
    };
    assert!(evaluate(&expect, &o)[0].pass);
}

#[test]
fn an_outage_that_never_ends_is_open_and_needs_an_event() {
    let mut probes = outage_until(20.0);
    probes.pop();
    let found = outages(&probes, &[], 1_000_000, "web");
    assert!(found[1].open, "{found:?}");
}

#[test]
fn writes_are_accounted_to_the_volume_of_the_site_that_acknowledged_them() {
    let mut probes = vec![
        probe(0.0, "s1", Some(("s1", 1))),
        probe(1.0, "s1", Some(("s1", 1))),
        probe(2.0, "s2", Some(("s2", 2))),
    ];
    for (p, seq) in probes.iter_mut().zip(1..) {
        p.write_seq = Some(seq);
    }
    let volumes = BTreeMap::from([
        ("s1".to_string(), BTreeSet::from([1, 2])),
        ("s2".to_string(), BTreeSet::from([3])),
    ]);
    let ok = account_writes(&probes, &volumes);
    assert!(ok.misplaced.is_empty());
    assert_eq!(ok.acked_by_site["s1"], 2);
    // Write 2 is on no volume, write 3 only on another site's.
    let volumes = BTreeMap::from([("s1".to_string(), BTreeSet::from([1, 3]))]);
    let bad = account_writes(&probes, &volumes);
    assert_eq!(
        bad.misplaced,
        vec![(2, "s1".to_string()), (3, "s2".to_string())]
    );
    let expect = Expect {
        writes_where_acked: true,
        ..Expect::default()
    };
    let o = Observed {
        writes: Some(bad),
        ..Observed::default()
    };
    let r = evaluate(&expect, &o).remove(0);
    assert!(
        !r.pass && r.detail.contains("write 3 (acknowledged by s2)"),
        "{r:?}"
    );
}

#[test]
fn no_direct_answer_at_all_fails_the_instance_check() {
    let expect = Expect {
        instances_one_site: true,
        ..Expect::default()
    };
    let r = evaluate(&expect, &Observed::default()).remove(0);
    assert!(
        !r.pass && r.detail.contains("no instance ever answered"),
        "{r:?}"
    );
}
