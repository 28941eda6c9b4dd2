//! What one core measures of its own load, for the rebalancer: requests per hosted group
//! folded into decayed rates once per load tick, the bytes each group stores, which groups
//! it leads, and the latency of the requests it served (a per-core HdrHistogram, cleared
//! every tick). Sans-IO: the node core counts, the shell adds its busy fraction and
//! publishes the result to the node's load slots.

use std::collections::BTreeMap;
use std::time::Duration;

use hdrhistogram::Histogram;

use crate::balance::load::VShardLoad;
use crate::constants::{LOAD_RATE_DECAY, LOAD_TICK};
use crate::ids::{GroupId, VShardId};
use crate::node::cell::Cell;
use crate::replication::kv::StateMachine;
use crate::replication::raft_host::{GroupFlags, RaftHost};
use crate::time::Time;

/// One core's load over its last tick.
#[derive(Clone, Debug, PartialEq)]
pub struct CoreLoad {
    /// When the tick ended.
    pub at: Time,
    pub groups_led: u32,
    pub replicas: u32,
    pub bytes_stored: u64,
    pub reads_per_sec: f64,
    pub writes_per_sec: f64,
    pub p95_latency_us: f64,
    pub p99_latency_us: f64,
    /// Fraction of the tick the core's loop was busy, `0.0..=1.0`: the shell measures it
    /// and fills it in ([`NodeCore::handle_load`](crate::node::NodeCore::handle_load)).
    pub busy: f64,
    /// Snapshot bytes per second the core streamed to peers (filled in by the shell).
    pub migration_bytes_per_sec: f64,
    /// The groups this core leads, as the planner's per-vShard samples (at most one per
    /// group the core hosts).
    pub vshards: Vec<VShardLoad>,
}

#[derive(Clone, Copy, Default)]
struct Rates {
    reads: u64,
    writes: u64,
    reads_per_sec: f64,
    writes_per_sec: f64,
}

/// A decayed rate below this many requests per second counts as none: its group's entry
/// is dropped, so that a core whose groups all went quiet keeps no rates and its load tick
/// can skip the walk over its groups.
const RATE_FLOOR: f64 = 1e-3;

pub(crate) struct LoadMeter {
    tick_started: Option<Time>,
    /// Rates of the groups that took requests lately (those whose rates decayed below
    /// `RATE_FLOOR` are dropped).
    groups: BTreeMap<GroupId, Rates>,
    latency: Histogram<u64>,
    ready: Option<CoreLoad>,
    /// What the last walk over the groups found, and the host's `activity` then.
    walked: Option<Walked>,
}

struct Walked {
    activity: u64,
    load: CoreLoad,
    /// The counts of the groups other than the metadata group.
    others: GroupCounts,
    /// The same with the metadata group, as of the last tick.
    counts: GroupCounts,
}

/// `others` with the metadata group's replica here, if any, asked now.
fn walked_counts(mut others: GroupCounts, host: &RaftHost<Cell>) -> GroupCounts {
    if let Some(flags) = host.group_flags(GroupId::METADATA) {
        others.add(flags);
    }
    others
}

/// How many of a core's groups sleep and how many know no leader, as of its last load
/// tick.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GroupCounts {
    pub quiesced: usize,
    pub leaderless: usize,
    /// The most entries committed and not applied, over the core's replicas.
    pub apply_lag_max: u64,
    /// The most entries a voter trails by, over the groups the core leads.
    pub follower_lag_max: u64,
}

impl GroupCounts {
    fn add(&mut self, flags: GroupFlags) {
        self.quiesced += usize::from(flags.quiesced);
        self.leaderless += usize::from(flags.leaderless);
        self.apply_lag_max = self.apply_lag_max.max(flags.apply_lag);
        self.follower_lag_max = self.follower_lag_max.max(flags.follower_lag);
    }
}

impl LoadMeter {
    pub(crate) fn new() -> LoadMeter {
        LoadMeter {
            tick_started: None,
            groups: BTreeMap::new(),
            // Microseconds, 2 significant digits: 1 µs .. 1 h in a few KiB.
            latency: Histogram::new_with_bounds(1, 3_600_000_000, 2).expect("valid bounds"),
            ready: None,
            walked: None,
        }
    }

    /// The counts of the last load tick's walk.
    pub(crate) fn group_counts(&self) -> GroupCounts {
        self.walked.as_ref().map(|w| w.counts).unwrap_or_default()
    }

    /// A request for `group` was taken here.
    pub(crate) fn on_request(&mut self, group: GroupId, writes: bool) {
        let r = self.groups.entry(group).or_default();
        if writes {
            r.writes += 1;
        } else {
            r.reads += 1;
        }
    }

    /// A request was served (committed or read) `took` after it arrived.
    pub(crate) fn on_served(&mut self, took: Duration) {
        let micros = u64::try_from(took.as_micros()).unwrap_or(u64::MAX).max(1);
        self.latency.saturating_record(micros);
    }

    /// Ends the tick when it is due: folds the counts into decayed rates and describes the
    /// core's load, taken by [`LoadMeter::take`].
    pub(crate) fn tick(&mut self, now: Time, host: &RaftHost<Cell>) {
        let started = *self.tick_started.get_or_insert(now);
        let elapsed = now.saturating_since(started);
        if elapsed < LOAD_TICK {
            return;
        }
        self.tick_started = Some(now);
        let seconds = elapsed.as_secs_f64();
        // An exponential moving average whose weight follows the tick's actual length.
        let keep = (-seconds / LOAD_RATE_DECAY.as_secs_f64()).exp();
        let mut load = CoreLoad {
            at: now,
            groups_led: 0,
            replicas: 0,
            bytes_stored: 0,
            reads_per_sec: 0.0,
            writes_per_sec: 0.0,
            p95_latency_us: self.latency.value_at_quantile(0.95) as f64,
            p99_latency_us: self.latency.value_at_quantile(0.99) as f64,
            busy: 0.0,
            migration_bytes_per_sec: 0.0,
            vshards: Vec::new(),
        };
        self.latency.reset();
        if let Some(w) = &mut self.walked
            && w.activity == host.activity()
            && self.groups.is_empty()
        {
            // No group changed since the last walk, no request came and every rate has
            // decayed to nothing: the walk would find what it found then. (At 16 384
            // sleeping groups the walk was most of an idle node's CPU.)
            w.counts = walked_counts(w.others, host);
            self.ready = Some(CoreLoad {
                at: now,
                p95_latency_us: load.p95_latency_us,
                p99_latency_us: load.p99_latency_us,
                ..w.load.clone()
            });
            return;
        }
        // One pass over the host's groups and the rates kept (both in id order): the rates
        // of groups no longer here, or decayed to nothing, are dropped.
        let mut kept = std::mem::take(&mut self.groups).into_iter().peekable();
        let mut rates = Vec::with_capacity(kept.len());
        let mut others = GroupCounts::default();
        for (group, state, flags) in host.group_states() {
            if group == GroupId::METADATA {
                continue;
            }
            others.add(flags);
            while kept.next_if(|(g, _)| *g < group).is_some() {}
            let mut r = kept
                .next_if(|(g, _)| *g == group)
                .map(|(_, r)| r)
                .unwrap_or_default();
            r.reads_per_sec = keep * r.reads_per_sec + (1.0 - keep) * r.reads as f64 / seconds;
            r.writes_per_sec = keep * r.writes_per_sec + (1.0 - keep) * r.writes as f64 / seconds;
            r.reads = 0;
            r.writes = 0;
            let bytes = state.bytes_stored();
            load.replicas += 1;
            load.bytes_stored += bytes;
            load.reads_per_sec += r.reads_per_sec;
            load.writes_per_sec += r.writes_per_sec;
            if flags.leading {
                load.groups_led += 1;
                load.vshards.push(VShardLoad {
                    vshard: VShardId((group.0 - 1) as u32),
                    bytes,
                    writes_per_sec: r.writes_per_sec,
                    reads_per_sec: r.reads_per_sec,
                });
            }
            if r.reads_per_sec >= RATE_FLOOR || r.writes_per_sec >= RATE_FLOOR {
                rates.push((group, r));
            }
        }
        // Sorted input: built in one pass.
        self.groups = rates.into_iter().collect();
        self.walked = Some(Walked {
            activity: host.activity(),
            load: load.clone(),
            others,
            counts: walked_counts(others, host),
        });
        self.ready = Some(load);
    }

    /// The load of the last tick, once.
    pub(crate) fn take(&mut self) -> Option<CoreLoad> {
        self.ready.take()
    }
}
