//! Origin dial and TLS handshake deadlines: cloudflared's `connectTimeout` and `tlsTimeout`
//! per rule, and `warp-routing.connectTimeout` ([`TCP_DIAL_TIMEOUT`] without it) for
//! private-network TCP. They run on the connector's
//! timers, so every driver gets them and a driver's dial needs no clock of its own: the
//! driver reports the connect (`Input::FlowHandshaking`) and the end of the handshake, and a
//! dial past its deadline fails as a failed dial does and is closed.

use std::time::{Duration, Instant};

use thiserror::Error;

use crate::ingress::{Origin, Service};
use crate::stream::proxy::FlowKind;

/// Dial timeout of private-network TCP flows without `warp-routing.connectTimeout`
/// (cloudflared's `defaultWarpRoutingConnectTimeout`).
pub const TCP_DIAL_TIMEOUT: Duration = Duration::from_secs(5);

/// An origin connection that did not come up in time. Its text goes into the 502 the edge
/// relays, in Go's words.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum OriginTimeout {
    /// The TCP or unix-socket connect (name resolution included) took too long.
    #[error("dial {network} {target}: i/o timeout")]
    Dial {
        /// `tcp` or `unix`.
        network: &'static str,
        /// What was dialled: `host:port` or a socket path.
        target: String,
    },
    /// The TLS handshake with the origin took too long.
    #[error("TLS handshake timeout")]
    TlsHandshake,
}

/// Where a flow's dial is and when it gives up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Dial {
    /// None: the phase has no deadline (a zero timeout, or an in-process origin).
    deadline: Option<Instant>,
    handshaking: bool,
    /// A dial the flow's in-process origin makes of its own ([`Dial::destination`]): its
    /// expiry aborts that dial, and the flow lives on.
    destination: bool,
    network: &'static str,
    target: String,
    tls_timeout: Duration,
}

impl Dial {
    /// The dial of a flow opened at `now`; private-network TCP flows (and requests no rule
    /// resolved) wait `tcp_timeout`.
    pub(crate) fn start(
        now: Instant,
        kind: FlowKind,
        dest: &str,
        origin: Option<&Origin>,
        tcp_timeout: Duration,
    ) -> Self {
        let (network, target, connect, tls_timeout) = match (kind, origin) {
            (FlowKind::Tcp, _) | (_, None) => ("tcp", dest.to_owned(), tcp_timeout, Duration::ZERO),
            (_, Some(o)) => {
                let r = &o.origin_request;
                match &o.service {
                    Service::Http { host, port, .. }
                    | Service::Tcp {
                        host,
                        port: Some(port),
                    } => {
                        let target = if host.contains(':') && !host.starts_with('[') {
                            format!("[{host}]:{port}")
                        } else {
                            format!("{host}:{port}")
                        };
                        ("tcp", target, r.connect_timeout, r.tls_timeout)
                    }
                    Service::Unix { path, .. } => {
                        ("unix", path.clone(), r.connect_timeout, r.tls_timeout)
                    }
                    // In process (or refused before any dial): nothing to wait for.
                    _ => ("tcp", String::new(), Duration::ZERO, Duration::ZERO),
                }
            }
        };
        Self {
            deadline: after(now, connect),
            handshaking: false,
            destination: false,
            network,
            target,
            tls_timeout,
        }
    }

    /// The dial a connected flow's in-process origin (a `socks-proxy` rule's SOCKS5 server)
    /// makes of the destination its client named, begun at `now`: the rule's
    /// `connectTimeout` (cloudflared's SOCKS dialer has none; burrow bounds it by the rule's).
    pub(crate) fn destination(now: Instant, origin: Option<&Origin>) -> Self {
        let connect = origin.map_or(Duration::ZERO, |o| o.origin_request.connect_timeout);
        Self {
            deadline: after(now, connect),
            handshaking: false,
            destination: true,
            network: "tcp",
            target: String::new(),
            tls_timeout: Duration::ZERO,
        }
    }

    /// Whether its expiry aborts a destination dial ([`Dial::destination`]) rather than fails
    /// the flow.
    pub(crate) fn is_destination(&self) -> bool {
        self.destination
    }

    /// The connect is done and the TLS handshake begins: its own deadline from `now`.
    pub(crate) fn on_handshaking(&mut self, now: Instant) {
        self.handshaking = true;
        self.deadline = after(now, self.tls_timeout);
    }

    /// When this phase gives up.
    pub(crate) fn deadline(&self) -> Option<Instant> {
        self.deadline
    }

    /// Why it gave up, once its deadline passed.
    pub(crate) fn expired(&self, now: Instant) -> Option<OriginTimeout> {
        if self.deadline.is_none_or(|d| now < d) {
            return None;
        }
        Some(if self.handshaking {
            OriginTimeout::TlsHandshake
        } else {
            OriginTimeout::Dial {
                network: self.network,
                target: self.target.clone(),
            }
        })
    }
}

/// `now + timeout`; a zero timeout is none, as Go's dialer and TLS handshake read it.
fn after(now: Instant, timeout: Duration) -> Option<Instant> {
    (!timeout.is_zero()).then(|| now + timeout)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ingress::OriginRequest;
    use std::sync::Arc;

    fn origin(service: Service, connect: u64, tls: u64) -> Arc<Origin> {
        Arc::new(Origin {
            service,
            origin_request: OriginRequest {
                connect_timeout: Duration::from_secs(connect),
                tls_timeout: Duration::from_secs(tls),
                ..OriginRequest::default()
            },
        })
    }

    #[test]
    fn a_dial_fails_at_its_connect_timeout_then_the_handshake_at_its_own() {
        let t0 = Instant::now();
        let https = Service::Http {
            tls: true,
            host: "origin.test".into(),
            port: 8443,
        };
        let o = origin(https, 30, 10);
        let mut d = Dial::start(
            t0,
            FlowKind::Http,
            "https://app.test/",
            Some(&o),
            TCP_DIAL_TIMEOUT,
        );
        assert_eq!(d.deadline(), Some(t0 + Duration::from_secs(30)));
        assert_eq!(d.expired(t0 + Duration::from_secs(29)), None);
        assert_eq!(
            d.expired(t0 + Duration::from_secs(30)),
            Some(OriginTimeout::Dial {
                network: "tcp",
                target: "origin.test:8443".into()
            })
        );
        assert_eq!(
            d.expired(t0 + Duration::from_secs(30)).unwrap().to_string(),
            "dial tcp origin.test:8443: i/o timeout"
        );
        let t1 = t0 + Duration::from_secs(5);
        d.on_handshaking(t1);
        assert_eq!(d.deadline(), Some(t1 + Duration::from_secs(10)));
        assert_eq!(d.expired(t0 + Duration::from_secs(14)), None);
        assert_eq!(
            d.expired(t1 + Duration::from_secs(10)),
            Some(OriginTimeout::TlsHandshake)
        );
    }

    #[test]
    fn private_tcp_waits_its_own_timeout_and_zero_or_in_process_waits_for_nothing() {
        let t0 = Instant::now();
        let d = Dial::start(t0, FlowKind::Tcp, "10.0.0.1:22", None, TCP_DIAL_TIMEOUT);
        assert_eq!(d.deadline(), Some(t0 + TCP_DIAL_TIMEOUT));
        assert_eq!(
            d.expired(t0 + TCP_DIAL_TIMEOUT).unwrap().to_string(),
            "dial tcp 10.0.0.1:22: i/o timeout"
        );
        let zero = origin(
            Service::Unix {
                path: "/run/app.sock".into(),
                tls: false,
            },
            0,
            0,
        );
        let d = Dial::start(
            t0,
            FlowKind::Http,
            "http://app.test/",
            Some(&zero),
            TCP_DIAL_TIMEOUT,
        );
        assert_eq!(d.deadline(), None);
        assert_eq!(d.expired(t0 + Duration::from_secs(3600)), None);
        let hello = origin(Service::HelloWorld, 30, 10);
        let d = Dial::start(
            t0,
            FlowKind::Http,
            "http://app.test/",
            Some(&hello),
            TCP_DIAL_TIMEOUT,
        );
        assert_eq!(d.deadline(), None);
        let unix = origin(
            Service::Unix {
                path: "/run/app.sock".into(),
                tls: false,
            },
            2,
            0,
        );
        let d = Dial::start(
            t0,
            FlowKind::Http,
            "http://app.test/",
            Some(&unix),
            TCP_DIAL_TIMEOUT,
        );
        assert_eq!(
            d.expired(t0 + Duration::from_secs(2)).unwrap().to_string(),
            "dial unix /run/app.sock: i/o timeout"
        );
    }
}
