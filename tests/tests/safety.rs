//! Ownership safety end to end: never two sites serving one service, and epochs that never go
//! backwards for a name — through real agents, the link emulator and the demo workload.

use std::time::{Duration, Instant};

use consensus::state::{InstanceState, ServiceSpec};
use fabric_tests::{TestLab, eventually, whoami};
use siteagent::api::{OperationResult, ServiceView, Status};

/// `sitectl lab demo`: the demo service `web`, owned by the first site of its list.
fn deploy_demo(lab: &TestLab) {
    let ctx = lab.context();
    let _: OperationResult = fabric_tests::sitectl_json(&[
        "--context",
        &ctx,
        "--output",
        "json",
        "lab",
        "demo",
        "--dir",
        lab.dir_str(),
    ])
    .expect("lab demo");
}

fn admin_of(lab: &TestLab, site: &str) -> String {
    lab.procs()
        .into_iter()
        .find(|p| p.site == site && p.alive)
        .map(|p| p.admin)
        .expect("an agent in the site")
}

/// The running instance of `web` as `admin` sees it: (site, endpoint, epoch).
fn running_at(lab: &TestLab, admin: &str) -> anyhow::Result<Option<(String, String, u64)>> {
    let services: Vec<ServiceView> = lab.ctl_at(admin, &["service", "list"])?;
    Ok(services
        .into_iter()
        .find(|s| s.name == "web")
        .and_then(|s| {
            s.instances
                .into_iter()
                .find(|i| i.state == InstanceState::Running)
        })
        .and_then(|i| Some((i.site?, i.endpoints.first()?.clone(), i.epoch))))
}

#[test]
fn delete_and_re_create_across_a_partition_never_serves_from_two_sites() {
    let lab = TestLab::up_with_links(3, 1);
    deploy_demo(&lab);
    let s1_admin = admin_of(&lab, "s1");
    let (site, old_endpoint, old_epoch) =
        eventually(Duration::from_secs(60), "web running in s1", || {
            let Some(r) = running_at(&lab, &s1_admin)? else {
                return Ok(None);
            };
            whoami(&r.1)?;
            Ok(Some(r))
        });
    assert_eq!(site, "s1");

    // The same service, declared again for the majority's sites only.
    let text = std::fs::read_to_string(lab.dir().join("services/web.toml")).expect("demo spec");
    let mut spec: ServiceSpec = toml::from_str(&text).expect("demo spec parses");
    spec.placement.sites = vec!["s2".into(), "s3".into()];
    let again = lab.dir().join("services/web-again.toml");
    std::fs::write(&again, toml::to_string(&spec).expect("spec encodes")).expect("write spec");

    lab.link("partition", "s1", "s2");
    lab.link("partition", "s1", "s3");
    let s2_admin = admin_of(&lab, "s2");
    let _: OperationResult = eventually(Duration::from_secs(30), "delete through s2", || {
        Ok(Some(lab.ctl_at(&s2_admin, &["service", "delete", "web"])?))
    });

    // Keep asking to create it again (refused while the old instance may still serve), and
    // watch both sites the whole time.
    let again = again.to_str().expect("utf-8 path");
    let deadline = Instant::now() + Duration::from_secs(90);
    let mut created = false;
    let mut new: Option<(String, String, u64)> = None;
    let mut old_gone_since: Option<Instant> = None;
    loop {
        assert!(
            Instant::now() < deadline,
            "web never served from the majority again (created: {created}, new: {new:?})"
        );
        if !created {
            created = lab
                .ctl_at::<OperationResult>(&s2_admin, &["service", "create", "--file", again])
                .is_ok();
        }
        if created && new.is_none() {
            new = running_at(&lab, &s2_admin).ok().flatten();
        }
        let old_serves = whoami(&old_endpoint).is_ok();
        let new_serves = new
            .as_ref()
            .and_then(|(_, ep, _)| whoami(ep).ok())
            .map(|me| (me.site, me.epoch));
        assert!(
            !(old_serves && new_serves.is_some()),
            "two sites serve web: s1 (epoch {old_epoch}) and {new_serves:?}"
        );
        if old_serves {
            old_gone_since = None;
        } else {
            old_gone_since.get_or_insert_with(Instant::now);
        }
        if let Some((site, epoch)) = new_serves {
            assert_ne!(site, "s1");
            assert!(
                epoch > old_epoch,
                "the re-created service serves under epoch {epoch}, not above the old {old_epoch}"
            );
            // Watch a little longer: the old one must stay dark.
            if old_gone_since.is_some_and(|t| t.elapsed() > Duration::from_secs(2)) {
                break;
            }
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The Raft leader's node and site, as `admin` sees them, with the term.
fn leader_at(lab: &TestLab, admin: &str) -> anyhow::Result<Option<(u64, String, u64)>> {
    let status: Status = lab.ctl_at(admin, &["status"])?;
    let Some(leader) = status.leader else {
        return Ok(None);
    };
    let site = lab
        .procs()
        .into_iter()
        .find(|p| p.node == leader)
        .map(|p| p.site);
    Ok(site.map(|s| (leader, s, status.term)))
}

/// The DNS server of the agent in `site`.
fn dns_of(lab: &TestLab, site: &str) -> String {
    let p = lab
        .procs()
        .into_iter()
        .find(|p| p.site == site && p.alive)
        .expect("an agent in the site");
    let ip = p.address.rsplit_once(':').expect("ip:port").0.to_string();
    format!("{ip}:5300")
}

#[test]
fn a_cut_between_the_leader_and_the_owner_site_keeps_the_service_served() {
    let lab = TestLab::up_with_links(3, 1);
    deploy_demo(&lab);
    let any_admin = admin_of(&lab, "s1");
    eventually(Duration::from_secs(60), "web running", || {
        running_at(&lab, &any_admin)
    });
    let (_, leader_site, _) = eventually(Duration::from_secs(30), "a leader", || {
        leader_at(&lab, &any_admin)
    });
    // The owner must be another site than the leader's.
    let (site, _, _) = running_at(&lab, &any_admin)
        .expect("service list")
        .expect("web running");
    let owner = if site == leader_site {
        let to = if leader_site == "s2" { "s3" } else { "s2" };
        let _: OperationResult = lab
            .ctl_at(&any_admin, &["switchover", "web", "--to", to])
            .expect("switchover");
        to.to_string()
    } else {
        site
    };
    let (_, endpoint, epoch) =
        eventually(Duration::from_secs(60), "web serving in the owner", || {
            let r = running_at(&lab, &any_admin)?.filter(|r| r.0 == owner);
            if let Some(r) = &r {
                whoami(&r.1)?;
            }
            Ok(r)
        });
    let witness = ["s1", "s2", "s3"]
        .into_iter()
        .find(|s| *s != owner && *s != leader_site)
        .expect("a third site")
        .to_string();
    let witness_admin = admin_of(&lab, &witness);
    let (leader, _, term) = leader_at(&lab, &witness_admin)
        .expect("status")
        .expect("a leader");
    let owner_ip = endpoint
        .rsplit_once(':')
        .expect("ip:port")
        .0
        .trim_matches(['[', ']'])
        .to_string();

    lab.link("partition", &leader_site, &owner);
    // Longer than the lease (5 s) plus margin, detection and a planner round several times over.
    let cut = Instant::now();
    let mut failed = Vec::new();
    while cut.elapsed() < Duration::from_secs(20) {
        match whoami(&endpoint) {
            Ok(me) => {
                assert_eq!(me.site, owner, "the service moved during the cut");
                assert_eq!(me.epoch, epoch, "the service was restarted during the cut");
            }
            Err(e) => failed.push(format!("{:.1}s: {e}", cut.elapsed().as_secs_f64())),
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(
        failed.is_empty(),
        "the owner site went dark while it kept a majority path: {failed:?}\n{}",
        lab.logs()
    );
    // Every site's DNS still answers with the owner's address.
    for site in [&leader_site, &owner, &witness] {
        let answer = fabric_tests::dig(&dns_of(&lab, site), "web.fabric.test.", "A");
        assert_eq!(
            answer.addresses(),
            vec![owner_ip.clone()],
            "DNS in {site} during the cut: {answer:?}"
        );
    }
    // Leadership did not flap: the witness still follows the same leader in the same term.
    let (leader_now, _, term_now) = leader_at(&lab, &witness_admin)
        .expect("status")
        .expect("a leader");
    assert_eq!(
        (leader_now, term_now),
        (leader, term),
        "leadership changed during a one-sided cut"
    );

    lab.link("heal", &leader_site, &owner);
    std::thread::sleep(Duration::from_secs(3));
    let me = whoami(&endpoint).expect("served after the heal");
    assert_eq!((me.site.as_str(), me.epoch), (owner.as_str(), epoch));
    // Nor when it healed: the cut-off voter did not campaign, so no higher term deposes the
    // leader now (pre-vote).
    let after_heal = leader_at(&lab, &witness_admin).expect("status");
    assert_eq!(
        after_heal.map(|(l, _, t)| (l, t)),
        Some((leader, term)),
        "an election followed the heal"
    );
}
