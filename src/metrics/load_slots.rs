//! Lock-free per-core load records: each core publishes, the coordinator core reads.
//!
//! Every core owns one slot and is its only writer ([`SlotWriter`] is not `Clone`). The
//! coordinator reads every slot without locks and never sees a torn record: a sequence
//! lock — the writer makes the sequence odd, stores the record, makes it even again; a
//! reader retries when the sequence was odd or changed while it read. The record is stored
//! as atomic 64-bit words, so concurrent access is never a data race in Rust's model.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering, fence};

use bytemuck::{Pod, Zeroable};
use thiserror::Error;

use crate::constants::LOAD_SLOT_READ_RETRIES_MAX;

/// One core's load over its last tick, as published to the coordinator.
#[derive(Clone, Copy, Debug, Default, PartialEq, Pod, Zeroable)]
#[repr(C)]
pub struct CoreLoadRecord {
    pub node_id: u64,
    pub core: u32,
    /// Raft groups this core leads.
    pub groups_led: u32,
    pub replicas: u32,
    pub _reserved: u32,
    pub bytes_stored: u64,
    pub reads_per_sec: f64,
    pub writes_per_sec: f64,
    pub p95_latency_us: f64,
    pub p99_latency_us: f64,
    /// Fraction of the tick the executor was busy, `0.0..=1.0`.
    pub cpu_busy: f64,
    pub migration_bytes_per_sec: f64,
    /// When the record was published, in the publisher's `Time` nanoseconds.
    pub published_at_ns: u64,
    /// Incremented by the publisher on every publication.
    pub generation: u64,
}

const WORDS: usize = std::mem::size_of::<CoreLoadRecord>() / 8;
const _: () = assert!(std::mem::size_of::<CoreLoadRecord>().is_multiple_of(8));

/// A read that kept colliding with writes.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum SlotError {
    /// The core index is outside the slot table.
    #[error("no load slot for core {0}")]
    UnknownCore(usize),
    /// The writer published continuously during every retry; try again next tick.
    #[error("load slot {0} was being written during {LOAD_SLOT_READ_RETRIES_MAX} read attempts")]
    Contended(usize),
}

#[derive(Debug)]
struct Slot {
    sequence: AtomicU64,
    words: [AtomicU64; WORDS],
}

impl Slot {
    fn new() -> Slot {
        Slot {
            sequence: AtomicU64::new(0),
            words: std::array::from_fn(|_| AtomicU64::new(0)),
        }
    }
}

/// The slot table shared by the cores of one node.
#[derive(Debug)]
pub struct LoadSlots {
    slots: Box<[Slot]>,
}

/// The only writer of one slot; moved to the core that owns it.
pub struct SlotWriter {
    slots: Arc<LoadSlots>,
    core: usize,
}

impl LoadSlots {
    /// A table of `cores` empty slots and one writer per slot, in core order.
    pub fn new(cores: usize) -> (Arc<LoadSlots>, Vec<SlotWriter>) {
        let slots = Arc::new(LoadSlots {
            slots: (0..cores).map(|_| Slot::new()).collect(),
        });
        let writers = (0..cores)
            .map(|core| SlotWriter {
                slots: slots.clone(),
                core,
            })
            .collect();
        (slots, writers)
    }

    pub fn len(&self) -> usize {
        self.slots.len()
    }

    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }

    /// The last record `core` published (all zeros before its first publication).
    pub fn read(&self, core: usize) -> Result<CoreLoadRecord, SlotError> {
        let slot = self.slots.get(core).ok_or(SlotError::UnknownCore(core))?;
        let mut words = [0u64; WORDS];
        for _ in 0..LOAD_SLOT_READ_RETRIES_MAX {
            let before = slot.sequence.load(Ordering::Acquire);
            if before % 2 == 1 {
                std::hint::spin_loop();
                continue;
            }
            for (out, word) in words.iter_mut().zip(&slot.words) {
                *out = word.load(Ordering::Relaxed);
            }
            // Order the word loads before the second sequence load.
            fence(Ordering::Acquire);
            if slot.sequence.load(Ordering::Relaxed) == before {
                return Ok(bytemuck::cast(words));
            }
        }
        Err(SlotError::Contended(core))
    }
}

impl SlotWriter {
    pub fn core(&self) -> usize {
        self.core
    }

    /// The generation of the record last published to this slot (0 before any).
    pub fn generation(&self) -> u64 {
        self.slots.read(self.core).map_or(0, |r| r.generation)
    }

    /// Publishes `record`; wait-free for the writer.
    pub fn publish(&mut self, record: &CoreLoadRecord) {
        let slot = &self.slots.slots[self.core];
        let words: [u64; WORDS] = bytemuck::cast(*record);
        // Single writer: a plain load of our own sequence is exact.
        let sequence = slot.sequence.load(Ordering::Relaxed);
        slot.sequence
            .store(sequence.wrapping_add(1), Ordering::Relaxed);
        // Order the odd sequence before the word stores.
        fence(Ordering::Release);
        for (word, value) in slot.words.iter().zip(words) {
            word.store(value, Ordering::Relaxed);
        }
        slot.sequence
            .store(sequence.wrapping_add(2), Ordering::Release);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_published_record_reads_back_exactly() {
        let (slots, mut writers) = LoadSlots::new(2);
        assert_eq!(slots.read(1).unwrap(), CoreLoadRecord::default());
        let record = CoreLoadRecord {
            node_id: 7,
            core: 1,
            reads_per_sec: 12.5,
            generation: 3,
            ..Default::default()
        };
        writers[1].publish(&record);
        assert_eq!(slots.read(1).unwrap(), record);
        assert_eq!(slots.read(0).unwrap(), CoreLoadRecord::default());
        assert_eq!(slots.read(2), Err(SlotError::UnknownCore(2)));
    }
}
