//! The TCP side of `burrow edge --listen`: connectors that speak HTTP/2 over TLS (cloudflared
//! `--protocol http2`) dial the same port QUIC listens on, over TCP. Each accepted socket gets
//! a reader and a writer task; the edge machine ([`Edge`]) owns the connections and says what
//! to write and when to stop. Reads are bounded (a few chunks in flight per socket, fed only
//! while the machine wants them) and so are writes (the machine lends at most
//! [`burrow_core::edge::machine::WRITE_AHEAD`] unwritten bytes per connection), so a slow or
//! hostile peer holds its own socket, not the edge's memory.

use std::collections::{HashMap, HashSet, VecDeque};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use burrow_core::edge::auth::TunnelAuth;
use burrow_core::edge::{Edge, Input};
use burrow_core::tunnel::edge::ConnId;
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
    /// Sockets holding reads (or an end of file) the machine has not taken: the only ones
    /// [`Sockets::feed`] looks at, so a drain costs nothing per idle socket.
    held: HashSet<ConnId>,
    events: mpsc::UnboundedSender<SocketEv>,
}

impl Sockets {
    /// No sockets; tasks report on `events`.
    pub(crate) fn new(events: mpsc::UnboundedSender<SocketEv>) -> Self {
        Self {
            socks: HashMap::new(),
            held: HashSet::new(),
            events,
        }
    }

    /// A connector dialled in: a machine for it, tasks for its socket.
    pub(crate) fn accept(
        &mut self,
        now: Instant,
        edge: &mut Edge<TunnelAuth>,
        sock: TcpStream,
        peer: SocketAddr,
    ) {
        let id = match edge.accept_tcp(now) {
            Ok(id) => id,
            Err(e) => {
                debug!(%peer, error = %e, "refused an HTTP/2 connection");
                return;
            }
        };
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
                pending: VecDeque::new(),
                eof: false,
                reads,
                reader,
            },
        );
    }

    /// Takes a socket task's report.
    pub(crate) fn on_event(&mut self, now: Instant, edge: &mut Edge<TunnelAuth>, ev: SocketEv) {
        match ev {
            SocketEv::Read(id, bytes) => {
                if let Some(s) = self.socks.get_mut(&id) {
                    s.pending.push_back(bytes);
                    self.held.insert(id);
                }
            }
            SocketEv::Eof(id) => {
                if let Some(s) = self.socks.get_mut(&id) {
                    s.eof = true;
                    self.held.insert(id);
                }
            }
            SocketEv::Wrote(id, len) => edge.handle_input(now, Input::TcpWritten { conn: id, len }),
        }
    }

    /// Feeds held reads to the connections that want them; true if any went in.
    pub(crate) fn feed(&mut self, now: Instant, edge: &mut Edge<TunnelAuth>) -> bool {
        let mut fed = false;
        let Self { socks, held, .. } = self;
        held.retain(|&id| {
            let Some(s) = socks.get_mut(&id) else {
                return false;
            };
            while edge.tcp_wants_read(id) {
                if let Some(bytes) = s.pending.pop_front() {
                    edge.handle_input(
                        now,
                        Input::TcpReceived {
                            conn: id,
                            data: &bytes,
                        },
                    );
                    s.reads.add_permits(1);
                } else if s.eof {
                    s.eof = false;
                    edge.handle_input(
                        now,
                        Input::TcpReceived {
                            conn: id,
                            data: &[],
                        },
                    );
                } else {
                    break;
                }
                fed = true;
            }
            // Still holding: the machine wants no more from it now.
            !s.pending.is_empty() || s.eof
        });
        fed
    }

    /// Hands ciphertext to a connection's writer.
    pub(crate) fn write(&mut self, conn: ConnId, data: &[u8]) {
        if let Some(s) = self.socks.get(&conn) {
            let _ = s.out.send(Bytes::copy_from_slice(data));
        }
    }

    /// The connection is done: the writer sends what is queued, then shuts the socket down.
    pub(crate) fn close(&mut self, conn: ConnId) {
        self.held.remove(&conn);
        if let Some(s) = self.socks.remove(&conn) {
            s.reader.abort();
        }
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
