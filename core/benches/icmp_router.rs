//! ICMP router speed and allocation count: an echo request forwarded through an existing
//! funnel, and a ping socket's reply rewritten into the IP packet for the edge.
//!
//! `cargo bench -p burrow-core --bench icmp_router` prints, before criterion's timings, the
//! heap allocations per operation (counted by a global allocator wrapper) and fails if either
//! path allocates.

use std::hint::black_box;
use std::net::IpAddr;
use std::time::Instant;

use burrow_core::datagram::LinkId;
use burrow_core::icmp::{
    self, Echo, EchoKind, FunnelId, IcmpRouter, RouterAction, RouterConfig, Verdict,
};
use criterion::{criterion_group, criterion_main, Criterion, Throughput};

mod common;
use common::{allocs_per_op, assert_no_allocations};

/// Typical `ping` payload: 56 bytes.
const DATA: [u8; 56] = [0x5a; 56];
const LINK: LinkId = LinkId(1);
/// Offset of the TTL / hop-limit byte.
fn ttl_offset(v6: bool) -> usize {
    if v6 {
        7
    } else {
        8
    }
}

/// One family's fixture: a router with 1000 other funnels open, the request packet, the
/// funnel it maps to and the reply its socket reads (kernel ident in place of the id).
struct Fixture {
    router: IcmpRouter,
    now: Instant,
    v6: bool,
    packet: Vec<u8>,
    funnel: FunnelId,
    dst: IpAddr,
    reply: Vec<u8>,
}

impl Fixture {
    fn new(v6: bool) -> Self {
        let now = Instant::now();
        let mut router = IcmpRouter::new(RouterConfig::new(
            Some([172, 16, 0, 1].into()),
            Some("fd00::1".parse().expect("addr")),
        ));
        let (src, dst): (IpAddr, IpAddr) = if v6 {
            (
                "fd00::2".parse().expect("addr"),
                "2606:4700::1111".parse().expect("addr"),
            )
        } else {
            ([10, 0, 0, 2].into(), [1, 1, 1, 1].into())
        };
        let mut out = vec![0u8; 1500];
        for id in 1..=1000u16 {
            let mut p = echo(src, dst, EchoKind::Request, id);
            router
                .handle_request(now, LINK, &mut p, &mut out)
                .expect("forward");
        }
        let packet = echo(src, dst, EchoKind::Request, 0x4242);
        let mut p = packet.clone();
        let (funnel, mut reply) = match router.handle_request(now, LINK, &mut p, &mut out) {
            Ok(Verdict::Forward {
                funnel, message, ..
            }) => (funnel, message.to_vec()),
            other => panic!("expected a forward: {other:?}"),
        };
        while let Some(a) = router.poll_action() {
            assert!(matches!(a, RouterAction::OpenFunnel { .. }));
        }
        reply[0] = EchoKind::Reply.icmp_type(if v6 {
            icmp::IpVersion::V6
        } else {
            icmp::IpVersion::V4
        });
        reply[4..6].copy_from_slice(&0x9999u16.to_be_bytes());
        Self {
            router,
            now,
            v6,
            packet,
            funnel,
            dst,
            reply,
        }
    }

    /// Edge → origin: the request through its existing funnel. The packet's TTL is reset
    /// first (the router decrements it in place).
    fn forward(&mut self, packet: &mut [u8], out: &mut [u8]) -> usize {
        packet[ttl_offset(self.v6)] = 64;
        match self.router.handle_request(self.now, LINK, packet, out) {
            Ok(Verdict::Forward { message, .. }) => message.len(),
            _ => 0,
        }
    }

    /// Origin → edge: the socket's read rewritten into the reply packet.
    fn reply(&mut self, out: &mut [u8]) -> usize {
        match self
            .router
            .handle_reply(self.now, self.funnel, self.dst, &self.reply, out)
        {
            Ok((_, n)) => n,
            Err(_) => 0,
        }
    }
}

fn echo(src: IpAddr, dst: IpAddr, kind: EchoKind, id: u16) -> Vec<u8> {
    let mut out = vec![0u8; 256];
    let n = icmp::write_echo(
        &Echo {
            src,
            dst,
            ttl: 64,
            kind,
            id,
            seq: 1,
            data: &DATA,
        },
        &mut out,
    )
    .expect("encode");
    out.truncate(n);
    out
}

fn report_allocations(fixtures: &mut [Fixture]) {
    let mut out = vec![0u8; 1500];
    let mut rows = Vec::new();
    for f in fixtures {
        let family = if f.v6 { "v6" } else { "v4" };
        let mut packet = f.packet.clone();
        let forward = allocs_per_op(|| f.forward(&mut packet, &mut out));
        let reply = allocs_per_op(|| f.reply(&mut out));
        rows.push((format!("{family} request forward"), forward));
        rows.push((format!("{family} reply rewrite"), reply));
    }
    let rows: Vec<(&str, f64)> = rows.iter().map(|(n, a)| (n.as_str(), *a)).collect();
    assert_no_allocations(&rows);
}

fn bench(c: &mut Criterion) {
    let mut fixtures = [Fixture::new(false), Fixture::new(true)];
    report_allocations(&mut fixtures);

    let mut g = c.benchmark_group("icmp_router");
    g.throughput(Throughput::Elements(1));
    let mut out = vec![0u8; 1500];
    for f in &mut fixtures {
        let family = if f.v6 { "v6" } else { "v4" };
        let mut packet = f.packet.clone();
        g.bench_function(format!("{family}_request_forward_56B"), |b| {
            b.iter(|| f.forward(black_box(&mut packet), &mut out))
        });
        g.bench_function(format!("{family}_reply_rewrite_56B"), |b| {
            b.iter(|| f.reply(black_box(&mut out)))
        });
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
