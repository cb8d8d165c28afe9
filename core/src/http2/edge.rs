//! The edge's side: TLS server, HTTP/2 client (PROTOCOL.md C§1.1). It opens the control stream
//! and request streams toward a connector, marked as cloudflared expects (C§1.4–1.5), and reads
//! the connector's serialized response heads (C§1.7–1.8).

use std::collections::VecDeque;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use h2::Reason;
use http::header::HeaderName;
use http::{HeaderValue, Method, Request, StatusCode, Uri};
use thiserror::Error;

use super::client::{self, ClientState, Step};
use super::machine::{Connection, Drive, Event, Limits, Role};
use super::pipe::Pipe;
use super::request::RequestKind;
use super::response::{ConnectorResponse, ResponseMeta};
use super::streams::{ApiError, Stream, StreamId, Streams};
use super::tls;
use crate::quic::tls::TlsError;
use crate::receive_window::EDGE_HELD_STREAMS;
use crate::stream::connect::{key, ConnectRequest, ConnectionType};
use crate::stream::http1::header_key;

/// The edge's HTTP/2 connection to one connector.
pub type EdgeConnection = Connection<Client>;

/// HTTP/2 client state.
pub struct Client {
    state: ClientState,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client").finish_non_exhaustive()
    }
}

impl EdgeConnection {
    /// A connection from a connector that just dialled in, accepted at `now`.
    pub fn new(
        now: Instant,
        config: Arc<rustls::ServerConfig>,
        limits: Limits,
    ) -> Result<Self, TlsError> {
        let session = tls::server_session(config)?;
        let pipe = Pipe::new(session.into(), limits.tls_buffer);
        let role = Client {
            state: ClientState::handshake(pipe.clone(), EDGE_HELD_STREAMS),
        };
        Ok(Connection::build(now, role, pipe, limits))
    }

    /// Opens the control stream (C§1.6): `GET http://localhost:8080/` marked `control-stream`,
    /// as cloudflared's own tests open it. Its bodies carry the Cap'n Proto RPC both ways.
    pub fn open_control_stream(&mut self) -> Result<StreamId, ApiError> {
        let request = Request::get("http://localhost:8080/")
            .body(())
            .map_err(|_| ApiError::NotReady)?;
        self.open(RequestKind::ControlStream, request, false)
    }

    /// Opens a stream of `kind` carrying `request` (its marker header added; for
    /// [`RequestKind::Tcp`] the URI authority is the destination `IP:port`). `end` sends
    /// END_STREAM with the head (a request without a body).
    pub fn open(
        &mut self,
        kind: RequestKind,
        mut request: Request<()>,
        end: bool,
    ) -> Result<StreamId, ApiError> {
        self.live()?;
        if !self.connected() {
            return Err(ApiError::NotReady);
        }
        if self.open_streams() >= self.limits().max_streams {
            return Err(ApiError::NotReady);
        }
        if let Some((name, value)) = kind.marker() {
            request
                .headers_mut()
                .insert(name, HeaderValue::from_static(value));
        }
        if kind == RequestKind::Configuration {
            *request.method_mut() = Method::PUT;
        }
        let Some(send) = self.role.state.sender() else {
            return Err(ApiError::NotReady);
        };
        let mut cx = Context::from_waker(std::task::Waker::noop());
        if send.poll_ready(&mut cx).is_pending() {
            return Err(ApiError::NotReady);
        }
        let (response, body) = send
            .send_request(request, end)
            .map_err(|_| ApiError::NotReady)?;
        let id = StreamId::from(body.stream_id());
        let mut stream = Stream::new(kind);
        stream.response = Some(response);
        stream.send = Some(body);
        if end {
            stream.ended_with_head();
        }
        self.streams.map.insert(id.0, stream);
        self.mark_dirty();
        Ok(id)
    }
}

impl Role for Client {
    fn drive(
        &mut self,
        cx: &mut Context<'_>,
        streams: &mut Streams,
        events: &mut VecDeque<Event>,
    ) -> Drive {
        match self.state.step(cx) {
            Step::Handshaking => return Drive::Running,
            Step::Closed(e) => return Drive::Closed(e),
            Step::Ended(e) => {
                // Heads that came with the end are still delivered (see `Streams::settle`).
                poll_responses(cx, streams, events);
                return Drive::Closed(e);
            }
            Step::Running => {}
        }
        // h2 fails every new request once the peer's GOAWAY is in: say so, so that requests
        // go elsewhere instead of failing here.
        let going = self
            .state
            .sender()
            .is_some_and(|s| matches!(s.poll_ready(cx), Poll::Ready(Err(_))));
        if going {
            self.state.shutdown();
            events.push_back(Event::GoingAway);
        }
        poll_responses(cx, streams, events);
        Drive::Running
    }

    fn ready(&self) -> bool {
        self.state.ready()
    }

    fn shutdown(&mut self) {
        self.state.shutdown();
    }
}

/// Turns arrived response heads into events; a head that cannot be read resets its stream.
fn poll_responses(cx: &mut Context<'_>, streams: &mut Streams, events: &mut VecDeque<Event>) {
    client::poll_heads(cx, streams, events, |stream, s, head, body, events| {
        let response = ConnectorResponse::from_head(head);
        let stays = response.is_ok();
        if stays {
            s.recv = Some(body);
        } else if let Some(send) = s.send.as_mut() {
            send.send_reset(Reason::PROTOCOL_ERROR);
        }
        events.push_back(Event::Response { stream, response });
        stays
    });
}

/// A tunnel request could not be put into an HTTP/2 request head.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum RequestHeadError {
    /// The destination is not a URI (HTTP, WebSocket) or `IP:port` authority (TCP).
    #[error("destination {0:?} is not usable as a request URI")]
    Destination(String),
    /// The method metadata is not an HTTP method.
    #[error("method {0:?} is not an HTTP method")]
    Method(String),
    /// A header metadata entry is not a valid header.
    #[error("header {0:?} is not a valid HTTP header")]
    Header(String),
}

/// Request headers HTTP/2 forbids (RFC 9113 §8.2.2; Go's server answers them with 400), and
/// `host`, which travels as `:authority`.
const NOT_ON_HTTP2: [&str; 6] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "transfer-encoding",
    "upgrade",
    "host",
];

/// The HTTP/2 stream that carries what QUIC carries as `request` (PROTOCOL.md C§1.4–1.5,
/// 1.10–1.11): its kind, and a head with the method from [`key::HTTP_METHOD`], the URI from
/// `dest` (for TCP, `http://IP:port/`, whose authority cloudflared dials) and every
/// `HttpHeader:` entry that HTTP/2 allows.
pub fn request_head(
    request: &ConnectRequest<'_>,
) -> Result<(RequestKind, Request<()>), RequestHeadError> {
    let kind = match request.connection_type {
        ConnectionType::Http => RequestKind::Http,
        ConnectionType::WebSocket => RequestKind::Websocket,
        ConnectionType::Tcp => RequestKind::Tcp,
    };
    let uri = if kind == RequestKind::Tcp {
        format!("http://{}/", request.dest)
    } else {
        request.dest.to_owned()
    };
    let uri: Uri = uri
        .parse()
        .map_err(|_| RequestHeadError::Destination(request.dest.to_owned()))?;
    if uri.authority().is_none() {
        return Err(RequestHeadError::Destination(request.dest.to_owned()));
    }
    let mut head = Request::new(());
    *head.uri_mut() = uri;
    for m in request.metadata {
        if m.key == key::HTTP_METHOD && !m.val.is_empty() {
            *head.method_mut() = Method::from_bytes(m.val.as_bytes())
                .map_err(|_| RequestHeadError::Method(m.val.to_owned()))?;
        } else if let Some(name) = m.key.strip_prefix(key::HTTP_HEADER_PREFIX) {
            let bad = || RequestHeadError::Header(name.to_owned());
            let name = HeaderName::from_bytes(name.as_bytes()).map_err(|_| bad())?;
            if NOT_ON_HTTP2.contains(&name.as_str())
                || (name == http::header::TE && m.val != "trailers")
            {
                continue;
            }
            let value = HeaderValue::from_str(m.val).map_err(|_| bad())?;
            head.headers_mut().append(name, value);
        }
    }
    Ok((kind, head))
}

/// `error` of a response the connector failed ([`ResponseMeta::Cloudflared`]).
pub const CONNECTOR_FAILED: &str = "the connector could not serve the request";
/// `error` of a response refused by the connector's flow limit.
pub const FLOW_LIMITED: &str = "the connector refused the request: too many active flows";

/// The connector's answer on a stream of `kind`, as QUIC's `ConnectResponse` carries it:
/// `error` (empty on success) and metadata ([`key::HTTP_STATUS`], `HttpHeader:` entries). A
/// WebSocket accepted arrives as 200 (HTTP/2 has no 101) and is reported as 101.
pub fn connect_response(
    kind: RequestKind,
    response: &ConnectorResponse,
) -> (String, Vec<(String, String)>) {
    match response.meta {
        Some(ResponseMeta::Cloudflared) => return (CONNECTOR_FAILED.to_owned(), Vec::new()),
        Some(ResponseMeta::FlowRateLimited) => {
            let limited = (
                key::FLOW_CONNECT_RATE_LIMITED.to_owned(),
                key::FLOW_CONNECT_RATE_LIMITED_VALUE.to_owned(),
            );
            return (FLOW_LIMITED.to_owned(), vec![limited]);
        }
        Some(ResponseMeta::Origin) | None => {}
    }
    let status = match (kind, response.status) {
        // QUIC's answer to a TCP stream carries nothing but its (empty) error.
        (RequestKind::Tcp, _) => return (String::new(), Vec::new()),
        (RequestKind::Websocket, StatusCode::OK) => StatusCode::SWITCHING_PROTOCOLS,
        (_, status) => status,
    };
    let mut metadata = Vec::with_capacity(response.headers.len() + 1);
    metadata.push((key::HTTP_STATUS.to_owned(), status.as_str().to_owned()));
    for (name, value) in &response.headers {
        let Ok(value) = value.to_str() else {
            continue;
        };
        metadata.push((header_key(name.as_str()), value.to_owned()));
    }
    (String::new(), metadata)
}

#[cfg(test)]
mod connect_response_tests {
    use http::HeaderMap;

    use super::*;

    fn accepted(status: StatusCode) -> ConnectorResponse {
        let mut headers = HeaderMap::new();
        headers.insert("x-origin", http::HeaderValue::from_static("1"));
        ConnectorResponse {
            status,
            meta: Some(ResponseMeta::Origin),
            headers,
            transport_headers: HeaderMap::new(),
        }
    }

    #[test]
    fn answers_read_as_quics_connect_response_for_each_kind() {
        // A TCP stream accepted: no error and no metadata, as QUIC's ConnectResponse has it
        // (an eyeball of either transport then reads the same answer).
        let (error, metadata) = connect_response(RequestKind::Tcp, &accepted(StatusCode::OK));
        assert_eq!((error.as_str(), metadata.len()), ("", 0));
        let (_, metadata) = connect_response(RequestKind::Websocket, &accepted(StatusCode::OK));
        assert_eq!(metadata[0], (key::HTTP_STATUS.to_owned(), "101".to_owned()));
        let (_, metadata) = connect_response(RequestKind::Http, &accepted(StatusCode::OK));
        assert_eq!(metadata[0], (key::HTTP_STATUS.to_owned(), "200".to_owned()));
        assert_eq!(
            metadata[1],
            ("HttpHeader:X-Origin".to_owned(), "1".to_owned())
        );
    }
}
