//! The in-memory twin of [`ProcessDriver`](super::ProcessDriver): no processes, the same
//! observable behaviour, for agent and controller tests that should not fork.
//!
//! Owns: a table of instances with their lease deadlines on the lease clock
//! ([`crate::clock::lease_now`]), which follows Tokio's clock, so tests can run it under
//! `tokio::time::pause()` and have leases run out without sleeping.
//!
//! Invariant: an instance whose deadline has passed is never reported running; expiry is settled
//! lazily at every call, dated at the deadline itself (what a perfectly punctual guard would do).
//! A planned stop ends after the grace ([`MemoryDriver::with_grace`], zero by default) or at the
//! lease deadline, whichever comes first, as with a real guard.
//!
//! Does not: run anything or serve ports.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use failover::lease::LeaseInstant;
use futures::future::BoxFuture;

use super::{Driver, WorkloadError, WorkloadSpec, WorkloadStatus, lock, reason, validate_service};
use crate::clock::lease_now;
use crate::guard::Verdict;

/// A [`Driver`] that only keeps books.
#[derive(Default)]
pub struct MemoryDriver {
    state: Mutex<BTreeMap<String, Slot>>,
    grace: Duration,
}

enum Slot {
    Running {
        spec: Box<WorkloadSpec>,
        deadline: LeaseInstant,
        since: Instant,
        /// When a planned stop in progress ends (its grace, cut at the deadline then).
        stop_at: Option<LeaseInstant>,
    },
    Exited(WorkloadStatus),
}

/// The two clocks at one moment: the lease clock for decisions, Tokio's for the status times.
#[derive(Clone, Copy)]
struct Now {
    lease: LeaseInstant,
    std: Instant,
}

impl Now {
    fn read() -> Self {
        Now {
            lease: lease_now(),
            std: tokio::time::Instant::now().into_std(),
        }
    }

    /// The status time of lease instant `t` (at or before now).
    fn std_of(self, t: LeaseInstant) -> Instant {
        let ago = self.lease.saturating_duration_since(t);
        self.std.checked_sub(ago).unwrap_or(self.std)
    }
}

impl MemoryDriver {
    pub fn new() -> Self {
        Self::default()
    }

    /// A driver whose planned stops take `grace` (a workload slow to stop), cut short at the lease
    /// deadline.
    pub fn with_grace(mut self, grace: Duration) -> Self {
        self.grace = grace;
        self
    }

    fn settled(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, Slot>> {
        let mut state = lock(&self.state);
        settle(&mut state, Now::read());
        state
    }

    /// The spec a running instance was started with.
    pub fn spec(&self, service: &str) -> Option<WorkloadSpec> {
        match self.settled().get(service) {
            Some(Slot::Running { spec, .. }) => Some((**spec).clone()),
            _ => None,
        }
    }

    /// The lease deadline of a running instance.
    pub fn deadline(&self, service: &str) -> Option<LeaseInstant> {
        match self.settled().get(service) {
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
        let now = Now::read();
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
                    at: now.std,
                });
                Ok(())
            }
            _ => Err(WorkloadError::NotRunning {
                service: service.to_owned(),
            }),
        }
    }
}

/// Ends every instance whose deadline, or planned stop, is at or before `now`, dated at that
/// moment: a stop that ends first is a stop, a deadline that comes first is an expired lease.
fn settle(state: &mut BTreeMap<String, Slot>, now: Now) {
    for slot in state.values_mut() {
        let Slot::Running {
            spec,
            deadline,
            stop_at,
            ..
        } = slot
        else {
            continue;
        };
        let (verdict, why, at) = match *stop_at {
            Some(stop) if stop <= now.lease && stop <= *deadline => {
                (Verdict::Stopped, reason::STOPPED, stop)
            }
            _ if *deadline <= now.lease => {
                (Verdict::LeaseExpired, reason::LEASE_EXPIRED, *deadline)
            }
            _ => continue,
        };
        *slot = Slot::Exited(WorkloadStatus::Exited {
            epoch: spec.epoch,
            code: Some(i32::from(verdict.exit_code())),
            reason: why.to_owned(),
            at: now.std_of(at),
        });
    }
}

impl Driver for MemoryDriver {
    fn start(&self, spec: WorkloadSpec, until: LeaseInstant) -> Result<(), WorkloadError> {
        validate_service(&spec.service)?;
        let now = Now::read();
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
                deadline: until,
                since: now.std,
                stop_at: None,
            },
        );
        // A deadline already past is dead on arrival, exactly as with a real guard.
        settle(&mut state, now);
        Ok(())
    }

    fn feed(&self, service: &str, until: LeaseInstant) -> Result<(), WorkloadError> {
        let now = Now::read();
        let mut state = lock(&self.state);
        settle(&mut state, now);
        match state.get_mut(service) {
            Some(Slot::Running { deadline, .. }) => {
                *deadline = until;
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
            let now = Now::read();
            let ends = {
                let mut state = lock(&self.state);
                settle(&mut state, now);
                match state.get_mut(service) {
                    None => {
                        return Err(WorkloadError::UnknownService {
                            service: service.to_owned(),
                        });
                    }
                    Some(Slot::Exited(_)) => return Ok(()),
                    Some(Slot::Running {
                        deadline, stop_at, ..
                    }) => {
                        // A stop already in progress keeps its end, as a guard in its grace does.
                        let ends = stop_at.unwrap_or((now.lease + self.grace).min(*deadline));
                        *stop_at = Some(ends);
                        ends
                    }
                }
            };
            tokio::time::sleep(ends.saturating_duration_since(now.lease)).await;
            // The sleep never ends early; reading the lease clock at its end must not either.
            let mut after = Now::read();
            after.lease = after.lease.max(ends);
            settle(&mut lock(&self.state), after);
            Ok(())
        })
    }

    fn list(&self) -> Vec<(String, WorkloadStatus)> {
        self.settled()
            .iter()
            .map(|(name, slot)| {
                let status = match slot {
                    Slot::Running { spec, since, .. } => WorkloadStatus::Running {
                        pid: None,
                        epoch: spec.epoch,
                        since: *since,
                    },
                    Slot::Exited(s) => s.clone(),
                };
                (name.clone(), status)
            })
            .collect()
    }

    fn forget(&self, service: &str) {
        let mut state = self.settled();
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
        let timing = conformance::Timing::exact();
        let driver = MemoryDriver::new().with_grace(timing.grace);
        let template = conformance::template("conf", "true", vec![], 0);
        let report = conformance::run_all(&driver, template, timing).await;
        assert!(report.is_ok(), "{report:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn a_crash_is_reported_with_the_workloads_code() {
        let driver = MemoryDriver::new();
        let spec = conformance::template("web", "true", vec![], 0);
        assert!(
            driver
                .start(spec, lease_now() + Duration::from_secs(1))
                .is_ok()
        );
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
        assert!(
            driver
                .start(spec, lease_now() + Duration::from_secs(10))
                .is_ok()
        );
        assert!(driver.sever_feed("web").is_ok());
        let status = driver.list().into_iter().next().map(|(_, s)| s);
        assert_eq!(
            status.as_ref().and_then(WorkloadStatus::reason),
            Some(reason::AGENT_GONE)
        );
    }
}
