//! Tests of the primary's state machine against the replica's, with images in memory and time
//! simulated: no tokio, no files, no sleeps.

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use super::ReplConfig;
use super::chunks::chunk_span;
use super::primary::{Action, History, Mode, Primary, ReplicaSpec, ReplicaState};
use super::proto::{FromReplica, Lsn, Op, ToReplica};
use super::replica::{Meta, Replica, Reply, Step};

const CHUNK: u32 = 4096;
const SIZE: u64 = 64 * 4096;

struct Copy {
    core: Replica,
    image: Vec<u8>,
    up: bool,
}

/// A primary and its replicas; requests are queued and delivered on demand.
struct Sim {
    p: Primary,
    local: Vec<u8>,
    copies: HashMap<String, Copy>,
    now: Instant,
    held: VecDeque<(String, u64, ToReplica)>,
    local_io: VecDeque<Action>,
    completed: Vec<Lsn>,
    outdates: Vec<String>,
    events: Vec<Action>,
    shipped_chunks: Vec<u64>,
}

fn cfg() -> ReplConfig {
    ReplConfig {
        chunk: CHUNK,
        journal_limit: 64 * 1024,
        ack_timeout: Duration::from_secs(5),
        ..ReplConfig::default()
    }
}

fn spec(name: &str, mode: Mode, history: History) -> ReplicaSpec {
    ReplicaSpec {
        name: name.into(),
        mode,
        history,
        outdated: false,
    }
}

impl Sim {
    fn new(specs: Vec<ReplicaSpec>) -> Self {
        let now = Instant::now();
        let copies = specs
            .iter()
            .map(|s| {
                let meta = Meta {
                    volume: "vol".into(),
                    epoch: 1,
                    size: SIZE,
                    chunk: CHUNK,
                };
                let copy = Copy {
                    core: Replica::new(meta),
                    image: vec![0; SIZE as usize],
                    up: true,
                };
                (s.name.clone(), copy)
            })
            .collect();
        let p = Primary::new("vol", 1, 42, SIZE, cfg(), specs, now).expect("primary");
        Self {
            p,
            local: vec![0; SIZE as usize],
            copies,
            now,
            held: VecDeque::new(),
            local_io: VecDeque::new(),
            completed: Vec::new(),
            outdates: Vec::new(),
            events: Vec::new(),
            shipped_chunks: Vec::new(),
        }
    }

    fn take(&mut self, actions: Vec<Action>) {
        for a in actions {
            match a {
                Action::Send {
                    replica,
                    ticket,
                    msg,
                } => self.held.push_back((replica, ticket, msg)),
                a @ (Action::ReadChunks { .. } | Action::HashChunks { .. }) => {
                    self.local_io.push_back(a)
                }
                Action::Complete(lsn) => self.completed.push(lsn),
                Action::Outdate(r) => self.outdates.push(r),
                other => self.events.push(other),
            }
        }
    }

    /// Delivers queued requests and local I/O until nothing is left.
    fn settle(&mut self) {
        for _ in 0..100_000 {
            if let Some(a) = self.local_io.pop_front() {
                self.do_local(a);
            } else if !self.deliver_one() {
                return;
            }
        }
        panic!("did not settle");
    }

    fn do_local(&mut self, a: Action) {
        let acts = match a {
            Action::ReadChunks {
                replica,
                ticket,
                chunks,
            } => {
                let data = chunks
                    .iter()
                    .map(|&i| (i, self.chunk(&self.local, i)))
                    .collect();
                self.p.handle_chunks(&replica, ticket, data)
            }
            Action::HashChunks {
                replica,
                ticket,
                chunks,
            } => {
                let h = chunks
                    .iter()
                    .map(|&i| *blake3::hash(&self.chunk(&self.local, i)).as_bytes())
                    .collect();
                self.p.handle_hashes(&replica, ticket, h)
            }
            _ => Vec::new(),
        };
        self.take(acts);
    }

    fn chunk(&self, image: &[u8], i: u64) -> Vec<u8> {
        let (o, l) = chunk_span(i, SIZE, CHUNK);
        image[o as usize..(o + l) as usize].to_vec()
    }

    fn deliver_one(&mut self) -> bool {
        let Some((name, ticket, msg)) = self.held.pop_front() else {
            return false;
        };
        let acts = match self.call(&name, msg) {
            Some(reply) => self.p.handle_reply(&name, ticket, reply, self.now),
            None => self.p.link_down(&name, self.now),
        };
        self.take(acts);
        true
    }

    /// The replica side: run the plan on the in-memory image.
    fn call(&mut self, name: &str, msg: ToReplica) -> Option<FromReplica> {
        if let ToReplica::Resync { chunks, .. } = &msg {
            self.shipped_chunks.extend(chunks.iter().map(|c| c.0));
        }
        let copy = self.copies.get_mut(name)?;
        if !copy.up {
            return None;
        }
        let plan = copy.core.handle(msg);
        for step in plan.steps {
            apply_step(&mut copy.image, step);
        }
        Some(match plan.reply {
            Reply::Ready(r) => r,
            Reply::HashesOf(ix) => FromReplica::Hashes {
                hashes: ix
                    .iter()
                    .map(|&i| {
                        let (o, l) = chunk_span(i, SIZE, CHUNK);
                        *blake3::hash(&copy.image[o as usize..(o + l) as usize]).as_bytes()
                    })
                    .collect(),
            },
        })
    }

    fn write(&mut self, offset: u64, byte: u8, len: usize) -> Lsn {
        let (lsn, acts) = self.p.submit(
            Op::Write {
                offset,
                data: vec![byte; len],
            },
            self.now,
        );
        self.local[offset as usize..offset as usize + len].fill(byte);
        self.take(acts);
        let acts = self.p.local_done(lsn);
        self.take(acts);
        lsn
    }

    fn up(&mut self, name: &str) {
        if let Some(c) = self.copies.get_mut(name) {
            c.up = true;
        }
        let acts = self.p.link_up(name);
        self.take(acts);
    }

    fn down(&mut self, name: &str) {
        if let Some(c) = self.copies.get_mut(name) {
            c.up = false;
        }
        let acts = self.p.link_down(name, self.now);
        self.take(acts);
    }

    fn state(&self, name: &str) -> ReplicaState {
        let all = self.p.status(self.now);
        all.into_iter()
            .find(|s| s.name == name)
            .expect("replica")
            .state
    }

    fn image(&self, name: &str) -> &[u8] {
        &self.copies[name].image
    }
}

fn apply_step(image: &mut [u8], step: Step) {
    match step {
        Step::Apply(ops) => {
            for op in ops {
                match op {
                    Op::Write { offset, data } => {
                        image[offset as usize..offset as usize + data.len()].copy_from_slice(&data)
                    }
                    Op::Zeroes { offset, len } => {
                        image[offset as usize..(offset + len) as usize].fill(0)
                    }
                }
            }
        }
        Step::Store(chunks) => {
            for (i, data) in chunks {
                let (o, _) = chunk_span(i, SIZE, CHUNK);
                image[o as usize..o as usize + data.len()].copy_from_slice(&data);
            }
        }
        Step::PersistMeta(_) | Step::Sync => {}
    }
}

fn connected(specs: Vec<ReplicaSpec>) -> Sim {
    let names: Vec<String> = specs.iter().map(|s| s.name.clone()).collect();
    let mut sim = Sim::new(specs);
    for n in &names {
        sim.up(n);
    }
    sim.settle();
    for n in &names {
        assert_eq!(sim.state(n), ReplicaState::InSync, "{n} after connecting");
    }
    sim
}

#[test]
fn a_sync_write_completes_only_after_the_replica_acked_it() {
    let mut sim = connected(vec![spec("b", Mode::Sync, History::InSync)]);
    let lsn = sim.write(0, 7, 512);
    assert!(sim.completed.is_empty(), "local done is not enough");
    assert_eq!(sim.held.len(), 1, "the write is on its way");
    sim.deliver_one();
    assert_eq!(sim.completed, vec![lsn]);
    assert_eq!(&sim.image("b")[..512], &[7; 512][..]);
}

#[test]
fn an_async_write_completes_after_the_local_write_alone() {
    let mut sim = connected(vec![spec("c", Mode::Async, History::InSync)]);
    let lsn = sim.write(0, 7, 512);
    assert_eq!(sim.completed, vec![lsn]);
    assert!(matches!(
        sim.state("c"),
        ReplicaState::Lagging { writes: 1, .. }
    ));
    sim.settle();
    assert_eq!(sim.state("c"), ReplicaState::InSync);
}

#[test]
fn a_lost_sync_replica_blocks_completion_until_it_is_recorded_outdated() {
    let mut sim = connected(vec![spec("b", Mode::Sync, History::InSync)]);
    let lsn = sim.write(4096, 1, 4096);
    sim.down("b");
    assert_eq!(sim.outdates, vec!["b".to_string()]);
    sim.now += Duration::from_secs(60);
    let acts = sim.p.poll(sim.now);
    sim.take(acts);
    assert!(sim.completed.is_empty(), "must not complete silently");
    assert_eq!(sim.outdates.len(), 1, "outdate asked once");
    let acts = sim.p.outdated("b");
    sim.take(acts);
    assert_eq!(sim.completed, vec![lsn]);
    assert_eq!(sim.state("b"), ReplicaState::Outdated);

    // While outdated, writes complete without it; back, it resyncs and holds writes again.
    let lsn2 = sim.write(8192, 2, 4096);
    assert!(sim.completed.contains(&lsn2));
    sim.held.clear();
    sim.up("b");
    sim.settle();
    assert!(
        sim.events.contains(&Action::InSync("b".into())),
        "{:?}",
        sim.events
    );
    assert_eq!(sim.image("b"), &sim.local[..]);
    let lsn3 = sim.write(0, 3, 512);
    assert!(
        !sim.completed.contains(&lsn3),
        "an in-sync sync replica holds writes again"
    );
    sim.settle();
    assert!(sim.completed.contains(&lsn3));
}

#[test]
fn a_sync_replica_that_does_not_ack_within_the_timeout_is_outdated() {
    let mut sim = connected(vec![spec("b", Mode::Sync, History::InSync)]);
    let lsn = sim.write(0, 1, 512);
    sim.now += Duration::from_secs(4);
    let acts = sim.p.poll(sim.now);
    sim.take(acts);
    assert!(sim.outdates.is_empty(), "not before the timeout");
    sim.now += Duration::from_secs(2);
    let acts = sim.p.poll(sim.now);
    sim.take(acts);
    assert_eq!(sim.outdates, vec!["b".to_string()]);
    assert!(sim.completed.is_empty());
    let acts = sim.p.outdated("b");
    sim.take(acts);
    assert_eq!(sim.completed, vec![lsn]);
    // The slow replica still gets the write and, caught up, is in sync again.
    sim.settle();
    assert!(sim.events.contains(&Action::InSync("b".into())));
}

#[test]
fn async_journal_overflow_falls_back_to_dirty_chunks_with_bounded_memory() {
    let mut sim = connected(vec![spec("c", Mode::Async, History::InSync)]);
    sim.down("c");
    for i in 0..1000u64 {
        sim.write((i % 64) * 4096, (i % 251) as u8, 4096);
    }
    let (journal, dirty_mem) = sim.p.memory_of("c").expect("replica");
    assert!(journal <= cfg().journal_limit, "journal {journal} bytes");
    assert!(
        dirty_mem <= 64 / 8 + 8,
        "dirty set of {dirty_mem} bytes for 64 chunks"
    );
    assert!(
        matches!(sim.state("c"), ReplicaState::Disconnected { dirty_bytes, .. } if dirty_bytes > 0)
    );
    sim.up("c");
    sim.settle();
    assert_eq!(sim.state("c"), ReplicaState::InSync);
    assert_eq!(sim.image("c"), &sim.local[..]);
}

#[test]
fn a_short_outage_replays_the_journal_without_a_resync() {
    let mut sim = connected(vec![spec("c", Mode::Async, History::InSync)]);
    sim.down("c");
    sim.write(0, 9, 512);
    sim.up("c");
    sim.settle();
    assert!(sim.shipped_chunks.is_empty(), "journal replay, no chunks");
    assert_eq!(sim.image("c"), &sim.local[..]);
}

#[test]
fn resync_ships_only_the_chunks_that_differ() {
    let mut sim = connected(vec![spec("c", Mode::Async, History::InSync)]);
    sim.down("c");
    // Overflow the journal so the outage is tracked as dirty chunks.
    for _ in 0..20 {
        sim.write(3 * 4096, 3, 4096);
    }
    sim.write(10 * 4096, 0, 4096); // dirty, but the replica already holds zeroes there
    sim.up("c");
    sim.settle();
    assert_eq!(sim.shipped_chunks, vec![3]);
    assert_eq!(sim.image("c"), &sim.local[..]);
    let reports: Vec<_> = sim
        .events
        .iter()
        .filter(|e| matches!(e, Action::ResyncDone(_)))
        .collect();
    assert_eq!(reports.len(), 1);
}

#[test]
fn a_returning_copy_of_unknown_history_reports_divergent_chunks() {
    let mut sim = Sim::new(vec![spec("a", Mode::Async, History::Unknown)]);
    // The old primary wrote chunk 20 that this primary never saw.
    sim.copies.get_mut("a").expect("a").image[20 * 4096] = 0xee;
    sim.write(5 * 4096, 5, 100);
    sim.up("a");
    sim.settle();
    assert_eq!(sim.image("a"), &sim.local[..]);
    let report = sim
        .events
        .iter()
        .find_map(|e| match e {
            Action::ResyncDone(r) => Some(r.clone()),
            _ => None,
        })
        .expect("a report");
    assert_eq!(report.divergent, vec![(20 * 4096, 4096)]);
    assert_eq!(report.written_while_away, vec![(5 * 4096, 4096)]);
    let mut shipped = sim.shipped_chunks.clone();
    shipped.sort_unstable();
    assert_eq!(shipped, vec![5, 20]);
}

#[test]
fn writes_during_a_resync_are_shipped_again_before_streaming() {
    let mut sim = Sim::new(vec![spec("c", Mode::Async, History::New)]);
    sim.write(0, 1, 4096);
    sim.up("c");
    // Step through the handshake and the first hash exchange, then write into a chunk.
    for _ in 0..2 {
        if let Some(a) = sim.local_io.pop_front() {
            sim.do_local(a);
        }
        sim.deliver_one();
    }
    assert!(matches!(sim.state("c"), ReplicaState::Resyncing { .. }));
    sim.write(30 * 4096, 4, 4096);
    sim.settle();
    assert_eq!(sim.state("c"), ReplicaState::InSync);
    assert_eq!(sim.image("c"), &sim.local[..]);
}

#[test]
fn a_replica_that_saw_a_newer_epoch_deposes_the_primary() {
    let mut sim = Sim::new(vec![spec("b", Mode::Sync, History::InSync)]);
    let plan = sim
        .copies
        .get_mut("b")
        .expect("b")
        .core
        .handle(ToReplica::Hello {
            volume: "vol".into(),
            epoch: 2,
            primary: 7,
            size: SIZE,
            chunk: CHUNK,
        });
    assert!(matches!(
        plan.steps[0],
        Step::PersistMeta(Meta { epoch: 2, .. })
    ));
    sim.up("b");
    sim.settle();
    assert!(
        sim.events.contains(&Action::Deposed {
            replica: "b".into(),
            epoch_seen: 2
        }),
        "{:?}",
        sim.events
    );
}

#[test]
fn a_restarted_replica_refuses_the_gap_and_is_resynced() {
    let mut sim = connected(vec![spec("c", Mode::Async, History::InSync)]);
    sim.write(0, 1, 4096);
    sim.settle();
    // The replica process restarts: its stream position is gone.
    let meta = sim.copies["c"].core.meta().clone();
    sim.copies.get_mut("c").expect("c").core = Replica::new(meta);
    sim.write(4096, 2, 4096);
    sim.settle();
    assert!(
        sim.events.iter().any(
            |e| matches!(e, Action::Failed { reason, .. } if reason.contains("expected None"))
        ),
        "{:?}",
        sim.events
    );
    assert!(matches!(sim.state("c"), ReplicaState::Disconnected { .. }));
    sim.up("c");
    sim.settle();
    assert_eq!(sim.state("c"), ReplicaState::InSync);
    assert_eq!(sim.image("c"), &sim.local[..]);
    assert_eq!(sim.shipped_chunks, vec![1], "only the chunk written since");
}

#[test]
fn a_write_larger_than_a_message_is_split_and_completes_once() {
    let mut sim = Sim::new(vec![spec("b", Mode::Sync, History::InSync)]);
    sim.p = Primary::new(
        "vol",
        1,
        42,
        SIZE,
        ReplConfig {
            max_message: 16 * 1024,
            ..cfg()
        },
        vec![spec("b", Mode::Sync, History::InSync)],
        sim.now,
    )
    .expect("primary");
    sim.up("b");
    sim.settle();
    let lsn = sim.write(1000, 9, 40_000);
    assert!(lsn >= 3, "split into pieces, last LSN {lsn}");
    sim.settle();
    assert_eq!(sim.completed, vec![lsn]);
    assert_eq!(sim.image("b"), &sim.local[..]);
}

#[test]
fn a_lost_reply_is_not_applied_twice_and_the_stream_resumes() {
    let mut sim = connected(vec![spec("c", Mode::Async, History::InSync)]);
    sim.write(0, 1, 512);
    // The replica applies the write, but its ack is lost with the link.
    let (name, _, msg) = sim.held.pop_front().expect("write in flight");
    assert!(sim.call(&name, msg).is_some());
    sim.down("c");
    sim.write(512, 2, 512);
    sim.up("c");
    sim.settle();
    assert!(
        sim.shipped_chunks.is_empty(),
        "resumed from the replica's position"
    );
    assert_eq!(sim.image("c"), &sim.local[..]);
    assert_eq!(sim.state("c"), ReplicaState::InSync);
}

#[test]
fn an_outdated_sync_replica_rejoins_under_steady_writes_and_only_then_holds_them() {
    let mut sim = connected(vec![spec("b", Mode::Sync, History::InSync)]);
    sim.down("b");
    let acts = sim.p.outdated("b");
    sim.take(acts);
    for i in 0..5 {
        sim.write(i * 4096, 1, 4096);
    }
    sim.up("b");
    // Steady load: a new write lands before every reply, so the journal is never empty.
    let mut rejoined_at = None;
    for i in 0..40u64 {
        let lsn = sim.write((i % 64) * 4096, i as u8, 512);
        if rejoined_at.is_none() && !sim.completed.contains(&lsn) {
            rejoined_at = Some(lsn);
        }
        if let Some(a) = sim.local_io.pop_front() {
            sim.do_local(a);
        }
        sim.deliver_one();
    }
    let first_held = rejoined_at.expect("writes wait for the replica again");
    assert!(
        sim.events.contains(&Action::InSync("b".into())),
        "{:?}",
        sim.events
    );
    sim.settle();
    assert!(sim.completed.contains(&first_held));
    assert_eq!(sim.image("b"), &sim.local[..]);
}

#[test]
fn a_rejoining_replica_lost_again_releases_writes_without_a_new_outdate() {
    let mut sim = connected(vec![spec("b", Mode::Sync, History::InSync)]);
    sim.down("b");
    let acts = sim.p.outdated("b");
    sim.take(acts);
    sim.write(0, 1, 4096);
    sim.up("b");
    let mut held = None;
    for i in 0..40u64 {
        let lsn = sim.write((i % 64) * 4096, i as u8, 512);
        if !sim.completed.contains(&lsn) {
            held = Some(lsn);
            break;
        }
        if let Some(a) = sim.local_io.pop_front() {
            sim.do_local(a);
        }
        sim.deliver_one();
    }
    let held = held.expect("held by the rejoining replica");
    assert!(
        !sim.events.contains(&Action::InSync("b".into())),
        "not in sync yet"
    );
    sim.down("b");
    assert!(
        sim.completed.contains(&held),
        "released: the fabric still records it outdated"
    );
    assert_eq!(sim.outdates, vec!["b".to_string()], "no second outdate");
}
