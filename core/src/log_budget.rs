//! How often peers may make the edge or the connector log one kind of event: a few lines per window, then one
//! line saying how many were left out, so a peer repeating a refused request cannot fill the
//! disk or the CPU.

use std::time::{Duration, Instant};

/// A per-window log allowance.
#[derive(Debug, Clone)]
pub struct LogBudget {
    window: Duration,
    per_window: u32,
    started: Option<Instant>,
    used: u32,
    suppressed: u64,
}

/// What to do with one occurrence.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Log it; `suppressed` occurrences since the last logged one were not logged.
    Log {
        /// Occurrences left out before this one.
        suppressed: u64,
    },
    /// Do not log it.
    Suppress,
}

impl LogBudget {
    /// At most `per_window` lines per `window`.
    pub fn new(window: Duration, per_window: u32) -> Self {
        Self {
            window,
            per_window,
            started: None,
            used: 0,
            suppressed: 0,
        }
    }

    /// Counts one occurrence at `now`.
    pub fn check(&mut self, now: Instant) -> Verdict {
        let fresh = self
            .started
            .is_none_or(|s| now.saturating_duration_since(s) >= self.window);
        if fresh {
            self.started = Some(now);
            self.used = 0;
        }
        if self.used < self.per_window {
            self.used += 1;
            Verdict::Log {
                suppressed: std::mem::take(&mut self.suppressed),
            }
        } else {
            self.suppressed += 1;
            Verdict::Suppress
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_few_per_window_then_a_count_of_the_rest() {
        let t0 = Instant::now();
        let mut b = LogBudget::new(Duration::from_secs(10), 2);
        assert_eq!(b.check(t0), Verdict::Log { suppressed: 0 });
        assert_eq!(b.check(t0), Verdict::Log { suppressed: 0 });
        for _ in 0..1000 {
            assert_eq!(b.check(t0 + Duration::from_secs(9)), Verdict::Suppress);
        }
        assert_eq!(
            b.check(t0 + Duration::from_secs(10)),
            Verdict::Log { suppressed: 1000 }
        );
        assert_eq!(
            b.check(t0 + Duration::from_secs(11)),
            Verdict::Log { suppressed: 0 }
        );
        assert_eq!(b.check(t0 + Duration::from_secs(11)), Verdict::Suppress);
    }
}
