//! The in-process testbed of `sitectl bench replication`: a throw-away fabric PKI, two WAN
//! endpoints on 127.0.0.1 (the primary's and the replica's), and the link emulator's UDP
//! forwarder between them, so every replication request crosses an emulated WAN inside QUIC
//! with mutual TLS, as between two agents.
//!
//! The replica side answers the `bulk` channel with [`ReplicaStore`]s (one per volume name) and
//! the `control` channel with an empty reply, which is the ping the bench measures the RTT
//! with. The primary side reaches a replica through a [`BenchLink`], which counts the encoded
//! bytes both ways and can be cut (its calls then fail at once, as an unreachable peer does).
//!
//! Does not: run an agent, Raft or the volume service; the bench measures the replication
//! engine and the transport, not the fabric around them.

use std::collections::HashMap;
use std::future::Future;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::Path;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use emu::{Direction, Emulator, LinkParams, Route, UdpForwarder};
use storage::repl::proto::{Refusal, decode, encode};
use storage::repl::{FromReplica, Link, LinkError, ReplicaStore, ToReplica};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use wan::pki::{self, Validity};
use wan::{Channel, FabricTls, Handler, Identity, Role, TlsFiles, Wan, WanConfig};

/// Site names of the two ends of the emulated link.
pub const PRIMARY_SITE: &str = "primary";
pub const REPLICA_SITE: &str = "replica";
/// The replica endpoint's node id (its certificate's identity).
const REPLICA_NODE: u64 = 2;

/// Two WAN endpoints joined by an emulated link; stopped by [`Testbed::close`].
pub struct Testbed {
    primary: Arc<Wan>,
    replica: Arc<Wan>,
    emu: Arc<Emulator>,
    /// The forwarder's listener: the primary sends here to reach the replica.
    via: SocketAddr,
    stores: Arc<Stores>,
    shutdown: CancellationToken,
    /// The replica's server and the forwarder.
    tasks: TaskTracker,
}

/// The replica side's volumes, by name.
#[derive(Default)]
struct Stores {
    by_volume: Mutex<HashMap<String, Arc<ReplicaStore>>>,
    /// Time spent applying requests (decode, write, fsync, encode), nanoseconds.
    busy_nanos: AtomicU64,
}

struct ReplicaSide {
    stores: Arc<Stores>,
    max_frame: usize,
}

impl Handler for ReplicaSide {
    fn handle(
        &self,
        _peer: Identity,
        channel: Channel,
        request: Vec<u8>,
    ) -> Pin<Box<dyn Future<Output = Result<Vec<u8>, anyhow::Error>> + Send + '_>> {
        Box::pin(async move {
            match channel {
                // The ping: an empty request answered at once.
                Channel::Control => Ok(Vec::new()),
                Channel::Bulk => {
                    let started = Instant::now();
                    let msg: ToReplica = decode(&request, self.max_frame)?;
                    let store = lock(&self.stores.by_volume).get(msg.volume()).cloned();
                    let reply = match store {
                        Some(store) => store.handle(msg).await,
                        None => FromReplica::Refused {
                            reason: Refusal::Io(format!(
                                "the bench replica holds no volume {:?}",
                                msg.volume()
                            )),
                            epoch_seen: 0,
                        },
                    };
                    let reply = encode(&reply, self.max_frame)?;
                    self.stores
                        .busy_nanos
                        .fetch_add(nanos(started.elapsed()), Ordering::SeqCst);
                    Ok(reply)
                }
                Channel::Raft => anyhow::bail!("the bench replica serves no raft channel"),
            }
        })
    }
}

fn tls(dir: &Path, node: &str, site: &str) -> anyhow::Result<FabricTls> {
    let id = Identity::new(node, site, Role::Agent)?;
    let issued = pki::issue(dir, &id, Validity::days(1))?;
    let tls = FabricTls::load(&TlsFiles {
        ca: pki::ca_cert_path(dir),
        cert: issued.cert,
        key: issued.key,
    })?;
    Ok(tls)
}

fn loopback() -> SocketAddr {
    SocketAddr::from((Ipv4Addr::LOCALHOST, 0))
}

impl Testbed {
    /// Creates a fabric CA and two node certificates under `pki_dir`, binds both endpoints and
    /// the forwarder (a perfect wire until [`Testbed::set_link`]).
    pub async fn start(pki_dir: &Path, request_timeout: Duration) -> anyhow::Result<Self> {
        pki::init_ca(pki_dir, "bench").context("bench fabric CA")?;
        let config = WanConfig {
            request_timeout,
            ..WanConfig::default()
        };
        let max_frame = config.max_frame;
        let shutdown = CancellationToken::new();
        let stores = Arc::new(Stores::default());
        let tasks = TaskTracker::new();

        let replica = Wan::bind(
            loopback(),
            &tls(pki_dir, "2", REPLICA_SITE)?,
            config.clone(),
        )?;
        let replica_addr = replica.local_addr()?;
        let side = Arc::new(ReplicaSide {
            stores: stores.clone(),
            max_frame,
        });
        tasks.spawn(replica.clone().serve(side, shutdown.clone()));

        let emu = Arc::new(Emulator::new(1));
        emu.add_link(
            PRIMARY_SITE,
            REPLICA_SITE,
            LinkParams::default(),
            LinkParams::default(),
        )?;
        let route = Route {
            listen: loopback(),
            target: replica_addr,
            from: PRIMARY_SITE.into(),
            to: REPLICA_SITE.into(),
        };
        let forwarder = UdpForwarder::bind(emu.clone(), route).await?;
        let via = forwarder.local_addr();
        tasks.spawn(forwarder.run(shutdown.clone()));

        let primary = Wan::bind(loopback(), &tls(pki_dir, "1", PRIMARY_SITE)?, config)?;
        Ok(Self {
            primary,
            replica,
            emu,
            via,
            stores,
            shutdown,
            tasks,
        })
    }

    /// Both directions get `rtt / 2` of delay and a `rate_bps` cap.
    pub fn set_link(&self, rtt: Duration, rate_bps: u64) -> anyhow::Result<()> {
        let params = LinkParams {
            delay: rtt / 2,
            rate_bps: Some(rate_bps),
            ..LinkParams::default()
        };
        self.emu
            .set(PRIMARY_SITE, REPLICA_SITE, Direction::Both, params)?;
        Ok(())
    }

    /// Round-trip times of `n` empty requests over the link, one after the other.
    pub async fn ping(&self, n: usize) -> anyhow::Result<Vec<Duration>> {
        let mut rtts = Vec::with_capacity(n);
        for _ in 0..n {
            let started = Instant::now();
            self.primary
                .call(self.via, Some(REPLICA_NODE), Channel::Control, &[])
                .await
                .context("ping over the emulated link")?;
            rtts.push(started.elapsed());
        }
        Ok(rtts)
    }

    /// UDP payload bytes the emulator has delivered, both directions (QUIC and TLS overhead,
    /// acknowledgements and pings included).
    pub fn wire_bytes(&self) -> u64 {
        self.emu
            .status()
            .links
            .iter()
            .map(|l| l.a_to_b.stats.bytes + l.b_to_a.stats.bytes)
            .sum()
    }

    /// Time the replica side spent handling replication requests so far.
    pub fn replica_busy(&self) -> Duration {
        Duration::from_nanos(self.stores.busy_nanos.load(Ordering::SeqCst))
    }

    /// Serves `store` as the replica of `volume`.
    pub fn add_replica(&self, volume: &str, store: Arc<ReplicaStore>) {
        lock(&self.stores.by_volume).insert(volume.to_owned(), store);
    }

    pub fn remove_replica(&self, volume: &str) {
        lock(&self.stores.by_volume).remove(volume);
    }

    /// A new link from the primary side to the replica side.
    pub fn link(&self) -> Arc<BenchLink> {
        Arc::new(BenchLink {
            wan: self.primary.clone(),
            via: self.via,
            max_frame: self.primary.config().max_frame,
            bytes: AtomicU64::new(0),
            calls: AtomicU64::new(0),
            call_nanos: AtomicU64::new(0),
            cut: AtomicBool::new(false),
        })
    }

    /// Stops the endpoints and the forwarder and waits for their tasks.
    pub async fn close(&self) {
        self.shutdown.cancel();
        self.primary.close().await;
        self.replica.close().await;
        self.tasks.close();
        self.tasks.wait().await;
    }
}

/// The primary's link to the bench replica over the WAN's bulk channel.
pub struct BenchLink {
    wan: Arc<Wan>,
    via: SocketAddr,
    max_frame: usize,
    /// Encoded request and reply bytes of every completed or attempted call.
    bytes: AtomicU64,
    /// Calls that got a reply, and their total time.
    calls: AtomicU64,
    call_nanos: AtomicU64,
    cut: AtomicBool,
}

impl BenchLink {
    /// Cuts (or restores) the link: while cut, every call fails at once as unreachable.
    pub fn set_cut(&self, cut: bool) {
        self.cut.store(cut, Ordering::SeqCst);
    }

    /// Replication bytes that crossed this link so far, both directions.
    pub fn bytes(&self) -> u64 {
        self.bytes.load(Ordering::SeqCst)
    }

    /// Calls that got a reply so far, and the time they took in all.
    pub fn calls(&self) -> (u64, Duration) {
        let n = self.calls.load(Ordering::SeqCst);
        (
            n,
            Duration::from_nanos(self.call_nanos.load(Ordering::SeqCst)),
        )
    }
}

#[async_trait::async_trait]
impl Link for BenchLink {
    async fn call(&self, msg: ToReplica) -> Result<FromReplica, LinkError> {
        if self.cut.load(Ordering::SeqCst) {
            return Err(LinkError::Unreachable("cut by the bench".into()));
        }
        let body = encode(&msg, self.max_frame).map_err(|e| LinkError::Frame(e.to_string()))?;
        self.bytes.fetch_add(body.len() as u64, Ordering::SeqCst);
        let started = Instant::now();
        let reply = self
            .wan
            .call(self.via, Some(REPLICA_NODE), Channel::Bulk, &body)
            .await
            .map_err(|e| match e {
                wan::WanError::Timeout { after, .. } => LinkError::Timeout(after),
                e => LinkError::Unreachable(e.to_string()),
            })?;
        self.bytes.fetch_add(reply.len() as u64, Ordering::SeqCst);
        self.calls.fetch_add(1, Ordering::SeqCst);
        self.call_nanos
            .fetch_add(nanos(started.elapsed()), Ordering::SeqCst);
        decode(&reply, self.max_frame).map_err(|e| LinkError::Frame(e.to_string()))
    }
}

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

/// Locks a std mutex; a poisoned one still holds a consistent map here (single inserts).
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}
