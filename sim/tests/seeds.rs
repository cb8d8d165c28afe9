//! CI's share of the simulator: every scenario on 200 seeds at 5% loss, and replay determinism.

use burrow_sim::scenarios::{Params, ALL};

#[test]
fn every_scenario_passes_200_seeds_at_5_percent_loss() {
    let mut failures = Vec::new();
    for seed in 0..200 {
        for s in ALL {
            if let Err(why) = (s.run)(&Params {
                seed,
                loss: 0.05,
                quick: true,
            }) {
                failures.push(format!(
                    "seed {seed} {}: {why}\n  replay: cargo run -p burrow-sim --release -- --seed {seed} --seeds 1 --scenario {} --loss 0.05 --quick",
                    s.name, s.name
                ));
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

#[test]
fn the_same_seed_gives_the_same_trace() {
    for s in ALL {
        let p = Params {
            seed: 7,
            loss: 0.05,
            quick: true,
        };
        assert_eq!((s.run)(&p), (s.run)(&p), "{}", s.name);
    }
}
