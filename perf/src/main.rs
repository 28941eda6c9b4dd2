//! `nodedb-perf`: load and comparison tools for nodedb-cluster; each prints one JSON object.
//!
//! `balance-matrix [--seeds N]` runs the balancer harness over every scenario and a range of
//! cluster sizes (3×1×256 up to 16×8×16384) and prints, per case, the harness's figures and
//! whether the balancer targets were met, with a summary line. Later issues add transport,
//! Raft and migration tools here (stock quinn, tokio and friends are dependencies of this
//! crate only, never of the main one).

use std::process::ExitCode;
use std::time::Instant;

use nodedb_cluster::balance::harness::{self, HarnessConfig, Scenario};

const SIZES: [(usize, u16, u32); 6] = [
    (3, 1, 256),
    (4, 2, 1024),
    (5, 4, 1024),
    (8, 4, 4096),
    (12, 6, 8192),
    (16, 8, 16_384),
];

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("balance-matrix") => match parse_seeds(&args[1..]) {
            Ok(seeds) => balance_matrix(seeds),
            Err(message) => {
                eprintln!("error: {message}");
                ExitCode::from(2)
            }
        },
        _ => {
            eprintln!("usage: nodedb-perf balance-matrix [--seeds N]");
            ExitCode::from(2)
        }
    }
}

fn parse_seeds(args: &[String]) -> Result<u64, String> {
    match args {
        [] => Ok(3),
        [flag, n] if flag == "--seeds" => match n.parse::<u64>() {
            Ok(n) if n > 0 => Ok(n),
            _ => Err(format!("--seeds takes a positive integer, not {n:?}")),
        },
        _ => Err(format!(
            "unexpected arguments {args:?}; usage: balance-matrix [--seeds N]"
        )),
    }
}

fn balance_matrix(seeds: u64) -> ExitCode {
    let origin = Instant::now();
    let mut cases = Vec::new();
    let mut failed = 0;
    for (nodes, cores, vshards) in SIZES {
        for scenario in Scenario::ALL {
            for seed in 1..=seeds {
                let mut config = HarnessConfig::new(nodes, cores, vshards, scenario);
                config.seed = seed;
                let report = match harness::run(&config, &mut || origin.elapsed()) {
                    Ok(report) => report,
                    Err(e) => {
                        eprintln!("error: {e}");
                        return ExitCode::FAILURE;
                    }
                };
                let violations = report.violations();
                failed += usize::from(!violations.is_empty());
                cases.push(serde_json::json!({
                    "scenario": scenario.name(), "nodes": nodes, "cores": cores, "vshards": vshards, "seed": seed,
                    "sweeps_to_converge": report.sweeps_to_converge, "moves": report.moves,
                    "leader_transfers": report.leader_transfers,
                    "final_max_over_mean": report.final_max_over_mean,
                    "bound_max_over_mean": report.bound_max_over_mean,
                    "final_core_max_over_mean": report.final_core_max_over_mean,
                    "core_bound_max_over_mean": report.core_bound_max_over_mean,
                    "bytes_moved": report.bytes_moved, "bytes_must_move": report.bytes_must_move,
                    "plan_us_max": report.plan_us_max, "violations": violations,
                }));
            }
        }
    }
    let summary = serde_json::json!({ "cases": cases.len(), "failed": failed, "results": cases });
    println!("{summary}");
    if failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
