//! Scripted runs for scenario tests: no random faults; the test cuts, isolates, crashes
//! and heals, and issues operations itself, in the simulator's vocabulary
//! (`tests/sim_scenarios.rs` reads like a specification).

use std::time::Duration;

use crate::client::call::Call;
use crate::client::routing::Routing;
use crate::cluster::metadata::MetadataCommand;
use crate::ids::{CoreAddress, CoreId, GroupId, NodeId};
use crate::sim::clients::{OpKind, SimClient};
use crate::sim::faults::Faults;
use crate::sim::linearizability::RegisterOp;
use crate::sim::operator::{Chore, Operator};
use crate::sim::{STEP, Sim, SimOptions};
use crate::wire::kv_rpc::KvOp;

/// A scripted run: one group, one core per node (or, from [`Scenario::balancing`], many
/// groups under a steady load for the rebalancer).
pub struct Scenario {
    sim: Sim,
    /// The closed-loop load clients (indices into the simulator's clients).
    load: Vec<usize>,
}

/// An operation issued by a scenario.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OpHandle(u64);

/// The group every scenario runs.
const GROUP: GroupId = GroupId(1);

impl Scenario {
    /// `nodes` nodes hosting one group, a perfect network and instant fsyncs until told
    /// otherwise.
    pub fn new(nodes: u64) -> Scenario {
        Scenario::with_replicas(nodes, nodes as u16)
    }

    /// Like [`Scenario::new`], with the group's `replicas` on some of the nodes and the
    /// rest spare (somewhere to move to).
    pub fn with_replicas(nodes: u64, replicas: u16) -> Scenario {
        let options = SimOptions {
            nodes,
            cores: 1,
            replicas,
            groups: 1,
            clients: 0,
            keys: 1,
            // Scripts move replicas themselves.
            rebalance: false,
            ..SimOptions::new(0)
        };
        Scenario::scripted(&options)
    }

    /// A scripted run of `options`: no random faults or operations, a perfect network.
    fn scripted(options: &SimOptions) -> Scenario {
        let mut sim = Sim::new(options);
        sim.scripted = true;
        sim.faults = Faults::none();
        Scenario {
            sim,
            load: Vec::new(),
        }
    }

    /// A run for the rebalancer: `nodes` × `cores`, `groups` groups of three replicas, four
    /// keys per group, a perfect network, and the rebalancer in the nodes (sweeps every 2 s).
    pub fn balancing(nodes: u64, cores: u16, groups: u32, seed: u64) -> Scenario {
        let options = SimOptions {
            nodes,
            cores,
            replicas: 3,
            groups,
            clients: 0,
            keys: u64::from(groups) * 4,
            rebalance: true,
            ..SimOptions::new(seed)
        };
        Scenario::scripted(&options)
    }

    /// Runs for `duration` with `clients` closed-loop clients busy: `hot_share` of their
    /// operations on the keys of the `hot` groups, the rest on every key; half writes.
    pub fn run_with_load(
        &mut self,
        duration: Duration,
        clients: usize,
        hot: &[u64],
        hot_share: f64,
    ) {
        while self.load.len() < clients {
            let routing =
                Routing::starting_at(&self.sim.spec, self.load.len()).expect("a valid spec");
            self.sim.clients.push(SimClient::new(routing, None));
            self.load.push(self.sim.clients.len() - 1);
        }
        let groups = u64::from(self.sim.o.groups);
        let keys = self.sim.o.keys;
        let hot_keys: Vec<u64> = (0..keys)
            .filter(|k| hot.contains(&(1 + k % groups)))
            .collect();
        let steps = (duration.as_nanos() / STEP.as_nanos()) as u64;
        for _ in 0..steps {
            for i in 0..clients {
                let c = self.load[i];
                if !self.sim.clients[c].idle() {
                    continue;
                }
                let k = if !hot_keys.is_empty() && self.sim.rng.next_f64() < hot_share {
                    hot_keys[self.sim.rng.below(hot_keys.len() as u64) as usize]
                } else {
                    self.sim.rng.below(keys)
                };
                let key = self.sim.key_table[k as usize];
                self.sim.clients[c].counter += 1;
                let value = format!("l{i}-{}", self.sim.clients[c].counter).into_bytes();
                let kind = if self.sim.rng.below(2) == 0 {
                    OpKind::Put
                } else {
                    OpKind::Get
                };
                self.sim.issue_op(c, key, kind, value);
            }
            self.sim.step_quietly();
        }
    }

    /// The groups the node leading the most groups leads now.
    pub fn groups_led_by_busiest_node(&self) -> Vec<u64> {
        let mut led: std::collections::BTreeMap<NodeId, Vec<u64>> = Default::default();
        for g in 1..=u64::from(self.sim.o.groups) {
            if let Some((at, _)) = self.sim.leader_of(GroupId(g)) {
                led.entry(at.node).or_default().push(g);
            }
        }
        led.into_values().max_by_key(Vec::len).unwrap_or_default()
    }

    /// The coordinator's node and core max / mean, from the nodes' own load reports.
    pub fn imbalance(&self) -> Option<(f64, f64)> {
        self.sim
            .nodes
            .keys()
            .find_map(|n| self.sim.core(CoreAddress::new(*n, CoreId(0)))?.imbalance())
    }

    /// The coordinator's status (`kv status`), if a coordinator runs.
    pub fn rebalancer_status(&self) -> Option<crate::node::BalancerStatus> {
        self.sim.nodes.keys().find_map(|n| {
            self.sim
                .core(CoreAddress::new(*n, CoreId(0)))?
                .balancer_status()
        })
    }

    /// Leader transfers and replica moves the running coordinators dispatched so far.
    pub fn rebalancer_dispatches(&self) -> u64 {
        self.sim
            .nodes
            .keys()
            .filter_map(|n| {
                self.sim
                    .core(CoreAddress::new(*n, CoreId(0)))?
                    .balancer_stats()
            })
            .map(|s| s.leader_transfers_started + s.replica_moves_started)
            .sum()
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

    /// The node whose replica leads, if one does (and runs).
    pub fn leader(&self) -> Option<u64> {
        self.sim.leader_of(GROUP).map(|(at, _)| at.node.0)
    }

    /// Cuts every link to and from `node`.
    pub fn isolate(&mut self, node: u64) {
        for other in (1..=self.sim.o.nodes).filter(|o| *o != node) {
            self.sim.network.cut(NodeId(node), NodeId(other));
            self.sim.network.cut(NodeId(other), NodeId(node));
        }
    }

    /// Cuts the link from `from` to `to` only (an asymmetric partition).
    pub fn cut(&mut self, from: u64, to: u64) {
        self.sim.network.cut(NodeId(from), NodeId(to));
    }

    /// Restores every link.
    pub fn heal(&mut self) {
        self.sim.network.heal();
    }

    /// Makes every fsync take `duration`: writes stay unsynced that long.
    pub fn slow_fsync(&mut self, duration: Duration) {
        self.sim.faults.max_fsync_steps = (duration.as_nanos() / STEP.as_nanos()) as u64;
    }

    /// Crashes `node`, losing its unsynced writes; it stays down until `restart`.
    pub fn crash(&mut self, node: u64) {
        self.sim.crash(NodeId(node), None);
    }

    pub fn restart(&mut self, node: u64) {
        self.sim.start(NodeId(node));
    }

    /// Pauses `node`'s process (no ticks, no I/O; its messages read on resume) for
    /// `duration`, as SIGSTOP or a long GC would.
    pub fn pause(&mut self, node: u64, duration: Duration) {
        let steps = (duration.as_nanos() / STEP.as_nanos()) as u64;
        if let Some(n) = self.sim.nodes.get_mut(&NodeId(node)) {
            n.paused_until = self.sim.step + steps;
        }
    }

    /// Moves `node`'s clock ahead by `duration`: its timers fire early, all at once.
    pub fn jump_clock(&mut self, node: u64, duration: Duration) {
        if let Some(n) = self.sim.nodes.get_mut(&NodeId(node)) {
            n.clock_ahead += duration;
        }
    }

    /// Whether the group's replica on `node` is quiesced (neither ticks nor heartbeats).
    pub fn quiesced(&self, node: u64) -> bool {
        (0..self.sim.o.cores).any(|c| {
            self.sim
                .core(CoreAddress::new(NodeId(node), CoreId(c)))
                .is_some_and(|core| core.host().is_quiesced(GROUP))
        })
    }

    /// Asks the current leader to hand leadership to the replica on `node` (an admin
    /// request, as the rebalancer sends).
    pub fn transfer_leader(&mut self, node: u64) {
        let Some((leader, _)) = self.sim.leader_of(GROUP) else {
            return;
        };
        let Some(to) = self
            .placement()
            .into_iter()
            .find(|(_, at)| at.node == NodeId(node))
            .map(|(r, _)| r)
        else {
            return;
        };
        let op = KvOp::TransferLeader { to };
        let call = Call::pinned(leader, GROUP, op, Operator::policy());
        self.sim.operator.start(Chore::Transfer, call);
    }

    fn issue(&mut self, node: u64, key: u64, kind: OpKind, value: &str) -> OpHandle {
        let routing = Routing::new(&self.sim.spec).expect("a valid spec");
        let at = CoreAddress::new(NodeId(node), CoreId(0));
        self.sim.clients.push(SimClient::new(routing, Some(at)));
        let c = self.sim.clients.len() - 1;
        OpHandle(self.sim.issue_op(c, key, kind, value.as_bytes().to_vec()))
    }

    /// A client writes `value` to `key` through `node` (which must lead to accept it).
    pub fn put(&mut self, node: u64, key: u64, value: &str) -> OpHandle {
        self.issue(node, key, OpKind::Put, value)
    }

    /// A client reads `key` through `node` (ReadIndex at the leader).
    pub fn get(&mut self, node: u64, key: u64) -> OpHandle {
        self.issue(node, key, OpKind::Get, "")
    }

    /// The result of an operation, once it completed.
    pub fn result(&self, op: OpHandle) -> Option<&RegisterOp> {
        self.sim.results.get(&op.0)
    }

    /// Whether `op` is still waiting (not completed, not given up).
    pub fn pending(&self, op: OpHandle) -> bool {
        self.sim.clients.iter().any(|c| c.running(op.0))
    }

    /// The group's replicas per the placement table (the spec's initial placement until the
    /// metadata group recorded one).
    fn placement(&self) -> Vec<(crate::ids::ReplicaId, CoreAddress)> {
        let recorded = self.sim.metadata().map(|m| m.table().clone());
        let table =
            recorded.unwrap_or_else(|| self.sim.spec.initial_table().expect("a valid spec"));
        table
            .group(GROUP)
            .map(|p| p.replicas.iter().map(|r| (r.id, r.at)).collect())
            .unwrap_or_default()
    }

    /// The nodes holding a replica of the group (voter or learner), per the placement table.
    pub fn replicas(&self) -> Vec<u64> {
        self.placement().iter().map(|(_, at)| at.node.0).collect()
    }

    /// Starts moving the replica on node `from` to node `to` (an operator's `start_move`,
    /// carried out by the metadata leader's migration executor): a learner there, caught
    /// up, then promoted while `from` is removed in one joint change.
    pub fn move_replica(&mut self, from: u64, to: u64) {
        assert!(
            self.run_until(Duration::from_secs(10), |s| s.sim.metadata().is_some()),
            "the metadata group records the placement within 10 s"
        );
        let replica = self
            .placement()
            .into_iter()
            .find(|(_, at)| at.node == NodeId(from))
            .map(|(r, _)| r)
            .expect("a replica on the source node");
        let command = MetadataCommand::StartMove {
            group: GROUP,
            from: replica,
            to: CoreAddress::new(NodeId(to), CoreId(0)),
        };
        let op = KvOp::Write {
            command: command.encode(),
        };
        let call = Call::new(GroupId::METADATA, op, Operator::policy());
        self.sim.operator.start(Chore::Move(GROUP), call);
    }

    /// Whether a replica move is asked for or under way.
    pub fn moving(&self) -> bool {
        self.sim.operator.busy(Chore::Move(GROUP))
            || self
                .sim
                .metadata()
                .and_then(|m| m.table().group(GROUP))
                .is_some_and(|p| p.moving.is_some())
    }

    /// Damages synced data in `node`'s log (a bit flip in a record that has another after
    /// it). Returns false if the log holds too little to damage that way.
    pub fn corrupt_disk(&mut self, node: u64) -> bool {
        let n = self.sim.nodes.get_mut(&NodeId(node)).expect("known node");
        let done = n.cores[0].disk.corrupt(&mut self.sim.rng);
        n.corrupted |= done;
        done
    }

    /// Whether `node` refused to start on a damaged log (it then stays down; the operator
    /// decommissions it and its replica is replaced on another node).
    pub fn failed(&self, node: u64) -> bool {
        self.sim.nodes[&NodeId(node)].failed
    }

    /// Every checker's complaints so far (linearizability, leaders per term, convergence).
    pub fn violations(&mut self) -> Vec<String> {
        self.sim.check();
        self.sim.report.violations.clone()
    }
}
