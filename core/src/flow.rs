//! The process-wide flow limiter (PROTOCOL.md B§1.11, cloudflared's `flow/limiter.go`): one
//! count shared by TCP flows on every tunnel connection and UDP sessions of both datagram
//! versions, against one hot-swappable limit (0: unlimited).
//!
//! A granted slot is a [`FlowPermit`] that gives the slot back when dropped. Whoever owns the
//! flow owns its permit, so every way a flow can end (closed, failed dial, reset, connection
//! lost, idle expiry) releases it exactly once, and a flow that moves (a session migrating to
//! another connection) keeps it.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use thiserror::Error;

/// The kind of flow asking for a slot (the metric's `flow_type` label).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FlowType {
    /// A warp-routing TCP flow on a data stream.
    Tcp,
    /// A UDP session (datagram v2 or v3).
    Udp,
}

impl FlowType {
    /// Every kind, for metrics.
    pub const ALL: [FlowType; 2] = [Self::Tcp, Self::Udp];

    /// The metric label, as cloudflared writes it.
    pub fn label(self) -> &'static str {
        match self {
            Self::Tcp => "tcp",
            Self::Udp => "udp",
        }
    }
}

/// The limit is reached (cloudflared's `ErrTooManyActiveFlows`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
#[error("too many active flows")]
pub struct TooManyActiveFlows;

#[derive(Debug, Default)]
struct Inner {
    active: AtomicU64,
    limit: AtomicU64,
    rejected: [AtomicU64; 2],
}

/// A handle on one limiter; clones share it. Cheap: an `Arc` of atomics, so the connections
/// and the session manager each hold one without threading a reference through every call.
#[derive(Debug, Clone, Default)]
pub struct FlowLimiter(Arc<Inner>);

impl FlowLimiter {
    /// A limiter allowing `limit` flows at once; 0 means unlimited.
    pub fn new(limit: u64) -> Self {
        let l = Self::default();
        l.set_limit(limit);
        l
    }

    /// Takes a slot for a flow of `kind`, or counts a rejection when `limit` flows are active.
    pub fn acquire(&self, kind: FlowType) -> Result<FlowPermit, TooManyActiveFlows> {
        let granted = self
            .0
            .active
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                let limit = self.0.limit.load(Ordering::Acquire);
                (limit == 0 || n < limit).then(|| n.saturating_add(1))
            });
        match granted {
            Ok(_) => Ok(FlowPermit {
                limiter: self.0.clone(),
            }),
            Err(_) => {
                self.0.rejected[kind as usize].fetch_add(1, Ordering::Relaxed);
                Err(TooManyActiveFlows)
            }
        }
    }

    /// Changes the limit at once (a configuration update); flows already active stay, new
    /// ones wait until the count is below it.
    pub fn set_limit(&self, limit: u64) {
        self.0.limit.store(limit, Ordering::Release);
    }

    /// The limit in force (0: unlimited).
    pub fn limit(&self) -> u64 {
        self.0.limit.load(Ordering::Acquire)
    }

    /// Flows holding a slot now.
    pub fn active(&self) -> u64 {
        self.0.active.load(Ordering::Acquire)
    }

    /// Flows of `kind` refused so far.
    pub fn rejected(&self, kind: FlowType) -> u64 {
        self.0.rejected[kind as usize].load(Ordering::Relaxed)
    }
}

/// One flow's slot; dropping it releases the slot.
#[derive(Debug)]
#[must_use = "dropping the permit releases the slot at once"]
pub struct FlowPermit {
    limiter: Arc<Inner>,
}

impl FlowPermit {
    /// Releases the slot (the same as dropping the permit).
    pub fn release(self) {}
}

impl Drop for FlowPermit {
    fn drop(&mut self) {
        // Each permit stands for one increment, so this cannot underflow; saturate anyway.
        let _ = self
            .limiter
            .active
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| n.checked_sub(1));
    }
}

/// The limit in force, by cloudflared's precedence: `--max-active-flows` /
/// `TUNNEL_MAX_ACTIVE_FLOWS` (`flag`) over the configuration's `warp-routing.maxActiveFlows`
/// (the local file at start, then each remote configuration), else 0 (unlimited).
pub fn effective_limit(flag: Option<u64>, configured: Option<u64>) -> u64 {
    flag.or(configured).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zero_is_unlimited_and_still_counts() {
        let l = FlowLimiter::new(0);
        let permits: Vec<_> = (0..1000)
            .map(|_| l.acquire(FlowType::Tcp).expect("unlimited"))
            .collect();
        assert_eq!(l.active(), 1000);
        drop(permits);
        assert_eq!(l.active(), 0);
        assert_eq!(l.rejected(FlowType::Tcp), 0);
    }

    #[test]
    fn tcp_and_udp_draw_from_one_count_and_rejections_count_by_kind() {
        let l = FlowLimiter::new(2);
        let a = l.acquire(FlowType::Tcp).expect("first");
        let shared = l.clone();
        let b = shared.acquire(FlowType::Udp).expect("second");
        assert_eq!(l.acquire(FlowType::Udp).err(), Some(TooManyActiveFlows));
        assert_eq!(
            shared.acquire(FlowType::Tcp).err(),
            Some(TooManyActiveFlows)
        );
        assert_eq!(
            shared.acquire(FlowType::Tcp).err(),
            Some(TooManyActiveFlows)
        );
        assert_eq!(
            (l.rejected(FlowType::Tcp), l.rejected(FlowType::Udp)),
            (2, 1)
        );
        a.release();
        assert_eq!(l.active(), 1);
        let c = l.acquire(FlowType::Udp).expect("a slot came back");
        drop((b, c));
        assert_eq!(l.active(), 0);
    }

    #[test]
    fn lowering_the_limit_keeps_active_flows_and_refuses_new_ones() {
        let l = FlowLimiter::new(5);
        let mut held: Vec<_> = (0..4)
            .map(|_| l.acquire(FlowType::Tcp).expect("under 5"))
            .collect();
        l.set_limit(2);
        assert_eq!(l.active(), 4, "nobody is cut off");
        assert!(l.acquire(FlowType::Udp).is_err());
        held.truncate(2);
        assert_eq!(l.active(), 2);
        assert!(l.acquire(FlowType::Tcp).is_err(), "2 active, limit 2");
        held.pop();
        held.push(l.acquire(FlowType::Tcp).expect("below the limit again"));
        l.set_limit(0);
        held.push(l.acquire(FlowType::Tcp).expect("unlimited now"));
        assert_eq!(l.active(), 3);
    }

    #[test]
    fn threads_sharing_a_limiter_never_pass_it() {
        let l = FlowLimiter::new(3);
        let workers: Vec<_> = (0..4)
            .map(|i| {
                let l = l.clone();
                std::thread::spawn(move || {
                    let kind = FlowType::ALL[i % 2];
                    let mut granted = 0u32;
                    for _ in 0..5_000 {
                        if let Ok(p) = l.acquire(kind) {
                            assert!(l.active() <= 3, "{} active", l.active());
                            granted += 1;
                            drop(p);
                        }
                    }
                    granted
                })
            })
            .collect();
        let granted: u32 = workers.into_iter().map(|w| w.join().expect("worker")).sum();
        assert!(granted > 0);
        assert_eq!(l.active(), 0);
        let refused = l.rejected(FlowType::Tcp) + l.rejected(FlowType::Udp);
        assert_eq!(u64::from(granted) + refused, 20_000);
    }

    #[test]
    fn the_flag_overrides_the_configuration() {
        assert_eq!(effective_limit(None, None), 0);
        assert_eq!(effective_limit(None, Some(7)), 7);
        assert_eq!(effective_limit(Some(3), Some(7)), 3);
        assert_eq!(
            effective_limit(Some(0), Some(7)),
            0,
            "an explicit 0 lifts it"
        );
    }
}
