//! `storage`: the fabric's block volumes.
//!
//! Owns: the block-device interface every volume copy is reached through ([`device`]), raw-file
//! disks ([`device::FileDisk`]), the NBD protocol (server for the primary copy, client for the
//! demo service and tests: [`nbd`]), and cross-site replication ([`repl`]): a sans-IO core
//! (primary and replica state machines, journal, dirty tracking, BLAKE3 resync) and an async shell
//! that drives it over any request/reply link (the agent plugs in the WAN's `bulk` channel).
//!
//! Does not: decide which site is primary (that is the fabric state's volume epoch, decided by the
//! planner and operators), talk to Raft, or know about sites' health. The agent wires those in.
//!
//! Invariants:
//! - a write is acknowledged to an NBD client only after it is durable where its mode says:
//!   locally with FUA/FLUSH, and on every in-sync synchronous replica;
//! - every replication message carries the volume epoch; a copy refuses any epoch older than the
//!   newest it has seen (persisted), so a deposed primary can never write to a replica;
//! - garbage on any wire (NBD or replication) yields an error reply or a closed connection, never
//!   a panic, and never a write outside the volume.

pub mod device;
pub mod nbd;
pub mod repl;

pub use device::{BlockDevice, DeviceError, FileDisk};
