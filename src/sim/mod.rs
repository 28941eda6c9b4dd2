//! The deterministic cluster simulator: every core of every node in one thread, on a
//! virtual clock, with a seeded network and disk that misbehave.
//!
//! Each simulated core runs the very [`NodeCore`] a node runs — hosting from the placement
//! table, request routing and forwarding, the metadata group with its bootstrap and table
//! hand-out, the migration executor — over the real `RaftHost`, state machines, log record
//! format and recovery ([`disk`]). Clients and the operator are real client [`Call`]s
//! ([`clients`], [`operator`]). Only the I/O is simulated: the network ([`network`]), the
//! disk, time and the process (crashes, pauses, clock jumps).
//!
//! A run draws its fault rates from its seed (VOPR style, [`faults`]), then has two phases.
//! The **safety phase** runs clients while messages are lost, duplicated, delayed and
//! reordered, links are cut (both ways or one way), fsyncs are slow, nodes crash mid-write
//! (the record being written is lost, torn or lands whole) and restart from their log, a
//! disk's synced data is corrupted (the node must refuse to start; the operator then
//! decommissions it and its replicas are moved elsewhere), leadership is transferred and
//! replicas move between nodes and cores — all at once. The **liveness phase** heals
//! everything and requires every group to accept a write, and every replica move to
//! finish, within a bounded time. The checkers ([`checks`]) then verify linearizability
//! per key, one leader per term, identical applied entries, and convergence. The same seed
//! always gives the same run; `trace_hash` proves it. Known bugs can be injected ([`Bug`])
//! to show the checkers catch them, two of them inside the node core's request path.
//!
//! [`Call`]: crate::client::call::Call

pub mod checks;
pub mod clients;
pub mod disk;
pub mod faults;
mod hostile;
pub mod linearizability;
pub mod network;
pub mod operator;
mod scenario;

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::net::SocketAddr;
use std::time::Duration;

use serde::Serialize;

use crate::client::call::Failure;
use crate::client::routing::Routing;
use crate::cluster::metadata::MetadataStore;
use crate::cluster::spec::ClusterSpec;
use crate::cluster::topology::NodeState;
use crate::cluster::vshard::VShardMap;
use crate::constants::{CLIENT_CONNECT_TIMEOUT, LIVENESS_CONFIRM_WITHIN};
use crate::ids::{CoreAddress, CoreId, GroupId, NodeId, ReplicaId};
use crate::node::cell::Cell;
use crate::node::{BalanceConfig, CoreConfig, LogWrite, Mail, NodeBug, NodeCore, Transmit};
use crate::replication::kv::KvStore;
use crate::replication::raft_host::{Compaction, PersistBatch, SnapshotPolicy};
use crate::rng::{Rng, mix64};
use crate::sim::checks::Checks;
use crate::sim::clients::SimClient;
use crate::sim::disk::{SimDisk, Tear};
use crate::sim::faults::Faults;
use crate::sim::linearizability::RegisterOp;
use crate::sim::network::{Endpoint, Network, Payload};
use crate::sim::operator::Operator;
use crate::time::Time;
use crate::wire::kv_rpc::{KvReply, KvRequest};

pub use scenario::{OpHandle, Scenario};

/// A deliberate bug, to show that the checkers find it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum Bug {
    /// Tell Raft a batch is durable as soon as it is written, before the fsync completes.
    AckBeforeFsync,
    /// Forget the term and vote on restart: the original NodeDB never persisted them.
    ForgetVote,
    /// The node core answers reads from whatever replica a request reached, without
    /// ReadIndex ([`NodeBug::ReadWithoutReadIndex`]).
    StaleRead,
    /// The node core acknowledges a put when it is proposed, before it commits
    /// ([`NodeBug::AckWriteBeforeCommit`]).
    EarlyWriteAck,
}

impl Bug {
    /// The bug planted in the node core, if this one lives there.
    fn in_node(self) -> Option<NodeBug> {
        match self {
            Bug::StaleRead => Some(NodeBug::ReadWithoutReadIndex),
            Bug::EarlyWriteAck => Some(NodeBug::AckWriteBeforeCommit),
            Bug::AckBeforeFsync | Bug::ForgetVote => None,
        }
    }
}

/// What to simulate.
#[derive(Clone, Debug)]
pub struct SimOptions {
    pub seed: u64,
    pub nodes: u64,
    /// Cores per node: each runs its own node core, with its own Raft host and log.
    pub cores: u16,
    /// Replicas per group.
    pub replicas: u16,
    pub groups: u32,
    pub clients: usize,
    pub keys: u64,
    /// Steps (of `STEP`) with faults, then steps allowed for recovery.
    pub safety_steps: u64,
    pub liveness_steps: u64,
    pub bug: Option<Bug>,
    /// The rebalancer runs in the simulated nodes (with `sim_balance`'s short intervals).
    pub rebalance: bool,
}

impl SimOptions {
    /// Four nodes of two cores, four groups of three replicas: a replica always has a
    /// node to move to, and a node whose disk fails can be replaced. Eight keys, two per
    /// group: few enough to contend.
    pub fn new(seed: u64) -> SimOptions {
        SimOptions {
            seed,
            nodes: 4,
            cores: 2,
            replicas: 3,
            groups: 4,
            clients: 4,
            keys: 8,
            safety_steps: 2_000,
            liveness_steps: 3_000,
            bug: None,
            rebalance: true,
        }
    }
}

/// The rebalancer's settings in the simulator: the defaults' limits, with intervals short
/// enough for a run of tens of virtual seconds to see many reports and sweeps, and no
/// noise floor.
pub fn sim_balance(enabled: bool) -> BalanceConfig {
    BalanceConfig {
        enabled,
        interval: Duration::from_secs(2),
        report_interval: Duration::from_secs(1),
        // Simulated clients send a few requests a second: everything counts, so that the
        // rebalancer moves replicas and leaders while faults go on.
        significant_rate_per_core: 0.0,
        significant_bytes_per_core: 0.0,
        // A node crashed or cut off for seconds is recorded `Down` and its replicas are
        // replaced while faults go on; it returns to `Active` once heard again.
        dead_after: Duration::from_secs(3),
        ..BalanceConfig::default()
    }
}

/// One simulated step of virtual time.
pub const STEP: Duration = Duration::from_millis(10);

/// Steps after a move ended in which the run still waits for what follows it (a drained
/// node recorded `Decommissioned` once its last move ended): 3 s, a few coordinator turns.
const FOLLOW_UP_STEPS: u64 = 300;

/// Mixed into the seed for the join draw (`Sim::new`).
const JOIN_SALT: u64 = 0x6a6f_696e_6a6f_696e;
/// When the simulated nodes compact and which snapshots they treat as large (kept as views,
/// written ahead of their install when received): small, so that runs with a few hundred
/// writes take those paths under faults. Nodes use `SnapshotPolicy::default()`.
const SIM_SNAPSHOTS: SnapshotPolicy = SnapshotPolicy {
    compact_entries: 4,
    large_bytes: 16,
};

/// The result of one run.
#[derive(Clone, Debug, Default, Serialize)]
pub struct SimReport {
    pub seed: u64,
    pub faults: Option<Faults>,
    pub ops_completed: u64,
    pub ops_unknown: u64,
    pub crashes: u64,
    pub partitions: u64,
    /// Crashes that tore the record being written (recovery cut it off).
    pub torn_writes: u64,
    /// Compactions kept as views and streamed to disk, and received snapshots written
    /// ahead of their install (the large-snapshot paths).
    pub compaction_views: u64,
    pub snapshots_written_ahead: u64,
    /// Of those, the ones streamed into their file and state as their chunks arrived.
    pub snapshots_streamed: u64,
    /// Logs whose synced data was damaged, and nodes that refused to start because of it.
    pub corruptions: u64,
    pub corruptions_refused: u64,
    /// Replica moves recorded in the placement table (the operator's, including the
    /// replacements of a failed node's replicas), and those that ended (moved, or
    /// abandoned because the target was decommissioned).
    pub moves_started: u64,
    pub moves_finished: u64,
    /// Answers that told a client its table was stale (a stale-epoch redirect).
    pub stale_routes: u64,
    /// Keys whose linearizability search ran out of budget: not checked, so not passed.
    pub unchecked_keys: u64,
    /// Acts of the hostile participant (`sim::hostile`), and its requests refused with an
    /// error (the rest were lost, redirected, or unanswered).
    pub hostile_acts: u64,
    pub hostile_refused: u64,
    /// The fraction of client operations on the hot group's keys (drawn per seed), and what
    /// the rebalancer in the nodes did: sweeps, leader transfers and replica moves it
    /// dispatched (summed over every coordinator of the run).
    pub skew: f64,
    pub rebalancer_sweeps: u64,
    pub rebalancer_transfers: u64,
    pub rebalancer_moves: u64,
    /// Healthy nodes the operator drained (`kv decommission`), and how those drains ended:
    /// decommissioned holding nothing, or active again (`kv recommission`).
    pub drains: u64,
    /// (A drain the metadata group refused, or whose request was lost, ends neither way.)
    pub drains_decommissioned: u64,
    pub drains_recommissioned: u64,
    /// Nodes the failure detector had recorded `Down` (their replicas then replaced), and
    /// `Down` nodes recorded `Active` again once heard alive.
    pub nodes_marked_down: u64,
    pub nodes_back_active: u64,
    /// New nodes that asked to join the running cluster (`add_node`, as `start --join`
    /// does; one run in three with the rebalancer on), those `Active` at the end, and the
    /// replicas they held then.
    pub joins: u64,
    pub joins_active: u64,
    pub joined_replicas: u64,
    /// Crashes, clock jumps, pauses and partitions that struck while some replica was
    /// quiesced.
    pub faults_while_quiesced: [u64; 4],
    pub virtual_seconds: f64,
    pub trace_hash: u64,
    pub violations: Vec<String>,
}

/// A batch being made durable: durable at `durable_at` unless the node crashes first.
struct Writing {
    batch: PersistBatch,
    durable_at: u64,
    /// Raft was already told it is durable (`Bug::AckBeforeFsync`).
    acked: bool,
}

/// One core of a node: its node core while the node runs, its log, the batches being
/// written.
struct SimCore {
    node: Option<NodeCore<Endpoint>>,
    disk: SimDisk,
    writing: VecDeque<Writing>,
    /// Received snapshots' files being written ahead of their install: (durable at step,
    /// group, index, written — or abandoned). The disk holds no files: the install's batch
    /// carries the data (a streamed snapshot's, from `streamed`).
    ahead: VecDeque<(u64, GroupId, u64, bool)>,
    /// Streamed snapshots' files, by (group, index): their bytes so far. The install's
    /// batch names one by its snapshot (its data empty), as the log does a file.
    streamed: BTreeMap<(GroupId, u64), (Vec<u8>, bool)>,
}

/// A file written ahead is reported (written, or abandoned) at `at`, or after every file
/// reported before it (`ahead`, a core's): in order, a later file is never durable before
/// an earlier one here.
fn file_done(
    ahead: &mut VecDeque<(u64, GroupId, u64, bool)>,
    at: u64,
    group: GroupId,
    index: u64,
    written: bool,
) {
    let at = ahead.back().map_or(at, |a| a.0.max(at));
    ahead.push_back((at, group, index, written));
}

impl SimNode {
    /// A node that has not started: empty disks.
    fn new(cores: u16) -> SimNode {
        SimNode {
            cores: (0..cores)
                .map(|_| SimCore {
                    node: None,
                    disk: SimDisk::new(),
                    writing: VecDeque::new(),
                    ahead: VecDeque::new(),
                    streamed: BTreeMap::new(),
                })
                .collect(),
            up: false,
            failed: false,
            corrupted: false,
            down_until: None,
            terms_at_crash: BTreeMap::new(),
            clock_ahead: Duration::ZERO,
            paused_until: 0,
            mail: Vec::new(),
        }
    }
}

struct SimNode {
    cores: Vec<SimCore>,
    up: bool,
    /// The node's disk failed (its log was refused): it stays down for good.
    failed: bool,
    /// Synced data in one of its logs was damaged: its next start must refuse the log.
    corrupted: bool,
    down_until: Option<u64>,
    /// The durable term of each (core, group) when the node crashed: a restart must not go
    /// below it.
    terms_at_crash: BTreeMap<(usize, GroupId), u64>,
    /// How far this node's clock runs ahead of true time (clock jumps).
    clock_ahead: Duration,
    /// The node's process is paused (no ticks, no I/O) until this step.
    paused_until: u64,
    /// Mail between the node's cores, delivered at the next step.
    mail: Vec<(CoreId, Mail<Endpoint>)>,
}

/// Runs one seed. A panic inside (raft-rs asserts its invariants, e.g. a commit index past
/// the log, which only broken durability can cause) is reported as a violation.
pub fn run(options: &SimOptions) -> SimReport {
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| Sim::new(options).run())) {
        Ok(report) => report,
        Err(panic) => {
            let message = panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| (*s).to_owned()))
                .unwrap_or_else(|| "unknown panic".into());
            SimReport {
                seed: options.seed,
                faults: Some(Faults::draw(&mut Rng::new(options.seed))),
                violations: vec![format!("panic: {message}")],
                ..SimReport::default()
            }
        }
    }
}

struct Sim {
    o: SimOptions,
    spec: ClusterSpec,
    /// Scripted scenarios: no random faults, no random client operations.
    scripted: bool,
    rng: Rng,
    faults: Faults,
    step: u64,
    nodes: BTreeMap<NodeId, SimNode>,
    network: Network,
    clients: Vec<SimClient>,
    operator: Operator,
    /// The node the operator drained, and the step it asks for it back, if it will.
    retired: Option<(NodeId, Option<u64>)>,
    /// The operator asked for the drained node back.
    recommissioned: bool,
    /// The step from which a new node asks to join (again, after a failed request).
    join_at: Option<u64>,
    /// Nodes the metadata group accepted as joined: they start as `start --join` does.
    joined: BTreeSet<NodeId>,
    checks: Checks,
    trace: u64,
    report: SimReport,
    next_op: u64,
    /// Groups that completed a write after the cluster was healed.
    healed_writes: BTreeSet<GroupId>,
    /// The keys clients use: key `i` of `keys` lives in group `1 + i mod groups` under the
    /// real key → group hash (which the nodes check).
    key_table: Vec<u64>,
    vshards: VShardMap,
    hostile: hostile::Hostile,
    /// Completed operations' results, by op id (scenarios look them up).
    results: HashMap<u64, RegisterOp>,
    /// Moves seen in the freshest table, and the highest epoch observed.
    moves_seen: BTreeSet<(GroupId, ReplicaId)>,
    /// Each node's state in the freshest topology seen: `Down` transitions are counted.
    node_states: BTreeMap<NodeId, NodeState>,
    /// When each move under way was first seen (step).
    move_seen_at: BTreeMap<(GroupId, ReplicaId), u64>,
    /// Nodes not reachable now (down, paused, or with a link cut), since when (step); and
    /// each node's outages that ended in the last `FOLLOW_UP_STEPS` (length and end,
    /// steps): a node recorded `Down` must have been out for `dead_after` (`check_down`).
    unreachable_since: BTreeMap<NodeId, u64>,
    outages: BTreeMap<NodeId, Vec<(u64, u64)>>,
    /// When a move last left the table (step): what follows a move (a drain's end) gets
    /// `FOLLOW_UP_STEPS` more before the run gives up on settling.
    last_move_ended: u64,
    observed_epoch: u64,
    /// Requests to a node that was down: the sender hears the connection was refused once
    /// its connect timeout passes (step due, sender, request id).
    refused: Vec<(u64, Endpoint, u64)>,
    balance: BalanceConfig,
    /// Clients send this fraction of their operations to the hot group's keys.
    skew: f64,
    /// When the cluster settled after healing; replica moves started since, per group.
    settled_at: Option<u64>,
    moved_after_settle: Vec<(GroupId, CoreAddress, CoreAddress)>,
}

impl Sim {
    fn new(o: &SimOptions) -> Sim {
        let o = o.clone();
        assert!(
            o.replicas >= 1 && u64::from(o.replicas) <= o.nodes && o.cores >= 1,
            "replicas must fit on distinct nodes"
        );
        let vshards = VShardMap::new(o.groups).expect("groups must be a power of two");
        let mut rng = Rng::new(o.seed);
        let faults = Faults::draw(&mut rng);
        // Load skew: none, some or most operations on one group's keys.
        let skew = [0.0, 0.5, 0.8][rng.below(3) as usize];
        let report = SimReport {
            seed: o.seed,
            faults: Some(faults.clone()),
            skew,
            ..SimReport::default()
        };
        // Addresses only name the nodes in the topology; nothing binds them.
        let spec = ClusterSpec {
            nodes: (1..=o.nodes)
                .map(|n| (NodeId(n), SocketAddr::from(([10, 0, 0, n as u8], 7000))))
                .collect(),
            cores: o.cores,
            groups: o.groups,
            replicas: o.replicas,
        };
        let routing = |first: usize| Routing::starting_at(&spec, first).expect("a valid spec");
        let nodes = (1..=o.nodes)
            .map(|n| (NodeId(n), SimNode::new(o.cores)))
            .collect();
        // Drawn apart from the run's generator, so runs without a join replay as before.
        let mut join_draw = Rng::new(o.seed ^ JOIN_SALT);
        let join_at = (o.rebalance && join_draw.below(3) == 0)
            .then(|| 100 + join_draw.below(o.safety_steps.saturating_sub(600).max(1)));
        let mut sim = Sim {
            clients: (0..o.clients)
                .map(|c| SimClient::new(routing(c), None))
                .collect(),
            operator: Operator::new(routing(0)),
            retired: None,
            recommissioned: false,
            join_at,
            joined: BTreeSet::new(),
            spec,
            scripted: false,
            rng,
            faults,
            step: 0,
            nodes,
            network: Network::default(),
            checks: Checks::default(),
            trace: 0,
            report,
            next_op: 1,
            healed_writes: BTreeSet::new(),
            key_table: key_table(&vshards, o.keys),
            vshards,
            hostile: hostile::Hostile::new(o.seed),
            results: HashMap::new(),
            moves_seen: BTreeSet::new(),
            node_states: BTreeMap::new(),
            move_seen_at: BTreeMap::new(),
            last_move_ended: 0,
            unreachable_since: BTreeMap::new(),
            outages: BTreeMap::new(),
            observed_epoch: 0,
            refused: Vec::new(),
            balance: sim_balance(o.rebalance),
            skew,
            settled_at: None,
            moved_after_settle: Vec::new(),
            o,
        };
        let ids: Vec<NodeId> = sim.nodes.keys().copied().collect();
        for n in ids {
            sim.start(n);
        }
        sim
    }

    /// True time.
    fn now(&self) -> Time {
        Time::ZERO + STEP * self.step as u32
    }

    /// Time as node `n`'s clock reads it.
    fn node_now(&self, n: NodeId) -> Time {
        self.now() + self.nodes.get(&n).map_or(Duration::ZERO, |n| n.clock_ahead)
    }

    fn record(&mut self, a: u64, b: u64) {
        self.trace = mix64(self.trace ^ mix64(a.wrapping_mul(31).wrapping_add(b)));
    }

    fn core_mut(&mut self, at: CoreAddress) -> Option<&mut NodeCore<Endpoint>> {
        self.nodes
            .get_mut(&at.node)?
            .cores
            .get_mut(usize::from(at.core.0))?
            .node
            .as_mut()
    }

    fn core(&self, at: CoreAddress) -> Option<&NodeCore<Endpoint>> {
        self.nodes
            .get(&at.node)?
            .cores
            .get(usize::from(at.core.0))?
            .node
            .as_ref()
    }

    fn running(&self, n: NodeId) -> bool {
        self.nodes
            .get(&n)
            .is_some_and(|node| node.up && node.paused_until <= self.step)
    }

    /// Starts node `n`: every core replays its log into a node core. A log that recovery
    /// refuses (corruption) fails the node for good.
    fn start(&mut self, n: NodeId) {
        let node_bug = self.o.bug.and_then(Bug::in_node);
        let forget_vote = self.o.bug == Some(Bug::ForgetVote);
        let joined = self.joined.contains(&n);
        if !joined && self.spec.nodes.iter().all(|(id, _)| *id != n) {
            // A new node whose join was not accepted yet.
            return;
        }
        let node = self.nodes.get_mut(&n).expect("known node");
        if node.failed || node.up {
            return;
        }
        let mut recovered = Vec::new();
        for core in &mut node.cores {
            match core.disk.recover() {
                Ok(groups) => recovered.push(groups),
                Err(e) => {
                    node.failed = true;
                    node.down_until = None;
                    self.report.corruptions_refused += 1;
                    tracing::debug!(node = n.0, error = %e, "the log is corrupt; the node stays down");
                    self.record(14, n.0);
                    return;
                }
            }
        }
        if node.corrupted {
            self.checks.violations.push(format!(
                "node {n} started from a log whose synced data was damaged"
            ));
        }
        for (c, mut groups) in recovered.into_iter().enumerate() {
            if forget_vote {
                for p in groups.values_mut() {
                    p.hard_state.vote = 0;
                    p.hard_state.term = p.entries.last().map_or(0, |e| e.term);
                }
            }
            // Raft (Figure 2): currentTerm is persistent; a server's term never goes back.
            for (g, p) in &groups {
                let before = node.terms_at_crash.get(&(c, *g)).copied().unwrap_or(0);
                if p.hard_state.term < before {
                    self.checks.violations.push(format!(
                        "group {} on {n}/c{c} restarted at term {} after term {before}",
                        g.0, p.hard_state.term
                    ));
                }
            }
            let config = CoreConfig {
                local: CoreAddress::new(n, CoreId(c as u16)),
                spec: self.spec.clone(),
                audit: true,
                bug: node_bug,
                balance: self.balance,
                // Later starts get higher incarnations, as wall-clock time gives in nodes.
                incarnation: self.step + 1,
                joined,
                snapshots: SIM_SNAPSHOTS,
                quiesce: true,
            };
            match NodeCore::new(config, groups) {
                Ok(core) => node.cores[c].node = Some(core),
                Err(e) => self
                    .checks
                    .violations
                    .push(format!("{n}/c{c} could not start from its log: {e}")),
            }
        }
        node.up = true;
        node.down_until = None;
        node.mail.clear();
    }

    /// The node that asks to join the cluster in this run, once it has asked.
    fn joining(&self) -> Option<NodeId> {
        let node = NodeId(self.o.nodes + 1);
        self.nodes.contains_key(&node).then_some(node)
    }

    /// Crashes node `n`: a record being written is lost, torn or lands whole; nothing else
    /// unsynced survives. It restarts after `down_steps`, or when told to.
    fn crash(&mut self, n: NodeId, down_steps: Option<u64>) {
        let step = self.step;
        let Some(node) = self.nodes.get_mut(&n) else {
            return;
        };
        if !node.up {
            return;
        }
        node.terms_at_crash.clear();
        if let Some(stats) = node.cores[0].node.as_ref().and_then(|c| c.balancer_stats()) {
            self.report.rebalancer_sweeps += stats.sweeps;
            self.report.rebalancer_transfers += stats.leader_transfers_started;
            self.report.rebalancer_moves += stats.replica_moves_started;
        }
        for (c, core) in node.cores.iter_mut().enumerate() {
            // The durable term is what a restart must not go below (a term only in memory
            // may be lost: votes leave only once durable).
            for (g, term) in core.disk.terms() {
                node.terms_at_crash.insert((c, g), term);
            }
            if let Some(w) = core.writing.pop_front()
                && core.disk.crash_during(&w.batch.writes, &mut self.rng) == Tear::Torn
            {
                self.report.torn_writes += 1;
            }
            core.writing.clear();
            core.ahead.clear();
            core.streamed.clear();
            core.node = None;
        }
        node.up = false;
        node.mail.clear();
        node.down_until = down_steps.map(|d| step + d);
        self.report.crashes += 1;
        self.network.drop_to(n);
        self.record(5, n.0);
    }

    fn restart_due(&mut self) {
        let due: Vec<NodeId> = self
            .nodes
            .iter()
            .filter(|(_, n)| n.down_until.is_some_and(|t| t <= self.step))
            .map(|(i, _)| *i)
            .collect();
        for n in due {
            self.start(n);
            self.record(7, n.0);
        }
    }

    fn run(mut self) -> SimReport {
        let total = self.o.safety_steps + self.o.liveness_steps;
        let mut healed = false;
        // Liveness: every group commits a write within the liveness phase, and every move
        // finishes within that long of the later of healing and its own start (a move the
        // rebalancer or the operator starts late in the phase gets its full window), and
        // what follows a move's end (a drain's end) within `FOLLOW_UP_STEPS` of it.
        let extend = |sim: &Sim| {
            sim.settled_at.is_none()
                && sim.step < total + sim.o.liveness_steps
                && (sim
                    .move_seen_at
                    .values()
                    .any(|at| *at + sim.o.liveness_steps > sim.step)
                    || (sim.move_seen_at.is_empty()
                        && sim.last_move_ended + FOLLOW_UP_STEPS > sim.step))
        };
        while self.step < total || extend(&self) {
            self.step += 1;
            let safety = self.step <= self.o.safety_steps;
            if !safety && !healed {
                // Liveness phase: heal every partition and restart every node that can.
                healed = true;
                self.network.heal();
                let down: Vec<NodeId> = self
                    .nodes
                    .iter()
                    .filter(|(_, n)| !n.up)
                    .map(|(i, _)| *i)
                    .collect();
                for n in down {
                    self.start(n);
                }
            }
            self.advance(safety);
            if healed && self.settled_at.is_none() && self.settled() {
                self.settled_at = Some(self.step);
            }
        }
        // No faults and a steady load mix after settling: a replica moved back to where it
        // came from, or a group moved more than twice, is flapping. (A new metadata leader
        // — leadership may still change after healing — plans afresh, so one group may
        // see two coordinators each move one of its replicas once.)
        let moves = &self.moved_after_settle;
        let reversed = moves.iter().enumerate().find(|(i, (g, from, to))| {
            moves[i + 1..]
                .iter()
                .any(|(g2, from2, to2)| g2 == g && from2 == to && to2 == from)
        });
        let mut per_group: BTreeMap<GroupId, usize> = BTreeMap::new();
        for (g, _, _) in moves {
            *per_group.entry(*g).or_default() += 1;
        }
        let busy: Vec<u64> = per_group
            .iter()
            .filter(|(_, n)| **n > 2)
            .map(|(g, _)| g.0)
            .collect();
        if let Some((_, (g, from, to))) = reversed {
            self.checks.violations.push(format!(
                "rebalancer flapping: group {}'s replica went {from} -> {to} and back after the cluster settled",
                g.0
            ));
        }
        if !busy.is_empty() {
            self.checks.violations.push(format!(
                "rebalancer flapping: groups {busy:?} moved more than twice after the cluster settled"
            ));
        }
        for (id, node) in self.nodes.iter().filter(|(_, n)| n.up) {
            let core = node.cores[0].node.as_ref();
            if let (Some((n, c)), Some(bound)) = (
                core.and_then(|c| c.imbalance()),
                core.and_then(|c| c.node_bound()),
            ) {
                tracing::debug!(seed = self.o.seed, coordinator = %id, skew = self.skew, node_max_over_mean = n, core_max_over_mean = c, bound, "rebalancer at the end");
            }
            if let Some(stats) = node.cores[0].node.as_ref().and_then(|c| c.balancer_stats()) {
                self.report.rebalancer_sweeps += stats.sweeps;
                self.report.rebalancer_transfers += stats.leader_transfers_started;
                self.report.rebalancer_moves += stats.replica_moves_started;
            }
        }
        if let Some((node, _)) = self.retired
            && let Some(info) = self
                .metadata()
                .and_then(|m| m.topology().node(node).cloned())
        {
            self.report.drains += 1;
            match info.state {
                NodeState::Decommissioned => self.report.drains_decommissioned += 1,
                NodeState::Active if self.recommissioned => self.report.drains_recommissioned += 1,
                // Refused (a node was down for good, or too few would remain).
                _ => {}
            }
        }
        if let Some(node) = self.joining()
            && let Some(store) = self.metadata()
        {
            let active = store
                .topology()
                .node(node)
                .is_some_and(|n| n.state == NodeState::Active);
            let replicas: usize = store
                .table()
                .groups()
                .map(|(_, p)| p.addresses().filter(|at| at.node == node).count())
                .sum();
            self.report.joins_active += u64::from(active);
            self.report.joined_replicas += replicas as u64;
        }
        self.report.virtual_seconds = (STEP * self.step as u32).as_secs_f64();
        if self.settled_at.is_none() {
            self.dump_state();
            let moving: Vec<(GroupId, ReplicaId)> = self.moves_seen.iter().copied().collect();
            let unwritten: Vec<GroupId> = (1..=u64::from(self.o.groups))
                .map(GroupId)
                .filter(|g| !self.healed_writes.contains(g))
                .collect();
            self.checks.violations.push(format!(
                "liveness: within {} s of healing, not every group committed a write (missing {unwritten:?}), or a replica move did not finish within that long of healing or of its start (moving {moving:?})",
                (STEP * self.o.liveness_steps as u32).as_secs(),
            ));
        }
        self.check();
        self.report.trace_hash = self.trace;
        self.report
    }

    /// One step with no random faults (scripted scenarios).
    fn step_quietly(&mut self) {
        self.step += 1;
        self.advance(false);
    }

    /// The body of a step: faults (or due restarts), time, mail between cores, the
    /// network, the cores' outputs, the operator, the clients.
    fn advance(&mut self, faults: bool) {
        if faults {
            self.inject_faults();
        } else {
            self.restart_due();
        }
        self.track_outages();
        let ids: Vec<NodeId> = self.nodes.keys().copied().collect();
        for &n in &ids {
            if !self.running(n) {
                continue;
            }
            let now = self.node_now(n);
            let node = self.nodes.get_mut(&n).expect("listed");
            for core in node.cores.iter_mut().filter_map(|c| c.node.as_mut()) {
                core.handle_timeout(now);
            }
            for (c, mail) in std::mem::take(&mut node.mail) {
                if let Some(core) = node.cores[usize::from(c.0)].node.as_mut() {
                    core.handle_mail(now, mail);
                }
            }
        }
        self.deliver();
        for &n in &ids {
            if self.running(n) {
                for c in 0..self.o.cores {
                    self.drive_core(CoreAddress::new(n, CoreId(c)));
                }
            }
        }
        self.operate(faults);
        self.drive_clients();
        if !self.scripted {
            self.drive_hostile();
        }
        self.observe_moves();
    }

    /// Sends a client request from `from` to the core at `target`. A node that is down
    /// refuses the connection: the request never leaves, and the sender learns it after its
    /// connect timeout (as a client of a real node does), so it may safely try elsewhere.
    fn send_request(&mut self, from: Endpoint, target: CoreAddress, request: KvRequest) {
        let up = self.nodes.get(&target.node).is_some_and(|n| n.up);
        if up {
            let (step, to) = (self.step, Endpoint::Core(target));
            let payload = Payload::Request(request);
            self.network
                .send(&mut self.rng, &self.faults, step, from, to, payload);
        } else {
            let due = self.step + (CLIENT_CONNECT_TIMEOUT.as_nanos() / STEP.as_nanos()) as u64;
            self.refused.push((due, from, request.id));
        }
    }

    /// Tells the senders of requests refused by a node that was down.
    fn deliver_refusals(&mut self) {
        let step = self.step;
        let (due, later): (Vec<_>, Vec<_>) =
            self.refused.drain(..).partition(|(at, ..)| *at <= step);
        self.refused = later;
        let now = self.now();
        for (_, sender, id) in due {
            let failure = Failure::NotSent("connection refused".into());
            match sender {
                Endpoint::Client(c) => self.clients[c].on_refused(now, id, failure),
                Endpoint::Operator => self.operator.on_refused(now, id, failure),
                Endpoint::Hostile => {}
                Endpoint::Core(at) => {
                    let now = self.node_now(at.node);
                    if let Some(core) = self.core_mut(at) {
                        core.handle_call_reply(now, id, Err(failure));
                    }
                }
            }
        }
    }

    /// Delivers the messages that are due.
    fn deliver(&mut self) {
        self.deliver_refusals();
        let step = self.step;
        let nodes = &self.nodes;
        let due = self.network.due(step, |n| {
            nodes.get(&n).is_some_and(|x| x.paused_until > step)
        });
        for m in due {
            if self.network.is_cut(m.from, m.to) {
                continue;
            }
            let to = match m.to {
                Endpoint::Core(at) => (at.node.0 << 16) | u64::from(at.core.0),
                Endpoint::Client(c) => (1 << 40) | c as u64,
                Endpoint::Operator => 1 << 41,
                Endpoint::Hostile => 1 << 42,
            };
            let size = match &m.payload {
                Payload::Raft(b) | Payload::Chunk(b) | Payload::Liveness(b) => b.len() as u64,
                Payload::Request(r) => r.id,
                Payload::Reply(r) => r.id,
            };
            self.record(to, (m.payload.kind() << 48) ^ size);
            let now = self.now();
            match (m.to, m.payload) {
                (Endpoint::Core(at), payload) => {
                    let now = self.node_now(at.node);
                    let Some(core) = self.core_mut(at) else {
                        continue;
                    };
                    let sender = match m.from {
                        Endpoint::Core(from) => from.node,
                        _ => NodeId(0),
                    };
                    match payload {
                        Payload::Raft(bytes) => {
                            let _ = core.handle_raft_batch(now, sender, &bytes);
                        }
                        Payload::Chunk(bytes) => {
                            let _ = core.handle_snapshot_chunk(now, sender, bytes.into());
                        }
                        Payload::Liveness(bytes) => {
                            let _ = core.handle_liveness(now, sender, &bytes);
                        }
                        Payload::Request(request) => {
                            core.handle_request(now, request, m.from, m.from.role())
                        }
                        Payload::Reply(frame) => {
                            core.handle_call_reply(now, frame.id, Ok(frame.reply))
                        }
                    }
                }
                (Endpoint::Client(c), Payload::Reply(frame)) => {
                    if matches!(frame.reply, KvReply::Moved { .. }) {
                        self.report.stale_routes += 1;
                    }
                    self.clients[c].on_reply(now, frame);
                }
                (Endpoint::Operator, Payload::Reply(frame)) => self.operator.on_reply(now, frame),
                (Endpoint::Hostile, Payload::Reply(frame)) => self.on_hostile_reply(frame),
                _ => {}
            }
        }
    }

    /// One core's storage and outputs: batches become durable after their fsync delay (one
    /// at a time), answers and Raft traffic go out on the network, mail to the node's other
    /// cores waits for the next step.
    fn drive_core(&mut self, at: CoreAddress) {
        let step = self.step;
        let now = self.node_now(at.node);
        let ack_early = self.o.bug == Some(Bug::AckBeforeFsync);
        let max_fsync = self.faults.max_fsync_steps;
        let node = self.nodes.get_mut(&at.node).expect("known node");
        let sim_core = &mut node.cores[usize::from(at.core.0)];
        let Some(core) = sim_core.node.as_mut() else {
            return;
        };
        loop {
            while sim_core.ahead.front().is_some_and(|a| a.0 <= step) {
                let (_, group, index, written) = sim_core.ahead.pop_front().expect("checked");
                core.handle_snapshot_file_written(now, group, index, written);
            }
            while sim_core
                .writing
                .front()
                .is_some_and(|w| w.durable_at <= step)
            {
                let w = sim_core.writing.pop_front().expect("checked");
                // A large compaction is durable with the batch here; the runtime writes it
                // in the background (nothing waits for it, so either is faithful).
                if w.batch.compactions.is_empty() {
                    sim_core.disk.append(&w.batch.writes);
                } else {
                    let mut writes = w.batch.writes.clone();
                    writes.extend(w.batch.compactions.iter().map(Compaction::to_write));
                    sim_core.disk.append(&writes);
                }
                if !w.acked {
                    core.handle_persisted(now, w.batch.id);
                }
            }
            if !sim_core.writing.is_empty() && !ack_early {
                break;
            }
            match core.poll_log() {
                Some(LogWrite::Drop(group)) => sim_core.disk.drop_group(group),
                Some(LogWrite::SnapshotFile(f)) => {
                    self.report.snapshots_written_ahead += 1;
                    let durable_at = step + self.rng.below(max_fsync + 1);
                    file_done(&mut sim_core.ahead, durable_at, f.group, f.index, true);
                }
                Some(LogWrite::SnapshotFileBegin { group, index, .. }) => {
                    sim_core
                        .streamed
                        .insert((group, index), (Vec::new(), false));
                }
                Some(LogWrite::SnapshotFilePiece {
                    group,
                    index,
                    piece,
                }) => {
                    if let Some((file, _)) = sim_core.streamed.get_mut(&(group, index)) {
                        file.extend_from_slice(&piece);
                    }
                }
                Some(LogWrite::SnapshotFileEnd { group, index }) => {
                    if let Some((_, ended)) = sim_core.streamed.get_mut(&(group, index)) {
                        *ended = true;
                    }
                    self.report.snapshots_written_ahead += 1;
                    self.report.snapshots_streamed += 1;
                    let durable_at = step + self.rng.below(max_fsync + 1);
                    file_done(&mut sim_core.ahead, durable_at, group, index, true);
                }
                Some(LogWrite::SnapshotFileAbandon { group, index, .. }) => {
                    // As the log task: an ended file has reported (or will); one still
                    // being written reports its abandonment.
                    if let Some((_, false)) = sim_core.streamed.remove(&(group, index)) {
                        file_done(&mut sim_core.ahead, step, group, index, false);
                    }
                }
                Some(LogWrite::Persist(mut batch)) => {
                    // An installed snapshot that was streamed names its file: the disk
                    // gets the file's bytes.
                    for w in &mut batch.writes {
                        if let Some(snapshot) = w.snapshot.as_mut()
                            && snapshot.data.is_empty()
                            && let Some((file, true)) = sim_core
                                .streamed
                                .remove(&(w.group, snapshot.get_metadata().index))
                        {
                            snapshot.data = file.into();
                        }
                    }
                    self.report.compaction_views += batch.compactions.len() as u64;
                    if ack_early {
                        core.handle_persisted(now, batch.id);
                    }
                    sim_core.writing.push_back(Writing {
                        durable_at: step + self.rng.below(max_fsync + 1),
                        batch,
                        acked: ack_early,
                    });
                }
                None => break,
            }
        }
        // Freed here; the runtime frees it on a thread of its own.
        while core.poll_garbage().is_some() {}
        // The simulator has no CPU to measure: busy stays 0.
        if let Some(load) = core.poll_load() {
            core.handle_load(load);
        }
        while let Some(mail) = core.poll_mail() {
            node.mail.push(mail);
        }
        let mut out: Vec<(Endpoint, Payload)> = Vec::new();
        while let Some((reply, frame)) = core.poll_reply() {
            out.push((reply, Payload::Reply(frame)));
        }
        let mut snapshots = Vec::new();
        while let Some(transmit) = core.poll_transmit() {
            match transmit {
                Transmit::Raft { to, payload } => {
                    out.push((Endpoint::Core(to), Payload::Raft(payload)))
                }
                Transmit::Liveness { to, payload } => {
                    out.push((Endpoint::Core(to), Payload::Liveness(payload)))
                }
                Transmit::Snapshot {
                    to,
                    group,
                    replica,
                    stream,
                } => snapshots.push((to, group, replica, stream)),
            }
        }
        let mut calls = Vec::new();
        while let Some(call) = core.poll_call() {
            calls.push(call);
        }
        let mut audits = Vec::new();
        while let Some(event) = core.poll_audit() {
            audits.push(event);
        }
        let from = Endpoint::Core(at);
        for (to, payload) in out {
            self.network
                .send(&mut self.rng, &self.faults, step, from, to, payload);
        }
        for call in calls {
            self.send_request(from, call.to, call.request);
        }
        for (to, group, replica, stream) in snapshots {
            // Streamed in full, or not: a chunk lost on the way fails the transfer.
            let mut delivered = true;
            for chunk in stream.chunks() {
                delivered &= self.network.send(
                    &mut self.rng,
                    &self.faults,
                    step,
                    from,
                    Endpoint::Core(to),
                    Payload::Chunk(chunk),
                );
            }
            if let Some(core) = self.core_mut(at) {
                core.handle_snapshot_sent(group, replica, delivered);
            }
        }
        for event in audits {
            self.checks.on_audit(at, event);
        }
    }

    /// The metadata group's state on the running node that applied the most of it.
    fn metadata(&self) -> Option<&MetadataStore> {
        self.nodes
            .iter()
            .filter(|(_, node)| node.up)
            .filter_map(|(n, _)| self.core(CoreAddress::new(*n, CoreId(0)))?.metadata())
            .filter(|m| m.is_bootstrapped())
            .max_by_key(|m| m.epoch())
    }

    /// Counts the moves the freshest table records, and those that left it; checks the
    /// rebalancer's move limits (repairs of a `Down` node's replicas included).
    fn observe_moves(&mut self) {
        let Some(store) = self.metadata() else {
            return;
        };
        if store.epoch().0 < self.observed_epoch {
            return;
        }
        let mut limits = None;
        if self.o.rebalance {
            let mut per_node: BTreeMap<NodeId, usize> = BTreeMap::new();
            let mut total = 0;
            let mut listed = Vec::new();
            for (g, p) in store.table().groups() {
                let Some(m) = p.moving else { continue };
                let Some(from) = p.address_of(m.from) else {
                    continue;
                };
                listed.push(format!("group {} {from} -> {}", g.0, m.to));
                total += 1;
                *per_node.entry(from.node).or_default() += 1;
                if m.to.node != from.node {
                    *per_node.entry(m.to.node).or_default() += 1;
                }
            }
            let busiest = per_node.values().copied().max().unwrap_or(0);
            if busiest > self.balance.max_moves_per_node || total > self.balance.max_moves_in_flight
            {
                let v = format!(
                    "move limits exceeded at epoch {}: {total} replica moves in flight, {busiest} on one node ({})",
                    store.epoch().0,
                    listed.join(", ")
                );
                limits = Some(v);
            }
        }
        let epoch = store.epoch().0;
        let states: Vec<(NodeId, NodeState)> = store
            .topology()
            .nodes()
            .map(|n| (n.node_id, n.state))
            .collect();
        let moving: BTreeSet<(GroupId, ReplicaId)> = store
            .table()
            .groups()
            .filter_map(|(g, p)| p.moving.map(|m| (g, m.new)))
            .collect();
        let mut settled_moves = Vec::new();
        if self.settled_at.is_some() {
            for (g, new) in moving.difference(&self.moves_seen) {
                let p = store.table().group(*g);
                let m = p.and_then(|p| p.moving).filter(|m| m.new == *new);
                if let (Some(p), Some(m)) = (p, m)
                    && let Some(from) = p.address_of(m.from)
                {
                    settled_moves.push((*g, from, m.to));
                }
            }
        }
        self.moved_after_settle.extend(settled_moves);
        self.observed_epoch = epoch;
        for (node, state) in states {
            match (self.node_states.insert(node, state), state) {
                (Some(before), NodeState::Down) if before != NodeState::Down => {
                    self.report.nodes_marked_down += 1;
                    self.check_down(node);
                }
                (Some(NodeState::Down), NodeState::Active) => self.report.nodes_back_active += 1,
                _ => {}
            }
        }

        let started = moving.difference(&self.moves_seen).count() as u64;
        let finished = self.moves_seen.difference(&moving).count() as u64;
        self.report.moves_started += started;
        self.report.moves_finished += finished;
        if finished > 0 {
            self.last_move_ended = self.step;
        }
        if started + finished > 0 {
            self.record(16, started << 8 | finished);
        }
        for key in moving.difference(&self.moves_seen) {
            self.move_seen_at.insert(*key, self.step);
        }
        self.move_seen_at.retain(|key, _| moving.contains(key));
        self.moves_seen = moving;
        if let Some(v) = limits
            && !self.checks.violations.contains(&v)
        {
            self.checks.violations.push(v);
        }
    }

    /// Which nodes are out of reach this step: down, paused, or with a link cut either way.
    /// Two outages less than `LIVENESS_CONFIRM_WITHIN` apart count as one: a detector that
    /// probes one member per period may not see a return that short.
    fn track_outages(&mut self) {
        let step = self.step;
        let ids: Vec<NodeId> = self.nodes.keys().copied().collect();
        for n in ids {
            let cut = ids_cut(&self.network, n, &self.nodes);
            let reachable = self.running(n) && !cut;
            match (reachable, self.unreachable_since.get(&n).copied()) {
                (false, None) => {
                    // Back for less than the detector can see (its confirming probe may
                    // have gone out just before the return): one outage, not two.
                    let blink = (LIVENESS_CONFIRM_WITHIN.as_nanos() / STEP.as_nanos()) as u64;
                    let ended = self.outages.entry(n).or_default();
                    let since = match ended.last() {
                        Some(&(len, end)) if end + blink > step => {
                            ended.pop();
                            end - len
                        }
                        _ => step,
                    };
                    self.unreachable_since.insert(n, since);
                }
                (true, Some(since)) => {
                    self.unreachable_since.remove(&n);
                    self.outages
                        .entry(n)
                        .or_default()
                        .push((step - since, step));
                }
                _ => {}
            }
            if let Some(ended) = self.outages.get_mut(&n) {
                ended.retain(|(_, end)| end + FOLLOW_UP_STEPS >= step);
            }
        }
    }

    /// `node` was just seen recorded `Down`: it must have been out of reach for
    /// `dead_after`, now or in an outage that ended in the last `FOLLOW_UP_STEPS` (the
    /// record may commit a moment after it came back; a shorter outage since does not
    /// hide a long one). A node only paused or slow is never repaired away.
    fn check_down(&mut self, node: NodeId) {
        let step = self.step;
        let dead_after = (self.balance.dead_after.as_nanos() / STEP.as_nanos()) as u64;
        let now = self
            .unreachable_since
            .get(&node)
            .map_or(0, |since| step - since);
        let recent = self
            .outages
            .get(&node)
            .and_then(|ended| ended.iter().map(|(len, _)| *len).max())
            .unwrap_or(0);
        let outage = now.max(recent);
        if outage < dead_after {
            self.checks.violations.push(format!(
                "node {node} was recorded Down after {} s out of reach (dead_after {} s)",
                (STEP * outage as u32).as_secs_f64(),
                self.balance.dead_after.as_secs_f64()
            ));
        }
    }

    /// Progress after healing: every group committed a client write, no replica move is
    /// under way, no replica is left on a failed node, and no drain is unfinished (a
    /// drained node ends decommissioned, holding nothing).
    fn settled(&self) -> bool {
        let Some(store) = self.metadata() else {
            return false;
        };
        let gone = |node: NodeId| {
            self.nodes[&node].failed
                || store
                    .topology()
                    .node(node)
                    .is_some_and(|n| n.state.must_be_emptied())
        };
        (1..=u64::from(self.o.groups))
            .map(GroupId)
            .all(|g| self.healed_writes.contains(&g))
            && store
                .table()
                .groups()
                .all(|(_, p)| p.moving.is_none() && p.addresses().all(|at| !gone(at.node)))
            && store
                .topology()
                .nodes()
                .all(|n| n.state != NodeState::Draining)
            && self.joining().is_none_or(|n| {
                let state = store.topology().node(n).map(|i| i.state);
                // Decommissioned, its learner leaves the metadata group.
                let learner = ReplicaId::metadata_learner(n);
                let left = || {
                    self.leader_of(GroupId::METADATA)
                        .and_then(|(at, _)| self.core(at)?.host().membership(GroupId::METADATA))
                        .is_some_and(|m| !m.learners.contains(&learner))
                };
                self.nodes[&n].failed
                    || match state {
                        Some(NodeState::Decommissioned) => left(),
                        Some(NodeState::Joining) => false,
                        _ => true,
                    }
            })
    }

    /// The running core whose replica leads `group` in the highest term, and its replica.
    fn leader_of(&self, group: GroupId) -> Option<(CoreAddress, ReplicaId)> {
        self.nodes
            .keys()
            .filter(|n| self.running(**n))
            .flat_map(|n| (0..self.o.cores).map(move |c| CoreAddress::new(*n, CoreId(c))))
            .filter_map(|at| {
                let host = self.core(at)?.host();
                host.is_leader(group)
                    .then(|| (host.term(group).unwrap_or(0), at, host.replica_id(group)))
            })
            .max_by_key(|(term, ..)| *term)
            .and_then(|(_, at, replica)| Some((at, replica?)))
    }

    /// What the cluster looks like now, at debug level (`RUST_LOG=nodedb_cluster::sim=debug`):
    /// for a run that did not settle.
    fn dump_state(&self) {
        for (id, n) in &self.nodes {
            tracing::debug!(
                node = id.0,
                up = n.up,
                failed = n.failed,
                paused_until = n.paused_until,
                clock_ahead = ?n.clock_ahead,
                "node"
            );
        }
        if let Some(store) = self.metadata() {
            for (g, p) in store.table().groups() {
                tracing::debug!(group = g.0, replicas = ?p.replicas, moving = ?p.moving, "placement");
            }
            for n in store.topology().nodes() {
                tracing::debug!(node = n.node_id.0, state = ?n.state, "topology");
            }
        }
        for g in (0..=u64::from(self.o.groups)).map(GroupId) {
            tracing::debug!(group = g.0, leader = ?self.leader_of(g), "leader");
            for (id, n) in self.nodes.iter().filter(|(_, n)| n.up) {
                for (c, core) in n.cores.iter().enumerate() {
                    if let Some(d) = core.node.as_ref().and_then(|x| x.host().describe(g)) {
                        tracing::debug!(group = g.0, node = id.0, core = c, "{d}");
                    }
                }
            }
        }
    }

    /// Runs every checker over the run so far.
    fn check(&mut self) {
        let mut groups: BTreeMap<GroupId, Vec<&KvStore>> = BTreeMap::new();
        for node in self.nodes.values().filter(|n| n.up) {
            for core in node.cores.iter().filter_map(|c| c.node.as_ref()) {
                let host = core.host();
                for g in host.group_ids().filter(|g| *g != GroupId::METADATA) {
                    if let Some(kv) = host.state_machine(g).and_then(Cell::kv) {
                        groups.entry(g).or_default().push(kv);
                    }
                }
            }
        }
        // Every key a replica holds hashes to its group (a hostile client tries otherwise).
        let mut misplaced = Vec::new();
        for (g, stores) in &groups {
            for kv in stores {
                for (key, _) in kv.scan(&[], None, usize::MAX) {
                    let owner = GroupId(1 + u64::from(self.vshards.vshard_of(&key).0));
                    if owner != *g {
                        misplaced.push(format!(
                            "group {} holds key {key:?}, which hashes to group {}",
                            g.0, owner.0
                        ));
                    }
                }
            }
        }
        let in_flight = self.clients.iter().filter_map(SimClient::write_in_flight);
        let (mut violations, unchecked) = self.checks.verdict(in_flight, groups.into_iter());
        misplaced.dedup();
        violations.extend(misplaced);
        self.report.violations = violations;
        self.report.unchecked_keys = unchecked;
    }
}

/// Whether a link to or from node `n` and another node is cut.
fn ids_cut(network: &Network, n: NodeId, nodes: &BTreeMap<NodeId, SimNode>) -> bool {
    nodes.keys().filter(|m| **m != n).any(|m| {
        network.is_cut(
            Endpoint::Core(CoreAddress::new(n, CoreId(0))),
            Endpoint::Core(CoreAddress::new(*m, CoreId(0))),
        ) || network.is_cut(
            Endpoint::Core(CoreAddress::new(*m, CoreId(0))),
            Endpoint::Core(CoreAddress::new(n, CoreId(0))),
        )
    })
}

/// `count` distinct keys, key `i` in vShard `i mod groups` (group `1 + i mod groups`).
fn key_table(vshards: &VShardMap, count: u64) -> Vec<u64> {
    let groups = u64::from(vshards.count());
    let mut next = 0u64;
    (0..count)
        .map(|i| {
            while u64::from(vshards.vshard_of(&next.to_be_bytes()).0) != i % groups {
                next += 1;
            }
            next += 1;
            next - 1
        })
        .collect()
}
