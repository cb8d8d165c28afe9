//! Sending QUIC's datagrams through [`QuicSocket`]: 256 KiB of 1200-byte datagrams on
//! loopback in GSO batches of 1 (no GSO), 10 (quinn's cap, burrow's before) and 40 (burrow's
//! now), one `sendmsg` per batch.
//!
//! `cargo bench -p burrow-tokio --bench quic_socket`. The receiving socket is never read: its
//! buffer fills and the kernel drops the rest, which costs the sender the same for every batch
//! size, so the differences are the per-`sendmsg` costs a larger batch saves.

use std::net::SocketAddr;

use burrow_core::tunnel::Transmit;
use burrow_tokio::quic_socket::QuicSocket;
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};

const BYTES: usize = 256 * 1024;
const DATAGRAM: usize = 1200;

fn send_all(socket: &QuicSocket, to: SocketAddr, batch: usize, buf: &[u8]) {
    let per = batch * DATAGRAM;
    let mut left = BYTES;
    while left > 0 {
        let size = left.min(per);
        let t = Transmit {
            destination: to,
            size,
            segment_size: (batch > 1 && size > DATAGRAM).then_some(DATAGRAM),
            ecn: None,
        };
        // A full buffer is a drop, as on the daemons' sockets; the cost is the same.
        let _ = socket.try_send(&t, &buf[..size]);
        left -= size;
    }
}

fn benches(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .build()
        .expect("runtime");
    let (tx, rx) = rt.block_on(async {
        let tx = QuicSocket::bind("127.0.0.1:0".parse().unwrap())
            .await
            .expect("bind");
        let rx = QuicSocket::bind("127.0.0.1:0".parse().unwrap())
            .await
            .expect("bind");
        (tx, rx)
    });
    let to = rx.local_addr().expect("addr");
    let max = tx.max_transmit_segments();
    let buf = vec![0x5a; 64 * DATAGRAM];
    let mut g = c.benchmark_group("send_256KiB");
    g.throughput(Throughput::Bytes(BYTES as u64));
    for batch in [1, 10, 40] {
        if batch > max {
            println!("batch {batch}: this platform's GSO takes fewer; skipped");
            continue;
        }
        g.bench_with_input(BenchmarkId::from_parameter(batch), &batch, |b, &batch| {
            b.iter(|| send_all(&tx, to, batch, &buf))
        });
    }
    g.finish();
    println!("the daemons batch up to {max} datagrams per sendmsg here");
    drop(rx);
}

criterion_group!(quic_socket, benches);
criterion_main!(quic_socket);
