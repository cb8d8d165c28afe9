//! HTTP/1.1 toward the origin: the request head cloudflared's Go client would write for a
//! `ConnectRequest`, and the origin's response read back with httparse (head, then the body by
//! its framing, chunked bodies de-chunked).
//!
//! Request mapping follows PROTOCOL.md A§3.4, response mapping A§3.5. Header names are written in
//! Go's canonical form (`content-type` → `Content-Type`) because the edge sees the names Go's
//! header map produced.

use http::Uri;
use thiserror::Error;

use super::connect::{key, ConnectRequestReader};
use super::tag::{self, Tag};
use crate::http2::headers::{is_token_byte, push_canonical};
use crate::rpc::frame::DecodeError;

/// Most response header lines accepted from an origin.
const MAX_HEADERS: usize = 128;
/// Largest response head accepted from an origin (Go's default `MaxResponseHeaderBytes`).
pub const MAX_HEAD_BYTES: usize = 1 << 20;
/// Longest chunk-size or trailer line accepted.
pub const MAX_LINE: usize = 4096;

/// Header cloudflared strips from requests: the edge's marker for WebSocket upgrades.
pub(crate) const INTERNAL_UPGRADE: &str = "Cf-Cloudflared-Proxy-Connection-Upgrade";
/// Header carrying the Jaeger trace id; cloudflared consumes and deletes it.
pub(crate) const TRACE_HEADER: &str = "Cf-Trace-Id";
/// Where the eyeball's `Host` goes when `httpHostHeader` replaces it.
const FORWARDED_HOST: &str = "X-Forwarded-Host";

/// Why a `ConnectRequest` cannot become an HTTP request (answered with `ConnectResponse.error`).
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum RequestError {
    /// The message's text was not readable.
    #[error("unreadable request: {0}")]
    Decode(String),
    /// `dest` is not a URL or path.
    #[error("malformed request destination {0:?}")]
    Dest(String),
    /// A `HttpHeader` key that does not split into exactly two parts (cloudflared's text).
    #[error("header Key: {0} malformed")]
    HeaderKey(String),
    /// A header name or value that cannot go on an HTTP/1.1 wire (CR/LF injection and such).
    #[error("invalid header {0:?}")]
    HeaderInvalid(String),
    /// The method is not an HTTP token.
    #[error("invalid method {0:?}")]
    Method(String),
    /// A `Content-Length` that is not a decimal number (cloudflared's text).
    #[error("Error setting content-length: {0}")]
    ContentLength(String),
}

impl From<DecodeError> for RequestError {
    fn from(e: DecodeError) -> Self {
        Self::Decode(e.to_string())
    }
}

/// How a message body is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// No body.
    Empty,
    /// Exactly this many bytes.
    Length(u64),
    /// Chunked transfer coding.
    Chunked,
    /// Until the sender closes (responses); for a request, until the edge finishes its side
    /// (`disableChunkedEncoding` with no length known).
    UntilClose,
}

/// What [`write_request`] decided about the request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestHead {
    /// How the request body that follows on the stream is sent to the origin.
    pub body: Framing,
    /// The response to a HEAD request has no body whatever its headers say.
    pub is_head: bool,
    /// The eyeball's `Host` (before any `httpHostHeader`), if any: what rules match and the
    /// origin's pooling key.
    pub host: Option<String>,
}

/// The ingress rule's `originRequest` options that change the request itself (PROTOCOL.md
/// C§5.4, §5.6, §5.8). The default changes nothing.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RequestOptions<'a> {
    /// `httpHostHeader`: the `Host` sent instead of the eyeball's, which goes in
    /// `X-Forwarded-Host`.
    pub host_header: Option<&'a str>,
    /// `disableChunkedEncoding`: a body is never sent chunked. With a `Content-Length` it is
    /// sent with it; without one it is sent bare, with neither header (what Go's transport does
    /// for cloudflared, PROTOCOL.md C§6 #10), and the connection is not reused.
    pub disable_chunked_encoding: bool,
    /// The connector's tags, each sent as `Cf-Warp-Tag-<Name>`.
    pub tags: &'a [Tag],
}

/// The `Host` a request is written with: the `HttpHost` metadata, else the authority of
/// `dest`. This is what ingress rules are matched against.
pub fn request_host(req: &ConnectRequestReader<'_>) -> Result<Option<String>, RequestError> {
    let mut host = None;
    for entry in req.metadata() {
        let entry = entry?;
        if entry.key == key::HTTP_HOST {
            host = Some(entry.val);
        }
    }
    if let Some(h) = host {
        return Ok(Some(h.to_owned()));
    }
    let dest = req.dest()?;
    let uri: Uri = dest
        .parse()
        .map_err(|_| RequestError::Dest(dest.to_owned()))?;
    Ok(uri.authority().map(|a| a.as_str().to_owned()))
}

/// Appends the HTTP/1.1 request head for `req` to `out`, changed as `options` say.
/// `websocket` adds the upgrade headers cloudflared's proxy adds and never sends a body. On
/// error `out` is left as it was.
pub fn write_request(
    req: &ConnectRequestReader<'_>,
    websocket: bool,
    options: &RequestOptions<'_>,
    out: &mut Vec<u8>,
) -> Result<RequestHead, RequestError> {
    let start = out.len();
    let result = write_request_inner(req, websocket, options, out);
    if result.is_err() {
        out.truncate(start);
    }
    result
}

fn write_request_inner(
    req: &ConnectRequestReader<'_>,
    websocket: bool,
    options: &RequestOptions<'_>,
    out: &mut Vec<u8>,
) -> Result<RequestHead, RequestError> {
    let dest = req.dest()?;
    let uri: Uri = dest
        .parse()
        .map_err(|_| RequestError::Dest(dest.to_owned()))?;
    let mut method = "GET";
    let mut host = uri.authority().map(|a| a.as_str().to_owned());
    let mut content_length = None;
    let mut chunked = false;
    for entry in req.metadata() {
        let entry = entry?;
        if entry.key == key::HTTP_METHOD && !entry.val.is_empty() {
            method = entry.val;
        } else if entry.key == key::HTTP_HOST {
            host = Some(entry.val.to_owned());
        } else if entry.key.contains("HttpHeader") {
            let name = header_name(entry.key)?;
            if name.eq_ignore_ascii_case("content-length") {
                let n = entry
                    .val
                    .trim()
                    .parse::<u64>()
                    .map_err(|e| RequestError::ContentLength(e.to_string()))?;
                content_length = Some(n);
            } else if name.eq_ignore_ascii_case("transfer-encoding") {
                chunked |= entry.val.to_ascii_lowercase().contains("chunked");
            }
        }
    }
    if http::Method::from_bytes(method.as_bytes()).is_err() {
        return Err(RequestError::Method(method.to_owned()));
    }
    let path = uri.path_and_query().map_or("/", |p| p.as_str());
    let path = if path.is_empty() { "/" } else { path };
    out.extend_from_slice(method.as_bytes());
    out.push(b' ');
    out.extend_from_slice(path.as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\n");
    let sent_host = options.host_header.or(host.as_deref());
    if let Some(h) = sent_host {
        write_header(out, "Host", h)?;
    }
    for entry in req.metadata() {
        let entry = entry?;
        if !entry.key.contains("HttpHeader") {
            continue;
        }
        let name = header_name(entry.key)?;
        let skip = [
            "host",
            "content-length",
            "transfer-encoding",
            "connection",
            "upgrade",
            INTERNAL_UPGRADE,
            TRACE_HEADER,
        ];
        if skip.iter().any(|s| name.eq_ignore_ascii_case(s)) {
            continue;
        }
        // cloudflared `Set`s X-Forwarded-Host when it overrides Host: the edge's one goes.
        if options.host_header.is_some() && name.eq_ignore_ascii_case(FORWARDED_HOST) {
            continue;
        }
        write_header(out, name, entry.val)?;
    }
    for t in options.tags {
        write_header(out, &format!("{}{}", tag::HEADER_PREFIX, t.name), &t.value)?;
    }
    if options.host_header.is_some() {
        write_header(out, FORWARDED_HOST, host.as_deref().unwrap_or(""))?;
    }
    let body = if websocket {
        write_header(out, "Connection", "Upgrade")?;
        write_header(out, "Upgrade", "websocket")?;
        write_header(out, "Sec-Websocket-Version", "13")?;
        Framing::Empty
    } else {
        write_header(out, "Connection", "keep-alive")?;
        // cloudflared drops the body unless it is chunked or has a positive length.
        match (chunked, content_length) {
            // Without chunking Go sends the length it parsed, whatever the encoding said.
            (true, Some(n @ 1..)) if options.disable_chunked_encoding => {
                write_header(out, "Content-Length", &n.to_string())?;
                Framing::Length(n)
            }
            // No length known: the body goes bare, delimited by nothing.
            (true, _) if options.disable_chunked_encoding => Framing::UntilClose,
            (true, _) => {
                write_header(out, "Transfer-Encoding", "chunked")?;
                Framing::Chunked
            }
            (false, Some(n @ 1..)) => {
                write_header(out, "Content-Length", &n.to_string())?;
                Framing::Length(n)
            }
            (false, _) => Framing::Empty,
        }
    };
    out.extend_from_slice(b"\r\n");
    Ok(RequestHead {
        body,
        is_head: method.eq_ignore_ascii_case("HEAD"),
        host,
    })
}

/// The header name of an `HttpHeader:<Name>` key, checked the way cloudflared checks it.
fn header_name(key: &str) -> Result<&str, RequestError> {
    let mut parts = key.split(':');
    match (parts.next(), parts.next(), parts.next()) {
        (Some(_), Some(name), None) => Ok(name),
        _ => Err(RequestError::HeaderKey(key.to_owned())),
    }
}

/// Appends `name: value` with the name in Go's canonical form; either checked as `http` checks
/// them (`HeaderName::from_bytes`, `HeaderValue::from_str`) but without building them, which
/// allocates per header.
fn write_header(out: &mut Vec<u8>, name: &str, value: &str) -> Result<(), RequestError> {
    if !valid_name(name.as_bytes()) || !valid_value(value.as_bytes()) {
        return Err(RequestError::HeaderInvalid(name.to_owned()));
    }
    push_canonical(name.as_bytes(), out);
    out.extend_from_slice(b": ");
    out.extend_from_slice(value.as_bytes());
    out.extend_from_slice(b"\r\n");
    Ok(())
}

/// A header name `http` takes: a token of at most 65,535 bytes.
fn valid_name(name: &[u8]) -> bool {
    !name.is_empty() && name.len() < 1 << 16 && name.iter().all(|&b| is_token_byte(b))
}

/// A header value `http` takes from a string: no control byte but tab.
fn valid_value(value: &[u8]) -> bool {
    value.iter().all(|&b| b >= 32 && b != 127 || b == b'\t')
}

/// Go's `CanonicalMIMEHeaderKey` ([`push_canonical`]) as a string.
pub fn canonical(name: &str) -> String {
    prefixed_canonical("", name)
}

/// The `ConnectRequest` metadata key of header `name`: `HttpHeader:` and the name's canonical
/// form, in one allocation.
pub fn header_key(name: &str) -> String {
    prefixed_canonical(key::HTTP_HEADER_PREFIX, name)
}

fn prefixed_canonical(prefix: &str, name: &str) -> String {
    let mut out = Vec::with_capacity(prefix.len() + name.len());
    out.extend_from_slice(prefix.as_bytes());
    push_canonical(name.as_bytes(), &mut out);
    // Only ASCII letters change case, so the bytes stay UTF-8.
    String::from_utf8(out).unwrap_or_else(|_| format!("{prefix}{name}"))
}

/// Appends one chunk of the chunked transfer coding (nothing for an empty `data`, which would
/// read as the last chunk).
pub fn write_chunk(out: &mut Vec<u8>, data: &[u8]) {
    if data.is_empty() {
        return;
    }
    out.extend_from_slice(format!("{:x}\r\n", data.len()).as_bytes());
    out.extend_from_slice(data);
    out.extend_from_slice(b"\r\n");
}

/// The last chunk, with no trailers.
pub const LAST_CHUNK: &[u8] = b"0\r\n\r\n";

/// The origin broke HTTP/1.1.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ResponseError {
    /// httparse refused the head.
    #[error("malformed response head from origin: {0}")]
    Head(String),
    /// The head grew past [`MAX_HEAD_BYTES`].
    #[error("response head from origin exceeds {MAX_HEAD_BYTES} bytes")]
    HeadTooLarge,
    /// Conflicting or unreadable `Content-Length`.
    #[error("invalid Content-Length from origin")]
    ContentLength,
    /// A bad chunk-size line, or a line too long.
    #[error("malformed chunked body from origin")]
    Chunk,
    /// The origin closed before the body was complete.
    #[error("origin closed the connection before the body was complete")]
    Truncated,
}

/// A parsed response head.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResponseHead {
    /// Status code.
    pub status: u16,
    /// Header lines in order, names canonicalised; hop-by-hop framing headers Go's client
    /// removes (`Transfer-Encoding`, and `Content-Length` beside chunking) are left out.
    pub headers: Vec<(String, String)>,
    /// How the body is delimited.
    pub body: Framing,
    /// Whether the connection may carry another request after this response.
    pub keep_alive: bool,
}

/// Parses a response head at the start of `buf`. `Ok(None)`: incomplete, read more. Interim
/// `1xx` responses other than `101` are skipped (their length is included in `used`).
/// `is_head`: the request was HEAD, so no body follows.
pub fn parse_response(
    buf: &[u8],
    is_head: bool,
) -> Result<Option<(ResponseHead, usize)>, ResponseError> {
    let mut used = 0;
    loop {
        let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut resp = httparse::Response::new(&mut headers);
        let n = match resp.parse(&buf[used..]) {
            Ok(httparse::Status::Complete(n)) => n,
            Ok(httparse::Status::Partial) if buf.len() > MAX_HEAD_BYTES => {
                return Err(ResponseError::HeadTooLarge)
            }
            Ok(httparse::Status::Partial) => return Ok(None),
            Err(e) => return Err(ResponseError::Head(e.to_string())),
        };
        let status = resp.code.unwrap_or(0);
        if (100..200).contains(&status) && status != 101 {
            used += n;
            continue;
        }
        let head = response_head(status, resp.version == Some(1), resp.headers, is_head)?;
        return Ok(Some((head, used + n)));
    }
}

fn response_head(
    status: u16,
    http11: bool,
    raw: &[httparse::Header<'_>],
    is_head: bool,
) -> Result<ResponseHead, ResponseError> {
    let mut length: Option<u64> = None;
    let mut chunked = false;
    let mut close = !http11;
    let mut has_close = false;
    for h in raw {
        let value = String::from_utf8_lossy(h.value);
        if h.name.eq_ignore_ascii_case("content-length") {
            let n = value
                .trim()
                .parse::<u64>()
                .map_err(|_| ResponseError::ContentLength)?;
            if length.is_some_and(|l| l != n) {
                return Err(ResponseError::ContentLength);
            }
            length = Some(n);
        } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
            chunked = value
                .rsplit(',')
                .next()
                .is_some_and(|last| last.trim().eq_ignore_ascii_case("chunked"));
        } else if h.name.eq_ignore_ascii_case("connection") {
            for token in value.split(',').map(str::trim) {
                if token.eq_ignore_ascii_case("close") {
                    close = true;
                    has_close = true;
                } else if token.eq_ignore_ascii_case("keep-alive") && !http11 {
                    close = false;
                }
            }
        }
    }
    // Go's client takes these out of `resp.Header`, so cloudflared never forwards them:
    // `Connection` when an HTTP/1.1 response says close (`shouldClose`), `Trailer` beside
    // chunking (`fixTrailer`).
    let headers = raw
        .iter()
        .filter(|h| {
            !(h.name.eq_ignore_ascii_case("transfer-encoding")
                || (chunked && h.name.eq_ignore_ascii_case("content-length"))
                || (chunked && h.name.eq_ignore_ascii_case("trailer"))
                || (http11 && has_close && h.name.eq_ignore_ascii_case("connection")))
        })
        .map(|h| {
            (
                canonical(h.name),
                String::from_utf8_lossy(h.value).into_owned(),
            )
        })
        .collect();
    let body = if is_head || status == 204 || status == 304 || status == 101 {
        Framing::Empty
    } else if chunked {
        Framing::Chunked
    } else if let Some(n) = length {
        if n == 0 {
            Framing::Empty
        } else {
            Framing::Length(n)
        }
    } else {
        Framing::UntilClose
    };
    Ok(ResponseHead {
        status,
        headers,
        keep_alive: !close && body != Framing::UntilClose && status != 101,
        body,
    })
}

/// Reads a response body by its framing, writing the payload bytes out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BodyReader {
    state: BodyState,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum BodyState {
    /// This many bytes left.
    Length(u64),
    /// Expecting a chunk-size line.
    ChunkSize,
    /// Inside a chunk: bytes left, then its CRLF.
    ChunkData(u64),
    /// The CRLF after a chunk's data.
    ChunkEnd,
    /// Trailer lines after the last chunk, up to an empty line.
    Trailers,
    /// Until the origin closes.
    UntilClose,
    /// Complete.
    Done,
}

impl BodyReader {
    /// A reader for a body delimited by `framing`.
    pub fn new(framing: Framing) -> Self {
        let state = match framing {
            Framing::Empty | Framing::Length(0) => BodyState::Done,
            Framing::Length(n) => BodyState::Length(n),
            Framing::Chunked => BodyState::ChunkSize,
            Framing::UntilClose => BodyState::UntilClose,
        };
        Self { state }
    }

    /// True once the whole body has been read.
    pub fn is_done(&self) -> bool {
        self.state == BodyState::Done
    }

    /// Reads from `input`, appending at most `room` payload bytes to `out`. Returns how many
    /// input bytes were consumed; unconsumed bytes must be offered again with more after them.
    pub fn read(
        &mut self,
        input: &[u8],
        out: &mut Vec<u8>,
        room: usize,
    ) -> Result<usize, ResponseError> {
        let mut used = 0;
        let mut room = room;
        loop {
            let rest = &input[used..];
            match self.state {
                BodyState::Done => return Ok(used),
                BodyState::UntilClose => {
                    let n = rest.len().min(room);
                    out.extend_from_slice(&rest[..n]);
                    return Ok(used + n);
                }
                BodyState::Length(left) | BodyState::ChunkData(left) => {
                    let n = rest
                        .len()
                        .min(room)
                        .min(usize::try_from(left).unwrap_or(usize::MAX));
                    out.extend_from_slice(&rest[..n]);
                    used += n;
                    room -= n;
                    self.skip(n);
                    if left > n as u64 {
                        return Ok(used);
                    }
                }
                BodyState::ChunkSize => match httparse::parse_chunk_size(rest) {
                    Ok(httparse::Status::Complete((n, size))) => {
                        used += n;
                        self.state = if size == 0 {
                            BodyState::Trailers
                        } else {
                            BodyState::ChunkData(size)
                        };
                    }
                    Ok(httparse::Status::Partial) if rest.len() < MAX_LINE => return Ok(used),
                    _ => return Err(ResponseError::Chunk),
                },
                BodyState::ChunkEnd => match rest {
                    [b'\r', b'\n', ..] => {
                        used += 2;
                        self.state = BodyState::ChunkSize;
                    }
                    [] | [b'\r'] => return Ok(used),
                    _ => return Err(ResponseError::Chunk),
                },
                BodyState::Trailers => {
                    // Trailers are dropped, as cloudflared drops them over QUIC.
                    let Some(eol) = rest.windows(2).position(|w| w == b"\r\n") else {
                        if rest.len() >= MAX_LINE {
                            return Err(ResponseError::Chunk);
                        }
                        return Ok(used);
                    };
                    used += eol + 2;
                    if eol == 0 {
                        self.state = BodyState::Done;
                    }
                }
            }
        }
    }

    /// How many of the next input bytes are payload, passed on unchanged (0 while framing or
    /// nothing is next): a caller may move them itself, then [`BodyReader::skip`] them.
    pub fn verbatim(&self) -> usize {
        match self.state {
            BodyState::Length(left) | BodyState::ChunkData(left) => {
                usize::try_from(left).unwrap_or(usize::MAX)
            }
            BodyState::UntilClose => usize::MAX,
            _ => 0,
        }
    }

    /// Counts `n` payload bytes (at most [`BodyReader::verbatim`]) as read.
    pub fn skip(&mut self, n: usize) {
        let n = n as u64;
        self.state = match self.state {
            BodyState::Length(left) if n >= left => BodyState::Done,
            BodyState::Length(left) => BodyState::Length(left - n),
            BodyState::ChunkData(left) if n >= left => BodyState::ChunkEnd,
            BodyState::ChunkData(left) => BodyState::ChunkData(left - n),
            other => other,
        };
    }

    /// The origin closed: fine only for a body delimited by the close (or already complete).
    pub fn finish(&mut self) -> Result<(), ResponseError> {
        match self.state {
            BodyState::Done => Ok(()),
            BodyState::UntilClose => {
                self.state = BodyState::Done;
                Ok(())
            }
            _ => Err(ResponseError::Truncated),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rpc::frame::FrameLimits;
    use crate::stream::connect::{decode_connect_request, request_bytes, ConnectionType};

    /// Writes the request head for an HTTP `ConnectRequest` into `out`.
    fn write(
        dest: &str,
        meta: &[(&str, &str)],
        websocket: bool,
        out: &mut Vec<u8>,
    ) -> Result<RequestHead, RequestError> {
        let buf = request_bytes(ConnectionType::Http, dest, meta);
        let (req, _) = decode_connect_request(&buf, &FrameLimits::CONNECT_REQUEST)
            .unwrap()
            .unwrap();
        write_request(&req, websocket, &RequestOptions::default(), out)
    }

    fn request(dest: &str, meta: &[(&str, &str)], websocket: bool) -> (String, RequestHead) {
        let mut out = Vec::new();
        let head = write(dest, meta, websocket, &mut out).unwrap();
        (String::from_utf8(out).unwrap(), head)
    }

    #[test]
    fn request_head_follows_cloudflared_mapping() {
        let (text, head) = request(
            "https://app.example.com/a/b?x=1",
            &[
                ("HttpMethod", "POST"),
                ("HttpHost", "app.example.com"),
                ("HttpHeader:content-type", "text/plain"),
                ("HttpHeader:Content-Length", "5"),
                ("HttpHeader:Cf-Cloudflared-Proxy-Connection-Upgrade", "x"),
                ("FlowID", "ignored"),
            ],
            false,
        );
        assert_eq!(
            text,
            "POST /a/b?x=1 HTTP/1.1\r\nHost: app.example.com\r\nContent-Type: text/plain\r\n\
             Connection: keep-alive\r\nContent-Length: 5\r\n\r\n"
        );
        assert_eq!(head.body, Framing::Length(5));
        assert_eq!(head.host.as_deref(), Some("app.example.com"));
    }

    fn request_with(
        dest: &str,
        meta: &[(&str, &str)],
        websocket: bool,
        options: RequestOptions<'_>,
    ) -> (String, RequestHead) {
        let buf = request_bytes(ConnectionType::Http, dest, meta);
        let (req, _) = decode_connect_request(&buf, &FrameLimits::CONNECT_REQUEST)
            .unwrap()
            .unwrap();
        let mut out = Vec::new();
        let head = write_request(&req, websocket, &options, &mut out).unwrap();
        (String::from_utf8(out).unwrap(), head)
    }

    #[test]
    fn tags_go_to_the_origin_as_cf_warp_tag_headers() {
        let tags =
            Tag::with_connector_id(&[Tag::parse("env=prod").unwrap()], uuid::Uuid::from_u128(7));
        let options = RequestOptions {
            tags: &tags,
            ..RequestOptions::default()
        };
        for websocket in [false, true] {
            let (text, _) = request_with("http://a.test/", &[], websocket, options);
            assert!(
                text.contains(
                    "Cf-Warp-Tag-Env: prod\r\n\
                     Cf-Warp-Tag-Id: 00000000-0000-0000-0000-000000000007\r\n"
                ),
                "{text}"
            );
        }
    }

    #[test]
    fn http_host_header_replaces_host_and_forwards_the_original() {
        let options = RequestOptions {
            host_header: Some("internal.app"),
            ..RequestOptions::default()
        };
        let meta = [
            ("HttpHost", "app.example.com"),
            ("HttpHeader:X-Forwarded-Host", "from-the-edge"),
            ("HttpHeader:Accept", "*/*"),
        ];
        let (text, head) = request_with("http://app.example.com/p", &meta, false, options);
        assert_eq!(
            text,
            "GET /p HTTP/1.1\r\nHost: internal.app\r\nAccept: */*\r\n\
             X-Forwarded-Host: app.example.com\r\nConnection: keep-alive\r\n\r\n"
        );
        assert_eq!(
            head.host.as_deref(),
            Some("app.example.com"),
            "rules and pooling go by the eyeball's Host"
        );
        let (text, _) = request_with("http://app.example.com/ws", &meta, true, options);
        assert!(text.contains("Host: internal.app\r\n"), "{text}");
        assert!(text.contains("X-Forwarded-Host: app.example.com\r\n"));
        assert!(!text.contains("from-the-edge"));
        // Without the option the edge's headers pass unchanged.
        let (text, _) = request_with("http://app.example.com/p", &meta, false, Default::default());
        assert!(text.contains("Host: app.example.com\r\n"));
        assert!(text.contains("X-Forwarded-Host: from-the-edge\r\n"));
    }

    #[test]
    fn disable_chunked_encoding_sends_a_length_or_a_bare_body() {
        let options = RequestOptions {
            disable_chunked_encoding: true,
            ..RequestOptions::default()
        };
        let chunked = ("HttpHeader:Transfer-Encoding", "chunked");
        let post = ("HttpMethod", "POST");
        let (text, head) = request_with(
            "/u",
            &[post, chunked, ("HttpHeader:Content-Length", "12")],
            false,
            options,
        );
        assert!(text.ends_with("Connection: keep-alive\r\nContent-Length: 12\r\n\r\n"));
        assert!(!text.contains("Transfer-Encoding"));
        assert_eq!(head.body, Framing::Length(12));
        let (text, head) = request_with("/u", &[post, chunked], false, options);
        assert!(text.ends_with("Connection: keep-alive\r\n\r\n"), "{text}");
        assert!(!text.contains("Content-Length") && !text.contains("Transfer-Encoding"));
        assert_eq!(head.body, Framing::UntilClose);
        let (_, head) = request_with(
            "/u",
            &[post, ("HttpHeader:Content-Length", "3")],
            false,
            options,
        );
        assert_eq!(head.body, Framing::Length(3));
        let (_, head) = request_with("/u", &[post], false, options);
        assert_eq!(head.body, Framing::Empty);
        let (_, head) = request_with("/ws", &[chunked], true, options);
        assert_eq!(
            head.body,
            Framing::Empty,
            "WebSocket requests carry no body"
        );
    }

    #[test]
    fn bodies_without_length_or_chunking_are_dropped() {
        let (_, head) = request("/ok", &[("HttpMethod", "get")], false);
        assert_eq!(head.body, Framing::Empty);
        let (text, head) = request(
            "/up",
            &[("HttpHeader:Transfer-Encoding", "gzip, Chunked")],
            false,
        );
        assert!(text.starts_with("GET /up HTTP/1.1\r\n"));
        assert!(text.contains("Transfer-Encoding: chunked\r\n"));
        assert_eq!(head.body, Framing::Chunked);
    }

    #[test]
    fn websocket_request_gets_upgrade_headers_and_no_body() {
        let (text, head) = request(
            "http://h/ws",
            &[
                ("HttpHeader:Content-Length", "9"),
                ("HttpHeader:Sec-WebSocket-Key", "k"),
            ],
            true,
        );
        assert!(text.contains(
            "Connection: Upgrade\r\nUpgrade: websocket\r\nSec-Websocket-Version: 13\r\n"
        ));
        assert!(text.contains("Sec-Websocket-Key: k\r\n"));
        assert_eq!(head.body, Framing::Empty);
    }

    #[test]
    fn bad_requests_are_refused_with_cloudflared_texts() {
        let refuse = |dest: &str, meta: &[(&str, &str)]| {
            let mut out = b"keep".to_vec();
            let e = write(dest, meta, false, &mut out).unwrap_err();
            assert_eq!(out, b"keep");
            e.to_string()
        };
        assert_eq!(
            refuse("/", &[("HttpHeader:a:b", "x")]),
            "header Key: HttpHeader:a:b malformed"
        );
        assert!(refuse("/", &[("HttpHeader:Content-Length", "x")])
            .starts_with("Error setting content-length"));
        assert!(refuse("/", &[("HttpHeader:X", "a\r\nInjected: 1")]).contains("invalid header"));
        assert!(refuse("/", &[("HttpMethod", "GE T")]).contains("invalid method"));
        assert!(refuse("not a url", &[]).contains("destination"));
    }

    #[test]
    fn canonical_names_match_go() {
        assert_eq!(canonical("content-type"), "Content-Type");
        assert_eq!(canonical("X-FORWARDED-FOR"), "X-Forwarded-For");
        assert_eq!(canonical("sec-websocket-key"), "Sec-Websocket-Key");
        assert_eq!(canonical("bad name"), "bad name");
    }

    #[test]
    fn response_heads_framing_and_keep_alive() {
        let (head, used) = parse_response(
            b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\ncontent-type: a\r\nContent-Length: 3\r\n\r\nabc",
            false,
        )
        .unwrap()
        .unwrap();
        assert_eq!(head.status, 200);
        assert_eq!(head.body, Framing::Length(3));
        assert!(head.keep_alive);
        assert_eq!(head.headers[0], ("Content-Type".into(), "a".into()));
        assert_eq!(used, 25 + 55);

        let (head, _) = parse_response(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 9\r\nConnection: close\r\n\r\n",
            false,
        )
        .unwrap()
        .unwrap();
        assert_eq!(head.body, Framing::Chunked);
        assert!(!head.keep_alive);
        assert_eq!(head.headers, vec![], "Go's client drops Connection: close");
        let (head, _) = parse_response(
            b"HTTP/1.1 200 OK\r\nConnection: keep-alive, Close\r\nConnection: x\r\n\
              Keep-Alive: timeout=5\r\nTrailer: T\r\nContent-Length: 0\r\n\r\n",
            false,
        )
        .unwrap()
        .unwrap();
        assert!(!head.keep_alive);
        assert_eq!(
            head.headers,
            vec![
                ("Keep-Alive".into(), "timeout=5".into()),
                ("Trailer".into(), "T".into()),
                ("Content-Length".into(), "0".into())
            ],
            "every Connection line goes; Trailer stays without chunking"
        );
        let (head, _) = parse_response(b"HTTP/1.0 200 OK\r\nConnection: close\r\n\r\n", false)
            .unwrap()
            .unwrap();
        assert_eq!(
            head.headers,
            vec![("Connection".into(), "close".into())],
            "an HTTP/1.0 response keeps it, as in Go"
        );

        let (head, _) = parse_response(b"HTTP/1.0 200 OK\r\n\r\n", false)
            .unwrap()
            .unwrap();
        assert_eq!((head.body, head.keep_alive), (Framing::UntilClose, false));
        let (head, _) = parse_response(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n", true)
            .unwrap()
            .unwrap();
        assert_eq!(head.body, Framing::Empty);
        assert_eq!(parse_response(b"HTTP/1.1 200 OK\r\n", false), Ok(None));
        assert!(parse_response(
            b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
            false
        )
        .is_err());
        assert!(parse_response(b"garbage\r\n\r\n", false).is_err());
    }

    #[test]
    fn chunked_bodies_are_dechunked_across_any_split() {
        let wire = b"5;ext=1\r\nhello\r\n1\r\n \r\n5\r\nworld\r\n0\r\nTrailer: x\r\n\r\n";
        for split in 0..wire.len() {
            let mut reader = BodyReader::new(Framing::Chunked);
            let mut out = Vec::new();
            let mut pending = wire[..split].to_vec();
            let used = reader.read(&pending, &mut out, usize::MAX).unwrap();
            pending.drain(..used);
            pending.extend_from_slice(&wire[split..]);
            let used = reader.read(&pending, &mut out, usize::MAX).unwrap();
            assert_eq!(used, pending.len(), "split {split}");
            assert_eq!(out, b"hello world");
            assert!(reader.is_done());
        }
    }

    #[test]
    fn body_reads_respect_room_and_length() {
        let mut reader = BodyReader::new(Framing::Length(4));
        let mut out = Vec::new();
        assert_eq!(reader.read(b"abcdef", &mut out, 3).unwrap(), 3);
        assert_eq!(reader.read(b"def", &mut out, 3).unwrap(), 1);
        assert!(reader.is_done());
        assert_eq!(out, b"abcd");
        let mut reader = BodyReader::new(Framing::Length(4));
        reader.read(b"ab", &mut out, 9).unwrap();
        assert_eq!(reader.finish(), Err(ResponseError::Truncated));
        let mut reader = BodyReader::new(Framing::UntilClose);
        assert_eq!(reader.read(b"xyz", &mut out, 9).unwrap(), 3);
        assert_eq!(reader.finish(), Ok(()));
        assert!(BodyReader::new(Framing::Chunked)
            .read(b"zz\r\n", &mut out, 9)
            .is_err());
    }

    /// The header checks take and refuse exactly what `http`'s `HeaderName::from_bytes` and
    /// `HeaderValue::from_str` do, on any bytes.
    #[test]
    fn header_checks_match_the_http_crate() {
        use proptest::prelude::*;
        let bytes = || {
            prop_oneof![
                proptest::collection::vec(any::<u8>(), 0..40),
                proptest::collection::vec(
                    prop::sample::select(b"aZ09-_!~ \t:\x7f\x80\r\n\"(".to_vec()),
                    0..12
                ),
            ]
        };
        proptest!(|(name in bytes(), value in bytes())| {
            prop_assert_eq!(
                valid_name(&name),
                http::HeaderName::from_bytes(&name).is_ok(),
                "name {:?}", name
            );
            if let Ok(value) = std::str::from_utf8(&value) {
                prop_assert_eq!(
                    valid_value(value.as_bytes()),
                    http::HeaderValue::from_str(value).is_ok(),
                    "value {:?}", value
                );
            }
        });
        let long = vec![b'a'; (1 << 16) - 1];
        assert!(valid_name(&long) && http::HeaderName::from_bytes(&long).is_ok());
        let longer = vec![b'a'; 1 << 16];
        assert!(!valid_name(&longer) && http::HeaderName::from_bytes(&longer).is_err());
        assert!(
            valid_value("caf\u{e9}".as_bytes()) && http::HeaderValue::from_str("caf\u{e9}").is_ok()
        );
    }
}
