//! The control channel between agents: its messages (forwarded proposals and reads, admission,
//! pings) and the rule of what a peer may ask ([`authorize`]).
//!
//! Invariant: the leader acts on what a peer asks only within what the peer's certificate
//! proves — a node reports only about itself.
//!
//! Does not: send or serve anything; the cluster module does both.

use consensus::FabricNode;
use consensus::node::{NotLeader, ProposeError};
use consensus::state::{Command, CommandResult, Proposal};
use serde::{Deserialize, Serialize};
use wan::Identity;

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
            e @ ProposeError::TimedOut { .. } => ControlReply::Failed(e.to_string()),
        }
    }
}

/// A node reports only about itself: its observations and its own instances. (Operators'
/// commands reach the leader through whichever agent they asked, so other commands are not
/// tied to the forwarding node.)
pub(crate) fn authorize(peer: &Identity, p: &Proposal) -> Result<(), String> {
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
            term: None,
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
            placement: 1,
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
