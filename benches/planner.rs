//! One rebalancer sweep (model build + up to ten planned moves) on 16 nodes × 8 cores.
//!
//! The cluster starts from the zipf scenario of the harness, so every measured sweep does
//! real work: it plans the full ten moves. Sizes: 1k, 10k and 100k vShards. Compare the
//! sizes with each other in the same run; absolute times on a shared VM are ±20 %.

use std::hint::black_box;

use criterion::{BatchSize, BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use nodedb_cluster::balance::harness::{HarnessConfig, Scenario, SyntheticCluster};
use nodedb_cluster::balance::{PlanInput, PlanStatus, Planner, PlannerConfig};
use nodedb_cluster::time::Time;

fn sweep(c: &mut Criterion) {
    let mut group = c.benchmark_group("planner_sweep_16x8");
    for (label, vshards) in [("1k", 1_000u32), ("10k", 10_000), ("100k", 100_000)] {
        let config = HarnessConfig::new(16, 8, vshards, Scenario::Zipf);
        let cluster = SyntheticCluster::build(&config).expect("valid harness config");
        let metrics = cluster.node_metrics();
        let planner = Planner::new(PlannerConfig::default()).expect("default config is valid");
        group.throughput(Throughput::Elements(u64::from(vshards)));
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
                        assert_eq!(plan.status, PlanStatus::BudgetSpent);
                        plan
                    },
                    BatchSize::SmallInput,
                );
            },
        );
    }
    group.finish();
}

criterion_group!(benches, sweep);
criterion_main!(benches);
