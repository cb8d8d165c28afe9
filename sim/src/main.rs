//! burrow-sim: runs connector, edge and origins on virtual time from a seed.
//!
//! The scenarios arrive with the tunnel state machines (issue 3); this skeleton keeps the
//! workspace shape and fails loudly rather than pretending to simulate anything.

fn main() {
    eprintln!("burrow-sim: no scenarios yet (the tunnel core lands in issue 3)");
    std::process::exit(2);
}
