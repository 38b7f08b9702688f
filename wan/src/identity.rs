//! Who a certificate speaks for: node, site and role, carried in a URI subject alternative name
//! `fabric://<role>/<site>/<node>`.
//!
//! Invariant: an identity is only ever taken from a certificate that the TLS layer verified
//! against the fabric CA; the parsing here does no verification of its own.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// What a certificate may be used for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// A site agent: speaks on the WAN and serves the admin API.
    Agent,
    /// A person or tool driving the fabric through the admin API.
    Operator,
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Role::Agent => "agent",
            Role::Operator => "operator",
        })
    }
}

impl FromStr for Role {
    type Err = IdentityError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "agent" => Ok(Role::Agent),
            "operator" => Ok(Role::Operator),
            other => Err(IdentityError::Role(other.to_string())),
        }
    }
}

/// The identity a fabric certificate carries.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Identity {
    /// Agents: the Raft node id (a positive integer). Operators: a name.
    pub node: String,
    pub site: String,
    pub role: Role,
}

#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    #[error("unknown role `{0}` (expected agent or operator)")]
    Role(String),
    #[error("invalid {field} `{value}`: {reason}")]
    Field {
        field: &'static str,
        value: String,
        reason: &'static str,
    },
    #[error("certificate does not parse: {0}")]
    Certificate(String),
    #[error("certificate carries no fabric identity (no fabric:// URI name)")]
    Missing,
}

const SCHEME: &str = "fabric://";

fn check_label(field: &'static str, value: &str) -> Result<(), IdentityError> {
    let ok = !value.is_empty()
        && value.len() <= 63
        && value
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !value.starts_with('-')
        && !value.ends_with('-');
    if ok {
        Ok(())
    } else {
        Err(IdentityError::Field {
            field,
            value: value.to_string(),
            reason: "use 1 to 63 of a-z, 0-9 and inner -",
        })
    }
}

impl Identity {
    /// Builds a checked identity; an agent's node must be a positive integer (its Raft id).
    pub fn new(node: &str, site: &str, role: Role) -> Result<Self, IdentityError> {
        check_label("node", node)?;
        check_label("site", site)?;
        if role == Role::Agent && !matches!(node.parse::<u64>(), Ok(n) if n > 0) {
            return Err(IdentityError::Field {
                field: "node",
                value: node.to_string(),
                reason: "an agent's node must be a positive integer (its Raft node id)",
            });
        }
        Ok(Self {
            node: node.to_string(),
            site: site.to_string(),
            role,
        })
    }

    /// The node id of an agent.
    pub fn node_id(&self) -> Option<u64> {
        match self.role {
            Role::Agent => self.node.parse().ok(),
            Role::Operator => None,
        }
    }

    pub fn uri(&self) -> String {
        format!("{SCHEME}{}/{}/{}", self.role, self.site, self.node)
    }

    pub fn parse_uri(uri: &str) -> Result<Self, IdentityError> {
        let rest = uri.strip_prefix(SCHEME).ok_or(IdentityError::Missing)?;
        let mut parts = rest.split('/');
        match (parts.next(), parts.next(), parts.next(), parts.next()) {
            (Some(role), Some(site), Some(node), None) => Self::new(node, site, role.parse()?),
            _ => Err(IdentityError::Field {
                field: "identity uri",
                value: uri.to_string(),
                reason: "expected fabric://<role>/<site>/<node>",
            }),
        }
    }

    /// Reads the identity from a DER certificate (already verified by the caller).
    pub fn from_cert_der(der: &[u8]) -> Result<Self, IdentityError> {
        let (_, cert) = x509_parser::parse_x509_certificate(der)
            .map_err(|e| IdentityError::Certificate(e.to_string()))?;
        let san = cert
            .subject_alternative_name()
            .map_err(|e| IdentityError::Certificate(e.to_string()))?
            .ok_or(IdentityError::Missing)?;
        for name in &san.value.general_names {
            if let x509_parser::extensions::GeneralName::URI(uri) = name
                && uri.starts_with(SCHEME)
            {
                return Self::parse_uri(uri);
            }
        }
        Err(IdentityError::Missing)
    }
}

impl fmt::Display for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {} of site {}", self.role, self.node, self.site)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uri_round_trips() {
        let id = Identity::new("7", "s1", Role::Agent).expect("id");
        assert_eq!(id.uri(), "fabric://agent/s1/7");
        assert_eq!(Identity::parse_uri(&id.uri()).expect("parse"), id);
        assert_eq!(id.node_id(), Some(7));
    }

    #[test]
    fn agent_node_must_be_a_positive_integer() {
        assert!(Identity::new("alice", "s1", Role::Agent).is_err());
        assert!(Identity::new("0", "s1", Role::Agent).is_err());
        let op = Identity::new("alice", "s1", Role::Operator).expect("operator");
        assert_eq!(op.node_id(), None);
    }

    #[test]
    fn malformed_uris_are_refused() {
        for bad in [
            "fabric://agent/s1",
            "fabric://agent/s1/1/x",
            "fabric://king/s1/1",
            "https://agent/s1/1",
            "fabric://agent/S1/1",
        ] {
            assert!(Identity::parse_uri(bad).is_err(), "{bad}");
        }
    }
}
