//! The task that owns both tunnel transports ([`EdgeTransports`]): it answers registrations
//! (checked against the tunnels file, routed round robin), opens request streams for the
//! listener tasks and moves their bytes, one chunk per credit or acknowledgement, so the
//! transports' flow control paces both ways.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use burrow_core::edge::auth::TunnelAuth;
use burrow_core::edge::log_budget::{LogBudget, Verdict};
use burrow_core::edge::registrar::Registrar;
use burrow_core::stream::connect::{ConnectRequest, ConnectionType, Metadata};
use burrow_core::tunnel::edge::{ConnId, EdgeEvent};
use burrow_core::tunnel::edge_transports::{DataStream, EdgeTransports};
use bytes::Bytes;
use tokio::sync::{mpsc, oneshot};
use tracing::{debug, info, warn};
use uuid::Uuid;

use super::http2::Sockets;
use crate::edge_udp::EdgeDatagrams;
use crate::quic_socket::{QuicSocket, RecvBufs};

/// A request stream: its connection and its stream there.
pub(super) type Key = (ConnId, DataStream);

/// What a listener task asks of the edge loop.
pub(super) enum Cmd {
    Open {
        tunnel: Uuid,
        dest: String,
        kind: ConnectionType,
        metadata: Vec<(String, String)>,
        events: mpsc::UnboundedSender<StreamEv>,
        reply: oneshot::Sender<Result<Key, String>>,
    },
    Body(Key, Bytes),
    Finish(Key),
    Reset(Key),
    ReadMore(Key),
    /// Close every connection, send the closes, then answer and stop.
    Shutdown(oneshot::Sender<()>),
}

/// What the edge loop tells a listener task about its stream.
#[derive(Debug)]
pub(super) enum StreamEv {
    Response {
        error: String,
        metadata: Vec<(String, String)>,
    },
    /// A request-body chunk was taken: send the next.
    Ack,
    Body(Bytes),
    End,
    Reset,
}

struct Stream {
    events: mpsc::UnboundedSender<StreamEv>,
    /// Request bytes waiting for room.
    unsent: VecDeque<Bytes>,
    finish: bool,
    readable: bool,
    credit: bool,
}

/// Bytes queued per request stream inside the endpoint.
const SEND_WINDOW: usize = 256 * 1024;
/// Largest response chunk handed to a listener at once.
const READ_CHUNK: usize = 64 * 1024;

/// Runs the edge loop until a [`Cmd::Shutdown`].
pub(super) async fn run(
    mut ep: EdgeTransports,
    socket: QuicSocket,
    mut accepted: mpsc::UnboundedReceiver<(tokio::net::TcpStream, SocketAddr)>,
    auth: TunnelAuth,
    mut cmds: mpsc::UnboundedReceiver<Cmd>,
    mut datagrams: EdgeDatagrams,
    local_config_dir: Option<std::path::PathBuf>,
) {
    // Which tunnel each registered connection serves, to name recorded configurations.
    let mut tunnel_of: HashMap<ConnId, Uuid> = HashMap::new();
    // Read in the loop, in batches, into buffers reused for every read.
    let mut recv_bufs = RecvBufs::new();
    let mut registrar = Registrar::new(auth);
    // Anyone may try to register: refusals are logged a few at a time.
    let mut refusals = LogBudget::new(Duration::from_secs(10), 5);
    let mut streams: HashMap<Key, Stream> = HashMap::new();
    // Room for a GSO batch of full-size datagrams.
    let mut buf = Vec::with_capacity(64 * 1500);
    let mut closing: Option<oneshot::Sender<()>> = None;
    let (socket_tx, mut socket_rx) = mpsc::unbounded_channel();
    let mut sockets = Sockets::new(socket_tx);
    loop {
        // Drain.
        loop {
            let now = Instant::now();
            let mut progress = false;
            while let Some(ev) = ep.poll_event() {
                progress = true;
                match ev {
                    EdgeEvent::RegisterRequested { conn, registration } => {
                        let result = registrar.register(conn, &registration, Uuid::new_v4());
                        match &result {
                            Ok(_) => {
                                tunnel_of.insert(conn, registration.tunnel_id);
                                let http2 = ep.is_http2(conn);
                                let protocol = if http2 { "http2" } else { "quic" };
                                info!(conn = conn.0, tunnel = %registration.tunnel_id, conn_index = registration.conn_index, protocol, "tunnel connection registered");
                                // No datagrams on HTTP/2 (PROTOCOL.md C§1.1).
                                if !http2 {
                                    datagrams.connection_registered(now, conn, &registration);
                                }
                            }
                            Err(e) => {
                                if let Verdict::Log { suppressed } = refusals.check(now) {
                                    warn!(conn = conn.0, tunnel = %registration.tunnel_id, cause = %e.cause, suppressed, "registration refused");
                                }
                            }
                        }
                        if let Err(e) = ep.respond_registration(now, conn, result) {
                            warn!(conn = conn.0, error = %e, "cannot answer registration");
                        }
                    }
                    EdgeEvent::Unregistered { conn } => {
                        info!(
                            conn = conn.0,
                            "tunnel connection unregistered; no new requests"
                        );
                        registrar.unregistered(conn);
                        datagrams.connection_gone(now, conn);
                    }
                    EdgeEvent::ConnectionClosed { conn, reason } => {
                        debug!(conn = conn.0, %reason, "tunnel connection closed");
                        registrar.closed(conn);
                        tunnel_of.remove(&conn);
                        datagrams.connection_gone(now, conn);
                        streams.retain(|k, s| {
                            if k.0 == conn {
                                let _ = s.events.send(StreamEv::Reset);
                                false
                            } else {
                                true
                            }
                        });
                    }
                    EdgeEvent::LocalConfiguration { conn, config } => {
                        debug!(conn = conn.0, config = %String::from_utf8_lossy(&config), "local configuration");
                        if let (Some(dir), Some(tunnel)) = (&local_config_dir, tunnel_of.get(&conn))
                        {
                            record_local_config(dir, *tunnel, &config);
                        }
                    }
                    EdgeEvent::ConfigurationResult { .. } => {}
                    // Mapped UDP sessions are v3 only; no v2 RPC sessions are opened here.
                    EdgeEvent::UdpSessionRegistered { .. }
                    | EdgeEvent::UdpSessionUnregistered { .. } => {}
                    EdgeEvent::Response {
                        conn,
                        stream,
                        error,
                        metadata,
                    } => {
                        if let Some(s) = streams.get(&(conn, stream)) {
                            let _ = s.events.send(StreamEv::Response { error, metadata });
                        }
                    }
                    EdgeEvent::ResponseReadable { conn, stream } => {
                        if let Some(s) = streams.get_mut(&(conn, stream)) {
                            s.readable = true;
                        }
                    }
                    EdgeEvent::StreamReset { conn, stream } => {
                        if let Some(s) = streams.remove(&(conn, stream)) {
                            let _ = s.events.send(StreamEv::Reset);
                        }
                    }
                }
            }
            // Request bodies in, response bodies out, as far as credit goes.
            let keys: Vec<Key> = streams.keys().copied().collect();
            for key in keys {
                let Some(s) = streams.get_mut(&key) else {
                    continue;
                };
                if s.events.is_closed() {
                    // The eyeball side went away (at any point of the exchange): nobody reads
                    // this stream, so reset it; stopping it gives its unread bytes back to the
                    // connection's receive window.
                    streams.remove(&key);
                    let _ = ep.reset_request(now, key.0, key.1);
                    progress = true;
                    continue;
                }
                while let Some(front) = s.unsent.front_mut() {
                    match ep.send_request_body(now, key.0, key.1, front, SEND_WINDOW) {
                        Ok(n) if n == front.len() => {
                            s.unsent.pop_front();
                            let _ = s.events.send(StreamEv::Ack);
                            progress = true;
                        }
                        Ok(n) => {
                            *front = front.slice(n..);
                            progress |= n > 0;
                            break;
                        }
                        Err(_) => {
                            s.unsent.clear();
                            break;
                        }
                    }
                }
                if s.finish && s.unsent.is_empty() {
                    s.finish = false;
                    let _ = ep.finish_request(now, key.0, key.1);
                    progress = true;
                }
                if s.readable && s.credit {
                    let mut chunk = Vec::new();
                    match ep.read_response(now, key.0, key.1, READ_CHUNK, &mut chunk) {
                        Ok(done) => {
                            progress = true;
                            s.readable = false;
                            if !chunk.is_empty() {
                                s.credit = false;
                                let _ = s.events.send(StreamEv::Body(Bytes::from(chunk)));
                            }
                            if done {
                                let _ = s.events.send(StreamEv::End);
                                streams.remove(&key);
                            }
                        }
                        Err(_) => {
                            // Response head not in yet, or the stream is gone.
                            s.readable = false;
                        }
                    }
                }
            }
            progress |= datagrams.pump(now, &mut ep.quic);
            progress |= sockets.pump(now, &mut ep);
            while let Some(t) = ep
                .quic
                .poll_transmit(now, socket.max_transmit_segments(), &mut buf)
            {
                progress = true;
                // A full socket buffer drops the datagrams: QUIC recovers them as losses.
                if let Err(e) = socket.try_send(&t, &buf) {
                    if e.kind() != std::io::ErrorKind::WouldBlock {
                        debug!(error = %e, to = %t.destination, "send failed");
                    }
                }
            }
            if !progress {
                break;
            }
        }
        if let Some(done) = closing.take() {
            // The closes went out with the drain above.
            let _ = done.send(());
            return;
        }
        let deadline = [ep.poll_timeout(), datagrams.poll_timeout()]
            .into_iter()
            .flatten()
            .min();
        let sleep = async {
            match deadline {
                Some(d) => tokio::time::sleep_until(tokio::time::Instant::from_std(d)).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            Ok(()) = std::future::poll_fn(|cx| socket.poll_recv_ready(cx)) => {
                let now = Instant::now();
                let got = socket.read_round(&mut recv_bufs, |r| ep.quic.handle_received(now, r));
                if let Err(e) = got {
                    debug!(error = %e, "UDP receive error");
                }
            }
            Some(cmd) = cmds.recv() => {
                let now = Instant::now();
                let mut next = Some(cmd);
                while let Some(cmd) = next.take().or_else(|| cmds.try_recv().ok()) {
                    if let Cmd::Shutdown(done) = cmd {
                        ep.close_all(now, "edge shutting down");
                        closing = Some(done);
                        break;
                    }
                    on_cmd(now, &mut ep, &mut registrar, &mut streams, cmd);
                }
            }
            Some((sock, peer)) = accepted.recv() => {
                sockets.accept(Instant::now(), &mut ep, sock, peer);
            }
            Some(ev) = socket_rx.recv() => {
                sockets.on_event(ev);
                while let Ok(ev) = socket_rx.try_recv() {
                    sockets.on_event(ev);
                }
            }
            Some(packet) = datagrams.recv() => {
                let now = Instant::now();
                datagrams.client(now, packet);
                while let Some(packet) = datagrams.try_recv() {
                    datagrams.client(now, packet);
                }
            }
            () = sleep => {
                let now = Instant::now();
                ep.handle_timeout(now);
                datagrams.handle_timeout(now);
            }
        }
    }
}

fn on_cmd(
    now: Instant,
    ep: &mut EdgeTransports,
    registrar: &mut Registrar<TunnelAuth>,
    streams: &mut HashMap<Key, Stream>,
    cmd: Cmd,
) {
    match cmd {
        Cmd::Open {
            tunnel,
            dest,
            kind,
            metadata,
            events,
            reply,
        } => {
            let Some(conn) = registrar.pick(tunnel) else {
                let _ = reply.send(Err("no connection to the tunnel".into()));
                return;
            };
            let meta: Vec<Metadata<'_>> = metadata
                .iter()
                .map(|(key, val)| Metadata { key, val })
                .collect();
            let request = ConnectRequest {
                dest: &dest,
                connection_type: kind,
                metadata: &meta,
            };
            match ep.open_request(now, conn, &request) {
                Ok(stream) => {
                    streams.insert(
                        (conn, stream),
                        Stream {
                            events,
                            unsent: VecDeque::new(),
                            finish: false,
                            readable: false,
                            credit: true,
                        },
                    );
                    let _ = reply.send(Ok((conn, stream)));
                }
                Err(e) => {
                    let _ = reply.send(Err(e.to_string()));
                }
            }
        }
        Cmd::Body(key, bytes) => {
            if let Some(s) = streams.get_mut(&key) {
                s.unsent.push_back(bytes);
            }
        }
        Cmd::Finish(key) => {
            if let Some(s) = streams.get_mut(&key) {
                s.finish = true;
            }
        }
        Cmd::Reset(key) => {
            if streams.remove(&key).is_some() {
                let _ = ep.reset_request(now, key.0, key.1);
            }
        }
        Cmd::ReadMore(key) => {
            if let Some(s) = streams.get_mut(&key) {
                s.credit = true;
                // Whatever is buffered may be readable without a new event.
                s.readable = true;
            }
        }
        // Taken by the loop before it gets here.
        Cmd::Shutdown(_) => {}
    }
}

/// Opens a stream through the edge loop.
pub(super) async fn open(
    cmds: &mpsc::UnboundedSender<Cmd>,
    tunnel: Uuid,
    dest: String,
    kind: ConnectionType,
    metadata: Vec<(String, String)>,
) -> Result<(Key, mpsc::UnboundedReceiver<StreamEv>), String> {
    let (events, rx) = mpsc::unbounded_channel();
    let (reply, answer) = oneshot::channel();
    cmds.send(Cmd::Open {
        tunnel,
        dest,
        kind,
        metadata,
        events,
        reply,
    })
    .map_err(|_| "edge stopped".to_owned())?;
    let key = answer.await.map_err(|_| "edge stopped".to_owned())??;
    Ok((key, rx))
}

/// Writes `config` to DIR/<tunnel>.json whole (a temporary file renamed), so a reader never
/// sees half of it.
fn record_local_config(dir: &std::path::Path, tunnel: Uuid, config: &[u8]) {
    let path = dir.join(format!("{tunnel}.json"));
    let tmp = dir.join(format!(".{tunnel}.json.tmp"));
    if let Err(e) = std::fs::write(&tmp, config).and_then(|()| std::fs::rename(&tmp, &path)) {
        warn!(path = %path.display(), error = %e, "cannot record the local configuration");
    }
}
