//! Datagram-v2 session RPCs over real quinn-proto connections: our edge and our connector
//! paired in-process (TLS 1.3 + QUIC, packets handed across on virtual time), registering,
//! answering and unregistering sessions in both directions, and a v3 connection refusing them.

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use burrow_core::control::{ConnectionDetails, Registration};
use burrow_core::rpc_stream::server::V3_REFUSES_REGISTER;
use burrow_core::session::{SessionId, SessionMethod};
use burrow_core::tunnel::connector::{ConnectorConfig, ConnectorConnection, ConnectorEvent};
use burrow_core::tunnel::edge::{ConnId, EdgeEndpoint, EdgeEvent};
use common::tls_pair;
use uuid::Uuid;

const ID: SessionId = SessionId(0x5e55_1011_0000_0000_0000_0000_0000_0001);

/// One connector connection and the edge, on a perfect network.
struct Pair {
    now: Instant,
    edge: EdgeEndpoint,
    edge_addr: SocketAddr,
    conn: ConnectorConnection,
    conn_addr: SocketAddr,
    edge_conn: Option<ConnId>,
    edge_events: Vec<EdgeEvent>,
    conn_events: Vec<ConnectorEvent>,
}

impl Pair {
    /// Connects with `features` and runs until registered.
    fn registered(features: &[&str]) -> Self {
        let (server, client) = tls_pair();
        let now = Instant::now();
        let edge_addr: SocketAddr = "198.51.100.1:7844".parse().unwrap();
        let registration = Registration::new(
            "acct",
            vec![7; 32],
            Uuid::from_u128(1),
            Uuid::from_u128(2),
            features.iter().map(|f| f.to_string()).collect(),
        );
        let config = ConnectorConfig::new(registration, client);
        let mut p = Pair {
            now,
            edge: EdgeEndpoint::new(server, [1; 32]),
            edge_addr,
            conn: ConnectorConnection::connect(now, config, edge_addr, [2; 32]).unwrap(),
            conn_addr: "192.0.2.10:40000".parse().unwrap(),
            edge_conn: None,
            edge_events: Vec::new(),
            conn_events: Vec::new(),
        };
        p.run(Duration::from_millis(500));
        assert!(
            p.take_conn_events()
                .iter()
                .any(|e| matches!(e, ConnectorEvent::Registered(_))),
            "connector registers"
        );
        p.take_edge_events();
        p
    }

    fn conn_id(&self) -> ConnId {
        self.edge_conn.expect("registered")
    }

    /// Moves packets until both sides are quiet, then lets 1 ms pass; `d` in all.
    fn run(&mut self, d: Duration) {
        let end = self.now + d;
        let mut buf = Vec::new();
        while self.now < end {
            loop {
                let mut moved = false;
                while let Some(t) = self.edge.poll_transmit(self.now, 1, &mut buf) {
                    moved = true;
                    assert_eq!(t.destination, self.conn_addr);
                    let b = buf[..t.size].to_vec();
                    self.conn.handle_datagram(self.now, self.edge_addr, &b);
                }
                while let Some(t) = self.conn.poll_transmit(self.now, 1, &mut buf) {
                    moved = true;
                    let b = buf[..t.size].to_vec();
                    self.edge.handle_datagram(self.now, self.conn_addr, &b);
                }
                while let Some(e) = self.edge.poll_event() {
                    moved = true;
                    if let EdgeEvent::RegisterRequested { conn, .. } = e {
                        self.edge_conn = Some(conn);
                        let details = ConnectionDetails {
                            uuid: Uuid::from_u128(3),
                            location: "TST".into(),
                            remotely_managed: false,
                        };
                        self.edge
                            .respond_registration(self.now, conn, Ok(details))
                            .unwrap();
                    }
                    self.edge_events.push(e);
                }
                while let Some(e) = self.conn.poll_event() {
                    moved = true;
                    self.conn_events.push(e);
                }
                if !moved {
                    break;
                }
            }
            self.now += Duration::from_millis(1);
            if self.edge.poll_timeout().is_some_and(|t| t <= self.now) {
                self.edge.handle_timeout(self.now);
            }
            if self.conn.poll_timeout().is_some_and(|t| t <= self.now) {
                self.conn.handle_timeout(self.now);
            }
        }
    }

    fn take_edge_events(&mut self) -> Vec<EdgeEvent> {
        std::mem::take(&mut self.edge_events)
    }

    fn take_conn_events(&mut self) -> Vec<ConnectorEvent> {
        std::mem::take(&mut self.conn_events)
    }
}

#[test]
fn v2_register_answer_and_unregister_both_ways() {
    let mut p = Pair::registered(&["support_datagram_v2"]);
    let conn = p.conn_id();
    let dest: SocketAddr = "10.0.0.7:53".parse().unwrap();

    // Edge registers; the connector asks its driver, which says OK.
    p.edge
        .register_udp_session(p.now, conn, ID, dest, 3_000_000_000)
        .unwrap();
    p.run(Duration::from_millis(20));
    let stream = match &p.take_conn_events()[..] {
        [ConnectorEvent::UdpSessionRequested {
            stream,
            id,
            dest: d,
            idle_hint_nanos: 3_000_000_000,
        }] if *id == ID && *d == dest => *stream,
        other => panic!("expected one session request, got {other:?}"),
    };
    assert_eq!(p.take_edge_events(), vec![], "not answered yet");
    p.conn.respond_udp_session(p.now, stream, Ok(())).unwrap();
    p.run(Duration::from_millis(20));
    assert_eq!(
        p.take_edge_events(),
        vec![EdgeEvent::UdpSessionRegistered {
            conn,
            id: ID,
            result: Ok(())
        }]
    );
    assert!(
        p.conn.respond_udp_session(p.now, stream, Ok(())).is_err(),
        "the stream is done"
    );

    // A refusal travels in `err`.
    let other = SessionId(ID.0 + 1);
    p.edge
        .register_udp_session(p.now, conn, other, dest, 0)
        .unwrap();
    p.run(Duration::from_millis(20));
    let stream = match &p.take_conn_events()[..] {
        [ConnectorEvent::UdpSessionRequested { stream, .. }] => *stream,
        other => panic!("expected one session request, got {other:?}"),
    };
    let refusal = "failed to start udp session due to rate limiting: too many active flows";
    p.conn
        .respond_udp_session(p.now, stream, Err(refusal.into()))
        .unwrap();
    p.run(Duration::from_millis(20));
    assert_eq!(
        p.take_edge_events(),
        vec![EdgeEvent::UdpSessionRegistered {
            conn,
            id: other,
            result: Err(refusal.into())
        }]
    );

    // The connector ends a session: its own RPC stream to the edge's SessionManager.
    p.conn
        .unregister_udp_session(p.now, ID, "session idle for 3s");
    assert_eq!(p.conn.pending_calls(), 1);
    p.run(Duration::from_millis(20));
    assert_eq!(
        p.take_edge_events(),
        vec![EdgeEvent::UdpSessionUnregistered {
            conn,
            id: ID,
            message: "session idle for 3s".into()
        }]
    );
    assert_eq!(p.conn.pending_calls(), 0, "the edge answered");
    assert_eq!(p.conn.failed_unregistrations(), 0);
    assert_eq!(p.take_conn_events(), vec![]);

    // The edge ends a session: the connector is told, nothing comes back.
    p.edge
        .unregister_udp_session(p.now, conn, other, "eyeball went away")
        .unwrap();
    p.run(Duration::from_millis(20));
    assert_eq!(
        p.take_conn_events(),
        vec![ConnectorEvent::UdpSessionUnregistered {
            id: other,
            message: "eyeball went away".into()
        }]
    );
    assert_eq!(p.take_edge_events(), vec![]);

    // Many round trips: streams are released, credit keeps flowing both ways.
    for i in 0..300u128 {
        let id = SessionId(i << 64);
        p.edge
            .register_udp_session(p.now, conn, id, dest, 0)
            .unwrap();
        p.run(Duration::from_millis(2));
        for e in p.take_conn_events() {
            if let ConnectorEvent::UdpSessionRequested { stream, .. } = e {
                p.conn.respond_udp_session(p.now, stream, Ok(())).unwrap();
            }
        }
        p.conn
            .unregister_udp_session(p.now, id, "terminated without error");
        p.run(Duration::from_millis(2));
        let events = p.take_edge_events();
        assert!(
            events.contains(&EdgeEvent::UdpSessionRegistered {
                conn,
                id,
                result: Ok(())
            }) && events
                .iter()
                .any(|e| matches!(e, EdgeEvent::UdpSessionUnregistered { id: u, .. } if *u == id)),
            "round {i}: {events:?}"
        );
    }
    assert_eq!(p.conn.pending_calls(), 0);
}

#[test]
fn v3_connection_refuses_registration_and_keeps_serving() {
    let mut p = Pair::registered(&["support_datagram_v2", "support_datagram_v3_2"]);
    let conn = p.conn_id();
    p.edge
        .register_udp_session(p.now, conn, ID, "10.0.0.7:53".parse().unwrap(), 0)
        .unwrap();
    p.run(Duration::from_millis(20));
    assert_eq!(
        p.take_conn_events(),
        vec![ConnectorEvent::SessionMethodRefused(
            SessionMethod::Register
        )],
        "refused and reported, for the metric; no session is asked for"
    );
    assert_eq!(
        p.take_edge_events(),
        vec![EdgeEvent::UdpSessionRegistered {
            conn,
            id: ID,
            result: Err(V3_REFUSES_REGISTER.into())
        }]
    );
}

#[test]
fn unanswered_unregistration_gives_up_after_the_rpc_timeout() {
    let mut p = Pair::registered(&["support_datagram_v2"]);
    // The edge vanishes: nothing reaches it any more.
    p.conn
        .unregister_udp_session(p.now, ID, "session idle for 3s");
    let mut buf = Vec::new();
    let end = p.now + Duration::from_secs(6);
    while p.now < end {
        while p.conn.poll_transmit(p.now, 1, &mut buf).is_some() {}
        p.now += Duration::from_millis(50);
        p.conn.handle_timeout(p.now);
    }
    assert_eq!(p.conn.pending_calls(), 0, "given up, only logged");
    assert_eq!(p.conn.failed_unregistrations(), 1, "and counted");
    assert!(
        !p.take_conn_events()
            .iter()
            .any(|e| matches!(e, ConnectorEvent::Closed { .. })),
        "not fatal"
    );
}
