//! The edge's replies to `--udp-map` clients: 64 datagrams of 64 bytes to one client on
//! loopback, as one `sendmmsg` of 64 messages and as one segmented (UDP GSO) message, which
//! the kernel delivers to the reader in one go (`mmsg::send_many` without and with `segment`).
//!
//! `cargo bench -p burrow-tokio --bench mmsg`. The receiving socket is drained between
//! iterations, outside the timing, so each send finds room.

use std::net::{SocketAddr, UdpSocket};
use std::os::fd::AsFd;
use std::time::{Duration, Instant};

use burrow_tokio::mmsg;
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};

const DATAGRAMS: usize = 64;
const SIZE: usize = 64;

/// Reads what `rx` holds without waiting.
fn drain(rx: &UdpSocket, buf: &mut [u8]) {
    while rx.recv(buf).is_ok() {}
}

fn benches(c: &mut Criterion) {
    let tx = UdpSocket::bind("127.0.0.1:0").expect("bind");
    let rx = UdpSocket::bind("127.0.0.1:0").expect("bind");
    rx.set_nonblocking(true).expect("nonblocking");
    let to = rx.local_addr().expect("addr");
    let payloads: Vec<(SocketAddr, Vec<u8>)> =
        (0..DATAGRAMS).map(|i| (to, vec![i as u8; SIZE])).collect();
    let mut buf = [0u8; 2048];
    let segmenting = mmsg::segmenting_supported(tx.as_fd());
    if !segmenting {
        println!("this kernel does not segment UDP sends: both rows send plainly");
    }
    let mut g = c.benchmark_group("reply_64x64B");
    g.throughput(Throughput::Elements(DATAGRAMS as u64));
    for segment in [false, true] {
        let name = if segment { "segmented" } else { "sendmmsg" };
        g.bench_with_input(
            BenchmarkId::from_parameter(name),
            &segment,
            |b, &segment| {
                b.iter_custom(|iters| {
                    let mut spent = Duration::ZERO;
                    for _ in 0..iters {
                        let start = Instant::now();
                        let (sent, error) = mmsg::send_many(
                            tx.as_fd(),
                            &payloads,
                            if segment && segmenting { SIZE } else { 0 },
                            |(a, p)| (Some(*a), &p[..]),
                        );
                        spent += start.elapsed();
                        assert_eq!((sent, error.map(|e| e.kind())), (DATAGRAMS, None));
                        drain(&rx, &mut buf);
                    }
                    spent
                })
            },
        );
    }
    g.finish();
}

criterion_group!(mmsg_benches, benches);
criterion_main!(mmsg_benches);
