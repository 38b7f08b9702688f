//! Raft RPCs as plain messages and the openraft network built on any [`RaftTransport`].
//!
//! The transport moves a [`RaftRpc`] to a peer and brings back its [`RaftRpcReply`]; the real one
//! runs over the WAN (QUIC + mutual TLS, see `wan_transport`), the in-memory one serves
//! in-process cluster tests. Errors the remote Raft returned travel inside the reply, so a
//! transport error always means "could not reach the peer".

use std::future::Future;
use std::sync::Arc;

use openraft::error::{InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use serde::{Deserialize, Serialize};

use crate::state::NodeId;
use crate::types::{FabricNode, Raft, TypeConfig};

/// A Raft RPC on its way to a peer.
#[derive(Debug, Serialize, Deserialize)]
pub enum RaftRpc {
    Append(AppendEntriesRequest<TypeConfig>),
    Vote(VoteRequest<NodeId>),
    Snapshot(InstallSnapshotRequest<TypeConfig>),
}

/// The peer's Raft answer, including errors its Raft returned.
#[derive(Debug, Serialize, Deserialize)]
pub enum RaftRpcReply {
    Append(Result<AppendEntriesResponse<NodeId>, RaftError<NodeId>>),
    Vote(Result<VoteResponse<NodeId>, RaftError<NodeId>>),
    Snapshot(Result<InstallSnapshotResponse<NodeId>, RaftError<NodeId, InstallSnapshotError>>),
}

impl RaftRpc {
    pub fn kind(&self) -> &'static str {
        match self {
            RaftRpc::Append(_) => "append_entries",
            RaftRpc::Vote(_) => "vote",
            RaftRpc::Snapshot(_) => "install_snapshot",
        }
    }
}

/// Hands an RPC to the local Raft and wraps its answer; the receiving side of every transport.
pub async fn serve_rpc(raft: &Raft, rpc: RaftRpc) -> RaftRpcReply {
    match rpc {
        RaftRpc::Append(req) => RaftRpcReply::Append(raft.append_entries(req).await),
        RaftRpc::Vote(req) => RaftRpcReply::Vote(raft.vote(req).await),
        RaftRpc::Snapshot(req) => RaftRpcReply::Snapshot(raft.install_snapshot(req).await),
    }
}

/// Moves Raft RPCs between nodes. Returns `Err` only when the peer could not be reached or did
/// not answer in time.
pub trait RaftTransport: Send + Sync + 'static {
    fn call(
        &self,
        target: NodeId,
        node: &FabricNode,
        rpc: RaftRpc,
    ) -> impl Future<Output = Result<RaftRpcReply, anyhow::Error>> + Send;
}

/// openraft's network factory over a transport.
pub struct Network<T> {
    transport: Arc<T>,
}

impl<T> Network<T> {
    pub fn new(transport: Arc<T>) -> Self {
        Self { transport }
    }
}

impl<T: RaftTransport> RaftNetworkFactory<TypeConfig> for Network<T> {
    type Network = PeerClient<T>;

    async fn new_client(&mut self, target: NodeId, node: &FabricNode) -> Self::Network {
        PeerClient {
            transport: self.transport.clone(),
            target,
            node: node.clone(),
        }
    }
}

/// The network client openraft uses for one peer.
pub struct PeerClient<T> {
    transport: Arc<T>,
    target: NodeId,
    node: FabricNode,
}

fn unreachable<E: std::error::Error>(e: anyhow::Error) -> RPCError<NodeId, FabricNode, E> {
    let e = std::io::Error::other(format!("{e:#}"));
    RPCError::Network(NetworkError::new(&e))
}

fn wrong_reply<E: std::error::Error>(kind: &str) -> RPCError<NodeId, FabricNode, E> {
    let e = std::io::Error::other(format!("peer answered a {kind} request with another kind"));
    RPCError::Network(NetworkError::new(&e))
}

impl<T: RaftTransport> PeerClient<T> {
    fn remote<E: std::error::Error>(
        &self,
        e: RaftError<NodeId, E>,
    ) -> RPCError<NodeId, FabricNode, RaftError<NodeId, E>> {
        RPCError::RemoteError(RemoteError::new_with_node(
            self.target,
            self.node.clone(),
            e,
        ))
    }
}

impl<T: RaftTransport> RaftNetwork<TypeConfig> for PeerClient<T> {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        _option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, RPCError<NodeId, FabricNode, RaftError<NodeId>>>
    {
        match self
            .transport
            .call(self.target, &self.node, RaftRpc::Append(rpc))
            .await
            .map_err(unreachable)?
        {
            RaftRpcReply::Append(r) => r.map_err(|e| self.remote(e)),
            _ => Err(wrong_reply("append_entries")),
        }
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        _option: RPCOption,
    ) -> Result<
        InstallSnapshotResponse<NodeId>,
        RPCError<NodeId, FabricNode, RaftError<NodeId, InstallSnapshotError>>,
    > {
        match self
            .transport
            .call(self.target, &self.node, RaftRpc::Snapshot(rpc))
            .await
            .map_err(unreachable)?
        {
            RaftRpcReply::Snapshot(r) => r.map_err(|e| self.remote(e)),
            _ => Err(wrong_reply("install_snapshot")),
        }
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        _option: RPCOption,
    ) -> Result<VoteResponse<NodeId>, RPCError<NodeId, FabricNode, RaftError<NodeId>>> {
        match self
            .transport
            .call(self.target, &self.node, RaftRpc::Vote(rpc))
            .await
            .map_err(unreachable)?
        {
            RaftRpcReply::Vote(r) => r.map_err(|e| self.remote(e)),
            _ => Err(wrong_reply("vote")),
        }
    }
}
