//! `DataStreams` against an edge stream that takes only what it has room for.

use super::*;
use crate::stream::connect::{request_bytes, ConnectionType};

/// One edge stream: it takes at most `room` more bytes, then nothing until given more.
#[derive(Default)]
struct Edge {
    took: Vec<u8>,
    room: usize,
    finished: bool,
    /// Calls that took nothing (each one the transport's "blocked").
    refused: usize,
    /// Stream resets seen; a test that expects none leaves `may_reset` off.
    resets: usize,
    may_reset: bool,
}

impl Edge {
    /// Takes what there is room for of `data`; returns how much.
    fn take(&mut self, data: &[u8]) -> usize {
        let n = data.len().min(self.room);
        self.refused += usize::from(n == 0 && !data.is_empty());
        self.took.extend_from_slice(&data[..n]);
        self.room -= n;
        n
    }
}

impl EdgeStreams for Edge {
    type Id = u64;

    fn read(&mut self, _: u64, _: usize, _: &mut impl BodySink) -> Result<bool, String> {
        Ok(false)
    }

    fn write(&mut self, _: u64, pending: &mut Vec<u8>) -> Result<(), String> {
        let n = self.take(pending);
        pending.drain(..n);
        Ok(())
    }

    fn write_shared(&mut self, _: u64, data: Bytes) -> Result<usize, String> {
        Ok(self.take(&data))
    }

    fn finish(&mut self, _: u64) -> bool {
        self.finished = true;
        true
    }

    fn stop(&mut self, _: u64) {}

    fn reset(&mut self, _: u64) {
        assert!(self.may_reset, "stream reset");
        self.resets += 1;
    }
}

/// A TCP stream to an origin, connected; returns its flow.
fn tcp_stream(d: &mut DataStreams<u64>, edge: &mut Edge, now: Instant) -> FlowId {
    tcp_stream_sending(d, edge, now, b"")
}

/// A TCP stream whose edge sent `sent` after its request, connected; returns its flow.
fn tcp_stream_sending(
    d: &mut DataStreams<u64>,
    edge: &mut Edge,
    now: Instant,
    sent: &[u8],
) -> FlowId {
    let mut request = request_bytes(ConnectionType::Tcp, "127.0.0.1:9000", &[]);
    request.extend_from_slice(sent);
    d.accept(now, edge, 1, &request);
    let flow = std::iter::from_fn(|| d.poll_action())
        .find_map(|a| match a {
            OriginAction::Open { flow, .. } => Some(flow),
            _ => None,
        })
        .expect("the origin is opened");
    d.on_flow_connected(now, edge, flow);
    // The connect response.
    edge.room = 4096;
    d.drive(now, edge, 1);
    edge.took.clear();
    flow
}

#[test]
fn origin_bytes_quic_cannot_take_are_held_within_the_window_then_sent_in_order() {
    let now = Instant::now();
    let window = DataLimits::default().window;
    let mut d = DataStreams::<u64>::new(DataLimits::default(), uuid::Uuid::nil(), 0);
    let mut edge = Edge::default();
    let flow = tcp_stream(&mut d, &mut edge, now);
    let sent: Vec<u8> = (0..3 * window + 1234).map(|i| (i % 251) as u8).collect();
    let read = Bytes::from(sent.clone());

    // Room for 1000 bytes: the rest of the window is held as read, the flow is short.
    edge.room = 1000;
    let taken = d.on_flow_data(now, &mut edge, flow, &read);
    assert_eq!(taken, 1000 + window);
    assert_eq!(d.buffered(), window, "held bytes count against the window");
    assert!(
        edge.refused > 0,
        "the transport was asked again and was blocked"
    );
    // Nothing to resume while the held bytes wait.
    assert!(
        std::iter::from_fn(|| d.poll_action()).all(|a| !matches!(a, OriginAction::Resume { .. }))
    );
    // Fed again before there is room: nothing is taken, nothing grows.
    assert_eq!(
        d.on_flow_data(now, &mut edge, flow, &read.slice(taken..)),
        0
    );
    assert_eq!(d.buffered(), window);

    // Room comes (the transport's Writable): the held bytes go first, and a short flow is
    // resumed once nothing is held, not before.
    let mut fed = taken;
    let mut short = true;
    for _ in 0..1000 {
        if fed == sent.len() {
            break;
        }
        edge.room += 100_000;
        d.drive(now, &mut edge, 1);
        let resumed = std::iter::from_fn(|| d.poll_action())
            .any(|a| matches!(a, OriginAction::Resume { flow: f } if f == flow));
        assert!(
            !resumed || d.buffered() == 0,
            "resumed while bytes were held"
        );
        if short && !resumed {
            assert!(
                d.buffered() > 0,
                "nothing held, yet the flow was not resumed"
            );
            continue;
        }
        let rest = read.slice(fed..);
        let n = d.on_flow_data(now, &mut edge, flow, &rest);
        short = n < rest.len();
        fed += n;
        assert!(d.buffered() <= window, "within the window");
    }
    assert_eq!(fed, sent.len(), "the whole read was taken");
    edge.room = usize::MAX;
    d.drive(now, &mut edge, 1);
    assert!(edge.took == sent, "every byte once, in order");
}

/// Streams with `--write-stream-timeout` of `timeout`.
fn with_write_timeout(timeout: Duration) -> DataStreams<u64> {
    let limits = DataLimits {
        write_timeout: Some(timeout),
        ..DataLimits::default()
    };
    DataStreams::new(limits, uuid::Uuid::nil(), 0)
}

/// `--write-stream-timeout`: origin bytes the edge takes none of for that long reset the
/// stream (RESET_STREAM, and its origin closes); each byte the edge takes starts the wait over.
#[test]
fn a_write_to_the_edge_that_waits_out_the_write_timeout_resets_the_stream() {
    let t0 = Instant::now();
    let timeout = Duration::from_secs(5);
    let mut d = with_write_timeout(timeout);
    let mut edge = Edge {
        may_reset: true,
        ..Edge::default()
    };
    let flow = tcp_stream(&mut d, &mut edge, t0);
    assert_eq!(d.poll_timeout(), None, "nothing waits for the edge yet");
    let read = Bytes::from(vec![7u8; 10_000]);
    edge.room = 1000;
    d.on_flow_data(t0, &mut edge, flow, &read);
    assert_eq!(
        d.poll_timeout(),
        Some(t0 + timeout),
        "the wait began with the read"
    );

    // Some room before the deadline: the wait starts over from there.
    let t1 = t0 + Duration::from_secs(3);
    edge.room = 500;
    d.drive(t1, &mut edge, 1);
    assert_eq!(d.poll_timeout(), Some(t1 + timeout));
    d.expire_writes(t0 + timeout, &mut edge);
    assert_eq!(
        edge.resets, 0,
        "reset though the edge took bytes 2 s before"
    );

    // None taken for the whole timeout: reset, the origin closed, reported once.
    d.expire_writes(t1 + timeout - Duration::from_millis(1), &mut edge);
    assert_eq!(edge.resets, 0, "reset before the timeout ran out");
    d.expire_writes(t1 + timeout, &mut edge);
    assert_eq!(edge.resets, 1);
    assert!(std::iter::from_fn(|| d.poll_action())
        .any(|a| matches!(a, OriginAction::Close { flow: f } if f == flow)));
    let reports = d.take_held_resets();
    assert_eq!(reports.len(), 1);
    assert_eq!(reports[0].stall, Stall::Edge);
    assert_eq!(reports[0].waited, timeout);
    assert_eq!(d.poll_timeout(), None, "no timer left behind");
}

/// Without the flag, or over HTTP/2 (cloudflared's HTTP/2 transport has no such deadline),
/// bytes may wait for the edge as long as they must.
#[test]
fn without_the_write_timeout_or_over_http2_edge_writes_wait() {
    let t0 = Instant::now();
    let over_http2 = with_write_timeout(Duration::from_secs(5)).over_http2();
    for mut d in [
        DataStreams::<u64>::new(DataLimits::default(), uuid::Uuid::nil(), 0),
        over_http2,
    ] {
        let mut edge = Edge::default();
        let flow = tcp_stream(&mut d, &mut edge, t0);
        d.on_flow_data(t0, &mut edge, flow, &Bytes::from(vec![7u8; 10_000]));
        assert_eq!(d.poll_timeout(), None);
        d.expire_writes(t0 + Duration::from_secs(3600), &mut edge);
        assert!(d.take_held_resets().is_empty());
    }
}

/// `--write-stream-timeout`: a private-network TCP origin that takes no write for that long
/// is closed and the stream finishes (FIN and STOP_SENDING), after what the origin sent, as
/// cloudflared's pipe ends when a write to its origin fails.
#[test]
fn a_tcp_origin_that_takes_no_write_within_the_write_timeout_is_closed() {
    let t0 = Instant::now();
    let timeout = Duration::from_secs(2);
    let mut d = with_write_timeout(timeout);
    let mut edge = Edge::default();
    let flow = tcp_stream_sending(&mut d, &mut edge, t0, b"for the origin");
    let writes: Vec<OriginAction> = std::iter::from_fn(|| d.poll_action()).collect();
    assert!(
        writes
            .iter()
            .any(|a| matches!(a, OriginAction::Write { flow: f, .. } if *f == flow)),
        "{writes:?}"
    );
    // A second later the origin sent something the edge cannot take yet (its wait is not
    // over when the origin's is).
    edge.room = 0;
    let answered = t0 + Duration::from_secs(1);
    d.on_flow_data(answered, &mut edge, flow, &Bytes::from_static(b"answer"));
    assert_eq!(d.poll_timeout(), Some(t0 + timeout));
    d.expire_writes(t0 + timeout, &mut edge);
    assert!(std::iter::from_fn(|| d.poll_action())
        .any(|a| matches!(a, OriginAction::Close { flow: f } if f == flow)));
    assert_eq!(
        d.poll_timeout(),
        Some(answered + timeout),
        "only the edge's wait is left, no timer in the past"
    );
    assert!(!edge.finished, "finished before the origin's bytes went");
    edge.room = 100;
    d.drive(t0 + timeout, &mut edge, 1);
    assert_eq!(edge.took, b"answer");
    assert!(edge.finished, "the stream ends after what the origin sent");
    assert_eq!(edge.resets, 0);
    let reports = d.take_held_resets();
    assert_eq!(reports.len(), 1);
    assert_eq!(reports[0].stall, Stall::Origin);
    assert_eq!(reports[0].host, "127.0.0.1:9000");
}

/// The origin write timeout is private-network TCP's only (cloudflared's `tcpConnection`):
/// an HTTP origin's write may take as long as it takes.
#[test]
fn http_origin_writes_have_no_write_timeout() {
    let t0 = Instant::now();
    let mut d = with_write_timeout(Duration::from_secs(2));
    let mut edge = Edge::default();
    let request = request_bytes(ConnectionType::Http, "http://a.test/", &[]);
    d.accept(t0, &mut edge, 1, &request);
    let flow = std::iter::from_fn(|| d.poll_action())
        .find_map(|a| match a {
            OriginAction::Open { flow, .. } => Some(flow),
            _ => None,
        })
        .expect("the origin is opened");
    d.on_flow_connected(t0, &mut edge, flow);
    assert!(
        std::iter::from_fn(|| d.poll_action()).any(|a| matches!(a, OriginAction::Write { .. })),
        "the request went to the origin"
    );
    assert_eq!(d.poll_timeout(), None);
    d.expire_writes(t0 + Duration::from_secs(3600), &mut edge);
    assert!(d.take_held_resets().is_empty());
}
