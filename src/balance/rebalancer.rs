//! One rebalancer sweep, decided without I/O: gates, plan, fire-and-forget dispatch.
//!
//! The periodic driver (`runtime::rebalancer`) calls [`Rebalancer::sweep`] on the coordinator
//! core of the metadata leader every interval, or at once when kicked by a membership
//! change. A sweep:
//! 1. is skipped while any Raft group is electing (moves would race the election);
//! 2. is skipped while the coordinator core is busier than the back-pressure threshold
//!    (0.80 of its time): planning and dispatching would slow the core that also serves
//!    the metadata group;
//! 3. asks the planner for at most ten moves, within the move budget (the limits on moves
//!    in flight, less what is in flight);
//! 4. hands each move to the dispatcher and does not wait for it; a dispatch error is counted
//!    and logged, and the sweep goes on with the next move.

use std::sync::Arc;

use thiserror::Error;
use tracing::{debug, info, warn};

use crate::balance::load::{LoadMetrics, VShardLoad};
use crate::balance::planner::{MoveBudget, Plan, PlanInput, PlanStatus, PlannedMove, Planner};
use crate::cluster::placement::PlacementTable;
use crate::cluster::topology::ClusterTopology;
use crate::constants::REBALANCE_CPU_BACKPRESSURE;
use crate::metrics::loops::LoopMetrics;
use crate::time::Time;

/// Name of the rebalancer loop in metrics.
pub const LOOP_NAME: &str = "rebalancer";
/// Error kinds the rebalancer counts.
pub const ERROR_KINDS: &[&str] = &["metrics", "plan", "dispatch"];
/// Reasons a sweep is skipped.
pub const SKIP_REASONS: &[&str] = &["election", "cpu_backpressure"];

/// Tells whether any Raft group is electing a leader right now.
pub trait ElectionGate {
    fn any_group_electing(&self) -> bool;
}

/// What the planner needs, gathered from the metadata group and the per-core load slots.
#[derive(Clone, Debug)]
pub struct ClusterLoad {
    pub topology: ClusterTopology,
    pub placement: PlacementTable,
    pub node_metrics: Vec<LoadMetrics>,
    pub vshard_loads: Vec<VShardLoad>,
    /// Busy fraction of the coordinator's own core (the back-pressure gate).
    pub coordinator_cpu: f64,
    /// What may start this sweep.
    pub budget: MoveBudget,
}

impl ClusterLoad {
    /// Load with an idle coordinator, nothing in flight and the default move limits.
    pub fn new(
        topology: ClusterTopology,
        placement: PlacementTable,
        node_metrics: Vec<LoadMetrics>,
        vshard_loads: Vec<VShardLoad>,
    ) -> ClusterLoad {
        let budget = MoveBudget::idle(topology.len());
        ClusterLoad {
            topology,
            placement,
            node_metrics,
            vshard_loads,
            coordinator_cpu: 0.0,
            budget,
        }
    }
}

/// Supplies the current cluster load.
pub trait LoadMetricsProvider {
    fn cluster_load(&self) -> Result<ClusterLoad, ProviderError>;
}

/// The load could not be gathered.
#[derive(Debug, Error)]
#[error("load metrics unavailable: {0}")]
pub struct ProviderError(pub String);

/// Starts a move; returns once the move is accepted, not when it finishes.
pub trait MigrationDispatcher {
    fn dispatch(&self, planned: &PlannedMove) -> Result<(), DispatchError>;
}

/// The dispatcher refused a move.
#[derive(Debug, Error)]
#[error("dispatch refused: {0}")]
pub struct DispatchError(pub String);

/// Configuration of the sweep gates.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct RebalancerConfig {
    /// Skip the sweep while the coordinator core's busy fraction is at or above this.
    pub cpu_backpressure: f64,
}

impl Default for RebalancerConfig {
    fn default() -> Self {
        RebalancerConfig {
            cpu_backpressure: REBALANCE_CPU_BACKPRESSURE,
        }
    }
}

/// What one sweep did.
#[derive(Debug, PartialEq)]
pub enum SweepOutcome {
    /// Some group is electing; nothing was planned.
    SkippedElection,
    /// The coordinator core is overloaded; nothing was planned.
    SkippedBackpressure { cpu_utilization: f64 },
    /// The provider or planner failed; counted as an error.
    Failed,
    /// The planner ran; `dispatched` moves were accepted, `failed` refused.
    Planned {
        status: PlanStatus,
        dispatched: usize,
        failed: usize,
    },
}

/// The rebalancer's sans-IO state: planner, gates and loop metrics.
#[derive(Debug)]
pub struct Rebalancer {
    planner: Planner,
    config: RebalancerConfig,
    metrics: Arc<LoopMetrics>,
    last_plan: Option<Plan>,
}

impl Rebalancer {
    pub fn new(planner: Planner, config: RebalancerConfig) -> Rebalancer {
        let metrics = Arc::new(LoopMetrics::new(LOOP_NAME, ERROR_KINDS, SKIP_REASONS));
        Rebalancer {
            planner,
            config,
            metrics,
            last_plan: None,
        }
    }

    /// The loop metrics, to register in the process's `MetricsRegistry`.
    pub fn metrics(&self) -> &Arc<LoopMetrics> {
        &self.metrics
    }

    /// The planner (its configuration and state).
    pub fn planner(&self) -> &Planner {
        &self.planner
    }

    pub fn planner_mut(&mut self) -> &mut Planner {
        &mut self.planner
    }

    /// The plan of the last sweep that reached the planner.
    pub fn last_plan(&self) -> Option<&Plan> {
        self.last_plan.as_ref()
    }

    /// Runs one sweep at `now`. The caller records the iteration and its duration.
    pub fn sweep(
        &mut self,
        now: Time,
        gate: &dyn ElectionGate,
        provider: &dyn LoadMetricsProvider,
        dispatcher: &dyn MigrationDispatcher,
    ) -> SweepOutcome {
        if gate.any_group_electing() {
            debug!("rebalancer sweep skipped: a group is electing");
            self.metrics.record_skip("election");
            return SweepOutcome::SkippedElection;
        }
        let load = match provider.cluster_load() {
            Ok(load) => load,
            Err(e) => {
                warn!(error = %e, "rebalancer sweep failed");
                self.metrics.record_error("metrics");
                return SweepOutcome::Failed;
            }
        };
        let cpu = load.coordinator_cpu;
        if cpu.is_finite() && cpu >= self.config.cpu_backpressure {
            info!(
                cpu,
                "rebalancer sweep skipped: the coordinator core is overloaded"
            );
            self.metrics.record_skip("cpu_backpressure");
            return SweepOutcome::SkippedBackpressure {
                cpu_utilization: cpu,
            };
        }
        let input = PlanInput {
            topology: &load.topology,
            placement: &load.placement,
            node_metrics: &load.node_metrics,
            vshard_loads: &load.vshard_loads,
        };
        let plan = match self.planner.plan_within(now, &input, &load.budget) {
            Ok(plan) => plan,
            Err(e) => {
                warn!(error = %e, "rebalancer could not plan");
                self.metrics.record_error("plan");
                return SweepOutcome::Failed;
            }
        };
        let (mut dispatched, mut failed) = (0, 0);
        for planned in &plan.moves {
            match dispatcher.dispatch(planned) {
                Ok(()) => dispatched += 1,
                Err(e) => {
                    warn!(vshard = %planned.vshard, error = %e, "move not dispatched");
                    self.metrics.record_error("dispatch");
                    failed += 1;
                }
            }
        }
        match plan.status {
            _ if !plan.moves.is_empty() => {
                info!(moves = plan.moves.len(), status = ?plan.status, "rebalancer dispatched a plan")
            }
            PlanStatus::NoMetrics | PlanStatus::NoActiveNodes => {
                warn!(status = ?plan.status, "rebalancer cannot plan")
            }
            _ => debug!(status = ?plan.status, "rebalancer planned nothing"),
        }
        if plan.drain_blocked > 0 {
            warn!(
                replicas = plan.drain_blocked,
                "draining replicas have no eligible target"
            );
        }
        let status = plan.status;
        self.last_plan = Some(plan);
        SweepOutcome::Planned {
            status,
            dispatched,
            failed,
        }
    }
}
