//! Client requests and responses for the KV service, as frame payloads.
//!
//! ```text
//! request  = id:varint group:varint op:u8 body
//!   op 1 get    body = key:bytes
//!   op 2 write  body = command:bytes          (an encoded `KvCommand`)
//!   op 3 scan   body = start:bytes end_present:u8 [end:bytes] limit:varint
//!   op 4 routing                              (group 0: the placement table)
//!   op 5 view            body = new:varint    (the leader's view for a replica move)
//!   op 6 change members  body = count (kind:u8 replica:varint)*   kind 1 learner, 2 voter, 3 remove
//!   op 7 transfer leader body = to:varint
//!   op 8 durable commit                       (this core's durable commit index)
//!   op 9 moves                                (group 0: the replica moves under way)
//!   op 10 load report    body = report:bytes  (group 0: a node's load, `balance::report`)
//!   op 11 status                              (group 0: the rebalancer's view, answered as a
//!                                              value holding a JSON document)
//!   op 12 cluster                             (group 0: settings and members, as a value
//!                                              holding a JSON `ClusterInfo`)
//!   trailer (optional)   1                    (trace: answer a write with its stages)
//! response = id:varint status:u8 body
//!   status 1 written    body = response:bytes  (an encoded `KvResponse`)
//!   status 2 value      body = present:u8 [value:bytes]
//!   status 3 items      body = count:varint (key:bytes value:bytes)*
//!   status 4 not leader body = hint_present:u8 [node:varint core:varint]
//!   status 5 error      body = message:bytes
//!   status 6 routing    body = epoch:varint count (node:varint addr:bytes)*
//!                              count (group:varint count (replica:varint node:varint core:varint)*)*
//!   status 7 view       body = leader:varint voters learners joint:u8 new_matched:opt commit:varint successor:opt
//!   status 8 accepted
//!   status 9 index      body = index:varint
//!   status 10 moved     body = epoch:varint   (this node hosts no replica of the group at that epoch)
//!   status 11 moves     body = count (group:varint from:varint new:varint node:varint core:varint abandon:u8)*
//!   status 12 unknown   body = message:bytes  (the request may or may not have taken effect)
//!   status 13 forbidden body = message:bytes  (the sender's certificate does not allow it)
//!   trailer (optional)   1 queue batch_wait leader_fsync commit_wait apply reply total
//!                          follower           (all varint microseconds: `ServerTiming`)
//! ids = count replica:varint*;  opt = present:u8 [varint]
//! ```
//!
//! A trailer is optional: a request without one asks for no trace, a response without one
//! carries no timing.
//!
//! Ops 5–8 are the migration executor's admin requests (a node's core 0 sends them with
//! its node certificate; any holder of a cluster certificate may). Writes to group 0 are
//! metadata commands, of which admins may send the operator's: `start_move`,
//! `abandon_move` and `node_state`; a node may send `add_node` for itself (`start --join`);
//! `bootstrap` and `end_move` come only from the cluster's own cores.

use std::net::SocketAddr;

use crate::constants::{
    CORES_PER_NODE_MAX, KV_KEY_MAX_BYTES, KV_SCAN_MAX_ITEMS, KV_VALUE_MAX_BYTES,
};
use crate::ids::{CoreAddress, GroupId, ReplicaId};
use crate::ids::{CoreId, NodeId};
use crate::replication::raft_host::{Membership, MembershipChange};
use crate::replication::replica_move::LeaderView;
use crate::wire::codec::{DecodeError, Reader, put_bytes, put_varint};

/// What a client asks of one group.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KvOp {
    Get {
        key: Vec<u8>,
    },
    /// An encoded `KvCommand` (put, delete, compare-and-set).
    Write {
        command: Vec<u8>,
    },
    Scan {
        start: Vec<u8>,
        end: Option<Vec<u8>>,
        limit: u32,
    },
    /// The placement table (sent to group 0, the metadata group).
    Routing,
    /// The leader's view of the group for a move whose new replica is `new`.
    View {
        new: ReplicaId,
    },
    /// Propose these membership changes at the leader (one joint change if several).
    ChangeMembership {
        changes: Vec<MembershipChange>,
    },
    /// Ask the leader to hand leadership to `to`.
    TransferLeader {
        to: ReplicaId,
    },
    /// The group's commit index the addressed core holds durably.
    DurableCommit,
    /// The replica moves under way (sent to group 0, the metadata group).
    Moves,
    /// A node's load report for the coordinator (group 0; a node certificate only).
    LoadReport {
        report: Vec<u8>,
    },
    /// The rebalancer's view of the cluster, from the coordinator (group 0).
    Status,
    /// The cluster's settings and members as the addressed node knows them (group 0, any
    /// node; answered with a JSON `ClusterInfo` in `Value`): what a node joining with
    /// `start --join` learns first.
    Cluster,
}

impl KvOp {
    /// Whether the op changes state (a write, a membership change, a leader transfer):
    /// one that may have reached a server must not be sent again blindly.
    pub fn writes(&self) -> bool {
        matches!(
            self,
            KvOp::Write { .. } | KvOp::ChangeMembership { .. } | KvOp::TransferLeader { .. }
        )
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KvRequest {
    pub id: u64,
    pub group: GroupId,
    pub op: KvOp,
    /// Answer a write with where its time went on the server (`ServerTiming`): set on
    /// sampled requests by a client measuring stages. Other ops ignore it.
    pub trace: bool,
}

/// Where a traced write's time went on the server, in microseconds, from the moment its
/// connection task read the request to the moment it wrote the response.
///
/// The first seven stages follow the write's critical path and add up to `total_us`.
/// `follower_us` runs in parallel with `leader_fsync_us`: the append's round trip to the
/// follower that completed the quorum, its fsync included. A stage's end is when the core
/// loop learned of it, so a busy loop shows in the stage it delayed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ServerTiming {
    /// Read by the connection task → taken by the core loop (the inbox, and the hop to
    /// another core of the node if the group lives there).
    pub queue_us: u32,
    /// Proposed → handed to the log in a persist batch (a batch in flight delays the next:
    /// group commit).
    pub batch_wait_us: u32,
    /// Batch handed to the log → the loop learned it is durable (its durable write).
    pub leader_fsync_us: u32,
    /// Durable here → committed: waiting for the quorum beyond the leader's own fsync.
    pub commit_wait_us: u32,
    /// Committed → answered (applying the entry, in the same turn unless the loop lagged).
    pub apply_us: u32,
    /// Answered → response written to the stream (the rest of the loop's turn, the
    /// channel to the connection task, the write).
    pub reply_us: u32,
    pub total_us: u32,
    /// Batch handed to the log → the quorum follower's acknowledgement arrived.
    pub follower_us: u32,
}

impl ServerTiming {
    fn encode(&self, out: &mut Vec<u8>) {
        for v in [
            self.queue_us,
            self.batch_wait_us,
            self.leader_fsync_us,
            self.commit_wait_us,
            self.apply_us,
            self.reply_us,
            self.total_us,
            self.follower_us,
        ] {
            put_varint(out, u64::from(v));
        }
    }

    fn decode(r: &mut Reader<'_>) -> Result<ServerTiming, DecodeError> {
        // In the order `encode` writes them: a struct literal's fields are evaluated in
        // the order written.
        let mut next =
            || Ok::<_, DecodeError>(u32::try_from(r.varint("stage")?).unwrap_or(u32::MAX));
        Ok(ServerTiming {
            queue_us: next()?,
            batch_wait_us: next()?,
            leader_fsync_us: next()?,
            commit_wait_us: next()?,
            apply_us: next()?,
            reply_us: next()?,
            total_us: next()?,
            follower_us: next()?,
        })
    }
}

/// The one trailer kind: a trace request, or a response's timing.
const TRAILER_TRACE: u8 = 1;

/// Reads an optional trailer: whether one of kind `TRAILER_TRACE` is there.
fn trailer(r: &mut Reader<'_>) -> Result<bool, DecodeError> {
    if r.remaining() == 0 {
        return Ok(false);
    }
    match r.u8("trailer")? {
        TRAILER_TRACE => Ok(true),
        v => Err(DecodeError::BadEnum {
            what: "trailer",
            value: v.into(),
        }),
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KvReply {
    /// An encoded `KvResponse`.
    Written(Vec<u8>),
    Value(Option<Vec<u8>>),
    Items(Vec<(Vec<u8>, Vec<u8>)>),
    NotLeader(Option<CoreAddress>),
    /// The request was refused or failed; it had no effect.
    Error(String),
    /// The request may or may not have taken effect (a write whose leader lost leadership
    /// before it committed, a node stopping with writes in flight): the client must not
    /// assume either.
    Unknown(String),
    /// The sender's role (its certificate) does not allow the request; it had no effect.
    Forbidden(String),
    /// The placement table at `epoch`: each group's replicas (Raft id and address), and
    /// where each node listens (core `i` on the port plus `i`), so that a client can reach
    /// nodes that joined after its configuration was written.
    Routing {
        epoch: u64,
        groups: Vec<(GroupId, Vec<(u64, CoreAddress)>)>,
        nodes: Vec<(NodeId, SocketAddr)>,
    },
    View(LeaderView),
    /// An admin request was taken (its effect shows in later views).
    Accepted,
    Index(u64),
    /// A stale-epoch redirect: this node hosts no replica of the group in its placement
    /// table at `epoch`; a client whose table is older fetches it again.
    Moved {
        epoch: u64,
    },
    /// The replica moves under way, per group.
    Moves(Vec<(GroupId, crate::cluster::placement::PendingMove)>),
}

fn put_ids(out: &mut Vec<u8>, ids: &[ReplicaId]) {
    put_varint(out, ids.len() as u64);
    for r in ids {
        put_varint(out, r.0);
    }
}

fn read_ids(r: &mut Reader<'_>, what: &'static str) -> Result<Vec<ReplicaId>, DecodeError> {
    let n = r.count(what, crate::constants::RAFT_CONF_IDS_MAX)?;
    (0..n).map(|_| r.varint(what).map(ReplicaId)).collect()
}

fn put_opt(out: &mut Vec<u8>, value: Option<u64>) {
    match value {
        None => out.push(0),
        Some(v) => {
            out.push(1);
            put_varint(out, v);
        }
    }
}

fn read_opt(r: &mut Reader<'_>, what: &'static str) -> Result<Option<u64>, DecodeError> {
    match r.u8(what)? {
        0 => Ok(None),
        1 => r.varint(what).map(Some),
        v => Err(DecodeError::BadEnum {
            what,
            value: v.into(),
        }),
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KvResponseFrame {
    pub id: u64,
    pub reply: KvReply,
    /// Where the request's time went, when it asked (`KvRequest::trace`).
    pub timing: Option<ServerTiming>,
}

impl KvResponseFrame {
    /// A response without timing.
    pub fn new(id: u64, reply: KvReply) -> KvResponseFrame {
        KvResponseFrame {
            id,
            reply,
            timing: None,
        }
    }
}

const ERROR_MAX_BYTES: usize = 4096;

impl KvRequest {
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        put_varint(&mut out, self.id);
        put_varint(&mut out, self.group.0);
        match &self.op {
            KvOp::Get { key } => {
                out.push(1);
                put_bytes(&mut out, key);
            }
            KvOp::Write { command } => {
                out.push(2);
                put_bytes(&mut out, command);
            }
            KvOp::Scan { start, end, limit } => {
                out.push(3);
                put_bytes(&mut out, start);
                match end {
                    None => out.push(0),
                    Some(end) => {
                        out.push(1);
                        put_bytes(&mut out, end);
                    }
                }
                put_varint(&mut out, u64::from(*limit));
            }
            KvOp::Routing => out.push(4),
            KvOp::View { new } => {
                out.push(5);
                put_varint(&mut out, new.0);
            }
            KvOp::ChangeMembership { changes } => {
                out.push(6);
                put_varint(&mut out, changes.len() as u64);
                for c in changes {
                    let (kind, r) = match c {
                        MembershipChange::AddLearner(r) => (1, r),
                        MembershipChange::AddVoter(r) => (2, r),
                        MembershipChange::Remove(r) => (3, r),
                    };
                    out.push(kind);
                    put_varint(&mut out, r.0);
                }
            }
            KvOp::TransferLeader { to } => {
                out.push(7);
                put_varint(&mut out, to.0);
            }
            KvOp::DurableCommit => out.push(8),
            KvOp::Moves => out.push(9),
            KvOp::LoadReport { report } => {
                out.push(10);
                put_bytes(&mut out, report);
            }
            KvOp::Status => out.push(11),
            KvOp::Cluster => out.push(12),
        }
        if self.trace {
            out.push(TRAILER_TRACE);
        }
        out
    }

    pub fn decode(bytes: &[u8]) -> Result<KvRequest, DecodeError> {
        let mut r = Reader::new(bytes);
        let id = r.varint("request id")?;
        let group = GroupId(r.varint("group")?);
        let op = match r.u8("op")? {
            1 => KvOp::Get {
                key: r.bytes("key", KV_KEY_MAX_BYTES)?.to_vec(),
            },
            2 => KvOp::Write {
                command: r
                    .bytes("command", KV_KEY_MAX_BYTES + 2 * KV_VALUE_MAX_BYTES + 64)?
                    .to_vec(),
            },
            3 => {
                let start = r.bytes("start", KV_KEY_MAX_BYTES)?.to_vec();
                let end = match r.u8("end present")? {
                    0 => None,
                    1 => Some(r.bytes("end", KV_KEY_MAX_BYTES)?.to_vec()),
                    v => {
                        return Err(DecodeError::BadEnum {
                            what: "end present",
                            value: v.into(),
                        });
                    }
                };
                let limit = r.count("limit", KV_SCAN_MAX_ITEMS)? as u32;
                KvOp::Scan { start, end, limit }
            }
            4 => KvOp::Routing,
            5 => KvOp::View {
                new: ReplicaId(r.varint("new replica")?),
            },
            6 => {
                let n = r.count("changes", crate::constants::RAFT_CONF_IDS_MAX)?;
                let mut changes = Vec::with_capacity(n);
                for _ in 0..n {
                    let kind = r.u8("change kind")?;
                    let replica = ReplicaId(r.varint("replica")?);
                    changes.push(match kind {
                        1 => MembershipChange::AddLearner(replica),
                        2 => MembershipChange::AddVoter(replica),
                        3 => MembershipChange::Remove(replica),
                        v => {
                            return Err(DecodeError::BadEnum {
                                what: "change kind",
                                value: v.into(),
                            });
                        }
                    });
                }
                KvOp::ChangeMembership { changes }
            }
            7 => KvOp::TransferLeader {
                to: ReplicaId(r.varint("to")?),
            },
            8 => KvOp::DurableCommit,
            9 => KvOp::Moves,
            10 => KvOp::LoadReport {
                report: r
                    .bytes("load report", crate::constants::FRAME_PAYLOAD_MAX_BYTES)?
                    .to_vec(),
            },
            11 => KvOp::Status,
            12 => KvOp::Cluster,
            v => {
                return Err(DecodeError::BadEnum {
                    what: "op",
                    value: v.into(),
                });
            }
        };
        let trace = trailer(&mut r)?;
        r.finish()?;
        Ok(KvRequest {
            id,
            group,
            op,
            trace,
        })
    }
}

impl KvResponseFrame {
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        put_varint(&mut out, self.id);
        match &self.reply {
            KvReply::Written(response) => {
                out.push(1);
                put_bytes(&mut out, response);
            }
            KvReply::Value(value) => {
                out.push(2);
                match value {
                    None => out.push(0),
                    Some(v) => {
                        out.push(1);
                        put_bytes(&mut out, v);
                    }
                }
            }
            KvReply::Items(items) => {
                out.push(3);
                put_varint(&mut out, items.len() as u64);
                for (k, v) in items {
                    put_bytes(&mut out, k);
                    put_bytes(&mut out, v);
                }
            }
            KvReply::NotLeader(hint) => {
                out.push(4);
                match hint {
                    None => out.push(0),
                    Some(a) => {
                        out.push(1);
                        put_varint(&mut out, a.node.0);
                        put_varint(&mut out, u64::from(a.core.0));
                    }
                }
            }
            KvReply::Routing {
                epoch,
                groups,
                nodes,
            } => {
                out.push(6);
                put_varint(&mut out, *epoch);
                put_varint(&mut out, nodes.len() as u64);
                for (n, addr) in nodes {
                    put_varint(&mut out, n.0);
                    put_bytes(&mut out, addr.to_string().as_bytes());
                }
                put_varint(&mut out, groups.len() as u64);
                for (g, replicas) in groups {
                    put_varint(&mut out, g.0);
                    put_varint(&mut out, replicas.len() as u64);
                    for (r, a) in replicas {
                        put_varint(&mut out, *r);
                        put_varint(&mut out, a.node.0);
                        put_varint(&mut out, u64::from(a.core.0));
                    }
                }
            }
            KvReply::View(view) => {
                out.push(7);
                put_varint(&mut out, view.leader.0);
                put_ids(&mut out, &view.membership.voters);
                put_ids(&mut out, &view.membership.learners);
                out.push(u8::from(view.membership.joint));
                put_opt(&mut out, view.new_matched);
                put_varint(&mut out, view.commit);
                put_opt(&mut out, view.successor.map(|r| r.0));
            }
            KvReply::Accepted => out.push(8),
            KvReply::Index(index) => {
                out.push(9);
                put_varint(&mut out, *index);
            }
            KvReply::Moved { epoch } => {
                out.push(10);
                put_varint(&mut out, *epoch);
            }
            KvReply::Moves(moves) => {
                out.push(11);
                put_varint(&mut out, moves.len() as u64);
                for (g, m) in moves {
                    put_varint(&mut out, g.0);
                    put_varint(&mut out, m.from.0);
                    put_varint(&mut out, m.new.0);
                    put_varint(&mut out, m.to.node.0);
                    put_varint(&mut out, u64::from(m.to.core.0));
                    out.push(u8::from(m.abandon));
                }
            }
            KvReply::Error(message) => {
                out.push(5);
                put_bytes(
                    &mut out,
                    &message.as_bytes()[..message.len().min(ERROR_MAX_BYTES)],
                );
            }
            KvReply::Unknown(message) => {
                out.push(12);
                put_bytes(
                    &mut out,
                    &message.as_bytes()[..message.len().min(ERROR_MAX_BYTES)],
                );
            }
            KvReply::Forbidden(message) => {
                out.push(13);
                put_bytes(
                    &mut out,
                    &message.as_bytes()[..message.len().min(ERROR_MAX_BYTES)],
                );
            }
        }
        if let Some(timing) = &self.timing {
            out.push(TRAILER_TRACE);
            timing.encode(&mut out);
        }
        out
    }

    pub fn decode(bytes: &[u8]) -> Result<KvResponseFrame, DecodeError> {
        let mut r = Reader::new(bytes);
        let id = r.varint("response id")?;
        let reply = match r.u8("status")? {
            1 => KvReply::Written(r.bytes("response", KV_VALUE_MAX_BYTES + 64)?.to_vec()),
            2 => match r.u8("present")? {
                0 => KvReply::Value(None),
                1 => KvReply::Value(Some(r.bytes("value", KV_VALUE_MAX_BYTES)?.to_vec())),
                v => {
                    return Err(DecodeError::BadEnum {
                        what: "present",
                        value: v.into(),
                    });
                }
            },
            3 => {
                let n = r.count("items", KV_SCAN_MAX_ITEMS)?;
                let mut items = Vec::with_capacity(n);
                for _ in 0..n {
                    let k = r.bytes("key", KV_KEY_MAX_BYTES)?.to_vec();
                    items.push((k, r.bytes("value", KV_VALUE_MAX_BYTES)?.to_vec()));
                }
                KvReply::Items(items)
            }
            4 => match r.u8("hint present")? {
                0 => KvReply::NotLeader(None),
                1 => {
                    let node = NodeId(r.varint("node")?);
                    let core = r.count("core", usize::from(CORES_PER_NODE_MAX))? as u16;
                    KvReply::NotLeader(Some(CoreAddress {
                        node,
                        core: CoreId(core),
                    }))
                }
                v => {
                    return Err(DecodeError::BadEnum {
                        what: "hint present",
                        value: v.into(),
                    });
                }
            },
            5 => KvReply::Error(
                String::from_utf8_lossy(r.bytes("error", ERROR_MAX_BYTES)?).into_owned(),
            ),
            12 => KvReply::Unknown(
                String::from_utf8_lossy(r.bytes("unknown", ERROR_MAX_BYTES)?).into_owned(),
            ),
            13 => KvReply::Forbidden(
                String::from_utf8_lossy(r.bytes("forbidden", ERROR_MAX_BYTES)?).into_owned(),
            ),
            6 => {
                let epoch = r.varint("epoch")?;
                let k = r.count("nodes", crate::constants::NODES_MAX)?;
                let mut nodes = Vec::with_capacity(k);
                for _ in 0..k {
                    let node = NodeId(r.varint("node")?);
                    let addr = std::str::from_utf8(r.bytes("node address", 64)?)
                        .ok()
                        .and_then(|a| a.parse::<SocketAddr>().ok())
                        .ok_or(DecodeError::BadEnum {
                            what: "node address",
                            value: 0,
                        })?;
                    nodes.push((node, addr));
                }
                let n = r.count("groups", crate::constants::VSHARD_COUNT_MAX as usize)?;
                let mut groups = Vec::with_capacity(n.min(65_536));
                for _ in 0..n {
                    let g = GroupId(r.varint("group")?);
                    let m = r.count("replicas", crate::constants::RAFT_CONF_IDS_MAX)?;
                    let mut replicas = Vec::with_capacity(m);
                    for _ in 0..m {
                        let id = r.varint("replica")?;
                        let node = NodeId(r.varint("node")?);
                        let core = r
                            .count("core", usize::from(crate::constants::CORES_PER_NODE_MAX))?
                            as u16;
                        replicas.push((
                            id,
                            CoreAddress {
                                node,
                                core: CoreId(core),
                            },
                        ));
                    }
                    groups.push((g, replicas));
                }
                KvReply::Routing {
                    epoch,
                    groups,
                    nodes,
                }
            }
            7 => {
                let leader = ReplicaId(r.varint("leader")?);
                let voters = read_ids(&mut r, "voters")?;
                let learners = read_ids(&mut r, "learners")?;
                let joint = r.bool("joint")?;
                KvReply::View(LeaderView {
                    leader,
                    membership: Membership {
                        voters,
                        learners,
                        joint,
                    },
                    new_matched: read_opt(&mut r, "new matched")?,
                    commit: r.varint("commit")?,
                    successor: read_opt(&mut r, "successor")?.map(ReplicaId),
                })
            }
            8 => KvReply::Accepted,
            9 => KvReply::Index(r.varint("index")?),
            10 => KvReply::Moved {
                epoch: r.varint("epoch")?,
            },
            11 => {
                let n = r.count("moves", crate::constants::VSHARD_COUNT_MAX as usize)?;
                let mut moves = Vec::with_capacity(n.min(65_536));
                for _ in 0..n {
                    let group = GroupId(r.varint("group")?);
                    let from = ReplicaId(r.varint("from")?);
                    let new = ReplicaId(r.varint("new")?);
                    let node = NodeId(r.varint("node")?);
                    let core = CoreId(
                        r.count("core", usize::from(crate::constants::CORES_PER_NODE_MAX))? as u16,
                    );
                    let abandon = r.bool("abandon")?;
                    moves.push((
                        group,
                        crate::cluster::placement::PendingMove {
                            from,
                            new,
                            to: CoreAddress { node, core },
                            abandon,
                        },
                    ));
                }
                KvReply::Moves(moves)
            }
            v => {
                return Err(DecodeError::BadEnum {
                    what: "status",
                    value: v.into(),
                });
            }
        };
        let timing = if trailer(&mut r)? {
            Some(ServerTiming::decode(&mut r)?)
        } else {
            None
        };
        r.finish()?;
        Ok(KvResponseFrame { id, reply, timing })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_and_responses_round_trip() {
        for op in [
            KvOp::Get { key: b"k".to_vec() },
            KvOp::Write {
                command: vec![1, 2, 3],
            },
            KvOp::Scan {
                start: b"a".to_vec(),
                end: Some(b"z".to_vec()),
                limit: 10,
            },
            KvOp::Routing,
            KvOp::View { new: ReplicaId(9) },
            KvOp::ChangeMembership {
                changes: vec![
                    MembershipChange::AddLearner(ReplicaId(1)),
                    MembershipChange::AddVoter(ReplicaId(2)),
                    MembershipChange::Remove(ReplicaId(3)),
                ],
            },
            KvOp::TransferLeader { to: ReplicaId(4) },
            KvOp::DurableCommit,
            KvOp::Moves,
            KvOp::LoadReport {
                report: vec![1, 2, 3],
            },
            KvOp::Status,
            KvOp::Cluster,
        ] {
            for trace in [false, true] {
                let req = KvRequest {
                    id: 9,
                    group: GroupId(3),
                    op: op.clone(),
                    trace,
                };
                assert_eq!(KvRequest::decode(&req.encode()).unwrap(), req);
            }
        }
        let hint = CoreAddress {
            node: NodeId(2),
            core: CoreId(1),
        };
        for reply in [
            KvReply::Written(vec![1]),
            KvReply::Value(None),
            KvReply::Value(Some(b"v".to_vec())),
            KvReply::Items(vec![(b"k".to_vec(), b"v".to_vec())]),
            KvReply::NotLeader(Some(hint)),
            KvReply::NotLeader(None),
            KvReply::Error("boom".into()),
            KvReply::Unknown("maybe".into()),
            KvReply::Forbidden("not yours".into()),
            KvReply::Accepted,
            KvReply::Index(77),
            KvReply::Moved { epoch: 5 },
            KvReply::Moves(vec![(
                GroupId(2),
                crate::cluster::placement::PendingMove {
                    from: ReplicaId(3),
                    new: ReplicaId(1 << 48),
                    to: hint,
                    abandon: true,
                },
            )]),
            KvReply::View(LeaderView {
                leader: ReplicaId(1),
                membership: Membership {
                    voters: vec![ReplicaId(1), ReplicaId(2)],
                    learners: vec![ReplicaId(3)],
                    joint: true,
                },
                new_matched: Some(12),
                commit: 14,
                successor: None,
            }),
            KvReply::Routing {
                epoch: 3,
                groups: vec![(GroupId(1), vec![(65537, hint)])],
                nodes: vec![(NodeId(2), "127.0.0.1:7020".parse().unwrap())],
            },
        ] {
            let timing = ServerTiming {
                queue_us: 1,
                batch_wait_us: 2,
                leader_fsync_us: 300,
                commit_wait_us: 4,
                apply_us: 5,
                reply_us: 6,
                total_us: 318,
                follower_us: u32::MAX,
            };
            for timing in [None, Some(timing)] {
                let resp = KvResponseFrame {
                    id: 4,
                    reply: reply.clone(),
                    timing,
                };
                assert_eq!(KvResponseFrame::decode(&resp.encode()).unwrap(), resp);
            }
        }
        assert!(KvRequest::decode(&[1, 1, 99]).is_err());
        // An unknown trailer, or bytes after one, are refused.
        assert!(KvRequest::decode(&[1, 1, 4, 2]).is_err());
        assert!(KvRequest::decode(&[1, 1, 4, 1, 0]).is_err());
        assert!(KvResponseFrame::decode(&[1, 8, 1, 0]).is_err());
    }
}
