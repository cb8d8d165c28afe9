//! `burrow-sim`: runs scenarios on virtual time, one line per seed with the hash of its event
//! trace, then `N seeds, F failed`. The same seed always gives the same hash.

use std::process::ExitCode;

use std::hash::Hasher;

use burrow_core::tunnel::protocol::Protocol;
use burrow_sim::scenarios::{Params, Scenario, ALL};
use clap::Parser;

/// Deterministic simulation of burrow's connector and edge over a lossy network.
#[derive(Debug, Parser)]
#[command(name = "burrow-sim", version, about)]
struct Cli {
    /// How many seeds to run (seeds 0..N, or from --seed on).
    #[arg(long, default_value_t = 1)]
    seeds: u64,
    /// First seed (replays one run together with --seeds 1).
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Run only this scenario (see --list); all of them by default.
    #[arg(long)]
    scenario: Option<String>,
    /// Packet loss on every link, 0.0 to 1.0.
    #[arg(long, default_value_t = 0.0, value_parser = parse_loss)]
    loss: f64,
    /// CI-scale traffic (tens of requests, small bodies) instead of the full scale.
    #[arg(long)]
    quick: bool,
    /// Print the scenario names, one a line, and exit.
    #[arg(long)]
    list: bool,
    /// Print the core machines' logs at this level and above (error, warn, info, debug,
    /// trace) to stderr, to read what led to a failure while replaying it.
    #[arg(long)]
    log: Option<tracing::Level>,
}

fn parse_loss(s: &str) -> Result<f64, String> {
    let p: f64 = s
        .parse()
        .map_err(|e| format!("{s:?} is not a number: {e}"))?;
    if (0.0..=1.0).contains(&p) {
        Ok(p)
    } else {
        Err(format!("loss must be between 0 and 1, got {p}"))
    }
}

/// Runs every scenario for one seed; the seed's hash folds the scenarios' trace hashes in order.
fn run_seed(scenarios: &[&Scenario], params: &Params) -> Result<u64, (&'static str, String)> {
    let mut hasher = fnv::FnvHasher::default();
    for s in scenarios {
        let hash = (s.run)(params).map_err(|why| (s.name, why))?;
        hasher.write_u64(hash);
    }
    Ok(hasher.finish())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Some(level) = cli.log {
        tracing_subscriber::fmt()
            .with_max_level(level)
            .with_writer(std::io::stderr)
            .with_timer(burrow_sim::clock::LogTime)
            .init();
    }
    if cli.list {
        for s in ALL {
            println!("{}", s.name);
        }
        return ExitCode::SUCCESS;
    }
    let scenarios: Vec<_> = match &cli.scenario {
        None => ALL.iter().collect(),
        Some(name) => match ALL.iter().find(|s| s.name == name) {
            Some(s) => vec![s],
            None => {
                eprintln!("burrow-sim: no scenario {name:?}; --list shows them");
                return ExitCode::from(2);
            }
        },
    };
    let (mut seeds, mut failed) = (0u64, 0u64);
    for seed in cli.seed..cli.seed.saturating_add(cli.seeds) {
        seeds += 1;
        let params = Params {
            seed,
            loss: cli.loss,
            quick: cli.quick,
            protocol: Protocol::Quic,
        };
        match run_seed(&scenarios, &params) {
            Ok(hash) => println!("seed {seed} ok {hash:016x}"),
            Err((scenario, why)) => {
                failed += 1;
                println!("seed {seed} FAILED in {scenario}: {why}");
                println!(
                    "  replay: cargo run -p burrow-sim --release -- --seed {seed} --seeds 1 --scenario {scenario} --loss {}{}",
                    cli.loss,
                    if cli.quick { " --quick" } else { "" }
                );
            }
        }
    }
    println!("{seeds} seeds, {failed} failed");
    if failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
