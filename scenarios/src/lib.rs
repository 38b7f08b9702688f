//! Disaster-recovery drills and the local lab they run on: a scenario (topology, timeline of
//! faults and operations, expectations) is run against a fabric of real processes while probes
//! watch it from every site, and the outcome is written as a report for people (terminal table,
//! SVG timeline) and programs (JSON).
//!
//! - [`lab`]: a fabric of real `siteagent` processes on loopback (`sitectl lab`), with links
//!   between sites through the link emulator when a topology asks for them;
//! - [`client`], [`context`]: the operator's HTTPS client of the admin API and its context file;
//! - [`scenario`]: the drill file format; [`runner`]: runs a drill; [`probe`]: the client probes;
//!   [`checks`]: split brain, RTO, RPO and expectations; [`report`], [`svg`]: the report, and
//!   [`archive`]: its files (`report.json`, `timeline.svg`);
//! - [`chaos`]: seeded random fault schedules played as drills, with the chaos invariants;
//! - [`poll`]: waiting for a condition until a time limit (the lab's and the runner's waits).
//!
//! Invariant: a drill observes and injects faults only from outside the agents — signals to
//! processes, the link emulator, the admin API, DNS queries and the service's own endpoint — and
//! a report is plain data: the table and the SVG are derived from the `Report` value alone.

pub mod archive;
pub mod chaos;
pub mod checks;
pub mod client;
pub mod context;
pub mod lab;
pub mod poll;
pub mod probe;
pub mod report;
pub mod runner;
pub mod scenario;
pub mod svg;
pub mod toml_file;
