//! Origins on loopback: HTTP, WebSocket echo, TCP echo (two kinds) and UDP echo.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::thread;
use std::time::Duration;

use tungstenite::Message;

use super::body::{byte, pattern, Digest, BIG, BLOCK, HUGE};

/// The origin: `/big` (16 MiB, fixed length), `/huge` (100 MiB of [`word`]s, fixed length),
/// `/sum` (digest of the request body, fixed or chunked), `/host` (the `Host` and
/// `X-Forwarded-Host` it was sent), `/headers` (every header line it was sent, names in lower
/// case), `/slow` (answers after 1 s), `/slowbig` (16 MiB after 1 s), `/cut` (a chunked body
/// whose connection closes after its first chunk, without the last chunk), anything else a
/// small body.
pub fn origin() -> u16 {
    origin_at("127.0.0.1")
}

/// [`origin`] listening on `ip`.
pub fn origin_at(ip: &str) -> u16 {
    let l = TcpListener::bind((ip, 0)).expect("bind");
    let port = l.local_addr().expect("addr").port();
    thread::spawn(move || {
        for s in l.incoming().flatten() {
            thread::spawn(move || serve(s));
        }
    });
    port
}

pub fn serve(s: TcpStream) {
    let mut r = BufReader::new(s.try_clone().expect("clone"));
    let mut w = s;
    loop {
        let mut line = String::new();
        if r.read_line(&mut line).unwrap_or(0) == 0 {
            return;
        }
        let path = line.split_whitespace().nth(1).unwrap_or("/").to_owned();
        let (mut len, mut chunked) = (0u64, false);
        let (mut host, mut forwarded_host) = (String::new(), String::new());
        let mut all = String::new();
        loop {
            let mut h = String::new();
            if r.read_line(&mut h).unwrap_or(0) == 0 {
                return;
            }
            let h = h.trim_end();
            if h.is_empty() {
                break;
            }
            let (name, value) = h.split_once(':').unwrap_or((h, ""));
            let (name, value) = (name.to_ascii_lowercase(), value.trim());
            all.push_str(&format!("{name}: {value}\n"));
            match name.as_str() {
                "content-length" => len = value.parse().unwrap_or(0),
                "transfer-encoding" => chunked |= value.to_ascii_lowercase().contains("chunked"),
                "host" => host = value.to_owned(),
                "x-forwarded-host" => forwarded_host = value.to_owned(),
                _ => {}
            }
        }
        // The body is digested as it streams in: uploads may be 100 MiB.
        let mut sum = Digest::new();
        let mut buf = vec![0u8; 64 * 1024];
        if chunked {
            loop {
                let mut size = String::new();
                if r.read_line(&mut size).unwrap_or(0) == 0 {
                    return;
                }
                let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
                let mut chunk = vec![0u8; n + 2];
                if r.read_exact(&mut chunk).is_err() {
                    return;
                }
                sum.update(&chunk[..n]);
                if n == 0 {
                    break;
                }
            }
        } else {
            while len > 0 {
                let n = buf.len().min(usize::try_from(len).unwrap_or(usize::MAX));
                if r.read_exact(&mut buf[..n]).is_err() {
                    return;
                }
                sum.update(&buf[..n]);
                len -= n as u64;
            }
        }
        let reply = |w: &mut TcpStream, b: &[u8]| {
            let head = format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n", b.len());
            w.write_all(head.as_bytes()).is_ok() && w.write_all(b).is_ok()
        };
        let ok = match path.as_str() {
            "/big" => {
                let b: Vec<u8> = (0..BIG).map(byte).collect();
                reply(&mut w, &b)
            }
            "/huge" => {
                let head = format!("HTTP/1.1 200 OK\r\nContent-Length: {HUGE}\r\n\r\n");
                w.write_all(head.as_bytes()).is_ok()
                    && (0..HUGE / BLOCK).all(|i| {
                        w.write_all(&pattern((i * BLOCK / 8) as u64, BLOCK / 8))
                            .is_ok()
                    })
            }
            "/sum" => reply(&mut w, sum.finish().as_bytes()),
            "/host" => reply(
                &mut w,
                format!("host={host};x-forwarded-host={forwarded_host}").as_bytes(),
            ),
            "/headers" => reply(&mut w, all.as_bytes()),
            "/slowbig" => {
                thread::sleep(Duration::from_secs(1));
                let b: Vec<u8> = (0..BIG).map(byte).collect();
                reply(&mut w, &b)
            }
            "/slow" => {
                thread::sleep(Duration::from_secs(1));
                reply(&mut w, b"slow done")
            }
            "/cut" => {
                let head = "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n";
                let _ = w.write_all(format!("{head}5\r\nfirst\r\n").as_bytes());
                thread::sleep(Duration::from_millis(200));
                return;
            }
            _ => reply(&mut w, b"hello from the origin"),
        };
        if !ok {
            return;
        }
    }
}

/// A WebSocket echo origin: echoes text and binary messages; the text `close-from-origin`
/// makes it start the closing handshake. How each connection ended goes to `ends`.
pub fn ws_origin(ends: std::sync::mpsc::Sender<String>) -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = l.local_addr().expect("addr").port();
    thread::spawn(move || {
        for s in l.incoming().flatten() {
            let ends = ends.clone();
            thread::spawn(move || {
                let end = match tungstenite::accept(s) {
                    Ok(mut ws) => loop {
                        match ws.read() {
                            Ok(Message::Text(t)) if t.as_str() == "close-from-origin" => {
                                if let Err(e) = ws.close(None) {
                                    break format!("close failed: {e}");
                                }
                            }
                            Ok(m @ (Message::Text(_) | Message::Binary(_))) => {
                                if let Err(e) = ws.send(m) {
                                    break format!("send failed: {e}");
                                }
                            }
                            // Pings, pongs and the peer's Close are answered by tungstenite.
                            Ok(_) => {}
                            Err(tungstenite::Error::ConnectionClosed) => break "clean".into(),
                            Err(e) => break format!("read failed: {e}"),
                        }
                    },
                    Err(e) => format!("handshake failed: {e}"),
                };
                let _ = ends.send(end);
            });
        }
    });
    port
}

/// A TCP echo origin: echoes as it reads; after the client's FIN it sends `<len:digest>` of
/// everything it got, then closes. That tail can only arrive if the half-close went through.
pub fn tcp_echo_origin() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = l.local_addr().expect("addr").port();
    thread::spawn(move || {
        for mut s in l.incoming().flatten() {
            thread::spawn(move || {
                let mut sum = Digest::new();
                let mut buf = vec![0u8; 16 * 1024];
                loop {
                    match s.read(&mut buf) {
                        Ok(0) => break,
                        Ok(n) => {
                            sum.update(&buf[..n]);
                            if s.write_all(&buf[..n]).is_err() {
                                return;
                            }
                        }
                        Err(_) => return,
                    }
                }
                let _ = s.write_all(format!("<{}>", sum.finish()).as_bytes());
            });
        }
    });
    port
}

/// A UDP echo origin on loopback.
pub fn udp_echo() -> SocketAddr {
    let s = UdpSocket::bind("127.0.0.1:0").expect("bind echo");
    let addr = s.local_addr().expect("addr");
    thread::spawn(move || {
        let mut buf = [0u8; 2048];
        while let Ok((n, from)) = s.recv_from(&mut buf) {
            let _ = s.send_to(&buf[..n], from);
        }
    });
    addr
}

/// A TCP echo origin on loopback.
pub fn tcp_echo() -> SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind echo");
    let addr = l.local_addr().expect("addr");
    tcp_echo_on(l);
    addr
}

/// Echoes every connection `l` accepts, on threads of its own.
pub fn tcp_echo_on(l: std::net::TcpListener) {
    thread::spawn(move || {
        for mut s in l.incoming().flatten() {
            thread::spawn(move || {
                let mut buf = [0u8; 4096];
                while let Ok(n) = s.read(&mut buf) {
                    if n == 0 || s.write_all(&buf[..n]).is_err() {
                        break;
                    }
                }
            });
        }
    });
}

/// A UDP origin that answers each packet first with one datagram too large for the tunnel
/// (`burrow_core::session::MAX_PAYLOAD` + 100 bytes: the connector drops it as
/// `read_too_large`), then with its echo. Returns its address and how many packets it got.
pub fn udp_oversized_then_echo() -> (SocketAddr, std::sync::Arc<std::sync::atomic::AtomicU64>) {
    use std::sync::atomic::{AtomicU64, Ordering};
    let s = UdpSocket::bind("127.0.0.1:0").expect("bind origin");
    let addr = s.local_addr().expect("addr");
    let got = std::sync::Arc::new(AtomicU64::new(0));
    let counted = got.clone();
    thread::spawn(move || {
        let big = vec![0x42u8; burrow_core::session::MAX_PAYLOAD + 100];
        let mut buf = [0u8; 2048];
        while let Ok((n, from)) = s.recv_from(&mut buf) {
            counted.fetch_add(1, Ordering::SeqCst);
            let _ = s.send_to(&big, from);
            let _ = s.send_to(&buf[..n], from);
        }
    });
    (addr, got)
}
