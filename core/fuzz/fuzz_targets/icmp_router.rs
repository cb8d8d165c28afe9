#![no_main]
//! Any bytes as a script of edge packets, socket reads, clock steps, link closures and socket
//! failures against one ICMP router: nothing panics, the funnel bound holds, the router's
//! count matches the sockets its actions opened and closed, and every routed reply parses.

use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::time::{Duration, Instant};

use burrow_core::datagram::LinkId;
use burrow_core::icmp::{self, FunnelId, IcmpRouter, RouterAction, RouterConfig, Verdict};
use libfuzzer_sys::fuzz_target;

/// Takes `n` bytes (fewer at the end) off the front of `data`.
fn take<'a>(data: &mut &'a [u8], n: usize) -> &'a [u8] {
    let (head, tail) = data.split_at(n.min(data.len()));
    *data = tail;
    head
}

fn byte(data: &mut &[u8]) -> u8 {
    take(data, 1).first().copied().unwrap_or(0)
}

fuzz_target!(|input: &[u8]| {
    let mut data = input;
    let max_funnels = usize::from(byte(&mut data) % 6);
    let idle = Duration::from_millis(u64::from(byte(&mut data)) * 20);
    let t0 = Instant::now();
    let mut now = t0;
    let mut router = IcmpRouter::new(RouterConfig {
        ipv4_src: Some(Ipv4Addr::new(172, 16, 0, 1)),
        ipv6_src: Some(Ipv6Addr::LOCALHOST),
        idle_timeout: idle,
        max_funnels,
    });
    let mut open: BTreeSet<FunnelId> = BTreeSet::new();
    let mut out = [0u8; 1500];
    while !data.is_empty() {
        let op = byte(&mut data);
        let arg = byte(&mut data);
        match op % 6 {
            0 => {
                let len = usize::from(byte(&mut data));
                let mut packet = take(&mut data, len).to_vec();
                if let Ok(Verdict::Forward { message, .. }) =
                    router.handle_request(now, LinkId(u64::from(arg % 4)), &mut packet, &mut out)
                {
                    assert!(message.len() >= 8);
                }
            }
            1 => {
                let len = usize::from(byte(&mut data));
                let message = take(&mut data, len);
                let funnel = open
                    .iter()
                    .nth(usize::from(arg) % (open.len() + 1))
                    .copied()
                    .unwrap_or(FunnelId(u64::from(arg)));
                let from: IpAddr = if arg & 1 == 0 {
                    Ipv4Addr::new(1, 1, 1, arg).into()
                } else {
                    Ipv6Addr::new(0x2606, 0, 0, 0, 0, 0, 0, u16::from(arg)).into()
                };
                if let Ok((_, n)) = router.handle_reply(now, funnel, from, message, &mut out) {
                    let p = icmp::parse(&out[..n]).expect("routed reply parses");
                    assert_eq!(p.src(), from);
                    assert_eq!(p.ttl(), 255);
                }
            }
            2 => now += Duration::from_millis(u64::from(arg) * 10),
            3 => {
                if let Some(t) = router.poll_timeout() {
                    now = now.max(t);
                    router.handle_timeout(t);
                    assert!(router.poll_timeout().is_none_or(|next| next > t));
                }
            }
            4 => router.link_closed(LinkId(u64::from(arg % 4))),
            _ => {
                if let Some(&f) = open.iter().nth(usize::from(arg) % (open.len() + 1)) {
                    router.handle_funnel_failed(f);
                    open.remove(&f);
                }
            }
        }
        while let Some(action) = router.poll_action() {
            match action {
                RouterAction::OpenFunnel { funnel, .. } => assert!(open.insert(funnel)),
                RouterAction::CloseFunnel { funnel } => assert!(open.remove(&funnel)),
            }
        }
        assert!(router.funnels() <= max_funnels);
        assert_eq!(router.funnels(), open.len());
    }
});
