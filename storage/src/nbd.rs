//! The NBD protocol: a sans-IO codec ([`proto`]), a server exporting [`crate::BlockDevice`]s
//! ([`server`]) and a small client ([`client`]).
//!
//! Owns: everything between a TCP socket and a block device. Does not: choose which device is
//! exported where (the agent's volume service builds the [`server::Exports`]), replicate writes
//! (a replicated device is just another `BlockDevice`), or speak TLS, structured replies or block
//! status.

pub mod client;
pub mod proto;
pub mod server;

pub use client::{NbdClient, NbdError, NbdUri, parse_uri};
pub use server::{Exports, Limits, StaticExports, serve};
