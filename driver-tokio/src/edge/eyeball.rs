//! The public HTTP port: eyeball HTTP/1.1 requests (WebSocket upgrades included) routed by
//! `Host` to a tunnel, their bodies relayed through the edge loop.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use burrow_core::edge::forwarded::{request_metadata, HOP_BY_HOP};
use burrow_core::edge::{OpenError, StreamEvent, Target};
use burrow_core::stream::connect::{key, ConnectionType};
use bytes::Bytes;
use http_body_util::BodyExt;
use hyper::body::Frame;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, Semaphore};

use super::event_loop::{open, Cmd, Events};
use super::tcp_map::splice;
use super::HttpLimits;

/// Response body fed by the edge loop, one chunk per credit. A stream that ends early
/// (reset, refused, or the loop gone) fails the body, so hyper aborts the connection rather
/// than end a chunked response as if it were whole.
struct ChanBody {
    events: Events,
    done: bool,
}

impl hyper::body::Body for ChanBody {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, std::io::Error>>> {
        while !self.done {
            let ended = match std::task::ready!(self.events.poll_recv(cx)) {
                Some(StreamEvent::Body(b)) => {
                    self.events.read_more();
                    return Poll::Ready(Some(Ok(Frame::data(b))));
                }
                Some(StreamEvent::End) => true,
                Some(StreamEvent::Reset | StreamEvent::Refused(_)) | None => false,
                Some(StreamEvent::Ack | StreamEvent::Response { .. }) => continue,
            };
            self.done = true;
            if !ended {
                return Poll::Ready(Some(Err(std::io::Error::other(
                    "the tunnel reset the response",
                ))));
            }
        }
        Poll::Ready(None)
    }
}

/// Serves eyeballs on `listener` until the edge stops.
pub(super) async fn serve(
    listener: TcpListener,
    limits: HttpLimits,
    cmds: mpsc::UnboundedSender<Cmd>,
) {
    let slots = Arc::new(Semaphore::new(limits.http_max_connections));
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(limits.http_header_timeout);
    loop {
        // At the cap, stop accepting: further eyeballs wait in the kernel's backlog.
        let Ok(slot) = slots.clone().acquire_owned().await else {
            return;
        };
        let (stream, peer) = crate::accept::accept(&listener, "eyeball HTTP").await;
        let _ = stream.set_nodelay(true);
        let cmds = cmds.clone();
        let conn = http.serve_connection(
            TokioIo::new(stream),
            service_fn(move |req| {
                let cmds = cmds.clone();
                async move { Ok::<_, std::convert::Infallible>(handle(req, peer, cmds).await) }
            }),
        );
        tokio::spawn(async move {
            let _ = conn.with_upgrades().await;
            drop(slot);
        });
    }
}

type Resp = hyper::Response<http_body_util::Either<ChanBody, http_body_util::Full<Bytes>>>;

fn plain(status: u16, text: &str) -> Resp {
    let mut r = hyper::Response::new(http_body_util::Either::Right(http_body_util::Full::new(
        Bytes::from(text.to_owned()),
    )));
    *r.status_mut() = http::StatusCode::from_u16(status).unwrap_or(http::StatusCode::BAD_GATEWAY);
    r
}

async fn handle(
    mut req: hyper::Request<hyper::body::Incoming>,
    peer: SocketAddr,
    cmds: mpsc::UnboundedSender<Cmd>,
) -> Resp {
    let host = req
        .headers()
        .get(http::header::HOST)
        .and_then(|h| h.to_str().ok())
        .or_else(|| req.uri().host())
        .unwrap_or("")
        .to_owned();
    let websocket = req
        .headers()
        .get(http::header::UPGRADE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("websocket"));
    let pq = req
        .uri()
        .path_and_query()
        .map_or("/", |p| p.as_str())
        .to_owned();
    let metadata = request_metadata(
        req.method().as_str(),
        &host,
        req.headers()
            .iter()
            .filter_map(|(name, value)| Some((name.as_str(), value.to_str().ok()?))),
        peer.ip(),
    );
    let kind = if websocket {
        ConnectionType::WebSocket
    } else {
        ConnectionType::Http
    };
    let dest = format!("http://{host}{pq}");
    let (key, mut events, acks) = match open(&cmds, Target::Hostname(host), dest, kind, metadata) {
        Ok(x) => x,
        Err(e) => return plain(502, &format!("{e}\n")),
    };
    // Request body (not for WebSocket: bytes flow after the upgrade, acknowledged alike).
    let upgrade = if websocket {
        Some((hyper::upgrade::on(&mut req), acks))
    } else if hyper::body::Body::is_end_stream(req.body()) {
        // No body (a GET, a `Content-Length: 0`): no task to relay one.
        let _ = cmds.send(Cmd::Finish(key));
        None
    } else {
        let body = req.into_body();
        let c = cmds.clone();
        tokio::spawn(async move {
            let mut body = body;
            while let Some(frame) = body.frame().await {
                match frame {
                    Ok(f) => {
                        if let Ok(data) = f.into_data() {
                            if data.is_empty() {
                                continue;
                            }
                            if c.send(Cmd::Body(key, data)).is_err() {
                                return;
                            }
                            if !acks.wait().await {
                                return;
                            }
                        }
                    }
                    Err(_) => {
                        let _ = c.send(Cmd::Reset(key));
                        return;
                    }
                }
            }
            let _ = c.send(Cmd::Finish(key));
        });
        None
    };
    // Wait for the response head.
    let (error, meta) = loop {
        match events.recv().await {
            Some(StreamEvent::Response { error, metadata }) => break (error, metadata),
            Some(StreamEvent::Refused(e)) => {
                let status = if e == OpenError::NoRoute { 404 } else { 502 };
                return plain(status, &format!("{e}\n"));
            }
            Some(StreamEvent::Reset) | None | Some(StreamEvent::End) => {
                return plain(502, "the tunnel reset the request\n");
            }
            Some(StreamEvent::Ack | StreamEvent::Body(_)) => {}
        }
    };
    if !error.is_empty() {
        let _ = cmds.send(Cmd::Reset(key));
        return plain(502, &format!("{error}\n"));
    }
    let status = meta
        .iter()
        .find(|(k, _)| k == key::HTTP_STATUS)
        .and_then(|(_, v)| v.parse::<u16>().ok())
        .unwrap_or(502);
    let mut builder = hyper::Response::builder().status(status);
    for (k, v) in &meta {
        if let Some(name) = k.strip_prefix(key::HTTP_HEADER_PREFIX) {
            let hop_by_hop = HOP_BY_HOP
                .iter()
                .chain(&["transfer-encoding"])
                .any(|h| name.eq_ignore_ascii_case(h));
            if !websocket && hop_by_hop {
                continue;
            }
            builder = builder.header(name, v);
        }
    }
    if status == 101 {
        if let Some((upgrade, acks)) = upgrade {
            let c = cmds.clone();
            tokio::spawn(async move {
                let Ok(upgraded) = upgrade.await else {
                    let _ = c.send(Cmd::Reset(key));
                    return;
                };
                let (rd, wr) = tokio::io::split(TokioIo::new(upgraded));
                splice(key, rd, wr, c, events, acks).await;
            });
        }
        return builder
            .body(http_body_util::Either::Right(http_body_util::Full::new(
                Bytes::new(),
            )))
            .unwrap_or_else(|_| plain(502, "bad response headers\n"));
    }
    let body = ChanBody {
        events,
        done: false,
    };
    builder
        .body(http_body_util::Either::Left(body))
        .unwrap_or_else(|_| plain(502, "bad response headers\n"))
}
