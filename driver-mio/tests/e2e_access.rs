//! TCP over WebSocket through burrow-mio (what `cloudflared access` opens): `ssh://`/`tcp://`
//! services, `bastion` (by rule, `bastionMode` and `--bastion`), each through the real `burrow
//! edge` on loopback and checked by the same code as burrow-tokio (`common::access`).

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

#[allow(dead_code)]
#[path = "../../driver-tokio/tests/common/mod.rs"]
mod common;
mod harness;
#[allow(dead_code)]
#[path = "../../driver-tokio/src/testbed.rs"]
mod testbed;

use common::access::*;
use common::origins::tcp_echo;
use harness::{burrow, MIO};
use testbed::{EdgeOpts, Proc, Testbed};

/// A tunnel serving `hosts`, its edge, and burrow-mio with `ingress` (YAML under `ingress:`)
/// registered over one connection; the edge's HTTP address.
fn start(label: &str, hosts: &[&str], ingress: &str) -> (Testbed, Proc, Proc, SocketAddr) {
    let bed = Testbed::create(burrow(), label, "app", hosts).expect("tunnel");
    let eo = EdgeOpts::loopback().expect("ports");
    let edge = bed.edge(&eo).expect("edge");
    let (c, _metrics) = bed
        .connector_with_ingress_from(Path::new(MIO), eo.quic, ingress, &[])
        .expect("burrow-mio");
    (bed, edge, c, eo.http)
}

#[test]
fn tcp_services_bridge_websocket_to_raw_tcp() {
    let echo = tcp_echo();
    let (_bed, _edge, mut c, http) = start(
        "mio-tcp-ws",
        &["ssh.test", "tcp.test"],
        &tcp_services_ingress(echo),
    );
    check_tcp_services(http);
    c.check_alive().expect("burrow-mio alive");
}

#[test]
fn bastion_requests_reach_the_destination_they_name() {
    let (echo_a, echo_b) = (tcp_echo(), tcp_echo());
    let (_bed, _edge, mut c, http) = start(
        "mio-bastion",
        &["bastion.test", "jump.test"],
        BASTION_INGRESS,
    );
    check_bastion(http, echo_a, echo_b);
    c.check_alive().expect("burrow-mio alive");
}

/// `--bastion` with no config file: the one origin is the bastion.
#[test]
fn bastion_flag_makes_the_one_origin_a_bastion() {
    let bed = Testbed::create(burrow(), "mio-bastion-flag", "app", &["any.test"]).expect("tunnel");
    let echo = tcp_echo();
    let eo = EdgeOpts::loopback().expect("ports");
    let _edge = bed.edge(&eo).expect("edge");
    let mut c = bed
        .connector_without_config(Path::new(MIO), eo.quic, &["--bastion"])
        .expect("burrow-mio");
    let mut s = ws_to(eo.http, "any.test", Some(&echo.to_string())).expect("upgrade");
    assert_eq!(echo_once(&mut s, b"jumped"), b"jumped");
    assert_eq!(ws_to(eo.http, "any.test", None).err(), Some(502));
    c.terminate(Duration::from_secs(30)).expect("stops");
}
