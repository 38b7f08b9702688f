//! The primary's async shell: [`ReplicatedDisk`], a [`BlockDevice`] over a local [`FileDisk`]
//! whose writes are replicated by the [`Primary`] state machine.
//!
//! Tasks: one per replica (sends the core's requests over its [`Link`], one at a time, with
//! the ack timeout; on failure reports `link_down`, waits `retry`, reports `link_up`), one
//! ticker (`poll`, metrics), and short tasks for local chunk reads/hashes and for outdating
//! through the [`Outdater`]. All stop on the shutdown token.
//!
//! Invariant: local writes are serialized with LSN numbering (one lock held from `submit` to the
//! end of the local write), and resync reads take the same lock, so the replicas apply writes in
//! the order the primary's file did and a chunk read reflects every write numbered before it.
//!
//! Costs: one request in flight per replica, so a replica's throughput is at most one batch
//! (≤ `max_message`) per round trip; local writes do not overlap each other.
//! Changing the replica set or the epoch: build a new `ReplicatedDisk` (the agent's choice).
//!
//! Does not: know the fabric state (the `Outdater` records outdates there), or retry a
//! replica that is deposed (the disk is fenced instead).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::ReplConfig;
use super::chunks::{hash_chunks, read_chunks};
use super::primary::{Action, DiffReport, Primary, ReplicaStatus};
use super::proto::{FromReplica, Lsn, Op, ToReplica};
use crate::device::{BlockDevice, DeviceError, DeviceResult, FileDisk, check_range};

/// Why a request to a replica got no reply.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum LinkError {
    #[error("replica unreachable: {0}")]
    Unreachable(String),
    #[error("reply lost: {0}")]
    Lost(String),
    #[error("no reply within {0:?}")]
    Timeout(std::time::Duration),
    #[error("bad frame: {0}")]
    Frame(String),
}

/// The replicated disk cannot start.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum ShellError {
    #[error("replica {0:?} has no link")]
    NoLink(String),
    #[error("a link is given for {0:?}, which is not a replica of this volume")]
    UnknownReplica(String),
}

/// A request/reply channel to one replica (the agent implements it over the WAN bulk stream).
#[async_trait::async_trait]
pub trait Link: Send + Sync {
    async fn call(&self, msg: ToReplica) -> Result<FromReplica, LinkError>;
}

/// Records replica states in the fabric.
#[async_trait::async_trait]
pub trait Outdater: Send + Sync {
    /// Durably records `replica` of `volume` as outdated (must not promote) at `epoch`.
    async fn outdate(&self, volume: &str, replica: &str, epoch: u64) -> Result<(), String>;
    /// `replica` caught up again; writes wait for it from now on.
    async fn in_sync(&self, volume: &str, replica: &str, epoch: u64) -> Result<(), String> {
        let _ = (volume, replica, epoch);
        Ok(())
    }
}

type Waiter = oneshot::Sender<DeviceResult<()>>;

struct Inner {
    disk: FileDisk,
    cfg: ReplConfig,
    volume: String,
    epoch: u64,
    core: Mutex<Primary>,
    write_lock: tokio::sync::Mutex<()>,
    waiters: Mutex<HashMap<Lsn, Waiter>>,
    queues: HashMap<String, mpsc::UnboundedSender<(u64, ToReplica)>>,
    fenced: Mutex<Option<String>>,
    reports: Mutex<Vec<DiffReport>>,
    outdater: Arc<dyn Outdater>,
    shutdown: CancellationToken,
    tasks: TaskTracker,
}

/// A replicated volume's primary copy, served as a block device.
#[derive(Clone)]
pub struct ReplicatedDisk {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for ReplicatedDisk {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReplicatedDisk")
            .field("volume", &self.inner.volume)
            .field("epoch", &self.inner.epoch)
            .finish_non_exhaustive()
    }
}

impl ReplicatedDisk {
    /// Starts replicating `disk` through `primary` (whose replicas are reached by `links`, keyed
    /// by replica name) until `shutdown`.
    pub fn start(
        disk: FileDisk,
        primary: Primary,
        links: HashMap<String, Arc<dyn Link>>,
        outdater: Arc<dyn Outdater>,
        shutdown: CancellationToken,
    ) -> Result<Self, ShellError> {
        let names: Vec<String> = primary
            .status(Instant::now())
            .into_iter()
            .map(|s| s.name)
            .collect();
        if let Some(missing) = names.iter().find(|n| !links.contains_key(*n)) {
            return Err(ShellError::NoLink(missing.clone()));
        }
        if let Some(extra) = links.keys().find(|l| !names.contains(l)) {
            return Err(ShellError::UnknownReplica(extra.clone()));
        }
        let vol = primary.volume().clone();
        let mut queues = HashMap::new();
        let mut receivers = Vec::new();
        for (name, link) in links {
            let (tx, rx) = mpsc::unbounded_channel();
            queues.insert(name.clone(), tx);
            receivers.push((name, link, rx));
        }
        let inner = Arc::new(Inner {
            disk,
            cfg: vol.cfg.clone(),
            volume: vol.name.clone(),
            epoch: vol.epoch,
            core: Mutex::new(primary),
            write_lock: tokio::sync::Mutex::new(()),
            waiters: Mutex::new(HashMap::new()),
            queues,
            fenced: Mutex::new(None),
            reports: Mutex::new(Vec::new()),
            outdater,
            shutdown,
            tasks: TaskTracker::new(),
        });
        for (name, link, rx) in receivers {
            inner
                .tasks
                .spawn(replica_loop(inner.clone(), name, link, rx));
        }
        inner.tasks.spawn(ticker(inner.clone()));
        Ok(Self { inner })
    }

    /// Where each replica stands.
    pub fn status(&self) -> Vec<ReplicaStatus> {
        lock(&self.inner.core).status(Instant::now())
    }

    /// Memory `replica` costs the primary: journal bytes and dirty-chunk bits (`None` for a
    /// name that is not a replica of this volume).
    pub fn memory_of(&self, replica: &str) -> Option<(u64, usize)> {
        lock(&self.inner.core).memory_of(replica)
    }

    /// Refuses writes from now on (and fails writes still waiting) with `DeviceError::Fenced`.
    pub fn set_fenced(&self, reason: impl Into<String>) {
        self.inner.fence(reason.into());
    }

    pub fn fenced(&self) -> Option<String> {
        lock(&self.inner.fenced).clone()
    }

    /// Resync rounds that found chunks differing although this primary did not write them.
    pub fn divergent(&self) -> Vec<DiffReport> {
        lock(&self.inner.reports)
            .iter()
            .filter(|r| !r.divergent.is_empty())
            .cloned()
            .collect()
    }

    /// Every resync round's difference report.
    pub fn resync_reports(&self) -> Vec<DiffReport> {
        lock(&self.inner.reports).clone()
    }

    /// Stops every task and waits for them; writes still waiting fail with `ShuttingDown`.
    pub async fn shutdown(&self) {
        self.inner.shutdown.cancel();
        self.inner.tasks.close();
        self.inner.tasks.wait().await;
        lock(&self.inner.waiters).clear();
    }

    async fn replicate(&self, op: Op, fua: bool) -> DeviceResult<()> {
        let inner = &self.inner;
        if let Some(reason) = lock(&inner.fenced).clone() {
            return Err(DeviceError::Fenced(reason));
        }
        let (tx, rx) = oneshot::channel();
        let guard = inner.write_lock.lock().await;
        let (lsn, actions) = {
            let mut core = lock(&inner.core);
            // Checked again under the core lock: a fence drains the waiters, and a write
            // numbered after it must not slip through.
            let fenced = lock(&inner.fenced);
            if let Some(reason) = fenced.clone() {
                return Err(DeviceError::Fenced(reason));
            }
            let (lsn, actions) = core.submit(op.clone(), Instant::now());
            lock(&inner.waiters).insert(lsn, tx);
            drop(fenced);
            (lsn, actions)
        };
        inner.execute(actions);
        let local = match op {
            Op::Write { offset, data } => inner.disk.write(offset, data, fua).await,
            Op::Zeroes { offset, len } => write_zeroes(&inner.disk, offset, len, fua).await,
        };
        drop(guard);
        if let Err(e) = local {
            // The replicas may now hold a write this copy lacks: it is no longer trustworthy.
            inner.fence(format!("local write failed: {e}"));
            return Err(e);
        }
        let actions = lock(&inner.core).local_done(lsn);
        inner.execute(actions);
        tokio::select! {
            r = rx => r.unwrap_or(Err(DeviceError::ShuttingDown)),
            () = inner.shutdown.cancelled() => Err(DeviceError::ShuttingDown),
        }
    }

    fn check_write(&self, offset: u64, len: u64) -> DeviceResult<()> {
        check_range(offset, len, self.inner.disk.size())?;
        match lock(&self.inner.fenced).clone() {
            Some(reason) => Err(DeviceError::Fenced(reason)),
            None => Ok(()),
        }
    }
}

#[async_trait::async_trait]
impl BlockDevice for ReplicatedDisk {
    fn size(&self) -> u64 {
        self.inner.disk.size()
    }

    fn read_only(&self) -> bool {
        lock(&self.inner.fenced).is_some()
    }

    async fn read(&self, offset: u64, len: u32) -> DeviceResult<Vec<u8>> {
        self.inner.disk.read(offset, len).await
    }

    async fn write(&self, offset: u64, data: Vec<u8>, fua: bool) -> DeviceResult<()> {
        self.check_write(offset, data.len() as u64)?;
        self.replicate(Op::Write { offset, data }, fua).await
    }

    async fn write_zeroes(&self, offset: u64, len: u32, fua: bool) -> DeviceResult<()> {
        self.check_write(offset, u64::from(len))?;
        let op = Op::Zeroes {
            offset,
            len: u64::from(len),
        };
        self.replicate(op, fua).await
    }

    async fn flush(&self) -> DeviceResult<()> {
        // Completed writes are already on every in-sync sync replica durably.
        self.inner.disk.flush().await
    }
}

impl Inner {
    fn apply(self: &Arc<Self>, f: impl FnOnce(&mut Primary, Instant) -> Vec<Action>) {
        let actions = f(&mut lock(&self.core), Instant::now());
        self.execute(actions);
    }

    fn fence(&self, reason: String) {
        tracing::warn!(volume = %self.volume, %reason, "volume fenced");
        // Held while the waiters are failed, so no write registers in between.
        let mut fenced = lock(&self.fenced);
        fenced.get_or_insert(reason.clone());
        for (_, w) in lock(&self.waiters).drain() {
            let _ = w.send(Err(DeviceError::Fenced(reason.clone())));
        }
    }

    fn execute(self: &Arc<Self>, actions: Vec<Action>) {
        for action in actions {
            self.execute_one(action);
        }
    }

    fn execute_one(self: &Arc<Self>, action: Action) {
        match action {
            Action::Send {
                replica,
                ticket,
                msg,
            } => {
                if let Some(q) = self.queues.get(&replica) {
                    let _ = q.send((ticket, msg));
                }
            }
            Action::ReadChunks {
                replica,
                ticket,
                chunks,
            } => {
                self.tasks
                    .spawn(local_chunks(self.clone(), replica, ticket, chunks, false));
            }
            Action::HashChunks {
                replica,
                ticket,
                chunks,
            } => {
                self.tasks
                    .spawn(local_chunks(self.clone(), replica, ticket, chunks, true));
            }
            Action::Complete(lsn) => {
                if let Some(w) = lock(&self.waiters).remove(&lsn) {
                    let _ = w.send(Ok(()));
                }
            }
            Action::Outdate(replica) => {
                self.tasks.spawn(outdate(self.clone(), replica));
            }
            Action::InSync(replica) => {
                tracing::info!(volume = %self.volume, %replica, "sync replica caught up");
                let inner = self.clone();
                self.tasks.spawn(async move {
                    if let Err(e) = inner.outdater.in_sync(&inner.volume, &replica, inner.epoch).await {
                        tracing::warn!(volume = %inner.volume, %replica, error = %e, "recording in-sync failed");
                    }
                });
            }
            Action::Deposed {
                replica,
                epoch_seen,
            } => {
                self.fence(format!(
                    "replica {replica} has seen epoch {epoch_seen}, newer than this primary's {}",
                    self.epoch
                ));
            }
            Action::ResyncDone(report) => {
                if !report.divergent.is_empty() {
                    tracing::warn!(volume = %self.volume, replica = %report.replica,
                        divergent = ?report.divergent, "replica held writes this primary lacks; overwritten");
                }
                lock(&self.reports).push(report);
            }
            Action::Failed { replica, reason } => {
                tracing::warn!(volume = %self.volume, %replica, %reason, "replica request failed");
            }
        }
    }
}

/// Sends this replica's requests one at a time; reconnects after failures.
async fn replica_loop(
    inner: Arc<Inner>,
    name: String,
    link: Arc<dyn Link>,
    mut rx: mpsc::UnboundedReceiver<(u64, ToReplica)>,
) {
    inner.apply(|c, _| c.link_up(&name));
    loop {
        let (ticket, msg) = tokio::select! {
            m = rx.recv() => match m { Some(m) => m, None => return },
            () = inner.shutdown.cancelled() => return,
        };
        let call = tokio::time::timeout(inner.cfg.ack_timeout, link.call(msg));
        let result = tokio::select! {
            r = call => r.unwrap_or(Err(LinkError::Timeout(inner.cfg.ack_timeout))),
            () = inner.shutdown.cancelled() => return,
        };
        match result {
            Ok(reply) => inner.apply(|c, now| c.handle_reply(&name, ticket, reply, now)),
            Err(e) => {
                tracing::debug!(volume = %inner.volume, replica = %name, error = %e, "replica link down");
                inner.apply(|c, now| c.link_down(&name, now));
            }
        }
        let down = lock(&inner.core).is_down(&name);
        if down && lock(&inner.fenced).is_none() {
            tokio::select! {
                () = tokio::time::sleep(inner.cfg.retry) => {}
                () = inner.shutdown.cancelled() => return,
            }
            inner.apply(|c, _| c.link_up(&name));
        }
    }
}

/// Reads or hashes local chunks, each under the write lock: a chunk read then holds every write
/// numbered before it (later ones mark it dirty again), and writes wait one chunk at most.
async fn local_chunks(
    inner: Arc<Inner>,
    replica: String,
    ticket: u64,
    chunks: Vec<u64>,
    hash: bool,
) {
    let chunk = inner.cfg.chunk;
    let mut data = Vec::with_capacity(chunks.len());
    let mut hashes = Vec::with_capacity(chunks.len());
    for i in chunks {
        let _guard = inner.write_lock.lock().await;
        let read = if hash {
            hash_chunks(&inner.disk, chunk, &[i])
                .await
                .map(|h| hashes.extend(h))
        } else {
            read_chunks(&inner.disk, chunk, &[i])
                .await
                .map(|d| data.extend(d))
        };
        if let Err(e) = read {
            inner.fence(format!("reading local chunk {i} failed: {e}"));
            return;
        }
    }
    if hash {
        inner.apply(|c, _| c.handle_hashes(&replica, ticket, hashes));
    } else {
        inner.apply(|c, _| c.handle_chunks(&replica, ticket, data));
    }
}

/// Records the outdate in the fabric (retrying) and only then lets writes go on without it.
async fn outdate(inner: Arc<Inner>, replica: String) {
    loop {
        match inner
            .outdater
            .outdate(&inner.volume, &replica, inner.epoch)
            .await
        {
            Ok(()) => {
                tracing::warn!(volume = %inner.volume, %replica, "sync replica outdated");
                inner.apply(|c, _| c.outdated(&replica));
                return;
            }
            Err(e) => {
                tracing::warn!(volume = %inner.volume, %replica, error = %e, "outdating failed; writes keep waiting");
            }
        }
        tokio::select! {
            () = tokio::time::sleep(inner.cfg.retry) => {}
            () = inner.shutdown.cancelled() => return,
        }
    }
}

/// Polls the core for timeouts and publishes lag metrics.
async fn ticker(inner: Arc<Inner>) {
    let mut tick = tokio::time::interval(inner.cfg.tick);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            () = inner.shutdown.cancelled() => return,
        }
        inner.apply(|c, now| c.poll(now));
        let status = lock(&inner.core).status(Instant::now());
        for s in status {
            let labels = [
                ("volume", inner.volume.clone()),
                ("replica", s.name.clone()),
            ];
            metrics::gauge!("storage_replica_lag_bytes", &labels).set(s.lag_bytes as f64);
            metrics::gauge!("storage_replica_lag_writes", &labels).set(s.lag_writes as f64);
            metrics::gauge!("storage_replica_lag_seconds", &labels).set(s.lag_age.as_secs_f64());
        }
    }
}

/// Writes zeroes in pieces of at most 1 MiB (a TRIM may cover the whole volume).
async fn write_zeroes(disk: &FileDisk, offset: u64, len: u64, fua: bool) -> DeviceResult<()> {
    let mut done = 0;
    while done < len {
        let n = (len - done).min(1 << 20);
        let last = done + n == len;
        disk.write_zeroes(offset + done, n as u32, fua && last)
            .await?;
        done += n;
    }
    Ok(())
}

/// Locks a std mutex; a poisoned one (a panic elsewhere) still holds consistent data here.
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}
