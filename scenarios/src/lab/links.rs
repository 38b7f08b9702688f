//! Links between the lab's sites through the link emulator (`fabric-emu`).
//!
//! With links, every agent reaches an agent of another site through an emulator listener of
//! its own directed site pair: the agent of site X dials `127.<net>.<100+10x+y>.<h>:7100` for
//! host `h` of site `y` (its `[wan] routes` say so), and the emulator forwards to the real
//! address with the X→Y impairment, replies with Y→X. Client probes from site X to a service
//! port of a host in site Y go through a TCP forwarder at the same kind of address.
//!
//! Invariant: fault injection stays outside the agents — they are unmodified processes whose
//! configs only name where to send; partitions and delays are changed in the emulator.

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context as _, anyhow, bail};
use emu::config::{EmuConfig, ForwardConfig, LinkConfig};
use emu::control::{self, Request};
use emu::params::{ParamsSpec, parse_loss, parse_rate};
use emu::table::{Direction, ForwardKind};
use serde::{Deserialize, Serialize};

use super::{AgentRole, LabAgent, LabFile, WAN_PORT};
use crate::lab::Lab;
use crate::poll::{Check, PollError, poll_until};
use crate::scenario::LinkDef;

/// One link of a lab (both directions alike), as `lab.toml` records it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LabLink {
    pub a: String,
    pub b: String,
    #[serde(with = "humantime_serde", default)]
    pub delay: Duration,
    #[serde(with = "humantime_serde", default)]
    pub jitter: Duration,
    #[serde(default)]
    pub loss: f64,
    #[serde(default)]
    pub rate_bps: Option<u64>,
}

/// Every pair of `sites` with the parameters `defs` give it (`*` matches any site; later
/// definitions override earlier ones). No definitions: no links.
pub fn resolve(sites: &[String], defs: &[LinkDef]) -> anyhow::Result<Vec<LabLink>> {
    if defs.is_empty() {
        return Ok(Vec::new());
    }
    let mut links = Vec::new();
    for (i, a) in sites.iter().enumerate() {
        for b in &sites[i + 1..] {
            let mut link = LabLink {
                a: a.clone(),
                b: b.clone(),
                delay: Duration::ZERO,
                jitter: Duration::ZERO,
                loss: 0.0,
                rate_bps: None,
            };
            let hits = |x: &str, y: &str| {
                (x == "*" || x == a) && (y == "*" || y == b)
                    || (x == "*" || x == b) && (y == "*" || y == a)
            };
            for d in defs.iter().filter(|d| hits(&d.a, &d.b)) {
                if let Some(v) = d.delay {
                    link.delay = v;
                }
                if let Some(v) = d.jitter {
                    link.jitter = v;
                }
                if let Some(v) = &d.loss {
                    link.loss = parse_loss(v).map_err(|e| anyhow!("link {}-{}: {e}", d.a, d.b))?;
                }
                if let Some(v) = &d.rate {
                    link.rate_bps =
                        Some(parse_rate(v).map_err(|e| anyhow!("link {}-{}: {e}", d.a, d.b))?);
                }
            }
            links.push(link);
        }
    }
    Ok(links)
}

/// Index of a site in addresses: `sN` → N, the witness site `w` → sites + 1.
fn site_index(file: &LabFile, site: &str) -> u8 {
    site.strip_prefix('s')
        .and_then(|n| n.parse::<u8>().ok())
        .unwrap_or(file.sites as u8 + 1)
}

/// The host number of an agent within its site (the last octet of its address).
fn host_octet(a: &LabAgent) -> u8 {
    match a.wan.ip() {
        std::net::IpAddr::V4(v4) => v4.octets()[3],
        std::net::IpAddr::V6(_) => 1,
    }
}

/// The emulator listener clients of site `from` use to reach `a`'s `port`.
fn listener(file: &LabFile, from: &str, a: &LabAgent, port: u16) -> SocketAddr {
    let x = site_index(file, from);
    let y = site_index(file, &a.site);
    SocketAddr::V4(SocketAddrV4::new(
        Ipv4Addr::new(127, file.net, 100 + 10 * x + y, host_octet(a)),
        port,
    ))
}

/// `[wan] routes` of agent `me`: every agent of another site through the emulator.
pub fn routes(file: &LabFile, me: &LabAgent) -> Vec<(SocketAddr, SocketAddr)> {
    if file.links.is_empty() {
        return Vec::new();
    }
    file.agents
        .iter()
        .filter(|a| a.site != me.site)
        .map(|a| (a.wan, listener(file, &me.site, a, WAN_PORT)))
        .collect()
}

fn emu_socket(dir: &std::path::Path) -> PathBuf {
    dir.join("emu.sock")
}

/// The `fabric-emu` config of a lab in `dir`: its links, and a forwarder for every agent's WAN
/// port (and every host's service ports) from each other site.
pub fn emu_config(file: &LabFile, dir: &Path, seed: u64) -> EmuConfig {
    let links = file
        .links
        .iter()
        .map(|l| LinkConfig {
            a: l.a.clone(),
            b: l.b.clone(),
            delay: Some(l.delay),
            jitter: Some(l.jitter),
            loss: Some(l.loss),
            rate: l.rate_bps,
            partitioned: None,
            a_to_b: None,
            b_to_a: None,
        })
        .collect();
    let sites = file.site_names();
    let mut forwards = Vec::new();
    for a in &file.agents {
        for from in sites.iter().filter(|s| **s != a.site) {
            let mut ports = vec![(ForwardKind::Udp, WAN_PORT)];
            if a.roles.contains(&AgentRole::Host) {
                ports.extend(file.probe_ports.iter().map(|p| (ForwardKind::Tcp, *p)));
            }
            for (kind, port) in ports {
                forwards.push(ForwardConfig {
                    kind,
                    listen: listener(file, from, a, port),
                    target: SocketAddr::new(a.wan.ip(), port),
                    from: from.clone(),
                    to: a.site.clone(),
                });
            }
        }
    }
    EmuConfig {
        control: emu_socket(dir),
        seed,
        udp_flow_idle: emu::udp::FLOW_IDLE,
        links,
        forwards,
    }
}

/// The `fabric-emu` binary: `$FABRIC_EMU_BIN`, else next to `siteagent`.
pub fn find_emu(siteagent: &std::path::Path) -> anyhow::Result<PathBuf> {
    if let Some(p) = std::env::var_os("FABRIC_EMU_BIN") {
        return Ok(PathBuf::from(p));
    }
    let candidate = siteagent.with_file_name("fabric-emu");
    if candidate.exists() {
        Ok(candidate)
    } else {
        bail!(
            "cannot find the link emulator at {} (build it with `cargo build --workspace --bins` or set FABRIC_EMU_BIN)",
            candidate.display()
        )
    }
}

impl Lab {
    /// True when the lab's sites talk through the link emulator.
    pub fn has_links(&self) -> bool {
        !self.file.links.is_empty()
    }

    /// Starts the emulator (before the agents) and waits until its control socket answers.
    pub(super) async fn start_emu(
        &self,
        siteagent: &std::path::Path,
        seed: u64,
    ) -> anyhow::Result<()> {
        let config = self.dir.join("emu.toml");
        let text = toml::to_string(&emu_config(&self.file, &self.dir, seed))
            .context("the link emulator's config")?;
        std::fs::write(
            &config,
            format!("# Written by `sitectl lab up`: the links between the lab's sites.\n{text}"),
        )?;
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("emu.log"))?;
        use std::os::unix::process::CommandExt;
        let mut child = std::process::Command::new(find_emu(siteagent)?)
            .arg("--config")
            .arg(&config)
            .current_dir(&self.dir)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .process_group(0)
            .spawn()
            .context("cannot start fabric-emu")?;
        std::fs::write(self.dir.join("emu.pid"), child.id().to_string())?;
        let socket = emu_socket(&self.dir);
        let answered = poll_until(
            Duration::from_secs(15),
            Duration::from_millis(50),
            "fabric-emu",
            || {
                let exited = child.try_wait().ok().flatten();
                let socket = &socket;
                async move {
                    if let Some(status) = exited {
                        return Check::Failed(format!(
                            "exited during start-up ({status}); see {}",
                            self.dir.join("emu.log").display()
                        ));
                    }
                    Check::from(
                        control::request(socket, &Request::Status {})
                            .await
                            .map_err(|e| e.to_string()),
                    )
                }
            },
        )
        .await;
        match answered {
            Ok(_) => Ok(()),
            Err(PollError::Failed { what, reason }) => bail!("{what} {reason}"),
            Err(PollError::Timeout { .. }) => {
                bail!("fabric-emu did not answer on {}", socket.display())
            }
        }
    }

    /// The emulator's pid, if it runs (checked against its command line).
    pub fn emu_pid(&self) -> Option<i32> {
        super::running_pid(&self.dir.join("emu.pid"), &self.dir.join("emu.toml"))
    }

    /// Stops the emulator: SIGTERM, SIGKILL after `grace`.
    pub(super) async fn stop_emu(&self, grace: Duration) {
        let Some(pid) = self.emu_pid() else {
            return;
        };
        let pid = nix::unistd::Pid::from_raw(pid);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let stopped = poll_until(
            grace,
            Duration::from_millis(50),
            "fabric-emu stopping",
            || {
                let running = self.emu_pid().is_some();
                async move {
                    if running {
                        Check::NotYet(())
                    } else {
                        Check::Ready(())
                    }
                }
            },
        )
        .await;
        if stopped.is_err() {
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL);
        }
    }

    /// Where a client in site `from` sends to reach `target`: the emulator's listener when
    /// `target` is a lab host of another site, else `target` itself.
    pub fn route(&self, from: &str, target: SocketAddr) -> SocketAddr {
        if !self.has_links() {
            return target;
        }
        match self.file.agents.iter().find(|a| a.wan.ip() == target.ip()) {
            Some(a) if a.site != from => listener(&self.file, from, a, target.port()),
            _ => target,
        }
    }

    async fn emu(&self, request: Request) -> anyhow::Result<()> {
        if !self.has_links() {
            bail!("this lab has no links between sites (give its topology [[link]] entries)");
        }
        control::request(&emu_socket(&self.dir), &request)
            .await?
            .into_result()?;
        Ok(())
    }

    /// The emulator's links with their parameters and counters.
    pub async fn link_status(&self) -> anyhow::Result<emu::table::Status> {
        if !self.has_links() {
            bail!("this lab has no links between sites (give its topology [[link]] entries)");
        }
        Ok(
            control::request(&emu_socket(&self.dir), &Request::Status {})
                .await?
                .into_result()?,
        )
    }

    /// Cuts (`on`) or heals the link between `a` and `b`, both directions.
    pub async fn partition(&self, a: &str, b: &str, on: bool) -> anyhow::Result<()> {
        self.partition_direction(a, b, Direction::Both, on).await
    }

    /// Cuts (`on`) or heals the selected direction(s) of the link between `a` and `b`.
    pub async fn partition_direction(
        &self,
        a: &str,
        b: &str,
        direction: Direction,
        on: bool,
    ) -> anyhow::Result<()> {
        let (a, b) = (a.to_string(), b.to_string());
        self.emu(if on {
            Request::Partition { a, b, direction }
        } else {
            Request::Heal { a, b, direction }
        })
        .await
    }

    /// Sets the impairment of the link between `a` and `b` (both directions), keeping its
    /// partition state.
    pub async fn degrade(
        &self,
        a: &str,
        b: &str,
        delay: Option<Duration>,
        jitter: Option<Duration>,
        loss: Option<&str>,
        rate: Option<&str>,
    ) -> anyhow::Result<()> {
        let params = ParamsSpec {
            delay_ms: delay.unwrap_or_default().as_secs_f64() * 1e3,
            jitter_ms: jitter.unwrap_or_default().as_secs_f64() * 1e3,
            loss: loss.map(parse_loss).transpose()?.unwrap_or(0.0),
            rate_bps: rate.map(parse_rate).transpose()?,
            partitioned: None,
        };
        self.emu(Request::Set {
            a: a.into(),
            b: b.into(),
            direction: Direction::Both,
            params,
        })
        .await
    }

    /// Gives every link back the impairment its topology declared, unpartitioned in both
    /// directions.
    pub async fn restore_links(&self) -> anyhow::Result<()> {
        for l in &self.file.links {
            let params = ParamsSpec {
                delay_ms: l.delay.as_secs_f64() * 1e3,
                jitter_ms: l.jitter.as_secs_f64() * 1e3,
                loss: l.loss,
                rate_bps: l.rate_bps,
                partitioned: Some(false),
            };
            self.emu(Request::Set {
                a: l.a.clone(),
                b: l.b.clone(),
                direction: Direction::Both,
                params,
            })
            .await
            .with_context(|| format!("restoring link {}-{}", l.a, l.b))?;
        }
        Ok(())
    }
}
