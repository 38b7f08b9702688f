//! Planned operations, the witness, DNS answers and bad service specs, end to end.

use std::time::Duration;

use consensus::state::{Health, InstanceState};
use fabric_tests::{TestLab, dig, eventually, sitectl, whoami};
use failover::planner::Action;
use siteagent::api::{EventView, OperationResult, ServiceView, SiteView, Status, WriteResult};

const NAME: &str = "web.fabric.test.";

fn demo(lab: &TestLab, extra: &[&str]) {
    let ctx = lab.context();
    let mut args = vec!["--context", ctx.as_str(), "--output", "json", "lab", "demo"];
    args.extend_from_slice(&["--dir", lab.dir_str()]);
    args.extend_from_slice(extra);
    let _: OperationResult = fabric_tests::sitectl_json(&args).expect("lab demo");
}

fn web(lab: &TestLab) -> ServiceView {
    let services: Vec<ServiceView> = lab.ctl(&["service", "list"]).expect("services");
    services
        .into_iter()
        .find(|s| s.name == "web")
        .expect("web exists")
}

/// Waits until `web` has exactly the running instances `hosts` and nothing else.
fn wait_on(lab: &TestLab, hosts: &[u64]) -> ServiceView {
    eventually(
        Duration::from_secs(60),
        &format!("web running on {hosts:?}"),
        || {
            let w = web(lab);
            let inst = &w.instances;
            let running: Vec<u64> = inst
                .iter()
                .filter(|i| i.state == InstanceState::Running)
                .map(|i| i.host)
                .collect();
            if inst.len() != hosts.len() || running != hosts {
                return Ok(None);
            }
            let endpoint = inst[0].endpoints.first().map(String::as_str).unwrap_or("");
            let me = whoami(endpoint)?;
            Ok((me.host == hosts[0]).then_some(w))
        },
    )
}

/// A planner step reduced to what can be compared with the event log.
fn step_key(action: &Action) -> String {
    match action {
        Action::AssignOwner { site, .. } => format!("assign_owner site {site}"),
        Action::Promote { volume, site, .. } => format!("promote {volume} at site {site}"),
        Action::Place { host, .. } => format!("place host {host}"),
        Action::Revoke { host, .. } => format!("revoke host {host}"),
        Action::Forget { host, .. } => format!("forget host {host}"),
    }
}

/// The planner's events since `revision`, reduced the same way.
fn planner_steps(lab: &TestLab, revision: u64) -> Vec<String> {
    let events: Vec<EventView> = lab.ctl(&["events"]).expect("events");
    events
        .iter()
        .filter(|e| e.revision > revision)
        .filter(|e| e.actor.starts_with("planner"))
        .filter_map(|e| {
            let m = e.message.as_str();
            let after = |k: &str| {
                m.split(k)
                    .nth(1)?
                    .split_whitespace()
                    .next()
                    .map(str::to_string)
            };
            if m.contains("instance placed on host") {
                Some(format!("place host {}", after("host ")?))
            } else if m.contains("planned stop") || m.contains(" revoked ") {
                Some(format!("revoke host {}", after("host ")?))
            } else if m.contains("given up") {
                Some(format!("forget host {}", after("host ")?))
            } else if m.contains("owned by site") || m.contains("moves from site") {
                Some(format!(
                    "assign_owner site {}",
                    after("to site ").or_else(|| after("by site "))?
                ))
            } else {
                None
            }
        })
        .collect()
}

/// Runs an operation with `--dry-run`, then for real; waits for `web` on `hosts`; checks that the
/// planner did what the dry run said.
fn operate(lab: &TestLab, args: &[&str], hosts: &[u64]) {
    let mut dry = args.to_vec();
    dry.push("--dry-run");
    let plan: OperationResult = lab.ctl(&dry).unwrap_or_else(|e| panic!("{e}"));
    assert!(plan.dry_run);
    assert_eq!(plan.revision, None, "{args:?}: a dry run wrote");
    let predicted: Vec<String> = plan.plan.iter().map(|s| step_key(&s.action)).collect();
    assert!(!predicted.is_empty(), "{args:?}: empty plan");
    let done: OperationResult = lab.ctl(args).unwrap_or_else(|e| panic!("{e}"));
    assert!(!done.dry_run);
    let revision = done.revision.expect("revision");
    wait_on(lab, hosts);
    let steps = eventually(Duration::from_secs(20), "planner events", || {
        let s = planner_steps(lab, revision);
        Ok((s.len() >= predicted.len()).then_some(s))
    });
    assert_eq!(
        steps, predicted,
        "{args:?}: the real run differs from its dry run"
    );
}

#[test]
fn drain_maintenance_switchover_failover_and_failback_follow_their_dry_runs() {
    let lab = TestLab::up(3, 2);
    demo(&lab, &[]);
    wait_on(&lab, &[1]);

    // Drain: the replacement starts on host 2 before host 1 stops.
    operate(&lab, &["host", "drain", "1"], &[2]);
    let _: OperationResult = lab.ctl(&["host", "undrain", "1"]).expect("undrain");

    // Maintenance evacuates s1 to s2; exit returns the site but the service stays.
    operate(&lab, &["site", "maintenance", "enter", "s1"], &[3]);
    let _: OperationResult = lab
        .ctl(&["site", "maintenance", "exit", "s1"])
        .expect("exit");

    // Switchover to s3, then failback to s1 (first in its list).
    operate(&lab, &["switchover", "web", "--to", "s3"], &[5]);
    operate(&lab, &["failback", "web"], &[1]);

    // Failover of a site the fabric sees alive needs --force.
    let refused = lab
        .ctl::<OperationResult>(&["failover", "--site", "s1"])
        .expect_err("no force");
    assert!(refused.to_string().contains("--force"), "{refused}");
    operate(&lab, &["failover", "--site", "s1", "--force"], &[3]);
    assert_eq!(web(&lab).owner.as_deref(), Some("s2"));

    // Failback while s1 is still declared lost is refused; after exit it works.
    let refused = lab
        .ctl::<OperationResult>(&["failback", "web"])
        .expect_err("s1 lost");
    assert!(refused.to_string().contains("lost"), "{refused}");
    let _: OperationResult = lab
        .ctl(&["site", "maintenance", "exit", "s1"])
        .expect("exit");
    operate(&lab, &["failback", "web"], &[1]);
}

#[test]
fn with_a_witness_two_sites_survive_the_loss_of_either_the_witness_or_a_site() {
    let lab = TestLab::up_with(2, 1, &["--witness"]);
    let status: Status = lab.ctl(&["status"]).expect("status");
    assert_eq!(status.voters.len(), 3, "{status:?}");
    demo(&lab, &[]);
    wait_on(&lab, &[1]);

    // The witness (node 3) goes: nothing moves, writes still commit.
    lab.kill9(3);
    let _: WriteResult = lab
        .ctl(&["note", "witness gone"])
        .expect("write without the witness");
    std::thread::sleep(Duration::from_secs(3));
    let w = wait_on(&lab, &[1]);
    assert_eq!(w.epoch, 1, "{w:?}");
    lab.start(3);

    // Site 1 goes: the service comes up in site 2.
    eventually(Duration::from_secs(30), "witness back", || {
        let sites: Vec<SiteView> = lab.ctl(&["sites"])?;
        Ok(sites.iter().all(|s| s.health == Health::Up).then_some(()))
    });
    lab.kill9(1);
    let w = wait_on(&lab, &[2]);
    assert_eq!(w.owner.as_deref(), Some("s2"));
}

#[test]
fn dns_answers_nxdomain_refused_aaaa_and_bumps_the_serial_on_change() {
    let lab = TestLab::up_with(3, 1, &["--ipv6"]);
    demo(&lab, &[]);
    wait_on(&lab, &[1]);
    let server = {
        let p = lab.proc(2);
        format!("{}:5300", p.address.rsplit_once(':').expect("ip").0)
    };
    let a = eventually(Duration::from_secs(20), "A answer", || {
        let d = dig(&server, NAME, "A");
        Ok((!d.addresses().is_empty()).then_some(d))
    });
    assert_eq!(a.status, "NOERROR");
    let aaaa = dig(&server, NAME, "AAAA");
    assert_eq!(aaaa.addresses(), vec!["::1".to_string()], "{aaaa:?}");

    let nx = dig(&server, "nope.fabric.test.", "A");
    assert_eq!(nx.status, "NXDOMAIN");
    assert!(nx.authority.iter().any(|r| r.starts_with("SOA ")), "{nx:?}");
    assert_eq!(dig(&server, "example.com.", "A").status, "REFUSED");

    let serial = |d: &fabric_tests::Dig| -> u64 {
        d.answers
            .iter()
            .find_map(|r| r.strip_prefix("SOA "))
            .and_then(|soa| soa.split_whitespace().nth(2))
            .and_then(|s| s.parse().ok())
            .expect("serial")
    };
    let before = serial(&dig(&server, "fabric.test.", "SOA"));
    let _: OperationResult = lab
        .ctl(&["switchover", "web", "--to", "s2"])
        .expect("switchover");
    wait_on(&lab, &[2]);
    let after = eventually(Duration::from_secs(20), "serial bumped", || {
        let s = serial(&dig(&server, "fabric.test.", "SOA"));
        Ok((s > before).then_some(s))
    });
    assert!(after > before);
}

#[test]
fn invalid_service_specs_are_refused_and_change_nothing() {
    let lab = TestLab::up(3, 1);
    let dir = lab.dir().join("specs");
    std::fs::create_dir_all(&dir).expect("dir");
    let good = r#"name = "bad"
[kind.process]
command = "/bin/true"
port = 9000
[placement]
sites = ["s1"]
"#;
    let cases = [
        (
            "unknown-field",
            good.replace("port = 9000", "port = 9000\nprot = 1"),
            "prot",
        ),
        (
            "no-placement",
            good.replace("[placement]\nsites = [\"s1\"]\n", ""),
            "placement",
        ),
        (
            "unknown-site",
            good.replace("sites = [\"s1\"]", "sites = [\"s9\"]"),
            "unknown site `s9`",
        ),
        (
            "no-sites",
            good.replace("sites = [\"s1\"]", "sites = []"),
            "placement.sites",
        ),
    ];
    let ctx = lab.context();
    let before: Vec<ServiceView> = lab.ctl(&["services"]).expect("services");
    for (name, text, expected) in cases {
        let path = dir.join(format!("{name}.toml"));
        std::fs::write(&path, text).expect("write");
        let out = sitectl(&[
            "--context",
            &ctx,
            "service",
            "create",
            "--file",
            path.to_str().expect("utf-8"),
        ]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{name}: accepted");
        assert!(err.contains(expected), "{name}: {err}");
        assert_eq!(err.trim().lines().count(), 1, "{name}: one line: {err}");
    }
    let after: Vec<ServiceView> = lab.ctl(&["services"]).expect("services");
    assert_eq!(before, after);
    assert!(after.is_empty(), "{after:?}");
}

/// One probe as a client does it: resolve `web` at `server`, then `/whoami` at the first
/// address; retried once at once (a name can list an instance that stops a moment later).
fn probe_through_dns(server: &str) -> Result<u64, String> {
    let mut last = String::new();
    for _ in 0..2 {
        let d = dig(server, NAME, "A");
        let Some(ip) = d.addresses().into_iter().next() else {
            last = format!("no address: {d:?}");
            continue;
        };
        match whoami(&format!("{ip}:8080")) {
            Ok(me) => return Ok(me.epoch),
            Err(e) => last = format!("{ip}: {e}"),
        }
    }
    Err(last)
}

#[test]
fn a_spec_update_replaces_two_instances_one_at_a_time_under_a_higher_epoch_without_a_failed_probe()
{
    let lab = TestLab::up(3, 2);
    demo(&lab, &["--instances", "2"]);
    let before = wait_on(&lab, &[1, 2]);
    let old_epoch = before.epoch;
    for i in &before.instances {
        let endpoint = i.endpoints.first().expect("endpoint");
        assert_eq!(whoami(endpoint).expect("whoami").epoch, old_epoch);
    }

    // The same spec with one more environment variable.
    let path = lab.dir().join("services").join("web.toml");
    let mut spec: consensus::state::ServiceSpec =
        toml::from_str(&std::fs::read_to_string(&path).expect("demo spec")).expect("parses");
    let consensus::state::WorkloadKind::Process(p) = &mut spec.kind;
    p.env.insert("FABRIC_DEMO_NOTE".into(), "v2".into());
    let v2 = lab.dir().join("web-v2.toml");
    std::fs::write(&v2, toml::to_string(&spec).expect("toml")).expect("write");
    let v2 = v2.to_str().expect("utf-8");

    let dry: OperationResult = lab
        .ctl(&["service", "update", "--file", v2, "--dry-run"])
        .expect("dry run");
    assert_eq!(dry.revision, None);
    assert_eq!(
        dry.spec_changes
            .iter()
            .map(|c| (c.field.as_str(), c.old.as_str(), c.new.as_str()))
            .collect::<Vec<_>>(),
        [("kind.process.env.FABRIC_DEMO_NOTE", "null", "\"v2\"")]
    );
    assert!(dry.change.contains("one at a time"), "{}", dry.change);
    let steps: Vec<String> = dry.plan.iter().map(|s| step_key(&s.action)).collect();
    assert_eq!(
        steps,
        [
            "revoke host 1",
            "place host 1",
            "revoke host 2",
            "place host 2"
        ],
        "{:?}",
        dry.plan
    );
    assert_eq!(
        web(&lab).epoch,
        old_epoch,
        "the dry run changed the service"
    );

    // Probe through DNS the whole time.
    let server = {
        let p = lab.proc(3);
        format!("{}:5300", p.address.rsplit_once(':').expect("ip").0)
    };
    assert_eq!(probe_through_dns(&server), Ok(old_epoch));
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let prober = std::thread::spawn({
        let (server, stop) = (server.clone(), stop.clone());
        move || {
            let mut seen = Vec::new();
            while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                seen.push(probe_through_dns(&server));
                std::thread::sleep(Duration::from_millis(20));
            }
            seen
        }
    });

    let done: OperationResult = lab
        .ctl(&["service", "update", "--file", v2])
        .expect("update");
    assert!(done.revision.is_some());
    let after = eventually(Duration::from_secs(60), "both replaced", || {
        let w = web(&lab);
        let replaced = w.instances.len() == 2
            && w.instances
                .iter()
                .all(|i| i.epoch == old_epoch + 1 && i.state == InstanceState::Running);
        Ok(replaced.then_some(w))
    });
    eventually(Duration::from_secs(20), "DNS serves the new epoch", || {
        Ok((probe_through_dns(&server) == Ok(old_epoch + 1)).then_some(()))
    });
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let seen = prober.join().expect("prober");

    assert_eq!(after.owner.as_deref(), Some("s1"), "the update moved it");
    assert_eq!(after.epoch, old_epoch + 1);
    for i in &after.instances {
        let endpoint = i.endpoints.first().expect("endpoint");
        assert_eq!(whoami(endpoint).expect("whoami").epoch, old_epoch + 1);
    }
    let failed: Vec<&String> = seen.iter().filter_map(|r| r.as_ref().err()).collect();
    assert!(
        failed.is_empty(),
        "{} of {} probes failed: {failed:?}",
        failed.len(),
        seen.len()
    );
    let epochs: Vec<u64> = seen
        .iter()
        .filter_map(|r| r.as_ref().ok().copied())
        .collect();
    assert!(
        epochs.windows(2).all(|w| w[0] <= w[1]),
        "clients saw the epoch go back: {epochs:?}"
    );
    println!(
        "{} probes through DNS during the update, none failed; epochs {old_epoch} -> {}",
        seen.len(),
        old_epoch + 1
    );

    // The planner did it as the dry run said; an unchanged spec is a no-op.
    let revision = done.revision.expect("revision");
    assert_eq!(planner_steps(&lab, revision), steps);
    let again: OperationResult = lab
        .ctl(&["service", "update", "--file", v2])
        .expect("no-op update");
    assert!(again.plan.is_empty(), "{:?}", again.plan);
    assert!(again.spec_changes.is_empty());
    assert_eq!(web(&lab).epoch, old_epoch + 1);

    // A renamed spec is refused with the reason.
    spec.name = "web2".into();
    spec.dns_name = Some("web2".into());
    let renamed = lab.dir().join("web2.toml");
    std::fs::write(&renamed, toml::to_string(&spec).expect("toml")).expect("write");
    let err = lab
        .ctl::<OperationResult>(&[
            "service",
            "update",
            "--file",
            renamed.to_str().expect("utf-8"),
        ])
        .expect_err("unknown service");
    assert!(err.to_string().contains("unknown service `web2`"), "{err}");
}
