//! Cluster membership: which nodes exist, how many cores each has, and their state.
//!
//! `ClusterTopology` carries a version (an `Epoch`) bumped on every change, so a reader can
//! tell whether its copy is current. The planner reads it to decide who may receive replicas:
//! only `Active` nodes do; `Draining` nodes are emptied; `Joining` and `Decommissioned` nodes
//! neither receive nor (for `Joining`) hold anything yet.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::constants::{CORES_PER_NODE_MAX, NODES_MAX};
use crate::ids::{Epoch, NodeId};

/// The lifecycle state of a node.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum NodeState {
    /// Announced but not yet ready to host replicas.
    Joining,
    /// Serving; may receive replicas and leadership.
    Active,
    /// Being emptied: its replicas move elsewhere; it receives nothing.
    Draining,
    /// Removed from service; must hold nothing.
    Decommissioned,
    /// Dead for longer than `dead_after` (the failure detector's view on the metadata
    /// leader): its replicas are replaced elsewhere. It returns to `Active` once heard
    /// alive again.
    Down,
}

impl NodeState {
    /// Whether the planner may place new replicas or leadership on a node in this state.
    pub fn accepts_replicas(self) -> bool {
        matches!(self, NodeState::Active)
    }

    /// Whether replicas on a node in this state must move away.
    pub fn must_be_emptied(self) -> bool {
        matches!(
            self,
            NodeState::Draining | NodeState::Decommissioned | NodeState::Down
        )
    }
}

/// What the cluster knows about one node.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeInfo {
    pub node_id: NodeId,
    /// Address of the node's core 0 endpoint, `host:port`; core `i` listens on `port + i`.
    pub addr: String,
    /// Number of cores (executors) the node runs; each hosts a share of its replicas.
    pub cores: u16,
    pub state: NodeState,
}

/// A rejected topology change.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum TopologyError {
    /// A node with this id is already a member.
    #[error("node {0} is already a member of the cluster")]
    DuplicateNode(NodeId),
    /// No node with this id is a member.
    #[error("node {0} is not a member of the cluster")]
    UnknownNode(NodeId),
    /// The node declares zero cores, or more than the supported maximum.
    #[error("node {node} declares {cores} cores; a node runs 1..={max} cores")]
    InvalidCoreCount { node: NodeId, cores: u16, max: u16 },
    /// The cluster already has the maximum number of nodes.
    #[error("the cluster already has {max} nodes, the supported maximum")]
    TooManyNodes { max: usize },
    /// The requested state change is not a valid lifecycle step.
    #[error("node {node} cannot go from {from:?} to {to:?}")]
    InvalidTransition {
        node: NodeId,
        from: NodeState,
        to: NodeState,
    },
}

/// The set of nodes and their states, versioned.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterTopology {
    version: Epoch,
    nodes: BTreeMap<NodeId, NodeInfo>,
}

impl ClusterTopology {
    pub fn new() -> ClusterTopology {
        ClusterTopology::default()
    }

    /// Bumped on every successful change.
    pub fn version(&self) -> Epoch {
        self.version
    }

    pub fn node(&self, id: NodeId) -> Option<&NodeInfo> {
        self.nodes.get(&id)
    }

    /// All nodes in ascending id order.
    pub fn nodes(&self) -> impl Iterator<Item = &NodeInfo> {
        self.nodes.values()
    }

    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    /// Nodes that may receive replicas, in ascending id order.
    pub fn active_nodes(&self) -> impl Iterator<Item = &NodeInfo> {
        self.nodes.values().filter(|n| n.state.accepts_replicas())
    }

    /// Adds a node. A new node normally starts `Joining`; tests and bootstrap may add it
    /// directly as `Active`.
    pub fn add_node(&mut self, info: NodeInfo) -> Result<Epoch, TopologyError> {
        if self.nodes.contains_key(&info.node_id) {
            return Err(TopologyError::DuplicateNode(info.node_id));
        }
        if self.nodes.len() >= NODES_MAX {
            return Err(TopologyError::TooManyNodes { max: NODES_MAX });
        }
        if info.cores == 0 || info.cores > CORES_PER_NODE_MAX {
            return Err(TopologyError::InvalidCoreCount {
                node: info.node_id,
                cores: info.cores,
                max: CORES_PER_NODE_MAX,
            });
        }
        self.nodes.insert(info.node_id, info);
        self.version = self.version.next();
        Ok(self.version)
    }

    /// Moves a node along its lifecycle: Joining → Active → Draining → Decommissioned,
    /// Draining → Active (a drain may be cancelled), Joining → Draining (a join given up),
    /// and Active ↔ Down. Setting the current state is a no-op
    /// that does not bump the version.
    pub fn set_state(&mut self, id: NodeId, to: NodeState) -> Result<Epoch, TopologyError> {
        let node = self
            .nodes
            .get_mut(&id)
            .ok_or(TopologyError::UnknownNode(id))?;
        let from = node.state;
        if from == to {
            return Ok(self.version);
        }
        use NodeState::*;
        let allowed = matches!(
            (from, to),
            (Joining, Active)
                | (Joining, Draining)
                | (Active, Draining)
                | (Draining, Active)
                | (Draining, Decommissioned)
                | (Active, Down)
                | (Down, Active)
                | (Down, Draining)
        );
        if !allowed {
            return Err(TopologyError::InvalidTransition { node: id, from, to });
        }
        node.state = to;
        self.version = self.version.next();
        Ok(self.version)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(id: u64, state: NodeState) -> NodeInfo {
        NodeInfo {
            node_id: NodeId(id),
            addr: format!("127.0.0.1:{}", 7000 + id),
            cores: 2,
            state,
        }
    }

    #[test]
    fn every_change_bumps_the_version_and_invalid_changes_do_not() {
        let mut t = ClusterTopology::new();
        assert_eq!(t.add_node(node(1, NodeState::Joining)), Ok(Epoch(1)));
        assert_eq!(t.set_state(NodeId(1), NodeState::Active), Ok(Epoch(2)));
        assert_eq!(t.set_state(NodeId(1), NodeState::Active), Ok(Epoch(2)));
        assert!(matches!(
            t.set_state(NodeId(1), NodeState::Joining),
            Err(TopologyError::InvalidTransition { .. })
        ));
        assert_eq!(
            t.add_node(node(1, NodeState::Active)),
            Err(TopologyError::DuplicateNode(NodeId(1)))
        );
        assert_eq!(
            t.set_state(NodeId(9), NodeState::Active),
            Err(TopologyError::UnknownNode(NodeId(9)))
        );
        assert_eq!(t.version(), Epoch(2));
        assert_eq!(t.set_state(NodeId(1), NodeState::Draining), Ok(Epoch(3)));
        assert_eq!(t.active_nodes().count(), 0);
    }

    #[test]
    fn zero_cores_is_rejected() {
        let mut t = ClusterTopology::new();
        let mut n = node(1, NodeState::Active);
        n.cores = 0;
        assert!(matches!(
            t.add_node(n),
            Err(TopologyError::InvalidCoreCount { .. })
        ));
    }
}
