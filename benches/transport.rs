//! Micro-benchmarks of the per-message costs on the transport path: publishing and reading a
//! per-core load record, and encoding + decoding a frame. Compare within one run.

use std::hint::black_box;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use nodedb_cluster::metrics::load_slots::{CoreLoadRecord, LoadSlots};
use nodedb_cluster::wire::frame::{FrameDecoder, FrameKind, encode_frame};

fn load_slots(c: &mut Criterion) {
    let (slots, mut writers) = LoadSlots::new(8);
    let mut record = CoreLoadRecord {
        node_id: 1,
        core: 3,
        reads_per_sec: 1e5,
        ..Default::default()
    };
    let mut group = c.benchmark_group("load_slot");
    group.bench_function("publish", |b| {
        b.iter(|| {
            record.generation += 1;
            writers[3].publish(black_box(&record));
        })
    });
    group.bench_function("read_one", |b| {
        b.iter(|| slots.read(black_box(3)).expect("uncontended"))
    });
    group.bench_function("read_all_8", |b| {
        b.iter(|| {
            (0..slots.len())
                .map(|core| slots.read(core).expect("uncontended").generation)
                .sum::<u64>()
        })
    });
    group.finish();
}

fn frames(c: &mut Criterion) {
    let mut group = c.benchmark_group("frame_roundtrip");
    for size in [64usize, 1024, 64 * 1024] {
        let payload = vec![0xabu8; size];
        let mut wire = Vec::with_capacity(size + 16);
        group.throughput(Throughput::Bytes(size as u64));
        group.bench_with_input(BenchmarkId::from_parameter(size), &payload, |b, payload| {
            let mut decoder = FrameDecoder::new();
            b.iter(|| {
                wire.clear();
                encode_frame(FrameKind::Message, 0, black_box(payload), &mut wire)
                    .expect("within bound");
                let mut len = 0;
                decoder
                    .decode(&wire, |f| len = f.payload.len())
                    .expect("valid frame");
                len
            })
        });
    }
    group.finish();
}

criterion_group!(benches, load_slots, frames);
criterion_main!(benches);
