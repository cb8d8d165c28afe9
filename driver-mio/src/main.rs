//! burrow-mio: the Cloudflare Tunnel connector for small boxes. `tunnel run` takes the same
//! flags, config.yml, credentials and token as `burrow tunnel run` (burrow-core's `settings`)
//! and runs the same connector machine on one thread: a mio event loop, no async runtime.

mod access;
mod datagrams;
mod edge_socket;
mod edge_tcp;
mod management;
mod origin;
mod resolver;
mod srv;
mod status;
mod tunnel;

use std::process::ExitCode;

use burrow_core::settings::{cloudflared_argv, run_config, TunnelArgs};
use burrow_os::settings::{start, OsHost};
use clap::{Parser, Subcommand};
use tracing::{error, warn};

/// burrow-mio: a small, single-threaded Cloudflare Tunnel connector.
#[derive(Debug, Parser)]
#[command(name = "burrow-mio", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Tunnel commands, as `cloudflared tunnel`.
    Tunnel(Box<TunnelArgs>),
    /// Manages the system service, as `cloudflared service` (systemd, OpenRC or SysV).
    Service(burrow_core::settings::service::ServiceArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse_from(cloudflared_argv(std::env::args_os().collect()));
    let mut args = match cli.command {
        Command::Tunnel(args) => args,
        Command::Service(args) => return burrow_os::service::main(args),
    };
    let (loaded, settings) = match start(&mut args) {
        Ok(x) => x,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = run_config(&settings, &loaded, &OsHost)
        .map_err(|e| e.to_string())
        .and_then(|(rc, notices)| {
            for n in notices {
                warn!("{}", n.message());
            }
            tunnel::run(&settings, rc)
        });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            error!("{e}");
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
