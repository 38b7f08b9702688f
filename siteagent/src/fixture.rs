//! The small topology the agent's unit tests share, built through `consensus::state` commands
//! ([`consensus::fixture`]), so every state a unit test feeds the keeper, the leader or the zone
//! is one the state machine accepts.
//!
//! Owns: that topology. Does not: exist outside `cfg(test)`.

use consensus::state::{FabricState, ServiceSpec};

pub use consensus::fixture::{
    apply, host_health, observe_site, place, revoke, running, site_health, site_view, stopped,
};
use consensus::fixture::{assign, host, site};

/// [`placed`], with `web` reported running on host 11.
pub fn fabric() -> FabricState {
    let mut state = placed();
    apply(&mut state, running("web", 11, 1, 1));
    state
}

/// Sites s1 and s2; hosts 11, 12 (s1, addresses 10.0.1.1 / 10.0.1.2) and 21 (s2, 10.0.2.1);
/// service `web` (DNS name `web`, sites s1 then s2) owned by s1 under epoch 1 and assigned to
/// host 11, not yet reported running.
pub fn placed() -> FabricState {
    let mut state = FabricState::default();
    apply(&mut state, site("s1", 1));
    apply(&mut state, site("s2", 2));
    for (id, s, ip) in [
        (11, "s1", "10.0.1.1"),
        (12, "s1", "10.0.1.2"),
        (21, "s2", "10.0.2.1"),
    ] {
        apply(&mut state, host(id, s, ip.parse().into_iter().collect()));
    }
    apply(
        &mut state,
        consensus::state::Command::CreateService {
            spec: ServiceSpec::process("web", &["s1", "s2"], "fabric-demo", 8080),
        },
    );
    apply(&mut state, assign("web", "s1", 1));
    apply(&mut state, place("web", 11, 1));
    state
}
