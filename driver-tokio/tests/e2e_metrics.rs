//! `/metrics` as dashboards built for cloudflared query it, scraped from a real connector
//! serving real traffic through `burrow edge`: the `quic_client_*` families per `conn_index`,
//! `process_*`, `build_info`, `cloudflared_proxy_connect_latency` for TCP streams; and
//! `--metrics 127.0.0.1:0` on an ephemeral port.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use burrow_tokio::testbed::{self, ConnectorOpts, EdgeOpts, Proc, Testbed};

mod common;
use common::client::{counting_ingress, metric, metrics_text, request, request_counts_by_code};
use common::origins::{origin, tcp_echo};

const BIN: &str = env!("CARGO_BIN_EXE_burrow");

/// Scrapes until every one of `names` has a value above zero, or gives up after 20 s.
fn scrape_until(metrics: SocketAddr, names: &[&str]) -> String {
    let mut text = String::new();
    let _ = testbed::wait_for(Duration::from_secs(20), "metrics", || {
        text = metrics_text(metrics);
        Ok(names.iter().all(|n| {
            text.lines().any(|l| {
                l.strip_prefix(n)
                    .and_then(|v| v.strip_prefix(' '))
                    .and_then(|v| v.trim().parse::<f64>().ok())
                    .is_some_and(|v| v > 0.0)
            })
        }))
    });
    text
}

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
            ha_connections: 2,
            extra: vec![],
            config_extra: String::new(),
        })
        .expect("connector");
    testbed::wait_ready(&mut connector, metrics, 2, Duration::from_secs(30)).expect("ready");

    for _ in 0..20 {
        let (status, _) = request(
            eo.http.port(),
            "GET /hello HTTP/1.1\r\nHost: app.test\r\nConnection: close\r\n\r\n",
            b"",
        );
        assert_eq!(status, 200);
    }
    let mut c = TcpStream::connect(tcp_port).expect("tcp map");
    c.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    c.write_all(b"ping").expect("write");
    let mut got = [0u8; 4];
    c.read_exact(&mut got).expect("echo");
    assert_eq!(&got, b"ping");
    drop(c);

    let text = scrape_until(
        metrics,
        &[
            r#"quic_client_sent_bytes{conn_index="0"}"#,
            r#"quic_client_sent_bytes{conn_index="1"}"#,
            r#"quic_client_receive_bytes{conn_index="0"}"#,
            r#"quic_client_sent_frames{conn_index="0",frame_type="Stream"}"#,
            r#"quic_client_received_frames{conn_index="0",frame_type="Stream"}"#,
            r#"quic_client_congestion_window{conn_index="0"}"#,
            r#"quic_client_mtu{conn_index="1"}"#,
            "cloudflared_proxy_connect_latency_count",
        ],
    );
    let m = |name: &str| metric(&text, name);
    for i in ["0", "1"] {
        assert!(m(&format!(r#"quic_client_sent_bytes{{conn_index="{i}"}}"#)) > 0.0);
        assert!(m(&format!(r#"quic_client_mtu{{conn_index="{i}"}}"#)) >= 1200.0);
        assert!(
            m(&format!(
                r#"quic_client_congestion_window{{conn_index="{i}"}}"#
            )) > 0.0
        );
        // Loopback: the RTT is there, in whole milliseconds, and small.
        let srtt = m(&format!(r#"quic_client_smoothed_rtt{{conn_index="{i}"}}"#));
        let min = m(&format!(r#"quic_client_min_rtt{{conn_index="{i}"}}"#));
        assert!((0.0..1000.0).contains(&srtt) && min <= srtt.max(min));
        m(&format!(
            r#"quic_client_lost_packets{{conn_index="{i}",reason="unknown_loss_reason"}}"#
        ));
    }
    assert!(m("quic_client_total_connections") >= 2.0);
    assert_eq!(m("quic_client_closed_connections"), 0.0);
    assert!(m("cloudflared_tunnel_total_requests") >= 21.0);
    assert_eq!(m("cloudflared_tcp_total_sessions"), 1.0);
    assert!(m("cloudflared_proxy_connect_latency_count") >= 1.0);
    assert_eq!(m("cloudflared_proxy_connect_streams_errors"), 0.0);
    assert!(m("process_resident_memory_bytes") > 1e6);
    assert!(m("process_open_fds") > 0.0);
    assert!(m("process_start_time_seconds") > 1.6e9);
    assert!(m("process_cpu_seconds_total") >= 0.0);
    let build = text
        .lines()
        .find(|l| l.starts_with("build_info{"))
        .expect("build_info");
    assert!(
        build.contains(&format!(r#"version="{}""#, env!("CARGO_PKG_VERSION")))
            && build.ends_with(" 1"),
        "{build}"
    );
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
