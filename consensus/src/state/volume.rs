//! Volumes: block devices with one primary copy and replicas in other sites, and what the state
//! knows about each copy (in sync, lagging, resyncing, outdated).
//!
//! Invariants:
//! - a volume's `epoch` is its fencing token for storage: it goes up by one on every promotion,
//!   and a report or an outdate about another epoch is refused, so a deposed primary can neither
//!   claim its replicas are in sync nor write that they are outdated;
//! - a copy the primary declared [`CopyState::Outdated`] (it acknowledged writes without it) is
//!   promoted only when forced; the event says so;
//! - a service that uses a volume is owned only by the volume's primary site
//!   (`AssignOwner` checks it), so the site that runs a service is the one whose copy takes its
//!   writes;
//! - every volume gets a `uid` (the state revision that created it); copies live in files named
//!   by it, so a re-created name never picks up an old file.
//!
//! Does not: decide when to promote (the planner's RPO gate and operators do), or move bytes
//! (the agents' replication engine does, and reports here).

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use super::{CommandError, NodeId, invalid, validate_name};

/// Smallest and largest volume an operator may create.
pub const MIN_VOLUME_SIZE: u64 = 1 << 20;
pub const MAX_VOLUME_SIZE: u64 = 1 << 44;

/// What an operator declares (`sitectl volume create`); unknown fields are errors.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VolumeSpec {
    /// 1–63 of a-z, 0-9 and inner `-`.
    pub name: String,
    /// Bytes; a multiple of `block_size`.
    pub size: u64,
    #[serde(default = "default_block_size")]
    pub block_size: u32,
    /// Site whose copy takes the writes at first.
    pub primary: String,
    /// Other sites that keep a copy, and how.
    #[serde(default)]
    pub replicas: Vec<ReplicaSpec>,
}

fn default_block_size() -> u32 {
    4096
}

/// A site that keeps a replica, and its mode.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReplicaSpec {
    pub site: String,
    pub mode: ReplicationMode,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ReplicationMode {
    /// A write is acknowledged only once this copy has it durably.
    Sync,
    /// Writes are shipped in order after they are acknowledged; the lag is the RPO.
    Async,
}

impl fmt::Display for ReplicationMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ReplicationMode::Sync => "sync",
            ReplicationMode::Async => "async",
        })
    }
}

impl FromStr for ReplicaSpec {
    type Err = String;

    /// `site2:sync` or `site3:async`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (site, mode) = s
            .split_once(':')
            .ok_or_else(|| format!("`{s}`: expected SITE:sync or SITE:async"))?;
        let mode = match mode {
            "sync" => ReplicationMode::Sync,
            "async" => ReplicationMode::Async,
            other => return Err(format!("`{s}`: mode `{other}` is not sync or async")),
        };
        Ok(ReplicaSpec {
            site: site.to_string(),
            mode,
        })
    }
}

/// A volume as the fabric keeps it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Volume {
    pub spec: VolumeSpec,
    /// The revision that created it; names its files.
    pub uid: u64,
    pub created_ms: u64,
    /// Fencing token: bumps by one on every promotion (starts at 1).
    pub epoch: u64,
    /// Site whose copy takes the writes now.
    pub primary: String,
    /// Every site's copy, the primary's included.
    pub copies: BTreeMap<String, VolumeCopy>,
    /// The agent that last reported as the primary's server, and when (unix ms).
    pub reporter: Option<NodeId>,
    /// Open writers (NBD connections) on the primary as of its last report.
    pub writers: u32,
    /// An operator accepted losing what the copies lack (`sitectl failover --force`): the
    /// planner may promote a copy beyond the RPO gate. Cleared by the next promotion.
    pub accept_loss: Option<String>,
}

/// One site's copy.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VolumeCopy {
    /// How it replicates while it is not the primary.
    pub mode: ReplicationMode,
    pub state: CopyState,
    pub since_ms: u64,
    /// As the primary last reported it.
    pub lag: Lag,
    pub reported_ms: u64,
    /// How many times the primary outdated this copy ([`super::Command::OutdateCopy`]); a
    /// report that counts fewer was computed before the last outdate and is ignored for it.
    pub outdates: u64,
}

/// What the state knows about a copy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CopyState {
    /// It takes the writes.
    Primary,
    /// Not reported yet since it was created or its primary changed.
    Unknown,
    /// Holds every acknowledged write (sync) or every write shipped so far with no backlog.
    InSync,
    /// Behind by `lag` (async backlog, or away with its changes tracked).
    Lagging,
    /// Being brought up to date by a resync; `lag` carries the progress.
    Resyncing,
    /// The primary acknowledged writes it lacks, and said so before doing it; promoting it
    /// loses them, so it takes `--force`.
    Outdated,
}

impl fmt::Display for CopyState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            CopyState::Primary => "primary",
            CopyState::Unknown => "unknown",
            CopyState::InSync => "in-sync",
            CopyState::Lagging => "lagging",
            CopyState::Resyncing => "resyncing",
            CopyState::Outdated => "outdated",
        })
    }
}

/// How far a copy is behind, as its primary reported it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lag {
    /// Acknowledged writes it does not have yet.
    pub writes: u64,
    pub bytes: u64,
    /// Age of the oldest of them, ms: the RPO if the primary were lost now.
    pub age_ms: u64,
    /// Resync progress, bytes.
    pub resync_done: u64,
    pub resync_total: u64,
}

/// A copy's state as the primary's agent reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct CopyReport {
    pub state: CopyState,
    pub lag: Lag,
    /// How many times the reporting primary has outdated this copy, counted from the copy's
    /// `outdates` when it started serving: a report computed before an outdate carries fewer.
    pub outdates: u64,
}

impl VolumeSpec {
    /// Checks the spec on its own; the state checks the sites exist.
    pub fn validate(&self) -> Result<(), CommandError> {
        validate_name("volume name", &self.name)?;
        if !self.block_size.is_power_of_two() || !(512..=65536).contains(&self.block_size) {
            return Err(invalid(
                "block_size",
                format!(
                    "{} must be a power of two from 512 to 65536",
                    self.block_size
                ),
            ));
        }
        if !(MIN_VOLUME_SIZE..=MAX_VOLUME_SIZE).contains(&self.size) {
            return Err(invalid(
                "size",
                format!("{} bytes must be from 1 MiB to 16 TiB", self.size),
            ));
        }
        if !self.size.is_multiple_of(u64::from(self.block_size)) {
            return Err(invalid(
                "size",
                format!(
                    "{} bytes is not a multiple of the block size {}",
                    self.size, self.block_size
                ),
            ));
        }
        validate_name("primary", &self.primary)?;
        for (i, r) in self.replicas.iter().enumerate() {
            validate_name("replicas", &r.site)?;
            if r.site == self.primary {
                return Err(invalid(
                    "replicas",
                    format!(
                        "`{}` is the primary; a replica must be another site",
                        r.site
                    ),
                ));
            }
            if self.replicas[..i].iter().any(|o| o.site == r.site) {
                return Err(invalid("replicas", format!("`{}` is listed twice", r.site)));
            }
        }
        Ok(())
    }

    /// Every site that keeps a copy, the primary first.
    pub fn sites(&self) -> impl Iterator<Item = &str> {
        std::iter::once(self.primary.as_str()).chain(self.replicas.iter().map(|r| r.site.as_str()))
    }
}

impl Volume {
    /// A new volume: the primary's copy is [`CopyState::Primary`], the replicas'
    /// [`CopyState::Unknown`] until the primary reports them.
    pub fn new(spec: VolumeSpec, uid: u64, now: u64) -> Self {
        let mut copies = BTreeMap::new();
        // The primary's own mode applies once it is demoted: the strictest of its replicas'.
        let primary_mode = if spec
            .replicas
            .iter()
            .any(|r| r.mode == ReplicationMode::Sync)
        {
            ReplicationMode::Sync
        } else {
            ReplicationMode::Async
        };
        copies.insert(
            spec.primary.clone(),
            VolumeCopy::new(primary_mode, CopyState::Primary, now),
        );
        for r in &spec.replicas {
            copies.insert(
                r.site.clone(),
                VolumeCopy::new(r.mode, CopyState::Unknown, now),
            );
        }
        Volume {
            primary: spec.primary.clone(),
            spec,
            uid,
            created_ms: now,
            epoch: 1,
            copies,
            reporter: None,
            writers: 0,
            accept_loss: None,
        }
    }

    /// File name of this volume's copy in an agent's volume directory.
    pub fn file_name(&self) -> String {
        format!("{}.{}.img", self.spec.name, self.uid)
    }

    /// Replica sites (every copy but the primary's) with their mode.
    pub fn replicas(&self) -> impl Iterator<Item = (&str, ReplicationMode)> {
        self.copies
            .iter()
            .filter(|(site, _)| **site != self.primary)
            .map(|(site, c)| (site.as_str(), c.mode))
    }

    /// Why promoting the copy at `site` could lose acknowledged writes, if it could.
    pub fn promotion_risk(&self, site: &str) -> Option<String> {
        let copy = self.copies.get(site)?;
        match copy.state {
            CopyState::Primary | CopyState::InSync => None,
            CopyState::Lagging => Some(format!(
                "the copy at {site} is lagging by {} writes ({} bytes, {} ms)",
                copy.lag.writes, copy.lag.bytes, copy.lag.age_ms
            )),
            CopyState::Resyncing => Some(format!(
                "the copy at {site} is resyncing ({} of {} bytes)",
                copy.lag.resync_done, copy.lag.resync_total
            )),
            CopyState::Outdated => Some(format!(
                "the copy at {site} is outdated: the primary acknowledged writes it lacks"
            )),
            CopyState::Unknown => Some(format!(
                "the copy at {site} has not been reported in sync since epoch {}",
                self.epoch
            )),
        }
    }
}

impl VolumeCopy {
    fn new(mode: ReplicationMode, state: CopyState, now: u64) -> Self {
        VolumeCopy {
            mode,
            state,
            since_ms: now,
            lag: Lag::default(),
            reported_ms: 0,
            outdates: 0,
        }
    }

    /// Sets the state, keeping `since_ms` when it does not change.
    pub(super) fn set_state(&mut self, state: CopyState, now: u64) {
        if self.state != state {
            self.state = state;
            self.since_ms = now;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> VolumeSpec {
        VolumeSpec {
            name: "db".into(),
            size: 1 << 30,
            block_size: 4096,
            primary: "s1".into(),
            replicas: vec![
                "s2:sync".parse().expect("s2"),
                "s3:async".parse().expect("s3"),
            ],
        }
    }

    #[test]
    fn a_spec_names_what_is_wrong() {
        assert!(spec().validate().is_ok());
        let bad = |f: fn(&mut VolumeSpec), field: &str| {
            let mut s = spec();
            f(&mut s);
            match s.validate() {
                Err(CommandError::Invalid { field: got, .. }) => assert_eq!(got, field),
                other => panic!("{field}: {other:?}"),
            }
        };
        bad(|s| s.size = 1000, "size");
        bad(|s| s.size = (1 << 30) + 512, "size");
        bad(|s| s.block_size = 3000, "block_size");
        bad(|s| s.replicas[0].site = "s1".into(), "replicas");
        bad(|s| s.replicas[1].site = "s2".into(), "replicas");
        bad(|s| s.name = "Db".into(), "volume name");
        assert!("s2:often".parse::<ReplicaSpec>().is_err());
        assert!("s2".parse::<ReplicaSpec>().is_err());
    }

    #[test]
    fn a_new_volume_has_a_primary_copy_and_unknown_replicas() {
        let v = Volume::new(spec(), 7, 1000);
        assert_eq!(v.epoch, 1);
        assert_eq!(v.file_name(), "db.7.img");
        assert_eq!(v.copies["s1"].state, CopyState::Primary);
        assert_eq!(v.copies["s1"].mode, ReplicationMode::Sync);
        assert_eq!(v.copies["s2"].state, CopyState::Unknown);
        assert_eq!(
            v.replicas().collect::<Vec<_>>(),
            vec![
                ("s2", ReplicationMode::Sync),
                ("s3", ReplicationMode::Async)
            ]
        );
        assert!(v.promotion_risk("s1").is_none());
        assert!(v.promotion_risk("s2").is_some());
    }
}
