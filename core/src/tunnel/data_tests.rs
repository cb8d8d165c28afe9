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
        panic!("stream reset");
    }
}

/// A TCP stream to an origin, connected; returns its flow.
fn tcp_stream(d: &mut DataStreams<u64>, edge: &mut Edge, now: Instant) -> FlowId {
    let request = request_bytes(ConnectionType::Tcp, "127.0.0.1:9000", &[]);
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
    let mut d = DataStreams::<u64>::new(DataLimits::default(), uuid::Uuid::nil());
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
