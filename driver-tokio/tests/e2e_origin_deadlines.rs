//! Origin dial and TLS-handshake deadlines end to end (real `burrow edge` and `burrow tunnel
//! run` on loopback): the connector's own timers fail a request whose origin never finishes
//! connecting at the rule's `connectTimeout`, and one whose origin accepts TCP but never
//! answers the TLS handshake at its `tlsTimeout`: a 502, not earlier, and not a hang. A
//! private-network TCP stream (`--tcp-map`) to that origin ends at `warp-routing.connectTimeout`
//! and is counted in `cloudflared_proxy_connect_streams_errors`.

use std::io::Read;
use std::net::TcpStream;
use std::path::Path;
use std::time::{Duration, Instant};

use burrow_tokio::testbed::{self, EdgeOpts, Testbed};
use common::client::{metric, metrics_text};
use common::stalled::{fails_at, silent_origin, timed_get, unanswered_origin, SLACK};

mod common;

const BIN: &str = env!("CARGO_BIN_EXE_burrow");

const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
const TLS_TIMEOUT: Duration = Duration::from_secs(3);
const WARP_CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

#[test]
fn origin_dial_and_tls_handshake_fail_at_their_deadlines() {
    deadlines_over("quic");
}

/// The same over HTTP/2 to the edge (the other connection machine holding the flows).
#[test]
fn origin_dial_and_tls_handshake_fail_at_their_deadlines_http2() {
    deadlines_over("http2");
}

fn deadlines_over(protocol: &str) {
    let bed = Testbed::create(
        Path::new(BIN),
        &format!("e2e-origin-deadlines-{protocol}"),
        "app",
        &["tls.test", "dial.test", "other.test"],
    )
    .expect("tunnel");
    let silent = silent_origin();
    let (unanswered, _held) = unanswered_origin();
    let tcp_map = testbed::free_tcp().expect("port");
    let mut eo = EdgeOpts::loopback().expect("ports");
    eo.tcp_maps = vec![format!("{tcp_map}=app:{unanswered}")];
    let _edge = bed.edge(&eo).expect("edge");
    let (c, metrics) = bed
        .connector_with_ingress(
            eo.quic,
            &format!(
                "- hostname: tls.test\n  service: https://{silent}\n  originRequest:\n    tlsTimeout: {tls}s\n    noTLSVerify: true\n\
                 - hostname: dial.test\n  service: http://{unanswered}\n  originRequest:\n    connectTimeout: {connect}s\n\
                 - service: http_status:418\n\
                 warp-routing:\n  connectTimeout: {warp}s\n",
                tls = TLS_TIMEOUT.as_secs(),
                connect = CONNECT_TIMEOUT.as_secs(),
                warp = WARP_CONNECT_TIMEOUT.as_secs(),
            ),
            &["--protocol", protocol, "--loglevel", "debug"],
        )
        .expect("connector");

    let registered = c.log_tail(100_000);
    assert!(
        registered
            .lines()
            .any(|l| l.contains("Registered tunnel connection")
                && l.contains(&format!("protocol={protocol}"))),
        "registered over {protocol}:\n{registered}"
    );
    let log = || c.log_tail(4000);
    fails_at(eo.http, "tls.test", TLS_TIMEOUT, log);
    fails_at(eo.http, "dial.test", CONNECT_TIMEOUT, log);
    // The connector still serves.
    assert_eq!(timed_get(eo.http, "other.test").0, 418);

    // A TCP stream: the edge ends the client's connection once the connector gives up.
    let start = Instant::now();
    let mut s = TcpStream::connect(tcp_map).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    let mut rest = Vec::new();
    let _ = s.read_to_end(&mut rest);
    let took = start.elapsed();
    assert!(
        took >= WARP_CONNECT_TIMEOUT && took < WARP_CONNECT_TIMEOUT + SLACK,
        "the TCP stream ends at warp-routing.connectTimeout ({WARP_CONNECT_TIMEOUT:?}): took {took:?}\n{}",
        log()
    );
    assert!(rest.is_empty(), "nothing came from the origin");
    let text = metrics_text(metrics);
    assert_eq!(
        metric(&text, "cloudflared_proxy_connect_streams_errors"),
        1.0,
        "{text}"
    );
}
