use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use uuid::Uuid;

use super::*;
use crate::icmp::{parse, write_echo, write_ttl_exceeded, Echo, EchoKind};

const TUNNEL: Uuid = Uuid::from_u128(0x7e11);
const A: ConnId = ConnId(1);
const B: ConnId = ConnId(2);

fn dest() -> SocketAddr {
    "10.0.0.7:53".parse().unwrap()
}

fn client(port: u16) -> SocketAddr {
    SocketAddr::from(([198, 51, 100, 9], port))
}

struct T {
    now: Instant,
    e: EdgeSessions,
    udp: MappingId,
    icmp: MappingId,
}

impl T {
    fn new(config: EdgeSessionsConfig) -> Self {
        let mut e = EdgeSessions::new(config, [3; 32]);
        let udp = e.add_mapping(TUNNEL, MappingKind::Udp { dest: dest() });
        let icmp = e.add_mapping(TUNNEL, MappingKind::Icmp);
        let now = Instant::now();
        e.add_connection(now, A, TUNNEL, DatagramVersion::V3);
        T { now, e, udp, icmp }
    }

    fn out(&mut self) -> Vec<(ConnId, Bytes)> {
        std::iter::from_fn(|| self.e.poll_datagram()).collect()
    }

    fn advance(&mut self, d: Duration) {
        self.now += d;
        if self.e.poll_timeout().is_some_and(|t| t <= self.now) {
            self.e.handle_timeout(self.now);
        }
    }

    fn respond(&mut self, conn: ConnId, id: SessionId, code: v3::ResponseCode) {
        let r = v3::RegistrationResponse {
            request_id: id,
            code,
            error_msg: "",
        };
        let mut buf = [0u8; 20];
        r.encode(&mut buf).unwrap();
        assert_eq!(self.e.handle_datagram(self.now, conn, &buf), None);
    }
}

fn registration(d: &[u8]) -> v3::Registration<'_> {
    match v3::decode(d) {
        Ok(v3::Datagram::Registration(r)) => r,
        other => panic!("expected a registration, got {other:?}"),
    }
}

fn payload(d: &[u8]) -> v3::Payload<'_> {
    match v3::decode(d) {
        Ok(v3::Datagram::Payload(p)) => p,
        other => panic!("expected a payload, got {other:?}"),
    }
}

fn payload_datagram(id: SessionId, p: &[u8]) -> Vec<u8> {
    let mut buf = vec![0u8; v3::PAYLOAD_HEADER_LEN + p.len()];
    v3::Payload {
        request_id: id,
        payload: p,
    }
    .encode(&mut buf)
    .unwrap();
    buf
}

#[test]
fn first_packet_registers_then_held_payloads_follow_the_answer() {
    let mut t = T::new(EdgeSessionsConfig::default());
    t.e.handle_client(t.now, t.udp, client(1), b"q1").unwrap();
    t.e.handle_client(t.now, t.udp, client(1), b"q2").unwrap();
    let out = t.out();
    assert_eq!(
        out.len(),
        1,
        "only the registration leaves before the answer"
    );
    let r = registration(&out[0].1);
    assert_eq!(out[0].0, A);
    assert_eq!(r.dest, dest());
    assert_eq!(r.payload, b"", "not bundled by default");
    assert_eq!(
        u64::from(r.idle_hint_secs),
        DEFAULT_IDLE.as_secs() + IDLE_HINT_MARGIN_SECS
    );
    let id = r.request_id;
    assert_eq!(t.e.session_of(t.udp, client(1)), Some(id));

    t.respond(A, id, v3::ResponseCode::Ok);
    let out = t.out();
    let sent: Vec<&[u8]> = out.iter().map(|(_, d)| payload(d).payload).collect();
    assert_eq!(sent, [b"q1".as_slice(), b"q2"]);
    assert!(out.iter().all(|(c, _)| *c == A));

    // Registered: straight through, both ways.
    t.e.handle_client(t.now, t.udp, client(1), b"q3").unwrap();
    assert_eq!(payload(&t.out()[0].1).payload, b"q3");
    let reply = payload_datagram(id, b"a1");
    assert_eq!(
        t.e.handle_datagram(t.now, A, &reply),
        Some(Deliver {
            mapping: t.udp,
            client: client(1),
            payload: b"a1"
        })
    );
    // Another client is another session with another id.
    t.e.handle_client(t.now, t.udp, client(2), b"x").unwrap();
    let other = registration(&t.out()[0].1).request_id;
    assert_ne!(other, id);
    assert_eq!(t.e.stats().opened, 2);
    assert_eq!(t.e.stats().registered, 1);
    assert_eq!(t.e.stats().payloads_out, 3);
    assert_eq!(t.e.stats().payloads_in, 1);
}

#[test]
fn bundled_first_payload_rides_every_retransmission() {
    let mut t = T::new(EdgeSessionsConfig {
        bundle_first_payload: true,
        ..EdgeSessionsConfig::default()
    });
    t.e.handle_client(t.now, t.udp, client(1), b"first")
        .unwrap();
    t.e.handle_client(t.now, t.udp, client(1), b"second")
        .unwrap();
    let first = t.out();
    assert_eq!(first.len(), 1);
    assert_eq!(registration(&first[0].1).payload, b"first");
    t.advance(DEFAULT_RETRANSMIT);
    let again = t.out();
    assert_eq!(again.len(), 1);
    assert_eq!(
        again[0].1, first[0].1,
        "same registration, payload included"
    );
    assert_eq!(t.e.stats().retransmits, 1);
    let id = registration(&first[0].1).request_id;
    t.respond(A, id, v3::ResponseCode::Ok);
    let out = t.out();
    assert_eq!(out.len(), 1, "only the held second payload");
    assert_eq!(payload(&out[0].1).payload, b"second");
}

#[test]
fn unanswered_registration_is_retried_while_the_client_sends_then_idles_out() {
    let idle = Duration::from_secs(60);
    let mut t = T::new(EdgeSessionsConfig {
        idle_timeout: idle,
        ..EdgeSessionsConfig::default()
    });
    t.e.handle_client(t.now, t.udp, client(1), b"q").unwrap();
    let start = t.now;
    let mut sent_at = vec![];
    let mut ids = vec![];
    // The client sends every 30 s for 5 minutes, then stops.
    while t.now < start + Duration::from_secs(600) {
        let since = t.now - start;
        if since <= Duration::from_secs(300)
            && since.as_millis().is_multiple_of(30_000)
            && since > Duration::ZERO
        {
            t.e.handle_client(t.now, t.udp, client(1), b"q").unwrap();
        }
        for (_, d) in t.out() {
            sent_at.push(since);
            ids.push(registration(&d).request_id);
        }
        t.advance(Duration::from_millis(50));
    }
    // 250 ms doubling up to the 2 s cap, then every 2 s; never given up while the client
    // sends, and always the same session.
    let mut expect = vec![Duration::ZERO];
    let mut gap = DEFAULT_RETRANSMIT;
    while *expect.last().unwrap() + gap < Duration::from_secs(300) + idle {
        expect.push(*expect.last().unwrap() + gap);
        gap = (gap * 2).min(DEFAULT_MAX_RETRANSMIT);
    }
    assert_eq!(sent_at, expect);
    assert!(
        ids.iter().all(|id| *id == ids[0]),
        "one session for the flow"
    );
    assert_eq!(t.e.stats().opened, 1);
    // Quiet for the idle timeout: it ends, and what it held is counted.
    assert_eq!(t.e.active_sessions(), 0);
    assert_eq!(t.e.stats().idle_closed, 1);
    assert_eq!(t.e.stats().dropped(EdgeDrop::Unregistered), 11);
    assert_eq!(t.e.poll_timeout(), None, "nothing left to time");
}

#[test]
fn a_registration_the_connection_refused_goes_again_soon() {
    let mut t = T::new(EdgeSessionsConfig::default());
    t.e.handle_client(t.now, t.udp, client(1), b"q").unwrap();
    let start = t.now;
    // The first two go out (unanswered); the third finds the queue full.
    t.out();
    t.advance(DEFAULT_RETRANSMIT);
    t.out();
    t.advance(DEFAULT_RETRANSMIT * 2);
    let refused = t.out();
    assert_eq!(refused.len(), 1);
    t.e.send_failed(t.now, A, &refused[0].1);
    assert_eq!(t.e.stats().dropped(EdgeDrop::SendFailed), 1);
    // Again after the first delay, not after a doubled one; and the backoff goes on from
    // where the refused one left it.
    assert_eq!(t.e.poll_timeout(), Some(t.now + DEFAULT_RETRANSMIT));
    t.advance(DEFAULT_RETRANSMIT);
    assert_eq!(t.out().len(), 1);
    assert_eq!(t.now - start, DEFAULT_RETRANSMIT * 4);
    t.advance(DEFAULT_RETRANSMIT * 3);
    assert!(t.out().is_empty());
    t.advance(DEFAULT_RETRANSMIT);
    assert_eq!(t.out().len(), 1, "1 s after the resent one");
}

/// Each refused registration adds a deadline for its live session. Hundreds of them must
/// not stay in the heap (each popped early was pushed again, and the compaction kept every
/// entry of a live session, so every later call walked them all): the next timeout leaves
/// one entry per session, and the registration still goes out once per retry.
#[test]
fn refused_sends_leave_one_deadline_per_live_session() {
    let mut t = T::new(EdgeSessionsConfig::default());
    t.e.handle_client(t.now, t.udp, client(1), b"q").unwrap();
    let sent = t.out();
    assert_eq!(sent.len(), 1);
    for _ in 0..500 {
        t.e.send_failed(t.now, A, &sent[0].1);
    }
    assert!(t.e.deadlines.len() > 500);
    t.advance(DEFAULT_RETRANSMIT);
    assert_eq!(t.out().len(), 1, "one registration per retry");
    assert_eq!(t.e.deadlines.len(), 1, "one deadline for the one session");
    assert_eq!(t.e.poll_timeout(), Some(t.now + DEFAULT_RETRANSMIT));
}

#[test]
fn refusals_end_the_session_and_are_counted() {
    let mut t = T::new(EdgeSessionsConfig::default());
    for (port, code) in [
        (1, v3::ResponseCode::TooManyActiveFlows),
        (2, v3::ResponseCode::UnableToBindSocket),
        (3, v3::ResponseCode::DestinationUnreachable),
    ] {
        t.e.handle_client(t.now, t.udp, client(port), b"q").unwrap();
        let id = registration(&t.out()[0].1).request_id;
        t.respond(A, id, code);
        assert_eq!(t.e.session_of(t.udp, client(port)), None);
    }
    let s = t.e.stats();
    assert_eq!(
        (s.refused_too_many_flows, s.refused_bind, s.refused_other),
        (1, 1, 1)
    );
    assert_eq!(s.dropped(EdgeDrop::Unregistered), 3);
    // A late OK for a refused session is an unknown session.
    t.respond(A, SessionId(1), v3::ResponseCode::Ok);
    assert_eq!(t.e.stats().dropped(EdgeDrop::UnknownSession), 1);
    // The client tries again: a new session.
    t.e.handle_client(t.now, t.udp, client(1), b"q").unwrap();
    assert_eq!(t.e.stats().opened, 4);
}

#[test]
fn idle_sessions_end_and_activity_keeps_them() {
    let idle = Duration::from_secs(5);
    let mut t = T::new(EdgeSessionsConfig {
        idle_timeout: idle,
        ..EdgeSessionsConfig::default()
    });
    t.e.handle_client(t.now, t.udp, client(1), b"q").unwrap();
    let id = registration(&t.out()[0].1).request_id;
    t.respond(A, id, v3::ResponseCode::Ok);
    for _ in 0..4 {
        t.advance(Duration::from_secs(3));
        let reply = payload_datagram(id, b"a");
        assert!(t.e.handle_datagram(t.now, A, &reply).is_some());
    }
    assert_eq!(t.e.active_sessions(), 1);
    t.advance(Duration::from_secs(4));
    assert_eq!(t.e.active_sessions(), 1);
    t.advance(Duration::from_secs(1));
    assert_eq!(t.e.active_sessions(), 0);
    assert_eq!(t.e.stats().idle_closed, 1);
    let reply = payload_datagram(id, b"late");
    assert_eq!(t.e.handle_datagram(t.now, A, &reply), None);
    assert_eq!(t.e.stats().dropped(EdgeDrop::UnknownSession), 1);
}

#[test]
fn closed_connection_moves_sessions_to_another() {
    let mut t = T::new(EdgeSessionsConfig::default());
    t.e.add_connection(t.now, B, TUNNEL, DatagramVersion::V3);
    // Two sessions end up on different connections (round robin); find the one on A.
    let mut on_a = None;
    for port in 1..=2 {
        t.e.handle_client(t.now, t.udp, client(port), b"q").unwrap();
        let (conn, d) = t.out().remove(0);
        let id = registration(&d).request_id;
        t.respond(conn, id, v3::ResponseCode::Ok);
        t.out();
        if conn == A {
            on_a = Some((port, id));
        }
    }
    let (port, id) = on_a.expect("one session on A");
    t.e.remove_connection(t.now, A);
    let out = t.out();
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].0, B);
    let r = registration(&out[0].1);
    assert_eq!((r.request_id, r.dest, r.payload), (id, dest(), &[][..]));
    assert_eq!(t.e.stats().migrated, 1);
    // Held until B answers.
    t.e.handle_client(t.now, t.udp, client(port), b"during")
        .unwrap();
    assert!(t.out().is_empty());
    t.respond(B, id, v3::ResponseCode::Ok);
    let out = t.out();
    assert_eq!((out[0].0, payload(&out[0].1).payload), (B, &b"during"[..]));
    assert_eq!(t.e.connection_of(id), Some(B));
}

#[test]
fn a_moved_session_still_ends_idle_after_its_last_payload() {
    let idle = Duration::from_secs(100);
    let mut t = T::new(EdgeSessionsConfig {
        idle_timeout: idle,
        ..EdgeSessionsConfig::default()
    });
    t.e.add_connection(t.now, B, TUNNEL, DatagramVersion::V3);
    t.e.handle_client(t.now, t.udp, client(1), b"q").unwrap();
    let (conn, d) = t.out().remove(0);
    let id = registration(&d).request_id;
    t.respond(conn, id, v3::ResponseCode::Ok);
    t.out();
    // The client goes quiet; its session's connection closes twice, and each time the
    // session's registration is answered on another.
    let mut on = conn;
    for _ in 0..2 {
        t.advance(Duration::from_secs(40));
        let other = if on == A { B } else { A };
        t.e.remove_connection(t.now, on);
        t.e.add_connection(t.now, on, TUNNEL, DatagramVersion::V3);
        let out = t.out();
        assert_eq!(registration(&out[0].1).request_id, id);
        t.respond(other, id, v3::ResponseCode::Ok);
        on = other;
    }
    assert_eq!(t.e.stats().migrated, 2);
    t.advance(Duration::from_secs(19));
    assert_eq!(t.e.active_sessions(), 1);
    t.advance(Duration::from_secs(1));
    assert_eq!(
        t.e.active_sessions(),
        0,
        "ended {idle:?} after the client's packet, not after the last answer"
    );
    assert_eq!(t.e.stats().idle_closed, 1);
}

/// v3 has no close: a connector that idled a session out (every payload to it lost) would
/// drop the client's later payloads unseen. While the client sends and nothing comes back,
/// the registration goes again every quarter hint; an answer or a reply puts it off.
#[test]
fn a_session_sending_into_silence_is_registered_again() {
    let idle = Duration::from_secs(60);
    let mut t = T::new(EdgeSessionsConfig {
        idle_timeout: idle,
        ..EdgeSessionsConfig::default()
    });
    let refresh = t.e.refresh_after();
    assert_eq!(
        refresh,
        Duration::from_millis(17_500),
        "a quarter of the 70 s hint"
    );
    t.e.handle_client(t.now, t.udp, client(1), b"q").unwrap();
    let id = registration(&t.out()[0].1).request_id;
    t.respond(A, id, v3::ResponseCode::Ok);
    while t.e.poll_event().is_some() {}
    let registrations = |out: &[(ConnId, Bytes)]| {
        out.iter()
            .filter(|(_, d)| matches!(v3::decode(d), Ok(v3::Datagram::Registration(_))))
            .map(|(c, d)| (*c, registration(d).request_id))
            .collect::<Vec<_>>()
    };
    // The client sends every 5 s; nothing comes back.
    let mut sent_again = Vec::new();
    for _ in 0..8 {
        t.advance(Duration::from_secs(5));
        t.e.handle_client(t.now, t.udp, client(1), b"q").unwrap();
        sent_again.extend(registrations(&t.out()));
    }
    assert_eq!(
        sent_again,
        [(A, id), (A, id)],
        "due at 17.5 s and 37.5 s, run at 20 and 40"
    );
    assert_eq!(t.e.stats().refreshes, 2);
    // The answer to a refresh is no new registration, and puts the next one off.
    t.respond(A, id, v3::ResponseCode::Ok);
    assert!(t.e.poll_event().is_none());
    assert_eq!(t.e.stats().registered, 1);
    // Replies keep it from going again.
    for _ in 0..20 {
        t.advance(Duration::from_secs(5));
        t.e.handle_client(t.now, t.udp, client(1), b"q").unwrap();
        let reply = payload_datagram(id, b"a");
        assert!(t.e.handle_datagram(t.now, A, &reply).is_some());
        assert!(registrations(&t.out()).is_empty());
    }
    // A quiet client is left to the idle timer.
    let mut out = Vec::new();
    for _ in 0..13 {
        t.advance(Duration::from_secs(5));
        out.extend(t.out());
    }
    assert!(out.is_empty(), "{out:?}");
    assert_eq!(t.e.stats().refreshes, 2);
    assert_eq!(t.e.active_sessions(), 0);
    assert_eq!(t.e.stats().idle_closed, 1);
}

/// A refresh the full connection refused goes again after the first retransmission delay.
#[test]
fn a_refused_refresh_goes_again_soon() {
    let mut t = T::new(EdgeSessionsConfig::default());
    t.e.handle_client(t.now, t.udp, client(1), b"q").unwrap();
    let id = registration(&t.out()[0].1).request_id;
    t.respond(A, id, v3::ResponseCode::Ok);
    let refresh = t.e.refresh_after();
    t.advance(refresh / 2);
    t.e.handle_client(t.now, t.udp, client(1), b"q").unwrap();
    t.out();
    t.advance(refresh / 2);
    let out = t.out();
    assert_eq!(registration(&out[0].1).request_id, id);
    t.e.send_failed(t.now, A, &out[0].1);
    t.advance(DEFAULT_RETRANSMIT);
    let out = t.out();
    assert_eq!(out.len(), 1, "{out:?}");
    assert_eq!(registration(&out[0].1).request_id, id);
    assert_eq!(t.e.stats().refreshes, 2);
}

#[test]
fn sessions_wait_for_a_connection_when_none_is_left() {
    let mut t = T::new(EdgeSessionsConfig::default());
    t.e.handle_client(t.now, t.udp, client(1), b"q").unwrap();
    let id = registration(&t.out()[0].1).request_id;
    t.respond(A, id, v3::ResponseCode::Ok);
    assert_eq!(payload(&t.out()[0].1).payload, b"q");
    t.e.remove_connection(t.now, A);
    t.e.handle_client(t.now, t.udp, client(1), b"held").unwrap();
    assert!(t.out().is_empty());
    // A new client has nowhere to go.
    assert_eq!(
        t.e.handle_client(t.now, t.udp, client(2), b"q"),
        Err(EdgeDrop::NoConnection)
    );
    t.e.add_connection(t.now, B, TUNNEL, DatagramVersion::V3);
    let out = t.out();
    assert_eq!(registration(&out[0].1).request_id, id);
    // A payload from the connector is as good as the answer.
    let reply = payload_datagram(id, b"a");
    assert!(t.e.handle_datagram(t.now, B, &reply).is_some());
    assert_eq!(payload(&t.out()[0].1).payload, b"held");
}

#[test]
fn bad_client_packets_are_dropped_and_counted() {
    let mut e = EdgeSessions::new(EdgeSessionsConfig::default(), [0; 32]);
    let m = e.add_mapping(TUNNEL, MappingKind::Udp { dest: dest() });
    let now = Instant::now();
    assert_eq!(
        e.handle_client(now, m, client(1), b"q"),
        Err(EdgeDrop::NoConnection)
    );
    e.add_connection(now, A, TUNNEL, DatagramVersion::V2);
    assert_eq!(
        e.handle_client(now, MappingId(9), client(1), b"q"),
        Err(EdgeDrop::UnknownMapping)
    );
    assert_eq!(
        e.handle_client(now, m, client(1), &[0; v3::MAX_PAYLOAD_LEN + 1]),
        Err(EdgeDrop::TooLarge)
    );
    assert_eq!(e.poll_datagram(), None);
    assert_eq!(e.poll_call(), None);
    assert_eq!(e.stats().dropped(EdgeDrop::NoConnection), 1);
}

/// A v2 payload datagram: payload, session id, type 0x00.
fn v2_payload(id: SessionId, p: &[u8]) -> Vec<u8> {
    let d = v2::Datagram::Udp {
        session_id: Uuid::from_u128(id.0),
        payload: p,
    };
    let mut out = vec![0; d.encoded_len()];
    d.encode(&mut out).unwrap();
    out
}

/// The one registration call made, with its session.
fn register_call(e: &mut EdgeSessions) -> (ConnId, SessionId, SocketAddr, Duration) {
    match e.poll_call() {
        Some(Call::Register {
            conn,
            id,
            dest,
            idle_hint,
        }) => (conn, id, dest, idle_hint),
        other => panic!("expected a registration call, got {other:?}"),
    }
}

#[test]
fn v2_sessions_register_by_call_and_carry_suffix_typed_payloads() {
    let idle = Duration::from_secs(5);
    let mut e = EdgeSessions::new(
        EdgeSessionsConfig {
            idle_timeout: idle,
            ..EdgeSessionsConfig::default()
        },
        [0; 32],
    );
    let m = e.add_mapping(TUNNEL, MappingKind::Udp { dest: dest() });
    let mut now = Instant::now();
    e.add_connection(now, A, TUNNEL, DatagramVersion::V2);
    e.handle_client(now, m, client(1), b"first").unwrap();
    e.handle_client(now, m, client(1), b"second").unwrap();
    let (conn, id, to, hint) = register_call(&mut e);
    assert_eq!(
        (conn, to, hint),
        (A, dest(), idle + Duration::from_secs(IDLE_HINT_MARGIN_SECS))
    );
    assert_eq!(e.poll_call(), None, "one call per session");
    assert_eq!(e.poll_datagram(), None, "payloads wait for the answer");
    // No timer re-sends the call while it is under way.
    now += Duration::from_secs(3);
    e.handle_timeout(now);
    assert_eq!(e.poll_call(), None);
    e.handle_registered(A, id, Ok(()));
    let out: Vec<_> = std::iter::from_fn(|| e.poll_datagram()).collect();
    assert_eq!(out.len(), 2);
    for ((c, d), want) in out.iter().zip([&b"first"[..], b"second"]) {
        assert_eq!(*c, A);
        assert_eq!(
            v2::decode(d).unwrap(),
            v2::Datagram::Udp {
                session_id: Uuid::from_u128(id.0),
                payload: want
            }
        );
    }
    let reply = v2_payload(id, b"back");
    let got = e.handle_datagram(now, A, &reply).unwrap();
    assert_eq!((got.client, got.payload), (client(1), &b"back"[..]));
    // Idle: the connector is told, and the session ends.
    now += idle;
    e.handle_timeout(now);
    assert_eq!(
        e.poll_call(),
        Some(Call::Unregister {
            conn: A,
            id,
            message: "session idle for 5s".into()
        })
    );
    assert_eq!(e.active_sessions(), 0);
}

#[test]
fn v2_refusals_and_the_connectors_end_close_the_session() {
    let mut e = EdgeSessions::new(EdgeSessionsConfig::default(), [0; 32]);
    let m = e.add_mapping(TUNNEL, MappingKind::Udp { dest: dest() });
    let now = Instant::now();
    e.add_connection(now, A, TUNNEL, DatagramVersion::V2);
    e.handle_client(now, m, client(1), b"q").unwrap();
    let (_, refused, _, _) = register_call(&mut e);
    e.handle_registered(A, refused, Err("too many flows".into()));
    e.handle_client(now, m, client(2), b"q").unwrap();
    let (_, ended, _, _) = register_call(&mut e);
    e.handle_registered(A, ended, Ok(()));
    e.handle_unregistered(A, ended, "session idle for 2m10s".into());
    let ends: Vec<_> = std::iter::from_fn(|| e.poll_event())
        .filter_map(|ev| match ev.change {
            SessionChange::Ended(why) => Some((ev.id, why)),
            _ => None,
        })
        .collect();
    assert_eq!(
        ends,
        [
            (
                refused,
                SessionEnd::RefusedV2 {
                    message: "too many flows".into()
                }
            ),
            (
                ended,
                SessionEnd::ClosedByConnector {
                    message: "session idle for 2m10s".into()
                }
            ),
        ]
    );
    assert_eq!(e.active_sessions(), 0);
    assert_eq!(e.stats().refused_other, 1);
    // The client's next packet opens a new session.
    e.handle_client(now, m, client(2), b"q").unwrap();
    let (_, again, _, _) = register_call(&mut e);
    assert_ne!(again, ended);
}

#[test]
fn a_v2_call_that_could_not_be_made_is_made_again_after_the_backoff() {
    let mut e = EdgeSessions::new(EdgeSessionsConfig::default(), [0; 32]);
    let m = e.add_mapping(TUNNEL, MappingKind::Udp { dest: dest() });
    let mut now = Instant::now();
    e.add_connection(now, A, TUNNEL, DatagramVersion::V2);
    e.handle_client(now, m, client(1), b"q").unwrap();
    let (_, id, _, _) = register_call(&mut e);
    e.call_failed(now, A, id);
    now += DEFAULT_RETRANSMIT;
    e.handle_timeout(now);
    assert_eq!(e.poll_call(), None, "backoff doubled from the first call");
    now += DEFAULT_RETRANSMIT;
    e.handle_timeout(now);
    assert_eq!(
        register_call(&mut e).1,
        id,
        "the same session, called again"
    );
}

#[test]
fn sessions_move_between_v2_and_v3_connections_with_their_held_payloads() {
    let mut t = T::new(EdgeSessionsConfig::default());
    // A session on A (v3), unanswered; A closes: it moves to B (v2) by a call, its held
    // payload reframed for v2.
    t.e.handle_client(t.now, t.udp, client(1), b"held").unwrap();
    t.e.add_connection(t.now, B, TUNNEL, DatagramVersion::V2);
    let first = t.out();
    let id = registration(&first[0].1).request_id;
    assert_eq!(first[0].0, A);
    t.e.remove_connection(t.now, A);
    assert_eq!(t.out(), vec![]);
    assert_eq!(register_call(&mut t.e).1, id);
    t.e.handle_registered(B, id, Ok(()));
    let out = t.out();
    assert_eq!(out.len(), 1);
    assert_eq!(
        (out[0].0, v2::decode(&out[0].1).unwrap()),
        (
            B,
            v2::Datagram::Udp {
                session_id: Uuid::from_u128(id.0),
                payload: b"held"
            }
        )
    );
    // An answer from a connection it left changes nothing.
    t.e.handle_registered(A, id, Err("late".into()));
    assert_eq!(t.e.active_sessions(), 1);
}

#[test]
fn pending_payloads_are_bounded() {
    let mut t = T::new(EdgeSessionsConfig {
        max_pending: 2,
        ..EdgeSessionsConfig::default()
    });
    for i in 0..4u8 {
        let r = t.e.handle_client(t.now, t.udp, client(1), &[i]);
        assert_eq!(r.is_ok(), i < 2, "packet {i}");
    }
    assert_eq!(t.e.stats().dropped(EdgeDrop::PendingFull), 2);
}

#[test]
fn garbage_from_the_connector_is_counted() {
    let mut t = T::new(EdgeSessionsConfig::default());
    assert_eq!(t.e.handle_datagram(t.now, A, &[]), None);
    assert_eq!(t.e.handle_datagram(t.now, A, &[0x09, 1, 2]), None);
    assert_eq!(t.e.handle_datagram(t.now, A, &[0x00; 26]), None);
    assert_eq!(t.e.handle_datagram(t.now, ConnId(77), &[0x01; 20]), None);
    let s = t.e.stats();
    assert_eq!(s.dropped(EdgeDrop::Malformed), 2);
    assert_eq!(s.dropped(EdgeDrop::UnexpectedType), 1);
    assert_eq!(s.dropped(EdgeDrop::UnknownConnection), 1);
}

fn echo(src: &str, dst: &str, kind: EchoKind, id: u16, ttl: u8) -> Vec<u8> {
    let mut buf = vec![0u8; 1500];
    let n = write_echo(
        &Echo {
            src: src.parse::<IpAddr>().unwrap(),
            dst: dst.parse::<IpAddr>().unwrap(),
            ttl,
            kind,
            id,
            seq: 1,
            data: b"ping",
        },
        &mut buf,
    )
    .unwrap();
    buf.truncate(n);
    buf
}

#[test]
fn icmp_replies_and_errors_go_back_to_the_requester() {
    let mut t = T::new(EdgeSessionsConfig::default());
    for (src, dst) in [("192.0.2.1", "10.0.0.9"), ("fd00::1", "fd00::9")] {
        let req = echo(src, dst, EchoKind::Request, 77, 64);
        t.e.handle_client(t.now, t.icmp, client(5), &req).unwrap();
        let out = t.out();
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].1[0], 0x02);
        assert_eq!(&out[0].1[1..], &req[..]);

        // The reply, wrapped as the connector sends it.
        let reply = echo(dst, src, EchoKind::Reply, 77, 63);
        let mut d = vec![0x02];
        d.extend_from_slice(&reply);
        assert_eq!(
            t.e.handle_datagram(t.now, A, &d),
            Some(Deliver {
                mapping: t.icmp,
                client: client(5),
                payload: &reply
            })
        );
        // A TTL-exceeded quoting the request goes to the same client.
        let router: IpAddr = if src.contains(':') {
            "fd00::fe".parse().unwrap()
        } else {
            "172.16.0.3".parse().unwrap()
        };
        let mut te = vec![0u8; 1500];
        let n = write_ttl_exceeded(&parse(&req).unwrap(), router, &mut te[1..]).unwrap();
        te[0] = 0x02;
        let got = t.e.handle_datagram(t.now, A, &te[..=n]).expect("delivered");
        assert_eq!((got.mapping, got.client), (t.icmp, client(5)));
        // A reply with another echo id matches nobody.
        let stray = echo(dst, src, EchoKind::Reply, 78, 63);
        let mut d = vec![0x02];
        d.extend_from_slice(&stray);
        assert_eq!(t.e.handle_datagram(t.now, A, &d), None);
    }
    assert_eq!(t.e.stats().icmp_out, 2);
    assert_eq!(t.e.stats().icmp_in, 4);
    assert_eq!(t.e.stats().dropped(EdgeDrop::EchoUnmatched), 2);
    // Not an echo request.
    let reply = echo("192.0.2.1", "10.0.0.9", EchoKind::Reply, 1, 64);
    assert_eq!(
        t.e.handle_client(t.now, t.icmp, client(5), &reply),
        Err(EdgeDrop::NotEcho)
    );
    assert_eq!(
        t.e.handle_client(t.now, t.icmp, client(5), b"junk"),
        Err(EdgeDrop::NotEcho)
    );
    // Entries expire.
    assert_eq!(t.e.echo_entries(), 2);
    t.advance(DEFAULT_ICMP_IDLE);
    t.advance(DEFAULT_ICMP_IDLE / 2);
    assert_eq!(t.e.echo_entries(), 0);
    assert_eq!(t.e.poll_timeout(), None);
}

#[test]
fn icmp_over_a_v2_connection_uses_the_suffix_format() {
    let mut e = EdgeSessions::new(EdgeSessionsConfig::default(), [0; 32]);
    let m = e.add_mapping(TUNNEL, MappingKind::Icmp);
    let now = Instant::now();
    e.add_connection(now, A, TUNNEL, DatagramVersion::V2);
    let req = echo("192.0.2.1", "10.0.0.9", EchoKind::Request, 5, 64);
    e.handle_client(now, m, client(1), &req).unwrap();
    let (conn, d) = e.poll_datagram().unwrap();
    assert_eq!(conn, A);
    assert_eq!((&d[..req.len()], d[req.len()]), (&req[..], 0x01));
    let mut reply = echo("10.0.0.9", "192.0.2.1", EchoKind::Reply, 5, 64);
    reply.push(0x01);
    let got = e.handle_datagram(now, A, &reply).unwrap();
    assert_eq!(got.payload, &reply[..reply.len() - 1]);
}

#[test]
fn echo_table_is_bounded() {
    let mut t = T::new(EdgeSessionsConfig {
        max_echo_entries: 2,
        ..EdgeSessionsConfig::default()
    });
    for id in 0..3u16 {
        let req = echo("192.0.2.1", "10.0.0.9", EchoKind::Request, id, 64);
        let r = t.e.handle_client(t.now, t.icmp, client(1), &req);
        assert_eq!(r.is_ok(), id < 2);
    }
    assert_eq!(t.e.stats().dropped(EdgeDrop::EchoTableFull), 1);
}

/// Every change of a session's life, in order, named by its mapping and client.
#[test]
fn every_session_change_is_reported_once_in_order() {
    use SessionChange::*;
    // Walked through below, with the first session unanswered all along.
    let idle = Duration::from_secs(60);
    let mut t = T::new(EdgeSessionsConfig {
        idle_timeout: idle,
        ..EdgeSessionsConfig::default()
    });
    let changes = |t: &mut T| -> Vec<(SessionId, MappingId, SocketAddr, SessionChange)> {
        std::iter::from_fn(|| t.e.poll_event())
            .map(|e| (e.id, e.mapping, e.client, e.change))
            .collect()
    };
    let (udp, c1, c2) = (t.udp, client(1), client(2));
    t.e.handle_client(t.now, udp, c1, b"q").unwrap();
    let id = registration(&t.out()[0].1).request_id;
    assert_eq!(
        changes(&mut t),
        [(
            id,
            udp,
            c1,
            Opened {
                conn: A,
                dest: dest()
            }
        )]
    );
    t.respond(A, id, v3::ResponseCode::Ok);
    // A second answer (a retransmission's) changes nothing.
    t.respond(A, id, v3::ResponseCode::Ok);
    assert_eq!(changes(&mut t), [(id, udp, c1, Registered { conn: A })]);

    // Its connection goes with none left: it waits; one comes: it registers there.
    t.e.remove_connection(t.now, A);
    t.e.add_connection(t.now, B, TUNNEL, DatagramVersion::V3);
    t.respond(B, id, v3::ResponseCode::Ok);
    assert_eq!(
        changes(&mut t),
        [
            (id, udp, c1, Waiting { from: A }),
            (id, udp, c1, Migrated { from: None, to: B }),
            (id, udp, c1, Registered { conn: B }),
        ]
    );
    t.e.add_connection(t.now, A, TUNNEL, DatagramVersion::V3);
    t.e.remove_connection(t.now, B);
    assert_eq!(
        changes(&mut t),
        [(
            id,
            udp,
            c1,
            Migrated {
                from: Some(B),
                to: A
            }
        )]
    );

    // A refusal ends a second client's session, with the connector's words.
    t.out();
    t.e.handle_client(t.now, udp, c2, b"q").unwrap();
    let id2 = registration(&t.out()[0].1).request_id;
    let r = v3::RegistrationResponse {
        request_id: id2,
        code: v3::ResponseCode::UnableToBindSocket,
        error_msg: "no route",
    };
    let mut buf = [0u8; 64];
    let n = r.encode(&mut buf).unwrap();
    assert_eq!(t.e.handle_datagram(t.now, A, &buf[..n]), None);
    let refused = SessionEnd::Refused {
        code: v3::ResponseCode::UnableToBindSocket,
        message: "no route".into(),
    };
    assert_eq!(
        changes(&mut t),
        [
            (
                id2,
                udp,
                c2,
                Opened {
                    conn: A,
                    dest: dest()
                }
            ),
            (id2, udp, c2, Ended(refused)),
        ]
    );

    // The first one's registration on A goes unanswered: retried, never given up, until its
    // client has been quiet for the idle timeout.
    for _ in 0..(idle.as_millis() / 100 + 1) {
        t.advance(Duration::from_millis(100));
        t.out();
    }
    assert_eq!(changes(&mut t), [(id, udp, c1, Ended(SessionEnd::Idle))]);

    // A third is answered, then idles out.
    t.e.handle_client(t.now, udp, c2, b"q").unwrap();
    let id3 = registration(&t.out()[0].1).request_id;
    t.respond(A, id3, v3::ResponseCode::Ok);
    t.advance(idle);
    assert_eq!(
        changes(&mut t),
        [
            (
                id3,
                udp,
                c2,
                Opened {
                    conn: A,
                    dest: dest()
                }
            ),
            (id3, udp, c2, Registered { conn: A }),
            (id3, udp, c2, Ended(SessionEnd::Idle)),
        ]
    );
    assert_eq!(t.e.active_sessions(), 0);
}
