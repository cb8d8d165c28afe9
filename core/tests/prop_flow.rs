//! The flow limit against a model: places holding flows (connections, the session manager)
//! admit through gates that count what the others hold, over any sequence of admissions,
//! releases and limit changes.

use burrow_core::flow::{FlowGate, FlowSlot};
use proptest::prelude::*;

#[derive(Debug, Clone)]
enum Op {
    /// Place `0` (modulo the places) asks for a slot.
    Admit(usize),
    /// Place `0` releases the flow at index `1` (modulo what it holds).
    Release(usize, usize),
    SetLimit(u64),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => any::<usize>().prop_map(Op::Admit),
        3 => (any::<usize>(), any::<usize>()).prop_map(|(p, i)| Op::Release(p, i)),
        1 => (0u64..6).prop_map(Op::SetLimit),
    ]
}

proptest! {
    /// A place's gate (the limit, and what every other place holds) grants a slot exactly
    /// when the process holds fewer than `limit` (or the limit is 0), so grants never take the
    /// count past the limit, whichever place asks.
    #[test]
    fn gates_grant_exactly_while_the_process_is_under_the_limit(
        initial in 0u64..6,
        places in 1usize..5,
        ops in prop::collection::vec(op(), 0..200),
    ) {
        let mut held: Vec<Vec<FlowSlot>> = (0..places).map(|_| Vec::new()).collect();
        let mut limit = initial;
        for op in ops {
            let total: u64 = held.iter().map(|h| h.len() as u64).sum();
            match op {
                Op::Admit(p) => {
                    let p = p % places;
                    let own = held[p].len() as u64;
                    let gate = FlowGate::new(limit, total - own);
                    let room = limit == 0 || total < limit;
                    match gate.admit(own) {
                        Ok(slot) => {
                            prop_assert!(room, "granted with {total} held, limit {limit}");
                            held[p].push(slot);
                        }
                        Err(_) => prop_assert!(!room, "refused with {total} held, limit {limit}"),
                    }
                }
                Op::Release(p, i) => {
                    let h = &mut held[p % places];
                    if !h.is_empty() {
                        let i = i % h.len();
                        drop(h.swap_remove(i));
                    }
                }
                Op::SetLimit(n) => limit = n,
            }
        }
    }
}
