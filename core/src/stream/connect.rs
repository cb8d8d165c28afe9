//! `ConnectRequest` / `ConnectResponse`: the Cap'n Proto message that opens each data stream.
//!
//! After the 8-byte data-stream preamble ([`crate::stream::preamble`]) the edge writes one
//! framed `ConnectRequest` and then the request body; the connector answers with the preamble,
//! one `ConnectResponse` and the response body. Decoding borrows the received bytes (no copy);
//! encoding writes one segment with objects in field order and empty strings or lists as null
//! pointers, as cloudflared's encoder does, so the bytes match cloudflared's.

use core::fmt;

use capnp::struct_list;
use thiserror::Error;

use crate::rpc::frame::{
    check_len, malformed, read_frame, read_text, text_words, write_message, write_text,
    DecodeError, EncodeError, FrameLimits, FrameReader,
};
use crate::schema::quic_metadata_protocol_capnp::{
    connect_request, connect_response, metadata, ConnectionType as WireType,
};
use crate::stream::preamble::DATA_PREAMBLE;

/// Metadata keys cloudflared reads or writes.
pub mod key {
    /// Request method (`GET` when missing or empty).
    pub const HTTP_METHOD: &str = "HttpMethod";
    /// Request `Host`.
    pub const HTTP_HOST: &str = "HttpHost";
    /// Prefix of a header entry: `HttpHeader:<Name>`, one entry per value.
    pub const HTTP_HEADER_PREFIX: &str = "HttpHeader:";
    /// Response status code, in decimal.
    pub const HTTP_STATUS: &str = "HttpStatus";
    /// Flow identifier of a TCP stream (logged only).
    pub const FLOW_ID: &str = "FlowID";
    /// Jaeger trace context of a TCP stream (exact, case-sensitive key).
    pub const TRACE_ID: &str = "cf-trace-id";
    /// Base64 OTLP spans returned to the edge (on HTTP as `HttpHeader:` + this).
    pub const CLOUDFLARED_TRACING: &str = "Cf-Int-Cloudflared-Tracing";
    /// Set (to [`FLOW_CONNECT_RATE_LIMITED_VALUE`]) on an error response caused by the flow limit.
    pub const FLOW_CONNECT_RATE_LIMITED: &str = "FlowConnectRateLimited";
    /// The value cloudflared gives [`FLOW_CONNECT_RATE_LIMITED`].
    pub const FLOW_CONNECT_RATE_LIMITED_VALUE: &str = "true";
}

/// What a data stream carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ConnectionType {
    /// An HTTP request (wire 0).
    Http,
    /// An HTTP request that upgrades to WebSocket (wire 1).
    WebSocket,
    /// A raw TCP stream (wire 2).
    Tcp,
}

impl ConnectionType {
    /// The value on the wire.
    pub const fn wire(self) -> u16 {
        match self {
            ConnectionType::Http => 0,
            ConnectionType::WebSocket => 1,
            ConnectionType::Tcp => 2,
        }
    }

    /// The type with wire value `value`.
    pub const fn from_wire(value: u16) -> Result<Self, UnknownConnectionType> {
        match value {
            0 => Ok(ConnectionType::Http),
            1 => Ok(ConnectionType::WebSocket),
            2 => Ok(ConnectionType::Tcp),
            other => Err(UnknownConnectionType(other)),
        }
    }

    /// cloudflared's name for the type: `http`, `ws` or `tcp`.
    pub const fn as_str(self) -> &'static str {
        match self {
            ConnectionType::Http => "http",
            ConnectionType::WebSocket => "ws",
            ConnectionType::Tcp => "tcp",
        }
    }
}

impl fmt::Display for ConnectionType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl From<ConnectionType> for WireType {
    fn from(value: ConnectionType) -> Self {
        match value {
            ConnectionType::Http => WireType::Http,
            ConnectionType::WebSocket => WireType::Websocket,
            ConnectionType::Tcp => WireType::Tcp,
        }
    }
}

/// A `ConnectRequest` named a connection type this protocol does not define.
///
/// The message itself decoded; the connector should answer with an error `ConnectResponse`
/// (cloudflared panics the whole process here).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
#[error("unsupported connection type {0}")]
pub struct UnknownConnectionType(pub u16);

/// One metadata entry; order and repeats are significant.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Metadata<'a> {
    /// Entry key, e.g. [`key::HTTP_METHOD`].
    pub key: &'a str,
    /// Entry value.
    pub val: &'a str,
}

/// A `ConnectRequest` to encode (edge role).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnectRequest<'a> {
    /// URL (HTTP, WebSocket) or `ip:port` (TCP).
    pub dest: &'a str,
    /// What the stream carries.
    pub connection_type: ConnectionType,
    /// Entries in wire order.
    pub metadata: &'a [Metadata<'a>],
}

impl ConnectRequest<'_> {
    /// Appends the data-stream preamble and the framed message to `out`.
    pub fn encode(&self, out: &mut Vec<u8>) -> Result<(), EncodeError> {
        with_preamble(out, |out| self.encode_body(out))
    }

    /// Appends just the framed message (no preamble) to `out`.
    pub fn encode_body(&self, out: &mut Vec<u8>) -> Result<(), EncodeError> {
        const WHAT: &str = "ConnectRequest";
        // Root pointer + struct (1 data word, 2 pointers).
        let words = 4 + text_words(self.dest) + metadata_words(self.metadata);
        write_message::<connect_request::Owned, _>(WHAT, words, out, |mut root| {
            write_text("ConnectRequest.dest", self.dest, |v| root.set_dest(v))?;
            root.set_type(self.connection_type.into());
            write_metadata(self.metadata, |n| root.init_metadata(n))
        })
    }
}

/// A `ConnectResponse` to encode (connector role).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnectResponse<'a> {
    /// Why the request failed; empty on success.
    pub error: &'a str,
    /// Entries in wire order (e.g. [`key::HTTP_STATUS`] and headers).
    pub metadata: &'a [Metadata<'a>],
}

impl ConnectResponse<'_> {
    /// Appends the data-stream preamble and the framed message to `out`.
    pub fn encode(&self, out: &mut Vec<u8>) -> Result<(), EncodeError> {
        with_preamble(out, |out| self.encode_body(out))
    }

    /// Appends just the framed message (no preamble) to `out`.
    pub fn encode_body(&self, out: &mut Vec<u8>) -> Result<(), EncodeError> {
        const WHAT: &str = "ConnectResponse";
        // Root pointer + struct (2 pointers).
        let words = 3 + text_words(self.error) + metadata_words(self.metadata);
        write_message::<connect_response::Owned, _>(WHAT, words, out, |mut root| {
            write_text("ConnectResponse.error", self.error, |v| root.set_error(v))?;
            write_metadata(self.metadata, |n| root.init_metadata(n))
        })
    }
}

/// Appends the data-stream preamble, then the body; on error `out` is left as it was.
fn with_preamble(
    out: &mut Vec<u8>,
    body: impl FnOnce(&mut Vec<u8>) -> Result<(), EncodeError>,
) -> Result<(), EncodeError> {
    let start = out.len();
    out.extend_from_slice(&DATA_PREAMBLE);
    body(out).inspect_err(|_| out.truncate(start))
}

/// Most metadata entries capnp can encode (2 words each, within 2^29 words).
const MAX_METADATA: usize = (1 << 28) - 1;

fn metadata_words(entries: &[Metadata<'_>]) -> usize {
    if entries.is_empty() {
        return 0;
    }
    entries.iter().fold(1, |words, m| {
        words
            .saturating_add(2)
            .saturating_add(text_words(m.key))
            .saturating_add(text_words(m.val))
    })
}

/// Writes a metadata list; empty is a null pointer, as cloudflared writes it.
fn write_metadata<'b>(
    entries: &[Metadata<'_>],
    init: impl FnOnce(u32) -> struct_list::Builder<'b, metadata::Owned>,
) -> Result<(), EncodeError> {
    if entries.is_empty() {
        return Ok(());
    }
    check_len("metadata", entries.len(), MAX_METADATA)?;
    // MAX_METADATA < u32::MAX, so the count fits.
    let mut list = init(entries.len() as u32);
    for (i, entry) in (0..).zip(entries) {
        let mut b = list.reborrow().get(i);
        write_text("Metadata.key", entry.key, |v| b.set_key(v))?;
        write_text("Metadata.val", entry.val, |v| b.set_val(v))?;
    }
    Ok(())
}

/// A received `ConnectRequest`, read in place over the stream's bytes.
pub struct ConnectRequestReader<'a> {
    msg: FrameReader<'a>,
    raw_type: u16,
}

/// Decodes the `ConnectRequest` at the start of `buf` (which starts after the preamble).
///
/// `Ok(None)` until the whole frame has arrived. `Ok(Some((request, n)))`: the message took
/// `n` bytes; the request body follows. The pointer structure is checked here; text is checked
/// for UTF-8 by the accessors. An unknown connection type is not an error here (see
/// [`ConnectRequestReader::connection_type`]).
pub fn decode_connect_request<'a>(
    buf: &'a [u8],
    limits: &FrameLimits,
) -> Result<Option<(ConnectRequestReader<'a>, usize)>, DecodeError> {
    let Some((msg, len)) = read_frame(buf, limits, "ConnectRequest")? else {
        return Ok(None);
    };
    let root = msg
        .get_root::<connect_request::Reader<'_>>()
        .map_err(malformed("ConnectRequest"))?;
    root.get_dest().map_err(malformed("ConnectRequest.dest"))?;
    let raw_type = match root.get_type() {
        Ok(t) => t as u16,
        Err(capnp::NotInSchema(raw)) => raw,
    };
    check_metadata(root.get_metadata())?;
    Ok(Some((ConnectRequestReader { msg, raw_type }, len)))
}

impl ConnectRequestReader<'_> {
    fn root(&self) -> Result<connect_request::Reader<'_>, DecodeError> {
        self.msg.get_root().map_err(malformed("ConnectRequest"))
    }

    /// Where to connect: a URL or `ip:port`.
    pub fn dest(&self) -> Result<&str, DecodeError> {
        read_text(self.root()?.get_dest(), "ConnectRequest.dest")
    }

    /// The connection type as sent, even if unknown.
    pub fn raw_type(&self) -> u16 {
        self.raw_type
    }

    /// The connection type; unknown values are an error for the caller to answer.
    pub fn connection_type(&self) -> Result<ConnectionType, UnknownConnectionType> {
        ConnectionType::from_wire(self.raw_type)
    }

    /// The metadata entries, in wire order.
    pub fn metadata(&self) -> MetadataIter<'_> {
        MetadataIter::new(self.root().and_then(|r| list(r.get_metadata())))
    }
}

impl fmt::Debug for ConnectRequestReader<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConnectRequestReader")
            .field("dest", &self.dest())
            .field("raw_type", &self.raw_type)
            .field("metadata", &self.metadata().collect::<Vec<_>>())
            .finish()
    }
}

/// A received `ConnectResponse`, read in place over the stream's bytes.
pub struct ConnectResponseReader<'a> {
    msg: FrameReader<'a>,
}

/// Decodes the `ConnectResponse` at the start of `buf` (which starts after the preamble).
///
/// Same contract as [`decode_connect_request`].
pub fn decode_connect_response<'a>(
    buf: &'a [u8],
    limits: &FrameLimits,
) -> Result<Option<(ConnectResponseReader<'a>, usize)>, DecodeError> {
    let Some((msg, len)) = read_frame(buf, limits, "ConnectResponse")? else {
        return Ok(None);
    };
    let root = msg
        .get_root::<connect_response::Reader<'_>>()
        .map_err(malformed("ConnectResponse"))?;
    root.get_error()
        .map_err(malformed("ConnectResponse.error"))?;
    check_metadata(root.get_metadata())?;
    Ok(Some((ConnectResponseReader { msg }, len)))
}

impl ConnectResponseReader<'_> {
    fn root(&self) -> Result<connect_response::Reader<'_>, DecodeError> {
        self.msg.get_root().map_err(malformed("ConnectResponse"))
    }

    /// Why the request failed; empty (or null) means success.
    pub fn error(&self) -> Result<&str, DecodeError> {
        read_text(self.root()?.get_error(), "ConnectResponse.error")
    }

    /// The metadata entries, in wire order.
    pub fn metadata(&self) -> MetadataIter<'_> {
        MetadataIter::new(self.root().and_then(|r| list(r.get_metadata())))
    }
}

impl fmt::Debug for ConnectResponseReader<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConnectResponseReader")
            .field("error", &self.error())
            .field("metadata", &self.metadata().collect::<Vec<_>>())
            .finish()
    }
}

type MetadataList<'b> = struct_list::Reader<'b, metadata::Owned>;

fn list(field: capnp::Result<MetadataList<'_>>) -> Result<MetadataList<'_>, DecodeError> {
    field.map_err(malformed("metadata"))
}

/// Checks the pointer structure of every entry, so that reading them later cannot fail on it.
fn check_metadata(field: capnp::Result<MetadataList<'_>>) -> Result<(), DecodeError> {
    for entry in list(field)?.iter() {
        entry.get_key().map_err(malformed("Metadata.key"))?;
        entry.get_val().map_err(malformed("Metadata.val"))?;
    }
    Ok(())
}

/// Iterator over received metadata entries; yields an error for an entry that is not UTF-8.
pub struct MetadataIter<'b> {
    list: Result<MetadataList<'b>, Option<DecodeError>>,
    next: u32,
}

impl<'b> MetadataIter<'b> {
    fn new(list: Result<MetadataList<'b>, DecodeError>) -> Self {
        MetadataIter {
            list: list.map_err(Some),
            next: 0,
        }
    }
}

impl<'b> Iterator for MetadataIter<'b> {
    type Item = Result<Metadata<'b>, DecodeError>;

    fn next(&mut self) -> Option<Self::Item> {
        let list = match &mut self.list {
            Ok(list) => list,
            Err(e) => return e.take().map(Err),
        };
        let entry = list.try_get(self.next)?;
        self.next += 1;
        Some(read_text(entry.get_key(), "Metadata.key").and_then(|key| {
            let val = read_text(entry.get_val(), "Metadata.val")?;
            Ok(Metadata { key, val })
        }))
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        let left = match &self.list {
            Ok(list) => list.len().saturating_sub(self.next) as usize,
            Err(e) => usize::from(e.is_some()),
        };
        (left, Some(left))
    }
}

/// A framed `ConnectRequest` (no preamble) from `(key, value)` pairs, for tests.
#[cfg(test)]
pub(crate) fn request_bytes(
    connection_type: ConnectionType,
    dest: &str,
    meta: &[(&str, &str)],
) -> Vec<u8> {
    let metadata: Vec<Metadata<'_>> = meta
        .iter()
        .map(|&(key, val)| Metadata { key, val })
        .collect();
    let mut buf = Vec::new();
    ConnectRequest {
        dest,
        connection_type,
        metadata: &metadata,
    }
    .encode_body(&mut buf)
    .expect("test requests encode");
    buf
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connection_type_names_and_wire_values() {
        for t in [
            ConnectionType::Http,
            ConnectionType::WebSocket,
            ConnectionType::Tcp,
        ] {
            assert_eq!(ConnectionType::from_wire(t.wire()), Ok(t));
            assert_eq!(WireType::from(t) as u16, t.wire());
        }
        assert_eq!(ConnectionType::WebSocket.as_str(), "ws");
        assert_eq!(ConnectionType::from_wire(3), Err(UnknownConnectionType(3)));
    }

    #[test]
    fn unknown_type_decodes_and_is_reported() {
        let mut out = Vec::new();
        let req = ConnectRequest {
            dest: "10.0.0.1:22",
            connection_type: ConnectionType::Tcp,
            metadata: &[],
        };
        req.encode_body(&mut out).unwrap();
        // The type is the first data word of the root struct: 8 (table) + 8 (root pointer).
        out[16] = 7;
        let (r, n) = decode_connect_request(&out, &FrameLimits::CONNECT_REQUEST)
            .unwrap()
            .unwrap();
        assert_eq!(n, out.len());
        assert_eq!(r.raw_type(), 7);
        assert_eq!(r.connection_type(), Err(UnknownConnectionType(7)));
        assert_eq!(r.dest().unwrap(), "10.0.0.1:22");
        assert_eq!(r.metadata().count(), 0);
    }

    #[test]
    fn response_round_trips_with_empty_fields_as_null() {
        let md = [
            Metadata {
                key: key::HTTP_STATUS,
                val: "200",
            },
            Metadata { key: "", val: "" },
        ];
        let resp = ConnectResponse {
            error: "",
            metadata: &md,
        };
        let mut out = Vec::new();
        resp.encode(&mut out).unwrap();
        assert_eq!(out[..8], DATA_PREAMBLE);
        let (r, n) = decode_connect_response(&out[8..], &FrameLimits::default())
            .unwrap()
            .unwrap();
        assert_eq!(n, out.len() - 8);
        assert_eq!(r.error().unwrap(), "");
        let got: Vec<_> = r.metadata().map(Result::unwrap).collect();
        assert_eq!(got, md);
    }
}
