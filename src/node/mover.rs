//! The migration executor's decisions: it carries out the replica moves recorded in the
//! placement table, sans-IO.
//!
//! It runs on core 0 of every node and acts only while that core leads the metadata group,
//! so a new metadata leader resumes every unfinished move from the table. Every
//! `MOVE_STEP_INTERVAL` it takes each move one step: it asks the group's leader for its
//! view (`KvOp::View`), lets [`ReplicaMove`] decide, and performs the actions with admin
//! requests (`ChangeMembership`, `TransferLeader`), each a client [`Call`] whose requests
//! the node core hands to its shell. The new replica exists because the table placed it
//! (`start_move`); the old one is retired by `end_move`, which the executor proposes on its
//! own core — network clients cannot end a move.
//!
//! What it cannot know, it does not guess: a voter that does not answer its `DurableCommit`
//! counts as not knowing (the old replica then stays until it answers). Nodes the topology
//! marks `Decommissioned` are gone for good, and `Down` ones have been dead for
//! `dead_after`: a move to one is abandoned, and a voter on one is not waited for (a `Down`
//! node that returns learns the configuration from the leader's log like any lagging
//! voter). An operator abandons a move to a node that is down but may return, and not yet
//! `Down` (`abandon_move`).

use std::collections::{BTreeMap, BTreeSet};

use tracing::{debug, info, warn};

use crate::client::call::{Call, CallPolicy, Failure};
use crate::client::routing::Routing;
use crate::cluster::metadata::{MetadataCommand, MetadataStore};
use crate::cluster::placement::{PendingMove, PlacementError, PlacementTable};
use crate::cluster::spec::ClusterSpec;
use crate::cluster::topology::NodeState;
use crate::constants::{MOVE_CALL_ATTEMPTS, MOVE_REQUEST_TIMEOUT, MOVE_STEP_INTERVAL};
use crate::ids::{CoreAddress, Epoch, GroupId, ReplicaId};
use crate::replication::replica_move::{
    LeaderView, MoveAction, MoveContext, MoveOutcome, ReplicaMove,
};
use crate::time::Time;
use crate::wire::kv_rpc::{KvOp, KvReply, KvRequest};

/// Where one move stands between steps.
enum Stage {
    /// Waiting for the next step.
    Idle,
    /// Asked the group's leader for its view.
    View(Call),
    /// Asked the remaining voters not yet known to be far enough for their durable commit
    /// index.
    Durable {
        view: LeaderView,
        calls: Vec<(ReplicaId, Call)>,
    },
    /// Admin requests under way; the next step waits for them.
    Acting(Vec<Call>),
    /// `end_move` proposed on this core; waiting for it to apply.
    Ending,
}

struct Move {
    decide: ReplicaMove,
    abandon: bool,
    stage: Stage,
    /// The highest durable commit index each voter reported. It never goes down (a
    /// replica's durable hard state only advances), so an answer counts in later steps too
    /// and a lost message costs one voter's answer, not the whole round.
    durable: BTreeMap<ReplicaId, u64>,
}

/// The executor of one node (core 0).
pub(crate) struct Mover {
    routing: Routing,
    moves: BTreeMap<GroupId, Move>,
    next_step: Time,
    /// The table epoch whose moves `moves` follows.
    seen_epoch: Option<Epoch>,
    /// Requests to send, in order.
    sends: Vec<(CoreAddress, KvRequest)>,
    /// `end_move` commands to propose: (group, command).
    ends: Vec<(GroupId, MetadataCommand)>,
    /// Steps decided and moves ended, for the core's metrics.
    pub(crate) steps: u64,
    pub(crate) ended: u64,
    /// Moves decided abandoned (their target failed or an operator asked).
    pub(crate) abandoned: u64,
}

/// What the executor knows beyond the leader's view.
struct Known<'a> {
    durable: &'a BTreeMap<ReplicaId, u64>,
    abandon: bool,
    target_gone: bool,
    /// Voters on decommissioned nodes: never waited for.
    gone: &'a BTreeSet<ReplicaId>,
}

impl MoveContext for Known<'_> {
    fn target_failed(&self) -> bool {
        self.abandon || self.target_gone
    }

    fn voters_durably_know(&self, voters: &[ReplicaId], index: u64) -> bool {
        voters.iter().all(|v| {
            self.gone.contains(v) || self.durable.get(v).is_some_and(|known| *known >= index)
        })
    }
}

impl Mover {
    pub(crate) fn new(spec: &ClusterSpec) -> Result<Mover, PlacementError> {
        Ok(Mover {
            routing: Routing::new(spec)?,
            moves: BTreeMap::new(),
            next_step: Time::ZERO,
            seen_epoch: None,
            sends: Vec::new(),
            ends: Vec::new(),
            steps: 0,
            ended: 0,
            abandoned: 0,
        })
    }

    /// The node applied a new table: route by it.
    pub(crate) fn on_table(&mut self, table: &PlacementTable) {
        self.routing.store_placement(table);
    }

    /// This core no longer leads the metadata group: forget every move (a new leader
    /// resumes them from the table).
    pub(crate) fn stand_down(&mut self) {
        self.moves.clear();
        self.ends.clear();
        self.sends.clear();
        self.seen_epoch = None;
    }

    /// Takes every recorded move one step further when its time has come. `store` is the
    /// metadata group's state on this (leading) core.
    pub(crate) fn handle_timeout(&mut self, now: Time, store: &MetadataStore) {
        // The moves recorded in the table change only with its epoch.
        if self.seen_epoch != Some(store.epoch()) {
            self.seen_epoch = Some(store.epoch());
            let recorded: BTreeMap<GroupId, PendingMove> = store
                .table()
                .groups()
                .filter_map(|(g, p)| p.moving.map(|m| (g, m)))
                .collect();
            self.moves
                .retain(|g, m| recorded.get(g).is_some_and(|r| r.new == m.decide.new));
            for (group, pending) in &recorded {
                let m = self.moves.entry(*group).or_insert_with(|| Move {
                    decide: ReplicaMove::new(*group, pending.from, pending.to, pending.new),
                    abandon: pending.abandon,
                    stage: Stage::Idle,
                    durable: BTreeMap::new(),
                });
                m.abandon = pending.abandon;
            }
        }
        let step_due = now >= self.next_step;
        if step_due {
            self.next_step = now + MOVE_STEP_INTERVAL;
        }
        let groups: Vec<GroupId> = self.moves.keys().copied().collect();
        for group in groups {
            let idle = matches!(self.moves[&group].stage, Stage::Idle);
            if idle && step_due {
                let m = self.moves.get_mut(&group).expect("listed above");
                let new = m.decide.new;
                m.stage = Stage::View(Call::new(group, KvOp::View { new }, move_policy()));
            }
            self.drive(now, group, store);
        }
    }

    /// An answer (or a failure) to request `id`.
    pub(crate) fn handle_reply(
        &mut self,
        now: Time,
        id: u64,
        reply: Result<KvReply, Failure>,
        store: &MetadataStore,
    ) {
        let routing = &mut self.routing;
        let mut answered = None;
        for (group, m) in &mut self.moves {
            let call = match &mut m.stage {
                Stage::View(c) => Some(c).filter(|c| c.awaits(id)),
                Stage::Durable { calls, .. } => {
                    calls.iter_mut().map(|(_, c)| c).find(|c| c.awaits(id))
                }
                Stage::Acting(calls) => calls.iter_mut().find(|c| c.awaits(id)),
                Stage::Idle | Stage::Ending => None,
            };
            if let Some(call) = call {
                match reply {
                    Ok(r) => call.handle_reply(now, routing, id, r),
                    Err(f) => call.handle_failure(now, routing, id, f),
                }
                answered = Some(*group);
                break;
            }
        }
        if let Some(group) = answered {
            self.drive(now, group, store);
        }
    }

    /// The `end_move` proposed for `group` applied (`accepted`) or was lost.
    pub(crate) fn handle_end_applied(&mut self, group: GroupId, accepted: bool) {
        if let Some(m) = self.moves.get_mut(&group) {
            if accepted {
                info!(
                    group = group.0,
                    from = m.decide.from.0,
                    new = m.decide.new.0,
                    "replica move ended"
                );
                self.ended += 1;
                self.moves.remove(&group);
            } else {
                m.stage = Stage::Idle;
            }
        }
    }

    /// The requests to send, in order.
    pub(crate) fn take_sends(&mut self) -> std::vec::Drain<'_, (CoreAddress, KvRequest)> {
        self.sends.drain(..)
    }

    /// The next `end_move` to propose on this core.
    pub(crate) fn poll_end(&mut self) -> Option<(GroupId, MetadataCommand)> {
        self.ends.pop()
    }

    /// When the executor next needs time.
    pub(crate) fn poll_timeout(&self) -> Option<Time> {
        if self.moves.is_empty() {
            return None;
        }
        let calls = self.moves.values().flat_map(|m| match &m.stage {
            Stage::View(c) => vec![c.poll_timeout()],
            Stage::Durable { calls, .. } => calls.iter().map(|(_, c)| c.poll_timeout()).collect(),
            Stage::Acting(calls) => calls.iter().map(Call::poll_timeout).collect(),
            Stage::Idle | Stage::Ending => Vec::new(),
        });
        calls.flatten().chain([self.next_step]).min()
    }

    /// Advances `group`'s move as far as its calls allow.
    fn drive(&mut self, now: Time, group: GroupId, store: &MetadataStore) {
        loop {
            let Some(m) = self.moves.get_mut(&group) else {
                return;
            };
            let from = m.decide.from;
            let stage = std::mem::replace(&mut m.stage, Stage::Idle);
            let (next, again) = match stage {
                Stage::Idle | Stage::Ending => (stage, false),
                Stage::View(mut call) => {
                    match call.drive(now, &mut self.routing, &mut self.sends) {
                        None => (Stage::View(call), false),
                        // Durable knowledge matters once the old replica is out: ask the
                        // voters not yet known to hold this commit index durably.
                        Some(Ok(KvReply::View(view)))
                            if !view.membership.joint && !view.membership.contains(from) =>
                        {
                            let placement = store.table().group(group);
                            let known = &self.moves[&group].durable;
                            let calls = view
                                .membership
                                .voters
                                .iter()
                                .filter(|v| known.get(v).is_none_or(|k| *k < view.commit))
                                .filter_map(|v| {
                                    let at = placement?.address_of(*v)?;
                                    let op = KvOp::DurableCommit;
                                    Some((*v, Call::pinned(at, group, op, move_policy())))
                                })
                                .collect();
                            (Stage::Durable { view, calls }, true)
                        }
                        Some(Ok(KvReply::View(view))) => {
                            (self.decide(now, group, &view, store), false)
                        }
                        Some(outcome) => {
                            debug!(group = group.0, ?outcome, "no leader view; retrying");
                            (Stage::Idle, false)
                        }
                    }
                }
                Stage::Durable { view, mut calls } => {
                    let mut answers = Vec::new();
                    calls.retain_mut(|(voter, call)| {
                        match call.drive(now, &mut self.routing, &mut self.sends) {
                            None => true,
                            Some(Ok(KvReply::Index(index))) => {
                                answers.push((*voter, index));
                                false
                            }
                            // Unanswered: counts as not knowing.
                            Some(outcome) => {
                                debug!(
                                    group = group.0,
                                    ?now,
                                    voter = voter.0,
                                    ?outcome,
                                    "no durable commit index"
                                );
                                false
                            }
                        }
                    });
                    if let Some(m) = self.moves.get_mut(&group) {
                        for (voter, index) in answers {
                            let known = m.durable.entry(voter).or_insert(0);
                            *known = (*known).max(index);
                        }
                    }
                    if calls.is_empty() {
                        (self.decide(now, group, &view, store), false)
                    } else {
                        (Stage::Durable { view, calls }, false)
                    }
                }
                Stage::Acting(mut calls) => {
                    calls.retain_mut(|call| {
                        call.drive(now, &mut self.routing, &mut self.sends)
                            .is_none()
                    });
                    if calls.is_empty() {
                        (Stage::Idle, false)
                    } else {
                        (Stage::Acting(calls), false)
                    }
                }
            };
            if let Some(m) = self.moves.get_mut(&group) {
                m.stage = next;
            }
            if !again {
                return;
            }
        }
    }

    /// Decides the step from the leader's view and what the voters durably know, and
    /// starts its actions.
    fn decide(
        &mut self,
        now: Time,
        group: GroupId,
        view: &LeaderView,
        store: &MetadataStore,
    ) -> Stage {
        let topology = store.topology();
        // Decommissioned nodes are gone for good, and `Down` ones dead for `dead_after`:
        // neither is waited for.
        let out_of_service = |node| {
            topology
                .node(node)
                .is_some_and(|n| matches!(n.state, NodeState::Decommissioned | NodeState::Down))
        };
        let gone: BTreeSet<ReplicaId> = store
            .table()
            .group(group)
            .map(|p| {
                p.replicas
                    .iter()
                    .filter(|r| out_of_service(r.at.node))
                    .map(|r| r.id)
                    .collect()
            })
            .unwrap_or_default();
        let Some(m) = self.moves.get_mut(&group) else {
            return Stage::Idle;
        };
        let known = Known {
            durable: &m.durable,
            abandon: m.abandon,
            target_gone: out_of_service(m.decide.to.node),
            gone: &gone,
        };
        let (actions, outcome) = m.decide.next(view, &known);
        debug!(group = group.0, ?now, ?view, durable = ?m.durable, ?actions, ?outcome, "replica move decided");
        let (new, from) = (m.decide.new, m.decide.from);
        self.steps += 1;
        let mut calls = Vec::new();
        for action in actions {
            let op = match action {
                // The table placed the new replica (its core created it) and `end_move`
                // retires whichever replica leaves.
                MoveAction::CreateReplica { .. } | MoveAction::DestroyReplica(_) => continue,
                MoveAction::Propose(changes) => KvOp::ChangeMembership { changes },
                MoveAction::TransferLeader(to) => KvOp::TransferLeader { to },
            };
            debug!(group = group.0, ?op, "replica move step");
            // The answer only says the request was taken; later views show its effect.
            let mut call = Call::new(group, op, move_policy());
            if call
                .drive(now, &mut self.routing, &mut self.sends)
                .is_none()
            {
                calls.push(call);
            }
        }
        if let Some(outcome) = outcome {
            let moved = outcome == MoveOutcome::Moved;
            self.abandoned += u64::from(!moved);
            if !moved {
                warn!(
                    group = group.0,
                    from = from.0,
                    new = new.0,
                    "replica move abandoned: its new replica's node failed; ending it"
                );
            }
            let command = MetadataCommand::EndMove { group, new, moved };
            self.ends.push((group, command));
            return Stage::Ending;
        }
        if calls.is_empty() {
            Stage::Idle
        } else {
            Stage::Acting(calls)
        }
    }
}

/// How the executor's requests behave: a leader answers them at once, so one unanswered
/// for `MOVE_REQUEST_TIMEOUT` is lost, and a call gives up after `MOVE_CALL_ATTEMPTS` (a
/// redirect or two and a loss); the next step asks again, rather than waiting as long as a
/// client's write would.
pub(crate) fn move_policy() -> CallPolicy {
    CallPolicy {
        request_timeout: MOVE_REQUEST_TIMEOUT,
        attempts_max: MOVE_CALL_ATTEMPTS,
        ..CallPolicy::default()
    }
}
