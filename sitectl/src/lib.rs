//! The operator's CLI as a library: output, operations, benchmarks; the lab and the admin client
//! live in `scenarios` (the drills run on them) and are re-exported here.
//!
//! Every command ends either with its answer on stdout and exit code 0, or with one line on
//! stderr saying what failed and a non-zero exit code.

pub mod bench;
pub mod chaoscmd;
pub mod labcmd;
pub mod ops;
pub mod output;
pub mod volumecmd;

pub use scenarios::{client, context, lab};
