//! Hosts follow the fabric state through a relay — a Raft member of their own site, else any —
//! instead of being Raft learners of the leader: the leader's fan-out grows with the voters, not
//! with the hosts.
//!
//! Owns: the host side ([`follow_loop`]: long-polls a relay with [`ControlRequest::Watch`] from
//! the first index it lacks, applies what comes into its [`Follower`], notes the leader the relay
//! names), the relay side ([`serve_watch`]) and the choice of relay ([`RelayChoice`], sans-IO).
//!
//! Invariant: a host applies a committed prefix of the log in order, resuming from its own next
//! index at whichever relay it asks, so switching relays neither skips nor repeats an entry
//! (see [`consensus::feed`]).
//!
//! Does not: serve linearizable reads (a host takes a read index from the leader and waits for
//! its follower to apply it, [`crate::cluster::Cluster::read`]), nor make a host a Raft member.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use consensus::feed::{Feed, Follower, MAX_BATCH};
use consensus::node::Members;
use consensus::state::NodeId;
use tokio_util::sync::CancellationToken;
use wan::{Channel, Wan};

use crate::control::{ControlReply, ControlRequest, WatchReply};
use crate::view::{Leader, StateView};

/// The longest a relay holds a watch with nothing to send.
pub const MAX_WAIT: Duration = Duration::from_secs(5);

/// How long a host stays on a relay outside its first choice before it tries the first again.
pub const RETURN_AFTER: Duration = Duration::from_secs(30);

/// Pause after a failed request before asking the next relay.
const RETRY: Duration = Duration::from_millis(200);

/// How long a relay holds a watch: [`MAX_WAIT`], but well inside the WAN's request limit (the
/// asker gives up at that limit and drops the connection).
pub fn watch_wait(request_timeout: Duration) -> Duration {
    MAX_WAIT.min(request_timeout / 2)
}

/// Relay side: the batch for a host that lacks the entries from `from` on, waiting up to
/// `wait` when there is none yet.
pub async fn serve_watch(
    feed: &Feed,
    from: u64,
    wait: Duration,
    leader: impl FnOnce() -> Option<Leader>,
) -> ControlReply {
    match feed.wait_since(from, MAX_BATCH, wait).await {
        Ok(batch) => {
            metrics::counter!("fabric_relay_batches_total").increment(1);
            ControlReply::Watched(Box::new(WatchReply {
                batch,
                leader: leader(),
                applied: feed.applied_index(),
            }))
        }
        Err(e) => ControlReply::Failed(e.to_string()),
    }
}

/// A relay to ask: its node id when known (it is then checked against its certificate).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Relay {
    pub id: Option<NodeId>,
    pub addr: SocketAddr,
}

/// The relays in order of preference: the voters of `site` (by id), then the other voters; only
/// when no membership is known yet, the configured `peers`. Never `me`.
pub fn candidates(members: &Members, me: NodeId, site: &str, peers: &[SocketAddr]) -> Vec<Relay> {
    let mut voters: Vec<(bool, NodeId, SocketAddr)> = members
        .voters
        .iter()
        .filter(|id| **id != me)
        .filter_map(|id| {
            let node = members.nodes.get(id)?;
            Some((node.site != site, *id, node.addr.parse().ok()?))
        })
        .collect();
    if voters.is_empty() {
        return peers
            .iter()
            .map(|addr| Relay {
                id: None,
                addr: *addr,
            })
            .collect();
    }
    voters.sort();
    voters
        .into_iter()
        .map(|(_, id, addr)| Relay { id: Some(id), addr })
        .collect()
}

/// Which relay to ask: the first candidate while it answers; the next one after a failure; back
/// to the first after [`RETURN_AFTER`] elsewhere.
#[derive(Debug, Default)]
pub struct RelayChoice {
    offset: usize,
    /// When the host left its first choice.
    away_since: Option<Instant>,
}

impl RelayChoice {
    /// The relay to ask now, among `candidates` (in preference order).
    pub fn pick(&mut self, candidates: &[Relay], now: Instant) -> Option<Relay> {
        if candidates.is_empty() {
            return None;
        }
        if self
            .away_since
            .is_some_and(|since| now.saturating_duration_since(since) >= RETURN_AFTER)
        {
            self.offset = 0;
            self.away_since = None;
        }
        Some(candidates[self.offset % candidates.len()])
    }

    /// The relay picked last failed (no answer, an error, or it is behind this host).
    pub fn failed(&mut self, now: Instant) {
        self.offset = self.offset.wrapping_add(1);
        self.away_since.get_or_insert(now);
    }
}

/// Runs until `shutdown` on a host: keeps `follower` (and the leader `view` names) current
/// through a relay.
pub async fn follow_loop(
    follower: Arc<Follower>,
    view: StateView,
    wan: Arc<Wan>,
    me: NodeId,
    site: String,
    peers: Vec<SocketAddr>,
    shutdown: CancellationToken,
) {
    let mut choice = RelayChoice::default();
    let mut current: Option<Relay> = None;
    loop {
        let candidates = candidates(&view.members(), me, &site, &peers);
        let Some(relay) = choice.pick(&candidates, Instant::now()) else {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(RETRY) => continue,
            }
        };
        if current != Some(relay) {
            tracing::info!(relay = ?relay.id, addr = %relay.addr, "following the state through {}", relay.addr);
            current = Some(relay);
        }
        let from = follower.next_index();
        let request = ControlRequest::Watch { from };
        let ask = wan.request::<_, ControlReply>(relay.addr, relay.id, Channel::Control, &request);
        let reply = tokio::select! {
            _ = shutdown.cancelled() => return,
            r = ask => r,
        };
        let failure = match reply {
            Ok(ControlReply::Watched(w)) => {
                let WatchReply {
                    batch,
                    leader,
                    applied,
                } = *w;
                let empty = batch.is_empty();
                view.note_leader(leader);
                match follower.apply(batch) {
                    Ok(next) => {
                        metrics::gauge!("fabric_follower_next_index").set(next as f64);
                        // A relay that has not applied what this host has is behind (cut off
                        // from the leader, or restarting): ask another.
                        (empty && applied.saturating_add(1) < from)
                            .then(|| format!("relay is behind: applied {applied}, host at {from}"))
                    }
                    Err(e) => Some(e.to_string()),
                }
            }
            Ok(other) => Some(format!("unexpected answer {other:?}")),
            Err(e) => Some(e.to_string()),
        };
        if let Some(why) = failure {
            tracing::debug!(addr = %relay.addr, "relay {}: {why}", relay.addr);
            metrics::counter!("fabric_relay_switches_total").increment(1);
            choice.failed(Instant::now());
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(RETRY) => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use consensus::FabricNode;

    use super::*;

    fn members(voters: &[(NodeId, &str)]) -> Members {
        Members {
            voters: voters.iter().map(|(id, _)| *id).collect(),
            learners: Default::default(),
            nodes: voters
                .iter()
                .map(|(id, site)| {
                    let node = FabricNode {
                        addr: format!("127.0.0.{id}:7000"),
                        admin_addr: String::new(),
                        site: (*site).into(),
                    };
                    (*id, node)
                })
                .collect(),
            settled: true,
        }
    }

    fn ids(relays: &[Relay]) -> Vec<Option<NodeId>> {
        relays.iter().map(|r| r.id).collect()
    }

    #[test]
    fn a_host_prefers_the_voters_of_its_own_site_then_any_other_never_itself() {
        let m = members(&[(1, "s1"), (2, "s2"), (3, "s3"), (4, "s2")]);
        assert_eq!(
            ids(&candidates(&m, 9, "s2", &[])),
            [Some(2), Some(4), Some(1), Some(3)]
        );
        assert_eq!(
            ids(&candidates(&m, 2, "s2", &[])),
            [Some(4), Some(1), Some(3)]
        );
        assert_eq!(
            ids(&candidates(&m, 9, "s7", &[])),
            [Some(1), Some(2), Some(3), Some(4)]
        );
    }

    #[test]
    fn without_a_known_membership_a_host_asks_its_configured_peers() {
        let peer: SocketAddr = "127.0.0.1:7000".parse().expect("addr");
        let none = Members::default();
        assert_eq!(
            candidates(&none, 9, "s1", &[peer]),
            [Relay {
                id: None,
                addr: peer
            }]
        );
    }

    #[test]
    fn a_failed_relay_is_replaced_by_the_next_and_the_first_choice_is_tried_again_later() {
        let m = members(&[(1, "s1"), (2, "s2"), (3, "s3")]);
        let c = candidates(&m, 9, "s1", &[]);
        let t0 = Instant::now();
        let mut choice = RelayChoice::default();
        assert_eq!(choice.pick(&c, t0).and_then(|r| r.id), Some(1));
        assert_eq!(
            choice.pick(&c, t0).and_then(|r| r.id),
            Some(1),
            "stays while it answers"
        );
        choice.failed(t0);
        assert_eq!(choice.pick(&c, t0).and_then(|r| r.id), Some(2));
        choice.failed(t0 + Duration::from_secs(1));
        assert_eq!(choice.pick(&c, t0).and_then(|r| r.id), Some(3));
        choice.failed(t0 + Duration::from_secs(2));
        assert_eq!(
            choice.pick(&c, t0).and_then(|r| r.id),
            Some(1),
            "wraps around"
        );
        choice.failed(t0 + Duration::from_secs(3));
        let later = t0 + RETURN_AFTER;
        assert_eq!(
            choice.pick(&c, later).and_then(|r| r.id),
            Some(1),
            "back to the first choice after a while away"
        );
        assert!(RelayChoice::default().pick(&[], t0).is_none());
    }

    #[test]
    fn a_relay_holds_a_watch_well_inside_the_request_limit() {
        assert_eq!(
            watch_wait(Duration::from_secs(5)),
            Duration::from_millis(2500)
        );
        assert_eq!(watch_wait(Duration::from_secs(60)), MAX_WAIT);
    }
}
