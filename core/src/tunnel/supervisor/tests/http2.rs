//! The connector over HTTP/2, against the in-process HTTP/2 edge machine and its control
//! server, on virtual time: registration, requests through origin flows, configuration pushes,
//! shutdown; and `auto` falling back from QUIC when its handshakes time out.

use std::collections::VecDeque;

use http::{Request, StatusCode};

use super::*;
use crate::control::edge::{ControlServer, EdgeControlEvent};
use crate::http2::{
    self, EdgeConnection, Event as H2Event, Input as H2Input, Output as H2Output, Read,
    RequestKind, StreamId,
};
use crate::stream::proxy::FlowKind;
use crate::tunnel::protocol::{Protocol, ProtocolFlag};

/// What the connector asked of the driver that the test answers later.
#[derive(Debug)]
enum Asked {
    OpenFlow(LinkId, FlowId, FlowKind, String),
    WriteFlow(FlowId, Vec<u8>),
}

struct H2World {
    now: Instant,
    connector: Connector,
    timeout: Option<Instant>,
    server_tls: Arc<rustls::ServerConfig>,
    /// The link the edge serves, its machine and the bytes each way.
    edge: Option<(LinkId, EdgeConnection)>,
    to_edge: Vec<u8>,
    to_connector: Vec<u8>,
    edge_events: VecDeque<H2Event>,
    control: ControlServer,
    control_stream: Option<StreamId>,
    dials: Vec<(LinkId, SocketAddr)>,
    asked: VecDeque<Asked>,
    events: Vec<SupervisorEvent>,
    closed_tcp: Vec<LinkId>,
    /// TXT lookups asked for.
    lookups: Vec<&'static str>,
    /// The deadline each lookup was given.
    lookup_timeouts: Vec<Duration>,
    /// The features of each registration the edge received.
    registered_features: Vec<Vec<String>>,
    /// Hold the edge's bytes back from the connector once it answers a registration...
    hold_after_register: bool,
    /// ...which it now does.
    held: bool,
}

impl H2World {
    /// The driver's answer to core's percentage TXT lookup (`None`: the lookup failed).
    fn answer_percentages(&mut self, text: Option<&str>) {
        self.connector.handle_input(
            self.now,
            Input::TxtRecord {
                name: PERCENTAGE_RECORD,
                text,
            },
        );
    }

    fn new(protocol: ProtocolFlag) -> Self {
        Self::with(protocol, |_| {})
    }

    fn with(protocol: ProtocolFlag, tune: impl FnOnce(&mut SupervisorConfig)) -> Self {
        let now = Instant::now();
        let (server_tls, client_tls, _, _) = http2::tests::tls_configs();
        let (_, quic_client) = tls_pair();
        let mut config = SupervisorConfig::new(connector_config(quic_client));
        config.ha_connections = 1;
        config.protocol = protocol;
        config.http2_tls = Some(client_tls);
        tune(&mut config);
        let pool = EdgePool::from_static(&[EDGE.parse().expect("addr")]).expect("pool");
        let mut connector = Connector::new(now, config, pool, 7);
        // Connection 0 starts now.
        connector.handle_input(now, Input::Timeout);
        Self {
            now,
            connector,
            timeout: None,
            server_tls,
            edge: None,
            to_edge: Vec::new(),
            to_connector: Vec::new(),
            edge_events: VecDeque::new(),
            control: ControlServer::new(),
            control_stream: None,
            dials: Vec::new(),
            asked: VecDeque::new(),
            events: Vec::new(),
            closed_tcp: Vec::new(),
            lookups: Vec::new(),
            lookup_timeouts: Vec::new(),
            registered_features: Vec::new(),
            hold_after_register: false,
            held: false,
        }
    }

    /// Drains the connector's output as a driver would; TCP writes complete at once.
    fn flush(&mut self) {
        loop {
            let mut written = None;
            match self.connector.poll_output(self.now) {
                Output::Timeout(t) => {
                    self.timeout = t;
                    return;
                }
                Output::Transmit { .. } => {} // UDP to nowhere: the QUIC edge is unreachable.
                Output::Event(e) => self.events.push(e),
                Output::Io(io) => match io {
                    Io::DialEdge { link, edge, .. } => self.dials.push((link, edge)),
                    Io::WriteEdge { link, data } => {
                        if self.edge.as_ref().is_some_and(|(l, _)| *l == link) {
                            self.to_edge.extend_from_slice(data);
                        }
                        written = Some(link);
                    }
                    Io::CloseEdge { link } => self.closed_tcp.push(link),
                    Io::LookupTxt { name, timeout } => {
                        self.lookups.push(name);
                        self.lookup_timeouts.push(timeout);
                    }
                    Io::OpenFlow {
                        link,
                        flow,
                        kind,
                        dest,
                        ..
                    } => self
                        .asked
                        .push_back(Asked::OpenFlow(link, flow, kind, dest)),
                    Io::WriteFlow { flow, data, .. } => {
                        self.asked.push_back(Asked::WriteFlow(flow, data.to_vec()))
                    }
                    _ => {}
                },
            }
            if let Some(link) = written {
                self.connector
                    .handle_input(self.now, Input::EdgeWritten { link });
            }
        }
    }

    /// Accepts the pending TCP dial with the in-process edge.
    fn accept_dial(&mut self) -> LinkId {
        self.flush();
        let (link, edge) = self.dials.pop().expect("a dial");
        assert_eq!(edge, EDGE.parse().unwrap());
        let machine =
            EdgeConnection::new(self.now, self.server_tls.clone(), http2::Limits::default())
                .expect("edge");
        self.edge = Some((link, machine));
        self.control = ControlServer::new();
        self.control_stream = None;
        let local = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 9));
        self.connector
            .handle_input(self.now, Input::EdgeConnected { link, local });
        link
    }

    /// Moves bytes both ways, serving the control stream, until nothing moves.
    fn run(&mut self) {
        for _ in 0..10_000 {
            self.flush();
            let Some((link, edge)) = &mut self.edge else {
                return;
            };
            let link = *link;
            let mut moved = false;
            if !self.to_edge.is_empty() {
                let n = edge.handle_input(self.now, H2Input::Received(&self.to_edge));
                self.to_edge.drain(..n);
                moved |= n > 0;
            }
            let mut buf = [0u8; 16 * 1024];
            loop {
                match edge.poll_output(self.now) {
                    H2Output::Event(H2Event::Connected) => {
                        self.control_stream = Some(edge.open_control_stream().expect("control"));
                    }
                    H2Output::Event(e) => self.edge_events.push_back(e),
                    H2Output::Transmit => {
                        let n = edge.transmit(&mut buf);
                        self.to_connector.extend_from_slice(&buf[..n]);
                    }
                    H2Output::Timeout(_) => break,
                }
                moved = true;
            }
            if let Some(cs) = self.control_stream {
                while let Ok(Read::Data(bytes)) = edge.read(cs) {
                    self.control.handle_bytes(&bytes).expect("control bytes");
                    moved = true;
                }
                while let Some(ev) = self.control.poll_event() {
                    if let EdgeControlEvent::RegisterRequested(r) = ev {
                        self.registered_features.push(r.features.clone());
                        assert_eq!(
                            r.origin_local_ip,
                            Some(IpAddr::V4(Ipv4Addr::new(127, 0, 0, 9)))
                        );
                        let details = ConnectionDetails {
                            uuid: Uuid::from_u128(9),
                            location: "LIS".into(),
                            remotely_managed: true,
                        };
                        self.control
                            .respond_registration(Ok(details))
                            .expect("respond");
                        self.held |= self.hold_after_register;
                    }
                }
                if let Some(out) = self.control.poll_transmit() {
                    edge.send_data(cs, Bytes::from(out)).expect("control write");
                    moved = true;
                }
            }
            if !self.to_connector.is_empty() && !self.held {
                let data = std::mem::take(&mut self.to_connector);
                self.connector
                    .handle_input(self.now, Input::EdgeReceived { link, data: &data });
                moved = true;
            }
            if !moved {
                return;
            }
        }
        panic!("never went quiet");
    }

    fn edge(&mut self) -> &mut EdgeConnection {
        &mut self.edge.as_mut().expect("edge").1
    }

    fn registered(&self) -> Option<Protocol> {
        self.events.iter().rev().find_map(|e| match e {
            SupervisorEvent::Registered { protocol, .. } => Some(*protocol),
            _ => None,
        })
    }

    /// Reads the response head and whole body of `stream` at the edge.
    fn response(&mut self, stream: StreamId) -> (http2::ConnectorResponse, Vec<u8>) {
        let mut head = None;
        let mut body = Vec::new();
        for _ in 0..100 {
            self.run();
            while let Some(ev) = self.edge_events.pop_front() {
                // Other streams' heads (the control stream's) do not matter here.
                if let H2Event::Response {
                    stream: s,
                    response,
                } = ev
                {
                    if s == stream {
                        head = Some(response.expect("head"));
                    }
                }
            }
            if let Some(h) = &head {
                let h = h.clone();
                loop {
                    match self.edge().read(stream) {
                        Ok(Read::Data(b)) => body.extend_from_slice(&b),
                        Ok(Read::Finished) => return (h, body),
                        Ok(Read::Blocked) | Err(_) => break,
                    }
                }
            }
        }
        panic!("no complete response on {stream}");
    }
}

#[test]
fn http2_connection_registers_and_proxies_a_request() {
    let mut w = H2World::new(ProtocolFlag::Fixed(Protocol::Http2));
    let link = w.accept_dial();
    w.run();
    assert_eq!(w.registered(), Some(Protocol::Http2));
    assert_eq!(w.connector.ready_connections(), 1);

    let req = Request::get("https://app.example/path?q=1")
        .header("accept", "text/plain")
        .body(())
        .unwrap();
    let stream = w.edge().open(RequestKind::Http, req, true).expect("open");
    w.run();
    let (flow, dest) = match w.asked.pop_front() {
        Some(Asked::OpenFlow(l, flow, FlowKind::Http, dest)) if l == link => (flow, dest),
        other => panic!("expected an HTTP flow, got {other:?}"),
    };
    assert_eq!(dest, "https://app.example/path?q=1");
    w.connector
        .handle_input(w.now, Input::FlowConnected { link, flow });
    w.run();
    let request = match w.asked.pop_front() {
        Some(Asked::WriteFlow(f, data)) if f == flow => String::from_utf8(data).unwrap(),
        other => panic!("expected the request head, got {other:?}"),
    };
    assert!(
        request.starts_with("GET /path?q=1 HTTP/1.1\r\n"),
        "{request}"
    );
    assert!(request.contains("Host: app.example\r\n"), "{request}");
    assert!(request.contains("Accept: text/plain\r\n"), "{request}");
    w.connector
        .handle_input(w.now, Input::FlowWritten { link, flow });
    let origin = Bytes::from_static(
        b"HTTP/1.1 201 Created\r\nContent-Type: text/plain\r\nContent-Length: 5\r\n\r\nhello",
    );
    w.connector.handle_input(
        w.now,
        Input::FlowData {
            link,
            flow,
            data: origin,
        },
    );
    let (head, body) = w.response(stream);
    assert_eq!(head.status, StatusCode::CREATED);
    assert_eq!(head.meta, Some(http2::ResponseMeta::Origin));
    assert_eq!(head.headers.get("content-type").unwrap(), "text/plain");
    assert_eq!(head.transport_headers.get("content-length").unwrap(), "5");
    assert_eq!(body, b"hello");
}

/// The edge routes a request to a connection as soon as it has answered its registration, so
/// the request's HEADERS may come in the same read as the answer: the request is served, not
/// refused as one that came before registration.
#[test]
fn a_request_read_with_the_registration_answer_is_served() {
    let mut w = H2World::new(ProtocolFlag::Fixed(Protocol::Http2));
    w.hold_after_register = true;
    let link = w.accept_dial();
    w.run();
    assert!(w.held && w.registered().is_none());
    let req = Request::get("http://app.example/").body(()).unwrap();
    w.edge().open(RequestKind::Http, req, true).expect("open");
    w.run();
    w.held = false;
    w.run();
    assert_eq!(w.registered(), Some(Protocol::Http2));
    match w.asked.pop_front() {
        Some(Asked::OpenFlow(l, _, FlowKind::Http, dest)) if l == link => {
            assert_eq!(dest, "http://app.example/")
        }
        other => panic!("expected an HTTP flow, got {other:?}"),
    }
}

/// The connector gives up on its registration (the edge's answer is late) and closes while
/// the edge, which did register it, routes a request to it: the request crosses the GOAWAY and
/// is served, as cloudflared's `ServeHTTP` serves every stream its server accepted, instead of
/// failing with a 502.
#[test]
fn a_request_that_crosses_a_failed_registration_is_served() {
    let mut w = H2World::new(ProtocolFlag::Fixed(Protocol::Http2));
    w.hold_after_register = true;
    let link = w.accept_dial();
    w.run();
    assert!(w.held && w.registered().is_none());
    let req = Request::get("http://app.example/").body(()).unwrap();
    let stream = w.edge().open(RequestKind::Http, req, true).expect("open");
    w.run();
    // The registration call times out before its answer and the request get through.
    w.now += Duration::from_secs(6);
    w.connector.handle_input(w.now, Input::Timeout);
    w.run();
    assert!(
        w.events
            .iter()
            .any(|e| matches!(e, SupervisorEvent::RegistrationFailed { .. })),
        "{:?}",
        w.events
    );
    w.held = false;
    w.run();
    let flow = match w.asked.pop_front() {
        Some(Asked::OpenFlow(l, flow, FlowKind::Http, dest)) if l == link => {
            assert_eq!(dest, "http://app.example/");
            flow
        }
        other => panic!("expected an HTTP flow, got {other:?}"),
    };
    w.connector
        .handle_input(w.now, Input::FlowConnected { link, flow });
    w.run();
    w.connector
        .handle_input(w.now, Input::FlowWritten { link, flow });
    let origin = Bytes::from_static(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok");
    w.connector.handle_input(
        w.now,
        Input::FlowData {
            link,
            flow,
            data: origin,
        },
    );
    let (head, body) = w.response(stream);
    assert_eq!(head.status, StatusCode::OK);
    assert_eq!(body, b"ok");
}

#[test]
fn http2_origin_failure_is_a_502_from_cloudflared() {
    let mut w = H2World::new(ProtocolFlag::Fixed(Protocol::Http2));
    let link = w.accept_dial();
    w.run();
    let req = Request::get("http://app.example/").body(()).unwrap();
    let stream = w.edge().open(RequestKind::Http, req, true).expect("open");
    w.run();
    let Some(Asked::OpenFlow(_, flow, ..)) = w.asked.pop_front() else {
        panic!("no flow");
    };
    w.connector.handle_input(
        w.now,
        Input::FlowFailed {
            link,
            flow,
            reason: "connection refused",
        },
    );
    let (head, body) = w.response(stream);
    assert_eq!(head.status, StatusCode::BAD_GATEWAY);
    assert_eq!(head.meta, Some(http2::ResponseMeta::Cloudflared));
    assert!(body.is_empty());
}

#[test]
fn http2_tcp_stream_half_closes_both_ways() {
    let mut w = H2World::new(ProtocolFlag::Fixed(Protocol::Http2));
    let link = w.accept_dial();
    w.run();
    let req = Request::get("http://10.0.0.1:22/").body(()).unwrap();
    let stream = w.edge().open(RequestKind::Tcp, req, false).expect("open");
    w.run();
    let flow = match w.asked.pop_front() {
        Some(Asked::OpenFlow(_, flow, FlowKind::Tcp, dest)) => {
            assert_eq!(dest, "10.0.0.1:22");
            flow
        }
        other => panic!("expected a TCP flow, got {other:?}"),
    };
    w.connector
        .handle_input(w.now, Input::FlowConnected { link, flow });
    w.run();
    let head = loop {
        match w.edge_events.pop_front() {
            Some(H2Event::Response { response, .. }) => break response.expect("head"),
            Some(_) => continue,
            None => panic!("no TCP accept"),
        }
    };
    assert_eq!(head.status, StatusCode::OK);
    // Edge → origin, then the edge's half-close reaches the origin as a write shutdown.
    w.edge()
        .send_data(stream, Bytes::from_static(b"ping"))
        .expect("send");
    w.edge().finish(stream, None).expect("finish");
    w.run();
    match w.asked.pop_front() {
        Some(Asked::WriteFlow(f, data)) if f == flow => assert_eq!(data, b"ping"),
        other => panic!("expected the bytes, got {other:?}"),
    }
    w.connector
        .handle_input(w.now, Input::FlowWritten { link, flow });
    w.run();
    // Origin → edge still flows, then the origin's FIN ends the stream.
    w.connector.handle_input(
        w.now,
        Input::FlowData {
            link,
            flow,
            data: Bytes::from_static(b"pong"),
        },
    );
    w.connector
        .handle_input(w.now, Input::FlowFinished { link, flow });
    w.run();
    let mut got = Vec::new();
    let mut fin = false;
    while let Ok(r) = w.edge().read(stream) {
        match r {
            Read::Data(b) => got.extend_from_slice(&b),
            Read::Finished => {
                fin = true;
                break;
            }
            Read::Blocked => break,
        }
    }
    assert_eq!((got.as_slice(), fin), (&b"pong"[..], true));
}

#[test]
fn http2_configuration_push_is_applied_and_answered() {
    let mut w = H2World::new(ProtocolFlag::Fixed(Protocol::Http2));
    w.accept_dial();
    w.run();
    let req = Request::put("http://localhost:8080/config")
        .body(())
        .unwrap();
    let stream = w
        .edge()
        .open(RequestKind::Configuration, req, false)
        .expect("open");
    let body = br#"{"version": 4, "config": {"ingress": [{"service": "http_status:404"}]}}"#;
    w.edge()
        .send_data(stream, Bytes::from_static(body))
        .expect("send");
    w.edge().finish(stream, None).expect("finish");
    let (head, answer) = w.response(stream);
    assert_eq!((head.status, head.meta), (StatusCode::OK, None));
    assert_eq!(answer, br#"{"lastAppliedVersion":4,"err":null}"#);
    assert!(w
        .events
        .contains(&SupervisorEvent::ConfigurationApplied { version: 4 }));
}

#[test]
fn http2_shutdown_unregisters_and_stops() {
    let mut w = H2World::new(ProtocolFlag::Fixed(Protocol::Http2));
    w.accept_dial();
    w.run();
    w.connector.handle_input(w.now, Input::Shutdown);
    for _ in 0..50 {
        w.run();
        if w.connector.is_stopped() {
            break;
        }
        // Virtual time: jump to the next deadline (the grace period bounds the drain).
        if let Some(t) = w.timeout {
            assert!(
                t > w.now || w.connector.is_stopped(),
                "timeout does not move"
            );
            w.now = t;
            w.connector.handle_input(w.now, Input::Timeout);
        }
    }
    assert!(w.connector.is_stopped());
    assert!(w.events.contains(&SupervisorEvent::Stopped));
}

#[test]
fn auto_falls_back_to_http2_when_quic_handshakes_time_out() {
    let mut w = H2World::new(ProtocolFlag::Auto);
    let start = w.now;
    // UDP goes nowhere: every QUIC handshake times out; time jumps from deadline to deadline.
    for _ in 0..1000 {
        w.flush();
        if !w.dials.is_empty() {
            break;
        }
        let t = w.timeout.expect("a deadline while connecting");
        assert!(t > w.now, "timeout does not move forward");
        w.now = t;
        w.connector.handle_input(w.now, Input::Timeout);
    }
    assert!(!w.dials.is_empty(), "never fell back");
    let waited = w.now - start;
    assert!(
        waited <= Duration::from_secs(30),
        "fell back after {waited:?}"
    );
    assert!(w.events.contains(&SupervisorEvent::ProtocolChanged {
        index: 0,
        protocol: Protocol::Http2
    }));
    w.accept_dial();
    w.run();
    assert_eq!(w.registered(), Some(Protocol::Http2));
}

impl H2World {
    /// Jumps virtual time from deadline to deadline until `done`, at most `limit` ahead.
    fn advance_until(&mut self, limit: Duration, mut done: impl FnMut(&Self) -> bool) {
        let end = self.now + limit;
        loop {
            self.run();
            if done(self) {
                return;
            }
            let t = self.timeout.expect("a deadline");
            assert!(t > self.now, "timeout does not move forward");
            assert!(t <= end, "not within {limit:?}: {:?}", self.changes());
            self.now = t;
            self.connector.handle_input(self.now, Input::Timeout);
        }
    }

    fn changes(&self) -> Vec<Protocol> {
        self.events
            .iter()
            .filter_map(|e| match e {
                SupervisorEvent::ProtocolChanged { protocol, .. } => Some(*protocol),
                _ => None,
            })
            .collect()
    }
}

#[test]
fn auto_tries_quic_again_and_falls_back_with_a_longer_wait() {
    let mut w = H2World::new(ProtocolFlag::Auto);
    w.advance_until(Duration::from_secs(30), |w| !w.dials.is_empty());
    w.accept_dial();
    w.run();
    assert_eq!(w.registered(), Some(Protocol::Http2));
    let fell_back = w.now;

    // A minute on, the HTTP/2 connection drains and index 0 tries QUIC (UDP still goes
    // nowhere here), then falls back again.
    w.advance_until(Duration::from_secs(120), |w| w.changes().len() >= 3);
    assert_eq!(
        w.changes(),
        [Protocol::Http2, Protocol::Quic, Protocol::Http2]
    );
    let tried = w.now;
    assert!(
        tried - fell_back >= Duration::from_secs(60),
        "{:?}",
        tried - fell_back
    );
    assert!(w.events.iter().any(|e| matches!(
        e,
        SupervisorEvent::Connecting {
            protocol: Protocol::Quic,
            ..
        }
    )));
    // Back on HTTP/2; the next try waits twice as long from the second fallback.
    w.advance_until(Duration::from_secs(30), |w| !w.dials.is_empty());
    w.accept_dial();
    w.run();
    w.advance_until(Duration::from_secs(300), |w| w.changes().len() >= 4);
    assert!(
        w.now - tried >= Duration::from_secs(120),
        "{:?}",
        w.now - tried
    );
}

#[test]
fn auto_waits_for_quic_again_without_spinning_while_http2_has_not_registered() {
    let mut w = H2World::new(ProtocolFlag::Auto);
    w.advance_until(Duration::from_secs(30), |w| !w.dials.is_empty());
    let fell_back = w.now;
    // The HTTP/2 dials are never answered: index 0 is still unregistered when the QUIC retry
    // is due (a minute after the fallback), and every deadline must still move time on.
    while w.now - fell_back < Duration::from_secs(300) {
        w.run();
        let t = w.timeout.expect("a deadline");
        assert!(
            t > w.now,
            "timeout stuck {:?} after the fallback",
            w.now - fell_back
        );
        w.now = t;
        w.connector.handle_input(w.now, Input::Timeout);
    }
}

/// The transports new connections were started on, in order.
fn connecting(w: &H2World) -> Vec<Protocol> {
    w.events
        .iter()
        .filter_map(|e| match e {
            SupervisorEvent::Connecting { protocol, .. } => Some(*protocol),
            _ => None,
        })
        .collect()
}

/// A percentage record giving `quic` and `http2` these shares.
fn percentages(quic: u8, http2: u8) -> String {
    format!(
        r#"[{{"protocol":"quic","percentage":{quic}}},{{"protocol":"http2","percentage":{http2}}}]"#
    )
}

#[test]
fn auto_reads_the_percentage_record_again_every_hour_and_new_connections_follow_it() {
    use crate::tunnel::protocol::{PERCENTAGE_RECORD, RESOLVE_TTL};
    // The record said HTTP/2 at start.
    let mut w = H2World::with(ProtocolFlag::Auto, |c| {
        c.auto_initial = Protocol::Http2;
        c.remote_selector = Some("account".into());
    });
    let start = w.now;
    let link = w.accept_dial();
    w.run();
    assert_eq!(w.registered(), Some(Protocol::Http2));

    // Nothing is asked before the record's hour is up, then the record once.
    w.advance_until(RESOLVE_TTL * 2, |w| !w.lookups.is_empty());
    assert_eq!(w.lookups, [PERCENTAGE_RECORD]);
    assert!(
        w.now - start >= RESOLVE_TTL,
        "asked after {:?}",
        w.now - start
    );
    let asked = w.now;
    // It says QUIC now: the serving connection stays, the next one is QUIC.
    let record = percentages(100, 0);
    w.answer_percentages(Some(&record));
    w.run();
    assert!(w.events.contains(&SupervisorEvent::ProtocolSelected {
        protocol: Protocol::Quic
    }));
    assert!(
        w.closed_tcp.is_empty(),
        "a serving connection is not dropped"
    );
    assert_eq!(connecting(&w), [Protocol::Http2]);
    w.connector
        .handle_input(w.now, Input::EdgeReceived { link, data: &[] });
    w.advance_until(Duration::from_secs(30), |w| connecting(w).len() >= 2);
    assert_eq!(connecting(&w), [Protocol::Http2, Protocol::Quic]);

    // A failed lookup keeps the protocol; the record is asked again an hour after each answer.
    w.advance_until(RESOLVE_TTL * 2, |w| w.lookups.len() >= 2);
    assert!(w.now - asked >= RESOLVE_TTL);
    let failed = w.now;
    let selected = |w: &H2World| {
        w.events
            .iter()
            .filter(|e| matches!(e, SupervisorEvent::ProtocolSelected { .. }))
            .count()
    };
    w.answer_percentages(None);
    let garbled = "not json";
    w.advance_until(RESOLVE_TTL * 2, |w| w.lookups.len() >= 3);
    assert!(w.now - failed >= RESOLVE_TTL);
    w.answer_percentages(Some(garbled));
    w.run();
    assert_eq!(
        selected(&w),
        1,
        "neither a failed nor an unreadable record changes it"
    );

    // Back to HTTP/2 by the record: QUIC is not tried again while it says so, even by an
    // index that fell back.
    w.advance_until(RESOLVE_TTL * 2, |w| w.lookups.len() >= 4);
    let record = percentages(0, 100);
    w.answer_percentages(Some(&record));
    w.run();
    assert_eq!(selected(&w), 2);
    let before = connecting(&w).len();
    w.dials.clear();
    w.advance_until(Duration::from_secs(600), |w| !w.dials.is_empty());
    w.accept_dial();
    w.run();
    assert_eq!(w.registered(), Some(Protocol::Http2));
    let end = w.now + Duration::from_secs(600);
    while w.now < end {
        w.run();
        let Some(t) = w.timeout else { break };
        w.now = t.min(end);
        w.connector.handle_input(w.now, Input::Timeout);
    }
    assert!(
        connecting(&w)[before..]
            .iter()
            .all(|p| *p == Protocol::Http2),
        "{:?}",
        connecting(&w)
    );
}

/// The lookup's deadline is core's: the driver is told it, and core stops waiting at it. A
/// lookup that never answers counts as failed at the deadline (the protocol stays, the record
/// is read again an hour later), and an answer after it changes nothing.
#[test]
fn a_percentage_lookup_that_never_answers_fails_at_cores_deadline() {
    use crate::tunnel::protocol::{PERCENTAGE_RECORD, RESOLVE_TTL, TXT_LOOKUP_TIMEOUT};
    let mut w = H2World::with(ProtocolFlag::Auto, |c| {
        c.auto_initial = Protocol::Http2;
        c.remote_selector = Some("account".into());
    });
    w.accept_dial();
    w.run();
    w.advance_until(RESOLVE_TTL * 2, |w| !w.lookups.is_empty());
    assert_eq!(w.lookup_timeouts, [TXT_LOOKUP_TIMEOUT]);
    let asked = w.now;
    let failed = |w: &H2World| {
        w.events
            .iter()
            .filter(|e| matches!(e, SupervisorEvent::ProtocolRefreshFailed { .. }))
            .count()
    };
    // No answer: nothing fails before the deadline, the reading fails at it.
    w.advance_until(TXT_LOOKUP_TIMEOUT * 2, |w| failed(w) > 0);
    assert_eq!(w.now - asked, TXT_LOOKUP_TIMEOUT);
    assert!(w.events.contains(&SupervisorEvent::ProtocolRefreshFailed {
        reason: RefreshFailure::TimedOut(TXT_LOOKUP_TIMEOUT)
    }));
    // The late answer is ignored: still HTTP/2, no second failure.
    let record = percentages(100, 0);
    w.answer_percentages(Some(&record));
    w.run();
    assert!(!w
        .events
        .iter()
        .any(|e| matches!(e, SupervisorEvent::ProtocolSelected { .. })));
    assert_eq!(failed(&w), 1);
    // Read again an hour after giving up.
    let gave_up = w.now;
    w.advance_until(RESOLVE_TTL * 2, |w| w.lookups.len() >= 2);
    assert_eq!(w.lookups, [PERCENTAGE_RECORD, PERCENTAGE_RECORD]);
    assert!(w.now - gave_up >= RESOLVE_TTL);
}

#[test]
fn a_fixed_protocol_never_reads_the_percentage_record() {
    let mut w = H2World::with(ProtocolFlag::Fixed(Protocol::Http2), |c| {
        c.remote_selector = Some("account".into());
    });
    w.accept_dial();
    w.run();
    let end = w.now + crate::tunnel::protocol::RESOLVE_TTL * 3;
    while w.now < end {
        w.run();
        let Some(t) = w.timeout else { break };
        w.now = t.min(end);
        w.connector.handle_input(w.now, Input::Timeout);
    }
    assert!(w.lookups.is_empty());
}

/// A registration still unanswered when the HTTP/2 connection breaks counts as a failed
/// `register_connection` call, as cloudflared's RPC client counts a call the connection's end
/// fails (`tunnelrpc/registration_client.go`), once.
#[test]
fn a_registration_outstanding_when_the_tcp_connection_fails_counts_as_a_failed_call() {
    let mut w = H2World::new(ProtocolFlag::Fixed(Protocol::Http2));
    w.hold_after_register = true;
    let link = w.accept_dial();
    w.run();
    assert!(w.held && w.registered().is_none());
    w.now += Duration::from_secs(2);
    w.connector.handle_input(
        w.now,
        Input::EdgeFailed {
            link,
            reason: "connection reset by peer",
        },
    );
    w.run();
    let calls: Vec<_> = w
        .events
        .iter()
        .filter_map(|e| match e {
            SupervisorEvent::RpcCalled { call, .. } => Some(*call),
            _ => None,
        })
        .collect();
    assert_eq!(calls.len(), 1, "{:?}", w.events);
    assert_eq!(
        calls[0].method,
        crate::control::connector::RpcMethod::RegisterConnection
    );
    assert!(calls[0].failed);
    assert!(
        calls[0].latency >= Duration::from_secs(2) && calls[0].latency < Duration::from_secs(3),
        "{:?}",
        calls[0]
    );
}

/// A connector whose `--features` leave the datagram version to the feature record, for
/// account "a" (FNV-1a 32 0xe40c292c: threshold 20).
fn feature_world() -> H2World {
    use crate::control::features::features;
    H2World::with(ProtocolFlag::Fixed(Protocol::Http2), |c| {
        c.connector.registration.account_tag = "a".into();
        c.connector.registration.features = features(false, false, &[], DatagramVersion::V2);
        c.features_selector = Some("a".into());
    })
}

impl H2World {
    /// The driver's answer to core's feature-record lookup (`None`: the lookup failed).
    fn answer_features(&mut self, text: Option<&str>) {
        use crate::control::features::FEATURES_RECORD;
        self.connector.handle_input(
            self.now,
            Input::TxtRecord {
                name: FEATURES_RECORD,
                text,
            },
        );
    }

    /// The datagram version of each registration the edge received.
    fn registered_versions(&self) -> Vec<DatagramVersion> {
        self.registered_features
            .iter()
            .map(|f| DatagramVersion::from_features(f))
            .collect()
    }

    /// Lets connection 0 dial and register.
    fn register(&mut self) {
        self.accept_dial();
        self.run();
        assert!(self.registered().is_some(), "{:?}", self.changes());
    }

    fn features_failures(&self) -> Vec<(RefreshFailure, bool, bool)> {
        self.events
            .iter()
            .filter_map(|e| match e {
                SupervisorEvent::FeaturesRefreshFailed {
                    reason,
                    error,
                    first,
                } => Some((*reason, error.is_some(), *first)),
                _ => None,
            })
            .collect()
    }
}

/// As cloudflared's `NewFeatureSelector`, the feature record is read before connection 0 dials,
/// once, with core's deadline; the version it gives the account is the one registered.
#[test]
fn connection_0_waits_for_the_feature_record_and_registers_what_it_selects() {
    use crate::control::features::FEATURES_RECORD;
    use crate::tunnel::protocol::TXT_LOOKUP_TIMEOUT;
    for (record, version) in [
        (
            r#"{"dv3_2":21,"skip_prechecks":false}"#,
            DatagramVersion::V3,
        ),
        (r#"{"dv3_2":100,"future":[1]}"#, DatagramVersion::V3),
        (r#"{"dv3_2":20}"#, DatagramVersion::V2),
        (r#"{"dv3_2":0}"#, DatagramVersion::V2),
    ] {
        let mut w = feature_world();
        w.flush();
        assert_eq!(w.lookups, [FEATURES_RECORD]);
        assert_eq!(w.lookup_timeouts, [TXT_LOOKUP_TIMEOUT]);
        assert!(w.dials.is_empty(), "no dial before the record is read");
        w.answer_features(Some(record));
        w.register();
        assert_eq!(w.registered_versions(), [version], "{record}");
        assert!(w
            .events
            .contains(&SupervisorEvent::DatagramVersionSelected {
                version,
                record: FeaturesRecord::parse(record).unwrap(),
            }));
        assert!(w.features_failures().is_empty());
        assert_eq!(w.lookups.len(), 1, "read once at start");
    }
}

/// A lookup that fails, a record that does not read, or no answer by core's deadline: v2,
/// reported once, and connection 0 starts then (no later than the deadline).
#[test]
fn without_a_readable_feature_record_connection_0_starts_on_datagram_v2() {
    use crate::tunnel::protocol::TXT_LOOKUP_TIMEOUT;
    let mut w = feature_world();
    w.flush();
    w.answer_features(None);
    w.register();
    assert_eq!(w.registered_versions(), [DatagramVersion::V2]);
    assert_eq!(
        w.features_failures(),
        [(RefreshFailure::LookupFailed, false, true)]
    );

    let mut w = feature_world();
    w.flush();
    w.answer_features(Some(r#"{"dv3_2":"100"}"#));
    w.register();
    assert_eq!(w.registered_versions(), [DatagramVersion::V2]);
    assert_eq!(
        w.features_failures(),
        [(RefreshFailure::Unreadable, true, true)]
    );

    let mut w = feature_world();
    let start = w.now;
    w.advance_until(TXT_LOOKUP_TIMEOUT * 2, |w| !w.dials.is_empty());
    assert_eq!(w.now - start, TXT_LOOKUP_TIMEOUT, "the deadline is core's");
    assert_eq!(
        w.features_failures(),
        [(RefreshFailure::TimedOut(TXT_LOOKUP_TIMEOUT), false, true)]
    );
    // A late answer changes nothing.
    w.answer_features(Some(r#"{"dv3_2":100}"#));
    w.register();
    assert_eq!(w.registered_versions(), [DatagramVersion::V2]);
    assert!(w
        .events
        .contains(&SupervisorEvent::DatagramVersionSelected {
            version: DatagramVersion::V2,
            record: FeaturesRecord::default(),
        }));
}

/// Read again every hour: a record that changes the account's version applies to connections
/// made after it; the connection up keeps its version. A failed or unreadable reading keeps
/// the record before (cloudflared's `refresh` returns before storing).
#[test]
fn the_feature_record_is_read_hourly_and_new_connections_follow_it() {
    use crate::control::features::{FEATURES_RECORD, FEATURES_REFRESH};
    let mut w = feature_world();
    w.flush();
    w.answer_features(Some(r#"{"dv3_2":0}"#));
    let read = w.now;
    w.register();
    assert_eq!(w.registered_versions(), [DatagramVersion::V2]);

    w.advance_until(FEATURES_REFRESH * 2, |w| w.lookups.len() >= 2);
    assert_eq!(w.lookups, [FEATURES_RECORD, FEATURES_RECORD]);
    assert!(w.now - read >= FEATURES_REFRESH);
    w.answer_features(Some(r#"{"dv3_2":50}"#));
    w.run();
    assert!(w
        .events
        .contains(&SupervisorEvent::DatagramVersionSelected {
            version: DatagramVersion::V3,
            record: FeaturesRecord {
                dv3_2: 50,
                skip_prechecks: false
            },
        }));
    assert!(w.closed_tcp.is_empty(), "the connection up stays");
    assert_eq!(w.registered_versions(), [DatagramVersion::V2]);

    // A failed and an unreadable reading keep v3.
    w.advance_until(FEATURES_REFRESH * 2, |w| w.lookups.len() >= 3);
    w.answer_features(None);
    w.advance_until(FEATURES_REFRESH * 2, |w| w.lookups.len() >= 4);
    w.answer_features(Some("{"));
    w.run();
    assert_eq!(w.features_failures().len(), 2);
    assert!(w.features_failures().iter().all(|f| !f.2), "not first");

    // The connection ends: the next one registers v3.
    let (link, _) = w.edge.as_ref().map(|(l, _)| (*l, ())).expect("edge");
    w.connector
        .handle_input(w.now, Input::EdgeReceived { link, data: &[] });
    w.advance_until(Duration::from_secs(30), |w| !w.dials.is_empty());
    w.register();
    assert_eq!(
        w.registered_versions(),
        [DatagramVersion::V2, DatagramVersion::V3]
    );
}

/// An edge whose TCP connection never comes up (its SYNs go unanswered, the kernel retrying
/// for two minutes): the connection fails at cloudflared's 15 s dial timeout, which covers the
/// TCP connect and the TLS handshake, and the next dial follows.
#[test]
fn a_tcp_connect_that_never_completes_fails_at_the_dial_timeout() {
    let mut w = H2World::new(ProtocolFlag::Fixed(Protocol::Http2));
    w.flush();
    let (link, _) = w.dials.pop().expect("a dial");
    let dialed = w.now;
    let closed = |w: &H2World| {
        w.events.iter().find_map(|e| match e {
            SupervisorEvent::LinkClosed {
                link: l, reason, ..
            } if *l == link => Some(reason.clone()),
            _ => None,
        })
    };
    w.advance_until(Duration::from_secs(20), |w| closed(w).is_some());
    assert_eq!(closed(&w), Some(CloseReason::TimedOut));
    assert_eq!(w.now - dialed, Duration::from_secs(15));
    w.advance_until(Duration::from_secs(10), |w| !w.dials.is_empty());
}

/// `--max-edge-addr-retries`: QUIC falls back after that many dial failures in a row and one
/// more (burrow's own fallback after handshake timeouts put out of the way).
#[test]
fn max_edge_addr_retries_counts_the_dials_before_the_fallback() {
    for retries in [0u32, 3] {
        let mut w = H2World::with(ProtocolFlag::Auto, |c| {
            c.max_edge_addr_retries = retries;
            c.fallback_after_timeouts = 100;
        });
        // UDP goes nowhere: every QUIC handshake times out.
        w.advance_until(Duration::from_secs(600), |w| !w.dials.is_empty());
        let quic_dials = w
            .events
            .iter()
            .filter(|e| {
                matches!(
                    e,
                    SupervisorEvent::Connecting {
                        protocol: Protocol::Quic,
                        ..
                    }
                )
            })
            .count();
        assert_eq!(
            quic_dials as u32,
            retries + 1,
            "{retries}: {:?}",
            w.changes()
        );
        assert_eq!(w.changes(), vec![Protocol::Http2]);
    }
}
