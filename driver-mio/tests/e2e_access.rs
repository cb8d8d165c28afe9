//! TCP over WebSocket through burrow-mio (what `cloudflared access` opens): `ssh://`/`tcp://`
//! services, `bastion` (by rule, `bastionMode` and `--bastion`), `socks-proxy` and `proxyType:
//! socks` (by rule and `--socks5`), each through the real `burrow edge` on loopback and checked
//! by the same code as burrow-tokio (`common::access`); and `originRequest.access` (Access
//! tokens checked against the team's keys, which burrow-mio fetches off its loop), by
//! `common::access_jwt`.

use std::path::Path;
use std::sync::atomic::AtomicUsize;
use std::sync::Arc;
use std::time::Duration;

#[path = "../../driver-tokio/tests/common/mod.rs"]
mod common;
mod harness;
#[allow(dead_code)]
#[path = "../../driver-tokio/src/testbed.rs"]
mod testbed;

use common::access::*;
use common::access_jwt::{access_config, access_connector, check_access, key_server, origin};
use common::origins::tcp_echo;
use common::stalled::unanswered_origin;
use harness::{burrow, MIO};
use testbed::{EdgeOpts, Proc, Testbed};

/// A tunnel serving `hosts`, its edge, and burrow-mio with `ingress` (YAML under `ingress:`)
/// registered over one connection; the edge's addresses.
fn start(label: &str, hosts: &[&str], ingress: &str) -> (Testbed, Proc, Proc, EdgeOpts) {
    let bed = Testbed::create(burrow(), label, "app", hosts).expect("tunnel");
    let eo = EdgeOpts::loopback().expect("ports");
    let edge = bed.edge(&eo).expect("edge");
    let (c, _metrics) = bed
        .connector_with_ingress_from(Path::new(MIO), eo.quic, ingress, &[])
        .expect("burrow-mio");
    (bed, edge, c, eo)
}

#[test]
fn tcp_services_bridge_websocket_to_raw_tcp() {
    let echo = tcp_echo();
    let (_bed, _edge, mut c, eo) = start(
        "mio-tcp-ws",
        &["ssh.test", "tcp.test"],
        &tcp_services_ingress(echo),
    );
    check_tcp_services(eo.http);
    c.check_alive().expect("burrow-mio alive");
}

#[test]
fn bastion_requests_reach_the_destination_they_name() {
    let (echo_a, echo_b) = (tcp_echo(), tcp_echo());
    let (_bed, _edge, mut c, eo) = start(
        "mio-bastion",
        &["bastion.test", "jump.test"],
        BASTION_INGRESS,
    );
    check_bastion(eo.http, echo_a, echo_b);
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

#[test]
fn socks5_over_websocket_connects_where_ip_rules_allow() {
    let echo = tcp_echo();
    let closed = closed_port();
    let (_bed, _edge, mut c, eo) = start(
        "mio-socks",
        &["socks.test", "closed.test"],
        &socks_proxy_ingress(echo, closed),
    );
    check_socks_proxy(eo.http, echo, closed);
    c.check_alive().expect("burrow-mio alive");
}

/// The destination dial has the rule's `connectTimeout`, on the connector's timers.
#[test]
fn socks5_destination_dial_ends_at_connect_timeout() {
    let (unanswered, _held) = unanswered_origin();
    let (_bed, _edge, mut c, eo) = start(
        "mio-socks-deadline",
        &["slow.test"],
        &socks_deadline_ingress(unanswered),
    );
    check_socks_dial_deadline(eo.http, unanswered);
    c.check_alive().expect("burrow-mio alive");
}

#[test]
fn proxy_type_socks_puts_socks5_in_front_of_a_tcp_origin() {
    let origin = banner_echo();
    let (bed, _edge, mut c, eo) = start(
        "mio-socks-type",
        &["rule.test", "jump.test", "plain.test"],
        &proxy_type_socks_ingress(origin),
    );
    check_proxy_type_socks(eo.http, origin);
    c.check_alive().expect("burrow-mio alive");
    c.terminate(Duration::from_secs(30)).expect("stops");

    // The command line's `--url tcp://... --socks5`.
    let url = format!("tcp://{origin}");
    let mut p = bed
        .connector_without_config(Path::new(MIO), eo.quic, &["--url", &url, "--socks5"])
        .expect("burrow-mio --socks5");
    socks_over_tcp_origin(eo.http, "rule.test", None);
    p.terminate(Duration::from_secs(30)).expect("stops");
}

#[test]
fn access_protected_rules_refuse_unless_the_token_verifies() {
    let bed = Testbed::create(
        burrow(),
        "mio-access-jwt",
        "app",
        &["app.test", "down.test", "open.test"],
    )
    .expect("tunnel");
    let key_hits = Arc::new(AtomicUsize::new(0));
    let keys = key_server(key_hits.clone());
    let origin_hits = Arc::new(AtomicUsize::new(0));
    let origin = origin(origin_hits.clone());
    let eo = EdgeOpts::loopback().expect("ports");
    let _edge = bed.edge(&eo).expect("edge");
    let metrics = testbed::free_tcp().expect("port");
    let config = bed.dir().join("config.yml");
    std::fs::write(&config, access_config(&bed.id, &bed.credentials(), origin)).expect("config");
    let cmd = access_connector(Path::new(MIO), &config, (eo.quic, &bed.ca()), metrics, keys);
    let mut c =
        Proc::spawn("burrow-mio tunnel run", cmd, bed.dir().join("mio.log")).expect("connector");
    testbed::wait_ready(&mut c, metrics, 1, Duration::from_secs(30))
        .unwrap_or_else(|e| panic!("{e}\nburrow-mio: {}", c.log_tail(4000)));
    check_access(eo.http, &origin_hits, &key_hits, &|| c.log_tail(4000));
}

/// `matchSNItoHost`, `originServerName`, `caPool` and `tcpKeepAlive` on HTTPS origins, by the
/// checks burrow-tokio's `e2e_origin_tls.rs` runs (`common::origin_tls`).
#[test]
fn origin_tls_names_ca_pool_and_tcp_keep_alive() {
    use common::origin_tls::{check_names, names_ingress, tls_origin};
    let (origin, pem) = tls_origin(&["named.internal", "sni.test"]);
    let dir = std::env::temp_dir().join(format!("burrow-mio-origin-ca-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let ca = dir.join("origin-ca.pem");
    std::fs::write(&ca, &pem).expect("ca");
    let (_bed, _edge, _c, eo) = start(
        "e2e-mio-origin-tls",
        &["sni.test", "pool.test", "any.test"],
        &names_ingress(origin, &ca.to_string_lossy()),
    );
    check_names(eo.http, origin.port());
    let _ = std::fs::remove_dir_all(&dir);
}

/// Through the connector, in whose namespace [`common::dual_stack::NAME`] resolves to
/// `addrs` in order, one rule `http://NAME:PORT` with `connectTimeout: 5s`, the origin
/// listening on `origin_ip` and `hole_ip` dropping SYNs on the same port: the answer to a
/// request. None where this machine cannot set that up (said on stderr).
fn get_through_name(
    name: &str,
    addrs: &[&str],
    origin_ip: &str,
    hole_ip: Option<&str>,
) -> Option<(u16, String)> {
    let bed = Testbed::create(burrow(), name, "app", &["app.test"]).expect("tunnel");
    let wrapped = common::dual_stack::wrapper_resolving(bed.dir(), Path::new(MIO), addrs, false)?;
    let port = common::origins::origin_at(origin_ip);
    let _hole = match hole_ip {
        Some(ip) => Some(common::dual_stack::blackhole(
            format!("{ip}:{port}").parse().expect("addr"),
        )?),
        None => None,
    };
    let eo = EdgeOpts::loopback().expect("ports");
    let _edge = bed.edge(&eo).expect("edge");
    let ingress = format!(
        "  - service: http://{}:{port}\n    originRequest:\n      connectTimeout: 5s\n",
        common::dual_stack::NAME
    );
    let (_c, _) = bed
        .connector_with_ingress_from(&wrapped, eo.quic, &ingress, &[])
        .expect("burrow-mio");
    Some(common::origin_tls::get(eo.http, "app.test"))
}

/// An origin name whose first address refuses (`::1`, the origin listening on 127.0.0.1 only)
/// is dialled at its next one, as cloudflared dials every address of a name.
#[test]
fn a_name_whose_first_address_refuses_is_dialled_at_the_next() {
    let dual = ["::1", "127.0.0.1"];
    if let Some((status, body)) = get_through_name("e2e-mio-refuses", &dual, "127.0.0.1", None) {
        assert_eq!(status, 200, "{body}");
    }
}

/// An origin name whose first address drops SYNs (`::1`) is answered from its IPv4 address,
/// which the dial starts 300 ms later beside it, as cloudflared's (Go's) dialer does. Dialled
/// in turn, the first address took the whole `connectTimeout` and the request failed (502).
#[test]
fn a_name_whose_first_address_drops_syns_is_answered_from_the_other_family() {
    let dual = ["::1", "127.0.0.1"];
    let answer = get_through_name("e2e-mio-drops-v6", &dual, "127.0.0.1", Some("[::1]"));
    if let Some((status, body)) = answer {
        assert_eq!(status, 200, "{body}");
    }
}

/// A name's first IPv4 address dropping SYNs is given up after its share of `connectTimeout`
/// (half of 5 s for the first of two) and the next one answers, as cloudflared's (Go's)
/// dialer shares the time (2.5 s for both, and cloudflared, in the same set-up).
#[test]
fn a_name_whose_first_address_drops_syns_is_given_up_after_its_share() {
    let two = ["127.0.0.1", "127.0.0.2"];
    let answer = get_through_name("e2e-mio-drops-v4", &two, "127.0.0.2", Some("127.0.0.1"));
    if let Some((status, body)) = answer {
        assert_eq!(status, 200, "{body}");
    }
}

/// A static `--edge` name resolving to `::1` first is dialled at its IPv4 address, as
/// cloudflared's `ResolveTCPAddr` picks it: the edge here listens on 127.0.0.1 alone.
#[test]
fn a_static_edge_name_is_dialled_at_its_ipv4_address() {
    let bed = Testbed::create(burrow(), "e2e-mio-edge-name", "app", &["app.test"]).expect("tunnel");
    let Some(wrapped) = common::dual_stack::wrapper_resolving(
        bed.dir(),
        Path::new(MIO),
        &["::1", "127.0.0.1"],
        true,
    ) else {
        return;
    };
    let port = common::origins::origin();
    let eo = EdgeOpts::loopback().expect("ports");
    let _edge = bed.edge(&eo).expect("edge");
    let ingress = format!("  - service: http://127.0.0.1:{port}\n");
    let (_c, _) = bed
        .connector_with_ingress_from(&wrapped, eo.quic, &ingress, &[])
        .expect("burrow-mio registered through the named edge");
    assert_eq!(common::origin_tls::get(eo.http, "app.test").0, 200);
}
