//! Screening of Raft messages from peers before raft-rs sees them.
//!
//! raft-rs trusts its peers: a heartbeat whose commit index lies past the local log, an
//! append whose entries do not follow its previous index, or a snapshot whose
//! configuration names a voter twice makes it panic, and a message claiming to come from
//! another replica is believed. Peer links are authenticated (only node certificates, and
//! the node id in `Hello` must match the certificate), so what reaches a core comes from a
//! known node; this module makes sure it is also something that node could have sent: a
//! message type that travels between replicas, from a replica the placement table puts on
//! that node, with terms and indexes a correct peer could produce. Anything else is refused
//! with a [`Refusal`] and counted; raft-rs never sees it.

use raft::eraftpb::{ConfState, Message, MessageType};
use thiserror::Error;

use crate::ids::{CoreAddress, NodeId, ReplicaId};

/// The highest term a message may carry. raft-rs adds one to the term at each election;
/// a term near `u64::MAX` would overflow it. A group that held an election every
/// millisecond would take 8 900 years to get here.
pub const MAX_TERM: u64 = 1 << 48;

/// The highest log index a message may carry (indexes are summed with entry counts).
pub const MAX_INDEX: u64 = 1 << 62;

/// Why a message from a peer was refused before stepping.
#[derive(Clone, Debug, Error, PartialEq, Eq)]
pub enum Refusal {
    /// A message type raft-rs only creates locally (`MsgHup`, `MsgPropose`, ...), or one
    /// this system never sends between replicas (forwarded proposals and reads).
    #[error("message type {0:?} is not accepted from peers")]
    LocalType(MessageType),
    /// The sender is not a replica this core knows of.
    #[error("sender {0:?} is not a known replica")]
    UnknownSender(ReplicaId),
    /// The sender is a replica placed on another node than the one that sent it.
    #[error("sender {replica:?} lives on {placed}, but the message came from {node}")]
    ImpersonatedSender {
        replica: ReplicaId,
        placed: NodeId,
        node: NodeId,
    },
    /// A message claiming to come from the recipient itself.
    #[error("message claims to come from its recipient")]
    FromSelf,
    /// A term or index past what any cluster can reach ([`MAX_TERM`], [`MAX_INDEX`]).
    #[error("{field} {value} is out of bounds")]
    OutOfBounds { field: &'static str, value: u64 },
    /// A heartbeat asking to commit past the end of the local log.
    #[error("commit {commit} is past the local log's last index {last}")]
    CommitPastLog { commit: u64, last: u64 },
    /// An append whose entries are not numbered on from its previous index, or carry a
    /// term above the message's or going down.
    #[error("append entries are not a contiguous run of non-decreasing terms")]
    MalformedEntries,
    /// An acknowledgement of log entries the leader does not have.
    #[error("acknowledged index {index} is past the leader's last index {last}")]
    AckPastLog { index: u64, last: u64 },
    /// A snapshot whose configuration raft-rs could not restore.
    #[error("snapshot configuration is malformed: {0}")]
    BadConfState(&'static str),
}

/// What the recipient knows, for screening one message.
pub struct Recipient {
    /// The recipient replica's id.
    pub id: u64,
    /// The last index of its log.
    pub last_index: u64,
    /// Its commit index, and the term of the entry there (looked up for appends only, the
    /// one check that uses it; 0 otherwise).
    pub committed: u64,
    pub committed_term: u64,
}

/// Checks that `message`, received from `node`, is one a correct replica on that node could
/// have sent to `to`. `sender` is where the directory places the replica it names as its
/// sender (`None`: a replica unknown here).
pub fn screen(
    to: &Recipient,
    node: NodeId,
    sender: Option<CoreAddress>,
    message: &Message,
) -> Result<(), Refusal> {
    use MessageType::*;
    let kind = message.get_msg_type();
    if !matches!(
        kind,
        MsgAppend
            | MsgAppendResponse
            | MsgRequestVote
            | MsgRequestVoteResponse
            | MsgRequestPreVote
            | MsgRequestPreVoteResponse
            | MsgHeartbeat
            | MsgHeartbeatResponse
            | MsgSnapshot
            | MsgTimeoutNow
    ) {
        return Err(Refusal::LocalType(kind));
    }
    let from = ReplicaId(message.from);
    if message.from == to.id {
        return Err(Refusal::FromSelf);
    }
    match sender {
        None => return Err(Refusal::UnknownSender(from)),
        Some(at) if at.node != node => {
            return Err(Refusal::ImpersonatedSender {
                replica: from,
                placed: at.node,
                node,
            });
        }
        Some(_) => {}
    }
    // raft-rs stamps a term on every message that travels between replicas, and takes a
    // message without one for a local command (then answers a vote in term 0, and panics).
    if message.term == 0 {
        return Err(Refusal::OutOfBounds {
            field: "term",
            value: 0,
        });
    }
    bounded("term", message.term, MAX_TERM)?;
    bounded("log term", message.log_term, MAX_TERM)?;
    bounded("index", message.index, MAX_INDEX)?;
    bounded("commit", message.commit, MAX_INDEX)?;
    bounded("reject hint", message.reject_hint, MAX_INDEX)?;
    bounded("request snapshot", message.request_snapshot, MAX_INDEX)?;
    match kind {
        MsgHeartbeat if message.commit > to.last_index => Err(Refusal::CommitPastLog {
            commit: message.commit,
            last: to.last_index,
        }),
        MsgAppend => {
            // A leader's log holds every committed entry, so the term it names for the
            // entry before its new ones is at least the local one at the commit index.
            // raft-rs walks its log down to that term on a mismatch, and panics when the
            // walk leaves the log.
            if message.index >= to.committed && message.log_term < to.committed_term {
                return Err(Refusal::MalformedEntries);
            }
            check_entries(message)
        }
        MsgAppendResponse if !message.reject && message.index > to.last_index => {
            Err(Refusal::AckPastLog {
                index: message.index,
                last: to.last_index,
            })
        }
        MsgSnapshot => {
            let meta = message.get_snapshot().get_metadata();
            bounded("snapshot index", meta.index, MAX_INDEX)?;
            bounded("snapshot term", meta.term, MAX_TERM)?;
            if meta.term > message.term {
                return Err(Refusal::OutOfBounds {
                    field: "snapshot term",
                    value: meta.term,
                });
            }
            check_conf_state(meta.get_conf_state())
        }
        _ => Ok(()),
    }
}

fn bounded(field: &'static str, value: u64, max: u64) -> Result<(), Refusal> {
    if value > max {
        return Err(Refusal::OutOfBounds { field, value });
    }
    Ok(())
}

/// An append's entries follow its previous index one by one, with terms that never go
/// down and never pass the sender's term (raft-rs appends them by position and panics on
/// a gap that lands below its commit index).
fn check_entries(message: &Message) -> Result<(), Refusal> {
    if message.log_term > message.term {
        return Err(Refusal::MalformedEntries);
    }
    let mut term = message.log_term;
    for (i, entry) in message.entries.iter().enumerate() {
        let expected = message.index + 1 + i as u64;
        if entry.index != expected || entry.term < term || entry.term > message.term {
            return Err(Refusal::MalformedEntries);
        }
        term = entry.term;
    }
    Ok(())
}

/// The shapes raft-rs can restore: no replica listed twice or as both voter and learner,
/// at least one voter, and the joint-change fields only during a joint change.
fn check_conf_state(cs: &ConfState) -> Result<(), Refusal> {
    let lists = [
        &cs.voters,
        &cs.learners,
        &cs.voters_outgoing,
        &cs.learners_next,
    ];
    for list in lists {
        let mut ids: Vec<u64> = list.to_vec();
        ids.sort_unstable();
        let len = ids.len();
        ids.dedup();
        if ids.len() != len || ids.first() == Some(&0) {
            return Err(Refusal::BadConfState("a replica listed twice, or id 0"));
        }
    }
    if cs.voters.is_empty() {
        return Err(Refusal::BadConfState("no voters"));
    }
    let overlaps = |a: &[u64], b: &[u64]| a.iter().any(|x| b.contains(x));
    if overlaps(&cs.learners, &cs.voters) || overlaps(&cs.learners, &cs.voters_outgoing) {
        return Err(Refusal::BadConfState("a learner is also a voter"));
    }
    if overlaps(&cs.learners_next, &cs.voters)
        || !cs
            .learners_next
            .iter()
            .all(|x| cs.voters_outgoing.contains(x))
    {
        return Err(Refusal::BadConfState(
            "a next learner is not an outgoing voter",
        ));
    }
    if cs.voters_outgoing.is_empty() && cs.auto_leave {
        return Err(Refusal::BadConfState("auto-leave outside a joint change"));
    }
    Ok(())
}
