//! The load-based planner: given placement and load, which moves to make this sweep.
//!
//! # Contract (kept from the original NodeDB planner)
//! - Balancing starts when the node scores spread by more than `trigger_spread` of the mean
//!   (20 %), or when a node must be emptied, or the cores of a node spread by as much.
//!   Added here: it also starts when the hottest node exceeds the mean by `trigger_excess`
//!   (8 %) or a core exceeds the mean core by `core_trigger_excess` (12 %): in a large
//!   cluster one hot node barely moves the spread, and must not go unnoticed.
//! - An idle cluster plans nothing.
//! - The same input and planner state give the same output (no hashing order, no clock).
//!
//! # What is better than the original
//! - No fixed cap of 10 moves per sweep. Each kind of move has the budget that fits it
//!   (`MoveBudget`): replica moves fill the free move slots (per node and in flight), leader
//!   transfers get a per-sweep budget that grows with the cluster.
//! - Cost-aware: when load is the problem, what buys the most load per byte copied goes
//!   first. A leader transfer (no bytes) wins whenever it achieves at least
//!   `leader_transfer_preference` of the best replica move's improvement, and replica moves
//!   are ranked by improvement per byte, so hot but small vShards move before cold, large
//!   ones. A move whose kind has no budget left this sweep is not replaced by a costlier one:
//!   the sweep stops there and the next continues.
//! - Scores are recomputed after every planned move, so the tenth move sees the first nine.
//! - The vShard to move is chosen by its own load: the move that best closes the gap between
//!   the hottest node and a colder one, never "the lowest id".
//! - A target never already holds a replica of the vShard.
//! - `Draining` and `Decommissioned` nodes are emptied; `Joining` and non-reporting nodes
//!   receive nothing.
//! - Two levels: nodes first, then cores inside each node. A node-level move takes its
//!   replica from the hottest core that offers a near-best move and lands on the target
//!   node's coldest core, so node moves rarely unbalance cores.
//! - A *balancing run* starts with the first move and continues (across sweeps) until the
//!   spread is within `target_spread` (5 %), so it neither stops at the trigger nor flaps
//!   around it. It ends with the first sweep that its budget did not cut short.
//! - A vShard moved in a run stays where it was put until a new run starts, and at least
//!   for `cooldown`: no move is reversed and no data moves twice for the same imbalance. A
//!   new run starts only when the trigger fires among the vShards that are free to move,
//!   so the end of a run is a fixed point: the plan stays empty until the load changes.
//! - A node or core whose load is its heaviest vShard plus less than the target spread is
//!   left alone: the heaviest vShard cannot be split, and trimming dust around it would cost
//!   moves without lowering the maximum meaningfully. A node keeps its share of the bytes
//!   besides (`LoadModel::floor`): copying its data away would not relieve the traffic of a
//!   vShard heavier than a node's fair load.
//!
//! A move only happens if it strictly lowers the larger of the two scores it touches, so
//! every sweep reduces the sum of squared scores and planning terminates.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use serde::Serialize;
use thiserror::Error;
use tracing::warn;

use crate::balance::load::{LoadError, LoadMetrics, LoadWeights, VShardLoad};
use crate::balance::model::{CoreReplica, LeaderKey, LoadModel};
use crate::cluster::placement::PlacementTable;
use crate::cluster::topology::ClusterTopology;
use crate::constants::{
    REBALANCE_COOLDOWN, REBALANCE_CORE_MOVE_MIN_DENSITY, REBALANCE_CORE_TARGET_SPREAD,
    REBALANCE_CORE_TRIGGER_EXCESS, REBALANCE_IDLE_TRIGGER_SPREAD,
    REBALANCE_LEADER_TRANSFER_PREFERENCE, REBALANCE_LEADER_TRANSFERS_PER_NODE,
    REBALANCE_MAX_MOVES_IN_FLIGHT, REBALANCE_MAX_MOVES_PER_NODE, REBALANCE_MIN_IMPROVEMENT,
    REBALANCE_TARGET_SPREAD, REBALANCE_TRIGGER_EXCESS, REBALANCE_TRIGGER_SPREAD,
};
use crate::ids::{CoreAddress, CoreId, NodeId, VShardId};
use crate::time::Time;

/// Tunables of the planner; `Default` gives the documented defaults from `constants`.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct PlannerConfig {
    pub weights: LoadWeights,
    /// Start balancing when `max − min` of node scores exceeds this (fraction of the mean).
    pub trigger_spread: f64,
    /// ... or when the hottest node exceeds the mean by more than this.
    pub trigger_excess: f64,
    /// Once started, balance nodes until their spread is within this.
    pub target_spread: f64,
    /// Balance the cores of a node until their spread is within this.
    pub core_target_spread: f64,
    /// Start balancing cores when a core exceeds the mean core by more than this.
    pub core_trigger_excess: f64,
    /// A vShard whose replica moved stays put this long (and until a new run starts).
    pub cooldown: Duration,
    /// A vShard whose leadership was transferred stays put this long (and until a new run
    /// starts). Elections move leaders on their own — after a crash they gather on the
    /// surviving nodes — so a cluster must be able to move them back well before a
    /// replica's cooldown ends; nodes set it to a few sweep intervals.
    pub leader_cooldown: Duration,
    pub leader_transfer_preference: f64,
}

impl Default for PlannerConfig {
    fn default() -> Self {
        PlannerConfig {
            weights: LoadWeights::default(),
            trigger_spread: REBALANCE_TRIGGER_SPREAD,
            trigger_excess: REBALANCE_TRIGGER_EXCESS,
            target_spread: REBALANCE_TARGET_SPREAD,
            core_target_spread: REBALANCE_CORE_TARGET_SPREAD,
            core_trigger_excess: REBALANCE_CORE_TRIGGER_EXCESS,
            cooldown: REBALANCE_COOLDOWN,
            leader_cooldown: REBALANCE_COOLDOWN,
            leader_transfer_preference: REBALANCE_LEADER_TRANSFER_PREFERENCE,
        }
    }
}

/// When a vShard last had a replica moved to another node, a replica moved between the
/// cores of its node, and its leadership transferred.
#[derive(Clone, Copy, Debug, Default)]
struct LastMoved {
    replica: Option<Time>,
    core: Option<Time>,
    transfer: Option<Time>,
}

impl LastMoved {
    fn latest(&self) -> Option<Time> {
        self.replica.max(self.transfer)
    }

    fn record(&mut self, kind: MoveKind, within_node: bool, now: Time) {
        match kind {
            MoveKind::ReplicaMove if within_node => self.core = Some(now),
            MoveKind::ReplicaMove => self.replica = Some(now),
            MoveKind::LeaderTransfer => self.transfer = Some(now),
        }
    }

    /// Whether a move of `candidate` (`None`: a move between the cores of a node) must wait:
    /// the vShard moved since `run_started` (the current balancing run; `None` outside a
    /// run) or is within its hold. Within a run nothing it moved moves again: released at
    /// once, leaderships went back and forth between two nodes every few seconds under a
    /// steady load (`tests/sim_scenarios.rs`). A sweep outside a run sees every vShard free
    /// once its hold is over, like the rest of the run its first move starts: held until a
    /// later run had begun, the moves of a run that ended short of the target could never
    /// be corrected (two hot leaders moved onto one node by stale reports stayed there, the
    /// trigger firing every sweep; a run that transferred every vShard's leadership left no
    /// copy to start the next run with, and a joined node waited for ever). A core move
    /// waits only for replica moves of the vShard (to another node or core), and holds back
    /// replica moves only: where on its node a replica lives says nothing about which node
    /// should lead, so a leader transfer is not held by one (a core move of a hot leader
    /// would otherwise pin the leadership on its node for the whole cooldown).
    fn held(
        &self,
        candidate: Option<MoveKind>,
        run_started: Option<Time>,
        now: Time,
        config: &PlannerConfig,
    ) -> bool {
        let since_run = |at: Option<Time>| at.is_some_and(|t| run_started.is_some_and(|s| t >= s));
        let copied = self.replica.max(self.core);
        let cooling =
            |at: Option<Time>| at.is_some_and(|t| now.saturating_since(t) < config.cooldown);
        match candidate {
            Some(MoveKind::LeaderTransfer) => {
                since_run(self.latest()) || self.holds(MoveKind::LeaderTransfer, now, config)
            }
            Some(MoveKind::ReplicaMove) => {
                since_run(self.latest().max(self.core))
                    || cooling(self.core)
                    || self.holds(MoveKind::ReplicaMove, now, config)
            }
            None => since_run(copied) || cooling(copied),
        }
    }

    /// Whether a move of `candidate` must wait (`PlannerConfig::hold`).
    fn holds(&self, candidate: MoveKind, now: Time, config: &PlannerConfig) -> bool {
        [
            (self.replica, MoveKind::ReplicaMove),
            (self.transfer, MoveKind::LeaderTransfer),
        ]
        .into_iter()
        .any(|(at, kind)| {
            at.is_some_and(|t| now.saturating_since(t) < config.hold(kind, candidate))
        })
    }
}

impl PlannerConfig {
    /// How long a vShard last moved by `moved` is held back from a move of `candidate`:
    /// a replica move holds further replica moves for `cooldown`; anything else (a leader
    /// transfer after any move, any move after a transfer) waits `leader_cooldown`.
    pub fn hold(&self, moved: MoveKind, candidate: MoveKind) -> Duration {
        match (moved, candidate) {
            (MoveKind::ReplicaMove, MoveKind::ReplicaMove) => self.cooldown,
            _ => self.leader_cooldown,
        }
    }
}

/// Why the planner refused to plan.
#[derive(Debug, Error, PartialEq)]
pub enum PlanError {
    /// A load report is unusable (NaN, negative, duplicate, unknown vShard).
    #[error(transparent)]
    Load(#[from] LoadError),
    /// A planner setting is out of range.
    #[error("invalid planner config: {0}")]
    InvalidConfig(&'static str),
}

/// What a move does.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum MoveKind {
    /// Raft leader transfer to an existing replica: no data is copied.
    LeaderTransfer,
    /// Add a replica on the target, catch it up, remove the source replica.
    ReplicaMove,
}

/// Why a move was planned.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum MoveReason {
    /// The source node is draining or decommissioned.
    Drain,
    /// Nodes are out of balance.
    NodeBalance,
    /// Cores of one node are out of balance.
    CoreBalance,
}

/// One move of a plan.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[must_use]
pub struct PlannedMove {
    pub vshard: VShardId,
    pub kind: MoveKind,
    pub source: CoreAddress,
    pub target: CoreAddress,
    pub reason: MoveReason,
    /// Bytes the move copies (zero for a leader transfer).
    pub bytes: u64,
}

/// The state a plan leaves balancing in.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum PlanStatus {
    /// No node reported metrics: nothing is known, nothing is moved.
    NoMetrics,
    /// No node can receive replicas.
    NoActiveNodes,
    /// There is no load to balance.
    Idle,
    /// The spread is below the trigger and no balancing is in progress.
    WithinTrigger,
    /// The plan (possibly empty) finishes balancing: nothing more to do after it.
    Converged,
    /// The plan spent (or was held back by) its move budget; the next sweep continues.
    BudgetSpent,
}

/// The planner's answer for one sweep.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Plan {
    pub moves: Vec<PlannedMove>,
    pub status: PlanStatus,
    /// Node-level max / mean before and after the planned moves.
    pub node_max_over_mean_before: f64,
    pub node_max_over_mean_after: f64,
    /// Core-level max / mean before and after the planned moves.
    pub core_max_over_mean_before: f64,
    pub core_max_over_mean_after: f64,
    /// Replicas on draining nodes that have no eligible target (e.g. every other node
    /// already holds that vShard).
    pub drain_blocked: usize,
    /// Metric rows ignored because they name a node outside the topology.
    pub ignored_metric_rows: usize,
}

impl Plan {
    fn empty(status: PlanStatus) -> Plan {
        Plan {
            moves: Vec::new(),
            status,
            node_max_over_mean_before: 0.0,
            node_max_over_mean_after: 0.0,
            core_max_over_mean_before: 0.0,
            core_max_over_mean_after: 0.0,
            drain_blocked: 0,
            ignored_metric_rows: 0,
        }
    }
}

/// Everything one sweep plans from.
#[derive(Clone, Copy, Debug)]
pub struct PlanInput<'a> {
    pub topology: &'a ClusterTopology,
    pub placement: &'a PlacementTable,
    /// One row per node that reported this interval (node aggregates; core rows ignored).
    pub node_metrics: &'a [LoadMetrics],
    /// Load per vShard; vShards without a sample count as idle.
    pub vshard_loads: &'a [VShardLoad],
}

/// How many moves of each kind may start this sweep: the rebalancer's limits minus what is
/// in flight.
#[derive(Clone, Debug, PartialEq)]
pub struct MoveBudget {
    /// Replica moves that may start: the free move slots of the cluster.
    pub replica_moves: usize,
    /// Leader transfers that may start this sweep.
    pub leader_transfers: usize,
    /// Replica moves a node may take part in at once, as source or target.
    pub replica_moves_per_node: usize,
    /// Replica moves each node takes part in now.
    pub busy: BTreeMap<NodeId, usize>,
}

/// Leader transfers one sweep may start in a cluster of `nodes` nodes.
pub fn leader_transfer_budget(nodes: usize) -> usize {
    REBALANCE_LEADER_TRANSFERS_PER_NODE.saturating_mul(nodes.max(1))
}

impl MoveBudget {
    /// No limit at all: the planner plans until balanced.
    pub fn unlimited() -> MoveBudget {
        MoveBudget {
            replica_moves: usize::MAX,
            leader_transfers: usize::MAX,
            replica_moves_per_node: usize::MAX,
            busy: BTreeMap::new(),
        }
    }

    /// The default limits with nothing in flight, for a cluster of `nodes` nodes.
    pub fn idle(nodes: usize) -> MoveBudget {
        MoveBudget {
            replica_moves: REBALANCE_MAX_MOVES_IN_FLIGHT,
            leader_transfers: leader_transfer_budget(nodes),
            replica_moves_per_node: REBALANCE_MAX_MOVES_PER_NODE,
            busy: BTreeMap::new(),
        }
    }

    /// Whether a move of `kind` may start.
    pub fn allows(&self, kind: MoveKind) -> bool {
        match kind {
            MoveKind::ReplicaMove => self.replica_moves > 0,
            MoveKind::LeaderTransfer => self.leader_transfers > 0,
        }
    }

    /// Nothing more may start.
    pub fn spent(&self) -> bool {
        self.replica_moves == 0 && self.leader_transfers == 0
    }

    /// Whether `node` may take part in one more replica move.
    pub fn node_free(&self, node: NodeId) -> bool {
        self.busy.get(&node).copied().unwrap_or(0) < self.replica_moves_per_node
    }

    fn take(&mut self, kind: MoveKind, source: NodeId, target: NodeId) {
        if kind == MoveKind::LeaderTransfer {
            self.leader_transfers = self.leader_transfers.saturating_sub(1);
        } else {
            self.replica_moves = self.replica_moves.saturating_sub(1);
            *self.busy.entry(source).or_default() += 1;
            if target != source {
                *self.busy.entry(target).or_default() += 1;
            }
        }
    }
}

/// The planner and the little state it keeps between sweeps (cooldowns, hysteresis).
#[derive(Clone, Debug)]
pub struct Planner {
    config: PlannerConfig,
    /// When each vShard moved recently, by vShard id: entries that can no longer hold a
    /// vShard back are dropped at the next sweep, so a sweep looks only at recent moves.
    last_moved: HashMap<u32, LastMoved>,
    /// A balancing run is in progress: continue until the target spread even if the
    /// spread is already below the trigger.
    run_active: bool,
    /// Start of the current (or, between runs, the last) balancing run: vShards moved since
    /// then stay put while the run lasts.
    run_started: Option<Time>,
}

impl Planner {
    pub fn new(config: PlannerConfig) -> Result<Planner, PlanError> {
        config.weights.validate()?;
        let fraction = |x: f64| x.is_finite() && x >= 0.0;
        let all = [
            config.trigger_spread,
            config.trigger_excess,
            config.target_spread,
            config.core_target_spread,
            config.core_trigger_excess,
        ];
        if !all.into_iter().all(fraction) {
            return Err(PlanError::InvalidConfig(
                "spreads must be finite and non-negative",
            ));
        }
        if config.target_spread > config.trigger_spread {
            return Err(PlanError::InvalidConfig(
                "target_spread must not exceed trigger_spread",
            ));
        }
        if !(0.0..=1.0).contains(&config.leader_transfer_preference) {
            return Err(PlanError::InvalidConfig(
                "leader_transfer_preference must be within 0..=1",
            ));
        }
        Ok(Planner {
            config,
            last_moved: HashMap::new(),
            run_active: false,
            run_started: None,
        })
    }

    pub fn config(&self) -> &PlannerConfig {
        &self.config
    }

    /// Records a move made elsewhere (another coordinator's, an operator's) at `now`: the
    /// vShard is held back like one this planner moved.
    pub fn note_moved(&mut self, vshard: VShardId, kind: MoveKind, now: Time) {
        self.last_moved
            .entry(vshard.0)
            .or_default()
            .record(kind, false, now);
    }

    /// Records a replica move between two cores of one node made elsewhere at `now`.
    pub fn note_core_moved(&mut self, vshard: VShardId, now: Time) {
        self.last_moved
            .entry(vshard.0)
            .or_default()
            .record(MoveKind::ReplicaMove, true, now);
    }

    /// Drops what can no longer hold a vShard back: every move it records is older than
    /// the longest hold and than the current run (runs only start later).
    fn forget_settled(&mut self, now: Time) {
        let longest = self.config.cooldown.max(self.config.leader_cooldown);
        let run_started = self.run_started;
        let gone = |at: Option<Time>| {
            at.is_none_or(|t| {
                now.saturating_since(t) >= longest && run_started.is_none_or(|s| t < s)
            })
        };
        self.last_moved
            .retain(|_, m| !(gone(m.replica) && gone(m.core) && gone(m.transfer)));
    }

    /// Whether a balancing run is in progress.
    pub fn is_balancing(&self) -> bool {
        self.run_active
    }

    /// Plans the moves of one sweep at time `now`, with the default limits and nothing in
    /// flight (`MoveBudget::idle`). Planned moves start their vShard's cooldown: the caller
    /// dispatches every move it is given.
    pub fn plan(&mut self, now: Time, input: &PlanInput<'_>) -> Result<Plan, PlanError> {
        self.plan_within(now, input, &MoveBudget::idle(input.topology.len()))
    }

    /// Like [`Planner::plan`], starting no more moves than `budget` allows. A sweep the
    /// budget cut short keeps its balancing run going.
    pub fn plan_within(
        &mut self,
        now: Time,
        input: &PlanInput<'_>,
        budget: &MoveBudget,
    ) -> Result<Plan, PlanError> {
        let (reporting, ignored_metric_rows) = validate_metrics(input)?;
        if reporting.is_empty() {
            return Ok(Plan::empty(PlanStatus::NoMetrics));
        }
        let loads = validate_vshard_loads(input)?;
        let model = LoadModel::build(
            input.topology,
            input.placement,
            &loads,
            &self.config.weights,
            |node| reporting.binary_search(&node).is_ok(),
        );
        let mut plan = Plan::empty(PlanStatus::Converged);
        plan.ignored_metric_rows = ignored_metric_rows;
        if !model.nodes.iter().any(|n| n.eligible) {
            plan.status = PlanStatus::NoActiveNodes;
            return Ok(plan);
        }
        if model.scale.is_none() {
            plan.status = PlanStatus::Idle;
            return Ok(plan);
        }
        self.forget_settled(now);
        plan.node_max_over_mean_before = model.node_max_over_mean();
        plan.core_max_over_mean_before = model.core_max_over_mean();

        let drain_only = model.drain_only;
        let was_balancing = self.run_active;
        let mut sweep = Sweep::new(self, input.placement, model, now, budget.clone());
        // Every vShard moves at most once a sweep and every move lowers the sum of squared
        // scores, so this ends even with an unlimited budget.
        while !sweep.budget.spent() {
            let found = sweep.next_forced_move()
                || (!drain_only && (sweep.next_node_move() || sweep.next_core_move()));
            if !found {
                break;
            }
        }
        let capped = sweep.budget_blocked.get() || sweep.budget.spent();
        plan.drain_blocked = sweep.drain_blocked;
        plan.node_max_over_mean_after = sweep.model.node_max_over_mean();
        plan.core_max_over_mean_after = sweep.model.core_max_over_mean();
        let run_started = sweep.run_started;
        plan.moves = sweep.moves;
        plan.status = match (capped, was_balancing || !plan.moves.is_empty()) {
            (true, _) => PlanStatus::BudgetSpent,
            (false, true) => PlanStatus::Converged,
            (false, false) => PlanStatus::WithinTrigger,
        };
        for m in &plan.moves {
            let within_node = m.source.node == m.target.node;
            self.last_moved
                .entry(m.vshard.0)
                .or_default()
                .record(m.kind, within_node, now);
        }
        self.run_active = capped;
        self.run_started = run_started;
        Ok(plan)
    }
}

/// Node ids that reported (sorted), and how many rows named unknown nodes.
fn validate_metrics(input: &PlanInput<'_>) -> Result<(Vec<NodeId>, usize), PlanError> {
    let mut reporting = Vec::with_capacity(input.node_metrics.len());
    let mut ignored = 0;
    for row in input.node_metrics.iter().filter(|m| m.core.is_none()) {
        row.validate()?;
        if input.topology.node(row.node_id).is_none() {
            warn!(node = %row.node_id, "ignoring load metrics from a node outside the topology");
            ignored += 1;
            continue;
        }
        reporting.push(row.node_id);
    }
    reporting.sort_unstable();
    if let Some(w) = reporting.windows(2).find(|w| w[0] == w[1]) {
        return Err(LoadError::DuplicateNodeMetrics(w[0]).into());
    }
    Ok((reporting, ignored))
}

/// Per-vShard loads indexed by vShard id, idle where no sample was given. Samples that
/// already are one per vShard in id order are used as they are.
fn validate_vshard_loads<'a>(
    input: &PlanInput<'a>,
) -> Result<std::borrow::Cow<'a, [VShardLoad]>, PlanError> {
    let count = input.placement.vshard_count();
    let samples = input.vshard_loads;
    if samples.len() == count as usize {
        // One pass without branches (a sweep reads every sample): in order (then used
        // as they are), and valid; the first invalid one is looked for only if any is.
        let (in_order, valid) =
            samples
                .iter()
                .enumerate()
                .fold((true, true), |(in_order, valid), (i, sample)| {
                    (
                        in_order & (sample.vshard.0 as usize == i),
                        valid & sample.is_valid(),
                    )
                });
        if !valid {
            samples.iter().try_for_each(VShardLoad::validate)?;
        }
        if in_order {
            return Ok(std::borrow::Cow::Borrowed(samples));
        }
    }
    let mut loads: Vec<VShardLoad> = (0..count)
        .map(|v| VShardLoad {
            vshard: VShardId(v),
            bytes: 0,
            writes_per_sec: 0.0,
            reads_per_sec: 0.0,
        })
        .collect();
    let mut seen = vec![false; count as usize];
    for sample in input.vshard_loads {
        sample.validate()?;
        let v = sample.vshard.0 as usize;
        if v >= loads.len() {
            return Err(LoadError::UnknownVShard(sample.vshard).into());
        }
        if std::mem::replace(&mut seen[v], true) {
            return Err(LoadError::DuplicateVShardLoad(sample.vshard).into());
        }
        loads[v] = *sample;
    }
    Ok(std::borrow::Cow::Owned(loads))
}

/// Sets, for every vShard, whether a replica move, a leader transfer and a move between
/// cores must wait, in that order: all three while a replica move of it is under way, else
/// as `LastMoved::held` says.
fn settle(
    last_moved: &HashMap<u32, LastMoved>,
    count: usize,
    moving: &[VShardId],
    run_started: Option<Time>,
    now: Time,
    config: &PlannerConfig,
    [replica, leader, core]: [&mut Vec<bool>; 3],
) {
    for held in [&mut *replica, &mut *leader, &mut *core] {
        held.clear();
        held.resize(count, false);
    }
    for (&v, moved) in last_moved {
        let v = v as usize;
        if v >= count {
            continue;
        }
        let (replica_kind, leader_kind) =
            (Some(MoveKind::ReplicaMove), Some(MoveKind::LeaderTransfer));
        replica[v] = moved.held(replica_kind, run_started, now, config);
        leader[v] = moved.held(leader_kind, run_started, now, config);
        core[v] = moved.held(None, run_started, now, config);
    }
    for v in moving {
        let v = v.0 as usize;
        (replica[v], leader[v], core[v]) = (true, true, true);
    }
}

/// A candidate move with the improvement it brings.
#[derive(Clone, Copy, Debug)]
struct Candidate {
    vshard: VShardId,
    kind: MoveKind,
    source: CoreAddress,
    target: CoreAddress,
    units: f64,
    improvement: f64,
    /// What ranks candidates of one kind: the improvement for a leader transfer, the
    /// improvement per byte copied for a replica move.
    value: f64,
}

/// What a replica move of `bytes` is ranked by: improvement per byte copied (an empty
/// vShard counts as one byte).
fn per_byte(improvement: f64, bytes: u64) -> f64 {
    improvement / (bytes as f64).max(1.0)
}

/// Whether a candidate worth `value` (and improving by `improvement`) beats `slot`.
fn beats(slot: &Option<Candidate>, improvement: f64, value: f64) -> bool {
    improvement > REBALANCE_MIN_IMPROVEMENT && slot.is_none_or(|b| value > b.value * (1.0 + 1e-12))
}

/// A core's replicas by units per byte copied, densest first (ties by vShard), put in order
/// a prefix at a time: a scan stops at the first replica whose density cannot win, so most
/// of a list is never sorted.
#[derive(Debug, Default)]
struct DensityOrder {
    /// Per replica: its density's bits inverted (the density is never negative, so integer
    /// order is densest first), then its vShard, then its leader flag.
    keys: Vec<u128>,
    /// `keys[..sorted]` are in order, and no key after them is smaller.
    sorted: usize,
}

impl DensityOrder {
    /// The first prefix put in order; each later one is as long as all before it.
    const FIRST_PREFIX: usize = 16;

    fn new(replicas: impl Iterator<Item = (f64, CoreReplica)>) -> DensityOrder {
        let keys = replicas
            .map(|(density, r)| {
                let density = u64::MAX - density.max(0.0).to_bits();
                u128::from(density) << 64 | u128::from(r.vshard().0) << 1 | u128::from(r.leader())
            })
            .collect();
        DensityOrder { keys, sorted: 0 }
    }

    fn get(&mut self, i: usize) -> Option<(f64, CoreReplica)> {
        while i >= self.sorted && self.sorted < self.keys.len() {
            let rest = &mut self.keys[self.sorted..];
            let prefix = self.sorted.max(Self::FIRST_PREFIX).min(rest.len());
            if prefix < rest.len() {
                rest.select_nth_unstable(prefix - 1);
            }
            rest[..prefix].sort_unstable();
            self.sorted += prefix;
        }
        self.keys.get(i).map(|&key| {
            let density = f64::from_bits(u64::MAX - (key >> 64) as u64);
            let vshard = VShardId((key as u64 >> 1) as u32);
            (density, CoreReplica::new(vshard, key & 1 == 1))
        })
    }
}

/// The heaviest unmoved replicas of a core, first those the model build kept
/// (`TopReplicas`), then those `Sweep::refresh_heaviest`'s walk keeps: the values of
/// unmoved replicas never change within a sweep and only leave, so as long as one kept
/// replica has not moved, the heaviest kept one is the heaviest of all.
#[derive(Debug, Default)]
struct HeaviestKept {
    units: Heaviest,
    traffic: Heaviest,
}

/// Up to `Heaviest::KEPT` values with their vShards, lightest first.
#[derive(Debug, Default)]
struct Heaviest(Vec<(f64, VShardId)>);

impl Heaviest {
    const KEPT: usize = 8;

    fn offer(&mut self, value: f64, vshard: VShardId) {
        let list = &mut self.0;
        if list.len() == Self::KEPT {
            if value <= list[0].0 {
                return;
            }
            list.remove(0);
        }
        let at = list.partition_point(|&(kept, _)| kept < value);
        list.insert(at, (value, vshard));
    }

    /// The heaviest value whose vShard has not moved, dropping those that have; None once
    /// every kept one has.
    fn top(&mut self, moved: &[bool]) -> Option<f64> {
        while let Some(&(value, vshard)) = self.0.last() {
            if !moved[vshard.0 as usize] {
                return Some(value);
            }
            self.0.pop();
        }
        None
    }
}

/// Working state of one sweep.
struct Sweep<'a> {
    config: &'a PlannerConfig,
    run_active: bool,
    /// Start of the current or last run.
    run_started: Option<Time>,
    placement: &'a PlacementTable,
    model: LoadModel<'a>,
    now: Time,
    /// Per core (model index) of a node being emptied: how far the drain went through its
    /// replicas (`Sweep::next_forced_move`).
    drain_next: Vec<usize>,
    /// Units of the heaviest replica on each core (model core index).
    core_heaviest: Vec<f64>,
    /// Traffic of the heaviest replica on each core, in `core_traffic` units.
    core_heaviest_traffic: Vec<f64>,
    /// vShards already moved in this sweep: every scan skips them (the model's lists and
    /// scores of their replicas are those of the sweep's start).
    moved: Vec<bool>,
    /// vShards that balancing may not move: cooling down, or moved in the current (or last)
    /// run. Drain ignores it.
    settled: Vec<bool>,
    /// Likewise for a leader transfer, which a replica's cooldown does not hold back.
    settled_leader: Vec<bool>,
    /// Likewise for a move between the cores of a node, which only a replica move of the
    /// same vShard holds back: a leader transfer elsewhere says nothing about its core.
    settled_core: Vec<bool>,
    moves: Vec<PlannedMove>,
    drain_blocked: usize,
    /// Nodes (by model index) with no improving move since the last applied move.
    node_stuck: Vec<bool>,
    core_stuck: Vec<bool>,
    budget: MoveBudget,
    /// A move was passed over for want of budget: the run is not over.
    budget_blocked: std::cell::Cell<bool>,
    /// Traffic (`core_traffic` units) over bytes, of all followers and of all leaders.
    mean_traffic_per_byte: [f64; 2],
    /// An idle cluster: the scores count replicas and leaderships (`ScoreScale`).
    counts_only: bool,
    /// Per core (model index), once indexed: the leaders it holds that have not moved in
    /// this sweep, by leadership units (`Sweep::leaders_by_units`).
    leaders_by_units: Vec<std::cell::OnceCell<Vec<LeaderKey>>>,
    /// Per core (model index), once refreshed: its heaviest unmoved replicas.
    heaviest_kept: Vec<Option<HeaviestKept>>,
    /// Per core (model index), once scanned for a replica move: the replicas it held at the
    /// sweep's start, densest first (`Sweep::densest`).
    replicas_by_density: Vec<std::cell::RefCell<Option<DensityOrder>>>,
    /// Eligible nodes by score, as last sorted (`Sweep::eligible_coldest_first`).
    coldest_first: std::cell::RefCell<Vec<usize>>,
    /// Per node (model index), once looked at: `Sweep::hosted_on`.
    hosted_on: Vec<std::cell::OnceCell<Vec<bool>>>,
}

impl<'a> Sweep<'a> {
    fn new(
        planner: &'a Planner,
        placement: &'a PlacementTable,
        model: LoadModel<'a>,
        now: Time,
        budget: MoveBudget,
    ) -> Sweep<'a> {
        let mut model = model;
        let cores = model.core_scores.len();
        let core_heaviest = std::mem::take(&mut model.core_heaviest);
        let core_heaviest_traffic = std::mem::take(&mut model.core_heaviest_traffic);
        let (mut settled, mut settled_leader, mut settled_core) =
            (Vec::new(), Vec::new(), Vec::new());
        settle(
            &planner.last_moved,
            placement.vshard_count() as usize,
            &model.moving,
            planner.run_started.filter(|_| planner.run_active),
            now,
            &planner.config,
            [&mut settled, &mut settled_leader, &mut settled_core],
        );
        let nodes = model.nodes.len();
        Sweep {
            mean_traffic_per_byte: model.mean_traffic_per_byte,
            counts_only: model.scale.is_some_and(|s| s.counts_only()),
            leaders_by_units: vec![std::cell::OnceCell::new(); cores],
            replicas_by_density: (0..cores).map(|_| Default::default()).collect(),
            heaviest_kept: model
                .core_top
                .iter()
                .map(|[units, traffic]| {
                    Some(HeaviestKept {
                        units: Heaviest(units.iter().collect()),
                        traffic: Heaviest(traffic.iter().collect()),
                    })
                })
                .collect(),
            hosted_on: vec![std::cell::OnceCell::new(); nodes],
            coldest_first: Default::default(),
            config: &planner.config,
            run_active: planner.run_active,
            run_started: planner.run_started,
            placement,
            now,
            drain_next: vec![0; cores],
            core_heaviest,
            core_heaviest_traffic,
            moved: vec![false; placement.vshard_count() as usize],
            settled,
            settled_leader,
            settled_core,
            moves: Vec::new(),
            drain_blocked: 0,
            node_stuck: vec![false; nodes],
            core_stuck: vec![false; nodes],
            model,
            budget,
            budget_blocked: std::cell::Cell::new(false),
        }
    }

    /// The model index of `node` if it may receive load.
    fn eligible_index(&self, node: NodeId) -> Option<usize> {
        self.model
            .node_index(node)
            .filter(|&t| self.model.nodes[t].eligible)
    }

    /// Whether `vshard`'s replica may not move to another core of its node now.
    fn cooling_core(&self, vshard: VShardId) -> bool {
        let v = vshard.0 as usize;
        self.moved[v] || self.settled_core[v]
    }

    /// Whether `vshard` may not be moved by a move of `kind` now.
    fn cooling(&self, vshard: VShardId, kind: MoveKind) -> bool {
        let v = vshard.0 as usize;
        let held = match kind {
            MoveKind::ReplicaMove => &self.settled,
            MoveKind::LeaderTransfer => &self.settled_leader,
        };
        self.moved[v] || held[v]
    }

    /// Whether node `h` is hot enough for a node move, given the coldest eligible score.
    /// Until a run is in progress: the trigger spread, or a score above the excess trigger
    /// (the mean of eligible nodes is 1.0, so `coldest <= 1.0`). Then: the target spread.
    fn node_qualifies(&self, score: f64, coldest: f64) -> bool {
        if self.run_active {
            score - coldest > self.config.target_spread
        } else if self.counts_only {
            score - coldest > REBALANCE_IDLE_TRIGGER_SPREAD
        } else {
            score - coldest > self.config.trigger_spread || score > 1.0 + self.config.trigger_excess
        }
    }

    /// Whether the cores of node `n` call for a core move: its hottest core exceeds the
    /// node's mean core by the excess trigger, then in a run by the core target. A cold core
    /// harms nothing, so only the hottest one counts: filling cold cores to narrow the
    /// spread would copy data for no gain in what the node can serve.
    fn cores_qualify(&self, n: usize) -> bool {
        let limit = if self.run_active {
            self.config.core_target_spread
        } else {
            self.config.core_trigger_excess
        };
        let (hottest, sum) = self
            .model
            .core_traffic_of(n)
            .fold((0.0, 0.0), |(max, sum): (f64, f64), t| {
                (max.max(t), sum + t)
            });
        let mean = sum / f64::from(self.model.nodes[n].cores);
        hottest > mean * (1.0 + limit)
    }

    /// The traffic of node `n`'s cores.
    fn traffic_of(&self, n: usize) -> Vec<f64> {
        self.model.core_traffic_of(n).collect()
    }

    /// Recomputes the heaviest replica of a core after one left it: from the heaviest few
    /// its last walk kept, or by a walk over its replicas when every kept one has moved.
    fn refresh_heaviest(&mut self, core: usize) {
        let moved = &self.moved;
        if let Some(kept) = &mut self.heaviest_kept[core]
            && let (Some(units), Some(traffic)) = (kept.units.top(moved), kept.traffic.top(moved))
        {
            self.core_heaviest[core] = units;
            self.core_heaviest_traffic[core] = traffic;
            return;
        }
        let model = &self.model;
        let mut kept = HeaviestKept::default();
        for &r in model.replicas_on(core) {
            if !moved[r.vshard().0 as usize] {
                let units = model.units(r);
                kept.units.offer(units, r.vshard());
                kept.traffic
                    .offer(model.replica_traffic(r.vshard(), units), r.vshard());
            }
        }
        self.core_heaviest[core] = kept.units.top(moved).unwrap_or(0.0);
        self.core_heaviest_traffic[core] = kept.traffic.top(moved).unwrap_or(0.0);
        self.heaviest_kept[core] = Some(kept);
    }

    fn holds(&self, vshard: VShardId, node: NodeId) -> bool {
        self.placement
            .get(vshard)
            .is_some_and(|e| e.replica_on(node).is_some())
    }

    fn core_spread(&self, n: usize) -> f64 {
        let cores = self.traffic_of(n);
        let hi = cores.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        let lo = cores.iter().copied().fold(f64::INFINITY, f64::min);
        hi - lo
    }

    /// The core of node `n` with the least traffic, as a placement.
    fn coldest_core(&self, n: usize) -> CoreAddress {
        let cores = self.traffic_of(n);
        let mut best = 0;
        for (i, s) in cores.iter().enumerate() {
            if *s < cores[best] {
                best = i;
            }
        }
        CoreAddress::new(self.model.nodes[n].id, CoreId(best as u16))
    }

    /// Eligible nodes ordered coldest first (ties by id). The order is kept between calls
    /// and sorted again: a move changes two nodes' scores, so the kept order is nearly
    /// sorted and the (adaptive, stable) sort costs about one comparison a node. The key
    /// is a total order, so the result is that of a sort from scratch.
    fn eligible_coldest_first(&self) -> Vec<usize> {
        let mut order = self.coldest_first.borrow_mut();
        if order.is_empty() {
            order.extend((0..self.model.nodes.len()).filter(|&n| self.model.nodes[n].eligible));
        }
        let scores = &self.model.node_scores;
        order.sort_by(|&a, &b| scores[a].total_cmp(&scores[b]).then(a.cmp(&b)));
        order.clone()
    }

    fn apply(&mut self, c: Candidate, reason: MoveReason) {
        let v = c.vshard.0 as usize;
        let bytes_units = match c.kind {
            MoveKind::LeaderTransfer => 0.0,
            MoveKind::ReplicaMove => self.model.bytes_units(c.vshard),
        };
        self.model.shift(c.source, c.target, c.units, bytes_units);
        self.moved[v] = true;
        self.budget.take(c.kind, c.source.node, c.target.node);
        let source_core = self
            .model
            .core_index(c.source)
            .expect("moves start at known placements");
        let (follower_units, leader_units) = (
            self.model.follower_units(c.vshard),
            self.model.leader_units(c.vshard),
        );
        // A moved vShard is skipped by every later scan: its leader key (on the source
        // core, when the move takes a leader) leaves the index so that scans do not walk
        // past it again and again.
        if let Some(leaders) = self.leaders_by_units[source_core].get_mut()
            && let Ok(i) = leaders.binary_search(&LeaderKey::new(leader_units, c.vshard))
        {
            leaders.remove(i);
        }
        let bytes = match c.kind {
            MoveKind::LeaderTransfer => 0,
            MoveKind::ReplicaMove => self.model.bytes(c.vshard),
        };
        // The heaviest replicas count only what may still move this sweep: the moved one
        // leaves both cores' figures, which change only if it was the source's heaviest.
        let old_units = match c.kind {
            MoveKind::LeaderTransfer => follower_units + leader_units,
            MoveKind::ReplicaMove => c.units,
        };
        let old_traffic = self.model.replica_traffic(c.vshard, old_units);
        if old_units >= self.core_heaviest[source_core] - 1e-12
            || old_traffic >= self.core_heaviest_traffic[source_core] - 1e-12
        {
            self.refresh_heaviest(source_core);
        }
        self.moves.push(PlannedMove {
            vshard: c.vshard,
            kind: c.kind,
            source: c.source,
            target: c.target,
            reason,
            bytes,
        });
        self.node_stuck.iter_mut().for_each(|s| *s = false);
        self.core_stuck.iter_mut().for_each(|s| *s = false);
        // In an idle cluster a drain does not start a balancing run: its targets, coldest
        // first, already even the counts.
        let starts_run = !(self.counts_only && reason == MoveReason::Drain);
        if !self.run_active && starts_run {
            // A new run. The sweep already saw what the last run moved as free (`settle`
            // outside a run), so nothing to release here.
            self.run_active = true;
            self.run_started = Some(self.now);
        }
    }

    /// Moves one replica off a draining or decommissioned node, to the coldest eligible
    /// node without a replica of that vShard. Ignores cooldown: a drain must finish.
    fn next_forced_move(&mut self) -> bool {
        if !self.model.nodes.iter().any(|n| n.state.must_be_emptied()) {
            return false;
        }
        let order = self.eligible_coldest_first();
        for n in 0..self.model.nodes.len() {
            let node = &self.model.nodes[n];
            if !node.state.must_be_emptied() {
                continue;
            }
            let node_id = node.id;
            if !self.budget.node_free(node_id) || !self.budget.allows(MoveKind::ReplicaMove) {
                self.budget_blocked.set(true);
                continue;
            }
            // Each core's replicas in order, from where the last call stopped: what it
            // passed over stays out of reach for the rest of the sweep (moved, nowhere to
            // go, or every open node busy, and nodes only get busier within a sweep).
            for c in node.core_base..node.core_base + usize::from(node.cores) {
                let core = CoreId((c - node.core_base) as u16);
                while let Some(&replica) = self.model.replicas_on(c).get(self.drain_next[c]) {
                    self.drain_next[c] += 1;
                    // The placement table is stale for a vShard moved in this sweep: its
                    // drain waits for the next sweep.
                    if self.moved[replica.vshard().0 as usize] {
                        continue;
                    }
                    let open: Vec<usize> = order
                        .iter()
                        .copied()
                        .filter(|&t| !self.holds(replica.vshard(), self.model.nodes[t].id))
                        .collect();
                    if !open.is_empty()
                        && !open
                            .iter()
                            .any(|&t| self.budget.node_free(self.model.nodes[t].id))
                    {
                        // Somewhere to go, but not now: a later sweep takes it.
                        self.budget_blocked.set(true);
                        continue;
                    }
                    let Some(&t) = open
                        .iter()
                        .find(|&&t| self.budget.node_free(self.model.nodes[t].id))
                    else {
                        // Nowhere to go: count it.
                        self.drain_blocked += 1;
                        continue;
                    };
                    let candidate = Candidate {
                        vshard: replica.vshard(),
                        kind: MoveKind::ReplicaMove,
                        source: CoreAddress::new(node_id, core),
                        target: self.coldest_core(t),
                        units: self.model.units(replica),
                        improvement: 0.0,
                        value: 0.0,
                    };
                    self.apply(candidate, MoveReason::Drain);
                    return true;
                }
            }
        }
        false
    }

    /// Plans the best move off the hottest node that has one, if nodes spread too much.
    fn next_node_move(&mut self) -> bool {
        let order = self.eligible_coldest_first();
        let Some(&coldest) = order.first() else {
            return false;
        };
        let coldest_score = self.model.node_scores[coldest];
        for &h in order.iter().rev() {
            let score = self.model.node_scores[h];
            if !self.node_qualifies(score, coldest_score) {
                return false;
            }
            if self.node_stuck[h] {
                continue;
            }
            // Nothing but its heaviest vShard and its share of the bytes (plus dust) left on
            // it: nothing to gain here.
            let node = &self.model.nodes[h];
            let cores = node.core_base..node.core_base + usize::from(node.cores);
            let heaviest = self.core_heaviest[cores.clone()]
                .iter()
                .copied()
                .fold(0.0, f64::max);
            let heaviest_traffic = if self.model.traffic_scale > 0.0 {
                self.core_heaviest_traffic[cores]
                    .iter()
                    .copied()
                    .fold(0.0, f64::max)
                    / self.model.traffic_scale
            } else {
                0.0
            };
            let floor = self.model.floor(heaviest, heaviest_traffic, node.cores);
            if score <= floor + self.config.target_spread {
                self.node_stuck[h] = true;
                continue;
            }
            if !self.budget.node_free(self.model.nodes[h].id) {
                // Only leader transfers may leave it this sweep.
                self.budget_blocked.set(true);
            }
            // A leadership may land on a busy core only when nothing else relieves the node
            // (see `best_move_from`).
            let best = self.best_move_from(h, &order, false).or_else(|| {
                // Coarse moves, only while the spread is past its trigger (not down to the
                // run's target, nor for the excess trigger alone): with few heavy leaders
                // they would otherwise keep trading places around the target.
                let past_trigger = score - coldest_score > self.config.trigger_spread;
                past_trigger
                    .then(|| self.best_move_from(h, &order, true))
                    .flatten()
                    .filter(|c| c.improvement > self.config.trigger_spread / 2.0)
            });
            if best.is_none()
                && score - coldest_score > self.config.trigger_spread
                && self.budget.leader_transfers >= 2
                && let Some((there, back)) = self.best_swap(h)
            {
                self.apply(there, MoveReason::NodeBalance);
                self.apply(back, MoveReason::NodeBalance);
                return true;
            }
            if let Some(c) = best {
                if self.budget.allows(c.kind) {
                    self.apply(c, MoveReason::NodeBalance);
                    return true;
                }
                // Its best move has no budget left this sweep; a costlier kind does not
                // stand in for it. The next sweep continues.
                self.budget_blocked.set(true);
            }
            self.node_stuck[h] = true;
        }
        false
    }

    /// A swap of leaderships for node `h` when no single move relieves it: a heavy one from
    /// `h` to a node `t`, and a lighter one of `t` back to `h`, for vShards with a replica on
    /// every eligible node (transfers are the only way their load moves). With few heavy
    /// groups the greedy single moves stop short: two hot leaderships on one node, four
    /// cold ones on another, and either hot one alone would make the other node the
    /// hottest. Ranked by the drop of the larger of the two scores; at least half the
    /// trigger spread.
    fn best_swap(&self, h: usize) -> Option<(Candidate, Candidate)> {
        let eligible = self.model.nodes.iter().filter(|n| n.eligible).count();
        let node = &self.model.nodes[h];
        let (h_id, h_score, h_cores) = (node.id, self.model.node_scores[h], f64::from(node.cores));
        let leaders_of = |n: usize| {
            let node = &self.model.nodes[n];
            (node.core_base..node.core_base + usize::from(node.cores)).flat_map(move |c| {
                self.model
                    .replicas_on(c)
                    .iter()
                    .filter(|r| r.leader())
                    .map(move |r| {
                        let core = CoreId((c - node.core_base) as u16);
                        (CoreAddress::new(node.id, core), r.vshard())
                    })
            })
        };
        let everywhere = |v: VShardId| {
            self.placement
                .get(v)
                .filter(|e| e.replicas.len() >= eligible)
        };
        let mut best: Option<(f64, Candidate, Candidate)> = None;
        for (from, x) in leaders_of(h) {
            if self.cooling(x, MoveKind::LeaderTransfer) {
                continue;
            }
            let Some(ex) = everywhere(x) else { continue };
            let a = self.model.leader_units(x);
            for to in ex.addresses().filter(|p| p.node != h_id) {
                let Some(t) = self.eligible_index(to.node) else {
                    continue;
                };
                let (t_score, t_cores) = (
                    self.model.node_scores[t],
                    f64::from(self.model.nodes[t].cores),
                );
                for (y_at, y) in leaders_of(t) {
                    let b = self.model.leader_units(y);
                    if y == x || b >= a || self.cooling(y, MoveKind::LeaderTransfer) {
                        continue;
                    }
                    let Some(ey) = everywhere(y) else { continue };
                    let Some(back) = ey.addresses().find(|p| p.node == h_id) else {
                        continue;
                    };
                    let net = a - b;
                    let after = (h_score - net / h_cores).max(t_score + net / t_cores);
                    let improvement = h_score - after;
                    if improvement <= self.config.trigger_spread / 2.0
                        || best.as_ref().is_some_and(|(i, _, _)| improvement <= *i)
                    {
                        continue;
                    }
                    let transfer = |vshard, source, target, units| Candidate {
                        vshard,
                        kind: MoveKind::LeaderTransfer,
                        source,
                        target,
                        units,
                        improvement,
                        value: improvement,
                    };
                    best = Some((
                        improvement,
                        transfer(x, from, to, a),
                        transfer(y, y_at, back, b),
                    ));
                }
            }
        }
        best.map(|(_, there, back)| (there, back))
    }

    /// The leaders core `c` holds that have not moved in this sweep, by leadership units
    /// (ascending, ties by vShard): sorted on the first scan of the core; a core that
    /// `best_move_from` skips (its heaviest leader cannot beat what a hotter core found)
    /// is never sorted. A vShard moved later leaves the index (`apply`); one that
    /// gained leadership here in this sweep has moved, which every scan skips, so it need
    /// not join.
    fn leaders_by_units(&self, c: usize) -> &[LeaderKey] {
        self.leaders_by_units[c].get_or_init(|| {
            let all = self.model.leaders_on(c);
            let mut leaders = Vec::with_capacity(all.len());
            leaders.extend(all.iter().filter(|k| !self.moved[k.vshard().0 as usize]));
            leaders.sort_unstable();
            leaders
        })
    }

    /// At least the leadership units of core `c`'s heaviest unmoved leader: exact once its
    /// index is sorted, else the heaviest it held at the sweep's start.
    fn heaviest_leader_bound(&self, c: usize) -> f64 {
        match self.leaders_by_units[c].get() {
            Some(leaders) => leaders.last().map_or(0.0, |k| k.units()),
            None => self.model.core_heaviest_leader[c],
        }
    }

    /// The `i`th densest replica core `c` held when the sweep started, by units per byte
    /// copied (ties by vShard): what a copy of each can improve per byte is at most its
    /// density over its node's core count, which ends a scan early. A replica whose units
    /// changed since (a leadership moved) has moved in this sweep and is skipped anyway.
    fn densest(&self, c: usize, i: usize) -> Option<(f64, CoreReplica)> {
        let mut order = self.replicas_by_density[c].borrow_mut();
        order
            .get_or_insert_with(|| {
                DensityOrder::new(
                    self.model
                        .replicas_on(c)
                        .iter()
                        .filter(|r| !self.moved[r.vshard().0 as usize])
                        .map(|&r| {
                            let bytes = self.model.bytes(r.vshard()) as f64;
                            (self.model.units(r) / bytes.max(1.0), r)
                        }),
                )
            })
            .get(i)
    }

    /// Whether each vShard had a replica on node `n` when the sweep started (indexed by
    /// vShard; built on the first look). Exact for every vShard not moved in this sweep.
    fn hosted_on(&self, n: usize) -> &[bool] {
        self.hosted_on[n].get_or_init(|| {
            let node = &self.model.nodes[n];
            let mut on = vec![false; self.moved.len()];
            for list in (node.core_base..node.core_base + usize::from(node.cores))
                .map(|c| self.model.replicas_on(c))
            {
                for r in list {
                    on[r.vshard().0 as usize] = true;
                }
            }
            on
        })
    }

    /// The best move that lowers node `h`'s score: a leader transfer when it does at least
    /// `leader_transfer_preference` of the best replica move's good, else that replica move.
    ///
    /// Transfers are found through the node's leader index: a move's improvement is at most
    /// its improvement towards the coldest node, which rises with the units moved up to the
    /// point that evens the two nodes and falls after it, so the scan starts at that point
    /// and stops in each direction once the bound cannot beat the best found. Replica moves
    /// are scanned only when one could win: when no transfer reaches the preference share of
    /// the most any move could improve.
    fn best_move_from(
        &self,
        h: usize,
        coldest_first: &[usize],
        onto_busy_cores: bool,
    ) -> Option<Candidate> {
        let node = &self.model.nodes[h];
        let (h_id, h_score, h_cores) = (node.id, self.model.node_scores[h], f64::from(node.cores));
        // Improvement of moving `units` from h to node t: how much the larger of the two
        // scores drops. It only grows as t gets colder, so the coldest node gives an upper
        // bound that lets most candidates be skipped without looking at their placement.
        let gain = |t: usize, units: f64| {
            let t_cores = f64::from(self.model.nodes[t].cores);
            let after =
                (h_score - units / h_cores).max(self.model.node_scores[t] + units / t_cores);
            h_score - after
        };
        let coldest = coldest_first[0];
        let c_cores = f64::from(self.model.nodes[coldest].cores);
        // The units that even h and the coldest node, and the most any one move can improve
        // (no vShard on h carries more than its heaviest replica).
        let even = ((h_score - self.model.node_scores[coldest]) * h_cores * c_cores
            / (h_cores + c_cores))
            .max(0.0);
        let heaviest = self.core_heaviest[node.core_base..node.core_base + usize::from(node.cores)]
            .iter()
            .copied()
            .fold(0.0, f64::max);
        let most = gain(coldest, even.min(heaviest));
        // Hottest cores first: prefer taking the move from a hot core.
        let mut cores: Vec<usize> = (0..usize::from(node.cores)).collect();
        let scores = self.traffic_of(h);
        cores.sort_unstable_by(|&a, &b| scores[b].total_cmp(&scores[a]).then(a.cmp(&b)));
        // Most leaders of h have no replica on the coldest node: their bound is the next
        // coldest node's (h excluded), which spares most placement look-ups.
        let on_coldest = self.hosted_on(coldest);
        let next_coldest = coldest_first
            .iter()
            .copied()
            .find(|&t| t != coldest && t != h);
        let mut best_transfer_per_core: Vec<Option<Candidate>> = vec![None; cores.len()];
        let mut best_replica_per_core: Vec<Option<Candidate>> = vec![None; cores.len()];
        let core_limit = 1.0 + self.config.core_target_spread;
        let eligible_nodes = self.model.nodes.iter().filter(|n| n.eligible).count();
        // The best value a hotter core found: a cooler core's candidate matters only if it
        // beats that (`pick` takes the hottest core within 10 % of the best, so one that
        // does not exceed a hotter core's best is never picked, nor changes the best).
        let mut floor = 0.0f64;
        for (rank, &core) in cores.iter().enumerate() {
            if let Some(c) = rank.checked_sub(1).and_then(|r| best_transfer_per_core[r]) {
                floor = floor.max(c.value);
            }
            let source = CoreAddress::new(h_id, CoreId(core as u16));
            let slot = &mut best_transfer_per_core[rank];
            let c = node.core_base + core;
            // Two passes, each bounded by the coldest node its leaders could go to: those
            // without a replica on the coldest node (bounded by the next coldest), then
            // those with one.
            for (bound_node, on) in [(next_coldest, false), (Some(coldest), true)] {
                let Some(b) = bound_node else { continue };
                let b_cores = f64::from(self.model.nodes[b].cores);
                let even = ((h_score - self.model.node_scores[b]) * h_cores * b_cores
                    / (h_cores + b_cores))
                    .max(0.0);
                // The most any leader of this core could gain here: at the units that even
                // the two nodes, or at its heaviest leader's if all are lighter.
                let most_here = gain(b, even.min(self.heaviest_leader_bound(c)));
                if most_here <= floor || !beats(slot, most_here, most_here) {
                    continue;
                }
                let leaders = self.leaders_by_units(c);
                let start = leaders.partition_point(|k| k.units() < even);
                let (below, above) = leaders.split_at(start);
                for side in [
                    &mut below.iter().rev() as &mut dyn Iterator<Item = _>,
                    &mut above.iter(),
                ] {
                    for &key in side {
                        let (lead_units, vshard) = (key.units(), key.vshard());
                        let bound = gain(b, lead_units);
                        if bound <= floor || !beats(slot, bound, bound) {
                            break;
                        }
                        if on_coldest[vshard.0 as usize] != on
                            || self.cooling(vshard, MoveKind::LeaderTransfer)
                        {
                            continue;
                        }
                        if onto_busy_cores
                            && self.model.replicas_of(vshard).count() < eligible_nodes
                        {
                            continue;
                        }
                        for (target_core, _) in self.model.replicas_of(vshard) {
                            let t = self.model.node_of_core(target_core);
                            let target = &self.model.nodes[t];
                            if t == h || !target.eligible {
                                continue;
                            }
                            let p = CoreAddress::new(
                                target.id,
                                CoreId((target_core - target.core_base) as u16),
                            );
                            // Never create a core hot spot: the follower's core must end up
                            // within the core target of its node's mean core, of the mean core
                            // (a node with little traffic takes its first leaders anywhere), or
                            // of the leadership itself (a leader hotter than a mean core goes to
                            // a core with little else). Unless nothing else relieves the node
                            // (`onto_busy_cores`) and the vShard has a replica on every eligible
                            // node, so that a transfer is the only way its load can leave: then
                            // the node comes first, and the leadership goes to whichever core its
                            // follower is on. A 3-node cluster with 8 heavy groups is such a case:
                            // there is no core with little else. Only then, since the busy core
                            // would later want a copy between cores, and where a copy between
                            // nodes is possible it may cost less.
                            let lead_traffic = lead_units * self.model.traffic_scale;
                            let t_cores = f64::from(self.model.nodes[t].cores);
                            let t_mean = self.model.node_traffic_mean(t) + lead_traffic / t_cores;
                            let target_after = self.model.core_traffic(target_core) + lead_traffic;
                            if !onto_busy_cores
                                && target_after > t_mean.max(1.0).max(lead_traffic) * core_limit
                            {
                                continue;
                            }
                            let improvement = gain(t, lead_units);
                            if improvement > floor && beats(slot, improvement, improvement) {
                                *slot = Some(Candidate {
                                    vshard,
                                    kind: MoveKind::LeaderTransfer,
                                    source,
                                    target: p,
                                    units: lead_units,
                                    improvement,
                                    value: improvement,
                                });
                            }
                        }
                    }
                }
            }
        }
        let best_transfer = best_transfer_per_core
            .iter()
            .flatten()
            .map(|c| c.improvement)
            .fold(0.0, f64::max);
        let replicas_may_win = best_transfer < self.config.leader_transfer_preference * most;
        // Where data may go: a node at or below the mean with a free move slot (coldest
        // first). A copy onto a node above the mean shifts the imbalance rather than
        // removing it, and waiting for the cold node's move slot copies fewer bytes.
        let open: Vec<usize> = coldest_first
            .iter()
            .copied()
            .filter(|&t| {
                self.model.node_scores[t] <= 1.0 && self.budget.node_free(self.model.nodes[t].id)
            })
            .collect();
        let copies_now = self.budget.allows(MoveKind::ReplicaMove) && !open.is_empty();
        // The coldest node, the best place for a copy, busy with other moves.
        let coldest_busy = open.first() != Some(&coldest)
            && self.model.node_scores[coldest] <= 1.0
            && h != coldest;
        if replicas_may_win && (!copies_now || coldest_busy) {
            // A copy might do better once the moves in flight end: the run is not over.
            self.budget_blocked.set(true);
        }
        // What a copy onto any open node can improve, at most, for `units` moved: as if it
        // went to a node with the coldest open score and the most cores.
        let (open_coldest, open_cores) = open.iter().fold((f64::INFINITY, 0.0f64), |(s, c), &t| {
            (
                s.min(self.model.node_scores[t]),
                c.max(f64::from(self.model.nodes[t].cores)),
            )
        });
        let open_gain = |units: f64| {
            h_score - (h_score - units / h_cores).max(open_coldest + units / open_cores)
        };
        // It peaks at the units that even h with that node: below the smallest improvement
        // worth a move, no replica of h is worth a look.
        let open_even =
            ((h_score - open_coldest) * h_cores * open_cores / (h_cores + open_cores)).max(0.0);
        let source_free = replicas_may_win
            && copies_now
            && self.budget.node_free(h_id)
            && open_gain(open_even.min(heaviest)) > REBALANCE_MIN_IMPROVEMENT;
        // As for transfers: a cooler core's copy matters only if it beats a hotter core's.
        let mut floor = 0.0f64;
        for (rank, &core) in cores.iter().enumerate().filter(|_| source_free) {
            if let Some(c) = rank.checked_sub(1).and_then(|r| best_replica_per_core[r]) {
                floor = floor.max(c.value);
            }
            let source = CoreAddress::new(h_id, CoreId(core as u16));
            let slot = &mut best_replica_per_core[rank];
            let c = node.core_base + core;
            for (density, replica) in (0..).map_while(|i| self.densest(c, i)) {
                // A copy lowers h by at most its units per byte over h's cores: none further
                // down the list can win.
                if density / h_cores <= floor
                    || slot.is_some_and(|b| density / h_cores <= b.value * (1.0 + 1e-12))
                {
                    break;
                }
                let vshard = replica.vshard();
                let replica_units = self.model.units(replica);
                let bytes = self.model.bytes(vshard);
                let replica_bound = !self.cooling(vshard, MoveKind::ReplicaMove) && {
                    let g = open_gain(replica_units);
                    per_byte(g, bytes) > floor && beats(slot, g, per_byte(g, bytes))
                };
                if !replica_bound {
                    continue;
                }
                let target = open.iter().find(|&&t| {
                    !self
                        .model
                        .replicas_of(vshard)
                        .any(|(c, _)| self.model.node_of_core(c) == t)
                });
                if let Some(&t) = target {
                    let improvement = gain(t, replica_units);
                    let value = per_byte(improvement, bytes);
                    if value > floor && beats(slot, improvement, value) {
                        *slot = Some(Candidate {
                            vshard,
                            kind: MoveKind::ReplicaMove,
                            source,
                            target: CoreAddress::new(self.model.nodes[t].id, CoreId(0)),
                            units: replica_units,
                            improvement,
                            value,
                        });
                    }
                }
            }
        }
        let pick = |per_core: &[Option<Candidate>]| -> Option<Candidate> {
            let best = per_core
                .iter()
                .flatten()
                .map(|c| c.value)
                .fold(0.0, f64::max);
            // The hottest core whose best move is within 10 % of the overall best.
            per_core
                .iter()
                .flatten()
                .find(|c| c.value >= 0.9 * best)
                .copied()
        };
        let transfer = pick(&best_transfer_per_core);
        let replica = pick(&best_replica_per_core).map(|mut c| {
            let t = self
                .model
                .node_index(c.target.node)
                .expect("target is a model node");
            c.target = self.coldest_core(t);
            c
        });
        match (transfer, replica) {
            (Some(t), Some(r))
                if t.improvement >= self.config.leader_transfer_preference * r.improvement =>
            {
                Some(t)
            }
            (_, Some(r)) => Some(r),
            (t, None) => t,
        }
    }

    /// Plans one move between the cores of the node whose cores spread the most.
    fn next_core_move(&mut self) -> bool {
        // Counts alone are not worth moving replicas between the cores of a node for: the
        // cores of a node share its disk, and an idle replica costs a core nothing.
        if self.counts_only {
            return false;
        }
        let mut nodes: Vec<(usize, f64)> = (0..self.model.nodes.len())
            .filter(|&n| {
                self.model.nodes[n].eligible && self.model.nodes[n].cores > 1 && !self.core_stuck[n]
            })
            .map(|n| (n, self.core_spread(n)))
            .filter(|&(n, _)| self.cores_qualify(n))
            .collect();
        nodes.sort_unstable_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
        for (n, _) in nodes {
            let copies = self.budget.node_free(self.model.nodes[n].id)
                && self.budget.allows(MoveKind::ReplicaMove);
            if !copies {
                // A copy may be wanted once the moves in flight end.
                self.budget_blocked.set(true);
            }
            // Leadership off the hot core costs no copy: it wins when it does at least the
            // preference share of the best copy's good.
            let transfer = self.best_core_transfer(n);
            let copy = if copies { self.best_core_move(n) } else { None };
            let pick = match (transfer, copy) {
                (Some(t), Some(c))
                    if t.improvement >= self.config.leader_transfer_preference * c.improvement =>
                {
                    Some(t)
                }
                (_, Some(c)) => Some(c),
                (t, None) => t,
            };
            if let Some(c) = pick {
                self.apply(c, MoveReason::CoreBalance);
                return true;
            }
            self.core_stuck[n] = true;
        }
        false
    }

    /// The best leader transfer off node `n`'s core with the most traffic: to a follower on
    /// another node that stays within the node target, onto a core that stays within the
    /// core target, taking off no more than the hot core's excess over the node's mean.
    /// Ranked by the traffic it takes off.
    fn best_core_transfer(&self, n: usize) -> Option<Candidate> {
        if !self.budget.allows(MoveKind::LeaderTransfer) {
            return None;
        }
        let node = &self.model.nodes[n];
        let scores = self.traffic_of(n);
        let mut hot = 0;
        for (i, s) in scores.iter().enumerate() {
            if *s > scores[hot] {
                hot = i;
            }
        }
        let hot_score = scores[hot];
        let mean = scores.iter().sum::<f64>() / scores.len() as f64;
        let source = CoreAddress::new(node.id, CoreId(hot as u16));
        let scale = self.model.traffic_scale;
        let node_limit = 1.0 + self.config.target_spread;
        let core_limit = 1.0 + self.config.core_target_spread;
        let mut best: Option<Candidate> = None;
        for &replica in self.model.replicas_on(node.core_base + hot) {
            if !replica.leader() || self.cooling(replica.vshard(), MoveKind::LeaderTransfer) {
                continue;
            }
            let lead_units = self.model.leader_units(replica.vshard());
            let lead_traffic = lead_units * scale;
            // It takes off no more than the core's excess: a leadership that would leave the
            // hot core colder than the mean moves a hot spot rather than relieving one (with
            // few, heavy groups, a copy between cores does better).
            if lead_traffic > hot_score - mean {
                continue;
            }
            let improvement = lead_traffic;
            if !beats(&best, improvement, improvement) {
                continue;
            }
            let entry = self
                .placement
                .get(replica.vshard())
                .expect("listed vShards exist");
            for p in entry.addresses().filter(|p| p.node != node.id) {
                let Some(t) = self.eligible_index(p.node) else {
                    continue;
                };
                let t_cores = f64::from(self.model.nodes[t].cores);
                if self.model.node_scores[t] + lead_units / t_cores > node_limit {
                    continue;
                }
                let target_core = self.model.core_index(p).expect("eligible node, known core");
                let t_mean = self.model.node_traffic_mean(t) + lead_traffic / t_cores;
                if self.model.core_traffic(target_core) + lead_traffic
                    > t_mean.max(1.0).max(lead_traffic) * core_limit
                {
                    continue;
                }
                if beats(&best, improvement, improvement) {
                    best = Some(Candidate {
                        vshard: replica.vshard(),
                        kind: MoveKind::LeaderTransfer,
                        source,
                        target: p,
                        units: lead_units,
                        improvement,
                        value: improvement,
                    });
                }
            }
        }
        best
    }

    /// The best replica move from node `n`'s core with the most traffic to its core with
    /// the least, ranked by the traffic it moves per byte copied.
    fn best_core_move(&self, n: usize) -> Option<Candidate> {
        let node = &self.model.nodes[n];
        let scores = self.traffic_of(n);
        let (mut hot, mut cold) = (0, 0);
        for (i, s) in scores.iter().enumerate() {
            if *s > scores[hot] {
                hot = i;
            }
            if *s < scores[cold] {
                cold = i;
            }
        }
        let (hot_score, cold_score) = (scores[hot], scores[cold]);
        let mean = scores.iter().sum::<f64>() / scores.len() as f64;
        let heaviest = self.core_heaviest_traffic[node.core_base + hot];
        if hot_score <= heaviest + self.config.core_target_spread * mean {
            return None;
        }
        let source = CoreAddress::new(node.id, CoreId(hot as u16));
        let target = CoreAddress::new(node.id, CoreId(cold as u16));
        // A copy must be worth its bytes: a replica whose traffic per byte is a small part of
        // the mean of its role (the long tail of a Zipf load) is not copied to trim a hot
        // core by a hundredth of a per cent.
        // Except on the cluster's hottest core, when it exceeds what its heaviest vShard (or
        // the mean core) forces by more than the core trigger: that core caps what the
        // cluster serves, and any traffic off it counts.
        let limit = (1.0 + self.config.core_trigger_excess) * heaviest.max(mean);
        let min_traffic_per_byte = if hot_score > limit {
            [0.0; 2]
        } else {
            self.mean_traffic_per_byte
                .map(|d| REBALANCE_CORE_MOVE_MIN_DENSITY * d)
        };
        let mut best: Option<Candidate> = None;
        for &replica in self.model.replicas_on(node.core_base + hot) {
            if self.cooling_core(replica.vshard()) {
                continue;
            }
            // Followers only, unless the vShard has no other replica: a leader being moved
            // hands its leadership to another voter before it leaves (the new replica is
            // still a learner then) and gets it back only when the move ends, so the
            // leadership would spend the copy on another node. Leadership leaves a hot core
            // by a transfer (`best_core_transfer`), which copies nothing.
            if replica.leader()
                && self
                    .placement
                    .get(replica.vshard())
                    .is_some_and(|e| e.replicas.len() > 1)
            {
                continue;
            }
            let traffic = self
                .model
                .replica_traffic(replica.vshard(), self.model.units(replica));
            let bytes = self.model.bytes(replica.vshard());
            if traffic < min_traffic_per_byte[usize::from(replica.leader())] * bytes as f64 {
                continue;
            }
            let improvement = hot_score - (hot_score - traffic).max(cold_score + traffic);
            let value = per_byte(improvement, bytes);
            if beats(&best, improvement, value) {
                let vshard = replica.vshard();
                best = Some(Candidate {
                    vshard,
                    kind: MoveKind::ReplicaMove,
                    source,
                    target,
                    units: self.model.units(replica),
                    improvement,
                    value,
                });
            }
        }
        best
    }
}
