//! Datagram codec speed and allocation count.
//!
//! `cargo bench -p burrow-core --bench datagram` prints, before criterion's timings, the number
//! of heap allocations each operation makes (counted by a global allocator wrapper) and fails if
//! any hot-path operation allocates.

use std::hint::black_box;
use std::net::SocketAddr;

use burrow_core::datagram::{v2, v3};
use criterion::{criterion_group, criterion_main, Criterion, Throughput};

mod common;
use common::{allocs_per_op, assert_no_allocations};

const PAYLOAD_LEN: usize = 1200;

/// A 1200-byte payload datagram as the edge would send it.
fn payload_datagram() -> Vec<u8> {
    let body = vec![0x5a; PAYLOAD_LEN];
    let mut out = vec![0u8; v3::MAX_PAYLOAD_DATAGRAM_LEN];
    let n = v3::Payload {
        request_id: v3::RequestId(0x0011_2233),
        payload: &body,
    }
    .encode(&mut out)
    .expect("encode");
    out.truncate(n);
    out
}

/// A registration with a bundled 64-byte payload to an IPv6 destination.
fn registration_datagram() -> Vec<u8> {
    let body = [0xab; 64];
    let mut out = vec![0u8; 256];
    let n = v3::Registration {
        request_id: v3::RequestId(42),
        dest: "[fd00::1]:4500".parse::<SocketAddr>().expect("addr"),
        traced: true,
        idle_hint_secs: 60,
        payload: &body,
    }
    .encode(&mut out)
    .expect("encode");
    out.truncate(n);
    out
}

/// Edge → connector: decode a payload datagram and re-encode it (a relay's full round).
fn v3_payload_round(input: &[u8], out: &mut [u8]) -> usize {
    match v3::decode(input) {
        Ok(v3::Datagram::Payload(p)) => p.encode(out).unwrap_or(0),
        _ => 0,
    }
}

fn v3_registration_round(input: &[u8], out: &mut [u8]) -> usize {
    match v3::decode(input) {
        Ok(v3::Datagram::Registration(r)) => r.encode(out).unwrap_or(0),
        _ => 0,
    }
}

/// Origin → edge: the payload already sits in the buffer; write the header in front.
fn v3_frame_in_place(buf: &mut [u8]) -> usize {
    v3::frame_payload_in_place(buf, v3::RequestId(7), PAYLOAD_LEN).unwrap_or(0)
}

fn v2_frame_and_decode(buf: &mut [u8]) -> usize {
    let n = v2::frame_udp_in_place(buf, PAYLOAD_LEN, uuid::Uuid::from_u128(7)).unwrap_or(0);
    match v2::decode(&buf[..n]) {
        Ok(v2::Datagram::Udp { payload, .. }) => payload.len(),
        _ => 0,
    }
}

fn report_allocations(payload: &[u8], registration: &[u8]) {
    let mut out = vec![0u8; 2048];
    let mut frame_buf = vec![0u8; v3::MAX_PAYLOAD_DATAGRAM_LEN];
    let mut v2_buf = vec![0u8; 2048];
    let rows = [
        (
            "v3 payload decode+encode",
            allocs_per_op(|| v3_payload_round(payload, &mut out)),
        ),
        (
            "v3 registration decode+encode",
            allocs_per_op(|| v3_registration_round(registration, &mut out)),
        ),
        (
            "v3 payload header in place",
            allocs_per_op(|| v3_frame_in_place(&mut frame_buf)),
        ),
        (
            "v2 udp frame in place+decode",
            allocs_per_op(|| v2_frame_and_decode(&mut v2_buf)),
        ),
    ];
    assert_no_allocations(&rows);
}

fn bench(c: &mut Criterion) {
    let payload = payload_datagram();
    let registration = registration_datagram();
    report_allocations(&payload, &registration);

    let mut g = c.benchmark_group("datagram");
    g.throughput(Throughput::Elements(1));
    let mut out = vec![0u8; 2048];
    g.bench_function("v3_payload_1200B_decode_encode", |b| {
        b.iter(|| v3_payload_round(black_box(&payload), &mut out))
    });
    g.bench_function("v3_registration_v6_bundled_decode_encode", |b| {
        b.iter(|| v3_registration_round(black_box(&registration), &mut out))
    });
    let mut frame_buf = vec![0u8; v3::MAX_PAYLOAD_DATAGRAM_LEN];
    g.bench_function("v3_payload_header_in_place", |b| {
        b.iter(|| v3_frame_in_place(black_box(&mut frame_buf)))
    });
    g.bench_function("v2_udp_frame_in_place_decode", |b| {
        b.iter(|| v2_frame_and_decode(black_box(&mut out)))
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
