//! An in-memory [`RaftTransport`] for in-process clusters in tests: a registry of Raft handles by
//! node id, and a switch to cut a node off from everyone.
//!
//! Invariant: an isolated node neither sends nor receives. A call from or to it fails as
//! unreachable, and so does a call that was in flight when it was isolated (its reply is
//! dropped, as a partition would drop it). Every RPC and reply goes through postcard, the
//! encoding of the WAN frames, so a message that would not survive the wire fails here too.
//!
//! It does not model latency, loss or reordering, nor one-way or pairwise partitions.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard};

use crate::network::{RaftRpc, RaftRpcReply, RaftTransport, serve_rpc};
use crate::state::NodeId;
use crate::types::{FabricNode, Raft};

/// Why an in-memory RPC did not arrive.
#[derive(Debug, thiserror::Error)]
pub enum MemTransportError {
    #[error("node {0} is isolated")]
    Isolated(NodeId),
    #[error("node {0} is not running")]
    NotRunning(NodeId),
    #[error("{kind} does not survive the wire encoding: {source}")]
    Codec {
        kind: &'static str,
        #[source]
        source: postcard::Error,
    },
}

#[derive(Default)]
struct Registry {
    nodes: HashMap<NodeId, Raft>,
    isolated: HashSet<NodeId>,
}

/// The shared in-memory network: who is running and who is cut off. Clones share it.
#[derive(Clone, Default)]
pub struct MemNetwork {
    inner: Arc<Mutex<Registry>>,
}

impl MemNetwork {
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> MutexGuard<'_, Registry> {
        // The registry is a pair of maps updated in single calls; a panic cannot tear it.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The transport node `from` hands to its `Network`; it knows its sender so that isolating
    /// `from` cuts its outgoing RPCs too.
    pub fn transport(&self, from: NodeId) -> Arc<MemTransport> {
        Arc::new(MemTransport {
            from,
            net: self.clone(),
        })
    }

    /// Makes `raft` reachable as node `id`, replacing any earlier handle (a restart).
    pub fn register(&self, id: NodeId, raft: Raft) {
        self.lock().nodes.insert(id, raft);
    }

    /// Makes node `id` unreachable as "not running", e.g. before shutting it down.
    pub fn unregister(&self, id: NodeId) -> Option<Raft> {
        self.lock().nodes.remove(&id)
    }

    /// Cuts node `id` off: RPCs from and to it fail until [`Self::heal`].
    pub fn isolate(&self, id: NodeId) {
        self.lock().isolated.insert(id);
    }

    pub fn heal(&self, id: NodeId) {
        self.lock().isolated.remove(&id);
    }

    pub fn is_isolated(&self, id: NodeId) -> bool {
        self.lock().isolated.contains(&id)
    }

    /// The Raft handle of `to` if `from` can reach it now.
    fn route(&self, from: NodeId, to: NodeId) -> Result<Raft, MemTransportError> {
        let reg = self.lock();
        if let Some(cut) = [from, to].into_iter().find(|n| reg.isolated.contains(n)) {
            return Err(MemTransportError::Isolated(cut));
        }
        reg.nodes
            .get(&to)
            .cloned()
            .ok_or(MemTransportError::NotRunning(to))
    }
}

/// One node's end of the [`MemNetwork`].
pub struct MemTransport {
    from: NodeId,
    net: MemNetwork,
}

fn wire<T>(kind: &'static str, msg: &T) -> Result<T, MemTransportError>
where
    T: serde::Serialize + serde::de::DeserializeOwned,
{
    let codec = |source| MemTransportError::Codec { kind, source };
    let bytes = postcard::to_stdvec(msg).map_err(codec)?;
    postcard::from_bytes(&bytes).map_err(codec)
}

impl MemTransport {
    async fn deliver(
        &self,
        target: NodeId,
        rpc: RaftRpc,
    ) -> Result<RaftRpcReply, MemTransportError> {
        let raft = self.net.route(self.from, target)?;
        let rpc = wire(rpc.kind(), &rpc)?;
        let reply = serve_rpc(&raft, rpc).await;
        // The reply travels back over the same (possibly now cut) link.
        self.net.route(self.from, target)?;
        wire("reply", &reply)
    }
}

impl RaftTransport for MemTransport {
    async fn call(
        &self,
        target: NodeId,
        _node: &FabricNode,
        rpc: RaftRpc,
    ) -> Result<RaftRpcReply, anyhow::Error> {
        Ok(self.deliver(target, rpc).await?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn isolation_cuts_both_directions_and_heals() {
        let net = MemNetwork::new();
        net.isolate(2);
        assert!(matches!(
            net.route(1, 2),
            Err(MemTransportError::Isolated(2))
        ));
        assert!(matches!(
            net.route(2, 1),
            Err(MemTransportError::Isolated(2))
        ));
        net.heal(2);
        assert!(!net.is_isolated(2));
        // Healed but never registered: unreachable for a different reason.
        assert!(matches!(
            net.route(1, 2),
            Err(MemTransportError::NotRunning(2))
        ));
    }
}
