//! The emulator's shared state: the links between named sites (each with two directions) and
//! the list of running forwarders, behind one handle the forwarders and the control server
//! share.
//!
//! Invariant: a link exists once per unordered site pair; every change bumps a watch counter so
//! stream forwarders holding data through a partition wake up on the heal.
//!
//! It does not move bytes (see [`crate::udp`], [`crate::tcp`]) and does not decide fates
//! itself: it routes each admission to the right [`DirectionState`].

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Mutex, MutexGuard};
use std::time::Instant;

use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::EmuError;
use crate::link::{DirectionState, DirectionStats, Fate};
use crate::params::{LinkParams, ParamsSpec};

/// Which direction(s) of a link an operation applies to, relative to the `a`, `b` order the
/// caller named the sites in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Direction {
    #[default]
    Both,
    AToB,
    BToA,
}

/// What kind of traffic a forwarder carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ForwardKind {
    Udp,
    Tcp,
}

/// One running forwarder, as status shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ForwarderStatus {
    pub kind: ForwardKind,
    /// The address actually bound (port 0 resolved).
    pub listen: SocketAddr,
    pub target: SocketAddr,
    pub from: String,
    pub to: String,
}

/// One direction of a link in status.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DirectionStatus {
    pub params: ParamsSpec,
    pub stats: DirectionStats,
}

/// One link in status, directions named after its declared `a` and `b`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LinkStatus {
    pub a: String,
    pub b: String,
    pub a_to_b: DirectionStatus,
    pub b_to_a: DirectionStatus,
}

/// Everything the emulator is doing.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Status {
    pub links: Vec<LinkStatus>,
    pub forwarders: Vec<ForwarderStatus>,
}

#[derive(Debug)]
struct Link {
    a: String,
    b: String,
    a_to_b: DirectionState,
    b_to_a: DirectionState,
}

impl Link {
    fn direction_mut(&mut self, from: &str) -> &mut DirectionState {
        if from == self.a {
            &mut self.a_to_b
        } else {
            &mut self.b_to_a
        }
    }

    /// The directions `direction` selects when the caller named the sites `(first, _)`.
    fn select(&mut self, first: &str, direction: Direction) -> Vec<&mut DirectionState> {
        let caller_is_declared_order = first == self.a;
        let (forward, backward) = if caller_is_declared_order {
            (&mut self.a_to_b, &mut self.b_to_a)
        } else {
            (&mut self.b_to_a, &mut self.a_to_b)
        };
        match direction {
            Direction::Both => vec![forward, backward],
            Direction::AToB => vec![forward],
            Direction::BToA => vec![backward],
        }
    }
}

/// The link table and forwarder registry shared by forwarders and the control server.
#[derive(Debug)]
pub struct Emulator {
    seed: u64,
    links: Mutex<BTreeMap<(String, String), Link>>,
    forwarders: Mutex<Vec<ForwarderStatus>>,
    changes: watch::Sender<u64>,
}

fn key(a: &str, b: &str) -> (String, String) {
    if a <= b {
        (a.to_string(), b.to_string())
    } else {
        (b.to_string(), a.to_string())
    }
}

/// FNV-1a: a stable hash, so a direction's random stream depends on the seed and its site
/// names only, not on declaration order or the std hasher of the day.
fn fnv(text: &str) -> u64 {
    text.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

impl Emulator {
    /// An emulator without links; `seed` determines every direction's random draws.
    pub fn new(seed: u64) -> Self {
        Self {
            seed,
            links: Mutex::new(BTreeMap::new()),
            forwarders: Mutex::new(Vec::new()),
            changes: watch::Sender::new(0),
        }
    }

    fn links(&self) -> MutexGuard<'_, BTreeMap<(String, String), Link>> {
        // A panic while holding the lock leaves plain data behind; keep serving it.
        self.links
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn forwarder_list(&self) -> MutexGuard<'_, Vec<ForwarderStatus>> {
        self.forwarders
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn direction_seed(&self, from: &str, to: &str) -> u64 {
        self.seed ^ fnv(&format!("{from}>{to}"))
    }

    /// Declares the link between sites `a` and `b` with initial parameters per direction.
    pub fn add_link(
        &self,
        a: &str,
        b: &str,
        a_to_b: LinkParams,
        b_to_a: LinkParams,
    ) -> Result<(), EmuError> {
        if a == b {
            return Err(EmuError::SameSite { site: a.into() });
        }
        a_to_b.validate()?;
        b_to_a.validate()?;
        let mut links = self.links();
        let k = key(a, b);
        if links.contains_key(&k) {
            return Err(EmuError::DuplicateLink {
                a: a.into(),
                b: b.into(),
            });
        }
        let link = Link {
            a: a.into(),
            b: b.into(),
            a_to_b: DirectionState::new(a_to_b, self.direction_seed(a, b)),
            b_to_a: DirectionState::new(b_to_a, self.direction_seed(b, a)),
        };
        links.insert(k, link);
        Ok(())
    }

    /// Whether a link joins `a` and `b`.
    pub fn has_link(&self, a: &str, b: &str) -> bool {
        self.links().contains_key(&key(a, b))
    }

    /// A forwarder's route must run over an existing link.
    pub fn check_route(&self, route: &crate::Route) -> Result<(), EmuError> {
        if self.has_link(&route.from, &route.to) {
            Ok(())
        } else {
            Err(EmuError::UnknownLink {
                a: route.from.clone(),
                b: route.to.clone(),
            })
        }
    }

    /// Changes the selected direction(s) of the `a`–`b` link with `change`; the new parameters
    /// are validated before any is applied.
    pub fn update(
        &self,
        a: &str,
        b: &str,
        direction: Direction,
        change: impl Fn(&LinkParams) -> Result<LinkParams, EmuError>,
    ) -> Result<(), EmuError> {
        let mut links = self.links();
        let link = links
            .get_mut(&key(a, b))
            .ok_or_else(|| EmuError::UnknownLink {
                a: a.into(),
                b: b.into(),
            })?;
        let mut selected = link.select(a, direction);
        let new = selected
            .iter()
            .map(|d| {
                let p = change(d.params())?;
                p.validate()?;
                Ok(p)
            })
            .collect::<Result<Vec<_>, EmuError>>()?;
        for (d, p) in selected.iter_mut().zip(new) {
            d.set_params(p);
        }
        drop(links);
        self.changes.send_modify(|v| *v += 1);
        Ok(())
    }

    /// Sets the selected direction(s) to exactly `params` (partition state included).
    pub fn set(
        &self,
        a: &str,
        b: &str,
        direction: Direction,
        params: LinkParams,
    ) -> Result<(), EmuError> {
        self.update(a, b, direction, |_| Ok(params))
    }

    /// Cuts the selected direction(s): nothing passes until [`Emulator::heal`].
    pub fn partition(&self, a: &str, b: &str, direction: Direction) -> Result<(), EmuError> {
        self.update(a, b, direction, |p| {
            Ok(LinkParams {
                partitioned: true,
                ..*p
            })
        })
    }

    /// Clears the partition of the selected direction(s), keeping delay, loss and rate.
    pub fn heal(&self, a: &str, b: &str, direction: Direction) -> Result<(), EmuError> {
        self.update(a, b, direction, |p| {
            Ok(LinkParams {
                partitioned: false,
                ..*p
            })
        })
    }

    /// The parameters of the `from` → `to` direction.
    pub fn params(&self, from: &str, to: &str) -> Result<LinkParams, EmuError> {
        self.with_direction(from, to, |d| *d.params())
    }

    /// The fate of a datagram of `len` bytes sent `from` → `to` at `now`.
    pub fn admit(&self, from: &str, to: &str, len: usize, now: Instant) -> Result<Fate, EmuError> {
        self.with_direction(from, to, |d| d.admit(len, now))
    }

    /// The fate of a stream chunk sent `from` → `to` at `now`, plus when the serializer can
    /// take the next chunk. `Drop` means partitioned: hold the chunk and retry after a change.
    pub fn admit_ordered(
        &self,
        from: &str,
        to: &str,
        len: usize,
        now: Instant,
    ) -> Result<(Fate, Instant), EmuError> {
        self.with_direction(from, to, |d| {
            let fate = d.admit_ordered(len, now);
            (fate, d.free_at(now))
        })
    }

    fn with_direction<T>(
        &self,
        from: &str,
        to: &str,
        f: impl FnOnce(&mut DirectionState) -> T,
    ) -> Result<T, EmuError> {
        let mut links = self.links();
        let link = links
            .get_mut(&key(from, to))
            .ok_or_else(|| EmuError::UnknownLink {
                a: from.into(),
                b: to.into(),
            })?;
        Ok(f(link.direction_mut(from)))
    }

    /// Waits until `from` → `to` is not partitioned. Returns false if `cancel` fired first or
    /// the link is unknown.
    pub async fn wait_open(&self, from: &str, to: &str, cancel: &CancellationToken) -> bool {
        let mut changes = self.changes.subscribe();
        loop {
            // Subscribed before looking, so a heal between the look and the wait is not missed.
            match self.params(from, to) {
                Ok(p) if !p.partitioned => return true,
                Ok(_) => {}
                Err(_) => return false,
            }
            tokio::select! {
                () = cancel.cancelled() => return false,
                changed = changes.changed() => if changed.is_err() { return false },
            }
        }
    }

    /// Records a running forwarder for status.
    pub fn register_forwarder(&self, forwarder: ForwarderStatus) {
        self.forwarder_list().push(forwarder);
    }

    /// Forgets a forwarder that stopped.
    pub fn unregister_forwarder(&self, listen: SocketAddr, kind: ForwardKind) {
        self.forwarder_list()
            .retain(|f| !(f.listen == listen && f.kind == kind));
    }

    /// Links (in site-name order) and forwarders.
    pub fn status(&self) -> Status {
        let direction = |d: &DirectionState| DirectionStatus {
            params: d.params().to_spec(),
            stats: d.stats(),
        };
        let links = self
            .links()
            .values()
            .map(|l| LinkStatus {
                a: l.a.clone(),
                b: l.b.clone(),
                a_to_b: direction(&l.a_to_b),
                b_to_a: direction(&l.b_to_a),
            })
            .collect();
        Status {
            links,
            forwarders: self.forwarder_list().clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn lab() -> Emulator {
        let emu = Emulator::new(1);
        emu.add_link("s1", "s2", LinkParams::default(), LinkParams::default())
            .expect("link");
        emu
    }

    fn delay(ms: u64) -> LinkParams {
        LinkParams {
            delay: Duration::from_millis(ms),
            ..LinkParams::default()
        }
    }

    #[test]
    fn directions_follow_the_order_the_caller_names_the_sites_in() {
        let emu = lab();
        emu.set("s2", "s1", Direction::AToB, delay(30))
            .expect("set");
        assert_eq!(
            emu.params("s2", "s1").expect("p").delay,
            Duration::from_millis(30)
        );
        assert_eq!(emu.params("s1", "s2").expect("p").delay, Duration::ZERO);
        emu.set("s1", "s2", Direction::BToA, delay(5)).expect("set");
        assert_eq!(
            emu.params("s2", "s1").expect("p").delay,
            Duration::from_millis(5)
        );
    }

    #[test]
    fn heal_clears_the_partition_but_keeps_the_shaping() {
        let emu = lab();
        emu.set("s1", "s2", Direction::Both, delay(40))
            .expect("set");
        emu.partition("s1", "s2", Direction::Both).expect("cut");
        let now = Instant::now();
        assert_eq!(emu.admit("s1", "s2", 10, now).expect("admit"), Fate::Drop);
        assert_eq!(emu.admit("s2", "s1", 10, now).expect("admit"), Fate::Drop);
        emu.heal("s2", "s1", Direction::Both).expect("heal");
        assert_eq!(
            emu.admit("s1", "s2", 10, now).expect("admit"),
            Fate::Deliver(now + Duration::from_millis(40))
        );
    }

    #[test]
    fn one_way_partition_cuts_one_direction_only() {
        let emu = lab();
        emu.partition("s1", "s2", Direction::AToB).expect("cut");
        let now = Instant::now();
        assert_eq!(emu.admit("s1", "s2", 10, now).expect("admit"), Fate::Drop);
        assert_eq!(
            emu.admit("s2", "s1", 10, now).expect("admit"),
            Fate::Deliver(now)
        );
    }

    #[test]
    fn unknown_pair_is_an_error_naming_both_sites() {
        let emu = lab();
        let err = emu
            .partition("s1", "w", Direction::Both)
            .expect_err("unknown");
        let text = err.to_string();
        assert!(text.contains("s1") && text.contains("w"), "{text}");
        assert!(emu.admit("x", "y", 1, Instant::now()).is_err());
    }

    #[test]
    fn links_are_unique_per_unordered_pair_and_join_two_sites() {
        let emu = lab();
        assert!(matches!(
            emu.add_link("s2", "s1", LinkParams::default(), LinkParams::default()),
            Err(EmuError::DuplicateLink { .. })
        ));
        assert!(matches!(
            emu.add_link("s1", "s1", LinkParams::default(), LinkParams::default()),
            Err(EmuError::SameSite { .. })
        ));
    }

    #[test]
    fn invalid_params_change_nothing() {
        let emu = lab();
        let bad = LinkParams {
            loss: 3.0,
            ..LinkParams::default()
        };
        assert!(emu.set("s1", "s2", Direction::Both, bad).is_err());
        assert_eq!(emu.params("s1", "s2").expect("p"), LinkParams::default());
    }

    #[tokio::test]
    async fn a_waiter_on_a_partitioned_direction_wakes_on_heal() {
        let emu = std::sync::Arc::new(lab());
        emu.partition("s1", "s2", Direction::Both).expect("cut");
        let cancel = CancellationToken::new();
        let waiter = {
            let emu = emu.clone();
            let cancel = cancel.clone();
            tokio::spawn(async move { emu.wait_open("s1", "s2", &cancel).await })
        };
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished());
        emu.heal("s1", "s2", Direction::Both).expect("heal");
        assert!(waiter.await.expect("join"));
    }
}
