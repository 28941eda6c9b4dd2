//! Load balancing: what load is reported, the load model, the planner, the sweep decision and
//! the evaluation harness.
//!
//! Everything here is sans-IO and deterministic; `runtime::rebalancer` drives
//! [`rebalancer::Rebalancer`] periodically on the coordinator core.

pub mod harness;
pub mod load;
pub mod model;
pub mod planner;
pub mod rebalancer;
pub mod report;

pub use planner::{
    MoveBudget, MoveKind, MoveReason, Plan, PlanError, PlanInput, PlanStatus, PlannedMove, Planner,
    PlannerConfig,
};
pub use rebalancer::{
    ClusterLoad, DispatchError, ElectionGate, LoadMetricsProvider, MigrationDispatcher,
    ProviderError, Rebalancer, RebalancerConfig, SweepOutcome,
};
