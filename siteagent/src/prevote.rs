//! Pre-vote, which openraft 0.9 lacks: a voter campaigns only when a majority of the voters is
//! reachable and none of them hears a live leader.
//!
//! Why: openraft 0.9 already keeps a *running* leader in place on a one-sided cut — a voter that
//! still hears the leader rejects vote requests while the leader's lease lasts. But the cut-off
//! voter campaigns again and again, raising its term each time, and when the link heals the
//! leader meets that higher term and steps down: an election for nothing, seconds without
//! writes. (Raft's answer is pre-vote; openraft has it only in its unreleased 0.10 line, so
//! upgrading is not an option yet.) This loop turns openraft's elections off on a voter that has
//! stopped hearing the leader while another voter still hears it, and back on as soon as no
//! reachable voter does, so a dead leader is still replaced within the same election timeout.
//!
//! Owns: the pure rule [`may_campaign`] and [`prevote_loop`]. (When each node last accepted
//! entries from a leader is noted by the cluster's Raft handler, [`crate::cluster::Heard`], and
//! answered as [`HeardReply`].)
//!
//! Invariant: elections are off only while a majority of the voters answered and one of them
//! accepted entries from a leader of at least the term this node last followed within
//! `fresh`; everything else (no answer, stale answers) turns them back on. A node that cannot
//! reach a majority could never win, so it does not campaign either.
//!
//! Does not: vote, elect or change membership; openraft does, and this only gates its timer.

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::future::join_all;
use tokio_util::sync::CancellationToken;
use wan::Channel;

use crate::cluster::Cluster;
use crate::control::{ControlReply, ControlRequest, HeardReply};

/// Whether a voter that no longer hears its leader may campaign, given the answers of the other
/// voters (`None`: no answer in time; `Some(None)`: answered, heard no leader), the number of
/// voters, the term it last followed, and how recent "live" is.
pub fn may_campaign(
    answers: &[Option<Option<HeardReply>>],
    voters: usize,
    followed_term: u64,
    fresh: Duration,
) -> bool {
    let reached = 1 + answers.iter().filter(|a| a.is_some()).count();
    if reached * 2 <= voters {
        return false;
    }
    let fresh_ms = u64::try_from(fresh.as_millis()).unwrap_or(u64::MAX);
    !answers
        .iter()
        .flatten()
        .flatten()
        .any(|h| h.ago_ms < fresh_ms && h.term >= followed_term)
}

/// Runs until `shutdown`: every `heartbeat`, a voter that has not heard its leader for
/// `3 × heartbeat` asks the other voters and turns its elections on or off by [`may_campaign`].
pub async fn prevote_loop(
    cluster: Arc<Cluster>,
    heartbeat: Duration,
    election_min: Duration,
    shutdown: CancellationToken,
) {
    let fresh = heartbeat * 3;
    let mut enabled = true;
    let mut server = cluster.raft().raft().server_metrics();
    loop {
        // A node that holds no vote (a host) has no election to gate: it waits for a change of
        // membership instead of waking every heartbeat. Membership is read from the server
        // metrics themselves (openraft publishes them before the full metrics), so a change
        // that woke this loop is never missed by a stale read of the full ones.
        let (voter, leading) = {
            let m = server.borrow_and_update();
            let voter = m
                .membership_config
                .membership()
                .voter_ids()
                .any(|id| id == cluster.id());
            (voter, m.state == openraft::ServerState::Leader)
        };
        // openraft's timer only serves a voter (elections) and a leader (heartbeats, stepping
        // down once removed): a host's would wake Raft for nothing several times a second.
        // (An atomic store: setting it on every wake-up is as cheap as remembering it.)
        cluster
            .raft()
            .raft()
            .runtime_config()
            .tick(voter || leading);
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(heartbeat), if voter => {}
            r = server.changed(), if !voter => {
                if r.is_err() {
                    return;
                }
                continue;
            }
        }
        let raft = cluster.raft();
        let members = raft.members();
        let me = cluster.id();
        let heard = cluster.heard().reply(Instant::now());
        let hearing = heard.is_some_and(|h| h.ago_ms < fresh.as_millis() as u64);
        let allow = if cluster.is_leader() || !members.voters.contains(&me) || hearing {
            true
        } else {
            let asks = members
                .voters
                .iter()
                .filter(|id| **id != me)
                .filter_map(|id| Some((*id, members.nodes.get(id)?.addr.parse().ok()?)))
                .map(|(id, addr)| {
                    let wan = cluster.wan().clone();
                    async move {
                        let ask = wan.request::<_, ControlReply>(
                            addr,
                            Some(id),
                            Channel::Control,
                            &ControlRequest::LeaderHeard,
                        );
                        match tokio::time::timeout(election_min / 2, ask).await {
                            Ok(Ok(ControlReply::Heard(h))) => Some(h),
                            _ => None,
                        }
                    }
                });
            let answers = join_all(asks).await;
            let followed = heard.map_or(0, |h| h.term);
            may_campaign(&answers, members.voters.len(), followed, fresh)
        };
        if allow != enabled {
            if allow {
                tracing::info!("pre-vote: no reachable voter hears a leader; elections on");
            } else {
                tracing::info!(
                    "pre-vote: the leader is alive for other voters (or no majority answers); elections off"
                );
            }
            raft.raft().runtime_config().elect(allow);
            enabled = allow;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FRESH: Duration = Duration::from_millis(300);

    fn heard(term: u64, ago_ms: u64) -> Option<Option<HeardReply>> {
        Some(Some(HeardReply {
            leader: 1,
            term,
            ago_ms,
        }))
    }

    #[test]
    fn a_voter_cut_from_a_leader_that_others_hear_does_not_campaign() {
        // Three voters: the leader (1) is cut from this node; voter 3 still hears it.
        assert!(!may_campaign(&[None, heard(4, 50)], 3, 4, FRESH));
    }

    #[test]
    fn when_no_reachable_voter_hears_the_leader_it_campaigns() {
        // Leader dead: voter 3 heard it 800 ms ago, like this node.
        assert!(may_campaign(&[None, heard(4, 800)], 3, 4, FRESH));
        // Voter 3 never heard any leader (a fresh cluster).
        assert!(may_campaign(&[None, Some(None)], 3, 0, FRESH));
    }

    #[test]
    fn a_leader_of_an_older_term_does_not_count_as_live() {
        assert!(may_campaign(&[None, heard(3, 10)], 3, 4, FRESH));
    }

    #[test]
    fn without_a_majority_answering_it_never_campaigns() {
        assert!(!may_campaign(&[None, None], 3, 4, FRESH));
        assert!(!may_campaign(&[None, None, Some(None)], 5, 4, FRESH));
        assert!(may_campaign(&[None, Some(None), Some(None)], 5, 4, FRESH));
        // A single voter always may.
        assert!(may_campaign(&[], 1, 0, FRESH));
    }
}
