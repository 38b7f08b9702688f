//! What one direction of an emulated link does to traffic ([`LinkParams`]), and the small
//! parsers that turn operator text ("40ms", "100mbit", "1%") into it.
//!
//! Invariant: a [`LinkParams`] that passed [`LinkParams::validate`] has a loss ratio in `0..=1`
//! and no zero rate; the link code relies on that.
//!
//! It does not apply the parameters (that is [`crate::link`]) and knows nothing of sites.

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// The impairments of one direction of a link. `Default` is a perfect wire.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct LinkParams {
    /// One-way propagation delay added to every packet or chunk.
    pub delay: Duration,
    /// Uniform jitter: each packet's delay is drawn from `delay ± jitter` (never below zero).
    pub jitter: Duration,
    /// Probability that a datagram is dropped, `0.0..=1.0`.
    pub loss: f64,
    /// Bandwidth cap in bits per second; `None` is unlimited.
    pub rate_bps: Option<u64>,
    /// Nothing passes while set.
    pub partitioned: bool,
}

/// A parameter that could not be parsed or is out of range; names the offending value.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum ParamError {
    #[error("invalid duration {value:?}: {reason}")]
    Duration { value: String, reason: String },
    #[error("invalid rate {value:?}: {reason}")]
    Rate { value: String, reason: String },
    #[error("invalid loss {value:?}: {reason}")]
    Loss { value: String, reason: String },
}

impl LinkParams {
    /// Checks the ranges the link code relies on.
    pub fn validate(&self) -> Result<(), ParamError> {
        check_loss(self.loss, &self.loss.to_string())?;
        if self.rate_bps == Some(0) {
            return Err(ParamError::Rate {
                value: "0".into(),
                reason: "a rate must be above zero (leave it out for unlimited)".into(),
            });
        }
        Ok(())
    }

    /// The wire/status form, with durations in (fractional) milliseconds.
    pub fn to_spec(&self) -> ParamsSpec {
        ParamsSpec {
            delay_ms: self.delay.as_secs_f64() * 1e3,
            jitter_ms: self.jitter.as_secs_f64() * 1e3,
            loss: self.loss,
            rate_bps: self.rate_bps,
            partitioned: Some(self.partitioned),
        }
    }
}

/// Link parameters as the control protocol carries them. Absent fields mean "no impairment",
/// except `partitioned`: absent keeps the link's current partition state (see
/// [`ParamsSpec::to_params`]).
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ParamsSpec {
    /// One-way delay in milliseconds.
    pub delay_ms: f64,
    /// Jitter (±) in milliseconds.
    pub jitter_ms: f64,
    /// Loss ratio, `0.0..=1.0`.
    pub loss: f64,
    /// Bandwidth cap in bits per second; absent or null is unlimited.
    pub rate_bps: Option<u64>,
    /// Partition state; absent keeps the current one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub partitioned: Option<bool>,
}

impl ParamsSpec {
    /// Converts to [`LinkParams`], taking the partition state from `current_partitioned` when
    /// the spec does not say.
    pub fn to_params(&self, current_partitioned: bool) -> Result<LinkParams, ParamError> {
        let params = LinkParams {
            delay: millis(self.delay_ms)?,
            jitter: millis(self.jitter_ms)?,
            loss: self.loss,
            rate_bps: self.rate_bps,
            partitioned: self.partitioned.unwrap_or(current_partitioned),
        };
        params.validate()?;
        Ok(params)
    }
}

fn millis(ms: f64) -> Result<Duration, ParamError> {
    Duration::try_from_secs_f64(ms / 1e3).map_err(|e| ParamError::Duration {
        value: format!("{ms}ms"),
        reason: e.to_string(),
    })
}

/// Parses a humantime duration ("40ms", "1s 500ms"); a bare "0" is zero.
pub fn parse_duration(text: &str) -> Result<Duration, ParamError> {
    let t = text.trim();
    if t == "0" {
        return Ok(Duration::ZERO);
    }
    humantime::parse_duration(t).map_err(|e| ParamError::Duration {
        value: text.to_string(),
        reason: e.to_string(),
    })
}

/// Parses a rate in bits per second: a plain integer ("100000000") or a number with a decimal
/// (SI, 1000-based) unit: "500kbit", "10mbit", "1.5gbit", "64bit". Zero is refused: leave the
/// rate out for an unlimited link.
pub fn parse_rate(text: &str) -> Result<u64, ParamError> {
    let err = |reason: &str| ParamError::Rate {
        value: text.to_string(),
        reason: reason.to_string(),
    };
    let t = text.trim().to_ascii_lowercase();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (number, unit) = t.split_at(split);
    let multiplier: f64 = match unit.trim() {
        "" | "bit" => 1.0,
        "kbit" => 1e3,
        "mbit" => 1e6,
        "gbit" => 1e9,
        _ => {
            return Err(err(
                "unit must be one of bit, kbit, mbit, gbit (or none for bit/s)",
            ));
        }
    };
    let value: f64 = number
        .parse()
        .map_err(|_| err("expected a number, e.g. 100mbit"))?;
    let bps = (value * multiplier).round();
    if !bps.is_finite() || bps > u64::MAX as f64 {
        return Err(err("too large"));
    }
    if bps < 1.0 {
        return Err(err(
            "a rate must be at least 1 bit/s (leave it out for unlimited)",
        ));
    }
    Ok(bps as u64)
}

/// Parses a loss ratio: a percentage ("1%", "0.5%") or a ratio ("0.01"), within 0..=1.
pub fn parse_loss(text: &str) -> Result<f64, ParamError> {
    let t = text.trim();
    let (number, scale) = match t.strip_suffix('%') {
        Some(n) => (n.trim(), 100.0),
        None => (t, 1.0),
    };
    let value: f64 = number.parse().map_err(|_| ParamError::Loss {
        value: text.to_string(),
        reason: "expected a ratio (0.01) or a percentage (1%)".into(),
    })?;
    let ratio = value / scale;
    check_loss(ratio, text)?;
    Ok(ratio)
}

fn check_loss(ratio: f64, text: &str) -> Result<(), ParamError> {
    if (0.0..=1.0).contains(&ratio) {
        Ok(())
    } else {
        Err(ParamError::Loss {
            value: text.to_string(),
            reason: "must be between 0 and 1 (0% and 100%)".into(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_accept_units_and_plain_bits_per_second() {
        assert_eq!(parse_rate("100mbit"), Ok(100_000_000));
        assert_eq!(parse_rate("10mbit"), Ok(10_000_000));
        assert_eq!(parse_rate("1gbit"), Ok(1_000_000_000));
        assert_eq!(parse_rate("500kbit"), Ok(500_000));
        assert_eq!(parse_rate("1.5Mbit"), Ok(1_500_000));
        assert_eq!(parse_rate("64bit"), Ok(64));
        assert_eq!(parse_rate("123456"), Ok(123_456));
    }

    #[test]
    fn bad_rates_are_refused_naming_the_value() {
        for bad in [
            "",
            "fast",
            "10 furlongs",
            "10mbps",
            "0",
            "0kbit",
            "-5mbit",
            "1e999gbit",
        ] {
            let err = parse_rate(bad).expect_err(bad);
            assert!(
                err.to_string().contains(&format!("{bad:?}")),
                "{bad}: {err}"
            );
        }
    }

    #[test]
    fn loss_accepts_percentages_and_ratios() {
        assert_eq!(parse_loss("1%"), Ok(0.01));
        assert_eq!(parse_loss("50 %"), Ok(0.5));
        assert_eq!(parse_loss("0.01"), Ok(0.01));
        assert_eq!(parse_loss("0"), Ok(0.0));
        assert_eq!(parse_loss("100%"), Ok(1.0));
    }

    #[test]
    fn bad_loss_is_refused_naming_the_value() {
        for bad in ["", "lots", "101%", "1.5", "-0.1", "NaN"] {
            let err = parse_loss(bad).expect_err(bad);
            assert!(
                err.to_string().contains(&format!("{bad:?}")),
                "{bad}: {err}"
            );
        }
    }

    #[test]
    fn durations_are_humantime_and_bad_ones_name_the_value() {
        assert_eq!(parse_duration("40ms"), Ok(Duration::from_millis(40)));
        assert_eq!(parse_duration("1s 500ms"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration("0"), Ok(Duration::ZERO));
        let err = parse_duration("40 parsecs").expect_err("bad");
        assert!(err.to_string().contains("\"40 parsecs\""), "{err}");
    }

    #[test]
    fn spec_keeps_partition_unless_it_says_otherwise() {
        let spec = ParamsSpec {
            delay_ms: 40.0,
            ..ParamsSpec::default()
        };
        let kept = spec.to_params(true).expect("valid");
        assert!(kept.partitioned);
        assert_eq!(kept.delay, Duration::from_millis(40));
        let cleared = ParamsSpec {
            partitioned: Some(false),
            ..spec
        }
        .to_params(true)
        .expect("valid");
        assert!(!cleared.partitioned);
    }

    #[test]
    fn spec_with_out_of_range_values_is_refused() {
        let bad_loss = ParamsSpec {
            loss: 2.0,
            ..ParamsSpec::default()
        };
        assert!(matches!(
            bad_loss.to_params(false),
            Err(ParamError::Loss { .. })
        ));
        let negative = ParamsSpec {
            delay_ms: -1.0,
            ..ParamsSpec::default()
        };
        assert!(matches!(
            negative.to_params(false),
            Err(ParamError::Duration { .. })
        ));
        let zero_rate = ParamsSpec {
            rate_bps: Some(0),
            ..ParamsSpec::default()
        };
        assert!(matches!(
            zero_rate.to_params(false),
            Err(ParamError::Rate { .. })
        ));
    }
}
