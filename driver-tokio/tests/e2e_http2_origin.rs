//! `http2Origin: true` end to end (real `burrow edge` and `burrow tunnel run` on loopback): an
//! origin that speaks only HTTP/2 (TLS with ALPN `h2` and nothing else, self-signed, reached
//! with `noTLSVerify`) answers requests sent through the tunnel, bodies both ways, on one
//! HTTP/2 connection; the same origin under a rule without `http2Origin` fails (502). The
//! origin is `common/h2_origin.rs`, which burrow-mio's test uses too.

use std::path::Path;
use std::time::Duration;

use burrow_tokio::testbed::{self, ConnectorOpts, EdgeOpts, Testbed};

mod common;

use common::h2_origin::{h2_origin, send};

const BIN: &str = env!("CARGO_BIN_EXE_burrow");

#[test]
fn requests_reach_an_http2_only_origin() {
    let (origin, conns) = h2_origin();
    let bed =
        Testbed::create(Path::new(BIN), "e2e-h2o", "app", &["h1.test", "h2.test"]).expect("tunnel");
    let eo = EdgeOpts::loopback().expect("ports");
    let _edge = bed.edge(&eo).expect("edge");
    let service = format!("https://127.0.0.1:{}", origin.port());
    let co = ConnectorOpts {
        edge: eo.quic,
        metrics: testbed::free_tcp().expect("port"),
        ingress: vec![
            (Some("h1.test".into()), service.clone()),
            (None, service.clone()),
        ],
        ha_connections: 1,
        extra: Vec::new(),
        // The last (catch-all) rule speaks HTTP/2; every rule skips verification.
        config_extra:
            "    originRequest:\n      http2Origin: true\noriginRequest:\n  noTLSVerify: true\n"
                .into(),
    };
    let mut conn = bed.connector(&co).expect("connector");
    testbed::wait_ready(&mut conn, co.metrics, 1, Duration::from_secs(30)).expect("ready");

    common::h2_origin::check_requests(eo.http, &conns);
    conn.check_alive().expect("connector alive");
}

/// `--http2-origin` with `--url`: the one origin is spoken
/// to in HTTP/2; without it, in HTTP/1.1, which the HTTP/2-only origin refuses. The same from
/// stock cloudflared when `BURROW_CLOUDFLARED` is set.
#[test]
fn http2_origin_flag_with_url() {
    let (origin, _conns) = h2_origin();
    let bed = Testbed::create(Path::new(BIN), "e2e-h2o-flag", "app", &["h2.test"]).expect("tunnel");
    let eo = EdgeOpts::loopback().expect("ports");
    let _edge = bed.edge(&eo).expect("edge");
    let url = format!("https://127.0.0.1:{}", origin.port());
    let mut bins = vec![(std::path::PathBuf::from(BIN), Vec::new())];
    if let Some(cfd) = std::env::var_os("BURROW_CLOUDFLARED") {
        let flags = vec!["--features", "support_datagram_v3_2", "--protocol", "quic"];
        bins.push((cfd.into(), flags));
    }
    let get = "GET /flag HTTP/1.1\r\nHost: h2.test\r\nConnection: close\r\n\r\n";
    for (bin, extra) in bins {
        let name = bin.display().to_string();
        let mut flags = vec!["--url", url.as_str(), "--no-tls-verify", "--http2-origin"];
        flags.extend(&extra);
        let mut c = bed
            .connector_without_config(&bin, eo.quic, &flags)
            .expect("connector");
        let (status, body) = send(eo.http, get, b"");
        assert_eq!(status, 200, "{name}: {body}");
        assert!(
            body.starts_with("HTTP/2.0 GET h2.test /flag"),
            "{name}: {body}"
        );
        c.terminate(Duration::from_secs(30)).expect("stops");

        let mut flags = vec!["--url", url.as_str(), "--no-tls-verify"];
        flags.extend(&extra);
        let mut c = bed
            .connector_without_config(&bin, eo.quic, &flags)
            .expect("connector");
        assert_eq!(send(eo.http, get, b"").0, 502, "{name}: without the flag");
        c.terminate(Duration::from_secs(30)).expect("stops");
    }
}

/// What cloudflared does with `http2Origin` beyond the plain case, and burrow with it (the same
/// checks against stock cloudflared when `BURROW_CLOUDFLARED` is set):
/// - with `--no-chunked-encoding` a body of no known length (chunked from the eyeball) goes to
///   an HTTP/2 origin whole: Go's transport sends it as DATA frames ended by END_STREAM;
/// - a cleartext (`http://`) origin is spoken to in HTTP/1.1, never h2c: Go's transport offers
///   HTTP/2 only over TLS unless its `Protocols` ask for unencrypted HTTP/2, which cloudflared's
///   do not set.
#[test]
fn bare_bodies_and_cleartext_origins() {
    let bed = Testbed::create(Path::new(BIN), "e2e-h2o-bare", "app", &["h2.test"]).expect("tunnel");
    let eo = EdgeOpts::loopback().expect("ports");
    let _edge = bed.edge(&eo).expect("edge");
    let mut bins = vec![(std::path::PathBuf::from(BIN), Vec::new())];
    if let Some(cfd) = std::env::var_os("BURROW_CLOUDFLARED") {
        let flags = vec!["--features", "support_datagram_v3_2", "--protocol", "quic"];
        bins.push((cfd.into(), flags));
    }
    for (bin, extra) in bins {
        let name = bin.display().to_string();
        let (origin, conns) = h2_origin();
        let url = format!("https://127.0.0.1:{}", origin.port());
        let mut flags = vec![
            "--url",
            url.as_str(),
            "--no-tls-verify",
            "--http2-origin",
            "--no-chunked-encoding",
        ];
        flags.extend(&extra);
        let mut c = bed
            .connector_without_config(&bin, eo.quic, &flags)
            .expect("connector");
        common::h2_origin::check_bare_body(&name, eo.http, &conns);
        c.terminate(Duration::from_secs(30)).expect("stops");

        let url = format!("http://{}", common::h2_origin::cleartext_origin());
        let mut flags = vec!["--url", url.as_str(), "--http2-origin"];
        flags.extend(&extra);
        let mut c = bed
            .connector_without_config(&bin, eo.quic, &flags)
            .expect("connector");
        common::h2_origin::check_cleartext(&name, eo.http);
        c.terminate(Duration::from_secs(30)).expect("stops");
    }
}

/// An idle HTTP/2 origin connection is closed after the rule's `keepAliveTimeout`, as
/// cloudflared's Go transport closes it (`IdleConnTimeout`; no PINGs meanwhile); the same
/// checks against stock cloudflared when `BURROW_CLOUDFLARED` is set.
#[test]
fn an_idle_http2_origin_connection_closes_after_the_keep_alive_timeout() {
    let (origin, conns, ended) = common::h2_origin::h2_origin_watched();
    let bed = Testbed::create(Path::new(BIN), "e2e-h2o-idle", "app", &["h2.test"]).expect("tunnel");
    let eo = EdgeOpts::loopback().expect("ports");
    let _edge = bed.edge(&eo).expect("edge");
    let co = ConnectorOpts {
        edge: eo.quic,
        metrics: testbed::free_tcp().expect("port"),
        ingress: vec![(None, format!("https://127.0.0.1:{}", origin.port()))],
        ha_connections: 1,
        extra: Vec::new(),
        config_extra: "    originRequest:\n      http2Origin: true\n      keepAliveTimeout: 2s\n\
                       originRequest:\n  noTLSVerify: true\n"
            .into(),
    };
    let mut conn = bed.connector(&co).expect("connector");
    testbed::wait_ready(&mut conn, co.metrics, 1, Duration::from_secs(30)).expect("ready");
    common::h2_origin::check_idle_close("burrow", eo.http, &conns, &ended);
    conn.terminate(Duration::from_secs(30)).expect("stops");
    if let Some(cfd) = std::env::var_os("BURROW_CLOUDFLARED") {
        let mut c = bed.cloudflared(Path::new(&cfd), &co).expect("cloudflared");
        testbed::wait_ready(&mut c, co.metrics, 1, Duration::from_secs(30)).expect("ready");
        common::h2_origin::check_idle_close("cloudflared", eo.http, &conns, &ended);
        c.terminate(Duration::from_secs(30)).expect("stops");
    }
}
