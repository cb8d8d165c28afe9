//! How much stream data a connection keeps unacknowledged (quinn's send window): about twice
//! what the path holds without queueing, so a busy sender does not stack a standing queue
//! behind its own window.
//!
//! quinn takes stream writes while written-but-unacknowledged data is under a fixed send
//! window (10 MB by default), whatever the path. When the sender is the slow end (an edge
//! whose CPU is saturated, reading its peer's ACKs late), that window fills with data queued
//! in socket buffers and in quinn: the smoothed RTT grows far above the minimum (1 ms against
//! 30 µs on loopback) and every byte goes through memory the caches no longer hold. Sizing the
//! window from the path's bandwidth-delay product (the congestion window scaled by min RTT
//! over smoothed RTT, the share of it that is not queue) leaves a path without queueing at
//! twice its congestion window, so the window never limits it, and trims only the standing
//! queue; the floor keeps short paths, whose RTT samples are mostly scheduling noise, full.

use std::time::Duration;

/// The largest send window: quinn's default, the fixed window this replaces.
pub const CEILING: u64 = 10_000_000;
/// Never less than this: at 1 ms of RTT it still carries 1 GB/s.
pub const FLOOR: u64 = 1 << 20;

/// The send window for a congestion window `cwnd` (bytes) and the path's smoothed and minimum
/// RTT: twice the bandwidth-delay product, within [`FLOOR`] and [`CEILING`].
pub fn fit(cwnd: u64, smoothed_rtt: Duration, min_rtt: Duration) -> u64 {
    let srtt = smoothed_rtt.as_nanos().max(1);
    // Clamped so that no pair of samples makes the window larger than twice the congestion one.
    let min = min_rtt.as_nanos().min(srtt);
    let bdp = u128::from(cwnd) * 2 * min / srtt;
    u64::try_from(bdp).unwrap_or(u64::MAX).clamp(FLOOR, CEILING)
}

/// Sets `conn`'s send window from its path as it is now ([`fit`]); call once its events are
/// exchanged, so the writes that follow see the latest ACKs' window. quinn only stores it:
/// streams it held back are woken at the next ACK, which a non-empty window always brings.
pub fn refit(conn: &mut quinn_proto::Connection) {
    let window = fit(conn.congestion_state().window(), conn.rtt(), conn.min_rtt());
    conn.set_send_window(window);
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn a_path_without_queueing_gets_twice_its_congestion_window() {
        assert_eq!(fit(2_000_000, 50 * MS, 50 * MS), 4_000_000);
    }

    #[test]
    fn a_standing_queue_is_trimmed_to_twice_the_delay_product() {
        // 4 MB in flight over a 50 ms path whose RTT has grown to 200 ms: 1 MB of it is
        // the path's, 3 MB queue.
        assert_eq!(fit(4_000_000, 200 * MS, 50 * MS), 2_000_000);
    }

    #[test]
    fn a_short_busy_path_keeps_the_floor() {
        // Loopback with a saturated sender: 30 µs minimum, 1 ms smoothed.
        assert_eq!(fit(372_000, MS, Duration::from_micros(30)), FLOOR);
    }

    #[test]
    fn a_large_window_stays_under_quinns_default() {
        assert_eq!(fit(50_000_000, 80 * MS, 80 * MS), CEILING);
    }

    #[test]
    fn degenerate_samples_stay_in_bounds() {
        assert_eq!(fit(u64::MAX, Duration::ZERO, Duration::ZERO), FLOOR);
        assert_eq!(fit(u64::MAX, MS, 10 * MS), CEILING);
        assert_eq!(fit(0, MS, MS), FLOOR);
    }

    proptest! {
        #[test]
        fn the_window_is_within_bounds_and_grows_with_the_congestion_window(
            cwnd in any::<u64>(),
            more in any::<u32>(),
            srtt_us in 0u64..10_000_000,
            min_us in 0u64..10_000_000,
        ) {
            let (srtt, min) = (Duration::from_micros(srtt_us), Duration::from_micros(min_us));
            let w = fit(cwnd, srtt, min);
            prop_assert!((FLOOR..=CEILING).contains(&w));
            prop_assert!(fit(cwnd.saturating_add(u64::from(more)), srtt, min) >= w);
        }
    }
}
