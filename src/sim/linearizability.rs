//! A linearizability checker for single-key register histories (Wing & Gong search with
//! memoization, as Porcupine does), applied to each key separately.
//!
//! An operation has an invocation time and, if it completed, a completion time and a
//! result. An operation that never completed (the client timed out) may have taken effect
//! at any point after its invocation, or not at all. The history is linearizable if some
//! total order of the operations that took effect respects real time (an operation that
//! completed before another was invoked comes first) and the register's semantics.

use std::collections::HashSet;

/// What a client did to one key.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum RegisterOp {
    Put {
        value: Vec<u8>,
    },
    /// Removes the value (the register reads as absent).
    Delete,
    /// A read and what it returned.
    Get {
        found: Option<Vec<u8>>,
    },
    /// Compare-and-set and its outcome.
    Cas {
        expected: Option<Vec<u8>>,
        new: Option<Vec<u8>>,
        applied: bool,
    },
}

/// One operation in a key's history. `completed` is `None` when the outcome is unknown;
/// then the `op`'s result fields are ignored (a `Put` or `Cas` may or may not have applied;
/// a `Get` with unknown outcome constrains nothing and may be left out by the caller).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HistoryOp {
    pub invoked: u64,
    pub completed: Option<u64>,
    pub op: RegisterOp,
}

/// Whether the history of one key is linearizable, starting from `initial`.
/// `budget` bounds the search (states explored); `None` means the budget ran out.
pub fn check_register(
    history: &[HistoryOp],
    initial: Option<Vec<u8>>,
    budget: usize,
) -> Option<bool> {
    let n = history.len();
    if n == 0 {
        return Some(true);
    }
    let mut memo: HashSet<(Vec<bool>, Option<Vec<u8>>)> = HashSet::new();
    let mut explored = 0usize;
    let mut done = vec![false; n];
    search(
        history,
        &mut done,
        initial,
        &mut memo,
        &mut explored,
        budget,
    )
}

fn search(
    history: &[HistoryOp],
    done: &mut Vec<bool>,
    state: Option<Vec<u8>>,
    memo: &mut HashSet<(Vec<bool>, Option<Vec<u8>>)>,
    explored: &mut usize,
    budget: usize,
) -> Option<bool> {
    // Finished when every completed op is linearized (unknown ones may be dropped).
    if history
        .iter()
        .zip(done.iter())
        .all(|(h, d)| *d || h.completed.is_none())
    {
        return Some(true);
    }
    *explored += 1;
    if *explored > budget {
        return None;
    }
    if !memo.insert((done.clone(), state.clone())) {
        return Some(false);
    }
    // An op may go next if no pending op completed before it was invoked.
    let earliest_completion = history
        .iter()
        .zip(done.iter())
        .filter(|(h, d)| !**d && h.completed.is_some())
        .map(|(h, _)| h.completed.unwrap_or(u64::MAX))
        .min()
        .unwrap_or(u64::MAX);
    for i in 0..history.len() {
        if done[i] || history[i].invoked > earliest_completion {
            continue;
        }
        let unknown = history[i].completed.is_none();
        let next = match (&history[i].op, unknown) {
            (RegisterOp::Put { value }, _) => Some(Some(value.clone())),
            (RegisterOp::Delete, _) => Some(None),
            (RegisterOp::Get { found }, false) => (found == &state).then(|| state.clone()),
            (RegisterOp::Get { .. }, true) => Some(state.clone()),
            (
                RegisterOp::Cas {
                    expected,
                    new,
                    applied,
                },
                false,
            ) => match (expected == &state, *applied) {
                (true, true) => Some(new.clone()),
                (false, false) => Some(state.clone()),
                _ => None,
            },
            (RegisterOp::Cas { expected, new, .. }, true) => Some(if expected == &state {
                new.clone()
            } else {
                state.clone()
            }),
        };
        if let Some(next) = next {
            done[i] = true;
            match search(history, done, next, memo, explored, budget) {
                Some(true) => return Some(true),
                None => return None,
                Some(false) => {}
            }
            done[i] = false;
        }
    }
    Some(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn op(invoked: u64, completed: Option<u64>, op: RegisterOp) -> HistoryOp {
        HistoryOp {
            invoked,
            completed,
            op,
        }
    }
    fn put(v: u8) -> RegisterOp {
        RegisterOp::Put { value: vec![v] }
    }
    fn get(v: Option<u8>) -> RegisterOp {
        RegisterOp::Get {
            found: v.map(|v| vec![v]),
        }
    }

    #[test]
    fn a_delete_empties_the_register() {
        let delete = RegisterOp::Delete;
        let history = |after: Option<u8>| {
            vec![
                op(0, Some(1), put(1)),
                op(2, Some(3), delete.clone()),
                op(4, Some(5), get(after)),
            ]
        };
        assert_eq!(check_register(&history(None), None, 10_000), Some(true));
        // The value read back after a completed delete: not linearizable.
        assert_eq!(check_register(&history(Some(1)), None, 10_000), Some(false));
    }

    #[test]
    fn sequential_and_concurrent_histories() {
        // put 1; get → 1: fine.
        assert_eq!(
            check_register(
                &[op(0, Some(1), put(1)), op(2, Some(3), get(Some(1)))],
                None,
                10_000
            ),
            Some(true)
        );
        // A read after a completed write that returns the old value: a stale read.
        assert_eq!(
            check_register(
                &[op(0, Some(1), put(1)), op(2, Some(3), get(None))],
                None,
                10_000
            ),
            Some(false)
        );
        // Concurrent put and get: either value is fine.
        assert_eq!(
            check_register(
                &[op(0, Some(5), put(1)), op(1, Some(4), get(None))],
                None,
                10_000
            ),
            Some(true)
        );
        // A write with unknown outcome may or may not have happened.
        let h = [
            op(0, None, put(1)),
            op(2, Some(3), get(Some(1))),
            op(4, Some(5), get(Some(1))),
        ];
        assert_eq!(check_register(&h, None, 10_000), Some(true));
        // ... but once seen, it cannot disappear.
        let h = [
            op(0, None, put(1)),
            op(2, Some(3), get(Some(1))),
            op(4, Some(5), get(None)),
        ];
        assert_eq!(check_register(&h, None, 10_000), Some(false));
    }

    #[test]
    fn compare_and_set_semantics() {
        let cas = |e: Option<u8>, n: u8, applied| RegisterOp::Cas {
            expected: e.map(|e| vec![e]),
            new: Some(vec![n]),
            applied,
        };
        let h = [
            op(0, Some(1), put(1)),
            op(2, Some(3), cas(Some(1), 2, true)),
            op(4, Some(5), get(Some(2))),
        ];
        assert_eq!(check_register(&h, None, 10_000), Some(true));
        let h = [
            op(0, Some(1), put(1)),
            op(2, Some(3), cas(Some(1), 2, false)),
        ];
        assert_eq!(
            check_register(&h, None, 10_000),
            Some(false),
            "the CAS had to apply"
        );
    }
}
