//! The TCP side of `burrow edge --listen`: connectors that speak HTTP/2 over TLS (cloudflared
//! `--protocol http2`) dial the same port QUIC listens on, over TCP. Each accepted socket gets
//! a reader and a writer task; the edge loop owns the machines ([`Http2Edge`]) and moves bytes
//! between them and the tasks. Reads are bounded (a few chunks in flight per socket) and so
//! are writes (the loop stops taking ciphertext from a connection whose writer lags), so a slow
//! or hostile peer holds its own socket, not the edge's memory.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use burrow_core::tunnel::edge::ConnId;
use burrow_core::tunnel::edge_transports::EdgeTransports;
use bytes::Bytes;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, Semaphore};
use tokio::task::JoinHandle;
use tracing::debug;

/// Bytes one socket read takes at most.
const READ_CHUNK: usize = 64 * 1024;
/// Reads handed to the loop and not yet consumed, per socket.
const READS_AHEAD: usize = 4;
/// Ciphertext handed to a writer and not yet written, per socket, past which the loop stops
/// taking more from that connection.
const WRITE_AHEAD: usize = 1024 * 1024;

/// What a socket task tells the edge loop.
#[derive(Debug)]
pub(crate) enum SocketEv {
    /// Bytes read.
    Read(ConnId, Bytes),
    /// End of file or a read error.
    Eof(ConnId),
    /// This many bytes were written.
    Wrote(ConnId, usize),
}

/// One connector's TCP socket as the loop sees it.
struct Socket {
    out: mpsc::UnboundedSender<Bytes>,
    /// Ciphertext given to the writer, not yet written.
    writing: usize,
    /// Reads the machine has not taken yet, in order; each holds a reader permit.
    pending: VecDeque<Bytes>,
    eof: bool,
    /// Permits for the reader; one comes back per consumed read.
    reads: Arc<Semaphore>,
    reader: JoinHandle<()>,
}

/// Every HTTP/2 connector socket.
pub(crate) struct Sockets {
    socks: HashMap<ConnId, Socket>,
    events: mpsc::UnboundedSender<SocketEv>,
    buf: Vec<u8>,
}

impl Sockets {
    /// No sockets; tasks report on `events`.
    pub(crate) fn new(events: mpsc::UnboundedSender<SocketEv>) -> Self {
        Self {
            socks: HashMap::new(),
            events,
            buf: vec![0; READ_CHUNK],
        }
    }

    /// A connector dialled in: a machine for it, tasks for its socket.
    pub(crate) fn accept(
        &mut self,
        now: Instant,
        ep: &mut EdgeTransports,
        sock: TcpStream,
        peer: SocketAddr,
    ) {
        let id = ep.quic.reserve_conn_id();
        if let Err(e) = ep.http2.accept(now, id) {
            debug!(%peer, error = %e, "refused an HTTP/2 connection");
            return;
        }
        debug!(conn = id.0, %peer, "HTTP/2 connector connection accepted");
        let _ = sock.set_nodelay(true);
        let (mut rd, mut wr) = sock.into_split();
        let reads = Arc::new(Semaphore::new(READS_AHEAD));
        let (out, mut rx) = mpsc::unbounded_channel::<Bytes>();
        let events = self.events.clone();
        let permits = reads.clone();
        let reader = tokio::spawn(async move {
            let mut buf = vec![0u8; READ_CHUNK];
            loop {
                let Ok(permit) = permits.acquire().await else {
                    return;
                };
                permit.forget();
                match rd.read(&mut buf).await {
                    Ok(0) | Err(_) => {
                        let _ = events.send(SocketEv::Eof(id));
                        return;
                    }
                    Ok(n) => {
                        let bytes = Bytes::copy_from_slice(&buf[..n]);
                        if events.send(SocketEv::Read(id, bytes)).is_err() {
                            return;
                        }
                    }
                }
            }
        });
        let events = self.events.clone();
        tokio::spawn(async move {
            while let Some(bytes) = rx.recv().await {
                if wr.write_all(&bytes).await.is_err() {
                    // The reader sees the failure too and reports the end.
                    return;
                }
                let _ = events.send(SocketEv::Wrote(id, bytes.len()));
            }
            let _ = wr.shutdown().await;
        });
        self.socks.insert(
            id,
            Socket {
                out,
                writing: 0,
                pending: VecDeque::new(),
                eof: false,
                reads,
                reader,
            },
        );
    }

    /// Takes a socket task's report.
    pub(crate) fn on_event(&mut self, ev: SocketEv) {
        match ev {
            SocketEv::Read(id, bytes) => {
                if let Some(s) = self.socks.get_mut(&id) {
                    s.pending.push_back(bytes);
                }
            }
            SocketEv::Eof(id) => {
                if let Some(s) = self.socks.get_mut(&id) {
                    s.eof = true;
                }
            }
            SocketEv::Wrote(id, n) => {
                if let Some(s) = self.socks.get_mut(&id) {
                    s.writing = s.writing.saturating_sub(n);
                }
            }
        }
    }

    /// Moves bytes between the sockets and the machines; true if anything moved.
    pub(crate) fn pump(&mut self, now: Instant, ep: &mut EdgeTransports) -> bool {
        let mut progress = false;
        for (&id, s) in self.socks.iter_mut() {
            while let Some(front) = s.pending.front_mut() {
                let n = ep.http2.handle_received(now, id, front);
                if n == 0 {
                    break;
                }
                progress = true;
                let _ = front.split_to(n.min(front.len()));
                if !front.is_empty() {
                    // The machine must transmit first.
                    break;
                }
                s.pending.pop_front();
                s.reads.add_permits(1);
            }
            if s.eof && s.pending.is_empty() {
                s.eof = false;
                ep.http2.handle_peer_closed(now, id);
                progress = true;
            }
            while s.writing < WRITE_AHEAD && ep.http2.wants_transmit(id) {
                let n = ep.http2.transmit(now, id, &mut self.buf);
                if n == 0 {
                    break;
                }
                progress = true;
                s.writing += n;
                let _ = s.out.send(Bytes::copy_from_slice(&self.buf[..n]));
            }
        }
        while let Some(id) = ep.http2.poll_finished() {
            progress = true;
            if let Some(s) = self.socks.remove(&id) {
                // The writer sends what is queued, then shuts the socket down.
                s.reader.abort();
            }
        }
        progress
    }
}

/// Accepts connector connections on `listener` and hands them to the loop.
pub(crate) async fn serve(
    listener: TcpListener,
    accepted: mpsc::UnboundedSender<(TcpStream, SocketAddr)>,
) {
    loop {
        let (sock, peer) = crate::accept::accept(&listener, "HTTP/2 tunnel").await;
        if accepted.send((sock, peer)).is_err() {
            return;
        }
    }
}
