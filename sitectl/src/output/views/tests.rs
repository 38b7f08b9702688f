//! The views drawn from hand-built values: no lab, no clock.

use std::collections::BTreeMap;

use consensus::state::{
    Capacity, Health, HostState, InstanceState, ServiceSpec, SiteAdmin, SiteState,
};
use emu::{DirectionStats, ParamsSpec};
use failover::planner::Action;
use scenarios::report::ExpectationResult;
use siteagent::api::{HostSummary, InstanceView, PlanStep};
use siteagent::config::AgentRole;

use super::*;

const NOW: u64 = 1_700_000_000_000;

/// The cells of the table row whose first cell is `key` (cells are separated by runs of
/// spaces; no cell here holds two spaces in a row).
fn row(text: &str, key: &str) -> Vec<String> {
    text.lines()
        .map(|l| {
            l.trim_matches(|c: char| c == '│' || c.is_whitespace())
                .split("  ")
                .map(str::trim)
                .filter(|c| !c.is_empty())
                .map(String::from)
                .collect::<Vec<_>>()
        })
        .find(|cells| cells.first().map(String::as_str) == Some(key))
        .unwrap_or_else(|| panic!("no row `{key}` in\n{text}"))
}

/// Lines that are table rows or headers (not borders).
fn content_lines(text: &str) -> usize {
    text.lines().filter(|l| l.starts_with('│')).count()
}

fn status(leader: Option<u64>, lease_valid: bool) -> Status {
    Status {
        node: 2,
        site: "s2".into(),
        roles: vec![AgentRole::Voter, AgentRole::Host],
        leader,
        term: 7,
        voters: vec![1, 2, 3],
        learners: vec![],
        membership_settled: true,
        raft_state: "follower".into(),
        last_log_index: 40,
        applied_index: 40,
        revision: 31,
        hosts: vec![
            HostSummary {
                id: 1,
                site: "s1".into(),
                state: HostState::Down,
            },
            HostSummary {
                id: 2,
                site: "s2".into(),
                state: HostState::Draining,
            },
        ],
        lease_valid,
        lease_remaining_ms: 2_500,
    }
}

#[test]
fn status_of_a_fenced_agent_says_so_and_still_lists_its_hosts() {
    let text = super::status(&status(None, false));
    let first = text.lines().next().expect("a first line");
    assert_eq!(
        first,
        "node 2 (follower), leader none, term 7, voters [1, 2, 3], learners [], applied 40, \
         revision 31, FENCED: lease not confirmed by the majority"
    );
    assert_eq!(row(&text, "1"), ["1", "s1", "down"]);
    assert_eq!(row(&text, "2"), ["2", "s2", "draining"]);
}

#[test]
fn status_with_a_confirmed_lease_names_the_leader_and_the_time_left() {
    let text = super::status(&status(Some(1), true));
    let first = text.lines().next().expect("a first line");
    assert!(first.contains("leader 1, term 7"), "{first}");
    assert!(first.ends_with("lease confirmed (2500 ms left)"), "{first}");
}

#[test]
fn sites_show_the_later_of_the_health_and_admin_changes_and_the_hosts_up() {
    let site = SiteView {
        name: "s1".into(),
        priority: 1,
        state: SiteState::Maintenance,
        health: Health::Up,
        health_since_ms: NOW - 600_000,
        admin: SiteAdmin::Maintenance,
        admin_since_ms: NOW - 30_000,
        hosts: 2,
        hosts_up: 1,
        voters: vec![1],
        services: vec!["web".into(), "db".into()],
    };
    let text = super::sites(&[site], NOW);
    assert_eq!(
        row(&text, "s1"),
        [
            "s1",
            "1",
            "maintenance",
            "up",
            "30s ago",
            "1/2",
            "[1]",
            "web, db"
        ]
    );
}

#[test]
fn hosts_never_changed_show_a_dash_for_health_since() {
    let host = HostView {
        id: 4,
        site: "s2".into(),
        address: "127.10.2.1:7100".into(),
        admin_address: "127.10.2.1:7443".into(),
        addresses: vec![],
        capacity: Capacity::default(),
        labels: BTreeMap::new(),
        state: HostState::Up,
        health: Health::Up,
        health_since_ms: 0,
        drained: false,
        registered_ms: NOW,
        raft: "learner".into(),
        instances: vec!["web (running, epoch 2)".into()],
    };
    let text = super::hosts(&[host], NOW);
    assert_eq!(
        row(&text, "4"),
        [
            "4",
            "s2",
            "up",
            "-",
            "learner",
            "127.10.2.1:7100",
            "web (running, epoch 2)"
        ]
    );
}

#[test]
fn an_empty_event_log_draws_only_the_header() {
    let text = super::events(&[], NOW);
    assert_eq!(content_lines(&text), 1, "{text}");
    assert_eq!(row(&text, "rev"), ["rev", "when", "actor", "event"]);
}

#[test]
fn events_show_revision_age_actor_and_message() {
    let e = EventView {
        revision: 12,
        at_ms: NOW - 3 * 3_600_000,
        actor: "planner (node 1)".into(),
        message: "site s1 is down".into(),
    };
    let text = super::events(&[e], NOW);
    assert_eq!(
        row(&text, "12"),
        ["12", "3h ago", "planner (node 1)", "site s1 is down"]
    );
}

fn service(owner: Option<&str>, target: Option<&str>) -> ServiceView {
    ServiceView {
        name: "web".into(),
        owner: owner.map(String::from),
        epoch: 3,
        owner_since_ms: NOW - 180_000,
        target: target.map(String::from),
        deleting_since_ms: None,
        dns_name: None,
        instances: vec![],
        spec: ServiceSpec::process("web", &["s1", "s2"], "fabric-demo", 8080),
    }
}

#[test]
fn a_service_with_no_owner_shows_a_dash_and_no_dns_name() {
    let text = super::services(&[service(None, Some("s2"))], NOW);
    // No owner wins over a target: a move needs a site to move from.
    assert_eq!(row(&text, "web"), ["web", "-", "3", "3m ago"]);
}

#[test]
fn a_deleting_service_says_so_next_to_its_owner() {
    let mut s = service(Some("s1"), Some("s2"));
    s.deleting_since_ms = Some(NOW);
    let text = super::services(&[s], NOW);
    assert_eq!(row(&text, "web")[..2], ["web", "s1 (deleting)"]);
}

#[test]
fn a_service_moving_shows_both_sites_and_its_instances() {
    let mut s = service(Some("s1"), Some("s2"));
    s.dns_name = Some("web.fabric.test.".into());
    s.instances = vec![
        InstanceView {
            host: 1,
            site: Some("s1".into()),
            epoch: 3,
            state: InstanceState::Revoked,
            since_ms: NOW,
            endpoints: vec![],
        },
        InstanceView {
            host: 5,
            site: Some("s1".into()),
            epoch: 3,
            state: InstanceState::Running,
            since_ms: NOW,
            endpoints: vec![],
        },
    ];
    let text = super::services(&[s], NOW);
    assert_eq!(
        row(&text, "web"),
        [
            "web",
            "s1 -> s2",
            "3",
            "3m ago",
            "web.fabric.test.",
            "host 1 revoked, host 5 running"
        ]
    );
}

#[test]
fn members_list_node_site_role_and_both_addresses() {
    let m = MemberView {
        node: 3,
        site: "s3".into(),
        address: "127.10.3.1:7100".into(),
        admin_address: "127.10.3.1:7443".into(),
        role: "voter".into(),
    };
    assert_eq!(
        row(&super::members(&[m]), "3"),
        ["3", "s3", "voter", "127.10.3.1:7100", "127.10.3.1:7443"]
    );
}

#[test]
fn writes_show_their_revision_and_site_set_the_site_asked_for() {
    let r = WriteResult { revision: 42 };
    assert_eq!(row(&super::revision(&r), "42"), ["42"]);
    let site = SiteUpsert {
        name: "s4".into(),
        priority: 9,
    };
    assert_eq!(row(&super::site_set(&site, &r), "s4"), ["s4", "9", "42"]);
}

#[test]
fn an_operation_with_an_empty_plan_says_nothing_moves_and_draws_no_table() {
    let r = OperationResult {
        dry_run: false,
        change: "drain host 2".into(),
        plan: vec![],
        revision: Some(9),
        spec_changes: vec![],
    };
    assert_eq!(
        super::operation(&r),
        "done: drain host 2\nplan: nothing moves"
    );
}

#[test]
fn a_dry_run_numbers_the_plan_steps_in_order() {
    let step = |host, description: &str| PlanStep {
        action: Action::Place {
            service: "web".into(),
            host,
            epoch: 2,
            reason: "test".into(),
        },
        description: description.into(),
    };
    let r = OperationResult {
        dry_run: true,
        change: "switch web over to s2".into(),
        plan: vec![
            step(4, "start web on host 4"),
            step(5, "start web on host 5"),
        ],
        revision: None,
        spec_changes: vec![],
    };
    let text = super::operation(&r);
    assert!(
        text.starts_with("dry run: would switch web over to s2\n"),
        "{text}"
    );
    assert_eq!(row(&text, "1"), ["1", "start web on host 4"]);
    assert_eq!(row(&text, "2"), ["2", "start web on host 5"]);
}

#[test]
fn a_stopped_lab_agent_has_no_pid_and_shows_its_roles_in_lower_case() {
    let p = AgentProcess {
        node: 7,
        site: "w".into(),
        pid: None,
        address: "127.10.9.1:7100".into(),
        admin: "127.10.9.1:7443".into(),
        roles: vec![AgentRole::Voter, AgentRole::Witness],
        alive: false,
    };
    let text = super::lab_processes(&[p]);
    assert_eq!(
        row(&text, "7"),
        ["7", "w", "127.10.9.1:7100", "[voter, witness]", "false"]
    );
}

#[test]
fn links_draw_both_directions_and_sum_every_kind_of_drop() {
    let partitioned = ParamsSpec {
        delay_ms: 40.0,
        jitter_ms: 5.0,
        loss: 0.01,
        rate_bps: Some(1_000_000),
        partitioned: Some(true),
    };
    let status = EmuStatus {
        links: vec![emu::table::LinkStatus {
            a: "s1".into(),
            b: "s2".into(),
            a_to_b: emu::table::DirectionStatus {
                params: partitioned,
                stats: DirectionStats {
                    delivered: 10,
                    bytes: 1000,
                    dropped_loss: 1,
                    dropped_partition: 2,
                    dropped_queue: 3,
                },
            },
            b_to_a: emu::table::DirectionStatus {
                params: ParamsSpec::default(),
                stats: DirectionStats::default(),
            },
        }],
        forwarders: vec![],
    };
    let text = super::links(&status);
    let rows: Vec<Vec<String>> = text
        .lines()
        .filter(|l| l.contains("s1-s2"))
        .map(|l| row(l, "s1-s2"))
        .collect();
    assert_eq!(
        rows,
        [
            vec![
                "s1-s2",
                "s1→s2",
                "40 ms",
                "5 ms",
                "1%",
                "1000000 bit/s",
                "partitioned",
                "10",
                "6"
            ],
            vec![
                "s1-s2",
                "s2→s1",
                "0 ms",
                "0 ms",
                "0%",
                "unlimited",
                "up",
                "0",
                "0"
            ],
        ]
    );
}

#[test]
fn bench_rows_round_rates_and_latencies() {
    let run = BenchRun {
        clients: 32,
        writes: 1234,
        errors: 1,
        seconds: 10.0,
        writes_per_sec: 123.4,
        p50_ms: 1.234,
        p99_ms: 9.876,
        max_ms: 20.0,
    };
    assert_eq!(
        row(&super::bench(&[run]), "32"),
        ["32", "1234", "1", "123", "1.23", "9.88", "20.00"]
    );
}

#[test]
fn failed_expectations_name_only_the_misses_with_their_detail() {
    let e = |name: &str, pass: bool, detail: &str| ExpectationResult {
        name: name.into(),
        expected: "≤ 12 s".into(),
        measured: "14 s".into(),
        pass,
        detail: detail.into(),
    };
    let report = Report {
        scenario: "site-loss".into(),
        description: String::new(),
        seed: 1,
        started_unix_ms: NOW,
        duration_s: 60.0,
        sites: vec![],
        service: "web".into(),
        probes: vec![],
        markers: vec![],
        owners: vec![],
        dns: vec![],
        replicas: vec![],
        measures: vec![],
        expectations: vec![
            e("rto_max", false, "2 s over"),
            e("no_split_brain", true, ""),
            e("rpo_max", false, ""),
        ],
        passed: false,
    };
    assert_eq!(
        super::failed_expectations(&report),
        "rto_max (expected ≤ 12 s, measured 14 s; 2 s over); \
         rpo_max (expected ≤ 12 s, measured 14 s)"
    );
}

#[test]
fn an_update_shows_the_changed_fields_before_the_plan() {
    let r = OperationResult {
        dry_run: true,
        change: "update service web under epoch 2".into(),
        plan: vec![],
        revision: None,
        spec_changes: vec![siteagent::api::SpecChange {
            field: "kind.process.env.NOTE".into(),
            old: "null".into(),
            new: "\"v2\"".into(),
        }],
    };
    let text = super::operation(&r);
    assert!(
        text.starts_with("dry run: would update service web under epoch 2\n"),
        "{text}"
    );
    assert_eq!(
        row(&text, "kind.process.env.NOTE"),
        ["kind.process.env.NOTE", "null", "\"v2\""]
    );
    assert!(text.ends_with("plan: nothing moves"), "{text}");
}
