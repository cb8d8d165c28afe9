//! The edge address pool (cloudflared's `edgediscovery`): two regions, split by address
//! family, which HA index holds which address, and the SRV name they come from.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use rand_chacha::rand_core::Rng;
use thiserror::Error;

/// Which address families of the edge to use (`--edge-ip-version`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum IpVersion {
    /// The family of the first address the resolver returned, the other as fallback.
    #[default]
    Auto,
    /// IPv4 only.
    V4,
    /// IPv6 only.
    V6,
}

/// No edge address could be handed out.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum PoolError {
    /// Every address is held by another connection (cloudflared's `ErrNoAddressesLeft`).
    #[error("there are no free edge addresses left to resolve to")]
    NoAddressesLeft,
    /// Nothing survived the IP-version filter.
    #[error("no edge address of the requested IP version")]
    NoAddressOfVersion,
    /// SRV discovery found fewer than the two regions cloudflared needs.
    #[error("expected at least 2 Cloudflare Regions regions, but SRV only returned {0}")]
    TooFewRegions(usize),
}

/// The SRV name of the edge (cloudflared's `edgediscovery`): the global service, or
/// `--region`'s (`us`, ...) when one is given.
pub fn srv_service(region: Option<&str>) -> String {
    match region {
        Some(r) if !r.is_empty() => format!("_{r}-v2-origintunneld._tcp.argotunnel.com."),
        _ => "_v2-origintunneld._tcp.argotunnel.com.".to_owned(),
    }
}

/// One region's addresses, split by family as cloudflared's `Region` does.
#[derive(Debug, Clone)]
struct Region {
    primary: Vec<SocketAddr>,
    secondary: Vec<SocketAddr>,
    /// On the secondary family until then (an IPv6 connectivity error moved us there).
    secondary_until: Option<Instant>,
}

impl Region {
    fn new(addrs: &[SocketAddr], version: IpVersion) -> Self {
        let (v4, v6): (Vec<_>, Vec<_>) = addrs.iter().partition(|a| a.is_ipv4());
        let (primary, secondary) = match version {
            IpVersion::V4 => (v4, Vec::new()),
            IpVersion::V6 => (v6, Vec::new()),
            IpVersion::Auto if addrs.first().is_some_and(|a| a.is_ipv6()) => (v6, v4),
            IpVersion::Auto => (v4, v6),
        };
        Self {
            primary,
            secondary,
            secondary_until: None,
        }
    }

    fn active(&self, now: Instant) -> &[SocketAddr] {
        match self.secondary_until {
            Some(until) if now < until && !self.secondary.is_empty() => &self.secondary,
            _ => &self.primary,
        }
    }

    fn len(&self) -> usize {
        self.primary.len().max(self.secondary.len())
    }
}

/// How long an IPv6 connectivity error moves a region to IPv4 (cloudflared's `timeoutDuration`).
const SECONDARY_FOR: Duration = Duration::from_secs(600);

/// Regions of an SRV-discovered edge (cloudflared's `ResolveEdge`).
const REGIONS: usize = 2;

/// The SRV targets that are regions, in the resolver's order: the first two (`REGIONS`), the only
/// ones worth resolving for [`EdgePool::from_srv_targets`].
pub fn region_targets<T>(targets: &[T]) -> &[T] {
    &targets[..targets.len().min(REGIONS)]
}

/// The one address kept of a static `--edge` entry's resolved addresses, as cloudflared's
/// `ResolveTCPAddr` keeps it: the first IPv4 address, else the first. `localhost` is often
/// `::1` first, and an edge may listen on IPv4 alone.
pub fn static_edge_address(resolved: impl IntoIterator<Item = SocketAddr>) -> Option<SocketAddr> {
    let mut first = None;
    for a in resolved {
        if a.is_ipv4() {
            return Some(a);
        }
        first = first.or(Some(a));
    }
    first
}

/// Edge addresses and which HA index holds which (cloudflared's `edgediscovery`).
#[derive(Debug, Clone)]
pub struct EdgePool {
    regions: [Region; REGIONS],
    /// Held address per index.
    held: Vec<Option<SocketAddr>>,
    /// Static edge: an address may serve several indexes (see [`EdgePool::from_static`]).
    shared: bool,
}

impl EdgePool {
    /// Addresses from SRV discovery: target 0 is region 1, target 1 region 2, in resolver order.
    pub fn from_regions(
        region1: &[SocketAddr],
        region2: &[SocketAddr],
        version: IpVersion,
    ) -> Result<Self, PoolError> {
        let pool = Self {
            regions: [Region::new(region1, version), Region::new(region2, version)],
            held: Vec::new(),
            shared: false,
        };
        if pool.capacity() == 0 {
            return Err(PoolError::NoAddressOfVersion);
        }
        Ok(pool)
    }

    /// Addresses of the SRV targets of [`srv_service`], in the resolver's order: the first two
    /// targets are the two regions, more are ignored (cloudflared's `ResolveEdge`).
    pub fn from_srv_targets(
        targets: &[Vec<SocketAddr>],
        version: IpVersion,
    ) -> Result<Self, PoolError> {
        match targets {
            [r1, r2, ..] => Self::from_regions(r1, r2, version),
            _ => Err(PoolError::TooFewRegions(targets.len())),
        }
    }

    /// A static `--edge` list: entries alternate between the two regions as in cloudflared,
    /// the IP version is ignored. Unlike cloudflared, an address may carry several HA
    /// connections, so one self-hosted edge gets all of them (cloudflared caps HA at the number
    /// of addresses and spins when rotation finds no other address, PROTOCOL.md C§7 #1).
    pub fn from_static(addrs: &[SocketAddr]) -> Result<Self, PoolError> {
        let r1: Vec<_> = addrs.iter().copied().step_by(2).collect();
        let r2: Vec<_> = addrs.iter().copied().skip(1).step_by(2).collect();
        let mut pool = Self::from_regions(&r1, &r2, IpVersion::Auto)?;
        pool.regions.iter_mut().for_each(|r| {
            r.primary.append(&mut r.secondary);
        });
        pool.shared = true;
        Ok(pool)
    }

    /// How many HA connections the pool can serve at once.
    pub fn capacity(&self) -> usize {
        if self.shared {
            usize::MAX
        } else {
            self.regions.iter().map(Region::len).sum()
        }
    }

    fn users(&self, addr: SocketAddr) -> usize {
        self.held.iter().filter(|h| **h == Some(addr)).count()
    }

    /// The address `index` holds, or a new one for it.
    pub fn get_addr(
        &mut self,
        now: Instant,
        index: u8,
        rng: &mut impl Rng,
    ) -> Result<SocketAddr, PoolError> {
        if let Some(Some(a)) = self.held.get(index as usize) {
            return Ok(*a);
        }
        let addr = self.pick(now, None, rng)?;
        self.hold(index, Some(addr));
        Ok(addr)
    }

    /// Gives back what `index` holds and picks another address. With `connectivity_error`, a
    /// failing IPv6 address moves its region to IPv4 for a while (cloudflared's `GiveBack`).
    pub fn get_different_addr(
        &mut self,
        now: Instant,
        index: u8,
        connectivity_error: bool,
        rng: &mut impl Rng,
    ) -> Result<SocketAddr, PoolError> {
        let old = self.held.get(index as usize).copied().flatten();
        self.hold(index, None);
        if let (Some(old), true) = (old, connectivity_error) {
            for r in &mut self.regions {
                let on_secondary = r.secondary_until.is_some_and(|u| now < u);
                if old.is_ipv6() && r.primary.contains(&old) && !r.secondary.is_empty() {
                    r.secondary_until = Some(now + SECONDARY_FOR);
                } else if old.is_ipv4() && on_secondary && r.secondary.contains(&old) {
                    r.secondary_until = None;
                }
            }
        }
        let addr = match self.pick(now, old, rng) {
            Ok(a) => a,
            // Only one address serves us: try it again rather than give up.
            Err(PoolError::NoAddressesLeft) if self.shared => {
                old.ok_or(PoolError::NoAddressesLeft)?
            }
            Err(e) => return Err(e),
        };
        self.hold(index, Some(addr));
        Ok(addr)
    }

    /// Forgets what `index` holds.
    pub fn release(&mut self, index: u8) {
        self.hold(index, None);
    }

    fn hold(&mut self, index: u8, addr: Option<SocketAddr>) {
        let i = index as usize;
        if self.held.len() <= i {
            self.held.resize(i + 1, None);
        }
        self.held[i] = addr;
    }

    /// A free address from the region with the most free ones (random on a tie, random within).
    fn pick(
        &self,
        now: Instant,
        exclude: Option<SocketAddr>,
        rng: &mut impl Rng,
    ) -> Result<SocketAddr, PoolError> {
        let least = |r: &Region| {
            r.active(now)
                .iter()
                .filter(|a| Some(**a) != exclude)
                .map(|a| self.users(*a))
                .min()
        };
        let free: Vec<Vec<SocketAddr>> = self
            .regions
            .iter()
            .map(|r| {
                let candidates = r.active(now).iter().filter(|a| Some(**a) != exclude);
                if self.shared {
                    // Least used first: spread HA connections over the addresses.
                    let min = least(r).unwrap_or(0);
                    candidates
                        .filter(|a| self.users(**a) == min)
                        .copied()
                        .collect()
                } else {
                    candidates
                        .filter(|a| self.users(**a) == 0)
                        .copied()
                        .collect()
                }
            })
            .collect();
        let region = match (free[0].len(), free[1].len()) {
            (0, 0) => return Err(PoolError::NoAddressesLeft),
            _ if self.shared => {
                // Prefer the region whose addresses are least used.
                match (least(&self.regions[0]), least(&self.regions[1])) {
                    (Some(a), Some(b)) if a != b => usize::from(b < a),
                    (None, _) => 1,
                    (_, None) => 0,
                    _ => (rng.next_u32() % 2) as usize,
                }
            }
            (a, b) if a > b => 0,
            (a, b) if b > a => 1,
            _ => (rng.next_u32() % 2) as usize,
        };
        let list = &free[region];
        if list.is_empty() {
            return Err(PoolError::NoAddressesLeft);
        }
        Ok(list[rng.next_u32() as usize % list.len()])
    }
}
