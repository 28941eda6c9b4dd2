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

use std::io::Write;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use std::path::{Path, PathBuf};

use clap::{Parser, Subcommand};
use nodedb_cluster::balance::harness::{self, HarnessConfig, HarnessReport, Scenario};
use nodedb_cluster::ids::{CoreAddress, GroupId};
use nodedb_cluster::ids::{CoreId, NodeId};
use nodedb_cluster::runtime::client::KvClient;
use nodedb_cluster::runtime::config::LoadedConfig;
use nodedb_cluster::runtime::demo::DemoConfig;
use nodedb_cluster::runtime::executor::{CorePlacement, spawn_executor};
use nodedb_cluster::runtime::node::Node;
use nodedb_cluster::runtime::tls;

#[derive(Parser, Debug)]
#[command(
    name = "nodedb-cluster",
    version,
    about = "Thread-per-core distributed coordination layer"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the rebalancer on a synthetic cluster until its plan is empty.
    RebalanceSim(RebalanceSimArgs),
    /// Start an embedded 3-node cluster on loopback (mTLS, WAL) and run a mixed load.
    Demo(DemoArgs),
    /// Run a node described by a configuration file until stopped (SIGINT/SIGTERM; the
    /// write-ahead log makes any stop safe).
    Start {
        #[arg(long)]
        config: PathBuf,
        /// Stop after this many seconds (tests, demos).
        #[arg(long)]
        run_for: Option<f64>,
    },
    /// Put, get or delete a key in a running cluster; show its placement table or move a
    /// replica.
    Kv {
        /// A configuration file with the cluster's [[nodes]], cores, groups and [tls].
        #[arg(long)]
        config: PathBuf,
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

#[derive(Subcommand, Debug)]
enum KvCommandArg {
    /// Set KEY to VALUE.
    Put { key: String, value: String },
    /// Print KEY's value (linearizable read).
    Get { key: String },
    /// Delete KEY.
    Del { key: String },
    /// Print the placement table: its epoch and each group's replicas (id@node/core).
    Placement,
    /// Move GROUP's replica on node FROM to core CORE of node NODE (`--to NODE:CORE`). The
    /// move is recorded in the placement table and carried out by the metadata leader;
    /// `placement` shows when it is done.
    Move {
        #[arg(long)]
        group: u64,
        #[arg(long)]
        from: u64,
        #[arg(long, value_parser = parse_core_address)]
        to: CoreAddress,
    },
    /// Give up GROUP's move (its target node is gone for good): the new replica is taken
    /// out again, unless the old one already left.
    AbandonMove {
        #[arg(long)]
        group: u64,
    },
}

/// `NODE:CORE`, e.g. `4:1`.
fn parse_core_address(text: &str) -> Result<CoreAddress, String> {
    let (node, core) = text
        .split_once(':')
        .ok_or_else(|| format!("{text:?} is not NODE:CORE"))?;
    Ok(CoreAddress {
        node: NodeId(node.parse().map_err(|e| format!("node {node:?}: {e}"))?),
        core: CoreId(core.parse().map_err(|e| format!("core {core:?}: {e}"))?),
    })
}

#[derive(clap::Args, Debug)]
struct DemoArgs {
    /// Nodes in the embedded cluster.
    #[arg(long, default_value_t = 3)]
    nodes: u64,
    /// Cores per node.
    #[arg(long, default_value_t = 2)]
    cores: u16,
    /// vShard groups (a power of two).
    #[arg(long, default_value_t = 8)]
    groups: u32,
    /// Seconds of load.
    #[arg(long, default_value_t = 5.0)]
    seconds: f64,
    /// Concurrent closed-loop callers; with --rate, the most operations in flight.
    #[arg(long, default_value_t = 16)]
    concurrency: usize,
    /// Open loop: offer this many operations per second in total and measure latency from
    /// each operation's scheduled send time (no coordinated omission).
    #[arg(long)]
    rate: Option<f64>,
    /// Fraction of operations that are writes.
    #[arg(long, default_value_t = 0.5)]
    write_fraction: f64,
    /// Print one JSON object.
    #[arg(long)]
    json: bool,
    /// Where the certificates and write-ahead logs go (removed afterwards); a filesystem
    /// that supports O_DIRECT (not tmpfs). Default: the system temporary directory.
    #[arg(long)]
    dir: Option<PathBuf>,
}

#[derive(Subcommand, Debug)]
enum CertsCommand {
    /// Create a cluster CA: DIR/ca.pem and DIR/ca.key.
    Init {
        #[arg(long)]
        dir: PathBuf,
        /// Name written into the CA certificate.
        #[arg(long, default_value = "nodedb")]
        cluster: String,
        /// Replace an existing CA (every certificate it issued stops being trusted).
        #[arg(long)]
        force: bool,
    },
    /// Issue DIR/node-<ID>.pem and .key, signed by the CA in DIR.
    Node {
        #[arg(long)]
        dir: PathBuf,
        #[arg(long)]
        id: u64,
        /// Extra subject alternative names (IP addresses or DNS names); repeatable.
        #[arg(long = "san")]
        sans: Vec<String>,
    },
    /// Issue DIR/client-<NAME>.pem and .key for a client, signed by the CA in DIR.
    Client {
        #[arg(long)]
        dir: PathBuf,
        #[arg(long)]
        name: String,
    },
}

#[derive(clap::Args, Debug)]
struct RebalanceSimArgs {
    /// Nodes in the cluster (for new-node, including the node that joins).
    #[arg(long, default_value_t = 16)]
    nodes: usize,
    /// Cores per node.
    #[arg(long, default_value_t = 8)]
    cores: u16,
    /// vShards (real clusters use a power of two; any count is accepted here).
    #[arg(long, default_value_t = 1024)]
    vshards: u32,
    /// Replicas per vShard (capped by the nodes that can hold them).
    #[arg(long, default_value_t = 3)]
    replicas: usize,
    /// The starting skew: hot-node, hot-core, new-node, drain or zipf.
    #[arg(long, value_parser = parse_scenario)]
    scenario: Scenario,
    /// Seed of the synthetic load.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Zipf exponent of the zipf scenario.
    #[arg(long, default_value_t = 0.99)]
    zipf_exponent: f64,
    /// Give up after this many sweeps.
    #[arg(long, default_value_t = 100_000)]
    max_sweeps: usize,
    /// Print one JSON object instead of the table.
    #[arg(long)]
    json: bool,
    /// Exit with status 1 when the run misses any balancer target.
    #[arg(long)]
    check: bool,
}

fn parse_scenario(s: &str) -> Result<Scenario, String> {
    s.parse::<Scenario>().map_err(|e| e.to_string())
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("error")),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    match cli.command {
        Command::RebalanceSim(args) => rebalance_sim(&args),
        Command::Demo(args) => demo(&args),
        Command::Sim { seed, seeds, json } => sim(seed, seeds, json),
        Command::Start { config, run_for } => start(&config, run_for),
        Command::Kv { config, op } => kv(&config, op),
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
        Command::Certs(command) => match certs(command) {
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

/// Fault and event totals over the seeds of a `sim` run (the `--json` keys).
#[derive(Clone, Copy, Default, serde::Serialize)]
struct FaultTotals {
    crashes: u64,
    partitions: u64,
    torn_writes: u64,
    corruptions: u64,
    corruptions_refused: u64,
    moves_started: u64,
    moves_finished: u64,
    stale_routes: u64,
    /// Keys whose linearizability search ran out of budget: not checked (a run with any is
    /// not a pass).
    unchecked_keys: u64,
    ops_unknown: u64,
}

impl FaultTotals {
    fn add(&mut self, r: &nodedb_cluster::sim::SimReport) {
        self.crashes += r.crashes;
        self.partitions += r.partitions;
        self.torn_writes += r.torn_writes;
        self.corruptions += r.corruptions;
        self.corruptions_refused += r.corruptions_refused;
        self.moves_started += r.moves_started;
        self.moves_finished += r.moves_finished;
        self.stale_routes += r.stale_routes;
        self.unchecked_keys += r.unchecked_keys;
        self.ops_unknown += r.ops_unknown;
    }
}

fn sim(seed: Option<u64>, seeds: Option<u64>, json: bool) -> ExitCode {
    use nodedb_cluster::sim::{SimOptions, run};
    let list: Vec<u64> = match (seed, seeds) {
        (Some(s), _) => vec![s],
        (None, Some(0)) => {
            eprintln!("error: --seeds must be at least 1");
            return ExitCode::from(2);
        }
        (None, Some(n)) => (1..=n).collect(),
        (None, None) => (1..=100).collect(),
    };
    let started = Instant::now();
    let (mut failures, mut ops, mut virtual_seconds) = (0u64, 0u64, 0.0f64);
    let mut first_failing = None;
    let mut faults = FaultTotals::default();
    for s in &list {
        let report = run(&SimOptions::new(*s));
        faults.add(&report);
        ops += report.ops_completed;
        virtual_seconds += report.virtual_seconds;
        if !report.violations.is_empty() {
            failures += 1;
            first_failing.get_or_insert(*s);
            if !json {
                eprintln!(
                    "seed {s} FAILED: {:?}\n  replay: nodedb-cluster sim --seed {s}  (or SEED={s} cargo test --release --test sim)",
                    report.violations
                );
            }
        } else if list.len() == 1 && !json {
            println!(
                "seed {s}: ok, {} ops checked, trace {:016x}",
                report.ops_completed, report.trace_hash
            );
        }
    }
    let wall_seconds = started.elapsed().as_secs_f64();
    if json {
        let mut out = serde_json::json!({
            "seeds": list.len(), "failures": failures, "first_failing_seed": first_failing,
            "ops_checked": ops, "virtual_seconds": virtual_seconds, "wall_seconds": wall_seconds,
            "speedup": virtual_seconds / wall_seconds.max(1e-9),
        });
        if let (Some(out), Ok(serde_json::Value::Object(totals))) =
            (out.as_object_mut(), serde_json::to_value(faults))
        {
            out.extend(totals);
        }
        println!("{out}");
    } else {
        println!(
            "{} seeds, {failures} failed, {ops} ops checked, {virtual_seconds:.0} s simulated in {wall_seconds:.1} s ({:.0}x real time)",
            list.len(),
            virtual_seconds / wall_seconds.max(1e-9)
        );
        let f = faults;
        println!(
            "faults: {} crashes, {} partitions, {} torn writes, {} corruptions ({} refused at start), {} replica moves started, {} finished, {} requests routed by a stale table",
            f.crashes,
            f.partitions,
            f.torn_writes,
            f.corruptions,
            f.corruptions_refused,
            f.moves_started,
            f.moves_finished,
            f.stale_routes
        );
        println!(
            "{} operations with an unknown outcome; {} keys not checked (search budget exhausted)",
            f.ops_unknown, f.unchecked_keys
        );
    }
    if failures == 0 && faults.unchecked_keys == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

/// How often `start` checks that every core still runs.
const NODE_WATCH_INTERVAL: Duration = Duration::from_millis(100);

fn start(path: &Path, run_for: Option<f64>) -> ExitCode {
    let node_config = match LoadedConfig::load(path).and_then(|c| c.node_config(path)) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    let node_id = node_config.node;
    let node = match Node::start(node_config) {
        Ok(node) => node,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    let deadline = match run_for {
        Some(seconds) if seconds.is_finite() && seconds >= 0.0 => {
            Some(Instant::now() + Duration::from_secs_f64(seconds))
        }
        Some(_) => {
            eprintln!("error: --run-for must be a non-negative number of seconds");
            let _ = node.shutdown();
            return ExitCode::from(2);
        }
        None => None,
    };
    eprintln!("node {} running", node_id.0);
    // The cores run on their own threads; this one watches for a core that stopped with
    // an error (a node that silently serves only some of its groups helps nobody: exit,
    // and let the supervisor restart it or the operator see why).
    let failure = loop {
        if let Some(failure) = node.failure() {
            break Some(failure);
        }
        let left = deadline.map(|d| d.saturating_duration_since(Instant::now()));
        if left == Some(Duration::ZERO) {
            break None;
        }
        std::thread::park_timeout(left.map_or(NODE_WATCH_INTERVAL, |l| l.min(NODE_WATCH_INTERVAL)));
    };
    let stopped = node.shutdown();
    match (failure, stopped) {
        (Some(failure), _) => {
            eprintln!("error: {failure}; node stopped");
            ExitCode::FAILURE
        }
        (None, Err(e)) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
        (None, Ok(())) => ExitCode::SUCCESS,
    }
}

fn kv(path: &Path, op: KvCommandArg) -> ExitCode {
    let config = match LoadedConfig::load(path) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    let outcome = spawn_executor("kv-client", CorePlacement::Unbound, move || async move {
        let client = KvClient::new(config.spec.clone(), config.tls.clone(), config.mtu)
            .map_err(|e| e.to_string())?;
        let result = match op {
            KvCommandArg::Put { key, value } => client
                .put(key.as_bytes(), value.as_bytes())
                .await
                .map(|()| "OK".to_owned()),
            KvCommandArg::Get { key } => client.get(key.as_bytes()).await.map(|v| {
                v.map_or_else(
                    || "(not found)".to_owned(),
                    |v| String::from_utf8_lossy(&v).into_owned(),
                )
            }),
            KvCommandArg::Del { key } => client
                .delete(key.as_bytes())
                .await
                .map(|existed| if existed { "deleted" } else { "(not found)" }.to_owned()),
            KvCommandArg::Placement => match (client.routing().await, client.moves().await) {
                (Ok((epoch, groups)), Ok(moves)) => {
                    let mut text = format!("epoch {epoch}");
                    for (group, replicas) in groups {
                        text.push_str(&format!("\ngroup {}:", group.0));
                        for (replica, at) in replicas {
                            text.push_str(&format!(" {replica}@{}/{}", at.node.0, at.core.0));
                        }
                        if let Some((_, m)) = moves.iter().find(|(g, _)| *g == group) {
                            text.push_str(&format!(
                                " (moving {} to {}@{}/{}{})",
                                m.from.0,
                                m.new.0,
                                m.to.node.0,
                                m.to.core.0,
                                if m.abandon { ", abandoning" } else { "" }
                            ));
                        }
                    }
                    Ok(text)
                }
                (Err(e), _) | (_, Err(e)) => Err(e),
            },
            KvCommandArg::Move { group, from, to } => client
                .move_replica(GroupId(group), NodeId(from), to)
                .await
                .map(|()| "move recorded".to_owned()),
            KvCommandArg::AbandonMove { group } => client
                .abandon_move(GroupId(group))
                .await
                .map(|()| "abandon recorded".to_owned()),
        };
        client.shutdown().await;
        result.map_err(|e| e.to_string())
    })
    .map_err(|e| e.to_string())
    .and_then(|h| h.join().map_err(|e| e.to_string()))
    .and_then(|r| r);
    match outcome {
        Ok(text) => {
            println!("{text}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn demo(args: &DemoArgs) -> ExitCode {
    if !(args.seconds.is_finite() && args.seconds > 0.0 && args.seconds <= 3600.0) {
        eprintln!("error: --seconds must be within (0, 3600]");
        return ExitCode::from(2);
    }
    let config = DemoConfig {
        nodes: args.nodes,
        cores: args.cores,
        groups: args.groups,
        duration: Duration::from_secs_f64(args.seconds),
        concurrency: args.concurrency,
        rate: args.rate,
        write_fraction: args.write_fraction,
        dir: args.dir.clone(),
        ..DemoConfig::default()
    };
    if !args.json {
        eprintln!(
            "starting {} nodes x {} cores ({} groups, mTLS, write-ahead logs) on 127.0.0.1 ...",
            config.nodes, config.cores, config.groups
        );
    }
    match nodedb_cluster::runtime::demo::run(&config) {
        Ok(r) => {
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
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn certs(command: CertsCommand) -> Result<Vec<PathBuf>, Box<dyn std::error::Error>> {
    let load_ca = |dir: &Path| -> Result<tls::CertifiedKeyPem, Box<dyn std::error::Error>> {
        let ca = tls::read_pem_pair(&dir.join(tls::CA_CERT_FILE), &dir.join(tls::CA_KEY_FILE))
            .map_err(|e| {
                format!(
                    "{e} (create the CA first: nodedb-cluster certs init --dir {})",
                    dir.display()
                )
            })?;
        Ok(ca)
    };
    let (cert, key) = match command {
        CertsCommand::Init {
            dir,
            cluster,
            force,
        } => {
            if dir.join(tls::CA_KEY_FILE).exists() && !force {
                return Err(format!(
                    "{} already holds a CA; pass --force to replace it (certificates it issued stop being trusted)",
                    dir.display()
                )
                .into());
            }
            tls::write_pem_pair(&dir, "ca", &tls::generate_ca(&cluster)?)?
        }
        CertsCommand::Node { dir, id, sans } => {
            let ca = load_ca(&dir)?;
            tls::write_pem_pair(
                &dir,
                &format!("node-{id}"),
                &tls::issue_node_cert(&ca, NodeId(id), &sans)?,
            )?
        }
        CertsCommand::Client { dir, name } => {
            let ca = load_ca(&dir)?;
            let valid = !name.is_empty()
                && name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
            if !valid {
                return Err(
                    format!("client name {name:?} must be letters, digits, '-' or '_'").into(),
                );
            }
            tls::write_pem_pair(
                &dir,
                &format!("client-{name}"),
                &tls::issue_client_cert(&ca, &name)?,
            )?
        }
    };
    Ok(vec![cert, key])
}

fn rebalance_sim(args: &RebalanceSimArgs) -> ExitCode {
    let mut config = HarnessConfig::new(args.nodes, args.cores, args.vshards, args.scenario);
    config.replicas = args.replicas;
    config.seed = args.seed;
    config.zipf_exponent = args.zipf_exponent;
    config.max_sweeps = args.max_sweeps;
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
        "{:>6} {:>16} {:>6} {:>6} {:>12} {:>9} {:>9} {:>9}",
        "sweep", "status", "moves", "lt", "bytes", "node_max", "core_max", "plan_us"
    )?;
    for row in &r.rows {
        writeln!(
            out,
            "{:>6} {:>16} {:>6} {:>6} {:>12} {:>9.4} {:>9.4} {:>9.1}",
            row.sweep,
            format!("{:?}", row.status),
            row.moves,
            row.leader_transfers,
            row.bytes_moved,
            row.node_max_over_mean,
            row.core_max_over_mean,
            row.plan_us
        )?;
    }
    writeln!(
        out,
        "converged            {} after {} sweeps",
        r.converged, r.sweeps_to_converge
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
        "bytes moved          {} (must move {})",
        r.bytes_moved, r.bytes_must_move
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
