//! The simulated network: messages between cores, clients and the operator, delivered
//! after a delay (hence reordered), lost, duplicated, or cut by a partition.
//!
//! Partitions cut links between nodes (one way or both); clients and the operator stand
//! outside the cluster and are never cut off, but their messages are delayed and lost like
//! any other. A request that would write is never duplicated: the transport (one QUIC
//! stream per request) delivers a request at most once, and a second copy would apply the
//! write twice. Everything else — Raft batches, snapshot chunks, reads, answers — may be.

use std::collections::BTreeSet;

use crate::ids::{CoreAddress, NodeId, Role};
use crate::rng::Rng;
use crate::sim::faults::Faults;
use crate::wire::kv_rpc::{KvRequest, KvResponseFrame};

/// Who sends or receives a message.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Endpoint {
    /// A core of a node.
    Core(CoreAddress),
    /// A simulated client.
    Client(usize),
    /// The simulated operator (moves, leader transfers, decommissions).
    Operator,
    /// The hostile participant's client (`sim::hostile`), with a client certificate.
    Hostile,
}

impl Endpoint {
    /// The role its certificate would carry: clients are clients, the operator an admin, a
    /// core its node.
    pub fn role(self) -> Role {
        match self {
            Endpoint::Core(at) => Role::Node(at.node),
            Endpoint::Client(_) | Endpoint::Hostile => Role::Client,
            Endpoint::Operator => Role::Admin,
        }
    }

    fn node(self) -> Option<NodeId> {
        match self {
            Endpoint::Core(at) => Some(at.node),
            Endpoint::Client(_) | Endpoint::Operator | Endpoint::Hostile => None,
        }
    }
}

/// What a message carries.
#[derive(Clone, Debug)]
pub enum Payload {
    /// A `RaftBatch` frame's payload.
    Raft(Vec<u8>),
    /// A `BulkChunk` frame's payload (part of a snapshot).
    Chunk(Vec<u8>),
    /// A `Ping` frame's payload (a failure-detector message).
    Liveness(Vec<u8>),
    Request(KvRequest),
    Reply(KvResponseFrame),
}

impl Payload {
    fn may_duplicate(&self) -> bool {
        match self {
            Payload::Request(r) => !r.op.writes(),
            Payload::Raft(_) | Payload::Chunk(_) | Payload::Liveness(_) | Payload::Reply(_) => true,
        }
    }

    /// A small number naming the kind, for the trace.
    pub fn kind(&self) -> u64 {
        match self {
            Payload::Raft(_) => 1,
            Payload::Chunk(_) => 2,
            Payload::Request(_) => 3,
            Payload::Reply(_) => 4,
            Payload::Liveness(_) => 5,
        }
    }
}

/// A message in flight.
#[derive(Clone, Debug)]
pub struct Envelope {
    pub from: Endpoint,
    pub to: Endpoint,
    pub payload: Payload,
    deliver_at: u64,
    seq: u64,
}

/// Every message in flight, and the links cut.
#[derive(Debug, Default)]
pub struct Network {
    in_flight: Vec<Envelope>,
    seq: u64,
    /// Cut links between nodes, `(from, to)`.
    cut: BTreeSet<(NodeId, NodeId)>,
}

impl Network {
    /// Sends `payload`; returns whether a copy is on its way (not lost or cut at once).
    pub fn send(
        &mut self,
        rng: &mut Rng,
        faults: &Faults,
        step: u64,
        from: Endpoint,
        to: Endpoint,
        payload: Payload,
    ) -> bool {
        if self.is_cut(from, to) || rng.next_f64() < faults.loss {
            return false;
        }
        let copies = if payload.may_duplicate() && rng.next_f64() < faults.duplicate {
            2
        } else {
            1
        };
        for _ in 0..copies {
            self.seq += 1;
            self.in_flight.push(Envelope {
                from,
                to,
                payload: payload.clone(),
                deliver_at: step + 1 + rng.below(faults.max_delay_steps),
                seq: self.seq,
            });
        }
        true
    }

    /// The messages due by `step`, in delivery order; those for a paused node wait (a paused
    /// process reads its socket only when it resumes).
    pub fn due(&mut self, step: u64, paused: impl Fn(NodeId) -> bool) -> Vec<Envelope> {
        let mut due = Vec::new();
        let mut i = 0;
        while i < self.in_flight.len() {
            let waits = self.in_flight[i].to.node().is_some_and(&paused);
            if self.in_flight[i].deliver_at <= step && !waits {
                due.push(self.in_flight.swap_remove(i));
            } else {
                i += 1;
            }
        }
        due.sort_by_key(|m| (m.deliver_at, m.seq));
        due
    }

    /// Whether the link from `from` to `to` is cut (only links between nodes are).
    pub fn is_cut(&self, from: Endpoint, to: Endpoint) -> bool {
        match (from.node(), to.node()) {
            (Some(a), Some(b)) => self.cut.contains(&(a, b)),
            _ => false,
        }
    }

    /// A crashed node's sockets are gone: what was on its way to it is lost.
    pub fn drop_to(&mut self, node: NodeId) {
        self.in_flight.retain(|m| m.to.node() != Some(node));
    }

    /// Cuts the link from `a` to `b`.
    pub fn cut(&mut self, a: NodeId, b: NodeId) {
        self.cut.insert((a, b));
    }

    /// Restores every link.
    pub fn heal(&mut self) {
        self.cut.clear();
    }

    pub fn partitioned(&self) -> bool {
        !self.cut.is_empty()
    }
}
