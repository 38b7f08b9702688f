//! The behaviour every [`Driver`] must share, as one suite run against each implementation
//! (openraft's `Suite::test_all` for storage is the model).
//!
//! Owns: the checks for start / refuse double start / feed / expiry / shortening / stop (cut at
//! the lease deadline) / list / forget / name validation, and their timing tolerances.
//!
//! Invariant: every step leaves the driver with nothing running, so steps can share one driver
//! and, for the process driver, one port.
//!
//! Does not: check anything only a real process can show (ports, pids, logs, signals); those
//! live in `siteagent/tests/workload.rs`. Time is read from the Tokio clock and deadlines from the
//! lease clock that follows it ([`lease_now`]), so the suite runs in virtual time under
//! `tokio::time::pause()` and in real time otherwise.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

use tokio::time::{Instant, sleep};

use super::{Driver, WorkloadError, WorkloadSpec, WorkloadStatus, reason};
use crate::clock::lease_now;

/// A step of the suite that did not hold.
#[derive(Debug, thiserror::Error)]
#[error("{step}: {what}")]
pub struct ConformanceFailure {
    pub step: &'static str,
    pub what: String,
}

/// How fast the suite runs and how late a driver may be.
#[derive(Debug, Clone, Copy)]
pub struct Timing {
    /// The lease used for the expiry checks.
    pub lease: Duration,
    /// How much later than its deadline an instance may still be reported running.
    pub slack: Duration,
    /// Polling interval while waiting for an exit.
    pub poll: Duration,
    /// The driver's grace on a planned stop; the stop check uses a deadline shorter than it.
    pub grace: Duration,
}

impl Timing {
    /// For drivers that act exactly on time (the memory driver under a paused clock).
    pub fn exact() -> Self {
        Timing {
            lease: Duration::from_secs(1),
            slack: Duration::from_millis(10),
            poll: Duration::from_millis(10),
            grace: Duration::from_secs(5),
        }
    }

    /// For real processes on a busy test machine.
    pub fn real() -> Self {
        Timing {
            lease: Duration::from_millis(1000),
            slack: Duration::from_secs(3),
            poll: Duration::from_millis(25),
            grace: Duration::from_millis(1500),
        }
    }
}

/// A spec with fixed site `s1`, host 3, epoch 2, bound to 127.0.0.1.
pub fn template(service: &str, command: &str, args: Vec<String>, port: u16) -> WorkloadSpec {
    WorkloadSpec {
        service: service.to_owned(),
        epoch: 2,
        command: command.to_owned(),
        args,
        env: BTreeMap::new(),
        port,
        addresses: vec![IpAddr::V4(Ipv4Addr::LOCALHOST)],
        site: "s1".to_owned(),
        host: 3,
    }
}

/// Runs every step in turn against `driver`, starting instances from `template`.
pub async fn run_all(
    driver: &dyn Driver,
    template: WorkloadSpec,
    timing: Timing,
) -> Result<(), ConformanceFailure> {
    start_is_listed_and_a_double_start_is_refused(driver, &template, &timing).await?;
    feeding_keeps_an_instance_past_its_first_lease_and_starving_kills_it(
        driver, &template, &timing,
    )
    .await?;
    a_feed_can_shorten_the_lease(driver, &template, &timing).await?;
    a_planned_stop_ends_by_the_lease_deadline_even_within_its_grace(driver, &template, &timing)
        .await?;
    bad_names_and_unknown_services_are_refused(driver, &template).await?;
    Ok(())
}

fn fail<T>(step: &'static str, what: impl Into<String>) -> Result<T, ConformanceFailure> {
    Err(ConformanceFailure {
        step,
        what: what.into(),
    })
}

fn status_of(driver: &dyn Driver, service: &str) -> Option<WorkloadStatus> {
    driver
        .list()
        .into_iter()
        .find(|(name, _)| name == service)
        .map(|(_, status)| status)
}

/// Polls until `service` is reported exited, or gives up at `until`.
async fn exited_by(
    driver: &dyn Driver,
    service: &str,
    until: Instant,
    poll: Duration,
) -> Option<WorkloadStatus> {
    loop {
        match status_of(driver, service) {
            Some(s @ WorkloadStatus::Exited { .. }) => return Some(s),
            _ if Instant::now() >= until => return None,
            _ => sleep(poll).await,
        }
    }
}

/// start → listed running with its epoch; second start refused; stop → exited "stopped"; stop
/// again is fine; feed is refused; forget removes it; stop of a forgotten service is refused.
pub async fn start_is_listed_and_a_double_start_is_refused(
    driver: &dyn Driver,
    template: &WorkloadSpec,
    timing: &Timing,
) -> Result<(), ConformanceFailure> {
    const STEP: &str = "start/list/stop/forget";
    let spec = template.clone();
    let service = spec.service.clone();
    let long = lease_now() + timing.lease * 30;
    if let Err(e) = driver.start(spec.clone(), long) {
        return fail(STEP, format!("start failed: {e}"));
    }
    match status_of(driver, &service) {
        Some(WorkloadStatus::Running { epoch, .. }) if epoch == spec.epoch => {}
        other => return fail(STEP, format!("after start: {other:?}")),
    }
    match driver.start(spec.clone(), long) {
        Err(WorkloadError::AlreadyRunning { .. }) => {}
        other => {
            let _ = driver.stop(&service).await;
            return fail(STEP, format!("second start gave {other:?}"));
        }
    }
    if let Err(e) = driver.stop(&service).await {
        return fail(STEP, format!("stop failed: {e}"));
    }
    match status_of(driver, &service) {
        Some(WorkloadStatus::Exited { epoch, reason, .. })
            if epoch == spec.epoch && reason == reason::STOPPED => {}
        other => return fail(STEP, format!("after stop: {other:?}")),
    }
    if let Err(e) = driver.stop(&service).await {
        return fail(STEP, format!("stopping an exited instance failed: {e}"));
    }
    match driver.feed(&service, long) {
        Err(WorkloadError::NotRunning { .. }) => {}
        other => return fail(STEP, format!("feed after stop gave {other:?}")),
    }
    driver.forget(&service);
    if let Some(s) = status_of(driver, &service) {
        return fail(STEP, format!("still listed after forget: {s:?}"));
    }
    match driver.stop(&service).await {
        Err(WorkloadError::UnknownService { .. }) => Ok(()),
        other => fail(STEP, format!("stop after forget gave {other:?}")),
    }
}

/// Feeds every lease/4 for 2.5 leases: still running. Then no feeds: still running half a lease
/// later, exited "lease expired" no earlier than the deadline and at most `slack` after it. A feed
/// then is refused, and the service can be started again under a new epoch.
pub async fn feeding_keeps_an_instance_past_its_first_lease_and_starving_kills_it(
    driver: &dyn Driver,
    template: &WorkloadSpec,
    timing: &Timing,
) -> Result<(), ConformanceFailure> {
    const STEP: &str = "feed/expire";
    let lease = timing.lease;
    let spec = template.clone();
    let service = spec.service.clone();
    if let Err(e) = driver.start(spec.clone(), lease_now() + lease) {
        return fail(STEP, format!("start failed: {e}"));
    }
    let mut last_feed = Instant::now();
    for _ in 0..10 {
        sleep(lease / 4).await;
        last_feed = Instant::now();
        if let Err(e) = driver.feed(&service, lease_now() + lease) {
            return fail(STEP, format!("feed failed: {e}"));
        }
    }
    sleep(lease / 2).await;
    match status_of(driver, &service) {
        Some(WorkloadStatus::Running { .. }) => {}
        other => return fail(STEP, format!("fed instance not running: {other:?}")),
    }
    let deadline = last_feed + lease;
    let Some(status) = exited_by(driver, &service, deadline + timing.slack, timing.poll).await
    else {
        let _ = driver.stop(&service).await;
        return fail(STEP, "still running a slack after its lease ran out");
    };
    match &status {
        WorkloadStatus::Exited {
            reason, epoch, at, ..
        } if reason == reason::LEASE_EXPIRED && *epoch == spec.epoch => {
            if *at < deadline.into_std() {
                return fail(STEP, "killed before its deadline");
            }
        }
        other => return fail(STEP, format!("after starving: {other:?}")),
    }
    match driver.feed(&service, lease_now() + lease) {
        Err(WorkloadError::NotRunning { .. }) => {}
        other => return fail(STEP, format!("feed after expiry gave {other:?}")),
    }
    let next = WorkloadSpec {
        epoch: spec.epoch + 1,
        ..spec
    };
    if let Err(e) = driver.start(next.clone(), lease_now() + lease * 30) {
        return fail(STEP, format!("restart after expiry failed: {e}"));
    }
    let restarted = status_of(driver, &service);
    let stopped = driver.stop(&service).await;
    driver.forget(&service);
    match (restarted, stopped) {
        (Some(WorkloadStatus::Running { epoch, .. }), Ok(())) if epoch == next.epoch => Ok(()),
        other => fail(STEP, format!("restart under a new epoch: {other:?}")),
    }
}

/// A feed replaces the deadline, so a short feed brings a long lease's end forward.
pub async fn a_feed_can_shorten_the_lease(
    driver: &dyn Driver,
    template: &WorkloadSpec,
    timing: &Timing,
) -> Result<(), ConformanceFailure> {
    const STEP: &str = "shorten";
    let lease = timing.lease;
    let spec = template.clone();
    let service = spec.service.clone();
    if let Err(e) = driver.start(spec, lease_now() + lease * 30) {
        return fail(STEP, format!("start failed: {e}"));
    }
    sleep(lease / 4).await;
    let fed = Instant::now();
    if let Err(e) = driver.feed(&service, lease_now() + lease / 2) {
        return fail(STEP, format!("feed failed: {e}"));
    }
    let status = exited_by(
        driver,
        &service,
        fed + lease / 2 + timing.slack,
        timing.poll,
    )
    .await;
    driver.forget(&service);
    match status {
        Some(WorkloadStatus::Exited { reason, .. }) if reason == reason::LEASE_EXPIRED => Ok(()),
        Some(other) => fail(STEP, format!("after a shortening feed: {other:?}")),
        None => {
            let _ = driver.stop(&service).await;
            driver.forget(&service);
            fail(STEP, "a shortening feed did not bring the end forward")
        }
    }
}

/// A planned stop whose grace reaches past the lease deadline ends by the deadline: the deadline
/// wins over the grace. (A workload that honours SIGTERM ends sooner, which also holds.)
pub async fn a_planned_stop_ends_by_the_lease_deadline_even_within_its_grace(
    driver: &dyn Driver,
    template: &WorkloadSpec,
    timing: &Timing,
) -> Result<(), ConformanceFailure> {
    const STEP: &str = "stop within the deadline";
    let spec = template.clone();
    let service = spec.service.clone();
    let until = timing.grace / 2;
    if let Err(e) = driver.start(spec, lease_now() + until) {
        return fail(STEP, format!("start failed: {e}"));
    }
    let asked = Instant::now();
    let stopped = driver.stop(&service).await;
    let took = asked.elapsed();
    let status = status_of(driver, &service);
    driver.forget(&service);
    if let Err(e) = stopped {
        return fail(STEP, format!("stop failed: {e}"));
    }
    if took > until + timing.slack {
        return fail(
            STEP,
            format!(
                "stop took {took:?}, past the deadline {until:?} (grace {:?})",
                timing.grace
            ),
        );
    }
    match status {
        Some(WorkloadStatus::Exited { .. }) => Ok(()),
        other => fail(STEP, format!("after the stop: {other:?}")),
    }
}

/// Names that could escape the work root are refused; unknown services cannot be fed or stopped.
pub async fn bad_names_and_unknown_services_are_refused(
    driver: &dyn Driver,
    template: &WorkloadSpec,
) -> Result<(), ConformanceFailure> {
    const STEP: &str = "refusals";
    let evil = WorkloadSpec {
        service: "../evil".to_owned(),
        ..template.clone()
    };
    match driver.start(evil, lease_now() + Duration::from_secs(1)) {
        Err(WorkloadError::InvalidService { .. }) => {}
        other => return fail(STEP, format!("start of ../evil gave {other:?}")),
    }
    match driver.feed("no-such-service", lease_now() + Duration::from_secs(1)) {
        Err(WorkloadError::NotRunning { .. }) => {}
        other => return fail(STEP, format!("feed of an unknown service gave {other:?}")),
    }
    match driver.stop("no-such-service").await {
        Err(WorkloadError::UnknownService { .. }) => {}
        other => return fail(STEP, format!("stop of an unknown service gave {other:?}")),
    }
    if !driver.list().is_empty() {
        return fail(STEP, format!("leftovers: {:?}", driver.list()));
    }
    Ok(())
}
