//! The simulated network: datagrams between addresses on virtual time, with per-link latency,
//! jitter, loss, duplication and partitions, all drawn from one seeded RNG so a seed replays
//! exactly. Reordering falls out of jitter: a later packet may draw a shorter delay.

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
        }
    }

    /// Sets how packets from `from` to `to` behave (one direction).
    pub fn set_link(&mut self, from: SocketAddr, to: SocketAddr, cfg: LinkConfig) {
        self.links.insert((from, to), cfg);
    }

    /// Cuts or heals both directions between `a` and `b`.
    pub fn set_partition(&mut self, a: SocketAddr, b: SocketAddr, partitioned: bool) {
        for key in [(a, b), (b, a)] {
            let default = self.default;
            self.links.entry(key).or_insert(default).partitioned = partitioned;
        }
    }

    fn link(&self, from: SocketAddr, to: SocketAddr) -> LinkConfig {
        self.links.get(&(from, to)).copied().unwrap_or(self.default)
    }

    /// A uniform draw in [0, 1).
    fn chance(&mut self) -> f64 {
        (self.rng.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    fn delay(&mut self, cfg: &LinkConfig) -> Duration {
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
        if self.chance() < cfg.loss {
            self.stats.lost += 1;
            return;
        }
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
        net.set_partition(addr(1), addr(2), true);
        net.send(VirtualTime::ZERO, addr(2), addr(1), vec![1]);
        assert_eq!(net.next_arrival(), None);
        assert_eq!(net.stats().partitioned, 1);
        net.set_partition(addr(1), addr(2), false);
        net.send(VirtualTime::ZERO, addr(2), addr(1), vec![1]);
        assert!(net.next_arrival().is_some());
    }
}
