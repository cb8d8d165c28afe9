//! The TCP connections HTTP/2 links run over (`--protocol http2`, or `auto` after falling
//! back). TLS and HTTP/2 are the connector's (core's sans-IO machines): here a non-blocking
//! connect, ciphertext in and out, and TCP's own backpressure: a link is read only while
//! [`Connector::edge_wants_read`] says so, and holds one outstanding write.

use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use burrow_core::connector::{Connector, Input};
use burrow_core::datagram::LinkId;
use mio::net::TcpStream;
use mio::{Interest, Registry, Token};
use tracing::debug;

/// Bytes read per readiness round: one read, then the connector's outputs are drained
/// before the next (its TLS records are at most 16 KiB; two fit).
const READ_CHUNK: usize = 32 * 1024;

/// One link's connection.
struct EdgeTcp {
    stream: TcpStream,
    token: Token,
    /// The connect completed (and the connector heard of it).
    connected: bool,
    /// Ciphertext the socket did not take yet (the link's one outstanding write).
    unsent: Vec<u8>,
    /// Close once `unsent` is written.
    close: bool,
    /// The edge closed its side (reported once).
    eof: bool,
    /// Readable but not read: the link did not want bytes then, or the round ended.
    unread: bool,
}

/// Every HTTP/2 link's TCP connection.
pub struct EdgeLinks {
    links: HashMap<LinkId, EdgeTcp>,
    /// One read buffer for every link, allocated at the first read.
    buf: Vec<u8>,
}

/// What a readiness round left to do.
pub enum Round {
    /// Nothing until the next event.
    Done,
    /// Come back without waiting (bytes may be left to read).
    Again,
    /// The connection is gone; free its token.
    Gone(Token),
}

impl EdgeLinks {
    /// No links.
    pub fn new() -> Self {
        Self {
            links: HashMap::new(),
            buf: Vec::new(),
        }
    }

    /// Starts a non-blocking connect to `edge` (from `bind`, `--edge-bind-address`, when
    /// set); completion arrives as readiness on `token`.
    pub fn dial(
        &mut self,
        registry: &Registry,
        token: Token,
        link: LinkId,
        edge: SocketAddr,
        bind: Option<IpAddr>,
        keepalive: Duration,
    ) -> io::Result<()> {
        let mut stream = connect(edge, bind)?;
        // As Go's dialer, a socket that refuses keepalive still serves.
        if let Err(e) = burrow_os::tcp_keep_alive(&stream, keepalive) {
            debug!(%link, error = %e, "cannot set TCP keepalive on the edge connection");
        }
        registry.register(&mut stream, token, Interest::READABLE | Interest::WRITABLE)?;
        self.links.insert(
            link,
            EdgeTcp {
                stream,
                token,
                connected: false,
                unsent: Vec::new(),
                close: false,
                eof: false,
                unread: false,
            },
        );
        Ok(())
    }

    /// Writes `data` (all of it, now or when the socket drains); true when it is written
    /// already, so the connector hears [`Input::EdgeWritten`] at once. A failed write closes
    /// the connection: the token to free and the error for the connector.
    pub fn write(
        &mut self,
        registry: &Registry,
        link: LinkId,
        data: &[u8],
    ) -> Result<bool, (Token, io::Error)> {
        let Some(e) = self.links.get_mut(&link) else {
            // Gone already: the link learnt it from EdgeFailed.
            return Ok(false);
        };
        let n = match e.stream.write(data) {
            Ok(n) => n,
            Err(err) if err.kind() == io::ErrorKind::WouldBlock => 0,
            Err(err) => {
                debug!(%link, error = %err, "edge write failed");
                let token = e.token;
                self.remove(registry, link);
                return Err((token, err));
            }
        };
        if n == data.len() {
            return Ok(true);
        }
        e.unsent.extend_from_slice(&data[n..]);
        Ok(false)
    }

    /// Closes the link's connection once its outstanding write is out; the token to free if
    /// it is closed now.
    pub fn close(&mut self, registry: &Registry, link: LinkId) -> Option<Token> {
        let e = self.links.get_mut(&link)?;
        if e.unsent.is_empty() {
            let token = e.token;
            self.remove(registry, link);
            Some(token)
        } else {
            e.close = true;
            None
        }
    }

    fn remove(&mut self, registry: &Registry, link: LinkId) {
        if let Some(mut e) = self.links.remove(&link) {
            let _ = registry.deregister(&mut e.stream);
        }
        if self.links.is_empty() {
            // Idle over QUIC again: give the read buffer back.
            self.buf = Vec::new();
        }
    }

    /// Links holding unread bytes that the connector now wants: their tokens.
    pub fn wanted(&self, machine: &mut Connector) -> impl Iterator<Item = Token> + '_ {
        let wanted: Vec<Token> = self
            .links
            .iter()
            .filter(|(link, e)| e.unread && !e.eof && machine.edge_wants_read(**link))
            .map(|(_, e)| e.token)
            .collect();
        wanted.into_iter()
    }

    /// Does what `link`'s socket is ready for: finish the connect, write what is pending,
    /// read once if the connector wants bytes.
    pub fn ready(
        &mut self,
        now: Instant,
        registry: &Registry,
        machine: &mut Connector,
        link: LinkId,
    ) -> Round {
        let Some(e) = self.links.get_mut(&link) else {
            return Round::Done;
        };
        let token = e.token;
        if !e.connected {
            let failed = match e.stream.take_error() {
                Ok(Some(err)) | Err(err) => Some(err),
                Ok(None) => None,
            };
            if let Some(err) = failed {
                return self.fail(
                    now,
                    registry,
                    machine,
                    link,
                    &burrow_core::connector::dial_failure(&err),
                );
            }
            match e.stream.peer_addr() {
                Ok(_) => {}
                // Still connecting.
                Err(err) if err.kind() == io::ErrorKind::NotConnected => return Round::Done,
                Err(err) => {
                    return self.fail(
                        now,
                        registry,
                        machine,
                        link,
                        &burrow_core::connector::dial_failure(&err),
                    );
                }
            }
            // A link that gave up meanwhile (its handshake deadline) gets no socket.
            if !machine.has_edge_link(link) {
                self.remove(registry, link);
                return Round::Gone(token);
            }
            let local = match e
                .stream
                .set_nodelay(true)
                .and_then(|()| e.stream.local_addr())
            {
                Ok(a) => a.ip(),
                Err(err) => {
                    return self.fail(
                        now,
                        registry,
                        machine,
                        link,
                        &burrow_core::connector::dial_failure(&err),
                    );
                }
            };
            e.connected = true;
            e.unread = true;
            machine.handle_input(now, Input::EdgeConnected { link, local });
            // Its first write and read come at the next round, after the outputs.
            return Round::Again;
        }
        if !e.unsent.is_empty() {
            match e.stream.write(&e.unsent) {
                Ok(n) => {
                    e.unsent.drain(..n);
                    if e.unsent.is_empty() {
                        e.unsent = Vec::new();
                        let close = e.close;
                        machine.handle_input(now, Input::EdgeWritten { link });
                        if close {
                            self.remove(registry, link);
                            return Round::Gone(token);
                        }
                    }
                }
                Err(err) if err.kind() == io::ErrorKind::WouldBlock => {}
                Err(err) => return self.fail(now, registry, machine, link, &err.to_string()),
            }
        }
        let Some(e) = self.links.get_mut(&link) else {
            return Round::Done;
        };
        if e.eof {
            return Round::Done;
        }
        if !machine.edge_wants_read(link) {
            e.unread = true;
            return Round::Done;
        }
        if self.buf.is_empty() {
            self.buf = vec![0; READ_CHUNK];
        }
        match e.stream.read(&mut self.buf) {
            Ok(n) => {
                e.eof = n == 0;
                e.unread = n != 0;
                machine.handle_input(
                    now,
                    Input::EdgeReceived {
                        link,
                        data: &self.buf[..n],
                    },
                );
                if n == 0 {
                    Round::Done
                } else {
                    Round::Again
                }
            }
            Err(err) if err.kind() == io::ErrorKind::WouldBlock => {
                e.unread = false;
                Round::Done
            }
            Err(err) if err.kind() == io::ErrorKind::Interrupted => Round::Again,
            Err(err) => self.fail(now, registry, machine, link, &err.to_string()),
        }
    }

    fn fail(
        &mut self,
        now: Instant,
        registry: &Registry,
        machine: &mut Connector,
        link: LinkId,
        reason: &str,
    ) -> Round {
        let token = self.links.get(&link).map(|e| e.token);
        self.remove(registry, link);
        machine.handle_input(now, Input::EdgeFailed { link, reason });
        token.map_or(Round::Done, Round::Gone)
    }
}

/// A non-blocking TCP connect to `edge`, from `bind` when set.
fn connect(edge: SocketAddr, bind: Option<IpAddr>) -> io::Result<TcpStream> {
    let Some(ip) = bind else {
        return TcpStream::connect(edge);
    };
    let socket = socket2::Socket::new(
        socket2::Domain::for_address(edge),
        socket2::Type::STREAM,
        Some(socket2::Protocol::TCP),
    )?;
    socket.set_nonblocking(true)?;
    socket.bind(&SocketAddr::new(ip, 0).into())?;
    match socket.connect(&edge.into()) {
        Ok(()) => {}
        Err(e) if e.raw_os_error() == Some(libc_einprogress()) => {}
        Err(e) => return Err(e),
    }
    Ok(TcpStream::from_std(socket.into()))
}

/// `EINPROGRESS`: a non-blocking connect under way.
fn libc_einprogress() -> i32 {
    rustix::io::Errno::INPROGRESS.raw_os_error()
}

#[cfg(test)]
mod tests {
    use super::*;
    use burrow_core::connector::EDGE_TCP_KEEPALIVE;

    /// The edge connection carries cloudflared's keepalive: on, first probe and interval 15 s.
    #[test]
    fn edge_dial_sets_tcp_keepalive() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let edge = listener.local_addr().unwrap();
        let poll = mio::Poll::new().unwrap();
        let mut links = EdgeLinks::new();
        let link = LinkId(0);
        links
            .dial(
                poll.registry(),
                Token(1),
                link,
                edge,
                None,
                EDGE_TCP_KEEPALIVE,
            )
            .unwrap();
        let sock = socket2::SockRef::from(&links.links[&link].stream);
        assert!(sock.keepalive().unwrap());
        assert_eq!(sock.tcp_keepalive_time().unwrap(), Duration::from_secs(15));
        assert_eq!(
            sock.tcp_keepalive_interval().unwrap(),
            Duration::from_secs(15)
        );
    }
}
