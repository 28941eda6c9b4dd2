//! The load model: what nodes, cores and vShards report, and the score the planner balances.
//!
//! # The score
//!
//! Load has four dimensions, each attributed to replicas so that the effect of moving a
//! replica or its leadership is known exactly:
//!
//! | dimension | carried by           | why                                             |
//! |-----------|----------------------|-------------------------------------------------|
//! | bytes     | every replica        | every replica stores the whole vShard           |
//! | writes/s  | every replica        | every replica appends and applies every write   |
//! | reads/s   | the leader           | linearizable reads are served by the leader     |
//! | leaders   | the leader (1 each)  | the leader proposes, replicates and heartbeats  |
//!
//! Each dimension is divided by its mean per core over the cores of `Active` nodes, weighted
//! by `LoadWeights`, and the weighted sum divided by the sum of the weights in use (a
//! dimension with zero total or zero weight drops out). So a **core score** of 1.0 is an
//! exactly average core, and a **node score** (the node's total divided by its core count)
//! of 1.0 is an exactly average node: `max node score` *is* max / mean.
//!
//! CPU utilisation and p95 latency are reported per node but not balanced directly: they
//! cannot be attributed to a vShard without a model, and they follow the dimensions above.
//! The rebalancer uses CPU as back-pressure (no sweep while a node is overloaded).

use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::ids::{CoreId, NodeId, VShardId};

/// Load reported by one node (or, with `core` set, one core of it) for the last interval.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LoadMetrics {
    pub node_id: NodeId,
    /// `None` for a node aggregate, `Some` for one core's record.
    pub core: Option<CoreId>,
    pub vshards_led: u32,
    pub bytes_stored: u64,
    pub writes_per_sec: f64,
    pub reads_per_sec: f64,
    /// Requests per second over the most recent short window (reads + writes + scans).
    pub qps_recent: f64,
    pub p95_latency_us: f64,
    /// Fraction of the time the node's (or core's) executor was busy, `0.0..=1.0`.
    pub cpu_utilization: f64,
}

impl LoadMetrics {
    /// An all-zero record for `node_id`.
    pub fn idle(node_id: NodeId) -> LoadMetrics {
        LoadMetrics {
            node_id,
            core: None,
            vshards_led: 0,
            bytes_stored: 0,
            writes_per_sec: 0.0,
            reads_per_sec: 0.0,
            qps_recent: 0.0,
            p95_latency_us: 0.0,
            cpu_utilization: 0.0,
        }
    }

    /// Sums core records into a node record: counters add up, CPU is the mean over cores,
    /// p95 is the worst core's (a conservative bound, since percentiles do not add).
    pub fn aggregate(node_id: NodeId, cores: &[LoadMetrics]) -> LoadMetrics {
        let mut total = LoadMetrics::idle(node_id);
        for c in cores {
            total.vshards_led += c.vshards_led;
            total.bytes_stored += c.bytes_stored;
            total.writes_per_sec += c.writes_per_sec;
            total.reads_per_sec += c.reads_per_sec;
            total.qps_recent += c.qps_recent;
            total.p95_latency_us = total.p95_latency_us.max(c.p95_latency_us);
            total.cpu_utilization += c.cpu_utilization;
        }
        if !cores.is_empty() {
            total.cpu_utilization /= cores.len() as f64;
        }
        total
    }

    /// Checks that every rate is finite and non-negative and CPU is within `0..=1`.
    pub fn validate(&self) -> Result<(), LoadError> {
        let fields = [
            ("writes_per_sec", self.writes_per_sec),
            ("reads_per_sec", self.reads_per_sec),
            ("qps_recent", self.qps_recent),
            ("p95_latency_us", self.p95_latency_us),
            ("cpu_utilization", self.cpu_utilization),
        ];
        for (field, value) in fields {
            if !value.is_finite() || value < 0.0 {
                return Err(LoadError::InvalidNodeMetric {
                    node: self.node_id,
                    field,
                    value,
                });
            }
        }
        if self.cpu_utilization > 1.0 {
            let value = self.cpu_utilization;
            return Err(LoadError::InvalidNodeMetric {
                node: self.node_id,
                field: "cpu_utilization",
                value,
            });
        }
        Ok(())
    }
}

/// Load of one vShard over the last interval, as measured by its leader.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct VShardLoad {
    pub vshard: VShardId,
    pub bytes: u64,
    pub writes_per_sec: f64,
    pub reads_per_sec: f64,
}

impl VShardLoad {
    /// Whether `validate` passes: rates finite and not negative (NaN fails the first
    /// comparison). Without branches, for a pass over every vShard.
    #[inline]
    pub fn is_valid(&self) -> bool {
        let fine = |value: f64| (value >= 0.0) & (value != f64::INFINITY);
        fine(self.writes_per_sec) & fine(self.reads_per_sec)
    }

    pub fn validate(&self) -> Result<(), LoadError> {
        if self.is_valid() {
            return Ok(());
        }
        for (field, value) in [
            ("writes_per_sec", self.writes_per_sec),
            ("reads_per_sec", self.reads_per_sec),
        ] {
            if !value.is_finite() || value < 0.0 {
                return Err(LoadError::InvalidVShardLoad {
                    vshard: self.vshard,
                    field,
                    value,
                });
            }
        }
        Ok(())
    }
}

/// A load report the planner cannot use.
#[derive(Debug, Error, PartialEq)]
pub enum LoadError {
    /// A node reported a NaN, infinite, negative or out-of-range value.
    #[error("node {node} reported {field} = {value}, which is not a valid load")]
    InvalidNodeMetric {
        node: NodeId,
        field: &'static str,
        value: f64,
    },
    /// A vShard sample has a NaN, infinite or negative rate.
    #[error("vShard {vshard} reported {field} = {value}, which is not a valid load")]
    InvalidVShardLoad {
        vshard: VShardId,
        field: &'static str,
        value: f64,
    },
    /// Two samples were given for the same vShard.
    #[error("vShard {0} has more than one load sample")]
    DuplicateVShardLoad(VShardId),
    /// Two metric rows were given for the same node.
    #[error("node {0} has more than one metrics row")]
    DuplicateNodeMetrics(NodeId),
    /// A sample says a core leads it that the report has no row for.
    #[error("vShard {vshard} is reported led by core {core}, which the report does not list")]
    UnknownLeaderCore { vshard: VShardId, core: u16 },
    /// A sample names a vShard outside the placement table.
    #[error("vShard {0} is not in the placement table")]
    UnknownVShard(VShardId),
    /// A weight is NaN, infinite or negative, or all weights are zero.
    #[error("load weights must be finite, non-negative and not all zero")]
    InvalidWeights,
}

/// Relative importance of each load dimension in the score.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct LoadWeights {
    pub bytes: f64,
    pub writes: f64,
    pub reads: f64,
    pub leaders: f64,
    /// A rate dimension (writes per replica, reads) whose mean per core is below this many
    /// per second is noise, not load: it drops out of the score. 0 counts everything.
    #[serde(default)]
    pub significant_rate_per_core: f64,
    /// Likewise for stored bytes per core.
    #[serde(default)]
    pub significant_bytes_per_core: f64,
}

impl Default for LoadWeights {
    /// Storage, write and read load count equally; leader count is a tie-breaker that keeps
    /// idle leaders (heartbeats, proposals) spread.
    fn default() -> Self {
        LoadWeights {
            bytes: 1.0,
            writes: 1.0,
            reads: 1.0,
            leaders: 0.25,
            significant_rate_per_core: 0.0,
            significant_bytes_per_core: 0.0,
        }
    }
}

impl LoadWeights {
    pub fn validate(&self) -> Result<(), LoadError> {
        let all = [self.bytes, self.writes, self.reads, self.leaders];
        if all.iter().any(|w| !w.is_finite() || *w < 0.0) || all.iter().all(|w| *w == 0.0) {
            return Err(LoadError::InvalidWeights);
        }
        let floors = [
            self.significant_rate_per_core,
            self.significant_bytes_per_core,
        ];
        if floors.iter().any(|f| !f.is_finite() || *f < 0.0) {
            return Err(LoadError::InvalidWeights);
        }
        Ok(())
    }
}

/// Cluster-wide totals of each dimension, from which replica contributions are scaled.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct LoadTotals {
    /// Bytes summed over all replicas (a vShard with R replicas counts R times).
    pub replica_bytes: f64,
    /// Writes/s summed over all replicas.
    pub replica_writes: f64,
    /// Reads/s summed over all vShards (served once, by the leader).
    pub reads: f64,
    /// Number of vShards (one leader each).
    pub leaders: f64,
    /// Number of replicas (only an idle cluster balances their count).
    pub replicas: f64,
}

impl LoadTotals {
    /// Counts one replica of a vShard with `load`, leading or not. The same sums over one
    /// core's replicas give that core's score (`ScoreScale::units_of`): units are linear in
    /// the load, so a sweep sums raw loads in its one pass over the placement table and
    /// scales them once the cluster's totals are known.
    pub fn add_replica(&mut self, load: &VShardLoad, leader: bool) {
        self.replica_bytes += load.bytes as f64;
        self.replica_writes += load.writes_per_sec;
        self.replicas += 1.0;
        if leader {
            self.reads += load.reads_per_sec;
            self.leaders += 1.0;
        }
    }

    /// Counts `count` follower replicas of a vShard with `load` at once.
    pub fn add_replicas(&mut self, load: &VShardLoad, count: f64) {
        self.replica_bytes += load.bytes as f64 * count;
        self.replica_writes += load.writes_per_sec * count;
        self.replicas += count;
    }

    /// Both sets of replicas together.
    pub fn plus(&self, other: &LoadTotals) -> LoadTotals {
        LoadTotals {
            replica_bytes: self.replica_bytes + other.replica_bytes,
            replica_writes: self.replica_writes + other.replica_writes,
            reads: self.reads + other.reads,
            leaders: self.leaders + other.leaders,
            replicas: self.replicas + other.replicas,
        }
    }
}

/// Converts a vShard's load into score units (fractions of an average core).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ScoreScale {
    per_replica_byte: f64,
    per_replica_write: f64,
    per_read: f64,
    per_leader: f64,
    /// Units every replica carries whatever its load: nonzero only in an idle cluster.
    per_replica: f64,
}

impl ScoreScale {
    /// The scale for a cluster with these totals and `capacity_cores` cores on nodes that
    /// hold load at equilibrium (the `Active` ones). Returns `None` when there is nothing to
    /// balance: no capacity, no data and no traffic, or every weighted dimension is zero.
    pub fn new(
        weights: &LoadWeights,
        totals: &LoadTotals,
        capacity_cores: u32,
    ) -> Option<ScoreScale> {
        if capacity_cores == 0 {
            return None;
        }
        let cores = f64::from(capacity_cores);
        // Below its significance floor a dimension is noise (a few requests a second, a
        // few bytes): it counts as zero, so that it never moves data.
        let significant = |total: f64, floor: f64| {
            if total / cores < floor { 0.0 } else { total }
        };
        let totals = LoadTotals {
            replica_bytes: significant(totals.replica_bytes, weights.significant_bytes_per_core),
            replica_writes: significant(totals.replica_writes, weights.significant_rate_per_core),
            reads: significant(totals.reads, weights.significant_rate_per_core),
            leaders: totals.leaders,
            replicas: totals.replicas,
        };
        // An idle cluster (no data, no traffic worth moving) is balanced on replica counts
        // alone: a node that joined, or came back after its replicas were replaced
        // elsewhere, gets its share even when there is no load to speak of. Counts do not
        // fluctuate, so this never flaps. Leaderships cost nothing without load; they are
        // balanced once there is load.
        let idle =
            totals.replica_bytes <= 0.0 && totals.replica_writes <= 0.0 && totals.reads <= 0.0;
        if idle {
            if totals.replicas <= 0.0 {
                return None;
            }
            return Some(ScoreScale {
                per_replica_byte: 0.0,
                per_replica_write: 0.0,
                per_read: 0.0,
                per_leader: 0.0,
                per_replica: cores / totals.replicas,
            });
        }
        let dims = [
            (weights.bytes, totals.replica_bytes),
            (weights.writes, totals.replica_writes),
            (weights.reads, totals.reads),
            (weights.leaders, totals.leaders),
        ];
        let weight_sum: f64 = dims
            .iter()
            .filter(|(w, t)| *w > 0.0 && *t > 0.0)
            .map(|(w, _)| w)
            .sum();
        if weight_sum <= 0.0 {
            return None;
        }
        // weight / (mean per core) / weight_sum, or 0 for a dimension that drops out.
        let factor = |(w, total): (f64, f64)| {
            if w > 0.0 && total > 0.0 {
                w * cores / total / weight_sum
            } else {
                0.0
            }
        };
        Some(ScoreScale {
            per_replica_byte: factor(dims[0]),
            per_replica_write: factor(dims[1]),
            per_read: factor(dims[2]),
            per_leader: factor(dims[3]),
            per_replica: 0.0,
        })
    }

    /// Score units a follower replica of this vShard adds to the core hosting it.
    /// A scale that counts leaderships alone, for a cluster `ScoreScale::new` finds
    /// nothing to balance in: a node being emptied must still be emptied, and the planner
    /// needs a model to place its replicas. `None` without capacity or groups.
    pub fn leaders_only(totals: &LoadTotals, capacity_cores: u32) -> Option<ScoreScale> {
        (capacity_cores > 0 && totals.leaders > 0.0).then(|| ScoreScale {
            per_replica_byte: 0.0,
            per_replica_write: 0.0,
            per_read: 0.0,
            per_leader: f64::from(capacity_cores) / totals.leaders,
            per_replica: 0.0,
        })
    }

    /// Whether this is an idle cluster's scale, which counts replicas and leaderships.
    pub fn counts_only(&self) -> bool {
        self.per_replica > 0.0
    }

    pub fn follower_units(&self, load: &VShardLoad) -> f64 {
        load.bytes as f64 * self.per_replica_byte
            + load.writes_per_sec * self.per_replica_write
            + self.per_replica
    }

    /// The part of `follower_units` that `bytes` stored make.
    pub fn bytes_units(&self, bytes: u64) -> f64 {
        bytes as f64 * self.per_replica_byte
    }

    /// Score units that leadership adds on top of `follower_units`.
    pub fn leadership_units(&self, load: &VShardLoad) -> f64 {
        load.reads_per_sec * self.per_read + self.per_leader
    }

    /// The units of the replicas `sums` counts (`LoadTotals::add_replica`): the sum of
    /// their `follower_units`, plus `leadership_units` for those that lead, up to rounding.
    pub fn units_of(&self, sums: &LoadTotals) -> f64 {
        sums.replica_bytes * self.per_replica_byte + self.traffic_of(sums)
    }

    /// The part of `units_of` that is traffic: everything but the bytes.
    pub fn traffic_of(&self, sums: &LoadTotals) -> f64 {
        sums.replica_writes * self.per_replica_write
            + sums.replicas * self.per_replica
            + sums.reads * self.per_read
            + sums.leaders * self.per_leader
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_average_core_scores_one() {
        // 2 cores, 2 vShards with 2 replicas each: every core holds one leader and one follower.
        let loads = [
            VShardLoad {
                vshard: VShardId(0),
                bytes: 100,
                writes_per_sec: 10.0,
                reads_per_sec: 30.0,
            },
            VShardLoad {
                vshard: VShardId(1),
                bytes: 100,
                writes_per_sec: 10.0,
                reads_per_sec: 30.0,
            },
        ];
        let totals = LoadTotals {
            replica_bytes: 400.0,
            replica_writes: 40.0,
            reads: 60.0,
            leaders: 2.0,
            replicas: 4.0,
        };
        let scale = ScoreScale::new(&LoadWeights::default(), &totals, 2).unwrap();
        let core = scale.follower_units(&loads[0]) * 2.0 + scale.leadership_units(&loads[1]);
        assert!((core - 1.0).abs() < 1e-12, "{core}");
    }

    #[test]
    fn nothing_to_balance_gives_no_scale() {
        assert_eq!(
            ScoreScale::new(&LoadWeights::default(), &LoadTotals::default(), 4),
            None
        );
        let totals = LoadTotals {
            replica_bytes: 1.0,
            ..LoadTotals::default()
        };
        assert_eq!(ScoreScale::new(&LoadWeights::default(), &totals, 0), None);
    }

    #[test]
    fn an_idle_cluster_is_scored_by_replica_counts() {
        // 2 cores, 2 vShards of 2 replicas, no load: a core with two replicas is an average
        // core, whichever of them lead.
        let idle = VShardLoad {
            vshard: VShardId(0),
            bytes: 0,
            writes_per_sec: 0.0,
            reads_per_sec: 0.0,
        };
        let totals = LoadTotals {
            leaders: 2.0,
            replicas: 4.0,
            ..LoadTotals::default()
        };
        let scale = ScoreScale::new(&LoadWeights::default(), &totals, 2).unwrap();
        let mixed = scale.follower_units(&idle) * 2.0 + scale.leadership_units(&idle);
        assert!((mixed - 1.0).abs() < 1e-12, "{mixed}");
        assert_eq!(scale.leadership_units(&idle), 0.0);
        assert_eq!(scale.bytes_units(1 << 20), 0.0);
        assert!(scale.counts_only());
    }

    #[test]
    fn invalid_values_are_typed_errors() {
        let bad = VShardLoad {
            vshard: VShardId(1),
            bytes: 0,
            writes_per_sec: f64::NAN,
            reads_per_sec: 0.0,
        };
        assert!(matches!(
            bad.validate(),
            Err(LoadError::InvalidVShardLoad { .. })
        ));
        let mut m = LoadMetrics::idle(NodeId(1));
        m.cpu_utilization = 1.5;
        assert!(m.validate().is_err());
        m.cpu_utilization = -0.1;
        assert!(m.validate().is_err());
        let w = LoadWeights {
            significant_rate_per_core: 0.0,
            significant_bytes_per_core: 0.0,
            bytes: 0.0,
            writes: 0.0,
            reads: 0.0,
            leaders: 0.0,
        };
        assert_eq!(w.validate(), Err(LoadError::InvalidWeights));
    }
}
