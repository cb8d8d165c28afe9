//! The one timer of a sans-IO loop (the connector's, the edge's): armed with the deadline the
//! machine last asked for.
//!
//! It is one `Sleep` kept for the loop's life and moved only when the deadline does. A fresh
//! `sleep_until` per turn was registered anew each time, after the last one had left the
//! timer wheel; the runtime thread parked in epoll then saw no timer, and every registration
//! woke it (an eventfd write, a context switch and a second `epoll_wait`), about once per
//! turn of the loop under load.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use tokio::time::Sleep;

/// How far off a disarmed timer is moved: later than any deadline a loop sets. Moving a
/// registered timer later costs nothing (tokio re-files it when it comes due).
const IDLE: Duration = Duration::from_secs(24 * 3600);

/// A timer this late means the process was stalled (descheduled on a loaded machine,
/// stopped): see [`DeadlineTimer::stalled`]. Timers fire on time otherwise.
pub const STALLED: Duration = Duration::from_millis(100);

/// The loop's timer.
#[derive(Debug)]
pub struct DeadlineTimer {
    sleep: Pin<Box<Sleep>>,
    armed: bool,
}

impl DeadlineTimer {
    /// A disarmed timer (call inside a runtime).
    pub fn new() -> Self {
        Self {
            sleep: Box::pin(tokio::time::sleep(IDLE)),
            armed: false,
        }
    }

    /// Fires at `deadline` (a past one at once); none disarms it.
    pub fn set(&mut self, deadline: Option<Instant>) {
        match deadline {
            Some(d) => {
                let d = tokio::time::Instant::from_std(d);
                if !self.armed || self.sleep.deadline() != d {
                    self.sleep.as_mut().reset(d);
                }
                self.armed = true;
            }
            None if self.armed => {
                self.sleep
                    .as_mut()
                    .reset(tokio::time::Instant::now() + IDLE);
                self.armed = false;
            }
            None => {}
        }
    }

    /// Whether the armed deadline passed [`STALLED`] or more before `now`: the process was not
    /// running when it came due. What its sockets received meanwhile is still queued there and
    /// must be read (past tokio's readiness cache, which may not have seen it yet:
    /// `QuicSocket::read_round_uncached`) before the timers run. Run first, the QUIC idle
    /// timers expire live connections whose keep-alives wait in the socket, and every
    /// connection closes and registers again (issue 16: a 4.5 s stop, under the 5 s idle
    /// timeout). On time, nothing is read: that would cost system calls on every timer.
    pub fn stalled(&self, now: Instant) -> bool {
        self.armed && now.saturating_duration_since(self.sleep.deadline().into_std()) >= STALLED
    }

    /// Resolves once the deadline has passed; pending while disarmed. It stays fired until
    /// [`DeadlineTimer::set`] moves it.
    pub fn fired(&mut self) -> impl Future<Output = ()> + '_ {
        std::future::poll_fn(move |cx: &mut Context<'_>| {
            if !self.armed {
                return Poll::Pending;
            }
            self.sleep.as_mut().poll(cx)
        })
    }
}

impl Default for DeadlineTimer {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The paused clock's now, as the loops pass deadlines (std `Instant`).
    fn now() -> Instant {
        tokio::time::Instant::now().into_std()
    }

    #[tokio::test(start_paused = true)]
    async fn fires_at_the_deadline_and_not_while_disarmed() {
        let mut t = DeadlineTimer::new();
        // Disarmed: nothing fires even long after.
        let idle = tokio::time::timeout(Duration::from_secs(3600), t.fired()).await;
        assert!(idle.is_err(), "a disarmed timer fired");

        let base = now();
        t.set(Some(base + Duration::from_millis(50)));
        t.fired().await;
        assert!(now() - base >= Duration::from_millis(50));
        // Fired stays fired until moved.
        t.fired().await;

        // Moved earlier, then later.
        let base = now();
        t.set(Some(base + Duration::from_secs(10)));
        t.set(Some(base + Duration::from_secs(1)));
        t.fired().await;
        let took = now() - base;
        assert!(took >= Duration::from_secs(1) && took < Duration::from_secs(10));
        let base = now();
        t.set(Some(base + Duration::from_secs(1)));
        t.set(Some(base + Duration::from_secs(5)));
        t.fired().await;
        assert!(now() - base >= Duration::from_secs(5));

        // Disarmed after being armed: the old deadline no longer fires.
        t.set(Some(now() + Duration::from_millis(10)));
        t.set(None);
        let idle = tokio::time::timeout(Duration::from_secs(60), t.fired()).await;
        assert!(idle.is_err(), "a disarmed timer fired at its old deadline");

        // A deadline already past fires at once.
        t.set(Some(now()));
        let at_once = tokio::time::timeout(Duration::from_millis(1), t.fired()).await;
        assert!(at_once.is_ok(), "a past deadline did not fire at once");
    }

    #[tokio::test(start_paused = true)]
    async fn stalled_only_when_the_deadline_passed_long_before() {
        let mut t = DeadlineTimer::new();
        assert!(!t.stalled(now() + Duration::from_secs(3600)), "disarmed");
        let base = now();
        t.set(Some(base + Duration::from_millis(50)));
        t.fired().await;
        // Fired on time: no extra reads.
        assert!(!t.stalled(now()));
        assert!(!t.stalled(now() + STALLED - Duration::from_millis(1)));
        // The process ran again 4.5 s after the deadline.
        assert!(t.stalled(now() + Duration::from_millis(4500)));
        t.set(None);
        assert!(
            !t.stalled(now() + Duration::from_millis(4500)),
            "disarmed again"
        );
    }
}
