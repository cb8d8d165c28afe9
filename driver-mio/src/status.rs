//! The `/metrics`, `/ready` and `/healthcheck` listener, served by the loop: each connection
//! sends one request head (bounded), gets one response and is closed, as a scraper or a
//! readiness probe expects.

use std::io::{self, Read, Write};
use std::net::SocketAddr;

use burrow_core::connector::Connector;
use burrow_core::quic::client_metrics::QuicClientStats;
use burrow_os::exposition::ConnectorFigures;
use mio::net::{TcpListener, TcpStream};

/// Longest request head read; anything longer is answered 431 and closed.
const MAX_HEAD: usize = 4096;

/// What the endpoints report, read from the connector by the loop.
#[derive(Debug, Default)]
pub struct Figures {
    /// The connector id (`/ready`'s `connectorId`).
    pub connector_id: String,
    /// Registered connections now.
    pub ready: usize,
    /// Core's QUIC figures (`quic_client_*{conn_index}`).
    pub quic: QuicClientStats,
    /// Every other family's figures, from core's counters (and the driver's ICMP requests and
    /// configuration version).
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

    /// The exposition of the connector's figures now (the management service's `/metrics`).
    pub fn exposition(&mut self, machine: &Connector) -> String {
        self.quic.sample(machine);
        self.connector.update(machine);
        self.metrics()
    }

    /// Prometheus text exposition of cloudflared's names for these figures, rendered as
    /// burrow-tokio renders them.
    fn metrics(&self) -> String {
        let mut out = String::new();
        burrow_os::exposition::render(&mut out, &self.quic, &self.connector);
        out
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
    use burrow_core::session::{DropReason, IndexStats, SessionMethod};

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
        f.connector.requests.total = 7;
        f.connector.requests.ended = 6;
        f.connector.requests.by_status.insert(404, 2);
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
        f.connector.udp.insert(0, zero);
        f.connector.udp_dropped[DropReason::TooLarge as usize] = 3;
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
        let at = f.connector.udp.get_mut(&0).expect("index 0");
        at.icmp_dropped = 4;
        at.unsupported[SessionMethod::Unregister as usize] = 1;
        f.connector.icmp_dropped = 5;
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
