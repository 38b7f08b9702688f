//! Clocks the agent reads: the wall clock in unix milliseconds ([`unix_ms`]), used to stamp
//! proposals, log lines that drills compare across hosts, and "how long ago" in the CLI; and the
//! boot clock lease decisions are taken at ([`lease_now`], [`boottime`]).
//!
//! Owns: every wall-clock read of the fabric's own crates (the `fabric-demo` workload keeps its
//! own copy on purpose: it depends on nothing of the fabric), and every read of the lease clock.
//!
//! The lease clock is CLOCK_BOOTTIME, not CLOCK_MONOTONIC: the monotonic clock stops while the
//! host or VM is suspended, so a resumed agent or guard would still honour the time its lease had
//! left before the pause. The boot clock counts the suspend, and it is one clock for the whole
//! machine, so the agent can hand its guards absolute deadlines.
//!
//! Invariant: wall-clock time is for display and for stamping only; no lease or fencing decision
//! is ever taken on it (those use [`lease_now`] and durations).
//!
//! Does not: promise monotonicity of [`unix_ms`] — the wall clock may step backwards.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use failover::lease::LeaseInstant;
use nix::time::{ClockId, clock_gettime};

/// Milliseconds since the unix epoch; 0 for a clock set before 1970, `u64::MAX` past year 584
/// million.
pub fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// The monotonic instant the majority's side waits on (the leader's revocation clock, planner
/// and recovery timings): Tokio's clock, so tests under `tokio::time::pause()` move it. It stops
/// while the leader is suspended, which only makes the leader wait longer before reusing a slot:
/// the safe direction. Holder deadlines never use it (see [`lease_now`]).
pub fn majority_now() -> Instant {
    tokio::time::Instant::now().into_std()
}

/// Nanoseconds on `clock`, or `None` if it cannot be read (Linux always has both we use).
fn read_ns(clock: ClockId) -> Option<u64> {
    let t = clock_gettime(clock).ok()?;
    let secs = u64::try_from(t.tv_sec()).ok()?;
    let nanos = u64::try_from(t.tv_nsec()).ok()?;
    Some(secs.saturating_mul(1_000_000_000).saturating_add(nanos))
}

/// Should the clock ever be unreadable, the end of time: every lease reads as expired (fenced,
/// never extended).
const UNREADABLE: LeaseInstant = LeaseInstant::from_nanos(u64::MAX);

/// The machine's boot clock (CLOCK_BOOTTIME), as the guard reads it.
pub fn boottime() -> LeaseInstant {
    read_ns(ClockId::CLOCK_BOOTTIME).map_or(UNREADABLE, LeaseInstant::from_nanos)
}

/// How far the boot clock is ahead of the monotonic clock (the time spent suspended), kept
/// unless it moves by more than [`OFFSET_STEP`], so that lease instants follow Tokio's clock
/// exactly and a test can compare them for equality.
static SUSPENDED_NS: AtomicU64 = AtomicU64::new(0);

/// Suspends shorter than this are counted late, by at most this much; lease margins are hundreds
/// of milliseconds.
const OFFSET_STEP: Duration = Duration::from_millis(1);

/// One reading of the monotonic clock next to the `Instant` taken with it, so any `Instant`
/// (Tokio's, possibly paused) converts to monotonic nanoseconds with one fixed error.
fn anchor() -> &'static (Instant, u64) {
    static ANCHOR: OnceLock<(Instant, u64)> = OnceLock::new();
    ANCHOR.get_or_init(|| {
        let at = Instant::now();
        (at, read_ns(ClockId::CLOCK_MONOTONIC).unwrap_or(0))
    })
}

/// The instant the agent's lease decisions are taken at: Tokio's clock carried onto the boot
/// clock. In production Tokio's clock is the monotonic clock, so this is CLOCK_BOOTTIME (within
/// [`OFFSET_STEP`]) and counts a suspend as soon as the agent resumes; under
/// `tokio::time::pause()` it moves by exactly what the test advances, without sleeping, and stays
/// comparable with the deadlines guards read on the boot clock.
pub fn lease_now() -> LeaseInstant {
    let (Some(boot), Some(mono)) = (
        read_ns(ClockId::CLOCK_BOOTTIME),
        read_ns(ClockId::CLOCK_MONOTONIC),
    ) else {
        return UNREADABLE;
    };
    let suspended = boot.saturating_sub(mono);
    let kept = SUSPENDED_NS.load(Ordering::Relaxed);
    let step = u64::try_from(OFFSET_STEP.as_nanos()).unwrap_or(u64::MAX);
    let suspended = if suspended.abs_diff(kept) > step {
        SUSPENDED_NS.store(suspended, Ordering::Relaxed);
        suspended
    } else {
        kept
    };
    let (anchor_at, anchor_mono) = *anchor();
    let base = LeaseInstant::from_nanos(anchor_mono.saturating_add(suspended));
    let tokio_now = tokio::time::Instant::now().into_std();
    match tokio_now.checked_duration_since(anchor_at) {
        Some(after) => base + after,
        None => base - anchor_at.saturating_duration_since(tokio_now),
    }
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

    #[test]
    fn the_boot_clock_is_read_and_runs_at_least_as_far_as_the_monotonic_clock() {
        let (b0, m0) = (boottime(), Instant::now());
        let spin = Instant::now();
        while spin.elapsed() < std::time::Duration::from_millis(2) {}
        let (m1, b1) = (Instant::now(), boottime());
        assert!(b0 > LeaseInstant::from_nanos(0));
        assert!(b1.saturating_duration_since(b0) >= m1.duration_since(m0));
    }

    #[tokio::test(start_paused = true)]
    async fn paused_tokio_time_moves_the_lease_clock_by_what_the_test_advances() {
        let t0 = lease_now();
        tokio::time::advance(std::time::Duration::from_secs(30)).await;
        assert_eq!(lease_now(), t0 + std::time::Duration::from_secs(30));
    }

    #[test]
    fn the_lease_clock_reads_the_boot_clock_within_its_step() {
        let before = boottime();
        let now = lease_now();
        let after = boottime();
        assert!(now + OFFSET_STEP >= before, "{now:?} < {before:?}");
        assert!(now <= after + OFFSET_STEP, "{now:?} > {after:?}");
    }
}
