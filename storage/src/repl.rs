//! Cross-site replication of a volume: one primary copy, replicas at other sites, each
//! synchronous or asynchronous, resynchronised by comparing BLAKE3 hashes of chunks.
//!
//! Layout: [`proto`] (wire messages), [`primary`] (the primary's sans-IO state machine, with
//! [`peer`] per replica, [`journal`] and [`resync`]), [`replica`] (the replica's sans-IO state
//! machine), [`chunks`] (dirty-chunk bits, chunk hashing), [`store`] (the replica's async
//! side over a file), [`shell`] (the primary's async side: a [`crate::BlockDevice`] that
//! replicates) and [`memlink`] (an in-memory link with faults, for tests).
//!
//! Invariants:
//! - a replica applies writes strictly in LSN order and acknowledges only what is fsynced;
//! - a sync write completes only when every sync replica not recorded as outdated has it;
//! - a replica refuses any epoch older than the newest it has persisted.
//!
//! Does not: choose the primary, the replica set or the epoch (the fabric state does; the agent
//! builds a new [`shell::ReplicatedDisk`] when they change), or carry bytes between sites (a
//! [`shell::Link`] does).

pub mod chunks;
pub mod journal;
pub mod memlink;
pub mod peer;
pub mod primary;
pub mod proto;
pub mod replica;
pub mod resync;
pub mod shell;
#[cfg(test)]
mod sim;
pub mod store;

use std::time::Duration;

pub use primary::{
    Action, DiffReport, History, Mode, Primary, ReplicaSpec, ReplicaState, ReplicaStatus,
};
pub use proto::{FromReplica, Lsn, Op, ToReplica};
pub use shell::{Link, LinkError, Outdater, ReplicatedDisk, ShellError};
pub use store::ReplicaStore;

/// Replication parameters of one volume. Defaults in [`ReplConfig::default`]; in config files
/// durations are humantime strings (`"5s"`, `"100ms"`).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ReplConfig {
    /// Bytes per chunk, the unit of dirty tracking, hashing and resync.
    pub chunk: u32,
    /// Largest message to a replica (the WAN frame limit is 16 MiB).
    pub max_message: u64,
    /// Bytes of unacknowledged writes kept per replica before falling back to dirty chunks.
    pub journal_limit: u64,
    /// A request without answer, or a sync write waiting on a replica, for this long counts as
    /// a lost replica.
    #[serde(with = "humantime_serde")]
    pub ack_timeout: Duration,
    /// Pause before reconnecting to a replica that was lost or refused.
    #[serde(with = "humantime_serde")]
    pub retry: Duration,
    /// Chunks per hash request.
    pub hash_batch: u64,
    /// How often the shell polls the state machine (timeouts, metrics).
    #[serde(with = "humantime_serde")]
    pub tick: Duration,
}

impl Default for ReplConfig {
    fn default() -> Self {
        Self {
            chunk: 64 * 1024,
            max_message: 4 * 1024 * 1024,
            journal_limit: 64 * 1024 * 1024,
            ack_timeout: Duration::from_secs(5),
            retry: Duration::from_secs(1),
            hash_batch: 1024,
            tick: Duration::from_millis(100),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_config_with_some_fields_keeps_the_other_defaults_and_refuses_unknown_ones() {
        let cfg: ReplConfig =
            serde_json::from_str(r#"{"chunk": 4096, "ack_timeout": "2s"}"#).expect("parse");
        assert_eq!(cfg.chunk, 4096);
        assert_eq!(cfg.ack_timeout, Duration::from_secs(2));
        assert_eq!(cfg.journal_limit, ReplConfig::default().journal_limit);
        let err = serde_json::from_str::<ReplConfig>(r#"{"chunks": 4096}"#).expect_err("unknown");
        assert!(err.to_string().contains("chunks"), "{err}");
    }
}
