//! The agent's failure detector shell: pings every other agent on the control stream, feeds
//! the answers to [`Detector`], and keeps this observer's recorded verdicts in the replicated
//! state equal to the detector's.
//!
//! Invariant: only verdicts that differ from what the state records for this observer are
//! proposed, so a steady fabric writes nothing; a verdict that failed to commit (no majority
//! reachable) is retried on the next tick.
//!
//! It does not decide anything about hosts or sites; the leader counts the observers' votes.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use consensus::state::Command;
use failover::detector::Detector;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use wan::Channel;

use crate::cluster::Cluster;
use crate::control::{ControlReply, ControlRequest};

/// Runs until `shutdown`.
pub async fn heartbeat_loop(
    cluster: Arc<Cluster>,
    config: failover::detector::DetectorConfig,
    shutdown: CancellationToken,
) {
    let mut detector = Detector::new(config);
    let mut tick = tokio::time::interval(config.interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let (answers_tx, mut answers) = mpsc::unbounded_channel::<(u64, bool)>();
    let mut in_flight: BTreeSet<u64> = BTreeSet::new();
    let proposing = Arc::new(tokio::sync::Mutex::new(()));
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            Some((peer, ok)) = answers.recv() => {
                in_flight.remove(&peer);
                if ok && detector.handle_heartbeat(peer, Instant::now()).is_some() {
                    tracing::info!(peer, "peer {peer} is up again");
                }
                continue;
            }
            _ = tick.tick() => {}
        }
        let now = Instant::now();
        let agents = cluster.agents();
        let me = cluster.id();
        if !agents.contains_key(&me) {
            // Not admitted yet: nobody to watch, nothing we could record.
            continue;
        }
        detector.set_subjects(agents.keys().copied().filter(|id| *id != me), now);
        for c in detector.tick(now) {
            tracing::info!(peer = c.subject, "peer {} is down", c.subject);
        }
        for (id, node) in &agents {
            if *id == me || in_flight.contains(id) {
                continue;
            }
            let Ok(addr) = node.addr.parse::<SocketAddr>() else {
                continue;
            };
            in_flight.insert(*id);
            let (cluster, tx, id) = (cluster.clone(), answers_tx.clone(), *id);
            let limit = config.window();
            tokio::spawn(async move {
                let ping = cluster.wan().request::<_, ControlReply>(
                    addr,
                    Some(id),
                    Channel::Control,
                    &ControlRequest::Ping,
                );
                let ok = matches!(
                    tokio::time::timeout(limit, ping).await,
                    Ok(Ok(ControlReply::Pong))
                );
                let _ = tx.send((id, ok));
            });
        }
        for (id, up) in detector.verdicts() {
            metrics::gauge!("fabric_peer_up", "peer" => id.to_string())
                .set(f64::from(u8::from(up)));
        }
        record_changes(&cluster, &detector, &proposing);
    }
}

/// Proposes the verdicts the state does not record yet, in the background, one batch at a time.
fn record_changes(
    cluster: &Arc<Cluster>,
    detector: &Detector,
    proposing: &Arc<tokio::sync::Mutex<()>>,
) {
    let me = cluster.id();
    let differing: Vec<(u64, bool)> = cluster.state().read(|s| {
        detector
            .verdicts()
            .filter(|(subject, up)| {
                let recorded = s
                    .observations
                    .get(subject)
                    .and_then(|by| by.get(&me))
                    .is_none_or(|o| o.up);
                recorded != *up
            })
            .collect()
    });
    if differing.is_empty() {
        return;
    }
    let Ok(guard) = proposing.clone().try_lock_owned() else {
        return;
    };
    let cluster = cluster.clone();
    tokio::spawn(async move {
        let _guard = guard;
        for (subject, up) in differing {
            let command = Command::Observe {
                observer: me,
                subject,
                up,
            };
            if let Err(e) = cluster.propose(cluster.actor(), command).await {
                tracing::debug!("cannot record that node {subject} is {up}: {e}");
                return;
            }
        }
    });
}
