//! `--protocol auto` where UDP to the edge is dropped (an nftables rule on loopback, as root):
//! the connector falls back to HTTP/2 within the 60 s, all 4 connections register
//! over HTTP/2 and serve; once UDP passes again every connection returns to QUIC within 3
//! minutes while requests keep succeeding. Skips without root or `nft`.

use std::time::{Duration, Instant};

use burrow_tokio::testbed::{self, ConnectorOpts, EdgeOpts, Testbed};

mod common;
use common::client::request;
use common::nft::DropUdp;
use common::origins::origin;

const BIN: &str = env!("CARGO_BIN_EXE_burrow");

#[test]
fn auto_falls_back_to_http2_when_udp_is_dropped_and_returns_to_quic() {
    let bed_edge = EdgeOpts::loopback().expect("ports");
    let bed = Testbed::create(BIN.as_ref(), "fallback", "app", &["app.test"]).expect("bed");
    let _edge = bed.edge(&bed_edge).expect("edge");
    let Some(rule) = DropUdp::to_port(bed_edge.quic.port()) else {
        eprintln!("skipped: needs root and nft to drop UDP on loopback");
        return;
    };
    let metrics = testbed::free_tcp().expect("port");
    let started = Instant::now();
    let mut connector = bed
        .connector(&ConnectorOpts {
            edge: bed_edge.quic,
            metrics,
            ingress: vec![(None, format!("http://127.0.0.1:{}", origin()))],
            ha_connections: 4,
            extra: vec![
                "--protocol".into(),
                "auto".into(),
                "--loglevel".into(),
                "info".into(),
            ],
            config_extra: String::new(),
        })
        .expect("connector");
    testbed::wait_ready(&mut connector, metrics, 4, Duration::from_secs(60))
        .unwrap_or_else(|e| panic!("{e}\nconnector: {}", connector.log_tail(4000)));
    let took = started.elapsed();
    let log = connector.log_tail(200_000);
    assert!(
        log.contains("Switching to fallback protocol http2"),
        "{log}"
    );
    let over_http2 = log
        .lines()
        .filter(|l| l.contains("Registered tunnel connection") && l.contains("protocol=http2"))
        .count();
    assert!(over_http2 >= 4, "4 registrations over http2:\n{log}");
    for i in 0..20 {
        let (status, body) = request(
            bed_edge.http.port(),
            &format!("GET /small/{i} HTTP/1.1\r\nHost: app.test\r\nConnection: close\r\n\r\n"),
            b"",
        );
        assert_eq!(
            (status, body.as_slice()),
            (200, &b"hello from the origin"[..])
        );
    }
    eprintln!("4 connections over http2 {took:?} after start with UDP dropped");

    // UDP passes again: each connection drains and comes back over QUIC, one at a time, while
    // requests keep going.
    drop(rule);
    let restored = Instant::now();
    let mut sent = 0;
    loop {
        let (status, body) = request(
            bed_edge.http.port(),
            &format!("GET /small/{sent} HTTP/1.1\r\nHost: app.test\r\nConnection: close\r\n\r\n"),
            b"",
        );
        assert_eq!(
            (status, body.as_slice()),
            (200, &b"hello from the origin"[..]),
            "request {sent} during the switch: {}",
            String::from_utf8_lossy(&body)
        );
        sent += 1;
        let log = connector.log_tail(400_000);
        let over_quic = log
            .lines()
            .filter(|l| l.contains("Registered tunnel connection") && l.contains("protocol=quic"))
            .count();
        if over_quic >= 4
            && testbed::wait_ready(&mut connector, metrics, 4, Duration::from_secs(5)).is_ok()
        {
            break;
        }
        assert!(
            restored.elapsed() < Duration::from_secs(180),
            "not back on QUIC within 3 minutes:\n{log}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    eprintln!(
        "all 4 back on quic {:?} after UDP was restored; {sent} requests during the switch, all answered",
        restored.elapsed()
    );
}
