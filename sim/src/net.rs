//! The simulated network: datagrams between addresses on virtual time, with per-link latency,
//! jitter, reordering, loss (independent, or bursty by a Gilbert-Elliott chain), duplication,
//! a path MTU (which a scenario may shrink mid-connection) and partitions (one way or both),
//! all drawn from one seeded RNG so a seed replays exactly.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::net::SocketAddr;
use std::time::Duration;

use rand_chacha::rand_core::Rng;
use rand_chacha::ChaCha8Rng;

use crate::clock::VirtualTime;

/// How one direction of a link behaves.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LinkConfig {
    /// Base one-way delay.
    pub latency: Duration,
    /// Extra delay drawn uniformly from `0..=jitter` per packet. Packets still leave a link in
    /// the order they entered it (a queue's delay varies; it does not shuffle).
    pub jitter: Duration,
    /// Probability a packet takes its own path, free of the queue's order: it may overtake or
    /// be overtaken (reordering).
    pub reorder: f64,
    /// Probability a packet is lost.
    pub loss: f64,
    /// Probability a delivered packet arrives twice.
    pub duplicate: f64,
    /// Nothing gets through while set.
    pub partitioned: bool,
    /// Bursty loss (Gilbert-Elliott), on top of `loss`.
    pub bursts: Option<Bursts>,
    /// Largest datagram the path carries; larger ones are dropped (a black hole, as a path
    /// whose MTU shrank drops them).
    pub mtu: Option<usize>,
}

/// A Gilbert-Elliott loss chain: a good state that loses nothing and a bad state that loses
/// `bad_loss` of its packets; each packet moves the chain first.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Bursts {
    /// Probability of going from good to bad.
    pub to_bad: f64,
    /// Probability of going from bad to good.
    pub to_good: f64,
    /// Loss while bad.
    pub bad_loss: f64,
}

impl Default for LinkConfig {
    fn default() -> Self {
        Self {
            latency: Duration::from_millis(10),
            jitter: Duration::from_millis(2),
            reorder: 0.0,
            loss: 0.0,
            duplicate: 0.0,
            partitioned: false,
            bursts: None,
            mtu: None,
        }
    }
}

/// A datagram in flight or delivered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Packet {
    /// Sender.
    pub from: SocketAddr,
    /// Receiver.
    pub to: SocketAddr,
    /// Payload.
    pub data: Vec<u8>,
}

/// What the network did, for invariants and reports.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct NetStats {
    /// Packets handed to the network.
    pub sent: u64,
    /// Lost to random loss.
    pub lost: u64,
    /// Dropped by a partition.
    pub partitioned: u64,
    /// Lost in a burst (the Gilbert-Elliott chain's bad state).
    pub burst_lost: u64,
    /// Dropped for exceeding the path MTU.
    pub too_big: u64,
    /// Dropped by a firewall that blocks UDP to (and from) an address.
    pub udp_blocked: u64,
    /// Extra copies made.
    pub duplicated: u64,
    /// Handed to a receiver.
    pub delivered: u64,
}

/// Datagrams in flight between simulated hosts.
pub struct Network {
    rng: ChaCha8Rng,
    default: LinkConfig,
    links: HashMap<(SocketAddr, SocketAddr), LinkConfig>,
    // Ordered by delivery time, then by send order so equal times stay deterministic.
    queue: BinaryHeap<Reverse<(VirtualTime, u64)>>,
    in_flight: HashMap<u64, Packet>,
    /// Latest arrival scheduled per link, to keep each link first-in first-out.
    last_arrival: HashMap<(SocketAddr, SocketAddr), VirtualTime>,
    next_seq: u64,
    stats: NetStats,
    /// Links whose Gilbert-Elliott chain is in the bad state.
    bad: std::collections::HashSet<(SocketAddr, SocketAddr)>,
    /// Addresses a firewall drops every datagram to and from (TCP still passes).
    udp_blocked: std::collections::HashSet<SocketAddr>,
}

impl Network {
    /// A network whose every link behaves as `default` until configured otherwise.
    pub fn new(rng: ChaCha8Rng, default: LinkConfig) -> Self {
        Self {
            rng,
            default,
            links: HashMap::new(),
            queue: BinaryHeap::new(),
            in_flight: HashMap::new(),
            last_arrival: HashMap::new(),
            next_seq: 0,
            stats: NetStats::default(),
            bad: std::collections::HashSet::new(),
            udp_blocked: std::collections::HashSet::new(),
        }
    }

    /// Sets how every link behaves that has not been configured on its own.
    pub fn set_default(&mut self, cfg: LinkConfig) {
        self.default = cfg;
    }

    /// Sets how packets from `from` to `to` behave (one direction).
    pub fn set_link(&mut self, from: SocketAddr, to: SocketAddr, cfg: LinkConfig) {
        self.links.insert((from, to), cfg);
    }

    /// Cuts or heals both directions between `a` and `b`.
    pub fn set_partition(&mut self, a: SocketAddr, b: SocketAddr, partitioned: bool) {
        self.set_one_way_partition(a, b, partitioned);
        self.set_one_way_partition(b, a, partitioned);
    }

    /// Cuts or heals the direction from `from` to `to` only (an asymmetric partition).
    pub fn set_one_way_partition(&mut self, from: SocketAddr, to: SocketAddr, partitioned: bool) {
        let default = self.default;
        self.links.entry((from, to)).or_insert(default).partitioned = partitioned;
    }

    /// Blocks or unblocks every datagram to and from `addr`, as a firewall that drops UDP to
    /// the edge's port does (TCP, [`crate::tcp`], is not affected).
    pub fn set_udp_blocked(&mut self, addr: SocketAddr, blocked: bool) {
        if blocked {
            self.udp_blocked.insert(addr);
        } else {
            self.udp_blocked.remove(&addr);
        }
    }

    /// Sets the path MTU both ways between `a` and `b` (`None`: unlimited).
    pub fn set_mtu(&mut self, a: SocketAddr, b: SocketAddr, mtu: Option<usize>) {
        for key in [(a, b), (b, a)] {
            let default = self.default;
            self.links.entry(key).or_insert(default).mtu = mtu;
        }
    }

    /// How packets from `from` to `to` behave.
    pub(crate) fn link(&self, from: SocketAddr, to: SocketAddr) -> LinkConfig {
        self.links.get(&(from, to)).copied().unwrap_or(self.default)
    }

    /// A uniform draw in [0, 1).
    pub(crate) fn chance(&mut self) -> f64 {
        (self.rng.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// One way's delay on a link configured as `cfg`: latency plus a jitter draw.
    pub(crate) fn delay(&mut self, cfg: &LinkConfig) -> Duration {
        let jitter_ns = u64::try_from(cfg.jitter.as_nanos()).unwrap_or(u64::MAX);
        let extra = if jitter_ns == 0 {
            0
        } else {
            self.rng.next_u64() % (jitter_ns + 1)
        };
        cfg.latency + Duration::from_nanos(extra)
    }

    /// Hands a datagram to the network at `now`.
    pub fn send(&mut self, now: VirtualTime, from: SocketAddr, to: SocketAddr, data: Vec<u8>) {
        self.stats.sent += 1;
        let cfg = self.link(from, to);
        if cfg.partitioned {
            self.stats.partitioned += 1;
            return;
        }
        if self.udp_blocked.contains(&to) || self.udp_blocked.contains(&from) {
            self.stats.udp_blocked += 1;
            return;
        }
        if cfg.mtu.is_some_and(|mtu| data.len() > mtu) {
            self.stats.too_big += 1;
            return;
        }
        if let Some(b) = cfg.bursts {
            let bad = self.bad.contains(&(from, to));
            let flip = self.chance() < if bad { b.to_good } else { b.to_bad };
            if bad == flip {
                self.bad.remove(&(from, to));
            } else {
                self.bad.insert((from, to));
            }
            if bad != flip && self.chance() < b.bad_loss {
                self.stats.burst_lost += 1;
                return;
            }
        }
        if self.chance() < cfg.loss {
            self.stats.lost += 1;
            tracing::trace!(%from, %to, len = data.len(), "net: lost");
            return;
        }
        tracing::trace!(%from, %to, len = data.len(), "net: sent");
        let copies = if self.chance() < cfg.duplicate { 2 } else { 1 };
        self.stats.duplicated += copies - 1;
        for _ in 0..copies {
            let mut at = now + self.delay(&cfg);
            if self.chance() >= cfg.reorder {
                let last = self.last_arrival.entry((from, to)).or_insert(at);
                at = at.max(*last);
                *last = at;
            }
            let seq = self.next_seq;
            self.next_seq += 1;
            self.queue.push(Reverse((at, seq)));
            self.in_flight.insert(
                seq,
                Packet {
                    from,
                    to,
                    data: data.clone(),
                },
            );
        }
    }

    /// When the next packet arrives, if any is in flight.
    pub fn next_arrival(&self) -> Option<VirtualTime> {
        self.queue.peek().map(|Reverse((at, _))| *at)
    }

    /// The next packet due at or before `now`.
    pub fn poll_arrival(&mut self, now: VirtualTime) -> Option<Packet> {
        let Reverse((at, seq)) = *self.queue.peek()?;
        if at > now {
            return None;
        }
        self.queue.pop();
        let packet = self.in_flight.remove(&seq)?;
        self.stats.delivered += 1;
        Some(packet)
    }

    /// What happened so far.
    pub fn stats(&self) -> NetStats {
        self.stats
    }
}

#[cfg(test)]
mod tests {
    use rand_chacha::rand_core::SeedableRng;

    use super::*;

    fn addr(port: u16) -> SocketAddr {
        SocketAddr::from(([10, 0, 0, 1], port))
    }

    fn run(seed: u64, cfg: LinkConfig, n: usize) -> (Vec<(VirtualTime, Vec<u8>)>, NetStats) {
        let mut net = Network::new(ChaCha8Rng::seed_from_u64(seed), cfg);
        let t0 = VirtualTime::ZERO;
        for i in 0..n {
            net.send(
                t0 + Duration::from_micros(i as u64),
                addr(1),
                addr(2),
                vec![i as u8],
            );
        }
        let mut got = Vec::new();
        while let Some(at) = net.next_arrival() {
            while let Some(p) = net.poll_arrival(at) {
                got.push((at, p.data));
            }
        }
        (got, net.stats())
    }

    #[test]
    fn same_seed_same_deliveries() {
        let cfg = LinkConfig {
            loss: 0.1,
            duplicate: 0.05,
            jitter: Duration::from_millis(5),
            ..LinkConfig::default()
        };
        assert_eq!(run(7, cfg, 500), run(7, cfg, 500));
        assert_ne!(run(7, cfg, 500).0, run(8, cfg, 500).0);
    }

    #[test]
    fn loss_and_duplication_rates_are_roughly_as_configured() {
        let cfg = LinkConfig {
            loss: 0.05,
            duplicate: 0.02,
            ..LinkConfig::default()
        };
        let (got, stats) = run(1, cfg, 20_000);
        assert_eq!(stats.sent, 20_000);
        assert!((800..1200).contains(&stats.lost), "{stats:?}");
        assert!((200..600).contains(&stats.duplicated), "{stats:?}");
        assert_eq!(got.len() as u64, stats.sent - stats.lost + stats.duplicated);
    }

    #[test]
    fn jitter_keeps_order_reorder_breaks_it_and_partition_blocks() {
        let jitter = LinkConfig {
            jitter: Duration::from_millis(5),
            ..LinkConfig::default()
        };
        let order = |cfg| -> Vec<u8> { run(3, cfg, 100).0.iter().map(|(_, d)| d[0]).collect() };
        assert!(
            order(jitter).windows(2).all(|w| w[0] < w[1]),
            "jitter alone reordered"
        );
        let reorder = LinkConfig {
            reorder: 0.2,
            ..jitter
        };
        assert!(
            order(reorder).windows(2).any(|w| w[0] > w[1]),
            "no reordering"
        );

        let mut net = Network::new(ChaCha8Rng::seed_from_u64(0), LinkConfig::default());
        net.set_one_way_partition(addr(1), addr(2), true);
        net.send(VirtualTime::ZERO, addr(1), addr(2), vec![1]);
        assert_eq!(net.next_arrival(), None, "cut one way");
        net.send(VirtualTime::ZERO, addr(2), addr(1), vec![1]);
        assert!(net
            .poll_arrival(VirtualTime::ZERO + Duration::from_secs(1))
            .is_some());
        net.set_one_way_partition(addr(1), addr(2), false);
        let mut net = Network::new(ChaCha8Rng::seed_from_u64(0), LinkConfig::default());
        net.set_partition(addr(1), addr(2), true);
        net.send(VirtualTime::ZERO, addr(2), addr(1), vec![1]);
        assert_eq!(net.next_arrival(), None);
        assert_eq!(net.stats().partitioned, 1);
        net.set_partition(addr(1), addr(2), false);
        net.send(VirtualTime::ZERO, addr(2), addr(1), vec![1]);
        assert!(net.next_arrival().is_some());
    }

    #[test]
    fn bursts_cluster_losses_and_the_mtu_drops_what_is_larger() {
        let bursty = LinkConfig {
            bursts: Some(Bursts {
                to_bad: 0.02,
                to_good: 0.2,
                bad_loss: 0.8,
            }),
            ..LinkConfig::default()
        };
        let n = 20_000u32;
        let mut net = Network::new(ChaCha8Rng::seed_from_u64(5), bursty);
        for i in 0..n {
            net.send(
                VirtualTime::ZERO,
                addr(1),
                addr(2),
                i.to_be_bytes().to_vec(),
            );
        }
        let stats = net.stats();
        // Stationary bad share 0.02 / 0.22, 80% of it lost: about 7%.
        assert!((900..2000).contains(&stats.burst_lost), "{stats:?}");
        let mut lost = vec![true; n as usize];
        while let Some(p) = net.poll_arrival(VirtualTime::ZERO + Duration::from_secs(1)) {
            lost[u32::from_be_bytes(p.data[..4].try_into().expect("4 bytes")) as usize] = false;
        }
        // Clustered: after a loss, the next packet is lost far more often than on average.
        let after_loss = lost.windows(2).filter(|w| w[0]).count() as f64;
        let both = lost.windows(2).filter(|w| w[0] && w[1]).count() as f64;
        let rate = stats.burst_lost as f64 / f64::from(n);
        assert!(
            both / after_loss > 5.0 * rate,
            "{both}/{after_loss} vs {rate}"
        );
        let mut net = Network::new(ChaCha8Rng::seed_from_u64(0), LinkConfig::default());
        net.set_mtu(addr(1), addr(2), Some(1200));
        net.send(VirtualTime::ZERO, addr(1), addr(2), vec![0; 1201]);
        net.send(VirtualTime::ZERO, addr(2), addr(1), vec![0; 1200]);
        assert_eq!(net.stats().too_big, 1);
        assert_eq!(net.stats().delivered + net.queue.len() as u64, 1);
    }
}
