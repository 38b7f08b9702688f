//! The watchdog guard: the decisions of `fabric-guard`, the process that stands between a site
//! agent and the workload it runs, and the small shell that carries them out.
//!
//! Owns: the guard's command line, its line protocol on stdin (`feed <ms>`, `stop`), the lease
//! deadline ([`Watchdog`]), the verdict it reports on stdout ([`Verdict`]) and its exit codes.
//!
//! Invariant: the workload runs only while the guard's deadline lies in the future and the agent's
//! end of the pipe is open. When the deadline passes or stdin reaches EOF the workload's whole
//! process group gets SIGKILL at once, and the guard exits only after the workload is reaped, so
//! "the guard has exited" implies "the workload is gone". The workload is started with
//! `PR_SET_PDEATHSIG=SIGKILL`, so killing the guard with -9 takes the workload down too.
//!
//! Does not: talk to Raft, know what a lease means, restart anything, or protect against the guard
//! itself being frozen (SIGSTOP of the guard keeps the workload running; a hardware or kernel
//! watchdog would be the next layer). Routine feeds are not logged, only decisions.
//!
//! Protocol towards the agent, on the guard's stdout: `started pid=<N>` once the workload runs,
//! then exactly one verdict line (see [`Verdict`]) before the guard exits. Human-readable decision
//! lines with `at_ms=<unix ms>` go to stderr (the workload's log).

use std::io::{BufRead, Write};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;

/// Exit code after a planned `stop`.
pub const EXIT_STOPPED: u8 = 0;
/// Exit code when the command line could not be parsed.
pub const EXIT_USAGE: u8 = 64;
/// Exit code when the workload could not be started.
pub const EXIT_SPAWN_FAILED: u8 = 71;
/// Exit code when the lease ran out without a feed and the workload was killed.
pub const EXIT_LEASE_EXPIRED: u8 = 75;
/// Exit code when stdin reached EOF (the agent died) and the workload was killed.
pub const EXIT_AGENT_GONE: u8 = 76;

/// Grace between SIGTERM and SIGKILL on a planned stop when `--grace-ms` is not given.
pub const DEFAULT_GRACE: Duration = Duration::from_millis(2000);

/// What went wrong in the guard.
#[derive(Debug, thiserror::Error)]
pub enum GuardError {
    #[error("unknown command {0:?} on stdin (expected `feed <ms>` or `stop`)")]
    UnknownCommand(String),
    #[error("bad feed {0:?}: expected `feed <milliseconds>`")]
    BadFeed(String),
    #[error("bad verdict line {0:?}")]
    BadVerdict(String),
    #[error("cannot start workload {command:?}: {source}")]
    Spawn {
        command: String,
        source: std::io::Error,
    },
}

/// `fabric-guard --lease-ms N [--grace-ms G] -- COMMAND ARGS...`
#[derive(Debug, Clone, PartialEq, Eq, clap::Parser)]
#[command(name = "fabric-guard", version)]
pub struct GuardArgs {
    /// Initial lease in milliseconds; the workload is killed if no feed arrives before it ends.
    #[arg(long)]
    pub lease_ms: u64,
    /// Time between SIGTERM and SIGKILL on a planned stop.
    #[arg(long, default_value_t = DEFAULT_GRACE.as_millis() as u64)]
    pub grace_ms: u64,
    /// The workload: command and arguments, after `--`.
    #[arg(last = true, required = true, num_args = 1..)]
    pub command: Vec<String>,
}

/// One line the agent writes to the guard's stdin.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GuardCommand {
    /// `feed <ms>`: the lease now ends `ms` after the guard reads this line.
    Feed(Duration),
    /// `stop`: SIGTERM, grace, SIGKILL, exit 0.
    Stop,
}

impl GuardCommand {
    pub fn parse(line: &str) -> Result<Self, GuardError> {
        let mut words = line.split_whitespace();
        match (words.next(), words.next(), words.next()) {
            (Some("feed"), Some(ms), None) => ms
                .parse::<u64>()
                .map(|ms| GuardCommand::Feed(Duration::from_millis(ms)))
                .map_err(|_| GuardError::BadFeed(line.to_owned())),
            (Some("feed"), _, _) => Err(GuardError::BadFeed(line.to_owned())),
            (Some("stop"), None, _) => Ok(GuardCommand::Stop),
            _ => Err(GuardError::UnknownCommand(line.to_owned())),
        }
    }

    /// The line as written on the pipe, newline included.
    pub fn to_line(self) -> String {
        match self {
            GuardCommand::Feed(d) => format!("feed {}\n", d.as_millis()),
            GuardCommand::Stop => "stop\n".to_owned(),
        }
    }
}

/// Why the guard exited; written as the last line on its stdout and mirrored in its exit code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// `verdict stopped`: a planned stop finished.
    Stopped,
    /// `verdict lease-expired`: no feed arrived in time; the workload was killed.
    LeaseExpired,
    /// `verdict agent-gone`: stdin reached EOF; the workload was killed.
    AgentGone,
    /// `verdict workload-exited code=<N>`: the workload ended by itself (signal S → 128+S).
    WorkloadExited { code: i32 },
    /// `verdict spawn-failed`: the workload could not be started.
    SpawnFailed,
}

impl Verdict {
    pub fn exit_code(self) -> u8 {
        match self {
            Verdict::Stopped => EXIT_STOPPED,
            Verdict::LeaseExpired => EXIT_LEASE_EXPIRED,
            Verdict::AgentGone => EXIT_AGENT_GONE,
            Verdict::WorkloadExited { code } => u8::try_from(code.clamp(0, 255)).unwrap_or(255),
            Verdict::SpawnFailed => EXIT_SPAWN_FAILED,
        }
    }

    pub fn to_line(self) -> String {
        match self {
            Verdict::Stopped => "verdict stopped".to_owned(),
            Verdict::LeaseExpired => "verdict lease-expired".to_owned(),
            Verdict::AgentGone => "verdict agent-gone".to_owned(),
            Verdict::WorkloadExited { code } => format!("verdict workload-exited code={code}"),
            Verdict::SpawnFailed => "verdict spawn-failed".to_owned(),
        }
    }

    pub fn parse(line: &str) -> Result<Self, GuardError> {
        let bad = || GuardError::BadVerdict(line.to_owned());
        let rest = line.trim().strip_prefix("verdict ").ok_or_else(bad)?;
        match rest {
            "stopped" => Ok(Verdict::Stopped),
            "lease-expired" => Ok(Verdict::LeaseExpired),
            "agent-gone" => Ok(Verdict::AgentGone),
            "spawn-failed" => Ok(Verdict::SpawnFailed),
            _ => {
                let code = rest
                    .strip_prefix("workload-exited code=")
                    .and_then(|c| c.parse::<i32>().ok())
                    .ok_or_else(bad)?;
                Ok(Verdict::WorkloadExited { code })
            }
        }
    }
}

/// What the shell must do after an input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Keep running until [`Watchdog::deadline`] or the next input.
    Wait,
    /// SIGKILL the workload's group at once and exit with this verdict.
    Kill(Verdict),
    /// Planned stop: SIGTERM, grace, SIGKILL.
    Stop,
}

/// The lease deadline, sans I/O: every input carries the time it happened.
#[derive(Debug, Clone)]
pub struct Watchdog {
    deadline: Instant,
}

impl Watchdog {
    pub fn new(lease: Duration, now: Instant) -> Self {
        Watchdog {
            deadline: now + lease,
        }
    }

    /// The instant at which the workload must die unless fed before.
    pub fn deadline(&self) -> Instant {
        self.deadline
    }

    /// A feed replaces the deadline, so it may shorten it as well as extend it. A feed that
    /// arrives after the deadline does not revive anything: the shell checks [`tick`](Self::tick)
    /// before reading input, and a zero feed kills at once.
    pub fn handle_feed(&mut self, valid_for: Duration, now: Instant) -> Action {
        if now >= self.deadline {
            return Action::Kill(Verdict::LeaseExpired);
        }
        self.deadline = now + valid_for;
        self.tick(now)
    }

    /// One line from stdin. Garbage is an error and changes nothing; the caller logs it.
    pub fn handle_line(&mut self, line: &str, now: Instant) -> Result<Action, GuardError> {
        Ok(match GuardCommand::parse(line)? {
            GuardCommand::Feed(valid_for) => self.handle_feed(valid_for, now),
            GuardCommand::Stop => Action::Stop,
        })
    }

    /// The agent's end of the pipe closed: it died. Kill at once; if the lease had already run
    /// out that is the truer reason.
    pub fn handle_eof(&mut self, now: Instant) -> Action {
        if now >= self.deadline {
            Action::Kill(Verdict::LeaseExpired)
        } else {
            Action::Kill(Verdict::AgentGone)
        }
    }

    /// Time passed without input.
    pub fn tick(&self, now: Instant) -> Action {
        if now >= self.deadline {
            Action::Kill(Verdict::LeaseExpired)
        } else {
            Action::Wait
        }
    }
}

/// The exit code a guard mirrors for a workload that ended by itself.
pub fn mirrored_code(status: ExitStatus) -> i32 {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(code), _) => code,
        (None, Some(sig)) => 128 + sig,
        (None, None) => 255,
    }
}

fn log(msg: &str) {
    // Never panic on a closed stderr: the guard must still kill the workload.
    let _ = writeln!(
        std::io::stderr(),
        "fabric-guard: {msg} at_ms={}",
        crate::clock::unix_ms()
    );
}

fn report(line: &str) {
    // The agent may be gone (EPIPE); the verdict is also in the exit code and the log.
    let mut out = std::io::stdout();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

enum Event {
    Line(String),
    Eof,
    Exited(ExitStatus),
}

/// Runs the guard to completion and returns its exit code.
///
/// Must be called on the process's main thread: `PR_SET_PDEATHSIG` fires when the *thread* that
/// forked the workload ends, not the process, so the spawning thread has to live as long as the
/// guard.
pub fn run(args: GuardArgs) -> u8 {
    let lease = Duration::from_millis(args.lease_ms);
    let grace = Duration::from_millis(args.grace_ms);
    let mut watchdog = Watchdog::new(lease, Instant::now());

    let child = match spawn_workload(&args.command) {
        Ok(child) => child,
        Err(e) => {
            log(&format!("{e}"));
            report(&Verdict::SpawnFailed.to_line());
            return EXIT_SPAWN_FAILED;
        }
    };
    let pid = child.id();
    let (tx, rx) = mpsc::channel::<Event>();
    spawn_waiter(child, tx.clone());
    spawn_stdin_reader(tx);
    report(&format!("started pid={pid}"));
    log(&format!(
        "started workload pid {pid} lease_ms={} grace_ms={}",
        args.lease_ms, args.grace_ms
    ));

    loop {
        let now = Instant::now();
        let action = match watchdog.tick(now) {
            Action::Wait => {
                match rx.recv_timeout(watchdog.deadline().saturating_duration_since(now)) {
                    Ok(Event::Line(line)) => match watchdog.handle_line(&line, Instant::now()) {
                        Ok(action) => action,
                        Err(e) => {
                            log(&format!("ignored: {e}"));
                            Action::Wait
                        }
                    },
                    Ok(Event::Eof) | Err(mpsc::RecvTimeoutError::Disconnected) => {
                        watchdog.handle_eof(Instant::now())
                    }
                    Ok(Event::Exited(status)) => {
                        let code = mirrored_code(status);
                        log(&format!(
                            "workload pid {pid} exited by itself ({status}), code {code}"
                        ));
                        return finish(Verdict::WorkloadExited { code });
                    }
                    Err(mpsc::RecvTimeoutError::Timeout) => watchdog.tick(Instant::now()),
                }
            }
            other => other,
        };
        match action {
            Action::Wait => {}
            Action::Kill(verdict) => {
                signal_group(pid, Signal::SIGKILL);
                let why = match verdict {
                    Verdict::AgentGone => "stdin closed (agent gone)",
                    _ => "lease expired",
                };
                log(&format!("{why}, killed workload pid {pid}"));
                await_exit(&rx, pid);
                return finish(verdict);
            }
            Action::Stop => {
                signal_group(pid, Signal::SIGTERM);
                log(&format!(
                    "stop requested, sent SIGTERM to workload pid {pid}, grace_ms={}",
                    grace.as_millis()
                ));
                let gone_by = Instant::now() + grace;
                if let Some(status) = exit_before(&rx, gone_by) {
                    log(&format!("workload pid {pid} stopped ({status})"));
                } else {
                    signal_group(pid, Signal::SIGKILL);
                    log(&format!("grace ran out, killed workload pid {pid}"));
                    await_exit(&rx, pid);
                }
                return finish(Verdict::Stopped);
            }
        }
    }
}

fn finish(verdict: Verdict) -> u8 {
    report(&verdict.to_line());
    verdict.exit_code()
}

/// Waits for the workload's exit event until `until`, ignoring stdin meanwhile.
fn exit_before(rx: &mpsc::Receiver<Event>, until: Instant) -> Option<ExitStatus> {
    loop {
        let left = until.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(Event::Exited(status)) => return Some(status),
            Ok(_) => continue,
            Err(_) => return None,
        }
    }
}

/// After SIGKILL: the guard does not exit before the workload is reaped.
fn await_exit(rx: &mpsc::Receiver<Event>, pid: u32) {
    loop {
        match rx.recv() {
            Ok(Event::Exited(_)) => {
                log(&format!("workload pid {pid} reaped"));
                return;
            }
            Ok(_) => continue,
            // The waiter thread is gone without reporting: nothing left to wait on.
            Err(_) => return,
        }
    }
}

fn signal_group(pid: u32, signal: Signal) {
    let Ok(raw) = i32::try_from(pid) else {
        return;
    };
    // ESRCH means the group is already empty, which is what we want.
    let _ = killpg(Pid::from_raw(raw), signal);
}

fn spawn_workload(command: &[String]) -> Result<std::process::Child, GuardError> {
    use std::os::fd::AsFd;
    use std::os::unix::process::CommandExt;

    let (program, rest) = command.split_first().ok_or_else(|| GuardError::Spawn {
        command: String::new(),
        source: std::io::Error::other("empty command"),
    })?;
    let spawn_err = |source| GuardError::Spawn {
        command: program.clone(),
        source,
    };
    // The workload writes where the guard's stderr goes (the workload log); the guard's stdout is
    // the private channel to the agent.
    let out = std::io::stderr()
        .as_fd()
        .try_clone_to_owned()
        .map_err(spawn_err)?;
    let err = std::io::stderr()
        .as_fd()
        .try_clone_to_owned()
        .map_err(spawn_err)?;
    let guard_pid = i32::try_from(std::process::id()).unwrap_or(0);
    let mut cmd = Command::new(program);
    cmd.args(rest)
        // Never the guard's stdin: a workload reading it would swallow the agent's feeds.
        .stdin(Stdio::null())
        .stdout(Stdio::from(out))
        .stderr(Stdio::from(err))
        .process_group(0);
    #[allow(unsafe_code)]
    // SAFETY: the closure runs in the forked child before exec, where only async-signal-safe
    // calls are allowed. It calls prctl(2) and getppid(2), plain system calls, and builds an
    // io::Error from a raw errno, which does not allocate. It touches no locks and no heap.
    unsafe {
        cmd.pre_exec(move || {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            // The guard may have died between fork and prctl; then no death signal will come.
            if libc::getppid() != guard_pid {
                return Err(std::io::Error::from_raw_os_error(libc::ESRCH));
            }
            Ok(())
        });
    }
    cmd.spawn().map_err(spawn_err)
}

fn spawn_waiter(mut child: std::process::Child, tx: mpsc::Sender<Event>) {
    std::thread::spawn(move || {
        if let Ok(status) = child.wait() {
            let _ = tx.send(Event::Exited(status));
        }
    });
}

fn spawn_stdin_reader(tx: mpsc::Sender<Event>) {
    std::thread::spawn(move || {
        let stdin = std::io::stdin();
        let mut lines = stdin.lock().lines();
        loop {
            match lines.next() {
                Some(Ok(line)) => {
                    if tx.send(Event::Line(line)).is_err() {
                        return;
                    }
                }
                // A read error is as good as EOF: the agent can no longer feed us.
                Some(Err(_)) | None => {
                    let _ = tx.send(Event::Eof);
                    return;
                }
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    const LEASE: Duration = Duration::from_millis(1000);

    #[test]
    fn lease_expires_at_the_initial_deadline_without_feeds() {
        let t0 = Instant::now();
        let w = Watchdog::new(LEASE, t0);
        assert_eq!(w.deadline(), t0 + LEASE);
        assert_eq!(w.tick(t0 + Duration::from_millis(999)), Action::Wait);
        assert_eq!(w.tick(t0 + LEASE), Action::Kill(Verdict::LeaseExpired));
    }

    #[test]
    fn a_feed_moves_the_deadline_relative_to_when_it_arrives() {
        let t0 = Instant::now();
        let mut w = Watchdog::new(LEASE, t0);
        let t1 = t0 + Duration::from_millis(800);
        assert_eq!(w.handle_feed(LEASE, t1), Action::Wait);
        assert_eq!(w.deadline(), t1 + LEASE);
        assert_eq!(w.tick(t0 + Duration::from_millis(1500)), Action::Wait);
        assert_eq!(w.tick(t1 + LEASE), Action::Kill(Verdict::LeaseExpired));
    }

    #[test]
    fn a_feed_may_shorten_the_deadline() {
        let t0 = Instant::now();
        let mut w = Watchdog::new(Duration::from_secs(10), t0);
        let t1 = t0 + Duration::from_millis(100);
        assert_eq!(w.handle_feed(Duration::from_millis(50), t1), Action::Wait);
        assert_eq!(w.deadline(), t1 + Duration::from_millis(50));
    }

    #[test]
    fn a_zero_feed_kills_at_once() {
        let t0 = Instant::now();
        let mut w = Watchdog::new(LEASE, t0);
        assert_eq!(
            w.handle_feed(Duration::ZERO, t0),
            Action::Kill(Verdict::LeaseExpired)
        );
    }

    #[test]
    fn a_late_feed_does_not_revive_an_expired_lease() {
        let t0 = Instant::now();
        let mut w = Watchdog::new(LEASE, t0);
        assert_eq!(
            w.handle_feed(LEASE, t0 + LEASE + Duration::from_millis(1)),
            Action::Kill(Verdict::LeaseExpired)
        );
    }

    #[test]
    fn eof_before_the_deadline_means_the_agent_is_gone() {
        let t0 = Instant::now();
        let mut w = Watchdog::new(LEASE, t0);
        assert_eq!(
            w.handle_eof(t0 + Duration::from_millis(10)),
            Action::Kill(Verdict::AgentGone)
        );
    }

    #[test]
    fn eof_after_the_deadline_reports_the_expired_lease() {
        let t0 = Instant::now();
        let mut w = Watchdog::new(LEASE, t0);
        assert_eq!(
            w.handle_eof(t0 + LEASE),
            Action::Kill(Verdict::LeaseExpired)
        );
    }

    #[test]
    fn stop_line_asks_for_a_planned_stop() {
        let t0 = Instant::now();
        let mut w = Watchdog::new(LEASE, t0);
        assert_eq!(w.handle_line("stop", t0).ok(), Some(Action::Stop));
    }

    #[test]
    fn garbage_on_stdin_is_an_error_and_leaves_the_deadline_alone() {
        let t0 = Instant::now();
        let mut w = Watchdog::new(LEASE, t0);
        for line in [
            "feed", "feed -3", "feed 1 2", "feed abc", "stopp", "", "stop now",
        ] {
            assert!(w.handle_line(line, t0).is_err(), "{line:?} accepted");
        }
        assert_eq!(w.deadline(), t0 + LEASE);
    }

    #[test]
    fn commands_round_trip_through_their_line_form() {
        for cmd in [
            GuardCommand::Feed(Duration::from_millis(2500)),
            GuardCommand::Stop,
        ] {
            let line = cmd.to_line();
            assert_eq!(GuardCommand::parse(line.trim_end()).ok(), Some(cmd));
        }
    }

    #[test]
    fn verdicts_round_trip_and_map_to_distinct_exit_codes() {
        let all = [
            Verdict::Stopped,
            Verdict::LeaseExpired,
            Verdict::AgentGone,
            Verdict::SpawnFailed,
            Verdict::WorkloadExited { code: 3 },
        ];
        for v in all {
            assert_eq!(Verdict::parse(&v.to_line()).ok(), Some(v));
        }
        assert_eq!(Verdict::LeaseExpired.exit_code(), 75);
        assert_eq!(Verdict::AgentGone.exit_code(), 76);
        assert_eq!(Verdict::Stopped.exit_code(), 0);
        assert_eq!(Verdict::WorkloadExited { code: 137 }.exit_code(), 137);
        assert!(Verdict::parse("verdict workload-exited code=x").is_err());
        assert!(Verdict::parse("started pid=3").is_err());
    }

    #[test]
    fn command_line_needs_a_lease_and_a_command_after_the_separator() {
        use clap::Parser;
        let ok = GuardArgs::try_parse_from([
            "fabric-guard",
            "--lease-ms",
            "1500",
            "--",
            "demo",
            "--listen",
            "x",
        ]);
        let ok = ok.ok();
        assert_eq!(
            ok,
            Some(GuardArgs {
                lease_ms: 1500,
                grace_ms: 2000,
                command: vec!["demo".into(), "--listen".into(), "x".into()],
            })
        );
        assert!(GuardArgs::try_parse_from(["fabric-guard", "--lease-ms", "1", "--"]).is_err());
        assert!(GuardArgs::try_parse_from(["fabric-guard", "--", "demo"]).is_err());
    }
}
