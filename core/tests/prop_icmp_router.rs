//! The ICMP router under arbitrary input: no panics, the funnel bound holds, the driver's view
//! of open sockets matches the router's, and every echo round-trips to its requester.

use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::time::{Duration, Instant};

use burrow_core::datagram::LinkId;
use burrow_core::icmp::{
    self, icmpv6_checksum, internet_checksum, Echo, EchoKind, FunnelId, IcmpMessage, IcmpRouter,
    RouterAction, RouterConfig, Verdict,
};
use proptest::prelude::*;

const V4_SRC: Ipv4Addr = Ipv4Addr::new(172, 16, 0, 1);
const V6_SRC: Ipv6Addr = Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 1);

/// A small address pool so keys collide often.
fn pool_addr(v6: bool, i: u8) -> IpAddr {
    if v6 {
        Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, u16::from(i % 4)).into()
    } else {
        Ipv4Addr::new(10, 0, 0, i % 4).into()
    }
}

fn echo_bytes(echo: &Echo<'_>) -> Vec<u8> {
    let mut out = vec![0u8; 2048];
    let n = icmp::write_echo(echo, &mut out).expect("echo fits");
    out.truncate(n);
    out
}

#[derive(Debug, Clone)]
enum Op {
    /// A well-formed echo (request or reply) from the edge.
    Echo {
        link: u8,
        v6: bool,
        src: u8,
        dst: u8,
        ttl: u8,
        id: u8,
        request: bool,
    },
    /// Arbitrary bytes from the edge.
    Junk {
        link: u8,
        bytes: Vec<u8>,
    },
    /// A socket read on the n-th funnel the driver knows (or a made-up id).
    Reply {
        pick: u8,
        from: u8,
        v6: bool,
        bytes: Vec<u8>,
        echo_reply: bool,
    },
    Advance(u16),
    Timeout,
    LinkClosed(u8),
    Failed(u8),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (any::<u8>(), any::<bool>(), any::<u8>(), any::<u8>(), 0u8..4, 0u8..6, prop::bool::weighted(0.9))
            .prop_map(|(link, v6, src, dst, ttl, id, request)| Op::Echo {
                link: link % 3,
                v6,
                src,
                dst,
                ttl,
                id,
                request
            }),
        1 => (any::<u8>(), prop::collection::vec(any::<u8>(), 0..64))
            .prop_map(|(link, bytes)| Op::Junk { link: link % 3, bytes }),
        3 => (any::<u8>(), any::<u8>(), any::<bool>(), prop::collection::vec(any::<u8>(), 0..32), prop::bool::weighted(0.8))
            .prop_map(|(pick, from, v6, bytes, echo_reply)| Op::Reply { pick, from, v6, bytes, echo_reply }),
        2 => (0u16..4000).prop_map(Op::Advance),
        1 => Just(Op::Timeout),
        1 => (0u8..3).prop_map(Op::LinkClosed),
        1 => any::<u8>().prop_map(Op::Failed),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn any_sequence_keeps_the_bound_and_the_books(
        max_funnels in 0usize..5,
        idle_ms in 0u64..3000,
        v4_on in prop::bool::weighted(0.8),
        v6_on in prop::bool::weighted(0.8),
        ops in prop::collection::vec(op(), 0..80),
    ) {
        let t0 = Instant::now();
        let mut now = t0;
        let mut router = IcmpRouter::new(RouterConfig {
            ipv4_src: v4_on.then_some(V4_SRC),
            ipv6_src: v6_on.then_some(V6_SRC),
            idle_timeout: Duration::from_millis(idle_ms),
            max_funnels,
        });
        // The driver's sockets, as told by the actions.
        let mut open: BTreeSet<FunnelId> = BTreeSet::new();
        let mut ever: BTreeSet<FunnelId> = BTreeSet::new();
        let mut out = vec![0u8; 1500];
        for op in ops {
            let mut forwarded = None;
            match op {
                Op::Echo { link, v6, src, dst, ttl, id, request } => {
                    let mut packet = echo_bytes(&Echo {
                        src: pool_addr(v6, src),
                        dst: pool_addr(v6, dst),
                        ttl,
                        kind: if request { EchoKind::Request } else { EchoKind::Reply },
                        id: u16::from(id),
                        seq: 1,
                        data: b"abc",
                    });
                    if let Ok(Verdict::Forward { funnel, message, ttl: left, .. }) =
                        router.handle_request(now, LinkId(u64::from(link)), &mut packet, &mut out)
                    {
                        prop_assert!(request);
                        prop_assert_eq!(left, ttl - 1);
                        prop_assert_eq!(message.len(), 8 + 3);
                        forwarded = Some(funnel);
                    }
                }
                Op::Junk { link, mut bytes } => {
                    if let Ok(Verdict::Forward { funnel, .. }) =
                        router.handle_request(now, LinkId(u64::from(link)), &mut bytes, &mut out)
                    {
                        forwarded = Some(funnel);
                    }
                }
                Op::Reply { pick, from, v6, mut bytes, echo_reply } => {
                    let funnel = open
                        .iter()
                        .nth(usize::from(pick) % (open.len() + 1))
                        .copied()
                        .unwrap_or(FunnelId(u64::from(pick)));
                    if echo_reply && bytes.len() >= 8 {
                        bytes[0] = if v6 { 129 } else { 0 };
                    }
                    let before = router.poll_timeout();
                    let res = router.handle_reply(now, funnel, pool_addr(v6, from), &bytes, &mut out);
                    match res {
                        Ok((_, n)) => {
                            prop_assert!(open.contains(&funnel));
                            let p = icmp::parse(&out[..n]).expect("reply parses");
                            let is_reply = matches!(p.message(), IcmpMessage::EchoReply { .. });
                            prop_assert!(is_reply);
                        }
                        Err(_) => prop_assert_eq!(router.poll_timeout(), before),
                    }
                }
                Op::Advance(ms) => now += Duration::from_millis(u64::from(ms)),
                Op::Timeout => {
                    if let Some(t) = router.poll_timeout() {
                        now = now.max(t);
                        router.handle_timeout(t);
                        if let Some(next) = router.poll_timeout() {
                            prop_assert!(next > t);
                        }
                    }
                }
                Op::LinkClosed(link) => router.link_closed(LinkId(u64::from(link))),
                Op::Failed(pick) => {
                    if let Some(&f) = open.iter().nth(usize::from(pick) % (open.len() + 1)) {
                        router.handle_funnel_failed(f);
                        open.remove(&f);
                    }
                }
            }
            while let Some(action) = router.poll_action() {
                match action {
                    RouterAction::OpenFunnel { funnel, bind } => {
                        prop_assert!(ever.insert(funnel), "{} reused", funnel);
                        prop_assert!(open.insert(funnel));
                        prop_assert!(bind == IpAddr::V4(V4_SRC) || bind == IpAddr::V6(V6_SRC));
                    }
                    RouterAction::CloseFunnel { funnel } => prop_assert!(open.remove(&funnel)),
                }
            }
            if let Some(f) = forwarded {
                prop_assert!(open.contains(&f), "forward through an unopened funnel");
            }
            prop_assert!(router.funnels() <= max_funnels);
            prop_assert_eq!(router.funnels(), open.len());
        }
        // Everything idles out eventually, without a busy loop.
        let mut rounds = 0;
        while let Some(t) = router.poll_timeout() {
            router.handle_timeout(t);
            prop_assert!(router.poll_timeout().is_none_or(|next| next > t));
            rounds += 1;
            prop_assert!(rounds <= max_funnels);
        }
        prop_assert_eq!(router.funnels(), 0);
    }

    #[test]
    fn arbitrary_bytes_never_panic(
        request in prop::collection::vec(any::<u8>(), 0..128),
        reply in prop::collection::vec(any::<u8>(), 0..128),
        funnel in any::<u64>(),
        out_len in 0usize..1500,
    ) {
        let now = Instant::now();
        let mut router = IcmpRouter::new(RouterConfig::new(Some(V4_SRC), Some(V6_SRC)));
        let mut out = vec![0u8; out_len];
        let mut packet = request.clone();
        let _ = router.handle_request(now, LinkId(1), &mut packet, &mut out);
        let open = router.poll_action();
        for id in [FunnelId(funnel), FunnelId(0)] {
            for from in [IpAddr::V4(Ipv4Addr::LOCALHOST), IpAddr::V6(Ipv6Addr::LOCALHOST)] {
                let _ = router.handle_reply(now, id, from, &reply, &mut out);
            }
        }
        if let Some(RouterAction::OpenFunnel { funnel, .. }) = open {
            router.link_closed(LinkId(1));
            router.handle_funnel_failed(funnel);
        }
        router.handle_timeout(now + Duration::from_secs(60));
        prop_assert_eq!(router.funnels(), 0);
    }

    #[test]
    fn echo_round_trips_with_the_original_id(
        v6 in any::<bool>(),
        src4 in any::<Ipv4Addr>(), dst4 in any::<Ipv4Addr>(),
        src6 in any::<Ipv6Addr>(), dst6 in any::<Ipv6Addr>(),
        ttl in 2u8..=255,
        id in any::<u16>(),
        seq in any::<u16>(),
        ident in any::<u16>(),
        link in any::<u64>(),
        data in prop::collection::vec(any::<u8>(), 0..1200),
    ) {
        let (src, dst): (IpAddr, IpAddr) = if v6 {
            (src6.into(), dst6.into())
        } else {
            (src4.into(), dst4.into())
        };
        let now = Instant::now();
        let mut router = IcmpRouter::new(RouterConfig::new(Some(V4_SRC), Some(V6_SRC)));
        let mut packet = echo_bytes(&Echo { src, dst, ttl, kind: EchoKind::Request, id, seq, data: &data });
        let mut out = vec![0u8; 1500];
        let (funnel, mut reply) = match router.handle_request(now, LinkId(link), &mut packet, &mut out) {
            Ok(Verdict::Forward { funnel, dst: to, message, ttl: left }) => {
                prop_assert_eq!(to, dst);
                prop_assert_eq!(left, ttl - 1);
                (funnel, message.to_vec())
            }
            other => return Err(TestCaseError::fail(format!("{other:?}"))),
        };
        let opened = matches!(router.poll_action(), Some(RouterAction::OpenFunnel { funnel: f, .. }) if f == funnel);
        prop_assert!(opened);
        // The kernel: socket ident instead of the id, echo reply from dst, checksum its own.
        reply[0] = if v6 { 129 } else { 0 };
        reply[2..4].copy_from_slice(&[0, 0]);
        reply[4..6].copy_from_slice(&ident.to_be_bytes());
        let (to, n) = router.handle_reply(now, funnel, dst, &reply, &mut out).expect("reply routed");
        prop_assert_eq!(to, LinkId(link));
        let p = icmp::parse(&out[..n]).expect("reply parses");
        prop_assert_eq!((p.src(), p.dst(), p.ttl()), (dst, src, 255));
        prop_assert_eq!(p.message(), IcmpMessage::EchoReply { id, seq, data: &data });
        let checksum_ok = match (p.src(), p.dst()) {
            (IpAddr::V6(s), IpAddr::V6(d)) => icmpv6_checksum(s, d, p.icmp_bytes()) == 0,
            _ => internet_checksum(p.icmp_bytes()) == 0 && internet_checksum(&out[..20]) == 0,
        };
        prop_assert!(checksum_ok);
    }
}
