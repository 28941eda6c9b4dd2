//! The static shape of a cluster every node agrees on at its first start: the nodes with
//! the address their cores listen on, cores per node, vShard groups, replicas per group.
//!
//! Everything a new cluster derives from it is defined here once: its topology, its initial
//! placement table (by the one rule of `cluster::placement`), the metadata group's voters,
//! and the bootstrap command the metadata group's first leader proposes. A socket address
//! is a value here; nothing in this module opens a socket.

use std::net::SocketAddr;

use crate::cluster::metadata::MetadataCommand;
use crate::cluster::placement::{PlacementError, PlacementTable};
use crate::cluster::topology::{ClusterTopology, NodeInfo, NodeState};
use crate::ids::{CoreAddress, CoreId, GroupId, NodeId, ReplicaId};

/// What a node answers `KvOp::Cluster` with: the spec the cluster was bootstrapped with
/// and its members now, as that node knows them. A node joining with `start --join` takes
/// its settings from it.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ClusterInfo {
    /// The nodes the cluster was bootstrapped with (the metadata group's voters).
    pub founders: Vec<(NodeId, SocketAddr)>,
    pub cores: u16,
    pub groups: u32,
    pub replicas: u16,
    /// Every member the metadata group records (empty before it is bootstrapped).
    pub nodes: Vec<NodeInfo>,
}

impl ClusterInfo {
    /// The spec the cluster was bootstrapped with.
    pub fn spec(&self) -> ClusterSpec {
        ClusterSpec {
            nodes: self.founders.clone(),
            cores: self.cores,
            groups: self.groups,
            replicas: self.replicas,
        }
    }
}

/// Where `core` of a node whose core 0 listens on `base` listens: the port plus the core.
pub fn core_address(base: SocketAddr, core: CoreId) -> Option<SocketAddr> {
    let port = base.port().checked_add(core.0)?;
    Some(SocketAddr::new(base.ip(), port))
}

/// The static shape of a cluster.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClusterSpec {
    /// Every node and the IP + base port its cores listen on (core `i` on `base + i`).
    pub nodes: Vec<(NodeId, SocketAddr)>,
    pub cores: u16,
    /// Data groups (vShards); group ids are `1..=groups`.
    pub groups: u32,
    /// Replicas per data group in a new cluster (capped by the number of nodes). The
    /// metadata group has a replica on core 0 of every node.
    pub replicas: u16,
}

impl ClusterSpec {
    /// The UDP address of `core` on `node`; `None` for a node not in the spec or a core
    /// it does not have (a hint from the network may name anything).
    pub fn address(&self, node: NodeId, core: CoreId) -> Option<SocketAddr> {
        if core.0 >= self.cores {
            return None;
        }
        let (_, base) = self.nodes.iter().find(|(n, _)| *n == node)?;
        core_address(*base, core)
    }

    /// The nodes as a new cluster's topology: all active.
    pub fn topology(&self) -> ClusterTopology {
        let mut topology = ClusterTopology::new();
        for info in self.node_infos() {
            // Duplicate ids are refused when a configuration is loaded; a repeat is skipped.
            let _ = topology.add_node(info);
        }
        topology
    }

    /// Where a new cluster's replicas go: the initial placement rule over its topology.
    pub fn initial_table(&self) -> Result<PlacementTable, PlacementError> {
        PlacementTable::initial(&self.topology(), self.groups, usize::from(self.replicas))
    }

    /// The metadata group's voters: core 0 of every node, in node id order, the `k`-th
    /// with [`ReplicaId::initial`]`(METADATA, k)`.
    pub fn metadata_voters(&self) -> Vec<(ReplicaId, CoreAddress)> {
        let mut nodes: Vec<NodeId> = self.nodes.iter().map(|(n, _)| *n).collect();
        nodes.sort_unstable();
        nodes.dedup();
        nodes
            .into_iter()
            .enumerate()
            .map(|(k, node)| {
                (
                    ReplicaId::initial(GroupId::METADATA, k),
                    CoreAddress::new(node, CoreId(0)),
                )
            })
            .collect()
    }

    /// The command that bootstraps the metadata group: the topology and the initial table.
    pub fn bootstrap_command(&self) -> Result<MetadataCommand, PlacementError> {
        let table = self.initial_table()?;
        Ok(MetadataCommand::Bootstrap {
            nodes: self.node_infos(),
            groups: table
                .groups()
                .map(|(g, p)| (g, p.replicas.iter().map(|r| (r.id, r.at)).collect()))
                .collect(),
        })
    }

    fn node_infos(&self) -> Vec<NodeInfo> {
        self.nodes
            .iter()
            .map(|(node, addr)| NodeInfo {
                node_id: *node,
                addr: addr.to_string(),
                cores: self.cores,
                state: NodeState::Active,
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(nodes: u64) -> ClusterSpec {
        ClusterSpec {
            nodes: (1..=nodes)
                .map(|n| {
                    (
                        NodeId(n),
                        SocketAddr::from(([127, 0, 0, 1], 7000 + n as u16 * 10)),
                    )
                })
                .collect(),
            cores: 2,
            groups: 8,
            replicas: 3,
        }
    }

    #[test]
    fn a_new_cluster_derives_its_table_voters_and_bootstrap_from_the_spec() {
        let s = spec(4);
        let table = s.initial_table().unwrap();
        assert_eq!(table.vshard_count(), 8);
        assert!(table.iter().all(|(_, p)| p.replicas.len() == 3));
        let voters = s.metadata_voters();
        assert_eq!(voters.len(), 4);
        assert_eq!(
            voters[2],
            (ReplicaId(3), CoreAddress::new(NodeId(3), CoreId(0)))
        );
        let Ok(MetadataCommand::Bootstrap { nodes, groups }) = s.bootstrap_command() else {
            panic!("a bootstrap");
        };
        assert_eq!(nodes.len(), 4);
        assert_eq!(groups.len(), 8);
        assert_eq!(groups[0].0, GroupId(1));
        assert_eq!(
            s.address(NodeId(2), CoreId(1)),
            Some(SocketAddr::from(([127, 0, 0, 1], 7021)))
        );
        assert_eq!(s.address(NodeId(9), CoreId(0)), None);
        assert_eq!(s.address(NodeId(2), CoreId(2)), None, "no core 2");
        assert_eq!(s.address(NodeId(2), CoreId(u16::MAX)), None);
    }
}
