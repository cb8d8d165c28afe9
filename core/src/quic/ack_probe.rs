//! The switch of quinn's congestion controller that lets one packet past a full window, so that
//! ACKs quinn owes go out ([`crate::tunnel`] throws it; [`crate::quic::congestion::Watched`]
//! honours it, in the one wrapper around quinn's Cubic).
//!
//! While its window is full and anything ack-eliciting waits (stream data, a retransmission,
//! a datagram, a PING), quinn-proto 0.11 sends no packet of the 1-RTT space at all, its ACKs
//! included, though RFC 9002 §7 exempts ACK-only packets from congestion control (quiche#1277
//! fixed the same). When both ends of a connection are so, neither hears an ACK, so neither
//! window opens, until a probe timeout sends one; probes back off, and the RTT samples of the
//! late ACKs inflate the next timeouts, so on a lossy path a connection carried nothing for
//! longer than a UDP session's idle timeout, and its idle timer (at least three probe
//! timeouts) ran for minutes after its peer was gone. quinn offers no ACK-only send: the
//! packet that carries the owed ACK carries what waits too, as quinn's probes do.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

/// The switch of one connection's congestion controller
/// ([`crate::quic::congestion::Watched`]): while on, the window is unbounded.
///
/// On for one `poll_transmit` of one datagram; shared between the controller, its clones and
/// the caller, who reaches it through [`crate::quic::congestion::Watched::switch`]. Atomic only
/// because quinn lends its controller by shared reference and requires it `Sync`: one thread
/// sets and reads it, uncontended.
#[derive(Debug, Clone, Default)]
pub struct AckSwitch(Arc<AtomicBool>);

impl AckSwitch {
    /// Turns the switch on (`true`) or off.
    pub fn set(&self, open: bool) {
        self.0.store(open, Ordering::Relaxed);
    }

    /// Whether the switch is on.
    pub fn is_open(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }
}
