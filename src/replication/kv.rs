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
use crate::wire::codec::{DecodeError, Reader, put_bytes, put_varint, varint_len};

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
        let mut restore = self.restore_streaming(index);
        restore.feed(snapshot);
        restore.end();
        // The count is read at once: a snapshot that does not even start right is refused
        // before anything waits for it.
        restore.step(0)?;
        Ok(restore)
    }

    /// A restore, taken at `index`, whose bytes arrive in pieces ([`KvRestore::feed`],
    /// then [`KvRestore::end`]): a streamed snapshot is decoded as it arrives.
    pub fn restore_streaming(&self, index: u64) -> KvRestore {
        KvRestore {
            buf: Bytes::new(),
            at: 0,
            next: std::collections::VecDeque::new(),
            pairs: None,
            ended: false,
            starved: false,
            store: KvStore {
                applied: index,
                ..KvStore::with_limit(self.limit)
            },
        }
    }
}

/// A KV snapshot being decoded into a fresh store, piece by piece, as its bytes arrive.
/// The store keeps slices of the received pieces, not copies (a pair that straddles two
/// pieces is decoded from a joined copy of the rest of one and the next): installing one
/// copies no data.
#[derive(Debug)]
pub struct KvRestore {
    /// The piece being decoded, from `at`.
    buf: Bytes,
    at: usize,
    /// Pieces received after it.
    next: std::collections::VecDeque<Bytes>,
    /// Pairs still to decode; `None` until the count that starts the snapshot is read.
    pairs: Option<usize>,
    /// Every piece was given.
    ended: bool,
    /// The last `step` stopped inside a pair, with no piece after it: nothing to do
    /// until one arrives.
    starved: bool,
    store: KvStore,
}

impl KvRestore {
    /// Takes the next piece of the snapshot's bytes.
    pub fn feed(&mut self, piece: Bytes) {
        if !piece.is_empty() {
            self.next.push_back(piece);
            self.starved = false;
        }
    }

    /// Every piece was given: what is missing now is missing for good.
    pub fn end(&mut self) {
        self.ended = true;
        self.starved = false;
    }

    /// Decodes pairs until about `budget` bytes were read (at least one pair, unless the
    /// budget is 0) or none can be until more arrive; whether the store is whole. An error
    /// means the snapshot does not decode.
    pub fn step(&mut self, budget: usize) -> Result<bool, DecodeError> {
        let mut used = 0;
        loop {
            if self.pairs == Some(0) {
                break;
            }
            if budget == 0 && self.pairs.is_some() {
                break;
            }
            let input = &self.buf[self.at..];
            let mut r = Reader::new(input);
            let decoded = match self.pairs {
                None => r.count("snapshot entries", usize::MAX).map(|n| {
                    self.pairs = Some(n);
                }),
                Some(_) => r
                    .bytes("key", KV_KEY_MAX_BYTES)
                    .and_then(|k| Ok((k, r.bytes("value", KV_VALUE_MAX_BYTES)?)))
                    .map(|(k, v)| {
                        let (key, value) = (self.buf.slice_ref(k), self.buf.slice_ref(v));
                        let store = &mut self.store;
                        store.bytes += (k.len() + v.len()) as u64;
                        store.encoded += pair_encoded_len(k.len(), v.len());
                        // A repeated key keeps its last value; its first one no longer
                        // counts.
                        if let Some(old) = store.map.insert(key, value) {
                            store.bytes -= (k.len() + old.len()) as u64;
                            store.encoded -= pair_encoded_len(k.len(), old.len());
                        }
                        if let Some(pairs) = self.pairs.as_mut() {
                            *pairs -= 1;
                        }
                    }),
            };
            match decoded {
                Ok(()) => {
                    let read = input.len() - r.remaining();
                    self.at += read;
                    used += read;
                    if used >= budget && budget > 0 {
                        break;
                    }
                }
                // The input ends inside a value: join what is left with the next piece,
                // or wait for it.
                Err(DecodeError::Truncated(what)) => match self.next.pop_front() {
                    Some(piece) => self.bridge(piece)?,
                    None if self.ended => return Err(DecodeError::Truncated(what)),
                    None => {
                        self.starved = true;
                        break;
                    }
                },
                Err(e) => return Err(e),
            }
        }
        // Bytes after the last pair never become valid, whatever follows them.
        if self.pairs == Some(0) && self.left_over() > 0 {
            return Err(DecodeError::TrailingBytes(self.left_over()));
        }
        Ok(self.done())
    }

    /// Moves on to `piece`, the input having ended inside a value (the count or a pair).
    /// That value alone is joined into a buffer of its own — the rest of the input and as
    /// little of `piece` as completes it — and decoding goes on in `piece` itself: joining
    /// whole pieces copied every chunk of a streamed vShard once more, and held both
    /// copies until the file writer let go of the first.
    fn bridge(&mut self, piece: Bytes) -> Result<(), DecodeError> {
        let rest = self.buf.slice(self.at..);
        self.at = 0;
        if rest.is_empty() {
            self.buf = piece;
            return Ok(());
        }
        let mut take = piece.len().min(64);
        loop {
            let mut joined = Vec::with_capacity(rest.len() + take);
            joined.extend_from_slice(&rest);
            joined.extend_from_slice(&piece[..take]);
            match self.value_len(&joined) {
                Ok(len) => {
                    joined.truncate(len);
                    self.buf = Bytes::from(joined);
                    self.next.push_front(piece.slice(len - rest.len()..));
                    return Ok(());
                }
                Err(DecodeError::Truncated(_)) if take < piece.len() => {
                    take = piece.len().min(take * 4);
                }
                // The value goes on past `piece`: joined whole, the next joins it later.
                Err(DecodeError::Truncated(_)) => {
                    self.buf = Bytes::from(joined);
                    return Ok(());
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Bytes the next value (the count, then a pair) takes at the start of `input`.
    fn value_len(&self, input: &[u8]) -> Result<usize, DecodeError> {
        let mut r = Reader::new(input);
        match self.pairs {
            None => {
                r.count("snapshot entries", usize::MAX)?;
            }
            Some(_) => {
                r.bytes("key", KV_KEY_MAX_BYTES)?;
                r.bytes("value", KV_VALUE_MAX_BYTES)?;
            }
        }
        Ok(input.len() - r.remaining())
    }

    /// Bytes received and not decoded.
    fn left_over(&self) -> usize {
        self.buf.len() - self.at + self.next.iter().map(Bytes::len).sum::<usize>()
    }

    /// Whether `step` can make progress now (it has bytes it has not tried).
    pub fn can_step(&self) -> bool {
        !self.done() && !self.starved && (self.left_over() > 0 || self.ended)
    }

    /// Whether every pair is decoded and every piece given, with nothing left over.
    pub fn done(&self) -> bool {
        self.pairs == Some(0) && self.ended && self.left_over() == 0
    }

    /// The store, once every pair decoded and nothing is left over.
    pub fn finish(self) -> Result<KvStore, DecodeError> {
        if !self.done() {
            if self.left_over() > 0 && self.pairs == Some(0) {
                return Err(DecodeError::TrailingBytes(self.left_over()));
            }
            return Err(DecodeError::Truncated("snapshot entries"));
        }
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

    /// A snapshot fed in pieces of any size, decoded as they arrive with any budget,
    /// restores what the whole one does; pieces that stop inside a pair leave nothing to
    /// do until the next; a snapshot cut short, or with bytes after its last pair, fails
    /// only once its end is known.
    #[test]
    fn a_snapshot_decoded_as_its_pieces_arrive_restores_the_same_state() {
        let mut s = KvStore::new();
        for i in 0..300u32 {
            let value = vec![i as u8; (i as usize * 37) % 700];
            apply(
                &mut s,
                u64::from(i) + 1,
                KvCommand::Put {
                    key: i.to_be_bytes().to_vec(),
                    value,
                },
            );
        }
        let encoded = Bytes::from(s.snapshot());
        for (piece, budget) in [
            (1, 1),
            (2, 7),
            (5, 100),
            (699, 1),
            (4096, 1 << 20),
            (1 << 20, 50),
        ] {
            let mut restore = s.restore_streaming(300);
            for part in encoded.chunks(piece) {
                restore.feed(encoded.slice_ref(part));
                while restore.can_step() {
                    assert!(!restore.step(budget).unwrap());
                }
            }
            assert!(!restore.done(), "not whole before its end is known");
            restore.end();
            while restore.can_step() {
                restore.step(budget).unwrap();
            }
            assert!(restore.done(), "pieces of {piece}");
            assert_eq!(restore.finish().unwrap(), s, "pieces of {piece}");
        }
        // Cut short: waits while more may come, fails at the end.
        let mut short = s.restore_streaming(300);
        short.feed(encoded.slice(..encoded.len() - 3));
        while short.can_step() {
            assert_eq!(short.step(1 << 20), Ok(false));
        }
        short.end();
        assert!(matches!(
            short.step(1 << 20),
            Err(DecodeError::Truncated(_))
        ));
        // Bytes after the last pair.
        let mut long = s.restore_streaming(300);
        long.feed(encoded.clone());
        long.feed(Bytes::from_static(&[0, 0]));
        assert_eq!(long.step(usize::MAX), Err(DecodeError::TrailingBytes(2)));
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
