//! The rebalancer driver's semantics, ported from the original `RebalancerLoop` tests:
//! dispatch when imbalanced, skip during an election, no-op when balanced, skip under CPU
//! back-pressure, and a periodic loop that fires sweeps and shuts down; plus the kick on a
//! membership change and fire-and-forget dispatch errors.

use std::cell::{Cell, RefCell};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nodedb_cluster::balance::harness::{HarnessConfig, Scenario, SyntheticCluster};
use nodedb_cluster::balance::{
    ClusterLoad, DispatchError, ElectionGate, LoadMetricsProvider, MigrationDispatcher, MoveBudget,
    MoveKind, PlanStatus, PlannedMove, Planner, PlannerConfig, ProviderError, Rebalancer,
    RebalancerConfig, SweepOutcome,
};
use nodedb_cluster::ids::NodeId;
use nodedb_cluster::metrics::loops::MetricsRegistry;
use nodedb_cluster::runtime::executor::{CorePlacement, spawn_executor};
use nodedb_cluster::runtime::rebalancer::{rebalancer_control, run_rebalancer};
use nodedb_cluster::time::Time;

struct Gate(Cell<bool>);

impl ElectionGate for Gate {
    fn any_group_electing(&self) -> bool {
        self.0.get()
    }
}

struct Provider {
    load: ClusterLoad,
    calls: Arc<AtomicUsize>,
}

impl LoadMetricsProvider for Provider {
    fn cluster_load(&self) -> Result<ClusterLoad, ProviderError> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        Ok(self.load.clone())
    }
}

#[derive(Default)]
struct Recorder {
    moves: RefCell<Vec<PlannedMove>>,
    refuse_every_other: bool,
}

impl MigrationDispatcher for Recorder {
    fn dispatch(&self, planned: &PlannedMove) -> Result<(), DispatchError> {
        let mut moves = self.moves.borrow_mut();
        moves.push(planned.clone());
        if self.refuse_every_other && moves.len().is_multiple_of(2) {
            return Err(DispatchError("target is busy".into()));
        }
        Ok(())
    }
}

fn cluster_load(scenario: Scenario) -> ClusterLoad {
    let cluster = SyntheticCluster::build(&HarnessConfig::new(4, 2, 256, scenario)).unwrap();
    let node_metrics = cluster.node_metrics();
    ClusterLoad::new(
        cluster.topology,
        cluster.placement,
        node_metrics,
        cluster.loads,
    )
}

/// A cluster whose vShards all carry the same load: balanced by construction.
fn balanced_load() -> ClusterLoad {
    let mut load = cluster_load(Scenario::Zipf);
    for l in &mut load.vshard_loads {
        l.bytes = 1 << 20;
        l.reads_per_sec = 10.0;
        l.writes_per_sec = 10.0;
    }
    load
}

fn rebalancer() -> Rebalancer {
    Rebalancer::new(
        Planner::new(PlannerConfig::default()).unwrap(),
        RebalancerConfig::default(),
    )
}

fn provider(load: ClusterLoad) -> Provider {
    Provider {
        load,
        calls: Arc::new(AtomicUsize::new(0)),
    }
}

#[test]
fn dispatches_moves_when_imbalanced() {
    let mut r = rebalancer();
    let recorder = Recorder::default();
    let outcome = r.sweep(
        Time::ZERO,
        &Gate(Cell::new(false)),
        &provider(cluster_load(Scenario::HotNode)),
        &recorder,
    );
    let moves = recorder.moves.borrow().len();
    assert!(moves > 0);
    assert!(
        matches!(outcome, SweepOutcome::Planned { dispatched, failed: 0, .. } if dispatched == moves),
        "{outcome:?}"
    );
}

#[test]
fn skips_the_sweep_while_a_group_is_electing() {
    let mut r = rebalancer();
    let recorder = Recorder::default();
    let p = provider(cluster_load(Scenario::HotNode));
    let outcome = r.sweep(Time::ZERO, &Gate(Cell::new(true)), &p, &recorder);
    assert_eq!(outcome, SweepOutcome::SkippedElection);
    assert!(recorder.moves.borrow().is_empty());
    assert_eq!(
        p.calls.load(Ordering::SeqCst),
        0,
        "no metrics are gathered during an election"
    );
    assert_eq!(r.metrics().skips("election"), 1);
}

#[test]
fn does_nothing_when_balanced() {
    let mut r = rebalancer();
    let recorder = Recorder::default();
    let outcome = r.sweep(
        Time::ZERO,
        &Gate(Cell::new(false)),
        &provider(balanced_load()),
        &recorder,
    );
    assert_eq!(
        outcome,
        SweepOutcome::Planned {
            status: PlanStatus::WithinTrigger,
            dispatched: 0,
            failed: 0
        }
    );
    assert!(recorder.moves.borrow().is_empty());
}

#[test]
fn skips_the_sweep_under_cpu_backpressure() {
    let mut r = rebalancer();
    let recorder = Recorder::default();
    let mut load = cluster_load(Scenario::HotNode);
    load.coordinator_cpu = 0.81;
    let outcome = r.sweep(
        Time::ZERO,
        &Gate(Cell::new(false)),
        &provider(load),
        &recorder,
    );
    assert_eq!(
        outcome,
        SweepOutcome::SkippedBackpressure {
            cpu_utilization: 0.81
        }
    );
    assert!(recorder.moves.borrow().is_empty());
    assert_eq!(r.metrics().skips("cpu_backpressure"), 1);
}

#[test]
fn dispatch_errors_are_counted_and_do_not_stop_the_sweep() {
    let mut r = rebalancer();
    let recorder = Recorder {
        refuse_every_other: true,
        ..Recorder::default()
    };
    let outcome = r.sweep(
        Time::ZERO,
        &Gate(Cell::new(false)),
        &provider(cluster_load(Scenario::HotNode)),
        &recorder,
    );
    let SweepOutcome::Planned {
        dispatched, failed, ..
    } = outcome
    else {
        panic!("{outcome:?}");
    };
    assert!(failed > 0);
    assert_eq!(dispatched, (dispatched + failed).div_ceil(2));
    assert_eq!(r.metrics().errors("dispatch"), failed as u64);
}

#[test]
fn bad_metrics_are_counted_as_plan_errors() {
    let mut r = rebalancer();
    let mut load = cluster_load(Scenario::HotNode);
    load.vshard_loads[0].reads_per_sec = f64::NAN;
    let outcome = r.sweep(
        Time::ZERO,
        &Gate(Cell::new(false)),
        &provider(load),
        &Recorder::default(),
    );
    assert_eq!(outcome, SweepOutcome::Failed);
    assert_eq!(r.metrics().errors("plan"), 1);
}

/// The move limits are the planner's input: a sweep never starts more replica moves than
/// the budget's free slots, more leader transfers than its transfer budget, nor more
/// replica moves touching one node than its free share, and a sweep the budget cut short
/// keeps its balancing run going.
#[test]
fn a_sweep_stays_within_the_move_budget() {
    for (replica_moves, transfers, per_node, busy) in [
        (8, 8, 2, vec![]),
        (3, 2, 1, vec![(NodeId(0), 1)]),
        (1, 1, 2, vec![]),
        (2, 0, 2, vec![]),
    ] {
        let mut r = rebalancer();
        let recorder = Recorder::default();
        let mut load = cluster_load(Scenario::HotNode);
        load.budget = MoveBudget {
            replica_moves,
            leader_transfers: transfers,
            replica_moves_per_node: per_node,
            busy: busy.iter().copied().collect(),
        };
        let outcome = r.sweep(
            Time::ZERO,
            &Gate(Cell::new(false)),
            &provider(load),
            &recorder,
        );
        let planned = recorder.moves.borrow();
        // Leader transfers relieve this hot node; with no transfer budget the sweep waits
        // for the next rather than copy data in their place.
        assert_eq!(
            planned.is_empty(),
            transfers == 0,
            "a hot node and free slots: something moves"
        );
        let count = |kind| planned.iter().filter(|m| m.kind == kind).count();
        assert!(
            count(MoveKind::ReplicaMove) <= replica_moves,
            "{planned:?} for {replica_moves} free slots"
        );
        assert!(
            count(MoveKind::LeaderTransfer) <= transfers,
            "{planned:?} for a budget of {transfers} transfers"
        );
        let mut touching: std::collections::BTreeMap<NodeId, usize> = busy.into_iter().collect();
        for m in planned.iter().filter(|m| m.kind == MoveKind::ReplicaMove) {
            *touching.entry(m.source.node).or_default() += 1;
            if m.target.node != m.source.node {
                *touching.entry(m.target.node).or_default() += 1;
            }
        }
        for (node, n) in &touching {
            assert!(
                *n <= per_node,
                "node {node} in {n} replica moves, limit {per_node}"
            );
        }
        assert!(
            matches!(
                outcome,
                SweepOutcome::Planned {
                    status: PlanStatus::BudgetSpent,
                    ..
                }
            ),
            "a sweep cut short by the budget keeps its run going: {outcome:?}"
        );
    }
}

/// Waits (bounded) until `done()` holds.
fn wait_until(what: &str, done: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::yield_now();
    }
}

/// A dispatcher shared with the test thread.
#[derive(Clone, Default)]
struct SharedRecorder(Arc<Mutex<Vec<PlannedMove>>>);

impl MigrationDispatcher for SharedRecorder {
    fn dispatch(&self, planned: &PlannedMove) -> Result<(), DispatchError> {
        self.0.lock().unwrap().push(planned.clone());
        Ok(())
    }
}

#[test]
fn run_fires_sweeps_periodically_and_shuts_down() {
    let registry = Arc::new(MetricsRegistry::new());
    let rebalancer = rebalancer();
    let metrics = rebalancer.metrics().clone();
    registry.register(metrics.clone()).unwrap();
    let (handle, signals) = rebalancer_control();
    let calls = Arc::new(AtomicUsize::new(0));
    let provider = Provider {
        load: cluster_load(Scenario::HotNode),
        calls: calls.clone(),
    };
    let recorder = SharedRecorder::default();
    let dispatched = recorder.0.clone();
    let executor = spawn_executor(
        "coordinator-test",
        CorePlacement::Unbound,
        move || async move {
            let gate = Gate(Cell::new(false));
            run_rebalancer(
                rebalancer,
                Duration::from_millis(20),
                signals,
                &gate,
                &provider,
                &recorder,
            )
            .await
        },
    )
    .unwrap();
    wait_until("three sweeps", || metrics.iterations() >= 3);
    assert!(metrics.is_up());
    assert!(calls.load(Ordering::SeqCst) >= 3);
    assert!(
        dispatched.lock().unwrap().len() >= 20,
        "every sweep dispatched its plan"
    );
    handle.shutdown();
    let rebalancer = executor.join().unwrap();
    assert!(!metrics.is_up());
    assert!(rebalancer.last_plan().is_some());
    let text = registry.render_prometheus();
    assert!(text.contains("rebalancer_up 0"), "{text}");
    assert!(
        text.lines()
            .any(|l| l.starts_with("rebalancer_iterations_total ") && !l.ends_with(" 0")),
        "{text}"
    );
}

#[test]
fn first_sweep_waits_a_full_interval_and_a_kick_sweeps_at_once() {
    let rebalancer = rebalancer();
    let metrics = rebalancer.metrics().clone();
    let (handle, signals) = rebalancer_control();
    let provider = provider(cluster_load(Scenario::HotNode));
    let executor = spawn_executor(
        "coordinator-kick",
        CorePlacement::Unbound,
        move || async move {
            let gate = Gate(Cell::new(false));
            let recorder = Recorder::default();
            // An hour-long interval: any sweep seen by the test was caused by a kick.
            run_rebalancer(
                rebalancer,
                Duration::from_secs(3600),
                signals,
                &gate,
                &provider,
                &recorder,
            )
            .await
        },
    )
    .unwrap();
    // Wait until the loop is running, then check that it has not swept on its own.
    wait_until("the loop to start", || metrics.is_up());
    assert_eq!(metrics.iterations(), 0, "no sweep at start");
    handle.kick();
    wait_until("the kicked sweep", || metrics.iterations() == 1);
    handle.kick();
    wait_until("the second kicked sweep", || metrics.iterations() == 2);
    handle.shutdown();
    executor.join().unwrap();
    assert_eq!(metrics.iterations(), 2);
}
