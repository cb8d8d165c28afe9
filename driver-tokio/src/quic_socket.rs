//! The UDP socket QUIC runs on, for a connector's connection or the edge: GSO sends (one
//! `sendmsg` per batch of datagrams core hands out) and batched receives (`recvmmsg`, GRO),
//! through quinn-udp. On systems without them quinn-udp falls back to one datagram per call.

use std::io::{self, IoSliceMut};
use std::net::SocketAddr;

use burrow_core::tunnel::Transmit;
use quinn_udp::{RecvMeta, UdpSockRef, UdpSocketState};
use tokio::io::Interest;
use tokio::net::UdpSocket;

/// Socket buffers asked for: room for bursts at tunnel rates (the kernel may cap them).
const SOCKET_BUFFER: usize = 4 << 20;
/// Receive slots per `recvmmsg`.
const SLOTS: usize = 16;
/// Bytes per datagram a receive slot is sized for (above any path MTU QUIC uses here).
const DATAGRAM: usize = 1500;
/// Most datagrams asked of core per send, as quinn does: enough to amortise the syscall,
/// few enough that one connection does not hog the loop.
const MAX_BATCH: usize = 10;

/// A QUIC socket.
pub struct QuicSocket {
    io: UdpSocket,
    state: UdpSocketState,
}

impl QuicSocket {
    /// Binds `addr` (on the current tokio runtime).
    pub fn bind(addr: SocketAddr) -> io::Result<Self> {
        let std = std::net::UdpSocket::bind(addr)?;
        std.set_nonblocking(true)?;
        let state = UdpSocketState::new(UdpSockRef::from(&std))?;
        // Best effort: a smaller buffer only means earlier drops, which QUIC recovers from.
        let _ = state.set_send_buffer_size(UdpSockRef::from(&std), SOCKET_BUFFER);
        let _ = state.set_recv_buffer_size(UdpSockRef::from(&std), SOCKET_BUFFER);
        Ok(Self {
            io: UdpSocket::from_std(std)?,
            state,
        })
    }

    /// The bound address.
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.io.local_addr()
    }

    /// How many datagrams one send may carry (1 without GSO, or after GSO failed once).
    pub fn max_datagrams(&self) -> usize {
        self.state.max_gso_segments().clamp(1, MAX_BATCH)
    }

    /// Sends `t` (`buf[..t.size]`, one GSO batch when `t.segment_size` is set) without waiting:
    /// a full socket buffer is `WouldBlock`, and the caller drops the batch like any loss.
    pub fn try_send(&self, t: &Transmit, buf: &[u8]) -> io::Result<()> {
        let transmit = quinn_udp::Transmit {
            destination: t.destination,
            ecn: None,
            contents: &buf[..t.size],
            segment_size: t.segment_size,
            src_ip: None,
        };
        self.io.try_io(Interest::WRITABLE, || {
            self.state.try_send(UdpSockRef::from(&self.io), &transmit)
        })
    }

    /// Waits for datagrams, reads as many as one `recvmmsg` gives into `bufs`, and hands each
    /// datagram (GRO batches split) to `f`.
    pub async fn recv(
        &self,
        bufs: &mut RecvBufs,
        mut f: impl FnMut(SocketAddr, &[u8]),
    ) -> io::Result<()> {
        let n = loop {
            self.io.readable().await?;
            let mut slots = bufs.data.chunks_mut(bufs.slot);
            let mut slices: [IoSliceMut; SLOTS] =
                std::array::from_fn(|_| IoSliceMut::new(slots.next().unwrap_or_default()));
            let got = self.io.try_io(Interest::READABLE, || {
                self.state
                    .recv(UdpSockRef::from(&self.io), &mut slices, &mut bufs.meta)
            });
            match got {
                Ok(n) => break n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => return Err(e),
            }
        };
        for (meta, slot) in bufs.meta.iter().zip(bufs.data.chunks(bufs.slot)).take(n) {
            let bytes = &slot[..meta.len];
            for d in bytes.chunks(meta.stride.max(1)) {
                f(meta.addr, d);
            }
        }
        Ok(())
    }

    /// Receive buffers sized for this socket (GRO makes one slot hold several datagrams).
    pub fn recv_bufs(&self) -> RecvBufs {
        let slot = DATAGRAM * self.state.gro_segments().max(1);
        RecvBufs {
            // Pages are only touched as datagrams arrive.
            data: vec![0; slot * SLOTS],
            slot,
            meta: vec![RecvMeta::default(); SLOTS],
        }
    }
}

/// Reusable receive buffers for [`QuicSocket::recv`].
pub struct RecvBufs {
    data: Vec<u8>,
    slot: usize,
    meta: Vec<RecvMeta>,
}

/// Datagrams read in one go, copied out of the receive buffers so that reading goes on while
/// the loop handles them: two allocations per batch rather than one per datagram.
#[derive(Debug, Default)]
pub struct Batch {
    bytes: Vec<u8>,
    parts: Vec<(SocketAddr, usize)>,
}

impl Batch {
    /// Each datagram with its sender, in arrival order.
    pub fn iter(&self) -> impl Iterator<Item = (SocketAddr, &[u8])> {
        let mut at = 0;
        self.parts.iter().map(move |&(from, len)| {
            let d = &self.bytes[at..at + len];
            at += len;
            (from, d)
        })
    }
}

/// Reads `socket` until `deliver` refuses a batch (the loop is gone). Errors are logged and
/// reading goes on: ICMP port-unreachable and the like surface as receive errors.
pub async fn read_batches(socket: &QuicSocket, mut deliver: impl FnMut(Batch) -> bool) {
    let mut bufs = socket.recv_bufs();
    loop {
        let mut batch = Batch::default();
        let got = socket
            .recv(&mut bufs, |from, d| {
                batch.bytes.extend_from_slice(d);
                batch.parts.push((from, d.len()));
            })
            .await;
        match got {
            Ok(()) => {
                if !deliver(batch) {
                    return;
                }
            }
            Err(e) => tracing::debug!(error = %e, "UDP receive error"),
        }
    }
}
