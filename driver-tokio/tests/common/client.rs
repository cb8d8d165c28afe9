//! Client side: HTTP requests and responses, UDP round trips, metrics scraping.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::time::Duration;

use super::body::Digest;

/// One request through the edge's public port; returns (status, body).
pub fn request(port: u16, head: &str, body: &[u8]) -> (u16, Vec<u8>) {
    let mut s = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(60)))
        .expect("timeout");
    s.write_all(head.as_bytes()).expect("write head");
    s.write_all(body).expect("write body");
    response(s)
}

/// The status code of an HTTP/1.1 response's status line at the start of `response`, 0 if
/// there is none.
pub fn status_of(response: &str) -> u16 {
    response
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

/// Reads a response from `s` until the peer closes: (status, body, dechunked if chunked).
pub fn response(mut s: TcpStream) -> (u16, Vec<u8>) {
    let mut out = Vec::new();
    s.read_to_end(&mut out).expect("read");
    let split = out
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("head end");
    let head = String::from_utf8_lossy(&out[..split]).to_ascii_lowercase();
    let status = status_of(&head);
    let body = &out[split + 4..];
    if head.contains("transfer-encoding: chunked") {
        (status, dechunk(body))
    } else {
        (status, body.to_vec())
    }
}

pub fn dechunk(mut b: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let Some(eol) = b.windows(2).position(|w| w == b"\r\n") else {
            return out;
        };
        let n = usize::from_str_radix(std::str::from_utf8(&b[..eol]).unwrap_or("0").trim(), 16)
            .unwrap_or(0);
        if n == 0 {
            return out;
        }
        out.extend_from_slice(&b[eol + 2..eol + 2 + n]);
        b = &b[eol + 2 + n + 2..];
    }
}

/// Text of about `n` bytes, multi-byte characters included.
pub fn text_of(n: usize) -> String {
    let mut t = String::new();
    for c in "héllo wörld, ✓ tunnel 🦀 ".chars().cycle() {
        if t.len() + c.len_utf8() > n {
            break;
        }
        t.push(c);
    }
    t
}

/// Reads an HTTP/1.1 response, digesting its body as it streams (fixed length or chunked).
pub fn response_digest(s: TcpStream) -> (u16, String) {
    let mut r = BufReader::new(s);
    let mut status = 0;
    let (mut len, mut chunked) = (None::<u64>, false);
    loop {
        let mut line = String::new();
        assert!(r.read_line(&mut line).expect("head") > 0, "head ends early");
        let line = line.trim_end();
        if line.is_empty() {
            break;
        }
        if status == 0 {
            status = status_of(line);
            continue;
        }
        let lower = line.to_ascii_lowercase();
        if let Some(v) = lower.strip_prefix("content-length:") {
            len = v.trim().parse().ok();
        }
        chunked |= lower.starts_with("transfer-encoding:") && lower.contains("chunked");
    }
    let mut sum = Digest::new();
    let mut buf = vec![0u8; 256 * 1024];
    if chunked {
        loop {
            let mut size = String::new();
            r.read_line(&mut size).expect("chunk size");
            let mut n = u64::from_str_radix(size.trim(), 16).expect("chunk size");
            if n == 0 {
                break;
            }
            while n > 0 {
                let k = buf.len().min(n as usize);
                r.read_exact(&mut buf[..k]).expect("chunk");
                sum.update(&buf[..k]);
                n -= k as u64;
            }
            r.read_exact(&mut buf[..2]).expect("chunk end");
        }
    } else {
        let mut n = len.expect("a length or chunking");
        while n > 0 {
            let k = buf.len().min(usize::try_from(n).unwrap_or(usize::MAX));
            r.read_exact(&mut buf[..k]).expect("body");
            sum.update(&buf[..k]);
            n -= k as u64;
        }
    }
    (status, sum.finish())
}

/// The rest of an exchange whose request was written already: (status, body as text).
pub fn request_reply(s: TcpStream) -> (u16, String) {
    let (status, body) = response(s);
    (status, String::from_utf8_lossy(&body).into_owned())
}

/// The connector's `/metrics` text.
pub fn metrics_text(addr: SocketAddr) -> String {
    let mut s = TcpStream::connect(addr).expect("metrics");
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: m\r\nConnection: close\r\n\r\n")
        .expect("write");
    let mut out = String::new();
    s.read_to_string(&mut out).expect("read");
    out
}

/// The value of an unlabelled metric.
pub fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
        .unwrap_or_else(|| panic!("no metric {name} in\n{text}"))
}

/// Sends `payload` and waits for its echo, resending a few times (UDP may drop under load).
pub fn round_trip(sock: &UdpSocket, payload: &[u8]) -> Vec<u8> {
    let mut buf = [0u8; 2048];
    for _ in 0..4 {
        sock.send(payload).expect("send");
        match sock.recv(&mut buf) {
            Ok(n) => return buf[..n].to_vec(),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(e) => panic!("recv: {e}"),
        }
    }
    panic!("no echo for a {}-byte payload", payload.len());
}

/// The value of `name{label}`, 0 when absent.
pub fn labelled(text: &str, name_and_label: &str) -> f64 {
    text.lines()
        .find_map(|l| {
            l.strip_prefix(name_and_label)?
                .strip_prefix(' ')?
                .trim()
                .parse()
                .ok()
        })
        .unwrap_or(0.0)
}

/// `data` as a chunked HTTP/1.1 body in pieces of `piece` bytes, with the last chunk.
pub fn chunked(data: &[u8], piece: usize) -> Vec<u8> {
    let mut out = Vec::new();
    for p in data.chunks(piece) {
        out.extend_from_slice(format!("{:x}\r\n", p.len()).as_bytes());
        out.extend_from_slice(p);
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"0\r\n\r\n");
    out
}

/// `clients` UDP clients, each its own socket (so its own session), each echoing `packets`
/// datagrams of 1 to 1100 bytes with contents unique to client and packet through `map`.
pub fn udp_echo_clients(map: SocketAddr, clients: usize, packets: usize) {
    let workers: Vec<_> = (0..clients)
        .map(|c| {
            std::thread::spawn(move || {
                let sock = UdpSocket::bind("127.0.0.1:0").expect("client");
                sock.connect(map).expect("connect");
                sock.set_read_timeout(Some(Duration::from_secs(2)))
                    .expect("timeout");
                for i in 0..packets {
                    let len = 1 + (i * 97 + c * 13) % 1100;
                    let payload: Vec<u8> = (0..len)
                        .map(|k| (k as u8) ^ (c as u8).wrapping_mul(31) ^ (i as u8))
                        .collect();
                    assert_eq!(
                        round_trip(&sock, &payload),
                        payload,
                        "client {c} packet {i}"
                    );
                }
            })
        })
        .collect();
    for w in workers {
        w.join().expect("client thread");
    }
}

/// The ingress [`request_counts_by_code`] needs: `ok.test` to `origin`, `dead.test` to a port
/// nothing listens on, anything else `http_status:404`.
pub fn counting_ingress(origin: u16) -> Vec<(Option<String>, String)> {
    let dead = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port");
    vec![
        (Some("ok.test".into()), format!("http://127.0.0.1:{origin}")),
        (Some("dead.test".into()), format!("http://{dead}")),
        (None, "http_status:404".into()),
    ]
}

/// Sends 5 requests answered 200, 3 answered 404 and 2 whose origin is down (the edge answers
/// 502) through the edge's HTTP port, then checks the connector's request metrics as
/// cloudflared keeps them: every request counted (pooled origin connections included), whole
/// responses by code, the unreachable origin as request errors, none in flight.
pub fn request_counts_by_code(http: u16, metrics: SocketAddr) {
    let get = |host: &str| {
        request(
            http,
            &format!("GET /hello HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"),
            b"",
        )
        .0
    };
    let before = metrics_text(metrics);
    let base = |name: &str| labelled(&before, name);
    for (host, want, n) in [
        ("ok.test", 200, 5),
        ("other.test", 404, 3),
        ("dead.test", 502, 2),
    ] {
        for _ in 0..n {
            assert_eq!(get(host), want, "{host}");
        }
    }
    // The edge answers before the connector has ended the stream: wait for the last end.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let text = loop {
        let text = metrics_text(metrics);
        let total = labelled(&text, "cloudflared_tunnel_total_requests")
            - base("cloudflared_tunnel_total_requests");
        let busy = labelled(&text, "cloudflared_tunnel_concurrent_requests_per_tunnel");
        if (total >= 10.0 && busy == 0.0) || std::time::Instant::now() > deadline {
            break text;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let delta = |name: &str| labelled(&text, name) - base(name);
    assert_eq!(delta("cloudflared_tunnel_total_requests"), 10.0, "{text}");
    assert_eq!(
        labelled(&text, "cloudflared_tunnel_concurrent_requests_per_tunnel"),
        0.0,
        "{text}"
    );
    assert_eq!(
        delta(r#"cloudflared_tunnel_response_by_code{status_code="200"}"#),
        5.0,
        "{text}"
    );
    assert_eq!(
        delta(r#"cloudflared_tunnel_response_by_code{status_code="404"}"#),
        3.0,
        "{text}"
    );
    // cloudflared never counts the edge's 502 as a response: the origin was not reached.
    assert_eq!(
        labelled(
            &text,
            r#"cloudflared_tunnel_response_by_code{status_code="502"}"#
        ),
        0.0
    );
    assert_eq!(delta("cloudflared_tunnel_request_errors"), 2.0, "{text}");
}

/// The UDP flow metrics after `clients` sessions, all still open, over 2 HA connections:
/// cloudflared's families labelled by the `conn_index` each session registered on.
pub fn check_udp_flow_metrics(text: &str, clients: usize) {
    // Datagram-v3 flows, which cloudflared does not count as v2 sessions.
    assert_eq!(
        metric(text, "cloudflared_udp_total_sessions"),
        0.0,
        "{text}"
    );
    let total = summed(text, "cloudflared_udp_total_flows");
    assert!(
        total >= clients as f64,
        "{total} sessions for {clients} clients\n{text}"
    );
    assert_eq!(
        summed(text, "cloudflared_udp_active_flows"),
        clients as f64,
        "{text}"
    );
    let lines: Vec<&str> = text
        .lines()
        .filter(|l| l.starts_with("cloudflared_udp_total_flows{"))
        .collect();
    assert!(!lines.is_empty(), "{text}");
    for line in lines {
        assert!(
            line.starts_with("cloudflared_udp_total_flows{conn_index=\"0\"}")
                || line.starts_with("cloudflared_udp_total_flows{conn_index=\"1\"}"),
            "{line}"
        );
    }
    // Nothing dropped on loopback, each reason present, under the indexes that have sessions.
    let unknown: Vec<&str> = text
        .lines()
        .filter(|l| {
            l.starts_with("cloudflared_udp_dropped_datagrams{")
                && l.contains("reason=\"write_flow_unknown\"")
        })
        .collect();
    assert!(!unknown.is_empty(), "{text}");
    for line in unknown {
        assert!(
            line.starts_with("cloudflared_udp_dropped_datagrams{conn_index=\"0\",")
                || line.starts_with("cloudflared_udp_dropped_datagrams{conn_index=\"1\","),
            "{line}"
        );
        assert!(line.ends_with("} 0"), "{line}");
    }
}

/// The sum of every `name{...}` series (a family labelled `conn_index`, say), 0 when absent.
pub fn summed(text: &str, name: &str) -> f64 {
    text.lines()
        .filter_map(|l| {
            l.strip_prefix(name)?
                .strip_prefix('{')?
                .split_once("} ")?
                .1
                .trim()
                .parse::<f64>()
                .ok()
        })
        .sum()
}

/// `clients` UDP clients on `map` (one session each) round-trip `packets` small payloads to
/// [`crate::common::origins::udp_oversized_then_echo`], whose oversized answers the connector
/// drops; then `/metrics` at `metrics` counts every one of them (the origin's own count) as
/// `cloudflared_udp_dropped_datagrams{conn_index,reason="read_too_large"}` under the HA index
/// of its session's connection (0 or 1), none under no index.
pub fn check_udp_drops_by_conn_index(
    map: SocketAddr,
    metrics: SocketAddr,
    got: &std::sync::atomic::AtomicU64,
    clients: usize,
    packets: usize,
) {
    for c in 0..clients {
        let sock = UdpSocket::bind("127.0.0.1:0").expect("client");
        sock.connect(map).expect("connect");
        sock.set_read_timeout(Some(Duration::from_secs(2)))
            .expect("timeout");
        for i in 0..packets {
            let payload = format!("client {c} packet {i}");
            // Only the echo comes back: its oversized forerunner was dropped.
            assert_eq!(round_trip(&sock, payload.as_bytes()), payload.as_bytes());
        }
    }
    let name = "cloudflared_udp_dropped_datagrams{";
    let dropped = |text: &str| -> Vec<(String, f64)> {
        text.lines()
            .filter_map(|l| {
                let (labels, value) = l.strip_prefix(name)?.split_once("} ")?;
                let index = labels
                    .strip_prefix("conn_index=\"")?
                    .strip_suffix("\",reason=\"read_too_large\"")?;
                Some((index.to_owned(), value.trim().parse().ok()?))
            })
            .collect()
    };
    let sent = got.load(std::sync::atomic::Ordering::SeqCst) as f64;
    assert!(sent >= (clients * packets) as f64);
    // The last drop may be counted a moment after its echo came back.
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    let mut text = metrics_text(metrics);
    while dropped(&text).iter().map(|(_, n)| n).sum::<f64>() < sent
        && std::time::Instant::now() < deadline
    {
        std::thread::sleep(Duration::from_millis(100));
        text = metrics_text(metrics);
    }
    let lines = dropped(&text);
    assert_eq!(
        lines.iter().map(|(_, n)| n).sum::<f64>(),
        sent,
        "every oversized answer counted once\n{text}"
    );
    for (index, _) in &lines {
        assert!(index == "0" || index == "1", "conn_index {index:?}\n{text}");
    }
}

/// The QUIC, process and build families both drivers export, as cloudflared's dashboards
/// query them: scraped from `metrics` until every HA index `0..ha` has its RTT, window and
/// the edge's payload limit, then checked for plausible values. Returns the text.
pub fn check_quic_and_process_metrics(metrics: SocketAddr, ha: u8) -> String {
    let per_index = [
        "quic_client_sent_bytes",
        "quic_client_receive_bytes",
        "quic_client_min_rtt",
        "quic_client_latest_rtt",
        "quic_client_smoothed_rtt",
        "quic_client_mtu",
        "quic_client_congestion_window",
        "quic_client_congestion_state",
        "quic_client_max_udp_payload",
    ];
    let value = |text: &str, name: &str, i: u8| {
        let series = format!("{name}{{conn_index=\"{i}\"}} ");
        text.lines()
            .find_map(|l| l.strip_prefix(&series)?.trim().parse::<f64>().ok())
    };
    let start = std::time::Instant::now();
    let mut text = metrics_text(metrics);
    while !(0..ha).all(|i| per_index.iter().all(|n| value(&text, n, i).is_some())) {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "not every index reports {per_index:?} in\n{text}"
        );
        std::thread::sleep(Duration::from_millis(200));
        text = metrics_text(metrics);
    }
    for i in 0..ha {
        let v = |name: &str| value(&text, name, i).expect("scraped above");
        assert!(v("quic_client_sent_bytes") > 0.0 && v("quic_client_receive_bytes") > 0.0);
        // Loopback: the RTTs are there, in whole milliseconds, and small; the lowest is the
        // lowest.
        let (min, latest, smoothed) = (
            v("quic_client_min_rtt"),
            v("quic_client_latest_rtt"),
            v("quic_client_smoothed_rtt"),
        );
        for rtt in [min, latest, smoothed] {
            assert!((0.0..1000.0).contains(&rtt), "index {i}: rtt {rtt}\n{text}");
        }
        assert!(min <= latest && min <= smoothed, "index {i}\n{text}");
        assert!(v("quic_client_mtu") >= 1200.0);
        // At least quinn's minimum window (two packets).
        assert!(v("quic_client_congestion_window") >= 2400.0);
        let state = v("quic_client_congestion_state");
        assert!([0.0, 1.0, 2.0, 3.0].contains(&state), "state {state}");
        // burrow edge does not send the parameter: RFC 9000's default.
        assert!(v("quic_client_max_udp_payload") >= 1200.0);
        // Keep-alives and their acknowledgements; losses, if any, of no known reason.
        for series in [
            format!(r#"quic_client_sent_frames{{conn_index="{i}",frame_type="Ack"}} "#),
            format!(r#"quic_client_received_frames{{conn_index="{i}",frame_type="Ack"}} "#),
            format!(
                r#"quic_client_lost_packets{{conn_index="{i}",reason="unknown_loss_reason"}} "#
            ),
        ] {
            assert!(
                text.lines().any(|l| l.starts_with(&series)),
                "{series}\n{text}"
            );
        }
    }
    assert!(metric(&text, "quic_client_total_connections") >= f64::from(ha));
    assert_eq!(metric(&text, "quic_client_closed_connections"), 0.0);
    assert!(metric(&text, "process_resident_memory_bytes") > 1e6);
    assert!(
        metric(&text, "process_virtual_memory_bytes")
            >= metric(&text, "process_resident_memory_bytes")
    );
    assert!(metric(&text, "process_open_fds") > 0.0);
    assert!(metric(&text, "process_max_fds") >= metric(&text, "process_open_fds"));
    let started = metric(&text, "process_start_time_seconds");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs_f64();
    assert!(started > now - 600.0 && started <= now + 1.0, "{started}");
    assert!(metric(&text, "process_cpu_seconds_total") > 0.0);
    let build = text
        .lines()
        .find(|l| l.starts_with("build_info{"))
        .expect("build_info");
    assert!(
        build.contains("version=\"") && build.ends_with(" 1"),
        "{build}"
    );
    text
}

/// Scrapes until every one of `names` has a value above zero, or gives up after 20 s.
pub fn scrape_until(metrics: SocketAddr, names: &[&str]) -> String {
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let text = metrics_text(metrics);
        let positive = |n: &str| {
            text.lines().any(|l| {
                l.strip_prefix(n)
                    .and_then(|v| v.strip_prefix(' '))
                    .and_then(|v| v.trim().parse::<f64>().ok())
                    .is_some_and(|v| v > 0.0)
            })
        };
        if names.iter().all(|n| positive(n)) || std::time::Instant::now() > deadline {
            return text;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// What dashboards built for cloudflared read, after real traffic: 20 requests to an HTTP
/// origin through the edge's public port `http` and a TCP stream echoed through the edge's
/// `tcp` map, on a connector of `ha` registered connections. Checks the request counters, the
/// connect latency of the TCP stream, the registrations and each index's server location,
/// the flow limit and ICMP reply counters, and the QUIC and process families
/// ([`check_quic_and_process_metrics`]); returns the last scrape.
pub fn dashboards_after_traffic(http: u16, tcp: SocketAddr, metrics: SocketAddr, ha: u8) -> String {
    for _ in 0..20 {
        let (status, _) = request(
            http,
            "GET /hello HTTP/1.1\r\nHost: app.test\r\nConnection: close\r\n\r\n",
            b"",
        );
        assert_eq!(status, 200);
    }
    let mut c = TcpStream::connect(tcp).expect("tcp map");
    c.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    c.write_all(b"ping").expect("write");
    let mut got = [0u8; 4];
    c.read_exact(&mut got).expect("echo");
    assert_eq!(&got, b"ping");
    drop(c);

    let text = scrape_until(
        metrics,
        &[
            r#"quic_client_sent_frames{conn_index="0",frame_type="Stream"}"#,
            r#"quic_client_received_frames{conn_index="0",frame_type="Stream"}"#,
            "cloudflared_proxy_connect_latency_count",
            // Pushed on connection 0 once registered (the connector has a config file).
            "cloudflared_config_local_config_pushes",
        ],
    );
    let m = |name: &str| metric(&text, name);
    assert!(m("cloudflared_tunnel_total_requests") >= 21.0);
    assert_eq!(m("cloudflared_tcp_total_sessions"), 1.0);
    // The TCP stream's dial, on loopback: well under a second, in cloudflared's buckets.
    let count = m("cloudflared_proxy_connect_latency_count");
    assert_eq!(count, 1.0, "{text}");
    assert_eq!(
        m(r#"cloudflared_proxy_connect_latency_bucket{le="+Inf"}"#),
        count
    );
    assert_eq!(
        m(r#"cloudflared_proxy_connect_latency_bucket{le="1000"}"#),
        count
    );
    let mut below = 0.0;
    for le in [1, 10, 25, 50, 100, 500, 1000, 5000] {
        let n = m(&format!(
            r#"cloudflared_proxy_connect_latency_bucket{{le="{le}"}}"#
        ));
        assert!(n >= below, "buckets are cumulative\n{text}");
        below = n;
    }
    assert!((0.0..1000.0).contains(&m("cloudflared_proxy_connect_latency_sum")));
    assert_eq!(m("cloudflared_proxy_connect_streams_errors"), 0.0);
    // Every connection registered once, each index at one location (`burrow edge`'s).
    assert_eq!(
        m(r#"cloudflared_tunnel_tunnel_register_success{rpcName="registerConnection"}"#),
        f64::from(ha),
        "{text}"
    );
    assert!(
        !text.contains("\ncloudflared_tunnel_tunnel_register_fail{"),
        "{text}"
    );
    // cloudflared's RPC client metrics: every registration and the one local configuration
    // push, answered on loopback well within the 4.05 s bucket, none failed.
    let rpc = |method: &str| format!(r#"handler="registration",method="{method}""#);
    for (method, n) in [
        ("register_connection", f64::from(ha)),
        ("update_local_configuration", 1.0),
    ] {
        let l = rpc(method);
        assert_eq!(
            m(&format!("cloudflared_rpc_client_operations{{{l}}}")),
            n,
            "{method}\n{text}"
        );
        let name = "cloudflared_rpc_client_latency_secs";
        assert_eq!(m(&format!("{name}_count{{{l}}}")), n, "{text}");
        assert_eq!(m(&format!(r#"{name}_bucket{{{l},le="+Inf"}}"#)), n);
        let mut below = 0.0;
        for le in [
            "0.05",
            "0.15000000000000002",
            "0.45000000000000007",
            "1.35",
            "4.050000000000001",
        ] {
            let b = m(&format!(r#"{name}_bucket{{{l},le="{le}"}}"#));
            assert!(b >= below, "buckets are cumulative\n{text}");
            below = b;
        }
        assert_eq!(below, n, "answered within 4.05 s on loopback\n{text}");
        let sum = m(&format!("{name}_sum{{{l}}}"));
        assert!((0.0..4.05 * n).contains(&sum), "{sum}\n{text}");
    }
    assert!(
        !text.contains("\ncloudflared_rpc_client_failures{"),
        "{text}"
    );
    assert_eq!(m("cloudflared_config_local_config_pushes"), 1.0, "{text}");
    assert_eq!(m("cloudflared_config_local_config_pushes_errors"), 0.0);
    // No UDP here (and burrow's connectors speak datagram v3): no v2 session.
    assert_eq!(m("cloudflared_udp_total_sessions"), 0.0);
    assert_eq!(m("cloudflared_udp_active_sessions"), 0.0);
    for i in 0..ha {
        let series =
            format!("cloudflared_tunnel_server_locations{{connection_id=\"{i}\",edge_location=\"");
        let at: Vec<&str> = text.lines().filter(|l| l.starts_with(&series)).collect();
        assert!(
            at.len() == 1 && at[0].ends_with("\"} 1"),
            "index {i}: {at:?}\n{text}"
        );
    }
    for series in [
        r#"flow_client_registrations_rate_limited_total{flow_type="tcp"}"#,
        r#"flow_client_registrations_rate_limited_total{flow_type="udp"}"#,
        "cloudflared_icmp_total_replies",
        "cloudflared_icmp_total_requests",
    ] {
        assert_eq!(m(series), 0.0, "{series}");
    }
    let text = check_quic_and_process_metrics(metrics, ha);
    let build = text
        .lines()
        .find(|l| l.starts_with("build_info{"))
        .expect("build_info");
    assert!(
        build.contains(&format!(r#"version="{}""#, env!("CARGO_PKG_VERSION"))),
        "{build}"
    );
    text
}

/// Each family in `text` whose name starts with one of `prefixes`: its type, help text and the
/// label names of its series.
pub fn families(text: &str, prefixes: &[&str]) -> BTreeMap<String, Family> {
    let mut out: BTreeMap<String, Family> = BTreeMap::new();
    let wanted = |name: &str| prefixes.iter().any(|p| name.starts_with(p));
    for l in text.lines() {
        if let Some((name, help)) = l.strip_prefix("# HELP ").and_then(|t| t.split_once(' ')) {
            if wanted(name) {
                out.entry(name.to_owned()).or_default().help = help.to_owned();
            }
        } else if let Some((name, kind)) = l.strip_prefix("# TYPE ").and_then(|t| t.split_once(' '))
        {
            if wanted(name) {
                out.entry(name.to_owned()).or_default().kind = kind.to_owned();
            }
        } else if !l.starts_with('#') {
            let name = l.split(['{', ' ']).next().unwrap_or("");
            if let Some(f) = out.get_mut(name) {
                if let Some((inner, _)) = l.split_once('{').and_then(|(_, r)| r.split_once('}')) {
                    f.labels.extend(
                        inner
                            .split(',')
                            .filter_map(|kv| kv.split_once('=').map(|(k, _)| k.to_owned())),
                    );
                }
            }
        }
    }
    out
}

/// A metric family as [`families`] reads it.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Family {
    /// `counter`, `gauge`, ...
    pub kind: String,
    /// The HELP text.
    pub help: String,
    /// Label names of its series.
    pub labels: BTreeSet<String>,
}
