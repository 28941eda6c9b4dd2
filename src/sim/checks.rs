//! The simulator's checkers: what must hold whatever the faults.
//!
//! - **Linearizability** of every key's history (`linearizability`), operations with an
//!   unknown outcome allowed to have happened or not. A key whose search runs out of budget
//!   is not passed silently: it is counted in `unchecked_keys`.
//! - **At most one leader per term** of each group (Raft §5.2), from the leaders cores
//!   announce.
//! - **A committed entry never changes**: every replica that applies index `i` of a group
//!   applies the same term and digest there.
//! - **Replicas converge**: the replicas of a group that applied equally far hold equal
//!   maps.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use crate::ids::{CoreAddress, GroupId, ReplicaId};
use crate::node::Audit;
use crate::replication::kv::{KvStore, StateMachine};
use crate::sim::linearizability::{HistoryOp, check_register};

/// States the linearizability search may explore per key before it gives up.
const SEARCH_BUDGET: usize = 2_000_000;

/// What the checkers have seen so far.
#[derive(Debug, Default)]
pub struct Checks {
    /// Every key's history.
    pub history: BTreeMap<u64, Vec<HistoryOp>>,
    /// Replicas that announced themselves leader, per (group, term).
    leaders: BTreeMap<(GroupId, u64), BTreeSet<ReplicaId>>,
    /// What each (group, index) was applied as: (term, digest), by the first replica.
    applied: HashMap<(GroupId, u64), (u64, u64)>,
    /// Violations found as events arrived.
    pub violations: Vec<String>,
}

impl Checks {
    /// An event a core audited.
    pub fn on_audit(&mut self, at: CoreAddress, event: Audit) {
        match event {
            Audit::Leader {
                group,
                replica,
                term,
            } => {
                self.leaders.entry((group, term)).or_default().insert(replica);
            }
            Audit::Applied {
                group,
                index,
                term,
                digest,
            } => match self.applied.get(&(group, index)) {
                None => {
                    self.applied.insert((group, index), (term, digest));
                }
                Some(&(t, d)) if (t, d) != (term, digest) => self.violations.push(format!(
                    "group {} index {index}: {at} applied term {term} digest {digest:x}, another replica term {t} digest {d:x}",
                    group.0
                )),
                Some(_) => {}
            },
        }
    }

    /// Every check over the run so far: the violations, and how many keys the
    /// linearizability search could not decide within its budget.
    /// Writes still under way (`in_flight`) count as writes whose outcome is unknown.
    pub fn verdict<'a>(
        &self,
        in_flight: impl Iterator<Item = (u64, HistoryOp)>,
        groups: impl Iterator<Item = (GroupId, Vec<&'a KvStore>)>,
    ) -> (Vec<String>, u64) {
        let mut histories = self.history.clone();
        for (key, op) in in_flight {
            histories.entry(key).or_default().push(op);
        }
        let mut violations = self.violations.clone();
        for ((group, term), leaders) in &self.leaders {
            if leaders.len() > 1 {
                violations.push(format!(
                    "group {} term {term} had leaders {leaders:?}",
                    group.0
                ));
            }
        }
        let mut unchecked = 0;
        for (key, history) in &histories {
            match check_register(history, None, SEARCH_BUDGET) {
                Some(true) => {}
                Some(false) => {
                    tracing::debug!(key, ?history, "not linearizable");
                    violations.push(format!(
                        "key {key}: history of {} ops is not linearizable",
                        history.len()
                    ))
                }
                None => unchecked += 1,
            }
        }
        for (group, states) in groups {
            let top = states.iter().map(|s| s.applied_index()).max().unwrap_or(0);
            let complete: Vec<&&KvStore> =
                states.iter().filter(|s| s.applied_index() == top).collect();
            if complete
                .windows(2)
                .any(|w| w[0].scan(&[], None, usize::MAX) != w[1].scan(&[], None, usize::MAX))
            {
                violations.push(format!(
                    "group {}: replicas at index {top} diverged",
                    group.0
                ));
            }
        }
        (violations, unchecked)
    }
}
