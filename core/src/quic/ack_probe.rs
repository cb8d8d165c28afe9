//! quinn's congestion controller with a switch that lets one packet past a full window, so that
//! ACKs quinn owes go out ([`crate::tunnel`] throws it).
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

use std::any::Any;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use quinn_proto::congestion::{Controller, ControllerFactory, ControllerMetrics};
use quinn_proto::RttEstimator;

use crate::quic::congestion::WatchedCubic;

/// A congestion controller whose window is unbounded while its switch is on.
pub struct AckProbing {
    inner: Box<dyn Controller>,
    /// On for one `poll_transmit` of one datagram: shared with clones, through which the
    /// caller reaches it ([`Self::switch`]). Atomic only because quinn lends its controller
    /// by shared reference and requires it `Sync`: one thread sets and reads it, uncontended.
    open: Arc<AtomicBool>,
}

impl AckProbing {
    /// The controller it switches.
    pub fn inner(&self) -> &dyn Controller {
        &*self.inner
    }

    /// The switch of the controller `c`, if it is an [`AckProbing`] one.
    pub fn switch(c: &dyn Controller) -> Option<Arc<AtomicBool>> {
        c.clone_box()
            .into_any()
            .downcast::<Self>()
            .ok()
            .map(|p| p.open.clone())
    }
}

impl Controller for AckProbing {
    fn on_sent(&mut self, now: Instant, bytes: u64, last_packet_number: u64) {
        // One batch past the window, no more.
        self.open.store(false, Ordering::Relaxed);
        self.inner.on_sent(now, bytes, last_packet_number);
    }

    fn on_ack(
        &mut self,
        now: Instant,
        sent: Instant,
        bytes: u64,
        app_limited: bool,
        rtt: &RttEstimator,
    ) {
        self.inner.on_ack(now, sent, bytes, app_limited, rtt);
    }

    fn on_end_acks(
        &mut self,
        now: Instant,
        in_flight: u64,
        app_limited: bool,
        largest_packet_num_acked: Option<u64>,
    ) {
        self.inner
            .on_end_acks(now, in_flight, app_limited, largest_packet_num_acked);
    }

    fn on_congestion_event(
        &mut self,
        now: Instant,
        sent: Instant,
        is_persistent_congestion: bool,
        lost_bytes: u64,
    ) {
        self.inner
            .on_congestion_event(now, sent, is_persistent_congestion, lost_bytes);
    }

    fn on_mtu_update(&mut self, new_mtu: u16) {
        self.inner.on_mtu_update(new_mtu);
    }

    fn window(&self) -> u64 {
        if self.open.load(Ordering::Relaxed) {
            // Past quinn's check (and its pacer, which does not pace windows this large).
            u64::MAX / 2
        } else {
            self.inner.window()
        }
    }

    fn metrics(&self) -> ControllerMetrics {
        self.inner.metrics()
    }

    fn clone_box(&self) -> Box<dyn Controller> {
        Box::new(Self {
            inner: self.inner.clone_box(),
            open: self.open.clone(),
        })
    }

    fn initial_window(&self) -> u64 {
        self.inner.initial_window()
    }

    fn into_any(self: Box<Self>) -> Box<dyn Any> {
        self
    }
}

/// Builds [`AckProbing`] controllers around quinn's default, Cubic, watched for the metrics
/// ([`crate::quic::congestion::Watched`]).
#[derive(Debug, Default)]
pub struct AckProbingCubic(WatchedCubic);

impl ControllerFactory for AckProbingCubic {
    fn build(self: Arc<Self>, now: Instant, current_mtu: u16) -> Box<dyn Controller> {
        Box::new(AckProbing {
            inner: Arc::new(self.0.clone()).build(now, current_mtu),
            open: Arc::new(AtomicBool::new(false)),
        })
    }
}
