//! Workloads: running one service instance on this host while the agent holds its lease.
//!
//! Owns: the [`Driver`] trait, the spec a workload is started from, the status the agent reads
//! back, and two drivers behind the trait: [`ProcessDriver`] (real processes under
//! `fabric-guard`) and [`MemoryDriver`] (its in-memory twin). [`conformance`] holds the behaviour
//! both must share.
//!
//! Invariant: at most one instance per service name runs under one driver, and a running instance
//! stops by itself once its lease deadline (an absolute [`LeaseInstant`] on the boot clock, moved
//! by [`Driver::feed`]) passes, whether or not the agent is still alive to tell it — also in the
//! middle of a planned stop's grace period: the deadline wins over the grace.
//!
//! Does not: decide *whether* a service should run here (that is the lease holder's job), retry,
//! restart, or keep any state across an agent restart; an exited instance stays listed until
//! [`Driver::forget`].

pub mod conformance;
pub mod memory;
pub mod process;

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Instant;

use failover::lease::LeaseInstant;
use futures::future::BoxFuture;

pub use memory::MemoryDriver;
pub use process::{ProcessDriver, find_demo, find_guard};

/// What to run for one service on this host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkloadSpec {
    /// Service name; also the workload's directory name, so `[A-Za-z0-9._-]`, at most 64 bytes.
    pub service: String,
    /// The ownership epoch this instance runs under (passed on as `FABRIC_EPOCH`).
    pub epoch: u64,
    /// Program to execute.
    pub command: String,
    /// Its arguments.
    pub args: Vec<String>,
    /// Extra environment; the `FABRIC_*` variables set by the driver take precedence.
    pub env: BTreeMap<String, String>,
    /// Port the workload should serve on (`FABRIC_PORT`).
    pub port: u16,
    /// Addresses the workload should bind (`FABRIC_ADDRESSES`, comma-separated).
    pub addresses: Vec<IpAddr>,
    /// Site name (`FABRIC_SITE`).
    pub site: String,
    /// Host id (`FABRIC_HOST`).
    pub host: u64,
}

/// What a service instance is doing, as far as this driver knows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WorkloadStatus {
    /// Started and not yet known to have ended. `pid` is the workload's (not the guard's), once
    /// known.
    Running {
        pid: Option<u32>,
        epoch: u64,
        since: Instant,
    },
    /// Ended; kept until [`Driver::forget`] or the next start of the same service. `code` is the
    /// guard's exit code (the workload's own code when it exited by itself, 128+signal when a
    /// signal ended it). `reason` is one of the strings in [`reason`].
    Exited {
        epoch: u64,
        code: Option<i32>,
        reason: String,
        at: Instant,
    },
}

impl WorkloadStatus {
    pub fn is_running(&self) -> bool {
        matches!(self, WorkloadStatus::Running { .. })
    }

    pub fn epoch(&self) -> u64 {
        match self {
            WorkloadStatus::Running { epoch, .. } | WorkloadStatus::Exited { epoch, .. } => *epoch,
        }
    }

    /// The exit reason, for an exited instance.
    pub fn reason(&self) -> Option<&str> {
        match self {
            WorkloadStatus::Running { .. } => None,
            WorkloadStatus::Exited { reason, .. } => Some(reason),
        }
    }
}

/// The reasons an instance is reported [`WorkloadStatus::Exited`] with.
pub mod reason {
    /// A planned [`Driver::stop`](super::Driver::stop) finished.
    pub const STOPPED: &str = "stopped";
    /// No feed arrived before the lease ran out; the guard killed the workload.
    pub const LEASE_EXPIRED: &str = "lease expired";
    /// The guard's stdin closed (the agent died or cut the link); the workload was killed.
    pub const AGENT_GONE: &str = "agent gone";
    /// The guard could not start the workload; details are in its `workload.log`.
    pub const SPAWN_FAILED: &str = "workload could not be started";

    /// The workload ended by itself with `code` (128+signal for a signal).
    pub fn workload_exited(code: i32) -> String {
        format!("workload exited code {code}")
    }

    /// The guard itself was killed; `PR_SET_PDEATHSIG` took the workload down with it.
    pub fn guard_killed(signal: i32) -> String {
        format!("guard killed by signal {signal}")
    }

    /// The guard ended without reporting a verdict (it should not).
    pub fn guard_exited(code: i32) -> String {
        format!("guard exited code {code} without a verdict")
    }
}

/// What went wrong driving a workload.
#[derive(Debug, thiserror::Error)]
pub enum WorkloadError {
    #[error("service {service:?} is already running")]
    AlreadyRunning { service: String },
    #[error("service {service:?} is not running")]
    NotRunning { service: String },
    #[error("service {service:?} is unknown to this driver")]
    UnknownService { service: String },
    #[error("invalid service name {service:?}: {why}")]
    InvalidService { service: String, why: &'static str },
    #[error("cannot prepare {path}: {source}")]
    WorkDir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot start guard {guard} for {service:?}: {source}")]
    Spawn {
        service: String,
        guard: PathBuf,
        source: std::io::Error,
    },
    #[error("guard of {service:?} is not reading its feeds (frozen?)")]
    FeedBlocked { service: String },
    #[error("the process driver needs a Tokio runtime")]
    NoRuntime,
    #[error(
        "{name} not found (looked at {looked}); build it with `cargo build --workspace --bins` or set {env_var}"
    )]
    BinaryMissing {
        name: &'static str,
        looked: String,
        env_var: &'static str,
    },
}

/// Runs service instances on this host, one per service name.
///
/// Dyn-compatible, so the agent can hold an `Arc<dyn Driver>` and tests can swap in
/// [`MemoryDriver`].
pub trait Driver: Send + Sync {
    /// Starts the workload under a guard whose lease ends at `until` (boot clock). Refuses if one
    /// is already running for that service; replaces an exited entry.
    fn start(&self, spec: WorkloadSpec, until: LeaseInstant) -> Result<(), WorkloadError>;

    /// Moves the lease deadline of a running workload to `until` (later or earlier).
    fn feed(&self, service: &str, until: LeaseInstant) -> Result<(), WorkloadError>;

    /// Planned stop: SIGTERM, grace, SIGKILL — SIGKILL at the lease deadline if that comes before
    /// the grace ends; resolves once it is gone. Stopping an instance that already exited is not
    /// an error.
    fn stop<'a>(&'a self, service: &'a str) -> BoxFuture<'a, Result<(), WorkloadError>>;

    /// What runs and what exited, sorted by service name. Exited entries are kept until
    /// [`forget`](Self::forget).
    fn list(&self) -> Vec<(String, WorkloadStatus)>;

    /// Drops an exited entry; a running instance is left alone.
    fn forget(&self, service: &str);
}

/// Service names become directory names, so they are held to a small alphabet.
pub fn validate_service(service: &str) -> Result<(), WorkloadError> {
    let bad = |why| {
        Err(WorkloadError::InvalidService {
            service: service.to_owned(),
            why,
        })
    };
    if service.is_empty() {
        return bad("empty");
    }
    if service.len() > 64 {
        return bad("longer than 64 bytes");
    }
    if service.starts_with('.') {
        return bad("starts with a dot");
    }
    if !service
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
    {
        return bad("only ASCII letters, digits, '.', '_' and '-' are allowed");
    }
    Ok(())
}

/// The `FABRIC_*` environment a workload sees, given its data directory.
pub fn fabric_env(
    spec: &WorkloadSpec,
    data_dir: Option<&std::path::Path>,
) -> Vec<(String, String)> {
    let addresses = spec
        .addresses
        .iter()
        .map(IpAddr::to_string)
        .collect::<Vec<_>>()
        .join(",");
    let mut env = vec![
        ("FABRIC_SERVICE".to_owned(), spec.service.clone()),
        ("FABRIC_SITE".to_owned(), spec.site.clone()),
        ("FABRIC_HOST".to_owned(), spec.host.to_string()),
        ("FABRIC_EPOCH".to_owned(), spec.epoch.to_string()),
        ("FABRIC_PORT".to_owned(), spec.port.to_string()),
        ("FABRIC_ADDRESSES".to_owned(), addresses),
    ];
    if let Some(dir) = data_dir {
        env.push((
            "FABRIC_DATA_DIR".to_owned(),
            dir.to_string_lossy().into_owned(),
        ));
    }
    env
}

/// Recovers the data from a poisoned lock: driver state stays consistent per operation, and a
/// panic elsewhere must not stop the agent from stopping workloads.
fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn service_names_that_could_escape_the_work_root_are_refused() {
        for bad in [
            "",
            "..",
            ".hidden",
            "a/b",
            "../etc",
            "a b",
            "é",
            &"x".repeat(65),
        ] {
            assert!(validate_service(bad).is_err(), "{bad:?} accepted");
        }
        for good in ["web", "web-1", "db_2.primary", &"x".repeat(64)] {
            assert!(validate_service(good).is_ok(), "{good:?} refused");
        }
    }

    #[test]
    fn fabric_env_lists_every_address_and_the_data_dir() {
        let spec = WorkloadSpec {
            service: "web".into(),
            epoch: 2,
            command: "x".into(),
            args: vec![],
            env: BTreeMap::new(),
            port: 8080,
            addresses: vec!["127.0.0.1".parse().ok(), "::1".parse().ok()]
                .into_iter()
                .flatten()
                .collect(),
            site: "s1".into(),
            host: 3,
        };
        let env: BTreeMap<_, _> = fabric_env(&spec, Some(std::path::Path::new("/w/web")))
            .into_iter()
            .collect();
        assert_eq!(env["FABRIC_ADDRESSES"], "127.0.0.1,::1");
        assert_eq!(env["FABRIC_EPOCH"], "2");
        assert_eq!(env["FABRIC_HOST"], "3");
        assert_eq!(env["FABRIC_DATA_DIR"], "/w/web");
    }
}
