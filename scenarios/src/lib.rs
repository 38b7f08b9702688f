//! Disaster-recovery drills: a scenario (topology, timeline of faults and operations,
//! expectations) is run against the real fabric while probes watch it from every site, and the
//! outcome is written as a report for people (terminal table, SVG timeline) and programs (JSON).
//!
//! Invariant: a report is plain data. Everything the table and the SVG show is derived from the
//! `Report` value alone, so a `report.json` from an old drill renders the same way again.
//!
//! This crate does not decide failovers or own the fabric; it drives the fabric from outside as
//! an operator and its clients would, and judges what they saw.

// The scenario parser, the runner and the probes (`scenario`, `runner`, `probe`) are declared here.
pub mod report;
pub mod svg;
