//! The UDP socket QUIC runs over, for both roles, batched as quinn does it (quinn-udp): a
//! transmit of several datagrams leaves in one `sendmsg` with UDP GSO, and one `recvmmsg`
//! fills several reused buffers, each holding one datagram or a GRO run of them. ECN marks go
//! out on send and come back on receive. Where the platform lacks GSO/GRO, quinn-udp falls back
//! to one datagram per buffer; nothing here changes.

use std::io::{self, IoSliceMut};
use std::net::SocketAddr;
use std::task::{Context, Poll};

use burrow_core::tunnel::{EcnCodepoint, Received, Transmit};
use burrow_os::quic_udp::{GRO_MAX_SEGMENTS, MAX_TRANSMIT_SEGMENTS, MAX_UDP_PAYLOAD, READ_BATCHES};
use quinn_udp::{RecvMeta, UdpSocketState};
use tokio::io::unix::AsyncFd;
use tokio::io::Interest;
use tokio::net::UdpSocket;
use tracing::debug;

/// Kernel socket buffer asked for each way: quic-go's (cloudflared's QUIC stack) 7 MiB. A GSO
/// batch or GRO run is up to 64 datagrams in one buffer entry, and the 208 KiB default drops
/// such entries whole.
const SOCKET_BUFFER: usize = 7 << 20;
/// Buffers filled per `recvmmsg`. quinn uses 32; with GRO each buffer holds up to 64
/// datagrams already, and fewer buffers keep the memory (64 x 1472 B each) small.
const RECV_BATCH: usize = 8;

/// A UDP socket on the runtime with quinn-udp's batched, ECN-aware send and receive.
#[derive(Debug)]
pub struct QuicSocket {
    /// Registered for reads only. A tokio `UdpSocket` also asks for writability, and on
    /// loopback every send frees its buffer at once, so each `sendmsg` signalled the runtime:
    /// its worker woke from `epoll_wait` for nothing (a third of the connector's worker
    /// wake-ups in the UDP bench), and nothing here waits to write.
    io: AsyncFd<std::net::UdpSocket>,
    state: UdpSocketState,
}

impl QuicSocket {
    /// Wraps a bound socket, turning on what the platform offers (GRO, ECN and
    /// packet-info reporting, don't-fragment).
    pub fn new(io: UdpSocket) -> io::Result<Self> {
        // Out of the runtime's set (it stays non-blocking), then back in for reads only.
        let io = io.into_std()?;
        let state = UdpSocketState::new((&io).into())?;
        // Best effort: the kernel caps the size at net.core.{r,w}mem_max.
        if let Err(e) = state.set_recv_buffer_size((&io).into(), SOCKET_BUFFER) {
            debug!(error = %e, "cannot raise the UDP receive buffer");
        }
        if let Err(e) = state.set_send_buffer_size((&io).into(), SOCKET_BUFFER) {
            debug!(error = %e, "cannot raise the UDP send buffer");
        }
        let got = state.recv_buffer_size((&io).into()).unwrap_or(0);
        if got < SOCKET_BUFFER {
            debug!(
                wanted_kib = SOCKET_BUFFER / 1024,
                got_kib = got / 1024,
                "UDP receive buffer smaller than wanted (see net.core.rmem_max)"
            );
        }
        // SAFETY: the socket owns its descriptor, open until it drops, which the AsyncFd does
        // after deregistering it; it is never swapped for another.
        let io = unsafe { AsyncFd::register_with_interest(io, Interest::READABLE)? };
        Ok(Self { io, state })
    }

    /// Binds `addr` and wraps it.
    pub async fn bind(addr: SocketAddr) -> io::Result<Self> {
        Self::new(UdpSocket::bind(addr).await?)
    }

    /// The bound address.
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.io.get_ref().local_addr()
    }

    /// How many datagrams one transmit may hold: ask `poll_transmit` for this many.
    pub fn max_transmit_segments(&self) -> usize {
        self.state.max_gso_segments().min(MAX_TRANSMIT_SEGMENTS)
    }

    /// Sends `transmit` (its bytes are `buf[..transmit.size]`) without waiting. A full socket
    /// buffer drops it (`WouldBlock`), which QUIC's loss recovery handles like any other loss.
    pub fn try_send(&self, transmit: &Transmit, buf: &[u8]) -> io::Result<()> {
        let t = quinn_udp::Transmit {
            destination: transmit.destination,
            ecn: transmit
                .ecn
                .and_then(|e| quinn_udp::EcnCodepoint::from_bits(e.bits())),
            contents: &buf[..transmit.size.min(buf.len())],
            segment_size: transmit.segment_size,
            src_ip: None,
        };
        // Straight to the (non-blocking) socket, not through tokio's readiness cache: nothing
        // here waits for writability, and a fresh socket's cache says "not writable" until the
        // reactor has turned, which would drop the first Initial.
        self.state.try_send(self.io.get_ref().into(), &t)
    }

    /// Ready when a read may find datagrams (registers `cx` otherwise).
    pub fn poll_recv_ready(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        // The guard is dropped without clearing: only a read that finds nothing clears it.
        self.io.poll_read_ready(cx).map_ok(drop)
    }

    /// Reads what is queued, without waiting, into `bufs`; then [`RecvBufs::received`] lists
    /// it. `WouldBlock` when nothing is.
    pub fn try_recv(&self, bufs: &mut RecvBufs) -> io::Result<()> {
        self.recv_into(bufs, false)
    }

    /// Reads into `bufs`; `uncached`: straight from the (non-blocking) socket, not only when
    /// tokio's readiness cache says readable.
    fn recv_into(&self, bufs: &mut RecvBufs, uncached: bool) -> io::Result<()> {
        bufs.filled = 0;
        let RecvBufs {
            storage,
            meta,
            chunk,
            filled,
        } = bufs;
        let mut slices = storage.chunks_mut(*chunk).map(IoSliceMut::new);
        let mut iovs: [IoSliceMut<'_>; RECV_BATCH] =
            std::array::from_fn(|_| slices.next().expect("RECV_BATCH chunks"));
        let n = if uncached {
            self.state.recv(self.io.get_ref().into(), &mut iovs, meta)?
        } else {
            self.io.try_io(Interest::READABLE, |io| {
                self.state.recv(io.into(), &mut iovs, meta)
            })?
        };
        *filled = n;
        Ok(())
    }

    /// Reads what is queued, for at most a bounded number of `recvmmsg` calls, handing every
    /// buffer to `f`. Ok once the socket is drained or the bound is reached; a receive error
    /// (ICMP port-unreachable and the like surface as such on some systems) ends the round.
    pub fn read_round(&self, bufs: &mut RecvBufs, f: impl FnMut(&Received<'_>)) -> io::Result<()> {
        self.round(bufs, false, f)
    }

    /// [`Self::read_round`] asking the socket itself, whatever tokio's readiness cache says:
    /// after the process was descheduled for seconds, the cache did not yet report the
    /// datagrams queued meanwhile on the turn its timers expired.
    pub fn read_round_uncached(
        &self,
        bufs: &mut RecvBufs,
        f: impl FnMut(&Received<'_>),
    ) -> io::Result<()> {
        self.round(bufs, true, f)
    }

    fn round(
        &self,
        bufs: &mut RecvBufs,
        uncached: bool,
        mut f: impl FnMut(&Received<'_>),
    ) -> io::Result<()> {
        for _ in 0..READ_BATCHES {
            match self.recv_into(bufs, uncached) {
                Ok(()) => bufs.received().for_each(|r| f(&r)),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }
}

/// Receive buffers reused for every read: no allocation per datagram or per read.
#[derive(Debug)]
pub struct RecvBufs {
    storage: Vec<u8>,
    meta: [RecvMeta; RECV_BATCH],
    /// Bytes per buffer: a full GRO run.
    chunk: usize,
    /// Buffers the last read filled.
    filled: usize,
}

impl RecvBufs {
    /// Buffers for any socket: each holds the longest GRO run Linux makes. One set serves
    /// several sockets read in turn.
    pub fn new() -> Self {
        let chunk = MAX_UDP_PAYLOAD * GRO_MAX_SEGMENTS;
        Self {
            storage: vec![0; chunk * RECV_BATCH],
            meta: [RecvMeta::default(); RECV_BATCH],
            chunk,
            filled: 0,
        }
    }

    /// What the last [`QuicSocket::try_recv`] read: one entry per buffer.
    pub fn received(&self) -> impl Iterator<Item = Received<'_>> + '_ {
        self.meta[..self.filled]
            .iter()
            .zip(self.storage.chunks(self.chunk))
            .map(|(m, b)| Received {
                from: m.addr,
                ecn: m.ecn.and_then(|e| EcnCodepoint::from_bits(e as u8)),
                data: &b[..m.len.min(b.len())],
                stride: m.stride,
            })
    }
}

impl Default for RecvBufs {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    /// Reads from `socket` until `want` datagrams came, split at each buffer's stride.
    async fn datagrams(
        socket: &QuicSocket,
        want: usize,
    ) -> Vec<(SocketAddr, Option<EcnCodepoint>, Vec<u8>)> {
        let mut bufs = RecvBufs::new();
        let mut got = Vec::new();
        while got.len() < want {
            std::future::poll_fn(|cx| socket.poll_recv_ready(cx))
                .await
                .expect("readable");
            match socket.try_recv(&mut bufs) {
                Ok(()) => {
                    for r in bufs.received() {
                        for d in r.datagrams() {
                            got.push((r.from, r.ecn, d.to_vec()));
                        }
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => panic!("receive: {e}"),
            }
        }
        got
    }

    /// A sending and a receiving socket on loopback.
    async fn pair() -> (QuicSocket, QuicSocket) {
        let bind = || QuicSocket::bind("127.0.0.1:0".parse().unwrap());
        (bind().await.unwrap(), bind().await.unwrap())
    }

    #[tokio::test]
    async fn a_gso_batch_arrives_as_its_datagrams_with_their_ecn_mark() {
        let (tx, rx) = pair().await;
        // Five full segments and a short last one, as quinn builds a batch.
        let mut sent: Vec<Vec<u8>> = (0..5u8).map(|i| vec![i; 1200]).collect();
        sent.push(vec![0xee; 300]);
        let buf = sent.concat();
        let batch = tx.max_transmit_segments() >= sent.len();
        let t = Transmit {
            destination: rx.local_addr().unwrap(),
            size: buf.len(),
            segment_size: batch.then_some(1200),
            ecn: Some(EcnCodepoint::Ect0),
        };
        if batch {
            tx.try_send(&t, &buf).expect("one sendmsg for the batch");
        } else {
            // No GSO here: the same datagrams, one send each.
            for d in t.datagrams(&buf) {
                let one = Transmit {
                    size: d.len(),
                    segment_size: None,
                    ..t
                };
                tx.try_send(&one, d).expect("send");
            }
        }
        let got = tokio::time::timeout(Duration::from_secs(10), datagrams(&rx, sent.len()))
            .await
            .expect("every datagram arrives on loopback");
        let from = tx.local_addr().unwrap();
        for (i, (f, ecn, d)) in got.iter().enumerate() {
            assert_eq!(*f, from, "datagram {i} source");
            assert_eq!(*ecn, Some(EcnCodepoint::Ect0), "datagram {i} ECN");
            assert_eq!(*d, sent[i], "datagram {i} bytes");
        }
        assert_eq!(got.len(), sent.len());
    }

    #[tokio::test]
    async fn the_largest_batch_of_the_largest_datagrams_is_one_send() {
        let (tx, rx) = pair().await;
        let n = tx.max_transmit_segments();
        let sent: Vec<Vec<u8>> = (0..n).map(|i| vec![i as u8; MAX_UDP_PAYLOAD]).collect();
        let buf = sent.concat();
        let t = Transmit {
            destination: rx.local_addr().unwrap(),
            size: buf.len(),
            segment_size: (n > 1).then_some(MAX_UDP_PAYLOAD),
            ecn: None,
        };
        tx.try_send(&t, &buf)
            .expect("the kernel takes the whole batch (no EMSGSIZE)");
        let got = tokio::time::timeout(Duration::from_secs(10), datagrams(&rx, n))
            .await
            .expect("every datagram arrives on loopback");
        let bytes: Vec<Vec<u8>> = got.into_iter().map(|(_, _, d)| d).collect();
        assert_eq!(bytes, sent);
    }

    #[tokio::test]
    async fn queued_datagrams_of_mixed_sizes_arrive_intact_in_order() {
        let (tx, rx) = pair().await;
        // Different sizes and no ECN: GRO cannot merge them; each comes in a buffer of its own.
        let sent: Vec<Vec<u8>> = (1..=RECV_BATCH).map(|n| vec![n as u8; n * 100]).collect();
        for d in &sent {
            let t = Transmit {
                destination: rx.local_addr().unwrap(),
                size: d.len(),
                segment_size: None,
                ecn: None,
            };
            tx.try_send(&t, d).expect("send");
        }
        let got = tokio::time::timeout(Duration::from_secs(10), datagrams(&rx, sent.len()))
            .await
            .expect("every datagram arrives on loopback");
        let bytes: Vec<Vec<u8>> = got
            .into_iter()
            .map(|(_, ecn, d)| {
                assert_eq!(ecn, None);
                d
            })
            .collect();
        assert_eq!(bytes, sent);
    }

    /// Whether `rx` says readable right now, without waiting.
    fn ready_now(rx: &QuicSocket) -> bool {
        let waker = std::task::Waker::noop();
        rx.poll_recv_ready(&mut Context::from_waker(waker))
            .is_ready()
    }

    #[tokio::test]
    async fn a_read_round_leaves_no_readiness_behind_and_the_next_datagram_wakes_the_reader() {
        let (tx, rx) = pair().await;
        let send = |byte: u8| {
            let t = Transmit {
                destination: rx.local_addr().unwrap(),
                size: 100,
                segment_size: None,
                ecn: None,
            };
            tx.try_send(&t, &[byte; 100]).expect("send");
        };
        let mut bufs = RecvBufs::new();
        for byte in 1..=3u8 {
            send(byte);
            let wait = std::future::poll_fn(|cx| rx.poll_recv_ready(cx));
            tokio::time::timeout(Duration::from_secs(10), wait)
                .await
                .expect("a datagram sent after a round wakes the reader")
                .expect("readable");
            let mut got = Vec::new();
            rx.read_round(&mut bufs, |r| got.extend(r.datagrams().map(<[u8]>::to_vec)))
                .expect("read");
            assert_eq!(got, vec![vec![byte; 100]]);
            // The round cleared the readiness it consumed: the loop sleeps until the next
            // datagram rather than spinning on a stale "readable".
            assert!(!ready_now(&rx), "readiness cleared after datagram {byte}");
        }
    }
}
