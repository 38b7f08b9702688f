//! The process driver end to end: the real `ProcessDriver`, the real `fabric-guard` and the real
//! `fabric-demo` on a free 127.0.0.1 port.
//!
//! `fabric-guard` belongs to this package, so cargo builds it for these tests; `fabric-demo`
//! belongs to the `demo` package and must be built first: run `cargo build --workspace --bins`
//! before `cargo test`/`cargo nextest run` (CI does). A missing binary fails with that hint.
//!
//! Every process a test learns about is SIGKILLed by pid when the test ends, also on failure.

use siteagent::clock::unix_ms;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use serde_json::Value;
use siteagent::clock::lease_now;
use siteagent::workload::{
    Driver, ProcessDriver, WorkloadSpec, WorkloadStatus, conformance, find_demo, reason,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const GUARD: &str = env!("CARGO_BIN_EXE_fabric-guard");

fn demo_bin() -> PathBuf {
    match find_demo() {
        Ok(path) => path,
        Err(e) => panic!("{e}"),
    }
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// A temp work root, a driver on it, and every pid to kill when the test ends.
struct Fixture {
    driver: Option<ProcessDriver>,
    pids: Vec<u32>,
    port: u16,
    dir: tempfile::TempDir,
}

impl Fixture {
    fn new() -> anyhow::Result<Self> {
        let dir = tempfile::tempdir()?;
        let driver = ProcessDriver::new(dir.path().join("work"), PathBuf::from(GUARD))
            .with_grace(Duration::from_millis(1500));
        Ok(Fixture {
            driver: Some(driver),
            pids: Vec::new(),
            port: free_port()?,
            dir,
        })
    }

    fn driver(&self) -> &ProcessDriver {
        match &self.driver {
            Some(d) => d,
            None => panic!("driver already dropped"),
        }
    }

    fn spec(&self, service: &str, epoch: u64) -> WorkloadSpec {
        let mut spec = conformance::template(
            service,
            &demo_bin().to_string_lossy(),
            Vec::new(),
            self.port,
        );
        spec.epoch = epoch;
        spec.site = "s9".to_owned();
        spec.host = 4;
        spec
    }

    fn addr(&self) -> SocketAddr {
        ([127, 0, 0, 1], self.port).into()
    }

    /// Starts `spec`, waits until it answers, and returns (workload pid, guard pid).
    async fn start(&mut self, spec: WorkloadSpec, lease: Duration) -> anyhow::Result<(u32, u32)> {
        let service = spec.service.clone();
        self.driver().start(spec, lease_now() + lease)?;
        let guard = self.driver().guard_pid(&service).context("no guard pid")?;
        self.pids.push(guard);
        let who = wait_whoami(self.addr(), Duration::from_secs(10)).await?;
        let pid = who["pid"]
            .as_u64()
            .and_then(|p| u32::try_from(p).ok())
            .context("whoami without pid")?;
        self.pids.push(pid);
        Ok((pid, guard))
    }

    fn status(&self, service: &str) -> Option<WorkloadStatus> {
        self.driver()
            .list()
            .into_iter()
            .find(|(name, _)| name == service)
            .map(|(_, s)| s)
    }

    async fn wait_exited(&self, service: &str, within: Duration) -> anyhow::Result<WorkloadStatus> {
        let until = Instant::now() + within;
        loop {
            match self.status(service) {
                Some(s @ WorkloadStatus::Exited { .. }) => return Ok(s),
                other if Instant::now() >= until => bail!("{service} not exited: {other:?}"),
                _ => tokio::time::sleep(Duration::from_millis(20)).await,
            }
        }
    }

    fn log(&self, service: &str) -> anyhow::Result<String> {
        let path = self
            .dir
            .path()
            .join("work")
            .join(service)
            .join("workload.log");
        std::fs::read_to_string(&path).with_context(|| format!("read {}", path.display()))
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        self.driver.take();
        for &pid in &self.pids {
            if alive(pid)
                && let Ok(pid) = i32::try_from(pid)
            {
                let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
            }
        }
    }
}

/// Alive and not a zombie (our container's pid 1 may never reap orphans).
fn alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // The state follows the parenthesised command name.
        Ok(stat) => stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .is_some_and(|state| state != "Z" && state != "X"),
        Err(_) => false,
    }
}

async fn gone_within(pid: u32, within: Duration) -> bool {
    let until = Instant::now() + within;
    while alive(pid) {
        if Instant::now() >= until {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    true
}

async fn whoami(addr: SocketAddr) -> anyhow::Result<Value> {
    let mut stream = TcpStream::connect(addr).await?;
    let req = format!("GET /whoami HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    stream.write_all(req.as_bytes()).await?;
    let mut raw = String::new();
    stream.read_to_string(&mut raw).await?;
    let (head, body) = raw.split_once("\r\n\r\n").context("no end of headers")?;
    if !head.starts_with("HTTP/1.1 200") {
        bail!("unexpected response: {head}");
    }
    Ok(serde_json::from_str(body)?)
}

async fn wait_whoami(addr: SocketAddr, within: Duration) -> anyhow::Result<Value> {
    let until = Instant::now() + within;
    loop {
        match whoami(addr).await {
            Ok(v) => return Ok(v),
            Err(e) if Instant::now() >= until => bail!("no answer from {addr}: {e}"),
            Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    }
}

/// Waits until nothing accepts on `addr`.
async fn refused_within(addr: SocketAddr, within: Duration) -> bool {
    let until = Instant::now() + within;
    while TcpStream::connect(addr).await.is_ok() {
        if Instant::now() >= until {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    true
}

fn at_ms(line: &str) -> Option<u64> {
    line.split_whitespace()
        .find_map(|w| w.strip_prefix("at_ms="))
        .and_then(|n| n.parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn process_driver_passes_the_conformance_suite() -> anyhow::Result<()> {
    let fx = Fixture::new()?;
    let template = fx.spec("conf", 2);
    let result = conformance::run_all(fx.driver(), template, conformance::Timing::real()).await;
    if let Err(e) = result {
        bail!("{e}\nlog:\n{}", fx.log("conf").unwrap_or_default());
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fed_demo_answers_whoami_past_its_first_lease_and_is_killed_when_feeding_stops()
-> anyhow::Result<()> {
    let mut fx = Fixture::new()?;
    let lease = Duration::from_millis(1500);
    let started_ms = unix_ms();
    let (pid, _guard) = fx.start(fx.spec("web", 5), lease).await?;

    let who = whoami(fx.addr()).await?;
    assert_eq!(who["service"], "web");
    assert_eq!(who["site"], "s9");
    assert_eq!(who["host"], 4);
    assert_eq!(who["epoch"], 5);
    assert!(matches!(
        fx.status("web"),
        Some(WorkloadStatus::Running { pid: Some(p), epoch: 5, .. }) if p == pid
    ));

    // Twice the first lease, fed every lease/4: same process all along.
    let fed_until = Instant::now() + lease * 2;
    while Instant::now() < fed_until {
        tokio::time::sleep(lease / 4).await;
        fx.driver().feed("web", lease_now() + lease)?;
    }
    let last_feed = Instant::now();
    assert_eq!(whoami(fx.addr()).await?["pid"], pid);

    assert!(
        refused_within(fx.addr(), lease + Duration::from_secs(3)).await,
        "demo still serving {:?} after the last feed",
        last_feed.elapsed()
    );
    assert!(
        last_feed.elapsed() >= lease,
        "killed before its lease ran out"
    );
    let status = fx.wait_exited("web", Duration::from_secs(3)).await?;
    assert!(
        matches!(&status, WorkloadStatus::Exited { reason, code: Some(75), epoch: 5, .. } if reason == reason::LEASE_EXPIRED),
        "{status:?}"
    );
    assert!(gone_within(pid, Duration::from_secs(1)).await);

    let log = fx.log("web")?;
    let line = log
        .lines()
        .find(|l| {
            l.starts_with(&format!(
                "fabric-guard: lease expired, killed workload pid {pid}"
            ))
        })
        .with_context(|| format!("no expiry line in:\n{log}"))?;
    let killed_ms = at_ms(line).context("expiry line without at_ms")?;
    assert!(
        u128::from(killed_ms) >= u128::from(started_ms) + lease.as_millis() * 2,
        "{line}"
    );
    assert!(killed_ms <= unix_ms(), "{line}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_planned_stop_lets_the_demo_log_its_stopping_line() -> anyhow::Result<()> {
    let mut fx = Fixture::new()?;
    let (pid, guard) = fx.start(fx.spec("web", 2), Duration::from_secs(30)).await?;
    fx.driver().stop("web").await?;
    let stopped_ms = unix_ms();

    // stop() returns only once the guard is gone, and the guard only after the workload.
    assert!(!alive(pid) && !alive(guard));
    assert!(TcpStream::connect(fx.addr()).await.is_err());
    let status = fx.status("web");
    assert!(
        matches!(&status, Some(WorkloadStatus::Exited { reason, code: Some(0), .. }) if reason == reason::STOPPED),
        "{status:?}"
    );
    let log = fx.log("web")?;
    let stopping = log
        .lines()
        .find(|l| l.starts_with("fabric-demo stopping service=web site=s9 host=4 epoch=2"))
        .with_context(|| format!("no stopping line in:\n{log}"))?;
    assert!(
        at_ms(stopping).is_some_and(|ms| ms <= stopped_ms),
        "{stopping}"
    );
    assert!(log.contains("stop requested, sent SIGTERM"), "{log}");
    // SIGTERM sufficed: the demo exits 0 within the grace.
    assert!(!log.contains("grace ran out"), "{log}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_workload_killed_behind_the_guards_back_is_reported_with_its_code() -> anyhow::Result<()>
{
    let mut fx = Fixture::new()?;
    let (pid, guard) = fx.start(fx.spec("web", 2), Duration::from_secs(30)).await?;
    kill(Pid::from_raw(i32::try_from(pid)?), Signal::SIGKILL)?;
    let status = fx.wait_exited("web", Duration::from_secs(5)).await?;
    assert!(
        matches!(&status, WorkloadStatus::Exited { reason, code: Some(137), .. } if *reason == reason::workload_exited(137)),
        "{status:?}"
    );
    assert!(gone_within(guard, Duration::from_secs(1)).await);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_the_guard_with_sigkill_takes_the_workload_down() -> anyhow::Result<()> {
    let mut fx = Fixture::new()?;
    let (pid, guard) = fx.start(fx.spec("web", 2), Duration::from_secs(30)).await?;
    kill(Pid::from_raw(i32::try_from(guard)?), Signal::SIGKILL)?;
    assert!(
        gone_within(pid, Duration::from_secs(3)).await,
        "workload {pid} outlived its guard"
    );
    assert!(refused_within(fx.addr(), Duration::from_secs(1)).await);
    let status = fx.wait_exited("web", Duration::from_secs(3)).await?;
    assert_eq!(
        status.reason().map(str::to_owned),
        Some(reason::guard_killed(9))
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn closing_the_guards_stdin_kills_the_workload_at_once() -> anyhow::Result<()> {
    let mut fx = Fixture::new()?;
    let lease = Duration::from_secs(30);
    let (pid, guard) = fx.start(fx.spec("web", 2), lease).await?;
    let cut = Instant::now();
    fx.driver().sever_feed("web")?;
    assert!(gone_within(pid, Duration::from_secs(3)).await);
    assert!(cut.elapsed() < lease / 5, "waited for the lease instead");
    let status = fx.wait_exited("web", Duration::from_secs(3)).await?;
    assert!(
        matches!(&status, WorkloadStatus::Exited { reason, code: Some(76), .. } if reason == reason::AGENT_GONE),
        "{status:?}"
    );
    assert!(!alive(guard));
    let log = fx.log("web")?;
    let line = log
        .lines()
        .find(|l| l.contains("stdin closed (agent gone), killed workload"))
        .with_context(|| format!("no agent-gone line in:\n{log}"))?;
    assert!(at_ms(line).is_some(), "{line}");
    assert!(fx.driver().feed("web", lease_now() + lease).is_err());
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_the_driver_stops_its_workloads_gracefully() -> anyhow::Result<()> {
    let mut fx = Fixture::new()?;
    let (pid, guard) = fx.start(fx.spec("web", 2), Duration::from_secs(30)).await?;
    fx.driver.take();
    assert!(gone_within(pid, Duration::from_secs(5)).await);
    assert!(gone_within(guard, Duration::from_secs(5)).await);
    let log = fx.log("web")?;
    assert!(log.contains("stop requested, sent SIGTERM"), "{log}");
    assert!(log.contains("fabric-demo stopping service=web"), "{log}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_stops_every_workload_and_waits_for_them() -> anyhow::Result<()> {
    let mut fx = Fixture::new()?;
    let (a, _) = fx.start(fx.spec("web", 2), Duration::from_secs(30)).await?;
    let other_port = free_port()?;
    let mut spec = fx.spec("api", 3);
    spec.port = other_port;
    fx.driver()
        .start(spec, lease_now() + Duration::from_secs(30))?;
    let who = wait_whoami(([127, 0, 0, 1], other_port).into(), Duration::from_secs(10)).await?;
    let b = who["pid"]
        .as_u64()
        .and_then(|p| u32::try_from(p).ok())
        .context("pid")?;
    fx.pids.push(b);
    fx.pids.extend(fx.driver().guard_pid("api"));

    fx.driver().shutdown().await;
    assert!(!alive(a) && !alive(b));
    for (name, status) in fx.driver().list() {
        assert_eq!(status.reason(), Some(reason::STOPPED), "{name}");
    }
    Ok(())
}
