//! The simulated operator: what a rebalancer and an on-call engineer do to a cluster,
//! through the requests they would send — leader transfers at random, replica moves at
//! random, and, when a node's disk fails, marking the node decommissioned and moving its
//! replicas elsewhere. Every chore is a client [`Call`] over the simulated network; the
//! nodes' own migration executor carries the moves out.

use crate::client::call::{Call, CallError, CallPolicy, Failure};
use crate::client::routing::Routing;
use crate::cluster::metadata::MetadataCommand;
use crate::cluster::placement::PlacementTable;
use crate::cluster::topology::NodeState;
use crate::ids::{CoreAddress, CoreId, GroupId, NodeId, ReplicaId};
use crate::sim::network::Endpoint;
use crate::time::Time;
use crate::wire::kv_rpc::{KvOp, KvReply, KvRequest, KvResponseFrame};

/// What a chore is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Chore {
    /// Hand a group's leadership to another voter.
    Transfer,
    /// Start moving one of a group's replicas.
    Move(GroupId),
    /// Mark a node whose disk failed as gone for good.
    Decommission(NodeId),
    /// Drain a healthy node for removal (`kv decommission`): the rebalancer empties it and
    /// the coordinator marks it decommissioned.
    Retire(NodeId),
    /// Undo that drain while it runs (`kv recommission`).
    Recommission(NodeId),
    /// Register a new node (`add_node`), as `start --join` does before the node starts.
    Join(NodeId),
}

/// A chore that is over, with its outcome.
pub type ChoreDone = (Chore, Result<KvReply, CallError>);

/// The operator's chores under way.
pub struct Operator {
    pub routing: Routing,
    tasks: Vec<(Chore, Call)>,
}

impl Operator {
    pub fn new(routing: Routing) -> Operator {
        Operator {
            routing,
            tasks: Vec::new(),
        }
    }

    /// How the operator's calls behave: like a client's.
    pub fn policy() -> CallPolicy {
        crate::sim::clients::client_policy()
    }

    pub fn start(&mut self, chore: Chore, call: Call) {
        self.tasks.push((chore, call));
    }

    /// Whether a chore like `chore` is under way.
    pub fn busy(&self, chore: Chore) -> bool {
        self.tasks.iter().any(|(c, _)| *c == chore)
    }

    /// Takes every chore as far as it goes: the requests to send, and the chores that are
    /// over with their outcome.
    pub fn poll(&mut self, now: Time) -> (Vec<(CoreAddress, KvRequest)>, Vec<ChoreDone>) {
        let (mut sends, mut done) = (Vec::new(), Vec::new());
        let routing = &mut self.routing;
        self.tasks
            .retain_mut(|(chore, call)| match call.drive(now, routing, &mut sends) {
                None => true,
                Some(outcome) => {
                    done.push((*chore, outcome));
                    false
                }
            });
        (sends, done)
    }

    /// An answer for one of the chores' requests.
    pub fn on_reply(&mut self, now: Time, frame: KvResponseFrame) {
        if let Some((_, call)) = self.tasks.iter_mut().find(|(_, c)| c.awaits(frame.id)) {
            call.handle_reply(now, &mut self.routing, frame.id, frame.reply);
        }
    }

    /// Request `id` could not be sent (its node refused the connection).
    pub fn on_refused(&mut self, now: Time, id: u64, failure: Failure) {
        if let Some((_, call)) = self.tasks.iter_mut().find(|(_, c)| c.awaits(id)) {
            call.handle_failure(now, &mut self.routing, id, failure);
        }
    }
}

impl crate::sim::Sim {
    /// The operator's turn: a node whose disk failed is decommissioned and its replicas
    /// moved elsewhere; with faults on, leadership and replicas move at random too.
    pub(super) fn operate(&mut self, faults: bool) {
        let now = self.now();
        if let Some(store) = self.metadata() {
            let table = store.table().clone();
            let topology = store.topology().clone();
            // With the rebalancer in the nodes, a failed node is left to the failure
            // detector (recorded `Down` after `dead_after`) and its replicas to the
            // rebalancer's repairs. Without it, the operator retires the node: drained,
            // then decommissioned, its replicas moved by hand.
            let by_hand = !self.o.rebalance;
            let next_state: Vec<(NodeId, NodeState)> = self
                .nodes
                .iter()
                .filter(|(_, n)| by_hand && n.failed)
                .filter_map(|(id, _)| match store.topology().node(*id)?.state {
                    NodeState::Joining | NodeState::Active => Some((*id, NodeState::Draining)),
                    NodeState::Draining => Some((*id, NodeState::Decommissioned)),
                    NodeState::Decommissioned | NodeState::Down => None,
                })
                .collect();
            let failed: Vec<NodeId> = self
                .nodes
                .iter()
                .filter(|(_, n)| by_hand && n.failed)
                .map(|(id, _)| *id)
                .collect();
            for (node, state) in next_state {
                let chore = Chore::Decommission(node);
                if !self.operator.busy(chore) {
                    let command = MetadataCommand::SetNodeState { node, state };
                    self.operator.start(chore, metadata_call(command));
                }
            }
            for (group, p) in table.groups() {
                let lost = p.replicas.iter().find(|r| failed.contains(&r.at.node));
                if let Some(lost) = lost
                    && p.moving.is_none()
                    && !self.operator.busy(Chore::Move(group))
                    && let Some(to) = self.draw_target(&table, group, lost.id)
                {
                    let command = MetadataCommand::StartMove {
                        group,
                        from: lost.id,
                        to,
                    };
                    self.operator
                        .start(Chore::Move(group), metadata_call(command));
                }
            }
            if faults {
                self.retire_or_recommission(&topology);
            }
            if !self.scripted {
                self.ask_to_join();
            }
            // With the rebalancer in the nodes, it moves replicas; the operator only repairs.
            if faults && !self.o.rebalance && self.rng.next_f64() < self.faults.move_per_step {
                let group = GroupId(1 + self.rng.below(u64::from(self.o.groups)));
                if let Some(p) = table.group(group)
                    && p.moving.is_none()
                    && !self.operator.busy(Chore::Move(group))
                {
                    let from = p.replicas[self.rng.below(p.replicas.len() as u64) as usize].id;
                    if let Some(to) = self.draw_target(&table, group, from) {
                        let command = MetadataCommand::StartMove { group, from, to };
                        self.operator
                            .start(Chore::Move(group), metadata_call(command));
                        self.record(17, group.0);
                    }
                }
            }
        }
        if faults && self.rng.next_f64() < self.faults.transfer_per_step {
            // Leadership moves (as the rebalancer would move it) while faults go on.
            let group = GroupId(1 + self.rng.below(u64::from(self.o.groups)));
            let pick = self.rng.next_u64();
            let voters = self
                .leader_of(group)
                .and_then(|(at, _)| Some((at, self.core(at)?.host().membership(group)?.voters)));
            if let Some((at, voters)) = voters
                && !voters.is_empty()
            {
                let to = voters[(pick % voters.len() as u64) as usize];
                let op = KvOp::TransferLeader { to };
                let call = Call::pinned(at, group, op, Operator::policy());
                self.operator.start(Chore::Transfer, call);
                self.record(13, to.0);
            }
        }
        let (sends, done) = self.operator.poll(now);
        for (target, request) in sends {
            self.send_request(Endpoint::Operator, target, request);
        }
        for (chore, outcome) in done {
            tracing::debug!(step = self.step, ?chore, ?outcome, "operator chore done");
            if let Chore::Join(node) = chore {
                let accepted = matches!(&outcome, Ok(KvReply::Written(r)) if r.first() == Some(&1));
                // An unknown outcome may have taken effect: the operator looks (`status`),
                // as one would before asking again. Under the liveness phase's message
                // loss, a join whose every answer was lost never started its node.
                let listed = matches!(&outcome, Err(CallError::Unknown(_)))
                    && self
                        .metadata()
                        .is_some_and(|m| m.topology().node(node).is_some());
                if accepted || listed {
                    self.joined.insert(node);
                    self.start(node);
                    self.record(19, node.0);
                } else {
                    // Asked again a second later (an unknown outcome, or no leader).
                    self.join_at = Some(self.step + 100);
                }
            }
        }
    }

    /// From `join_at` (one run in three with the rebalancer on), a new node asks to join
    /// with `add_node`, under whatever faults run; the node starts, as a joined node, once
    /// the metadata group accepted it. (The request goes as the operator's, an admin's; in
    /// a real cluster the node sends it for itself, which the same check admits.)
    fn ask_to_join(&mut self) {
        let node = NodeId(self.o.nodes + 1);
        let due = self.join_at.is_some_and(|at| self.step >= at);
        if !due || self.joined.contains(&node) || self.operator.busy(Chore::Join(node)) {
            return;
        }
        if !self.nodes.contains_key(&node) {
            self.nodes
                .insert(node, crate::sim::SimNode::new(self.o.cores));
            self.report.joins += 1;
        }
        let info = crate::cluster::topology::NodeInfo {
            node_id: node,
            addr: std::net::SocketAddr::from(([10, 0, 0, node.0 as u8], 7000)).to_string(),
            cores: self.o.cores,
            state: NodeState::Joining,
        };
        self.operator.start(
            Chore::Join(node),
            metadata_call(MetadataCommand::AddNode { node: info }),
        );
        self.join_at = None;
    }

    /// At most once a run, with the rebalancer on and no disk failed: drain a random node;
    /// one time in three, ask for it back a while later (refused if the drain is over).
    fn retire_or_recommission(&mut self, topology: &crate::cluster::topology::ClusterTopology) {
        if let Some((node, Some(at))) = self.retired
            && self.step >= at
        {
            self.retired = Some((node, None));
            let still_draining = topology
                .node(node)
                .is_some_and(|n| n.state == NodeState::Draining);
            if still_draining {
                let state = NodeState::Active;
                let command = MetadataCommand::SetNodeState { node, state };
                self.operator
                    .start(Chore::Recommission(node), metadata_call(command));
                self.recommissioned = true;
                self.record(18, node.0 << 1);
            }
        }
        let eligible = self.o.rebalance
            && self.retired.is_none()
            && self.faults.retire_per_step > 0.0
            && self.nodes.values().all(|n| !n.failed && !n.corrupted);
        if eligible && self.rng.next_f64() < self.faults.retire_per_step {
            // Any member, a node that joined included.
            let node = NodeId(1 + self.rng.below(self.nodes.len() as u64));
            let back = (self.rng.below(3) == 0).then(|| self.step + 50 + self.rng.below(500));
            self.retired = Some((node, back));
            let state = NodeState::Draining;
            let command = MetadataCommand::SetNodeState { node, state };
            self.operator
                .start(Chore::Retire(node), metadata_call(command));
            self.record(18, node.0 << 1 | 1);
        }
    }

    /// A random core to move `group`'s replica `from` to: not on a failed node, not on a
    /// node holding another replica of the group (another core of `from`'s node is fine).
    fn draw_target(
        &mut self,
        table: &PlacementTable,
        group: GroupId,
        from: ReplicaId,
    ) -> Option<CoreAddress> {
        let p = table.group(group)?;
        let from_at = p.address_of(from)?;
        for _ in 0..8 {
            let to = CoreAddress::new(
                NodeId(1 + self.rng.below(self.o.nodes)),
                CoreId(self.rng.below(u64::from(self.o.cores)) as u16),
            );
            let taken = p
                .replicas
                .iter()
                .any(|r| r.at.node == to.node && (r.id != from || from_at.core == to.core));
            if !taken && !self.nodes[&to.node].failed {
                return Some(to);
            }
        }
        None
    }
}

/// A call that proposes `command` to the metadata group.
fn metadata_call(command: MetadataCommand) -> Call {
    let op = KvOp::Write {
        command: command.encode(),
    };
    Call::new(GroupId::METADATA, op, Operator::policy())
}
