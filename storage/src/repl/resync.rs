//! One resync round of one replica: hash a set of chunks on both sides, ship the chunks that
//! differ, and attribute each difference.
//!
//! Invariant: a chunk leaves the round only when the replica's hash equals the primary's or
//! its content was shipped and acknowledged; the primary's writes during a round go to the
//! replica's dirty set, which the owner turns into the next round.
//!
//! Does not: do I/O or talk to the replica (the owner, [`super::peer`], turns [`Next`] into
//! actions).

use std::collections::VecDeque;

use super::chunks::{ChunkBits, chunk_span};
use super::primary::{DiffReport, History};
use super::proto::Hash;

/// What the round needs next.
#[derive(Debug, PartialEq, Eq)]
pub enum Next {
    /// A local read, a hash exchange or a shipment is outstanding.
    Wait,
    /// Read these chunks locally to ship them.
    Read(Vec<u64>),
    /// Hash these chunks on both sides.
    Hash(Vec<u64>),
    /// Every chunk is settled.
    Finished,
}

#[derive(Debug)]
struct Hashing {
    chunks: Vec<u64>,
    local: Option<Vec<Hash>>,
    remote: Option<Vec<Hash>>,
}

#[derive(Debug)]
pub struct Round {
    todo: ChunkBits,
    /// Chunks the primary wrote that the replica may lack (snapshot at the round's start).
    pub known: ChunkBits,
    classify: bool,
    attribute_known: bool,
    hashing: Option<Hashing>,
    to_ship: VecDeque<u64>,
    reading: bool,
    shipping: u64,
    done: u64,
    total: u64,
    while_away: Vec<u64>,
    divergent: Vec<u64>,
}

impl Round {
    /// A round over `known` (the replica's dirty chunks) or, when the replica's history is not
    /// known, over every chunk.
    pub fn new(history: History, known: ChunkBits, chunks: u64) -> Self {
        let todo = match history {
            History::InSync => known.clone(),
            History::Unknown | History::New => ChunkBits::all(chunks),
        };
        Self {
            total: todo.count(),
            todo,
            known,
            classify: history == History::Unknown,
            attribute_known: history != History::New,
            hashing: None,
            to_ship: VecDeque::new(),
            reading: false,
            shipping: 0,
            done: 0,
            while_away: Vec::new(),
            divergent: Vec::new(),
        }
    }

    pub fn next(&mut self, ship_batch: u64, hash_batch: u64) -> Next {
        if self.reading || self.shipping > 0 || self.hashing.is_some() {
            return Next::Wait;
        }
        if !self.to_ship.is_empty() {
            let n = (ship_batch.max(1) as usize).min(self.to_ship.len());
            self.reading = true;
            return Next::Read(self.to_ship.drain(..n).collect());
        }
        let chunks = self.todo.pop_first(hash_batch.max(1));
        if chunks.is_empty() {
            return Next::Finished;
        }
        self.hashing = Some(Hashing {
            chunks: chunks.clone(),
            local: None,
            remote: None,
        });
        Next::Hash(chunks)
    }

    /// Records the local hashes; false when none were expected or the count is wrong.
    /// `written`: the replica's dirty chunks now (written since the round began).
    pub fn local_hashes(&mut self, hashes: Vec<Hash>, written: &ChunkBits) -> bool {
        match &mut self.hashing {
            Some(h) if h.local.is_none() && h.chunks.len() == hashes.len() => {
                h.local = Some(hashes);
                self.compare(written);
                true
            }
            _ => false,
        }
    }

    /// Records the replica's hashes; false when none were expected or the count is wrong.
    pub fn remote_hashes(&mut self, hashes: Vec<Hash>, written: &ChunkBits) -> bool {
        match &mut self.hashing {
            Some(h) if h.remote.is_none() && h.chunks.len() == hashes.len() => {
                h.remote = Some(hashes);
                self.compare(written);
                true
            }
            _ => false,
        }
    }

    /// `written`: chunks the primary wrote since the round began (also not divergent).
    fn compare(&mut self, written: &ChunkBits) {
        let Some(h) = self
            .hashing
            .take_if(|h| h.local.is_some() && h.remote.is_some())
        else {
            return;
        };
        let (Some(local), Some(remote)) = (h.local, h.remote) else {
            return;
        };
        for ((i, l), r) in h.chunks.into_iter().zip(local).zip(remote) {
            if l == r {
                self.done += 1;
                continue;
            }
            self.to_ship.push_back(i);
            if self.known.contains(i) || written.contains(i) || !self.classify {
                if self.attribute_known {
                    self.while_away.push(i);
                }
            } else {
                self.divergent.push(i);
            }
        }
    }

    /// The chunks read for shipping are now in a `Resync` request.
    pub fn read_done(&mut self, count: u64) -> bool {
        if !self.reading {
            return false;
        }
        self.reading = false;
        self.shipping = count;
        true
    }

    /// The replica stored the shipped chunks.
    pub fn stored(&mut self) -> bool {
        if self.shipping == 0 {
            return false;
        }
        self.done += self.shipping;
        self.shipping = 0;
        true
    }

    pub fn progress(&self) -> (u64, u64) {
        (self.done, self.total)
    }

    /// Which byte ranges differed, once the round is over (None if nothing did).
    pub fn report(&self, replica: &str, size: u64, chunk: u32) -> Option<DiffReport> {
        if self.while_away.is_empty() && self.divergent.is_empty() {
            return None;
        }
        Some(DiffReport {
            replica: replica.to_owned(),
            written_while_away: byte_ranges(&self.while_away, size, chunk),
            divergent: byte_ranges(&self.divergent, size, chunk),
        })
    }
}

/// Merges ascending chunk indices into byte ranges `(offset, len)`.
fn byte_ranges(indices: &[u64], size: u64, chunk: u32) -> Vec<(u64, u64)> {
    let mut sorted = indices.to_vec();
    sorted.sort_unstable();
    let mut out: Vec<(u64, u64)> = Vec::new();
    for i in sorted {
        let (offset, len) = chunk_span(i, size, chunk);
        match out.last_mut() {
            Some((o, l)) if *o + *l == offset => *l += len,
            _ => out.push((offset, len)),
        }
    }
    out
}
