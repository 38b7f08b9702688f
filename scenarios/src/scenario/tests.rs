use super::*;

const MINIMAL: &str = r#"
name = "t"

[topology]
sites = 3
hosts_per_site = 2

[[service]]
name = "web"

[[step]]
at = "5s"
action = "kill_site"
site = "s1"

[expect]
final_owner = "s2"
"#;

fn parse(text: &str) -> Result<Scenario, ScenarioError> {
    Scenario::parse(text, "test.toml")
}

#[test]
fn every_shipped_drill_parses() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("drills");
    let mut names = Vec::new();
    for entry in std::fs::read_dir(&dir).expect("drills dir") {
        let path = entry.expect("entry").path();
        let s = Scenario::load(&path).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            Some(s.name.as_str()),
            path.file_stem().and_then(|n| n.to_str()),
            "the name matches the file"
        );
        names.push(s.name);
    }
    names.sort();
    assert_eq!(
        names,
        [
            "asymmetric-cut",
            "flapping-link",
            "host-loss",
            "partition-minority",
            "planned-switchover",
            "resync-after-partition",
            "rolling-maintenance",
            "site-loss",
            "site-loss-async",
            "slow-wan",
            "witness-loss"
        ]
    );
}

#[test]
fn minimal_scenario_gets_defaults() {
    let s = parse(MINIMAL).expect("parses");
    assert_eq!(s.vantages(), ["s1", "s2", "s3"]);
    assert!(s.expect.no_split_brain);
    assert_eq!(s.probes.interval, Duration::from_millis(250));
    assert_eq!(s.service().port, 8080);
}

#[test]
fn an_unknown_field_is_named_with_its_line() {
    let text = MINIMAL.replace("site = \"s1\"", "site = \"s1\"\nsiet = 2");
    let err = parse(&text).expect_err("unknown field").to_string();
    assert!(err.contains("siet"), "{err}");
    assert!(err.contains("line"), "{err}");
}

#[test]
fn an_unknown_action_lists_the_known_ones() {
    let text = MINIMAL.replace("kill_site", "explode_site");
    let err = parse(&text).expect_err("unknown action").to_string();
    assert!(err.contains("explode_site"), "{err}");
    assert!(err.contains("kill_site"), "{err}");
}

#[test]
fn an_unknown_site_in_a_step_names_its_line_and_column() {
    let text = MINIMAL.replace("site = \"s1\"", "site = \"s9\"");
    let err = parse(&text).expect_err("unknown site");
    let ScenarioError::Invalid {
        line,
        column,
        field,
        reason,
        ..
    } = &err
    else {
        panic!("{err}");
    };
    // `site = "s9"` on line 14: the value starts at column 8.
    assert_eq!((*line, *column), (14, 8), "{err}");
    assert_eq!(field, "step.site");
    assert!(reason.contains("s9"), "{reason}");
}

#[test]
fn a_step_without_what_it_needs_is_refused() {
    let text = MINIMAL.replace("site = \"s1\"", "");
    let err = parse(&text).expect_err("no site").to_string();
    assert!(err.contains("KillSite needs `site`"), "{err}");
    let text = MINIMAL.replace(
        "action = \"kill_site\"\nsite = \"s1\"",
        "action = \"wait_until\"\nuntil = \"owner\"",
    );
    let err = parse(&text).expect_err("no site in condition").to_string();
    assert!(err.contains("owner:s2"), "{err}");
}

#[test]
fn steps_out_of_time_order_are_refused() {
    let text = format!("{MINIMAL}\n[[step]]\nat = \"1s\"\naction = \"heal\"\nsite = \"s1\"\n");
    let err = parse(&text).expect_err("out of order").to_string();
    assert!(err.contains("time order"), "{err}");
}

#[test]
fn bad_link_parameters_are_refused() {
    let text = MINIMAL.replace(
        "[[service]]",
        "[[topology.link]]\na = \"*\"\nb = \"*\"\nloss = \"120%\"\n\n[[service]]",
    );
    let err = parse(&text).expect_err("bad loss").to_string();
    assert!(err.contains("120%"), "{err}");
}

#[test]
fn expectations_must_name_known_sites() {
    let text = MINIMAL.replace("final_owner = \"s2\"", "final_owner = \"s7\"");
    let err = parse(&text).expect_err("unknown site").to_string();
    assert!(err.contains("expect.final_owner"), "{err}");
}

/// Line, column and field of a refused scenario.
fn position(text: &str) -> (usize, usize, String) {
    match parse(text).expect_err("refused") {
        ScenarioError::Invalid {
            line,
            column,
            field,
            ..
        } => (line, column, field),
        other => panic!("not a checked field: {other}"),
    }
}

#[test]
fn a_missing_step_field_points_at_the_action_that_needs_it() {
    let text = MINIMAL.replace("site = \"s1\"", "");
    // `action = "kill_site"` on line 13: the value starts at column 10.
    assert_eq!(position(&text), (13, 10, "step.site".into()));
}

#[test]
fn a_wrong_step_value_is_named_at_its_own_line_and_column() {
    let peer = MINIMAL.replace(
        "kill_site\"\nsite = \"s1\"",
        "partition\"\nsite = \"s1\"\n  peer = \"s1\"",
    );
    assert_eq!(position(&peer), (15, 10, "step.peer".into()));
    let until = MINIMAL.replace(
        "action = \"kill_site\"\nsite = \"s1\"",
        "action = \"wait_until\"\nuntil = \"serving:s8\"",
    );
    assert_eq!(position(&until), (14, 9, "step.until".into()));
    let wait = MINIMAL.replace(
        "action = \"kill_site\"\nsite = \"s1\"",
        "action = \"wait\"\nduration = \"soon\"",
    );
    assert_eq!(position(&wait), (14, 12, "step.duration".into()));
    let at = format!("{MINIMAL}\n[[step]]\nat = \"1s\"\naction = \"heal\"\nsite = \"s1\"\n");
    assert_eq!(position(&at), (20, 6, "step.at".into()));
}

#[test]
fn wrong_values_outside_the_steps_are_named_at_their_line_and_column() {
    let owner = MINIMAL.replace("final_owner = \"s2\"", "final_owner = \"s7\"");
    assert_eq!(position(&owner), (17, 15, "expect.final_owner".into()));
    let loss = MINIMAL.replace(
        "[[service]]",
        "[[topology.link]]\na = \"*\"\nb = \"*\"\nloss = \"120%\"\n\n[[service]]",
    );
    assert_eq!(position(&loss), (11, 8, "topology.link".into()));
    let sites = MINIMAL.replace("sites = 3", "sites = 12");
    assert_eq!(position(&sites), (5, 9, "topology.sites".into()));
    let service = MINIMAL.replace(
        "[[service]]\nname = \"web\"",
        "[[service]]\nname = \"web\"\nsites = [\"s4\"]",
    );
    assert_eq!(position(&service), (10, 9, "service.sites".into()));
}

/// The single step of MINIMAL with its action replaced by `step`.
fn only_step(step: &str) -> Step {
    let text = MINIMAL.replace("action = \"kill_site\"\nsite = \"s1\"", step);
    let mut s = parse(&text).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(s.steps.len(), 1);
    s.steps.remove(0)
}

#[test]
fn steps_become_actions_with_exactly_their_fields_and_defaults() {
    assert_eq!(
        only_step("action = \"kill_site\"\nsite = \"s1\""),
        Step {
            at: Some(Duration::from_secs(5)),
            action: Action::KillSite { site: "s1".into() }
        }
    );
    assert_eq!(
        only_step("action = \"partition\"\nsite = \"s3\"").action,
        Action::Partition {
            site: "s3".into(),
            peer: None
        }
    );
    assert_eq!(
        only_step("action = \"maintenance\"\nsite = \"s2\"\nmode = \"exit\"").action,
        Action::Maintenance {
            site: "s2".into(),
            mode: MaintenanceMode::Exit
        }
    );
    assert_eq!(
        only_step("action = \"wait_until\"\nuntil = \"owner:s2\"").action,
        Action::WaitUntil {
            until: Until::Owner("s2".into()),
            timeout: DEFAULT_UNTIL_TIMEOUT
        }
    );
    assert_eq!(
        only_step(
            "action = \"flap_link\"\nsite = \"s1\"\npeer = \"s2\"\ncount = 3\nduration = \"1s\""
        )
        .action,
        Action::FlapLink {
            site: "s1".into(),
            peer: Some("s2".into()),
            count: 3,
            half_period: Duration::from_secs(1)
        }
    );
}

#[test]
fn faults_and_operations_are_told_apart_by_the_typed_step() {
    let kill = only_step("action = \"kill_host\"\nhost = 2").action;
    assert!(kill.is_fault() && !kill.is_operation());
    let switchover = only_step("action = \"switchover\"\nservice = \"web\"\nto = \"s2\"").action;
    assert!(switchover.is_operation() && !switchover.is_fault());
    let wait = only_step("action = \"wait\"\nduration = \"1s\"").action;
    assert!(!wait.is_fault() && !wait.is_operation());
}

#[test]
fn the_readme_format_example_parses() {
    let readme = include_str!("../../README.md");
    let example = readme
        .split("## Format")
        .nth(1)
        .and_then(|rest| rest.split("```toml\n").nth(1))
        .and_then(|block| block.split("```").next())
        .expect("a ```toml block under ## Format");
    let s = parse(example).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(s.name, "site-loss");
    assert_eq!(s.steps[0].action, Action::KillSite { site: "s1".into() });
}

#[test]
fn a_topology_comes_from_a_drill_file_or_a_bare_table() {
    let from_drill = Topology::parse(MINIMAL, "t.toml").expect("a drill file");
    assert_eq!((from_drill.sites, from_drill.hosts_per_site), (3, 2));
    let bare = Topology::parse("sites = 2\nwitness = true\n", "t.toml").expect("a bare table");
    assert_eq!(bare.all_sites(), ["s1", "s2", "w"]);
}

#[test]
fn a_bad_topology_file_gets_the_error_of_what_it_looks_like() {
    // A drill file with a wrong step: the drill's error, not "unknown field `topology`".
    let drill = MINIMAL.replace("site = \"s1\"", "site = \"s9\"");
    let err = Topology::parse(&drill, "t.toml")
        .expect_err("bad drill")
        .to_string();
    assert!(err.starts_with("t.toml: line 14"), "{err}");
    assert!(err.contains("unknown site `s9`"), "{err}");
    // A bare table with a typo: the table's error.
    let err = Topology::parse("sites = 2\nwitnes = true\n", "t.toml")
        .expect_err("bad table")
        .to_string();
    assert!(err.starts_with("t.toml:"), "{err}");
    assert!(err.contains("unknown field `witnes`"), "{err}");
}

#[test]
fn the_chaos_actions_parse_with_exactly_their_fields() {
    let steps = r#"
[[step]]
action = "kill_leader"

[[step]]
action = "partition_one_way"
site = "s1"
peer = "s2"

[[step]]
action = "switchover_next"
service = "web"

[[step]]
action = "update_service"
service = "web"

[[step]]
action = "heal_all"
"#;
    let text = MINIMAL.replace("[expect]", &format!("{steps}\n[expect]"));
    let s = parse(&text).expect("parses");
    assert_eq!(
        s.steps[1..]
            .iter()
            .map(|s| s.action.clone())
            .collect::<Vec<_>>(),
        [
            Action::KillLeader,
            Action::PartitionOneWay {
                from: "s1".into(),
                to: "s2".into()
            },
            Action::SwitchoverNext {
                service: "web".into()
            },
            Action::UpdateService {
                service: "web".into()
            },
            Action::HealAll,
        ]
    );
    assert!(s.steps[1].action.is_fault() && s.steps[2].action.is_fault());
    assert!(s.steps[3].action.is_operation() && s.steps[4].action.is_operation());
    let one_end = MINIMAL.replace(
        "[expect]",
        "[[step]]\naction = \"partition_one_way\"\nsite = \"s1\"\n\n[expect]",
    );
    let err = parse(&one_end).expect_err("refused").to_string();
    assert!(
        err.contains("step.peer: PartitionOneWay needs `peer`"),
        "{err}"
    );
}

#[test]
fn a_service_volume_is_checked_and_bad_ones_are_named_at_their_line() {
    let with = |volume: &str| {
        MINIMAL.replace(
            "[[service]]\nname = \"web\"",
            &format!("[[service]]\nname = \"web\"\nmax_rpo = \"5s\"\n{volume}"),
        )
    };
    let s = parse(&with(
        "volume = { size = \"64MiB\", replicas = [\"s2:sync\", \"s3:async\"] }",
    ))
    .expect("parses");
    let svc = s.service();
    assert_eq!(svc.max_rpo, Some(Duration::from_secs(5)));
    let spec = svc.volume.as_ref().expect("volume").spec("web", "s1");
    assert_eq!((spec.name.as_str(), spec.size), ("web-data", 64 << 20));

    // The service may run in s3, which has no copy.
    let bare = with("volume = { size = \"64MiB\", replicas = [\"s2:sync\"] }");
    assert_eq!(position(&bare), (11, 10, "service.volume".into()));
    let err = parse(&bare).expect_err("no copy at s3").to_string();
    assert!(err.contains("no replica there"), "{err}");

    let two =
        with("instances = 2\nvolume = { size = \"64MiB\", replicas = [\"s2:sync\", \"s3:sync\"] }");
    assert_eq!(position(&two), (11, 13, "service.instances".into()));

    let mode = with("volume = { size = \"64MiB\", replicas = [\"s2:sometimes\"] }");
    let err = parse(&mode).expect_err("bad mode").to_string();
    assert!(err.contains("s2:sometimes"), "{err}");

    let no_volume = MINIMAL.replace("final_owner = \"s2\"", "in_sync_at_end = [\"s1\"]");
    assert_eq!(
        position(&no_volume),
        (17, 18, "expect.in_sync_at_end".into())
    );
}
