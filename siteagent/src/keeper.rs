//! The lease keeper: re-confirms this agent's lease with the Raft majority and, on hosts, makes
//! the local workloads match what the confirmed state assigns to this host.
//!
//! Every round sends a linearizable read (through the leader, which checks a quorum) and notes
//! when it was *sent* (on the boot clock); on success the lease runs until `sent + lease − margin`
//! and every guard is fed exactly that absolute deadline — never a "time left" computed before an
//! await, which a slow stop or a freeze in between would turn into a fresh budget. When confirmations fail, the guards are not fed past the old
//! deadline, so workloads stop by themselves when it passes — and the keeper stops them too
//! (self-fencing). A frozen or dead agent feeds nothing, and its guards fence for it.
//!
//! Invariant: a workload is started or fed only from a state read by a successful confirmation
//! that names this host's instance under an epoch of the current ownership in this site, and
//! only with the deadline that confirmation earned; nothing is started once that deadline has
//! passed. Only the service's current epoch is ever started: an instance of an older epoch (a
//! spec update is replacing it) keeps running until revoked, and is reported stopped when it is
//! not running here.
//!
//! Does not: decide where anything runs (the leader's planner does), nor talk to Raft or the WAN
//! itself: it reads and reports through a [`Fabric`], so [`Keeper::round`] runs in unit tests
//! against [`MemoryFabric`](crate::fabric::MemoryFabric) and
//! [`MemoryDriver`](crate::workload::MemoryDriver) on paused time.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use consensus::state::{Command, InstanceState, WorkloadKind};
use failover::lease::LeaseInstant;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::clock;
use crate::confirmation::{Assignment, LeaseRead};
use crate::fabric::Fabric;
use crate::lease::LeaseHandle;
use crate::workload::{Driver, WorkloadSpec, WorkloadStatus};

/// This host as the keeper needs it.
#[derive(Debug, Clone)]
pub struct Host {
    pub id: u64,
    pub site: String,
    /// Addresses its workloads bind.
    pub addresses: Vec<IpAddr>,
    /// Port of this host's NBD server, where a workload reaches its volumes.
    pub nbd_port: u16,
}

/// The keeper's handles and memory between rounds.
pub struct Keeper<F: Fabric> {
    fabric: Arc<F>,
    lease: LeaseHandle,
    /// `None` on agents without the `host` role: they confirm the lease (for DNS) and run nothing.
    driver: Option<Arc<dyn Driver>>,
    host: Host,
    reports: Reports,
    backoff: Backoff,
    expired_logged: bool,
    terms_logged: bool,
}

/// Runs until `shutdown`; then stops every local workload. A round starts every
/// `confirm_every`, or sooner when this node applies something new (`applied` changes: the
/// applied index of [`crate::view::StateView::changes`]).
pub async fn keeper_loop<F: Fabric>(
    mut keeper: Keeper<F>,
    mut applied: watch::Receiver<u64>,
    shutdown: CancellationToken,
) {
    let every = keeper.lease.config().confirm_every();
    loop {
        let sent = clock::lease_now();
        // A read can hang for the whole validity while the majority is away; shutdown must not.
        let assigned = tokio::select! {
            assigned = keeper.confirm(sent) => assigned,
            _ = shutdown.cancelled() => return keeper.stop_all().await,
        };
        keeper.reconcile(assigned).await;
        let elapsed = clock::lease_now().saturating_duration_since(sent);
        let next = tokio::time::sleep(every.saturating_sub(elapsed));
        tokio::pin!(next);
        tokio::select! {
            _ = shutdown.cancelled() => return keeper.stop_all().await,
            _ = &mut next => {}
            r = applied.changed() => {
                if r.is_err() {
                    // The feeder stopped: the agent is shutting down.
                    next.as_mut().await;
                } else {
                    applied.borrow_and_update();
                    // Coalesce a burst of applies into one round.
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            }
        }
    }
}

impl<F: Fabric> Keeper<F> {
    pub fn new(
        fabric: Arc<F>,
        lease: LeaseHandle,
        driver: Option<Arc<dyn Driver>>,
        host: Host,
    ) -> Self {
        Self {
            fabric,
            lease,
            driver,
            host,
            reports: Reports::default(),
            backoff: Backoff::default(),
            expired_logged: false,
            terms_logged: false,
        }
    }

    /// One round: confirm the lease with a read sent at `sent`, then act on what it read.
    pub async fn round(&mut self, sent: LeaseInstant) {
        let assigned = self.confirm(sent).await;
        self.reconcile(assigned).await;
    }

    /// Sends a confirmation (a linearizable read) at `sent`; on success the lease runs until
    /// `sent + lease − margin` and this host's assignments are returned.
    async fn confirm(&mut self, sent: LeaseInstant) -> Option<BTreeMap<String, Assignment>> {
        let lease = self.lease.config();
        let (host, site) = (self.host.id, self.host.site.clone());
        let read = tokio::time::timeout(
            lease.holder_validity(),
            self.fabric.confirm_lease(host, site),
        )
        .await;
        let assigned = match read {
            // The fabric grants leases on other terms: holding one on ours would not be safe.
            Ok(Ok(LeaseRead {
                lease_terms: Some(fabric),
                ..
            })) if fabric != lease.terms() => {
                if !self.terms_logged {
                    tracing::error!(
                        "the fabric's lease terms ({fabric}) differ from this agent's ({}): it holds no lease",
                        lease.terms()
                    );
                    self.terms_logged = true;
                }
                None
            }
            Ok(Ok(LeaseRead {
                revision,
                assigned,
                zone_digest,
                ..
            })) => {
                self.lease.confirmed(sent, revision, zone_digest);
                self.lease.set_held(
                    assigned
                        .iter()
                        .filter(|(_, a)| a.state != InstanceState::Revoked)
                        .map(|(name, _)| name.clone())
                        .collect(),
                );
                if self.expired_logged {
                    tracing::info!("lease confirmed again");
                    self.expired_logged = false;
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
        if assigned.is_none() && !self.lease.is_valid(clock::lease_now()) && !self.expired_logged {
            tracing::warn!(
                "lease expired: this agent fences itself until the majority confirms it"
            );
            self.expired_logged = true;
        }
        assigned
    }

    /// Stops every local workload (a non-host agent has none).
    pub async fn stop_all(&self) {
        let Some(driver) = &self.driver else { return };
        for (name, status) in driver.list() {
            if status.is_running()
                && let Err(e) = driver.stop(&name).await
            {
                tracing::warn!("cannot stop {name}: {e}");
            }
        }
    }

    /// Makes local workloads match `assigned` (a confirmed read), or — when the confirmation
    /// failed — feeds nothing new and stops everything once the lease has run out.
    async fn reconcile(&mut self, assigned: Option<BTreeMap<String, Assignment>>) {
        let Some(driver) = self.driver.clone() else {
            return;
        };
        let driver = driver.as_ref();
        let now = clock::lease_now();
        // The absolute deadline, fixed here: later awaits (slow stops) cannot stretch it.
        let until = self
            .lease
            .valid_until()
            .filter(|_| self.lease.is_valid(now));
        let local = driver.list();
        let Some(assigned) = assigned else {
            for (name, status) in &local {
                if !status.is_running() {
                    continue;
                }
                match until {
                    // Same deadline as before: the guard keeps it, nothing is extended.
                    Some(until) => {
                        let _ = driver.feed(name, until);
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
        let Some(until) = until else {
            return;
        };
        let mut present = BTreeSet::new();
        for (name, status) in &local {
            let wanted = assigned.get(name);
            match status {
                WorkloadStatus::Running { epoch, .. } => match wanted {
                    Some(a) if a.epoch == *epoch && a.state != InstanceState::Revoked => {
                        present.insert(name.clone());
                        if let Err(e) = driver.feed(name, until) {
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
                            self.report(name, Report::Stopped(a.epoch, a.placement));
                        }
                    }
                },
                WorkloadStatus::Exited { epoch, reason, .. } => {
                    driver.forget(name);
                    if let Some(a) = wanted.filter(|a| a.outdated && a.epoch == *epoch) {
                        // Not started again under the old spec: gone, so the planner replaces
                        // it now rather than in its turn.
                        tracing::warn!(
                            "{name} (epoch {epoch}, before a spec update) exited: {reason}"
                        );
                        self.report(name, Report::Stopped(a.epoch, a.placement));
                    } else if let Some(a) = wanted.filter(|a| a.state != InstanceState::Revoked) {
                        let delay = self.backoff.exited(name, now);
                        tracing::warn!(
                            "{name} (epoch {epoch}) exited: {reason}; starting it again in {delay:?}"
                        );
                        let note = format!(
                            "service {name} on host {} exited ({reason}); restarting in {delay:?} (epoch {})",
                            self.host.id, a.epoch
                        );
                        self.report(name, Report::Note(note));
                    }
                }
            }
        }
        for (name, a) in &assigned {
            if present.contains(name) {
                continue;
            }
            if a.state == InstanceState::Revoked || a.outdated {
                // Revoked, or of an older spec and not running here: nothing to start.
                self.report(name, Report::Stopped(a.epoch, a.placement));
                continue;
            }
            if !self.backoff.may_start(name, now) {
                continue;
            }
            // Stops above may have taken long: starting past the deadline would only be killed.
            if clock::lease_now() >= until {
                tracing::warn!("not starting {name}: the lease ran out during this round");
                continue;
            }
            match driver.start(self.workload_spec(a), until) {
                Ok(()) => {
                    self.backoff.started(name, now);
                    tracing::info!("started {name} (epoch {})", a.epoch);
                    self.report(name, Report::Running(a.epoch, a.placement));
                }
                Err(e) => tracing::warn!("cannot start {name}: {e}"),
            }
        }
        for (name, a) in &assigned {
            if a.state == InstanceState::Assigned && present.contains(name) {
                self.report(name, Report::Running(a.epoch, a.placement));
            }
        }
    }

    fn report(&self, service: &str, report: Report) {
        self.reports
            .send(&self.fabric, self.host.id, service, report);
    }

    fn workload_spec(&self, a: &Assignment) -> WorkloadSpec {
        let WorkloadKind::Process(p) = &a.spec.kind;
        let mut env = p.env.clone();
        // The instance runs on the host that serves its volumes' primary copies (the state's
        // rule), so it reaches them on this host's own NBD server.
        if let Some(ip) = self.host.addresses.first() {
            let host = match ip {
                IpAddr::V6(v6) => format!("[{v6}]"),
                v4 => v4.to_string(),
            };
            let uri = |v: &String| format!("nbd://{host}:{}/{v}", self.host.nbd_port);
            if let Some(first) = a.spec.volumes.first() {
                env.insert("FABRIC_VOLUME_NBD".into(), uri(first));
            }
            if !a.spec.volumes.is_empty() {
                let all: Vec<String> = a
                    .spec
                    .volumes
                    .iter()
                    .map(|v| format!("{v}={}", uri(v)))
                    .collect();
                env.insert("FABRIC_VOLUMES".into(), all.join(","));
            }
        }
        WorkloadSpec {
            service: a.spec.name.clone(),
            epoch: a.epoch,
            command: p.command.clone(),
            args: p.args.clone(),
            env,
            port: p.port,
            addresses: self.host.addresses.clone(),
            site: self.host.site.clone(),
            host: self.host.id,
        }
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
    started: LeaseInstant,
    not_before: Option<LeaseInstant>,
}

const MAX_BACKOFF: Duration = Duration::from_secs(30);

impl Backoff {
    fn started(&mut self, service: &str, now: LeaseInstant) {
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
    fn exited(&mut self, service: &str, now: LeaseInstant) -> Duration {
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

    fn may_start(&self, service: &str, now: LeaseInstant) -> bool {
        self.by_service
            .get(service)
            .and_then(|r| r.not_before)
            .is_none_or(|t| now >= t)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Report {
    /// Running, under (epoch, placement).
    Running(u64, u64),
    /// Stopped, under (epoch, placement).
    Stopped(u64, u64),
    Note(String),
}

/// Reports to the state, in the background, at most one in flight per service.
#[derive(Default)]
struct Reports {
    in_flight: Arc<Mutex<BTreeSet<String>>>,
}

impl Reports {
    fn send<F: Fabric>(&self, fabric: &Arc<F>, host: u64, service: &str, report: Report) {
        {
            let mut busy = self.in_flight.lock().unwrap_or_else(|p| p.into_inner());
            if !busy.insert(service.to_string()) {
                return;
            }
        }
        let (fabric, service, busy) = (fabric.clone(), service.to_string(), self.in_flight.clone());
        tokio::spawn(async move {
            let command = match report {
                Report::Running(epoch, placement) => Command::InstanceRunning {
                    service: service.clone(),
                    host,
                    epoch,
                    placement,
                },
                Report::Stopped(epoch, placement) => Command::InstanceStopped {
                    service: service.clone(),
                    host,
                    epoch,
                    placement,
                },
                Report::Note(message) => Command::RecordEvent { message },
            };
            if let Err(e) = fabric.propose(format!("node {host}"), command).await {
                tracing::debug!("report for {service} failed: {e}");
            }
            busy.lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(&service);
        });
    }

    /// True while a report is being proposed.
    #[cfg(test)]
    fn busy(&self) -> bool {
        !self
            .in_flight
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fabric::MemoryFabric;
    use crate::fixture;
    use crate::workload::{MemoryDriver, reason};
    use consensus::state::FabricState;
    use failover::lease::LeaseConfig;
    use tokio::time::advance;

    const S: Duration = Duration::from_secs(1);

    /// A keeper on host 11 of site s1 with a 6 s lease and a 1 s margin (valid 5 s).
    struct Rig {
        fabric: Arc<MemoryFabric>,
        driver: Arc<MemoryDriver>,
        lease: LeaseHandle,
        keeper: Keeper<MemoryFabric>,
    }

    fn rig(state: FabricState) -> Rig {
        rig_with(state, MemoryDriver::new())
    }

    fn rig_with(state: FabricState, driver: MemoryDriver) -> Rig {
        let fabric = Arc::new(MemoryFabric::new(state));
        let driver = Arc::new(driver);
        let lease = LeaseHandle::new(LeaseConfig {
            lease: 6 * S,
            margin: S,
        });
        let keeper = Keeper::new(
            fabric.clone(),
            lease.clone(),
            Some(driver.clone() as Arc<dyn Driver>),
            Host {
                id: 11,
                site: "s1".into(),
                addresses: vec![],
                nbd_port: 10809,
            },
        );
        Rig {
            fabric,
            driver,
            lease,
            keeper,
        }
    }

    impl Rig {
        /// One keeper round sent now; waits for its reports. Returns when it was sent.
        async fn round(&mut self) -> LeaseInstant {
            let sent = clock::lease_now();
            self.keeper.round(sent).await;
            for _ in 0..100 {
                if !self.keeper.reports.busy() {
                    break;
                }
                tokio::task::yield_now().await;
            }
            assert!(!self.keeper.reports.busy(), "a report never finished");
            sent
        }

        fn running_epoch(&self, service: &str) -> Option<u64> {
            self.driver
                .list()
                .into_iter()
                .find(|(name, status)| name == service && status.is_running())
                .map(|(_, status)| status.epoch())
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_confirmed_assignment_starts_the_workload_until_lease_minus_margin_from_the_send_time()
     {
        let mut rig = rig(fixture::placed());
        // The reply takes 2 s: the deadline still counts from when the read was sent.
        rig.fabric.set_read_delay(2 * S);
        let sent = rig.round().await;
        assert_eq!(rig.running_epoch("web"), Some(1));
        assert_eq!(rig.driver.deadline("web"), Some(sent + 5 * S));
        assert_eq!(
            rig.lease.remaining(clock::lease_now()),
            Some(3 * S),
            "the lease counts from the send time, not the reply"
        );
        assert!(
            rig.fabric
                .proposed()
                .contains(&fixture::running("web", 11, 1, 1)),
            "{:?}",
            rig.fabric.proposed()
        );
        assert_eq!(
            rig.fabric.state().services["web"].instances[&11].state,
            InstanceState::Running
        );
    }

    #[tokio::test(start_paused = true)]
    async fn failed_confirmations_never_extend_the_deadline_and_the_workload_is_fenced_at_it() {
        let mut rig = rig(fixture::fabric());
        let t0_std = tokio::time::Instant::now().into_std();
        let t0 = rig.round().await;
        let deadline = t0 + 5 * S;
        assert_eq!(rig.driver.deadline("web"), Some(deadline));
        rig.fabric.set_reachable(false);
        for _ in 0..4 {
            advance(S).await;
            rig.round().await;
            assert_eq!(
                rig.driver.deadline("web"),
                Some(deadline),
                "a failed confirmation moved the deadline"
            );
        }
        advance(deadline.saturating_duration_since(clock::lease_now()) - Duration::from_millis(1))
            .await;
        rig.round().await;
        assert_eq!(
            rig.running_epoch("web"),
            Some(1),
            "stopped before the deadline"
        );
        advance(Duration::from_millis(1)).await;
        rig.round().await;
        assert_eq!(
            rig.running_epoch("web"),
            None,
            "still running at the deadline"
        );
        assert!(!rig.lease.is_valid(clock::lease_now()));
        let exited = rig.driver.list().into_iter().find(|(n, _)| n == "web");
        assert!(
            matches!(&exited, Some((_, WorkloadStatus::Exited { reason: r, at, .. }))
                if r == reason::LEASE_EXPIRED && *at == t0_std + 5 * S),
            "{exited:?}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn an_instance_under_an_older_epoch_is_replaced_by_the_current_one() {
        let mut rig = rig(fixture::fabric());
        let mut old = crate::workload::conformance::template("web", "fabric-demo", vec![], 0);
        old.epoch = 0;
        assert!(rig.driver.start(old, clock::lease_now() + 10 * S).is_ok());
        rig.round().await;
        assert_eq!(rig.running_epoch("web"), Some(1));
        assert!(
            !rig.fabric
                .proposed()
                .iter()
                .any(|c| matches!(c, Command::InstanceStopped { .. })),
            "the stop of an instance the state never knew was reported"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_revoked_instance_is_stopped_and_the_stop_reported() {
        let mut rig = rig(fixture::fabric());
        rig.round().await;
        assert_eq!(rig.running_epoch("web"), Some(1));
        assert!(rig.fabric.apply(fixture::revoke("web", 11, 1)).is_ok());
        rig.round().await;
        assert_eq!(rig.running_epoch("web"), None);
        let stopped = fixture::stopped("web", 11, 1, 1);
        assert!(
            rig.fabric.proposed().contains(&stopped),
            "{:?}",
            rig.fabric.proposed()
        );
        assert!(rig.lease.held().is_empty(), "{:?}", rig.lease.held());
    }

    #[tokio::test(start_paused = true)]
    async fn a_crashed_workload_restarts_only_after_its_backoff() {
        let mut rig = rig(fixture::fabric());
        rig.round().await;
        assert!(rig.driver.crash("web", 3).is_ok());
        rig.round().await;
        assert_eq!(rig.running_epoch("web"), None, "restarted without waiting");
        assert!(
            rig.fabric.proposed().iter().any(
                |c| matches!(c, Command::RecordEvent { message } if message.contains("exited"))
            ),
            "{:?}",
            rig.fabric.proposed()
        );
        advance(S / 2).await;
        rig.round().await;
        assert_eq!(
            rig.running_epoch("web"),
            None,
            "restarted within the backoff"
        );
        advance(S / 2).await;
        rig.round().await;
        assert_eq!(rig.running_epoch("web"), Some(1));
    }

    /// `web` assigned to host 11 (not running yet) and an instance `old` the state no longer
    /// assigns, running with a far deadline, whose stop takes `grace`.
    fn with_a_stale_instance_slow_to_stop(grace: Duration) -> Rig {
        let rig = rig_with(fixture::placed(), MemoryDriver::new().with_grace(grace));
        let mut stale = crate::workload::conformance::template("old", "fabric-demo", vec![], 0);
        stale.epoch = 7;
        assert!(rig.driver.start(stale, clock::lease_now() + 30 * S).is_ok());
        rig
    }

    #[tokio::test(start_paused = true)]
    async fn a_start_after_a_slow_stop_gets_the_confirmed_deadline_not_a_fresh_one() {
        // Stops take 2 s (a workload slow to honour SIGTERM).
        let mut rig = with_a_stale_instance_slow_to_stop(2 * S);
        let sent = rig.round().await;
        assert_eq!(
            rig.running_epoch("old"),
            None,
            "the stale instance was not stopped"
        );
        assert!(clock::lease_now() >= sent + 2 * S, "the stop was not slow");
        assert_eq!(rig.running_epoch("web"), Some(1));
        assert_eq!(
            rig.driver.deadline("web"),
            Some(sent + 5 * S),
            "the start after the stop got a budget counted from after the stop"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn nothing_is_started_once_slow_stops_have_used_up_the_lease() {
        let mut rig = with_a_stale_instance_slow_to_stop(10 * S);
        let sent = rig.round().await;
        // The stale instance took its 10 s grace, past the 5 s this round's lease earned.
        assert!(clock::lease_now() >= sent + 5 * S);
        assert_eq!(rig.running_epoch("web"), None);
        assert!(
            !rig.driver.list().iter().any(|(name, _)| name == "web"),
            "web was started past the deadline: {:?}",
            rig.driver.list()
        );
    }

    #[tokio::test(start_paused = true)]
    async fn an_instance_of_the_spec_before_an_update_keeps_running_until_replaced() {
        let mut rig = rig(fixture::fabric());
        rig.round().await;
        assert_eq!(rig.running_epoch("web"), Some(1));
        let mut spec = rig.fabric.state().services["web"].spec.clone();
        let WorkloadKind::Process(p) = &mut spec.kind;
        p.env.insert("GREETING".into(), "hello".into());
        assert!(
            rig.fabric
                .apply(Command::UpdateService {
                    name: "web".into(),
                    spec,
                })
                .is_ok()
        );
        assert_eq!(rig.fabric.state().services["web"].epoch, 2);
        advance(2 * S).await;
        let sent = rig.round().await;
        assert_eq!(rig.running_epoch("web"), Some(1), "stopped before replaced");
        assert_eq!(
            rig.driver.deadline("web"),
            Some(sent + 5 * S),
            "the old instance's guard was not fed"
        );
        assert!(
            !rig.fabric
                .proposed()
                .iter()
                .any(|c| matches!(c, Command::InstanceStopped { .. })),
            "{:?}",
            rig.fabric.proposed()
        );
        assert_eq!(rig.lease.held(), ["web".to_string()].into());

        // The planner replaces it: revoke, then place under epoch 2.
        assert!(rig.fabric.apply(fixture::revoke("web", 11, 1)).is_ok());
        rig.round().await;
        assert_eq!(rig.running_epoch("web"), None);
        assert!(
            rig.fabric
                .proposed()
                .contains(&fixture::stopped("web", 11, 1, 1)),
            "{:?}",
            rig.fabric.proposed()
        );
        assert!(rig.fabric.apply(fixture::place("web", 11, 2)).is_ok());
        rig.round().await;
        assert_eq!(rig.running_epoch("web"), Some(2));
        assert!(
            rig.fabric
                .proposed()
                .contains(&fixture::running("web", 11, 2, 2)),
            "{:?}",
            rig.fabric.proposed()
        );
    }

    #[tokio::test(start_paused = true)]
    async fn an_outdated_instance_not_running_here_is_reported_stopped_not_started() {
        let mut state = fixture::fabric();
        let mut spec = state.services["web"].spec.clone();
        let WorkloadKind::Process(p) = &mut spec.kind;
        p.args.push("--v2".into());
        fixture::apply(
            &mut state,
            Command::UpdateService {
                name: "web".into(),
                spec,
            },
        );
        // This agent restarted: nothing runs locally.
        let mut rig = rig(state);
        rig.round().await;
        assert_eq!(
            rig.running_epoch("web"),
            None,
            "started under the old epoch"
        );
        assert!(
            rig.fabric
                .proposed()
                .contains(&fixture::stopped("web", 11, 1, 1)),
            "{:?}",
            rig.fabric.proposed()
        );
        assert!(rig.fabric.state().services["web"].instances.is_empty());
    }

    #[test]
    fn crash_loops_back_off_and_a_long_run_resets_the_count() {
        let t0 = LeaseInstant::from_millis(1_000);
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
