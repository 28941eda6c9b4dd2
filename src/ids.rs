//! Typed identifiers used at every boundary of the crate.
//!
//! One concept, one word: a **node** is a process in the cluster, a **core** is one of its
//! executors, a **vShard** is a slice of the key space (and one Raft group), a **replica** is
//! one copy of a vShard placed on a `(node, core)` (its [`CoreAddress`]), a **group** is the
//! Raft group of one vShard (or the metadata group), an **epoch** counts changes to a piece of
//! metadata. Bare integers never cross a module boundary with these meanings.

use std::fmt;

use serde::{Deserialize, Serialize};

/// Identifies a node of the cluster. Stable for the node's lifetime; never reused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct NodeId(pub u64);

impl NodeId {
    /// The largest node id a configuration or a join may use (ids are `1..=MAX`).
    pub const MAX: u64 = 0xffff;
}

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

/// Identifies a Raft group: group 0 is the metadata group; data group `g ≥ 1` replicates
/// vShard `g − 1` (see [`GroupId::of_vshard`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct GroupId(pub u64);

impl GroupId {
    /// The metadata group: topology and placement, on core 0 of its nodes.
    pub const METADATA: GroupId = GroupId(0);

    /// The group that replicates `vshard`.
    pub fn of_vshard(vshard: VShardId) -> GroupId {
        GroupId(u64::from(vshard.0) + 1)
    }

    /// The vShard this data group replicates; `None` for the metadata group (or an id past
    /// the vShard range).
    pub fn vshard(self) -> Option<VShardId> {
        self.0
            .checked_sub(1)
            .and_then(|v| u32::try_from(v).ok())
            .map(VShardId)
    }
}

/// A replica's id inside Raft: unique in the cluster and never reused.
///
/// Two ranges, defined here once: the replicas a group starts with are
/// [`ReplicaId::initial`] (below 2^48), and every replica a move creates takes the next id
/// of a counter from [`ReplicaId::MOVED_FROM`] kept in the placement table.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ReplicaId(pub u64);

impl ReplicaId {
    /// The first id a replica move hands out; initial ids stay below it.
    pub const MOVED_FROM: u64 = 1 << 48;

    /// Marks the metadata-group replica of a node that joined a running cluster.
    const METADATA_LEARNER: u64 = 1 << 40;

    /// The node-id bits of a joined node's metadata replica id (`metadata_learner`); every
    /// node id (at most [`NodeId::MAX`]) fits in them.
    const NODE_ID_BITS: u64 = (1 << 40) - 1;

    /// The metadata-group replica of `node` when it joined a running cluster (a learner of
    /// the group): above every initial id of group 0, below the ids moves hand out.
    pub fn metadata_learner(node: NodeId) -> ReplicaId {
        const { assert!(NodeId::MAX <= ReplicaId::NODE_ID_BITS) };
        ReplicaId(Self::METADATA_LEARNER | (node.0 & Self::NODE_ID_BITS))
    }

    /// The id of the `ordinal`-th replica `group` starts with: `(group << 16) | (ordinal +
    /// 1)`.
    pub fn initial(group: GroupId, ordinal: usize) -> ReplicaId {
        debug_assert!(ordinal < 0xffff && group.0 < 1 << 32);
        ReplicaId((group.0 << 16) | (ordinal as u64 + 1))
    }
}

/// Where a replica lives: a core of a node. The one address type of the crate (placement,
/// routing, Raft messages, moves).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct CoreAddress {
    pub node: NodeId,
    pub core: CoreId,
}

impl CoreAddress {
    pub fn new(node: NodeId, core: CoreId) -> CoreAddress {
        CoreAddress { node, core }
    }
}

/// What the holder of a certificate may do; the role is carried in the certificate (see
/// `runtime::tls`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Role {
    /// Reads and writes data, reads the placement table.
    Client,
    /// A client that may also run the cluster: start and abandon moves, change a node's
    /// state, transfer leadership, read a group's view.
    Admin,
    /// A node: speaks the peer protocol as itself, and may do what an admin does and what
    /// only the migration executor does (membership changes).
    Node(NodeId),
}

impl Role {
    /// Whether this role may run the cluster (an admin or a node).
    pub fn administers(self) -> bool {
        !matches!(self, Role::Client)
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Role::Client => write!(f, "client"),
            Role::Admin => write!(f, "admin"),
            Role::Node(n) => write!(f, "node {n}"),
        }
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

impl fmt::Display for CoreAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.node, self.core)
    }
}
