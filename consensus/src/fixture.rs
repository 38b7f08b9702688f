//! Building fabric states in tests the way the real one is built: through [`Command`]s applied by
//! the state machine, so every state a unit test feeds the planner, the quorum, the keeper or the
//! zone is one the state machine accepts.
//!
//! Owns: applying a command or panicking with the refusal, and the commands tests need most,
//! with the fields a test does not care about filled in. It is compiled always (not behind a
//! feature) so test builds and binary builds share one set of features and CI compiles the
//! dependency tree once. Does not: run anywhere but in tests, nor choose a topology: each test
//! suite builds its own from these pieces.

use std::net::IpAddr;

use crate::NodeId;
use crate::state::{Capacity, Command, FabricState, Health, Proposal, VolumeSpec};

/// Applies `command` at time 1 ms as actor `test`, panicking with the state machine's refusal
/// (a broken fixture, not a behaviour under test).
pub fn apply(state: &mut FabricState, command: Command) {
    state
        .apply(&Proposal {
            at_ms: 1,
            actor: "test".into(),
            command,
            term: None,
        })
        .unwrap_or_else(|e| panic!("fixture command refused: {e}"));
}

/// A site with `priority`.
pub fn site(name: &str, priority: u32) -> Command {
    Command::UpsertSite {
        name: name.into(),
        priority,
    }
}

/// Host `id` in `site`, reachable for workloads at `addresses`, with room for two 500-milli,
/// 256 MiB instances.
pub fn host(id: NodeId, site: &str, addresses: Vec<IpAddr>) -> Command {
    Command::RegisterHost {
        id,
        site: site.into(),
        address: "127.0.0.1:1".into(),
        admin_address: "127.0.0.1:2".into(),
        addresses,
        capacity: Capacity {
            cpu_millis: 1000,
            memory_mib: 1024,
        },
        labels: Default::default(),
    }
}

/// Volume `name` of `size` bytes (4 KiB blocks), primary at `primary`, with `replicas` given as
/// `site:sync` or `site:async`.
pub fn volume(name: &str, size: u64, primary: &str, replicas: &[&str]) -> Command {
    Command::CreateVolume {
        spec: VolumeSpec {
            name: name.into(),
            size,
            block_size: 4096,
            primary: primary.into(),
            replicas: replicas
                .iter()
                .map(|r| r.parse().unwrap_or_else(|e| panic!("fixture replica: {e}")))
                .collect(),
        },
    }
}

/// `observer` (one of a site's observers) reports `site` up or down.
pub fn observe_site(observer: NodeId, site: &str, up: bool) -> Command {
    Command::ObserveSite {
        observer,
        site: site.into(),
        up,
    }
}

/// `reporter` writes its site's view: exactly `dead` of the site's agents are dead.
pub fn site_view(site: &str, reporter: NodeId, dead: &[NodeId]) -> Command {
    Command::ReportSiteView {
        site: site.into(),
        reporter,
        dead: dead.iter().copied().collect(),
    }
}

pub fn assign(service: &str, site: &str, epoch: u64) -> Command {
    Command::AssignOwner {
        service: service.into(),
        site: site.into(),
        epoch,
        reason: "test".into(),
    }
}

pub fn place(service: &str, host: NodeId, epoch: u64) -> Command {
    Command::PlaceInstance {
        service: service.into(),
        host,
        epoch,
        reason: "test".into(),
    }
}

/// The host's report that placement `placement` of `service` runs on it.
pub fn running(service: &str, host: NodeId, epoch: u64, placement: u64) -> Command {
    Command::InstanceRunning {
        service: service.into(),
        host,
        epoch,
        placement,
    }
}

/// The host's report that placement `placement` of `service` has stopped on it.
pub fn stopped(service: &str, host: NodeId, epoch: u64, placement: u64) -> Command {
    Command::InstanceStopped {
        service: service.into(),
        host,
        epoch,
        placement,
    }
}

/// The placement number of `service`'s instance on `host` (panics when there is none: a broken
/// fixture).
pub fn placement_of(state: &FabricState, service: &str, host: NodeId) -> u64 {
    state
        .services
        .get(service)
        .and_then(|s| s.instances.get(&host))
        .map(|i| i.placement)
        .unwrap_or_else(|| panic!("fixture: no instance of {service} on host {host}"))
}

pub fn revoke(service: &str, host: NodeId, epoch: u64) -> Command {
    Command::RevokeInstance {
        service: service.into(),
        host,
        epoch,
        planned: false,
        reason: "test".into(),
    }
}

pub fn host_health(id: NodeId, health: Health) -> Command {
    Command::SetHostHealth {
        id,
        health,
        reason: "test".into(),
    }
}

pub fn site_health(name: &str, health: Health) -> Command {
    Command::SetSiteHealth {
        name: name.into(),
        health,
        reason: "test".into(),
    }
}
