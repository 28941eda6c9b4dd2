//! `nodedb-cluster demo`: an embedded three-node cluster on loopback under a mixed load.
//!
//! Generates a cluster CA and node and client certificates into a temporary directory,
//! starts the nodes in this process (unbound placement, each with its cores, QUIC endpoints
//! and write-ahead logs), waits until every group has a leader, then runs closed-loop
//! clients issuing puts and linearizable gets for a fixed time, and reports throughput and
//! latency percentiles (HdrHistogram, microseconds). Everything is removed afterwards.
//!
//! With a skew (`hot-node`, `hot-core`), most of the load goes to the groups one node (or
//! one core) leads when the load starts, and the rebalancer in the nodes (with a short
//! interval) spreads it; the demo samples the coordinator's `status` four times a second
//! and reports the imbalance before the first move, at the end, and when it converged.

use std::cell::RefCell;
use std::net::{SocketAddr, UdpSocket};
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use serde::Serialize;
use thiserror::Error;

use crate::ids::NodeId;
use crate::metrics::cores::{CoreCounter, NodeMetrics};
use crate::metrics::stages::StageHistograms;
use crate::plot::{self, LatencyRecord, Marker};
use crate::rng::Rng;
use crate::runtime::client::KvClient;
use crate::runtime::cores::CoreLayout;
use crate::runtime::executor::{CorePlacement, spawn_executor};
use crate::runtime::node::{ClusterSpec, Node, NodeConfig};
use crate::runtime::tls::{self, TlsMode};

/// What the demo runs.
#[derive(Clone, Debug)]
pub struct DemoConfig {
    pub nodes: u64,
    pub cores: u16,
    /// vShard groups (a power of two).
    pub groups: u32,
    pub duration: Duration,
    /// Concurrent closed-loop callers; with `rate`, the most operations in flight at once.
    pub concurrency: usize,
    /// Open loop: offer this many operations per second in total, on a fixed schedule,
    /// and measure each operation's latency from when the schedule said to send it (so a
    /// stall counts for every operation it delayed: no coordinated omission). `None`:
    /// closed loop (each caller sends its next operation when the last one returns).
    pub rate: Option<f64>,
    /// Distinct keys the load touches.
    pub keys: u32,
    /// Fraction of operations that are writes.
    pub write_fraction: f64,
    pub value_bytes: usize,
    /// Parent of the demo's working directory (default: the system temporary directory).
    pub dir: Option<std::path::PathBuf>,
    /// Concentrate the load on one node's (or core's) groups and let the rebalancer act.
    pub skew: Option<Skew>,
    /// With a skew, print the imbalance over time on stderr.
    pub progress: bool,
    /// Trace every N-th write of the load and report where its time went (`stages`).
    pub stages: Option<u64>,
    /// Draw the latencies (`DemoReport::plot_svg`): a percentile curve and a p50/p99
    /// timeline per second, with the moves the rebalancer started and ended marked.
    pub plot: bool,
}

/// Where a skewed load goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum Skew {
    /// The groups led by the node that leads the most.
    HotNode,
    /// The groups led by the core that leads the most.
    HotCore,
}

/// The share of a skewed load that goes to the hot groups (the rest is spread evenly).
pub const SKEW_HOT_SHARE: f64 = 0.6;
/// The rebalancer's interval in a skewed demo (the default is 30 s), and its nodes' report
/// interval (default 5 s).
pub const SKEW_REBALANCE_INTERVAL: Duration = Duration::from_secs(5);
pub const SKEW_REPORT_INTERVAL: Duration = Duration::from_secs(1);
/// The imbalance a skewed demo calls balanced (node max / mean).
pub const SKEW_CONVERGED: f64 = 1.15;

impl Default for DemoConfig {
    fn default() -> Self {
        DemoConfig {
            nodes: 3,
            cores: 2,
            groups: 8,
            duration: Duration::from_secs(5),
            concurrency: 16,
            rate: None,
            keys: 10_000,
            write_fraction: 0.5,
            value_bytes: 128,
            dir: None,
            skew: None,
            progress: false,
            stages: None,
            plot: false,
        }
    }
}

/// The demo's results; field names are the `--json` keys.
#[derive(Clone, Debug, Serialize)]
pub struct DemoReport {
    pub nodes: u64,
    pub cores: u16,
    pub groups: u32,
    pub concurrency: usize,
    /// "closed" or "open" (see `offered_per_sec`).
    pub mode: &'static str,
    /// The open loop's offered rate (operations per second); `None` in closed loop.
    pub offered_per_sec: Option<f64>,
    pub seconds: f64,
    pub writes: u64,
    pub reads: u64,
    pub errors: u64,
    pub writes_per_sec: f64,
    pub reads_per_sec: f64,
    pub write_p50_us: u64,
    pub write_p99_us: u64,
    pub write_p999_us: u64,
    pub write_max_us: u64,
    pub read_p50_us: u64,
    pub read_p99_us: u64,
    pub read_p999_us: u64,
    pub read_max_us: u64,
    /// Seconds from start until every group accepted a write.
    pub startup_seconds: f64,
    /// CPU time (user and system) of the whole process, nodes and client together, over
    /// the timed load, per operation. On a machine whose speed drifts it compares runs
    /// better than throughput does, once the load saturates the CPUs.
    pub cpu_us_per_op: f64,
    /// Raft messages all nodes sent over the timed load, per operation.
    pub raft_messages_per_op: f64,
    /// Write-ahead log batches (one fdatasync each) all nodes made durable over the timed
    /// load, per operation.
    pub wal_batches_per_op: f64,
    /// Group records in those batches, per operation.
    pub wal_records_per_op: f64,
    /// Turns of the nodes' core loops, per operation: a turn's fixed costs (driving
    /// every QUIC connection, submitting to io_uring) are shared by what it handles.
    pub loop_turns_per_op: f64,
    /// UDP datagrams the nodes sent, per operation (client and peer connections).
    pub datagrams_per_op: f64,
    /// With a skew: which, and what the rebalancer did, from the coordinator's status.
    #[serde(skip_serializing_if = "Option::is_none", flatten)]
    pub balance: Option<BalanceReport>,
    /// With `stages`: the sampled writes' stage percentiles.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stages: Option<StageHistograms>,
    /// With `plot`: an SVG document of the latencies (not in the JSON).
    #[serde(skip)]
    pub plot_svg: Option<String>,
}

/// A skewed demo's balancing, measured from the nodes' own load reports.
#[derive(Clone, Debug, Serialize)]
pub struct BalanceReport {
    pub skew: Skew,
    /// The hot groups (led by one node or core when the load started).
    pub hot_groups: Vec<u64>,
    /// The highest node and core max / mean seen before the first move (and up to one
    /// report interval after it, while the reports still show the load it answered).
    pub initial_node_max_over_mean: f64,
    pub initial_core_max_over_mean: f64,
    /// The last sample's.
    pub final_node_max_over_mean: f64,
    pub final_core_max_over_mean: f64,
    pub leader_transfers: u64,
    pub replica_moves: u64,
    /// From the start of the load until node max / mean stayed at or below 1.15 for good;
    /// `None` if it did not.
    pub seconds_to_converge: Option<f64>,
    /// Samples of (seconds into the load, node max / mean, core max / mean, leader
    /// transfers and replica moves so far).
    pub samples: Vec<Sample>,
}

/// The demo could not run.
#[derive(Debug, Error)]
pub enum DemoError {
    #[error("invalid demo setting: {0}")]
    Invalid(String),
    #[error("setting up: {0}")]
    Setup(String),
    #[error("the cluster did not become ready: {0}")]
    NotReady(String),
}

/// A loopback base port whose next `cores` UDP ports are free right now (demos and tests
/// that run several nodes on one machine; another process may still take them).
pub fn free_base_port(cores: u16) -> Result<u16, DemoError> {
    // Below the kernel's ephemeral range (32768 and up by default), so that a client's
    // socket bound to port 0 never takes the port of a node that is restarting; a
    // per-process start and a counter keep concurrent tests apart.
    const LOW: u32 = 10_000;
    const SPAN: u32 = 22_000;
    static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let start = std::process::id().wrapping_mul(7919);
    for _ in 0..1_000 {
        let step = NEXT.fetch_add(u32::from(cores) + 1, std::sync::atomic::Ordering::Relaxed);
        let base = (LOW + start.wrapping_add(step) % SPAN) as u16;
        if (0..cores).all(|i| UdpSocket::bind(("127.0.0.1", base + i)).is_ok()) {
            return Ok(base);
        }
    }
    Err(DemoError::Setup(
        "no run of free UDP ports on 127.0.0.1".into(),
    ))
}

/// Runs the demo and tears everything down.
pub fn run(config: &DemoConfig) -> Result<DemoReport, DemoError> {
    if config.nodes == 0
        || config.nodes > 7
        || config.cores == 0
        || !config.groups.is_power_of_two()
    {
        return Err(DemoError::Invalid(
            "nodes must be 1..=7, cores ≥ 1, groups a power of two".into(),
        ));
    }
    if config
        .rate
        .is_some_and(|r| !(r.is_finite() && r > 0.0 && r <= 10_000_000.0))
    {
        return Err(DemoError::Invalid(
            "the offered rate must be within (0, 10 000 000] operations per second".into(),
        ));
    }
    if config.concurrency == 0 || config.keys == 0 || !(0.0..=1.0).contains(&config.write_fraction)
    {
        return Err(DemoError::Invalid(
            "concurrency and keys ≥ 1, write fraction within 0..=1".into(),
        ));
    }
    let parent = config.dir.clone().unwrap_or_else(std::env::temp_dir);
    let dir = parent.join(format!("nodedb-demo-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let result = run_in(config, &dir);
    let _ = std::fs::remove_dir_all(&dir);
    result
}

fn run_in(config: &DemoConfig, dir: &std::path::Path) -> Result<DemoReport, DemoError> {
    let setup = |e: &dyn std::fmt::Display| DemoError::Setup(e.to_string());
    let certs = dir.join("certs");
    let ca = tls::generate_ca("demo").map_err(|e| setup(&e))?;
    tls::write_pem_pair(&certs, "ca", &ca).map_err(|e| setup(&e))?;
    let mut nodes = Vec::new();
    for n in 1..=config.nodes {
        let base = free_base_port(config.cores)?;
        nodes.push((NodeId(n), SocketAddr::from(([127, 0, 0, 1], base))));
    }
    let spec = ClusterSpec {
        nodes: nodes.clone(),
        cores: config.cores,
        groups: config.groups,
        replicas: (config.nodes as u16).min(crate::runtime::config::DEFAULT_REPLICAS),
    };
    let started = Instant::now();
    let mut running = Vec::new();
    for (node, _) in &nodes {
        let identity =
            tls::issue_node_cert(&ca, *node, &["127.0.0.1".into()]).map_err(|e| setup(&e))?;
        tls::write_pem_pair(&certs, &format!("node-{}", node.0), &identity)
            .map_err(|e| setup(&e))?;
        let node_config = NodeConfig {
            joined: None,
            quiesce: true,
            node: *node,
            spec: spec.clone(),
            data_dir: dir.join(format!("node-{}", node.0)),
            tls: TlsMode::Mutual {
                ca_cert_pem: ca.cert_pem.clone(),
                identity,
            },
            layout: CoreLayout::Unbound,
            mtu: 1452,
            snapshot_rate: crate::constants::SNAPSHOT_RATE_BYTES_PER_SEC,
            metrics_addr: None,
            balance: match config.skew {
                None => crate::node::BalanceConfig::default(),
                Some(_) => crate::node::BalanceConfig {
                    interval: SKEW_REBALANCE_INTERVAL,
                    report_interval: SKEW_REPORT_INTERVAL,
                    ..crate::node::BalanceConfig::default()
                },
            },
        };
        running.push(Node::start(node_config).map_err(|e| setup(&e))?);
    }
    let client_identity = tls::issue_client_cert(&ca, "demo").map_err(|e| setup(&e))?;
    let client_tls = TlsMode::Mutual {
        ca_cert_pem: ca.cert_pem.clone(),
        identity: client_identity,
    };
    let load = config.clone();
    let metrics: Vec<_> = running.iter().map(|n| n.metrics().clone()).collect();
    let outcome = spawn_executor("demo-client", CorePlacement::Unbound, move || async move {
        load_cluster(spec, client_tls, load, started, metrics).await
    })
    .map_err(|e| setup(&e))
    .and_then(|h| h.join().map_err(|e| setup(&e)));
    for node in running {
        let _ = node.shutdown();
    }
    outcome?
}

/// Concurrent writers that wait until every group takes a write.
const READY_CALLERS: usize = 64;

/// Waits until every group takes a write, then runs the timed load.
async fn load_cluster(
    spec: ClusterSpec,
    tls: TlsMode,
    config: DemoConfig,
    started: Instant,
    metrics: Vec<Arc<NodeMetrics>>,
) -> Result<DemoReport, DemoError> {
    let total = |counter| -> u64 { metrics.iter().map(|m| m.total(counter)).sum() };
    let raft_messages = || total(CoreCounter::RaftMessagesOut);
    let wal_batches = || total(CoreCounter::WalBatches);
    let wal_records = || total(CoreCounter::WalRecords);
    let turns_and_datagrams = || {
        (
            total(CoreCounter::LoopTurns),
            total(CoreCounter::QuicDatagramsSent),
        )
    };
    let client =
        Rc::new(KvClient::new(spec, tls, 1452).map_err(|e| DemoError::Setup(e.to_string()))?);
    // One key per group, each written once; callers share the queue, and a group whose
    // write failed (no leader yet) goes to its back. One at a time, 16 384 sleeping
    // groups took 30 s of round trips.
    let mut keys = std::collections::BTreeMap::new();
    let mut probe = 0u32;
    while keys.len() < config.groups as usize {
        let key = format!("ready-{probe}");
        probe += 1;
        keys.entry(client.group_of(key.as_bytes())).or_insert(key);
    }
    let queue: Rc<RefCell<std::collections::VecDeque<String>>> =
        Rc::new(RefCell::new(keys.into_values().collect()));
    let limit = Duration::from_secs(60 + u64::from(config.groups) / 1024);
    let probes: Vec<_> = (0..READY_CALLERS)
        .map(|_| {
            let (client, queue) = (client.clone(), queue.clone());
            glommio::spawn_local(async move {
                loop {
                    let Some(key) = queue.borrow_mut().pop_front() else {
                        return true;
                    };
                    if started.elapsed() > limit {
                        queue.borrow_mut().push_front(key);
                        return false;
                    }
                    if client.put(key.as_bytes(), b"1").await.is_err() {
                        queue.borrow_mut().push_back(key);
                    }
                }
            })
        })
        .collect();
    for probe in probes {
        probe.await;
    }
    let left = queue.borrow().len();
    if left > 0 {
        return Err(DemoError::NotReady(format!(
            "{} of {} groups ready after {} s",
            config.groups as usize - left,
            config.groups,
            limit.as_secs()
        )));
    }
    let startup_seconds = started.elapsed().as_secs_f64();
    // The keys the load draws from: all, or mostly the hot groups'.
    let hot_groups = match config.skew {
        None => Vec::new(),
        Some(skew) => hot_groups(&client, config.groups, skew),
    };
    let hot_keys: Rc<Vec<u32>> = Rc::new(
        (0..config.keys)
            .filter(|k| {
                let group = client.group_of(format!("key-{k}").as_bytes());
                hot_groups.contains(&group.0)
            })
            .collect(),
    );
    if let Some(every) = config.stages {
        client.sample_stages(every);
    }
    let out = Rc::new(Recorders::new(config.plot.then(Instant::now)));
    let (cpu_before, messages_before, batches_before, records_before) =
        (process_cpu(), raft_messages(), wal_batches(), wal_records());
    let (turns_before, datagrams_before) = turns_and_datagrams();
    let deadline = Instant::now() + config.duration;
    let load_started = Instant::now();
    let mut callers = Vec::new();
    let move_marks = config.plot.then(|| {
        let metrics = metrics.clone();
        glommio::spawn_local(async move { move_marks(&metrics, load_started, deadline).await })
    });
    let monitor = config.skew.map(|_| {
        let (client, progress) = (client.clone(), config.progress);
        glommio::spawn_local(
            async move { monitor(&client, load_started, deadline, progress).await },
        )
    });
    if let Some(rate) = config.rate {
        open_loop(&client, &config, rate, &out, &hot_keys).await;
    }
    for caller in 0..config.concurrency * usize::from(config.rate.is_none()) {
        let (client, out, config) = (client.clone(), out.clone(), config.clone());
        let hot_keys = hot_keys.clone();
        callers.push(glommio::spawn_local(async move {
            let mut rng = Rng::new(0xde30 + caller as u64);
            let value = vec![0x42u8; config.value_bytes];
            while Instant::now() < deadline {
                let key = format!("key-{}", pick_key(&mut rng, &config, &hot_keys));
                let write = rng.next_f64() < config.write_fraction;
                out.operate(
                    &client,
                    key.as_bytes(),
                    write.then_some(&value[..]),
                    Instant::now(),
                )
                .await;
            }
        }));
    }
    for caller in callers {
        caller.await;
    }
    let seconds = load_started.elapsed().as_secs_f64();
    let cpu = process_cpu().saturating_sub(cpu_before);
    let messages = raft_messages().saturating_sub(messages_before);
    let batches = wal_batches().saturating_sub(batches_before);
    let records = wal_records().saturating_sub(records_before);
    let (turns, datagrams) = turns_and_datagrams();
    let (turns, datagrams) = (
        turns.saturating_sub(turns_before),
        datagrams.saturating_sub(datagrams_before),
    );
    let samples = match monitor {
        Some(m) => m.await,
        None => Vec::new(),
    };
    let balance = config
        .skew
        .map(|skew| balance_report(skew, hot_groups, samples));
    let stages = client.stage_histograms();
    client.shutdown().await;
    let marks = match move_marks {
        Some(marks) => Some(marks.await),
        None => None,
    };
    let (w, r) = (out.writes.borrow(), out.reads.borrow());
    let plot_svg = match (marks, &out.seconds) {
        (Some(marks), Some(per_second)) => {
            let (writes_per_second, reads_per_second) = (per_second.kind(0), per_second.kind(1));
            let records = [
                LatencyRecord {
                    name: "writes",
                    colors: ["#1f77b4", "#9ecae1"],
                    whole: &w,
                    per_second: &writes_per_second,
                },
                LatencyRecord {
                    name: "reads",
                    colors: ["#d62728", "#fc9272"],
                    whole: &r,
                    per_second: &reads_per_second,
                },
            ];
            let title = format!(
                "nodedb-cluster demo: {} nodes x {} cores, {} groups, {} callers, {:.0} s",
                config.nodes, config.cores, config.groups, config.concurrency, seconds
            );
            Some(plot::render(&title, &plot::latency_panels(&records, marks)))
        }
        _ => None,
    };
    Ok(DemoReport {
        nodes: config.nodes,
        cores: config.cores,
        groups: config.groups,
        concurrency: config.concurrency,
        mode: if config.rate.is_some() {
            "open"
        } else {
            "closed"
        },
        offered_per_sec: config.rate,
        seconds,
        writes: w.len(),
        reads: r.len(),
        errors: out.errors.get(),
        writes_per_sec: w.len() as f64 / seconds,
        reads_per_sec: r.len() as f64 / seconds,
        write_p50_us: w.value_at_quantile(0.50),
        write_p99_us: w.value_at_quantile(0.99),
        write_p999_us: w.value_at_quantile(0.999),
        write_max_us: w.max(),
        read_p50_us: r.value_at_quantile(0.50),
        read_p99_us: r.value_at_quantile(0.99),
        read_p999_us: r.value_at_quantile(0.999),
        read_max_us: r.max(),
        startup_seconds,
        cpu_us_per_op: cpu.as_secs_f64() * 1e6 / (w.len() + r.len()).max(1) as f64,
        raft_messages_per_op: messages as f64 / (w.len() + r.len()).max(1) as f64,
        wal_batches_per_op: batches as f64 / (w.len() + r.len()).max(1) as f64,
        wal_records_per_op: records as f64 / (w.len() + r.len()).max(1) as f64,
        loop_turns_per_op: turns as f64 / (w.len() + r.len()).max(1) as f64,
        datagrams_per_op: datagrams as f64 / (w.len() + r.len()).max(1) as f64,
        balance,
        stages,
        plot_svg,
    })
}

/// Samples the nodes' counters of replica moves the rebalancer started and the executor
/// ended, four times a second until `deadline`: a marker (seconds since `started`) where
/// either grew.
async fn move_marks(
    metrics: &[Arc<NodeMetrics>],
    started: Instant,
    deadline: Instant,
) -> Vec<Marker> {
    let total = |counter| -> u64 { metrics.iter().map(|m| m.total(counter)).sum() };
    let counters = [
        (CoreCounter::RebalancerReplicaMoves, "started"),
        (CoreCounter::MovesEnded, "ended"),
    ];
    let mut seen = counters.map(|(c, _)| total(c));
    let mut marks = Vec::new();
    while Instant::now() < deadline {
        glommio::timer::sleep(Duration::from_millis(250)).await;
        // One mark a sample, naming what grew.
        let mut grew = Vec::new();
        for (i, (counter, what)) in counters.iter().enumerate() {
            let now = total(*counter);
            if now > seen[i] {
                grew.push(format!("{} {what}", now - seen[i]));
                seen[i] = now;
            }
        }
        if !grew.is_empty() {
            marks.push(Marker {
                x: started.elapsed().as_secs_f64(),
                label: format!("moves: {}", grew.join(", ")),
            });
        }
    }
    marks
}

/// CPU time this process used so far, user and system, all threads.
fn process_cpu() -> Duration {
    // SAFETY: `getrusage` only writes the struct it is given.
    let usage = unsafe {
        let mut usage = std::mem::zeroed::<libc::rusage>();
        if libc::getrusage(libc::RUSAGE_SELF, &mut usage) != 0 {
            return Duration::ZERO;
        }
        usage
    };
    let time = |t: libc::timeval| {
        Duration::from_secs(t.tv_sec as u64) + Duration::from_micros(t.tv_usec as u64)
    };
    time(usage.ru_utime) + time(usage.ru_stime)
}

/// The groups a skewed load goes to: those the busiest node (or core) leads, as the
/// client's leader cache saw them when every group took its first write.
fn hot_groups(client: &KvClient, groups: u32, skew: Skew) -> Vec<u64> {
    let leaders: Vec<(u64, crate::ids::CoreAddress)> = (1..=u64::from(groups))
        .filter_map(|g| Some((g, client.cached_leader(crate::ids::GroupId(g))?)))
        .collect();
    let owner = |at: crate::ids::CoreAddress| match skew {
        Skew::HotNode => (at.node.0, 0),
        Skew::HotCore => (at.node.0, at.core.0),
    };
    let mut counts: std::collections::BTreeMap<(u64, u16), usize> = Default::default();
    for (_, at) in &leaders {
        *counts.entry(owner(*at)).or_default() += 1;
    }
    let Some((&hot, _)) = counts
        .iter()
        .max_by_key(|(k, n)| (**n, std::cmp::Reverse(**k)))
    else {
        return Vec::new();
    };
    leaders
        .into_iter()
        .filter(|(_, at)| owner(*at) == hot)
        .map(|(g, _)| g)
        .collect()
}

/// The next key: from the hot groups' keys with probability `SKEW_HOT_SHARE` (when there
/// are any), else from all.
fn pick_key(rng: &mut Rng, config: &DemoConfig, hot_keys: &[u32]) -> u64 {
    if !hot_keys.is_empty() && rng.next_f64() < SKEW_HOT_SHARE {
        u64::from(hot_keys[rng.below(hot_keys.len() as u64) as usize])
    } else {
        rng.below(u64::from(config.keys))
    }
}

/// One sample of the coordinator's status.
pub type Sample = (f64, f64, f64, u64, u64);

/// Samples the coordinator's status every 250 ms until `deadline`: (seconds into the load,
/// node max / mean, core max / mean, moves dispatched so far).
async fn monitor(
    client: &KvClient,
    started: Instant,
    deadline: Instant,
    progress: bool,
) -> Vec<Sample> {
    let mut samples = Vec::new();
    let mut printed = 0.0;
    while Instant::now() < deadline {
        glommio::timer::sleep(Duration::from_millis(250)).await;
        let Ok(status) = client.status().await else {
            continue;
        };
        let at = started.elapsed().as_secs_f64();
        samples.push((
            at,
            status.node_max_over_mean,
            status.core_max_over_mean,
            status.stats.leader_transfers_started,
            status.stats.replica_moves_started,
        ));
        if progress && at - printed >= 2.0 {
            printed = at;
            eprintln!(
                "{at:>5.1} s  node max/mean {:.3}  core max/mean {:.3}  leader transfers {}  replica moves {}",
                status.node_max_over_mean,
                status.core_max_over_mean,
                status.stats.leader_transfers_started,
                status.stats.replica_moves_started
            );
        }
    }
    samples
}

/// What the samples say about the balancing.
fn balance_report(skew: Skew, hot_groups: Vec<u64>, samples: Vec<Sample>) -> BalanceReport {
    // Before the first move, and for one report interval after it: reports lag the load by
    // up to that long (and their rates follow it with a 3 s time constant), so the first
    // samples after a move still show the load it answered.
    let first_move = samples.iter().find(|s| s.3 + s.4 > 0).map(|s| s.0);
    let horizon = first_move.map_or(f64::INFINITY, |t| t + SKEW_REPORT_INTERVAL.as_secs_f64());
    let before: Vec<&Sample> = samples.iter().take_while(|s| s.0 <= horizon).collect();
    let max = |f: fn(&Sample) -> f64| before.iter().map(|s| f(s)).fold(0.0, f64::max);
    let last = samples.last().copied().unwrap_or_default();
    // The first sample after which node max / mean never again exceeded the target.
    let seconds_to_converge = match samples.iter().rposition(|s| s.1 > SKEW_CONVERGED) {
        None => samples.first().map(|s| s.0),
        Some(i) => samples.get(i + 1).map(|s| s.0),
    };
    BalanceReport {
        skew,
        hot_groups,
        initial_node_max_over_mean: max(|s| s.1),
        initial_core_max_over_mean: max(|s| s.2),
        final_node_max_over_mean: last.1,
        final_core_max_over_mean: last.2,
        leader_transfers: last.3,
        replica_moves: last.4,
        seconds_to_converge,
        samples,
    }
}

/// The load's outcomes: latency histograms (microseconds) and the error count.
struct Recorders {
    writes: RefCell<Histogram<u64>>,
    reads: RefCell<Histogram<u64>>,
    errors: std::cell::Cell<u64>,
    /// For a plot: writes' (kind 0) and reads' (kind 1) latencies second by second since
    /// the load started.
    seconds: Option<PerSecond>,
}

impl Recorders {
    fn new(seconds_since: Option<Instant>) -> Recorders {
        let histogram =
            || Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("valid bounds");
        Recorders {
            writes: RefCell::new(histogram()),
            reads: RefCell::new(histogram()),
            errors: std::cell::Cell::new(0),
            seconds: seconds_since.map(|at| PerSecond::new(at, 2)),
        }
    }

    /// Records a latency in its second too, when plotting.
    fn record_second(&self, micros: u64, write: bool) {
        if let Some(seconds) = &self.seconds {
            seconds.record(usize::from(!write), micros);
        }
    }

    /// Puts `value` at `key` (a write) or gets `key` (a read without one) and records the
    /// outcome, with the latency counted from `since`.
    async fn operate(&self, client: &KvClient, key: &[u8], value: Option<&[u8]>, since: Instant) {
        let ok = match value {
            Some(value) => client.put(key, value).await.is_ok(),
            None => client.get(key).await.is_ok(),
        };
        let micros = since.elapsed().as_micros() as u64;
        match (ok, value.is_some()) {
            (false, _) => self.errors.set(self.errors.get() + 1),
            (true, true) => self.writes.borrow_mut().saturating_record(micros),
            (true, false) => self.reads.borrow_mut().saturating_record(micros),
        }
        if ok {
            self.record_second(micros, value.is_some());
        }
    }
}

/// Latencies (microseconds) second by second since `origin`, for each of `kinds` kinds of
/// operation (two significant digits): the timeline of a plot (`demo --plot`, and
/// `nodedb-perf migrate --plot`).
pub struct PerSecond {
    origin: Instant,
    kinds: usize,
    seconds: RefCell<Vec<Vec<Histogram<u64>>>>,
}

impl PerSecond {
    pub fn new(origin: Instant, kinds: usize) -> PerSecond {
        PerSecond {
            origin,
            kinds,
            seconds: RefCell::new(Vec::new()),
        }
    }

    /// Counts `micros` for `kind` in the second it ended in.
    pub fn record(&self, kind: usize, micros: u64) {
        let second = self.origin.elapsed().as_secs() as usize;
        let mut seconds = self.seconds.borrow_mut();
        while seconds.len() <= second {
            let histogram =
                || Histogram::<u64>::new_with_bounds(1, 60_000_000, 2).expect("valid bounds");
            seconds.push((0..self.kinds).map(|_| histogram()).collect());
        }
        seconds[second][kind].saturating_record(micros);
    }

    /// Seconds from the origin to `at`.
    pub fn since(&self, at: Instant) -> f64 {
        at.saturating_duration_since(self.origin).as_secs_f64()
    }

    /// `kind`'s histograms, one a second.
    pub fn kind(&self, kind: usize) -> Vec<Histogram<u64>> {
        self.seconds
            .borrow()
            .iter()
            .map(|s| s[kind].clone())
            .collect()
    }
}

/// Offers `rate` operations per second for the configured duration: operation `i` is due
/// at `start + i / rate`; it is sent then (or as soon as one of `concurrency` slots frees
/// up), and its latency runs from when it was due. Behind schedule, due operations go out
/// at once, so a stall shows in the latencies of everything it held up.
async fn open_loop(
    client: &Rc<KvClient>,
    config: &DemoConfig,
    rate: f64,
    out: &Rc<Recorders>,
    hot_keys: &[u32],
) {
    let slots = Rc::new(glommio::sync::Semaphore::new(config.concurrency as u64));
    let start = Instant::now();
    let mut rng = Rng::new(0xde30);
    let value = Rc::new(vec![0x42u8; config.value_bytes]);
    let mut tasks = Vec::new();
    for i in 0u64.. {
        let due = start + Duration::from_secs_f64(i as f64 / rate);
        if due.duration_since(start) >= config.duration {
            break;
        }
        if let Some(wait) = due.checked_duration_since(Instant::now()) {
            glommio::timer::sleep(wait).await;
        }
        // A full set of slots holds the schedule back; the latency clock is already running.
        if slots.acquire(1).await.is_err() {
            break;
        }
        let key = format!("key-{}", pick_key(&mut rng, config, hot_keys));
        let write = rng.next_f64() < config.write_fraction;
        let (client, slots, out, value) =
            (client.clone(), slots.clone(), out.clone(), value.clone());
        tasks.push(glommio::spawn_local(async move {
            out.operate(&client, key.as_bytes(), write.then_some(&value[..]), due)
                .await;
            slots.signal(1);
        }));
    }
    for task in tasks {
        task.await;
    }
}
