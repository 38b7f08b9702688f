//! The agent's configuration file (`agent.toml`): documented data with defaults in one place.
//!
//! Unknown fields are errors, and every error names the field (and the line, for syntax and type
//! errors). Relative paths are taken relative to the directory of the config file.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use wan::TlsFiles;

/// What an agent does in the fabric.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AgentRole {
    /// A Raft voter: holds the replicated state and votes in elections.
    Voter,
    /// Runs workloads; registered in the state as a host.
    Host,
    /// A voter with no workloads, the tie-breaker of a two-site fabric.
    Witness,
    /// Serves the fabric's DNS zone.
    Dns,
}

/// The whole `agent.toml`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentConfig {
    /// Raft node id, a positive integer unique in the fabric; must match the certificate.
    pub node_id: u64,
    /// Site (data centre) of this agent; must match the certificate.
    pub site: String,
    /// Priority of this site when the site is first registered (lower is preferred).
    #[serde(default = "defaults::site_priority")]
    pub site_priority: u32,
    /// Roles of this agent: any of `voter`, `host`, `witness`, `dns`.
    pub roles: Vec<AgentRole>,
    /// Where the Raft log, vote and state live.
    pub data_dir: PathBuf,
    /// UDP address of the WAN (QUIC) endpoint.
    pub wan_listen: SocketAddr,
    /// TCP address of the admin API (HTTPS, operator client certificates).
    pub admin_listen: SocketAddr,
    /// Create a new cluster with this agent as its first member if it has no state yet. Set it
    /// on exactly one agent, once.
    #[serde(default)]
    pub bootstrap: bool,
    /// WAN addresses of other agents to ask for admission into the cluster.
    #[serde(default)]
    pub peers: Vec<SocketAddr>,
    /// Certificates of this agent.
    pub tls: TlsFiles,
    #[serde(default)]
    pub raft: RaftConfig,
    #[serde(default)]
    pub host: HostConfig,
    #[serde(default)]
    pub failover: FailoverConfig,
    #[serde(default)]
    pub dns: DnsConfig,
    #[serde(default)]
    pub wan: WanTuning,
    #[serde(default)]
    pub log: LogConfig,
    #[serde(default)]
    pub volumes: VolumeConfig,
    #[serde(default)]
    pub runtime: RuntimeConfig,
}

/// Raft timing. Defaults suit a LAN; on a WAN use heartbeat ≥ 2 × RTT (openraft also uses it
/// as the time limit of each AppendEntries round trip) and election ≥ 10 × RTT.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RaftConfig {
    /// How often the leader sends heartbeats.
    #[serde(with = "humantime_serde", default = "defaults::heartbeat")]
    pub heartbeat_interval: Duration,
    /// Lower bound of the randomized election timeout.
    #[serde(with = "humantime_serde", default = "defaults::election_min")]
    pub election_timeout_min: Duration,
    /// Upper bound of the randomized election timeout.
    #[serde(with = "humantime_serde", default = "defaults::election_max")]
    pub election_timeout_max: Duration,
    /// Take a snapshot and compact the log after this many entries.
    #[serde(default = "defaults::snapshot_after_logs")]
    pub snapshot_after_logs: u64,
}

impl Default for RaftConfig {
    fn default() -> Self {
        Self {
            heartbeat_interval: defaults::heartbeat(),
            election_timeout_min: defaults::election_min(),
            election_timeout_max: defaults::election_max(),
            snapshot_after_logs: defaults::snapshot_after_logs(),
        }
    }
}

/// What this agent offers as a host.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HostConfig {
    /// CPU offered to workloads, in thousandths of a core.
    #[serde(default = "defaults::cpu_millis")]
    pub cpu_millis: u64,
    /// Memory offered to workloads, MiB.
    #[serde(default = "defaults::memory_mib")]
    pub memory_mib: u64,
    /// Free-form labels (keys: a-z, 0-9, -).
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// Addresses at which this host's workloads are reachable (IPv4 and/or IPv6); DNS answers
    /// with them. Default: the IP of `wan_listen`.
    #[serde(default)]
    pub addresses: Vec<IpAddr>,
    /// Where workloads keep their working directories and logs. Default: `<data_dir>/workloads`.
    #[serde(default)]
    pub work_dir: Option<PathBuf>,
    /// The `fabric-guard` binary that fences workloads. Default: next to `siteagent`.
    #[serde(default)]
    pub guard: Option<PathBuf>,
}

impl Default for HostConfig {
    fn default() -> Self {
        Self {
            cpu_millis: defaults::cpu_millis(),
            memory_mib: defaults::memory_mib(),
            labels: BTreeMap::new(),
            addresses: Vec::new(),
            work_dir: None,
            guard: None,
        }
    }
}

/// Failure detection and ownership leases. `lease` and `lease_margin` must be the same on every
/// agent: the majority's waiting time rests on the holders' expiry.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FailoverConfig {
    /// How often every other agent is pinged on the control stream.
    #[serde(with = "humantime_serde", default = "defaults::heartbeat_interval")]
    pub heartbeat_interval: Duration,
    /// Missed heartbeats before this agent sees a peer as down.
    #[serde(default = "defaults::failure_threshold")]
    pub failure_threshold: u32,
    /// Ownership lease: a holder serves at most `lease - lease_margin` after its last
    /// confirmation was sent; the majority reassigns `lease + lease_margin` after revoking.
    #[serde(with = "humantime_serde", default = "defaults::lease")]
    pub lease: Duration,
    /// Safety margin for clock-rate differences and delays (see `lease`).
    #[serde(with = "humantime_serde", default = "defaults::lease_margin")]
    pub lease_margin: Duration,
    /// How often the leader runs the planner (it also runs on every state change).
    #[serde(with = "humantime_serde", default = "defaults::plan_interval")]
    pub plan_interval: Duration,
    /// The fabric's datagram key (`swim.key` beside the CA, from `sitectl pki init`). With it,
    /// SWIM inside a site runs over sealed UDP datagrams on the WAN address's port + 1 (two
    /// packets per probe); without it, over the WAN's QUIC streams. Every agent of a site must
    /// do the same.
    #[serde(default)]
    pub swim_key_file: Option<PathBuf>,
}

impl Default for FailoverConfig {
    fn default() -> Self {
        Self {
            heartbeat_interval: defaults::heartbeat_interval(),
            failure_threshold: defaults::failure_threshold(),
            lease: defaults::lease(),
            lease_margin: defaults::lease_margin(),
            plan_interval: defaults::plan_interval(),
            swim_key_file: None,
        }
    }
}

/// The authoritative DNS server of agents with the `dns` role.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DnsConfig {
    /// UDP and TCP address to serve on. Default: the IP of `wan_listen`, port 53.
    #[serde(default)]
    pub listen: Option<SocketAddr>,
    /// The fabric zone, e.g. `fabric.test.`; service names live under it.
    #[serde(default = "defaults::zone")]
    pub zone: String,
    /// TTL of answers (and of negative answers), seconds. Keep it short: failover waits it out.
    #[serde(default = "defaults::dns_ttl")]
    pub ttl: u32,
}

impl Default for DnsConfig {
    fn default() -> Self {
        Self {
            listen: None,
            zone: defaults::zone(),
            ttl: defaults::dns_ttl(),
        }
    }
}

/// WAN transport tuning.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WanTuning {
    /// Largest frame accepted from or sent to a peer, bytes.
    #[serde(default = "defaults::max_frame_bytes")]
    pub max_frame_bytes: usize,
    /// Time limit of one WAN request, connect included.
    #[serde(with = "humantime_serde", default = "defaults::request_timeout")]
    pub request_timeout: Duration,
    /// A silent connection is dropped after this long.
    #[serde(with = "humantime_serde", default = "defaults::idle_timeout")]
    pub idle_timeout: Duration,
    /// Send traffic for a peer's WAN address to another address instead, e.g. a link emulator
    /// between sites: `{ "127.10.2.1:7100" = "127.10.112.1:7100" }`.
    #[serde(default)]
    pub routes: BTreeMap<SocketAddr, SocketAddr>,
}

impl Default for WanTuning {
    fn default() -> Self {
        Self {
            max_frame_bytes: defaults::max_frame_bytes(),
            request_timeout: defaults::request_timeout(),
            idle_timeout: defaults::idle_timeout(),
            routes: BTreeMap::new(),
        }
    }
}

/// Block volumes this host keeps and serves.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VolumeConfig {
    /// Where this site's copies live, one raw file per volume. Every host of a site should see
    /// the same directory (shared storage): the fabric replicates across sites, and any host of
    /// the site may take over serving a copy. Default: `<data_dir>/volumes`.
    #[serde(default)]
    pub dir: Option<PathBuf>,
    /// TCP port of the NBD server on this host's workload addresses (the same on every agent).
    #[serde(default = "defaults::nbd_port")]
    pub nbd_port: u16,
    /// A sync replica that has not acknowledged a write for this long is declared outdated (in
    /// the fabric state) so the primary can go on without it.
    #[serde(with = "humantime_serde", default = "defaults::sync_timeout")]
    pub sync_timeout: Duration,
    /// Most bytes of writes queued for one async replica before it falls back to tracking
    /// dirty blocks (and a resync when it catches up).
    #[serde(default = "defaults::journal_bytes")]
    pub journal_bytes: u64,
}

impl Default for VolumeConfig {
    fn default() -> Self {
        Self {
            dir: None,
            nbd_port: defaults::nbd_port(),
            sync_timeout: defaults::sync_timeout(),
            journal_bytes: defaults::journal_bytes(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

/// Logging.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogConfig {
    /// `text` or `json`.
    #[serde(default)]
    pub format: LogFormat,
    /// A tracing filter, e.g. `info` or `info,openraft=warn`; `RUST_LOG` overrides it.
    #[serde(default = "defaults::log_filter")]
    pub filter: String,
}

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            format: LogFormat::default(),
            filter: defaults::log_filter(),
        }
    }
}

/// The agent's async runtime.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuntimeConfig {
    /// Worker threads (1 to 256). Default: one per CPU the agent may use (its cgroup's quota
    /// included). One is enough for the control plane and saves idle CPU where many agents share
    /// a machine (the lab); DNS under load, NBD and volume replication use more.
    #[serde(default)]
    pub worker_threads: Option<usize>,
}

/// Every default value, in one place.
mod defaults {
    use std::time::Duration;

    pub fn nbd_port() -> u16 {
        10809
    }

    pub fn sync_timeout() -> Duration {
        Duration::from_secs(2)
    }

    pub fn journal_bytes() -> u64 {
        64 << 20
    }

    pub fn site_priority() -> u32 {
        100
    }
    pub fn heartbeat() -> Duration {
        Duration::from_millis(100)
    }
    pub fn election_min() -> Duration {
        Duration::from_millis(500)
    }
    pub fn election_max() -> Duration {
        Duration::from_millis(1000)
    }
    pub fn snapshot_after_logs() -> u64 {
        5000
    }
    pub fn cpu_millis() -> u64 {
        4000
    }
    pub fn memory_mib() -> u64 {
        8192
    }
    pub fn heartbeat_interval() -> Duration {
        Duration::from_millis(500)
    }
    pub fn failure_threshold() -> u32 {
        4
    }
    pub fn lease() -> Duration {
        Duration::from_secs(6)
    }
    pub fn lease_margin() -> Duration {
        Duration::from_secs(1)
    }
    pub fn plan_interval() -> Duration {
        Duration::from_millis(250)
    }
    pub fn zone() -> String {
        "fabric.test.".into()
    }
    pub fn dns_ttl() -> u32 {
        5
    }
    pub fn max_frame_bytes() -> usize {
        16 << 20
    }
    pub fn request_timeout() -> Duration {
        Duration::from_secs(5)
    }
    pub fn idle_timeout() -> Duration {
        Duration::from_secs(10)
    }
    pub fn log_filter() -> String {
        "info,openraft=warn,hickory_server=warn".into()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("{path}: field `{field}`: {reason}")]
    Invalid {
        path: PathBuf,
        field: &'static str,
        reason: String,
    },
}

impl AgentConfig {
    /// Reads, parses and checks a config file; relative paths become relative to its directory.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let mut config = Self::parse(&text).map_err(|e| match e {
            ConfigError::Parse { message, .. } => ConfigError::Parse {
                path: path.to_path_buf(),
                message,
            },
            ConfigError::Invalid { field, reason, .. } => ConfigError::Invalid {
                path: path.to_path_buf(),
                field,
                reason,
            },
            other => other,
        })?;
        let base = path.parent().unwrap_or(Path::new("."));
        config.data_dir = base.join(&config.data_dir);
        config.tls = config.tls.relative_to(base);
        if let Some(dir) = &config.host.work_dir {
            config.host.work_dir = Some(base.join(dir));
        }
        if let Some(guard) = &config.host.guard {
            config.host.guard = Some(base.join(guard));
        }
        if let Some(dir) = &config.volumes.dir {
            config.volumes.dir = Some(base.join(dir));
        }
        if let Some(key) = &config.failover.swim_key_file {
            config.failover.swim_key_file = Some(base.join(key));
        }
        Ok(config)
    }

    /// Parses and checks config text.
    pub fn parse(text: &str) -> Result<Self, ConfigError> {
        let config: Self = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: PathBuf::from("<config>"),
            message: e.to_string().trim_end().to_string(),
        })?;
        config.check()?;
        Ok(config)
    }

    fn check(&self) -> Result<(), ConfigError> {
        let invalid = |field, reason: &str| ConfigError::Invalid {
            path: PathBuf::from("<config>"),
            field,
            reason: reason.to_string(),
        };
        if self.node_id == 0 {
            return Err(invalid("node_id", "must be a positive integer"));
        }
        if wan::Identity::new(&self.node_id.to_string(), &self.site, wan::Role::Agent).is_err() {
            return Err(invalid("site", "use 1 to 63 of a-z, 0-9 and inner -"));
        }
        if self.roles.is_empty() {
            return Err(invalid(
                "roles",
                "name at least one of voter, host, witness, dns",
            ));
        }
        if self.failover.swim_key_file.is_some() && self.swim_listen().is_none() {
            return Err(invalid(
                "failover.swim_key_file",
                "SWIM datagrams use the WAN port + 1; wan_listen's port leaves no room",
            ));
        }
        if self.has(AgentRole::Witness) && self.has(AgentRole::Host) {
            return Err(invalid(
                "roles",
                "a witness runs no workloads; drop `host` or `witness`",
            ));
        }
        let r = &self.raft;
        if r.heartbeat_interval.is_zero() || r.election_timeout_min <= r.heartbeat_interval {
            return Err(invalid(
                "raft.election_timeout_min",
                "must be greater than raft.heartbeat_interval (which must be > 0)",
            ));
        }
        if r.election_timeout_max <= r.election_timeout_min {
            return Err(invalid(
                "raft.election_timeout_max",
                "must be greater than raft.election_timeout_min",
            ));
        }
        if self.wan.max_frame_bytes < 64 << 10 {
            return Err(invalid("wan.max_frame_bytes", "must be at least 65536"));
        }
        let f = &self.failover;
        if f.heartbeat_interval.is_zero() || f.failure_threshold == 0 {
            return Err(invalid(
                "failover.failure_threshold",
                "heartbeat_interval and failure_threshold must be greater than 0",
            ));
        }
        // The same rule the fabric applies when it records the terms (in whole milliseconds).
        if !self.lease().terms().is_safe() {
            return Err(invalid(
                "failover.lease",
                "must be more than twice failover.lease_margin (which must be > 0)",
            ));
        }
        // A leader loss stops every lease confirmation until a new leader is elected; if that
        // can outlast a lease, every agent fences itself for it.
        let validity = f.lease - f.lease_margin;
        let budget = validity - validity / 4;
        if budget <= self.raft.election_timeout_max * 2 {
            return Err(invalid(
                "failover.lease",
                "lease - lease_margin must be more than 8/3 x raft.election_timeout_max, or electing a new Raft leader would fence every agent",
            ));
        }
        if self.volumes.nbd_port == 0 {
            return Err(invalid("volumes.nbd_port", "must be 1 to 65535"));
        }
        if self.volumes.sync_timeout.is_zero() {
            return Err(invalid("volumes.sync_timeout", "must be greater than 0"));
        }
        if self
            .runtime
            .worker_threads
            .is_some_and(|n| !(1..=256).contains(&n))
        {
            return Err(invalid("runtime.worker_threads", "must be 1 to 256"));
        }
        if f.plan_interval.is_zero() {
            return Err(invalid("failover.plan_interval", "must be greater than 0"));
        }
        if !self.dns.zone.ends_with('.') || self.dns.zone.len() < 2 {
            return Err(invalid(
                "dns.zone",
                "must be an absolute name ending in `.`, e.g. `fabric.test.`",
            ));
        }
        Ok(())
    }

    pub fn has(&self, role: AgentRole) -> bool {
        self.roles.contains(&role)
    }

    /// Voters and witnesses hold a vote.
    pub fn is_voter(&self) -> bool {
        self.has(AgentRole::Voter) || self.has(AgentRole::Witness)
    }

    pub fn raft_settings(&self) -> consensus::node::RaftSettings {
        consensus::node::RaftSettings {
            heartbeat_interval: self.raft.heartbeat_interval,
            election_timeout_min: self.raft.election_timeout_min,
            election_timeout_max: self.raft.election_timeout_max,
            snapshot_after_logs: self.raft.snapshot_after_logs,
        }
    }

    /// Directory of this site's volume copies.
    pub fn volume_dir(&self) -> PathBuf {
        self.volumes
            .dir
            .clone()
            .unwrap_or_else(|| self.data_dir.join("volumes"))
    }

    /// Addresses of this host's workloads: `host.addresses`, else the WAN IP.
    pub fn workload_addresses(&self) -> Vec<IpAddr> {
        if self.host.addresses.is_empty() {
            vec![self.wan_listen.ip()]
        } else {
            self.host.addresses.clone()
        }
    }

    pub fn dns_listen(&self) -> SocketAddr {
        self.dns
            .listen
            .unwrap_or_else(|| SocketAddr::new(self.wan_listen.ip(), 53))
    }

    pub fn work_dir(&self) -> PathBuf {
        self.host
            .work_dir
            .clone()
            .unwrap_or_else(|| self.data_dir.join("workloads"))
    }

    /// Where SWIM datagrams are received when `failover.swim_key_file` is set.
    pub fn swim_listen(&self) -> Option<SocketAddr> {
        crate::health::swim_addr(self.wan_listen)
    }

    pub fn detector(&self) -> failover::detector::DetectorConfig {
        failover::detector::DetectorConfig {
            interval: self.failover.heartbeat_interval,
            threshold: self.failover.failure_threshold,
        }
    }

    pub fn lease(&self) -> failover::lease::LeaseConfig {
        failover::lease::LeaseConfig {
            lease: self.failover.lease,
            margin: self.failover.lease_margin,
        }
    }

    pub fn wan_config(&self) -> wan::WanConfig {
        wan::WanConfig {
            max_frame: self.wan.max_frame_bytes,
            request_timeout: self.wan.request_timeout,
            idle_timeout: self.wan.idle_timeout,
            routes: self.wan.routes.iter().map(|(k, v)| (*k, *v)).collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXAMPLE: &str = include_str!("../agent.example.toml");

    #[test]
    fn example_file_parses() {
        let c = AgentConfig::parse(EXAMPLE).expect("example parses");
        assert_eq!(c.node_id, 1);
        assert!(c.is_voter());
        assert_eq!(c.raft.heartbeat_interval, Duration::from_millis(100));
    }

    #[test]
    fn unknown_field_is_named_with_its_line() {
        let text = EXAMPLE.replace("bootstrap = true", "bootstrap = true\nbootsrap = 1");
        let err = AgentConfig::parse(&text)
            .expect_err("unknown field")
            .to_string();
        assert!(err.contains("bootsrap"), "{err}");
        assert!(err.contains("line"), "{err}");
    }

    #[test]
    fn a_swim_key_file_means_datagrams_on_the_wan_port_plus_one_and_needs_that_port() {
        let text = EXAMPLE.replace(
            "# swim_key_file = \"pki/swim.key\"",
            "swim_key_file = \"pki/swim.key\"",
        );
        let c = AgentConfig::parse(&text).expect("parses");
        assert_eq!(
            c.failover.swim_key_file,
            Some(PathBuf::from("pki/swim.key"))
        );
        assert_eq!(
            c.swim_listen(),
            Some("127.10.1.1:7101".parse().expect("addr"))
        );
        let last = text.replace("127.10.1.1:7100", "127.10.1.1:65535");
        let err = AgentConfig::parse(&last)
            .expect_err("no port left")
            .to_string();
        assert!(err.contains("failover.swim_key_file"), "{err}");
        assert!(
            AgentConfig::parse(&EXAMPLE.replace("127.10.1.1:7100", "127.10.1.1:65535")).is_ok(),
            "without a key the last port is fine"
        );
    }

    #[test]
    fn wrong_type_is_named() {
        let text = EXAMPLE.replace("node_id = 1", "node_id = \"one\"");
        let err = AgentConfig::parse(&text).expect_err("bad type").to_string();
        assert!(err.contains("node_id"), "{err}");
    }

    #[test]
    fn inconsistent_timeouts_are_refused() {
        let text = EXAMPLE.replace(
            "election_timeout_max = \"1s\"",
            "election_timeout_max = \"100ms\"",
        );
        let err = AgentConfig::parse(&text)
            .expect_err("bad timeouts")
            .to_string();
        assert!(err.contains("raft.election_timeout_max"), "{err}");
    }

    #[test]
    fn a_lease_shorter_than_an_election_is_refused() {
        let text = EXAMPLE.replace("lease = \"6s\"", "lease = \"3s\"");
        let err = AgentConfig::parse(&text)
            .expect_err("short lease")
            .to_string();
        assert!(err.contains("failover.lease"), "{err}");
        assert!(err.contains("election_timeout_max"), "{err}");
    }

    #[test]
    fn a_margin_of_zero_or_half_the_lease_is_refused() {
        for margin in ["0s", "3s"] {
            let text = EXAMPLE.replace(
                "lease_margin = \"1s\"",
                &format!("lease_margin = \"{margin}\""),
            );
            assert_ne!(text, EXAMPLE);
            let err = AgentConfig::parse(&text)
                .expect_err("unsafe margin")
                .to_string();
            assert!(err.contains("failover.lease"), "{margin}: {err}");
            assert!(err.contains("twice"), "{margin}: {err}");
        }
    }

    #[test]
    fn worker_threads_default_to_the_runtime_and_must_be_1_to_256() {
        assert_eq!(
            AgentConfig::parse(EXAMPLE)
                .expect("example")
                .runtime
                .worker_threads,
            None
        );
        let set =
            |n: &str| EXAMPLE.replace("# worker_threads = 1", &format!("worker_threads = {n}"));
        let c = AgentConfig::parse(&set("1")).expect("one worker");
        assert_eq!(c.runtime.worker_threads, Some(1));
        for bad in ["0", "257"] {
            let err = AgentConfig::parse(&set(bad))
                .expect_err("out of range")
                .to_string();
            assert!(err.contains("runtime.worker_threads"), "{bad}: {err}");
        }
    }

    #[test]
    fn witness_cannot_host() {
        let text = EXAMPLE.replace(
            r#"roles = ["voter", "host"]"#,
            r#"roles = ["witness", "host"]"#,
        );
        let err = AgentConfig::parse(&text)
            .expect_err("witness host")
            .to_string();
        assert!(err.contains("roles"), "{err}");
    }
}
