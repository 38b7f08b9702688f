//! Every shipped drill runs end to end with `sitectl drill run` (at the smallest time scale its
//! scenario allows) and meets its expectations; a drill that cannot pass fails and says why; bad
//! scenario files are refused before any lab starts.

use std::path::{Path, PathBuf};

use fabric_tests::{kill_everything_under, sitectl};
use scenarios::report::{ExpectationResult, Report};

/// A drill's lab and report directories, and a clean-up of everything left in them.
struct DrillDirs {
    dir: tempfile::TempDir,
}

impl DrillDirs {
    fn new() -> Self {
        Self {
            dir: tempfile::Builder::new()
                .prefix("fabric-drill-")
                .tempdir()
                .expect("temp dir"),
        }
    }

    fn lab(&self) -> PathBuf {
        self.dir.path().join("lab")
    }

    fn reports(&self) -> PathBuf {
        self.dir.path().join("reports")
    }
}

impl Drop for DrillDirs {
    fn drop(&mut self) {
        kill_everything_under(self.dir.path());
        // For a post-mortem: FABRIC_KEEP_DRILLS=1 keeps the lab's logs and the report.
        if std::env::var_os("FABRIC_KEEP_DRILLS").is_some() {
            let kept = std::mem::replace(&mut self.dir, tempfile::tempdir().expect("temp dir"));
            eprintln!("kept {}", kept.keep().display());
        }
    }
}

fn drill_file(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../scenarios/drills")
        .join(format!("{name}.toml"))
}

/// The scenario's `min_time_scale`.
fn min_scale(path: &Path) -> String {
    let text = std::fs::read_to_string(path).expect("scenario");
    text.lines()
        .find_map(|l| l.trim().strip_prefix("min_time_scale = "))
        .unwrap_or("1.0")
        .trim()
        .to_string()
}

/// Runs `sitectl drill run` and returns (exit success, report, stderr).
fn run(path: &Path, extra: &[&str]) -> (bool, Option<Report>, String, DrillDirs) {
    let dirs = DrillDirs::new();
    let (lab, reports) = (dirs.lab(), dirs.reports());
    let scale = min_scale(path);
    let mut args = vec![
        "--output",
        "json",
        "drill",
        "run",
        path.to_str().expect("utf-8"),
        "--time-scale",
        &scale,
        "--lab-dir",
        lab.to_str().expect("utf-8"),
        "--report-dir",
        reports.to_str().expect("utf-8"),
    ];
    args.extend_from_slice(extra);
    let out = sitectl(&args);
    // No report.json is an answer (a drill that never ran); one that does not parse is a bug.
    let report = std::fs::read_to_string(reports.join("report.json"))
        .ok()
        .map(|t| {
            serde_json::from_str(&t).unwrap_or_else(|e| panic!("report.json is no Report: {e}"))
        });
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    (out.status.success(), report, stderr, dirs)
}

/// Runs a shipped drill and checks it passed, its report is complete and its lab is gone.
fn passes(name: &str) -> Report {
    let (ok, report, stderr, dirs) = run(&drill_file(name), &[]);
    let report = report.unwrap_or_else(|| panic!("{name}: no report.json; stderr:\n{stderr}"));
    let failed: Vec<&ExpectationResult> = report.expectations.iter().filter(|e| !e.pass).collect();
    assert!(
        ok && failed.is_empty(),
        "{name} failed: {failed:?}\n{stderr}"
    );
    assert!(report.passed);
    assert!(dirs.reports().join("timeline.svg").exists());
    assert!(!report.probes.is_empty(), "{name}: no probes recorded");
    for m in &report.measures {
        eprintln!(
            "MEASURED {name}: {} = {:?} (bound {:?})",
            m.name, m.value, m.bound
        );
    }
    assert_no_processes_left(&dirs);
    report
}

fn assert_no_processes_left(dirs: &DrillDirs) {
    let lab = dirs.lab();
    let pid_files = ["emu.pid"].into_iter().map(|f| lab.join(f)).chain(
        std::fs::read_dir(lab.join("nodes"))
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.path().join("agent.pid")),
    );
    for f in pid_files {
        let Ok(pid) = std::fs::read_to_string(&f) else {
            continue;
        };
        let stat =
            std::fs::read_to_string(format!("/proc/{}/stat", pid.trim())).unwrap_or_default();
        let running = !stat.is_empty()
            && !stat
                .rsplit(')')
                .next()
                .unwrap_or("")
                .trim_start()
                .starts_with('Z');
        let cmdline = std::fs::read(format!("/proc/{}/cmdline", pid.trim())).unwrap_or_default();
        let ours = String::from_utf8_lossy(&cmdline).contains(&*lab.to_string_lossy());
        assert!(
            !(running && ours),
            "{} still runs after the drill",
            f.display()
        );
    }
}

fn expectation<'a>(report: &'a Report, name: &str) -> &'a ExpectationResult {
    report
        .expectations
        .iter()
        .find(|e| e.name == name)
        .unwrap_or_else(|| panic!("no expectation {name}"))
}

#[test]
fn drill_host_loss_restarts_in_the_same_site_without_losing_writes() {
    let r = passes("host-loss");
    assert!(expectation(&r, "rpo_max_writes").pass);
}

#[test]
fn drill_site_loss_moves_to_the_next_site_without_losing_a_write_on_its_sync_replica() {
    let r = passes("site-loss");
    assert_eq!(expectation(&r, "final_owner").measured, "s2");
    assert_eq!(expectation(&r, "rpo_max_writes").measured, "0 writes lost");
    // The fabric's view of the copies is in the report: s2's copy became the primary.
    assert!(
        r.replicas
            .iter()
            .any(|c| c.site == "s2" && c.state == "primary"),
        "{:?}",
        r.replicas
    );
}

#[test]
fn drill_site_loss_async_loses_no_more_than_the_lag_reported_before_the_fault() {
    let r = passes("site-loss-async");
    assert!(expectation(&r, "rpo_within_reported_lag").pass);
    assert!(
        r.measures.iter().any(|m| m.name == "rpo_reported_lag"),
        "{:?}",
        r.measures
    );
}

/// The demo appends 16-byte records, so the new primary's next records land in the same
/// chunks as the old primary's lost ones: the event lists those chunks too (as differing where
/// the primary rewrote them), not only chunks the new primary never wrote.
#[test]
fn drill_resync_after_partition_resyncs_the_old_primary_and_lists_its_discarded_writes() {
    let r = passes("resync-after-partition");
    assert!(expectation(&r, "in_sync_at_end").pass);
    assert!(expectation(&r, "divergence_listed").pass);
}

#[test]
fn drill_partition_minority_fences_and_rejoins_without_split_brain() {
    let r = passes("partition-minority");
    assert!(expectation(&r, "no_split_brain").pass);
}

#[test]
fn drill_planned_switchover_has_no_failed_probe() {
    passes("planned-switchover");
}

#[test]
fn drill_flapping_link_does_not_move_the_service() {
    passes("flapping-link");
}

#[test]
fn drill_witness_loss_changes_nothing_and_site_loss_still_fails_over() {
    passes("witness-loss");
}

#[test]
fn drill_slow_wan_still_commits_elects_and_fails_over() {
    passes("slow-wan");
}

#[test]
fn drill_asymmetric_cut_keeps_the_owner_serving_without_a_failed_probe() {
    let r = passes("asymmetric-cut");
    assert_eq!(expectation(&r, "max_failed_probes").measured, "0");
}

#[test]
fn drill_rolling_maintenance_never_takes_the_service_down() {
    passes("rolling-maintenance");
}

/// The chaos drill in its CI form: seed 1, three faults on the default lab (3 sites × 2 hosts,
/// links through the emulator), every chaos invariant checked and holding; the report names
/// the seed and the schedule, and it is the schedule `--dry-run` prints for the same seed.
#[test]
fn drill_chaos_seed_1_holds_every_invariant_and_replays_its_schedule() {
    let dirs = DrillDirs::new();
    let (lab, reports) = (dirs.lab(), dirs.reports());
    let chaos = ["drill", "chaos", "--seed", "1", "--faults", "3"];
    let started = std::time::Instant::now();
    let mut args = vec!["--output", "json"];
    args.extend_from_slice(&chaos);
    args.extend_from_slice(&[
        "--lab-dir",
        lab.to_str().expect("utf-8"),
        "--report-dir",
        reports.to_str().expect("utf-8"),
    ]);
    let out = sitectl(&args);
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    eprintln!(
        "MEASURED chaos seed 1 × 3 faults: {:.1} s wall",
        started.elapsed().as_secs_f64()
    );
    let report: Report = serde_json::from_str(
        &std::fs::read_to_string(reports.join("report.json"))
            .unwrap_or_else(|e| panic!("no report.json ({e}); stderr:\n{stderr}")),
    )
    .expect("report.json is a Report");
    let failed: Vec<&ExpectationResult> = report.expectations.iter().filter(|e| !e.pass).collect();
    assert!(
        out.status.success() && failed.is_empty(),
        "chaos seed 1 failed: {failed:#?}\n{stderr}"
    );
    for name in [
        "no_split_brain",
        "instances_one_site",
        "epochs_only_go_up",
        "served_at_end",
        "outages_explained",
        "writes_where_acked",
    ] {
        assert!(expectation(&report, name).pass, "{name}");
    }
    assert_eq!(report.seed, 1);
    assert_eq!(report.scenario, "chaos-seed-1");
    assert!(
        report.description.starts_with("seed 1, 3 faults"),
        "{}",
        report.description
    );
    // The same seed replays the same schedule: --dry-run prints it without a lab.
    let mut dry = chaos.to_vec();
    dry.push("--dry-run");
    let dry = sitectl(&dry);
    assert!(dry.status.success());
    let schedule: Vec<String> = String::from_utf8_lossy(&dry.stderr)
        .lines()
        .filter_map(|l| l.strip_prefix("  "))
        .map(str::to_string)
        .collect();
    assert_eq!(schedule.len(), 3, "{schedule:?}");
    for line in &schedule {
        assert!(
            report.description.contains(line.as_str()),
            "{line} not in {}",
            report.description
        );
    }
    assert!(
        report
            .markers
            .iter()
            .filter(|m| m.kind == scenarios::report::MarkerKind::Fault)
            .count()
            >= 3,
        "every fault was injected: {:?}",
        report.markers
    );
    assert_no_processes_left(&dirs);
}

#[test]
fn test_failover_mode_answers_in_the_recovery_site_without_touching_production() {
    let (ok, report, stderr, _dirs) = run(&drill_file("planned-switchover"), &["--test-failover"]);
    let report = report.unwrap_or_else(|| panic!("no report: {stderr}"));
    assert!(ok, "{stderr}\n{report:?}");
    let labels: Vec<&str> = report.markers.iter().map(|m| m.label.as_str()).collect();
    assert!(
        labels
            .iter()
            .any(|l| l.contains("test instance answered from site s2")),
        "{labels:?}"
    );
    assert_eq!(expectation(&report, "max_failed_probes").measured, "0");
    // Production never moved.
    assert!(
        report
            .owners
            .iter()
            .all(|o| o.site.as_deref() == Some("s1")),
        "{:?}",
        report.owners
    );
}

#[test]
fn a_drill_that_cannot_pass_fails_and_says_by_how_much() {
    let dir = tempfile::tempdir().expect("dir");
    let text = std::fs::read_to_string(drill_file("host-loss"))
        .expect("scenario")
        .replace("rto_max = \"12s\"", "rto_max = \"1ms\"");
    let path = dir.path().join("host-loss.toml");
    std::fs::write(&path, text).expect("write");
    let (ok, report, stderr, _dirs) = run(&path, &[]);
    assert!(!ok, "an impossible RTO passed");
    assert!(stderr.contains("rto_max"), "{stderr}");
    let report = report.expect("a report even when failing");
    assert!(!report.passed);
    let rto = expectation(&report, "rto_max");
    assert!(!rto.pass);
    assert!(rto.detail.starts_with("over by"), "{rto:?}");
}

#[test]
fn bad_scenarios_are_refused_with_line_and_field_before_any_lab_starts() {
    let dir = tempfile::tempdir().expect("dir");
    let good = std::fs::read_to_string(drill_file("site-loss")).expect("scenario");
    let cases = [
        (
            "malformed",
            good.replace("sites = 3", "sites = three"),
            "line",
        ),
        (
            "unknown-step",
            good.replace("action = \"kill_site\"", "action = \"nuke_site\""),
            "nuke_site",
        ),
        (
            "unknown-site",
            good.replace("site = \"s1\"", "site = \"s7\""),
            "unknown site `s7`",
        ),
        (
            "unknown-field",
            good.replace("[expect]", "[expect]\nrto_maximum = \"1s\""),
            "rto_maximum",
        ),
        (
            "bad-replica-mode",
            good.replace("\"s3:async\"", "\"s3:eventually\""),
            "s3:eventually",
        ),
        (
            "replica-at-the-primary",
            good.replace("\"s3:async\"", "\"s1:async\""),
            "service.volume",
        ),
    ];
    for (name, text, expected) in cases {
        let path = dir.path().join(format!("{name}.toml"));
        std::fs::write(&path, text).expect("write");
        let (ok, report, stderr, dirs) = run(&path, &[]);
        assert!(!ok, "{name}: accepted");
        assert!(stderr.contains(expected), "{name}: {stderr}");
        assert!(
            stderr.contains(&*path.to_string_lossy()),
            "{name}: names the file: {stderr}"
        );
        assert!(report.is_none(), "{name}: a report without a drill");
        assert!(!dirs.lab().exists(), "{name}: a lab was started");
    }
}

#[test]
fn an_interrupted_drill_tears_its_lab_down() {
    use std::io::BufRead as _;
    use std::process::{Command, Stdio};

    let dirs = DrillDirs::new();
    let path = drill_file("site-loss");
    let mut child = Command::new(fabric_tests::sitectl_bin())
        .args([
            "drill",
            "run",
            path.to_str().expect("utf-8"),
            "--lab-dir",
            dirs.lab().to_str().expect("utf-8"),
            "--report-dir",
            dirs.reports().to_str().expect("utf-8"),
        ])
        .env_remove("SITECTL_CONTEXT")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start sitectl");
    // Progress lines come on stderr; interrupt once the probes run against a started lab.
    let mut stderr = std::io::BufReader::new(child.stderr.take().expect("stderr"));
    let mut seen = String::new();
    let mut line = String::new();
    while stderr.read_line(&mut line).expect("read stderr") > 0 {
        seen.push_str(&line);
        if line.contains("probes running") {
            break;
        }
        line.clear();
    }
    assert!(
        seen.contains("probes running"),
        "the drill ended before its probes ran:\n{seen}"
    );
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGINT,
    )
    .expect("SIGINT");
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut stderr, &mut rest).expect("read stderr");
    let status = child.wait().expect("wait");
    assert!(!status.success(), "an interrupted drill exited 0:\n{rest}");
    assert!(rest.contains("interrupted"), "{rest}");
    assert_no_processes_left(&dirs);
}

#[test]
fn a_lab_that_fails_to_start_says_why_and_keeps_its_directory() {
    // A lease of only twice its margin: the scenario format takes it, the agent's own check
    // refuses it, so every agent exits at start-up.
    let dir = tempfile::tempdir().expect("dir");
    let text = std::fs::read_to_string(drill_file("host-loss"))
        .expect("scenario")
        .replace(
            "[[service]]",
            "[topology.timing]\nlease = \"2s\"\nlease_margin = \"1s\"\n\n[[service]]",
        );
    let path = dir.path().join("host-loss.toml");
    std::fs::write(&path, text).expect("write");
    let reports = dir.path().join("reports");
    let out = sitectl(&[
        "drill",
        "run",
        path.to_str().expect("utf-8"),
        "--report-dir",
        reports.to_str().expect("utf-8"),
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(
        !out.status.success(),
        "a lab that cannot start passed:\n{stderr}"
    );
    assert!(
        stderr.contains("exited during start-up") && stderr.contains("failover.lease"),
        "the agent's own error is in the message:\n{stderr}"
    );
    let kept = stderr
        .split("its directory ")
        .nth(1)
        .and_then(|rest| rest.split(" is kept").next())
        .map(PathBuf::from)
        .unwrap_or_else(|| panic!("no kept directory named:\n{stderr}"));
    let log = stderr
        .split("see ")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .map(|l| PathBuf::from(l.trim_end_matches([';', ':', ','])))
        .unwrap_or_else(|| panic!("no log named:\n{stderr}"));
    let exists = (kept.is_dir(), log.is_file());
    kill_everything_under(&kept);
    let _ = std::fs::remove_dir_all(&kept);
    assert_eq!(
        exists,
        (true, true),
        "{} and {}",
        kept.display(),
        log.display()
    );
    assert!(log.starts_with(&kept), "the log is in the kept directory");
}
