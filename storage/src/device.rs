//! The block-device interface ([`BlockDevice`]) and a raw-file disk ([`FileDisk`]).
//!
//! Every volume copy is a raw file of exactly the volume's size. The NBD server serves any
//! `BlockDevice`; the replication shell wraps a `FileDisk` into a device whose writes are also
//! shipped to replicas.
//!
//! Invariant: a request that reaches outside `0..size` is refused with
//! [`DeviceError::OutOfRange`] before anything is read or written.

use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Why a block request failed; each maps to an NBD error number.
#[derive(Debug, thiserror::Error)]
pub enum DeviceError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("request at offset {offset} length {len} reaches beyond the volume's {size} bytes")]
    OutOfRange { offset: u64, len: u64, size: u64 },
    #[error("this copy is read-only: {0}")]
    ReadOnly(String),
    #[error("writes are fenced: {0}")]
    Fenced(String),
    #[error("shutting down")]
    ShuttingDown,
}

/// NBD error numbers (the protocol's, which follow Linux errno).
pub mod errno {
    pub const EPERM: u32 = 1;
    pub const EIO: u32 = 5;
    pub const ENOMEM: u32 = 12;
    pub const EINVAL: u32 = 22;
    pub const ENOSPC: u32 = 28;
    pub const EOVERFLOW: u32 = 75;
    pub const ENOTSUP: u32 = 95;
    pub const ESHUTDOWN: u32 = 108;
}

impl DeviceError {
    /// The NBD error a client gets for this failure.
    pub fn nbd_errno(&self) -> u32 {
        match self {
            DeviceError::Io { .. } => errno::EIO,
            DeviceError::OutOfRange { .. } => errno::ENOSPC,
            DeviceError::ReadOnly(_) | DeviceError::Fenced(_) => errno::EPERM,
            DeviceError::ShuttingDown => errno::ESHUTDOWN,
        }
    }
}

pub type DeviceResult<T> = Result<T, DeviceError>;

/// A block device: what the NBD server exports and what replication writes to.
#[async_trait::async_trait]
pub trait BlockDevice: Send + Sync + 'static {
    /// Size in bytes (a multiple of 512).
    fn size(&self) -> u64;
    /// Whether writes are refused (a replica, or a fenced primary).
    fn read_only(&self) -> bool {
        false
    }
    async fn read(&self, offset: u64, len: u32) -> DeviceResult<Vec<u8>>;
    /// Writes `data` at `offset`; with `fua` it is durable before this returns.
    async fn write(&self, offset: u64, data: Vec<u8>, fua: bool) -> DeviceResult<()>;
    /// Writes `len` zero bytes. TRIM is served as this too, so every copy reads the same after it.
    async fn write_zeroes(&self, offset: u64, len: u32, fua: bool) -> DeviceResult<()> {
        self.write(offset, vec![0; len as usize], fua).await
    }
    /// Makes every completed write durable.
    async fn flush(&self) -> DeviceResult<()>;
}

/// Checks that `offset..offset+len` lies inside a device of `size` bytes.
pub fn check_range(offset: u64, len: u64, size: u64) -> DeviceResult<()> {
    match offset.checked_add(len) {
        Some(end) if end <= size => Ok(()),
        _ => Err(DeviceError::OutOfRange { offset, len, size }),
    }
}

/// A raw file of fixed size. Reads and writes run on the blocking pool (positioned I/O, so
/// concurrent requests need no lock); FUA and flush are `fdatasync`.
#[derive(Debug, Clone)]
pub struct FileDisk {
    file: Arc<std::fs::File>,
    path: PathBuf,
    size: u64,
}

impl FileDisk {
    /// Creates `path` as a sparse file of `size` bytes; refuses an existing file.
    pub fn create(path: &Path, size: u64) -> DeviceResult<Self> {
        let io = |source| DeviceError::Io {
            path: path.to_owned(),
            source,
        };
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(io)?;
        }
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(path)
            .map_err(io)?;
        file.set_len(size).map_err(io)?;
        file.sync_all().map_err(io)?;
        Ok(Self {
            file: Arc::new(file),
            path: path.to_owned(),
            size,
        })
    }

    /// Opens an existing file; its length is the device size.
    pub fn open(path: &Path) -> DeviceResult<Self> {
        let io = |source| DeviceError::Io {
            path: path.to_owned(),
            source,
        };
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)
            .map_err(io)?;
        let size = file.metadata().map_err(io)?.len();
        Ok(Self {
            file: Arc::new(file),
            path: path.to_owned(),
            size,
        })
    }

    /// Opens `path`, creating it with `size` bytes if it does not exist; an existing file of
    /// another size is an error naming both sizes.
    pub fn open_or_create(path: &Path, size: u64) -> DeviceResult<Self> {
        if path.exists() {
            let disk = Self::open(path)?;
            if disk.size != size {
                return Err(DeviceError::Io {
                    path: path.to_owned(),
                    source: std::io::Error::other(format!(
                        "holds {} bytes, the volume has {size}",
                        disk.size
                    )),
                });
            }
            Ok(disk)
        } else {
            Self::create(path, size)
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&std::fs::File) -> std::io::Result<T> + Send + 'static,
    ) -> DeviceResult<T> {
        let file = self.file.clone();
        let path = self.path.clone();
        match tokio::task::spawn_blocking(move || f(&file)).await {
            Ok(r) => r.map_err(|source| DeviceError::Io { path, source }),
            Err(_) => Err(DeviceError::ShuttingDown),
        }
    }
}

#[async_trait::async_trait]
impl BlockDevice for FileDisk {
    fn size(&self) -> u64 {
        self.size
    }

    async fn read(&self, offset: u64, len: u32) -> DeviceResult<Vec<u8>> {
        check_range(offset, u64::from(len), self.size)?;
        self.blocking(move |f| {
            use std::os::unix::fs::FileExt;
            let mut buf = vec![0; len as usize];
            f.read_exact_at(&mut buf, offset)?;
            Ok(buf)
        })
        .await
    }

    async fn write(&self, offset: u64, data: Vec<u8>, fua: bool) -> DeviceResult<()> {
        check_range(offset, data.len() as u64, self.size)?;
        self.blocking(move |f| {
            use std::os::unix::fs::FileExt;
            f.write_all_at(&data, offset)?;
            if fua { f.sync_data() } else { Ok(()) }
        })
        .await
    }

    async fn flush(&self) -> DeviceResult<()> {
        self.blocking(|f| f.sync_data()).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_file_disk_reads_back_what_it_wrote_and_refuses_out_of_range() {
        let dir = tempfile::tempdir().expect("tempdir");
        let disk = FileDisk::create(&dir.path().join("v.img"), 1 << 20).expect("create");
        disk.write(4096, vec![7; 512], true).await.expect("write");
        assert_eq!(disk.read(4096, 512).await.expect("read"), vec![7; 512]);
        assert_eq!(disk.read(0, 512).await.expect("read"), vec![0; 512]);
        let err = disk.write((1 << 20) - 100, vec![1; 512], false).await;
        assert!(
            matches!(err, Err(DeviceError::OutOfRange { .. })),
            "{err:?}"
        );
        let err = disk.read(u64::MAX - 10, 512).await;
        assert!(
            matches!(err, Err(DeviceError::OutOfRange { .. })),
            "{err:?}"
        );
        // Reopening sees the data and insists on the size.
        let again = FileDisk::open_or_create(disk.path(), 1 << 20).expect("reopen");
        assert_eq!(again.read(4096, 512).await.expect("read"), vec![7; 512]);
        assert!(FileDisk::open_or_create(disk.path(), 2 << 20).is_err());
    }
}
