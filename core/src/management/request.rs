//! A request to the management service and its plain answers: the routes of cloudflared's
//! `management/service.go` (chi), its token check (`middleware.go`), its CORS policy (go-chi's
//! for `https://*.cloudflare.com`) and the WebSocket handshake checks of `/logs`
//! (nhooyr.io/websocket's `Accept`).

use super::token::{self, Claims};
use crate::stream::websocket;

/// Longest request head read.
pub const MAX_HEAD: usize = 16 * 1024;
const MAX_HEADERS: usize = 64;

/// The parts of a request head the service looks at.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Head {
    /// Method.
    pub method: String,
    /// Path, without the query.
    pub path: String,
    /// The `access_token` query parameter.
    pub access_token: Option<String>,
    /// `Host`.
    pub host: String,
    /// `Origin`.
    pub origin: Option<String>,
    /// `Connection`.
    pub connection: String,
    /// `Upgrade`.
    pub upgrade: String,
    /// `Sec-WebSocket-Key`.
    pub ws_key: String,
    /// `Sec-WebSocket-Version`.
    pub ws_version: String,
    /// Whether a body follows (`Content-Length` other than 0, or any `Transfer-Encoding`).
    pub has_body: bool,
}

/// The request head could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HeadError {
    /// httparse refused it.
    #[error("malformed request head: {0}")]
    Malformed(String),
    /// Longer than [`MAX_HEAD`].
    #[error("request head over {MAX_HEAD} bytes")]
    TooLong,
}

/// Reads a head from the start of `buf`: the head and its length, or None while incomplete.
pub fn parse_head(buf: &[u8]) -> Result<Option<(Head, usize)>, HeadError> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    let n = match req.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) if buf.len() > MAX_HEAD => return Err(HeadError::TooLong),
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(e) => return Err(HeadError::Malformed(e.to_string())),
    };
    let target = req.path.unwrap_or("/");
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    let mut head = Head {
        method: req.method.unwrap_or("").to_owned(),
        path: path.to_owned(),
        access_token: query_value(query, "access_token"),
        ..Head::default()
    };
    for h in req.headers.iter() {
        let value = String::from_utf8_lossy(h.value).trim().to_owned();
        let name = h.name;
        let slot = if name.eq_ignore_ascii_case("host") {
            &mut head.host
        } else if name.eq_ignore_ascii_case("connection") {
            &mut head.connection
        } else if name.eq_ignore_ascii_case("upgrade") {
            &mut head.upgrade
        } else if name.eq_ignore_ascii_case("sec-websocket-key") {
            &mut head.ws_key
        } else if name.eq_ignore_ascii_case("sec-websocket-version") {
            &mut head.ws_version
        } else if name.eq_ignore_ascii_case("origin") {
            head.origin = Some(value);
            continue;
        } else if name.eq_ignore_ascii_case("content-length") {
            head.has_body |= value != "0";
            continue;
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            head.has_body = true;
            continue;
        } else {
            continue;
        };
        // Go's `Header.Get` reads the first value; `Connection` and `Upgrade` are searched
        // through all of theirs, so those are joined.
        let joined =
            name.eq_ignore_ascii_case("connection") || name.eq_ignore_ascii_case("upgrade");
        if slot.is_empty() {
            *slot = value;
        } else if joined {
            slot.push_str(", ");
            slot.push_str(&value);
        }
    }
    Ok(Some((head, n)))
}

/// The first value of `key` in a query string, decoded (Go's `Query().Get`).
fn query_value(query: &str, key: &str) -> Option<String> {
    form_urlencoded::parse(query.as_bytes())
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.into_owned())
}

/// Where a request goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    /// `GET`/`HEAD /ping`.
    Ping,
    /// `GET /host_details`.
    HostDetails,
    /// `GET /logs`: the log stream, for this token's actor.
    Logs(Claims),
    /// `GET /metrics` (diagnostics on): the connector's Prometheus exposition.
    Metrics,
    /// Answered here: status, headers, body.
    Reply(Reply),
}

/// A complete plain answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    /// Status code.
    pub status: u16,
    /// Headers besides framing.
    pub headers: Vec<(&'static str, String)>,
    /// Body.
    pub body: Vec<u8>,
}

impl Reply {
    fn new(status: u16, content_type: &'static str, body: impl Into<Vec<u8>>) -> Self {
        let mut headers = Vec::new();
        if !content_type.is_empty() {
            headers.push(("Content-Type", content_type.to_owned()));
        }
        Self {
            status,
            headers,
            body: body.into(),
        }
    }

    /// Go's `http.Error`.
    fn text(status: u16, msg: &str) -> Self {
        let mut r = Self::new(status, "text/plain; charset=utf-8", format!("{msg}\n"));
        r.headers.push(("X-Content-Type-Options", "nosniff".into()));
        r
    }

    /// A JSON body and a newline, as Go's `json.Encoder` writes it.
    pub fn json(status: u16, body: String) -> Self {
        Self::new(status, "application/json", format!("{body}\n"))
    }

    /// The bytes of an HTTP/1.1 response that closes the connection after it (the connector
    /// never pools these in-process connections; Go's client takes `Connection: close` out).
    pub fn encode(&self, head_only: bool, out: &mut Vec<u8>) {
        use std::io::Write;
        let _ = write!(out, "HTTP/1.1 {} {}\r\n", self.status, reason(self.status));
        for (k, v) in &self.headers {
            let _ = write!(out, "{k}: {v}\r\n");
        }
        let _ = write!(
            out,
            "Content-Length: {}\r\nConnection: close\r\n\r\n",
            self.body.len()
        );
        if !head_only {
            out.extend_from_slice(&self.body);
        }
    }
}

fn reason(status: u16) -> &'static str {
    http::StatusCode::from_u16(status)
        .ok()
        .and_then(|s| s.canonical_reason())
        .unwrap_or("")
}

/// Routes `head` as cloudflared's chi router with its token middleware in front.
pub fn route(head: &Head, diagnostics: bool) -> Route {
    let claims =
        match head.access_token.as_deref().map(token::parse) {
            Some(Ok(c)) => c,
            // cloudflared answers a bad token as a missing one.
            _ => return Route::Reply(Reply::json(
                400,
                r#"{"errors":[{"code":1001,"message":"missing access_token query parameter"}]}"#
                    .to_owned(),
            )),
        };
    let allowed: &[&str] = match head.path.as_str() {
        "/ping" => &["GET", "HEAD"],
        "/logs" | "/host_details" => &["GET"],
        "/metrics" if diagnostics => &["GET"],
        _ => return Route::Reply(Reply::text(404, "404 page not found")),
    };
    if !allowed.contains(&head.method.as_str()) {
        let mut r = Reply::new(405, "", Vec::new());
        r.headers.push(("Allow", allowed.join(", ")));
        return Route::Reply(r);
    }
    match head.path.as_str() {
        "/ping" => Route::Ping,
        "/host_details" => Route::HostDetails,
        "/metrics" => Route::Metrics,
        _ => Route::Logs(claims),
    }
}

/// go-chi/cors's headers for an actual request from `origin`: `Vary: Origin` always, the
/// origin echoed with credentials allowed when it is `https://*.cloudflare.com`.
pub fn cors(origin: Option<&str>, headers: &mut Vec<(&'static str, String)>) {
    headers.push(("Vary", "Origin".into()));
    let Some(origin) = origin.filter(|o| !o.is_empty()) else {
        return;
    };
    let o = origin.to_ascii_lowercase();
    let allowed = o.strip_prefix("https://").is_some_and(|rest| {
        rest.len() > ".cloudflare.com".len() && rest.ends_with(".cloudflare.com")
    });
    if allowed {
        headers.push(("Access-Control-Allow-Origin", origin.to_owned()));
        headers.push(("Access-Control-Allow-Credentials", "true".into()));
    }
}

/// Checks `/logs`'s WebSocket handshake as nhooyr's `Accept`: the 101's bytes, or the
/// refusal.
pub fn accept(head: &Head) -> Result<Vec<u8>, Reply> {
    let has_token = |v: &str, t: &str| v.split(',').any(|x| x.trim().eq_ignore_ascii_case(t));
    if !has_token(&head.connection, "upgrade") {
        return Err(Reply::text(
            426,
            &format!(
                "WebSocket protocol violation: Connection header {:?} does not contain Upgrade",
                head.connection
            ),
        ));
    }
    if !has_token(&head.upgrade, "websocket") {
        return Err(Reply::text(
            426,
            &format!(
                "WebSocket protocol violation: Upgrade header {:?} does not contain websocket",
                head.upgrade
            ),
        ));
    }
    if head.ws_version != "13" {
        let mut r = Reply::text(
            400,
            &format!(
                "unsupported WebSocket protocol version (only 13 is supported): {:?}",
                head.ws_version
            ),
        );
        r.headers.push(("Sec-WebSocket-Version", "13".into()));
        return Err(r);
    }
    if head.ws_key.is_empty() {
        return Err(Reply::text(
            400,
            "WebSocket protocol violation: missing Sec-WebSocket-Key",
        ));
    }
    if let Some(origin) = head.origin.as_deref().filter(|o| !o.is_empty()) {
        let host = http::Uri::try_from(origin)
            .ok()
            .and_then(|u| u.authority().map(|a| a.as_str().to_owned()));
        let Some(host) = host else {
            return Err(Reply::text(
                403,
                &format!("failed to parse Origin header {origin:?}"),
            ));
        };
        let cloudflare = host.len() > ".cloudflare.com".len()
            && host.to_ascii_lowercase().ends_with(".cloudflare.com")
            && !host[..host.len() - ".cloudflare.com".len()].contains('/');
        if !host.eq_ignore_ascii_case(&head.host) && !cloudflare {
            return Err(Reply::text(
                403,
                &format!(
                    "request Origin {origin:?} is not authorized for Host {:?}",
                    head.host
                ),
            ));
        }
    }
    let mut out = Vec::new();
    out.extend_from_slice(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: ");
    out.extend_from_slice(websocket::accept_key(&head.ws_key).as_bytes());
    out.extend_from_slice(b"\r\n\r\n");
    Ok(out)
}
