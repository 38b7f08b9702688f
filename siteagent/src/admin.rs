//! The admin API: HTTPS that admits only operator certificates of this fabric.
//!
//! Reads are linearizable (carried to the leader as a read index) unless `?local=true` asks for
//! this agent's possibly stale copy; writes are proposals through the leader. The operator's
//! identity, taken from its verified certificate, is recorded as the actor of every write.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Extension, Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use consensus::state::{Command, FabricState, HostState};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::service::TowerToHyperService;
use serde::Deserialize;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use wan::{FabricTls, Identity, Role};

use crate::api::*;
use crate::cluster::Cluster;
use crate::config::AgentConfig;
use crate::fabric::FabricError;
use crate::lease::LeaseHandle;

mod ops;
pub mod volumes;

/// What the admin API serves from.
pub struct Admin {
    pub cluster: Arc<Cluster>,
    pub lease: LeaseHandle,
    pub config: Arc<AgentConfig>,
    /// The gauges `/metrics` refreshes before it answers.
    pub metrics: crate::metrics::Exporter,
}

type Shared = Arc<Admin>;

/// Binds the admin listener and returns the future that serves it until `shutdown`.
pub async fn serve(
    agent: Shared,
    tls: &FabricTls,
    shutdown: CancellationToken,
) -> Result<impl Future<Output = ()> + Send + 'static, Box<dyn std::error::Error + Send + Sync>> {
    let mut config = tls.server_config(Role::Operator, false)?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    let acceptor = TlsAcceptor::from(Arc::new(config));
    let addr = agent.config.admin_listen;
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| format!("cannot bind {addr}: {e}"))?;
    let router = router(agent);
    Ok(async move {
        let graceful = hyper_util::server::graceful::GracefulShutdown::new();
        loop {
            let (tcp, remote) = tokio::select! {
                _ = shutdown.cancelled() => break,
                r = listener.accept() => match r {
                    Ok(c) => c,
                    Err(e) => {
                        tracing::warn!("admin accept: {e}");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
            };
            let acceptor = acceptor.clone();
            let router = router.clone();
            let watcher = graceful.watcher();
            tokio::spawn(async move {
                let tls = match tokio::time::timeout(Duration::from_secs(10), acceptor.accept(tcp))
                    .await
                {
                    Ok(Ok(s)) => s,
                    Ok(Err(e)) => {
                        tracing::warn!(%remote, "refused admin connection from {remote}: {e}");
                        return;
                    }
                    Err(_) => {
                        tracing::warn!(%remote, "admin handshake from {remote} timed out");
                        return;
                    }
                };
                let Some(operator) = tls
                    .get_ref()
                    .1
                    .peer_certificates()
                    .and_then(wan::tls::peer_identity)
                else {
                    tracing::warn!(%remote, "refused admin connection from {remote}: no identity");
                    return;
                };
                let service = TowerToHyperService::new(router.layer(Extension(operator)));
                let conn = auto::Builder::new(TokioExecutor::new())
                    .serve_connection_with_upgrades(TokioIo::new(tls), service)
                    .into_owned();
                if let Err(e) = watcher.watch(conn).await {
                    tracing::debug!(%remote, "admin connection ended: {e}");
                }
            });
        }
        drop(listener);
        if tokio::time::timeout(Duration::from_secs(5), graceful.shutdown())
            .await
            .is_err()
        {
            tracing::warn!("admin connections still open after 5 s; closing");
        }
    })
}

fn router(agent: Shared) -> Router {
    Router::new()
        .route("/v1/status", get(status))
        .route("/v1/sites", get(sites).post(upsert_site))
        .route("/v1/hosts", get(hosts))
        .route("/v1/services", get(services).post(ops::create_service))
        .route(
            "/v1/services/{name}",
            axum::routing::delete(ops::delete_service).put(ops::update_service),
        )
        .route("/v1/services/{name}/switchover", post(ops::switchover))
        .route("/v1/services/{name}/failback", post(ops::failback))
        .route("/v1/hosts/{id}/{verb}", post(ops::drain))
        .route(
            "/v1/sites/{name}/maintenance/{verb}",
            post(ops::maintenance),
        )
        .route("/v1/failover/{site}", post(ops::failover))
        .route("/v1/volumes", get(volumes::list).post(volumes::create))
        .route(
            "/v1/volumes/{name}",
            get(volumes::show).delete(volumes::delete),
        )
        .route("/v1/volumes/{name}/promote", post(volumes::promote))
        .route("/v1/events", get(events).post(note))
        .route("/v1/state", get(state))
        .route("/v1/members", get(members))
        .route("/v1/members/{id}/promote", post(promote))
        .route("/v1/members/{id}/remove", post(remove))
        .route("/metrics", get(metrics))
        .with_state(agent)
}

/// An error answer with its HTTP status.
struct Failure(StatusCode, ApiError);

impl IntoResponse for Failure {
    fn into_response(self) -> Response {
        (self.0, Json(self.1)).into_response()
    }
}

fn failure(status: StatusCode, kind: &str, error: impl ToString) -> Failure {
    Failure(
        status,
        ApiError {
            kind: kind.into(),
            error: error.to_string(),
        },
    )
}

impl From<FabricError> for Failure {
    fn from(e: FabricError) -> Self {
        match e {
            FabricError::Rejected(e) => failure(StatusCode::CONFLICT, "rejected", e),
            FabricError::Unavailable(e) => {
                failure(StatusCode::SERVICE_UNAVAILABLE, "unavailable", e)
            }
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ReadOpts {
    /// Read this agent's copy without asking the leader.
    #[serde(default)]
    local: bool,
}

async fn read<R: Send>(
    agent: &Admin,
    opts: &ReadOpts,
    f: impl FnOnce(&FabricState) -> R + Send,
) -> Result<R, Failure> {
    if opts.local {
        Ok(agent.cluster.state().read(f))
    } else {
        Ok(agent.cluster.read(f).await?)
    }
}

fn actor(op: &Identity) -> String {
    format!("operator {}", op.node)
}

async fn status(State(agent): State<Shared>) -> Json<Status> {
    let m = agent.cluster.raft().metrics();
    let view = agent.cluster.state();
    let members = view.members();
    let applied_index = view.applied_index();
    let (revision, hosts) = view.read(|s| {
        let hosts = s
            .hosts
            .values()
            .map(|h| HostSummary {
                id: h.id,
                site: h.site.clone(),
                state: h.state(),
            })
            .collect();
        (s.revision, hosts)
    });
    Json(Status {
        node: agent.cluster.id(),
        site: agent.config.site.clone(),
        roles: agent.config.roles.clone(),
        leader: view.leader().map(|(id, _)| id),
        term: m.current_term,
        voters: members.voters.into_iter().collect(),
        learners: members.learners.into_iter().collect(),
        membership_settled: members.settled,
        // A host that follows a relay has an idle Raft node: say so rather than "learner".
        raft_state: if view.is_relayed() && !members.nodes.contains_key(&agent.cluster.id()) {
            "relayed".into()
        } else {
            format!("{:?}", m.state).to_lowercase()
        },
        last_log_index: m.last_log_index.unwrap_or(applied_index),
        applied_index,
        revision,
        hosts,
        lease_valid: agent.lease.is_valid(crate::clock::lease_now()),
        lease_remaining_ms: agent
            .lease
            .remaining(crate::clock::lease_now())
            .unwrap_or_default()
            .as_millis() as u64,
    })
}

async fn sites(
    State(agent): State<Shared>,
    Query(opts): Query<ReadOpts>,
) -> Result<Json<Vec<SiteView>>, Failure> {
    let members = agent.cluster.state().members();
    let views = read(&agent, &opts, |s| {
        s.sites
            .values()
            .map(|site| {
                let hosts: Vec<_> = s.hosts.values().filter(|h| h.site == site.name).collect();
                SiteView {
                    name: site.name.clone(),
                    priority: site.priority,
                    state: site.state(),
                    health: site.health,
                    health_since_ms: site.health_since_ms,
                    admin: site.admin,
                    admin_since_ms: site.admin_since_ms,
                    hosts: hosts.len(),
                    hosts_up: hosts.iter().filter(|h| h.state() == HostState::Up).count(),
                    voters: members
                        .voters
                        .iter()
                        .filter(|v| members.nodes.get(v).is_some_and(|n| n.site == site.name))
                        .copied()
                        .collect(),
                    services: s
                        .services
                        .values()
                        .filter(|svc| svc.owner.as_ref() == Some(&site.name))
                        .map(|svc| svc.spec.name.clone())
                        .collect(),
                }
            })
            .collect()
    })
    .await?;
    Ok(Json(views))
}

async fn hosts(
    State(agent): State<Shared>,
    Query(opts): Query<ReadOpts>,
) -> Result<Json<Vec<HostView>>, Failure> {
    let members = agent.cluster.state().members();
    let views = read(&agent, &opts, |s| {
        s.hosts
            .values()
            .map(|h| HostView {
                id: h.id,
                site: h.site.clone(),
                address: h.address.clone(),
                admin_address: h.admin_address.clone(),
                addresses: h.addresses.clone(),
                capacity: h.capacity,
                labels: h.labels.clone(),
                state: h.state(),
                health: h.health,
                health_since_ms: h.health_since_ms,
                drained: h.drained,
                registered_ms: h.registered_ms,
                raft: if members.voters.contains(&h.id) {
                    "voter"
                } else if members.learners.contains(&h.id) {
                    "learner"
                } else {
                    "none"
                }
                .into(),
                instances: s
                    .services
                    .values()
                    .filter_map(|svc| {
                        svc.instances.get(&h.id).map(|i| {
                            format!(
                                "{} ({}, epoch {})",
                                svc.spec.name,
                                format!("{:?}", i.state).to_lowercase(),
                                i.epoch
                            )
                        })
                    })
                    .collect(),
            })
            .collect()
    })
    .await?;
    Ok(Json(views))
}

async fn services(
    State(agent): State<Shared>,
    Query(opts): Query<ReadOpts>,
) -> Result<Json<Vec<ServiceView>>, Failure> {
    let zone = agent.config.dns.zone.clone();
    let views = read(&agent, &opts, |s| {
        s.services
            .values()
            .map(|svc| service_view(s, svc, &zone))
            .collect()
    })
    .await?;
    Ok(Json(views))
}

fn service_view(s: &FabricState, svc: &consensus::state::Service, zone: &str) -> ServiceView {
    let port = match &svc.spec.kind {
        consensus::state::WorkloadKind::Process(p) => p.port,
    };
    ServiceView {
        name: svc.spec.name.clone(),
        owner: svc.owner.clone(),
        epoch: svc.epoch,
        owner_since_ms: svc.owner_since_ms,
        target: svc.target.clone(),
        deleting_since_ms: svc.deleting,
        dns_name: svc.spec.dns_name.as_ref().map(|n| format!("{n}.{zone}")),
        instances: svc
            .instances
            .values()
            .map(|i| {
                let host = s.hosts.get(&i.host);
                InstanceView {
                    host: i.host,
                    site: host.map(|h| h.site.clone()),
                    epoch: i.epoch,
                    state: i.state,
                    since_ms: i.since_ms,
                    endpoints: host
                        .map(|h| {
                            h.addresses
                                .iter()
                                .map(|a| std::net::SocketAddr::new(*a, port).to_string())
                                .collect()
                        })
                        .unwrap_or_default(),
                }
            })
            .collect(),
        spec: svc.spec.clone(),
    }
}

async fn events(
    State(agent): State<Shared>,
    Query(opts): Query<ReadOpts>,
) -> Result<Json<Vec<EventView>>, Failure> {
    let views = read(&agent, &opts, |s| {
        s.events
            .iter()
            .map(|e| EventView {
                revision: e.revision,
                at_ms: e.at_ms,
                actor: e.actor.clone(),
                message: e.message.clone(),
            })
            .collect()
    })
    .await?;
    Ok(Json(views))
}

/// Parses a JSON body, answering 400 with serde's message (which names the field).
fn body<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T, Failure> {
    serde_json::from_slice(bytes).map_err(|e| failure(StatusCode::BAD_REQUEST, "bad_request", e))
}

async fn upsert_site(
    State(agent): State<Shared>,
    Extension(op): Extension<Identity>,
    bytes: axum::body::Bytes,
) -> Result<Json<WriteResult>, Failure> {
    let req: SiteUpsert = body(&bytes)?;
    let applied = agent
        .cluster
        .propose(
            actor(&op),
            Command::UpsertSite {
                name: req.name,
                priority: req.priority,
            },
        )
        .await?;
    Ok(Json(WriteResult {
        revision: applied.revision,
    }))
}

async fn note(
    State(agent): State<Shared>,
    Extension(op): Extension<Identity>,
    bytes: axum::body::Bytes,
) -> Result<Json<WriteResult>, Failure> {
    let req: EventNote = body(&bytes)?;
    let applied = agent
        .cluster
        .propose(
            actor(&op),
            Command::RecordEvent {
                message: req.message,
            },
        )
        .await?;
    Ok(Json(WriteResult {
        revision: applied.revision,
    }))
}

/// The whole replicated state, for inspection and for comparing replicas.
async fn state(
    State(agent): State<Shared>,
    Query(opts): Query<ReadOpts>,
) -> Result<Json<FabricState>, Failure> {
    Ok(Json(read(&agent, &opts, |s| s.clone()).await?))
}

/// The Raft members, then the registered hosts that are none (role `host`: they follow the
/// state through a relay).
async fn members(State(agent): State<Shared>) -> Json<Vec<MemberView>> {
    let view = agent.cluster.state();
    let m = view.members();
    let mut out: Vec<MemberView> = m
        .nodes
        .iter()
        .map(|(id, n)| MemberView {
            node: *id,
            site: n.site.clone(),
            address: n.addr.clone(),
            admin_address: n.admin_addr.clone(),
            role: if m.voters.contains(id) {
                "voter"
            } else {
                "learner"
            }
            .into(),
        })
        .collect();
    view.read(|s| {
        out.extend(
            s.hosts
                .values()
                .filter(|h| !m.nodes.contains_key(&h.id))
                .map(|h| MemberView {
                    node: h.id,
                    site: h.site.clone(),
                    address: h.address.clone(),
                    admin_address: h.admin_address.clone(),
                    role: "host".into(),
                }),
        )
    });
    Json(out)
}

async fn membership_change(
    agent: &Admin,
    id: u64,
    promote: bool,
) -> Result<Json<WriteResult>, Failure> {
    use crate::cluster::PromoteError;
    // One change at a time and each bounded: `FabricRaft` holds its membership lock.
    let result = if promote {
        agent.cluster.promote(id).await
    } else {
        agent
            .cluster
            .raft()
            .remove(id)
            .await
            .map_err(PromoteError::from)
    };
    match result {
        Ok(()) => Ok(Json(WriteResult {
            revision: agent.cluster.state().read(|s| s.revision),
        })),
        Err(PromoteError::Unknown(id)) => Err(ops::not_found(format!(
            "node {id} is neither a Raft member nor a registered host"
        ))),
        Err(PromoteError::Raft(consensus::node::ProposeError::NotLeader(n))) => Err(failure(
            StatusCode::MISDIRECTED_REQUEST,
            "not_leader",
            format!(
                "membership changes go to the leader; ask node {}",
                n.leader
                    .map(|(id, _)| id.to_string())
                    .unwrap_or("(none known)".into())
            ),
        )),
        Err(e) => Err(failure(StatusCode::CONFLICT, "rejected", e)),
    }
}

async fn promote(
    State(agent): State<Shared>,
    Path(id): Path<u64>,
) -> Result<Json<WriteResult>, Failure> {
    membership_change(&agent, id, true).await
}

async fn remove(
    State(agent): State<Shared>,
    Path(id): Path<u64>,
) -> Result<Json<WriteResult>, Failure> {
    membership_change(&agent, id, false).await
}

async fn metrics(State(agent): State<Shared>) -> Response {
    match agent.metrics.render() {
        Some(text) => (
            [(
                axum::http::header::CONTENT_TYPE,
                "text/plain; version=0.0.4",
            )],
            text,
        )
            .into_response(),
        None => failure(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            "metrics recorder not installed",
        )
        .into_response(),
    }
}
