//! An in-process NBD server on 127.0.0.1:0 exporting raw files from a tempdir: `vol` (writable)
//! and `ro` (the same kind of file behind a read-only device).

#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use storage::device::{DeviceError, DeviceResult};
use storage::nbd::{Limits, StaticExports};
use storage::{BlockDevice, FileDisk};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// A disk that refuses every write, like a replica copy.
pub struct ReadOnly(pub FileDisk);

#[async_trait::async_trait]
impl BlockDevice for ReadOnly {
    fn size(&self) -> u64 {
        self.0.size()
    }
    fn read_only(&self) -> bool {
        true
    }
    async fn read(&self, offset: u64, len: u32) -> DeviceResult<Vec<u8>> {
        self.0.read(offset, len).await
    }
    async fn write(&self, _: u64, _: Vec<u8>, _: bool) -> DeviceResult<()> {
        Err(DeviceError::ReadOnly("test replica".into()))
    }
    async fn flush(&self) -> DeviceResult<()> {
        Ok(())
    }
}

pub struct Server {
    pub addr: SocketAddr,
    /// The file behind export `vol`.
    pub vol: PathBuf,
    pub dir: tempfile::TempDir,
    pub shutdown: CancellationToken,
    pub task: JoinHandle<()>,
}

impl Server {
    pub async fn start(size: u64, limits: Limits) -> anyhow::Result<Self> {
        let dir = tempfile::tempdir()?;
        let vol = dir.path().join("vol.img");
        let disk = FileDisk::create(&vol, size)?;
        let ro = FileDisk::create(&dir.path().join("ro.img"), size)?;
        let exports = StaticExports::new()
            .with("vol", Arc::new(disk))
            .with("ro", Arc::new(ReadOnly(ro)));
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(storage::nbd::serve(
            listener,
            Arc::new(exports),
            limits,
            shutdown.clone(),
        ));
        Ok(Self {
            addr,
            vol,
            dir,
            shutdown,
            task,
        })
    }

    pub fn uri(&self, export: &str) -> String {
        format!("nbd://{}/{export}", self.addr)
    }

    pub async fn stop(self) -> anyhow::Result<()> {
        self.shutdown.cancel();
        tokio::time::timeout(std::time::Duration::from_secs(10), self.task).await??;
        Ok(())
    }
}

/// Deterministic pseudo-random bytes (xorshift), so failures reproduce.
pub fn pattern(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}
