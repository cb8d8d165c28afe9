use std::net::SocketAddr;
use std::time::{Duration, Instant};

use super::*;
use crate::datagram::v3::{Registration, ResponseCode};

const A: LinkId = LinkId(1);
const B: LinkId = LinkId(2);

fn dest() -> SocketAddr {
    "10.0.0.7:53".parse().unwrap()
}

fn registration(id: u128, idle: u16, bundled: &[u8]) -> Vec<u8> {
    let r = Registration {
        request_id: SessionId(id),
        dest: dest(),
        traced: false,
        idle_hint_secs: idle,
        payload: bundled,
    };
    let mut out = vec![0; r.encoded_len()];
    r.encode(&mut out).unwrap();
    out
}

fn payload(id: u128, bytes: &[u8]) -> Vec<u8> {
    let p = v3::Payload {
        request_id: SessionId(id),
        payload: bytes,
    };
    let mut out = vec![0; p.encoded_len()];
    p.encode(&mut out).unwrap();
    out
}

fn actions(m: &mut SessionManager) -> Vec<SessionAction> {
    std::iter::from_fn(|| m.poll_action()).collect()
}

fn response(link: LinkId, id: u128, code: ResponseCode) -> SessionAction {
    let mut bytes = vec![0x03, code.to_u8()];
    bytes.extend_from_slice(&id.to_be_bytes());
    bytes.extend_from_slice(&[0, 0]);
    SessionAction::Datagram {
        link,
        datagram: bytes.into(),
    }
}

/// Registers `id` on `link` and opens its socket; returns the flow.
fn open(m: &mut SessionManager, now: Instant, link: LinkId, id: u128, idle: u16) -> UdpFlowId {
    let reg = registration(id, idle, b"");
    assert_eq!(
        m.handle_datagram(now, link, DatagramVersion::V3, &reg),
        Inbound::Handled
    );
    let flow = match actions(m).as_slice() {
        [SessionAction::Open { flow, dest: d }] if *d == dest() => *flow,
        other => panic!("expected one Open, got {other:?}"),
    };
    m.handle_origin_opened(now, flow);
    assert_eq!(
        actions(m),
        vec![response(link, id, ResponseCode::Ok)],
        "OK is exactly cloudflared's 20 bytes"
    );
    flow
}

#[test]
fn registration_opens_answers_and_forwards_in_order() {
    let now = Instant::now();
    let mut m = SessionManager::new(SessionLimits::default());
    let reg = registration(7, 0, b"first");
    assert_eq!(
        m.handle_datagram(now, A, DatagramVersion::V3, &reg),
        Inbound::Handled
    );
    let flow = match actions(&mut m).as_slice() {
        [SessionAction::Open { flow, .. }] => *flow,
        other => panic!("{other:?}"),
    };
    // A payload racing the socket's opening waits (cloudflared drops it, B§5 #8).
    let early = payload(7, b"second");
    assert_eq!(
        m.handle_datagram(now, A, DatagramVersion::V3, &early),
        Inbound::Handled
    );
    m.handle_origin_opened(now, flow);
    assert_eq!(
        actions(&mut m),
        vec![
            response(A, 7, ResponseCode::Ok),
            SessionAction::Send {
                flow,
                payload: Bytes::from_static(b"first")
            },
            SessionAction::Send {
                flow,
                payload: Bytes::from_static(b"second")
            },
        ]
    );
    let later = payload(7, b"third");
    assert_eq!(
        m.handle_datagram(now, B, DatagramVersion::V3, &later),
        Inbound::Forward {
            flow,
            payload: b"third"
        },
        "payloads are accepted from any connection, as in cloudflared"
    );
    assert_eq!(m.stats().total_flows, 1);
    // A v3 flow is no datagram-v2 session.
    assert_eq!(m.stats().v2_sessions, 0);
}

#[test]
fn drops_are_counted_not_fatal() {
    let now = Instant::now();
    let mut m = SessionManager::new(SessionLimits::default());
    let cases: [(&[u8], DropReason); 5] = [
        (&[], DropReason::Malformed),
        (&[0x00, 0x00, 0x01], DropReason::Malformed),
        (&[0x09], DropReason::Malformed),
        (
            &[
                3, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 0, 0,
            ],
            DropReason::UnexpectedType,
        ),
        (&payload(99, b"x"), DropReason::UnknownFlow),
    ];
    for (bytes, reason) in cases {
        assert_eq!(
            m.handle_datagram(now, A, DatagramVersion::V3, bytes),
            Inbound::Dropped(reason)
        );
    }
    assert_eq!(m.stats().dropped(DropReason::Malformed), 3);
    assert_eq!(m.stats().dropped(DropReason::UnknownFlow), 1);
    assert!(actions(&mut m).is_empty());
}

#[test]
fn flow_limit_answers_too_many_and_failed_binds_free_their_slot() {
    let now = Instant::now();
    let mut m = SessionManager::new(SessionLimits::default()).with_flow_limit(1);
    m.handle_datagram(now, A, DatagramVersion::V3, &registration(1, 0, b""));
    let flow = match actions(&mut m).as_slice() {
        [SessionAction::Open { flow, .. }] => *flow,
        other => panic!("{other:?}"),
    };
    m.handle_datagram(now, A, DatagramVersion::V3, &registration(2, 0, b""));
    assert_eq!(
        actions(&mut m),
        vec![response(A, 2, ResponseCode::TooManyActiveFlows)]
    );
    m.handle_origin_failed(now, flow, "connect: network is unreachable");
    assert_eq!(
        actions(&mut m),
        vec![
            SessionAction::Close { flow },
            response(A, 1, ResponseCode::UnableToBindSocket)
        ]
    );
    // The slot came back (cloudflared leaks it, B§5 #2).
    open(&mut m, now, A, 3, 0);
    assert_eq!(m.stats().rate_limited, 1);
    assert_eq!(m.stats().bind_failures, 1);
}

#[test]
fn duplicate_on_same_link_is_a_retry_and_other_link_migrates() {
    let now = Instant::now();
    let mut m = SessionManager::new(SessionLimits::default());
    let flow = open(&mut m, now, A, 5, 0);
    m.handle_datagram(now, A, DatagramVersion::V3, &registration(5, 0, b""));
    assert_eq!(actions(&mut m), vec![response(A, 5, ResponseCode::Ok)]);
    assert_eq!(m.stats().retries, 1);

    m.handle_datagram(now, B, DatagramVersion::V3, &registration(5, 0, b""));
    assert_eq!(
        actions(&mut m),
        vec![response(B, 5, ResponseCode::Ok)],
        "migration tears nothing down"
    );
    assert_eq!(m.stats().migrated, 1);
    let mut buf = vec![0u8; HEADROOM + 3 + TAILROOM];
    buf[HEADROOM..HEADROOM + 3].copy_from_slice(b"abc");
    let out = m.frame_origin(now, flow, &mut buf, 3).unwrap();
    assert_eq!(out.link, B);
    assert_eq!(&buf[out.range], &payload(5, b"abc")[..]);
}

#[test]
fn idle_timer_follows_activity_and_never_spins() {
    let t0 = Instant::now();
    let mut m = SessionManager::new(SessionLimits::default());
    let flow = open(&mut m, t0, A, 1, 5);
    assert_eq!(m.poll_timeout(), Some(t0 + Duration::from_secs(5)));
    // Activity at 3 s pushes the end to 8 s; the early wake-up re-arms instead of spinning.
    let p = payload(1, b"x");
    m.handle_datagram(t0 + Duration::from_secs(3), A, DatagramVersion::V3, &p);
    let wake = m.poll_timeout().unwrap();
    m.handle_timeout(wake);
    assert!(actions(&mut m).is_empty());
    let next = m.poll_timeout().unwrap();
    assert!(next > wake, "timeout must move forward");
    assert_eq!(next, t0 + Duration::from_secs(8));
    m.handle_timeout(next);
    assert_eq!(actions(&mut m), vec![SessionAction::Close { flow }]);
    assert_eq!(m.poll_timeout(), None);
    assert_eq!(m.active(), 0);
    assert_eq!(m.stats().idle_closed, 1);
}

#[test]
fn zero_hint_means_cloudflared_default() {
    let t0 = Instant::now();
    let mut m = SessionManager::new(SessionLimits::default());
    open(&mut m, t0, A, 1, 0);
    assert_eq!(m.poll_timeout(), Some(t0 + DEFAULT_IDLE));
}

#[test]
fn frame_origin_writes_in_place_and_drops_oversize() {
    let now = Instant::now();
    let mut m = SessionManager::new(SessionLimits::default());
    let flow = open(&mut m, now, A, 0xabc, 0);
    let mut buf = vec![0u8; HEADROOM + ORIGIN_READ + TAILROOM];
    buf[HEADROOM..HEADROOM + 4].copy_from_slice(b"pong");
    let out = m.frame_origin(now, flow, &mut buf, 4).unwrap();
    assert_eq!(out.range, 0..HEADROOM + 4);
    assert_eq!(&buf[out.range], &payload(0xabc, b"pong")[..]);
    assert_eq!(
        m.frame_origin(now, flow, &mut buf, MAX_PAYLOAD + 1),
        Err(DropReason::TooLarge)
    );
    assert_eq!(m.stats().packet_too_big, 0, "a v3 session's");
    assert_eq!(
        m.active(),
        1,
        "an oversized packet does not end the session"
    );
    assert_eq!(
        m.frame_origin(now, UdpFlowId(999), &mut buf, 4),
        Err(DropReason::UnknownFlow)
    );
}

#[test]
fn dead_link_rehomes_or_waits_for_reregistration() {
    let now = Instant::now();
    let mut m = SessionManager::new(SessionLimits::default());
    let f1 = open(&mut m, now, A, 1, 0);
    let f2 = open(&mut m, now, A, 2, 0);
    let mut buf = vec![0u8; HEADROOM + 8 + TAILROOM];
    m.link_closed(A, Some(B));
    assert_eq!(m.frame_origin(now, f1, &mut buf, 1).unwrap().link, B);
    m.link_closed(B, None);
    assert_eq!(
        m.frame_origin(now, f2, &mut buf, 1),
        Err(DropReason::NoLink)
    );
    // The edge re-registers on a new connection: same socket, now reachable again.
    m.handle_datagram(
        now,
        LinkId(3),
        DatagramVersion::V3,
        &registration(2, 0, b""),
    );
    assert_eq!(
        actions(&mut m),
        vec![response(LinkId(3), 2, ResponseCode::Ok)]
    );
    assert_eq!(
        m.frame_origin(now, f2, &mut buf, 1).unwrap().link,
        LinkId(3)
    );
}

#[test]
fn v2_sessions_answer_over_rpc_and_unregister_when_idle() {
    let t0 = Instant::now();
    let mut m = SessionManager::new(SessionLimits::default());
    m.set_link_index(A, 0);
    let id = SessionId(0x0b6e4c3e6a4f4f559d1c3b1f2a7c9e10);
    m.register_v2(t0, A, id, dest(), -5);
    let flow = match actions(&mut m).as_slice() {
        [SessionAction::Open { flow, .. }] => *flow,
        other => panic!("{other:?}"),
    };
    m.handle_origin_opened(t0, flow);
    assert_eq!(
        actions(&mut m),
        vec![SessionAction::V2Registered {
            link: A,
            id,
            result: Ok(())
        }]
    );
    // A negative hint panics cloudflared (B§5 #17); here it is the default.
    assert_eq!(m.poll_timeout(), Some(t0 + DEFAULT_IDLE));

    let uuid = uuid::Uuid::from_u128(id.0);
    let mut dgram = b"ping".to_vec();
    dgram.extend_from_slice(uuid.as_bytes());
    dgram.push(0x00);
    assert_eq!(
        m.handle_datagram(t0, A, DatagramVersion::V2, &dgram),
        Inbound::Forward {
            flow,
            payload: b"ping"
        }
    );
    let mut buf = vec![0u8; HEADROOM + 4 + TAILROOM];
    buf[HEADROOM..HEADROOM + 4].copy_from_slice(b"pong");
    let out = m.frame_origin(t0, flow, &mut buf, 4).unwrap();
    let mut expected = b"pong".to_vec();
    expected.extend_from_slice(uuid.as_bytes());
    expected.push(0x00);
    assert_eq!(&buf[out.range], &expected[..]);
    // Too big for a datagram: cloudflared's v2 muxer counts it as packet_too_big.
    let mut big = vec![0u8; HEADROOM + MAX_PAYLOAD + 1 + TAILROOM];
    assert_eq!(
        m.frame_origin(t0, flow, &mut big, MAX_PAYLOAD + 1),
        Err(DropReason::TooLarge)
    );
    assert_eq!(m.stats().packet_too_big, 1);
    // cloudflared's v2 session gauge and counter (`udp_active_sessions`, `_total_sessions`).
    assert_eq!((m.stats().v2_sessions, m.stats().v2_active()), (1, 1));
    // Not a flow: cloudflared's per-index flow families are its v3 muxer's.
    let flows = |m: &SessionManager| {
        m.index_stats()
            .get(&0)
            .map_or((0, 0), |s| (s.total_flows, s.active()))
    };
    assert_eq!(flows(&m), (0, 0));

    m.handle_timeout(t0 + DEFAULT_IDLE);
    assert_eq!(
        actions(&mut m),
        vec![
            SessionAction::Close { flow },
            SessionAction::V2Unregister {
                link: A,
                id,
                message: "session idle for 3m30s".into()
            }
        ]
    );
    assert_eq!(m.stats().v2_active(), 0);
    assert_eq!(flows(&m), (0, 0));
}

#[test]
fn v2_unregister_by_edge_is_not_echoed_and_limit_text_matches() {
    let now = Instant::now();
    let mut m = SessionManager::new(SessionLimits::default()).with_flow_limit(1);
    let id = SessionId(1);
    m.register_v2(now, A, id, dest(), 0);
    let flow = match actions(&mut m).as_slice() {
        [SessionAction::Open { flow, .. }] => *flow,
        other => panic!("{other:?}"),
    };
    m.handle_origin_opened(now, flow);
    actions(&mut m);
    m.register_v2(now, A, SessionId(2), dest(), 0);
    assert_eq!(
        actions(&mut m),
        vec![SessionAction::V2Registered {
            link: A,
            id: SessionId(2),
            result: Err(V2_RATE_LIMITED.into())
        }]
    );
    // A refused registration opened no session.
    assert_eq!((m.stats().v2_sessions, m.stats().v2_active()), (1, 1));
    m.unregister_v2(id, "eyeball went away");
    assert_eq!(actions(&mut m), vec![SessionAction::Close { flow }]);
    assert_eq!((m.stats().v2_sessions, m.stats().v2_active()), (1, 0));
}

#[test]
fn go_durations() {
    for (d, text) in [
        (Duration::ZERO, "0s"),
        (Duration::from_secs(210), "3m30s"),
        (Duration::from_secs(5), "5s"),
        (Duration::from_secs(3605), "1h0m5s"),
        (Duration::from_millis(1500), "1.5s"),
        (Duration::from_millis(250), "250ms"),
        (Duration::from_nanos(1500), "1.5\u{b5}s"),
        (Duration::from_nanos(7), "7ns"),
    ] {
        assert_eq!(go_duration(d), text);
    }
}

#[test]
fn features_choose_the_version() {
    assert_eq!(
        DatagramVersion::from_features(&["support_datagram_v2", "support_datagram_v3_2"]),
        DatagramVersion::V3
    );
    assert_eq!(
        DatagramVersion::from_features(&["support_datagram_v2", "support_datagram_v3_1"]),
        DatagramVersion::V2
    );
}

#[test]
fn every_session_end_releases_its_flow_slot_once_and_migration_keeps_it() {
    let now = Instant::now();
    let mut m = SessionManager::new(SessionLimits::default());
    // Origin failure after opening.
    let failed = open(&mut m, now, A, 1, 10);
    // Idle expiry.
    open(&mut m, now, A, 2, 1);
    // Migrates, then lives on.
    open(&mut m, now, A, 3, 100);
    // v2, ended by the edge.
    m.register_v2(now, B, SessionId(4), dest(), 0);
    let v2 = match actions(&mut m).as_slice() {
        [SessionAction::Open { flow, .. }] => *flow,
        other => panic!("{other:?}"),
    };
    m.handle_origin_opened(now, v2);
    actions(&mut m);
    // Dial failure before opening.
    m.handle_datagram(now, A, DatagramVersion::V3, &registration(5, 10, b""));
    let undialled = match actions(&mut m).as_slice() {
        [SessionAction::Open { flow, .. }] => *flow,
        other => panic!("{other:?}"),
    };
    assert_eq!(m.flow_slots(), 5);

    m.handle_origin_failed(now, undialled, "connect: network is unreachable");
    m.handle_origin_failed(now, undialled, "reported twice");
    assert_eq!(m.flow_slots(), 4, "a failed dial releases, once");
    m.handle_origin_failed(now, failed, "read: connection refused");
    assert_eq!(m.flow_slots(), 3);
    m.unregister_v2(SessionId(4), "closed by eyeball");
    m.unregister_v2(SessionId(4), "again");
    assert_eq!(m.flow_slots(), 2);
    assert_eq!(m.stats().remote_closed, 1, "counted once, as it ended once");
    // Migration: a registration on another link, then the old link dies.
    m.handle_datagram(now, B, DatagramVersion::V3, &registration(3, 100, b""));
    m.link_closed(A, Some(B));
    assert_eq!(
        m.flow_slots(),
        2,
        "migrating neither releases nor takes a slot"
    );
    m.handle_timeout(now + Duration::from_secs(2));
    assert_eq!(m.flow_slots(), 1, "idle expiry releases");
    m.handle_timeout(now + Duration::from_secs(3));
    assert_eq!(m.flow_slots(), 1);
    assert_eq!(m.stats().rate_limited, 0);
}

#[test]
fn flows_are_counted_by_the_index_of_their_connection() {
    let now = Instant::now();
    let mut m = SessionManager::new(SessionLimits::default());
    m.set_link_index(A, 0);
    m.set_link_index(B, 1);
    let f1 = open(&mut m, now, A, 1, 0);
    let _f2 = open(&mut m, now, A, 2, 0);
    // A retry on A, then session 1 moves to B.
    m.handle_datagram(now, A, DatagramVersion::V3, &registration(1, 0, b""));
    m.handle_datagram(now, B, DatagramVersion::V3, &registration(1, 0, b""));
    let _ = actions(&mut m);
    // Its origin fails while it is on B: a failure of index 1, still an active flow of 0 until
    // it is gone.
    m.handle_origin_failed(now, f1, "connection refused");
    let at = |m: &SessionManager, i: u8| m.index_stats().get(&i).cloned().unwrap_or_default();
    let zero = at(&m, 0);
    assert_eq!(
        (
            zero.total_flows,
            zero.active(),
            zero.retries,
            zero.failed,
            zero.migrated
        ),
        (2, 1, 1, 0, 0)
    );
    let one = at(&m, 1);
    assert_eq!(
        (one.total_flows, one.active(), one.migrated, one.failed),
        (0, 0, 1, 1)
    );
    // A closes with B as successor: session 2 migrates to index 1; A's index is forgotten.
    m.link_closed(A, Some(B));
    assert_eq!(at(&m, 1).migrated, 2);
    m.set_link_index(LinkId(9), 0);
    assert_eq!(m.stats().total_flows, 2, "the totals are unchanged");
}

/// Drops are counted on the index of the connection the datagram came in on, or that the
/// session's payloads go out of (cloudflared's `udp_dropped_datagrams{conn_index,reason}`),
/// and in the totals; a drop no connection can be named for only in the totals.
#[test]
fn drops_are_counted_by_the_index_of_their_connection() {
    let now = Instant::now();
    let mut m = SessionManager::new(SessionLimits::default());
    m.set_link_index(A, 0);
    m.set_link_index(B, 3);
    let at = |m: &SessionManager, i: u8, r: DropReason| {
        m.index_stats().get(&i).map_or(0, |s| s.dropped(r))
    };
    // Came in on B: index 3.
    m.handle_datagram(now, B, DatagramVersion::V3, &[0x09]);
    m.handle_datagram(now, B, DatagramVersion::V3, &payload(99, b"x"));
    assert_eq!(at(&m, 3, DropReason::Malformed), 1);
    assert_eq!(at(&m, 3, DropReason::UnknownFlow), 1);
    assert_eq!(at(&m, 0, DropReason::Malformed), 0);
    // A session on A: its too-large origin read and a failed origin write count on index 0.
    let flow = open(&mut m, now, A, 1, 0);
    let mut buf = vec![0u8; HEADROOM + MAX_PAYLOAD + 1 + TAILROOM];
    assert_eq!(
        m.frame_origin(now, flow, &mut buf, MAX_PAYLOAD + 1),
        Err(DropReason::TooLarge)
    );
    m.write_failed(flow);
    m.write_failed(flow);
    assert_eq!(at(&m, 0, DropReason::TooLarge), 1);
    assert_eq!(at(&m, 0, DropReason::WriteFailed), 2);
    // Refused by the connection of A (the hub's count).
    m.count(Some(A), DropReason::SendRefused);
    assert_eq!(at(&m, 0, DropReason::SendRefused), 1);
    // Nobody to name: the totals only.
    m.write_failed(UdpFlowId(12345));
    m.count(Some(LinkId(77)), DropReason::SendRefused);
    assert_eq!(m.stats().dropped(DropReason::WriteFailed), 3);
    assert_eq!(m.stats().dropped(DropReason::SendRefused), 2);
    let by_index: u64 = m
        .index_stats()
        .values()
        .flat_map(|s| s.dropped.iter())
        .sum();
    let total: u64 = m.stats().dropped.iter().sum();
    assert_eq!(
        by_index + 2,
        total,
        "the by-index counts add up to the totals"
    );
}

/// The edge (or anyone on its path) can send malformed datagrams and over-limit registrations
/// as fast as it likes: each kind is reported a few times per window, then with a count of
/// what was left out, while every drop is still counted.
#[test]
fn floods_of_malformed_datagrams_and_refused_sessions_are_reported_a_few_times_per_window() {
    let t0 = Instant::now();
    let mut m = SessionManager::new(SessionLimits::default()).with_flow_limit(1);
    m.handle_datagram(t0, A, DatagramVersion::V3, &registration(1, 0, b""));
    for i in 0..1000u128 {
        // An unknown v3 type, an empty v2 datagram, and a registration over the flow limit.
        assert_eq!(
            m.handle_datagram(t0, A, DatagramVersion::V3, &[0x7f]),
            Inbound::Dropped(DropReason::Malformed)
        );
        let _ = m.handle_datagram(t0, B, DatagramVersion::V2, &[]);
        m.handle_datagram(t0, A, DatagramVersion::V3, &registration(2 + i, 0, b""));
    }
    assert_eq!(m.stats().dropped(DropReason::Malformed), 2000);
    assert_eq!(m.stats().rate_limited, 1000);
    let notices: Vec<_> = std::iter::from_fn(|| m.poll_notice()).collect();
    let dropped = notices
        .iter()
        .filter(|n| matches!(n, SessionNotice::DatagramDropped { suppressed: 0, .. }))
        .count();
    let limited = notices
        .iter()
        .filter(|n| matches!(n, SessionNotice::FlowLimited { suppressed: 0, .. }))
        .count();
    assert_eq!(
        (dropped, limited, notices.len()),
        (
            NOTICES_LOGGED as usize,
            NOTICES_LOGGED as usize,
            2 * NOTICES_LOGGED as usize
        ),
        "{notices:?}"
    );
    // The next window's first report carries the count of the last one's silence.
    let t1 = t0 + NOTICE_WINDOW;
    m.handle_datagram(t1, A, DatagramVersion::V3, &[0x7f]);
    assert_eq!(
        m.poll_notice(),
        Some(SessionNotice::DatagramDropped {
            link: A,
            fault: DatagramFault::V3(v3::DecodeError::UnknownType(0x7f)),
            suppressed: 2000 - u64::from(NOTICES_LOGGED),
        })
    );
}
