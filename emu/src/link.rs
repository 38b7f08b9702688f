//! The decision core of the emulator: one direction of a link decides, for each datagram or
//! stream chunk offered at time `now`, whether it is dropped or when it is delivered.
//!
//! Invariant: ordered admissions ([`DirectionState::admit_ordered`]) never get a delivery time
//! earlier than a previous ordered admission, so a stream is never reordered; the serializer
//! (rate limiter) is never free before the previous packet finished serializing. The random
//! draws come from a seeded generator, so a run with the same inputs gives the same fates.
//!
//! It does no I/O and reads no clock: time is an argument. It does not hold packets either —
//! the caller sleeps until the returned instant and sends.

use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};

use crate::params::LinkParams;

/// The most serialization backlog a rate-limited datagram direction queues before it drops
/// (tail drop), like a router buffer. Streams are not dropped; their shell applies backpressure.
pub const QUEUE_LIMIT: Duration = Duration::from_millis(250);

/// The smallest extra delay a lost TCP segment costs: Linux's minimum retransmission timeout.
pub const MIN_RTO: Duration = Duration::from_millis(200);

/// How far behind `now` the serializer may have gone idle and still count as busy: the burst a
/// rate-limited direction allows (its token bucket depth is `rate × BURST`). Without it, a
/// shell that wakes a millisecond late to send the next chunk would lose that millisecond of
/// bandwidth every time.
pub const BURST: Duration = Duration::from_millis(5);

/// A TCP segment's payload on a typical path, used to turn a chunk into segments for loss.
const SEGMENT: usize = 1448;

/// What happens to one offered datagram or chunk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fate {
    /// Lost (loss, partition, full queue): never delivered.
    Drop,
    /// Delivered at this instant.
    Deliver(Instant),
}

/// Counters of one direction, for status.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct DirectionStats {
    /// Datagrams or chunks given a delivery time.
    pub delivered: u64,
    /// Bytes given a delivery time.
    pub bytes: u64,
    /// Dropped by random loss.
    pub dropped_loss: u64,
    /// Dropped (or, for streams, held) because of a partition.
    pub dropped_partition: u64,
    /// Dropped because the rate limiter's queue was full.
    pub dropped_queue: u64,
}

/// One direction of a link: its parameters, its serializer and its random source.
#[derive(Debug)]
pub struct DirectionState {
    params: LinkParams,
    rng: StdRng,
    /// When the serializer finishes the last admitted bytes.
    busy_until: Option<Instant>,
    /// The latest delivery time handed to an ordered admission.
    last_ordered: Option<Instant>,
    stats: DirectionStats,
}

impl DirectionState {
    /// A direction with `params` whose random draws are determined by `seed`.
    pub fn new(params: LinkParams, seed: u64) -> Self {
        Self {
            params,
            rng: StdRng::seed_from_u64(seed),
            busy_until: None,
            last_ordered: None,
            stats: DirectionStats::default(),
        }
    }

    pub fn params(&self) -> &LinkParams {
        &self.params
    }

    /// Replaces the parameters; packets admitted from now on see the new ones. Packets already
    /// given a delivery time keep it.
    pub fn set_params(&mut self, params: LinkParams) {
        self.params = params;
    }

    pub fn stats(&self) -> DirectionStats {
        self.stats
    }

    /// Decides the fate of a datagram of `len` bytes offered at `now`: dropped on partition,
    /// by loss, or when the rate limiter's queue is over [`QUEUE_LIMIT`]; otherwise delivered
    /// after serialization plus `delay ± jitter`. Jitter may reorder datagrams, as on a real
    /// path.
    pub fn admit(&mut self, len: usize, now: Instant) -> Fate {
        if self.params.partitioned {
            self.stats.dropped_partition += 1;
            return Fate::Drop;
        }
        if self.params.loss > 0.0 && self.rng.random_bool(self.params.loss) {
            self.stats.dropped_loss += 1;
            return Fate::Drop;
        }
        let start = self.serializer_start(now);
        if start.saturating_duration_since(now) > QUEUE_LIMIT {
            self.stats.dropped_queue += 1;
            return Fate::Drop;
        }
        let sent = self.serialize(start, len);
        let at = sent + self.propagation();
        self.count(len);
        Fate::Deliver(at)
    }

    /// Decides when a stream chunk of `len` bytes offered at `now` is delivered: never earlier
    /// than the previous ordered chunk, so jitter does not reorder a stream. Loss does not drop bytes (TCP retransmits them); it is modelled as an extra
    /// retransmission delay of `max(MIN_RTO, 2 × delay)` with the probability that at least one
    /// of the chunk's segments is lost. During a partition the answer is `Drop`: the caller
    /// holds the chunk and offers it again after the heal.
    pub fn admit_ordered(&mut self, len: usize, now: Instant) -> Fate {
        if self.params.partitioned {
            self.stats.dropped_partition += 1;
            return Fate::Drop;
        }
        let start = self.serializer_start(now);
        let sent = self.serialize(start, len);
        let mut at = sent + self.propagation();
        if self.params.loss > 0.0 {
            let segments = len.div_ceil(SEGMENT).max(1);
            let exponent = i32::try_from(segments).unwrap_or(i32::MAX);
            let any_lost = 1.0 - (1.0 - self.params.loss).powi(exponent);
            if self.rng.random_bool(any_lost.clamp(0.0, 1.0)) {
                at += MIN_RTO.max(self.params.delay * 2);
            }
        }
        if let Some(last) = self.last_ordered {
            at = at.max(last);
        }
        debug_assert!(self.last_ordered.is_none_or(|last| at >= last));
        self.last_ordered = Some(at);
        self.count(len);
        Fate::Deliver(at)
    }

    /// When the serializer can take the next bytes offered at `now`: `now` itself on an
    /// unlimited or idle direction. A stream shell waits until then before reading more, so
    /// its in-flight data stays near the bandwidth-delay product.
    pub fn free_at(&self, now: Instant) -> Instant {
        self.serializer_start(now).max(now)
    }

    fn serializer_start(&self, now: Instant) -> Instant {
        match self.busy_until {
            Some(busy) if busy + BURST > now => busy,
            _ => now,
        }
    }

    /// Occupies the serializer for `len` bytes from `start`; returns when the last bit is out.
    fn serialize(&mut self, start: Instant, len: usize) -> Instant {
        let Some(rate) = self.params.rate_bps else {
            return start;
        };
        let bits = (len as u128) * 8;
        let nanos = bits * 1_000_000_000 / u128::from(rate.max(1));
        let took = Duration::from_nanos(u64::try_from(nanos).unwrap_or(u64::MAX));
        let done = start + took;
        self.busy_until = Some(done);
        done
    }

    /// `delay ± jitter`, uniform, never below zero.
    fn propagation(&mut self) -> Duration {
        let LinkParams { delay, jitter, .. } = self.params;
        if jitter.is_zero() {
            return delay;
        }
        let j = jitter.as_nanos() as i128;
        let offset = self.rng.random_range(-j..=j);
        let nanos = (delay.as_nanos() as i128 + offset).max(0);
        Duration::from_nanos(u64::try_from(nanos).unwrap_or(u64::MAX))
    }

    fn count(&mut self, len: usize) {
        self.stats.delivered += 1;
        self.stats.bytes += len as u64;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn delivered(fate: Fate) -> Instant {
        match fate {
            Fate::Deliver(at) => at,
            Fate::Drop => panic!("dropped"),
        }
    }

    #[test]
    fn perfect_wire_delivers_at_once() {
        let mut d = DirectionState::new(LinkParams::default(), 1);
        let now = Instant::now();
        assert_eq!(d.admit(1500, now), Fate::Deliver(now));
        assert_eq!(d.admit_ordered(1500, now), Fate::Deliver(now));
    }

    #[test]
    fn delay_is_added_to_every_packet() {
        let params = LinkParams {
            delay: ms(25),
            ..LinkParams::default()
        };
        let mut d = DirectionState::new(params, 1);
        let t0 = Instant::now();
        for i in 0..10 {
            let now = t0 + ms(i);
            assert_eq!(d.admit(100, now), Fate::Deliver(now + ms(25)));
        }
    }

    #[test]
    fn jitter_stays_within_bounds_and_varies() {
        let params = LinkParams {
            delay: ms(20),
            jitter: ms(5),
            ..LinkParams::default()
        };
        let mut d = DirectionState::new(params, 7);
        let now = Instant::now();
        let delays: Vec<Duration> = (0..1000)
            .map(|_| delivered(d.admit(100, now)) - now)
            .collect();
        assert!(delays.iter().all(|&x| x >= ms(15) && x <= ms(25)));
        let min = delays.iter().min().copied().unwrap_or_default();
        let max = delays.iter().max().copied().unwrap_or_default();
        assert!(min < ms(16) && max > ms(24), "spread {min:?}..{max:?}");
    }

    #[test]
    fn jitter_larger_than_delay_never_goes_negative() {
        let params = LinkParams {
            delay: ms(1),
            jitter: ms(10),
            ..LinkParams::default()
        };
        let mut d = DirectionState::new(params, 3);
        let now = Instant::now();
        for _ in 0..200 {
            assert!(delivered(d.admit(10, now)) >= now);
        }
    }

    #[test]
    fn loss_ratio_is_near_the_configured_one() {
        let params = LinkParams {
            loss: 0.1,
            ..LinkParams::default()
        };
        let mut d = DirectionState::new(params, 42);
        let now = Instant::now();
        let n = 20_000;
        let dropped = (0..n).filter(|_| d.admit(100, now) == Fate::Drop).count();
        let ratio = dropped as f64 / n as f64;
        assert!((0.09..=0.11).contains(&ratio), "ratio {ratio}");
        assert_eq!(d.stats().dropped_loss, dropped as u64);
    }

    #[test]
    fn same_seed_gives_the_same_fates() {
        let params = LinkParams {
            loss: 0.3,
            delay: ms(10),
            jitter: ms(3),
            ..LinkParams::default()
        };
        let now = Instant::now();
        let run = |seed| {
            let mut d = DirectionState::new(params, seed);
            (0..500).map(|_| d.admit(100, now)).collect::<Vec<_>>()
        };
        assert_eq!(run(9), run(9));
        assert_ne!(run(9), run(10));
    }

    #[test]
    fn rate_spreads_bytes_over_their_serialization_time() {
        // 1 MB at 8 Mbit/s takes one second.
        let params = LinkParams {
            rate_bps: Some(8_000_000),
            ..LinkParams::default()
        };
        let mut d = DirectionState::new(params, 1);
        let t0 = Instant::now();
        let mut last = t0;
        for _ in 0..1000 {
            last = delivered(d.admit_ordered(1000, t0));
        }
        assert_eq!(last - t0, Duration::from_secs(1));
        assert_eq!(d.free_at(t0), last);
    }

    #[test]
    fn a_slightly_late_sender_keeps_the_full_rate() {
        // 1000 B at 8 Mbit/s is 1 ms each; the sender always comes back 0.5 ms late.
        let params = LinkParams {
            rate_bps: Some(8_000_000),
            ..LinkParams::default()
        };
        let mut d = DirectionState::new(params, 1);
        let t0 = Instant::now();
        let mut now = t0;
        let mut last = t0;
        for _ in 0..1000 {
            last = delivered(d.admit_ordered(1000, now));
            now = d.free_at(now) + Duration::from_micros(500);
        }
        assert_eq!(last - t0, Duration::from_secs(1));
    }

    #[test]
    fn rate_limited_datagrams_beyond_the_queue_are_dropped() {
        // 1000 B at 1 Mbit/s is 8 ms each: the 250 ms queue holds about 32 of them.
        let params = LinkParams {
            rate_bps: Some(1_000_000),
            ..LinkParams::default()
        };
        let mut d = DirectionState::new(params, 1);
        let t0 = Instant::now();
        let fates: Vec<Fate> = (0..100).map(|_| d.admit(1000, t0)).collect();
        let kept = fates.iter().filter(|f| **f != Fate::Drop).count();
        assert!((30..=34).contains(&kept), "kept {kept}");
        assert_eq!(d.stats().dropped_queue, 100 - kept as u64);
        // Once the queue drains, traffic passes again.
        assert_ne!(d.admit(1000, t0 + Duration::from_secs(1)), Fate::Drop);
    }

    #[test]
    fn an_idle_serializer_does_not_bank_credit() {
        let params = LinkParams {
            rate_bps: Some(8_000),
            ..LinkParams::default()
        };
        let mut d = DirectionState::new(params, 1);
        let t0 = Instant::now();
        assert_eq!(
            d.admit(1000, t0),
            Fate::Deliver(t0 + Duration::from_secs(1))
        );
        let later = t0 + Duration::from_secs(10);
        assert_eq!(
            d.admit(1000, later),
            Fate::Deliver(later + Duration::from_secs(1))
        );
    }

    #[test]
    fn partition_drops_everything_until_healed() {
        let params = LinkParams {
            partitioned: true,
            ..LinkParams::default()
        };
        let mut d = DirectionState::new(params, 1);
        let now = Instant::now();
        assert!((0..100).all(|_| d.admit(10, now) == Fate::Drop));
        assert_eq!(d.admit_ordered(10, now), Fate::Drop);
        assert_eq!(d.stats().dropped_partition, 101);
        d.set_params(LinkParams::default());
        assert_eq!(d.admit(10, now), Fate::Deliver(now));
    }

    #[test]
    fn changed_params_apply_to_later_packets_only() {
        let mut d = DirectionState::new(
            LinkParams {
                delay: ms(10),
                ..LinkParams::default()
            },
            1,
        );
        let t0 = Instant::now();
        let first = d.admit(10, t0);
        d.set_params(LinkParams {
            delay: ms(50),
            ..LinkParams::default()
        });
        let second = d.admit(10, t0 + ms(1));
        assert_eq!(first, Fate::Deliver(t0 + ms(10)));
        assert_eq!(second, Fate::Deliver(t0 + ms(51)));
    }

    #[test]
    fn ordered_chunks_are_never_reordered_by_jitter_or_a_shorter_delay() {
        let mut d = DirectionState::new(
            LinkParams {
                delay: ms(30),
                jitter: ms(20),
                ..LinkParams::default()
            },
            5,
        );
        let t0 = Instant::now();
        let mut last = t0;
        for i in 0..500 {
            let at = delivered(d.admit_ordered(100, t0 + Duration::from_micros(i * 100)));
            assert!(at >= last);
            last = at;
        }
        // Lowering the delay mid-stream does not let later bytes overtake earlier ones.
        d.set_params(LinkParams::default());
        assert!(delivered(d.admit_ordered(100, t0 + ms(50))) >= last);
    }

    #[test]
    fn stream_loss_costs_a_retransmission_delay_not_bytes() {
        let mut d = DirectionState::new(
            LinkParams {
                delay: ms(10),
                loss: 1.0,
                ..LinkParams::default()
            },
            1,
        );
        let t0 = Instant::now();
        assert_eq!(
            d.admit_ordered(100, t0),
            Fate::Deliver(t0 + ms(10) + MIN_RTO)
        );
        assert_eq!(d.stats().bytes, 100);
    }
}
