//! `burrow edge`: a self-hosted edge. Tunnel connections come in over QUIC (UDP) or HTTP/2 over
//! TLS (TCP, [`http2`]) on the same port and are served by burrow-core's
//! [`Edge`] machine; registrations are checked against a tunnels file; eyeball
//! HTTP/1.1 requests (WebSocket upgrades included) are routed by `Host` to a registered tunnel,
//! spread over its HA connections; `--tcp-map` ports carry raw TCP streams; `--udp-map` and
//! `--icmp-map` ports carry UDP sessions and ping as QUIC datagrams ([`crate::edge_udp`]).
//!
//! Modules: [`tunnels`] (the tunnels file), [`identity`](mod@identity) (certificate and local CA),
//! [`event_loop`] (the task driving the edge machine), [`eyeball`] (the public HTTP port),
//! [`tcp_map`] (`--tcp-map` ports), [`http2`] (the TCP sockets of HTTP/2 connectors).

mod event_loop;
mod eyeball;
mod http2;
mod identity;
mod tcp_map;
mod tunnels;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use burrow_core::edge::{Edge, EdgeConfig};
use burrow_core::quic::tls::{self, PostQuantum};
use burrow_core::quic::transport::QuicSettings;
use clap::{Args, Subcommand};
use tokio::net::{TcpListener, UdpSocket};
use tokio::sync::{mpsc, oneshot};
use tracing::{error, info};

use crate::edge_udp::DatagramArgs;
use crate::quic_socket::QuicSocket;
use crate::run::init_logging;
use event_loop::Cmd;
pub use identity::identity;
use tunnels::create_state_dir;
pub use tunnels::{create_tunnel, TunnelsFile};

/// `burrow edge ...`.
#[derive(Debug, Args, Clone)]
pub struct EdgeArgs {
    /// Address tunnels connect to: QUIC on UDP, HTTP/2 over TLS on TCP.
    #[arg(long, default_value = "127.0.0.1:7844")]
    pub listen: String,
    /// Public HTTP address eyeballs connect to.
    #[arg(long, default_value = "127.0.0.1:8080")]
    pub http: String,
    /// State directory: generated CA (ca.pem), edge certificate and the tunnels file.
    #[arg(long, global = true, default_value = "burrow-edge")]
    pub dir: PathBuf,
    /// Edge certificate chain (PEM) for quic.cftunnel.com; generated under --dir when absent.
    #[arg(long)]
    pub cert: Option<PathBuf>,
    /// Edge private key (PEM).
    #[arg(long)]
    pub key: Option<PathBuf>,
    /// Tunnels file (default DIR/tunnels.json).
    #[arg(long, global = true)]
    pub tunnels: Option<PathBuf>,
    /// Raw TCP port mapping LISTEN=TUNNEL:DEST (tunnel by name or id), repeatable.
    #[arg(long = "tcp-map")]
    pub tcp_map: Vec<String>,
    /// UDP and ICMP mappings.
    #[command(flatten)]
    pub datagrams: DatagramArgs,
    /// Limits of the public HTTP port.
    #[command(flatten)]
    pub http_limits: HttpLimits,
    /// Log level.
    #[arg(long, global = true, default_value = "info")]
    pub loglevel: String,
    /// Write each local configuration a connector sends (`updateLocalConfiguration`) to
    /// `DIR/<tunnel id>.json`, as received.
    #[arg(long)]
    pub local_config_dir: Option<PathBuf>,
    #[command(subcommand)]
    pub command: Option<EdgeCommand>,
}

/// What one eyeball may hold of the public HTTP port.
#[derive(Debug, Args, Clone)]
pub struct HttpLimits {
    /// Close an eyeball connection that has not sent a whole request head this long after it
    /// connected or after its previous response (idle keep-alive included).
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    pub http_header_timeout: Duration,
    /// Eyeball connections served at once; further ones wait in the listen backlog.
    #[arg(long, default_value_t = 10_000)]
    pub http_max_connections: usize,
}

impl Default for HttpLimits {
    fn default() -> Self {
        Self {
            http_header_timeout: Duration::from_secs(10),
            http_max_connections: 10_000,
        }
    }
}

/// `burrow edge` subcommands.
#[derive(Debug, Subcommand, Clone)]
pub enum EdgeCommand {
    /// Manage tunnels.
    Tunnel {
        #[command(subcommand)]
        command: TunnelCommand,
    },
}

/// `burrow edge tunnel ...`.
#[derive(Debug, Subcommand, Clone)]
pub enum TunnelCommand {
    /// Creates a tunnel, writes its cloudflared credentials file, adds it to the tunnels file.
    Create {
        /// Tunnel name.
        name: String,
        /// Hostname routed to it (repeatable; `*.example.com` allowed).
        #[arg(long)]
        hostname: Vec<String>,
        /// Where to write the credentials file (default `DIR/<id>.json`).
        #[arg(long)]
        credentials_file: Option<PathBuf>,
    },
}

/// Entry point of `burrow edge`.
pub fn main(args: EdgeArgs) -> ExitCode {
    init_logging(&args.loglevel);
    let tunnels_path = args
        .tunnels
        .clone()
        .unwrap_or_else(|| args.dir.join("tunnels.json"));
    if let Some(EdgeCommand::Tunnel {
        command:
            TunnelCommand::Create {
                name,
                hostname,
                credentials_file,
            },
    }) = &args.command
    {
        if let Err(e) = create_state_dir(&args.dir) {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
        return match create_tunnel(&tunnels_path, name, hostname.clone()) {
            Ok((entry, creds)) => {
                let path = credentials_file
                    .clone()
                    .unwrap_or_else(|| args.dir.join(format!("{}.json", entry.id)));
                if let Err(e) =
                    burrow_os::settings::write_credentials(&creds, &path.to_string_lossy())
                {
                    eprintln!("error: {e}");
                    return ExitCode::FAILURE;
                }
                println!(
                    "Tunnel credentials written to {}. Keep this file secret.",
                    path.display()
                );
                println!("Created tunnel {name} with id {}", entry.id);
                println!("Token (for --token): {}", creds.to_token());
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("error: {e}");
                ExitCode::FAILURE
            }
        };
    }
    // One thread. Every tunnel byte passes through the one task driving the edge machine, so
    // a second worker added no capacity, only hand-offs: eyeball and loop tasks moved between
    // two threads that woke each other (6,400 wake-ups a second in an HTTP download).
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(async {
        let edge = start(&args, &tunnels_path).await?;
        crate::heap::spawn_trim();
        info!(quic = %edge.quic, http2 = %edge.quic, http = %edge.http, udp_maps = ?edge.udp_maps, icmp_maps = ?edge.icmp_maps, "edge running");
        let mut sig = crate::run::signals();
        sig.recv().await;
        info!("shutting down: closing tunnel connections");
        edge.shutdown().await;
        Ok::<_, String>(())
    }) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // Once: the subscriber already writes errors to stderr.
            error!("{e}");
            ExitCode::FAILURE
        }
    }
}

/// A running edge's addresses.
pub struct RunningEdge {
    /// QUIC address.
    pub quic: SocketAddr,
    /// Public HTTP address.
    pub http: SocketAddr,
    /// Generated CA, if any.
    pub ca: Option<PathBuf>,
    /// Bound address of each `--udp-map`, in flag order.
    pub udp_maps: Vec<SocketAddr>,
    /// Bound address of each `--icmp-map`, in flag order.
    pub icmp_maps: Vec<SocketAddr>,
    cmds: mpsc::UnboundedSender<Cmd>,
}

impl RunningEdge {
    /// Closes every tunnel connection (connectors then reconnect at once, to this edge when it
    /// is back or to another) and stops the QUIC loop. Waits at most a second for the closes
    /// to be sent.
    pub async fn shutdown(&self) {
        let (done, sent) = oneshot::channel();
        if self.cmds.send(Cmd::Shutdown(done)).is_ok() {
            let _ = tokio::time::timeout(Duration::from_secs(1), sent).await;
        }
    }
}

/// Binds the tunnel port: QUIC on UDP and HTTP/2 on TCP at the same address, as Cloudflare's
/// edge does on 7844. With port 0 the kernel picks the UDP port; if that port is taken on TCP,
/// another is tried (a few times).
async fn bind_tunnel_port(listen: &str) -> Result<(QuicSocket, TcpListener), String> {
    let any_port = listen.parse::<SocketAddr>().is_ok_and(|a| a.port() == 0);
    let mut attempts = if any_port { 16 } else { 1 };
    loop {
        let socket = UdpSocket::bind(listen)
            .await
            .and_then(QuicSocket::new)
            .map_err(|e| format!("cannot listen on {listen}: {e}"))?;
        let quic = socket.local_addr().map_err(|e| e.to_string())?;
        match TcpListener::bind(quic).await {
            Ok(tcp) => return Ok((socket, tcp)),
            Err(e) => {
                attempts -= 1;
                if attempts == 0 {
                    return Err(format!("cannot listen on TCP {quic}: {e}"));
                }
            }
        }
    }
}

/// Starts the edge tasks on the current runtime.
pub async fn start(args: &EdgeArgs, tunnels_path: &Path) -> Result<RunningEdge, String> {
    let tunnels = TunnelsFile::load(tunnels_path)?;
    let hostnames = tunnels.hostnames()?;
    let auth = tunnels.auth()?;
    // Every eyeball connection and tunnel stream holds a descriptor.
    crate::datagram::raise_nofile_limit();
    let (chain, key, ca) = identity(&args.dir, args.cert.as_deref(), args.key.as_deref())?;
    let h2_tls =
        burrow_core::http2::tls::server_config(chain.clone(), key.clone_key(), PostQuantum::Prefer)
            .map_err(|e| e.to_string())?;
    let mut server = quinn_proto::ServerConfig::with_crypto(Arc::new(
        tls::server_config(chain, key, PostQuantum::Prefer).map_err(|e| e.to_string())?,
    ));
    let mut seed = [0u8; 32];
    getrandom::fill(&mut seed).map_err(|e| format!("no randomness for the edge: {e}"))?;
    let (socket, tunnel_tcp) = bind_tunnel_port(&args.listen).await?;
    let quic = socket.local_addr().map_err(|e| e.to_string())?;
    // The initial packet size of the socket's family: an IPv6 (or dual-stack) edge must fit
    // 1280-byte paths with IPv6's larger headers, as the connector's side does.
    server.transport_config(QuicSettings::edge().transport_config(quic.is_ipv4()));
    let (accepted_tx, accepted) = mpsc::unbounded_channel();
    tokio::spawn(http2::serve(tunnel_tcp, accepted_tx));
    let http_listener = TcpListener::bind(&args.http)
        .await
        .map_err(|e| format!("cannot listen on {}: {e}", args.http))?;
    let http = http_listener.local_addr().map_err(|e| e.to_string())?;
    let (mapping_sockets, mappings, mapped) =
        crate::edge_udp::bind(&args.datagrams, &tunnels).await?;
    let edge = Edge::new(
        EdgeConfig {
            quic: server,
            http2_tls: h2_tls,
            http2_limits: burrow_core::http2::Limits::default(),
            hostnames,
            sessions: mappings.config,
            mappings: mappings.mappings,
            seed,
        },
        auth,
    );
    let (cmd_tx, cmd_rx) = mpsc::unbounded_channel();
    tokio::spawn(event_loop::run(
        edge,
        socket,
        accepted,
        cmd_rx,
        mapping_sockets,
        args.local_config_dir.clone(),
    ));
    tokio::spawn(eyeball::serve(
        http_listener,
        args.http_limits.clone(),
        cmd_tx.clone(),
    ));
    for map in &args.tcp_map {
        let (listen, target) = map
            .split_once('=')
            .ok_or_else(|| format!("--tcp-map {map}: expected LISTEN=TUNNEL:DEST"))?;
        let (tunnel, dest) = target
            .split_once(':')
            .ok_or_else(|| format!("--tcp-map {map}: expected LISTEN=TUNNEL:DEST"))?;
        let id = tunnels
            .by_name_or_id(tunnel)
            .ok_or_else(|| format!("--tcp-map {map}: unknown tunnel {tunnel}"))?;
        let l = TcpListener::bind(listen)
            .await
            .map_err(|e| format!("cannot listen on {listen}: {e}"))?;
        info!(listen = %l.local_addr().map_err(|e| e.to_string())?, %tunnel, %dest, "TCP mapping");
        tokio::spawn(tcp_map::serve(l, id, dest.to_owned(), cmd_tx.clone()));
    }
    Ok(RunningEdge {
        quic,
        http,
        ca,
        udp_maps: mapped.udp,
        icmp_maps: mapped.icmp,
        cmds: cmd_tx,
    })
}
