//! The flow limiter against a model: any sequence of acquires, releases and limit changes.

use burrow_core::flow::{FlowLimiter, FlowPermit, FlowType};
use proptest::prelude::*;

#[derive(Debug, Clone)]
enum Op {
    Acquire(FlowType),
    /// Releases the held permit at this index (modulo how many are held).
    Release(usize),
    SetLimit(u64),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => prop_oneof![Just(FlowType::Tcp), Just(FlowType::Udp)].prop_map(Op::Acquire),
        3 => any::<usize>().prop_map(Op::Release),
        1 => (0u64..6).prop_map(Op::SetLimit),
    ]
}

proptest! {
    /// A slot is granted exactly when fewer than `limit` are held (or the limit is 0), so a
    /// grant never takes the count past the limit; the count always equals the permits alive
    /// (no underflow, no leak); rejections are counted by kind; all slots come back at the end.
    #[test]
    fn grants_follow_the_limit_and_the_count_follows_the_permits(
        initial in 0u64..6,
        ops in prop::collection::vec(op(), 0..200),
    ) {
        let l = FlowLimiter::new(initial);
        // The other holder of the shared handle, as the session manager is.
        let other = l.clone();
        let mut held: Vec<FlowPermit> = Vec::new();
        let mut limit = initial;
        let mut rejected = [0u64; 2];
        for (i, op) in ops.into_iter().enumerate() {
            let handle = if i % 2 == 0 { &l } else { &other };
            match op {
                Op::Acquire(kind) => {
                    let before = held.len() as u64;
                    let room = limit == 0 || before < limit;
                    match handle.acquire(kind) {
                        Ok(p) => {
                            prop_assert!(room, "granted with {before} held, limit {limit}");
                            held.push(p);
                            prop_assert!(limit == 0 || held.len() as u64 <= limit);
                        }
                        Err(_) => {
                            prop_assert!(!room, "refused with {before} held, limit {limit}");
                            rejected[kind as usize] += 1;
                        }
                    }
                }
                Op::Release(at) => {
                    if !held.is_empty() {
                        let at = at % held.len();
                        held.swap_remove(at).release();
                    }
                }
                Op::SetLimit(n) => {
                    handle.set_limit(n);
                    limit = n;
                }
            }
            prop_assert_eq!(l.active(), held.len() as u64);
            prop_assert_eq!(other.limit(), limit);
            prop_assert_eq!(l.rejected(FlowType::Tcp), rejected[0]);
            prop_assert_eq!(l.rejected(FlowType::Udp), rejected[1]);
        }
        drop(held);
        prop_assert_eq!(l.active(), 0);
    }
}
