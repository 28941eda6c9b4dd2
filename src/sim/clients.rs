//! Simulated clients: each runs one operation at a time as a real client [`Call`] — the
//! same routing, redirects, table fetches and outcome rules as `KvClient` — whose requests
//! and answers cross the simulated network.
//!
//! An operation's history entry follows what the client can know: a completed one records
//! its result; a write whose outcome is unknown (a request lost after it may have reached
//! a server, a server that could not say) records that it may have happened; a read that
//! failed, or a write that certainly did not apply, records nothing.

use crate::client::call::{Call, CallError, CallPolicy, Failure};
use crate::client::routing::Routing;
use crate::ids::{CoreAddress, GroupId};
use crate::replication::kv::{KvCommand, KvResponse};
use crate::sim::linearizability::{HistoryOp, RegisterOp};
use crate::sim::network::Endpoint;
use crate::time::Time;
use crate::wire::kv_rpc::{KvOp, KvReply, KvRequest, KvResponseFrame};

/// How patient a simulated client is: a request unanswered for two seconds is lost (a
/// write needs a quorum's fsyncs of up to 200 ms and up to six hops of up to 150 ms each),
/// and an operation gives up after twenty attempts (a few elections' worth).
pub fn client_policy() -> CallPolicy {
    CallPolicy {
        attempts_max: 20,
        request_timeout: std::time::Duration::from_secs(2),
        ..CallPolicy::default()
    }
}

/// What an operation does to its key.
#[derive(Clone, Debug)]
pub enum Intent {
    Read,
    Write(RegisterOp),
}

/// The kinds of operation a client issues.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OpKind {
    Get,
    Put,
    CompareAndSet,
    Delete,
}

impl OpKind {
    /// The request for this kind on `key`, and what the history records of it. A
    /// compare-and-set expects `expected`.
    pub fn request(self, key: u64, value: Vec<u8>, expected: Option<Vec<u8>>) -> (KvOp, Intent) {
        let k = key.to_be_bytes().to_vec();
        let write = |command: KvCommand, op| {
            (
                KvOp::Write {
                    command: command.encode(),
                },
                Intent::Write(op),
            )
        };
        match self {
            OpKind::Get => (KvOp::Get { key: k }, Intent::Read),
            OpKind::Put => write(
                KvCommand::Put {
                    key: k,
                    value: value.clone(),
                },
                RegisterOp::Put { value },
            ),
            OpKind::Delete => write(KvCommand::Delete { key: k }, RegisterOp::Delete),
            OpKind::CompareAndSet => write(
                KvCommand::CompareAndSet {
                    key: k,
                    expected: expected.clone(),
                    new: Some(value.clone()),
                },
                RegisterOp::Cas {
                    expected,
                    new: Some(value),
                    applied: false,
                },
            ),
        }
    }
}

/// What became of an operation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// It took effect with this result.
    Completed(RegisterOp),
    /// It may or may not have taken effect.
    Unknown(RegisterOp),
    /// It certainly had no effect (a refusal, a failed read).
    NoEffect,
}

/// An operation that is over.
#[derive(Clone, Debug)]
pub struct Finished {
    pub id: u64,
    pub key: u64,
    pub group: GroupId,
    pub invoked: u64,
    pub outcome: Outcome,
}

struct Op {
    id: u64,
    key: u64,
    intent: Intent,
    call: Call,
    invoked: u64,
}

/// One simulated client.
pub struct SimClient {
    pub routing: Routing,
    /// A scripted client sends each operation to this core only, once.
    pinned: Option<CoreAddress>,
    op: Option<Op>,
    /// Values this client wrote so far (each value is unique in the run).
    pub counter: u64,
}

impl SimClient {
    pub fn new(routing: Routing, pinned: Option<CoreAddress>) -> SimClient {
        SimClient {
            routing,
            pinned,
            op: None,
            counter: 0,
        }
    }

    pub fn idle(&self) -> bool {
        self.op.is_none()
    }

    /// Whether operation `id` is still under way.
    pub fn running(&self, id: u64) -> bool {
        self.op.as_ref().is_some_and(|o| o.id == id)
    }

    /// Starts operation `id` on `key` of `group`, invoked at `step`.
    pub fn start(
        &mut self,
        id: u64,
        key: u64,
        group: GroupId,
        op: KvOp,
        intent: Intent,
        step: u64,
    ) {
        let call = match self.pinned {
            Some(at) => Call::pinned(at, group, op, client_policy()),
            None => Call::new(group, op, client_policy()),
        };
        self.op = Some(Op {
            id,
            key,
            intent,
            call,
            invoked: step,
        });
    }

    /// The write under way, as the history must count it when the run ends: it may have
    /// taken effect (a read may already have seen it).
    pub fn write_in_flight(&self) -> Option<(u64, HistoryOp)> {
        let op = self.op.as_ref()?;
        match &op.intent {
            Intent::Write(write) => Some((
                op.key,
                HistoryOp {
                    invoked: op.invoked,
                    completed: None,
                    op: write.clone(),
                },
            )),
            Intent::Read => None,
        }
    }

    /// Takes the operation as far as it goes now: the requests to send, and the operation
    /// if it is over.
    pub fn poll(&mut self, now: Time) -> (Vec<(CoreAddress, KvRequest)>, Option<Finished>) {
        let mut sends = Vec::new();
        let Some(op) = self.op.as_mut() else {
            return (sends, None);
        };
        let Some(result) = op.call.drive(now, &mut self.routing, &mut sends) else {
            return (sends, None);
        };
        let op = self.op.take().expect("driven above");
        let finished = Finished {
            id: op.id,
            key: op.key,
            group: op.call.group(),
            invoked: op.invoked,
            outcome: outcome(op.intent, result),
        };
        (sends, Some(finished))
    }

    /// An answer arrived.
    pub fn on_reply(&mut self, now: Time, frame: KvResponseFrame) {
        if let Some(op) = self.op.as_mut() {
            op.call
                .handle_reply(now, &mut self.routing, frame.id, frame.reply);
        }
    }

    /// Request `id` could not be sent (its node refused the connection).
    pub fn on_refused(&mut self, now: Time, id: u64, failure: Failure) {
        if let Some(op) = self.op.as_mut() {
            op.call.handle_failure(now, &mut self.routing, id, failure);
        }
    }
}

/// What an operation's result means for the history.
fn outcome(intent: Intent, result: Result<KvReply, CallError>) -> Outcome {
    match (intent, result) {
        (Intent::Read, Ok(KvReply::Value(found))) => Outcome::Completed(RegisterOp::Get { found }),
        (Intent::Write(op), Ok(KvReply::Written(bytes))) => {
            match (op, KvResponse::decode(&bytes)) {
                // Refused by the state machine: it had no effect.
                (_, Ok(KvResponse::Rejected(_))) => Outcome::NoEffect,
                (RegisterOp::Cas { expected, new, .. }, Ok(KvResponse::Cas { applied, .. })) => {
                    Outcome::Completed(RegisterOp::Cas {
                        expected,
                        new,
                        applied,
                    })
                }
                (op, Ok(_)) => Outcome::Completed(op),
                (op, Err(_)) => Outcome::Unknown(op),
            }
        }
        (Intent::Write(op), Err(CallError::Unknown(_)) | Ok(KvReply::Unknown(_))) => {
            Outcome::Unknown(op)
        }
        // Any other answer (a redirect to a pinned client, a refusal) or a definite failure.
        _ => Outcome::NoEffect,
    }
}

impl crate::sim::Sim {
    /// The clients' turn: idle ones start an operation now and then (not in scripted
    /// scenarios), every operation goes as far as it can, finished ones enter the history.
    pub(super) fn drive_clients(&mut self) {
        let now = self.now();
        for c in 0..self.clients.len() {
            if !self.scripted && self.clients[c].idle() && self.rng.below(4) == 0 {
                self.issue(c);
            }
            let (sends, finished) = self.clients[c].poll(now);
            for (target, request) in sends {
                self.send_request(Endpoint::Client(c), target, request);
            }
            if let Some(f) = finished {
                self.finish(f);
            }
        }
    }

    /// A random operation of client `c` on one of the few contended keys, with a value no
    /// other write in the run uses.
    fn issue(&mut self, c: usize) {
        // Key i lives in group 1 + i mod groups: the hot group's keys are i ≡ 0.
        let groups = u64::from(self.o.groups).min(self.o.keys).max(1);
        // After healing, every other operation probes a group that has not committed a
        // write since (the liveness check asks each to): skewed load alone may leave a cold
        // group untried for the whole phase.
        let unwritten = (self.step > self.o.safety_steps && self.rng.below(2) == 0)
            .then(|| (0..groups).find(|g| !self.healed_writes.contains(&GroupId(1 + g))))
            .flatten();
        let i = if let Some(g) = unwritten {
            g + groups * self.rng.below(self.o.keys.div_ceil(groups))
        } else if self.rng.next_f64() < self.skew {
            groups * self.rng.below(self.o.keys.div_ceil(groups))
        } else {
            self.rng.below(self.o.keys)
        };
        let key = self.key_table[i.min(self.o.keys - 1) as usize];
        self.clients[c].counter += 1;
        let value = format!("c{c}-{}", self.clients[c].counter).into_bytes();
        let kind = match self.rng.below(11) {
            0..3 => OpKind::Get,
            3..8 => OpKind::Put,
            8..10 => OpKind::CompareAndSet,
            _ => OpKind::Delete,
        };
        self.issue_op(c, key, kind, value);
    }

    /// Starts an operation of client `c` on `key` (in the group the key hashes to); a
    /// compare-and-set expects the last value put. Returns the operation's id.
    pub(super) fn issue_op(&mut self, c: usize, key: u64, kind: OpKind, value: Vec<u8>) -> u64 {
        let group = GroupId(1 + u64::from(self.vshards.vshard_of(&key.to_be_bytes()).0));
        let expected = self.checks.history.get(&key).and_then(|h| {
            h.iter().rev().find_map(|o| match &o.op {
                RegisterOp::Put { value } => Some(value.clone()),
                _ => None,
            })
        });
        let (op, intent) = kind.request(key, value, expected);
        let id = self.next_op;
        self.next_op += 1;
        self.clients[c].start(id, key, group, op, intent, self.step);
        id
    }

    /// An operation ended: its history entry, as far as the client knows its outcome.
    fn finish(&mut self, f: Finished) {
        let step = self.step;
        tracing::trace!(step, id = f.id, key = f.key, invoked = f.invoked, outcome = ?f.outcome, "operation ended");
        let (op, completed) = match f.outcome {
            Outcome::Completed(op) => {
                if !matches!(op, RegisterOp::Get { .. }) && step > self.o.safety_steps {
                    self.healed_writes.insert(f.group);
                }
                self.results.insert(f.id, op.clone());
                self.report.ops_completed += 1;
                self.record(9, f.id);
                (op, Some(step))
            }
            Outcome::Unknown(op) => {
                self.report.ops_unknown += 1;
                self.record(10, f.id);
                (op, None)
            }
            Outcome::NoEffect => return self.record(19, f.id),
        };
        let invoked = f.invoked;
        let entry = HistoryOp {
            invoked,
            completed,
            op,
        };
        self.checks.history.entry(f.key).or_default().push(entry);
    }
}
