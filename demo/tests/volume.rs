//! The demo keeps its records on a block volume over NBD: in-process against this repo's NBD
//! server, and as the built binary against qemu-nbd.

use std::net::SocketAddr;
use std::path::Path;
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, bail};
use clap::Parser;
use demo::DemoArgs;
use demo::record_log::{LOG_START, SLOT, decode_slot};
use demo::records::RecordList;
use storage::device::{DeviceError, DeviceResult};
use storage::nbd::{Limits, StaticExports};
use storage::{BlockDevice, FileDisk};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

const MIB: u64 = 1 << 20;

/// One HTTP/1.1 request with `Connection: close`; returns status and body.
async fn http(addr: SocketAddr, method: &str, path: &str) -> anyhow::Result<(u16, String)> {
    let mut stream = TcpStream::connect(addr).await?;
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    );
    stream.write_all(req.as_bytes()).await?;
    let mut raw = String::new();
    tokio::time::timeout(Duration::from_secs(30), stream.read_to_string(&mut raw)).await??;
    let (head, body) = raw.split_once("\r\n\r\n").context("no header end")?;
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .context("no status")?;
    Ok((status, body.to_owned()))
}

async fn append(addr: SocketAddr, seq: u64) -> anyhow::Result<(u16, String)> {
    http(addr, "POST", &format!("/write?seq={seq}")).await
}

async fn records(addr: SocketAddr) -> anyhow::Result<Vec<u64>> {
    let (status, body) = http(addr, "GET", "/records").await?;
    if status != 200 {
        bail!("GET /records: {status} {body}");
    }
    Ok(serde_json::from_str::<RecordList>(&body)?.seqs)
}

/// The sequence numbers in the volume file itself, read without NBD.
fn on_disk(path: &Path) -> anyhow::Result<Vec<u64>> {
    let bytes = std::fs::read(path)?;
    let slots = bytes.get(LOG_START as usize..).context("short volume")?;
    Ok(slots
        .chunks_exact(SLOT)
        .enumerate()
        .map_while(|(i, s)| decode_slot(i as u64, s))
        .collect())
}

struct Nbd {
    shutdown: CancellationToken,
    task: JoinHandle<()>,
}

async fn nbd_server(addr: SocketAddr, volume: &Path) -> anyhow::Result<Nbd> {
    let disk = FileDisk::open_or_create(volume, MIB)?;
    serve_device(addr, Arc::new(disk)).await
}

async fn serve_device(addr: SocketAddr, device: Arc<dyn BlockDevice>) -> anyhow::Result<Nbd> {
    let exports = StaticExports::new().with("web", device);
    let listener = TcpListener::bind(addr).await?;
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(storage::nbd::serve(
        listener,
        Arc::new(exports),
        Limits::default(),
        shutdown.clone(),
    ));
    Ok(Nbd { shutdown, task })
}

impl Nbd {
    async fn stop(self) -> anyhow::Result<()> {
        self.shutdown.cancel();
        tokio::time::timeout(Duration::from_secs(10), self.task).await??;
        Ok(())
    }
}

struct Demo {
    addr: SocketAddr,
    shutdown: CancellationToken,
    task: JoinHandle<Result<(), demo::DemoError>>,
}

async fn demo_on(volume_uri: &str) -> anyhow::Result<Demo> {
    let args = DemoArgs::try_parse_from([
        "fabric-demo",
        "--service",
        "web",
        "--listen",
        "127.0.0.1:0",
        "--volume-root",
        "/nonexistent/the/volume/wins",
        "--volume-nbd",
        volume_uri,
    ])?;
    let records = args.records()?;
    let listeners = demo::bind(&args.listen_addrs()?)?;
    let addr = listeners.first().context("a listener")?.local_addr()?;
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(demo::serve(
        listeners,
        args.whoami(0),
        records,
        shutdown.clone(),
    ));
    Ok(Demo {
        addr,
        shutdown,
        task,
    })
}

impl Demo {
    async fn stop(self) -> anyhow::Result<()> {
        self.shutdown.cancel();
        tokio::time::timeout(Duration::from_secs(10), self.task).await???;
        Ok(())
    }
}

#[tokio::test]
async fn records_survive_a_restart_and_the_demo_reconnects_when_the_server_moves()
-> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let volume = dir.path().join("web.img");
    let nbd_addr: SocketAddr = {
        let l = std::net::TcpListener::bind("127.0.0.1:0")?;
        l.local_addr()?
    };
    let nbd = nbd_server(nbd_addr, &volume).await?;
    let uri = format!("nbd://{nbd_addr}/web");

    let demo = demo_on(&uri).await?;
    assert_eq!(records(demo.addr).await?, Vec::<u64>::new());
    for seq in [5, 3, 8] {
        assert_eq!(append(demo.addr, seq).await?, (200, seq.to_string()));
    }
    assert_eq!(records(demo.addr).await?, [5, 3, 8]);
    assert_eq!(
        on_disk(&volume)?,
        [5, 3, 8],
        "acknowledged records are on the volume"
    );
    demo.stop().await?;

    // A new instance finds the end of the log and appends after it.
    let demo = demo_on(&uri).await?;
    assert_eq!(append(demo.addr, 9).await?.0, 200);
    assert_eq!(records(demo.addr).await?, [5, 3, 8, 9]);

    // The server goes away: the append is refused with the reason, not acknowledged.
    nbd.stop().await?;
    let (status, body) = append(demo.addr, 10).await?;
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("seq 10 not confirmed durable"), "{body}");
    assert!(body.contains(&uri), "{body}");

    // It comes back (as if on another host of the site): the demo reconnects by itself.
    let nbd = nbd_server(nbd_addr, &volume).await?;
    assert_eq!(append(demo.addr, 11).await?, (200, "11".to_owned()));
    assert_eq!(records(demo.addr).await?, [5, 3, 8, 9, 11]);
    // And again between two requests, with the old connection now dead.
    nbd.stop().await?;
    let nbd = nbd_server(nbd_addr, &volume).await?;
    assert_eq!(append(demo.addr, 12).await?.0, 200);
    assert_eq!(on_disk(&volume)?, [5, 3, 8, 9, 11, 12]);
    demo.stop().await?;
    nbd.stop().await
}

fn free_addr() -> anyhow::Result<SocketAddr> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?)
}

#[tokio::test]
async fn after_a_move_to_a_copy_missing_the_tail_appends_follow_that_copys_end()
-> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let (a, b) = (dir.path().join("a.img"), dir.path().join("b.img"));
    let nbd_addr = free_addr()?;
    let nbd = nbd_server(nbd_addr, &a).await?;
    let demo = demo_on(&format!("nbd://{nbd_addr}/web")).await?;
    for seq in [1, 2] {
        assert_eq!(append(demo.addr, seq).await?.0, 200);
    }
    std::fs::copy(&a, &b)?;
    assert_eq!(append(demo.addr, 3).await?.0, 200);
    // The service moves to copy b, which never got record 3 (an async replica's lag).
    nbd.stop().await?;
    let nbd = nbd_server(nbd_addr, &b).await?;
    assert_eq!(append(demo.addr, 4).await?.0, 200);
    assert_eq!(records(demo.addr).await?, [1, 2, 4]);
    assert_eq!(
        on_disk(&b)?,
        [1, 2, 4],
        "record 4 must be reachable on the copy it went to"
    );
    demo.stop().await?;
    nbd.stop().await
}

/// A disk whose next write lands and then fails with ESHUTDOWN, as if the server went down
/// between writing and replying.
struct LoseNextReply {
    disk: FileDisk,
    armed: std::sync::atomic::AtomicBool,
}

#[async_trait::async_trait]
impl BlockDevice for LoseNextReply {
    fn size(&self) -> u64 {
        self.disk.size()
    }
    async fn read(&self, offset: u64, len: u32) -> DeviceResult<Vec<u8>> {
        self.disk.read(offset, len).await
    }
    async fn write(&self, offset: u64, data: Vec<u8>, fua: bool) -> DeviceResult<()> {
        self.disk.write(offset, data, fua).await?;
        if self.armed.swap(false, std::sync::atomic::Ordering::SeqCst) {
            return Err(DeviceError::ShuttingDown);
        }
        Ok(())
    }
    async fn flush(&self) -> DeviceResult<()> {
        self.disk.flush().await
    }
}

#[tokio::test]
async fn a_write_that_landed_but_lost_its_reply_is_confirmed_once_not_written_twice()
-> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let volume = dir.path().join("web.img");
    let device = Arc::new(LoseNextReply {
        disk: FileDisk::create(&volume, MIB)?,
        armed: false.into(),
    });
    let nbd_addr = free_addr()?;
    let nbd = serve_device(nbd_addr, device.clone()).await?;
    let demo = demo_on(&format!("nbd://{nbd_addr}/web")).await?;
    assert_eq!(append(demo.addr, 1).await?.0, 200);
    device
        .armed
        .store(true, std::sync::atomic::Ordering::SeqCst);
    assert_eq!(append(demo.addr, 2).await?, (200, "2".to_owned()));
    assert_eq!(append(demo.addr, 3).await?.0, 200);
    assert_eq!(records(demo.addr).await?, [1, 2, 3]);
    demo.stop().await?;
    nbd.stop().await
}

#[tokio::test]
async fn a_full_volume_refuses_appends_by_name() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let volume = dir.path().join("tiny.img");
    // Room for exactly two records after the reserved block.
    FileDisk::create(&volume, LOG_START + 2 * SLOT as u64)?;
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let exports = StaticExports::new().with("web", Arc::new(FileDisk::open(&volume)?));
    let shutdown = CancellationToken::new();
    let server = tokio::spawn(storage::nbd::serve(
        listener,
        Arc::new(exports),
        Limits::default(),
        shutdown.clone(),
    ));
    let demo = demo_on(&format!("nbd://{addr}/web")).await?;
    assert_eq!(append(demo.addr, 1).await?.0, 200);
    assert_eq!(append(demo.addr, 2).await?.0, 200);
    let (status, body) = append(demo.addr, 3).await?;
    assert_eq!(status, 503);
    assert!(body.contains("full (2 records)"), "{body}");
    demo.stop().await?;
    shutdown.cancel();
    server.await?;
    Ok(())
}

/// Kills a child by pid when dropped, if it is still running.
struct Reap(tokio::process::Child);

impl Drop for Reap {
    fn drop(&mut self) {
        let _ = self.0.start_kill();
    }
}

async fn wait_for(addr: SocketAddr) -> anyhow::Result<()> {
    for _ in 0..100 {
        if TcpStream::connect(addr).await.is_ok() {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    bail!("nothing listening on {addr} after 5 s")
}

#[tokio::test]
async fn the_binary_keeps_records_on_a_qemu_nbd_volume_across_restarts() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let volume = dir.path().join("web.img");
    FileDisk::create(&volume, MIB)?;
    let port = |()| -> anyhow::Result<u16> {
        Ok(std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port())
    };
    let nbd_port = port(())?;
    let qemu_nbd = tokio::process::Command::new("qemu-nbd")
        .args([
            "-f",
            "raw",
            "--persistent",
            "--shared=4",
            "-b",
            "127.0.0.1",
            "-p",
        ])
        .arg(nbd_port.to_string())
        .arg(&volume)
        .stdout(Stdio::null())
        .kill_on_drop(true)
        .spawn();
    let _qemu_nbd = match qemu_nbd {
        Ok(child) => Reap(child),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            bail!("qemu-nbd is not installed: apt-get install qemu-utils (scripts/setup.sh does)")
        }
        Err(e) => return Err(e.into()),
    };
    wait_for(([127, 0, 0, 1], nbd_port).into()).await?;
    let uri = format!("nbd://127.0.0.1:{nbd_port}/");

    let mut seen = Vec::new();
    for round in 0..2u64 {
        let http_port = port(())?;
        let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_fabric-demo"))
            .env("FABRIC_PORT", http_port.to_string())
            .env("FABRIC_VOLUME_NBD", &uri)
            .stdout(Stdio::null())
            .kill_on_drop(true)
            .spawn()?;
        let addr: SocketAddr = ([127, 0, 0, 1], http_port).into();
        wait_for(addr).await?;
        assert_eq!(
            records(addr).await?,
            seen,
            "round {round}: what the last instance acked"
        );
        for seq in [round * 10 + 1, round * 10 + 2] {
            assert_eq!(append(addr, seq).await?.0, 200);
            seen.push(seq);
        }
        child.start_kill()?;
        child.wait().await?;
    }
    assert_eq!(on_disk(&volume)?, seen);
    Ok(())
}
