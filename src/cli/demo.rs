//! `nodedb-cluster demo`: the main job — an embedded cluster on loopback under a mixed
//! load, with throughput and latency percentiles.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use nodedb_cluster::runtime::demo::DemoConfig;

#[derive(clap::Args, Debug)]
pub struct DemoArgs {
    /// Nodes in the embedded cluster.
    #[arg(long, default_value_t = 3)]
    pub nodes: u64,
    /// Cores per node.
    #[arg(long, default_value_t = 2)]
    pub cores: u16,
    /// vShard groups (a power of two; default 8, or 16 with --skew).
    #[arg(long)]
    pub groups: Option<u32>,
    /// Seconds of load.
    #[arg(long, default_value_t = 5.0)]
    pub seconds: f64,
    /// Concurrent closed-loop callers; with --rate, the most operations in flight.
    #[arg(long, default_value_t = 16)]
    pub concurrency: usize,
    /// Open loop: offer this many operations per second in total and measure latency from
    /// each operation's scheduled send time (no coordinated omission).
    #[arg(long)]
    pub rate: Option<f64>,
    /// Fraction of operations that are writes.
    #[arg(long, default_value_t = 0.5)]
    pub write_fraction: f64,
    /// Concentrate 60 % of the load on the groups one node (or one core) leads, and let
    /// the rebalancer in the nodes (interval shortened to 5 s) spread it; prints the
    /// imbalance over time.
    #[arg(long, value_enum)]
    pub skew: Option<nodedb_cluster::runtime::demo::Skew>,
    /// Trace every EVERY-th write (default: every write) and print where its time went,
    /// stage by stage: network, queue on the leader's core, batch wait, the leader's
    /// durable write, the wait for the quorum, apply, reply (and the follower's round trip).
    #[arg(long, num_args = 0..=1, default_missing_value = "1", value_name = "EVERY")]
    pub stages: Option<u64>,
    /// Also draw the latencies into this SVG file: the percentile curve of writes and
    /// reads, and their p50 and p99 second by second, with the replica moves the
    /// rebalancer started and ended marked.
    #[arg(long, value_name = "FILE.svg")]
    pub plot: Option<PathBuf>,
    /// Print one JSON object.
    #[arg(long)]
    pub json: bool,
    /// Where the certificates and write-ahead logs go (removed afterwards); a filesystem
    /// that supports O_DIRECT (not tmpfs). Default: the system temporary directory.
    #[arg(long)]
    pub dir: Option<PathBuf>,
}

/// Runs the demo.
pub fn run(args: &DemoArgs) -> ExitCode {
    if !(args.seconds.is_finite() && args.seconds > 0.0 && args.seconds <= 3600.0) {
        eprintln!("error: --seconds must be within (0, 3600]");
        return ExitCode::from(2);
    }
    let config = DemoConfig {
        nodes: args.nodes,
        cores: args.cores,
        // A skewed load needs groups fine enough to spread: with 8 groups over 3 nodes the
        // hot node's 4 groups leave one node with 2 of them, about 1.15 × the mean.
        groups: args
            .groups
            .unwrap_or(if args.skew.is_some() { 16 } else { 8 }),
        duration: Duration::from_secs_f64(args.seconds),
        concurrency: args.concurrency,
        rate: args.rate,
        write_fraction: args.write_fraction,
        dir: args.dir.clone(),
        skew: args.skew,
        progress: !args.json,
        stages: args.stages,
        plot: args.plot.is_some(),
        ..DemoConfig::default()
    };
    // Created first: a path that cannot be written fails now, not after the run.
    let plot_file = match &args.plot {
        Some(path) => match std::fs::File::create(path) {
            Ok(file) => Some((path, file)),
            Err(e) => {
                eprintln!("error: --plot {}: {e}", path.display());
                return ExitCode::from(2);
            }
        },
        None => None,
    };
    if !args.json {
        eprintln!(
            "starting {} nodes x {} cores ({} groups, mTLS, write-ahead logs) on 127.0.0.1 ...",
            config.nodes, config.cores, config.groups
        );
    }
    match nodedb_cluster::runtime::demo::run(&config) {
        Ok(r) => {
            if let (Some((path, mut file)), Some(svg)) = (plot_file, &r.plot_svg) {
                use std::io::Write as _;
                if let Err(e) = file.write_all(svg.as_bytes()) {
                    eprintln!("error: --plot {}: {e}", path.display());
                    return ExitCode::FAILURE;
                }
                if !args.json {
                    eprintln!("latency plot written to {}", path.display());
                }
            }
            if args.json {
                println!("{}", serde_json::to_string(&r).unwrap_or_default());
            } else {
                match r.offered_per_sec {
                    Some(rate) => println!(
                        "cluster ready in {:.2} s; {:.1} s of open-loop load offered at {rate:.0} ops/s (at most {} in flight; latency from the scheduled send time)",
                        r.startup_seconds, r.seconds, r.concurrency
                    ),
                    None => println!(
                        "cluster ready in {:.2} s; {:.1} s of load with {} callers",
                        r.startup_seconds, r.seconds, r.concurrency
                    ),
                }
                println!(
                    "writes  {:>8} ({:>8.0}/s)  p50 {:>6} us  p99 {:>6} us  p99.9 {:>6} us  max {:>7} us",
                    r.writes,
                    r.writes_per_sec,
                    r.write_p50_us,
                    r.write_p99_us,
                    r.write_p999_us,
                    r.write_max_us
                );
                println!(
                    "reads   {:>8} ({:>8.0}/s)  p50 {:>6} us  p99 {:>6} us  p99.9 {:>6} us  max {:>7} us",
                    r.reads,
                    r.reads_per_sec,
                    r.read_p50_us,
                    r.read_p99_us,
                    r.read_p999_us,
                    r.read_max_us
                );
                println!("errors  {:>8}", r.errors);
                if let Some(stages) = &r.stages {
                    print!("{}", stages.table());
                }
                if let Some(b) = &r.balance {
                    println!(
                        "balance node max/mean {:.3} -> {:.3}, core max/mean {:.3} -> {:.3}; {} leader transfers, {} replica moves; converged (node <= 1.15) {}",
                        b.initial_node_max_over_mean,
                        b.final_node_max_over_mean,
                        b.initial_core_max_over_mean,
                        b.final_core_max_over_mean,
                        b.leader_transfers,
                        b.replica_moves,
                        b.seconds_to_converge
                            .map_or("not within the run".into(), |s| format!("after {s:.1} s"))
                    );
                }
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
