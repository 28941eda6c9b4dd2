//! `nodedb-cluster demo`: an embedded three-node cluster on loopback under a mixed load.
//!
//! Generates a cluster CA and node and client certificates into a temporary directory,
//! starts the nodes in this process (unbound placement, each with its cores, QUIC endpoints
//! and write-ahead logs), waits until every group has a leader, then runs closed-loop
//! clients issuing puts and linearizable gets for a fixed time, and reports throughput and
//! latency percentiles (HdrHistogram, microseconds). Everything is removed afterwards.

use std::cell::RefCell;
use std::net::{SocketAddr, UdpSocket};
use std::rc::Rc;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use serde::Serialize;
use thiserror::Error;

use crate::ids::NodeId;
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
}

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
            balance: crate::node::BalanceConfig::default(),
        };
        running.push(Node::start(node_config).map_err(|e| setup(&e))?);
    }
    let client_identity = tls::issue_client_cert(&ca, "demo").map_err(|e| setup(&e))?;
    let client_tls = TlsMode::Mutual {
        ca_cert_pem: ca.cert_pem.clone(),
        identity: client_identity,
    };
    let load = config.clone();
    let outcome = spawn_executor("demo-client", CorePlacement::Unbound, move || async move {
        load_cluster(spec, client_tls, load, started).await
    })
    .map_err(|e| setup(&e))
    .and_then(|h| h.join().map_err(|e| setup(&e)));
    for node in running {
        let _ = node.shutdown();
    }
    outcome?
}

/// Waits until every group takes a write, then runs the timed load.
async fn load_cluster(
    spec: ClusterSpec,
    tls: TlsMode,
    config: DemoConfig,
    started: Instant,
) -> Result<DemoReport, DemoError> {
    let client =
        Rc::new(KvClient::new(spec, tls, 1452).map_err(|e| DemoError::Setup(e.to_string()))?);
    // One key per group, retried until its group has a leader.
    let mut ready = std::collections::BTreeSet::new();
    let mut probe = 0u32;
    while ready.len() < config.groups as usize {
        let key = format!("ready-{probe}");
        probe += 1;
        let group = client.group_of(key.as_bytes());
        if ready.contains(&group) {
            continue;
        }
        if started.elapsed() > Duration::from_secs(60) {
            return Err(DemoError::NotReady(format!(
                "{} of {} groups ready after 60 s",
                ready.len(),
                config.groups
            )));
        }
        if client.put(key.as_bytes(), b"1").await.is_ok() {
            ready.insert(group);
        }
    }
    let startup_seconds = started.elapsed().as_secs_f64();
    let out = Rc::new(Recorders::new());
    let deadline = Instant::now() + config.duration;
    let load_started = Instant::now();
    let mut callers = Vec::new();
    if let Some(rate) = config.rate {
        open_loop(&client, &config, rate, &out).await;
    }
    for caller in 0..config.concurrency * usize::from(config.rate.is_none()) {
        let (client, out, config) = (client.clone(), out.clone(), config.clone());
        callers.push(glommio::spawn_local(async move {
            let mut rng = Rng::new(0xde30 + caller as u64);
            let value = vec![0x42u8; config.value_bytes];
            while Instant::now() < deadline {
                let key = format!("key-{}", rng.below(u64::from(config.keys)));
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
    client.shutdown().await;
    let (w, r) = (out.writes.borrow(), out.reads.borrow());
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
    })
}

/// The load's outcomes: latency histograms (microseconds) and the error count.
struct Recorders {
    writes: RefCell<Histogram<u64>>,
    reads: RefCell<Histogram<u64>>,
    errors: std::cell::Cell<u64>,
}

impl Recorders {
    fn new() -> Recorders {
        let histogram =
            || Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("valid bounds");
        Recorders {
            writes: RefCell::new(histogram()),
            reads: RefCell::new(histogram()),
            errors: std::cell::Cell::new(0),
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
    }
}

/// Offers `rate` operations per second for the configured duration: operation `i` is due
/// at `start + i / rate`; it is sent then (or as soon as one of `concurrency` slots frees
/// up), and its latency runs from when it was due. Behind schedule, due operations go out
/// at once, so a stall shows in the latencies of everything it held up.
async fn open_loop(client: &Rc<KvClient>, config: &DemoConfig, rate: f64, out: &Rc<Recorders>) {
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
        let key = format!("key-{}", rng.below(u64::from(config.keys)));
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
