//! Durable Raft storage in one redb file per node: the log and vote ([`LogStore`]) and the
//! applied state with its snapshot ([`StateMachineStore`]), sharing one `Database`.
//!
//! Invariants:
//! - every write transaction commits with `Durability::Immediate` (fsync before `commit`
//!   returns): a log append is reported to Raft only after that, and the vote is durable before
//!   `save_vote` returns;
//! - the applied state (`FabricState`, last applied log id, last membership) is written in one
//!   durable transaction per apply batch, so a restarted node reopens with exactly the state it
//!   had applied, without replaying the log;
//! - bytes read from disk decode into values or into a [`StoreError`] naming the file, table and
//!   key, never into a panic (the file itself is integrity-checked by redb on open).
//!
//! It does not cache the log (replication reads entries from redb) and does not decide anything:
//! what to append, truncate, purge or snapshot is openraft's call.

// openraft's storage traits return its `StorageError` (over 200 bytes); the helpers that feed
// them return the same type so that `?` flows straight into the trait methods.
#![allow(clippy::result_large_err)]

mod log;
mod machine;

use std::fmt::Display;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use openraft::{ErrorSubject, ErrorVerb};
use redb::{Database, Durability, ReadableDatabase, TableDefinition, WriteTransaction};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::sync::watch;

pub use self::log::LogStore;
pub use self::machine::{MachineState, SnapshotBuilder, StateHandle, StateMachineStore};
use crate::state::NodeId;
use crate::types::StorageError;

const LOG_TABLE: &str = "log";

/// Log entries by index, postcard-encoded `Entry`.
const LOG: TableDefinition<u64, &[u8]> = TableDefinition::new(LOG_TABLE);
/// Vote and last purged log id.
const META: KvTable = KvTable::new("meta");
/// Applied state and current snapshot.
const SM: KvTable = KvTable::new("sm");

/// A table of named values, with its name at hand for error messages.
#[derive(Clone, Copy)]
struct KvTable {
    def: TableDefinition<'static, &'static str, &'static [u8]>,
    name: &'static str,
}

impl KvTable {
    const fn new(name: &'static str) -> Self {
        Self {
            def: TableDefinition::new(name),
            name,
        }
    }
}

const VOTE: &str = "vote";
const PURGED: &str = "last_purged";
const APPLIED: &str = "applied";
const SNAPSHOT: &str = "snapshot";

/// Why the store could not open, read or write its file.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot open raft store {path}: {source}")]
    Open {
        path: PathBuf,
        #[source]
        source: redb::Error,
    },
    #[error("raft store {path}: {op} failed: {source}")]
    Db {
        path: PathBuf,
        op: &'static str,
        #[source]
        source: redb::Error,
    },
    #[error("raft store {path}: table `{table}` key `{key}` does not decode: {source}")]
    Corrupt {
        path: PathBuf,
        table: &'static str,
        key: String,
        #[source]
        source: postcard::Error,
    },
    #[error("received snapshot `{id}` does not decode: {source}")]
    BadSnapshot {
        id: String,
        #[source]
        source: postcard::Error,
    },
    #[error("raft store {path}: cannot encode {what}: {source}")]
    Encode {
        path: PathBuf,
        what: &'static str,
        #[source]
        source: postcard::Error,
    },
}

impl StoreError {
    /// Wraps the error for openraft, which wants to know what was being done to what.
    fn into_storage(self, subject: ErrorSubject<NodeId>, verb: ErrorVerb) -> StorageError {
        StorageError::from_io_error(subject, verb, std::io::Error::other(self))
    }
}

/// Resolves once every handle on a store's database has been dropped, i.e. the file is closed
/// and may be opened again. openraft's `shutdown` returns before its state machine worker has
/// dropped the store, so a restart in the same process waits on this first.
#[derive(Clone)]
pub struct ClosedSignal(watch::Receiver<()>);

impl ClosedSignal {
    pub async fn wait(mut self) {
        // Nothing is ever sent: `changed` fails exactly when the sender (in `Db`) is dropped.
        while self.0.changed().await.is_ok() {}
    }
}

/// The database with its path (for error messages).
struct Db {
    // Declared before `closed`: fields drop in order, so the file is closed before the
    // `ClosedSignal` fires.
    db: Database,
    path: PathBuf,
    closed: watch::Sender<()>,
}

impl Db {
    fn err<E: Into<redb::Error>>(&self, op: &'static str) -> impl FnOnce(E) -> StoreError + '_ {
        move |e| StoreError::Db {
            path: self.path.clone(),
            op,
            source: e.into(),
        }
    }

    /// Starts a write transaction that will fsync on commit. Immediate is redb's default; it is
    /// set anyway because Raft's safety rests on it.
    fn begin_write(&self) -> Result<WriteTransaction, StoreError> {
        let mut txn = self.db.begin_write().map_err(self.err("begin write"))?;
        txn.set_durability(Durability::Immediate)
            .map_err(self.err("set durability"))?;
        Ok(txn)
    }

    fn commit(&self, txn: WriteTransaction) -> Result<(), StoreError> {
        txn.commit().map_err(self.err("commit"))
    }

    fn encode<T: Serialize>(&self, what: &'static str, v: &T) -> Result<Vec<u8>, StoreError> {
        postcard::to_stdvec(v).map_err(|source| StoreError::Encode {
            path: self.path.clone(),
            what,
            source,
        })
    }

    fn decode<T: DeserializeOwned>(
        &self,
        table: &'static str,
        key: impl Display,
        bytes: &[u8],
    ) -> Result<T, StoreError> {
        postcard::from_bytes(bytes).map_err(|source| StoreError::Corrupt {
            path: self.path.clone(),
            table,
            key: key.to_string(),
            source,
        })
    }

    /// Reads one value of the `meta` or `sm` table.
    fn get<T: DeserializeOwned>(&self, table: KvTable, key: &str) -> Result<Option<T>, StoreError> {
        let txn = self.db.begin_read().map_err(self.err("begin read"))?;
        let t = txn.open_table(table.def).map_err(self.err("open table"))?;
        match t.get(key).map_err(self.err("read"))? {
            Some(v) => Ok(Some(self.decode(table.name, key, v.value())?)),
            None => Ok(None),
        }
    }

    /// Writes one value of the `meta` or `sm` table in its own durable transaction.
    fn put<T: Serialize>(
        &self,
        table: KvTable,
        key: &'static str,
        v: &T,
    ) -> Result<(), StoreError> {
        let bytes = self.encode(key, v)?;
        let txn = self.begin_write()?;
        txn.open_table(table.def)
            .map_err(self.err("open table"))?
            .insert(key, bytes.as_slice())
            .map_err(self.err("write"))?;
        self.commit(txn)
    }
}

/// Opens (or creates) the store at `path`. The file is integrity-checked and the persisted vote,
/// purge point, applied state and snapshot are decoded, so a damaged file fails here, naming
/// what is damaged, rather than later inside Raft.
///
/// Only one store may have a file open at a time; see [`LogStore::closed_signal`].
pub fn open(path: &Path) -> Result<(LogStore, StateMachineStore), StoreError> {
    let database = Database::builder()
        // A plain open trusts the file and may panic on one damaged outside redb.
        .set_check_integrity_on_open(true)
        .create(path)
        .map_err(|e| StoreError::Open {
            path: path.to_path_buf(),
            source: e.into(),
        })?;
    let (closed_tx, _) = watch::channel(());
    let db = Arc::new(Db {
        db: database,
        path: path.to_path_buf(),
        closed: closed_tx,
    });

    // Create the tables up front so that readers never meet a missing one.
    let txn = db.begin_write()?;
    txn.open_table(LOG).map_err(db.err("create table"))?;
    txn.open_table(META.def).map_err(db.err("create table"))?;
    txn.open_table(SM.def).map_err(db.err("create table"))?;
    db.commit(txn)?;

    let applied: MachineState = db.get(SM, APPLIED)?.unwrap_or_default();
    // Decoded only to surface damage now.
    db.get::<crate::types::Vote>(META, VOTE)?;
    db.get::<crate::types::LogId>(META, PURGED)?;
    db.get::<machine::StoredSnapshot>(SM, SNAPSHOT)?;

    Ok((
        LogStore::new(db.clone()),
        StateMachineStore::new(db, applied),
    ))
}

#[cfg(test)]
mod tests {
    use openraft::storage::RaftStateMachine;
    use openraft::{EntryPayload, RaftSnapshotBuilder};

    use super::*;
    use crate::state::{Command, FabricState, Proposal};
    use crate::types::{Entry, LogId, TypeConfig};

    /// Each store lives in its own temporary directory, removed when the suite drops the guard.
    struct Builder;

    impl openraft::testing::StoreBuilder<TypeConfig, LogStore, StateMachineStore, tempfile::TempDir>
        for Builder
    {
        async fn build(
            &self,
        ) -> Result<(tempfile::TempDir, LogStore, StateMachineStore), StorageError> {
            let dir = tempfile::tempdir().map_err(|e| {
                StorageError::from_io_error(ErrorSubject::Store, ErrorVerb::Write, e)
            })?;
            let (log, sm) = open(&dir.path().join("raft.redb"))
                .map_err(|e| e.into_storage(ErrorSubject::Store, ErrorVerb::Read))?;
            Ok((dir, log, sm))
        }
    }

    #[test]
    fn openraft_storage_conformance_suite() {
        openraft::testing::Suite::test_all(Builder).expect("storage suite");
    }

    fn entry(index: u64, payload: EntryPayload<TypeConfig>) -> Entry {
        Entry {
            log_id: LogId::new(openraft::CommittedLeaderId::new(1, 1), index),
            payload,
        }
    }

    fn note(message: &str) -> EntryPayload<TypeConfig> {
        EntryPayload::Normal(Proposal {
            at_ms: 1,
            actor: "test".into(),
            command: Command::RecordEvent {
                message: message.into(),
            },
            term: None,
        })
    }

    #[tokio::test]
    async fn applied_state_survives_reopen_without_replay() {
        let dir = tempfile::tempdir().expect("tmp");
        let path = dir.path().join("raft.redb");
        let (log, mut sm) = open(&path).expect("open");
        let closed = log.closed_signal();
        let results = sm
            .apply(vec![entry(1, EntryPayload::Blank), entry(2, note("hello"))])
            .await
            .expect("apply");
        assert_eq!(results.len(), 2);
        let before = sm.state_handle().read(FabricState::clone);
        assert_eq!(before.revision, 1);
        drop((log, sm));
        closed.wait().await;

        let (_log, sm) = open(&path).expect("reopen");
        let handle = sm.state_handle();
        assert_eq!(handle.applied_index(), 2);
        assert_eq!(handle.read(FabricState::clone), before);
    }

    #[tokio::test]
    async fn a_proposal_planned_in_one_term_is_refused_in_an_entry_of_another() {
        let dir = tempfile::tempdir().expect("tmp");
        let (_log, mut sm) = open(&dir.path().join("raft.redb")).expect("open");
        let planned = |term| {
            let mut p = Proposal::new(
                1,
                "planner (node 1)",
                Command::RecordEvent {
                    message: format!("planned in term {term}"),
                },
            );
            p.term = Some(term);
            EntryPayload::Normal(p)
        };
        // Entry terms: `entry` writes term 1. A term-1 plan in a term-1 entry applies; a
        // term-1 plan that a later leader carried in a term-2 entry is refused.
        let later = |index, payload| Entry {
            log_id: LogId::new(openraft::CommittedLeaderId::new(2, 2), index),
            payload,
        };
        let results = sm
            .apply(vec![
                entry(1, planned(1)),
                later(2, planned(1)),
                later(3, note("any term")),
            ])
            .await
            .expect("apply");
        assert_eq!(results[0], Ok(crate::state::Applied { revision: 1 }));
        assert_eq!(
            results[1],
            Err(crate::state::CommandError::PlannedInOtherTerm {
                planned: 1,
                entry: 2
            })
        );
        assert_eq!(results[2], Ok(crate::state::Applied { revision: 2 }));
        let state = sm.state_handle().read(FabricState::clone);
        assert_eq!(
            state.events.len(),
            2,
            "the refused plan left no trace: {state:?}"
        );
        assert_eq!(
            sm.state_handle().applied_index(),
            3,
            "its log slot is still applied"
        );
    }

    #[tokio::test]
    async fn an_older_snapshot_never_replaces_a_newer_one() {
        let dir = tempfile::tempdir().expect("tmp");
        let (_log, mut sm) = open(&dir.path().join("raft.redb")).expect("open");
        sm.apply(vec![entry(1, note("one"))]).await.expect("apply");
        // Taken at index 1, finished only after a snapshot at index 2 was stored.
        let mut stale = sm.get_snapshot_builder().await;
        sm.apply(vec![entry(2, note("two"))]).await.expect("apply");
        let mut fresh = sm.get_snapshot_builder().await;
        let built = fresh.build_snapshot().await.expect("build");
        assert_eq!(built.meta.last_log_id.map(|l| l.index), Some(2));
        stale.build_snapshot().await.expect("build");

        let current = sm
            .get_current_snapshot()
            .await
            .expect("read")
            .expect("snapshot");
        assert_eq!(current.meta.last_log_id.map(|l| l.index), Some(2));
    }

    #[test]
    fn corrupt_applied_state_is_reported_not_panicked() {
        let dir = tempfile::tempdir().expect("tmp");
        let path = dir.path().join("raft.redb");
        drop(open(&path).expect("create"));
        {
            let db = Database::create(&path).expect("db");
            let txn = db.begin_write().expect("w");
            txn.open_table(SM.def)
                .expect("t")
                .insert(APPLIED, &[0xffu8, 0xff, 0xff][..])
                .expect("i");
            txn.commit().expect("c");
        }
        match open(&path) {
            Err(StoreError::Corrupt {
                table: "sm", key, ..
            }) => assert_eq!(key, APPLIED),
            Err(e) => panic!("wrong error: {e}"),
            Ok(_) => panic!("corrupt state accepted"),
        }
    }

    #[tokio::test]
    async fn corrupt_log_entry_is_a_storage_error_naming_table_and_key() {
        use openraft::RaftLogReader;

        let dir = tempfile::tempdir().expect("tmp");
        let path = dir.path().join("raft.redb");
        drop(open(&path).expect("create"));
        {
            let db = Database::create(&path).expect("db");
            let txn = db.begin_write().expect("w");
            txn.open_table(LOG)
                .expect("t")
                .insert(3, &[0xffu8; 4][..])
                .expect("i");
            txn.commit().expect("c");
        }
        let (mut log, _sm) = open(&path).expect("the log is read lazily");
        let err = log
            .try_get_log_entries(0..10)
            .await
            .expect_err("corrupt entry accepted");
        let msg = err.to_string();
        assert!(msg.contains("table `log` key `3`"), "{msg}");
    }

    #[test]
    fn a_second_open_of_the_same_file_is_an_error() {
        let dir = tempfile::tempdir().expect("tmp");
        let path = dir.path().join("raft.redb");
        let _first = open(&path).expect("open");
        match open(&path) {
            Err(StoreError::Open { path: p, .. }) => assert_eq!(p, path),
            Err(e) => panic!("wrong error: {e}"),
            Ok(_) => panic!("opened twice"),
        }
    }
}
