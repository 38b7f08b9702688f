//! The agent's side of DNS: builds the zone from the applied state and serves it with
//! [`failover::dns::DnsServer`] (agents with the `dns` role).
//!
//! Invariant: this server vouches for an answer only while the agent's lease is confirmed *and*
//! the zone it serves was built from a state at least as new as the one that confirmation read.
//! So a site that was cut off or frozen answers SERVFAIL from the moment its lease runs out, and
//! after it is back it answers only from the state that shows what happened meanwhile.
//!
//! A name lists the addresses of instances that run under the service's current epoch on healthy
//! hosts of a healthy owner site; during a move it has none (NODATA) rather than a stale one.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use consensus::state::{FabricState, Health, InstanceState};
use failover::dns::{DnsError, DnsServer};
use failover::zone::{ZoneConfig, ZoneSnapshot};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::agent::Agent;

/// The names of the zone with their current addresses.
pub fn names(state: &FabricState) -> BTreeMap<String, Vec<IpAddr>> {
    let mut names = BTreeMap::new();
    for svc in state.services.values() {
        let Some(name) = &svc.spec.dns_name else {
            continue;
        };
        let owner_up = svc
            .owner
            .as_ref()
            .and_then(|o| state.sites.get(o))
            .is_some_and(|s| s.health == Health::Up);
        let mut addrs = Vec::new();
        if owner_up {
            for inst in svc.instances.values() {
                if inst.state != InstanceState::Running || inst.epoch != svc.epoch {
                    continue;
                }
                if let Some(h) = state.hosts.get(&inst.host)
                    && h.health == Health::Up
                    && Some(&h.site) == svc.owner.as_ref()
                {
                    addrs.extend(h.addresses.iter().copied());
                }
            }
        }
        names.insert(name.to_lowercase(), addrs);
    }
    names
}

/// Binds the DNS server now (so a bad address fails start-up) and returns the future serving it.
pub async fn serve(
    agent: Arc<Agent>,
    shutdown: CancellationToken,
) -> Result<impl Future<Output = ()> + Send + 'static, DnsError> {
    let config = ZoneConfig {
        ttl: agent.config().dns.ttl,
        ..ZoneConfig::new(agent.config().dns.zone.clone())
    };
    let server = DnsServer::bind(agent.config().dns_listen(), config).await?;
    tracing::info!(
        "DNS for {} on {}",
        agent.config().dns.zone,
        server.local_addr()
    );
    let (tx, rx) = watch::channel(Arc::new(ZoneSnapshot::default()));
    let published = Arc::new(AtomicU64::new(0));
    let vouch = {
        let (agent, published) = (agent.clone(), published.clone());
        Arc::new(move || {
            agent.lease_valid() && published.load(Ordering::SeqCst) >= agent.confirmed_revision()
        })
    };
    Ok(async move {
        let builder = tokio::spawn(build_loop(agent, tx, published, shutdown.clone()));
        if let Err(e) = server.run(rx, vouch, shutdown).await {
            tracing::error!("DNS server stopped: {e}");
        }
        let _ = builder.await;
    })
}

/// Rebuilds the zone whenever this node applies new entries.
async fn build_loop(
    agent: Arc<Agent>,
    tx: watch::Sender<Arc<ZoneSnapshot>>,
    published: Arc<AtomicU64>,
    shutdown: CancellationToken,
) {
    let mut metrics = agent.raft().raft().metrics();
    let mut current = ZoneSnapshot::default();
    loop {
        let (revision, names) = agent.raft().state_handle().read(|s| (s.revision, names(s)));
        if names != current.names {
            // Serials follow the state revision, so every site's server shows the same serial for
            // the same content; never backwards, even if revisions wrap past u32.
            let serial = (revision as u32).max(current.serial.wrapping_add(1));
            current = ZoneSnapshot { serial, names };
            tx.send_replace(Arc::new(current.clone()));
        }
        published.fetch_max(revision, Ordering::SeqCst);
        tokio::select! {
            _ = shutdown.cancelled() => return,
            r = metrics.changed() => if r.is_err() { return },
        }
    }
}
