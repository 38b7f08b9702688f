//! `sitectl bench raft`: commit latency and throughput of real writes through the admin API.
//!
//! Each write is an operator event note (`POST /v1/events`), sent to the leader's admin API: it
//! is a full round of HTTPS, a Raft commit on a quorum with fsync on every member, and the apply.
//! `sitectl bench replication` lives in [`replication`], `sitectl bench fleet` in [`fleet`].
//!
//! Figures are measured, never asserted; the machine may be shared and noisy.

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;
use siteagent::api::{EventNote, WriteResult};

use crate::client::Client;

pub mod fleet;
pub mod replication;

#[derive(Debug, Clone, Serialize)]
pub struct BenchRun {
    pub clients: usize,
    pub writes: usize,
    pub errors: usize,
    pub seconds: f64,
    pub writes_per_sec: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
}

pub(crate) fn percentile(sorted: &[Duration], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = ((p / 100.0) * (sorted.len() - 1) as f64).round() as usize;
    sorted[rank.min(sorted.len() - 1)].as_secs_f64() * 1000.0
}

/// Runs `clients` concurrent writers for `duration` against the current leader.
pub async fn raft(client: &Client, clients: usize, duration: Duration) -> anyhow::Result<BenchRun> {
    let target = Arc::new(client.leader().await?);
    // Warm the connections.
    for _ in 0..clients.min(8) {
        let _: WriteResult = target
            .post(
                "/v1/events",
                &EventNote {
                    message: "bench warm-up".into(),
                },
            )
            .await?;
    }
    let start = Instant::now();
    let deadline = start + duration;
    let mut tasks = tokio::task::JoinSet::new();
    for c in 0..clients {
        let target = target.clone();
        tasks.spawn(async move {
            let mut lat = Vec::new();
            let mut errors = 0usize;
            let mut i = 0u64;
            while Instant::now() < deadline {
                let t = Instant::now();
                let note = EventNote {
                    message: format!("bench client {c} write {i}"),
                };
                match target.post::<_, WriteResult>("/v1/events", &note).await {
                    Ok(_) => lat.push(t.elapsed()),
                    Err(_) => errors += 1,
                }
                i += 1;
            }
            (lat, errors)
        });
    }
    let mut all = Vec::new();
    let mut errors = 0;
    while let Some(r) = tasks.join_next().await {
        let (lat, e) = r?;
        all.extend(lat);
        errors += e;
    }
    let seconds = start.elapsed().as_secs_f64();
    all.sort();
    Ok(BenchRun {
        clients,
        writes: all.len(),
        errors,
        seconds,
        writes_per_sec: all.len() as f64 / seconds,
        p50_ms: percentile(&all, 50.0),
        p99_ms: percentile(&all, 99.0),
        max_ms: all.last().map(|d| d.as_secs_f64() * 1000.0).unwrap_or(0.0),
    })
}
