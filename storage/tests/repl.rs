//! Replication through the async shell: a `ReplicatedDisk` over real files, replica stores over
//! real files, in-memory links with partitions and delay, and real tokio time.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use proptest::prelude::*;
use storage::repl::memlink::MemLink;
use storage::repl::{
    History, Mode, Outdater, Primary, ReplConfig, ReplicaSpec, ReplicaState, ReplicaStore,
    ReplicatedDisk,
};
use storage::{BlockDevice, FileDisk};
use tokio_util::sync::CancellationToken;

const BLOCK: u64 = 4096;

#[derive(Default)]
struct Recorder {
    outdated: Mutex<Vec<String>>,
}

#[async_trait::async_trait]
impl Outdater for Recorder {
    async fn outdate(&self, _volume: &str, replica: &str, _epoch: u64) -> Result<(), String> {
        self.outdated
            .lock()
            .map_err(|e| e.to_string())?
            .push(replica.to_owned());
        Ok(())
    }
}

struct Lab {
    _dir: tempfile::TempDir,
    disk: ReplicatedDisk,
    primary_path: std::path::PathBuf,
    links: Vec<Arc<MemLink>>,
}

fn test_cfg() -> ReplConfig {
    ReplConfig {
        chunk: BLOCK as u32,
        journal_limit: 32 * 1024,
        ack_timeout: Duration::from_millis(500),
        retry: Duration::from_millis(20),
        tick: Duration::from_millis(20),
        ..ReplConfig::default()
    }
}

fn lab(size: u64, replicas: &[Mode], cfg: ReplConfig) -> Lab {
    let specs: Vec<(Mode, History)> = replicas.iter().map(|m| (*m, History::InSync)).collect();
    lab_with(size, &specs, cfg, |_| {})
}

/// A primary and replicas `site0..`; `before` may prepare files in the directory first.
fn lab_with(
    size: u64,
    replicas: &[(Mode, History)],
    cfg: ReplConfig,
    before: impl FnOnce(&std::path::Path),
) -> Lab {
    let dir = tempfile::tempdir().expect("tempdir");
    before(dir.path());
    let primary_path = dir.path().join("primary.img");
    let local = FileDisk::create(&primary_path, size).expect("primary image");
    let mut specs = Vec::new();
    let mut links: Vec<Arc<MemLink>> = Vec::new();
    let mut by_name: HashMap<String, Arc<dyn storage::repl::Link>> = HashMap::new();
    for (i, (mode, history)) in replicas.iter().enumerate() {
        let name = format!("site{i}");
        let path = dir.path().join(format!("{name}.img"));
        let store = ReplicaStore::open(&path, "vol", size, cfg.chunk).expect("replica store");
        let link = Arc::new(MemLink::new(Arc::new(store), 16 << 20));
        links.push(link.clone());
        by_name.insert(name.clone(), link);
        specs.push(ReplicaSpec {
            name,
            mode: *mode,
            history: *history,
            outdated: false,
        });
    }
    let primary = Primary::new("vol", 1, 7, size, cfg, specs, Instant::now()).expect("primary");
    let disk = ReplicatedDisk::start(
        local,
        primary,
        by_name,
        Arc::new(Recorder::default()),
        CancellationToken::new(),
    )
    .expect("start");
    Lab {
        _dir: dir,
        disk,
        primary_path,
        links,
    }
}

impl Lab {
    async fn wait_in_sync(&self, within: Duration) {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let status = self.disk.status();
            if status.iter().all(|s| s.state == ReplicaState::InSync) {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "not in sync: {status:?}"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    fn replica_file(&self, i: usize) -> Vec<u8> {
        std::fs::read(self.links[i].store().disk().path()).expect("replica image")
    }

    fn primary_file(&self) -> Vec<u8> {
        std::fs::read(&self.primary_path).expect("primary image")
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime")
}

#[derive(Debug, Clone)]
enum Step {
    Write {
        block: u64,
        blocks: u64,
        byte: u8,
    },
    Zero {
        block: u64,
        blocks: u64,
    },
    /// Concurrent writes (possibly overlapping).
    Burst(Vec<(u64, u64, u8)>),
    Cut(usize),
    Heal(usize),
    /// The replica applies the next request but its reply is lost.
    LoseReply(usize),
    /// The replica's process restarts (stream position lost, epoch kept).
    Restart(usize),
    Delay(usize, u64),
}

fn step() -> impl Strategy<Value = Step> {
    let write = (0..250u64, 1..5u64, any::<u8>());
    prop_oneof![
        6 => write.clone().prop_map(|(block, blocks, byte)| Step::Write { block, blocks, byte }),
        1 => (0..250u64, 1..9u64).prop_map(|(block, blocks)| Step::Zero { block, blocks }),
        2 => proptest::collection::vec(write, 2..6).prop_map(Step::Burst),
        1 => (0..2usize).prop_map(Step::Cut),
        1 => (0..2usize).prop_map(Step::Heal),
        1 => (0..2usize).prop_map(Step::LoseReply),
        1 => (0..2usize).prop_map(Step::Restart),
        1 => (0..2usize, 0..3000u64).prop_map(|(i, us)| Step::Delay(i, us)),
    ]
}

async fn write_blocks(lab: &Lab, block: u64, blocks: u64, byte: u8) {
    let data = vec![byte; (blocks * BLOCK) as usize];
    lab.disk
        .write(block * BLOCK, data, false)
        .await
        .expect("write");
}

async fn run_steps(lab: &Lab, steps: &[Step]) {
    for s in steps {
        match s {
            Step::Write {
                block,
                blocks,
                byte,
            } => write_blocks(lab, *block, *blocks, *byte).await,
            Step::Zero { block, blocks } => {
                let len = (blocks * BLOCK) as u32;
                lab.disk
                    .write_zeroes(block * BLOCK, len, false)
                    .await
                    .expect("zeroes");
            }
            Step::Burst(writes) => {
                let all = writes
                    .iter()
                    .map(|&(b, n, byte)| write_blocks(lab, b, n, byte));
                futures::future::join_all(all).await;
            }
            Step::Cut(i) => lab.links[*i].partition(true),
            Step::Heal(i) => lab.links[*i].partition(false),
            Step::LoseReply(i) => lab.links[*i].lose_replies(1),
            Step::Restart(i) => lab.links[*i].restart_replica().await.expect("restart"),
            Step::Delay(i, us) => lab.links[*i].set_delay(Duration::from_micros(*us)),
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 32, ..ProptestConfig::default() })]

    /// Whatever the writes and link cuts, once healed and settled every replica file is
    /// byte-identical to the primary's (one sync and one async replica).
    #[test]
    fn after_healing_every_replica_is_byte_identical_to_the_primary(
        steps in proptest::collection::vec(step(), 1..60)
    ) {
        runtime().block_on(async {
            let lab = lab(256 * BLOCK, &[Mode::Sync, Mode::Async], test_cfg());
            run_steps(&lab, &steps).await;
            for link in &lab.links {
                link.partition(false);
            }
            lab.wait_in_sync(Duration::from_secs(20)).await;
            let primary = lab.primary_file();
            for i in 0..lab.links.len() {
                assert!(lab.replica_file(i) == primary, "replica {i} differs after {steps:?}");
            }
            lab.disk.shutdown().await;
        });
    }
}

#[test]
fn resync_after_a_partition_ships_at_most_twice_the_changed_bytes() {
    runtime().block_on(async {
        let lab = lab(1024 * BLOCK, &[Mode::Async], test_cfg());
        lab.disk
            .write(0, vec![1; 4096], false)
            .await
            .expect("write");
        lab.wait_in_sync(Duration::from_secs(5)).await;
        lab.links[0].partition(true);
        // 64 distinct blocks changed (some twice), far more than the 32 KiB journal holds.
        for round in 0..2u8 {
            for b in 0..64u64 {
                let data = vec![round + 2; 4096];
                lab.disk
                    .write((b * 7 + 3) * BLOCK, data, false)
                    .await
                    .expect("write");
            }
        }
        let changed = 64 * BLOCK;
        let (before_sent, before_recv) = lab.links[0].bytes();
        lab.links[0].partition(false);
        lab.wait_in_sync(Duration::from_secs(10)).await;
        let (sent, recv) = lab.links[0].bytes();
        let carried = (sent - before_sent) + (recv - before_recv);
        // Metadata: hashes and chunk indices (≤ 64 B per dirty chunk) plus a few requests.
        let metadata = 64 * 64 + 8 * 1024;
        eprintln!("resync carried {carried} bytes for {changed} changed");
        assert!(
            carried <= 2 * changed + metadata,
            "carried {carried} bytes for {changed} changed"
        );
        assert!(lab.replica_file(0) == lab.primary_file());
        lab.disk.shutdown().await;
    });
}

#[test]
fn sync_writes_acknowledged_before_the_primary_dies_are_on_the_replica() {
    runtime().block_on(async {
        let lab = Arc::new(lab(1024 * BLOCK, &[Mode::Sync], test_cfg()));
        lab.links[0].set_delay(Duration::from_millis(2));
        lab.wait_in_sync(Duration::from_secs(5)).await;
        let acked: Arc<Mutex<Vec<(u64, u8)>>> = Arc::default();
        let mut writers = Vec::new();
        for w in 0..8u64 {
            let (lab, acked) = (lab.clone(), acked.clone());
            writers.push(tokio::spawn(async move {
                for k in 0..128u64 {
                    let block = w * 128 + k;
                    let byte = (block % 250) as u8 + 1;
                    if lab
                        .disk
                        .write(block * BLOCK, vec![byte; 4096], false)
                        .await
                        .is_err()
                    {
                        return;
                    }
                    acked.lock().expect("acked").push((block, byte));
                }
            }));
        }
        tokio::time::sleep(Duration::from_millis(150)).await;
        lab.disk.shutdown().await; // the primary "dies" mid-stream
        for w in writers {
            w.await.expect("writer");
        }
        let replica = lab.replica_file(0);
        let acked = acked.lock().expect("acked").clone();
        assert!(!acked.is_empty(), "some writes were acknowledged");
        assert!(acked.len() < 1024, "the primary died mid-stream");
        for (block, byte) in acked {
            let at = (block * BLOCK) as usize;
            assert!(
                replica[at..at + 4096].iter().all(|b| *b == byte),
                "acknowledged write to block {block} is missing on the replica"
            );
        }
    });
}

#[test]
fn async_lag_reported_covers_what_the_replica_misses_when_the_primary_stops() {
    // Streaming from the journal, and after it overflowed into dirty chunks.
    for journal_limit in [64 << 20, 32 << 10] {
        async_lag_covers_missing(ReplConfig {
            journal_limit,
            ..test_cfg()
        });
    }
}

fn async_lag_covers_missing(cfg: ReplConfig) {
    runtime().block_on(async {
        let lab = lab(1024 * BLOCK, &[Mode::Async], cfg);
        lab.wait_in_sync(Duration::from_secs(5)).await;
        lab.links[0].set_delay(Duration::from_millis(20));
        for block in 0..200u64 {
            let byte = (block % 250) as u8 + 1;
            lab.disk
                .write(block * BLOCK, vec![byte; 4096], false)
                .await
                .expect("write");
            // Slow enough that some batches arrive (round trip 40 ms), fast enough to lag.
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        let status = lab.disk.status().remove(0);
        lab.disk.shutdown().await;
        let replica = lab.replica_file(0);
        let primary = lab.primary_file();
        let missing_blocks = (0..200usize)
            .filter(|b| replica[b * 4096..(b + 1) * 4096] != primary[b * 4096..(b + 1) * 4096])
            .count() as u64;
        eprintln!(
            "reported lag {} writes / {} bytes; missing {missing_blocks} writes",
            status.lag_writes, status.lag_bytes
        );
        assert!(missing_blocks < 200, "some batches arrived before the stop");
        assert!(
            missing_blocks > 0,
            "the replica lagged (delay 20 ms per message)"
        );
        assert!(
            status.lag_writes >= missing_blocks,
            "reported {} writes behind, {missing_blocks} missing",
            status.lag_writes
        );
        assert!(
            status.lag_bytes >= missing_blocks * BLOCK,
            "reported {} bytes behind, {} missing",
            status.lag_bytes,
            missing_blocks * BLOCK
        );
    });
}

#[test]
fn a_lost_sync_replica_is_outdated_then_resynced_and_in_sync_again() {
    runtime().block_on(async {
        let lab = lab(256 * BLOCK, &[Mode::Sync], test_cfg());
        lab.wait_in_sync(Duration::from_secs(5)).await;
        lab.links[0].partition(true);
        lab.disk
            .write(0, vec![5; 4096], true)
            .await
            .expect("write completes once outdated");
        assert_eq!(lab.disk.status()[0].state, ReplicaState::Outdated);
        lab.links[0].partition(false);
        lab.wait_in_sync(Duration::from_secs(5)).await;
        assert!(lab.replica_file(0) == lab.primary_file());
        lab.disk.shutdown().await;
    });
}

#[test]
fn a_deposed_primary_is_fenced_by_a_replica_that_saw_a_newer_epoch() {
    runtime().block_on(async {
        let lab = lab(256 * BLOCK, &[Mode::Async], test_cfg());
        lab.wait_in_sync(Duration::from_secs(5)).await;
        // Another primary (epoch 2) reached the replica.
        let hello = storage::repl::ToReplica::Hello {
            volume: "vol".into(),
            epoch: 2,
            primary: 99,
            size: 256 * BLOCK,
            chunk: BLOCK as u32,
        };
        lab.links[0].store().handle(hello).await;
        // This write triggers the refusal; it may complete or be failed by the fence.
        let first = lab.disk.write(0, vec![1; 4096], false).await;
        assert!(
            matches!(first, Ok(()) | Err(storage::DeviceError::Fenced(_))),
            "{first:?}"
        );
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while lab.disk.fenced().is_none() {
            assert!(tokio::time::Instant::now() < deadline, "not fenced");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let err = lab.disk.write(0, vec![2; 4096], false).await;
        assert!(
            matches!(err, Err(storage::DeviceError::Fenced(_))),
            "{err:?}"
        );
        assert_eq!(
            lab.replica_file(0)[0],
            0,
            "the replica never took the stale write"
        );
        lab.disk.shutdown().await;
    });
}

#[test]
fn a_returning_old_primary_is_overwritten_and_its_extra_writes_are_reported_divergent() {
    runtime().block_on(async {
        // site0 was the primary before: it holds a write (block 9) this primary never saw.
        let lab = lab_with(
            256 * BLOCK,
            &[(Mode::Async, History::Unknown)],
            test_cfg(),
            |dir| {
                let mut image = vec![0u8; (256 * BLOCK) as usize];
                image[(9 * BLOCK) as usize] = 0xee;
                std::fs::write(dir.join("site0.img"), image).expect("old primary's image");
            },
        );
        lab.disk
            .write(3 * BLOCK, vec![3; 4096], false)
            .await
            .expect("write");
        lab.wait_in_sync(Duration::from_secs(5)).await;
        assert!(lab.replica_file(0) == lab.primary_file());
        let divergent = lab.disk.divergent();
        assert_eq!(divergent.len(), 1, "{divergent:?}");
        assert_eq!(divergent[0].replica, "site0");
        assert_eq!(divergent[0].divergent, vec![(9 * BLOCK, BLOCK)]);
        // The write may land before or during the first round; either way it is ours.
        let ours: Vec<(u64, u64)> = lab
            .disk
            .resync_reports()
            .into_iter()
            .flat_map(|r| r.written_while_away)
            .collect();
        assert!(ours.contains(&(3 * BLOCK, BLOCK)), "{ours:?}");
        lab.disk.shutdown().await;
    });
}

/// A link whose replica never answers (a black hole on the WAN).
struct BlackHole;

#[async_trait::async_trait]
impl storage::repl::Link for BlackHole {
    async fn call(
        &self,
        _msg: storage::repl::ToReplica,
    ) -> Result<storage::repl::FromReplica, storage::repl::LinkError> {
        std::future::pending().await
    }
}

/// An outdater whose fabric write fails until `allow` is set.
#[derive(Default)]
struct GatedOutdater {
    allow: std::sync::atomic::AtomicBool,
    attempts: std::sync::atomic::AtomicU32,
}

#[async_trait::async_trait]
impl Outdater for GatedOutdater {
    async fn outdate(&self, _volume: &str, _replica: &str, _epoch: u64) -> Result<(), String> {
        use std::sync::atomic::Ordering::SeqCst;
        self.attempts.fetch_add(1, SeqCst);
        if self.allow.load(SeqCst) {
            Ok(())
        } else {
            Err("no Raft majority".into())
        }
    }
}

#[test]
fn a_silent_sync_replica_holds_writes_until_the_fabric_records_it_outdated() {
    runtime().block_on(async {
        use std::sync::atomic::Ordering::SeqCst;
        let dir = tempfile::tempdir().expect("tempdir");
        let local = FileDisk::create(&dir.path().join("p.img"), 64 * BLOCK).expect("image");
        let cfg = ReplConfig {
            ack_timeout: Duration::from_millis(200),
            ..test_cfg()
        };
        let spec = ReplicaSpec {
            name: "b".into(),
            mode: Mode::Sync,
            history: History::InSync,
            outdated: false,
        };
        let primary = Primary::new("vol", 1, 7, 64 * BLOCK, cfg, vec![spec], Instant::now())
            .expect("primary");
        let outdater = Arc::new(GatedOutdater::default());
        let links: HashMap<String, Arc<dyn storage::repl::Link>> =
            HashMap::from([("b".to_string(), Arc::new(BlackHole) as _)]);
        let disk = ReplicatedDisk::start(
            local,
            primary,
            links,
            outdater.clone(),
            CancellationToken::new(),
        )
        .expect("start");

        let writer = {
            let disk = disk.clone();
            tokio::spawn(async move { disk.write(0, vec![1; 4096], true).await })
        };
        tokio::time::sleep(Duration::from_millis(800)).await;
        assert!(
            outdater.attempts.load(SeqCst) >= 1,
            "outdate asked after the timeout"
        );
        assert!(
            !writer.is_finished(),
            "the write must not complete while the outdate fails"
        );
        outdater.allow.store(true, SeqCst);
        let done = tokio::time::timeout(Duration::from_secs(5), writer).await;
        done.expect("completes once outdated")
            .expect("task")
            .expect("write");
        assert_eq!(disk.status()[0].state, ReplicaState::Outdated);
        disk.shutdown().await;
    });
}

#[test]
fn a_replica_without_a_link_or_a_link_without_a_replica_is_refused_at_start() {
    runtime().block_on(async {
        let dir = tempfile::tempdir().expect("tempdir");
        let local = FileDisk::create(&dir.path().join("p.img"), 64 * BLOCK).expect("image");
        let spec = ReplicaSpec {
            name: "b".into(),
            mode: Mode::Sync,
            history: History::InSync,
            outdated: false,
        };
        let primary = || {
            Primary::new(
                "vol",
                1,
                7,
                64 * BLOCK,
                test_cfg(),
                vec![spec.clone()],
                Instant::now(),
            )
            .expect("primary")
        };
        let none = HashMap::new();
        let err = ReplicatedDisk::start(
            local.clone(),
            primary(),
            none,
            Arc::new(Recorder::default()),
            CancellationToken::new(),
        );
        assert_eq!(
            err.expect_err("no link").to_string(),
            "replica \"b\" has no link"
        );
        let links: HashMap<String, Arc<dyn storage::repl::Link>> = HashMap::from([
            ("b".to_string(), Arc::new(BlackHole) as _),
            ("c".to_string(), Arc::new(BlackHole) as _),
        ]);
        let err = ReplicatedDisk::start(
            local,
            primary(),
            links,
            Arc::new(Recorder::default()),
            CancellationToken::new(),
        );
        assert!(matches!(err, Err(storage::repl::ShellError::UnknownReplica(c)) if c == "c"));
    });
}
