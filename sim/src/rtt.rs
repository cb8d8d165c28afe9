//! quinn's RTT estimator (RFC 9002 §5.3) replayed from outside, to know a connection's probe
//! timeout (PTO). quinn reports only the smoothed RTT; each sample moves it by an eighth of the
//! difference (`smoothed = (7 smoothed + sample) / 8`), so watching it after every received
//! datagram gives back each sample, and with them the variance quinn keeps.
//!
//! The PTO matters because RFC 9000 §10.1 stretches the idle timeout to at least three of
//! them, and under loss the samples stretch: an edge whose ACK is lost acknowledges the same
//! packet again in its next packet, a keep-alive later, and that whole wait is a sample.

use std::time::Duration;

/// quinn's RTT before any sample (`TransportConfig::initial_rtt`'s default), reported until the
/// first one.
const INITIAL_RTT: Duration = Duration::from_millis(333);
/// quinn's timer granularity, the floor of the variance term.
const GRANULARITY: Duration = Duration::from_millis(1);

/// One connection's estimator, rebuilt from the smoothed RTT quinn reports.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RttReplica {
    smoothed: Option<Duration>,
    var: Duration,
    /// The largest sample seen.
    pub max_sample: Duration,
}

impl RttReplica {
    /// Takes the smoothed RTT quinn reports now (after one received datagram: at most one
    /// sample since the last look).
    pub fn observe(&mut self, reported: Duration) {
        match self.smoothed {
            None if reported == INITIAL_RTT => {}
            None => {
                self.smoothed = Some(reported);
                self.var = reported / 2;
                self.max_sample = reported;
            }
            Some(old) if old != reported => {
                // quinn truncates to whole nanoseconds: the sample is this to within 7 ns.
                let sample = (reported * 8).saturating_sub(old * 7);
                self.var = (3 * self.var + old.abs_diff(sample)) / 4;
                self.smoothed = Some(reported);
                self.max_sample = self.max_sample.max(sample);
            }
            Some(_) => {}
        }
    }

    /// The probe timeout in the application space, as quinn computes it for the idle timer:
    /// `smoothed + max(4 var, granularity) + max_ack_delay`.
    pub fn pto(&self, max_ack_delay: Duration) -> Option<Duration> {
        self.smoothed
            .map(|s| s + (4 * self.var).max(GRANULARITY) + max_ack_delay)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// quinn's update, as in quinn-proto 0.11 `RttEstimator::update` (no ack delay).
    fn quinn(smoothed: &mut Option<Duration>, var: &mut Duration, sample: Duration) {
        match *smoothed {
            Some(s) => {
                *var = (3 * *var + s.abs_diff(sample)) / 4;
                *smoothed = Some((7 * s + sample) / 8);
            }
            None => {
                *smoothed = Some(sample);
                *var = sample / 2;
            }
        }
    }

    #[test]
    fn the_replica_tracks_quinns_variance() {
        let (mut smoothed, mut var) = (None, Duration::ZERO);
        let mut r = RttReplica::default();
        r.observe(INITIAL_RTT);
        assert_eq!(r.pto(Duration::ZERO), None, "no sample yet");
        let samples = [
            31_811_361u64,
            35_000_000,
            3_200_000_000,
            40_000_000,
            33_000_001,
        ];
        for ns in samples {
            quinn(&mut smoothed, &mut var, Duration::from_nanos(ns));
            r.observe(smoothed.unwrap());
            let want = smoothed.unwrap() + 4 * var;
            let got = r.pto(Duration::ZERO).unwrap();
            assert!(
                got.abs_diff(want) < Duration::from_micros(1),
                "{got:?} vs {want:?}"
            );
        }
        assert!(r.max_sample.abs_diff(Duration::from_millis(3200)) < Duration::from_micros(1));
    }
}
