//! What an edge-opened HTTP/2 stream is for, read from its headers as cloudflared's
//! `determineHTTP2Type` reads them (PROTOCOL.md C§1.4), and how the edge marks each kind.

use std::net::SocketAddr;

use http::header::HeaderValue;
use http::request::Parts;
use http::uri::{Authority, Scheme};
use http::{HeaderMap, Uri};
use thiserror::Error;

/// `Cf-Cloudflared-Proxy-Connection-Upgrade`: marks control, WebSocket and configuration streams.
pub const UPGRADE_HEADER: &str = "cf-cloudflared-proxy-connection-upgrade";
/// `Cf-Cloudflared-Proxy-Src`: any non-empty value marks a TCP (warp-routing) stream.
pub const TCP_SRC_HEADER: &str = "cf-cloudflared-proxy-src";
/// Upgrade value of the control stream.
pub const CONTROL_STREAM: &str = "control-stream";
/// Upgrade value of a WebSocket stream.
pub const WEBSOCKET: &str = "websocket";
/// Upgrade value of a configuration push.
pub const UPDATE_CONFIGURATION: &str = "update-configuration";
/// The source value the edge's TCP streams carry (cloudflared's tests use it; any non-empty works).
pub const TCP_SRC: &str = "tcp";

/// What a stream carries, in cloudflared's order of precedence.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RequestKind {
    /// Remote configuration push: JSON body, JSON response (C§1.12).
    Configuration,
    /// WebSocket: an HTTP request whose bodies then carry the socket both ways (C§1.10).
    Websocket,
    /// Warp-routing TCP to the `:authority` address (C§1.11).
    Tcp,
    /// The control stream: Cap'n Proto RPC in the bodies (C§1.6).
    ControlStream,
    /// An ordinary HTTP request to the origin.
    Http,
}

impl RequestKind {
    /// The kind `headers` mark, exactly as cloudflared decides it (first value, case-sensitive).
    pub fn classify(headers: &HeaderMap) -> Self {
        let upgrade = headers.get(UPGRADE_HEADER).map(HeaderValue::as_bytes);
        let tcp = headers
            .get(TCP_SRC_HEADER)
            .is_some_and(|v| !v.as_bytes().is_empty());
        match upgrade {
            Some(b"update-configuration") => Self::Configuration,
            Some(b"websocket") => Self::Websocket,
            _ if tcp => Self::Tcp,
            Some(b"control-stream") => Self::ControlStream,
            _ => Self::Http,
        }
    }

    /// Whether cloudflared flushes every write of this kind from the start (`Type.shouldFlush`).
    pub fn flushes(self) -> bool {
        matches!(self, Self::Websocket | Self::Tcp | Self::ControlStream)
    }

    /// The marker header the edge sets for this kind (none for plain HTTP).
    pub fn marker(self) -> Option<(&'static str, &'static str)> {
        match self {
            Self::Configuration => Some((UPGRADE_HEADER, UPDATE_CONFIGURATION)),
            Self::Websocket => Some((UPGRADE_HEADER, WEBSOCKET)),
            Self::Tcp => Some((TCP_SRC_HEADER, TCP_SRC)),
            Self::ControlStream => Some((UPGRADE_HEADER, CONTROL_STREAM)),
            Self::Http => None,
        }
    }
}

/// As cloudflared prepares a request before proxying it: for HTTP, a missing scheme becomes
/// `http` and a missing host `localhost:8080` (`handleMissingRequestParts`); for HTTP and
/// WebSocket the upgrade marker is removed (`stripWebsocketUpgradeHeader`).
pub fn prepare_for_origin(kind: RequestKind, head: &mut Parts) {
    if kind == RequestKind::Http && (head.uri.scheme().is_none() || head.uri.authority().is_none())
    {
        let mut parts = std::mem::take(&mut head.uri).into_parts();
        parts.scheme.get_or_insert(Scheme::HTTP);
        parts
            .authority
            .get_or_insert(Authority::from_static("localhost:8080"));
        if parts.path_and_query.is_none() {
            parts.path_and_query = Some(http::uri::PathAndQuery::from_static("/"));
        }
        // Scheme, authority and path are all set, which is all `from_parts` checks.
        head.uri = Uri::from_parts(parts).unwrap_or_default();
    }
    if matches!(kind, RequestKind::Http | RequestKind::Websocket) {
        head.headers.remove(UPGRADE_HEADER);
    }
}

/// A TCP stream's destination could not be taken from its request (cloudflared answers 502).
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum TcpDestinationError {
    /// No `:authority` (cloudflared: "warp-routing request with an empty host value").
    #[error("warp-routing request with an empty host value")]
    Empty,
    /// Not a literal `IP:port` (`netip.ParseAddrPort`; host names are refused).
    #[error("warp-routing destination {0:?} is not an IP:port")]
    NotAnAddress(String),
}

/// The destination of a TCP stream: the literal `IP:port` in `:authority` (C§1.11).
pub fn tcp_destination(head: &Parts) -> Result<SocketAddr, TcpDestinationError> {
    let authority = head
        .uri
        .authority()
        .map(Authority::as_str)
        .filter(|a| !a.is_empty())
        .ok_or(TcpDestinationError::Empty)?;
    authority
        .parse()
        .map_err(|_| TcpDestinationError::NotAnAddress(authority.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http2::tests::header_map as headers;

    #[test]
    fn classification_follows_cloudflareds_order() {
        use RequestKind::*;
        let cases: &[(&[(&'static str, &'static str)], RequestKind)] = &[
            (&[], Http),
            (&[(UPGRADE_HEADER, CONTROL_STREAM)], ControlStream),
            (&[(UPGRADE_HEADER, WEBSOCKET)], Websocket),
            (&[(UPGRADE_HEADER, UPDATE_CONFIGURATION)], Configuration),
            (&[(TCP_SRC_HEADER, "tcp")], Tcp),
            (&[(TCP_SRC_HEADER, "")], Http),
            // TCP outranks the control stream; WebSocket outranks TCP.
            (
                &[(UPGRADE_HEADER, CONTROL_STREAM), (TCP_SRC_HEADER, "x")],
                Tcp,
            ),
            (
                &[(UPGRADE_HEADER, WEBSOCKET), (TCP_SRC_HEADER, "x")],
                Websocket,
            ),
            // Values compare case-sensitively.
            (&[(UPGRADE_HEADER, "Control-Stream")], Http),
        ];
        for (h, kind) in cases {
            assert_eq!(RequestKind::classify(&headers(h)), *kind, "{h:?}");
        }
        for kind in [Configuration, Websocket, Tcp, ControlStream] {
            let (n, v) = kind.marker().unwrap();
            assert_eq!(RequestKind::classify(&headers(&[(n, v)])), kind);
        }
    }

    #[test]
    fn http_requests_get_missing_parts_and_lose_the_marker() {
        let (mut head, ()) = http::Request::builder()
            .uri("/path?q=1")
            .header(UPGRADE_HEADER, "something")
            .body(())
            .unwrap()
            .into_parts();
        prepare_for_origin(RequestKind::Http, &mut head);
        assert_eq!(head.uri, "http://localhost:8080/path?q=1");
        assert!(head.headers.get(UPGRADE_HEADER).is_none());
    }

    #[test]
    fn tcp_destination_must_be_a_literal_address() {
        let head = |uri: &str| http::Request::get(uri).body(()).unwrap().into_parts().0;
        assert_eq!(
            tcp_destination(&head("http://10.0.0.1:22/")),
            Ok("10.0.0.1:22".parse().unwrap())
        );
        assert_eq!(
            tcp_destination(&head("http://[::1]:80/")),
            Ok("[::1]:80".parse().unwrap())
        );
        assert_eq!(
            tcp_destination(&head("http://example.com:80/")),
            Err(TcpDestinationError::NotAnAddress("example.com:80".into()))
        );
        assert_eq!(tcp_destination(&head("/")), Err(TcpDestinationError::Empty));
    }
}
