//! Test fabrics built the way the real one is: through `consensus::state` commands, so every
//! state a unit test feeds the keeper, the leader or the zone is one the state machine accepts.
//!
//! Owns: the small topology the agent's unit tests share. Does not: exist outside `cfg(test)`.

use consensus::state::{Capacity, Command, FabricState, Health, Proposal, ServiceSpec};

/// Applies `command`, panicking with the state machine's refusal (a broken fixture).
pub fn apply(state: &mut FabricState, command: Command) {
    state
        .apply(&Proposal {
            at_ms: 1,
            actor: "test".into(),
            command,
        })
        .unwrap_or_else(|e| panic!("fixture command refused: {e}"));
}

/// [`placed`], with `web` reported running on host 11.
pub fn fabric() -> FabricState {
    let mut state = placed();
    apply(&mut state, running("web", 11, 1));
    state
}

/// Sites s1 and s2; hosts 11, 12 (s1, addresses 10.0.1.1 / 10.0.1.2) and 21 (s2, 10.0.2.1);
/// service `web` (DNS name `web`, sites s1 then s2) owned by s1 under epoch 1 and assigned to
/// host 11, not yet reported running.
pub fn placed() -> FabricState {
    let mut state = FabricState::default();
    for (site, priority) in [("s1", 1), ("s2", 2)] {
        apply(
            &mut state,
            Command::UpsertSite {
                name: site.into(),
                priority,
            },
        );
    }
    for (id, site, ip) in [
        (11, "s1", "10.0.1.1"),
        (12, "s1", "10.0.1.2"),
        (21, "s2", "10.0.2.1"),
    ] {
        apply(
            &mut state,
            Command::RegisterHost {
                id,
                site: site.into(),
                address: "127.0.0.1:1".into(),
                admin_address: "127.0.0.1:2".into(),
                addresses: ip.parse().into_iter().collect(),
                capacity: Capacity {
                    cpu_millis: 1000,
                    memory_mib: 1024,
                },
                labels: Default::default(),
            },
        );
    }
    apply(
        &mut state,
        Command::CreateService {
            spec: ServiceSpec::process("web", &["s1", "s2"], "fabric-demo", 8080),
        },
    );
    apply(&mut state, assign("web", "s1", 1));
    apply(&mut state, place("web", 11, 1));
    state
}

pub fn assign(service: &str, site: &str, epoch: u64) -> Command {
    Command::AssignOwner {
        service: service.into(),
        site: site.into(),
        epoch,
        reason: "test".into(),
    }
}

pub fn place(service: &str, host: u64, epoch: u64) -> Command {
    Command::PlaceInstance {
        service: service.into(),
        host,
        epoch,
        reason: "test".into(),
    }
}

pub fn running(service: &str, host: u64, epoch: u64) -> Command {
    Command::InstanceRunning {
        service: service.into(),
        host,
        epoch,
    }
}

pub fn revoke(service: &str, host: u64, epoch: u64) -> Command {
    Command::RevokeInstance {
        service: service.into(),
        host,
        epoch,
        planned: false,
        reason: "test".into(),
    }
}

pub fn host_health(id: u64, health: Health) -> Command {
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
