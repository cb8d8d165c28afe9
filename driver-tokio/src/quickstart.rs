//! `burrow quickstart`: an edge, a connector and the hello-world origin in one process on
//! loopback. No account, no files to write by hand (state goes to a temporary directory).

use std::process::ExitCode;
use std::sync::atomic::Ordering;
use std::time::Duration;

use burrow_core::ingress::{Ingress, Service};
use burrow_core::settings::RunConfig;
use burrow_core::tunnel::supervisor::IpVersion;
use clap::Args;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;
use uuid::Uuid;

use crate::connector::{self, Edges, Options};
use crate::edge::{self, EdgeArgs};
use crate::metrics::{self, Metrics};
use crate::run::init_logging;

/// `burrow quickstart`.
#[derive(Debug, Args)]
pub struct QuickstartArgs {
    /// Public HTTP address (a free port is picked when this one is taken).
    #[arg(long, default_value = "127.0.0.1:8080")]
    pub http: String,
    /// Make one request through the tunnel, print it, and exit (0 on success).
    #[arg(long)]
    pub once: bool,
    /// Log level.
    #[arg(long, default_value = "warn")]
    pub loglevel: String,
}

/// The hostname the quickstart tunnel serves (`*.localhost` resolves to loopback).
const HOST: &str = "hello.localhost";

/// Entry point.
pub fn main(args: QuickstartArgs) -> ExitCode {
    init_logging(&args.loglevel);
    let rt = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(run(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn run(args: QuickstartArgs) -> Result<(), String> {
    let dir = std::env::temp_dir().join(format!("burrow-quickstart-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let tunnels = dir.join("tunnels.json");
    let (entry, creds) = edge::create_tunnel(&tunnels, "quickstart", vec![HOST.into()])?;
    let http = if std::net::TcpListener::bind(&args.http).is_ok() {
        args.http.clone()
    } else {
        "127.0.0.1:0".into()
    };
    let edge_args = EdgeArgs {
        listen: "127.0.0.1:0".into(),
        http,
        dir: dir.clone(),
        cert: None,
        key: None,
        tunnels: Some(tunnels.clone()),
        tcp_map: Vec::new(),
        datagrams: Default::default(),
        http_limits: Default::default(),
        loglevel: args.loglevel.clone(),
        local_config_dir: None,
        command: None,
    };
    let running = edge::start(&edge_args, &tunnels).await?;
    println!(
        "1. edge listening: QUIC {} (tunnels), HTTP {} (eyeballs); local CA {}",
        running.quic,
        running.http,
        running
            .ca
            .as_ref()
            .map(|p| p.display().to_string())
            .unwrap_or_default()
    );
    println!("2. tunnel created: {} ({})", entry.name, entry.id);
    let cacert = std::fs::read(dir.join("ca.pem")).map_err(|e| e.to_string())?;
    let m = Metrics::new(Uuid::new_v4());
    let listener = metrics::bind("127.0.0.1:0")
        .await
        .map_err(|e| e.to_string())?;
    let metrics_addr = listener.local_addr().map_err(|e| e.to_string())?;
    tokio::spawn(metrics::serve(listener, m.clone()));
    let opts = Options {
        run: RunConfig {
            creds,
            ingress: Ingress::single(Service::HelloWorld),
            local_config: Some(br#"{"ingress":[{"service":"hello_world"}]}"#.to_vec()),
            edges: Edges::Static(vec![running.quic.to_string()]),
            ip_version: IpVersion::Auto,
            edge_bind_address: None,
            cacert: Some(cacert),
            ha_connections: 4,
            grace_period: Duration::from_secs(5),
            // Its edge is burrow's own, here: datagram v3, without asking Cloudflare's
            // feature record (`cfd-features.argotunnel.com`) at every start.
            features: vec!["support_datagram_v3_2".into()],
            tags: Vec::new(),
            max_active_flows: None,
            local_max_active_flows: None,
            dns_resolvers: None,
            local_tcp_connect_timeout: None,
            icmpv4_src: None,
            icmpv6_src: None,
            post_quantum: false,
            quic: Default::default(),
            write_stream_timeout: None,
            rpc_timeout: std::time::Duration::from_secs(5),
            max_edge_addr_retries: 8,
            management: Default::default(),
            protocol: burrow_core::tunnel::protocol::ProtocolFlag::Auto,
            retries: 5,
            token: false,
        },
        // As for cloudflared's quick tunnels: no ICMP proxy.
        icmp: false,
        metrics: m.clone(),
        origin_runtime: None,
    };
    let (stop_tx, stop_rx) = mpsc::unbounded_channel();
    let connector = tokio::spawn(connector::run(opts, stop_rx));
    // Wait for the HA connections.
    for _ in 0..200 {
        if m.ready.load(Ordering::Relaxed) >= 4 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let ready = m.ready.load(Ordering::Relaxed);
    println!(
        "3. connector registered {ready} HA connections over QUIC (metrics: http://{metrics_addr}/metrics, readiness: http://{metrics_addr}/ready)"
    );
    let port = running.http.port();
    println!("4. try it:\n\n   curl http://{HOST}:{port}/\n   curl -H 'Host: {HOST}' http://127.0.0.1:{port}/\n");
    if args.once {
        let result = get(running.http, HOST).await;
        let _ = stop_tx.send(());
        let _ = connector.await;
        let _ = std::fs::remove_dir_all(&dir);
        let (status, body) = result?;
        println!(
            "GET http://{HOST}:{port}/ -> {status}, {} bytes through the tunnel",
            body.len()
        );
        if status != 200 || !body.contains("Congrats") {
            return Err(format!("unexpected answer {status}: {body}"));
        }
        return Ok(());
    }
    println!("   Ctrl-C stops (a second Ctrl-C exits at once).");
    let mut sig = crate::run::signals();
    if sig.recv().await.is_some() {
        let _ = stop_tx.send(());
        // The connector exits once drained; a second signal makes it immediate.
        let mut connector = connector;
        tokio::select! {
            _ = &mut connector => {}
            _ = sig.recv() => { let _ = stop_tx.send(()); let _ = connector.await; }
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

/// One HTTP/1.1 GET with `Connection: close`; returns status and body.
async fn get(addr: std::net::SocketAddr, host: &str) -> Result<(u16, String), String> {
    let mut s = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|e| e.to_string())?;
    s.write_all(format!("GET / HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n").as_bytes())
        .await
        .map_err(|e| e.to_string())?;
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut out))
        .await
        .map_err(|_| "timed out".to_owned())?
        .map_err(|e| e.to_string())?;
    let text = String::from_utf8_lossy(&out).into_owned();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    Ok((status, body))
}
