//! In-process Raft clusters built directly on openraft, the in-memory transport and the redb
//! store (one file per node in a temp dir): election and replication, leader isolation,
//! membership changes, snapshot transfer after log purge, restart from disk, rejected commands.
//!
//! Waits go through openraft's metrics (`raft.wait`), never fixed sleeps; the only bound is
//! `WAIT`, generous for a loaded 2-core machine.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use consensus::mem_transport::MemNetwork;
use consensus::network::Network;
use consensus::state::{
    Applied, Capacity, Command, CommandError, CommandResult, FabricState, NodeId, Proposal,
};
use consensus::store::{self, ClosedSignal, LogStore, StateHandle, StateMachineStore};
use consensus::types::{FabricNode, Raft};
use openraft::error::{ClientWriteError, RaftError};
use openraft::{ChangeMembers, Config, ServerState, SnapshotPolicy};
use tokio::time::{Instant, timeout};

const WAIT: Duration = Duration::from_secs(10);

fn config() -> Config {
    Config {
        cluster_name: "test".into(),
        heartbeat_interval: 50,
        election_timeout_min: 150,
        election_timeout_max: 300,
        ..Default::default()
    }
}

fn node(id: NodeId) -> FabricNode {
    FabricNode {
        addr: format!("127.0.0.1:{}", 7000 + id),
        admin_addr: format!("127.0.0.1:{}", 8000 + id),
        site: "s1".into(),
    }
}

fn proposal(command: Command) -> Proposal {
    Proposal {
        at_ms: 1_000,
        actor: "test".into(),
        command,
        term: None,
    }
}

fn note(i: usize) -> Command {
    Command::RecordEvent {
        message: format!("note {i}"),
    }
}

fn site(name: &str) -> Command {
    Command::UpsertSite {
        name: name.into(),
        priority: 1,
    }
}

fn register_host(id: NodeId, site: &str) -> Command {
    Command::RegisterHost {
        id,
        site: site.into(),
        address: format!("10.0.0.{id}:7000"),
        admin_address: format!("10.0.0.{id}:8000"),
        addresses: vec![std::net::IpAddr::from([10, 0, 0, id as u8])],
        capacity: Capacity {
            cpu_millis: 4000,
            memory_mib: 8192,
        },
        labels: BTreeMap::new(),
    }
}

struct Member {
    raft: Raft,
    state: StateHandle,
    closed: ClosedSignal,
}

struct Cluster {
    net: MemNetwork,
    dir: tempfile::TempDir,
    config: Arc<Config>,
    members: BTreeMap<NodeId, Member>,
}

impl Cluster {
    /// Starts `voters` and makes the first one initialize the cluster with all of them.
    async fn with_voters(config: Config, voters: &[NodeId]) -> anyhow::Result<Self> {
        let mut c = Cluster {
            net: MemNetwork::new(),
            dir: tempfile::tempdir()?,
            config: Arc::new(config.validate()?),
            members: BTreeMap::new(),
        };
        for id in voters {
            c.start(*id).await?;
        }
        let nodes: BTreeMap<_, _> = voters.iter().map(|id| (*id, node(*id))).collect();
        c.raft(voters[0])?.initialize(nodes).await?;
        c.leader(voters).await?;
        Ok(c)
    }

    fn path(&self, id: NodeId) -> PathBuf {
        self.dir.path().join(format!("node-{id}.redb"))
    }

    async fn start(&mut self, id: NodeId) -> anyhow::Result<()> {
        let (log, sm) = store::open(&self.path(id))?;
        self.start_on(id, log, sm).await
    }

    async fn start_on(
        &mut self,
        id: NodeId,
        log: LogStore,
        sm: StateMachineStore,
    ) -> anyhow::Result<()> {
        let state = sm.state_handle();
        let closed = log.closed_signal();
        let network = Network::new(self.net.transport(id));
        let raft = Raft::new(id, self.config.clone(), network, log, sm).await?;
        self.net.register(id, raft.clone());
        self.members.insert(
            id,
            Member {
                raft,
                state,
                closed,
            },
        );
        Ok(())
    }

    /// Shuts node `id` down and waits until its redb file is closed.
    async fn stop(&mut self, id: NodeId) -> anyhow::Result<()> {
        let m = self.members.remove(&id).context("no such member")?;
        self.net.unregister(id);
        m.raft.shutdown().await?;
        drop(m.raft);
        timeout(WAIT, m.closed.wait())
            .await
            .with_context(|| format!("node {id} still holds its store"))
    }

    async fn stop_all(&mut self) -> anyhow::Result<()> {
        let ids: Vec<_> = self.members.keys().copied().collect();
        for id in ids {
            self.stop(id).await?;
        }
        Ok(())
    }

    fn raft(&self, id: NodeId) -> anyhow::Result<&Raft> {
        Ok(&self.members.get(&id).context("no such member")?.raft)
    }

    fn state(&self, id: NodeId) -> anyhow::Result<FabricState> {
        Ok(self
            .members
            .get(&id)
            .context("no such member")?
            .state
            .read(FabricState::clone))
    }

    fn applied_index(&self, id: NodeId) -> anyhow::Result<u64> {
        Ok(self
            .members
            .get(&id)
            .context("no such member")?
            .state
            .applied_index())
    }

    /// Waits until a member of `among` leads and `among[0]` follows it.
    async fn leader(&self, among: &[NodeId]) -> anyhow::Result<NodeId> {
        let m = self
            .raft(among[0])?
            .wait(Some(WAIT))
            .metrics(
                |m| m.current_leader.is_some_and(|l| among.contains(&l)),
                "a leader among the nodes",
            )
            .await?;
        let leader = m.current_leader.context("leader")?;
        self.raft(leader)?
            .wait(Some(WAIT))
            .state(ServerState::Leader, "leader knows it leads")
            .await?;
        Ok(leader)
    }

    /// Proposes through the current leader of `among`; returns the entry's index and result.
    /// Retries only when the node it asked was no longer the leader (nothing was appended).
    async fn write(
        &self,
        among: &[NodeId],
        command: Command,
    ) -> anyhow::Result<(u64, CommandResult)> {
        let deadline = Instant::now() + WAIT;
        loop {
            let leader = self.leader(among).await?;
            match self
                .raft(leader)?
                .client_write(proposal(command.clone()))
                .await
            {
                Ok(resp) => return Ok((resp.log_id.index, resp.data)),
                Err(RaftError::APIError(ClientWriteError::ForwardToLeader(_)))
                    if Instant::now() < deadline => {}
                Err(e) => bail!("write on leader {leader}: {e}"),
            }
        }
    }

    /// Like [`Self::write`] for a command that must succeed; returns the entry's index.
    async fn write_ok(&self, among: &[NodeId], command: Command) -> anyhow::Result<u64> {
        match self.write(among, command.clone()).await? {
            (index, Ok(_)) => Ok(index),
            (_, Err(e)) => bail!("{command:?} refused: {e}"),
        }
    }

    /// Waits until every node in `ids` applied `index`, then returns their states.
    async fn states_at(&self, ids: &[NodeId], index: u64) -> anyhow::Result<Vec<FabricState>> {
        let mut out = Vec::new();
        for id in ids {
            self.raft(*id)?
                .wait(Some(WAIT))
                .applied_index_at_least(Some(index), format!("node {id} applies {index}"))
                .await?;
            out.push(self.state(*id)?);
        }
        Ok(out)
    }

    async fn assert_identical(&self, ids: &[NodeId], index: u64) -> anyhow::Result<FabricState> {
        let states = self.states_at(ids, index).await?;
        for (id, s) in ids.iter().zip(&states) {
            assert_eq!(s, &states[0], "node {id} differs from node {}", ids[0]);
        }
        Ok(states[0].clone())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_voters_elect_a_leader_and_apply_commands_identically() -> anyhow::Result<()> {
    let all = [1, 2, 3];
    let mut c = Cluster::with_voters(config(), &all).await?;

    let (_, r) = c.write(&all, site("s1")).await?;
    assert_eq!(r, Ok(Applied { revision: 1 }));
    let (_, r) = c.write(&all, register_host(7, "s1")).await?;
    assert_eq!(r, Ok(Applied { revision: 2 }));
    let (index, r) = c.write(&all, note(1)).await?;
    assert_eq!(r, Ok(Applied { revision: 3 }));

    let state = c.assert_identical(&all, index).await?;
    assert_eq!(state.revision, 3);
    assert!(state.sites.contains_key("s1"));
    assert_eq!(state.hosts.get(&7).map(|h| h.site.as_str()), Some("s1"));
    assert_eq!(
        state.events.back().map(|e| e.message.as_str()),
        Some("note 1")
    );
    c.stop_all().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn isolating_the_leader_elects_a_new_one_that_accepts_writes() -> anyhow::Result<()> {
    let all = [1, 2, 3];
    let mut c = Cluster::with_voters(config(), &all).await?;
    let index = c.write_ok(&all, note(1)).await?;
    c.assert_identical(&all, index).await?;

    let old = c.leader(&all).await?;
    c.net.isolate(old);
    let rest: Vec<_> = all.into_iter().filter(|id| *id != old).collect();
    let new = c.leader(&rest).await?;
    assert_ne!(new, old);

    let index = c.write_ok(&rest, note(2)).await?;
    c.assert_identical(&rest, index).await?;
    assert!(
        c.applied_index(old)? < index,
        "the isolated node applied an entry it cannot have received"
    );

    // Healed, the old leader follows the new one and converges.
    c.net.heal(old);
    let index = c.write_ok(&rest, note(3)).await?;
    let state = c.assert_identical(&all, index).await?;
    let notes: Vec<_> = state.events.iter().map(|e| e.message.as_str()).collect();
    assert_eq!(notes, ["note 1", "note 2", "note 3"]);
    c.stop_all().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn learner_catches_up_is_promoted_and_a_removed_voter_gets_nothing_more() -> anyhow::Result<()>
{
    let voters = [1, 2, 3];
    let mut c = Cluster::with_voters(config(), &voters).await?;
    for i in 0..5 {
        c.write_ok(&voters, note(i)).await?;
    }

    c.start(4).await?;
    let leader = c.leader(&voters).await?;
    let resp = c.raft(leader)?.add_learner(4, node(4), true).await?;
    let m = c.raft(leader)?.metrics().borrow().clone();
    let membership = m.membership_config.membership();
    assert!(membership.learner_ids().any(|id| id == 4));
    assert!(!membership.voter_ids().any(|id| id == 4));
    c.assert_identical(&[leader, 4], resp.log_id.index).await?;

    let resp = c
        .raft(leader)?
        .change_membership(ChangeMembers::AddVoterIds(BTreeSet::from([4])), false)
        .await?;
    let voters_now: BTreeSet<_> = resp
        .membership
        .context("membership change response")?
        .voter_ids()
        .collect();
    assert_eq!(voters_now, BTreeSet::from([1, 2, 3, 4]));

    let victim = voters
        .into_iter()
        .find(|id| *id != leader)
        .context("a follower")?;
    let resp = c
        .raft(leader)?
        .change_membership(ChangeMembers::RemoveVoters(BTreeSet::from([victim])), false)
        .await?;
    let membership = resp.membership.context("membership change response")?;
    assert!(!membership.voter_ids().any(|id| id == victim));
    assert!(
        membership.get_node(&victim).is_none(),
        "not kept as a learner"
    );

    let remaining: Vec<_> = [1, 2, 3, 4]
        .into_iter()
        .filter(|id| *id != victim)
        .collect();
    let index = c.write_ok(&remaining, note(99)).await?;
    let state = c.assert_identical(&remaining, index).await?;
    assert_eq!(
        state.events.back().map(|e| e.message.as_str()),
        Some("note 99")
    );
    assert!(
        c.applied_index(victim)? < index,
        "a removed voter still receives entries"
    );
    c.stop_all().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fresh_learner_gets_the_state_by_snapshot_after_the_log_is_purged() -> anyhow::Result<()> {
    let voters = [1, 2, 3];
    let cfg = Config {
        // Snapshots only when asked, so a learner's snapshot can only have been installed.
        snapshot_policy: SnapshotPolicy::Never,
        max_in_snapshot_log_to_keep: 0,
        ..config()
    };
    let mut c = Cluster::with_voters(cfg, &voters).await?;
    c.write_ok(&voters, site("s1")).await?;
    let mut index = 0;
    for i in 0..20 {
        index = c.write_ok(&voters, note(i)).await?;
    }
    c.assert_identical(&voters, index).await?;

    let leader = c.leader(&voters).await?;
    let raft = c.raft(leader)?;
    raft.trigger().snapshot().await?;
    raft.wait(Some(WAIT))
        .metrics(
            |m| m.snapshot.is_some_and(|s| s.index >= index),
            "leader built a snapshot",
        )
        .await?;
    raft.trigger().purge_log(index).await?;
    raft.wait(Some(WAIT))
        .metrics(
            |m| m.purged.is_some_and(|p| p.index >= index),
            "leader purged its log",
        )
        .await?;

    c.start(4).await?;
    let resp = c.raft(leader)?.add_learner(4, node(4), true).await?;
    let state = c.assert_identical(&[leader, 4], resp.log_id.index).await?;
    assert_eq!(state.events.len(), 21);
    let learner = c.raft(4)?.metrics().borrow().clone();
    assert!(
        learner.snapshot.is_some_and(|s| s.index >= index),
        "learner has no snapshot covering {index}: {:?}",
        learner.snapshot
    );
    c.stop_all().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restarted_node_reopens_with_its_applied_state_and_rejoins() -> anyhow::Result<()> {
    let all = [1, 2, 3];
    let mut c = Cluster::with_voters(config(), &all).await?;
    c.write_ok(&all, site("s1")).await?;
    let index = c.write_ok(&all, register_host(7, "s1")).await?;
    let before = c.assert_identical(&all, index).await?;

    let leader = c.leader(&all).await?;
    let restarted = all
        .into_iter()
        .find(|id| *id != leader)
        .context("a follower")?;
    let applied = c.applied_index(restarted)?;
    c.stop(restarted).await?;

    // The other two keep a quorum and move on meanwhile.
    let rest: Vec<_> = all.into_iter().filter(|id| *id != restarted).collect();
    let index = c.write_ok(&rest, note(1)).await?;

    let (log, sm) = store::open(&c.path(restarted))?;
    let reopened = sm.state_handle();
    assert_eq!(reopened.applied_index(), applied, "applied index from disk");
    assert_eq!(reopened.read(FabricState::clone), before, "state from disk");

    c.start_on(restarted, log, sm).await?;
    let state = c.assert_identical(&all, index).await?;
    assert_eq!(
        state.events.back().map(|e| e.message.as_str()),
        Some("note 1")
    );
    c.stop_all().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rejected_command_returns_its_error_and_leaves_the_state_unchanged() -> anyhow::Result<()> {
    let all = [1, 2, 3];
    let mut c = Cluster::with_voters(config(), &all).await?;
    let index = c.write_ok(&all, site("s1")).await?;
    let before = c.assert_identical(&all, index).await?;

    let (index, r) = c.write(&all, register_host(7, "nowhere")).await?;
    assert_eq!(r, Err(CommandError::UnknownSite("nowhere".into())));
    // Every replica applied the entry and refused it the same way.
    let after = c.assert_identical(&all, index).await?;
    assert_eq!(after, before);
    c.stop_all().await
}
