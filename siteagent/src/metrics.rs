//! Prometheus metrics: Raft position, leadership, peer round-trip times, this agent's lease and
//! the services it holds under it, and instances by state; refreshed at each scrape. (Counters
//! are incremented where things happen: proposals in the cluster, verdicts, moves and RTOs on
//! the leader, DNS answers in the DNS server.)
//!
//! The recorder is process-wide (one agent per process); a second install in the same process
//! keeps the first, which is fine for in-process tests that only read Raft metrics directly.
//!
//! Invariant: a labelled gauge whose label value vanished (a service no longer held here) reads
//! 0, not its last value.
//!
//! Does not: decide anything; it only reads.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex, OnceLock};

use consensus::state::{FabricState, InstanceState};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

use crate::clock;
use crate::cluster::Cluster;
use crate::lease::LeaseHandle;

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// Installs the process-wide recorder (once).
pub fn install() {
    HANDLE.get_or_init(|| {
        let recorder = PrometheusBuilder::new().build_recorder();
        let handle = recorder.handle();
        if metrics::set_global_recorder(recorder).is_err() {
            tracing::warn!("a metrics recorder was already installed");
        }
        handle
    });
}

/// The current metrics in Prometheus text format.
pub fn render() -> Option<String> {
    HANDLE.get().map(|h| h.render())
}

fn gauge_u64(name: &'static str, v: u64) {
    // Prometheus gauges are f64; Raft indexes stay far below 2^53.
    metrics::gauge!(name).set(v as f64);
}

/// A gauge with one label whose set of values changes from round to round.
struct LabelledGauge {
    name: &'static str,
    label: &'static str,
    last: BTreeSet<String>,
}

impl LabelledGauge {
    fn new(name: &'static str, label: &'static str) -> Self {
        Self {
            name,
            label,
            last: BTreeSet::new(),
        }
    }

    /// The values to set this round: `now`, plus 0 for every label value set last round but
    /// absent now.
    fn round(&mut self, now: BTreeMap<String, f64>) -> BTreeMap<String, f64> {
        let mut out = now;
        for gone in &self.last {
            out.entry(gone.clone()).or_insert(0.0);
        }
        self.last = out
            .iter()
            .filter(|(_, v)| **v != 0.0)
            .map(|(k, _)| k.clone())
            .collect();
        out
    }

    fn set(&mut self, now: BTreeMap<String, f64>) {
        for (value, v) in self.round(now) {
            metrics::gauge!(self.name, self.label => value).set(v);
        }
    }
}

/// Instances by state, every state present (0 when none).
fn instances_by_state(s: &FabricState) -> BTreeMap<String, f64> {
    let label = |st: InstanceState| match st {
        InstanceState::Assigned => "assigned",
        InstanceState::Running => "running",
        InstanceState::Revoked => "revoked",
    };
    let mut out: BTreeMap<String, f64> = [
        InstanceState::Assigned,
        InstanceState::Running,
        InstanceState::Revoked,
    ]
    .into_iter()
    .map(|st| (label(st).to_string(), 0.0))
    .collect();
    for inst in s.services.values().flat_map(|svc| svc.instances.values()) {
        *out.entry(label(inst.state).to_string()).or_default() += 1.0;
    }
    out
}

/// The gauges that are read from the agent's state rather than counted where things happen:
/// refreshed when `/metrics` is scraped, so an idle agent nobody scrapes spends nothing on them.
pub struct Exporter {
    cluster: Arc<Cluster>,
    lease: LeaseHandle,
    gauges: Mutex<Labelled>,
}

/// The labelled gauges' memory between refreshes.
struct Labelled {
    service_remaining: LabelledGauge,
    service_fenced: LabelledGauge,
    instances: LabelledGauge,
}

impl Exporter {
    pub fn new(cluster: Arc<Cluster>, lease: LeaseHandle) -> Self {
        install();
        Self {
            cluster,
            lease,
            gauges: Mutex::new(Labelled {
                service_remaining: LabelledGauge::new(
                    "fabric_service_lease_remaining_seconds",
                    "service",
                ),
                service_fenced: LabelledGauge::new("fabric_service_fenced", "service"),
                instances: LabelledGauge::new("fabric_instances", "state"),
            }),
        }
    }

    /// Refreshes the gauges, then renders every metric in Prometheus text format.
    pub fn render(&self) -> Option<String> {
        self.refresh();
        render()
    }

    fn refresh(&self) {
        let (cluster, lease) = (&self.cluster, &self.lease);
        let mut gauges = self.gauges.lock().unwrap_or_else(|e| e.into_inner());
        let Labelled {
            service_remaining,
            service_fenced,
            instances,
        } = &mut *gauges;
        let m = cluster.raft().metrics();
        gauge_u64("fabric_raft_term", m.current_term);
        gauge_u64("fabric_raft_leader", m.current_leader.unwrap_or(0));
        gauge_u64(
            "fabric_raft_is_leader",
            u64::from(m.current_leader == Some(cluster.id())),
        );
        gauge_u64("fabric_raft_last_log_index", m.last_log_index.unwrap_or(0));
        // What this node applied: through Raft on a voter, through its relay on a host.
        gauge_u64("fabric_raft_applied_index", cluster.state().applied_index());
        gauge_u64("fabric_raft_commit_index", commit_index(&m));
        // Quorum rounds behind linearizable reads, shared by the reads waiting together.
        metrics::counter!("fabric_raft_read_rounds_total").absolute(cluster.raft().read_rounds());
        let (revision, by_state) = cluster
            .state()
            .read(|s| (s.revision, instances_by_state(s)));
        gauge_u64("fabric_state_revision", revision);
        instances.set(by_state);
        let now = clock::lease_now();
        let remaining = lease.remaining(now).unwrap_or_default().as_secs_f64();
        let fenced = f64::from(u8::from(!lease.is_valid(now)));
        metrics::gauge!("fabric_lease_remaining_seconds").set(remaining);
        let held = lease.held();
        service_remaining.set(held.iter().map(|s| (s.clone(), remaining)).collect());
        service_fenced.set(held.iter().map(|s| (s.clone(), fenced)).collect());
        for (kind, n) in cluster.wan().packet_stats().by_kind() {
            metrics::counter!("fabric_wan_packets_total", "kind" => kind).absolute(n);
        }
        for (peer, _addr, rtt) in cluster.wan().peer_rtts() {
            metrics::gauge!(
                "fabric_peer_rtt_seconds",
                "peer" => peer.node.clone(),
                "peer_site" => peer.site.clone()
            )
            .set(rtt.as_secs_f64());
        }
    }
}

/// The commit index as this node knows it: on the leader, the highest index a majority of voters
/// has; elsewhere, the applied index (everything applied is committed).
pub fn commit_index(m: &consensus::types::RaftMetrics) -> u64 {
    let applied = m.last_applied.map(|l| l.index).unwrap_or(0);
    let Some(replication) = &m.replication else {
        return applied;
    };
    let membership = m.membership_config.membership();
    let mut matched: Vec<u64> = membership
        .voter_ids()
        .map(|id| {
            if id == m.id {
                m.last_log_index.unwrap_or(0)
            } else {
                replication
                    .get(&id)
                    .and_then(|l| l.map(|l| l.index))
                    .unwrap_or(0)
            }
        })
        .collect();
    if matched.is_empty() {
        return applied;
    }
    matched.sort_unstable_by(|a, b| b.cmp(a));
    matched[matched.len() / 2].max(applied)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixture;

    #[test]
    fn a_vanished_label_value_is_set_to_zero_once() {
        let mut g = LabelledGauge::new("x", "service");
        let one = |k: &str, v: f64| BTreeMap::from([(k.to_string(), v)]);
        assert_eq!(g.round(one("web", 3.0)), one("web", 3.0));
        let next = g.round(one("db", 1.0));
        assert_eq!(next.get("web"), Some(&0.0), "{next:?}");
        assert_eq!(next.get("db"), Some(&1.0));
        assert_eq!(
            g.round(BTreeMap::new()),
            one("db", 0.0),
            "web zeroed once only"
        );
    }

    #[test]
    fn instances_are_counted_by_state_with_every_state_present() {
        let mut state = fixture::fabric();
        let counts = instances_by_state(&state);
        assert_eq!(counts.get("running"), Some(&1.0));
        assert_eq!(counts.get("assigned"), Some(&0.0));
        assert_eq!(counts.get("revoked"), Some(&0.0));
        fixture::apply(&mut state, fixture::revoke("web", 11, 1));
        let counts = instances_by_state(&state);
        assert_eq!(counts.get("running"), Some(&0.0));
        assert_eq!(counts.get("revoked"), Some(&1.0));
    }
}
