//! The agent: wires the WAN endpoint, the Raft member, the admin API and the host's reports,
//! and carries writes and linearizable reads to the leader from wherever they arrive.
//!
//! Invariant: every change to the fabric state is a proposal committed by Raft; the agent keeps
//! no state of its own that another agent would need.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use consensus::FabricNode;
use consensus::node::{FabricRaft, NotLeader, ProposeError};
use consensus::state::{Applied, Capacity, Command, CommandError, FabricState, Proposal};
use consensus::wan_transport::WanTransport;
use failover::lease::LeaseHolder;
use tokio_util::sync::CancellationToken;
use wan::{Channel, FabricTls, Role, Wan};

use crate::config::{AgentConfig, AgentRole};
use crate::control::{ControlReply, ControlRequest, WanHandler};
use crate::workload::{Driver, ProcessDriver};

/// How long a write or read may keep looking for a leader.
const LEADER_WAIT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("{0}")]
    Rejected(#[from] CommandError),
    #[error("no leader reachable: {0}")]
    Unavailable(String),
}

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("certificates: {0}")]
    Tls(#[from] wan::tls::TlsError),
    #[error("certificate {cert} is for {found}, but the config says node {node} of site {site}")]
    IdentityMismatch {
        cert: String,
        found: wan::Identity,
        node: u64,
        site: String,
    },
    #[error("wan: {0}")]
    Wan(#[from] wan::WanError),
    #[error("data dir {path}: {source}")]
    DataDir {
        path: String,
        source: std::io::Error,
    },
    #[error("raft: {0}")]
    Raft(#[from] consensus::node::NodeError),
    #[error("admin api: {0}")]
    Admin(String),
    #[error("dns: {0}")]
    Dns(#[from] failover::dns::DnsError),
    #[error("workloads: {0}")]
    Workload(#[from] crate::workload::WorkloadError),
    #[error("failover.lease: {0}")]
    LeaseTerms(CommandError),
}

/// A running agent's shared core.
pub struct Agent {
    config: AgentConfig,
    me: FabricNode,
    wan: Arc<Wan>,
    raft: FabricRaft,
    /// This agent's ownership lease, re-confirmed with the majority by the lease keeper.
    lease: Mutex<LeaseHolder>,
    /// State revision seen by the latest successful lease confirmation.
    confirmed_revision: AtomicU64,
    /// Leader side: one membership change at a time. Two admissions racing each other make
    /// openraft refuse the second step of one of them, which would leave a joint configuration
    /// behind.
    membership: tokio::sync::Mutex<()>,
}

impl Agent {
    /// The lease terms the fabric runs on: the agreed ones, or this agent's before any agreement.
    pub(crate) fn fabric_lease(&self, s: &FabricState) -> failover::lease::LeaseConfig {
        s.lease_terms.map_or(self.config.lease(), Into::into)
    }

    /// True while this agent may vouch for what it serves (its lease is confirmed).
    pub fn lease_valid(&self) -> bool {
        self.lease().is_valid(Instant::now())
    }

    pub fn lease_remaining(&self) -> Duration {
        self.lease().remaining(Instant::now()).unwrap_or_default()
    }

    pub(crate) fn lease(&self) -> std::sync::MutexGuard<'_, LeaseHolder> {
        // The holder is a plain value; a panic elsewhere cannot leave it half-updated.
        self.lease.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Records a successful confirmation sent at `sent` that read state `revision`.
    pub(crate) fn lease_confirmed(&self, sent: Instant, revision: u64) {
        self.lease().confirmed(sent);
        self.confirmed_revision
            .fetch_max(revision, Ordering::SeqCst);
    }

    pub(crate) fn confirmed_revision(&self) -> u64 {
        self.confirmed_revision.load(Ordering::SeqCst)
    }

    pub(crate) fn actor(&self) -> String {
        format!("node {}", self.id())
    }

    pub fn config(&self) -> &AgentConfig {
        &self.config
    }

    pub fn raft(&self) -> &FabricRaft {
        &self.raft
    }

    pub fn wan(&self) -> &Arc<Wan> {
        &self.wan
    }

    pub fn id(&self) -> u64 {
        self.config.node_id
    }

    /// Proposes `command`, on this node if it leads, else on the leader over the WAN.
    pub async fn propose(&self, actor: String, command: Command) -> Result<Applied, AgentError> {
        let p = Proposal {
            at_ms: crate::clock::unix_ms(),
            actor,
            command,
        };
        let result = self
            .on_leader(ControlRequest::Propose(p.clone()), |raft| {
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
            other => Err(AgentError::Unavailable(format!(
                "unexpected reply {other:?}"
            ))),
        }
    }

    /// A linearizable read: gets a read index from the leader, waits until this node applied
    /// it, then reads locally.
    pub async fn read<R>(&self, f: impl FnOnce(&FabricState) -> R) -> Result<R, AgentError> {
        let reply = self
            .on_leader(ControlRequest::ReadIndex, |raft| async move {
                raft.read_index().await.map(|_| ())
            })
            .await?;
        let index = match reply {
            // Served locally as leader: read_index already waited for our own apply.
            ControlReply::Proposed(_) | ControlReply::Pong => 0,
            ControlReply::ReadIndex(i) => i,
            other => {
                return Err(AgentError::Unavailable(format!(
                    "unexpected reply {other:?}"
                )));
            }
        };
        self.raft
            .read_at(index, LEADER_WAIT, f)
            .await
            .map_err(|e| AgentError::Unavailable(e.to_string()))
    }

    /// Runs `local` if this node leads; otherwise sends `remote` to the leader. Retries while
    /// leadership moves, for up to [`LEADER_WAIT`].
    async fn on_leader<F, Fut, T>(
        &self,
        remote: ControlRequest,
        local: F,
    ) -> Result<ControlReply, AgentError>
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
                Err(ProposeError::NotLeader(NotLeader { leader })) => leader,
                Err(ProposeError::Raft(e)) => {
                    last = e;
                    None
                }
            };
            if let Some((id, node)) = leader.filter(|(id, _)| *id != self.id()) {
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
                            _ = self.leader_changes_from(id) => None,
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
                return Err(AgentError::Unavailable(last));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Resolves when this node's Raft no longer names `leader` as the leader.
    async fn leader_changes_from(&self, leader: u64) {
        let mut metrics = self.raft.raft().metrics();
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

    /// Held across a membership change so changes run one at a time on this node.
    pub(crate) async fn membership_change_lock(&self) -> tokio::sync::MutexGuard<'_, ()> {
        self.membership.lock().await
    }

    /// Leader side of admission: adds `id` as a learner (waiting for it to catch up), then
    /// promotes it when it should vote.
    pub async fn admit(&self, id: u64, node: FabricNode, voter: bool) -> Result<(), ProposeError> {
        if self.raft.metrics().current_leader != Some(self.id()) {
            return Err(ProposeError::NotLeader(NotLeader {
                leader: self.raft.leader(),
            }));
        }
        let _one_at_a_time = self.membership_change_lock().await;
        let members = self.raft.members();
        if members.voters.contains(&id) && members.settled {
            return Ok(());
        }
        if members.nodes.get(&id) != Some(&node) {
            tracing::info!(node = id, "admitting node {id} ({node}) as a learner");
            self.raft.add_learner(id, node).await?;
        }
        if voter {
            // Also when it already votes in a joint configuration left by a failed change:
            // the same change again finishes it.
            tracing::info!(node = id, "promoting node {id} to voter");
            self.raft.promote(id).await?;
        }
        Ok(())
    }

    fn is_member(&self) -> bool {
        let m = self.raft.members();
        let wanted = if self.config.is_voter() {
            // Settled: a voter in a joint configuration asks again, which finishes the change.
            m.voters.contains(&self.id()) && m.settled
        } else {
            m.voters.contains(&self.id()) || m.learners.contains(&self.id())
        };
        wanted && m.nodes.get(&self.id()) == Some(&self.me)
    }

    /// Asks peers (and then the leader they name) to admit this node until it is a member.
    async fn join(&self, shutdown: &CancellationToken) {
        let mut attempt = 0u32;
        while !self.is_member() {
            let mut targets: Vec<(Option<u64>, SocketAddr)> =
                self.config.peers.iter().map(|a| (None, *a)).collect();
            if let Some((id, node)) = self.raft.leader()
                && let Ok(addr) = node.addr.parse()
            {
                targets.insert(0, (Some(id), addr));
            }
            let req = ControlRequest::Join {
                node: self.me.clone(),
                voter: self.config.is_voter(),
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

    /// Agrees the lease terms, then registers the site and (for hosts) the host; retried until
    /// it succeeds. Returns the refusal when the fabric's lease terms differ from this agent's:
    /// such an agent must not run, since fencing is safe only when all agree.
    async fn register(&self, shutdown: &CancellationToken) -> Result<(), CommandError> {
        let actor = format!("node {}", self.id());
        let agree = Command::AgreeLeaseTerms {
            node: self.id(),
            terms: self.config.lease().terms(),
        };
        loop {
            let steps = async {
                self.propose(actor.clone(), agree.clone()).await?;
                self.propose(
                    actor.clone(),
                    Command::EnsureSite {
                        name: self.config.site.clone(),
                        priority: self.config.site_priority,
                    },
                )
                .await?;
                if self.config.has(AgentRole::Host) {
                    self.propose(actor.clone(), self.register_command()).await?;
                }
                Ok::<_, AgentError>(())
            };
            match steps.await {
                Ok(()) => {
                    tracing::info!("registered in site {}", self.config.site);
                    return Ok(());
                }
                Err(AgentError::Rejected(e @ CommandError::LeaseTermsDiffer { .. })) => {
                    return Err(e);
                }
                Err(AgentError::Rejected(e)) => {
                    tracing::error!("registration refused: {e}");
                    return Ok(());
                }
                Err(e) => tracing::info!("registration pending: {e}"),
            }
            tokio::select! {
                _ = shutdown.cancelled() => return Ok(()),
                _ = tokio::time::sleep(Duration::from_millis(500)) => {}
            }
        }
    }

    fn register_command(&self) -> Command {
        Command::RegisterHost {
            id: self.id(),
            site: self.config.site.clone(),
            address: self.me.addr.clone(),
            admin_address: self.me.admin_addr.clone(),
            addresses: self.config.workload_addresses(),
            capacity: Capacity {
                cpu_millis: self.config.host.cpu_millis,
                memory_mib: self.config.host.memory_mib,
            },
            labels: self.config.host.labels.clone(),
        }
    }
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

impl IntoLocalReply for () {
    fn into_reply(self) -> ControlReply {
        ControlReply::Pong
    }
}

/// Runs an agent until `shutdown` is cancelled, then drains and returns.
pub async fn run(config: AgentConfig, shutdown: CancellationToken) -> Result<(), StartError> {
    let tls = FabricTls::load(&config.tls)?;
    let id = tls.identity().clone();
    if id.role != Role::Agent || id.node_id() != Some(config.node_id) || id.site != config.site {
        return Err(StartError::IdentityMismatch {
            cert: config.tls.cert.display().to_string(),
            found: id,
            node: config.node_id,
            site: config.site.clone(),
        });
    }
    std::fs::create_dir_all(&config.data_dir).map_err(|source| StartError::DataDir {
        path: config.data_dir.display().to_string(),
        source,
    })?;

    let wan = Wan::bind(config.wan_listen, &tls, config.wan_config())?;
    let me = FabricNode {
        addr: wan.local_addr().map(|a| a.to_string()).unwrap_or_default(),
        admin_addr: config.admin_listen.to_string(),
        site: config.site.clone(),
    };
    let raft = FabricRaft::start(
        config.node_id,
        &config.raft_settings(),
        &config.data_dir.join("raft.redb"),
        Arc::new(WanTransport::new(wan.clone())),
    )
    .await?;
    let agent = Arc::new(Agent {
        lease: Mutex::new(LeaseHolder::new(config.lease())),
        confirmed_revision: AtomicU64::new(0),
        membership: tokio::sync::Mutex::new(()),
        config,
        me: me.clone(),
        wan: wan.clone(),
        raft,
    });

    let inner = shutdown.child_token();
    let mut tasks = tokio::task::JoinSet::new();
    tasks.spawn(wan.clone().serve(
        Arc::new(WanHandler {
            agent: agent.clone(),
        }),
        inner.clone(),
    ));
    let admin = crate::admin::serve(agent.clone(), &tls, inner.clone())
        .await
        .map_err(|e| StartError::Admin(e.to_string()))?;
    tasks.spawn(admin);
    tasks.spawn(crate::metrics::export_loop(agent.clone(), inner.clone()));
    tasks.spawn(crate::health::heartbeat_loop(agent.clone(), inner.clone()));
    let driver: Option<Arc<dyn Driver>> = if agent.config.has(AgentRole::Host) {
        let guard = match &agent.config.host.guard {
            Some(g) => g.clone(),
            None => crate::workload::find_guard()?,
        };
        Some(Arc::new(ProcessDriver::new(agent.config.work_dir(), guard)))
    } else {
        None
    };
    tasks.spawn(crate::keeper::keeper_loop(
        agent.clone(),
        driver,
        inner.clone(),
    ));
    if agent.config.has(AgentRole::Dns) {
        tasks.spawn(crate::zone::serve(agent.clone(), inner.clone()).await?);
    }
    tasks.spawn(crate::leader::leader_loop(agent.clone(), inner.clone()));
    tracing::info!(
        node = agent.id(),
        site = %agent.config.site,
        wan = %me.addr,
        admin = %me.admin_addr,
        "agent started"
    );

    if agent.config.bootstrap {
        match agent.raft.bootstrap(me.clone()).await {
            Ok(true) => tracing::info!("bootstrapped a new cluster"),
            Ok(false) => {}
            Err(e) => tracing::error!("bootstrap failed: {e}"),
        }
    }
    let (fatal_tx, fatal_rx) = tokio::sync::oneshot::channel();
    {
        let agent = agent.clone();
        let inner = inner.clone();
        tasks.spawn(async move {
            // Each step may wait on the network for seconds; shutdown cancels it mid-way.
            let life = async {
                agent.join(&inner).await;
                agent.register(&inner).await
            };
            tokio::select! {
                _ = inner.cancelled() => {}
                refused = life => if let Err(e) = refused {
                    let _ = fatal_tx.send(e);
                }
            }
        });
    }

    // A dropped sender (registration done) disables the second branch.
    let fatal = tokio::select! {
        _ = shutdown.cancelled() => None,
        Ok(e) = fatal_rx => Some(e),
    };
    match &fatal {
        Some(e) => tracing::error!("shutting down: {e}"),
        None => tracing::info!("shutting down"),
    }
    inner.cancel();
    let drain = async { while tasks.join_next().await.is_some() {} };
    if tokio::time::timeout(Duration::from_secs(10), drain)
        .await
        .is_err()
    {
        tracing::warn!("some tasks did not stop within 10 s");
    }
    agent.raft.stop().await;
    wan.close().await;
    tracing::info!("stopped");
    match fatal {
        Some(refused) => Err(StartError::LeaseTerms(refused)),
        None => Ok(()),
    }
}
