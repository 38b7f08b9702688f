//! `fabric-guard --until-ms BOOTTIME_MS [--grace-ms G] -- COMMAND ARGS...`: runs one workload only
//! while the site agent keeps moving its deadline; see [`siteagent::guard`] for the protocol.

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
