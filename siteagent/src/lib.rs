//! The site agent daemon: configuration, wiring of WAN + Raft + admin API, and metrics.
//!
//! `main.rs` only parses arguments and calls [`agent::run`]; everything here is a library so
//! tests can run an agent in-process too. [`workload`] runs service instances under the
//! `fabric-guard` watchdog ([`guard`], binary `src/bin/fabric-guard.rs`).
//!
//! Invariant: an agent holds no authority of its own; everything it decides or records goes
//! through the replicated state.
//!
//! Each loop takes only the handles it uses: [`cluster::Cluster`] (Raft member + WAN: reads,
//! proposals, admission, and its [`view::StateView`] — the applied state fed by Raft on a voter
//! and by a relay on a host, [`relay`]), [`lease::LeaseHandle`] (the lease, its confirmed revision and the DNS
//! vouching rule), a [`workload::Driver`], or the [`fabric::Fabric`] trait where a unit test
//! should feed a fake ([`fabric::MemoryFabric`]). [`agent`] only wires them.
//!
//! Module dependencies (`a → b`: a uses b; no cycles, `agent` is the only module that sees all):
//! ```text
//! agent    → admin, cluster, config, fabric, health, keeper, leader, lease, metrics, prevote,
//!            relay, view, volumes, workload, zone
//! volumes  → clock, cluster, config, lease
//! admin    → api, clock, cluster, config, fabric, lease, metrics
//! leader   → clock, cluster, fabric, lease, recovery
//! keeper   → clock, confirmation, fabric, lease, workload
//! prevote  → cluster, control
//! health   → cluster, control
//! metrics  → clock, cluster, lease
//! recovery → zone
//! cluster  → clock, confirmation, control, fabric, relay, view
//! relay    → control, view
//! fabric   → clock, confirmation
//! control  → confirmation
//! confirmation → zone
//! zone     → clock, config, lease, view
//! workload → guard → clock
//! api      → config
//! leaves:    clock, config, lease, view
//! ```

pub mod admin;
pub mod agent;
pub mod api;
pub mod clock;
pub mod cluster;
pub mod config;
pub mod confirmation;
pub mod control;
pub mod fabric;
#[cfg(test)]
mod fixture;
pub mod guard;
pub mod health;
pub mod keeper;
pub mod leader;
pub mod lease;
pub mod metrics;
pub mod prevote;
pub mod recovery;
pub mod relay;
pub mod view;
pub mod volumes;
pub mod workload;
pub mod zone;

pub use agent::run;
pub use config::AgentConfig;
