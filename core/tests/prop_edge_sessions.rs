//! Properties of the edge's UDP session and ICMP table over arbitrary client traffic,
//! connector datagrams, connection churn and time.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use burrow_core::datagram::{v2, v3};
use burrow_core::session::edge::{EdgeSessions, EdgeSessionsConfig, MappingId, MappingKind};
use burrow_core::session::DatagramVersion;
use burrow_core::tunnel::edge::ConnId;
use proptest::prelude::*;
use uuid::Uuid;

const MAX_SESSIONS: usize = 6;

#[derive(Debug, Clone)]
enum Op {
    Client {
        mapping: u8,
        port: u8,
        body: Vec<u8>,
        big: bool,
    },
    Garbage {
        conn: u8,
        bytes: Vec<u8>,
    },
    Respond {
        mapping: u8,
        port: u8,
        conn: u8,
        code: u8,
    },
    Reply {
        mapping: u8,
        port: u8,
        conn: u8,
        body: Vec<u8>,
    },
    Add {
        conn: u8,
        tunnel: u8,
        v3: bool,
    },
    Remove {
        conn: u8,
    },
    Wait {
        millis: u32,
    },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        (
            0u8..4,
            0u8..10,
            prop::collection::vec(any::<u8>(), 0..48),
            any::<bool>()
        )
            .prop_map(|(mapping, port, body, big)| Op::Client {
                mapping,
                port,
                body,
                big
            }),
        (0u8..5, prop::collection::vec(any::<u8>(), 0..64))
            .prop_map(|(conn, bytes)| Op::Garbage { conn, bytes }),
        (0u8..4, 0u8..10, 0u8..5, 0u8..5).prop_map(|(mapping, port, conn, code)| Op::Respond {
            mapping,
            port,
            conn,
            code
        }),
        (
            0u8..4,
            0u8..10,
            0u8..5,
            prop::collection::vec(any::<u8>(), 0..16)
        )
            .prop_map(|(mapping, port, conn, body)| Op::Reply {
                mapping,
                port,
                conn,
                body
            }),
        (0u8..5, 0u8..2, any::<bool>()).prop_map(|(conn, tunnel, v3)| Op::Add { conn, tunnel, v3 }),
        (0u8..5).prop_map(|conn| Op::Remove { conn }),
        (0u32..200_000).prop_map(|millis| Op::Wait { millis }),
    ]
}

fn client(port: u8) -> SocketAddr {
    SocketAddr::from(([203, 0, 113, 1], 1000 + u16::from(port)))
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn no_panic_bounded_and_every_datagram_is_well_formed(
        ops in prop::collection::vec(op(), 0..80),
        bundle in any::<bool>(),
    ) {
        let mut e = EdgeSessions::new(
            EdgeSessionsConfig {
                max_sessions: MAX_SESSIONS,
                idle_timeout: Duration::from_secs(20),
                bundle_first_payload: bundle,
                max_echo_entries: 4,
                ..EdgeSessionsConfig::default()
            },
            [9; 32],
        );
        let tunnels = [Uuid::from_u128(1), Uuid::from_u128(2)];
        let mappings = [
            e.add_mapping(tunnels[0], MappingKind::Udp { dest: "10.0.0.1:53".parse().unwrap() }),
            e.add_mapping(tunnels[1], MappingKind::Udp { dest: "[fd00::1]:5353".parse().unwrap() }),
            e.add_mapping(tunnels[0], MappingKind::Icmp),
            MappingId(99),
        ];
        let mut conns: HashMap<ConnId, DatagramVersion> = HashMap::new();
        let mut now = Instant::now();
        for op in ops {
            match op {
                Op::Client { mapping, port, body, big } => {
                    let body = if big { vec![7; 1281] } else { body };
                    let _ = e.handle_client(now, mappings[usize::from(mapping)], client(port), &body);
                }
                Op::Garbage { conn, bytes } => {
                    if let Some(d) = e.handle_datagram(now, ConnId(conn.into()), &bytes) {
                        // Deliveries borrow from the input.
                        let r = bytes.as_ptr_range();
                        prop_assert!(r.contains(&d.payload.as_ptr()) || d.payload.is_empty());
                    }
                }
                Op::Respond { mapping, port, conn, code } => {
                    if let Some(id) = e.session_of(mappings[usize::from(mapping)], client(port)) {
                        let r = v3::RegistrationResponse {
                            request_id: id,
                            code: v3::ResponseCode::from_u8(code),
                            error_msg: "",
                        };
                        let mut buf = [0u8; 20];
                        r.encode(&mut buf).unwrap();
                        prop_assert!(e.handle_datagram(now, ConnId(conn.into()), &buf).is_none());
                    }
                }
                Op::Reply { mapping, port, conn, body } => {
                    let m = mappings[usize::from(mapping)];
                    if let Some(id) = e.session_of(m, client(port)) {
                        let mut buf = vec![0u8; 17 + body.len()];
                        v3::Payload { request_id: id, payload: &body }.encode(&mut buf).unwrap();
                        if let Some(d) = e.handle_datagram(now, ConnId(conn.into()), &buf) {
                            prop_assert_eq!((d.mapping, d.client, d.payload), (m, client(port), &body[..]));
                        }
                    }
                }
                Op::Add { conn, tunnel, v3 } => {
                    let version = if v3 { DatagramVersion::V3 } else { DatagramVersion::V2 };
                    if let std::collections::hash_map::Entry::Vacant(v) = conns.entry(ConnId(conn.into())) {
                        v.insert(version);
                        e.add_connection(now, ConnId(conn.into()), tunnels[usize::from(tunnel)], version);
                    }
                }
                Op::Remove { conn } => {
                    conns.remove(&ConnId(conn.into()));
                    e.remove_connection(now, ConnId(conn.into()));
                }
                Op::Wait { millis } => now += Duration::from_millis(millis.into()),
            }
            if e.poll_timeout().is_some_and(|t| t <= now) {
                e.handle_timeout(now);
                prop_assert!(e.poll_timeout().is_none_or(|t| t > now), "timer moves past now");
            }
            prop_assert!(e.active_sessions() <= MAX_SESSIONS);
            while let Some((conn, d)) = e.poll_datagram() {
                let version = conns.get(&conn);
                prop_assert!(version.is_some(), "sent on a live connection");
                match version {
                    Some(DatagramVersion::V3) => {
                        let ok = v3::decode(&d);
                        prop_assert!(ok.is_ok(), "{:?}", ok);
                    }
                    _ => {
                        let ok = v2::decode(&d);
                        prop_assert!(matches!(ok, Ok(v2::Datagram::Ip { .. })), "{:?}", ok);
                    }
                }
            }
        }
    }
}
