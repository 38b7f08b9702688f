//! The replica's state machine (sans-IO): checks every request's volume and epoch, keeps the
//! stream position, and turns a request into a [`Plan`]: steps to run in order, then a reply.
//!
//! Invariants: the epoch only goes up, and a newer epoch is persisted (first step of the plan)
//! before anything of the message is acted on, so a restarted replica still refuses a deposed
//! primary; writes are applied strictly in LSN order (a gap is refused, a repeat is
//! acknowledged without applying again); an ack is planned only after an fsync step.
//!
//! Does not: read or write files (the store runs the plan), or talk to anyone.

use serde::{Deserialize, Serialize};

use super::chunks::{chunk_count, chunk_span};
use super::proto::{FromReplica, Lsn, Op, Refusal, ToReplica};
use crate::device::check_range;

/// What a replica persists next to its image (`<image>.meta`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Meta {
    pub volume: String,
    /// Newest epoch seen.
    pub epoch: u64,
    pub size: u64,
    pub chunk: u32,
}

/// One step of a plan.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// Persist the meta durably (a newer epoch).
    PersistMeta(Meta),
    Apply(Vec<Op>),
    /// Write whole chunks.
    Store(Vec<(u64, Vec<u8>)>),
    /// fsync the image.
    Sync,
}

/// The reply once every step succeeded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    Ready(FromReplica),
    /// Reply with the hashes of these chunks.
    HashesOf(Vec<u64>),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    pub steps: Vec<Step>,
    pub reply: Reply,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Session {
    primary: u64,
    epoch: u64,
    next_lsn: Lsn,
}

#[derive(Debug)]
pub struct Replica {
    meta: Meta,
    session: Option<Session>,
}

impl Replica {
    pub fn new(meta: Meta) -> Self {
        Self {
            meta,
            session: None,
        }
    }

    pub fn meta(&self) -> &Meta {
        &self.meta
    }

    /// A plan failed part-way: forget the stream so the primary resyncs.
    pub fn failed(&mut self) {
        self.session = None;
    }

    pub fn handle(&mut self, msg: ToReplica) -> Plan {
        if msg.volume() != self.meta.volume {
            let reason = Refusal::WrongVolume {
                got: msg.volume().to_owned(),
                have: self.meta.volume.clone(),
            };
            return self.refuse(Vec::new(), reason);
        }
        if msg.epoch() < self.meta.epoch {
            return self.refuse(Vec::new(), Refusal::StaleEpoch { got: msg.epoch() });
        }
        let mut steps = Vec::new();
        if msg.epoch() > self.meta.epoch {
            debug_assert!(msg.epoch() > self.meta.epoch, "epochs only go up");
            self.meta.epoch = msg.epoch();
            self.session = None;
            steps.push(Step::PersistMeta(self.meta.clone()));
        }
        match msg {
            ToReplica::Hello {
                primary,
                size,
                chunk,
                ..
            } => self.hello(steps, primary, size, chunk),
            ToReplica::StartStream {
                primary, next_lsn, ..
            } => {
                self.session = Some(Session {
                    primary,
                    epoch: self.meta.epoch,
                    next_lsn,
                });
                self.ready(
                    steps,
                    FromReplica::Ack {
                        lsn: next_lsn.saturating_sub(1),
                    },
                )
            }
            ToReplica::Writes { first_lsn, ops, .. } => self.writes(steps, first_lsn, ops),
            ToReplica::HashRequest { chunks, .. } => {
                let indices: Vec<u64> = chunks.iter().collect();
                let n = chunk_count(self.meta.size, self.meta.chunk);
                match indices.iter().find(|&&i| i >= n) {
                    Some(&index) => self.refuse(steps, Refusal::BadChunk { index, len: 0 }),
                    None => Plan {
                        steps,
                        reply: Reply::HashesOf(indices),
                    },
                }
            }
            ToReplica::Resync { chunks, .. } => self.resync(steps, chunks),
        }
    }

    fn hello(&mut self, steps: Vec<Step>, primary: u64, size: u64, chunk: u32) -> Plan {
        if size != self.meta.size || chunk != self.meta.chunk {
            let reason = Refusal::Geometry {
                size,
                chunk,
                have_size: self.meta.size,
                have_chunk: self.meta.chunk,
            };
            return self.refuse(steps, reason);
        }
        let next_lsn = self
            .session
            .filter(|s| s.primary == primary && s.epoch == self.meta.epoch)
            .map(|s| s.next_lsn);
        self.ready(
            steps,
            FromReplica::Welcome {
                epoch: self.meta.epoch,
                next_lsn,
            },
        )
    }

    fn writes(&mut self, mut steps: Vec<Step>, first_lsn: Lsn, ops: Vec<Op>) -> Plan {
        let Some(session) = self.session.as_mut() else {
            let reason = Refusal::Gap {
                expected: None,
                got: first_lsn,
            };
            return self.refuse(steps, reason);
        };
        let expected = session.next_lsn;
        if first_lsn > expected {
            let reason = Refusal::Gap {
                expected: Some(expected),
                got: first_lsn,
            };
            return self.refuse(steps, reason);
        }
        // Ops already applied (a resend after a lost ack) are skipped, never applied twice.
        let skip = (expected - first_lsn) as usize;
        let fresh: Vec<Op> = ops.into_iter().skip(skip).collect();
        if fresh.is_empty() {
            return self.ready(steps, FromReplica::Ack { lsn: expected - 1 });
        }
        for op in &fresh {
            if check_range(op.offset(), op.len(), self.meta.size).is_err() {
                let reason = Refusal::OutOfRange {
                    offset: op.offset(),
                    len: op.len(),
                    size: self.meta.size,
                };
                return self.refuse(steps, reason);
            }
        }
        let last = expected + fresh.len() as u64 - 1;
        debug_assert!(last >= expected, "a replica never applies out of order");
        session.next_lsn = last + 1;
        steps.push(Step::Apply(fresh));
        steps.push(Step::Sync);
        self.ready(steps, FromReplica::Ack { lsn: last })
    }

    fn resync(&mut self, mut steps: Vec<Step>, chunks: Vec<(u64, Vec<u8>)>) -> Plan {
        let n = chunk_count(self.meta.size, self.meta.chunk);
        for (index, data) in &chunks {
            let (_, len) = chunk_span(*index, self.meta.size, self.meta.chunk);
            if *index >= n || data.len() as u64 != len {
                let reason = Refusal::BadChunk {
                    index: *index,
                    len: data.len() as u64,
                };
                return self.refuse(steps, reason);
            }
        }
        let count = chunks.len() as u64;
        steps.push(Step::Store(chunks));
        steps.push(Step::Sync);
        self.ready(steps, FromReplica::Stored { chunks: count })
    }

    fn ready(&self, steps: Vec<Step>, reply: FromReplica) -> Plan {
        Plan {
            steps,
            reply: Reply::Ready(reply),
        }
    }

    fn refuse(&self, steps: Vec<Step>, reason: Refusal) -> Plan {
        let reply = FromReplica::Refused {
            reason,
            epoch_seen: self.meta.epoch,
        };
        self.ready(steps, reply)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn replica(epoch: u64) -> Replica {
        Replica::new(Meta {
            volume: "vol".into(),
            epoch,
            size: 1 << 20,
            chunk: 4096,
        })
    }

    fn write(first_lsn: Lsn, epoch: u64) -> ToReplica {
        ToReplica::Writes {
            volume: "vol".into(),
            epoch,
            first_lsn,
            ops: vec![Op::Write {
                offset: 0,
                data: vec![1; 8],
            }],
        }
    }

    fn start(next_lsn: Lsn, epoch: u64) -> ToReplica {
        ToReplica::StartStream {
            volume: "vol".into(),
            epoch,
            primary: 1,
            next_lsn,
        }
    }

    #[test]
    fn a_stale_epoch_is_refused_and_a_newer_one_is_persisted_first() {
        let mut r = replica(5);
        let plan = r.handle(write(1, 4));
        assert!(plan.steps.is_empty(), "nothing applied: {:?}", plan.steps);
        assert_eq!(
            plan.reply,
            Reply::Ready(FromReplica::Refused {
                reason: Refusal::StaleEpoch { got: 4 },
                epoch_seen: 5
            })
        );
        let plan = r.handle(start(1, 6));
        assert_eq!(
            plan.steps[0],
            Step::PersistMeta(Meta {
                epoch: 6,
                ..r.meta().clone()
            })
        );
        let plan = r.handle(write(1, 5));
        assert!(matches!(
            plan.reply,
            Reply::Ready(FromReplica::Refused { epoch_seen: 6, .. })
        ));
    }

    #[test]
    fn a_gap_in_lsns_is_refused_and_a_repeat_is_acked_without_applying() {
        let mut r = replica(1);
        assert!(matches!(
            r.handle(write(1, 1)).reply,
            Reply::Ready(FromReplica::Refused {
                reason: Refusal::Gap {
                    expected: None,
                    got: 1
                },
                ..
            })
        ));
        r.handle(start(1, 1));
        let plan = r.handle(write(3, 1));
        assert!(plan.steps.is_empty());
        assert!(matches!(
            plan.reply,
            Reply::Ready(FromReplica::Refused {
                reason: Refusal::Gap {
                    expected: Some(1),
                    got: 3
                },
                ..
            })
        ));
        let plan = r.handle(write(1, 1));
        assert_eq!(plan.steps.last(), Some(&Step::Sync), "ack only after fsync");
        assert_eq!(plan.reply, Reply::Ready(FromReplica::Ack { lsn: 1 }));
        let again = r.handle(write(1, 1));
        assert!(again.steps.is_empty(), "never applied twice");
        assert_eq!(again.reply, Reply::Ready(FromReplica::Ack { lsn: 1 }));
    }

    #[test]
    fn writes_outside_the_volume_and_bad_chunks_are_refused() {
        let mut r = replica(1);
        r.handle(start(1, 1));
        let msg = ToReplica::Writes {
            volume: "vol".into(),
            epoch: 1,
            first_lsn: 1,
            ops: vec![Op::Zeroes {
                offset: u64::MAX - 1,
                len: 4,
            }],
        };
        assert!(matches!(
            r.handle(msg).reply,
            Reply::Ready(FromReplica::Refused {
                reason: Refusal::OutOfRange { .. },
                ..
            })
        ));
        let msg = ToReplica::Resync {
            volume: "vol".into(),
            epoch: 1,
            chunks: vec![(256, vec![0; 4096])],
        };
        assert!(matches!(
            r.handle(msg).reply,
            Reply::Ready(FromReplica::Refused {
                reason: Refusal::BadChunk { index: 256, .. },
                ..
            })
        ));
        let msg = ToReplica::Resync {
            volume: "other".into(),
            epoch: 1,
            chunks: vec![],
        };
        assert!(matches!(
            r.handle(msg).reply,
            Reply::Ready(FromReplica::Refused {
                reason: Refusal::WrongVolume { .. },
                ..
            })
        ));
    }
}
