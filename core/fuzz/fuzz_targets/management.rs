#![no_main]
//! The management service's inputs never panic, and a connection's output stays bounded: the
//! bytes of a connection to it (a request head, then WebSocket frames), log lines, and tokens.

use std::time::{Duration, Instant};

use burrow_core::management::events::{ClientEvent, Log};
use burrow_core::management::{token, Management, ManagementConfig, Output, MAX_PENDING};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = token::parse(&String::from_utf8_lossy(data));
    let _ = ClientEvent::parse(data);
    let _ = Log::from_json_line(data);
    let mut m = Management::new(
        ManagementConfig {
            hostname: "management.argotunnel.com".into(),
            diagnostics: true,
            connector_id: uuid::Uuid::nil(),
            label: None,
            host_name: "h".into(),
        },
        1,
    );
    let t0 = Instant::now();
    let id = m.open();
    // A valid handshake first half the time, so the frames behind it are reached.
    if data.first().is_some_and(|b| b & 1 == 1) {
        let head = format!(
            "GET /logs?access_token={} HTTP/1.1\r\nHost: h\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: a2V5\r\n\r\n",
            token::forge("t", "a", "x")
        );
        m.handle_bytes(t0, id, head.as_bytes());
    }
    for (i, chunk) in data.chunks(7).enumerate() {
        let now = t0 + Duration::from_secs(i as u64);
        m.handle_bytes(now, id, chunk);
        m.handle_log(chunk);
        m.handle_timeout(now);
        for _ in 0..64 {
            match m.poll_output(now) {
                Output::Transmit(_, b) => assert!(b.len() <= MAX_PENDING + 64 * 1024),
                Output::WantMetrics(c) => m.handle_metrics(c, "m 1\n"),
                Output::Timeout(t) => {
                    assert!(t >= now);
                    break;
                }
                Output::Close(_) | Output::Listening(_) => {}
            }
        }
    }
});
