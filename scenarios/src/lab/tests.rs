use super::*;
use siteagent::config::AgentConfig;

use crate::scenario::LinkDef;

fn options(witness: bool, links: Vec<LinkDef>) -> UpOptions {
    UpOptions {
        sites: 3,
        hosts_per_site: 2,
        net: Some(10),
        timeout: Duration::from_secs(1),
        siteagent: PathBuf::from("siteagent"),
        progress: false,
        witness,
        ipv6: true,
        swim_over_quic: false,
        worker_threads: super::LAB_WORKER_THREADS,
        timing: LabTiming::default(),
        links,
        probe_ports: vec![8080],
        seed: 1,
    }
}

fn every_link(delay_ms: u64) -> Vec<LinkDef> {
    vec![LinkDef {
        a: "*".into(),
        b: "*".into(),
        delay: Some(Duration::from_millis(delay_ms)),
        jitter: None,
        loss: Some("1%".into()),
        rate: Some("100mbit".into()),
    }]
}

#[test]
fn a_lab_written_agent_config_parses_back_and_passes_the_agents_own_check() {
    let file = LabFile::plan(&options(true, every_link(20)), 10).expect("plan");
    let voters = file.voters();
    assert_eq!(voters.len(), 4, "one voter per site and the witness");
    for a in &file.agents {
        let text = agent_config_text(&file, a, &voters).expect("serialises");
        assert!(text.starts_with("# Written by `sitectl lab up`"), "{text}");
        let parsed = AgentConfig::parse(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
        let written = agent_config(&file, a, &voters);
        assert_eq!(parsed.node_id, a.node);
        assert_eq!(parsed.roles, a.roles);
        assert_eq!(parsed.peers, written.peers);
        assert_eq!(parsed.wan.routes, written.wan.routes);
        assert_eq!(parsed.failover.lease, file.timing.lease);
        assert_eq!(
            parsed.dns.listen,
            Some(SocketAddr::new(a.wan.ip(), DNS_PORT))
        );
        assert_eq!(parsed.host.addresses.len(), 2, "IPv4 and ::1");
        // Through the emulator: every agent of the 3 other sites (witness included).
        let others = file.agents.iter().filter(|o| o.site != a.site).count();
        assert_eq!(parsed.wan.routes.len(), others);
    }
}

#[test]
fn a_lab_timing_the_agent_refuses_is_refused_by_its_config_check() {
    let mut opts = options(false, Vec::new());
    opts.timing.lease_margin = opts.timing.lease;
    let file = LabFile::plan(&opts, 10).expect("plan");
    let text = agent_config_text(&file, &file.agents[0], &file.voters()).expect("text");
    let err = AgentConfig::parse(&text)
        .expect_err("unsafe lease")
        .to_string();
    assert!(err.contains("failover.lease"), "{err}");
}

#[test]
fn a_lab_written_emu_config_parses_back_and_builds() {
    let file = LabFile::plan(&options(false, every_link(40)), 10).expect("plan");
    let config = links::emu_config(&file, Path::new("/tmp/lab"), 7);
    let text = toml::to_string(&config).expect("serialises");
    let parsed = emu::EmuConfig::parse(&text, Path::new("emu.toml"))
        .unwrap_or_else(|e| panic!("{e}\n{text}"));
    assert_eq!(parsed, config);
    assert_eq!(parsed.links.len(), 3, "s1-s2, s1-s3, s2-s3");
    assert_eq!(parsed.links[0].delay, Some(Duration::from_millis(40)));
    // 6 agents × 2 other sites × (WAN + one service port).
    assert_eq!(parsed.forwards.len(), 6 * 2 * 2);
}

#[test]
fn sites_are_named_once_each_in_agent_order() {
    let file = LabFile::plan(&options(true, Vec::new()), 10).expect("plan");
    assert_eq!(file.site_names(), ["s1", "s2", "s3", "w"]);
    assert!(file.links.is_empty(), "no link definitions: no emulator");
}

#[test]
fn a_written_service_spec_reads_back_the_same() {
    let dir = tempfile::tempdir().expect("dir");
    let lab = Lab {
        dir: dir.path().to_path_buf(),
        file: LabFile::plan(&options(false, Vec::new()), 10).expect("plan"),
    };
    let spec = ServiceSpec {
        name: "web".into(),
        kind: WorkloadKind::Process(ProcessSpec {
            command: "/bin/demo".into(),
            args: vec!["--volume-root".into(), "/tmp/v".into()],
            env: BTreeMap::new(),
            port: 8080,
        }),
        placement: Placement {
            sites: vec!["s2".into(), "s1".into()],
            instances: 2,
            anti_affinity: Vec::new(),
        },
        dns_name: Some("web".into()),
        resources: Capacity {
            cpu_millis: 100,
            memory_mib: 64,
        },
        volumes: Vec::new(),
        max_rpo: None,
    };
    let path = lab.write_spec(&spec).expect("written");
    assert_eq!(read_spec(&path).expect("reads back"), spec);
}

#[test]
fn the_last_error_line_of_an_agent_log_is_found_without_colours() {
    let log = "\u{1b}[2m2026\u{1b}[0m  INFO starting\n\u{1b}[31mERROR\u{1b}[0m raft: no quorum\n INFO retry\n\n";
    assert_eq!(last_error(log).as_deref(), Some("ERROR raft: no quorum"));
    let plain = "siteagent: agent.toml: field `failover.lease`: must be more\n";
    assert_eq!(
        last_error(plain).as_deref(),
        Some("siteagent: agent.toml: field `failover.lease`: must be more"),
        "without an ERROR line, the last line"
    );
    assert_eq!(last_error("\n  \n"), None);
}
