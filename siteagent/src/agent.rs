//! The agent: wires the WAN endpoint, the Raft member ([`Cluster`]) and its state view (fed by
//! Raft on a voter, by a relay on a host: [`crate::relay`]), the lease ([`LeaseHandle`]), the
//! workload driver and every loop (admin API, health, keeper, leader, metrics, DNS), handing
//! each only the handles it uses; then registers this node and waits for shutdown.
//!
//! Invariant: every change to the fabric state is a proposal committed by Raft; the agent keeps
//! no state of its own that another agent would need.
//!
//! Does not: decide anything itself; the loops it starts do, each on its own handles.

use std::sync::Arc;
use std::time::Duration;

use consensus::FabricNode;
use consensus::node::FabricRaft;
use consensus::state::{Capacity, Command, CommandError};
use consensus::wan_transport::WanTransport;
use tokio_util::sync::CancellationToken;
use wan::{FabricTls, Role, Wan};

use crate::cluster::{Cluster, WanHandler};
use crate::config::{AgentConfig, AgentRole};
use crate::fabric::FabricError;
use crate::keeper::{Host, Keeper};
use crate::lease::LeaseHandle;
use crate::workload::{Driver, ProcessDriver};

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("certificates: {0}")]
    Tls(#[from] wan::tls::TlsError),
    #[error("certificate {cert} is for {found}, but the config says node {node} of site {site}")]
    IdentityMismatch {
        cert: String,
        found: wan::Identity,
        node: u64,
        site: String,
    },
    #[error("wan: {0}")]
    Wan(#[from] wan::WanError),
    #[error("data dir {path}: {source}")]
    DataDir {
        path: String,
        source: std::io::Error,
    },
    #[error("raft: {0}")]
    Raft(#[from] consensus::node::NodeError),
    #[error("admin api: {0}")]
    Admin(String),
    #[error("dns: {0}")]
    Dns(#[from] failover::dns::DnsError),
    #[error("workloads: {0}")]
    Workload(#[from] crate::workload::WorkloadError),
    #[error("failover.lease: {0}")]
    LeaseTerms(CommandError),
    #[error("volumes: {0}")]
    Volumes(String),
    #[error("{0}")]
    Swim(String),
}

/// The driver `siteagent` runs workloads with: real processes under `fabric-guard` on agents
/// with the `host` role, none elsewhere.
pub fn process_driver(
    config: &AgentConfig,
) -> Result<Option<Arc<dyn Driver>>, crate::workload::WorkloadError> {
    if !config.has(AgentRole::Host) {
        return Ok(None);
    }
    let guard = match &config.host.guard {
        Some(g) => g.clone(),
        None => crate::workload::find_guard()?,
    };
    Ok(Some(Arc::new(ProcessDriver::new(config.work_dir(), guard))))
}

/// Agrees the lease terms, then registers the site and (for hosts) the host; retried until
/// it succeeds. Returns the refusal when the fabric's lease terms differ from this agent's:
/// such an agent must not run, since fencing is safe only when all agree.
async fn register(
    cluster: &Cluster,
    config: &AgentConfig,
    shutdown: &CancellationToken,
) -> Result<(), CommandError> {
    let actor = cluster.actor();
    let agree = Command::AgreeLeaseTerms {
        node: cluster.id(),
        terms: config.lease().terms(),
    };
    loop {
        let steps = async {
            cluster.propose(actor.clone(), agree.clone()).await?;
            cluster
                .propose(
                    actor.clone(),
                    Command::EnsureSite {
                        name: config.site.clone(),
                        priority: config.site_priority,
                    },
                )
                .await?;
            if config.has(AgentRole::Host) {
                cluster
                    .propose(actor.clone(), register_command(config, cluster.me()))
                    .await?;
            }
            Ok::<_, FabricError>(())
        };
        match steps.await {
            Ok(()) => {
                tracing::info!("registered in site {}", config.site);
                return Ok(());
            }
            Err(FabricError::Rejected(e @ CommandError::LeaseTermsDiffer { .. })) => {
                return Err(e);
            }
            Err(FabricError::Rejected(e)) => {
                tracing::error!("registration refused: {e}");
                return Ok(());
            }
            Err(e) => tracing::info!("registration pending: {e}"),
        }
        tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            _ = tokio::time::sleep(Duration::from_millis(500)) => {}
        }
    }
}

fn register_command(config: &AgentConfig, me: &FabricNode) -> Command {
    Command::RegisterHost {
        id: config.node_id,
        site: config.site.clone(),
        address: me.addr.clone(),
        admin_address: me.admin_addr.clone(),
        addresses: config.workload_addresses(),
        capacity: Capacity {
            cpu_millis: config.host.cpu_millis,
            memory_mib: config.host.memory_mib,
        },
        labels: config.host.labels.clone(),
    }
}

/// Runs an agent until `shutdown` is cancelled, then drains and returns. `driver` runs this
/// host's workloads (`None` on agents without the `host` role; see [`process_driver`]).
pub async fn run(
    config: AgentConfig,
    driver: Option<Arc<dyn Driver>>,
    shutdown: CancellationToken,
) -> Result<(), StartError> {
    let tls = FabricTls::load(&config.tls)?;
    let id = tls.identity().clone();
    if id.role != Role::Agent || id.node_id() != Some(config.node_id) || id.site != config.site {
        return Err(StartError::IdentityMismatch {
            cert: config.tls.cert.display().to_string(),
            found: id,
            node: config.node_id,
            site: config.site.clone(),
        });
    }
    std::fs::create_dir_all(&config.data_dir).map_err(|source| StartError::DataDir {
        path: config.data_dir.display().to_string(),
        source,
    })?;

    let wan = Wan::bind(config.wan_listen, &tls, config.wan_config())?;
    let me = FabricNode {
        addr: wan.local_addr().map(|a| a.to_string()).unwrap_or_default(),
        admin_addr: config.admin_listen.to_string(),
        site: config.site.clone(),
    };
    let raft = FabricRaft::start(
        config.node_id,
        &config.raft_settings(),
        &config.data_dir.join("raft.redb"),
        Arc::new(WanTransport::new(wan.clone())),
    )
    .await?;
    let (view, follower) = Cluster::new_view(&raft, config.is_voter());
    let cluster = Arc::new(Cluster::new(
        me.clone(),
        wan.clone(),
        raft.clone(),
        view.clone(),
        config.peers.clone(),
        config.is_voter(),
    ));
    let lease = LeaseHandle::new(config.lease());
    let config = Arc::new(config);

    let inner = shutdown.child_token();
    let mut tasks = tokio::task::JoinSet::new();
    if let Some(follower) = follower {
        tasks.spawn(crate::relay::follow_loop(
            follower,
            view.clone(),
            wan.clone(),
            config.node_id,
            config.site.clone(),
            config.peers.clone(),
            inner.clone(),
        ));
    }
    // Hosts hold volume copies (witnesses and pure voters hold none).
    let datagrams = match (&config.failover.swim_key_file, config.swim_listen()) {
        (Some(path), Some(addr)) => {
            let key = wan::sealed::SealKey::load(path)
                .map_err(|e| StartError::Swim(format!("failover.swim_key_file: {e}")))?;
            let d = crate::health::Datagrams::bind(addr, key)
                .await
                .map_err(|e| StartError::Swim(format!("SWIM datagrams on {addr}: {e}")))?;
            Some(d)
        }
        _ => None,
    };
    let health = crate::health::Health::new(cluster.clone(), config.detector(), datagrams);
    let volumes = config.has(AgentRole::Host).then(|| {
        crate::volumes::Volumes::new(&config, cluster.clone(), lease.clone(), inner.clone())
    });
    tasks.spawn(
        wan.clone().serve(
            Arc::new(WanHandler {
                cluster: cluster.clone(),
                bulk: volumes
                    .clone()
                    .map(|v| v as Arc<dyn crate::cluster::BulkHandler>),
                health: health.clone(),
            }),
            inner.clone(),
        ),
    );
    if let Some(volumes) = &volumes {
        let addrs = config
            .workload_addresses()
            .into_iter()
            .map(|ip| std::net::SocketAddr::new(ip, config.volumes.nbd_port))
            .collect();
        for t in volumes
            .serve_nbd(addrs)
            .await
            .map_err(|e| StartError::Volumes(e.to_string()))?
        {
            tasks.spawn(async move {
                let _ = t.await;
            });
        }
        tasks.spawn(
            volumes
                .clone()
                .run(Duration::from_millis(250), view.changes()),
        );
    }
    let admin = crate::admin::serve(
        Arc::new(crate::admin::Admin {
            cluster: cluster.clone(),
            lease: lease.clone(),
            config: config.clone(),
            metrics: crate::metrics::Exporter::new(cluster.clone(), lease.clone()),
        }),
        &tls,
        inner.clone(),
    )
    .await
    .map_err(|e| StartError::Admin(e.to_string()))?;
    tasks.spawn(admin);
    tasks.spawn(health.run(config.detector(), inner.clone()));
    let host = Host {
        id: config.node_id,
        site: config.site.clone(),
        addresses: config.workload_addresses(),
        nbd_port: config.volumes.nbd_port,
    };
    tasks.spawn(crate::keeper::keeper_loop(
        Keeper::new(cluster.clone(), lease.clone(), driver, host),
        view.changes(),
        inner.clone(),
    ));
    if config.has(AgentRole::Dns) {
        tasks.spawn(crate::zone::serve(&config, view.clone(), lease.clone(), inner.clone()).await?);
    }
    tasks.spawn(crate::prevote::prevote_loop(
        cluster.clone(),
        config.raft.heartbeat_interval,
        config.raft.election_timeout_min,
        inner.clone(),
    ));
    tasks.spawn(crate::leader::leader_loop(
        cluster.clone(),
        lease.clone(),
        config.failover.plan_interval,
        inner.clone(),
    ));
    tracing::info!(
        node = cluster.id(),
        site = %config.site,
        wan = %me.addr,
        admin = %me.admin_addr,
        "agent started"
    );

    if config.bootstrap {
        match raft.bootstrap(me.clone()).await {
            Ok(true) => tracing::info!("bootstrapped a new cluster"),
            Ok(false) => {}
            Err(e) => tracing::error!("bootstrap failed: {e}"),
        }
    }
    let (fatal_tx, fatal_rx) = tokio::sync::oneshot::channel();
    {
        let (cluster, config, inner) = (cluster.clone(), config.clone(), inner.clone());
        tasks.spawn(async move {
            // Each step may wait on the network for seconds; shutdown cancels it mid-way.
            let life = async {
                cluster.join(&inner).await;
                register(&cluster, &config, &inner).await
            };
            tokio::select! {
                _ = inner.cancelled() => {}
                refused = life => if let Err(e) = refused {
                    let _ = fatal_tx.send(e);
                }
            }
        });
    }

    // A dropped sender (registration done) disables the second branch.
    let fatal = tokio::select! {
        _ = shutdown.cancelled() => None,
        Ok(e) = fatal_rx => Some(e),
    };
    match &fatal {
        Some(e) => tracing::error!("shutting down: {e}"),
        None => tracing::info!("shutting down"),
    }
    inner.cancel();
    let drain = async { while tasks.join_next().await.is_some() {} };
    if tokio::time::timeout(Duration::from_secs(10), drain)
        .await
        .is_err()
    {
        tracing::warn!("some tasks did not stop within 10 s");
    }
    raft.stop().await;
    wan.close().await;
    tracing::info!("stopped");
    match fatal {
        Some(refused) => Err(StartError::LeaseTerms(refused)),
        None => Ok(()),
    }
}
