//! The QUIC receive path: what one UDP buffer costs [`EdgeEndpoint::handle_received`].
//!
//! `cargo bench -p burrow-core --bench quic_recv` has a raw quinn client send QUIC datagrams
//! to an edge through memory, as GSO batches fed to the edge as GRO buffers (`stride`), and
//! the edge hand each datagram out (`poll_datagram`) and acknowledge. It prints the heap
//! allocations of the edge's receive side (`handle_received` plus `poll_datagram`) per
//! received UDP buffer and per QUIC packet in it, then criterion's time for the edge's receive
//! side of 32 datagrams (the client's work is not timed). The
//! connector's receive path is the same code (`tunnel::quic_io::handle_received`).

use std::hint::black_box;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use burrow_core::quic::tls::{self, PostQuantum};
use burrow_core::quic::transport::QuicSettings;
use burrow_core::quic::SERVER_NAME;
use burrow_core::tunnel::edge::EdgeEndpoint;
use burrow_core::tunnel::Received;
use bytes::{Bytes, BytesMut};
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use quinn_proto::{ClientConfig, DatagramEvent, Endpoint, EndpointConfig, ServerConfig};
use rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};

mod common;
use common::allocations;

const EDGE: &str = "192.0.2.1:7844";
const CLIENT: &str = "198.51.100.1:50000";

fn tls_pair() -> (ServerConfig, ClientConfig) {
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519).expect("key");
    let cert = rcgen::CertificateParams::new(vec![SERVER_NAME.into()])
        .expect("params")
        .self_signed(&key)
        .expect("cert");
    let key = PrivateKeyDer::from(PrivatePkcs8KeyDer::from(key.serialize_der()));
    let mut server = ServerConfig::with_crypto(Arc::new(
        tls::server_config(vec![cert.der().clone()], key, PostQuantum::Prefer).expect("tls"),
    ));
    server.transport_config(QuicSettings::edge().transport_config(true));
    let mut roots = rustls::RootCertStore::empty();
    roots.add(cert.der().clone()).expect("root");
    let mut client = ClientConfig::new(Arc::new(
        tls::client_config(roots, PostQuantum::Prefer).expect("tls"),
    ));
    client.transport_config(QuicSettings::default().transport_config(true));
    (server, client)
}

/// An edge and one raw client connection, moved by hand on a virtual clock.
struct Pair {
    edge: EdgeEndpoint,
    client: Endpoint,
    handle: quinn_proto::ConnectionHandle,
    conn: quinn_proto::Connection,
    now: Instant,
    buf: Vec<u8>,
    /// Allocations counted inside the edge's receive side.
    edge_allocs: u64,
    /// Time spent inside the edge's receive side.
    edge_time: Duration,
}

impl Pair {
    fn new() -> Self {
        let (server, cfg) = tls_pair();
        let now = Instant::now();
        let mut client = Endpoint::new(
            Arc::new(EndpointConfig::default()),
            None,
            true,
            Some([7; 32]),
        );
        let (handle, conn) = client
            .connect(now, cfg, EDGE.parse().expect("addr"), SERVER_NAME)
            .expect("connect");
        let mut p = Self {
            edge: EdgeEndpoint::new(server, [1; 32]),
            client,
            handle,
            conn,
            now,
            buf: Vec::new(),
            edge_allocs: 0,
            edge_time: Duration::ZERO,
        };
        for _ in 0..20 {
            p.client_to_edge(1);
            p.edge_to_client();
        }
        assert!(!p.conn.is_handshaking(), "handshake did not finish");
        p
    }

    /// Sends what the client has, `batch` datagrams per GRO buffer, into the edge; the edge
    /// hands out every QUIC datagram. Returns the UDP buffers moved.
    fn client_to_edge(&mut self, batch: usize) -> usize {
        let from: SocketAddr = CLIENT.parse().expect("addr");
        let mut buffers = 0;
        loop {
            self.buf.clear();
            let Some(t) = self.conn.poll_transmit(self.now, batch, &mut self.buf) else {
                break;
            };
            let received = Received {
                from,
                ecn: None,
                data: &self.buf[..t.size],
                stride: t.segment_size.unwrap_or(t.size),
            };
            let (before, started) = (allocations(), Instant::now());
            self.edge.handle_received(self.now, &received);
            while let Some((_, d)) = self.edge.poll_datagram() {
                black_box(d);
            }
            self.edge_time += started.elapsed();
            self.edge_allocs += allocations() - before;
            buffers += 1;
        }
        buffers
    }

    /// The edge's answers (ACKs) into the client.
    fn edge_to_client(&mut self) {
        let mut out = Vec::new();
        let mut scratch = Vec::new();
        while let Some(t) = self.edge.poll_transmit(self.now, 1, &mut out) {
            let data = BytesMut::from(&out[..t.size]);
            out.clear();
            if let Some(DatagramEvent::ConnectionEvent(_, ev)) = self.client.handle(
                self.now,
                EDGE.parse().expect("addr"),
                None,
                None,
                data,
                &mut scratch,
            ) {
                self.conn.handle_event(ev);
            }
        }
        while let Some(ev) = self.conn.poll_endpoint_events() {
            if let Some(ev) = self.client.handle_event(self.handle, ev) {
                self.conn.handle_event(ev);
            }
        }
        while self.conn.poll().is_some() {}
    }

    /// One round: the client queues `n` datagrams of `payload`, sends them in GRO buffers of
    /// up to `batch`, the edge takes them and acknowledges. Returns the buffers moved.
    fn round(&mut self, n: usize, payload: &Bytes, batch: usize) -> usize {
        self.now += Duration::from_micros(200);
        for _ in 0..n {
            self.conn
                .datagrams()
                .send(payload.clone(), true)
                .expect("datagram");
        }
        let buffers = self.client_to_edge(batch);
        self.edge.handle_timeout(self.now);
        self.edge_to_client();
        buffers
    }
}

/// Allocations of the edge's receive side per UDP buffer and per QUIC packet, for `len`-byte
/// datagrams, `batch` packets per GRO buffer.
fn allocations_per_buffer(len: usize, batch: usize) -> (f64, f64) {
    let mut p = Pair::new();
    let payload = Bytes::from(vec![0x5a; len]);
    // Warm up: windows, ACK state and buffers reach their steady state.
    for _ in 0..200 {
        p.round(32, &payload, batch);
    }
    p.edge_allocs = 0;
    let (mut buffers, mut packets) = (0usize, 0usize);
    for _ in 0..2000 {
        let before = p.conn.stats().udp_tx.datagrams;
        buffers += p.round(32, &payload, batch);
        packets += (p.conn.stats().udp_tx.datagrams - before) as usize;
    }
    (
        p.edge_allocs as f64 / buffers as f64,
        p.edge_allocs as f64 / packets as f64,
    )
}

fn bench(c: &mut Criterion) {
    println!(
        "edge receive side, allocations (counting global allocator, 2000 rounds of 32 datagrams):"
    );
    for (len, batch) in [(64, 1), (64, 10), (1100, 1), (1100, 10), (1100, 32)] {
        let (per_buffer, per_packet) = allocations_per_buffer(len, batch);
        println!(
            "  {len:>4} B datagrams, up to {batch:>2} packets per buffer: {per_buffer:.3} per buffer, {per_packet:.3} per packet"
        );
    }

    let mut g = c.benchmark_group("edge_receive");
    for (len, batch) in [(64, 10), (1100, 10)] {
        let payload = Bytes::from(vec![0x5a; len]);
        g.throughput(Throughput::Elements(32));
        // Only the edge's receive side is timed, not the client making the packets.
        g.bench_function(format!("32 datagrams of {len} B, GRO {batch}"), |b| {
            let mut p = Pair::new();
            b.iter_custom(|iters| {
                p.edge_time = Duration::ZERO;
                for _ in 0..iters {
                    p.round(32, &payload, batch);
                }
                p.edge_time
            });
        });
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
