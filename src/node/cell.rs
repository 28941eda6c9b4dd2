//! The state machine of a core's groups: a data group holds a `KvStore`, the metadata group
//! (group 0) a `MetadataStore`. One type, so one `RaftHost` hosts both.

use crate::cluster::metadata::MetadataStore;
use bytes::Bytes;

use crate::replication::kv::{KvStore, KvView, StateMachine};
use crate::wire::codec::DecodeError;

/// The state machine of a node's groups: data groups hold a `KvStore`, the metadata group
/// (group 0) a `MetadataStore`.
#[derive(Clone, Debug)]
pub enum Cell {
    Kv(KvStore),
    Meta(MetadataStore),
}

impl Cell {
    pub fn kv(&self) -> Option<&KvStore> {
        match self {
            Cell::Kv(s) => Some(s),
            Cell::Meta(_) => None,
        }
    }

    pub fn meta(&self) -> Option<&MetadataStore> {
        match self {
            Cell::Meta(m) => Some(m),
            Cell::Kv(_) => None,
        }
    }
}

impl StateMachine for Cell {
    fn apply(&mut self, index: u64, command: &[u8]) -> Vec<u8> {
        match self {
            Cell::Kv(s) => s.apply(index, command),
            Cell::Meta(m) => m.apply(index, command),
        }
    }

    fn applied_index(&self) -> u64 {
        match self {
            Cell::Kv(s) => s.applied_index(),
            Cell::Meta(m) => m.applied_index(),
        }
    }

    fn snapshot(&self) -> Vec<u8> {
        match self {
            Cell::Kv(s) => s.snapshot(),
            Cell::Meta(m) => m.snapshot(),
        }
    }

    fn view(&self) -> Option<KvView> {
        match self {
            Cell::Kv(s) => Some(s.view()),
            Cell::Meta(_) => None,
        }
    }

    fn restore(&mut self, index: u64, snapshot: &Bytes) -> Result<(), DecodeError> {
        match self {
            Cell::Kv(s) => s.restore(index, snapshot),
            Cell::Meta(m) => m.restore(index, snapshot),
        }
    }

    fn bytes_stored(&self) -> u64 {
        match self {
            Cell::Kv(s) => s.bytes_stored(),
            Cell::Meta(m) => m.bytes_stored(),
        }
    }
}
