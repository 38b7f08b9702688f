//! Operator commands that move services: `service`, `host drain|undrain`,
//! `site maintenance enter|exit`, `switchover`, `failover`, `failback`.
//!
//! Every mutating command takes `--dry-run`, which prints the plan the agent computed without
//! changing anything; a real run prints the same plan as the expectation of what follows.

use std::path::PathBuf;

use clap::Subcommand;
use siteagent::api::{OperationRequest, OperationResult, ServiceView};

use crate::client::Client;
use crate::output::{Output, now_ms, print, views};

#[derive(Subcommand)]
pub enum ServiceCmd {
    /// Declare a service from a TOML spec file.
    Create {
        #[arg(long)]
        file: PathBuf,
        #[arg(long)]
        dry_run: bool,
    },
    /// Services with their owner site, epoch and instances.
    List {
        #[arg(long)]
        local: bool,
    },
    /// Change a service's spec in place from a TOML spec file (same name): same owner; when
    /// what an instance runs changes, the instances are replaced one at a time under the next
    /// epoch. `--dry-run` lists the fields that change and the instances to be replaced.
    Update {
        #[arg(long)]
        file: PathBuf,
        #[arg(long)]
        dry_run: bool,
    },
    /// Delete a service; its hosts stop its instances.
    Delete {
        name: String,
        #[arg(long)]
        dry_run: bool,
    },
}

#[derive(Subcommand)]
pub enum HostCmd {
    /// Move every instance off a host (replacements start before the old ones stop).
    Drain {
        host: u64,
        #[arg(long)]
        dry_run: bool,
    },
    /// Let a drained host take instances again.
    Undrain {
        host: u64,
        #[arg(long)]
        dry_run: bool,
    },
}

#[derive(Subcommand)]
pub enum MaintenanceCmd {
    /// Evacuate a site with planned switchovers; it takes no services until `exit`.
    Enter {
        site: String,
        #[arg(long)]
        dry_run: bool,
    },
    /// Return a site (from maintenance, or declared lost) to service.
    Exit {
        site: String,
        #[arg(long)]
        dry_run: bool,
    },
}

pub use scenarios::lab::read_spec;

/// Prints an operation's result: the change, then the plan.
pub fn print_operation(out: Output, r: &OperationResult) -> anyhow::Result<()> {
    print(out, r, views::operation)
}

pub async fn operation(
    c: &Client,
    out: Output,
    path: &str,
    req: &OperationRequest,
) -> anyhow::Result<()> {
    let r: OperationResult = c.post(path, req).await?;
    print_operation(out, &r)
}

fn dry(dry_run: bool) -> OperationRequest {
    OperationRequest {
        dry_run,
        ..Default::default()
    }
}

pub async fn service(c: &Client, out: Output, cmd: ServiceCmd) -> anyhow::Result<()> {
    match cmd {
        ServiceCmd::Create { file, dry_run } => {
            let spec = read_spec(&file)?;
            let path = format!("/v1/services?dry_run={dry_run}");
            let r: OperationResult = c.post(&path, &spec).await?;
            print_operation(out, &r)
        }
        ServiceCmd::Update { file, dry_run } => {
            let spec = read_spec(&file)?;
            let path = format!("/v1/services/{}?dry_run={dry_run}", spec.name);
            let r: OperationResult = c.put(&path, &spec).await?;
            print_operation(out, &r)
        }
        ServiceCmd::Delete { name, dry_run } => {
            let r: OperationResult = c
                .delete(&format!("/v1/services/{name}?dry_run={dry_run}"))
                .await?;
            print_operation(out, &r)
        }
        ServiceCmd::List { local } => {
            let path = if local {
                "/v1/services?local=true"
            } else {
                "/v1/services"
            };
            let services: Vec<ServiceView> = c.get(path).await?;
            print(out, services.as_slice(), |s| views::services(s, now_ms()))
        }
    }
}

pub async fn host(c: &Client, out: Output, cmd: HostCmd) -> anyhow::Result<()> {
    let (path, dry_run) = match cmd {
        HostCmd::Drain { host, dry_run } => (format!("/v1/hosts/{host}/drain"), dry_run),
        HostCmd::Undrain { host, dry_run } => (format!("/v1/hosts/{host}/undrain"), dry_run),
    };
    operation(c, out, &path, &dry(dry_run)).await
}

pub async fn maintenance(c: &Client, out: Output, cmd: MaintenanceCmd) -> anyhow::Result<()> {
    let (path, dry_run) = match cmd {
        MaintenanceCmd::Enter { site, dry_run } => {
            (format!("/v1/sites/{site}/maintenance/enter"), dry_run)
        }
        MaintenanceCmd::Exit { site, dry_run } => {
            (format!("/v1/sites/{site}/maintenance/exit"), dry_run)
        }
    };
    operation(c, out, &path, &dry(dry_run)).await
}

pub async fn switchover(
    c: &Client,
    out: Output,
    service: &str,
    to: String,
    dry_run: bool,
) -> anyhow::Result<()> {
    let req = OperationRequest {
        dry_run,
        to: Some(to),
        force: false,
    };
    operation(c, out, &format!("/v1/services/{service}/switchover"), &req).await
}

pub async fn failover(
    c: &Client,
    out: Output,
    site: &str,
    force: bool,
    dry_run: bool,
) -> anyhow::Result<()> {
    let req = OperationRequest {
        dry_run,
        to: None,
        force,
    };
    operation(c, out, &format!("/v1/failover/{site}"), &req).await
}

pub async fn failback(c: &Client, out: Output, service: &str, dry_run: bool) -> anyhow::Result<()> {
    operation(
        c,
        out,
        &format!("/v1/services/{service}/failback"),
        &dry(dry_run),
    )
    .await
}
