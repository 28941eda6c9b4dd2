//! The `nodedb-cluster` command line.
//!
//! `start --config node.toml` runs a node; `kv --config F put|get|del` talks to a cluster.
//! `sim --seed N | --seeds N [--json]` runs the deterministic simulator.
//! `demo` starts an embedded three-node cluster on loopback and runs a mixed load.
//! `preflight` checks the machine (locked-memory limit, io_uring) with a fix for each failure.
//! `certs init|node|client` manages the cluster CA and certificates (PEM files, keys 0600).
//! `rebalance-sim` runs the balancer evaluation harness (see `balance::harness`) and prints
//! one row per sweep and a summary, or one JSON object with `--json`. Exit codes: 0 on
//! success, 1 when the run fails or misses its targets (with `--check`), 2 on bad arguments.

mod cli;

/// jemalloc, not glibc's malloc: glibc's sorts a long list of freed chunks in whichever
/// call comes next, which held a core 20 ms (ARCHITECTURE, *Memory allocator*).
#[cfg(feature = "jemalloc")]
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{ArgGroup, Parser, Subcommand};

use cli::certs::CertsCommand;
use cli::demo::DemoArgs;
use cli::kv::KvCommandArg;
use cli::rebalance_sim::RebalanceSimArgs;

#[derive(Parser, Debug)]
#[command(
    name = "nodedb-cluster",
    version,
    about = "Thread-per-core distributed coordination layer"
)]
struct Cli {
    /// Log lines as text (colours only on a terminal) or one JSON object each. Logs go to
    /// stderr; `RUST_LOG` sets what is logged (default: `info` for `start`, `error` for
    /// the other commands; e.g. `RUST_LOG=nodedb_cluster=debug`).
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
enum LogFormat {
    Text,
    Json,
}

/// Logs to stderr in `format`, filtered by `RUST_LOG` or else `default_filter`.
fn init_logs(format: LogFormat, default_filter: &str) {
    use std::io::IsTerminal;
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_filter));
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Json => logs.json().init(),
        LogFormat::Text => logs.with_ansi(std::io::stderr().is_terminal()).init(),
    }
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the rebalancer on a synthetic cluster until its plan is empty.
    RebalanceSim(RebalanceSimArgs),
    /// Start an embedded 3-node cluster on loopback (mTLS, WAL) and run a mixed load.
    Demo(DemoArgs),
    /// Run a node described by a configuration file until stopped. SIGTERM or SIGINT first
    /// hands leadership of the node's groups to other replicas (at most 5 s; a second
    /// signal stops at once), then stops; the write-ahead log makes any stop safe, a
    /// SIGKILL included.
    Start {
        #[arg(long)]
        config: PathBuf,
        /// Stop after this many seconds (tests, demos).
        #[arg(long)]
        run_for: Option<f64>,
        /// Join the running cluster that the node at HOST:PORT (any node's core 0) belongs
        /// to. Needed only at the first start: the data directory records the join.
        #[arg(long, value_name = "HOST:PORT")]
        join: Option<std::net::SocketAddr>,
    },
    /// Put, get or delete a key in a running cluster; show its placement table or move a
    /// replica.
    ///
    /// Exit status: 0 done, 1 failed (the message says why), 2 bad arguments or
    /// configuration, 3 the key does not exist (`get`, `del`), 4 no answer within
    /// `--timeout`.
    #[command(group(ArgGroup::new("cluster").required(true).args(["config", "endpoints"])))]
    Kv {
        /// A client file with the cluster's [[nodes]], cores, groups and [tls] (or
        /// --endpoints with --ca, --cert and --key).
        #[arg(long)]
        config: Option<PathBuf>,
        /// Instead of --config: one or more nodes of the cluster (HOST:PORT of any core,
        /// comma-separated). All are asked at once; the first answer describes the cluster.
        #[arg(long, value_delimiter = ',', value_name = "HOST:PORT,...")]
        endpoints: Vec<String>,
        /// With --endpoints: the cluster's CA certificate (PEM).
        #[arg(long, requires = "endpoints", value_name = "FILE")]
        ca: Option<PathBuf>,
        /// With --endpoints: this client's certificate, issued by the cluster's CA.
        #[arg(long, requires = "endpoints", value_name = "FILE")]
        cert: Option<PathBuf>,
        /// With --endpoints: the private key of --cert.
        #[arg(long, requires = "endpoints", value_name = "FILE")]
        key: Option<PathBuf>,
        /// With --endpoints: a cluster that runs without TLS (`[tls] insecure = true`).
        #[arg(long, requires = "endpoints", conflicts_with_all = ["ca", "cert", "key"])]
        insecure: bool,
        /// Give up after this many seconds without an answer (exit status 4).
        #[arg(long, default_value_t = 10.0, value_name = "SECONDS")]
        timeout: f64,
        /// Print one JSON object instead of text.
        #[arg(long, global = true)]
        json: bool,
        #[command(subcommand)]
        op: KvCommandArg,
    },
    /// Run the deterministic cluster simulator: one seed (replay) or many.
    Sim {
        /// Replay exactly this seed.
        #[arg(long, conflicts_with = "seeds")]
        seed: Option<u64>,
        /// Run seeds 1..=N.
        #[arg(long)]
        seeds: Option<u64>,
        /// Print one JSON object.
        #[arg(long)]
        json: bool,
    },
    /// Check that this machine can run a node (locked-memory limit, io_uring).
    Preflight,
    /// Create the cluster CA and issue node and client certificates (PEM, keys 0600).
    #[command(subcommand)]
    Certs(CertsCommand),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let default_filter = match cli.command {
        Command::Start { .. } => "info",
        _ => "error",
    };
    init_logs(cli.log_format, default_filter);
    match cli.command {
        Command::RebalanceSim(args) => cli::rebalance_sim::run(&args),
        Command::Demo(args) => cli::demo::run(&args),
        Command::Sim { seed, seeds, json } => cli::sim::run(seed, seeds, json),
        Command::Start {
            config,
            run_for,
            join,
        } => cli::start::run(&config, run_for, join),
        Command::Kv {
            config,
            endpoints,
            ca,
            cert,
            key,
            insecure,
            timeout,
            json,
            op,
        } => {
            let target = match config {
                Some(path) => cli::kv::Target::Config(path),
                None => cli::kv::Target::Endpoints {
                    endpoints,
                    ca,
                    cert,
                    key,
                    insecure,
                },
            };
            cli::kv::run(target, timeout, json, op)
        }
        Command::Preflight => match nodedb_cluster::runtime::cores::preflight() {
            Ok(()) => {
                println!("ok: locked-memory limit and io_uring are sufficient");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("error: {e}");
                ExitCode::FAILURE
            }
        },
        Command::Certs(command) => match cli::certs::run(command) {
            Ok(paths) => {
                for p in paths {
                    println!("wrote {}", p.display());
                }
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("error: {e}");
                ExitCode::FAILURE
            }
        },
    }
}
