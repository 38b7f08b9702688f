//! The control channel between agents: its messages (forwarded proposals and reads, admission,
//! the relay's watch stream, pings) and the rule of what a peer may ask ([`authorize`]).
//!
//! Invariant: the leader acts on what a peer asks only within what the peer's certificate
//! proves — a node reports only about itself.
//!
//! Does not: send or serve anything; the cluster module does both.

use consensus::FabricNode;
use consensus::feed::Catchup;
use consensus::node::{NotLeader, ProposeError};
use consensus::state::{Command, CommandResult, Proposal};
use serde::{Deserialize, Serialize};
use wan::{Identity, Role};

use crate::confirmation::LeaseRead;

/// A request on the control channel.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum ControlRequest {
    /// Propose on the leader.
    Propose(Box<Proposal>),
    /// Leader: confirm leadership with a quorum and return the read index.
    ReadIndex,
    /// Confirm the lease of `host` of `site`. The leader reads what the host holds after a read
    /// index and notes the confirmation; any other voter carries it to the leader in its next
    /// batch ([`ControlRequest::ConfirmLeases`]): the host's site relay, or a hedge for a host
    /// whose link to its relay or the leader is cut.
    ConfirmLease {
        host: u64,
        site: String,
    },
    /// Admit the calling node (as a learner, then as a voter if asked).
    Join {
        node: FabricNode,
        voter: bool,
    },
    /// When did you last hear a leader? (pre-vote, [`crate::prevote`])
    LeaderHeard,
    Ping,
    /// A relay (a Raft member) sends the committed entries from index `from` on (the first
    /// one the asking host lacks), or its whole state when `from` is older than what it keeps.
    /// A long poll: with nothing after `from` yet, it answers when something is applied or
    /// after a few seconds with an empty batch ([`crate::relay`]).
    Watch {
        from: u64,
    },
    /// A SWIM message from an agent of the same site ([`crate::health`]); the reply carries
    /// what the receiver sends back to it.
    Swim(failover::swim::Message),
    /// A relay's batch of its hosts' lease confirmations (`(host, site)`), all of which arrived
    /// before it sent this: the leader reads them after one read index, notes every one, and
    /// answers [`ControlReply::LeaseReads`]. Only a Raft member may send it.
    ConfirmLeases {
        hosts: Vec<(u64, String)>,
    },
}

/// A node's answer to "when did you last hear a leader?".
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct HeardReply {
    pub leader: u64,
    pub term: u64,
    /// Milliseconds since (0 from the leader itself while its quorum acknowledges it).
    pub ago_ms: u64,
}

/// A relay's answer to [`ControlRequest::Watch`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WatchReply {
    pub batch: Catchup,
    /// The leader as the relay knows it (where the host sends proposals and read-index
    /// requests).
    pub leader: Option<(u64, FabricNode)>,
    /// The relay's applied index: a host ahead of it looks for another relay.
    pub applied: u64,
}

/// The answer on the control channel.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum ControlReply {
    Proposed(CommandResult),
    ReadIndex(u64),
    LeaseRead(LeaseRead),
    Heard(Option<HeardReply>),
    Joined,
    Pong,
    Swim(Vec<failover::swim::Message>),
    NotLeader(NotLeader),
    /// The leader could not do it (e.g. lost its quorum mid-way).
    Failed(String),
    /// A relay's batch for [`ControlRequest::Watch`].
    Watched(Box<WatchReply>),
    /// The answer to [`ControlRequest::ConfirmLeases`], one read per host.
    LeaseReads(Vec<(u64, LeaseRead)>),
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

/// A node reports only about itself: its observations, its own instances, and the view of its
/// own site. (Operators' commands reach the leader through whichever agent they asked, so
/// other commands are not tied to the forwarding node.)
pub(crate) fn authorize(peer: &Identity, p: &Proposal) -> Result<(), String> {
    if let Command::ReportSiteView { site, .. } = &p.command
        && peer.role == Role::Agent
        && *site != peer.site
    {
        return Err(format!(
            "{peer} may not report the view of site {site}: its certificate says {}",
            peer.site
        ));
    }
    let about = match &p.command {
        Command::ObserveSite { observer, .. }
        | Command::ReportSiteView {
            reporter: observer, ..
        }
        | Command::AgreeLeaseTerms { node: observer, .. } => Some(*observer),
        Command::InstanceRunning { host, .. }
        | Command::InstanceStopped { host, .. }
        | Command::ReportVolume { host, .. } => Some(*host),
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

/// A host confirms only its own lease, in its own site; another agent may carry a confirmation
/// for a host (a relay forwarding to the leader). Operators and workloads confirm nothing.
pub(crate) fn authorize_confirmation(peer: &Identity, host: u64, site: &str) -> Result<(), String> {
    if peer.role != Role::Agent {
        return Err(format!("{peer} is not an agent: it holds no lease"));
    }
    match peer.node_id() {
        Some(id) if id == host && peer.site != site => Err(format!(
            "node {id} asked to confirm a lease in site {site} but its certificate says {}",
            peer.site
        )),
        Some(_) => Ok(()),
        None => Err(format!("{peer} has no node id")),
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
        let own = proposal(Command::ObserveSite {
            observer: 2,
            site: "s2".into(),
            up: false,
        });
        assert!(authorize(&peer, &own).is_ok());
        let view = |reporter, site: &str| {
            proposal(Command::ReportSiteView {
                site: site.into(),
                reporter,
                dead: [1].into(),
            })
        };
        assert!(authorize(&peer, &view(2, "s1")).is_ok());
        assert!(authorize(&peer, &view(1, "s1")).is_err(), "as another node");
        let err = authorize(&peer, &view(2, "s2")).expect_err("another site");
        assert!(err.contains("view of site s2"), "{err}");
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

    #[test]
    fn a_host_confirms_only_in_its_own_site_and_agents_may_relay() {
        let host = Identity::new("2", "s1", wan::Role::Agent).expect("identity");
        assert!(authorize_confirmation(&host, 2, "s1").is_ok());
        let err = authorize_confirmation(&host, 2, "s2").expect_err("other site");
        assert!(err.contains("certificate says s1"), "{err}");
        let relay = Identity::new("3", "s3", wan::Role::Agent).expect("identity");
        assert!(authorize_confirmation(&relay, 2, "s1").is_ok(), "relay");
        let operator = Identity::new("alice", "s1", wan::Role::Operator).expect("identity");
        assert!(authorize_confirmation(&operator, 2, "s1").is_err());
    }
}
