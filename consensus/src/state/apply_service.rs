//! Applying the service commands: create/delete, ownership, instances.
//!
//! Invariant: the epoch is the fencing token. [`Command::AssignOwner`] must name the next epoch
//! and finds no instance left; [`Command::UpdateService`] may bump it too, keeping owner and
//! instances (the same site), and [`Command::PlaceInstance`] places only under the current one; every instance command must name the instance's epoch. So two
//! sites never hold instances of one service in the state at the same time, and a late message
//! about an old placement cannot change a new one; a host's report also names the placement, so
//! a late report about an earlier placement on the same host and epoch cannot either. [`Command::PlaceInstance`] never raises the
//! live instances (not revoked, not on a drained host) above the spec's `placement.instances`.
//! A delete revokes every instance and removes the service only when none is left, leaving a
//! [`Tombstone`] with its epoch; a create of that name starts from the tombstone, so a name's
//! epochs never go backwards.
//!
//! Does not: time the wait for a revoked instance's lease (the planner's `RevocationClock`
//! does, and proposes [`Command::ForgetInstance`]).

use std::collections::BTreeMap;

use super::{
    Command, CommandError, FabricState, Host, Instance, InstanceState, NodeId, Service,
    ServiceSpec, Tombstone, invalid,
};

/// Instances of `s` that count against `placement.instances`: not revoked (on its way out), and
/// not on a drained host (its replacement is placed before it is stopped, make-before-break).
fn live_instances(s: &Service, hosts: &BTreeMap<NodeId, Host>) -> u32 {
    let counted = s
        .instances
        .values()
        .filter(|i| i.state != InstanceState::Revoked)
        .filter(|i| !hosts.get(&i.host).is_some_and(|h| h.drained))
        .count();
    u32::try_from(counted).unwrap_or(u32::MAX)
}

impl FabricState {
    fn service_mut(&mut self, name: &str) -> Result<&mut Service, CommandError> {
        self.services
            .get_mut(name)
            .ok_or_else(|| CommandError::UnknownService(name.to_string()))
    }

    /// A service that may still be owned and placed: refused while it is being deleted.
    fn active_service_mut(&mut self, name: &str) -> Result<&mut Service, CommandError> {
        let s = self.service_mut(name)?;
        if s.deleting.is_some() {
            return Err(CommandError::Conflict {
                service: name.to_string(),
                reason: "it is being deleted".into(),
            });
        }
        Ok(s)
    }

    /// Revokes every live instance of `name` and marks it deleting; removes it at once when it
    /// has no instance left.
    fn delete_service(&mut self, now: u64, name: &str) -> Result<Option<String>, CommandError> {
        let s = self
            .services
            .get(name)
            .ok_or_else(|| CommandError::UnknownService(name.to_string()))?;
        if s.deleting.is_some() {
            return Ok(None);
        }
        // Planned where the owner can still hear it, as for a move (the planner's rule).
        let mut stops = Vec::new();
        for inst in s.instances.values().filter(|i| i.live()) {
            let how = if self.stop_is_planned(s, inst.host) {
                "planned stop"
            } else {
                "revoked"
            };
            stops.push(format!("host {} {how} (epoch {})", inst.host, inst.epoch));
        }
        let s = self.service_mut(name)?;
        s.deleting = Some(now);
        s.target = None;
        for inst in s.instances.values_mut().filter(|i| i.live()) {
            inst.state = InstanceState::Revoked;
            inst.since_ms = now;
        }
        if self.remove_if_deleted(name, now) {
            return Ok(Some(format!("service {name} deleted")));
        }
        let stops = if stops.is_empty() {
            String::new()
        } else {
            format!(": instance on {}", stops.join(", "))
        };
        Ok(Some(format!(
            "service {name} deleting{stops}; removed once every instance is stopped or its lease has run out"
        )))
    }

    /// Checks what a spec names against what exists: its sites, and a DNS name no other
    /// service has.
    fn check_spec_references(&self, spec: &ServiceSpec) -> Result<(), CommandError> {
        if let Some(unknown) = spec
            .placement
            .sites
            .iter()
            .find(|s| !self.sites.contains_key(*s))
        {
            return Err(CommandError::UnknownSite(unknown.clone()));
        }
        if let Some(dns) = &spec.dns_name
            && let Some(other) = self
                .services
                .values()
                .find(|s| s.spec.name != spec.name && s.spec.dns_name.as_ref() == Some(dns))
        {
            return Err(invalid(
                "dns_name",
                format!(
                    "`{dns}` is already the name of service `{}`",
                    other.spec.name
                ),
            ));
        }
        Ok(())
    }

    /// Replaces the spec of `name` in place; bumps the epoch when its instances must be
    /// replaced (the planner then does it one at a time).
    fn update_service(
        &mut self,
        name: &str,
        spec: &ServiceSpec,
    ) -> Result<Option<String>, CommandError> {
        let s = self
            .services
            .get(name)
            .ok_or_else(|| CommandError::UnknownService(name.to_string()))?;
        if s.deleting.is_some() {
            return Err(CommandError::Conflict {
                service: name.to_string(),
                reason: "it is being deleted; create it again once it is gone".into(),
            });
        }
        if spec.name != name {
            return Err(invalid(
                "name",
                format!(
                    "an update cannot rename service `{name}` to `{}`: create the new name and delete the old one",
                    spec.name
                ),
            ));
        }
        spec.validate()?;
        self.check_spec_references(spec)?;
        if spec.volumes != s.spec.volumes {
            return Err(invalid(
                "volumes",
                format!(
                    "an update cannot change the volumes of service `{name}` ({:?}): create a new service",
                    s.spec.volumes
                ),
            ));
        }
        self.check_service_volumes(spec)?;
        for (role, site) in [("owns", &s.owner), ("is the move target of", &s.target)] {
            if let Some(site) = site
                && !spec.placement.sites.contains(site)
            {
                return Err(invalid(
                    "placement.sites",
                    format!(
                        "site `{site}` {role} service `{name}` and must stay in the list; move the service first (sitectl switchover)"
                    ),
                ));
            }
        }
        if s.spec == *spec {
            return Ok(None);
        }
        let restart = s.spec.needs_restart_for(spec) && s.owner.is_some();
        let s = self.service_mut(name)?;
        s.spec = spec.clone();
        if !restart {
            return Ok(Some(format!(
                "service {name} updated: nothing an instance runs changed, no restart"
            )));
        }
        debug_assert!(s.epoch >= s.owner_epoch, "epochs only go up");
        s.epoch += 1;
        let epoch = s.epoch;
        let old: Vec<String> = s
            .instances
            .values()
            .filter(|i| i.live())
            .map(|i| format!("host {} (epoch {})", i.host, i.epoch))
            .collect();
        Ok(Some(if old.is_empty() {
            format!("service {name} updated: new instances run it under epoch {epoch}")
        } else {
            format!(
                "service {name} updated: its instances on {} are replaced one at a time under epoch {epoch}",
                old.join(", ")
            )
        }))
    }

    /// Removes a deleting service with no instance left, leaving its tombstone. True if removed.
    fn remove_if_deleted(&mut self, name: &str, now: u64) -> bool {
        let done = self
            .services
            .get(name)
            .is_some_and(|s| s.deleting.is_some() && s.instances.is_empty());
        if !done {
            return false;
        }
        if let Some(s) = self.services.remove(name) {
            debug_assert!(
                self.tombstones.get(name).is_none_or(|t| t.epoch <= s.epoch),
                "epochs never go backwards for a name"
            );
            self.tombstones.insert(
                name.to_string(),
                Tombstone {
                    epoch: s.epoch,
                    removed_ms: now,
                },
            );
        }
        true
    }

    /// Event suffix for an instance removal that finished a delete.
    fn finish_delete(&mut self, name: &str, now: u64) -> &'static str {
        if self.remove_if_deleted(name, now) {
            "; service deleted"
        } else {
            ""
        }
    }

    /// The instance of `service` on `host`, if it belongs to `epoch`.
    fn instance_mut(
        &mut self,
        service: &str,
        host: NodeId,
        epoch: u64,
    ) -> Result<&mut Instance, CommandError> {
        let s = self.service_mut(service)?;
        let current = s.epoch;
        let inst = s
            .instances
            .get_mut(&host)
            .ok_or_else(|| CommandError::UnknownInstance {
                service: service.to_string(),
                host,
            })?;
        if inst.epoch != epoch {
            return Err(CommandError::StaleEpoch {
                service: service.to_string(),
                current: current.max(inst.epoch),
                got: epoch,
            });
        }
        Ok(inst)
    }

    /// The instance of `service` on `host` a host's report is about: it must belong to `epoch`
    /// and be placement `placement`, not an earlier one on the same host.
    fn reported_instance_mut(
        &mut self,
        service: &str,
        host: NodeId,
        epoch: u64,
        placement: u64,
    ) -> Result<&mut Instance, CommandError> {
        let inst = self.instance_mut(service, host, epoch)?;
        if inst.placement != placement {
            return Err(CommandError::StalePlacement {
                service: service.to_string(),
                host,
                current: inst.placement,
                got: placement,
            });
        }
        Ok(inst)
    }

    pub(super) fn apply_service_command(
        &mut self,
        now: u64,
        cmd: &Command,
    ) -> Result<Option<String>, CommandError> {
        match cmd {
            Command::CreateService { spec } => {
                spec.validate()?;
                if let Some(old) = self.services.get(&spec.name) {
                    return Err(match old.deleting {
                        Some(_) => CommandError::ServiceDeleting {
                            name: spec.name.clone(),
                            hosts: old.instances.keys().copied().collect(),
                        },
                        None => CommandError::ServiceExists(spec.name.clone()),
                    });
                }
                self.check_spec_references(spec)?;
                self.check_service_volumes(spec)?;
                // A re-created name continues from its last epoch: fencing tokens never go back.
                let epoch = self.tombstones.remove(&spec.name).map_or(0, |t| t.epoch);
                self.services.insert(
                    spec.name.clone(),
                    Service {
                        spec: spec.clone(),
                        created_ms: now,
                        epoch,
                        owner: None,
                        owner_since_ms: now,
                        target: None,
                        owner_epoch: epoch,
                        instances: Default::default(),
                        deleting: None,
                        placements: 0,
                    },
                );
                Ok(Some(if epoch > 0 {
                    format!(
                        "service {} created again (epochs continue above {epoch})",
                        spec.name
                    )
                } else {
                    format!("service {} created", spec.name)
                }))
            }
            Command::DeleteService { name } => self.delete_service(now, name),
            Command::UpdateService { name, spec } => self.update_service(name, spec),
            Command::SetServiceTarget { service, site } => {
                let s = self.active_service_mut(service)?;
                if let Some(site) = site
                    && !s.spec.placement.sites.contains(site)
                {
                    return Err(invalid(
                        "target site",
                        format!(
                            "`{site}` is not among the sites of service `{service}` ({})",
                            s.spec.placement.sites.join(", ")
                        ),
                    ));
                }
                if s.target == *site {
                    return Ok(None);
                }
                s.target = site.clone();
                Ok(Some(match site {
                    Some(site) => format!("service {service} is to move to site {site}"),
                    None => format!("service {service}: planned move cancelled"),
                }))
            }
            Command::AssignOwner {
                service,
                site,
                epoch,
                reason,
            } => {
                if !self.sites.contains_key(site) {
                    return Err(CommandError::UnknownSite(site.clone()));
                }
                let s = self.active_service_mut(service)?;
                if *epoch != s.epoch + 1 {
                    return Err(CommandError::StaleEpoch {
                        service: service.clone(),
                        current: s.epoch,
                        got: *epoch,
                    });
                }
                if let Some(host) = s.instances.keys().next() {
                    return Err(CommandError::Conflict {
                        service: service.clone(),
                        reason: format!(
                            "cannot change owner while host {host} still holds an instance"
                        ),
                    });
                }
                let spec = s.spec.clone();
                if let Some(reason) = self.volumes_block_owner(&spec, site) {
                    return Err(CommandError::Conflict {
                        service: service.clone(),
                        reason,
                    });
                }
                let s = self.active_service_mut(service)?;
                debug_assert!(*epoch > s.epoch, "epochs only go up");
                let old = s.owner.replace(site.clone());
                s.epoch = *epoch;
                s.owner_epoch = *epoch;
                s.owner_since_ms = now;
                if s.target.as_ref() == Some(site) {
                    s.target = None;
                }
                Ok(Some(match old {
                    Some(old) if old != *site => format!(
                        "service {service} moves from site {old} to site {site} (epoch {epoch}): {reason}"
                    ),
                    _ => {
                        format!("service {service} owned by site {site} (epoch {epoch}): {reason}")
                    }
                }))
            }
            Command::PlaceInstance {
                service,
                host,
                epoch,
                reason,
            } => {
                let h = self
                    .hosts
                    .get(host)
                    .ok_or(CommandError::UnknownHost(*host))?;
                let host_site = h.site.clone();
                let s = self.active_service_mut(service)?;
                if *epoch != s.epoch {
                    return Err(CommandError::StaleEpoch {
                        service: service.clone(),
                        current: s.epoch,
                        got: *epoch,
                    });
                }
                if s.owner.as_ref() != Some(&host_site) {
                    return Err(CommandError::Conflict {
                        service: service.clone(),
                        reason: format!(
                            "host {host} is in site {host_site}, which does not own it"
                        ),
                    });
                }
                if s.instances.contains_key(host) {
                    return Err(CommandError::Conflict {
                        service: service.clone(),
                        reason: format!("host {host} already holds an instance"),
                    });
                }
                let limit = s.spec.placement.instances;
                let s = &self.services[service];
                let count = live_instances(s, &self.hosts);
                if count >= limit {
                    return Err(CommandError::TooManyInstances {
                        service: service.clone(),
                        count,
                        limit,
                    });
                }
                let s = self.service_mut(service)?;
                s.placements += 1;
                let placement = s.placements;
                s.instances.insert(
                    *host,
                    Instance {
                        host: *host,
                        epoch: *epoch,
                        placement,
                        state: InstanceState::Assigned,
                        since_ms: now,
                    },
                );
                Ok(Some(format!(
                    "service {service}: instance placed on host {host} (epoch {epoch}, placement {placement}): {reason}"
                )))
            }
            Command::InstanceRunning {
                service,
                host,
                epoch,
                placement,
            } => {
                let inst = self.reported_instance_mut(service, *host, *epoch, *placement)?;
                match inst.state {
                    InstanceState::Running => Ok(None),
                    InstanceState::Revoked => Err(CommandError::Conflict {
                        service: service.clone(),
                        reason: format!("the instance on host {host} was revoked"),
                    }),
                    InstanceState::Assigned => {
                        inst.state = InstanceState::Running;
                        inst.since_ms = now;
                        Ok(Some(format!(
                            "service {service}: instance running on host {host} (epoch {epoch})"
                        )))
                    }
                }
            }
            Command::RevokeInstance {
                service,
                host,
                epoch,
                planned,
                reason,
            } => {
                let inst = self.instance_mut(service, *host, *epoch)?;
                if inst.state == InstanceState::Revoked {
                    return Ok(None);
                }
                inst.state = InstanceState::Revoked;
                inst.since_ms = now;
                let how = if *planned { "planned stop" } else { "revoked" };
                Ok(Some(format!(
                    "service {service}: instance on host {host} {how} (epoch {epoch}): {reason}"
                )))
            }
            Command::InstanceStopped {
                service,
                host,
                epoch,
                placement,
            } => {
                self.reported_instance_mut(service, *host, *epoch, *placement)?;
                if let Some(s) = self.services.get_mut(service) {
                    s.instances.remove(host);
                }
                let done = self.finish_delete(service, now);
                Ok(Some(format!(
                    "service {service}: instance on host {host} stopped (epoch {epoch}){done}"
                )))
            }
            Command::ForgetInstance {
                service,
                host,
                epoch,
                reason,
            } => {
                let inst = self.instance_mut(service, *host, *epoch)?;
                if inst.state != InstanceState::Revoked {
                    return Err(CommandError::Conflict {
                        service: service.clone(),
                        reason: format!("the instance on host {host} must be revoked first"),
                    });
                }
                if let Some(s) = self.services.get_mut(service) {
                    s.instances.remove(host);
                }
                let done = self.finish_delete(service, now);
                Ok(Some(format!(
                    "service {service}: instance on host {host} given up (epoch {epoch}): {reason}{done}"
                )))
            }
            other => Err(invalid(
                "command",
                format!("{other:?} is not a service command"),
            )),
        }
    }
}
