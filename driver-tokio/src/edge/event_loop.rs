//! The task that drives burrow-core's [`Edge`]: it feeds the machine what the sockets and the
//! listener tasks bring (one input at a time) and does what [`Edge::poll_output`] asks
//! (datagrams out, TCP writes, eyeball stream events, client packets), logging its events.
//! Registrations, routing and the pacing of every stream are the machine's.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use burrow_core::edge::auth::TunnelAuth;
use burrow_core::edge::{Edge, Event, EyeballId, Input, Io, Output, StreamEvent, Target};
use burrow_core::session::edge::{SessionChange, SessionEnd, SessionEvent};
use burrow_core::stream::connect::ConnectionType;
use burrow_tokio::deadline::DeadlineTimer;
use bytes::Bytes;
use tokio::sync::{mpsc, oneshot, Semaphore};
use tracing::{debug, info, warn};
use uuid::Uuid;

use super::http2::Sockets;
use crate::edge_udp::MappingSockets;
use crate::quic_socket::{QuicSocket, RecvBufs};

/// What a listener task asks of the edge loop.
pub(super) enum Cmd {
    Open {
        id: EyeballId,
        target: Target,
        dest: String,
        kind: ConnectionType,
        metadata: Vec<(String, String)>,
        events: mpsc::UnboundedSender<StreamEvent>,
        acks: Arc<Semaphore>,
    },
    Body(EyeballId, Bytes),
    Finish(EyeballId),
    /// The eyeball is done with the stream before its end (it hung up, or gave up on it):
    /// sent by the eyeball side, and by [`Events`] when dropped early, so a hang-up is an
    /// input of the loop rather than something it scans for.
    Reset(EyeballId),
    ReadMore(EyeballId),
    /// Close every connection, send the closes, then answer and stop.
    Shutdown(oneshot::Sender<()>),
}

/// Eyeball stream names, unique for the process.
static NEXT_ID: AtomicU64 = AtomicU64::new(0);

/// Runs the edge loop until a [`Cmd::Shutdown`].
pub(super) async fn run(
    mut edge: Edge<TunnelAuth>,
    socket: QuicSocket,
    mut accepted: mpsc::UnboundedReceiver<(tokio::net::TcpStream, std::net::SocketAddr)>,
    mut cmds: mpsc::UnboundedReceiver<Cmd>,
    mut mappings: MappingSockets,
    local_config_dir: Option<std::path::PathBuf>,
) {
    // Read in the loop, in batches, into buffers reused for every read.
    let mut recv_bufs = RecvBufs::new();
    let mut eyeballs: HashMap<EyeballId, Eyeball> = HashMap::new();
    let mut closing: Option<oneshot::Sender<()>> = None;
    let (socket_tx, mut socket_rx) = mpsc::unbounded_channel();
    let mut sockets = Sockets::new(socket_tx);
    let mut timer = DeadlineTimer::new();
    edge.handle_input(
        Instant::now(),
        Input::QuicSocket {
            max_segments: socket.max_transmit_segments(),
        },
    );
    loop {
        let deadline = loop {
            let now = Instant::now();
            let deadline = loop {
                match edge.poll_output(now) {
                    Output::Timeout(deadline) => break deadline,
                    Output::Transmit { transmit, data } => {
                        // A full socket buffer drops the datagrams: QUIC recovers them as losses.
                        if let Err(e) = socket.try_send(&transmit, data) {
                            if e.kind() != std::io::ErrorKind::WouldBlock {
                                debug!(error = %e, to = %transmit.destination, "send failed");
                            }
                        }
                    }
                    Output::Io(Io::Stream { id, event }) => {
                        let last = event.is_last();
                        if let Some(eyeball) = eyeballs.get(&id) {
                            eyeball.deliver(event);
                        }
                        if last {
                            eyeballs.remove(&id);
                        }
                    }
                    Output::Io(Io::WriteTcp { conn, data }) => sockets.write(conn, data),
                    Output::Io(Io::CloseTcp { conn }) => sockets.close(conn),
                    Output::Io(Io::SendToClient {
                        mapping,
                        client,
                        payload,
                    }) => mappings.send(mapping, client, payload),
                    Output::Event(e) => log_event(e, local_config_dir.as_deref()),
                }
            };
            // Reads the edge could not take before may go in now.
            if !sockets.feed(now, &mut edge) {
                break deadline;
            }
        };
        // The client packets of this drain, several per call.
        mappings.flush();
        if let Some(done) = closing.take() {
            // The closes went out with the drain above.
            let _ = done.send(());
            return;
        }
        timer.set(deadline);
        tokio::select! {
            Ok(()) = std::future::poll_fn(|cx| socket.poll_recv_ready(cx)) => {
                let now = Instant::now();
                let got = socket.read_round(&mut recv_bufs, |r| {
                    edge.handle_input(now, Input::Received(*r));
                });
                if let Err(e) = got {
                    debug!(error = %e, "UDP receive error");
                }
            }
            Some(cmd) = cmds.recv() => {
                let now = Instant::now();
                let mut next = Some(cmd);
                while let Some(cmd) = next.take().or_else(|| cmds.try_recv().ok()) {
                    let input = match cmd {
                        Cmd::Shutdown(done) => {
                            edge.handle_input(now, Input::Shutdown);
                            closing = Some(done);
                            break;
                        }
                        Cmd::Open { id, target, dest, kind, metadata, events, acks } => {
                            eyeballs.insert(id, Eyeball { events, acks: AckGate(acks) });
                            Input::Open { id, target, dest, kind, metadata }
                        }
                        Cmd::Body(id, data) => Input::Body { id, data },
                        Cmd::Finish(id) => Input::Finish(id),
                        // After the stream's last event the edge holds nothing of it: the
                        // report of a task ending then has nothing to reset.
                        Cmd::Reset(id) => match eyeballs.remove(&id) {
                            Some(_) => Input::Reset(id),
                            None => continue,
                        },
                        Cmd::ReadMore(id) => Input::ReadMore(id),
                    };
                    edge.handle_input(now, input);
                }
            }
            Some((sock, peer)) = accepted.recv() => {
                sockets.accept(Instant::now(), &mut edge, sock, peer);
            }
            Some(ev) = socket_rx.recv() => {
                let now = Instant::now();
                sockets.on_event(now, &mut edge, ev);
                while let Ok(ev) = socket_rx.try_recv() {
                    sockets.on_event(now, &mut edge, ev);
                }
            }
            index = mappings.readable() => {
                let now = Instant::now();
                mappings.read(index, |input| edge.handle_input(now, input));
            }
            () = timer.fired() => {
                let now = Instant::now();
                // Stalled: what the connectors sent meanwhile is taken before the timers run
                // (`DeadlineTimer::stalled`), as the connector does.
                if timer.stalled(now) {
                    let mut buffers = 0;
                    let got = socket.read_round_uncached(&mut recv_bufs, |r| {
                        buffers += 1;
                        edge.handle_input(now, Input::Received(*r));
                    });
                    debug!(buffers, "timer fired late (process stalled): read the socket first");
                    if let Err(e) = got {
                        debug!(error = %e, "UDP receive error");
                    }
                }
                edge.handle_input(now, Input::Timeout);
            }
        }
    }
}

/// Logs one of the edge's events (once, here); a local configuration is also recorded.
fn log_event(e: Event, local_config_dir: Option<&std::path::Path>) {
    match e {
        Event::Registered {
            conn,
            tunnel,
            conn_index,
            protocol,
            connection,
        } => {
            info!(conn = conn.0, %tunnel, conn_index, %connection, protocol = protocol.as_str(), "tunnel connection registered")
        }
        Event::RegistrationRefused {
            conn,
            tunnel,
            cause,
            suppressed,
        } => warn!(conn = conn.0, %tunnel, %cause, suppressed, "registration refused"),
        Event::ConnectionRefused {
            from,
            cause,
            suppressed,
        } => warn!(%from, %cause, suppressed, "refused a connection"),
        Event::Superseded {
            old,
            by,
            conn_index,
        } => info!(
            conn = old.0,
            by = by.0,
            conn_index,
            "connector registered its index again; closing the connection it abandoned"
        ),
        Event::RpcRefused {
            conn,
            refusal,
            suppressed,
        } => warn!(conn = conn.0, %refusal, suppressed, "refused an RPC call"),
        Event::ControlStreamFailed { conn, failure } => {
            warn!(conn = conn.0, %failure, "closing the tunnel connection")
        }
        Event::AnswerFailed { conn, error } => {
            warn!(conn = conn.0, %error, "cannot answer registration")
        }
        Event::Unregistered { conn } => info!(
            conn = conn.0,
            "tunnel connection unregistered; no new requests"
        ),
        Event::ConnectionClosed { conn, reason } => {
            debug!(conn = conn.0, %reason, "tunnel connection closed")
        }
        Event::LocalConfiguration {
            conn,
            tunnel,
            config,
        } => {
            debug!(conn = conn.0, config = %String::from_utf8_lossy(&config), "local configuration");
            if let Some(dir) = local_config_dir {
                record_local_config(dir, tunnel, &config);
            }
        }
        Event::ConfigurationResult { conn, outcome } => {
            debug!(conn = conn.0, ?outcome, "configuration push answered")
        }
        Event::ClientPacketDropped {
            mapping,
            client,
            reason,
        } => debug!(%mapping, %client, reason = reason.label(), "client packet dropped"),
        Event::DatagramRefused { conn, error } => {
            debug!(conn = conn.0, %error, "tunnel connection refused a datagram")
        }
        Event::Session(e) => log_session(&e),
        Event::HeldStreamReset { conn, id } => warn!(
            conn = conn.0,
            stream = id.0,
            patience_s = burrow_core::edge::streams::EYEBALL_PATIENCE.as_secs(),
            "reset a request its eyeball held, to make room on a crowded tunnel connection"
        ),
    }
}

/// One line per UDP session change: a refusal is worth a warning, the rest is routine.
fn log_session(e: &SessionEvent) {
    let SessionEvent {
        id,
        mapping,
        client,
        change,
    } = e;
    match change {
        SessionChange::Opened { conn, dest } => {
            debug!(flow_id = %id, %mapping, %client, %dest, conn = conn.0, "new UDP session")
        }
        SessionChange::Registered { conn } => {
            debug!(flow_id = %id, %mapping, %client, conn = conn.0, "UDP session registered")
        }
        SessionChange::Migrated { from, to } => debug!(
            flow_id = %id, %mapping, %client, from = from.map(|c| c.0), to = to.0,
            "re-registering UDP session on another connection"
        ),
        SessionChange::Waiting { from } => debug!(
            flow_id = %id, %mapping, %client, from = from.0,
            "no connection left for the UDP session; it waits"
        ),
        SessionChange::Ended(SessionEnd::Refused { code, message }) => warn!(
            flow_id = %id, %mapping, %client, ?code, %message,
            "connector refused the UDP session"
        ),
        SessionChange::Ended(SessionEnd::RefusedV2 { message }) => warn!(
            flow_id = %id, %mapping, %client, %message,
            "connector refused the UDP session (registerUdpSession)"
        ),
        SessionChange::Ended(SessionEnd::ClosedByConnector { message }) => debug!(
            flow_id = %id, %mapping, %client, %message,
            "connector ended the UDP session"
        ),
        SessionChange::Ended(SessionEnd::Idle) => {
            debug!(flow_id = %id, %mapping, %client, "UDP session idle")
        }
    }
}

/// The events of one eyeball stream, as the edge loop sends them. Dropped before the
/// stream's last event (the eyeball hung up at any point of the exchange, or its task gave
/// up), it reports the hang-up to the loop as a [`Cmd::Reset`]: nobody reads the stream any
/// more, so the edge resets it.
pub(super) struct Events {
    rx: mpsc::UnboundedReceiver<StreamEvent>,
    cmds: mpsc::UnboundedSender<Cmd>,
    id: EyeballId,
    /// The last event (or the loop's end) was seen: nothing is left to reset.
    done: bool,
}

impl Events {
    /// The next event; `None` once the loop sent the last one or stopped.
    pub(super) async fn recv(&mut self) -> Option<StreamEvent> {
        std::future::poll_fn(|cx| self.poll_recv(cx)).await
    }

    /// [`Events::recv`], polled.
    pub(super) fn poll_recv(&mut self, cx: &mut Context<'_>) -> Poll<Option<StreamEvent>> {
        if self.done {
            return Poll::Ready(None);
        }
        let ev = std::task::ready!(self.rx.poll_recv(cx));
        self.done = ev.as_ref().is_none_or(StreamEvent::is_last);
        Poll::Ready(ev)
    }

    /// The eyeball took the last response chunk: the next may come.
    pub(super) fn read_more(&self) {
        let _ = self.cmds.send(Cmd::ReadMore(self.id));
    }
}

impl Drop for Events {
    fn drop(&mut self) {
        if !self.done {
            // A stopped loop has nothing left to reset.
            let _ = self.cmds.send(Cmd::Reset(self.id));
        }
    }
}

/// The acknowledgements of one eyeball stream's request-body chunks, apart from its other
/// events: an eyeball task blocked writing the response (a slow reader) still learns at once
/// that the tunnel took a chunk, so the upload goes on meanwhile.
pub(super) struct Acks(Arc<Semaphore>);

impl Acks {
    /// Waits for the next chunk's acknowledgement; false once the stream is over (after its
    /// last event, a reset, or the loop's end).
    pub(super) async fn wait(&self) -> bool {
        match self.0.acquire().await {
            Ok(ack) => {
                ack.forget();
                true
            }
            Err(_) => false,
        }
    }

    /// Takes one acknowledgement that already came, if any.
    pub(super) fn take(&self) -> bool {
        self.0.try_acquire().map(|ack| ack.forget()).is_ok()
    }
}

/// The loop's end of an eyeball stream.
struct Eyeball {
    events: mpsc::UnboundedSender<StreamEvent>,
    acks: AckGate,
}

impl Eyeball {
    /// Hands `event` to the eyeball's task. A task that is gone has sent, or is sending, its
    /// `Cmd::Reset` (see [`Events`]).
    fn deliver(&self, event: StreamEvent) {
        match event {
            StreamEvent::Ack => self.acks.0.add_permits(1),
            event => {
                let _ = self.events.send(event);
            }
        }
    }
}

/// Closes the acknowledgements when the loop lets go of the stream, so a task waiting for one
/// stops.
struct AckGate(Arc<Semaphore>);

impl Drop for AckGate {
    fn drop(&mut self) {
        self.0.close();
    }
}

/// Opens a stream through the edge loop: its name, its events (the first is its response, or
/// why it could not be opened) and its request-body acknowledgements.
pub(super) fn open(
    cmds: &mpsc::UnboundedSender<Cmd>,
    target: Target,
    dest: String,
    kind: ConnectionType,
    metadata: Vec<(String, String)>,
) -> Result<(EyeballId, Events, Acks), &'static str> {
    let id = EyeballId(NEXT_ID.fetch_add(1, Ordering::Relaxed));
    let (events, rx) = mpsc::unbounded_channel();
    let acks = Arc::new(Semaphore::new(0));
    cmds.send(Cmd::Open {
        id,
        target,
        dest,
        kind,
        metadata,
        events,
        acks: acks.clone(),
    })
    .map_err(|_| "edge stopped")?;
    let events = Events {
        rx,
        cmds: cmds.clone(),
        id,
        done: false,
    };
    Ok((id, events, Acks(acks)))
}

/// Writes `config` to `DIR/<tunnel>.json` whole (a temporary file renamed), so a reader never
/// sees half of it.
fn record_local_config(dir: &std::path::Path, tunnel: Uuid, config: &[u8]) {
    let path = dir.join(format!("{tunnel}.json"));
    let tmp = dir.join(format!(".{tunnel}.json.tmp"));
    if let Err(e) = std::fs::write(&tmp, config).and_then(|()| std::fs::rename(&tmp, &path)) {
        warn!(path = %path.display(), error = %e, "cannot record the local configuration");
    }
}
