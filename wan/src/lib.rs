//! The encrypted WAN between site agents: QUIC (quinn) with mutual TLS (rustls), the fabric's
//! own PKI (rcgen), and framed typed messages.
//!
//! Invariant: every byte between agents travels inside a QUIC connection whose both ends were
//! verified against the fabric CA; a peer is known only by the identity in its certificate.
//!
//! It does not interpret messages: Raft, control and bulk payloads belong to their owners; this
//! crate moves frames and enforces their size.
//!
//! The lab's WAN link emulator (`fabric-emu`) is the `emu` crate: it shapes traffic *between*
//! agents from the outside and is never part of an agent.

pub mod endpoint;
pub mod frame;
pub mod identity;
pub mod pki;
pub mod sealed;
pub mod tls;

pub use endpoint::{Channel, Handler, PacketStats, Wan, WanConfig, WanError};
pub use identity::{Identity, Role};
pub use tls::{FabricTls, TlsFiles};
