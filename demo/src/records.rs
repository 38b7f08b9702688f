//! The demo's durable records: `POST /write?seq=N` appends `N` and makes it durable before
//! acknowledging; `GET /records` lists every sequence number held. Drills count acknowledged
//! writes that the serving instance no longer holds afterwards as lost (RPO).
//!
//! Two places the records can live:
//! - a block volume over NBD ([`crate::record_log`], `--volume-nbd nbd://host:port/export`),
//!   the way a VM reaches its disk; the fabric replicates such volumes across sites;
//! - a file on a site-shared directory: `<volume root>/<site>/<service>/records.log` (like a
//!   SAN), which nothing replicates across sites. Drills use it until the agent serves volumes.
//!
//! Invariant: a write is acknowledged only after it is durable (FUA write of its slot, or fsync
//! of the file); otherwise the client gets 503 with the reason.

use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;

use axum::Json;
use axum::extract::{Query, State};
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};
use storage::nbd::NbdUri;
use tokio::sync::Mutex;

use crate::record_log::NbdLog;

/// Where the records are kept, if this instance has a volume.
#[derive(Debug, Clone, Default)]
pub struct Records {
    backend: Backend,
}

#[derive(Debug, Clone, Default)]
enum Backend {
    #[default]
    None,
    File(Arc<Mutex<PathBuf>>),
    Volume(Arc<NbdLog>),
}

const NO_VOLUME: &str = "this instance has no volume";

#[derive(Debug, Deserialize)]
pub struct WriteQuery {
    seq: u64,
}

#[derive(Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct RecordList {
    pub seqs: Vec<u64>,
}

impl Records {
    /// Records in the file at `path` (none: writes are refused).
    pub fn at(path: Option<PathBuf>) -> Self {
        Self {
            backend: path.map_or(Backend::None, |p| Backend::File(Arc::new(Mutex::new(p)))),
        }
    }

    /// Records on the NBD export `uri` names.
    pub fn on_volume(uri: NbdUri) -> Self {
        Self {
            backend: Backend::Volume(Arc::new(NbdLog::new(uri))),
        }
    }

    /// The NBD volume the records are on, if they are on one.
    pub fn volume(&self) -> Option<&NbdUri> {
        match &self.backend {
            Backend::Volume(log) => Some(log.uri()),
            Backend::None | Backend::File(_) => None,
        }
    }

    pub async fn append(&self, seq: u64) -> Result<(), String> {
        match &self.backend {
            Backend::None => Err(NO_VOLUME.to_owned()),
            Backend::File(file) => append_to_file(file, seq).await,
            Backend::Volume(log) => log.append(seq).await.map_err(|e| e.to_string()),
        }
    }

    pub async fn list(&self) -> Result<Vec<u64>, String> {
        match &self.backend {
            Backend::None => Err(NO_VOLUME.to_owned()),
            Backend::File(file) => list_file(file).await,
            Backend::Volume(log) => log.list().await.map_err(|e| e.to_string()),
        }
    }
}

async fn append_to_file(file: &Mutex<PathBuf>, seq: u64) -> Result<(), String> {
    // The lock is held across the blocking write, so appends never interleave.
    let guard = file.lock().await;
    let path = guard.clone();
    tokio::task::spawn_blocking(move || -> std::io::Result<()> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)?;
        writeln!(f, "{seq}")?;
        f.sync_data()
    })
    .await
    .map_err(|e| e.to_string())?
    .map_err(|e| e.to_string())?;
    drop(guard);
    Ok(())
}

async fn list_file(file: &Mutex<PathBuf>) -> Result<Vec<u64>, String> {
    let path = file.lock().await.clone();
    match tokio::fs::read_to_string(&path).await {
        Ok(text) => Ok(text.lines().filter_map(|l| l.trim().parse().ok()).collect()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(e) => Err(format!("{}: {e}", path.display())),
    }
}

pub async fn write(
    State(records): State<Records>,
    Query(q): Query<WriteQuery>,
) -> Result<Json<u64>, (StatusCode, String)> {
    records
        .append(q.seq)
        .await
        .map(|()| Json(q.seq))
        .map_err(|e| (StatusCode::SERVICE_UNAVAILABLE, e))
}

pub async fn list(
    State(records): State<Records>,
) -> Result<Json<RecordList>, (StatusCode, String)> {
    records
        .list()
        .await
        .map(|seqs| Json(RecordList { seqs }))
        .map_err(|e| (StatusCode::SERVICE_UNAVAILABLE, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn acknowledged_writes_are_listed_in_order() {
        let dir = tempfile::tempdir().expect("dir");
        let r = Records::at(Some(dir.path().join("s1/web/records.log")));
        for seq in [3, 1, 2] {
            r.append(seq).await.expect("append");
        }
        assert_eq!(r.list().await.expect("list"), vec![3, 1, 2]);
    }

    #[tokio::test]
    async fn without_a_volume_writes_are_refused() {
        let r = Records::at(None);
        assert!(r.append(1).await.is_err());
    }
}
