//! `fabric-guard --lease-ms N [--grace-ms G] -- COMMAND ARGS...`: runs one workload only while
//! the site agent keeps feeding it; see [`siteagent::guard`] for the protocol and exit codes.

use std::process::ExitCode;

use clap::Parser;
use siteagent::guard::{self, GuardArgs};

fn main() -> ExitCode {
    let args = match GuardArgs::try_parse() {
        Ok(args) => args,
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() {
                ExitCode::from(guard::EXIT_USAGE)
            } else {
                ExitCode::SUCCESS
            };
        }
    };
    ExitCode::from(guard::run(args))
}
