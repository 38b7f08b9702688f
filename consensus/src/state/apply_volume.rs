//! Applying the volume commands: create/delete, the primary's reports and outdates, promotion.
//!
//! Invariant: the volume epoch is the storage fencing token. Reports and outdates must name the
//! current epoch (a deposed primary's are refused); a promotion names the next one, waits until
//! no service using the volume has an instance anywhere (so the old primary's writer is gone or
//! its lease has run out), and refuses a copy that may lack acknowledged writes unless forced.
//! The old primary's copy becomes [`CopyState::Outdated`]: it may hold writes the new primary
//! lacks, and must resync before it can be promoted again without force.

use std::collections::BTreeMap;

use super::{
    Command, CommandError, CopyReport, CopyState, FabricState, NodeId, ServiceSpec, Volume, invalid,
};

impl FabricState {
    pub(super) fn apply_volume_command(
        &mut self,
        now: u64,
        cmd: &Command,
    ) -> Result<Option<String>, CommandError> {
        match cmd {
            Command::CreateVolume { spec } => {
                spec.validate()?;
                if self.volumes.contains_key(&spec.name) {
                    return Err(CommandError::VolumeExists(spec.name.clone()));
                }
                if let Some(unknown) = spec.sites().find(|s| !self.sites.contains_key(*s)) {
                    return Err(CommandError::UnknownSite(unknown.to_string()));
                }
                let v = Volume::new(spec.clone(), self.revision + 1, now);
                let replicas: Vec<String> = v
                    .replicas()
                    .map(|(site, mode)| format!("{site} ({mode})"))
                    .collect();
                self.volumes.insert(spec.name.clone(), v);
                Ok(Some(format!(
                    "volume {} created: {} bytes, primary at {}, replicas: {}",
                    spec.name,
                    spec.size,
                    spec.primary,
                    if replicas.is_empty() {
                        "none".to_string()
                    } else {
                        replicas.join(", ")
                    }
                )))
            }
            Command::DeleteVolume { name } => {
                self.volume(name)?;
                if let Some(svc) = self.service_using(name) {
                    return Err(CommandError::VolumeConflict {
                        volume: name.clone(),
                        reason: format!("service `{svc}` uses it; delete the service first"),
                    });
                }
                self.volumes.remove(name);
                Ok(Some(format!("volume {name} deleted")))
            }
            Command::ReportVolume {
                volume,
                epoch,
                host,
                writers,
                copies,
            } => self.report_volume(now, volume, *epoch, *host, *writers, copies),
            Command::OutdateCopy {
                volume,
                site,
                epoch,
                outdates,
                reason,
            } => {
                let v = self.current_volume_mut(volume, *epoch)?;
                if *site == v.primary {
                    return Err(invalid("site", format!("`{site}` is the primary")));
                }
                let copy = v
                    .copies
                    .get_mut(site)
                    .ok_or_else(|| invalid("site", format!("`{site}` holds no copy")))?;
                copy.outdates = copy.outdates.max(*outdates);
                if copy.state == CopyState::Outdated {
                    return Ok(None);
                }
                copy.set_state(CopyState::Outdated, now);
                Ok(Some(format!(
                    "volume {volume}: copy at {site} outdated (epoch {epoch}): {reason}"
                )))
            }
            Command::PromoteVolume {
                volume,
                site,
                epoch,
                force,
                reason,
            } => self.promote_volume(now, volume, site, *epoch, *force, reason),
            Command::AcceptVolumeLoss { volume, reason } => {
                let v = self
                    .volumes
                    .get_mut(volume)
                    .ok_or_else(|| CommandError::UnknownVolume(volume.clone()))?;
                v.accept_loss = Some(reason.clone());
                Ok(Some(format!(
                    "volume {volume}: losing writes its copies lack is accepted for the next promotion: {reason}"
                )))
            }
            _ => unreachable!("apply_volume_command is called with volume commands only"),
        }
    }

    fn volume(&self, name: &str) -> Result<&Volume, CommandError> {
        self.volumes
            .get(name)
            .ok_or_else(|| CommandError::UnknownVolume(name.to_string()))
    }

    /// The volume, if `epoch` is its current one.
    fn current_volume_mut(&mut self, name: &str, epoch: u64) -> Result<&mut Volume, CommandError> {
        let v = self
            .volumes
            .get_mut(name)
            .ok_or_else(|| CommandError::UnknownVolume(name.to_string()))?;
        if v.epoch != epoch {
            return Err(CommandError::StaleVolumeEpoch {
                volume: name.to_string(),
                current: v.epoch,
                got: epoch,
            });
        }
        Ok(v)
    }

    /// The service whose spec names `volume`, if any.
    pub fn service_using(&self, volume: &str) -> Option<&str> {
        self.services
            .values()
            .find(|s| s.spec.volumes.iter().any(|v| v == volume))
            .map(|s| s.spec.name.as_str())
    }

    fn report_volume(
        &mut self,
        now: u64,
        volume: &str,
        epoch: u64,
        host: NodeId,
        writers: u32,
        copies: &BTreeMap<String, CopyReport>,
    ) -> Result<Option<String>, CommandError> {
        let host_site = self
            .hosts
            .get(&host)
            .ok_or(CommandError::UnknownHost(host))?
            .site
            .clone();
        let v = self.current_volume_mut(volume, epoch)?;
        if host_site != v.primary {
            return Err(CommandError::VolumeConflict {
                volume: volume.to_string(),
                reason: format!(
                    "host {host} is in site {host_site}, the primary is at {}",
                    v.primary
                ),
            });
        }
        v.reporter = Some(host);
        v.writers = writers;
        let mut changes = Vec::new();
        for (site, report) in copies {
            let primary = v.primary.clone();
            let Some(copy) = v.copies.get_mut(site).filter(|_| *site != primary) else {
                continue;
            };
            // Computed before the copy's last outdate: it cannot speak for it any more.
            if report.outdates < copy.outdates || report.state == CopyState::Primary {
                continue;
            }
            copy.lag = report.lag;
            copy.reported_ms = now;
            if copy.state != report.state {
                changes.push(format!(
                    "copy at {site} {} (was {})",
                    report.state, copy.state
                ));
                copy.set_state(report.state, now);
            }
        }
        Ok((!changes.is_empty()).then(|| format!("volume {volume}: {}", changes.join(", "))))
    }

    fn promote_volume(
        &mut self,
        now: u64,
        volume: &str,
        site: &str,
        epoch: u64,
        force: bool,
        reason: &str,
    ) -> Result<Option<String>, CommandError> {
        let v = self.volume(volume)?;
        if epoch != v.epoch + 1 {
            return Err(CommandError::StaleVolumeEpoch {
                volume: volume.to_string(),
                current: v.epoch,
                got: epoch,
            });
        }
        let conflict = |reason: String| CommandError::VolumeConflict {
            volume: volume.to_string(),
            reason,
        };
        if !v.copies.contains_key(site) {
            return Err(conflict(format!("site {site} holds no copy")));
        }
        if v.primary == site {
            return Err(conflict(format!(
                "the copy at {site} is already the primary"
            )));
        }
        if let Some(svc) = self.service_using(volume)
            && let Some(host) = self.services[svc].instances.keys().next()
        {
            return Err(conflict(format!(
                "service `{svc}` still has an instance on host {host}; its writes must stop first"
            )));
        }
        let risk = v.promotion_risk(site);
        if let Some(risk) = &risk
            && !force
        {
            return Err(conflict(format!(
                "{risk}; promoting it could lose acknowledged writes (`sitectl volume promote --force` accepts that)"
            )));
        }
        let v = self
            .volumes
            .get_mut(volume)
            .ok_or_else(|| CommandError::UnknownVolume(volume.to_string()))?;
        let old = std::mem::replace(&mut v.primary, site.to_string());
        v.epoch = epoch;
        v.reporter = None;
        v.writers = 0;
        v.accept_loss = None;
        // The demoted copy takes the promoted one's mode, and may hold writes the new primary
        // lacks: it resyncs before it counts as a copy again.
        let new_mode = v.copies[site].mode;
        if let Some(c) = v.copies.get_mut(&old) {
            c.mode = new_mode;
            c.set_state(CopyState::Outdated, now);
        }
        for (s, c) in v.copies.iter_mut() {
            if *s == site {
                c.set_state(CopyState::Primary, now);
                c.lag = Default::default();
            } else if *s != old && c.state != CopyState::Outdated {
                c.set_state(CopyState::Unknown, now);
            }
        }
        let forced = match (&risk, force) {
            (Some(risk), true) => format!(" FORCED although {risk}"),
            _ => String::new(),
        };
        Ok(Some(format!(
            "volume {volume}: copy at {site} promoted to primary (epoch {epoch}), was {old}{forced}: {reason}"
        )))
    }

    /// Checks a service's volumes: they exist, no other service uses them, every site the
    /// service may run in holds a copy, and it runs one instance (a volume has one writer).
    pub(super) fn check_service_volumes(&self, spec: &ServiceSpec) -> Result<(), CommandError> {
        if spec.volumes.is_empty() {
            return Ok(());
        }
        if spec.placement.instances != 1 {
            return Err(invalid(
                "placement.instances",
                "a service with a volume runs one instance: a block volume has one writer",
            ));
        }
        for (i, name) in spec.volumes.iter().enumerate() {
            if spec.volumes[..i].contains(name) {
                return Err(invalid("volumes", format!("`{name}` is listed twice")));
            }
            let v = self.volume(name)?;
            if let Some(other) = self.service_using(name).filter(|o| *o != spec.name) {
                return Err(invalid(
                    "volumes",
                    format!("`{name}` is already used by service `{other}`"),
                ));
            }
            if let Some(site) = spec
                .placement
                .sites
                .iter()
                .find(|s| !v.copies.contains_key(*s))
            {
                return Err(invalid(
                    "volumes",
                    format!(
                        "volume `{name}` has no copy at site {site}, where the service may run"
                    ),
                ));
            }
        }
        Ok(())
    }

    /// The host that serves volume `v`'s copy at `site`: the host of the instance of the service
    /// using it, when that instance is at `site`; else, at the primary site, the host that last
    /// reported as its primary while it is up (so a service stopping for a move does not make the
    /// copy hop hosts); otherwise the lowest-numbered up host of `site` that is not drained (any
    /// up host if all are). Every agent computes the same answer from the same state.
    pub fn volume_server(&self, v: &Volume, site: &str) -> Option<NodeId> {
        let in_site = |id: &NodeId| self.hosts.get(id).is_some_and(|h| h.site == site);
        let up = |id: &NodeId| {
            self.hosts
                .get(id)
                .is_some_and(|h| h.site == site && h.health == super::Health::Up)
        };
        if let Some(svc) = self.service_using(&v.spec.name)
            && let Some(i) = self.services[svc]
                .instances
                .values()
                .find(|i| i.live() && in_site(&i.host))
        {
            return Some(i.host);
        }
        if v.primary == site
            && let Some(h) = v.reporter.filter(up)
        {
            return Some(h);
        }
        let up = || {
            self.hosts
                .values()
                .filter(|h| h.site == site && h.health == super::Health::Up)
        };
        up().find(|h| !h.drained)
            .or_else(|| up().next())
            .map(|h| h.id)
    }

    /// Why `service` cannot be owned by `site` because of its volumes, if it cannot.
    pub(super) fn volumes_block_owner(&self, spec: &ServiceSpec, site: &str) -> Option<String> {
        spec.volumes.iter().find_map(|name| {
            let v = self.volumes.get(name)?;
            (v.primary != site).then(|| {
                format!(
                    "volume {name} is primary at {}, not {site}; promote it first",
                    v.primary
                )
            })
        })
    }
}

#[cfg(test)]
mod tests {
    use super::super::{InstanceState, Lag, Proposal, ReplicationMode};
    use super::*;
    use crate::fixture::{apply, host, site, volume};

    fn refused(s: &mut FabricState, cmd: Command, want: &str) {
        let before = s.clone();
        let err = s.apply(&Proposal::new(1_000, "test", cmd)).expect_err(want);
        assert!(err.to_string().contains(want), "{err}");
        assert_eq!(*s, before, "a refused command changes nothing");
    }

    /// Sites s1..s3 with host 1 in s1 and 2 in s2; volume `db` primary s1, s2 sync, s3 async.
    fn fabric() -> FabricState {
        let mut s = FabricState::default();
        for name in ["s1", "s2", "s3"] {
            apply(&mut s, site(name, 1));
        }
        for (id, name) in [(1, "s1"), (2, "s2")] {
            apply(&mut s, host(id, name, vec![]));
        }
        apply(
            &mut s,
            volume("db", 1 << 30, "s1", &["s2:sync", "s3:async"]),
        );
        s
    }

    fn report(epoch: u64, site: &str, state: CopyState, outdates: u64) -> Command {
        Command::ReportVolume {
            volume: "db".into(),
            epoch,
            host: 1,
            writers: 1,
            copies: [(
                site.to_string(),
                CopyReport {
                    state,
                    lag: Lag::default(),
                    outdates,
                },
            )]
            .into(),
        }
    }

    fn promote(site: &str, epoch: u64, force: bool) -> Command {
        Command::PromoteVolume {
            volume: "db".into(),
            site: site.into(),
            epoch,
            force,
            reason: "test".into(),
        }
    }

    #[test]
    fn create_names_unknown_sites_and_duplicates() {
        let mut s = fabric();
        let v = &s.volumes["db"];
        assert_eq!((v.epoch, v.primary.as_str()), (1, "s1"));
        assert_eq!(v.copies.len(), 3);
        let mut spec = v.spec.clone();
        refused(
            &mut s,
            Command::CreateVolume { spec: spec.clone() },
            "volume `db` already exists",
        );
        spec.name = "other".into();
        spec.replicas[1].site = "s9".into();
        refused(&mut s, Command::CreateVolume { spec }, "unknown site `s9`");
    }

    #[test]
    fn reports_update_copies_only_under_the_current_epoch_and_from_the_primary_site() {
        let mut s = fabric();
        apply(&mut s, report(1, "s2", CopyState::InSync, 0));
        assert_eq!(s.volumes["db"].copies["s2"].state, CopyState::InSync);
        refused(
            &mut s,
            report(0, "s2", CopyState::Lagging, 0),
            "epoch 0 is stale",
        );
        let mut from_s2 = report(1, "s2", CopyState::Lagging, 0);
        if let Command::ReportVolume { host, .. } = &mut from_s2 {
            *host = 2;
        }
        refused(&mut s, from_s2, "host 2 is in site s2");
    }

    #[test]
    fn an_outdated_copy_ignores_reports_computed_before_the_outdate_and_needs_force() {
        let mut s = fabric();
        apply(&mut s, report(1, "s2", CopyState::InSync, 0));
        apply(
            &mut s,
            Command::OutdateCopy {
                volume: "db".into(),
                site: "s2".into(),
                epoch: 1,
                outdates: 1,
                reason: "no ack for 2 s".into(),
            },
        );
        // A report from before the outdate (count 0) must not make it in sync again.
        apply(&mut s, report(1, "s2", CopyState::InSync, 0));
        assert_eq!(s.volumes["db"].copies["s2"].state, CopyState::Outdated);
        refused(&mut s, promote("s2", 2, false), "is outdated");
        // Resynced since: the primary's later report counts the outdate.
        apply(&mut s, report(1, "s2", CopyState::InSync, 1));
        assert_eq!(s.volumes["db"].copies["s2"].state, CopyState::InSync);
    }

    #[test]
    fn promotion_bumps_the_epoch_outdates_the_old_primary_and_can_be_forced() {
        let mut s = fabric();
        refused(&mut s, promote("s2", 3, false), "epoch 3 is stale");
        refused(
            &mut s,
            promote("s2", 2, false),
            "has not been reported in sync",
        );
        apply(&mut s, report(1, "s2", CopyState::InSync, 0));
        apply(&mut s, promote("s2", 2, false));
        let v = &s.volumes["db"];
        assert_eq!((v.epoch, v.primary.as_str()), (2, "s2"));
        assert_eq!(v.copies["s1"].state, CopyState::Outdated);
        assert_eq!(v.copies["s1"].mode, ReplicationMode::Sync);
        assert_eq!(v.copies["s2"].state, CopyState::Primary);
        // The deposed primary's reports are refused by epoch.
        refused(&mut s, report(1, "s2", CopyState::InSync, 0), "stale");
        // Back to s1: it is outdated, so only by force, and the event says so.
        apply(&mut s, promote("s1", 3, true));
        let last = s.events.back().expect("event");
        assert!(last.message.contains("FORCED although"), "{}", last.message);
    }

    #[test]
    fn a_service_runs_where_its_volume_is_primary_and_blocks_promotion_while_it_runs() {
        let mut s = fabric();
        let mut spec = ServiceSpec::process("pg", &["s1", "s2"], "fabric-demo", 8080);
        spec.volumes = vec!["db".into()];
        spec.placement.instances = 2;
        refused(
            &mut s,
            Command::CreateService { spec: spec.clone() },
            "a block volume has one writer",
        );
        spec.placement.instances = 1;
        spec.placement.sites.push("s4".into());
        apply(&mut s, site("s4", 1));
        refused(
            &mut s,
            Command::CreateService { spec: spec.clone() },
            "no copy at site s4",
        );
        spec.placement.sites.pop();
        apply(&mut s, Command::CreateService { spec: spec.clone() });
        refused(
            &mut s,
            Command::AssignOwner {
                service: "pg".into(),
                site: "s2".into(),
                epoch: 1,
                reason: "test".into(),
            },
            "volume db is primary at s1, not s2",
        );
        apply(
            &mut s,
            Command::AssignOwner {
                service: "pg".into(),
                site: "s1".into(),
                epoch: 1,
                reason: "test".into(),
            },
        );
        apply(
            &mut s,
            Command::PlaceInstance {
                service: "pg".into(),
                host: 1,
                epoch: 1,
                reason: "test".into(),
            },
        );
        assert_eq!(
            s.services["pg"].instances[&1].state,
            InstanceState::Assigned
        );
        apply(&mut s, report(1, "s2", CopyState::InSync, 0));
        refused(
            &mut s,
            promote("s2", 2, false),
            "still has an instance on host 1",
        );
        refused(
            &mut s,
            Command::DeleteVolume { name: "db".into() },
            "service `pg` uses it",
        );
    }
}
