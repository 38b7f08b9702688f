//! Clocks the agent reads: the wall clock in unix milliseconds ([`unix_ms`]), used to stamp
//! proposals, log lines that drills compare across hosts, and "how long ago" in the CLI; and the
//! monotonic instant lease decisions are taken at ([`lease_now`]).
//!
//! Owns: every wall-clock read of the fabric's own crates (the `fabric-demo` workload keeps its
//! own copy on purpose: it depends on nothing of the fabric), and the lease clock. The lease
//! clock that keeps counting through suspend (CLOCK_BOOTTIME) will replace [`lease_now`] here.
//!
//! Invariant: wall-clock time is for display and for stamping only; no lease or fencing decision
//! is ever taken on it (those use [`lease_now`] and durations).
//!
//! Does not: promise monotonicity of [`unix_ms`] — the wall clock may step backwards.

use std::time::{Instant, SystemTime, UNIX_EPOCH};

/// Milliseconds since the unix epoch; 0 for a clock set before 1970, `u64::MAX` past year 584
/// million.
pub fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// The instant lease deadlines are measured against: Tokio's clock (the same as `Instant::now()`
/// in production), so tests under `tokio::time::pause()` move it without sleeping.
pub fn lease_now() -> Instant {
    tokio::time::Instant::now().into_std()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unix_ms_is_after_2025_and_follows_the_system_clock() {
        let before = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis())
            .unwrap_or(0);
        let now = u128::from(unix_ms());
        assert!(now >= before, "{now} < {before}");
        assert!(now > 1_735_689_600_000, "{now} is before 2025");
    }
}
