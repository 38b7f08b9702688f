//! The WAN endpoint: one QUIC socket per agent, mutual TLS, one pooled connection per peer and
//! one stream per request, tagged with its [`Channel`].
//!
//! Wire format of a stream: one channel byte, then one request frame from the caller, then one
//! response frame from the callee. A stream that breaks the format (unknown channel, oversized or
//! malformed frame) is reset with an error code and logged; the connection and every other
//! stream carry on. Incoming connections are accepted only from agents of this fabric (see
//! `tls`).

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use futures::FutureExt;
use futures::future::{BoxFuture, Shared};
use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use quinn::{Connection, Endpoint, VarInt};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio_util::sync::CancellationToken;

use crate::frame::{self, FrameError};
use crate::identity::{Identity, Role};
use crate::tls::{FabricTls, TlsError, peer_identity};

/// What a stream is for; each purpose has its own streams so a large transfer never queues a
/// heartbeat behind it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum Channel {
    Raft = 1,
    Control = 2,
    Bulk = 3,
}

impl Channel {
    fn from_byte(b: u8) -> Option<Self> {
        match b {
            1 => Some(Channel::Raft),
            2 => Some(Channel::Control),
            3 => Some(Channel::Bulk),
            _ => None,
        }
    }
}

/// QUIC application error codes used when we reset a stream or close a connection.
pub mod codes {
    pub const BAD_FRAME: u32 = 0x10;
    pub const UNKNOWN_CHANNEL: u32 = 0x11;
    pub const HANDLER_FAILED: u32 = 0x12;
    pub const SHUTDOWN: u32 = 0x20;
    pub const WRONG_PEER: u32 = 0x21;
}

/// Tunables of the endpoint.
#[derive(Debug, Clone)]
pub struct WanConfig {
    /// Largest frame accepted or sent.
    pub max_frame: usize,
    /// How long one request may take, connect included.
    pub request_timeout: Duration,
    /// A connection with no traffic for this long is closed (keep-alives run at a third of it).
    pub idle_timeout: Duration,
    /// Where to send packets for a peer instead of its own address (e.g. a link emulator's
    /// listener in a lab). The peer is still known, pooled and verified by its own address.
    pub routes: HashMap<SocketAddr, SocketAddr>,
}

impl Default for WanConfig {
    fn default() -> Self {
        Self {
            max_frame: 16 << 20,
            request_timeout: Duration::from_secs(5),
            idle_timeout: Duration::from_secs(10),
            routes: HashMap::new(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum WanError {
    #[error("tls: {0}")]
    Tls(#[from] TlsError),
    #[error("cannot bind {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("connect to {addr}: {reason}")]
    Connect { addr: SocketAddr, reason: String },
    #[error("peer at {addr} is {found}, expected node {expected}")]
    WrongPeer {
        addr: SocketAddr,
        found: Identity,
        expected: u64,
    },
    #[error("request to {addr} timed out after {after:?}")]
    Timeout { addr: SocketAddr, after: Duration },
    #[error("stream to {addr}: {reason}")]
    Stream { addr: SocketAddr, reason: String },
    #[error("frame from {addr}: {source}")]
    Frame {
        addr: SocketAddr,
        source: FrameError,
    },
}

/// Answers requests that arrive on the WAN. Errors reset the stream; they are logged by the
/// endpoint with the peer and channel.
pub trait Handler: Send + Sync + 'static {
    fn handle(
        &self,
        peer: Identity,
        channel: Channel,
        request: Vec<u8>,
    ) -> Pin<Box<dyn Future<Output = Result<Vec<u8>, anyhow::Error>> + Send + '_>>;
}

struct Peer {
    conn: Connection,
    identity: Identity,
}

/// UDP datagrams and the QUIC frames this endpoint sent and received, over every connection it
/// ever had (open ones read live, closed ones kept as totals): what an idle agent's traffic is
/// made of.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct PacketStats {
    pub datagrams_sent: u64,
    pub datagrams_received: u64,
    /// Frames sent, by kind: acknowledgements, keep-alive pings, stream data, stream credit.
    pub acks_sent: u64,
    pub pings_sent: u64,
    pub stream_frames_sent: u64,
    pub stream_credit_sent: u64,
}

impl PacketStats {
    fn of(conn: &Connection) -> Self {
        let s = conn.stats();
        Self {
            datagrams_sent: s.udp_tx.datagrams,
            datagrams_received: s.udp_rx.datagrams,
            acks_sent: s.frame_tx.acks,
            pings_sent: s.frame_tx.ping,
            stream_frames_sent: s.frame_tx.stream,
            stream_credit_sent: s.frame_tx.max_streams_bidi,
        }
    }

    /// Each count under the name `fabric_wan_packets_total` gives it as `kind`.
    pub fn by_kind(&self) -> [(&'static str, u64); 6] {
        [
            ("datagrams_sent", self.datagrams_sent),
            ("datagrams_received", self.datagrams_received),
            ("acks_sent", self.acks_sent),
            ("pings_sent", self.pings_sent),
            ("stream_frames_sent", self.stream_frames_sent),
            ("stream_credit_sent", self.stream_credit_sent),
        ]
    }

    fn add(&mut self, o: &Self) {
        self.datagrams_sent += o.datagrams_sent;
        self.datagrams_received += o.datagrams_received;
        self.acks_sent += o.acks_sent;
        self.pings_sent += o.pings_sent;
        self.stream_frames_sent += o.stream_frames_sent;
        self.stream_credit_sent += o.stream_credit_sent;
    }
}

/// Every connection of the endpoint, for [`PacketStats`].
#[derive(Default)]
struct Traffic {
    open: Vec<Connection>,
    closed: PacketStats,
}

impl Traffic {
    /// Moves closed connections into the totals, so the list holds only open ones.
    fn fold_closed(&mut self) {
        let closed = &mut self.closed;
        self.open.retain(|c| {
            let gone = c.close_reason().is_some();
            if gone {
                closed.add(&PacketStats::of(c));
            }
            !gone
        });
    }
}

type Connecting = Shared<BoxFuture<'static, Result<(Connection, Identity), String>>>;

/// An agent's WAN endpoint: serves incoming streams and makes outgoing requests.
///
/// Every connection, whichever side dialed it, carries requests both ways: the side that did
/// not dial serves the streams the dialer opens and may open its own on the same connection.
pub struct Wan {
    endpoint: Endpoint,
    identity: Identity,
    config: WanConfig,
    peers: Mutex<HashMap<SocketAddr, Peer>>,
    /// Connection attempts in flight, shared by every caller that wants the same peer.
    connecting: Mutex<HashMap<SocketAddr, Connecting>>,
    traffic: Mutex<Traffic>,
    /// Set by [`Wan::serve`]: who answers streams, and when to stop.
    serving: OnceLock<(Arc<dyn Handler>, CancellationToken)>,
}

const ALPN: &[u8] = b"fabric/1";

/// The QUIC transport of either side. Only the dialing side sends keep-alives: a ping from one
/// end keeps both ends' idle timers running, and a second pinger would double the idle traffic
/// of every connection.
fn transport(config: &WanConfig, keep_alive: bool) -> Arc<quinn::TransportConfig> {
    let mut t = quinn::TransportConfig::default();
    t.max_idle_timeout(Some(
        config
            .idle_timeout
            .try_into()
            .unwrap_or(VarInt::from_u32(10_000).into()),
    ));
    t.keep_alive_interval(keep_alive.then_some(config.idle_timeout / 3));
    t.max_concurrent_bidi_streams(VarInt::from_u32(1024));
    t.max_concurrent_uni_streams(VarInt::from_u32(0));
    Arc::new(t)
}

impl Wan {
    /// Binds the endpoint. It accepts connections only once [`Wan::serve`] runs.
    pub fn bind(
        addr: SocketAddr,
        tls: &FabricTls,
        config: WanConfig,
    ) -> Result<Arc<Self>, WanError> {
        let mut server_tls = tls.server_config(Role::Agent, true)?;
        server_tls.alpn_protocols = vec![ALPN.to_vec()];
        let quic_server = QuicServerConfig::try_from(server_tls)
            .map_err(|e| TlsError::Config(rustls::Error::General(e.to_string())))?;
        let mut server = quinn::ServerConfig::with_crypto(Arc::new(quic_server));
        server.transport_config(transport(&config, false));

        let mut client_tls = tls.client_config(true)?;
        client_tls.alpn_protocols = vec![ALPN.to_vec()];
        let quic_client = QuicClientConfig::try_from(client_tls)
            .map_err(|e| TlsError::Config(rustls::Error::General(e.to_string())))?;
        let mut client = quinn::ClientConfig::new(Arc::new(quic_client));
        client.transport_config(transport(&config, true));

        // A reset key that survives restarts: when this agent comes back, peers still holding a
        // connection to its previous process get a stateless reset on their next packet and
        // reconnect at once, instead of waiting for the idle timeout.
        let reset_key =
            ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &tls.stable_secret("quic reset"));
        let mut endpoint_config = quinn::EndpointConfig::new(Arc::new(reset_key));
        // The CID generator validates incoming CIDs with its key; a random key per process
        // would make the restarted agent drop (not reset) packets for its old connections.
        let cid_secret = tls.stable_secret("quic cid");
        let mut cid_key = [0u8; 8];
        cid_key.copy_from_slice(&cid_secret[..8]);
        let cid_key = u64::from_le_bytes(cid_key);
        endpoint_config.cid_generator(move || {
            Box::new(quinn_proto::HashedConnectionIdGenerator::from_key(cid_key))
        });
        let socket =
            std::net::UdpSocket::bind(addr).map_err(|source| WanError::Bind { addr, source })?;
        let mut endpoint = Endpoint::new(
            endpoint_config,
            Some(server),
            socket,
            Arc::new(quinn::TokioRuntime),
        )
        .map_err(|source| WanError::Bind { addr, source })?;
        endpoint.set_default_client_config(client);
        Ok(Arc::new(Self {
            endpoint,
            identity: tls.identity().clone(),
            config,
            peers: Mutex::new(HashMap::new()),
            connecting: Mutex::new(HashMap::new()),
            traffic: Mutex::new(Traffic::default()),
            serving: OnceLock::new(),
        }))
    }

    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.endpoint.local_addr()
    }

    pub fn identity(&self) -> &Identity {
        &self.identity
    }

    pub fn config(&self) -> &WanConfig {
        &self.config
    }

    /// Accepts connections until `shutdown`, then closes the endpoint.
    pub async fn serve(self: Arc<Self>, handler: Arc<dyn Handler>, shutdown: CancellationToken) {
        if self
            .serving
            .set((handler.clone(), shutdown.clone()))
            .is_err()
        {
            tracing::error!("Wan::serve called twice; the second call does nothing");
            return;
        }
        loop {
            let incoming = tokio::select! {
                _ = shutdown.cancelled() => break,
                i = self.endpoint.accept() => match i {
                    Some(i) => i,
                    None => break,
                },
            };
            let remote = incoming.remote_address();
            let this = self.clone();
            tokio::spawn(async move {
                match incoming.await {
                    Ok(conn) => this.accepted(conn),
                    Err(e) => tracing::warn!(%remote, "refused WAN connection from {remote}: {e}"),
                }
            });
        }
        self.endpoint
            .close(VarInt::from_u32(codes::SHUTDOWN), b"shutting down");
    }

    /// A connection a peer dialed: adopt it for our own requests when we have none, serve it.
    fn accepted(self: &Arc<Self>, conn: Connection) {
        let remote = conn.remote_address();
        let Some(peer) = connection_identity(&conn) else {
            tracing::warn!(%remote, "refused WAN connection from {remote}: no fabric identity");
            conn.close(VarInt::from_u32(codes::WRONG_PEER), b"no identity");
            return;
        };
        tracing::debug!(%remote, peer = %peer, "WAN connection accepted");
        // Agents dial from their listening socket, so the remote address is where we would dial
        // them. A live connection of our own is kept (dropping it would close it under the
        // peer's feet); a stale one to a restarted peer was closed by the peer's stateless reset.
        {
            let mut peers = self.lock_peers();
            if peers
                .get(&remote)
                .is_none_or(|p| p.conn.close_reason().is_some())
            {
                peers.insert(
                    remote,
                    Peer {
                        conn: conn.clone(),
                        identity: peer.clone(),
                    },
                );
            }
        }
        self.spawn_stream_server(conn, peer);
    }

    /// Serves the streams the peer opens on `conn`, if this endpoint is serving.
    fn spawn_stream_server(self: &Arc<Self>, conn: Connection, peer: Identity) {
        {
            let mut t = self.lock_traffic();
            t.fold_closed();
            t.open.push(conn.clone());
        }
        let Some((handler, shutdown)) = self.serving.get().cloned() else {
            return;
        };
        let max = self.config.max_frame;
        tokio::spawn(async move {
            let remote = conn.remote_address();
            loop {
                let (send, recv) = tokio::select! {
                    _ = shutdown.cancelled() => return,
                    s = conn.accept_bi() => match s {
                        Ok(s) => s,
                        Err(e) => {
                            tracing::debug!(%remote, "WAN connection with {peer} ended: {e}");
                            return;
                        }
                    },
                };
                tokio::spawn(serve_stream(
                    handler.clone(),
                    peer.clone(),
                    remote,
                    max,
                    send,
                    recv,
                ));
            }
        });
    }

    /// The connection to `addr`, made if needed; checks the peer is node `expect` when given.
    ///
    /// Dialing runs in its own task shared by every caller, so a caller that gives up (Raft
    /// cancels an RPC after one heartbeat interval) does not abort a handshake the next call
    /// will want.
    async fn connection(
        self: &Arc<Self>,
        addr: SocketAddr,
        expect: Option<u64>,
    ) -> Result<Connection, WanError> {
        let cached = self.lock_peers().get(&addr).and_then(|p| {
            (p.conn.close_reason().is_none()).then(|| (p.conn.clone(), p.identity.clone()))
        });
        let (conn, identity) = match cached {
            Some(c) => c,
            None => self
                .dial(addr)
                .await
                .map_err(|reason| WanError::Connect { addr, reason })?,
        };
        if let Some(expected) = expect
            && identity.node_id() != Some(expected)
        {
            self.lock_peers().remove(&addr);
            conn.close(VarInt::from_u32(codes::WRONG_PEER), b"unexpected node");
            return Err(WanError::WrongPeer {
                addr,
                found: identity,
                expected,
            });
        }
        Ok(conn)
    }

    fn dial(self: &Arc<Self>, addr: SocketAddr) -> Connecting {
        let mut connecting = self.connecting.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(c) = connecting.get(&addr) {
            return c.clone();
        }
        let this = self.clone();
        let task = tokio::spawn(async move {
            let result = async {
                let via = this.config.routes.get(&addr).copied().unwrap_or(addr);
                let conn = this
                    .endpoint
                    .connect(via, "fabric")
                    .map_err(|e| e.to_string())?
                    .await
                    .map_err(|e| e.to_string())?;
                let identity = connection_identity(&conn)
                    .ok_or_else(|| "peer presented no fabric identity".to_string())?;
                this.lock_peers().insert(
                    addr,
                    Peer {
                        conn: conn.clone(),
                        identity: identity.clone(),
                    },
                );
                this.spawn_stream_server(conn.clone(), identity.clone());
                Ok((conn, identity))
            }
            .await;
            this.connecting
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(&addr);
            result
        });
        let shared = async move {
            task.await
                .unwrap_or_else(|e| Err(format!("dial task: {e}")))
        }
        .boxed()
        .shared();
        connecting.insert(addr, shared.clone());
        shared
    }

    fn lock_peers(&self) -> std::sync::MutexGuard<'_, HashMap<SocketAddr, Peer>> {
        // A panic while holding this lock cannot leave the map inconsistent (single inserts
        // and removes), so a poisoned lock is still usable.
        self.peers.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Sends one request frame on a new stream of `channel` and returns the reply frame.
    pub async fn call(
        self: &Arc<Self>,
        addr: SocketAddr,
        expect: Option<u64>,
        channel: Channel,
        request: &[u8],
    ) -> Result<Vec<u8>, WanError> {
        let after = self.config.request_timeout;
        let result = tokio::time::timeout(after, self.call_inner(addr, expect, channel, request))
            .await
            .unwrap_or(Err(WanError::Timeout { addr, after }));
        if matches!(
            result,
            Err(WanError::Timeout { .. } | WanError::Connect { .. })
        ) {
            self.lock_peers().remove(&addr);
        }
        result
    }

    async fn call_inner(
        self: &Arc<Self>,
        addr: SocketAddr,
        expect: Option<u64>,
        channel: Channel,
        request: &[u8],
    ) -> Result<Vec<u8>, WanError> {
        let max = self.config.max_frame;
        let conn = self.connection(addr, expect).await?;
        let stream_err = |e: &dyn std::fmt::Display| WanError::Stream {
            addr,
            reason: e.to_string(),
        };
        let (mut send, mut recv) = match conn.open_bi().await {
            Ok(s) => s,
            Err(e) => {
                self.lock_peers().remove(&addr);
                return Err(stream_err(&e));
            }
        };
        frame::write_frame(&mut send, &[channel as u8], request, max)
            .await
            .map_err(|source| WanError::Frame { addr, source })?;
        send.finish().map_err(|e| stream_err(&e))?;
        match frame::read_last_frame(&mut recv, max).await {
            Ok(Some(reply)) => Ok(reply),
            Ok(None) => Err(stream_err(&"peer closed the stream without a reply")),
            Err(source) => Err(WanError::Frame { addr, source }),
        }
    }

    /// Typed request: encodes `req`, decodes the reply.
    pub async fn request<Req: Serialize, Resp: DeserializeOwned>(
        self: &Arc<Self>,
        addr: SocketAddr,
        expect: Option<u64>,
        channel: Channel,
        req: &Req,
    ) -> Result<Resp, WanError> {
        let body = frame::encode(req).map_err(|source| WanError::Frame { addr, source })?;
        let reply = self.call(addr, expect, channel, &body).await?;
        frame::decode(&reply).map_err(|source| WanError::Frame { addr, source })
    }

    /// Packets and frames over every connection so far; closed connections are folded into
    /// the totals here.
    pub fn packet_stats(&self) -> PacketStats {
        let mut t = self.lock_traffic();
        t.fold_closed();
        let mut total = t.closed;
        for c in &t.open {
            total.add(&PacketStats::of(c));
        }
        total
    }

    fn lock_traffic(&self) -> std::sync::MutexGuard<'_, Traffic> {
        // Pushes, retains and sums only: a poisoned lock leaves nothing half-done.
        self.traffic.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Round-trip times of the open peer connections.
    pub fn peer_rtts(&self) -> Vec<(Identity, SocketAddr, Duration)> {
        self.lock_peers()
            .iter()
            .filter(|(_, p)| p.conn.close_reason().is_none())
            .map(|(addr, p)| (p.identity.clone(), *addr, p.conn.rtt()))
            .collect()
    }

    /// Closes every connection and waits briefly for the peers to be told.
    pub async fn close(&self) {
        self.endpoint
            .close(VarInt::from_u32(codes::SHUTDOWN), b"shutting down");
        let _ = tokio::time::timeout(Duration::from_secs(2), self.endpoint.wait_idle()).await;
    }

    /// Opens a raw stream for protocol tests: the caller writes whatever bytes it likes.
    pub async fn open_raw(
        self: &Arc<Self>,
        addr: SocketAddr,
    ) -> Result<(quinn::SendStream, quinn::RecvStream), WanError> {
        let conn = self.connection(addr, None).await?;
        conn.open_bi().await.map_err(|e| WanError::Stream {
            addr,
            reason: e.to_string(),
        })
    }
}

/// One incoming stream: channel byte, request frame, handler, reply frame. Anything malformed
/// resets this stream only.
async fn serve_stream(
    handler: Arc<dyn Handler>,
    peer: Identity,
    remote: SocketAddr,
    max: usize,
    mut send: quinn::SendStream,
    mut recv: quinn::RecvStream,
) {
    let mut tag = [0u8; 1];
    if recv.read_exact(&mut tag).await.is_err() {
        return;
    }
    let Some(channel) = Channel::from_byte(tag[0]) else {
        tracing::warn!(%remote, "closed stream from {peer}: unknown channel {}", tag[0]);
        let _ = recv.stop(VarInt::from_u32(codes::UNKNOWN_CHANNEL));
        let _ = send.reset(VarInt::from_u32(codes::UNKNOWN_CHANNEL));
        return;
    };
    let request = match frame::read_last_frame(&mut recv, max).await {
        Ok(Some(body)) => body,
        Ok(None) => return,
        Err(e) => {
            tracing::warn!(%remote, ?channel, "closed {channel:?} stream from {peer}: {e}");
            let _ = recv.stop(VarInt::from_u32(codes::BAD_FRAME));
            let _ = send.reset(VarInt::from_u32(codes::BAD_FRAME));
            return;
        }
    };
    match handler.handle(peer.clone(), channel, request).await {
        Ok(reply) => {
            if let Err(e) = frame::write_frame(&mut send, &[], &reply, max).await {
                tracing::warn!(%remote, ?channel, "reply to {peer} failed: {e}");
                let _ = send.reset(VarInt::from_u32(codes::HANDLER_FAILED));
                return;
            }
            let _ = send.finish();
        }
        Err(e) => {
            tracing::warn!(%remote, ?channel, "closed {channel:?} stream from {peer}: {e:#}");
            let _ = send.reset(VarInt::from_u32(codes::HANDLER_FAILED));
        }
    }
}

fn connection_identity(conn: &Connection) -> Option<Identity> {
    let any = conn.peer_identity()?;
    let chain = any
        .downcast::<Vec<rustls::pki_types::CertificateDer<'static>>>()
        .ok()?;
    peer_identity(&chain)
}
