//! Applying the service commands: create/delete, ownership, instances.
//!
//! Invariant: the epoch is the fencing token. [`Command::AssignOwner`] must name the next epoch
//! and finds no instance left; every instance command must name the instance's epoch. So two
//! sites never hold instances of one service in the state at the same time, and a late message
//! about an old placement cannot change a new one. [`Command::PlaceInstance`] never raises the
//! live instances (not revoked, not on a drained host) above the spec's `placement.instances`.

use std::collections::BTreeMap;

use super::{
    Command, CommandError, FabricState, Host, Instance, InstanceState, NodeId, Service, invalid,
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

    pub(super) fn apply_service_command(
        &mut self,
        now: u64,
        cmd: &Command,
    ) -> Result<Option<String>, CommandError> {
        match cmd {
            Command::CreateService { spec } => {
                spec.validate()?;
                if self.services.contains_key(&spec.name) {
                    return Err(CommandError::ServiceExists(spec.name.clone()));
                }
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
                        .find(|s| s.spec.dns_name.as_ref() == Some(dns))
                {
                    return Err(invalid(
                        "dns_name",
                        format!(
                            "`{dns}` is already the name of service `{}`",
                            other.spec.name
                        ),
                    ));
                }
                self.services.insert(
                    spec.name.clone(),
                    Service {
                        spec: spec.clone(),
                        created_ms: now,
                        epoch: 0,
                        owner: None,
                        owner_since_ms: now,
                        target: None,
                        instances: Default::default(),
                    },
                );
                Ok(Some(format!("service {} created", spec.name)))
            }
            Command::DeleteService { name } => {
                self.services
                    .remove(name)
                    .ok_or_else(|| CommandError::UnknownService(name.clone()))?;
                Ok(Some(format!("service {name} deleted")))
            }
            Command::SetServiceTarget { service, site } => {
                let s = self.service_mut(service)?;
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
                let s = self.service_mut(service)?;
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
                debug_assert!(*epoch > s.epoch, "epochs only go up");
                let old = s.owner.replace(site.clone());
                s.epoch = *epoch;
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
                let s = self.service_mut(service)?;
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
                s.instances.insert(
                    *host,
                    Instance {
                        host: *host,
                        epoch: *epoch,
                        state: InstanceState::Assigned,
                        since_ms: now,
                    },
                );
                Ok(Some(format!(
                    "service {service}: instance placed on host {host} (epoch {epoch}): {reason}"
                )))
            }
            Command::InstanceRunning {
                service,
                host,
                epoch,
            } => {
                let inst = self.instance_mut(service, *host, *epoch)?;
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
            } => {
                self.instance_mut(service, *host, *epoch)?;
                if let Some(s) = self.services.get_mut(service) {
                    s.instances.remove(host);
                }
                Ok(Some(format!(
                    "service {service}: instance on host {host} stopped (epoch {epoch})"
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
                Ok(Some(format!(
                    "service {service}: instance on host {host} given up (epoch {epoch}): {reason}"
                )))
            }
            other => Err(invalid(
                "command",
                format!("{other:?} is not a service command"),
            )),
        }
    }
}
