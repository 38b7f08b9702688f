//! Ownership leases: the holder's side ([`LeaseHolder`]) and the majority's side
//! ([`RevocationClock`]), on monotonic time only.
//!
//! The holder's deadlines are [`LeaseInstant`]s: points on the machine's boot clock
//! (CLOCK_BOOTTIME), which keeps counting while the host or VM is suspended, so a holder that was
//! paused past its deadline sees the lease expired the moment it resumes. This module never reads
//! a clock; the agent reads the boot clock (`siteagent::clock`) and passes `now` in.
//!
//! The holder re-confirms its lease with a linearizable read through the Raft leader (which
//! itself checks a quorum). A confirmation that was *sent* at `t` keeps the lease valid until
//! `t + lease − margin`, measured on the holder's own clock, and only if the state it read still
//! names it. Anything that stops confirmations — a lost majority, a frozen agent, a crash —
//! lets the lease run out by itself.
//!
//! The majority may give a revoked instance's slot to someone else only `lease + margin` after it
//! first saw the revocation applied (unless the holder confirmed the stop). Any confirmation the
//! holder sent after that moment reads the revocation; any sent before it expires before then.
//! The margin absorbs clock-rate differences and the time between sending and applying.
//!
//! Invariant: the holder's validity never extends past `sent + lease − margin` of its latest
//! successful confirmation, and never moves backwards.

use std::collections::BTreeMap;
use std::ops::{Add, Sub};
use std::time::{Duration, Instant};

use consensus::NodeId;
use consensus::state::{FabricState, InstanceState};

/// A point on the machine's boot clock (CLOCK_BOOTTIME, counts through suspend), in nanoseconds
/// since boot. The same clock in every process of a host, so an absolute deadline can cross a
/// pipe (the guard's `until <ms>`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct LeaseInstant {
    nanos: u64,
}

impl LeaseInstant {
    pub const fn from_nanos(nanos: u64) -> Self {
        Self { nanos }
    }

    pub const fn from_millis(ms: u64) -> Self {
        Self {
            nanos: ms.saturating_mul(1_000_000),
        }
    }

    pub const fn as_nanos(self) -> u64 {
        self.nanos
    }

    /// Whole milliseconds, rounded down: a deadline sent in milliseconds never moves later.
    pub const fn as_millis(self) -> u64 {
        self.nanos / 1_000_000
    }

    /// `self − earlier`, or `None` when `earlier` is later than `self`.
    pub fn checked_duration_since(self, earlier: LeaseInstant) -> Option<Duration> {
        self.nanos
            .checked_sub(earlier.nanos)
            .map(Duration::from_nanos)
    }

    /// `self − earlier`, or zero when `earlier` is later than `self`.
    pub fn saturating_duration_since(self, earlier: LeaseInstant) -> Duration {
        self.checked_duration_since(earlier).unwrap_or_default()
    }
}

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

/// Saturates at the end of the clock (585 years after boot).
impl Add<Duration> for LeaseInstant {
    type Output = LeaseInstant;
    fn add(self, d: Duration) -> LeaseInstant {
        LeaseInstant::from_nanos(self.nanos.saturating_add(nanos(d)))
    }
}

/// Saturates at boot.
impl Sub<Duration> for LeaseInstant {
    type Output = LeaseInstant;
    fn sub(self, d: Duration) -> LeaseInstant {
        LeaseInstant::from_nanos(self.nanos.saturating_sub(nanos(d)))
    }
}

/// Lease timing; must be the same on every agent: the fabric records the first agent's
/// [`terms`](LeaseConfig::terms) and refuses an agent whose terms differ.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LeaseConfig {
    pub lease: Duration,
    pub margin: Duration,
}

impl From<consensus::state::LeaseTerms> for LeaseConfig {
    fn from(t: consensus::state::LeaseTerms) -> Self {
        LeaseConfig {
            lease: Duration::from_millis(t.lease_ms),
            margin: Duration::from_millis(t.margin_ms),
        }
    }
}

impl LeaseConfig {
    /// These timings as the fabric records them.
    pub fn terms(&self) -> consensus::state::LeaseTerms {
        let ms = |d: Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
        consensus::state::LeaseTerms {
            lease_ms: ms(self.lease),
            margin_ms: ms(self.margin),
        }
    }

    /// How long a holder may serve after sending a confirmation that succeeded.
    pub fn holder_validity(&self) -> Duration {
        self.lease.saturating_sub(self.margin)
    }

    /// How long the majority waits after seeing a revocation before reusing the slot.
    pub fn reassign_after(&self) -> Duration {
        self.lease + self.margin
    }

    /// How often a holder re-confirms: four tries within its validity.
    pub fn confirm_every(&self) -> Duration {
        (self.holder_validity() / 4).max(Duration::from_millis(10))
    }
}

/// The holder's view of its own lease.
#[derive(Debug, Clone)]
pub struct LeaseHolder {
    config: LeaseConfig,
    valid_until: Option<LeaseInstant>,
}

impl LeaseHolder {
    pub fn new(config: LeaseConfig) -> Self {
        Self {
            config,
            valid_until: None,
        }
    }

    /// A confirmation sent at `sent` succeeded.
    pub fn confirmed(&mut self, sent: LeaseInstant) {
        let until = sent + self.config.holder_validity();
        if self.valid_until.is_none_or(|v| until > v) {
            self.valid_until = Some(until);
        }
    }

    /// Gives the lease up at once (e.g. a confirmation read showed it was revoked).
    pub fn drop_lease(&mut self) {
        self.valid_until = None;
    }

    pub fn is_valid(&self, now: LeaseInstant) -> bool {
        self.valid_until.is_some_and(|v| now < v)
    }

    /// Time left, if any.
    pub fn remaining(&self, now: LeaseInstant) -> Option<Duration> {
        self.valid_until
            .and_then(|v| v.checked_duration_since(now))
            .filter(|d| !d.is_zero())
    }

    pub fn valid_until(&self) -> Option<LeaseInstant> {
        self.valid_until
    }
}

/// Which instance a revocation is about.
pub type InstanceKey = (String, NodeId, u64);

/// The majority's side: when each revoked instance was first seen revoked, on this node's
/// monotonic clock. A new leader starts counting from when it first sees them, which is later
/// than the commit and therefore safe.
#[derive(Debug, Clone, Default)]
pub struct RevocationClock {
    seen: BTreeMap<InstanceKey, Instant>,
}

impl RevocationClock {
    /// Notes every revoked instance of `state` not seen before, and forgets the ones gone.
    pub fn observe(&mut self, state: &FabricState, now: Instant) {
        let mut current = BTreeMap::new();
        for (name, s) in &state.services {
            for (host, inst) in &s.instances {
                if inst.state == InstanceState::Revoked {
                    let key = (name.clone(), *host, inst.epoch);
                    let at = self.seen.get(&key).copied().unwrap_or(now);
                    current.insert(key, at);
                }
            }
        }
        self.seen = current;
    }

    /// When the slot of this revoked instance may be reused, if it is known to be revoked.
    pub fn reusable_at(&self, key: &InstanceKey, config: &LeaseConfig) -> Option<Instant> {
        self.seen.get(key).map(|t| *t + config.reassign_after())
    }

    /// Counts the revoked instances of `host` from `since` when that is earlier than when they
    /// were seen revoked: `since` is when the leader last confirmed the host's lease (see
    /// [`lapsed`]), so nothing the host holds lives past `since + lease − margin`.
    pub fn backdate(&mut self, host: NodeId, since: Instant) {
        for (key, at) in &mut self.seen {
            if key.1 == host && since < *at {
                *at = since;
            }
        }
    }

    /// Forgets everything (a node that loses leadership starts over when it leads again).
    pub fn clear(&mut self) {
        self.seen.clear();
    }
}

/// The leader's side of the holders' leases: every holder confirms through the leader (directly
/// or relayed by another voter), and the leader notes when. A host whose lease this leader has
/// not confirmed for a whole `lease` — counted from its latest confirmation here, or from when
/// this node became leader if there was none since — has certainly lapsed: its own deadline was
/// at most `lease − margin` after it sent that confirmation, which was before the leader saw it.
///
/// Returns each lapsed host with the instant its lease is counted from.
pub fn lapsed(
    hosts: impl IntoIterator<Item = NodeId>,
    confirmed: &BTreeMap<NodeId, Instant>,
    leading_since: Instant,
    now: Instant,
    config: &LeaseConfig,
) -> BTreeMap<NodeId, Instant> {
    hosts
        .into_iter()
        .filter_map(|host| {
            let since = confirmed
                .get(&host)
                .map_or(leading_since, |t| (*t).max(leading_since));
            (now >= since + config.lease).then_some((host, since))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: Duration = Duration::from_secs(1);

    fn config() -> LeaseConfig {
        LeaseConfig {
            lease: 4 * S,
            margin: S,
        }
    }

    #[test]
    fn holder_serves_lease_minus_margin_after_sending() {
        let t0 = LeaseInstant::from_millis(1_000);
        let mut h = LeaseHolder::new(config());
        assert!(!h.is_valid(t0));
        h.confirmed(t0);
        assert!(h.is_valid(t0 + 2 * S));
        assert!(!h.is_valid(t0 + 3 * S));
        assert_eq!(h.remaining(t0 + 2 * S), Some(S));
    }

    #[test]
    fn a_late_answer_to_an_old_confirmation_never_shortens_or_stretches() {
        let t0 = LeaseInstant::from_millis(1_000);
        let mut h = LeaseHolder::new(config());
        h.confirmed(t0 + 2 * S);
        h.confirmed(t0);
        assert_eq!(h.valid_until(), Some(t0 + 5 * S));
    }

    #[test]
    fn holder_expires_strictly_before_the_majority_reuses_the_slot() {
        // Worst case: the holder sent its last confirmation just before the revocation was
        // applied on the leader, which sees it at the same instant.
        let c = config();
        let (t0, boot0) = (Instant::now(), LeaseInstant::from_millis(1_000));
        let mut h = LeaseHolder::new(c);
        h.confirmed(boot0);
        let mut clock = RevocationClock::default();
        let mut state = FabricState::default();
        state.services.insert("web".into(), revoked_service());
        clock.observe(&state, t0);
        let reuse = clock.reusable_at(&("web".into(), 1, 1), &c).expect("seen");
        let expiry = h
            .valid_until()
            .expect("valid")
            .saturating_duration_since(boot0);
        let reuse = reuse.saturating_duration_since(t0);
        assert!(expiry + c.margin * 2 <= reuse, "{expiry:?} vs {reuse:?}");
    }

    #[test]
    fn a_suspend_longer_than_the_time_left_expires_the_holder_on_resume() {
        let t0 = LeaseInstant::from_millis(1_000);
        let mut h = LeaseHolder::new(config());
        h.confirmed(t0);
        assert_eq!(h.remaining(t0 + S), Some(2 * S));
        // Suspended at t0 + 1 s with 2 s left; the boot clock counts the 10 s asleep.
        let resumed = t0 + 11 * S;
        assert!(!h.is_valid(resumed));
        assert_eq!(h.remaining(resumed), None);
    }

    #[test]
    fn lease_instants_round_milliseconds_down_and_saturate() {
        let t = LeaseInstant::from_nanos(1_999_999);
        assert_eq!(t.as_millis(), 1);
        assert_eq!(LeaseInstant::from_millis(1).as_nanos(), 1_000_000);
        assert_eq!(t - 3 * S, LeaseInstant::from_nanos(0));
        assert_eq!(
            LeaseInstant::from_nanos(u64::MAX - 1) + S,
            LeaseInstant::from_nanos(u64::MAX)
        );
        assert_eq!(t.checked_duration_since(t + S), None);
        assert_eq!((t + S).saturating_duration_since(t), S);
    }

    #[test]
    fn revocation_clock_keeps_the_first_sighting() {
        let c = config();
        let t0 = Instant::now();
        let mut state = FabricState::default();
        state.services.insert("web".into(), revoked_service());
        let mut clock = RevocationClock::default();
        clock.observe(&state, t0);
        clock.observe(&state, t0 + 3 * S);
        let key = ("web".to_string(), 1, 1);
        assert_eq!(clock.reusable_at(&key, &c), Some(t0 + 5 * S));
        state.services.clear();
        clock.observe(&state, t0 + 4 * S);
        assert_eq!(clock.reusable_at(&key, &c), None);
    }

    fn revoked_service() -> consensus::state::Service {
        use consensus::state::*;
        Service {
            spec: ServiceSpec {
                dns_name: None,
                ..ServiceSpec::process("web", &["s1"], "x", 1)
            },
            created_ms: 0,
            epoch: 1,
            owner_epoch: 1,
            owner: Some("s1".into()),
            owner_since_ms: 0,
            target: None,
            instances: [(
                1,
                Instance {
                    host: 1,
                    epoch: 1,
                    placement: 1,
                    state: InstanceState::Revoked,
                    since_ms: 0,
                },
            )]
            .into(),
            deleting: None,
            placements: 1,
        }
    }

    #[test]
    fn a_host_lapses_a_whole_lease_after_its_last_confirmation_or_the_leaders_start() {
        let t0 = Instant::now();
        let c = config();
        let confirmed = BTreeMap::from([(1, t0 + S), (2, t0 - 10 * S)]);
        // Host 1 confirmed 1 s into this leadership; 2 only under an earlier one; 3 never.
        let at = |now| lapsed([1, 2, 3], &confirmed, t0, now, &c);
        assert!(at(t0 + 3 * S).is_empty());
        assert_eq!(at(t0 + 4 * S), BTreeMap::from([(2, t0), (3, t0)]));
        assert_eq!(
            at(t0 + 5 * S),
            BTreeMap::from([(1, t0 + S), (2, t0), (3, t0)])
        );
        // The holder's own deadline (sent before t0 + 1 s, plus lease − margin) is behind us.
        let mut h = LeaseHolder::new(c);
        let sent = LeaseInstant::from_millis(1_000);
        h.confirmed(sent);
        assert!(!h.is_valid(sent + c.lease - c.margin));
    }

    #[test]
    fn a_lapsed_hosts_revocations_count_from_its_last_confirmation() {
        let t0 = Instant::now();
        let c = config();
        use consensus::fixture::{apply, assign, host, place, revoke, site};
        use consensus::state::{Command, ServiceSpec};
        let mut state = FabricState::default();
        apply(&mut state, site("s1", 1));
        apply(
            &mut state,
            host(7, "s1", vec!["10.0.0.7".parse().expect("ip")]),
        );
        let spec = ServiceSpec::process("web", &["s1"], "demo", 1);
        apply(&mut state, Command::CreateService { spec });
        apply(&mut state, assign("web", "s1", 1));
        apply(&mut state, place("web", 7, 1));
        apply(&mut state, revoke("web", 7, 1));
        let mut clock = RevocationClock::default();
        let seen = t0 + 4 * S;
        clock.observe(&state, seen);
        let key = ("web".to_string(), 7, 1);
        assert_eq!(clock.reusable_at(&key, &c), Some(seen + c.reassign_after()));
        clock.backdate(7, t0);
        assert_eq!(clock.reusable_at(&key, &c), Some(t0 + c.reassign_after()));
        // Never later than first seen, and other hosts are untouched.
        clock.backdate(7, t0 + 9 * S);
        clock.backdate(8, t0 - 9 * S);
        assert_eq!(clock.reusable_at(&key, &c), Some(t0 + c.reassign_after()));
    }
}
