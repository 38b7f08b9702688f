//! The `fabric-emu` configuration file and [`run`], which turns it into running forwarders and
//! a control socket.
//!
//! ```toml
//! control = "/tmp/lab/emu.sock"
//! seed = 1
//!
//! [[link]]
//! a = "s1"
//! b = "s2"
//! delay = "20ms"          # both directions…
//! rate = "100mbit"
//! [link.b_to_a]           # …except where a direction says otherwise
//! loss = "1%"
//!
//! [[forward]]
//! kind = "udp"
//! listen = "127.0.0.1:7101"
//! target = "127.0.0.2:7000"
//! from = "s1"
//! to = "s2"
//! ```
//!
//! Invariant: a config that [`EmuConfig::load`] accepted builds: every link is valid and unique
//! and every forwarder rides a declared link. Unknown fields are errors, named with their line.
//!
//! It does not watch the file: run-time changes go through the control socket.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::params::{LinkParams, ParamError, parse_duration, parse_loss, parse_rate};
use crate::table::{Emulator, ForwardKind};
use crate::tcp::TcpForwarder;
use crate::udp::{FLOW_IDLE, UdpForwarder};
use crate::{EmuError, Route, control};

/// The daemon's configuration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EmuConfig {
    /// Path of the Unix socket the control protocol listens on.
    pub control: PathBuf,
    /// Seed of every random draw (loss, jitter); the same seed and traffic give the same fates.
    #[serde(default)]
    pub seed: u64,
    /// How long a UDP flow may stay silent both ways before it is forgotten ("60s").
    #[serde(
        default = "default_flow_idle",
        deserialize_with = "de_duration",
        serialize_with = "ser_duration"
    )]
    pub udp_flow_idle: Duration,
    /// The links between sites.
    #[serde(default, rename = "link")]
    pub links: Vec<LinkConfig>,
    /// The forwarders.
    #[serde(default, rename = "forward")]
    pub forwards: Vec<ForwardConfig>,
}

fn default_flow_idle() -> Duration {
    FLOW_IDLE
}

/// One link between two sites, with its initial parameters.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LinkConfig {
    /// One site.
    pub a: String,
    /// The other site.
    pub b: String,
    /// One-way delay of both directions ("40ms").
    #[serde(
        default,
        deserialize_with = "de_opt_duration",
        serialize_with = "ser_opt_duration",
        skip_serializing_if = "Option::is_none"
    )]
    pub delay: Option<Duration>,
    /// Jitter (±) of both directions ("5ms").
    #[serde(
        default,
        deserialize_with = "de_opt_duration",
        serialize_with = "ser_opt_duration",
        skip_serializing_if = "Option::is_none"
    )]
    pub jitter: Option<Duration>,
    /// Loss of both directions: "1%" or 0.01.
    #[serde(
        default,
        deserialize_with = "de_opt_loss",
        skip_serializing_if = "Option::is_none"
    )]
    pub loss: Option<f64>,
    /// Bandwidth cap of both directions: "100mbit", "500kbit" or bits per second.
    #[serde(
        default,
        deserialize_with = "de_opt_rate",
        skip_serializing_if = "Option::is_none"
    )]
    pub rate: Option<u64>,
    /// Start partitioned (both directions).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub partitioned: Option<bool>,
    /// Overrides for the `a` → `b` direction.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub a_to_b: Option<DirectionConfig>,
    /// Overrides for the `b` → `a` direction.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub b_to_a: Option<DirectionConfig>,
}

/// Per-direction overrides of a link's parameters; absent fields take the link's.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DirectionConfig {
    /// One-way delay ("40ms").
    #[serde(
        default,
        deserialize_with = "de_opt_duration",
        serialize_with = "ser_opt_duration",
        skip_serializing_if = "Option::is_none"
    )]
    pub delay: Option<Duration>,
    /// Jitter (±) ("5ms").
    #[serde(
        default,
        deserialize_with = "de_opt_duration",
        serialize_with = "ser_opt_duration",
        skip_serializing_if = "Option::is_none"
    )]
    pub jitter: Option<Duration>,
    /// Loss: "1%" or 0.01.
    #[serde(
        default,
        deserialize_with = "de_opt_loss",
        skip_serializing_if = "Option::is_none"
    )]
    pub loss: Option<f64>,
    /// Bandwidth cap: "100mbit" or bits per second.
    #[serde(
        default,
        deserialize_with = "de_opt_rate",
        skip_serializing_if = "Option::is_none"
    )]
    pub rate: Option<u64>,
    /// Start partitioned.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub partitioned: Option<bool>,
}

/// One forwarder.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ForwardConfig {
    /// "udp" or "tcp".
    pub kind: ForwardKind,
    /// Where clients send ("127.0.0.1:7101"; port 0 picks one, status shows it).
    pub listen: std::net::SocketAddr,
    /// Where the traffic goes.
    pub target: std::net::SocketAddr,
    /// The clients' site.
    pub from: String,
    /// The target's site.
    pub to: String,
}

impl LinkConfig {
    fn direction(&self, overrides: Option<DirectionConfig>) -> LinkParams {
        let o = overrides.unwrap_or_default();
        LinkParams {
            delay: o.delay.or(self.delay).unwrap_or_default(),
            jitter: o.jitter.or(self.jitter).unwrap_or_default(),
            loss: o.loss.or(self.loss).unwrap_or_default(),
            rate_bps: o.rate.or(self.rate),
            partitioned: o.partitioned.or(self.partitioned).unwrap_or_default(),
        }
    }

    /// Initial parameters of `a` → `b` and `b` → `a`.
    pub fn params(&self) -> (LinkParams, LinkParams) {
        (self.direction(self.a_to_b), self.direction(self.b_to_a))
    }
}

impl ForwardConfig {
    pub fn route(&self) -> Route {
        Route {
            listen: self.listen,
            target: self.target,
            from: self.from.clone(),
            to: self.to.clone(),
        }
    }
}

impl EmuConfig {
    /// Parses and checks a config; errors name the field and line (syntax) or the link or
    /// forwarder (meaning).
    pub fn parse(text: &str, path: &Path) -> Result<Self, EmuError> {
        let config: EmuConfig = toml::from_str(text).map_err(|e| EmuError::Config {
            path: path.to_path_buf(),
            message: e.to_string(),
        })?;
        config.emulator().map_err(|e| match e {
            EmuError::Invalid { message } => EmuError::Config {
                path: path.to_path_buf(),
                message,
            },
            other => other,
        })?;
        Ok(config)
    }

    /// Reads and checks the config file at `path`.
    pub fn load(path: &Path) -> Result<Self, EmuError> {
        let text = std::fs::read_to_string(path).map_err(|e| EmuError::Config {
            path: path.to_path_buf(),
            message: e.to_string(),
        })?;
        Self::parse(&text, path)
    }

    /// The emulator with the configured links, checking that every forwarder has its link.
    pub fn emulator(&self) -> Result<Emulator, EmuError> {
        let config_err = |message: String| EmuError::Invalid { message };
        let emu = Emulator::new(self.seed);
        for (i, link) in self.links.iter().enumerate() {
            let (ab, ba) = link.params();
            emu.add_link(&link.a, &link.b, ab, ba)
                .map_err(|e| config_err(format!("link #{} ({}–{}): {e}", i + 1, link.a, link.b)))?;
        }
        for (i, f) in self.forwards.iter().enumerate() {
            if !emu.has_link(&f.from, &f.to) {
                return Err(config_err(format!(
                    "forward #{} (listen {}): no link between sites {} and {}",
                    i + 1,
                    f.listen,
                    f.from,
                    f.to
                )));
            }
        }
        Ok(emu)
    }
}

/// Runs the emulator of `config` until `shutdown`: binds every forwarder and the control socket
/// (failing if any cannot be bound), then forwards; on shutdown stops everything, waits for it
/// and removes the control socket.
pub async fn run(config: EmuConfig, shutdown: CancellationToken) -> Result<(), EmuError> {
    let emu = Arc::new(config.emulator()?);
    let tasks = TaskTracker::new();
    // Forwarders are bound before any runs, so a bind failure leaves nothing behind.
    let mut udp = Vec::new();
    let mut tcp = Vec::new();
    for f in &config.forwards {
        match f.kind {
            ForwardKind::Udp => udp.push(
                UdpForwarder::bind(emu.clone(), f.route())
                    .await?
                    .with_idle_timeout(config.udp_flow_idle),
            ),
            ForwardKind::Tcp => tcp.push(TcpForwarder::bind(emu.clone(), f.route()).await?),
        }
    }
    let listener = control::bind(&config.control)?;
    for f in udp {
        tasks.spawn(f.run(shutdown.clone()));
    }
    for f in tcp {
        tasks.spawn(f.run(shutdown.clone()));
    }
    tasks.spawn(control::serve(
        emu.clone(),
        listener,
        config.control.clone(),
        shutdown.clone(),
    ));
    tasks.close();
    shutdown.cancelled().await;
    tasks.wait().await;
    Ok(())
}

fn de_duration<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    let text = String::deserialize(d)?;
    parse_duration(&text).map_err(serde::de::Error::custom)
}

/// Durations are written as [`parse_duration`] reads them ("40ms").
fn ser_duration<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(&humantime::format_duration(*d))
}

fn ser_opt_duration<S: Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
    match d {
        Some(d) => ser_duration(d, s),
        None => s.serialize_none(),
    }
}

fn de_opt_duration<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
    de_duration(d).map(Some)
}

/// A number or a string, for fields that take either ("1%" or 0.01, "10mbit" or 10000000).
#[derive(Deserialize)]
#[serde(untagged)]
enum NumberOrText {
    Integer(u64),
    Float(f64),
    Text(String),
}

fn de_opt_loss<'de, D: Deserializer<'de>>(d: D) -> Result<Option<f64>, D::Error> {
    let loss = match NumberOrText::deserialize(d)? {
        NumberOrText::Integer(i) => parse_loss(&i.to_string()),
        NumberOrText::Float(f) => parse_loss(&f.to_string()),
        NumberOrText::Text(t) => parse_loss(&t),
    };
    loss.map(Some).map_err(serde::de::Error::custom)
}

fn de_opt_rate<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    let rate = match NumberOrText::deserialize(d)? {
        NumberOrText::Integer(i) => parse_rate(&i.to_string()),
        NumberOrText::Float(f) => Err(ParamError::Rate {
            value: f.to_string(),
            reason: "bits per second are a whole number, or use a unit: \"1.5mbit\"".into(),
        }),
        NumberOrText::Text(t) => parse_rate(&t),
    };
    rate.map(Some).map_err(serde::de::Error::custom)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<EmuConfig, EmuError> {
        EmuConfig::parse(text, Path::new("emu.toml"))
    }

    #[test]
    fn example_file_in_the_repo_parses() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("emu.example.toml");
        let config = EmuConfig::load(&path).expect("example parses");
        assert!(!config.links.is_empty() && !config.forwards.is_empty());
    }

    #[test]
    fn a_serialised_config_parses_back_the_same() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("emu.example.toml");
        let mut config = EmuConfig::load(&path).expect("example parses");
        config.links[0].jitter = Some(Duration::from_micros(1500));
        config.links[0].loss = Some(0.015);
        let text = toml::to_string(&config).expect("serialises");
        assert_eq!(parse(&text).expect("parses back"), config, "{text}");
    }

    #[test]
    fn link_params_apply_to_both_directions_with_per_direction_overrides() {
        let config = parse(
            r#"
            control = "/tmp/x.sock"
            [[link]]
            a = "s1"
            b = "s2"
            delay = "20ms"
            loss = "1%"
            rate = 500000
            [link.b_to_a]
            delay = "30ms"
            rate = "1gbit"
            partitioned = true
            "#,
        )
        .expect("parses");
        let (ab, ba) = config.links[0].params();
        assert_eq!(ab.delay, Duration::from_millis(20));
        assert_eq!(ab.loss, 0.01);
        assert_eq!(ab.rate_bps, Some(500_000));
        assert!(!ab.partitioned);
        assert_eq!(ba.delay, Duration::from_millis(30));
        assert_eq!(ba.loss, 0.01);
        assert_eq!(ba.rate_bps, Some(1_000_000_000));
        assert!(ba.partitioned);
        assert_eq!(config.seed, 0);
        assert_eq!(config.udp_flow_idle, FLOW_IDLE);
    }

    #[test]
    fn unknown_field_is_refused_naming_it_and_its_line() {
        let err =
            parse("control = \"/tmp/x.sock\"\n[[link]]\na = \"s1\"\nb = \"s2\"\ndelya = \"5ms\"\n")
                .expect_err("typo");
        let text = err.to_string();
        assert!(text.contains("delya") && text.contains("line 5"), "{text}");
    }

    #[test]
    fn bad_values_are_refused_naming_the_value_and_line() {
        let err =
            parse("control = \"/x\"\n[[link]]\na = \"s1\"\nb = \"s2\"\nrate = \"10 furlongs\"\n")
                .expect_err("bad rate");
        let text = err.to_string();
        assert!(
            text.contains("10 furlongs") && text.contains("line 5"),
            "{text}"
        );
        let err = parse("control = \"/x\"\n[[link]]\na = \"s1\"\nb = \"s2\"\nloss = 1.5\n")
            .expect_err("bad loss");
        assert!(err.to_string().contains("1.5"), "{err}");
    }

    #[test]
    fn forwarder_without_a_declared_link_is_refused_naming_it() {
        let err = parse(
            r#"
            control = "/x"
            [[link]]
            a = "s1"
            b = "s2"
            [[forward]]
            kind = "udp"
            listen = "127.0.0.1:0"
            target = "127.0.0.1:9"
            from = "s1"
            to = "w"
            "#,
        )
        .expect_err("no link");
        let text = err.to_string();
        assert!(
            text.contains("forward #1") && text.contains("s1 and w"),
            "{text}"
        );
    }

    #[test]
    fn duplicate_link_is_refused() {
        let err = parse(
            "control = \"/x\"\n[[link]]\na = \"s1\"\nb = \"s2\"\n[[link]]\na = \"s2\"\nb = \"s1\"\n",
        )
        .expect_err("duplicate");
        assert!(err.to_string().contains("link #2"), "{err}");
    }
}
