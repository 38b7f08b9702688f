//! The primary's replication state machine (sans-IO): numbers writes, routes them to each
//! replica's journal or dirty chunks, decides when a write completes, and drives resync.
//!
//! Inputs are method calls with the current time; outputs are [`Action`]s the shell performs
//! (send a message, read or hash local chunks, complete a write, ask the fabric to outdate a
//! replica). Nothing here blocks, sleeps or touches a file.
//!
//! Invariant (sync safety): a write completes only when it is done locally and every sync
//! replica that is not outdated has durably acknowledged it. A lost sync replica is never
//! dropped silently: [`Action::Outdate`] is emitted and the write keeps waiting until the shell
//! has recorded that in the fabric and called [`Primary::outdated`].
//!
//! Does not: time out transport requests (the shell does, then calls [`Primary::link_down`]),
//! retry connections (the shell calls [`Primary::link_up`]), or change epoch or replica set at
//! run time (build a new `Primary`).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::ReplConfig;
use super::chunks::chunk_count;
use super::journal::Entry;
use super::peer::Peer;
use super::proto::{
    FromReplica, Hash, Lsn, MAX_VOLUME_NAME, MESSAGE_OVERHEAD, OP_OVERHEAD, Op, ToReplica,
};

/// How writes wait for a replica.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// A write completes only once this replica has it durably (or it was outdated).
    Sync,
    /// A write completes after the local write; the replica follows, with measured lag.
    Async,
}

/// What the primary knows about a replica's content when it starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum History {
    /// It held exactly the primary's data when this primary started: only chunks written
    /// since are compared. Only true after a clean stop of both (or when the agent knows the
    /// copies matched); after the primary crashed, a sync replica may hold a write the
    /// primary's file lacks, so use `Unknown`.
    InSync,
    /// Unknown (a returning old primary, a copy of unknown age): every chunk is compared, and
    /// chunks that differ but that this primary did not write are reported as divergent.
    Unknown,
    /// A new, empty copy: every chunk is compared; differences are expected, not reported.
    New,
}

/// One replica as configured.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplicaSpec {
    /// The replica's site name.
    pub name: String,
    pub mode: Mode,
    pub history: History,
    /// Whether the fabric already records this copy as outdated.
    pub outdated: bool,
}

/// Where a replica stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReplicaState {
    InSync,
    Lagging {
        writes: u64,
        bytes: u64,
        oldest_unacked_age: Duration,
    },
    Resyncing {
        done_bytes: u64,
        total_bytes: u64,
    },
    Disconnected {
        dirty_bytes: u64,
        since: Instant,
    },
    /// A sync replica recorded as outdated; writes do not wait for it.
    Outdated,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplicaStatus {
    pub name: String,
    pub mode: Mode,
    pub state: ReplicaState,
    /// Every write up to this LSN is durable on the replica.
    pub acked: Lsn,
    /// Writes the replica has not acknowledged.
    pub lag_writes: u64,
    /// Upper bound of the bytes those writes cover (journal bytes plus dirty chunks).
    pub lag_bytes: u64,
    /// Age of the oldest write the replica has not acknowledged.
    pub lag_age: Duration,
}

/// Which byte ranges differed between the primary and a replica in a resync round.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiffReport {
    pub replica: String,
    /// Ranges the primary wrote while the replica was away (expected).
    pub written_while_away: Vec<(u64, u64)>,
    /// Ranges that differed although the primary did not write them: the replica had writes
    /// the primary lacks (a returning old primary). Overwritten by the resync.
    pub divergent: Vec<(u64, u64)>,
}

/// What the shell must do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Send `msg` to `replica`; feed the reply to [`Primary::handle_reply`] with `ticket`.
    Send {
        replica: String,
        ticket: u64,
        msg: ToReplica,
    },
    /// Read these local chunks; feed them to [`Primary::handle_chunks`].
    ReadChunks {
        replica: String,
        ticket: u64,
        chunks: Vec<u64>,
    },
    /// Hash these local chunks; feed them to [`Primary::handle_hashes`].
    HashChunks {
        replica: String,
        ticket: u64,
        chunks: Vec<u64>,
    },
    /// The write with this LSN may be acknowledged to the client.
    Complete(Lsn),
    /// Record in the fabric that this sync replica is outdated, then call [`Primary::outdated`].
    Outdate(String),
    /// An outdated sync replica caught up; writes wait for it again.
    InSync(String),
    /// A replica has seen a newer epoch: this primary is deposed and must stop writing.
    Deposed { replica: String, epoch_seen: u64 },
    /// A resync round found differences.
    ResyncDone(DiffReport),
    /// A replica refused a request or answered out of protocol; it is now down.
    Failed { replica: String, reason: String },
}

/// The volume as every replica's state machine needs it.
#[derive(Debug, Clone)]
pub struct Volume {
    pub name: String,
    pub epoch: u64,
    /// Identifies this run of the primary (a replica resumes a stream only with the same run).
    pub instance: u64,
    pub size: u64,
    pub chunks: u64,
    pub cfg: ReplConfig,
}

/// A configuration the primary cannot run with.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PrimaryError {
    #[error("replica {0:?} is listed twice")]
    DuplicateReplica(String),
    #[error("volume name of {len} bytes is longer than {max}")]
    VolumeName { len: usize, max: usize },
    #[error("chunk size {chunk} must be positive and fit a {max_message}-byte message")]
    Chunk { chunk: u32, max_message: u64 },
    #[error("max message of {0} bytes leaves no room for data")]
    MaxMessage(u64),
}

#[derive(Debug)]
struct Pending {
    local_done: bool,
    at: Instant,
}

#[derive(Debug)]
pub struct Primary {
    vol: Volume,
    last: Lsn,
    peers: Vec<Peer>,
    pending: BTreeMap<Lsn, Pending>,
}

impl Primary {
    pub fn new(
        name: &str,
        epoch: u64,
        instance: u64,
        size: u64,
        cfg: ReplConfig,
        replicas: Vec<ReplicaSpec>,
        now: Instant,
    ) -> Result<Self, PrimaryError> {
        validate(name, &cfg, &replicas)?;
        let chunks = chunk_count(size, cfg.chunk);
        let peers = replicas
            .into_iter()
            .map(|spec| Peer::new(spec, chunks, now))
            .collect();
        let vol = Volume {
            name: name.to_owned(),
            epoch,
            instance,
            size,
            chunks,
            cfg,
        };
        Ok(Self {
            vol,
            last: 0,
            peers,
            pending: BTreeMap::new(),
        })
    }

    pub fn volume(&self) -> &Volume {
        &self.vol
    }

    /// The newest LSN handed out.
    pub fn last_lsn(&self) -> Lsn {
        self.last
    }

    /// Numbers a write (a write larger than a message is split; the returned LSN is its last
    /// piece's) and queues it for every replica. The shell writes it locally, then calls
    /// [`Primary::local_done`]. FUA is the shell's business: replicas always ack durably.
    pub fn submit(&mut self, op: Op, now: Instant) -> (Lsn, Vec<Action>) {
        let mut out = Vec::new();
        let max_data = self.vol.cfg.max_message - MESSAGE_OVERHEAD - OP_OVERHEAD;
        for piece in split(op, max_data) {
            self.last += 1;
            let entry = Entry {
                lsn: self.last,
                op: Arc::new(piece),
                at: now,
            };
            for peer in &mut self.peers {
                peer.on_write(&self.vol, &entry, now, &mut out);
            }
        }
        self.pending.insert(
            self.last,
            Pending {
                local_done: false,
                at: now,
            },
        );
        (self.last, out)
    }

    /// The local write of `lsn` (as returned by `submit`) is done.
    pub fn local_done(&mut self, lsn: Lsn) -> Vec<Action> {
        if let Some(p) = self.pending.get_mut(&lsn) {
            p.local_done = true;
        }
        self.completions(Vec::new())
    }

    pub fn handle_reply(
        &mut self,
        replica: &str,
        ticket: u64,
        reply: FromReplica,
        now: Instant,
    ) -> Vec<Action> {
        let mut out = Vec::new();
        let last = self.last;
        if let Some(p) = self.peers.iter_mut().find(|p| p.name == replica) {
            p.on_reply(&self.vol, ticket, reply, last, now, &mut out);
        }
        self.completions(out)
    }

    /// Local hashes asked for by [`Action::HashChunks`].
    pub fn handle_hashes(&mut self, replica: &str, ticket: u64, hashes: Vec<Hash>) -> Vec<Action> {
        let mut out = Vec::new();
        let last = self.last;
        if let Some(p) = self.peers.iter_mut().find(|p| p.name == replica) {
            p.on_local_hashes(&self.vol, ticket, hashes, last, &mut out);
        }
        self.completions(out)
    }

    /// Local chunks asked for by [`Action::ReadChunks`].
    pub fn handle_chunks(
        &mut self,
        replica: &str,
        ticket: u64,
        chunks: Vec<(u64, Vec<u8>)>,
    ) -> Vec<Action> {
        let mut out = Vec::new();
        if let Some(p) = self.peers.iter_mut().find(|p| p.name == replica) {
            p.on_chunks(&self.vol, ticket, chunks, &mut out);
        }
        out
    }

    pub fn link_up(&mut self, replica: &str) -> Vec<Action> {
        let mut out = Vec::new();
        if let Some(p) = self.peers.iter_mut().find(|p| p.name == replica) {
            p.link_up(&self.vol, &mut out);
        }
        out
    }

    pub fn link_down(&mut self, replica: &str, now: Instant) -> Vec<Action> {
        let mut out = Vec::new();
        if let Some(p) = self.peers.iter_mut().find(|p| p.name == replica) {
            p.link_down(now, &mut out);
        }
        self.completions(out)
    }

    /// The fabric now records `replica` as outdated: writes stop waiting for it.
    pub fn outdated(&mut self, replica: &str) -> Vec<Action> {
        let mut out = Vec::new();
        if let Some(p) = self.peers.iter_mut().find(|p| p.name == replica) {
            p.outdated = true;
            p.outdate_pending = false;
            p.maybe_in_sync(&self.vol, self.last, false, &mut out);
        }
        self.completions(out)
    }

    /// Outdates sync replicas that let a write wait longer than the ack timeout.
    pub fn poll(&mut self, now: Instant) -> Vec<Action> {
        let mut out = Vec::new();
        let timeout = self.vol.cfg.ack_timeout;
        let overdue = self
            .pending
            .iter()
            .filter(|(_, p)| now.saturating_duration_since(p.at) >= timeout)
            .map(|(lsn, _)| *lsn)
            .next();
        if let Some(lsn) = overdue {
            for peer in self.peers.iter_mut().filter(|p| p.acked < lsn) {
                peer.lost(&mut out);
            }
        }
        out
    }

    pub fn is_down(&self, replica: &str) -> bool {
        self.peers.iter().any(|p| p.name == replica && p.is_down())
    }

    pub fn status(&self, now: Instant) -> Vec<ReplicaStatus> {
        self.peers
            .iter()
            .map(|p| p.status(&self.vol, self.last, now))
            .collect()
    }

    /// Bytes of memory the replica's journal and dirty set hold (for bounds tests).
    pub fn memory_of(&self, replica: &str) -> Option<(u64, usize)> {
        self.peers
            .iter()
            .find(|p| p.name == replica)
            .map(|p| (p.journal_bytes(), p.dirty_memory_bytes()))
    }

    fn completions(&mut self, mut out: Vec<Action>) -> Vec<Action> {
        let peers = &self.peers;
        let done: Vec<Lsn> = self
            .pending
            .iter()
            .filter(|(lsn, p)| p.local_done && peers.iter().all(|r| !r.holds() || r.acked >= **lsn))
            .map(|(lsn, _)| *lsn)
            .collect();
        for lsn in done {
            self.pending.remove(&lsn);
            out.push(Action::Complete(lsn));
        }
        out
    }
}

fn validate(name: &str, cfg: &ReplConfig, replicas: &[ReplicaSpec]) -> Result<(), PrimaryError> {
    if name.len() > MAX_VOLUME_NAME {
        return Err(PrimaryError::VolumeName {
            len: name.len(),
            max: MAX_VOLUME_NAME,
        });
    }
    if cfg.max_message <= MESSAGE_OVERHEAD + OP_OVERHEAD {
        return Err(PrimaryError::MaxMessage(cfg.max_message));
    }
    if cfg.chunk == 0 || u64::from(cfg.chunk) + 16 > cfg.max_message - MESSAGE_OVERHEAD {
        return Err(PrimaryError::Chunk {
            chunk: cfg.chunk,
            max_message: cfg.max_message,
        });
    }
    for (i, r) in replicas.iter().enumerate() {
        if replicas[..i].iter().any(|o| o.name == r.name) {
            return Err(PrimaryError::DuplicateReplica(r.name.clone()));
        }
    }
    Ok(())
}

/// Splits a write into pieces of at most `max_data` bytes (zeroes are never split).
fn split(op: Op, max_data: u64) -> Vec<Op> {
    match op {
        Op::Write { offset, data } if data.len() as u64 > max_data => data
            .chunks(max_data as usize)
            .enumerate()
            .map(|(i, part)| Op::Write {
                offset: offset + i as u64 * max_data,
                data: part.to_vec(),
            })
            .collect(),
        op => vec![op],
    }
}
