//! The simulator's disk: one core's write-ahead log as bytes, in the real record format.
//!
//! Every batch a simulated core makes durable is encoded with [`wal::encode_record`] and
//! appended to an in-memory image; a restart replays the image with [`wal::scan`], exactly
//! as `runtime::wal` replays a file, so the simulator tests the recovery code and not a
//! model of it. Faults act on the bytes:
//!
//! - a crash **during** a write leaves the unsynced record lost, whole (it reached the disk
//!   though nobody was told), or torn (a prefix, sometimes followed by garbage);
//! - **corruption** flips a bit inside a synced record that has a synced record after it,
//!   or zeroes the record's first block (a write that never reached the disk, or a block
//!   read back as zeros); recovery must refuse either rather than apply or silently drop.
//!
//! Damage to the newest synced record cannot be told from a torn write by this format and
//! is not injected (see ARCHITECTURE.md, "What the simulator does not cover").
//!
//! Like the runtime, the image is rewritten as a checkpoint (one record per group) once it
//! holds many records, so a long run does not replay its whole history.

use std::collections::BTreeMap;

use crate::constants::WAL_BLOCK_BYTES;
use crate::ids::GroupId;
use crate::replication::raft_host::{GroupWrite, PersistedGroup};
use crate::replication::wal::{WalError, encode_record, record_data_len, scan};
use crate::rng::Rng;

/// Records after which the image is rewritten as a checkpoint.
const CHECKPOINT_RECORDS: usize = 64;

/// What a crash did to the record being written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Tear {
    /// Nothing of it reached the disk.
    Lost,
    /// All of it did (a restart finds more than was acknowledged, which Raft allows).
    Whole,
    /// Part of it did; recovery must cut it off and never apply it.
    Torn,
}

/// One core's log image.
#[derive(Debug, Default)]
pub struct SimDisk {
    image: Vec<u8>,
    /// Where each record of `image` starts.
    starts: Vec<usize>,
    next_sequence: u64,
    /// The image folded per group: what a checkpoint writes and what recovery must find.
    mirror: BTreeMap<GroupId, PersistedGroup>,
}

impl SimDisk {
    pub fn new() -> SimDisk {
        SimDisk {
            next_sequence: 1,
            ..SimDisk::default()
        }
    }

    /// Bytes the image holds.
    pub fn len(&self) -> usize {
        self.image.len()
    }

    pub fn is_empty(&self) -> bool {
        self.image.is_empty()
    }

    /// The durable term of each group (what a restart must not go below).
    pub fn terms(&self) -> impl Iterator<Item = (GroupId, u64)> + '_ {
        self.mirror.iter().map(|(g, p)| (*g, p.hard_state.term))
    }

    /// The commit index of `group` that a restart would find (its durable hard state).
    pub fn commit(&self, group: GroupId) -> u64 {
        self.mirror.get(&group).map_or(0, |p| p.hard_state.commit)
    }

    fn push_record(&mut self, writes: &[GroupWrite]) -> Vec<u8> {
        // Simulated batches are far below the record limit.
        let record = encode_record(self.next_sequence, writes).expect("a simulated batch fits");
        self.next_sequence += 1;
        record
    }

    /// The fsync of a record holding `writes` completed.
    pub fn append(&mut self, writes: &[GroupWrite]) {
        let record = self.push_record(writes);
        self.starts.push(self.image.len());
        self.image.extend_from_slice(&record);
        for w in writes {
            self.mirror.entry(w.group).or_default().apply(w);
        }
        if self.starts.len() > CHECKPOINT_RECORDS {
            self.checkpoint();
        }
    }

    /// Rewrites the image as one record per group (atomically, as the runtime's rename).
    fn checkpoint(&mut self) {
        self.image.clear();
        self.starts.clear();
        let groups: Vec<GroupWrite> = self.mirror.iter().map(|(g, p)| p.as_write(*g)).collect();
        for write in groups {
            let record = self.push_record(std::slice::from_ref(&write));
            self.starts.push(self.image.len());
            self.image.extend_from_slice(&record);
        }
    }

    /// The replica of `group` left this core: its state is dropped from the log, durably,
    /// so that a later replica of the same group here starts empty.
    pub fn drop_group(&mut self, group: GroupId) {
        if self.mirror.remove(&group).is_some() {
            self.checkpoint();
        }
    }

    /// The process died while the record for `writes` was being written. (A record that
    /// lands whole is not folded into [`SimDisk::terms`] and [`SimDisk::commit`] until
    /// the restart's `recover`: they report what was synced, a safe underestimate.)
    pub fn crash_during(&mut self, writes: &[GroupWrite], rng: &mut Rng) -> Tear {
        let tear = match rng.below(3) {
            0 => Tear::Lost,
            1 => Tear::Whole,
            _ => Tear::Torn,
        };
        let record = self.push_record(writes);
        match tear {
            Tear::Lost => {}
            Tear::Whole => {
                self.starts.push(self.image.len());
                self.image.extend_from_slice(&record);
            }
            Tear::Torn => {
                // Some sectors landed, the rest still hold zeros, or garbage from a write
                // that went astray.
                // Cut inside the header or payload (a cut in the padding is a whole record).
                let meaningful = record_data_len(&record).expect("a whole record");
                let keep = 1 + rng.below(meaningful as u64 - 1) as usize;
                let start = self.image.len();
                self.image.extend_from_slice(&record[..keep]);
                if rng.below(2) == 0 {
                    let garbage = rng.below(WAL_BLOCK_BYTES as u64) as usize;
                    self.image
                        .extend((0..garbage).map(|_| rng.next_u64() as u8));
                }
                self.starts.push(start);
            }
        }
        tear
    }

    /// Damages a synced record that has a synced record after it: flips one bit in its
    /// header or payload, or zeroes its first block. Returns false when the image has no
    /// such record.
    pub fn corrupt(&mut self, rng: &mut Rng) -> bool {
        if self.starts.len() < 2 {
            return false;
        }
        let victim = rng.below(self.starts.len() as u64 - 1) as usize;
        let start = self.starts[victim];
        if rng.below(4) == 0 {
            self.image[start..start + WAL_BLOCK_BYTES].fill(0);
            return true;
        }
        let len = record_data_len(&self.image[start..]).expect("a synced record");
        let at = start + rng.below(len as u64) as usize;
        self.image[at] ^= 1 << rng.below(8);
        true
    }

    /// Replays the image as a restart does: a torn tail is cut off, damage before valid
    /// records is refused. Returns every group's recovered state.
    pub fn recover(&mut self) -> Result<BTreeMap<GroupId, PersistedGroup>, WalError> {
        let replay = scan(&self.image)?;
        // Appends continue at the end of the valid records, as the runtime's do: a torn
        // tail is cut off, and a record whose data landed whole while its padding did not
        // (the bytes a torn write left happen to complete it) ends where its padding
        // would, so the image is zero-filled up to there. (Before, the next record went
        // right after the short image, off the block boundary, and the next restart cut it
        // and every later synced record off as a torn tail: seen in the simulator.)
        let valid = replay.valid_bytes as usize;
        self.image.resize(valid, 0);
        self.starts.retain(|s| *s < valid);
        let mut groups: BTreeMap<GroupId, PersistedGroup> = BTreeMap::new();
        for (_, writes) in &replay.records {
            for w in writes {
                groups.entry(w.group).or_default().apply(w);
            }
        }
        if let Some((last, _)) = replay.records.last() {
            self.next_sequence = last + 1;
        }
        self.mirror = groups.clone();
        Ok(groups)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use raft::eraftpb::{Entry, HardState};

    fn write(group: u64, index: u64) -> GroupWrite {
        let entry = Entry {
            index,
            term: 1,
            data: vec![index as u8; 10].into(),
            ..Entry::default()
        };
        let hard_state = HardState {
            term: 1,
            commit: index,
            ..HardState::default()
        };
        GroupWrite {
            group: GroupId(group),
            hard_state: Some(hard_state),
            entries: vec![entry],
            snapshot: None,
        }
    }

    fn last_index(groups: &BTreeMap<GroupId, PersistedGroup>, g: u64) -> u64 {
        groups[&GroupId(g)].entries.last().map_or(0, |e| e.index)
    }

    #[test]
    fn a_record_whose_padding_did_not_land_keeps_the_next_records_on_the_block_boundary() {
        // The record's data landed whole, its padding did not (a torn write's leftovers
        // completed it): it is valid, and what is synced after it must survive restarts.
        let mut disk = SimDisk::new();
        let record = disk.push_record(&[write(1, 1)]);
        let data = record_data_len(&record).expect("a whole record");
        assert!(data < record.len(), "the record is padded");
        disk.starts.push(0);
        disk.image.extend_from_slice(&record[..data]);
        assert_eq!(last_index(&disk.recover().unwrap(), 1), 1);
        disk.append(&[write(1, 2)]);
        disk.append(&[write(1, 3)]);
        assert_eq!(last_index(&disk.recover().unwrap(), 1), 3);
    }

    #[test]
    fn a_crash_mid_write_never_costs_a_synced_record() {
        for seed in 0..200 {
            let mut rng = Rng::new(seed);
            let mut disk = SimDisk::new();
            for i in 1..=5 {
                disk.append(&[write(1, i)]);
            }
            let tear = disk.crash_during(&[write(1, 6)], &mut rng);
            let groups = disk.recover().expect("a torn tail is not corruption");
            let expected = if tear == Tear::Whole { 6 } else { 5 };
            assert_eq!(last_index(&groups, 1), expected, "seed {seed}: {tear:?}");
            // Appends continue after the cut.
            disk.append(&[write(1, 7)]);
            assert_eq!(last_index(&disk.recover().unwrap(), 1), 7);
        }
    }

    #[test]
    fn corruption_before_the_last_record_is_refused() {
        for seed in 0..200 {
            let mut rng = Rng::new(seed);
            let mut disk = SimDisk::new();
            for i in 1..=5 {
                disk.append(&[write(1, i), write(2, i)]);
            }
            assert!(disk.corrupt(&mut rng));
            assert!(
                matches!(disk.recover(), Err(WalError::Corrupt { .. })),
                "seed {seed}"
            );
        }
    }

    #[test]
    fn checkpoints_keep_the_image_bounded_and_dropped_groups_stay_gone() {
        let mut disk = SimDisk::new();
        for i in 1..=1000 {
            disk.append(&[write(1, i), write(2, i)]);
        }
        assert!(disk.len() <= (CHECKPOINT_RECORDS + 2) * 2 * WAL_BLOCK_BYTES * 2);
        disk.drop_group(GroupId(2));
        let groups = disk.recover().unwrap();
        assert_eq!(last_index(&groups, 1), 1000);
        assert!(!groups.contains_key(&GroupId(2)));
    }
}
