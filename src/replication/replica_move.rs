//! One replica move as a sans-IO decision procedure: which membership step takes a group
//! from replica `from` to a new replica at `to`, decided from what the group's leader
//! reports. The caller (the simulator today, a node's migration executor later) performs
//! the actions it returns and asks again after a retry interval; every decision is made
//! from the leader's current view, so a lost proposal, a leader change or a crash midway
//! only means the same step is taken again.
//!
//! The steps (Raft §4.2.1 and §6, with raft-rs' joint consensus):
//!
//! 1. create the new replica on the target core, its log starting at the group's initial
//!    configuration, and add it as a **learner** (it receives the log, it does not vote);
//! 2. once it acknowledged entries and is within [`LEARNER_CAUGHT_UP_ENTRIES`] of the
//!    commit index, promote it and remove `from` in **one joint change** (the
//!    configuration never shrinks to two voters); if `from` leads, it first hands leadership to the [`RaftHost::successor`];
//! 3. if `from` led, leadership goes on to the new replica once it votes (asked at every
//!    step until the move ends): a copy of a leader replica carries its leadership, as the
//!    planner assumes. An executor that restarts mid-move forgets this and leaves the
//!    leadership with the successor, where the rebalancer sees it;
//! 4. once `from` is out of the configuration, destroy it only when every remaining voter
//!    holds that commit index **durably**: raft-rs applies a configuration when it learns
//!    its entry is committed, so a voter restarting without that knowledge campaigns under
//!    the joint configuration and needs `from`'s vote.
//!
//! A move whose target node failed is abandoned: its learner is removed and destroyed.

use crate::constants::LEARNER_CAUGHT_UP_ENTRIES;
use crate::ids::{CoreAddress, GroupId, ReplicaId};
use crate::replication::kv::StateMachine;
use crate::replication::raft_host::{Membership, MembershipChange, RaftHost};

/// A replica moving from `from` to the new replica `new` at `to`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReplicaMove {
    pub group: GroupId,
    pub from: ReplicaId,
    pub to: CoreAddress,
    /// A fresh replica id, never used before in the cluster.
    pub new: ReplicaId,
    created: bool,
    /// `from` left the configuration at or before this commit index.
    retiring: Option<u64>,
    /// `from` led and handed its leadership over: it goes on to `new` once `new` votes.
    handed_over: bool,
}

/// What the group's leader reports (see [`leader_view`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LeaderView {
    pub leader: ReplicaId,
    pub membership: Membership,
    /// How far the new replica's log matches, if the leader tracks it.
    pub new_matched: Option<u64>,
    pub commit: u64,
    /// Who should lead if the leader leaves.
    pub successor: Option<ReplicaId>,
}

/// Reads the view of `group` from the host whose replica `leader` leads it; `None` if it
/// does not lead.
pub fn leader_view<S: StateMachine>(
    host: &RaftHost<S>,
    group: GroupId,
    leader: ReplicaId,
    new: ReplicaId,
) -> Option<LeaderView> {
    let (_, commit) = host.replication(group, leader)?;
    Some(LeaderView {
        leader,
        membership: host.membership(group)?,
        new_matched: host.replication(group, new).map(|(matched, _)| matched),
        commit,
        successor: host.successor(group),
    })
}

/// Something the caller must do for the move.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MoveAction {
    /// Host `replica` of the group on the core at `at`, its log starting at the group's
    /// initial configuration (the leader sends it the entries or a snapshot).
    CreateReplica { replica: ReplicaId, at: CoreAddress },
    /// Propose these membership changes at the leader (one joint change if several).
    Propose(Vec<MembershipChange>),
    /// Ask the leader to hand leadership to this voter.
    TransferLeader(ReplicaId),
    /// Stop hosting `replica` and drop it from its core's log: it is out of the group.
    DestroyReplica(ReplicaId),
}

/// How a move ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MoveOutcome {
    /// The new replica votes and the old one is gone.
    Moved,
    /// Given up: the target failed, or the old replica left the group another way.
    Abandoned,
}

/// The caller's knowledge outside the leader's view.
pub trait MoveContext {
    /// The target's node failed for good.
    fn target_failed(&self) -> bool;
    /// Every one of `voters` (except those on failed nodes) has a durable commit index of
    /// at least `index`.
    fn voters_durably_know(&self, voters: &[ReplicaId], index: u64) -> bool;
}

impl ReplicaMove {
    pub fn new(group: GroupId, from: ReplicaId, to: CoreAddress, new: ReplicaId) -> ReplicaMove {
        ReplicaMove {
            group,
            from,
            to,
            new,
            created: false,
            retiring: None,
            handed_over: false,
        }
    }

    /// The next step, from the leader's view. Returns the actions to perform now and, when
    /// the move is over, how it ended. Nothing is decided during a joint configuration.
    pub fn next(
        &mut self,
        view: &LeaderView,
        context: &impl MoveContext,
    ) -> (Vec<MoveAction>, Option<MoveOutcome>) {
        let conf = &view.membership;
        if conf.joint {
            return (Vec::new(), None);
        }
        let mut actions = Vec::new();
        if !conf.contains(self.new) {
            if !conf.voters.contains(&self.from) || context.target_failed() {
                if self.created {
                    actions.push(MoveAction::DestroyReplica(self.new));
                }
                return (actions, Some(MoveOutcome::Abandoned));
            }
            if !self.created {
                self.created = true;
                actions.push(MoveAction::CreateReplica {
                    replica: self.new,
                    at: self.to,
                });
            }
            actions.push(MoveAction::Propose(vec![MembershipChange::AddLearner(
                self.new,
            )]));
        } else if conf.learners.contains(&self.new) {
            if context.target_failed() {
                actions.push(MoveAction::Propose(vec![MembershipChange::Remove(
                    self.new,
                )]));
            } else if view
                .new_matched
                // A learner that acknowledged nothing has not caught up, however short the
                // log: promoting it (the rule once allowed a match of 0 at commit 3) made a
                // replica on a dead node a voter and left the move unable to end.
                .is_some_and(|m| m > 0 && m + LEARNER_CAUGHT_UP_ENTRIES >= view.commit)
            {
                if view.leader == self.from {
                    // A leader does not remove itself: it hands over first.
                    if let Some(to) = view.successor {
                        self.handed_over = true;
                        actions.push(MoveAction::TransferLeader(to));
                    }
                } else {
                    actions.push(MoveAction::Propose(vec![
                        MembershipChange::AddVoter(self.new),
                        MembershipChange::Remove(self.from),
                    ]));
                }
            }
        } else if conf.contains(self.from) {
            // Promoted while the old replica stayed (a change proposed in parts).
            if context.target_failed() {
                // Keep the old replica; the new one is dead: take it out again.
                actions.push(MoveAction::Propose(vec![MembershipChange::Remove(
                    self.new,
                )]));
            } else if view.leader != self.from {
                actions.push(MoveAction::Propose(vec![MembershipChange::Remove(
                    self.from,
                )]));
            } else if let Some(to) = view.successor {
                self.handed_over = true;
                actions.push(MoveAction::TransferLeader(to));
            }
        } else {
            if self.handed_over && view.leader != self.new {
                actions.push(MoveAction::TransferLeader(self.new));
            }
            let index = *self.retiring.get_or_insert(view.commit);
            if context.voters_durably_know(&conf.voters, index) {
                actions.push(MoveAction::DestroyReplica(self.from));
                return (actions, Some(MoveOutcome::Moved));
            }
        }
        (actions, None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::{CoreId, NodeId};

    struct World {
        failed: bool,
        durable: u64,
    }

    impl MoveContext for World {
        fn target_failed(&self) -> bool {
            self.failed
        }
        fn voters_durably_know(&self, _: &[ReplicaId], index: u64) -> bool {
            self.durable >= index
        }
    }

    fn known(failed: bool, durable: u64) -> World {
        World { failed, durable }
    }

    const OLD: ReplicaId = ReplicaId(3);
    const NEW: ReplicaId = ReplicaId(9);

    fn view(leader: u64, voters: &[u64], learners: &[u64], matched: Option<u64>) -> LeaderView {
        LeaderView {
            leader: ReplicaId(leader),
            membership: Membership {
                voters: voters.iter().map(|v| ReplicaId(*v)).collect(),
                learners: learners.iter().map(|v| ReplicaId(*v)).collect(),
                joint: false,
            },
            new_matched: matched,
            commit: 100,
            successor: Some(ReplicaId(2)),
        }
    }

    fn a_move() -> ReplicaMove {
        let to = CoreAddress {
            node: NodeId(4),
            core: CoreId(1),
        };
        ReplicaMove::new(GroupId(1), OLD, to, NEW)
    }

    #[test]
    fn a_learner_that_acknowledged_nothing_is_not_promoted_however_short_the_log() {
        let mut m = a_move();
        let world = known(false, 0);
        let _ = m.next(&view(1, &[1, 2, 3], &[], None), &world);
        let mut short = view(2, &[1, 2, 3], &[9], Some(0));
        short.commit = 3;
        let (actions, done) = m.next(&short, &world);
        assert!(actions.is_empty(), "{actions:?}");
        assert_eq!(done, None);
        short.new_matched = Some(1);
        let (actions, _) = m.next(&short, &world);
        assert_eq!(
            actions,
            vec![MoveAction::Propose(vec![
                MembershipChange::AddVoter(NEW),
                MembershipChange::Remove(OLD),
            ])]
        );
    }

    #[test]
    fn a_move_goes_learner_then_joint_then_retires_once_voters_know() {
        let mut m = a_move();
        let world = known(false, 0);
        let (actions, done) = m.next(&view(1, &[1, 2, 3], &[], None), &world);
        assert!(matches!(
            actions[0],
            MoveAction::CreateReplica { replica: NEW, .. }
        ));
        assert_eq!(
            actions[1],
            MoveAction::Propose(vec![MembershipChange::AddLearner(NEW)])
        );
        assert_eq!(done, None);
        // The proposal was lost: proposed again, created once.
        let (actions, _) = m.next(&view(1, &[1, 2, 3], &[], None), &world);
        assert_eq!(
            actions,
            vec![MoveAction::Propose(vec![MembershipChange::AddLearner(NEW)])]
        );
        // A learner far behind waits; caught up, one joint change.
        let (actions, _) = m.next(&view(1, &[1, 2, 3], &[9], Some(10)), &world);
        assert!(actions.is_empty());
        let (actions, _) = m.next(&view(1, &[1, 2, 3], &[9], Some(95)), &world);
        assert_eq!(
            actions,
            vec![MoveAction::Propose(vec![
                MembershipChange::AddVoter(NEW),
                MembershipChange::Remove(OLD)
            ])]
        );
        // Out of the configuration, but a voter does not durably know it yet.
        let final_view = view(1, &[1, 2, 9], &[], Some(100));
        assert_eq!(m.next(&final_view, &world), (vec![], None));
        let world = known(false, 100);
        assert_eq!(
            m.next(&final_view, &world),
            (
                vec![MoveAction::DestroyReplica(OLD)],
                Some(MoveOutcome::Moved)
            )
        );
    }

    #[test]
    fn a_leader_that_is_moving_hands_over_before_the_joint_change() {
        let mut m = a_move();
        let world = known(false, 0);
        m.next(&view(3, &[1, 2, 3], &[], None), &world);
        let (actions, _) = m.next(&view(3, &[1, 2, 3], &[9], Some(100)), &world);
        assert_eq!(actions, vec![MoveAction::TransferLeader(ReplicaId(2))]);
    }

    #[test]
    fn a_leader_that_moved_gets_its_leadership_back_on_the_new_replica() {
        let mut m = a_move();
        let world = known(false, 0);
        m.next(&view(3, &[1, 2, 3], &[], None), &world);
        m.next(&view(3, &[1, 2, 3], &[9], Some(100)), &world);
        // Replica 2 took over and made the joint change; then asked every step.
        let after = view(2, &[1, 2, 9], &[], Some(100));
        assert_eq!(
            m.next(&after, &world),
            (vec![MoveAction::TransferLeader(NEW)], None)
        );
        let world = known(false, 100);
        assert_eq!(
            m.next(&after, &world),
            (
                vec![
                    MoveAction::TransferLeader(NEW),
                    MoveAction::DestroyReplica(OLD)
                ],
                Some(MoveOutcome::Moved)
            )
        );
        // Once the new replica leads, nothing more is asked.
        let mut m = a_move();
        m.next(&view(3, &[1, 2, 3], &[], None), &world);
        m.next(&view(3, &[1, 2, 3], &[9], Some(100)), &world);
        assert_eq!(
            m.next(&view(9, &[1, 2, 9], &[], Some(100)), &world),
            (
                vec![MoveAction::DestroyReplica(OLD)],
                Some(MoveOutcome::Moved)
            )
        );
    }

    #[test]
    fn a_follower_that_moved_leaves_the_leadership_where_it_is() {
        let mut m = a_move();
        let world = known(false, 100);
        m.next(&view(1, &[1, 2, 3], &[], None), &world);
        m.next(&view(1, &[1, 2, 3], &[9], Some(100)), &world);
        assert_eq!(
            m.next(&view(1, &[1, 2, 9], &[], Some(100)), &world),
            (
                vec![MoveAction::DestroyReplica(OLD)],
                Some(MoveOutcome::Moved)
            )
        );
    }

    #[test]
    fn a_move_to_a_failed_node_removes_its_learner_and_is_abandoned() {
        let mut m = a_move();
        let ok = known(false, 0);
        m.next(&view(1, &[1, 2, 3], &[], None), &ok);
        let failed = known(true, 0);
        let (actions, done) = m.next(&view(1, &[1, 2, 3], &[9], Some(0)), &failed);
        assert_eq!(
            actions,
            vec![MoveAction::Propose(vec![MembershipChange::Remove(NEW)])]
        );
        assert_eq!(done, None);
        let (actions, done) = m.next(&view(1, &[1, 2, 3], &[], None), &failed);
        assert_eq!(actions, vec![MoveAction::DestroyReplica(NEW)]);
        assert_eq!(done, Some(MoveOutcome::Abandoned));
    }

    #[test]
    fn nothing_is_decided_during_a_joint_configuration() {
        let mut m = a_move();
        let world = known(true, 100);
        // Joint: the old and the new replica both vote; even a failed target waits.
        let mut v = view(1, &[1, 2, 9], &[], Some(100));
        v.membership.voters.push(OLD);
        v.membership.joint = true;
        assert_eq!(m.next(&v, &world), (vec![], None));
    }

    #[test]
    fn the_old_replica_retires_at_the_first_commit_seen_without_it() {
        let mut m = a_move();
        let mut v = view(1, &[1, 2, 9], &[], Some(100));
        let behind = known(false, 99);
        assert_eq!(m.next(&v, &behind), (vec![], None));
        // Later writes raise the commit index; the bar stays where the removal was seen.
        v.commit = 500;
        let caught_up = known(false, 100);
        assert_eq!(
            m.next(&v, &caught_up).1,
            Some(MoveOutcome::Moved),
            "voters need the removal's commit, not every later one"
        );
    }

    #[test]
    fn a_promoted_replica_on_a_failed_node_is_taken_out_again() {
        let mut m = a_move();
        let failed = known(true, 0);
        let (actions, done) = m.next(&view(1, &[1, 2, 3, 9], &[], Some(100)), &failed);
        assert_eq!(
            actions,
            vec![MoveAction::Propose(vec![MembershipChange::Remove(NEW)])]
        );
        assert_eq!(done, None);
    }
}
