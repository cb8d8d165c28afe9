//! The `/metrics`, `/ready` and `/healthcheck` listener, served by the loop: each connection
//! sends one request head (bounded), gets one response and is closed, as a scraper or a
//! readiness probe expects.

use std::io::{self, Read, Write};
use std::net::SocketAddr;

use std::collections::BTreeMap;

use burrow_core::connector::Connector;
use burrow_core::quic::client_metrics::QuicClientStats;
use burrow_core::session::{DropReason, IndexStats, SessionMethod};
use burrow_core::tunnel::requests::RequestStats;
use burrow_os::exposition::ConnectorFigures;
use mio::net::{TcpListener, TcpStream};

/// Longest request head read; anything longer is answered 431 and closed.
const MAX_HEAD: usize = 4096;

/// A family labelled `conn_index`: name, type, help, and its value in core's counters.
type IndexFamily = (
    &'static str,
    &'static str,
    &'static str,
    fn(&IndexStats) -> u64,
);

/// What the endpoints report, read from the connector by the loop.
#[derive(Debug, Default)]
pub struct Figures {
    /// The connector id (`/ready`'s `connectorId`).
    pub connector_id: String,
    /// Registered connections now.
    pub ready: usize,
    /// HA connections configured.
    pub ha_connections: usize,
    /// What core counted of the proxied requests (`cloudflared_tunnel_total_requests`,
    /// `_concurrent_requests_per_tunnel`, `_request_errors`, `_response_by_code`).
    pub requests: RequestStats,
    /// Echo requests sent (`cloudflared_icmp_total_requests`).
    pub icmp_requests: u64,
    /// Configuration version applied (`cloudflared_orchestration_config_version`).
    pub config_version: i64,
    /// Core's UDP flow and drop counters by HA connection index
    /// (`cloudflared_udp_*_flows{conn_index}`, `cloudflared_udp_dropped_datagrams{conn_index,reason}`).
    pub udp: BTreeMap<u8, IndexStats>,
    /// Core's dropped datagrams of every index by [`DropReason::ALL`] order: what the indexes
    /// do not account for is no connection's (`conn_index=""`).
    pub udp_dropped: [u64; DropReason::ALL.len()],
    /// Core's ICMP drops of every index: what the indexes do not account for is no
    /// connection's (`cloudflared_icmp_dropped_packets{conn_index=""}`).
    pub icmp_dropped: u64,
    /// Core's QUIC figures (`quic_client_*{conn_index}`).
    pub quic: QuicClientStats,
    /// Core's registration, origin dial, flow limit and ICMP reply counts.
    pub connector: ConnectorFigures,
}

impl Figures {
    /// `/ready`: status and cloudflared's JSON.
    fn ready(&self) -> (u16, String) {
        let status = if self.ready > 0 { 200 } else { 503 };
        let body = format!(
            "{{\"status\":{status},\"readyConnections\":{},\"connectorId\":\"{}\"}}",
            self.ready, self.connector_id
        );
        (status, body)
    }

    /// Prometheus text exposition of cloudflared's names for these figures.
    fn metrics(&self) -> String {
        let mut out = String::new();
        let mut metric = |name: &str, kind: &str, help: &str, value: String| {
            out.push_str(&format!(
                "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}\n"
            ));
        };
        metric(
            "cloudflared_tunnel_ha_connections",
            "gauge",
            "Number of active ha connections",
            self.ha_connections.to_string(),
        );
        metric(
            "cloudflared_tunnel_total_requests",
            "counter",
            "Amount of requests proxied through all the tunnels",
            self.requests.total.to_string(),
        );
        metric(
            "cloudflared_tunnel_concurrent_requests_per_tunnel",
            "gauge",
            "Concurrent requests proxied through each tunnel",
            self.requests.in_flight().to_string(),
        );
        metric(
            "cloudflared_tunnel_request_errors",
            "counter",
            "Count of error proxying to origin",
            self.requests.errors.to_string(),
        );
        metric(
            "cloudflared_tcp_total_sessions",
            "counter",
            "Total count of TCP sessions that have been proxied to any origin",
            self.requests.tcp_total.to_string(),
        );
        metric(
            "cloudflared_tcp_active_sessions",
            "gauge",
            "Concurrent count of TCP sessions that are being proxied to any origin",
            self.requests.tcp_active().to_string(),
        );
        metric(
            "cloudflared_icmp_total_requests",
            "counter",
            "Total count of ICMP requests that have been proxied to any origin",
            self.icmp_requests.to_string(),
        );
        // A labelled family: one HELP/TYPE, a line per code seen (none before the first).
        if !self.requests.by_status.is_empty() {
            let name = "cloudflared_tunnel_response_by_code";
            out.push_str(&format!(
                "# HELP {name} Count of responses by HTTP status code\n# TYPE {name} counter\n"
            ));
            for (code, n) in &self.requests.by_status {
                out.push_str(&format!("{name}{{status_code=\"{code}\"}} {n}\n"));
            }
        }
        let mut metric = |name: &str, kind: &str, help: &str, value: String| {
            out.push_str(&format!(
                "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}\n"
            ));
        };
        metric(
            "cloudflared_orchestration_config_version",
            "gauge",
            "Configuration Version",
            self.config_version.to_string(),
        );
        // burrow-tokio's families under the same names, helps and labels.
        let by_index: [IndexFamily; 5] = [
            (
                "cloudflared_udp_active_flows",
                "gauge",
                "Concurrent count of UDP flows that are being proxied to any origin",
                IndexStats::active,
            ),
            (
                "cloudflared_udp_total_flows",
                "counter",
                "Total count of UDP flows that have been proxied to any origin",
                |s| s.total_flows,
            ),
            (
                "cloudflared_udp_failed_flows",
                "counter",
                "Total count of flows that errored and closed",
                |s| s.failed,
            ),
            (
                "cloudflared_udp_retry_flow_responses",
                "counter",
                "Total count of UDP flows that have had to send their registration response more than once",
                |s| s.retries,
            ),
            (
                "cloudflared_udp_migrated_flows",
                "counter",
                "Total count of UDP flows have been migrated across local connections",
                |s| s.migrated,
            ),
        ];
        for (name, kind, help, value) in by_index.iter().filter(|_| !self.udp.is_empty()) {
            out.push_str(&format!("# HELP {name} {help}\n# TYPE {name} {kind}\n"));
            for (index, s) in &self.udp {
                out.push_str(&format!("{name}{{conn_index=\"{index}\"}} {}\n", value(s)));
            }
        }
        self.by_index_and(
            &mut out,
            (
                "cloudflared_udp_dropped_datagrams",
                "Total count of UDP dropped datagrams",
            ),
            ("reason", &DropReason::ALL.map(DropReason::label)),
            |s, i| s.dropped[i],
            &self.udp_dropped,
        );
        // cloudflared counts every ICMP drop as `write_failed`.
        self.by_index_and(
            &mut out,
            (
                "cloudflared_icmp_dropped_packets",
                "Total count of ICMP dropped datagrams",
            ),
            ("reason", &[DropReason::WriteFailed.label()]),
            |s, _| s.icmp_dropped,
            &[self.icmp_dropped],
        );
        self.by_index_and(
            &mut out,
            (
                "cloudflared_udp_unsupported_remote_command_total",
                "Total count of unsupported remote RPC commands called",
            ),
            ("command", &SessionMethod::ALL.map(SessionMethod::label)),
            |s, i| s.unsupported[i],
            &[],
        );
        // The families burrow-tokio renders the same way: registrations, connect latency, flow
        // limit, ICMP replies, QUIC, process, build_info.
        burrow_os::exposition::render(&mut out, &self.quic, &self.connector);
        out
    }

    /// A counter family labelled `conn_index` and `key`: every value of `labels` for each
    /// index (zeros too), then what the indexes do not account for of `totals` under
    /// `conn_index=""`.
    fn by_index_and(
        &self,
        out: &mut String,
        (name, help): (&str, &str),
        (key, labels): (&str, &[&str]),
        at: impl Fn(&IndexStats, usize) -> u64,
        totals: &[u64],
    ) {
        let mut lines = String::new();
        let mut unnamed = totals.to_vec();
        unnamed.resize(labels.len(), 0);
        for (index, s) in &self.udp {
            for (i, (label, rest)) in labels.iter().zip(&mut unnamed).enumerate() {
                let n = at(s, i);
                *rest = rest.saturating_sub(n);
                lines.push_str(&format!(
                    "{name}{{conn_index=\"{index}\",{key}=\"{label}\"}} {n}\n"
                ));
            }
        }
        for (label, n) in labels.iter().zip(unnamed).filter(|(_, n)| *n > 0) {
            lines.push_str(&format!(
                "{name}{{conn_index=\"\",{key}=\"{label}\"}} {n}\n"
            ));
        }
        if !lines.is_empty() {
            out.push_str(&format!(
                "# HELP {name} {help}\n# TYPE {name} counter\n{lines}"
            ));
        }
    }

    /// The response to a request head; `sample` brings the QUIC and connector figures up to
    /// date, called only for `/metrics` (nothing reads the connections while no one scrapes).
    fn respond(
        &mut self,
        head: &[u8],
        sample: impl FnOnce(&mut QuicClientStats, &mut ConnectorFigures),
    ) -> Vec<u8> {
        let mut headers = [httparse::EMPTY_HEADER; 32];
        let mut req = httparse::Request::new(&mut headers);
        let path = match req.parse(head) {
            Ok(_) => req.path.unwrap_or("/"),
            Err(_) => return response(400, "text/plain; charset=utf-8", "bad request\n"),
        };
        match path.split('?').next().unwrap_or("/") {
            "/metrics" => {
                sample(&mut self.quic, &mut self.connector);
                response(
                    200,
                    "text/plain; version=0.0.4; charset=utf-8",
                    &self.metrics(),
                )
            }
            "/ready" => {
                let (status, body) = self.ready();
                response(status, "application/json", &body)
            }
            "/healthcheck" => response(200, "text/plain; charset=utf-8", "OK\n"),
            _ => response(404, "text/plain; charset=utf-8", "404 page not found\n"),
        }
    }
}

fn response(status: u16, ctype: &str, body: &str) -> Vec<u8> {
    let reason = match status {
        200 => "OK",
        400 => "Bad Request",
        404 => "Not Found",
        431 => "Request Header Fields Too Large",
        _ => "Service Unavailable",
    };
    format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

/// Binds `addr`. Only cloudflared's default, exactly `localhost:0`, tries
/// localhost:20241..20245 first.
pub fn bind(addr: &str) -> io::Result<TcpListener> {
    use std::net::ToSocketAddrs;
    let mut tries: Vec<SocketAddr> = Vec::new();
    if addr == "localhost:0" {
        for port in 20241..=20245 {
            tries.extend(("localhost", port).to_socket_addrs()?);
        }
    }
    // A name here is resolved once, before the loop starts.
    tries.extend(addr.to_socket_addrs()?);
    let mut last = io::Error::new(io::ErrorKind::AddrNotAvailable, "no address");
    for a in tries {
        match TcpListener::bind(a) {
            Ok(l) => return Ok(l),
            Err(e) => last = e,
        }
    }
    Err(last)
}

/// One scrape or probe in progress.
pub struct Client {
    stream: TcpStream,
    head: Vec<u8>,
    out: Vec<u8>,
    sent: usize,
}

impl Client {
    /// A fresh connection.
    pub fn new(stream: TcpStream) -> Self {
        Self {
            stream,
            head: Vec::new(),
            out: Vec::new(),
            sent: 0,
        }
    }

    /// The mio source.
    pub fn source(&mut self) -> &mut TcpStream {
        &mut self.stream
    }

    /// Reads and answers what it can; true once done (close it).
    pub fn drive(&mut self, figures: &mut Figures, machine: &Connector) -> bool {
        if self.out.is_empty() {
            let mut buf = [0u8; 1024];
            loop {
                match self.stream.read(&mut buf) {
                    Ok(0) => return true,
                    Ok(n) => {
                        self.head.extend_from_slice(&buf[..n]);
                        if self.head.windows(4).any(|w| w == b"\r\n\r\n") {
                            self.out = figures.respond(&self.head, |q, c| {
                                q.sample(machine);
                                c.update(machine);
                            });
                            break;
                        }
                        if self.head.len() > MAX_HEAD {
                            self.out = response(431, "text/plain; charset=utf-8", "");
                            break;
                        }
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => return false,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(_) => return true,
                }
            }
        }
        while self.sent < self.out.len() {
            match self.stream.write(&self.out[self.sent..]) {
                Ok(n) => self.sent += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return false,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => return true,
            }
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(b: Vec<u8>) -> String {
        String::from_utf8(b).expect("utf8")
    }

    #[test]
    fn ready_follows_registered_connections_with_cloudflareds_json() {
        let mut f = Figures {
            connector_id: "c".into(),
            ..Figures::default()
        };
        let head = b"GET /ready HTTP/1.1\r\nHost: x\r\n\r\n";
        let r = text(f.respond(head, |_, _| {}));
        assert!(r.starts_with("HTTP/1.1 503 "), "{r}");
        assert!(r.ends_with("{\"status\":503,\"readyConnections\":0,\"connectorId\":\"c\"}"));
        f.ready = 4;
        let r = text(f.respond(head, |_, _| {}));
        assert!(r.starts_with("HTTP/1.1 200 OK\r\n"), "{r}");
        assert!(r.contains("\"readyConnections\":4"));
    }

    #[test]
    fn metrics_healthcheck_unknown_paths_and_garbage() {
        let mut f = Figures::default();
        f.requests.total = 7;
        f.requests.ended = 6;
        f.requests.by_status.insert(404, 2);
        let m = text(f.respond(b"GET /metrics?x=1 HTTP/1.1\r\n\r\n", |_, _| {}));
        assert!(m.contains("\ncloudflared_tunnel_total_requests 7\n"), "{m}");
        assert!(
            m.contains("\ncloudflared_tunnel_concurrent_requests_per_tunnel 1\n"),
            "{m}"
        );
        assert!(
            m.contains("\ncloudflared_tunnel_response_by_code{status_code=\"404\"} 2\n"),
            "{m}"
        );
        // Drops by index, and those of no connection's under an empty index.
        let mut zero = IndexStats::default();
        zero.dropped[DropReason::TooLarge as usize] = 2;
        f.udp.insert(0, zero);
        f.udp_dropped[DropReason::TooLarge as usize] = 3;
        let m = text(f.respond(b"GET /metrics HTTP/1.1\r\n\r\n", |_, _| {}));
        for line in [
            "\ncloudflared_udp_dropped_datagrams{conn_index=\"0\",reason=\"read_too_large\"} 2\n",
            "\ncloudflared_udp_dropped_datagrams{conn_index=\"0\",reason=\"write_failed\"} 0\n",
            "\ncloudflared_udp_dropped_datagrams{conn_index=\"\",reason=\"read_too_large\"} 1\n",
        ] {
            assert!(m.contains(line), "{line} missing in {m}");
        }
        assert!(
            !m.contains("conn_index=\"\",reason=\"write_failed\""),
            "{m}"
        );
        // ICMP drops and refused v2 calls by index.
        let at = f.udp.get_mut(&0).expect("index 0");
        at.icmp_dropped = 4;
        at.unsupported[SessionMethod::Unregister as usize] = 1;
        f.icmp_dropped = 5;
        let m = text(f.respond(b"GET /metrics HTTP/1.1\r\n\r\n", |_, _| {}));
        for line in [
            "\ncloudflared_icmp_dropped_packets{conn_index=\"0\",reason=\"write_failed\"} 4\n",
            "\ncloudflared_icmp_dropped_packets{conn_index=\"\",reason=\"write_failed\"} 1\n",
            "\ncloudflared_udp_unsupported_remote_command_total{conn_index=\"0\",command=\"register_udp_session\"} 0\n",
            "\ncloudflared_udp_unsupported_remote_command_total{conn_index=\"0\",command=\"unregister_udp_session\"} 1\n",
        ] {
            assert!(m.contains(line), "{line} missing in {m}");
        }
        assert!(
            text(f.respond(b"GET /healthcheck HTTP/1.1\r\n\r\n", |_, _| {}))
                .ends_with("\r\n\r\nOK\n")
        );
        assert!(
            text(f.respond(b"GET /nope HTTP/1.1\r\n\r\n", |_, _| {})).starts_with("HTTP/1.1 404 ")
        );
        assert!(text(f.respond(b"\xff\xfe\r\n\r\n", |_, _| {})).starts_with("HTTP/1.1 400 "));
    }
}
