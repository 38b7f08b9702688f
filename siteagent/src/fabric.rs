//! What the agent's loops ask of the replicated state: a linearizable read and a proposal.
//!
//! Owns: the [`Fabric`] trait, its error ([`FabricError`]), and [`MemoryFabric`], the in-memory
//! twin that applies commands to a local [`FabricState`] so keeper and leader decisions are
//! tested without WAN, Raft or TLS. The cluster module's `Cluster` is the real one.
//!
//! Invariant: a successful [`Fabric::read`] saw every command committed before it was sent (the
//! lease keeper's confirmations rest on that); a proposal is either applied or refused, never
//! half-applied.
//!
//! Does not: forward, retry or elect anything; that is the implementation's business.

use std::future::Future;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use consensus::state::{Applied, Command, CommandError, FabricState, Proposal};

use crate::confirmation::{LeaseRead, lease_read};

/// Why a read or proposal did not succeed.
#[derive(Debug, thiserror::Error)]
pub enum FabricError {
    /// The state machine refused the command.
    #[error("{0}")]
    Rejected(#[from] CommandError),
    /// No leader answered in time (no majority reachable, or leadership moving).
    #[error("no leader reachable: {0}")]
    Unavailable(String),
}

/// Linearizable reads and proposals on the fabric state.
pub trait Fabric: Send + Sync + 'static {
    /// Reads the state once it includes everything committed before this call.
    fn read<R, F>(&self, f: F) -> impl Future<Output = Result<R, FabricError>> + Send
    where
        F: FnOnce(&FabricState) -> R + Send,
        R: Send;

    /// Confirms the lease of `host` (of `site`): a linearizable read of what the host holds,
    /// evaluated wherever the up-to-date state is. The default reads through [`Fabric::read`].
    fn confirm_lease(
        &self,
        host: u64,
        site: String,
    ) -> impl Future<Output = Result<LeaseRead, FabricError>> + Send {
        self.read(move |s| lease_read(s, host, &site))
    }

    /// Proposes `command` on behalf of `actor` and waits until it is applied or refused.
    fn propose(
        &self,
        actor: String,
        command: Command,
    ) -> impl Future<Output = Result<Applied, FabricError>> + Send;

    /// Proposes `command` as planned by the leader of `term`; the state machine refuses it in
    /// a log entry of any other term ([`consensus::state::Proposal::check_term`]).
    fn propose_in_term(
        &self,
        actor: String,
        command: Command,
        term: u64,
    ) -> impl Future<Output = Result<Applied, FabricError>> + Send;
}

/// Locks a mutex of plain values: a panic elsewhere cannot leave them half-updated.
pub(crate) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// A fabric of one in-memory state: reads see it, proposals apply to it.
///
/// It can be cut off ([`set_reachable`](Self::set_reachable)) and slowed
/// ([`set_read_delay`](Self::set_read_delay), on the Tokio clock, so tests run it paused).
#[derive(Default)]
pub struct MemoryFabric {
    state: Mutex<FabricState>,
    proposed: Mutex<Vec<Command>>,
    unreachable: AtomicBool,
    read_delay: Mutex<Duration>,
    /// The Raft term its log entries are written in.
    term: AtomicU64,
}

impl MemoryFabric {
    pub fn new(state: FabricState) -> Self {
        Self {
            state: Mutex::new(state),
            ..Self::default()
        }
    }

    /// While false, every read and proposal fails as [`FabricError::Unavailable`].
    pub fn set_reachable(&self, reachable: bool) {
        self.unreachable.store(!reachable, Ordering::SeqCst);
    }

    /// How long a read takes before it reads (its reply arrives that much after it was sent).
    pub fn set_read_delay(&self, delay: Duration) {
        *lock(&self.read_delay) = delay;
    }

    /// The term later proposals are committed in, as after an election.
    pub fn set_term(&self, term: u64) {
        self.term.store(term, Ordering::SeqCst);
    }

    /// Applies `command` directly, as if another node had proposed it.
    pub fn apply(&self, command: Command) -> Result<Applied, CommandError> {
        self.commit(Proposal::new(crate::clock::unix_ms(), "test", command))
    }

    /// What the state machine does with a log entry of the current term.
    fn commit(&self, p: Proposal) -> Result<Applied, CommandError> {
        p.check_term(self.term.load(Ordering::SeqCst))?;
        lock(&self.state).apply(&p)
    }

    /// A copy of the current state.
    pub fn state(&self) -> FabricState {
        lock(&self.state).clone()
    }

    /// Every command that reached the fabric through [`Fabric::propose`], applied or refused, in
    /// order.
    pub fn proposed(&self) -> Vec<Command> {
        lock(&self.proposed).clone()
    }

    fn check(&self) -> Result<(), FabricError> {
        if self.unreachable.load(Ordering::SeqCst) {
            Err(FabricError::Unavailable("cut off (memory fabric)".into()))
        } else {
            Ok(())
        }
    }
}

impl Fabric for MemoryFabric {
    async fn read<R, F>(&self, f: F) -> Result<R, FabricError>
    where
        F: FnOnce(&FabricState) -> R + Send,
        R: Send,
    {
        self.check()?;
        let delay = *lock(&self.read_delay);
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
        self.check()?;
        Ok(f(&lock(&self.state)))
    }

    async fn propose(&self, _actor: String, command: Command) -> Result<Applied, FabricError> {
        self.check()?;
        lock(&self.proposed).push(command.clone());
        Ok(self.apply(command)?)
    }

    async fn propose_in_term(
        &self,
        actor: String,
        command: Command,
        term: u64,
    ) -> Result<Applied, FabricError> {
        self.check()?;
        lock(&self.proposed).push(command.clone());
        let mut p = Proposal::new(crate::clock::unix_ms(), actor, command);
        p.term = Some(term);
        Ok(self.commit(p)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_cut_off_memory_fabric_refuses_reads_and_proposals() {
        let fabric = MemoryFabric::default();
        let note = || Command::RecordEvent {
            message: "x".into(),
        };
        assert!(fabric.propose("t".into(), note()).await.is_ok());
        fabric.set_reachable(false);
        assert!(matches!(
            fabric.read(|s| s.revision).await,
            Err(FabricError::Unavailable(_))
        ));
        assert!(fabric.propose("t".into(), note()).await.is_err());
        fabric.set_reachable(true);
        assert_eq!(fabric.read(|s| s.revision).await.ok(), Some(1));
        assert_eq!(
            fabric.proposed().len(),
            1,
            "a proposal that was cut off was recorded"
        );
    }
}
