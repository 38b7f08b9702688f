//! The per-replica journal: writes not yet acknowledged by one replica, in LSN order, bounded
//! in bytes.
//!
//! Invariant: entries are consecutive LSNs; `bytes` is the sum of their wire sizes. When the
//! owner finds it over its bound it drains the journal into dirty chunks ([`Journal::drain_into`])
//! and so never holds more than the bound plus one write.
//!
//! Does not: decide when to ship or drop (see [`super::peer`]).

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Instant;

use super::chunks::ChunkBits;
use super::proto::{Lsn, Op};

/// One write as journaled; the op is shared by every replica's journal.
#[derive(Debug, Clone)]
pub struct Entry {
    pub lsn: Lsn,
    pub op: Arc<Op>,
    pub at: Instant,
}

#[derive(Debug, Default)]
pub struct Journal {
    entries: VecDeque<Entry>,
    bytes: u64,
}

impl Journal {
    pub fn push(&mut self, entry: Entry) {
        debug_assert!(
            self.entries.back().is_none_or(|e| e.lsn + 1 == entry.lsn),
            "journal LSNs must be consecutive"
        );
        self.bytes += entry.op.wire_bytes();
        self.entries.push_back(entry);
    }

    /// Forgets every entry up to and including `lsn`.
    pub fn ack_through(&mut self, lsn: Lsn) {
        while let Some(e) = self.entries.front() {
            if e.lsn > lsn {
                break;
            }
            self.bytes -= e.op.wire_bytes();
            self.entries.pop_front();
        }
    }

    /// The first entries (at least one, if any) whose wire size fits `max_bytes`.
    pub fn batch(&self, max_bytes: u64) -> Option<(Lsn, Vec<Op>)> {
        let first = self.entries.front()?.lsn;
        let mut used = 0;
        let mut ops = Vec::new();
        for e in &self.entries {
            let cost = e.op.wire_bytes();
            if !ops.is_empty() && used + cost > max_bytes {
                break;
            }
            used += cost;
            ops.push(Op::clone(&e.op));
        }
        Some((first, ops))
    }

    /// Marks the chunks of every entry dirty and empties the journal.
    pub fn drain_into(&mut self, dirty: &mut ChunkBits, chunk: u32) {
        for e in self.entries.drain(..) {
            dirty.insert_bytes(e.op.offset(), e.op.len(), chunk);
        }
        self.bytes = 0;
    }

    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn oldest(&self) -> Option<Instant> {
        self.entries.front().map(|e| e.at)
    }
}
