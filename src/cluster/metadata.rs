//! The metadata group's state machine (group 0): topology and placement, with epochs.
//!
//! Every change to the cluster's shape goes through this group's Raft log, which is the
//! change log every node follows: the nodes and their states, and the placement table
//! (`cluster::placement`: every vShard's replicas as `(replica id, node, core)`, the move
//! under way, an epoch bumped on every change). Readers compare epochs to detect stale
//! routing. Commands are validated when applied, on every replica alike: an invalid one is
//! rejected deterministically, never half-applied.
//!
//! ```text
//! command = 1 bootstrap  nodes:(count (id:varint cores:varint addr:bytes state:u8)*)
//!                        groups:(count (group:varint replicas)*)
//!         | 2 node_state node:varint state:u8        (0 joining, 1 active, 2 draining, 3 decommissioned, 4 down)
//!         | 4 start_move group:varint from:varint node:varint core:varint
//!         | 5 end_move   group:varint new:varint moved:u8
//!         | 6 abandon_move group:varint
//!         | 7 add_node   id:varint cores:varint addr:bytes state:u8   (state is ignored: Joining)
//! replicas = count (replica:varint node:varint core:varint)*
//! ```
//!
//! A bootstrap lists groups `1..=n` in order (vShard `v` is group `v + 1`), each with its
//! initial replicas. A replica move is two commands around the Raft membership change the
//! migration executor performs: `start_move` adds the new replica to the table (so its core
//! hosts it and any metadata leader can resume the move), `end_move` removes the replica
//! that left (or, for an abandoned move, the new one). New replica ids come from a counter
//! in the table, so they are never reused.

use std::collections::BTreeSet;

use crate::cluster::placement::{PendingMove, PlacementTable, Replica, VShardPlacement};
use crate::cluster::topology::{ClusterTopology, NodeInfo, NodeState};
use crate::constants::{CORES_PER_NODE_MAX, NODES_MAX, RAFT_CONF_IDS_MAX, VSHARD_COUNT_MAX};
use crate::ids::{CoreAddress, CoreId, Epoch, GroupId, NodeId, ReplicaId};
use crate::replication::kv::StateMachine;
use crate::wire::codec::{DecodeError, Reader, put_bytes, put_varint};

/// A change to the cluster's shape.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MetadataCommand {
    /// The first command of a new cluster: its nodes and initial placement.
    Bootstrap {
        nodes: Vec<NodeInfo>,
        groups: Vec<(GroupId, Vec<(ReplicaId, CoreAddress)>)>,
    },
    SetNodeState {
        node: NodeId,
        state: NodeState,
    },
    /// Starts moving `group`'s replica `from` to the core at `to`: a new replica (with a
    /// fresh id) is added to the table and the move recorded.
    StartMove {
        group: GroupId,
        from: ReplicaId,
        to: CoreAddress,
    },
    /// Ends the move to `new`: `moved` removes the replica that left, otherwise (abandoned)
    /// `new` itself.
    EndMove {
        group: GroupId,
        new: ReplicaId,
        moved: bool,
    },
    /// Asks the executor to give up `group`'s move.
    AbandonMove {
        group: GroupId,
    },
    /// A node joins the running cluster (`start --join`): it enters the topology as
    /// `Joining` and becomes a learner of the metadata group; the metadata leader makes it
    /// `Active` once its copy of the metadata has caught up.
    AddNode {
        node: NodeInfo,
    },
}

fn state_code(state: NodeState) -> u8 {
    match state {
        NodeState::Joining => 0,
        NodeState::Active => 1,
        NodeState::Draining => 2,
        NodeState::Decommissioned => 3,
        NodeState::Down => 4,
    }
}

fn state_from(code: u8) -> Result<NodeState, DecodeError> {
    Ok(match code {
        0 => NodeState::Joining,
        1 => NodeState::Active,
        2 => NodeState::Draining,
        3 => NodeState::Decommissioned,
        4 => NodeState::Down,
        v => {
            return Err(DecodeError::BadEnum {
                what: "node state",
                value: v.into(),
            });
        }
    })
}

fn put_replicas(out: &mut Vec<u8>, replicas: &[(ReplicaId, CoreAddress)]) {
    put_varint(out, replicas.len() as u64);
    for (r, a) in replicas {
        put_varint(out, r.0);
        put_varint(out, a.node.0);
        put_varint(out, u64::from(a.core.0));
    }
}

fn read_replicas(r: &mut Reader<'_>) -> Result<Vec<(ReplicaId, CoreAddress)>, DecodeError> {
    let n = r.count("replicas", RAFT_CONF_IDS_MAX)?;
    (0..n)
        .map(|_| {
            let replica = ReplicaId(r.varint("replica")?);
            let node = NodeId(r.varint("node")?);
            let core = r.count("core", usize::from(CORES_PER_NODE_MAX))? as u16;
            Ok((
                replica,
                CoreAddress {
                    node,
                    core: CoreId(core),
                },
            ))
        })
        .collect()
}

fn put_node(out: &mut Vec<u8>, n: &NodeInfo) {
    put_varint(out, n.node_id.0);
    put_varint(out, u64::from(n.cores));
    put_bytes(out, n.addr.as_bytes());
    out.push(state_code(n.state));
}

fn read_node(r: &mut Reader<'_>) -> Result<NodeInfo, DecodeError> {
    let node_id = NodeId(r.varint("node")?);
    let cores = r.count("cores", usize::from(CORES_PER_NODE_MAX))? as u16;
    let addr = String::from_utf8_lossy(r.bytes("addr", 256)?).into_owned();
    let state = state_from(r.u8("state")?)?;
    Ok(NodeInfo {
        node_id,
        addr,
        cores,
        state,
    })
}

impl MetadataCommand {
    /// The command's name as the documentation writes it.
    pub fn name(&self) -> &'static str {
        match self {
            MetadataCommand::Bootstrap { .. } => "bootstrap",
            MetadataCommand::SetNodeState { .. } => "node_state",
            MetadataCommand::StartMove { .. } => "start_move",
            MetadataCommand::EndMove { .. } => "end_move",
            MetadataCommand::AbandonMove { .. } => "abandon_move",
            MetadataCommand::AddNode { .. } => "add_node",
        }
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        match self {
            MetadataCommand::Bootstrap { nodes, groups } => {
                out.push(1);
                put_varint(&mut out, nodes.len() as u64);
                for n in nodes {
                    put_node(&mut out, n);
                }
                put_varint(&mut out, groups.len() as u64);
                for (g, replicas) in groups {
                    put_varint(&mut out, g.0);
                    put_replicas(&mut out, replicas);
                }
            }
            MetadataCommand::SetNodeState { node, state } => {
                out.push(2);
                put_varint(&mut out, node.0);
                out.push(state_code(*state));
            }
            MetadataCommand::StartMove { group, from, to } => {
                out.push(4);
                put_varint(&mut out, group.0);
                put_varint(&mut out, from.0);
                put_varint(&mut out, to.node.0);
                put_varint(&mut out, u64::from(to.core.0));
            }
            MetadataCommand::EndMove { group, new, moved } => {
                out.push(5);
                put_varint(&mut out, group.0);
                put_varint(&mut out, new.0);
                out.push(u8::from(*moved));
            }
            MetadataCommand::AbandonMove { group } => {
                out.push(6);
                put_varint(&mut out, group.0);
            }
            MetadataCommand::AddNode { node } => {
                out.push(7);
                put_node(&mut out, node);
            }
        }
        out
    }

    pub fn decode(bytes: &[u8]) -> Result<MetadataCommand, DecodeError> {
        let mut r = Reader::new(bytes);
        let command = match r.u8("command")? {
            1 => {
                let n = r.count("nodes", NODES_MAX)?;
                let mut nodes = Vec::with_capacity(n);
                for _ in 0..n {
                    nodes.push(read_node(&mut r)?);
                }
                let g = r.count("groups", VSHARD_COUNT_MAX as usize)?;
                let mut groups = Vec::with_capacity(g.min(65_536));
                for _ in 0..g {
                    let group = GroupId(r.varint("group")?);
                    groups.push((group, read_replicas(&mut r)?));
                }
                MetadataCommand::Bootstrap { nodes, groups }
            }
            2 => MetadataCommand::SetNodeState {
                node: NodeId(r.varint("node")?),
                state: state_from(r.u8("state")?)?,
            },
            4 => MetadataCommand::StartMove {
                group: GroupId(r.varint("group")?),
                from: ReplicaId(r.varint("from")?),
                to: CoreAddress {
                    node: NodeId(r.varint("node")?),
                    core: CoreId(r.count("core", usize::from(CORES_PER_NODE_MAX))? as u16),
                },
            },
            5 => MetadataCommand::EndMove {
                group: GroupId(r.varint("group")?),
                new: ReplicaId(r.varint("new")?),
                moved: r.bool("moved")?,
            },
            6 => MetadataCommand::AbandonMove {
                group: GroupId(r.varint("group")?),
            },
            7 => MetadataCommand::AddNode {
                node: read_node(&mut r)?,
            },
            v => {
                return Err(DecodeError::BadEnum {
                    what: "metadata command",
                    value: v.into(),
                });
            }
        };
        r.finish()?;
        Ok(command)
    }
}

/// Topology and placement, as the metadata group's log built them.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct MetadataStore {
    topology: ClusterTopology,
    table: PlacementTable,
    applied: u64,
    /// Nodes that joined the running cluster (`AddNode`): learners of the metadata group.
    /// The nodes the cluster was bootstrapped with are its voters.
    joined: BTreeSet<NodeId>,
}

impl MetadataStore {
    pub fn new() -> MetadataStore {
        MetadataStore::default()
    }

    pub fn is_bootstrapped(&self) -> bool {
        !self.topology.is_empty()
    }

    /// The table's epoch: bumped by every applied change, topology changes included.
    pub fn epoch(&self) -> Epoch {
        self.table.epoch()
    }

    pub fn topology(&self) -> &ClusterTopology {
        &self.topology
    }

    /// The placement table as it stands (what each core must host).
    pub fn table(&self) -> &PlacementTable {
        &self.table
    }

    pub fn group(&self, group: GroupId) -> Option<&VShardPlacement> {
        self.table.group(group)
    }

    /// Whether `node` joined the running cluster (a learner of the metadata group) rather
    /// than being one of the nodes it was bootstrapped with (its voters).
    pub fn joined(&self, node: NodeId) -> bool {
        self.joined.contains(&node)
    }

    /// The nodes that joined the running cluster, in id order.
    pub fn joined_nodes(&self) -> impl Iterator<Item = NodeId> + '_ {
        self.joined.iter().copied()
    }

    /// Whether `node` may join: a new id, the cluster's core count, an address that is an
    /// IP and port. Joining again with the same id, address and cores is not an error
    /// (`Ok(false)`: nothing to change), so that a node that did not hear the answer to its
    /// request can ask again.
    fn check_join(&self, node: &NodeInfo) -> Result<bool, String> {
        if !self.is_bootstrapped() {
            return Err("the cluster is not bootstrapped yet".into());
        }
        if node.node_id.0 == 0 || node.node_id.0 > NodeId::MAX {
            return Err(format!(
                "node id {} is outside 1..={}",
                node.node_id.0,
                NodeId::MAX
            ));
        }
        if node.addr.parse::<std::net::SocketAddr>().is_err() {
            return Err(format!(
                "node {} gives the address {:?}, which is not an IP address and port",
                node.node_id, node.addr
            ));
        }
        if let Some(known) = self.topology.node(node.node_id) {
            if known.addr == node.addr && known.cores == node.cores {
                return Ok(false);
            }
            return Err(format!(
                "node {} is already a member, at {} with {} cores",
                node.node_id, known.addr, known.cores
            ));
        }
        if let Some(taken) = self.topology.nodes().find(|n| n.addr == node.addr) {
            return Err(format!(
                "address {} is already node {}'s",
                node.addr, taken.node_id
            ));
        }
        let cores = self.topology.nodes().map(|n| n.cores).max().unwrap_or(0);
        if node.cores != cores {
            return Err(format!(
                "node {} has {} cores, but the cluster's nodes have {cores}: every node runs \
                 the same number of cores",
                node.node_id, node.cores
            ));
        }
        Ok(true)
    }

    /// Whether `node` may start draining: the nodes left active must still hold every
    /// group's replicas on distinct nodes, and the nodes not on their way out must still be
    /// a majority of the metadata group (every node of the topology votes in it, and a
    /// drained node is expected to be stopped).
    fn check_drain(&self, node: NodeId) -> Result<(), String> {
        let Some(info) = self.topology.node(node) else {
            return Ok(()); // `set_state` names the unknown node.
        };
        if !matches!(info.state, NodeState::Active | NodeState::Down) {
            return Ok(()); // Already draining, or `set_state` refuses the step.
        }
        let staying = |n: &&NodeInfo| n.node_id != node;
        let active = self.topology.active_nodes().filter(staying).count();
        let replicas = self
            .table
            .iter()
            .map(|(_, p)| p.replicas.len() - usize::from(p.moving.is_some()))
            .max()
            .unwrap_or(0);
        if active < replicas {
            return Err(format!(
                "node {node} cannot drain: {active} active node(s) would remain, and groups keep \
                 {replicas} replicas on distinct nodes"
            ));
        }
        let voters = self
            .topology
            .nodes()
            .filter(|n| !self.joined(n.node_id))
            .count();
        if self.joined(node) {
            return Ok(()); // A learner of the metadata group: its quorum does not change.
        }
        let remaining = self
            .topology
            .nodes()
            .filter(|n| !self.joined(n.node_id))
            .filter(staying)
            .filter(|n| !n.state.must_be_emptied())
            .count();
        if remaining < voters / 2 + 1 {
            return Err(format!(
                "node {node} cannot drain: the metadata group needs {} of its {voters} voters, \
                 and only {remaining} would remain in service",
                voters / 2 + 1
            ));
        }
        Ok(())
    }

    /// Applies a decoded command; `Err` is the reason it was rejected (nothing changed).
    fn execute(&mut self, command: MetadataCommand) -> Result<(), String> {
        match command {
            MetadataCommand::Bootstrap { nodes, groups } => {
                if self.is_bootstrapped() {
                    return Err("the cluster is already bootstrapped".into());
                }
                let mut topology = ClusterTopology::new();
                for n in nodes {
                    topology.add_node(n).map_err(|e| e.to_string())?;
                }
                let mut vshards = Vec::with_capacity(groups.len());
                for (i, (g, replicas)) in groups.into_iter().enumerate() {
                    if g.0 != i as u64 + 1 {
                        return Err(format!("bootstrap lists group {} in place {}", g.0, i + 1));
                    }
                    vshards.push(VShardPlacement {
                        initial: replicas.iter().map(|(r, _)| *r).collect(),
                        replicas: replicas
                            .into_iter()
                            .map(|(id, at)| Replica { id, at })
                            .collect(),
                        leader: 0,
                        epoch: Epoch(1),
                        moving: None,
                    });
                }
                self.table =
                    PlacementTable::from_parts(Epoch(1), vshards, ReplicaId::MOVED_FROM, &topology)
                        .map_err(|e| e.to_string())?;
                self.topology = topology;
                return Ok(());
            }
            MetadataCommand::SetNodeState { node, state } => {
                if state == NodeState::Draining {
                    self.check_drain(node)?;
                }
                self.topology
                    .set_state(node, state)
                    .map_err(|e| e.to_string())?;
                self.table.bump_epoch();
            }
            MetadataCommand::StartMove { group, from, to } => {
                self.table
                    .start_move(group, from, to, &self.topology)
                    .map_err(|e| e.to_string())?;
            }
            MetadataCommand::EndMove { group, new, moved } => {
                self.table
                    .end_move(group, new, moved)
                    .map_err(|e| e.to_string())?;
            }
            MetadataCommand::AbandonMove { group } => {
                self.table.abandon_move(group).map_err(|e| e.to_string())?;
            }
            MetadataCommand::AddNode { node } => {
                if self.check_join(&node)? {
                    let id = node.node_id;
                    self.topology
                        .add_node(NodeInfo {
                            state: NodeState::Joining,
                            ..node
                        })
                        .map_err(|e| e.to_string())?;
                    self.joined.insert(id);
                    self.table.bump_epoch();
                }
            }
        }
        Ok(())
    }
}

impl StateMachine for MetadataStore {
    fn apply(&mut self, index: u64, command: &[u8]) -> Vec<u8> {
        self.applied = self.applied.max(index);
        let outcome = MetadataCommand::decode(command)
            .map_err(|e| e.to_string())
            .and_then(|c| self.execute(c));
        match outcome {
            Ok(()) => vec![1],
            Err(reason) => {
                let mut out = vec![0];
                put_bytes(&mut out, reason.as_bytes());
                out
            }
        }
    }

    fn applied_index(&self) -> u64 {
        self.applied
    }

    fn snapshot(&self) -> Vec<u8> {
        // The nodes as a (length-prefixed) bootstrap without groups, the epoch and id
        // counter, then every group whole.
        let nodes: Vec<NodeInfo> = self.topology.nodes().cloned().collect();
        let mut out = Vec::new();
        put_bytes(
            &mut out,
            &MetadataCommand::Bootstrap {
                nodes,
                groups: Vec::new(),
            }
            .encode(),
        );
        put_varint(&mut out, self.table.epoch().0);
        put_varint(&mut out, self.table.next_replica());
        put_varint(&mut out, u64::from(self.table.vshard_count()));
        for (_, p) in self.table.iter() {
            put_varint(&mut out, p.epoch.0);
            let replicas: Vec<(ReplicaId, CoreAddress)> =
                p.replicas.iter().map(|r| (r.id, r.at)).collect();
            put_replicas(&mut out, &replicas);
            put_varint(&mut out, p.leader as u64);
            put_varint(&mut out, p.initial.len() as u64);
            for r in &p.initial {
                put_varint(&mut out, r.0);
            }
            match p.moving {
                None => out.push(0),
                Some(m) => {
                    out.push(if m.abandon { 2 } else { 1 });
                    put_varint(&mut out, m.from.0);
                    put_varint(&mut out, m.new.0);
                    put_varint(&mut out, m.to.node.0);
                    put_varint(&mut out, u64::from(m.to.core.0));
                }
            }
        }
        put_varint(&mut out, self.joined.len() as u64);
        for n in &self.joined {
            put_varint(&mut out, n.0);
        }
        out
    }

    fn restore(&mut self, index: u64, snapshot: &bytes::Bytes) -> Result<(), DecodeError> {
        let mut store = MetadataStore::default();
        if !snapshot.is_empty() {
            let mut r = Reader::new(snapshot);
            let bootstrap = MetadataCommand::decode(r.bytes("bootstrap", usize::MAX)?)?;
            let invalid = |what: &'static str| DecodeError::BadEnum { what, value: 0 };
            if let MetadataCommand::Bootstrap { nodes, .. } = bootstrap {
                for n in nodes {
                    store
                        .topology
                        .add_node(n)
                        .map_err(|_| invalid("snapshot node"))?;
                }
            } else {
                return Err(invalid("snapshot nodes"));
            }
            let epoch = Epoch(r.varint("epoch")?);
            let next_replica = r.varint("next replica")?;
            let n = r.count("groups", VSHARD_COUNT_MAX as usize)?;
            let mut vshards = Vec::with_capacity(n.min(1 << 16));
            for _ in 0..n {
                let epoch = Epoch(r.varint("group epoch")?);
                let replicas = read_replicas(&mut r)?
                    .into_iter()
                    .map(|(id, at)| Replica { id, at })
                    .collect();
                let leader = r.count("leader", RAFT_CONF_IDS_MAX)?;
                let k = r.count("initial voters", RAFT_CONF_IDS_MAX)?;
                let initial = (0..k)
                    .map(|_| r.varint("initial voter").map(ReplicaId))
                    .collect::<Result<_, _>>()?;
                let moving = match r.u8("moving")? {
                    0 => None,
                    flag @ (1 | 2) => Some(PendingMove {
                        from: ReplicaId(r.varint("from")?),
                        new: ReplicaId(r.varint("new")?),
                        to: CoreAddress {
                            node: NodeId(r.varint("node")?),
                            core: CoreId(r.count("core", usize::from(CORES_PER_NODE_MAX))? as u16),
                        },
                        abandon: flag == 2,
                    }),
                    v => {
                        return Err(DecodeError::BadEnum {
                            what: "moving",
                            value: v.into(),
                        });
                    }
                };
                vshards.push(VShardPlacement {
                    replicas,
                    leader,
                    epoch,
                    initial,
                    moving,
                });
            }
            // Snapshots written before nodes could join end here.
            if r.remaining() > 0 {
                let k = r.count("joined nodes", NODES_MAX)?;
                for _ in 0..k {
                    store.joined.insert(NodeId(r.varint("joined node")?));
                }
            }
            r.finish()?;
            store.table = PlacementTable::from_parts(epoch, vshards, next_replica, &store.topology)
                .map_err(|_| invalid("snapshot placement"))?;
        }
        store.applied = index;
        // Replace the state only once the whole snapshot decoded.
        *self = store;
        Ok(())
    }

    fn bytes_stored(&self) -> u64 {
        0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(id: u64) -> NodeInfo {
        NodeInfo {
            node_id: NodeId(id),
            addr: format!("127.0.0.1:{}", 7000 + id),
            cores: 2,
            state: NodeState::Active,
        }
    }

    fn at(node: u64, core: u16) -> CoreAddress {
        CoreAddress {
            node: NodeId(node),
            core: CoreId(core),
        }
    }

    fn apply(store: &mut MetadataStore, index: u64, c: MetadataCommand) -> bool {
        store.apply(index, &c.encode())[0] == 1
    }

    fn bootstrap() -> MetadataCommand {
        MetadataCommand::Bootstrap {
            nodes: vec![node(1), node(2), node(3)],
            groups: vec![(
                GroupId(1),
                vec![(ReplicaId(11), at(1, 1)), (ReplicaId(12), at(2, 1))],
            )],
        }
    }

    fn replicas(store: &MetadataStore, g: GroupId) -> Vec<(ReplicaId, CoreAddress)> {
        store
            .group(g)
            .unwrap()
            .replicas
            .iter()
            .map(|r| (r.id, r.at))
            .collect()
    }

    #[test]
    fn bootstrap_then_changes_bump_epochs() {
        let mut m = MetadataStore::new();
        assert!(apply(&mut m, 1, bootstrap()));
        assert!(m.is_bootstrapped());
        assert_eq!(m.epoch(), Epoch(1));
        assert!(
            !apply(&mut m, 2, bootstrap()),
            "a second bootstrap is rejected"
        );
        assert_eq!(m.epoch(), Epoch(1), "a rejected command changes nothing");
        assert!(apply(
            &mut m,
            3,
            MetadataCommand::StartMove {
                group: GroupId(1),
                from: ReplicaId(11),
                to: at(3, 0)
            }
        ));
        assert_eq!(m.group(GroupId(1)).unwrap().epoch, Epoch(2));
        assert!(apply(
            &mut m,
            4,
            MetadataCommand::SetNodeState {
                node: NodeId(2),
                state: NodeState::Draining
            }
        ));
        assert_eq!(m.epoch(), Epoch(3));
    }

    /// The reason a command was refused, or `None` if it was applied.
    fn refusal(store: &mut MetadataStore, index: u64, c: MetadataCommand) -> Option<String> {
        let out = store.apply(index, &c.encode());
        (out[0] == 0).then(|| String::from_utf8_lossy(&out[1..]).into_owned())
    }

    fn set(node: u64, state: NodeState) -> MetadataCommand {
        MetadataCommand::SetNodeState {
            node: NodeId(node),
            state,
        }
    }

    fn join(id: u64, addr: &str, cores: u16) -> MetadataCommand {
        MetadataCommand::AddNode {
            node: NodeInfo {
                node_id: NodeId(id),
                addr: addr.into(),
                cores,
                state: NodeState::Active,
            },
        }
    }

    #[test]
    fn a_join_is_checked_recorded_as_joining_and_survives_a_snapshot() {
        let mut m = MetadataStore::new();
        let early = refusal(&mut m, 1, join(4, "127.0.0.1:7004", 2)).unwrap();
        assert!(early.contains("not bootstrapped"), "{early}");
        assert!(apply(&mut m, 2, bootstrap()));
        let epoch = m.epoch();
        assert_eq!(refusal(&mut m, 3, join(4, "127.0.0.1:7004", 2)), None);
        let four = m.topology().node(NodeId(4)).unwrap();
        assert_eq!(four.state, NodeState::Joining, "a join never starts Active");
        assert!(m.joined(NodeId(4)) && !m.joined(NodeId(1)));
        assert!(m.epoch() > epoch);
        // Asking again with the same identity changes nothing.
        let epoch = m.epoch();
        assert_eq!(refusal(&mut m, 4, join(4, "127.0.0.1:7004", 2)), None);
        assert_eq!(m.epoch(), epoch);
        for (command, why) in [
            (join(4, "127.0.0.1:7999", 2), "already a member"),
            (join(1, "127.0.0.1:7001", 4), "already a member"),
            (join(5, "127.0.0.1:7002", 2), "already node n2's"),
            (join(5, "127.0.0.1:7005", 4), "has 4 cores"),
            (join(5, "node-5:7005", 2), "not an IP address"),
            (join(0, "127.0.0.1:7005", 2), "outside 1..=65535"),
            (join(70_000, "127.0.0.1:7005", 2), "outside 1..=65535"),
        ] {
            let refused = refusal(&mut m, 5, command).unwrap();
            assert!(refused.contains(why), "{refused} (wanted {why:?})");
        }
        assert_eq!(m.epoch(), epoch, "a refused join changes nothing");
        let mut restored = MetadataStore::new();
        restored.restore(5, &m.snapshot().into()).unwrap();
        assert!(restored.joined(NodeId(4)) && !restored.joined(NodeId(2)));
        assert_eq!(
            restored.topology().node(NodeId(4)).unwrap().state,
            NodeState::Joining
        );
    }

    #[test]
    fn a_drain_that_leaves_too_few_nodes_or_voters_is_refused() {
        // Five nodes; the group keeps three replicas.
        let mut m = MetadataStore::new();
        assert!(apply(
            &mut m,
            1,
            MetadataCommand::Bootstrap {
                nodes: (1..=5).map(node).collect(),
                groups: vec![(
                    GroupId(1),
                    vec![
                        (ReplicaId(11), at(1, 0)),
                        (ReplicaId(12), at(2, 0)),
                        (ReplicaId(13), at(3, 0)),
                    ],
                )],
            }
        ));
        let unknown = refusal(&mut m, 2, set(9, NodeState::Draining)).unwrap();
        assert!(unknown.contains("node n9 is not a member"), "{unknown}");
        assert_eq!(refusal(&mut m, 3, set(5, NodeState::Draining)), None);
        assert_eq!(refusal(&mut m, 4, set(4, NodeState::Draining)), None);
        // Three active nodes left, and groups keep three replicas.
        let few = refusal(&mut m, 5, set(3, NodeState::Draining)).unwrap();
        assert!(
            few.contains("node n3 cannot drain") && few.contains("3 replicas"),
            "{few}"
        );
        // Undo one drain; the other finishes.
        assert_eq!(refusal(&mut m, 6, set(4, NodeState::Active)), None);
        assert_eq!(refusal(&mut m, 7, set(5, NodeState::Decommissioned)), None);
        let back = refusal(&mut m, 8, set(5, NodeState::Active)).unwrap();
        assert!(back.contains("Decommissioned to Active"), "{back}");
        // Draining 4 again leaves three active nodes: allowed; then no node more.
        assert_eq!(refusal(&mut m, 9, set(4, NodeState::Draining)), None);
        assert!(refusal(&mut m, 10, set(1, NodeState::Draining)).is_some());
        assert_eq!(
            m.topology().node(NodeId(1)).unwrap().state,
            NodeState::Active
        );
    }

    #[test]
    fn a_drain_that_would_cost_the_metadata_quorum_is_refused() {
        // Four nodes, groups of one replica: only the metadata group limits drains.
        let mut m = MetadataStore::new();
        assert!(apply(
            &mut m,
            1,
            MetadataCommand::Bootstrap {
                nodes: (1..=4).map(node).collect(),
                groups: vec![(GroupId(1), vec![(ReplicaId(11), at(1, 0))])],
            }
        ));
        assert_eq!(refusal(&mut m, 2, set(4, NodeState::Draining)), None);
        // Two of four voters would remain; the metadata group needs three.
        let quorum = refusal(&mut m, 3, set(3, NodeState::Draining)).unwrap();
        assert!(
            quorum.contains("needs 3 of its 4 voters") && quorum.contains("only 2"),
            "{quorum}"
        );
    }

    #[test]
    fn invalid_bootstraps_are_rejected_on_every_replica_alike() {
        for groups in [
            vec![(GroupId(1), vec![])],
            vec![(GroupId(1), vec![(ReplicaId(1), at(9, 0))])],
            vec![(GroupId(1), vec![(ReplicaId(1), at(1, 5))])],
            vec![(
                GroupId(1),
                vec![(ReplicaId(1), at(1, 0)), (ReplicaId(2), at(1, 1))],
            )],
            vec![(GroupId(2), vec![(ReplicaId(1), at(1, 0))])],
            vec![(GroupId(1), vec![(ReplicaId(1 << 48), at(1, 0))])],
        ] {
            let mut m = MetadataStore::new();
            let command = MetadataCommand::Bootstrap {
                nodes: vec![node(1), node(2)],
                groups,
            };
            assert!(!apply(&mut m, 1, command.clone()), "{command:?}");
            assert!(!m.is_bootstrapped());
        }
        assert_eq!(MetadataStore::new().apply(3, b"\x09junk")[0], 0);
        assert_eq!(MetadataStore::new().apply(3, b"\x03\x01\x00")[0], 0);
    }

    #[test]
    fn a_move_adds_a_fresh_replica_then_removes_the_one_that_left() {
        let mut m = MetadataStore::new();
        apply(&mut m, 1, bootstrap());
        let g = GroupId(1);
        let start = |to| MetadataCommand::StartMove {
            group: g,
            from: ReplicaId(11),
            to,
        };
        // Refused: a node holding another replica, an unknown node or core, a missing replica.
        assert!(!apply(&mut m, 2, start(at(2, 0))));
        assert!(!apply(&mut m, 2, start(at(9, 0))));
        assert!(!apply(&mut m, 2, start(at(3, 7))));
        assert!(!apply(
            &mut m,
            2,
            MetadataCommand::StartMove {
                group: g,
                from: ReplicaId(99),
                to: at(3, 0)
            }
        ));
        // Between cores of the node the replica is on: allowed.
        assert!(apply(&mut m, 2, start(at(1, 0))));
        let p = m.group(g).unwrap().clone();
        let moving = p.moving.unwrap();
        assert_eq!(moving.new, ReplicaId(ReplicaId::MOVED_FROM));
        assert!(replicas(&m, g).contains(&(moving.new, at(1, 0))));
        assert_eq!(p.initial, vec![ReplicaId(11), ReplicaId(12)]);
        assert!(!apply(&mut m, 3, start(at(3, 0))), "one move at a time");
        let abandon = MetadataCommand::AbandonMove { group: g };
        assert!(apply(&mut m, 3, abandon.clone()));
        assert!(m.group(g).unwrap().moving.unwrap().abandon);
        assert!(!apply(&mut m, 3, abandon), "asked once");
        // A snapshot taken mid-move restores it.
        let mut r = MetadataStore::new();
        r.restore(3, &m.snapshot().into()).unwrap();
        assert_eq!(
            r,
            MetadataStore {
                applied: 3,
                ..m.clone()
            }
        );
        assert!(
            r.restore(3, &bytes::Bytes::from_static(b"\x01\xff"))
                .is_err()
        );
        let end = |new, moved| MetadataCommand::EndMove {
            group: g,
            new,
            moved,
        };
        assert!(!apply(&mut m, 4, end(ReplicaId(5), true)), "not this move");
        assert!(apply(&mut m, 4, end(moving.new, true)));
        assert_eq!(
            replicas(&m, g),
            vec![(ReplicaId(12), at(2, 1)), (moving.new, at(1, 0))]
        );
        assert_eq!(m.group(g).unwrap().moving, None);
        // The next move gets the next id, and an abandoned one removes its new replica.
        assert!(apply(
            &mut m,
            5,
            MetadataCommand::StartMove {
                group: g,
                from: ReplicaId(12),
                to: at(3, 1)
            }
        ));
        let next = m.group(g).unwrap().moving.unwrap().new;
        assert_eq!(next.0, ReplicaId::MOVED_FROM + 1);
        assert!(apply(&mut m, 6, end(next, false)));
        assert_eq!(
            replicas(&m, g),
            vec![(ReplicaId(12), at(2, 1)), (moving.new, at(1, 0))]
        );
        let table = m.table();
        assert_eq!(
            table.hosted_at(at(1, 0)).collect::<Vec<_>>(),
            vec![(g, moving.new)]
        );
        assert_eq!(table.hosted_at(at(1, 1)).count(), 0);
    }

    #[test]
    fn move_commands_round_trip() {
        for c in [
            MetadataCommand::StartMove {
                group: GroupId(3),
                from: ReplicaId(7),
                to: at(2, 1),
            },
            MetadataCommand::EndMove {
                group: GroupId(3),
                new: ReplicaId(1 << 48),
                moved: true,
            },
            MetadataCommand::AbandonMove { group: GroupId(3) },
            MetadataCommand::SetNodeState {
                node: NodeId(2),
                state: NodeState::Decommissioned,
            },
        ] {
            assert_eq!(MetadataCommand::decode(&c.encode()).unwrap(), c);
        }
        assert!(MetadataCommand::decode(b"\x05\x01\x01\x02").is_err());
    }
}
