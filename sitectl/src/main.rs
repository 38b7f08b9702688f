//! `sitectl`: drive the fabric — PKI, inventory, the local lab, benchmarks.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use siteagent::api::*;
use sitectl::client::Client;
use sitectl::context::{self, Context};
use sitectl::lab::Lab;
use sitectl::ops::{self, HostCmd, MaintenanceCmd, ServiceCmd};
use sitectl::out;
use sitectl::output::{Output, now_ms, print, views};
use wan::pki::{self, Validity};
use wan::{Identity, Role};

#[derive(Parser)]
#[command(version, about = "Operate a geo-distributed fabric of site agents")]
struct Cli {
    /// Context file with the agents' admin endpoints and the operator certificate
    /// (default: $SITECTL_CONTEXT).
    #[arg(long, global = true)]
    context: Option<PathBuf>,
    /// Ask this admin endpoint (ip:port) instead of the context's list.
    #[arg(long, global = true)]
    endpoint: Option<std::net::SocketAddr>,
    /// Output format.
    #[arg(long, short, global = true, value_enum, default_value_t = Output::Table)]
    output: Output,
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// The fabric's certificate authority.
    #[command(subcommand)]
    Pki(PkiCmd),
    /// Leader, term, voters and hosts as one agent sees them.
    Status,
    /// Sites with their priority, state and hosts.
    Sites {
        /// Read the answering agent's copy instead of a linearizable read.
        #[arg(long)]
        local: bool,
    },
    /// Hosts with their site, state and last report.
    Hosts {
        #[arg(long)]
        local: bool,
    },
    /// The fabric's event log.
    Events {
        #[arg(long)]
        local: bool,
    },
    /// The whole replicated state as JSON.
    State {
        #[arg(long)]
        local: bool,
    },
    /// Change a site: priority, maintenance.
    #[command(subcommand)]
    Site(SiteCmd),
    /// Services: create, list, update, delete.
    #[command(subcommand)]
    Service(ServiceCmd),
    /// Services with their owner and instances (same as `service list`).
    Services {
        #[arg(long)]
        local: bool,
    },
    /// Block volumes: create, list, show, delete, promote.
    #[command(subcommand)]
    Volume(sitectl::volumecmd::VolumeCmd),
    /// Volumes with their primary and copies (same as `volume list`).
    Volumes {
        #[arg(long)]
        local: bool,
    },
    /// Drain or undrain a host.
    #[command(subcommand)]
    Host(HostCmd),
    /// Planned move of a service to another site: stop at the source, confirm, start at the target.
    Switchover {
        service: String,
        #[arg(long)]
        to: String,
        #[arg(long)]
        dry_run: bool,
    },
    /// Declare a site lost and move its services to the next site.
    Failover {
        #[arg(long)]
        site: String,
        /// Needed when the fabric still sees the site alive.
        #[arg(long)]
        force: bool,
        #[arg(long)]
        dry_run: bool,
    },
    /// Move a service back to the first site of its placement list (planned).
    Failback {
        service: String,
        #[arg(long)]
        dry_run: bool,
    },
    /// Add a note to the event log.
    Note {
        /// The note.
        message: String,
    },
    /// Raft membership.
    #[command(subcommand)]
    Members(MembersCmd),
    /// A local fabric of real agent processes on loopback.
    #[command(subcommand)]
    Lab(sitectl::labcmd::LabCmd),
    /// DR drills from scenario files.
    #[command(subcommand)]
    Drill(DrillCmd),
    /// Benchmarks: against a running fabric (raft), or in-process (replication).
    #[command(subcommand)]
    Bench(BenchCmd),
    /// Simulates a fleet (deterministic for a seed): the real SWIM detector, site views, site
    /// watch and health quorum over a simulated network with loss, host and site crashes and a
    /// cut link; prints detector messages per host per second, detection p50/p99, false
    /// verdicts and replicated writes per host failure.
    Sim {
        #[arg(long, default_value_t = 3)]
        sites: usize,
        #[arg(long, default_value_t = 10)]
        hosts_per_site: usize,
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// Probability that any one message is lost (0.05 = 5 %).
        #[arg(long, default_value_t = 0.0)]
        loss: f64,
        /// Simulated time.
        #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
        duration: Duration,
        /// Run the table of the README instead: 100, 1 000 and 10 000 hosts at 0, 1 and 5 %
        /// loss (--sites, --hosts-per-site and --loss are ignored).
        #[arg(long)]
        sweep: bool,
    },
}

#[derive(Subcommand)]
enum PkiCmd {
    /// Create a fabric CA in DIR.
    Init {
        #[arg(long)]
        dir: PathBuf,
        /// Name of the fabric, shown in the CA certificate.
        #[arg(long, default_value = "fabric")]
        name: String,
    },
    /// Issue a certificate for an agent or an operator.
    Issue {
        #[arg(long)]
        dir: PathBuf,
        /// Agents: the Raft node id. Operators: a name.
        #[arg(long)]
        node: String,
        #[arg(long)]
        site: String,
        #[arg(long, value_parser = ["agent", "operator"])]
        role: String,
        /// Validity in days.
        #[arg(long, default_value_t = 365)]
        days: u32,
    },
}

#[derive(Subcommand)]
enum SiteCmd {
    /// Create a site or change its priority.
    Set {
        name: String,
        #[arg(long)]
        priority: u32,
    },
    /// Put a site in maintenance (evacuating it) or bring it back.
    #[command(subcommand)]
    Maintenance(MaintenanceCmd),
}

#[derive(Subcommand)]
enum MembersCmd {
    /// List Raft members.
    List,
    /// Make a learner a voter (sent to the leader).
    Promote { node: u64 },
    /// Remove a member (sent to the leader).
    Remove { node: u64 },
}

#[derive(Subcommand)]
enum DrillCmd {
    /// Run a drill: start its lab, play its timeline while probing, report, tear down. Exits 0
    /// only when every expectation held.
    Run {
        /// The scenario file (see scenarios/README.md).
        file: PathBuf,
        /// Where report.json and timeline.svg go (default: drill-reports/<name>).
        #[arg(long)]
        report_dir: Option<PathBuf>,
        /// Seed of the link emulator's randomness.
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// Shrink step times and waits (down to the scenario's min_time_scale).
        #[arg(long, default_value_t = 1.0)]
        time_scale: f64,
        /// Bring the service up in its recovery site under a test name instead of playing the
        /// timeline; production probes must see no failure.
        #[arg(long)]
        test_failover: bool,
        /// Keep the lab in this directory instead of a temporary one (it is still stopped).
        #[arg(long)]
        lab_dir: Option<PathBuf>,
    },
    /// A randomized nemesis: a seeded schedule of faults (kill/restart hosts and sites,
    /// freeze, partitions both ways and one way, degraded links, the Raft leader killed,
    /// switchovers and drains in flight) played on a fresh lab, then the chaos invariants
    /// checked. The same --seed and --faults replay the same schedule.
    Chaos(sitectl::chaoscmd::ChaosArgs),
    /// Check a scenario file without running it.
    Check { file: PathBuf },
    /// Show a stored report again (the summary, or the JSON with -o json); --svg redraws its
    /// timeline picture.
    Report {
        /// A report.json written by `drill run`.
        file: PathBuf,
        /// Write the timeline picture here.
        #[arg(long)]
        svg: Option<PathBuf>,
    },
}

#[derive(Subcommand)]
enum BenchCmd {
    /// Commit latency (p50/p99) and writes/s through the leader's admin API.
    Raft {
        /// A lab directory (its context is used); or pass --context.
        #[arg(long)]
        dir: Option<PathBuf>,
        /// Seconds per run.
        #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
        duration: Duration,
        /// Concurrent clients, one run each.
        #[arg(long, value_delimiter = ',', default_value = "1,32")]
        clients: Vec<usize>,
    },
    /// Volume replication over an emulated WAN, in-process (no lab): sync write latency,
    /// async throughput, unreplicated overhead, resync bytes, memory while a replica is away.
    Replication {
        /// Round-trip times to emulate (half each way), one set of figures each.
        #[arg(long, value_delimiter = ',', default_value = "10ms,40ms", value_parser = humantime::parse_duration)]
        rtt: Vec<Duration>,
        /// Link rate each way: 200mbit, 1gbit, ...
        #[arg(long, default_value = "200mbit", value_parser = emu::parse_rate)]
        rate: u64,
        /// Bytes of 1 MiB sequential writes for throughput and overhead (KiB, MiB, GiB).
        #[arg(long, default_value = "64MiB", value_parser = sitectl::volumecmd::parse_size)]
        size: u64,
        /// 4 KiB FUA writes per latency figure.
        #[arg(long, default_value_t = 300)]
        writes: usize,
        /// Bytes written in scattered 1 MiB writes while the replica is cut (resync figures).
        #[arg(long, default_value = "16MiB", value_parser = sitectl::volumecmd::parse_size)]
        changed: u64,
        /// Bytes written while the replica is away (memory figure).
        #[arg(long, default_value = "512MiB", value_parser = sitectl::volumecmd::parse_size)]
        away: u64,
        /// The engine's journal bound per replica (the agent's default is 64 MiB).
        #[arg(long, default_value = "64MiB", value_parser = sitectl::volumecmd::parse_size)]
        journal_limit: u64,
        /// Where the work directory with the image files goes (default: the current
        /// directory); it is removed afterwards. Use a real disk: fsync on tmpfs is free.
        #[arg(long)]
        dir: Option<PathBuf>,
    },
    /// Idle cost per agent: starts a lab of SITES x 1 agents, then one of SITES x
    /// HOSTS_PER_SITE (each in a temporary directory, removed afterwards), and measures CPU and
    /// WAN requests per agent over a window.
    Fleet {
        #[arg(long, default_value_t = 3)]
        sites: u32,
        #[arg(long, default_value_t = 20)]
        hosts_per_site: u32,
        /// Idle time after a lab is up, before measuring.
        #[arg(long, default_value = "20s", value_parser = humantime::parse_duration)]
        settle: Duration,
        /// Measurement window.
        #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
        window: Duration,
        /// Run SWIM over QUIC streams instead of sealed datagrams, to compare.
        #[arg(long)]
        swim_over_quic: bool,
        /// Worker threads of each agent's runtime; 0: one per CPU (the agent's own default).
        #[arg(long, default_value_t = scenarios::lab::LAB_WORKER_THREADS)]
        worker_threads: usize,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("SITECTL_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("error")),
        )
        .with_writer(std::io::stderr)
        .init();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("sitectl: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("sitectl: {}", format!("{e:#}").replace('\n', " "));
            ExitCode::FAILURE
        }
    }
}

fn client(flag: Option<PathBuf>, endpoint: Option<std::net::SocketAddr>) -> anyhow::Result<Client> {
    let path = context::resolve(flag)?;
    let mut ctx = Context::load(&path)?;
    if let Some(ep) = endpoint {
        ctx.endpoints = vec![ep];
    }
    Client::new(&ctx)
}

fn read_path(local: bool, path: &str) -> String {
    if local {
        format!("{path}?local=true")
    } else {
        path.to_string()
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let out = cli.output;
    match cli.command {
        Cmd::Pki(PkiCmd::Init { dir, name }) => {
            let ca = pki::init_ca(&dir, &name)?;
            out!("created fabric CA {}", ca.display());
        }
        Cmd::Pki(PkiCmd::Issue {
            dir,
            node,
            site,
            role,
            days,
        }) => {
            let role: Role = role.parse()?;
            let id = Identity::new(&node, &site, role)?;
            let issued = pki::issue(&dir, &id, Validity::days(days))?;
            out!(
                "issued {} for {id}: {} {}",
                id.uri(),
                issued.cert.display(),
                issued.key.display()
            );
        }
        Cmd::Status => {
            let s: Status = client(cli.context, cli.endpoint)?.get("/v1/status").await?;
            print(out, &s, views::status)?;
        }
        Cmd::Sites { local } => {
            let sites: Vec<SiteView> = client(cli.context, cli.endpoint)?
                .get(&read_path(local, "/v1/sites"))
                .await?;
            print(out, sites.as_slice(), |s| views::sites(s, now_ms()))?;
        }
        Cmd::Hosts { local } => {
            let hosts: Vec<HostView> = client(cli.context, cli.endpoint)?
                .get(&read_path(local, "/v1/hosts"))
                .await?;
            print(out, hosts.as_slice(), |h| views::hosts(h, now_ms()))?;
        }
        Cmd::Events { local } => {
            let events: Vec<EventView> = client(cli.context, cli.endpoint)?
                .get(&read_path(local, "/v1/events"))
                .await?;
            print(out, events.as_slice(), |e| views::events(e, now_ms()))?;
        }
        Cmd::State { local } => {
            let state: serde_json::Value = client(cli.context, cli.endpoint)?
                .get(&read_path(local, "/v1/state"))
                .await?;
            out!("{}", serde_json::to_string_pretty(&state)?);
        }
        Cmd::Site(SiteCmd::Set { name, priority }) => {
            let site = SiteUpsert { name, priority };
            let r: WriteResult = client(cli.context, cli.endpoint)?
                .post("/v1/sites", &site)
                .await?;
            print(out, &r, |r| views::site_set(&site, r))?;
        }
        Cmd::Site(SiteCmd::Maintenance(cmd)) => {
            ops::maintenance(&client(cli.context, cli.endpoint)?, out, cmd).await?;
        }
        Cmd::Service(cmd) => ops::service(&client(cli.context, cli.endpoint)?, out, cmd).await?,
        Cmd::Services { local } => {
            ops::service(
                &client(cli.context, cli.endpoint)?,
                out,
                ServiceCmd::List { local },
            )
            .await?
        }
        Cmd::Volume(cmd) => {
            sitectl::volumecmd::volume(&client(cli.context, cli.endpoint)?, out, cmd).await?
        }
        Cmd::Volumes { local } => {
            let cmd = sitectl::volumecmd::VolumeCmd::List { local };
            sitectl::volumecmd::volume(&client(cli.context, cli.endpoint)?, out, cmd).await?
        }
        Cmd::Host(cmd) => ops::host(&client(cli.context, cli.endpoint)?, out, cmd).await?,
        Cmd::Switchover {
            service,
            to,
            dry_run,
        } => {
            let c = client(cli.context, cli.endpoint)?;
            ops::switchover(&c, out, &service, to, dry_run).await?
        }
        Cmd::Failover {
            site,
            force,
            dry_run,
        } => {
            let c = client(cli.context, cli.endpoint)?;
            ops::failover(&c, out, &site, force, dry_run).await?
        }
        Cmd::Failback { service, dry_run } => {
            let c = client(cli.context, cli.endpoint)?;
            ops::failback(&c, out, &service, dry_run).await?
        }
        Cmd::Note { message } => {
            let r: WriteResult = client(cli.context, cli.endpoint)?
                .post("/v1/events", &EventNote { message })
                .await?;
            print(out, &r, views::revision)?;
        }
        Cmd::Members(cmd) => {
            let c = client(cli.context, cli.endpoint)?;
            let path = match cmd {
                MembersCmd::List => None,
                MembersCmd::Promote { node } => Some(format!("/v1/members/{node}/promote")),
                MembersCmd::Remove { node } => Some(format!("/v1/members/{node}/remove")),
            };
            if let Some(path) = path {
                let c = c.leader().await?;
                let r: WriteResult = c.post(&path, &serde_json::json!({})).await?;
                print(out, &r, views::revision)?;
            } else {
                let members: Vec<MemberView> = c.get("/v1/members").await?;
                print(out, members.as_slice(), views::members)?;
            }
        }
        Cmd::Lab(cmd) => sitectl::labcmd::lab_command(cmd, out).await?,
        Cmd::Drill(DrillCmd::Chaos(args)) => sitectl::chaoscmd::chaos(args, out).await?,
        Cmd::Drill(DrillCmd::Check { file }) => {
            let s = scenarios::scenario::Scenario::load(&file)?;
            out!(
                "{}: ok ({} steps, {} sites)",
                file.display(),
                s.steps.len(),
                s.all_sites().len()
            );
        }
        Cmd::Drill(DrillCmd::Report { file, svg }) => {
            let report = scenarios::archive::load(&file)?;
            if let Some(svg) = svg {
                std::fs::write(&svg, scenarios::svg::timeline(&report))
                    .with_context(|| format!("writing {}", svg.display()))?;
            }
            match out {
                Output::Json => out!("{}", serde_json::to_string_pretty(&report)?),
                Output::Table => out!("{}", report.summary_table()),
            }
        }
        Cmd::Drill(DrillCmd::Run {
            file,
            report_dir,
            seed,
            time_scale,
            test_failover,
            lab_dir,
        }) => {
            let scenario = scenarios::scenario::Scenario::load(&file)?;
            let opts = scenarios::runner::RunOptions {
                report_dir: report_dir
                    .unwrap_or_else(|| PathBuf::from("drill-reports").join(&scenario.name)),
                seed,
                time_scale,
                test_failover,
                lab_dir,
                siteagent: sitectl::lab::find_siteagent()?,
                progress: out == Output::Table,
            };
            let cancel = tokio_util::sync::CancellationToken::new();
            let on_signal = cancel.clone();
            tokio::spawn(async move {
                if tokio::signal::ctrl_c().await.is_ok() {
                    eprintln!("sitectl: interrupted; tearing the lab down");
                    on_signal.cancel();
                }
            });
            let outcome = scenarios::runner::run(&scenario, &opts, cancel).await?;
            match out {
                Output::Json => out!("{}", serde_json::to_string_pretty(&outcome.report)?),
                Output::Table => {
                    out!("{}", outcome.report.summary_table());
                    out!(
                        "report: {}  timeline: {}",
                        outcome.json.display(),
                        outcome.svg.display()
                    );
                }
            }
            if !outcome.report.passed {
                anyhow::bail!(
                    "drill {} failed: {}",
                    scenario.name,
                    views::failed_expectations(&outcome.report)
                );
            }
        }
        Cmd::Bench(BenchCmd::Raft {
            dir,
            duration,
            clients,
        }) => {
            let c = match dir {
                Some(dir) => Client::new(&Lab::open(&dir)?.context()?)?,
                None => client(cli.context, cli.endpoint)?,
            };
            let mut runs = Vec::new();
            for n in clients {
                if n == 0 {
                    anyhow::bail!("--clients: 0 is not a number of clients");
                }
                eprintln!("bench raft: {n} client(s) for {duration:?}...");
                runs.push(sitectl::bench::raft(&c, n, duration).await?);
            }
            print(out, runs.as_slice(), views::bench)?;
        }
        Cmd::Bench(BenchCmd::Replication {
            rtt,
            rate,
            size,
            writes,
            changed,
            away,
            journal_limit,
            dir,
        }) => {
            let settings = sitectl::bench::replication::Settings {
                rtts: rtt,
                rate_bps: rate,
                size,
                writes,
                changed,
                away,
                journal_limit,
                dir,
            };
            let progress = |what: &str| eprintln!("bench replication: {what}...");
            let report = sitectl::bench::replication::replication(&settings, &progress).await?;
            print(out, &report, views::replication_bench)?;
        }
        Cmd::Sim {
            sites,
            hosts_per_site,
            seed,
            loss,
            duration,
            sweep,
        } => {
            if !(0.0..1.0).contains(&loss) {
                anyhow::bail!("--loss must be at least 0 and below 1 (0.05 is 5 %), not {loss}");
            }
            if sites == 0 || hosts_per_site == 0 || sites * hosts_per_site > 100_000 {
                anyhow::bail!(
                    "--sites and --hosts-per-site must be at least 1, and at most 100 000 hosts in all"
                );
            }
            let base = failover::sim::SimConfig {
                sites,
                hosts_per_site,
                seed,
                loss,
                duration,
                ..Default::default()
            };
            let configs = if sweep {
                failover::sim::sweep_configs(&base)
            } else {
                vec![base]
            };
            let mut reports = Vec::new();
            for c in &configs {
                let started = std::time::Instant::now();
                let r = failover::sim::run(c);
                eprintln!(
                    "sim: {} sites x {} hosts, loss {} %: {:.1} s wall time",
                    c.sites,
                    c.hosts_per_site,
                    c.loss * 100.0,
                    started.elapsed().as_secs_f64()
                );
                reports.push(r);
            }
            print(out, reports.as_slice(), |r| {
                if let [one] = r {
                    one.to_string()
                } else {
                    failover::sim::Table(r).to_string()
                }
            })?;
        }
        Cmd::Bench(BenchCmd::Fleet {
            sites,
            hosts_per_site,
            settle,
            window,
            swim_over_quic,
            worker_threads,
        }) => {
            // Both labs are checked before the first starts.
            scenarios::lab::check_size(sites, hosts_per_site)?;
            let settings = sitectl::bench::fleet::Settings {
                sites,
                hosts_per_site,
                settle,
                window,
                siteagent: scenarios::lab::find_siteagent()?,
                swim_over_quic,
                worker_threads,
            };
            let progress = |what: &str| eprintln!("bench fleet: {what}...");
            let report = sitectl::bench::fleet::fleet(&settings, &progress).await?;
            print(out, &report, views::fleet_bench)?;
        }
    }
    Ok(())
}
