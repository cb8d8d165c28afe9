//! Origin connection settings end to end (real `burrow edge` and `burrow tunnel run` on
//! loopback): the TLS server name an HTTPS origin sees (`matchSNItoHost`, `originServerName`),
//! `caPool` trust, `noTLSVerify` (and `--no-tls-verify` with `--url`), `tcpKeepAlive` on the
//! origin socket, and per-rule `keepAliveConnections` and `keepAliveTimeout` (sockets read from
//! /proc/net/tcp).

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::Command;
use std::thread;
use std::time::Duration;

use burrow_tokio::testbed::{self, EdgeOpts, Proc, Testbed};

mod common;

use common::origin_tls::{check_names, get, names_ingress, timers_to, tls_origin};

const BIN: &str = env!("CARGO_BIN_EXE_burrow");

#[test]
fn origin_tls_names_ca_pool_and_tcp_keep_alive() {
    let bed = Testbed::create(
        Path::new(BIN),
        "e2e-origin-tls",
        "app",
        &["sni.test", "pool.test", "any.test"],
    )
    .expect("tunnel");
    let (origin, pem) = tls_origin(&["named.internal", "sni.test"]);
    let ca = bed.dir().join("origin-ca.pem");
    std::fs::write(&ca, &pem).unwrap();
    let eo = EdgeOpts::loopback().expect("ports");
    let _edge = bed.edge(&eo).expect("edge");
    let (_c, _) = bed
        .connector_with_ingress(eo.quic, &names_ingress(origin, &ca.to_string_lossy()), &[])
        .expect("connector");
    check_names(eo.http, origin.port());
}

/// Starts `burrow tunnel run` for `bed` with `args` after `run` (before the credentials) and
/// waits for its connection.
fn run_connector(bed: &Testbed, eo: &EdgeOpts, config: Option<&Path>, args: &[&str]) -> Proc {
    let metrics = testbed::free_tcp().expect("port");
    let mut cmd = Command::new(BIN);
    cmd.arg("tunnel");
    if let Some(config) = config {
        cmd.arg("--config").arg(config);
    }
    cmd.args(["--edge", &eo.quic.to_string(), "--cacert"])
        .arg(bed.ca())
        .args([
            "--metrics",
            &metrics.to_string(),
            "--ha-connections",
            "1",
            "run",
        ])
        .args(args)
        .arg("--credentials-file")
        .arg(bed.credentials())
        .arg(&bed.id);
    let mut c =
        Proc::spawn("burrow tunnel run", cmd, bed.dir().join("connector.log")).expect("connector");
    testbed::wait_ready(&mut c, metrics, 1, Duration::from_secs(30))
        .unwrap_or_else(|e| panic!("{e}\nconnector: {}", c.log_tail(4000)));
    c
}

/// Stops a connector the graceful way (SIGTERM: it unregisters, so the edge stops routing to
/// it) and waits for it to exit.
fn stop(mut c: Proc) {
    let status = c.terminate(Duration::from_secs(30)).expect("exits");
    assert!(status.success(), "{status}: {}", c.log_tail(3000));
}

/// An HTTPS origin with a self-signed certificate: `noTLSVerify: true` reaches it (200), a rule
/// with neither it nor `caPool` is refused (the edge answers 502), `caPool` with its certificate
/// reaches it; `--no-tls-verify` and `--origin-ca-pool` do the same for `--url`.
#[test]
fn no_tls_verify_in_rules_and_with_url() {
    let bed = Testbed::create(
        Path::new(BIN),
        "e2e-no-tls-verify",
        "app",
        &["skip.test", "strict.test", "pool.test"],
    )
    .expect("tunnel");
    // The certificate names the address dialed, so caPool alone is enough to trust it.
    let (origin, pem) = tls_origin(&["127.0.0.1"]);
    let ca = bed.dir().join("origin-ca.pem");
    std::fs::write(&ca, &pem).unwrap();
    let eo = EdgeOpts::loopback().expect("ports");
    let _edge = bed.edge(&eo).expect("edge");
    let q = |s: &str| serde_json::Value::from(s).to_string();
    let config = bed.dir().join("config.yml");
    std::fs::write(
        &config,
        format!(
            "ingress:\n\
             - hostname: skip.test\n  service: https://{origin}\n  originRequest:\n    noTLSVerify: true\n\
             - hostname: pool.test\n  service: https://{origin}\n  originRequest:\n    caPool: {ca}\n\
             - service: https://{origin}\n",
            ca = q(&ca.to_string_lossy()),
        ),
    )
    .unwrap();
    let c = run_connector(&bed, &eo, Some(&config), &[]);
    assert_eq!(get(eo.http, "skip.test").0, 200, "noTLSVerify: true");
    assert_eq!(
        get(eo.http, "pool.test").0,
        200,
        "caPool with its certificate"
    );
    let (status, body) = get(eo.http, "strict.test");
    assert_eq!(
        status, 502,
        "neither: a self-signed origin is refused: {body}"
    );
    stop(c);

    let url = format!("https://{origin}");
    let ca = ca.to_string_lossy();
    for (args, want) in [
        (vec!["--no-tls-verify"], 200),
        (vec![], 502),
        (vec!["--origin-ca-pool", &ca], 200),
    ] {
        let mut all = vec!["--url", &url, "--grace-period", "1s"];
        all.extend(&args);
        let c = run_connector(&bed, &eo, None, &all);
        let (status, body) = get(eo.http, "strict.test");
        assert_eq!(
            status,
            want,
            "--url with {args:?}: {body}\n{}",
            c.log_tail(3000)
        );
        stop(c);
    }
}

/// Waits up to 10 s for the connector's sockets to `port` to number `n`; returns the count.
fn settle_to(port: u16, n: usize) -> usize {
    for _ in 0..100 {
        if timers_to(port).len() == n {
            break;
        }
        thread::sleep(Duration::from_millis(100));
    }
    timers_to(port).len()
}

#[test]
fn keep_alive_pools_are_per_rule() {
    let bed = Testbed::create(
        Path::new(BIN),
        "e2e-keepalive",
        "app",
        &["few.test", "short.test"],
    )
    .expect("tunnel");
    let few = common::origins::origin();
    let short = common::origins::origin();
    let eo = EdgeOpts::loopback().expect("ports");
    let _edge = bed.edge(&eo).expect("edge");
    let metrics = testbed::free_tcp().expect("port");
    let q = |s: &str| serde_json::Value::from(s).to_string();
    let config = bed.dir().join("config.yml");
    std::fs::write(
        &config,
        format!(
            "tunnel: {id}\ncredentials-file: {creds}\ningress:\n\
             - hostname: few.test\n  service: http://127.0.0.1:{few}\n  originRequest:\n    keepAliveConnections: 1\n\
             - hostname: short.test\n  service: http://127.0.0.1:{short}\n  originRequest:\n    keepAliveTimeout: 1s\n\
             - service: http_status:404\n",
            id = q(&bed.id),
            creds = q(&bed.credentials().to_string_lossy()),
        ),
    )
    .unwrap();
    let mut cmd = Command::new(BIN);
    cmd.args(["tunnel", "--config"])
        .arg(&config)
        .args(["--edge", &eo.quic.to_string(), "--cacert"])
        .arg(bed.ca())
        .args([
            "--metrics",
            &metrics.to_string(),
            "--ha-connections",
            "1",
            "run",
        ]);
    let mut c =
        Proc::spawn("burrow tunnel run", cmd, bed.dir().join("connector.log")).expect("connector");
    testbed::wait_ready(&mut c, metrics, 1, Duration::from_secs(30))
        .unwrap_or_else(|e| panic!("{e}\nconnector: {}", c.log_tail(4000)));

    let http = eo.http;
    let slow: Vec<_> = (0..3)
        .map(|_| {
            thread::spawn(move || {
                let mut s = TcpStream::connect(http).unwrap();
                s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
                write!(
                    s,
                    "GET /slow HTTP/1.1\r\nHost: few.test\r\nConnection: close\r\n\r\n"
                )
                .unwrap();
                let mut out = String::new();
                let _ = s.read_to_string(&mut out);
                out.split_whitespace().nth(1).map(str::to_owned)
            })
        })
        .collect();
    for t in slow {
        assert_eq!(t.join().unwrap().as_deref(), Some("200"));
    }
    assert_eq!(
        settle_to(few, 1),
        1,
        "three connections served; keepAliveConnections: 1 keeps one"
    );

    assert_eq!(get(eo.http, "short.test").0, 200);
    assert_eq!(timers_to(short).len(), 1, "pooled after the request");
    assert_eq!(settle_to(short, 0), 0, "keepAliveTimeout: 1s closes it");
    assert_eq!(
        timers_to(few).len(),
        1,
        "the other rule keeps its default 90 s"
    );
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
    let bed = Testbed::create(Path::new(BIN), name, "app", &["app.test"]).expect("tunnel");
    let wrapped = common::dual_stack::wrapper_resolving(bed.dir(), Path::new(BIN), addrs, false)?;
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
        .expect("connector");
    Some(common::origin_tls::get(eo.http, "app.test"))
}

/// An origin name whose first address refuses (`::1`, the origin listening on 127.0.0.1 only)
/// is dialled at its next one, as cloudflared dials every address of a name.
#[test]
fn a_name_whose_first_address_refuses_is_dialled_at_the_next() {
    let dual = ["::1", "127.0.0.1"];
    if let Some((status, body)) = get_through_name("e2e-refuses", &dual, "127.0.0.1", None) {
        assert_eq!(status, 200, "{body}");
    }
}

/// An origin name whose first address drops SYNs (`::1`) is answered from its IPv4 address,
/// which the dial starts 300 ms later beside it, as cloudflared's (Go's) dialer does. Dialled
/// in turn, the first address took the whole `connectTimeout` and the request failed (502).
#[test]
fn a_name_whose_first_address_drops_syns_is_answered_from_the_other_family() {
    let dual = ["::1", "127.0.0.1"];
    let answer = get_through_name("e2e-drops-v6", &dual, "127.0.0.1", Some("[::1]"));
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
    let answer = get_through_name("e2e-drops-v4", &two, "127.0.0.2", Some("127.0.0.1"));
    if let Some((status, body)) = answer {
        assert_eq!(status, 200, "{body}");
    }
}

/// A static `--edge` name resolving to `::1` first is dialled at its IPv4 address, as
/// cloudflared's `ResolveTCPAddr` picks it: the edge here listens on 127.0.0.1 alone.
#[test]
fn a_static_edge_name_is_dialled_at_its_ipv4_address() {
    let bed =
        Testbed::create(Path::new(BIN), "e2e-edge-name", "app", &["app.test"]).expect("tunnel");
    let Some(wrapped) = common::dual_stack::wrapper_resolving(
        bed.dir(),
        Path::new(BIN),
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
        .expect("connector registered through the named edge");
    assert_eq!(get(eo.http, "app.test").0, 200);
}

/// `--proxy-connect-timeout` bounds the dial of `--url`'s origin, as cloudflared's flag does:
/// an origin that drops SYNs is answered 502 after about 1 s, not after the default 30 s.
#[test]
fn proxy_connect_timeout_bounds_the_url_origins_dial() {
    let bed =
        Testbed::create(Path::new(BIN), "e2e-proxy-timeout", "app", &["app.test"]).expect("tunnel");
    let hole_addr = testbed::free_tcp().expect("port");
    let Some(_hole) = common::dual_stack::blackhole(hole_addr) else {
        return;
    };
    let eo = EdgeOpts::loopback().expect("ports");
    let _edge = bed.edge(&eo).expect("edge");
    let url = format!("http://{hole_addr}");
    let c = run_connector(
        &bed,
        &eo,
        None,
        &["--url", &url, "--proxy-connect-timeout", "1s"],
    );
    let t0 = std::time::Instant::now();
    let (status, body) = get(eo.http, "app.test");
    let took = t0.elapsed();
    assert_eq!(status, 502, "{body}\n{}", c.log_tail(3000));
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_secs(10),
        "answered after {took:?}"
    );
    stop(c);
}
