use std::time::Duration;

use consensus::state::ServiceSpec;

use super::*;

const S: Duration = Duration::from_secs(1);

fn lease() -> LeaseConfig {
    LeaseConfig {
        lease: 4 * S,
        margin: S,
    }
}

use consensus::fixture::{apply, host, placement_of, running, site, stopped};

/// Sites s1..s3 with hosts 11, 12 (s1), 21, 22 (s2), 31, 32 (s3); service `web` in s1, s2, s3.
fn fabric() -> FabricState {
    let mut state = FabricState::default();
    for s in 1..=3u64 {
        apply(&mut state, site(&format!("s{s}"), s as u32));
        for h in 1..=2 {
            apply(&mut state, host(10 * s + h, &format!("s{s}"), vec![]));
        }
    }
    apply(
        &mut state,
        Command::CreateService {
            spec: spec("web", &["s1", "s2", "s3"]),
        },
    );
    state
}

fn spec(name: &str, sites: &[&str]) -> ServiceSpec {
    ServiceSpec {
        resources: Capacity {
            cpu_millis: 500,
            memory_mib: 256,
        },
        ..ServiceSpec::process(name, sites, "fabric-demo", 8080)
    }
}

/// Runs the leader loop to quiescence at `now`: plans, applies, and lets healthy hosts confirm
/// starts and planned stops.
fn settle(state: &mut FabricState, clock: &mut RevocationClock, now: Instant) -> Vec<Action> {
    let mut all = Vec::new();
    for _ in 0..20 {
        clock.observe(state, now);
        let actions = plan(state, clock, now, &lease());
        if actions.is_empty() {
            break;
        }
        for a in actions {
            apply(state, a.command());
            match &a {
                Action::Place {
                    service,
                    host,
                    epoch,
                    ..
                } if host_up(state, *host) => {
                    let placement = placement_of(state, service, *host);
                    apply(state, running(service, *host, *epoch, placement))
                }
                Action::Revoke {
                    service,
                    host,
                    epoch,
                    ..
                } if host_up(state, *host) => {
                    let placement = placement_of(state, service, *host);
                    apply(state, stopped(service, *host, *epoch, placement))
                }
                _ => {}
            }
            all.push(a);
        }
    }
    all
}

fn host_up(state: &FabricState, id: NodeId) -> bool {
    state.hosts[&id].health == Health::Up
}

fn where_is(state: &FabricState, service: &str) -> (Option<String>, u64, Vec<NodeId>) {
    let s = &state.services[service];
    (
        s.owner.clone(),
        s.epoch,
        s.instances.keys().copied().collect(),
    )
}

fn set_host(state: &mut FabricState, id: NodeId, health: Health) {
    apply(
        state,
        Command::SetHostHealth {
            id,
            health,
            reason: "test".into(),
        },
    );
}

fn set_site(state: &mut FabricState, name: &str, health: Health) {
    apply(
        state,
        Command::SetSiteHealth {
            name: name.into(),
            health,
            reason: "test".into(),
        },
    );
    let hosts: Vec<NodeId> = state
        .hosts
        .values()
        .filter(|h| h.site == name)
        .map(|h| h.id)
        .collect();
    for h in hosts {
        set_host(state, h, health);
    }
}

fn placed() -> (FabricState, RevocationClock, Instant) {
    let mut state = fabric();
    let mut clock = RevocationClock::default();
    let t0 = Instant::now();
    settle(&mut state, &mut clock, t0);
    (state, clock, t0)
}

#[test]
fn new_service_goes_to_the_first_site_of_its_list() {
    let (state, _, _) = placed();
    assert_eq!(where_is(&state, "web"), (Some("s1".into()), 1, vec![11]));
    assert_eq!(
        state.services["web"].instances[&11].state,
        InstanceState::Running
    );
}

#[test]
fn host_loss_restarts_in_the_same_site_only_after_the_lease_has_run_out() {
    let (mut state, mut clock, t0) = placed();
    set_host(&mut state, 11, Health::Down);
    let first = settle(&mut state, &mut clock, t0 + S);
    assert!(
        matches!(
            &first[..],
            [Action::Revoke {
                host: 11,
                planned: false,
                ..
            }]
        ),
        "{first:?}"
    );
    // Not before lease + margin after the revocation was seen.
    assert!(settle(&mut state, &mut clock, t0 + 5 * S).is_empty());
    let later = settle(&mut state, &mut clock, t0 + 6 * S);
    assert!(
        matches!(
            &later[..],
            [
                Action::Forget { host: 11, .. },
                Action::Place {
                    host: 12,
                    epoch: 1,
                    ..
                }
            ]
        ),
        "{later:?}"
    );
    assert_eq!(where_is(&state, "web"), (Some("s1".into()), 1, vec![12]));
}

#[test]
fn site_loss_moves_to_the_next_site_with_a_new_epoch() {
    let (mut state, mut clock, t0) = placed();
    set_site(&mut state, "s1", Health::Down);
    settle(&mut state, &mut clock, t0 + S);
    assert_eq!(where_is(&state, "web").0.as_deref(), Some("s1"));
    let moved = settle(&mut state, &mut clock, t0 + 6 * S);
    assert!(
        matches!(
            &moved[..],
            [
                Action::Forget {
                    host: 11,
                    epoch: 1,
                    ..
                },
                Action::AssignOwner { epoch: 2, .. },
                Action::Place {
                    host: 21,
                    epoch: 2,
                    ..
                }
            ]
        ),
        "{moved:?}"
    );
    assert_eq!(where_is(&state, "web"), (Some("s2".into()), 2, vec![21]));
}

#[test]
fn a_recovered_site_does_not_pull_the_service_back() {
    let (mut state, mut clock, t0) = placed();
    set_site(&mut state, "s1", Health::Down);
    settle(&mut state, &mut clock, t0 + S);
    settle(&mut state, &mut clock, t0 + 6 * S);
    set_site(&mut state, "s1", Health::Up);
    assert!(settle(&mut state, &mut clock, t0 + 7 * S).is_empty());
    assert_eq!(where_is(&state, "web").0.as_deref(), Some("s2"));
}

#[test]
fn a_stop_confirmed_by_the_host_needs_no_lease_wait() {
    let (mut state, mut clock, t0) = placed();
    apply(
        &mut state,
        Command::SetSiteAdmin {
            name: "s1".into(),
            admin: SiteAdmin::Maintenance,
        },
    );
    let actions = settle(&mut state, &mut clock, t0 + S);
    assert!(
        matches!(
            &actions[..],
            [
                Action::Revoke {
                    host: 11,
                    planned: true,
                    ..
                },
                Action::AssignOwner { epoch: 2, .. },
                Action::Place { host: 21, .. }
            ]
        ),
        "{actions:?}"
    );
}

#[test]
fn a_deleted_service_behind_a_partition_is_never_placed_before_its_lease_has_run_out() {
    let (mut state, mut clock, t0) = placed();
    set_site(&mut state, "s1", Health::Down);
    apply(&mut state, Command::DeleteService { name: "web".into() });
    assert_eq!(
        state.services["web"].instances[&11].state,
        InstanceState::Revoked
    );
    // Not assigned or placed anywhere while s1 may still serve under its lease.
    assert!(settle(&mut state, &mut clock, t0 + S).is_empty());
    assert!(settle(&mut state, &mut clock, t0 + 5 * S).is_empty());
    let later = settle(&mut state, &mut clock, t0 + 6 * S);
    assert!(
        matches!(
            &later[..],
            [Action::Forget {
                host: 11,
                epoch: 1,
                ..
            }]
        ),
        "{later:?}"
    );
    assert!(!state.services.contains_key("web"), "removed once given up");
    apply(
        &mut state,
        Command::CreateService {
            spec: spec("web", &["s2", "s3"]),
        },
    );
    settle(&mut state, &mut clock, t0 + 7 * S);
    assert_eq!(where_is(&state, "web"), (Some("s2".into()), 2, vec![21]));
}

#[test]
fn a_deleted_service_whose_owner_is_up_is_removed_once_its_host_confirms_the_stop() {
    let (mut state, mut clock, t0) = placed();
    apply(&mut state, Command::DeleteService { name: "web".into() });
    assert!(settle(&mut state, &mut clock, t0 + S).is_empty());
    apply(&mut state, stopped("web", 11, 1, 1));
    assert!(!state.services.contains_key("web"));
    assert_eq!(state.tombstones["web"].epoch, 1);
}

#[test]
fn switchover_goes_to_the_target_and_then_stays() {
    let (mut state, mut clock, t0) = placed();
    apply(
        &mut state,
        Command::SetServiceTarget {
            service: "web".into(),
            site: Some("s3".into()),
        },
    );
    let actions = settle(&mut state, &mut clock, t0 + S);
    assert!(
        actions[0].describe().contains("switchover to site s3"),
        "{actions:?}"
    );
    assert_eq!(where_is(&state, "web"), (Some("s3".into()), 2, vec![31]));
    assert_eq!(state.services["web"].target, None);
}

#[test]
fn drain_starts_the_replacement_before_stopping_the_old_instance() {
    let (mut state, mut clock, t0) = placed();
    apply(
        &mut state,
        Command::SetHostDrain {
            id: 11,
            drained: true,
        },
    );
    clock.observe(&state, t0);
    let first = plan(&state, &clock, t0, &lease());
    assert!(
        matches!(&first[..], [Action::Place { host: 12, .. }]),
        "{first:?}"
    );
    apply(&mut state, first[0].command());
    // The replacement is placed but not running yet: the old one keeps serving.
    assert!(plan(&state, &clock, t0, &lease()).is_empty());
    apply(&mut state, running("web", 12, 1, 2));
    let second = plan(&state, &clock, t0, &lease());
    assert!(
        matches!(
            &second[..],
            [Action::Revoke {
                host: 11,
                planned: true,
                ..
            }]
        ),
        "{second:?}"
    );
}

#[test]
fn capacity_and_anti_affinity_are_respected() {
    let (mut state, mut clock, t0) = placed();
    let mut db = spec("db", &["s1"]);
    db.placement.anti_affinity = vec!["web".into()];
    apply(&mut state, Command::CreateService { spec: db });
    settle(&mut state, &mut clock, t0);
    let mut big = spec("big", &["s1", "s2"]);
    big.resources.cpu_millis = 800;
    apply(&mut state, Command::CreateService { spec: big });
    settle(&mut state, &mut clock, t0);
    // db must avoid host 11 (web); big fits on no host of s1 once db took 500 of 12's 1000,
    // and host 11 has 500 used by web: so it goes to s2.
    assert_eq!(where_is(&state, "db").2, vec![12]);
    assert_eq!(where_is(&state, "big"), (Some("s2".into()), 1, vec![21]));
}

#[test]
fn instances_spread_over_distinct_hosts() {
    let mut state = fabric();
    let mut two = spec("two", &["s2"]);
    two.placement.instances = 2;
    two.dns_name = None;
    apply(&mut state, Command::CreateService { spec: two });
    settle(&mut state, &mut RevocationClock::default(), Instant::now());
    assert_eq!(where_is(&state, "two").2, vec![21, 22]);
}

#[test]
fn a_service_with_no_usable_site_waits_without_flapping() {
    let (mut state, mut clock, t0) = placed();
    for s in ["s1", "s2", "s3"] {
        set_site(&mut state, s, Health::Down);
    }
    settle(&mut state, &mut clock, t0 + S);
    settle(&mut state, &mut clock, t0 + 10 * S);
    let (owner, epoch, instances) = where_is(&state, "web");
    assert_eq!((owner.as_deref(), epoch), (Some("s1"), 1));
    assert!(instances.is_empty());
    assert!(settle(&mut state, &mut clock, t0 + 20 * S).is_empty());
}

#[test]
fn simulation_predicts_what_the_leader_then_does() {
    let (state, _, t0) = placed();
    let command = Command::SetSiteAdmin {
        name: "s1".into(),
        admin: SiteAdmin::Maintenance,
    };
    let predicted = simulate(&state, Some(&command), &lease(), t0).expect("simulate");
    let mut real = state.clone();
    apply(&mut real, command);
    let done = settle(&mut real, &mut RevocationClock::default(), t0);
    assert_eq!(predicted, done);
    assert!(!predicted.is_empty());
}

#[test]
fn simulation_of_a_lost_site_includes_giving_up_its_instances() {
    let (mut state, _, t0) = placed();
    set_site(&mut state, "s1", Health::Down);
    let predicted = simulate(&state, None, &lease(), t0).expect("simulate");
    let kinds: Vec<&str> = predicted
        .iter()
        .map(|a| match a {
            Action::Revoke { .. } => "revoke",
            Action::Forget { .. } => "forget",
            Action::AssignOwner { .. } => "assign",
            Action::Place { .. } => "place",
            Action::Promote { .. } => "promote",
        })
        .collect();
    assert_eq!(kinds, ["revoke", "forget", "assign", "place"]);
}

#[test]
fn simulation_refuses_an_invalid_command() {
    let (state, _, t0) = placed();
    let bad = Command::SetServiceTarget {
        service: "web".into(),
        site: Some("s9".into()),
    };
    assert!(simulate(&state, Some(&bad), &lease(), t0).is_err());
}

/// `web` with two instances (hosts 11 and 12 of s1, running under epoch 1), then its spec
/// updated so that its instances must be replaced (epoch 2).
fn two_instances_then_updated() -> (FabricState, RevocationClock, Instant) {
    let (mut state, mut clock, t0) = placed();
    let mut two = spec("web", &["s1", "s2", "s3"]);
    two.placement.instances = 2;
    apply(
        &mut state,
        Command::UpdateService {
            name: "web".into(),
            spec: two.clone(),
        },
    );
    settle(&mut state, &mut clock, t0);
    assert_eq!(
        where_is(&state, "web"),
        (Some("s1".into()), 1, vec![11, 12])
    );
    let consensus::state::WorkloadKind::Process(p) = &mut two.kind;
    p.args = vec!["--greeting".into(), "hello".into()];
    apply(
        &mut state,
        Command::UpdateService {
            name: "web".into(),
            spec: two,
        },
    );
    (state, clock, t0)
}

fn running_count(state: &FabricState) -> usize {
    state.services["web"]
        .instances
        .values()
        .filter(|i| i.state == InstanceState::Running)
        .count()
}

#[test]
fn a_spec_update_replaces_instances_one_at_a_time_and_one_always_runs() {
    let (mut state, mut clock, t0) = two_instances_then_updated();
    let mut replaced = Vec::new();
    for step in 0..20 {
        clock.observe(&state, t0);
        let actions = plan(&state, &clock, t0, &lease());
        if actions.is_empty() {
            break;
        }
        assert_eq!(
            actions.len(),
            1,
            "step {step}: more than one at a time: {actions:?}"
        );
        let a = &actions[0];
        apply(&mut state, a.command());
        assert!(
            running_count(&state) >= 1,
            "step {step}: nothing runs after {a:?}"
        );
        // Nothing else moves until the host confirms.
        assert!(plan(&state, &clock, t0, &lease()).is_empty(), "step {step}");
        match a {
            Action::Revoke {
                host,
                epoch,
                planned,
                reason,
                ..
            } => {
                assert_eq!((*epoch, *planned), (1, true), "{a:?}");
                assert!(reason.contains("spec updated"), "{reason}");
                replaced.push(*host);
                let placement = placement_of(&state, "web", *host);
                apply(&mut state, stopped("web", *host, 1, placement));
            }
            Action::Place { host, epoch, .. } => {
                assert_eq!(*epoch, 2, "{a:?}");
                let placement = placement_of(&state, "web", *host);
                apply(&mut state, running("web", *host, 2, placement));
            }
            other => panic!("unexpected {other:?}"),
        }
        assert!(running_count(&state) >= 1, "step {step}: nothing runs");
    }
    assert_eq!(replaced, vec![11, 12]);
    assert_eq!(
        where_is(&state, "web"),
        (Some("s1".into()), 2, vec![11, 12])
    );
    assert!(
        state.services["web"]
            .instances
            .values()
            .all(|i| i.epoch == 2 && i.state == InstanceState::Running)
    );
}

#[test]
fn a_move_during_a_spec_update_revokes_both_generations_and_takes_the_next_epoch() {
    let (mut state, mut clock, t0) = two_instances_then_updated();
    // The first replacement is under way (11 replaced at epoch 2, 12 still at epoch 1) ...
    clock.observe(&state, t0);
    let first = plan(&state, &clock, t0, &lease());
    apply(&mut state, first[0].command());
    let p = placement_of(&state, "web", 11);
    apply(&mut state, stopped("web", 11, 1, p));
    clock.observe(&state, t0);
    let place = plan(&state, &clock, t0, &lease());
    apply(&mut state, place[0].command());
    let p = placement_of(&state, "web", 11);
    apply(&mut state, running("web", 11, 2, p));
    // ... when s1 goes down.
    set_site(&mut state, "s1", Health::Down);
    clock.observe(&state, t0 + S);
    let actions = plan(&state, &clock, t0 + S, &lease());
    let mut revoked: Vec<(NodeId, u64)> = actions
        .iter()
        .filter_map(|a| match a {
            Action::Revoke { host, epoch, .. } => Some((*host, *epoch)),
            _ => None,
        })
        .collect();
    revoked.sort();
    assert_eq!(revoked, vec![(11, 2), (12, 1)], "{actions:?}");
    assert!(
        !actions
            .iter()
            .any(|a| matches!(a, Action::AssignOwner { .. })),
        "assigned before the old instances' leases ran out: {actions:?}"
    );
    for a in &actions {
        apply(&mut state, a.command());
    }
    clock.observe(&state, t0 + S);
    let moved = settle(&mut state, &mut clock, t0 + 7 * S);
    assert!(
        moved
            .iter()
            .any(|a| matches!(a, Action::AssignOwner { epoch: 3, .. })),
        "{moved:?}"
    );
    let (owner, epoch, _) = where_is(&state, "web");
    assert_eq!((owner.as_deref(), epoch), (Some("s2"), 3));
}

mod volumes {
    use consensus::state::{CopyReport, CopyState, Lag};

    use super::*;

    /// `db` (s1 primary, s2 sync, s3 async) used by `pg` (s1, s2, s3), running in s1.
    fn fabric_with_volume(max_rpo: Option<Duration>) -> (FabricState, RevocationClock) {
        let mut state = fabric();
        apply(
            &mut state,
            consensus::fixture::volume("db", 1 << 20, "s1", &["s2:sync", "s3:async"]),
        );
        let mut pg = spec("pg", &["s1", "s2", "s3"]);
        pg.volumes = vec!["db".into()];
        pg.max_rpo = max_rpo;
        apply(&mut state, Command::CreateService { spec: pg });
        let mut clock = RevocationClock::default();
        settle(&mut state, &mut clock, Instant::now());
        assert_eq!(where_is(&state, "pg").0.as_deref(), Some("s1"));
        (state, clock)
    }

    fn report(state: &mut FabricState, writers: u32, copies: &[(&str, CopyState, u64)]) {
        let epoch = state.volumes["db"].epoch;
        let primary = state.volumes["db"].primary.clone();
        let host = state
            .hosts
            .values()
            .find(|h| h.site == primary)
            .expect("host")
            .id;
        apply(
            state,
            Command::ReportVolume {
                volume: "db".into(),
                epoch,
                host,
                writers,
                copies: copies
                    .iter()
                    .map(|(site, state, age_ms)| {
                        let lag = Lag {
                            writes: u64::from(*age_ms > 0),
                            age_ms: *age_ms,
                            ..Lag::default()
                        };
                        (
                            site.to_string(),
                            CopyReport {
                                state: *state,
                                lag,
                                outdates: 0,
                            },
                        )
                    })
                    .collect(),
            },
        );
    }

    /// Site s1 goes down; the leader revokes its instance and gives it up once its lease ran
    /// out. Returns every action.
    fn lose_s1(state: &mut FabricState, clock: &mut RevocationClock) -> Vec<Action> {
        set_site(state, "s1", Health::Down);
        let t = Instant::now();
        let mut actions = settle(state, clock, t + S);
        actions.extend(settle(state, clock, t + 10 * S));
        actions
    }

    fn promotions(actions: &[Action]) -> Vec<(String, bool)> {
        actions
            .iter()
            .filter_map(|a| match a {
                Action::Promote { site, force, .. } => Some((site.clone(), *force)),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn a_site_loss_promotes_the_in_sync_copy_before_the_service_moves() {
        let (mut state, mut clock) = fabric_with_volume(None);
        report(
            &mut state,
            1,
            &[
                ("s2", CopyState::InSync, 0),
                ("s3", CopyState::Lagging, 900),
            ],
        );
        let actions = lose_s1(&mut state, &mut clock);
        assert_eq!(promotions(&actions), vec![("s2".to_string(), false)]);
        let promote_at = actions
            .iter()
            .position(|a| matches!(a, Action::Promote { .. }));
        let assign_at = actions
            .iter()
            .position(|a| matches!(a, Action::AssignOwner { .. }));
        assert!(promote_at < assign_at, "{actions:?}");
        assert_eq!(state.volumes["db"].primary, "s2");
        assert_eq!(where_is(&state, "pg").0.as_deref(), Some("s2"));
    }

    #[test]
    fn an_outdated_copy_is_skipped_and_a_copy_beyond_the_max_rpo_holds_the_service_back() {
        let (mut state, mut clock) = fabric_with_volume(Some(Duration::from_millis(500)));
        apply(
            &mut state,
            Command::OutdateCopy {
                volume: "db".into(),
                site: "s2".into(),
                epoch: 1,
                outdates: 1,
                reason: "test".into(),
            },
        );
        report(&mut state, 1, &[("s3", CopyState::Lagging, 900)]);
        let actions = lose_s1(&mut state, &mut clock);
        assert!(promotions(&actions).is_empty(), "{actions:?}");
        assert_eq!(state.volumes["db"].primary, "s1");
        assert!(
            state.services["pg"].instances.is_empty(),
            "its instances stop"
        );
        // The operator accepts the loss: the next usable site's copy is promoted, forced.
        apply(
            &mut state,
            Command::AcceptVolumeLoss {
                volume: "db".into(),
                reason: "operator forced it".into(),
            },
        );
        let actions = settle(&mut state, &mut clock, Instant::now() + 20 * S);
        assert_eq!(promotions(&actions), vec![("s2".to_string(), true)]);
        assert_eq!(where_is(&state, "pg").0.as_deref(), Some("s2"));
        assert!(state.volumes["db"].accept_loss.is_none(), "used up");
    }

    #[test]
    fn an_async_copy_within_the_max_rpo_takes_the_failover_forced_with_its_lag() {
        let (mut state, mut clock) = fabric_with_volume(Some(Duration::from_secs(2)));
        // s2 (sync) is outdated; s3 lags by 900 ms, within 2 s.
        apply(
            &mut state,
            Command::OutdateCopy {
                volume: "db".into(),
                site: "s2".into(),
                epoch: 1,
                outdates: 1,
                reason: "test".into(),
            },
        );
        report(&mut state, 1, &[("s3", CopyState::Lagging, 900)]);
        let actions = lose_s1(&mut state, &mut clock);
        assert_eq!(promotions(&actions), vec![("s3".to_string(), true)]);
        let reason = actions
            .iter()
            .find_map(|a| match a {
                Action::Promote { reason, .. } => Some(reason.clone()),
                _ => None,
            })
            .expect("promote");
        assert!(reason.contains("within the max RPO"), "{reason}");
        assert_eq!(where_is(&state, "pg").0.as_deref(), Some("s3"));
    }

    #[test]
    fn a_switchover_waits_until_the_copy_is_in_sync_and_the_writer_is_gone() {
        let (mut state, mut clock) = fabric_with_volume(None);
        report(&mut state, 1, &[("s3", CopyState::Lagging, 300)]);
        apply(
            &mut state,
            Command::SetServiceTarget {
                service: "pg".into(),
                site: Some("s3".into()),
            },
        );
        let now = Instant::now();
        let actions = settle(&mut state, &mut clock, now);
        assert!(promotions(&actions).is_empty(), "{actions:?}");
        assert!(state.services["pg"].instances.is_empty(), "stopped first");
        // Drained, but the report still counts a writer: wait.
        report(&mut state, 1, &[("s3", CopyState::InSync, 0)]);
        assert!(promotions(&settle(&mut state, &mut clock, now)).is_empty());
        report(&mut state, 0, &[("s3", CopyState::InSync, 0)]);
        let actions = settle(&mut state, &mut clock, now);
        assert_eq!(promotions(&actions), vec![("s3".to_string(), false)]);
        assert_eq!(where_is(&state, "pg").0.as_deref(), Some("s3"));
    }
}
