//! The Raft log and vote in redb: entries keyed by index, the vote and the purge point in the
//! `meta` table.
//!
//! Invariant: the log has no holes. An append, truncate or purge is one durable transaction, and
//! a purge records the new purge point in the same transaction that deletes the entries, so a
//! crash never leaves entries missing below a stale purge point. `LogFlushed` is signalled only
//! after the append's transaction has been fsynced.
//!
//! It does not store the committed index: the state machine is durable before `apply` returns,
//! which openraft documents as making `save_committed` unnecessary (and it would cost an fsync
//! per commit).

#![allow(clippy::result_large_err)]

use std::fmt::Debug;
use std::ops::{Bound, RangeBounds};
use std::sync::Arc;

use openraft::storage::{LogFlushed, LogState, RaftLogStorage};
use openraft::{ErrorSubject, ErrorVerb, OptionalSend, RaftLogReader};
use redb::{ReadableDatabase, ReadableTable};

use super::{ClosedSignal, Db, LOG, LOG_TABLE, META, PURGED, StoreError, VOTE};
use crate::types::{Entry, LogId, StorageError, TypeConfig, Vote};

/// The Raft log and vote of one node. Clones share the database; openraft hands clones to its
/// replication tasks as log readers.
#[derive(Clone)]
pub struct LogStore {
    db: Arc<Db>,
}

impl LogStore {
    pub(super) fn new(db: Arc<Db>) -> Self {
        Self { db }
    }

    /// Fires once this store, its clones and the state machine store of the same file have all
    /// been dropped.
    pub fn closed_signal(&self) -> ClosedSignal {
        ClosedSignal(self.db.closed.subscribe())
    }

    fn entries(&self, range: (Bound<u64>, Bound<u64>)) -> Result<Vec<Entry>, StoreError> {
        let db = &self.db;
        let txn = db.db.begin_read().map_err(db.err("begin read"))?;
        let t = txn.open_table(LOG).map_err(db.err("open table"))?;
        let mut out = Vec::new();
        for item in t.range::<u64>(range).map_err(db.err("read log"))? {
            let (k, v) = item.map_err(db.err("read log"))?;
            out.push(db.decode(LOG_TABLE, k.value(), v.value())?);
        }
        Ok(out)
    }

    fn last_entry(&self) -> Result<Option<Entry>, StoreError> {
        let db = &self.db;
        let txn = db.db.begin_read().map_err(db.err("begin read"))?;
        let t = txn.open_table(LOG).map_err(db.err("open table"))?;
        match t.last().map_err(db.err("read log"))? {
            Some((k, v)) => Ok(Some(db.decode(LOG_TABLE, k.value(), v.value())?)),
            None => Ok(None),
        }
    }

    fn write_entries(&self, entries: impl IntoIterator<Item = Entry>) -> Result<(), StoreError> {
        let db = &self.db;
        let txn = db.begin_write()?;
        {
            let mut t = txn.open_table(LOG).map_err(db.err("open table"))?;
            for entry in entries {
                let bytes = db.encode("log entry", &entry)?;
                t.insert(entry.log_id.index, bytes.as_slice())
                    .map_err(db.err("append"))?;
            }
        }
        db.commit(txn)
    }

    /// Deletes the entries in `range`, and records `purged` as the purge point in the same
    /// transaction.
    fn delete(
        &self,
        range: (Bound<u64>, Bound<u64>),
        purged: Option<&LogId>,
    ) -> Result<(), StoreError> {
        let db = &self.db;
        let purged = purged.map(|p| db.encode(PURGED, p)).transpose()?;
        let txn = db.begin_write()?;
        {
            let mut t = txn.open_table(LOG).map_err(db.err("open table"))?;
            t.retain_in::<u64, _>(range, |_, _| false)
                .map_err(db.err("delete log"))?;
            if let Some(p) = &purged {
                txn.open_table(META.def)
                    .map_err(db.err("open table"))?
                    .insert(PURGED, p.as_slice())
                    .map_err(db.err("write purge point"))?;
            }
        }
        db.commit(txn)
    }
}

fn owned_bounds(range: &impl RangeBounds<u64>) -> (Bound<u64>, Bound<u64>) {
    (range.start_bound().cloned(), range.end_bound().cloned())
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, StorageError> {
        self.entries(owned_bounds(&range))
            .map_err(|e| e.into_storage(ErrorSubject::Logs, ErrorVerb::Read))
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = Self;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, StorageError> {
        let read = |e: StoreError| e.into_storage(ErrorSubject::Logs, ErrorVerb::Read);
        let last_purged_log_id: Option<LogId> = self.db.get(META, PURGED).map_err(read)?;
        let last_log_id = self
            .last_entry()
            .map_err(read)?
            .map(|e| e.log_id)
            .or(last_purged_log_id);
        Ok(LogState {
            last_purged_log_id,
            last_log_id,
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote) -> Result<(), StorageError> {
        self.db
            .put(META, VOTE, vote)
            .map_err(|e| e.into_storage(ErrorSubject::Vote, ErrorVerb::Write))
    }

    async fn read_vote(&mut self) -> Result<Option<Vote>, StorageError> {
        self.db
            .get(META, VOTE)
            .map_err(|e| e.into_storage(ErrorSubject::Vote, ErrorVerb::Read))
    }

    async fn append<I>(
        &mut self,
        entries: I,
        callback: LogFlushed<TypeConfig>,
    ) -> Result<(), StorageError>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        // The commit is synchronous and durable, so the entries are on disk (not just readable)
        // by the time the callback runs.
        match self.write_entries(entries) {
            Ok(()) => {
                callback.log_io_completed(Ok(()));
                Ok(())
            }
            Err(e) => {
                callback.log_io_completed(Err(std::io::Error::other(e.to_string())));
                Err(e.into_storage(ErrorSubject::Logs, ErrorVerb::Write))
            }
        }
    }

    async fn truncate(&mut self, log_id: LogId) -> Result<(), StorageError> {
        self.delete((Bound::Included(log_id.index), Bound::Unbounded), None)
            .map_err(|e| e.into_storage(ErrorSubject::Logs, ErrorVerb::Delete))
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), StorageError> {
        debug_assert!(
            self.db
                .get::<LogId>(META, PURGED)
                .ok()
                .flatten()
                .is_none_or(|p| p <= log_id),
            "the purge point only moves forward"
        );
        self.delete(
            (Bound::Unbounded, Bound::Included(log_id.index)),
            Some(&log_id),
        )
        .map_err(|e| e.into_storage(ErrorSubject::Logs, ErrorVerb::Delete))
    }
}
