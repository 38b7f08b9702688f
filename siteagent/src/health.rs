//! The agent's failure-detector shell. Inside its site it runs SWIM ([`Swim`]) with the site's
//! other agents over the control stream and, when it is the site's reporter
//! ([`ViewReporter`]), writes the site's view (the dead set) to the state. When it is one of
//! its site's few observers ([`quorum::site_observers`]) it also watches every other site
//! ([`SiteWatch`]) and records its verdicts on them.
//!
//! Traffic per agent is constant in the fleet's size: one SWIM probe per interval (plus the
//! rare indirect probe), and for the few observers one ping per other site per interval.
//!
//! Invariants: only views and observations that differ from what the state records are
//! proposed, so a steady fabric writes nothing, and one proposal of each kind is in flight at a
//! time (a failed one is retried on a later tick). A SWIM message from an agent outside this
//! agent's site is ignored.
//!
//! It does not decide anything about hosts or sites; the leader counts views and votes
//! ([`quorum::verdict_commands`]).

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use consensus::NodeId;
use consensus::state::{Command, FabricState, Health as HostHealth};
use failover::detector::DetectorConfig;
use failover::quorum::{self, Members};
use failover::siteview::ViewReporter;
use failover::sitewatch::SiteWatch;
use failover::swim::{MemberState, Message, Outgoing, Swim, SwimConfig};
use tokio::sync::{Notify, mpsc};
use tokio_util::sync::CancellationToken;
use wan::Channel;
use wan::sealed::SealKey;

use crate::cluster::{AgentInfo, Cluster};
use crate::control::{ControlReply, ControlRequest};
use crate::fabric::lock;

/// Where an agent whose WAN address is `wan` receives SWIM datagrams: the same IP, port + 1.
pub fn swim_addr(wan: SocketAddr) -> Option<SocketAddr> {
    Some(SocketAddr::new(wan.ip(), wan.port().checked_add(1)?))
}

/// SWIM's UDP socket and the fabric's datagram key ([`wan::sealed`]).
pub struct Datagrams {
    socket: tokio::net::UdpSocket,
    key: SealKey,
}

impl Datagrams {
    pub async fn bind(addr: SocketAddr, key: SealKey) -> std::io::Result<Self> {
        Ok(Self {
            socket: tokio::net::UdpSocket::bind(addr).await?,
            key,
        })
    }
}

/// The SWIM side of this agent, shared by the loop and the WAN handler.
pub struct Health {
    cluster: Arc<Cluster>,
    swim: Mutex<Swim>,
    /// WAN addresses of this site's agents, as of the last refresh.
    peers: Mutex<BTreeMap<NodeId, SocketAddr>>,
    /// Wakes the loop when a handled message may have moved the next deadline.
    wake: Notify,
    /// How long a SWIM request waits for its reply (over QUIC).
    request_timeout: Duration,
    /// When set, SWIM messages go as sealed datagrams instead of QUIC requests.
    datagrams: Option<Datagrams>,
}

impl Health {
    pub fn new(
        cluster: Arc<Cluster>,
        config: DetectorConfig,
        datagrams: Option<Datagrams>,
    ) -> Arc<Self> {
        let swim = Swim::new(
            cluster.id(),
            SwimConfig::from_window(config.interval, config.threshold),
            crate::clock::unix_ms() / 1000,
            cluster.id() ^ crate::clock::unix_ms(),
        );
        Arc::new(Self {
            cluster,
            swim: Mutex::new(swim),
            peers: Mutex::new(BTreeMap::new()),
            wake: Notify::new(),
            request_timeout: config.interval.saturating_mul(2),
            datagrams,
        })
    }

    /// Serves a SWIM message from agent `from`: returns what goes back in the reply and sends the
    /// rest (probes on `from`'s behalf).
    pub fn handle(self: &Arc<Self>, from: NodeId, message: Message) -> Vec<Message> {
        let (reply, others): (Vec<Outgoing>, Vec<Outgoing>) = self
            .receive(from, message)
            .into_iter()
            .partition(|o| o.to == from);
        self.send(others);
        reply.into_iter().map(|o| o.message).collect()
    }

    /// What SWIM answers to a message from `from`: nothing when `from` is not of this site.
    /// Wakes the loop when the message brought SWIM's next deadline forward (a handled message
    /// that only cancels a wait leaves the loop asleep).
    fn receive(&self, from: NodeId, message: Message) -> Vec<Outgoing> {
        let (out, sooner) = self.receive_quietly(from, message);
        if sooner {
            self.wake.notify_one();
        }
        out
    }

    /// [`Self::receive`] without the wake-up: also says whether SWIM's next deadline moved
    /// forward.
    fn receive_quietly(&self, from: NodeId, message: Message) -> (Vec<Outgoing>, bool) {
        if !lock(&self.peers).contains_key(&from) {
            return (Vec::new(), false);
        }
        let mut swim = lock(&self.swim);
        let before = swim.next_tick();
        let out = swim.handle(from, message, Instant::now());
        let sooner = swim.next_tick() < before;
        (out, sooner)
    }

    /// One sealed SWIM datagram (or a receive error) from the loop's socket: opened and
    /// handled; everything SWIM answers, replies included, goes back as datagrams.
    async fn on_datagram(
        self: &Arc<Self>,
        received: std::io::Result<(usize, SocketAddr)>,
        buf: &[u8],
    ) {
        let Some(d) = &self.datagrams else {
            return;
        };
        let (n, src) = match received {
            Ok(r) => r,
            Err(e) => {
                // Transient on UDP (an ICMP error for an earlier send); never a spin.
                tracing::debug!("SWIM socket: {e}");
                tokio::time::sleep(Duration::from_millis(10)).await;
                return;
            }
        };
        let message = d
            .key
            .open(&buf[..n])
            .map_err(|e| e.to_string())
            .and_then(|(from, body)| {
                let m = wan::frame::decode::<Message>(&body).map_err(|e| e.to_string())?;
                Ok((from, m))
            });
        match message {
            Ok((from, message)) => {
                // The loop reads SWIM's deadline again right after this: no wake-up needed.
                let (out, _) = self.receive_quietly(from, message);
                self.send(out);
            }
            Err(e) => {
                metrics::counter!("fabric_swim_datagrams_dropped_total").increment(1);
                tracing::debug!(%src, "dropped a SWIM datagram from {src}: {e}");
            }
        }
    }

    /// Sends each message: as a sealed datagram, or as a request whose reply is handled in turn.
    fn send(self: &Arc<Self>, outgoing: Vec<Outgoing>) {
        if let Some(d) = &self.datagrams {
            let me = self.cluster.id();
            for o in outgoing {
                let Some(addr) = lock(&self.peers).get(&o.to).copied().and_then(swim_addr) else {
                    continue;
                };
                metrics::counter!("fabric_swim_messages_total", "kind" => o.message.kind())
                    .increment(1);
                let sealed = wan::frame::encode(&o.message)
                    .map_err(|e| e.to_string())
                    .and_then(|body| d.key.seal(me, &body).map_err(|e| e.to_string()));
                // SWIM tolerates loss: a full socket buffer drops the message like the network would.
                match sealed {
                    Ok(datagram) => {
                        if let Err(e) = d.socket.try_send_to(&datagram, addr) {
                            tracing::debug!(%addr, "SWIM datagram to {} not sent: {e}", o.to);
                        }
                    }
                    Err(e) => tracing::warn!("SWIM message to {} not sealed: {e}", o.to),
                }
            }
            return;
        }
        for o in outgoing {
            let Some(addr) = lock(&self.peers).get(&o.to).copied() else {
                continue;
            };
            metrics::counter!("fabric_swim_messages_total", "kind" => o.message.kind())
                .increment(1);
            let this = self.clone();
            tokio::spawn(async move {
                let message = ControlRequest::Swim(o.message);
                let request = this.cluster.wan().request::<_, ControlReply>(
                    addr,
                    Some(o.to),
                    Channel::Control,
                    &message,
                );
                if let Ok(Ok(ControlReply::Swim(replies))) =
                    tokio::time::timeout(this.request_timeout, request).await
                {
                    let mut more = Vec::new();
                    let mut sooner = false;
                    for m in replies {
                        let (out, s) = this.receive_quietly(o.to, m);
                        more.extend(out);
                        sooner |= s;
                    }
                    if sooner {
                        this.wake.notify_one();
                    }
                    this.send(more);
                }
            });
        }
    }

    /// Runs until `shutdown`: SWIM within the site, the site's view, and (as an observer) the
    /// watch over the other sites.
    pub async fn run(self: Arc<Self>, config: DetectorConfig, shutdown: CancellationToken) {
        let cluster = self.cluster.clone();
        let me = cluster.id();
        let mut reporter = ViewReporter::new(me, config.window());
        let mut watch = SiteWatch::new(config);
        let mut observing_since: Option<Instant> = None;
        let (answers_tx, mut answers) = mpsc::unbounded_channel::<(String, NodeId, bool)>();
        // Probes waiting for an answer, by target: a dead target's probe waits up to a window,
        // and must not hold up the probes of its site's other agents meanwhile.
        let mut in_flight: BTreeSet<NodeId> = BTreeSet::new();
        // One view and one batch of observations in flight at a time, each on its own.
        let proposing_view = Arc::new(tokio::sync::Mutex::new(()));
        let proposing_observations = Arc::new(tokio::sync::Mutex::new(()));
        let mut next_refresh = Instant::now();
        let mut known: Option<Known> = None;
        // The `fabric_peer_up` value last set for each peer (set again only when it changes).
        let mut exported: BTreeMap<NodeId, bool> = BTreeMap::new();
        // SWIM's datagrams are received here, not in a task of their own: one wake-up per
        // datagram instead of two, and the deadline is read again right after each.
        let mut buf = vec![0u8; wan::sealed::MAX_DATAGRAM];
        loop {
            let next = lock(&self.swim).next_tick().min(next_refresh);
            let sleep = tokio::time::Instant::from_std(next);
            tokio::select! {
                _ = shutdown.cancelled() => return,
                Some((site, target, ok)) = answers.recv() => {
                    in_flight.remove(&target);
                    if ok && let Some(c) = watch.handle_answer(&site, Instant::now()) {
                        tracing::info!("site {} is reachable again", c.subject);
                    }
                    continue;
                }
                received = recv_datagram(self.datagrams.as_ref(), &mut buf) => {
                    self.on_datagram(received, &buf).await;
                    continue;
                }
                _ = self.wake.notified() => {}
                _ = tokio::time::sleep_until(sleep) => {}
            }
            let now = Instant::now();
            let out = lock(&self.swim).tick(now);
            self.send(out);
            for c in lock(&self.swim).drain_changes() {
                let verdict = if c.up { "alive again" } else { "dead" };
                tracing::info!(peer = c.subject, "peer {} is {verdict}", c.subject);
            }
            // A refresh due within a quarter interval runs now, on SWIM's wake-up: the two
            // schedules fall in step instead of waking the agent twice per interval.
            if now + config.interval / 4 < next_refresh {
                continue;
            }
            next_refresh = now + config.interval;

            // What the state says (agents, the recorded view, observers, other sites' agents)
            // is read again only when something new was applied, or after a while.
            let applied = cluster.state().applied_index();
            if known
                .as_ref()
                .is_none_or(|k| k.applied != applied || now >= k.read_at + RESCAN)
            {
                known = Known::read(&cluster, me, applied, now);
                if let Some(k) = &known {
                    self.refresh_site(me, &k.all, &k.site, &k.recorded, now);
                }
            }
            let Some(Known {
                all,
                site,
                recorded,
                observers,
                targets,
                ..
            }) = &known
            else {
                // Not a voter nor a registered host yet: nobody to watch, nothing to record.
                continue;
            };

            // The site's view.
            let (mine, alive) = {
                let swim = lock(&self.swim);
                let mut mine = BTreeSet::new();
                let mut alive = BTreeSet::new();
                for (id, state) in swim.members() {
                    let up = state != MemberState::Dead;
                    if exported.insert(id, up) != Some(up) {
                        metrics::gauge!("fabric_peer_up", "peer" => id.to_string())
                            .set(f64::from(u8::from(up)));
                    }
                    if state == MemberState::Dead {
                        mine.insert(id);
                    } else {
                        alive.insert(id);
                    }
                }
                metrics::gauge!("fabric_swim_local_health").set(f64::from(swim.local_health()));
                (mine, alive)
            };
            if let Some(dead) = reporter.poll(&mine, &alive, recorded, now) {
                propose_in_background(
                    &cluster,
                    &proposing_view,
                    vec![Command::ReportSiteView {
                        site: site.clone(),
                        reporter: me,
                        dead,
                    }],
                );
            }

            // The other sites, if this agent is one of its site's observers.
            if !observers.contains(&me) {
                watch.set_sites(BTreeMap::new(), now);
                observing_since = None;
                continue;
            }
            let since = *observing_since.get_or_insert(now);
            watch.set_sites(targets.clone(), now);
            for c in watch.tick(now) {
                tracing::info!("site {} is unreachable", c.subject);
            }
            for (target_site, target) in watch.probes() {
                if in_flight.contains(&target) {
                    continue;
                }
                let Some(addr) = all.get(&target).and_then(|a| a.addr.parse().ok()) else {
                    continue;
                };
                in_flight.insert(target);
                let (cluster, tx) = (cluster.clone(), answers_tx.clone());
                let limit = config.window();
                tokio::spawn(async move {
                    let ping = cluster.wan().request::<_, ControlReply>(
                        addr,
                        Some(target),
                        Channel::Control,
                        &ControlRequest::Ping,
                    );
                    let ok = matches!(
                        tokio::time::timeout(limit, ping).await,
                        Ok(Ok(ControlReply::Pong))
                    );
                    let _ = tx.send((target_site, target, ok));
                });
            }
            // A fresh watch says "up" until it has watched for a window: recording that would
            // undo a down verdict this observer (or its predecessor) rightly holds.
            if now.saturating_duration_since(since) < config.window() {
                continue;
            }
            let differing: Vec<Command> = cluster.state().read(|s| {
                watch
                    .verdicts()
                    .filter(|(site, up)| {
                        let recorded = s
                            .site_observations
                            .get(*site)
                            .and_then(|by| by.get(&me))
                            .is_none_or(|o| o.up);
                        recorded != *up && s.sites.contains_key(*site)
                    })
                    .map(|(site, up)| Command::ObserveSite {
                        observer: me,
                        site: site.clone(),
                        up,
                    })
                    .collect()
            });
            propose_in_background(&cluster, &proposing_observations, differing);
        }
    }

    /// Keeps SWIM's group and the peer addresses equal to this site's agents. An agent new to
    /// this node starts dead if the state records it dead, so a restarted agent does not
    /// resurrect it before hearing from it.
    fn refresh_site(
        &self,
        me: NodeId,
        all: &BTreeMap<NodeId, AgentInfo>,
        site: &str,
        recorded: &BTreeSet<NodeId>,
        now: Instant,
    ) {
        let mine: BTreeMap<NodeId, SocketAddr> = all
            .iter()
            .filter(|(id, a)| **id != me && a.site == site)
            .filter_map(|(id, a)| Some((*id, a.addr.parse().ok()?)))
            .collect();
        let initial = mine.keys().map(|id| {
            let state = if recorded.contains(id) {
                MemberState::Dead
            } else {
                MemberState::Alive
            };
            (*id, state)
        });
        lock(&self.swim).set_members(initial, now);
        *lock(&self.peers) = mine;
    }
}

/// The next datagram on SWIM's socket; never, when this agent has none (SWIM over QUIC).
async fn recv_datagram(
    datagrams: Option<&Datagrams>,
    buf: &mut [u8],
) -> std::io::Result<(usize, SocketAddr)> {
    match datagrams {
        Some(d) => d.socket.recv_from(buf).await,
        None => std::future::pending().await,
    }
}

/// How often the loop reads the state again although nothing new was applied.
const RESCAN: Duration = Duration::from_secs(1);

/// What the health loop last read from the state.
struct Known {
    /// The applied index it was read at, and when.
    applied: u64,
    read_at: Instant,
    all: BTreeMap<NodeId, AgentInfo>,
    site: String,
    /// The site's dead set as the state records it.
    recorded: BTreeSet<NodeId>,
    observers: Vec<NodeId>,
    targets: BTreeMap<String, Vec<NodeId>>,
}

impl Known {
    /// `None` while this agent is neither a voter nor a registered host.
    fn read(cluster: &Cluster, me: NodeId, applied: u64, now: Instant) -> Option<Self> {
        let all = cluster.agents();
        let site = all.get(&me)?.site.clone();
        let (recorded, observers, targets) = cluster.state().read(|s| {
            let recorded = s
                .site_views
                .get(&site)
                .map(|v| v.dead.clone())
                .unwrap_or_default();
            let by_site: Members = all.iter().map(|(id, a)| (*id, a.site.clone())).collect();
            let observers = quorum::site_observers(s, &by_site, &site);
            (recorded, observers, other_sites(s, &all, &site))
        });
        Some(Self {
            applied,
            read_at: now,
            all,
            site,
            recorded,
            observers,
            targets,
        })
    }
}

/// The agents to probe in every site but `site`: those the state records up, or all of them
/// when none is (a site that is down is still probed, so its return is noticed).
fn other_sites(
    state: &FabricState,
    all: &BTreeMap<NodeId, AgentInfo>,
    site: &str,
) -> BTreeMap<String, Vec<NodeId>> {
    let mut out: BTreeMap<String, (Vec<NodeId>, Vec<NodeId>)> = BTreeMap::new();
    for (id, a) in all {
        if a.site == site {
            continue;
        }
        let entry = out.entry(a.site.clone()).or_default();
        let up = state
            .hosts
            .get(id)
            .is_none_or(|h| h.health == HostHealth::Up);
        if up {
            entry.0.push(*id);
        } else {
            entry.1.push(*id);
        }
    }
    out.into_iter()
        .map(|(s, (up, down))| (s, if up.is_empty() { down } else { up }))
        .collect()
}

/// Proposes `commands` in the background, in order, unless a batch is still in flight.
fn propose_in_background(
    cluster: &Arc<Cluster>,
    proposing: &Arc<tokio::sync::Mutex<()>>,
    commands: Vec<Command>,
) {
    if commands.is_empty() {
        return;
    }
    let Ok(guard) = proposing.clone().try_lock_owned() else {
        return;
    };
    let cluster = cluster.clone();
    tokio::spawn(async move {
        let _guard = guard;
        for command in commands {
            if let Err(e) = cluster.propose(cluster.actor(), command.clone()).await {
                tracing::debug!("cannot record {command:?}: {e}");
                return;
            }
        }
    });
}
