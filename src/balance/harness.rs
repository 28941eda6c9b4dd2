//! The balancer evaluation harness: a synthetic cluster, sweeps and moves in virtual time.
//!
//! Modelled on ScyllaDB's tablet-balancer harness: build a cluster with a given skew, run the
//! planner, carry out its plan, and repeat until the plan is empty with nothing in flight;
//! then run more sweeps to check that it stays empty. This measures convergence, plan
//! quality, data moved and planning time without moving a byte. Deterministic for a seed;
//! the only clock is the one the caller passes in to time the planner.
//!
//! # The time model
//! - Sweeps run every `interval` (30 s), the first at time zero (the kick a skewed report
//!   or a topology change gives a live coordinator), and at once whenever a replica move
//!   finishes (the seed's kick), so free move slots fill without waiting for the interval.
//! - A replica move takes its bytes divided by `move_rate_bytes_per_sec` (100 MiB/s, the
//!   default move throttle of TiKV and Redpanda). It holds a move slot of its source and its
//!   target node (`max_moves_per_node`, 2) and one of the cluster (`max_moves_in_flight`,
//!   8) until it ends. The planner is given the free slots as its budget.
//! - A leader transfer takes `leader_transfer_time` (1 s: raft-rs abandons a transfer that
//!   has not ended within an election timeout, so 1 s bounds it; on a LAN it takes a few
//!   round trips). Transfers hold no slot; the planner's per-sweep transfer budget bounds
//!   them.
//! - The planner plans on the placement as it will be when the moves in flight end (a live
//!   coordinator does the same), so each move is applied to the placement when it starts;
//!   its effect on load counts from then, and the cluster is balanced when the last move
//!   of the balancing ends.

use std::collections::HashMap;
use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use serde::Serialize;
use thiserror::Error;

use crate::balance::load::{LoadMetrics, VShardLoad};
use crate::balance::model::LoadModel;
use crate::balance::planner::{
    MoveBudget, MoveKind, PlanError, PlanInput, PlanStatus, PlannedMove, Planner, PlannerConfig,
    leader_transfer_budget,
};
use crate::cluster::placement::{PlacementError, PlacementTable};
use crate::cluster::topology::{ClusterTopology, NodeInfo, NodeState, TopologyError};
use crate::constants::{
    CORES_PER_NODE_MAX, NODES_MAX, REBALANCE_INTERVAL, REBALANCE_MAX_MOVES_IN_FLIGHT,
    REBALANCE_MAX_MOVES_PER_NODE, REPLICATION_FACTOR_MAX, VSHARD_COUNT_MAX,
};
use crate::ids::{CoreAddress, CoreId, NodeId, VShardId};
use crate::rng::Rng;
use crate::time::Time;

/// The skew the synthetic cluster starts with.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Scenario {
    /// vShards led by node 0 carry 4× the traffic.
    HotNode,
    /// vShards led by core 0 of node 0 carry 8× the traffic.
    HotCore,
    /// An empty node joins a balanced cluster of `nodes − 1`.
    NewNode,
    /// The last node starts draining.
    Drain,
    /// Per-vShard traffic follows a Zipf distribution (YCSB-like popularity).
    Zipf,
}

impl Scenario {
    pub const ALL: [Scenario; 5] = [
        Scenario::HotNode,
        Scenario::HotCore,
        Scenario::NewNode,
        Scenario::Drain,
        Scenario::Zipf,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Scenario::HotNode => "hot-node",
            Scenario::HotCore => "hot-core",
            Scenario::NewNode => "new-node",
            Scenario::Drain => "drain",
            Scenario::Zipf => "zipf",
        }
    }
}

impl fmt::Display for Scenario {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Scenario {
    type Err = HarnessError;

    fn from_str(s: &str) -> Result<Scenario, HarnessError> {
        Scenario::ALL
            .into_iter()
            .find(|sc| sc.name() == s)
            .ok_or_else(|| HarnessError::UnknownScenario(s.to_owned()))
    }
}

/// A harness run that cannot start or went wrong.
#[derive(Debug, Error)]
pub enum HarnessError {
    /// The scenario name is not one of the five.
    #[error("unknown scenario {0:?}; expected one of hot-node, hot-core, new-node, drain, zipf")]
    UnknownScenario(String),
    /// A size argument is out of range.
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// The planner refused its input.
    #[error("planner error: {0}")]
    Plan(#[from] PlanError),
    /// A planned move could not be applied: a planner bug.
    #[error("planned move {planned:?} could not be applied: {error}")]
    Apply {
        planned: PlannedMove,
        error: PlacementError,
    },
    /// Building the topology failed.
    #[error("topology: {0}")]
    Topology(#[from] TopologyError),
    /// Building the initial placement failed.
    #[error("placement: {0}")]
    Placement(#[from] PlacementError),
}

/// What to simulate.
#[derive(Clone, Debug, Serialize)]
pub struct HarnessConfig {
    pub nodes: usize,
    pub cores: u16,
    pub vshards: u32,
    pub replicas: usize,
    pub scenario: Scenario,
    pub seed: u64,
    /// Exponent of the Zipf popularity (0.99 as in YCSB).
    pub zipf_exponent: f64,
    /// Sweeps to run after convergence, each of which must plan nothing.
    pub settle_sweeps: usize,
    /// Give up after this many sweeps (the run then reports `converged: false`).
    pub max_sweeps: usize,
    /// Time between periodic sweeps.
    pub interval: Duration,
    /// How fast one replica move copies its vShard.
    pub move_rate_bytes_per_sec: u64,
    /// How long a leader transfer takes.
    pub leader_transfer_time: Duration,
    /// Replica moves one node takes part in at once (source or target).
    pub max_moves_per_node: usize,
    /// Replica moves in flight in the cluster at once.
    pub max_moves_in_flight: usize,
    /// Leader transfers one sweep may start.
    pub leader_transfers_per_sweep: usize,
    #[serde(skip)]
    pub planner: PlannerConfig,
}

/// The per-move rate the harness assumes: the anchors' default move throttle (TiKV and
/// Redpanda: 100 MiB/s).
pub const HARNESS_MOVE_RATE_BYTES_PER_SEC: u64 = 100 << 20;

/// How long the harness takes a leader transfer to be: an election timeout, the longest a
/// raft-rs transfer lasts before it is abandoned.
pub const HARNESS_LEADER_TRANSFER_TIME: Duration = Duration::from_secs(1);

impl HarnessConfig {
    pub fn new(nodes: usize, cores: u16, vshards: u32, scenario: Scenario) -> HarnessConfig {
        HarnessConfig {
            nodes,
            cores,
            vshards,
            replicas: crate::constants::REPLICATION_FACTOR_DEFAULT,
            scenario,
            seed: 1,
            zipf_exponent: 0.99,
            settle_sweeps: 10,
            max_sweeps: 100_000,
            interval: REBALANCE_INTERVAL,
            move_rate_bytes_per_sec: HARNESS_MOVE_RATE_BYTES_PER_SEC,
            leader_transfer_time: HARNESS_LEADER_TRANSFER_TIME,
            max_moves_per_node: REBALANCE_MAX_MOVES_PER_NODE,
            max_moves_in_flight: REBALANCE_MAX_MOVES_IN_FLIGHT,
            leader_transfers_per_sweep: leader_transfer_budget(nodes),
            planner: PlannerConfig::default(),
        }
    }

    fn validate(&self) -> Result<(), HarnessError> {
        let bad = |m: String| Err(HarnessError::InvalidArgument(m));
        let min_nodes = if matches!(self.scenario, Scenario::NewNode | Scenario::Drain) {
            2
        } else {
            1
        };
        if self.nodes < min_nodes || self.nodes > NODES_MAX {
            return bad(format!(
                "--nodes must be within {min_nodes}..={NODES_MAX} for {}",
                self.scenario
            ));
        }
        if self.cores == 0 || self.cores > CORES_PER_NODE_MAX {
            return bad(format!("--cores must be within 1..={CORES_PER_NODE_MAX}"));
        }
        // A real cluster uses a power of two (the key hash takes top bits); the planner
        // does not care, and benchmarks measure round sizes such as 10 000.
        if self.vshards == 0 || self.vshards > VSHARD_COUNT_MAX {
            return bad(format!("--vshards must be within 1..={VSHARD_COUNT_MAX}"));
        }
        if self.replicas == 0 || self.replicas > REPLICATION_FACTOR_MAX {
            return bad(format!(
                "--replicas must be within 1..={REPLICATION_FACTOR_MAX}"
            ));
        }
        if !self.zipf_exponent.is_finite() || self.zipf_exponent < 0.0 {
            return bad("the Zipf exponent must be finite and non-negative".into());
        }
        if self.interval.is_zero() || self.interval > Duration::from_secs(24 * 3600) {
            return bad("the sweep interval must be within 1 ms..=24 h".into());
        }
        if self.move_rate_bytes_per_sec == 0 {
            return bad("the move rate must be positive".into());
        }
        if self.max_moves_per_node == 0 || self.max_moves_in_flight == 0 {
            return bad("the move limits must be at least 1".into());
        }
        Ok(())
    }
}

/// One sweep of a run.
#[derive(Clone, Debug, Serialize)]
pub struct SweepRow {
    pub sweep: usize,
    /// Virtual time of the sweep.
    pub at_seconds: f64,
    /// Kicked by a replica move that ended, rather than by the interval.
    pub kicked: bool,
    pub status: PlanStatus,
    pub moves: usize,
    pub leader_transfers: usize,
    pub bytes_moved: u64,
    /// Replica moves in flight after the sweep started its own.
    pub in_flight: usize,
    pub node_max_over_mean: f64,
    pub core_max_over_mean: f64,
    pub plan_us: f64,
}

/// The longest a load scenario (hot-node, hot-core, zipf) may take to converge.
pub const HARNESS_LOAD_CONVERGE_SECONDS: f64 = 600.0;

/// The most a load scenario may copy, as a fraction of all stored bytes (zipf).
pub const HARNESS_ZIPF_BYTES_MOVED_FRACTION: f64 = 0.03;

/// How far new-node and drain may stay above the time their bytes need at the bandwidth the
/// move limits allow.
pub const HARNESS_BANDWIDTH_SLACK: f64 = 1.3;

/// The result of a run; field names are the CLI's JSON keys.
#[derive(Clone, Debug, Serialize)]
pub struct HarnessReport {
    pub scenario: Scenario,
    pub nodes: usize,
    pub cores: u16,
    pub vshards: u32,
    /// Replicas per vShard actually used (capped by the nodes that can hold them).
    pub replicas: usize,
    pub seed: u64,
    pub interval_seconds: f64,
    pub move_rate_bytes_per_sec: u64,
    pub leader_transfer_seconds: f64,
    pub move_limit_per_node: usize,
    pub move_limit_in_flight: usize,
    pub leader_transfers_per_sweep: usize,
    pub converged: bool,
    /// Sweeps run up to and including the first one that planned nothing with nothing in
    /// flight (periodic and kicked).
    pub sweeps_to_converge: usize,
    /// Of those, the sweeps a finished replica move kicked.
    pub kicked_sweeps: usize,
    /// Virtual time from the first sweep until the last move of the balancing ended.
    pub virtual_seconds_to_converge: f64,
    /// The bytes that must move over the move bandwidth the limits allow (0 when nothing
    /// must move): no plan can finish sooner.
    pub bandwidth_bound_seconds: f64,
    /// The most replica moves in flight at once.
    pub max_moves_in_flight: usize,
    /// The most leader transfers one sweep started.
    pub max_leader_transfers_per_sweep: usize,
    pub initial_max_over_mean: f64,
    pub initial_core_max_over_mean: f64,
    pub final_max_over_mean: f64,
    pub final_core_max_over_mean: f64,
    /// The best node-level max / mean a plan can reach without trading bytes for traffic
    /// (`LoadModel::node_bound`).
    pub bound_max_over_mean: f64,
    /// The same bound at core level.
    pub core_bound_max_over_mean: f64,
    /// Over nodes, the traffic of the hottest core over the larger of the node's mean core
    /// traffic and its heaviest replica's: 1.0 is the best a node's cores can do.
    pub final_core_max_over_bound: f64,
    /// Every planned move: leader transfers plus replica moves.
    pub moves: usize,
    pub leader_transfers: usize,
    pub replica_moves: usize,
    /// Replica moves between the cores of one node (part of `replica_moves`).
    pub core_moves: usize,
    pub bytes_moved: u64,
    /// Bytes the core moves copied (part of `bytes_moved`).
    pub core_bytes_moved: u64,
    pub bytes_must_move: u64,
    /// Bytes stored by all replicas at the start.
    pub bytes_stored: u64,
    /// `bytes_moved / bytes_stored`.
    pub bytes_moved_fraction: f64,
    pub max_replica_moves_of_one_vshard: usize,
    /// Moves that sent a replica or leadership back to a node (or core) it had left.
    pub reversed_moves: usize,
    /// Moves planned in the settle sweeps after convergence (must be 0).
    pub moves_after_convergence: usize,
    pub drain_blocked: usize,
    pub plan_us_max: f64,
    pub plan_us_mean: f64,
    #[serde(skip)]
    pub rows: Vec<SweepRow>,
}

impl HarnessReport {
    /// The targets of the balancer's acceptance criteria; returns each one missed.
    pub fn violations(&self) -> Vec<String> {
        let mut out = Vec::new();
        if !self.converged {
            out.push(format!(
                "did not converge within {} sweeps",
                self.sweeps_to_converge
            ));
        }
        let node_limit = 1.10 * self.bound_max_over_mean.max(1.0);
        if self.final_max_over_mean > node_limit {
            out.push(format!(
                "final_max_over_mean {:.4} > {node_limit:.4}",
                self.final_max_over_mean
            ));
        }
        let core_limit = 1.15 * self.core_bound_max_over_mean.max(1.0);
        if self.final_core_max_over_mean > core_limit {
            out.push(format!(
                "final_core_max_over_mean {:.4} > {core_limit:.4}",
                self.final_core_max_over_mean
            ));
        }
        match self.scenario {
            Scenario::HotNode | Scenario::HotCore | Scenario::Zipf => {
                if self.virtual_seconds_to_converge > HARNESS_LOAD_CONVERGE_SECONDS {
                    out.push(format!(
                        "virtual_seconds_to_converge {:.0} > {HARNESS_LOAD_CONVERGE_SECONDS}",
                        self.virtual_seconds_to_converge
                    ));
                }
            }
            Scenario::NewNode | Scenario::Drain => {
                let limit = HARNESS_BANDWIDTH_SLACK * self.bandwidth_bound_seconds;
                if self.virtual_seconds_to_converge > limit {
                    out.push(format!(
                        "virtual_seconds_to_converge {:.0} > {HARNESS_BANDWIDTH_SLACK} × bandwidth_bound_seconds {:.0}",
                        self.virtual_seconds_to_converge, self.bandwidth_bound_seconds
                    ));
                }
            }
        }
        if self.scenario == Scenario::Zipf
            && self.bytes_moved_fraction > HARNESS_ZIPF_BYTES_MOVED_FRACTION
        {
            out.push(format!(
                "bytes_moved_fraction {:.4} > {HARNESS_ZIPF_BYTES_MOVED_FRACTION}",
                self.bytes_moved_fraction
            ));
        }
        if self.max_moves_in_flight > self.move_limit_in_flight {
            out.push(format!(
                "{} replica moves in flight > the limit {}",
                self.max_moves_in_flight, self.move_limit_in_flight
            ));
        }
        if self.moves_after_convergence > 0 {
            out.push(format!(
                "{} moves planned after convergence",
                self.moves_after_convergence
            ));
        }
        if self.reversed_moves > 0 {
            out.push(format!("{} reversed moves", self.reversed_moves));
        }
        if self.scenario != Scenario::Drain && self.max_replica_moves_of_one_vshard > 1 {
            out.push(format!(
                "a vShard's replicas moved {} times",
                self.max_replica_moves_of_one_vshard
            ));
        }
        if matches!(self.scenario, Scenario::NewNode | Scenario::Drain) {
            let limit = 1.2 * self.bytes_must_move as f64;
            if self.bytes_moved as f64 > limit {
                out.push(format!(
                    "bytes_moved {} > 1.2 × bytes_must_move {}",
                    self.bytes_moved, self.bytes_must_move
                ));
            }
        }
        out
    }
}

/// A synthetic cluster: topology, placement and per-vShard load.
pub struct SyntheticCluster {
    pub topology: ClusterTopology,
    pub placement: PlacementTable,
    pub loads: Vec<VShardLoad>,
    pub replicas: usize,
}

impl SyntheticCluster {
    /// Builds the starting state of `config.scenario`.
    pub fn build(config: &HarnessConfig) -> Result<SyntheticCluster, HarnessError> {
        config.validate()?;
        let mut rng = Rng::new(config.seed);
        let joining_later = matches!(config.scenario, Scenario::NewNode);
        let holding_nodes = if matches!(config.scenario, Scenario::NewNode | Scenario::Drain) {
            config.nodes - 1
        } else {
            config.nodes
        };
        let replicas = config.replicas.min(holding_nodes);
        let mut topology = ClusterTopology::new();
        let initial = if joining_later {
            config.nodes - 1
        } else {
            config.nodes
        };
        for i in 0..initial {
            topology.add_node(node_info(i, config.cores))?;
        }
        let placement = PlacementTable::initial(&topology, config.vshards, replicas)?;
        match config.scenario {
            Scenario::NewNode => {
                topology.add_node(node_info(config.nodes - 1, config.cores))?;
            }
            Scenario::Drain => {
                topology.set_state(NodeId(config.nodes as u64 - 1), NodeState::Draining)?;
            }
            _ => {}
        }

        let mut ops: Vec<f64> = (0..config.vshards)
            .map(|_| 100.0 * (0.75 + 0.5 * rng.next_f64()))
            .collect();
        let bytes: Vec<u64> = (0..config.vshards)
            .map(|_| ((32u64 << 20) as f64 * (1.0 + 2.0 * rng.next_f64())) as u64)
            .collect();
        match config.scenario {
            Scenario::HotNode | Scenario::HotCore => {
                let node_wide = config.scenario == Scenario::HotNode;
                let factor = if node_wide { 4.0 } else { 8.0 };
                let hot_core = CoreAddress::new(NodeId(0), CoreId(0));
                for (vshard, entry) in placement.iter() {
                    let leader = entry.leader();
                    let hot = if node_wide {
                        leader.node == hot_core.node
                    } else {
                        leader == hot_core
                    };
                    if hot {
                        ops[vshard.0 as usize] *= factor;
                    }
                }
            }
            Scenario::Zipf => {
                let mut ranks: Vec<u32> = (1..=config.vshards).collect();
                rng.shuffle(&mut ranks);
                let total = 100.0 * f64::from(config.vshards);
                let weights: Vec<f64> = ranks
                    .iter()
                    .map(|&r| f64::from(r).powf(-config.zipf_exponent))
                    .collect();
                let sum: f64 = weights.iter().sum();
                for (v, w) in weights.iter().enumerate() {
                    ops[v] = total * w / sum;
                }
            }
            Scenario::NewNode | Scenario::Drain => {}
        }
        let loads = (0..config.vshards as usize)
            .map(|v| VShardLoad {
                vshard: VShardId(v as u32),
                bytes: bytes[v],
                writes_per_sec: 0.2 * ops[v],
                reads_per_sec: 0.8 * ops[v],
            })
            .collect();
        Ok(SyntheticCluster {
            topology,
            placement,
            loads,
            replicas,
        })
    }

    /// One metrics row per node, as nodes would report them.
    pub fn node_metrics(&self) -> Vec<LoadMetrics> {
        let mut rows: Vec<LoadMetrics> = self
            .topology
            .nodes()
            .map(|n| LoadMetrics::idle(n.node_id))
            .collect();
        let index = |id: NodeId| rows.binary_search_by(|r| r.node_id.cmp(&id)).ok();
        let mut updates: Vec<(usize, &VShardLoad, bool)> = Vec::new();
        for (vshard, entry) in self.placement.iter() {
            let load = &self.loads[vshard.0 as usize];
            for (i, p) in entry.addresses().enumerate() {
                if let Some(n) = index(p.node) {
                    updates.push((n, load, i == entry.leader));
                }
            }
        }
        for (n, load, leader) in updates {
            let row = &mut rows[n];
            row.bytes_stored += load.bytes;
            row.writes_per_sec += load.writes_per_sec;
            if leader {
                row.vshards_led += 1;
                row.reads_per_sec += load.reads_per_sec;
            }
            row.qps_recent = row.reads_per_sec + row.writes_per_sec;
            row.cpu_utilization = 0.5;
        }
        rows
    }

    /// Bytes stored by all replicas.
    pub fn bytes_stored(&self) -> u64 {
        self.placement
            .iter()
            .map(|(v, e)| self.loads[v.0 as usize].bytes * e.replicas.len() as u64)
            .sum()
    }

    fn model(&self, planner: &PlannerConfig) -> LoadModel<'_> {
        LoadModel::build(
            &self.topology,
            &self.placement,
            &self.loads,
            &planner.weights,
            |_| true,
        )
    }

    fn apply(&mut self, planned: &PlannedMove) -> Result<(), HarnessError> {
        let result = match planned.kind {
            MoveKind::LeaderTransfer => self
                .placement
                .transfer_leader(planned.vshard, planned.target),
            MoveKind::ReplicaMove => {
                self.placement
                    .move_replica(planned.vshard, planned.source, planned.target)
            }
        };
        result.map(|_| ()).map_err(|error| HarnessError::Apply {
            planned: planned.clone(),
            error,
        })
    }
}

fn node_info(i: usize, cores: u16) -> NodeInfo {
    NodeInfo {
        node_id: NodeId(i as u64),
        addr: format!("127.0.0.1:{}", 7000 + 100 * i),
        cores,
        state: NodeState::Active,
    }
}

/// Per-vShard history used to count reversed and repeated moves.
#[derive(Default)]
struct MoveHistory {
    /// Places each vShard's replicas or leadership left: (kind, where).
    departed: HashMap<VShardId, Vec<(MoveKind, CoreAddress)>>,
    replica_moves: HashMap<VShardId, usize>,
    reversed: usize,
    /// Replica moves between the cores of one node, and their bytes.
    core_moves: usize,
    core_bytes: u64,
}

impl MoveHistory {
    fn record(&mut self, planned: &PlannedMove, source_led: bool) {
        let departed = self.departed.entry(planned.vshard).or_default();
        let same_node = planned.source.node == planned.target.node;
        let reversed = departed.iter().any(|(kind, p)| match (planned.kind, kind) {
            (MoveKind::LeaderTransfer, MoveKind::LeaderTransfer) => p.node == planned.target.node,
            (MoveKind::ReplicaMove, MoveKind::ReplicaMove) if same_node => *p == planned.target,
            (MoveKind::ReplicaMove, MoveKind::ReplicaMove) => p.node == planned.target.node,
            _ => false,
        });
        self.reversed += usize::from(reversed);
        departed.push((planned.kind, planned.source));
        if planned.kind == MoveKind::ReplicaMove {
            if source_led {
                // Leadership left the source node together with the replica.
                departed.push((MoveKind::LeaderTransfer, planned.source));
            }
            *self.replica_moves.entry(planned.vshard).or_default() += 1;
            if same_node {
                self.core_moves += 1;
                self.core_bytes += planned.bytes;
            }
        }
    }
}

/// A replica move in flight.
struct InFlight {
    source: NodeId,
    target: NodeId,
    ends: Time,
}

/// Runs the harness. `clock` returns a monotonic elapsed time and is used only to time the
/// planner (`plan_us_*`); pass a constant to make the report fully deterministic.
pub fn run(
    config: &HarnessConfig,
    clock: &mut dyn FnMut() -> Duration,
) -> Result<HarnessReport, HarnessError> {
    let mut cluster = SyntheticCluster::build(config)?;
    let mut planner = Planner::new(config.planner.clone())?;
    let initial = cluster.model(&config.planner);
    let (initial_max_over_mean, initial_core_max_over_mean) =
        (initial.node_max_over_mean(), initial.core_max_over_mean());
    let bytes_must_move = bytes_must_move(config, &cluster);
    let bytes_stored = cluster.bytes_stored();
    let rate = config.move_rate_bytes_per_sec as f64;
    let mut history = MoveHistory::default();
    let mut rows = Vec::new();
    let mut in_flight: Vec<InFlight> = Vec::new();
    let (mut max_in_flight, mut max_transfers) = (0, 0);
    // When the last move started before convergence ends.
    let mut last_end = Time::ZERO;
    let mut converged_at = None;
    let (mut plan_us_max, mut plan_us_sum) = (0.0f64, 0.0f64);
    let mut moves_after_convergence = 0;
    let mut drain_blocked = 0;
    let mut sweep = 0;
    let mut next_periodic = Time::ZERO;
    loop {
        let done = match converged_at {
            Some(c) => sweep >= c + config.settle_sweeps,
            None => sweep >= config.max_sweeps,
        };
        if done {
            break;
        }
        // The next sweep: the interval's, or earlier the end of a replica move (a kick).
        let first_end = in_flight.iter().map(|m| m.ends).min();
        let (now, kicked) = match first_end {
            Some(end) if end <= next_periodic => (end, true),
            _ => (next_periodic, false),
        };
        in_flight.retain(|m| m.ends > now);
        next_periodic = now + config.interval;
        sweep += 1;

        let mut busy: std::collections::BTreeMap<NodeId, usize> = Default::default();
        for m in &in_flight {
            *busy.entry(m.source).or_default() += 1;
            if m.target != m.source {
                *busy.entry(m.target).or_default() += 1;
            }
        }
        let budget = MoveBudget {
            replica_moves: config.max_moves_in_flight.saturating_sub(in_flight.len()),
            leader_transfers: config.leader_transfers_per_sweep,
            replica_moves_per_node: config.max_moves_per_node,
            busy,
        };
        let metrics = cluster.node_metrics();
        let input = PlanInput {
            topology: &cluster.topology,
            placement: &cluster.placement,
            node_metrics: &metrics,
            vshard_loads: &cluster.loads,
        };
        let started = clock();
        let plan = planner.plan_within(now, &input, &budget)?;
        let plan_us = clock().saturating_sub(started).as_secs_f64() * 1e6;
        plan_us_max = plan_us_max.max(plan_us);
        plan_us_sum += plan_us;
        drain_blocked = plan.drain_blocked;
        for planned in &plan.moves {
            let source_led = cluster
                .placement
                .get(planned.vshard)
                .is_some_and(|e| e.leader() == planned.source);
            cluster.apply(planned)?;
            history.record(planned, source_led);
            let ends = match planned.kind {
                MoveKind::LeaderTransfer => now + config.leader_transfer_time,
                MoveKind::ReplicaMove => {
                    let ends = now + Duration::from_secs_f64(planned.bytes as f64 / rate);
                    in_flight.push(InFlight {
                        source: planned.source.node,
                        target: planned.target.node,
                        ends,
                    });
                    ends
                }
            };
            if converged_at.is_none() {
                last_end = last_end.max(ends);
            }
        }
        max_in_flight = max_in_flight.max(in_flight.len());
        if converged_at.is_some() {
            moves_after_convergence += plan.moves.len();
        }
        let leader_transfers = plan
            .moves
            .iter()
            .filter(|m| m.kind == MoveKind::LeaderTransfer)
            .count();
        max_transfers = max_transfers.max(leader_transfers);
        rows.push(SweepRow {
            sweep,
            at_seconds: now.saturating_since(Time::ZERO).as_secs_f64(),
            kicked,
            status: plan.status,
            moves: plan.moves.len(),
            leader_transfers,
            bytes_moved: plan.moves.iter().map(|m| m.bytes).sum(),
            in_flight: in_flight.len(),
            node_max_over_mean: plan.node_max_over_mean_after,
            core_max_over_mean: plan.core_max_over_mean_after,
            plan_us,
        });
        if converged_at.is_none() && plan.moves.is_empty() && in_flight.is_empty() {
            converged_at = Some(sweep);
        }
    }
    let settled = cluster.model(&config.planner);
    let counted: Vec<&SweepRow> = rows
        .iter()
        .take(converged_at.unwrap_or(rows.len()))
        .collect();
    let moves: usize = counted.iter().map(|r| r.moves).sum();
    let leader_transfers: usize = counted.iter().map(|r| r.leader_transfers).sum();
    let bytes_moved: u64 = counted.iter().map(|r| r.bytes_moved).sum();
    Ok(HarnessReport {
        scenario: config.scenario,
        nodes: config.nodes,
        cores: config.cores,
        vshards: config.vshards,
        replicas: cluster.replicas,
        seed: config.seed,
        interval_seconds: config.interval.as_secs_f64(),
        move_rate_bytes_per_sec: config.move_rate_bytes_per_sec,
        leader_transfer_seconds: config.leader_transfer_time.as_secs_f64(),
        move_limit_per_node: config.max_moves_per_node,
        move_limit_in_flight: config.max_moves_in_flight,
        leader_transfers_per_sweep: config.leader_transfers_per_sweep,
        converged: converged_at.is_some(),
        sweeps_to_converge: converged_at.unwrap_or(sweep),
        kicked_sweeps: counted.iter().filter(|r| r.kicked).count(),
        virtual_seconds_to_converge: last_end.saturating_since(Time::ZERO).as_secs_f64(),
        bandwidth_bound_seconds: bandwidth_bound_seconds(config, bytes_must_move),
        max_moves_in_flight: max_in_flight,
        max_leader_transfers_per_sweep: max_transfers,
        initial_max_over_mean,
        initial_core_max_over_mean,
        final_max_over_mean: settled.node_max_over_mean(),
        final_core_max_over_mean: settled.core_max_over_mean(),
        bound_max_over_mean: settled.node_bound(),
        core_bound_max_over_mean: settled.core_bound(),
        final_core_max_over_bound: settled.core_traffic_over_bound(),
        moves,
        leader_transfers,
        replica_moves: moves - leader_transfers,
        core_moves: history.core_moves,
        bytes_moved,
        core_bytes_moved: history.core_bytes,
        bytes_must_move,
        bytes_stored,
        bytes_moved_fraction: if bytes_stored == 0 {
            0.0
        } else {
            bytes_moved as f64 / bytes_stored as f64
        },
        max_replica_moves_of_one_vshard: history.replica_moves.values().copied().max().unwrap_or(0),
        reversed_moves: history.reversed,
        moves_after_convergence,
        drain_blocked,
        plan_us_max,
        plan_us_mean: if rows.is_empty() {
            0.0
        } else {
            plan_us_sum / rows.len() as f64
        },
        rows,
    })
}

/// The shortest time the bytes that must move can take under the move limits: every byte
/// of new-node and drain passes through one node, which takes part in at most
/// `max_moves_per_node` moves at once, and the cluster runs at most `max_moves_in_flight`
/// (each move holds a slot on two nodes).
fn bandwidth_bound_seconds(config: &HarnessConfig, bytes_must_move: u64) -> f64 {
    if bytes_must_move == 0 {
        return 0.0;
    }
    let cluster_slots = config
        .max_moves_in_flight
        .min((config.nodes * config.max_moves_per_node / 2).max(1));
    let slots = match config.scenario {
        Scenario::NewNode | Scenario::Drain => config.max_moves_per_node.min(cluster_slots),
        _ => cluster_slots,
    };
    bytes_must_move as f64 / (slots as f64 * config.move_rate_bytes_per_sec as f64)
}

/// Bytes that any correct plan must copy: the new node's fair share, or what the draining
/// node holds.
fn bytes_must_move(config: &HarnessConfig, cluster: &SyntheticCluster) -> u64 {
    let last = NodeId(config.nodes as u64 - 1);
    let mut on_last = 0u64;
    let mut total = 0u64;
    for (vshard, entry) in cluster.placement.iter() {
        let bytes = cluster.loads[vshard.0 as usize].bytes;
        total += bytes * entry.replicas.len() as u64;
        if entry.replica_on(last).is_some() {
            on_last += bytes;
        }
    }
    match config.scenario {
        Scenario::NewNode => total / config.nodes as u64,
        Scenario::Drain => on_last,
        _ => 0,
    }
}
