//! `http2Origin: true` through burrow-mio (real `burrow edge` on loopback): an origin that
//! speaks only HTTP/2 (TLS with ALPN `h2` and nothing else, self-signed, reached with
//! `noTLSVerify`) answers requests sent through the tunnel, bodies both ways, on one HTTP/2
//! connection; the same origin under a rule without `http2Origin` fails (502). The checks are
//! those of burrow-tokio's `e2e_http2_origin.rs`, against the same origin
//! (`common/h2_origin.rs`, which runs without an async runtime, as burrow-mio's tree has none).

use std::path::Path;
use std::time::Duration;

#[path = "../../driver-tokio/tests/common/mod.rs"]
mod common;
mod harness;
#[allow(dead_code)]
#[path = "../../driver-tokio/src/testbed.rs"]
mod testbed;

use common::h2_origin::{h2_origin, send};
use harness::{burrow, MIO};
use testbed::{EdgeOpts, Testbed};

#[test]
fn requests_reach_an_http2_only_origin() {
    let (origin, conns) = h2_origin();
    let bed = Testbed::create(burrow(), "mio-h2o", "app", &["h1.test", "h2.test"]).expect("tunnel");
    let eo = EdgeOpts::loopback().expect("ports");
    let _edge = bed.edge(&eo).expect("edge");
    let service = format!("https://127.0.0.1:{}", origin.port());
    // The last (catch-all) rule speaks HTTP/2; every rule skips verification.
    let ingress = format!(
        "- hostname: h1.test\n  service: {service}\n\
         - service: {service}\n  originRequest:\n    http2Origin: true\n\
         originRequest:\n  noTLSVerify: true\n"
    );
    let (mut c, _metrics) = bed
        .connector_with_ingress_from(Path::new(MIO), eo.quic, &ingress, &[])
        .expect("burrow-mio");

    common::h2_origin::check_requests(eo.http, &conns);
    c.check_alive().expect("burrow-mio alive");
}

/// `--http2-origin` with `--url`: the one origin is spoken to in HTTP/2; without it, in
/// HTTP/1.1, which the HTTP/2-only origin refuses.
#[test]
fn http2_origin_flag_with_url() {
    let (origin, _conns) = h2_origin();
    let bed = Testbed::create(burrow(), "mio-h2o-flag", "app", &["h2.test"]).expect("tunnel");
    let eo = EdgeOpts::loopback().expect("ports");
    let _edge = bed.edge(&eo).expect("edge");
    let url = format!("https://127.0.0.1:{}", origin.port());
    let get = "GET /flag HTTP/1.1\r\nHost: h2.test\r\nConnection: close\r\n\r\n";
    let flags = ["--url", url.as_str(), "--no-tls-verify", "--http2-origin"];
    let mut c = bed
        .connector_without_config(Path::new(MIO), eo.quic, &flags)
        .expect("burrow-mio");
    let (status, body) = send(eo.http, get, b"");
    assert_eq!(status, 200, "{body}");
    assert!(body.starts_with("HTTP/2.0 GET h2.test /flag"), "{body}");
    c.terminate(Duration::from_secs(30)).expect("stops");

    let flags = ["--url", url.as_str(), "--no-tls-verify"];
    let mut c = bed
        .connector_without_config(Path::new(MIO), eo.quic, &flags)
        .expect("burrow-mio");
    assert_eq!(send(eo.http, get, b"").0, 502, "without the flag");
    c.terminate(Duration::from_secs(30)).expect("stops");
}

/// `--no-chunked-encoding` with `--http2-origin`: a body of no known length reaches the HTTP/2
/// origin whole, and a cleartext origin is spoken to in HTTP/1.1 (never h2c); the checks
/// burrow-tokio's `bare_bodies_and_cleartext_origins` makes of burrow and cloudflared.
#[test]
fn bare_bodies_and_cleartext_origins() {
    let bed = Testbed::create(burrow(), "mio-h2o-bare", "app", &["h2.test"]).expect("tunnel");
    let eo = EdgeOpts::loopback().expect("ports");
    let _edge = bed.edge(&eo).expect("edge");
    let (origin, conns) = h2_origin();
    let url = format!("https://127.0.0.1:{}", origin.port());
    let flags = [
        "--url",
        url.as_str(),
        "--no-tls-verify",
        "--http2-origin",
        "--no-chunked-encoding",
    ];
    let mut c = bed
        .connector_without_config(Path::new(MIO), eo.quic, &flags)
        .expect("burrow-mio");
    common::h2_origin::check_bare_body("burrow-mio", eo.http, &conns);
    c.terminate(Duration::from_secs(30)).expect("stops");

    let url = format!("http://{}", common::h2_origin::cleartext_origin());
    let flags = ["--url", url.as_str(), "--http2-origin"];
    let mut c = bed
        .connector_without_config(Path::new(MIO), eo.quic, &flags)
        .expect("burrow-mio");
    common::h2_origin::check_cleartext("burrow-mio", eo.http);
    c.terminate(Duration::from_secs(30)).expect("stops");
}

/// An idle HTTP/2 origin connection is closed after the rule's `keepAliveTimeout`: the check
/// burrow-tokio's test makes of burrow and cloudflared.
#[test]
fn an_idle_http2_origin_connection_closes_after_the_keep_alive_timeout() {
    let (origin, conns, ended) = common::h2_origin::h2_origin_watched();
    let bed = Testbed::create(burrow(), "mio-h2o-idle", "app", &["h2.test"]).expect("tunnel");
    let eo = EdgeOpts::loopback().expect("ports");
    let _edge = bed.edge(&eo).expect("edge");
    let ingress = format!(
        "- service: https://127.0.0.1:{}\n  originRequest:\n    http2Origin: true\n    \
         keepAliveTimeout: 2s\noriginRequest:\n  noTLSVerify: true\n",
        origin.port()
    );
    let (mut c, _metrics) = bed
        .connector_with_ingress_from(Path::new(MIO), eo.quic, &ingress, &[])
        .expect("burrow-mio");
    common::h2_origin::check_idle_close("burrow-mio", eo.http, &conns, &ended);
    c.terminate(Duration::from_secs(30)).expect("stops");
}
