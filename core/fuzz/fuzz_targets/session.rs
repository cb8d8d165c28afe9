#![no_main]
//! Any bytes as a stream of datagrams (v3 and v2) and origin events through one session
//! manager: no panic, the flow limit holds, and every origin packet either frames within the
//! buffer or is refused.

use std::time::{Duration, Instant};

use burrow_core::datagram::LinkId;
use burrow_core::session::{
    DatagramVersion, SessionAction, SessionLimits, SessionManager, HEADROOM, ORIGIN_READ,
    TAILROOM,
};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let t0 = Instant::now();
    let mut m = SessionManager::new(SessionLimits::default())
        .with_flow_limit(8);
    let mut buf = vec![0u8; HEADROOM + ORIGIN_READ + TAILROOM];
    let mut flows = Vec::new();
    // Each record: [op, len, bytes...].
    let mut rest = data;
    let mut now = t0;
    while rest.len() >= 2 {
        let (op, len) = (rest[0], rest[1] as usize);
        let body = &rest[2..(2 + len).min(rest.len())];
        rest = &rest[(2 + len).min(rest.len())..];
        let link = LinkId(u64::from(op >> 6));
        match op % 6 {
            0 => drop(m.handle_datagram(now, link, DatagramVersion::V3, body)),
            1 => drop(m.handle_datagram(now, link, DatagramVersion::V2, body)),
            2 => now += Duration::from_secs(u64::from(op)),
            3 => {
                if let Some(&f) = flows.get(len % flows.len().max(1)) {
                    let n = body.len();
                    let _ = m.frame_origin(now, f, &mut buf, n);
                }
            }
            4 => m.link_closed(link, (op & 1 == 0).then_some(LinkId(9))),
            _ => m.handle_timeout(now),
        }
        while let Some(a) = m.poll_action() {
            if let SessionAction::Open { flow, .. } = a {
                if op & 0x20 == 0 {
                    m.handle_origin_opened(now, flow);
                    flows.push(flow);
                } else {
                    m.handle_origin_failed(now, flow, "refused");
                }
            }
        }
        assert!(m.active() <= 8);
        // A timer that is due, once handled, must move past now (no busy loop).
        if m.poll_timeout().is_some_and(|t| t <= now) {
            m.handle_timeout(now);
            assert!(m.poll_timeout().is_none_or(|t| t > now));
        }
    }
});
