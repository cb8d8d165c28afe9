//! `burrow`: the Cloudflare Tunnel transport daemon (tokio driver around burrow-core).

mod accept;
mod access;
mod connector;
mod datagram;
mod decode;
mod dial;
mod edge;
mod edge_udp;
mod heap;
mod management;
mod metrics;
mod origin;
mod quickstart;
mod run;

// The QUIC socket lives in the library so the bench's QUIC ceiling uses the same one.
use burrow_tokio::quic_socket;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// burrow: a fast, small Cloudflare Tunnel transport.
#[derive(Debug, Parser)]
#[command(name = "burrow", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Decode captured tunnel bytes (hex) and print one JSON object per input (JSON Lines).
    ///
    /// With HEX arguments each is decoded; with none, one hex string per line is read from
    /// standard input (blank lines are skipped). A malformed input prints {"error": "..."} on
    /// its line and decoding goes on; the exit status is 1 if any input failed.
    Decode {
        /// What the bytes are.
        #[arg(value_enum)]
        kind: decode::Kind,
        /// Hex strings to decode (whitespace, ':' and a leading 0x are ignored).
        hex: Vec<String>,
    },
    /// Tunnel commands, as `cloudflared tunnel`.
    Tunnel(Box<burrow_core::settings::TunnelArgs>),
    /// A self-hosted edge: accepts tunnel connections over QUIC and serves their hostnames.
    Edge(Box<edge::EdgeArgs>),
    /// Edge, connector and a hello-world origin in one process on loopback.
    Quickstart(quickstart::QuickstartArgs),
    /// Manages the system service, as `cloudflared service` (systemd, OpenRC or SysV).
    Service(burrow_core::settings::service::ServiceArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse_from(burrow_core::settings::cloudflared_argv(
        std::env::args_os().collect(),
    ));
    match cli.command {
        Command::Decode { kind, hex } => decode::run(kind, hex),
        Command::Tunnel(args) => run::main(*args),
        Command::Edge(args) => edge::main(*args),
        Command::Quickstart(args) => quickstart::main(args),
        Command::Service(args) => burrow_os::service::main(args),
    }
}
