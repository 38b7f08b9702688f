//! The agent's side of DNS: builds the zone from the applied state and serves it with
//! [`failover::dns::DnsServer`] (agents with the `dns` role).
//!
//! Invariant: this server vouches for an answer only while the agent's lease is confirmed *and*
//! the zone it serves was built from a state at least as new as the one that confirmation read.
//! So a site that was cut off or frozen answers SERVFAIL from the moment its lease runs out, and
//! after it is back it answers only from the state that shows what happened meanwhile.
//!
//! A name lists the addresses of instances that run under the newest running epoch of the
//! current ownership on healthy hosts of a healthy owner site; during a move it has none
//! (NODATA) rather than a stale one.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::Arc;

use consensus::state::{FabricState, Health, Host, Instance, InstanceState, Service};
use failover::dns::{DnsError, DnsServer};
use failover::zone::{ZoneConfig, ZoneSnapshot};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::clock;
use crate::config::AgentConfig;
use crate::lease::LeaseHandle;
use crate::view::StateView;

/// The hosts that serve `svc` now: those running the newest epoch any instance of the current
/// ownership runs, healthy, in its owner site, while that site is healthy. During a rolling
/// replacement after a spec update, a name lists the old instances until the first new one
/// runs and only new ones from then on, so clients that follow DNS see the epoch only go up.
pub fn serving_hosts<'a>(
    state: &'a FabricState,
    svc: &'a Service,
) -> impl Iterator<Item = &'a Host> + 'a {
    let owner_up = svc
        .owner
        .as_ref()
        .and_then(|o| state.sites.get(o))
        .is_some_and(|s| s.health == Health::Up);
    let healthy = move |inst: &'a Instance| {
        let host = state.hosts.get(&inst.host)?;
        (owner_up
            && inst.state == InstanceState::Running
            && (svc.owner_epoch..=svc.epoch).contains(&inst.epoch)
            && host.health == Health::Up
            && Some(&host.site) == svc.owner.as_ref())
        .then_some((inst.epoch, host))
    };
    let newest = svc
        .instances
        .values()
        .filter_map(healthy)
        .map(|(e, _)| e)
        .max();
    svc.instances
        .values()
        .filter_map(healthy)
        .filter(move |(epoch, _)| Some(*epoch) == newest)
        .map(|(_, host)| host)
}

/// The names of the zone with their current addresses.
pub fn names(state: &FabricState) -> BTreeMap<String, Vec<IpAddr>> {
    let mut names = BTreeMap::new();
    for svc in state.services.values() {
        let Some(name) = &svc.spec.dns_name else {
            continue;
        };
        let addrs = serving_hosts(state, svc)
            .flat_map(|h| h.addresses.iter().copied())
            .collect();
        names.insert(name.to_lowercase(), addrs);
    }
    names
}

/// A stable digest (FNV-1a, 64 bits) of a zone's names and addresses, in name order.
pub fn digest(names: &BTreeMap<String, Vec<IpAddr>>) -> u64 {
    const OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
    const PRIME: u64 = 0x0000_0100_0000_01b3;
    let mut h = OFFSET;
    let mut eat = |bytes: &[u8]| {
        for b in bytes {
            h ^= u64::from(*b);
            h = h.wrapping_mul(PRIME);
        }
    };
    for (name, addrs) in names {
        eat(&(name.len() as u64).to_le_bytes());
        eat(name.as_bytes());
        eat(&(addrs.len() as u64).to_le_bytes());
        for a in addrs {
            match a {
                IpAddr::V4(v4) => {
                    eat(&[4]);
                    eat(&v4.octets());
                }
                IpAddr::V6(v6) => {
                    eat(&[6]);
                    eat(&v6.octets());
                }
            }
        }
    }
    h
}

/// Binds the DNS server now (so a bad address fails start-up) and returns the future serving it.
pub async fn serve(
    config: &AgentConfig,
    view: StateView,
    lease: LeaseHandle,
    shutdown: CancellationToken,
) -> Result<impl Future<Output = ()> + Send + 'static, DnsError> {
    let zone = ZoneConfig {
        ttl: config.dns.ttl,
        ..ZoneConfig::new(config.dns.zone.clone())
    };
    let server = DnsServer::bind(config.dns_listen(), zone).await?;
    tracing::info!("DNS for {} on {}", config.dns.zone, server.local_addr());
    let (tx, rx) = watch::channel(Arc::new(ZoneSnapshot::default()));
    let vouch = Arc::new(move |zone: &ZoneSnapshot| {
        lease.vouch(clock::lease_now(), zone.revision, zone.digest)
    });
    Ok(async move {
        let builder = tokio::spawn(build_loop(view, tx, shutdown.clone()));
        if let Err(e) = server.run(rx, vouch, shutdown).await {
            tracing::error!("DNS server stopped: {e}");
        }
        let _ = builder.await;
    })
}

/// Rebuilds the zone whenever this node applies new entries.
async fn build_loop(
    view: StateView,
    tx: watch::Sender<Arc<ZoneSnapshot>>,
    shutdown: CancellationToken,
) {
    let mut applied = view.changes();
    let mut current = ZoneSnapshot::default();
    loop {
        applied.borrow_and_update();
        let (revision, names) = view.read(|s| (s.revision, names(s)));
        if names != current.names {
            // Serials follow the state revision, so every site's server shows the same serial for
            // the same content; never backwards, even if revisions wrap past u32.
            let serial = (revision as u32).max(current.serial.wrapping_add(1));
            current = ZoneSnapshot {
                serial,
                digest: digest(&names),
                names,
                revision,
            };
            tx.send_replace(Arc::new(current.clone()));
        } else if revision > current.revision {
            // Same content from a newer state: vouching needs to know it is that new.
            current.revision = revision;
            tx.send_replace(Arc::new(current.clone()));
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            r = applied.changed() => if r.is_err() { return },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixture;
    use consensus::state::{Command, ServiceSpec};

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    #[test]
    fn a_running_instance_of_the_current_epoch_on_an_up_host_of_the_up_owner_is_listed() {
        let state = fixture::fabric();
        assert_eq!(names(&state).get("web"), Some(&vec![ip("10.0.1.1")]));
    }

    #[test]
    fn an_instance_not_yet_running_or_revoked_is_not_listed() {
        let placed = fixture::placed();
        assert_eq!(names(&placed).get("web"), Some(&vec![]), "assigned only");
        let mut revoked = fixture::fabric();
        fixture::apply(&mut revoked, fixture::revoke("web", 11, 1));
        assert_eq!(names(&revoked).get("web"), Some(&vec![]), "revoked");
    }

    #[test]
    fn a_down_host_or_a_down_owner_site_lists_nothing() {
        let mut host_down = fixture::fabric();
        fixture::apply(&mut host_down, fixture::host_health(11, Health::Down));
        assert_eq!(names(&host_down).get("web"), Some(&vec![]));
        let mut site_down = fixture::fabric();
        fixture::apply(&mut site_down, fixture::site_health("s1", Health::Down));
        assert_eq!(names(&site_down).get("web"), Some(&vec![]));
    }

    #[test]
    fn during_a_rolling_update_a_name_lists_the_old_instances_until_a_new_one_runs() {
        let mut state = fixture::fabric();
        let mut spec = state.services["web"].spec.clone();
        spec.placement.instances = 2;
        let update = |spec: &ServiceSpec| Command::UpdateService {
            name: "web".into(),
            spec: spec.clone(),
        };
        fixture::apply(&mut state, update(&spec));
        fixture::apply(&mut state, fixture::place("web", 12, 1));
        fixture::apply(&mut state, fixture::running("web", 12, 1, 2));
        let both: Vec<IpAddr> = vec![
            "10.0.1.1".parse().expect("ip"),
            "10.0.1.2".parse().expect("ip"),
        ];
        assert_eq!(names(&state).get("web"), Some(&both));
        let consensus::state::WorkloadKind::Process(p) = &mut spec.kind;
        p.args.push("--v2".into());
        fixture::apply(&mut state, update(&spec));
        assert_eq!(
            names(&state).get("web"),
            Some(&both),
            "old ones until a new one runs"
        );
        fixture::apply(&mut state, fixture::revoke("web", 12, 1));
        fixture::apply(&mut state, fixture::stopped("web", 12, 1, 2));
        fixture::apply(&mut state, fixture::place("web", 12, 2));
        assert_eq!(
            names(&state).get("web"),
            Some(&vec!["10.0.1.1".parse().expect("ip")])
        );
        fixture::apply(&mut state, fixture::running("web", 12, 2, 3));
        assert_eq!(
            names(&state).get("web"),
            Some(&vec!["10.0.1.2".parse().expect("ip")]),
            "an old instance listed once a new one runs"
        );
    }

    #[test]
    fn an_instance_of_an_older_epoch_is_not_listed_and_services_without_a_name_are_absent() {
        let mut state = fixture::fabric();
        // The state machine revokes old instances before it bumps the epoch; the zone does not
        // rely on that ordering, so a running instance of an older epoch is hand-made here.
        if let Some(svc) = state.services.get_mut("web") {
            svc.epoch += 1;
            svc.owner_epoch = svc.epoch;
        }
        assert_eq!(names(&state).get("web"), Some(&vec![]), "old epoch listed");
        let mut unnamed = ServiceSpec::process("batch", &["s1"], "x", 1);
        unnamed.dns_name = None;
        fixture::apply(&mut state, Command::CreateService { spec: unnamed });
        assert_eq!(names(&state).len(), 1, "{:?}", names(&state));
    }

    #[test]
    fn the_zone_digest_changes_with_any_name_or_address_and_only_then() {
        let ip = |s: &str| s.parse::<IpAddr>().expect("ip");
        let zone = |pairs: &[(&str, &[&str])]| {
            pairs
                .iter()
                .map(|(n, a)| (n.to_string(), a.iter().map(|s| ip(s)).collect()))
                .collect::<BTreeMap<_, _>>()
        };
        let base = digest(&zone(&[("web", &["10.0.1.1"]), ("db", &[])]));
        assert_eq!(base, digest(&zone(&[("db", &[]), ("web", &["10.0.1.1"])])));
        for other in [
            zone(&[("web", &["10.0.1.2"]), ("db", &[])]),
            zone(&[("web", &["10.0.1.1"])]),
            zone(&[("web", &[]), ("db", &["10.0.1.1"])]),
            zone(&[("web", &["10.0.1.1", "::1"]), ("db", &[])]),
            zone(&[("weba", &["10.0.1.1"]), ("db", &[])]),
        ] {
            assert_ne!(base, digest(&other), "{other:?}");
        }
    }
}
