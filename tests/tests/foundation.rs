//! The foundation, end to end: real `siteagent` processes started by `sitectl lab` on loopback.

use std::time::Duration;

use consensus::state::{FabricState, HostState};
use fabric_tests::{ChildGuard, TestLab, eventually, siteagent_bin, sitectl};
use siteagent::api::{HostView, MemberView, SiteView, Status, WriteResult};

/// Every agent's own `/v1/status`, keyed by node.
fn statuses(lab: &TestLab) -> Vec<(u64, Status)> {
    lab.procs()
        .into_iter()
        .filter(|p| p.alive)
        .filter_map(|p| {
            lab.ctl_at::<Status>(&p.admin, &["status"])
                .ok()
                .map(|s| (p.node, s))
        })
        .collect()
}

#[test]
fn three_site_lab_has_one_leader_and_every_host_registered() {
    let lab = TestLab::up(3, 1);

    let status: Status = lab.ctl(&["status"]).expect("status");
    let leader = status.leader.expect("a leader");
    let mut voters = status.voters.clone();
    voters.sort();
    assert_eq!(voters, vec![1, 2, 3]);
    assert!(status.term >= 1);
    let mut hosts: Vec<u64> = status.hosts.iter().map(|h| h.id).collect();
    hosts.sort();
    assert_eq!(hosts, vec![1, 2, 3]);
    for h in &status.hosts {
        assert!(h.site.starts_with('s'), "{h:?}");
        assert_eq!(h.state, HostState::Up, "{h:?}");
    }

    // Exactly one agent thinks it leads, and everyone names the same leader.
    let all = eventually(
        Duration::from_secs(20),
        "every agent knows the leader",
        || {
            let all = statuses(&lab);
            Ok(
                (all.len() == 3 && all.iter().all(|(_, s)| s.leader == Some(leader)))
                    .then_some(all),
            )
        },
    );
    let leading: Vec<u64> = all
        .iter()
        .filter(|(_, s)| s.raft_state == "leader")
        .map(|(n, _)| *n)
        .collect();
    assert_eq!(leading, vec![leader]);

    // Inventory commands agree with the status.
    let sites: Vec<SiteView> = lab.ctl(&["sites"]).expect("sites");
    assert_eq!(sites.len(), 3);
    assert!(
        sites.iter().all(|s| s.hosts == 1 && s.voters.len() == 1),
        "{sites:?}"
    );
    let hosts: Vec<HostView> = lab.ctl(&["hosts"]).expect("hosts");
    assert_eq!(hosts.len(), 3);
    assert!(hosts.iter().all(|h| h.raft == "voter"), "{hosts:?}");

    // lab status lists every agent with pid, address, roles, alive.
    let procs = lab.procs();
    assert_eq!(procs.len(), 3);
    for p in &procs {
        assert!(p.alive && p.pid.is_some(), "{p:?}");
        assert!(p.address.starts_with("127."), "{p:?}");
        assert_eq!(p.roles, vec!["voter", "host", "dns"]);
    }

    // A second `lab up` on the same directory refuses and leaves the lab alone.
    let again = sitectl(&["lab", "up", "--dir", lab.dir_str(), "--sites", "3"]);
    assert!(!again.status.success());
    let err = String::from_utf8_lossy(&again.stderr);
    assert!(err.contains("already holds a lab"), "{err}");
    assert!(lab.procs().iter().all(|p| p.alive));

    // `lab down` stops them all.
    let down = sitectl(&["lab", "down", "--dir", lab.dir_str()]);
    assert!(
        down.status.success(),
        "{}",
        String::from_utf8_lossy(&down.stderr)
    );
    assert!(lab.procs().iter().all(|p| !p.alive));
    let after = sitectl(&["--context", &lab.context(), "status"]);
    assert!(
        !after.status.success(),
        "status answered with every agent down"
    );
}

#[test]
fn killed_leader_is_replaced_and_rejoins_with_its_state() {
    let lab = TestLab::up(3, 1);
    let old: Status = lab.ctl(&["status"]).expect("status");
    let old_leader = old.leader.expect("leader");
    lab.ctl::<WriteResult>(&["note", "before the failover"])
        .expect("write before");
    let old_admin = lab.proc(old_leader).admin;
    let before: FabricState = lab
        .ctl_at(&old_admin, &["state", "--local"])
        .expect("state before kill");
    let before_rev = before.revision;

    lab.kill9(old_leader);

    let new_leader = eventually(Duration::from_secs(30), "a new leader", || {
        Ok(statuses(&lab)
            .iter()
            .filter_map(|(_, s)| s.leader)
            .find(|l| *l != old_leader))
    });
    assert_ne!(new_leader, old_leader);
    // A write through the admin API succeeds (the context's first endpoint may be the dead one).
    let w: WriteResult = eventually(Duration::from_secs(30), "a write after failover", || {
        Ok(lab.ctl::<WriteResult>(&["note", "after the failover"]).ok())
    });
    assert!(w.revision > before_rev);

    // Restarted with the same data dir: its state is there before it catches up...
    lab.start(old_leader);
    let restarted: FabricState =
        eventually(Duration::from_secs(30), "restarted agent answers", || {
            Ok(lab
                .ctl_at::<FabricState>(&old_admin, &["state", "--local"])
                .ok())
        });
    assert!(
        restarted.revision >= before_rev,
        "restarted agent lost its state: {} < {before_rev}",
        restarted.revision
    );
    // ...and it catches up to exactly the others' state.
    eventually(Duration::from_secs(60), "replicas converge", || {
        let states: Vec<FabricState> = lab
            .procs()
            .iter()
            .map(|p| lab.ctl_at::<FabricState>(&p.admin, &["state", "--local"]))
            .collect::<anyhow::Result<_>>()?;
        let notes = states[0]
            .events
            .iter()
            .any(|e| e.message == "after the failover");
        Ok((notes && states.iter().all(|s| *s == states[0])).then_some(()))
    });
    let members: Vec<MemberView> = lab.ctl(&["members", "list"]).expect("members");
    assert_eq!(members.iter().filter(|m| m.role == "voter").count(), 3);
}

#[test]
fn an_agent_on_other_lease_terms_is_refused_and_stops() {
    let lab = TestLab::up(3, 1);
    let terms = eventually(Duration::from_secs(30), "agreed lease terms", || {
        let state: FabricState = lab.ctl(&["state"])?;
        Ok(state.lease_terms)
    });
    let status: Status = lab.ctl(&["status"]).expect("status");
    let leader = status.leader;
    let node = (1..=3u64).find(|n| Some(*n) != leader).expect("a follower");
    lab.kill9(node);
    let config = lab.dir().join(format!("nodes/n{node}/agent.toml"));
    let text = std::fs::read_to_string(&config).expect("agent config");
    let changed: Vec<String> = text
        .lines()
        .map(|l| {
            if l.starts_with("lease = ") {
                "lease = \"9s\"".to_string()
            } else {
                l.to_string()
            }
        })
        .collect();
    assert_ne!(
        changed.join("\n"),
        text.trim_end(),
        "no lease line in {text}"
    );
    std::fs::write(&config, changed.join("\n")).expect("write config");

    lab.start(node);
    eventually(Duration::from_secs(60), "the agent refuses to run", || {
        Ok((!lab.proc(node).alive && lab.log(node).contains("failover.lease")).then_some(()))
    });
    let log = lab.log(node);
    assert!(
        log.contains("lease = 9000ms") && log.contains("every agent must use the same"),
        "{log}"
    );
    let state: FabricState = lab.ctl(&["state"]).expect("state after");
    assert_eq!(state.lease_terms, Some(terms), "the fabric's terms changed");
}

#[test]
fn foreign_certificates_cannot_join_or_read() {
    let lab = TestLab::up(3, 1);
    let other = tempfile::tempdir().expect("tmp");
    let pki = other.path().join("pki");
    let pki_s = pki.to_str().expect("path");
    for args in [
        vec!["pki", "init", "--dir", pki_s],
        vec![
            "pki", "issue", "--dir", pki_s, "--node", "9", "--site", "s1", "--role", "agent",
        ],
        vec![
            "pki", "issue", "--dir", pki_s, "--node", "mallory", "--site", "s1", "--role",
            "operator",
        ],
    ] {
        let out = sitectl(&args);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    // An agent with a foreign certificate tries to join through the lab's voters. It trusts the
    // lab's CA as well (a bundle), so it gets as far as presenting its own certificate.
    let bundle = other.path().join("trust.crt");
    let mut trust = std::fs::read(pki.join("ca.crt")).expect("foreign ca");
    trust.extend(std::fs::read(lab.dir().join("pki/ca.crt")).expect("lab ca"));
    std::fs::write(&bundle, trust).expect("bundle");
    let voter = lab.proc(1);
    let net: Vec<&str> = voter.address.split('.').collect();
    let base = format!("127.{}.1.77", net[1]);
    let config = other.path().join("agent.toml");
    std::fs::write(
        &config,
        format!(
            r#"node_id = 9
site = "s1"
roles = ["host"]
data_dir = "data"
wan_listen = "{base}:7100"
admin_listen = "{base}:7443"
peers = ["{}"]
[tls]
ca = "trust.crt"
cert = "pki/agent-9.crt"
key = "pki/agent-9.key"
"#,
            voter.address
        ),
    )
    .expect("config");
    let intruder = ChildGuard(
        std::process::Command::new(siteagent_bin())
            .arg("--config")
            .arg(&config)
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("start intruder"),
    );
    eventually(
        Duration::from_secs(20),
        "the voter logs the refusal",
        || {
            Ok(lab
            .log(1)
            .contains("refused client certificate of agent 9 of site s1: it was not issued by this fabric's CA")
            .then_some(()))
        },
    );
    std::thread::sleep(Duration::from_secs(2));
    drop(intruder);
    let members: Vec<MemberView> = lab.ctl(&["members", "list"]).expect("members");
    assert!(
        members.iter().all(|m| m.node != 9),
        "intruder joined: {members:?}"
    );
    let hosts: Vec<HostView> = lab.ctl(&["hosts"]).expect("hosts");
    assert!(hosts.iter().all(|h| h.id != 9), "{hosts:?}");

    // An operator certificate from the foreign CA cannot read.
    let foreign_ctx = other.path().join("foreign.toml");
    std::fs::write(
        &foreign_ctx,
        format!(
            "endpoints = [\"{}\"]\n[tls]\nca = \"{}\"\ncert = \"pki/operator-mallory.crt\"\nkey = \"pki/operator-mallory.key\"\n",
            voter.admin,
            lab.dir().join("pki/ca.crt").display()
        ),
    )
    .expect("ctx");
    let out = sitectl(&["--context", foreign_ctx.to_str().expect("p"), "status"]);
    assert!(!out.status.success(), "foreign operator could read");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.trim().lines().count(), 1, "not one line: {err}");

    // An agent certificate of the right CA is not an operator certificate.
    let agent_ctx = other.path().join("agent-as-operator.toml");
    std::fs::write(
        &agent_ctx,
        format!(
            "endpoints = [\"{}\"]\n[tls]\nca = \"{pki}/ca.crt\"\ncert = \"{pki}/agent-2.crt\"\nkey = \"{pki}/agent-2.key\"\n",
            voter.admin,
            pki = lab.dir().join("pki").display()
        ),
    )
    .expect("ctx");
    let out = sitectl(&["--context", agent_ctx.to_str().expect("p"), "status"]);
    assert!(
        !out.status.success(),
        "agent certificate was accepted as an operator"
    );
    eventually(Duration::from_secs(10), "the refusal is logged", || {
        Ok(lab
            .log(1)
            .contains("role agent is not accepted here")
            .then_some(()))
    });
}

#[test]
fn bad_frames_on_the_wan_port_do_not_take_the_agent_down() {
    let lab = TestLab::up(3, 1);
    let target = lab.proc(1);
    let addr: std::net::SocketAddr = target.address.parse().expect("addr");
    let pki = lab.dir().join("pki");
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    rt.block_on(async {
        let tls = wan::FabricTls::load(&wan::TlsFiles {
            ca: pki.join("ca.crt"),
            cert: pki.join("agent-2.crt"),
            key: pki.join("agent-2.key"),
        })
        .expect("tls");
        let client = wan::Wan::bind(
            "127.0.0.1:0".parse().expect("a"),
            &tls,
            wan::WanConfig::default(),
        )
        .expect("bind");
        // Oversized frame on the raft channel.
        let (mut send, mut recv) = client.open_raw(addr).await.expect("raw");
        send.write_all(&[1, 0xff, 0xff, 0xff, 0xff])
            .await
            .expect("write");
        let _ = send.finish();
        assert!(
            recv.read_to_end(1 << 20).await.is_err(),
            "oversized frame answered"
        );
        // Well-sized garbage on the raft and control channels.
        for channel in [1u8, 2] {
            let (mut send, mut recv) = client.open_raw(addr).await.expect("raw");
            let mut bytes = vec![channel, 0, 0, 0, 16];
            bytes.extend([0xff; 16]);
            send.write_all(&bytes).await.expect("write");
            let _ = send.finish();
            assert!(
                recv.read_to_end(1 << 20).await.is_err(),
                "garbage answered on {channel}"
            );
        }
        // Raw UDP garbage at the QUIC socket.
        let udp = tokio::net::UdpSocket::bind("127.0.0.1:0")
            .await
            .expect("udp");
        for i in 0..200u32 {
            udp.send_to(&i.to_be_bytes().repeat(300), addr)
                .await
                .expect("send");
        }
    });
    assert!(lab.proc(1).alive, "agent died:\n{}", lab.logs());
    let s: Status = lab
        .ctl_at(&target.admin, &["status"])
        .expect("agent still answers");
    assert!(s.leader.is_some());
    lab.ctl::<WriteResult>(&["note", "still serving"])
        .expect("write after garbage");
    assert!(lab.log(1).contains("malformed frame") || lab.log(1).contains("exceeds the maximum"));
}

#[test]
fn malformed_config_and_context_files_give_clear_errors() {
    let dir = tempfile::tempdir().expect("tmp");
    let example = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../siteagent/agent.example.toml"
    ))
    .expect("example config");
    let bad = dir.path().join("agent.toml");
    std::fs::write(
        &bad,
        example.replace("bootstrap = true", "bootstrap = true\nelection = \"fast\""),
    )
    .expect("w");
    let out = std::process::Command::new(siteagent_bin())
        .arg("--config")
        .arg(&bad)
        .output()
        .expect("run siteagent");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("election") && err.contains("agent.toml"),
        "{err}"
    );

    let ctx = dir.path().join("context.toml");
    std::fs::write(
        &ctx,
        "endpoints = [\"127.0.0.1:1\"]\nendpoint = 3\n[tls]\nca='a'\ncert='b'\nkey='c'\n",
    )
    .expect("w");
    let out = sitectl(&["--context", ctx.to_str().expect("p"), "status"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(
        err.contains("endpoint") && err.contains("context.toml"),
        "{err}"
    );

    std::fs::write(
        &ctx,
        "endpoints = [\"not an address\"]\n[tls]\nca='a'\ncert='b'\nkey='c'\n",
    )
    .expect("w");
    let out = sitectl(&["--context", ctx.to_str().expect("p"), "status"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("endpoints"));

    // An unreachable agent: one line, non-zero.
    let pki = dir.path().join("pki");
    let pki_s = pki.to_str().expect("p");
    assert!(sitectl(&["pki", "init", "--dir", pki_s]).status.success());
    assert!(
        sitectl(&[
            "pki", "issue", "--dir", pki_s, "--node", "ops", "--site", "s1", "--role", "operator"
        ])
        .status
        .success()
    );
    std::fs::write(
        &ctx,
        "endpoints = [\"127.0.0.1:9\"]\n[tls]\nca='pki/ca.crt'\ncert='pki/operator-ops.crt'\nkey='pki/operator-ops.key'\n",
    )
    .expect("w");
    let out = sitectl(&["--context", ctx.to_str().expect("p"), "hosts"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(err.contains("127.0.0.1:9"), "{err}");
}
