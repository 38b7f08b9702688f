//! A running Raft member: starts openraft on the redb store and offers what the agent needs —
//! propose, read linearizably, change membership, observe.
//!
//! Invariant: a read served through [`FabricRaft::read_linearizable`] reflects every write that
//! was acknowledged before the read began (Raft read-index: the leader confirms its leadership
//! with a quorum and names a log index; the reader waits until it has applied that index).
//!
//! It does not forward to the leader itself: it says who the leader is ([`NotLeader`]) and the
//! agent carries the request there over the WAN.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use openraft::error::{ClientWriteError, RaftError};
use openraft::{ChangeMembers, SnapshotPolicy};
use serde::{Deserialize, Serialize};

use crate::feed::Feed;
use crate::network::{Network, RaftTransport};
use crate::rounds::SharedRounds;
use crate::state::{CommandResult, FabricState, NodeId, Proposal};
use crate::store::{self, ClosedSignal, StateHandle};
use crate::types::{FabricNode, Raft, RaftMetrics, StoredMembership};

/// Raft timing and log retention.
#[derive(Debug, Clone)]
pub struct RaftSettings {
    pub heartbeat_interval: Duration,
    pub election_timeout_min: Duration,
    pub election_timeout_max: Duration,
    /// Build a snapshot (and purge the log before it) after this many applied entries.
    pub snapshot_after_logs: u64,
}

impl Default for RaftSettings {
    /// LAN defaults. For a WAN, set the heartbeat to at least two RTTs (openraft also uses it as
    /// the AppendEntries time limit) and the election timeout to at least ten RTTs (e.g. 100 ms
    /// RTT: heartbeat 250 ms, election 1.5–3 s).
    fn default() -> Self {
        Self {
            heartbeat_interval: Duration::from_millis(100),
            election_timeout_min: Duration::from_millis(500),
            election_timeout_max: Duration::from_millis(1000),
            snapshot_after_logs: 5000,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    #[error("storage: {0}")]
    Store(#[from] store::StoreError),
    #[error("raft configuration: {0}")]
    Config(String),
    #[error("raft: {0}")]
    Raft(String),
}

/// This node cannot serve the request; the leader (if known) can.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("not the leader (leader: {leader:?})")]
pub struct NotLeader {
    pub leader: Option<(NodeId, FabricNode)>,
}

#[derive(Debug, Clone, thiserror::Error)]
pub enum ProposeError {
    #[error(transparent)]
    NotLeader(#[from] NotLeader),
    #[error("raft: {0}")]
    Raft(String),
    /// A bounded wait ran out; nothing is held any more and the caller may ask again.
    #[error("{what} did not finish within {after:?}")]
    TimedOut { what: String, after: Duration },
}

/// How long one membership change (a configuration entry, or the two of a joint change) may
/// take to commit. It needs only the current voters, so it takes long only without a quorum;
/// the change lock is not held past it.
pub const MEMBERSHIP_CHANGE_TIMEOUT: Duration = Duration::from_secs(10);

/// Who is in the cluster.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Members {
    pub voters: BTreeSet<NodeId>,
    pub learners: BTreeSet<NodeId>,
    pub nodes: BTreeMap<NodeId, FabricNode>,
    /// The configuration is a single one (not a joint one mid-change) and this node has applied
    /// it, so it is committed.
    pub settled: bool,
}

impl Members {
    /// The members an applied configuration names; `settled` when it is a single one (applied,
    /// hence committed).
    pub fn applied(m: &StoredMembership) -> Self {
        let membership = m.membership();
        Self {
            voters: membership.voter_ids().collect(),
            learners: membership.learner_ids().collect(),
            nodes: membership.nodes().map(|(id, n)| (*id, n.clone())).collect(),
            settled: membership.get_joint_config().len() == 1,
        }
    }
}

/// One Raft member of the fabric.
#[derive(Clone)]
pub struct FabricRaft {
    id: NodeId,
    raft: Raft,
    state: StateHandle,
    /// The entries this node applied lately, for the hosts it relays to.
    feed: Arc<Feed>,
    closed: ClosedSignal,
    /// Leader side: one membership change at a time. Two changes racing each other make
    /// openraft refuse the second step of one of them, which would leave a joint configuration
    /// behind. Held only across a change itself, which is bounded
    /// ([`MEMBERSHIP_CHANGE_TIMEOUT`]) — never across a wait for a joiner to catch up, so a
    /// joiner that dies meanwhile cannot block `members promote/remove`.
    membership: Arc<tokio::sync::Mutex<()>>,
    /// Leader side: read-index rounds shared by the reads that wait for one.
    reads: Arc<SharedRounds<(), Result<u64, ProposeError>>>,
}

impl FabricRaft {
    /// Opens the store at `db_path` and starts Raft. A node restarted on the same file comes back
    /// with its log, vote and applied state.
    pub async fn start<T: RaftTransport>(
        id: NodeId,
        settings: &RaftSettings,
        db_path: &Path,
        transport: Arc<T>,
    ) -> Result<Self, NodeError> {
        let ms = |d: Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
        let config = openraft::Config {
            cluster_name: "fabric".into(),
            heartbeat_interval: ms(settings.heartbeat_interval),
            election_timeout_min: ms(settings.election_timeout_min),
            election_timeout_max: ms(settings.election_timeout_max),
            snapshot_policy: SnapshotPolicy::LogsSinceLast(settings.snapshot_after_logs),
            max_in_snapshot_log_to_keep: settings.snapshot_after_logs / 2,
            ..Default::default()
        }
        .validate()
        .map_err(|e| NodeError::Config(e.to_string()))?;
        let (log, sm) = store::open(db_path)?;
        let state = sm.state_handle();
        let feed = sm.feed();
        let closed = log.closed_signal();
        let raft = Raft::new(id, Arc::new(config), Network::new(transport), log, sm)
            .await
            .map_err(|e| NodeError::Raft(e.to_string()))?;
        Ok(Self {
            id,
            raft,
            state,
            feed,
            closed,
            membership: Arc::new(tokio::sync::Mutex::new(())),
            reads: SharedRounds::new(settings.heartbeat_interval / 4),
        })
    }

    pub fn id(&self) -> NodeId {
        self.id
    }

    pub fn raft(&self) -> &Raft {
        &self.raft
    }

    pub fn metrics(&self) -> RaftMetrics {
        self.raft.metrics().borrow().clone()
    }

    /// The locally applied state, without any freshness guarantee.
    pub fn local_state(&self) -> FabricState {
        self.state.read(|s| s.clone())
    }

    pub fn state_handle(&self) -> &StateHandle {
        &self.state
    }

    /// The feed of applied entries this node serves to the hosts that follow it.
    pub fn feed(&self) -> &Arc<Feed> {
        &self.feed
    }

    /// Makes this node the first member of a new cluster; a no-op when it already is in one.
    pub async fn bootstrap(&self, me: FabricNode) -> Result<bool, NodeError> {
        if self
            .raft
            .is_initialized()
            .await
            .map_err(|e| NodeError::Raft(e.to_string()))?
        {
            return Ok(false);
        }
        let members = BTreeMap::from([(self.id, me)]);
        match self.raft.initialize(members).await {
            Ok(()) => Ok(true),
            Err(RaftError::APIError(e)) => {
                tracing::info!("bootstrap skipped: {e}");
                Ok(false)
            }
            Err(e) => Err(NodeError::Raft(e.to_string())),
        }
    }

    pub fn leader(&self) -> Option<(NodeId, FabricNode)> {
        let m = self.metrics();
        let id = m.current_leader?;
        let node = m.membership_config.membership().get_node(&id)?.clone();
        Some((id, node))
    }

    fn not_leader(&self) -> NotLeader {
        NotLeader {
            leader: self.leader().filter(|(id, _)| *id != self.id),
        }
    }

    pub fn members(&self) -> Members {
        let m = self.metrics();
        let membership = m.membership_config.membership();
        let voters: BTreeSet<_> = membership.voter_ids().collect();
        let learners = membership.learner_ids().collect();
        let nodes = membership.nodes().map(|(id, n)| (*id, n.clone())).collect();
        let applied = m.last_applied.map(|l| l.index);
        let at = m.membership_config.log_id().map(|l| l.index);
        let settled = membership.get_joint_config().len() == 1 && at <= applied;
        Members {
            voters,
            learners,
            nodes,
            settled,
        }
    }

    /// Proposes on this node; fails with [`NotLeader`] when it is not the leader.
    pub async fn propose(&self, p: Proposal) -> Result<CommandResult, ProposeError> {
        match self.raft.client_write(p).await {
            Ok(resp) => Ok(resp.data),
            Err(RaftError::APIError(ClientWriteError::ForwardToLeader(f))) => {
                Err(ProposeError::NotLeader(NotLeader {
                    leader: f.leader_id.zip(f.leader_node),
                }))
            }
            Err(e) => Err(ProposeError::Raft(e.to_string())),
        }
    }

    /// Leader side of a read: confirms leadership with a quorum and returns the index a reader
    /// must have applied. Reads that arrive together share one quorum round (one that starts
    /// after each of them arrived), and rounds start at most every quarter heartbeat: hosts'
    /// lease confirmations cost the voters a bounded number of rounds, not one each.
    pub async fn read_index(&self) -> Result<u64, ProposeError> {
        // A node that knows it does not lead says so without a round (hosts ask their own Raft
        // first); a stale belief either way is caught by the round itself or by the caller's
        // retry at the leader it names.
        if self.raft.metrics().borrow().current_leader != Some(self.id) {
            return Err(ProposeError::NotLeader(self.not_leader()));
        }
        let this = self.clone();
        let round = move |_| {
            let this = this.clone();
            async move { this.read_index_round().await }
        };
        self.reads.join((), round).await.unwrap_or_else(|| {
            Err(ProposeError::Raft(
                "the read-index round ended without an answer".into(),
            ))
        })
    }

    /// How many read-index quorum rounds this node started as the leader.
    pub fn read_rounds(&self) -> u64 {
        self.reads.started()
    }

    /// One read-index round: a quorum confirms this node leads.
    async fn read_index_round(&self) -> Result<u64, ProposeError> {
        match self.raft.ensure_linearizable().await {
            Ok(log_id) => Ok(log_id.map(|l| l.index).unwrap_or(0)),
            Err(RaftError::APIError(_)) => Err(ProposeError::NotLeader(self.not_leader())),
            Err(e) => Err(ProposeError::Raft(e.to_string())),
        }
    }

    /// Waits until this node has applied `index`, then reads.
    pub async fn read_at<R>(
        &self,
        index: u64,
        timeout: Duration,
        f: impl FnOnce(&FabricState) -> R,
    ) -> Result<R, ProposeError> {
        if index > 0 {
            self.raft
                .wait(Some(timeout))
                .applied_index_at_least(Some(index), "read index")
                .await
                .map_err(|e| ProposeError::Raft(e.to_string()))?;
        }
        Ok(self.state.read(f))
    }

    /// Linearizable read on the leader.
    pub async fn read_linearizable<R>(
        &self,
        f: impl FnOnce(&FabricState) -> R,
    ) -> Result<R, ProposeError> {
        self.read_index().await?;
        Ok(self.state.read(f))
    }

    /// Adds a non-voter (or refreshes its address) without waiting for it to catch up; returns
    /// the log index of the configuration that names it, which [`Self::wait_caught_up`] waits
    /// for.
    pub async fn add_learner(&self, id: NodeId, node: FabricNode) -> Result<u64, ProposeError> {
        let _one_at_a_time = self.membership.lock().await;
        let what = format!("adding node {id} as a learner");
        let added = bounded(&what, MEMBERSHIP_CHANGE_TIMEOUT, async {
            self.raft
                .add_learner(id, node, false)
                .await
                .map_err(|e| self.membership_error(e))
        })
        .await?;
        Ok(added.log_id.index)
    }

    /// Leader side: waits until the leader has replicated to `id` up to `index`, for at most
    /// `timeout`. Holds nothing meanwhile.
    pub async fn wait_caught_up(
        &self,
        id: NodeId,
        index: u64,
        timeout: Duration,
    ) -> Result<(), ProposeError> {
        let caught_up = |m: &RaftMetrics| {
            m.replication
                .as_ref()
                .and_then(|r| r.get(&id))
                .and_then(|matched| matched.as_ref())
                .is_some_and(|matched| matched.index >= index)
        };
        self.raft
            .wait(Some(timeout))
            .metrics(caught_up, format!("node {id} catches up"))
            .await
            .map(|_| ())
            .map_err(|e| match e {
                openraft::metrics::WaitError::Timeout(..) => ProposeError::TimedOut {
                    what: format!("node {id} catching up to log index {index}"),
                    after: timeout,
                },
                e => ProposeError::Raft(e.to_string()),
            })
    }

    /// Admits node `id`: adds it as a learner and, when it should vote, waits (up to
    /// `catch_up`) until it has caught up and promotes it. Only the two changes hold the
    /// membership lock, each bounded; the wait holds nothing, so a joiner that dies while
    /// catching up leaves other membership changes free and gets [`ProposeError::TimedOut`]
    /// (it asks again).
    pub async fn admit(
        &self,
        id: NodeId,
        node: FabricNode,
        voter: bool,
        catch_up: Duration,
    ) -> Result<(), ProposeError> {
        if self.metrics().current_leader != Some(self.id) {
            return Err(ProposeError::NotLeader(self.not_leader()));
        }
        let members = self.members();
        if members.voters.contains(&id) && members.settled {
            return Ok(());
        }
        let mut caught_up_to = None;
        if members.nodes.get(&id) != Some(&node) {
            tracing::info!(node = id, "admitting node {id} ({node}) as a learner");
            caught_up_to = Some(self.add_learner(id, node).await?);
        }
        if voter && !members.voters.contains(&id) {
            // Also when it was added by an earlier attempt that timed out: it must have caught
            // up before it votes, or the joint configuration would wait for it.
            let index =
                caught_up_to.unwrap_or_else(|| self.metrics().last_log_index.unwrap_or_default());
            self.wait_caught_up(id, index, catch_up).await?;
        }
        if voter {
            // Also when it already votes in a joint configuration left by a failed change:
            // the same change again finishes it.
            tracing::info!(node = id, "promoting node {id} to voter");
            self.promote(id).await?;
        }
        Ok(())
    }

    /// Makes a learner a voter.
    pub async fn promote(&self, id: NodeId) -> Result<(), ProposeError> {
        let _one_at_a_time = self.membership.lock().await;
        self.change(
            format!("promoting node {id}"),
            ChangeMembers::AddVoterIds(BTreeSet::from([id])),
        )
        .await
    }

    /// Removes a member: a voter is removed from the voters first, then the node itself.
    pub async fn remove(&self, id: NodeId) -> Result<(), ProposeError> {
        let _one_at_a_time = self.membership.lock().await;
        if self.members().voters.contains(&id) {
            self.change(
                format!("removing node {id} from the voters"),
                ChangeMembers::RemoveVoters(BTreeSet::from([id])),
            )
            .await?;
        }
        self.change(
            format!("removing node {id}"),
            ChangeMembers::RemoveNodes(BTreeSet::from([id])),
        )
        .await
    }

    /// One membership change, bounded. The caller holds the membership lock.
    async fn change(
        &self,
        what: String,
        c: ChangeMembers<NodeId, FabricNode>,
    ) -> Result<(), ProposeError> {
        bounded(&what, MEMBERSHIP_CHANGE_TIMEOUT, async {
            self.raft
                .change_membership(c, false)
                .await
                .map(|_| ())
                .map_err(|e| self.membership_error(e))
        })
        .await
    }

    fn membership_error(
        &self,
        e: RaftError<NodeId, ClientWriteError<NodeId, FabricNode>>,
    ) -> ProposeError {
        match e {
            RaftError::APIError(ClientWriteError::ForwardToLeader(f)) => {
                ProposeError::NotLeader(NotLeader {
                    leader: f.leader_id.zip(f.leader_node),
                })
            }
            e => ProposeError::Raft(e.to_string()),
        }
    }

    /// Stops Raft; the store file stays open while any handle lives.
    pub async fn stop(&self) {
        if let Err(e) = self.raft.shutdown().await {
            tracing::warn!("raft shutdown: {e}");
        }
    }

    /// Stops Raft and waits (up to 10 s) until its store file is closed, so the same file can
    /// be opened again. Other clones of this handle must be dropped for the file to close.
    pub async fn shutdown(self) {
        self.stop().await;
        let Self {
            raft,
            state,
            feed,
            closed,
            ..
        } = self;
        drop((raft, state, feed));
        if tokio::time::timeout(Duration::from_secs(10), closed.wait())
            .await
            .is_err()
        {
            tracing::warn!("raft store still open 10 s after shutdown");
        }
    }
}

/// Runs `f` for at most `after`; a change still in flight then goes on inside Raft, but the
/// caller (and the membership lock it holds) is released.
async fn bounded<T>(
    what: &str,
    after: Duration,
    f: impl Future<Output = Result<T, ProposeError>>,
) -> Result<T, ProposeError> {
    tokio::time::timeout(after, f).await.unwrap_or_else(|_| {
        Err(ProposeError::TimedOut {
            what: what.to_string(),
            after,
        })
    })
}
