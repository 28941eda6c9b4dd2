//! `idle`: what many groups cost a cluster that serves (almost) nothing.
//!
//! Three node processes × two cores of the built `nodedb-cluster` (files under `dir`, as
//! an operator starts them), hosting `groups` groups of three replicas. Measured, with
//! quiescence on (the default):
//! - `startup_seconds`: from the first process start until the nodes' `leader_groups`
//!   gauges add up to every group (the metadata group included);
//! - `settle_seconds`: then until every replica is quiesced (`quiesced_groups`), bounded;
//! - `idle_cpu_cores`: CPU-seconds per second of the three processes (`/proc/PID/stat`)
//!   over `seconds`, with no client and no scrape running;
//! - `rss_bytes_per_replica`: the processes' resident memory over the replicas they host
//!   (fixed costs included: an upper bound);
//! - `wake_p99_us`: one write each to `writes` distinct groups, one after another, each
//!   the first to its group since it quiesced;
//! - `awake_write_p99_us`: a second write to each, right after the first;
//! - `restart_seconds`: then every process is killed (SIGKILL) and started again from its
//!   files: until every group has a leader again (log replay included).
//!
//! Then the same cluster shape starts again with `quiesce = false` in every node file,
//! and the same writes give `active_write_p99_us` (its start-up, idle CPU and memory are
//! reported too, as the baseline).

use std::path::PathBuf;
use std::rc::Rc;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use nodedb_cluster::runtime::bench;
use nodedb_cluster::runtime::client::KvClient;

use crate::procs::{self, Processes, Shape};

pub struct Options {
    pub groups: u32,
    pub seconds: f64,
    /// Distinct groups written once asleep (and once awake) for the latency figures.
    pub writes: usize,
    /// Also start the cluster with quiescence off (the active-write baseline).
    pub baseline: bool,
    pub binary: PathBuf,
    pub dir: PathBuf,
}

/// One cluster's figures.
#[derive(Debug, serde::Serialize)]
pub struct ClusterFigures {
    pub quiesce: bool,
    pub startup_seconds: f64,
    pub settle_seconds: f64,
    pub quiesced_replicas: u64,
    pub idle_cpu_cores: f64,
    pub rss_bytes: u64,
    pub rss_bytes_per_replica: f64,
    pub first_write_p50_us: u64,
    pub first_write_p99_us: u64,
    pub second_write_p50_us: u64,
    pub second_write_p99_us: u64,
    /// Every node killed (SIGKILL) after the writes and started again: seconds until
    /// every group had a leader again (the cluster with quiescence only).
    pub restart_seconds: Option<f64>,
}

const NODES: u64 = 3;
const CORES: u16 = 2;
/// How long start-up may take before the run fails.
const STARTUP_LIMIT: Duration = Duration::from_secs(300);
/// How long to wait for every replica to quiesce before measuring anyway.
const SETTLE_LIMIT: Duration = Duration::from_secs(30);

pub fn run(o: &Options) -> Result<serde_json::Value, String> {
    let on = cluster(o, true)?;
    // Without quiescence a large cluster may not even start on a small machine: that is
    // reported, not fatal.
    let off = if o.baseline {
        cluster(o, false)
    } else {
        Err("not run (--no-baseline)".into())
    };
    let active = off.as_ref().ok().map(|f| f.first_write_p99_us);
    Ok(serde_json::json!({
        "groups": o.groups,
        "replicas": u64::from(o.groups) * NODES,
        "nodes": NODES,
        "cores": CORES,
        "startup_seconds": on.startup_seconds,
        "idle_cpu_cores": on.idle_cpu_cores,
        "rss_bytes_per_replica": on.rss_bytes_per_replica,
        "wake_p99_us": on.first_write_p99_us,
        "awake_write_p99_us": on.second_write_p99_us,
        "restart_seconds": on.restart_seconds,
        "active_write_p99_us": active,
        "wake_over_active_p99": active.map(|a| on.first_write_p99_us as f64 / a.max(1) as f64),
        "quiesced": on,
        "not_quiesced": match off {
            Ok(f) => serde_json::json!(f),
            Err(e) => serde_json::json!({ "error": e }),
        },
    }))
}

fn cluster(o: &Options, quiesce: bool) -> Result<ClusterFigures, String> {
    let shape = Shape {
        nodes: NODES,
        cores: CORES,
        groups: o.groups,
        extra: if quiesce {
            String::new()
        } else {
            "quiesce = false\n".into()
        },
        metrics: true,
    };
    let dir = o
        .dir
        .join(if quiesce { "quiesced" } else { "not-quiesced" });
    let started = Instant::now();
    let mut cluster = Processes::start(&o.binary, &dir, &shape)?;
    let outcome = measure(o, &cluster, quiesce, started).and_then(|mut figures| {
        if quiesce {
            for n in 1..=NODES {
                cluster.kill(n);
            }
            let restarted = Instant::now();
            for n in 1..=NODES {
                cluster.restart(n)?;
            }
            wait_led(&cluster, o.groups, restarted)?;
            figures.restart_seconds = Some(restarted.elapsed().as_secs_f64());
        }
        Ok(figures)
    });
    cluster.stop(outcome.is_ok());
    outcome
}

/// The sum of a series over every node's metrics (those that answer).
fn total(cluster: &Processes, series: &str) -> f64 {
    cluster
        .metrics
        .iter()
        .flatten()
        .filter_map(|addr| procs::scrape(*addr).ok())
        .map(|text| {
            procs::samples(&text, series)
                .iter()
                .map(|(_, v)| v)
                .sum::<f64>()
        })
        .sum()
}

/// Waits until every group has a leader, the metadata group included.
fn wait_led(cluster: &Processes, groups: u32, started: Instant) -> Result<(), String> {
    let groups = f64::from(groups) + 1.0;
    loop {
        let led = total(cluster, "nodedb_core_leader_groups");
        if led >= groups {
            return Ok(());
        }
        if started.elapsed() > STARTUP_LIMIT {
            return Err(format!(
                "{led} of {groups} groups had a leader after {} s",
                STARTUP_LIMIT.as_secs()
            ));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn measure(
    o: &Options,
    cluster: &Processes,
    quiesce: bool,
    started: Instant,
) -> Result<ClusterFigures, String> {
    let total = |series: &str| total(cluster, series);
    wait_led(cluster, o.groups, started)?;
    let startup_seconds = started.elapsed().as_secs_f64();
    let settling = Instant::now();
    let replicas = (f64::from(o.groups) + 1.0) * NODES as f64;
    let mut quiesced;
    loop {
        quiesced = total("nodedb_core_quiesced_groups");
        if !quiesce || quiesced >= replicas || settling.elapsed() > SETTLE_LIMIT {
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    if !quiesce {
        // Start-up's elections and first heartbeats out of the way.
        std::thread::sleep(Duration::from_secs(2));
    }
    let settle_seconds = settling.elapsed().as_secs_f64();
    let pids: Vec<u32> = (1..=NODES).map(|n| cluster.pid(n)).collect();
    let cpu_before: f64 = pids.iter().map(|p| cpu_seconds(*p)).sum();
    let window = Instant::now();
    std::thread::sleep(Duration::from_secs_f64(o.seconds));
    let cpu_after: f64 = pids.iter().map(|p| cpu_seconds(*p)).sum();
    let idle_cpu_cores = (cpu_after - cpu_before) / window.elapsed().as_secs_f64();
    let rss_bytes: u64 = pids.iter().map(|p| procs::rss_bytes(*p)).sum();
    let tls = cluster.client_tls(false)?;
    let writes = o.writes.min(o.groups as usize);
    let (first, second) =
        bench::with_client(cluster.spec.clone(), tls, move |client| async move {
            write_each_group(&client, writes).await
        })?;
    Ok(ClusterFigures {
        quiesce,
        startup_seconds,
        settle_seconds,
        quiesced_replicas: quiesced as u64,
        idle_cpu_cores,
        rss_bytes,
        rss_bytes_per_replica: rss_bytes as f64 / replicas,
        first_write_p50_us: first.value_at_quantile(0.5),
        first_write_p99_us: first.value_at_quantile(0.99),
        second_write_p50_us: second.value_at_quantile(0.5),
        second_write_p99_us: second.value_at_quantile(0.99),
        restart_seconds: None,
    })
}

/// One write to each of `count` distinct groups (keys found by hashing), one at a time,
/// and a second right after each: the two latency distributions, microseconds.
async fn write_each_group(
    client: &Rc<KvClient>,
    count: usize,
) -> Result<(Histogram<u64>, Histogram<u64>), String> {
    let new = || Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).map_err(|e| e.to_string());
    let (mut first, mut second) = (new()?, new()?);
    let mut seen = std::collections::BTreeSet::new();
    let mut probe = 0u64;
    while seen.len() < count {
        let key = format!("idle-{probe}");
        probe += 1;
        if !seen.insert(client.group_of(key.as_bytes())) {
            continue;
        }
        for h in [&mut first, &mut second] {
            let began = Instant::now();
            client
                .put(key.as_bytes(), b"v")
                .await
                .map_err(|e| format!("write to {key}: {e}"))?;
            h.record(began.elapsed().as_micros().max(1) as u64)
                .map_err(|e| e.to_string())?;
        }
    }
    Ok((first, second))
}

/// User plus system CPU time of process `pid` so far, seconds (`/proc/PID/stat`).
fn cpu_seconds(pid: u32) -> f64 {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name (which may hold spaces) start at its closing paren.
    let after = text.rsplit_once(')').map_or("", |(_, rest)| rest);
    let fields: Vec<&str> = after.split_whitespace().collect();
    // utime and stime are the line's fields 14 and 15: 11 and 12 counting from 0 after
    // the paren (field 3, the state, is the first there).
    let ticks: f64 = [11, 12]
        .iter()
        .filter_map(|i| fields.get(*i)?.parse::<f64>().ok())
        .sum();
    // SAFETY: sysconf reads a constant of the system.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    ticks / hz.max(1) as f64
}
