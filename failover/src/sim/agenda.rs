//! The simulator's agenda: what happens next, in virtual time.
//!
//! Invariant: events come out ordered by (time, insertion number), so two events due at the
//! same instant run in the order they were scheduled, and a run is a pure function of its seed.
//!
//! It does not know what the events mean; [`super::world`] does.

use std::cmp::Ordering;
use std::collections::BinaryHeap;

/// Virtual time: nanoseconds since the start of the run.
pub(super) type Nanos = u64;

/// What the heap orders: small, so sifting moves 24 bytes; the event waits in `slots`.
#[derive(PartialEq, Eq)]
struct Entry {
    at: Nanos,
    seq: u64,
    slot: u32,
}

impl PartialOrd for Entry {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Entry {
    /// Reversed, so the max-heap pops the earliest (then the first scheduled).
    fn cmp(&self, other: &Self) -> Ordering {
        (other.at, other.seq).cmp(&(self.at, self.seq))
    }
}

pub(super) struct Agenda<E> {
    heap: BinaryHeap<Entry>,
    slots: Vec<Option<E>>,
    free: Vec<u32>,
    seq: u64,
}

impl<E> Agenda<E> {
    pub(super) fn new() -> Self {
        Self {
            heap: BinaryHeap::new(),
            slots: Vec::new(),
            free: Vec::new(),
            seq: 0,
        }
    }

    pub(super) fn schedule(&mut self, at: Nanos, event: E) {
        self.seq += 1;
        let slot = match self.free.pop() {
            Some(slot) => {
                self.slots[slot as usize] = Some(event);
                slot
            }
            None => {
                self.slots.push(Some(event));
                u32::try_from(self.slots.len() - 1).expect("fewer than 2^32 pending events")
            }
        };
        self.heap.push(Entry {
            at,
            seq: self.seq,
            slot,
        });
    }

    /// The next event if it is due at or before `until`.
    pub(super) fn pop_until(&mut self, until: Nanos) -> Option<(Nanos, E)> {
        if self.heap.peek()?.at > until {
            return None;
        }
        let entry = self.heap.pop()?;
        self.free.push(entry.slot);
        let event = self.slots.get_mut(entry.slot as usize)?.take()?;
        Some((entry.at, event))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn earliest_first_and_ties_in_scheduling_order() {
        let mut a = Agenda::new();
        a.schedule(20, "late");
        a.schedule(10, "first");
        a.schedule(10, "second");
        a.schedule(30, "after the end");
        let mut out = Vec::new();
        while let Some((_, e)) = a.pop_until(25) {
            out.push(e);
        }
        assert_eq!(out, vec!["first", "second", "late"]);
    }
}
