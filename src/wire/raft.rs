//! Our compact codec for Raft messages: peers' bytes never reach a protobuf parser.
//!
//! A `RaftBatch` frame carries every message one core sends another core in one loop turn:
//!
//! ```text
//! batch   = count:varint (group:varint len:varint message)*
//! message = type:u8 flags:u8 to from term log_term index commit commit_term
//!           request_snapshot reject_hint:varint priority:zigzag context:bytes
//!           entry_count:varint entry* [snapshot]
//! entry   = type:u8 term:varint index:varint data:bytes context:bytes
//! snapshot= index term:varint conf_state data:bytes
//! conf    = voters learners voters_outgoing learners_next:(count varint*) auto_leave:u8
//! flags   = bit 0 reject, bit 1 snapshot present
//! ```
//!
//! Every count and length is bounded (`constants`) before allocation; an unknown enum value,
//! a truncated field or trailing bytes is a [`DecodeError`].

// raft-rs' protobuf types are built field by field here: a struct literal would have to name
// their bookkeeping fields too.
#![allow(clippy::field_reassign_with_default)]

use raft::eraftpb::{ConfState, Entry, EntryType, Message, MessageType, Snapshot};

use crate::constants::{
    FRAME_PAYLOAD_MAX_BYTES, RAFT_BATCH_MESSAGES_MAX, RAFT_CONF_IDS_MAX,
    RAFT_ENTRIES_PER_MESSAGE_MAX,
};
use crate::wire::codec::{DecodeError, Reader, put_bytes, put_signed, put_varint};

const FLAG_REJECT: u8 = 1;
const FLAG_SNAPSHOT: u8 = 2;

fn message_type(value: u8) -> Result<MessageType, DecodeError> {
    use MessageType::*;
    const ALL: [MessageType; 19] = [
        MsgHup,
        MsgBeat,
        MsgPropose,
        MsgAppend,
        MsgAppendResponse,
        MsgRequestVote,
        MsgRequestVoteResponse,
        MsgSnapshot,
        MsgHeartbeat,
        MsgHeartbeatResponse,
        MsgUnreachable,
        MsgSnapStatus,
        MsgCheckQuorum,
        MsgTransferLeader,
        MsgTimeoutNow,
        MsgReadIndex,
        MsgReadIndexResp,
        MsgRequestPreVote,
        MsgRequestPreVoteResponse,
    ];
    ALL.get(usize::from(value))
        .copied()
        .ok_or(DecodeError::BadEnum {
            what: "message type",
            value: value.into(),
        })
}

fn entry_type(value: u8) -> Result<EntryType, DecodeError> {
    match value {
        0 => Ok(EntryType::EntryNormal),
        1 => Ok(EntryType::EntryConfChange),
        2 => Ok(EntryType::EntryConfChangeV2),
        _ => Err(DecodeError::BadEnum {
            what: "entry type",
            value: value.into(),
        }),
    }
}

fn put_ids(out: &mut Vec<u8>, ids: &[u64]) {
    put_varint(out, ids.len() as u64);
    ids.iter().for_each(|id| put_varint(out, *id));
}

fn read_ids(r: &mut Reader<'_>, what: &'static str) -> Result<Vec<u64>, DecodeError> {
    let n = r.count(what, RAFT_CONF_IDS_MAX)?;
    (0..n).map(|_| r.varint(what)).collect()
}

/// Appends the encoding of `m`.
pub fn encode_message(m: &Message, out: &mut Vec<u8>) {
    out.push(m.get_msg_type() as u8);
    let mut flags = 0;
    if m.reject {
        flags |= FLAG_REJECT;
    }
    if m.has_snapshot() {
        flags |= FLAG_SNAPSHOT;
    }
    out.push(flags);
    for v in [
        m.to,
        m.from,
        m.term,
        m.log_term,
        m.index,
        m.commit,
        m.commit_term,
        m.request_snapshot,
        m.reject_hint,
    ] {
        put_varint(out, v);
    }
    put_signed(out, m.priority);
    put_bytes(out, &m.context);
    put_varint(out, m.entries.len() as u64);
    for e in m.entries.iter() {
        encode_entry(e, out);
    }
    if m.has_snapshot() {
        encode_snapshot(m.get_snapshot(), out);
    }
}

/// Appends one log entry (also the write-ahead log's entry format).
pub fn encode_entry(e: &Entry, out: &mut Vec<u8>) {
    out.push(e.get_entry_type() as u8);
    put_varint(out, e.term);
    put_varint(out, e.index);
    put_bytes(out, &e.data);
    put_bytes(out, &e.context);
}

/// Reads one log entry written by [`encode_entry`].
pub fn read_entry(r: &mut Reader<'_>) -> Result<Entry, DecodeError> {
    let mut e = Entry::default();
    e.set_entry_type(entry_type(r.u8("entry type")?)?);
    e.term = r.varint("entry term")?;
    e.index = r.varint("entry index")?;
    e.data = r
        .bytes("entry data", FRAME_PAYLOAD_MAX_BYTES)?
        .to_vec()
        .into();
    e.context = r
        .bytes("entry context", FRAME_PAYLOAD_MAX_BYTES)?
        .to_vec()
        .into();
    Ok(e)
}

/// Appends a snapshot: metadata, configuration and state-machine data.
pub fn encode_snapshot(s: &Snapshot, out: &mut Vec<u8>) {
    let meta = s.get_metadata();
    put_varint(out, meta.index);
    put_varint(out, meta.term);
    let cs = meta.get_conf_state();
    put_ids(out, &cs.voters);
    put_ids(out, &cs.learners);
    put_ids(out, &cs.voters_outgoing);
    put_ids(out, &cs.learners_next);
    out.push(u8::from(cs.auto_leave));
    put_bytes(out, &s.data);
}

/// Reads a snapshot written by [`encode_snapshot`]; its data may be up to `data_max` bytes.
pub fn read_snapshot(r: &mut Reader<'_>, data_max: usize) -> Result<Snapshot, DecodeError> {
    let mut s = Snapshot::default();
    let meta = s.mut_metadata();
    meta.index = r.varint("snapshot index")?;
    meta.term = r.varint("snapshot term")?;
    let mut cs = ConfState::default();
    cs.voters = read_ids(r, "voters")?;
    cs.learners = read_ids(r, "learners")?;
    cs.voters_outgoing = read_ids(r, "voters_outgoing")?;
    cs.learners_next = read_ids(r, "learners_next")?;
    cs.auto_leave = r.bool("auto_leave")?;
    meta.set_conf_state(cs);
    s.data = r.bytes("snapshot data", data_max)?.to_vec().into();
    Ok(s)
}

/// Decodes one message that fills `r` up to where the caller stops it.
fn read_message(r: &mut Reader<'_>) -> Result<Message, DecodeError> {
    let mut m = Message::default();
    m.set_msg_type(message_type(r.u8("message type")?)?);
    let flags = r.u8("flags")?;
    if flags & !(FLAG_REJECT | FLAG_SNAPSHOT) != 0 {
        return Err(DecodeError::BadEnum {
            what: "message flags",
            value: flags.into(),
        });
    }
    m.reject = flags & FLAG_REJECT != 0;
    m.to = r.varint("to")?;
    m.from = r.varint("from")?;
    m.term = r.varint("term")?;
    m.log_term = r.varint("log_term")?;
    m.index = r.varint("index")?;
    m.commit = r.varint("commit")?;
    m.commit_term = r.varint("commit_term")?;
    m.request_snapshot = r.varint("request_snapshot")?;
    m.reject_hint = r.varint("reject_hint")?;
    m.priority = r.signed("priority")?;
    m.context = r.bytes("context", FRAME_PAYLOAD_MAX_BYTES)?.to_vec().into();
    let n = r.count("entry count", RAFT_ENTRIES_PER_MESSAGE_MAX)?;
    // Each entry takes at least 5 bytes (type, term, index, two lengths).
    if n > r.remaining() / 5 {
        return Err(DecodeError::Truncated("entries"));
    }
    let mut entries = Vec::with_capacity(n.min(1024));
    for _ in 0..n {
        entries.push(read_entry(r)?);
    }
    m.entries = entries.into();
    if flags & FLAG_SNAPSHOT != 0 {
        m.set_snapshot(read_snapshot(r, FRAME_PAYLOAD_MAX_BYTES)?);
    }
    Ok(m)
}

/// Decodes exactly one message.
pub fn decode_message(bytes: &[u8]) -> Result<Message, DecodeError> {
    let mut r = Reader::new(bytes);
    let m = read_message(&mut r)?;
    r.finish()?;
    Ok(m)
}

/// Appends a batch of `(group, message)` pairs.
pub fn encode_batch<'a>(
    messages: impl ExactSizeIterator<Item = (u64, &'a Message)>,
    out: &mut Vec<u8>,
) {
    put_varint(out, messages.len() as u64);
    let mut scratch = Vec::new();
    for (group, m) in messages {
        scratch.clear();
        encode_message(m, &mut scratch);
        put_varint(out, group);
        put_bytes(out, &scratch);
    }
}

/// Decodes a batch written by [`encode_batch`].
pub fn decode_batch(bytes: &[u8]) -> Result<Vec<(u64, Message)>, DecodeError> {
    let mut r = Reader::new(bytes);
    let n = r.count("batch size", RAFT_BATCH_MESSAGES_MAX)?;
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        let group = r.varint("group")?;
        let encoded = r.bytes("message", FRAME_PAYLOAD_MAX_BYTES)?;
        out.push((group, decode_message(encoded)?));
    }
    r.finish()?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn sample() -> Message {
        let mut m = Message::default();
        m.set_msg_type(MessageType::MsgAppend);
        m.to = 2;
        m.from = 1;
        m.term = 7;
        m.log_term = 6;
        m.index = 41;
        m.commit = 40;
        m.priority = -3;
        m.context = b"ctx".to_vec().into();
        let mut e = Entry::default();
        e.term = 7;
        e.index = 42;
        e.data = b"put k v".to_vec().into();
        m.entries = vec![e].into();
        m
    }

    #[test]
    fn messages_round_trip_with_and_without_snapshots() {
        let m = sample();
        let mut out = Vec::new();
        encode_message(&m, &mut out);
        assert_eq!(decode_message(&out).unwrap(), m);

        let mut s = sample();
        s.set_msg_type(MessageType::MsgSnapshot);
        s.reject = true;
        let snap = s.mut_snapshot();
        snap.mut_metadata().index = 100;
        snap.mut_metadata().term = 5;
        snap.mut_metadata().mut_conf_state().voters = vec![1, 2, 3];
        snap.mut_metadata().mut_conf_state().learners = vec![9];
        snap.data = vec![1u8; 1000].into();
        let mut out = Vec::new();
        encode_batch([(7u64, &m), (8u64, &s)].into_iter(), &mut out);
        assert_eq!(decode_batch(&out).unwrap(), vec![(7, m), (8, s)]);
    }

    #[test]
    fn bad_enums_and_trailing_bytes_are_typed_errors() {
        let mut out = Vec::new();
        encode_message(&sample(), &mut out);
        let mut bad_type = out.clone();
        bad_type[0] = 19;
        assert!(matches!(
            decode_message(&bad_type),
            Err(DecodeError::BadEnum { .. })
        ));
        let mut trailing = out.clone();
        trailing.push(0);
        assert_eq!(
            decode_message(&trailing),
            Err(DecodeError::TrailingBytes(1))
        );
        for cut in 0..out.len() {
            assert!(decode_message(&out[..cut]).is_err(), "cut at {cut}");
        }
    }

    #[test]
    fn an_append_of_a_megabyte_of_the_smallest_entries_decodes_and_a_hostile_count_does_not() {
        // What raft-rs puts in one append to a follower catching up on small writes: as
        // many entries as fit `max_size_per_msg` (1 MiB) by its own measure.
        let mut entries: Vec<Entry> = (1..=400_000u64)
            .map(|i| {
                let mut e = Entry::default();
                e.term = 1;
                e.index = i;
                e
            })
            .collect();
        raft::util::limit_size(&mut entries, Some(1 << 20));
        assert!(entries.len() > 4096, "{} entries", entries.len());
        let mut m = sample();
        m.entries = entries.into();
        let mut out = Vec::new();
        encode_message(&m, &mut out);
        assert_eq!(decode_message(&out).unwrap(), m);

        // A count the remaining bytes cannot hold is refused before anything is reserved.
        let mut m = sample();
        m.entries = Vec::new().into();
        let mut out = Vec::new();
        encode_message(&m, &mut out);
        // The entry count (0) is the last byte of a message without entries or snapshot.
        assert_eq!(out.pop(), Some(0));
        put_varint(&mut out, RAFT_ENTRIES_PER_MESSAGE_MAX as u64);
        assert!(decode_message(&out).is_err());
    }
}
