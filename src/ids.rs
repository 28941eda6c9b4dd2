//! Typed identifiers used at every boundary of the crate.
//!
//! One concept, one word: a **node** is a process in the cluster, a **core** is one of its
//! executors, a **vShard** is a slice of the key space (and one Raft group), a **replica** is
//! one copy of a vShard placed on a `(node, core)`, an **epoch** counts changes to a piece of
//! metadata. Bare integers never cross a module boundary with these meanings.

use std::fmt;

use serde::{Deserialize, Serialize};

/// Identifies a node of the cluster. Stable for the node's lifetime; never reused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct NodeId(pub u64);

/// Index of a core (executor) inside one node: `0..cores`. Core 0 is the coordinator core.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct CoreId(pub u16);

/// Identifies a vShard: `0..vshard_count`. A vShard is replicated by exactly one Raft group.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct VShardId(pub u32);

/// A monotonically increasing version of a piece of metadata (placement, topology).
///
/// Readers compare epochs to detect stale caches; writers bump it on every change.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
pub struct Epoch(pub u64);

impl Epoch {
    /// The epoch that follows this one.
    #[must_use]
    pub fn next(self) -> Epoch {
        Epoch(self.0.checked_add(1).expect("epoch overflow: 2^64 changes"))
    }
}

/// Where one replica of a vShard lives: a core of a node.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Placement {
    pub node: NodeId,
    pub core: CoreId,
}

impl Placement {
    pub fn new(node: NodeId, core: CoreId) -> Placement {
        Placement { node, core }
    }
}

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "n{}", self.0)
    }
}

impl fmt::Display for CoreId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "c{}", self.0)
    }
}

impl fmt::Display for VShardId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "v{}", self.0)
    }
}

impl fmt::Display for Epoch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "e{}", self.0)
    }
}

impl fmt::Display for Placement {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.node, self.core)
    }
}
