//! The primary's view of one replica: connection phase, journal, dirty chunks, resync round,
//! acknowledged LSN, and whether it is outdated.
//!
//! Invariant: `acked` only grows and means "the replica durably holds every write up to it".
//! When `journal_intact`, the journal holds exactly the writes after `acked`; otherwise the
//! dirty chunks cover every write the replica may lack. At most one request is in flight.
//!
//! Does not: decide when a write completes (that needs every replica, see [`super::primary`]).

use std::time::{Duration, Instant};

use super::chunks::ChunkBits;
use super::journal::{Entry, Journal};
use super::primary::{Action, History, Mode, ReplicaSpec, ReplicaState, ReplicaStatus, Volume};
use super::proto::{ChunkSet, FromReplica, Hash, Lsn, MESSAGE_OVERHEAD, ToReplica};
use super::resync::{Next, Round};

#[derive(Debug)]
enum Phase {
    Down,
    Hello,
    Round(Box<Round>),
    Starting { next: Lsn },
    Streaming,
}

#[derive(Debug)]
pub struct Peer {
    pub name: String,
    pub mode: Mode,
    pub outdated: bool,
    pub outdate_pending: bool,
    /// An outdated sync replica close to caught up: writes wait for it again, and once it
    /// acks this LSN (every write that completed without it) it is in sync.
    rejoin_at: Option<Lsn>,
    pub acked: Lsn,
    history: History,
    phase: Phase,
    down_since: Instant,
    ticket: u64,
    in_flight: bool,
    journal: Journal,
    journal_intact: bool,
    dirty: ChunkBits,
    first_unacked_at: Option<Instant>,
}

impl Peer {
    pub fn new(spec: ReplicaSpec, chunks: u64, now: Instant) -> Self {
        Self {
            name: spec.name,
            mode: spec.mode,
            outdated: spec.outdated,
            outdate_pending: false,
            rejoin_at: None,
            acked: 0,
            history: spec.history,
            phase: Phase::Down,
            down_since: now,
            ticket: 0,
            in_flight: false,
            journal: Journal::default(),
            journal_intact: true,
            dirty: ChunkBits::new(chunks),
            first_unacked_at: None,
        }
    }

    /// Whether writes wait for this replica's acknowledgement.
    pub fn holds(&self) -> bool {
        self.mode == Mode::Sync && (!self.outdated || self.rejoin_at.is_some())
    }

    pub fn is_down(&self) -> bool {
        matches!(self.phase, Phase::Down)
    }

    pub fn dirty_memory_bytes(&self) -> usize {
        self.dirty.memory_bytes()
    }

    pub fn journal_bytes(&self) -> u64 {
        self.journal.bytes()
    }

    /// Asks for an outdate once, if writes wait for this replica.
    pub fn lost(&mut self, out: &mut Vec<Action>) {
        if self.rejoin_at.take().is_some() {
            // Still recorded outdated in the fabric: writes simply stop waiting for it.
            return;
        }
        if self.holds() && !self.outdate_pending {
            self.outdate_pending = true;
            out.push(Action::Outdate(self.name.clone()));
        }
    }

    pub fn on_write(&mut self, vol: &Volume, entry: &Entry, now: Instant, out: &mut Vec<Action>) {
        self.first_unacked_at.get_or_insert(now);
        if self.journal_intact {
            self.journal.push(entry.clone());
            if self.journal.bytes() > vol.cfg.journal_limit {
                self.journal.drain_into(&mut self.dirty, vol.cfg.chunk);
                self.journal_intact = false;
            }
        } else {
            self.dirty
                .insert_bytes(entry.op.offset(), entry.op.len(), vol.cfg.chunk);
        }
        if matches!(self.phase, Phase::Streaming) && !self.in_flight {
            self.after_ack(vol, entry.lsn, out);
        }
    }

    pub fn link_up(&mut self, vol: &Volume, out: &mut Vec<Action>) {
        if !self.is_down() {
            return;
        }
        self.ticket += 1;
        self.phase = Phase::Hello;
        let msg = ToReplica::Hello {
            volume: vol.name.clone(),
            epoch: vol.epoch,
            primary: vol.instance,
            size: vol.size,
            chunk: vol.cfg.chunk,
        };
        self.send(msg, out);
    }

    pub fn link_down(&mut self, now: Instant, out: &mut Vec<Action>) {
        if self.is_down() {
            return;
        }
        self.ticket += 1;
        self.in_flight = false;
        if let Phase::Round(r) = &self.phase {
            // Chunks the round had not settled are dirty again (all of the snapshot, to be safe).
            self.dirty.union_with(&r.known);
        }
        self.phase = Phase::Down;
        self.down_since = now;
        self.lost(out);
    }

    pub fn on_reply(
        &mut self,
        vol: &Volume,
        ticket: u64,
        reply: FromReplica,
        last: Lsn,
        now: Instant,
        out: &mut Vec<Action>,
    ) {
        if ticket != self.ticket || !self.in_flight {
            return;
        }
        self.in_flight = false;
        match (reply, &mut self.phase) {
            (FromReplica::Refused { reason, epoch_seen }, _) => {
                if epoch_seen > vol.epoch {
                    out.push(Action::Deposed {
                        replica: self.name.clone(),
                        epoch_seen,
                    });
                } else {
                    out.push(Action::Failed {
                        replica: self.name.clone(),
                        reason: reason.to_string(),
                    });
                }
                self.link_down(now, out);
            }
            (FromReplica::Welcome { next_lsn, .. }, Phase::Hello) => {
                self.on_welcome(vol, next_lsn, last, now, out);
            }
            (FromReplica::Ack { lsn }, Phase::Starting { next }) if lsn + 1 == *next => {
                self.phase = Phase::Streaming;
                self.after_ack(vol, last, out);
            }
            (FromReplica::Ack { lsn }, Phase::Streaming) if lsn <= last => {
                self.ack(lsn, last);
                self.after_ack(vol, last, out);
            }
            (FromReplica::Hashes { hashes }, Phase::Round(r)) => {
                if r.remote_hashes(hashes, &self.dirty) {
                    self.advance(vol, last, out);
                } else {
                    self.protocol_error("hashes not asked for".into(), now, out);
                }
            }
            (FromReplica::Stored { .. }, Phase::Round(r)) => {
                if r.stored() {
                    self.advance(vol, last, out);
                } else {
                    self.protocol_error("stored reply not asked for".into(), now, out);
                }
            }
            (reply, _) => self.protocol_error(format!("unexpected reply {reply:?}"), now, out),
        }
    }

    pub fn on_local_hashes(
        &mut self,
        vol: &Volume,
        ticket: u64,
        hashes: Vec<Hash>,
        last: Lsn,
        out: &mut Vec<Action>,
    ) {
        if ticket != self.ticket {
            return;
        }
        if let Phase::Round(r) = &mut self.phase
            && r.local_hashes(hashes, &self.dirty)
        {
            self.advance(vol, last, out);
        }
    }

    pub fn on_chunks(
        &mut self,
        vol: &Volume,
        ticket: u64,
        chunks: Vec<(u64, Vec<u8>)>,
        out: &mut Vec<Action>,
    ) {
        if ticket != self.ticket {
            return;
        }
        if let Phase::Round(r) = &mut self.phase
            && r.read_done(chunks.len() as u64)
        {
            let msg = ToReplica::Resync {
                volume: vol.name.clone(),
                epoch: vol.epoch,
                chunks,
            };
            self.send(msg, out);
        }
    }

    /// Brings an outdated sync replica back. Caught up (`acked == last`): in sync at once.
    /// Otherwise, on an ack (`at_ack`: evidence it is alive) with at most one batch left,
    /// writes wait for it again, and once it has acked every write that completed without it,
    /// it is in sync ([`Action::InSync`]). Under steady writes the journal is never empty,
    /// hence the two steps.
    pub fn maybe_in_sync(&mut self, vol: &Volume, last: Lsn, at_ack: bool, out: &mut Vec<Action>) {
        let streaming = matches!(self.phase, Phase::Streaming) && self.journal_intact;
        if self.mode != Mode::Sync || !self.outdated || self.outdate_pending || !streaming {
            return;
        }
        let one_batch = vol.cfg.max_message.saturating_sub(MESSAGE_OVERHEAD);
        if at_ack && self.rejoin_at.is_none() && self.journal.bytes() <= one_batch {
            self.rejoin_at = Some(last);
        }
        if self.acked >= self.rejoin_at.unwrap_or(last) {
            self.rejoin_at = None;
            self.outdated = false;
            out.push(Action::InSync(self.name.clone()));
        }
    }

    pub fn status(&self, vol: &Volume, last: Lsn, now: Instant) -> ReplicaStatus {
        let writes = last.saturating_sub(self.acked);
        let chunk = u64::from(vol.cfg.chunk);
        let mut bytes = self.journal.bytes() + self.dirty.count() * chunk;
        if let Phase::Round(r) = &self.phase {
            let (done, total) = r.progress();
            bytes += (total - done) * chunk;
        }
        let age = self
            .first_unacked_at
            .map_or(Duration::ZERO, |t| now.saturating_duration_since(t));
        let state = match &self.phase {
            Phase::Round(r) => {
                let (done, total) = r.progress();
                ReplicaState::Resyncing {
                    done_bytes: done * chunk,
                    total_bytes: total * chunk,
                }
            }
            _ if self.mode == Mode::Sync && self.outdated => ReplicaState::Outdated,
            Phase::Down | Phase::Hello => ReplicaState::Disconnected {
                dirty_bytes: bytes,
                since: self.down_since,
            },
            Phase::Starting { .. } | Phase::Streaming if writes == 0 => ReplicaState::InSync,
            Phase::Starting { .. } | Phase::Streaming => ReplicaState::Lagging {
                writes,
                bytes,
                oldest_unacked_age: age,
            },
        };
        ReplicaStatus {
            name: self.name.clone(),
            mode: self.mode,
            state,
            acked: self.acked,
            lag_writes: writes,
            lag_bytes: if writes == 0 { 0 } else { bytes },
            lag_age: if writes == 0 { Duration::ZERO } else { age },
        }
    }

    fn send(&mut self, msg: ToReplica, out: &mut Vec<Action>) {
        debug_assert!(!self.in_flight, "one request in flight per replica");
        self.in_flight = true;
        out.push(Action::Send {
            replica: self.name.clone(),
            ticket: self.ticket,
            msg,
        });
    }

    fn protocol_error(&mut self, reason: String, now: Instant, out: &mut Vec<Action>) {
        out.push(Action::Failed {
            replica: self.name.clone(),
            reason,
        });
        self.link_down(now, out);
    }

    fn ack(&mut self, lsn: Lsn, last: Lsn) {
        if lsn <= self.acked {
            return;
        }
        self.acked = lsn;
        self.journal.ack_through(lsn);
        self.first_unacked_at = if lsn >= last {
            None
        } else {
            self.journal.oldest().or(self.first_unacked_at)
        };
    }

    fn on_welcome(
        &mut self,
        vol: &Volume,
        next_lsn: Option<Lsn>,
        last: Lsn,
        now: Instant,
        out: &mut Vec<Action>,
    ) {
        let resumable = self.history == History::InSync
            && self.journal_intact
            && next_lsn.is_some_and(|n| n > self.acked && n <= last + 1);
        match next_lsn {
            Some(n) if resumable => {
                self.ack(n - 1, last);
                self.phase = Phase::Streaming;
                self.after_ack(vol, last, out);
            }
            _ => {
                self.journal.drain_into(&mut self.dirty, vol.cfg.chunk);
                self.journal_intact = false;
                self.start_round(vol, last, out);
            }
        }
        let _ = now;
    }

    /// Streams the next batch, or starts a round if the journal overflowed.
    fn after_ack(&mut self, vol: &Volume, last: Lsn, out: &mut Vec<Action>) {
        if !self.journal_intact {
            self.start_round(vol, last, out);
            return;
        }
        if self.in_flight {
            return;
        }
        let max = vol.cfg.max_message.saturating_sub(MESSAGE_OVERHEAD);
        if let Some((first_lsn, ops)) = self.journal.batch(max) {
            let msg = ToReplica::Writes {
                volume: vol.name.clone(),
                epoch: vol.epoch,
                first_lsn,
                ops,
            };
            self.send(msg, out);
        }
        self.maybe_in_sync(vol, last, true, out);
    }

    fn start_round(&mut self, vol: &Volume, last: Lsn, out: &mut Vec<Action>) {
        debug_assert!(
            self.journal.is_empty(),
            "a round starts with the journal drained"
        );
        // A resync is not "close": writes stop waiting for an outdated replica again.
        self.rejoin_at = None;
        let known = self.dirty.take();
        self.phase = Phase::Round(Box::new(Round::new(self.history, known, vol.chunks)));
        self.advance(vol, last, out);
    }

    /// Moves the round on; when it is over, starts the next one or the stream.
    fn advance(&mut self, vol: &Volume, last: Lsn, out: &mut Vec<Action>) {
        let Phase::Round(round) = &mut self.phase else {
            return;
        };
        if self.in_flight {
            return;
        }
        let per_chunk = u64::from(vol.cfg.chunk) + 16;
        let ship_batch = vol.cfg.max_message.saturating_sub(MESSAGE_OVERHEAD) / per_chunk;
        match round.next(ship_batch, vol.cfg.hash_batch) {
            Next::Wait => {}
            Next::Read(chunks) => out.push(Action::ReadChunks {
                replica: self.name.clone(),
                ticket: self.ticket,
                chunks,
            }),
            Next::Hash(chunks) => {
                let set = ChunkSet::from_sorted(&chunks);
                out.push(Action::HashChunks {
                    replica: self.name.clone(),
                    ticket: self.ticket,
                    chunks,
                });
                let msg = ToReplica::HashRequest {
                    volume: vol.name.clone(),
                    epoch: vol.epoch,
                    chunks: set,
                };
                self.send(msg, out);
            }
            Next::Finished => self.finish_round(vol, last, out),
        }
    }

    fn finish_round(&mut self, vol: &Volume, last: Lsn, out: &mut Vec<Action>) {
        if let Phase::Round(r) = &self.phase
            && let Some(report) = r.report(&self.name, vol.size, vol.cfg.chunk)
        {
            out.push(Action::ResyncDone(report));
        }
        self.history = History::InSync;
        if !self.dirty.is_empty() {
            self.start_round(vol, last, out);
            return;
        }
        // Every write up to `last` was on disk before its chunk was hashed or read, and none
        // came after the round began: the replica now holds them all.
        self.ack(last, last);
        self.journal_intact = true;
        self.phase = Phase::Starting { next: last + 1 };
        let msg = ToReplica::StartStream {
            volume: vol.name.clone(),
            epoch: vol.epoch,
            primary: vol.instance,
            next_lsn: last + 1,
        };
        self.send(msg, out);
    }
}
