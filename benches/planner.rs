//! One rebalancer sweep: model build plus every move the default budget allows with nothing
//! in flight (16 leader transfers per node, 8 replica moves, 2 per node).
//!
//! - `planner_sweep_16x8`: 16 nodes × 8 cores under the zipf load of the harness, at 1k, 10k
//!   and 100k vShards; compare the sizes with each other in the same run.
//! - `planner_sweep_32x16_65536`: 32 nodes × 16 cores × 65 536 vShards, the first sweep of
//!   each harness scenario (the one that plans the most). The target is ≤ 10 ms a sweep.
//!
//! Absolute times on a shared VM vary by ±20 % (and by 2× within minutes on a bad day):
//! `NODEDB_SWEEP_SPREAD=1 cargo bench --bench planner` prints the min, p25 and median of 40
//! interleaved first sweeps of each 32 × 16 scenario instead (`sweep_spread`);
//! `NODEDB_SWEEP_ONLY=new-node` keeps one scenario and `NODEDB_SWEEP_ROUNDS=N` sets the
//! rounds (for a profile: `valgrind --tool=callgrind` counts instructions repeatably).

use std::hint::black_box;
use std::time::Instant;

use criterion::{BatchSize, BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use nodedb_cluster::balance::harness::{HarnessConfig, Scenario, SyntheticCluster};
use nodedb_cluster::balance::model::LoadModel;
use nodedb_cluster::balance::{MoveKind, PlanInput, Planner, PlannerConfig};
use nodedb_cluster::time::Time;

fn bench_first_sweep(
    group: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>,
    label: &str,
    config: &HarnessConfig,
) {
    let cluster = SyntheticCluster::build(config).expect("valid harness config");
    let metrics = cluster.node_metrics();
    let planner = Planner::new(PlannerConfig::default()).expect("default config is valid");
    group.throughput(Throughput::Elements(u64::from(config.vshards)));
    group.bench_with_input(
        BenchmarkId::from_parameter(label),
        &cluster,
        |b, cluster| {
            let input = PlanInput {
                topology: &cluster.topology,
                placement: &cluster.placement,
                node_metrics: &metrics,
                vshard_loads: &cluster.loads,
            };
            b.iter_batched(
                || planner.clone(),
                |mut planner| {
                    let plan = planner
                        .plan(Time::ZERO, black_box(&input))
                        .expect("valid input");
                    assert!(!plan.moves.is_empty(), "the first sweep plans moves");
                    plan
                },
                BatchSize::SmallInput,
            );
        },
    );
}

fn sweep(c: &mut Criterion) {
    if std::env::var_os("NODEDB_SWEEP_SPREAD").is_some() {
        sweep_spread();
        return;
    }
    let mut group = c.benchmark_group("planner_sweep_16x8");
    for (label, vshards) in [("1k", 1_000u32), ("10k", 10_000), ("100k", 100_000)] {
        bench_first_sweep(
            &mut group,
            label,
            &HarnessConfig::new(16, 8, vshards, Scenario::Zipf),
        );
    }
    group.finish();

    let mut group = c.benchmark_group("planner_sweep_32x16_65536");
    for scenario in [
        Scenario::HotNode,
        Scenario::HotCore,
        Scenario::Zipf,
        Scenario::NewNode,
        Scenario::Drain,
    ] {
        bench_first_sweep(
            &mut group,
            scenario.name(),
            &HarnessConfig::new(32, 16, 65_536, scenario),
        );
    }
    group.finish();

    // The model build alone (the part of a sweep bound by memory traffic).
    let mut group = c.benchmark_group("model_build_32x16_65536");
    for scenario in [Scenario::Zipf, Scenario::NewNode] {
        let cluster = SyntheticCluster::build(&HarnessConfig::new(32, 16, 65_536, scenario))
            .expect("valid harness config");
        let weights = PlannerConfig::default().weights;
        group.bench_function(scenario.name(), |b| {
            b.iter(|| {
                LoadModel::build(
                    &cluster.topology,
                    &cluster.placement,
                    black_box(&cluster.loads),
                    &weights,
                    |_| true,
                )
            })
        });
    }
    group.finish();
}

/// `NODEDB_SWEEP_SPREAD=1 cargo bench --bench planner`: the first sweep of every 32 × 16 ×
/// 65 536 scenario and the model build, 40 rounds interleaved, as min / p25 / median. On a
/// shared VM whose speed drifts by 2× within minutes, the fastest of interleaved runs says
/// what the code costs better than a mean over one scenario's minutes.
fn sweep_spread() {
    let rounds: usize = std::env::var("NODEDB_SWEEP_ROUNDS")
        .ok()
        .and_then(|r| r.parse().ok())
        .filter(|&r| r > 0)
        .unwrap_or(40);
    let only = std::env::var("NODEDB_SWEEP_ONLY").ok();
    let scenarios: Vec<Scenario> = [
        Scenario::HotNode,
        Scenario::HotCore,
        Scenario::Zipf,
        Scenario::NewNode,
        Scenario::Drain,
    ]
    .into_iter()
    .filter(|s| only.as_deref().is_none_or(|o| o == s.name()))
    .collect();
    let clusters: Vec<(SyntheticCluster, _)> = scenarios
        .iter()
        .map(|&s| {
            let cluster = SyntheticCluster::build(&HarnessConfig::new(32, 16, 65_536, s))
                .expect("valid harness config");
            let metrics = cluster.node_metrics();
            (cluster, metrics)
        })
        .collect();
    let planner = Planner::new(PlannerConfig::default()).expect("default config is valid");
    let weights = PlannerConfig::default().weights;
    let mut times = vec![Vec::with_capacity(rounds); scenarios.len() + 1];
    // Moves and replica moves each sweep plans.
    let mut planned = vec![(0, 0); scenarios.len() + 1];
    for _ in 0..rounds {
        for (i, (cluster, metrics)) in clusters.iter().enumerate() {
            let input = PlanInput {
                topology: &cluster.topology,
                placement: &cluster.placement,
                node_metrics: metrics,
                vshard_loads: &cluster.loads,
            };
            let mut planner = planner.clone();
            let started = Instant::now();
            let plan = planner.plan(Time::ZERO, black_box(&input));
            times[i].push(started.elapsed());
            let plan = plan.expect("valid input");
            assert!(!plan.moves.is_empty());
            let copies = plan
                .moves
                .iter()
                .filter(|m| m.kind == MoveKind::ReplicaMove);
            planned[i] = (plan.moves.len(), copies.count());
        }
        let (zipf, _) = scenarios
            .iter()
            .position(|&s| s == Scenario::Zipf)
            .map_or(&clusters[0], |i| &clusters[i]);
        let started = Instant::now();
        black_box(LoadModel::build(
            &zipf.topology,
            &zipf.placement,
            &zipf.loads,
            &weights,
            |_| true,
        ));
        times[scenarios.len()].push(started.elapsed());
    }
    let names = scenarios.iter().map(|s| s.name()).chain(["model build"]);
    for ((name, mut t), (moves, copies)) in names.zip(times).zip(planned) {
        t.sort_unstable();
        let ms = |d: std::time::Duration| d.as_secs_f64() * 1e3;
        println!(
            "{name:12} min {:6.2} ms   p25 {:6.2} ms   median {:6.2} ms{}",
            ms(t[0]),
            ms(t[rounds / 4]),
            ms(t[rounds / 2]),
            if moves > 0 {
                format!("   ({moves} moves, {copies} of them replica moves)")
            } else {
                String::new()
            }
        );
    }
}

criterion_group!(benches, sweep);
criterion_main!(benches);
