//! `nodedb-perf`: load and comparison tools for nodedb-cluster; each prints one JSON object.
//!
//! `quic [--bytes 256MiB] [--runs 5] [--mtu 1452] [--json]` measures bulk QUIC throughput:
//! ours with and without GSO/GRO, stock quinn on tokio, and TCP, in one run (see `quic.rs`).
//!
//! `rpc [--requests 20000] [--concurrency 1,16] [--payload 128]` measures small request/
//! response rate and latency percentiles over our QUIC endpoint (see `rpc.rs`).
//!
//! `wal [--groups 64] [--rounds 200] [--payload 256] [--dir target/perf-wal]` measures WAL
//! appends per second with group commit against one fsync per group (see `wal.rs`).
//!
//! `raft [--seconds 5] [--concurrency 1,32]` measures commit throughput and latency of a
//! 3-replica group over QUIC with fsync against raft-rs in memory (see `raft.rs`).
//!
//! `migrate [--mib 64] [--dir target/perf-migrate]` moves a replica of a loaded vShard to
//! another node while a writer runs and reports the move's time and throughput and the
//! writer's latency before and during it (see `migrate.rs`).
//!
//! `balance-matrix [--seeds N]` runs the balancer harness over every scenario and a range of
//! cluster sizes (3×1×256 up to 16×8×16384) and prints, per case, the harness's figures and
//! whether the balancer targets were met, with a summary line. Later issues add transport,
//! Raft and migration tools here (stock quinn, tokio and friends are dependencies of this
//! crate only, never of the main one).

mod migrate;
mod quic;
mod raft;
mod rpc;
mod wal;

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
        Some("quic") => match QuicArgs::parse(&args[1..]) {
            Ok(quic_args) => quic_bench(&quic_args),
            Err(message) => {
                eprintln!("error: {message}");
                ExitCode::from(2)
            }
        },
        Some("rpc") => rpc_bench(&args[1..]),
        Some("raft") => raft_bench(&args[1..]),
        Some("wal") => wal_bench(&args[1..]),
        Some("migrate") => migrate_bench(&args[1..]),
        Some("balance-matrix") => match parse_seeds(&args[1..]) {
            Ok(seeds) => balance_matrix(seeds),
            Err(message) => {
                eprintln!("error: {message}");
                ExitCode::from(2)
            }
        },
        _ => {
            eprintln!("usage: nodedb-perf quic [--bytes 256MiB] [--runs N] [--mtu M] [--json]");
            eprintln!("       nodedb-perf rpc [--requests N] [--concurrency C] [--payload BYTES]");
            eprintln!(
                "       nodedb-perf wal [--groups 64] [--rounds 200] [--payload 256] [--dir D]"
            );
            eprintln!("       nodedb-perf raft [--seconds 5] [--concurrency 1,32]");
            eprintln!("       nodedb-perf migrate [--mib 64] [--dir D]");
            eprintln!("       nodedb-perf balance-matrix [--seeds N]");
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

struct QuicArgs {
    bytes: u64,
    runs: usize,
    mtu: u16,
    json: bool,
}

impl QuicArgs {
    fn parse(args: &[String]) -> Result<QuicArgs, String> {
        let mut parsed = QuicArgs {
            bytes: 256 << 20,
            runs: 5,
            mtu: 1452,
            json: false,
        };
        let mut it = args.iter();
        while let Some(flag) = it.next() {
            let mut value = || it.next().ok_or_else(|| format!("{flag} needs a value"));
            match flag.as_str() {
                "--bytes" => parsed.bytes = parse_size(value()?)?,
                "--runs" => {
                    parsed.runs = value()?
                        .parse()
                        .map_err(|_| "--runs takes a positive integer")?
                }
                "--mtu" => parsed.mtu = value()?.parse().map_err(|_| "--mtu takes 1200..=65527")?,
                "--json" => parsed.json = true,
                other => return Err(format!("unknown argument {other:?}")),
            }
        }
        if parsed.runs == 0 || parsed.bytes == 0 || !(1200..=65_527).contains(&parsed.mtu) {
            return Err("--runs and --bytes must be positive, --mtu within 1200..=65527".into());
        }
        Ok(parsed)
    }
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

fn quic_bench(args: &QuicArgs) -> ExitCode {
    let certs = quic::Certs::new();
    let names = ["ours", "ours_nogso", "quinn", "tcp"];
    let mut samples: Vec<Vec<quic::Sample>> = names.iter().map(|_| Vec::new()).collect();
    // Interleave the contenders so that machine noise spreads over all of them.
    for run in 0..args.runs {
        for (i, name) in names.iter().enumerate() {
            let result = match *name {
                "ours" => quic::ours(&certs, args.bytes, args.mtu, true),
                "ours_nogso" => quic::ours(&certs, args.bytes, args.mtu, false),
                "quinn" => quic::stock_quinn(&certs, args.bytes, args.mtu),
                _ => quic::tcp(args.bytes),
            };
            match result {
                Ok(s) => {
                    if !args.json {
                        eprintln!(
                            "run {run} {name:>10}: {:8.1} MB/s {:6.2} cpu-s/GB",
                            s.mb_s, s.cpu_s_per_gb
                        );
                    }
                    samples[i].push(s);
                }
                Err(e) => {
                    eprintln!("error: {name} run {run}: {e}");
                    return ExitCode::FAILURE;
                }
            }
        }
    }
    let mut out = serde_json::Map::new();
    out.insert("bytes".into(), args.bytes.into());
    out.insert("runs".into(), args.runs.into());
    out.insert("mtu".into(), args.mtu.into());
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
    let value = serde_json::Value::Object(out);
    if args.json {
        println!("{value}");
    } else {
        println!(
            "{}",
            serde_json::to_string_pretty(&value).unwrap_or_default()
        );
    }
    ExitCode::SUCCESS
}

/// Applies `--flag value` pairs in order with `apply`, which returns false for an unknown
/// flag or a value it cannot parse.
fn flags(args: &[String], mut apply: impl FnMut(&str, &str) -> bool) -> Result<(), String> {
    let mut it = args.iter();
    while let Some(flag) = it.next() {
        let value = it.next().ok_or_else(|| format!("{flag} needs a value"))?;
        if !apply(flag, value) {
            return Err(format!("bad argument {flag} {value}"));
        }
    }
    Ok(())
}

/// Parses `value` into `slot`; false when it does not parse.
fn set<T: std::str::FromStr>(slot: &mut T, value: &str) -> bool {
    value.parse().map(|v| *slot = v).is_ok()
}

/// Parses a comma-separated list into `slot`; false when an item does not parse.
fn set_list<T: std::str::FromStr>(slot: &mut Vec<T>, value: &str) -> bool {
    value
        .split(',')
        .map(str::parse)
        .collect::<Result<Vec<T>, _>>()
        .map(|v| *slot = v)
        .is_ok()
}

fn usage(message: &str) -> ExitCode {
    eprintln!("error: {message}");
    ExitCode::from(2)
}

fn rpc_bench(args: &[String]) -> ExitCode {
    let (mut requests, mut concurrency, mut payload) = (20_000u64, vec![1usize, 16], 128usize);
    let parsed = flags(args, |flag, value| match flag {
        "--requests" => set(&mut requests, value),
        "--payload" => set(&mut payload, value),
        "--concurrency" => set_list(&mut concurrency, value),
        _ => false,
    });
    if let Err(e) = parsed {
        return usage(&e);
    }
    if requests == 0 || concurrency.contains(&0) {
        return usage("--requests and --concurrency must be positive");
    }
    let mut rows = Vec::new();
    for c in concurrency {
        match rpc::run(requests, c, payload) {
            Ok(r) => {
                let h = &r.histogram;
                rows.push(serde_json::json!({
                    "concurrency": c, "requests": r.requests, "payload_bytes": payload,
                    "requests_per_sec": r.requests as f64 / r.seconds,
                    "p50_us": h.value_at_quantile(0.50), "p99_us": h.value_at_quantile(0.99),
                    "p999_us": h.value_at_quantile(0.999), "max_us": h.max(),
                }));
            }
            Err(e) => {
                eprintln!("error: rpc with concurrency {c}: {e}");
                return ExitCode::FAILURE;
            }
        }
    }
    println!("{}", serde_json::json!({ "rpc": rows }));
    ExitCode::SUCCESS
}

fn migrate_bench(args: &[String]) -> ExitCode {
    let mut mib = 64u64;
    let mut dir = std::path::PathBuf::from("target/perf-migrate");
    let parsed = flags(args, |flag, value| match flag {
        "--mib" => set(&mut mib, value),
        "--dir" => {
            dir = std::path::PathBuf::from(value);
            true
        }
        _ => false,
    });
    if let Err(e) = parsed {
        return usage(&e);
    }
    if mib == 0 || mib > 1024 {
        return usage("--mib must be within 1..=1024 (a vShard holds at most 1 GiB)");
    }
    match migrate::run(dir, mib) {
        Ok(r) => {
            let mb = r.vshard_bytes as f64 / 1e6;
            println!(
                "{}",
                serde_json::json!({
                    "vshard_bytes": r.vshard_bytes,
                    "move_seconds": r.move_seconds,
                    "move_mb_per_sec": mb / r.move_seconds,
                    "baseline_write_p50_us": r.baseline_p50_us,
                    "baseline_write_p99_us": r.baseline_p99_us,
                    "baseline_writes": r.baseline_writes,
                    "during_write_p50_us": r.during_p50_us,
                    "during_write_p99_us": r.during_p99_us,
                    "during_writes": r.during_writes,
                    "during_over_baseline_p99": r.during_p99_us as f64 / r.baseline_p99_us.max(1) as f64,
                })
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn wal_bench(args: &[String]) -> ExitCode {
    let (mut groups, mut rounds, mut payload) = (64u64, 200u64, 256usize);
    let mut dir = std::path::PathBuf::from("target/perf-wal");
    let parsed = flags(args, |flag, value| match flag {
        "--groups" => set(&mut groups, value),
        "--rounds" => set(&mut rounds, value),
        "--payload" => set(&mut payload, value),
        "--dir" => {
            dir = std::path::PathBuf::from(value);
            true
        }
        _ => false,
    });
    if let Err(e) = parsed {
        return usage(&e);
    }
    if groups == 0 || rounds == 0 {
        return usage("--groups and --rounds must be positive");
    }
    match wal::run(dir, groups, rounds, payload) {
        Ok(r) => {
            println!(
                "{}",
                serde_json::json!({
                    "groups": groups, "rounds": rounds, "payload_bytes": payload,
                    "group_commit_writes_per_sec": r.group_commit_writes_per_sec,
                    "per_group_fsync_writes_per_sec": r.per_group_writes_per_sec,
                    "group_commit_fsyncs": r.group_commit_fsyncs, "per_group_fsyncs": r.per_group_fsyncs,
                    "speedup": r.group_commit_writes_per_sec / r.per_group_writes_per_sec,
                })
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn raft_bench(args: &[String]) -> ExitCode {
    let (mut seconds, mut concurrency) = (5.0f64, vec![1usize, 32]);
    let parsed = flags(args, |flag, value| match flag {
        "--seconds" => set(&mut seconds, value),
        "--concurrency" => set_list(&mut concurrency, value),
        _ => false,
    });
    if let Err(e) = parsed {
        return usage(&e);
    }
    if !seconds.is_finite() || seconds <= 0.0 || concurrency.contains(&0) {
        return usage("--seconds and --concurrency must be positive");
    }
    let mut rows = Vec::new();
    for c in concurrency {
        let ours = match raft::ours(c, seconds) {
            Ok(r) => r,
            Err(e) => {
                eprintln!("error: ours with {c} writers: {e}");
                return ExitCode::FAILURE;
            }
        };
        let commits = ((ours.commits_per_sec * seconds) as u64).clamp(1_000, 200_000);
        let ceiling = match raft::in_memory(c, commits) {
            Ok(r) => r,
            Err(e) => {
                eprintln!("error: in-memory ceiling with {c} in flight: {e}");
                return ExitCode::FAILURE;
            }
        };
        rows.push(serde_json::json!({
            "concurrency": c,
            "ours_commits_per_sec": ours.commits_per_sec, "ours_p50_us": ours.p50_us,
            "ours_p99_us": ours.p99_us, "ours_p999_us": ours.p999_us,
            "memory_commits_per_sec": ceiling.commits_per_sec, "memory_p50_us": ceiling.p50_us,
            "memory_p99_us": ceiling.p99_us, "memory_p999_us": ceiling.p999_us,
            "ours_over_memory": ours.commits_per_sec / ceiling.commits_per_sec,
        }));
    }
    println!("{}", serde_json::json!({ "raft_commit": rows }));
    ExitCode::SUCCESS
}
