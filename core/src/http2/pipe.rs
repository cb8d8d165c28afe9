//! The in-memory transport h2 runs on: rustls's connection over byte buffers, seen by h2 as an
//! `AsyncRead + AsyncWrite` that is ready or pending, never blocking.
//!
//! This `Arc<Mutex<_>>` is the one lock in core's machines, and it stays for these reasons:
//! h2's `Connection` (and `Handshake`) takes its I/O object by value and gives no way back to
//! it (no `get_mut`, no `into_inner` while serving), yet between two polls of h2 the machine
//! must feed received ciphertext into the same TLS session and drain what to send from it. So
//! the session has two owners, h2's transport and the machine, and only shared ownership
//! reaches it: `Rc<RefCell<_>>` would make the `Connector` and `Edge` machines `!Send`; moving
//! the session into a thread-local around each poll would hide the state in a global and
//! break if h2 ever touched its transport outside those calls; `unsafe` aliasing is out. The
//! mutex is never contended (the machine is single-owner and polls h2 itself) and so never
//! blocks; h2 keeps its own stream state behind an `Arc<Mutex<_>>` the same way, so dropping
//! this one would not leave the HTTP/2 machines lock-free anyway.

use std::io::{self, Read, Write};
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// The TLS session and what the machine needs to know about its plaintext traffic.
#[derive(Debug)]
pub(crate) struct Tls {
    /// The rustls session (client on the connector, server on the edge).
    pub(crate) session: rustls::Connection,
    /// Plaintext bytes h2 has read and written: the pump's measure of progress.
    pub(crate) moved: u64,
    /// A TLS error rustls reported; the connection is over.
    pub(crate) error: Option<rustls::Error>,
    /// The peer's TCP ended and rustls has not taken it yet (it takes no input, the end
    /// included, while its plaintext buffer is full).
    eof_untold: bool,
}

impl Tls {
    /// The peer's TCP ended: rustls is told now, or as soon as h2's reads make room.
    pub(crate) fn peer_closed(&mut self) {
        self.eof_untold = true;
        self.tell_eof();
    }

    fn tell_eof(&mut self) {
        // Reading zero bytes is how rustls learns of the end of the stream; it fails only
        // while the plaintext buffer is full, and the next read by h2 tries again.
        if !self.eof_untold || self.session.read_tls(&mut &[][..]).is_err() {
            return;
        }
        self.eof_untold = false;
        if let Err(e) = self.session.process_new_packets() {
            self.error.get_or_insert(e);
        }
    }
}

/// Shared handle to the TLS session; h2 holds one as its I/O object.
#[derive(Debug, Clone)]
pub(crate) struct Pipe(Arc<Mutex<Tls>>);

impl Pipe {
    /// A pipe over `session`, whose unsent ciphertext is bounded by `buffer_limit` bytes.
    pub(crate) fn new(mut session: rustls::Connection, buffer_limit: usize) -> Self {
        session.set_buffer_limit(Some(buffer_limit));
        Pipe(Arc::new(Mutex::new(Tls {
            session,
            moved: 0,
            error: None,
            eof_untold: false,
        })))
    }

    /// The session (a poisoned lock only means a panic elsewhere; the state is still whole).
    pub(crate) fn lock(&self) -> MutexGuard<'_, Tls> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl AsyncRead for Pipe {
    fn poll_read(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let mut tls = self.lock();
        tls.tell_eof();
        match tls.session.reader().read(buf.initialize_unfilled()) {
            Ok(n) => {
                buf.advance(n);
                tls.moved += n as u64;
                Poll::Ready(Ok(()))
            }
            // No plaintext until more ciphertext arrives: the machine polls again after input.
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Poll::Pending,
            Err(e) => Poll::Ready(Err(e)),
        }
    }
}

impl AsyncWrite for Pipe {
    fn poll_write(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let mut tls = self.lock();
        match tls.session.writer().write(buf) {
            // The ciphertext buffer is full: pending until the driver transmits.
            Ok(0) if !buf.is_empty() => Poll::Pending,
            Ok(n) => {
                tls.moved += n as u64;
                Poll::Ready(Ok(n))
            }
            Err(e) => Poll::Ready(Err(e)),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        // rustls encrypts on write; what is left to flush is the driver's to transmit.
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.lock().session.send_close_notify();
        Poll::Ready(Ok(()))
    }
}
