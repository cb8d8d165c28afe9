//! Response heads on the HTTP/2 transport (PROTOCOL.md C§1.7–1.9, 1.13): what the connector
//! sends for an origin response, an error, or the control stream, and how the edge reads them.

use http::header::{CONTENT_LENGTH, CONTENT_TYPE, TRANSFER_ENCODING};
use http::response::Parts;
use http::{HeaderMap, HeaderValue, Response, StatusCode};
use thiserror::Error;

use super::headers::{self, HeaderDecodeError};

/// `Cf-Cloudflared-Response-Headers`: the serialized origin headers.
pub const USER_HEADERS: &str = "cf-cloudflared-response-headers";
/// `Cf-Cloudflared-Response-Meta`: who produced the response.
pub const META_HEADER: &str = "cf-cloudflared-response-meta";
/// `Cf-Int-Cloudflared-Tracing`: spans, sent as a real header, never serialized.
pub const TRACING_HEADER: &str = "cf-int-cloudflared-tracing";

/// Content types cloudflared streams (`flushableContentTypes`).
const FLUSHABLE_CONTENT_TYPES: [&[u8]; 3] = [
    b"text/event-stream",
    b"application/grpc",
    b"application/x-ndjson",
];

/// The `Cf-Cloudflared-Response-Meta` values, byte-exact (C§1.8).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ResponseMeta {
    /// The origin (or a connector-local handler) wrote the response.
    Origin,
    /// The connector failed the request (502).
    Cloudflared,
    /// The connector refused the request: too many active flows (502).
    FlowRateLimited,
}

impl ResponseMeta {
    /// The JSON cloudflared sends.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Origin => r#"{"src":"origin"}"#,
            Self::Cloudflared => r#"{"src":"cloudflared"}"#,
            Self::FlowRateLimited => r#"{"src":"cloudflared","flow_rate_limited":true}"#,
        }
    }

    /// The meta a header value names, if it is one cloudflared sends.
    pub fn parse(value: &[u8]) -> Option<Self> {
        [Self::Origin, Self::Cloudflared, Self::FlowRateLimited]
            .into_iter()
            .find(|m| m.as_str().as_bytes() == value)
    }
}

/// Whether cloudflared switches flushing on for a response with these origin headers
/// (`shouldFlush`): no `Content-Length`, chunked transfer, or a streaming content type.
pub fn should_flush(origin: &HeaderMap) -> bool {
    let lower = |v: &HeaderValue| v.as_bytes().to_ascii_lowercase();
    if origin.get(CONTENT_LENGTH).is_none_or(|v| v.is_empty()) {
        return true;
    }
    if origin
        .get(TRANSFER_ENCODING)
        .is_some_and(|v| lower(v).windows(7).any(|w| w == b"chunked"))
    {
        return true;
    }
    origin.get(CONTENT_TYPE).is_some_and(|v| {
        let ct = lower(v);
        FLUSHABLE_CONTENT_TYPES.iter().any(|p| ct.starts_with(p))
    })
}

/// Scratch buffers for building response heads, reused across responses.
#[derive(Debug, Default)]
pub struct HeadScratch {
    blob: String,
    name: Vec<u8>,
}

/// The head the connector sends for an origin response (`WriteRespHeaders`): `:status` (101
/// becomes 200), `content-length` and the tracing header copied as real headers, every user
/// header serialized into [`USER_HEADERS`] (always present, maybe empty), meta `origin`.
pub fn origin_head(
    status: StatusCode,
    origin: &HeaderMap,
    scratch: &mut HeadScratch,
) -> Response<()> {
    let status = if status == StatusCode::SWITCHING_PROTOCOLS {
        StatusCode::OK
    } else {
        status
    };
    let mut head = Response::new(());
    *head.status_mut() = status;
    let out = head.headers_mut();
    for (name, value) in origin {
        if name == CONTENT_LENGTH || name.as_str() == TRACING_HEADER {
            out.append(name.clone(), value.clone());
        }
    }
    headers::encode_header_map(origin, &mut scratch.blob, &mut scratch.name);
    // Base64 and `:;` only: always a valid header value.
    if let Ok(blob) = HeaderValue::from_str(&scratch.blob) {
        out.insert(USER_HEADERS, blob);
    }
    out.insert(
        META_HEADER,
        HeaderValue::from_static(ResponseMeta::Origin.as_str()),
    );
    head
}

/// The head of a failed request (`WriteErrorResponse`): 502 and the meta, nothing else.
pub fn error_head(meta: ResponseMeta) -> Response<()> {
    let mut head = Response::new(());
    *head.status_mut() = StatusCode::BAD_GATEWAY;
    head.headers_mut()
        .insert(META_HEADER, HeaderValue::from_static(meta.as_str()));
    head
}

/// The head of a stream cloudflared answers without `WriteRespHeaders` (control stream,
/// configuration push): Go's implicit `200`, no meta, no user headers.
pub fn implicit_head() -> Response<()> {
    Response::new(())
}

/// A response as the edge reads it from the connector.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnectorResponse {
    /// `:status` (a WebSocket or TCP accept is 200).
    pub status: StatusCode,
    /// Who produced it; `None` for the implicit heads of control and configuration streams.
    pub meta: Option<ResponseMeta>,
    /// The origin's headers, decoded from [`USER_HEADERS`].
    pub headers: HeaderMap,
    /// Real HTTP/2 headers besides the internal ones (`content-length`, tracing, Go's `date`).
    pub transport_headers: HeaderMap,
}

/// A response head from the connector could not be read.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ResponseHeadError {
    /// The serialized user headers were malformed.
    #[error("bad {USER_HEADERS}: {0}")]
    UserHeaders(#[from] HeaderDecodeError),
    /// The meta header held something cloudflared never sends.
    #[error("unknown {META_HEADER} value")]
    UnknownMeta,
}

impl ConnectorResponse {
    /// Splits a received head into origin headers and transport headers.
    pub fn from_head(mut head: Parts) -> Result<Self, ResponseHeadError> {
        let meta = match head.headers.remove(META_HEADER) {
            Some(v) => {
                Some(ResponseMeta::parse(v.as_bytes()).ok_or(ResponseHeadError::UnknownMeta)?)
            }
            None => None,
        };
        let mut headers = HeaderMap::new();
        if let Some(blob) = head.headers.remove(USER_HEADERS) {
            headers::decode_into_map(blob.as_bytes(), &mut headers)?;
        }
        Ok(Self {
            status: head.status,
            meta,
            headers,
            transport_headers: head.headers,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http2::tests::header_map as map;

    #[test]
    fn meta_values_are_byte_exact() {
        assert_eq!(ResponseMeta::Origin.as_str(), r#"{"src":"origin"}"#);
        assert_eq!(
            ResponseMeta::Cloudflared.as_str(),
            r#"{"src":"cloudflared"}"#
        );
        assert_eq!(
            ResponseMeta::FlowRateLimited.as_str(),
            r#"{"src":"cloudflared","flow_rate_limited":true}"#
        );
        for m in [
            ResponseMeta::Origin,
            ResponseMeta::Cloudflared,
            ResponseMeta::FlowRateLimited,
        ] {
            assert_eq!(ResponseMeta::parse(m.as_str().as_bytes()), Some(m));
        }
        assert_eq!(ResponseMeta::parse(b"{}"), None);
    }

    #[test]
    fn flush_rules_are_cloudflareds() {
        assert!(should_flush(&map(&[])));
        assert!(!should_flush(&map(&[("content-length", "5")])));
        assert!(should_flush(&map(&[
            ("content-length", "5"),
            ("transfer-encoding", "gzip, Chunked")
        ])));
        assert!(should_flush(&map(&[
            ("content-length", "5"),
            ("content-type", "Text/Event-Stream; x")
        ])));
        assert!(should_flush(&map(&[
            ("content-length", "5"),
            ("content-type", "application/grpc+proto")
        ])));
        assert!(!should_flush(&map(&[
            ("content-length", "5"),
            ("content-type", "text/html")
        ])));
    }

    #[test]
    fn origin_head_serializes_and_round_trips() {
        let origin = map(&[
            ("content-type", "text/plain"),
            ("content-length", "11"),
            ("cf-int-cloudflared-tracing", "spans"),
            ("cf-cloudflared-secret", "x"),
        ]);
        let head = origin_head(
            StatusCode::SWITCHING_PROTOCOLS,
            &origin,
            &mut HeadScratch::default(),
        );
        assert_eq!(head.status(), StatusCode::OK);
        let h = head.headers();
        assert_eq!(h[META_HEADER], r#"{"src":"origin"}"#);
        assert_eq!(h[CONTENT_LENGTH], "11");
        assert_eq!(h[TRACING_HEADER], "spans");
        let read = ConnectorResponse::from_head(head.into_parts().0).unwrap();
        assert_eq!(read.meta, Some(ResponseMeta::Origin));
        assert_eq!(
            read.headers,
            map(&[("content-type", "text/plain"), ("content-length", "11")])
        );
        assert_eq!(read.transport_headers.len(), 2);
    }

    #[test]
    fn empty_user_headers_are_still_sent() {
        let head = origin_head(
            StatusCode::OK,
            &HeaderMap::new(),
            &mut HeadScratch::default(),
        );
        assert_eq!(head.headers()[USER_HEADERS], "");
    }

    #[test]
    fn error_head_is_502_with_meta_only() {
        let head = error_head(ResponseMeta::FlowRateLimited);
        assert_eq!(head.status(), StatusCode::BAD_GATEWAY);
        assert_eq!(head.headers().len(), 1);
        let read = ConnectorResponse::from_head(head.into_parts().0).unwrap();
        assert_eq!(read.meta, Some(ResponseMeta::FlowRateLimited));
    }
}
