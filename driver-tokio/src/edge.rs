//! `burrow edge`: a self-hosted edge. Tunnel connections come in over QUIC (UDP) or HTTP/2 over
//! TLS (TCP, [`crate::edge_http2`]) on the same port and are served by burrow-core's
//! [`EdgeTransports`]; registrations are checked against a tunnels file; eyeball
//! HTTP/1.1 requests (WebSocket upgrades included) are routed by `Host` to a registered tunnel,
//! spread over its HA connections; `--tcp-map` ports carry raw TCP streams; `--udp-map` and
//! `--icmp-map` ports carry UDP sessions and ping as QUIC datagrams ([`crate::edge_udp`]).
//!
//! One task owns the endpoint; listener tasks talk to it through [`Cmd`]s and get each stream's
//! response through a channel. Response bytes are read from the endpoint one chunk per credit,
//! request bytes go in one chunk per acknowledgement, so QUIC's or HTTP/2's flow control paces
//! both ways.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::process::ExitCode;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use burrow_core::control::{ConnectionDetails, RegistrationError};
use burrow_core::edge::auth::TunnelAuth;
use burrow_core::edge::forwarded::{request_metadata, HOP_BY_HOP};
use burrow_core::edge::hostnames::HostnameTable;
use burrow_core::edge::log_budget::{LogBudget, Verdict};
use burrow_core::edge::routes::Routes;
use burrow_core::http2;
use burrow_core::quic::tls::{self, PostQuantum};
use burrow_core::quic::transport::QuicSettings;
use burrow_core::quic::SERVER_NAME;
use burrow_core::stream::connect::key;
use burrow_core::stream::connect::{ConnectRequest, ConnectionType, Metadata};
use burrow_core::tunnel::edge::{ConnId, EdgeEndpoint, EdgeEvent};
use burrow_core::tunnel::edge_http2::Http2Edge;
use burrow_core::tunnel::edge_transports::{DataStream, EdgeTransports};
use bytes::Bytes;
use clap::{Args, Subcommand};
use http_body_util::BodyExt;
use hyper::body::Frame;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, UdpSocket};
use tokio::sync::{mpsc, oneshot, Semaphore};
use tracing::{debug, error, info, warn};
use uuid::Uuid;

use crate::creds::Credentials;
use crate::edge_http2::Sockets;
use crate::edge_udp::{DatagramArgs, EdgeDatagrams};
use crate::quic_socket::{QuicSocket, RecvBufs};
use crate::run::init_logging;

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
        /// Where to write the credentials file (default DIR/<id>.json).
        #[arg(long)]
        credentials_file: Option<PathBuf>,
    },
}

/// One tunnel the edge knows.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TunnelEntry {
    /// Name.
    pub name: String,
    /// UUID.
    pub id: Uuid,
    /// Account tag.
    pub account_tag: String,
    /// Secret, base64.
    pub secret: String,
    /// Hostnames routed to it.
    #[serde(default)]
    pub hostnames: Vec<String>,
}

/// The tunnels file.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct TunnelsFile {
    /// Every tunnel.
    pub tunnels: Vec<TunnelEntry>,
}

impl TunnelsFile {
    /// Reads it; a missing file is empty.
    pub fn load(path: &Path) -> Result<Self, String> {
        match std::fs::read(path) {
            Ok(b) => serde_json::from_slice(&b).map_err(|e| format!("{}: {e}", path.display())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Self::default()),
            Err(e) => Err(format!("{}: {e}", path.display())),
        }
    }

    fn save(&self, path: &Path) -> Result<(), String> {
        let text = serde_json::to_string_pretty(self).map_err(|e| e.to_string())?;
        write_private(path, text.as_bytes())
    }

    /// Every tunnel's hostnames, indexed; a hostname claimed twice or malformed is an error.
    fn hostnames(&self) -> Result<HostnameTable, String> {
        let mut table = HostnameTable::new();
        for t in &self.tunnels {
            for h in &t.hostnames {
                table
                    .insert(h, t.id)
                    .map_err(|e| format!("tunnel {}: {e}", t.name))?;
            }
        }
        Ok(table)
    }

    /// Every tunnel's credentials; a secret that is not base64 is an error.
    fn auth(&self) -> Result<TunnelAuth, String> {
        let mut auth = TunnelAuth::new();
        for t in &self.tunnels {
            let secret = STANDARD
                .decode(&t.secret)
                .map_err(|e| format!("tunnel {}: secret: {e}", t.name))?;
            auth.insert(t.id, &t.account_tag, secret);
        }
        Ok(auth)
    }

    /// A tunnel by name or id.
    pub(crate) fn by_name_or_id(&self, s: &str) -> Option<Uuid> {
        self.tunnels
            .iter()
            .find(|t| t.name == s || t.id.to_string() == s)
            .map(|t| t.id)
    }
}

/// Creates the state directory (and missing parents) owner-only: it holds every tunnel's
/// secret and the edge's private key.
fn create_state_dir(dir: &Path) -> Result<(), String> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|e| format!("{}: {e}", dir.display()))
}

/// Writes a secret file owner-only (0600), atomically: a temporary file in the same directory,
/// synced, then renamed over `path`, so neither a reader nor a crash ever sees it half written
/// or with wider permissions.
fn write_private(path: &Path, bytes: &[u8]) -> Result<(), String> {
    use std::io::Write;
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let err = |p: &Path, e: std::io::Error| format!("{}: {e}", p.display());
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(format!(".tmp{}", std::process::id()));
    let tmp = path.with_file_name(name);
    let written = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .and_then(|mut f| {
            // A leftover temporary file from a crash may have been created wider.
            f.set_permissions(std::fs::Permissions::from_mode(0o600))?;
            f.write_all(bytes)?;
            f.sync_all()
        })
        .and_then(|()| std::fs::rename(&tmp, path));
    if let Err(e) = written {
        let _ = std::fs::remove_file(&tmp);
        return Err(err(path, e));
    }
    Ok(())
}

/// Creates a tunnel: fresh UUID and 32-byte secret.
pub fn create_tunnel(
    tunnels_path: &Path,
    name: &str,
    hostnames: Vec<String>,
) -> Result<(TunnelEntry, Credentials), String> {
    let mut file = TunnelsFile::load(tunnels_path)?;
    if file.tunnels.iter().any(|t| t.name == name) {
        return Err(format!("tunnel with name {name} already exists"));
    }
    let mut table = file.hostnames()?;
    let id = Uuid::new_v4();
    for h in &hostnames {
        table.insert(h, id).map_err(|e| e.to_string())?;
    }
    let mut secret = vec![0u8; 32];
    getrandom::fill(&mut secret).map_err(|e| e.to_string())?;
    let mut account = [0u8; 16];
    getrandom::fill(&mut account).map_err(|e| e.to_string())?;
    let entry = TunnelEntry {
        name: name.into(),
        id,
        account_tag: hex::encode(account),
        secret: STANDARD.encode(&secret),
        hostnames,
    };
    file.tunnels.push(entry.clone());
    file.save(tunnels_path)?;
    let creds = Credentials {
        account_tag: entry.account_tag.clone(),
        secret,
        tunnel_id: entry.id,
        endpoint: String::new(),
    };
    Ok((entry, creds))
}

/// The edge's TLS identity: given files, or a local CA (kept under `dir`) and a certificate for
/// cloudflared's SNI names signed by it. Returns the chain, the key and the CA path if generated.
pub fn identity(
    dir: &Path,
    cert: Option<&Path>,
    key: Option<&Path>,
) -> Result<
    (
        Vec<rustls::pki_types::CertificateDer<'static>>,
        rustls::pki_types::PrivateKeyDer<'static>,
        Option<PathBuf>,
    ),
    String,
> {
    let read = |p: &Path| std::fs::read(p).map_err(|e| format!("{}: {e}", p.display()));
    if let (Some(c), Some(k)) = (cert, key) {
        let chain = tls::certs_from_pem(&read(c)?, "--cert").map_err(|e| e.to_string())?;
        let key = tls::key_from_pem(&read(k)?, "--key").map_err(|e| e.to_string())?;
        return Ok((chain, key, None));
    }
    create_state_dir(dir)?;
    let ca_path = dir.join("ca.pem");
    let cert_path = dir.join("edge-cert.pem");
    let key_path = dir.join("edge-key.pem");
    if !(ca_path.exists() && cert_path.exists() && key_path.exists()) {
        let ca_key = rcgen::KeyPair::generate().map_err(|e| e.to_string())?;
        let mut ca_params =
            rcgen::CertificateParams::new(Vec::<String>::new()).map_err(|e| e.to_string())?;
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "burrow local edge CA");
        let ca_cert = ca_params.self_signed(&ca_key).map_err(|e| e.to_string())?;
        let issuer = rcgen::Issuer::new(ca_params, ca_key);
        let leaf_key = rcgen::KeyPair::generate().map_err(|e| e.to_string())?;
        let leaf = rcgen::CertificateParams::new(vec![
            SERVER_NAME.to_owned(),
            "h2.cftunnel.com".to_owned(),
            "localhost".to_owned(),
        ])
        .map_err(|e| e.to_string())?
        .signed_by(&leaf_key, &issuer)
        .map_err(|e| e.to_string())?;
        std::fs::write(&cert_path, format!("{}{}", leaf.pem(), ca_cert.pem()))
            .map_err(|e| e.to_string())?;
        write_private(&key_path, leaf_key.serialize_pem().as_bytes())?;
        // Last: connectors (and tests) take the CA's presence to mean the identity is whole.
        std::fs::write(&ca_path, ca_cert.pem()).map_err(|e| e.to_string())?;
        info!(ca = %ca_path.display(), "generated a local edge CA; connectors trust it with --cacert");
    }
    let chain =
        tls::certs_from_pem(&read(&cert_path)?, "edge-cert.pem").map_err(|e| e.to_string())?;
    let key = tls::key_from_pem(&read(&key_path)?, "edge-key.pem").map_err(|e| e.to_string())?;
    Ok((chain, key, Some(ca_path)))
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
                if let Err(e) = creds.write_file(&path.to_string_lossy()) {
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
    let rt = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(async {
        let edge = start(&args, &tunnels_path).await?;
        info!(quic = %edge.quic, http2 = %edge.quic, http = %edge.http, udp_maps = ?edge.udp_maps, icmp_maps = ?edge.icmp_maps, "edge running");
        let mut sig = crate::run::signals();
        sig.recv().await;
        info!("shutting down: closing tunnel connections");
        edge.shutdown().await;
        Ok::<_, String>(())
    }) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            error!("{e}");
            eprintln!("error: {e}");
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

/// Starts the edge tasks on the current runtime.
pub async fn start(args: &EdgeArgs, tunnels_path: &Path) -> Result<RunningEdge, String> {
    let tunnels = TunnelsFile::load(tunnels_path)?;
    let hostnames = Arc::new(tunnels.hostnames()?);
    let auth = tunnels.auth()?;
    // Every eyeball connection and tunnel stream holds a descriptor.
    crate::datagram::raise_nofile_limit();
    let (chain, key, ca) = identity(&args.dir, args.cert.as_deref(), args.key.as_deref())?;
    let h2_tls = http2::tls::server_config(chain.clone(), key.clone_key(), PostQuantum::Prefer)
        .map_err(|e| e.to_string())?;
    let mut server = quinn_proto::ServerConfig::with_crypto(Arc::new(
        tls::server_config(chain, key, PostQuantum::Prefer).map_err(|e| e.to_string())?,
    ));
    server.transport_config(QuicSettings::edge().transport_config(true));
    let mut seed = [0u8; 32];
    let _ = getrandom::fill(&mut seed);
    let endpoint = EdgeTransports {
        quic: EdgeEndpoint::new(server, seed),
        http2: Http2Edge::new(h2_tls, http2::Limits::default()),
    };
    let socket = UdpSocket::bind(&args.listen)
        .await
        .and_then(QuicSocket::new)
        .map_err(|e| format!("cannot listen on {}: {e}", args.listen))?;
    let quic = socket.local_addr().map_err(|e| e.to_string())?;
    // HTTP/2 connectors dial the same address over TCP, as on Cloudflare's 7844.
    let tunnel_tcp = TcpListener::bind(quic)
        .await
        .map_err(|e| format!("cannot listen on TCP {quic}: {e}"))?;
    let (accepted_tx, accepted) = mpsc::unbounded_channel();
    tokio::spawn(crate::edge_http2::serve(tunnel_tcp, accepted_tx));
    let http_listener = TcpListener::bind(&args.http)
        .await
        .map_err(|e| format!("cannot listen on {}: {e}", args.http))?;
    let http = http_listener.local_addr().map_err(|e| e.to_string())?;
    let (datagrams, mapped) = crate::edge_udp::bind(&args.datagrams, &tunnels).await?;
    let (cmd_tx, cmd_rx) = mpsc::unbounded_channel();
    tokio::spawn(edge_loop(
        endpoint, socket, accepted, auth, cmd_rx, datagrams,
    ));
    tokio::spawn(serve_http(
        http_listener,
        hostnames,
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
        tokio::spawn(serve_tcp(l, id, dest.to_owned(), cmd_tx.clone()));
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

type Key = (ConnId, DataStream);

/// What a listener task asks of the edge loop.
enum Cmd {
    Open {
        tunnel: Uuid,
        dest: String,
        kind: ConnectionType,
        metadata: Vec<(String, String)>,
        events: mpsc::UnboundedSender<StreamEv>,
        reply: oneshot::Sender<Result<Key, String>>,
    },
    Body(Key, Bytes),
    Finish(Key),
    Reset(Key),
    ReadMore(Key),
    /// Close every connection, send the closes, then answer and stop.
    Shutdown(oneshot::Sender<()>),
}

/// What the edge loop tells a listener task about its stream.
#[derive(Debug)]
enum StreamEv {
    Response {
        error: String,
        metadata: Vec<(String, String)>,
    },
    /// A request-body chunk was taken: send the next.
    Ack,
    Body(Bytes),
    End,
    Reset,
}

struct Stream {
    events: mpsc::UnboundedSender<StreamEv>,
    /// Request bytes waiting for room.
    unsent: VecDeque<Bytes>,
    finish: bool,
    readable: bool,
    credit: bool,
}

/// Bytes queued per request stream inside the endpoint.
const SEND_WINDOW: usize = 256 * 1024;
/// Largest response chunk handed to a listener at once.
const READ_CHUNK: usize = 64 * 1024;

async fn edge_loop(
    mut ep: EdgeTransports,
    socket: QuicSocket,
    mut accepted: mpsc::UnboundedReceiver<(tokio::net::TcpStream, SocketAddr)>,
    auth: TunnelAuth,
    mut cmds: mpsc::UnboundedReceiver<Cmd>,
    mut datagrams: EdgeDatagrams,
) {
    // Read in the loop, in batches, into buffers reused for every read.
    let mut recv_bufs = RecvBufs::new();
    let mut routes = Routes::new();
    // Anyone may try to register: refusals are logged a few at a time.
    let mut refusals = LogBudget::new(Duration::from_secs(10), 5);
    let mut streams: HashMap<Key, Stream> = HashMap::new();
    // Room for a GSO batch of full-size datagrams.
    let mut buf = Vec::with_capacity(64 * 1500);
    let mut closing: Option<oneshot::Sender<()>> = None;
    let (socket_tx, mut socket_rx) = mpsc::unbounded_channel();
    let mut sockets = Sockets::new(socket_tx);
    loop {
        // Drain.
        loop {
            let now = Instant::now();
            let mut progress = false;
            while let Some(ev) = ep.poll_event() {
                progress = true;
                match ev {
                    EdgeEvent::RegisterRequested { conn, registration } => {
                        let result = auth.check(&registration).and_then(|tunnel| {
                            routes
                                .register(conn, tunnel)
                                .map_err(|e| RegistrationError {
                                    cause: e.to_string(),
                                    should_retry: false,
                                    retry_after: Duration::ZERO,
                                })
                        });
                        let result = result.map(|()| ConnectionDetails {
                            uuid: Uuid::new_v4(),
                            location: "LOCAL".into(),
                            remotely_managed: false,
                        });
                        match &result {
                            Ok(_) => {
                                let http2 = ep.is_http2(conn);
                                let protocol = if http2 { "http2" } else { "quic" };
                                info!(conn = conn.0, tunnel = %registration.tunnel_id, conn_index = registration.conn_index, protocol, "tunnel connection registered");
                                // No datagrams on HTTP/2 (PROTOCOL.md C§1.1).
                                if !http2 {
                                    datagrams.connection_registered(now, conn, &registration);
                                }
                            }
                            Err(e) => {
                                if let Verdict::Log { suppressed } = refusals.check(now) {
                                    warn!(conn = conn.0, tunnel = %registration.tunnel_id, cause = %e.cause, suppressed, "registration refused");
                                }
                            }
                        }
                        if let Err(e) = ep.respond_registration(now, conn, result) {
                            warn!(conn = conn.0, error = %e, "cannot answer registration");
                        }
                    }
                    EdgeEvent::Unregistered { conn } => {
                        info!(
                            conn = conn.0,
                            "tunnel connection unregistered; no new requests"
                        );
                        routes.drain(conn);
                        datagrams.connection_gone(now, conn);
                    }
                    EdgeEvent::ConnectionClosed { conn, reason } => {
                        debug!(conn = conn.0, %reason, "tunnel connection closed");
                        routes.remove(conn);
                        datagrams.connection_gone(now, conn);
                        streams.retain(|k, s| {
                            if k.0 == conn {
                                let _ = s.events.send(StreamEv::Reset);
                                false
                            } else {
                                true
                            }
                        });
                    }
                    EdgeEvent::LocalConfiguration { conn, config } => {
                        debug!(conn = conn.0, config = %String::from_utf8_lossy(&config), "local configuration");
                    }
                    EdgeEvent::ConfigurationResult { .. } => {}
                    // Mapped UDP sessions are v3 only; no v2 RPC sessions are opened here.
                    EdgeEvent::UdpSessionRegistered { .. }
                    | EdgeEvent::UdpSessionUnregistered { .. } => {}
                    EdgeEvent::Response {
                        conn,
                        stream,
                        error,
                        metadata,
                    } => {
                        if let Some(s) = streams.get(&(conn, stream)) {
                            let _ = s.events.send(StreamEv::Response { error, metadata });
                        }
                    }
                    EdgeEvent::ResponseReadable { conn, stream } => {
                        if let Some(s) = streams.get_mut(&(conn, stream)) {
                            s.readable = true;
                        }
                    }
                    EdgeEvent::StreamReset { conn, stream } => {
                        if let Some(s) = streams.remove(&(conn, stream)) {
                            let _ = s.events.send(StreamEv::Reset);
                        }
                    }
                }
            }
            // Request bodies in, response bodies out, as far as credit goes.
            let keys: Vec<Key> = streams.keys().copied().collect();
            for key in keys {
                let Some(s) = streams.get_mut(&key) else {
                    continue;
                };
                if s.events.is_closed() {
                    // The eyeball side went away (at any point of the exchange): nobody reads
                    // this stream, so reset it; stopping it gives its unread bytes back to the
                    // connection's receive window.
                    streams.remove(&key);
                    let _ = ep.reset_request(now, key.0, key.1);
                    progress = true;
                    continue;
                }
                while let Some(front) = s.unsent.front_mut() {
                    match ep.send_request_body(now, key.0, key.1, front, SEND_WINDOW) {
                        Ok(n) if n == front.len() => {
                            s.unsent.pop_front();
                            let _ = s.events.send(StreamEv::Ack);
                            progress = true;
                        }
                        Ok(n) => {
                            *front = front.slice(n..);
                            progress |= n > 0;
                            break;
                        }
                        Err(_) => {
                            s.unsent.clear();
                            break;
                        }
                    }
                }
                if s.finish && s.unsent.is_empty() {
                    s.finish = false;
                    let _ = ep.finish_request(now, key.0, key.1);
                    progress = true;
                }
                if s.readable && s.credit {
                    let mut chunk = Vec::new();
                    match ep.read_response(now, key.0, key.1, READ_CHUNK, &mut chunk) {
                        Ok(done) => {
                            progress = true;
                            s.readable = false;
                            if !chunk.is_empty() {
                                s.credit = false;
                                let _ = s.events.send(StreamEv::Body(Bytes::from(chunk)));
                            }
                            if done {
                                let _ = s.events.send(StreamEv::End);
                                streams.remove(&key);
                            }
                        }
                        Err(_) => {
                            // Response head not in yet, or the stream is gone.
                            s.readable = false;
                        }
                    }
                }
            }
            progress |= datagrams.pump(now, &mut ep.quic);
            progress |= sockets.pump(now, &mut ep);
            while let Some(t) = ep
                .quic
                .poll_transmit(now, socket.max_transmit_segments(), &mut buf)
            {
                progress = true;
                // A full socket buffer drops the datagrams: QUIC recovers them as losses.
                if let Err(e) = socket.try_send(&t, &buf) {
                    if e.kind() != std::io::ErrorKind::WouldBlock {
                        debug!(error = %e, to = %t.destination, "send failed");
                    }
                }
            }
            if !progress {
                break;
            }
        }
        if let Some(done) = closing.take() {
            // The closes went out with the drain above.
            let _ = done.send(());
            return;
        }
        let deadline = [ep.poll_timeout(), datagrams.poll_timeout()]
            .into_iter()
            .flatten()
            .min();
        let sleep = async {
            match deadline {
                Some(d) => tokio::time::sleep_until(tokio::time::Instant::from_std(d)).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            Ok(()) = std::future::poll_fn(|cx| socket.poll_recv_ready(cx)) => {
                let now = Instant::now();
                let got = socket.read_round(&mut recv_bufs, |r| ep.quic.handle_received(now, r));
                if let Err(e) = got {
                    debug!(error = %e, "UDP receive error");
                }
            }
            Some(cmd) = cmds.recv() => {
                let now = Instant::now();
                let mut next = Some(cmd);
                while let Some(cmd) = next.take().or_else(|| cmds.try_recv().ok()) {
                    if let Cmd::Shutdown(done) = cmd {
                        ep.close_all(now, "edge shutting down");
                        closing = Some(done);
                        break;
                    }
                    on_cmd(now, &mut ep, &mut routes, &mut streams, cmd);
                }
            }
            Some((sock, peer)) = accepted.recv() => {
                sockets.accept(Instant::now(), &mut ep, sock, peer);
            }
            Some(ev) = socket_rx.recv() => {
                sockets.on_event(ev);
                while let Ok(ev) = socket_rx.try_recv() {
                    sockets.on_event(ev);
                }
            }
            Some(packet) = datagrams.recv() => {
                let now = Instant::now();
                datagrams.client(now, packet);
                while let Some(packet) = datagrams.try_recv() {
                    datagrams.client(now, packet);
                }
            }
            () = sleep => {
                let now = Instant::now();
                ep.handle_timeout(now);
                datagrams.handle_timeout(now);
            }
        }
    }
}

fn on_cmd(
    now: Instant,
    ep: &mut EdgeTransports,
    routes: &mut Routes,
    streams: &mut HashMap<Key, Stream>,
    cmd: Cmd,
) {
    match cmd {
        Cmd::Open {
            tunnel,
            dest,
            kind,
            metadata,
            events,
            reply,
        } => {
            let Some(conn) = routes.pick(tunnel) else {
                let _ = reply.send(Err("no connection to the tunnel".into()));
                return;
            };
            let meta: Vec<Metadata<'_>> = metadata
                .iter()
                .map(|(key, val)| Metadata { key, val })
                .collect();
            let request = ConnectRequest {
                dest: &dest,
                connection_type: kind,
                metadata: &meta,
            };
            match ep.open_request(now, conn, &request) {
                Ok(stream) => {
                    streams.insert(
                        (conn, stream),
                        Stream {
                            events,
                            unsent: VecDeque::new(),
                            finish: false,
                            readable: false,
                            credit: true,
                        },
                    );
                    let _ = reply.send(Ok((conn, stream)));
                }
                Err(e) => {
                    let _ = reply.send(Err(e.to_string()));
                }
            }
        }
        Cmd::Body(key, bytes) => {
            if let Some(s) = streams.get_mut(&key) {
                s.unsent.push_back(bytes);
            }
        }
        Cmd::Finish(key) => {
            if let Some(s) = streams.get_mut(&key) {
                s.finish = true;
            }
        }
        Cmd::Reset(key) => {
            if streams.remove(&key).is_some() {
                let _ = ep.reset_request(now, key.0, key.1);
            }
        }
        Cmd::ReadMore(key) => {
            if let Some(s) = streams.get_mut(&key) {
                s.credit = true;
                // Whatever is buffered may be readable without a new event.
                s.readable = true;
            }
        }
        // Taken by the loop before it gets here.
        Cmd::Shutdown(_) => {}
    }
}

/// Opens a stream through the edge loop.
async fn open(
    cmds: &mpsc::UnboundedSender<Cmd>,
    tunnel: Uuid,
    dest: String,
    kind: ConnectionType,
    metadata: Vec<(String, String)>,
) -> Result<(Key, mpsc::UnboundedReceiver<StreamEv>), String> {
    let (events, rx) = mpsc::unbounded_channel();
    let (reply, answer) = oneshot::channel();
    cmds.send(Cmd::Open {
        tunnel,
        dest,
        kind,
        metadata,
        events,
        reply,
    })
    .map_err(|_| "edge stopped".to_owned())?;
    let key = answer.await.map_err(|_| "edge stopped".to_owned())??;
    Ok((key, rx))
}

/// Response body fed by the edge loop, one chunk per credit.
struct ChanBody {
    rx: mpsc::UnboundedReceiver<Bytes>,
    cmds: mpsc::UnboundedSender<Cmd>,
    key: Key,
    done: bool,
}

impl hyper::body::Body for ChanBody {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, std::io::Error>>> {
        if self.done {
            return Poll::Ready(None);
        }
        match self.rx.poll_recv(cx) {
            Poll::Ready(Some(b)) => {
                let _ = self.cmds.send(Cmd::ReadMore(self.key));
                Poll::Ready(Some(Ok(Frame::data(b))))
            }
            Poll::Ready(None) => {
                self.done = true;
                Poll::Ready(None)
            }
            Poll::Pending => Poll::Pending,
        }
    }
}

impl Drop for ChanBody {
    fn drop(&mut self) {
        if !self.done {
            let _ = self.cmds.send(Cmd::Reset(self.key));
        }
    }
}

async fn serve_http(
    listener: TcpListener,
    hostnames: Arc<HostnameTable>,
    limits: HttpLimits,
    cmds: mpsc::UnboundedSender<Cmd>,
) {
    let slots = Arc::new(Semaphore::new(limits.http_max_connections));
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(limits.http_header_timeout);
    loop {
        // At the cap, stop accepting: further eyeballs wait in the kernel's backlog.
        let Ok(slot) = slots.clone().acquire_owned().await else {
            return;
        };
        let (stream, peer) = crate::accept::accept(&listener, "eyeball HTTP").await;
        let _ = stream.set_nodelay(true);
        let hostnames = hostnames.clone();
        let cmds = cmds.clone();
        let conn = http.serve_connection(
            TokioIo::new(stream),
            service_fn(move |req| {
                let hostnames = hostnames.clone();
                let cmds = cmds.clone();
                async move {
                    Ok::<_, std::convert::Infallible>(handle(req, peer, &hostnames, cmds).await)
                }
            }),
        );
        tokio::spawn(async move {
            let _ = conn.with_upgrades().await;
            drop(slot);
        });
    }
}

type Resp = hyper::Response<http_body_util::Either<ChanBody, http_body_util::Full<Bytes>>>;

fn plain(status: u16, text: &str) -> Resp {
    let mut r = hyper::Response::new(http_body_util::Either::Right(http_body_util::Full::new(
        Bytes::from(text.to_owned()),
    )));
    *r.status_mut() = http::StatusCode::from_u16(status).unwrap_or(http::StatusCode::BAD_GATEWAY);
    r
}

async fn handle(
    mut req: hyper::Request<hyper::body::Incoming>,
    peer: SocketAddr,
    hostnames: &HostnameTable,
    cmds: mpsc::UnboundedSender<Cmd>,
) -> Resp {
    let host = req
        .headers()
        .get(http::header::HOST)
        .and_then(|h| h.to_str().ok())
        .or_else(|| req.uri().host())
        .unwrap_or("")
        .to_owned();
    let Some(tunnel) = hostnames.route(&host) else {
        return plain(404, "no tunnel serves this hostname\n");
    };
    let websocket = req
        .headers()
        .get(http::header::UPGRADE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("websocket"));
    let pq = req
        .uri()
        .path_and_query()
        .map_or("/", |p| p.as_str())
        .to_owned();
    let metadata = request_metadata(
        req.method().as_str(),
        &host,
        req.headers()
            .iter()
            .filter_map(|(name, value)| Some((name.as_str(), value.to_str().ok()?))),
        peer.ip(),
    );
    let kind = if websocket {
        ConnectionType::WebSocket
    } else {
        ConnectionType::Http
    };
    let (key, mut events) =
        match open(&cmds, tunnel, format!("http://{host}{pq}"), kind, metadata).await {
            Ok(x) => x,
            Err(e) => return plain(502, &format!("{e}\n")),
        };
    // Request body (not for WebSocket: bytes flow after the upgrade).
    let (ack_tx, ack_rx) = mpsc::unbounded_channel::<()>();
    let mut ack_rx = Some(ack_rx);
    let upgrade = if websocket {
        Some(hyper::upgrade::on(&mut req))
    } else {
        let body = req.into_body();
        let c = cmds.clone();
        let mut ack_rx = ack_rx.take();
        tokio::spawn(async move {
            let mut body = body;
            while let Some(frame) = body.frame().await {
                match frame {
                    Ok(f) => {
                        if let Ok(data) = f.into_data() {
                            if data.is_empty() {
                                continue;
                            }
                            if c.send(Cmd::Body(key, data)).is_err() {
                                return;
                            }
                            let acked = match ack_rx.as_mut() {
                                Some(rx) => rx.recv().await.is_some(),
                                None => false,
                            };
                            if !acked {
                                return;
                            }
                        }
                    }
                    Err(_) => {
                        let _ = c.send(Cmd::Reset(key));
                        return;
                    }
                }
            }
            let _ = c.send(Cmd::Finish(key));
        });
        None
    };
    // Wait for the response head, passing acks along.
    let (error, meta) = loop {
        match events.recv().await {
            Some(StreamEv::Response { error, metadata }) => break (error, metadata),
            Some(StreamEv::Ack) => {
                let _ = ack_tx.send(());
            }
            Some(StreamEv::Reset) | None | Some(StreamEv::End) => {
                return plain(502, "the tunnel reset the request\n");
            }
            Some(StreamEv::Body(_)) => {}
        }
    };
    if !error.is_empty() {
        let _ = cmds.send(Cmd::Reset(key));
        return plain(502, &format!("{error}\n"));
    }
    let status = meta
        .iter()
        .find(|(k, _)| k == key::HTTP_STATUS)
        .and_then(|(_, v)| v.parse::<u16>().ok())
        .unwrap_or(502);
    let (body_tx, body_rx) = mpsc::unbounded_channel::<Bytes>();
    let mut builder = hyper::Response::builder().status(status);
    for (k, v) in &meta {
        if let Some(name) = k.strip_prefix(key::HTTP_HEADER_PREFIX) {
            let lower = name.to_ascii_lowercase();
            if !websocket && (HOP_BY_HOP.contains(&lower.as_str()) || lower == "transfer-encoding")
            {
                continue;
            }
            builder = builder.header(name, v);
        }
    }
    if status == 101 {
        if let (Some(upgrade), Some(ack_rx)) = (upgrade, ack_rx.take()) {
            let c = cmds.clone();
            tokio::spawn(async move {
                let Ok(upgraded) = upgrade.await else {
                    let _ = c.send(Cmd::Reset(key));
                    return;
                };
                let (rd, wr) = tokio::io::split(TokioIo::new(upgraded));
                splice(key, rd, wr, c, events, ack_tx, ack_rx).await;
            });
        }
        return builder
            .body(http_body_util::Either::Right(http_body_util::Full::new(
                Bytes::new(),
            )))
            .unwrap_or_else(|_| plain(502, "bad response headers\n"));
    }
    // Forward body events into the response body.
    tokio::spawn(async move {
        while let Some(ev) = events.recv().await {
            match ev {
                StreamEv::Body(b) => {
                    if body_tx.send(b).is_err() {
                        return;
                    }
                }
                StreamEv::Ack => {
                    let _ = ack_tx.send(());
                }
                StreamEv::End => return,
                // Dropping body_tx without End: hyper sees an early end; for a body with a
                // length that aborts the connection, which is what a reset must look like.
                StreamEv::Reset => return,
                StreamEv::Response { .. } => {}
            }
        }
    });
    let body = ChanBody {
        rx: body_rx,
        cmds,
        key,
        done: false,
    };
    builder
        .body(http_body_util::Either::Left(body))
        .unwrap_or_else(|_| plain(502, "bad response headers\n"))
}

/// Pipes a raw byte stream (an upgraded WebSocket, a mapped TCP connection) both ways through
/// tunnel stream `key`. Each read goes up only after the previous one was acknowledged, so a
/// slow tunnel holds the socket instead of filling memory.
async fn splice(
    key: Key,
    mut rd: impl tokio::io::AsyncRead + Unpin,
    mut wr: impl tokio::io::AsyncWrite + Unpin,
    cmds: mpsc::UnboundedSender<Cmd>,
    mut events: mpsc::UnboundedReceiver<StreamEv>,
    ack_tx: mpsc::UnboundedSender<()>,
    mut ack_rx: mpsc::UnboundedReceiver<()>,
) {
    let c = cmds.clone();
    let up = async move {
        let mut buf = vec![0u8; 32 * 1024];
        loop {
            match rd.read(&mut buf).await {
                Ok(0) | Err(_) => {
                    let _ = c.send(Cmd::Finish(key));
                    break;
                }
                Ok(n) => {
                    if c.send(Cmd::Body(key, Bytes::copy_from_slice(&buf[..n])))
                        .is_err()
                        || ack_rx.recv().await.is_none()
                    {
                        break;
                    }
                }
            }
        }
    };
    let down = async move {
        while let Some(ev) = events.recv().await {
            match ev {
                StreamEv::Body(b) => {
                    if wr.write_all(&b).await.is_err() {
                        let _ = cmds.send(Cmd::Reset(key));
                        break;
                    }
                    let _ = cmds.send(Cmd::ReadMore(key));
                }
                StreamEv::Ack => {
                    let _ = ack_tx.send(());
                }
                StreamEv::End | StreamEv::Reset => {
                    let _ = wr.shutdown().await;
                    break;
                }
                StreamEv::Response { .. } => {}
            }
        }
    };
    tokio::join!(up, down);
}

/// A `--tcp-map` listener: every accepted connection is a TCP stream to `dest` in the tunnel.
async fn serve_tcp(
    listener: TcpListener,
    tunnel: Uuid,
    dest: String,
    cmds: mpsc::UnboundedSender<Cmd>,
) {
    loop {
        let (sock, _) = crate::accept::accept(&listener, "TCP mapping").await;
        let _ = sock.set_nodelay(true);
        let cmds = cmds.clone();
        let dest = dest.clone();
        tokio::spawn(async move {
            let (key, mut events) =
                match open(&cmds, tunnel, dest, ConnectionType::Tcp, Vec::new()).await {
                    Ok(x) => x,
                    Err(e) => {
                        debug!(error = %e, "TCP mapping: cannot open a stream");
                        return;
                    }
                };
            // The ack (ConnectResponse) first.
            match events.recv().await {
                Some(StreamEv::Response { error, .. }) if error.is_empty() => {}
                other => {
                    debug!(?other, "TCP mapping refused");
                    let _ = cmds.send(Cmd::Reset(key));
                    return;
                }
            }
            let (rd, wr) = sock.into_split();
            let (ack_tx, ack_rx) = mpsc::unbounded_channel::<()>();
            splice(key, rd, wr, cmds, events, ack_tx, ack_rx).await;
        });
    }
}
