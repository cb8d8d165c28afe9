//! HTTPS origins that report the TLS server name they were offered, and the checks of
//! `originServerName`, `matchSNItoHost`, `caPool` and `tcpKeepAlive` that burrow-tokio's
//! `e2e_origin_tls.rs` and burrow-mio's `e2e_access.rs` run against their connector.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::thread;
use std::time::Duration;

use rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};

/// An HTTPS origin whose certificate names `names`; it answers every request with the SNI it
/// was offered. Returns its address and its certificate (PEM).
pub fn tls_origin(names: &[&str]) -> (SocketAddr, String) {
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

/// GET / through the edge's HTTP listener `http` for `host`: the status and body.
pub fn get(http: SocketAddr, host: &str) -> (u16, String) {
    let mut s = TcpStream::connect(http).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    write!(
        s,
        "GET / HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    let status = super::client::status_of(&out);
    (
        status,
        out.split_once("\r\n\r\n").map_or("", |(_, b)| b).to_owned(),
    )
}

/// The keep-alive timer of the loopback TCP sockets connected to `port` (remote side), in
/// seconds, from /proc/net/tcp: (timer kind, seconds left). Kind 2 is keep-alive.
pub fn timers_to(port: u16) -> Vec<(u32, f64)> {
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

/// The rules [`check_names`] expects (YAML under `ingress:`), for a [`tls_origin`] at `origin`
/// naming `named.internal` and `sni.test`, trusted through the PEM file at `ca`.
pub fn names_ingress(origin: SocketAddr, ca: &str) -> String {
    let ca = serde_json::Value::from(ca).to_string();
    format!(
        "  - hostname: sni.test\n    service: https://{origin}\n    originRequest:\n      matchSNItoHost: true\n      caPool: {ca}\n      tcpKeepAlive: 7s\n\
         \x20 - hostname: pool.test\n    service: https://{origin}\n    originRequest:\n      originServerName: named.internal\n      caPool: {ca}\n\
         \x20 - service: https://{origin}\n    originRequest:\n      originServerName: named.internal\n"
    )
}

/// Through the edge's HTTP listener `http`, with [`names_ingress`]'s rules for the origin on
/// `origin_port`: `matchSNItoHost` offers the request's Host, `originServerName` its name, both
/// verified by `caPool`; without `caPool` the self-signed origin is refused (502); the pooled
/// `sni.test` connection keeps alive every 7 s at most.
pub fn check_names(http: SocketAddr, origin_port: u16) {
    assert_eq!(
        get(http, "sni.test"),
        (200, "sni=sni.test".into()),
        "matchSNItoHost: the Host is the name, verified by caPool"
    );
    assert_eq!(
        get(http, "pool.test"),
        (200, "sni=named.internal".into()),
        "originServerName, verified by caPool"
    );
    let (status, body) = get(http, "any.test");
    assert_eq!(
        status, 502,
        "a self-signed origin without caPool is not trusted: {body}"
    );
    // The sni.test connection idles in the pool with a 7 s keep-alive timer (default 30 s).
    let ka = timers_to(origin_port);
    assert!(
        ka.iter().any(|&(kind, left)| kind == 2 && left <= 7.0),
        "a keep-alive timer of at most 7 s on the origin socket: {ka:?}"
    );
}
