//! The watchdog guard: the decisions of `fabric-guard`, the process that stands between a site
//! agent and the workload it runs, and the small shell that carries them out.
//!
//! Owns: the guard's command line, its line protocol on stdin (`until <boottime ms>`, `stop`),
//! the lease deadline ([`Watchdog`]), the verdict it reports on stdout ([`Verdict`]) and its exit
//! codes.
//!
//! Deadlines are absolute points on the machine's boot clock (CLOCK_BOOTTIME, the same clock in
//! the agent and here, and one that keeps counting through a suspend), never "time left": a line
//! that sat in the pipe, or a guard that was suspended, cannot stretch the lease. The shell never
//! waits longer than [`MAX_WAIT`] at a time, so after a resume it sees the boot clock within that.
//!
//! Invariant: the workload runs only while the guard's deadline lies in the future and the agent's
//! end of the pipe is open. When the deadline passes or stdin reaches EOF the workload's whole
//! process group gets SIGKILL at once — also in the middle of a planned stop's grace period, and the guard exits only after the workload is reaped, so
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
use std::time::Duration;

use failover::lease::LeaseInstant;
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

/// The longest the guard blocks between two reads of the boot clock. Blocking waits run on the
/// monotonic clock, which stops during a suspend; this bounds how late a resumed guard kills.
pub const MAX_WAIT: Duration = Duration::from_millis(50);

/// Grace between SIGTERM and SIGKILL on a planned stop when `--grace-ms` is not given.
pub const DEFAULT_GRACE: Duration = Duration::from_millis(2000);

/// What went wrong in the guard.
#[derive(Debug, thiserror::Error)]
pub enum GuardError {
    #[error("unknown command {0:?} on stdin (expected `until <boottime ms>` or `stop`)")]
    UnknownCommand(String),
    #[error("bad deadline line {0:?}: expected `until <milliseconds on CLOCK_BOOTTIME>`")]
    BadUntil(String),
    #[error("bad verdict line {0:?}")]
    BadVerdict(String),
    #[error("cannot start workload {command:?}: {source}")]
    Spawn {
        command: String,
        source: std::io::Error,
    },
}

/// `fabric-guard --until-ms N [--grace-ms G] -- COMMAND ARGS...`
#[derive(Debug, Clone, PartialEq, Eq, clap::Parser)]
#[command(name = "fabric-guard", version)]
pub struct GuardArgs {
    /// Initial lease deadline, in milliseconds on CLOCK_BOOTTIME; the workload is killed then
    /// unless an `until` line moves it.
    #[arg(long)]
    pub until_ms: u64,
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
    /// `until <ms>`: the lease now ends at `ms` milliseconds on CLOCK_BOOTTIME.
    Until(LeaseInstant),
    /// `stop`: SIGTERM, grace (cut short by the deadline), SIGKILL, exit 0.
    Stop,
}

impl GuardCommand {
    pub fn parse(line: &str) -> Result<Self, GuardError> {
        let mut words = line.split_whitespace();
        match (words.next(), words.next(), words.next()) {
            (Some("until"), Some(ms), None) => ms
                .parse::<u64>()
                .map(|ms| GuardCommand::Until(LeaseInstant::from_millis(ms)))
                .map_err(|_| GuardError::BadUntil(line.to_owned())),
            (Some("until"), _, _) => Err(GuardError::BadUntil(line.to_owned())),
            (Some("stop"), None, _) => Ok(GuardCommand::Stop),
            _ => Err(GuardError::UnknownCommand(line.to_owned())),
        }
    }

    /// The line as written on the pipe, newline included.
    pub fn to_line(self) -> String {
        match self {
            // Rounded down: the deadline the guard reads is never later than the agent's.
            GuardCommand::Until(t) => format!("until {}\n", t.as_millis()),
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
    /// Planned stop: SIGTERM, then SIGKILL at [`Watchdog::stop_kill_at`].
    Stop,
}

/// The lease deadline, sans I/O: every input carries the time it happened, on the boot clock.
#[derive(Debug, Clone)]
pub struct Watchdog {
    deadline: LeaseInstant,
}

impl Watchdog {
    /// A watchdog whose workload must die at `deadline` unless an `until` line moves it.
    pub fn new(deadline: LeaseInstant) -> Self {
        Watchdog { deadline }
    }

    /// The instant at which the workload must die unless fed before.
    pub fn deadline(&self) -> LeaseInstant {
        self.deadline
    }

    /// A new deadline replaces the old one, so it may shorten the lease as well as extend it. One
    /// that arrives after the deadline does not revive anything, and one already past kills at
    /// once.
    pub fn handle_until(&mut self, until: LeaseInstant, now: LeaseInstant) -> Action {
        if now >= self.deadline {
            return Action::Kill(Verdict::LeaseExpired);
        }
        self.deadline = until;
        self.tick(now)
    }

    /// One line from stdin. Garbage is an error and changes nothing; the caller logs it.
    pub fn handle_line(&mut self, line: &str, now: LeaseInstant) -> Result<Action, GuardError> {
        Ok(match GuardCommand::parse(line)? {
            GuardCommand::Until(until) => self.handle_until(until, now),
            GuardCommand::Stop => Action::Stop,
        })
    }

    /// When a planned stop that starts at `now` must SIGKILL: after the grace, or at the lease
    /// deadline if that comes first — the deadline always wins.
    pub fn stop_kill_at(&self, grace: Duration, now: LeaseInstant) -> LeaseInstant {
        (now + grace).min(self.deadline)
    }

    /// The agent's end of the pipe closed: it died. Kill at once; if the lease had already run
    /// out that is the truer reason.
    pub fn handle_eof(&mut self, now: LeaseInstant) -> Action {
        if now >= self.deadline {
            Action::Kill(Verdict::LeaseExpired)
        } else {
            Action::Kill(Verdict::AgentGone)
        }
    }

    /// Time passed without input.
    pub fn tick(&self, now: LeaseInstant) -> Action {
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
    use crate::clock::boottime;
    let grace = Duration::from_millis(args.grace_ms);
    let mut watchdog = Watchdog::new(LeaseInstant::from_millis(args.until_ms));

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
        "started workload pid {pid} until_ms={} (boot clock, now {}) grace_ms={}",
        args.until_ms,
        boottime().as_millis(),
        args.grace_ms
    ));

    loop {
        let now = boottime();
        let action = match watchdog.tick(now) {
            Action::Wait => {
                let wait = watchdog.deadline().saturating_duration_since(now);
                match rx.recv_timeout(wait.min(MAX_WAIT)) {
                    Ok(Event::Line(line)) => match watchdog.handle_line(&line, boottime()) {
                        Ok(action) => action,
                        Err(e) => {
                            log(&format!("ignored: {e}"));
                            Action::Wait
                        }
                    },
                    Ok(Event::Eof) | Err(mpsc::RecvTimeoutError::Disconnected) => {
                        watchdog.handle_eof(boottime())
                    }
                    Ok(Event::Exited(status)) => {
                        let code = mirrored_code(status);
                        log(&format!(
                            "workload pid {pid} exited by itself ({status}), code {code}"
                        ));
                        return finish(Verdict::WorkloadExited { code });
                    }
                    Err(mpsc::RecvTimeoutError::Timeout) => watchdog.tick(boottime()),
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
                let kill_at = watchdog.stop_kill_at(grace, boottime());
                if let Some(status) = exit_before(&rx, kill_at) {
                    log(&format!("workload pid {pid} stopped ({status})"));
                } else {
                    signal_group(pid, Signal::SIGKILL);
                    let why = if kill_at < watchdog.deadline() {
                        "grace ran out"
                    } else {
                        "lease deadline reached during the grace"
                    };
                    log(&format!("{why}, killed workload pid {pid}"));
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

/// Waits for the workload's exit event until `until` on the boot clock, ignoring stdin meanwhile.
fn exit_before(rx: &mpsc::Receiver<Event>, until: LeaseInstant) -> Option<ExitStatus> {
    loop {
        let now = crate::clock::boottime();
        if now >= until {
            return None;
        }
        match rx.recv_timeout(until.saturating_duration_since(now).min(MAX_WAIT)) {
            Ok(Event::Exited(status)) => return Some(status),
            Ok(_) | Err(mpsc::RecvTimeoutError::Timeout) => continue,
            Err(mpsc::RecvTimeoutError::Disconnected) => return None,
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
    const MS: Duration = Duration::from_millis(1);

    fn t0() -> LeaseInstant {
        LeaseInstant::from_millis(50_000)
    }

    #[test]
    fn lease_expires_at_the_initial_deadline_without_feeds() {
        let w = Watchdog::new(t0() + LEASE);
        assert_eq!(w.deadline(), t0() + LEASE);
        assert_eq!(w.tick(t0() + 999 * MS), Action::Wait);
        assert_eq!(w.tick(t0() + LEASE), Action::Kill(Verdict::LeaseExpired));
    }

    #[test]
    fn an_until_line_sets_the_absolute_deadline_whenever_it_arrives() {
        let mut w = Watchdog::new(t0() + LEASE);
        let until = t0() + 1800 * MS;
        // Read late (the line sat in the pipe): the deadline is still the one the agent sent.
        assert_eq!(w.handle_until(until, t0() + 800 * MS), Action::Wait);
        assert_eq!(w.deadline(), until);
        assert_eq!(w.tick(until - MS), Action::Wait);
        assert_eq!(w.tick(until), Action::Kill(Verdict::LeaseExpired));
    }

    #[test]
    fn an_until_line_may_shorten_the_deadline() {
        let mut w = Watchdog::new(t0() + 10 * LEASE);
        assert_eq!(
            w.handle_until(t0() + 150 * MS, t0() + 100 * MS),
            Action::Wait
        );
        assert_eq!(w.deadline(), t0() + 150 * MS);
    }

    #[test]
    fn a_deadline_already_past_kills_at_once() {
        let mut w = Watchdog::new(t0() + LEASE);
        assert_eq!(
            w.handle_until(t0(), t0()),
            Action::Kill(Verdict::LeaseExpired)
        );
    }

    #[test]
    fn a_late_feed_does_not_revive_an_expired_lease() {
        let mut w = Watchdog::new(t0() + LEASE);
        assert_eq!(
            w.handle_until(t0() + 3 * LEASE, t0() + LEASE + MS),
            Action::Kill(Verdict::LeaseExpired)
        );
    }

    #[test]
    fn after_a_suspend_longer_than_the_time_left_the_guard_kills_on_resume() {
        let w = Watchdog::new(t0() + LEASE);
        assert_eq!(w.tick(t0() + 400 * MS), Action::Wait);
        // Suspended with 600 ms left; the boot clock counted 30 s asleep.
        assert_eq!(
            w.tick(t0() + 30 * LEASE),
            Action::Kill(Verdict::LeaseExpired)
        );
    }

    #[test]
    fn a_planned_stop_kills_at_the_lease_deadline_even_within_its_grace() {
        let w = Watchdog::new(t0() + LEASE);
        let grace = Duration::from_secs(5);
        assert_eq!(w.stop_kill_at(grace, t0() + 200 * MS), t0() + LEASE);
        // With the deadline far away the grace decides.
        let far = Watchdog::new(t0() + 100 * LEASE);
        assert_eq!(far.stop_kill_at(grace, t0()), t0() + grace);
    }

    #[test]
    fn eof_before_the_deadline_means_the_agent_is_gone() {
        let mut w = Watchdog::new(t0() + LEASE);
        assert_eq!(
            w.handle_eof(t0() + 10 * MS),
            Action::Kill(Verdict::AgentGone)
        );
    }

    #[test]
    fn eof_after_the_deadline_reports_the_expired_lease() {
        let mut w = Watchdog::new(t0() + LEASE);
        assert_eq!(
            w.handle_eof(t0() + LEASE),
            Action::Kill(Verdict::LeaseExpired)
        );
    }

    #[test]
    fn stop_line_asks_for_a_planned_stop() {
        let mut w = Watchdog::new(t0() + LEASE);
        assert_eq!(w.handle_line("stop", t0()).ok(), Some(Action::Stop));
    }

    #[test]
    fn garbage_on_stdin_is_an_error_and_leaves_the_deadline_alone() {
        let mut w = Watchdog::new(t0() + LEASE);
        for line in [
            "until",
            "until -3",
            "until 1 2",
            "until abc",
            "feed 1000",
            "stopp",
            "",
            "stop now",
        ] {
            assert!(w.handle_line(line, t0()).is_err(), "{line:?} accepted");
        }
        assert!(matches!(
            w.handle_line("until x", t0()),
            Err(GuardError::BadUntil(l)) if l == "until x"
        ));
        assert_eq!(w.deadline(), t0() + LEASE);
    }

    #[test]
    fn commands_round_trip_through_their_line_form() {
        for cmd in [
            GuardCommand::Until(LeaseInstant::from_millis(123_456)),
            GuardCommand::Stop,
        ] {
            let line = cmd.to_line();
            assert_eq!(GuardCommand::parse(line.trim_end()).ok(), Some(cmd));
        }
        // Sub-millisecond deadlines are sent rounded down, never later.
        let line = GuardCommand::Until(LeaseInstant::from_nanos(1_999_999)).to_line();
        assert_eq!(line, "until 1\n");
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
    fn command_line_needs_a_deadline_and_a_command_after_the_separator() {
        use clap::Parser;
        let ok = GuardArgs::try_parse_from([
            "fabric-guard",
            "--until-ms",
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
                until_ms: 1500,
                grace_ms: 2000,
                command: vec!["demo".into(), "--listen".into(), "x".into()],
            })
        );
        assert!(GuardArgs::try_parse_from(["fabric-guard", "--until-ms", "1", "--"]).is_err());
        assert!(GuardArgs::try_parse_from(["fabric-guard", "--", "demo"]).is_err());
    }
}
