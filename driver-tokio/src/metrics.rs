//! The metrics and readiness server (PROTOCOL.md C§6): `/metrics` in Prometheus text with
//! cloudflared's metric names, `/ready` with cloudflared's JSON, `/healthcheck`.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicI64, AtomicUsize, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::Full;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use prometheus::{
    Encoder, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry, TextEncoder,
};
use tokio::net::TcpListener;
use tracing::{info, warn};

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
    /// `cloudflared_tunnel_tunnel_register_success{rpcName}`.
    pub register_success: IntCounterVec,
    /// `cloudflared_tunnel_tunnel_register_fail{error,rpcName}`.
    pub register_fail: IntCounterVec,
    /// `cloudflared_tunnel_server_locations{connection_id,edge_location}`.
    pub server_locations: IntGaugeVec,
    /// `cloudflared_orchestration_config_version`.
    pub config_version: IntGauge,
    /// `cloudflared_tcp_active_sessions`.
    pub tcp_active: IntGauge,
    /// `cloudflared_tcp_total_sessions`.
    pub tcp_total: IntCounter,
    /// Registered connections, for `/ready`.
    pub ready: AtomicUsize,
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
        let register_success = IntCounterVec::new(
            Opts::new(
                "cloudflared_tunnel_tunnel_register_success",
                "Count of successful tunnel registrations",
            ),
            &["rpcName"],
        )
        .expect("static metric");
        let register_fail = IntCounterVec::new(
            Opts::new(
                "cloudflared_tunnel_tunnel_register_fail",
                "Count of tunnel registration errors by type",
            ),
            &["error", "rpcName"],
        )
        .expect("static metric");
        let server_locations = IntGaugeVec::new(
            Opts::new(
                "cloudflared_tunnel_server_locations",
                "Where each tunnel is connected to. 1 means current location, 0 means previous locations.",
            ),
            &["connection_id", "edge_location"],
        )
        .expect("static metric");
        let _ = r.register(Box::new(register_success.clone()));
        let _ = r.register(Box::new(register_fail.clone()));
        let _ = r.register(Box::new(server_locations.clone()));
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
                "Amount of errors proxying requests",
            ),
            register_success,
            register_fail,
            server_locations,
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
            ready: AtomicUsize::new(0),
            connector_id,
            open_flows: AtomicI64::new(0),
            registry: r,
        })
    }

    /// Prometheus text exposition.
    pub fn render(&self) -> String {
        let mut out = Vec::new();
        if TextEncoder::new()
            .encode(&self.registry.gather(), &mut out)
            .is_err()
        {
            out.clear();
        }
        String::from_utf8(out).unwrap_or_default()
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

/// Binds `addr` (cloudflared's default `localhost:0` tries 20241..20245 first).
pub async fn bind(addr: &str) -> std::io::Result<TcpListener> {
    if addr == "localhost:0" || addr == "127.0.0.1:0" {
        for port in 20241..=20245 {
            if let Ok(l) = TcpListener::bind(("127.0.0.1", port)).await {
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
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
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
