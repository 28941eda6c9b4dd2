//! The rebalancer in the nodes, sans-IO: core 0 of every node reports its node's load, and
//! core 0 of the metadata leader — the coordinator — sweeps.
//!
//! **Reports.** Every core hands its load to core 0 once per load tick (its own directly,
//! the others as `Mail::Load`). Every `report_interval` core 0 sends the node's latest
//! figures to the metadata leader as a `LoadReport` request (a node certificate is
//! required); the leader's own node reports in place. Reports are not Raft entries: they
//! are soft state, lost with a leader change and sent again within one interval.
//!
//! **Sweeps.** The coordinator keeps the latest report of each node with its arrival time.
//! A node whose report is older than `LOAD_REPORT_STALE_INTERVALS` intervals has unknown
//! load: it is left out of the planner's metrics, and the planner moves nothing onto or off
//! it. The coordinator runs `balance::Rebalancer::sweep` every `interval` after it became
//! leader (the first interval is consumed: reports are still arriving), and at once when
//! kicked — by a topology change or by a report whose node is busier than the mean by the
//! planner's trigger, at most once per report interval, and by a replica move that ended
//! (its slot is filled at once). Sweeps plan on the placement the moves under way lead to.
//! A sweep within an interval of the last dispatch starts replica moves only: the reports
//! may still show leaders where they were. A sweep is skipped while the coordinator's own
//! core is busy ≥ 0.80 of its time.
//!
//! **Dispatch**, fire and forget: a replica move is a `start_move` the coordinator proposes
//! on its own core (the migration executor then carries it out); a leader transfer is a
//! `TransferLeader` request to the group's leader. The planner is given a budget per kind
//! (`MoveBudget`): replica moves in flight stay within `max_moves_in_flight`, and those
//! touching one node (as source or target) within `max_moves_per_node`; leader transfers
//! get `leader_transfer_budget(nodes)` per sweep, less those still unanswered. A replica
//! move is in flight from its dispatch until the table shows it ended; a leader transfer
//! until its request is answered.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tracing::{debug, info};

use crate::balance::load::VShardLoad;
use crate::balance::model::LoadModel;
use crate::balance::planner::{
    MoveBudget, MoveKind, PlanStatus, PlannedMove, Planner, PlannerConfig, leader_transfer_budget,
};
use crate::balance::rebalancer::{
    ClusterLoad, DispatchError, ElectionGate, LoadMetricsProvider, MigrationDispatcher,
    ProviderError, Rebalancer, RebalancerConfig, SweepOutcome,
};
use crate::balance::report::{CoreReport, LedVShard, NodeReport};
use crate::client::call::{Call, CallPolicy, Failure};
use crate::client::routing::Routing;
use crate::cluster::metadata::{MetadataCommand, MetadataStore};
use crate::cluster::placement::{PlacementError, PlacementTable, VShardPlacement};
use crate::cluster::spec::ClusterSpec;
use crate::cluster::topology::NodeState;
use crate::constants::{
    LOAD_REPORT_INTERVAL, LOAD_REPORT_STALE_INTERVALS, NODE_DEAD_AFTER, REBALANCE_INTERVAL,
    REBALANCE_MAX_MOVES_IN_FLIGHT, REBALANCE_MAX_MOVES_PER_NODE, REBALANCE_PROPOSAL_TIMEOUT,
    REBALANCE_SIGNIFICANT_BYTES_PER_CORE, REBALANCE_SIGNIFICANT_RATE_PER_CORE,
    REBALANCE_TRIGGER_EXCESS,
};
use crate::ids::{CoreAddress, CoreId, Epoch, GroupId, NodeId};
use crate::metrics::loops::LoopMetrics;
use crate::node::load::CoreLoad;
use crate::time::Time;
use crate::wire::kv_rpc::{KvOp, KvReply, KvRequest};

/// Request ids of the balancer's calls start here, apart from the migration executor's.
pub(crate) const CALL_ID_BASE: u64 = 1 << 62;

/// The rebalancer's settings in a node.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct BalanceConfig {
    /// `rebalance = false` in the node file: nodes still report, nobody sweeps.
    pub enabled: bool,
    pub interval: Duration,
    pub report_interval: Duration,
    pub max_moves_per_node: usize,
    pub max_moves_in_flight: usize,
    /// Load below these (per core, on average) is noise and not balanced
    /// (`LoadWeights::significant_*`).
    pub significant_rate_per_core: f64,
    pub significant_bytes_per_core: f64,
    /// A node the failure detector holds dead this long is recorded `Down`, and its
    /// replicas are replaced (`dead_after_secs` in the node file).
    pub dead_after: Duration,
}

impl Default for BalanceConfig {
    fn default() -> Self {
        BalanceConfig {
            enabled: true,
            interval: REBALANCE_INTERVAL,
            report_interval: LOAD_REPORT_INTERVAL,
            max_moves_per_node: REBALANCE_MAX_MOVES_PER_NODE,
            max_moves_in_flight: REBALANCE_MAX_MOVES_IN_FLIGHT,
            significant_rate_per_core: REBALANCE_SIGNIFICANT_RATE_PER_CORE,
            significant_bytes_per_core: REBALANCE_SIGNIFICANT_BYTES_PER_CORE,
            dead_after: NODE_DEAD_AFTER,
        }
    }
}

impl BalanceConfig {
    /// A report older than this has unknown load.
    pub fn stale_after(&self) -> Duration {
        self.report_interval * LOAD_REPORT_STALE_INTERVALS
    }
}

/// What the coordinator has done, for metrics and `kv status`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct BalancerStats {
    pub sweeps: u64,
    /// Sweeps run before their interval was up: kicked by a hot report, a topology change
    /// or a replica move that ended.
    #[serde(default)]
    pub kicked_sweeps: u64,
    pub replica_moves_started: u64,
    pub leader_transfers_started: u64,
    pub leader_transfers_failed: u64,
    pub reports_received: u64,
    pub reports_refused: u64,
    /// The highest node max / mean a sweep that moved something started from: the
    /// imbalance the rebalancer answered (reports lag the load, so samples taken from
    /// outside may miss it).
    #[serde(default)]
    pub worst_planned_node_max_over_mean: f64,
}

/// One node as the coordinator sees it, in `kv status`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct NodeStatus {
    /// The node's id (`node` in the JSON of earlier versions).
    #[serde(alias = "node")]
    pub id: u64,
    pub state: String,
    /// Seconds since its last report; `None` if it never reported to this coordinator.
    pub report_age_seconds: Option<f64>,
    /// Whether its report is recent enough for the planner.
    pub fresh: bool,
    pub cores: Vec<CoreStatus>,
    /// Replicas the placement table puts on this node (a move's new replica included).
    #[serde(default)]
    pub replicas_placed: usize,
    /// Decommissioned with nothing placed on it: the node may be stopped for good.
    #[serde(default)]
    pub safe_to_stop: bool,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CoreStatus {
    pub core: u16,
    pub busy: f64,
    pub ops_per_second: f64,
    pub bytes: u64,
    pub replicas: u32,
    pub leaders: u32,
    pub p99_latency_us: f64,
    pub migration_bytes_per_second: f64,
}

/// The coordinator's view, answered to `Status` requests as JSON.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct BalancerStatus {
    /// The node whose core 0 coordinates (this one).
    pub coordinator: u64,
    pub rebalance_enabled: bool,
    pub interval_seconds: f64,
    pub nodes: Vec<NodeStatus>,
    /// Node and core max / mean of the planner's score, from the fresh reports now (0 when
    /// there is no load to balance).
    pub node_max_over_mean: f64,
    pub core_max_over_mean: f64,
    /// The best node max / mean a placement reaches without trading bytes for traffic
    /// (`LoadModel::node_bound`): the heaviest vShard cannot be split.
    pub node_bound_max_over_mean: f64,
    pub replica_moves_in_flight: usize,
    /// Replica moves the placement table records as under way (whoever started them:
    /// the rebalancer, a drain, an operator), for scripts to wait on.
    #[serde(default)]
    pub moves_in_flight: usize,
    /// Groups with fewer replicas on live nodes than the replica count: a replica on a
    /// node that is decommissioned or `Down`, or whose load report is stale (not heard
    /// from).
    #[serde(default)]
    pub under_replicated_groups: Vec<u64>,
    /// Replica moves under way off `Down` nodes: repairs.
    #[serde(default)]
    pub repairs_in_flight: usize,
    pub leader_transfers_in_flight: usize,
    pub last_sweep_seconds_ago: Option<f64>,
    pub last_plan_moves: usize,
    pub last_plan_status: Option<String>,
    /// Why the last sweep was skipped, if it was.
    pub last_skip: Option<String>,
    pub stats: BalancerStats,
    /// The node leading each group, by vShard (group id − 1), as the nodes' fresh reports
    /// say (each reports the groups it leads); 0 where no fresh report claims the group.
    #[serde(default)]
    pub leaders: Vec<u64>,
    /// The core of that node leading each group, likewise; `None` where no fresh report
    /// says (or the report came from a node of an earlier version, which did not say).
    #[serde(default)]
    pub leader_cores: Vec<Option<u16>>,
}

/// The replica of `entry` a node's report says leads: the one on the reported core, or
/// where the report names no core (or one the table has no replica on), the node's first.
fn leader_replica(
    entry: &VShardPlacement,
    node: NodeId,
    core: Option<CoreId>,
) -> Option<CoreAddress> {
    core.map(|core| CoreAddress { node, core })
        .filter(|at| entry.addresses().any(|a| a == *at))
        .or_else(|| entry.replica_on(node))
}

struct Received {
    at: Time,
    report: NodeReport,
}

struct Transfer {
    call: Call,
}

struct Proposed {
    group: GroupId,
    /// The node of the replica leaving.
    from: NodeId,
    /// The replica leaving and where its copy goes: the table shows this move once it
    /// applied (the group may still show an earlier move when it is proposed).
    replica: crate::ids::ReplicaId,
    target: CoreAddress,
    at: Time,
}

impl Proposed {
    /// Whether the table shows this move, under way or over (its replica gone).
    fn shown(&self, table: &PlacementTable) -> bool {
        table.group(self.group).is_none_or(|g| {
            g.moving
                .is_some_and(|m| m.from == self.replica && m.to == self.target)
                || g.replicas.iter().all(|r| r.id != self.replica)
        })
    }
}

/// Core 0's balancer: the node's reporter, and the coordinator while it leads the metadata
/// group.
pub(crate) struct Balancer {
    node: NodeId,
    cores: u16,
    config: BalanceConfig,
    routing: Routing,
    sends: Vec<(CoreAddress, KvRequest)>,
    // ---- reporting
    loads: BTreeMap<CoreId, CoreLoad>,
    next_report: Option<Time>,
    report: Option<Call>,
    // ---- coordinating
    leading: bool,
    /// The replica moves the last table recorded (group → new replica).
    moves_seen: BTreeMap<GroupId, crate::ids::ReplicaId>,
    /// When this core became the coordinator: kicks wait one report interval after it.
    leading_since: Option<Time>,
    reports: BTreeMap<NodeId, Received>,
    rebalancer: Rebalancer,
    next_sweep: Option<Time>,
    kicked: bool,
    /// A replica move ended since the last sweep (the seed's kick on move completion).
    move_ended: bool,
    last_sweep: Option<Time>,
    last_kick_sweep: Option<Time>,
    /// When a sweep last dispatched moves.
    last_dispatch: Option<Time>,
    topology_version: Option<u64>,
    transfers: Vec<Transfer>,
    proposed: Vec<Proposed>,
    starts: Vec<MetadataCommand>,
    /// Drained nodes whose `Decommissioned` this coordinator proposed, and when.
    finishing: BTreeMap<NodeId, Time>,
    /// The table epoch `finish_drains` last looked at: an unchanged table has no drain
    /// newly finished, so a draining node costs no table walk per tick.
    drains_checked: Option<Epoch>,
    last_skip: Option<&'static str>,
    last_node_max_over_mean: f64,
    /// The best node max / mean any placement could reach (the heaviest vShard cannot be
    /// split), as of the last report interval.
    last_node_bound: f64,
    last_core_max_over_mean: f64,
    pub(crate) stats: BalancerStats,
}

impl Balancer {
    pub(crate) fn new(
        spec: &ClusterSpec,
        node: NodeId,
        config: BalanceConfig,
    ) -> Result<Balancer, PlacementError> {
        let mut planner = PlannerConfig {
            // A transferred leader stays put for two sweeps: elections move leaders on
            // their own, and the rebalancer must be able to move them back.
            leader_cooldown: config.interval * 2,
            ..PlannerConfig::default()
        };
        planner.weights.significant_rate_per_core = config.significant_rate_per_core;
        planner.weights.significant_bytes_per_core = config.significant_bytes_per_core;
        // Floors out of range (NaN, negative) fall back to counting everything.
        let planner = Planner::new(planner).unwrap_or_else(|_| {
            Planner::new(PlannerConfig::default()).expect("the default planner is valid")
        });
        Ok(Balancer {
            node,
            cores: spec.cores,
            config,
            routing: Routing::new(spec)?.with_first_id(CALL_ID_BASE),
            sends: Vec::new(),
            loads: BTreeMap::new(),
            next_report: None,
            report: None,
            leading: false,
            moves_seen: BTreeMap::new(),
            leading_since: None,
            reports: BTreeMap::new(),
            rebalancer: Rebalancer::new(planner, RebalancerConfig::default()),
            next_sweep: None,
            kicked: false,
            move_ended: false,
            last_sweep: None,
            last_kick_sweep: None,
            last_dispatch: None,
            topology_version: None,
            transfers: Vec::new(),
            proposed: Vec::new(),
            starts: Vec::new(),
            finishing: BTreeMap::new(),
            drains_checked: None,
            last_skip: None,
            last_node_max_over_mean: 0.0,
            last_node_bound: 0.0,
            last_core_max_over_mean: 0.0,
            stats: BalancerStats::default(),
        })
    }

    /// The rebalancer's loop metrics.
    pub(crate) fn loop_metrics(&self) -> &std::sync::Arc<LoopMetrics> {
        self.rebalancer.metrics()
    }

    /// The node applied a new table: route by it, and note the replica moves it records
    /// (whoever started them) in the planner, so that a coordinator elected later does not
    /// move those vShards straight back.
    pub(crate) fn on_table(&mut self, table: &PlacementTable, now: Time) {
        self.routing.store_placement(table);
        let moving: BTreeMap<GroupId, crate::ids::ReplicaId> = table
            .groups()
            .filter_map(|(g, p)| p.moving.map(|m| (g, m.new)))
            .collect();
        for (group, p) in table.groups() {
            let Some(m) = p.moving else { continue };
            if self.moves_seen.get(&group) == Some(&m.new) {
                continue;
            }
            let vshard = crate::ids::VShardId((group.0 - 1) as u32);
            let planner = self.rebalancer.planner_mut();
            if p.address_of(m.from).is_some_and(|a| a.node == m.to.node) {
                planner.note_core_moved(vshard, now);
            } else {
                planner.note_moved(vshard, MoveKind::ReplicaMove, now);
            }
        }
        // A move that ended frees a move slot: the coordinator sweeps at once to fill it.
        if self
            .moves_seen
            .iter()
            .any(|(group, new)| moving.get(group) != Some(new))
        {
            self.move_ended = true;
        }
        self.moves_seen = moving;
    }

    /// A core of this node finished a load tick.
    pub(crate) fn on_core_load(&mut self, core: CoreId, load: CoreLoad) {
        if core.0 < self.cores {
            self.loads.insert(core, load);
        }
    }

    /// Whether `id` is one of the balancer's requests.
    pub(crate) fn owns_call(id: u64) -> bool {
        id >= CALL_ID_BASE
    }

    /// The node's report from its cores' latest loads.
    fn own_report(&self, now: Time) -> NodeReport {
        let stale = self.config.stale_after();
        let mut report = NodeReport {
            node: self.node,
            cores: Vec::with_capacity(self.loads.len()),
            vshards: Vec::new(),
        };
        for (core, load) in &self.loads {
            if now.saturating_since(load.at) > stale {
                continue;
            }
            report.cores.push(CoreReport {
                core: *core,
                busy: load.busy,
                reads_per_sec: load.reads_per_sec,
                writes_per_sec: load.writes_per_sec,
                bytes_stored: load.bytes_stored,
                replicas: load.replicas,
                leaders: load.groups_led,
                p95_latency_us: load.p95_latency_us,
                p99_latency_us: load.p99_latency_us,
                migration_bytes_per_sec: load.migration_bytes_per_sec,
            });
            report
                .vshards
                .extend(load.vshards.iter().map(|&load| LedVShard {
                    core: Some(*core),
                    load,
                }));
        }
        // A group whose leadership moved between two cores' ticks may be listed twice:
        // keep one (the later core's figures are as good as the earlier's).
        report.vshards.sort_by_key(|s| s.load.vshard);
        report.vshards.dedup_by_key(|s| s.load.vshard);
        report
    }

    /// A report from a node, at the coordinator. Refused (and counted) when its figures are
    /// unusable or it names a node outside the topology.
    pub(crate) fn handle_report(
        &mut self,
        now: Time,
        report: NodeReport,
        store: &MetadataStore,
    ) -> Result<(), String> {
        let checked = if store.topology().node(report.node).is_none() {
            Err(format!("node {} is not in the topology", report.node))
        } else {
            report
                .validate(store.table().vshard_count())
                .map_err(|e| e.to_string())
        };
        if let Err(e) = checked {
            self.stats.reports_refused += 1;
            return Err(e);
        }
        self.stats.reports_received += 1;
        self.kick_if_hot(&report);
        self.reports
            .insert(report.node, Received { at: now, report });
        Ok(())
    }

    /// Kicks a sweep when `report`'s node is busier per core than the mean of the fresh
    /// reports by the planner's trigger.
    fn kick_if_hot(&mut self, report: &NodeReport) {
        let per_core = |r: &NodeReport| {
            let ops: f64 = r
                .cores
                .iter()
                .map(|c| c.reads_per_sec + c.writes_per_sec)
                .sum();
            ops / f64::from(r.cores.len().max(1) as u32)
        };
        let mut loads: Vec<f64> = self
            .reports
            .values()
            .filter(|r| r.report.node != report.node)
            .map(|r| per_core(&r.report))
            .collect();
        let own = per_core(report);
        loads.push(own);
        let mean = loads.iter().sum::<f64>() / loads.len() as f64;
        if loads.len() > 1 && mean > 0.0 && own > mean * (1.0 + REBALANCE_TRIGGER_EXCESS) {
            self.kicked = true;
        }
    }

    /// Time passed. `leading` says whether this core leads the metadata group, `current`
    /// whether its state of the group is up to date (it committed an entry of its term and
    /// applied all that is committed: the moves its predecessors started are in the table),
    /// `store` is the group's state here.
    pub(crate) fn handle_timeout(
        &mut self,
        now: Time,
        leading: bool,
        current: bool,
        store: Option<&MetadataStore>,
    ) {
        self.drive_calls(now);
        let Some(store) = store.filter(|s| s.is_bootstrapped()) else {
            return;
        };
        // Coordinating.
        if self.leading && !leading {
            self.stand_down();
        }
        if leading && !self.leading {
            // The first interval is consumed: reports are only starting to arrive.
            self.next_sweep = Some(now + self.config.interval);
            self.leading_since = Some(now);
            self.topology_version = Some(store.topology().version().0);
        }
        self.leading = leading;
        self.rebalancer
            .metrics()
            .set_up(leading && self.config.enabled);
        // Reporting (the coordinator's own node reports in place).
        let due = *self
            .next_report
            .get_or_insert(now + self.config.report_interval);
        if now >= due {
            self.next_report = Some(now + self.config.report_interval);
            let report = self.own_report(now);
            if leading {
                if let Err(e) = self.handle_report(now, report, store) {
                    debug!(error = %e, "own load report refused");
                }
                // The imbalance gauges follow the reports.
                (
                    self.last_node_max_over_mean,
                    self.last_core_max_over_mean,
                    self.last_node_bound,
                ) = self.imbalance_now(now, store);
            } else if self.report.is_none() {
                let op = KvOp::LoadReport {
                    report: report.encode(),
                };
                let mut call = Call::new(GroupId::METADATA, op, call_policy());
                if call
                    .drive(now, &mut self.routing, &mut self.sends)
                    .is_none()
                {
                    self.report = Some(call);
                }
            }
        }
        if !leading {
            return;
        }
        let version = store.topology().version().0;
        if self.topology_version != Some(version) {
            self.topology_version = Some(version);
            self.kicked = true;
        }
        if current {
            self.finish_drains(now, store);
        }
        let table = store.table();
        // A proposal counts against the move limits until the table shows it: a group may
        // still show an earlier move when its next is proposed (sweeps plan as if the moves
        // under way had ended), and dropping the proposal then would let the next sweep
        // start more moves than the limits allow once both apply.
        self.proposed
            .retain(|p| now.saturating_since(p.at) < REBALANCE_PROPOSAL_TIMEOUT && !p.shown(table));
        if !self.config.enabled {
            return;
        }
        let periodic = self.next_sweep.is_some_and(|t| now >= t);
        let settled = self
            .leading_since
            .is_some_and(|t| now.saturating_since(t) >= self.config.report_interval);
        // After a sweep that moved something, the next waits a full interval: the reports
        // need that long to show the moves' effect (rates follow load with a 3 s time
        // constant), and a sweep on the old figures would move more than needed.
        let calm = self
            .last_dispatch
            .is_none_or(|t| now.saturating_since(t) >= self.config.interval);
        let kick = self.kicked
            && settled
            && calm
            && self
                .last_kick_sweep
                .is_none_or(|t| now.saturating_since(t) >= self.config.report_interval);
        // A finished replica move kicks a sweep at once, to fill its slot. The placement
        // already shows the move, but until a full interval has passed since the last
        // dispatch the reports may still show leaders where they were: such a sweep starts
        // replica moves only.
        let completion = self.move_ended && settled;
        if periodic || kick || completion {
            self.kicked = false;
            self.move_ended = false;
            if kick && !periodic {
                self.last_kick_sweep = Some(now);
            }
            if !periodic {
                self.stats.kicked_sweeps += 1;
            }
            self.next_sweep = Some(now + self.config.interval);
            self.sweep(now, current, calm || periodic, store);
        }
    }

    /// Proposes `Decommissioned` for every draining node the table no longer places
    /// anything on (no replica, no move under way to it): its drain is over. Runs whether
    /// or not the rebalancer moves replicas (an operator may drain by hand).
    fn finish_drains(&mut self, now: Time, store: &MetadataStore) {
        let before = self.finishing.len();
        self.finishing
            .retain(|_, at| now.saturating_since(*at) < REBALANCE_PROPOSAL_TIMEOUT);
        if self.finishing.len() == before && self.drains_checked == Some(store.epoch()) {
            return;
        }
        self.drains_checked = Some(store.epoch());
        let draining: Vec<NodeId> = store
            .topology()
            .nodes()
            .filter(|n| n.state == NodeState::Draining && !self.finishing.contains_key(&n.node_id))
            .map(|n| n.node_id)
            .collect();
        if draining.is_empty() {
            return;
        }
        let placed = replicas_by_node(store.table());
        for node in draining {
            if placed.get(&node).copied().unwrap_or(0) == 0 {
                info!(%node, coordinator = %self.node, "node drained: proposing Decommissioned");
                self.starts.push(MetadataCommand::SetNodeState {
                    node,
                    state: NodeState::Decommissioned,
                });
                self.finishing.insert(node, now);
            }
        }
    }

    fn stand_down(&mut self) {
        self.reports.clear();
        self.finishing.clear();
        self.drains_checked = None;
        self.transfers.clear();
        self.proposed.clear();
        self.starts.clear();
        self.next_sweep = None;
        self.leading_since = None;
        self.kicked = false;
        self.move_ended = false;
    }

    fn drive_calls(&mut self, now: Time) {
        if let Some(call) = self.report.as_mut()
            && let Some(outcome) = call.drive(now, &mut self.routing, &mut self.sends)
        {
            if let Err(e) = outcome {
                debug!(error = %e, "load report not delivered");
            }
            self.report = None;
        }
        let (routing, sends) = (&mut self.routing, &mut self.sends);
        let mut failed = 0;
        self.transfers
            .retain_mut(|t| match t.call.drive(now, routing, sends) {
                None => true,
                Some(Ok(KvReply::Accepted)) => false,
                Some(outcome) => {
                    debug!(
                        group = t.call.group().0,
                        ?outcome,
                        "leader transfer not taken"
                    );
                    failed += 1;
                    false
                }
            });
        self.stats.leader_transfers_failed += failed;
    }

    /// An answer (or failure) to one of the balancer's requests.
    pub(crate) fn handle_reply(&mut self, now: Time, id: u64, reply: Result<KvReply, Failure>) {
        let routing = &mut self.routing;
        let calls = self
            .report
            .iter_mut()
            .chain(self.transfers.iter_mut().map(|t| &mut t.call));
        for call in calls {
            if call.awaits(id) {
                match reply {
                    Ok(r) => call.handle_reply(now, routing, id, r),
                    Err(f) => call.handle_failure(now, routing, id, f),
                }
                break;
            }
        }
        self.drive_calls(now);
    }

    /// The requests to send, in order.
    pub(crate) fn take_sends(&mut self) -> std::vec::Drain<'_, (CoreAddress, KvRequest)> {
        self.sends.drain(..)
    }

    /// The next `start_move` to propose on this core.
    pub(crate) fn poll_start(&mut self) -> Option<MetadataCommand> {
        self.starts.pop()
    }

    /// When the balancer next needs time.
    pub(crate) fn poll_timeout(&self) -> Option<Time> {
        let calls = self
            .report
            .iter()
            .chain(self.transfers.iter().map(|t| &t.call))
            .filter_map(Call::poll_timeout);
        // With the rebalancer off nobody sweeps: a sweep time would stay in the past and
        // spin the core's loop (it did, from `interval` after winning the metadata group's
        // leadership on, starving the core's network tasks).
        let sweep = self.next_sweep.filter(|_| self.config.enabled);
        calls.chain(self.next_report).chain(sweep).min()
    }

    /// Replica moves in flight per node (as source or target), and in all.
    fn in_flight(&self, table: &PlacementTable) -> (BTreeMap<NodeId, usize>, usize) {
        let mut busy: BTreeMap<NodeId, usize> = BTreeMap::new();
        let mut count = 0;
        let mut note = |from: NodeId, to: NodeId| {
            count += 1;
            *busy.entry(from).or_default() += 1;
            if to != from {
                *busy.entry(to).or_default() += 1;
            }
        };
        for (_, p) in table.groups() {
            if let Some(m) = p.moving {
                let from = p.address_of(m.from).map_or(m.to.node, |a| a.node);
                note(from, m.to.node);
            }
        }
        for p in &self.proposed {
            note(p.from, p.target.node);
        }
        (busy, count)
    }

    /// The planner's input: fresh reports, the table with leaders where nodes report them
    /// (and, for `Sweep`, with the moves under way as if they had ended), and what may start.
    fn cluster_load(&self, now: Time, view: View, store: &MetadataStore) -> ClusterLoad {
        let stale = self.config.stale_after();
        let mut placement = store.table().clone();
        let mut node_metrics = Vec::new();
        // vShard → (report time, sample): a vShard two nodes claim (a leadership change
        // between their reports) goes to the later report.
        let mut samples: BTreeMap<u32, (Time, NodeId, Option<CoreId>, VShardLoad)> =
            BTreeMap::new();
        for (node, r) in &self.reports {
            if now.saturating_since(r.at) > stale || store.topology().node(*node).is_none() {
                continue;
            }
            node_metrics.push(r.report.node_metrics());
            for LedVShard { core, load: s } in &r.report.vshards {
                let hosted = placement.get(s.vshard).and_then(|e| e.replica_on(*node));
                if hosted.is_none() {
                    continue;
                }
                // The later report names the leader. The rates are the larger of the two:
                // right after a leadership change the new leader's decayed rates are still
                // rising while the old leader's fall, and taking the new leader's alone
                // would make its node look colder than it is (and draw more load onto it).
                match samples.get_mut(&s.vshard.0) {
                    None => {
                        samples.insert(s.vshard.0, (r.at, *node, *core, *s));
                    }
                    Some((at, leader, leader_core, sample)) => {
                        let busier = s.reads_per_sec + s.writes_per_sec
                            > sample.reads_per_sec + sample.writes_per_sec;
                        let (reads, writes) = if busier {
                            (s.reads_per_sec, s.writes_per_sec)
                        } else {
                            (sample.reads_per_sec, sample.writes_per_sec)
                        };
                        if r.at > *at {
                            (*at, *leader, *leader_core, *sample) = (r.at, *node, *core, *s);
                        }
                        sample.reads_per_sec = reads;
                        sample.writes_per_sec = writes;
                    }
                }
            }
        }
        for (_, node, core, sample) in samples.values() {
            if let Some(at) = placement
                .get(sample.vshard)
                .and_then(|e| leader_replica(e, *node, *core))
            {
                // Already the hint, or set to it now.
                let _ = placement.transfer_leader(sample.vshard, at);
            }
        }
        let (busy, replica_moves) = self.in_flight(&placement);
        // Plan on the placement the moves under way lead to, so that a sweep kicked while
        // they run does not move load off a node that is already shedding it.
        let moving: Vec<(GroupId, crate::ids::ReplicaId)> = placement
            .groups()
            .filter_map(|(g, p)| p.moving.filter(|m| !m.abandon).map(|m| (g, m.new)))
            .collect();
        if view != View::Now {
            for (group, new) in moving {
                let _ = placement.end_move(group, new, true);
            }
        }
        let coordinator_cpu = self.loads.get(&CoreId(0)).map_or(0.0, |l| l.busy);
        ClusterLoad {
            topology: store.topology().clone(),
            placement,
            node_metrics,
            vshard_loads: samples.into_values().map(|(_, _, _, s)| s).collect(),
            coordinator_cpu,
            budget: MoveBudget {
                replica_moves: self
                    .config
                    .max_moves_in_flight
                    .saturating_sub(replica_moves),
                // Transfers still unanswered count against this sweep's.
                leader_transfers: if view == View::Sweep {
                    leader_transfer_budget(store.topology().len())
                        .saturating_sub(self.transfers.len())
                } else {
                    0
                },
                replica_moves_per_node: self.config.max_moves_per_node,
                busy,
            },
        }
    }

    fn sweep(&mut self, now: Time, current: bool, transfers: bool, store: &MetadataStore) {
        self.stats.sweeps += 1;
        self.rebalancer.metrics().count_iteration();
        self.last_sweep = Some(now);
        let view = if transfers {
            View::Sweep
        } else {
            View::SweepReplicaMovesOnly
        };
        let load = self.cluster_load(now, view, store);
        let provider = Provided(RefCell::new(Some(load.clone())));
        let dispatcher = Collect::default();
        let outcome =
            self.rebalancer
                .sweep(now, &Leads(self.leading && current), &provider, &dispatcher);
        self.last_skip = match outcome {
            SweepOutcome::SkippedElection => Some("election"),
            SweepOutcome::SkippedBackpressure { .. } => Some("cpu_backpressure"),
            SweepOutcome::Failed => Some("failed"),
            SweepOutcome::Planned { .. } => None,
        };
        if let Some(plan) = self.rebalancer.last_plan() {
            self.last_node_max_over_mean = plan.node_max_over_mean_before;
            self.last_core_max_over_mean = plan.core_max_over_mean_before;
        }
        let planned = dispatcher.0.into_inner();
        if !planned.is_empty() {
            self.last_dispatch = Some(now);
            let before = self.last_node_max_over_mean;
            let worst = &mut self.stats.worst_planned_node_max_over_mean;
            *worst = worst.max(before);
        }
        for planned in planned {
            self.dispatch(now, &load.placement, planned);
        }
    }

    fn dispatch(&mut self, now: Time, placement: &PlacementTable, planned: PlannedMove) {
        let group = GroupId::of_vshard(planned.vshard);
        let Some(entry) = placement.get(planned.vshard) else {
            return;
        };
        let replica_at = |at: CoreAddress| entry.replicas.iter().find(|r| r.at == at).map(|r| r.id);
        match planned.kind {
            MoveKind::ReplicaMove => {
                let Some(from) = replica_at(planned.source) else {
                    return;
                };
                info!(group = group.0, from = %planned.source, to = %planned.target, reason = ?planned.reason, at = ?now, coordinator = %self.node, "rebalancer starts a replica move");
                self.starts.push(MetadataCommand::StartMove {
                    group,
                    from,
                    to: planned.target,
                });
                self.proposed.push(Proposed {
                    group,
                    from: planned.source.node,
                    replica: from,
                    target: planned.target,
                    at: now,
                });
                self.stats.replica_moves_started += 1;
            }
            MoveKind::LeaderTransfer => {
                let Some(to) = replica_at(planned.target) else {
                    return;
                };
                info!(group = group.0, from = %planned.source, to = %planned.target, at = ?now, coordinator = %self.node, "rebalancer transfers a leader");
                let mut call = Call::new(group, KvOp::TransferLeader { to }, call_policy());
                self.stats.leader_transfers_started += 1;
                match call.drive(now, &mut self.routing, &mut self.sends) {
                    None => self.transfers.push(Transfer { call }),
                    Some(Ok(KvReply::Accepted)) => {}
                    Some(_) => self.stats.leader_transfers_failed += 1,
                }
            }
        }
    }

    /// The coordinator's view for `kv status`.
    pub(crate) fn status(&self, now: Time, store: &MetadataStore) -> BalancerStatus {
        let stale = self.config.stale_after();
        let placed = replicas_by_node(store.table());
        let nodes = store
            .topology()
            .nodes()
            .map(|info| {
                let received = self.reports.get(&info.node_id);
                let age = received.map(|r| now.saturating_since(r.at));
                let replicas_placed = placed.get(&info.node_id).copied().unwrap_or(0);
                NodeStatus {
                    replicas_placed,
                    safe_to_stop: info.state == NodeState::Decommissioned && replicas_placed == 0,
                    id: info.node_id.0,
                    state: format!("{:?}", info.state),
                    report_age_seconds: age.map(|a| a.as_secs_f64()),
                    fresh: age.is_some_and(|a| a <= stale),
                    cores: received
                        .map(|r| {
                            r.report
                                .cores
                                .iter()
                                .map(|c| CoreStatus {
                                    core: c.core.0,
                                    busy: c.busy,
                                    ops_per_second: c.reads_per_sec + c.writes_per_sec,
                                    bytes: c.bytes_stored,
                                    replicas: c.replicas,
                                    leaders: c.leaders,
                                    p99_latency_us: c.p99_latency_us,
                                    migration_bytes_per_second: c.migration_bytes_per_sec,
                                })
                                .collect()
                        })
                        .unwrap_or_default(),
                }
            })
            .collect();
        let (_, replica_moves) = self.in_flight(store.table());
        // Reports only start to arrive once this node coordinates: a node not heard from
        // yet is not counted as gone in its first report window (right after a cluster
        // starts, every group was listed under-replicated for a few seconds).
        let starting = self
            .leading_since
            .is_some_and(|t| now.saturating_since(t) <= stale);
        let live = |node: NodeId| {
            let fresh = node == self.node
                || self
                    .reports
                    .get(&node)
                    .map_or(starting, |r| now.saturating_since(r.at) <= stale);
            fresh
                && store.topology().node(node).is_some_and(|n| {
                    !matches!(n.state, NodeState::Decommissioned | NodeState::Down)
                })
        };
        let table = store.table();
        let down = |node: NodeId| {
            store
                .topology()
                .node(node)
                .is_some_and(|n| n.state == NodeState::Down)
        };
        let repairs_in_flight = table
            .groups()
            .filter(|(_, p)| {
                p.moving
                    .and_then(|m| p.address_of(m.from))
                    .is_some_and(|from| down(from.node))
            })
            .count();
        let moves_in_flight = table.groups().filter(|(_, p)| p.moving.is_some()).count();
        let under_replicated_groups = table
            .groups()
            .filter(|(_, p)| {
                let count = p.replicas.len() - usize::from(p.moving.is_some());
                p.replicas.iter().filter(|r| live(r.at.node)).count() < count
            })
            .map(|(g, _)| g.0)
            .collect();
        // Two fresh reports may both claim a group around a leader transfer: the later
        // report wins.
        let mut claims: Vec<Option<(Time, NodeId, Option<CoreId>)>> =
            vec![None; table.vshard_count() as usize];
        for (node, received) in &self.reports {
            if now.saturating_since(received.at) <= stale {
                for sample in &received.report.vshards {
                    if let Some(slot) = claims.get_mut(sample.load.vshard.0 as usize)
                        && slot.is_none_or(|(at, _, _)| received.at > at)
                    {
                        *slot = Some((received.at, *node, sample.core));
                    }
                }
            }
        }
        let leaders = claims
            .iter()
            .map(|c| c.map_or(0, |(_, node, _)| node.0))
            .collect();
        let leader_cores = claims
            .iter()
            .map(|c| c.and_then(|(_, _, core)| core).map(|c| c.0))
            .collect();
        let plan = self.rebalancer.last_plan();
        let (node_max_over_mean, core_max_over_mean, node_bound_max_over_mean) =
            self.imbalance_now(now, store);
        BalancerStatus {
            coordinator: self.node.0,
            rebalance_enabled: self.config.enabled,
            interval_seconds: self.config.interval.as_secs_f64(),
            nodes,
            node_max_over_mean,
            core_max_over_mean,
            node_bound_max_over_mean,
            replica_moves_in_flight: replica_moves,
            moves_in_flight,
            under_replicated_groups,
            repairs_in_flight,
            leader_transfers_in_flight: self.transfers.len(),
            last_sweep_seconds_ago: self
                .last_sweep
                .map(|t| now.saturating_since(t).as_secs_f64()),
            last_plan_moves: plan.map_or(0, |p| p.moves.len()),
            last_plan_status: plan.map(|p| plan_status(p.status)),
            last_skip: self.last_skip.map(str::to_owned),
            stats: self.stats.clone(),
            leaders,
            leader_cores,
        }
    }

    /// Node and core max / mean of the load, as of the last report interval or sweep.
    pub(crate) fn imbalance(&self) -> (f64, f64) {
        (self.last_node_max_over_mean, self.last_core_max_over_mean)
    }

    /// The best node max / mean reachable, as of the last report interval.
    pub(crate) fn node_bound(&self) -> f64 {
        self.last_node_bound
    }

    /// Node and core max / mean of the planner's score over the fresh reports now, and the
    /// node bound.
    fn imbalance_now(&self, now: Time, store: &MetadataStore) -> (f64, f64, f64) {
        let load = self.cluster_load(now, View::Now, store);
        let reporting: Vec<NodeId> = load.node_metrics.iter().map(|m| m.node_id).collect();
        let mut loads: Vec<VShardLoad> = (0..load.placement.vshard_count())
            .map(|v| VShardLoad {
                vshard: crate::ids::VShardId(v),
                bytes: 0,
                writes_per_sec: 0.0,
                reads_per_sec: 0.0,
            })
            .collect();
        for s in &load.vshard_loads {
            loads[s.vshard.0 as usize] = *s;
        }
        let model = LoadModel::build(
            &load.topology,
            &load.placement,
            &loads,
            &self.rebalancer.planner().config().weights,
            |n| reporting.contains(&n),
        );
        if model.scale.is_none() {
            return (0.0, 0.0, 0.0);
        }
        (
            model.node_max_over_mean(),
            model.core_max_over_mean(),
            model.node_bound(),
        )
    }
}

/// What `Balancer::cluster_load` is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum View {
    /// The figures as they are (gauges, `kv status`).
    Now,
    /// A sweep: moves under way count as ended.
    Sweep,
    /// A sweep that may start replica moves only.
    SweepReplicaMovesOnly,
}

/// How many replicas the table places on each node, a move's new replica included.
fn replicas_by_node(table: &PlacementTable) -> BTreeMap<NodeId, usize> {
    let mut placed = BTreeMap::new();
    for (_, p) in table.groups() {
        for r in &p.replicas {
            *placed.entry(r.at.node).or_insert(0) += 1;
        }
    }
    placed
}

fn plan_status(s: PlanStatus) -> String {
    serde_json::to_value(s)
        .ok()
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_default()
}

/// The coordinator's gate: it sweeps only while it leads the metadata group with its state
/// up to date (a new leader's table may lack its predecessors' last moves until then).
struct Leads(bool);

impl ElectionGate for Leads {
    fn any_group_electing(&self) -> bool {
        !self.0
    }
}

struct Provided(RefCell<Option<ClusterLoad>>);

impl LoadMetricsProvider for Provided {
    fn cluster_load(&self) -> Result<ClusterLoad, ProviderError> {
        self.0
            .borrow_mut()
            .take()
            .ok_or_else(|| ProviderError("the load was already taken".into()))
    }
}

/// Collects the plan's moves; the balancer dispatches them after the sweep.
#[derive(Default)]
struct Collect(RefCell<Vec<PlannedMove>>);

impl MigrationDispatcher for Collect {
    fn dispatch(&self, planned: &PlannedMove) -> Result<(), DispatchError> {
        self.0.borrow_mut().push(planned.clone());
        Ok(())
    }
}

/// The balancer's requests are answered at once by a leader: they behave like the
/// migration executor's.
fn call_policy() -> CallPolicy {
    crate::node::mover::move_policy()
}
