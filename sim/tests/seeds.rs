//! CI's share of the simulator: every scenario on 200 seeds at 5% loss, and replay determinism.

use burrow_sim::scenarios::{Params, ALL};

#[test]
fn every_scenario_passes_200_seeds_at_5_percent_loss() {
    // Seeds are independent: split them over the cores CI has (2).
    let threads = std::thread::available_parallelism().map_or(2, |n| n.get().min(4)) as u64;
    let failures: Vec<String> = std::thread::scope(|scope| {
        let workers: Vec<_> = (0..threads)
            .map(|t| scope.spawn(move || run_seeds((0..200).filter(|s| s % threads == t))))
            .collect();
        workers
            .into_iter()
            .flat_map(|w| w.join().expect("worker panicked"))
            .collect()
    });
    assert!(
        failures.is_empty(),
        "{} failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

fn run_seeds(seeds: impl Iterator<Item = u64>) -> Vec<String> {
    let mut failures = Vec::new();
    for seed in seeds {
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
    failures
}

/// The scale: 10k concurrent UDP sessions at 5% loss, every payload accounted for.
#[test]
fn ten_thousand_udp_sessions_at_5_percent_loss() {
    let udp_echo = ALL.iter().find(|s| s.name == "udp-echo").expect("scenario");
    let p = Params {
        seed: 1,
        loss: 0.05,
        quick: false,
    };
    if let Err(why) = (udp_echo.run)(&p) {
        panic!("{why}\n  replay: cargo run -p burrow-sim --release -- --seed 1 --seeds 1 --scenario udp-echo --loss 0.05");
    }
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
