//! One flow limiter for the whole supervisor: TCP flows on every connection and UDP sessions
//! draw from it, its limit comes from the flag, the local file and remote configuration, and
//! every way a flow ends gives its slot back. A flow the edge sent before a shutdown is served even
//! when the connector learns of it only after unregistering.

use super::*;
use crate::flow::FlowType;
use crate::stream::connect::{key, ConnectRequest, ConnectionType, Metadata};
use crate::stream::proxy::{FlowKind, RATE_LIMITED};

impl World {
    /// The edge opens a TCP data stream to `dest` on `conn`.
    fn open_tcp(&mut self, conn: ConnId, dest: &str) -> StreamId {
        let request = ConnectRequest {
            dest,
            connection_type: ConnectionType::Tcp,
            metadata: &[],
        };
        let now = self.now;
        self.edge
            .as_mut()
            .expect("edge")
            .open_request(now, conn, &request)
            .expect("open")
    }

    /// The origin flow the connector opened for `dest`.
    fn flow_to(&self, dest: &str) -> Option<(LinkId, FlowId)> {
        self.origin_actions.iter().find_map(|(link, a)| match a {
            OriginAction::Open {
                flow,
                kind: FlowKind::Tcp,
                dest: d,
                ..
            } if d == dest => Some((*link, *flow)),
            _ => None,
        })
    }

    /// Whether the connector told the driver to close `flow`.
    fn closed(&self, link: LinkId, flow: FlowId) -> bool {
        self.origin_actions
            .iter()
            .any(|(l, a)| matches!(a, OriginAction::Close { flow: f } if *l == link && *f == flow))
    }

    /// The connector's `ConnectResponse` on `stream`: error and metadata.
    fn response(&self, conn: ConnId, stream: StreamId) -> Option<(String, Vec<(String, String)>)> {
        self.edge_events.iter().find_map(|e| match e {
            EdgeEvent::Response {
                conn: c,
                stream: s,
                error,
                metadata,
            } if *c == conn && *s == stream => Some((error.clone(), metadata.clone())),
            _ => None,
        })
    }

    /// Opens a TCP flow to `dest` and connects its origin; returns its stream and flow.
    fn serve_tcp(&mut self, conn: ConnId, dest: &str) -> (StreamId, LinkId, FlowId) {
        let stream = self.open_tcp(conn, dest);
        self.run(Duration::from_secs(5), |w| w.flow_to(dest).is_some());
        let (link, flow) = self.flow_to(dest).expect("the origin flow opens");
        self.input(Input::FlowConnected { link, flow });
        self.run(Duration::from_secs(5), |w| {
            w.response(conn, stream).is_some()
        });
        assert_eq!(
            self.response(conn, stream),
            Some((String::new(), vec![])),
            "{dest} acked"
        );
        (stream, link, flow)
    }

    /// A TCP request to `dest` is answered as cloudflared answers a rate-limited flow.
    fn refused_tcp(&mut self, conn: ConnId, dest: &str) {
        let stream = self.open_tcp(conn, dest);
        self.run(Duration::from_secs(5), |w| {
            w.response(conn, stream).is_some()
        });
        assert_eq!(
            self.response(conn, stream),
            Some((
                RATE_LIMITED.to_owned(),
                vec![("FlowConnectRateLimited".into(), "true".into())]
            )),
            "{dest} refused"
        );
        assert!(self.flow_to(dest).is_none(), "no origin dialled for {dest}");
    }

    /// The edge registers v3 session `id` on `conn`; returns the connector's answer.
    fn register_v3(&mut self, conn: ConnId, id: u128) -> v3::ResponseCode {
        let before = self.edge_datagrams.len();
        self.edge_send_v3(
            conn,
            v3::Datagram::Registration(v3::Registration {
                request_id: SessionId(id),
                dest: addr("198.51.100.30:53"),
                traced: false,
                idle_hint_secs: 300,
                payload: &[],
            }),
        );
        self.run(Duration::from_secs(5), |w| w.edge_datagrams.len() > before);
        match v3::decode(&self.edge_datagrams[before].1) {
            Ok(v3::Datagram::RegistrationResponse(r)) if r.request_id == SessionId(id) => r.code,
            other => panic!("expected the answer for session {id}, got {other:?}"),
        }
    }

    /// The edge pushes remote configuration `json` as `version`; returns when answered.
    fn push_config(&mut self, conn: ConnId, version: i32, json: &str) {
        let answered = |w: &World| {
            w.edge_events
                .iter()
                .filter(|e| matches!(e, EdgeEvent::ConfigurationResult { .. }))
                .count()
        };
        let before = answered(self);
        let now = self.now;
        self.edge
            .as_mut()
            .expect("edge")
            .update_configuration(now, conn, version, json.as_bytes())
            .expect("push");
        self.run(Duration::from_secs(5), |w| answered(w) > before);
        assert!(answered(self) > before, "configuration {version} answered");
    }
}

fn v3_world(seed: u64, tune: impl FnOnce(&mut SupervisorConfig)) -> World {
    World::with(2, seed, |c| {
        c.connector.registration.features = vec!["support_datagram_v3_2".into()];
        tune(c);
    })
}

fn remote(max_active_flows: Option<u64>) -> String {
    let warp = max_active_flows
        .map(|n| format!(r#","warp-routing":{{"maxActiveFlows":{n}}}"#))
        .unwrap_or_default();
    format!(r#"{{"ingress":[{{"service":"http_status:404"}}]{warp}}}"#)
}

#[test]
fn tcp_flows_and_udp_sessions_share_one_limit_that_remote_configuration_changes() {
    let mut w = v3_world(21, |c| c.local_max_active_flows = Some(3));
    w.run(Duration::from_secs(10), |w| {
        w.connector.ready_connections() == 2
    });
    let (conn0, conn1) = (w.edge_conn(0), w.edge_conn(1));
    assert_eq!(
        w.connector.flow_stats().limit,
        3,
        "the local file's warp-routing"
    );

    // A TCP flow on each connection and a session: three, the limit.
    let (s0, link0, f0) = w.serve_tcp(conn0, "10.0.0.1:22");
    let (_, link1, f1) = w.serve_tcp(conn1, "10.0.0.2:22");
    assert_eq!(w.register_v3(conn0, 1), v3::ResponseCode::Ok);
    assert_eq!(w.connector.flow_stats().active, 3);

    // Either kind, on either connection, is refused now.
    w.refused_tcp(conn0, "10.0.0.3:22");
    w.refused_tcp(conn1, "10.0.0.4:22");
    assert_eq!(
        w.register_v3(conn1, 2),
        v3::ResponseCode::TooManyActiveFlows
    );
    assert_eq!(
        (
            w.connector.flow_stats().rejected(FlowType::Tcp),
            w.connector.flow_stats().rejected(FlowType::Udp)
        ),
        (2, 1)
    );
    assert_eq!(w.origin.opened.len(), 1, "one UDP socket");

    // The edge raises the limit to 5: a flow and a session more fit, then no more.
    w.push_config(conn0, 1, &remote(Some(5)));
    assert_eq!(w.connector.flow_stats().limit, 5);
    let (s5, link5, f5) = w.serve_tcp(conn1, "10.0.0.5:22");
    assert_eq!(w.register_v3(conn1, 3), v3::ResponseCode::Ok);
    assert_eq!(w.connector.flow_stats().active, 5);
    w.refused_tcp(conn0, "10.0.0.6:22");

    // A stale version changes nothing; lowering to 1 keeps all five and refuses new ones.
    w.push_config(conn1, 1, &remote(Some(50)));
    assert_eq!(
        w.connector.flow_stats().limit,
        5,
        "version 1 again is a no-op"
    );
    w.push_config(conn1, 2, &remote(Some(1)));
    assert_eq!(
        (
            w.connector.flow_stats().limit,
            w.connector.flow_stats().active
        ),
        (1, 5)
    );
    assert_eq!(
        w.register_v3(conn0, 4),
        v3::ResponseCode::TooManyActiveFlows
    );

    // Without warp-routing the limit goes away (cloudflared's default 0).
    w.push_config(conn0, 3, &remote(None));
    assert_eq!(w.connector.flow_stats().limit, 0);

    // A failed dial gives its slot back.
    let stream = w.open_tcp(conn0, "10.0.0.7:22");
    w.run(Duration::from_secs(5), |w| {
        w.flow_to("10.0.0.7:22").is_some()
    });
    assert_eq!(w.connector.flow_stats().active, 6);
    let (link, flow) = w.flow_to("10.0.0.7:22").expect("dialled");
    w.input(Input::FlowFailed {
        link,
        flow,
        reason: "connect: connection refused",
    });
    w.run(Duration::from_secs(5), |w| {
        w.response(conn0, stream).is_some()
    });
    assert_eq!(
        w.response(conn0, stream).map(|r| r.0),
        Some("connect: connection refused".into())
    );
    assert_eq!(w.connector.flow_stats().active, 5);

    // The edge resets a flow: its slot comes back once.
    let now = w.now;
    w.edge
        .as_mut()
        .expect("edge")
        .reset_request(now, conn1, s5)
        .expect("reset");
    w.run(Duration::from_secs(5), |w| w.closed(link5, f5));
    assert!(w.closed(link5, f5));
    assert_eq!(w.connector.flow_stats().active, 4);

    // Connection 1's path dies: its TCP flow ends with it, its session moves to connection 0
    // and keeps its slot.
    assert_eq!(link1, w.connector.link_of(1).expect("link 1"));
    w.blackhole = Some(1);
    w.run(Duration::from_secs(60), |w| {
        w.events
            .iter()
            .any(|(_, e)| matches!(e, SupervisorEvent::LinkClosed { link, .. } if *link == link1))
    });
    assert!(
        w.closed(link1, f1),
        "the flow on the lost connection is closed"
    );
    assert_eq!(w.connector.datagram_hub().sessions.active(), 2);
    assert_eq!(
        w.connector.flow_stats().active,
        3,
        "one TCP flow and two sessions are left"
    );
    assert_eq!(
        (
            w.connector.flow_stats().rejected(FlowType::Tcp),
            w.connector.flow_stats().rejected(FlowType::Udp)
        ),
        (3, 2)
    );

    // The last TCP flow ends cleanly: both sides finish.
    let now = w.now;
    w.edge
        .as_mut()
        .expect("edge")
        .finish_request(now, conn0, s0)
        .expect("finish");
    w.run(Duration::from_secs(5), |w| {
        w.origin_actions.iter().any(
            |(l, a)| matches!(a, OriginAction::ShutdownWrite { flow } if *l == link0 && *flow == f0),
        )
    });
    assert_eq!(
        w.connector.flow_stats().active,
        3,
        "half-closed still counts"
    );
    w.input(Input::FlowFinished {
        link: link0,
        flow: f0,
    });
    w.run(Duration::from_secs(5), |w| w.closed(link0, f0));
    assert!(w.closed(link0, f0));
    assert_eq!(
        w.connector.flow_stats().active,
        2,
        "only the sessions are left"
    );
    assert_eq!(
        w.connector.flow_stats().active,
        w.connector.datagram_hub().sessions.active() as u64
    );
}

#[test]
fn the_flag_overrides_local_and_remote_limits() {
    let mut w = v3_world(22, |c| {
        c.max_active_flows = Some(1);
        c.local_max_active_flows = Some(5);
    });
    w.run(Duration::from_secs(10), |w| {
        w.connector.ready_connections() == 2
    });
    let conn0 = w.edge_conn(0);
    assert_eq!(w.connector.flow_stats().limit, 1);
    w.push_config(conn0, 1, &remote(Some(10)));
    assert_eq!(w.connector.flow_stats().limit, 1, "--max-active-flows wins");
    assert_eq!(w.register_v3(conn0, 1), v3::ResponseCode::Ok);
    w.refused_tcp(conn0, "10.0.0.1:22");
    assert_eq!(w.connector.flow_stats().active, 1);
}

/// The `Service` of the origin the connector opened for an HTTP request to `dest`.
fn http_origin(w: &World, dest: &str) -> Option<crate::ingress::Service> {
    w.origin_actions.iter().find_map(|(_, a)| match a {
        OriginAction::Open {
            kind: FlowKind::Http,
            dest: d,
            origin,
            ..
        } if d == dest => origin.as_ref().map(|o| o.service.clone()),
        _ => None,
    })
}

#[test]
fn a_configuration_push_on_one_connection_resolves_requests_on_every_connection() {
    let local = crate::ingress::Ingress::single(crate::ingress::Service::Http {
        tls: false,
        host: "127.0.0.1".into(),
        port: 9090,
    });
    let mut w = v3_world(23, |c| {
        c.connector.data.ingress = Some(std::sync::Arc::new(local));
    });
    w.run(Duration::from_secs(10), |w| {
        w.connector.ready_connections() == 2
    });
    let (conn0, conn1) = (w.edge_conn(0), w.edge_conn(1));
    let get = |w: &mut World, conn: ConnId, dest: &str| {
        let metadata = [
            Metadata {
                key: key::HTTP_METHOD,
                val: "GET",
            },
            Metadata {
                key: key::HTTP_HOST,
                val: "app.test",
            },
        ];
        let request = ConnectRequest {
            dest,
            connection_type: ConnectionType::Http,
            metadata: &metadata,
        };
        let now = w.now;
        w.edge
            .as_mut()
            .expect("edge")
            .open_request(now, conn, &request)
            .expect("open");
        w.run(Duration::from_secs(2), |w| http_origin(w, dest).is_some());
        http_origin(w, dest)
    };
    let service = get(&mut w, conn1, "http://app.test/before");
    assert!(
        matches!(
            &service,
            Some(crate::ingress::Service::Http { port: 9090, .. })
        ),
        "the local rules: {service:?}"
    );
    let pushed = r#"{"ingress":[{"service":"http://127.0.0.1:8080"}]}"#;
    w.push_config(conn0, 1, pushed);
    let service = get(&mut w, conn1, "http://app.test/after");
    assert!(
        matches!(
            &service,
            Some(crate::ingress::Service::Http { port: 8080, .. })
        ),
        "the other connection resolves with the pushed rules: {service:?}"
    );
    let ingress = w.connector.ingress().expect("rules");
    assert_eq!(ingress.rules().len(), 1);
    assert!(matches!(
        ingress.rules()[0].origin.service,
        crate::ingress::Service::Http { port: 8080, .. }
    ));
}

#[test]
fn the_stream_grant_grows_with_the_load_up_to_its_maximum() {
    let mut w = World::with(1, 23, |c| c.quic.max_concurrent_bidi_streams = 1000);
    w.run(Duration::from_secs(10), |w| {
        w.connector.ready_connections() == 1
    });
    let conn = w.edge_conn(0);
    let grant = |w: &World| {
        w.connector
            .connection(0)
            .expect("connection")
            .stream_grant()
    };
    assert_eq!(grant(&w), 128, "the initial grant");
    // The edge names 2000 requests, as fast as its queue of those waiting for credit takes
    // them; their dials never finish, so every stream that opens stays open.
    let request = ConnectRequest {
        dest: "10.0.0.1:22",
        connection_type: ConnectionType::Tcp,
        metadata: &[],
    };
    let mut named = Vec::new();
    for _ in 0..20 {
        let now = w.now;
        let edge = w.edge.as_mut().expect("edge");
        while named.len() < 2000 {
            match edge.open_request(now, conn, &request) {
                Ok(stream) => named.push(stream),
                Err(_) => break,
            }
        }
        let until = w.now - w.start + Duration::from_millis(100);
        w.run(until, |_| false);
    }
    assert_eq!(named.len(), 2000, "beyond the grant, requests wait");
    // A stream that opened sent its request; one still waiting holds it.
    let edge = w.edge.as_ref().expect("edge");
    let opened = named
        .iter()
        .filter(|&&s| edge.request_unsent(conn, s) == 0)
        .count();
    assert_eq!(
        opened, 1000,
        "the edge got credit up to the maximum, no more"
    );
    assert_eq!(grant(&w), 1000);
}

#[test]
fn a_request_still_on_its_way_when_the_unregistration_is_answered_is_served() {
    let mut w = World::new(1, 29);
    w.run(Duration::from_secs(10), |w| {
        w.connector.ready_connections() == 1
    });
    let conn = w.edge_conn(0);
    // The edge sends a request just before the connector shuts down, and its packets are
    // lost: the connector learns of the stream only from the retransmission, which comes
    // after the answer to `unregisterConnection`.
    let stream = w.open_tcp(conn, "10.0.0.9:22");
    w.flush();
    w.net.clear();
    let at = w.now;
    w.input(Input::Shutdown);
    w.run(Duration::from_secs(20), |w| {
        w.flow_to("10.0.0.9:22").is_some() || w.connector.is_stopped()
    });
    assert!(
        w.edge_events
            .iter()
            .any(|e| matches!(e, EdgeEvent::Unregistered { .. })),
        "unregistered first"
    );
    let (link, flow) = w
        .flow_to("10.0.0.9:22")
        .expect("the late request reaches its origin: the connection still serves");
    w.input(Input::FlowConnected { link, flow });
    w.run(Duration::from_secs(20), |w| {
        w.response(conn, stream).is_some()
    });
    assert_eq!(w.response(conn, stream), Some((String::new(), vec![])));
    assert!(!w.connector.is_stopped(), "still draining");
    // The edge is done with it: with nothing in flight it closes the connection, which ends
    // the connector's drain well before the grace period.
    let now = w.now;
    w.edge
        .as_mut()
        .expect("edge")
        .reset_request(now, conn, stream)
        .expect("reset");
    w.run(Duration::from_secs(60), |w| w.connector.is_stopped());
    assert!(w.connector.is_stopped());
    assert!(
        w.now - at < Duration::from_secs(5),
        "the edge's close ends it"
    );
    assert!(w.events.iter().any(|(_, e)| matches!(
        e,
        SupervisorEvent::LinkClosed {
            reason: CloseReason::Local(LocalClose::Shutdown),
            ..
        }
    )));
    assert!(w.closed(link, flow), "its origin connection closed with it");
}
