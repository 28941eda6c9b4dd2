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
//!
//! Options: `throttle` sets the nodes' snapshot rate, and the snapshot stream's own pace
//! (bytes between its first and last chunk, over that time, sampled from the nodes'
//! `snapshot_bytes_sent_total` every millisecond in-process, every 50 ms from separate
//! processes; the samplers run through the baseline window too, so that watching costs both
//! windows alike) is reported against it; `rate` makes the
//! writer open-loop (operations due at a fixed rate, each latency measured from its due
//! time, so a stall counts for every operation it delays); `hgrm` writes both latency
//! distributions in HdrHistogram's plottable percentile format.

use std::cell::Cell;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::rc::Rc;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use nodedb_cluster::ids::{GroupId, NodeId};
use nodedb_cluster::metrics::cores::{CoreCounter, NodeMetrics};
use nodedb_cluster::runtime::bench::{self, Cluster, MTU};
use nodedb_cluster::runtime::client::KvClient;
use nodedb_cluster::runtime::demo::PerSecond;

use crate::procs::{self, Processes, Shape};
use nodedb_cluster::metrics::stages::StageHistograms;

/// What to run.
pub struct Options {
    pub dir: PathBuf,
    pub mib: u64,
    /// The nodes' snapshot rate, bytes per second (`None`: unlimited).
    pub throttle: Option<u64>,
    /// Open-loop writes per second (`None`: one closed-loop writer).
    pub rate: Option<u64>,
    /// Moves at once: groups 1..=moves each move one replica (the cluster has the next
    /// power of two of groups, each loaded with about `mib`).
    pub moves: u32,
    /// Run the nodes as separate processes of this binary (`None`: in this process).
    pub processes: Option<PathBuf>,
    /// Keep the processes' files after a successful run.
    pub keep: bool,
    /// Trace every write of the writer: where its time went, before and during the move.
    pub stages: bool,
}

pub struct MigrateResult {
    pub vshard_bytes: u64,
    pub move_seconds: f64,
    /// The longest core-loop turn on any core of any node during the move.
    pub max_core_stall_us: u64,
    /// The same by CPU time: the longest the core's own work held it (the rest of a
    /// stall is the machine preempting the thread).
    pub max_core_busy_us: u64,
    /// Peak resident memory during the move over its value at the start: of this process
    /// (every node and the client) in-process, of the node that grew most with processes.
    pub peak_rss_growth_bytes: u64,
    /// With processes: the same for the moves' sources and for their targets (the most of
    /// either, with several moves).
    pub source_rss_growth_bytes: Option<u64>,
    pub target_rss_growth_bytes: Option<u64>,
    /// The same bytes over one raw QUIC connection between two cores, MB/s.
    pub quic_mb_per_sec: f64,
    pub baseline_p50_us: u64,
    pub baseline_p99_us: u64,
    pub baseline_writes: u64,
    /// Log checkpoints (on any node) that fell in the baseline window, and in the move:
    /// each rewrites tens of MiB while appends go on, a cause of tail latency of its own.
    pub checkpoints_in_baseline: u64,
    pub checkpoints_during_move: u64,
    pub during_p50_us: u64,
    pub during_p99_us: u64,
    pub during_writes: u64,
    /// The snapshot stream: bytes and seconds between its first and last chunk.
    pub stream_bytes: u64,
    pub stream_seconds: f64,
    /// The latency distributions (µs), before and during the move.
    pub baseline: Histogram<u64>,
    pub during: Histogram<u64>,
    /// With `stages`: the writes' stages before and during the move.
    pub baseline_stages: Option<StageHistograms>,
    pub during_stages: Option<StageHistograms>,
    /// Both windows' writes second by second since the baseline began, and when (seconds
    /// since then) the move started and ended: the plot's timeline.
    pub per_second: Vec<Histogram<u64>>,
    pub move_started_s: f64,
    pub move_ended_s: f64,
}

pub fn run(o: &Options) -> Result<MigrateResult, String> {
    let groups = o.moves.max(1).next_power_of_two();
    let (mib, rate, moves, stages) = (o.mib, o.rate, o.moves.max(1), o.stages);
    let mut r = if let Some(binary) = &o.processes {
        let snapshot_rate = o
            .throttle
            .map_or("\"unlimited\"".to_owned(), |t| t.to_string());
        let shape = Shape {
            nodes: 4,
            cores: 1,
            groups,
            extra: format!("snapshot_rate_bytes_per_sec = {snapshot_rate}\n"),
            metrics: true,
        };
        let cluster = Processes::start(binary, &o.dir, &shape)?;
        let probe = Probe::Processes(
            (1..=4)
                .map(|n| (cluster.pid(n), cluster.metrics[(n - 1) as usize]))
                .collect(),
        );
        let tls = cluster.client_tls(true)?;
        let outcome = bench::with_client(cluster.spec.clone(), tls, move |client| async move {
            measure(&client, mib, rate, moves, groups, probe, stages).await
        });
        cluster.stop(outcome.is_ok() && !o.keep);
        outcome?
    } else {
        let cluster = Cluster::start_groups(&o.dir, 4, groups, 3, o.throttle)?;
        let probe = Probe::InProcess(cluster.nodes.iter().map(|n| n.metrics().clone()).collect());
        let outcome = cluster.with_client(move |client| async move {
            measure(&client, mib, rate, moves, groups, probe, stages).await
        });
        let stopped = cluster.shutdown();
        match (outcome, stopped) {
            (Ok(r), Ok(())) => r,
            (Ok(_), Err(failures)) => return Err(failures),
            (Err(e), stopped) => return Err(format!("{e} {}", stopped.err().unwrap_or_default())),
        }
    };
    // The transport's ceiling for the same bytes, once the nodes are gone.
    let quic = crate::quic::ours(&crate::quic::Certs::new(), r.vshard_bytes, MTU, true)?;
    r.quic_mb_per_sec = quic.mb_s;
    Ok(r)
}

/// How the nodes are watched during the move.
#[derive(Clone)]
enum Probe {
    /// Nodes in this process: their metrics directly, and this process's memory.
    InProcess(Vec<std::sync::Arc<NodeMetrics>>),
    /// Node `n` is the process `[n - 1].0`, serving metrics at `[n - 1].1`.
    Processes(Vec<(u32, Option<SocketAddr>)>),
}

impl Probe {
    /// Snapshot bytes every node has streamed so far.
    fn snapshot_bytes_sent(&self) -> u64 {
        self.total(CoreCounter::SnapshotBytesSent)
    }

    /// Log checkpoints every node has put in place so far.
    fn checkpoints(&self) -> u64 {
        self.total(CoreCounter::WalCheckpoints)
    }

    /// A counter summed over every core of every node (with processes, from `/metrics`).
    fn total(&self, counter: CoreCounter) -> u64 {
        match self {
            Probe::InProcess(metrics) => metrics
                .iter()
                .flat_map(|m| (0..m.core_count()).map(move |c| m.core(c)))
                .map(|c| c.counter(counter))
                .sum(),
            Probe::Processes(nodes) => {
                let name = format!("nodedb_core_{}", counter.name());
                nodes
                    .iter()
                    .filter_map(|(_, m)| procs::scrape((*m)?).ok())
                    .map(|text| {
                        procs::samples(&text, &name)
                            .iter()
                            .map(|(_, v)| *v as u64)
                            .sum::<u64>()
                    })
                    .sum()
            }
        }
    }

    /// Snapshot files the nodes' log tasks are writing (started, not finished).
    fn snapshot_files_in_flight(&self) -> u64 {
        let (started, finished) = match self {
            Probe::InProcess(metrics) => metrics
                .iter()
                .flat_map(|m| (0..m.core_count()).map(move |c| m.core(c)))
                .fold((0, 0), |(s, f), c| {
                    (
                        s + c.counter(CoreCounter::SnapshotFilesStarted),
                        f + c.counter(CoreCounter::SnapshotFilesFinished),
                    )
                }),
            Probe::Processes(nodes) => nodes
                .iter()
                .filter_map(|(_, m)| procs::scrape((*m)?).ok())
                .fold((0, 0), |(s, f), text| {
                    let total = |name: &str| {
                        procs::samples(&text, name)
                            .iter()
                            .map(|(_, v)| *v as u64)
                            .sum::<u64>()
                    };
                    (
                        s + total("nodedb_core_snapshot_files_started_total"),
                        f + total("nodedb_core_snapshot_files_finished_total"),
                    )
                }),
        };
        started.saturating_sub(finished)
    }

    /// Waits (up to `within`) until no node writes a snapshot file: the compactions of
    /// the freshly loaded vShard, written on every replica, would otherwise fall in the
    /// baseline window (a baseline p99 of 220–350 ms, against about 10 ms settled).
    async fn settle(&self, within: Duration) -> Result<(), String> {
        let deadline = Instant::now() + within;
        loop {
            let in_flight = self.snapshot_files_in_flight();
            if in_flight == 0 {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "{in_flight} snapshot files still being written {within:?} after the load"
                ));
            }
            glommio::timer::sleep(Duration::from_millis(50)).await;
        }
    }

    /// How often the stream sampler may look.
    fn sample_every(&self) -> Duration {
        match self {
            Probe::InProcess(_) => Duration::from_millis(1),
            // An HTTP scrape of every node each time, which the nodes serve (a thread per
            // scrape) with the CPUs the move and the writes share: every 10 ms was 400
            // scrapes a second, during the move only. ±50 ms at each end of a move of 8 s
            // or more is ±1.3 % of its rate.
            Probe::Processes(_) => Duration::from_millis(50),
        }
    }

    /// Resident memory: of this process (node 0), or of every node's process.
    fn rss(&self) -> Vec<(u64, u64)> {
        match self {
            Probe::InProcess(_) => vec![(0, procs::rss_bytes(std::process::id()))],
            Probe::Processes(nodes) => nodes
                .iter()
                .enumerate()
                .map(|(i, (pid, _))| (i as u64 + 1, procs::rss_bytes(*pid)))
                .collect(),
        }
    }

    /// Loop-turn state before the move (see `longest_turn_since`), by wall or CPU time.
    fn turns(&self, clock: TurnClock) -> Vec<Vec<(f64, f64)>> {
        match self {
            Probe::InProcess(metrics) => {
                for m in metrics {
                    for c in 0..m.core_count() {
                        clock.of(m.core(c)).take_recent_max();
                    }
                }
                Vec::new()
            }
            Probe::Processes(nodes) => nodes
                .iter()
                .map(|(_, m)| {
                    m.and_then(|m| procs::scrape(m).ok())
                        .map(|text| turn_buckets(&text, clock.series()))
                        .unwrap_or_default()
                })
                .collect(),
        }
    }

    /// The longest loop turn of any core since `before = self.turns()`: exact in-process;
    /// with processes, the upper bound of the histogram bucket it fell in (the nodes'
    /// `nodedb_core_loop_turn_seconds`).
    fn longest_turn_since(&self, clock: TurnClock, before: &[Vec<(f64, f64)>]) -> Duration {
        match self {
            Probe::InProcess(metrics) => metrics
                .iter()
                .flat_map(|m| (0..m.core_count()).map(move |c| m.core(c)))
                .map(|c| clock.of(c).take_recent_max())
                .max()
                .unwrap_or_default(),
            Probe::Processes(_) => {
                let after = self.turns(clock);
                let mut longest = 0.0f64;
                for (b, a) in before.iter().zip(&after) {
                    // Cumulative buckets: turns above a bound are the total's increase
                    // less that bucket's increase.
                    let increase = |i: usize| a[i].1 - b.get(i).map_or(0.0, |x| x.1);
                    let Some(total) = a.len().checked_sub(1).map(increase) else {
                        continue;
                    };
                    let bound = (0..a.len())
                        .find(|&i| total - increase(i) < 0.5)
                        .map_or(f64::INFINITY, |i| a[i].0);
                    longest = longest.max(bound);
                }
                Duration::from_secs_f64(longest.min(3600.0))
            }
        }
    }
}

/// Which length of a loop turn: its wall time (what work waiting on the core waited) or
/// its CPU time (what the core's own work took; the rest is the machine preempting it).
#[derive(Clone, Copy)]
enum TurnClock {
    Wall,
    Cpu,
}

impl TurnClock {
    fn of(
        self,
        core: &nodedb_cluster::metrics::cores::CoreMetrics,
    ) -> &nodedb_cluster::metrics::cores::TimeHistogram {
        match self {
            TurnClock::Wall => &core.loop_turns,
            TurnClock::Cpu => &core.loop_turn_cpu,
        }
    }

    /// The nodes' histogram buckets (`/metrics`).
    fn series(self) -> &'static str {
        match self {
            TurnClock::Wall => "nodedb_core_loop_turn_seconds_bucket",
            TurnClock::Cpu => "nodedb_core_loop_turn_cpu_seconds_bucket",
        }
    }
}

/// One node's loop-turn histogram (`series`), summed over its cores: (bound in seconds,
/// cumulative count), by bound, `+Inf` last.
fn turn_buckets(text: &str, series: &str) -> Vec<(f64, f64)> {
    let mut by_bound: std::collections::BTreeMap<u64, (f64, f64)> = Default::default();
    for (labels, count) in procs::samples(text, series) {
        let Some(le) = labels
            .split("le=\"")
            .nth(1)
            .and_then(|l| l.split('"').next())
        else {
            continue;
        };
        let bound = if le == "+Inf" {
            f64::INFINITY
        } else {
            le.parse().unwrap_or(f64::INFINITY)
        };
        let entry = by_bound.entry(bound.to_bits()).or_insert((bound, 0.0));
        entry.1 += count;
    }
    let mut buckets: Vec<(f64, f64)> = by_bound.into_values().collect();
    buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
    buckets
}

/// What the samplers are to do: they start before the baseline window and sample through
/// both windows, so that what watching costs the nodes and the CPUs (HTTP scrapes of every
/// node, `/proc` reads) falls on the baseline as much as on the move, and the ratio of the
/// two is the move's own cost. Only what they see during the move is kept.
#[derive(Clone, Default)]
struct Watching(std::sync::Arc<std::sync::atomic::AtomicU8>);

impl Watching {
    const BEFORE: u8 = 0;
    const MOVING: u8 = 1;
    const STOP: u8 = 2;

    fn set(&self, state: u8) {
        self.0.store(state, std::sync::atomic::Ordering::Relaxed);
    }

    fn get(&self) -> u8 {
        self.0.load(std::sync::atomic::Ordering::Relaxed)
    }
}

/// Samples every watched process's RSS every 10 ms until told to stop: the peak of each
/// while the move runs.
fn watch_rss(probe: Probe, watching: Watching) -> std::thread::JoinHandle<Vec<(u64, u64)>> {
    std::thread::spawn(move || {
        let mut peak: Vec<(u64, u64)> = probe.rss().into_iter().map(|(n, _)| (n, 0)).collect();
        loop {
            let state = watching.get();
            let now = probe.rss();
            if state != Watching::BEFORE {
                for (p, (_, v)) in peak.iter_mut().zip(now) {
                    p.1 = p.1.max(v);
                }
            }
            if state == Watching::STOP {
                return peak;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    })
}

/// Samples the nodes' snapshot bytes sent (every millisecond in-process) until told to
/// stop: the bytes and seconds between the stream's first and last chunk (its first chunk's
/// bytes left out, as they were sent before the first sample that saw them).
fn watch_stream(probe: Probe, watching: Watching) -> std::thread::JoinHandle<(u64, f64)> {
    std::thread::spawn(move || {
        let start = probe.snapshot_bytes_sent();
        let mut first: Option<(Instant, u64)> = None;
        let mut last: Option<(Instant, u64)> = None;
        let mut seen = start;
        loop {
            let stopping = watching.get() == Watching::STOP;
            let now = probe.snapshot_bytes_sent();
            if now != seen {
                let at = Instant::now();
                first.get_or_insert((at, now));
                last = Some((at, now));
                seen = now;
            }
            if stopping {
                break;
            }
            std::thread::sleep(probe.sample_every());
        }
        match (first, last) {
            (Some((t0, b0)), Some((t1, b1))) if t1 > t0 => (b1 - b0, (t1 - t0).as_secs_f64()),
            _ => (0, 0.0),
        }
    })
}

async fn measure(
    client: &Rc<KvClient>,
    mib: u64,
    rate: Option<u64>,
    moves: u32,
    groups: u32,
    probe: Probe,
    stages: bool,
) -> Result<MigrateResult, String> {
    // Every group gets about `mib`; the moving groups' share is reported.
    let loaded = bench::load(client, (mib << 20) * u64::from(groups)).await?;
    let vshard_bytes = loaded / u64::from(groups) * u64::from(moves);
    probe.settle(Duration::from_secs(60)).await?;
    if stages {
        client.sample_stages(1);
    }
    // Saturating: a scrape that failed leaves a node out of a total.
    let watching = Watching::default();
    let rss_watch = watch_rss(probe.clone(), watching.clone());
    let stream_watch = watch_stream(probe.clone(), watching.clone());
    let checkpoints_before = probe.checkpoints();
    let timeline = Rc::new(PerSecond::new(Instant::now(), 1));
    let baseline = write_window(
        client,
        rate,
        Duration::from_secs(3),
        None,
        Some(timeline.clone()),
    )
    .await?;
    let checkpoints_in_baseline = probe.checkpoints().saturating_sub(checkpoints_before);
    let baseline_stages = client.stage_histograms();
    if stages {
        // Afresh for the move.
        client.sample_stages(1);
    }
    let moving = Rc::new(Cell::new(true));
    let writer = {
        let (client, moving, timeline) = (client.clone(), moving.clone(), timeline.clone());
        glommio::spawn_local(async move {
            let length = Duration::from_secs(600);
            write_window(&client, rate, length, Some(moving), Some(timeline)).await
        })
    };
    // Each moving group's first replica moves to the node that holds none of it.
    let mut plan = Vec::new();
    for g in (1..=moves).map(|g| GroupId(u64::from(g))) {
        let replicas = bench::replicas_of(client, g).await?;
        let source = replicas.first().ok_or("a group without replicas")?.1.node;
        let spare = (1..=4)
            .map(NodeId)
            .find(|n| !replicas.iter().any(|(_, a)| a.node == *n))
            .ok_or("no spare node")?;
        plan.push((g, source, spare));
    }
    let (sources, targets): (Vec<u64>, Vec<u64>) =
        plan.iter().map(|(_, from, to)| (from.0, to.0)).unzip();
    let (turns_before, cpu_before) = (probe.turns(TurnClock::Wall), probe.turns(TurnClock::Cpu));
    let rss_at_start = probe.rss();
    watching.set(Watching::MOVING);
    let started = Instant::now();
    let tasks: Vec<_> = plan
        .into_iter()
        .map(|(g, source, spare)| {
            let client = client.clone();
            glommio::spawn_local(
                async move { bench::move_replica_of(&client, g, source, spare).await },
            )
        })
        .collect();
    for t in tasks {
        t.await?;
    }
    let move_seconds = started.elapsed().as_secs_f64();
    let (move_started_s, move_ended_s) = (timeline.since(started), timeline.since(Instant::now()));
    let checkpoints_during_move = (probe.checkpoints().saturating_sub(checkpoints_before))
        .saturating_sub(checkpoints_in_baseline);
    let max_stall = probe.longest_turn_since(TurnClock::Wall, &turns_before);
    let max_busy = probe.longest_turn_since(TurnClock::Cpu, &cpu_before);
    watching.set(Watching::STOP);
    let rss_peak = rss_watch.join().map_err(|_| "the RSS sampler panicked")?;
    // Growth of each watched process: (node, bytes); node 0 is this process.
    let growth: Vec<(u64, u64)> = rss_peak
        .iter()
        .zip(&rss_at_start)
        .map(|(peak, start)| (peak.0, peak.1.saturating_sub(start.1)))
        .collect();
    let most_of = |nodes: &[u64]| {
        growth
            .iter()
            .filter(|(n, _)| nodes.contains(n))
            .map(|(_, g)| *g)
            .max()
    };
    let (stream_bytes, stream_seconds) = stream_watch
        .join()
        .map_err(|_| "the stream sampler panicked")?;
    moving.set(false);
    let during = writer.await?;
    let during_stages = client.stage_histograms();
    Ok(MigrateResult {
        vshard_bytes,
        move_seconds,
        max_core_stall_us: max_stall.as_micros() as u64,
        max_core_busy_us: max_busy.as_micros() as u64,
        peak_rss_growth_bytes: growth.iter().map(|(_, g)| *g).max().unwrap_or(0),
        source_rss_growth_bytes: most_of(&sources),
        target_rss_growth_bytes: most_of(&targets),
        quic_mb_per_sec: 0.0,
        baseline_p50_us: baseline.value_at_quantile(0.5),
        baseline_p99_us: baseline.value_at_quantile(0.99),
        baseline_writes: baseline.len(),
        checkpoints_in_baseline,
        checkpoints_during_move,
        during_p50_us: during.value_at_quantile(0.5),
        during_p99_us: during.value_at_quantile(0.99),
        during_writes: during.len(),
        stream_bytes,
        stream_seconds,
        baseline,
        during,
        baseline_stages,
        during_stages,
        per_second: timeline.kind(0),
        move_started_s,
        move_ended_s,
    })
}

/// The plot of a run: write latency by percentile before and during the move, and second
/// by second through both windows with the move's start and end marked.
pub fn plot(r: &MigrateResult, title: &str) -> String {
    use nodedb_cluster::plot::{self, LatencyRecord, Marker};
    let empty = Histogram::<u64>::new(2).expect("valid precision");
    let records = [
        LatencyRecord {
            name: "before the move",
            colors: ["#2ca02c", "#2ca02c"],
            whole: &r.baseline,
            per_second: &[],
        },
        LatencyRecord {
            name: "during the move",
            colors: ["#d62728", "#d62728"],
            whole: &r.during,
            per_second: &[],
        },
        LatencyRecord {
            name: "writes",
            colors: ["#1f77b4", "#9ecae1"],
            whole: &empty,
            per_second: &r.per_second,
        },
    ];
    let marks = vec![
        Marker {
            x: r.move_started_s,
            label: "move started".into(),
        },
        Marker {
            x: r.move_ended_s,
            label: "move ended".into(),
        },
    ];
    plot::render(title, &plot::latency_panels(&records, marks))
}

/// Writes small values for `length`, or until `running` turns false: one closed-loop
/// writer, or, with `rate`, operations due every `1 / rate` seconds, sent by as many
/// workers as it takes, each latency measured from the operation's due time.
pub async fn write_window(
    client: &Rc<KvClient>,
    rate: Option<u64>,
    length: Duration,
    running: Option<Rc<Cell<bool>>>,
    timeline: Option<Rc<PerSecond>>,
) -> Result<Histogram<u64>, String> {
    let h = Rc::new(std::cell::RefCell::new(
        Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("valid bounds"),
    ));
    let start = Instant::now();
    let end = start + length;
    let go_on = move || Instant::now() < end && running.as_ref().is_none_or(|r| r.get());
    let Some(rate) = rate else {
        let mut i = 0u64;
        while go_on() {
            let t = Instant::now();
            put(client, i).await?;
            let micros = t.elapsed().as_micros() as u64;
            h.borrow_mut().saturating_record(micros);
            if let Some(timeline) = &timeline {
                timeline.record(0, micros);
            }
            i += 1;
        }
        return Ok(h.borrow().clone());
    };
    let next = Rc::new(Cell::new(0u64));
    let go_on = Rc::new(go_on);
    let mut workers = Vec::new();
    for _ in 0..OPEN_LOOP_WORKERS {
        let (client, h, next, go_on) = (client.clone(), h.clone(), next.clone(), go_on.clone());
        let timeline = timeline.clone();
        workers.push(glommio::spawn_local(async move {
            loop {
                let i = next.get();
                next.set(i + 1);
                let due = start + Duration::from_secs_f64(i as f64 / rate as f64);
                if let Some(wait) = due.checked_duration_since(Instant::now()) {
                    glommio::timer::sleep(wait).await;
                }
                if !go_on() {
                    return Ok::<(), String>(());
                }
                put(&client, i).await?;
                let micros = due.elapsed().as_micros() as u64;
                h.borrow_mut().saturating_record(micros);
                if let Some(timeline) = &timeline {
                    timeline.record(0, micros);
                }
            }
        }));
    }
    for w in workers {
        w.await?;
    }
    Ok(h.borrow().clone())
}

/// Workers of the open-loop writer: operations in flight at most (a stall longer than
/// this many operations' spacing delays the rest, and their latency shows it).
pub const OPEN_LOOP_WORKERS: usize = 256;

async fn put(client: &KvClient, i: u64) -> Result<(), String> {
    client
        .put(format!("probe-{}", i % 1000).as_bytes(), b"v")
        .await
        .map_err(|e| format!("a write failed: {e}"))
}

/// Writes `h` (microseconds) in HdrHistogram's plottable percentile format, in
/// milliseconds, as `HistogramLogProcessor` and the online plotter read it.
pub fn write_hgrm(path: &std::path::Path, h: &Histogram<u64>) -> Result<(), String> {
    use std::fmt::Write as _;
    let mut out = String::new();
    let ms = |v: u64| v as f64 / 1000.0;
    let _ = writeln!(
        out,
        "{:>12} {:>14} {:>10} {:>14}\n",
        "Value", "Percentile", "TotalCount", "1/(1-Percentile)"
    );
    let mut total = 0u64;
    for v in h.iter_quantiles(5) {
        total += v.count_since_last_iteration();
        let q = v.quantile_iterated_to();
        if q < 1.0 {
            let _ = writeln!(
                out,
                "{:12.3} {:2.12} {:10} {:14.2}",
                ms(v.value_iterated_to()),
                q,
                total,
                1.0 / (1.0 - q)
            );
        } else {
            let _ = writeln!(
                out,
                "{:12.3} {:2.12} {:10}",
                ms(v.value_iterated_to()),
                q,
                total
            );
        }
    }
    let _ = writeln!(
        out,
        "#[Mean    = {:12.3}, StdDeviation   = {:12.3}]",
        h.mean() / 1000.0,
        h.stdev() / 1000.0
    );
    let _ = writeln!(
        out,
        "#[Max     = {:12.3}, Total count    = {:12}]",
        ms(h.max()),
        h.len()
    );
    std::fs::write(path, out).map_err(|e| format!("{}: {e}", path.display()))
}
