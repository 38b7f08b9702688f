//! Hosts follow the state through a relay (their site's voter), not as Raft learners: real
//! agents, real WAN, one relay killed mid-way.

use std::time::Duration;

use consensus::state::FabricState;
use fabric_tests::{TestLab, eventually};
use siteagent::api::{MemberView, Status, WriteResult};

/// The notes `state` holds, in order.
fn notes(state: &FabricState) -> Vec<String> {
    state
        .events
        .iter()
        .filter(|e| e.message.starts_with("relay note "))
        .map(|e| e.message.clone())
        .collect()
}

#[test]
fn a_host_follows_the_state_through_its_sites_voter_and_resumes_through_another_when_it_dies() {
    // 3 sites x 2 agents: nodes 1, 3, 5 vote (one per site), 2, 4, 6 are hosts only.
    let lab = TestLab::up(3, 2);
    let voters = [1u64, 3, 5];
    let status: Status = lab.ctl(&["status"]).expect("status");
    let leader = status.leader.expect("a leader");

    // The leader replicates to the voters only.
    let at_leader: Status = lab
        .ctl_at(&lab.proc(leader).admin, &["status"])
        .expect("leader status");
    assert_eq!(at_leader.voters, voters, "{at_leader:?}");
    assert!(at_leader.learners.is_empty(), "{at_leader:?}");
    let members: Vec<MemberView> = lab.ctl(&["members", "list"]).expect("members");
    for host in [2u64, 4, 6] {
        let m = members.iter().find(|m| m.node == host);
        assert_eq!(m.map(|m| m.role.as_str()), Some("host"), "{members:?}");
    }

    // A host whose site's voter does not lead: its relay can die without an election.
    let relay = voters
        .into_iter()
        .find(|v| *v != leader)
        .expect("a voter that does not lead");
    let host = relay + 1;
    let host_admin = lab.proc(host).admin;
    let at_host: Status = lab.ctl_at(&host_admin, &["status"]).expect("host status");
    assert_eq!(at_host.raft_state, "relayed", "{at_host:?}");
    assert_eq!(at_host.leader, Some(leader), "the relay names the leader");

    let note = |n: u32| {
        let r: WriteResult = lab
            .ctl(&["note", &format!("relay note {n}")])
            .expect("note");
        r.revision
    };
    let reaches_host = |what: &str, revision: u64| {
        eventually(Duration::from_secs(30), what, || {
            let s: FabricState = lab.ctl_at(&host_admin, &["state", "--local"])?;
            Ok((s.revision >= revision).then_some(s))
        })
    };
    let first = note(1);
    let seen = reaches_host("the note reaches the host", first);
    assert_eq!(notes(&seen), ["relay note 1"]);

    lab.kill9(relay);
    let mut last = 0;
    for n in 2..=6 {
        last = note(n);
    }
    reaches_host("notes after the relay died reach the host", last);
    // Nothing missed, nothing doubled: once quiet, the host's copy is the leader's, exactly.
    let leader_admin = lab.proc(leader).admin;
    let (host_state, leader_state) =
        eventually(Duration::from_secs(60), "host and leader agree", || {
            let l: FabricState = lab.ctl_at(&leader_admin, &["state", "--local"])?;
            let h: FabricState = lab.ctl_at(&host_admin, &["state", "--local"])?;
            Ok((h == l).then_some((h, l)))
        });
    assert_eq!(
        notes(&host_state),
        (1..=6)
            .map(|n| format!("relay note {n}"))
            .collect::<Vec<_>>()
    );
    assert!(leader_state.revision >= last);
    let log = lab.log(host);
    let dead = lab.proc(relay).address;
    let now_from = log
        .lines()
        .rev()
        .find(|l| l.contains("following the state through"))
        .unwrap_or_default()
        .to_string();
    assert!(
        !now_from.is_empty() && !now_from.contains(&dead),
        "the host follows another relay than the dead {dead}: {now_from}"
    );
}

/// The value of the unlabelled counter or gauge `name` in Prometheus text (0 when absent).
fn sample(text: &str, name: &str) -> f64 {
    text.lines()
        .filter_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
        .find_map(|v| v.trim().parse().ok())
        .unwrap_or(0.0)
}

#[test]
fn hosts_confirm_their_leases_through_their_sites_relay_and_keep_them_when_it_dies() {
    // 3 sites x 3 agents: nodes 1, 4, 7 vote, the others are hosts.
    let lab = TestLab::up(3, 3);
    let status: Status = lab.ctl(&["status"]).expect("status");
    let leader = status.leader.expect("a leader");
    let relay = [1u64, 4, 7]
        .into_iter()
        .find(|v| *v != leader)
        .expect("a voter that does not lead");
    let hosts = [relay + 1, relay + 2];

    // The relay carries its hosts' confirmations; the leader answers them in batches.
    eventually(
        Duration::from_secs(30),
        "confirmations go through the relay",
        || {
            let relayed = sample(
                &lab.metrics(relay)?,
                "fabric_lease_confirmations_relayed_total",
            );
            let batches = sample(
                &lab.metrics(leader)?,
                "fabric_lease_confirmation_batches_total",
            );
            Ok((relayed >= 4.0 && batches >= 1.0).then_some(()))
        },
    );
    for host in hosts {
        let text = lab.metrics(host).expect("host metrics");
        assert!(
            sample(&text, "fabric_lease_remaining_seconds") > 0.0,
            "host {host} holds no lease:\n{text}"
        );
    }

    // Its relay dies: the hosts confirm through the leader instead, without a gap. The lab's
    // lease is 5 s; watch for twice that.
    lab.kill9(relay);
    let until = std::time::Instant::now() + Duration::from_secs(10);
    while std::time::Instant::now() < until {
        for host in hosts {
            let text = lab.metrics(host).expect("host metrics");
            assert!(
                sample(&text, "fabric_lease_remaining_seconds") > 0.0,
                "host {host} lost its lease when its relay died:\n{text}"
            );
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    for host in hosts {
        let log = lab.log(host);
        assert!(
            !log.contains("lease expired"),
            "host {host} fenced itself when its relay died:\n{log}"
        );
    }
}
