//! The placement table: for every vShard, its replicas as `(node, core)` and a leader hint.
//!
//! Every change bumps both the vShard's epoch and the table's epoch, so clients and peers
//! can detect stale routing. Invariants kept by every mutation (checked by `validate`):
//! a vShard has at least one replica, no two replicas on the same node (a node failure must
//! never take out two copies), and the leader hint names one of the replicas.
//!
//! The initial placement uses rendezvous (highest-random-weight) hashing over the active
//! nodes, so adding a node to a fresh cluster moves only the vShards it wins, and assigns
//! cores round-robin inside each node so every core hosts the same number of replicas.

use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::cluster::topology::ClusterTopology;
use crate::constants::{REPLICATION_FACTOR_MAX, VSHARD_COUNT_MAX};
use crate::ids::{CoreId, Epoch, NodeId, Placement, VShardId};
use crate::rng::mix64;

/// Where one vShard's replicas live.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VShardPlacement {
    /// One entry per replica, at most one per node.
    pub replicas: Vec<Placement>,
    /// Index into `replicas` of the replica believed to lead the group.
    pub leader: usize,
    /// Bumped whenever this vShard's replicas or leader change.
    pub epoch: Epoch,
}

impl VShardPlacement {
    /// The replica believed to lead this vShard's group.
    pub fn leader(&self) -> Placement {
        self.replicas[self.leader]
    }

    /// The replica on `node`, if any.
    pub fn replica_on(&self, node: NodeId) -> Option<Placement> {
        self.replicas.iter().copied().find(|p| p.node == node)
    }
}

/// A rejected placement change or an invalid placement request.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum PlacementError {
    /// The vShard id is outside the table.
    #[error("vShard {0} does not exist in this placement table")]
    UnknownVShard(VShardId),
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
        source_placement: Placement,
    },
    /// The target node already holds a replica of the vShard.
    #[error("{vshard} already has a replica on node {node}")]
    AlreadyOnNode { vshard: VShardId, node: NodeId },
    /// A leader transfer names a target that is not a replica, or the current leader.
    #[error("{vshard}: cannot transfer leadership to {target}")]
    InvalidLeaderTarget { vshard: VShardId, target: Placement },
    /// `validate` found a broken invariant.
    #[error("{vshard}: invalid placement: {reason}")]
    Invalid {
        vshard: VShardId,
        reason: &'static str,
    },
}

/// vShard → replicas, with epochs.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlacementTable {
    epoch: Epoch,
    vshards: Vec<VShardPlacement>,
}

impl PlacementTable {
    /// Places `vshard_count` vShards with `replication_factor` replicas each (capped by the
    /// number of active nodes) using rendezvous hashing. The leader hint is the replica whose
    /// node ranks first for the vShard, which spreads leaders as evenly as replicas.
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
        for v in 0..vshard_count {
            ranked.clear();
            ranked.extend(
                nodes
                    .iter()
                    .enumerate()
                    .map(|(i, (id, _))| (rendezvous_weight(VShardId(v), *id), i)),
            );
            // Highest weight first; ties (practically impossible) broken by node order.
            ranked.sort_unstable_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)));
            let replicas = ranked[..r]
                .iter()
                .map(|&(_, i)| {
                    let (node, cores) = nodes[i];
                    let core = next_core[i];
                    next_core[i] = (core + 1) % cores;
                    Placement::new(node, CoreId(core))
                })
                .collect();
            vshards.push(VShardPlacement {
                replicas,
                leader: 0,
                epoch: Epoch(1),
            });
        }
        Ok(PlacementTable {
            epoch: Epoch(1),
            vshards,
        })
    }

    /// Bumped on every change to any vShard.
    pub fn epoch(&self) -> Epoch {
        self.epoch
    }

    pub fn vshard_count(&self) -> u32 {
        self.vshards.len() as u32
    }

    pub fn get(&self, vshard: VShardId) -> Option<&VShardPlacement> {
        self.vshards.get(vshard.0 as usize)
    }

    /// All vShards in id order.
    pub fn iter(&self) -> impl Iterator<Item = (VShardId, &VShardPlacement)> {
        self.vshards
            .iter()
            .enumerate()
            .map(|(i, p)| (VShardId(i as u32), p))
    }

    /// Makes the replica on `target` the leader hint of `vshard`.
    pub fn transfer_leader(
        &mut self,
        vshard: VShardId,
        target: Placement,
    ) -> Result<Epoch, PlacementError> {
        let entry = self.entry_mut(vshard)?;
        let index = entry
            .replicas
            .iter()
            .position(|p| *p == target)
            .filter(|&i| i != entry.leader)
            .ok_or(PlacementError::InvalidLeaderTarget { vshard, target })?;
        entry.leader = index;
        Ok(self.bump(vshard))
    }

    /// Replaces the replica on `source` by one on `target`. When the source led the group,
    /// the target becomes the leader hint: the migration transfers leadership to the new
    /// replica before removing the old one.
    pub fn move_replica(
        &mut self,
        vshard: VShardId,
        source: Placement,
        target: Placement,
    ) -> Result<Epoch, PlacementError> {
        let entry = self.entry_mut(vshard)?;
        let index = entry.replicas.iter().position(|p| *p == source).ok_or(
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
        entry.replicas[index] = target;
        Ok(self.bump(vshard))
    }

    /// Checks the invariants listed in the module documentation.
    pub fn validate(&self) -> Result<(), PlacementError> {
        for (vshard, entry) in self.iter() {
            if entry.replicas.is_empty() {
                return Err(PlacementError::Invalid {
                    vshard,
                    reason: "no replicas",
                });
            }
            if entry.leader >= entry.replicas.len() {
                return Err(PlacementError::Invalid {
                    vshard,
                    reason: "leader is not a replica",
                });
            }
            for (i, a) in entry.replicas.iter().enumerate() {
                if entry.replicas[..i].iter().any(|b| b.node == a.node) {
                    return Err(PlacementError::Invalid {
                        vshard,
                        reason: "two replicas on one node",
                    });
                }
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
        self.epoch
    }
}

/// The rendezvous weight of `node` for `vshard`: stable across versions, like the key hash.
pub fn rendezvous_weight(vshard: VShardId, node: NodeId) -> u64 {
    mix64(mix64(u64::from(vshard.0)) ^ node.0.rotate_left(32))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::topology::{NodeInfo, NodeState};

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
            for p in &entry.replicas {
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
        let target = Placement::new(outsider, CoreId(1));
        table.move_replica(v, entry.leader(), target).unwrap();
        assert!(table.epoch() > before);
        assert_eq!(
            table.get(v).unwrap().leader(),
            target,
            "leadership follows a moved leader"
        );
        assert_eq!(table.get(v).unwrap().epoch, entry.epoch.next());
        let follower = table.get(v).unwrap().replicas[1];
        assert!(matches!(
            table.move_replica(v, follower, Placement::new(outsider, CoreId(0))),
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
}
