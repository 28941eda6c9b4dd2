//! The metadata group's state machine (group 0): topology and placement, with epochs.
//!
//! Every change to the cluster's shape goes through this group's Raft log, which is the
//! change log every node follows: the nodes and their states, and for each data group its
//! replicas as `(replica id, node, core)` with an epoch bumped on every change. Readers
//! compare epochs to detect stale routing. Commands are validated when applied, on every
//! replica alike: an invalid one is rejected deterministically, never half-applied.
//!
//! ```text
//! command = 1 bootstrap  nodes:(count (id:varint cores:varint addr:bytes)*)
//!                        groups:(count (group:varint replicas)*)
//!         | 2 node_state node:varint state:u8        (0 joining, 1 active, 2 draining, 3 decommissioned)
//!         | 3 set_group  group:varint replicas
//!         | 4 start_move group:varint from:varint node:varint core:varint
//!         | 5 end_move   group:varint new:varint moved:u8
//!         | 6 abandon_move group:varint
//! replicas = count (replica:varint node:varint core:varint)*
//! ```
//!
//! A replica move is two commands around the Raft membership change the migration
//! executor performs: `start_move` adds the new replica to the table (so its core hosts it
//! and any metadata leader can resume the move), `end_move` removes the replica that left
//! (or, for an abandoned move, the new one). New replica ids come from a counter in this
//! state, so they are never reused.

use std::collections::BTreeMap;

use crate::cluster::topology::{ClusterTopology, NodeInfo, NodeState};
use crate::constants::{CORES_PER_NODE_MAX, NODES_MAX, RAFT_CONF_IDS_MAX, VSHARD_COUNT_MAX};
use crate::ids::{CoreId, Epoch, NodeId};
use crate::replication::kv::StateMachine;
use crate::replication::raft_host::{CoreAddress, GroupId, ReplicaId};
use crate::wire::codec::{DecodeError, Reader, put_bytes, put_varint};

/// Where a data group's replicas live.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GroupPlacement {
    pub replicas: Vec<(ReplicaId, CoreAddress)>,
    /// Bumped whenever this group's replicas change.
    pub epoch: Epoch,
    /// The voters the group started with: the configuration at index 0 of every replica's
    /// log, which a new replica's log must start from too.
    pub initial: Vec<ReplicaId>,
    /// The move under way, if any (at most one per group).
    pub moving: Option<PendingMove>,
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

/// The first replica id `start_move` hands out; bootstrap ids (`(group << 16) | node`)
/// stay below it.
pub const MOVED_REPLICA_IDS_FROM: u64 = 1 << 48;

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
    SetGroup {
        group: GroupId,
        replicas: Vec<(ReplicaId, CoreAddress)>,
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
}

fn state_code(state: NodeState) -> u8 {
    match state {
        NodeState::Joining => 0,
        NodeState::Active => 1,
        NodeState::Draining => 2,
        NodeState::Decommissioned => 3,
    }
}

fn state_from(code: u8) -> Result<NodeState, DecodeError> {
    Ok(match code {
        0 => NodeState::Joining,
        1 => NodeState::Active,
        2 => NodeState::Draining,
        3 => NodeState::Decommissioned,
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

impl MetadataCommand {
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        match self {
            MetadataCommand::Bootstrap { nodes, groups } => {
                out.push(1);
                put_varint(&mut out, nodes.len() as u64);
                for n in nodes {
                    put_varint(&mut out, n.node_id.0);
                    put_varint(&mut out, u64::from(n.cores));
                    put_bytes(&mut out, n.addr.as_bytes());
                    out.push(state_code(n.state));
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
            MetadataCommand::SetGroup { group, replicas } => {
                out.push(3);
                put_varint(&mut out, group.0);
                put_replicas(&mut out, replicas);
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
                    let node_id = NodeId(r.varint("node")?);
                    let cores = r.count("cores", usize::from(CORES_PER_NODE_MAX))? as u16;
                    let addr = String::from_utf8_lossy(r.bytes("addr", 256)?).into_owned();
                    let state = state_from(r.u8("state")?)?;
                    nodes.push(NodeInfo {
                        node_id,
                        addr,
                        cores,
                        state,
                    });
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
            3 => MetadataCommand::SetGroup {
                group: GroupId(r.varint("group")?),
                replicas: read_replicas(&mut r)?,
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
    groups: BTreeMap<GroupId, GroupPlacement>,
    /// Bumped on every applied change.
    epoch: Epoch,
    applied: u64,
    /// The id the next `start_move` gives its new replica.
    next_replica: u64,
}

impl MetadataStore {
    pub fn new() -> MetadataStore {
        MetadataStore::default()
    }

    pub fn is_bootstrapped(&self) -> bool {
        !self.topology.is_empty()
    }

    pub fn epoch(&self) -> Epoch {
        self.epoch
    }

    pub fn topology(&self) -> &ClusterTopology {
        &self.topology
    }

    pub fn group(&self, group: GroupId) -> Option<&GroupPlacement> {
        self.groups.get(&group)
    }

    pub fn groups(&self) -> impl Iterator<Item = (GroupId, &GroupPlacement)> {
        self.groups.iter().map(|(g, p)| (*g, p))
    }

    /// The placement table as it stands (what each core must host).
    pub fn table(&self) -> PlacementTable {
        PlacementTable {
            epoch: self.epoch,
            groups: self.groups.clone(),
        }
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
                let mut placed = BTreeMap::new();
                for (g, replicas) in groups {
                    check_replicas(&topology, &replicas)?;
                    if replicas.iter().any(|(r, _)| r.0 >= MOVED_REPLICA_IDS_FROM) {
                        return Err("bootstrap replica ids must be below 2^48".into());
                    }
                    placed.insert(
                        g,
                        GroupPlacement {
                            initial: replicas.iter().map(|(r, _)| *r).collect(),
                            replicas,
                            epoch: Epoch(1),
                            moving: None,
                        },
                    );
                }
                self.topology = topology;
                self.groups = placed;
                self.next_replica = MOVED_REPLICA_IDS_FROM;
            }
            MetadataCommand::SetNodeState { node, state } => {
                self.topology
                    .set_state(node, state)
                    .map_err(|e| e.to_string())?;
            }
            MetadataCommand::SetGroup { group, replicas } => {
                check_replicas(&self.topology, &replicas)?;
                let placement = match self.groups.get(&group) {
                    Some(p) if p.moving.is_some() => {
                        return Err(format!("group {} is moving a replica", group.0));
                    }
                    Some(p) => GroupPlacement {
                        replicas,
                        epoch: p.epoch.next(),
                        initial: p.initial.clone(),
                        moving: None,
                    },
                    None => GroupPlacement {
                        initial: replicas.iter().map(|(r, _)| *r).collect(),
                        replicas,
                        epoch: Epoch(1),
                        moving: None,
                    },
                };
                self.groups.insert(group, placement);
            }
            MetadataCommand::StartMove { group, from, to } => {
                let new = ReplicaId(self.next_replica);
                let placement = self
                    .groups
                    .get_mut(&group)
                    .ok_or_else(|| format!("group {} does not exist", group.0))?;
                if let Some(m) = placement.moving {
                    return Err(format!(
                        "group {} is already moving replica {} to node {} core {}",
                        group.0, m.from.0, m.to.node, m.to.core.0
                    ));
                }
                if !placement.replicas.iter().any(|(r, _)| *r == from) {
                    return Err(format!("group {} has no replica {}", group.0, from.0));
                }
                let node = self
                    .topology
                    .node(to.node)
                    .ok_or_else(|| format!("node {} is not in the cluster", to.node))?;
                if node.state != NodeState::Active {
                    return Err(format!("node {} is {:?}, not active", to.node, node.state));
                }
                if to.core.0 >= node.cores {
                    return Err(format!(
                        "node {} has {} cores; there is no core {}",
                        to.node, node.cores, to.core.0
                    ));
                }
                // One replica per node, except the one moving between cores of a node.
                if let Some((r, _)) = placement
                    .replicas
                    .iter()
                    .find(|(r, a)| a.node == to.node && (*r != from || *a == to))
                {
                    return Err(format!(
                        "node {} already holds replica {} of group {}",
                        to.node, r.0, group.0
                    ));
                }
                placement.replicas.push((new, to));
                placement.moving = Some(PendingMove {
                    from,
                    new,
                    to,
                    abandon: false,
                });
                placement.epoch = placement.epoch.next();
                self.next_replica += 1;
            }
            MetadataCommand::EndMove { group, new, moved } => {
                let placement = self
                    .groups
                    .get_mut(&group)
                    .ok_or_else(|| format!("group {} does not exist", group.0))?;
                let m = match placement.moving {
                    Some(m) if m.new == new => m,
                    _ => {
                        return Err(format!(
                            "group {} has no move to replica {}",
                            group.0, new.0
                        ));
                    }
                };
                let gone = if moved { m.from } else { m.new };
                placement.replicas.retain(|(r, _)| *r != gone);
                placement.moving = None;
                placement.epoch = placement.epoch.next();
            }
            MetadataCommand::AbandonMove { group } => {
                let placement = self
                    .groups
                    .get_mut(&group)
                    .ok_or_else(|| format!("group {} does not exist", group.0))?;
                match placement.moving.as_mut() {
                    Some(m) if !m.abandon => m.abandon = true,
                    Some(_) => {
                        return Err(format!(
                            "group {}'s move is already being abandoned",
                            group.0
                        ));
                    }
                    None => return Err(format!("group {} is not moving a replica", group.0)),
                }
            }
        }
        self.epoch = self.epoch.next();
        Ok(())
    }
}

/// The placement table at one epoch: what every core hosts. Core 0 of each node hands it
/// to the node's cores after each change the metadata group applies.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct PlacementTable {
    pub epoch: Epoch,
    pub groups: BTreeMap<GroupId, GroupPlacement>,
}

impl PlacementTable {
    /// The replica of each group the table places on `at`.
    pub fn hosted_at(&self, at: CoreAddress) -> impl Iterator<Item = (GroupId, ReplicaId)> + '_ {
        self.groups.iter().filter_map(move |(g, p)| {
            p.replicas
                .iter()
                .find(|(_, a)| *a == at)
                .map(|(r, _)| (*g, *r))
        })
    }
}

/// Replicas must be on known nodes and cores, one per node, with distinct ids.
fn check_replicas(
    topology: &ClusterTopology,
    replicas: &[(ReplicaId, CoreAddress)],
) -> Result<(), String> {
    if replicas.is_empty() {
        return Err("a group needs at least one replica".into());
    }
    for (i, (r, a)) in replicas.iter().enumerate() {
        let node = topology
            .node(a.node)
            .ok_or_else(|| format!("replica {} names unknown node {}", r.0, a.node))?;
        if a.core.0 >= node.cores {
            return Err(format!(
                "replica {} names core {} of node {} which has {}",
                r.0, a.core.0, a.node, node.cores
            ));
        }
        if replicas[..i]
            .iter()
            .any(|(r2, a2)| r2 == r || a2.node == a.node)
        {
            return Err(format!("replica {} repeats a replica id or a node", r.0));
        }
    }
    Ok(())
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
        put_varint(&mut out, self.epoch.0);
        put_varint(&mut out, self.next_replica);
        put_varint(&mut out, self.groups.len() as u64);
        for (g, p) in &self.groups {
            put_varint(&mut out, g.0);
            put_varint(&mut out, p.epoch.0);
            put_replicas(&mut out, &p.replicas);
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
        out
    }

    fn restore(&mut self, index: u64, snapshot: &[u8]) -> Result<(), DecodeError> {
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
            store.epoch = Epoch(r.varint("epoch")?);
            store.next_replica = r.varint("next replica")?;
            let n = r.count("groups", VSHARD_COUNT_MAX as usize)?;
            for _ in 0..n {
                let group = GroupId(r.varint("group")?);
                let epoch = Epoch(r.varint("group epoch")?);
                let replicas = read_replicas(&mut r)?;
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
                store.groups.insert(
                    group,
                    GroupPlacement {
                        replicas,
                        epoch,
                        initial,
                        moving,
                    },
                );
            }
            r.finish()?;
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

/// The state machine of a node's groups: data groups hold a `KvStore`, the metadata group
/// (group 0) a `MetadataStore`.
#[derive(Clone, Debug)]
pub enum Cell {
    Kv(crate::replication::kv::KvStore),
    Meta(MetadataStore),
}

impl Cell {
    pub fn kv(&self) -> Option<&crate::replication::kv::KvStore> {
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

    fn restore(&mut self, index: u64, snapshot: &[u8]) -> Result<(), DecodeError> {
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
        let moved = vec![(ReplicaId(11), at(1, 1)), (ReplicaId(13), at(3, 0))];
        assert!(apply(
            &mut m,
            3,
            MetadataCommand::SetGroup {
                group: GroupId(1),
                replicas: moved.clone()
            }
        ));
        assert_eq!(m.group(GroupId(1)).unwrap().epoch, Epoch(2));
        assert_eq!(m.group(GroupId(1)).unwrap().replicas, moved);
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

    #[test]
    fn invalid_placements_are_rejected_on_every_replica_alike() {
        let mut m = MetadataStore::new();
        apply(&mut m, 1, bootstrap());
        for replicas in [
            vec![],
            vec![(ReplicaId(1), at(9, 0))],
            vec![(ReplicaId(1), at(1, 5))],
            vec![(ReplicaId(1), at(1, 0)), (ReplicaId(2), at(1, 1))],
        ] {
            assert!(!apply(
                &mut m,
                2,
                MetadataCommand::SetGroup {
                    group: GroupId(2),
                    replicas
                }
            ));
        }
        assert!(m.group(GroupId(2)).is_none());
        assert_eq!(m.apply(3, b"\x09junk")[0], 0);
    }

    #[test]
    fn snapshots_restore_the_same_shape_and_epochs() {
        let mut m = MetadataStore::new();
        apply(&mut m, 1, bootstrap());
        let moved = vec![(ReplicaId(11), at(1, 1)), (ReplicaId(13), at(3, 0))];
        apply(
            &mut m,
            2,
            MetadataCommand::SetGroup {
                group: GroupId(1),
                replicas: moved,
            },
        );
        let mut r = MetadataStore::new();
        r.restore(2, &m.snapshot()).unwrap();
        assert_eq!(r.epoch(), m.epoch());
        assert_eq!(r.group(GroupId(1)), m.group(GroupId(1)));
        assert_eq!(r.topology().len(), 3);
        assert!(r.restore(3, b"\x01\xff").is_err());
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
        assert_eq!(moving.new, ReplicaId(MOVED_REPLICA_IDS_FROM));
        assert!(p.replicas.contains(&(moving.new, at(1, 0))));
        assert_eq!(p.initial, vec![ReplicaId(11), ReplicaId(12)]);
        assert!(!apply(&mut m, 3, start(at(3, 0))), "one move at a time");
        let abandon = MetadataCommand::AbandonMove { group: g };
        assert!(apply(&mut m, 3, abandon.clone()));
        assert!(m.group(g).unwrap().moving.unwrap().abandon);
        assert!(!apply(&mut m, 3, abandon), "asked once");
        // A snapshot taken mid-move restores it.
        let mut r = MetadataStore::new();
        r.restore(3, &m.snapshot()).unwrap();
        assert_eq!(
            r,
            MetadataStore {
                applied: 3,
                ..m.clone()
            }
        );
        let end = |new, moved| MetadataCommand::EndMove {
            group: g,
            new,
            moved,
        };
        assert!(!apply(&mut m, 4, end(ReplicaId(5), true)), "not this move");
        assert!(apply(&mut m, 4, end(moving.new, true)));
        let p = m.group(g).unwrap();
        assert_eq!(
            p.replicas,
            vec![(ReplicaId(12), at(2, 1)), (moving.new, at(1, 0))]
        );
        assert_eq!(p.moving, None);
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
        assert_eq!(next.0, MOVED_REPLICA_IDS_FROM + 1);
        assert!(apply(&mut m, 6, end(next, false)));
        assert_eq!(
            m.group(g).unwrap().replicas,
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
        ] {
            assert_eq!(MetadataCommand::decode(&c.encode()).unwrap(), c);
        }
        assert!(MetadataCommand::decode(b"\x05\x01\x01\x02").is_err());
    }
}
