//! The metrics and readiness server (PROTOCOL.md C§6): `/metrics` in Prometheus text with
//! cloudflared's metric names, `/ready` with cloudflared's JSON, `/healthcheck`.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicI64, AtomicUsize, Ordering};
use std::sync::Arc;

use burrow_core::quic::client_metrics::QuicClientStats;
use burrow_os::exposition::ConnectorFigures;
use bytes::Bytes;
use http_body_util::Full;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tracing::{info, warn};

/// What `/metrics` and `/ready` report: the connector loop updates the figures, the server's
/// tasks render them (with burrow-mio's code, [`burrow_os::exposition`]).
pub struct Metrics {
    /// `quic_client_*`, per `conn_index`.
    quic: std::sync::Mutex<QuicClientStats>,
    /// Every other family's figures: core's counters, the ping sockets' echo requests, the
    /// configuration version.
    connector: std::sync::Mutex<ConnectorFigures>,
    /// Registered connections, for `/ready`.
    pub ready: AtomicUsize,
    /// Signalled at each registration; the first wakes the `--pidfile` writer.
    pub registered: tokio::sync::Notify,
    /// Kept for `/ready`'s connectorId.
    pub connector_id: uuid::Uuid,
    /// Flows open now (not exported; a sanity counter for tests).
    pub open_flows: AtomicI64,
}

impl Metrics {
    /// A fresh set.
    pub fn new(connector_id: uuid::Uuid) -> Arc<Self> {
        Arc::new(Metrics {
            quic: std::sync::Mutex::default(),
            connector: std::sync::Mutex::default(),
            ready: AtomicUsize::new(0),
            registered: tokio::sync::Notify::new(),
            connector_id,
            open_flows: AtomicI64::new(0),
        })
    }

    /// The connector's figures, for the connector loop to update.
    pub fn connector(&self) -> std::sync::MutexGuard<'_, ConnectorFigures> {
        self.connector
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Prometheus text exposition, as burrow-mio renders it.
    pub fn render(&self) -> String {
        let mut out = String::new();
        // The loop never holds both locks.
        burrow_os::exposition::render(&mut out, &self.quic(), &self.connector());
        out
    }

    /// The QUIC figures, for the connector loop to update.
    pub fn quic(&self) -> std::sync::MutexGuard<'_, QuicClientStats> {
        self.quic
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// `/ready`: status and body.
    pub fn ready_json(&self) -> (u16, String) {
        let n = self.ready.load(Ordering::Relaxed);
        let status = if n > 0 { 200 } else { 503 };
        (
            status,
            serde_json::json!({
                "status": status,
                "readyConnections": n,
                "connectorId": self.connector_id.to_string(),
            })
            .to_string(),
        )
    }
}

/// Binds `addr`. Only cloudflared's default, exactly `localhost:0`, tries localhost:20241..20245
/// first; any other address (`127.0.0.1:0` too) is bound as given.
pub async fn bind(addr: &str) -> std::io::Result<TcpListener> {
    if addr == "localhost:0" {
        for port in 20241..=20245 {
            if let Ok(l) = TcpListener::bind(("localhost", port)).await {
                return Ok(l);
            }
        }
    }
    TcpListener::bind(addr).await
}

/// Serves the metrics endpoints on `listener` until the task is dropped.
pub async fn serve(listener: TcpListener, metrics: Arc<Metrics>) {
    let addr: Option<SocketAddr> = listener.local_addr().ok();
    info!(addr = ?addr, "Starting metrics server on {}/metrics", addr.map(|a| a.to_string()).unwrap_or_default());
    loop {
        let (stream, _) = crate::accept::accept(&listener, "metrics").await;
        let m = metrics.clone();
        tokio::spawn(async move {
            let svc = service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                let m = m.clone();
                async move {
                    let (status, ctype, body) = match req.uri().path() {
                        "/metrics" => (200, "text/plain; version=0.0.4; charset=utf-8", m.render()),
                        "/ready" => {
                            let (s, b) = m.ready_json();
                            (s, "application/json", b)
                        }
                        "/healthcheck" => (200, "text/plain; charset=utf-8", "OK\n".into()),
                        _ => (
                            404,
                            "text/plain; charset=utf-8",
                            "404 page not found\n".into(),
                        ),
                    };
                    let mut resp = hyper::Response::new(Full::new(Bytes::from(body)));
                    *resp.status_mut() =
                        http::StatusCode::from_u16(status).unwrap_or(http::StatusCode::OK);
                    resp.headers_mut().insert(
                        http::header::CONTENT_TYPE,
                        http::HeaderValue::from_static(ctype),
                    );
                    Ok::<_, std::convert::Infallible>(resp)
                }
            });
            if let Err(e) = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), svc)
                .await
            {
                warn!(error = %e, "metrics connection failed");
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burrow_core::datagram::{v3, LinkId};
    use burrow_core::icmp::{IcmpRouter, RouterConfig};
    use burrow_core::session::{DatagramVersion, SessionId, SessionLimits, SessionManager};
    use burrow_core::tunnel::udp::DatagramHub;
    use std::time::Instant;

    #[tokio::test]
    async fn udp_counters_are_exported_under_cloudflared_names() {
        let m = Metrics::new(uuid::Uuid::nil());
        let mut hub = DatagramHub::new(
            SessionManager::new(SessionLimits::default()),
            IcmpRouter::new(RouterConfig::default()),
        );
        // A payload for a session nobody registered.
        let p = v3::Payload {
            request_id: SessionId(9),
            payload: b"x",
        };
        let mut d = vec![0; p.encoded_len()];
        p.encode(&mut d).expect("encode");
        hub.sessions
            .handle_datagram(Instant::now(), LinkId(0), DatagramVersion::V3, &d);
        let unknown = d.clone();
        m.connector().update_datagrams(&hub);
        m.connector().update_datagrams(&hub);
        let text = m.render();
        // LinkId(0) is no connection's: the empty index.
        assert!(
            text.contains(
                "cloudflared_udp_dropped_datagrams{conn_index=\"\",reason=\"write_flow_unknown\"} 1"
            ),
            "{text}"
        );
        m.connector().flows = burrow_core::flow::FlowStats {
            limit: 1,
            active: 1,
            rejected: [2, 1],
        };
        let text = m.render();
        for line in [
            "flow_client_registrations_rate_limited_total{flow_type=\"tcp\"} 2",
            "flow_client_registrations_rate_limited_total{flow_type=\"udp\"} 1",
        ] {
            assert!(text.contains(line), "{line} missing in\n{text}");
        }
        for name in [
            "cloudflared_icmp_total_requests 0",
            "cloudflared_icmp_total_replies 0",
        ] {
            assert!(text.contains(name), "{name} missing");
        }
        // A session registered and opened on the connection of HA index 2.
        hub.sessions.set_link_index(LinkId(7), 2);
        let r = v3::Registration {
            request_id: SessionId(5),
            dest: "127.0.0.1:53".parse().expect("addr"),
            traced: false,
            idle_hint_secs: 0,
            payload: b"",
        };
        let mut d = vec![0; r.encoded_len()];
        r.encode(&mut d).expect("encode");
        hub.sessions
            .handle_datagram(Instant::now(), LinkId(7), DatagramVersion::V3, &d);
        while let Some(a) = hub.sessions.poll_action() {
            if let burrow_core::session::SessionAction::Open { flow, .. } = a {
                hub.sessions.handle_origin_opened(Instant::now(), flow);
            }
        }
        // One more unknown payload, now on index 2's connection; an ICMP drop and a refused
        // v2 call there too.
        hub.sessions
            .handle_datagram(Instant::now(), LinkId(7), DatagramVersion::V3, &unknown);
        hub.sessions.count_icmp_dropped(Some(LinkId(7)));
        hub.sessions
            .count_unsupported(LinkId(7), burrow_core::session::SessionMethod::Register);
        m.connector().update_datagrams(&hub);
        let text = m.render();
        for line in [
            "cloudflared_udp_dropped_datagrams{conn_index=\"2\",reason=\"write_flow_unknown\"} 1",
            "cloudflared_udp_dropped_datagrams{conn_index=\"\",reason=\"write_flow_unknown\"} 1",
            "cloudflared_udp_active_flows{conn_index=\"2\"} 1",
            "cloudflared_udp_total_flows{conn_index=\"2\"} 1",
            "cloudflared_udp_migrated_flows{conn_index=\"2\"} 0",
            "cloudflared_icmp_dropped_packets{conn_index=\"2\",reason=\"write_failed\"} 1",
            "cloudflared_udp_unsupported_remote_command_total{conn_index=\"2\",command=\"register_udp_session\"} 1",
            "cloudflared_udp_unsupported_remote_command_total{conn_index=\"2\",command=\"unregister_udp_session\"} 0",
        ] {
            assert!(text.contains(line), "{line} missing in\n{text}");
        }
    }
}
