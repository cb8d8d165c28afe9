//! The public HTTP port: eyeball HTTP/1.1 requests (WebSocket upgrades included) routed by
//! `Host` to a tunnel, their bodies relayed through the edge loop.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use burrow_core::edge::forwarded::{request_metadata, HOP_BY_HOP};
use burrow_core::edge::{EyeballId, OpenError, StreamEvent, Target};
use burrow_core::stream::connect::{key, ConnectionType};
use bytes::Bytes;
use http_body_util::BodyExt;
use hyper::body::Frame;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, Semaphore};

use super::event_loop::{open, Cmd};
use super::tcp_map::splice;
use super::HttpLimits;

/// Response body fed by the edge loop, one chunk per credit.
struct ChanBody {
    rx: mpsc::UnboundedReceiver<Bytes>,
    cmds: mpsc::UnboundedSender<Cmd>,
    key: EyeballId,
    done: bool,
}

impl hyper::body::Body for ChanBody {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, std::io::Error>>> {
        if self.done {
            return Poll::Ready(None);
        }
        match self.rx.poll_recv(cx) {
            Poll::Ready(Some(b)) => {
                let _ = self.cmds.send(Cmd::ReadMore(self.key));
                Poll::Ready(Some(Ok(Frame::data(b))))
            }
            Poll::Ready(None) => {
                self.done = true;
                Poll::Ready(None)
            }
            Poll::Pending => Poll::Pending,
        }
    }
}

impl Drop for ChanBody {
    fn drop(&mut self) {
        if !self.done {
            let _ = self.cmds.send(Cmd::Reset(self.key));
        }
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
    let (key, mut events) = match open(&cmds, Target::Hostname(host), dest, kind, metadata) {
        Ok(x) => x,
        Err(e) => return plain(502, &format!("{e}\n")),
    };
    // Request body (not for WebSocket: bytes flow after the upgrade).
    let (ack_tx, ack_rx) = mpsc::unbounded_channel::<()>();
    let mut ack_rx = Some(ack_rx);
    let upgrade = if websocket {
        Some(hyper::upgrade::on(&mut req))
    } else {
        let body = req.into_body();
        let c = cmds.clone();
        let mut ack_rx = ack_rx.take();
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
                            let acked = match ack_rx.as_mut() {
                                Some(rx) => rx.recv().await.is_some(),
                                None => false,
                            };
                            if !acked {
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
    // Wait for the response head, passing acks along.
    let (error, meta) = loop {
        match events.recv().await {
            Some(StreamEvent::Response { error, metadata }) => break (error, metadata),
            Some(StreamEvent::Ack) => {
                let _ = ack_tx.send(());
            }
            Some(StreamEvent::Refused(e)) => {
                let status = if e == OpenError::NoRoute { 404 } else { 502 };
                return plain(status, &format!("{e}\n"));
            }
            Some(StreamEvent::Reset) | None | Some(StreamEvent::End) => {
                return plain(502, "the tunnel reset the request\n");
            }
            Some(StreamEvent::Body(_)) => {}
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
    let (body_tx, body_rx) = mpsc::unbounded_channel::<Bytes>();
    let mut builder = hyper::Response::builder().status(status);
    for (k, v) in &meta {
        if let Some(name) = k.strip_prefix(key::HTTP_HEADER_PREFIX) {
            let lower = name.to_ascii_lowercase();
            if !websocket && (HOP_BY_HOP.contains(&lower.as_str()) || lower == "transfer-encoding")
            {
                continue;
            }
            builder = builder.header(name, v);
        }
    }
    if status == 101 {
        if let (Some(upgrade), Some(ack_rx)) = (upgrade, ack_rx.take()) {
            let c = cmds.clone();
            tokio::spawn(async move {
                let Ok(upgraded) = upgrade.await else {
                    let _ = c.send(Cmd::Reset(key));
                    return;
                };
                let (rd, wr) = tokio::io::split(TokioIo::new(upgraded));
                splice(key, rd, wr, c, events, ack_tx, ack_rx).await;
            });
        }
        return builder
            .body(http_body_util::Either::Right(http_body_util::Full::new(
                Bytes::new(),
            )))
            .unwrap_or_else(|_| plain(502, "bad response headers\n"));
    }
    // Forward body events into the response body.
    tokio::spawn(async move {
        while let Some(ev) = events.recv().await {
            match ev {
                StreamEvent::Body(b) => {
                    if body_tx.send(b).is_err() {
                        return;
                    }
                }
                StreamEvent::Ack => {
                    let _ = ack_tx.send(());
                }
                StreamEvent::End => return,
                // Dropping body_tx without End: hyper sees an early end; for a body with a
                // length that aborts the connection, which is what a reset must look like.
                StreamEvent::Reset | StreamEvent::Refused(_) => return,
                StreamEvent::Response { .. } => {}
            }
        }
    });
    let body = ChanBody {
        rx: body_rx,
        cmds,
        key,
        done: false,
    };
    builder
        .body(http_body_util::Either::Left(body))
        .unwrap_or_else(|_| plain(502, "bad response headers\n"))
}
