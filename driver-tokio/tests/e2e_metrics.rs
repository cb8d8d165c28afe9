//! `/metrics` as dashboards built for cloudflared query it, scraped from a real connector
//! serving real traffic through `burrow edge`: the `quic_client_*` families per `conn_index`,
//! `process_*`, `build_info`, `cloudflared_proxy_connect_latency` for TCP streams, the
//! registrations and server locations (the checks burrow-mio's `e2e.rs` runs too); and
//! `--metrics 127.0.0.1:0` on an ephemeral port. With `BURROW_CLOUDFLARED` (`--ignored`), the
//! names, types and labels of every family beside a stock cloudflared's.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use burrow_tokio::testbed::{self, ConnectorOpts, EdgeOpts, Proc, Testbed};

mod common;
use common::client::{
    check_quic_and_process_metrics, counting_ingress, dashboards_after_traffic, families,
    metrics_text, request_counts_by_code,
};
use common::origins::{origin, tcp_echo};

const BIN: &str = env!("CARGO_BIN_EXE_burrow");

#[test]
fn dashboards_metrics_with_real_traffic() {
    let bed = Testbed::create(Path::new(BIN), "e2e-metrics", "app", &["app.test"]).expect("tunnel");
    let echo = tcp_echo();
    let tcp_port = testbed::free_tcp().expect("port");
    let mut eo = EdgeOpts::loopback().expect("ports");
    eo.tcp_maps = vec![format!("{tcp_port}=app:{echo}")];
    let _edge = bed.edge(&eo).expect("edge");
    let http_origin = origin();
    let metrics = testbed::free_tcp().expect("port");
    let mut connector = bed
        .connector(&ConnectorOpts {
            edge: eo.quic,
            metrics,
            ingress: vec![
                (
                    Some("app.test".into()),
                    format!("http://127.0.0.1:{http_origin}"),
                ),
                (None, "http_status:404".into()),
            ],
            ha_connections: 4,
            extra: vec![],
            config_extra: String::new(),
        })
        .expect("connector");
    testbed::wait_ready(&mut connector, metrics, 4, Duration::from_secs(30)).expect("ready");
    dashboards_after_traffic(eo.http.port(), tcp_port, metrics, 4);
}

/// cloudflared's per-request metrics (`total_requests`, `response_by_code`, `request_errors`,
/// `concurrent_requests_per_tunnel`), counted by core, over QUIC and over HTTP/2.
#[test]
fn request_metrics_by_status_code() {
    for protocol in ["quic", "http2"] {
        let bed = Testbed::create(
            Path::new(BIN),
            &format!("e2e-reqs-{protocol}"),
            "app",
            &["ok.test", "dead.test", "other.test"],
        )
        .expect("tunnel");
        let eo = EdgeOpts::loopback().expect("ports");
        let _edge = bed.edge(&eo).expect("edge");
        let metrics = testbed::free_tcp().expect("port");
        let mut connector = bed
            .connector(&ConnectorOpts {
                edge: eo.quic,
                metrics,
                ingress: counting_ingress(origin()),
                ha_connections: 1,
                extra: vec!["--protocol".into(), protocol.into()],
                config_extra: String::new(),
            })
            .expect("connector");
        testbed::wait_ready(&mut connector, metrics, 1, Duration::from_secs(30)).expect("ready");
        request_counts_by_code(eo.http.port(), metrics);
    }
}

#[test]
fn metrics_port_zero_is_ephemeral() {
    let bed =
        Testbed::create(Path::new(BIN), "e2e-metrics0", "app", &["app.test"]).expect("tunnel");
    let eo = EdgeOpts::loopback().expect("ports");
    let _edge = bed.edge(&eo).expect("edge");
    let mut cmd = Command::new(BIN);
    cmd.args(["tunnel", "--edge", &eo.quic.to_string(), "--cacert"])
        .arg(bed.ca())
        .args(["--metrics", "127.0.0.1:0", "--loglevel", "info", "run"])
        .args(["--url", "http://127.0.0.1:9", "--credentials-file"])
        .arg(bed.credentials())
        .arg(&bed.id);
    let log = bed.dir().join("connector.log");
    let mut p = Proc::spawn("burrow tunnel run", cmd, log.clone()).expect("spawn");
    let mut addr = None;
    testbed::wait_for(
        Duration::from_secs(20),
        "the metrics address in the log",
        || {
            p.check_alive()?;
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            addr = text.lines().find_map(|l| {
                let rest = l.split("Starting metrics server on ").nth(1)?;
                rest.split("/metrics").next()?.parse::<SocketAddr>().ok()
            });
            Ok(addr.is_some())
        },
    )
    .expect("metrics address");
    let addr = addr.expect("address");
    assert!(
        !(20241..=20245).contains(&addr.port()) && addr.port() != 0,
        "an explicit :0 is an ephemeral port, not cloudflared's default range: {addr}"
    );
    assert!(metrics_text(addr).contains("cloudflared_tunnel_ha_connections"));
}

/// cloudflared's families a burrow connector cannot fill from quinn: packets buffered or
/// dropped before decryption are not counted by quinn.
const NOT_FROM_QUINN: [&str; 2] = [
    "quic_client_buffered_packets",
    "quic_client_dropped_packets",
];

/// burrow's families that cloudflared only shows from its first event: burrow starts them at 0.
const FROM_ZERO: [&str; 2] = [
    "quic_client_lost_packets",
    "flow_client_registrations_rate_limited_total",
];

/// Every family of burrow and of a stock cloudflared (`quic_client_*`, `process_*`,
/// `build_info`, `cloudflared_*`, `flow_*`), both serving one tunnel through `burrow edge` with
/// 4 connections: the same names, types, help texts and label names (but for
/// [`NOT_FROM_QUINN`] and [`FROM_ZERO`]).
#[test]
#[ignore = "needs a stock cloudflared: BURROW_CLOUDFLARED=/path/to/cloudflared, --ignored"]
fn quic_process_and_build_families_match_cloudflared() {
    let cfd = std::env::var_os("BURROW_CLOUDFLARED")
        .map(std::path::PathBuf::from)
        .expect("set BURROW_CLOUDFLARED to a cloudflared binary");
    let bed =
        Testbed::create(Path::new(BIN), "e2e-metrics-cfd", "app", &["app.test"]).expect("tunnel");
    let port = testbed::free_udp().expect("port").port();
    let eo = EdgeOpts {
        // All addresses: cloudflared reaches it at 127.0.0.1..4, one connection each.
        quic: SocketAddr::from(([0, 0, 0, 0], port)),
        ..EdgeOpts::loopback().expect("ports")
    };
    let _edge = bed.edge(&eo).expect("edge");
    let opts = |edge: SocketAddr| ConnectorOpts {
        edge,
        metrics: testbed::free_tcp().expect("port"),
        ingress: vec![(None, "http_status:404".into())],
        ha_connections: 4,
        extra: vec![],
        config_extra: String::new(),
    };
    let co = opts(eo.quic);
    let mut stock = bed.cloudflared(&cfd, &co).expect("cloudflared");
    testbed::wait_ready(&mut stock, co.metrics, 4, Duration::from_secs(30)).expect("ready");
    let bo = opts(SocketAddr::from(([127, 0, 0, 1], port)));
    let mut ours = bed.connector(&bo).expect("connector");
    testbed::wait_ready(&mut ours, bo.metrics, 4, Duration::from_secs(30)).expect("ready");
    let ours_text = check_quic_and_process_metrics(bo.metrics, 4);
    // A few keep-alives on cloudflared's side too.
    std::thread::sleep(Duration::from_secs(3));
    let prefixes = [
        "quic_client_",
        "process_",
        "build_info",
        "cloudflared_",
        "flow_",
    ];
    // HTTP/1.0: Go's server would chunk an HTTP/1.1 answer.
    let mut s = TcpStream::connect(co.metrics).expect("cloudflared metrics");
    s.write_all(b"GET /metrics HTTP/1.0\r\n\r\n")
        .expect("write");
    let mut text = String::new();
    s.read_to_string(&mut text).expect("read");
    let theirs = families(&text, &prefixes);
    let ours = families(&ours_text, &prefixes);
    eprintln!("cloudflared: {theirs:#?}\nburrow: {ours:#?}");
    for (name, family) in &theirs {
        if NOT_FROM_QUINN.contains(&name.as_str()) {
            continue;
        }
        assert_eq!(ours.get(name), Some(family), "{name}");
    }
    for name in ours.keys() {
        assert!(
            theirs.contains_key(name) || FROM_ZERO.contains(&name.as_str()),
            "{name} is not cloudflared's"
        );
    }
}

/// `quic_client_mtu` of connection 0: after the handshake quinn's path MTU discovery raises
/// the packet size from the 1,280-byte path's 1,252 (an IPv4 edge); with
/// `--quic-disable-pmtu-discovery` (cloudflared's hidden flag) it stays there.
#[test]
fn quic_disable_pmtu_discovery_keeps_the_initial_packet_size() {
    let mtu = |metrics: SocketAddr| -> Option<u32> {
        metrics_text(metrics)
            .lines()
            .find_map(|l| l.strip_prefix("quic_client_mtu{conn_index=\"0\"} "))
            .and_then(|v| v.trim().parse().ok())
    };
    for disabled in [false, true] {
        let bed =
            Testbed::create(Path::new(BIN), "e2e-pmtu", "app", &["app.test"]).expect("tunnel");
        let eo = EdgeOpts::loopback().expect("ports");
        let _edge = bed.edge(&eo).expect("edge");
        let metrics = testbed::free_tcp().expect("port");
        let mut connector = bed
            .connector(&ConnectorOpts {
                edge: eo.quic,
                metrics,
                ingress: vec![(None, "http_status:404".into())],
                ha_connections: 1,
                extra: if disabled {
                    vec!["--quic-disable-pmtu-discovery".into()]
                } else {
                    vec![]
                },
                config_extra: String::new(),
            })
            .expect("connector");
        testbed::wait_ready(&mut connector, metrics, 1, Duration::from_secs(30)).expect("ready");
        // Discovery takes a few round trips on loopback; give it 5 s to move.
        let mut seen = mtu(metrics);
        for _ in 0..50 {
            if seen.is_some_and(|m| m > 1252) {
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
            seen = mtu(metrics);
        }
        if disabled {
            assert_eq!(seen, Some(1252), "{}", connector.log_tail(2000));
        } else {
            assert!(seen.is_some_and(|m| m > 1252), "{seen:?}");
        }
    }
}
