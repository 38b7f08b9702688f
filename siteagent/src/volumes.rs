//! The volume service: makes this agent hold the volume copies the fabric state gives it, and
//! tells the state how the copies stand.
//!
//! From the state, [`wanted`] computes what this agent holds (pure, unit-tested): the copy of
//! each volume at this site whose server ([`FabricState::volume_server`]) is this host — as
//! the primary (a [`ReplicatedDisk`] exported over NBD on this host's workload addresses), or as
//! a replica (a [`ReplicaStore`] answering the WAN's `bulk` channel). When what it should hold
//! changes (role, epoch, replica set), the old holding is stopped — a replica waits for the
//! request it is applying — before the new one opens the same file.
//!
//! Invariants:
//! - the primary refuses writes (fenced) whenever this agent's lease is not valid: a site cut
//!   off from the majority stops taking writes before the majority may promote another copy;
//! - a sync replica is recorded as outdated in the state before any write completes without it
//!   (the engine waits for [`Outdater::outdate`], which commits `OutdateCopy`), so the planner
//!   never promotes a copy that lacks an acknowledged write without `--force`;
//! - a replica persists the newest epoch it has seen (from the primary or from the state) before
//!   acting, so a deposed primary cannot write to it.
//!
//! Does not: decide promotions (the planner and operators do), or serve a copy it is not the
//! state's server for.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use consensus::state::{Command, CopyReport, CopyState, FabricState, Lag, NodeId, ReplicationMode};
use storage::BlockDevice;
use storage::nbd::server::{Exports, Limits};
use storage::repl::proto::{decode, encode};
use storage::repl::{
    FromReplica, History, Link, LinkError, Mode, Outdater, Primary, ReplConfig, ReplicaSpec,
    ReplicaState, ReplicaStore, ReplicatedDisk, ToReplica,
};
use tokio_util::sync::CancellationToken;
use wan::{Channel, Identity, Wan};

use crate::cluster::{BulkHandler, Cluster};
use crate::config::AgentConfig;
use crate::lease::LeaseHandle;

/// What this agent should hold of one volume.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Want {
    pub volume: String,
    /// Names the file: `<dir>/<name>.<uid>.img`.
    pub uid: u64,
    pub size: u64,
    pub epoch: u64,
    pub role: Role,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Role {
    /// Takes the writes; ships them to these sites.
    Primary {
        replicas: Vec<(String, ReplicationMode)>,
    },
    /// Applies what the primary ships.
    Replica,
}

/// The copies this agent (node `me` of `site`) should hold, by volume name.
pub fn wanted(state: &FabricState, me: NodeId, site: &str) -> BTreeMap<String, Want> {
    let mut out = BTreeMap::new();
    for v in state.volumes.values() {
        if !v.copies.contains_key(site) || state.volume_server(v, site) != Some(me) {
            continue;
        }
        let role = if v.primary == site {
            Role::Primary {
                replicas: v.replicas().map(|(s, m)| (s.to_string(), m)).collect(),
            }
        } else {
            Role::Replica
        };
        out.insert(
            v.spec.name.clone(),
            Want {
                volume: v.spec.name.clone(),
                uid: v.uid,
                size: v.spec.size,
                epoch: v.epoch,
                role,
            },
        );
    }
    out
}

/// The file of a volume's copy.
pub fn image_path(dir: &Path, volume: &str, uid: u64) -> PathBuf {
    dir.join(format!("{volume}.{uid}.img"))
}

/// `a..b, c..d` of (offset, length) ranges, at most 20 of them, and their total bytes.
fn ranges_text(ranges: &[(u64, u64)]) -> (String, u64) {
    let bytes = ranges.iter().map(|(_, len)| len).sum();
    let mut shown: Vec<String> = ranges
        .iter()
        .take(20)
        .map(|(offset, len)| format!("{offset}..{}", offset.saturating_add(*len)))
        .collect();
    if ranges.len() > 20 {
        shown.push("…".into());
    }
    (shown.join(", "), bytes)
}

/// The event for a resync that discarded what a copy held.
fn divergence_message(
    volume: &str,
    site: &str,
    divergent: &[(u64, u64)],
    overwritten: &[(u64, u64)],
) -> String {
    let (listed, bytes) = ranges_text(divergent);
    let mut m = format!(
        "volume {volume}: the copy at {site} held {} range(s), {bytes} bytes, of writes the primary lacks; discarded by its resync: {}",
        divergent.len(),
        if listed.is_empty() { "none" } else { &listed }
    );
    if !overwritten.is_empty() {
        let (listed, bytes) = ranges_text(overwritten);
        m.push_str(&format!(
            "; it also differed in {} range(s), {bytes} bytes, that the primary rewrote since it took over (that copy's versions there may hold writes the primary lacks), discarded too: {listed}",
            overwritten.len()
        ));
    }
    m
}

/// One copy this agent holds.
enum Held {
    Primary(Arc<PrimaryCopy>),
    Replica(Arc<ReplicaStore>),
}

/// A primary copy and what its reports need.
struct PrimaryCopy {
    disk: ReplicatedDisk,
    epoch: u64,
    /// The count of outdates of each replica, as the state had it at start plus ours since.
    outdates: Arc<Mutex<BTreeMap<String, u64>>>,
    last_report: Mutex<Option<LastReport>>,
    /// Resync reports already looked at.
    divergences_reported: Mutex<usize>,
    /// Replicas whose copy was outdated when this primary opened (e.g. the old primary).
    returning: std::collections::BTreeSet<String>,
    writers: Arc<std::sync::atomic::AtomicU32>,
}

/// When the last report was recorded, with the writers and copies it said.
type LastReport = (Instant, u32, BTreeMap<String, CopyReport>);

/// The volume service of one agent; see the module docs.
pub struct Volumes {
    me: NodeId,
    site: String,
    dir: PathBuf,
    cfg: ReplConfig,
    max_frame: usize,
    cluster: Arc<Cluster>,
    lease: LeaseHandle,
    held: Mutex<BTreeMap<String, (Want, Held)>>,
    shutdown: CancellationToken,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Volumes {
    pub fn new(
        config: &AgentConfig,
        cluster: Arc<Cluster>,
        lease: LeaseHandle,
        shutdown: CancellationToken,
    ) -> Arc<Self> {
        let cfg = ReplConfig {
            journal_limit: config.volumes.journal_bytes,
            ack_timeout: config.volumes.sync_timeout,
            ..ReplConfig::default()
        };
        Arc::new(Volumes {
            me: config.node_id,
            site: config.site.clone(),
            dir: config.volume_dir(),
            cfg,
            max_frame: config.wan.max_frame_bytes,
            cluster,
            lease,
            held: Mutex::new(BTreeMap::new()),
            shutdown,
        })
    }

    /// Runs until shutdown: every `tick`, and as soon as this node applies something new,
    /// holds what the local state says, fences on a lapsed lease, and reports the primaries'
    /// copies.
    pub async fn run(
        self: Arc<Self>,
        tick: Duration,
        mut applied: tokio::sync::watch::Receiver<u64>,
    ) {
        let mut every = tokio::time::interval(tick);
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // The applied index of a round that found nothing held and nothing wanted: until
        // something new is applied, a tick would find the same (and copy the state for it).
        let mut idle_at: Option<u64> = None;
        loop {
            let idle = idle_at == Some(self.cluster.state().applied_index());
            tokio::select! {
                _ = every.tick(), if !idle => {}
                _ = self.shutdown.cancelled() => break,
                r = applied.changed() => {
                    if r.is_err() {
                        // Raft or the follower stopped: the agent is shutting down.
                        self.shutdown.cancelled().await;
                        break;
                    }
                    applied.borrow_and_update();
                    // Coalesce a burst of applies into one round.
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            }
            let index = self.cluster.state().applied_index();
            let state = self.cluster.state().snapshot();
            self.reconcile(&state).await;
            self.report(&state).await;
            let nothing =
                lock(&self.held).is_empty() && wanted(&state, self.me, &self.site).is_empty();
            idle_at = nothing.then_some(index);
        }
        let all: Vec<_> = std::mem::take(&mut *lock(&self.held))
            .into_values()
            .collect();
        for (_, held) in all {
            stop(held).await;
        }
    }

    /// Stops what is no longer wanted (or wanted differently), then opens what is.
    async fn reconcile(&self, state: &FabricState) {
        let want = wanted(state, self.me, &self.site);
        // A primary opens only from a local state at least as new as the one the lease was
        // confirmed with: a restarted agent's state may still name it primary of an old epoch.
        let lease_ok = self.lease.is_valid(crate::clock::lease_now());
        let may_open_primary = lease_ok && state.revision >= self.lease.confirmed_revision();
        let stale: Vec<(Want, Held)> = {
            let mut held = lock(&self.held);
            let names: Vec<String> = held
                .iter()
                .filter(|(n, (w, h))| {
                    want.get(*n) != Some(w)
                        || matches!(h, Held::Primary(p) if p.disk.fenced().is_some() && lease_ok)
                })
                .map(|(n, _)| n.clone())
                .collect();
            names.iter().filter_map(|n| held.remove(n)).collect()
        };
        for (w, h) in stale {
            tracing::info!(volume = %w.volume, "closing this copy: {:?} at epoch {}", role_name(&w.role), w.epoch);
            stop(h).await;
        }
        for (name, w) in want {
            if lock(&self.held).contains_key(&name) {
                continue;
            }
            if matches!(w.role, Role::Primary { .. }) && !may_open_primary {
                continue; // Opened once the lease is confirmed and the state caught up.
            }
            match self.open(state, &w).await {
                Ok(h) => {
                    tracing::info!(volume = %name, epoch = w.epoch, "holding this copy as {}", role_name(&w.role));
                    lock(&self.held).insert(name, (w, h));
                }
                Err(e) => tracing::warn!(volume = %name, "cannot open this copy: {e}"),
            }
        }
        if !lease_ok {
            for (_, h) in lock(&self.held).values() {
                if let Held::Primary(p) = h
                    && p.disk.fenced().is_none()
                {
                    tracing::warn!("fencing volume writes: this agent's lease is not valid");
                    p.disk.set_fenced("this site's lease lapsed");
                }
            }
        }
    }

    async fn open(&self, state: &FabricState, w: &Want) -> anyhow::Result<Held> {
        let path = image_path(&self.dir, &w.volume, w.uid);
        let v = state
            .volumes
            .get(&w.volume)
            .ok_or_else(|| anyhow::anyhow!("volume {} is gone", w.volume))?;
        // Whatever the role, the copy first learns the epoch, so it refuses older primaries.
        let store = ReplicaStore::open(&path, &w.volume, w.size, self.cfg.chunk)?;
        raise_epoch(&store, w, self.cfg.chunk).await?;
        let Role::Primary { replicas } = &w.role else {
            return Ok(Held::Replica(Arc::new(store)));
        };
        drop(store);
        let disk = storage::FileDisk::open_or_create(&path, w.size)?;
        let mut specs = Vec::new();
        let mut links: HashMap<String, Arc<dyn Link>> = HashMap::new();
        let mut outdates = BTreeMap::new();
        let mut returning = std::collections::BTreeSet::new();
        for (site, mode) in replicas {
            let copy = &v.copies[site];
            if copy.state == CopyState::Outdated {
                returning.insert(site.clone());
            }
            outdates.insert(site.clone(), copy.outdates);
            specs.push(ReplicaSpec {
                name: site.clone(),
                mode: match mode {
                    ReplicationMode::Sync => Mode::Sync,
                    ReplicationMode::Async => Mode::Async,
                },
                history: History::Unknown,
                outdated: copy.state == CopyState::Outdated,
            });
            links.insert(
                site.clone(),
                Arc::new(WanLink {
                    wan: self.cluster.wan().clone(),
                    cluster: self.cluster.clone(),
                    volume: w.volume.clone(),
                    site: site.clone(),
                    max_frame: self.max_frame,
                }),
            );
        }
        let instance = crate::clock::unix_ms();
        let primary = Primary::new(
            &w.volume,
            w.epoch,
            instance,
            w.size,
            self.cfg.clone(),
            specs,
            Instant::now(),
        )?;
        let outdates = Arc::new(Mutex::new(outdates));
        let outdater = Arc::new(StateOutdater {
            cluster: self.cluster.clone(),
            outdates: outdates.clone(),
            me: self.me,
        });
        let disk =
            ReplicatedDisk::start(disk, primary, links, outdater, self.shutdown.child_token())?;
        Ok(Held::Primary(Arc::new(PrimaryCopy {
            disk,
            epoch: w.epoch,
            outdates,
            last_report: Mutex::new(None),
            divergences_reported: Mutex::new(0),
            returning,
            writers: Arc::new(Default::default()),
        })))
    }

    /// Proposes each primary's view of its copies when it changed, or every 5 s.
    async fn report(&self, state: &FabricState) {
        let primaries: Vec<(String, Arc<PrimaryCopy>)> = lock(&self.held)
            .iter()
            .filter_map(|(n, (_, h))| match h {
                Held::Primary(p) => Some((n.clone(), p.clone())),
                Held::Replica(_) => None,
            })
            .collect();
        for (name, p) in primaries {
            self.report_divergence(&name, &p).await;
            let copies = copy_reports(&p);
            let writers = p.writers.load(std::sync::atomic::Ordering::Relaxed);
            // A copy's state or the writers count goes out at once; a changed lag at most once a
            // second (every report is a Raft commit); and every 5 s in any case.
            let due = match &*lock(&p.last_report) {
                Some((at, last_writers, last)) => {
                    let states = |m: &BTreeMap<String, CopyReport>| {
                        m.iter()
                            .map(|(k, r)| (k.clone(), r.state, r.outdates))
                            .collect::<Vec<_>>()
                    };
                    states(last) != states(&copies)
                        || *last_writers != writers
                        || (*last != copies && at.elapsed() >= Duration::from_secs(1))
                        || at.elapsed() >= Duration::from_secs(5)
                }
                None => true,
            };
            let stale_in_state = state.volumes.get(&name).is_none_or(|v| v.epoch != p.epoch);
            if !due || stale_in_state {
                continue;
            }
            let cmd = Command::ReportVolume {
                volume: name.clone(),
                epoch: p.epoch,
                host: self.me,
                writers,
                copies: copies.clone(),
            };
            match self.cluster.propose(self.cluster.actor(), cmd).await {
                Ok(_) => *lock(&p.last_report) = Some((Instant::now(), writers, copies)),
                Err(e) => tracing::debug!(volume = %name, "report not recorded: {e}"),
            }
        }
    }

    /// Puts every new divergence a resync found in the event log: writes a returning copy had
    /// that this primary lacks, now overwritten. For a copy that was outdated when this primary
    /// opened (an old primary), chunks that differ where this primary also wrote since are
    /// listed too: that copy's versions there may hold writes this primary never had.
    async fn report_divergence(&self, name: &str, p: &PrimaryCopy) {
        let found = p.disk.resync_reports();
        let from = *lock(&p.divergences_reported);
        for d in found.iter().skip(from) {
            let overwritten: &[(u64, u64)] = if p.returning.contains(&d.replica) {
                &d.written_while_away
            } else {
                &[]
            };
            if !d.divergent.is_empty() || !overwritten.is_empty() {
                let message = divergence_message(name, &d.replica, &d.divergent, overwritten);
                if let Err(e) = self
                    .cluster
                    .propose(self.cluster.actor(), Command::RecordEvent { message })
                    .await
                {
                    tracing::warn!(volume = %name, "divergence not recorded: {e}");
                    return;
                }
            }
            *lock(&p.divergences_reported) += 1;
        }
    }

    /// The device an NBD client reaches as export `name`: this agent's primary copy.
    fn export(&self, name: &str) -> Option<Arc<dyn BlockDevice>> {
        match lock(&self.held).get(name) {
            Some((_, Held::Primary(p))) => {
                p.writers.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                Some(Arc::new(Counted {
                    disk: p.disk.clone(),
                    writers: p.writers.clone(),
                }))
            }
            _ => None,
        }
    }

    fn replica(&self, name: &str) -> Option<Arc<ReplicaStore>> {
        match lock(&self.held).get(name) {
            Some((_, Held::Replica(r))) => Some(r.clone()),
            _ => None,
        }
    }

    /// Binds the NBD server on this host's workload addresses and serves until shutdown.
    pub async fn serve_nbd(
        self: &Arc<Self>,
        addrs: Vec<SocketAddr>,
    ) -> anyhow::Result<Vec<tokio::task::JoinHandle<()>>> {
        let mut tasks = Vec::new();
        for addr in addrs {
            let listener = match tokio::net::TcpListener::bind(addr).await {
                Ok(l) => l,
                Err(e) if addr.is_ipv6() => {
                    tracing::warn!("NBD server not on {addr}: {e}");
                    continue;
                }
                Err(e) => anyhow::bail!("cannot bind the NBD server on {addr}: {e}"),
            };
            tracing::info!("NBD server on {addr}");
            let exports: Arc<dyn Exports> = Arc::new(AgentExports(self.clone()));
            tasks.push(tokio::spawn(storage::nbd::server::serve(
                listener,
                exports,
                Limits::default(),
                self.shutdown.clone(),
            )));
        }
        Ok(tasks)
    }
}

fn role_name(r: &Role) -> &'static str {
    match r {
        Role::Primary { .. } => "primary",
        Role::Replica => "replica",
    }
}

/// Persists the state's epoch in the copy's meta (the replica ignores an older one).
async fn raise_epoch(store: &ReplicaStore, w: &Want, chunk: u32) -> anyhow::Result<()> {
    let hello = ToReplica::Hello {
        volume: w.volume.clone(),
        epoch: w.epoch,
        primary: 0,
        size: w.size,
        chunk,
    };
    match store.handle(hello).await {
        FromReplica::Refused { reason, .. } => anyhow::bail!("{reason}"),
        _ => Ok(()),
    }
}

async fn stop(h: Held) {
    match h {
        Held::Primary(p) => p.disk.shutdown().await,
        Held::Replica(r) => r.stop().await,
    }
}

/// The primary's view of each replica, as the state records it.
fn copy_reports(p: &PrimaryCopy) -> BTreeMap<String, CopyReport> {
    let outdates = lock(&p.outdates).clone();
    p.disk
        .status()
        .into_iter()
        .map(|s| {
            let lag = Lag {
                writes: s.lag_writes,
                bytes: s.lag_bytes,
                age_ms: u64::try_from(s.lag_age.as_millis()).unwrap_or(u64::MAX),
                ..Lag::default()
            };
            let (state, lag) = match s.state {
                ReplicaState::InSync => (CopyState::InSync, lag),
                // A streaming sync replica's unacknowledged writes are not acknowledged to any
                // client either: it holds every acknowledged write.
                ReplicaState::Lagging { .. } if s.mode == Mode::Sync => (CopyState::InSync, lag),
                ReplicaState::Lagging { .. } | ReplicaState::Disconnected { .. } => {
                    (CopyState::Lagging, lag)
                }
                ReplicaState::Resyncing {
                    done_bytes,
                    total_bytes,
                } => (
                    CopyState::Resyncing,
                    Lag {
                        resync_done: done_bytes,
                        resync_total: total_bytes,
                        ..lag
                    },
                ),
                ReplicaState::Outdated => (CopyState::Outdated, lag),
            };
            let report = CopyReport {
                state,
                lag,
                outdates: outdates.get(&s.name).copied().unwrap_or(0),
            };
            (s.name, report)
        })
        .collect()
}

/// A primary copy as one NBD connection sees it; counts open connections as writers.
struct Counted {
    disk: ReplicatedDisk,
    writers: Arc<std::sync::atomic::AtomicU32>,
}

impl Drop for Counted {
    fn drop(&mut self) {
        self.writers
            .fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
    }
}

#[async_trait::async_trait]
impl BlockDevice for Counted {
    fn size(&self) -> u64 {
        self.disk.size()
    }
    fn read_only(&self) -> bool {
        self.disk.read_only()
    }
    async fn read(&self, offset: u64, len: u32) -> storage::device::DeviceResult<Vec<u8>> {
        self.disk.read(offset, len).await
    }
    async fn write(
        &self,
        offset: u64,
        data: Vec<u8>,
        fua: bool,
    ) -> storage::device::DeviceResult<()> {
        self.disk.write(offset, data, fua).await
    }
    async fn write_zeroes(
        &self,
        offset: u64,
        len: u32,
        fua: bool,
    ) -> storage::device::DeviceResult<()> {
        self.disk.write_zeroes(offset, len, fua).await
    }
    async fn flush(&self) -> storage::device::DeviceResult<()> {
        self.disk.flush().await
    }
}

struct AgentExports(Arc<Volumes>);

impl Exports for AgentExports {
    fn lookup(&self, name: &str) -> Option<Arc<dyn BlockDevice>> {
        self.0.export(name)
    }
    fn list(&self) -> Vec<String> {
        lock(&self.0.held)
            .iter()
            .filter(|(_, (_, h))| matches!(h, Held::Primary(_)))
            .map(|(n, _)| n.clone())
            .collect()
    }
}

/// Replication requests arriving on the WAN's `bulk` channel.
impl BulkHandler for Volumes {
    fn handle<'a>(
        &'a self,
        peer: &'a Identity,
        request: Vec<u8>,
    ) -> Pin<Box<dyn std::future::Future<Output = anyhow::Result<Vec<u8>>> + Send + 'a>> {
        Box::pin(async move {
            let msg: ToReplica = decode(&request, self.max_frame)?;
            metrics::counter!(
                "fabric_volume_received_bytes_total",
                "volume" => msg.volume().to_string()
            )
            .increment(request.len() as u64);
            let reply = match self.replica(msg.volume()) {
                Some(store) => store.handle(msg).await,
                None => {
                    tracing::debug!(
                        "{peer} sent replication for volume {}, which this agent does not hold as a replica",
                        msg.volume()
                    );
                    FromReplica::Refused {
                        reason: storage::repl::proto::Refusal::Io(format!(
                            "node {} does not hold volume {} as a replica",
                            self.me,
                            msg.volume()
                        )),
                        epoch_seen: 0,
                    }
                }
            };
            Ok(encode(&reply, self.max_frame)?)
        })
    }
}

/// The link to the copy of `volume` at `site`: the WAN bulk channel to that copy's server,
/// looked up in the local state on every call (it changes when hosts fail).
struct WanLink {
    wan: Arc<Wan>,
    cluster: Arc<Cluster>,
    volume: String,
    site: String,
    max_frame: usize,
}

#[async_trait::async_trait]
impl Link for WanLink {
    async fn call(&self, msg: ToReplica) -> Result<FromReplica, LinkError> {
        let target = self.cluster.state().read(|s| {
            let v = s.volumes.get(&self.volume)?;
            let host = s.hosts.get(&s.volume_server(v, &self.site)?)?;
            Some((host.id, host.address.clone()))
        });
        let (id, addr) = target.ok_or_else(|| {
            LinkError::Unreachable(format!("no host of site {} is up", self.site))
        })?;
        let addr: SocketAddr = addr
            .parse()
            .map_err(|_| LinkError::Unreachable(format!("host {id} has a bad address {addr}")))?;
        let body = encode(&msg, self.max_frame).map_err(|e| LinkError::Frame(e.to_string()))?;
        let reply = self
            .wan
            .call(addr, Some(id), Channel::Bulk, &body)
            .await
            .map_err(|e| match e {
                wan::WanError::Timeout { after, .. } => LinkError::Timeout(after),
                e => LinkError::Unreachable(e.to_string()),
            })?;
        // Bytes the replica received and answered (attempts that got no answer do not count).
        metrics::counter!(
            "fabric_volume_sent_bytes_total",
            "volume" => self.volume.clone(),
            "site" => self.site.clone()
        )
        .increment(body.len() as u64);
        decode(&reply, self.max_frame).map_err(|e| LinkError::Frame(e.to_string()))
    }
}

/// Records outdates in the state (committed before the engine goes on without the replica).
struct StateOutdater {
    cluster: Arc<Cluster>,
    outdates: Arc<Mutex<BTreeMap<String, u64>>>,
    me: NodeId,
}

#[async_trait::async_trait]
impl Outdater for StateOutdater {
    async fn outdate(&self, volume: &str, replica: &str, epoch: u64) -> Result<(), String> {
        let count = {
            let mut o = lock(&self.outdates);
            let c = o.entry(replica.to_string()).or_default();
            *c += 1;
            *c
        };
        let cmd = Command::OutdateCopy {
            volume: volume.to_string(),
            site: replica.to_string(),
            epoch,
            outdates: count,
            reason: format!(
                "its primary on node {} goes on without it (no durable ack in time)",
                self.me
            ),
        };
        self.cluster
            .propose(self.cluster.actor(), cmd)
            .await
            .map(|_| ())
            .map_err(|e| e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use consensus::fixture::{apply, host, site, volume};

    fn fabric() -> FabricState {
        let mut s = FabricState::default();
        for name in ["s1", "s2", "s3"] {
            apply(&mut s, site(name, 1));
        }
        for (id, name) in [(1, "s1"), (2, "s1"), (3, "s2"), (4, "s3")] {
            apply(&mut s, host(id, name, vec![]));
        }
        apply(&mut s, volume("db", 1 << 20, "s1", &["s2:sync"]));
        s
    }

    #[test]
    fn the_lowest_up_host_of_each_site_holds_its_copy_until_it_goes_down() {
        let mut s = fabric();
        let w = wanted(&s, 1, "s1");
        assert_eq!(
            w["db"].role,
            Role::Primary {
                replicas: vec![("s2".into(), ReplicationMode::Sync)]
            }
        );
        assert!(wanted(&s, 2, "s1").is_empty());
        assert_eq!(wanted(&s, 3, "s2")["db"].role, Role::Replica);
        assert!(wanted(&s, 4, "s3").is_empty(), "s3 holds no copy");
        apply(
            &mut s,
            Command::SetHostHealth {
                id: 1,
                health: consensus::state::Health::Down,
                reason: "test".into(),
            },
        );
        assert!(wanted(&s, 1, "s1").is_empty());
        assert!(matches!(
            wanted(&s, 2, "s1")["db"].role,
            Role::Primary { .. }
        ));
    }

    #[test]
    fn the_divergence_event_lists_what_only_the_copy_had_and_what_the_primary_rewrote() {
        let m = divergence_message("db", "s1", &[(0, 4096), (8192, 4096)], &[]);
        assert_eq!(
            m,
            "volume db: the copy at s1 held 2 range(s), 8192 bytes, of writes the primary lacks; discarded by its resync: 0..4096, 8192..12288"
        );
        let m = divergence_message("db", "s1", &[], &[(65536, 65536)]);
        assert!(
            m.starts_with("volume db: the copy at s1 held 0 range(s), 0 bytes"),
            "{m}"
        );
        assert!(
            m.contains("differed in 1 range(s), 65536 bytes, that the primary rewrote"),
            "{m}"
        );
        let many: Vec<(u64, u64)> = (0..25).map(|i| (i * 4096, 4096)).collect();
        assert!(divergence_message("db", "s1", &many, &[]).ends_with(", …"));
    }

    #[test]
    fn a_promotion_swaps_the_roles_under_the_next_epoch() {
        let mut s = fabric();
        apply(
            &mut s,
            Command::PromoteVolume {
                volume: "db".into(),
                site: "s2".into(),
                epoch: 2,
                force: true,
                reason: "test".into(),
            },
        );
        let at_s2 = &wanted(&s, 3, "s2")["db"];
        assert_eq!(at_s2.epoch, 2);
        assert_eq!(
            at_s2.role,
            Role::Primary {
                replicas: vec![("s1".into(), ReplicationMode::Sync)]
            }
        );
        assert_eq!(wanted(&s, 1, "s1")["db"].role, Role::Replica);
    }
}
