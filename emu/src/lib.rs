//! A userspace WAN link emulator for the loopback lab: UDP and TCP forwarders placed between
//! sites that delay, jitter, drop, rate-limit and partition traffic per link direction, changed
//! at run time through a Unix control socket (`fabric-emu`, `sitectl lab link`).
//!
//! Invariant: the system under test is never modified — agents are ordinary processes whose
//! inter-site addresses point at forwarder listeners; every impairment happens here, decided by
//! the sans-IO [`link::DirectionState`] with a seeded random source.
//!
//! It does not emulate routing, MTU, reordering of TCP bytes, or packet-level TCP behaviour: the
//! TCP forwarder terminates connections and re-sends bytes, shaping chunks, not segments.

pub mod config;
pub mod control;
pub mod link;
pub mod params;
pub mod table;
pub mod tcp;
pub mod udp;

use std::net::SocketAddr;
use std::path::PathBuf;

pub use config::{EmuConfig, ForwardConfig, LinkConfig, run};
pub use control::{Request, Response, request};
pub use link::{DirectionState, DirectionStats, Fate};
pub use params::{LinkParams, ParamError, ParamsSpec, parse_duration, parse_loss, parse_rate};
pub use table::{Direction, Emulator, ForwardKind, ForwarderStatus, LinkStatus, Status};
pub use tcp::TcpForwarder;
pub use udp::UdpForwarder;

/// Where a forwarder listens, where it forwards to, and which link direction its traffic
/// takes: client → target goes `from` → `to`, replies go `to` → `from`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    pub listen: SocketAddr,
    pub target: SocketAddr,
    /// The site of the clients that send to `listen`.
    pub from: String,
    /// The site of `target`.
    pub to: String,
}

/// What went wrong in the emulator, its configuration or its control channel.
#[derive(Debug, thiserror::Error)]
pub enum EmuError {
    #[error("no link between sites {a} and {b}")]
    UnknownLink { a: String, b: String },
    #[error("link between sites {a} and {b} declared twice")]
    DuplicateLink { a: String, b: String },
    #[error("a link joins two different sites, not {site} with itself")]
    SameSite { site: String },
    #[error(transparent)]
    Param(#[from] ParamError),
    #[error("cannot bind {kind} forwarder on {addr}: {source}")]
    Bind {
        kind: &'static str,
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("control socket {path}: {source}")]
    Control {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("control socket {path}: no answer within {secs} s")]
    ControlTimeout { path: PathBuf, secs: u64 },
    #[error("emulator refused: {message}")]
    Refused { message: String },
    #[error("control protocol: {reason}")]
    Protocol { reason: String },
    #[error("invalid emulator config: {message}")]
    Invalid { message: String },
    #[error("config {path}: {message}")]
    Config { path: PathBuf, message: String },
}
