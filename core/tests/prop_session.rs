//! Properties of the UDP session manager over arbitrary traffic.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use burrow_core::datagram::{v3, LinkId};
use burrow_core::session::{
    DatagramVersion, Inbound, SessionAction, SessionId, SessionLimits, SessionManager, HEADROOM,
    TAILROOM,
};
use proptest::prelude::*;

#[derive(Debug, Clone)]
enum Op {
    Register {
        id: u8,
        link: u8,
        idle: u16,
        bundled: Vec<u8>,
    },
    Payload {
        id: u8,
        body: Vec<u8>,
    },
    Garbage(Vec<u8>),
    Origin {
        id: u8,
        len: u16,
    },
    Fail {
        id: u8,
    },
    LinkClosed {
        link: u8,
        successor: Option<u8>,
    },
    Wait {
        secs: u16,
    },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        (
            0u8..16,
            0u8..3,
            0u16..20,
            prop::collection::vec(any::<u8>(), 0..8)
        )
            .prop_map(|(id, link, idle, bundled)| Op::Register {
                id,
                link,
                idle,
                bundled
            }),
        (0u8..16, prop::collection::vec(any::<u8>(), 0..32))
            .prop_map(|(id, body)| Op::Payload { id, body }),
        prop::collection::vec(any::<u8>(), 0..64).prop_map(Op::Garbage),
        (0u8..16, 0u16..1400).prop_map(|(id, len)| Op::Origin { id, len }),
        (0u8..16).prop_map(|id| Op::Fail { id }),
        (0u8..3, proptest::option::of(0u8..3))
            .prop_map(|(link, successor)| Op::LinkClosed { link, successor }),
        (0u16..30).prop_map(|secs| Op::Wait { secs }),
    ]
}

fn encode(d: impl FnOnce(&mut [u8]) -> Result<usize, v3::EncodeError>) -> Vec<u8> {
    let mut out = vec![0u8; 2048];
    let n = d(&mut out).expect("encodes");
    out.truncate(n);
    out
}

proptest! {
    /// Whatever arrives, in whatever order: no panic, the flow limit holds, sockets opened
    /// equal sessions alive plus sockets closed, payloads reach only open sessions, framed
    /// origin packets decode back to the session's id, and the timer never spins.
    #[test]
    fn any_traffic_keeps_the_books(ops in prop::collection::vec(op(), 0..80)) {
        let t0 = Instant::now();
        let mut now = t0;
        let limit = 6;
        let mut m = SessionManager::new(SessionLimits::default())
        .with_flow_limit(limit as u64);
        let mut open = HashSet::new();
        let mut opened = 0usize;
        let mut closed = 0usize;
        let dest: SocketAddr = "10.1.2.3:53".parse().unwrap();
        for op in ops {
            match op {
                Op::Register { id, link, idle, bundled } => {
                    let r = v3::Registration { request_id: SessionId(id.into()), dest, traced: false, idle_hint_secs: idle, payload: &bundled };
                    let d = encode(|o| r.encode(o));
                    prop_assert_eq!(m.handle_datagram(now, LinkId(link.into()), DatagramVersion::V3, &d), Inbound::Handled);
                }
                Op::Payload { id, body } => {
                    let p = v3::Payload { request_id: SessionId(id.into()), payload: &body };
                    let d = encode(|o| p.encode(o));
                    match m.handle_datagram(now, LinkId(0), DatagramVersion::V3, &d) {
                        Inbound::Forward { flow, payload } => {
                            prop_assert!(open.contains(&flow));
                            prop_assert_eq!(payload, &body[..]);
                        }
                        Inbound::Icmp(_) => prop_assert!(false, "a payload is not ICMP"),
                        Inbound::Handled | Inbound::Dropped(_) => {}
                    }
                }
                Op::Garbage(bytes) => {
                    let _ = m.handle_datagram(now, LinkId(1), DatagramVersion::V3, &bytes);
                    let _ = m.handle_datagram(now, LinkId(1), DatagramVersion::V2, &bytes);
                }
                Op::Origin { id, len } => {
                    if let Some(flow) = m.flow_of(SessionId(id.into())) {
                        let len = usize::from(len);
                        let mut buf = vec![0u8; HEADROOM + len + TAILROOM];
                        if let Ok(out) = m.frame_origin(now, flow, &mut buf, len) {
                            prop_assert!(len <= burrow_core::session::MAX_PAYLOAD);
                            match v3::decode(&buf[out.range]) {
                                Ok(v3::Datagram::Payload(p)) => {
                                    prop_assert_eq!(p.request_id, SessionId(id.into()));
                                    prop_assert_eq!(p.payload.len(), len);
                                }
                                other => prop_assert!(false, "framed {:?}", other),
                            }
                        }
                    }
                }
                Op::Fail { id } => {
                    if let Some(flow) = m.flow_of(SessionId(id.into())) {
                        m.handle_origin_failed(now, flow, "read: connection refused");
                    }
                }
                Op::LinkClosed { link, successor } => {
                    m.link_closed(LinkId(link.into()), successor.map(|s| LinkId(s.into())));
                }
                Op::Wait { secs } => {
                    now += Duration::from_secs(secs.into());
                    if m.poll_timeout().is_some_and(|t| t <= now) {
                        m.handle_timeout(now);
                        prop_assert!(m.poll_timeout().is_none_or(|t| t > now), "timer did not move past now");
                    }
                }
            }
            while let Some(a) = m.poll_action() {
                match a {
                    SessionAction::Open { flow, .. } => {
                        opened += 1;
                        // Every 3rd dial fails.
                        if opened.is_multiple_of(3) {
                            m.handle_origin_failed(now, flow, "connect: network is unreachable");
                        } else {
                            open.insert(flow);
                            m.handle_origin_opened(now, flow);
                        }
                    }
                    SessionAction::Close { flow } => {
                        closed += 1;
                        open.remove(&flow);
                    }
                    SessionAction::Send { flow, .. } => prop_assert!(open.contains(&flow)),
                    SessionAction::Datagram { datagram, .. } => {
                        prop_assert!(matches!(v3::decode(&datagram), Ok(v3::Datagram::RegistrationResponse(_))));
                    }
                    other => prop_assert!(false, "v3 traffic asked for {:?}", other),
                }
            }
            prop_assert!(m.active() <= limit);
            prop_assert_eq!(opened, m.active() + closed);
        }
    }
}
