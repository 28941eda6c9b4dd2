//! One rebalancer sweep: model build plus every move the default budget allows with nothing
//! in flight (16 leader transfers per node, 8 replica moves, 2 per node).
//!
//! - `planner_sweep_16x8`: 16 nodes × 8 cores under the zipf load of the harness, at 1k, 10k
//!   and 100k vShards; compare the sizes with each other in the same run.
//! - `planner_sweep_32x16_65536`: 32 nodes × 16 cores × 65 536 vShards, the first sweep of
//!   each harness scenario (the one that plans the most). The target is ≤ 10 ms a sweep.
//!
//! Absolute times on a shared VM vary by ±20 %.

use std::hint::black_box;

use criterion::{BatchSize, BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use nodedb_cluster::balance::harness::{HarnessConfig, Scenario, SyntheticCluster};
use nodedb_cluster::balance::model::LoadModel;
use nodedb_cluster::balance::{PlanInput, Planner, PlannerConfig};
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

criterion_group!(benches, sweep);
criterion_main!(benches);
