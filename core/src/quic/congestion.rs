//! quinn's Cubic controller, watched: the congestion state quic-go's cubic sender reports
//! (cloudflared's `quic_client_congestion_state`) and RFC 9002's latest RTT sample
//! (`quic_client_latest_rtt`), both of which quinn keeps private. The window itself is
//! Cubic's, except while the ACK probe's switch is on ([`crate::quic::ack_probe`]): one
//! wrapper does both, so each ACK passes through one forwarding layer, not two.

use std::any::Any;
use std::sync::Arc;
use std::time::{Duration, Instant};

use quinn_proto::congestion::{
    Controller, ControllerFactory, ControllerMetrics, Cubic, CubicConfig,
};
use quinn_proto::RttEstimator;

use crate::quic::ack_probe::AckSwitch;

/// quic-go's congestion states, valued as cloudflared's gauge values them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum CongestionState {
    /// The window grows by what is acknowledged (below the slow start threshold).
    #[default]
    SlowStart = 0,
    /// Cubic growth above the threshold.
    CongestionAvoidance = 1,
    /// Acknowledgements arrived while the sender had too little to send to fill the window.
    ApplicationLimited = 2,
    /// After a loss, until a packet sent after it is acknowledged.
    Recovery = 3,
}

impl CongestionState {
    /// cloudflared's gauge value.
    pub fn value(self) -> i64 {
        self as i64
    }
}

/// What the watcher saw, read out by [`Watched::figures`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct CongestionFigures {
    /// The state after the last acknowledgement or loss.
    pub state: CongestionState,
    /// The newest RTT sample: from the send time of the newest ack-eliciting packet an ACK
    /// newly acknowledged (RFC 9002 §5.1's sample when, as usual, that is the largest one).
    pub latest_rtt: Option<Duration>,
}

/// Cubic, with its state and RTT samples recorded on the side and the ACK probe's switch.
#[derive(Debug, Clone)]
pub struct Watched {
    inner: Cubic,
    /// While on, the window is unbounded; shared with clones (as quinn's path copies are).
    probe: AckSwitch,
    figures: CongestionFigures,
    /// When the current recovery period started (RFC 9002 §7.3.2).
    recovery_start: Option<Instant>,
    /// The ACK being processed: its arrival and the newest send time it acknowledged.
    batch: Option<(Instant, Instant)>,
}

impl Watched {
    /// The figures of the controller `c`, if it is a watched one (as the transport config
    /// builds them).
    pub fn figures(c: &dyn Controller) -> Option<CongestionFigures> {
        Self::of(c).map(|w| w.figures)
    }

    /// The ACK probe's switch of the controller `c`, if it is a watched one.
    pub fn switch(c: &dyn Controller) -> Option<AckSwitch> {
        Self::of(c).map(|w| w.probe)
    }

    /// A copy of `c` if it is a watched one: quinn lends its controller only as a trait
    /// object with no by-reference downcast.
    fn of(c: &dyn Controller) -> Option<Box<Self>> {
        c.clone_box().into_any().downcast::<Self>().ok()
    }

    fn ssthresh(&self) -> u64 {
        self.inner.metrics().ssthresh.unwrap_or(u64::MAX)
    }
}

impl Controller for Watched {
    fn on_sent(&mut self, now: Instant, bytes: u64, last_packet_number: u64) {
        // One batch past the window, no more.
        self.probe.set(false);
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
        self.batch = match self.batch {
            Some((at, newest)) if at == now => Some((at, newest.max(sent))),
            _ => Some((now, sent)),
        };
        // quic-go's cubic sender: a packet sent before the cutback keeps it in recovery.
        if self.recovery_start.is_some_and(|start| sent <= start) {
            return;
        }
        self.recovery_start = None;
        self.figures.state = if app_limited {
            CongestionState::ApplicationLimited
        } else if self.inner.window() < self.ssthresh() {
            CongestionState::SlowStart
        } else {
            CongestionState::CongestionAvoidance
        };
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
        if let Some((at, newest)) = self.batch.take() {
            self.figures.latest_rtt = Some(at.saturating_duration_since(newest));
        }
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
        if is_persistent_congestion {
            // Back to the minimum window, below the threshold.
            self.recovery_start = None;
            self.figures.state = CongestionState::SlowStart;
        } else if self.recovery_start.is_none_or(|start| sent > start) {
            // Losses of packets sent before the cutback are one event (RFC 9002 §7.3.2).
            self.recovery_start = Some(now);
            self.figures.state = CongestionState::Recovery;
        }
    }

    fn on_mtu_update(&mut self, new_mtu: u16) {
        self.inner.on_mtu_update(new_mtu);
    }

    fn window(&self) -> u64 {
        if self.probe.is_open() {
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
        Box::new(self.clone())
    }

    fn initial_window(&self) -> u64 {
        self.inner.initial_window()
    }

    fn into_any(self: Box<Self>) -> Box<dyn Any> {
        self
    }
}

/// Builds [`Watched`] Cubic controllers with quinn's default Cubic configuration, each with
/// its own ACK probe switch, off.
#[derive(Debug, Default, Clone)]
pub struct WatchedCubic(CubicConfig);

impl ControllerFactory for WatchedCubic {
    fn build(self: Arc<Self>, now: Instant, current_mtu: u16) -> Box<dyn Controller> {
        Box::new(Watched {
            inner: Cubic::new(Arc::new(self.0.clone()), now, current_mtu),
            probe: AckSwitch::default(),
            figures: CongestionFigures::default(),
            recovery_start: None,
            batch: None,
        })
    }
}
