//! The ceiling: raw QUIC between two processes through burrow's own transmit and receive path
//! (quinn-proto with the tunnel's transport settings and TLS, the daemons' batched quinn-udp
//! socket), one stream, no HTTP, no origin. The tunnel's throughput is read against this: it is
//! the most one QUIC connection carries on this box.
//!
//! The far side is this binary again, started with [`PEER_FLAG`]; it prints its port and
//! certificate on stdout. On a stream the client writes one op byte and a length: `U` then
//! that many bytes (the peer answers one byte after the FIN), or `D` (the peer sends that many).

use std::io::{BufRead, BufReader};
use std::net::{Ipv4Addr, SocketAddr};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use burrow_core::quic::tls::{self, PostQuantum};
use burrow_core::quic::transport::QuicSettings;
use burrow_core::tunnel::Transmit;
use bytes::BytesMut;
use quinn_proto::{
    ClientConfig, Connection, ConnectionHandle, DatagramEvent, Dir, Endpoint, EndpointConfig,
    Event, ServerConfig, StreamEvent, StreamId,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

use burrow_tokio::quic_socket::{QuicSocket, RecvBufs};

/// The argument that makes `burrow-bench` the ceiling's far side.
pub const PEER_FLAG: &str = "--ceiling-peer";
const SERVER_NAME: &str = "ceiling.burrow.test";
/// Bytes written per `write` call: what a tunnel stream's writes look like.
const CHUNK: usize = 64 * 1024;
static ZEROS: [u8; CHUNK] = [0; CHUNK];
/// A measurement that takes longer than this has failed.
const LIMIT: Duration = Duration::from_secs(120);

/// One QUIC endpoint with at most one connection, on a batched socket.
struct Side {
    socket: QuicSocket,
    endpoint: Endpoint,
    server: Option<Arc<ServerConfig>>,
    conn: Option<(ConnectionHandle, Connection)>,
    bufs: RecvBufs,
    tx: Vec<u8>,
    scratch: Vec<u8>,
}

impl Side {
    fn bind(server: Option<Arc<ServerConfig>>) -> Result<Self, String> {
        let std = std::net::UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).map_err(|e| e.to_string())?;
        std.set_nonblocking(true).map_err(|e| e.to_string())?;
        let io = tokio::net::UdpSocket::from_std(std).map_err(|e| e.to_string())?;
        Ok(Self {
            socket: QuicSocket::new(io).map_err(|e| e.to_string())?,
            endpoint: Endpoint::new(
                Arc::new(EndpointConfig::default()),
                server.clone(),
                true,
                None,
            ),
            server,
            conn: None,
            bufs: RecvBufs::new(),
            tx: Vec::new(),
            scratch: Vec::new(),
        })
    }

    /// Sends what the connection has to send, waits for the socket or the connection's timer,
    /// and feeds what came in.
    async fn turn(&mut self) -> Result<(), String> {
        self.transmit(Instant::now());
        let deadline = self.conn.as_mut().and_then(|(_, c)| c.poll_timeout());
        let ready = std::future::poll_fn(|cx| self.socket.poll_recv_ready(cx));
        match deadline {
            Some(d) => {
                tokio::select! {
                    r = ready => r.map_err(|e| e.to_string())?,
                    () = tokio::time::sleep_until(d.into()) => {}
                }
            }
            None => ready.await.map_err(|e| e.to_string())?,
        }
        let now = Instant::now();
        if let Some((_, c)) = &mut self.conn {
            if deadline.is_some_and(|d| d <= now) {
                c.handle_timeout(now);
            }
        }
        let Self {
            socket,
            endpoint,
            server,
            conn,
            bufs,
            scratch,
            ..
        } = self;
        let mut responses = Vec::new();
        socket
            .read_round(bufs, |r| {
                let ecn = r.ecn.map(Into::into);
                for segment in r.datagrams() {
                    scratch.clear();
                    let event =
                        endpoint.handle(now, r.from, None, ecn, BytesMut::from(segment), scratch);
                    match event {
                        Some(DatagramEvent::NewConnection(incoming)) if conn.is_none() => {
                            let accepted = endpoint.accept(incoming, now, scratch, server.clone());
                            if let Ok(accepted) = accepted {
                                *conn = Some(accepted);
                            }
                        }
                        Some(DatagramEvent::NewConnection(incoming)) => {
                            endpoint.ignore(incoming);
                        }
                        Some(DatagramEvent::ConnectionEvent(h, ev)) => {
                            if let Some((_, c)) = conn.as_mut().filter(|(ch, _)| *ch == h) {
                                c.handle_event(ev);
                            }
                        }
                        Some(DatagramEvent::Response(t)) => {
                            responses.push((t.destination, scratch[..t.size].to_vec()));
                        }
                        None => {}
                    }
                }
            })
            .map_err(|e| e.to_string())?;
        for (to, bytes) in responses {
            let t = Transmit {
                destination: to,
                size: bytes.len(),
                segment_size: None,
                ecn: None,
            };
            let _ = self.socket.try_send(&t, &bytes);
        }
        if let Some((h, c)) = &mut self.conn {
            while let Some(ev) = c.poll_endpoint_events() {
                if let Some(back) = self.endpoint.handle_event(*h, ev) {
                    c.handle_event(back);
                }
            }
        }
        Ok(())
    }

    fn transmit(&mut self, now: Instant) {
        let Some((_, c)) = &mut self.conn else {
            return;
        };
        let segments = self.socket.max_transmit_segments();
        loop {
            self.tx.clear();
            let Some(t) = c.poll_transmit(now, segments, &mut self.tx) else {
                return;
            };
            let t = Transmit {
                destination: t.destination,
                size: t.size,
                segment_size: t.segment_size,
                ecn: t.ecn.map(Into::into),
            };
            // A full socket buffer drops the batch; QUIC's loss recovery sees to it, as in
            // the daemons.
            let _ = self.socket.try_send(&t, &self.tx);
        }
    }

    fn conn(&mut self) -> Result<&mut Connection, String> {
        self.conn
            .as_mut()
            .map(|(_, c)| c)
            .ok_or_else(|| "no connection".to_owned())
    }
}

/// Writes zeros on `id` until `left` is 0 or flow control blocks.
fn write_zeros(c: &mut Connection, id: StreamId, left: &mut u64) -> Result<(), String> {
    while *left > 0 {
        let n = (*left).min(CHUNK as u64) as usize;
        match c.send_stream(id).write(&ZEROS[..n]) {
            Ok(w) => *left -= w as u64,
            Err(quinn_proto::WriteError::Blocked) => return Ok(()),
            Err(e) => return Err(e.to_string()),
        }
    }
    Ok(())
}

/// Reads what is readable on `id` into `got` (bytes only counted past `skip`, which it
/// consumes into `head`). True at the FIN.
fn read_all(
    c: &mut Connection,
    id: StreamId,
    head: &mut Vec<u8>,
    got: &mut u64,
) -> Result<bool, String> {
    let mut s = c.recv_stream(id);
    let mut chunks = s.read(true).map_err(|e| e.to_string())?;
    let fin = loop {
        match chunks.next(usize::MAX) {
            Ok(Some(ch)) => {
                let mut b = &ch.bytes[..];
                let want = 9usize.saturating_sub(head.len()).min(b.len());
                head.extend_from_slice(&b[..want]);
                b = &b[want..];
                *got += b.len() as u64;
            }
            Ok(None) => break true,
            Err(quinn_proto::ReadError::Blocked) => break false,
            Err(e) => return Err(e.to_string()),
        }
    };
    let _ = chunks.finalize();
    Ok(fin)
}

fn runtime() -> Result<tokio::runtime::Runtime, String> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())
}

/// The far side: serves one connection at a time until killed.
pub fn serve() -> Result<(), String> {
    let cert = rcgen::generate_simple_self_signed(vec![SERVER_NAME.to_owned()])
        .map_err(|e| e.to_string())?;
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(cert.signing_key.serialize_der()));
    let crypto = tls::server_config(vec![cert.cert.der().clone()], key, PostQuantum::Prefer)
        .map_err(|e| e.to_string())?;
    let mut server = ServerConfig::with_crypto(Arc::new(crypto));
    server.transport_config(QuicSettings::edge().transport_config(true));
    runtime()?.block_on(async {
        let mut side = Side::bind(Some(Arc::new(server)))?;
        let port = side.socket.local_addr().map_err(|e| e.to_string())?.port();
        println!("{port} {}", hex::encode(cert.cert.der()));
        // (stream, header, bytes counted, upload answered, download bytes left)
        let mut streams: Vec<(StreamId, Vec<u8>, u64, bool, u64)> = Vec::new();
        loop {
            side.turn().await?;
            let Some((_, c)) = &mut side.conn else {
                continue;
            };
            while let Some(ev) = c.poll() {
                match ev {
                    Event::ConnectionLost { .. } => streams.clear(),
                    Event::Stream(StreamEvent::Opened { dir: Dir::Bi }) => {
                        while let Some(id) = c.streams().accept(Dir::Bi) {
                            streams.push((id, Vec::new(), 0, false, 0));
                        }
                    }
                    _ => {}
                }
            }
            for (id, head, got, answered, left) in &mut streams {
                let had_head = head.len() == 9;
                let fin = read_all(c, *id, head, got).unwrap_or(true);
                if !had_head && head.len() == 9 && head[0] == b'D' {
                    *left = u64::from_be_bytes(head[1..9].try_into().expect("8 bytes"));
                }
                if head.first() == Some(&b'U') && fin && !*answered {
                    let _ = c.send_stream(*id).write(b"k");
                    let _ = c.send_stream(*id).finish();
                    *answered = true;
                }
                if head.first() == Some(&b'D') && *left > 0 {
                    write_zeros(c, *id, left)?;
                    if *left == 0 {
                        let _ = c.send_stream(*id).finish();
                    }
                }
            }
            if c.is_drained() {
                side.conn = None;
            }
        }
    })
}

/// The far side, running.
pub struct Peer {
    child: Child,
    addr: SocketAddr,
    cert: CertificateDer<'static>,
}

impl Drop for Peer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Peer {
    /// Starts this binary as the far side (on the connector's CPU with `pin`).
    pub fn start(pin: bool) -> Result<Self, String> {
        let exe = std::env::current_exe().map_err(|e| e.to_string())?;
        let mut child = Command::new(exe)
            .arg(PEER_FLAG)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .map_err(|e| format!("start the ceiling peer: {e}"))?;
        let mut line = String::new();
        let out = child.stdout.take().ok_or("no stdout")?;
        BufReader::new(out)
            .read_line(&mut line)
            .map_err(|e| e.to_string())?;
        let mut peer = Self {
            child,
            addr: SocketAddr::from((Ipv4Addr::LOCALHOST, 0)),
            cert: CertificateDer::from(Vec::new()),
        };
        let (port, cert) = line
            .trim()
            .split_once(' ')
            .ok_or_else(|| format!("ceiling peer said {line:?}"))?;
        peer.addr
            .set_port(port.parse().map_err(|_| format!("bad port {port:?}"))?);
        peer.cert = CertificateDer::from(hex::decode(cert).map_err(|e| e.to_string())?);
        if pin {
            crate::pin::connector(peer.child.id()).map_err(|e| format!("pin the peer: {e}"))?;
        }
        Ok(peer)
    }

    /// MB/s of `bytes` sent to the peer (`upload`) or from it, on one stream of a new
    /// connection (the handshake is not timed).
    pub fn measure(&self, upload: bool, bytes: u64) -> Result<f64, String> {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(self.cert.clone()).map_err(|e| e.to_string())?;
        let crypto = tls::client_config(roots, PostQuantum::Prefer).map_err(|e| e.to_string())?;
        let mut client = ClientConfig::new(Arc::new(crypto));
        client.transport_config(QuicSettings::default().transport_config(true));
        runtime()?.block_on(async {
            let mut side = Side::bind(None)?;
            let now = Instant::now();
            side.conn = Some(
                side.endpoint
                    .connect(now, client, self.addr, SERVER_NAME)
                    .map_err(|e| e.to_string())?,
            );
            let deadline = now + LIMIT;
            let mut stream = None;
            let mut start = now;
            let mut left = if upload { bytes } else { 0 };
            let mut head = Vec::new();
            let mut got = 0u64;
            loop {
                if Instant::now() > deadline {
                    return Err(format!("no result within {LIMIT:?}"));
                }
                side.turn().await?;
                let c = side.conn()?;
                while let Some(ev) = c.poll() {
                    match ev {
                        Event::Connected => {
                            let id = c.streams().open(Dir::Bi).ok_or("no stream credit")?;
                            let mut hdr = vec![if upload { b'U' } else { b'D' }];
                            hdr.extend_from_slice(&bytes.to_be_bytes());
                            c.send_stream(id).write(&hdr).map_err(|e| e.to_string())?;
                            start = Instant::now();
                            stream = Some(id);
                        }
                        Event::ConnectionLost { reason } => return Err(reason.to_string()),
                        _ => {}
                    }
                }
                let Some(id) = stream else { continue };
                if upload {
                    if left > 0 {
                        write_zeros(c, id, &mut left)?;
                        if left == 0 {
                            c.send_stream(id).finish().map_err(|e| e.to_string())?;
                        }
                    }
                    // The answer is one byte after the FIN: skip the header check.
                    head.resize(9, 0);
                    let mut answer = 0;
                    if read_all(c, id, &mut head, &mut answer)? || answer > 0 {
                        break;
                    }
                } else {
                    head.resize(9, 0);
                    if read_all(c, id, &mut head, &mut got)? {
                        if got != bytes {
                            return Err(format!("got {got} of {bytes} bytes"));
                        }
                        break;
                    }
                }
            }
            let secs = start.elapsed().as_secs_f64();
            side.conn()?
                .close(Instant::now(), 0u32.into(), bytes::Bytes::new());
            side.transmit(Instant::now());
            Ok(bytes as f64 / 1e6 / secs)
        })
    }
}
