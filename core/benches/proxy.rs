//! The stream proxy's bulk paths, per MiB, the buffered way and the pass-through way.
//!
//! `cargo bench -p burrow-core --bench proxy` times one data stream's share of moving a body:
//! - download: 32 KiB origin reads (shared buffers, as the tokio driver hands them over) of an
//!   HTTP `Content-Length` body into what QUIC keeps. Buffered: copied into the stream's
//!   edge buffer, then copied again into QUIC (`SendStream::write`). Pass-through: the read's
//!   buffer itself goes to QUIC (`SendStream::write_chunks`).
//! - upload: packet-sized pieces as QUIC's receive side yields them, into one origin write of
//!   a TCP stream. Buffered: gathered in a scratch buffer, then copied into the origin buffer.
//!   Pass-through: copied into the origin buffer directly, sized once to what they hold.
//!
//! It also prints allocations per MiB of each.

use std::hint::black_box;

use burrow_core::rpc::frame::FrameLimits;
use burrow_core::stream::connect::{ConnectRequest, ConnectionType};
use burrow_core::stream::proxy::DataStream;
use bytes::Bytes;
use criterion::{criterion_group, criterion_main, Criterion, Throughput};

mod common;
use common::allocs_per_ops;

const MIB: usize = 1 << 20;
/// The data stream window the connector uses (`DataLimits::default`).
const WINDOW: usize = 256 * 1024;
/// The tokio driver's origin read size.
const READ: usize = 32 * 1024;
/// Stream bytes per QUIC packet.
const PACKET: usize = 1200;

/// A stream past its request, with its origin connected.
fn stream(kind: ConnectionType, dest: &str) -> DataStream {
    let mut request = Vec::new();
    ConnectRequest {
        dest,
        connection_type: kind,
        metadata: &[],
    }
    .encode_body(&mut request)
    .expect("encode");
    let mut s = DataStream::new(WINDOW, FrameLimits::CONNECT_REQUEST);
    s.on_edge_data(&request).expect("request").expect("target");
    s.on_origin_connected();
    s.to_edge().clear();
    s
}

/// An HTTP stream whose response head (a `Content-Length` no run reaches) has been read.
fn download_stream() -> DataStream {
    let mut s = stream(ConnectionType::Http, "http://localhost/big");
    s.to_origin().clear();
    let head = b"HTTP/1.1 200 OK\r\nContent-Length: 4611686018427387904\r\n\r\n";
    assert_eq!(s.on_origin_data(head), head.len());
    s.to_edge().clear();
    s
}

/// One MiB from the origin, copied twice on its way into `quic`.
fn download_buffered(s: &mut DataStream, reads: &[Bytes], quic: &mut Vec<Bytes>) {
    quic.clear();
    for read in reads {
        let mut at = 0;
        while at < read.len() {
            at += s.on_origin_data(&read[at..]);
            quic.push(Bytes::copy_from_slice(s.to_edge()));
            s.to_edge().clear();
        }
    }
}

/// One MiB from the origin, its buffers handed to `quic` as they are.
fn download_passthrough(s: &mut DataStream, reads: &[Bytes], quic: &mut Vec<Bytes>) {
    quic.clear();
    for read in reads {
        let n = s.passthrough_down().min(read.len());
        assert_eq!(n, read.len(), "a body read passes through whole");
        quic.push(read.slice(..n));
        s.passed_down(n);
    }
}

/// One MiB from the edge (in QUIC's packet-sized pieces) into origin writes, via scratch.
fn upload_buffered(s: &mut DataStream, packets: &[Bytes], scratch: &mut Vec<u8>) -> usize {
    let mut written = 0;
    for window in packets.chunks(WINDOW / PACKET) {
        scratch.clear();
        for p in window {
            scratch.extend_from_slice(p);
        }
        s.on_edge_data(scratch).expect("raw bytes");
        let write = Bytes::from(std::mem::take(s.to_origin()));
        written += black_box(write).len();
    }
    written
}

/// One MiB from the edge straight into origin writes.
fn upload_passthrough(s: &mut DataStream, packets: &[Bytes]) -> usize {
    let mut written = 0;
    for window in packets.chunks(WINDOW / PACKET) {
        // As `DataStreams` does: the pieces a read takes (up to the room), then one buffer of
        // their size.
        let n = window.iter().map(Bytes::len).sum();
        assert!(s.passthrough_up() >= n);
        let sink = s.to_origin();
        sink.reserve(n);
        for p in window {
            sink.extend_from_slice(p);
        }
        s.passed_up(n);
        let write = Bytes::from(std::mem::take(s.to_origin()));
        written += black_box(write).len();
    }
    written
}

fn benches(c: &mut Criterion) {
    let reads: Vec<Bytes> = (0..MIB / READ)
        .map(|i| Bytes::from(vec![i as u8; READ]))
        .collect();
    let packets: Vec<Bytes> = (0..MIB.div_ceil(PACKET))
        .map(|i| Bytes::from(vec![i as u8; PACKET.min(MIB - i * PACKET)]))
        .collect();

    let mut quic = Vec::with_capacity(2 * MIB / READ);
    let mut scratch = Vec::with_capacity(WINDOW);
    {
        let mut s = download_stream();
        let mut t = download_stream();
        let mut u = stream(ConnectionType::Tcp, "192.0.2.1:9");
        let mut v = stream(ConnectionType::Tcp, "192.0.2.1:9");
        println!(
            "allocations per MiB: download buffered {:.0}, pass-through {:.0}; upload buffered {:.0}, pass-through {:.0}",
            allocs_per_ops(100, || download_buffered(&mut s, &reads, &mut quic)),
            allocs_per_ops(100, || download_passthrough(&mut t, &reads, &mut quic)),
            allocs_per_ops(100, || upload_buffered(&mut u, &packets, &mut scratch)),
            allocs_per_ops(100, || upload_passthrough(&mut v, &packets)),
        );
    }

    let mut g = c.benchmark_group("download_1MiB");
    g.throughput(Throughput::Bytes(MIB as u64));
    let mut s = download_stream();
    g.bench_function("buffered", |b| {
        b.iter(|| download_buffered(&mut s, &reads, &mut quic))
    });
    let mut s = download_stream();
    g.bench_function("passthrough", |b| {
        b.iter(|| download_passthrough(&mut s, &reads, &mut quic))
    });
    g.finish();

    let mut g = c.benchmark_group("upload_1MiB");
    g.throughput(Throughput::Bytes(MIB as u64));
    let mut s = stream(ConnectionType::Tcp, "192.0.2.1:9");
    g.bench_function("buffered", |b| {
        b.iter(|| upload_buffered(&mut s, &packets, &mut scratch))
    });
    let mut s = stream(ConnectionType::Tcp, "192.0.2.1:9");
    g.bench_function("passthrough", |b| {
        b.iter(|| upload_passthrough(&mut s, &packets))
    });
    g.finish();
}

criterion_group!(proxy, benches);
criterion_main!(proxy);
