//! The control channel between agents: forwarded proposals and reads, cluster admission, and the
//! dispatch of every incoming WAN stream (raft and control) to its owner.
//!
//! Invariant: the leader acts on what a peer asks only within what the peer's certificate
//! proves — a node may ask to join only as itself.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use consensus::FabricNode;
use consensus::network::{RaftRpc, serve_rpc};
use consensus::node::{NotLeader, ProposeError};
use consensus::state::{Command, CommandResult, Proposal};
use serde::{Deserialize, Serialize};
use wan::frame;
use wan::{Channel, Handler, Identity};

use crate::agent::Agent;

/// A request on the control channel.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum ControlRequest {
    /// Propose on the leader.
    Propose(Proposal),
    /// Leader: confirm leadership with a quorum and return the read index.
    ReadIndex,
    /// Admit the calling node (as a learner, then as a voter if asked).
    Join {
        node: FabricNode,
        voter: bool,
    },
    Ping,
}

/// The answer on the control channel.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum ControlReply {
    Proposed(CommandResult),
    ReadIndex(u64),
    Joined,
    Pong,
    NotLeader(NotLeader),
    /// The leader could not do it (e.g. lost its quorum mid-way).
    Failed(String),
}

impl From<ProposeError> for ControlReply {
    fn from(e: ProposeError) -> Self {
        match e {
            ProposeError::NotLeader(n) => ControlReply::NotLeader(n),
            ProposeError::Raft(e) => ControlReply::Failed(e),
        }
    }
}

/// Dispatches incoming WAN streams.
pub struct WanHandler {
    pub agent: Arc<Agent>,
}

impl Handler for WanHandler {
    fn handle(
        &self,
        peer: Identity,
        channel: Channel,
        request: Vec<u8>,
    ) -> Pin<Box<dyn Future<Output = anyhow::Result<Vec<u8>>> + Send + '_>> {
        Box::pin(async move {
            match channel {
                Channel::Raft => {
                    let rpc: RaftRpc = frame::decode(&request)?;
                    metrics::counter!("fabric_wan_requests_total", "channel" => "raft")
                        .increment(1);
                    let reply = serve_rpc(self.agent.raft().raft(), rpc).await;
                    Ok(frame::encode(&reply)?)
                }
                Channel::Control => {
                    let req: ControlRequest = frame::decode(&request)?;
                    metrics::counter!("fabric_wan_requests_total", "channel" => "control")
                        .increment(1);
                    let reply = self.control(&peer, req).await;
                    Ok(frame::encode(&reply)?)
                }
                Channel::Bulk => anyhow::bail!("this agent serves no bulk transfers"),
            }
        })
    }
}

impl WanHandler {
    async fn control(&self, peer: &Identity, req: ControlRequest) -> ControlReply {
        let raft = self.agent.raft();
        match req {
            ControlRequest::Propose(p) => {
                if let Err(refusal) = authorize(peer, &p) {
                    tracing::warn!("refused a proposal from {peer}: {refusal}");
                    return ControlReply::Failed(refusal);
                }
                match raft.propose(p).await {
                    Ok(result) => ControlReply::Proposed(result),
                    Err(e) => e.into(),
                }
            }
            ControlRequest::ReadIndex => match raft.read_index().await {
                Ok(index) => ControlReply::ReadIndex(index),
                Err(e) => e.into(),
            },
            ControlRequest::Join { node, voter } => {
                let Some(id) = peer.node_id() else {
                    return ControlReply::Failed(format!("{peer} cannot join: not an agent"));
                };
                if node.site != peer.site {
                    return ControlReply::Failed(format!(
                        "node {id} asked to join in site {} but its certificate says {}",
                        node.site, peer.site
                    ));
                }
                match self.agent.admit(id, node, voter).await {
                    Ok(()) => ControlReply::Joined,
                    Err(e) => e.into(),
                }
            }
            ControlRequest::Ping => ControlReply::Pong,
        }
    }
}

/// A node reports only about itself: its observations and its own instances. (Operators'
/// commands reach the leader through whichever agent they asked, so other commands are not
/// tied to the forwarding node.)
fn authorize(peer: &Identity, p: &Proposal) -> Result<(), String> {
    let about = match &p.command {
        Command::Observe { observer, .. } | Command::AgreeLeaseTerms { node: observer, .. } => {
            Some(*observer)
        }
        Command::InstanceRunning { host, .. } | Command::InstanceStopped { host, .. } => {
            Some(*host)
        }
        _ => None,
    };
    match (about, peer.node_id()) {
        (Some(subject), Some(id)) if subject != id => Err(format!(
            "node {id} may not report for node {subject}: {:?}",
            p.command
        )),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn proposal(command: Command) -> Proposal {
        Proposal {
            at_ms: 0,
            actor: "node 2".into(),
            command,
        }
    }

    #[test]
    fn a_node_may_report_only_for_itself() {
        let peer = Identity::new("2", "s1", wan::Role::Agent).expect("identity");
        let own = proposal(Command::Observe {
            observer: 2,
            subject: 1,
            up: false,
        });
        assert!(authorize(&peer, &own).is_ok());
        let forged = proposal(Command::InstanceStopped {
            service: "web".into(),
            host: 1,
            epoch: 1,
        });
        let err = authorize(&peer, &forged).expect_err("forged");
        assert!(err.contains("node 2 may not report for node 1"), "{err}");
        let terms = consensus::state::LeaseTerms {
            lease_ms: 6_000,
            margin_ms: 1_000,
        };
        let agree = |node| proposal(Command::AgreeLeaseTerms { node, terms });
        assert!(authorize(&peer, &agree(2)).is_ok());
        assert!(
            authorize(&peer, &agree(1)).is_err(),
            "terms for another node"
        );
        let forwarded = proposal(Command::RecordEvent {
            message: "operator note".into(),
        });
        assert!(authorize(&peer, &forwarded).is_ok());
    }
}
