//! An in-memory [`Link`] to a [`ReplicaStore`], with injectable delay, partition and lost
//! replies, counting the bytes each way. For tests (and the agent's tests).
//!
//! Messages go through the real postcard encoding and the size limit, so a test sees what the
//! WAN would carry.
//!
//! Does not: reorder messages (one request is in flight per replica anyway).

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use super::proto::{FromReplica, ToReplica, decode, encode};
use super::shell::{Link, LinkError};
use super::store::{ReplicaStore, StoreError};

#[derive(Debug)]
pub struct MemLink {
    store: Mutex<Arc<ReplicaStore>>,
    max_message: usize,
    partitioned: AtomicBool,
    delay_us: AtomicU64,
    lose_replies: AtomicU32,
    sent: AtomicU64,
    received: AtomicU64,
}

impl MemLink {
    pub fn new(store: Arc<ReplicaStore>, max_message: usize) -> Self {
        Self {
            store: Mutex::new(store),
            max_message,
            partitioned: AtomicBool::new(false),
            delay_us: AtomicU64::new(0),
            lose_replies: AtomicU32::new(0),
            sent: AtomicU64::new(0),
            received: AtomicU64::new(0),
        }
    }

    /// The replica store behind the link now.
    pub fn store(&self) -> Arc<ReplicaStore> {
        self.store
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Restarts the replica behind the link (see [`ReplicaStore::restart`]).
    pub async fn restart_replica(&self) -> Result<(), StoreError> {
        let fresh = Arc::new(self.store().restart().await?);
        *self.store.lock().unwrap_or_else(PoisonError::into_inner) = fresh;
        Ok(())
    }

    /// Cuts (true) or heals (false) the link; a reply in flight when cut is lost.
    pub fn partition(&self, cut: bool) {
        self.partitioned.store(cut, Ordering::SeqCst);
    }

    /// One-way delay of every message.
    pub fn set_delay(&self, delay: Duration) {
        self.delay_us
            .store(delay.as_micros() as u64, Ordering::SeqCst);
    }

    /// The next `n` requests are applied but their replies are lost.
    pub fn lose_replies(&self, n: u32) {
        self.lose_replies.store(n, Ordering::SeqCst);
    }

    /// Bytes carried (primary → replica, replica → primary).
    pub fn bytes(&self) -> (u64, u64) {
        (
            self.sent.load(Ordering::SeqCst),
            self.received.load(Ordering::SeqCst),
        )
    }

    fn cut(&self) -> bool {
        self.partitioned.load(Ordering::SeqCst)
    }

    async fn delay(&self) {
        let us = self.delay_us.load(Ordering::SeqCst);
        if us > 0 {
            tokio::time::sleep(Duration::from_micros(us)).await;
        }
    }
}

#[async_trait::async_trait]
impl Link for MemLink {
    async fn call(&self, msg: ToReplica) -> Result<FromReplica, LinkError> {
        if self.cut() {
            return Err(LinkError::Unreachable("partitioned".into()));
        }
        let frame = encode(&msg, self.max_message).map_err(|e| LinkError::Frame(e.to_string()))?;
        self.sent.fetch_add(frame.len() as u64, Ordering::SeqCst);
        self.delay().await;
        if self.cut() {
            return Err(LinkError::Unreachable("partitioned".into()));
        }
        let msg: ToReplica =
            decode(&frame, self.max_message).map_err(|e| LinkError::Frame(e.to_string()))?;
        let reply = self.store().handle(msg).await;
        let frame =
            encode(&reply, self.max_message).map_err(|e| LinkError::Frame(e.to_string()))?;
        self.delay().await;
        let lose = self
            .lose_replies
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok();
        if self.cut() || lose {
            return Err(LinkError::Lost("reply dropped".into()));
        }
        self.received
            .fetch_add(frame.len() as u64, Ordering::SeqCst);
        decode(&frame, self.max_message).map_err(|e| LinkError::Frame(e.to_string()))
    }
}
