//! Volume endpoints: list and show (with each copy's state and the primary's NBD address),
//! create, delete and promote. Writes go through [`super::ops::operate`], so `?dry_run` shows
//! the change and the plan that follows without proposing anything.

use axum::Json;
use axum::extract::{Extension, Path, Query, State};
use axum::http::StatusCode;
use consensus::state::{Command, FabricState, Volume, VolumeSpec};
use wan::Identity;

use super::ops::{DryRun, not_found, operate};
use super::{Failure, ReadOpts, Shared, body, failure, read};
use crate::api::{CopyView, OperationResult, PromoteRequest, VolumeView};

/// `nbd://ip:port/name` of the host that serves `v`'s copy at its primary site.
pub fn nbd_address(s: &FabricState, v: &Volume, nbd_port: u16) -> Option<String> {
    let host = s.hosts.get(&s.volume_server(v, &v.primary)?)?;
    let ip = host.addresses.first()?;
    let ip = match ip {
        std::net::IpAddr::V6(v6) => format!("[{v6}]"),
        v4 => v4.to_string(),
    };
    Some(format!("nbd://{ip}:{nbd_port}/{}", v.spec.name))
}

fn view(s: &FabricState, v: &Volume, nbd_port: u16) -> VolumeView {
    VolumeView {
        name: v.spec.name.clone(),
        size: v.spec.size,
        block_size: v.spec.block_size,
        primary: v.primary.clone(),
        epoch: v.epoch,
        uid: v.uid,
        service: s.service_using(&v.spec.name).map(str::to_string),
        nbd: nbd_address(s, v, nbd_port),
        writers: v.writers,
        reporter: v.reporter,
        copies: v
            .copies
            .iter()
            .map(|(site, c)| CopyView {
                site: site.clone(),
                host: s.volume_server(v, site),
                mode: c.mode,
                state: c.state,
                since_ms: c.since_ms,
                lag: c.lag,
                reported_ms: c.reported_ms,
            })
            .collect(),
    }
}

pub(super) async fn list(
    State(agent): State<Shared>,
    Query(opts): Query<ReadOpts>,
) -> Result<Json<Vec<VolumeView>>, Failure> {
    let port = agent.config.volumes.nbd_port;
    let views = read(&agent, &opts, |s| {
        s.volumes.values().map(|v| view(s, v, port)).collect()
    })
    .await?;
    Ok(Json(views))
}

pub(super) async fn show(
    State(agent): State<Shared>,
    Path(name): Path<String>,
    Query(opts): Query<ReadOpts>,
) -> Result<Json<VolumeView>, Failure> {
    let port = agent.config.volumes.nbd_port;
    read(&agent, &opts, |s| {
        s.volumes.get(&name).map(|v| view(s, v, port))
    })
    .await?
    .map(Json)
    .ok_or_else(|| not_found(format!("unknown volume `{name}`")))
}

pub(super) async fn create(
    State(agent): State<Shared>,
    Extension(op): Extension<Identity>,
    Query(q): Query<DryRun>,
    bytes: axum::body::Bytes,
) -> Result<Json<OperationResult>, Failure> {
    let spec: VolumeSpec = body(&bytes)?;
    spec.validate()
        .map_err(|e| failure(StatusCode::BAD_REQUEST, "bad_request", e))?;
    operate(&agent, &op, q.dry_run(), |_| {
        let change = format!(
            "create volume {} ({} bytes), primary at {}",
            spec.name, spec.size, spec.primary
        );
        Ok((Command::CreateVolume { spec }, change))
    })
    .await
}

pub(super) async fn delete(
    State(agent): State<Shared>,
    Extension(op): Extension<Identity>,
    Path(name): Path<String>,
    Query(q): Query<DryRun>,
) -> Result<Json<OperationResult>, Failure> {
    operate(&agent, &op, q.dry_run(), |s| {
        let v = s
            .volumes
            .get(&name)
            .ok_or_else(|| not_found(format!("unknown volume `{name}`")))?;
        Ok((
            Command::DeleteVolume { name: name.clone() },
            format!(
                "delete volume {name}; its copies' files ({}) stay on disk",
                v.file_name()
            ),
        ))
    })
    .await
}

/// `POST /v1/volumes/{name}/promote`: the copy at `site` takes the writes under the next epoch.
pub(super) async fn promote(
    State(agent): State<Shared>,
    Extension(op): Extension<Identity>,
    Path(name): Path<String>,
    bytes: axum::body::Bytes,
) -> Result<Json<OperationResult>, Failure> {
    let req: PromoteRequest = body(&bytes)?;
    operate(&agent, &op, req.dry_run, |s| {
        let v = s
            .volumes
            .get(&name)
            .ok_or_else(|| not_found(format!("unknown volume `{name}`")))?;
        // The state machine refuses a risky promotion without force (the dry run's simulation
        // included), naming the risk.
        let risk = v.promotion_risk(&req.site);
        let change = format!(
            "promote the copy of volume {name} at {} to primary (epoch {}){}",
            req.site,
            v.epoch + 1,
            match &risk {
                Some(r) => format!(", FORCED although {r}"),
                None => String::new(),
            }
        );
        Ok((
            Command::PromoteVolume {
                volume: name.clone(),
                site: req.site.clone(),
                epoch: v.epoch + 1,
                force: req.force,
                reason: format!(
                    "operator promotion{}",
                    if req.force { " (forced)" } else { "" }
                ),
            },
            change,
        ))
    })
    .await
}
