//! The placement table: for every vShard, its group's replicas (Raft id and core), a leader
//! hint, the configuration the group started with, and the replica move under way. The one
//! table of the crate: the metadata group keeps it (`cluster::metadata`), cores host what it
//! places on them, clients route by it, and the planner and its harness plan on it.
//!
//! Every change bumps both the vShard's epoch and the table's epoch, so clients and peers
//! can detect stale routing. Invariants kept by every mutation (checked by `validate`): a
//! vShard has at least one replica, replica ids are distinct, no two replicas share a node
//! (a node failure must never take out two copies) except the two ends of a move between
//! cores of one node, and the leader hint names one of the replicas.
//!
//! **The initial placement rule** ([`PlacementTable::initial`], the only one): rendezvous
//! (highest-random-weight) hashing over the active nodes, so adding a node to a fresh cluster
//! moves only the vShards it wins; cores assigned round-robin inside each node so every core
//! hosts the same number of replicas; the `k`-th replica of group `g` gets the id
//! [`ReplicaId::initial`]`(g, k)`. A replica move adds a replica whose id comes from the
//! table's counter (from [`ReplicaId::MOVED_FROM`]), so an id is never reused.

use thiserror::Error;

use crate::cluster::topology::{ClusterTopology, NodeState};
use crate::constants::{REPLICATION_FACTOR_MAX, VSHARD_COUNT_MAX};
use crate::ids::{CoreAddress, CoreId, Epoch, GroupId, NodeId, ReplicaId, VShardId};
use crate::rng::mix64;

/// One replica of a vShard's group: its Raft id and the core it lives on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Replica {
    pub id: ReplicaId,
    pub at: CoreAddress,
}

/// A replica move recorded in the table: `from` is being replaced by `new` at `to`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PendingMove {
    pub from: ReplicaId,
    pub new: ReplicaId,
    pub to: CoreAddress,
    /// An operator asked to give the move up.
    pub abandon: bool,
}

/// Where one vShard's replicas live.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VShardPlacement {
    /// One entry per replica; during a move the new replica is listed too.
    pub replicas: Vec<Replica>,
    /// Index into `replicas` of the replica believed to lead the group. A hint: the
    /// metadata group does not track leadership (it changes without a metadata command);
    /// the planner's inputs set it from what cores report.
    pub leader: usize,
    /// Bumped whenever this vShard's replicas or leader hint change.
    pub epoch: Epoch,
    /// The voters the group started with: the configuration at index 0 of every replica's
    /// log, which a new replica's log must start from too.
    pub initial: Vec<ReplicaId>,
    /// The move under way, if any (at most one per vShard).
    pub moving: Option<PendingMove>,
}

impl VShardPlacement {
    /// The replica believed to lead this vShard's group.
    pub fn leader(&self) -> CoreAddress {
        self.replicas[self.leader].at
    }

    /// The replica on `node`, if any (the first, during a move between its cores).
    pub fn replica_on(&self, node: NodeId) -> Option<CoreAddress> {
        self.replicas.iter().map(|r| r.at).find(|a| a.node == node)
    }

    /// Where replica `id` lives, if it is one of this vShard's.
    pub fn address_of(&self, id: ReplicaId) -> Option<CoreAddress> {
        self.replicas.iter().find(|r| r.id == id).map(|r| r.at)
    }

    /// The replicas' cores, in table order.
    pub fn addresses(&self) -> impl Iterator<Item = CoreAddress> + '_ {
        self.replicas.iter().map(|r| r.at)
    }
}

/// How many replicas `PackedSites` holds: a replication factor of 3 during a move.
const PACKED_SLOTS: usize = 4;

/// The cores of one vShard's replicas, packed for the sweeps that read every vShard (the
/// planner's model build): `node << 16 | core` per replica, the leader's index, and whether
/// a move is under way, in 20 bytes and one array with the other vShards'. Reading the
/// entries instead means following each one's heap list of 24-byte replicas: at 65 536
/// vShards that walk streamed ~12 MB and was half of a sweep's model build (ARCHITECTURE,
/// *The planner*, Speed). A vShard with more replicas than the slots, or a node id or core
/// beyond 16 bits, is marked `overflow`; its entry says where its replicas are.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PackedSites {
    slots: [u32; PACKED_SLOTS],
    len: u8,
    /// Index of the leader hint (`u8::MAX` when the entry's is out of range).
    leader: u8,
    moving: bool,
    overflow: bool,
}

impl PackedSites {
    fn of(entry: &VShardPlacement) -> PackedSites {
        let mut packed = PackedSites {
            leader: u8::try_from(entry.leader)
                .ok()
                .filter(|&l| usize::from(l) < entry.replicas.len())
                .unwrap_or(u8::MAX),
            moving: entry.moving.is_some(),
            overflow: entry.replicas.len() > PACKED_SLOTS,
            ..PackedSites::default()
        };
        for (slot, r) in packed.slots.iter_mut().zip(&entry.replicas) {
            match (u16::try_from(r.at.node.0), r.at.core.0) {
                (Ok(node), core) => *slot = u32::from(node) << 16 | u32::from(core),
                (Err(_), _) => packed.overflow = true,
            }
        }
        packed.len = entry.replicas.len().min(PACKED_SLOTS) as u8;
        packed
    }

    /// A move of one of the replicas is under way.
    pub fn moving(&self) -> bool {
        self.moving
    }

    /// The node id and core a packed slot names.
    #[inline]
    pub fn unpack(slot: u32) -> (u16, u16) {
        ((slot >> 16) as u16, slot as u16)
    }

    /// The packed cores (`node << 16 | core`) in table order and the leader hint's index
    /// (`u8::MAX` if out of range); `None` when they do not fit (`overflow`).
    #[inline]
    pub fn slots(&self) -> Option<(&[u32], usize)> {
        (!self.overflow).then(|| {
            (
                &self.slots[..usize::from(self.len)],
                usize::from(self.leader),
            )
        })
    }
}

/// A rejected placement change or an invalid placement request.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum PlacementError {
    /// The vShard (or group) is outside the table.
    #[error("{0} does not exist in this placement table")]
    UnknownVShard(VShardId),
    /// The group id names no vShard of the table (the metadata group, or past the end).
    #[error("group {0} does not exist")]
    UnknownGroup(u64),
    /// No active node can hold a replica.
    #[error("no active node can hold replicas")]
    NoActiveNodes,
    /// The replication factor is zero or above the supported maximum.
    #[error("replication factor {0} is outside 1..={max}", max = REPLICATION_FACTOR_MAX)]
    InvalidReplicationFactor(usize),
    /// The vShard count is zero or above the supported maximum.
    #[error("vShard count {0} is outside 1..={max}", max = VSHARD_COUNT_MAX)]
    InvalidVShardCount(u32),
    /// The source of a move holds no replica of the vShard.
    #[error("{vshard} has no replica on {source_placement}")]
    NotAReplica {
        vshard: VShardId,
        source_placement: CoreAddress,
    },
    /// A move names a replica id the group does not have.
    #[error("group {group} has no replica {replica}")]
    NoSuchReplica { group: u64, replica: u64 },
    /// The target node already holds a replica of the vShard.
    #[error("node {node} already holds a replica of {vshard}")]
    AlreadyOnNode { vshard: VShardId, node: NodeId },
    /// A leader transfer names a target that is not a replica, or the current leader.
    #[error("{vshard}: cannot transfer leadership to {target}")]
    InvalidLeaderTarget {
        vshard: VShardId,
        target: CoreAddress,
    },
    /// A move's target node is not in the topology.
    #[error("node {0} is not in the cluster")]
    UnknownNode(NodeId),
    /// A move's target node does not accept replicas.
    #[error("node {node} is {state:?}, not active")]
    NodeNotActive { node: NodeId, state: NodeState },
    /// A replica names a core its node does not have.
    #[error("node {node} has {cores} cores; there is no core {core}")]
    NoSuchCore {
        node: NodeId,
        cores: u16,
        core: CoreId,
    },
    /// The vShard is already moving a replica (one move per vShard at a time).
    #[error("group {group} is already moving replica {from} to {to}")]
    AlreadyMoving {
        group: u64,
        from: u64,
        to: CoreAddress,
    },
    /// The move named is not the one under way.
    #[error("group {group} has no move to replica {new}")]
    NoSuchMove { group: u64, new: u64 },
    /// An abandon for a vShard that is not moving.
    #[error("group {0} is not moving a replica")]
    NotMoving(u64),
    /// An abandon for a move already being abandoned.
    #[error("group {0}'s move is already being abandoned")]
    AlreadyAbandoning(u64),
    /// `validate` (or a bootstrap) found a broken invariant.
    #[error("{vshard}: invalid placement: {reason}")]
    Invalid {
        vshard: VShardId,
        reason: &'static str,
    },
}

/// vShard → replicas, with epochs.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PlacementTable {
    epoch: Epoch,
    vshards: Vec<VShardPlacement>,
    /// `PackedSites` of each vShard, kept with every change (`PlacementTable::bump`).
    packed: Vec<PackedSites>,
    /// The id the next replica a move adds gets.
    next_replica: u64,
}

impl PlacementTable {
    /// Places `vshard_count` vShards with `replication_factor` replicas each (capped by the
    /// number of active nodes) by the initial placement rule (module documentation). The
    /// leader hint is the replica whose node ranks first for the vShard, which spreads
    /// leaders as evenly as replicas. The table is at epoch 0: no metadata group recorded it
    /// yet (a bootstrap records it at epoch 1, so any recorded table is newer).
    pub fn initial(
        topology: &ClusterTopology,
        vshard_count: u32,
        replication_factor: usize,
    ) -> Result<PlacementTable, PlacementError> {
        if vshard_count == 0 || vshard_count > VSHARD_COUNT_MAX {
            return Err(PlacementError::InvalidVShardCount(vshard_count));
        }
        if replication_factor == 0 || replication_factor > REPLICATION_FACTOR_MAX {
            return Err(PlacementError::InvalidReplicationFactor(replication_factor));
        }
        let nodes: Vec<(NodeId, u16)> = topology
            .active_nodes()
            .map(|n| (n.node_id, n.cores))
            .collect();
        if nodes.is_empty() {
            return Err(PlacementError::NoActiveNodes);
        }
        let r = replication_factor.min(nodes.len());
        // Next core to use on each node: round-robin keeps per-core replica counts within one.
        let mut next_core = vec![0u16; nodes.len()];
        let mut ranked: Vec<(u64, usize)> = Vec::with_capacity(nodes.len());
        let mut vshards = Vec::with_capacity(vshard_count as usize);
        for v in (0..vshard_count).map(VShardId) {
            ranked.clear();
            ranked.extend(
                nodes
                    .iter()
                    .enumerate()
                    .map(|(i, (id, _))| (rendezvous_weight(v, *id), i)),
            );
            // Highest weight first; ties (practically impossible) broken by node order.
            ranked.sort_unstable_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)));
            let group = GroupId::of_vshard(v);
            let replicas: Vec<Replica> = ranked[..r]
                .iter()
                .enumerate()
                .map(|(k, &(_, i))| {
                    let (node, cores) = nodes[i];
                    let core = next_core[i];
                    next_core[i] = (core + 1) % cores;
                    Replica {
                        id: ReplicaId::initial(group, k),
                        at: CoreAddress::new(node, CoreId(core)),
                    }
                })
                .collect();
            vshards.push(VShardPlacement {
                initial: replicas.iter().map(|r| r.id).collect(),
                replicas,
                leader: 0,
                epoch: Epoch(0),
                moving: None,
            });
        }
        Ok(PlacementTable {
            epoch: Epoch(0),
            packed: vshards.iter().map(PackedSites::of).collect(),
            vshards,
            next_replica: ReplicaId::MOVED_FROM,
        })
    }

    /// A table from its parts, checked: vShard `v` is group `v + 1`, initial replica ids
    /// are below [`ReplicaId::MOVED_FROM`], every replica is on a known node and core, and
    /// the invariants hold. For a bootstrap command and for snapshots.
    pub fn from_parts(
        epoch: Epoch,
        vshards: Vec<VShardPlacement>,
        next_replica: u64,
        topology: &ClusterTopology,
    ) -> Result<PlacementTable, PlacementError> {
        if vshards.len() > VSHARD_COUNT_MAX as usize {
            return Err(PlacementError::InvalidVShardCount(vshards.len() as u32));
        }
        let table = PlacementTable {
            epoch,
            packed: vshards.iter().map(PackedSites::of).collect(),
            vshards,
            next_replica: next_replica.max(ReplicaId::MOVED_FROM),
        };
        for (vshard, entry) in table.iter() {
            for r in &entry.replicas {
                check_core(topology, r.at)?;
                if r.id.0 >= table.next_replica {
                    return Err(PlacementError::Invalid {
                        vshard,
                        reason: "replica id not yet handed out",
                    });
                }
            }
            if entry.initial.iter().any(|r| r.0 >= ReplicaId::MOVED_FROM) {
                return Err(PlacementError::Invalid {
                    vshard,
                    reason: "initial replica ids must be below 2^48",
                });
            }
        }
        table.validate()?;
        Ok(table)
    }

    /// Bumped on every change to any vShard.
    pub fn epoch(&self) -> Epoch {
        self.epoch
    }

    /// The id the next replica a move adds gets.
    pub fn next_replica(&self) -> u64 {
        self.next_replica
    }

    pub fn vshard_count(&self) -> u32 {
        self.vshards.len() as u32
    }

    pub fn get(&self, vshard: VShardId) -> Option<&VShardPlacement> {
        self.vshards.get(vshard.0 as usize)
    }

    /// The placement of data group `group` (`None` for the metadata group and unknown ids).
    pub fn group(&self, group: GroupId) -> Option<&VShardPlacement> {
        self.get(group.vshard()?)
    }

    /// Every vShard's `PackedSites`, indexed by vShard.
    pub fn packed(&self) -> &[PackedSites] {
        &self.packed
    }

    /// All vShards in id order.
    pub fn iter(&self) -> impl Iterator<Item = (VShardId, &VShardPlacement)> {
        self.vshards
            .iter()
            .enumerate()
            .map(|(i, p)| (VShardId(i as u32), p))
    }

    /// All data groups in id order.
    pub fn groups(&self) -> impl Iterator<Item = (GroupId, &VShardPlacement)> {
        self.iter().map(|(v, p)| (GroupId::of_vshard(v), p))
    }

    /// The replica of each group the table places on `at`.
    pub fn hosted_at(&self, at: CoreAddress) -> impl Iterator<Item = (GroupId, ReplicaId)> + '_ {
        self.groups()
            .filter_map(move |(g, p)| p.replicas.iter().find(|r| r.at == at).map(|r| (g, r.id)))
    }

    /// Makes the replica on `target` the leader hint of `vshard`.
    pub fn transfer_leader(
        &mut self,
        vshard: VShardId,
        target: CoreAddress,
    ) -> Result<Epoch, PlacementError> {
        let entry = self.entry_mut(vshard)?;
        let index = entry
            .replicas
            .iter()
            .position(|r| r.at == target)
            .filter(|&i| i != entry.leader)
            .ok_or(PlacementError::InvalidLeaderTarget { vshard, target })?;
        entry.leader = index;
        Ok(self.bump(vshard))
    }

    /// Replaces the replica on `source` by a new one on `target` at once (the planner's
    /// harness applies a plan as if executed). When the source led the group, the target
    /// becomes the leader hint: the migration transfers leadership to the new replica before
    /// removing the old one.
    pub fn move_replica(
        &mut self,
        vshard: VShardId,
        source: CoreAddress,
        target: CoreAddress,
    ) -> Result<Epoch, PlacementError> {
        let id = ReplicaId(self.next_replica);
        let entry = self.entry_mut(vshard)?;
        let index = entry.replicas.iter().position(|r| r.at == source).ok_or(
            PlacementError::NotAReplica {
                vshard,
                source_placement: source,
            },
        )?;
        // Moving to another core of the same node is allowed; a second replica on a node is not.
        if target.node != source.node && entry.replica_on(target.node).is_some() {
            return Err(PlacementError::AlreadyOnNode {
                vshard,
                node: target.node,
            });
        }
        entry.replicas[index] = Replica { id, at: target };
        self.next_replica += 1;
        Ok(self.bump(vshard))
    }

    /// Starts moving `group`'s replica `from` to the core `to`: a replica with a fresh id is
    /// added at `to` (its core then hosts it) and the move recorded. Refused while the group
    /// moves another replica, when `from` is not a replica, when `to`'s node is not active
    /// or lacks that core, and when that node holds another replica of the group (a replica
    /// may move between the cores of its node).
    pub fn start_move(
        &mut self,
        group: GroupId,
        from: ReplicaId,
        to: CoreAddress,
        topology: &ClusterTopology,
    ) -> Result<ReplicaId, PlacementError> {
        let new = ReplicaId(self.next_replica);
        let vshard = group
            .vshard()
            .ok_or(PlacementError::UnknownGroup(group.0))?;
        let node = topology
            .node(to.node)
            .ok_or(PlacementError::UnknownNode(to.node))?;
        if node.state != NodeState::Active {
            return Err(PlacementError::NodeNotActive {
                node: to.node,
                state: node.state,
            });
        }
        check_core(topology, to)?;
        let entry = self.entry_mut(vshard)?;
        if let Some(m) = entry.moving {
            return Err(PlacementError::AlreadyMoving {
                group: group.0,
                from: m.from.0,
                to: m.to,
            });
        }
        if entry.address_of(from).is_none() {
            return Err(PlacementError::NoSuchReplica {
                group: group.0,
                replica: from.0,
            });
        }
        if entry
            .replicas
            .iter()
            .any(|r| r.at.node == to.node && (r.id != from || r.at == to))
        {
            return Err(PlacementError::AlreadyOnNode {
                vshard,
                node: to.node,
            });
        }
        entry.replicas.push(Replica { id: new, at: to });
        entry.moving = Some(PendingMove {
            from,
            new,
            to,
            abandon: false,
        });
        self.next_replica += 1;
        self.bump(vshard);
        Ok(new)
    }

    /// Ends the move to `new`: `moved` removes the replica that left, otherwise (abandoned)
    /// `new` itself.
    pub fn end_move(
        &mut self,
        group: GroupId,
        new: ReplicaId,
        moved: bool,
    ) -> Result<(), PlacementError> {
        let vshard = group
            .vshard()
            .ok_or(PlacementError::UnknownGroup(group.0))?;
        let entry = self.entry_mut(vshard)?;
        let m = match entry.moving {
            Some(m) if m.new == new => m,
            _ => {
                return Err(PlacementError::NoSuchMove {
                    group: group.0,
                    new: new.0,
                });
            }
        };
        let gone = if moved { m.from } else { m.new };
        let leader = entry.replicas[entry.leader].id;
        entry.replicas.retain(|r| r.id != gone);
        // A departed leader's hint passes to its successor (or the first replica).
        let successor = if leader == gone { m.new } else { leader };
        entry.leader = entry
            .replicas
            .iter()
            .position(|r| r.id == successor)
            .unwrap_or(0);
        entry.moving = None;
        self.bump(vshard);
        Ok(())
    }

    /// Asks the migration executor to give up `group`'s move.
    pub fn abandon_move(&mut self, group: GroupId) -> Result<(), PlacementError> {
        let vshard = group
            .vshard()
            .ok_or(PlacementError::UnknownGroup(group.0))?;
        let entry = self.entry_mut(vshard)?;
        match entry.moving.as_mut() {
            Some(m) if !m.abandon => m.abandon = true,
            Some(_) => return Err(PlacementError::AlreadyAbandoning(group.0)),
            None => return Err(PlacementError::NotMoving(group.0)),
        }
        self.bump(vshard);
        Ok(())
    }

    /// Bumps the table's epoch for a change outside the placement (the topology): clients
    /// holding an older table fetch it again.
    pub fn bump_epoch(&mut self) -> Epoch {
        self.epoch = self.epoch.next();
        self.epoch
    }

    /// Checks the invariants listed in the module documentation.
    pub fn validate(&self) -> Result<(), PlacementError> {
        for (vshard, entry) in self.iter() {
            let invalid = |reason| PlacementError::Invalid { vshard, reason };
            if entry.replicas.is_empty() {
                return Err(invalid("no replicas"));
            }
            if entry.leader >= entry.replicas.len() {
                return Err(invalid("leader is not a replica"));
            }
            for (i, a) in entry.replicas.iter().enumerate() {
                for b in &entry.replicas[..i] {
                    if a.id == b.id {
                        return Err(invalid("two replicas with one id"));
                    }
                    let ends_of_a_move = entry.moving.is_some_and(|m| {
                        [a.id, b.id].contains(&m.from) && [a.id, b.id].contains(&m.new)
                    });
                    if a.at.node == b.at.node && !(ends_of_a_move && a.at.core != b.at.core) {
                        return Err(invalid("two replicas on one node"));
                    }
                }
            }
            if let Some(m) = entry.moving
                && (entry.address_of(m.new) != Some(m.to) || entry.address_of(m.from).is_none())
            {
                return Err(invalid("a move whose replicas are not listed"));
            }
        }
        Ok(())
    }

    fn entry_mut(&mut self, vshard: VShardId) -> Result<&mut VShardPlacement, PlacementError> {
        self.vshards
            .get_mut(vshard.0 as usize)
            .ok_or(PlacementError::UnknownVShard(vshard))
    }

    fn bump(&mut self, vshard: VShardId) -> Epoch {
        self.epoch = self.epoch.next();
        let entry = &mut self.vshards[vshard.0 as usize];
        entry.epoch = entry.epoch.next();
        self.packed[vshard.0 as usize] = PackedSites::of(entry);
        self.epoch
    }
}

/// `at`'s node is in the topology and has that core.
fn check_core(topology: &ClusterTopology, at: CoreAddress) -> Result<(), PlacementError> {
    let node = topology
        .node(at.node)
        .ok_or(PlacementError::UnknownNode(at.node))?;
    if at.core.0 >= node.cores {
        return Err(PlacementError::NoSuchCore {
            node: at.node,
            cores: node.cores,
            core: at.core,
        });
    }
    Ok(())
}

/// The rendezvous weight of `node` for `vshard`: stable across versions, like the key hash.
pub fn rendezvous_weight(vshard: VShardId, node: NodeId) -> u64 {
    mix64(mix64(u64::from(vshard.0)) ^ node.0.rotate_left(32))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::topology::NodeInfo;

    fn topology(nodes: u64, cores: u16) -> ClusterTopology {
        let mut t = ClusterTopology::new();
        for id in 0..nodes {
            t.add_node(NodeInfo {
                node_id: NodeId(id),
                addr: format!("127.0.0.1:{}", 7000 + id * 100),
                cores,
                state: NodeState::Active,
            })
            .unwrap();
        }
        t
    }

    #[test]
    fn initial_placement_spreads_replicas_over_nodes_and_evenly_over_cores() {
        let t = topology(5, 4);
        let table = PlacementTable::initial(&t, 1024, 3).unwrap();
        table.validate().unwrap();
        let mut per_node = [0usize; 5];
        let mut per_core = [[0usize; 4]; 5];
        let mut leaders = [0usize; 5];
        for (_, entry) in table.iter() {
            assert_eq!(entry.replicas.len(), 3);
            for p in entry.addresses() {
                per_node[p.node.0 as usize] += 1;
                per_core[p.node.0 as usize][p.core.0 as usize] += 1;
            }
            leaders[entry.leader().node.0 as usize] += 1;
        }
        let mean = 1024 * 3 / 5;
        for n in 0..5 {
            assert!(
                per_node[n].abs_diff(mean) < mean / 8,
                "node {n}: {per_node:?}"
            );
            let (lo, hi) = (
                per_core[n].iter().min().unwrap(),
                per_core[n].iter().max().unwrap(),
            );
            assert!(hi - lo <= 1, "cores of node {n}: {:?}", per_core[n]);
            assert!(
                leaders[n].abs_diff(1024 / 5) < 1024 / 5 / 4,
                "leaders {leaders:?}"
            );
        }
    }

    /// The packed sites of every vShard say what its entry says.
    fn assert_packed_matches(table: &PlacementTable) {
        assert_eq!(table.packed().len(), table.vshard_count() as usize);
        for ((v, entry), packed) in table.iter().zip(table.packed()) {
            assert_eq!(packed.moving(), entry.moving.is_some(), "{v}");
            let expected: Vec<(CoreAddress, bool)> = entry
                .replicas
                .iter()
                .enumerate()
                .map(|(i, r)| (r.at, i == entry.leader))
                .collect();
            match packed.slots() {
                Some((slots, leader)) => {
                    let sites: Vec<(CoreAddress, bool)> = slots
                        .iter()
                        .enumerate()
                        .map(|(i, &slot)| {
                            let (node, core) = PackedSites::unpack(slot);
                            let at = CoreAddress::new(NodeId(node.into()), CoreId(core));
                            (at, i == leader)
                        })
                        .collect();
                    assert_eq!(sites, expected, "{v}");
                }
                None => assert!(entry.replicas.len() > PACKED_SLOTS, "{v} overflowed"),
            }
        }
    }

    #[test]
    fn packed_sites_follow_every_change_and_overflow_past_four_replicas() {
        let t = topology(6, 2);
        let mut table = PlacementTable::initial(&t, 64, 3).unwrap();
        assert_packed_matches(&table);
        let g = GroupId::of_vshard(VShardId(5));
        let entry = table.group(g).unwrap().clone();
        let to_node = (0..6)
            .map(NodeId)
            .find(|n| entry.replica_on(*n).is_none())
            .unwrap();
        let new = table
            .start_move(
                g,
                entry.replicas[0].id,
                CoreAddress::new(to_node, CoreId(1)),
                &t,
            )
            .unwrap();
        assert_packed_matches(&table);
        let follower = table.group(g).unwrap().replicas[1].at;
        table.transfer_leader(VShardId(5), follower).unwrap();
        assert_packed_matches(&table);
        table.end_move(g, new, true).unwrap();
        assert_packed_matches(&table);
        // Five replicas during a move of a group of four: its entry is the only truth.
        let mut table = PlacementTable::initial(&t, 8, 4).unwrap();
        let entry = table.group(g).unwrap().clone();
        let to_node = (0..6)
            .map(NodeId)
            .find(|n| entry.replica_on(*n).is_none())
            .unwrap();
        table
            .start_move(
                g,
                entry.replicas[1].id,
                CoreAddress::new(to_node, CoreId(0)),
                &t,
            )
            .unwrap();
        assert!(table.packed()[5].slots().is_none());
        assert_packed_matches(&table);
    }

    #[test]
    fn initial_replica_ids_are_distinct_per_group_and_below_the_moved_range() {
        let table = PlacementTable::initial(&topology(3, 2), 4, 3).unwrap();
        let group = table.group(GroupId(2)).unwrap();
        let ids: Vec<u64> = group.replicas.iter().map(|r| r.id.0).collect();
        assert_eq!(ids, vec![(2 << 16) | 1, (2 << 16) | 2, (2 << 16) | 3]);
        assert_eq!(
            group.initial,
            group.replicas.iter().map(|r| r.id).collect::<Vec<_>>()
        );
        assert!(ids.iter().all(|id| *id < ReplicaId::MOVED_FROM));
        assert!(table.group(GroupId::METADATA).is_none());
        assert!(table.group(GroupId(5)).is_none());
    }

    #[test]
    fn replication_factor_is_capped_by_active_nodes() {
        let table = PlacementTable::initial(&topology(2, 1), 16, 3).unwrap();
        assert!(table.iter().all(|(_, e)| e.replicas.len() == 2));
        assert_eq!(
            PlacementTable::initial(&topology(0, 1), 16, 3),
            Err(PlacementError::NoActiveNodes)
        );
        assert_eq!(
            PlacementTable::initial(&topology(3, 1), 16, 0),
            Err(PlacementError::InvalidReplicationFactor(0))
        );
    }

    #[test]
    fn moves_bump_epochs_and_keep_invariants() {
        let t = topology(4, 2);
        let mut table = PlacementTable::initial(&t, 8, 3).unwrap();
        let v = VShardId(3);
        let entry = table.get(v).unwrap().clone();
        let outsider = (0..4)
            .map(NodeId)
            .find(|n| entry.replica_on(*n).is_none())
            .unwrap();
        let before = table.epoch();
        let target = CoreAddress::new(outsider, CoreId(1));
        table.move_replica(v, entry.leader(), target).unwrap();
        assert!(table.epoch() > before);
        assert_eq!(
            table.get(v).unwrap().leader(),
            target,
            "leadership follows a moved leader"
        );
        assert_eq!(table.get(v).unwrap().epoch, entry.epoch.next());
        let follower = table.get(v).unwrap().replicas[1].at;
        assert!(matches!(
            table.move_replica(v, follower, CoreAddress::new(outsider, CoreId(0))),
            Err(PlacementError::AlreadyOnNode { .. })
        ));
        table.transfer_leader(v, follower).unwrap();
        assert_eq!(table.get(v).unwrap().leader(), follower);
        assert!(
            table.transfer_leader(v, follower).is_err(),
            "already the leader"
        );
        assert!(table.transfer_leader(VShardId(99), follower).is_err());
        table.validate().unwrap();
    }

    #[test]
    fn a_recorded_move_adds_a_fresh_replica_then_removes_the_one_that_left() {
        let t = topology(4, 2);
        let mut table = PlacementTable::initial(&t, 4, 3).unwrap();
        let g = GroupId(1);
        let entry = table.group(g).unwrap().clone();
        let from = entry.replicas[0];
        let spare = (0..4)
            .map(NodeId)
            .find(|n| entry.replica_on(*n).is_none())
            .unwrap();
        let to = CoreAddress::new(spare, CoreId(1));
        let new = table.start_move(g, from.id, to, &t).unwrap();
        assert_eq!(new, ReplicaId(ReplicaId::MOVED_FROM));
        table.validate().unwrap();
        assert!(matches!(
            table.start_move(g, from.id, to, &t),
            Err(PlacementError::AlreadyMoving { .. })
        ));
        assert_eq!(table.group(g).unwrap().address_of(new), Some(to));
        table.abandon_move(g).unwrap();
        assert_eq!(
            table.abandon_move(g),
            Err(PlacementError::AlreadyAbandoning(1))
        );
        assert!(table.end_move(g, ReplicaId(5), true).is_err());
        table.end_move(g, new, true).unwrap();
        let after = table.group(g).unwrap();
        assert_eq!(after.replicas.len(), 3);
        assert!(after.address_of(from.id).is_none());
        assert_eq!(
            after.leader(),
            to,
            "the leader hint follows the departed leader"
        );
        assert_eq!(
            after.initial, entry.initial,
            "the initial voters never change"
        );
        // Between cores of one node is allowed; onto a node holding another replica is not.
        let other_core = CoreAddress::new(to.node, CoreId(0));
        let newer = table.start_move(g, new, other_core, &t).unwrap();
        table.validate().unwrap();
        table.end_move(g, newer, false).unwrap();
        let busy = table.group(g).unwrap().replicas[1].at;
        assert!(matches!(
            table.start_move(g, new, busy, &t),
            Err(PlacementError::AlreadyOnNode { .. })
        ));
        assert!(matches!(
            table.start_move(g, new, CoreAddress::new(NodeId(9), CoreId(0)), &t),
            Err(PlacementError::UnknownNode(NodeId(9)))
        ));
        assert!(table.start_move(GroupId::METADATA, new, to, &t).is_err());
        table.validate().unwrap();
    }
}
