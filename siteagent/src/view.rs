//! One view of the fabric state for every loop of the agent, whatever feeds it: Raft on a
//! voter, a relay's watch stream on a host ([`crate::relay`]).
//!
//! Owns: [`StateView`] — the local applied state (a [`StateHandle`]), a watch of the applied
//! index, the membership as last applied and the leader as last known.
//!
//! Invariant: what a view shows is a committed prefix of the log, and only ever a longer one
//! (both feeders apply in log order); the leader it names may be stale.
//!
//! Does not: read linearizably (that is [`crate::cluster::Cluster::read`], which takes a read
//! index from the leader and waits here until it is applied), nor fetch anything itself.

use std::sync::Arc;
use std::time::Duration;

use consensus::feed::Follower;
use consensus::node::{FabricRaft, Members};
use consensus::state::{FabricState, NodeId};
use consensus::store::StateHandle;
use consensus::{FabricNode, Raft};
use tokio::sync::watch;

/// The leader and its node record.
pub type Leader = (NodeId, FabricNode);

/// What this node has applied, and who it believes leads. Cheap to clone.
#[derive(Clone)]
pub struct StateView {
    state: StateHandle,
    applied: watch::Receiver<u64>,
    source: Source,
}

#[derive(Clone)]
enum Source {
    /// A Raft member: the leader is the one its Raft names.
    Raft(Raft),
    /// A host fed by a relay: the leader the relay named last.
    Relayed(Arc<watch::Sender<Option<Leader>>>),
}

/// The view timed out waiting for an index to be applied.
#[derive(Debug, thiserror::Error)]
#[error("index {index} not applied within {after:?} (applied {applied})")]
pub struct NotApplied {
    pub index: u64,
    pub applied: u64,
    pub after: Duration,
}

impl StateView {
    /// The view of a Raft member: its state machine's state, fed by Raft.
    pub fn of_raft(raft: &FabricRaft) -> Self {
        Self {
            state: raft.state_handle().clone(),
            applied: raft.feed().subscribe(),
            source: Source::Raft(raft.raft().clone()),
        }
    }

    /// The view of a host fed by a relay into `follower`.
    pub fn of_follower(follower: &Follower) -> Self {
        Self {
            state: follower.state_handle(),
            applied: follower.subscribe(),
            source: Source::Relayed(Arc::new(watch::Sender::new(None))),
        }
    }

    /// True when a relay feeds this view (a host), false when Raft does (a voter).
    pub fn is_relayed(&self) -> bool {
        matches!(self.source, Source::Relayed(_))
    }

    /// Runs `f` on the applied state. `f` runs under a read lock: keep it short.
    pub fn read<R>(&self, f: impl FnOnce(&FabricState) -> R) -> R {
        self.state.read(f)
    }

    /// A copy of the applied state.
    pub fn snapshot(&self) -> FabricState {
        self.state.read(FabricState::clone)
    }

    /// Index of the last applied log entry (0 also before any).
    pub fn applied_index(&self) -> u64 {
        self.state.applied_index()
    }

    /// Changes whenever something new is applied (the value is the applied index).
    pub fn changes(&self) -> watch::Receiver<u64> {
        self.applied.clone()
    }

    /// The members of the last applied configuration.
    pub fn members(&self) -> Members {
        Members::applied(&self.state.membership())
    }

    /// The leader as last known.
    pub fn leader(&self) -> Option<Leader> {
        match &self.source {
            Source::Raft(raft) => {
                let m = raft.metrics().borrow().clone();
                let id = m.current_leader?;
                let node = m.membership_config.membership().get_node(&id)?.clone();
                Some((id, node))
            }
            Source::Relayed(leader) => leader.borrow().clone(),
        }
    }

    /// A relay named `leader` (ignored on a Raft member, whose Raft knows better).
    pub fn note_leader(&self, leader: Option<Leader>) {
        if let Source::Relayed(known) = &self.source {
            known.send_if_modified(|k| {
                let changed = *k != leader;
                *k = leader;
                changed
            });
        }
    }

    /// Waits until `index` is applied here, for at most `timeout`.
    pub async fn wait_applied(&self, index: u64, timeout: Duration) -> Result<(), NotApplied> {
        let mut applied = self.applied.clone();
        let wait = async {
            loop {
                applied.borrow_and_update();
                if self.applied_index() >= index {
                    return;
                }
                if applied.changed().await.is_err() {
                    // The feeder is gone: nothing more will be applied.
                    std::future::pending::<()>().await;
                }
            }
        };
        tokio::time::timeout(timeout, wait)
            .await
            .map_err(|_| NotApplied {
                index,
                applied: self.applied_index(),
                after: timeout,
            })
    }

    /// Resolves when the leader this view names is no longer `leader`.
    pub async fn leader_changes_from(&self, leader: NodeId) {
        match &self.source {
            Source::Raft(raft) => {
                let mut metrics = raft.metrics();
                loop {
                    if metrics.borrow_and_update().current_leader != Some(leader) {
                        return;
                    }
                    if metrics.changed().await.is_err() {
                        // Raft stopped: nothing will change any more.
                        std::future::pending::<()>().await;
                    }
                }
            }
            Source::Relayed(known) => {
                let mut known = known.subscribe();
                loop {
                    // No leader known is not a change: a relay that names none yet may still.
                    if known
                        .borrow_and_update()
                        .as_ref()
                        .is_some_and(|(id, _)| *id != leader)
                    {
                        return;
                    }
                    if known.changed().await.is_err() {
                        std::future::pending::<()>().await;
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use consensus::feed::Catchup;
    use consensus::state::{Command, Proposal};
    use consensus::types::{Entry, LogId};
    use openraft::EntryPayload;

    use super::*;

    fn note(index: u64) -> Entry {
        Entry {
            log_id: LogId::new(openraft::CommittedLeaderId::new(1, 1), index),
            payload: EntryPayload::Normal(Proposal::new(
                1,
                "test",
                Command::RecordEvent {
                    message: format!("note {index}"),
                },
            )),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_wait_for_an_index_ends_when_the_follower_applies_it_or_times_out() {
        let follower = Follower::new();
        let view = StateView::of_follower(&follower);
        let err = view
            .wait_applied(1, Duration::from_secs(1))
            .await
            .expect_err("nothing applied");
        assert_eq!(err.index, 1);
        let waiting = {
            let view = view.clone();
            tokio::spawn(async move { view.wait_applied(1, Duration::from_secs(5)).await })
        };
        tokio::task::yield_now().await;
        follower
            .apply(Catchup::Entries(vec![note(0), note(1)]))
            .expect("apply");
        waiting.await.expect("join").expect("applied");
        assert_eq!(view.read(|s| s.events.len()), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn a_relayed_view_names_the_leader_its_relay_named_last() {
        let view = StateView::of_follower(&Follower::new());
        assert!(view.is_relayed());
        assert_eq!(view.leader(), None);
        let node = FabricNode {
            addr: "127.0.0.1:1".into(),
            admin_addr: String::new(),
            site: "s1".into(),
        };
        view.note_leader(Some((1, node.clone())));
        assert_eq!(view.leader().map(|(id, _)| id), Some(1));
        let change = {
            let view = view.clone();
            tokio::spawn(async move { view.leader_changes_from(1).await })
        };
        tokio::task::yield_now().await;
        view.note_leader(None);
        tokio::task::yield_now().await;
        assert!(!change.is_finished(), "no leader is not a new leader");
        view.note_leader(Some((2, node)));
        tokio::time::timeout(Duration::from_secs(1), change)
            .await
            .expect("the change is seen")
            .expect("join");
    }
}
