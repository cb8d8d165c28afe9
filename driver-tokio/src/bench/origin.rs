//! The bench's origins, in process on loopback: HTTP (bodies of any size, an upload sink),
//! TCP (echo, sink, source by first byte) and UDP echo. One thread per connection.

use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::os::fd::{AsFd, AsRawFd};
use std::time::Duration;

use burrow_tokio::mmsg::{self, RecvSlots};

use tracing::debug;

use crate::client::named;
use crate::http::Reader;

/// What every byte-sending path writes, repeated.
pub static PATTERN: [u8; 64 * 1024] = {
    let mut p = [0u8; 64 * 1024];
    let mut i = 0;
    while i < p.len() {
        p[i] = (i.wrapping_mul(31) >> 3) as u8;
        i += 1;
    }
    p
};

/// TCP origin modes, chosen by the first byte the client sends.
pub mod mode {
    /// Echo everything until end of stream.
    pub const ECHO: u8 = b'E';
    /// Read a u64 big-endian length, then up to that many bytes (or until end of stream), then
    /// answer the byte count read (u64 big-endian).
    pub const SINK: u8 = b'S';
    /// Read a u64 big-endian count, send that many bytes, close.
    pub const SOURCE: u8 = b'D';
}

/// Writes `n` bytes of [`PATTERN`].
pub fn write_pattern(w: &mut impl Write, mut n: u64) -> io::Result<()> {
    while n > 0 {
        let take = PATTERN.len().min(usize::try_from(n).unwrap_or(usize::MAX));
        w.write_all(&PATTERN[..take])?;
        n -= take as u64;
    }
    Ok(())
}

/// Reads until end of stream; returns the count.
pub fn drain(r: &mut impl Read) -> io::Result<u64> {
    drain_up_to(r, u64::MAX)
}

/// Reads and discards until EOF or `limit` bytes; returns how many were read.
pub fn drain_up_to(r: &mut impl Read, limit: u64) -> io::Result<u64> {
    let mut buf = vec![0u8; 64 * 1024];
    let mut total = 0;
    while total < limit {
        let want = buf
            .len()
            .min(usize::try_from(limit - total).unwrap_or(usize::MAX));
        match r.read(&mut buf[..want])? {
            0 => break,
            n => total += n as u64,
        }
    }
    Ok(total)
}

fn serve<F>(name: &'static str, l: TcpListener, f: F) -> io::Result<SocketAddr>
where
    F: Fn(TcpStream) -> io::Result<()> + Send + Sync + Copy + 'static,
{
    let addr = l.local_addr()?;
    named(name).spawn(move || {
        for s in l.incoming().flatten() {
            let _ = s.set_nodelay(true);
            let conn = named(name).spawn(move || {
                if let Err(e) = f(s) {
                    debug!(error = %e, "origin connection ended");
                }
            });
            if let Err(e) = conn {
                debug!(error = %e, "origin connection thread");
            }
        }
    })?;
    Ok(addr)
}

/// HTTP/1.1 origin: `GET /bytes/N` answers N bytes, `POST /sink` answers the body's length,
/// anything else a short body. Keep-alive unless the client says close.
pub fn http() -> io::Result<SocketAddr> {
    serve("origin-http", TcpListener::bind("127.0.0.1:0")?, |s| {
        let mut w = s.try_clone()?;
        let mut r = Reader::new(s);
        while let Some(head) = r.head()? {
            let got = r.body(&head, false)?;
            let path = head.first.split_whitespace().nth(1).unwrap_or("/");
            let close = if head.close {
                "Connection: close\r\n"
            } else {
                ""
            };
            if let Some(n) = path.strip_prefix("/bytes/") {
                let n: u64 = n.parse().unwrap_or(0);
                write!(w, "HTTP/1.1 200 OK\r\nContent-Length: {n}\r\n{close}\r\n")?;
                write_pattern(&mut w, n)?;
            } else {
                let body = if path == "/sink" {
                    got.to_string()
                } else {
                    "ok".to_owned()
                };
                let reply = format!(
                    "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n{close}\r\n{body}",
                    body.len()
                );
                w.write_all(reply.as_bytes())?;
            }
            if head.close {
                break;
            }
        }
        Ok(())
    })
}

/// TCP origin; see [`mode`].
pub fn tcp() -> io::Result<SocketAddr> {
    serve("origin-tcp", TcpListener::bind("127.0.0.1:0")?, |mut s| {
        let mut first = [0u8; 1];
        s.read_exact(&mut first)?;
        match first[0] {
            mode::ECHO => {
                let mut buf = vec![0u8; 64 * 1024];
                loop {
                    match s.read(&mut buf)? {
                        0 => break,
                        n => s.write_all(&buf[..n])?,
                    }
                }
            }
            // The length comes first, so the client need not half-close (cloudflared's TCP
            // proxy ends a flow at the first EOF).
            mode::SINK => {
                let mut n = [0u8; 8];
                s.read_exact(&mut n)?;
                let got = drain_up_to(&mut s, u64::from_be_bytes(n))?;
                s.write_all(&got.to_be_bytes())?;
            }
            mode::SOURCE => {
                let mut n = [0u8; 8];
                s.read_exact(&mut n)?;
                write_pattern(&mut s, u64::from_be_bytes(n))?;
            }
            _ => {}
        }
        s.shutdown(Shutdown::Write)
    })
}

/// UDP echo origin: every datagram goes back to its sender. One thread: two on the socket
/// took 8% more of CPU 0 under `--pin` for the same packet rate, contending for its lock.
pub fn udp() -> io::Result<SocketAddr> {
    let sock = UdpSocket::bind("127.0.0.1:0")?;
    sock.set_nonblocking(true)?;
    let addr = sock.local_addr()?;
    named("origin-udp").spawn(move || udp_echo(&sock))?;
    Ok(addr)
}

/// Echoes what `s` reads, a queue's worth per call (`recvmmsg`), each sender's run of
/// datagrams as one segmented send (UDP GSO): the bench's own kernel work per datagram shares
/// CPU 0 with the edge under `--pin`, and one `sendto` per echo was a third of that CPU in the
/// packet-rate part, so the figure measured the bench as much as the tunnel.
fn udp_echo(s: &UdpSocket) {
    let mut slots = RecvSlots::new(2048);
    let mut max_segment = if mmsg::segmenting_supported(s.as_fd()) {
        usize::MAX
    } else {
        0
    };
    loop {
        if let Err(e) = readable(s, None) {
            debug!(error = %e, "udp origin poll");
            continue;
        }
        match mmsg::recv_many(s.as_fd(), &mut slots) {
            Ok(_) => {
                let echoes: Vec<_> = slots.received().collect();
                // A full socket buffer drops the rest, as a busy origin would.
                let _ =
                    mmsg::send_many_adapting(s.as_fd(), &echoes, &mut max_segment, |e| (e.1, e.0));
            }
            // Readable, yet nothing queued (a datagram with a bad checksum is dropped late).
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) => debug!(error = %e, "udp origin recv"),
        }
    }
}

/// Waits until `s` has something to read, at most `timeout` (none: for ever); false if it
/// timed out.
pub fn readable(s: &UdpSocket, timeout: Option<Duration>) -> io::Result<bool> {
    let mut fd = libc::pollfd {
        fd: s.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    let ms = timeout.map_or(-1, |t| i32::try_from(t.as_millis()).unwrap_or(i32::MAX));
    // SAFETY: one valid pollfd, for the duration of the call.
    match unsafe { libc::poll(&mut fd, 1, ms) } {
        -1 => {
            let e = io::Error::last_os_error();
            match e.kind() {
                io::ErrorKind::Interrupted => Ok(false),
                _ => Err(e),
            }
        }
        0 => Ok(false),
        _ => Ok(true),
    }
}
