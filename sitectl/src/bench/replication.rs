//! `sitectl bench replication`: measured figures for volume replication, in-process, over an
//! emulated WAN (see [`testbed`]): sync write latency against local fsync + RTT, async
//! throughput against min(disk, link), the cost of the engine on an unreplicated volume,
//! resync bytes against changed bytes, and memory while a replica is away.
//!
//! Figures are measured, never asserted: the machine may be shared and noisy, and a debug
//! build is slower than what a release build reports. Each phase uses its own image files in
//! the work directory and deletes them when done; the directory goes at the end.
//!
//! Does not: start agents or a lab, or measure NBD (the engine's `BlockDevice` is driven
//! directly, as the NBD server drives it).

pub mod testbed;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use serde::Serialize;
use storage::repl::{
    History, Link, Mode, Outdater, Primary, ReplConfig, ReplicaSpec, ReplicaState, ReplicaStatus,
    ReplicaStore, ReplicatedDisk,
};
use storage::{BlockDevice, FileDisk};
use tokio_util::sync::CancellationToken;

use self::testbed::{BenchLink, REPLICA_SITE, Testbed};

const KIB4: u64 = 4096;
const MIB: u64 = 1 << 20;
/// Pings per RTT measurement (after a warm-up that also opens the QUIC connection).
const PINGS: usize = 20;
/// Goals the figures are compared with (DRBD-class numbers); shown, never asserted.
pub const SYNC_GOAL_MAX: f64 = 1.1;
pub const THROUGHPUT_GOAL_MIN: f64 = 0.9;
pub const RESYNC_GOAL_MAX: f64 = 1.05;
pub const OVERHEAD_GOAL_MAX_PCT: f64 = 3.0;

/// What to run; `sitectl bench replication` fills it from its flags.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Round-trip times to emulate, one set of per-RTT figures each.
    pub rtts: Vec<Duration>,
    /// Link rate each way, bits per second.
    pub rate_bps: u64,
    /// Bytes of sequential 1 MiB writes for the throughput and overhead figures.
    pub size: u64,
    /// 4 KiB FUA writes for each latency figure.
    pub writes: usize,
    /// Bytes written (scattered 1 MiB writes) while the replica is cut, for the resync figures.
    pub changed: u64,
    /// Bytes written while the replica is away, for the memory figure.
    pub away: u64,
    /// The engine's journal bound per replica.
    pub journal_limit: u64,
    /// Parent of the work directory; `None` is the current directory.
    pub dir: Option<PathBuf>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// `debug` or `release`: figures worth quoting come from a release build.
    pub build: &'static str,
    pub work_dir: String,
    pub rate_bps: u64,
    pub link_mib_s: f64,
    /// Replication message bound (one message per request, one request in flight).
    pub max_message: u64,
    pub chunk: u32,
    pub local: Local,
    pub rtts: Vec<RttFigures>,
    pub unreplicated: Overhead,
    pub memory: Memory,
}

/// The raw `FileDisk` on the same filesystem: the reference of the other figures.
#[derive(Debug, Clone, Serialize)]
pub struct Local {
    pub fua_4k_p50_ms: f64,
    pub fua_4k_p99_ms: f64,
    /// 1 MiB sequential writes then one flush.
    pub seq_mib_s: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct RttFigures {
    pub rtt_ms: f64,
    /// p50 of empty requests over the emulated link.
    pub measured_rtt_ms: f64,
    pub sync: SyncLatency,
    pub throughput: Throughput,
    pub resync: Vec<Resync>,
}

#[derive(Debug, Clone, Serialize)]
pub struct SyncLatency {
    pub writes: usize,
    pub p50_ms: f64,
    pub p99_ms: f64,
    /// Local fsync p50 + measured RTT.
    pub reference_ms: f64,
    /// p50 / reference.
    pub ratio: f64,
    pub goal_max: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct Throughput {
    pub bytes: u64,
    /// From the first write until the replica acknowledged the last.
    pub seconds: f64,
    pub mib_s: f64,
    /// min(local disk, link).
    pub reference_mib_s: f64,
    pub ratio: f64,
    pub goal_min: f64,
    /// One `max_message` per RTT + its transfer time: the most one request in flight allows.
    pub window_bound_mib_s: f64,
    /// The smallest of disk, link and window.
    pub limited_by: String,
    /// The writer outran the link and the journal spilled to dirty-chunk tracking.
    pub journal_spilled: bool,
    /// Requests to the replica during the run (one in flight at a time).
    pub requests: u64,
    /// Their mean size (request and reply encoded), MiB.
    pub request_mib_avg: f64,
    /// Their mean time from send to reply, ms.
    pub request_ms_avg: f64,
    /// Of which the replica spent applying (decode, write, fsync, encode), ms.
    pub replica_ms_avg: f64,
    /// Mean time between requests (the engine's own gaps), ms: what the run took beyond the
    /// requests, per request.
    pub gap_ms_avg: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct Resync {
    /// `journal replay` or `dirty chunks`.
    pub path: String,
    pub journal_limit: u64,
    pub changed_bytes: u64,
    /// Encoded replication messages, both directions.
    pub link_bytes: u64,
    /// UDP payload through the emulator, both directions (QUIC, TLS, acks included).
    pub wire_bytes: u64,
    /// link_bytes / changed_bytes.
    pub ratio: f64,
    pub wire_ratio: f64,
    pub goal_max: f64,
    /// From healing the link until the replica is in sync (includes the engine's retry pause).
    pub seconds: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct Overhead {
    pub fua_4k_p50_raw_ms: f64,
    pub fua_4k_p50_engine_ms: f64,
    pub fua_overhead_pct: f64,
    pub seq_raw_mib_s: f64,
    pub seq_engine_mib_s: f64,
    pub seq_overhead_pct: f64,
    pub goal_max_pct: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct Memory {
    pub written_bytes: u64,
    pub journal_limit: u64,
    /// Bytes written (replica away) when the journal was dropped for dirty-chunk bits.
    pub spilled_at_bytes: Option<u64>,
    pub journal_peak_bytes: u64,
    /// The dirty-chunk bitmap of the whole volume.
    pub dirty_bits_bytes: u64,
    pub rss_before_bytes: u64,
    /// Largest VmRSS growth while writing.
    pub rss_peak_growth_bytes: u64,
    /// VmRSS growth after the last write.
    pub rss_end_growth_bytes: u64,
}

/// Runs every phase and returns the figures; `progress` hears what is being measured.
pub async fn replication(settings: &Settings, progress: &dyn Fn(&str)) -> anyhow::Result<Report> {
    check(settings)?;
    let parent = match &settings.dir {
        Some(d) => d.clone(),
        None => std::env::current_dir().context("current directory")?,
    };
    let work = tempfile::Builder::new()
        .prefix(".bench-replication-")
        .tempdir_in(&parent)
        .with_context(|| format!("work directory under {}", parent.display()))?;
    let transfer = message_transfer(ReplConfig::default().max_message, settings.rate_bps);
    // A message must never time out only because the link is slow.
    let timeout = Duration::from_secs(5).max(transfer * 4 + Duration::from_secs(1));
    let bed = Testbed::start(&work.path().join("pki"), timeout).await?;
    let cfg = ReplConfig {
        journal_limit: settings.journal_limit,
        ack_timeout: timeout,
        ..ReplConfig::default()
    };
    let mut bench = Bench {
        bed: &bed,
        dir: work.path().to_owned(),
        cfg,
        settings,
        seq: 0,
    };
    let result = bench.run(progress).await;
    bed.close().await;
    result
}

fn check(s: &Settings) -> anyhow::Result<()> {
    if s.rtts.is_empty() {
        anyhow::bail!("--rtt: give at least one round-trip time");
    }
    for (flag, value) in [
        ("--size", s.size),
        ("--changed", s.changed),
        ("--away", s.away),
    ] {
        if value < MIB {
            anyhow::bail!("{flag}: {value} bytes is less than one 1 MiB write");
        }
    }
    if s.writes == 0 {
        anyhow::bail!("--writes: 0 writes measure nothing");
    }
    if s.rate_bps == 0 {
        anyhow::bail!("--rate: a rate must be above zero");
    }
    Ok(())
}

/// Records nothing: the bench has no fabric state (no sync replica is lost in these phases).
struct NoFabric;

#[async_trait::async_trait]
impl Outdater for NoFabric {
    async fn outdate(&self, _volume: &str, _replica: &str, _epoch: u64) -> Result<(), String> {
        Ok(())
    }
}

/// Tells each primary run apart, so a replica never resumes a previous run's stream.
static INSTANCE: AtomicU64 = AtomicU64::new(1);

/// A replicated volume of the bench: primary image, replica store, link and engine.
struct Volume {
    name: String,
    disk: ReplicatedDisk,
    link: Arc<BenchLink>,
    journal_limit: u64,
}

struct Bench<'a> {
    bed: &'a Testbed,
    dir: PathBuf,
    cfg: ReplConfig,
    settings: &'a Settings,
    /// Stamped into every written block, so rewritten chunks always differ.
    seq: u64,
}

impl Bench<'_> {
    async fn run(&mut self, progress: &dyn Fn(&str)) -> anyhow::Result<Report> {
        let s = self.settings;
        progress("local disk and unreplicated engine (4 KiB FUA, 1 MiB sequential)");
        let (local, unreplicated) = self.local_and_overhead().await?;
        let mut rtts = Vec::new();
        for &rtt in &s.rtts {
            self.bed.set_link(rtt, s.rate_bps)?;
            self.bed.ping(3).await?;
            let mut pings = self.bed.ping(PINGS).await?;
            pings.sort();
            let measured = percentile_ms(&pings, 50.0);
            progress(&format!(
                "RTT {rtt:?} (measured {measured:.2} ms): sync 4 KiB FUA writes"
            ));
            let sync = self.sync_latency(rtt, measured, &local).await?;
            progress(&format!("RTT {rtt:?}: async throughput and resync"));
            let (throughput, resync) = self.throughput_and_resync(rtt, &local).await?;
            rtts.push(RttFigures {
                rtt_ms: ms(rtt),
                measured_rtt_ms: measured,
                sync,
                throughput,
                resync,
            });
        }
        progress("memory while the replica is away");
        let memory = self.memory().await?;
        Ok(Report {
            build: if cfg!(debug_assertions) {
                "debug"
            } else {
                "release"
            },
            work_dir: self.dir.display().to_string(),
            rate_bps: s.rate_bps,
            link_mib_s: link_mib_s(s.rate_bps),
            max_message: self.cfg.max_message,
            chunk: self.cfg.chunk,
            local,
            rtts,
            unreplicated,
            memory,
        })
    }

    fn payload(&mut self, len: u64) -> Vec<u8> {
        self.seq += 1;
        payload(len, self.seq)
    }

    /// Raw `FileDisk` against a `ReplicatedDisk` without replicas, alternating twice so drift
    /// of a shared machine hits both sides.
    async fn local_and_overhead(&mut self) -> anyhow::Result<(Local, Overhead)> {
        let s = self.settings;
        let size = round_up(s.size.max(s.writes as u64 * KIB4), MIB);
        let raw = FileDisk::create(&self.dir.join("raw.img"), size)?;
        let engine_file = FileDisk::create(&self.dir.join("engine.img"), size)?;
        let primary = Primary::new(
            "unreplicated",
            1,
            INSTANCE.fetch_add(1, Ordering::SeqCst),
            size,
            self.cfg.clone(),
            Vec::new(),
            Instant::now(),
        )?;
        let engine = ReplicatedDisk::start(
            engine_file,
            primary,
            HashMap::new(),
            Arc::new(NoFabric),
            CancellationToken::new(),
        )?;
        // Index 0 is the raw disk, 1 the engine. Sequential writes first, so the FUA writes
        // land on allocated blocks on both.
        let sides: [&dyn BlockDevice; 2] = [&raw, &engine];
        let mut lat: [Vec<Duration>; 2] = [Vec::new(), Vec::new()];
        let mut secs = [0.0; 2];
        for _ in 0..2 {
            let round = self.paired_sequential(sides, s.size).await?;
            secs[0] += round[0];
            secs[1] += round[1];
            let [a, b] = self.paired_fua(sides, s.writes).await?;
            lat[0].extend(a);
            lat[1].extend(b);
        }
        let [mut raw_lat, mut engine_lat] = lat;
        let [raw_secs, engine_secs] = secs;
        engine.shutdown().await;
        drop((raw, engine));
        remove(&self.dir.join("raw.img"))?;
        remove(&self.dir.join("engine.img"))?;
        raw_lat.sort();
        engine_lat.sort();
        let bytes = 2 * round_up(s.size, MIB);
        let seq_raw = mib_s(bytes, raw_secs);
        let seq_engine = mib_s(bytes, engine_secs);
        let local = Local {
            fua_4k_p50_ms: percentile_ms(&raw_lat, 50.0),
            fua_4k_p99_ms: percentile_ms(&raw_lat, 99.0),
            seq_mib_s: seq_raw,
        };
        let fua_engine = percentile_ms(&engine_lat, 50.0);
        let overhead = Overhead {
            fua_4k_p50_raw_ms: local.fua_4k_p50_ms,
            fua_4k_p50_engine_ms: fua_engine,
            fua_overhead_pct: pct_more(fua_engine, local.fua_4k_p50_ms),
            seq_raw_mib_s: seq_raw,
            seq_engine_mib_s: seq_engine,
            // Less throughput is more cost: time per byte, engine over raw.
            seq_overhead_pct: pct_more(engine_secs, raw_secs),
            goal_max_pct: OVERHEAD_GOAL_MAX_PCT,
        };
        Ok((local, overhead))
    }

    /// Latencies of `n` 4 KiB FUA writes at consecutive offsets.
    async fn fua_writes(
        &mut self,
        disk: &dyn BlockDevice,
        n: usize,
    ) -> anyhow::Result<Vec<Duration>> {
        let mut lat = Vec::with_capacity(n);
        let blocks = disk.size() / KIB4;
        for i in 0..n as u64 {
            let data = self.payload(KIB4);
            let started = Instant::now();
            disk.write((i % blocks) * KIB4, data, true).await?;
            lat.push(started.elapsed());
        }
        Ok(lat)
    }

    /// `n` 4 KiB FUA writes to each side, interleaved write by write (who goes first
    /// alternates), so a shared machine's load falls on both alike; latencies per side.
    async fn paired_fua(
        &mut self,
        sides: [&dyn BlockDevice; 2],
        n: usize,
    ) -> anyhow::Result<[Vec<Duration>; 2]> {
        let mut lat = [Vec::with_capacity(n), Vec::with_capacity(n)];
        for i in 0..n as u64 {
            let order = if i % 2 == 0 { [0, 1] } else { [1, 0] };
            for side in order {
                let disk = sides[side];
                let data = self.payload(KIB4);
                let started = Instant::now();
                disk.write((i % (disk.size() / KIB4)) * KIB4, data, true)
                    .await?;
                lat[side].push(started.elapsed());
            }
        }
        Ok(lat)
    }

    /// Seconds each side takes to write `bytes` in sequential 1 MiB writes and flush them,
    /// interleaved as in [`Bench::paired_fua`].
    async fn paired_sequential(
        &mut self,
        sides: [&dyn BlockDevice; 2],
        bytes: u64,
    ) -> anyhow::Result<[f64; 2]> {
        let mut secs = [0.0; 2];
        for k in 0..bytes.div_ceil(MIB) {
            let order = if k % 2 == 0 { [0, 1] } else { [1, 0] };
            for side in order {
                let data = self.payload(MIB);
                let started = Instant::now();
                sides[side].write(k * MIB, data, false).await?;
                secs[side] += started.elapsed().as_secs_f64();
            }
        }
        for (side, disk) in sides.iter().enumerate() {
            let started = Instant::now();
            disk.flush().await?;
            secs[side] += started.elapsed().as_secs_f64();
        }
        Ok(secs)
    }

    /// A new volume of `size` bytes replicated to the bench replica, in sync when returned.
    async fn open(
        &self,
        name: &str,
        size: u64,
        mode: Mode,
        cfg: ReplConfig,
    ) -> anyhow::Result<Volume> {
        let store = ReplicaStore::open(&self.replica_image(name), name, size, cfg.chunk)?;
        self.bed.add_replica(name, Arc::new(store));
        self.start(name, size, mode, cfg).await
    }

    /// Starts a primary run over the existing images (the replica store is served already).
    async fn start(
        &self,
        name: &str,
        size: u64,
        mode: Mode,
        cfg: ReplConfig,
    ) -> anyhow::Result<Volume> {
        let file = FileDisk::open_or_create(&self.primary_image(name), size)?;
        let journal_limit = cfg.journal_limit;
        let spec = ReplicaSpec {
            name: REPLICA_SITE.into(),
            mode,
            // Both images are new (all zeroes), or were left in sync by a clean stop.
            history: History::InSync,
            outdated: false,
        };
        let primary = Primary::new(
            name,
            1,
            INSTANCE.fetch_add(1, Ordering::SeqCst),
            size,
            cfg,
            vec![spec],
            Instant::now(),
        )?;
        let link = self.bed.link();
        let links = HashMap::from([(REPLICA_SITE.to_owned(), link.clone() as Arc<dyn Link>)]);
        let disk = ReplicatedDisk::start(
            file,
            primary,
            links,
            Arc::new(NoFabric),
            CancellationToken::new(),
        )?;
        let vol = Volume {
            name: name.to_owned(),
            disk,
            link,
            journal_limit,
        };
        vol.wait_in_sync(self.sync_timeout(0)).await?;
        Ok(vol)
    }

    fn primary_image(&self, name: &str) -> PathBuf {
        self.dir.join("primary").join(format!("{name}.img"))
    }

    fn replica_image(&self, name: &str) -> PathBuf {
        self.dir.join("replica").join(format!("{name}.img"))
    }

    /// Time allowed for `bytes` to reach the replica: generous, only a stuck run trips it.
    fn sync_timeout(&self, bytes: u64) -> Duration {
        let link = bytes as f64 * 8.0 / self.settings.rate_bps as f64;
        Duration::from_secs(30) + Duration::from_secs_f64(link * 4.0)
    }

    async fn sync_latency(
        &mut self,
        rtt: Duration,
        measured_rtt_ms: f64,
        local: &Local,
    ) -> anyhow::Result<SyncLatency> {
        let s = self.settings;
        let name = format!("sync-{}ms", rtt.as_millis());
        let size = round_up((s.writes as u64 + 16) * KIB4, MIB);
        let vol = self.open(&name, size, Mode::Sync, self.cfg.clone()).await?;
        // Warm-up: the first writes after the stream opens are not what is measured.
        self.fua_writes(&vol.disk, 5).await?;
        let mut lat = self.fua_writes(&vol.disk, s.writes).await?;
        self.close_and_delete(vol).await?;
        lat.sort();
        let p50 = percentile_ms(&lat, 50.0);
        let reference = local.fua_4k_p50_ms + measured_rtt_ms;
        Ok(SyncLatency {
            writes: s.writes,
            p50_ms: p50,
            p99_ms: percentile_ms(&lat, 99.0),
            reference_ms: reference,
            ratio: p50 / reference,
            goal_max: SYNC_GOAL_MAX,
        })
    }

    async fn throughput_and_resync(
        &mut self,
        rtt: Duration,
        local: &Local,
    ) -> anyhow::Result<(Throughput, Vec<Resync>)> {
        let s = self.settings;
        let name = format!("async-{}ms", rtt.as_millis());
        let size = round_up(s.size, MIB);
        let vol = self
            .open(&name, size, Mode::Async, self.cfg.clone())
            .await?;

        let (calls0, busy0) = vol.link.calls();
        let (bytes0, replica0) = (vol.link.bytes(), self.bed.replica_busy());
        let started = Instant::now();
        let mut spilled = false;
        for k in 0..size / MIB {
            let data = self.payload(MIB);
            vol.disk.write(k * MIB, data, false).await?;
            spilled |= vol.spilled();
        }
        spilled |= vol.wait_in_sync_watching(self.sync_timeout(size)).await?;
        let seconds = started.elapsed().as_secs_f64();
        let (calls1, busy1) = vol.link.calls();
        let requests = calls1 - calls0;
        let per = |d: Duration| ms(d) / requests.max(1) as f64;
        let busy = busy1.saturating_sub(busy0);
        let link = link_mib_s(s.rate_bps);
        let window = window_bound_mib_s(self.cfg.max_message, rtt, s.rate_bps);
        let reference = local.seq_mib_s.min(link);
        let got = mib_s(size, seconds);
        let throughput = Throughput {
            bytes: size,
            seconds,
            mib_s: got,
            reference_mib_s: reference,
            ratio: got / reference,
            goal_min: THROUGHPUT_GOAL_MIN,
            window_bound_mib_s: window,
            limited_by: limited_by(local.seq_mib_s, link, window, self.cfg.max_message),
            journal_spilled: spilled,
            requests,
            request_mib_avg: (vol.link.bytes() - bytes0) as f64
                / MIB as f64
                / requests.max(1) as f64,
            request_ms_avg: per(busy),
            replica_ms_avg: per(self.bed.replica_busy().saturating_sub(replica0)),
            gap_ms_avg: per(Duration::from_secs_f64(seconds).saturating_sub(busy)),
        };

        let mut resync = vec![self.resync(&vol, size).await?];
        // Again through the dirty-chunk path: a new primary run over the same (in sync)
        // images, whose journal bound is below the changed bytes.
        vol.disk.shutdown().await;
        let small = ReplConfig {
            journal_limit: (s.changed / 4).max(u64::from(self.cfg.chunk)),
            ..self.cfg.clone()
        };
        let vol = self.start(&name, size, Mode::Async, small).await?;
        resync.push(self.resync(&vol, size).await?);
        self.close_and_delete(vol).await?;
        Ok((throughput, resync))
    }

    /// Cuts the link, writes `changed` bytes in scattered 1 MiB writes, heals, and counts the
    /// bytes until the replica is in sync again.
    async fn resync(&mut self, vol: &Volume, size: u64) -> anyhow::Result<Resync> {
        let s = self.settings;
        let slots = size / MIB;
        let n = (s.changed / MIB).min(slots);
        vol.link.set_cut(true);
        let mut spilled = false;
        for slot in scatter(slots, n) {
            let data = self.payload(MIB);
            vol.disk.write(slot * MIB, data, false).await?;
            spilled |= vol.spilled();
        }
        let (link0, wire0) = (vol.link.bytes(), self.bed.wire_bytes());
        let healed = Instant::now();
        vol.link.set_cut(false);
        vol.wait_in_sync(self.sync_timeout(n * MIB)).await?;
        let seconds = healed.elapsed().as_secs_f64();
        let changed = n * MIB;
        let link_bytes = vol.link.bytes() - link0;
        let wire_bytes = self.bed.wire_bytes().saturating_sub(wire0);
        Ok(Resync {
            path: if spilled {
                "dirty chunks"
            } else {
                "journal replay"
            }
            .into(),
            journal_limit: vol.journal_limit,
            changed_bytes: changed,
            link_bytes,
            wire_bytes,
            ratio: link_bytes as f64 / changed as f64,
            wire_ratio: wire_bytes as f64 / changed as f64,
            goal_max: RESYNC_GOAL_MAX,
            seconds,
        })
    }

    async fn memory(&mut self) -> anyhow::Result<Memory> {
        let s = self.settings;
        let size = round_up(s.away, MIB);
        let vol = self
            .open("away", size, Mode::Async, self.cfg.clone())
            .await?;
        vol.link.set_cut(true);
        let before = vm_rss()?;
        let mut peak = 0u64;
        let mut journal_peak = 0u64;
        let mut spilled_at = None;
        let mut dirty_bits = 0;
        for k in 0..size / MIB {
            let data = self.payload(MIB);
            vol.disk.write(k * MIB, data, false).await?;
            peak = peak.max(vm_rss()?.saturating_sub(before));
            if let Some((journal, bits)) = vol.disk.memory_of(REPLICA_SITE) {
                journal_peak = journal_peak.max(journal);
                dirty_bits = bits as u64;
            }
            if spilled_at.is_none() && vol.spilled() {
                spilled_at = Some((k + 1) * MIB);
            }
        }
        let end = vm_rss()?.saturating_sub(before);
        // The replica stays away: healing would resync all of it, which is not measured here.
        self.close_and_delete(vol).await?;
        Ok(Memory {
            written_bytes: size,
            journal_limit: self.cfg.journal_limit,
            spilled_at_bytes: spilled_at,
            journal_peak_bytes: journal_peak,
            dirty_bits_bytes: dirty_bits,
            rss_before_bytes: before,
            rss_peak_growth_bytes: peak,
            rss_end_growth_bytes: end,
        })
    }

    /// Stops the engine, stops serving the replica and deletes both images.
    async fn close_and_delete(&self, vol: Volume) -> anyhow::Result<()> {
        let name = vol.name.clone();
        vol.disk.shutdown().await;
        self.bed.remove_replica(&name);
        drop(vol);
        remove(&self.primary_image(&name))?;
        remove(&self.replica_image(&name))?;
        remove(&storage::repl::store::meta_path(&self.replica_image(&name)))?;
        Ok(())
    }
}

impl Volume {
    fn status(&self) -> anyhow::Result<ReplicaStatus> {
        self.disk
            .status()
            .into_iter()
            .next()
            .context("the bench volume has no replica")
    }

    /// Whether the journal was dropped for dirty chunks: writes are unacknowledged yet the
    /// journal, which holds exactly those while intact, is empty.
    fn spilled(&self) -> bool {
        let journal = self.disk.memory_of(REPLICA_SITE).map_or(0, |(j, _)| j);
        self.status().is_ok_and(|s| s.lag_writes > 0) && journal == 0
    }

    async fn wait_in_sync(&self, timeout: Duration) -> anyhow::Result<()> {
        self.wait_in_sync_watching(timeout).await.map(|_| ())
    }

    /// Polls until the replica holds every write; returns whether the journal spilled meanwhile.
    async fn wait_in_sync_watching(&self, timeout: Duration) -> anyhow::Result<bool> {
        let deadline = Instant::now() + timeout;
        let mut spilled = false;
        loop {
            let status = self.status()?;
            if status.state == ReplicaState::InSync && status.lag_writes == 0 {
                return Ok(spilled);
            }
            spilled |= self.spilled();
            if Instant::now() >= deadline {
                anyhow::bail!(
                    "volume {}: the replica is not in sync after {timeout:?}: {:?}",
                    self.name,
                    status.state
                );
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }
}

fn remove(path: &Path) -> anyhow::Result<()> {
    match std::fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e).with_context(|| format!("removing {}", path.display())),
    }
}

/// `len` bytes whose every 4 KiB block starts with `seq`, so no two writes look alike.
pub fn payload(len: u64, seq: u64) -> Vec<u8> {
    let mut data = vec![(seq % 251) as u8; len as usize];
    for block in data.chunks_mut(KIB4 as usize) {
        let n = block.len().min(8);
        block[..n].copy_from_slice(&seq.to_le_bytes()[..n]);
    }
    data
}

/// `n` distinct slots of `0..slots`, spread over the whole range (a stride coprime with it).
pub fn scatter(slots: u64, n: u64) -> Vec<u64> {
    if slots == 0 {
        return Vec::new();
    }
    let mut stride = (slots * 5 / 8).max(1);
    while gcd(stride, slots) != 1 {
        stride += 1;
    }
    (0..n.min(slots)).map(|k| (k * stride) % slots).collect()
}

fn gcd(a: u64, b: u64) -> u64 {
    if b == 0 { a } else { gcd(b, a % b) }
}

fn round_up(n: u64, to: u64) -> u64 {
    n.div_ceil(to) * to
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// The `p`th percentile of sorted samples, in milliseconds (0 for none).
pub fn percentile_ms(sorted: &[Duration], p: f64) -> f64 {
    super::percentile(sorted, p)
}

fn mib_s(bytes: u64, seconds: f64) -> f64 {
    if seconds <= 0.0 {
        return 0.0;
    }
    bytes as f64 / MIB as f64 / seconds
}

/// How much more `x` is than `base`, in percent.
fn pct_more(x: f64, base: f64) -> f64 {
    if base <= 0.0 {
        return 0.0;
    }
    (x / base - 1.0) * 100.0
}

pub fn link_mib_s(rate_bps: u64) -> f64 {
    rate_bps as f64 / 8.0 / MIB as f64
}

fn message_transfer(max_message: u64, rate_bps: u64) -> Duration {
    Duration::from_secs_f64(max_message as f64 * 8.0 / rate_bps.max(1) as f64)
}

/// One request in flight: at most one full message per RTT plus its transfer time.
pub fn window_bound_mib_s(max_message: u64, rtt: Duration, rate_bps: u64) -> f64 {
    let per_message = rtt + message_transfer(max_message, rate_bps);
    mib_s(max_message, per_message.as_secs_f64())
}

fn limited_by(disk: f64, link: f64, window: f64, max_message: u64) -> String {
    let mib = max_message / MIB;
    if window <= link && window <= disk {
        format!("one request in flight, {mib} MiB per RTT + transfer")
    } else if link <= disk {
        "link rate".into()
    } else {
        "local disk".into()
    }
}

/// This process's resident set (VmRSS), bytes.
fn vm_rss() -> anyhow::Result<u64> {
    let status = std::fs::read_to_string("/proc/self/status").context("/proc/self/status")?;
    parse_vm_rss(&status).context("/proc/self/status has no VmRSS line")
}

fn parse_vm_rss(status: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scattered_slots_are_distinct_and_spread() {
        for (slots, n) in [(64, 16), (100, 100), (7, 3), (1, 1), (256, 40)] {
            let got = scatter(slots, n);
            let mut sorted = got.clone();
            sorted.sort();
            sorted.dedup();
            assert_eq!(sorted.len() as u64, n.min(slots), "{slots} {n}: {got:?}");
            assert!(got.iter().all(|s| *s < slots));
        }
        // Not one run of neighbours: the second write lands far from the first.
        let got = scatter(64, 4);
        assert!(got[1].abs_diff(got[0]) > 8, "{got:?}");
    }

    #[test]
    fn payloads_differ_in_every_block() {
        let a = payload(3 * KIB4, 1);
        let b = payload(3 * KIB4, 252);
        assert_eq!(a.len(), 3 * KIB4 as usize);
        for (x, y) in a.chunks(KIB4 as usize).zip(b.chunks(KIB4 as usize)) {
            assert_ne!(x, y);
        }
    }

    #[test]
    fn the_window_bound_is_one_message_per_rtt_plus_transfer() {
        // 4 MiB at 200 Mbit/s takes 0.168 s; with 40 ms RTT that is 4 MiB per 0.208 s.
        let got = window_bound_mib_s(4 * MIB, Duration::from_millis(40), 200_000_000);
        assert!((got - 4.0 / 0.207_772).abs() < 0.01, "{got}");
        assert!((link_mib_s(200_000_000) - 23.84).abs() < 0.01);
        assert_eq!(
            limited_by(500.0, 23.8, got, 4 * MIB),
            "one request in flight, 4 MiB per RTT + transfer"
        );
        assert_eq!(limited_by(500.0, 23.8, 100.0, 4 * MIB), "link rate");
        assert_eq!(limited_by(10.0, 23.8, 100.0, 4 * MIB), "local disk");
    }

    #[test]
    fn vm_rss_is_read_in_bytes() {
        let status = "Name:\tsitectl\nVmPeak:\t  1000 kB\nVmRSS:\t    2048 kB\n";
        assert_eq!(parse_vm_rss(status), Some(2048 * 1024));
        assert_eq!(parse_vm_rss("Name: x\n"), None);
        assert!(vm_rss().expect("own rss") > 0);
    }
}
