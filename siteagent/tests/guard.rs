//! `fabric-guard` as a binary, with `sh` workloads: exit codes, the stdout verdict, and the
//! SIGTERM-then-SIGKILL escalation of a planned stop, cut short at the lease deadline; deadlines
//! are absolute on the boot clock (`--until-ms`, `until <ms>`).

use std::io::Write;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use siteagent::clock::boottime;

const GUARD: &str = env!("CARGO_BIN_EXE_fabric-guard");

/// Kills the guard by pid if a test fails while it runs (its workload follows by pdeathsig).
struct Reap(u32);

impl Drop for Reap {
    fn drop(&mut self) {
        if let Ok(pid) = i32::try_from(self.0) {
            let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
        }
    }
}

/// A guard whose lease ends `lease_ms` from now on the boot clock.
fn guard(lease_ms: u64, grace_ms: u64, script: &str) -> std::io::Result<Child> {
    let until = boottime() + Duration::from_millis(lease_ms);
    Command::new(GUARD)
        .args(["--until-ms", &until.as_millis().to_string()])
        .args(["--grace-ms", &grace_ms.to_string()])
        .args(["--", "sh", "-c", script])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
}

/// Waits for the guard with its stdin still open (closing it would read as the agent's death).
fn finish(mut child: Child) -> std::io::Result<(Output, String, String)> {
    let stdin = child.stdin.take();
    let out = child.wait_with_output()?;
    drop(stdin);
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    Ok((out, stdout, stderr))
}

/// Runs a workload that ignores SIGTERM, asks for a planned stop after 200 ms and returns the
/// guard's output and how long the stop took.
fn stop_a_workload_that_ignores_sigterm(
    lease_ms: u64,
    grace_ms: u64,
) -> anyhow::Result<(Output, String, String, Duration)> {
    // `trap "" TERM` is inherited by the sleeps, so nothing in the group obeys SIGTERM.
    let mut child = guard(
        lease_ms,
        grace_ms,
        "trap '' TERM; while :; do sleep 0.05; done",
    )?;
    let _reap = Reap(child.id());
    std::thread::sleep(Duration::from_millis(200));
    let asked = Instant::now();
    if let Some(stdin) = child.stdin.as_mut() {
        stdin.write_all(b"stop\n")?;
    }
    let (out, stdout, stderr) = finish(child)?;
    Ok((out, stdout, stderr, asked.elapsed()))
}

#[test]
fn stop_escalates_to_sigkill_when_the_workload_ignores_sigterm() -> anyhow::Result<()> {
    let (out, stdout, stderr, took) = stop_a_workload_that_ignores_sigterm(30_000, 300)?;
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert!(took >= Duration::from_millis(300), "did not wait the grace");
    assert!(stdout.lines().any(|l| l == "verdict stopped"), "{stdout}");
    assert!(
        stderr.contains("grace ran out, killed workload pid"),
        "{stderr}"
    );
    Ok(())
}

#[test]
fn a_planned_stop_kills_at_the_lease_deadline_before_its_grace_ends() -> anyhow::Result<()> {
    let (out, stdout, stderr, took) = stop_a_workload_that_ignores_sigterm(800, 30_000)?;
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert!(
        took < Duration::from_secs(10),
        "waited the 30 s grace: {took:?}"
    );
    assert!(stdout.lines().any(|l| l == "verdict stopped"), "{stdout}");
    assert!(
        stderr.contains("lease deadline reached during the grace, killed workload pid"),
        "{stderr}"
    );
    Ok(())
}

#[test]
fn an_until_line_moves_the_deadline_and_a_malformed_one_is_reported_and_ignored()
-> anyhow::Result<()> {
    let started = Instant::now();
    let mut child = guard(1000, 2000, "sleep 30")?;
    let _reap = Reap(child.id());
    let until = boottime() + Duration::from_millis(2500);
    if let Some(stdin) = child.stdin.as_mut() {
        stdin.write_all(b"until soon\n")?;
        stdin.write_all(format!("until {}\n", until.as_millis()).as_bytes())?;
    }
    let (out, _, stderr) = finish(child)?;
    let took = started.elapsed();
    assert_eq!(out.status.code(), Some(75), "{stderr}");
    assert!(took >= Duration::from_millis(2000), "{took:?}");
    assert!(
        stderr.contains("ignored: bad deadline line \"until soon\""),
        "{stderr}"
    );
    Ok(())
}

#[test]
fn a_workload_that_exits_by_itself_passes_its_code_through() -> anyhow::Result<()> {
    let child = guard(30_000, 2000, "exit 7")?;
    let _reap = Reap(child.id());
    let (out, stdout, _) = finish(child)?;
    assert_eq!(out.status.code(), Some(7));
    assert!(stdout.starts_with("started pid="), "{stdout}");
    assert!(
        stdout
            .lines()
            .any(|l| l == "verdict workload-exited code=7"),
        "{stdout}"
    );
    Ok(())
}

#[test]
fn an_unfed_guard_kills_its_workload_when_the_lease_ends_and_exits_75() -> anyhow::Result<()> {
    let started = Instant::now();
    let child = guard(300, 2000, "sleep 30")?;
    let _reap = Reap(child.id());
    let (out, stdout, stderr) = finish(child)?;
    let took = started.elapsed();
    assert_eq!(out.status.code(), Some(75), "{stderr}");
    assert!(took >= Duration::from_millis(300), "{took:?}");
    assert!(took < Duration::from_secs(5), "{took:?}");
    assert!(
        stdout.lines().any(|l| l == "verdict lease-expired"),
        "{stdout}"
    );
    let line = stderr
        .lines()
        .find(|l| l.starts_with("fabric-guard: lease expired, killed workload pid "))
        .unwrap_or_default();
    assert!(line.contains(" at_ms="), "{stderr}");
    Ok(())
}

#[test]
fn stdin_eof_kills_the_workload_at_once_and_exits_76() -> anyhow::Result<()> {
    let mut child = guard(30_000, 2000, "sleep 30")?;
    let _reap = Reap(child.id());
    std::thread::sleep(Duration::from_millis(100));
    let closed = Instant::now();
    drop(child.stdin.take());
    let (out, stdout, _) = finish(child)?;
    assert_eq!(out.status.code(), Some(76));
    assert!(closed.elapsed() < Duration::from_secs(3));
    assert!(
        stdout.lines().any(|l| l == "verdict agent-gone"),
        "{stdout}"
    );
    Ok(())
}

#[test]
fn a_command_line_without_a_workload_is_a_usage_error() -> anyhow::Result<()> {
    let out = Command::new(GUARD).args(["--until-ms", "10"]).output()?;
    assert_eq!(out.status.code(), Some(64));
    let out = Command::new(GUARD)
        .args(["--until-ms", "10", "--", "/nonexistent/workload"])
        .output()?;
    assert_eq!(out.status.code(), Some(71));
    assert!(String::from_utf8_lossy(&out.stdout).contains("verdict spawn-failed"));
    Ok(())
}
