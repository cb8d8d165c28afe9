//! Requests whose origin takes nothing: past [`CONNECTOR_HELD_STREAMS`] of them on one
//! connection, those that waited [`ORIGIN_PATIENCE`] are reset, longest first, on the
//! connector's own timer; fewer are left alone however long they wait.

use super::dials::world;
use super::*;
use crate::receive_window::CONNECTOR_HELD_STREAMS;
use crate::stream::connect::ConnectionType;
use crate::tunnel::data::ORIGIN_PATIENCE;

impl World {
    /// Opens `n` requests whose origins connect and are handed the request, then never
    /// take it; returns each stream, oldest first, with its flow and when its origin was
    /// handed it (a second apart).
    fn requests_origins_ignore(
        &mut self,
        conn: ConnId,
        n: usize,
    ) -> Vec<(StreamId, FlowId, Instant)> {
        (0..n)
            .map(|i| {
                let dest = format!("http://app.test/{i}");
                let (stream, link, flow, _) = self.open(conn, ConnectionType::Http, &dest);
                self.input(Input::FlowConnected { link, flow });
                assert!(self.written_to(flow), "the request went to its origin");
                let handed = self.now;
                self.run_until(self.now + Duration::from_secs(1), |_| false);
                (stream, flow, handed)
            })
            .collect()
    }

    fn written_to(&self, flow: FlowId) -> bool {
        self.origin_actions
            .iter()
            .any(|(_, a)| matches!(a, OriginAction::Write { flow: f, .. } if *f == flow))
    }

    fn held_resets(&self) -> usize {
        self.events
            .iter()
            .filter(|(_, e)| matches!(e, SupervisorEvent::HeldRequestReset { .. }))
            .count()
    }

    fn reset_at_edge(&self, conn: ConnId, stream: StreamId) -> bool {
        self.edge_events.iter().any(|e| {
            matches!(e, EdgeEvent::StreamReset { conn: c, stream: s } if *c == conn && *s == stream)
        })
    }
}

#[test]
fn a_crowd_of_requests_whose_origins_take_nothing_loses_its_longest_waiting() {
    let (mut w, conn) = world(41, false);
    let held = CONNECTOR_HELD_STREAMS as usize + 1;
    let requests = w.requests_origins_ignore(conn, held);
    let (first, flow, handed) = requests[0];
    let due = handed + ORIGIN_PATIENCE;
    w.run_until(due - Duration::from_millis(1), |w| w.held_resets() > 0);
    assert_eq!(w.held_resets(), 0, "reset before its patience ran out");
    // The harness fails on a deadline that does not move time, so this also shows the
    // timer fires once and moves on.
    w.run_until(due + Duration::from_secs(30), |w| {
        w.reset_at_edge(conn, first)
    });
    assert!(w.reset_at_edge(conn, first), "the longest waiting is reset");
    let at = w.events.iter().find_map(|(at, e)| {
        matches!(e, SupervisorEvent::HeldRequestReset { .. }).then_some(w.start + *at)
    });
    assert_eq!(at, Some(due), "when its patience ran out exactly");
    assert!(
        w.origin_actions
            .iter()
            .any(|(_, a)| *a == OriginAction::Close { flow }),
        "its origin connection is closed"
    );
    // Two were past the crowd: the two oldest go, the rest stay.
    w.run_until(w.now + Duration::from_secs(30), |_| false);
    let reset: Vec<bool> = requests
        .iter()
        .map(|&(s, _, _)| w.reset_at_edge(conn, s))
        .collect();
    let mut expected = vec![false; held];
    expected[..2].fill(true);
    assert_eq!(reset, expected);
    assert_eq!(w.held_resets(), 2, "each reset is reported");
}

#[test]
fn fewer_requests_than_the_window_holds_wait_on_their_origins_as_long_as_they_like() {
    let (mut w, conn) = world(42, false);
    let requests = w.requests_origins_ignore(conn, CONNECTOR_HELD_STREAMS as usize - 1);
    w.run_until(w.now + ORIGIN_PATIENCE * 6, |w| w.held_resets() > 0);
    assert_eq!(w.held_resets(), 0);
    assert!(requests.iter().all(|&(s, _, _)| !w.reset_at_edge(conn, s)));
}
