//! UDP session hot paths and state cost.
//!
//! `cargo bench -p burrow-core --bench session` prints allocations per packet on both paths
//! (and fails if either allocates), the heap bytes one idle session costs, and the heap after a
//! registration flood against the flow limit; then criterion times both paths with 10k live
//! sessions in the manager.

use std::hint::black_box;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use burrow_core::datagram::{v3, LinkId};
use burrow_core::session::{
    DatagramVersion, Inbound, SessionAction, SessionId, SessionLimits, SessionManager, UdpFlowId,
    HEADROOM, ORIGIN_READ, TAILROOM,
};
use criterion::{criterion_group, criterion_main, Criterion, Throughput};

mod common;
use common::{allocs_per_op, assert_no_allocations, live_bytes};

const SESSIONS: u128 = 10_000;
const LINK: LinkId = LinkId(0);
const PAYLOAD_LEN: usize = 1200;

fn registration(id: u128) -> Vec<u8> {
    let r = v3::Registration {
        request_id: SessionId(id),
        dest: SocketAddr::from(([10, 0, (id >> 8) as u8, id as u8], 53)),
        traced: false,
        idle_hint_secs: 0,
        payload: &[],
    };
    let mut out = vec![0; r.encoded_len()];
    r.encode(&mut out).expect("encode");
    out
}

/// Registers `ids` and opens every socket the manager asks for; returns the flows opened.
fn open_all(
    m: &mut SessionManager,
    now: Instant,
    ids: impl Iterator<Item = u128>,
) -> Vec<UdpFlowId> {
    let mut flows = Vec::new();
    for id in ids {
        m.handle_datagram(now, LINK, DatagramVersion::V3, &registration(id));
        while let Some(a) = m.poll_action() {
            if let SessionAction::Open { flow, .. } = a {
                m.handle_origin_opened(now, flow);
                flows.push(flow);
            }
        }
    }
    flows
}

fn payload_datagram(id: u128) -> Vec<u8> {
    let body = vec![0x5a; PAYLOAD_LEN];
    let p = v3::Payload {
        request_id: SessionId(id),
        payload: &body,
    };
    let mut out = vec![0; p.encoded_len()];
    p.encode(&mut out).expect("encode");
    out
}

fn edge_to_origin(m: &mut SessionManager, now: Instant, datagram: &[u8]) -> usize {
    match m.handle_datagram(now, LINK, DatagramVersion::V3, datagram) {
        Inbound::Forward { payload, .. } => payload.len(),
        other => panic!("not forwarded: {other:?}"),
    }
}

fn origin_to_edge(m: &mut SessionManager, now: Instant, flow: UdpFlowId, buf: &mut [u8]) -> usize {
    m.frame_origin(now, flow, buf, PAYLOAD_LEN)
        .expect("framed")
        .range
        .len()
}

/// Heap bytes per idle session, and the heap after a flood of 10x the flow limit.
fn report_memory(now: Instant) {
    let before = live_bytes();
    let mut m =
        SessionManager::new(SessionLimits::default()).with_flow_limit(SESSIONS as usize as u64);
    open_all(&mut m, now, 0..SESSIONS);
    let after = live_bytes();
    let per_session = (after - before) as f64 / SESSIONS as f64;
    println!(
        "idle session state: {per_session:.0} bytes each ({} sessions, {} KiB of heap)",
        SESSIONS,
        (after - before) / 1024
    );
    assert!(
        per_session <= 1024.0,
        "an idle session costs more than 1 KiB"
    );
    // 100k more registrations against the full limit: all refused, memory flat.
    let flood_start = live_bytes();
    open_all(&mut m, now, SESSIONS..SESSIONS * 11);
    let flood_end = live_bytes();
    println!(
        "flood of {} registrations over a {}-flow limit: heap {} -> {} bytes ({} sessions, {} refused)",
        SESSIONS * 10,
        SESSIONS,
        flood_start,
        flood_end,
        m.active(),
        m.stats().rate_limited
    );
    assert_eq!(m.active(), SESSIONS as usize);
    assert!(
        flood_end - flood_start < 64 * 1024,
        "a refused flood grew the heap"
    );
}

fn bench(c: &mut Criterion) {
    let now = Instant::now();
    report_memory(now);

    let mut m = SessionManager::new(SessionLimits::default());
    let flows = open_all(&mut m, now, 0..SESSIONS);
    let datagram = payload_datagram(SESSIONS / 2);
    let flow = flows[flows.len() / 2];
    let mut buf = vec![0u8; HEADROOM + ORIGIN_READ + TAILROOM];
    let later = now + Duration::from_millis(1);
    assert_no_allocations(&[
        (
            "edge->origin (decode, lookup, forward)",
            allocs_per_op(|| edge_to_origin(&mut m, later, &datagram)),
        ),
        (
            "origin->edge (lookup, frame in place)",
            allocs_per_op(|| origin_to_edge(&mut m, later, flow, &mut buf)),
        ),
    ]);

    let mut g = c.benchmark_group("session");
    g.throughput(Throughput::Elements(1));
    g.bench_function("edge_to_origin_1200B_10k_sessions", |b| {
        b.iter(|| edge_to_origin(&mut m, later, black_box(&datagram)))
    });
    g.bench_function("origin_to_edge_1200B_10k_sessions", |b| {
        b.iter(|| origin_to_edge(&mut m, later, black_box(flow), &mut buf))
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
