//! ICMP through the tunnel (datagram v3): traceroute-style probes with TTL 1..8 and pings from
//! two requesters sharing an echo id, over IPv4 and IPv6, against the simulated origin network
//! (whose ping sockets rewrite echo ids, as Linux's do). The requesters are public clients of
//! the edge machine's ICMP mapping (`burrow edge --icmp-map`), sending raw IP packets over UDP.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use burrow_core::edge::Input;
use burrow_core::icmp::{self, Echo, EchoKind, IcmpMessage};
use burrow_core::session::edge::{EdgeSessionsConfig, MappingId, MappingKind};

use super::{expect, register, setup_mapped, Mapped, Params};
use crate::clock::VirtualTime;
use crate::udp::{ICMP_SRC_V4, ICMP_SRC_V6};
use crate::world::{ToClient, World};

/// The edge's one mapping: ICMP.
const MAPPING: MappingId = MappingId(0);

/// How a probe was answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Answer {
    /// TTL exceeded, from the connector's source address, quoting the probe.
    TtlExceeded,
    /// Echo reply from the destination with the probe's id and sequence.
    Reply,
}

#[derive(Debug)]
struct Probe {
    src: IpAddr,
    dst: IpAddr,
    id: u16,
    seq: u16,
    ttl: u8,
    bytes: Vec<u8>,
    answer: Option<Answer>,
    sent: u32,
    next: VirtualTime,
}

/// The public address of the client that sends probes from `src` (one per requester).
fn client_of(src: IpAddr) -> SocketAddr {
    let last = match src {
        IpAddr::V4(a) => a.octets()[3],
        IpAddr::V6(a) => a.octets()[15].wrapping_add(100),
    };
    SocketAddr::from(([203, 0, 113, last], 40_000))
}

/// The clients' side: sends probes until answered, checks every answer.
struct Pinger {
    probes: Vec<Probe>,
    /// Answers that matched no probe or were wrong (a bug if non-zero).
    bad: Vec<String>,
}

impl Pinger {
    fn probe(&mut self, src: IpAddr, dst: IpAddr, id: u16, seq: u16, ttl: u8, start: VirtualTime) {
        let data = format!("probe {seq}");
        let echo = Echo {
            src,
            dst,
            ttl,
            kind: EchoKind::Request,
            id,
            seq,
            data: data.as_bytes(),
        };
        let mut out = vec![0u8; 128];
        let n = icmp::write_echo(&echo, &mut out).expect("echo encodes");
        out.truncate(n);
        self.probes.push(Probe {
            src,
            dst,
            id,
            seq,
            ttl,
            bytes: out,
            answer: None,
            sent: 0,
            next: start,
        });
    }

    fn done(&self) -> bool {
        self.probes.iter().all(|p| p.answer.is_some())
    }

    fn next_wakeup(&self) -> Option<VirtualTime> {
        self.probes
            .iter()
            .filter(|p| p.answer.is_none())
            .map(|p| p.next)
            .min()
    }

    fn tick(&mut self, w: &mut World) {
        while let Some(d) = w.to_clients.pop_front() {
            self.receive(&d);
        }
        let now = w.now;
        for p in self.probes.iter_mut().filter(|p| p.answer.is_none()) {
            if p.next > now {
                continue;
            }
            let sent = w.edge_input(Input::ClientPacket {
                mapping: MAPPING,
                from: client_of(p.src),
                data: &p.bytes,
            });
            p.sent += u32::from(sent);
            p.next = now + Duration::from_millis(300);
        }
    }

    fn receive(&mut self, d: &ToClient) {
        if d.mapping != MAPPING {
            self.bad.push(format!("a packet from {:?}", d.mapping));
            return;
        }
        let Ok(pkt) = icmp::parse(&d.payload) else {
            self.bad.push("unparseable ICMP packet".into());
            return;
        };
        // Only the requester's own client hears its answers.
        if d.client != client_of(pkt.dst()) {
            self.bad.push(format!(
                "an answer for {} sent to client {}",
                pkt.dst(),
                d.client
            ));
            return;
        }
        match pkt.message() {
            IcmpMessage::EchoReply { id, seq, .. } => {
                let found = self.probes.iter_mut().find(|p| {
                    p.id == id && p.seq == seq && p.src == pkt.dst() && p.dst == pkt.src()
                });
                match found {
                    Some(p) if p.ttl > 1 => p.answer = Some(Answer::Reply),
                    _ => self.bad.push(format!("unexpected reply id {id} seq {seq}")),
                }
            }
            _ if matches!(
                (pkt.version(), pkt.icmp_type()),
                (icmp::IpVersion::V4, 11) | (icmp::IpVersion::V6, 3)
            ) =>
            {
                let quote = &pkt.icmp_bytes()[8..];
                let router: IpAddr = match pkt.version() {
                    icmp::IpVersion::V4 => ICMP_SRC_V4.into(),
                    icmp::IpVersion::V6 => ICMP_SRC_V6.into(),
                };
                let found = self.probes.iter_mut().find(|p| {
                    p.src == pkt.dst() && !quote.is_empty() && p.bytes.starts_with(quote)
                });
                match found {
                    Some(p) if p.ttl == 1 && pkt.src() == router => {
                        p.answer = Some(Answer::TtlExceeded)
                    }
                    _ => self
                        .bad
                        .push(format!("unexpected TTL exceeded from {}", pkt.src())),
                }
            }
            other => self.bad.push(format!("unexpected ICMP {other:?}")),
        }
    }
}

/// Traceroute (TTL 1..8) and pings from two requesters sharing an echo id, v4 and v6.
pub(super) fn icmp_traceroute(p: &Params) -> Result<u64, String> {
    let mut s = setup_mapped(
        p,
        Mapped {
            sessions: EdgeSessionsConfig::default(),
            kinds: vec![MappingKind::Icmp],
        },
    );
    let c = s.add_connector(1, s.secret.clone());
    register(&mut s, c)?;
    let start = s.world.now;
    let mut pinger = Pinger {
        probes: Vec::new(),
        bad: Vec::new(),
    };
    let families: [(IpAddr, IpAddr, IpAddr); 2] = [
        (
            "100.64.0.1".parse().unwrap(),
            "100.64.0.2".parse().unwrap(),
            "10.0.0.9".parse().unwrap(),
        ),
        (
            "fd00:e::1".parse().unwrap(),
            "fd00:e::2".parse().unwrap(),
            "fd00::9".parse().unwrap(),
        ),
    ];
    for (a, b, dst) in families {
        for ttl in 1..=8u8 {
            pinger.probe(a, dst, 0x7272, u16::from(ttl), ttl, start);
        }
        // Two requesters, the same echo id: one funnel each.
        for seq in 0..10u16 {
            let at = start + Duration::from_millis(50 * u64::from(seq));
            pinger.probe(a, dst, 0x1111, 100 + seq, 64, at);
            pinger.probe(b, dst, 0x1111, 100 + seq, 64, at);
        }
    }
    let limit = s.world.after(Duration::from_secs(60));
    s.world.run_ticking(limit, |w, h| {
        if h.is_some() {
            return Ok(false);
        }
        pinger.tick(w);
        if let Some(t) = pinger.next_wakeup() {
            w.wakeups.insert(t);
        }
        Ok(pinger.done())
    })?;
    let w = &s.world;
    expect(
        pinger.bad.is_empty(),
        &format!("every answer is right: {:?}", pinger.bad),
        w,
    )?;
    let unanswered: Vec<_> = pinger
        .probes
        .iter()
        .filter(|p| p.answer.is_none())
        .collect();
    expect(
        unanswered.is_empty(),
        &format!("every probe answered: {unanswered:?}"),
        w,
    )?;
    expect(
        pinger
            .probes
            .iter()
            .all(|p| (p.ttl == 1) == (p.answer == Some(Answer::TtlExceeded))),
        "TTL 1 is answered by the connector, TTL 2..8 by the destination",
        w,
    )?;
    // v4 and v6: the traceroute's key and two requesters' keys.
    let funnels = w.connectors[c].hub().icmp.funnels();
    expect(
        funnels == 6,
        &format!("one funnel per (src, dst, id): {funnels}"),
        w,
    )?;
    // Quiet for longer than the funnel idle timeout: every ping socket closes. The quiet runs
    // from the last ping socket traffic: a probe sent again may reach the connector late,
    // queued behind a lossy path's window.
    let limit = s.world.after(Duration::from_secs(60));
    s.world.run_ticking(limit, |w, _| {
        Ok(w.udp
            .last_ping()
            .is_none_or(|t| w.now.since_start() >= t.since_start() + Duration::from_secs(12)))
    })?;
    let w = &s.world;
    expect(
        w.connectors[c].hub().icmp.funnels() == 0 && w.udp.funnels() == 0,
        "idle funnels close, and their ping sockets",
        w,
    )?;
    let line = format!("{:?} {:?}", w.udp.stats(), w.connectors[c].hub().stats());
    s.world.trace.record(s.world.now, &line);
    Ok(s.world.trace.hash())
}
