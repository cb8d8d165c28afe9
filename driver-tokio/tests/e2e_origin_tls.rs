//! Origin connection settings end to end (real `burrow edge` and `burrow tunnel run` on
//! loopback): the TLS server name an HTTPS origin sees (`matchSNItoHost`, `originServerName`),
//! `caPool` trust, `noTLSVerify` (and `--no-tls-verify` with `--url`), `tcpKeepAlive` on the
//! origin socket, and per-rule `keepAliveConnections` and `keepAliveTimeout` (sockets read from
//! /proc/net/tcp).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::thread;
use std::time::Duration;

use burrow_tokio::testbed::{self, EdgeOpts, Proc, Testbed};
use rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};

mod common;

const BIN: &str = env!("CARGO_BIN_EXE_burrow");

/// An HTTPS origin whose certificate names `names`; it answers every request with the SNI it
/// was offered. Returns its address and its certificate (PEM).
fn tls_origin(names: &[&str]) -> (SocketAddr, String) {
    let ck = rcgen::generate_simple_self_signed(
        names.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>(),
    )
    .unwrap();
    let pem = ck.cert.pem();
    let key = PrivateKeyDer::from(PrivatePkcs8KeyDer::from(ck.signing_key.serialize_der()));
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let config = Arc::new(
        rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(vec![ck.cert.der().clone()], key)
            .unwrap(),
    );
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    thread::spawn(move || {
        for s in l.incoming().flatten() {
            let config = config.clone();
            thread::spawn(move || {
                let conn = rustls::ServerConnection::new(config).unwrap();
                let mut tls = rustls::StreamOwned::new(conn, s);
                loop {
                    let mut head = Vec::new();
                    let mut line = String::new();
                    {
                        let mut r = BufReader::new(&mut tls);
                        loop {
                            line.clear();
                            if r.read_line(&mut line).unwrap_or(0) == 0 {
                                return;
                            }
                            if line == "\r\n" {
                                break;
                            }
                            head.push(line.clone());
                        }
                    }
                    let sni = tls.conn.server_name().unwrap_or("(none)").to_owned();
                    let body = format!("sni={sni}");
                    if write!(
                        tls,
                        "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{body}",
                        body.len()
                    )
                    .is_err()
                    {
                        return;
                    }
                    let _ = tls.flush();
                }
            });
        }
    });
    (addr, pem)
}

fn get(http: SocketAddr, host: &str) -> (u16, String) {
    let mut s = TcpStream::connect(http).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    write!(
        s,
        "GET / HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    let status = common::client::status_of(&out);
    (
        status,
        out.split_once("\r\n\r\n").map_or("", |(_, b)| b).to_owned(),
    )
}

/// The keep-alive timer of the loopback TCP sockets connected to `port` (remote side), in
/// seconds, from /proc/net/tcp: (timer kind, seconds left). Kind 2 is keep-alive.
fn timers_to(port: u16) -> Vec<(u32, f64)> {
    let text = std::fs::read_to_string("/proc/net/tcp").unwrap();
    let hz = 100.0; // USER_HZ, what /proc reports jiffies in
    text.lines()
        .skip(1)
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            let rem_port = u16::from_str_radix(f.get(2)?.split(':').nth(1)?, 16).ok()?;
            let st = f.get(3)?;
            if rem_port != port || *st != "01" {
                return None;
            }
            let (kind, when) = f.get(5)?.split_once(':')?;
            Some((
                u32::from_str_radix(kind, 16).ok()?,
                u64::from_str_radix(when, 16).ok()? as f64 / hz,
            ))
        })
        .collect()
}

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
    let metrics = testbed::free_tcp().expect("port");
    let q = |s: &str| serde_json::Value::from(s).to_string();
    let config = bed.dir().join("config.yml");
    std::fs::write(
        &config,
        format!(
            "tunnel: {id}\ncredentials-file: {creds}\ningress:\n\
             - hostname: sni.test\n  service: https://{origin}\n  originRequest:\n    matchSNItoHost: true\n    caPool: {ca}\n    tcpKeepAlive: 7s\n\
             - hostname: pool.test\n  service: https://{origin}\n  originRequest:\n    originServerName: named.internal\n    caPool: {ca}\n\
             - service: https://{origin}\n  originRequest:\n    originServerName: named.internal\n",
            id = q(&bed.id),
            creds = q(&bed.credentials().to_string_lossy()),
            ca = q(&ca.to_string_lossy()),
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

    assert_eq!(
        get(eo.http, "sni.test"),
        (200, "sni=sni.test".into()),
        "matchSNItoHost: the Host is the name, verified by caPool"
    );
    assert_eq!(
        get(eo.http, "pool.test"),
        (200, "sni=named.internal".into()),
        "originServerName, verified by caPool"
    );
    let (status, body) = get(eo.http, "any.test");
    assert_eq!(
        status, 502,
        "a self-signed origin without caPool is not trusted: {body}"
    );

    // The sni.test connection idles in the pool with a 7 s keep-alive timer (default 30 s).
    let ka = timers_to(origin.port());
    assert!(
        ka.iter().any(|&(kind, left)| kind == 2 && left <= 7.0),
        "a keep-alive timer of at most 7 s on the origin socket: {ka:?}"
    );
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
