//! Batched QUIC I/O, as a GSO/GRO driver does it: our connector and our edge paired over real
//! quinn-proto connections (TLS 1.3 + QUIC, virtual time), every `poll_transmit` asked for a
//! GSO batch that the "network" splits into datagrams, and the receiving side fed GRO-style
//! buffers of several coalesced datagrams through `handle_received`. A TCP flow carries
//! megabytes both ways; the bytes must arrive intact and in order.

mod common;

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use burrow_core::control::{ConnectionDetails, Registration};
use burrow_core::stream::connect::{ConnectRequest, ConnectionType};
use burrow_core::tunnel::connector::{ConnectorConfig, ConnectorConnection, ConnectorEvent};
use burrow_core::tunnel::data::{FlowId, OriginAction};
use burrow_core::tunnel::edge::{ConnId, EdgeEndpoint, EdgeEvent};
use burrow_core::tunnel::{EcnCodepoint, Received};
use common::tls_pair;
use quinn_proto::{ClientConfig, StreamId};
use uuid::Uuid;

/// Datagrams per GSO batch asked of `poll_transmit` (Linux allows up to 64).
const GSO_SEGMENTS: usize = 10;
/// Datagrams the receiving "kernel" coalesces into one GRO buffer at most.
const GRO_SEGMENTS: usize = 8;
const DOWN: usize = 3 << 20;
const UP: usize = 2 << 20;

fn config(client: ClientConfig) -> ConnectorConfig {
    let registration = Registration::new(
        "acct",
        vec![7; 32],
        Uuid::from_u128(1),
        Uuid::from_u128(2),
        vec![],
    );
    ConnectorConfig::new(registration, client)
}

/// Deterministic, position-dependent bytes, so reordering or loss shows.
fn pattern(seed: u8, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u32).wrapping_mul(2_654_435_761).to_le_bytes()[3] ^ seed)
        .collect()
}

/// One direction of the network: the datagrams in flight, in order.
#[derive(Default)]
struct Wire {
    queue: VecDeque<(SocketAddr, Option<EcnCodepoint>, Vec<u8>)>,
    /// Transmits that held more than one datagram.
    gso_batches: usize,
    /// Receives that handed over more than one datagram.
    gro_buffers: usize,
    /// Datagrams carried.
    datagrams: usize,
    /// ECN marking of the latest transmit.
    last_ecn: Option<EcnCodepoint>,
}

impl Wire {
    /// Splits a (possibly GSO) transmit into its datagrams.
    fn send(&mut self, from: SocketAddr, t: &burrow_core::tunnel::Transmit, buf: &[u8]) {
        assert!(t.size <= buf.len());
        if let Some(s) = t.segment_size {
            assert!(
                s > 0 && s <= t.size.max(1),
                "segment size {s} of {}",
                t.size
            );
        }
        let n = t.datagram_count();
        self.last_ecn = t.ecn;
        if n > 1 {
            self.gso_batches += 1;
        }
        let mut count = 0;
        for d in t.datagrams(buf) {
            self.queue.push_back((from, t.ecn, d.to_vec()));
            count += 1;
        }
        assert_eq!(count, n);
        self.datagrams += n;
    }

    /// The next GRO buffer: consecutive datagrams of one source and ECN marking, all of the
    /// first one's size except possibly a shorter last one (as Linux coalesces them).
    fn recv(&mut self, into: &mut Vec<u8>) -> Option<(SocketAddr, Option<EcnCodepoint>, usize)> {
        let (from, ecn, first) = self.queue.pop_front()?;
        let stride = first.len();
        into.clear();
        into.extend_from_slice(&first);
        let mut segments = 1;
        while segments < GRO_SEGMENTS {
            let Some((f, e, d)) = self.queue.front() else {
                break;
            };
            if *f != from || *e != ecn || d.len() > stride {
                break;
            }
            let last = d.len() < stride;
            into.extend_from_slice(d);
            self.queue.pop_front();
            segments += 1;
            if last {
                break;
            }
        }
        if segments > 1 {
            self.gro_buffers += 1;
        }
        Some((from, ecn, stride))
    }
}

struct Pair {
    now: Instant,
    edge: EdgeEndpoint,
    edge_addr: SocketAddr,
    conn: ConnectorConnection,
    conn_addr: SocketAddr,
    to_edge: Wire,
    to_conn: Wire,
    edge_events: Vec<EdgeEvent>,
    conn_events: Vec<ConnectorEvent>,
    actions: VecDeque<OriginAction>,
    edge_conn: Option<ConnId>,
    buf: Vec<u8>,
    gro: Vec<u8>,
}

impl Pair {
    fn new() -> Self {
        let (server, client) = tls_pair();
        let now = Instant::now();
        let edge_addr: SocketAddr = "198.51.100.1:7844".parse().unwrap();
        Pair {
            now,
            edge: EdgeEndpoint::new(server, [1; 32]),
            edge_addr,
            conn: ConnectorConnection::connect(now, config(client), edge_addr, [2; 32]).unwrap(),
            conn_addr: "192.0.2.10:40000".parse().unwrap(),
            to_edge: Wire::default(),
            to_conn: Wire::default(),
            edge_events: Vec::new(),
            conn_events: Vec::new(),
            actions: VecDeque::new(),
            edge_conn: None,
            buf: Vec::new(),
            gro: Vec::new(),
        }
    }

    /// Moves packets (batched) until both sides are quiet; true if anything moved.
    fn shuttle(&mut self) -> bool {
        let mut any = false;
        loop {
            let mut moved = false;
            while let Some(t) = self
                .edge
                .poll_transmit(self.now, GSO_SEGMENTS, &mut self.buf)
            {
                assert_eq!(t.destination, self.conn_addr);
                self.to_conn.send(self.edge_addr, &t, &self.buf);
                moved = true;
            }
            while let Some(t) = self
                .conn
                .poll_transmit(self.now, GSO_SEGMENTS, &mut self.buf)
            {
                assert_eq!(t.destination, self.edge_addr);
                self.to_edge.send(self.conn_addr, &t, &self.buf);
                moved = true;
            }
            while let Some((from, ecn, stride)) = self.to_conn.recv(&mut self.gro) {
                let r = Received {
                    from,
                    ecn,
                    data: &self.gro,
                    stride,
                };
                self.conn.handle_received(self.now, &r);
                moved = true;
            }
            while let Some((from, ecn, stride)) = self.to_edge.recv(&mut self.gro) {
                let r = Received {
                    from,
                    ecn,
                    data: &self.gro,
                    stride,
                };
                self.edge.handle_received(self.now, &r);
                moved = true;
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
            while let Some(a) = self.conn.poll_origin_action() {
                moved = true;
                self.actions.push_back(a);
            }
            if !moved {
                return any;
            }
            any = true;
        }
    }

    /// Lets 1 ms of virtual time pass and fires due timers.
    fn tick(&mut self) {
        self.now += Duration::from_millis(1);
        if self.edge.poll_timeout().is_some_and(|t| t <= self.now) {
            self.edge.handle_timeout(self.now);
        }
        if self.conn.poll_timeout().is_some_and(|t| t <= self.now) {
            self.conn.handle_timeout(self.now);
        }
    }

    /// Runs until `done` holds, or fails after `limit` of virtual time.
    fn run_until(&mut self, limit: Duration, mut done: impl FnMut(&mut Self) -> bool) {
        let end = self.now + limit;
        loop {
            self.shuttle();
            if done(self) {
                return;
            }
            assert!(self.now < end, "not done within {limit:?}");
            self.tick();
        }
    }
}

#[test]
fn gso_batches_and_gro_buffers_carry_a_tcp_flow_intact_both_ways() {
    let mut p = Pair::new();
    p.run_until(Duration::from_secs(2), |p| {
        p.conn_events
            .iter()
            .any(|e| matches!(e, ConnectorEvent::Registered(_)))
    });
    let conn = p.edge_conn.expect("registered");

    // The edge opens a TCP stream; the connector asks for the origin, which "connects".
    let request = ConnectRequest {
        dest: "192.0.2.80:9000",
        connection_type: ConnectionType::Tcp,
        metadata: &[],
    };
    let stream: StreamId = p.edge.open_request(p.now, conn, &request).unwrap();
    let mut flow: Option<FlowId> = None;
    p.run_until(Duration::from_secs(2), |p| {
        while let Some(a) = p.actions.pop_front() {
            if let OriginAction::Open { flow: f, dest, .. } = a {
                assert_eq!(dest, "192.0.2.80:9000");
                flow = Some(f);
            }
        }
        flow.is_some()
    });
    let flow = flow.unwrap();
    p.conn.handle_flow_connected(p.now, flow);
    p.run_until(Duration::from_secs(2), |p| {
        p.edge_events.iter().any(|e| {
            matches!(e, EdgeEvent::Response { stream: s, error, .. } if *s == stream && error.is_empty())
        })
    });

    // Both directions at once: origin bytes down to the edge, request bytes up to the origin.
    let down = bytes::Bytes::from(pattern(0x5a, DOWN));
    let up = bytes::Bytes::from(pattern(0xa5, UP));
    let (mut fed, mut queued) = (0, 0);
    let mut got_down = Vec::with_capacity(DOWN);
    let mut got_up = Vec::with_capacity(UP);
    let mut down_done = false;
    let mut shut = false;
    let mut origin_eof = false;
    p.run_until(Duration::from_secs(60), |p| {
        let mut progress = true;
        while progress {
            progress = false;
            if fed < DOWN {
                let n = p.conn.handle_flow_data(
                    p.now,
                    flow,
                    &down.slice(fed..(fed + 64 * 1024).min(DOWN)),
                );
                fed += n;
                progress |= n > 0;
            }
            // The origin's EOF ends a TCP stream both ways (cloudflared pipes until either
            // side ends), so it waits for the upload to be through.
            if fed == DOWN && shut && !origin_eof {
                origin_eof = true;
                p.conn.handle_flow_finished(p.now, flow);
                progress = true;
            }
            if queued < UP {
                let n = p
                    .edge
                    .send_request_body(p.now, conn, stream, &up.slice(queued..), 256 * 1024)
                    .unwrap();
                queued += n;
                progress |= n > 0;
                if queued == UP {
                    p.edge.finish_request(p.now, conn, stream).unwrap();
                }
            }
            if !down_done {
                let before = got_down.len();
                if let Ok(done) = p
                    .edge
                    .read_response(p.now, conn, stream, 1 << 20, &mut got_down)
                {
                    down_done = done;
                }
                progress |= got_down.len() > before;
            }
            while let Some(a) = p.actions.pop_front() {
                match a {
                    OriginAction::Write { flow: f, data } => {
                        assert_eq!(f, flow);
                        got_up.extend_from_slice(&data);
                        p.conn.handle_flow_written(p.now, flow);
                        progress = true;
                    }
                    OriginAction::ShutdownWrite { flow: f } => {
                        assert_eq!(f, flow);
                        shut = true;
                    }
                    // A short handle_flow_data asked to be resumed: the loop feeds again anyway.
                    OriginAction::Resume { .. }
                    | OriginAction::Close { .. }
                    | OriginAction::AbortDial { .. } => {}
                    OriginAction::Open { .. } => panic!("unexpected second origin flow"),
                }
            }
            if progress {
                p.shuttle();
            }
        }
        down_done && shut
    });

    assert_eq!(got_down.len(), DOWN, "download length");
    assert!(got_down == down, "download bytes intact and in order");
    assert_eq!(got_up.len(), UP, "upload length");
    assert!(got_up == up, "upload bytes intact and in order");

    // The batched paths were really taken, in both directions.
    for (name, w) in [
        ("edge->connector", &p.to_conn),
        ("connector->edge", &p.to_edge),
    ] {
        assert!(
            w.gso_batches > 0,
            "{name}: no GSO batch among {} datagrams",
            w.datagrams
        );
        assert!(
            w.gro_buffers > 0,
            "{name}: no GRO buffer among {} datagrams",
            w.datagrams
        );
    }
    // The ECN marks of received buffers reached quinn: a sender stops marking as soon as an
    // ACK comes back without ECN counts, so marks still on at the end prove the round trip.
    assert_eq!(
        p.to_conn.last_ecn,
        Some(EcnCodepoint::Ect0),
        "edge still marks ECT(0)"
    );
    assert_eq!(
        p.to_edge.last_ecn,
        Some(EcnCodepoint::Ect0),
        "connector still marks ECT(0)"
    );
}

#[test]
fn single_datagram_calls_still_work_beside_batches() {
    // The 1-datagram entry points (handle_datagram, max_datagrams = 1) serve the same logic:
    // a handshake fed that way registers just the same.
    let mut p = Pair::new();
    let end = p.now + Duration::from_secs(2);
    while !p
        .conn_events
        .iter()
        .any(|e| matches!(e, ConnectorEvent::Registered(_)))
    {
        assert!(p.now < end, "registers");
        loop {
            let mut moved = false;
            while let Some(t) = p.conn.poll_transmit(p.now, 1, &mut p.buf) {
                assert_eq!(t.segment_size, None, "one datagram asked, one given");
                let d = p.buf[..t.size].to_vec();
                p.edge.handle_datagram(p.now, p.conn_addr, &d);
                moved = true;
            }
            while let Some(t) = p.edge.poll_transmit(p.now, 1, &mut p.buf) {
                assert_eq!(t.datagram_count(), 1);
                let d = p.buf[..t.size].to_vec();
                p.conn.handle_datagram(p.now, p.edge_addr, &d);
                moved = true;
            }
            while let Some(e) = p.edge.poll_event() {
                moved = true;
                if let EdgeEvent::RegisterRequested { conn, .. } = e {
                    let details = ConnectionDetails {
                        uuid: Uuid::from_u128(3),
                        location: "TST".into(),
                        remotely_managed: false,
                    };
                    p.edge
                        .respond_registration(p.now, conn, Ok(details))
                        .unwrap();
                }
            }
            while let Some(e) = p.conn.poll_event() {
                moved = true;
                p.conn_events.push(e);
            }
            if !moved {
                break;
            }
        }
        p.tick();
    }
}
