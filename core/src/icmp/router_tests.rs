//! The ICMP router against cloudflared's vectors and a simulated kernel of ping sockets.

use core::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::collections::HashMap;
use std::time::{Duration, Instant};

use super::*;
use crate::icmp::{
    icmpv6_checksum, internet_checksum, IcmpPacket, PROTO_ICMPV6, TTL_EXCEEDED_MAX_V6,
};

const V4_SRC: Ipv4Addr = Ipv4Addr::new(172, 16, 0, 1);
const V6_SRC: Ipv6Addr = Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 1);
const LINK: LinkId = LinkId(1);

fn config() -> RouterConfig {
    RouterConfig::new(Some(V4_SRC), Some(V6_SRC))
}

fn addr(s: &str) -> IpAddr {
    s.parse().unwrap()
}

/// An echo request packet as the edge would deliver it.
fn request(src: &str, dst: &str, ttl: u8, id: u16, seq: u16, data: &[u8]) -> Vec<u8> {
    echo_packet(EchoKind::Request, addr(src), addr(dst), ttl, id, seq, data)
}

fn echo_packet(
    kind: EchoKind,
    src: IpAddr,
    dst: IpAddr,
    ttl: u8,
    id: u16,
    seq: u16,
    data: &[u8],
) -> Vec<u8> {
    let echo = Echo {
        src,
        dst,
        ttl,
        kind,
        id,
        seq,
        data,
    };
    let mut out = vec![0u8; 2048];
    let n = write_echo(&echo, &mut out).unwrap();
    out.truncate(n);
    out
}

fn checksums_ok(p: &IcmpPacket<'_>) -> bool {
    match (p.src(), p.dst()) {
        (IpAddr::V6(s), IpAddr::V6(d)) => icmpv6_checksum(s, d, p.icmp_bytes()) == 0,
        _ => {
            internet_checksum(p.icmp_bytes()) == 0
                && internet_checksum(&p.raw()[..p.icmp_offset()]) == 0
        }
    }
}

fn drain(router: &mut IcmpRouter) -> Vec<RouterAction> {
    std::iter::from_fn(|| router.poll_action()).collect()
}

/// What the driver learns from a forwarded request (owned, so the packet can be reused).
#[derive(Debug, Clone, PartialEq)]
struct Sent {
    funnel: FunnelId,
    dst: IpAddr,
    message: Vec<u8>,
}

fn forward(router: &mut IcmpRouter, now: Instant, link: LinkId, packet: &[u8]) -> Sent {
    let mut packet = packet.to_vec();
    match router.handle_request(now, link, &mut packet, &mut [0u8; 1500]) {
        Ok(Verdict::Forward {
            funnel,
            dst,
            message,
            ..
        }) => Sent {
            funnel,
            dst,
            message: message.to_vec(),
        },
        other => panic!("expected a forward, got {other:?}"),
    }
}

/// Linux ping sockets as the driver would see them: each socket gets its own ident, which
/// replaces the echo id on the way out; the destination answers with that ident.
#[derive(Default)]
struct Kernel {
    idents: HashMap<FunnelId, u16>,
    next_ident: u16,
}

impl Kernel {
    fn apply(&mut self, actions: &[RouterAction]) {
        for a in actions {
            match *a {
                RouterAction::OpenFunnel { funnel, .. } => {
                    self.next_ident = self.next_ident.wrapping_add(7919);
                    assert!(self.idents.insert(funnel, self.next_ident).is_none());
                }
                RouterAction::CloseFunnel { funnel } => {
                    assert!(self.idents.remove(&funnel).is_some());
                }
            }
        }
    }

    /// The echo reply `sent.dst` returns for `sent`, as the socket reads it (no IP header).
    fn echo_back(&self, sent: &Sent) -> Vec<u8> {
        let ident = self.idents[&sent.funnel];
        let mut m = sent.message.clone();
        m[0] = EchoKind::Reply.icmp_type(IpVersion::of(sent.dst));
        m[4..6].copy_from_slice(&ident.to_be_bytes());
        // The kernel verified and rewrote the checksum; the router must not rely on it.
        m[2..4].copy_from_slice(&[0xde, 0xad]);
        m
    }
}

/// `(name, input, router_ip, expected)` for every TTL-exceeded vector of icmp.json.
fn ttl_exceeded_vectors() -> Vec<(String, Vec<u8>, IpAddr, Vec<u8>)> {
    let json = include_str!("../../../testvectors/vectors/icmp.json");
    let field = |chunk: &str, key: &str| -> String {
        let pat = format!("\"{key}\": \"");
        let start = chunk.find(&pat).unwrap_or_else(|| panic!("{key} missing")) + pat.len();
        let len = chunk[start..].find('"').unwrap();
        chunk[start..start + len].to_string()
    };
    json.split("\"name\": \"")
        .skip(1)
        .filter(|chunk| chunk.contains("\"icmp.ttl_exceeded\""))
        .map(|chunk| {
            let name = chunk[..chunk.find('"').unwrap()].to_string();
            (
                name,
                ::hex::decode(field(chunk, "input_hex")).unwrap(),
                addr(&field(chunk, "router_ip")),
                ::hex::decode(field(chunk, "expected_hex")).unwrap(),
            )
        })
        .collect()
}

#[test]
fn ttl_one_answers_with_cloudflareds_bytes() {
    let vectors = ttl_exceeded_vectors();
    assert_eq!(vectors.len(), 4, "two IPv4 and two IPv6 vectors");
    let now = Instant::now();
    for (name, mut input, router_ip, expected) in vectors {
        let cfg = match router_ip {
            IpAddr::V4(a) => RouterConfig::new(Some(a), None),
            IpAddr::V6(a) => RouterConfig::new(None, Some(a)),
        };
        let mut router = IcmpRouter::new(cfg);
        let original = input.clone();
        let mut out = [0u8; TTL_EXCEEDED_MAX_V6];
        let verdict = router.handle_request(now, LINK, &mut input, &mut out);
        let Ok(Verdict::Reply { len }) = verdict else {
            panic!("{name}: {verdict:?}");
        };
        assert_eq!(&out[..len], &expected[..], "{name}");
        assert_eq!(input, original, "{name}: the packet is left alone");
        assert_eq!(router.funnels(), 0, "{name}");
        assert_eq!(router.poll_action(), None, "{name}");
        assert_eq!(router.poll_timeout(), None, "{name}");
    }
}

#[test]
fn ttl_zero_too_and_family_without_source() {
    let now = Instant::now();
    let mut v4 = request("10.0.0.2", "1.1.1.1", 0, 1, 1, b"x");
    let mut v6 = request("fd00::2", "2606:4700::1111", 1, 1, 1, b"x");
    let mut out = [0u8; TTL_EXCEEDED_MAX_V6];

    let mut router = IcmpRouter::new(config());
    assert!(matches!(
        router.handle_request(now, LINK, &mut v4, &mut out),
        Ok(Verdict::Reply { .. })
    ));

    let mut v6_only = IcmpRouter::new(RouterConfig::new(None, Some(V6_SRC)));
    let err = v6_only
        .handle_request(now, LINK, &mut v4, &mut out)
        .unwrap_err();
    assert_eq!(
        err,
        RouteError::ProxyNotInstantiated {
            version: IpVersion::V4
        }
    );
    assert_eq!(err.to_string(), "ICMPv4 proxy was not instantiated");
    assert_eq!(err.kind(), RouteErrorKind::Unavailable);

    let mut v4_only = IcmpRouter::new(RouterConfig::new(Some(V4_SRC), None));
    let err = v4_only
        .handle_request(now, LINK, &mut v6, &mut out)
        .unwrap_err();
    assert_eq!(err.to_string(), "ICMPv6 proxy was not instantiated");
    // Forwarding needs the family's bind address too.
    let mut v6_fwd = request("fd00::2", "2606:4700::1111", 64, 1, 1, b"x");
    assert_eq!(
        v4_only.handle_request(now, LINK, &mut v6_fwd, &mut out),
        Err(RouteError::ProxyNotInstantiated {
            version: IpVersion::V6
        })
    );
    assert_eq!(v4_only.funnels(), 0);
}

#[test]
fn forward_decrements_ttl_and_borrows_the_message() {
    let now = Instant::now();
    for (src, dst, bind, header_len) in [
        ("10.0.0.2", "1.1.1.1", IpAddr::V4(V4_SRC), 20),
        ("fd00::2", "2606:4700::1111", IpAddr::V6(V6_SRC), 40),
    ] {
        let mut router = IcmpRouter::new(config());
        let mut packet = request(src, dst, 64, 0x1234, 7, b"ping-payload");
        let icmp_before = packet[header_len..].to_vec();
        let base = packet.as_ptr() as usize;
        let mut out = [0u8; 64];
        let verdict = router
            .handle_request(now, LINK, &mut packet, &mut out)
            .unwrap();
        let Verdict::Forward {
            funnel,
            dst: to,
            message,
            ttl,
        } = verdict
        else {
            panic!("{verdict:?}");
        };
        assert_eq!(to, addr(dst));
        assert_eq!(ttl, 63);
        assert_eq!(message, &icmp_before[..], "ICMP message untouched");
        assert_eq!(message.as_ptr() as usize, base + header_len, "borrowed");
        let p = parse(&packet).unwrap();
        assert_eq!(p.ttl(), 63);
        assert!(checksums_ok(&p), "IPv4 header checksum recomputed");
        assert_eq!(
            drain(&mut router),
            [RouterAction::OpenFunnel { funnel, bind }]
        );
        assert_eq!(router.funnels(), 1);
    }
}

#[test]
fn reply_gets_the_original_id_back_and_goes_to_the_requesters_link() {
    let t0 = Instant::now();
    for (src, dst) in [("10.0.0.2", "1.1.1.1"), ("fd00::2", "2606:4700::1111")] {
        let mut router = IcmpRouter::new(config());
        let mut kernel = Kernel::default();
        let link = LinkId(42);
        for seq in 1..=3u16 {
            let req = request(src, dst, 64, 0xbeef, seq, b"hello, origin");
            let sent = forward(&mut router, t0, link, &req);
            kernel.apply(&drain(&mut router));
            let reply = kernel.echo_back(&sent);
            assert_ne!(reply[4..6], 0xbeefu16.to_be_bytes(), "kernel ident differs");
            let mut out = [0u8; 1500];
            let (to, n) = router
                .handle_reply(t0, sent.funnel, addr(dst), &reply, &mut out)
                .unwrap();
            assert_eq!(to, link);
            let p = parse(&out[..n]).unwrap();
            assert_eq!((p.src(), p.dst(), p.ttl()), (addr(dst), addr(src), 255));
            assert_eq!(
                p.message(),
                IcmpMessage::EchoReply {
                    id: 0xbeef,
                    seq,
                    data: b"hello, origin"
                }
            );
            assert!(checksums_ok(&p));
            // Byte-identical to cloudflared's re-encoding of the reply.
            let want = echo_packet(
                EchoKind::Reply,
                addr(dst),
                addr(src),
                255,
                0xbeef,
                seq,
                b"hello, origin",
            );
            assert_eq!(&out[..n], &want[..]);
        }
        assert_eq!(router.funnels(), 1, "one socket for the whole ping");
    }
}

#[test]
fn same_echo_id_from_two_requesters_gets_two_funnels() {
    let now = Instant::now();
    let mut router = IcmpRouter::new(config());
    let mut kernel = Kernel::default();
    let a = forward(
        &mut router,
        now,
        LinkId(1),
        &request("10.0.0.2", "1.1.1.1", 64, 9, 1, b"a"),
    );
    let b = forward(
        &mut router,
        now,
        LinkId(2),
        &request("10.0.0.3", "1.1.1.1", 64, 9, 1, b"b"),
    );
    // Same requester and id, other destination: a third funnel.
    let c = forward(
        &mut router,
        now,
        LinkId(1),
        &request("10.0.0.2", "8.8.8.8", 64, 9, 1, b"c"),
    );
    assert!(a.funnel != b.funnel && b.funnel != c.funnel && a.funnel != c.funnel);
    let actions = drain(&mut router);
    assert_eq!(actions.len(), 3);
    kernel.apply(&actions);
    assert_eq!(router.funnels(), 3);

    let mut out = [0u8; 1500];
    for (sent, link, requester) in [
        (&b, LinkId(2), "10.0.0.3"),
        (&a, LinkId(1), "10.0.0.2"),
        (&c, LinkId(1), "10.0.0.2"),
    ] {
        let reply = kernel.echo_back(sent);
        let (to, n) = router
            .handle_reply(now, sent.funnel, sent.dst, &reply, &mut out)
            .unwrap();
        assert_eq!(to, link);
        let p = parse(&out[..n]).unwrap();
        assert_eq!((p.src(), p.dst()), (sent.dst, addr(requester)));
        assert!(matches!(p.message(), IcmpMessage::EchoReply { id: 9, .. }));
    }
}

#[test]
fn migration_rebinds_and_keeps_the_socket() {
    let t0 = Instant::now();
    let mut router = IcmpRouter::new(config());
    let mut kernel = Kernel::default();
    let req = request("fd00::2", "2606:4700::1111", 64, 5, 1, b"m");
    let first = forward(&mut router, t0, LinkId(1), &req);
    kernel.apply(&drain(&mut router));
    let mut out = [0u8; 1500];
    let reply = kernel.echo_back(&first);

    // The same ping now arrives over another connection (cloudflared: new socket, B§5 #21).
    let second = forward(&mut router, t0, LinkId(2), &req);
    assert_eq!(second.funnel, first.funnel);
    assert_eq!(router.poll_action(), None, "no socket closed or opened");
    let (to, _) = router
        .handle_reply(t0, first.funnel, first.dst, &reply, &mut out)
        .unwrap();
    assert_eq!(to, LinkId(2));

    // Link 2 drops: replies have nowhere to go, but the funnel waits to be re-bound.
    router.link_closed(LinkId(2));
    router.link_closed(LinkId(7)); // unrelated: no effect
    let err = router
        .handle_reply(t0, first.funnel, first.dst, &reply, &mut out)
        .unwrap_err();
    assert_eq!(
        err,
        RouteError::LinkClosed {
            funnel: first.funnel
        }
    );
    assert_eq!(err.kind(), RouteErrorKind::Unavailable);
    assert_eq!(router.funnels(), 1);
    assert_eq!(router.poll_action(), None);

    let t1 = t0 + Duration::from_secs(3);
    let third = forward(&mut router, t1, LinkId(3), &req);
    assert_eq!(third.funnel, first.funnel);
    let (to, _) = router
        .handle_reply(t1, first.funnel, first.dst, &reply, &mut out)
        .unwrap();
    assert_eq!(to, LinkId(3));

    // Orphaned again and never re-bound: closed at idle expiry; dropped replies do not count
    // as activity.
    router.link_closed(LinkId(3));
    let t2 = t1 + Duration::from_secs(5);
    assert!(router
        .handle_reply(t2, first.funnel, first.dst, &reply, &mut out)
        .is_err());
    assert_eq!(router.poll_timeout(), Some(t1 + DEFAULT_IDLE_TIMEOUT));
    router.handle_timeout(t1 + DEFAULT_IDLE_TIMEOUT);
    assert_eq!(
        drain(&mut router),
        [RouterAction::CloseFunnel {
            funnel: first.funnel
        }]
    );
    assert_eq!(router.funnels(), 0);
}

#[test]
fn idle_expiry_on_virtual_time() {
    let t0 = Instant::now();
    let secs = |s: u64| t0 + Duration::from_secs(s);
    let mut router = IcmpRouter::new(config());
    let mut kernel = Kernel::default();
    let req = request("10.0.0.2", "1.1.1.1", 64, 1, 1, b"i");
    let sent = forward(&mut router, t0, LINK, &req);
    kernel.apply(&drain(&mut router));
    assert_eq!(router.poll_timeout(), Some(secs(10)));

    // A send refreshes…
    forward(&mut router, secs(5), LINK, &req);
    assert_eq!(router.poll_timeout(), Some(secs(15)));
    // …and so does a returned reply.
    let reply = kernel.echo_back(&sent);
    let mut out = [0u8; 1500];
    router
        .handle_reply(secs(12), sent.funnel, sent.dst, &reply, &mut out)
        .unwrap();
    assert_eq!(router.poll_timeout(), Some(secs(22)));
    // A reply that is dropped does not.
    assert!(router
        .handle_reply(secs(13), sent.funnel, sent.dst, &reply[..7], &mut out)
        .is_err());
    assert_eq!(router.poll_timeout(), Some(secs(22)));

    router.handle_timeout(secs(22) - Duration::from_nanos(1));
    assert_eq!(router.funnels(), 1);
    assert_eq!(router.poll_action(), None);
    router.handle_timeout(secs(22));
    let actions = drain(&mut router);
    assert_eq!(
        actions,
        [RouterAction::CloseFunnel {
            funnel: sent.funnel
        }]
    );
    kernel.apply(&actions);
    assert_eq!((router.funnels(), router.poll_timeout()), (0, None));
    assert_eq!(
        router.handle_reply(secs(23), sent.funnel, sent.dst, &reply, &mut out),
        Err(RouteError::UnknownFunnel {
            funnel: sent.funnel
        })
    );

    // The next request opens a new funnel with a new id.
    let again = forward(&mut router, secs(30), LINK, &req);
    assert_ne!(again.funnel, sent.funnel);
    assert!(matches!(
        drain(&mut router)[..],
        [RouterAction::OpenFunnel { funnel, .. }] if funnel == again.funnel
    ));
}

#[test]
fn at_the_bound_the_least_recently_active_funnel_is_evicted() {
    let t0 = Instant::now();
    let at = |ms: u64| t0 + Duration::from_millis(ms);
    let mut router = IcmpRouter::new(RouterConfig {
        max_funnels: 3,
        ..config()
    });
    let req = |id: u16| request("10.0.0.2", "1.1.1.1", 64, id, 1, b"e");
    let f1 = forward(&mut router, at(0), LINK, &req(1)).funnel;
    let f2 = forward(&mut router, at(1), LINK, &req(2)).funnel;
    let f3 = forward(&mut router, at(2), LINK, &req(3)).funnel;
    drain(&mut router);
    // f1 is used again, so f2 is now the least recently active.
    assert_eq!(forward(&mut router, at(3), LINK, &req(1)).funnel, f1);
    let f4 = forward(&mut router, at(4), LINK, &req(4)).funnel;
    assert_eq!(
        drain(&mut router),
        [
            RouterAction::CloseFunnel { funnel: f2 },
            RouterAction::OpenFunnel {
                funnel: f4,
                bind: IpAddr::V4(V4_SRC)
            }
        ]
    );
    assert_eq!(router.funnels(), 3);
    let reply = [0u8, 0, 0, 0, 0, 0, 0, 1];
    assert_eq!(
        router.handle_reply(at(5), f2, addr("1.1.1.1"), &reply, &mut [0u8; 64]),
        Err(RouteError::UnknownFunnel { funnel: f2 })
    );
    assert!(router
        .handle_reply(at(5), f3, addr("1.1.1.1"), &reply, &mut [0u8; 64])
        .is_ok());
    // f3 was just refreshed, so f1 goes next.
    let f5 = forward(&mut router, at(6), LINK, &req(5)).funnel;
    assert_eq!(
        drain(&mut router)[0],
        RouterAction::CloseFunnel { funnel: f1 }
    );
    assert_ne!(f5, f1);

    let mut none = IcmpRouter::new(RouterConfig {
        max_funnels: 0,
        ..config()
    });
    let mut packet = req(1);
    assert_eq!(
        none.handle_request(t0, LINK, &mut packet, &mut [0u8; 64]),
        Err(RouteError::NoFunnelCapacity)
    );
    assert_eq!((none.funnels(), none.poll_action()), (0, None));
}

#[test]
fn poll_timeout_always_moves_forward() {
    let t0 = Instant::now();
    let mut router = IcmpRouter::new(RouterConfig {
        idle_timeout: Duration::from_millis(250),
        ..config()
    });
    // Several funnels per instant, and a clock that sometimes steps backwards.
    let offsets_ms = [0u64, 0, 3, 3, 3, 1, 40, 40, 250, 251, 600, 2];
    for (i, ms) in offsets_ms.iter().enumerate() {
        let req = request("10.0.0.2", "1.1.1.1", 64, i as u16, 0, b"t");
        forward(&mut router, t0 + Duration::from_millis(*ms), LINK, &req);
    }
    drain(&mut router);
    let mut rounds = 0;
    while let Some(t) = router.poll_timeout() {
        router.handle_timeout(t);
        assert!(
            !drain(&mut router).is_empty(),
            "each deadline closes something"
        );
        if let Some(next) = router.poll_timeout() {
            assert!(next > t, "{next:?} not after {t:?}");
        }
        rounds += 1;
        assert!(rounds <= offsets_ms.len());
    }
    assert_eq!(router.funnels(), 0);

    // A zero idle timeout expires funnels at their own instant, still without a busy loop.
    let mut zero = IcmpRouter::new(RouterConfig {
        idle_timeout: Duration::ZERO,
        ..config()
    });
    forward(
        &mut zero,
        t0,
        LINK,
        &request("10.0.0.2", "1.1.1.1", 64, 1, 0, b""),
    );
    assert_eq!(zero.poll_timeout(), Some(t0));
    zero.handle_timeout(t0);
    assert_eq!((zero.funnels(), zero.poll_timeout()), (0, None));

    // A deadline past representable time never fires.
    let mut forever = IcmpRouter::new(RouterConfig {
        idle_timeout: Duration::MAX,
        ..config()
    });
    forward(
        &mut forever,
        t0,
        LINK,
        &request("10.0.0.2", "1.1.1.1", 64, 1, 0, b""),
    );
    assert_eq!(forever.poll_timeout(), None);
}

#[test]
fn only_echo_requests_are_forwarded() {
    let now = Instant::now();
    let mut router = IcmpRouter::new(config());
    let mut out = [0u8; 1500];
    let cases: Vec<(Vec<u8>, RouteError)> = vec![
        (
            echo_packet(
                EchoKind::Reply,
                addr("10.0.0.2"),
                addr("1.1.1.1"),
                64,
                1,
                1,
                b"",
            ),
            RouteError::EchoReplyNotForwarded,
        ),
        (
            echo_packet(
                EchoKind::Reply,
                addr("fd00::2"),
                addr("fd00::3"),
                64,
                1,
                1,
                b"",
            ),
            RouteError::EchoReplyNotForwarded,
        ),
        (
            {
                // Timestamp request (type 13).
                let mut p = request("10.0.0.2", "1.1.1.1", 64, 1, 1, b"12345678");
                p[20] = 13;
                p
            },
            RouteError::NotEchoRequest { icmp_type: 13 },
        ),
        (
            {
                let mut p = request("10.0.0.2", "1.1.1.1", 64, 1, 1, b"");
                p[21] = 1;
                p
            },
            RouteError::UnsupportedEchoCode { code: 1 },
        ),
        (
            vec![0x45, 0, 0],
            RouteError::Malformed(ParseError::Ipv4TooShort { len: 3 }),
        ),
        (vec![], RouteError::Malformed(ParseError::Empty)),
    ];
    for (mut packet, want) in cases {
        let got = router.handle_request(now, LINK, &mut packet, &mut out);
        assert_eq!(got, Err(want));
        assert_eq!(want.kind(), RouteErrorKind::Peer);
    }
    assert_eq!((router.funnels(), router.poll_action()), (0, None));
}

#[test]
fn icmp_errors_are_never_answered() {
    let now = Instant::now();
    let mut router = IcmpRouter::new(config());
    let inner = request("10.0.0.2", "1.1.1.1", 64, 1, 1, b"");
    // A time-exceeded message with TTL 1: cloudflared would answer it (B§5 #24).
    let mut err = vec![0u8; 600];
    let quoted = parse(&inner).unwrap();
    let n = write_ttl_exceeded(&quoted, addr("10.0.0.9"), &mut err).unwrap();
    err.truncate(n);
    err[8] = 1;
    for ttl in [1, 64] {
        err[8] = ttl;
        assert_eq!(
            router.handle_request(now, LINK, &mut err, &mut [0u8; 1500]),
            Err(RouteError::IcmpError { icmp_type: 11 })
        );
    }
    let mut v6_unreach = request("fd00::2", "fd00::3", 1, 1, 1, b"abcd");
    v6_unreach[40] = 1;
    assert_eq!(
        router.handle_request(now, LINK, &mut v6_unreach, &mut [0u8; 1500]),
        Err(RouteError::IcmpError { icmp_type: 1 })
    );
}

#[test]
fn bad_replies_and_caller_mistakes() {
    let now = Instant::now();
    let mut router = IcmpRouter::new(config());
    let mut kernel = Kernel::default();
    let sent = forward(
        &mut router,
        now,
        LINK,
        &request("10.0.0.2", "1.1.1.1", 64, 3, 1, b"data"),
    );
    kernel.apply(&drain(&mut router));
    let reply = kernel.echo_back(&sent);
    let mut out = [0u8; 1500];
    let from = sent.dst;

    let cases = [
        (
            router.handle_reply(now, sent.funnel, from, &reply[..7], &mut out),
            RouteError::ReplyTooShort { len: 7 },
            RouteErrorKind::Origin,
        ),
        (
            router.handle_reply(now, sent.funnel, from, &sent.message, &mut out),
            RouteError::ReplyNotEcho { icmp_type: 8 },
            RouteErrorKind::Origin,
        ),
        (
            router.handle_reply(now, sent.funnel, addr("::1"), &reply, &mut out),
            RouteError::FamilyMismatch {
                funnel: sent.funnel,
                from: addr("::1"),
            },
            RouteErrorKind::Caller,
        ),
        (
            router.handle_reply(now, FunnelId(99), from, &reply, &mut out),
            RouteError::UnknownFunnel {
                funnel: FunnelId(99),
            },
            RouteErrorKind::Caller,
        ),
        (
            router.handle_reply(now, sent.funnel, from, &reply, &mut out[..31]),
            RouteError::Encode(EncodeError::BufferTooSmall {
                needed: 32,
                available: 31,
            }),
            RouteErrorKind::Caller,
        ),
    ];
    for (got, want, kind) in cases {
        assert_eq!(got, Err(want));
        assert_eq!(want.kind(), kind);
    }
    // A TTL-exceeded reply into a buffer too small is the caller's problem too.
    let mut expiring = request("10.0.0.2", "1.1.1.1", 1, 3, 1, b"data");
    assert!(matches!(
        router.handle_request(now, LINK, &mut expiring, &mut out[..10]),
        Err(RouteError::Encode(EncodeError::BufferTooSmall { .. }))
    ));
}

#[test]
fn failed_funnels_are_forgotten_and_stale_reports_ignored() {
    let now = Instant::now();
    let mut router = IcmpRouter::new(config());
    let req = request("10.0.0.2", "1.1.1.1", 64, 3, 1, b"data");
    let old = forward(&mut router, now, LINK, &req).funnel;
    drain(&mut router);
    router.handle_funnel_failed(old);
    assert_eq!((router.funnels(), router.poll_action()), (0, None));
    assert_eq!(router.poll_timeout(), None);

    let new = forward(&mut router, now, LINK, &req).funnel;
    assert_ne!(new, old, "ids are never reused, even for the same slot");
    assert_eq!(drain(&mut router).len(), 1);
    // A late failure report about the old socket must not kill its successor (cf. B§5 #22).
    router.handle_funnel_failed(old);
    router.handle_funnel_failed(FunnelId(u64::MAX));
    assert_eq!(router.funnels(), 1);
    assert_eq!(forward(&mut router, now, LINK, &req).funnel, new);
}

#[test]
fn funnel_ids_stay_unique_under_churn() {
    let t0 = Instant::now();
    let mut router = IcmpRouter::new(RouterConfig {
        max_funnels: 2,
        ..config()
    });
    let mut seen = std::collections::HashSet::new();
    for i in 0..200u16 {
        let req = request("fd00::2", "fd00::3", 64, i, 0, b"");
        let f = forward(
            &mut router,
            t0 + Duration::from_millis(u64::from(i)),
            LINK,
            &req,
        );
        assert!(seen.insert(f.funnel), "{} reused", f.funnel);
        assert!(router.funnels() <= 2);
    }
    let opened = drain(&mut router)
        .iter()
        .filter(|a| matches!(a, RouterAction::OpenFunnel { .. }))
        .count();
    assert_eq!(opened, 200);
}

#[test]
fn forwarded_packet_matches_decrement_ttl() {
    let now = Instant::now();
    let mut v4_options = request("10.0.0.2", "1.1.1.1", 9, 1, 1, b"opt");
    v4_options[0] = 0x46;
    v4_options[3] += 4;
    v4_options.splice(20..20, [1, 1, 1, 0]); // NOP, NOP, NOP, End
    let mut v6_hop_by_hop = request("fd00::2", "fd00::3", 9, 1, 1, b"hbh");
    v6_hop_by_hop[6] = 0;
    v6_hop_by_hop[5] += 8;
    v6_hop_by_hop.splice(40..40, [PROTO_ICMPV6, 0, 1, 4, 0, 0, 0, 0]); // PadN
    for packet in [v4_options, v6_hop_by_hop] {
        let mut want = packet.clone();
        let ttl = crate::icmp::decrement_ttl(&mut want).unwrap();
        let mut got = packet.clone();
        let mut router = IcmpRouter::new(config());
        let verdict = router.handle_request(now, LINK, &mut got, &mut [0u8; 64]);
        let Ok(Verdict::Forward {
            ttl: left, message, ..
        }) = verdict
        else {
            panic!("{verdict:?}");
        };
        assert_eq!(left, ttl);
        assert_eq!(message, parse(&want).unwrap().icmp_bytes());
        assert_eq!(got, want);
    }
}
