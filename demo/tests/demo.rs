//! The demo service end to end: in-process over a real socket, and as the built binary.

use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{Context as _, bail};
use demo::{DemoArgs, Whoami};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;

/// `GET path` over HTTP/1.1 with `Connection: close`; returns status code and body.
async fn get(addr: SocketAddr, path: &str) -> anyhow::Result<(u16, String)> {
    let mut stream = TcpStream::connect(addr).await?;
    let req = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    stream.write_all(req.as_bytes()).await?;
    let mut raw = String::new();
    stream.read_to_string(&mut raw).await?;
    let (head, body) = raw.split_once("\r\n\r\n").context("no header end")?;
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .context("no status")?;
    Ok((status, body.to_owned()))
}

#[tokio::test]
async fn whoami_reports_the_identity_it_was_configured_with() -> anyhow::Result<()> {
    use clap::Parser;
    let args = DemoArgs::try_parse_from([
        "fabric-demo",
        "--service",
        "web",
        "--site",
        "s1",
        "--host",
        "3",
        "--epoch",
        "2",
        "--listen",
        "127.0.0.1:0",
    ])?;
    let listeners = demo::bind(&args.listen_addrs()?)?;
    let addr = listeners.first().context("one listener")?.local_addr()?;
    let shutdown = CancellationToken::new();
    let server = tokio::spawn(demo::serve(
        listeners,
        args.whoami(42),
        demo::records::Records::default(),
        shutdown.clone(),
    ));

    let (status, body) = get(addr, "/whoami").await?;
    assert_eq!(status, 200);
    let who: Whoami = serde_json::from_str(&body)?;
    assert_eq!(
        (who.service.as_str(), who.site.as_str(), who.host, who.epoch),
        ("web", "s1", 3, 2)
    );
    assert_eq!(who.pid, std::process::id());
    assert_eq!(who.started_ms, 42);
    assert_eq!(get(addr, "/healthz").await?, (200, "ok".to_owned()));

    shutdown.cancel();
    tokio::time::timeout(Duration::from_secs(5), server).await???;
    assert!(TcpStream::connect(addr).await.is_err(), "still accepting");
    Ok(())
}

/// Kills the child by pid if the test fails before it exits.
struct Reap(u32);

impl Drop for Reap {
    fn drop(&mut self) {
        if let Ok(pid) = i32::try_from(self.0) {
            let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
        }
    }
}

#[tokio::test]
async fn the_binary_reads_fabric_env_and_logs_start_and_stop_with_timestamps() -> anyhow::Result<()>
{
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let child = Command::new(env!("CARGO_BIN_EXE_fabric-demo"))
        .env("FABRIC_SERVICE", "web")
        .env("FABRIC_SITE", "s2")
        .env("FABRIC_HOST", "7")
        .env("FABRIC_EPOCH", "9")
        .env("FABRIC_PORT", port.to_string())
        .env("FABRIC_ADDRESSES", "127.0.0.1")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()?;
    let _reap = Reap(child.id());
    let addr: SocketAddr = ([127, 0, 0, 1], port).into();
    let mut who = None;
    for _ in 0..100 {
        if let Ok((200, body)) = get(addr, "/whoami").await {
            who = Some(serde_json::from_str::<Whoami>(&body)?);
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let who = who.context("demo never answered")?;
    assert_eq!((who.site.as_str(), who.host, who.epoch), ("s2", 7, 9));
    assert_eq!(who.pid, child.id());

    kill(Pid::from_raw(i32::try_from(child.id())?), Signal::SIGTERM)?;
    let out = tokio::task::spawn_blocking(move || child.wait_with_output()).await??;
    assert!(out.status.success(), "exit status {}", out.status);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let started = stdout
        .lines()
        .find(|l| l.starts_with("fabric-demo started service=web site=s2 host=7 epoch=9"));
    let stopping = stdout
        .lines()
        .find(|l| l.starts_with("fabric-demo stopping service=web site=s2 host=7 epoch=9"));
    let (Some(started), Some(stopping)) = (started, stopping) else {
        bail!("missing start/stop lines in {stdout:?}");
    };
    assert!(
        started.contains(&format!("listen=127.0.0.1:{port}")),
        "{started}"
    );
    assert!(at_ms(started)? <= at_ms(stopping)?);
    Ok(())
}

fn at_ms(line: &str) -> anyhow::Result<u64> {
    line.split_whitespace()
        .find_map(|w| w.strip_prefix("at_ms="))
        .context("no at_ms")?
        .parse()
        .context("at_ms not a number")
}
