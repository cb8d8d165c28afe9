use super::*;
use crate::stream::websocket::OP_TEXT;

fn service(diagnostics: bool, label: Option<&str>) -> Management {
    Management::new(
        ManagementConfig {
            hostname: DEFAULT_HOSTNAME.into(),
            diagnostics,
            connector_id: Uuid::from_u128(0x1234),
            label: label.map(str::to_owned),
            host_name: "box".into(),
        },
        7,
    )
}

fn token() -> String {
    token::forge("tun", "acct", "me")
}

/// Everything the service does until it waits: bytes per connection, closes, metrics asks,
/// listening changes, and the timeout.
#[derive(Debug, Default)]
struct Drained {
    out: BTreeMap<ConnId, Vec<u8>>,
    closed: Vec<ConnId>,
    metrics: Vec<ConnId>,
    listening: Vec<bool>,
    timeout: Option<Instant>,
}

fn drain(m: &mut Management, now: Instant) -> Drained {
    let mut d = Drained::default();
    for _ in 0..1000 {
        match m.poll_output(now) {
            Output::Transmit(id, b) => d.out.entry(id).or_default().extend(b),
            Output::Close(id) => d.closed.push(id),
            Output::WantMetrics(id) => d.metrics.push(id),
            Output::Listening(l) => d.listening.push(l),
            Output::Timeout(t) => {
                assert!(t >= now, "a timeout in the past is a busy loop");
                d.timeout = Some(t);
                return d;
            }
        }
    }
    panic!("poll_output never reached Timeout");
}

fn get(m: &mut Management, now: Instant, target: &str, extra: &str) -> (ConnId, Drained) {
    let id = m.open();
    let req = format!("GET {target} HTTP/1.1\r\nHost: {DEFAULT_HOSTNAME}\r\n{extra}\r\n");
    m.handle_bytes(now, id, req.as_bytes());
    (id, drain(m, now))
}

fn text(d: &Drained, id: ConnId) -> String {
    String::from_utf8_lossy(&d.out[&id]).into_owned()
}

fn masked(opcode: u8, payload: &[u8]) -> Vec<u8> {
    crate::stream::websocket::tests::client_frame(opcode, payload, [3, 1, 4, 1])
}

/// Server frames in `bytes` (after any HTTP head): (opcode, payload).
fn frames(bytes: &[u8]) -> Vec<(u8, Vec<u8>)> {
    let mut b = match bytes.windows(4).position(|w| w == b"\r\n\r\n") {
        Some(i) if bytes.starts_with(b"HTTP/") => &bytes[i + 4..],
        _ => bytes,
    };
    let mut out = Vec::new();
    while b.len() >= 2 {
        let (len, at) = match b[1] & 0x7f {
            126 => (u16::from_be_bytes([b[2], b[3]]) as usize, 4),
            127 => (
                u64::from_be_bytes(b[2..10].try_into().unwrap()) as usize,
                10,
            ),
            n => (n as usize, 2),
        };
        out.push((b[0] & 0x0f, b[at..at + len].to_vec()));
        b = &b[at + len..];
    }
    out
}

const UPGRADE: &str =
    "Connection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n";

fn open_logs(m: &mut Management, now: Instant, actor: &str) -> ConnId {
    let tok = token::forge("tun", "acct", actor);
    let (id, d) = get(m, now, &format!("/logs?access_token={tok}"), UPGRADE);
    let t = text(&d, id);
    assert!(t.starts_with("HTTP/1.1 101 "), "{t}");
    assert!(
        t.contains("Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n"),
        "{t}"
    );
    id
}

fn send(m: &mut Management, now: Instant, id: ConnId, json: &str) -> Drained {
    m.handle_bytes(now, id, &masked(OP_TEXT, json.as_bytes()));
    drain(m, now)
}

#[test]
fn every_route_needs_a_token_and_answers_as_cloudflared() {
    let now = Instant::now();
    let mut m = service(false, None);
    let (id, d) = get(&mut m, now, "/ping", "");
    let t = text(&d, id);
    assert!(t.starts_with("HTTP/1.1 400 Bad Request\r\n"), "{t}");
    assert!(t.ends_with(
        "\r\n\r\n{\"errors\":[{\"code\":1001,\"message\":\"missing access_token query parameter\"}]}\n"
    ));
    assert_eq!(d.closed, [id]);

    let (id, d) = get(&mut m, now, "/ping?access_token=garbage", "");
    assert!(text(&d, id).starts_with("HTTP/1.1 400 "));

    let tok = token();
    let (id, d) = get(
        &mut m,
        now,
        &format!("/ping?access_token={tok}"),
        "Origin: https://dash.cloudflare.com\r\n",
    );
    let t = text(&d, id);
    assert!(t.starts_with("HTTP/1.1 200 OK\r\n"), "{t}");
    assert!(t.contains("Access-Control-Allow-Origin: https://dash.cloudflare.com\r\n"));
    assert!(t.contains("Access-Control-Allow-Credentials: true\r\n"));
    assert!(t.contains("Content-Length: 0\r\n"));

    let (id, d) = get(
        &mut m,
        now,
        &format!("/ping?x=1&access_token={tok}"),
        "Origin: https://evil.example\r\n",
    );
    let t = text(&d, id);
    assert!(
        t.contains("Vary: Origin\r\n") && !t.contains("Allow-Origin"),
        "{t}"
    );

    let (id, d) = get(
        &mut m,
        now,
        &format!("/host_details?access_token={tok}"),
        "",
    );
    let t = text(&d, id);
    assert!(
        t.ends_with(
            "{\"connector_id\":\"00000000-0000-0000-0000-000000001234\",\"hostname\":\"box\"}\n"
        ),
        "{t}"
    );

    let (id, d) = get(&mut m, now, &format!("/metrics?access_token={tok}"), "");
    assert!(
        text(&d, id).starts_with("HTTP/1.1 404 Not Found\r\n"),
        "diagnostics off"
    );
    let (id, d) = get(&mut m, now, &format!("/nothing?access_token={tok}"), "");
    assert!(text(&d, id).ends_with("404 page not found\n"));

    let id = m.open();
    m.handle_bytes(
        now,
        id,
        format!("POST /ping?access_token={tok} HTTP/1.1\r\nHost: h\r\n\r\n").as_bytes(),
    );
    let d = drain(&mut m, now);
    let t = text(&d, id);
    assert!(
        t.starts_with("HTTP/1.1 405 ") && t.contains("Allow: GET, HEAD\r\n"),
        "{t}"
    );

    let id = m.open();
    m.handle_bytes(
        now,
        id,
        format!("HEAD /ping?access_token={tok} HTTP/1.1\r\n\r\n").as_bytes(),
    );
    assert!(text(&drain(&mut m, now), id).starts_with("HTTP/1.1 200 "));
}

#[test]
fn host_details_report_the_label_and_address_and_metrics_come_from_the_driver() {
    let now = Instant::now();
    let mut m = service(true, Some("edge-box"));
    m.set_private_ip(Some("10.0.0.7".parse().unwrap()));
    let tok = token();
    let (id, d) = get(
        &mut m,
        now,
        &format!("/host_details?access_token={tok}"),
        "",
    );
    assert!(text(&d, id).ends_with(
        "{\"connector_id\":\"00000000-0000-0000-0000-000000001234\",\"ip\":\"10.0.0.7\",\"hostname\":\"custom:edge-box\"}\n"
    ));
    let (id, d) = get(&mut m, now, &format!("/metrics?access_token={tok}"), "");
    assert_eq!(d.metrics, [id]);
    assert!(d.out.is_empty());
    m.handle_metrics(id, "up 1\n");
    let d = drain(&mut m, now);
    let t = text(&d, id);
    assert!(
        t.starts_with("HTTP/1.1 200 OK\r\n") && t.ends_with("\r\n\r\nup 1\n"),
        "{t}"
    );
    assert_eq!(d.closed, [id]);
}

#[test]
fn the_handshake_is_checked_as_nhooyr_checks_it() {
    let now = Instant::now();
    let mut m = service(false, None);
    let tok = token();
    let target = format!("/logs?access_token={tok}");
    let (id, d) = get(&mut m, now, &target, "");
    assert!(text(&d, id).starts_with("HTTP/1.1 426 "));
    let wrong_version = UPGRADE.replace("Version: 13", "Version: 8");
    let (id, d) = get(&mut m, now, &target, &wrong_version);
    assert!(text(&d, id).contains("Sec-WebSocket-Version: 13\r\n"));
    let (id, d) = get(
        &mut m,
        now,
        &target,
        &format!("{UPGRADE}Origin: https://evil.example\r\n"),
    );
    assert!(text(&d, id).starts_with("HTTP/1.1 403 "));
    let (id, d) = get(
        &mut m,
        now,
        &target,
        &format!("{UPGRADE}Origin: https://one.dash.cloudflare.com\r\n"),
    );
    assert!(text(&d, id).starts_with("HTTP/1.1 101 "));
    let (id, d) = get(
        &mut m,
        now,
        &target,
        &format!("{UPGRADE}Origin: http://{DEFAULT_HOSTNAME}\r\n"),
    );
    assert!(text(&d, id).starts_with("HTTP/1.1 101 "));
}

#[test]
fn a_stream_sends_the_lines_its_filters_take_and_stops_on_request() {
    let now = Instant::now();
    let mut m = service(false, None);
    let id = open_logs(&mut m, now, "me");
    m.handle_log(br#"{"level":"info","message":"before start"}"#);
    assert!(drain(&mut m, now).out.is_empty());
    let d = send(
        &mut m,
        now,
        id,
        r#"{"type":"start_streaming","filters":{"level":"info"}}"#,
    );
    assert_eq!(d.listening, [true]);
    m.handle_log(br#"{"level":"debug","message":"quiet"}"#);
    m.handle_log(br#"{"level":"warn","message":"loud","connIndex":1}"#);
    let d = drain(&mut m, now);
    assert_eq!(
        frames(&d.out[&id]),
        [(
            OP_TEXT,
            br#"{"type":"logs","logs":[{"level":"warn","message":"loud","fields":{"connIndex":1}}]}"#.to_vec()
        )]
    );
    let d = send(&mut m, now, id, r#"{"type":"stop_streaming"}"#);
    assert_eq!(d.listening, [false]);
    m.handle_log(br#"{"level":"error","message":"after stop"}"#);
    assert!(drain(&mut m, now).out.is_empty());
}

#[test]
fn one_stream_at_a_time_and_the_same_actor_takes_over() {
    let now = Instant::now();
    let mut m = service(false, None);
    let a = open_logs(&mut m, now, "alice");
    send(&mut m, now, a, r#"{"type":"start_streaming"}"#);
    let b = open_logs(&mut m, now, "bob");
    let d = send(&mut m, now, b, r#"{"type":"start_streaming"}"#);
    assert_eq!(
        frames(&d.out[&b]),
        [(
            8,
            [
                &4002u16.to_be_bytes()[..],
                b"limit exceeded for streaming sessions"
            ]
            .concat()
        )]
    );
    assert_eq!(d.closed, [b]);
    let a2 = open_logs(&mut m, now, "alice");
    let d = send(&mut m, now, a2, r#"{"type":"start_streaming"}"#);
    assert_eq!(
        frames(&d.out[&a]),
        [(8, [&1000u16.to_be_bytes()[..], b"context closed"].concat())]
    );
    assert_eq!(d.closed, [a]);
    assert!(
        d.listening.is_empty(),
        "still listening through the new stream"
    );
    m.handle_log(br#"{"level":"info","message":"x"}"#);
    let d = drain(&mut m, now);
    assert_eq!(d.out.keys().copied().collect::<Vec<_>>(), [a2]);
}

#[test]
fn bad_messages_close_with_unsupported_data() {
    let now = Instant::now();
    let mut m = service(false, None);
    for (frame, reason) in [
        (
            masked(OP_TEXT, br#"{"type":"dance"}"#),
            "invalid client message type was provided: dance",
        ),
        (
            masked(OP_TEXT, br#"{}"#),
            "invalid message type was provided",
        ),
        (
            masked(2, br#"{"type":"start_streaming"}"#),
            "invalid message type was provided",
        ),
    ] {
        let code = 1003u16;
        let id = open_logs(&mut m, now, "me");
        m.handle_bytes(now, id, &frame);
        let d = drain(&mut m, now);
        assert_eq!(
            frames(&d.out[&id]),
            [(8, [&code.to_be_bytes()[..], reason.as_bytes()].concat())]
        );
        assert_eq!(d.closed, [id]);
    }
    let id = open_logs(&mut m, now, "me");
    let d = send(
        &mut m,
        now,
        id,
        r#"{"type":"start_streaming","filters":{"events":["nope"]}}"#,
    );
    assert_eq!(
        frames(&d.out[&id]),
        [(
            8,
            [
                &4001u16.to_be_bytes()[..],
                b"expected start streaming as first event"
            ]
            .concat()
        )]
    );
    let id = open_logs(&mut m, now, "me");
    m.handle_bytes(
        now,
        id,
        &masked(OP_TEXT, &vec![b' '; MAX_CLIENT_MESSAGE + 1]),
    );
    let d = drain(&mut m, now);
    assert_eq!(frames(&d.out[&id])[0].1[..2], 1009u16.to_be_bytes());
}

#[test]
fn pings_every_fifteen_seconds_and_an_idle_stream_closes_after_five_minutes() {
    let t0 = Instant::now();
    let mut m = service(false, None);
    let id = open_logs(&mut m, t0, "me");
    let mut now = t0;
    let mut pings = 0;
    loop {
        let d = drain(&mut m, now);
        for (op, _) in d.out.get(&id).map(|b| frames(b)).unwrap_or_default() {
            match op {
                9 => pings += 1,
                8 => {
                    assert_eq!(now.duration_since(t0), IDLE_LIMIT);
                    assert_eq!(pings, 19);
                    assert_eq!(d.closed, [id]);
                    return;
                }
                other => panic!("opcode {other}"),
            }
        }
        let next = d.timeout.unwrap();
        assert!(next > now, "the timer moves forward");
        now = next;
        m.handle_timeout(now);
    }
}

#[test]
fn a_slow_reader_loses_lines_not_memory() {
    let now = Instant::now();
    let mut m = service(false, None);
    let id = open_logs(&mut m, now, "me");
    send(&mut m, now, id, r#"{"type":"start_streaming"}"#);
    let line = format!(r#"{{"level":"info","message":"{}"}}"#, "x".repeat(1000));
    for _ in 0..1000 {
        m.handle_log(line.as_bytes());
    }
    assert!(m.dropped > 900);
    let d = drain(&mut m, now);
    let sent = d.out[&id].len();
    assert!(sent < MAX_PENDING + 2000);
    // Nothing more fits until the driver says those bytes were written.
    m.handle_log(line.as_bytes());
    assert!(drain(&mut m, now).out.is_empty());
    m.handle_written(id, sent);
    m.handle_log(line.as_bytes());
    assert_eq!(frames(&drain(&mut m, now).out[&id]).len(), 1);
}

#[test]
fn messages_that_arrive_together_are_read_one_by_one() {
    let now = Instant::now();
    let mut m = service(false, None);
    let id = open_logs(&mut m, now, "me");
    // A start and, in the same read, a stop and a start with new filters, the last split.
    let mut wire = masked(OP_TEXT, br#"{"type":"start_streaming"}"#);
    wire.extend(masked(OP_TEXT, br#"{"type":"stop_streaming"}"#));
    wire.extend(masked(
        OP_TEXT,
        br#"{"type":"start_streaming","filters":{"level":"error"}}"#,
    ));
    let (first, second) = wire.split_at(wire.len() - 5);
    m.handle_bytes(now, id, first);
    m.handle_bytes(now, id, second);
    let d = drain(&mut m, now);
    assert!(
        d.closed.is_empty(),
        "{:?}",
        d.out.get(&id).map(|b| frames(b))
    );
    m.handle_log(br#"{"level":"info","message":"filtered out"}"#);
    m.handle_log(br#"{"level":"error","message":"kept"}"#);
    let d = drain(&mut m, now);
    assert_eq!(
        frames(&d.out[&id]),
        [(
            OP_TEXT,
            br#"{"type":"logs","logs":[{"level":"error","message":"kept"}]}"#.to_vec()
        )]
    );
}

#[test]
fn a_client_that_pings_and_never_reads_gets_bounded_pongs() {
    let now = Instant::now();
    let mut m = service(false, None);
    let id = open_logs(&mut m, now, "me");
    let ping = masked(9, &[7; 125]);
    let mut queued = 0;
    for _ in 0..2000 {
        m.handle_bytes(now, id, &ping);
        if let Output::Transmit(_, b) = m.poll_output(now) {
            queued += b.len();
        }
    }
    assert!(queued < MAX_PENDING + 2000, "{queued} bytes of pongs");
}

#[test]
fn null_filters_read_as_go_reads_them() {
    let f = events::ClientEvent::parse(
        br#"{"type":"start_streaming","filters":{"events":null,"level":null,"sampling":null}}"#,
    );
    assert_eq!(
        f,
        Ok(events::ClientEvent::Start(events::Filters::default()))
    );
}
