//! The UDP forwarder: datagrams from clients of the listener go to the target through the link
//! direction `from` → `to`, replies come back through `to` → `from`.
//!
//! Invariant: each client address (flow) has its own outbound socket, bound to the listener's
//! IP with an ephemeral port and connected to the target, so the target sees one peer per
//! client and QUIC connection IDs, path validation and NAT-like behaviour hold; a flow idle for
//! [`FLOW_IDLE`] (both ways) is forgotten and its socket closed.
//!
//! It does not look inside datagrams, fragment, or change their size; every datagram's fate is
//! decided by the link table, and this module only sleeps until the delivery instant and sends.

use std::cmp::Ordering;
use std::collections::{BinaryHeap, HashMap};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering as AtomicOrdering};
use std::time::Duration;

use tokio::net::UdpSocket;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::link::Fate;
use crate::table::{Emulator, ForwardKind, ForwarderStatus};
use crate::{EmuError, Route};

/// A flow without traffic either way for this long is forgotten.
pub const FLOW_IDLE: Duration = Duration::from_secs(60);

/// At most this many client flows per forwarder; datagrams of further clients are dropped.
pub const MAX_FLOWS: usize = 4096;

const MAX_DATAGRAM: usize = 65_536;

/// A bound UDP forwarder; [`UdpForwarder::run`] moves the traffic.
#[derive(Debug)]
pub struct UdpForwarder {
    emu: Arc<Emulator>,
    socket: Arc<UdpSocket>,
    local: SocketAddr,
    route: Route,
    idle: Duration,
}

/// A datagram waiting for its delivery instant.
struct Scheduled {
    at: Instant,
    seq: u64,
    payload: Vec<u8>,
    socket: Arc<UdpSocket>,
    /// `None` sends on the (connected) socket's peer.
    dest: Option<SocketAddr>,
}

impl PartialEq for Scheduled {
    fn eq(&self, other: &Self) -> bool {
        (self.at, self.seq) == (other.at, other.seq)
    }
}
impl Eq for Scheduled {}
impl PartialOrd for Scheduled {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Scheduled {
    /// Reversed, so the max-heap pops the earliest (then first-sent) datagram.
    fn cmp(&self, other: &Self) -> Ordering {
        (other.at, other.seq).cmp(&(self.at, self.seq))
    }
}

struct Flow {
    outbound: Arc<UdpSocket>,
    /// Milliseconds since the forwarder's epoch at the last datagram either way.
    last_seen: Arc<AtomicU64>,
    cancel: CancellationToken,
    task: JoinHandle<()>,
}

/// Milliseconds since `epoch`, for the flows' shared last-seen stamps.
fn stamp(epoch: Instant) -> u64 {
    u64::try_from(epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
}

impl UdpForwarder {
    /// Binds the listener of `route`. The link `route.from`–`route.to` must exist.
    pub async fn bind(emu: Arc<Emulator>, route: Route) -> Result<Self, EmuError> {
        emu.check_route(&route)?;
        let bind_err = |source| EmuError::Bind {
            kind: "udp",
            addr: route.listen,
            source,
        };
        let socket = bind_udp(route.listen).map_err(bind_err)?;
        let local = socket.local_addr().map_err(bind_err)?;
        Ok(Self {
            emu,
            socket: Arc::new(socket),
            local,
            route,
            idle: FLOW_IDLE,
        })
    }

    /// Forgets flows after `idle` instead of [`FLOW_IDLE`].
    pub fn with_idle_timeout(mut self, idle: Duration) -> Self {
        self.idle = idle;
        self
    }

    /// The bound listener address.
    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }

    /// Forwards until `shutdown`; then closes every flow and returns.
    pub async fn run(self, shutdown: CancellationToken) {
        let status = ForwarderStatus {
            kind: ForwardKind::Udp,
            listen: self.local,
            target: self.route.target,
            from: self.route.from.clone(),
            to: self.route.to.clone(),
        };
        self.emu.register_forwarder(status);
        tracing::info!(listen = %self.local, target = %self.route.target,
            from = %self.route.from, to = %self.route.to, "udp forwarder up");

        let (line_tx, line_rx) = mpsc::unbounded_channel();
        let line = tokio::spawn(delay_line(line_rx, shutdown.clone()));
        let epoch = Instant::now();
        let mut flows: HashMap<SocketAddr, Flow> = HashMap::new();
        let mut sweep = tokio::time::interval((self.idle / 4).max(Duration::from_millis(10)));
        let mut buf = vec![0u8; MAX_DATAGRAM];
        loop {
            tokio::select! {
                () = shutdown.cancelled() => break,
                _ = sweep.tick() => {
                    let now = stamp(epoch);
                    let idle = u64::try_from(self.idle.as_millis()).unwrap_or(u64::MAX);
                    flows.retain(|client, flow| {
                        let alive = now.saturating_sub(flow.last_seen.load(AtomicOrdering::Relaxed)) < idle;
                        if !alive {
                            tracing::debug!(%client, "udp flow idle, closed");
                            flow.cancel.cancel();
                        }
                        alive
                    });
                }
                received = self.socket.recv_from(&mut buf) => {
                    let (len, client) = match received {
                        Ok(r) => r,
                        Err(e) => {
                            // ICMP errors surface here on some systems; the socket stays usable.
                            tracing::debug!(error = %e, "udp listener receive error");
                            continue;
                        }
                    };
                    let Some(flow) = self.flow(&mut flows, client, epoch, &line_tx, &shutdown).await else {
                        continue;
                    };
                    flow.last_seen.store(stamp(epoch), AtomicOrdering::Relaxed);
                    let outbound = flow.outbound.clone();
                    let now = Instant::now();
                    match self.emu.admit(&self.route.from, &self.route.to, len, now.into_std()) {
                        Ok(Fate::Deliver(at)) => {
                            let _ = line_tx.send(Scheduled {
                                at: Instant::from_std(at),
                                seq: 0,
                                payload: buf[..len].to_vec(),
                                socket: outbound,
                                dest: None,
                            });
                        }
                        Ok(Fate::Drop) => {}
                        Err(e) => tracing::warn!(error = %e, "udp forwarder without link"),
                    }
                }
            }
        }
        for (_, flow) in flows.drain() {
            flow.cancel.cancel();
            let _ = flow.task.await;
        }
        let _ = line.await;
        self.emu.unregister_forwarder(self.local, ForwardKind::Udp);
        tracing::info!(listen = %self.local, "udp forwarder stopped");
    }

    /// The flow of `client`, made on its first datagram.
    async fn flow<'a>(
        &self,
        flows: &'a mut HashMap<SocketAddr, Flow>,
        client: SocketAddr,
        epoch: Instant,
        line: &mpsc::UnboundedSender<Scheduled>,
        shutdown: &CancellationToken,
    ) -> Option<&'a Flow> {
        if !flows.contains_key(&client) {
            if flows.len() >= MAX_FLOWS {
                tracing::warn!(%client, max = MAX_FLOWS, "too many udp flows, datagram dropped");
                return None;
            }
            let outbound = match self.outbound().await {
                Ok(s) => Arc::new(s),
                Err(e) => {
                    tracing::warn!(%client, target = %self.route.target, error = %e,
                        "cannot open udp flow");
                    return None;
                }
            };
            let last_seen = Arc::new(AtomicU64::new(stamp(epoch)));
            let cancel = shutdown.child_token();
            let task = tokio::spawn(replies(Replies {
                emu: self.emu.clone(),
                from: self.route.to.clone(),
                to: self.route.from.clone(),
                outbound: outbound.clone(),
                listener: self.socket.clone(),
                client,
                last_seen: last_seen.clone(),
                epoch,
                line: line.clone(),
                cancel: cancel.clone(),
            }));
            tracing::debug!(%client, via = ?outbound.local_addr().ok(), "udp flow opened");
            flows.insert(
                client,
                Flow {
                    outbound,
                    last_seen,
                    cancel,
                    task,
                },
            );
        }
        flows.get(&client)
    }

    async fn outbound(&self) -> std::io::Result<UdpSocket> {
        let socket = bind_udp(SocketAddr::new(self.local.ip(), 0))?;
        socket.connect(self.route.target).await?;
        Ok(socket)
    }
}

/// Receive buffer asked for on every forwarder socket. The kernel default (~208 KiB) is
/// less than one QUIC burst at WAN bandwidth-delay products, so a forwarder that is
/// descheduled for a few milliseconds would drop datagrams the emulated link never decided
/// to drop; the link's own queue ([`crate::link::QUEUE_LIMIT`]) is what should fill.
/// The kernel caps it at `net.core.rmem_max`.
pub const SOCKET_BUFFER: usize = 4 << 20;

/// A non-blocking UDP socket bound to `addr` with [`SOCKET_BUFFER`] of receive buffer.
fn bind_udp(addr: SocketAddr) -> std::io::Result<UdpSocket> {
    let socket = socket2::Socket::new(
        socket2::Domain::for_address(addr),
        socket2::Type::DGRAM,
        Some(socket2::Protocol::UDP),
    )?;
    // Best effort: a smaller buffer still forwards, only less tolerantly.
    let _ = socket.set_recv_buffer_size(SOCKET_BUFFER);
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    UdpSocket::from_std(socket.into())
}

/// Everything a flow's reply task needs.
struct Replies {
    emu: Arc<Emulator>,
    from: String,
    to: String,
    outbound: Arc<UdpSocket>,
    listener: Arc<UdpSocket>,
    client: SocketAddr,
    last_seen: Arc<AtomicU64>,
    epoch: Instant,
    line: mpsc::UnboundedSender<Scheduled>,
    cancel: CancellationToken,
}

/// Carries the target's replies for one flow back to its client, through the listener socket.
async fn replies(r: Replies) {
    let mut buf = vec![0u8; MAX_DATAGRAM];
    loop {
        let len = tokio::select! {
            () = r.cancel.cancelled() => return,
            received = r.outbound.recv(&mut buf) => match received {
                Ok(len) => len,
                Err(e) => {
                    // A connected UDP socket reports the target's ICMP port-unreachable here;
                    // the target may come back, so keep the flow.
                    tracing::trace!(client = %r.client, error = %e, "udp flow receive error");
                    continue;
                }
            },
        };
        r.last_seen.store(stamp(r.epoch), AtomicOrdering::Relaxed);
        let now = Instant::now();
        match r.emu.admit(&r.from, &r.to, len, now.into_std()) {
            Ok(Fate::Deliver(at)) => {
                let _ = r.line.send(Scheduled {
                    at: Instant::from_std(at),
                    seq: 0,
                    payload: buf[..len].to_vec(),
                    socket: r.listener.clone(),
                    dest: Some(r.client),
                });
            }
            Ok(Fate::Drop) => {}
            Err(e) => tracing::warn!(error = %e, "udp forwarder without link"),
        }
    }
}

/// Holds datagrams until their delivery instant and sends them, earliest first (ties in
/// arrival order).
async fn delay_line(mut incoming: mpsc::UnboundedReceiver<Scheduled>, cancel: CancellationToken) {
    let mut heap: BinaryHeap<Scheduled> = BinaryHeap::new();
    let mut seq = 0u64;
    let mut open = true;
    loop {
        let now = Instant::now();
        while heap.peek().is_some_and(|s| s.at <= now) {
            let Some(s) = heap.pop() else { break };
            let sent = match s.dest {
                Some(dest) => s.socket.send_to(&s.payload, dest).await,
                None => s.socket.send(&s.payload).await,
            };
            if let Err(e) = sent {
                tracing::trace!(error = %e, "udp send failed");
            }
        }
        if !open && heap.is_empty() {
            return;
        }
        let next = heap.peek().map(|s| s.at);
        tokio::select! {
            () = cancel.cancelled() => return,
            msg = incoming.recv(), if open => match msg {
                Some(mut s) => {
                    s.seq = seq;
                    seq += 1;
                    heap.push(s);
                }
                None => open = false,
            },
            () = sleep_until_opt(next) => {}
        }
    }
}

async fn sleep_until_opt(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn forwarder_sockets_ask_for_a_wan_sized_receive_buffer() {
        let socket = bind_udp(SocketAddr::from(([127, 0, 0, 1], 0))).expect("bind");
        let got = socket2::SockRef::from(&socket)
            .recv_buffer_size()
            .expect("SO_RCVBUF");
        // Linux caps the request at rmem_max and reports twice what it granted.
        let max: usize = std::fs::read_to_string("/proc/sys/net/core/rmem_max")
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(SOCKET_BUFFER);
        assert!(
            got >= SOCKET_BUFFER.min(max),
            "receive buffer {got} bytes, asked for {SOCKET_BUFFER} (rmem_max {max})"
        );
    }
}
