//! Prometheus metrics: Raft position, leadership, peer round-trip times and request counters.
//!
//! The recorder is process-wide (one agent per process); a second install in the same process
//! keeps the first, which is fine for in-process tests that only read Raft metrics directly.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use tokio_util::sync::CancellationToken;

use crate::agent::Agent;

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

/// Refreshes the gauges once a second until shutdown.
pub async fn export_loop(agent: Arc<Agent>, shutdown: CancellationToken) {
    install();
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        let m = agent.raft().metrics();
        gauge_u64("fabric_raft_term", m.current_term);
        gauge_u64("fabric_raft_leader", m.current_leader.unwrap_or(0));
        gauge_u64(
            "fabric_raft_is_leader",
            u64::from(m.current_leader == Some(agent.id())),
        );
        gauge_u64("fabric_raft_last_log_index", m.last_log_index.unwrap_or(0));
        gauge_u64(
            "fabric_raft_applied_index",
            m.last_applied.map(|l| l.index).unwrap_or(0),
        );
        gauge_u64("fabric_raft_commit_index", commit_index(&m));
        gauge_u64(
            "fabric_state_revision",
            agent.raft().state_handle().read(|s| s.revision),
        );
        for (peer, _addr, rtt) in agent.wan().peer_rtts() {
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
