//! The bench's clients. Each measurement takes only an address, so the same code runs against
//! the origin directly and through the tunnel.

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::os::fd::AsFd;
use std::sync::Arc;
use std::time::{Duration, Instant};

use burrow_tokio::mmsg::{self, RecvSlots};

use crate::http::Reader;
use crate::origin::{self, mode};

/// How long one socket operation may block before the measurement fails.
const IO_TIMEOUT: Duration = Duration::from_secs(30);

/// Median and 99th percentile of a set of round trips, in microseconds.
#[derive(Debug, Clone, Copy)]
pub struct Percentiles {
    /// 50th percentile.
    pub p50: f64,
    /// 99th percentile.
    pub p99: f64,
}

impl Percentiles {
    fn of(mut samples: Vec<Duration>) -> Result<Self, String> {
        if samples.is_empty() {
            return Err("no samples".into());
        }
        samples.sort_unstable();
        let at = |p: usize| samples[(samples.len() - 1) * p / 100].as_secs_f64() * 1e6;
        Ok(Self {
            p50: at(50),
            p99: at(99),
        })
    }
}

fn connect(addr: SocketAddr) -> Result<TcpStream, String> {
    let s = TcpStream::connect(addr).map_err(|e| format!("connect {addr}: {e}"))?;
    let _ = s.set_nodelay(true);
    s.set_read_timeout(Some(IO_TIMEOUT))
        .and_then(|()| s.set_write_timeout(Some(IO_TIMEOUT)))
        .map_err(|e| e.to_string())?;
    Ok(s)
}

/// Runs `f(i)` on `conns` threads at once; returns MB/s over the bytes they report.
fn parallel<F>(conns: usize, f: F) -> Result<f64, String>
where
    F: Fn(usize) -> Result<u64, String> + Sync,
{
    let start = Instant::now();
    let results: Vec<Result<u64, String>> = std::thread::scope(|s| {
        let f = &f;
        let handles: Vec<_> = (0..conns)
            .map(|i| named("client").spawn_scoped(s, move || f(i)))
            .collect();
        handles.into_iter().map(joined).collect()
    });
    let secs = start.elapsed().as_secs_f64();
    let mut total = 0;
    for r in results {
        total += r?;
    }
    Ok(total as f64 / secs / 1e6)
}

/// A thread builder with a name, so a profile tells the bench's clients from its origins.
pub fn named(name: &str) -> std::thread::Builder {
    std::thread::Builder::new().name(name.to_owned())
}

/// The result of a client thread, or why there is none.
fn joined<T>(
    h: std::io::Result<std::thread::ScopedJoinHandle<'_, Result<T, String>>>,
) -> Result<T, String> {
    h.map_err(|e| format!("start a client thread: {e}"))?
        .join()
        .unwrap_or_else(|_| Err("client thread panicked".into()))
}

/// `total` bytes split into `conns` parts, the first taking the remainder.
fn share(total: u64, conns: usize, i: usize) -> u64 {
    let conns = conns.max(1) as u64;
    total / conns + if i == 0 { total % conns } else { 0 }
}

/// One HTTP exchange on a keep-alive connection; returns the response body's length.
fn exchange(
    r: &mut Reader<TcpStream>,
    w: &mut TcpStream,
    head: &str,
    upload: u64,
) -> Result<(u16, u64), String> {
    w.write_all(head.as_bytes())
        .map_err(|e| format!("send request: {e}"))?;
    origin::write_pattern(w, upload).map_err(|e| format!("send body: {e}"))?;
    let h = r
        .head()
        .map_err(|e| format!("read response: {e}"))?
        .ok_or("connection closed before the response")?;
    let n = r
        .body(&h, h.close)
        .map_err(|e| format!("read response body: {e}"))?;
    Ok((h.status(), n))
}

fn http_conn(addr: SocketAddr) -> Result<(Reader<TcpStream>, TcpStream), String> {
    let s = connect(addr)?;
    let w = s.try_clone().map_err(|e| e.to_string())?;
    Ok((Reader::new(s), w))
}

/// HTTP download: `conns` concurrent GETs sharing `total` bytes; MB/s.
pub fn http_download(
    addr: SocketAddr,
    host: &str,
    total: u64,
    conns: usize,
) -> Result<f64, String> {
    parallel(conns, |i| {
        let n = share(total, conns, i);
        let (mut r, mut w) = http_conn(addr)?;
        let head = format!("GET /bytes/{n} HTTP/1.1\r\nHost: {host}\r\n\r\n");
        match exchange(&mut r, &mut w, &head, 0)? {
            (200, got) if got == n => Ok(n),
            (status, got) => Err(format!("GET /bytes/{n}: status {status}, {got} bytes")),
        }
    })
}

/// HTTP upload: `conns` concurrent POSTs sharing `total` bytes; MB/s.
pub fn http_upload(addr: SocketAddr, host: &str, total: u64, conns: usize) -> Result<f64, String> {
    parallel(conns, |i| {
        let n = share(total, conns, i);
        let (mut r, mut w) = http_conn(addr)?;
        let head = format!("POST /sink HTTP/1.1\r\nHost: {host}\r\nContent-Length: {n}\r\n\r\n");
        // The answer is the byte count the origin received.
        let expect = n.to_string().len() as u64;
        match exchange(&mut r, &mut w, &head, n)? {
            (200, got) if got == expect => Ok(n),
            (status, got) => Err(format!("POST /sink: status {status}, {got}-byte answer")),
        }
    })
}

/// HTTP round trips: sequential small GETs on one keep-alive connection (after a warm-up).
pub fn http_rtt(addr: SocketAddr, host: &str, samples: usize) -> Result<Percentiles, String> {
    let (mut r, mut w) = http_conn(addr)?;
    let head = format!("GET /small HTTP/1.1\r\nHost: {host}\r\n\r\n");
    let mut times = Vec::with_capacity(samples);
    for i in 0..samples + samples / 10 + 1 {
        let start = Instant::now();
        let (status, _) = exchange(&mut r, &mut w, &head, 0)?;
        if status != 200 {
            return Err(format!("GET /small: status {status}"));
        }
        if i > samples / 10 {
            times.push(start.elapsed());
        }
    }
    Percentiles::of(times)
}

/// TCP download: `conns` streams from the source origin sharing `total` bytes; MB/s.
pub fn tcp_download(addr: SocketAddr, total: u64, conns: usize) -> Result<f64, String> {
    parallel(conns, |i| {
        let n = share(total, conns, i);
        let mut s = connect(addr)?;
        let mut req = vec![mode::SOURCE];
        req.extend_from_slice(&n.to_be_bytes());
        s.write_all(&req).map_err(|e| format!("send: {e}"))?;
        let got = origin::drain(&mut s).map_err(|e| format!("receive: {e}"))?;
        if got != n {
            return Err(format!("TCP download: {got} of {n} bytes"));
        }
        Ok(n)
    })
}

/// TCP upload: `conns` streams into the sink origin sharing `total` bytes; MB/s.
pub fn tcp_upload(addr: SocketAddr, total: u64, conns: usize) -> Result<f64, String> {
    parallel(conns, |i| {
        let n = share(total, conns, i);
        let mut s = connect(addr)?;
        let mut req = vec![mode::SINK];
        req.extend_from_slice(&n.to_be_bytes());
        s.write_all(&req)
            .and_then(|()| origin::write_pattern(&mut s, n))
            .map_err(|e| format!("send: {e}"))?;
        let mut count = [0u8; 8];
        s.read_exact(&mut count)
            .map_err(|e| format!("read the sink's count: {e}"))?;
        match u64::from_be_bytes(count) {
            got if got == n => Ok(n),
            got => Err(format!("TCP upload: the sink got {got} of {n} bytes")),
        }
    })
}

/// TCP round trips: 64-byte ping-pong on one echo stream (after a warm-up).
pub fn tcp_rtt(addr: SocketAddr, samples: usize) -> Result<Percentiles, String> {
    let mut s = connect(addr)?;
    s.write_all(&[mode::ECHO])
        .map_err(|e| format!("send: {e}"))?;
    let ping = &origin::PATTERN[..64];
    let mut pong = [0u8; 64];
    let mut times = Vec::with_capacity(samples);
    for i in 0..samples + samples / 10 + 1 {
        let start = Instant::now();
        s.write_all(ping)
            .and_then(|()| s.read_exact(&mut pong))
            .map_err(|e| format!("ping-pong: {e}"))?;
        if pong != ping {
            return Err("echo differs".into());
        }
        if i > samples / 10 {
            times.push(start.elapsed());
        }
    }
    Percentiles::of(times)
}

/// Opens `n` echo streams and moves `bytes` through each in `msg`-byte round trips, every
/// stream's message out before any answer is read (a chatty WebSocket or SSH session, many at
/// once). Calls `live()` while every stream is still open and idle, then closes them.
pub fn chatty_streams<T>(
    addr: SocketAddr,
    n: usize,
    msg: usize,
    bytes: usize,
    live: impl FnOnce() -> T,
) -> Result<T, String> {
    let mut streams = Vec::with_capacity(n);
    for _ in 0..n {
        let mut s = connect(addr)?;
        s.write_all(&[mode::ECHO])
            .map_err(|e| format!("send: {e}"))?;
        streams.push(s);
    }
    let out = &origin::PATTERN[..msg];
    let mut back = vec![0u8; msg];
    for _ in 0..bytes / msg {
        for s in &mut streams {
            s.write_all(out).map_err(|e| format!("send: {e}"))?;
        }
        for s in &mut streams {
            s.read_exact(&mut back).map_err(|e| format!("echo: {e}"))?;
            if back != out {
                return Err("echo differs".into());
            }
        }
    }
    Ok(live())
}

fn udp_socket(addr: SocketAddr, timeout: Duration) -> Result<UdpSocket, String> {
    let s = UdpSocket::bind("127.0.0.1:0")
        .and_then(|s| s.connect(addr).map(|()| s))
        .and_then(|s| s.set_read_timeout(Some(timeout)).map(|()| s))
        .map_err(|e| format!("UDP socket to {addr}: {e}"))?;
    Ok(s)
}

/// Whether UDP to `addr` is echoed at all (within 10 s).
pub fn udp_probe(addr: SocketAddr) -> Result<(), String> {
    udp_hello(&udp_socket(addr, Duration::from_millis(50))?, 16)
}

/// Sends a probe until its echo comes back (a session may need its first packets to open).
fn udp_hello(s: &UdpSocket, size: usize) -> Result<(), String> {
    let mut buf = [0u8; 2048];
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(10) {
        s.send(&origin::PATTERN[..size])
            .map_err(|e| format!("UDP send: {e}"))?;
        let deadline = Instant::now() + Duration::from_millis(250);
        while Instant::now() < deadline {
            if s.recv(&mut buf).is_ok() {
                // Let stragglers of earlier probes arrive, then drop them.
                std::thread::sleep(Duration::from_millis(50));
                let _ = s.set_nonblocking(true);
                while s.recv(&mut buf).is_ok() {}
                let _ = s.set_nonblocking(false);
                return Ok(());
            }
        }
    }
    Err("no UDP echo within 10 s".into())
}

/// How long [`udp_pps`] waits for an echo before it counts what is outstanding as lost.
const QUIET: Duration = Duration::from_millis(20);

/// UDP packets per second echoed, `flows` sockets each keeping `window` packets of `size`
/// bytes in flight for `dur`. Returns (echoes per second, fraction lost, echoes).
pub fn udp_pps(
    addr: SocketAddr,
    dur: Duration,
    flows: usize,
    window: usize,
    size: usize,
) -> Result<(f64, f64, u64), String> {
    let size = size.clamp(1, 1400);
    let start = Instant::now();
    let results: Vec<Result<(u64, u64), String>> = std::thread::scope(|sc| {
        let handles: Vec<_> = (0..flows)
            .map(|_| {
                named("client-udp").spawn_scoped(sc, || {
                    let s = udp_socket(addr, Duration::from_millis(20))?;
                    udp_hello(&s, size)?;
                    s.set_nonblocking(true)
                        .map_err(|e| format!("UDP socket: {e}"))?;
                    // As the origin does: the echoes a read finds are answered as one
                    // segmented send, not a `send` each.
                    let mut max_segment = if mmsg::segmenting_supported(s.as_fd()) {
                        usize::MAX
                    } else {
                        0
                    };
                    // The edge's echoes come as segmented sends too: taken whole (UDP GRO),
                    // the kernel does not cut them back into datagrams on CPU 0. Every echo
                    // is `size` bytes, so a coalesced read of `n` bytes is `n / size` echoes.
                    let coalesced = mmsg::coalesce_reads(s.as_fd());
                    let mut slots = RecvSlots::new(if coalesced { 64 * 1024 } else { 2048 });
                    let packets = vec![(); window];
                    let payload = &origin::PATTERN[..size];
                    let (mut sent, mut got, mut out) = (0u64, 0u64, 0usize);
                    let end = Instant::now() + dur;
                    while Instant::now() < end {
                        if out < window {
                            let (n, e) = mmsg::send_many_adapting(
                                s.as_fd(),
                                &packets[out..],
                                &mut max_segment,
                                |()| (None, payload),
                            );
                            if let Some(e) = e.filter(|e| e.kind() != ErrorKind::WouldBlock) {
                                return Err(format!("UDP send: {e}"));
                            }
                            sent += n as u64;
                            out += n;
                        }
                        let ready = origin::readable(&s, Some(QUIET))
                            .map_err(|e| format!("UDP poll: {e}"))?;
                        match ready.then(|| mmsg::recv_many(s.as_fd(), &mut slots)) {
                            Some(Ok(_)) => {
                                let n: usize =
                                    slots.received().map(|(d, _)| d.len().div_ceil(size)).sum();
                                got += n as u64;
                                out = out.saturating_sub(n);
                            }
                            Some(Err(e)) if e.kind() == ErrorKind::WouldBlock => {}
                            // Whatever is outstanding after a quiet spell is lost.
                            _ => out = 0,
                        }
                    }
                    Ok((sent, got))
                })
            })
            .collect();
        handles.into_iter().map(joined).collect()
    });
    let secs = start.elapsed().as_secs_f64();
    let (mut sent, mut got) = (0, 0);
    for r in results {
        let (s, g) = r?;
        sent += s;
        got += g;
    }
    if got == 0 {
        return Err(format!("no echo of {sent} packets"));
    }
    Ok((
        got as f64 / secs,
        1.0 - got as f64 / sent.max(1) as f64,
        got,
    ))
}

/// UDP round trips: sequential echoes on one socket. Returns the percentiles and the lost
/// count (a lost probe is not a sample).
pub fn udp_rtt(
    addr: SocketAddr,
    samples: usize,
    size: usize,
) -> Result<(Percentiles, usize), String> {
    let size = size.clamp(1, 1400);
    let s = udp_socket(addr, Duration::from_millis(500))?;
    udp_hello(&s, size)?;
    let mut buf = [0u8; 2048];
    let mut times = Vec::with_capacity(samples);
    let mut lost = 0;
    for _ in 0..samples {
        let start = Instant::now();
        s.send(&origin::PATTERN[..size])
            .map_err(|e| format!("UDP send: {e}"))?;
        match s.recv(&mut buf) {
            Ok(_) => times.push(start.elapsed()),
            Err(_) => lost += 1,
        }
    }
    Ok((Percentiles::of(times)?, lost))
}

/// The longest [`udp_sessions`] spends opening sessions.
const SESSIONS_LIMIT: Duration = Duration::from_secs(60);

/// Opens `n` UDP sessions: `n` sockets, each sending one packet until it is echoed (3 tries, 3.25 s),
/// at most `concurrency` in flight. Calls `live(answered)` while every socket is still open,
/// then closes them. Returns sessions per second and how many were answered.
pub fn udp_sessions<T>(
    addr: SocketAddr,
    n: usize,
    concurrency: usize,
    live: impl FnOnce(usize) -> T,
) -> Result<(f64, usize, T), String> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("runtime: {e}"))?;
    rt.block_on(async move {
        let gate = Arc::new(tokio::sync::Semaphore::new(concurrency.max(1)));
        let start = Instant::now();
        // Sessions that cannot open must not stall the whole run at 3 s each.
        let deadline = tokio::time::Instant::now() + SESSIONS_LIMIT;
        let mut tasks = tokio::task::JoinSet::new();
        for i in 0..n {
            let gate = gate.clone();
            tasks.spawn(async move {
                let _permit = gate.acquire_owned().await.ok()?;
                if tokio::time::Instant::now() >= deadline {
                    return None;
                }
                let s = tokio::net::UdpSocket::bind("127.0.0.1:0").await.ok()?;
                s.connect(addr).await.ok()?;
                let ping = (i as u64).to_be_bytes();
                let mut buf = [0u8; 64];
                // A short first wait: a lost packet (a full socket buffer) costs little.
                for wait in [250, 1000, 2000] {
                    s.send(&ping).await.ok()?;
                    let answer =
                        tokio::time::timeout(Duration::from_millis(wait), s.recv(&mut buf));
                    if let Ok(Ok(8)) = answer.await {
                        return Some(s);
                    }
                }
                None
            });
        }
        let mut open = Vec::with_capacity(n);
        while let Some(r) = tasks.join_next().await {
            if let Ok(Some(s)) = r {
                open.push(s);
            }
        }
        let secs = start.elapsed().as_secs_f64();
        if open.is_empty() {
            return Err(format!("none of {n} sessions answered"));
        }
        let answered = open.len();
        let out = live(answered);
        drop(open);
        Ok((answered as f64 / secs, answered, out))
    })
}
