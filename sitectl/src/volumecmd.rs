//! `sitectl volume create|list|show|delete|promote`: block volumes and their copies.

use clap::Subcommand;
use consensus::state::{ReplicaSpec, VolumeSpec};
use siteagent::api::{OperationResult, PromoteRequest, VolumeView};

use crate::client::Client;
use crate::ops::print_operation;
use crate::output::{Output, ago, now_ms, print, table};

#[derive(Subcommand)]
pub enum VolumeCmd {
    /// Create a volume: `db --size 1GiB --primary s1 --replica s2:sync --replica s3:async`.
    Create {
        name: String,
        /// Bytes, or with a unit: KiB, MiB, GiB, TiB.
        #[arg(long, value_parser = parse_size)]
        size: u64,
        /// Site whose copy takes the writes.
        #[arg(long)]
        primary: String,
        /// `SITE:sync` (a write is acknowledged once that site has it durably) or
        /// `SITE:async` (shipped in order; the lag is the RPO); repeatable.
        #[arg(long = "replica")]
        replicas: Vec<ReplicaSpec>,
        #[arg(long, default_value_t = 4096)]
        block_size: u32,
        #[arg(long)]
        dry_run: bool,
    },
    /// Volumes with their primary, epoch and each copy's state.
    List {
        #[arg(long)]
        local: bool,
    },
    /// One volume: every copy with its state, lag and host, and the primary's NBD address.
    Show {
        name: String,
        #[arg(long)]
        local: bool,
    },
    /// Forget a volume no service uses (the copies' files stay on disk).
    Delete {
        name: String,
        #[arg(long)]
        dry_run: bool,
    },
    /// Make the copy at `--site` the primary (next epoch). A copy that may lack acknowledged
    /// writes (lagging, resyncing, outdated) needs `--force`, and the event says so.
    Promote {
        name: String,
        #[arg(long)]
        site: String,
        #[arg(long)]
        force: bool,
        #[arg(long)]
        dry_run: bool,
    },
}

/// `1GiB` → 1073741824; plain numbers are bytes (the drill format's rule).
pub use scenarios::scenario::volume::parse_size;

pub async fn volume(c: &Client, out: Output, cmd: VolumeCmd) -> anyhow::Result<()> {
    match cmd {
        VolumeCmd::Create {
            name,
            size,
            primary,
            replicas,
            block_size,
            dry_run,
        } => {
            let spec = VolumeSpec {
                name,
                size,
                block_size,
                primary,
                replicas,
            };
            let r: OperationResult = c
                .post(&format!("/v1/volumes?dry_run={dry_run}"), &spec)
                .await?;
            print_operation(out, &r)
        }
        VolumeCmd::List { local } => {
            let vols: Vec<VolumeView> = c.get(&format!("/v1/volumes?local={local}")).await?;
            print(out, vols.as_slice(), |v| volumes(v, now_ms()))
        }
        VolumeCmd::Show { name, local } => {
            let v: VolumeView = c.get(&format!("/v1/volumes/{name}?local={local}")).await?;
            print(out, &v, |v| show(v, now_ms()))
        }
        VolumeCmd::Delete { name, dry_run } => {
            let r: OperationResult = c
                .delete(&format!("/v1/volumes/{name}?dry_run={dry_run}"))
                .await?;
            print_operation(out, &r)
        }
        VolumeCmd::Promote {
            name,
            site,
            force,
            dry_run,
        } => {
            let req = PromoteRequest {
                dry_run,
                site,
                force,
            };
            let r: OperationResult = c.post(&format!("/v1/volumes/{name}/promote"), &req).await?;
            print_operation(out, &r)
        }
    }
}

fn size(bytes: u64) -> String {
    match bytes {
        b if b >= 1 << 30 && b % (1 << 30) == 0 => format!("{} GiB", b >> 30),
        b if b >= 1 << 20 && b % (1 << 20) == 0 => format!("{} MiB", b >> 20),
        b => format!("{b} B"),
    }
}

/// `s2 in-sync`, `s3 lagging 12 writes/48 KiB/350 ms`, `s1 resyncing 40%`.
fn copy_summary(c: &siteagent::api::CopyView) -> String {
    use consensus::state::CopyState;
    match c.state {
        CopyState::Lagging => format!(
            "{} lagging {} writes/{} B/{} ms",
            c.site, c.lag.writes, c.lag.bytes, c.lag.age_ms
        ),
        CopyState::Resyncing => format!(
            "{} resyncing {}%",
            c.site,
            (c.lag.resync_done * 100)
                .checked_div(c.lag.resync_total)
                .unwrap_or(0)
        ),
        state => format!("{} {state}", c.site),
    }
}

pub fn volumes(vols: &[VolumeView], now_ms: u64) -> String {
    table(
        &["volume", "size", "primary", "epoch", "service", "copies"],
        vols.iter().map(|v| {
            let copies: Vec<String> = v
                .copies
                .iter()
                .filter(|c| c.site != v.primary)
                .map(|c| format!("{} ({})", copy_summary(c), c.mode))
                .collect();
            let since = v
                .copies
                .iter()
                .find(|c| c.site == v.primary)
                .map(|c| ago(c.since_ms, now_ms))
                .unwrap_or_default();
            vec![
                v.name.clone(),
                size(v.size),
                format!("{} ({since})", v.primary),
                v.epoch.to_string(),
                v.service.clone().unwrap_or_else(|| "-".into()),
                copies.join(", "),
            ]
        }),
    )
}

pub fn show(v: &VolumeView, now_ms: u64) -> String {
    let head = format!(
        "volume {} ({}, block {}), primary {} at epoch {}, served at {}, {} writer(s){}\n",
        v.name,
        size(v.size),
        v.block_size,
        v.primary,
        v.epoch,
        v.nbd.as_deref().unwrap_or("(no host up)"),
        v.writers,
        v.service
            .as_ref()
            .map(|s| format!(", used by service {s}"))
            .unwrap_or_default()
    );
    let rows = table(
        &["site", "host", "mode", "state", "since", "lag", "reported"],
        v.copies.iter().map(|c| {
            vec![
                c.site.clone(),
                c.host.map(|h| h.to_string()).unwrap_or_else(|| "-".into()),
                if c.site == v.primary {
                    "-".into()
                } else {
                    c.mode.to_string()
                },
                copy_summary(c)
                    .trim_start_matches(c.site.as_str())
                    .trim()
                    .to_string(),
                ago(c.since_ms, now_ms),
                format!(
                    "{} writes, {} B, {} ms",
                    c.lag.writes, c.lag.bytes, c.lag.age_ms
                ),
                ago(c.reported_ms, now_ms),
            ]
        }),
    );
    head + &rows
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_take_binary_units_and_name_what_is_wrong() {
        assert_eq!(parse_size("1GiB"), Ok(1 << 30));
        assert_eq!(parse_size("512MiB"), Ok(512 << 20));
        assert_eq!(parse_size("4096"), Ok(4096));
        let err = parse_size("1GB").expect_err("GB");
        assert!(err.contains("unit `GB`"), "{err}");
        assert!(parse_size("lots").is_err());
        assert!(
            parse_size("99999999999TiB")
                .expect_err("big")
                .contains("too large")
        );
    }
}
