//! Decisions and the edge: who is alive, who owns what, what to do about it, and what clients
//! are told.
//!
//! Invariant: decision code (`detector`, `swim`, `sitewatch`, `siteview`, `quorum`, `lease`,
//! `planner`, and `zone`'s answers) is
//! sans-IO — plain structs and functions that take time as an input and return verdicts,
//! actions or answers, tested without sockets or sleeps. Only `dns` does I/O, and it answers
//! from a view the agent hands it. `sim` runs the decision code over a simulated fleet.
//!
//! It does not apply anything to the replicated state itself; the agent proposes what these
//! modules decide.

pub mod detector;
pub mod dns;
pub mod lease;
pub mod planner;
pub mod quorum;
mod rng;
pub mod sim;
pub mod siteview;
pub mod sitewatch;
pub mod swim;
pub mod zone;
