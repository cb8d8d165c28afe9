//! A bare QUIC client for talking to the edge the way no honest connector would: quinn-proto
//! driven over a blocking UDP socket, one connection.

use std::net::{SocketAddr, UdpSocket};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use burrow_core::quic::tls::{self, PostQuantum};
use burrow_core::quic::SERVER_NAME;
use bytes::BytesMut;
use quinn_proto::{
    ClientConfig, Connection, ConnectionHandle, DatagramEvent, Dir, Endpoint, EndpointConfig,
    Event, StreamId, TransportConfig, VarInt,
};

/// One client connection to the edge.
pub struct RawQuic {
    sock: UdpSocket,
    ep: Endpoint,
    handle: ConnectionHandle,
    pub conn: Connection,
    connected: bool,
    lost: bool,
}

impl RawQuic {
    /// Connects to `edge`, trusting the CA at `ca`, granting the edge `stream_window` bytes of
    /// credit per stream; `None` if the handshake does not finish within 10 s.
    pub fn connect(edge: SocketAddr, ca: &Path, stream_window: u32) -> Option<Self> {
        let pem = std::fs::read(ca).expect("ca");
        let roots = tls::roots_from_pem(&pem, "ca").expect("roots");
        let crypto = tls::client_config(roots, PostQuantum::Prefer).expect("tls");
        let mut client = ClientConfig::new(Arc::new(crypto));
        let mut transport = TransportConfig::default();
        transport.stream_receive_window(VarInt::from_u32(stream_window));
        client.transport_config(Arc::new(transport));
        let mut ep = Endpoint::new(Arc::new(EndpointConfig::default()), None, true, None);
        let (handle, conn) = ep
            .connect(Instant::now(), client, edge, SERVER_NAME)
            .expect("connect");
        let sock = UdpSocket::bind("127.0.0.1:0").expect("bind");
        let mut q = Self {
            sock,
            ep,
            handle,
            conn,
            connected: false,
            lost: false,
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while !q.connected && !q.lost && Instant::now() < deadline {
            q.drive(Duration::from_millis(10));
        }
        q.connected.then_some(q)
    }

    /// Whether the connection is gone (closed by either side, or timed out).
    pub fn is_lost(&self) -> bool {
        self.lost
    }

    /// Opens a bidirectional stream.
    pub fn open(&mut self) -> StreamId {
        self.conn.streams().open(Dir::Bi).expect("stream credit")
    }

    /// Writes what the stream takes of `bytes`; returns how much.
    pub fn write(&mut self, s: StreamId, bytes: &[u8]) -> usize {
        self.conn.send_stream(s).write(bytes).unwrap_or(0)
    }

    /// Everything readable on `s` now.
    pub fn read(&mut self, s: StreamId) -> Vec<u8> {
        let mut out = Vec::new();
        if let Ok(mut chunks) = self.conn.recv_stream(s).read(true) {
            while let Ok(Some(c)) = chunks.next(usize::MAX) {
                out.extend_from_slice(&c.bytes);
            }
            let _ = chunks.finalize();
        }
        out
    }

    /// Sends, receives and runs timers for `dur`.
    pub fn drive(&mut self, dur: Duration) {
        let until = Instant::now() + dur;
        let mut buf = Vec::with_capacity(64 * 1024);
        let mut rbuf = vec![0u8; 65536];
        loop {
            let now = Instant::now();
            while let Some(t) = self.conn.poll_transmit(now, 1, &mut buf) {
                let _ = self.sock.send_to(&buf[..t.size], t.destination);
                buf.clear();
            }
            if self.conn.poll_timeout().is_some_and(|t| t <= now) {
                self.conn.handle_timeout(now);
            }
            while let Some(ev) = self.conn.poll_endpoint_events() {
                if let Some(ev) = self.ep.handle_event(self.handle, ev) {
                    self.conn.handle_event(ev);
                }
            }
            while let Some(ev) = self.conn.poll() {
                match ev {
                    Event::Connected => self.connected = true,
                    Event::ConnectionLost { .. } => self.lost = true,
                    _ => {}
                }
            }
            if now >= until || self.lost {
                return;
            }
            let wake = self
                .conn
                .poll_timeout()
                .map_or(until, |t| t.min(until))
                .saturating_duration_since(now)
                .clamp(Duration::from_millis(1), Duration::from_millis(20));
            self.sock.set_read_timeout(Some(wake)).expect("timeout");
            if let Ok((n, from)) = self.sock.recv_from(&mut rbuf) {
                let data = BytesMut::from(&rbuf[..n]);
                if let Some(DatagramEvent::ConnectionEvent(_, ev)) =
                    self.ep.handle(now, from, None, None, data, &mut buf)
                {
                    self.conn.handle_event(ev);
                }
                buf.clear();
            }
        }
    }
}
