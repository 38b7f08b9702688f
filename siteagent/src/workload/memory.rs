//! The in-memory twin of [`ProcessDriver`](super::ProcessDriver): no processes, the same
//! observable behaviour, for agent and controller tests that should not fork.
//!
//! Owns: a table of instances with their lease deadlines on the Tokio clock, so tests can run it
//! under `tokio::time::pause()` and have leases run out without sleeping.
//!
//! Invariant: an instance whose deadline has passed is never reported running; expiry is settled
//! lazily at every call, dated at the deadline itself (what a perfectly punctual guard would do).
//!
//! Does not: run anything, serve ports, or model a guard's grace period (a stop completes at once).

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::Duration;

use futures::future::BoxFuture;
use tokio::time::Instant;

use super::{Driver, WorkloadError, WorkloadSpec, WorkloadStatus, lock, reason, validate_service};
use crate::guard::Verdict;

/// A [`Driver`] that only keeps books.
#[derive(Default)]
pub struct MemoryDriver {
    state: Mutex<BTreeMap<String, Slot>>,
}

enum Slot {
    Running {
        spec: Box<WorkloadSpec>,
        deadline: Instant,
        since: Instant,
    },
    Exited(WorkloadStatus),
}

impl MemoryDriver {
    pub fn new() -> Self {
        Self::default()
    }

    /// The spec a running instance was started with.
    pub fn spec(&self, service: &str) -> Option<WorkloadSpec> {
        let mut state = lock(&self.state);
        settle(&mut state, Instant::now());
        match state.get(service) {
            Some(Slot::Running { spec, .. }) => Some((**spec).clone()),
            _ => None,
        }
    }

    /// The lease deadline of a running instance.
    pub fn deadline(&self, service: &str) -> Option<Instant> {
        let mut state = lock(&self.state);
        settle(&mut state, Instant::now());
        match state.get(service) {
            Some(Slot::Running { deadline, .. }) => Some(*deadline),
            _ => None,
        }
    }

    /// Simulates the workload ending by itself with `code`.
    pub fn crash(&self, service: &str, code: i32) -> Result<(), WorkloadError> {
        self.end(service, Some(code), reason::workload_exited(code))
    }

    /// Simulates the agent's death as the guard sees it (stdin EOF): the workload is killed now.
    pub fn sever_feed(&self, service: &str) -> Result<(), WorkloadError> {
        let code = i32::from(Verdict::AgentGone.exit_code());
        self.end(service, Some(code), reason::AGENT_GONE.to_owned())
    }

    fn end(&self, service: &str, code: Option<i32>, why: String) -> Result<(), WorkloadError> {
        let now = Instant::now();
        let mut state = lock(&self.state);
        settle(&mut state, now);
        match state.get_mut(service) {
            Some(slot @ Slot::Running { .. }) => {
                let epoch = match slot {
                    Slot::Running { spec, .. } => spec.epoch,
                    Slot::Exited(s) => s.epoch(),
                };
                *slot = Slot::Exited(WorkloadStatus::Exited {
                    epoch,
                    code,
                    reason: why,
                    at: now.into_std(),
                });
                Ok(())
            }
            _ => Err(WorkloadError::NotRunning {
                service: service.to_owned(),
            }),
        }
    }
}

/// Marks every instance whose deadline is at or before `now` as killed at its deadline.
fn settle(state: &mut BTreeMap<String, Slot>, now: Instant) {
    for slot in state.values_mut() {
        if let Slot::Running { spec, deadline, .. } = slot
            && *deadline <= now
        {
            *slot = Slot::Exited(WorkloadStatus::Exited {
                epoch: spec.epoch,
                code: Some(i32::from(Verdict::LeaseExpired.exit_code())),
                reason: reason::LEASE_EXPIRED.to_owned(),
                at: deadline.into_std(),
            });
        }
    }
}

impl Driver for MemoryDriver {
    fn start(&self, spec: WorkloadSpec, valid_for: Duration) -> Result<(), WorkloadError> {
        validate_service(&spec.service)?;
        let now = Instant::now();
        let mut state = lock(&self.state);
        settle(&mut state, now);
        if let Some(Slot::Running { .. }) = state.get(&spec.service) {
            return Err(WorkloadError::AlreadyRunning {
                service: spec.service,
            });
        }
        let service = spec.service.clone();
        state.insert(
            service,
            Slot::Running {
                spec: Box::new(spec),
                deadline: now + valid_for,
                since: now,
            },
        );
        // A zero lease is dead on arrival, exactly as with a real guard.
        settle(&mut state, now);
        Ok(())
    }

    fn feed(&self, service: &str, valid_for: Duration) -> Result<(), WorkloadError> {
        let now = Instant::now();
        let mut state = lock(&self.state);
        settle(&mut state, now);
        match state.get_mut(service) {
            Some(Slot::Running { deadline, .. }) => {
                *deadline = now + valid_for;
                settle(&mut state, now);
                Ok(())
            }
            _ => Err(WorkloadError::NotRunning {
                service: service.to_owned(),
            }),
        }
    }

    fn stop<'a>(&'a self, service: &'a str) -> BoxFuture<'a, Result<(), WorkloadError>> {
        Box::pin(async move {
            let now = Instant::now();
            let mut state = lock(&self.state);
            settle(&mut state, now);
            match state.get_mut(service) {
                None => Err(WorkloadError::UnknownService {
                    service: service.to_owned(),
                }),
                Some(Slot::Exited(_)) => Ok(()),
                Some(slot @ Slot::Running { .. }) => {
                    let epoch = match slot {
                        Slot::Running { spec, .. } => spec.epoch,
                        Slot::Exited(s) => s.epoch(),
                    };
                    *slot = Slot::Exited(WorkloadStatus::Exited {
                        epoch,
                        code: Some(i32::from(Verdict::Stopped.exit_code())),
                        reason: reason::STOPPED.to_owned(),
                        at: now.into_std(),
                    });
                    Ok(())
                }
            }
        })
    }

    fn list(&self) -> Vec<(String, WorkloadStatus)> {
        let mut state = lock(&self.state);
        settle(&mut state, Instant::now());
        state
            .iter()
            .map(|(name, slot)| {
                let status = match slot {
                    Slot::Running { spec, since, .. } => WorkloadStatus::Running {
                        pid: None,
                        epoch: spec.epoch,
                        since: since.into_std(),
                    },
                    Slot::Exited(s) => s.clone(),
                };
                (name.clone(), status)
            })
            .collect()
    }

    fn forget(&self, service: &str) {
        let mut state = lock(&self.state);
        settle(&mut state, Instant::now());
        if let Some(Slot::Exited(_)) = state.get(service) {
            state.remove(service);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::workload::conformance;

    #[tokio::test(start_paused = true)]
    async fn memory_driver_passes_the_conformance_suite() {
        let driver = MemoryDriver::new();
        let template = conformance::template("conf", "true", vec![], 0);
        let report = conformance::run_all(&driver, template, conformance::Timing::exact()).await;
        assert!(report.is_ok(), "{report:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn a_crash_is_reported_with_the_workloads_code() {
        let driver = MemoryDriver::new();
        let spec = conformance::template("web", "true", vec![], 0);
        assert!(driver.start(spec, Duration::from_secs(1)).is_ok());
        assert!(driver.crash("web", 3).is_ok());
        let status = driver.list().into_iter().next().map(|(_, s)| s);
        assert!(
            matches!(&status, Some(WorkloadStatus::Exited { code: Some(3), reason, .. }) if reason == "workload exited code 3"),
            "{status:?}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_severed_feed_kills_before_the_lease_ends() {
        let driver = MemoryDriver::new();
        let spec = conformance::template("web", "true", vec![], 0);
        assert!(driver.start(spec, Duration::from_secs(10)).is_ok());
        assert!(driver.sever_feed("web").is_ok());
        let status = driver.list().into_iter().next().map(|(_, s)| s);
        assert_eq!(
            status.as_ref().and_then(WorkloadStatus::reason),
            Some(reason::AGENT_GONE)
        );
    }
}
