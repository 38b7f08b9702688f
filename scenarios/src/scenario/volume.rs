//! A service's replicated volume as a drill declares it:
//! `volume = { size = "64MiB", replicas = ["s2:sync", "s3:async"] }`.
//!
//! Invariant: a checked [`VolumeDef`] turns into a [`VolumeSpec`] the fabric accepts — its size
//! is a whole number of blocks, every replica names a host site other than the primary (the
//! service's first site), at most once.
//!
//! It does not create anything; the runner posts [`VolumeDef::spec`] before the service.

use std::fmt;

use consensus::state::{ReplicaSpec, ReplicationMode, VolumeSpec};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Block size of drill volumes (the fabric's default).
const BLOCK_SIZE: u32 = 4096;

/// The volume of a `[[service]]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VolumeDef {
    /// Bytes with a unit: `"64MiB"` (B, KiB, MiB, GiB, TiB), a multiple of 4 KiB.
    pub size: Size,
    /// Copies besides the primary: `"SITE:sync"` or `"SITE:async"`.
    #[serde(default)]
    pub replicas: Vec<Replica>,
}

/// A size in bytes, written with a unit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Size(pub u64);

/// One replica, written `SITE:MODE`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Replica(pub ReplicaSpec);

impl VolumeDef {
    /// The volume of service `service` whose primary copy is at `primary`.
    pub fn spec(&self, service: &str, primary: &str) -> VolumeSpec {
        VolumeSpec {
            name: volume_name(service),
            size: self.size.0,
            block_size: BLOCK_SIZE,
            primary: primary.to_string(),
            replicas: self.replicas.iter().map(|r| r.0.clone()).collect(),
        }
    }

    /// Why this volume cannot be created with its primary at `primary` among `host_sites`, for
    /// a service that may run in `sites` (each needs a copy).
    pub fn problem(
        &self,
        service: &str,
        sites: &[String],
        host_sites: &[String],
    ) -> Option<String> {
        let primary = sites.first()?.as_str();
        if let Some(bare) = sites
            .iter()
            .find(|s| s.as_str() != primary && !self.replicas.iter().any(|r| &r.0.site == *s))
        {
            return Some(format!(
                "the service may run at {bare} but the volume has no replica there (add `{bare}:sync` or `{bare}:async`, or leave {bare} out of the service's sites)"
            ));
        }
        let mut seen = Vec::new();
        for Replica(r) in &self.replicas {
            if !host_sites.contains(&r.site) {
                return Some(format!(
                    "replica `{}`: unknown site (host sites: {})",
                    Replica(r.clone()),
                    host_sites.join(", ")
                ));
            }
            if r.site == primary {
                return Some(format!(
                    "replica `{}`: {primary} holds the primary copy (the service's first site)",
                    Replica(r.clone())
                ));
            }
            if seen.contains(&&r.site) {
                return Some(format!("site {} has two replicas", r.site));
            }
            seen.push(&r.site);
        }
        self.spec(service, primary)
            .validate()
            .err()
            .map(|e| e.to_string())
    }

    /// Whether some replica is synchronous.
    pub fn has_sync_replica(&self) -> bool {
        self.replicas
            .iter()
            .any(|r| r.0.mode == ReplicationMode::Sync)
    }
}

/// The name of service `service`'s volume.
pub fn volume_name(service: &str) -> String {
    format!("{service}-data")
}

/// `64MiB` → 67108864; plain numbers are bytes.
pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("`{s}`: expected a size such as 64MiB or 1GiB"))?;
    let shift = match unit.trim() {
        "" | "B" => 0,
        "KiB" => 10,
        "MiB" => 20,
        "GiB" => 30,
        "TiB" => 40,
        other => {
            return Err(format!(
                "`{s}`: unit `{other}` is not one of B, KiB, MiB, GiB, TiB"
            ));
        }
    };
    n.checked_mul(1 << shift)
        .ok_or_else(|| format!("`{s}` is too large"))
}

impl<'de> Deserialize<'de> for Size {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        parse_size(&s).map(Size).map_err(serde::de::Error::custom)
    }
}

impl Serialize for Size {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0.to_string())
    }
}

impl fmt::Display for Replica {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.0.site, self.0.mode)
    }
}

impl<'de> Deserialize<'de> for Replica {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse::<ReplicaSpec>()
            .map(Replica)
            .map_err(serde::de::Error::custom)
    }
}

impl Serialize for Replica {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn def(text: &str) -> Result<VolumeDef, String> {
        toml::from_str(text).map_err(|e| e.to_string())
    }

    fn sites() -> Vec<String> {
        vec!["s1".into(), "s2".into(), "s3".into()]
    }

    #[test]
    fn a_volume_becomes_the_spec_the_fabric_takes() {
        let v = def(r#"size = "64MiB"
replicas = ["s2:sync", "s3:async"]"#)
        .expect("valid");
        assert_eq!(v.problem("web", &sites(), &sites()), None);
        let spec = v.spec("web", "s1");
        assert_eq!(spec.name, "web-data");
        assert_eq!(spec.size, 64 << 20);
        assert_eq!(spec.primary, "s1");
        assert_eq!(spec.replicas.len(), 2);
        assert_eq!(spec.replicas[0].mode, ReplicationMode::Sync);
        assert!(v.has_sync_replica());
    }

    #[test]
    fn bad_sizes_and_modes_are_refused_by_name() {
        let e = def(r#"size = "64MB""#).expect_err("unit");
        assert!(e.contains("unit `MB`"), "{e}");
        let e = def(r#"size = "1MiB"
replicas = ["s2:eventually"]"#)
        .expect_err("mode");
        assert!(e.contains("s2:eventually"), "{e}");
        let e = def(r#"size = "1MiB"
replicas = ["s2"]"#)
        .expect_err("no mode");
        assert!(e.contains("SITE:sync or SITE:async"), "{e}");
    }

    #[test]
    fn replicas_must_be_other_known_sites_once_and_size_whole_blocks() {
        let problem = |text: &str| {
            def(text)
                .expect("parses")
                .problem("web", &["s1".into(), "s2".into()], &sites())
        };
        let p = problem(
            r#"size = "1MiB"
replicas = ["s2:sync", "s9:sync"]"#,
        );
        assert!(p.expect("unknown").contains("unknown site"));
        let p = problem(
            r#"size = "1MiB"
replicas = ["s3:sync"]"#,
        );
        assert!(p.expect("no copy").contains("no replica there"));
        let p = problem(
            r#"size = "1MiB"
replicas = ["s2:sync", "s1:sync"]"#,
        );
        assert!(p.expect("primary").contains("primary copy"));
        let p = problem(
            r#"size = "1MiB"
replicas = ["s2:sync", "s2:async"]"#,
        );
        assert!(p.expect("twice").contains("two replicas"));
        let p = problem(
            r#"size = "1000"
replicas = ["s2:sync"]"#,
        );
        assert!(p.is_some(), "not a multiple of the block size");
    }
}
