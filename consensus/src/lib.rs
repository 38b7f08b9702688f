//! Replicated fabric state: the state machine, openraft's type configuration, durable redb
//! storage and the Raft network over any transport.
//!
//! Invariant: the state changes only by applying committed [`state::Proposal`]s in log order; a
//! log append is acknowledged to Raft only after it is durable on disk.
//!
//! This crate does not open sockets itself: the transport is injected (`wan` in the agent, an
//! in-memory map in tests).

pub mod feed;
pub mod fixture;
pub mod mem_transport;
pub mod network;
pub mod node;
pub mod rounds;
pub mod state;
pub mod store;
pub mod types;
pub mod wan_transport;

pub use state::{Command, CommandError, FabricState, NodeId, Proposal};
pub use types::{FabricNode, Raft, TypeConfig};
