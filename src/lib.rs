//! # nodedb-cluster
//!
//! A thread-per-core distributed coordination layer. Data is cut into **vShards**; each vShard
//! is one Raft group replicated over `(node, core)` **replicas**; every core owns its
//! replicas; the coordinator core of the metadata leader runs a load-based **rebalancer** that
//! moves leadership and replicas so that every node and every core carries its share.
//!
//! The crate is split in two. Everything that *decides* is sans-IO and deterministic: it
//! never reads a clock, never draws OS randomness, never touches a socket, a file or glommio.
//! Inputs come in as arguments (`now: Time` included), decisions come out as values. The
//! [`runtime`] module is the thin shell that feeds those modules real time (and, later, real
//! bytes) on glommio executors. This is what makes whole-cluster simulation possible.
//!
//! ## Planning a rebalance, step by step
//!
//! 1. Describe the cluster: nodes with their cores, and an initial placement.
//! 2. Gather load: one metrics row per node, one sample per vShard.
//! 3. Ask the planner; it returns at most ten moves and says whether more will follow.
//!
//! ```
//! use nodedb_cluster::balance::{MoveKind, PlanInput, Planner, PlannerConfig, PlanStatus};
//! use nodedb_cluster::ids::{NodeId, VShardId};
//! use nodedb_cluster::balance::load::{LoadMetrics, VShardLoad};
//! use nodedb_cluster::cluster::placement::PlacementTable;
//! use nodedb_cluster::time::Time;
//! use nodedb_cluster::cluster::topology::{ClusterTopology, NodeInfo, NodeState};
//!
//! // 1. Three nodes with two cores each, 64 vShards, three replicas.
//! let mut topology = ClusterTopology::new();
//! for id in 0..3 {
//!     let addr = format!("127.0.0.1:{}", 7000 + 100 * id);
//!     topology.add_node(NodeInfo { node_id: NodeId(id), addr, cores: 2, state: NodeState::Active })?;
//! }
//! let placement = PlacementTable::initial(&topology, 64, 3)?;
//!
//! // 2. Node 0 leads the hot vShards.
//! let loads: Vec<VShardLoad> = placement
//!     .iter()
//!     .map(|(vshard, entry)| {
//!         let hot = entry.leader().node == NodeId(0);
//!         let reads = if hot { 900.0 } else { 100.0 };
//!         VShardLoad { vshard, bytes: 1 << 20, writes_per_sec: 10.0, reads_per_sec: reads }
//!     })
//!     .collect();
//! let metrics: Vec<LoadMetrics> = topology.nodes().map(|n| LoadMetrics::idle(n.node_id)).collect();
//!
//! // 3. Plan. Leadership is enough to fix a read hot spot: no data moves.
//! let mut planner = Planner::new(PlannerConfig::default())?;
//! let input = PlanInput { topology: &topology, placement: &placement, node_metrics: &metrics, vshard_loads: &loads };
//! let plan = planner.plan(Time::ZERO, &input)?;
//! assert!(plan.moves.iter().all(|m| m.kind == MoveKind::LeaderTransfer));
//! assert_eq!(plan.status, PlanStatus::Converged);
//! assert!(plan.node_max_over_mean_after < plan.node_max_over_mean_before);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! The CLI's `rebalance-sim` runs this loop on a synthetic cluster until the plan is empty
//! (see [`balance::harness`]).

pub mod balance;
pub mod client;
pub mod cluster;
pub mod constants;
pub mod ids;
pub mod metrics;
pub mod node;
pub mod plot;
pub mod replication;
pub mod rng;
pub mod runtime;
pub mod sim;
pub mod time;
pub mod wire;
