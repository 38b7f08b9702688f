//! This agent's ownership lease as the rest of the agent sees it: the [`LeaseHolder`] the keeper
//! confirms, the state revision its latest confirmation read, and the services this host holds
//! under it.
//!
//! Owns: the rule for answering DNS ([`LeaseHandle::vouch`]): vouch only while the lease is valid
//! and the zone being served was built from a state at least as new as the one the latest
//! confirmation read. It lives here and nowhere else.
//!
//! Invariant: the deadline is `sent + lease − margin` of the newest successful confirmation; a
//! late reply to an older confirmation never moves it (the holder keeps the maximum), and the
//! confirmed revision never goes backwards.
//!
//! Does not: send confirmations (the keeper does), nor read any clock: every question takes `now`
//! on the boot clock ([`LeaseInstant`], read by [`crate::clock::lease_now`]).

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use failover::lease::{LeaseConfig, LeaseHolder, LeaseInstant};
use failover::zone::Vouched;

/// A cheap, cloneable handle on this agent's lease.
#[derive(Clone)]
pub struct LeaseHandle {
    inner: Arc<Inner>,
}

struct Inner {
    config: LeaseConfig,
    holder: Mutex<LeaseHolder>,
    /// State revision seen by the latest successful confirmation.
    confirmed_revision: AtomicU64,
    /// Digest of the zone of the state the newest confirmation read, with that state's revision.
    confirmed_zone: Mutex<(u64, u64)>,
    /// Services this host runs under the lease, as of the latest confirmed read.
    held: Mutex<BTreeSet<String>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Plain values: a panic elsewhere cannot leave them half-updated.
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl LeaseHandle {
    pub fn new(config: LeaseConfig) -> Self {
        Self {
            inner: Arc::new(Inner {
                config,
                holder: Mutex::new(LeaseHolder::new(config)),
                confirmed_revision: AtomicU64::new(0),
                confirmed_zone: Mutex::new((0, 0)),
                held: Mutex::new(BTreeSet::new()),
            }),
        }
    }

    /// This agent's own lease terms.
    pub fn config(&self) -> LeaseConfig {
        self.inner.config
    }

    /// The lease terms the fabric runs on: the agreed ones, or this agent's before any agreement.
    pub fn fabric_terms(&self, s: &consensus::state::FabricState) -> LeaseConfig {
        s.lease_terms.map_or(self.inner.config, Into::into)
    }

    /// Records a successful confirmation sent at `sent` that read state `revision`, whose zone
    /// has digest `zone_digest` ([`crate::confirmation::zone_digest`]).
    pub fn confirmed(&self, sent: LeaseInstant, revision: u64, zone_digest: u64) {
        let mut holder = lock(&self.inner.holder);
        let before = holder.valid_until();
        holder.confirmed(sent);
        debug_assert!(
            before.is_none_or(|b| holder.valid_until() >= Some(b)),
            "a confirmation moved the lease deadline backwards"
        );
        self.inner
            .confirmed_revision
            .fetch_max(revision, Ordering::SeqCst);
        let mut zone = lock(&self.inner.confirmed_zone);
        if revision >= zone.0 {
            *zone = (revision, zone_digest);
        }
    }

    /// True while this agent may act on its lease.
    pub fn is_valid(&self, now: LeaseInstant) -> bool {
        lock(&self.inner.holder).is_valid(now)
    }

    /// The absolute deadline of the lease on the boot clock, if it was ever confirmed. Guards are
    /// fed this, never a "time left" that would go stale across an await.
    pub fn valid_until(&self) -> Option<LeaseInstant> {
        lock(&self.inner.holder).valid_until()
    }

    /// Time left on the lease, if any.
    pub fn remaining(&self, now: LeaseInstant) -> Option<Duration> {
        lock(&self.inner.holder).remaining(now)
    }

    /// The state revision the latest successful confirmation read.
    pub fn confirmed_revision(&self) -> u64 {
        self.inner.confirmed_revision.load(Ordering::SeqCst)
    }

    /// Whether a DNS server that publishes a zone built from state `published_revision`, with
    /// digest `published_digest`, may vouch for it at `now`, and for how long: the lease time
    /// left, which caps the TTLs. It may when its state is at least as new as the confirmed one,
    /// or when its zone is exactly the confirmed state's zone (its own state lags because its
    /// site reaches the leader only through another voter, but the answers are the same).
    pub fn vouch(
        &self,
        now: LeaseInstant,
        published_revision: u64,
        published_digest: u64,
    ) -> Vouched {
        let Some(left) = self.remaining(now) else {
            return Vouched::No;
        };
        let fresh = published_revision >= self.confirmed_revision();
        let same_zone = lock(&self.inner.confirmed_zone).1 == published_digest;
        if fresh || same_zone {
            Vouched::For(left)
        } else {
            Vouched::No
        }
    }

    /// Notes which services this host holds under the lease (from a confirmed read).
    pub fn set_held(&self, services: BTreeSet<String>) {
        *lock(&self.inner.held) = services;
    }

    /// The services this host holds under the lease, as of the latest confirmed read.
    pub fn held(&self) -> BTreeSet<String> {
        lock(&self.inner.held).clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: Duration = Duration::from_secs(1);

    fn handle() -> LeaseHandle {
        LeaseHandle::new(LeaseConfig {
            lease: 6 * S,
            margin: S,
        })
    }

    #[test]
    fn the_deadline_is_the_send_time_plus_lease_minus_margin() {
        let t0 = LeaseInstant::from_millis(1_000);
        let lease = handle();
        assert!(!lease.is_valid(t0), "valid before any confirmation");
        // Sent at t0, the reply arrived at t0 + 2 s: the deadline is still t0 + 5 s.
        lease.confirmed(t0, 1, 0);
        let reply = t0 + 2 * S;
        assert_eq!(lease.remaining(reply), Some(3 * S));
        assert!(lease.is_valid(t0 + 5 * S - Duration::from_millis(1)));
        assert!(!lease.is_valid(t0 + 5 * S));
        assert_eq!(lease.remaining(t0 + 5 * S), None);
    }

    #[test]
    fn a_late_reply_to_an_older_confirmation_never_moves_the_deadline() {
        let t0 = LeaseInstant::from_millis(1_000);
        let lease = handle();
        lease.confirmed(t0 + 2 * S, 7, 0);
        // The reply to a confirmation sent earlier arrives now.
        lease.confirmed(t0, 5, 0);
        assert_eq!(lease.remaining(t0 + 2 * S), Some(5 * S));
        assert_eq!(lease.confirmed_revision(), 7, "the revision went backwards");
        assert!(!lease.is_valid(t0 + 7 * S));
    }

    #[test]
    fn dns_vouches_only_with_a_valid_lease_and_a_zone_as_new_as_the_confirmation() {
        let t0 = LeaseInstant::from_millis(1_000);
        let lease = handle();
        assert_eq!(lease.vouch(t0, 10, 1), Vouched::No, "no lease yet");
        lease.confirmed(t0, 10, 0);
        assert_eq!(lease.vouch(t0 + S, 10, 1), Vouched::For(4 * S));
        assert_eq!(lease.vouch(t0 + S, 11, 1), Vouched::For(4 * S));
        assert_eq!(
            lease.vouch(t0 + S, 9, 1),
            Vouched::No,
            "zone older than the confirmed state"
        );
        assert_eq!(lease.vouch(t0 + 5 * S, 11, 1), Vouched::No, "lease expired");
    }

    #[test]
    fn after_a_suspend_longer_than_the_time_left_dns_no_longer_vouches() {
        let t0 = LeaseInstant::from_millis(1_000);
        let lease = handle();
        lease.confirmed(t0, 3, 0);
        assert_eq!(lease.vouch(t0 + S, 3, 1), Vouched::For(4 * S));
        // Suspended at t0 + 1 s with 4 s left, resumed 60 s later on the boot clock.
        let resumed = t0 + 61 * S;
        assert_eq!(lease.vouch(resumed, 3, 1), Vouched::No);
        assert!(!lease.is_valid(resumed));
        assert_eq!(lease.remaining(resumed), None);
    }

    #[test]
    fn a_lagging_dns_server_vouches_only_for_exactly_the_confirmed_zone() {
        let t0 = LeaseInstant::from_millis(1_000);
        let lease = handle();
        // Confirmed through another voter: the state there is at revision 20, zone digest 77.
        lease.confirmed(t0, 20, 77);
        assert_eq!(
            lease.vouch(t0 + S, 12, 77),
            Vouched::For(4 * S),
            "same zone"
        );
        assert_eq!(
            lease.vouch(t0 + S, 12, 78),
            Vouched::No,
            "the zone changed since"
        );
        // A newer confirmation with another zone replaces the digest; an older reply does not.
        lease.confirmed(t0 + S, 21, 78);
        lease.confirmed(t0, 19, 77);
        assert_eq!(lease.vouch(t0 + S, 12, 77), Vouched::No);
        assert_eq!(lease.vouch(t0 + S, 12, 78), Vouched::For(5 * S));
        assert_eq!(
            lease.vouch(t0 + 6 * S, 12, 78),
            Vouched::No,
            "lease expired"
        );
    }
}
