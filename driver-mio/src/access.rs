//! Access signing keys, fetched off the loop (the I/O half of `originRequest.access`): the
//! connector says which team's certs URL to GET and when (`Io::FetchAccessKeys`); this does one
//! blocking HTTPS GET on a short-lived thread and the answer goes back to the connector.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::os::fd::OwnedFd;
use std::sync::Arc;
use std::time::{Duration, Instant};

use burrow_core::ingress::access::{FETCH_TIMEOUT, MAX_KEY_SET as MAX_RESPONSE};
use burrow_core::tunnel::happy_eyeballs::{AttemptId, DialPlan, DialStep};
use mio::{Events, Interest, Poll, Token};

/// Debug builds only: fetch every team's keys from this loopback `http://` base instead
/// (`Host` still names the team), so tests can serve their own key sets, as burrow-tokio's.
/// Release builds do not read it, so it cannot turn off Access checks in production.
const TEST_CERTS_BASE: &str = "BURROW_TEST_ACCESS_CERTS_BASE";

/// GET `url` (https, or the debug-build test base): the body of a 200, or why not.
pub fn fetch(url: &str) -> Result<Vec<u8>, String> {
    let deadline = Instant::now() + FETCH_TIMEOUT;
    let rest = url
        .strip_prefix("https://")
        .ok_or_else(|| format!("{url} is not https"))?;
    let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    let path = if path.is_empty() { "/" } else { path };
    let host = authority
        .rsplit_once(':')
        .filter(|(_, p)| p.parse::<u16>().is_ok())
        .map_or(authority, |(h, _)| h);
    let request = format!(
        "GET {path} HTTP/1.0\r\nHost: {host}\r\nUser-Agent: burrow-mio/{}\r\nAccept: application/json\r\n\r\n",
        env!("CARGO_PKG_VERSION")
    );
    // HTTP/1.0: the answer is never chunked and ends when the server closes.
    let test_base = cfg!(debug_assertions)
        .then(|| std::env::var(TEST_CERTS_BASE).ok())
        .flatten();
    let response = match test_base {
        Some(base) => {
            let addr: SocketAddr = base
                .strip_prefix("http://")
                .and_then(|a| a.trim_end_matches('/').parse().ok())
                .filter(|a: &SocketAddr| a.ip().is_loopback())
                .ok_or_else(|| format!("{TEST_CERTS_BASE} must be a loopback http://IP:PORT"))?;
            tracing::info!(%url, %addr, "debug build: fetching Access keys from the test base");
            let mut s = connect(addr, deadline)?;
            s.write_all(request.as_bytes()).map_err(|e| e.to_string())?;
            read_all(&mut s, deadline)?
        }
        None => {
            let addrs: Vec<SocketAddr> = (host, port_of(authority))
                .to_socket_addrs()
                .map_err(|e| format!("lookup {host}: {e}"))?
                .collect();
            let tcp = race(&addrs, deadline).map_err(|e| format!("dial {host}: {e}"))?;
            timeouts(&tcp, deadline)?;
            let config = rustls::ClientConfig::builder_with_provider(Arc::new(
                rustls::crypto::aws_lc_rs::default_provider(),
            ))
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?
            .with_root_certificates(burrow_os::origin_tls::web_roots())
            .with_no_client_auth();
            let name = rustls::pki_types::ServerName::try_from(host.to_owned())
                .map_err(|e| e.to_string())?;
            let conn =
                rustls::ClientConnection::new(Arc::new(config), name).map_err(|e| e.to_string())?;
            let mut tls = rustls::StreamOwned::new(conn, tcp);
            tls.write_all(request.as_bytes())
                .map_err(|e| format!("TLS with {host}: {e}"))?;
            read_all(&mut tls, deadline)?
        }
    };
    body_of_200(&response)
}

fn port_of(authority: &str) -> u16 {
    authority
        .rsplit_once(':')
        .and_then(|(_, p)| p.parse().ok())
        .unwrap_or(443)
}

fn connect(addr: SocketAddr, deadline: Instant) -> Result<TcpStream, String> {
    let left = deadline.saturating_duration_since(Instant::now());
    let s = TcpStream::connect_timeout(&addr, left.max(Duration::from_millis(1)))
        .map_err(|e| format!("dial {addr}: {e}"))?;
    timeouts(&s, deadline)?;
    Ok(s)
}

/// Reads and writes on `s` give up at `deadline`.
fn timeouts(s: &TcpStream, deadline: Instant) -> Result<(), String> {
    let left = deadline.saturating_duration_since(Instant::now());
    let left = Some(left.max(Duration::from_millis(1)));
    s.set_read_timeout(left).map_err(|e| e.to_string())?;
    s.set_write_timeout(left).map_err(|e| e.to_string())
}

/// Connects to one of `addrs` as core's [`DialPlan`] orders it (the families raced, as Go's
/// dialer behind cloudflared's key fetch), on a poll of this thread's own, by `deadline`.
fn race(addrs: &[SocketAddr], deadline: Instant) -> io::Result<TcpStream> {
    let mut poll = Poll::new()?;
    let mut events = Events::with_capacity(8);
    let mut plan = DialPlan::new(Instant::now(), addrs, Some(deadline), true);
    let mut attempts: Vec<(AttemptId, mio::net::TcpStream)> = Vec::new();
    let mut first_error = None;
    loop {
        let now = Instant::now();
        match plan.poll(now) {
            DialStep::Connect(id, addr) => {
                let dialled = mio::net::TcpStream::connect(addr).and_then(|mut s| {
                    poll.registry()
                        .register(&mut s, Token(0), Interest::WRITABLE)?;
                    Ok(s)
                });
                match dialled {
                    Ok(s) => attempts.push((id, s)),
                    Err(e) => {
                        first_error.get_or_insert(e);
                        plan.failed(now, id);
                    }
                }
            }
            DialStep::Abandon(id) => {
                attempts.retain(|(a, _)| *a != id);
                first_error.get_or_insert_with(|| io::ErrorKind::TimedOut.into());
            }
            DialStep::Exhausted => {
                return Err(first_error
                    .unwrap_or_else(|| io::Error::new(io::ErrorKind::NotFound, "no address")))
            }
            DialStep::Wait(until) => {
                // The last attempt runs to the dial's deadline, which nobody else keeps here.
                let until = until.map_or(deadline, |t| t.min(deadline));
                if now >= deadline {
                    return Err(io::ErrorKind::TimedOut.into());
                }
                poll.poll(&mut events, Some(until - now))?;
                let mut i = 0;
                while i < attempts.len() {
                    let Some(outcome) = crate::origin::connect_outcome(&attempts[i].1) else {
                        i += 1;
                        continue;
                    };
                    let (id, s) = attempts.swap_remove(i);
                    match outcome {
                        Ok(()) => {
                            let s = TcpStream::from(OwnedFd::from(s));
                            s.set_nonblocking(false)?;
                            return Ok(s);
                        }
                        Err(e) => {
                            first_error.get_or_insert(e);
                            plan.failed(Instant::now(), id);
                        }
                    }
                }
            }
        }
    }
}

/// Reads until the server closes, at most [`MAX_RESPONSE`] bytes, by `deadline`.
fn read_all(r: &mut impl Read, deadline: Instant) -> Result<Vec<u8>, String> {
    let mut out = Vec::new();
    let mut buf = [0u8; 8192];
    loop {
        if Instant::now() > deadline {
            return Err("timeout".into());
        }
        match r.read(&mut buf) {
            Ok(0) => return Ok(out),
            Ok(n) => {
                if out.len() + n > MAX_RESPONSE {
                    return Err(format!("the key set is over {MAX_RESPONSE} bytes"));
                }
                out.extend_from_slice(&buf[..n]);
            }
            // A server that closes without close_notify still sent its whole HTTP/1.0 answer.
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(out),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(format!("reading the key set: {e}")),
        }
    }
}

/// The body of a `200` response; its `Content-Length`, when given, must match.
fn body_of_200(response: &[u8]) -> Result<Vec<u8>, String> {
    let mut headers = [httparse::EMPTY_HEADER; 64];
    let mut head = httparse::Response::new(&mut headers);
    let at = match head.parse(response) {
        Ok(httparse::Status::Complete(at)) => at,
        Ok(httparse::Status::Partial) => return Err("truncated response".into()),
        Err(e) => return Err(format!("bad response: {e}")),
    };
    if head.code != Some(200) {
        return Err(format!(
            "oidc: get keys failed: {}",
            head.code.unwrap_or_default()
        ));
    }
    let body = &response[at..];
    let length = head
        .headers
        .iter()
        .find(|h| h.name.eq_ignore_ascii_case("content-length"))
        .and_then(|h| {
            std::str::from_utf8(h.value)
                .ok()?
                .trim()
                .parse::<usize>()
                .ok()
        });
    match length {
        Some(n) if n != body.len() => Err(format!("body of {} bytes, {n} announced", body.len())),
        _ => Ok(body.to_vec()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The key fetch's dial races the families: `::1` dropping SYNs (a full accept queue of
    /// one) does not hold it, 127.0.0.1 answers.
    #[test]
    fn the_key_fetch_dial_is_answered_by_the_other_family() {
        use socket2::{Domain, Socket, Type};
        let v4 = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = v4.local_addr().unwrap().port();
        let v6: SocketAddr = format!("[::1]:{port}").parse().unwrap();
        let hole = Socket::new(Domain::IPV6, Type::STREAM, None).unwrap();
        hole.set_only_v6(true).unwrap();
        if hole.bind(&v6.into()).is_err() {
            eprintln!("skipped: no IPv6 loopback");
            return;
        }
        hole.listen(0).unwrap();
        let _filler = TcpStream::connect(v6).unwrap();
        let probe = Socket::new(Domain::IPV6, Type::STREAM, None).unwrap();
        if probe
            .connect_timeout(&v6.into(), Duration::from_millis(300))
            .is_ok()
        {
            eprintln!("skipped: a full accept queue does not drop SYNs here");
            return;
        }
        let addrs = [v6, v4.local_addr().unwrap()];
        let s = race(&addrs, Instant::now() + Duration::from_secs(10)).unwrap();
        assert_eq!(s.peer_addr().unwrap(), addrs[1]);
        // Blocking again, for the TLS that follows: a read waits out its timeout (a
        // non-blocking socket would answer at once).
        let mut one = [0u8; 1];
        s.set_read_timeout(Some(Duration::from_millis(50))).unwrap();
        let t = Instant::now();
        assert!((&s).read(&mut one).is_err());
        assert!(
            t.elapsed() >= Duration::from_millis(40),
            "{:?}",
            t.elapsed()
        );
    }

    #[test]
    fn a_key_fetch_dial_to_nothing_fails_with_the_first_error() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        drop(l);
        let e = race(&[addr], Instant::now() + Duration::from_secs(5)).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::ConnectionRefused);
    }

    #[test]
    fn a_200_gives_its_body_and_anything_else_an_error() {
        assert_eq!(
            body_of_200(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}").unwrap(),
            b"{}"
        );
        assert_eq!(
            body_of_200(b"HTTP/1.0 200 OK\r\n\r\n{\"keys\":[]}").unwrap(),
            b"{\"keys\":[]}"
        );
        assert!(body_of_200(b"HTTP/1.1 404 Not Found\r\n\r\n")
            .unwrap_err()
            .contains("404"));
        assert!(body_of_200(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n{}").is_err());
        assert!(body_of_200(b"HTTP/1.1 200 OK\r\n").is_err());
        assert!(body_of_200(b"\x00garbage").is_err());
    }

    #[test]
    fn only_https_urls_are_fetched() {
        assert!(fetch("http://team.example/cdn-cgi/access/certs")
            .unwrap_err()
            .contains("not https"));
        assert_eq!(port_of("team.example"), 443);
        assert_eq!(port_of("team.example:8443"), 8443);
    }
}
