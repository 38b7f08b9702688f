//! The planner's rules for services with volumes: where their data can follow them (the RPO
//! gate) and the promotion that comes before a move.
//!
//! - A site can take the service only if it holds a copy of each volume that may be promoted:
//!   the primary already, or in sync, or lagging within the service's `max_rpo` (any lag when
//!   it has none), or anything once an operator accepted the loss (`sitectl failover --force`).
//!   An outdated, resyncing or not-yet-reported copy never takes a failover by itself.
//! - A planned move (switchover to the target) promotes only a copy that is in sync with no
//!   writer left on the old primary, so it loses nothing.
//! - The owner is assigned only once every volume's primary is at the new site.

use consensus::state::{CopyState, FabricState, Service};

use super::Action;

/// Why `site` cannot take `svc` because of its volumes, if it cannot.
pub(super) fn site_problem(state: &FabricState, svc: &Service, site: &str) -> Option<String> {
    svc.spec.volumes.iter().find_map(|name| {
        let Some(v) = state.volumes.get(name) else {
            return Some(format!("volume {name} does not exist"));
        };
        if v.primary == site || v.accept_loss.is_some() {
            return None;
        }
        let Some(copy) = v.copies.get(site) else {
            return Some(format!("volume {name} has no copy at site {site}"));
        };
        let planned = svc.target.as_deref() == Some(site);
        match copy.state {
            CopyState::Primary | CopyState::InSync => None,
            // It catches up once the writer stops; the move waits for that.
            CopyState::Lagging if planned => None,
            CopyState::Lagging => match svc.spec.max_rpo {
                Some(rpo) if u128::from(copy.lag.age_ms) > rpo.as_millis() => Some(format!(
                    "volume {name}'s copy at site {site} lags by {} ms, more than the max RPO of {rpo:?} (sitectl failover --force accepts the loss)",
                    copy.lag.age_ms
                )),
                _ => None,
            },
            _ => v.promotion_risk(site),
        }
    })
}

/// Pushes the promotions that must come before `svc` is given to `site`, and says whether the
/// assignment may follow in the same round: the leader proposes actions in order and stops at
/// the first refusal, so it is committed only after them. False while a planned move waits for
/// its copy to catch up, or a copy is missing.
pub(super) fn ready(
    state: &FabricState,
    svc: &Service,
    name: &str,
    site: &str,
    actions: &mut Vec<Action>,
) -> bool {
    let mut ready = true;
    for vol in &svc.spec.volumes {
        let Some(v) = state.volumes.get(vol) else {
            return false;
        };
        if v.primary == site {
            continue;
        }
        let Some(copy) = v.copies.get(site) else {
            ready = false;
            continue;
        };
        let planned = svc.target.as_deref() == Some(site);
        if planned && v.accept_loss.is_none() && (copy.state != CopyState::InSync || v.writers > 0)
        {
            ready = false;
            continue; // Wait: the old primary drains its writes to it.
        }
        let risk = v.promotion_risk(site);
        let reason = match (&risk, &v.accept_loss) {
            (None, _) if planned => "planned move: the copy holds every write".to_string(),
            (None, _) => format!("service {name} fails over; the copy was in sync"),
            (Some(_), Some(accepted)) => format!("loss accepted by an operator: {accepted}"),
            (Some(r), None) => match svc.spec.max_rpo {
                Some(rpo) => format!("{r}, within the max RPO of {rpo:?}"),
                None => format!("{r}; the service sets no max RPO"),
            },
        };
        actions.push(Action::Promote {
            service: name.into(),
            volume: vol.clone(),
            site: site.into(),
            epoch: v.epoch + 1,
            force: risk.is_some(),
            reason,
        });
    }
    ready
}

/// In a simulation: the service's instances are gone, so are their NBD connections.
pub(super) fn writers_gone(state: &mut FabricState, service: &str) {
    let Some(svc) = state.services.get(service) else {
        return;
    };
    for vol in svc.spec.volumes.clone() {
        if let Some(v) = state.volumes.get_mut(&vol) {
            v.writers = 0;
        }
    }
}
