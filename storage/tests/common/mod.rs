//! An in-process NBD server on 127.0.0.1:0 exporting raw files from a tempdir: `vol` (writable)
//! `ro` (the same kind of file behind a read-only device) and `rec` (a disk that records what
//! reaches it).

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

/// What reached a device: (operation, offset, length, fua).
pub type Op = (&'static str, u64, u64, bool);

/// A disk that records every write, zeroing and flush that reaches it.
pub struct Recording {
    pub disk: FileDisk,
    pub ops: std::sync::Mutex<Vec<Op>>,
}

impl Recording {
    fn note(&self, op: Op) {
        if let Ok(mut ops) = self.ops.lock() {
            ops.push(op);
        }
    }

    pub fn ops(&self) -> Vec<Op> {
        self.ops.lock().map(|o| o.clone()).unwrap_or_default()
    }
}

#[async_trait::async_trait]
impl BlockDevice for Recording {
    fn size(&self) -> u64 {
        self.disk.size()
    }
    async fn read(&self, offset: u64, len: u32) -> DeviceResult<Vec<u8>> {
        self.disk.read(offset, len).await
    }
    async fn write(&self, offset: u64, data: Vec<u8>, fua: bool) -> DeviceResult<()> {
        self.note(("write", offset, data.len() as u64, fua));
        self.disk.write(offset, data, fua).await
    }
    async fn write_zeroes(&self, offset: u64, len: u32, fua: bool) -> DeviceResult<()> {
        self.note(("zero", offset, u64::from(len), fua));
        self.disk.write_zeroes(offset, len, fua).await
    }
    async fn flush(&self) -> DeviceResult<()> {
        self.note(("flush", 0, 0, false));
        self.disk.flush().await
    }
}

pub struct Server {
    pub addr: SocketAddr,
    /// The device behind export `rec`.
    pub rec: Arc<Recording>,
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
        let rec = Arc::new(Recording {
            disk: FileDisk::create(&dir.path().join("rec.img"), size)?,
            ops: Default::default(),
        });
        let exports = StaticExports::new()
            .with("vol", Arc::new(disk))
            .with("ro", Arc::new(ReadOnly(ro)))
            .with("rec", rec.clone());
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
            rec,
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
