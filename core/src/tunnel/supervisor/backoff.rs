//! Reconnect backoff.

use std::time::Duration;

use rand_chacha::rand_core::Rng;

/// cloudflared's `retry.BackoffHandler`: wait uniformly in `[0, base·2^retries)`.
#[derive(Debug, Clone, Copy)]
pub(super) struct Backoff {
    /// Attempts since the last registration, capped at `max_retries`.
    pub(super) retries: u32,
    /// `--retries`.
    pub(super) max_retries: u32,
    /// The first attempt's bound.
    pub(super) base: Duration,
}

impl Backoff {
    /// The next delay, drawn from `rng`, and the bound it was drawn under.
    pub(super) fn next_delay(&mut self, rng: &mut impl Rng) -> (Duration, Duration) {
        if self.retries < self.max_retries {
            self.retries += 1;
        }
        let cap = self.base.saturating_mul(1u32 << self.retries.min(20));
        let nanos = u64::try_from(cap.as_nanos()).unwrap_or(u64::MAX).max(1);
        (Duration::from_nanos(rng.next_u64() % nanos), cap)
    }
}
