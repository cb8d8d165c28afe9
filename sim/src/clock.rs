//! Virtual time. The state machines take `std::time::Instant`; the simulator counts time from
//! zero and maps it onto one base `Instant`, so nothing depends on the wall clock and traces
//! record offsets, which replay identically.

use std::ops::Add;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Time since the simulation began.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct VirtualTime(Duration);

impl VirtualTime {
    /// The start of the simulation.
    pub const ZERO: Self = Self(Duration::ZERO);

    /// Offset from the start.
    pub fn since_start(self) -> Duration {
        self.0
    }
}

impl Add<Duration> for VirtualTime {
    type Output = Self;

    fn add(self, d: Duration) -> Self {
        Self(self.0 + d)
    }
}

/// Converts between virtual time and the `Instant`s the state machines use.
#[derive(Debug, Clone, Copy)]
pub struct Clock {
    base: Instant,
}

impl Clock {
    /// A clock whose zero is `base` (any instant; only offsets matter).
    pub fn new(base: Instant) -> Self {
        Self { base }
    }

    /// The `Instant` a state machine should be given for `t`.
    pub fn instant(&self, t: VirtualTime) -> Instant {
        self.base + t.0
    }

    /// Virtual time of an `Instant` a state machine asked for (earlier than zero counts as zero).
    pub fn virtual_time(&self, i: Instant) -> VirtualTime {
        VirtualTime(i.saturating_duration_since(self.base))
    }
}

/// Virtual time of the step being run, in nanoseconds, for log lines (`--log`).
static LOG_NOW_NS: AtomicU64 = AtomicU64::new(0);

/// Stamps log lines from now on with `t`.
pub fn set_log_time(t: VirtualTime) {
    let ns = u64::try_from(t.0.as_nanos()).unwrap_or(u64::MAX);
    LOG_NOW_NS.store(ns, Ordering::Relaxed);
}

/// Stamps each log line with the virtual time it was written at, as the trace does.
pub struct LogTime;

impl tracing_subscriber::fmt::time::FormatTime for LogTime {
    fn format_time(&self, w: &mut tracing_subscriber::fmt::format::Writer<'_>) -> std::fmt::Result {
        let t = Duration::from_nanos(LOG_NOW_NS.load(Ordering::Relaxed));
        write!(w, "{:>12.6}s", t.as_secs_f64())
    }
}
