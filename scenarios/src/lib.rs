//! DR drills and the local lab they run on.
//!
//! - [`lab`]: a fabric of real `siteagent` processes on loopback (`sitectl lab`), with links
//!   between sites through the link emulator when a topology asks for them;
//! - [`client`], [`context`]: the operator's HTTPS client of the admin API and its context file;
//! - [`scenario`]: the drill file format; [`runner`]: runs a drill; [`probe`]: the client probes.
//!
//! Invariant: a drill observes and injects faults only from outside the agents — signals to
//! processes, the link emulator, the admin API, DNS queries and the service's own endpoint.

pub mod client;
pub mod context;
pub mod lab;
