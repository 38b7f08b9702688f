//! State dissemination without Raft membership: a relay's [`Feed`] of the entries its state
//! machine applied, and a [`Follower`] that applies them (or a whole applied state) elsewhere.
//!
//! A Raft member keeps the last [`RING`] entries it applied, in log order, with a watch of its
//! applied index. A host that is not a Raft member asks a member (its relay) for the entries
//! from the first index it lacks ([`Follower::next_index`], [`Feed::since`]); when that index is
//! older than the ring it gets the relay's whole applied state instead ([`Catchup::Snapshot`]).
//! The leader's fan-out then grows with the members, not with the hosts. (Indexes count from 0:
//! openraft's first entry, the initial membership, has index 0.)
//!
//! Invariants:
//! - the ring holds the applied entries `[start, start + len)` without a gap: an install (Raft
//!   snapshot) empties it and moves `start` past the installed index;
//! - a follower applies entries with the state machine's own per-entry code
//!   ([`MachineState::apply_entry`]), strictly in log order (a gap is an error, an entry it
//!   already has is skipped), so a follower fed every entry is byte-identical to its relay at the
//!   same index; its applied index only moves forward (an older snapshot is ignored).
//!
//! It does not move bytes (the agent carries [`Catchup`]s over its control channel) and gives
//! no freshness guarantee: a follower shows a committed prefix of the log; linearizable reads
//! still take a read index from the leader and wait for [`Follower::applied_index`] to reach it.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use crate::store::{MachineState, StateHandle};
use crate::types::Entry;

/// How many applied entries a relay keeps for its followers.
pub const RING: usize = 4096;

/// At most this many entries go in one [`Catchup::Entries`].
pub const MAX_BATCH: usize = 256;

/// What a relay sends a follower that applied up to some index.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Catchup {
    /// The entries from the follower's next index on, in log order; empty when there are none
    /// yet.
    Entries(Vec<Entry>),
    /// The relay's whole applied state (a postcard-encoded [`MachineState`], as Raft snapshots
    /// carry it): the follower's index is older than the relay's ring.
    Snapshot(Vec<u8>),
}

impl Catchup {
    /// True when it carries nothing to apply.
    pub fn is_empty(&self) -> bool {
        matches!(self, Catchup::Entries(e) if e.is_empty())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum FeedError {
    #[error("cannot encode the applied state at index {index}: {source}")]
    Encode {
        index: u64,
        #[source]
        source: postcard::Error,
    },
}

#[derive(Debug, thiserror::Error)]
pub enum FollowError {
    #[error("the next entry must have index {expected} but the batch goes on at {got}")]
    Gap { expected: u64, got: u64 },
    #[error("the relay's snapshot does not decode: {0}")]
    BadSnapshot(#[source] postcard::Error),
}

/// The applied entries `[start, start + entries.len())`.
struct Ring {
    start: u64,
    entries: VecDeque<Entry>,
    capacity: usize,
}

impl Ring {
    /// The index of the next entry to be applied.
    fn end(&self) -> u64 {
        self.start + self.entries.len() as u64
    }
}

/// The index after `applied` (0 before any entry).
fn next_after(applied: Option<crate::types::LogId>) -> u64 {
    applied.map_or(0, |l| l.index + 1)
}

/// A Raft member's recent applied entries and applied index, for the hosts that follow it.
pub struct Feed {
    ring: Mutex<Ring>,
    applied: watch::Sender<u64>,
    state: StateHandle,
}

impl Feed {
    /// A feed over the applied state `state`, keeping up to `capacity` entries. It starts empty
    /// after the state's index: an older follower gets a snapshot.
    pub(crate) fn new(state: StateHandle, capacity: usize) -> Self {
        Self {
            ring: Mutex::new(Ring {
                start: next_after(state.last_applied()),
                entries: VecDeque::new(),
                capacity: capacity.max(1),
            }),
            applied: watch::Sender::new(state.applied_index()),
            state,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Ring> {
        // Every change below leaves the ring whole before it can panic.
        self.ring.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The state machine applied `entries` (in log order, after everything before).
    pub(crate) fn applied(&self, entries: Vec<Entry>) {
        let Some(last) = entries.last().map(|e| e.log_id.index) else {
            return;
        };
        let mut ring = self.lock();
        for entry in entries {
            if entry.log_id.index != ring.end() {
                // Raft applies in order from what the store held; a store handed a log that
                // does not start at 0 (tests) restarts the ring rather than serve a gap.
                tracing::debug!("feed restarts at {}: {} was next", entry.log_id, ring.end());
                ring.entries.clear();
                ring.start = entry.log_id.index;
            }
            ring.entries.push_back(entry);
            if ring.entries.len() > ring.capacity {
                ring.entries.pop_front();
                ring.start += 1;
            }
        }
        self.applied.send_replace(last);
    }

    /// The state machine installed a snapshot up to `index`: the entries before are gone.
    pub(crate) fn installed(&self, index: u64) {
        let mut ring = self.lock();
        ring.entries.clear();
        ring.start = index + 1;
        self.applied.send_replace(index);
    }

    /// The index this node has applied.
    pub fn applied_index(&self) -> u64 {
        *self.applied.borrow()
    }

    /// Changes whenever this node applies entries or installs a snapshot.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.applied.subscribe()
    }

    /// What a follower that lacks the entries from index `from` on needs next: up to `max`
    /// entries, the whole state when `from` is older than the ring, or nothing (an empty batch)
    /// when it is up to date or ahead of this node.
    pub fn since(&self, from: u64, max: usize) -> Result<Catchup, FeedError> {
        let ring = self.lock();
        if from >= ring.end() {
            return Ok(Catchup::Entries(Vec::new()));
        }
        if from < ring.start {
            drop(ring);
            let machine = self.state.copy();
            let bytes = postcard::to_stdvec(&machine).map_err(|source| FeedError::Encode {
                index: machine.last_applied().map_or(0, |l| l.index),
                source,
            })?;
            return Ok(Catchup::Snapshot(bytes));
        }
        let skip = usize::try_from(from - ring.start).unwrap_or(usize::MAX);
        Ok(Catchup::Entries(
            ring.entries
                .iter()
                .skip(skip)
                .take(max.max(1))
                .cloned()
                .collect(),
        ))
    }

    /// Like [`Self::since`], but when there is nothing after `from` yet, waits up to `wait` for
    /// something to be applied (a long poll); then answers, perhaps with an empty batch.
    pub async fn wait_since(
        &self,
        from: u64,
        max: usize,
        wait: Duration,
    ) -> Result<Catchup, FeedError> {
        let mut applied = self.subscribe();
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            applied.borrow_and_update();
            let batch = self.since(from, max)?;
            if !batch.is_empty() {
                return Ok(batch);
            }
            match tokio::time::timeout_at(deadline, applied.changed()).await {
                Ok(Ok(())) => continue,
                // Timed out, or the state machine is gone: nothing new to send.
                Ok(Err(_)) | Err(_) => return Ok(batch),
            }
        }
    }

    #[cfg(test)]
    pub(crate) fn set_capacity(&self, capacity: usize) {
        let mut ring = self.lock();
        ring.capacity = capacity.max(1);
        while ring.entries.len() > ring.capacity {
            ring.entries.pop_front();
            ring.start += 1;
        }
    }
}

/// A host's copy of the applied state, fed by a relay. Readers share it through
/// [`Follower::state_handle`], the same handle type a Raft member's readers use.
pub struct Follower {
    state: StateHandle,
    applied: watch::Sender<u64>,
}

impl Default for Follower {
    fn default() -> Self {
        Self::new()
    }
}

impl Follower {
    /// An empty state at index 0.
    pub fn new() -> Self {
        Self {
            state: StateHandle::new(MachineState::default()),
            applied: watch::Sender::new(0),
        }
    }

    pub fn state_handle(&self) -> StateHandle {
        self.state.clone()
    }

    /// The index of the last entry applied here (0 also before any).
    pub fn applied_index(&self) -> u64 {
        self.state.applied_index()
    }

    /// The index of the first entry this follower lacks: the `from` of its next request.
    pub fn next_index(&self) -> u64 {
        next_after(self.state.last_applied())
    }

    /// Changes whenever this follower applies something.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.applied.subscribe()
    }

    /// Applies what a relay sent; returns its next index afterwards. Entries this follower
    /// already applied are skipped; a batch that does not go on from its index is refused
    /// whole ([`FollowError::Gap`]); a snapshot older than what it applied is ignored.
    pub fn apply(&self, batch: Catchup) -> Result<u64, FollowError> {
        let next = match batch {
            Catchup::Entries(entries) => {
                let mut next = self.state.copy();
                for entry in entries {
                    let expected = next_after(next.last_applied());
                    if entry.log_id.index < expected {
                        continue;
                    }
                    if entry.log_id.index != expected {
                        return Err(FollowError::Gap {
                            expected,
                            got: entry.log_id.index,
                        });
                    }
                    // The result is the proposer's business; the state is the same either way.
                    let _ = next.apply_entry(&entry);
                }
                next
            }
            Catchup::Snapshot(bytes) => {
                postcard::from_bytes::<MachineState>(&bytes).map_err(FollowError::BadSnapshot)?
            }
        };
        if next.last_applied() <= self.state.last_applied() {
            return Ok(self.next_index());
        }
        let applied = next.last_applied().map_or(0, |l| l.index);
        self.state.replace(next);
        self.applied.send_replace(applied);
        Ok(self.next_index())
    }
}

#[cfg(test)]
mod tests {
    use openraft::storage::RaftStateMachine;
    use openraft::{EntryPayload, Membership};
    use proptest::prelude::*;

    use super::*;
    use crate::state::{Command, Proposal};
    use crate::store::{self, StateMachineStore};
    use crate::types::{FabricNode, LogId};

    /// One log slot of a generated log: what it carries, and whether its leader changed.
    #[derive(Debug, Clone)]
    enum Slot {
        Note(u8),
        Site(u8),
        /// A plan stamped with the previous term: refused by every applier alike.
        StalePlan(u8),
        Blank,
        Members(u8),
        NewTerm,
    }

    fn slot() -> impl Strategy<Value = Slot> {
        prop_oneof![
            6 => any::<u8>().prop_map(Slot::Note),
            2 => (0u8..4).prop_map(Slot::Site),
            1 => any::<u8>().prop_map(Slot::StalePlan),
            1 => Just(Slot::Blank),
            1 => (1u8..5).prop_map(Slot::Members),
            1 => Just(Slot::NewTerm),
        ]
    }

    /// Turns slots into log entries with consecutive indexes from 0, as openraft numbers them.
    fn log(slots: &[Slot]) -> Vec<Entry> {
        let mut term = 1;
        let mut out = Vec::new();
        for s in slots {
            let payload = match s {
                Slot::NewTerm => {
                    term += 1;
                    EntryPayload::Blank
                }
                Slot::Blank => EntryPayload::Blank,
                Slot::Note(n) => EntryPayload::Normal(Proposal::new(
                    1,
                    "test",
                    Command::RecordEvent {
                        message: format!("note {n}"),
                    },
                )),
                Slot::Site(n) => EntryPayload::Normal(Proposal::new(
                    1,
                    "test",
                    Command::UpsertSite {
                        name: format!("s{n}"),
                        priority: u32::from(*n),
                    },
                )),
                Slot::StalePlan(n) => {
                    let mut p = Proposal::new(
                        1,
                        "planner",
                        Command::RecordEvent {
                            message: format!("plan {n}"),
                        },
                    );
                    p.term = Some(term - 1);
                    EntryPayload::Normal(p)
                }
                Slot::Members(n) => {
                    let nodes = (1..=u64::from(*n))
                        .map(|id| {
                            let node = FabricNode {
                                addr: format!("127.0.0.1:{id}"),
                                admin_addr: String::new(),
                                site: format!("s{id}"),
                            };
                            (id, node)
                        })
                        .collect::<std::collections::BTreeMap<_, _>>();
                    let voters = nodes.keys().copied().take(3).collect();
                    EntryPayload::Membership(Membership::new(vec![voters], nodes))
                }
            };
            let index = out.len() as u64;
            out.push(Entry {
                log_id: LogId::new(openraft::CommittedLeaderId::new(term, 1), index),
                payload,
            });
        }
        out
    }

    struct Voter {
        _dir: tempfile::TempDir,
        _log: store::LogStore,
        sm: StateMachineStore,
    }

    fn voter() -> Voter {
        let dir = tempfile::tempdir().expect("tmp");
        let (log, sm) = store::open(&dir.path().join("raft.redb")).expect("open");
        Voter {
            _dir: dir,
            _log: log,
            sm,
        }
    }

    /// Applies `entries` to the voter's state machine in batches of `batch`.
    async fn apply_all(v: &mut Voter, entries: &[Entry], batch: usize) {
        for chunk in entries.chunks(batch.max(1)) {
            v.sm.apply(chunk.to_vec()).await.expect("apply");
        }
    }

    /// Feeds `follower` from `feed` until it has nothing more to get; returns the batches.
    fn catch_up(follower: &Follower, feed: &Feed, max: usize) -> Vec<Catchup> {
        let mut got = Vec::new();
        loop {
            let batch = feed.since(follower.next_index(), max).expect("since");
            if batch.is_empty() {
                return got;
            }
            follower.apply(batch.clone()).expect("apply");
            got.push(batch);
        }
    }

    fn bytes(h: &StateHandle) -> Vec<u8> {
        postcard::to_stdvec(&h.copy()).expect("encode")
    }

    fn rt() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime")
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(24))]

        /// Whatever the log, batch sizes and the point where the follower stops and resumes
        /// (possibly at another relay), it ends byte-identical to the voters.
        #[test]
        fn a_follower_fed_the_feed_ends_byte_identical_to_its_relay(
            slots in proptest::collection::vec(slot(), 1..80),
            apply_batch in 1usize..7,
            fetch_max in 1usize..9,
            pause_at in 0usize..80,
        ) {
            rt().block_on(async {
                let entries = log(&slots);
                let pause_at = pause_at.min(entries.len());
                let (mut a, mut b) = (voter(), voter());
                apply_all(&mut a, &entries[..pause_at], apply_batch).await;
                apply_all(&mut b, &entries, apply_batch + 1).await;
                let follower = Follower::new();
                catch_up(&follower, &a.sm.feed(), fetch_max);
                prop_assert_eq!(follower.next_index(), pause_at as u64);
                // Resume from the middle at the other relay.
                catch_up(&follower, &b.sm.feed(), fetch_max);
                apply_all(&mut a, &entries[pause_at..], apply_batch).await;
                let sm_state = a.sm.state_handle();
                prop_assert_eq!(bytes(&follower.state_handle()), bytes(&sm_state));
                prop_assert_eq!(bytes(&follower.state_handle()), bytes(&b.sm.state_handle()));
                Ok(())
            })?;
        }

        /// A follower older than the ring gets the whole state, then entries, and still ends
        /// byte-identical (also when it had some entries already).
        #[test]
        fn a_follower_behind_the_ring_installs_a_snapshot_and_ends_identical(
            slots in proptest::collection::vec(slot(), 10..60),
            ring in 1usize..6,
            had in 0usize..5,
        ) {
            rt().block_on(async {
                let entries = log(&slots);
                let mut v = voter();
                let feed = v.sm.feed();
                feed.set_capacity(ring);
                let follower = Follower::new();
                apply_all(&mut v, &entries[..had], 1).await;
                catch_up(&follower, &feed, 3);
                apply_all(&mut v, &entries[had..], 2).await;
                let batches = catch_up(&follower, &feed, 3);
                let snapshot = batches.iter().any(|b| matches!(b, Catchup::Snapshot(_)));
                prop_assert!(
                    snapshot == (entries.len() - had > ring),
                    "a snapshot exactly when the follower fell out of the ring"
                );
                prop_assert_eq!(bytes(&follower.state_handle()), bytes(&v.sm.state_handle()));
                Ok(())
            })?;
        }
    }

    #[test]
    fn a_batch_with_a_gap_is_refused_whole() {
        let entries = log(&[Slot::Note(1), Slot::Note(2), Slot::Note(3)]);
        let follower = Follower::new();
        follower
            .apply(Catchup::Entries(entries[..1].to_vec()))
            .expect("first");
        let err = follower
            .apply(Catchup::Entries(entries[2..].to_vec()))
            .expect_err("gap");
        assert!(
            matches!(
                err,
                FollowError::Gap {
                    expected: 1,
                    got: 2
                }
            ),
            "{err}"
        );
        assert_eq!(follower.next_index(), 1);
        // Overlap is fine: already-applied entries are skipped.
        assert_eq!(
            follower
                .apply(Catchup::Entries(entries.clone()))
                .expect("overlap"),
            3
        );
        assert_eq!(follower.state_handle().read(|s| s.events.len()), 3);
    }

    #[test]
    fn an_older_snapshot_does_not_move_a_follower_back() {
        let entries = log(&[Slot::Note(1), Slot::Note(2)]);
        let old = Follower::new();
        old.apply(Catchup::Entries(entries[..1].to_vec()))
            .expect("one");
        let snapshot = postcard::to_stdvec(&old.state_handle().copy()).expect("encode");
        let follower = Follower::new();
        follower
            .apply(Catchup::Entries(entries.clone()))
            .expect("two");
        assert_eq!(follower.apply(Catchup::Snapshot(snapshot)).expect("old"), 2);
        assert_eq!(follower.state_handle().read(|s| s.events.len()), 2);
        assert!(matches!(
            follower.apply(Catchup::Snapshot(vec![0xff; 3])),
            Err(FollowError::BadSnapshot(_))
        ));
    }

    #[tokio::test(start_paused = true)]
    async fn a_long_poll_answers_as_soon_as_an_entry_is_applied_or_empty_after_the_wait() {
        let mut v = voter();
        let feed = v.sm.feed();
        let empty = feed
            .wait_since(0, MAX_BATCH, Duration::from_secs(5))
            .await
            .expect("poll");
        assert!(empty.is_empty());
        let waiting = {
            let feed = feed.clone();
            tokio::spawn(async move {
                feed.wait_since(0, MAX_BATCH, Duration::from_secs(5))
                    .await
                    .expect("poll")
            })
        };
        tokio::task::yield_now().await;
        v.sm.apply(log(&[Slot::Note(7)])).await.expect("apply");
        let got = waiting.await.expect("join");
        assert!(
            matches!(&got, Catchup::Entries(e) if e.len() == 1),
            "{got:?}"
        );
        assert!(
            feed.since(1, MAX_BATCH).expect("since").is_empty(),
            "only entry 0 so far"
        );
    }

    #[tokio::test]
    async fn an_installed_snapshot_restarts_the_ring_at_its_index() {
        let entries = log(&[Slot::Note(1), Slot::Note(2), Slot::Note(3)]);
        let mut src = voter();
        src.sm.apply(entries.clone()).await.expect("apply");
        let mut builder = src.sm.get_snapshot_builder().await;
        let snap = openraft::RaftSnapshotBuilder::build_snapshot(&mut builder)
            .await
            .expect("build");
        let mut dst = voter();
        dst.sm.apply(entries[..1].to_vec()).await.expect("apply");
        dst.sm
            .install_snapshot(&snap.meta, snap.snapshot)
            .await
            .expect("install");
        let feed = dst.sm.feed();
        assert_eq!(feed.applied_index(), 2);
        assert!(
            matches!(feed.since(1, 10).expect("since"), Catchup::Snapshot(_)),
            "index 1 is behind the installed snapshot"
        );
        assert!(feed.since(3, 10).expect("since").is_empty());
    }
}
