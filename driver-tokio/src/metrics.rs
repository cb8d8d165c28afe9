//! The metrics and readiness server (PROTOCOL.md C§6): `/metrics` in Prometheus text with
//! cloudflared's metric names, `/ready` with cloudflared's JSON, `/healthcheck`.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicI64, AtomicUsize, Ordering};
use std::sync::Arc;

use burrow_core::session::{DropReason, SessionMethod};
use burrow_core::tunnel::requests::RequestStats;
use burrow_core::tunnel::udp::DatagramHub;
use bytes::Bytes;
use http_body_util::Full;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use prometheus::{
    Encoder, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry, TextEncoder,
};
use tokio::net::TcpListener;
use tracing::{info, warn};

use burrow_core::quic::client_metrics::QuicClientStats;
use burrow_os::exposition::ConnectorFigures;

/// Every metric the connector keeps. The `prometheus` crate keeps names verbatim, so
/// cloudflared's counters (which have no `_total` suffix) keep their names.
pub struct Metrics {
    registry: Registry,
    /// `cloudflared_tunnel_ha_connections`.
    pub ha_connections: IntGauge,
    /// `cloudflared_tunnel_total_requests`.
    pub total_requests: IntCounter,
    /// `cloudflared_tunnel_concurrent_requests_per_tunnel`.
    pub concurrent_requests: IntGauge,
    /// `cloudflared_tunnel_request_errors`.
    pub request_errors: IntCounter,
    /// `cloudflared_tunnel_response_by_code{status_code}`.
    pub response_by_code: IntCounterVec,
    /// Requests ended as of the last copy of the by-code counts (they change only then).
    requests_ended: std::sync::atomic::AtomicU64,
    /// `cloudflared_orchestration_config_version`.
    pub config_version: IntGauge,
    /// `cloudflared_tcp_active_sessions`.
    pub tcp_active: IntGauge,
    /// `cloudflared_tcp_total_sessions`.
    pub tcp_total: IntCounter,
    /// `cloudflared_udp_active_flows{conn_index}`: UDP sessions (v2 and v3) open now, under the
    /// index they registered on.
    pub udp_active_flows: IntGaugeVec,
    /// `cloudflared_udp_total_flows{conn_index}`.
    pub udp_total_flows: IntCounterVec,
    /// `cloudflared_udp_failed_flows{conn_index}`.
    pub udp_failed_flows: IntCounterVec,
    /// `cloudflared_udp_retry_flow_responses{conn_index}`.
    pub udp_retry_flow_responses: IntCounterVec,
    /// `cloudflared_udp_migrated_flows{conn_index}`.
    pub udp_migrated_flows: IntCounterVec,
    /// The sum of the by-index flow counts as of the last copy.
    udp_by_index_seen: std::sync::atomic::AtomicU64,
    /// `cloudflared_udp_dropped_datagrams{conn_index,reason}`: core's drop counts by HA index
    /// and [`DropReason`] (cloudflared's reasons where they exist); a drop no connection can
    /// be named for has an empty `conn_index`.
    pub udp_dropped: IntCounterVec,
    /// `cloudflared_icmp_dropped_packets{conn_index,reason}`: ICMP packets from the edge not
    /// proxied; every one is `write_failed`, as in cloudflared (burrow has no queue to be full).
    pub icmp_dropped: IntCounterVec,
    /// `cloudflared_udp_unsupported_remote_command_total{conn_index,command}`: datagram-v2
    /// session calls refused on v3 connections.
    pub udp_unsupported: IntCounterVec,
    /// `cloudflared_icmp_total_requests`: echo requests sent through ping sockets.
    pub icmp_total_requests: IntCounter,
    /// `quic_client_*`, per `conn_index` (rendered by [`burrow_os::exposition`]).
    quic: std::sync::Mutex<QuicClientStats>,
    /// Core's registration, origin dial, flow limit and ICMP reply counts (rendered by
    /// [`burrow_os::exposition`]).
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

fn gauge(r: &Registry, name: &str, help: &str) -> IntGauge {
    let g = IntGauge::new(name, help)
        .unwrap_or_else(|_| IntGauge::new("invalid", "x").expect("static"));
    let _ = r.register(Box::new(g.clone()));
    g
}

/// Brings a counter up to `value` (the source counts; the metric follows).
fn follow(c: &IntCounter, value: u64) {
    c.inc_by(value.saturating_sub(c.get()));
}

/// A family labelled `conn_index`, as cloudflared's UDP flow metrics (counter or gauge).
fn by_index<T: prometheus::core::Collector + Clone + FromOpts + 'static>(
    r: &Registry,
    name: &str,
    help: &str,
) -> T {
    labelled(r, name, help, &["conn_index"])
}

/// A family with `labels`, registered in `r`.
fn labelled<T: prometheus::core::Collector + Clone + FromOpts + 'static>(
    r: &Registry,
    name: &str,
    help: &str,
    labels: &[&str],
) -> T {
    let v = T::from_opts(Opts::new(name, help), labels);
    let _ = r.register(Box::new(v.clone()));
    v
}

/// Builds a labelled family from static options.
trait FromOpts: Sized {
    fn from_opts(opts: Opts, labels: &[&str]) -> Self;
}

impl FromOpts for IntCounterVec {
    fn from_opts(opts: Opts, labels: &[&str]) -> Self {
        IntCounterVec::new(opts, labels).expect("static metric")
    }
}

impl FromOpts for IntGaugeVec {
    fn from_opts(opts: Opts, labels: &[&str]) -> Self {
        IntGaugeVec::new(opts, labels).expect("static metric")
    }
}

fn counter(r: &Registry, name: &str, help: &str) -> IntCounter {
    let c = IntCounter::new(name, help)
        .unwrap_or_else(|_| IntCounter::new("invalid", "x").expect("static"));
    let _ = r.register(Box::new(c.clone()));
    c
}

impl Metrics {
    /// A fresh set, registered under cloudflared's names.
    pub fn new(connector_id: uuid::Uuid) -> Arc<Self> {
        let r = Registry::new();
        let response_by_code = IntCounterVec::new(
            Opts::new(
                "cloudflared_tunnel_response_by_code",
                "Count of responses by HTTP status code",
            ),
            &["status_code"],
        )
        .expect("static metric");
        let _ = r.register(Box::new(response_by_code.clone()));
        Arc::new(Metrics {
            ha_connections: gauge(
                &r,
                "cloudflared_tunnel_ha_connections",
                "Number of active ha connections",
            ),
            total_requests: counter(
                &r,
                "cloudflared_tunnel_total_requests",
                "Amount of requests proxied through all the tunnels",
            ),
            concurrent_requests: gauge(
                &r,
                "cloudflared_tunnel_concurrent_requests_per_tunnel",
                "Concurrent requests proxied through each tunnel",
            ),
            request_errors: counter(
                &r,
                "cloudflared_tunnel_request_errors",
                "Count of error proxying to origin",
            ),
            response_by_code,
            requests_ended: std::sync::atomic::AtomicU64::new(0),
            config_version: gauge(
                &r,
                "cloudflared_orchestration_config_version",
                "Configuration Version",
            ),
            tcp_active: gauge(
                &r,
                "cloudflared_tcp_active_sessions",
                "Concurrent count of TCP sessions that are being proxied to any origin",
            ),
            tcp_total: counter(
                &r,
                "cloudflared_tcp_total_sessions",
                "Total count of TCP sessions that have been proxied to any origin",
            ),
            udp_active_flows: by_index(
                &r,
                "cloudflared_udp_active_flows",
                "Concurrent count of UDP flows that are being proxied to any origin",
            ),
            udp_total_flows: by_index(
                &r,
                "cloudflared_udp_total_flows",
                "Total count of UDP flows that have been proxied to any origin",
            ),
            udp_failed_flows: by_index(
                &r,
                "cloudflared_udp_failed_flows",
                "Total count of flows that errored and closed",
            ),
            udp_retry_flow_responses: by_index(
                &r,
                "cloudflared_udp_retry_flow_responses",
                "Total count of UDP flows that have had to send their registration response more than once",
            ),
            udp_migrated_flows: by_index(
                &r,
                "cloudflared_udp_migrated_flows",
                "Total count of UDP flows have been migrated across local connections",
            ),
            udp_by_index_seen: std::sync::atomic::AtomicU64::new(0),
            udp_dropped: labelled(
                &r,
                "cloudflared_udp_dropped_datagrams",
                "Total count of UDP dropped datagrams",
                &["conn_index", "reason"],
            ),
            icmp_dropped: labelled(
                &r,
                "cloudflared_icmp_dropped_packets",
                "Total count of ICMP dropped datagrams",
                &["conn_index", "reason"],
            ),
            udp_unsupported: labelled(
                &r,
                "cloudflared_udp_unsupported_remote_command_total",
                "Total count of unsupported remote RPC commands called",
                &["conn_index", "command"],
            ),
            icmp_total_requests: counter(
                &r,
                "cloudflared_icmp_total_requests",
                "Total count of ICMP requests that have been proxied to any origin",
            ),
            quic: std::sync::Mutex::default(),
            connector: std::sync::Mutex::default(),
            ready: AtomicUsize::new(0),
            registered: tokio::sync::Notify::new(),
            connector_id,
            open_flows: AtomicI64::new(0),
            registry: r,
        })
    }

    /// Copies the datagram plane's counters (core counts every drop, by connection).
    pub fn update_datagrams(&self, hub: &DatagramHub) {
        let s = hub.sessions.stats();
        // The labelled families change only with these counts: skip their look-ups otherwise.
        let seen: u64 = hub
            .sessions
            .index_stats()
            .values()
            .map(|a| {
                a.total_flows
                    + a.ended
                    + a.failed
                    + a.retries
                    + a.migrated
                    + a.icmp_dropped
                    + a.unsupported.iter().sum::<u64>()
            })
            .chain(s.dropped)
            .chain([s.icmp_dropped])
            .sum();
        if self.udp_by_index_seen.swap(seen, Ordering::Relaxed) == seen {
            return;
        }
        let mut named = [0u64; DropReason::ALL.len()];
        let mut icmp_named = 0;
        for (index, at) in hub.sessions.index_stats() {
            let label = [index.to_string()];
            let label = [label[0].as_str()];
            self.udp_active_flows
                .with_label_values(&label)
                .set(at.active() as i64);
            follow(
                &self.udp_total_flows.with_label_values(&label),
                at.total_flows,
            );
            follow(&self.udp_failed_flows.with_label_values(&label), at.failed);
            follow(
                &self.udp_retry_flow_responses.with_label_values(&label),
                at.retries,
            );
            follow(
                &self.udp_migrated_flows.with_label_values(&label),
                at.migrated,
            );
            icmp_named += at.icmp_dropped;
            follow(
                &self
                    .icmp_dropped
                    .with_label_values(&[label[0], DropReason::WriteFailed.label()]),
                at.icmp_dropped,
            );
            for (m, n) in SessionMethod::ALL.iter().zip(at.unsupported) {
                follow(
                    &self
                        .udp_unsupported
                        .with_label_values(&[label[0], m.label()]),
                    n,
                );
            }
            // Every reason of an index with sessions, zeros too (a rate starts from 0).
            for ((r, n), sum) in DropReason::ALL.iter().zip(at.dropped).zip(&mut named) {
                *sum += n;
                follow(
                    &self.udp_dropped.with_label_values(&[label[0], r.label()]),
                    n,
                );
            }
        }
        // Drops of no connection's (a session or link already gone).
        if s.icmp_dropped > icmp_named {
            follow(
                &self
                    .icmp_dropped
                    .with_label_values(&["", DropReason::WriteFailed.label()]),
                s.icmp_dropped - icmp_named,
            );
        }
        for ((r, n), sum) in DropReason::ALL.iter().zip(s.dropped).zip(named) {
            if n > sum {
                follow(
                    &self.udp_dropped.with_label_values(&["", r.label()]),
                    n - sum,
                );
            }
        }
    }

    /// Copies what core counted of the proxied requests (cloudflared's `proxy/metrics.go`).
    pub fn update_requests(&self, stats: &RequestStats) {
        follow(&self.total_requests, stats.total);
        follow(&self.request_errors, stats.errors);
        follow(&self.tcp_total, stats.tcp_total);
        self.concurrent_requests.set(stats.in_flight() as i64);
        self.tcp_active.set(stats.tcp_active() as i64);
        // Codes only change when a request ends: skip the label look-ups otherwise.
        if self.requests_ended.swap(stats.ended, Ordering::Relaxed) != stats.ended {
            for (code, n) in &stats.by_status {
                follow(
                    &self
                        .response_by_code
                        .with_label_values(&[&code.to_string()]),
                    *n,
                );
            }
        }
    }

    /// The connector's figures for the families both drivers render alike, for the connector
    /// loop to update.
    pub fn connector(&self) -> std::sync::MutexGuard<'_, ConnectorFigures> {
        self.connector
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Prometheus text exposition: the registry's families, then those both drivers render
    /// alike (registrations, connect latency, flow limit, ICMP replies, `quic_client_*`,
    /// `process_*`, `build_info`).
    pub fn render(&self) -> String {
        let mut out = Vec::new();
        if TextEncoder::new()
            .encode(&self.registry.gather(), &mut out)
            .is_err()
        {
            out.clear();
        }
        let mut out = String::from_utf8(out).unwrap_or_default();
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
        m.update_datagrams(&hub);
        m.update_datagrams(&hub);
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
        m.update_datagrams(&hub);
        let text = m.render();
        for line in [
            "cloudflared_udp_dropped_datagrams{conn_index=\"2\",reason=\"write_flow_unknown\"} 1",
            "cloudflared_udp_dropped_datagrams{conn_index=\"\",reason=\"write_flow_unknown\"} 1",
            "cloudflared_udp_active_flows{conn_index=\"2\"} 1",
            "cloudflared_udp_total_flows{conn_index=\"2\"} 1",
            "cloudflared_udp_migrated_flows{conn_index=\"2\"} 0",
            "cloudflared_icmp_dropped_packets{conn_index=\"2\",reason=\"write_failed\"} 1",
            "cloudflared_udp_unsupported_remote_command_total{command=\"register_udp_session\",conn_index=\"2\"} 1",
            "cloudflared_udp_unsupported_remote_command_total{command=\"unregister_udp_session\",conn_index=\"2\"} 0",
        ] {
            assert!(text.contains(line), "{line} missing in\n{text}");
        }
    }
}
