//! Raft RPCs over the fabric WAN: each RPC is one request on a `raft` stream to the member's
//! address, and the peer must prove (by its certificate) that it is the node Raft meant.

use std::sync::Arc;

use wan::{Channel, Wan};

use crate::network::{RaftRpc, RaftRpcReply, RaftTransport};
use crate::state::NodeId;
use crate::types::FabricNode;

pub struct WanTransport {
    wan: Arc<Wan>,
}

impl WanTransport {
    pub fn new(wan: Arc<Wan>) -> Self {
        Self { wan }
    }
}

impl RaftTransport for WanTransport {
    async fn call(
        &self,
        target: NodeId,
        node: &FabricNode,
        rpc: RaftRpc,
    ) -> Result<RaftRpcReply, anyhow::Error> {
        let addr = node
            .addr
            .parse()
            .map_err(|_| anyhow::anyhow!("node {target} has a bad address `{}`", node.addr))?;
        Ok(self
            .wan
            .request(addr, Some(target), Channel::Raft, &rpc)
            .await?)
    }
}
