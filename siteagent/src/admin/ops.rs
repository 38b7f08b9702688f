//! Operations that change what runs where: services, drain, maintenance, switchover, failover,
//! failback. Each reads the state linearizably, checks the operator's intent against it, plays
//! the planner forward on a copy to show the plan, and — unless it is a dry run — proposes the one
//! command that sets it in motion. The leader's planner then carries the plan out.
//!
//! Invariant: a dry run and a real run compute the plan the same way from the same state, so
//! what `--dry-run` prints is what the planner then does (unless the fabric changes meanwhile).

use std::time::Instant;

use axum::Json;
use axum::extract::{Extension, Path, Query, State};
use axum::http::StatusCode;
use consensus::state::{Command, FabricState, Health, ServiceSpec, SiteAdmin};
use serde::Deserialize;
use wan::Identity;

use super::{Failure, Shared, actor, body, failure};
use crate::api::{OperationRequest, OperationResult, PlanStep, SpecChange};

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct DryRun {
    #[serde(default)]
    dry_run: bool,
}

impl DryRun {
    pub(super) fn dry_run(&self) -> bool {
        self.dry_run
    }
}

pub(super) fn not_found(what: impl ToString) -> Failure {
    failure(StatusCode::NOT_FOUND, "not_found", what)
}

fn conflict(what: impl ToString) -> Failure {
    failure(StatusCode::CONFLICT, "rejected", what)
}

/// Reads the state, builds the command from it, simulates, and proposes unless `dry_run`.
pub(super) async fn operate(
    agent: &Shared,
    op: &Identity,
    dry_run: bool,
    build: impl FnOnce(&FabricState) -> Result<(Command, String), Failure>,
) -> Result<Json<OperationResult>, Failure> {
    let state = agent.cluster.read(|s| s.clone()).await?;
    let (command, change) = build(&state)?;
    let spec_changes = match &command {
        Command::UpdateService { name, spec } => state
            .services
            .get(name)
            .map(|old| SpecChange::between(&old.spec, spec))
            .unwrap_or_default(),
        _ => Vec::new(),
    };
    let plan = failover::planner::simulate(
        &state,
        Some(&command),
        &agent.lease.fabric_terms(&state),
        Instant::now(),
    )
    .map_err(conflict)?;
    let revision = if dry_run {
        None
    } else {
        Some(agent.cluster.propose(actor(op), command).await?.revision)
    };
    Ok(Json(OperationResult {
        dry_run,
        change,
        plan: plan
            .into_iter()
            .map(|action| PlanStep {
                description: action.describe(),
                action,
            })
            .collect(),
        revision,
        spec_changes,
    }))
}

fn request(bytes: &[u8]) -> Result<OperationRequest, Failure> {
    if bytes.iter().all(u8::is_ascii_whitespace) {
        Ok(OperationRequest::default())
    } else {
        body(bytes)
    }
}

fn service<'a>(s: &'a FabricState, name: &str) -> Result<&'a consensus::state::Service, Failure> {
    s.services
        .get(name)
        .ok_or_else(|| not_found(format!("unknown service `{name}`")))
}

fn usable_site(s: &FabricState, name: &str) -> Result<(), Failure> {
    let site = s
        .sites
        .get(name)
        .ok_or_else(|| not_found(format!("unknown site `{name}`")))?;
    if site.usable() {
        Ok(())
    } else {
        Err(conflict(format!(
            "site {name} is {} and cannot take services",
            format!("{:?}", site.state()).to_lowercase()
        )))
    }
}

/// A service spec from a request body, checked as create and update both require.
fn valid_spec(bytes: &[u8]) -> Result<ServiceSpec, Failure> {
    let spec: ServiceSpec = body(bytes)?;
    spec.validate()
        .map_err(|e| failure(StatusCode::BAD_REQUEST, "bad_request", e))?;
    Ok(spec)
}

pub(super) async fn create_service(
    State(agent): State<Shared>,
    Extension(op): Extension<Identity>,
    Query(q): Query<DryRun>,
    bytes: axum::body::Bytes,
) -> Result<Json<OperationResult>, Failure> {
    let spec = valid_spec(&bytes)?;
    operate(&agent, &op, q.dry_run, |_| {
        let change = format!("create service {}", spec.name);
        Ok((Command::CreateService { spec }, change))
    })
    .await
}

pub(super) async fn delete_service(
    State(agent): State<Shared>,
    Extension(op): Extension<Identity>,
    Path(name): Path<String>,
    Query(q): Query<DryRun>,
) -> Result<Json<OperationResult>, Failure> {
    operate(&agent, &op, q.dry_run, |s| {
        service(s, &name)?;
        Ok((
            Command::DeleteService { name: name.clone() },
            format!("delete service {name}; its hosts stop their instances"),
        ))
    })
    .await
}

/// `PUT /v1/services/{name}`: a new spec for an existing service. The state machine checks it
/// (unknown, renamed, deleting, invalid: refused); the answer lists the fields that change and
/// the plan, which replaces the instances one at a time when what they run changed.
pub(super) async fn update_service(
    State(agent): State<Shared>,
    Extension(op): Extension<Identity>,
    Path(name): Path<String>,
    Query(q): Query<DryRun>,
    bytes: axum::body::Bytes,
) -> Result<Json<OperationResult>, Failure> {
    let spec = valid_spec(&bytes)?;
    operate(&agent, &op, q.dry_run, |s| {
        let svc = service(s, &name)?;
        let change = if svc.spec == spec {
            format!("leave service {name} as it is: the spec is unchanged")
        } else if svc.spec.needs_restart_for(&spec) && svc.owner.is_some() {
            let hosts: Vec<String> = svc
                .instances
                .values()
                .filter(|i| i.live())
                .map(|i| i.host.to_string())
                .collect();
            format!(
                "update service {name} under epoch {}: replace its instances (hosts {}) one at a time",
                svc.epoch + 1,
                if hosts.is_empty() { "none".to_string() } else { hosts.join(", ") }
            )
        } else {
            format!("update service {name} in place: nothing an instance runs changes, no restart")
        };
        Ok((
            Command::UpdateService {
                name: name.clone(),
                spec,
            },
            change,
        ))
    })
    .await
}

/// The command that sends service `name` to site `to` (`whose` says what `to` is to the service,
/// e.g. "its preferred site"), refused when it already lives there or cannot go there.
fn send_service(
    s: &FabricState,
    name: &str,
    to: &str,
    verb: &str,
    whose: &str,
) -> Result<(Command, String), Failure> {
    let svc = service(s, name)?;
    if svc.owner.as_deref() == Some(to) {
        return Err(conflict(format!(
            "service {name} already lives in {whose} {to}"
        )));
    }
    if !svc.spec.placement.sites.iter().any(|site| site == to) {
        return Err(conflict(format!(
            "site {to} is not among the sites of service {name} ({})",
            svc.spec.placement.sites.join(", ")
        )));
    }
    usable_site(s, to)?;
    Ok((
        Command::SetServiceTarget {
            service: name.to_string(),
            site: Some(to.to_string()),
        },
        format!(
            "{verb} service {name} from site {} to {whose} {to}",
            svc.owner.as_deref().unwrap_or("(none)")
        ),
    ))
}

pub(super) async fn switchover(
    State(agent): State<Shared>,
    Extension(op): Extension<Identity>,
    Path(name): Path<String>,
    bytes: axum::body::Bytes,
) -> Result<Json<OperationResult>, Failure> {
    let req = request(&bytes)?;
    let Some(to) = req.to.clone() else {
        return Err(failure(
            StatusCode::BAD_REQUEST,
            "bad_request",
            "switchover needs a target site (`to`)",
        ));
    };
    operate(&agent, &op, req.dry_run, |s| {
        send_service(s, &name, &to, "switch", "site")
    })
    .await
}

pub(super) async fn failback(
    State(agent): State<Shared>,
    Extension(op): Extension<Identity>,
    Path(name): Path<String>,
    bytes: axum::body::Bytes,
) -> Result<Json<OperationResult>, Failure> {
    let req = request(&bytes)?;
    operate(&agent, &op, req.dry_run, |s| {
        let home = service(s, &name)?
            .spec
            .placement
            .sites
            .first()
            .cloned()
            .unwrap_or_default();
        send_service(s, &name, &home, "fail back", "its preferred site")
    })
    .await
}

/// `POST /v1/hosts/{id}/drain|undrain`.
pub(super) async fn drain(
    State(agent): State<Shared>,
    Extension(op): Extension<Identity>,
    Path((id, verb)): Path<(u64, String)>,
    bytes: axum::body::Bytes,
) -> Result<Json<OperationResult>, Failure> {
    let drained = match verb.as_str() {
        "drain" => true,
        "undrain" => false,
        other => return Err(not_found(format!("no host action `{other}`"))),
    };
    let req = request(&bytes)?;
    operate(&agent, &op, req.dry_run, |s| {
        let host = s
            .hosts
            .get(&id)
            .ok_or_else(|| not_found(format!("unknown host {id}")))?;
        if host.drained == drained {
            return Err(conflict(format!("host {id} is already {verb}ed")));
        }
        Ok((
            Command::SetHostDrain { id, drained },
            format!("{verb} host {id}"),
        ))
    })
    .await
}

async fn set_site_admin(
    agent: Shared,
    op: Identity,
    name: String,
    req: OperationRequest,
    admin: SiteAdmin,
) -> Result<Json<OperationResult>, Failure> {
    operate(&agent, &op, req.dry_run, |s| {
        let site = s
            .sites
            .get(&name)
            .ok_or_else(|| not_found(format!("unknown site `{name}`")))?;
        if site.admin == admin {
            return Err(conflict(format!(
                "site {name} is already {}",
                format!("{admin:?}").to_lowercase()
            )));
        }
        let change = match admin {
            SiteAdmin::Maintenance => format!("put site {name} in maintenance"),
            SiteAdmin::Active => format!("return site {name} to service"),
            SiteAdmin::Lost => {
                if site.health == Health::Up && !req.force {
                    return Err(conflict(format!(
                        "the fabric still sees site {name} alive; add --force to declare it lost anyway"
                    )));
                }
                format!("declare site {name} lost and fail its services over")
            }
        };
        Ok((
            Command::SetSiteAdmin {
                name: name.clone(),
                admin,
            },
            change,
        ))
    })
    .await
}

/// `POST /v1/sites/{name}/maintenance/enter|exit`; `exit` also returns a site declared lost to
/// service.
pub(super) async fn maintenance(
    State(agent): State<Shared>,
    Extension(op): Extension<Identity>,
    Path((name, verb)): Path<(String, String)>,
    bytes: axum::body::Bytes,
) -> Result<Json<OperationResult>, Failure> {
    let admin = match verb.as_str() {
        "enter" => SiteAdmin::Maintenance,
        "exit" => SiteAdmin::Active,
        other => return Err(not_found(format!("no maintenance action `{other}`"))),
    };
    set_site_admin(agent, op, name, request(&bytes)?, admin).await
}

/// `POST /v1/failover/{site}`: declares the site lost. With `force`, it also accepts losing
/// what the replicas of the site's volumes lack (the RPO gate no longer holds the services back);
/// each such volume gets an event saying so.
pub(super) async fn failover(
    State(agent): State<Shared>,
    Extension(op): Extension<Identity>,
    Path(site): Path<String>,
    bytes: axum::body::Bytes,
) -> Result<Json<OperationResult>, Failure> {
    let req = request(&bytes)?;
    let (force, dry_run) = (req.force, req.dry_run);
    let result = set_site_admin(
        agent.clone(),
        op.clone(),
        site.clone(),
        req,
        SiteAdmin::Lost,
    )
    .await?;
    if force && !dry_run {
        let volumes: Vec<String> = agent
            .cluster
            .read(|s| {
                s.volumes
                    .values()
                    .filter(|v| v.primary == site)
                    .map(|v| v.spec.name.clone())
                    .collect()
            })
            .await?;
        for volume in volumes {
            let reason = format!("{} forced the failover of site {site}", actor(&op));
            agent
                .cluster
                .propose(actor(&op), Command::AcceptVolumeLoss { volume, reason })
                .await?;
        }
    }
    Ok(result)
}
