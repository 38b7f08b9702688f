//! The receiving side of replication: a [`ReplicaStore`] runs the [`Replica`] state machine's
//! plans against a raw-file image and its `<image>.meta`.
//!
//! Invariant: requests are handled one at a time; a newer epoch is on disk (temp file, fsync,
//! rename, fsync of the directory) before any other step, and every ack follows an fsync of the
//! image. A failed step yields `Refused{Io}` and drops the stream position, so the primary
//! resyncs rather than assuming.
//!
//! Does not: serve reads to clients (a replica is not exported), or choose when to promote.

use std::path::{Path, PathBuf};

use tokio::sync::Mutex;

use super::chunks::{chunk_span, hash_chunks};
use super::proto::{FromReplica, Op, Refusal, ToReplica};
use super::replica::{Meta, Plan, Replica, Reply, Step};
use crate::device::{BlockDevice, DeviceError, FileDisk};

/// The replica's image or meta could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error(transparent)]
    Device(#[from] DeviceError),
    #[error("{path}: {source}")]
    Meta {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: not a replica meta file: {source}")]
    MetaParse {
        path: PathBuf,
        source: serde_json::Error,
    },
    #[error("{path}: holds {field} {have}, this replica is opened with {want}")]
    MetaMismatch {
        path: PathBuf,
        field: &'static str,
        have: String,
        want: String,
    },
}

#[derive(Debug)]
pub struct ReplicaStore {
    disk: FileDisk,
    meta_path: PathBuf,
    core: Mutex<Replica>,
    stopped: std::sync::atomic::AtomicBool,
}

impl ReplicaStore {
    /// Opens (or creates) the image at `path` and its `<path>.meta`; an existing meta must name
    /// the same volume, size and chunk.
    pub fn open(path: &Path, volume: &str, size: u64, chunk: u32) -> Result<Self, StoreError> {
        let disk = FileDisk::open_or_create(path, size)?;
        let meta_path = meta_path(path);
        let want = Meta {
            volume: volume.to_owned(),
            epoch: 0,
            size,
            chunk,
        };
        let meta = match std::fs::read(&meta_path) {
            Ok(bytes) => check_meta(&meta_path, &bytes, &want)?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                write_meta(&meta_path, &want).map_err(|source| StoreError::Meta {
                    path: meta_path.clone(),
                    source,
                })?;
                want
            }
            Err(source) => {
                return Err(StoreError::Meta {
                    path: meta_path,
                    source,
                });
            }
        };
        Ok(Self {
            disk,
            meta_path,
            core: Mutex::new(Replica::new(meta)),
            stopped: std::sync::atomic::AtomicBool::new(false),
        })
    }

    /// Simulates a restart of the replica's process: waits for the request being handled,
    /// stops this store (it refuses everything from now on) and opens the same files again,
    /// with the persisted epoch and no stream position.
    pub async fn restart(&self) -> Result<ReplicaStore, StoreError> {
        let core = self.core.lock().await;
        self.stopped
            .store(true, std::sync::atomic::Ordering::SeqCst);
        let m = core.meta();
        ReplicaStore::open(self.disk.path(), &m.volume, m.size, m.chunk)
    }

    /// Waits for the request being applied, then refuses everything from now on: the agent
    /// stops a replica this way before the same file is opened as the primary.
    pub async fn stop(&self) {
        let _core = self.core.lock().await;
        self.stopped
            .store(true, std::sync::atomic::Ordering::SeqCst);
    }

    pub fn disk(&self) -> &FileDisk {
        &self.disk
    }

    /// Newest epoch this copy has seen.
    pub async fn epoch(&self) -> u64 {
        self.core.lock().await.meta().epoch
    }

    /// Handles one request; never panics on what it carries.
    pub async fn handle(&self, msg: ToReplica) -> FromReplica {
        let mut core = self.core.lock().await;
        if self.stopped.load(std::sync::atomic::Ordering::SeqCst) {
            let reason = Refusal::Io("replica store stopped".into());
            let epoch_seen = core.meta().epoch;
            return FromReplica::Refused { reason, epoch_seen };
        }
        let plan = core.handle(msg);
        match self.run(plan, core.meta().chunk).await {
            Ok(reply) => reply,
            Err(e) => {
                core.failed();
                tracing::warn!(image = %self.disk.path().display(), error = %e, "replica step failed");
                FromReplica::Refused {
                    reason: Refusal::Io(e.to_string()),
                    epoch_seen: core.meta().epoch,
                }
            }
        }
    }

    async fn run(&self, plan: Plan, chunk: u32) -> Result<FromReplica, StoreError> {
        for step in plan.steps {
            self.step(step, chunk).await?;
        }
        Ok(match plan.reply {
            Reply::Ready(reply) => reply,
            Reply::HashesOf(indices) => FromReplica::Hashes {
                hashes: hash_chunks(&self.disk, chunk, &indices).await?,
            },
        })
    }

    async fn step(&self, step: Step, chunk: u32) -> Result<(), StoreError> {
        match step {
            Step::PersistMeta(meta) => {
                let path = self.meta_path.clone();
                let res = tokio::task::spawn_blocking(move || write_meta(&path, &meta)).await;
                let io = match res {
                    Ok(r) => r,
                    Err(e) => Err(std::io::Error::other(e)),
                };
                io.map_err(|source| StoreError::Meta {
                    path: self.meta_path.clone(),
                    source,
                })
            }
            Step::Apply(ops) => {
                for op in ops {
                    self.apply(op).await?;
                }
                Ok(())
            }
            Step::Store(chunks) => {
                for (index, data) in chunks {
                    let (offset, _) = chunk_span(index, self.disk.size(), chunk);
                    self.disk.write(offset, data, false).await?;
                }
                Ok(())
            }
            Step::Sync => Ok(self.disk.flush().await?),
        }
    }

    async fn apply(&self, op: Op) -> Result<(), DeviceError> {
        match op {
            Op::Write { offset, data } => self.disk.write(offset, data, false).await,
            Op::Zeroes { offset, len } => {
                // Bounded pieces: a zeroes op may cover the whole volume.
                let mut done = 0;
                while done < len {
                    let n = (len - done).min(1 << 20) as u32;
                    self.disk.write_zeroes(offset + done, n, false).await?;
                    done += u64::from(n);
                }
                Ok(())
            }
        }
    }
}

/// `<image>.meta`.
pub fn meta_path(image: &Path) -> PathBuf {
    let mut name = image.as_os_str().to_owned();
    name.push(".meta");
    PathBuf::from(name)
}

fn check_meta(path: &Path, bytes: &[u8], want: &Meta) -> Result<Meta, StoreError> {
    let have: Meta = serde_json::from_slice(bytes).map_err(|source| StoreError::MetaParse {
        path: path.to_owned(),
        source,
    })?;
    let mismatch = |field, have: String, want: String| StoreError::MetaMismatch {
        path: path.to_owned(),
        field,
        have,
        want,
    };
    if have.volume != want.volume {
        return Err(mismatch("volume", have.volume, want.volume.clone()));
    }
    if have.size != want.size {
        return Err(mismatch(
            "size",
            have.size.to_string(),
            want.size.to_string(),
        ));
    }
    if have.chunk != want.chunk {
        return Err(mismatch(
            "chunk",
            have.chunk.to_string(),
            want.chunk.to_string(),
        ));
    }
    Ok(have)
}

/// Writes `meta` atomically and durably: temp file, fsync, rename, fsync of the directory.
fn write_meta(path: &Path, meta: &Meta) -> std::io::Result<()> {
    use std::io::Write;
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    let bytes = serde_json::to_vec_pretty(meta).map_err(std::io::Error::other)?;
    let mut file = std::fs::File::create(&tmp)?;
    file.write_all(&bytes)?;
    file.sync_all()?;
    std::fs::rename(&tmp, path)?;
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hello(epoch: u64) -> ToReplica {
        ToReplica::Hello {
            volume: "vol".into(),
            epoch,
            primary: 1,
            size: 1 << 16,
            chunk: 4096,
        }
    }

    #[tokio::test]
    async fn a_reopened_replica_still_refuses_the_deposed_primary() {
        let dir = tempfile::tempdir().expect("tempdir");
        let image = dir.path().join("vol.img");
        let store = ReplicaStore::open(&image, "vol", 1 << 16, 4096).expect("open");
        assert!(matches!(
            store.handle(hello(1)).await,
            FromReplica::Welcome { epoch: 1, .. }
        ));
        assert!(matches!(
            store.handle(hello(3)).await,
            FromReplica::Welcome { epoch: 3, .. }
        ));
        drop(store);

        let store = ReplicaStore::open(&image, "vol", 1 << 16, 4096).expect("reopen");
        assert_eq!(store.epoch().await, 3);
        let reply = store
            .handle(ToReplica::Writes {
                volume: "vol".into(),
                epoch: 2,
                first_lsn: 1,
                ops: vec![Op::Write {
                    offset: 0,
                    data: vec![9; 16],
                }],
            })
            .await;
        assert_eq!(
            reply,
            FromReplica::Refused {
                reason: Refusal::StaleEpoch { got: 2 },
                epoch_seen: 3
            }
        );
        assert_eq!(store.disk().read(0, 16).await.expect("read"), vec![0; 16]);
        assert!(!meta_path(&image).with_extension("meta.tmp").exists());
    }

    #[tokio::test]
    async fn a_meta_of_another_volume_or_size_is_an_error_naming_the_field() {
        let dir = tempfile::tempdir().expect("tempdir");
        let image = dir.path().join("vol.img");
        drop(ReplicaStore::open(&image, "vol", 1 << 16, 4096).expect("open"));
        let err = ReplicaStore::open(&image, "other", 1 << 16, 4096).expect_err("volume");
        assert!(err.to_string().contains("volume"), "{err}");
        let err = ReplicaStore::open(&image, "vol", 1 << 16, 8192).expect_err("chunk");
        assert!(err.to_string().contains("chunk"), "{err}");
        std::fs::write(meta_path(&image), b"{garbage").expect("write");
        let err = ReplicaStore::open(&image, "vol", 1 << 16, 4096).expect_err("garbage");
        assert!(matches!(err, StoreError::MetaParse { .. }), "{err}");
    }
}
