//! The edge under attack (issue 11): the built `burrow` binary as processes over real loopback
//! sockets, TLS and QUIC, driven the way a hostile eyeball or an unauthenticated peer would.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::Command;
use std::thread;
use std::time::{Duration, Instant};

use base64::Engine;
use burrow_core::control::connector::{ControlClient, ControlEvent};
use burrow_core::control::Registration;
use burrow_core::rpc::message;
use burrow_tokio::testbed::{self, ConnectorOpts, EdgeOpts, Proc, Testbed};
use uuid::Uuid;

mod common;
use common::body::{byte, digest, BIG};
use common::client::{labelled, metrics_text, request, response};
use common::origins::origin;
use common::quic::RawQuic;

const BIN: &str = env!("CARGO_BIN_EXE_burrow");

/// Edge and a connector with `ha` connections whose every hostname goes to the test origin.
fn start(bed: &Testbed, eo: &EdgeOpts, ha: u8) -> (Proc, Proc) {
    let (edge, connector, _) = start_with_metrics(bed, eo, ha);
    (edge, connector)
}

/// [`start`], with the connector's metrics address.
fn start_with_metrics(bed: &Testbed, eo: &EdgeOpts, ha: u8) -> (Proc, Proc, SocketAddr) {
    let ingress = vec![(None, format!("http://127.0.0.1:{}", origin()))];
    start_over(bed, eo, ha, "quic", ingress)
}

/// [`start_with_metrics`] over `protocol` with these ingress rules.
fn start_over(
    bed: &Testbed,
    eo: &EdgeOpts,
    ha: u8,
    protocol: &str,
    ingress: Vec<(Option<String>, String)>,
) -> (Proc, Proc, SocketAddr) {
    let edge = bed.edge(eo).expect("edge");
    let metrics = testbed::free_tcp().expect("port");
    let mut connector = bed
        .connector(&ConnectorOpts {
            edge: eo.quic,
            metrics,
            ingress,
            ha_connections: ha,
            extra: vec!["--protocol".into(), protocol.into()],
            config_extra: String::new(),
        })
        .expect("connector");
    testbed::wait_ready(
        &mut connector,
        metrics,
        usize::from(ha),
        Duration::from_secs(30),
    )
    .unwrap_or_else(|e| panic!("{e}\nconnector: {}", connector.log_tail(4000)));
    (edge, connector, metrics)
}

/// An eyeball connection to `http` that has sent `request` and waits at most 20 s per read.
fn sent(http: SocketAddr, request: &str) -> TcpStream {
    let mut s = TcpStream::connect(http).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(20)))
        .expect("timeout");
    s.write_all(request.as_bytes()).expect("request");
    s
}

fn get_host(http: SocketAddr, host: &str, path: &str, extra: &str) -> (u16, Vec<u8>) {
    request(
        http.port(),
        &format!("GET {path} HTTP/1.1\r\nHost: {host}\r\n{extra}Connection: close\r\n\r\n"),
        b"",
    )
}

fn mode(p: &Path) -> u32 {
    std::fs::metadata(p)
        .unwrap_or_else(|e| panic!("{}: {e}", p.display()))
        .permissions()
        .mode()
        & 0o777
}

fn create(dir: &Path, name: &str, hostnames: &[&str]) -> std::process::Output {
    let mut c = Command::new(BIN);
    c.args(["edge", "--dir"])
        .arg(dir)
        .args(["tunnel", "create", name]);
    for h in hostnames {
        c.args(["--hostname", h]);
    }
    c.output().expect("tunnel create")
}

/// Item 5: the tunnels file (every secret) and the edge's key are the owner's only.
#[test]
fn secrets_on_disk_are_owner_only() {
    let bed = Testbed::create(Path::new(BIN), "e-perm", "app", &["perm.test"]).expect("bed");
    let dir = bed.dir().join("state");
    let out = create(&dir, "app", &["app.test"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(mode(&dir), 0o700, "state directory");
    assert_eq!(mode(&dir.join("tunnels.json")), 0o600, "tunnels.json");
    let mut c = Command::new(BIN);
    c.args(["edge", "--dir"])
        .arg(&dir)
        .args(["--listen", &testbed::free_udp().expect("port").to_string()])
        .args(["--http", &testbed::free_tcp().expect("port").to_string()]);
    let mut edge = Proc::spawn("burrow edge", c, bed.dir().join("perm-edge.log")).expect("edge");
    testbed::wait_for(Duration::from_secs(20), "edge key", || {
        edge.check_alive()?;
        Ok(dir.join("ca.pem").exists())
    })
    .expect("edge started");
    assert_eq!(mode(&dir.join("edge-key.pem")), 0o600, "edge-key.pem");
    let leftovers: Vec<_> = std::fs::read_dir(&dir)
        .expect("dir")
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains(".tmp"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

/// Item 6: the most specific wildcard wins whatever the creation order, a taken hostname is
/// refused, and hostnames match whatever their case.
#[test]
fn routing_most_specific_unique_and_case_insensitive() {
    let bed = Testbed::create(
        Path::new(BIN),
        "e-route",
        "wide",
        &["*.example.org", "app.example.test"],
    )
    .expect("bed");
    // Created after the wider wildcard; never connected.
    let out = create(bed.dir(), "narrow", &["*.a.example.org"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = create(bed.dir(), "thief", &["APP.example.test"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "a taken hostname was accepted");
    assert!(
        err.contains("app.example.test") && err.contains("already"),
        "{err}"
    );

    let eo = EdgeOpts::loopback().expect("ports");
    let (_edge, _connector) = start(&bed, &eo, 1);
    assert_eq!(
        get_host(eo.http, "x.example.org", "/", "").0,
        200,
        "wide wildcard"
    );
    assert_eq!(
        get_host(eo.http, "x.a.example.org", "/", "").0,
        502,
        "x.a.example.org belongs to the (unconnected) narrow tunnel"
    );
    assert_eq!(
        get_host(eo.http, "APP.Example.TEST", "/", "").0,
        200,
        "case"
    );
}

/// Item 7: the edge owns the client's identity: `Cf-Connecting-Ip` is the real peer, one
/// `X-Forwarded-For` chain ends in it, forged `Cf-*` headers do not reach the origin.
#[test]
fn client_identity_is_not_spoofable() {
    let bed = Testbed::create(Path::new(BIN), "e-ident", "app", &["app.test"]).expect("bed");
    let eo = EdgeOpts::loopback().expect("ports");
    let (_edge, _connector) = start(&bed, &eo, 1);
    let (status, body) = get_host(
        eo.http,
        "app.test",
        "/headers",
        "Cf-Connecting-Ip: 6.6.6.6\r\nX-Forwarded-For: 1.2.3.4\r\nCf-Ray: forged\r\nCF-IPCountry: XX\r\n",
    );
    assert_eq!(status, 200);
    let seen = String::from_utf8_lossy(&body);
    let values = |name: &str| -> Vec<&str> {
        seen.lines()
            .filter_map(|l| l.strip_prefix(name)?.strip_prefix(": "))
            .collect()
    };
    assert_eq!(values("cf-connecting-ip"), ["127.0.0.1"], "{seen}");
    assert_eq!(values("x-forwarded-for"), ["1.2.3.4, 127.0.0.1"], "{seen}");
    assert!(
        !seen.contains("forged") && !seen.contains("6.6.6.6"),
        "{seen}"
    );
    assert!(values("cf-ipcountry").is_empty(), "{seen}");
}

/// Item 2: eyeballs that hang up before the response head must not leave their tunnel
/// streams holding the connection's receive window: later requests still get through.
#[test]
fn eyeballs_that_hang_up_free_their_tunnel_streams() {
    let bed = Testbed::create(Path::new(BIN), "e-abort", "app", &["app.test"]).expect("bed");
    let eo = EdgeOpts::loopback().expect("ports");
    // One connection: 30 MiB of receive window, 6 MiB per stream.
    let (_edge, _connector) = start(&bed, &eo, 1);
    for _ in 0..8 {
        let mut s = TcpStream::connect(eo.http).expect("connect");
        s.write_all(b"GET /slowbig HTTP/1.1\r\nHost: app.test\r\n\r\n")
            .expect("request");
        // Gone well before the origin answers (after 1 s).
        thread::sleep(Duration::from_millis(100));
    }
    // The origin answers the abandoned requests.
    thread::sleep(Duration::from_secs(3));
    big_download_comes(eo.http, "a later 16 MiB response came through");
}

/// Downloads `/big` (16 MiB) on an eyeball connection of its own: all of it comes, each read
/// within 20 s, or the test fails saying `what`.
fn big_download_comes(http: SocketAddr, what: &str) {
    let mut s = sent(
        http,
        "GET /big HTTP/1.1\r\nHost: app.test\r\nConnection: close\r\n\r\n",
    );
    let mut got = Vec::new();
    let read = s.read_to_end(&mut got);
    assert!(
        read.is_ok() && got.len() > BIG,
        "{what} ({} bytes, {read:?})",
        got.len()
    );
}

/// Downloads whose eyeballs take nothing do not stop the tunnel connection they share: each
/// holds at most its own stream window of unread response at the edge, and the connection's
/// window keeps room for the other streams. With a fixed 30 MiB connection window, five
/// unread 6 MiB stream windows used it up and no other response could come.
#[test]
fn unread_downloads_leave_room_for_other_requests() {
    requests_beside_unread_downloads("e-unread", "quic", 10, Duration::from_secs(3));
}

/// The same over HTTP/2, where a stream's window was the whole connection's (1 MiB).
#[test]
fn unread_downloads_leave_room_for_other_requests_over_http2() {
    requests_beside_unread_downloads("e-unread2", "http2", 10, Duration::from_secs(3));
}

/// Past the streams the window makes room for (32), a new request resets those that waited
/// on their eyeballs longer than 10 s, and goes through.
#[test]
fn a_crowd_of_unread_downloads_makes_way_for_new_requests() {
    requests_beside_unread_downloads("e-crowd", "quic", 40, Duration::from_secs(12));
}

/// Leaves `unread` downloads of 100 MiB unread for `wait`, then downloads 16 MiB three
/// times, on a tunnel of one connection over `protocol`.
fn requests_beside_unread_downloads(label: &str, protocol: &str, unread: usize, wait: Duration) {
    let bed = Testbed::create(Path::new(BIN), label, "app", &["app.test"]).expect("bed");
    let eo = EdgeOpts::loopback().expect("ports");
    let ingress = vec![(None, format!("http://127.0.0.1:{}", origin()))];
    let (_edge, _connector, _) = start_over(&bed, &eo, 1, protocol, ingress);
    // Never read: each fills its socket buffers, then its stream window at the edge.
    let unread: Vec<TcpStream> = (0..unread)
        .map(|_| sent(eo.http, "GET /huge HTTP/1.1\r\nHost: app.test\r\n\r\n"))
        .collect();
    thread::sleep(wait);
    let what = format!(
        "a 16 MiB response came through beside {} unread ones",
        unread.len()
    );
    for _ in 0..3 {
        big_download_comes(eo.http, &what);
    }
}

/// The same at the connector: request bodies an origin does not read hold their stream
/// windows there, and the tunnel connection keeps room for the other requests.
#[test]
fn unread_uploads_leave_room_for_other_requests() {
    requests_beside_unread_uploads("e-sink", "quic", 8, Duration::ZERO);
}

/// The same over HTTP/2.
#[test]
fn unread_uploads_leave_room_for_other_requests_over_http2() {
    requests_beside_unread_uploads("e-sink2", "http2", 8, Duration::ZERO);
}

/// Past the requests the window makes room for (8), those whose origin took nothing for
/// more than 10 s are reset, and new uploads go through.
#[test]
fn a_crowd_of_unread_uploads_makes_way_for_new_requests() {
    requests_beside_unread_uploads("e-sinks", "quic", 16, Duration::from_secs(11));
}

/// The same over HTTP/2.
#[test]
fn a_crowd_of_unread_uploads_makes_way_for_new_requests_over_http2() {
    requests_beside_unread_uploads("e-sinks2", "http2", 16, Duration::from_secs(11));
}

/// Sends `unread` uploads to an origin that never reads and waits `wait`, then uploads 1 MiB
/// three times, on a tunnel of one connection over `protocol`. With more than 8 unread, some
/// must have been reset to make room.
fn requests_beside_unread_uploads(label: &str, protocol: &str, unread: usize, wait: Duration) {
    let bed =
        Testbed::create(Path::new(BIN), label, "app", &["app.test", "sink.test"]).expect("bed");
    let eo = EdgeOpts::loopback().expect("ports");
    // Takes connections and never reads from them.
    let sink = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let sink_port = sink.local_addr().expect("addr").port();
    thread::spawn(move || {
        let held: Vec<TcpStream> = sink.incoming().flatten().collect();
        drop(held);
    });
    let ingress = vec![
        (
            Some("sink.test".into()),
            format!("http://127.0.0.1:{sink_port}"),
        ),
        (None, format!("http://127.0.0.1:{}", origin())),
    ];
    let (_edge, connector, _) = start_over(&bed, &eo, 1, protocol, ingress);
    let unread: Vec<TcpStream> = thread::scope(|scope| {
        let stuffing: Vec<_> = (0..unread)
            .map(|_| scope.spawn(|| stuffed_upload(eo.http)))
            .collect();
        stuffing
            .into_iter()
            .map(|h| h.join().expect("stuffed"))
            .collect()
    });
    thread::sleep(wait);
    // Uploads of their own: over HTTP/2 only request bodies take the connector's window.
    let body: Vec<u8> = (0..1 << 20).map(byte).collect();
    for _ in 0..3 {
        let mut s = sent(
            eo.http,
            "POST /sum HTTP/1.1\r\nHost: app.test\r\nContent-Length: 1048576\r\nConnection: close\r\n\r\n",
        );
        s.set_write_timeout(Some(Duration::from_secs(20)))
            .expect("timeout");
        s.write_all(&body)
            .unwrap_or_else(|e| panic!("a 1 MiB upload beside {} unread ones: {e}", unread.len()));
        let (status, sum) = response(s);
        assert_eq!(
            (status, String::from_utf8_lossy(&sum).into_owned()),
            (200, digest(&body)),
            "a 1 MiB upload came through beside {} unread ones",
            unread.len()
        );
    }
    if unread.len() > 8 {
        assert!(
            unread.iter().any(ended),
            "no unread upload was reset to make room"
        );
        let log = connector.log_tail(100_000);
        assert!(
            log.contains("origin took none of the request body"),
            "each reset is logged: {log}"
        );
    }
}

/// An upload to `sink.test` of a 100 MiB body, sent as far as the way to the origin takes:
/// until 16 MiB (more than a stream window plus the sockets' buffers on the way) or 2 s
/// without progress.
fn stuffed_upload(http: SocketAddr) -> TcpStream {
    let mut s = sent(
        http,
        "POST /up HTTP/1.1\r\nHost: sink.test\r\nContent-Length: 104857600\r\n\r\n",
    );
    s.set_nonblocking(true).expect("nonblocking");
    let chunk = vec![7u8; 256 * 1024];
    let mut stuck = Instant::now();
    let mut sent_bytes = 0;
    while sent_bytes < 16 << 20 && stuck.elapsed() < Duration::from_secs(2) {
        match s.write(&chunk) {
            Ok(n) => {
                sent_bytes += n;
                stuck = Instant::now();
            }
            Err(_) => thread::sleep(Duration::from_millis(10)),
        }
    }
    s.set_nonblocking(false).expect("blocking");
    s
}

/// Whether the edge ended the exchange on `s` (an answer, a close or a reset) within 5 s.
fn ended(s: &TcpStream) -> bool {
    s.set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    // A peek sees a close (0), an answer, or a reset alike.
    match s.peek(&mut [0u8; 256]) {
        Ok(_) => true,
        Err(e) => !matches!(
            e.kind(),
            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
        ),
    }
}

/// A response the origin cuts short (its connection closes in the middle of a chunked body)
/// reaches the eyeball cut short too: the edge aborts the eyeball's connection after the bytes
/// that came, rather than end the chunked body as if it were whole.
#[test]
fn a_response_cut_at_the_origin_is_not_ended_as_whole_at_the_eyeball() {
    let bed = Testbed::create(Path::new(BIN), "e-cut", "app", &["app.test"]).expect("bed");
    let eo = EdgeOpts::loopback().expect("ports");
    let (_edge, _connector) = start(&bed, &eo, 1);
    let mut s = sent(eo.http, "GET /cut HTTP/1.1\r\nHost: app.test\r\n\r\n");
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    let ended = loop {
        match s.read(&mut buf) {
            Ok(0) => break "EOF".to_owned(),
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) => break e.kind().to_string(),
        }
    };
    let text = String::from_utf8_lossy(&got);
    assert!(
        text.starts_with("HTTP/1.1 200") && text.contains("first"),
        "the head and the first chunk came ({ended}): {text:?}"
    );
    assert!(
        ended == "EOF" || ended.contains("reset"),
        "the edge closed the connection (not a read timeout): {ended}, {text:?}"
    );
    assert!(
        !text.ends_with("0\r\n\r\n"),
        "the body was not ended as whole: {text:?}"
    );
}

/// Issue 12: a hang-up is an input of the edge loop, not something it scans for, and none is
/// missed. Many eyeballs hang up at once at different points of the exchange (before the
/// response head, after part of a response body); the edge resets every one of their tunnel
/// streams, so the connector ends every request (were one missed, its stream would sit on
/// unread response bytes, in flight for good).
#[test]
fn many_eyeballs_hanging_up_mid_exchange_leave_nothing_behind() {
    const EACH: usize = 16;
    let bed = Testbed::create(Path::new(BIN), "e-hangups", "app", &["app.test"]).expect("bed");
    let eo = EdgeOpts::loopback().expect("ports");
    let (_edge, _connector, metrics) = start_with_metrics(&bed, &eo, 2);
    let total = || labelled(&metrics_text(metrics), "cloudflared_tunnel_total_requests");
    let before = total();
    // Before the head (the origin answers after 1 s), and in the middle of a 16 MiB and of a
    // 100 MiB body.
    let paths = ["/slowbig", "/big", "/huge"];
    let all_sent = std::sync::Arc::new(std::sync::Barrier::new(paths.len() * EACH + 1));
    let eyeballs: Vec<_> = (0..paths.len() * EACH)
        .map(|i| {
            let path = paths[i % paths.len()];
            let all_sent = all_sent.clone();
            let http = eo.http;
            thread::spawn(move || {
                let mut s = sent(
                    http,
                    &format!("GET {path} HTTP/1.1\r\nHost: app.test\r\n\r\n"),
                );
                all_sent.wait();
                if path != "/slowbig" {
                    // The head and the first 256 KiB of the body, then gone.
                    let mut got = 0;
                    let mut buf = [0u8; 16 * 1024];
                    while got < 256 * 1024 {
                        match s.read(&mut buf) {
                            Ok(0) | Err(_) => panic!("{path}: the edge ended it first"),
                            Ok(n) => got += n,
                        }
                    }
                }
            })
        })
        .collect();
    // Every request reached the connector before anyone hangs up.
    let want = before + (paths.len() * EACH) as f64;
    testbed::wait_for(
        Duration::from_secs(20),
        "every request at the connector",
        || Ok(total() >= want),
    )
    .expect("requests");
    all_sent.wait();
    for e in eyeballs {
        e.join().expect("eyeball");
    }
    testbed::wait_for(Duration::from_secs(20), "no request in flight", || {
        Ok(labelled(
            &metrics_text(metrics),
            "cloudflared_tunnel_concurrent_requests_per_tunnel",
        ) == 0.0)
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", metrics_text(metrics)));
    let (status, body) = get_host(eo.http, "app.test", "/big", "");
    assert_eq!((status, body.len()), (200, BIG), "a later request");
}

/// Whether the edge closed `s` (EOF or reset) within `limit`.
fn closed_within(s: &mut TcpStream, limit: Duration) -> bool {
    s.set_read_timeout(Some(limit)).expect("timeout");
    let mut buf = [0u8; 4096];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => continue,
            Err(e) => {
                return !matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                )
            }
        }
    }
}

/// Item 4: half-sent and idle eyeball connections are closed after the header timeout, and
/// no more than `--http-max-connections` are served at once.
#[test]
fn eyeball_port_has_a_header_timeout_and_a_connection_cap() {
    let bed = Testbed::create(Path::new(BIN), "e-slowloris", "app", &["app.test"]).expect("bed");
    let mut eo = EdgeOpts::loopback().expect("ports");
    eo.extra = ["--http-header-timeout", "1s", "--http-max-connections", "3"]
        .map(String::from)
        .to_vec();
    let _edge = bed.edge(&eo).expect("edge");
    // `bed.edge` probed the port; let that connection go.
    thread::sleep(Duration::from_millis(500));

    let mut half = TcpStream::connect(eo.http).expect("connect");
    half.write_all(b"GET / HTTP/1.1\r\nHost: app")
        .expect("half");
    assert!(
        closed_within(&mut half, Duration::from_secs(15)),
        "a half-sent request head is closed"
    );
    // Idle after a response (no tunnel: the edge answers 404 itself).
    let mut idle = TcpStream::connect(eo.http).expect("connect");
    idle.write_all(b"GET / HTTP/1.1\r\nHost: nobody.test\r\n\r\n")
        .expect("request");
    assert!(
        closed_within(&mut idle, Duration::from_secs(15)),
        "an idle keep-alive connection is closed"
    );

    // The cap: three silent connections hold every slot...
    let held: Vec<TcpStream> = (0..3)
        .map(|_| TcpStream::connect(eo.http).expect("connect"))
        .collect();
    thread::sleep(Duration::from_millis(200));
    let mut fourth = TcpStream::connect(eo.http).expect("connect");
    fourth
        .write_all(b"GET / HTTP/1.1\r\nHost: nobody.test\r\nConnection: close\r\n\r\n")
        .expect("request");
    fourth
        .set_read_timeout(Some(Duration::from_millis(500)))
        .expect("timeout");
    let mut buf = [0u8; 64];
    assert!(
        fourth.read(&mut buf).is_err(),
        "a fourth connection is not served while three are open"
    );
    // ...until they go.
    drop(held);
    fourth
        .set_read_timeout(Some(Duration::from_secs(15)))
        .expect("timeout");
    let mut reply = Vec::new();
    let _ = fourth.read_to_end(&mut reply);
    assert!(
        reply.starts_with(b"HTTP/1.1 404"),
        "{}",
        String::from_utf8_lossy(&reply)
    );
}

/// An edge started with open-file limits `soft`/`hard`.
fn edge_with_nofile(bed: &Testbed, eo: &EdgeOpts, soft: u64, hard: u64, log: &str) -> Proc {
    let mut c = Command::new(BIN);
    c.args(["edge", "--dir"])
        .arg(bed.dir())
        .args(["--listen", &eo.quic.to_string()])
        .args(["--http", &eo.http.to_string()])
        .args(["--loglevel", "error"]);
    // SAFETY: setrlimit is async-signal-safe and only reads the struct on this stack.
    unsafe {
        c.pre_exec(move || {
            let lim = libc::rlimit {
                rlim_cur: soft,
                rlim_max: hard,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) == -1 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut p = Proc::spawn("burrow edge", c, bed.dir().join(log)).expect("edge");
    testbed::wait_for(Duration::from_secs(20), "edge HTTP listener", || {
        p.check_alive()?;
        Ok(TcpStream::connect(eo.http).is_ok())
    })
    .expect("edge up");
    p
}

fn soft_nofile(pid: u32) -> u64 {
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).expect("limits");
    limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .and_then(|l| l.split_whitespace().nth(3))
        .and_then(|v| v.parse().ok())
        .expect("soft limit")
}

/// Item 4: the edge raises its open-file limit as the connector does.
#[test]
fn edge_raises_its_open_file_limit() {
    let bed = Testbed::create(Path::new(BIN), "e-nofile", "app", &["app.test"]).expect("bed");
    let eo = EdgeOpts::loopback().expect("ports");
    let edge = edge_with_nofile(&bed, &eo, 256, 4096, "raise.log");
    assert_eq!(
        soft_nofile(edge.pid()),
        4096,
        "soft limit raised to the hard one"
    );
}

/// Item 4: out of descriptors, the eyeball port backs off instead of spinning on accept
/// errors.
#[test]
fn eyeball_port_backs_off_when_out_of_descriptors() {
    let bed = Testbed::create(Path::new(BIN), "e-emfile", "app", &["app.test"]).expect("bed");
    let eo = EdgeOpts::loopback().expect("ports");
    let edge = edge_with_nofile(&bed, &eo, 64, 64, "emfile.log");
    // More connections than descriptors; they stay open (header timeout 10 s).
    let conns: Vec<TcpStream> = (0..120)
        .filter_map(|_| TcpStream::connect(eo.http).ok())
        .collect();
    assert!(conns.len() > 64, "only {} connections", conns.len());
    thread::sleep(Duration::from_millis(500));
    let before = edge.cpu_time().expect("cpu");
    let t = Instant::now();
    thread::sleep(Duration::from_secs(3));
    let used = edge.cpu_time().expect("cpu") - before;
    assert!(
        used < t.elapsed() / 4,
        "edge used {used:?} of CPU in {:?} while out of descriptors",
        t.elapsed()
    );
}

/// A registration with the credentials file at `path`.
fn registration_from(path: &Path) -> Registration {
    let v: serde_json::Value =
        serde_json::from_slice(&std::fs::read(path).expect("credentials")).expect("json");
    let secret = base64::engine::general_purpose::STANDARD
        .decode(v["TunnelSecret"].as_str().expect("secret"))
        .expect("base64");
    let id: Uuid = v["TunnelID"].as_str().expect("id").parse().expect("uuid");
    let tag = v["AccountTag"].as_str().expect("tag");
    Registration::new(tag, secret, id, Uuid::new_v4(), Vec::new())
}

/// Sends `client`'s opening on `ctl` and drives until it has an event.
fn converse(
    q: &mut RawQuic,
    ctl: quinn_proto::StreamId,
    client: &mut ControlClient,
) -> ControlEvent {
    let out = client.poll_transmit().expect("opening");
    assert_eq!(q.write(ctl, &out), out.len());
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline && !q.is_lost() {
        q.drive(Duration::from_millis(20));
        let got = q.read(ctl);
        if !got.is_empty() {
            client.handle_bytes(Instant::now(), &got).expect("answer");
        }
        // The call's count (for the RPC client metrics) comes before its outcome.
        while let Some(ev) = client.poll_event() {
            if !matches!(ev, ControlEvent::Called(_)) {
                return ev;
            }
        }
    }
    panic!("no answer (connection lost: {})", q.is_lost());
}

/// Item 8: a connection registers once (another tunnel's valid credentials on a registered
/// connection are refused), and requests go only where a registration was accepted.
#[test]
fn a_connection_registers_once() {
    let bed = Testbed::create(Path::new(BIN), "e-rereg", "app", &["app.test"]).expect("bed");
    let out = create(bed.dir(), "other", &["other.test"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let other_id = String::from_utf8_lossy(&out.stdout)
        .lines()
        .find_map(|l| {
            l.rsplit_once(" with id ")
                .map(|(_, id)| id.trim().to_owned())
        })
        .expect("id");
    let eo = EdgeOpts::loopback().expect("ports");
    let _edge = bed.edge(&eo).expect("edge");

    let mut q = RawQuic::connect(eo.quic, &bed.ca(), 1 << 20).expect("handshake");
    let ctl = q.open();
    let mut first = ControlClient::new(
        Instant::now(),
        &registration_from(&bed.credentials()),
        None,
        Duration::from_secs(5),
    )
    .expect("client");
    assert!(matches!(
        converse(&mut q, ctl, &mut first),
        ControlEvent::Registered(_)
    ));
    let mut second = ControlClient::new(
        Instant::now(),
        &registration_from(&bed.dir().join(format!("{other_id}.json"))),
        None,
        Duration::from_secs(5),
    )
    .expect("client");
    let ev = converse(&mut q, ctl, &mut second);
    assert!(
        matches!(ev, ControlEvent::RegistrationFailed(_)),
        "second registration on one connection: {ev:?}"
    );

    // The other tunnel has no connection: its eyeballs get a 502 at once, not a request
    // sent down this connection (which would never answer).
    let http = eo.http;
    let eyeball = thread::spawn(move || {
        let mut s = TcpStream::connect(http).expect("connect");
        s.set_read_timeout(Some(Duration::from_secs(10)))
            .expect("timeout");
        s.write_all(b"GET / HTTP/1.1\r\nHost: other.test\r\nConnection: close\r\n\r\n")
            .expect("request");
        let mut reply = Vec::new();
        let _ = s.read_to_end(&mut reply);
        reply
    });
    while !eyeball.is_finished() {
        q.drive(Duration::from_millis(50));
    }
    let reply = eyeball.join().expect("eyeball");
    assert!(
        reply.starts_with(b"HTTP/1.1 502"),
        "{:?}",
        String::from_utf8_lossy(&reply)
    );
}

/// Item 3: an unauthenticated peer flooding `Bootstrap`s while granting no stream credit for
/// the replies cannot grow the edge's memory past a fixed budget, and the edge still serves.
#[test]
fn bootstrap_flood_stays_within_a_memory_budget() {
    const BUDGET_KIB: u64 = 48 * 1024;
    let bed = Testbed::create(Path::new(BIN), "e-flood", "app", &["app.test"]).expect("bed");
    let eo = EdgeOpts::loopback().expect("ports");
    let edge = bed.edge(&eo).expect("edge");
    thread::sleep(Duration::from_millis(500));
    let base = edge.rss_kib().expect("rss");

    let mut bootstraps = Vec::new();
    for q in 0..4096 {
        message::encode_bootstrap(q, &mut bootstraps).expect("encode");
    }
    let (mut sent, mut closed, mut peak) = (0usize, 0usize, base);
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(8) {
        let Some(mut q) = RawQuic::connect(eo.quic, &bed.ca(), 0) else {
            continue;
        };
        let ctl = q.open();
        let mut at = 0;
        let mut sampled = Instant::now();
        while !q.is_lost() && started.elapsed() < Duration::from_secs(8) {
            let n = q.write(ctl, &bootstraps[at..]);
            sent += n;
            at = (at + n) % bootstraps.len();
            q.drive(Duration::from_millis(2));
            if sampled.elapsed() > Duration::from_millis(100) {
                peak = peak.max(edge.rss_kib().expect("rss"));
                sampled = Instant::now();
            }
        }
        closed += usize::from(q.is_lost());
    }
    peak = peak.max(edge.rss_kib().expect("rss"));
    eprintln!(
        "flood: {} MiB of Bootstraps, {closed} connections closed by the edge, RSS {} -> peak {} MiB",
        sent >> 20,
        base >> 10,
        peak >> 10
    );
    assert!(
        peak - base < BUDGET_KIB,
        "edge RSS grew {} MiB under the flood",
        (peak - base) >> 10
    );
    assert!(closed > 0, "the edge closed flooding connections");

    // Still serving.
    let metrics = testbed::free_tcp().expect("port");
    let mut connector = bed
        .connector(&ConnectorOpts {
            edge: eo.quic,
            metrics,
            ingress: vec![(None, format!("http://127.0.0.1:{}", origin()))],
            ha_connections: 2,
            extra: Vec::new(),
            config_extra: String::new(),
        })
        .expect("connector");
    testbed::wait_ready(&mut connector, metrics, 2, Duration::from_secs(30))
        .unwrap_or_else(|e| panic!("{e}\nconnector: {}", connector.log_tail(4000)));
    assert_eq!(get_host(eo.http, "app.test", "/", "").0, 200);
}

/// An edge process descheduled for 4.5 s (a loaded machine; here SIGSTOP), less than the 5 s
/// QUIC idle timeout, keeps its tunnel connections: on resuming it takes the connector's
/// keep-alives queued in its socket before it lets its timers expire them. The connector
/// keeps its 4 registrations and no connection is re-registered.
#[test]
fn a_stalled_edge_keeps_its_connections() {
    let bed =
        Testbed::create(Path::new(BIN), "e2e-edge-stall", "app", &["app.test"]).expect("tunnel");
    let eo = EdgeOpts::loopback().expect("ports");
    let (mut edge, connector, metrics) = start_with_metrics(&bed, &eo, 4);
    let registrations = |text: &str| {
        labelled(
            text,
            r#"cloudflared_tunnel_tunnel_register_success{rpcName="registerConnection"}"#,
        )
    };
    assert_eq!(registrations(&metrics_text(metrics)), 4.0);
    let signal = |sig| {
        let pid = libc::pid_t::try_from(edge.pid()).expect("pid");
        assert_eq!(unsafe { libc::kill(pid, sig) }, 0, "kill");
    };
    signal(libc::SIGSTOP);
    thread::sleep(Duration::from_millis(4500));
    signal(libc::SIGCONT);
    // Long enough for a closed connection to be noticed and registered again.
    thread::sleep(Duration::from_secs(3));
    edge.check_alive().expect("edge");
    let text = metrics_text(metrics);
    assert_eq!(
        registrations(&text),
        4.0,
        "a connection was re-registered\nedge: {}\nconnector: {}",
        edge.log_tail(3000),
        connector.log_tail(3000)
    );
    assert_eq!(testbed::ready_connections(metrics), Some(4));
    assert_eq!(get_host(eo.http, "app.test", "/", "").0, 200);
}
