//! `migrate`: how fast a replica of a loaded vShard moves to another node, and what the
//! move costs the writes that keep arriving meanwhile.
//!
//! Four nodes × one core over loopback QUIC with mTLS and write-ahead logs; one group with
//! three replicas (on three of the nodes), loaded with `mib` MiB. A closed-loop writer
//! measures write latency for a baseline window, then the group's first replica moves to
//! the fourth node
//! (`start_move`; the executor adds a learner, which catches up through a streamed snapshot,
//! promotes it, hands leadership over if needed and retires the old replica) while the
//! writer goes on. Reported: the move's wall time and the vShard bytes moved per second,
//! and write p50/p99 in the baseline window and during the move — the same run, so the
//! ratio is the move's cost; the longest core-loop turn of any node during the move (a
//! stall every request on that core waited out), the process's peak RSS growth during the
//! move (both sides: the nodes share this process), and, after the nodes stopped, the same
//! bytes over one raw QUIC connection between two cores (`quic::ours`), the transport's
//! ceiling for the move.

use std::cell::Cell;
use std::path::PathBuf;
use std::rc::Rc;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use nodedb_cluster::ids::NodeId;
use nodedb_cluster::runtime::bench::{self, Cluster, MTU};
use nodedb_cluster::runtime::client::KvClient;

pub struct MigrateResult {
    pub vshard_bytes: u64,
    pub move_seconds: f64,
    /// The longest core-loop turn on any core of any node during the move.
    pub max_core_stall_us: u64,
    /// Peak resident memory of the process during the move, over its value at the start.
    pub peak_rss_growth_bytes: u64,
    /// The same bytes over one raw QUIC connection between two cores, MB/s.
    pub quic_mb_per_sec: f64,
    pub baseline_p50_us: u64,
    pub baseline_p99_us: u64,
    pub baseline_writes: u64,
    pub during_p50_us: u64,
    pub during_p99_us: u64,
    pub during_writes: u64,
}

pub fn run(dir: PathBuf, mib: u64) -> Result<MigrateResult, String> {
    let cluster = Cluster::start(&dir, 4, 3, None)?;
    let metrics: Vec<_> = cluster.nodes.iter().map(|n| n.metrics().clone()).collect();
    let outcome =
        cluster.with_client(move |client| async move { measure(&client, mib, &metrics).await });
    let stopped = cluster.shutdown();
    let mut r = match (outcome, stopped) {
        (Ok(r), Ok(())) => r,
        (Ok(_), Err(failures)) => return Err(failures),
        (Err(e), stopped) => return Err(format!("{e} {}", stopped.err().unwrap_or_default())),
    };
    // The transport's ceiling for the same bytes, once the nodes are gone.
    let quic = crate::quic::ours(&crate::quic::Certs::new(), r.vshard_bytes, MTU, true)?;
    r.quic_mb_per_sec = quic.mb_s;
    Ok(r)
}

/// Resident memory of this process, bytes (`/proc/self/statm`; 0 where unreadable).
fn rss_bytes() -> u64 {
    let pages = std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|s| s.split_whitespace().nth(1)?.parse::<u64>().ok())
        .unwrap_or(0);
    // SAFETY: sysconf reads a constant of the system.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    pages * u64::try_from(page).unwrap_or(4096)
}

/// Samples the process's RSS every 10 ms until `stop` is set: the peak seen.
fn watch_rss(stop: std::sync::Arc<std::sync::atomic::AtomicBool>) -> std::thread::JoinHandle<u64> {
    std::thread::spawn(move || {
        let mut peak = rss_bytes();
        while !stop.load(std::sync::atomic::Ordering::Relaxed) {
            peak = peak.max(rss_bytes());
            std::thread::sleep(Duration::from_millis(10));
        }
        peak.max(rss_bytes())
    })
}

async fn measure(
    client: &Rc<KvClient>,
    mib: u64,
    metrics: &[std::sync::Arc<nodedb_cluster::metrics::cores::NodeMetrics>],
) -> Result<MigrateResult, String> {
    let cores = |f: &mut dyn FnMut(&nodedb_cluster::metrics::cores::LoopTurns)| {
        for m in metrics {
            for c in 0..m.core_count() {
                f(&m.core(c).loop_turns);
            }
        }
    };
    let vshard_bytes = bench::load(client, mib << 20).await?;
    let baseline = write_window(client, Duration::from_secs(3), None).await?;
    let moving = Rc::new(Cell::new(true));
    let writer = {
        let (client, moving) = (client.clone(), moving.clone());
        glommio::spawn_local(async move {
            write_window(&client, Duration::from_secs(600), Some(moving)).await
        })
    };
    // The group's first replica moves to the node that holds none.
    let replicas = bench::replicas(client).await?;
    let source = replicas.first().ok_or("a group without replicas")?.1.node;
    let spare = (1..=4)
        .map(NodeId)
        .find(|n| !replicas.iter().any(|(_, a)| a.node == *n))
        .ok_or("no spare node")?;
    cores(&mut |t| {
        t.take_recent_max();
    });
    let rss_at_start = rss_bytes();
    let stop_watch = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let rss_watch = watch_rss(stop_watch.clone());
    let moved = bench::move_replica(client, source, spare).await;
    let move_seconds = moved?.as_secs_f64();
    let mut max_stall = Duration::ZERO;
    cores(&mut |t| max_stall = max_stall.max(t.take_recent_max()));
    stop_watch.store(true, std::sync::atomic::Ordering::Relaxed);
    let rss_peak = rss_watch.join().map_err(|_| "the RSS sampler panicked")?;
    moving.set(false);
    let during = writer.await?;
    Ok(MigrateResult {
        vshard_bytes,
        move_seconds,
        max_core_stall_us: max_stall.as_micros() as u64,
        peak_rss_growth_bytes: rss_peak.saturating_sub(rss_at_start),
        quic_mb_per_sec: 0.0,
        baseline_p50_us: baseline.value_at_quantile(0.5),
        baseline_p99_us: baseline.value_at_quantile(0.99),
        baseline_writes: baseline.len(),
        during_p50_us: during.value_at_quantile(0.5),
        during_p99_us: during.value_at_quantile(0.99),
        during_writes: during.len(),
    })
}

/// One closed-loop writer of small values for `length`, or until `running` turns false.
async fn write_window(
    client: &KvClient,
    length: Duration,
    running: Option<Rc<Cell<bool>>>,
) -> Result<Histogram<u64>, String> {
    let mut h = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("valid bounds");
    let end = Instant::now() + length;
    let mut i = 0u64;
    while Instant::now() < end && running.as_ref().is_none_or(|r| r.get()) {
        let t = Instant::now();
        client
            .put(format!("probe-{}", i % 1000).as_bytes(), b"v")
            .await
            .map_err(|e| format!("a write failed: {e}"))?;
        h.saturating_record(t.elapsed().as_micros() as u64);
        i += 1;
    }
    Ok(h)
}
