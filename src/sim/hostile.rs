//! A hostile participant: a holder of a valid client certificate sending requests it may
//! not make, and a sender on the peer path forging Raft traffic.
//!
//! - **Requests** (role `Client`): admin operations (views, membership changes, leader
//!   transfers, durable-commit probes, `start_move`, `abandon_move`, node states), metadata
//!   commands no request may carry (`bootstrap`, `end_move`), malformed commands, and reads
//!   and writes of the clients' own keys sent to a group the key does not hash to. None may
//!   succeed: an answer that says it did (accepted, written, a view, a value) is a violation.
//! - **Peer traffic** from a real node's cores: Raft messages in the name of a replica that
//!   lives on another node (every field otherwise drawn at random), and bytes that are no
//!   batch at all. Screening must refuse them; the run's other checkers (linearizability,
//!   one leader per term, the keys in each group) must still hold.
//!
//! It draws from a generator of its own, so adding it changes the other actors' choices
//! only through the messages it sends.

use std::collections::HashMap;

use raft::eraftpb::{Message, MessageType};

use crate::cluster::metadata::MetadataCommand;
use crate::cluster::placement::Replica;
use crate::cluster::topology::NodeState;
use crate::ids::{CoreAddress, CoreId, GroupId, NodeId, ReplicaId};
use crate::replication::kv::KvCommand;
use crate::replication::raft_host::MembershipChange;
use crate::rng::{Rng, mix64};
use crate::sim::Sim;
use crate::sim::network::{Endpoint, Payload};
use crate::wire::kv_rpc::{KvOp, KvReply, KvRequest, KvResponseFrame};
use crate::wire::raft::encode_batch;

/// One hostile act in this many steps, on average.
const ACT_EVERY_STEPS: u64 = 10;

pub(super) struct Hostile {
    rng: Rng,
    next_id: u64,
    /// Requests sent and not yet answered: what each asked.
    asked: HashMap<u64, String>,
}

impl Hostile {
    pub(super) fn new(seed: u64) -> Hostile {
        Hostile {
            rng: Rng::new(mix64(seed ^ 0x4057_11e0_4057_11e0)),
            next_id: 1,
            asked: HashMap::new(),
        }
    }
}

impl Sim {
    /// Maybe one hostile act this step.
    pub(super) fn drive_hostile(&mut self) {
        if self.hostile.rng.below(ACT_EVERY_STEPS) != 0 {
            return;
        }
        let Some(table) = self.metadata().map(|m| m.table().clone()) else {
            return;
        };
        let groups: Vec<(GroupId, Vec<Replica>)> = table
            .groups()
            .map(|(g, p)| (g, p.replicas.clone()))
            .collect();
        if groups.is_empty() {
            return;
        }
        let (group, replicas) =
            groups[self.hostile.rng.below(groups.len() as u64) as usize].clone();
        self.report.hostile_acts += 1;
        match self.hostile.rng.below(4) {
            0 | 1 => self.hostile_request(group, &replicas),
            2 => self.forged_message(group, &replicas),
            _ => self.garbage_bytes(),
        }
    }

    fn random_core(&mut self) -> CoreAddress {
        let node = NodeId(1 + self.hostile.rng.below(self.o.nodes));
        let core = CoreId(self.hostile.rng.below(u64::from(self.o.cores)) as u16);
        CoreAddress::new(node, core)
    }

    fn hostile_request(&mut self, group: GroupId, replicas: &[Replica]) {
        let rng = &mut self.hostile.rng;
        let some_replica = replicas
            .get(rng.below(replicas.len().max(1) as u64) as usize)
            .map_or(ReplicaId(1), |r| r.id);
        let some_node = NodeId(1 + rng.below(self.o.nodes));
        let meta = |c: MetadataCommand| {
            (
                GroupId::METADATA,
                KvOp::Write {
                    command: c.encode(),
                },
            )
        };
        let (target_group, op) = match rng.below(11) {
            0 => (group, KvOp::View { new: some_replica }),
            1 => (
                group,
                KvOp::ChangeMembership {
                    changes: vec![MembershipChange::Remove(some_replica)],
                },
            ),
            2 => (group, KvOp::TransferLeader { to: some_replica }),
            3 => (group, KvOp::DurableCommit),
            4 => meta(MetadataCommand::StartMove {
                group,
                from: some_replica,
                to: CoreAddress::new(some_node, CoreId(0)),
            }),
            5 => meta(MetadataCommand::AbandonMove { group }),
            6 => meta(MetadataCommand::SetNodeState {
                node: some_node,
                state: NodeState::Decommissioned,
            }),
            7 => meta(MetadataCommand::EndMove {
                group,
                new: some_replica,
                moved: true,
            }),
            8 => (
                group,
                KvOp::Write {
                    command: (0..rng.below(24)).map(|_| rng.next_u64() as u8).collect(),
                },
            ),
            // A client key, in a group it does not hash to.
            _ => {
                let key = self.key_table[rng.below(self.key_table.len() as u64) as usize];
                let owner = GroupId(1 + u64::from(self.vshards.vshard_of(&key.to_be_bytes()).0));
                let groups = u64::from(self.vshards.count());
                let wrong = GroupId(1 + (owner.0 + rng.below(groups - 1)) % groups);
                if wrong == owner {
                    return;
                }
                let key = key.to_be_bytes().to_vec();
                let op = if rng.below(2) == 0 {
                    KvOp::Get { key }
                } else {
                    KvOp::Write {
                        command: KvCommand::Put {
                            key,
                            value: b"hostile".to_vec(),
                        }
                        .encode(),
                    }
                };
                (wrong, op)
            }
        };
        let id = self.hostile.next_id;
        self.hostile.next_id += 1;
        self.hostile
            .asked
            .insert(id, format!("{op:?} to group {}", target_group.0));
        let target = self.random_core();
        let request = KvRequest {
            id,
            group: target_group,
            op,
            trace: false,
        };
        self.send_request(Endpoint::Hostile, target, request);
    }

    /// A Raft message in the name of a replica of `group` sent from a node that does not
    /// hold it.
    fn forged_message(&mut self, group: GroupId, replicas: &[Replica]) {
        if replicas.is_empty() {
            return;
        }
        let rng = &mut self.hostile.rng;
        let claimed = replicas[rng.below(replicas.len() as u64) as usize];
        let to = replicas[rng.below(replicas.len() as u64) as usize];
        let senders: Vec<NodeId> = (1..=self.o.nodes)
            .map(NodeId)
            .filter(|n| *n != claimed.at.node)
            .collect();
        let node = senders[rng.below(senders.len() as u64) as usize];
        let kinds = [
            MessageType::MsgAppend,
            MessageType::MsgHeartbeat,
            MessageType::MsgRequestVote,
            MessageType::MsgRequestPreVote,
            MessageType::MsgTimeoutNow,
            MessageType::MsgAppendResponse,
            MessageType::MsgPropose,
            MessageType::MsgHup,
        ];
        let mut m = Message::default();
        m.set_msg_type(kinds[rng.below(kinds.len() as u64) as usize]);
        m.from = claimed.id.0;
        m.to = to.id.0;
        let mut wide = |bits: u64| {
            let width = rng.below(bits);
            rng.below(1 << width)
        };
        m.term = wide(48);
        m.index = wide(40);
        m.commit = wide(40);
        m.log_term = rng.below(m.term.max(1));
        let mut bytes = Vec::new();
        encode_batch([(group.0, &m)].into_iter(), &mut bytes);
        let from = Endpoint::Core(CoreAddress::new(node, CoreId(0)));
        let step = self.step;
        self.network.send(
            &mut self.rng,
            &self.faults,
            step,
            from,
            Endpoint::Core(to.at),
            Payload::Raft(bytes),
        );
    }

    /// Bytes that are no batch or message, on the Raft, snapshot or failure-detector path.
    fn garbage_bytes(&mut self) {
        let from = self.random_core();
        let to = self.random_core();
        let rng = &mut self.hostile.rng;
        let bytes: Vec<u8> = (0..rng.below(96)).map(|_| rng.next_u64() as u8).collect();
        let payload = match rng.below(3) {
            0 => Payload::Raft(bytes),
            1 => Payload::Chunk(bytes),
            _ => Payload::Liveness(bytes),
        };
        let step = self.step;
        self.network.send(
            &mut self.rng,
            &self.faults,
            step,
            Endpoint::Core(from),
            Endpoint::Core(to),
            payload,
        );
    }

    /// An answer to the hostile client: a success is a violation.
    pub(super) fn on_hostile_reply(&mut self, frame: KvResponseFrame) {
        let Some(asked) = self.hostile.asked.remove(&frame.id) else {
            return;
        };
        let succeeded = match &frame.reply {
            KvReply::Written(_)
            | KvReply::Value(_)
            | KvReply::Items(_)
            | KvReply::View(_)
            | KvReply::Accepted
            | KvReply::Index(_)
            | KvReply::Routing { .. }
            | KvReply::Moves(_) => true,
            KvReply::Forbidden(_) | KvReply::Error(_) => {
                self.report.hostile_refused += 1;
                false
            }
            KvReply::NotLeader(_) | KvReply::Unknown(_) | KvReply::Moved { .. } => false,
        };
        if succeeded {
            self.checks.violations.push(format!(
                "hostile client: {asked} succeeded ({:?})",
                frame.reply
            ));
        }
    }
}
