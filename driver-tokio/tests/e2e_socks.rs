//! The `socks-proxy` service end to end (real `burrow edge` and `burrow tunnel run` on
//! loopback): a SOCKS5 client speaking inside the eyeball's WebSocket (as cloudflared's
//! `access` carries it) connects to what the rule's `ipRules` allow, and is refused the rest
//! with SOCKS5's own reply codes, as cloudflared's socks-proxy answers. And cloudflared's
//! `proxyType: socks` on a TCP service (`--socks5` with `--url`, or the rule's option, on a
//! bastion too): the service is dialled and any CONNECT is answered with that connection.

use std::path::Path;
use std::time::Duration;

use burrow_tokio::testbed::{EdgeOpts, Testbed};

mod common;
use common::access::*;
use common::origins::tcp_echo;
use common::stalled::unanswered_origin;

const BIN: &str = env!("CARGO_BIN_EXE_burrow");

#[test]
fn socks5_over_websocket_connects_where_ip_rules_allow() {
    let bed = Testbed::create(
        Path::new(BIN),
        "e2e-socks",
        "app",
        &["socks.test", "closed.test"],
    )
    .expect("tunnel");
    let echo = tcp_echo();
    let closed = closed_port();
    let eo = EdgeOpts::loopback().expect("ports");
    let _edge = bed.edge(&eo).expect("edge");
    let (mut c, _metrics) = bed
        .connector_with_ingress(eo.quic, &socks_proxy_ingress(echo, closed), &[])
        .expect("connector");
    check_socks_proxy(eo.http, echo, closed);
    c.check_alive().expect("connector alive");
}

/// The destination dial has the rule's `connectTimeout`, on the connector's timers.
#[test]
fn socks5_destination_dial_ends_at_connect_timeout() {
    let bed = Testbed::create(Path::new(BIN), "e2e-socks-deadline", "app", &["slow.test"])
        .expect("tunnel");
    let (unanswered, _held) = unanswered_origin();
    let eo = EdgeOpts::loopback().expect("ports");
    let _edge = bed.edge(&eo).expect("edge");
    let (mut c, _metrics) = bed
        .connector_with_ingress(eo.quic, &socks_deadline_ingress(unanswered), &[])
        .expect("connector");
    check_socks_dial_deadline(eo.http, unanswered);
    c.check_alive().expect("connector alive");
}

#[test]
fn proxy_type_socks_puts_socks5_in_front_of_a_tcp_origin() {
    let bed = Testbed::create(
        Path::new(BIN),
        "e2e-socks-type",
        "app",
        &["rule.test", "jump.test", "plain.test"],
    )
    .expect("tunnel");
    let origin = banner_echo();
    let eo = EdgeOpts::loopback().expect("ports");
    let _edge = bed.edge(&eo).expect("edge");
    let (mut c, _metrics) = bed
        .connector_with_ingress(
            eo.quic,
            &proxy_type_socks_ingress(origin),
            &["--grace-period", "1s"],
        )
        .expect("connector");
    check_proxy_type_socks(eo.http, origin);
    c.check_alive().expect("connector alive");
    c.terminate(Duration::from_secs(30)).expect("stops");

    // The command line's `--url tcp://... --socks5`, and the same from stock cloudflared.
    let url = format!("tcp://{origin}");
    let flags = ["--url", url.as_str(), "--socks5"];
    let mut p = bed
        .connector_without_config(Path::new(BIN), eo.quic, &flags)
        .expect("burrow --socks5");
    socks_over_tcp_origin(eo.http, "rule.test", None);
    p.terminate(Duration::from_secs(30)).expect("stops");
    if let Some(cfd) = std::env::var_os("BURROW_CLOUDFLARED") {
        let mut flags = flags.to_vec();
        flags.extend(["--features", "support_datagram_v3_2", "--protocol", "quic"]);
        let mut p = bed
            .connector_without_config(Path::new(&cfd), eo.quic, &flags)
            .expect("cloudflared --socks5");
        socks_over_tcp_origin(eo.http, "rule.test", None);
        p.terminate(Duration::from_secs(30)).expect("stops");
    }
}
