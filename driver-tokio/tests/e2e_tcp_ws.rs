//! `ssh://`, `rdp://`, `smb://`, `tcp://` services end to end: an eyeball WebSocket (what
//! `cloudflared access tcp` opens) through `burrow edge` and `burrow tunnel run` on loopback,
//! bridged to a raw TCP echo origin as cloudflared does (the checks: `common::access`, run
//! against burrow-mio too).

use std::path::Path;

use burrow_tokio::testbed::{EdgeOpts, Testbed};

mod common;
use common::access::{check_tcp_services, tcp_services_ingress};
use common::origins::tcp_echo;

const BIN: &str = env!("CARGO_BIN_EXE_burrow");

#[test]
fn tcp_services_bridge_websocket_to_raw_tcp() {
    let bed = Testbed::create(
        Path::new(BIN),
        "e2e-tcp-ws",
        "app",
        &["ssh.test", "tcp.test"],
    )
    .expect("tunnel");
    let echo = tcp_echo();
    let eo = EdgeOpts::loopback().expect("ports");
    let _edge = bed.edge(&eo).expect("edge");
    let (mut c, _metrics) = bed
        .connector_with_ingress(eo.quic, &tcp_services_ingress(echo), &[])
        .expect("connector");
    check_tcp_services(eo.http);
    c.check_alive().expect("connector alive");
}
