#![no_main]
//! Any bytes as a sequence of client packets, connector datagrams, answers for live sessions,
//! connection churn and time through the edge's session table: no panic, the session bound
//! holds, the timer moves past now once handled, and every datagram it sends decodes.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use burrow_core::datagram::v3;
use burrow_core::session::edge::{EdgeSessions, EdgeSessionsConfig, MappingId, MappingKind};
use burrow_core::session::DatagramVersion;
use burrow_core::tunnel::edge::ConnId;
use libfuzzer_sys::fuzz_target;
use uuid::Uuid;

fuzz_target!(|data: &[u8]| {
    let mut e = EdgeSessions::new(
        EdgeSessionsConfig {
            max_sessions: 8,
            max_echo_entries: 8,
            bundle_first_payload: data.first().is_some_and(|b| b & 1 == 1),
            ..EdgeSessionsConfig::default()
        },
        [1; 32],
    );
    let tunnel = Uuid::from_u128(1);
    let maps = [
        e.add_mapping(
            tunnel,
            MappingKind::Udp {
                dest: "10.0.0.1:53".parse().unwrap(),
            },
        ),
        e.add_mapping(tunnel, MappingKind::Icmp),
        MappingId(7),
    ];
    let mut now = Instant::now();
    // Each record: [op, len, bytes...].
    let mut rest = data;
    while rest.len() >= 2 {
        let (op, len) = (rest[0], usize::from(rest[1]));
        let body = &rest[2..(2 + len).min(rest.len())];
        rest = &rest[(2 + len).min(rest.len())..];
        let conn = ConnId(usize::from(op >> 5));
        let client = SocketAddr::from(([192, 0, 2, 1], u16::from(op & 7)));
        match op % 7 {
            0 | 1 => {
                let _ = e.handle_client(now, maps[usize::from(op >> 6) % 3], client, body);
            }
            2 => {
                let _ = e.handle_datagram(now, conn, body);
            }
            3 => {
                // An answer or payload for a live session, so the state machine gets past
                // registration.
                if let Some(id) = e.session_of(maps[0], client) {
                    let mut buf = [0u8; 64];
                    let n = if op & 8 == 0 {
                        let code =
                            v3::ResponseCode::from_u8(body.first().copied().unwrap_or(0) % 4);
                        v3::RegistrationResponse {
                            request_id: id,
                            code,
                            error_msg: "",
                        }
                        .encode(&mut buf)
                    } else {
                        v3::Payload {
                            request_id: id,
                            payload: &body[..body.len().min(40)],
                        }
                        .encode(&mut buf)
                    };
                    if let Ok(n) = n {
                        let _ = e.handle_datagram(now, conn, &buf[..n]);
                    }
                }
            }
            4 => {
                let v = if op & 16 == 0 {
                    DatagramVersion::V3
                } else {
                    DatagramVersion::V2
                };
                e.add_connection(now, conn, tunnel, v);
            }
            5 => e.remove_connection(now, conn),
            _ => now += Duration::from_millis(u64::from(op) * 97),
        }
        while let Some((_, d)) = e.poll_datagram() {
            assert!(!d.is_empty());
        }
        assert!(e.active_sessions() <= 8);
        if e.poll_timeout().is_some_and(|t| t <= now) {
            e.handle_timeout(now);
            assert!(e.poll_timeout().is_none_or(|t| t > now));
        }
    }
});
