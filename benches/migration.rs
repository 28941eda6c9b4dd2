//! Criterion: a vShard of 16 MiB and one of 64 MiB moved between in-process nodes over QUIC
//! with mTLS and write-ahead logs (three nodes of one core, one group of two replicas; each
//! iteration moves one replica to the node without one, and the next moves it back), and,
//! as the baseline, the same bytes over one raw QUIC stream between two executors of this
//! process. Compare `migration/move` with `migration/raw_quic` of the same run.

use std::time::Duration;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use nodedb_cluster::ids::NodeId;
use nodedb_cluster::runtime::bench::{self, Cluster, MTU, QuicPair};
use nodedb_cluster::runtime::executor::CorePlacement;

/// The nodes' allocator (the `nodedb-cluster` binary's), so the moves here allocate as a
/// node does.
#[cfg(feature = "jemalloc")]
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn migration(c: &mut Criterion) {
    let mut group = c.benchmark_group("migration");
    group
        .sample_size(10)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(20));
    let certs = QuicPair::new().expect("certificates");
    for mib in [16u64, 64] {
        // Logs need O_DIRECT: under the target directory, not a tmpfs.
        let dir =
            std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("bench-move-{mib}"));
        let cluster = Cluster::start(&dir, 3, 2, None).expect("nodes start");
        let bytes = cluster
            .with_client(move |client| async move { bench::load(&client, mib << 20).await })
            .expect("the vShard loads");
        let holders = cluster
            .with_client(|client| async move { bench::replicas(&client).await })
            .expect("the placement table");
        let mut from = holders.first().expect("a replica").1.node;
        let mut to = (1..=3)
            .map(NodeId)
            .find(|n| !holders.iter().any(|(_, a)| a.node == *n))
            .expect("a node without a replica");
        group.throughput(Throughput::Bytes(bytes));
        group.bench_function(BenchmarkId::new("move", format!("{mib}MiB")), |b| {
            b.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    let (f, t) = (from, to);
                    total += cluster
                        .with_client(move |client| async move {
                            bench::move_replica(&client, f, t).await
                        })
                        .expect("the move finishes");
                    (from, to) = (to, from);
                }
                total
            })
        });
        cluster.shutdown().expect("no node failed");
        group.bench_function(BenchmarkId::new("raw_quic", format!("{mib}MiB")), |b| {
            b.iter_custom(|iters| {
                (0..iters)
                    .map(|_| {
                        let cpus = (CorePlacement::Unbound, CorePlacement::Unbound);
                        bench::quic_bulk(&certs, bytes, MTU, true, cpus).expect("transfer")
                    })
                    .sum()
            })
        });
    }
    group.finish();
}

criterion_group!(benches, migration);
criterion_main!(benches);
