//! The lease keeper: re-confirms this agent's lease with the Raft majority and, on hosts, makes
//! the local workloads match what the confirmed state assigns to this host.
//!
//! Every round sends a linearizable read (through the leader, which checks a quorum) and notes
//! when it was *sent*; on success the lease runs until `sent + lease − margin` and every guard is
//! fed exactly that deadline. When confirmations fail, the guards are not fed past the old
//! deadline, so workloads stop by themselves when it passes — and the keeper stops them too
//! (self-fencing). A frozen or dead agent feeds nothing, and its guards fence for it.
//!
//! Invariant: a workload is started or fed only from a state read by a successful confirmation
//! that names this host's instance under the service's current epoch.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use consensus::state::{Command, FabricState, InstanceState, ServiceSpec, WorkloadKind};
use tokio_util::sync::CancellationToken;

use crate::agent::Agent;
use crate::workload::{Driver, WorkloadSpec, WorkloadStatus};

/// An instance the state assigns to this host.
#[derive(Debug, Clone)]
struct Assignment {
    epoch: u64,
    state: InstanceState,
    spec: ServiceSpec,
}

/// This host's instances under their service's current epoch in its owner site.
fn assignments(s: &FabricState, host: u64, site: &str) -> BTreeMap<String, Assignment> {
    s.services
        .values()
        .filter(|svc| svc.owner.as_deref() == Some(site))
        .filter_map(|svc| {
            let inst = svc.instances.get(&host)?;
            (inst.epoch == svc.epoch).then(|| {
                (
                    svc.spec.name.clone(),
                    Assignment {
                        epoch: inst.epoch,
                        state: inst.state,
                        spec: svc.spec.clone(),
                    },
                )
            })
        })
        .collect()
}

/// Runs until `shutdown`; then stops every local workload.
pub async fn keeper_loop(
    agent: Arc<Agent>,
    driver: Option<Arc<dyn Driver>>,
    shutdown: CancellationToken,
) {
    let lease = agent.config().lease();
    let every = lease.confirm_every();
    let mut metrics = agent.raft().raft().metrics();
    let mut applied = None;
    let reports = Reports::default();
    let mut backoff = Backoff::default();
    let mut expired_logged = false;
    let mut terms_logged = false;
    loop {
        let sent = Instant::now();
        let host = agent.id();
        let site = agent.config().site.clone();
        let read = tokio::time::timeout(
            lease.holder_validity(),
            agent.read(move |s| (s.revision, s.lease_terms, assignments(s, host, &site))),
        );
        // A read can hang for the whole validity while the majority is away; shutdown must not.
        let read = tokio::select! {
            read = read => read,
            _ = shutdown.cancelled() => return stop_all(driver.as_deref()).await,
        };
        let assigned = match read {
            // The fabric grants leases on other terms: holding one on ours would not be safe.
            Ok(Ok((_, Some(fabric), _))) if fabric != lease.terms() => {
                if !terms_logged {
                    tracing::error!(
                        "the fabric's lease terms ({fabric}) differ from this agent's ({}): it holds no lease",
                        lease.terms()
                    );
                    terms_logged = true;
                }
                None
            }
            Ok(Ok((revision, _, assigned))) => {
                agent.lease_confirmed(sent, revision);
                if expired_logged {
                    tracing::info!("lease confirmed again");
                    expired_logged = false;
                }
                Some(assigned)
            }
            Ok(Err(e)) => {
                tracing::debug!("lease confirmation failed: {e}");
                None
            }
            Err(_) => {
                tracing::debug!("lease confirmation timed out");
                None
            }
        };
        if assigned.is_none() && !agent.lease_valid() && !expired_logged {
            tracing::warn!(
                "lease expired: this agent fences itself until the majority confirms it"
            );
            expired_logged = true;
        }
        if let Some(driver) = &driver {
            reconcile(&agent, driver.as_ref(), assigned, &reports, &mut backoff).await;
        }
        // Next round: on schedule, or sooner when this node applies something new.
        let next = tokio::time::sleep(every.saturating_sub(sent.elapsed()));
        tokio::pin!(next);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return stop_all(driver.as_deref()).await,
                _ = &mut next => break,
                r = metrics.changed() => {
                    if r.is_err() {
                        next.as_mut().await;
                        break;
                    }
                    let now_applied = metrics.borrow_and_update().last_applied;
                    if now_applied != applied {
                        applied = now_applied;
                        // Coalesce a burst of applies into one round.
                        tokio::time::sleep(Duration::from_millis(10)).await;
                        break;
                    }
                }
            }
        }
    }
}

/// Stops every local workload (a non-host agent has none).
async fn stop_all(driver: Option<&dyn Driver>) {
    let Some(driver) = driver else { return };
    for (name, status) in driver.list() {
        if status.is_running()
            && let Err(e) = driver.stop(&name).await
        {
            tracing::warn!("cannot stop {name}: {e}");
        }
    }
}

/// Makes local workloads match `assigned` (a confirmed read), or — when the confirmation failed
/// — feeds nothing new and stops everything once the lease has run out.
async fn reconcile(
    agent: &Arc<Agent>,
    driver: &dyn Driver,
    assigned: Option<BTreeMap<String, Assignment>>,
    reports: &Reports,
    backoff: &mut Backoff,
) {
    let now = Instant::now();
    let remaining = agent.lease().remaining(now);
    let local = driver.list();
    let Some(assigned) = assigned else {
        for (name, status) in &local {
            if !status.is_running() {
                continue;
            }
            match remaining {
                // Same deadline as before: the guard keeps it, nothing is extended.
                Some(left) => {
                    let _ = driver.feed(name, left);
                }
                None => {
                    tracing::warn!("fencing: stopping {name}, its lease ran out");
                    if let Err(e) = driver.stop(name).await {
                        tracing::warn!("cannot stop {name}: {e}");
                    }
                }
            }
        }
        return;
    };
    let Some(left) = remaining else {
        return;
    };
    let mut present = BTreeSet::new();
    for (name, status) in &local {
        let wanted = assigned.get(name);
        match status {
            WorkloadStatus::Running { epoch, .. } => match wanted {
                Some(a) if a.epoch == *epoch && a.state != InstanceState::Revoked => {
                    present.insert(name.clone());
                    if let Err(e) = driver.feed(name, left) {
                        tracing::warn!("cannot feed the guard of {name}: {e}");
                    }
                }
                _ => {
                    tracing::info!("stopping {name} (epoch {epoch}): no longer assigned here");
                    if let Err(e) = driver.stop(name).await {
                        tracing::warn!("cannot stop {name}: {e}");
                    }
                    driver.forget(name);
                    if let Some(a) = wanted.filter(|a| a.epoch == *epoch) {
                        reports.send(agent, name, Report::Stopped(a.epoch));
                    }
                }
            },
            WorkloadStatus::Exited { epoch, reason, .. } => {
                driver.forget(name);
                if let Some(a) = wanted.filter(|a| a.state != InstanceState::Revoked) {
                    let delay = backoff.exited(name, now);
                    tracing::warn!(
                        "{name} (epoch {epoch}) exited: {reason}; starting it again in {delay:?}"
                    );
                    reports.send(
                        agent,
                        name,
                        Report::Note(format!(
                            "service {name} on host {} exited ({reason}); restarting in {delay:?} (epoch {})",
                            agent.id(),
                            a.epoch
                        )),
                    );
                }
            }
        }
    }
    for (name, a) in &assigned {
        if present.contains(name) {
            continue;
        }
        if a.state == InstanceState::Revoked {
            reports.send(agent, name, Report::Stopped(a.epoch));
            continue;
        }
        if !backoff.may_start(name, now) {
            continue;
        }
        match driver.start(workload_spec(agent, a), left) {
            Ok(()) => {
                backoff.started(name, now);
                tracing::info!("started {name} (epoch {})", a.epoch);
                reports.send(agent, name, Report::Running(a.epoch));
            }
            Err(e) => tracing::warn!("cannot start {name}: {e}"),
        }
    }
    for (name, a) in &assigned {
        if a.state == InstanceState::Assigned && present.contains(name) {
            reports.send(agent, name, Report::Running(a.epoch));
        }
    }
}

fn workload_spec(agent: &Agent, a: &Assignment) -> WorkloadSpec {
    let WorkloadKind::Process(p) = &a.spec.kind;
    WorkloadSpec {
        service: a.spec.name.clone(),
        epoch: a.epoch,
        command: p.command.clone(),
        args: p.args.clone(),
        env: p.env.clone(),
        port: p.port,
        addresses: agent.config().workload_addresses(),
        site: agent.config().site.clone(),
        host: agent.id(),
    }
}

/// Crash-loop backoff per service: restarts wait 1 s, 2 s, 4 s … up to 30 s; a run that lasted
/// longer than 30 s starts the count again.
#[derive(Debug, Default)]
struct Backoff {
    by_service: BTreeMap<String, Restarts>,
}

#[derive(Debug, Clone, Copy)]
struct Restarts {
    count: u32,
    started: Instant,
    not_before: Option<Instant>,
}

const MAX_BACKOFF: Duration = Duration::from_secs(30);

impl Backoff {
    fn started(&mut self, service: &str, now: Instant) {
        let r = self
            .by_service
            .entry(service.to_string())
            .or_insert(Restarts {
                count: 0,
                started: now,
                not_before: None,
            });
        r.started = now;
        r.not_before = None;
    }

    /// Notes an unplanned exit; returns how long the next start waits.
    fn exited(&mut self, service: &str, now: Instant) -> Duration {
        let Some(r) = self.by_service.get_mut(service) else {
            return Duration::ZERO;
        };
        if now.saturating_duration_since(r.started) > MAX_BACKOFF {
            r.count = 0;
        }
        let delay = Duration::from_secs(1u64 << r.count.min(5)).min(MAX_BACKOFF);
        r.count += 1;
        r.not_before = Some(now + delay);
        delay
    }

    fn may_start(&self, service: &str, now: Instant) -> bool {
        self.by_service
            .get(service)
            .and_then(|r| r.not_before)
            .is_none_or(|t| now >= t)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Report {
    Running(u64),
    Stopped(u64),
    Note(String),
}

/// Reports to the state, in the background, at most one in flight per service.
#[derive(Default)]
struct Reports {
    in_flight: Arc<Mutex<BTreeSet<String>>>,
}

impl Reports {
    fn send(&self, agent: &Arc<Agent>, service: &str, report: Report) {
        {
            let mut busy = self.in_flight.lock().unwrap_or_else(|p| p.into_inner());
            if !busy.insert(service.to_string()) {
                return;
            }
        }
        let (agent, service, busy) = (agent.clone(), service.to_string(), self.in_flight.clone());
        tokio::spawn(async move {
            let host = agent.id();
            let command = match report {
                Report::Running(epoch) => Command::InstanceRunning {
                    service: service.clone(),
                    host,
                    epoch,
                },
                Report::Stopped(epoch) => Command::InstanceStopped {
                    service: service.clone(),
                    host,
                    epoch,
                },
                Report::Note(message) => Command::RecordEvent { message },
            };
            if let Err(e) = agent.propose(agent.actor(), command).await {
                tracing::debug!("report for {service} failed: {e}");
            }
            busy.lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(&service);
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: Duration = Duration::from_secs(1);

    #[test]
    fn crash_loops_back_off_and_a_long_run_resets_the_count() {
        let t0 = Instant::now();
        let mut b = Backoff::default();
        assert!(b.may_start("web", t0));
        b.started("web", t0);
        assert_eq!(b.exited("web", t0), S);
        assert!(!b.may_start("web", t0));
        assert!(b.may_start("web", t0 + S));
        b.started("web", t0 + S);
        assert_eq!(b.exited("web", t0 + S), 2 * S);
        b.started("web", t0 + 3 * S);
        assert_eq!(b.exited("web", t0 + 3 * S), 4 * S);
        for i in 0..10 {
            b.started("web", t0 + (10 + i) * S);
            b.exited("web", t0 + (10 + i) * S);
        }
        b.started("web", t0 + 100 * S);
        assert_eq!(b.exited("web", t0 + 100 * S), MAX_BACKOFF);
        // A run of a minute starts the count again.
        b.started("web", t0 + 200 * S);
        assert_eq!(b.exited("web", t0 + 260 * S), S);
    }
}
