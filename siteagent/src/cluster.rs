//! This node's place in the fabric: proposals and linearizable reads carried to the leader from
//! wherever they arrive, admission of voters, joining, the state view every loop reads
//! ([`Cluster::state`]), and serving the WAN streams (raft and control) peers send here.
//!
//! Voters are Raft members (they join as learners, catch up and are promoted). Hosts are not:
//! they register in the state and follow it through a relay ([`crate::relay`]), so their
//! [`StateView`] is fed by a follower, and the leader they forward to is the one their relay
//! names.
//!
//! Owns: [`Cluster`] (the Raft member, the WAN endpoint, this node's [`FabricNode`], its
//! [`StateView`]) and [`WanHandler`]; implements [`Fabric`] for the agent's loops.
//!
//! Invariant: every change to the fabric state is a proposal committed by Raft; a read through
//! [`Cluster::read`] is linearizable (a read index confirmed by the leader's quorum, applied to
//! this node's view before reading — by Raft on a voter, by the follower on a host). The leader
//! acts on what a peer asks only within what its certificate proves.
//!
//! A host's read index ([`Cluster::read`]) likewise goes to the leader and, when it is slow or
//! unreachable, through the other voters, which ask the leader for it.
//!
//! Lease confirmations ([`Cluster::confirm_lease`]) go from a host to its site's relay, which
//! carries all the confirmations that reached it within [`CONFIRM_BATCH_GAP`] to the leader in
//! one request (one read index for the batch): the leader's confirmation traffic grows with
//! relays, not hosts. A voter asks the leader itself. When that first choice has not answered
//! within [`RELAY_AFTER`], or did not last time, the host also asks the leader and every other
//! voter, which forward to the leader: a host whose only cut link is the one to its relay or to
//! the leader keeps its lease as long as it reaches a voter that reaches the leader. The leader
//! evaluates every confirmation on its own state (a relay's or host's may lag) and notes when it
//! confirmed each host ([`Cluster::confirmations`]), so it can tell a lease that lapsed while
//! the host's site looks up.
//!
//! Does not: decide anything about hosts, sites or services; it carries what others decide.

use std::collections::BTreeMap;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use consensus::FabricNode;
use consensus::feed::Follower;
use consensus::network::{RaftRpc, RaftRpcReply, serve_rpc};
use consensus::node::{FabricRaft, NotLeader, ProposeError};
use consensus::rounds::SharedRounds;
use consensus::state::{Applied, Command, FabricState, Proposal};
use consensus::types::AppendEntriesResponse;
use failover::quorum::Members;
use futures::FutureExt as _;
use futures::future::BoxFuture;
use futures::stream::{FuturesUnordered, StreamExt};
use tokio_util::sync::CancellationToken;
use wan::{Channel, Handler, Identity, Wan, frame};

use crate::clock;
use crate::confirmation::{LeaseRead, lease_read};
use crate::control::{ControlReply, ControlRequest, HeardReply, authorize, authorize_confirmation};
use crate::fabric::{Fabric, FabricError, lock};
use crate::view::StateView;

/// A relay's batches of lease confirmations: the hosts' `(host, site)` in, every host's read
/// (or why there is none) out.
type ConfirmBatches = SharedRounds<(u64, String), Result<Arc<BTreeMap<u64, LeaseRead>>, String>>;

/// A relay carries its hosts' confirmations to the leader at most this often (one request per
/// batch), well within [`RELAY_AFTER`].
const CONFIRM_BATCH_GAP: Duration = Duration::from_millis(25);

/// How long a write or read may keep looking for a leader.
const LEADER_WAIT: Duration = Duration::from_secs(10);

/// How long a lease confirmation waits for the leader before it also asks the other voters to
/// relay it.
pub const RELAY_AFTER: Duration = Duration::from_millis(250);

/// How long the leader waits for a joining voter to catch up before it answers the join with
/// a timeout (the joiner asks again).
const ADMIT_CATCH_UP: Duration = Duration::from_secs(30);

/// Every agent of the fabric with where it lives and where to reach it (WAN address).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentInfo {
    pub site: String,
    pub addr: String,
}

/// This node in the fabric.
pub struct Cluster {
    id: u64,
    me: FabricNode,
    wan: Arc<Wan>,
    raft: FabricRaft,
    /// What this node has applied: Raft's state on a voter, the follower's on a host.
    view: StateView,
    /// How long this node, as a relay, holds a watch with nothing to send.
    watch_wait: Duration,
    /// Where to ask for admission before a leader is known.
    peers: Vec<SocketAddr>,
    /// Whether this node should vote once admitted.
    voter: bool,
    /// Leader side: when this node last confirmed each host's lease (majority clock).
    confirmations: std::sync::Mutex<BTreeMap<u64, Instant>>,
    /// Whether the previous confirmation of this node's own lease was answered by a hedge (its
    /// first choice did not answer in time): if so the next one asks everyone at once.
    hedged_last: AtomicBool,
    /// Relay side: its hosts' lease confirmations, carried to the leader in batches.
    confirm_batches: Arc<ConfirmBatches>,
    /// When this node last accepted entries from a leader (pre-vote).
    heard: Heard,
}

impl Cluster {
    /// `view` is what this node reads: [`StateView::of_raft`] on a voter, a follower's view on
    /// a host (see [`Self::new_view`]).
    pub fn new(
        me: FabricNode,
        wan: Arc<Wan>,
        raft: FabricRaft,
        view: StateView,
        peers: Vec<SocketAddr>,
        voter: bool,
    ) -> Self {
        let watch_wait = crate::relay::watch_wait(wan.config().request_timeout);
        Self {
            id: raft.id(),
            me,
            wan,
            raft,
            view,
            watch_wait,
            peers,
            voter,
            confirmations: std::sync::Mutex::new(BTreeMap::new()),
            hedged_last: AtomicBool::new(false),
            confirm_batches: SharedRounds::new(CONFIRM_BATCH_GAP),
            heard: Heard::default(),
        }
    }

    pub fn id(&self) -> u64 {
        self.id
    }

    /// This node as the membership records it.
    pub fn me(&self) -> &FabricNode {
        &self.me
    }

    /// The view a node reads, and the follower to feed when it is a host: a voter (by config,
    /// or because its Raft store names it a member, e.g. a host promoted earlier) reads Raft's
    /// state; any other node follows a relay.
    pub fn new_view(raft: &FabricRaft, voter: bool) -> (StateView, Option<Arc<Follower>>) {
        if voter || raft.members().nodes.contains_key(&raft.id()) {
            (StateView::of_raft(raft), None)
        } else {
            let follower = Arc::new(Follower::new());
            (StateView::of_follower(&follower), Some(follower))
        }
    }

    /// The Raft node (on a host: idle unless promoted). Loops that only read the state use
    /// [`Self::state`].
    pub fn raft(&self) -> &FabricRaft {
        &self.raft
    }

    /// What this node has applied, and the leader it knows.
    pub fn state(&self) -> &StateView {
        &self.view
    }

    pub fn wan(&self) -> &Arc<Wan> {
        &self.wan
    }

    /// The name this node's own reports are recorded under.
    pub fn actor(&self) -> String {
        format!("node {}", self.id)
    }

    /// True while this node is the Raft leader.
    pub fn is_leader(&self) -> bool {
        self.raft.metrics().current_leader == Some(self.id)
    }

    /// Every agent of the fabric: the Raft members (voters and learners) of the applied
    /// configuration and the hosts registered in the state.
    pub fn agents(&self) -> BTreeMap<u64, AgentInfo> {
        let mut agents: BTreeMap<u64, AgentInfo> = self.view.read(|s| {
            s.hosts
                .values()
                .map(|h| {
                    let info = AgentInfo {
                        site: h.site.clone(),
                        addr: h.address.clone(),
                    };
                    (h.id, info)
                })
                .collect()
        });
        for (id, n) in self.view.members().nodes {
            agents.insert(
                id,
                AgentInfo {
                    site: n.site,
                    addr: n.addr,
                },
            );
        }
        agents
    }

    /// Every agent with its site, as the health quorum counts them: voters and hosts.
    pub fn members_by_site(&self) -> Members {
        self.agents()
            .into_iter()
            .map(|(id, a)| (id, a.site))
            .collect()
    }

    /// The Raft term this node leads in, if it leads (read together, so a term is never paired
    /// with another term's leader).
    pub fn leader_term(&self) -> Option<u64> {
        let m = self.raft.metrics();
        (m.current_leader == Some(self.id)).then_some(m.current_term)
    }

    /// Proposes `command`, on this node if it leads, else on the leader over the WAN.
    pub async fn propose(&self, actor: String, command: Command) -> Result<Applied, FabricError> {
        self.submit(Proposal::new(crate::clock::unix_ms(), actor, command))
            .await
    }

    /// Proposes `command` as planned in `term`: refused by the state machine unless the log
    /// entry carrying it is of that term, wherever it is forwarded.
    pub async fn propose_in_term(
        &self,
        actor: String,
        command: Command,
        term: u64,
    ) -> Result<Applied, FabricError> {
        let mut p = Proposal::new(crate::clock::unix_ms(), actor, command);
        p.term = Some(term);
        self.submit(p).await
    }

    async fn submit(&self, p: Proposal) -> Result<Applied, FabricError> {
        let result = self
            .on_leader(ControlRequest::Propose(Box::new(p.clone())), |raft| {
                let p = p.clone();
                async move { raft.propose(p).await }
            })
            .await?;
        match result {
            ControlReply::Proposed(r) => {
                let label = if r.is_ok() { "applied" } else { "rejected" };
                metrics::counter!("fabric_proposals_total", "result" => label).increment(1);
                Ok(r?)
            }
            other => Err(FabricError::Unavailable(format!(
                "unexpected reply {other:?}"
            ))),
        }
    }

    /// A linearizable read: gets a read index from the leader, waits until this node's view
    /// applied it (Raft on a voter, the follower on a host), then reads locally.
    pub async fn read<R: Send>(
        &self,
        f: impl FnOnce(&FabricState) -> R + Send,
    ) -> Result<R, FabricError> {
        // A host also asks the other voters (relays forward it to the leader) when the leader
        // is slow or unreachable from here.
        let relays = if self.view.is_relayed() {
            self.relay_voters()
                .into_iter()
                .map(|(id, addr)| self.read_index_via_relay(id, addr))
                .collect()
        } else {
            Vec::new()
        };
        let (index, _) = hedged(self.read_index_on_leader(), RELAY_AFTER, relays).await?;
        self.view
            .wait_applied(index, LEADER_WAIT)
            .await
            .map_err(|e| FabricError::Unavailable(e.to_string()))?;
        Ok(self.view.read(f))
    }

    /// The leader's read index (this node's own when it leads).
    pub async fn read_index_on_leader(&self) -> Result<u64, FabricError> {
        let reply = self
            .on_leader(ControlRequest::ReadIndex, |raft| async move {
                raft.read_index().await.map(ReadIndexOf)
            })
            .await?;
        match reply {
            ControlReply::ReadIndex(i) => Ok(i),
            other => Err(FabricError::Unavailable(format!(
                "unexpected reply {other:?}"
            ))),
        }
    }

    /// Asks voter `id` at `addr` to get the leader's read index for this host.
    async fn read_index_via_relay(&self, id: u64, addr: SocketAddr) -> Result<u64, FabricError> {
        match self
            .wan
            .request::<_, ControlReply>(
                addr,
                Some(id),
                Channel::Control,
                &ControlRequest::ReadIndex,
            )
            .await
        {
            Ok(ControlReply::ReadIndex(i)) => Ok(i),
            Ok(other) => Err(FabricError::Unavailable(format!("relay {id}: {other:?}"))),
            Err(e) => Err(FabricError::Unavailable(format!("relay {id}: {e}"))),
        }
    }

    /// Confirms the lease of `host` of `site`. A host asks its site's relay, which carries all
    /// its hosts' confirmations to the leader in one request; a node without one (a voter) asks
    /// the leader. When that first choice has not answered within [`RELAY_AFTER`] (or did not
    /// last time), the leader and the other voters are asked too; the first answer wins.
    pub async fn confirm_lease(&self, host: u64, site: String) -> Result<LeaseRead, FabricError> {
        let hedge = if self.hedged_last.load(Ordering::Relaxed) {
            Duration::ZERO
        } else {
            RELAY_AFTER
        };
        let own = self.site_relay();
        let mut others: Vec<BoxFuture<'_, Result<LeaseRead, FabricError>>> = self
            .relay_voters()
            .into_iter()
            .filter(|(id, _)| own.is_none_or(|(own, _)| own != *id))
            .map(|(id, addr)| self.confirm_via_relay(id, addr, host, site.clone()).boxed())
            .collect();
        let first = match own {
            Some((id, addr)) => {
                if self.view.leader().is_none_or(|(leader, _)| leader != id) {
                    others.push(self.confirm_via_leader(host, site.clone()).boxed());
                }
                self.confirm_via_relay(id, addr, host, site).boxed()
            }
            None => self.confirm_via_leader(host, site).boxed(),
        };
        let (read, via) = hedged(first, hedge, others).await?;
        self.hedged_last.store(via == Via::Hedge, Ordering::Relaxed);
        Ok(read)
    }

    /// The voter of this host's own site it confirms through (`None` on a voter, and on a host
    /// whose site has no voter).
    fn site_relay(&self) -> Option<(u64, SocketAddr)> {
        if !self.view.is_relayed() {
            return None;
        }
        let m = self.view.members();
        crate::relay::candidates(&m, self.id, &self.me.site, &[])
            .into_iter()
            .find_map(|r| {
                let id = r.id?;
                (m.nodes.get(&id)?.site == self.me.site).then_some((id, r.addr))
            })
    }

    /// A lease confirmation on the leader (this node or the one it knows). The leader reads
    /// linearizably and notes the confirmation.
    pub async fn confirm_via_leader(
        &self,
        host: u64,
        site: String,
    ) -> Result<LeaseRead, FabricError> {
        let request = ControlRequest::ConfirmLease {
            host,
            site: site.clone(),
        };
        let reply = self
            .on_leader(request, |raft| {
                let hosts = [(host, site.clone())];
                async move {
                    let mut reads = self.read_leases_on_leader(&raft, &hosts).await?;
                    reads
                        .pop()
                        .map(|(_, read)| read)
                        .ok_or_else(|| ProposeError::Raft("no read for the host asked".into()))
                }
            })
            .await?;
        match reply {
            ControlReply::LeaseRead(read) => Ok(read),
            other => Err(FabricError::Unavailable(format!(
                "unexpected reply {other:?}"
            ))),
        }
    }

    /// Relay side: carries the confirmation of `host` to the leader in the next batch of this
    /// relay's confirmations (one that leaves after it arrived).
    pub async fn confirm_in_batch(
        self: &Arc<Self>,
        host: u64,
        site: String,
    ) -> Result<LeaseRead, FabricError> {
        metrics::counter!("fabric_lease_confirmations_relayed_total").increment(1);
        let cluster = self.clone();
        let round = move |hosts: Vec<(u64, String)>| {
            let cluster = cluster.clone();
            async move {
                cluster
                    .confirm_many_via_leader(hosts)
                    .await
                    .map(Arc::new)
                    .map_err(|e| e.to_string())
            }
        };
        let reads = self
            .confirm_batches
            .join((host, site), round)
            .await
            .ok_or_else(|| FabricError::Unavailable("the confirmation batch was dropped".into()))?
            .map_err(FabricError::Unavailable)?;
        reads.get(&host).cloned().ok_or_else(|| {
            FabricError::Unavailable(format!("the leader's answer left out host {host}"))
        })
    }

    /// A batch of confirmations on the leader (this node or the one it knows).
    async fn confirm_many_via_leader(
        &self,
        hosts: Vec<(u64, String)>,
    ) -> Result<BTreeMap<u64, LeaseRead>, FabricError> {
        let request = ControlRequest::ConfirmLeases {
            hosts: hosts.clone(),
        };
        let reply = self
            .on_leader(request, |raft| {
                let hosts = hosts.clone();
                async move { self.read_leases_on_leader(&raft, &hosts).await }
            })
            .await?;
        match reply {
            ControlReply::LeaseReads(reads) => Ok(reads.into_iter().collect()),
            other => Err(FabricError::Unavailable(format!(
                "unexpected reply {other:?}"
            ))),
        }
    }

    /// Leader side: reads what each of `hosts` holds after one read index, and notes every
    /// confirmation.
    async fn read_leases_on_leader(
        &self,
        raft: &FabricRaft,
        hosts: &[(u64, String)],
    ) -> Result<Vec<(u64, LeaseRead)>, ProposeError> {
        let reads = raft
            .read_linearizable(|s| {
                hosts
                    .iter()
                    .map(|(host, site)| (*host, lease_read(s, *host, site)))
                    .collect::<Vec<_>>()
            })
            .await?;
        let now = clock::majority_now();
        let mut confirmed = lock(&self.confirmations);
        for (host, _) in &reads {
            confirmed.insert(*host, now);
        }
        Ok(reads)
    }

    /// Asks voter `id` at `addr` to carry a confirmation to the leader.
    async fn confirm_via_relay(
        &self,
        id: u64,
        addr: SocketAddr,
        host: u64,
        site: String,
    ) -> Result<LeaseRead, FabricError> {
        let request = ControlRequest::ConfirmLease { host, site };
        match self
            .wan
            .request::<_, ControlReply>(addr, Some(id), Channel::Control, &request)
            .await
        {
            Ok(ControlReply::LeaseRead(read)) => Ok(read),
            Ok(other) => Err(FabricError::Unavailable(format!("relay {id}: {other:?}"))),
            Err(e) => Err(FabricError::Unavailable(format!("relay {id}: {e}"))),
        }
    }

    /// The voters other than this node and the leader it knows, with their WAN addresses.
    fn relay_voters(&self) -> Vec<(u64, SocketAddr)> {
        let m = self.view.members();
        let leader = self.view.leader().map(|(id, _)| id);
        m.voters
            .iter()
            .filter(|id| **id != self.id && Some(**id) != leader)
            .filter_map(|id| Some((*id, m.nodes.get(id)?.addr.parse().ok()?)))
            .collect()
    }

    /// When this node last accepted entries from a leader.
    pub fn heard(&self) -> &Heard {
        &self.heard
    }

    /// The answer to a pre-vote question: the leader answers for itself while its quorum
    /// acknowledges it; others say when they last accepted entries from a leader.
    fn heard_reply(&self) -> Option<HeardReply> {
        let m = self.raft.metrics();
        if m.current_leader == Some(self.id) {
            return m.millis_since_quorum_ack.map(|ago_ms| HeardReply {
                leader: self.id,
                term: m.current_term,
                ago_ms,
            });
        }
        self.heard.reply(Instant::now())
    }

    /// Leader side: when this node last confirmed each host's lease, on the majority clock.
    pub fn confirmations(&self) -> BTreeMap<u64, Instant> {
        lock(&self.confirmations).clone()
    }

    /// Runs `local` if this node leads; otherwise sends `remote` to the leader. Retries while
    /// leadership moves, for up to [`LEADER_WAIT`].
    async fn on_leader<F, Fut, T>(
        &self,
        remote: ControlRequest,
        local: F,
    ) -> Result<ControlReply, FabricError>
    where
        F: Fn(FabricRaft) -> Fut,
        Fut: std::future::Future<Output = Result<T, ProposeError>>,
        T: IntoLocalReply,
    {
        let deadline = tokio::time::Instant::now() + LEADER_WAIT;
        let mut last = String::from("no leader elected");
        loop {
            let leader = match local(self.raft.clone()).await {
                Ok(t) => return Ok(t.into_reply()),
                // A host's own Raft knows no leader: its relay named one.
                Err(ProposeError::NotLeader(NotLeader { leader })) => {
                    leader.or_else(|| self.view.leader())
                }
                Err(e @ ProposeError::TimedOut { .. }) => {
                    last = e.to_string();
                    None
                }
                Err(ProposeError::Raft(e)) => {
                    last = e;
                    None
                }
            };
            if let Some((id, node)) = leader.filter(|(id, _)| *id != self.id) {
                match node.addr.parse::<SocketAddr>() {
                    Ok(addr) => {
                        // A request to a leader that just died would wait for the WAN timeout;
                        // as soon as Raft here stops naming it the leader, ask again.
                        let request = self.wan.request::<_, ControlReply>(
                            addr,
                            Some(id),
                            Channel::Control,
                            &remote,
                        );
                        let reply = tokio::select! {
                            r = request => Some(r),
                            _ = self.view.leader_changes_from(id) => None,
                        };
                        match reply {
                            Some(Ok(ControlReply::NotLeader(_))) => {
                                last = format!("node {id} is no longer the leader")
                            }
                            Some(Ok(ControlReply::Failed(e))) => last = format!("leader {id}: {e}"),
                            Some(Ok(reply)) => return Ok(reply),
                            Some(Err(e)) => last = format!("leader {id}: {e}"),
                            None => last = format!("leader {id} was replaced mid-request"),
                        }
                    }
                    Err(_) => last = format!("leader {id} has a bad address {}", node.addr),
                }
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(FabricError::Unavailable(last));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Leader side of admission: adds `id` as a learner, then (when it should vote) waits up
    /// to [`ADMIT_CATCH_UP`] for it to catch up and promotes it. Membership changes run one at
    /// a time, but the wait holds no lock ([`FabricRaft::admit`]): a joiner that dies while
    /// catching up gets a timeout (and asks again) instead of blocking `members
    /// promote/remove`.
    pub async fn admit(&self, id: u64, node: FabricNode, voter: bool) -> Result<(), ProposeError> {
        self.raft.admit(id, node, voter, ADMIT_CATCH_UP).await
    }

    /// Leader side of `members promote`: a learner is promoted; a registered host that is no
    /// Raft member is first added as a learner at the addresses it registered, and promoted
    /// once it has caught up (up to [`ADMIT_CATCH_UP`]).
    pub async fn promote(&self, id: u64) -> Result<(), PromoteError> {
        if self.raft.members().nodes.contains_key(&id) {
            return Ok(self.raft.promote(id).await?);
        }
        let node = self
            .view
            .read(|s| {
                s.hosts.get(&id).map(|h| FabricNode {
                    addr: h.address.clone(),
                    admin_addr: h.admin_address.clone(),
                    site: h.site.clone(),
                })
            })
            .ok_or(PromoteError::Unknown(id))?;
        Ok(self.admit(id, node, true).await?)
    }

    /// True when this node needs no (more) admission: a voter that votes in a settled
    /// configuration at its current addresses; a host always (it follows a relay instead).
    fn is_member(&self) -> bool {
        if !self.voter {
            return true;
        }
        let m = self.raft.members();
        // Settled: a voter in a joint configuration asks again, which finishes the change.
        m.voters.contains(&self.id) && m.settled && m.nodes.get(&self.id) == Some(&self.me)
    }

    /// A voter asks peers (and then the leader they name) to admit it until it votes. A host
    /// returns at once: it registers in the state instead, and follows it through a relay.
    pub async fn join(&self, shutdown: &CancellationToken) {
        let mut attempt = 0u32;
        while !self.is_member() {
            let mut targets: Vec<(Option<u64>, SocketAddr)> =
                self.peers.iter().map(|a| (None, *a)).collect();
            if let Some((id, node)) = self.raft.leader()
                && let Ok(addr) = node.addr.parse()
            {
                targets.insert(0, (Some(id), addr));
            }
            let req = ControlRequest::Join {
                node: self.me.clone(),
                voter: self.voter,
            };
            for (expect, addr) in targets {
                match self
                    .wan
                    .request::<_, ControlReply>(addr, expect, Channel::Control, &req)
                    .await
                {
                    Ok(ControlReply::Joined) => {
                        tracing::info!("admitted to the cluster via {addr}");
                        break;
                    }
                    Ok(ControlReply::NotLeader(NotLeader {
                        leader: Some((id, node)),
                    })) => {
                        if let Ok(leader) = node.addr.parse() {
                            match self
                                .wan
                                .request::<_, ControlReply>(
                                    leader,
                                    Some(id),
                                    Channel::Control,
                                    &req,
                                )
                                .await
                            {
                                Ok(ControlReply::Joined) => {
                                    tracing::info!("admitted to the cluster by leader {id}");
                                    break;
                                }
                                other => tracing::debug!("join via leader {id}: {other:?}"),
                            }
                        }
                    }
                    other => tracing::debug!("join via {addr}: {other:?}"),
                }
            }
            attempt += 1;
            if attempt.is_multiple_of(20) {
                tracing::warn!("still not a cluster member after {attempt} attempts");
            }
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(Duration::from_millis(250)) => {}
            }
            // Membership reaches us through replication; give it a moment.
            if self.is_member() {
                break;
            }
        }
    }
}

impl Fabric for Cluster {
    fn confirm_lease(
        &self,
        host: u64,
        site: String,
    ) -> impl Future<Output = Result<LeaseRead, FabricError>> + Send {
        Cluster::confirm_lease(self, host, site)
    }

    fn read<R, F>(&self, f: F) -> impl Future<Output = Result<R, FabricError>> + Send
    where
        F: FnOnce(&FabricState) -> R + Send,
        R: Send,
    {
        Cluster::read(self, f)
    }

    fn propose(
        &self,
        actor: String,
        command: Command,
    ) -> impl Future<Output = Result<Applied, FabricError>> + Send {
        Cluster::propose(self, actor, command)
    }

    fn propose_in_term(
        &self,
        actor: String,
        command: Command,
        term: u64,
    ) -> impl Future<Output = Result<Applied, FabricError>> + Send {
        Cluster::propose_in_term(self, actor, command, term)
    }
}

/// Which way a hedged request was answered: the first choice, or one of the hedges.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Via {
    Direct,
    Hedge,
}

/// Runs `direct`; when it has not succeeded within `hedge`, also every one of `relays` (the
/// hedges); the first success wins. Fails with the direct error (else a hedge's) when all
/// failed.
async fn hedged<T, D, R>(
    direct: D,
    hedge: Duration,
    relays: Vec<R>,
) -> Result<(T, Via), FabricError>
where
    D: Future<Output = Result<T, FabricError>>,
    R: Future<Output = Result<T, FabricError>>,
{
    tokio::pin!(direct);
    let mut direct_err = None;
    tokio::select! {
        r = &mut direct => match r {
            Ok(t) => return Ok((t, Via::Direct)),
            Err(e) => direct_err = Some(e),
        },
        _ = tokio::time::sleep(hedge) => {}
    }
    let mut relays: FuturesUnordered<R> = relays.into_iter().collect();
    let mut relay_err = None;
    loop {
        tokio::select! {
            r = &mut direct, if direct_err.is_none() => match r {
                Ok(t) => return Ok((t, Via::Direct)),
                Err(e) => direct_err = Some(e),
            },
            Some(r) = relays.next() => match r {
                Ok(t) => return Ok((t, Via::Hedge)),
                Err(e) => relay_err = Some(e),
            },
            else => break,
        }
    }
    Err(direct_err
        .or(relay_err)
        .unwrap_or_else(|| FabricError::Unavailable("no voter to ask".into())))
}

/// Turns the result of a local leader action into the reply a remote leader would have sent.
trait IntoLocalReply {
    fn into_reply(self) -> ControlReply;
}

impl IntoLocalReply for consensus::state::CommandResult {
    fn into_reply(self) -> ControlReply {
        ControlReply::Proposed(self)
    }
}

impl IntoLocalReply for Vec<(u64, LeaseRead)> {
    fn into_reply(self) -> ControlReply {
        ControlReply::LeaseReads(self)
    }
}

impl IntoLocalReply for LeaseRead {
    fn into_reply(self) -> ControlReply {
        ControlReply::LeaseRead(self)
    }
}

/// A read index the local leader confirmed.
struct ReadIndexOf(u64);

impl IntoLocalReply for ReadIndexOf {
    fn into_reply(self) -> ControlReply {
        ControlReply::ReadIndex(self.0)
    }
}

/// Why `members promote` failed.
#[derive(Debug, thiserror::Error)]
pub enum PromoteError {
    #[error("node {0} is neither a Raft member nor a registered host")]
    Unknown(u64),
    #[error(transparent)]
    Raft(#[from] ProposeError),
}

/// When this node last accepted entries from a leader, and from which.
#[derive(Debug, Default)]
pub struct Heard {
    last: std::sync::Mutex<Option<(u64, u64, Instant)>>,
}

impl Heard {
    /// Notes an AppendEntries from `leader` of `term` that this node accepted at `now`.
    pub fn accepted(&self, leader: u64, term: u64, now: Instant) {
        *lock(&self.last) = Some((leader, term, now));
    }

    /// The last leader heard, as an answer at `now`.
    pub fn reply(&self, now: Instant) -> Option<HeardReply> {
        lock(&self.last).map(|(leader, term, at)| HeardReply {
            leader,
            term,
            ago_ms: u64::try_from(now.saturating_duration_since(at).as_millis())
                .unwrap_or(u64::MAX),
        })
    }
}

/// Dispatches incoming WAN streams.
pub struct WanHandler {
    pub cluster: Arc<Cluster>,
    /// Serves the `bulk` channel (volume replication), if this agent holds volumes.
    pub bulk: Option<Arc<dyn BulkHandler>>,
    /// Answers SWIM messages from this site's agents.
    pub health: Arc<crate::health::Health>,
}

/// Answers requests on the WAN's `bulk` channel (the volume service implements it).
pub trait BulkHandler: Send + Sync + 'static {
    fn handle<'a>(
        &'a self,
        peer: &'a Identity,
        request: Vec<u8>,
    ) -> Pin<Box<dyn Future<Output = anyhow::Result<Vec<u8>>> + Send + 'a>>;
}

impl Handler for WanHandler {
    fn handle(
        &self,
        peer: Identity,
        channel: Channel,
        request: Vec<u8>,
    ) -> Pin<Box<dyn Future<Output = anyhow::Result<Vec<u8>>> + Send + '_>> {
        Box::pin(async move {
            match channel {
                Channel::Raft => {
                    let rpc: RaftRpc = frame::decode(&request)?;
                    metrics::counter!("fabric_wan_requests_total", "channel" => "raft")
                        .increment(1);
                    let from_leader = match &rpc {
                        RaftRpc::Append(req) if req.vote.committed => req
                            .vote
                            .leader_id()
                            .voted_for()
                            .map(|l| (l, req.vote.leader_id().get_term())),
                        _ => None,
                    };
                    let reply = serve_rpc(self.cluster.raft().raft(), rpc).await;
                    if let (Some((leader, term)), RaftRpcReply::Append(Ok(resp))) =
                        (from_leader, &reply)
                        && !matches!(resp, AppendEntriesResponse::HigherVote(_))
                    {
                        self.cluster.heard.accepted(leader, term, Instant::now());
                    }
                    Ok(frame::encode(&reply)?)
                }
                Channel::Control => {
                    let req: ControlRequest = frame::decode(&request)?;
                    metrics::counter!("fabric_wan_requests_total", "channel" => "control")
                        .increment(1);
                    let reply = self.control(&peer, req).await;
                    Ok(frame::encode(&reply)?)
                }
                Channel::Bulk => match &self.bulk {
                    Some(bulk) => {
                        metrics::counter!("fabric_wan_requests_total", "channel" => "bulk")
                            .increment(1);
                        bulk.handle(&peer, request).await
                    }
                    None => anyhow::bail!("this agent serves no bulk transfers"),
                },
            }
        })
    }
}

impl WanHandler {
    async fn control(&self, peer: &Identity, req: ControlRequest) -> ControlReply {
        let raft = self.cluster.raft();
        match req {
            ControlRequest::Propose(p) => {
                if let Err(refusal) = authorize(peer, &p) {
                    tracing::warn!("refused a proposal from {peer}: {refusal}");
                    return ControlReply::Failed(refusal);
                }
                match raft.propose(*p).await {
                    Ok(result) => ControlReply::Proposed(result),
                    Err(e) => e.into(),
                }
            }
            ControlRequest::ReadIndex => match raft.read_index().await {
                Ok(index) => ControlReply::ReadIndex(index),
                // A host (no Raft member) that asks a voter is relayed to the leader; a member
                // asks the leader itself.
                Err(ProposeError::NotLeader(_))
                    if peer
                        .node_id()
                        .is_some_and(|id| !raft.members().nodes.contains_key(&id))
                        && raft.members().nodes.contains_key(&self.cluster.id) =>
                {
                    match self.cluster.read_index_on_leader().await {
                        Ok(index) => ControlReply::ReadIndex(index),
                        Err(e) => ControlReply::Failed(e.to_string()),
                    }
                }
                Err(e) => e.into(),
            },
            ControlRequest::Join { node, voter } => {
                let Some(id) = peer.node_id() else {
                    return ControlReply::Failed(format!("{peer} cannot join: not an agent"));
                };
                if node.site != peer.site {
                    return ControlReply::Failed(format!(
                        "node {id} asked to join in site {} but its certificate says {}",
                        node.site, peer.site
                    ));
                }
                if !voter {
                    // Hosts follow the state through a relay, not as Raft learners.
                    return ControlReply::Joined;
                }
                match self.cluster.admit(id, node, voter).await {
                    Ok(()) => ControlReply::Joined,
                    Err(e) => e.into(),
                }
            }
            ControlRequest::ConfirmLease { host, site } => {
                if let Err(refusal) = authorize_confirmation(peer, host, &site) {
                    tracing::warn!("refused a lease confirmation from {peer}: {refusal}");
                    return ControlReply::Failed(refusal);
                }
                match self.cluster.confirm_in_batch(host, site).await {
                    Ok(read) => ControlReply::LeaseRead(read),
                    Err(e) => ControlReply::Failed(e.to_string()),
                }
            }
            ControlRequest::ConfirmLeases { hosts } => {
                // Only a Raft member relays: the leader notes every host it names as alive.
                if !peer
                    .node_id()
                    .is_some_and(|id| raft.members().nodes.contains_key(&id))
                {
                    tracing::warn!(
                        "refused a batch of lease confirmations from {peer}: not a Raft member"
                    );
                    return ControlReply::Failed(format!(
                        "{peer} is not a Raft member: it relays no confirmations"
                    ));
                }
                if let Some(refusal) = hosts
                    .iter()
                    .find_map(|(host, site)| authorize_confirmation(peer, *host, site).err())
                {
                    tracing::warn!("refused a batch of lease confirmations from {peer}: {refusal}");
                    return ControlReply::Failed(refusal);
                }
                match self.cluster.read_leases_on_leader(raft, &hosts).await {
                    Ok(reads) => {
                        metrics::counter!("fabric_lease_confirmation_batches_total").increment(1);
                        ControlReply::LeaseReads(reads)
                    }
                    Err(e) => e.into(),
                }
            }
            ControlRequest::LeaderHeard => ControlReply::Heard(self.cluster.heard_reply()),
            ControlRequest::Ping => ControlReply::Pong,
            ControlRequest::Watch { from } => {
                if peer.role != wan::Role::Agent {
                    return ControlReply::Failed(format!("{peer} is not an agent"));
                }
                if !raft.members().nodes.contains_key(&self.cluster.id) {
                    return ControlReply::Failed(format!(
                        "node {} relays nothing: it is not a Raft member",
                        self.cluster.id
                    ));
                }
                let leader = || raft.leader();
                crate::relay::serve_watch(raft.feed(), from, self.cluster.watch_wait, leader).await
            }
            ControlRequest::Swim(message) => match peer.node_id() {
                Some(from) => ControlReply::Swim(self.health.handle(from, message)),
                None => ControlReply::Failed(format!("{peer} is not an agent")),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn after(ms: u64, r: Result<u64, FabricError>) -> Result<u64, FabricError> {
        tokio::time::sleep(Duration::from_millis(ms)).await;
        r
    }

    fn down() -> Result<u64, FabricError> {
        Err(FabricError::Unavailable("down".into()))
    }

    #[tokio::test(start_paused = true)]
    async fn a_hedged_request_asks_relays_only_when_the_leader_is_slow_and_takes_the_first_answer()
    {
        let fast = hedged(after(10, Ok(1)), RELAY_AFTER, vec![after(0, Ok(2))]).await;
        assert_eq!(fast.expect("answer"), (1, Via::Direct), "relays not asked");
        let slow = hedged(after(5_000, Ok(1)), RELAY_AFTER, vec![after(10, Ok(2))]).await;
        assert_eq!(slow.expect("answer"), (2, Via::Hedge));
        let relays_fail = hedged(after(1_000, Ok(1)), RELAY_AFTER, vec![after(0, down())]).await;
        assert_eq!(relays_fail.expect("answer"), (1, Via::Direct));
        let all_fail = hedged(after(0, down()), RELAY_AFTER, vec![after(0, down())]).await;
        assert!(all_fail.is_err());
    }
}
