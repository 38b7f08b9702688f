//! `sitectl lab …`: a local fabric of real agent processes, and the emulated links between its
//! sites.

use std::path::PathBuf;
use std::time::Duration;

use clap::Subcommand;

use crate::lab::{self, Lab, UpOptions};
use crate::ops::{self, ServiceCmd};
use crate::out;
use crate::output::{Output, print, views};
use scenarios::client::Client;

#[derive(Subcommand)]
pub enum LabCmd {
    /// Create and start a lab in DIR.
    Up {
        #[arg(long)]
        dir: PathBuf,
        #[arg(long, default_value_t = 3)]
        sites: u32,
        #[arg(long, default_value_t = 1)]
        hosts_per_site: u32,
        /// Second octet of the agents' 127.N.S.H addresses (default: the first free from 10).
        #[arg(long)]
        net: Option<u8>,
        /// How long to wait for a leader and every host.
        #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
        timeout: Duration,
        /// Add a witness: one voting agent without workloads in its own site `w`.
        #[arg(long)]
        witness: bool,
        /// Hosts also advertise ::1 for their workloads (AAAA answers).
        #[arg(long)]
        ipv6: bool,
        /// SWIM inside a site over the WAN's QUIC streams instead of sealed UDP datagrams.
        #[arg(long)]
        swim_over_quic: bool,
        /// Worker threads of each agent's runtime; 0: one per CPU (the agent's own default).
        #[arg(long, default_value_t = scenarios::lab::LAB_WORKER_THREADS)]
        worker_threads: usize,
        /// A topology file: a drill scenario (its `[topology]` is used) or a bare `[topology]`
        /// table (sites, hosts, witness, timing, links at the top level); it replaces --sites,
        /// --hosts-per-site, --witness and --ipv6. Links put the link emulator between sites.
        #[arg(long)]
        topology: Option<PathBuf>,
        /// Service ports to forward between sites when the topology has links.
        #[arg(long, value_delimiter = ',', default_value = "8080")]
        ports: Vec<u16>,
        /// Seed of the link emulator's randomness (jitter, loss).
        #[arg(long, default_value_t = 1)]
        seed: u64,
    },
    /// Change the emulated link between two sites while the lab runs.
    #[command(subcommand)]
    Link(LinkCmd),
    /// Declare the demo service (fabric-demo answering GET /whoami) in a running lab.
    Demo {
        #[arg(long)]
        dir: PathBuf,
        #[arg(long, default_value = "web")]
        name: String,
        /// Sites in priority order (default: every site of the lab).
        #[arg(long, value_delimiter = ',')]
        sites: Vec<String>,
        #[arg(long, default_value_t = 8080)]
        port: u16,
        #[arg(long, default_value_t = 1)]
        instances: u32,
        /// Keep the records on a replicated volume `<name>-data` of this size (e.g. 64MiB),
        /// primary at the first site, created before the service.
        #[arg(long, value_parser = crate::volumecmd::parse_size)]
        volume: Option<u64>,
        /// A replica of the volume: `SITE:sync` or `SITE:async`; repeatable.
        #[arg(long = "replica", requires = "volume")]
        replicas: Vec<consensus::state::ReplicaSpec>,
        /// Most data a failover may lose (the planner's RPO gate), e.g. 5s.
        #[arg(long, value_parser = humantime::parse_duration)]
        max_rpo: Option<Duration>,
        #[arg(long)]
        dry_run: bool,
    },
    /// Every agent of the lab, with pid and liveness.
    Status {
        #[arg(long)]
        dir: PathBuf,
    },
    /// Stop every agent: SIGTERM, then SIGKILL after the grace period.
    Down {
        #[arg(long)]
        dir: PathBuf,
        #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
        grace: Duration,
    },
    /// Start a stopped agent again, with its data.
    Start {
        #[arg(long)]
        dir: PathBuf,
        #[arg(long)]
        node: u64,
    },
}

#[derive(Subcommand)]
pub enum LinkCmd {
    /// Set delay, jitter, loss and rate of the link between A and B (both directions; a partition
    /// stays as it is).
    Set {
        /// The lab directory (its links were made by `lab up --topology`).
        #[arg(long)]
        dir: PathBuf,
        /// One site of the link (e.g. `s1`).
        a: String,
        /// The other site.
        b: String,
        /// One-way delay added to each direction (`40ms`).
        #[arg(long, value_parser = humantime::parse_duration)]
        delay: Option<Duration>,
        /// Random extra delay of up to this much (`5ms`); never reorders a TCP stream.
        #[arg(long, value_parser = humantime::parse_duration)]
        jitter: Option<Duration>,
        /// `1%` or `0.01`.
        #[arg(long)]
        loss: Option<String>,
        /// `100mbit`, `500kbit`, `1gbit` or bits per second.
        #[arg(long)]
        rate: Option<String>,
    },
    /// Drop everything between A and B.
    Partition {
        /// The lab directory (its links were made by `lab up --topology`).
        #[arg(long)]
        dir: PathBuf,
        /// One site of the link (e.g. `s1`).
        a: String,
        /// The other site.
        b: String,
    },
    /// Undo a partition between A and B.
    Heal {
        /// The lab directory (its links were made by `lab up --topology`).
        #[arg(long)]
        dir: PathBuf,
        /// One site of the link (e.g. `s1`).
        a: String,
        /// The other site.
        b: String,
    },
    /// Links with their parameters and counters.
    Status {
        /// The lab directory.
        #[arg(long)]
        dir: PathBuf,
    },
}

/// Every agent of a lab with pid, address, roles and liveness.
fn print_processes(out: Output, lab: &Lab) -> anyhow::Result<()> {
    print(out, lab.processes().as_slice(), views::lab_processes)
}

pub async fn lab_command(cmd: LabCmd, out: Output) -> anyhow::Result<()> {
    match cmd {
        LabCmd::Up {
            dir,
            sites,
            hosts_per_site,
            net,
            timeout,
            witness,
            ipv6,
            swim_over_quic,
            worker_threads,
            topology,
            ports,
            seed,
        } => {
            let mut opts = UpOptions {
                sites,
                hosts_per_site,
                net,
                timeout,
                witness,
                ipv6,
                timing: lab::LabTiming::default(),
                links: Vec::new(),
                probe_ports: ports,
                seed,
                swim_over_quic,
                worker_threads,
                siteagent: lab::find_siteagent()?,
                progress: out == Output::Table
                    && std::io::IsTerminal::is_terminal(&std::io::stderr()),
            };
            if let Some(path) = topology {
                let t = read_topology(&path)?;
                opts.sites = t.sites;
                opts.hosts_per_site = t.hosts_per_site;
                opts.witness = t.witness;
                opts.ipv6 = t.ipv6;
                opts.timing = scenarios::runner::lab_timing(&t.timing);
                opts.links = t.links;
            }
            let lab = Lab::up(&dir, &opts).await?;
            print_processes(out, &lab)?;
            if out == Output::Table {
                out!(
                    "lab is up; try: SITECTL_CONTEXT={} sitectl status",
                    lab::context_path(&dir).display()
                );
            }
        }
        LabCmd::Status { dir } => print_processes(out, &Lab::open(&dir)?)?,
        LabCmd::Link(cmd) => link_command(cmd, out).await?,
        LabCmd::Demo {
            dir,
            name,
            sites,
            port,
            instances,
            volume,
            replicas,
            max_rpo,
            dry_run,
        } => {
            let lab = Lab::open(&dir)?;
            let c = Client::new(&lab.context()?)?;
            let mut spec = lab.demo_spec(&name, &sites, port, instances)?;
            spec.max_rpo = max_rpo;
            if let Some(size) = volume {
                let v = consensus::state::VolumeSpec {
                    name: scenarios::scenario::volume::volume_name(&name),
                    size,
                    block_size: 4096,
                    primary: spec.placement.sites[0].clone(),
                    replicas,
                };
                let r: siteagent::api::OperationResult = c
                    .post(&format!("/v1/volumes?dry_run={dry_run}"), &v)
                    .await
                    .map_err(|e| anyhow::anyhow!("creating volume {}: {e:#}", v.name))?;
                crate::ops::print_operation(out, &r)?;
                spec.volumes = vec![v.name];
            }
            let path = lab.write_spec(&spec)?;
            ops::service(
                &c,
                out,
                ServiceCmd::Create {
                    file: path,
                    dry_run,
                },
            )
            .await?;
        }
        LabCmd::Down { dir, grace } => {
            let lab = Lab::open(&dir)?;
            let killed = lab.down(grace).await;
            if killed.is_empty() {
                out!("all agents stopped");
            } else {
                out!("all agents stopped; nodes {killed:?} needed SIGKILL after {grace:?}");
            }
        }
        LabCmd::Start { dir, node } => {
            let lab = Lab::open(&dir)?;
            let agent = lab.agent(node)?;
            let child = lab.spawn(agent, &lab::find_siteagent()?)?;
            out!("started node {node} (pid {})", child.id());
        }
    }
    Ok(())
}

/// Reads a topology file (a drill scenario or a bare `[topology]` table) and checks its links.
fn read_topology(path: &std::path::Path) -> anyhow::Result<scenarios::scenario::Topology> {
    let t = scenarios::scenario::Topology::load(path)?;
    lab::resolve_links(&t.all_sites(), &t.links)
        .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    Ok(t)
}

async fn link_command(cmd: LinkCmd, out: Output) -> anyhow::Result<()> {
    let (dir, a, b) = match &cmd {
        LinkCmd::Set { dir, a, b, .. }
        | LinkCmd::Partition { dir, a, b }
        | LinkCmd::Heal { dir, a, b } => (dir.clone(), a.clone(), b.clone()),
        LinkCmd::Status { dir } => (dir.clone(), String::new(), String::new()),
    };
    let lab = Lab::open(&dir)?;
    match cmd {
        LinkCmd::Set {
            delay,
            jitter,
            loss,
            rate,
            ..
        } => {
            lab.degrade(&a, &b, delay, jitter, loss.as_deref(), rate.as_deref())
                .await?;
            out!("link {a}-{b} set");
        }
        LinkCmd::Partition { .. } => {
            lab.partition(&a, &b, true).await?;
            out!("link {a}-{b} partitioned");
        }
        LinkCmd::Heal { .. } => {
            lab.partition(&a, &b, false).await?;
            out!("link {a}-{b} healed");
        }
        LinkCmd::Status { .. } => {
            let status = lab.link_status().await?;
            print(out, &status, views::links)?;
        }
    }
    Ok(())
}
