//! The deterministic cluster simulator: every core of every node in one thread, on a
//! virtual clock, with a seeded network and disk that misbehave.
//!
//! A run draws its fault options from its seed (VOPR style), then has two phases. The
//! **safety phase** runs clients against the cluster while messages are lost, duplicated,
//! delayed and reordered, links are cut (both ways or one way), fsyncs are slow, nodes
//! crash mid-write (the record being written is lost, torn or lands whole) and restart from
//! their log, a disk's synced data is corrupted (the node must refuse to start; its
//! replicas are then replaced on other nodes), leadership is transferred, and replicas move
//! between nodes and cores (learner, catch-up, joint promotion and removal) — all at once.
//! The **liveness phase** heals everything and requires every group to elect a leader and
//! accept a write, and every replica move to finish, within a bounded time. Checkers then
//! verify: each key's history is linearizable, no term of any group had two leaders, every
//! replica applied the same entry at each index, and the replicas converged. The same seed
//! always gives the same run; `trace_hash` proves it.
//!
//! The simulator drives the very `RaftHost` and `KvStore` the cores run, the write-ahead
//! log's real encoder and recovery ([`disk`]), and the client's real `Router`; only the I/O
//! is simulated. Known bugs can be injected ([`Bug`]) to show the checkers catch them.

pub mod disk;
pub mod linearizability;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::Duration;

use serde::Serialize;

use crate::client::routing::{PlacementCache, Router};
use crate::ids::{CoreAddress, GroupId, ReplicaId};
use crate::ids::{CoreId, NodeId};
use crate::replication::kv::{KvCommand, KvResponse, KvStore, StateMachine};
use crate::replication::raft_host::{HostError, HostEvent, PersistBatch, ProposalToken, RaftHost};
use crate::replication::replica_move::{MoveAction, MoveContext, ReplicaMove, leader_view};
use crate::rng::{Rng, mix64};
use crate::sim::disk::{SimDisk, Tear};
use crate::sim::linearizability::{HistoryOp, RegisterOp, check_register};
use crate::time::Time;

/// A deliberate bug, to show that the checkers find it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum Bug {
    /// Tell Raft a batch is durable as soon as it is written, before the fsync completes.
    AckBeforeFsync,
    /// Forget the term and vote on restart: the original NodeDB never persisted them.
    ForgetVote,
    /// Serve reads from whatever replica the client reached, without ReadIndex.
    StaleRead,
}

/// What to simulate.
#[derive(Clone, Debug)]
pub struct SimOptions {
    pub seed: u64,
    pub nodes: u64,
    /// Cores per node: each has its own Raft host and its own log.
    pub cores: u64,
    /// Replicas per group.
    pub replicas: u64,
    pub groups: u64,
    pub clients: usize,
    pub keys: u64,
    /// Steps (of `STEP`) with faults, then steps allowed for recovery.
    pub safety_steps: u64,
    pub liveness_steps: u64,
    pub bug: Option<Bug>,
}

impl SimOptions {
    /// Four nodes of two cores, three groups of three replicas: a replica always has a
    /// node to move to, and a node whose disk fails can be replaced.
    pub fn new(seed: u64) -> SimOptions {
        SimOptions {
            seed,
            nodes: 4,
            cores: 2,
            replicas: 3,
            groups: 3,
            clients: 4,
            keys: 6,
            safety_steps: 2_000,
            liveness_steps: 3_000,
            bug: None,
        }
    }
}

/// One simulated step of virtual time.
pub const STEP: Duration = Duration::from_millis(10);
/// A client gives up on an operation after this many steps (outcome unknown).
const OP_TIMEOUT_STEPS: u64 = 300;
/// A replica move retries its next membership step after this many steps.
const MOVE_RETRY_STEPS: u64 = 20;

/// Fault rates drawn from the seed.
#[derive(Clone, Debug, Serialize)]
pub struct Faults {
    pub loss: f64,
    pub duplicate: f64,
    pub max_delay_steps: u64,
    pub max_fsync_steps: u64,
    pub crash_per_step: f64,
    pub partition_per_step: f64,
    /// Chance per step that a node's clock jumps ahead, or its process pauses.
    pub clock_jump_per_step: f64,
    pub pause_per_step: f64,
    /// Chance per step that a group's leader is asked to hand leadership to another voter.
    pub transfer_per_step: f64,
    /// Chance per step that a replica starts moving to another node or core.
    pub move_per_step: f64,
    /// Chance per step that a node's synced log is damaged (then it crashes; at most once
    /// per run, so a quorum of every group survives).
    pub corrupt_per_step: f64,
}

impl Faults {
    fn draw(rng: &mut Rng) -> Faults {
        Faults {
            loss: rng.next_f64() * 0.15,
            duplicate: rng.next_f64() * 0.05,
            max_delay_steps: 1 + rng.below(15),
            max_fsync_steps: rng.below(20),
            crash_per_step: rng.next_f64() * 0.006,
            partition_per_step: rng.next_f64() * 0.004,
            clock_jump_per_step: rng.next_f64() * 0.002,
            pause_per_step: rng.next_f64() * 0.002,
            transfer_per_step: rng.next_f64() * 0.004,
            move_per_step: rng.next_f64() * 0.004,
            corrupt_per_step: if rng.below(4) == 0 {
                rng.next_f64() * 0.002
            } else {
                0.0
            },
        }
    }

    /// No faults at all (scripted scenarios).
    fn none() -> Faults {
        Faults {
            loss: 0.0,
            duplicate: 0.0,
            max_delay_steps: 1,
            max_fsync_steps: 0,
            crash_per_step: 0.0,
            partition_per_step: 0.0,
            clock_jump_per_step: 0.0,
            pause_per_step: 0.0,
            transfer_per_step: 0.0,
            move_per_step: 0.0,
            corrupt_per_step: 0.0,
        }
    }
}

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
    /// Logs whose synced data was damaged, and nodes that refused to start because of it.
    pub corruptions: u64,
    pub corruptions_refused: u64,
    /// Replica moves started (including replacements of a failed node's replicas), and
    /// finished (moved, or abandoned because the target failed).
    pub moves_started: u64,
    pub moves_finished: u64,
    /// Requests that reached a core the group had moved away from (the client then
    /// refetched its placement table).
    pub stale_routes: u64,
    pub virtual_seconds: f64,
    pub trace_hash: u64,
    pub violations: Vec<String>,
}

struct InFlight {
    deliver_at: u64,
    seq: u64,
    from: CoreAddress,
    to: CoreAddress,
    group: GroupId,
    message: raft::eraftpb::Message,
}

/// One core of a node: its Raft host (while the node is up), its log, the batch being
/// written, and which replica of each group it hosts (its durable catalog).
struct SimCore {
    host: Option<RaftHost<KvStore>>,
    disk: SimDisk,
    /// A written batch, durable at the given step unless the node crashes first.
    pending: Option<(PersistBatch, u64, bool)>,
    catalog: BTreeMap<GroupId, ReplicaId>,
    /// Groups that left while the node was down: dropped from the log when it restarts
    /// (after recovery has read the log as it was).
    drop_on_start: Vec<GroupId>,
}

struct SimNode {
    cores: Vec<SimCore>,
    up: bool,
    /// The node's disk failed (its log was refused): it stays down for good.
    failed: bool,
    /// Synced data in one of its logs was damaged: its next start must refuse the log.
    corrupted: bool,
    down_until: Option<u64>,
    /// The durable term of each replica when the node crashed: a restart must not go below.
    terms_at_crash: HashMap<ReplicaId, u64>,
    /// How far this node's clock runs ahead of true time (clock jumps).
    clock_ahead: Duration,
    /// The node's process is paused (no ticks, no I/O) until this step.
    paused_until: u64,
}

/// A replica move in progress ([`ReplicaMove`] decides its steps) and when to look again.
#[derive(Clone, Debug)]
struct Move {
    decide: ReplicaMove,
    next_try: u64,
}

/// What the simulator knows for a move beyond the leader's view.
struct SimMoveContext<'a> {
    sim: &'a Sim,
    group: GroupId,
    to: CoreAddress,
}

impl MoveContext for SimMoveContext<'_> {
    fn target_failed(&self) -> bool {
        self.sim.nodes[&self.to.node.0].failed
    }

    fn voters_durably_know(&self, voters: &[ReplicaId], index: u64) -> bool {
        voters.iter().all(|v| {
            let Some(at) = self.sim.placement[&self.group].get(v) else {
                return true;
            };
            let node = &self.sim.nodes[&at.node.0];
            node.failed || node.cores[at.core.0 as usize].disk.commit(self.group) >= index
        })
    }
}

#[derive(Clone)]
enum Pending {
    Write { key: u64, op: RegisterOp },
    Read { key: u64 },
}

struct Client {
    /// The real client routing logic: leader cache, hints, avoidance of failed nodes.
    router: Router,
    /// The real client's placement-table cache: stale until a replica says it moved.
    table: PlacementCache,
    /// A scripted client sends every request to this node.
    pinned: Option<u64>,
    /// (op id, invoked, deadline, group, target, pending, is write)
    outstanding: Option<(u64, u64, u64, GroupId, CoreAddress, Pending, bool)>,
    counter: u64,
}

fn address(node: u64, core: u64) -> CoreAddress {
    CoreAddress {
        node: NodeId(node),
        core: CoreId(core as u16),
    }
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
    /// Scripted scenarios: no random faults, no random client operations.
    scripted: bool,
    rng: Rng,
    faults: Faults,
    step: u64,
    nodes: BTreeMap<u64, SimNode>,
    /// The placement table: every live replica of every group and where it is.
    placement: BTreeMap<GroupId, BTreeMap<ReplicaId, CoreAddress>>,
    /// Every replica ever created (hosts learn addresses from it).
    addresses: BTreeMap<ReplicaId, CoreAddress>,
    /// Each group's initial voters: the configuration at index 0 of its log.
    bootstrap: BTreeMap<GroupId, Vec<ReplicaId>>,
    next_replica: u64,
    /// Bumped at every change of `placement` (what clients' cached tables are checked by).
    placement_epoch: u64,
    moves: BTreeMap<GroupId, Move>,
    network: Vec<InFlight>,
    seq: u64,
    /// Cut links between nodes, (from, to).
    cut: HashSet<(u64, u64)>,
    clients: Vec<Client>,
    history: BTreeMap<u64, Vec<HistoryOp>>,
    /// Replicas that announced themselves leader, per (group, term).
    leaders: HashMap<(GroupId, u64), HashSet<ReplicaId>>,
    trace: u64,
    report: SimReport,
    next_op: u64,
    /// Groups that completed a write after the cluster was healed.
    healed_writes: HashSet<GroupId>,
    /// Completed operations' results, by op id (scenarios look them up).
    results: HashMap<u64, RegisterOp>,
    /// What each (group, index) was applied as: (term, digest), by the first replica.
    committed: HashMap<(GroupId, u64), (u64, u64)>,
}

impl Sim {
    fn new(o: &SimOptions) -> Sim {
        let o = o.clone();
        assert!(
            o.replicas >= 1 && o.replicas <= o.nodes && o.cores >= 1,
            "replicas must fit on distinct nodes"
        );
        let mut rng = Rng::new(o.seed);
        let faults = Faults::draw(&mut rng);
        let report = SimReport {
            seed: o.seed,
            faults: Some(faults.clone()),
            ..SimReport::default()
        };
        let mut nodes = BTreeMap::new();
        for n in 1..=o.nodes {
            nodes.insert(
                n,
                SimNode {
                    cores: (0..o.cores)
                        .map(|_| SimCore {
                            host: None,
                            disk: SimDisk::new(),
                            pending: None,
                            catalog: BTreeMap::new(),
                            drop_on_start: Vec::new(),
                        })
                        .collect(),
                    up: false,
                    failed: false,
                    corrupted: false,
                    down_until: None,
                    terms_at_crash: HashMap::new(),
                    clock_ahead: Duration::ZERO,
                    paused_until: 0,
                },
            );
        }
        // Group g's replicas start on consecutive nodes from g, each on core g mod cores;
        // the first replica ids are (g << 16) | node.
        let mut placement = BTreeMap::new();
        let mut addresses = BTreeMap::new();
        let mut bootstrap = BTreeMap::new();
        for g in (1..=o.groups).map(GroupId) {
            let mut members = BTreeMap::new();
            for k in 0..o.replicas {
                let node = 1 + (g.0 - 1 + k) % o.nodes;
                let at = address(node, (g.0 + k) % o.cores);
                let replica = ReplicaId((g.0 << 16) | node);
                members.insert(replica, at);
                addresses.insert(replica, at);
                let core =
                    &mut nodes.get_mut(&node).expect("placed on a node").cores[at.core.0 as usize];
                core.catalog.insert(g, replica);
            }
            bootstrap.insert(g, members.keys().copied().collect());
            placement.insert(g, members);
        }
        let mut sim = Sim {
            scripted: false,
            rng,
            faults,
            step: 0,
            nodes,
            placement,
            addresses,
            bootstrap,
            next_replica: 1 << 32,
            placement_epoch: 1,
            moves: BTreeMap::new(),
            network: Vec::new(),
            seq: 0,
            cut: HashSet::new(),
            clients: (0..o.clients)
                .map(|c| Client {
                    router: Router::starting_at(c),
                    table: PlacementCache::new(),
                    pinned: None,
                    outstanding: None,
                    counter: 0,
                })
                .collect(),
            history: BTreeMap::new(),
            leaders: HashMap::new(),
            trace: 0,
            report,
            next_op: 1,
            healed_writes: HashSet::new(),
            results: HashMap::new(),
            committed: HashMap::new(),
            o,
        };
        for n in 1..=sim.o.nodes {
            sim.start(n);
        }
        sim
    }

    fn now(&self) -> Time {
        Time::ZERO + STEP * self.step as u32
    }

    fn record(&mut self, a: u64, b: u64) {
        self.trace = mix64(self.trace ^ mix64(a.wrapping_mul(31).wrapping_add(b)));
    }

    fn host_mut(&mut self, at: CoreAddress) -> Option<&mut RaftHost<KvStore>> {
        self.nodes
            .get_mut(&at.node.0)?
            .cores
            .get_mut(at.core.0 as usize)?
            .host
            .as_mut()
    }

    fn host(&self, at: CoreAddress) -> Option<&RaftHost<KvStore>> {
        self.nodes
            .get(&at.node.0)?
            .cores
            .get(at.core.0 as usize)?
            .host
            .as_ref()
    }

    /// Starts node `n`: every core replays its log and hosts the replicas of its catalog.
    /// A log that recovery refuses (corruption) fails the node for good.
    fn start(&mut self, n: u64) {
        let node = self.nodes.get_mut(&n).expect("known node");
        if node.failed {
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
                    self.record(14, n);
                    tracing::debug!(node = n, error = %e, "the log is corrupt; the node stays down");
                    return;
                }
            }
        }
        if node.corrupted {
            self.report.violations.push(format!(
                "node {n} started from a log whose synced data was damaged"
            ));
        }
        for (c, mut groups) in recovered.into_iter().enumerate() {
            let core = &mut node.cores[c];
            for group in std::mem::take(&mut core.drop_on_start) {
                // The old replica's state: a new replica of the group here starts empty.
                core.disk.drop_group(group);
                groups.remove(&group);
            }
            let mut host = RaftHost::new(address(n, c as u64));
            host.set_audit(true);
            for (replica, at) in &self.addresses {
                host.set_address(*replica, *at);
            }
            for (g, replica) in &core.catalog {
                let mut persisted = groups.remove(g);
                if self.o.bug == Some(Bug::ForgetVote)
                    && let Some(p) = persisted.as_mut()
                {
                    p.hard_state.vote = 0;
                    p.hard_state.term = p.entries.last().map_or(0, |e| e.term);
                }
                host.add_group(*g, *replica, &self.bootstrap[g], persisted, KvStore::new())
                    .expect("one replica per group per core");
                // Raft (Figure 2): currentTerm is persistent; a server's term never goes back.
                let before = node.terms_at_crash.get(replica).copied().unwrap_or(0);
                let after = host.term(*g).unwrap_or(0);
                if after < before {
                    self.report.violations.push(format!(
                        "replica {} of group {} restarted at term {after} after term {before}",
                        replica.0, g.0
                    ));
                }
            }
            core.host = Some(host);
        }
        node.up = true;
        node.down_until = None;
    }

    fn run(mut self) -> SimReport {
        let total = self.o.safety_steps + self.o.liveness_steps;
        let mut live_since = None;
        let mut progress: Option<u64> = None;
        while self.step < total {
            self.step += 1;
            let safety = self.step <= self.o.safety_steps;
            if !safety && live_since.is_none() {
                // Liveness phase: heal every partition and restart every node that can.
                live_since = Some(self.step);
                self.cut.clear();
                let down: Vec<u64> = self
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
            if live_since.is_some() && progress.is_none() && self.settled() {
                progress = Some(self.step);
            }
        }
        self.report.virtual_seconds = (STEP * self.step as u32).as_secs_f64();
        if progress.is_none() {
            self.report.violations.push(format!(
                "liveness: within {} s of healing, not every group elected a leader and committed a write, or a replica move did not finish ({} moving: {:?})",
                (STEP * self.o.liveness_steps as u32).as_secs(),
                self.moves.len(),
                self.moves
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

    /// The body of a step: faults (or due restarts), ticks, persistence and messages,
    /// deliveries, replica moves, clients.
    fn advance(&mut self, faults: bool) {
        if faults {
            self.inject_faults();
        } else {
            self.restart_due();
        }
        let (now, step) = (self.now(), self.step);
        for node in self.nodes.values_mut() {
            if node.paused_until > step {
                continue;
            }
            for core in &mut node.cores {
                if let Some(host) = core.host.as_mut() {
                    host.handle_tick(now + node.clock_ahead);
                }
            }
        }
        self.drive_nodes();
        self.deliver();
        self.replace_failed();
        self.drive_moves();
        self.drive_clients();
    }

    /// Crashes node `n`: a record being written is lost, torn or lands whole; nothing else
    /// unsynced survives. It restarts after `down_steps`, or when told to.
    fn crash(&mut self, n: u64, down_steps: Option<u64>) {
        let step = self.step;
        let Some(node) = self.nodes.get_mut(&n) else {
            return;
        };
        if !node.up {
            return;
        }
        node.terms_at_crash.clear();
        for core in &mut node.cores {
            // The durable term is what a restart must not go below (a term only in memory
            // may be lost: votes leave only once durable).
            for (g, term) in core.disk.terms() {
                if let Some(replica) = core.catalog.get(&g) {
                    node.terms_at_crash.insert(*replica, term);
                }
            }
            if let Some((batch, ..)) = core.pending.take()
                && core.disk.crash_during(&batch.writes, &mut self.rng) == Tear::Torn
            {
                self.report.torn_writes += 1;
            }
            core.host = None;
        }
        node.up = false;
        node.down_until = down_steps.map(|d| step + d);
        self.report.crashes += 1;
        self.network.retain(|m| m.to.node.0 != n);
        self.record(5, n);
    }

    fn restart_due(&mut self) {
        let due: Vec<u64> = self
            .nodes
            .iter()
            .filter(|(_, n)| n.down_until.is_some_and(|t| t <= self.step))
            .map(|(i, _)| *i)
            .collect();
        for n in due {
            self.start(n);
            self.record(7, n);
        }
    }

    fn inject_faults(&mut self) {
        self.restart_due();
        if self.rng.next_f64() < self.faults.crash_per_step {
            let n = 1 + self.rng.below(self.o.nodes);
            if self.nodes.get(&n).is_some_and(|node| node.up) {
                // Sometimes back at once (mid-election), sometimes after seconds.
                let down = if self.rng.below(2) == 0 {
                    1 + self.rng.below(20)
                } else {
                    50 + self.rng.below(300)
                };
                self.crash(n, Some(down));
            }
        }
        if self.rng.next_f64() < self.faults.corrupt_per_step
            && self.o.nodes > self.o.replicas
            && self.nodes.values().all(|n| !n.failed)
        {
            // A disk returns damaged data: the node notices on its next start.
            let n = 1 + self.rng.below(self.o.nodes);
            let c = self.rng.below(self.o.cores) as usize;
            let node = self.nodes.get_mut(&n).expect("known node");
            if node.up && node.cores[c].disk.corrupt(&mut self.rng) {
                node.corrupted = true;
                self.report.corruptions += 1;
                self.record(15, n);
                self.crash(n, Some(1));
            }
        }
        if self.rng.next_f64() < self.faults.clock_jump_per_step {
            // A node's clock jumps ahead by up to 3 s: its timers fire early, all at once.
            let n = 1 + self.rng.below(self.o.nodes);
            let jump = STEP * (1 + self.rng.below(300)) as u32;
            if let Some(node) = self.nodes.get_mut(&n) {
                node.clock_ahead += jump;
            }
            self.record(11, n);
        }
        if self.rng.next_f64() < self.faults.transfer_per_step {
            // Leadership moves (as the rebalancer would move it) while faults go on.
            let group = GroupId(1 + self.rng.below(self.o.groups));
            if let Some((at, _)) = self.leader_of(group) {
                let pick = self.rng.next_u64();
                let host = self.host_mut(at).expect("the leader is up");
                if let Some(m) = host.membership(group) {
                    let to = m.voters[(pick % m.voters.len() as u64) as usize];
                    let _ = host.transfer_leader(group, to);
                    self.record(13, to.0);
                }
            }
        }
        if self.rng.next_f64() < self.faults.move_per_step {
            self.start_random_move();
        }
        if self.rng.next_f64() < self.faults.pause_per_step {
            // A process pause (GC, swap, SIGSTOP): nothing runs on the node for up to 2 s.
            let n = 1 + self.rng.below(self.o.nodes);
            let until = self.step + 1 + self.rng.below(200);
            if let Some(node) = self.nodes.get_mut(&n) {
                node.paused_until = until;
            }
            self.record(12, n);
        }
        if self.rng.next_f64() < self.faults.partition_per_step {
            self.cut.clear();
            let a = 1 + self.rng.below(self.o.nodes);
            let symmetric = self.rng.below(2) == 0;
            for b in 1..=self.o.nodes {
                if b != a {
                    self.cut.insert((a, b));
                    if symmetric {
                        self.cut.insert((b, a));
                    }
                }
            }
            self.report.partitions += 1;
            self.record(6, a);
        } else if !self.cut.is_empty() && self.rng.next_f64() < 0.01 {
            self.cut.clear();
        }
    }

    fn drive_nodes(&mut self) {
        let ids: Vec<u64> = self.nodes.keys().copied().collect();
        for n in ids {
            for c in 0..self.o.cores as usize {
                self.drive_core(n, c);
            }
        }
    }

    fn drive_core(&mut self, n: u64, c: usize) {
        // Persistence: one batch at a time, durable after a random fsync delay.
        let fsync_delay = self.rng.below(self.faults.max_fsync_steps + 1);
        let ack_early = self.o.bug == Some(Bug::AckBeforeFsync);
        let step = self.step;
        let node = self.nodes.get_mut(&n).expect("known");
        if node.paused_until > step {
            return;
        }
        let core = &mut node.cores[c];
        let Some(host) = core.host.as_mut() else {
            return;
        };
        if core.pending.is_none()
            && let Some(batch) = host.poll_persist()
        {
            if ack_early {
                host.handle_persisted(batch.id);
            }
            core.pending = Some((batch, step + fsync_delay, ack_early));
        }
        if let Some((batch, at, acked)) = core.pending.take() {
            if at <= step {
                core.disk.append(&batch.writes);
                if !acked {
                    host.handle_persisted(batch.id);
                }
            } else {
                core.pending = Some((batch, at, acked));
            }
        }
        let mut outgoing = Vec::new();
        while let Some(out) = host.poll_transmit() {
            outgoing.push(out);
        }
        let mut events = Vec::new();
        while let Some(e) = host.poll_event() {
            events.push(e);
        }
        let terms: HashMap<GroupId, u64> = host
            .group_ids()
            .filter_map(|g| host.term(g).map(|t| (g, t)))
            .collect();
        let from = address(n, c as u64);
        for out in outgoing {
            let to = out.to;
            if self.cut.contains(&(n, to.node.0)) || self.rng.next_f64() < self.faults.loss {
                continue;
            }
            let copies = if self.rng.next_f64() < self.faults.duplicate {
                2
            } else {
                1
            };
            for _ in 0..copies {
                let deliver_at = self.step + 1 + self.rng.below(self.faults.max_delay_steps);
                self.seq += 1;
                self.network.push(InFlight {
                    deliver_at,
                    seq: self.seq,
                    from,
                    to,
                    group: out.group,
                    message: out.message.clone(),
                });
            }
        }
        for e in events {
            self.on_event(from, e, &terms);
        }
    }

    fn deliver(&mut self) {
        let step = self.step;
        let mut due: Vec<InFlight> = Vec::new();
        let mut i = 0;
        while i < self.network.len() {
            // A paused process reads its socket only when it resumes.
            let paused_until = self
                .nodes
                .get(&self.network[i].to.node.0)
                .map_or(0, |n| n.paused_until);
            if self.network[i].deliver_at <= step && paused_until <= step {
                due.push(self.network.swap_remove(i));
            } else {
                i += 1;
            }
        }
        due.sort_by_key(|m| (m.deliver_at, m.seq));
        for m in due {
            if self.cut.contains(&(m.from.node.0, m.to.node.0)) {
                continue;
            }
            self.record(
                m.to.node.0 << 16 | u64::from(m.to.core.0),
                (m.message.get_msg_type() as u64) << 32 | m.message.index,
            );
            if let Some(host) = self.host_mut(m.to) {
                let _ = host.handle_message(m.group, m.message);
            }
        }
    }

    /// The up, unpaused core whose replica leads `group` in the highest term, and its
    /// replica id.
    fn leader_of(&self, group: GroupId) -> Option<(CoreAddress, ReplicaId)> {
        let members = self.placement.get(&group)?;
        members
            .iter()
            .filter(|(_, at)| {
                self.nodes
                    .get(&at.node.0)
                    .is_some_and(|n| n.paused_until <= self.step)
            })
            .filter_map(|(r, at)| {
                let host = self.host(*at)?;
                host.is_leader(group)
                    .then(|| (host.term(group).unwrap_or(0), *at, *r))
            })
            .max_by_key(|(term, ..)| *term)
            .map(|(_, at, r)| (at, r))
    }

    /// Whether `group` may get a replica at `to` when `from` leaves: no other replica of
    /// the group on that node (a move within a node goes to another core), node not failed.
    fn valid_target(&self, group: GroupId, from: ReplicaId, to: CoreAddress) -> bool {
        let Some(members) = self.placement.get(&group) else {
            return false;
        };
        let from_at = members.get(&from).copied();
        !self.nodes[&to.node.0].failed
            && members.iter().all(|(r, at)| {
                at.node != to.node || (*r == from && from_at.is_some_and(|f| f.core != to.core))
            })
    }

    /// Picks a random target for moving `from` of `group`; `None` if the draw found none.
    fn draw_target(&mut self, group: GroupId, from: ReplicaId) -> Option<CoreAddress> {
        for _ in 0..8 {
            let to = address(
                1 + self.rng.below(self.o.nodes),
                self.rng.below(self.o.cores),
            );
            if self.valid_target(group, from, to) {
                return Some(to);
            }
        }
        None
    }

    fn begin_move(&mut self, group: GroupId, from: ReplicaId, to: CoreAddress) {
        let new = ReplicaId(self.next_replica);
        self.next_replica += 1;
        self.moves.insert(
            group,
            Move {
                decide: ReplicaMove::new(group, from, to, new),
                next_try: self.step,
            },
        );
        self.report.moves_started += 1;
        self.record(16, new.0);
    }

    /// The rebalancer's job, at random: move a replica of a group that is not moving.
    fn start_random_move(&mut self) {
        let group = GroupId(1 + self.rng.below(self.o.groups));
        if self.moves.contains_key(&group) {
            return;
        }
        let members: Vec<ReplicaId> = self.placement[&group].keys().copied().collect();
        let from = members[self.rng.below(members.len() as u64) as usize];
        if let Some(to) = self.draw_target(group, from) {
            self.begin_move(group, from, to);
        }
    }

    /// An operator's job: replicas on a failed node are replaced elsewhere.
    fn replace_failed(&mut self) {
        let failed: Vec<(GroupId, ReplicaId)> = self
            .placement
            .iter()
            .filter(|(g, _)| !self.moves.contains_key(g))
            .flat_map(|(g, members)| {
                members
                    .iter()
                    .filter(|(_, at)| self.nodes[&at.node.0].failed)
                    .map(|(r, _)| (*g, *r))
            })
            .collect();
        for (group, from) in failed {
            if let Some(to) = self.draw_target(group, from) {
                self.begin_move(group, from, to);
            }
        }
    }

    /// Places a replica in a core's catalog (and hosts it, if the node is up).
    fn create_replica(&mut self, group: GroupId, replica: ReplicaId, at: CoreAddress) {
        self.placement
            .get_mut(&group)
            .expect("known group")
            .insert(replica, at);
        self.placement_epoch += 1;
        self.addresses.insert(replica, at);
        for node in self.nodes.values_mut() {
            for core in &mut node.cores {
                if let Some(host) = core.host.as_mut() {
                    host.set_address(replica, at);
                }
            }
        }
        let bootstrap = self.bootstrap[&group].clone();
        let core =
            &mut self.nodes.get_mut(&at.node.0).expect("known node").cores[at.core.0 as usize];
        core.catalog.insert(group, replica);
        if let Some(host) = core.host.as_mut() {
            // Its log starts as every replica's did, at the group's initial configuration;
            // the leader sends it the entries (or a snapshot) from there.
            host.add_joining_group(group, replica, &bootstrap, &[], KvStore::new())
                .expect("the target hosts no replica of the group");
        }
    }

    /// A replica left its group's configuration: its core stops hosting it and drops it
    /// from its log.
    fn destroy_replica(&mut self, group: GroupId, replica: ReplicaId) {
        let Some(at) = self
            .placement
            .get_mut(&group)
            .and_then(|m| m.remove(&replica))
        else {
            return;
        };
        self.placement_epoch += 1;
        let core =
            &mut self.nodes.get_mut(&at.node.0).expect("known node").cores[at.core.0 as usize];
        if core.catalog.get(&group) == Some(&replica) {
            core.catalog.remove(&group);
            if let Some(host) = core.host.as_mut() {
                host.remove_group(group);
            }
            if let Some((batch, ..)) = core.pending.as_mut() {
                batch.writes.retain(|w| w.group != group);
            }
            if core.host.is_some() {
                core.disk.drop_group(group);
            } else {
                // A down node's disk is not touched until it runs again.
                core.drop_on_start.push(group);
            }
        }
        self.record(17, replica.0);
    }

    /// Takes each replica move one membership step further, as seen by the group's leader.
    fn drive_moves(&mut self) {
        let groups: Vec<GroupId> = self.moves.keys().copied().collect();
        for group in groups {
            let mut m = self.moves[&group].clone();
            if m.next_try > self.step {
                continue;
            }
            let Some((leader_at, leader)) = self.leader_of(group) else {
                continue;
            };
            let host = self.host(leader_at).expect("the leader is up");
            let Some(view) = leader_view(host, group, leader, m.decide.new) else {
                continue;
            };
            let context = SimMoveContext {
                sim: self,
                group,
                to: m.decide.to,
            };
            let (actions, outcome) = m.decide.next(&view, &context);
            for action in actions {
                match action {
                    MoveAction::CreateReplica { replica, at } => {
                        self.create_replica(group, replica, at)
                    }
                    MoveAction::DestroyReplica(replica) => self.destroy_replica(group, replica),
                    MoveAction::Propose(changes) => {
                        let host = self.host_mut(leader_at).expect("the leader is up");
                        let token = ProposalToken(u64::MAX - group.0);
                        let _ = host.change_membership(group, &changes, token);
                    }
                    MoveAction::TransferLeader(to) => {
                        let host = self.host_mut(leader_at).expect("the leader is up");
                        let _ = host.transfer_leader(group, to);
                    }
                }
            }
            if outcome.is_some() {
                self.moves.remove(&group);
                self.report.moves_finished += 1;
                self.record(18, group.0);
            } else {
                m.next_try = self.step + MOVE_RETRY_STEPS;
                self.moves.insert(group, m);
            }
        }
    }

    fn on_event(&mut self, at: CoreAddress, event: HostEvent, terms: &HashMap<GroupId, u64>) {
        match event {
            HostEvent::LeaderChanged {
                group,
                is_self: true,
                leader: Some(leader),
            } => {
                let term = terms.get(&group).copied().unwrap_or(0);
                self.leaders
                    .entry((group, term))
                    .or_default()
                    .insert(leader);
                self.record(8, leader.0 ^ term << 8);
            }
            HostEvent::Applied {
                token, response, ..
            } => {
                let Ok(r) = KvResponse::decode(&response) else {
                    return;
                };
                self.complete(token.0, |pending| match (pending, r) {
                    // Refused by the state machine: it had no effect.
                    (_, KvResponse::Rejected(_)) => None,
                    (
                        Pending::Write {
                            op: RegisterOp::Cas { expected, new, .. },
                            ..
                        },
                        KvResponse::Cas { applied, .. },
                    ) => Some(RegisterOp::Cas {
                        expected,
                        new,
                        applied,
                    }),
                    (Pending::Write { op, .. }, _) => Some(op),
                    _ => None,
                });
            }
            HostEvent::ReadReady { group, token } => {
                let value = self.read_local(at, group, token.0);
                self.complete(token.0, |_| Some(RegisterOp::Get { found: value }));
            }
            HostEvent::Committed {
                group,
                index,
                term,
                digest,
            } => {
                // Replicas apply the same sequence, and a committed entry never changes.
                match self.committed.get(&(group, index)) {
                    None => {
                        self.committed.insert((group, index), (term, digest));
                    }
                    Some(&(t, d)) if (t, d) != (term, digest) => self.report.violations.push(format!(
                        "group {} index {index}: {at:?} applied term {term} digest {digest:x}, another replica term {t} digest {d:x}",
                        group.0
                    )),
                    Some(_) => {}
                }
            }
            HostEvent::LeaderChanged { .. } | HostEvent::MembershipChanged { .. } => {}
        }
    }

    fn key_of(&self, op_id: u64) -> Option<u64> {
        self.clients.iter().find_map(|c| match &c.outstanding {
            Some((id, _, _, _, _, Pending::Read { key } | Pending::Write { key, .. }, _))
                if *id == op_id =>
            {
                Some(*key)
            }
            _ => None,
        })
    }

    fn read_local(&self, at: CoreAddress, group: GroupId, op_id: u64) -> Option<Vec<u8>> {
        let key = self.key_of(op_id)?;
        self.host(at)?
            .state_machine(group)?
            .get(&key.to_be_bytes())
            .map(<[u8]>::to_vec)
    }

    /// Completes the client op `op_id` with the result `make` derives from what it was.
    fn complete(&mut self, op_id: u64, make: impl FnOnce(Pending) -> Option<RegisterOp>) {
        let step = self.step;
        let Some(client) = self
            .clients
            .iter_mut()
            .find(|c| c.outstanding.as_ref().is_some_and(|o| o.0 == op_id))
        else {
            return;
        };
        let (_, invoked, _, group, target, pending, is_write) =
            client.outstanding.take().expect("found above");
        client.router.on_answer(group, target);
        if is_write && step > self.o.safety_steps {
            self.healed_writes.insert(group);
        }
        let key = match &pending {
            Pending::Read { key } | Pending::Write { key, .. } => *key,
        };
        if let Some(op) = make(pending) {
            self.results.insert(op_id, op.clone());
            self.history.entry(key).or_default().push(HistoryOp {
                invoked,
                completed: Some(step),
                op,
            });
            self.report.ops_completed += 1;
            self.record(9, op_id);
        }
    }

    /// Progress after healing: every group committed a client write, no replica move is
    /// under way, and no replica is left on a failed node.
    fn settled(&self) -> bool {
        (1..=self.o.groups)
            .map(GroupId)
            .all(|g| self.healed_writes.contains(&g))
            && self.moves.is_empty()
            && self
                .placement
                .values()
                .flat_map(|m| m.values())
                .all(|at| !self.nodes[&at.node.0].failed)
    }

    fn drive_clients(&mut self) {
        for c in 0..self.clients.len() {
            // Time out an operation: its outcome is unknown.
            if let Some((id, invoked, deadline, group, target, pending, is_write)) =
                self.clients[c].outstanding.clone()
                && self.step >= deadline
            {
                self.clients[c].outstanding = None;
                if is_write && let Pending::Write { key, op } = pending {
                    self.history.entry(key).or_default().push(HistoryOp {
                        invoked,
                        completed: None,
                        op,
                    });
                }
                self.report.ops_unknown += 1;
                self.record(10, id);
                let now = self.now();
                self.clients[c].router.on_failure(now, group, target);
            }
            if !self.scripted && self.clients[c].outstanding.is_none() && self.rng.below(4) == 0 {
                self.issue(c);
            }
        }
    }

    fn issue(&mut self, c: usize) {
        let key = self.rng.below(self.o.keys);
        self.clients[c].counter += 1;
        let value = format!("c{c}-{}", self.clients[c].counter).into_bytes();
        let kind = self.rng.below(11);
        self.issue_op(c, key, kind, value);
    }

    /// Issues an operation for client `c` at its guessed node: `kind` 0..3 read, 3..8 put,
    /// 8..10 compare-and-set, 10 delete. Returns the op id.
    fn issue_op(&mut self, c: usize, key: u64, kind: u64, value: Vec<u8>) -> u64 {
        let group = GroupId(1 + key % self.o.groups);
        let op_id = self.next_op;
        self.next_op += 1;
        let now = self.now();
        if self.clients[c].table.wants_fetch(now) {
            // The routing read of the placement table (answered at once here).
            let table = self
                .placement
                .iter()
                .map(|(g, m)| (*g, m.values().copied().collect()))
                .collect();
            self.clients[c].table.store(self.placement_epoch, table);
        }
        let candidates = self.clients[c]
            .table
            .replicas(group)
            .map(<[CoreAddress]>::to_vec)
            .unwrap_or_default();
        let target = match self.clients[c].pinned {
            Some(node) => candidates
                .iter()
                .find(|a| a.node.0 == node)
                .copied()
                .unwrap_or(address(node, 0)),
            None => self.clients[c]
                .router
                .target(now, group, &candidates)
                .expect("every group has replicas"),
        };
        let stale_read = self.o.bug == Some(Bug::StaleRead);
        let deadline = self.step + OP_TIMEOUT_STEPS;
        let Some(host) = self
            .nodes
            .get_mut(&target.node.0)
            .and_then(|n| n.cores.get_mut(target.core.0 as usize))
            .and_then(|core| core.host.as_mut())
        else {
            self.clients[c].router.on_failure(now, group, target);
            return op_id;
        };
        let (pending, result, is_write) = if kind < 3 {
            if stale_read {
                // The bug: answer from this replica's state, whoever it is.
                let found = host
                    .state_machine(group)
                    .and_then(|s| s.get(&key.to_be_bytes()).map(<[u8]>::to_vec));
                let step = self.step;
                self.history.entry(key).or_default().push(HistoryOp {
                    invoked: step,
                    completed: Some(step),
                    op: RegisterOp::Get { found },
                });
                self.report.ops_completed += 1;
                return op_id;
            }
            (
                Pending::Read { key },
                host.read(group, ProposalToken(op_id)),
                false,
            )
        } else {
            let k = key.to_be_bytes().to_vec();
            let (command, op) = if kind >= 10 {
                (KvCommand::Delete { key: k }, RegisterOp::Delete)
            } else if kind < 8 {
                (
                    KvCommand::Put {
                        key: k,
                        value: value.clone(),
                    },
                    RegisterOp::Put { value },
                )
            } else {
                let expected = self.history.get(&key).and_then(|h| {
                    h.iter().rev().find_map(|o| match &o.op {
                        RegisterOp::Put { value } => Some(value.clone()),
                        _ => None,
                    })
                });
                let op = RegisterOp::Cas {
                    expected: expected.clone(),
                    new: Some(value.clone()),
                    applied: false,
                };
                (
                    KvCommand::CompareAndSet {
                        key: k,
                        expected,
                        new: Some(value),
                    },
                    op,
                )
            };
            (
                Pending::Write { key, op },
                host.propose(group, command.encode(), ProposalToken(op_id)),
                true,
            )
        };
        match result {
            Ok(()) => {
                self.clients[c].outstanding =
                    Some((op_id, self.step, deadline, group, target, pending, is_write))
            }
            Err(HostError::NotLeader { leader, .. }) => {
                self.clients[c].router.on_not_leader(group, target, leader);
            }
            Err(HostError::UnknownGroup(_)) => {
                // The replica moved away: the cached table is stale.
                self.report.stale_routes += 1;
                let client = &mut self.clients[c];
                client.table.on_not_hosted(&mut client.router, group);
            }
            Err(_) => {
                self.clients[c].router.on_failure(now, group, target);
            }
        }
        op_id
    }

    fn check(&mut self) {
        for ((group, term), leaders) in &self.leaders {
            if leaders.len() > 1 {
                self.report.violations.push(format!(
                    "group {} term {term} had leaders {leaders:?}",
                    group.0
                ));
            }
        }
        for (key, history) in &self.history {
            match check_register(history, None, 2_000_000) {
                Some(true) => {}
                Some(false) => self.report.violations.push(format!(
                    "key {key}: history of {} ops is not linearizable",
                    history.len()
                )),
                None => {}
            }
        }
        // Convergence: every replica that applied as far as the others holds the same map.
        for g in (1..=self.o.groups).map(GroupId) {
            let states: Vec<&KvStore> = self
                .nodes
                .values()
                .flat_map(|n| &n.cores)
                .filter_map(|c| c.host.as_ref().and_then(|h| h.state_machine(g)))
                .collect();
            let top = states.iter().map(|s| s.applied_index()).max().unwrap_or(0);
            let complete: Vec<&&KvStore> =
                states.iter().filter(|s| s.applied_index() == top).collect();
            if complete
                .windows(2)
                .any(|w| w[0].scan(&[], None, usize::MAX) != w[1].scan(&[], None, usize::MAX))
            {
                self.report
                    .violations
                    .push(format!("group {}: replicas at index {top} diverged", g.0));
            }
        }
    }
}

/// A scripted run for scenario tests: no random faults; the test cuts, isolates, crashes
/// and heals, and issues operations itself, in the simulator's vocabulary.
pub struct Scenario {
    sim: Sim,
}

/// An operation issued by a scenario.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OpHandle(u64);

impl Scenario {
    /// `nodes` nodes hosting one group, a perfect network and instant fsyncs until told
    /// otherwise.
    pub fn new(nodes: u64) -> Scenario {
        Scenario::with_replicas(nodes, nodes)
    }

    /// Like [`Scenario::new`], with the group's `replicas` on the first nodes and the rest
    /// spare (somewhere to move to).
    pub fn with_replicas(nodes: u64, replicas: u64) -> Scenario {
        let options = SimOptions {
            nodes,
            cores: 1,
            replicas,
            groups: 1,
            clients: 0,
            keys: 1,
            ..SimOptions::new(0)
        };
        let mut sim = Sim::new(&options);
        sim.scripted = true;
        sim.faults = Faults::none();
        Scenario { sim }
    }

    /// Runs for `duration` of virtual time.
    pub fn run_for(&mut self, duration: Duration) {
        let steps = (duration.as_nanos() / STEP.as_nanos()) as u64;
        for _ in 0..steps {
            self.sim.step_quietly();
        }
    }

    /// Runs until `done` holds, for at most `limit` of virtual time; returns whether it held.
    pub fn run_until(&mut self, limit: Duration, mut done: impl FnMut(&Scenario) -> bool) -> bool {
        let steps = (limit.as_nanos() / STEP.as_nanos()) as u64;
        for _ in 0..steps {
            if done(self) {
                return true;
            }
            self.sim.step_quietly();
        }
        done(self)
    }

    /// The node whose replica leads, if one does (and is up).
    pub fn leader(&self) -> Option<u64> {
        self.sim.leader_of(GroupId(1)).map(|(at, _)| at.node.0)
    }

    /// Cuts every link to and from `node`.
    pub fn isolate(&mut self, node: u64) {
        for other in 1..=self.sim.o.nodes {
            if other != node {
                self.sim.cut.insert((node, other));
                self.sim.cut.insert((other, node));
            }
        }
    }

    /// Cuts the link from `from` to `to` only (an asymmetric partition).
    pub fn cut(&mut self, from: u64, to: u64) {
        self.sim.cut.insert((from, to));
    }

    /// Restores every link.
    pub fn heal(&mut self) {
        self.sim.cut.clear();
    }

    /// Makes every fsync take `duration`: writes stay unsynced that long.
    pub fn slow_fsync(&mut self, duration: Duration) {
        self.sim.faults.max_fsync_steps = (duration.as_nanos() / STEP.as_nanos()) as u64;
    }

    /// Crashes `node`, losing its unsynced writes; it stays down until `restart`.
    pub fn crash(&mut self, node: u64) {
        self.sim.crash(node, None);
    }

    pub fn restart(&mut self, node: u64) {
        if self.sim.nodes.get(&node).is_some_and(|n| !n.up) {
            self.sim.start(node);
        }
    }

    /// Asks the current leader to hand leadership to `node`.
    pub fn transfer_leader(&mut self, node: u64) {
        let group = GroupId(1);
        let Some((leader, _)) = self.sim.leader_of(group) else {
            return;
        };
        let Some(to) = self.sim.placement[&group]
            .iter()
            .find(|(_, at)| at.node.0 == node)
            .map(|(r, _)| *r)
        else {
            return;
        };
        if let Some(host) = self.sim.host_mut(leader) {
            let _ = host.transfer_leader(group, to);
        }
    }

    fn issue(&mut self, node: u64, key: u64, kind: u64, value: &str) -> OpHandle {
        self.sim.clients.push(Client {
            router: Router::new(),
            table: PlacementCache::new(),
            pinned: Some(node),
            outstanding: None,
            counter: 0,
        });
        let c = self.sim.clients.len() - 1;
        OpHandle(self.sim.issue_op(c, key, kind, value.as_bytes().to_vec()))
    }

    /// A client writes `value` to `key` through `node` (which must lead to accept it).
    pub fn put(&mut self, node: u64, key: u64, value: &str) -> OpHandle {
        self.issue(node, key, 5, value)
    }

    /// A client reads `key` through `node` (ReadIndex at the leader).
    pub fn get(&mut self, node: u64, key: u64) -> OpHandle {
        self.issue(node, key, 0, "")
    }

    /// The result of an operation, once it completed.
    pub fn result(&self, op: OpHandle) -> Option<&RegisterOp> {
        self.sim.results.get(&op.0)
    }

    /// Whether `op` is still waiting (not completed, not timed out).
    pub fn pending(&self, op: OpHandle) -> bool {
        self.sim
            .clients
            .iter()
            .any(|c| c.outstanding.as_ref().is_some_and(|o| o.0 == op.0))
    }

    /// The nodes holding a replica of the group (voter or learner), per the placement table.
    pub fn replicas(&self) -> Vec<u64> {
        self.sim.placement[&GroupId(1)]
            .values()
            .map(|at| at.node.0)
            .collect()
    }

    /// Starts moving the replica on node `from` to node `to`: a learner there, caught up,
    /// then promoted while `from` is removed in one joint change.
    pub fn move_replica(&mut self, from: u64, to: u64) {
        let group = GroupId(1);
        let replica = self.sim.placement[&group]
            .iter()
            .find(|(_, at)| at.node.0 == from)
            .map(|(r, _)| *r)
            .expect("a replica on the source node");
        assert!(!self.sim.moves.contains_key(&group), "one move at a time");
        self.sim.begin_move(group, replica, address(to, 0));
    }

    /// Whether a replica move is under way.
    pub fn moving(&self) -> bool {
        !self.sim.moves.is_empty()
    }

    /// Damages synced data in `node`'s log (a bit flip in a record that has another after
    /// it). Returns false if the log holds too little to damage that way.
    pub fn corrupt_disk(&mut self, node: u64) -> bool {
        let n = self.sim.nodes.get_mut(&node).expect("known node");
        let done = n.cores[0].disk.corrupt(&mut self.sim.rng);
        n.corrupted |= done;
        done
    }

    /// Whether `node` refused to start on a damaged log (it then stays down; its replica is
    /// replaced on another node).
    pub fn failed(&self, node: u64) -> bool {
        self.sim.nodes[&node].failed
    }

    /// Every checker's complaints so far (linearizability, leaders per term, convergence).
    pub fn violations(&mut self) -> Vec<String> {
        self.sim.report.violations.clear();
        self.sim.check();
        self.sim.report.violations.clone()
    }
}
