//! `fabric-emu --config emu.toml`: the WAN link emulator daemon of the loopback lab.
//!
//! Thin: parses arguments and the config, starts the runtime and [`emu::run`], and turns
//! SIGTERM/SIGINT into a graceful stop. A bad config exits with status 2, naming the problem.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use emu::{EmuConfig, run};
use tokio_util::sync::CancellationToken;
use tracing_subscriber::EnvFilter;

/// Userspace WAN link emulator: UDP/TCP forwarders with per-direction delay, jitter, loss,
/// rate and partition, changed at run time over a Unix control socket.
#[derive(Debug, Parser)]
#[command(name = "fabric-emu", version)]
struct Args {
    /// The emulator's TOML config.
    #[arg(long)]
    config: PathBuf,
}

fn main() -> ExitCode {
    let args = Args::parse();
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .init();
    let config = match EmuConfig::load(&args.config) {
        Ok(config) => config,
        Err(e) => {
            eprintln!("fabric-emu: {e}");
            return ExitCode::from(2);
        }
    };
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("fabric-emu: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        let shutdown = CancellationToken::new();
        let signals = tokio::spawn(stop_on_signal(shutdown.clone()));
        let result = run(config, shutdown.clone()).await;
        // A failed start returns before any signal: stop listening for them too.
        shutdown.cancel();
        let _ = signals.await;
        result
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %e, "fabric-emu failed");
            eprintln!("fabric-emu: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn stop_on_signal(shutdown: CancellationToken) {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(error = %e, "cannot watch SIGTERM");
            return;
        }
    };
    tokio::select! {
        () = shutdown.cancelled() => return,
        _ = term.recv() => tracing::info!("SIGTERM, stopping"),
        _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT, stopping"),
    }
    shutdown.cancel();
}
