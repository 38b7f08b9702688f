//! Clocks the agent reads: today only the wall clock in unix milliseconds, used to stamp
//! proposals, log lines that drills compare across hosts, and "how long ago" in the CLI.
//!
//! Owns: every wall-clock read of the fabric's own crates (the `fabric-demo` workload keeps its
//! own copy on purpose: it depends on nothing of the fabric). The lease clock that keeps
//! counting through suspend (CLOCK_BOOTTIME) will live here too.
//!
//! Invariant: wall-clock time is for display and for stamping only; no lease or fencing decision
//! is ever taken on it (those use monotonic durations).
//!
//! Does not: promise monotonicity — the wall clock may step backwards.

use std::time::{SystemTime, UNIX_EPOCH};

/// Milliseconds since the unix epoch; 0 for a clock set before 1970, `u64::MAX` past year 584
/// million.
pub fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
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
