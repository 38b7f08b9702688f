//! The config file of each agent of a lab: the agent's own [`AgentConfig`], filled from the
//! lab's plan and timing, serialised as TOML.
//!
//! Invariant: what it writes is what `siteagent` parses — the same type both ways — so a lab
//! config fails only where the agent's own check refuses its values (e.g. an unsafe lease).
//!
//! It does not check the values itself (the agent does, and says why) and does not start agents.

use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::path::PathBuf;

use anyhow::Context as _;
use siteagent::config::{
    AgentConfig, DnsConfig, FailoverConfig, HostConfig, LogConfig, RaftConfig, RuntimeConfig,
    VolumeConfig, WanTuning,
};
use wan::TlsFiles;

use super::{DNS_PORT, LAB_PLAN_INTERVAL, LAB_ZONE, LabAgent, LabFile, links};

/// The config of agent `a` of `lab`; `voters` are the agents that hold a vote.
pub fn agent_config(lab: &LabFile, a: &LabAgent, voters: &[&LabAgent]) -> AgentConfig {
    let t = &lab.timing;
    let mut addresses = vec![a.wan.ip()];
    if lab.ipv6 {
        addresses.push(IpAddr::V6(Ipv6Addr::LOCALHOST));
    }
    let node = a.node;
    AgentConfig {
        node_id: node,
        site: a.site.clone(),
        site_priority: a.site.trim_start_matches('s').parse().unwrap_or(100),
        roles: a.roles.clone(),
        data_dir: PathBuf::from("data"),
        wan_listen: a.wan,
        admin_listen: a.admin,
        bootstrap: node == 1,
        peers: voters
            .iter()
            .filter(|v| v.node != node)
            .map(|v| v.wan)
            .collect(),
        // Relative to the agent's directory `nodes/n<ID>`.
        tls: TlsFiles {
            ca: PathBuf::from("../../pki/ca.crt"),
            cert: PathBuf::from(format!("../../pki/agent-{node}.crt")),
            key: PathBuf::from(format!("../../pki/agent-{node}.key")),
        },
        raft: RaftConfig {
            heartbeat_interval: t.raft_heartbeat,
            election_timeout_min: t.election_timeout_min,
            election_timeout_max: t.election_timeout_max,
            ..RaftConfig::default()
        },
        host: HostConfig {
            addresses,
            ..HostConfig::default()
        },
        failover: FailoverConfig {
            heartbeat_interval: t.heartbeat_interval,
            failure_threshold: t.failure_threshold,
            lease: t.lease,
            lease_margin: t.lease_margin,
            plan_interval: LAB_PLAN_INTERVAL,
            // SWIM over sealed datagrams on the WAN port + 1 (free on every agent's own IP).
            swim_key_file: (!lab.swim_over_quic).then(|| PathBuf::from("../../pki/swim.key")),
        },
        dns: DnsConfig {
            listen: Some(SocketAddr::new(a.wan.ip(), DNS_PORT)),
            zone: LAB_ZONE.to_string(),
            ttl: t.dns_ttl,
        },
        // With links, agents of other sites are reached through the link emulator.
        wan: WanTuning {
            routes: links::routes(lab, a).into_iter().collect(),
            ..WanTuning::default()
        },
        log: LogConfig::default(),
        // Every host of a site shares its site's volume directory (the lab's shared storage).
        volumes: VolumeConfig {
            dir: Some(PathBuf::from(format!("../../volumes/{}", a.site))),
            ..VolumeConfig::default()
        },
        runtime: RuntimeConfig {
            worker_threads: (lab.worker_threads > 0).then_some(lab.worker_threads),
        },
    }
}

/// `agent.toml` of agent `a`: [`agent_config`] as TOML under a line saying who wrote it.
pub fn agent_config_text(
    lab: &LabFile,
    a: &LabAgent,
    voters: &[&LabAgent],
) -> anyhow::Result<String> {
    Ok(format!(
        "# Written by `sitectl lab up` ({} sites x {} hosts).\n{}",
        lab.sites,
        lab.hosts_per_site,
        toml::to_string(&agent_config(lab, a, voters))
            .with_context(|| format!("the config of node {}", a.node))?
    ))
}
