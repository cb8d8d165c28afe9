//! Origin connections for the connector: dialling what the ingress rule names (TCP, unix
//! socket, TLS, or an in-process service for `http_status:N` and `hello_world`) and moving bytes
//! with one read in flight per flow, so burrow-core's backpressure decides the pace.
//!
//! Every flow is one task pair; it reports to the connector loop through [`FlowReport`]s and
//! takes commands through its [`FlowHandle`]. A plain TCP origin is written by the loop
//! itself while its socket takes the bytes; its task only waits for the socket when it does
//! not. Dials have no deadline here: the connector fails one that outlasts its rule's
//! `connectTimeout` or `tlsTimeout` and closes it, which drops the handle and aborts the task;
//! a SOCKS5 destination dial it aborts through [`FlowHandle::abort_dial`]. An origin whose TLS
//! handshake chose HTTP/2 (`http2Origin`) is spoken to through burrow-core's `Http2Origin`
//! bridge, which its task drives ([`pump_http2`]) through core's `Http2Flow` as burrow-mio's loop does.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::task::{ready, Context, Poll};

use burrow_core::datagram::LinkId;
use burrow_core::http2::origin::{BridgeReport, Http2Flow, SocketRead};
use burrow_core::ingress::{Origin, OriginRequest, Service};
use burrow_core::stream::proxy::FlowKind;
use burrow_core::stream::socks::Server;
use burrow_core::tunnel::data::FlowId;
use burrow_os::origin_tls::OriginTls;
use bytes::{Buf, Bytes, BytesMut};
use http_body_util::Full;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpStream, UnixStream};
use tokio::sync::{mpsc, Notify};
use tokio::task::JoinHandle;
use tracing::debug;

use burrow_os::chunk_buf::ChunkBuf;

/// Any origin byte stream.
pub trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// What a flow tells the connector loop.
#[derive(Debug)]
pub enum FlowReport {
    /// Connected; the TLS handshake begins (its deadline is the connector's).
    Handshaking,
    /// The SOCKS5 server in front of the flow began dialling its client's destination (its
    /// deadline is the connector's).
    Dialing,
    /// That dial ended, connected or failed.
    Dialed,
    /// The origin's TLS handshake chose HTTP/2 (`http2Origin`): burrow-core's bridge carries
    /// the flow (reported before [`FlowReport::Connected`]).
    Http2,
    /// Dialled (TLS included).
    Connected,
    /// Could not dial, or broke.
    Failed(String),
    /// Bytes read; the flow reads again after [`FlowHandle::read_more`].
    Data(Bytes),
    /// The origin closed its side.
    Finished,
    /// The last write completed.
    Written,
}

/// A flow report with its identity.
pub type Report = (LinkId, FlowId, FlowReport);

enum WriteCmd {
    Data(Bytes),
    Shutdown,
}

/// The connector loop's handle on one origin connection.
pub struct FlowHandle {
    writes: mpsc::UnboundedSender<WriteCmd>,
    permit: Arc<Notify>,
    /// Ends a SOCKS5 destination dial as timed out.
    abort: Arc<Notify>,
    /// A plain TCP origin's socket once dialled, which [`FlowHandle::write`] writes to itself.
    tcp: Arc<OnceLock<Arc<TcpStream>>>,
    task: JoinHandle<()>,
}

impl FlowHandle {
    /// Writes `data`: to a TCP origin straight away as far as its socket takes it, the rest
    /// (and any other origin's) by the flow's task, after which [`FlowReport::Written`]
    /// follows. True: all of it was written now, and no report follows. Handing every write
    /// to the task cost two cross-thread wake-ups per write (the command, then the report).
    pub fn write(&self, mut data: Bytes) -> bool {
        if let Some(s) = self.tcp.get() {
            match s.try_write(&data) {
                Ok(n) if n == data.len() => return true,
                Ok(n) => data.advance(n),
                // WouldBlock waits in the task; another error recurs there and is reported.
                Err(_) => {}
            }
        }
        let _ = self.writes.send(WriteCmd::Data(data));
        false
    }

    /// FIN toward the origin after queued writes.
    pub fn shutdown_write(&self) {
        let _ = self.writes.send(WriteCmd::Shutdown);
    }

    /// Lets the flow read its next chunk. Reads stay with the task: the loop reading a TCP
    /// origin itself saved the wake-ups but cut the connector's download by up to a third
    /// (pinned, 3 of 4 A/B runs), its transmits going out in smaller GSO batches (sendmsg per
    /// GiB 42k → 72k): reports arriving together let each poll of QUIC send more at once.
    pub fn read_more(&self) {
        self.permit.notify_one();
    }

    /// The connector gave up on the SOCKS5 destination dial ([`FlowReport::Dialing`]).
    pub fn abort_dial(&self) {
        self.abort.notify_one();
    }
}

/// What a flow's dial reports on its way, and where the connector's abort comes from.
#[derive(Clone)]
struct Progress {
    id: (LinkId, FlowId),
    reports: mpsc::UnboundedSender<Report>,
    abort: Arc<Notify>,
}

impl Progress {
    fn report(&self, r: FlowReport) {
        let _ = self.reports.send((self.id.0, self.id.1, r));
    }
}

impl Drop for FlowHandle {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// How the connector reaches origins: the one core's ingress rule resolved for each request.
#[derive(Clone)]
pub struct Dialer {
    /// Client configurations for HTTPS origins, shared by every flow's task.
    tls: Arc<Mutex<OriginTls>>,
    /// The runtime the flows' tasks run on.
    runtime: tokio::runtime::Handle,
    /// The management service's task, when served.
    management: Option<crate::management::ManagementHandle>,
}

impl Dialer {
    /// A dialer trusting `roots` (webpki and the system store) plus each rule's `caPool`,
    /// whose flows run on `runtime` (none: the current one; call inside a runtime).
    pub fn new(roots: Arc<rustls::RootCertStore>, runtime: Option<tokio::runtime::Handle>) -> Self {
        Self {
            tls: Arc::new(Mutex::new(OriginTls::new(Some(roots)))),
            runtime: runtime.unwrap_or_else(tokio::runtime::Handle::current),
            management: None,
        }
    }

    /// Requests to the management hostname go to `handle`'s task.
    pub fn with_management(mut self, handle: crate::management::ManagementHandle) -> Self {
        self.management = Some(handle);
        self
    }

    /// Starts flow `flow` of `link`: dials (`host` is the request's, for `matchSNItoHost`),
    /// then pumps bytes. Reports go to `reports`.
    pub fn open(
        &self,
        (link, flow): (LinkId, FlowId),
        kind: FlowKind,
        dest: String,
        host: Option<String>,
        origin: Option<Arc<Origin>>,
        reports: mpsc::UnboundedSender<Report>,
    ) -> FlowHandle {
        let (writes, write_rx) = mpsc::unbounded_channel();
        let permit = Arc::new(Notify::new());
        let abort = Arc::new(Notify::new());
        let tcp = Arc::new(OnceLock::new());
        let dialer = self.clone();
        let p = permit.clone();
        let direct = tcp.clone();
        let progress = Progress {
            id: (link, flow),
            reports: reports.clone(),
            abort: abort.clone(),
        };
        let task = self.runtime.spawn(async move {
            match dialer
                .dial(kind, &dest, host.as_deref(), origin.as_deref(), &progress)
                .await
            {
                Ok(dialled) => {
                    let (rd, wr): (Reader, Box<dyn AsyncWrite + Unpin + Send>) = match dialled {
                        Dialled::Tcp(s) => {
                            let s = Arc::new(s);
                            let _ = direct.set(s.clone());
                            (Reader::Tcp(s.clone()), Box::new(SharedTcp(s)))
                        }
                        Dialled::Other(io) => {
                            let (rd, wr) = tokio::io::split(io);
                            (Reader::Other(rd), Box::new(wr))
                        }
                        Dialled::Http2(io, tls) => {
                            let _ = reports.send((link, flow, FlowReport::Http2));
                            let _ = reports.send((link, flow, FlowReport::Connected));
                            // The rule's keep-alive timeout closes the idle connection, as
                            // Go's `IdleConnTimeout` in cloudflared.
                            let idle = origin.as_ref().map_or(std::time::Duration::ZERO, |o| {
                                o.origin_request.keep_alive_timeout
                            });
                            let h2 = Http2Flow::new(std::time::Instant::now(), *tls, idle);
                            let failed = pump_http2(io, h2, write_rx, &p, |r| {
                                let _ = reports.send((link, flow, r));
                            })
                            .await;
                            let _ = reports.send((link, flow, FlowReport::Failed(failed)));
                            return;
                        }
                    };
                    let _ = reports.send((link, flow, FlowReport::Connected));
                    pump(rd, wr, write_rx, p, move |r| {
                        let _ = reports.send((link, flow, r));
                    })
                    .await;
                }
                Err(e) => {
                    debug!(%link, %flow, %dest, error = %e, "origin dial failed");
                    let _ = reports.send((link, flow, FlowReport::Failed(e)));
                }
            }
        });
        FlowHandle {
            writes,
            permit,
            abort,
            tcp,
            task,
        }
    }

    async fn dial(
        &self,
        kind: FlowKind,
        dest: &str,
        host: Option<&str>,
        origin: Option<&Origin>,
        progress: &Progress,
    ) -> Result<Dialled, String> {
        let handshaking = || progress.report(FlowReport::Handshaking);
        if kind == FlowKind::Tcp {
            // Private-network routing: dest is ip:port.
            let s = TcpStream::connect(dest)
                .await
                .map_err(|e| format!("dial tcp {dest}: {e}"))?;
            let _ = s.set_nodelay(true);
            return Ok(Dialled::Tcp(s));
        }
        let Some(origin) = origin else {
            return Err(format!("no ingress rule resolved {dest}"));
        };
        let o = &origin.origin_request;
        let name = origin.tls_server_name(host).unwrap_or("localhost");
        let http2 = origin.offers_http2(kind);
        match &origin.service {
            Service::HttpStatus(code) => Ok(Dialled::Other(in_process(Responder::Status(*code)))),
            Service::HelloWorld => Ok(Dialled::Other(in_process(Responder::Hello))),
            Service::Management => match self.management.as_ref().and_then(|m| m.connect()) {
                Some(conn) => Ok(Dialled::Other(Box::new(conn))),
                None => Err("the management service is not running".to_owned()),
            },
            Service::Http { tls, host: h, port } => {
                let addr = format!("{h}:{port}");
                let s = connect_tcp(&addr, origin).await?;
                if *tls {
                    handshaking();
                    self.tls(s, name, o, http2).await
                } else {
                    Ok(Dialled::Tcp(s))
                }
            }
            Service::Unix { path, tls } => {
                let s = UnixStream::connect(path)
                    .await
                    .map_err(|e| format!("dial unix {path}: {e}"))?;
                if *tls {
                    handshaking();
                    self.tls(s, name, o, http2).await
                } else {
                    Ok(Dialled::Other(Box::new(s)))
                }
            }
            Service::SocksProxy => Ok(Dialled::Other(socks_bridge(
                Server::new(o.ip_rules.clone()),
                None,
                progress.clone(),
            ))),
            // Core gives each bastion request the TCP origin it names; never dialled as such.
            Service::Bastion => Err("bastion has no destination of its own".to_owned()),
            // TCP over WebSocket: core unwraps the frames; the origin is a plain socket.
            Service::Tcp { host, port } => {
                let Some(port) = port else {
                    return Err(format!("service {} has no port", origin.service));
                };
                let addr = if host.contains(':') {
                    format!("[{host}]:{port}")
                } else {
                    format!("{host}:{port}")
                };
                let tcp = connect_tcp(&addr, origin).await?;
                if origin.socks_over_tcp() {
                    let local = tcp
                        .local_addr()
                        .map_err(|e| format!("dial tcp {addr}: {e}"))?;
                    return Ok(Dialled::Other(socks_bridge(
                        Server::over_dialled(local),
                        Some(tcp),
                        progress.clone(),
                    )));
                }
                Ok(Dialled::Tcp(tcp))
            }
        }
    }

    /// TLS to the origin; with `http2` (core's [`Origin::offers_http2`]) `h2` is offered
    /// first, and if the origin picks it the TLS session goes to burrow-core's HTTP/2 bridge
    /// ([`pump_http2`]), as in burrow-mio.
    async fn tls<S: Io + 'static>(
        &self,
        s: S,
        host: &str,
        o: &OriginRequest,
        http2: bool,
    ) -> Result<Dialled, String> {
        let config = self
            .tls
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .config(o, http2)?;
        let name = host.to_owned();
        let name = rustls::pki_types::ServerName::try_from(name.clone())
            .map_err(|e| format!("bad origin server name {name}: {e}"))?;
        let c = tokio_rustls::TlsConnector::from(config);
        let s = c
            .connect(name, s)
            .await
            .map_err(|e| format!("TLS handshake with the origin failed: {e}"))?;
        if s.get_ref().1.alpn_protocol() == Some(b"h2") {
            // The session holds whatever it read past the handshake; the bridge reads it first.
            let (io, session) = s.into_inner();
            return Ok(Dialled::Http2(Box::new(io), Box::new(session)));
        }
        Ok(Dialled::Other(Box::new(s)))
    }
}

/// A dialled origin connection.
enum Dialled {
    /// Plain TCP, which the loop writes to directly ([`FlowHandle::write`]).
    Tcp(TcpStream),
    /// Anything else (TLS, unix socket, in-process), moved by the flow's task only.
    Other(Box<dyn Io>),
    /// An origin whose TLS handshake chose HTTP/2: the socket and its TLS session, for
    /// burrow-core's bridge.
    Http2(Box<dyn Io>, Box<rustls::ClientConnection>),
}

/// The writing side of a TCP origin connection the flow's task shares with
/// [`FlowHandle::write`] (tokio's readiness and `try_*` calls take `&TcpStream`).
struct SharedTcp(Arc<TcpStream>);

impl AsyncWrite for SharedTcp {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        loop {
            ready!(self.0.poll_write_ready(cx))?;
            match self.0.try_write(buf) {
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                r => return Poll::Ready(r),
            }
        }
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(socket2::SockRef::from(&*self.0).shutdown(std::net::Shutdown::Write))
    }
}

/// A SOCKS5 origin: an in-process SOCKS5 server on the flow's (WebSocket-unwrapped) bytes,
/// for a `socks-proxy` rule or a TCP origin with `proxyType: socks` (then `target` is the
/// origin connection, dialled already). Core's `socks::Server` decides every reply and whether
/// to connect; this task resolves, dials and then copies both ways. The dial's deadline is
/// the connector's: it is reported, and ends when the connector aborts it.
fn socks_bridge(
    mut socks: Server,
    mut target: Option<TcpStream>,
    progress: Progress,
) -> Box<dyn Io> {
    use burrow_core::stream::socks::{DialFailure, Step};
    let (client, mut server) = tokio::io::duplex(64 * 1024);
    tokio::spawn(async move {
        let mut buf = vec![0u8; 4096];
        let mut step = Step::Read;
        loop {
            step = match step {
                Step::Read => match server.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => socks.feed(&buf[..n]),
                },
                Step::Send(bytes, next) => {
                    if server.write_all(&bytes).await.is_err() {
                        return;
                    }
                    *next
                }
                Step::Resolve(name) => {
                    let ips: Vec<_> = tokio::net::lookup_host((name.as_str(), 0))
                        .await
                        .map(|a| a.map(|a| a.ip()).collect())
                        .unwrap_or_default();
                    socks.resolved(&ips)
                }
                Step::Dial(addr) => {
                    progress.report(FlowReport::Dialing);
                    let dialled = tokio::select! {
                        r = TcpStream::connect(addr) => r,
                        () = progress.abort.notified() => Err(std::io::ErrorKind::TimedOut.into()),
                    };
                    progress.report(FlowReport::Dialed);
                    match dialled.and_then(|t| t.local_addr().map(|l| (t, l))) {
                        Ok((tcp, local)) => {
                            target = Some(tcp);
                            socks.connected(local)
                        }
                        Err(e) => socks.dial_failed(DialFailure::of(e.kind())),
                    }
                }
                Step::Pipe(rest) => {
                    let Some(mut tcp) = target.take() else {
                        return;
                    };
                    let _ = tcp.set_nodelay(true);
                    if tcp.write_all(&rest).await.is_ok() {
                        let _ = tokio::io::copy_bidirectional(&mut server, &mut tcp).await;
                    }
                    return;
                }
                Step::Close(e) => {
                    debug!(error = %e, "SOCKS stream ended");
                    return;
                }
            };
        }
    });
    Box::new(client)
}

async fn connect_tcp(addr: &str, origin: &Origin) -> Result<TcpStream, String> {
    let o = &origin.origin_request;
    let s = crate::dial::dial(addr, o.connect_timeout, origin.races_families())
        .await
        .map_err(|e| format!("dial tcp {addr}: {e}"))?;
    let _ = s.set_nodelay(true);
    if let Err(e) = burrow_os::tcp_keep_alive(&s, o.tcp_keep_alive) {
        debug!(%addr, error = %e, "cannot set TCP keep-alive on the origin connection");
    }
    Ok(s)
}

/// The reading side of an origin connection.
enum Reader {
    Tcp(Arc<TcpStream>),
    Other(tokio::io::ReadHalf<Box<dyn Io>>),
}

impl Reader {
    /// Appends what one read returns to `buf` (0: end of stream).
    async fn read_buf(&mut self, buf: &mut BytesMut) -> std::io::Result<usize> {
        match self {
            Self::Tcp(s) => loop {
                s.readable().await?;
                match s.try_read_buf(buf) {
                    // Readiness was stale; it is cleared, so the next wait is a real one.
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                    r => return r,
                }
            },
            Self::Other(r) => r.read_buf(buf).await,
        }
    }
}

/// Moves bytes: a writer half taking commands, a reader half reading one chunk per permit.
async fn pump(
    mut rd: Reader,
    mut wr: Box<dyn AsyncWrite + Unpin + Send>,
    mut writes: mpsc::UnboundedReceiver<WriteCmd>,
    permit: Arc<Notify>,
    report: impl Fn(FlowReport) + Send + Sync + 'static,
) {
    let report = Arc::new(report);
    let r2 = report.clone();
    let writer = async move {
        while let Some(cmd) = writes.recv().await {
            match cmd {
                WriteCmd::Data(b) => {
                    if let Err(e) = wr.write_all(&b).await {
                        r2(FlowReport::Failed(format!("write to origin: {e}")));
                        return;
                    }
                    r2(FlowReport::Written);
                }
                WriteCmd::Shutdown => {
                    let _ = wr.shutdown().await;
                }
            }
        }
        // The loop dropped us: keep the read half going until aborted.
        std::future::pending::<()>().await;
    };
    let reader = async move {
        // Each read is split off as it is (no copy) and handed on; core passes it to QUIC by
        // reference.
        let mut buf = ChunkBuf::default();
        loop {
            match rd.read_buf(buf.room()).await.map(|n| buf.take(n)) {
                Ok(None) => {
                    report(FlowReport::Finished);
                    break;
                }
                Ok(Some(chunk)) => {
                    report(FlowReport::Data(chunk));
                    permit.notified().await;
                }
                Err(e) => {
                    report(FlowReport::Failed(format!("read from origin: {e}")));
                    break;
                }
            }
        }
        std::future::pending::<()>().await;
    };
    tokio::join!(writer, reader);
}

/// Ciphertext read per socket read of an HTTP/2 origin's flow.
const H2_IO: usize = 32 * 1024;

/// An HTTP/2 origin's flow (`http2Origin`): burrow-core's [`Http2Flow`] (the one burrow-mio
/// runs) decides the order of everything; this only moves the connector's commands and
/// permits in, ciphertext both ways as far as the socket goes, and wakes at its deadline. The
/// socket is read whenever the flow asks, not per permit: HTTP/2 carries its own control
/// frames, and its windows (credit returned only as the connector reads) bound what the
/// origin sends ahead. Runs until the flow fails; returns why.
async fn pump_http2(
    mut io: Box<dyn Io>,
    mut flow: Http2Flow,
    mut writes: mpsc::UnboundedReceiver<WriteCmd>,
    permit: &Notify,
    report: impl Fn(FlowReport),
) -> String {
    let notified = permit.notified();
    tokio::pin!(notified);
    let timer = tokio::time::sleep_until(tokio::time::Instant::now());
    tokio::pin!(timer);
    let mut inbound = vec![0u8; H2_IO];
    let mut report = |r: BridgeReport| {
        report(match r {
            BridgeReport::Written => FlowReport::Written,
            BridgeReport::Data(b) => FlowReport::Data(b),
            BridgeReport::Finished => FlowReport::Finished,
        })
    };
    std::future::poll_fn(|cx| loop {
        let now = std::time::Instant::now();
        let mut moved = false;
        // The connector's commands in order: the next one once the last write is taken.
        if flow.takes_command() {
            match writes.poll_recv(cx) {
                Poll::Ready(Some(WriteCmd::Data(b))) => {
                    flow.write(b);
                    moved = true;
                }
                Poll::Ready(Some(WriteCmd::Shutdown)) => {
                    flow.shutdown();
                    moved = true;
                }
                // The loop dropped the flow: the task is aborted next.
                Poll::Ready(None) | Poll::Pending => {}
            }
        }
        if !flow.has_permit() && notified.as_mut().poll(cx).is_ready() {
            notified.set(permit.notified());
            flow.permit();
            moved = true;
        }
        let mut read = SocketRead::Nothing;
        if flow.wants_read() {
            let mut buf = ReadBuf::new(&mut inbound);
            match Pin::new(&mut io).poll_read(cx, &mut buf) {
                Poll::Ready(Ok(())) if buf.filled().is_empty() => read = SocketRead::Closed,
                Poll::Ready(Ok(())) => {
                    let n = buf.filled().len();
                    read = SocketRead::Data(&inbound[..n]);
                }
                Poll::Ready(Err(e)) => return Poll::Ready(format!("read from origin: {e}")),
                Poll::Pending => {}
            }
        }
        match flow.step(now, read, &mut report) {
            Ok(m) => moved |= m,
            Err(e) => return Poll::Ready(e.to_string()),
        }
        while !flow.to_send().is_empty() {
            match Pin::new(&mut io).poll_write(cx, flow.to_send()) {
                Poll::Ready(Ok(0)) => {
                    return Poll::Ready("write to origin: wrote zero bytes".to_owned())
                }
                Poll::Ready(Ok(n)) => {
                    flow.sent(n);
                    moved = true;
                }
                Poll::Ready(Err(e)) => return Poll::Ready(format!("write to origin: {e}")),
                Poll::Pending => break,
            }
        }
        if let Some(at) = flow.poll_timeout() {
            let at = tokio::time::Instant::from_std(at);
            if timer.deadline() != at {
                timer.as_mut().reset(at);
            }
            moved |= timer.as_mut().poll(cx).is_ready();
        }
        if !moved {
            return Poll::Pending;
        }
    })
    .await
}

/// In-process origins.
#[derive(Clone, Copy)]
enum Responder {
    Status(u16),
    Hello,
}

/// An in-memory connection to an in-process HTTP/1.1 server (hyper).
fn in_process(r: Responder) -> Box<dyn Io> {
    let (client, server) = tokio::io::duplex(64 * 1024);
    tokio::spawn(async move {
        let svc = service_fn(
            move |req: hyper::Request<hyper::body::Incoming>| async move {
                let resp = match r {
                    Responder::Status(code) => {
                        let status =
                            http::StatusCode::from_u16(code).unwrap_or(http::StatusCode::OK);
                        let mut resp = hyper::Response::new(Full::new(Bytes::new()));
                        *resp.status_mut() = status;
                        resp
                    }
                    Responder::Hello => {
                        // Drain any body so the connection stays usable.
                        let _ = http_body_util::BodyExt::collect(req.into_body()).await;
                        let mut resp = hyper::Response::new(Full::new(Bytes::from_static(
                            burrow_core::ingress::HELLO_PAGE.as_bytes(),
                        )));
                        resp.headers_mut().insert(
                            http::header::CONTENT_TYPE,
                            http::HeaderValue::from_static("text/html; charset=utf-8"),
                        );
                        resp
                    }
                };
                Ok::<_, std::convert::Infallible>(resp)
            },
        );
        let _ = hyper::server::conn::http1::Builder::new()
            .serve_connection(TokioIo::new(server), svc)
            .await;
    });
    Box::new(client)
}
