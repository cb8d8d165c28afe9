//! The UDP sockets QUIC runs over, one per HA index, batched as quinn does it (quinn-udp):
//! a GSO transmit leaves in one `sendmsg`, one `recvmmsg` fills several reused buffers, each
//! holding one datagram or a GRO run. Receive buffers are shared by every socket (read in
//! turn), so memory does not grow with the HA count.

use std::io::{self, IoSliceMut};
use std::net::SocketAddr;

use burrow_core::tunnel::{EcnCodepoint, Received, Transmit};
use burrow_os::quic_udp::{GRO_MAX_SEGMENTS, MAX_TRANSMIT_SEGMENTS, MAX_UDP_PAYLOAD, READ_BATCHES};
use mio::net::UdpSocket;
use quinn_udp::{RecvMeta, UdpSocketState};
use tracing::debug;

/// Kernel socket buffer asked for each way. Smaller than burrow-tokio's 7 MiB: a small box's
/// kernel memory is what is scarce, and its link is slow enough for 1 MiB.
const SOCKET_BUFFER: usize = 1 << 20;
/// Buffers filled per `recvmmsg`; each holds a GRO run already. Pages of buffers the kernel
/// never fills are never touched, so idle memory stays small.
const RECV_BATCH: usize = 4;

/// A non-blocking UDP socket with quinn-udp's batched, ECN-aware send and receive.
#[derive(Debug)]
pub struct EdgeSocket {
    io: UdpSocket,
    state: UdpSocketState,
}

impl EdgeSocket {
    /// Binds `local` (`--edge-bind-address`), else the unspecified address of `edge`'s family.
    pub fn bind_for(edge: SocketAddr, local: Option<std::net::IpAddr>) -> io::Result<Self> {
        let io = UdpSocket::bind(burrow_os::edge_bind(edge, local))?;
        let state = UdpSocketState::new((&io).into())?;
        // Best effort: the kernel caps the size at net.core.{r,w}mem_max.
        let _ = state.set_recv_buffer_size((&io).into(), SOCKET_BUFFER);
        let _ = state.set_send_buffer_size((&io).into(), SOCKET_BUFFER);
        Ok(Self { io, state })
    }

    /// The mio source to register.
    pub fn source(&mut self) -> &mut UdpSocket {
        &mut self.io
    }

    /// The bound address.
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.io.local_addr()
    }

    /// Datagrams one transmit may hold.
    pub fn max_transmit_segments(&self) -> usize {
        self.state.max_gso_segments().min(MAX_TRANSMIT_SEGMENTS)
    }

    /// Sends without waiting; a full socket buffer drops the datagrams, which QUIC's loss
    /// recovery handles like any other loss.
    pub fn send(&self, transmit: &Transmit, buf: &[u8]) {
        let t = quinn_udp::Transmit {
            destination: transmit.destination,
            ecn: transmit
                .ecn
                .and_then(|e| quinn_udp::EcnCodepoint::from_bits(e.bits())),
            contents: &buf[..transmit.size.min(buf.len())],
            segment_size: transmit.segment_size,
            src_ip: None,
        };
        if let Err(e) = self.state.try_send((&self.io).into(), &t) {
            if e.kind() != io::ErrorKind::WouldBlock {
                debug!(error = %e, "edge send failed");
            }
        }
    }

    /// Reads what is queued (a bounded number of `recvmmsg` calls), handing each buffer to
    /// `f`. Ok once drained (`WouldBlock`, which mio's edge-triggered readiness needs) or at
    /// the bound (then the caller must come back without waiting for a new event).
    pub fn read_round(
        &self,
        bufs: &mut RecvBufs,
        mut f: impl FnMut(&Received<'_>),
    ) -> io::Result<bool> {
        for _ in 0..READ_BATCHES {
            let RecvBufs { storage, meta } = bufs;
            let mut slices = storage.chunks_mut(CHUNK).map(IoSliceMut::new);
            let mut iovs: [IoSliceMut<'_>; RECV_BATCH] =
                std::array::from_fn(|_| slices.next().expect("RECV_BATCH chunks"));
            match self.state.recv((&self.io).into(), &mut iovs, meta) {
                Ok(n) => {
                    for (m, b) in meta[..n].iter().zip(storage.chunks(CHUNK)) {
                        f(&Received {
                            from: m.addr,
                            ecn: m.ecn.and_then(|e| EcnCodepoint::from_bits(e as u8)),
                            data: &b[..m.len.min(b.len())],
                            stride: m.stride,
                        });
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(true),
                Err(e) => return Err(e),
            }
        }
        Ok(false)
    }
}

/// Bytes per receive buffer: a full GRO run.
const CHUNK: usize = MAX_UDP_PAYLOAD * GRO_MAX_SEGMENTS;

/// Receive buffers reused for every read of every edge socket.
pub struct RecvBufs {
    storage: Vec<u8>,
    meta: [RecvMeta; RECV_BATCH],
}

impl RecvBufs {
    /// Zeroed lazily by the allocator (calloc): untouched pages cost no memory.
    pub fn new() -> Self {
        Self {
            storage: vec![0; CHUNK * RECV_BATCH],
            meta: [RecvMeta::default(); RECV_BATCH],
        }
    }
}
