//! The operator's CLI as a library: context and admin client, output, the local lab, benchmarks.
//!
//! Every command ends either with its answer on stdout and exit code 0, or with one line on
//! stderr saying what failed and a non-zero exit code.

pub mod bench;
pub mod client;
pub mod context;
pub mod lab;
pub mod ops;
pub mod output;
