//! Origin dial and TLS-handshake deadlines on the connector's own timers: a dial that takes
//! longer than its rule's `connectTimeout` (then `tlsTimeout`) fails as a failed dial fails,
//! at that time exactly, and the driver is told to drop it; a failed flow is closed at the
//! driver however it failed.

use super::*;
use crate::ingress::{Ingress, OriginRequestConfig, Service};
use crate::stream::connect::{key, ConnectRequest, ConnectionType, Metadata};
use crate::stream::proxy::FlowKind;
use crate::tunnel::dial::TCP_DIAL_TIMEOUT;

const CONNECT: Duration = Duration::from_secs(7);
const TLS: Duration = Duration::from_secs(4);

/// A connector whose one rule sends HTTP requests to `127.0.0.1:9` (HTTPS with `tls`), with
/// [`CONNECT`] and [`TLS`] as its timeouts; registered.
pub(super) fn world(seed: u64, tls: bool) -> (World, ConnId) {
    world_of(
        seed,
        Service::Http {
            tls,
            host: "127.0.0.1".into(),
            port: 9,
        },
    )
}

/// A connector whose one rule is `service`, with [`CONNECT`] and [`TLS`]; registered.
fn world_of(seed: u64, service: Service) -> (World, ConnId) {
    // As the edge pushes them: whole seconds.
    let options: OriginRequestConfig = serde_json::from_str(&format!(
        r#"{{"connectTimeout":{},"tlsTimeout":{}}}"#,
        CONNECT.as_secs(),
        TLS.as_secs()
    ))
    .expect("options");
    let ingress = Ingress::single_with(service, &options).expect("rules");
    let mut w = World::with(1, seed, |c| {
        c.connector.data.ingress = Some(std::sync::Arc::new(ingress));
    });
    w.run(Duration::from_secs(10), |w| {
        w.connector.ready_connections() == 1
    });
    let conn = w.edge_conn(0);
    (w, conn)
}

impl World {
    /// The edge opens a data stream (`GET dest` or a TCP stream to `dest`); returns it with
    /// the origin flow the connector opened for it, and when it did.
    pub(super) fn open(
        &mut self,
        conn: ConnId,
        kind: ConnectionType,
        dest: &str,
    ) -> (StreamId, LinkId, FlowId, Instant) {
        let mut metadata = vec![
            Metadata {
                key: key::HTTP_METHOD,
                val: "GET",
            },
            Metadata {
                key: key::HTTP_HOST,
                val: "app.test",
            },
        ];
        if kind == ConnectionType::WebSocket {
            metadata.push(Metadata {
                key: "HttpHeader:Sec-Websocket-Key",
                val: "dGhlIHNhbXBsZSBub25jZQ==",
            });
        }
        let request = ConnectRequest {
            dest,
            connection_type: kind,
            metadata: if kind == ConnectionType::Tcp {
                &[]
            } else {
                &metadata
            },
        };
        let now = self.now;
        let stream = self
            .edge
            .as_mut()
            .expect("edge")
            .open_request(now, conn, &request)
            .expect("open");
        let opened = |w: &World| {
            w.origin_actions.iter().find_map(|(link, a)| match a {
                OriginAction::Open { flow, dest: d, .. } if d == dest => Some((*link, *flow)),
                _ => None,
            })
        };
        let mut at = None;
        self.run(self.now + Duration::from_secs(2) - self.start, |w| {
            if opened(w).is_some() {
                at.get_or_insert(w.now);
            }
            opened(w).is_some()
        });
        let (link, flow) = opened(self).expect("the origin flow opens");
        (stream, link, flow, at.expect("opened"))
    }

    /// Runs until virtual time `at`, or `stop`.
    pub(super) fn run_until(&mut self, at: Instant, stop: impl FnMut(&World) -> bool) {
        self.run(at - self.start, stop);
    }

    fn dial_aborted(&self, link: LinkId, flow: FlowId) -> bool {
        self.origin_actions.iter().any(
            |(l, a)| matches!(a, OriginAction::AbortDial { flow: f } if *l == link && *f == flow),
        )
    }

    fn dial_closed(&self, link: LinkId, flow: FlowId) -> bool {
        self.origin_actions
            .iter()
            .any(|(l, a)| matches!(a, OriginAction::Close { flow: f } if *l == link && *f == flow))
    }

    /// The connector's `ConnectResponse` error on `stream`, once answered.
    fn answer(&self, conn: ConnId, stream: StreamId) -> Option<String> {
        self.edge_events.iter().find_map(|e| match e {
            EdgeEvent::Response {
                conn: c,
                stream: s,
                error,
                ..
            } if *c == conn && *s == stream => Some(error.clone()),
            _ => None,
        })
    }
}

#[test]
fn a_dial_fails_at_exactly_its_connect_timeout_and_is_closed_at_the_driver() {
    let (mut w, conn) = world(31, false);
    let (stream, link, flow, opened) = w.open(conn, ConnectionType::Http, "http://app.test/");
    assert!(
        w.deadline.is_some_and(|d| d <= opened + CONNECT),
        "the Timeout output covers the dial: {:?}",
        w.deadline
    );
    // Not a moment early (the harness fails on a deadline that does not move time).
    w.run_until(opened + CONNECT - Duration::from_millis(1), |w| {
        w.dial_closed(link, flow)
    });
    assert!(!w.dial_closed(link, flow), "closed before connectTimeout");
    assert_eq!(w.answer(conn, stream), None);
    w.run_until(opened + CONNECT + Duration::from_secs(1), |w| {
        w.dial_closed(link, flow)
    });
    assert!(w.dial_closed(link, flow), "the driver drops the dial");
    assert_eq!(w.now, opened + CONNECT, "at connectTimeout exactly");
    w.run_until(w.now + Duration::from_secs(1), |w| {
        w.answer(conn, stream).is_some()
    });
    assert_eq!(
        w.answer(conn, stream).as_deref(),
        Some("dial tcp 127.0.0.1:9: i/o timeout"),
        "answered as a failed dial (the edge's 502)"
    );
    assert!(
        w.deadline.is_none_or(|d| d > opened + CONNECT),
        "the deadline is gone once fired"
    );
    // A late report from the driver changes nothing.
    w.input(Input::FlowConnected { link, flow });
}

#[test]
fn the_tls_handshake_has_its_own_deadline_from_when_it_begins() {
    let (mut w, conn) = world(32, true);
    let (stream, link, flow, opened) = w.open(conn, ConnectionType::Http, "http://app.test/");
    // Connected after 5 s: the connect deadline (7 s) no longer applies, the handshake's (5 + 4 s) does.
    let connected = opened + Duration::from_secs(5);
    w.run_until(connected, |_| false);
    w.input(Input::FlowHandshaking { link, flow });
    w.run_until(opened + CONNECT + Duration::from_millis(1), |w| {
        w.dial_closed(link, flow)
    });
    assert!(
        !w.dial_closed(link, flow),
        "connectTimeout no longer applies once connected"
    );
    w.run_until(connected + TLS - Duration::from_millis(1), |w| {
        w.dial_closed(link, flow)
    });
    assert!(!w.dial_closed(link, flow), "closed before tlsTimeout");
    w.run_until(connected + TLS + Duration::from_secs(1), |w| {
        w.dial_closed(link, flow)
    });
    assert_eq!(w.now, connected + TLS, "at tlsTimeout exactly");
    w.run_until(w.now + Duration::from_secs(1), |w| {
        w.answer(conn, stream).is_some()
    });
    assert_eq!(
        w.answer(conn, stream).as_deref(),
        Some("TLS handshake timeout")
    );
}

#[test]
fn a_dial_that_succeeds_in_time_cancels_its_deadline() {
    let (mut w, conn) = world(33, true);
    let (stream, link, flow, opened) = w.open(conn, ConnectionType::Http, "http://app.test/");
    w.run_until(opened + Duration::from_secs(1), |_| false);
    w.input(Input::FlowHandshaking { link, flow });
    w.run_until(opened + Duration::from_secs(2), |_| false);
    w.input(Input::FlowConnected { link, flow });
    assert!(
        w.deadline
            .is_none_or(|d| d != opened + CONNECT && d != opened + Duration::from_secs(1) + TLS),
        "no dial deadline left: {:?}",
        w.deadline
    );
    w.run_until(opened + CONNECT + TLS + Duration::from_secs(5), |w| {
        w.dial_closed(link, flow)
    });
    assert!(!w.dial_closed(link, flow), "a connected flow is kept");
    assert_eq!(
        w.answer(conn, stream),
        None,
        "the request waits for the origin"
    );
    assert!(
        w.origin_actions.iter().any(
            |(l, a)| matches!(a, OriginAction::Write { flow: f, .. } if *l == link && *f == flow)
        ),
        "the request went to the origin"
    );
}

#[test]
fn private_tcp_dials_wait_warp_routing_connect_timeout() {
    let (mut w, conn) = world(34, false);
    // Without warp-routing: cloudflared's default.
    let (stream, link, flow, opened) = w.open(conn, ConnectionType::Tcp, "10.0.0.9:22");
    assert!(w.origin_actions.iter().any(
        |(l, a)| matches!(a, OriginAction::Open { flow: f, kind: FlowKind::Tcp, .. } if *l == link && *f == flow)
    ));
    w.run_until(opened + TCP_DIAL_TIMEOUT + Duration::from_secs(1), |w| {
        w.dial_closed(link, flow)
    });
    assert_eq!(w.now, opened + TCP_DIAL_TIMEOUT);
    w.run_until(w.now + Duration::from_secs(1), |w| {
        w.answer(conn, stream).is_some()
    });
    assert_eq!(
        w.answer(conn, stream).as_deref(),
        Some("dial tcp 10.0.0.9:22: i/o timeout"),
        "the error ConnectResponse of a TCP stream"
    );
    // The edge pushes warp-routing.connectTimeout (whole seconds): new flows wait that long.
    let pushed = Duration::from_secs(9);
    let config = format!(
        r#"{{"ingress":[{{"service":"http_status:404"}}],"warp-routing":{{"connectTimeout":{}}}}}"#,
        pushed.as_secs()
    );
    let now = w.now;
    w.edge
        .as_mut()
        .expect("edge")
        .update_configuration(now, conn, 1, config.as_bytes())
        .expect("push");
    w.run_until(w.now + Duration::from_secs(2), |w| {
        w.events
            .iter()
            .any(|(_, e)| matches!(e, SupervisorEvent::ConfigurationApplied { version: 1 }))
    });
    let (_, link, flow, opened) = w.open(conn, ConnectionType::Tcp, "10.0.0.10:22");
    w.run_until(opened + pushed + Duration::from_secs(1), |w| {
        w.dial_closed(link, flow)
    });
    assert_eq!(w.now, opened + pushed, "the pushed connectTimeout");
}

#[test]
fn a_flow_that_fails_is_closed_at_the_driver() {
    let (mut w, conn) = world(35, false);
    // A dial the driver fails.
    let (stream, link, flow, _) = w.open(conn, ConnectionType::Http, "http://app.test/a");
    w.input(Input::FlowFailed {
        link,
        flow,
        reason: "dial tcp 127.0.0.1:9: connect: connection refused",
    });
    w.run_until(w.now + Duration::from_secs(1), |w| {
        w.answer(conn, stream).is_some()
    });
    assert_eq!(
        w.answer(conn, stream).as_deref(),
        Some("dial tcp 127.0.0.1:9: connect: connection refused")
    );
    assert!(
        w.dial_closed(link, flow),
        "the driver is told to drop a flow that failed"
    );
    // A connected flow that breaks.
    let (_, link, flow, _) = w.open(conn, ConnectionType::Http, "http://app.test/b");
    w.input(Input::FlowConnected { link, flow });
    w.input(Input::FlowFailed {
        link,
        flow,
        reason: "read from origin: connection reset by peer",
    });
    assert!(w.dial_closed(link, flow), "and one that broke");
}

/// A `socks-proxy` flow (its origin in process, connected at once) whose SOCKS5 server dials
/// the destination its client named: core gives that dial the rule's `connectTimeout` and
/// tells the driver to abort it then, at that time exactly; the flow lives on.
#[test]
fn a_socks_destination_dial_is_aborted_at_connect_timeout_and_the_flow_kept() {
    let (mut w, conn) = world_of(35, Service::SocksProxy);
    let (stream, link, flow, _) = w.open(conn, ConnectionType::WebSocket, "http://app.test/");
    w.input(Input::FlowConnected { link, flow });
    w.run_until(w.now + Duration::from_secs(1), |_| false);
    let dialing = w.now;
    w.input(Input::FlowDialing { link, flow });
    assert!(
        w.deadline.is_some_and(|d| d <= dialing + CONNECT),
        "the Timeout output covers the destination dial: {:?}",
        w.deadline
    );
    w.run_until(dialing + CONNECT - Duration::from_millis(1), |w| {
        w.dial_aborted(link, flow)
    });
    assert!(!w.dial_aborted(link, flow), "aborted before connectTimeout");
    w.run_until(dialing + CONNECT + Duration::from_secs(1), |w| {
        w.dial_aborted(link, flow)
    });
    assert!(w.dial_aborted(link, flow), "the driver is told to abort");
    assert_eq!(w.now, dialing + CONNECT, "at connectTimeout exactly");
    assert!(
        w.deadline.is_none_or(|d| d > dialing + CONNECT),
        "the deadline moves on once fired: {:?}",
        w.deadline
    );
    // The driver answers the SOCKS5 client; the flow and its stream stay.
    w.input(Input::FlowDialed { link, flow });
    w.run_until(w.now + Duration::from_secs(2), |_| false);
    assert!(!w.dial_closed(link, flow), "the flow is kept");
    let aborts = w
        .origin_actions
        .iter()
        .filter(|(_, a)| matches!(a, OriginAction::AbortDial { .. }))
        .count();
    assert_eq!(aborts, 1, "aborted once");
    assert_eq!(
        w.answer(conn, stream).as_deref(),
        Some(""),
        "the 101 stands"
    );
}

#[test]
fn a_socks_destination_dial_that_ends_in_time_is_never_aborted() {
    let (mut w, conn) = world_of(36, Service::SocksProxy);
    let (_, link, flow, _) = w.open(conn, ConnectionType::WebSocket, "http://app.test/");
    w.input(Input::FlowConnected { link, flow });
    let dialing = w.now;
    w.input(Input::FlowDialing { link, flow });
    w.run_until(dialing + Duration::from_secs(2), |_| false);
    w.input(Input::FlowDialed { link, flow });
    assert!(
        w.deadline.is_none_or(|d| d != dialing + CONNECT),
        "no dial deadline left: {:?}",
        w.deadline
    );
    w.run_until(dialing + CONNECT + Duration::from_secs(5), |w| {
        w.dial_aborted(link, flow)
    });
    assert!(!w.dial_aborted(link, flow));
    assert!(!w.dial_closed(link, flow));
    // A report for a flow that is not connected arms nothing.
    let (_, link2, flow2, opened) = w.open(conn, ConnectionType::WebSocket, "http://app.test/2");
    assert_ne!(flow2, flow);
    w.input(Input::FlowDialing {
        link: link2,
        flow: flow2,
    });
    w.run_until(opened + CONNECT + Duration::from_secs(1), |w| {
        w.dial_aborted(link2, flow2)
    });
    assert!(
        !w.dial_aborted(link2, flow2),
        "an unconnected flow's report is ignored"
    );
}

/// cloudflared times the dials of TCP streams (warp routing and WebSocket-carried `tcp://`
/// services) from the dial to the origin connected, and counts those that never connect;
/// HTTP requests are neither timed nor counted.
#[test]
fn tcp_stream_dials_are_timed_and_failures_counted() {
    let (mut w, conn) = world_of(
        37,
        Service::Tcp {
            host: "127.0.0.1".into(),
            port: Some(22),
        },
    );
    // The connector counted its registration and where it is served from.
    let r = w.connector.registration_stats();
    assert_eq!((r.success, r.failed.len()), (1, 0));
    assert_eq!(r.locations.keys().map(|(i, _)| *i).collect::<Vec<_>>(), [0]);
    assert_eq!(r.locations.values().copied().collect::<Vec<_>>(), [1]);
    let connect = |w: &World| w.connector.request_stats().connect;
    // Warp routing: connected after 30 ms.
    let (_, link, flow, opened) = w.open(conn, ConnectionType::Tcp, "10.0.0.9:22");
    w.run_until(opened + Duration::from_millis(30), |_| false);
    w.input(Input::FlowConnected { link, flow });
    // Then broken: not a dial error.
    w.input(Input::FlowFailed {
        link,
        flow,
        reason: "read from origin: connection reset by peer",
    });
    // A `tcp://` service's WebSocket: refused.
    let (_, link, flow, _) = w.open(conn, ConnectionType::WebSocket, "ws://app.test/");
    w.input(Input::FlowFailed {
        link,
        flow,
        reason: "dial tcp 127.0.0.1:22: connect: connection refused",
    });
    // A TCP stream whose dial times out.
    let (_, link, flow, opened) = w.open(conn, ConnectionType::Tcp, "10.0.0.10:22");
    w.run_until(opened + TCP_DIAL_TIMEOUT + Duration::from_secs(1), |w| {
        w.dial_closed(link, flow)
    });
    let c = connect(&w);
    assert_eq!((c.count(), c.sum_ms, c.errors), (1, 30, 2), "{c:?}");
    assert_eq!(c.buckets[3], 1, "30 ms is in the le=50 bucket: {c:?}");
    // HTTP requests (another rule's) are not counted.
    let (mut w, conn) = world(38, false);
    let (_, link, flow, _) = w.open(conn, ConnectionType::Http, "http://app.test/");
    w.input(Input::FlowFailed {
        link,
        flow,
        reason: "dial tcp 127.0.0.1:9: connect: connection refused",
    });
    assert_eq!(
        w.connector.request_stats().connect,
        Default::default(),
        "HTTP dials are not timed"
    );
}
