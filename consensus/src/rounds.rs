//! Rounds shared by the callers that wait for them: the leader's read-index confirmations, and
//! a relay's batches of lease confirmations.
//!
//! A linearizable read needs a quorum round (the leader confirms it still leads) that *starts
//! after* the read arrived. Any such round serves every read that arrived before it started, so
//! readers that arrive together share one: with one lease confirmation per host per second,
//! the leader's quorum rounds stay bounded by `1 / gap` per second instead of growing with the
//! hosts.
//!
//! Invariant: a caller of [`SharedRounds::join`] gets the outcome of a round that started after
//! it called, and that round was given the caller's input. Rounds start at most once per `gap`;
//! the first caller after a quiet spell waits for none.
//!
//! Does not: know what a round does (the caller passes it), retry, or time out.

use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::watch;
use tokio::time::Instant;

/// A batcher of rounds: each caller brings an input (`I`), a round runs on the inputs of its
/// batch, and every caller of the batch receives the round's outcome (`T`).
pub struct SharedRounds<I, T> {
    gap: Duration,
    state: Mutex<State<I, T>>,
}

struct State<I, T> {
    /// The batch the next round answers: the inputs of the callers that arrived since the last
    /// round started, and where its outcome goes.
    next: Option<(watch::Sender<Option<T>>, Vec<I>)>,
    /// Whether a driver runs rounds (it stops when nobody waits).
    driving: bool,
    /// When the last round started.
    last_start: Option<Instant>,
    /// Rounds started so far.
    started: u64,
}

impl<I: Send + 'static, T: Clone + Send + Sync + 'static> SharedRounds<I, T> {
    /// Rounds start at most once per `gap`.
    pub fn new(gap: Duration) -> Arc<Self> {
        Arc::new(Self {
            gap,
            state: Mutex::new(State {
                next: None,
                driving: false,
                last_start: None,
                started: 0,
            }),
        })
    }

    /// Waits for a round that starts after this call and includes `input`, and returns its
    /// outcome. `round` runs a round on a batch's inputs; it is used only when no driver is
    /// running. `None` when the driver went away without an answer (the runtime shuts down).
    pub async fn join<F, Fut>(self: &Arc<Self>, input: I, round: F) -> Option<T>
    where
        F: Fn(Vec<I>) -> Fut + Send + 'static,
        Fut: Future<Output = T> + Send + 'static,
    {
        let mut rx = {
            let mut state = self.lock();
            let (tx, inputs) = state
                .next
                .get_or_insert_with(|| (watch::channel(None).0, Vec::new()));
            inputs.push(input);
            let rx = tx.subscribe();
            if !state.driving {
                state.driving = true;
                tokio::spawn(self.clone().drive(round));
            }
            rx
        };
        let outcome = rx.wait_for(Option::is_some).await.ok()?;
        outcome.clone()
    }

    /// How many rounds have started.
    pub fn started(&self) -> u64 {
        self.lock().started
    }

    /// Runs rounds, one per gap at most, until a round starts with nobody waiting for the next.
    async fn drive<F, Fut>(self: Arc<Self>, round: F)
    where
        F: Fn(Vec<I>) -> Fut + Send + 'static,
        Fut: Future<Output = T> + Send + 'static,
    {
        loop {
            let due = self.lock().last_start.map(|t| t + self.gap);
            if let Some(due) = due {
                // Callers arriving meanwhile join the batch that is still open.
                tokio::time::sleep_until(due).await;
            }
            let batch = {
                let mut state = self.lock();
                match state.next.take() {
                    Some(batch) => {
                        state.last_start = Some(Instant::now());
                        state.started += 1;
                        batch
                    }
                    None => {
                        state.driving = false;
                        return;
                    }
                }
            };
            let (tx, inputs) = batch;
            let outcome = round(inputs).await;
            // Every receiver may have given up (a caller's timeout): nothing to tell then.
            let _ = tx.send(Some(outcome));
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State<I, T>> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU64, Ordering};

    use super::*;

    const GAP: Duration = Duration::from_millis(25);

    type TimedRound = std::pin::Pin<Box<dyn Future<Output = (u64, u64)> + Send>>;

    /// A round that takes 2 ms and answers with the time it started (ms since `t0`) and its
    /// sequence number.
    fn timed_round(
        t0: Instant,
        count: Arc<AtomicU64>,
    ) -> impl Fn(Vec<()>) -> TimedRound + Send + 'static {
        move |_| {
            let count = count.clone();
            Box::pin(async move {
                let started = u64::try_from(t0.elapsed().as_millis()).unwrap_or(u64::MAX);
                let n = count.fetch_add(1, Ordering::SeqCst) + 1;
                tokio::time::sleep(Duration::from_millis(2)).await;
                (started, n)
            })
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_lone_caller_waits_for_no_gap() {
        let rounds = SharedRounds::new(GAP);
        let count = Arc::new(AtomicU64::new(0));
        let t0 = Instant::now();
        let (started, n) = rounds
            .join((), timed_round(t0, count.clone()))
            .await
            .expect("an answer");
        assert_eq!((started, n), (0, 1));
        // After a quiet spell longer than the gap, again no wait.
        tokio::time::sleep(GAP * 2).await;
        let (started, n) = rounds
            .join((), timed_round(t0, count.clone()))
            .await
            .expect("an answer");
        assert_eq!(n, 2);
        assert_eq!(
            u128::from(started),
            (GAP * 2 + Duration::from_millis(2)).as_millis()
        );
    }

    #[tokio::test(start_paused = true)]
    async fn callers_arriving_together_share_one_round() {
        let rounds = SharedRounds::new(GAP);
        let count = Arc::new(AtomicU64::new(0));
        let t0 = Instant::now();
        let joins: Vec<_> = (0..50)
            .map(|_| {
                let (rounds, round) = (rounds.clone(), timed_round(t0, count.clone()));
                tokio::spawn(async move { rounds.join((), round).await })
            })
            .collect();
        for j in joins {
            assert_eq!(j.await.expect("joined"), Some((0, 1)));
        }
        assert_eq!(count.load(Ordering::SeqCst), 1);
        assert_eq!(rounds.started(), 1);
    }

    /// The linearizability rule: a caller that arrives while a round runs gets the next round,
    /// never the running one, and rounds start at most once per gap.
    #[tokio::test(start_paused = true)]
    async fn a_caller_arriving_during_a_round_gets_a_later_round() {
        let rounds = SharedRounds::new(GAP);
        let count = Arc::new(AtomicU64::new(0));
        let t0 = Instant::now();
        let mut joins = Vec::new();
        // One caller every 1 ms for 100 ms.
        for i in 0..100u64 {
            let (r, round) = (rounds.clone(), timed_round(t0, count.clone()));
            let arrived = u64::try_from(t0.elapsed().as_millis()).expect("ms");
            assert_eq!(arrived, i);
            joins.push((
                arrived,
                tokio::spawn(async move { r.join((), round).await }),
            ));
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        let mut starts = Vec::new();
        for (arrived, j) in joins {
            let (started, n) = j.await.expect("joined").expect("an answer");
            assert!(
                started >= arrived,
                "a caller that arrived at {arrived} ms got round {n}, started at {started} ms"
            );
            starts.push(started);
        }
        starts.dedup();
        // 100 callers over 100 ms, rounds spaced by 25 ms: 0, 25, 50, 75 and one at 100.
        assert_eq!(starts, vec![0, 25, 50, 75, 100]);
        assert_eq!(count.load(Ordering::SeqCst), 5);
    }

    /// Each round is given exactly the inputs of the callers it answers.
    #[tokio::test(start_paused = true)]
    async fn a_round_is_given_the_inputs_of_its_batch() {
        let rounds: Arc<SharedRounds<u64, Vec<u64>>> = SharedRounds::new(GAP);
        let round = |mut inputs: Vec<u64>| async move {
            tokio::time::sleep(Duration::from_millis(2)).await;
            inputs.sort_unstable();
            inputs
        };
        let mut joins = Vec::new();
        for i in 0..30u64 {
            let r = rounds.clone();
            joins.push((i, tokio::spawn(async move { r.join(i, round).await })));
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        let mut seen = Vec::new();
        for (i, j) in joins {
            let batch = j.await.expect("joined").expect("an answer");
            assert!(
                batch.contains(&i),
                "caller {i} got a batch without it: {batch:?}"
            );
            seen.push(batch);
        }
        seen.dedup();
        // Caller 0 alone at 0 ms; 1..=25 by the round at 25 ms; the rest at 50 ms.
        assert_eq!(seen.len(), 3, "{seen:?}");
        assert_eq!(seen.concat(), (0..30).collect::<Vec<_>>());
    }

    #[tokio::test(start_paused = true)]
    async fn a_caller_that_gives_up_does_not_stop_the_others() {
        let rounds = SharedRounds::new(GAP);
        let count = Arc::new(AtomicU64::new(0));
        let t0 = Instant::now();
        // A first round, so the next must wait out the gap.
        rounds
            .join((), timed_round(t0, count.clone()))
            .await
            .expect("an answer");
        let impatient = tokio::time::timeout(
            Duration::from_millis(5),
            rounds.join((), timed_round(t0, count.clone())),
        );
        let patient = rounds.join((), timed_round(t0, count.clone()));
        let (gave_up, answered) = tokio::join!(impatient, patient);
        assert!(gave_up.is_err());
        assert_eq!(answered, Some((25, 2)));
    }
}
