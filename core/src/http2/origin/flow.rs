//! One HTTP/2 origin flow as both drivers run it: the bridge, the connector's commands, the
//! ciphertext in transit and the bridge's timers, advanced in one order by
//! [`Http2Flow::step`]. A driver reads the socket when [`Http2Flow::wants_read`], hands the
//! bytes to `step`, writes [`Http2Flow::to_send`] as far as the socket takes it, and wakes at
//! [`Http2Flow::poll_timeout`]; it steps again while anything moved.

use std::time::{Duration, Instant};

use bytes::{Buf, Bytes};

use super::{FlowRead, Http2Origin, Http2OriginError};

/// Ciphertext held for the socket per step (what one socket write may take).
const SEND_CHUNK: usize = 32 * 1024;

/// What the connector hears from the flow, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BridgeReport {
    /// The connector's last write is taken whole: its next command may come.
    Written,
    /// Response bytes: one per [`Http2Flow::permit`] (the first needs none).
    Data(Bytes),
    /// The connection ended between exchanges: the flow is over.
    Finished,
}

/// What the driver read from the origin socket since the last step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SocketRead<'a> {
    /// Nothing (not asked, or it would block).
    Nothing,
    /// These bytes (asked only while [`Http2Flow::wants_read`]).
    Data(&'a [u8]),
    /// The socket's read side ended.
    Closed,
}

/// An HTTP/2 origin's flow (see the module doc).
#[derive(Debug)]
pub struct Http2Flow {
    bridge: Http2Origin,
    /// What is left of the connector's write under way.
    write: Option<Bytes>,
    /// The connector ended its side; told to the bridge once `write` is taken.
    shutdown: bool,
    shut: bool,
    /// The connector may take one more [`BridgeReport::Data`].
    permit: bool,
    /// [`BridgeReport::Finished`] was reported.
    eof: bool,
    /// Read from the socket, from `in_at` not yet taken by the bridge.
    inbound: Vec<u8>,
    in_at: usize,
    /// The socket's read side ended (told to the bridge).
    peer_closed: bool,
    /// Ciphertext for the socket: `outbound[out_at..out_end]`.
    outbound: Box<[u8]>,
    out_at: usize,
    out_end: usize,
}

impl Http2Flow {
    /// The flow over `session` (a TLS session whose handshake chose ALPN `h2`) from `now`,
    /// closing once idle for `idle_timeout` (`keepAliveTimeout`; zero: never).
    pub fn new(now: Instant, session: rustls::ClientConnection, idle_timeout: Duration) -> Self {
        Self::over(Http2Origin::new(now, session, idle_timeout))
    }

    /// The flow around `bridge`.
    pub fn over(bridge: Http2Origin) -> Self {
        Http2Flow {
            bridge,
            write: None,
            shutdown: false,
            shut: false,
            // The first read needs no permit, as for every origin flow.
            permit: true,
            eof: false,
            inbound: Vec::new(),
            in_at: 0,
            peer_closed: false,
            outbound: vec![0; SEND_CHUNK].into_boxed_slice(),
            out_at: 0,
            out_end: 0,
        }
    }

    /// Whether the connector's next command may be given: its last write is taken whole.
    pub fn takes_command(&self) -> bool {
        self.write.is_none()
    }

    /// The connector's next request bytes ([`BridgeReport::Written`] once all are taken).
    /// Only when [`Http2Flow::takes_command`]; more would be held until then anyway.
    pub fn write(&mut self, data: Bytes) {
        match &mut self.write {
            None => self.write = Some(data),
            // Never given by a driver that waits for `Written`; kept whole all the same.
            Some(held) => {
                let mut joined = Vec::with_capacity(held.len() + data.len());
                joined.extend_from_slice(held);
                joined.extend_from_slice(&data);
                *held = Bytes::from(joined);
            }
        }
    }

    /// The connector ends its side (after its last write).
    pub fn shutdown(&mut self) {
        self.shutdown = true;
    }

    /// The connector took the last [`BridgeReport::Data`] and may take one more.
    pub fn permit(&mut self) {
        self.permit = true;
    }

    /// Whether the connector may take response bytes now (a driver waits for its permit
    /// otherwise).
    pub fn has_permit(&self) -> bool {
        self.permit
    }

    /// Whether to read the socket: what it gave last is all taken, and it has not ended.
    pub fn wants_read(&self) -> bool {
        self.in_at == self.inbound.len() && !self.peer_closed
    }

    /// Ciphertext for the socket; say how much it took with [`Http2Flow::sent`].
    pub fn to_send(&self) -> &[u8] {
        &self.outbound[self.out_at..self.out_end]
    }

    /// The socket took `n` bytes of [`Http2Flow::to_send`].
    pub fn sent(&mut self, n: usize) {
        self.out_at = (self.out_at + n).min(self.out_end);
    }

    /// When to step even if nothing else happens (`None`: no deadline).
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.bridge.poll_timeout()
    }

    /// One step at `now`: takes `read`, acts on a passed deadline, then moves what it can, in
    /// this order, until nothing moves: the connector's write into the bridge (and its end
    /// after it), ciphertext from the socket into the bridge, one response read per permit to
    /// the connector (`report`), and the bridge's ciphertext into [`Http2Flow::to_send`] once
    /// the socket took the last. Returns whether anything moved: do the socket's I/O and step
    /// again until it returns false. An error fails the flow.
    pub fn step(
        &mut self,
        now: Instant,
        read: SocketRead<'_>,
        report: &mut dyn FnMut(BridgeReport),
    ) -> Result<bool, Http2OriginError> {
        let mut moved = false;
        match read {
            SocketRead::Nothing => {}
            SocketRead::Data(data) => {
                // Whatever was left untaken stays first.
                self.inbound.drain(..self.in_at);
                self.in_at = 0;
                self.inbound.extend_from_slice(data);
                moved |= !data.is_empty();
            }
            SocketRead::Closed if !self.peer_closed => {
                self.peer_closed = true;
                self.bridge.peer_closed(now);
                moved = true;
            }
            SocketRead::Closed => {}
        }
        if self.bridge.poll_timeout().is_some_and(|t| t <= now) {
            self.bridge.handle_timeout(now);
            moved = true;
        }
        loop {
            let mut progress = false;
            if let Some(data) = &mut self.write {
                let n = self.bridge.write(now, data)?;
                data.advance(n);
                progress |= n > 0;
                if data.is_empty() {
                    self.write = None;
                    report(BridgeReport::Written);
                    progress = true;
                }
            }
            if self.shutdown && !self.shut && self.write.is_none() {
                self.bridge.shutdown(now);
                self.shut = true;
                progress = true;
            }
            if self.in_at < self.inbound.len() {
                let n = self.bridge.received(now, &self.inbound[self.in_at..]);
                self.in_at += n;
                progress |= n > 0;
                if self.in_at == self.inbound.len() {
                    self.inbound.clear();
                    self.in_at = 0;
                }
            }
            if self.permit && !self.eof {
                match self.bridge.read(now) {
                    FlowRead::Data(b) => {
                        self.permit = false;
                        report(BridgeReport::Data(b));
                        progress = true;
                    }
                    FlowRead::End => {
                        self.eof = true;
                        report(BridgeReport::Finished);
                        progress = true;
                    }
                    FlowRead::Failed(e) => return Err(e),
                    FlowRead::Blocked => {}
                }
            }
            if self.out_at == self.out_end {
                self.out_at = 0;
                self.out_end = self.bridge.transmit(now, &mut self.outbound);
                progress |= self.out_end > 0;
            }
            if !progress {
                return Ok(moved);
            }
            moved = true;
        }
    }
}
