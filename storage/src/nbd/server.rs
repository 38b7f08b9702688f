//! The NBD server: serves the [`BlockDevice`]s an [`Exports`] names to any NBD client (qemu,
//! libnbd's tools, the kernel, [`super::client`]).
//!
//! Owns: the accept loop, per-connection handshake (fixed newstyle; EXPORT_NAME, GO, INFO, LIST,
//! ABORT; everything else `NBD_REP_ERR_UNSUP`) and transmission (READ, WRITE, DISC, FLUSH, TRIM,
//! WRITE_ZEROES with FUA; simple replies only). What to answer is decided by two pure functions,
//! [`answer_option`] and [`plan`]; the async shell only moves bytes.
//!
//! Invariants:
//! - a reply is written whole: replies go through one writer task per connection, so concurrent
//!   requests never interleave their bytes;
//! - per connection at most [`Limits::max_inflight`] requests are in flight and each carries at
//!   most [`Limits::max_request`] bytes, so a connection holds at most their product in memory;
//! - a WRITE longer than `max_request` is refused with `EINVAL` after its payload has been read
//!   and discarded in small chunks (never buffered), so the connection stays in step and usable;
//!   a READ longer than `max_request` is refused with `EOVERFLOW`. TRIM and WRITE_ZEROES have no
//!   payload and are applied in `max_request` chunks;
//! - garbage that cannot be framed (a bad request magic, option data over
//!   [`proto::MAX_OPTION_DATA`], unknown client flags, an unknown export via EXPORT_NAME) closes
//!   that connection; anything well-framed gets an error reply. No input panics the server, and
//!   one connection's failure never stops the others;
//! - the handshake must finish within [`Limits::handshake_timeout`], and at most
//!   [`Limits::max_connections`] connections are served at once.
//!
//! `CAN_MULTI_CONN` is advertised because the server keeps no cache of its own: every request
//! goes straight to the device, whose flush and FUA make every completed write durable (the
//! [`BlockDevice`] contract), whichever connection wrote it.
//!
//! Does not: authenticate clients or speak TLS (the agent binds it on loopback or a site-internal
//! address), structured replies, block status, or resize.

mod negotiation;
mod transmission;

pub use negotiation::{Answer, Next, Session, answer_option, transmission_flags};
pub use transmission::{Plan, plan};

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use super::proto::{
    self, ClientFlags, ClientOption, ExportNameReply, Greeting, OptionHeader, OptionReply,
    ProtoError, client_flags, handshake,
};
use crate::device::BlockDevice;

/// Per-connection bounds.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Largest READ or WRITE payload, in bytes (advertised as the maximum block size).
    pub max_request: u32,
    /// Requests one connection may have in flight at once.
    pub max_inflight: usize,
    /// Time a client has from connecting to entering transmission.
    pub handshake_timeout: Duration,
    /// Connections served at once; one more is closed right after it is accepted.
    pub max_connections: usize,
    /// After shutdown, how long accepted requests may take to be answered before the
    /// connection is dropped with them unanswered (a client that stops reading its replies).
    pub drain_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_request: 32 << 20,
            max_inflight: 16,
            handshake_timeout: Duration::from_secs(10),
            max_connections: 256,
            drain_timeout: Duration::from_secs(5),
        }
    }
}

/// The devices a server exports, by name.
pub trait Exports: Send + Sync + 'static {
    fn lookup(&self, name: &str) -> Option<Arc<dyn BlockDevice>>;
    /// Names for `NBD_OPT_LIST`.
    fn list(&self) -> Vec<String>;
}

/// A fixed map of export names to devices.
#[derive(Clone, Default)]
pub struct StaticExports {
    devices: BTreeMap<String, Arc<dyn BlockDevice>>,
}

impl StaticExports {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds (or replaces) export `name`.
    pub fn with(mut self, name: impl Into<String>, device: Arc<dyn BlockDevice>) -> Self {
        self.devices.insert(name.into(), device);
        self
    }
}

impl Exports for StaticExports {
    fn lookup(&self, name: &str) -> Option<Arc<dyn BlockDevice>> {
        self.devices.get(name).cloned()
    }

    fn list(&self) -> Vec<String> {
        self.devices.keys().cloned().collect()
    }
}

/// Why a connection ended early (logged, never returned to a caller).
#[derive(Debug, thiserror::Error)]
enum ConnError {
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("{0}")]
    Proto(#[from] ProtoError),
    #[error("client flags {0:#x} include bits this server did not offer")]
    UnknownClientFlags(u32),
    #[error("option {option} carries {len} bytes, more than {max}")]
    OptionTooLong { option: u32, len: u32, max: u32 },
    #[error("{0}")]
    Refused(String),
}

/// Accepts connections on `listener` and serves `exports` until `shutdown`; then stops
/// accepting and reading requests, answers the requests already accepted (within
/// [`Limits::drain_timeout`]), closes every connection, and returns.
pub async fn serve(
    listener: TcpListener,
    exports: Arc<dyn Exports>,
    limits: Limits,
    shutdown: CancellationToken,
) {
    let mut conns = JoinSet::new();
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok((_, peer)) if conns.len() >= limits.max_connections => {
                    tracing::warn!(%peer, "nbd: refusing a connection: {} already open", conns.len());
                }
                Ok((stream, peer)) => {
                    let conn = connection(stream, peer, exports.clone(), limits.clone(), shutdown.clone());
                    conns.spawn(conn);
                }
                Err(e) => {
                    // Out of descriptors and the like: transient, so pause rather than spin.
                    tracing::warn!("nbd: accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
            Some(ended) = conns.join_next(), if !conns.is_empty() => log_panic(ended),
        }
    }
    drop(listener);
    while let Some(ended) = conns.join_next().await {
        log_panic(ended);
    }
}

/// A panicking connection is a bug; it ends only that connection, and it is logged loudly.
fn log_panic(ended: Result<(), tokio::task::JoinError>) {
    if let Err(e) = ended
        && e.is_panic()
    {
        tracing::error!("nbd: BUG: a connection task panicked: {e}");
    }
}

async fn connection(
    mut stream: TcpStream,
    peer: SocketAddr,
    exports: Arc<dyn Exports>,
    limits: Limits,
    shutdown: CancellationToken,
) {
    let _ = stream.set_nodelay(true);
    let negotiated = tokio::select! {
        _ = shutdown.cancelled() => return,
        r = tokio::time::timeout(limits.handshake_timeout, handshake(&mut stream, &*exports, &limits)) => r,
    };
    match negotiated {
        Err(_) => {
            tracing::info!(%peer, "nbd: handshake not finished within {:?}", limits.handshake_timeout)
        }
        Ok(Err(e)) => tracing::info!(%peer, "nbd: handshake failed: {e}"),
        Ok(Ok(None)) => {}
        Ok(Ok(Some(session))) => {
            tracing::debug!(%peer, export = %session.name, "nbd: transmission");
            transmission::run(stream, peer, session, limits, shutdown).await;
        }
    }
}

async fn handshake(
    stream: &mut TcpStream,
    exports: &dyn Exports,
    limits: &Limits,
) -> Result<Option<Session>, ConnError> {
    let greeting = Greeting {
        flags: handshake::FIXED_NEWSTYLE | handshake::NO_ZEROES,
    };
    stream.write_all(&greeting.encode()).await?;
    let mut buf = [0; 4];
    stream.read_exact(&mut buf).await?;
    let ClientFlags(flags) = ClientFlags::decode(&buf)?;
    if flags & !client_flags::KNOWN != 0 {
        return Err(ConnError::UnknownClientFlags(flags));
    }
    let zeroes = flags & client_flags::NO_ZEROES == 0;
    loop {
        let mut head = [0; proto::OPTION_HEADER_LEN];
        stream.read_exact(&mut head).await?;
        let header = OptionHeader::decode(&head)?;
        if header.len > proto::MAX_OPTION_DATA {
            return Err(ConnError::OptionTooLong {
                option: header.option,
                len: header.len,
                max: proto::MAX_OPTION_DATA,
            });
        }
        let mut data = vec![0; header.len as usize];
        stream.read_exact(&mut data).await?;
        let parsed = ClientOption::parse(header.option, &data);
        let answer = answer_option(header.option, parsed, exports, limits);
        let out: Vec<u8> = answer
            .replies
            .iter()
            .flat_map(OptionReply::encode)
            .collect();
        stream.write_all(&out).await?;
        match answer.next {
            Next::Continue => {}
            Next::Close(None) => return Ok(None),
            Next::Close(Some(why)) => return Err(ConnError::Refused(why)),
            Next::Transmit(session) => {
                if session.via_export_name {
                    let reply = ExportNameReply {
                        size: session.device.size(),
                        flags: transmission_flags(session.device.read_only()),
                    };
                    stream.write_all(&reply.encode(zeroes)).await?;
                }
                return Ok(Some(session));
            }
        }
    }
}
