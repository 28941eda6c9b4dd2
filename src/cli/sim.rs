//! `nodedb-cluster sim`: the deterministic cluster simulator over one seed (a replay) or
//! many, with fault totals; `--json` for one object.

use std::process::ExitCode;
use std::time::Instant;

/// Fault and event totals over the seeds of a `sim` run (the `--json` keys).
#[derive(Clone, Copy, Default, serde::Serialize)]
struct FaultTotals {
    crashes: u64,
    partitions: u64,
    torn_writes: u64,
    compaction_views: u64,
    snapshots_written_ahead: u64,
    snapshots_streamed: u64,
    corruptions: u64,
    corruptions_refused: u64,
    moves_started: u64,
    moves_finished: u64,
    stale_routes: u64,
    /// Keys whose linearizability search ran out of budget: not checked (a run with any is
    /// not a pass).
    unchecked_keys: u64,
    ops_unknown: u64,
    hostile_acts: u64,
    hostile_refused: u64,
    rebalancer_sweeps: u64,
    rebalancer_transfers: u64,
    rebalancer_moves: u64,
    drains: u64,
    drains_decommissioned: u64,
    drains_recommissioned: u64,
    nodes_marked_down: u64,
    nodes_back_active: u64,
    joins: u64,
    joins_active: u64,
    joined_replicas: u64,
    /// Crashes, clock jumps, pauses and partitions while some replica was quiesced.
    faults_while_quiesced: [u64; 4],
}

impl FaultTotals {
    fn add(&mut self, r: &nodedb_cluster::sim::SimReport) {
        self.crashes += r.crashes;
        self.partitions += r.partitions;
        self.torn_writes += r.torn_writes;
        self.compaction_views += r.compaction_views;
        self.snapshots_written_ahead += r.snapshots_written_ahead;
        self.snapshots_streamed += r.snapshots_streamed;
        self.corruptions += r.corruptions;
        self.corruptions_refused += r.corruptions_refused;
        self.moves_started += r.moves_started;
        self.moves_finished += r.moves_finished;
        self.stale_routes += r.stale_routes;
        self.unchecked_keys += r.unchecked_keys;
        self.ops_unknown += r.ops_unknown;
        self.hostile_acts += r.hostile_acts;
        self.hostile_refused += r.hostile_refused;
        self.rebalancer_sweeps += r.rebalancer_sweeps;
        self.rebalancer_transfers += r.rebalancer_transfers;
        self.rebalancer_moves += r.rebalancer_moves;
        self.drains += r.drains;
        self.drains_decommissioned += r.drains_decommissioned;
        self.drains_recommissioned += r.drains_recommissioned;
        self.nodes_marked_down += r.nodes_marked_down;
        self.nodes_back_active += r.nodes_back_active;
        self.joins += r.joins;
        self.joins_active += r.joins_active;
        self.joined_replicas += r.joined_replicas;
        for (total, n) in self
            .faults_while_quiesced
            .iter_mut()
            .zip(r.faults_while_quiesced)
        {
            *total += n;
        }
    }
}

/// Runs seed `seed`, or seeds `1..=seeds` (default 100).
pub fn run(seed: Option<u64>, seeds: Option<u64>, json: bool) -> ExitCode {
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
        println!(
            "rebalancer in the nodes: {} sweeps, {} leader transfers and {} replica moves dispatched",
            f.rebalancer_sweeps, f.rebalancer_transfers, f.rebalancer_moves
        );
        println!(
            "operator drains: {} started, {} ended decommissioned, {} recommissioned",
            f.drains, f.drains_decommissioned, f.drains_recommissioned
        );
        println!(
            "failure detector: {} nodes recorded Down (replicas replaced), {} back to Active",
            f.nodes_marked_down, f.nodes_back_active
        );
        println!(
            "joins: {} nodes asked to join, {} Active at the end, holding {} replicas",
            f.joins, f.joins_active, f.joined_replicas
        );
        let [crashes, jumps, pauses, partitions] = f.faults_while_quiesced;
        println!(
            "while some replica was quiesced: {crashes} crashes, {jumps} clock jumps, {pauses} pauses, {partitions} partitions"
        );
        println!(
            "large snapshots: {} compactions kept as views, {} received snapshots written ahead of their install ({} streamed in as their chunks arrived)",
            f.compaction_views, f.snapshots_written_ahead, f.snapshots_streamed
        );
    }
    if failures == 0 && faults.unchecked_keys == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
