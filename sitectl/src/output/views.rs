//! The text `sitectl` shows people for each answer: one function per view, taking the typed
//! value (the admin API's `siteagent::api` types, the lab's and the benchmark's) and returning
//! the text to print.
//!
//! Invariant: pure — no clock, no I/O; a view that shows ages takes the clock reading as
//! `now_ms`, so the same inputs always draw the same text. The JSON output does not pass
//! through here: it is the value itself.

use emu::table::Status as EmuStatus;
use scenarios::lab::AgentProcess;
use scenarios::report::Report;
use siteagent::api::{
    EventView, HostView, MemberView, OperationResult, ServiceView, SiteUpsert, SiteView, Status,
    WriteResult,
};

use super::{ago, lower, table};
use crate::bench::BenchRun;

mod fleet;
mod replication;
pub use fleet::fleet_bench;
pub use replication::replication_bench;

/// `sitectl status`: one line about the answering agent, then the hosts it knows.
pub fn status(s: &Status) -> String {
    let line = format!(
        "node {} ({}), leader {}, term {}, voters {:?}, learners {:?}, applied {}, revision {}, {}",
        s.node,
        s.raft_state,
        s.leader.map(|l| l.to_string()).unwrap_or("none".into()),
        s.term,
        s.voters,
        s.learners,
        s.applied_index,
        s.revision,
        if s.lease_valid {
            format!("lease confirmed ({} ms left)", s.lease_remaining_ms)
        } else {
            "FENCED: lease not confirmed by the majority".into()
        }
    );
    let hosts = table(
        &["host", "site", "state"],
        s.hosts
            .iter()
            .map(|h| vec![h.id.to_string(), h.site.clone(), lower(&h.state)]),
    );
    format!("{line}\n{hosts}")
}

/// `sitectl sites`.
pub fn sites(sites: &[SiteView], now_ms: u64) -> String {
    table(
        &[
            "site", "priority", "state", "health", "since", "hosts up", "voters", "services",
        ],
        sites.iter().map(|s| {
            vec![
                s.name.clone(),
                s.priority.to_string(),
                lower(&s.state),
                lower(&s.health),
                ago(s.health_since_ms.max(s.admin_since_ms), now_ms),
                format!("{}/{}", s.hosts_up, s.hosts),
                format!("{:?}", s.voters),
                s.services.join(", "),
            ]
        }),
    )
}

/// `sitectl hosts`.
pub fn hosts(hosts: &[HostView], now_ms: u64) -> String {
    table(
        &[
            "host",
            "site",
            "state",
            "health since",
            "raft",
            "address",
            "instances",
        ],
        hosts.iter().map(|h| {
            vec![
                h.id.to_string(),
                h.site.clone(),
                lower(&h.state),
                ago(h.health_since_ms, now_ms),
                h.raft.clone(),
                h.address.clone(),
                h.instances.join(", "),
            ]
        }),
    )
}

/// `sitectl services` / `service list`: owner (`a -> b` during a planned move, `a (deleting)`
/// while a delete waits for its instances to stop), instances.
pub fn services(services: &[ServiceView], now_ms: u64) -> String {
    table(
        &["service", "owner", "epoch", "since", "dns", "instances"],
        services.iter().map(|s| {
            let instances: Vec<String> = s
                .instances
                .iter()
                .map(|i| format!("host {} {}", i.host, lower(&i.state)))
                .collect();
            vec![
                s.name.clone(),
                match (&s.owner, &s.target, s.deleting_since_ms) {
                    (Some(o), _, Some(_)) => format!("{o} (deleting)"),
                    (None, _, Some(_)) => "- (deleting)".into(),
                    (Some(o), Some(t), None) => format!("{o} -> {t}"),
                    (Some(o), None, None) => o.clone(),
                    (None, _, None) => "-".into(),
                },
                s.epoch.to_string(),
                ago(s.owner_since_ms, now_ms),
                s.dns_name.clone().unwrap_or_default(),
                instances.join(", "),
            ]
        }),
    )
}

/// `sitectl events`.
pub fn events(events: &[EventView], now_ms: u64) -> String {
    table(
        &["rev", "when", "actor", "event"],
        events.iter().map(|e| {
            vec![
                e.revision.to_string(),
                ago(e.at_ms, now_ms),
                e.actor.clone(),
                e.message.clone(),
            ]
        }),
    )
}

/// `sitectl members list`.
pub fn members(members: &[MemberView]) -> String {
    table(
        &["node", "site", "role", "address", "admin"],
        members.iter().map(|m| {
            vec![
                m.node.to_string(),
                m.site.clone(),
                m.role.clone(),
                m.address.clone(),
                m.admin_address.clone(),
            ]
        }),
    )
}

/// A write that answers only with the new revision (`note`, `members promote|remove`).
pub fn revision(r: &WriteResult) -> String {
    table(&["revision"], [vec![r.revision.to_string()]])
}

/// `sitectl site set`: the site as asked, at the revision that recorded it.
pub fn site_set(site: &SiteUpsert, r: &WriteResult) -> String {
    table(
        &["site", "priority", "revision"],
        [vec![
            site.name.clone(),
            site.priority.to_string(),
            r.revision.to_string(),
        ]],
    )
}

/// Every operation (drain, maintenance, switchover, failover, failback, service create and
/// delete): the change, then the planner's steps that follow.
pub fn operation(r: &OperationResult) -> String {
    let head = if r.dry_run { "dry run: would" } else { "done:" };
    let plan = if r.plan.is_empty() {
        "plan: nothing moves".to_string()
    } else {
        table(
            &["step", "plan"],
            r.plan
                .iter()
                .enumerate()
                .map(|(i, s)| vec![(i + 1).to_string(), s.description.clone()]),
        )
    };
    if r.spec_changes.is_empty() {
        return format!("{head} {}\n{plan}", r.change);
    }
    let changes = table(
        &["field", "old", "new"],
        r.spec_changes
            .iter()
            .map(|c| vec![c.field.clone(), c.old.clone(), c.new.clone()]),
    );
    format!("{head} {}\n{changes}\n{plan}", r.change)
}

/// `sitectl lab up|status`: every agent of the lab with pid, address, roles and liveness.
pub fn lab_processes(procs: &[AgentProcess]) -> String {
    table(
        &["node", "site", "pid", "address", "roles", "alive"],
        procs.iter().map(|p| {
            vec![
                p.node.to_string(),
                p.site.clone(),
                p.pid.map(|p| p.to_string()).unwrap_or_default(),
                p.address.clone(),
                format!("{:?}", p.roles).to_lowercase(),
                p.alive.to_string(),
            ]
        }),
    )
}

/// `sitectl lab link status`: each link as two rows, one per direction.
pub fn links(status: &EmuStatus) -> String {
    let mut rows = Vec::new();
    for l in &status.links {
        for (dir, d) in [
            (format!("{}→{}", l.a, l.b), &l.a_to_b),
            (format!("{}→{}", l.b, l.a), &l.b_to_a),
        ] {
            rows.push(vec![
                format!("{}-{}", l.a, l.b),
                dir,
                format!("{} ms", d.params.delay_ms),
                format!("{} ms", d.params.jitter_ms),
                format!("{}%", d.params.loss * 100.0),
                d.params
                    .rate_bps
                    .map(|r| format!("{r} bit/s"))
                    .unwrap_or_else(|| "unlimited".into()),
                if d.params.partitioned == Some(true) {
                    "partitioned".into()
                } else {
                    "up".into()
                },
                d.stats.delivered.to_string(),
                (d.stats.dropped_loss + d.stats.dropped_partition + d.stats.dropped_queue)
                    .to_string(),
            ]);
        }
    }
    table(
        &[
            "link",
            "direction",
            "delay",
            "jitter",
            "loss",
            "rate",
            "state",
            "delivered",
            "dropped",
        ],
        rows,
    )
}

/// `sitectl bench raft`: one row per run.
pub fn bench(runs: &[BenchRun]) -> String {
    table(
        &[
            "clients", "writes", "errors", "writes/s", "p50 ms", "p99 ms", "max ms",
        ],
        runs.iter().map(|r| {
            vec![
                r.clients.to_string(),
                r.writes.to_string(),
                r.errors.to_string(),
                format!("{:.0}", r.writes_per_sec),
                format!("{:.2}", r.p50_ms),
                format!("{:.2}", r.p99_ms),
                format!("{:.2}", r.max_ms),
            ]
        }),
    )
}

/// The expectations a drill missed, in one line: what each expected and measured, and why.
pub fn failed_expectations(report: &Report) -> String {
    report
        .expectations
        .iter()
        .filter(|e| !e.pass)
        .map(|e| {
            format!(
                "{} (expected {}, measured {}{})",
                e.name,
                e.expected,
                e.measured,
                if e.detail.is_empty() {
                    String::new()
                } else {
                    format!("; {}", e.detail)
                }
            )
        })
        .collect::<Vec<_>>()
        .join("; ")
}

#[cfg(test)]
mod tests;
