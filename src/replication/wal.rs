//! The per-core write-ahead log format: one record per persist batch, block aligned.
//!
//! Every record starts on a `WAL_BLOCK_BYTES` boundary and is padded with zeros to the next
//! one, so writing a record never rewrites a block that holds an earlier (acknowledged)
//! record: a torn write can only damage the record being written, which nobody was told
//! about yet. A record is a 32-byte header and a payload:
//!
//! ```text
//! header  = magic:u64 ("NDBWAL01") sequence:u64 payload_len:u32 payload_crc32c:u32
//!           header_crc32c:u32 (over the preceding 24 bytes) reserved:u32 (0)
//! payload = count:varint (group:varint flags:u8 [hard_state] entry_count:varint entry*
//!           [snapshot])*          flags: bit 0 hard state, bit 1 snapshot
//! hard_state = term commit vote:varint
//! ```
//!
//! Entries and snapshots use the Raft codec's formats. [`scan`] replays a log image: it
//! stops at the first zero block (the end) or at an invalid record; an invalid record with
//! nothing valid after it is a torn tail (truncated, never applied); an invalid record or a
//! zero block followed by a valid later record is damage to acknowledged data (a flipped
//! bit, a lost write) and a hard error.

// raft-rs' protobuf types are built field by field here: a struct literal would have to name
// their bookkeeping fields too.
#![allow(clippy::field_reassign_with_default)]

use bytemuck::{Pod, Zeroable};
use raft::eraftpb::{Entry, HardState, Snapshot};
use thiserror::Error;

use crate::constants::{WAL_BLOCK_BYTES, WAL_RECORD_MAX_BYTES};
use crate::ids::GroupId;
use crate::replication::raft_host::GroupWrite;
use crate::wire::codec::{DecodeError, Reader, put_varint};
use crate::wire::raft::{encode_entry, encode_snapshot, read_entry, read_snapshot};

const WAL_MAGIC: u64 = u64::from_le_bytes(*b"NDBWAL01");
/// Size of [`RecordHeader`].
pub const WAL_HEADER_BYTES: usize = std::mem::size_of::<RecordHeader>();
const FLAG_HARD_STATE: u8 = 1;
const FLAG_SNAPSHOT: u8 = 2;
/// With `FLAG_SNAPSHOT`: the snapshot's data is in a file of its own; the record holds its
/// metadata, the data's length and its CRC-32C.
const FLAG_SNAPSHOT_FILE: u8 = 4;

/// Where a snapshot's data lives when it is not in the record: its length and checksum
/// (the runtime names the file after the group, index and term).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SnapshotFile {
    pub len: u64,
    pub crc: u32,
}

/// For a write's snapshot, the file holding its data, if it is not to be inlined.
pub type SnapshotFiles<'a> = &'a dyn Fn(GroupId, &Snapshot) -> Option<SnapshotFile>;

/// Every snapshot inlined.
pub fn inline(_: GroupId, _: &Snapshot) -> Option<SnapshotFile> {
    None
}

const _: () = assert!(WAL_HEADER_BYTES == 32);
const _: () = assert!(WAL_BLOCK_BYTES.is_power_of_two() && WAL_BLOCK_BYTES >= WAL_HEADER_BYTES);

/// The fixed record header (little-endian fields).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Pod, Zeroable)]
#[repr(C)]
pub struct RecordHeader {
    magic: u64,
    sequence: u64,
    payload_len: u32,
    payload_crc: u32,
    header_crc: u32,
    reserved: u32,
}

/// The log cannot be trusted.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum WalError {
    /// A record in the middle of the log is damaged while later records are intact: data
    /// that was acknowledged is corrupt. Recovery refuses to guess.
    #[error("write-ahead log corrupt at byte {offset} (valid records follow it): {reason}")]
    Corrupt { offset: u64, reason: String },
    /// A record's payload does not decode although its checksum matched (a bug).
    #[error("record {sequence} does not decode: {source}")]
    BadPayload { sequence: u64, source: DecodeError },
    /// A batch is larger than one record may be.
    #[error("a persist batch of {0} bytes exceeds the {WAL_RECORD_MAX_BYTES}-byte record limit")]
    RecordTooLarge(usize),
}

fn align_up(n: usize) -> usize {
    n.div_ceil(WAL_BLOCK_BYTES) * WAL_BLOCK_BYTES
}

/// Payload bytes [`split_for_records`] gives one record: half the hard limit, so that its
/// size estimates never need to be exact.
pub const WAL_SPLIT_BYTES: usize = WAL_RECORD_MAX_BYTES / 2;

/// An upper bound of an entry's encoded size.
fn entry_estimate(e: &Entry) -> usize {
    e.data.len() + e.context.len() + 32
}

/// An upper bound of a snapshot's encoded size.
fn snapshot_estimate(s: &Snapshot) -> usize {
    s.data.len() + 64 + 11 * snapshot_ids(s)
}

/// Replica ids in a snapshot's configuration.
fn snapshot_ids(s: &Snapshot) -> usize {
    let cs = s.get_metadata().get_conf_state();
    cs.voters.len() + cs.learners.len() + cs.voters_outgoing.len() + cs.learners_next.len()
}

/// Cuts a persist batch that would not fit one record into several, in order, each under
/// `limit` payload bytes; `None` when it fits (the common case, nothing is copied). A
/// group's entries may be spread over consecutive records — its snapshot goes with the
/// first part, its hard state with the last — and replay exactly as the one write would:
/// each part's entries extend the previous part's. Written one after the other and made
/// durable by one fsync, a crash midway leaves a prefix, which Raft tolerates as it would
/// an unsynced batch. A single entry or snapshot over the limit is refused.
pub fn split_for_records(
    writes: &[GroupWrite],
    limit: usize,
    files: SnapshotFiles<'_>,
) -> Result<Option<Vec<Vec<GroupWrite>>>, WalError> {
    // A snapshot kept in its own file takes only its metadata in the record.
    let snapshot_size = |w: &GroupWrite| {
        w.snapshot.as_ref().map_or(0, |s| match files(w.group, s) {
            Some(_) => 96 + 11 * snapshot_ids(s),
            None => snapshot_estimate(s),
        })
    };
    let write_estimate = |w: &GroupWrite| {
        48 + snapshot_size(w) + w.entries.iter().map(entry_estimate).sum::<usize>()
    };
    if 16 + writes.iter().map(write_estimate).sum::<usize>() <= limit {
        return Ok(None);
    }
    let mut records: Vec<Vec<GroupWrite>> = Vec::new();
    let mut record: Vec<GroupWrite> = Vec::new();
    let mut size = 16;
    for w in writes {
        let snapshot = snapshot_size(w);
        if 16 + 48 + snapshot > limit {
            return Err(WalError::RecordTooLarge(snapshot));
        }
        let mut part = GroupWrite {
            group: w.group,
            hard_state: None,
            entries: Vec::new(),
            snapshot: w.snapshot.clone(),
        };
        let mut part_size = 48 + snapshot;
        if size + part_size > limit && !record.is_empty() {
            records.push(std::mem::take(&mut record));
            size = 16;
        }
        for e in &w.entries {
            let entry = entry_estimate(e);
            if 16 + 48 + entry > limit {
                return Err(WalError::RecordTooLarge(entry));
            }
            if size + part_size + entry > limit {
                if part.snapshot.is_some() || !part.entries.is_empty() {
                    record.push(std::mem::replace(
                        &mut part,
                        GroupWrite {
                            group: w.group,
                            hard_state: None,
                            entries: Vec::new(),
                            snapshot: None,
                        },
                    ));
                }
                if !record.is_empty() {
                    records.push(std::mem::take(&mut record));
                }
                size = 16;
                part_size = 48;
            }
            part.entries.push(e.clone());
            part_size += entry;
        }
        part.hard_state = w.hard_state.clone();
        record.push(part);
        size += part_size;
    }
    if !record.is_empty() {
        records.push(record);
    }
    Ok(Some(records))
}

/// Encodes a persist batch as one record, or as several consecutive ones when it does not
/// fit one ([`split_for_records`]), numbered from `first_sequence`.
pub fn encode_records(
    first_sequence: u64,
    writes: &[GroupWrite],
    files: SnapshotFiles<'_>,
) -> Result<Vec<Vec<u8>>, WalError> {
    match split_for_records(writes, WAL_SPLIT_BYTES, files)? {
        None => Ok(vec![encode_record_with(first_sequence, writes, files)?]),
        Some(parts) => parts
            .iter()
            .enumerate()
            .map(|(i, part)| encode_record_with(first_sequence + i as u64, part, files))
            .collect(),
    }
}

/// Encodes `writes` as record `sequence`, padded to whole blocks, snapshots inlined.
pub fn encode_record(sequence: u64, writes: &[GroupWrite]) -> Result<Vec<u8>, WalError> {
    encode_record_with(sequence, writes, &inline)
}

/// Encodes `writes` as record `sequence`; a snapshot for which `files` names a file is
/// recorded as a reference to it (metadata, length, checksum) instead of its data.
pub fn encode_record_with(
    sequence: u64,
    writes: &[GroupWrite],
    files: SnapshotFiles<'_>,
) -> Result<Vec<u8>, WalError> {
    let mut payload = Vec::new();
    put_varint(&mut payload, writes.len() as u64);
    for w in writes {
        put_varint(&mut payload, w.group.0);
        let file = w.snapshot.as_ref().and_then(|s| files(w.group, s));
        let mut flags = 0;
        if w.hard_state.is_some() {
            flags |= FLAG_HARD_STATE;
        }
        if w.snapshot.is_some() {
            flags |= FLAG_SNAPSHOT;
        }
        if file.is_some() {
            flags |= FLAG_SNAPSHOT_FILE;
        }
        payload.push(flags);
        if let Some(hs) = &w.hard_state {
            put_varint(&mut payload, hs.term);
            put_varint(&mut payload, hs.commit);
            put_varint(&mut payload, hs.vote);
        }
        put_varint(&mut payload, w.entries.len() as u64);
        for e in &w.entries {
            encode_entry(e, &mut payload);
        }
        match (&w.snapshot, file) {
            (Some(s), Some(file)) => {
                let mut metadata_only = Snapshot::default();
                metadata_only.set_metadata(s.get_metadata().clone());
                encode_snapshot(&metadata_only, &mut payload);
                put_varint(&mut payload, file.len);
                put_varint(&mut payload, u64::from(file.crc));
            }
            (Some(s), None) => encode_snapshot(s, &mut payload),
            (None, _) => {}
        }
    }
    if payload.len() > WAL_RECORD_MAX_BYTES {
        return Err(WalError::RecordTooLarge(payload.len()));
    }
    let mut header = RecordHeader {
        magic: WAL_MAGIC.to_le(),
        sequence: sequence.to_le(),
        payload_len: (payload.len() as u32).to_le(),
        payload_crc: crc32c::crc32c(&payload).to_le(),
        header_crc: 0,
        reserved: 0,
    };
    header.header_crc = crc32c::crc32c(&bytemuck::bytes_of(&header)[..24]).to_le();
    let mut out = Vec::with_capacity(align_up(WAL_HEADER_BYTES + payload.len()));
    out.extend_from_slice(bytemuck::bytes_of(&header));
    out.extend_from_slice(&payload);
    out.resize(align_up(out.len()), 0);
    Ok(out)
}

/// The writes of a record, and the snapshots whose data is in files: by (group, index,
/// term).
type Decoded = (Vec<GroupWrite>, Vec<((GroupId, u64, u64), SnapshotFile)>);

fn decode_payload(payload: &[u8]) -> Result<Decoded, DecodeError> {
    let mut r = Reader::new(payload);
    let n = r.count("group writes", usize::MAX)?;
    let mut writes = Vec::with_capacity(n.min(4096));
    let mut files = Vec::new();
    for _ in 0..n {
        let group = GroupId(r.varint("group")?);
        let flags = r.u8("flags")?;
        if flags & !(FLAG_HARD_STATE | FLAG_SNAPSHOT | FLAG_SNAPSHOT_FILE) != 0
            || (flags & FLAG_SNAPSHOT_FILE != 0 && flags & FLAG_SNAPSHOT == 0)
        {
            return Err(DecodeError::BadEnum {
                what: "write flags",
                value: flags.into(),
            });
        }
        let hard_state = if flags & FLAG_HARD_STATE != 0 {
            let mut hs = HardState::default();
            hs.term = r.varint("term")?;
            hs.commit = r.varint("commit")?;
            hs.vote = r.varint("vote")?;
            Some(hs)
        } else {
            None
        };
        let count = r.count("entries", usize::MAX)?;
        let mut entries = Vec::with_capacity(count.min(4096));
        for _ in 0..count {
            entries.push(read_entry(&mut r)?);
        }
        let snapshot = if flags & FLAG_SNAPSHOT_FILE != 0 {
            // Metadata only; the data is in the snapshot's file.
            let s = read_snapshot(&mut r, 0)?;
            let len = r.varint("snapshot file length")?;
            let crc = u32::try_from(r.varint("snapshot file checksum")?).map_err(|_| {
                DecodeError::BadEnum {
                    what: "snapshot file checksum",
                    value: u64::MAX,
                }
            })?;
            let meta = s.get_metadata();
            files.push(((group, meta.index, meta.term), SnapshotFile { len, crc }));
            Some(s)
        } else if flags & FLAG_SNAPSHOT != 0 {
            Some(read_snapshot(&mut r, WAL_RECORD_MAX_BYTES)?)
        } else {
            None
        };
        writes.push(GroupWrite {
            group,
            hard_state,
            entries,
            snapshot,
        });
    }
    r.finish()?;
    Ok((writes, files))
}

/// Bytes of the record at the start of `bytes` that carry data (header and payload, not
/// the padding), as its header states them; `None` if the header is cut short.
pub fn record_data_len(bytes: &[u8]) -> Option<usize> {
    let header: RecordHeader = bytemuck::pod_read_unaligned(bytes.get(..WAL_HEADER_BYTES)?);
    Some(WAL_HEADER_BYTES + u32::from_le(header.payload_len) as usize)
}

/// Checks the record at the start of `bytes`; returns its sequence, payload and total
/// (block-aligned) size, or why it is not a valid record.
fn check_record(bytes: &[u8]) -> Result<(u64, &[u8], usize), String> {
    let raw = bytes.get(..WAL_HEADER_BYTES).ok_or("header cut short")?;
    let header: RecordHeader = bytemuck::pod_read_unaligned(raw);
    if u64::from_le(header.magic) != WAL_MAGIC {
        return Err("bad magic".into());
    }
    if crc32c::crc32c(&raw[..24]) != u32::from_le(header.header_crc) {
        return Err("header checksum mismatch".into());
    }
    if header.reserved != 0 {
        // Written as zero and outside the header checksum: anything else is damage.
        return Err("reserved header field is not zero".into());
    }
    let len = u32::from_le(header.payload_len) as usize;
    if len > WAL_RECORD_MAX_BYTES {
        return Err(format!("payload length {len} over the limit"));
    }
    let payload = bytes
        .get(WAL_HEADER_BYTES..WAL_HEADER_BYTES + len)
        .ok_or("payload cut short")?;
    if crc32c::crc32c(payload) != u32::from_le(header.payload_crc) {
        return Err("payload checksum mismatch".into());
    }
    Ok((
        u64::from_le(header.sequence),
        payload,
        align_up(WAL_HEADER_BYTES + len),
    ))
}

/// Renumbers the whole records at the start of `bytes` from `first` on: each header's
/// sequence and its checksum (payloads are untouched). Returns the bytes those records take
/// and how many there are; a record cut short at the end is left alone, for the caller to
/// read whole. A background checkpoint moves the records appended meanwhile after its own
/// this way.
pub fn renumber_records(bytes: &mut [u8], first: u64) -> Result<(usize, u64), WalError> {
    let (mut offset, mut count, total) = (0usize, 0u64, bytes.len());
    while offset + WAL_HEADER_BYTES <= total {
        let raw = &mut bytes[offset..offset + WAL_HEADER_BYTES];
        let mut header: RecordHeader = bytemuck::pod_read_unaligned(raw);
        let corrupt = |reason: &str| WalError::Corrupt {
            offset: offset as u64,
            reason: reason.into(),
        };
        if u64::from_le(header.magic) != WAL_MAGIC {
            return Err(corrupt("bad magic"));
        }
        if crc32c::crc32c(&raw[..24]) != u32::from_le(header.header_crc) {
            return Err(corrupt("header checksum mismatch"));
        }
        let size = align_up(WAL_HEADER_BYTES + u32::from_le(header.payload_len) as usize);
        if offset + size > total {
            break;
        }
        header.sequence = (first + count).to_le();
        header.header_crc = 0;
        header.header_crc = crc32c::crc32c(&bytemuck::bytes_of(&header)[..24]).to_le();
        raw.copy_from_slice(bytemuck::bytes_of(&header));
        offset += size;
        count += 1;
    }
    Ok((offset, count))
}

/// What a log image holds.
#[derive(Debug, Default, PartialEq)]
pub struct Scan {
    /// Valid records in order: sequence and writes.
    pub records: Vec<(u64, Vec<GroupWrite>)>,
    /// Bytes of valid records; appends continue here.
    pub valid_bytes: u64,
    /// Bytes after the valid records that were not zero (a torn or corrupt tail).
    pub torn_bytes: u64,
    /// Snapshots whose data is in files, by (group, index, term).
    pub snapshot_files: std::collections::BTreeMap<(GroupId, u64, u64), SnapshotFile>,
}

/// Whether a valid record later than `expected` starts on a block after `offset`.
fn valid_record_after(image: &[u8], offset: usize, expected: Option<u64>) -> bool {
    let mut probe = offset + WAL_BLOCK_BYTES;
    while probe + WAL_HEADER_BYTES <= image.len() {
        if let Ok((sequence, ..)) = check_record(&image[probe..])
            && expected.is_none_or(|e| sequence > e)
        {
            return true;
        }
        probe += WAL_BLOCK_BYTES;
    }
    false
}

/// Replays a log image (see the module documentation for the rules).
pub fn scan(image: &[u8]) -> Result<Scan, WalError> {
    let mut out = Scan::default();
    let mut offset = 0usize;
    let mut expected: Option<u64> = None;
    while offset + WAL_HEADER_BYTES <= image.len() {
        let rest = &image[offset..];
        if rest[..WAL_HEADER_BYTES].iter().all(|b| *b == 0) {
            // The end of the log, unless records follow: then an acknowledged record was
            // lost (a write that never reached its block, a block read back as zeros).
            if valid_record_after(image, offset, expected) {
                return Err(WalError::Corrupt {
                    offset: offset as u64,
                    reason: "a zeroed block where a record should be".into(),
                });
            }
            break;
        }
        match check_record(rest) {
            Ok((sequence, payload, size)) if expected.is_none_or(|e| e == sequence) => {
                let (writes, files) = decode_payload(payload)
                    .map_err(|source| WalError::BadPayload { sequence, source })?;
                out.snapshot_files.extend(files);
                out.records.push((sequence, writes));
                expected = Some(sequence + 1);
                offset += size;
            }
            Ok((sequence, ..)) => {
                // A stale record from before an earlier truncation: the end of the log.
                tracing::debug!(sequence, "stale record after the log end");
                break;
            }
            Err(reason) => {
                // Anything valid later means acknowledged data was damaged.
                if valid_record_after(image, offset, expected) {
                    return Err(WalError::Corrupt {
                        offset: offset as u64,
                        reason,
                    });
                }
                out.torn_bytes = image[offset..]
                    .iter()
                    .rposition(|b| *b != 0)
                    .map_or(0, |p| p as u64 + 1);
                break;
            }
        }
    }
    out.valid_bytes = offset as u64;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(group: u64, index: u64) -> GroupWrite {
        let mut e = Entry::default();
        e.index = index;
        e.term = 2;
        e.data = vec![index as u8; 100].into();
        let mut hs = HardState::default();
        hs.term = 2;
        hs.vote = 1;
        hs.commit = index - 1;
        GroupWrite {
            group: GroupId(group),
            hard_state: Some(hs),
            entries: vec![e],
            snapshot: None,
        }
    }

    fn image(records: u64) -> Vec<u8> {
        let mut out = Vec::new();
        for s in 1..=records {
            out.extend(encode_record(s, &[write(1, s), write(2, s)]).unwrap());
        }
        out.resize(out.len() + 3 * WAL_BLOCK_BYTES, 0);
        out
    }

    #[test]
    fn renumbered_records_replay_with_their_new_numbers_and_the_same_writes() {
        let mut img = image(3);
        img.truncate(img.len() - 3 * WAL_BLOCK_BYTES);
        let whole = img.len();
        // A fourth record cut short stays as it is.
        let fourth = encode_record(4, &[write(1, 4)]).unwrap();
        img.extend_from_slice(&fourth[..WAL_HEADER_BYTES + 8]);
        let (used, count) = renumber_records(&mut img, 40).unwrap();
        assert_eq!((used, count), (whole, 3));
        assert_eq!(&img[whole..], &fourth[..WAL_HEADER_BYTES + 8]);
        let replay = scan(&img[..whole]).unwrap();
        let numbers: Vec<u64> = replay.records.iter().map(|(s, _)| *s).collect();
        assert_eq!(numbers, vec![40, 41, 42]);
        assert_eq!(replay.records[2].1, vec![write(1, 3), write(2, 3)]);
        // Damage is refused, not renumbered.
        img[1] ^= 0xff;
        assert!(matches!(
            renumber_records(&mut img, 1),
            Err(WalError::Corrupt { offset: 0, .. })
        ));
    }

    #[test]
    fn records_replay_in_order_and_are_block_aligned() {
        let img = image(5);
        let scan = scan(&img).unwrap();
        assert_eq!(scan.records.len(), 5);
        assert_eq!(scan.records[4].1, vec![write(1, 5), write(2, 5)]);
        assert_eq!(scan.valid_bytes % WAL_BLOCK_BYTES as u64, 0);
        assert_eq!(scan.torn_bytes, 0);
    }

    #[test]
    fn a_torn_last_record_is_dropped_and_earlier_ones_kept() {
        let mut img = image(5);
        let last = scan(&img).unwrap().valid_bytes as usize - WAL_BLOCK_BYTES;
        img[last + 40] ^= 0xff;
        let scan = scan(&img).unwrap();
        assert_eq!(scan.records.len(), 4);
        assert_eq!(scan.valid_bytes as usize, last);
        assert!(scan.torn_bytes > 0);
    }

    fn replay(
        records: &[Vec<GroupWrite>],
    ) -> std::collections::BTreeMap<GroupId, crate::replication::raft_host::PersistedGroup> {
        let mut img = Vec::new();
        for (i, r) in records.iter().enumerate() {
            img.extend(encode_record(i as u64 + 1, r).unwrap());
        }
        let mut groups = std::collections::BTreeMap::new();
        for (_, writes) in scan(&img).unwrap().records {
            for w in writes {
                groups
                    .entry(w.group)
                    .or_insert_with(crate::replication::raft_host::PersistedGroup::default)
                    .apply(&w);
            }
        }
        groups
    }

    #[test]
    fn a_batch_too_large_for_one_record_is_split_and_replays_the_same() {
        // Three groups of 20 entries of 100 bytes, records of at most 1 000 bytes.
        let writes: Vec<GroupWrite> = (1..=3)
            .map(|g| {
                let mut w = write(g, 1);
                w.entries = (1..=20).map(|i| write(g, i).entries[0].clone()).collect();
                w
            })
            .collect();
        assert_eq!(
            split_for_records(&writes, 1 << 20, &inline).unwrap(),
            None,
            "fits"
        );
        let records = split_for_records(&writes, 1_000, &inline)
            .unwrap()
            .expect("split");
        assert!(records.len() > 3, "{} records", records.len());
        for r in &records {
            let payload = encode_record(1, r).unwrap().len();
            assert!(payload <= 1_000 + WAL_BLOCK_BYTES, "{payload}");
        }
        let whole = replay(std::slice::from_ref(&writes));
        assert_eq!(replay(&records), whole, "the parts replay as the batch");
        // The hard state comes with each group's last part only.
        for g in 1..=3 {
            let parts: Vec<&GroupWrite> = records
                .iter()
                .flatten()
                .filter(|w| w.group.0 == g)
                .collect();
            assert!(parts.len() > 1);
            assert!(
                parts[..parts.len() - 1]
                    .iter()
                    .all(|w| w.hard_state.is_none())
            );
            assert!(parts.last().unwrap().hard_state.is_some());
        }
    }

    #[test]
    fn a_single_entry_over_the_limit_is_refused() {
        let mut w = write(1, 1);
        w.entries[0].data = vec![0; 5_000].into();
        let mut small = write(2, 1);
        small.entries[0].data = vec![0; 10].into();
        assert!(matches!(
            split_for_records(&[small, w], 1_000, &inline),
            Err(WalError::RecordTooLarge(_))
        ));
    }

    #[test]
    fn a_zeroed_record_before_valid_ones_is_corruption_not_the_end() {
        let mut img = image(5);
        img[WAL_BLOCK_BYTES..2 * WAL_BLOCK_BYTES].fill(0);
        assert!(
            matches!(scan(&img), Err(WalError::Corrupt { offset, .. }) if offset == WAL_BLOCK_BYTES as u64)
        );
    }

    #[test]
    fn a_damaged_record_before_valid_ones_is_corruption() {
        let mut img = image(5);
        img[WAL_BLOCK_BYTES + 40] ^= 0xff;
        assert!(
            matches!(scan(&img), Err(WalError::Corrupt { offset, .. }) if offset == WAL_BLOCK_BYTES as u64)
        );
    }
}
