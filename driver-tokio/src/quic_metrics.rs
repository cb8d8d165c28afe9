//! cloudflared's `quic_client_*` metrics (its `quic/metrics.go`), per `conn_index`, from
//! quinn's connection counters. cloudflared counts in quic-go's tracer callbacks; burrow
//! samples each QUIC connection's [`ConnectionStats`] (at most once a second) and keeps the
//! counters monotonic across reconnects by adding a replaced connection's last sample to its
//! index's base. quinn does not expose the latest RTT sample, the congestion state or a loss
//! reason, so `quic_client_latest_rtt` and `quic_client_congestion_state` are not exported and
//! every loss is `reason="unknown_loss_reason"` (cloudflared's label for a reason it does not
//! know).

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use burrow_core::connector::Connector;
use burrow_core::datagram::LinkId;
use prometheus::{IntCounter, IntCounterVec, IntGaugeVec, Opts, Registry};
use quinn_proto::{ConnectionStats, FrameStats};

/// How often connections are sampled.
const SAMPLE_EVERY: Duration = Duration::from_secs(1);

/// quic-go's frame type names (its qlog frame types without `Frame`), with quinn's counts.
fn frames(f: &FrameStats) -> [(&'static str, u64); 20] {
    [
        ("Ack", f.acks),
        ("AckFrequency", f.ack_frequency),
        ("Crypto", f.crypto),
        ("ConnectionClose", f.connection_close),
        ("DataBlocked", f.data_blocked),
        ("Datagram", f.datagram),
        ("HandshakeDone", u64::from(f.handshake_done)),
        ("ImmediateAck", f.immediate_ack),
        ("MaxData", f.max_data),
        ("MaxStreamData", f.max_stream_data),
        ("MaxStreams", f.max_streams_bidi + f.max_streams_uni),
        ("NewConnectionID", f.new_connection_id),
        ("NewToken", f.new_token),
        ("PathChallenge", f.path_challenge),
        ("PathResponse", f.path_response),
        ("Ping", f.ping),
        ("ResetStream", f.reset_stream),
        ("RetireConnectionID", f.retire_connection_id),
        ("StreamDataBlocked", f.stream_data_blocked),
        ("Stream", f.stream),
    ]
}

/// The counters of one connection that only grow.
#[derive(Debug, Clone, Copy, Default)]
struct Totals {
    sent_bytes: u64,
    receive_bytes: u64,
    lost_packets: u64,
    sent_frames: [u64; 20],
    received_frames: [u64; 20],
}

impl Totals {
    fn of(s: &ConnectionStats) -> Self {
        Self {
            sent_bytes: s.udp_tx.bytes,
            receive_bytes: s.udp_rx.bytes,
            lost_packets: s.path.lost_packets,
            sent_frames: frames(&s.frame_tx).map(|(_, n)| n),
            received_frames: frames(&s.frame_rx).map(|(_, n)| n),
        }
    }

    fn plus(&self, o: &Self) -> Self {
        let mut r = *self;
        r.sent_bytes += o.sent_bytes;
        r.receive_bytes += o.receive_bytes;
        r.lost_packets += o.lost_packets;
        for i in 0..20 {
            r.sent_frames[i] += o.sent_frames[i];
            r.received_frames[i] += o.received_frames[i];
        }
        r
    }
}

/// One index's sampling state.
#[derive(Debug, Default)]
struct Track {
    link: Option<LinkId>,
    /// Everything earlier connections on this index counted.
    base: Totals,
    /// The current connection's last sample.
    last: Totals,
}

#[derive(Debug, Default)]
struct State {
    sampled: Option<Instant>,
    tracks: HashMap<u8, Track>,
    /// QUIC connection attempts not yet closed.
    open: HashSet<LinkId>,
}

/// The `quic_client_*` families.
pub struct QuicClientMetrics {
    total_connections: IntCounter,
    closed_connections: IntCounter,
    sent_bytes: IntCounterVec,
    receive_bytes: IntCounterVec,
    sent_frames: IntCounterVec,
    received_frames: IntCounterVec,
    lost_packets: IntCounterVec,
    min_rtt: IntGaugeVec,
    smoothed_rtt: IntGaugeVec,
    mtu: IntGaugeVec,
    congestion_window: IntGaugeVec,
    state: Mutex<State>,
}

fn counter_vec(r: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    let v = IntCounterVec::new(Opts::new(name, help), labels).expect("static metric");
    let _ = r.register(Box::new(v.clone()));
    v
}

fn gauge_vec(r: &Registry, name: &str, help: &str) -> IntGaugeVec {
    let v = IntGaugeVec::new(Opts::new(name, help), &["conn_index"]).expect("static metric");
    let _ = r.register(Box::new(v.clone()));
    v
}

/// Brings a counter up to `value`.
fn follow(c: &IntCounter, value: u64) {
    c.inc_by(value.saturating_sub(c.get()));
}

impl QuicClientMetrics {
    /// Registers the families in `r` under cloudflared's names and help texts.
    pub fn new(r: &Registry) -> Self {
        let counter = |name: &str, help: &str| {
            let c = IntCounter::new(name, help).expect("static metric");
            let _ = r.register(Box::new(c.clone()));
            c
        };
        let idx = &["conn_index"];
        Self {
            total_connections: counter(
                "quic_client_total_connections",
                "Number of connections initiated",
            ),
            closed_connections: counter(
                "quic_client_closed_connections",
                "Number of connections that has been closed",
            ),
            sent_bytes: counter_vec(
                r,
                "quic_client_sent_bytes",
                "Number of bytes that have been sent through a connection",
                idx,
            ),
            receive_bytes: counter_vec(
                r,
                "quic_client_receive_bytes",
                "Number of bytes that have been received through a connection",
                idx,
            ),
            sent_frames: counter_vec(
                r,
                "quic_client_sent_frames",
                "Number of frames that have been sent through a connection",
                &["conn_index", "frame_type"],
            ),
            received_frames: counter_vec(
                r,
                "quic_client_received_frames",
                "Number of frames that have been received through a connection",
                &["conn_index", "frame_type"],
            ),
            lost_packets: counter_vec(
                r,
                "quic_client_lost_packets",
                "Number of packets that have been lost from a connection",
                &["conn_index", "reason"],
            ),
            min_rtt: gauge_vec(
                r,
                "quic_client_min_rtt",
                "Lowest RTT measured on a connection in millisec",
            ),
            smoothed_rtt: gauge_vec(
                r,
                "quic_client_smoothed_rtt",
                "Calculated smoothed RTT measured on a connection in millisec",
            ),
            mtu: gauge_vec(
                r,
                "quic_client_mtu",
                "Current maximum transmission unit (MTU) of a connection",
            ),
            congestion_window: gauge_vec(
                r,
                "quic_client_congestion_window",
                "Current congestion window size",
            ),
            state: Mutex::new(State::default()),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// A QUIC connection attempt started (cloudflared counts it when dialing).
    pub fn connecting(&self, link: LinkId) {
        self.total_connections.inc();
        self.state().open.insert(link);
    }

    /// A connection attempt is gone; counted if it was a QUIC one.
    pub fn closed(&self, link: LinkId) {
        if self.state().open.remove(&link) {
            self.closed_connections.inc();
        }
    }

    /// Samples every index's QUIC connection, at most once per [`SAMPLE_EVERY`].
    pub fn sample(&self, now: Instant, machine: &Connector, ha: u8) {
        let mut state = self.state();
        if state
            .sampled
            .is_some_and(|t| now.duration_since(t) < SAMPLE_EVERY)
        {
            return;
        }
        state.sampled = Some(now);
        for index in 0..ha {
            let (Some(conn), Some(link)) = (machine.connection(index), machine.link_of(index))
            else {
                continue;
            };
            let stats = conn.quic_stats();
            let track = state.tracks.entry(index).or_default();
            if track.link != Some(link) {
                track.base = track.base.plus(&track.last);
                track.last = Totals::default();
                track.link = Some(link);
            }
            track.last = Totals::of(&stats);
            let total = track.base.plus(&track.last);
            let i = index.to_string();
            follow(&self.sent_bytes.with_label_values(&[&i]), total.sent_bytes);
            follow(
                &self.receive_bytes.with_label_values(&[&i]),
                total.receive_bytes,
            );
            follow(
                &self
                    .lost_packets
                    .with_label_values(&[&i, "unknown_loss_reason"]),
                total.lost_packets,
            );
            let names = frames(&FrameStats::default()).map(|(name, _)| name);
            for (k, name) in names.iter().enumerate() {
                if total.sent_frames[k] > 0 {
                    follow(
                        &self.sent_frames.with_label_values(&[i.as_str(), name]),
                        total.sent_frames[k],
                    );
                }
                if total.received_frames[k] > 0 {
                    follow(
                        &self.received_frames.with_label_values(&[i.as_str(), name]),
                        total.received_frames[k],
                    );
                }
            }
            // Go's Duration.Milliseconds(): whole milliseconds.
            let ms = |d: Duration| i64::try_from(d.as_millis()).unwrap_or(i64::MAX);
            self.min_rtt
                .with_label_values(&[&i])
                .set(ms(stats.path.min_rtt));
            self.smoothed_rtt
                .with_label_values(&[&i])
                .set(ms(stats.path.rtt));
            self.mtu
                .with_label_values(&[&i])
                .set(i64::from(stats.path.current_mtu));
            self.congestion_window
                .with_label_values(&[&i])
                .set(i64::try_from(stats.path.cwnd).unwrap_or(i64::MAX));
        }
    }
}
