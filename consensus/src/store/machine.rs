//! The state machine: applies committed entries to [`FabricState`], persists the result, builds
//! and installs snapshots, and shares the applied state with readers outside Raft.
//!
//! Invariants:
//! - the applied state on disk and in memory only moves forward in log order, one durable
//!   transaction per apply batch, and readers see it only after it is durable;
//! - the stored snapshot never moves backwards: a snapshot built from an older state than the one
//!   already stored is returned to openraft but not stored.
//!
//! - a proposal stamped with the term it was planned in ([`crate::state::Proposal::term`]) is
//!   applied only from a log entry of that same term; otherwise it is refused and changes
//!   nothing. This is where, rather than at the proposer, because only here is the term that
//!   commits the entry known for certain: a proposer may lose leadership between planning and
//!   appending, and a forwarded proposal is appended by whoever leads by then.
//!
//! It does not serve reads with any freshness guarantee: a [`StateHandle`] shows what this node
//! has applied; linearizable reads go through the Raft node.

#![allow(clippy::result_large_err)]

use std::io::Cursor;
use std::sync::{Arc, RwLock};

use openraft::storage::RaftStateMachine;
use openraft::{EntryPayload, ErrorSubject, ErrorVerb, OptionalSend, RaftSnapshotBuilder};
use redb::ReadableTable;
use serde::{Deserialize, Serialize};

use super::{APPLIED, ClosedSignal, Db, SM, SNAPSHOT, StoreError};
use crate::feed::Feed;
use crate::state::{self, CommandResult, FabricState};
use crate::types::TypeConfig;
use crate::types::{Entry, LogId, Snapshot, SnapshotMeta, StorageError, StoredMembership};

/// The applied state as persisted and as carried in a snapshot (postcard-encoded, the bytes of
/// a Raft snapshot and of a relay's catch-up snapshot alike).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct MachineState {
    last_applied: Option<LogId>,
    membership: StoredMembership,
    state: FabricState,
}

impl MachineState {
    /// Id of the last applied log entry.
    pub fn last_applied(&self) -> Option<LogId> {
        self.last_applied
    }

    /// The last membership applied (the configuration entry that set it, and its members).
    pub fn membership(&self) -> &StoredMembership {
        &self.membership
    }

    pub fn state(&self) -> &FabricState {
        &self.state
    }

    /// Applies one committed entry: the one definition of what an entry does to the state, used
    /// by the state machine and by a relay's follower alike. Returns the command's result (an
    /// entry that carries no command leaves the revision as it is).
    pub(crate) fn apply_entry(&mut self, entry: &Entry) -> CommandResult {
        debug_assert!(
            self.last_applied < Some(entry.log_id),
            "entries are applied in log order: {:?} then {}",
            self.last_applied,
            entry.log_id
        );
        self.last_applied = Some(entry.log_id);
        let unchanged = Ok(state::Applied {
            revision: self.state.revision,
        });
        match &entry.payload {
            // A plan is only good under the leadership that made it.
            EntryPayload::Normal(p) => p
                .check_term(entry.log_id.leader_id.term)
                .and_then(|()| self.state.apply(p)),
            EntryPayload::Blank => unchanged,
            EntryPayload::Membership(m) => {
                self.membership = StoredMembership::new(Some(entry.log_id), m.clone());
                unchanged
            }
        }
    }
}

/// A snapshot as stored: what it covers and its bytes (a postcard-encoded `MachineState`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(super) struct StoredSnapshot {
    meta: SnapshotMeta,
    data: Vec<u8>,
}

/// Shared read access to this node's applied state, for readers outside Raft. Cheap to clone;
/// every clone sees each apply batch at once, after it is durable.
#[derive(Clone)]
pub struct StateHandle {
    inner: Arc<RwLock<MachineState>>,
}

impl StateHandle {
    /// A handle on `applied`, shared by nothing else yet.
    pub(crate) fn new(applied: MachineState) -> Self {
        Self {
            inner: Arc::new(RwLock::new(applied)),
        }
    }

    /// Runs `f` on the applied state. `f` runs under a read lock: keep it short.
    pub fn read<R>(&self, f: impl FnOnce(&FabricState) -> R) -> R {
        f(&self.lock_read().state)
    }

    /// Index of the last applied log entry (0 before any).
    pub fn applied_index(&self) -> u64 {
        self.last_applied().map_or(0, |l| l.index)
    }

    /// Id of the last applied log entry.
    pub fn last_applied(&self) -> Option<LogId> {
        self.lock_read().last_applied
    }

    /// The last membership applied.
    pub fn membership(&self) -> StoredMembership {
        self.lock_read().membership.clone()
    }

    /// Runs `f` on the whole applied state (with its log id and membership).
    pub fn read_machine<R>(&self, f: impl FnOnce(&MachineState) -> R) -> R {
        f(&self.lock_read())
    }

    fn lock_read(&self) -> std::sync::RwLockReadGuard<'_, MachineState> {
        // A panic elsewhere while holding the lock cannot leave a half-written state: writers
        // only swap in a complete value.
        self.inner.read().unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) fn copy(&self) -> MachineState {
        self.lock_read().clone()
    }

    pub(crate) fn replace(&self, next: MachineState) {
        let mut guard = self.inner.write().unwrap_or_else(|p| p.into_inner());
        debug_assert!(
            next.last_applied >= guard.last_applied,
            "applied state moves forward: {:?} -> {:?}",
            guard.last_applied,
            next.last_applied
        );
        *guard = next;
    }
}

/// The state machine of one node.
pub struct StateMachineStore {
    db: Arc<Db>,
    state: StateHandle,
    /// The entries this node applied lately, for the hosts that follow it.
    feed: Arc<Feed>,
}

impl StateMachineStore {
    pub(super) fn new(db: Arc<Db>, applied: MachineState) -> Self {
        let state = StateHandle::new(applied);
        Self {
            db,
            feed: Arc::new(Feed::new(state.clone(), crate::feed::RING)),
            state,
        }
    }

    pub fn state_handle(&self) -> StateHandle {
        self.state.clone()
    }

    /// The feed of applied entries that relays serve to followers.
    pub fn feed(&self) -> Arc<Feed> {
        self.feed.clone()
    }

    /// Fires once this store and the log store of the same file have been dropped.
    pub fn closed_signal(&self) -> ClosedSignal {
        ClosedSignal(self.db.closed.subscribe())
    }

    /// Writes the applied state, and the snapshot it came from if any, in one durable
    /// transaction.
    fn persist(
        &self,
        applied: &MachineState,
        snapshot: Option<&StoredSnapshot>,
    ) -> Result<(), StoreError> {
        let db = &self.db;
        let bytes = db.encode(APPLIED, applied)?;
        let snapshot = snapshot.map(|s| db.encode(SNAPSHOT, s)).transpose()?;
        let txn = db.begin_write()?;
        {
            let mut t = txn.open_table(SM.def).map_err(db.err("open table"))?;
            t.insert(APPLIED, bytes.as_slice())
                .map_err(db.err("write applied state"))?;
            if let Some(s) = &snapshot {
                t.insert(SNAPSHOT, s.as_slice())
                    .map_err(db.err("write snapshot"))?;
            }
        }
        db.commit(txn)
    }

    fn apply_entries(
        &self,
        entries: impl IntoIterator<Item = Entry>,
    ) -> Result<Vec<CommandResult>, StoreError> {
        let mut next = self.state.copy();
        let entries: Vec<Entry> = entries.into_iter().collect();
        let results = entries.iter().map(|e| next.apply_entry(e)).collect();
        self.persist(&next, None)?;
        self.state.replace(next);
        self.feed.applied(entries);
        Ok(results)
    }

    fn install(&self, meta: &SnapshotMeta, data: Vec<u8>) -> Result<(), StoreError> {
        let mut next: MachineState =
            postcard::from_bytes(&data).map_err(|source| StoreError::BadSnapshot {
                id: meta.snapshot_id.clone(),
                source,
            })?;
        // The meta is what openraft acts on; the state must agree with it.
        next.last_applied = meta.last_log_id;
        next.membership = meta.last_membership.clone();
        let stored = StoredSnapshot {
            meta: meta.clone(),
            data,
        };
        self.persist(&next, Some(&stored))?;
        let index = next.last_applied.map_or(0, |l| l.index);
        self.state.replace(next);
        self.feed.installed(index);
        Ok(())
    }

    fn current_snapshot(&self) -> Result<Option<Snapshot>, StoreError> {
        let stored: Option<StoredSnapshot> = self.db.get(SM, SNAPSHOT)?;
        Ok(stored.map(|s| Snapshot {
            meta: s.meta,
            snapshot: Box::new(Cursor::new(s.data)),
        }))
    }
}

impl RaftStateMachine<TypeConfig> for StateMachineStore {
    type SnapshotBuilder = SnapshotBuilder;

    async fn applied_state(&mut self) -> Result<(Option<LogId>, StoredMembership), StorageError> {
        let s = self.state.lock_read();
        Ok((s.last_applied, s.membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<CommandResult>, StorageError>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        self.apply_entries(entries)
            .map_err(|e| e.into_storage(ErrorSubject::StateMachine, ErrorVerb::Write))
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        SnapshotBuilder {
            db: self.db.clone(),
            taken: self.state.copy(),
        }
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<Cursor<Vec<u8>>>, StorageError> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> Result<(), StorageError> {
        self.install(meta, snapshot.into_inner()).map_err(|e| {
            e.into_storage(
                ErrorSubject::Snapshot(Some(meta.signature())),
                ErrorVerb::Write,
            )
        })
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot>, StorageError> {
        self.current_snapshot()
            .map_err(|e| e.into_storage(ErrorSubject::Snapshot(None), ErrorVerb::Read))
    }
}

/// Builds a snapshot of the applied state as it was when openraft asked for the builder.
pub struct SnapshotBuilder {
    db: Arc<Db>,
    taken: MachineState,
}

impl SnapshotBuilder {
    fn build(&self) -> Result<Snapshot, StoreError> {
        let db = &self.db;
        let data = db.encode(SNAPSHOT, &self.taken)?;
        // Same applied state, same bytes: the last applied log id identifies the snapshot.
        let snapshot_id = match self.taken.last_applied {
            Some(l) => format!("{}-{}-{}", l.leader_id.term, l.leader_id.node_id, l.index),
            None => "empty".into(),
        };
        let meta = SnapshotMeta {
            last_log_id: self.taken.last_applied,
            last_membership: self.taken.membership.clone(),
            snapshot_id,
        };
        let stored = db.encode(
            SNAPSHOT,
            &StoredSnapshot {
                meta: meta.clone(),
                data: data.clone(),
            },
        )?;

        // Read and write in one transaction: an install or a newer build may have stored a
        // later snapshot while this one was being built.
        let txn = db.begin_write()?;
        {
            let mut t = txn.open_table(SM.def).map_err(db.err("open table"))?;
            let newer_stored = match t.get(SNAPSHOT).map_err(db.err("read snapshot"))? {
                Some(v) => {
                    let current: StoredSnapshot = db.decode(SM.name, SNAPSHOT, v.value())?;
                    current.meta.last_log_id >= meta.last_log_id
                }
                None => false,
            };
            if !newer_stored {
                t.insert(SNAPSHOT, stored.as_slice())
                    .map_err(db.err("write snapshot"))?;
            }
        }
        db.commit(txn)?;
        Ok(Snapshot {
            meta,
            snapshot: Box::new(Cursor::new(data)),
        })
    }
}

impl RaftSnapshotBuilder<TypeConfig> for SnapshotBuilder {
    async fn build_snapshot(&mut self) -> Result<Snapshot, StorageError> {
        self.build()
            .map_err(|e| e.into_storage(ErrorSubject::Snapshot(None), ErrorVerb::Write))
    }
}
