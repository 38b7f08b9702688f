//! `sitectl bench fleet`: what an idle fabric costs per agent, on a small lab and on a big one.
//!
//! Starts a lab of `sites × 1` agents, then one of `sites × hosts_per_site` (each in a fresh
//! temporary directory, stopped and removed afterwards), lets each settle, and measures over a
//! window: CPU time of every agent process (`/proc/<pid>/stat`, user + system) and the WAN
//! requests every agent served (`fabric_wan_requests_total` by channel, from each agent's
//! `/metrics`), per agent and per second. Control traffic that grows with the fleet's square
//! shows as a per-agent figure that grows with the fleet; the goal is a flat one.
//!
//! Figures are measured, never asserted; the machine may be shared and noisy.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use scenarios::client::Client;
use scenarios::lab::{Lab, LabTiming, UpOptions};
use serde::Serialize;

/// What to run.
#[derive(Debug, Clone)]
pub struct Settings {
    pub sites: u32,
    pub hosts_per_site: u32,
    /// Idle time after the lab is up, before measuring.
    pub settle: Duration,
    pub window: Duration,
    pub siteagent: PathBuf,
    /// SWIM over QUIC streams instead of sealed datagrams.
    pub swim_over_quic: bool,
    /// Worker threads of each agent's runtime (0: one per CPU).
    pub worker_threads: usize,
}

/// One lab's figures.
#[derive(Debug, Clone, Serialize)]
pub struct FleetRow {
    pub sites: u32,
    pub hosts_per_site: u32,
    pub agents: usize,
    pub seconds: f64,
    /// All agents' CPU, in % of one core.
    pub cpu_percent: f64,
    pub cpu_percent_per_agent: f64,
    /// The busiest agent's CPU (usually the Raft leader), in % of one core.
    pub cpu_percent_max: f64,
    /// WAN requests served by all agents, per second, by channel (raft, control, bulk).
    pub requests_per_sec: BTreeMap<String, f64>,
    pub requests_per_sec_total: f64,
    pub requests_per_sec_per_agent: f64,
    /// SWIM messages sent per agent per second.
    pub swim_per_sec_per_agent: f64,
    /// QUIC datagrams sent per agent per second (every WAN connection's, acks and
    /// keep-alives included; SWIM's sealed datagrams are counted in `swim_per_sec_per_agent`).
    pub datagrams_per_sec_per_agent: f64,
    /// Frames sent per agent per second, by kind (`fabric_wan_packets_total`).
    pub packets_per_sec_per_agent: BTreeMap<String, f64>,
    /// Read-index quorum rounds per second, all agents (the leader runs them), shared by the
    /// lease confirmations and reads that wait together (`fabric_raft_read_rounds_total`).
    pub read_rounds_per_sec: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct FleetReport {
    pub rows: Vec<FleetRow>,
    /// Big lab per agent / small lab per agent.
    pub cpu_ratio: f64,
    pub requests_ratio: f64,
}

/// Runs the small lab, then the big one.
pub async fn fleet(settings: &Settings, progress: &dyn Fn(&str)) -> anyhow::Result<FleetReport> {
    let mut rows = Vec::new();
    for hosts in [1, settings.hosts_per_site] {
        progress(&format!(
            "lab of {} sites x {hosts} host(s): starting",
            settings.sites
        ));
        rows.push(one(settings, hosts, progress).await?);
    }
    let ratio = |f: fn(&FleetRow) -> f64| {
        let (a, b) = (f(&rows[0]), f(&rows[1]));
        if a > 0.0 { b / a } else { 0.0 }
    };
    Ok(FleetReport {
        cpu_ratio: ratio(|r| r.cpu_percent_per_agent),
        requests_ratio: ratio(|r| r.requests_per_sec_per_agent),
        rows,
    })
}

async fn one(settings: &Settings, hosts: u32, progress: &dyn Fn(&str)) -> anyhow::Result<FleetRow> {
    let dir = std::env::temp_dir().join(format!(
        "fabric-bench-fleet-{}-{}x{hosts}",
        std::process::id(),
        settings.sites
    ));
    let _ = std::fs::remove_dir_all(&dir);
    let opts = UpOptions {
        sites: settings.sites,
        hosts_per_site: hosts,
        net: None,
        timeout: Duration::from_secs(60 + 5 * u64::from(settings.sites * hosts)),
        siteagent: settings.siteagent.clone(),
        progress: false,
        witness: false,
        ipv6: false,
        swim_over_quic: settings.swim_over_quic,
        worker_threads: settings.worker_threads,
        timing: LabTiming::default(),
        links: Vec::new(),
        probe_ports: Vec::new(),
        seed: 1,
    };
    let lab = match Lab::up(&dir, &opts).await {
        Ok(lab) => lab,
        Err(e) => {
            // Stop whatever started before the failure.
            if let Ok(lab) = Lab::open(&dir) {
                lab.down(Duration::from_secs(5)).await;
            }
            let _ = std::fs::remove_dir_all(&dir);
            return Err(e.context(format!("lab of {} x {hosts}", settings.sites)));
        }
    };
    let measured = measure(&lab, settings, progress).await;
    lab.down(Duration::from_secs(10)).await;
    let _ = std::fs::remove_dir_all(&dir);
    let mut row = measured?;
    row.hosts_per_site = hosts;
    Ok(row)
}

async fn measure(
    lab: &Lab,
    settings: &Settings,
    progress: &dyn Fn(&str),
) -> anyhow::Result<FleetRow> {
    progress(&format!("settling for {:?}", settings.settle));
    tokio::time::sleep(settings.settle).await;
    let client = Client::new(&lab.context()?)?.with_timeout(Duration::from_secs(5));
    let agents: Vec<(u64, i32, std::net::SocketAddr)> = lab
        .processes()
        .into_iter()
        .filter_map(|p| Some((p.node, p.pid?, p.admin.parse().ok()?)))
        .collect();
    progress(&format!(
        "measuring {} agents for {:?}",
        agents.len(),
        settings.window
    ));
    let before = sample(&client, &agents).await?;
    let start = Instant::now();
    tokio::time::sleep(settings.window).await;
    let after = sample(&client, &agents).await?;
    let seconds = start.elapsed().as_secs_f64();

    let ticks = clock_ticks_per_second();
    let mut cpu_total = 0.0;
    let mut cpu_max: f64 = 0.0;
    let mut requests: BTreeMap<String, f64> = BTreeMap::new();
    let mut swim = 0.0;
    let mut read_rounds = 0.0;
    let mut packets: BTreeMap<String, f64> = BTreeMap::new();
    for (node, a) in &after {
        let b = before
            .get(node)
            .with_context(|| format!("agent {node} vanished during the window"))?;
        let cpu = (a.cpu_ticks.saturating_sub(b.cpu_ticks)) as f64 / ticks / seconds * 100.0;
        cpu_total += cpu;
        cpu_max = cpu_max.max(cpu);
        for (channel, n) in &a.requests {
            let was = b.requests.get(channel).copied().unwrap_or(0.0);
            *requests.entry(channel.clone()).or_default() += (n - was).max(0.0) / seconds;
        }
        swim += (a.swim - b.swim).max(0.0) / seconds;
        read_rounds += (a.read_rounds - b.read_rounds).max(0.0) / seconds;
        for (kind, n) in &a.packets {
            let was = b.packets.get(kind).copied().unwrap_or(0.0);
            *packets.entry(kind.clone()).or_default() += (n - was).max(0.0) / seconds;
        }
    }
    let n = after.len().max(1) as f64;
    for v in packets.values_mut() {
        *v /= n;
    }
    let total: f64 = requests.values().sum();
    Ok(FleetRow {
        sites: settings.sites,
        hosts_per_site: 0,
        agents: after.len(),
        seconds,
        cpu_percent: cpu_total,
        cpu_percent_per_agent: cpu_total / n,
        cpu_percent_max: cpu_max,
        requests_per_sec: requests,
        requests_per_sec_total: total,
        requests_per_sec_per_agent: total / n,
        swim_per_sec_per_agent: swim / n,
        datagrams_per_sec_per_agent: packets.get("datagrams_sent").copied().unwrap_or(0.0),
        packets_per_sec_per_agent: packets,
        read_rounds_per_sec: read_rounds,
    })
}

/// One agent's counters at one moment.
struct Sample {
    cpu_ticks: u64,
    requests: BTreeMap<String, f64>,
    swim: f64,
    read_rounds: f64,
    packets: BTreeMap<String, f64>,
}

async fn sample(
    client: &Client,
    agents: &[(u64, i32, std::net::SocketAddr)],
) -> anyhow::Result<BTreeMap<u64, Sample>> {
    let mut out = BTreeMap::new();
    for (node, pid, admin) in agents {
        let text = client
            .pinned(*admin)
            .get_text("/metrics")
            .await
            .with_context(|| format!("/metrics of agent {node}"))?;
        out.insert(
            *node,
            Sample {
                cpu_ticks: cpu_ticks(*pid).with_context(|| format!("CPU time of agent {node}"))?,
                requests: counters(&text, "fabric_wan_requests_total", "channel"),
                swim: counters(&text, "fabric_swim_messages_total", "kind")
                    .values()
                    .sum(),
                read_rounds: counter(&text, "fabric_raft_read_rounds_total"),
                packets: counters(&text, "fabric_wan_packets_total", "kind"),
            },
        );
    }
    Ok(out)
}

/// user + system CPU ticks of process `pid` (fields 14 and 15 of `/proc/<pid>/stat`).
fn cpu_ticks(pid: i32) -> anyhow::Result<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // The command name (field 2) may hold spaces; the fields after it are plain.
    let rest = stat
        .rsplit_once(')')
        .map(|(_, r)| r)
        .context("malformed /proc stat")?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let field = |i: usize| -> anyhow::Result<u64> {
        fields
            .get(i)
            .context("short /proc stat")?
            .parse()
            .context("malformed /proc stat field")
    };
    // After ")", field 3 (state) is index 0, so utime (14) is 11 and stime (15) is 12.
    Ok(field(11)? + field(12)?)
}

/// `USER_HZ`: the unit of `/proc` CPU times, 100 on every Linux ABI that exposes it.
fn clock_ticks_per_second() -> f64 {
    100.0
}

/// Values of counter `name` by the value of `label`, from Prometheus text.
pub(crate) fn counters(text: &str, name: &str, label: &str) -> BTreeMap<String, f64> {
    let mut out = BTreeMap::new();
    for line in text.lines() {
        let Some(rest) = line.strip_prefix(name) else {
            continue;
        };
        let Some((labels, value)) = rest.strip_prefix('{').and_then(|r| r.split_once("} ")) else {
            continue;
        };
        let key = labels.split(',').find_map(|kv| {
            let (k, v) = kv.split_once('=')?;
            (k == label).then(|| v.trim_matches('"').to_string())
        });
        if let (Some(key), Ok(v)) = (key, value.trim().parse::<f64>()) {
            *out.entry(key).or_default() += v;
        }
    }
    out
}

/// The value of counter `name` without labels (0 when absent), from Prometheus text.
fn counter(text: &str, name: &str) -> f64 {
    text.lines()
        .filter_map(|line| line.strip_prefix(name)?.strip_prefix(' '))
        .find_map(|v| v.trim().parse().ok())
        .unwrap_or(0.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_are_read_by_label_from_prometheus_text() {
        let text = "# TYPE fabric_wan_requests_total counter\n\
                    fabric_wan_requests_total{channel=\"raft\"} 12\n\
                    fabric_wan_requests_total{channel=\"control\"} 30\n\
                    fabric_wan_requests_total_other{channel=\"raft\"} 99\n\
                    fabric_swim_messages_total{kind=\"ping\"} 5\n";
        let c = counters(text, "fabric_wan_requests_total", "channel");
        assert_eq!(c.get("raft"), Some(&12.0));
        assert_eq!(c.get("control"), Some(&30.0));
        assert_eq!(c.len(), 2);
        assert_eq!(
            counters(text, "fabric_swim_messages_total", "kind").get("ping"),
            Some(&5.0)
        );
    }

    #[test]
    fn a_counter_without_labels_is_read_and_missing_is_zero() {
        let text = "# TYPE fabric_raft_read_rounds_total counter\n\
                    fabric_raft_read_rounds_total_x 7\n\
                    fabric_raft_read_rounds_total 42\n";
        assert_eq!(counter(text, "fabric_raft_read_rounds_total"), 42.0);
        assert_eq!(counter(text, "fabric_nothing_total"), 0.0);
    }

    #[test]
    fn cpu_ticks_of_this_process_are_read() {
        let pid = i32::try_from(std::process::id()).expect("pid");
        assert!(cpu_ticks(pid).is_ok());
        assert!(cpu_ticks(i32::MAX).is_err());
    }
}
