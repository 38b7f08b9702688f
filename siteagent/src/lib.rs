//! The site agent daemon: configuration, wiring of WAN + Raft + admin API, and metrics.
//!
//! `main.rs` only parses arguments and calls [`agent::run`]; everything here is a library so
//! tests can run an agent in-process too. [`workload`] runs service instances under the
//! `fabric-guard` watchdog ([`guard`], binary `src/bin/fabric-guard.rs`).
//!
//! Invariant: an agent holds no authority of its own; everything it decides or records goes
//! through the replicated state.

pub mod admin;
pub mod agent;
pub mod api;
pub mod clock;
pub mod config;
pub mod control;
pub mod guard;
pub mod health;
pub mod keeper;
pub mod leader;
pub mod metrics;
pub mod workload;
pub mod zone;

pub use agent::run;
pub use config::AgentConfig;
