//! Stage timing of sampled writes (`KvRequest::trace`): where a write's time goes between
//! the core taking it and answering it.
//!
//! A traced write is followed through the events the core sees anyway: the persist batch
//! that carries its entry, that batch becoming durable, the quorum's followers holding the
//! entry, its commit and its answer. Each stage ends at the `now` of the call that showed
//! it, so a stage includes the time the loop took to notice. Only traced writes cost
//! anything: with none open, every hook returns at once.

use std::collections::BTreeMap;

use crate::ids::GroupId;
use crate::replication::kv::StateMachine;
use crate::replication::raft_host::RaftHost;
use crate::time::Time;
use crate::wire::kv_rpc::ServerTiming;

/// The traced writes waiting for their answer, by proposal token.
#[derive(Default)]
pub(crate) struct Traces {
    open: BTreeMap<u64, Trace>,
}

struct Trace {
    group: GroupId,
    /// The proposal's log index.
    index: u64,
    proposed: Time,
    /// The persist batch carrying the entry, and when it was handed to the log.
    batch: Option<(u64, Time)>,
    durable: Option<Time>,
    replicated: Option<Time>,
    committed: Option<Time>,
}

impl Traces {
    /// A traced write proposed at `now` as entry `index` of `group`.
    pub(crate) fn start(&mut self, token: u64, group: GroupId, index: u64, now: Time) {
        self.open.insert(
            token,
            Trace {
                group,
                index,
                proposed: now,
                batch: None,
                durable: None,
                replicated: None,
                committed: None,
            },
        );
    }

    /// Persist batch `id` was handed to the log: it carries every traced entry proposed
    /// before it that no earlier batch carried (a proposal's entry goes out in the next
    /// batch the host makes).
    pub(crate) fn on_batch(&mut self, id: u64, now: Time) {
        for t in self.open.values_mut().filter(|t| t.batch.is_none()) {
            t.batch = Some((id, now));
        }
    }

    /// Batch `id` is durable here.
    pub(crate) fn on_durable<S: StateMachine>(&mut self, id: u64, now: Time, host: &RaftHost<S>) {
        for t in self.open.values_mut() {
            if t.batch.is_some_and(|(b, _)| b == id) {
                t.durable.get_or_insert(now);
            }
        }
        self.on_progress(now, host);
    }

    /// Replication or commit may have advanced (a peer's messages, a durable batch).
    pub(crate) fn on_progress<S: StateMachine>(&mut self, now: Time, host: &RaftHost<S>) {
        for t in self.open.values_mut() {
            if t.batch.is_none() || (t.replicated.is_some() && t.committed.is_some()) {
                continue;
            }
            if let Some((replicated, committed)) = host.quorum_holds(t.group, t.index) {
                if replicated {
                    t.replicated.get_or_insert(now);
                }
                if committed {
                    t.committed.get_or_insert(now);
                }
            }
        }
    }

    /// The write of `token` is answered at `now`: its stages on the core (the shell adds
    /// the queue before it and the reply after it). `None` if it was not traced.
    pub(crate) fn finish(&mut self, token: u64, now: Time) -> Option<ServerTiming> {
        let t = self.open.remove(&token)?;
        let micros = |from: Time, to: Time| {
            u32::try_from(to.saturating_since(from).as_micros()).unwrap_or(u32::MAX)
        };
        // A stage whose end went unseen ends with the next one seen.
        let batched = t.batch.map_or(now, |(_, at)| at);
        let committed = t.committed.unwrap_or(now);
        let durable = t.durable.unwrap_or(committed);
        Some(ServerTiming {
            batch_wait_us: micros(t.proposed, batched),
            leader_fsync_us: micros(batched, durable),
            commit_wait_us: micros(durable, committed),
            apply_us: micros(committed, now),
            follower_us: t.replicated.map_or(0, |r| micros(batched, r)),
            ..ServerTiming::default()
        })
    }

    /// Forgets traces whose write is no longer waiting (expired, or answered without a
    /// commit).
    pub(crate) fn retain(&mut self, mut waiting: impl FnMut(u64) -> bool) {
        self.open.retain(|&token, _| waiting(token));
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.open.is_empty()
    }
}
