//! The per-core load slots under contention: a writer thread publishes as fast as it can
//! while a reader checks that every record it reads is one the writer published whole.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use nodedb_cluster::metrics::load_slots::{CoreLoadRecord, LoadSlots, SlotError};

/// A record whose every field is derived from `i`, so a torn read is detectable.
fn record(i: u64) -> CoreLoadRecord {
    CoreLoadRecord {
        node_id: i,
        core: i as u32,
        groups_led: (i * 3) as u32,
        replicas: (i * 5) as u32,
        _reserved: 0,
        bytes_stored: i * 7,
        reads_per_sec: i as f64 * 0.5,
        writes_per_sec: i as f64 * 0.25,
        p95_latency_us: i as f64 + 1.0,
        p99_latency_us: i as f64 + 2.0,
        cpu_busy: (i % 100) as f64 / 100.0,
        migration_bytes_per_sec: i as f64 * 8.0,
        published_at_ns: i * 11,
        generation: i,
    }
}

#[test]
fn readers_never_see_a_torn_record_while_a_writer_hammers_the_slot() {
    let (slots, mut writers) = LoadSlots::new(4);
    let mut writer = writers.remove(2);
    let stop = Arc::new(AtomicBool::new(false));
    let writer_stop = stop.clone();
    let writer_thread = std::thread::spawn(move || {
        let mut i = 1u64;
        while !writer_stop.load(Ordering::Relaxed) {
            writer.publish(&record(i));
            i += 1;
        }
        i
    });
    let (mut reads, mut distinct, mut last, mut contended) = (0u64, 0u64, 0u64, 0u64);
    while distinct < 20_000 && reads < 50_000_000 {
        match slots.read(2) {
            Ok(r) => {
                reads += 1;
                if r.generation == 0 {
                    assert_eq!(r, CoreLoadRecord::default());
                    continue;
                }
                assert_eq!(r, record(r.generation), "torn record");
                assert!(r.generation >= last, "generations never go back");
                if r.generation != last {
                    distinct += 1;
                    last = r.generation;
                }
            }
            Err(SlotError::Contended(2)) => contended += 1,
            Err(e) => panic!("{e}"),
        }
    }
    stop.store(true, Ordering::Relaxed);
    let published = writer_thread.join().unwrap();
    assert!(
        distinct >= 1_000,
        "the reader saw {distinct} distinct records of {published} (contended {contended})"
    );
    assert_eq!(
        slots.read(0).unwrap(),
        CoreLoadRecord::default(),
        "other slots untouched"
    );
}
