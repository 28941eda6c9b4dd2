//! `nodedb-perf`: load and comparison tools for nodedb-cluster; each prints one JSON object
//! (indented, or one line with `--json`); `--help` on any tool lists its options.
//!
//! `quic [--bytes 256MiB] [--runs 5] [--mtu 1452]` measures bulk QUIC throughput:
//! ours with and without GSO/GRO, stock quinn on tokio, and TCP, in one run (see `quic.rs`).
//!
//! `rpc [--requests 20000] [--concurrency 1,16] [--payload 128]` measures small request/
//! response rate and latency percentiles over our QUIC endpoint (see `rpc.rs`).
//!
//! `wal [--groups 64] [--rounds 200] [--payload 256] [--dir target/perf-wal]` measures WAL
//! appends per second with group commit against one fsync per group; `wal --checkpoint
//! [--live-mib 64]` measures small appends while the log is rewritten as a checkpoint,
//! paced and unpaced (see `wal.rs`).
//!
//! `raft [--seconds 5] [--concurrency 1,32] [--rate R] [--stages] [--processes]` measures
//! commit throughput and latency of a 3-replica group over QUIC with fsync against raft-rs
//! in memory and against the physical floor of a commit (see `raft.rs`, `floor.rs`); with
//! `--rate`, also under an open-loop load.
//!
//! `migrate [--mib 64] [--dir target/perf-migrate]` moves a replica of a loaded vShard to
//! another node while a writer runs and reports the move's time and throughput and the
//! writer's latency before and during it (see `migrate.rs`).
//!
//! `availability [--fault kill|pause|rolling] [--nodes 4] [--cores 2] [--groups 16] [--down 5]
//! [--every 10]` starts the nodes as separate processes of the built `nodedb-cluster`,
//! writes to every group and reports, per fault, how long the groups answered nothing (see
//! `availability.rs`).
//!
//! `idle [--groups 1024] [--seconds 10] [--writes 1000]` starts three node processes × two
//! cores hosting `groups` groups and reports start-up time, idle CPU, memory per replica
//! and the latency of a first write to a quiesced group, against the same cluster with
//! quiescence off (see `idle.rs`).
//!
//! `balance-matrix [--seeds N]` runs the balancer harness over every scenario and a range of
//! cluster sizes (3×1×256 up to 16×8×16384) and prints, per case, the harness's figures and
//! whether the balancer targets were met, with a summary line. Stock quinn, tokio and friends
//! are dependencies of this crate only, never of the main one.

mod availability;
mod floor;
mod idle;
mod migrate;
mod procs;
mod quic;
mod raft;
mod rpc;
mod wal;

/// The nodes' allocator (`nodedb-cluster`'s), so that in-process figures use it too.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::{Parser, Subcommand};
use nodedb_cluster::balance::harness::{self, HarnessConfig, Scenario};

const SIZES: [(usize, u16, u32); 6] = [
    (3, 1, 256),
    (4, 2, 1024),
    (5, 4, 1024),
    (8, 4, 4096),
    (12, 6, 8192),
    (16, 8, 16_384),
];

#[derive(Parser, Debug)]
#[command(
    name = "nodedb-perf",
    about = "Load and comparison tools for nodedb-cluster; each prints one JSON object"
)]
struct Cli {
    #[command(subcommand)]
    tool: Tool,
    /// Print the result as one line of JSON (default: indented JSON).
    #[arg(long, global = true)]
    json: bool,
}

#[derive(Subcommand, Debug)]
enum Tool {
    /// Bulk QUIC throughput of one connection: ours with and without GSO/GRO, stock quinn
    /// on tokio, and TCP, interleaved.
    Quic {
        /// Bytes per run (units: B, KiB, MiB, GiB, KB, MB, GB).
        #[arg(long, default_value = "256MiB", value_parser = parse_size)]
        bytes: u64,
        /// Runs of each contender (medians reported).
        #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u64).range(1..))]
        runs: u64,
        /// Datagram size, fixed for every QUIC contender.
        #[arg(long, default_value_t = 1452, value_parser = clap::value_parser!(u16).range(1200..=65527))]
        mtu: u16,
    },
    /// Small request/response rate and latency percentiles over our QUIC endpoint.
    Rpc {
        #[arg(long, default_value_t = 20_000, value_parser = clap::value_parser!(u64).range(1..))]
        requests: u64,
        /// Concurrent callers; a comma-separated list runs each in turn.
        #[arg(long, value_delimiter = ',', default_value = "1,16", value_parser = positive)]
        concurrency: Vec<usize>,
        /// Payload bytes per request.
        #[arg(long, default_value_t = 128)]
        payload: usize,
    },
    /// Write-ahead log appends per second with group commit against one fsync per group.
    Wal {
        #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u64).range(1..))]
        groups: u64,
        #[arg(long, default_value_t = 200, value_parser = clap::value_parser!(u64).range(1..))]
        rounds: u64,
        #[arg(long, default_value_t = 256)]
        payload: usize,
        /// Where the log goes; must support O_DIRECT (not tmpfs).
        #[arg(long, default_value = "target/perf-wal")]
        dir: PathBuf,
        /// Instead: small appends (one every 2 ms) while a log of `--live-mib` MiB is
        /// rewritten as a checkpoint, its writes paced and unpaced, `--checkpoint-rounds`
        /// rounds of each, alternating; each against the same appends with no checkpoint.
        #[arg(long)]
        checkpoint: bool,
        #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u64).range(1..))]
        live_mib: u64,
        #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..))]
        checkpoint_rounds: u32,
    },
    /// Commit throughput and latency of a 3-replica group over QUIC with fsync, against
    /// raft-rs in memory.
    Raft {
        #[arg(long, default_value_t = 5.0, value_parser = positive_seconds)]
        seconds: f64,
        /// Closed-loop writers; a comma-separated list runs each in turn.
        #[arg(long, value_delimiter = ',', default_value = "1,32", value_parser = positive)]
        concurrency: Vec<usize>,
        /// Trace every write and print where its time went, stage by stage (on stderr; in
        /// the JSON as `stages`).
        #[arg(long)]
        stages: bool,
        /// Also run an open-loop load after the closed-loop ones: this many writes per
        /// second in total on a fixed schedule, each latency measured from its due time (a
        /// row with `rate` instead of `concurrency`).
        #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
        rate: Option<u64>,
        /// Run the three nodes as separate processes of the built `nodedb-cluster` (files
        /// and node logs under `dir`), as etcd is measured, instead of in this process.
        #[arg(long)]
        processes: bool,
        /// The node binary for `--processes` (default: `nodedb-cluster` next to this one).
        #[arg(long)]
        binary: Option<PathBuf>,
        /// Where the nodes' logs and the floor's files go; must support O_DIRECT (not
        /// tmpfs).
        #[arg(long, default_value = "target/perf-raft")]
        dir: PathBuf,
    },
    /// What many groups cost three idle node processes (two cores each): start-up time,
    /// idle CPU, memory per replica, and a first write to a quiesced group against the
    /// same writes with quiescence off (a second cluster started after the first).
    Idle {
        /// Groups (vShards) of three replicas: a power of two.
        #[arg(long, default_value_t = 1024, value_parser = power_of_two_groups)]
        groups: u32,
        /// Seconds of idle CPU measured (after every replica quiesced).
        #[arg(long, default_value_t = 10.0, value_parser = positive_seconds)]
        seconds: f64,
        /// Distinct groups written (each once asleep, once awake) for the latency figures;
        /// at most `groups`.
        #[arg(long, default_value_t = 1000, value_parser = positive)]
        writes: usize,
        /// Skip the second cluster, with quiescence off (`active_write_p99_us` is then null).
        #[arg(long)]
        no_baseline: bool,
        /// The node binary (default: `nodedb-cluster` next to this one).
        #[arg(long)]
        binary: Option<PathBuf>,
        /// Where the nodes' files and logs go.
        #[arg(long, default_value = "target/perf-idle")]
        dir: PathBuf,
    },
    /// Moves a replica of a loaded vShard to another node while a writer runs: the move's
    /// time and throughput, and the writer's latency before and during it.
    Migrate {
        /// MiB loaded into the vShard. A vShard holds at most 1 GiB counting its keys and
        /// length prefixes, so 1 000 MiB of values is the most that fits.
        #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u64).range(1..=1000))]
        mib: u64,
        /// Where the nodes' logs go; must support O_DIRECT (not tmpfs).
        #[arg(long, default_value = "target/perf-migrate")]
        dir: PathBuf,
        /// The nodes' snapshot rate, MiB/s (default: unlimited); the stream's pace is
        /// reported against it (`achieved_throttle_ratio`).
        #[arg(long, value_parser = clap::value_parser!(u64).range(1..=100_000))]
        throttle: Option<u64>,
        /// Open-loop foreground writes per second, latency from each one's due time
        /// (default: one closed-loop writer).
        #[arg(long, value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
        rate: Option<u64>,
        /// Write the foreground latency distributions to PREFIX.before.hgrm and
        /// PREFIX.during.hgrm (HdrHistogram's plottable percentile format, milliseconds).
        #[arg(long, value_name = "PREFIX")]
        hgrm: Option<PathBuf>,
        /// Draw the foreground writes' latency into this SVG file: by percentile before and
        /// during the move, and p50/p99 second by second with the move's start and end.
        #[arg(long, value_name = "FILE.svg")]
        plot: Option<PathBuf>,
        /// Replica moves at once, one per group (the cluster gets the next power of two of
        /// groups, each loaded with `mib`).
        #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=64))]
        moves: u32,
        /// Run the four nodes as separate processes of the built `nodedb-cluster` (files,
        /// certificates and node logs under `dir`), so that memory is reported per side:
        /// `source_rss_growth_bytes`, `target_rss_growth_bytes`.
        #[arg(long)]
        processes: bool,
        /// The node binary for `--processes` (default: `nodedb-cluster` next to this one).
        #[arg(long)]
        binary: Option<PathBuf>,
        /// With `--processes`, keep `dir` (node files, data and logs) after a successful
        /// run too; `RUST_LOG` is passed on to the nodes.
        #[arg(long)]
        keep: bool,
        /// Trace every write of the writer and print where its time went, before and
        /// during the move (on stderr; in the JSON as `stages_before`, `stages_during`).
        #[arg(long)]
        stages: bool,
    },
    /// How long each group answers nothing when a node of a cluster of separate processes
    /// is killed and restarted, paused, or when every node restarts in turn.
    Availability {
        #[arg(long, value_enum, default_value = "kill")]
        fault: availability::Fault,
        #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u64).range(3..=9))]
        nodes: u64,
        #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u16).range(1..=8))]
        cores: u16,
        /// Groups (a power of two), each with one closed-loop writer.
        #[arg(long, default_value_t = 16)]
        groups: u32,
        /// Seconds a killed node stays down, or a paused one stopped.
        #[arg(long, default_value_t = 5.0, value_parser = positive_seconds)]
        down: f64,
        /// Seconds between two restarts of `--fault rolling`.
        #[arg(long, default_value_t = 10.0, value_parser = positive_seconds)]
        every: f64,
        /// Seconds measured after the last fault.
        #[arg(long, default_value_t = 10.0, value_parser = positive_seconds)]
        settle: f64,
        /// The node binary (default: `nodedb-cluster` next to this tool).
        #[arg(long)]
        binary: Option<PathBuf>,
        /// Where the nodes' files go; must support O_DIRECT (not tmpfs).
        #[arg(long, default_value = "target/perf-availability")]
        dir: PathBuf,
    },
    /// The balancer harness over every scenario and six cluster sizes (3×1×256 up to
    /// 16×8×16384), with whether the balancer targets were met.
    BalanceMatrix {
        /// Seeds per case.
        #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u64).range(1..))]
        seeds: u64,
    },
}

fn positive(text: &str) -> Result<usize, String> {
    match text.parse::<usize>() {
        Ok(n) if n > 0 => Ok(n),
        _ => Err(format!("{text:?} is not a positive integer")),
    }
}

fn power_of_two_groups(text: &str) -> Result<u32, String> {
    match text.parse::<u32>() {
        Ok(n) if n.is_power_of_two() && n <= 1 << 20 => Ok(n),
        _ => Err(format!(
            "{text:?} is not a power of two between 1 and 1048576"
        )),
    }
}

fn positive_seconds(text: &str) -> Result<f64, String> {
    match text.parse::<f64>() {
        Ok(s) if s.is_finite() && s > 0.0 => Ok(s),
        _ => Err(format!("{text:?} is not a positive number of seconds")),
    }
}

fn main() -> ExitCode {
    // Quiet unless `RUST_LOG` asks (`RUST_LOG=nodedb_cluster=debug` traces a move's phases).
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("error")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .init();
    let cli = Cli::parse();
    let result = match cli.tool {
        Tool::Quic { bytes, runs, mtu } => quic_bench(bytes, runs as usize, mtu, cli.json),
        Tool::Rpc {
            requests,
            concurrency,
            payload,
        } => rpc_bench(requests, &concurrency, payload),
        Tool::Wal {
            checkpoint: true,
            dir,
            live_mib,
            checkpoint_rounds,
            ..
        } => wal_checkpoint_bench(dir, live_mib, checkpoint_rounds),
        Tool::Wal {
            groups,
            rounds,
            payload,
            dir,
            ..
        } => wal_bench(dir, groups, rounds, payload),
        Tool::Raft {
            seconds,
            concurrency,
            stages,
            rate,
            processes,
            binary,
            dir,
        } => {
            let binary = processes.then(|| binary.unwrap_or_else(procs::default_binary));
            raft_bench(
                (seconds, &concurrency, rate),
                stages,
                binary.as_deref(),
                &dir,
            )
        }
        Tool::Migrate {
            mib,
            dir,
            throttle,
            rate,
            hgrm,
            plot,
            moves,
            processes,
            binary,
            keep,
            stages,
        } => migrate_bench(
            &migrate::Options {
                dir,
                mib,
                throttle: throttle.map(|t| t << 20),
                rate,
                moves,
                processes: processes.then(|| binary.unwrap_or_else(procs::default_binary)),
                keep,
                stages,
            },
            hgrm,
            plot,
        ),
        Tool::BalanceMatrix { seeds } => balance_matrix(seeds),
        Tool::Idle {
            groups,
            seconds,
            writes,
            no_baseline,
            binary,
            dir,
        } => idle::run(&idle::Options {
            groups,
            seconds,
            writes,
            baseline: !no_baseline,
            binary: binary.unwrap_or_else(procs::default_binary),
            dir,
        })
        .map(|value| (value, true)),
        Tool::Availability {
            fault,
            nodes,
            cores,
            groups,
            down,
            every,
            settle,
            binary,
            dir,
        } => availability_bench(availability::Options {
            fault,
            nodes,
            cores,
            groups,
            down: Duration::from_secs_f64(down),
            every: Duration::from_secs_f64(every),
            settle: Duration::from_secs_f64(settle),
            binary: binary.unwrap_or_else(procs::default_binary),
            dir,
        }),
    };
    match result {
        Ok((value, passed)) => {
            if cli.json {
                println!("{value}");
            } else {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&value).unwrap_or_default()
                );
            }
            if passed {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

/// A tool's result: its JSON, and whether it passed (only the balance matrix can fail).
type Outcome = Result<(serde_json::Value, bool), String>;

fn balance_matrix(seeds: u64) -> Outcome {
    let origin = Instant::now();
    let mut cases = Vec::new();
    let mut failed = 0;
    for (nodes, cores, vshards) in SIZES {
        for scenario in Scenario::ALL {
            for seed in 1..=seeds {
                let mut config = HarnessConfig::new(nodes, cores, vshards, scenario);
                config.seed = seed;
                let report =
                    harness::run(&config, &mut || origin.elapsed()).map_err(|e| e.to_string())?;
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
    Ok((summary, failed == 0))
}

/// `256MiB`, `1GiB`, `1000000`, `64KiB`, `10MB`.
fn parse_size(text: &str) -> Result<u64, String> {
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (digits, unit) = text.split_at(split);
    let n: u64 = digits.parse().map_err(|_| format!("bad size {text:?}"))?;
    let factor = match unit {
        "" | "B" => 1,
        "KiB" => 1 << 10,
        "MiB" => 1 << 20,
        "GiB" => 1 << 30,
        "KB" => 1_000,
        "MB" => 1_000_000,
        "GB" => 1_000_000_000,
        _ => {
            return Err(format!(
                "bad size unit in {text:?} (use KiB, MiB, GiB, KB, MB, GB)"
            ));
        }
    };
    n.checked_mul(factor)
        .ok_or_else(|| format!("size {text:?} overflows"))
}

fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(f64::total_cmp);
    let n = xs.len();
    if n % 2 == 1 {
        xs[n / 2]
    } else {
        (xs[n / 2 - 1] + xs[n / 2]) / 2.0
    }
}

fn quic_bench(bytes: u64, runs: usize, mtu: u16, quiet: bool) -> Outcome {
    let certs = quic::Certs::new();
    let names = ["ours", "ours_nogso", "quinn", "tcp"];
    let mut samples: Vec<Vec<quic::Sample>> = names.iter().map(|_| Vec::new()).collect();
    // Interleave the contenders so that machine noise spreads over all of them.
    for run in 0..runs {
        for (i, name) in names.iter().enumerate() {
            let result = match *name {
                "ours" => quic::ours(&certs, bytes, mtu, true),
                "ours_nogso" => quic::ours(&certs, bytes, mtu, false),
                "quinn" => quic::stock_quinn(&certs, bytes, mtu),
                _ => quic::tcp(bytes),
            };
            match result {
                Ok(s) => {
                    if !quiet {
                        eprintln!(
                            "run {run} {name:>10}: {:8.1} MB/s {:6.2} cpu-s/GB",
                            s.mb_s, s.cpu_s_per_gb
                        );
                    }
                    samples[i].push(s);
                }
                Err(e) => return Err(format!("{name} run {run}: {e}")),
            }
        }
    }
    let mut out = serde_json::Map::new();
    out.insert("bytes".into(), bytes.into());
    out.insert("runs".into(), runs.into());
    out.insert("mtu".into(), mtu.into());
    let mut medians = Vec::new();
    for (name, s) in names.iter().zip(&samples) {
        let mb_s = median(s.iter().map(|x| x.mb_s).collect());
        let cpu = median(s.iter().map(|x| x.cpu_s_per_gb).collect());
        out.insert(format!("{name}_mb_s"), mb_s.into());
        out.insert(format!("{name}_cpu_s_per_gb"), cpu.into());
        out.insert(
            format!("{name}_mb_s_samples"),
            s.iter().map(|x| x.mb_s).collect::<Vec<_>>().into(),
        );
        medians.push(mb_s);
    }
    out.insert("ours_over_quinn".into(), (medians[0] / medians[2]).into());
    out.insert("ours_over_nogso".into(), (medians[0] / medians[1]).into());
    Ok((serde_json::Value::Object(out), true))
}

fn rpc_bench(requests: u64, concurrency: &[usize], payload: usize) -> Outcome {
    let mut rows = Vec::new();
    for &c in concurrency {
        let r =
            rpc::run(requests, c, payload).map_err(|e| format!("rpc with concurrency {c}: {e}"))?;
        let h = &r.histogram;
        rows.push(serde_json::json!({
            "concurrency": c, "requests": r.requests, "payload_bytes": payload,
            "requests_per_sec": r.requests as f64 / r.seconds,
            "p50_us": h.value_at_quantile(0.50), "p99_us": h.value_at_quantile(0.99),
            "p999_us": h.value_at_quantile(0.999), "max_us": h.max(),
        }));
    }
    Ok((serde_json::json!({ "rpc": rows }), true))
}

fn migrate_bench(o: &migrate::Options, hgrm: Option<PathBuf>, plot: Option<PathBuf>) -> Outcome {
    // Created first: a path that cannot be written fails now, not after the run.
    let plot_file = match &plot {
        Some(path) => Some(
            std::fs::File::create(path).map_err(|e| format!("--plot {}: {e}", path.display()))?,
        ),
        None => None,
    };
    let r = migrate::run(o)?;
    if let (Some(path), Some(mut file)) = (&plot, plot_file) {
        use std::io::Write as _;
        let title = format!(
            "nodedb-perf migrate: {} MiB, {} move(s), {:.1} s",
            o.mib, o.moves, r.move_seconds
        );
        file.write_all(migrate::plot(&r, &title).as_bytes())
            .map_err(|e| format!("--plot {}: {e}", path.display()))?;
        eprintln!("latency plot written to {}", path.display());
    }
    if let Some(prefix) = hgrm {
        let with = |suffix: &str| {
            let mut name = prefix.clone().into_os_string();
            name.push(suffix);
            PathBuf::from(name)
        };
        migrate::write_hgrm(&with(".before.hgrm"), &r.baseline)?;
        migrate::write_hgrm(&with(".during.hgrm"), &r.during)?;
    }
    for (when, stages) in [("before", &r.baseline_stages), ("during", &r.during_stages)] {
        if let Some(stages) = stages {
            eprintln!(
                "writes {when} the move: where their time went\n{}",
                stages.table()
            );
        }
    }
    let mb = r.vshard_bytes as f64 / 1e6;
    let stream_rate = r.stream_bytes as f64 / r.stream_seconds.max(1e-9);
    let value = serde_json::json!({
        "throttle_bytes_per_sec": o.throttle,
        "writer": match o.rate { Some(_) => "open-loop", None => "closed-loop" },
        "write_rate_per_sec": o.rate,
        "moves": o.moves,
        "stream_bytes": r.stream_bytes,
        "stream_seconds": r.stream_seconds,
        "stream_bytes_per_sec": stream_rate,
        "achieved_throttle_ratio": o.throttle.map(|t| stream_rate / t as f64),
        "vshard_bytes": r.vshard_bytes,
        "move_seconds": r.move_seconds,
        "move_mb_per_sec": mb / r.move_seconds,
        "quic_mb_per_sec": r.quic_mb_per_sec,
        "move_over_quic": mb / r.move_seconds / r.quic_mb_per_sec.max(1e-9),
        "max_core_stall_us": r.max_core_stall_us,
        "nodes": if o.processes.is_some() { "processes" } else { "in-process" },
        "peak_rss_growth_bytes": r.peak_rss_growth_bytes,
        "source_rss_growth_bytes": r.source_rss_growth_bytes,
        "target_rss_growth_bytes": r.target_rss_growth_bytes,
        // The target keeps the vShard in memory once it holds it (the state machine is an
        // in-memory map): what it grew by beyond the vShard's bytes is what the move itself
        // held (buffers, decode, QUIC), with one move.
        "target_rss_growth_over_vshard_bytes": r
            .target_rss_growth_bytes
            .filter(|_| o.moves == 1)
            .map(|g| g as i64 - r.vshard_bytes as i64),
        "baseline_write_p50_us": r.baseline_p50_us,
        "baseline_write_p99_us": r.baseline_p99_us,
        "baseline_writes": r.baseline_writes,
        "max_core_busy_us": r.max_core_busy_us,
        "checkpoints_in_baseline": r.checkpoints_in_baseline,
        "checkpoints_during_move": r.checkpoints_during_move,
        "during_write_p50_us": r.during_p50_us,
        "during_write_p99_us": r.during_p99_us,
        "during_writes": r.during_writes,
        "during_over_baseline_p99": r.during_p99_us as f64 / r.baseline_p99_us.max(1) as f64,
        "stages_before": r.baseline_stages.as_ref().map(|s| s.to_json()),
        "stages_during": r.during_stages.as_ref().map(|s| s.to_json()),
    });
    Ok((value, true))
}

fn availability_bench(o: availability::Options) -> Outcome {
    let r = availability::run(&o)?;
    let faults: Vec<serde_json::Value> = r
        .faults
        .iter()
        .map(|f| {
            serde_json::json!({
                "kind": f.kind, "node": f.node, "at_seconds": f.at_seconds,
                "max_unavailable_ms": f.max_unavailable_ms,
                "p99_unavailable_ms": f.p99_unavailable_ms,
                "worst_group": f.worst_group,
            })
        })
        .collect();
    let worst =
        |pick: fn(&availability::FaultResult) -> f64| r.faults.iter().map(pick).fold(0.0, f64::max);
    let value = serde_json::json!({
        "fault": format!("{:?}", o.fault).to_lowercase(),
        "nodes": o.nodes,
        "cores": o.cores,
        "groups": o.groups,
        "down_seconds": o.down.as_secs_f64(),
        "max_unavailable_ms": worst(|f| f.max_unavailable_ms),
        "p99_unavailable_ms": worst(|f| f.p99_unavailable_ms),
        "baseline_max_unavailable_ms": r.baseline_max_unavailable_ms,
        "writes_ok": r.writes_ok,
        "writes_failed": r.writes_failed,
        "faults": faults,
    });
    Ok((value, true))
}

fn wal_bench(dir: PathBuf, groups: u64, rounds: u64, payload: usize) -> Outcome {
    let r = wal::run(dir, groups, rounds, payload)?;
    let value = serde_json::json!({
        "groups": groups, "rounds": rounds, "payload_bytes": payload,
        "group_commit_writes_per_sec": r.group_commit_writes_per_sec,
        "per_group_fsync_writes_per_sec": r.per_group_writes_per_sec,
        "group_commit_fsyncs": r.group_commit_fsyncs, "per_group_fsyncs": r.per_group_fsyncs,
        "speedup": r.group_commit_writes_per_sec / r.per_group_writes_per_sec,
    });
    Ok((value, true))
}

fn wal_checkpoint_bench(dir: PathBuf, live_mib: u64, rounds: u32) -> Outcome {
    let rows = wal::checkpoint_appends(dir, live_mib, rounds)?;
    let percentiles = |h: &hdrhistogram::Histogram<u64>| {
        serde_json::json!({
            "appends": h.len(), "p50_us": h.value_at_quantile(0.5),
            "p99_us": h.value_at_quantile(0.99), "max_us": h.max(),
        })
    };
    let rows: Vec<_> = rows
        .iter()
        .map(|r| {
            serde_json::json!({
                "paced": r.paced,
                "pace_bytes_per_sec": r.paced
                    .then_some(nodedb_cluster::constants::WAL_BACKGROUND_WRITE_BYTES_PER_SEC),
                "during_checkpoint": percentiles(&r.during),
                "no_checkpoint": percentiles(&r.quiet),
                "during_over_quiet_p99": r.during.value_at_quantile(0.99) as f64
                    / r.quiet.value_at_quantile(0.99).max(1) as f64,
                "checkpoint_seconds": r.checkpoint_seconds,
            })
        })
        .collect();
    let value = serde_json::json!({ "live_mib": live_mib, "rounds": rounds, "rows": rows });
    Ok((value, true))
}

fn raft_bench(
    (seconds, concurrency, rate): (f64, &[usize], Option<u64>),
    stages: bool,
    processes: Option<&std::path::Path>,
    dir: &std::path::Path,
) -> Outcome {
    // The floor first, on an idle machine, on the disk the nodes write to.
    let floor = floor::measure(dir, seconds.min(5.0))?;
    let floor_p50 = floor.commit.value_at_quantile(0.5).max(1);
    let floor_p99 = floor.commit.value_at_quantile(0.99).max(1);
    let percentiles = |h: &hdrhistogram::Histogram<u64>| {
        serde_json::json!({
            "p50_us": h.value_at_quantile(0.5), "p99_us": h.value_at_quantile(0.99),
            "p999_us": h.value_at_quantile(0.999),
        })
    };
    eprintln!(
        "floor: two 4 KiB O_DIRECT writes + fdatasync in parallel, then one QUIC round trip: p50 {} us, p99 {} us ({} samples)",
        floor_p50, floor_p99, floor.samples
    );
    let mut rows = Vec::new();
    for &c in concurrency {
        let ours = match processes {
            Some(binary) => raft::ours_processes(binary, dir, c, seconds, stages),
            None => raft::ours(c, seconds, stages),
        }
        .map_err(|e| format!("ours with {c} writers: {e}"))?;
        if let Some(stages) = &ours.stages {
            eprintln!("{c} writers: where a write's time goes\n{}", stages.table());
        }
        let commits = ((ours.commits_per_sec * seconds) as u64).clamp(1_000, 200_000);
        let ceiling = raft::in_memory(c, commits)
            .map_err(|e| format!("in-memory ceiling with {c} in flight: {e}"))?;
        rows.push(serde_json::json!({
            "concurrency": c,
            "ours_commits_per_sec": ours.commits_per_sec, "ours_p50_us": ours.p50_us,
            "ours_p99_us": ours.p99_us, "ours_p999_us": ours.p999_us,
            "memory_commits_per_sec": ceiling.commits_per_sec, "memory_p50_us": ceiling.p50_us,
            "memory_p99_us": ceiling.p99_us, "memory_p999_us": ceiling.p999_us,
            "ours_over_memory": ours.commits_per_sec / ceiling.commits_per_sec,
            "p50_over_floor": ours.p50_us as f64 / floor_p50 as f64,
            "p99_over_floor": ours.p99_us as f64 / floor_p99 as f64,
            "stages": ours.stages.as_ref().map(|s| s.to_json()),
        }));
    }
    if let Some(rate) = rate {
        let ours = raft::ours_open_loop(processes.map(|b| (b, dir)), rate, seconds, stages)
            .map_err(|e| format!("ours, open loop at {rate}/s: {e}"))?;
        if let Some(stages) = &ours.stages {
            eprintln!(
                "open loop at {rate}/s: where a write's time goes\n{}",
                stages.table()
            );
        }
        rows.push(serde_json::json!({
            "rate": rate,
            "ours_commits_per_sec": ours.commits_per_sec, "ours_p50_us": ours.p50_us,
            "ours_p99_us": ours.p99_us, "ours_p999_us": ours.p999_us,
            "p50_over_floor": ours.p50_us as f64 / floor_p50 as f64,
            "p99_over_floor": ours.p99_us as f64 / floor_p99 as f64,
            "stages": ours.stages.as_ref().map(|s| s.to_json()),
        }));
    }
    let floor = serde_json::json!({
        "samples": floor.samples,
        "commit": percentiles(&floor.commit),
        "write_pair": percentiles(&floor.write_pair),
        "round_trip": percentiles(&floor.round_trip),
    });
    Ok((
        serde_json::json!({
            "nodes": if processes.is_some() { "processes" } else { "in-process" },
            "floor": floor,
            "raft_commit": rows,
        }),
        true,
    ))
}
