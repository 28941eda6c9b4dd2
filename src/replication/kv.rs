//! The state machine of a vShard: an ordered key-value map behind the `StateMachine` trait.
//!
//! Writes travel through Raft as encoded [`KvCommand`]s; every replica applies the same
//! commands in the same order and gets the same map. Reads (`get`, `scan`) are served from
//! the map once the replica has applied at least the read's ReadIndex. A malformed command
//! (only possible from a bug or a corrupt log, since the leader validates what it proposes)
//! yields an error response on every replica alike, never a panic and never a divergence.

use std::fmt;
use std::ops::Bound;

use bytes::Bytes;
use imbl::OrdMap;
use thiserror::Error;

use crate::constants::{
    KV_KEY_MAX_BYTES, KV_SCAN_MAX_ITEMS, KV_VALUE_MAX_BYTES, VSHARD_STATE_MAX_BYTES,
};
use crate::wire::codec::{DecodeError, Reader, put_bytes, put_varint};

/// What a replicated state machine offers the Raft host.
pub trait StateMachine {
    /// Applies the command committed at `index` and returns the response for its proposer.
    /// Must be deterministic: the same commands in the same order give the same state.
    fn apply(&mut self, index: u64, command: &[u8]) -> Vec<u8>;
    /// The index of the last applied command.
    fn applied_index(&self) -> u64;
    /// A full copy of the state, to install on a replica that fell behind the log.
    fn snapshot(&self) -> Vec<u8>;
    /// The state as a point-in-time view that encodes to what `snapshot` returns, piece
    /// by piece, when the machine can give one cheaply (`None`: call `snapshot`).
    fn view(&self) -> Option<KvView> {
        None
    }
    /// Replaces the state with a snapshot taken at `index`. The state may keep slices of
    /// `snapshot` rather than copies.
    fn restore(&mut self, index: u64, snapshot: &Bytes) -> Result<(), DecodeError>;
    /// Bytes of user data held (keys + values), for the load metrics.
    fn bytes_stored(&self) -> u64;
}

/// A write to the map.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KvCommand {
    Put {
        key: Vec<u8>,
        value: Vec<u8>,
    },
    Delete {
        key: Vec<u8>,
    },
    /// Sets `key` to `new` (or deletes it when `None`) only if it currently equals `expected`
    /// (`None`: absent).
    CompareAndSet {
        key: Vec<u8>,
        expected: Option<Vec<u8>>,
        new: Option<Vec<u8>>,
    },
}

/// The answer to a write.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KvResponse {
    Done,
    /// A delete; whether the key existed.
    Deleted(bool),
    /// A compare-and-set; whether it applied, and the value it found.
    Cas {
        applied: bool,
        found: Option<Vec<u8>>,
    },
    /// The command was malformed.
    Rejected(String),
}

/// A command the client may not send.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum KvError {
    #[error("key of {0} bytes exceeds the {KV_KEY_MAX_BYTES}-byte limit")]
    KeyTooLarge(usize),
    #[error("value of {0} bytes exceeds the {KV_VALUE_MAX_BYTES}-byte limit")]
    ValueTooLarge(usize),
    #[error("keys must not be empty")]
    EmptyKey,
}

impl KvCommand {
    /// The key the command writes.
    pub fn key(&self) -> &[u8] {
        match self {
            KvCommand::Put { key, .. }
            | KvCommand::Delete { key }
            | KvCommand::CompareAndSet { key, .. } => key,
        }
    }

    /// Checks the bounds a proposer must enforce before proposing.
    pub fn validate(&self) -> Result<(), KvError> {
        let check_key = |k: &[u8]| match k.len() {
            0 => Err(KvError::EmptyKey),
            n if n > KV_KEY_MAX_BYTES => Err(KvError::KeyTooLarge(n)),
            _ => Ok(()),
        };
        let check_value = |v: &[u8]| {
            if v.len() > KV_VALUE_MAX_BYTES {
                Err(KvError::ValueTooLarge(v.len()))
            } else {
                Ok(())
            }
        };
        match self {
            KvCommand::Put { key, value } => check_key(key).and(check_value(value)),
            KvCommand::Delete { key } => check_key(key),
            KvCommand::CompareAndSet { key, expected, new } => check_key(key)
                .and(expected.as_deref().map_or(Ok(()), check_value))
                .and(new.as_deref().map_or(Ok(()), check_value)),
        }
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        let put_opt = |out: &mut Vec<u8>, v: &Option<Vec<u8>>| match v {
            None => out.push(0),
            Some(v) => {
                out.push(1);
                put_bytes(out, v);
            }
        };
        match self {
            KvCommand::Put { key, value } => {
                out.push(1);
                put_bytes(&mut out, key);
                put_bytes(&mut out, value);
            }
            KvCommand::Delete { key } => {
                out.push(2);
                put_bytes(&mut out, key);
            }
            KvCommand::CompareAndSet { key, expected, new } => {
                out.push(3);
                put_bytes(&mut out, key);
                put_opt(&mut out, expected);
                put_opt(&mut out, new);
            }
        }
        out
    }

    pub fn decode(bytes: &[u8]) -> Result<KvCommand, DecodeError> {
        let mut r = Reader::new(bytes);
        let opt = |r: &mut Reader<'_>| -> Result<Option<Vec<u8>>, DecodeError> {
            match r.u8("option")? {
                0 => Ok(None),
                1 => Ok(Some(r.bytes("value", KV_VALUE_MAX_BYTES)?.to_vec())),
                v => Err(DecodeError::BadEnum {
                    what: "option",
                    value: v.into(),
                }),
            }
        };
        let command = match r.u8("command")? {
            1 => KvCommand::Put {
                key: r.bytes("key", KV_KEY_MAX_BYTES)?.to_vec(),
                value: r.bytes("value", KV_VALUE_MAX_BYTES)?.to_vec(),
            },
            2 => KvCommand::Delete {
                key: r.bytes("key", KV_KEY_MAX_BYTES)?.to_vec(),
            },
            3 => {
                let key = r.bytes("key", KV_KEY_MAX_BYTES)?.to_vec();
                let expected = opt(&mut r)?;
                KvCommand::CompareAndSet {
                    key,
                    expected,
                    new: opt(&mut r)?,
                }
            }
            v => {
                return Err(DecodeError::BadEnum {
                    what: "command",
                    value: v.into(),
                });
            }
        };
        r.finish()?;
        Ok(command)
    }
}

impl KvResponse {
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        match self {
            KvResponse::Done => out.push(1),
            KvResponse::Deleted(existed) => {
                out.push(2);
                out.push(u8::from(*existed));
            }
            KvResponse::Cas { applied, found } => {
                out.push(3);
                out.push(u8::from(*applied));
                match found {
                    None => out.push(0),
                    Some(v) => {
                        out.push(1);
                        put_bytes(&mut out, v);
                    }
                }
            }
            KvResponse::Rejected(reason) => {
                out.push(4);
                put_bytes(&mut out, reason.as_bytes());
            }
        }
        out
    }

    pub fn decode(bytes: &[u8]) -> Result<KvResponse, DecodeError> {
        let mut r = Reader::new(bytes);
        let flag = |r: &mut Reader<'_>| match r.u8("flag")? {
            0 => Ok(false),
            1 => Ok(true),
            v => Err(DecodeError::BadEnum {
                what: "flag",
                value: v.into(),
            }),
        };
        let response = match r.u8("response")? {
            1 => KvResponse::Done,
            2 => KvResponse::Deleted(flag(&mut r)?),
            3 => {
                let applied = flag(&mut r)?;
                let found = if flag(&mut r)? {
                    Some(r.bytes("found", KV_VALUE_MAX_BYTES)?.to_vec())
                } else {
                    None
                };
                KvResponse::Cas { applied, found }
            }
            4 => {
                KvResponse::Rejected(String::from_utf8_lossy(r.bytes("reason", 1024)?).into_owned())
            }
            v => {
                return Err(DecodeError::BadEnum {
                    what: "response",
                    value: v.into(),
                });
            }
        };
        r.finish()?;
        Ok(response)
    }
}

/// An ordered map, the KV state machine of one vShard.
///
/// The map is persistent (structural sharing): a snapshot is a [`KvView`] taken in O(1),
/// and later writes copy only the tree nodes they change, so a replica neither stops to
/// serialise a large vShard nor holds a second, serialised copy of it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KvStore {
    map: OrdMap<Bytes, Bytes>,
    bytes: u64,
    /// What the pairs take encoded in a snapshot (keys, values, their length prefixes).
    encoded: u64,
    applied: u64,
    /// Most the snapshot may take (`VSHARD_STATE_MAX_BYTES`; every replica must agree).
    limit: u64,
}

impl Default for KvStore {
    fn default() -> KvStore {
        KvStore::with_limit(VSHARD_STATE_MAX_BYTES)
    }
}

impl KvStore {
    pub fn new() -> KvStore {
        KvStore::default()
    }

    /// A store refusing writes past `limit` snapshot bytes. Every replica of a group must
    /// use the same limit: nodes use `VSHARD_STATE_MAX_BYTES` (`new`); tests a small one.
    pub fn with_limit(limit: u64) -> KvStore {
        KvStore {
            map: OrdMap::new(),
            bytes: 0,
            encoded: 0,
            applied: 0,
            limit,
        }
    }

    pub fn get(&self, key: &[u8]) -> Option<&[u8]> {
        self.map.get(key).map(|v| &v[..])
    }

    /// Up to `limit` (capped at `KV_SCAN_MAX_ITEMS`) pairs with `start <= key < end`.
    pub fn scan(&self, start: &[u8], end: Option<&[u8]>, limit: usize) -> Vec<(Vec<u8>, Vec<u8>)> {
        let upper = end.map_or(Bound::Unbounded, Bound::Excluded);
        self.map
            .range::<_, [u8]>((Bound::Included(start), upper))
            .take(limit.min(KV_SCAN_MAX_ITEMS))
            .map(|(k, v)| (k.to_vec(), v.to_vec()))
            .collect()
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// What the snapshot would take (at most) after setting `key` to a `value_len`-byte
    /// value: keys, values, and up to 8 bytes of length prefixes per pair.
    fn snapshot_bytes_with(&self, key: &[u8], value_len: usize) -> u64 {
        let (bytes, pairs) = match self.map.get(key) {
            Some(old) => (
                self.bytes - old.len() as u64 + value_len as u64,
                self.map.len(),
            ),
            None => (
                self.bytes + (key.len() + value_len) as u64,
                self.map.len() + 1,
            ),
        };
        bytes + 8 * pairs as u64 + 16
    }

    /// The refusal of a write that would take the vShard past its limit.
    fn full(&self, key: &[u8], value_len: usize) -> Option<KvResponse> {
        let after = self.snapshot_bytes_with(key, value_len);
        (after > self.limit).then(|| {
            KvResponse::Rejected(format!(
                "vShard full: this write would take it to {after} bytes, over the {}-byte limit; delete keys or spread them over more vShards",
                self.limit
            ))
        })
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// Sets or removes `key`, keeping `bytes` equal to the sum of key and value lengths
    /// and `encoded` to their encoded size.
    fn set(&mut self, key: Vec<u8>, value: Option<Vec<u8>>) -> Option<Bytes> {
        let key_len = key.len() as u64;
        let old = match value {
            Some(v) => {
                self.bytes += key_len + v.len() as u64;
                self.encoded += pair_encoded_len(key.len(), v.len());
                self.map.insert(key.into(), v.into())
            }
            None => self.map.remove(&key[..]),
        };
        if let Some(old) = &old {
            self.bytes -= key_len + old.len() as u64;
            self.encoded -= pair_encoded_len(key_len as usize, old.len());
        }
        old
    }

    /// The pairs as they are now, in O(1): see [`KvView`].
    pub fn view(&self) -> KvView {
        KvView {
            map: self.map.clone(),
            encoded: self.encoded,
        }
    }
}

impl KvStore {
    /// A restore of `snapshot`, taken at `index`, into a fresh store with this one's limit,
    /// decoded a piece at a time ([`KvRestore::step`]): a large snapshot is installed
    /// without one long decode on the core.
    pub fn restore_from(&self, index: u64, snapshot: Bytes) -> Result<KvRestore, DecodeError> {
        let mut r = Reader::new(&snapshot);
        let pairs = r.count("snapshot entries", usize::MAX)?;
        let at = snapshot.len() - r.remaining();
        Ok(KvRestore {
            snapshot,
            at,
            pairs,
            store: KvStore {
                applied: index,
                ..KvStore::with_limit(self.limit)
            },
        })
    }
}

/// A KV snapshot being decoded into a fresh store, piece by piece. The store keeps slices
/// of the snapshot's bytes, not copies: installing one copies no data.
#[derive(Debug)]
pub struct KvRestore {
    snapshot: Bytes,
    /// Where the next pair starts.
    at: usize,
    /// Pairs still to decode.
    pairs: usize,
    store: KvStore,
}

impl KvRestore {
    /// Decodes pairs until about `budget` bytes were read (at least one pair) or none is
    /// left; whether none is left. An error means the snapshot does not decode.
    pub fn step(&mut self, budget: usize) -> Result<bool, DecodeError> {
        let mut r = Reader::new(&self.snapshot[self.at..]);
        let start = r.remaining();
        while self.pairs > 0 && start - r.remaining() < budget {
            let k = r.bytes("key", KV_KEY_MAX_BYTES)?;
            let v = r.bytes("value", KV_VALUE_MAX_BYTES)?;
            let (key, value) = (self.snapshot.slice_ref(k), self.snapshot.slice_ref(v));
            let store = &mut self.store;
            store.bytes += (k.len() + v.len()) as u64;
            store.encoded += pair_encoded_len(k.len(), v.len());
            // A repeated key keeps its last value; its first one no longer counts.
            if let Some(old) = store.map.insert(key, value) {
                store.bytes -= (k.len() + old.len()) as u64;
                store.encoded -= pair_encoded_len(k.len(), old.len());
            }
            self.pairs -= 1;
        }
        self.at += start - r.remaining();
        if self.pairs == 0 {
            r.finish()?;
        }
        Ok(self.pairs == 0)
    }

    /// Whether every pair is decoded (`step` returned `Ok(true)`).
    pub fn done(&self) -> bool {
        self.pairs == 0
    }

    /// The store, once every pair decoded and nothing is left over.
    pub fn finish(self) -> Result<KvStore, DecodeError> {
        if self.pairs > 0 {
            return Err(DecodeError::Truncated("snapshot entries"));
        }
        Reader::new(&self.snapshot[self.at..]).finish()?;
        Ok(self.store)
    }
}

/// Checks that `snapshot` decodes as a KV snapshot (what `restore` would accept), without
/// building the state: one pass over its length prefixes.
pub fn check_snapshot(snapshot: &[u8]) -> Result<(), DecodeError> {
    let mut r = Reader::new(snapshot);
    let n = r.count("snapshot entries", usize::MAX)?;
    for _ in 0..n {
        r.bytes("key", KV_KEY_MAX_BYTES)?;
        r.bytes("value", KV_VALUE_MAX_BYTES)?;
    }
    r.finish()
}

/// Bytes of a varint.
fn varint_len(value: u64) -> u64 {
    u64::from((64 - value.leading_zeros()).max(1).div_ceil(7))
}

/// Bytes a pair takes in a snapshot: each of key and value with its length prefix.
fn pair_encoded_len(key: usize, value: usize) -> u64 {
    varint_len(key as u64) + key as u64 + varint_len(value as u64) + value as u64
}

/// A point-in-time copy of a vShard's pairs, taken in O(1): it shares the live map's
/// structure (writes after it copy the nodes they change). A snapshot is encoded from it
/// piece by piece ([`ViewReader`]), so neither compaction nor a transfer holds a whole
/// encoded vShard, and the core encodes only as fast as the pieces are written out.
#[derive(Clone, PartialEq, Eq)]
pub struct KvView {
    map: OrdMap<Bytes, Bytes>,
    encoded: u64,
}

impl fmt::Debug for KvView {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KvView")
            .field("pairs", &self.map.len())
            .field("encoded_len", &self.encoded_len())
            .finish()
    }
}

impl KvView {
    /// Bytes of the encoded snapshot (what `KvStore::snapshot` returns for this state).
    pub fn encoded_len(&self) -> u64 {
        varint_len(self.map.len() as u64) + self.encoded
    }

    /// Reads the encoded snapshot from its start.
    pub fn reader(&self) -> ViewReader {
        ViewReader {
            map: self.map.clone(),
            after: None,
            header: false,
            finished: false,
            carry: Vec::new(),
            carry_at: 0,
        }
    }

    /// The whole encoded snapshot at once.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.encoded_len() as usize);
        put_varint(&mut out, self.map.len() as u64);
        for (k, v) in &self.map {
            put_bytes(&mut out, k);
            put_bytes(&mut out, v);
        }
        out
    }
}

/// Encodes a [`KvView`] in order, a piece at a time: each call resumes after the last key
/// it encoded (one O(log n) seek), so a piece costs its own bytes and no more.
pub struct ViewReader {
    map: OrdMap<Bytes, Bytes>,
    /// The last key encoded.
    after: Option<Bytes>,
    header: bool,
    finished: bool,
    /// Encoded bytes of the last pair that did not fit the previous piece.
    carry: Vec<u8>,
    carry_at: usize,
}

impl ViewReader {
    /// The next `max` bytes of the encoded snapshot (fewer only at its end; empty after).
    pub fn read(&mut self, max: usize) -> Vec<u8> {
        if !self.header {
            // The pair count leads: it goes out as carried bytes, like a pair's overflow.
            put_varint(&mut self.carry, self.map.len() as u64);
            self.header = true;
        }
        let mut out = Vec::with_capacity(max.min(self.remaining_hint()));
        let carried = (self.carry.len() - self.carry_at).min(max.saturating_sub(out.len()));
        out.extend_from_slice(&self.carry[self.carry_at..self.carry_at + carried]);
        self.carry_at += carried;
        if out.len() < max && !self.finished {
            let lower = self
                .after
                .as_ref()
                .map_or(Bound::Unbounded, |k| Bound::Excluded(&k[..]));
            let mut pairs = self.map.range::<_, [u8]>((lower, Bound::Unbounded));
            let mut last = None;
            loop {
                let Some((k, v)) = pairs.next() else {
                    self.finished = true;
                    break;
                };
                put_bytes(&mut out, k);
                put_bytes(&mut out, v);
                last = Some(k);
                if out.len() >= max {
                    break;
                }
            }
            if let Some(k) = last {
                self.after = Some(k.clone());
            }
            if out.len() > max {
                self.carry = out.split_off(max);
                self.carry_at = 0;
            }
        }
        out
    }

    /// A bound for sizing a piece's buffer (a piece rarely needs more than one chunk).
    fn remaining_hint(&self) -> usize {
        if self.finished {
            self.carry.len() - self.carry_at
        } else {
            usize::MAX
        }
    }
}

impl StateMachine for KvStore {
    fn apply(&mut self, index: u64, command: &[u8]) -> Vec<u8> {
        self.applied = self.applied.max(index);
        let response = match KvCommand::decode(command) {
            Err(e) => KvResponse::Rejected(e.to_string()),
            Ok(KvCommand::Put { key, value }) => match self.full(&key, value.len()) {
                Some(refusal) => refusal,
                None => {
                    self.set(key, Some(value));
                    KvResponse::Done
                }
            },
            Ok(KvCommand::Delete { key }) => KvResponse::Deleted(self.set(key, None).is_some()),
            Ok(KvCommand::CompareAndSet { key, expected, new }) => {
                let found = self.map.get(&key[..]).map(|v| v.to_vec());
                let refusal = new.as_ref().and_then(|v| self.full(&key, v.len()));
                if let (true, Some(refusal)) = (found == expected, refusal) {
                    refusal
                } else if found == expected {
                    self.set(key, new);
                    KvResponse::Cas {
                        applied: true,
                        found,
                    }
                } else {
                    KvResponse::Cas {
                        applied: false,
                        found,
                    }
                }
            }
        };
        response.encode()
    }

    fn applied_index(&self) -> u64 {
        self.applied
    }

    fn snapshot(&self) -> Vec<u8> {
        self.view().encode()
    }

    fn view(&self) -> Option<KvView> {
        Some(KvStore::view(self))
    }

    fn restore(&mut self, index: u64, snapshot: &Bytes) -> Result<(), DecodeError> {
        let mut restore = self.restore_from(index, snapshot.clone())?;
        restore.step(usize::MAX)?;
        // Only replace the state once the whole snapshot decoded: never half-installed.
        *self = restore.finish()?;
        Ok(())
    }

    fn bytes_stored(&self) -> u64 {
        self.bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn apply(store: &mut KvStore, index: u64, c: KvCommand) -> KvResponse {
        KvResponse::decode(&store.apply(index, &c.encode())).unwrap()
    }

    fn recount(store: &KvStore) -> u64 {
        store
            .map
            .iter()
            .map(|(k, v)| (k.len() + v.len()) as u64)
            .sum()
    }

    #[test]
    fn a_vshard_refuses_writes_past_its_size_limit() {
        let limit = 48 << 20;
        let mut s = KvStore::with_limit(limit);
        let value = vec![7u8; KV_VALUE_MAX_BYTES];
        let put = |i: u64| KvCommand::Put {
            key: format!("k{i}").into_bytes(),
            value: value.clone(),
        };
        let mut index = 0;
        loop {
            index += 1;
            match apply(&mut s, index, put(index)) {
                KvResponse::Done => {}
                KvResponse::Rejected(reason) => {
                    assert!(reason.contains("vShard full"), "{reason}");
                    break;
                }
                other => panic!("{other:?}"),
            }
            assert!(index < 100, "never refused");
        }
        // The refused write changed nothing; a CAS that shrinks the vShard still applies,
        // and then the refused write fits.
        assert!(s.get(format!("k{index}").as_bytes()).is_none());
        assert_eq!(s.bytes, recount(&s));
        let shrink = KvCommand::CompareAndSet {
            key: b"k1".to_vec(),
            expected: Some(value.clone()),
            new: Some(vec![1]),
        };
        assert!(matches!(
            apply(&mut s, index + 1, shrink),
            KvResponse::Cas { applied: true, .. }
        ));
        assert_eq!(apply(&mut s, index + 2, put(index)), KvResponse::Done);
        let snapshot = s.snapshot().len() as u64;
        assert!(snapshot <= limit, "{snapshot}");
    }

    #[test]
    fn put_delete_cas_and_byte_accounting() {
        let mut s = KvStore::new();
        let k = || b"key".to_vec();
        assert_eq!(
            apply(
                &mut s,
                1,
                KvCommand::Put {
                    key: k(),
                    value: b"v1".to_vec()
                }
            ),
            KvResponse::Done
        );
        assert_eq!(s.bytes_stored(), recount(&s));
        apply(
            &mut s,
            2,
            KvCommand::Put {
                key: k(),
                value: b"value-2".to_vec(),
            },
        );
        assert_eq!(s.bytes_stored(), recount(&s));
        let cas = KvCommand::CompareAndSet {
            key: k(),
            expected: Some(b"v1".to_vec()),
            new: Some(b"x".to_vec()),
        };
        assert_eq!(
            apply(&mut s, 3, cas),
            KvResponse::Cas {
                applied: false,
                found: Some(b"value-2".to_vec())
            }
        );
        let cas = KvCommand::CompareAndSet {
            key: k(),
            expected: Some(b"value-2".to_vec()),
            new: None,
        };
        assert!(matches!(
            apply(&mut s, 4, cas),
            KvResponse::Cas { applied: true, .. }
        ));
        assert_eq!(s.get(b"key"), None);
        assert_eq!(s.bytes_stored(), 0);
        assert_eq!(
            apply(&mut s, 5, KvCommand::Delete { key: k() }),
            KvResponse::Deleted(false)
        );
        assert_eq!(s.applied_index(), 5);
        assert!(matches!(
            KvResponse::decode(&s.apply(6, b"\x09garbage")).unwrap(),
            KvResponse::Rejected(_)
        ));
    }

    #[test]
    fn snapshot_restores_the_same_state_and_garbage_leaves_it_untouched() {
        let mut s = KvStore::new();
        for i in 0..50u32 {
            apply(
                &mut s,
                u64::from(i) + 1,
                KvCommand::Put {
                    key: i.to_be_bytes().to_vec(),
                    value: vec![1; i as usize],
                },
            );
        }
        let mut t = KvStore::new();
        t.restore(50, &s.snapshot().into()).unwrap();
        assert_eq!(t, s);
        assert_eq!(
            t.scan(&5u32.to_be_bytes(), Some(&8u32.to_be_bytes()), 100)
                .len(),
            3
        );
        let before = t.clone();
        assert!(t.restore(60, &Bytes::from_static(&[3, 1])).is_err());
        assert_eq!(t, before);
    }

    /// A view taken before later writes still encodes the state it was taken at, in pieces
    /// of any size, and byte for byte what `snapshot` gave then.
    #[test]
    fn a_view_encodes_its_point_in_time_in_pieces_of_any_size() {
        let mut s = KvStore::new();
        let mut index = 0;
        let mut put = |s: &mut KvStore, key: Vec<u8>, len: usize| {
            index += 1;
            let value = vec![index as u8; len];
            apply(s, index, KvCommand::Put { key, value });
        };
        for i in 0..300u32 {
            // Values from empty to larger than a piece, so pairs straddle pieces.
            put(&mut s, i.to_be_bytes().to_vec(), (i as usize * 37) % 700);
        }
        let view = s.view();
        let encoded = s.snapshot();
        assert_eq!(view.encoded_len(), encoded.len() as u64);
        // Writes after the view: overwrites, deletes and new keys.
        for i in (0..300u32).step_by(3) {
            put(&mut s, i.to_be_bytes().to_vec(), 5);
        }
        for i in (1..300u32).step_by(7) {
            apply(
                &mut s,
                10_000 + i as u64,
                KvCommand::Delete {
                    key: i.to_be_bytes().to_vec(),
                },
            );
        }
        put(&mut s, b"zzz".to_vec(), 9);
        assert_ne!(s.snapshot(), encoded);
        for piece in [1, 2, 5, 64, 699, 4096, 1 << 20] {
            let mut reader = view.reader();
            let mut joined = Vec::new();
            loop {
                let next = reader.read(piece);
                assert!(next.len() <= piece);
                if next.is_empty() {
                    break;
                }
                joined.extend_from_slice(&next);
            }
            assert_eq!(joined, encoded, "pieces of {piece} bytes");
        }
        // What the live map's accounting says matches a full encode after all the writes.
        assert_eq!(s.view().encoded_len(), s.snapshot().len() as u64);
        let mut restored = KvStore::new();
        restored.restore(index, &s.snapshot().into()).unwrap();
        assert_eq!(restored.view().encoded_len(), s.view().encoded_len());
        assert_eq!(restored.bytes_stored(), recount(&restored));
    }

    #[test]
    fn oversized_or_empty_keys_are_rejected_before_proposal() {
        assert_eq!(
            KvCommand::Put {
                key: vec![],
                value: vec![]
            }
            .validate(),
            Err(KvError::EmptyKey)
        );
        let big = KvCommand::Put {
            key: b"k".to_vec(),
            value: vec![0; KV_VALUE_MAX_BYTES + 1],
        };
        assert!(matches!(big.validate(), Err(KvError::ValueTooLarge(_))));
    }
}
