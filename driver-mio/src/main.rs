//! burrow-mio: the Cloudflare Tunnel connector for small boxes. `tunnel run` takes the same
//! flags, config.yml, credentials and token as `burrow tunnel run` (burrow-core's `settings`)
//! and runs the same connector machine on one thread: a mio event loop, no async runtime.

mod datagrams;
mod edge_socket;
mod origin;
mod resolver;
mod srv;
mod status;
mod tls;
mod tunnel;

use std::process::ExitCode;

use burrow_core::settings::{
    cloudflared_argv, init_logging_to, load_config, run_config, OsHost, Settings, TunnelArgs,
    TunnelCommand,
};
use clap::{Parser, Subcommand};
use tracing::{debug, error, warn};

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
}

fn main() -> ExitCode {
    let cli = Cli::parse_from(cloudflared_argv(std::env::args_os().collect()));
    let Command::Tunnel(args) = cli.command;
    let TunnelCommand::Run(run) = args.command;
    // The file may set the log level, so it is read before logging starts; its errors go to
    // stderr directly.
    let setup = load_config(&args.common, &OsHost).and_then(|loaded| {
        let settings = Settings::merge(&args.common, &run, &loaded.file)?;
        Ok((loaded, settings))
    });
    let (loaded, settings) = match setup {
        Ok(x) => x,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    if let Err(e) = init_logging_to(&settings.loglevel, settings.logfile.as_deref()) {
        eprintln!("error: {e}");
        return ExitCode::FAILURE;
    }
    let ignored = args.common.ignored.given();
    if !ignored.is_empty() {
        debug!(flags = ?ignored, "flags burrow does not act on, ignored");
    }
    if !loaded.file.ignored_keys.is_empty() {
        debug!(keys = ?loaded.file.ignored_keys, "configuration keys burrow does not act on, ignored");
    }
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
