//! The real driver: each workload runs as a child of its own `fabric-guard`, which this driver
//! feeds over a pipe.
//!
//! Owns: the per-service directory `work_root/<service>/` (the workload's `FABRIC_DATA_DIR` and
//! cwd, with `workload.log` holding the guard's decisions and the workload's stdout/stderr), the
//! guard processes, and the pipe ends that feed them.
//!
//! Invariant: a workload is only ever the guard's child, never the agent's, and the guard is in
//! its own process group, so freezing or killing the agent (or its process group) leaves the guard
//! free to kill the workload when feeds stop. An instance is reported `Exited` only after its
//! guard has exited, and the guard exits only after the workload is reaped.
//!
//! Does not: supervise or restart, collect the workload's output beyond appending it to the log,
//! or remove work directories (their data belongs to the service).

use std::collections::BTreeMap;
use std::fs::OpenOptions;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use failover::lease::LeaseInstant;
use futures::future::BoxFuture;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::sync::{mpsc, watch};

use super::{
    Driver, WorkloadError, WorkloadSpec, WorkloadStatus, fabric_env, lock, reason, validate_service,
};
use crate::guard::{GuardCommand, Verdict};

/// Name of the workload log inside a service's directory.
pub const LOG_FILE: &str = "workload.log";

/// How long a stop waits beyond the guard's grace before killing the guard itself.
const STOP_SLACK: Duration = Duration::from_secs(5);

/// Feeds queued for a guard that is not reading; more than this means it is stuck.
const FEED_QUEUE: usize = 16;

/// Runs workloads as real processes under `fabric-guard`.
///
/// Must be used inside a Tokio runtime. Dropping it asks every guard for a planned stop without
/// waiting; call [`shutdown`](Self::shutdown) to wait for them.
pub struct ProcessDriver {
    work_root: PathBuf,
    guard_binary: PathBuf,
    grace: Duration,
    state: Arc<Mutex<BTreeMap<String, Slot>>>,
    next_generation: AtomicU64,
}

enum Slot {
    Running(Running),
    Exited(WorkloadStatus),
}

struct Running {
    generation: u64,
    epoch: u64,
    since: Instant,
    pid: Option<u32>,
    guard_pid: Option<u32>,
    /// `None` once the link was cut: the guard's stdin is closed.
    commands: Option<mpsc::Sender<GuardCommand>>,
    exited: watch::Receiver<bool>,
}

impl ProcessDriver {
    pub fn new(work_root: PathBuf, guard_binary: PathBuf) -> Self {
        ProcessDriver {
            work_root,
            guard_binary,
            grace: crate::guard::DEFAULT_GRACE,
            state: Arc::new(Mutex::new(BTreeMap::new())),
            next_generation: AtomicU64::new(1),
        }
    }

    /// Time between SIGTERM and SIGKILL on a planned stop (`--grace-ms`).
    pub fn with_grace(mut self, grace: Duration) -> Self {
        self.grace = grace;
        self
    }

    /// `work_root/<service>`: the workload's cwd and `FABRIC_DATA_DIR`.
    pub fn work_dir(&self, service: &str) -> PathBuf {
        self.work_root.join(service)
    }

    /// `work_root/<service>/workload.log`.
    pub fn log_path(&self, service: &str) -> PathBuf {
        self.work_dir(service).join(LOG_FILE)
    }

    /// The pid of the guard of a running instance.
    pub fn guard_pid(&self, service: &str) -> Option<u32> {
        match lock(&self.state).get(service) {
            Some(Slot::Running(r)) => r.guard_pid,
            _ => None,
        }
    }

    /// Closes the guard's stdin as the agent's death would: the guard kills the workload at once
    /// and the instance is reported exited with [`reason::AGENT_GONE`].
    pub fn sever_feed(&self, service: &str) -> Result<(), WorkloadError> {
        match lock(&self.state).get_mut(service) {
            Some(Slot::Running(r)) => {
                r.commands = None;
                Ok(())
            }
            _ => Err(WorkloadError::NotRunning {
                service: service.to_owned(),
            }),
        }
    }

    /// Planned stop of every running instance, concurrently; returns when all are gone.
    pub async fn shutdown(&self) {
        let running: Vec<String> = lock(&self.state)
            .iter()
            .filter(|(_, slot)| matches!(slot, Slot::Running(_)))
            .map(|(name, _)| name.clone())
            .collect();
        let stops = running.iter().map(|service| async move {
            if let Err(e) = self.stop(service).await {
                tracing::warn!(service, "stop at shutdown: {e}");
            }
        });
        futures::future::join_all(stops).await;
    }

    fn spawn_guard(
        &self,
        spec: &WorkloadSpec,
        until: LeaseInstant,
        runtime: &tokio::runtime::Handle,
        generation: u64,
    ) -> Result<Running, WorkloadError> {
        let dir = self.work_dir(&spec.service);
        let dir_err = |path: &Path| {
            let path = path.to_path_buf();
            move |source| WorkloadError::WorkDir { path, source }
        };
        std::fs::create_dir_all(&dir).map_err(dir_err(&dir))?;
        let log_path = dir.join(LOG_FILE);
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .map_err(dir_err(&log_path))?;

        let mut cmd = tokio::process::Command::new(&self.guard_binary);
        cmd.arg("--until-ms")
            .arg(until.as_millis().to_string())
            .arg("--grace-ms")
            .arg(self.grace.as_millis().to_string())
            .arg("--")
            .arg(&spec.command)
            .args(&spec.args)
            .envs(&spec.env)
            .envs(fabric_env(spec, Some(&dir)))
            .current_dir(&dir)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(log))
            // Its own group: a signal to the agent's group (Ctrl-C, a drill's SIGSTOP) must not
            // reach the guard, or a frozen agent would freeze its watchdog too.
            .process_group(0);
        // Spawning registers the child with the runtime's reaper, so enter it explicitly.
        let _enter = runtime.enter();
        let mut child = cmd.spawn().map_err(|source| WorkloadError::Spawn {
            service: spec.service.clone(),
            guard: self.guard_binary.clone(),
            source,
        })?;
        let guard_pid = child.id();
        let (Some(stdin), Some(stdout)) = (child.stdin.take(), child.stdout.take()) else {
            // Both were asked for as pipes; without them the guard cannot be fed, so let it die.
            let _ = child.start_kill();
            return Err(WorkloadError::Spawn {
                service: spec.service.clone(),
                guard: self.guard_binary.clone(),
                source: std::io::Error::other("guard pipes missing"),
            });
        };

        let (commands, mut queue) = mpsc::channel::<GuardCommand>(FEED_QUEUE);
        runtime.spawn(async move {
            let mut stdin = stdin;
            while let Some(cmd) = queue.recv().await {
                if stdin.write_all(cmd.to_line().as_bytes()).await.is_err() {
                    break;
                }
                let _ = stdin.flush().await;
            }
            // Dropping stdin here is the EOF that tells the guard its agent is gone.
        });

        let (exited_tx, exited) = watch::channel(false);
        let state = Arc::clone(&self.state);
        let service = spec.service.clone();
        let epoch = spec.epoch;
        runtime.spawn(async move {
            let mut verdict = None;
            let mut lines = BufReader::new(stdout).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                if let Some(pid) = line
                    .strip_prefix("started pid=")
                    .and_then(|p| p.trim().parse::<u32>().ok())
                {
                    if let Some(Slot::Running(r)) = lock(&state).get_mut(&service)
                        && r.generation == generation
                    {
                        r.pid = Some(pid);
                    }
                } else if let Ok(v) = Verdict::parse(&line) {
                    verdict = Some(v);
                }
            }
            let status = child.wait().await;
            let at = Instant::now();
            let (code, why) = classify(verdict, status);
            tracing::info!(service, epoch, ?code, reason = %why, "workload exited");
            {
                let mut state = lock(&state);
                if let Some(slot) = state.get_mut(&service)
                    && matches!(slot, Slot::Running(r) if r.generation == generation)
                {
                    *slot = Slot::Exited(WorkloadStatus::Exited {
                        epoch,
                        code,
                        reason: why,
                        at,
                    });
                }
            }
            let _ = exited_tx.send(true);
        });

        Ok(Running {
            generation,
            epoch: spec.epoch,
            since: Instant::now(),
            pid: None,
            guard_pid,
            commands: Some(commands),
            exited,
        })
    }
}

/// Turns what the guard reported into the code and reason of [`WorkloadStatus::Exited`].
pub fn classify(
    verdict: Option<Verdict>,
    status: std::io::Result<std::process::ExitStatus>,
) -> (Option<i32>, String) {
    use std::os::unix::process::ExitStatusExt;
    match verdict {
        Some(Verdict::Stopped) => (Some(0), reason::STOPPED.to_owned()),
        Some(Verdict::LeaseExpired) => (
            Some(i32::from(Verdict::LeaseExpired.exit_code())),
            reason::LEASE_EXPIRED.to_owned(),
        ),
        Some(Verdict::AgentGone) => (
            Some(i32::from(Verdict::AgentGone.exit_code())),
            reason::AGENT_GONE.to_owned(),
        ),
        Some(Verdict::SpawnFailed) => (
            Some(i32::from(Verdict::SpawnFailed.exit_code())),
            reason::SPAWN_FAILED.to_owned(),
        ),
        Some(Verdict::WorkloadExited { code }) => (Some(code), reason::workload_exited(code)),
        None => match status {
            Ok(s) => match (s.code(), s.signal()) {
                (Some(code), _) => (Some(code), reason::guard_exited(code)),
                (None, Some(sig)) => (None, reason::guard_killed(sig)),
                (None, None) => (None, reason::guard_exited(-1)),
            },
            Err(e) => (None, format!("guard lost: {e}")),
        },
    }
}

impl Driver for ProcessDriver {
    fn start(&self, spec: WorkloadSpec, until: LeaseInstant) -> Result<(), WorkloadError> {
        validate_service(&spec.service)?;
        let runtime =
            tokio::runtime::Handle::try_current().map_err(|_| WorkloadError::NoRuntime)?;
        // Held across the spawn so two starts of one service cannot both pass the check.
        let mut state = lock(&self.state);
        if let Some(Slot::Running(_)) = state.get(&spec.service) {
            return Err(WorkloadError::AlreadyRunning {
                service: spec.service,
            });
        }
        let generation = self.next_generation.fetch_add(1, Ordering::Relaxed);
        let running = self.spawn_guard(&spec, until, &runtime, generation)?;
        tracing::info!(
            service = spec.service,
            epoch = spec.epoch,
            guard_pid = running.guard_pid,
            until_boottime_ms = until.as_millis(),
            "workload started"
        );
        state.insert(spec.service, Slot::Running(running));
        Ok(())
    }

    fn feed(&self, service: &str, until: LeaseInstant) -> Result<(), WorkloadError> {
        let not_running = || WorkloadError::NotRunning {
            service: service.to_owned(),
        };
        let state = lock(&self.state);
        let Some(Slot::Running(r)) = state.get(service) else {
            return Err(not_running());
        };
        let commands = r.commands.as_ref().ok_or_else(not_running)?;
        commands
            .try_send(GuardCommand::Until(until))
            .map_err(|e| match e {
                mpsc::error::TrySendError::Full(_) => WorkloadError::FeedBlocked {
                    service: service.to_owned(),
                },
                mpsc::error::TrySendError::Closed(_) => not_running(),
            })
    }

    fn stop<'a>(&'a self, service: &'a str) -> BoxFuture<'a, Result<(), WorkloadError>> {
        Box::pin(async move {
            let (commands, mut exited, guard_pid) = match lock(&self.state).get(service) {
                None => {
                    return Err(WorkloadError::UnknownService {
                        service: service.to_owned(),
                    });
                }
                Some(Slot::Exited(_)) => return Ok(()),
                Some(Slot::Running(r)) => (r.commands.clone(), r.exited.clone(), r.guard_pid),
            };
            let planned = async {
                if let Some(commands) = commands {
                    // A closed channel means the guard is already on its way out.
                    let _ = commands.send(GuardCommand::Stop).await;
                }
                let _ = exited.wait_for(|gone| *gone).await;
            };
            if tokio::time::timeout(self.grace + STOP_SLACK, planned)
                .await
                .is_err()
            {
                // The guard does not answer (frozen?). Killing it takes the workload down through
                // PR_SET_PDEATHSIG.
                tracing::warn!(service, ?guard_pid, "guard ignored stop, killing it");
                if let Some(pid) = guard_pid.and_then(|p| i32::try_from(p).ok()) {
                    let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
                }
                let _ = exited.wait_for(|gone| *gone).await;
            }
            Ok(())
        })
    }

    fn list(&self) -> Vec<(String, WorkloadStatus)> {
        lock(&self.state)
            .iter()
            .map(|(name, slot)| {
                let status = match slot {
                    Slot::Running(r) => WorkloadStatus::Running {
                        pid: r.pid,
                        epoch: r.epoch,
                        since: r.since,
                    },
                    Slot::Exited(s) => s.clone(),
                };
                (name.clone(), status)
            })
            .collect()
    }

    fn forget(&self, service: &str) {
        let mut state = lock(&self.state);
        if let Some(Slot::Exited(_)) = state.get(service) {
            state.remove(service);
        }
    }
}

impl Drop for ProcessDriver {
    /// Best effort planned stop: each guard gets `stop` and then EOF, and carries the stop out on
    /// its own. If the queue is full the EOF alone makes the guard kill at once.
    fn drop(&mut self) {
        for slot in lock(&self.state).values_mut() {
            if let Slot::Running(r) = slot
                && let Some(commands) = r.commands.take()
            {
                let _ = commands.try_send(GuardCommand::Stop);
            }
        }
    }
}

/// `fabric-guard`: `$FABRIC_GUARD_BIN`, else next to the current executable.
pub fn find_guard() -> Result<PathBuf, WorkloadError> {
    find_binary("fabric-guard", "FABRIC_GUARD_BIN")
}

/// `fabric-demo`: `$FABRIC_DEMO_BIN`, else next to the current executable.
pub fn find_demo() -> Result<PathBuf, WorkloadError> {
    find_binary("fabric-demo", "FABRIC_DEMO_BIN")
}

/// Looks for `name` in `$env_var`, then beside the current executable, then one level up when
/// that is cargo's `deps/` directory (integration tests run from `target/<profile>/deps/`).
fn find_binary(name: &'static str, env_var: &'static str) -> Result<PathBuf, WorkloadError> {
    let mut looked = Vec::new();
    if let Some(path) = std::env::var_os(env_var) {
        let path = PathBuf::from(path);
        if path.is_file() {
            return Ok(path);
        }
        looked.push(path);
    }
    if let Some(dir) = std::env::current_exe()
        .ok()
        .and_then(|exe| exe.parent().map(Path::to_path_buf))
    {
        let mut candidates = vec![dir.join(name)];
        if dir.file_name().is_some_and(|n| n == "deps")
            && let Some(up) = dir.parent()
        {
            candidates.push(up.join(name));
        }
        for path in candidates {
            if path.is_file() {
                return Ok(path);
            }
            looked.push(path);
        }
    }
    Err(WorkloadError::BinaryMissing {
        name,
        looked: looked
            .iter()
            .map(|p| p.display().to_string())
            .collect::<Vec<_>>()
            .join(", "),
        env_var,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::process::ExitStatusExt;

    fn exit(code: i32) -> std::io::Result<std::process::ExitStatus> {
        Ok(std::process::ExitStatus::from_raw(code << 8))
    }

    #[test]
    fn the_guards_verdict_wins_over_a_colliding_exit_code() {
        // A workload exiting 75 by itself must not read as an expired lease.
        let (code, why) = classify(Some(Verdict::WorkloadExited { code: 75 }), exit(75));
        assert_eq!(code, Some(75));
        assert_eq!(why, "workload exited code 75");
        let (code, why) = classify(Some(Verdict::LeaseExpired), exit(75));
        assert_eq!((code, why.as_str()), (Some(75), reason::LEASE_EXPIRED));
    }

    #[test]
    fn a_guard_killed_by_a_signal_is_reported_as_such() {
        let status = Ok(std::process::ExitStatus::from_raw(9));
        assert_eq!(classify(None, status), (None, reason::guard_killed(9)));
    }

    #[test]
    fn a_missing_binary_names_where_it_looked_and_how_to_fix_it() {
        let err = find_binary("no-such-fabric-binary", "FABRIC_NO_SUCH_BIN_FOR_TEST");
        let msg = err.err().map(|e| e.to_string()).unwrap_or_default();
        assert!(msg.contains("no-such-fabric-binary not found"), "{msg}");
        assert!(msg.contains("cargo build --workspace --bins"), "{msg}");
    }
}
