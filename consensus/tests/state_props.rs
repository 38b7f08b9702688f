//! Property tests of the state machine: `FabricState::apply` over random command histories.
//!
//! - determinism: the same proposals applied to two fresh states give equal states, equal
//!   answers and equal postcard bytes (what the store persists), so replicas never diverge;
//! - a refused command changes nothing, revision and event log included;
//! - a name's epochs never go backwards, across delete and re-create: a service's epoch is never
//!   below any epoch its name had, and a new instance never carries an older epoch than one
//!   the name already had.
//!
//! The commands are drawn from small domains (sites s1..s3 plus an unknown and an invalid name,
//! hosts 1..6, services `web` and `db`, epochs 0..4) so that valid and refused commands both
//! occur often; each test asserts that they did.

use std::cell::Cell;
use std::collections::BTreeMap;
use std::net::IpAddr;

use consensus::state::{
    Capacity, Command, FabricState, Health, LeaseTerms, Proposal, ServiceSpec, SiteAdmin,
    WorkloadKind,
};
use proptest::prelude::*;
use proptest::sample::select;
use proptest::test_runner::{Config, TestRunner};

/// Known sites, one never created, one that is not a valid name.
const SITES: &[&str] = &["s1", "s2", "s3", "s9", "Bad_Site"];
const SERVICES: &[&str] = &["web", "db"];

fn site() -> impl Strategy<Value = String> {
    select(SITES).prop_map(String::from)
}

/// Mostly a site of the fabric, sometimes one it does not have or an invalid name.
fn mostly_known_site() -> impl Strategy<Value = String> {
    prop_oneof![4 => select(&SITES[..3]).prop_map(String::from), 1 => site()]
}

fn service() -> impl Strategy<Value = String> {
    select(SERVICES).prop_map(String::from)
}

fn host() -> impl Strategy<Value = u64> {
    1..=6u64
}

/// Mostly the epochs a young service has (so instance commands can be accepted), sometimes
/// stale or from the future.
fn epoch() -> impl Strategy<Value = u64> {
    prop_oneof![4 => Just(1u64), 2 => Just(2u64), 1 => 0..=4u64]
}

fn health() -> impl Strategy<Value = Health> {
    prop_oneof![Just(Health::Up), Just(Health::Down)]
}

fn register() -> impl Strategy<Value = Command> {
    (
        host(),
        site(),
        select(&["127.0.0.1:7100", "127.0.0.2:7100", "not an address"][..]),
        select(&["", "rack", "Bad Key"][..]),
        0..=2000u64,
    )
        .prop_map(|(id, site, address, label, cpu)| Command::RegisterHost {
            id,
            site,
            address: address.into(),
            admin_address: "127.0.0.1:7443".into(),
            addresses: vec![IpAddr::from([127, 0, 0, id as u8])],
            capacity: Capacity {
                cpu_millis: cpu,
                memory_mib: 1024,
            },
            labels: if label.is_empty() {
                BTreeMap::new()
            } else {
                BTreeMap::from([(label.to_string(), "a".to_string())])
            },
        })
}

fn create_service() -> impl Strategy<Value = Command> {
    // Mostly a valid placement list, sometimes any list (unknown, invalid, repeated or none).
    let sites = prop_oneof![
        4 => prop::sample::subsequence(vec!["s1".to_string(), "s2".into(), "s3".into()], 1..=3),
        1 => prop::collection::vec(site(), 0..=3),
    ];
    (
        service(),
        sites,
        prop_oneof![4 => 1..=2u32, 1 => 0..=3u32],
        any::<bool>(),
    )
        .prop_map(|(name, sites, instances, repel)| {
            let sites: Vec<&str> = sites.iter().map(String::as_str).collect();
            let mut spec = ServiceSpec::process(&name, &sites, "fabric-demo", 8080);
            spec.placement.instances = instances;
            if repel {
                spec.placement.anti_affinity = vec!["web".into(), "db".into()];
            }
            Command::CreateService { spec }
        })
}

/// The instance commands share a shape: a service, a host, an epoch (and for a host's report,
/// a placement number: small, so that reports often name the current placement and sometimes
/// an earlier one).
fn instance_command() -> impl Strategy<Value = Command> {
    (0..6u8, service(), host(), epoch(), any::<bool>(), 1..=4u64).prop_map(
        |(kind, service, host, epoch, planned, placement)| match kind {
            0 | 5 => Command::PlaceInstance {
                service,
                host,
                epoch,
                reason: "prop".into(),
            },
            1 => Command::InstanceRunning {
                service,
                host,
                epoch,
                placement,
            },
            2 => Command::RevokeInstance {
                service,
                host,
                epoch,
                planned,
                reason: "prop".into(),
            },
            3 => Command::InstanceStopped {
                service,
                host,
                epoch,
                placement,
            },
            _ => Command::ForgetInstance {
                service,
                host,
                epoch,
                reason: "prop".into(),
            },
        },
    )
}

fn command() -> impl Strategy<Value = Command> {
    prop_oneof![
        3 => (site(), 0..4u32).prop_map(|(name, priority)| Command::UpsertSite { name, priority }),
        1 => (site(), 0..4u32).prop_map(|(name, priority)| Command::EnsureSite { name, priority }),
        1 => (site(), health()).prop_map(|(name, health)| Command::SetSiteHealth {
            name,
            health,
            reason: "prop".into(),
        }),
        1 => (site(), select(&[SiteAdmin::Active, SiteAdmin::Maintenance, SiteAdmin::Lost][..]))
            .prop_map(|(name, admin)| Command::SetSiteAdmin { name, admin }),
        3 => register(),
        1 => (host(), health()).prop_map(|(id, health)| Command::SetHostHealth {
            id,
            health,
            reason: "prop".into(),
        }),
        1 => (host(), any::<bool>())
            .prop_map(|(id, drained)| Command::SetHostDrain { id, drained }),
        1 => host().prop_map(|id| Command::RemoveHost { id }),
        1 => (host(), site(), any::<bool>()).prop_map(|(observer, site, up)| Command::ObserveSite {
            observer,
            site,
            up,
        }),
        1 => (site(), host(), prop::collection::btree_set(host(), 0..3)).prop_map(
            |(site, reporter, dead)| Command::ReportSiteView { site, reporter, dead }
        ),
        2 => create_service(),
        1 => (create_service(), 8080..=8082u16).prop_map(|(create, port)| match create {
            Command::CreateService { mut spec } => {
                let WorkloadKind::Process(p) = &mut spec.kind;
                p.port = port;
                Command::UpdateService {
                    name: spec.name.clone(),
                    spec,
                }
            }
            other => other,
        }),
        1 => service().prop_map(|name| Command::DeleteService { name }),
        1 => (service(), prop::option::of(site()))
            .prop_map(|(service, site)| Command::SetServiceTarget { service, site }),
        3 => (service(), mostly_known_site(), epoch()).prop_map(|(service, site, epoch)| {
            Command::AssignOwner {
                service,
                site,
                epoch,
                reason: "prop".into(),
            }
        }),
        10 => instance_command(),
        1 => "[a-z ]{0,12}".prop_map(|message| Command::RecordEvent { message }),
        1 => (host(), select(&[(6_000u64, 1_000u64), (3_000, 500), (1_000, 1_000)][..]))
            .prop_map(|(node, (lease_ms, margin_ms))| Command::AgreeLeaseTerms {
                node,
                terms: LeaseTerms {
                    lease_ms,
                    margin_ms,
                },
            }),
    ]
}

/// The three sites, hosts 1..6 each registered in one of them, and both services owned by one
/// of them under epoch 1: a fabric the random commands can act on (without it, instances almost
/// never find a host in their owner's site).
fn setup() -> impl Strategy<Value = Vec<Command>> {
    (
        prop::collection::vec(0..4u32, 3),
        prop::collection::vec(select(&SITES[..3]), 6),
        prop::collection::vec(select(&SITES[..3]), 2),
    )
        .prop_map(|(priorities, host_sites, owners)| {
            let sites =
                SITES[..3]
                    .iter()
                    .zip(priorities)
                    .map(|(name, priority)| Command::UpsertSite {
                        name: name.to_string(),
                        priority,
                    });
            let hosts =
                host_sites
                    .into_iter()
                    .zip(1u64..)
                    .map(|(site, id)| Command::RegisterHost {
                        id,
                        site: site.into(),
                        address: "127.0.0.1:7100".into(),
                        admin_address: "127.0.0.1:7443".into(),
                        addresses: vec![],
                        capacity: Capacity::default(),
                        labels: BTreeMap::new(),
                    });
            let services = SERVICES.iter().zip(owners).flat_map(|(name, owner)| {
                [
                    Command::CreateService {
                        spec: ServiceSpec::process(name, &SITES[..3], "fabric-demo", 8080),
                    },
                    Command::AssignOwner {
                        service: name.to_string(),
                        site: owner.into(),
                        epoch: 1,
                        reason: "setup".into(),
                    },
                ]
            });
            sites.chain(hosts).chain(services).collect()
        })
}

/// A history of proposals: sometimes from an empty state, mostly after [`setup`]; wall-clock
/// stamps move forward by random steps.
fn history() -> impl Strategy<Value = Vec<Proposal>> {
    let setup = prop_oneof![1 => Just(Vec::new()), 3 => setup()];
    (
        setup,
        prop::collection::vec((command(), 0..5_000u64), 1..100),
    )
        .prop_map(|(setup, cmds)| {
            let mut at_ms = 1_700_000_000_000;
            setup
                .into_iter()
                .map(|c| (c, 0))
                .chain(cmds)
                .map(|(command, step)| {
                    at_ms += step;
                    Proposal {
                        at_ms,
                        actor: "prop".into(),
                        command,
                        term: None,
                    }
                })
                .collect()
        })
}

fn is_instance_command(c: &Command) -> bool {
    matches!(
        c,
        Command::PlaceInstance { .. }
            | Command::InstanceRunning { .. }
            | Command::RevokeInstance { .. }
            | Command::InstanceStopped { .. }
            | Command::ForgetInstance { .. }
    )
}

fn runner() -> TestRunner {
    TestRunner::new(Config {
        cases: 48,
        failure_persistence: None,
        ..Config::default()
    })
}

/// The run exercised both paths of `apply`, not only one.
fn assert_both_occurred(accepted: &Cell<usize>, refused: &Cell<usize>) {
    assert!(
        accepted.get() > 100 && refused.get() > 100,
        "histories must mix both: {} accepted, {} refused",
        accepted.get(),
        refused.get()
    );
}

fn bytes(state: &FabricState) -> Vec<u8> {
    postcard::to_stdvec(state).expect("a state always encodes")
}

#[test]
fn the_same_history_gives_equal_states_and_equal_bytes() {
    let (accepted, refused) = (Cell::new(0usize), Cell::new(0usize));
    runner()
        .run(&history(), |history| {
            let (mut a, mut b) = (FabricState::default(), FabricState::default());
            for p in &history {
                let (ra, rb) = (a.apply(p), b.apply(p));
                prop_assert_eq!(&ra, &rb, "answers differ on {}", p);
                match ra {
                    Ok(_) => accepted.set(accepted.get() + 1),
                    Err(_) => refused.set(refused.get() + 1),
                }
            }
            prop_assert_eq!(&a, &b);
            prop_assert_eq!(bytes(&a), bytes(&b));
            Ok(())
        })
        .expect("determinism");
    assert_both_occurred(&accepted, &refused);
}

#[test]
fn a_refused_command_changes_nothing() {
    let (accepted, refused) = (Cell::new(0usize), Cell::new(0usize));
    let instances_accepted = Cell::new(0usize);
    runner()
        .run(&history(), |history| {
            let mut state = FabricState::default();
            for p in &history {
                let before = state.clone();
                match state.apply(p) {
                    Ok(applied) => {
                        accepted.set(accepted.get() + 1);
                        if is_instance_command(&p.command) {
                            instances_accepted.set(instances_accepted.get() + 1);
                        }
                        prop_assert_eq!(applied.revision, before.revision + 1);
                    }
                    Err(e) => {
                        refused.set(refused.get() + 1);
                        prop_assert_eq!(&state, &before, "{} refused ({}) but changed", p, e);
                        prop_assert_eq!(bytes(&state), bytes(&before));
                    }
                }
            }
            Ok(())
        })
        .expect("refusals leave the state alone");
    assert_both_occurred(&accepted, &refused);
    assert!(
        instances_accepted.get() > 0,
        "histories must reach accepted instance commands"
    );
}

#[test]
fn a_names_epochs_never_go_backwards_across_delete_and_create() {
    let recreated = Cell::new(0usize);
    runner()
        .run(&history(), |history| {
            let mut state = FabricState::default();
            // Highest epoch each name ever had (service or instance).
            let mut highest: BTreeMap<String, u64> = BTreeMap::new();
            for p in &history {
                let before = state.clone();
                if state.apply(p).is_err() {
                    continue;
                }
                if matches!(&p.command, Command::CreateService { spec }
                    if before.tombstones.contains_key(&spec.name))
                {
                    recreated.set(recreated.get() + 1);
                }
                for (name, svc) in &state.services {
                    let high = highest.get(name).copied().unwrap_or(0);
                    prop_assert!(
                        svc.epoch >= high,
                        "{} has epoch {} after {}, but had {}",
                        name,
                        svc.epoch,
                        p,
                        high
                    );
                    for (host, inst) in &svc.instances {
                        // A new placement (not an older instance revoked or kept through a
                        // spec update).
                        let new = before.services.get(name).is_none_or(|b| {
                            b.instances.get(host).map(|i| i.placement) != Some(inst.placement)
                        });
                        prop_assert!(
                            !new || inst.epoch >= high,
                            "{} on host {} under epoch {} after {}, but had {}",
                            name,
                            host,
                            inst.epoch,
                            p,
                            high
                        );
                    }
                    prop_assert!(
                        svc.instances
                            .values()
                            .all(|i| (svc.owner_epoch..=svc.epoch).contains(&i.epoch)),
                        "{} has instances outside its ownership's epochs {}..={} after {}",
                        name,
                        svc.owner_epoch,
                        svc.epoch,
                        p
                    );
                    let top = svc
                        .instances
                        .values()
                        .map(|i| i.epoch)
                        .fold(svc.epoch, u64::max);
                    highest.insert(name.clone(), high.max(top));
                }
                for (name, t) in &state.tombstones {
                    prop_assert!(!state.services.contains_key(name), "{} in both", name);
                    prop_assert!(t.epoch >= highest.get(name).copied().unwrap_or(0));
                }
            }
            Ok(())
        })
        .expect("epochs only go up per name");
    assert!(
        recreated.get() > 0,
        "histories must re-create a deleted name"
    );
}
