//! The deterministic cluster simulator: every replica of every node in one thread, on a
//! virtual clock, with a seeded network and disk that misbehave.
//!
//! A run draws its fault options from its seed (VOPR style), then has two phases. The
//! **safety phase** runs clients against the cluster while messages are lost, duplicated,
//! delayed and reordered, links are cut (both ways or one way), fsyncs are slow, and nodes
//! crash — losing whatever their disk had not synced — and restart from what it had. The
//! **liveness phase** heals everything and requires every group to elect a leader and
//! accept a write within a bounded time. Checkers then verify: each key's history is
//! linearizable, no term of any group had two leaders, and the replicas converged to the
//! same state. The same seed always gives the same run; `trace_hash` proves it.
//!
//! The simulator drives the very `RaftHost` and `KvStore` the nodes run; only the I/O is
//! simulated. Known bugs can be injected ([`Bug`]) to show the checkers catch them.

pub mod linearizability;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::Duration;

use serde::Serialize;

use crate::ids::{CoreId, NodeId};
use crate::kv::{KvCommand, KvResponse, KvStore, StateMachine};
use crate::raft_host::{
    CoreAddress, GroupId, HostError, HostEvent, PersistBatch, PersistedGroup, ProposalToken,
    RaftHost, ReplicaId,
};
use crate::rng::{Rng, mix64};
use crate::routing::Router;
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
    pub groups: u64,
    pub clients: usize,
    pub keys: u64,
    /// Steps (of `STEP`) with faults, then steps allowed for recovery.
    pub safety_steps: u64,
    pub liveness_steps: u64,
    pub bug: Option<Bug>,
}

impl SimOptions {
    pub fn new(seed: u64) -> SimOptions {
        SimOptions {
            seed,
            nodes: 3,
            groups: 2,
            clients: 4,
            keys: 4,
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
    /// Chance per step that a group's leader is asked to hand leadership to another node.
    pub transfer_per_step: f64,
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
        }
    }
}

/// The result of one run.
#[derive(Clone, Debug, Serialize)]
pub struct SimReport {
    pub seed: u64,
    pub faults: Faults,
    pub ops_completed: u64,
    pub ops_unknown: u64,
    pub crashes: u64,
    pub partitions: u64,
    pub virtual_seconds: f64,
    pub trace_hash: u64,
    pub violations: Vec<String>,
}

struct InFlight {
    deliver_at: u64,
    seq: u64,
    from: u64,
    to: u64,
    group: GroupId,
    message: raft::eraftpb::Message,
}

struct SimNode {
    host: Option<RaftHost<KvStore>>,
    durable: BTreeMap<GroupId, PersistedGroup>,
    /// A written batch, durable at the given step unless the node crashes first.
    pending: Option<(PersistBatch, u64, bool)>,
    down_until: Option<u64>,
    /// The durable term of each group when the node crashed: a restart must not go below it.
    terms_at_crash: HashMap<GroupId, u64>,
    /// How far this node's clock runs ahead of true time (clock jumps).
    clock_ahead: Duration,
    /// The node's process is paused (no ticks, no I/O) until this step.
    paused_until: u64,
}

#[derive(Clone)]
enum Pending {
    Write { key: u64, op: RegisterOp },
    Read { key: u64 },
}

struct Client {
    /// The real client routing logic: leader cache, hints, avoidance of failed nodes.
    router: Router,
    /// A scripted client sends every request to this node.
    pinned: Option<u64>,
    /// (op id, invoked, deadline, group, target, pending, is write)
    outstanding: Option<(u64, u64, u64, GroupId, CoreAddress, Pending, bool)>,
    counter: u64,
}

fn address(node: u64) -> CoreAddress {
    CoreAddress {
        node: NodeId(node),
        core: CoreId(0),
    }
}

fn replica(group: GroupId, node: u64) -> ReplicaId {
    ReplicaId((group.0 << 16) | node)
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
            let mut rng = Rng::new(options.seed);
            SimReport {
                seed: options.seed,
                faults: Faults::draw(&mut rng),
                ops_completed: 0,
                ops_unknown: 0,
                crashes: 0,
                partitions: 0,
                virtual_seconds: 0.0,
                trace_hash: 0,
                violations: vec![format!("panic: {message}")],
            }
        }
    }
}

struct Sim {
    o: SimOptions,
    /// Scripted scenarios: no random faults, no random client operations.
    scripted: bool,
    /// Every node's address: where a client without a known leader may ask.
    candidates: Vec<CoreAddress>,
    rng: Rng,
    faults: Faults,
    step: u64,
    nodes: BTreeMap<u64, SimNode>,
    network: Vec<InFlight>,
    seq: u64,
    cut: HashSet<(u64, u64)>,
    clients: Vec<Client>,
    history: BTreeMap<u64, Vec<HistoryOp>>,
    /// Replicas that announced themselves leader, per (group, term).
    leaders: HashMap<(GroupId, u64), HashSet<u64>>,
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
        let mut rng = Rng::new(o.seed);
        let faults = Faults::draw(&mut rng);
        let report = SimReport {
            seed: o.seed,
            faults: faults.clone(),
            ops_completed: 0,
            ops_unknown: 0,
            crashes: 0,
            partitions: 0,
            virtual_seconds: 0.0,
            trace_hash: 0,
            violations: Vec::new(),
        };
        let mut sim = Sim {
            scripted: false,
            candidates: (1..=o.nodes).map(address).collect(),
            rng,
            faults,
            step: 0,
            nodes: BTreeMap::new(),
            network: Vec::new(),
            seq: 0,
            cut: HashSet::new(),
            clients: (0..o.clients)
                .map(|c| Client {
                    router: Router::starting_at(c),
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
            sim.nodes.insert(
                n,
                SimNode {
                    host: None,
                    durable: BTreeMap::new(),
                    pending: None,
                    down_until: None,
                    terms_at_crash: HashMap::new(),
                    clock_ahead: Duration::ZERO,
                    paused_until: 0,
                },
            );
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

    fn start(&mut self, n: u64) {
        let mut host = RaftHost::new(address(n));
        host.set_audit(true);
        let groups: Vec<GroupId> = (1..=self.o.groups).map(GroupId).collect();
        let node = self.nodes.get_mut(&n).expect("known node");
        for g in &groups {
            for m in 1..=self.o.nodes {
                host.set_address(replica(*g, m), address(m));
            }
            let voters: Vec<ReplicaId> = (1..=self.o.nodes).map(|m| replica(*g, m)).collect();
            let mut persisted = node.durable.get(g).cloned();
            if self.o.bug == Some(Bug::ForgetVote)
                && let Some(p) = persisted.as_mut()
            {
                p.hard_state.vote = 0;
                p.hard_state.term = p.entries.last().map_or(0, |e| e.term);
            }
            host.add_group(*g, replica(*g, n), &voters, persisted, KvStore::new())
                .expect("fresh host");
        }
        // Raft (Figure 2): currentTerm is persistent; a server's term never goes back.
        for g in &groups {
            let (before, after) = (
                node.terms_at_crash.get(g).copied().unwrap_or(0),
                host.term(*g).unwrap_or(0),
            );
            if after < before {
                self.report.violations.push(format!(
                    "node {n} group {} restarted at term {after} after term {before}",
                    g.0
                ));
            }
        }
        node.host = Some(host);
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
                // Liveness phase: heal every partition and restart every node.
                live_since = Some(self.step);
                self.cut.clear();
                let down: Vec<u64> = self
                    .nodes
                    .iter()
                    .filter(|(_, n)| n.host.is_none())
                    .map(|(i, _)| *i)
                    .collect();
                for n in down {
                    self.start(n);
                }
            }
            self.advance(safety);
            if live_since.is_some() && progress.is_none() && self.all_groups_serve() {
                progress = Some(self.step);
            }
        }
        self.report.virtual_seconds = (STEP * self.step as u32).as_secs_f64();
        if progress.is_none() {
            self.report.violations.push(format!(
                "liveness: not every group elected a leader and committed a write within {} s of healing",
                (STEP * self.o.liveness_steps as u32).as_secs()
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
    /// deliveries, clients.
    fn advance(&mut self, faults: bool) {
        if faults {
            self.inject_faults();
        } else {
            self.restart_due();
        }
        let (now, step) = (self.now(), self.step);
        for node in self.nodes.values_mut() {
            if let Some(host) = node.host.as_mut()
                && node.paused_until <= step
            {
                host.handle_tick(now + node.clock_ahead);
            }
        }
        self.drive_nodes();
        self.deliver();
        self.drive_clients();
    }

    /// Crashes node `n`: whatever it wrote but did not sync is lost. It restarts after
    /// `down_steps`, or when told to.
    fn crash(&mut self, n: u64, down_steps: Option<u64>) {
        let step = self.step;
        let Some(node) = self.nodes.get_mut(&n) else {
            return;
        };
        if node.host.is_none() {
            return;
        }
        // The durable term is what a restart must not go below (a term only in memory may
        // be lost: votes leave only once durable).
        node.terms_at_crash = node
            .durable
            .iter()
            .map(|(g, p)| (*g, p.hard_state.term))
            .collect();
        node.host = None;
        node.pending = None;
        node.down_until = down_steps.map(|d| step + d);
        self.report.crashes += 1;
        self.network.retain(|m| m.to != n);
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
            if self.nodes.get(&n).is_some_and(|node| node.host.is_some()) {
                // Sometimes back at once (mid-election), sometimes after seconds.
                let down = if self.rng.below(2) == 0 {
                    1 + self.rng.below(20)
                } else {
                    50 + self.rng.below(300)
                };
                self.crash(n, Some(down));
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
            let to = 1 + self.rng.below(self.o.nodes);
            if let Some(host) = self
                .nodes
                .values_mut()
                .filter_map(|n| n.host.as_mut())
                .find(|h| h.is_leader(group))
            {
                let _ = host.transfer_leader(group, replica(group, to));
            }
            self.record(13, to);
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
            // Persistence: one batch at a time, durable after a random fsync delay.
            let fsync_delay = self.rng.below(self.faults.max_fsync_steps + 1);
            let ack_early = self.o.bug == Some(Bug::AckBeforeFsync);
            let node = self.nodes.get_mut(&n).expect("known");
            if node.paused_until > self.step {
                continue;
            }
            let Some(host) = node.host.as_mut() else {
                continue;
            };
            if node.pending.is_none()
                && let Some(batch) = host.poll_persist()
            {
                if ack_early {
                    host.handle_persisted(batch.id);
                }
                node.pending = Some((batch, self.step + fsync_delay, ack_early));
            }
            if let Some((batch, at, acked)) = node.pending.take() {
                if at <= self.step {
                    for w in &batch.writes {
                        node.durable.entry(w.group).or_default().apply(w);
                    }
                    if !acked {
                        host.handle_persisted(batch.id);
                    }
                } else {
                    node.pending = Some((batch, at, acked));
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
            let terms: HashMap<GroupId, u64> = (1..=self.o.groups)
                .map(GroupId)
                .filter_map(|g| host.term(g).map(|t| (g, t)))
                .collect();
            for out in outgoing {
                let to = out.to.node.0;
                if self.cut.contains(&(n, to)) || self.rng.next_f64() < self.faults.loss {
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
                        from: n,
                        to,
                        group: out.group,
                        message: out.message.clone(),
                    });
                }
            }
            for e in events {
                self.on_event(n, e, &terms);
            }
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
                .get(&self.network[i].to)
                .map_or(0, |n| n.paused_until);
            if self.network[i].deliver_at <= step && paused_until <= step {
                due.push(self.network.swap_remove(i));
            } else {
                i += 1;
            }
        }
        due.sort_by_key(|m| (m.deliver_at, m.seq));
        for m in due {
            if self.cut.contains(&(m.from, m.to)) {
                continue;
            }
            self.record(
                m.to,
                (m.message.get_msg_type() as u64) << 32 | m.message.index,
            );
            if let Some(host) = self.nodes.get_mut(&m.to).and_then(|n| n.host.as_mut()) {
                let _ = host.handle_message(m.group, m.message);
            }
        }
    }

    fn on_event(&mut self, node: u64, event: HostEvent, terms: &HashMap<GroupId, u64>) {
        match event {
            HostEvent::LeaderChanged {
                group,
                is_self: true,
                ..
            } => {
                let term = terms.get(&group).copied().unwrap_or(0);
                self.leaders.entry((group, term)).or_default().insert(node);
                self.record(8, node ^ term << 8);
            }
            HostEvent::Applied {
                token, response, ..
            } => {
                let Ok(r) = KvResponse::decode(&response) else {
                    return;
                };
                self.complete(token.0, |pending| match (pending, r) {
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
                let value = self.read_local(node, group, token.0);
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
                        "group {} index {index}: node {node} applied term {term} digest {digest:x}, another replica term {t} digest {d:x}",
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

    fn read_local(&self, node: u64, group: GroupId, op_id: u64) -> Option<Vec<u8>> {
        let key = self.key_of(op_id)?;
        let host = self.nodes.get(&node)?.host.as_ref()?;
        host.state_machine(group)?
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

    /// Progress after healing: every group committed a client write.
    fn all_groups_serve(&self) -> bool {
        (1..=self.o.groups)
            .map(GroupId)
            .all(|g| self.healed_writes.contains(&g))
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
        let kind = self.rng.below(10);
        self.issue_op(c, key, kind, value);
    }

    /// Issues an operation for client `c` at its guessed node: `kind` 0..3 read, 3..8 put,
    /// 8..10 compare-and-set. Returns the op id.
    fn issue_op(&mut self, c: usize, key: u64, kind: u64, value: Vec<u8>) -> u64 {
        let group = GroupId(1 + key % self.o.groups);
        let op_id = self.next_op;
        self.next_op += 1;
        let now = self.now();
        let target = match self.clients[c].pinned {
            Some(node) => address(node),
            None => self.clients[c]
                .router
                .target(now, group, &self.candidates)
                .expect("every group has candidates"),
        };
        let node = target.node.0;
        let stale_read = self.o.bug == Some(Bug::StaleRead);
        let deadline = self.step + OP_TIMEOUT_STEPS;
        let Some(host) = self.nodes.get_mut(&node).and_then(|n| n.host.as_mut()) else {
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
            let (command, op) = if kind < 8 {
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
                .filter_map(|n| n.host.as_ref().and_then(|h| h.state_machine(g)))
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
        let options = SimOptions {
            nodes,
            groups: 1,
            clients: 0,
            keys: 1,
            ..SimOptions::new(0)
        };
        let mut sim = Sim::new(&options);
        sim.scripted = true;
        sim.faults = Faults {
            loss: 0.0,
            duplicate: 0.0,
            max_delay_steps: 1,
            max_fsync_steps: 0,
            crash_per_step: 0.0,
            partition_per_step: 0.0,
            clock_jump_per_step: 0.0,
            pause_per_step: 0.0,
            transfer_per_step: 0.0,
        };
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
        self.sim
            .nodes
            .iter()
            .find(|(_, n)| n.host.as_ref().is_some_and(|h| h.is_leader(GroupId(1))))
            .map(|(i, _)| *i)
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
        if self.sim.nodes.get(&node).is_some_and(|n| n.host.is_none()) {
            self.sim.start(node);
        }
    }

    /// Asks the current leader to hand leadership to `node`.
    pub fn transfer_leader(&mut self, node: u64) {
        let Some(leader) = self.leader() else { return };
        if let Some(host) = self
            .sim
            .nodes
            .get_mut(&leader)
            .and_then(|n| n.host.as_mut())
        {
            let _ = host.transfer_leader(GroupId(1), replica(GroupId(1), node));
        }
    }

    fn issue(&mut self, node: u64, key: u64, kind: u64, value: &str) -> OpHandle {
        self.sim.clients.push(Client {
            router: Router::new(),
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

    /// Every checker's complaints so far (linearizability, leaders per term, convergence).
    pub fn violations(&mut self) -> Vec<String> {
        self.sim.report.violations.clear();
        self.sim.check();
        self.sim.report.violations.clone()
    }
}
