//! Waiting for a condition: [`poll_until`] looks at something every `interval` until it is
//! ready, fails, or the time limit passes — the one poll-until-deadline loop of the lab and the
//! runner.
//!
//! Invariant: the check runs at least once, and never starts after the time limit; a timeout
//! names what was awaited, how long, and the last reason it was not ready. Time is tokio's
//! clock, so tests run it with `tokio::time::pause()` and no real sleeps.
//!
//! It does not cancel anything: callers that must stop early race it against their shutdown.

use std::future::Future;
use std::time::Duration;

use tokio::time::Instant;

/// One look at what is awaited.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Check<T, E> {
    /// It is here.
    Ready(T),
    /// Not yet, and why; look again.
    NotYet(E),
    /// It will never be (e.g. the process exited); stop waiting.
    Failed(E),
}

impl<T, E> From<Result<T, E>> for Check<T, E> {
    /// `Ok` is ready, `Err` is not yet.
    fn from(r: Result<T, E>) -> Self {
        match r {
            Ok(v) => Check::Ready(v),
            Err(e) => Check::NotYet(e),
        }
    }
}

/// Why [`poll_until`] gave up.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PollError<E> {
    #[error("{what} not within {}: {last}", humantime::format_duration(*.limit))]
    Timeout {
        what: String,
        limit: Duration,
        /// The last reason it was not ready.
        last: E,
    },
    #[error("{what}: {reason}")]
    Failed { what: String, reason: E },
}

impl<E> PollError<E> {
    /// The last reason it was not ready, or why it failed.
    pub fn into_last(self) -> E {
        match self {
            PollError::Timeout { last, .. } => last,
            PollError::Failed { reason, .. } => reason,
        }
    }
}

/// Runs `check` now and then every `interval` until it is ready or failed, or until `limit`
/// has passed since the call (the last check starts before then).
pub async fn poll_until<T, E, F, Fut>(
    limit: Duration,
    interval: Duration,
    what: &str,
    mut check: F,
) -> Result<T, PollError<E>>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Check<T, E>>,
{
    let deadline = Instant::now() + limit;
    loop {
        match check().await {
            Check::Ready(v) => return Ok(v),
            Check::Failed(reason) => {
                return Err(PollError::Failed {
                    what: what.to_string(),
                    reason,
                });
            }
            Check::NotYet(last) => {
                if Instant::now() + interval > deadline {
                    return Err(PollError::Timeout {
                        what: what.to_string(),
                        limit,
                        last,
                    });
                }
            }
        }
        tokio::time::sleep(interval).await;
    }
}

#[cfg(test)]
mod tests {
    use std::cell::Cell;

    use super::*;

    const TICK: Duration = Duration::from_millis(100);

    #[tokio::test(start_paused = true)]
    async fn a_ready_value_is_returned_at_the_first_check_that_sees_it() {
        let calls = Cell::new(0);
        let start = Instant::now();
        let v = poll_until(Duration::from_secs(5), TICK, "three", || {
            calls.set(calls.get() + 1);
            let n = calls.get();
            async move {
                if n == 3 {
                    Check::Ready(n * 10)
                } else {
                    Check::NotYet(format!("only {n}"))
                }
            }
        })
        .await;
        assert_eq!(v, Ok(30));
        assert_eq!(start.elapsed(), TICK * 2, "two waits between three checks");
    }

    #[tokio::test(start_paused = true)]
    async fn a_timeout_names_what_and_the_last_reason() {
        let calls = Cell::new(0);
        let start = Instant::now();
        let err = poll_until::<(), _, _, _>(Duration::from_secs(1), TICK, "the leader", || {
            calls.set(calls.get() + 1);
            let n = calls.get();
            async move { Check::NotYet(format!("attempt {n}: no leader")) }
        })
        .await
        .expect_err("never ready");
        assert!(
            start.elapsed() <= Duration::from_secs(1),
            "no sleep past the limit"
        );
        assert_eq!(calls.get(), 11, "a check every 100 ms from 0 to 1 s");
        assert_eq!(
            err.to_string(),
            "the leader not within 1s: attempt 11: no leader"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_failed_check_stops_at_once() {
        let calls = Cell::new(0);
        let err = poll_until::<(), _, _, _>(Duration::from_secs(60), TICK, "node 2", || {
            calls.set(calls.get() + 1);
            async { Check::Failed("exited (status 1)".to_string()) }
        })
        .await
        .expect_err("failed");
        assert_eq!(calls.get(), 1);
        assert_eq!(err.to_string(), "node 2: exited (status 1)");
    }

    #[tokio::test(start_paused = true)]
    async fn a_zero_limit_still_checks_once() {
        let v = poll_until(Duration::ZERO, TICK, "now", || async {
            Check::<_, String>::Ready(1)
        })
        .await;
        assert_eq!(v, Ok(1));
    }
}
