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
            "flapping-link",
            "host-loss",
            "partition-minority",
            "planned-switchover",
            "rolling-maintenance",
            "site-loss",
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
fn an_unknown_site_in_a_step_names_the_step_line() {
    let text = MINIMAL.replace("site = \"s1\"", "site = \"s9\"");
    let err = parse(&text).expect_err("unknown site");
    let ScenarioError::Invalid {
        line,
        field,
        reason,
        ..
    } = &err
    else {
        panic!("{err}");
    };
    assert_eq!(*line, 11, "{err}");
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
