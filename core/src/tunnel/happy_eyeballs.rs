//! The order and timing of a dial to a name's addresses, as Go's dialer (cloudflared's) has them:
//! the addresses of the first one's family are tried in turn, each given a share of what is
//! left of the connect timeout (at least 2 s), and the other family's start in a race beside
//! them [`FALLBACK_DELAY`] after the first attempt, or as soon as the first family has failed.
//! The first connection wins. So an address that drops SYNs costs 300 ms, not the whole
//! `connectTimeout`, when the other family answers (`localhost` is often `::1` first).
//!
//! Drivers run the attempts; this only says which to start and when to give one up.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

/// How long the other family waits for the first (Go's `fallbackDelay`).
pub const FALLBACK_DELAY: Duration = Duration::from_millis(300);

/// The least share of the timeout an address gets while more time is left (Go's
/// `saneMinimum`).
const SANE_MINIMUM: Duration = Duration::from_secs(2);

/// Most addresses of one name a plan dials; the resolver's order decides which. Go's dialer
/// has no cap, but a name's answer is the resolver's to make big, and past this many the
/// 2 s shares of a 30 s `connectTimeout` run out first anyway.
pub const MAX_ADDRESSES: usize = 32;

/// Names one connection attempt of a [`DialPlan`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct AttemptId(u32);

/// What a driver does next for a [`DialPlan`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DialStep {
    /// Start connecting to this address; report how it ends with its id.
    Connect(AttemptId, SocketAddr),
    /// Drop this attempt: its share of the timeout is spent (it failed with a timeout).
    Abandon(AttemptId),
    /// Nothing to start before this instant (none: until an attempt ends).
    Wait(Option<Instant>),
    /// Every address failed; the dial fails with the first error.
    Exhausted,
}

/// One family's addresses, tried one at a time (Go's `dialSerial`).
#[derive(Debug)]
struct Chain {
    addrs: VecDeque<SocketAddr>,
    /// The attempt under way and when its share of the timeout ends (none: at the dial's
    /// deadline, which the connector's own timer enforces).
    current: Option<(AttemptId, Option<Instant>)>,
    /// When it may start (none: already started, or waiting for the first chain to fail).
    start_at: Option<Instant>,
}

impl Chain {
    fn done(&self) -> bool {
        self.start_at.is_none() && self.current.is_none() && self.addrs.is_empty()
    }
}

/// A dial to several addresses of one name: [`DialPlan::poll`] until it waits, start what it
/// says, report each attempt's end.
#[derive(Debug)]
pub struct DialPlan {
    /// The first address's family, then the other.
    chains: [Chain; 2],
    deadline: Option<Instant>,
    next_id: u32,
    /// Steps decided by `failed` or time, handed out by `poll` in order.
    pending: VecDeque<DialStep>,
}

impl DialPlan {
    /// A dial begun at `now` to `addrs` (the first [`MAX_ADDRESSES`]) in the resolver's order,
    /// giving up at `deadline` (none: never). Without `race_families` (cloudflared's
    /// `noHappyEyeballs`) every address is tried in turn, whatever its family.
    pub fn new(
        now: Instant,
        addrs: &[SocketAddr],
        deadline: Option<Instant>,
        race_families: bool,
    ) -> Self {
        let first_v4 = addrs.first().is_none_or(SocketAddr::is_ipv4);
        let (primaries, fallbacks): (VecDeque<_>, VecDeque<_>) = addrs
            .iter()
            .take(MAX_ADDRESSES)
            .partition(|a| !race_families || a.is_ipv4() == first_v4);
        let fallback_at = (!fallbacks.is_empty()).then_some(now + FALLBACK_DELAY);
        Self {
            chains: [
                Chain {
                    addrs: primaries,
                    current: None,
                    start_at: Some(now),
                },
                Chain {
                    addrs: fallbacks,
                    current: None,
                    start_at: fallback_at,
                },
            ],
            deadline,
            next_id: 0,
            pending: VecDeque::new(),
        }
    }

    /// The next thing to do at `now`.
    pub fn poll(&mut self, now: Instant) -> DialStep {
        if let Some(step) = self.pending.pop_front() {
            return step;
        }
        for i in 0..2 {
            if let Some((id, Some(until))) = self.chains[i].current {
                if now >= until {
                    self.chains[i].current = None;
                    self.advance(i, now);
                    return DialStep::Abandon(id);
                }
            }
            if self.chains[i].start_at.is_some_and(|t| now >= t) {
                self.chains[i].start_at = None;
                self.advance(i, now);
            }
        }
        if let Some(step) = self.pending.pop_front() {
            return step;
        }
        if self.chains.iter().all(Chain::done) {
            return DialStep::Exhausted;
        }
        let next = self
            .chains
            .iter()
            .flat_map(|c| [c.start_at, c.current.and_then(|(_, until)| until)])
            .flatten()
            .min();
        DialStep::Wait(next)
    }

    /// Attempt `id` failed at `now`: its chain goes on to its next address.
    pub fn failed(&mut self, now: Instant, id: AttemptId) {
        let Some(i) = self
            .chains
            .iter()
            .position(|c| c.current.is_some_and(|(cur, _)| cur == id))
        else {
            return;
        };
        self.chains[i].current = None;
        self.advance(i, now);
    }

    /// Starts chain `i`'s next address, or ends it; the first chain's end starts the other.
    fn advance(&mut self, i: usize, now: Instant) {
        let remaining = self.chains[i].addrs.len() as u32;
        let Some(addr) = self.chains[i].addrs.pop_front() else {
            if i == 0 && self.chains[1].start_at.is_some() {
                self.chains[1].start_at = None;
                self.advance(1, now);
            }
            return;
        };
        let until = match self.deadline.map(|d| partial_deadline(now, d, remaining)) {
            // Out of time: the connector's deadline fails the dial.
            Some(None) => {
                self.chains[i].addrs.clear();
                return;
            }
            Some(Some(p)) if Some(p) < self.deadline => Some(p),
            _ => None,
        };
        let id = AttemptId(self.next_id);
        self.next_id += 1;
        self.chains[i].current = Some((id, until));
        self.pending.push_back(DialStep::Connect(id, addr));
    }
}

/// When one of `remaining` addresses gives up: an equal share of the time left, at least
/// [`SANE_MINIMUM`] while that much is left (Go's `partialDeadline`); none when none is left.
fn partial_deadline(now: Instant, deadline: Instant, remaining: u32) -> Option<Instant> {
    let left = deadline
        .checked_duration_since(now)
        .filter(|d| !d.is_zero())?;
    let share = (left / remaining.max(1)).max(SANE_MINIMUM.min(left));
    Some(now + share)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn a(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    const MS: Duration = Duration::from_millis(1);

    /// Polls until the plan waits or is exhausted.
    fn drain(p: &mut DialPlan, now: Instant) -> (Vec<DialStep>, DialStep) {
        let mut steps = Vec::new();
        loop {
            match p.poll(now) {
                s @ (DialStep::Wait(_) | DialStep::Exhausted) => return (steps, s),
                s => steps.push(s),
            }
        }
    }

    fn connect(s: &DialStep) -> (AttemptId, SocketAddr) {
        match s {
            DialStep::Connect(id, addr) => (*id, *addr),
            other => panic!("expected a connect, got {other:?}"),
        }
    }

    #[test]
    fn the_other_family_starts_300_ms_after_the_first_attempt() {
        let t0 = Instant::now();
        let deadline = t0 + Duration::from_secs(30);
        let mut p = DialPlan::new(
            t0,
            &[a("[::1]:80"), a("127.0.0.1:80")],
            Some(deadline),
            true,
        );
        let (steps, wait) = drain(&mut p, t0);
        assert_eq!(steps.len(), 1);
        assert_eq!(connect(&steps[0]).1, a("[::1]:80"));
        assert_eq!(wait, DialStep::Wait(Some(t0 + FALLBACK_DELAY)));
        // Nothing new before the delay: the wait does not move, and polling again starts nothing.
        assert_eq!(drain(&mut p, t0 + 299 * MS), (vec![], wait));
        let (steps, wait) = drain(&mut p, t0 + FALLBACK_DELAY);
        assert_eq!(connect(&steps[0]).1, a("127.0.0.1:80"));
        // Both attempts run to the dial's deadline, which the connector's timer keeps.
        assert_eq!(wait, DialStep::Wait(None));
    }

    #[test]
    fn without_racing_the_families_every_address_waits_its_turn() {
        let t0 = Instant::now();
        let deadline = t0 + Duration::from_secs(5);
        let addrs = [a("[::1]:80"), a("127.0.0.1:80")];
        let mut p = DialPlan::new(t0, &addrs, Some(deadline), false);
        let (steps, wait) = drain(&mut p, t0);
        let (first, addr) = connect(&steps[0]);
        assert_eq!(addr, addrs[0]);
        // No fallback at 300 ms: ::1 has half of the 5 s, then 127.0.0.1 the rest.
        let half = t0 + Duration::from_millis(2500);
        assert_eq!(wait, DialStep::Wait(Some(half)));
        assert_eq!(p.poll(half), DialStep::Abandon(first));
        let (steps, wait) = drain(&mut p, half);
        assert_eq!(connect(&steps[0]).1, addrs[1]);
        assert_eq!(wait, DialStep::Wait(None));
    }

    #[test]
    fn the_other_family_starts_at_once_when_the_first_has_failed() {
        let t0 = Instant::now();
        let mut p = DialPlan::new(
            t0,
            &[a("[::1]:80"), a("[::2]:80"), a("127.0.0.1:80")],
            Some(t0 + Duration::from_secs(30)),
            true,
        );
        let (steps, _) = drain(&mut p, t0);
        let (first, _) = connect(&steps[0]);
        p.failed(t0 + 10 * MS, first);
        let (steps, _) = drain(&mut p, t0 + 10 * MS);
        let (second, addr) = connect(&steps[0]);
        assert_eq!(addr, a("[::2]:80"));
        p.failed(t0 + 20 * MS, second);
        let (steps, wait) = drain(&mut p, t0 + 20 * MS);
        assert_eq!(connect(&steps[0]).1, a("127.0.0.1:80"));
        assert_eq!(wait, DialStep::Wait(None));
        p.failed(t0 + 30 * MS, connect(&steps[0]).0);
        assert_eq!(p.poll(t0 + 30 * MS), DialStep::Exhausted);
    }

    #[test]
    fn each_address_of_a_family_gets_a_share_of_the_timeout() {
        let t0 = Instant::now();
        let deadline = t0 + Duration::from_secs(30);
        let addrs = [a("10.0.0.1:80"), a("10.0.0.2:80"), a("10.0.0.3:80")];
        let mut p = DialPlan::new(t0, &addrs, Some(deadline), true);
        let (steps, wait) = drain(&mut p, t0);
        let (first, _) = connect(&steps[0]);
        let ten = t0 + Duration::from_secs(10);
        assert_eq!(wait, DialStep::Wait(Some(ten)));
        assert_eq!(p.poll(ten), DialStep::Abandon(first));
        let (steps, wait) = drain(&mut p, ten);
        assert_eq!(connect(&steps[0]).1, a("10.0.0.2:80"));
        // Half of the 20 s left.
        assert_eq!(wait, DialStep::Wait(Some(ten + Duration::from_secs(10))));
        let (second, _) = connect(&steps[0]);
        p.failed(ten + Duration::from_secs(1), second);
        let (steps, wait) = drain(&mut p, ten + Duration::from_secs(1));
        // The last address runs to the deadline itself.
        assert_eq!(connect(&steps[0]).1, a("10.0.0.3:80"));
        assert_eq!(wait, DialStep::Wait(None));
    }

    #[test]
    fn a_share_is_at_least_two_seconds_while_that_much_is_left() {
        let t0 = Instant::now();
        let addrs: Vec<_> = (1..=10).map(|i| a(&format!("10.0.0.{i}:80"))).collect();
        let mut p = DialPlan::new(t0, &addrs, Some(t0 + Duration::from_secs(5)), true);
        let (_, wait) = drain(&mut p, t0);
        assert_eq!(wait, DialStep::Wait(Some(t0 + SANE_MINIMUM)));
        let later = t0 + Duration::from_millis(3500);
        assert!(matches!(p.poll(t0 + SANE_MINIMUM), DialStep::Abandon(_)));
        let (steps, _) = drain(&mut p, t0 + SANE_MINIMUM);
        p.failed(later, connect(&steps[0]).0);
        // 1.5 s left: the third address runs to the deadline.
        let (steps, wait) = drain(&mut p, later);
        assert_eq!(connect(&steps[0]).1, addrs[2]);
        assert_eq!(wait, DialStep::Wait(None));
    }

    #[test]
    fn without_a_deadline_the_family_is_tried_in_turn_without_shares() {
        let t0 = Instant::now();
        let mut p = DialPlan::new(t0, &[a("10.0.0.1:80"), a("10.0.0.2:80")], None, true);
        let (steps, wait) = drain(&mut p, t0);
        assert_eq!(steps.len(), 1);
        assert_eq!(wait, DialStep::Wait(None));
        p.failed(t0, connect(&steps[0]).0);
        let (steps, _) = drain(&mut p, t0);
        assert_eq!(connect(&steps[0]).1, a("10.0.0.2:80"));
    }

    #[test]
    fn no_address_is_exhausted_at_once_and_a_stale_report_changes_nothing() {
        let t0 = Instant::now();
        assert_eq!(
            DialPlan::new(t0, &[], None, true).poll(t0),
            DialStep::Exhausted
        );
        let mut p = DialPlan::new(t0, &[a("10.0.0.1:80")], None, true);
        let (steps, _) = drain(&mut p, t0);
        let (id, _) = connect(&steps[0]);
        p.failed(t0, AttemptId(99));
        assert_eq!(p.poll(t0), DialStep::Wait(None));
        p.failed(t0, id);
        p.failed(t0, id);
        assert_eq!(p.poll(t0), DialStep::Exhausted);
    }

    #[test]
    fn a_name_with_more_addresses_than_the_bound_dials_the_first_ones() {
        let t0 = Instant::now();
        let addrs: Vec<SocketAddr> = (0..100u16)
            .map(|i| SocketAddr::from(([10, 0, (i >> 8) as u8, i as u8], 80)))
            .collect();
        let mut p = DialPlan::new(t0, &addrs, None, true);
        let mut dialled = Vec::new();
        loop {
            match p.poll(t0) {
                DialStep::Connect(id, addr) => {
                    dialled.push(addr);
                    p.failed(t0, id);
                }
                DialStep::Exhausted => break,
                other => panic!("unexpected {other:?}"),
            }
        }
        assert_eq!(dialled, addrs[..MAX_ADDRESSES]);
    }

    #[test]
    fn past_the_deadline_nothing_more_starts() {
        let t0 = Instant::now();
        let deadline = t0 + Duration::from_secs(1);
        let mut p = DialPlan::new(
            t0,
            &[a("10.0.0.1:80"), a("10.0.0.2:80")],
            Some(deadline),
            true,
        );
        let (steps, wait) = drain(&mut p, t0);
        // Less than the sane minimum is left: the first address gets all of it.
        assert_eq!(wait, DialStep::Wait(None));
        p.failed(deadline, connect(&steps[0]).0);
        assert_eq!(p.poll(deadline), DialStep::Exhausted);
    }

    proptest::proptest! {
        /// Whatever fails when: each address is dialled at most once, a wait always lies
        /// ahead (no busy loop), at most one attempt per family runs, and once every attempt
        /// has ended the plan is exhausted.
        #[test]
        fn any_run_dials_each_address_once_and_ends(
            v4 in proptest::collection::vec(proptest::bool::ANY, 0..6),
            timeout_ms in proptest::option::of(1u64..40_000),
            race in proptest::bool::ANY,
            ends in proptest::collection::vec((0u64..5_000, proptest::bool::ANY), 0..40),
        ) {
            let t0 = Instant::now();
            let addrs: Vec<SocketAddr> = v4
                .iter()
                .enumerate()
                .map(|(i, &v4)| if v4 { a(&format!("10.0.0.{i}:80")) } else { a(&format!("[::{i}]:80")) })
                .collect();
            let deadline = timeout_ms.map(|ms| t0 + Duration::from_millis(ms));
            let mut p = DialPlan::new(t0, &addrs, deadline, race);
            let mut now = t0;
            let mut running: Vec<(AttemptId, SocketAddr)> = Vec::new();
            let mut dialled: Vec<SocketAddr> = Vec::new();
            let mut ends = ends.into_iter();
            loop {
                match p.poll(now) {
                    DialStep::Connect(id, addr) => {
                        proptest::prop_assert!(!dialled.contains(&addr));
                        dialled.push(addr);
                        // One attempt per family with the race, one in all without.
                        let alongside = running
                            .iter()
                            .filter(|(_, r)| !race || r.is_ipv4() == addr.is_ipv4())
                            .count();
                        proptest::prop_assert_eq!(alongside, 0);
                        running.push((id, addr));
                    }
                    DialStep::Abandon(id) => {
                        proptest::prop_assert!(running.iter().any(|(r, _)| *r == id));
                        running.retain(|(r, _)| *r != id);
                    }
                    DialStep::Exhausted => {
                        proptest::prop_assert!(running.is_empty());
                        // Only a deadline leaves addresses undialled.
                        if deadline.is_none() {
                            proptest::prop_assert_eq!(dialled.len(), addrs.len());
                        }
                        break;
                    }
                    DialStep::Wait(until) => {
                        if let Some(t) = until {
                            proptest::prop_assert!(t > now);
                        }
                        if let Some((after, fail_first)) = ends.next() {
                            let step = now + Duration::from_millis(after);
                            now = until.map_or(step, |t| t.min(step));
                            // An attempt ends unless the plan's own time came first.
                            if !running.is_empty() && until.is_none_or(|t| step <= t) {
                                let (id, _) = if fail_first { running.remove(0) } else { running.pop().unwrap() };
                                p.failed(now, id);
                            }
                        } else if let Some((id, _)) = running.pop() {
                            p.failed(now, id);
                        } else if let Some(t) = until {
                            now = t;
                        } else {
                            proptest::prop_assert!(false, "waits for nothing");
                        }
                    }
                }
            }
        }
    }
}
