//! Freed heap goes back to the kernel once a burst is over (burrow-os's [`HeapTrim`]),
//! checked every second: otherwise glibc keeps a burst's buffers resident for good.

use std::time::Duration;

use burrow_os::heap::HeapTrim;
use tokio::time::MissedTickBehavior;
use tracing::debug;

/// Holds bursts' buffers ([`burrow_os::heap::hold_bursts`]) and starts the once-a-second check
/// on the current runtime.
pub fn spawn_trim() {
    burrow_os::heap::hold_bursts();
    tokio::spawn(async {
        let mut trim = HeapTrim::new();
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            if let Some(bytes) = trim.tick() {
                debug!(released = bytes, "freed heap returned to the kernel");
            }
        }
    });
}
