//! The SOCKS5 server (RFC 1928) a `socks-proxy` rule runs over each eyeball WebSocket, as
//! cloudflared's `socks` package serves it: no authentication, CONNECT only (BIND and UDP
//! ASSOCIATE are answered "command not supported"), every destination checked against the
//! rule's `ipRules` first (no rule matching, or no rules at all: refused, as cloudflared's
//! policy with `defaultAllow` false). [`Server`] is sans-IO: the driver resolves names, dials,
//! and then copies bytes both ways.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use thiserror::Error;

use crate::ingress::IpRule;

const VERSION: u8 = 5;
const NO_AUTH: u8 = 0;
const NO_ACCEPTABLE: u8 = 0xff;
const CONNECT: u8 = 1;
const ATYP_V4: u8 = 1;
const ATYP_DOMAIN: u8 = 3;
const ATYP_V6: u8 = 4;

/// Reply codes (RFC 1928 6).
pub mod reply {
    /// Succeeded.
    pub const SUCCESS: u8 = 0;
    /// Connection not allowed by ruleset.
    pub const RULE_FAILURE: u8 = 2;
    /// Network unreachable.
    pub const NETWORK_UNREACHABLE: u8 = 3;
    /// Host unreachable.
    pub const HOST_UNREACHABLE: u8 = 4;
    /// Connection refused.
    pub const CONNECTION_REFUSED: u8 = 5;
    /// Command not supported.
    pub const COMMAND_NOT_SUPPORTED: u8 = 7;
}

/// Why a SOCKS5 exchange ended without a connection.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum SocksError {
    /// Not SOCKS version 5.
    #[error("Unsupported SOCKS version: {0}")]
    Version(u8),
    /// The client offers no method but "no authentication".
    #[error("unknown authentication type")]
    NoAcceptableMethod,
    /// An address type other than IPv4, domain name or IPv6.
    #[error("Unrecognized address type")]
    AddressType(u8),
    /// BIND, UDP ASSOCIATE or an unknown command.
    #[error("Unsupported command: {0}")]
    Command(u8),
    /// The destination's name did not resolve.
    #[error("unable to resolve host to confirm access")]
    Unresolved,
    /// No `ipRules` rule allows the destination.
    #[error("Connect to {0} denied")]
    Denied(String),
    /// The destination could not be dialled.
    #[error("Connect to {0} failed")]
    DialFailed(String),
    /// A call that does not fit the exchange's state.
    #[error("SOCKS exchange used out of order")]
    OutOfOrder,
}

/// A destination as the client names it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Host {
    /// An address.
    Ip(IpAddr),
    /// A domain name (at most 255 bytes, any bytes the client sent, lossily as UTF-8).
    Domain(String),
}

/// A decoded request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// CONNECT (1), BIND (2), UDP ASSOCIATE (3) or anything else.
    pub command: u8,
    /// Destination host.
    pub host: Host,
    /// Destination port.
    pub port: u16,
}

/// The methods of a greeting (`VER NMETHODS METHODS`): `Ok(None)` until it is whole.
pub fn decode_greeting(buf: &[u8]) -> Result<Option<(&[u8], usize)>, SocksError> {
    let Some(&version) = buf.first() else {
        return Ok(None);
    };
    if version != VERSION {
        return Err(SocksError::Version(version));
    }
    let Some(&n) = buf.get(1) else {
        return Ok(None);
    };
    let end = 2 + usize::from(n);
    Ok(buf.get(2..end).map(|m| (m, end)))
}

/// A request (`VER CMD RSV ATYP DST.ADDR DST.PORT`): `Ok(None)` until it is whole. `RSV` is not
/// checked, as cloudflared's socks package does not check it.
pub fn decode_request(buf: &[u8]) -> Result<Option<(Request, usize)>, SocksError> {
    let Some(head) = buf.get(..4) else {
        if let Some(&v) = buf.first().filter(|&&v| v != VERSION) {
            return Err(SocksError::Version(v));
        }
        return Ok(None);
    };
    if head[0] != VERSION {
        return Err(SocksError::Version(head[0]));
    }
    let (host, at) = match head[3] {
        ATYP_V4 => match buf.get(4..8) {
            Some(a) => (
                Host::Ip(IpAddr::from(<[u8; 4]>::try_from(a).unwrap_or_default())),
                8,
            ),
            None => return Ok(None),
        },
        ATYP_V6 => match buf.get(4..20) {
            Some(a) => (
                Host::Ip(IpAddr::from(<[u8; 16]>::try_from(a).unwrap_or_default())),
                20,
            ),
            None => return Ok(None),
        },
        ATYP_DOMAIN => {
            let Some(&len) = buf.get(4) else {
                return Ok(None);
            };
            let end = 5 + usize::from(len);
            match buf.get(5..end) {
                Some(name) => (
                    Host::Domain(String::from_utf8_lossy(name).into_owned()),
                    end,
                ),
                None => return Ok(None),
            }
        }
        other => return Err(SocksError::AddressType(other)),
    };
    let Some(port) = buf.get(at..at + 2) else {
        return Ok(None);
    };
    Ok(Some((
        Request {
            command: head[1],
            host,
            port: u16::from_be_bytes([port[0], port[1]]),
        },
        at + 2,
    )))
}

/// A request's bytes (what a client sends): the inverse of [`decode_request`]. A domain
/// longer than 255 bytes is cut to 255.
pub fn encode_request(r: &Request) -> Vec<u8> {
    let mut out = vec![VERSION, r.command, 0];
    push_addr(&mut out, &r.host);
    out.extend_from_slice(&r.port.to_be_bytes());
    out
}

fn push_addr(out: &mut Vec<u8>, host: &Host) {
    match host {
        Host::Ip(IpAddr::V4(a)) => {
            out.push(ATYP_V4);
            out.extend_from_slice(&a.octets());
        }
        Host::Ip(IpAddr::V6(a)) => {
            out.push(ATYP_V6);
            out.extend_from_slice(&a.octets());
        }
        Host::Domain(d) => {
            let d = &d.as_bytes()[..d.len().min(255)];
            out.push(ATYP_DOMAIN);
            out.push(d.len() as u8);
            out.extend_from_slice(d);
        }
    }
}

/// A reply (`VER REP RSV ATYP BND.ADDR BND.PORT`); no address is 0.0.0.0:0, as cloudflared.
pub fn encode_reply(code: u8, bound: Option<(&Host, u16)>) -> Vec<u8> {
    let mut out = vec![VERSION, code, 0];
    let unspecified = Host::Ip(IpAddr::V4(Ipv4Addr::UNSPECIFIED));
    let (host, port) = bound.unwrap_or((&unspecified, 0));
    push_addr(&mut out, host);
    out.extend_from_slice(&port.to_be_bytes());
    out
}

/// Whether `rules` let a connection to `ip:port` through: the first rule whose prefix holds
/// `ip` and whose ports (none: all) hold `port` decides; otherwise refused.
pub fn allowed(rules: &[IpRule], ip: IpAddr, port: u16) -> bool {
    rules
        .iter()
        .find(|r| r.contains(ip) && (r.ports.is_empty() || r.ports.contains(&port)))
        .is_some_and(|r| r.allow)
}

/// How a dial failed, for the reply code (cloudflared reads it from the error's text).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DialFailure {
    /// Connection refused.
    Refused,
    /// Network unreachable.
    NetworkUnreachable,
    /// Anything else (host unreachable).
    Other,
}

impl DialFailure {
    /// The failure an OS error of `kind` stands for.
    pub fn of(kind: std::io::ErrorKind) -> Self {
        match kind {
            std::io::ErrorKind::ConnectionRefused => Self::Refused,
            std::io::ErrorKind::NetworkUnreachable => Self::NetworkUnreachable,
            _ => Self::Other,
        }
    }
}

/// What the driver must do next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// Nothing until more bytes come.
    Read,
    /// Send these bytes to the client, then take the boxed step.
    Send(Vec<u8>, Box<Step>),
    /// Resolve this name; answer [`Server::resolved`].
    Resolve(String),
    /// Dial this address; answer [`Server::connected`] or [`Server::dial_failed`].
    Dial(SocketAddr),
    /// Connected: send nothing more of our own; these bytes (sent after the request) go to
    /// the destination first, then copy both ways.
    Pipe(Vec<u8>),
    /// End the exchange (after any bytes sent).
    Close(SocksError),
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum State {
    Greeting,
    Request,
    Resolving(Request),
    Dialling(Request),
    Done,
}

/// One client's SOCKS5 exchange.
#[derive(Debug)]
pub struct Server {
    rules: Vec<IpRule>,
    /// The local address of a connection dialled before the exchange ([`Server::over_dialled`]).
    dialled: Option<SocketAddr>,
    state: State,
    buf: Vec<u8>,
}

impl Server {
    /// An exchange checked against `rules` (the rule's `ipRules`).
    pub fn new(rules: Vec<IpRule>) -> Self {
        Self {
            rules,
            dialled: None,
            state: State::Greeting,
            buf: Vec::new(),
        }
    }

    /// An exchange over a connection the driver already dialled from `local` (cloudflared's
    /// `proxyType: socks`, its `ConnDialer`): a CONNECT to any destination is answered success
    /// from `local` and piped to that connection, with no name resolved and no rule checked;
    /// BIND and UDP ASSOCIATE are refused as by [`Server::new`].
    pub fn over_dialled(local: SocketAddr) -> Self {
        Self {
            dialled: Some(local),
            ..Self::new(Vec::new())
        }
    }

    /// Bytes from the client. What is buffered is bounded by the driver's reads: a greeting
    /// and a request are at most 257 and 262 bytes, so a longer buffer always decodes or
    /// fails, and the driver reads nothing while a name resolves or a dial runs.
    pub fn feed(&mut self, data: &[u8]) -> Step {
        self.buf.extend_from_slice(data);
        self.advance()
    }

    /// The next step from what has been received.
    pub fn advance(&mut self) -> Step {
        match &self.state {
            State::Greeting => match decode_greeting(&self.buf) {
                Ok(None) => Step::Read,
                Err(e) => self.close(e),
                Ok(Some((methods, used))) => {
                    if !methods.contains(&NO_AUTH) {
                        self.state = State::Done;
                        return Step::Send(
                            vec![VERSION, NO_ACCEPTABLE],
                            Box::new(Step::Close(SocksError::NoAcceptableMethod)),
                        );
                    }
                    self.buf.drain(..used);
                    self.state = State::Request;
                    // The request may have come with the greeting.
                    Step::Send(vec![VERSION, NO_AUTH], Box::new(self.advance()))
                }
            },
            State::Request => match decode_request(&self.buf) {
                Ok(None) => Step::Read,
                Err(e) => self.close(e),
                Ok(Some((req, used))) => {
                    self.buf.drain(..used);
                    if req.command != CONNECT {
                        self.state = State::Done;
                        return Step::Send(
                            encode_reply(reply::COMMAND_NOT_SUPPORTED, None),
                            Box::new(Step::Close(SocksError::Command(req.command))),
                        );
                    }
                    if let Some(local) = self.dialled {
                        self.state = State::Dialling(req);
                        return self.connected(local);
                    }
                    match req.host.clone() {
                        Host::Ip(ip) => self.check(req, ip),
                        Host::Domain(name) => {
                            self.state = State::Resolving(req);
                            Step::Resolve(name)
                        }
                    }
                }
            },
            State::Resolving(_) | State::Dialling(_) => Step::Read,
            State::Done => Step::Close(SocksError::OutOfOrder),
        }
    }

    /// The answer to [`Step::Resolve`]: the name's addresses in the resolver's order (none:
    /// it did not resolve). The first IPv4 one is checked and dialled, else the first, as
    /// cloudflared's `net.ResolveIPAddr("ip", name)` picks it.
    pub fn resolved(&mut self, ips: &[IpAddr]) -> Step {
        let State::Resolving(req) = std::mem::replace(&mut self.state, State::Done) else {
            return Step::Close(SocksError::OutOfOrder);
        };
        match ips.iter().find(|ip| ip.is_ipv4()).or(ips.first()).copied() {
            Some(ip) => self.check(req, ip),
            None => Step::Send(
                encode_reply(reply::RULE_FAILURE, Some((&req.host, req.port))),
                Box::new(Step::Close(SocksError::Unresolved)),
            ),
        }
    }

    fn check(&mut self, req: Request, ip: IpAddr) -> Step {
        let dest = SocketAddr::new(ip, req.port);
        if !allowed(&self.rules, ip, req.port) {
            self.state = State::Done;
            return Step::Send(
                encode_reply(reply::RULE_FAILURE, Some((&req.host, req.port))),
                Box::new(Step::Close(SocksError::Denied(dest.to_string()))),
            );
        }
        self.state = State::Dialling(req);
        Step::Dial(dest)
    }

    /// The dial succeeded from `local`: the success reply, then the pipe.
    pub fn connected(&mut self, local: SocketAddr) -> Step {
        if !matches!(
            std::mem::replace(&mut self.state, State::Done),
            State::Dialling(_)
        ) {
            return Step::Close(SocksError::OutOfOrder);
        }
        let rest = std::mem::take(&mut self.buf);
        Step::Send(
            encode_reply(reply::SUCCESS, Some((&Host::Ip(local.ip()), local.port()))),
            Box::new(Step::Pipe(rest)),
        )
    }

    /// The dial failed.
    pub fn dial_failed(&mut self, how: DialFailure) -> Step {
        let State::Dialling(req) = std::mem::replace(&mut self.state, State::Done) else {
            return Step::Close(SocksError::OutOfOrder);
        };
        let code = match how {
            DialFailure::Refused => reply::CONNECTION_REFUSED,
            DialFailure::NetworkUnreachable => reply::NETWORK_UNREACHABLE,
            DialFailure::Other => reply::HOST_UNREACHABLE,
        };
        let dest = match &req.host {
            Host::Ip(ip) => SocketAddr::new(*ip, req.port).to_string(),
            Host::Domain(d) => format!("{d}:{}", req.port),
        };
        Step::Send(
            encode_reply(code, None),
            Box::new(Step::Close(SocksError::DialFailed(dest))),
        )
    }

    fn close(&mut self, e: SocksError) -> Step {
        self.state = State::Done;
        Step::Close(e)
    }
}

#[cfg(test)]
mod tests;
