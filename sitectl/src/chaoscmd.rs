//! `sitectl drill chaos`: a seeded random fault schedule played as a drill on a fresh lab, one
//! seed or a range of seeds one after another, with a line per seed at the end.
//!
//! Invariant: a run is named by its seed and fault count (and `--duration`, `--topology`):
//! the same arguments replay the same schedule; the command exits 0 only when every seed's
//! drill passed.
//!
//! It does not generate or judge anything itself (`scenarios::chaos` and the drill runner do).

use std::ops::RangeInclusive;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context as _, bail};
use clap::Args;
use scenarios::chaos::{self, ChaosOptions};
use scenarios::runner::{self, RunOptions};
use scenarios::scenario::Topology;
use tokio_util::sync::CancellationToken;

use crate::out;
use crate::output::{Output, views};

#[derive(Args, Debug)]
pub struct ChaosArgs {
    /// Seed of the fault schedule (and of the link emulator's randomness).
    #[arg(long, default_value_t = 1, conflicts_with = "seeds")]
    pub seed: u64,
    /// Run every seed of an inclusive range, e.g. `1..20`, each on a fresh lab.
    #[arg(long, value_parser = parse_seeds)]
    pub seeds: Option<RangeInclusive<u64>>,
    /// How many faults to draw.
    #[arg(long, default_value_t = 5)]
    pub faults: u32,
    /// Time to spread the faults over: each is held up to duration / faults (default 15 s per
    /// fault); recovery waits come on top.
    #[arg(long, value_parser = humantime::parse_duration)]
    pub duration: Option<Duration>,
    /// A topology file (a drill scenario or a bare `[topology]` table); default 3 sites × 2
    /// hosts with every link through the emulator.
    #[arg(long)]
    pub topology: Option<PathBuf>,
    /// Where report.json and timeline.svg go (default: drill-reports/chaos-seed-N; with
    /// --seeds, a seed-N directory per seed under it).
    #[arg(long)]
    pub report_dir: Option<PathBuf>,
    /// Keep the lab in this directory instead of a temporary one (it is still stopped).
    #[arg(long, conflicts_with = "seeds")]
    pub lab_dir: Option<PathBuf>,
    /// Print the schedule(s) and exit without starting a lab.
    #[arg(long)]
    pub dry_run: bool,
}

/// `A..B` or `A..=B` (both inclusive), or one seed.
pub fn parse_seeds(text: &str) -> Result<RangeInclusive<u64>, String> {
    let bad = || format!("`{text}` is not a seed range like 1..20");
    let (a, b) = match text.split_once("..") {
        Some((a, b)) => (a, b.trim_start_matches('=')),
        None => (text, text),
    };
    let (a, b): (u64, u64) = (
        a.trim().parse().map_err(|_| bad())?,
        b.trim().parse().map_err(|_| bad())?,
    );
    if a > b {
        return Err(format!("`{text}`: the first seed is after the last"));
    }
    Ok(a..=b)
}

/// One seed's outcome, as the closing summary shows it.
#[derive(Debug, serde::Serialize)]
struct SeedResult {
    seed: u64,
    passed: bool,
    schedule: Vec<String>,
    failed: String,
    report: Option<PathBuf>,
}

pub async fn chaos(args: ChaosArgs, out: Output) -> anyhow::Result<()> {
    let topology = match &args.topology {
        Some(path) => Topology::load(path)?,
        None => chaos::default_topology(),
    };
    let seeds = args.seeds.clone().unwrap_or(args.seed..=args.seed);
    let many = args.seeds.is_some();
    let cancel = CancellationToken::new();
    let on_signal = cancel.clone();
    tokio::spawn(async move {
        if tokio::signal::ctrl_c().await.is_ok() {
            eprintln!("sitectl: interrupted; tearing the lab down");
            on_signal.cancel();
        }
    });
    let mut results = Vec::new();
    for seed in seeds {
        if cancel.is_cancelled() {
            break;
        }
        let opts = ChaosOptions {
            seed,
            faults: args.faults,
            duration: args.duration,
            topology: topology.clone(),
        };
        let (scenario, schedule) = chaos::scenario(&opts)?;
        if args.dry_run || out == Output::Table {
            eprintln!("chaos seed {seed}:");
            for line in schedule.lines() {
                eprintln!("  {line}");
            }
        }
        if args.dry_run {
            continue;
        }
        let report_dir = match (&args.report_dir, many) {
            (Some(d), true) => d.join(format!("seed-{seed}")),
            (Some(d), false) => d.clone(),
            (None, _) => PathBuf::from("drill-reports").join(&scenario.name),
        };
        let run = RunOptions {
            report_dir,
            seed,
            time_scale: 1.0,
            test_failover: false,
            lab_dir: args.lab_dir.clone(),
            siteagent: crate::lab::find_siteagent()?,
            progress: out == Output::Table,
        };
        let result = match runner::run(&scenario, &run, cancel.clone()).await {
            Ok(outcome) => {
                if !many {
                    match out {
                        Output::Json => {
                            out!("{}", serde_json::to_string_pretty(&outcome.report)?)
                        }
                        Output::Table => out!("{}", outcome.report.summary_table()),
                    }
                }
                SeedResult {
                    seed,
                    passed: outcome.report.passed,
                    schedule: schedule.lines(),
                    failed: views::failed_expectations(&outcome.report),
                    report: Some(outcome.json),
                }
            }
            // One seed that could not run (e.g. its lab did not start) is a failed seed of
            // a range; a single seed reports it as the command's error.
            Err(e) if many => SeedResult {
                seed,
                passed: false,
                schedule: schedule.lines(),
                failed: format!("did not run: {e:#}"),
                report: None,
            },
            Err(e) => return Err(e).with_context(|| format!("chaos seed {seed}")),
        };
        if many && out == Output::Table {
            eprintln!(
                "chaos seed {seed}: {}",
                if result.passed { "PASS" } else { "FAIL" }
            );
        }
        results.push(result);
    }
    if args.dry_run {
        return Ok(());
    }
    if many {
        match out {
            Output::Json => out!("{}", serde_json::to_string_pretty(&results)?),
            Output::Table => {
                for r in &results {
                    out!(
                        "seed {:>4}  {}  {}{}",
                        r.seed,
                        if r.passed { "PASS" } else { "FAIL" },
                        r.schedule.join(" "),
                        if r.passed {
                            String::new()
                        } else {
                            format!("  — {}", r.failed)
                        }
                    );
                }
            }
        }
    } else if let Some(r) = results.first()
        && out == Output::Table
        && let Some(json) = &r.report
    {
        out!("report: {}", json.display());
    }
    let failed: Vec<String> = results
        .iter()
        .filter(|r| !r.passed)
        .map(|r| r.seed.to_string())
        .collect();
    if cancel.is_cancelled() {
        bail!("interrupted");
    }
    if !failed.is_empty() {
        bail!(
            "chaos failed for seed(s) {} of {} run: {}",
            failed.join(", "),
            results.len(),
            results
                .iter()
                .filter(|r| !r.passed)
                .map(|r| format!("seed {}: {}", r.seed, r.failed))
                .collect::<Vec<_>>()
                .join("; ")
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seed_ranges_are_inclusive_and_bad_ones_say_why() {
        assert_eq!(parse_seeds("1..20"), Ok(1..=20));
        assert_eq!(parse_seeds("3..=4"), Ok(3..=4));
        assert_eq!(parse_seeds("7"), Ok(7..=7));
        assert!(
            parse_seeds("5..2")
                .expect_err("refused")
                .contains("after the last")
        );
        assert!(
            parse_seeds("a..b")
                .expect_err("refused")
                .contains("not a seed range")
        );
    }
}
