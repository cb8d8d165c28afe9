//! The HTTP/2 edge against a connector's HTTP/2 machine and RPC client, bytes shuttled
//! between them in memory.

use std::time::Duration;

use http::{HeaderMap, StatusCode};
use uuid::Uuid;

use super::*;
use crate::control::connector::ControlClient;
use crate::control::Registration;
use crate::http2::{ConnectorConnection, IncomingRequest};
use crate::stream::connect::ConnectionType;

const CONN: ConnId = ConnId(1);

/// One connector connection to an [`Http2Edge`] that answers registrations.
struct Link {
    now: Instant,
    edge: Http2Edge,
    c: ConnectorConnection,
    control: ControlClient,
    control_stream: Option<StreamId>,
    /// Request streams the connector was given.
    requests: Vec<IncomingRequest>,
    edge_events: Vec<EdgeEvent<StreamId>>,
}

impl Link {
    fn new() -> Self {
        let now = Instant::now();
        let (server, client, _, _) = crate::http2::tests::tls_configs();
        let mut edge = Http2Edge::new(server, Limits::default());
        edge.accept(now, CONN).expect("accept");
        let c = ConnectorConnection::new(
            now,
            client,
            crate::http2::tls::SERVER_NAME,
            Limits::default(),
        )
        .expect("connector");
        let registration = Registration::new(
            "account",
            vec![7; 32],
            Uuid::from_u128(1),
            Uuid::from_u128(2),
            Vec::new(),
        );
        let control = ControlClient::new(now, &registration, None, Duration::from_secs(5))
            .expect("control client");
        let mut link = Link {
            now,
            edge,
            c,
            control,
            control_stream: None,
            requests: Vec::new(),
            edge_events: Vec::new(),
        };
        link.run();
        assert!(
            link.edge_events
                .iter()
                .any(|e| matches!(e, EdgeEvent::RegisterRequested { conn, .. } if *conn == CONN)),
            "{:?}",
            link.edge_events
        );
        link
    }

    /// Moves bytes and events both ways until nothing moves.
    fn run(&mut self) {
        let mut buf = vec![0u8; 64 * 1024];
        for _ in 0..10_000 {
            let mut moved = false;
            let mut wire = Vec::new();
            loop {
                match self.c.poll_output(self.now) {
                    Output::Event(e) => {
                        moved = true;
                        self.on_connector_event(e);
                    }
                    Output::Transmit => {
                        let n = self.c.transmit(&mut buf);
                        wire.extend_from_slice(&buf[..n]);
                    }
                    Output::Timeout(_) => break,
                }
            }
            let rpc = (self.control_stream)
                .and_then(|stream| Some((stream, self.control.poll_transmit()?)));
            if let Some((stream, rpc)) = rpc {
                let len = rpc.len();
                assert_eq!(self.c.send_data(stream, Bytes::from(rpc)), Ok(len));
                moved = true;
            }
            if !wire.is_empty() {
                moved = true;
                let taken = self.edge.handle_received(self.now, CONN, &wire);
                assert_eq!(taken, wire.len());
            }
            while self.edge.wants_transmit(CONN) {
                let n = self.edge.transmit(self.now, CONN, &mut buf);
                moved = true;
                let taken = self.c.handle_input(self.now, Input::Received(&buf[..n]));
                assert_eq!(taken, n);
            }
            while let Some(e) = self.edge.poll_event() {
                moved = true;
                if let EdgeEvent::RegisterRequested { conn, .. } = &e {
                    let details = ConnectionDetails {
                        uuid: Uuid::from_u128(3),
                        location: "LIS".into(),
                        remotely_managed: false,
                    };
                    self.edge
                        .respond_registration(self.now, *conn, Ok(details))
                        .expect("answer");
                }
                self.edge_events.push(e);
            }
            if !moved {
                return;
            }
        }
        panic!("the link never went quiet");
    }

    fn on_connector_event(&mut self, event: Event) {
        match event {
            Event::Request(r) if r.kind == RequestKind::ControlStream => {
                self.c.respond_implicit(r.stream).expect("control head");
                self.control_stream = Some(r.stream);
            }
            Event::Request(r) => self.requests.push(r),
            Event::Stream(StreamEvent::Readable(s)) if Some(s) == self.control_stream => {
                while let Ok(Read::Data(data)) = self.c.read(s) {
                    self.control
                        .handle_bytes(self.now, &data)
                        .expect("edge RPC");
                }
            }
            _ => {}
        }
    }
}

#[test]
fn a_goaway_from_the_connector_unregisters_the_connection_and_it_takes_no_more_requests() {
    let mut l = Link::new();
    let request = ConnectRequest {
        dest: "http://origin.test/",
        connection_type: ConnectionType::Http,
        metadata: &[],
    };
    let in_flight = l
        .edge
        .open_request(l.now, CONN, &request)
        .expect("a registered connection takes requests");
    l.edge
        .finish_request(l.now, CONN, in_flight)
        .expect("finish");
    l.run();
    assert_eq!(l.requests.len(), 1);

    // The connector drains (cloudflared's graceful shutdown): GOAWAY.
    l.c.shutdown();
    l.run();
    let unregistered = |l: &Link| {
        l.edge_events
            .iter()
            .filter(|e| matches!(e, EdgeEvent::Unregistered { conn } if *conn == CONN))
            .count()
    };
    assert_eq!(unregistered(&l), 1, "{:?}", l.edge_events);
    assert_eq!(
        l.edge.open_request(l.now, CONN, &request),
        Err(ApiError::NotRegistered("a request"))
    );
    l.run();
    assert_eq!(l.requests.len(), 1, "no new stream reached the connector");

    // What was in flight is still answered.
    let r = l.requests.remove(0);
    l.c.respond(r.stream, StatusCode::OK, &HeaderMap::new())
        .expect("respond");
    l.c.send_data(r.stream, Bytes::from_static(b"drained"))
        .expect("body");
    l.c.finish(r.stream, None).expect("finish");
    l.run();
    assert!(
        l.edge_events.iter().any(|e| matches!(e,
            EdgeEvent::Response { conn, stream, error, .. }
                if *conn == CONN && *stream == in_flight && error.is_empty())),
        "{:?}",
        l.edge_events
    );
    let mut body = Vec::<u8>::new();
    assert_eq!(
        l.edge
            .read_response(l.now, CONN, in_flight, 1024, &mut body),
        Ok(true)
    );
    assert_eq!(body, b"drained");
    assert_eq!(unregistered(&l), 1, "reported once");
}
