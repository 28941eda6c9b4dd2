//! `nodedb-cluster rebalance-sim`: the balancer evaluation harness (`balance::harness`) on a
//! synthetic cluster, printed as one row per sweep and a summary, or one JSON object.

use std::io::Write;
use std::process::ExitCode;
use std::time::Instant;

use nodedb_cluster::balance::harness::{self, HarnessConfig, HarnessReport, Scenario};

#[derive(clap::Args, Debug)]
pub struct RebalanceSimArgs {
    /// Nodes in the cluster (for new-node, including the node that joins).
    #[arg(long, default_value_t = 16)]
    pub nodes: usize,
    /// Cores per node.
    #[arg(long, default_value_t = 8)]
    pub cores: u16,
    /// vShards (real clusters use a power of two; any count is accepted here).
    #[arg(long, default_value_t = 1024)]
    pub vshards: u32,
    /// Replicas per vShard (capped by the nodes that can hold them).
    #[arg(long, default_value_t = 3)]
    pub replicas: usize,
    /// The starting skew: hot-node, hot-core, new-node, drain or zipf.
    #[arg(long, value_parser = parse_scenario)]
    pub scenario: Scenario,
    /// Seed of the synthetic load.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Zipf exponent of the zipf scenario.
    #[arg(long, default_value_t = 0.99)]
    pub zipf_exponent: f64,
    /// Give up after this many sweeps.
    #[arg(long, default_value_t = 100_000)]
    pub max_sweeps: usize,
    /// Seconds between periodic sweeps (a finished replica move also kicks one).
    #[arg(long, default_value_t = 30.0)]
    pub interval_secs: f64,
    /// MiB per second one replica move copies.
    #[arg(long, default_value_t = 100.0)]
    pub move_rate_mib: f64,
    /// Replica moves one node takes part in at once.
    #[arg(long, default_value_t = nodedb_cluster::constants::REBALANCE_MAX_MOVES_PER_NODE)]
    pub max_moves_per_node: usize,
    /// Replica moves in flight in the cluster at once.
    #[arg(long, default_value_t = nodedb_cluster::constants::REBALANCE_MAX_MOVES_IN_FLIGHT)]
    pub max_moves_in_flight: usize,
    /// Leader transfers one sweep may start [default: 16 per node].
    #[arg(long)]
    pub leader_transfers_per_sweep: Option<usize>,
    /// Print one JSON object instead of the table.
    #[arg(long)]
    pub json: bool,
    /// Exit with status 1 when the run misses any balancer target.
    #[arg(long)]
    pub check: bool,
}

fn parse_scenario(s: &str) -> Result<Scenario, String> {
    s.parse::<Scenario>().map_err(|e| e.to_string())
}

/// Runs the harness.
pub fn run(args: &RebalanceSimArgs) -> ExitCode {
    let mut config = HarnessConfig::new(args.nodes, args.cores, args.vshards, args.scenario);
    config.replicas = args.replicas;
    config.seed = args.seed;
    config.zipf_exponent = args.zipf_exponent;
    config.max_sweeps = args.max_sweeps;
    if !(args.interval_secs.is_finite()
        && args.interval_secs >= 0.001
        && args.interval_secs <= 86_400.0)
    {
        eprintln!("error: --interval-secs must be within 0.001..=86400");
        return ExitCode::from(2);
    }
    config.interval = std::time::Duration::from_secs_f64(args.interval_secs);
    let rate = args.move_rate_mib * f64::from(1u32 << 20);
    if !(rate.is_finite() && (1.0..=1e15).contains(&rate)) {
        eprintln!("error: --move-rate-mib must be positive and at most 1e9");
        return ExitCode::from(2);
    }
    config.move_rate_bytes_per_sec = rate as u64;
    config.max_moves_per_node = args.max_moves_per_node;
    config.max_moves_in_flight = args.max_moves_in_flight;
    if let Some(n) = args.leader_transfers_per_sweep {
        config.leader_transfers_per_sweep = n;
    }
    let origin = Instant::now();
    let report = match harness::run(&config, &mut || origin.elapsed()) {
        Ok(report) => report,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    let violations = report.violations();
    let printed = if args.json {
        print_json(&report, &violations)
    } else {
        print_table(&report, &violations)
    };
    if let Err(e) = printed {
        eprintln!("error: cannot write the report: {e}");
        return ExitCode::FAILURE;
    }
    if args.check && !violations.is_empty() {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

fn print_json(report: &HarnessReport, violations: &[String]) -> std::io::Result<()> {
    let mut value = serde_json::to_value(report).map_err(std::io::Error::other)?;
    if let Some(object) = value.as_object_mut() {
        object.insert("targets_met".into(), violations.is_empty().into());
        object.insert("violations".into(), violations.into());
    }
    let mut out = std::io::stdout().lock();
    writeln!(out, "{value}")
}

fn print_table(r: &HarnessReport, violations: &[String]) -> std::io::Result<()> {
    let mut out = std::io::stdout().lock();
    writeln!(
        out,
        "rebalance-sim {} : {} nodes x {} cores, {} vShards x {} replicas, seed {}",
        r.scenario, r.nodes, r.cores, r.vshards, r.replicas, r.seed
    )?;
    writeln!(
        out,
        "{:>6} {:>9} {:>5} {:>14} {:>6} {:>6} {:>12} {:>9} {:>9} {:>9} {:>9}",
        "sweep",
        "at_s",
        "kick",
        "status",
        "moves",
        "lt",
        "bytes",
        "in_flight",
        "node_max",
        "core_max",
        "plan_us"
    )?;
    for row in &r.rows {
        writeln!(
            out,
            "{:>6} {:>9.1} {:>5} {:>14} {:>6} {:>6} {:>12} {:>9} {:>9.4} {:>9.4} {:>9.1}",
            row.sweep,
            row.at_seconds,
            if row.kicked { "yes" } else { "" },
            format!("{:?}", row.status),
            row.moves,
            row.leader_transfers,
            row.bytes_moved,
            row.in_flight,
            row.node_max_over_mean,
            row.core_max_over_mean,
            row.plan_us
        )?;
    }
    writeln!(
        out,
        "converged            {} after {} sweeps ({} kicked by a finished move)",
        r.converged, r.sweeps_to_converge, r.kicked_sweeps
    )?;
    writeln!(
        out,
        "virtual time         {:.0} s to converge (bandwidth bound {:.0} s; moves of {} MiB/s, {} per node, {} in flight; {} leader transfers per sweep)",
        r.virtual_seconds_to_converge,
        r.bandwidth_bound_seconds,
        r.move_rate_bytes_per_sec >> 20,
        r.move_limit_per_node,
        r.move_limit_in_flight,
        r.leader_transfers_per_sweep
    )?;
    writeln!(
        out,
        "node max/mean        {:.4} -> {:.4} (bound {:.4})",
        r.initial_max_over_mean, r.final_max_over_mean, r.bound_max_over_mean
    )?;
    writeln!(
        out,
        "core max/mean        {:.4} -> {:.4} (bound {:.4})",
        r.initial_core_max_over_mean, r.final_core_max_over_mean, r.core_bound_max_over_mean
    )?;
    writeln!(
        out,
        "moves                {} ({} leader transfers, {} replica moves)",
        r.moves, r.leader_transfers, r.replica_moves
    )?;
    writeln!(
        out,
        "bytes moved          {} ({:.4} of {} stored; must move {}; {} between cores)",
        r.bytes_moved,
        r.bytes_moved_fraction,
        r.bytes_stored,
        r.bytes_must_move,
        r.core_bytes_moved
    )?;
    writeln!(
        out,
        "max moves of a vShard {}, reversed moves {}, after convergence {}",
        r.max_replica_moves_of_one_vshard, r.reversed_moves, r.moves_after_convergence
    )?;
    writeln!(
        out,
        "plan time            max {:.1} us, mean {:.1} us",
        r.plan_us_max, r.plan_us_mean
    )?;
    if violations.is_empty() {
        writeln!(out, "targets              met")?;
    } else {
        for v in violations {
            writeln!(out, "target missed        {v}")?;
        }
    }
    Ok(())
}
