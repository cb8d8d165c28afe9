//! Origin dial and TLS-handshake deadlines end to end (real `burrow edge` and `burrow tunnel
//! run` on loopback): the connector's own timers fail a request whose origin never finishes
//! connecting at the rule's `connectTimeout`, and one whose origin accepts TCP but never
//! answers the TLS handshake at its `tlsTimeout`: a 502, not earlier, and not a hang. A
//! private-network TCP stream (`--tcp-map`) to that origin ends at `warp-routing.connectTimeout`
//! and is counted in `cloudflared_proxy_connect_streams_errors`. And `--write-stream-timeout`:
//! writes to the edge (QUIC only) and to private-network TCP origins that wait too long end
//! their streams, for burrow and stock cloudflared alike.

use std::io::Read;
use std::net::TcpStream;
use std::path::Path;
use std::time::{Duration, Instant};

use burrow_tokio::testbed::{self, EdgeOpts, Testbed};
use common::client::{metric, metrics_text};
use common::stalled::{fails_at, silent_origin, timed_get, unanswered_origin, SLACK};

mod common;

const BIN: &str = env!("CARGO_BIN_EXE_burrow");

const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
const TLS_TIMEOUT: Duration = Duration::from_secs(3);
const WARP_CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

#[test]
fn origin_dial_and_tls_handshake_fail_at_their_deadlines() {
    deadlines_over("quic");
}

/// The same over HTTP/2 to the edge (the other connection machine holding the flows).
#[test]
fn origin_dial_and_tls_handshake_fail_at_their_deadlines_http2() {
    deadlines_over("http2");
}

fn deadlines_over(protocol: &str) {
    let bed = Testbed::create(
        Path::new(BIN),
        &format!("e2e-origin-deadlines-{protocol}"),
        "app",
        &["tls.test", "dial.test", "other.test"],
    )
    .expect("tunnel");
    let silent = silent_origin();
    let (unanswered, _held) = unanswered_origin();
    let tcp_map = testbed::free_tcp().expect("port");
    let mut eo = EdgeOpts::loopback().expect("ports");
    eo.tcp_maps = vec![format!("{tcp_map}=app:{unanswered}")];
    let _edge = bed.edge(&eo).expect("edge");
    let (c, metrics) = bed
        .connector_with_ingress(
            eo.quic,
            &format!(
                "- hostname: tls.test\n  service: https://{silent}\n  originRequest:\n    tlsTimeout: {tls}s\n    noTLSVerify: true\n\
                 - hostname: dial.test\n  service: http://{unanswered}\n  originRequest:\n    connectTimeout: {connect}s\n\
                 - service: http_status:418\n\
                 warp-routing:\n  connectTimeout: {warp}s\n",
                tls = TLS_TIMEOUT.as_secs(),
                connect = CONNECT_TIMEOUT.as_secs(),
                warp = WARP_CONNECT_TIMEOUT.as_secs(),
            ),
            &["--protocol", protocol, "--loglevel", "debug"],
        )
        .expect("connector");

    let registered = c.log_tail(100_000);
    assert!(
        registered
            .lines()
            .any(|l| l.contains("Registered tunnel connection")
                && l.contains(&format!("protocol={protocol}"))),
        "registered over {protocol}:\n{registered}"
    );
    let log = || c.log_tail(4000);
    fails_at(eo.http, "tls.test", TLS_TIMEOUT, log);
    fails_at(eo.http, "dial.test", CONNECT_TIMEOUT, log);
    // The connector still serves.
    assert_eq!(timed_get(eo.http, "other.test").0, 418);

    // A TCP stream: the edge ends the client's connection once the connector gives up.
    let start = Instant::now();
    let mut s = TcpStream::connect(tcp_map).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    let mut rest = Vec::new();
    let _ = s.read_to_end(&mut rest);
    let took = start.elapsed();
    assert!(
        took >= WARP_CONNECT_TIMEOUT && took < WARP_CONNECT_TIMEOUT + SLACK,
        "the TCP stream ends at warp-routing.connectTimeout ({WARP_CONNECT_TIMEOUT:?}): took {took:?}\n{}",
        log()
    );
    assert!(rest.is_empty(), "nothing came from the origin");
    let text = metrics_text(metrics);
    assert_eq!(
        metric(&text, "cloudflared_proxy_connect_streams_errors"),
        1.0,
        "{text}"
    );
}

const WRITE_TIMEOUT: Duration = Duration::from_secs(1);

/// `--write-stream-timeout` over QUIC, of burrow and, with `BURROW_CLOUDFLARED`, of stock
/// cloudflared (the same flag, edge and origins): a private-network TCP stream whose origin
/// takes none of the client's bytes ends about the timeout after the origin stopped taking
/// (the origin's write timed out), and one whose origin sends without end to a client that
/// reads nothing is cut off (the write to the edge timed out). Without the flag the first
/// stays open and the second flows once the client reads.
#[test]
fn write_stream_timeout_ends_streams_whose_writes_wait() {
    write_timeout_over("quic", &[true, false]);
}

/// The same over HTTP/2, where only the origin's writes have the deadline (cloudflared's
/// HTTP/2 transport has none for the edge's): the unread download is not cut off.
#[test]
fn write_stream_timeout_over_http2_bounds_origin_writes_only() {
    write_timeout_over("http2", &[true]);
}

/// [`write_stream_timeout_ends_streams_whose_writes_wait`] over `protocol`, with the flag
/// and without as `flagged` lists.
fn write_timeout_over(protocol: &str, flagged: &[bool]) {
    let bed = Testbed::create(
        Path::new(BIN),
        &format!("e2e-write-timeout-{protocol}"),
        "app",
        &["app.test"],
    )
    .expect("tunnel");
    let (sink, firehose) = (silent_origin(), firehose_origin());
    let (sink_map, hose_map) = (
        testbed::free_tcp().expect("port"),
        testbed::free_tcp().expect("port"),
    );
    let mut eo = EdgeOpts::loopback().expect("ports");
    eo.tcp_maps = vec![
        format!("{sink_map}=app:{sink}"),
        format!("{hose_map}=app:{firehose}"),
    ];
    let _edge = bed.edge(&eo).expect("edge");
    let stock = std::env::var_os("BURROW_CLOUDFLARED");
    for cloudflared in std::iter::once(None).chain(stock.as_deref().map(Some)) {
        let name = cloudflared.map_or("burrow", |_| "cloudflared");
        for &flagged in flagged {
            // The config file's key: cloudflared takes the flag only before `run`.
            let config = if flagged {
                format!("write-stream-timeout: {}s\n", WRITE_TIMEOUT.as_secs())
            } else {
                String::new()
            };
            let c = one_connection(&bed, &eo, cloudflared, protocol, config);
            let what = format!("{name} over {protocol}, flag {flagged}");
            let log = || c.log_tail(3000);

            // The origin takes nothing: once the buffers on the way are full, the
            // connector's write to it waits.
            let ended = unread_upload_ends(sink_map);
            match ended {
                Some(after) => assert!(
                    flagged && after < WRITE_TIMEOUT + SLACK,
                    "{what}: the stream to a full origin ended {after:?} after it stopped \
                     taking\n{}",
                    log()
                ),
                None => assert!(
                    !flagged,
                    "{what}: the stream to a full origin stayed\n{}",
                    log()
                ),
            }

            // The client reads nothing for 4 s, then everything.
            let read = unread_download(hose_map);
            if flagged && protocol == "quic" {
                assert!(
                    read < HOSE_READ,
                    "{what}: the unread stream went on ({read} bytes)\n{}",
                    log()
                );
                if cloudflared.is_none() {
                    // cloudflared's own words for it (which stock cloudflared did not log here
                    // at the testbed's log level).
                    let said = "Closing quic stream due to timeout while writing";
                    let deadline = Instant::now() + Duration::from_secs(5);
                    while !c.log_tail(100_000).contains(said) && Instant::now() < deadline {
                        std::thread::sleep(Duration::from_millis(100));
                    }
                    assert!(c.log_tail(100_000).contains(said), "{what}\n{}", log());
                }
            } else {
                assert_eq!(
                    read,
                    HOSE_READ,
                    "{what}: the stream flows once read\n{}",
                    log()
                );
            }
        }
    }
}

/// Bytes [`unread_download`] reads at most.
const HOSE_READ: usize = 64 << 20;

/// An origin that sends without end to each connection, until it breaks.
fn firehose_origin() -> std::net::SocketAddr {
    use std::io::Write;
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    std::thread::spawn(move || {
        for mut s in l.incoming().flatten() {
            std::thread::spawn(move || {
                let chunk = vec![0x5a_u8; 64 << 10];
                while s.write_all(&chunk).is_ok() {}
            });
        }
    });
    addr
}

/// A client through `map` that writes without end: how long after its writes stopped going
/// through its connection ended, or none if it did not within [`WRITE_TIMEOUT`] + [`SLACK`].
fn unread_upload_ends(map: std::net::SocketAddr) -> Option<Duration> {
    use std::io::Write;
    use std::sync::{Arc, Mutex};
    let s = TcpStream::connect(map).unwrap();
    let last_write = Arc::new(Mutex::new(Instant::now()));
    let mut w = s.try_clone().unwrap();
    let writes = last_write.clone();
    std::thread::spawn(move || {
        let chunk = vec![0xa5_u8; 16 << 10];
        while w.write_all(&chunk).is_ok() {
            *writes.lock().unwrap() = Instant::now();
        }
    });
    let mut s = s;
    s.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let give_up = Instant::now() + Duration::from_secs(20);
    let mut buf = [0u8; 4096];
    loop {
        let stalled = last_write.lock().unwrap().elapsed();
        match s.read(&mut buf) {
            Ok(0) => return Some(stalled),
            Ok(_) => panic!("the silent origin said something"),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                let stalled = last_write.lock().unwrap().elapsed();
                if stalled > WRITE_TIMEOUT + SLACK || Instant::now() > give_up {
                    let _ = s.shutdown(std::net::Shutdown::Both);
                    return None;
                }
            }
            Err(_) => return Some(stalled),
        }
    }
}

/// A client through `map` that reads nothing for 4 s, then reads until its connection ends
/// or [`HOSE_READ`] bytes came: how many did.
fn unread_download(map: std::net::SocketAddr) -> usize {
    let mut s = TcpStream::connect(map).unwrap();
    std::thread::sleep(Duration::from_secs(4));
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut buf = vec![0u8; 1 << 20];
    let mut read = 0;
    while read < HOSE_READ {
        match s.read(&mut buf[..(HOSE_READ - read).min(1 << 20)]) {
            Ok(0) | Err(_) => break,
            Ok(n) => read += n,
        }
    }
    read
}

/// A tunnel of one connection over `protocol` to the edge `eo`, burrow's or stock
/// `cloudflared`'s, with `config_extra` in its config file.
fn one_connection(
    bed: &Testbed,
    eo: &EdgeOpts,
    cloudflared: Option<&std::ffi::OsStr>,
    protocol: &str,
    config_extra: String,
) -> burrow_tokio::testbed::Proc {
    let metrics = testbed::free_tcp().expect("port");
    let co = testbed::ConnectorOpts {
        edge: eo.quic,
        metrics,
        ingress: vec![(None, "http_status:404".into())],
        ha_connections: 1,
        extra: vec!["--protocol".into(), protocol.into()],
        config_extra,
    };
    let mut c = match cloudflared {
        Some(cfd) => bed.cloudflared(Path::new(cfd), &co),
        None => bed.connector_from(Path::new(BIN), &co),
    }
    .expect("connector");
    testbed::wait_ready(&mut c, metrics, 1, Duration::from_secs(30))
        .unwrap_or_else(|e| panic!("{e}\n{}", c.log_tail(4000)));
    c
}
