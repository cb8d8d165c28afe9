//! The daemon's datagram sockets: one connected UDP socket per UDP session, one unprivileged
//! ping socket per ICMP funnel. Sockets only: what to open, close and send is the connector's
//! [`Io`](burrow_core::connector::Io) work. Session sockets are read by the connector's loop
//! itself through one epoll set ([`DatagramSockets::udp_readable`], [`DatagramSockets::read_udp`]):
//! no task, waker or tokio registration per session, which cost about 1 KiB each. What ping
//! sockets read goes back through [`SocketEvent`]s on one bounded channel (a full channel
//! stalls the readers, and the kernel drops what their sockets cannot hold, as for any UDP
//! socket).

use std::collections::{HashMap, VecDeque};
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::ops::Range;
use std::os::fd::{AsFd, AsRawFd};
use std::sync::Arc;
use std::time::Duration;

use burrow_core::icmp::FunnelId;
use burrow_core::session::{UdpFlowId, HEADROOM, ORIGIN_READ, TAILROOM};
use bytes::{Bytes, BytesMut};
use fnv::FnvBuildHasher;
use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Token};
use socket2::SockRef;
use tokio::io::unix::AsyncFd;
use tokio::net::UdpSocket;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tracing::debug;

use burrow_tokio::mmsg::{self, RecvSlots};

/// Largest ICMP message read from a ping socket (cloudflared's 1500-byte buffer).
const PING_READ: usize = 1500;
/// Depth of the channel from the ping socket readers to the loop.
pub const CHANNEL_DEPTH: usize = 4096;
/// Readiness events taken from the session epoll set at once.
const EVENTS: usize = 256;
/// Bytes allocated at once for framed session reads. Each read is cut from it at its own size,
/// so it holds a few hundred small datagrams: one allocation for all of them, where a buffer
/// per read cost two (its own, and the one `split_to` makes to share it) and as many frees.
const SLAB: usize = 16 * 1024;

/// What a ping socket reader reports to the loop.
#[derive(Debug)]
pub enum SocketEvent {
    /// The ping socket of `funnel` read an ICMP message (no IP header) from `from`.
    PingRead {
        /// The funnel.
        funnel: FunnelId,
        /// Who answered.
        from: IpAddr,
        /// ICMP header and body.
        message: Bytes,
    },
    /// Reading the ping socket of `funnel` failed; its reader stopped.
    FunnelFailed {
        /// The funnel.
        funnel: FunnelId,
        /// The socket error.
        reason: String,
    },
}

/// What [`DatagramSockets::read_udp`] read from a session socket.
#[derive(Debug)]
pub enum UdpRead {
    /// The socket of `flow` read `len` bytes into `buf[HEADROOM..]`.
    Data {
        /// The session's socket.
        flow: UdpFlowId,
        /// The payload at `HEADROOM`, with `TAILROOM` bytes after it.
        buf: BytesMut,
        /// Payload length.
        len: usize,
    },
    /// Reading the socket of `flow` failed (a refused port, say); the socket is closed.
    Failed {
        /// The session's socket.
        flow: UdpFlowId,
        /// The socket error.
        reason: String,
    },
}

/// Counters of the socket side (the supervisor's hub counts the rest).
#[derive(Debug, Default, Clone)]
pub struct SocketStats {
    /// Payloads written to origin sockets (those not written are the connector's to count).
    pub udp_written: u64,
    /// UDP sockets that could not be opened.
    pub udp_open_failed: u64,
}

/// A ping socket and the task reading it; dropping it stops the reader and closes the socket.
struct Owned {
    socket: Arc<UdpSocket>,
    reader: JoinHandle<()>,
}

impl Drop for Owned {
    fn drop(&mut self) {
        self.reader.abort();
    }
}

/// A session socket in the epoll set.
struct Session {
    socket: std::net::UdpSocket,
    /// In `ready` already (a busy socket is signalled again while it waits its turn).
    queued: bool,
}

/// Every origin UDP socket and ping socket of the daemon.
pub struct DatagramSockets {
    udp: HashMap<UdpFlowId, Session, FnvBuildHasher>,
    /// The epoll set of every session socket (edge-triggered, token = flow id), itself
    /// registered with tokio: one readiness for all sessions.
    poll: AsyncFd<Poll>,
    events: Events,
    /// Sessions that may have datagrams queued, read one `recvmmsg` per turn.
    ready: VecDeque<UdpFlowId>,
    /// The read buffers of session sockets.
    slots: RecvSlots,
    /// Datagrams for session sockets, written at once by [`Self::flush_udp`]: the socket and
    /// where its payload is in `unsent_bytes`.
    unsent: Vec<(UdpFlowId, Range<usize>)>,
    unsent_bytes: Vec<u8>,
    /// Flows of datagrams not written.
    failed: Vec<UdpFlowId>,
    /// Where each read is copied with room to frame it, then split off (see [`SLAB`]).
    slab: BytesMut,
    funnels: HashMap<FunnelId, Owned, FnvBuildHasher>,
    tx: mpsc::Sender<SocketEvent>,
    stats: SocketStats,
}

impl DatagramSockets {
    /// No sockets yet; ping socket readers report on `tx`. Needs the runtime (the epoll set
    /// is registered with it).
    pub fn new(tx: mpsc::Sender<SocketEvent>) -> io::Result<Self> {
        let poll = Poll::new()?;
        // SAFETY: the Poll owns its epoll descriptor, open until the Poll drops, which the
        // AsyncFd does after deregistering it.
        let poll = unsafe { AsyncFd::register_with_interest(poll, tokio::io::Interest::READABLE)? };
        Ok(Self {
            udp: HashMap::default(),
            poll,
            events: Events::with_capacity(EVENTS),
            ready: VecDeque::new(),
            slots: RecvSlots::new(ORIGIN_READ),
            unsent: Vec::new(),
            unsent_bytes: Vec::new(),
            failed: Vec::new(),
            slab: BytesMut::new(),
            funnels: HashMap::default(),
            tx,
            stats: SocketStats::default(),
        })
    }

    /// The counters (read by tests; the connector counts what it reports).
    #[cfg(test)]
    pub fn stats(&self) -> &SocketStats {
        &self.stats
    }

    /// Whether `flow` still has its socket.
    #[cfg(test)]
    pub fn has_udp(&self, flow: UdpFlowId) -> bool {
        self.udp.contains_key(&flow)
    }

    /// Whether `funnel` still has its socket (reports about closed ones are stale).
    pub fn has_funnel(&self, funnel: FunnelId) -> bool {
        self.funnels.contains_key(&funnel)
    }

    /// Forgets the socket of `funnel`. True if it was there.
    pub fn remove_funnel(&mut self, funnel: FunnelId) -> bool {
        self.funnels.remove(&funnel).is_some()
    }

    /// Resolves when a session socket may have a datagram or an error to read; then call
    /// [`Self::read_udp`]. Cancel-safe.
    pub async fn udp_readable(&self) {
        if !self.ready.is_empty() {
            return;
        }
        match self.poll.readable().await {
            // Cleared before `read_udp` drains the set: a socket signalled after that makes
            // the set readable again.
            Ok(mut guard) => guard.clear_ready(),
            // Not for a live epoll descriptor; never spin on it.
            Err(_) => std::future::pending().await,
        }
    }

    /// Reads about `budget` datagrams (at most a batch more) from the session sockets that are
    /// ready, one `recvmmsg` per socket per turn so a busy session does not starve the others,
    /// and hands each to `on`.
    /// A socket whose read fails is closed and reported as [`UdpRead::Failed`].
    pub fn read_udp(&mut self, budget: usize, mut on: impl FnMut(UdpRead)) {
        match self
            .poll
            .get_mut()
            .poll(&mut self.events, Some(Duration::ZERO))
        {
            Ok(()) => {
                for event in &self.events {
                    let flow = UdpFlowId(event.token().0 as u64);
                    if let Some(s) = self.udp.get_mut(&flow) {
                        if !s.queued {
                            s.queued = true;
                            self.ready.push_back(flow);
                        }
                    }
                }
            }
            Err(e) => debug!(error = %e, "session epoll wait failed"),
        }
        let mut read = 0;
        while read < budget {
            let Some(flow) = self.ready.pop_front() else {
                break;
            };
            let Some(s) = self.udp.get_mut(&flow) else {
                continue; // closed while it waited
            };
            match mmsg::recv_many(s.socket.as_fd(), &mut self.slots) {
                Ok(n) => {
                    // Still queued, even after a short read: an error met after the first
                    // datagram is left on the socket without a new readiness, and the next
                    // read returns it.
                    self.ready.push_back(flow);
                    read += n;
                    for (payload, _) in self.slots.received() {
                        // A piece of the slab sized to the payload (one copy of it, small next
                        // to the 1.5 KiB a buffer per session would pin), with room to frame it
                        // in place. A slab is reused once every piece of it is gone.
                        let len = payload.len();
                        let need = HEADROOM + len + TAILROOM;
                        if self.slab.capacity() < need {
                            self.slab.reserve(SLAB);
                        }
                        self.slab.resize(HEADROOM, 0);
                        self.slab.extend_from_slice(payload);
                        self.slab.resize(need, 0);
                        let buf = self.slab.split_to(need);
                        on(UdpRead::Data { flow, buf, len });
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => s.queued = false,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => self.ready.push_front(flow),
                Err(e) => {
                    self.udp.remove(&flow);
                    on(UdpRead::Failed {
                        flow,
                        reason: e.to_string(),
                    });
                }
            }
        }
    }

    /// Queues one datagram for the socket of `flow`; [`Self::flush_udp`] writes it.
    pub fn send_udp(&mut self, flow: UdpFlowId, payload: &[u8]) {
        let at = self.unsent_bytes.len();
        self.unsent_bytes.extend_from_slice(payload);
        self.unsent.push((flow, at..self.unsent_bytes.len()));
    }

    /// Writes the queued datagrams, several per call on each socket, each socket's in the
    /// order queued; the flow of each one not written waits in [`Self::write_failure`]. Never
    /// blocks: a socket that cannot take one now drops it, as a full UDP socket buffer would.
    pub fn flush_udp(&mut self) {
        // By socket, each socket's in the order queued (offsets grow with it). Unstable: a
        // stable sort allocates scratch for every flush.
        self.unsent
            .sort_unstable_by_key(|(flow, r)| (*flow, r.start));
        let mut rest = &self.unsent[..];
        while let Some((flow, _)) = rest.first() {
            let run = rest.iter().take_while(|(f, _)| f == flow).count();
            let (batch, after) = rest.split_at(run);
            rest = after;
            let written = match self.udp.get(flow) {
                Some(s) => {
                    let bytes = &self.unsent_bytes;
                    let item = |(_, r): &(UdpFlowId, Range<usize>)| (None, &bytes[r.clone()]);
                    let (n, error) = mmsg::send_many(s.socket.as_fd(), batch, 0, item);
                    if let Some(e) = error.filter(|e| e.kind() != io::ErrorKind::WouldBlock) {
                        debug!(%flow, error = %e, "origin UDP write failed");
                    }
                    n
                }
                None => 0,
            };
            self.stats.udp_written += written as u64;
            self.failed
                .extend(std::iter::repeat_n(*flow, run - written));
        }
        self.unsent.clear();
        self.unsent_bytes.clear();
    }

    /// The flow of a datagram [`Self::flush_udp`] could not write, each once.
    pub fn write_failure(&mut self) -> Option<UdpFlowId> {
        self.failed.pop()
    }

    /// Sends an ICMP echo request through the ping socket of `funnel`; false if it was not sent.
    pub fn send_ping(&mut self, funnel: FunnelId, dst: IpAddr, message: &[u8]) -> bool {
        let Some(s) = self.funnels.get(&funnel) else {
            return false;
        };
        match SockRef::from(&*s.socket).send_to(message, &SocketAddr::new(dst, 0).into()) {
            Ok(_) => true,
            Err(e) => {
                debug!(%funnel, %dst, error = %e, "failed to send ICMP echo");
                false
            }
        }
    }

    /// Opens the connected socket of session `flow` and adds it to the epoll set; the socket
    /// error if it cannot be opened.
    pub fn open_udp(&mut self, flow: UdpFlowId, dest: SocketAddr) -> Result<(), String> {
        // The flow id is the socket's token; on 32-bit targets ids past 2^32 have none.
        let Ok(token) = usize::try_from(flow.0) else {
            self.stats.udp_open_failed += 1;
            return Err("no epoll token for this flow id".into());
        };
        let opened = burrow_os::open_udp(dest).and_then(|socket| {
            let fd = socket.as_raw_fd();
            self.poll.get_ref().registry().register(
                &mut SourceFd(&fd),
                Token(token),
                Interest::READABLE,
            )?;
            Ok(socket)
        });
        match opened {
            Ok(socket) => {
                // Closing the socket takes it out of the epoll set.
                let session = Session {
                    socket,
                    queued: false,
                };
                self.udp.insert(flow, session);
                Ok(())
            }
            Err(e) => {
                self.stats.udp_open_failed += 1;
                Err(e.to_string())
            }
        }
    }

    /// Closes the socket of `flow`, after writing what was queued for it.
    pub fn close_udp(&mut self, flow: UdpFlowId) {
        if self.unsent.iter().any(|(f, _)| *f == flow) {
            self.flush_udp();
        }
        self.udp.remove(&flow);
    }

    /// Opens the ping socket of `funnel` bound to `bind` and starts reading it; false if it
    /// cannot be opened.
    pub fn open_funnel(&mut self, funnel: FunnelId, bind: IpAddr) -> bool {
        match open_ping(bind) {
            Ok(socket) => {
                let socket = Arc::new(socket);
                let reader = tokio::spawn(read_ping(funnel, socket.clone(), self.tx.clone()));
                self.funnels.insert(funnel, Owned { socket, reader });
                true
            }
            Err(e) => {
                debug!(%funnel, %bind, error = %e, "cannot open a ping socket");
                false
            }
        }
    }

    /// Closes the ping socket of `funnel`.
    pub fn close_funnel(&mut self, funnel: FunnelId) {
        self.funnels.remove(&funnel);
    }
}

/// [`burrow_os::open_ping`] on the runtime.
pub fn open_ping(bind: IpAddr) -> io::Result<UdpSocket> {
    UdpSocket::from_std(burrow_os::open_ping(bind)?)
}

async fn read_ping(funnel: FunnelId, socket: Arc<UdpSocket>, tx: mpsc::Sender<SocketEvent>) {
    let mut buf = BytesMut::with_capacity(4 * PING_READ);
    loop {
        buf.resize(PING_READ, 0);
        match socket.recv_from(&mut buf).await {
            Ok((n, from)) => {
                let message = buf.split_to(n).freeze();
                let event = SocketEvent::PingRead {
                    funnel,
                    from: from.ip(),
                    message,
                };
                if tx.send(event).await.is_err() {
                    return;
                }
            }
            Err(e) => {
                let _ = tx
                    .send(SocketEvent::FunnelFailed {
                        funnel,
                        reason: e.to_string(),
                    })
                    .await;
                return;
            }
        }
    }
}

pub use burrow_os::{icmp_config, raise_nofile_limit, IcmpSources};

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{Ipv4Addr, Ipv6Addr};
    use std::time::Duration;

    fn sockets() -> (DatagramSockets, mpsc::Receiver<SocketEvent>) {
        let (tx, rx) = mpsc::channel(64);
        (DatagramSockets::new(tx).expect("epoll set"), rx)
    }

    /// The next read of a session socket, through the epoll set as the loop reads them.
    async fn next_udp(s: &mut DatagramSockets) -> UdpRead {
        let read = async {
            loop {
                s.udp_readable().await;
                let mut got = None;
                s.read_udp(1, |r| got = Some(r));
                if let Some(r) = got {
                    return r;
                }
            }
        };
        tokio::time::timeout(Duration::from_secs(10), read)
            .await
            .expect("a session read in time")
    }

    async fn recv_from(origin: &UdpSocket, buf: &mut [u8]) -> (usize, SocketAddr) {
        tokio::time::timeout(Duration::from_secs(10), origin.recv_from(buf))
            .await
            .expect("a datagram in time")
            .expect("origin read")
    }

    async fn next(rx: &mut mpsc::Receiver<SocketEvent>) -> SocketEvent {
        tokio::time::timeout(Duration::from_secs(10), rx.recv())
            .await
            .expect("a socket event in time")
            .expect("channel open")
    }

    #[tokio::test]
    async fn a_session_socket_writes_reads_into_headroom_and_closes() {
        let origin = UdpSocket::bind("127.0.0.1:0").await.expect("origin");
        let dest = origin.local_addr().expect("addr");
        let (mut s, _rx) = sockets();
        let flow = UdpFlowId(1);
        assert_eq!(s.open_udp(flow, dest), Ok(()));

        s.send_udp(flow, b"question");
        s.flush_udp();
        let mut got = [0u8; 64];
        let (n, from) = recv_from(&origin, &mut got).await;
        assert_eq!(&got[..n], b"question");
        origin.send_to(b"answer", from).await.expect("reply");
        match next_udp(&mut s).await {
            UdpRead::Data { flow: f, buf, len } => {
                assert_eq!(f, flow);
                assert_eq!(&buf[HEADROOM..HEADROOM + len], b"answer");
                assert!(
                    buf.len() >= HEADROOM + len + TAILROOM,
                    "room to frame in place"
                );
            }
            other => panic!("expected a read, got {other:?}"),
        }

        // Several queued go out in order; what is queued when the socket closes goes first.
        for p in [&b"one"[..], b"two", b"three"] {
            s.send_udp(flow, p);
        }
        s.flush_udp();
        s.send_udp(flow, b"last");
        s.close_udp(flow);
        for want in [&b"one"[..], b"two", b"three", b"last"] {
            let (n, _) = recv_from(&origin, &mut got).await;
            assert_eq!(&got[..n], want);
        }
        assert_eq!(s.stats().udp_written, 5);
        assert_eq!(s.write_failure(), None);
        assert!(!s.has_udp(flow));

        s.send_udp(flow, b"late");
        s.flush_udp();
        assert_eq!(s.write_failure(), Some(flow), "no socket: not written");
        assert_eq!(s.write_failure(), None, "reported once");
    }

    #[tokio::test]
    async fn a_refused_origin_port_fails_the_session() {
        // A port with nothing behind it: the kernel answers with port unreachable.
        let gone = UdpSocket::bind("127.0.0.1:0").await.expect("bind");
        let dest = gone.local_addr().expect("addr");
        drop(gone);
        let (mut s, _rx) = sockets();
        let flow = UdpFlowId(7);
        assert_eq!(s.open_udp(flow, dest), Ok(()));
        s.send_udp(flow, b"anyone?");
        s.flush_udp();
        match next_udp(&mut s).await {
            UdpRead::Failed { flow: f, reason } => {
                assert_eq!(f, flow);
                assert!(reason.to_lowercase().contains("refused"), "{reason}");
            }
            other => panic!("expected a failure, got {other:?}"),
        }
        assert!(!s.has_udp(flow), "a failed socket is closed");
    }

    /// With ping sockets permitted (`net.ipv4.ping_group_range` covers our group) an echo to
    /// loopback comes back through the funnel; without, the funnel fails cleanly and the
    /// router is configured without that family.
    #[tokio::test]
    async fn a_funnel_pings_loopback_or_fails_cleanly() {
        let (mut s, mut rx) = sockets();
        let funnel = FunnelId(3);
        let bind = IpAddr::V4(Ipv4Addr::LOCALHOST);
        let permitted = open_ping(bind).is_ok();
        if !permitted {
            assert!(!s.open_funnel(funnel, bind));
            assert!(!s.has_funnel(funnel));
            let config = icmp_config(IcmpSources {
                v4: Some(Ipv4Addr::LOCALHOST),
                v6: Some(Ipv6Addr::LOCALHOST),
            });
            assert_eq!(config.ipv4_src, None, "IPv4 not proxied without permission");
            // An echo for the failed funnel is not sent, and says so.
            assert!(!s.send_ping(funnel, bind, &[8, 0, 0, 0, 0, 1, 0, 1]));
            return;
        }
        let echo = [8, 0, 0, 0, 0x12, 0x34, 0, 9, b'h', b'i'];
        assert!(s.open_funnel(funnel, bind));
        assert!(s.send_ping(funnel, bind, &echo));
        match next(&mut rx).await {
            SocketEvent::PingRead {
                funnel: f,
                from,
                message,
            } => {
                assert_eq!(f, funnel);
                assert_eq!(from, bind);
                assert_eq!(message[0], 0, "echo reply");
                assert_eq!(&message[6..], &echo[6..], "sequence and data echoed");
            }
            other => panic!("expected a reply, got {other:?}"),
        }
        let config = icmp_config(IcmpSources {
            v4: Some(Ipv4Addr::LOCALHOST),
            v6: None,
        });
        assert_eq!(config.ipv4_src, Some(Ipv4Addr::LOCALHOST));
    }

    #[test]
    fn the_open_file_limit_ends_at_the_hard_limit() {
        raise_nofile_limit();
        let l = rustix::process::getrlimit(rustix::process::Resource::Nofile);
        assert_eq!(l.current, l.maximum);
    }
}
