//! What one lease confirmation reads, as a value that can cross the WAN: the state revision,
//! the agreed lease terms, this host's assignments and a digest of the DNS zone.
//!
//! Owns: [`LeaseRead`] and the pure [`lease_read`] that computes it from a state. A confirmation is evaluated where the up-to-date state is — locally after a
//! read index, or on the leader when this agent reaches it only through another voter (a relayed
//! confirmation) — so it must not be a closure over local state.
//!
//! Invariant: `lease_read(s, host, site)` depends only on `s`; the digest of the same names is
//! the same on every agent of one build, so a DNS server whose own state lags (its site is cut
//! from the leader but confirms through another voter) still vouches when the zone it serves is
//! exactly the zone of the confirmed state.
//!
//! Does not: send or time anything (the keeper and the cluster do).

use std::collections::BTreeMap;

use consensus::state::{FabricState, InstanceState, LeaseTerms, ServiceSpec};
use serde::{Deserialize, Serialize};

use crate::zone;

/// An instance the state assigns to a host.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Assignment {
    pub epoch: u64,
    /// The instance's placement number, named in every report about it.
    pub placement: u64,
    pub state: InstanceState,
    /// Placed under an older epoch of the current ownership, before a spec update: it keeps
    /// running (and is fed) until the planner replaces it, but is never started again.
    pub outdated: bool,
    pub spec: ServiceSpec,
}

/// The answer to one lease confirmation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LeaseRead {
    /// The revision of the state it was read from.
    pub revision: u64,
    /// The lease terms the fabric agreed on, if any.
    pub lease_terms: Option<LeaseTerms>,
    /// The host's instances of the current ownership (see [`assignments`]).
    pub assigned: BTreeMap<String, Assignment>,
    /// [`zone::digest`] of that state's zone.
    pub zone_digest: u64,
}

/// Reads what a confirmation for `host` of `site` returns from `s`.
pub fn lease_read(s: &FabricState, host: u64, site: &str) -> LeaseRead {
    LeaseRead {
        revision: s.revision,
        lease_terms: s.lease_terms,
        assigned: assignments(s, host, site),
        zone_digest: zone::digest(&zone::names(s)),
    }
}

/// This host's instances of the current ownership of services owned by its site: under the
/// service's epoch, or under an older one since the owner was assigned (not yet replaced after
/// a spec update).
fn assignments(s: &FabricState, host: u64, site: &str) -> BTreeMap<String, Assignment> {
    s.services
        .values()
        .filter(|svc| svc.owner.as_deref() == Some(site))
        .filter_map(|svc| {
            let inst = svc.instances.get(&host)?;
            (svc.owner_epoch..=svc.epoch)
                .contains(&inst.epoch)
                .then(|| {
                    (
                        svc.spec.name.clone(),
                        Assignment {
                            epoch: inst.epoch,
                            placement: inst.placement,
                            state: inst.state,
                            outdated: inst.epoch < svc.epoch,
                            spec: svc.spec.clone(),
                        },
                    )
                })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixture;

    #[test]
    fn a_confirmation_reads_the_host_assignments_and_the_zone_of_the_state() {
        let state = fixture::fabric();
        let read = lease_read(&state, 11, "s1");
        assert_eq!(read.revision, state.revision);
        let web = read
            .assigned
            .get("web")
            .expect("web is assigned to host 11");
        assert_eq!(web.state, InstanceState::Running);
        assert!(
            lease_read(&state, 11, "s2").assigned.is_empty(),
            "other site"
        );
        assert!(
            lease_read(&state, 99, "s1").assigned.is_empty(),
            "other host"
        );
        assert_eq!(read.zone_digest, zone::digest(&zone::names(&state)));
    }
}
