//! A local fabric of real `siteagent` processes on loopback: `sitectl lab up|status|down|start`.
//!
//! Layout of a lab directory `D`:
//! `D/lab.toml` (what was started), `D/pki/` (CA, agent and operator certificates),
//! `D/nodes/n<ID>/{agent.toml, agent.log, agent.pid, data/}`, `D/context.toml` (for `sitectl`).
//! Agent of site `s`, host `h` binds `127.<net>.<s>.<h>` (WAN on UDP 7100, admin on TCP 7443);
//! `<net>` is chosen so that every address is free, which lets labs run side by side.
//!
//! Every file it writes for a process is that process's own config type serialised
//! (`AgentConfig`, `ServiceSpec`, `emu::EmuConfig`), never text put together by hand.
//!
//! Invariant: `lab up` never touches a directory that already holds a lab; processes are found
//! again by pid *and* command line, so a recycled pid is never signalled.
//!
//! It does not decide when to inject faults (a drill or the operator does) and keeps no state
//! outside its directory.

use std::collections::BTreeMap;
use std::fs;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context as _, anyhow, bail};
use consensus::state::{Capacity, Placement, ProcessSpec, ServiceSpec, WorkloadKind};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use serde::{Deserialize, Serialize};
use siteagent::api::Status;
use siteagent::config::AgentRole;
use wan::pki::{self, Validity};
use wan::{Identity, Role, TlsFiles};

use crate::client::Client;
use crate::context::Context;
use crate::poll::{Check, PollError, poll_until};

mod config;
mod links;
pub use config::{agent_config, agent_config_text};
pub use links::{LabLink, find_emu, resolve as resolve_links};

pub const WAN_PORT: u16 = 7100;
pub const ADMIN_PORT: u16 = 7443;
/// DNS (UDP and TCP) of the agents with the `dns` role: every host of the lab.
pub const DNS_PORT: u16 = 5300;
/// Site name of the witness agent of `lab up --witness`.
pub const WITNESS_SITE: &str = "w";
const OPERATOR: &str = "admin";

/// What `lab.toml` records about each agent.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LabAgent {
    pub node: u64,
    pub site: String,
    pub roles: Vec<AgentRole>,
    pub wan: SocketAddr,
    pub admin: SocketAddr,
    /// Directory of this agent (config, log, pid, data), relative to the lab directory.
    pub dir: PathBuf,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LabFile {
    pub sites: u32,
    pub hosts_per_site: u32,
    /// Second octet of every agent address.
    pub net: u8,
    /// A witness agent in its own site `w` (a voter without workloads).
    #[serde(default)]
    pub witness: bool,
    /// Hosts also advertise `::1` for their workloads (AAAA answers).
    #[serde(default)]
    pub ipv6: bool,
    /// Fabric timing written into every agent's config.
    #[serde(default)]
    pub timing: LabTiming,
    /// Links between sites through the link emulator (none: sites talk directly).
    #[serde(default)]
    pub links: Vec<LabLink>,
    /// Service ports clients in one site reach in another through the emulator.
    #[serde(default)]
    pub probe_ports: Vec<u16>,
    /// SWIM over the WAN's QUIC streams instead of sealed datagrams (no `swim_key_file`).
    #[serde(default)]
    pub swim_over_quic: bool,
    /// Worker threads of each agent's runtime (0: one per CPU, the agent's default).
    #[serde(default = "one_worker")]
    pub worker_threads: usize,
    pub agents: Vec<LabAgent>,
}

impl LabFile {
    /// The lab `opts` asks for on network `127.<net>.0.0/16`: its agents (site by site, host by
    /// host, then the witness) and its links.
    pub fn plan(opts: &UpOptions, net: u8) -> anyhow::Result<Self> {
        let mut agents = Vec::new();
        for s in 1..=opts.sites {
            for h in 1..=opts.hosts_per_site {
                let node = u64::from((s - 1) * opts.hosts_per_site + h);
                let roles = if h == 1 {
                    vec![AgentRole::Voter, AgentRole::Host, AgentRole::Dns]
                } else {
                    vec![AgentRole::Host, AgentRole::Dns]
                };
                agents.push(LabAgent {
                    node,
                    site: format!("s{s}"),
                    roles,
                    wan: addr(net, s, h, WAN_PORT),
                    admin: addr(net, s, h, ADMIN_PORT),
                    dir: PathBuf::from(format!("nodes/n{node}")),
                });
            }
        }
        if opts.witness {
            let node = u64::from(opts.sites * opts.hosts_per_site + 1);
            agents.push(LabAgent {
                node,
                site: WITNESS_SITE.into(),
                roles: vec![AgentRole::Witness],
                wan: addr(net, opts.sites + 1, 1, WAN_PORT),
                admin: addr(net, opts.sites + 1, 1, ADMIN_PORT),
                dir: PathBuf::from(format!("nodes/n{node}")),
            });
        }
        let mut file = LabFile {
            sites: opts.sites,
            hosts_per_site: opts.hosts_per_site,
            net,
            witness: opts.witness,
            ipv6: opts.ipv6,
            timing: opts.timing,
            links: Vec::new(),
            probe_ports: opts.probe_ports.clone(),
            swim_over_quic: opts.swim_over_quic,
            worker_threads: opts.worker_threads,
            agents,
        };
        file.links = links::resolve(&file.site_names(), &opts.links)?;
        Ok(file)
    }

    /// The sites of the lab's agents, each once, in the order of the agents.
    pub fn site_names(&self) -> Vec<String> {
        let mut sites: Vec<String> = Vec::new();
        for a in &self.agents {
            if !sites.contains(&a.site) {
                sites.push(a.site.clone());
            }
        }
        sites
    }

    /// The agents that hold a vote (voters and the witness).
    pub fn voters(&self) -> Vec<&LabAgent> {
        self.agents
            .iter()
            .filter(|a| {
                a.roles.contains(&AgentRole::Voter) || a.roles.contains(&AgentRole::Witness)
            })
            .collect()
    }
}

/// Fabric timing of a lab: shorter than the agent's defaults so failovers are quick to watch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LabTiming {
    #[serde(with = "humantime_serde")]
    pub heartbeat_interval: Duration,
    pub failure_threshold: u32,
    #[serde(with = "humantime_serde")]
    pub lease: Duration,
    #[serde(with = "humantime_serde")]
    pub lease_margin: Duration,
    /// DNS answer TTL, seconds.
    pub dns_ttl: u32,
    #[serde(with = "humantime_serde")]
    pub raft_heartbeat: Duration,
    #[serde(with = "humantime_serde")]
    pub election_timeout_min: Duration,
    #[serde(with = "humantime_serde")]
    pub election_timeout_max: Duration,
}

impl Default for LabTiming {
    fn default() -> Self {
        Self {
            heartbeat_interval: Duration::from_millis(200),
            failure_threshold: 5,
            lease: Duration::from_secs(5),
            lease_margin: Duration::from_secs(1),
            dns_ttl: LAB_DNS_TTL,
            raft_heartbeat: Duration::from_millis(100),
            election_timeout_min: Duration::from_millis(500),
            election_timeout_max: Duration::from_millis(1000),
        }
    }
}

impl LabTiming {
    /// Failure detection: interval × threshold.
    pub fn detection(&self) -> Duration {
        self.heartbeat_interval * self.failure_threshold
    }

    /// From a fault to the leader's verdict: the silence (interval × threshold, plus up to one
    /// interval until the next check), one planner round, and two election timeouts when the
    /// fault took the leader with it.
    pub fn verdict_bound(&self) -> Duration {
        self.heartbeat_interval * (self.failure_threshold + 1)
            + LAB_PLAN_INTERVAL
            + self.election_timeout_max * 2
    }

    /// The theoretical bound of an unplanned move: detection + lease + margin + DNS TTL.
    pub fn failover_bound(&self) -> Duration {
        self.detection() + self.lease + self.lease_margin + Duration::from_secs(self.dns_ttl.into())
    }
}

/// One line of `lab status`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AgentProcess {
    pub node: u64,
    pub site: String,
    pub pid: Option<i32>,
    pub address: String,
    pub admin: String,
    pub roles: Vec<AgentRole>,
    pub alive: bool,
}

#[derive(Debug, Clone)]
pub struct Lab {
    pub dir: PathBuf,
    pub file: LabFile,
}

fn lab_file(dir: &Path) -> PathBuf {
    dir.join("lab.toml")
}

pub fn context_path(dir: &Path) -> PathBuf {
    dir.join("context.toml")
}

/// Options of `lab up`.
#[derive(Debug, Clone)]
pub struct UpOptions {
    pub sites: u32,
    pub hosts_per_site: u32,
    /// Second address octet; `None` picks a free one.
    pub net: Option<u8>,
    pub timeout: Duration,
    pub siteagent: PathBuf,
    pub progress: bool,
    /// Add a witness site with one voting agent.
    pub witness: bool,
    /// Advertise `::1` too for workloads.
    pub ipv6: bool,
    pub timing: LabTiming,
    /// Links between sites (`*` for any site); empty: no emulator.
    pub links: Vec<crate::scenario::LinkDef>,
    /// Service ports to forward between sites when there are links.
    pub probe_ports: Vec<u16>,
    /// Seed of the link emulator's randomness.
    pub seed: u64,
    /// SWIM over QUIC streams instead of sealed datagrams.
    pub swim_over_quic: bool,
    /// Worker threads of each agent's runtime (0: one per CPU). A lab packs many agents on one
    /// machine, so its default is [`LAB_WORKER_THREADS`].
    pub worker_threads: usize,
}

/// Worker threads per lab agent unless asked otherwise: one, as for a host agent held to one
/// CPU — many agents share the lab's machine.
pub const LAB_WORKER_THREADS: usize = 1;

fn one_worker() -> usize {
    LAB_WORKER_THREADS
}

/// Refuses a lab size `Lab::up` cannot lay out on `127.N.S.H` addresses.
pub fn check_size(sites: u32, hosts_per_site: u32) -> anyhow::Result<()> {
    if !(1..=9).contains(&sites) || !(1..=50).contains(&hosts_per_site) {
        bail!("a lab has 1 to 9 sites and 1 to 50 hosts per site");
    }
    Ok(())
}

/// The `siteagent` binary: `$SITEAGENT_BIN`, else next to this `sitectl`.
pub fn find_siteagent() -> anyhow::Result<PathBuf> {
    if let Some(p) = std::env::var_os("SITEAGENT_BIN") {
        return Ok(PathBuf::from(p));
    }
    let me = std::env::current_exe().context("cannot locate sitectl itself")?;
    let candidate = me.with_file_name("siteagent");
    let companions = ["siteagent", "fabric-guard", "fabric-demo", "fabric-emu"];
    if companions.iter().any(|b| !me.with_file_name(b).exists()) {
        build_companions(&me)?;
    }
    if candidate.exists() {
        Ok(candidate)
    } else {
        bail!(
            "cannot find the siteagent binary at {} (build it with `cargo build --workspace --bins` or set SITEAGENT_BIN)",
            candidate.display()
        )
    }
}

/// Under `cargo run -p sitectl`, which builds only `sitectl`, builds the binaries a lab runs
/// (agent, guard, demo service, link emulator) into the same target directory and profile.
fn build_companions(me: &Path) -> anyhow::Result<()> {
    let (Some(cargo), Some(manifest_dir)) = (
        std::env::var_os("CARGO"),
        std::env::var_os("CARGO_MANIFEST_DIR"),
    ) else {
        return Ok(());
    };
    let Some(profile_dir) = me.parent() else {
        return Ok(());
    };
    let Some(target_dir) = profile_dir.parent() else {
        return Ok(());
    };
    let mut cmd = std::process::Command::new(cargo);
    cmd.args(["build", "--workspace", "--bins"])
        .env("CARGO_TARGET_DIR", target_dir)
        .current_dir(manifest_dir);
    match profile_dir.file_name().and_then(|n| n.to_str()) {
        Some("debug") => {}
        Some("release") => {
            cmd.arg("--release");
        }
        Some(other) => {
            cmd.args(["--profile", other]);
        }
        None => return Ok(()),
    }
    eprintln!(
        "sitectl: building the agent, guard, demo service and link emulator (cargo build --workspace --bins)"
    );
    let status = cmd.status().context("running cargo build")?;
    if !status.success() {
        bail!("cargo build --workspace --bins failed ({status})");
    }
    Ok(())
}

fn addr(net: u8, site: u32, host: u32, port: u16) -> SocketAddr {
    SocketAddr::V4(SocketAddrV4::new(
        Ipv4Addr::new(127, net, site as u8, host as u8),
        port,
    ))
}

/// True when every agent address of a lab on `net` can be bound right now (one more site for a
/// witness is always checked).
fn net_is_free(net: u8, sites: u32, hosts: u32) -> bool {
    (1..=sites + 1).all(|s| {
        (1..=hosts).all(|h| {
            std::net::UdpSocket::bind(addr(net, s, h, WAN_PORT)).is_ok()
                && std::net::TcpListener::bind(addr(net, s, h, ADMIN_PORT)).is_ok()
        })
    })
}

/// A claim on a lab network while its agents start: between the check that its addresses are
/// free and the agents binding them, another `lab up` must not pick the same network. The claim
/// is an abstract Unix socket, so it needs no file and ends with the process that holds it.
struct NetClaim(#[allow(dead_code)] std::os::unix::net::UnixListener);

impl NetClaim {
    fn take(net: u8) -> Option<Self> {
        use std::os::linux::net::SocketAddrExt;
        let name = format!("fabric-lab-net-{net}");
        let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes()).ok()?;
        std::os::unix::net::UnixListener::bind_addr(&addr)
            .ok()
            .map(Self)
    }
}

fn pick_net(sites: u32, hosts: u32) -> anyhow::Result<(u8, NetClaim)> {
    // Start at 10 (the documented default) and search upwards, then from a pid-derived offset
    // so parallel labs rarely probe the same nets.
    let offset = (std::process::id() % 200) as u8;
    let candidates =
        std::iter::once(10u8).chain((0..230u8).map(|i| 20 + (offset.wrapping_add(i)) % 230));
    for net in candidates {
        let Some(claim) = NetClaim::take(net) else {
            continue;
        };
        if net_is_free(net, sites, hosts) {
            return Ok((net, claim));
        }
    }
    bail!("no free 127.N.0.0/16 network for {sites} sites × {hosts} hosts")
}

/// The lab's DNS zone and answer TTL (seconds).
pub const LAB_ZONE: &str = "fabric.test.";
pub const LAB_DNS_TTL: u32 = 2;
/// How often the lab's Raft leader runs the planner (`failover.plan_interval`).
pub const LAB_PLAN_INTERVAL: Duration = Duration::from_millis(200);

impl Lab {
    pub fn open(dir: &Path) -> anyhow::Result<Self> {
        let path = lab_file(dir);
        let text = fs::read_to_string(&path).with_context(|| {
            format!(
                "no lab in {} (cannot read {})",
                dir.display(),
                path.display()
            )
        })?;
        let file = toml::from_str(&text).map_err(|e| {
            anyhow!(
                "{}: {}",
                path.display(),
                crate::toml_file::describe(&e, &text)
            )
        })?;
        Ok(Self {
            dir: dir.to_path_buf(),
            file,
        })
    }

    /// Creates PKI, configs and data dirs, starts every agent and waits until the fabric is up.
    pub async fn up(dir: &Path, opts: &UpOptions) -> anyhow::Result<Self> {
        if lab_file(dir).exists() {
            bail!(
                "{} already holds a lab; stop it with `sitectl lab down --dir {0}` and use a new directory",
                dir.display()
            );
        }
        check_size(opts.sites, opts.hosts_per_site)?;
        fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
        // The claim is held until every agent has bound its addresses (the end of this function).
        let (net, _claim) = match opts.net {
            Some(n) => match NetClaim::take(n) {
                Some(claim) => (n, claim),
                None => bail!("another lab is starting on 127.{n}.0.0/16; pick another --net"),
            },
            None => pick_net(opts.sites, opts.hosts_per_site)?,
        };
        let file = LabFile::plan(opts, net)?;

        let pki_dir = dir.join("pki");
        pki::init_ca(&pki_dir, "lab")?;
        for a in &file.agents {
            let id = Identity::new(&a.node.to_string(), &a.site, Role::Agent)?;
            pki::issue(&pki_dir, &id, Validity::days(365))?;
        }
        let op = pki::issue(
            &pki_dir,
            &Identity::new(OPERATOR, "s1", Role::Operator)?,
            Validity::days(365),
        )?;
        let voters = file.voters();
        for a in &file.agents {
            let adir = dir.join(&a.dir);
            fs::create_dir_all(adir.join("data"))?;
            fs::write(
                adir.join("agent.toml"),
                agent_config_text(&file, a, &voters)?,
            )?;
        }
        fs::write(lab_file(dir), toml::to_string_pretty(&file)?)?;
        Context {
            endpoints: file.agents.iter().map(|a| a.admin).collect(),
            tls: TlsFiles {
                ca: PathBuf::from("pki/ca.crt"),
                cert: op.cert.strip_prefix(dir).unwrap_or(&op.cert).to_path_buf(),
                key: op.key.strip_prefix(dir).unwrap_or(&op.key).to_path_buf(),
            },
        }
        .save(&context_path(dir))?;

        let lab = Lab {
            dir: dir.to_path_buf(),
            file,
        };
        if lab.has_links() {
            lab.start_emu(&opts.siteagent, opts.seed).await?;
        }
        let mut children = Vec::new();
        for a in &lab.file.agents {
            children.push((a.node, lab.spawn(a, &opts.siteagent)?));
        }
        lab.wait_ready(opts.timeout, opts.progress, &mut children)
            .await?;
        Ok(lab)
    }

    pub fn agent(&self, node: u64) -> anyhow::Result<&LabAgent> {
        self.file
            .agents
            .iter()
            .find(|a| a.node == node)
            .ok_or_else(|| anyhow!("the lab has no node {node}"))
    }

    fn agent_dir(&self, a: &LabAgent) -> PathBuf {
        self.dir.join(&a.dir)
    }

    /// Starts one agent process in its own process group, logging to its `agent.log`. The
    /// returned child may be dropped: the agent keeps running and is found again by pid file.
    pub fn spawn(&self, a: &LabAgent, siteagent: &Path) -> anyhow::Result<std::process::Child> {
        if let Some(pid) = self.live_pid(a) {
            bail!("node {} is already running (pid {pid})", a.node);
        }
        let adir = self.agent_dir(a);
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(adir.join("agent.log"))?;
        use std::os::unix::process::CommandExt;
        let child = std::process::Command::new(siteagent)
            .arg("--config")
            .arg(adir.join("agent.toml"))
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .process_group(0)
            .spawn()
            .with_context(|| format!("cannot start {}", siteagent.display()))?;
        fs::write(adir.join("agent.pid"), child.id().to_string())?;
        Ok(child)
    }

    /// The pid of a running agent: the pid file names it and its command line is this agent's.
    pub fn live_pid(&self, a: &LabAgent) -> Option<i32> {
        let adir = self.agent_dir(a);
        running_pid(&adir.join("agent.pid"), &adir.join("agent.toml"))
    }

    pub fn processes(&self) -> Vec<AgentProcess> {
        self.file
            .agents
            .iter()
            .map(|a| {
                let live = self.live_pid(a);
                let recorded = fs::read_to_string(self.agent_dir(a).join("agent.pid"))
                    .ok()
                    .and_then(|p| p.trim().parse().ok());
                AgentProcess {
                    node: a.node,
                    site: a.site.clone(),
                    pid: live.or(recorded),
                    address: a.wan.to_string(),
                    admin: a.admin.to_string(),
                    roles: a.roles.clone(),
                    alive: live.is_some(),
                }
            })
            .collect()
    }

    /// SIGTERM to every live agent, SIGKILL after `grace`. Returns the nodes that needed SIGKILL.
    pub async fn down(&self, grace: Duration) -> Vec<u64> {
        let live: Vec<(u64, i32)> = self
            .file
            .agents
            .iter()
            .filter_map(|a| self.live_pid(a).map(|p| (a.node, p)))
            .collect();
        for (_, pid) in &live {
            let _ = kill(Pid::from_raw(*pid), Signal::SIGTERM);
        }
        let stopped = poll_until(grace, Duration::from_millis(100), "agents stopping", || {
            let remaining: Vec<(u64, i32)> = live
                .iter()
                .filter(|(node, _)| {
                    self.agent(*node)
                        .ok()
                        .and_then(|a| self.live_pid(a))
                        .is_some()
                })
                .copied()
                .collect();
            async move {
                if remaining.is_empty() {
                    Check::Ready(())
                } else {
                    Check::NotYet(remaining)
                }
            }
        })
        .await;
        let remaining = stopped.err().map(PollError::into_last).unwrap_or_default();
        for (_, pid) in &remaining {
            let _ = kill(Pid::from_raw(*pid), Signal::SIGKILL);
        }
        self.stop_emu(grace).await;
        remaining.into_iter().map(|(n, _)| n).collect()
    }

    pub fn context(&self) -> anyhow::Result<Context> {
        Context::load(&context_path(&self.dir))
    }

    /// Polls the agents until there is a leader and every host is registered; fails early when
    /// one of `children` (the agents just started) exits.
    pub async fn wait_ready(
        &self,
        timeout: Duration,
        progress: bool,
        children: &mut [(u64, std::process::Child)],
    ) -> anyhow::Result<Status> {
        let client = Client::new(&self.context()?)?;
        let expected = self
            .file
            .agents
            .iter()
            .filter(|a| a.roles.contains(&AgentRole::Host))
            .count();
        let voters: Vec<u64> = self.file.voters().iter().map(|a| a.node).collect();
        let bar = if progress {
            indicatif::ProgressBar::new(expected as u64 + 1)
        } else {
            indicatif::ProgressBar::hidden()
        };
        bar.set_style(
            indicatif::ProgressStyle::with_template("{spinner} {msg} [{bar:30}] {pos}/{len}")
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        );
        bar.enable_steady_tick(Duration::from_millis(120));
        let ready = poll_until(timeout, Duration::from_millis(200), "lab ready", || {
            let exited = children
                .iter_mut()
                .find_map(|(node, child)| Some((*node, child.try_wait().ok()??)));
            let (client, bar, voters) = (&client, &bar, &voters);
            async move {
                if let Some((node, status)) = exited {
                    return Check::Failed(self.start_failure(node, status));
                }
                let s = match client.get::<Status>("/v1/status").await {
                    Ok(s) => s,
                    Err(e) => return Check::NotYet(e.to_string()),
                };
                let registered = s.hosts.len();
                bar.set_position(registered as u64 + u64::from(s.leader.is_some()));
                bar.set_message(match s.leader {
                    Some(l) => format!("leader {l}, hosts registered"),
                    None => "electing a leader".into(),
                });
                // Every voter votes, in a committed single configuration: until then losing
                // one agent can leave the rest without a quorum (a change from 1 to 3
                // voters passes through a configuration only the first one can carry).
                let all_vote = s.membership_settled && voters.iter().all(|v| s.voters.contains(v));
                // Confirm through a linearizable read that the leader agrees.
                if s.leader.is_some()
                    && registered >= expected
                    && all_vote
                    && let Ok(hosts) = client
                        .get::<Vec<siteagent::api::HostView>>("/v1/hosts")
                        .await
                    && hosts.len() >= expected
                {
                    return Check::Ready(s);
                }
                Check::NotYet(format!(
                    "leader {:?}, {registered}/{expected} hosts registered, voters {:?} of {voters:?}{}",
                    s.leader,
                    s.voters,
                    if s.membership_settled {
                        ""
                    } else {
                        " (membership changing)"
                    }
                ))
            }
        })
        .await;
        bar.finish_and_clear();
        match ready {
            Ok(s) => Ok(s),
            Err(PollError::Failed { reason, .. }) => Err(anyhow!(reason)),
            Err(PollError::Timeout { last, .. }) => {
                bail!("lab not ready after {timeout:?}: {last}")
            }
        }
    }

    /// Why node `node` stopped during start-up: its exit status and the agent's own last
    /// error from its log (e.g. a config its `--check` refused), and where the log is.
    fn start_failure(&self, node: u64, status: std::process::ExitStatus) -> String {
        let log = self.dir.join(format!("nodes/n{node}/agent.log"));
        let said = fs::read_to_string(&log)
            .ok()
            .and_then(|text| last_error(&text))
            .map(|line| format!(": {line}"))
            .unwrap_or_default();
        format!(
            "node {node} exited during start-up ({status}){said}; see {}",
            log.display()
        )
    }

    /// The demo service (`fabric-demo`, found next to `sitectl` or at `$FABRIC_DEMO_BIN`),
    /// answering `GET /whoami` with its site, host and lease epoch, in `sites` (default: every
    /// host site of the lab, in order); checked as the fabric will check it.
    pub fn demo_spec(
        &self,
        name: &str,
        sites: &[String],
        port: u16,
        instances: u32,
    ) -> anyhow::Result<ServiceSpec> {
        let demo = siteagent::workload::find_demo()?;
        let sites: Vec<String> = if sites.is_empty() {
            (1..=self.file.sites).map(|s| format!("s{s}")).collect()
        } else {
            sites.to_vec()
        };
        let spec = ServiceSpec {
            name: name.to_string(),
            // Records (POST /write) go to a volume every host of a site shares:
            // <root>/<site>/<service>.
            kind: WorkloadKind::Process(ProcessSpec {
                command: demo.display().to_string(),
                args: vec![
                    "--volume-root".into(),
                    self.dir.join("volumes").display().to_string(),
                ],
                env: BTreeMap::new(),
                port,
            }),
            placement: Placement {
                sites,
                instances,
                anti_affinity: Vec::new(),
            },
            dns_name: Some(name.to_string()),
            resources: Capacity {
                cpu_millis: 100,
                memory_mib: 64,
            },
            volumes: Vec::new(),
            max_rpo: None,
        };
        spec.validate()
            .map_err(|e| anyhow!("service {name}: {e}"))?;
        Ok(spec)
    }

    /// Writes `spec` to `D/services/<name>.toml`, the file `sitectl service create` takes.
    pub fn write_spec(&self, spec: &ServiceSpec) -> anyhow::Result<PathBuf> {
        let dir = self.dir.join("services");
        fs::create_dir_all(&dir)?;
        let path = dir.join(format!("{}.toml", spec.name));
        let text =
            toml::to_string(spec).with_context(|| format!("the spec of service {}", spec.name))?;
        fs::write(&path, format!("# Written by `sitectl lab`.\n{text}"))?;
        Ok(path)
    }

    /// Writes `D/services/<name>.toml` for the demo service (see [`Lab::demo_spec`]).
    pub fn write_demo_spec(
        &self,
        name: &str,
        sites: &[String],
        port: u16,
        instances: u32,
    ) -> anyhow::Result<PathBuf> {
        self.write_spec(&self.demo_spec(name, sites, port, instances)?)
    }

    /// The site of the agent whose addresses include `ip`.
    pub fn site_of(&self, ip: std::net::IpAddr) -> Option<&str> {
        self.file
            .agents
            .iter()
            .find(|a| a.wan.ip() == ip)
            .map(|a| a.site.as_str())
    }

    /// DNS servers of `site`'s agents with the `dns` role, with their node ids.
    pub fn dns_servers(&self, site: &str) -> Vec<(u64, SocketAddr)> {
        self.file
            .agents
            .iter()
            .filter(|a| a.site == site && a.roles.contains(&AgentRole::Dns))
            .map(|a| (a.node, SocketAddr::new(a.wan.ip(), DNS_PORT)))
            .collect()
    }

    /// The first DNS server of `site` whose agent process is alive.
    pub fn live_dns_server(&self, site: &str) -> Option<SocketAddr> {
        self.dns_servers(site)
            .into_iter()
            .find(|(node, _)| self.agent(*node).is_ok_and(|a| self.live_pid(a).is_some()))
            .map(|(_, addr)| addr)
    }

    /// Agents of `site`.
    pub fn site_agents(&self, site: &str) -> Vec<&LabAgent> {
        self.file.agents.iter().filter(|a| a.site == site).collect()
    }

    /// Agents by node id.
    pub fn by_node(&self) -> BTreeMap<u64, &LabAgent> {
        self.file.agents.iter().map(|a| (a.node, a)).collect()
    }
}

/// The line of an agent's log that says why it stopped: the last `ERROR` line, else the last
/// line, without terminal colours.
pub fn last_error(log: &str) -> Option<String> {
    let lines: Vec<String> = log
        .lines()
        .map(strip_colours)
        .filter(|l| !l.trim().is_empty())
        .collect();
    lines
        .iter()
        .rev()
        .find(|l| l.contains("ERROR"))
        .or(lines.last())
        .map(|l| l.trim().to_string())
}

/// `text` without ANSI escape sequences (`ESC [ … letter`).
fn strip_colours(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// Reads and checks a service spec file; errors name the file, the field and the line.
pub fn read_spec(path: &Path) -> anyhow::Result<ServiceSpec> {
    let spec: ServiceSpec = crate::toml_file::read(path)?;
    spec.validate()
        .map_err(|e| anyhow!("{}: {e}", path.display()))?;
    Ok(spec)
}

/// The pid in `pid_file` if that process runs (not a zombie) with `config` on its command line,
/// so a recycled pid is never taken for ours.
pub(crate) fn running_pid(pid_file: &Path, config: &Path) -> Option<i32> {
    let pid: i32 = fs::read_to_string(pid_file).ok()?.trim().parse().ok()?;
    let cmdline = fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    let ours = String::from_utf8_lossy(&cmdline).contains(&*config.to_string_lossy());
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Field 3 is the state; `Z` is a zombie waiting to be reaped: not alive.
    let zombie = stat
        .rsplit(')')
        .next()
        .is_some_and(|s| s.trim_start().starts_with('Z'));
    (ours && !zombie).then_some(pid)
}

#[cfg(test)]
mod tests;
