//! The management service's checks, for either connector behind `burrow edge`: requests
//! whose host is `management.argotunnel.com` reach the connector itself (`/ping`,
//! `/host_details`, `/metrics`, and `/logs`, a WebSocket streaming the connector's log lines).

use std::net::TcpStream;
use std::time::{Duration, Instant};

use burrow_core::management::token;
use tungstenite::protocol::frame::coding::CloseCode;
use tungstenite::Message;

use super::client::request;

/// The management hostname.
pub const MANAGEMENT: &str = "management.argotunnel.com";

fn get(port: u16, target: &str, extra: &str) -> (u16, String) {
    let head =
        format!("GET {target} HTTP/1.1\r\nHost: {MANAGEMENT}\r\nConnection: close\r\n{extra}\r\n");
    let (status, body) = request(port, &head, b"");
    (status, String::from_utf8_lossy(&body).into_owned())
}

type Ws = tungstenite::WebSocket<TcpStream>;

fn logs(port: u16, actor: &str) -> Ws {
    let tcp = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    tcp.set_read_timeout(Some(Duration::from_secs(2)))
        .expect("timeout");
    let tok = token::forge("tunnel", "account", actor);
    let url = format!("ws://{MANAGEMENT}/logs?access_token={tok}");
    let (ws, resp) = tungstenite::client(url, tcp).expect("handshake");
    assert_eq!(resp.status(), 101);
    ws
}

fn send(ws: &mut Ws, json: &str) {
    ws.send(Message::text(json)).expect("send");
}

/// The next message, None when the socket's 2 s read timeout passed first.
fn next(ws: &mut Ws) -> Option<Result<Message, tungstenite::Error>> {
    match ws.read() {
        Err(tungstenite::Error::Io(e))
            if matches!(
                e.kind(),
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
            ) =>
        {
            None
        }
        other => Some(other),
    }
}

/// Reads until a `logs` event or `limit`, sending a request through `app_port` between reads
/// so that the connector has something to log.
fn read_logs_until(ws: &mut Ws, app_port: u16, limit: Duration) -> serde_json::Value {
    let start = Instant::now();
    while start.elapsed() < limit {
        let _ = request(
            app_port,
            "GET /x HTTP/1.1\r\nHost: app.test\r\nConnection: close\r\n\r\n",
            b"",
        );
        match next(ws) {
            Some(Ok(Message::Text(t))) => return serde_json::from_str(&t).expect("JSON"),
            None | Some(Ok(Message::Ping(_) | Message::Pong(_))) => {}
            Some(Ok(other)) => panic!("unexpected message {other:?}"),
            Some(Err(e)) => panic!("log stream failed: {e}"),
        }
    }
    panic!("no log line within {limit:?}");
}

/// How a stream ended: its close (code, reason), or None if the connection ended without one.
fn ended(ws: &mut Ws, what: &str) -> Option<(u16, String)> {
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(20) {
        match next(ws) {
            Some(Ok(Message::Close(Some(f)))) => {
                return Some((u16::from(f.code), f.reason.to_string()))
            }
            Some(Ok(Message::Close(None))) => return Some((0, String::new())),
            None | Some(Ok(_)) => {}
            Some(Err(tungstenite::Error::Protocol(
                tungstenite::error::ProtocolError::ResetWithoutClosingHandshake,
            ))) => return None,
            Some(Err(e)) => panic!("{what}: expected the stream to end, got {e}"),
        }
    }
    panic!("{what}: the stream did not end within 20 s");
}

/// The close the service sends: (code, reason).
fn closed_with(ws: &mut Ws, what: &str) -> (u16, String) {
    ended(ws, what).unwrap_or_else(|| panic!("{what}: the stream ended without a close"))
}

/// The first log line, within 20 s, whose message `wanted` takes.
fn line_where(
    ws: &mut Ws,
    app_port: u16,
    name: &str,
    wanted: impl Fn(&str) -> bool,
) -> serde_json::Value {
    let start = Instant::now();
    loop {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "{name}: no such log line"
        );
        let event = read_logs_until(ws, app_port, Duration::from_secs(20));
        let line = &event["logs"][0];
        if wanted(line["message"].as_str().unwrap_or("")) {
            return line.clone();
        }
    }
}

/// Every check, through the edge's HTTP port `http`, of a connector run with `label: box-1`
/// serving `app.test` (named `name` in failures) whose CPU time so far `cpu` reads;
/// `tcp_port` is the edge's TCP map to a private-network echo server at `echo`.
pub fn check_service(
    name: &str,
    http: u16,
    (tcp_port, echo): (u16, std::net::SocketAddr),
    cpu: impl Fn() -> Duration,
) {
    let tok = token::forge("tunnel", "account", "alice");
    // Every route wants a token; a bad one is a missing one.
    let (status, body) = get(http, "/ping", "");
    assert_eq!(status, 400, "{name}: {body}");
    assert_eq!(
        body,
        "{\"errors\":[{\"code\":1001,\"message\":\"missing access_token query parameter\"}]}\n",
        "{name}"
    );
    assert_eq!(
        get(http, "/ping?access_token=nonsense", "").0,
        400,
        "{name}"
    );
    assert_eq!(
        get(http, &format!("/ping?access_token={tok}"), "").0,
        200,
        "{name}"
    );
    let (status, body) = get(http, &format!("/host_details?access_token={tok}"), "");
    assert_eq!(status, 200, "{name}: {body}");
    let details: serde_json::Value = serde_json::from_str(&body).expect("JSON");
    assert!(
        details["connector_id"]
            .as_str()
            .is_some_and(|id| id.len() == 36),
        "{name}: {body}"
    );
    assert_eq!(details["hostname"], "custom:box-1", "{name}: --label");
    assert!(details["ip"].as_str().is_some(), "{name}: {body}");
    let (status, body) = get(http, &format!("/metrics?access_token={tok}"), "");
    assert_eq!(status, 200, "{name}");
    assert!(body.contains("cloudflared_tunnel_ha_connections"), "{name}");
    let (status, body) = get(http, &format!("/nowhere?access_token={tok}"), "");
    assert_eq!(
        (status, body.as_str()),
        (404, "404 page not found\n"),
        "{name}"
    );

    // The log stream: nothing until started; then the connector's lines, debug included.
    let mut alice = logs(http, "alice");
    send(
        &mut alice,
        r#"{"type":"start_streaming","filters":{"level":"debug"}}"#,
    );
    let event = read_logs_until(&mut alice, http, Duration::from_secs(20));
    assert_eq!(event["type"], "logs", "{name}: {event}");
    eprintln!("{name}: first log event {event}");
    let lines = event["logs"].as_array().expect("logs");
    assert_eq!(lines.len(), 1, "{name}: one line per event");
    assert!(lines[0]["time"].as_str().is_some(), "{name}: {event}");
    // The request's line carries what cloudflared's HTTP logger adds. Over HTTP/2,
    // cloudflared names the URL the edge's request has and HTTP/2.0.
    let line = line_where(&mut alice, http, name, |m| {
        m.starts_with("GET ") && m.contains("/x HTTP/")
    });
    let fields = &line["fields"];
    for key in [
        "connIndex",
        "originService",
        "ingressRule",
        "host",
        "path",
        "headers",
        "content-length",
    ] {
        assert!(fields.get(key).is_some(), "{name}: no {key} in {line}");
    }
    assert_eq!(fields["connIndex"], 0, "{name}: {line}");
    // Go's HTTP/2 server does not know the length of a body the edge has not ended.
    let length = if name.ends_with("http2") { -1 } else { 0 };
    assert_eq!(fields["content-length"], length, "{name}: {line}");
    assert_eq!(fields["path"], "/x", "{name}: {line}");
    assert!(
        fields["headers"]["Cf-Warp-Tag-Id"].is_array(),
        "{name}: {line}"
    );
    // A private-network TCP flow's lines, with what cloudflared's TCP logger adds.
    let mut tcp = TcpStream::connect(("127.0.0.1", tcp_port)).expect("TCP map");
    tcp.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    std::io::Write::write_all(&mut tcp, b"ping").expect("write");
    let mut back = [0u8; 4];
    std::io::Read::read_exact(&mut tcp, &mut back).expect("echo");
    drop(tcp);
    for message in [
        "tcp proxy stream started",
        "tcp proxy stream finished successfully",
    ] {
        let line = line_where(&mut alice, http, name, |m| m == message);
        let fields = &line["fields"];
        assert_eq!(fields["originService"], "warp-routing", "{name}: {line}");
        assert_eq!(fields["destAddr"], echo.to_string(), "{name}: {line}");
        assert_eq!(fields["connIndex"], 0, "{name}: {line}");
        assert!(fields.get("flowID").is_some(), "{name}: {line}");
        assert_eq!(line["event"], "tcp", "{name}: {line}");
    }

    // Streaming what is logged while streaming must not feed itself: without requests, the
    // stream goes quiet, and burrow idles (no loop on its own lines or timers).
    let quiet = Instant::now();
    let busy = cpu();
    let mut lines = 0;
    while quiet.elapsed() < Duration::from_millis(1500) {
        match next(&mut alice) {
            Some(Ok(Message::Text(_))) => lines += 1,
            None | Some(Ok(_)) => {}
            Some(Err(e)) => panic!("{name}: log stream failed: {e}"),
        }
    }
    assert!(lines < 50, "{name}: {lines} lines in 1.5 s without traffic");
    let busy = cpu() - busy;
    eprintln!("{name}: {busy:?} of CPU in 1.5 s of streaming without traffic");
    // Stock cloudflared 2026.8.2 is busy here (about 2 s of CPU in the 1.5 s), so only burrow
    // is held to it.
    assert!(
        name.starts_with("cloudflared") || busy < Duration::from_millis(500),
        "{name}: {busy:?} of CPU in 1.5 s without traffic"
    );

    // One stream at a time: another actor is refused, the same actor takes over.
    let mut bob = logs(http, "bob");
    send(&mut bob, r#"{"type":"start_streaming"}"#);
    assert_eq!(
        closed_with(&mut bob, &format!("{name}: bob")),
        (4002, "limit exceeded for streaming sessions".to_owned()),
        "{name}"
    );
    let mut alice2 = logs(http, "alice");
    send(&mut alice2, r#"{"type":"start_streaming"}"#);
    // The replaced stream ends: burrow closes it normally ("context closed", cloudflared's
    // handler's close); cloudflared's reader, cancelled at the same time, may get there first
    // with a policy-violation close or no close at all.
    let ended = ended(&mut alice, &format!("{name}: alice"));
    if !name.starts_with("cloudflared") {
        assert_eq!(
            ended,
            Some((u16::from(CloseCode::Normal), "context closed".to_owned())),
            "{name}"
        );
    } else {
        assert!(
            matches!(ended, None | Some((1000 | 1008, _))),
            "{name}: {ended:?}"
        );
    }
    read_logs_until(&mut alice2, http, Duration::from_secs(20));
    // A message the service does not know ends the stream.
    send(&mut alice2, r#"{"type":"dance"}"#);
    assert_eq!(
        closed_with(&mut alice2, &format!("{name}: alice2")),
        (
            1003,
            "invalid client message type was provided: dance".to_owned()
        ),
        "{name}"
    );
}
