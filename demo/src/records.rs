//! The demo's durable records: `POST /write?seq=N` appends `N` to a file and syncs it before
//! acknowledging; `GET /records` lists every sequence number held. Drills count acknowledged
//! writes that the serving instance no longer holds afterwards as lost (RPO).
//!
//! The file lives on the service's volume: `<volume root>/<site>/<service>/records.log` — a
//! directory every host of one site shares (like a SAN), and nothing replicates it across sites.
//!
//! Invariant: a write is acknowledged only after it is on disk (fsync of the data).

use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;

use axum::Json;
use axum::extract::{Query, State};
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};
use tokio::sync::Mutex;

/// Where the records file is, if this instance has a volume.
#[derive(Debug, Clone, Default)]
pub struct Records {
    file: Option<Arc<Mutex<PathBuf>>>,
}

#[derive(Debug, Deserialize)]
pub struct WriteQuery {
    seq: u64,
}

#[derive(Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct RecordList {
    pub seqs: Vec<u64>,
}

impl Records {
    pub fn at(path: Option<PathBuf>) -> Self {
        Self {
            file: path.map(|p| Arc::new(Mutex::new(p))),
        }
    }

    pub async fn append(&self, seq: u64) -> Result<(), String> {
        let file = self.file.as_ref().ok_or("this instance has no volume")?;
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

    pub async fn list(&self) -> Result<Vec<u64>, String> {
        let file = self.file.as_ref().ok_or("this instance has no volume")?;
        let path = file.lock().await.clone();
        match tokio::fs::read_to_string(&path).await {
            Ok(text) => Ok(text.lines().filter_map(|l| l.trim().parse().ok()).collect()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
            Err(e) => Err(format!("{}: {e}", path.display())),
        }
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
