//! The load model one sweep works on: node and core scores, and each vShard's contribution.
//!
//! Built from the topology, the placement table and the per-vShard load samples; the planner
//! mutates the scores as it plans moves so that every decision sees the effect of the moves
//! before it. Units are those of `load::ScoreScale`: an average core scores 1.0, and a node
//! scores the mean of its cores, so a node score *is* that node's load over the mean.
//!
//! The planner balances cores on **traffic** alone (writes, reads, leadership: the score
//! without its bytes): the cores of a node share its disk and memory, so where a node's
//! bytes sit among its cores does not matter, while a core's traffic is what its loop must
//! serve. `core_traffic` is scaled so that an average core's traffic is 1.0 too. The
//! reported core figures (`core_max_over_mean`, `core_bound`) stay on the full score.

use crate::balance::load::{LoadTotals, LoadWeights, ScoreScale, VShardLoad};
use crate::cluster::placement::{PackedSites, PlacementTable};
use crate::cluster::topology::{ClusterTopology, NodeState};
use crate::ids::{CoreAddress, NodeId, VShardId};

/// Marks a leader's entry in `LoadModel::replica_cores`.
const LEADER: u32 = 1 << 31;

/// One node as the model sees it.
#[derive(Clone, Debug)]
pub struct ModelNode {
    pub id: NodeId,
    pub cores: u16,
    pub state: NodeState,
    /// Index of this node's core 0 in `LoadModel::core_scores`.
    pub core_base: usize,
    /// May receive replicas and leadership: `Active` and reporting metrics.
    pub eligible: bool,
}

/// One replica in a core's list: its vShard and whether it leads, packed into 32 bits (the
/// leader flag in the top bit; vShard ids stay below `VSHARD_COUNT_MAX`). Its units follow
/// from the two (`LoadModel::units`). A sweep's first step scatters every replica into its
/// core's list, and at 4 bytes an entry that scatter costs a fraction of what a 16-byte
/// entry with the units inline did (ARCHITECTURE, *The planner*, Speed).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CoreReplica(u32);

const _: () = assert!(crate::constants::VSHARD_COUNT_MAX <= LEADER);

impl CoreReplica {
    pub fn new(vshard: VShardId, leader: bool) -> CoreReplica {
        CoreReplica(vshard.0 | if leader { LEADER } else { 0 })
    }

    pub fn vshard(self) -> VShardId {
        VShardId(self.0 & !LEADER)
    }

    pub fn leader(self) -> bool {
        self.0 & LEADER != 0
    }

    /// The same replica with leadership gained or lost.
    pub fn with_leader(self, leader: bool) -> CoreReplica {
        CoreReplica::new(self.vshard(), leader)
    }
}

/// A leader in a core's index: its leadership units (never negative) and its vShard,
/// packed so that integer order is units order, ties by vShard (sorting integers is
/// several times faster than sorting by a float key).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct LeaderKey(u128);

impl LeaderKey {
    pub fn new(units: f64, vshard: VShardId) -> LeaderKey {
        // The bits of a non-negative float order like the float; anything else is 0.
        let units = if units > 0.0 { units } else { 0.0 };
        LeaderKey(u128::from(units.to_bits()) << 32 | u128::from(vshard.0))
    }

    pub fn units(self) -> f64 {
        f64::from_bits((self.0 >> 32) as u64)
    }

    pub fn vshard(self) -> VShardId {
        VShardId(self.0 as u32)
    }
}

/// The heaviest few replicas of a core by one measure (units, or traffic), lightest
/// first: found in the model build's pass over every replica, so that a sweep's first
/// look at a core's heaviest after its heaviest moved need not walk the core's replicas
/// (`Sweep::refresh_heaviest`). Most replicas fail the one comparison against the lightest
/// kept and never touch the list.
#[derive(Clone, Copy, Debug, Default)]
pub struct TopReplicas {
    values: [f64; TopReplicas::KEPT],
    vshards: [u32; TopReplicas::KEPT],
    len: u8,
}

impl TopReplicas {
    pub const KEPT: usize = 4;

    /// The value a replica must exceed to be kept: the lightest kept once full.
    #[inline]
    fn floor(&self) -> f64 {
        if usize::from(self.len) == Self::KEPT {
            self.values[0]
        } else {
            f64::NEG_INFINITY
        }
    }

    fn offer(&mut self, value: f64, vshard: VShardId) {
        let mut at = usize::from(self.len);
        if at == Self::KEPT {
            if value <= self.values[0] {
                return;
            }
            self.values.copy_within(1.., 0);
            self.vshards.copy_within(1.., 0);
            at -= 1;
        } else {
            self.len += 1;
        }
        while at > 0 && self.values[at - 1] >= value {
            self.values[at] = self.values[at - 1];
            self.vshards[at] = self.vshards[at - 1];
            at -= 1;
        }
        self.values[at] = value;
        self.vshards[at] = vshard.0;
    }

    /// The kept replicas, lightest first.
    pub fn iter(&self) -> impl Iterator<Item = (f64, VShardId)> + '_ {
        let len = usize::from(self.len);
        self.values[..len]
            .iter()
            .zip(&self.vshards[..len])
            .map(|(&value, &v)| (value, VShardId(v)))
    }

    /// The heaviest kept value (0 with none kept).
    pub fn heaviest(&self) -> f64 {
        self.iter().last().map_or(0.0, |(value, _)| value)
    }
}

/// One core's raw load in the model build's first pass: what `LoadTotals::add_replica`
/// sums, with the counts kept as integers (the build's hottest loop touches one of these
/// per replica).
#[derive(Clone, Copy, Debug, Default)]
struct CoreSums {
    bytes: f64,
    writes: f64,
    reads: f64,
    replicas: u32,
    leaders: u32,
}

impl CoreSums {
    fn totals(&self) -> LoadTotals {
        LoadTotals {
            replica_bytes: self.bytes,
            replica_writes: self.writes,
            reads: self.reads,
            leaders: f64::from(self.leaders),
            replicas: f64::from(self.replicas),
        }
    }
}

/// One core's state in the model build's second pass (the counting sort's cursors, what
/// a replica must exceed to join the kept units and traffic, the heaviest leadership).
#[derive(Clone, Copy, Debug)]
struct CoreFill {
    next: u32,
    next_leader: u32,
    floor: [f64; 2],
    heaviest_leader: f64,
}

/// Scores and contributions for one sweep.
#[derive(Clone, Debug)]
pub struct LoadModel<'a> {
    pub nodes: Vec<ModelNode>,
    pub core_scores: Vec<f64>,
    pub node_scores: Vec<f64>,
    /// The mean traffic of each node's cores (`node_traffic_mean`), kept with the scores.
    node_traffic_means: Vec<f64>,
    /// Units of the heaviest replica on each core (indexed like `core_scores`).
    pub core_heaviest: Vec<f64>,
    /// Traffic of the heaviest replica on each core, in `core_traffic` units.
    pub core_heaviest_traffic: Vec<f64>,
    /// Leadership units (`LeaderKey::units`) of the heaviest leader on each core.
    pub core_heaviest_leader: Vec<f64>,
    /// The heaviest replicas of each core by units and by traffic (`core_traffic` units).
    pub core_top: Vec<[TopReplicas; 2]>,
    /// Traffic (`core_traffic` units) over bytes, of all followers and of all leaders.
    pub mean_traffic_per_byte: [f64; 2],
    /// The replicas every core hosts, core after core (in vShard order within a core):
    /// `replicas_on` gives one core's. One array filled by a counting sort rather than a
    /// list per core (ARCHITECTURE, *The planner*, Speed). A sweep never changes it: every
    /// scan skips the vShards it moved.
    core_replicas: Vec<CoreReplica>,
    /// Where each core's run in `core_replicas` starts (one more entry than cores).
    core_replica_start: Vec<u32>,
    /// The leaders among them, as keys by leadership units, core after core (in vShard
    /// order within a core): what the planner's per-core leader index sorts.
    core_leaders: Vec<LeaderKey>,
    /// Where each core's run in `core_leaders` starts (one more entry than cores).
    core_leader_start: Vec<u32>,
    /// Each vShard's load (indexed by vShard), from which its units follow
    /// (`LoadModel::follower_units` and the like): computed where needed rather than kept in
    /// arrays of their own, which a sweep would fill for every vShard and read for few.
    loads: &'a [VShardLoad],
    /// The part of each core's score its replicas' bytes make.
    pub core_bytes: Vec<f64>,
    /// Multiplies traffic score units into `core_traffic` units (an average core is 1.0);
    /// zero when there is no traffic.
    pub traffic_scale: f64,
    /// The part of an average node's score its bytes make: every replica's bytes units
    /// over the eligible cores.
    pub byte_share: f64,
    /// vShards whose placement names a node or core outside the topology: their load is not
    /// attributed there and the planner never moves them (it cannot reason about them).
    pub frozen: Vec<bool>,
    /// The core index of every replica (`LEADER` set on the leader's), vShard after vShard,
    /// and where each vShard's run starts (one more entry than vShards).
    replica_cores: Vec<u32>,
    replica_start: Vec<u32>,
    /// The node index of each core.
    core_node: Vec<u32>,
    /// vShards with a replica move under way, in id order.
    pub moving: Vec<VShardId>,
    /// `None` when there is no load to balance or no capacity to balance it over.
    pub scale: Option<ScoreScale>,
    /// There is no load to balance, but a node must be emptied: `scale` counts leaderships
    /// only, for the drain's sake, and the planner plans nothing but the drain.
    pub drain_only: bool,
}

impl<'a> LoadModel<'a> {
    /// Builds the model. `reporting(node)` says whether a node sent metrics this interval;
    /// only reporting `Active` nodes are eligible targets. `loads` is indexed by vShard id;
    /// vShards without a sample count as idle.
    #[inline(never)]
    pub fn build(
        topology: &ClusterTopology,
        placement: &PlacementTable,
        loads: &'a [VShardLoad],
        weights: &LoadWeights,
        reporting: impl Fn(NodeId) -> bool,
    ) -> LoadModel<'a> {
        let mut nodes = Vec::with_capacity(topology.len());
        let mut core_base = 0usize;
        for info in topology.nodes() {
            nodes.push(ModelNode {
                id: info.node_id,
                cores: info.cores,
                state: info.state,
                core_base,
                eligible: info.state.accepts_replicas() && reporting(info.node_id),
            });
            core_base += usize::from(info.cores);
        }
        let core_node: Vec<u32> = nodes
            .iter()
            .enumerate()
            .flat_map(|(i, n)| std::iter::repeat_n(i as u32, usize::from(n.cores)))
            .collect();
        let vshard_count = placement.vshard_count() as usize;
        let mut frozen = vec![false; vshard_count];
        let mut model = LoadModel {
            core_scores: vec![0.0; core_base],
            core_replicas: Vec::new(),
            core_replica_start: vec![0; core_base + 1],
            core_leaders: Vec::new(),
            core_leader_start: vec![0; core_base + 1],
            node_scores: vec![0.0; nodes.len()],
            node_traffic_means: vec![0.0; nodes.len()],
            core_heaviest: vec![0.0; core_base],
            core_heaviest_traffic: vec![0.0; core_base],
            core_heaviest_leader: vec![0.0; core_base],
            core_top: Vec::new(),
            mean_traffic_per_byte: [0.0; 2],
            loads,
            core_bytes: vec![0.0; core_base],
            traffic_scale: 0.0,
            byte_share: 0.0,
            frozen: Vec::new(),
            moving: Vec::new(),
            replica_cores: Vec::new(),
            replica_start: Vec::new(),
            core_node,
            scale: None,
            drain_only: false,
            nodes,
        };
        // One pass over the placement table: which vShards the model can place, and the raw
        // load of every core's replicas and of all followers and all leaders. Units are
        // linear in the load, so once the totals give the scale, each core's score follows
        // from its sums without a second look at its replicas. The core of every replica
        // (the leader's flagged) is kept for the pass that fills the per-core lists.
        let mut replica_cores: Vec<u32> = Vec::with_capacity(vshard_count * 3);
        let mut replica_start: Vec<u32> = Vec::with_capacity(vshard_count + 1);
        // The first core index and the core count of each node, by node id (ids are
        // dense in practice and packed sites hold 16 bits of them): a packed site's core
        // index in two loads. Ids outside the topology have no cores.
        let table_ids = model
            .nodes
            .iter()
            .map(|n| n.id.0)
            .filter(|&id| id <= u64::from(u16::MAX))
            .max()
            .map_or(0, |id| id as usize + 1);
        let mut bases = vec![(0u32, 0u32); table_ids];
        for node in model.nodes.iter().filter(|n| n.id.0 < table_ids as u64) {
            bases[node.id.0 as usize] = (node.core_base as u32, u32::from(node.cores));
        }
        let mut acc = vec![CoreSums::default(); core_base];
        // Followers, then leaders.
        let mut role_sums = [LoadTotals::default(); 2];
        for (v, sites) in placement.packed().iter().enumerate() {
            if sites.moving() {
                model.moving.push(VShardId(v as u32));
            }
            let start = replica_cores.len();
            replica_start.push(start as u32);
            let placed = match sites.slots() {
                Some((slots, leader)) => {
                    let mut placed = true;
                    for (i, &slot) in slots.iter().enumerate() {
                        let (node, core) = PackedSites::unpack(slot);
                        let core = u32::from(core);
                        match bases.get(usize::from(node)) {
                            Some(&(base, cores)) if core < cores => replica_cores
                                .push((base + core) | if i == leader { LEADER } else { 0 }),
                            _ => {
                                placed = false;
                                break;
                            }
                        }
                    }
                    placed
                }
                None => {
                    let entry = placement
                        .get(VShardId(v as u32))
                        .expect("a vShard of the table");
                    let sites = entry.replicas.iter().enumerate();
                    let sites = sites.map(|(i, r)| (r.at, i == entry.leader));
                    model.push_cores(sites, &mut replica_cores)
                }
            };
            if !placed {
                frozen[v] = true;
                replica_cores.truncate(start);
                continue;
            }
            // The load's figures once per vShard, added to each replica's core.
            let load = &loads[v];
            let (bytes, writes, reads) =
                (load.bytes as f64, load.writes_per_sec, load.reads_per_sec);
            let mut led = false;
            for &c in &replica_cores[start..] {
                let sums = &mut acc[(c & !LEADER) as usize];
                sums.bytes += bytes;
                sums.writes += writes;
                sums.replicas += 1;
                if c & LEADER != 0 {
                    sums.reads += reads;
                    sums.leaders += 1;
                    led = true;
                }
            }
            let followers = (replica_cores.len() - start - usize::from(led)) as f64;
            role_sums[0].add_replicas(load, followers);
            if led {
                role_sums[1].add_replica(load, true);
            }
        }
        replica_start.push(replica_cores.len() as u32);
        let core_sums: Vec<LoadTotals> = acc.iter().map(CoreSums::totals).collect();
        let per_core: Vec<u32> = acc.iter().map(|a| a.replicas).collect();
        let leaders_per_core: Vec<u32> = acc.iter().map(|a| a.leaders).collect();
        let totals = role_sums[0].plus(&role_sums[1]);
        let capacity: u32 = model
            .nodes
            .iter()
            .filter(|n| n.eligible)
            .map(|n| u32::from(n.cores))
            .sum();
        model.scale = ScoreScale::new(weights, &totals, capacity);
        if model.scale.is_none() && model.nodes.iter().any(|n| n.state.must_be_emptied()) {
            model.scale = ScoreScale::leaders_only(&totals, capacity);
            model.drain_only = model.scale.is_some();
        }
        if let Some(scale) = model.scale {
            for (c, sums) in core_sums.iter().enumerate() {
                model.core_scores[c] = scale.units_of(sums);
                model.core_bytes[c] = sums.replica_bytes * scale.bytes_units(1);
            }
            // Each vShard's units, and every core's replicas with its heaviest.
            // Where each core's next replica and next leader go (a counting sort).
            let starts = |counts: &[u32], into: &mut Vec<u32>| {
                let mut start = 0u32;
                for (c, &count) in counts.iter().enumerate() {
                    into[c] = start;
                    start += count;
                }
                into[counts.len()] = start;
                into[..counts.len()].to_vec()
            };
            let next = starts(&per_core, &mut model.core_replica_start);
            let next_leader = starts(&leaders_per_core, &mut model.core_leader_start);
            model.core_replicas =
                vec![CoreReplica(0); model.core_replica_start[core_base] as usize];
            model.core_leaders = vec![LeaderKey(0); model.core_leader_start[core_base] as usize];
            model.core_top = vec![Default::default(); core_base];
            // Everything the pass keeps per core side by side: one bounds check a replica.
            let mut fill: Vec<CoreFill> = next
                .iter()
                .zip(&next_leader)
                .map(|(&next, &next_leader)| CoreFill {
                    next,
                    next_leader,
                    floor: [f64::NEG_INFINITY; 2],
                    heaviest_leader: 0.0,
                })
                .collect();
            // A frozen vShard's run is empty.
            for (v, (run, load)) in replica_start.windows(2).zip(loads).enumerate() {
                let cores = &replica_cores[run[0] as usize..run[1] as usize];
                let (follower, leadership) =
                    (scale.follower_units(load), scale.leadership_units(load));
                let bytes_units = scale.bytes_units(load.bytes);
                let vshard = VShardId(v as u32);
                for &c in cores {
                    let (core, leader) = ((c & !LEADER) as usize, c & LEADER != 0);
                    let f = &mut fill[core];
                    let units = follower + if leader { leadership } else { 0.0 };
                    let traffic = (units - bytes_units).max(0.0);
                    for (measure, value) in [units, traffic].into_iter().enumerate() {
                        if value > f.floor[measure] {
                            let top = &mut model.core_top[core][measure];
                            top.offer(value, vshard);
                            f.floor[measure] = top.floor();
                        }
                    }
                    model.core_replicas[f.next as usize] = CoreReplica::new(vshard, leader);
                    f.next += 1;
                    if leader {
                        let key = LeaderKey::new(leadership, vshard);
                        f.heaviest_leader = f.heaviest_leader.max(key.units());
                        model.core_leaders[f.next_leader as usize] = key;
                        f.next_leader += 1;
                    }
                }
            }
            model.core_heaviest_leader = fill.iter().map(|f| f.heaviest_leader).collect();
            let traffic: f64 = core_sums.iter().map(|sums| scale.traffic_of(sums)).sum();
            if traffic > 1e-12 {
                model.traffic_scale = f64::from(capacity) / traffic;
            }
            model.byte_share = model.core_bytes.iter().sum::<f64>() / f64::from(capacity);
            let traffic_scale = model.traffic_scale;
            for [_, traffic] in &mut model.core_top {
                let len = usize::from(traffic.len);
                traffic.values[..len]
                    .iter_mut()
                    .for_each(|t| *t *= traffic_scale);
            }
            model.core_heaviest = model.core_top.iter().map(|t| t[0].heaviest()).collect();
            model.core_heaviest_traffic = model.core_top.iter().map(|t| t[1].heaviest()).collect();
            model.mean_traffic_per_byte = role_sums.map(|sums| {
                if sums.replica_bytes > 0.0 {
                    scale.traffic_of(&sums) * traffic_scale / sums.replica_bytes
                } else {
                    0.0
                }
            });
            for n in 0..model.nodes.len() {
                model.refresh_node(n);
            }
        }
        model.frozen = frozen;
        model.replica_cores = replica_cores;
        model.replica_start = replica_start;
        model
    }

    /// Appends the core index of each of a vShard's replicas (the leader's flagged) to
    /// `cores`; false, having stopped, at a replica outside the topology.
    #[inline]
    fn push_cores(
        &self,
        sites: impl Iterator<Item = (CoreAddress, bool)>,
        cores: &mut Vec<u32>,
    ) -> bool {
        for (at, leader) in sites {
            match self.core_index(at) {
                Some(c) => cores.push(c as u32 | if leader { LEADER } else { 0 }),
                None => return false,
            }
        }
        true
    }

    /// The replicas core `c` hosts (none when the model has no scale), in vShard order.
    pub fn replicas_on(&self, c: usize) -> &[CoreReplica] {
        let (start, end) = (self.core_replica_start[c], self.core_replica_start[c + 1]);
        &self.core_replicas[start as usize..end as usize]
    }

    /// The leaders core `c` hosts (none when the model has no scale), in vShard order.
    pub fn leaders_on(&self, c: usize) -> &[LeaderKey] {
        let (start, end) = (self.core_leader_start[c], self.core_leader_start[c + 1]);
        &self.core_leaders[start as usize..end as usize]
    }

    /// The score units replica `r` carries on its core: its vShard's follower units, plus
    /// its leadership units if it leads.
    pub fn units(&self, r: CoreReplica) -> f64 {
        let Some(scale) = self.scale else {
            return 0.0;
        };
        let load = &self.loads[r.vshard().0 as usize];
        scale.follower_units(load)
            + if r.leader() {
                scale.leadership_units(load)
            } else {
                0.0
            }
    }

    /// Score units a follower replica of `vshard` adds to its core.
    pub fn follower_units(&self, vshard: VShardId) -> f64 {
        self.scale
            .map_or(0.0, |s| s.follower_units(&self.loads[vshard.0 as usize]))
    }

    /// Score units leadership of `vshard` adds on top of `follower_units`.
    pub fn leader_units(&self, vshard: VShardId) -> f64 {
        self.scale
            .map_or(0.0, |s| s.leadership_units(&self.loads[vshard.0 as usize]))
    }

    /// Bytes of `vshard` (what a replica move copies).
    pub fn bytes(&self, vshard: VShardId) -> u64 {
        self.loads[vshard.0 as usize].bytes
    }

    /// Score units of `vshard`'s bytes (in `follower_units`, on every replica).
    pub fn bytes_units(&self, vshard: VShardId) -> f64 {
        self.scale
            .map_or(0.0, |s| s.bytes_units(self.loads[vshard.0 as usize].bytes))
    }

    /// The replicas of `vshard` at the sweep's start: the core index of each, and whether it
    /// leads. None for a frozen vShard.
    pub fn replicas_of(&self, vshard: VShardId) -> impl Iterator<Item = (usize, bool)> + '_ {
        let v = vshard.0 as usize;
        let range = self.replica_start[v] as usize..self.replica_start[v + 1] as usize;
        self.replica_cores[range]
            .iter()
            .map(|&c| ((c & !LEADER) as usize, c & LEADER != 0))
    }

    /// The node index of core `c`.
    pub fn node_of_core(&self, c: usize) -> usize {
        self.core_node[c] as usize
    }

    /// Index of a node by id (the topology lists nodes in ascending id order).
    #[inline]
    pub fn node_index(&self, id: NodeId) -> Option<usize> {
        // Fast path: ids are usually dense from 0, so id == index.
        if let Ok(i) = usize::try_from(id.0)
            && self.nodes.get(i).is_some_and(|n| n.id == id)
        {
            return Some(i);
        }
        self.nodes.binary_search_by(|n| n.id.cmp(&id)).ok()
    }

    /// Index into `core_scores` of a placement, if it names a known node and core.
    #[inline]
    pub fn core_index(&self, p: CoreAddress) -> Option<usize> {
        let n = self.node_index(p.node)?;
        let node = &self.nodes[n];
        (p.core.0 < node.cores).then(|| node.core_base + usize::from(p.core.0))
    }

    /// Moves `units`, of which `bytes_units` are bytes, from one core to another and updates
    /// both nodes' scores.
    pub fn shift(&mut self, from: CoreAddress, to: CoreAddress, units: f64, bytes_units: f64) {
        let (fc, tc) = (self.core_index(from), self.core_index(to));
        let (fc, tc) = (
            fc.expect("planner moves only known placements"),
            tc.expect("known target"),
        );
        self.core_scores[fc] -= units;
        self.core_scores[tc] += units;
        self.core_bytes[fc] -= bytes_units;
        self.core_bytes[tc] += bytes_units;
        for node in [from.node, to.node] {
            let n = self.node_index(node).expect("known node");
            self.refresh_node(n);
        }
    }

    /// The cores of node `n` as a slice of `core_scores`.
    pub fn cores_of(&self, n: usize) -> &[f64] {
        let node = &self.nodes[n];
        &self.core_scores[node.core_base..node.core_base + usize::from(node.cores)]
    }

    /// Largest node score over the mean (the mean of eligible nodes is 1.0 by construction).
    pub fn node_max_over_mean(&self) -> f64 {
        self.node_scores.iter().copied().fold(0.0, f64::max)
    }

    /// Traffic of core `c` over the mean core's.
    pub fn core_traffic(&self, c: usize) -> f64 {
        (self.core_scores[c] - self.core_bytes[c]).max(0.0) * self.traffic_scale
    }

    /// Traffic a replica of `vshard` carrying `units` (leadership included or not) adds to
    /// its core, in `core_traffic` units.
    pub fn replica_traffic(&self, vshard: VShardId, units: f64) -> f64 {
        (units - self.bytes_units(vshard)).max(0.0) * self.traffic_scale
    }

    /// The traffic of node `n`'s cores.
    pub fn core_traffic_of(&self, n: usize) -> impl Iterator<Item = f64> + '_ {
        let node = &self.nodes[n];
        (node.core_base..node.core_base + usize::from(node.cores)).map(|c| self.core_traffic(c))
    }

    /// The mean traffic of node `n`'s cores.
    pub fn node_traffic_mean(&self, n: usize) -> f64 {
        self.node_traffic_means[n]
    }

    fn refresh_node(&mut self, n: usize) {
        self.node_scores[n] = self.node_sum(n) / f64::from(self.nodes[n].cores);
        self.node_traffic_means[n] =
            self.core_traffic_of(n).sum::<f64>() / f64::from(self.nodes[n].cores.max(1));
    }

    /// Largest core score over the mean core (the full score, bytes included: what the
    /// harness's core target and the gauges measure).
    pub fn core_max_over_mean(&self) -> f64 {
        self.core_scores.iter().copied().fold(0.0, f64::max)
    }

    /// The best node-level max/mean a placement can reach without trading bytes for
    /// traffic (on the largest eligible node): the heaviest single vShard, leadership
    /// included, cannot be split, and the node hosting the one with the most traffic keeps
    /// its share of the bytes (see `floor`).
    pub fn node_bound(&self) -> f64 {
        let cores = self
            .nodes
            .iter()
            .filter(|n| n.eligible)
            .map(|n| n.cores)
            .max()
            .unwrap_or(1);
        let (units, traffic) = self.heaviest_vshard();
        self.floor(units, traffic, cores)
    }

    /// The lowest score a node of `cores` cores can be brought to while it hosts a replica
    /// of `units` score units, `traffic` of them traffic (units less its bytes): the replica
    /// cannot be split, and the node keeps its share of the cluster's bytes. Copying a
    /// node's data away to offset one vShard's traffic would empty its disk without
    /// relieving its CPU, and would move bytes for load (see ARCHITECTURE, *The node
    /// bound*).
    pub fn floor(&self, units: f64, traffic: f64, cores: u16) -> f64 {
        let cores = f64::from(cores.max(1));
        (units / cores).max(traffic / cores + self.byte_share)
    }

    /// The best core-level max/mean any placement could reach: the heaviest vShard cannot
    /// be split.
    pub fn core_bound(&self) -> f64 {
        self.heaviest_vshard().0
    }

    /// How far cores are from the best their node allows, in traffic: the largest, over
    /// nodes with traffic, of the hottest core's traffic over the larger of the node's mean
    /// core traffic and its heaviest replica's (1.0 is the best possible).
    pub fn core_traffic_over_bound(&self) -> f64 {
        (0..self.nodes.len())
            .filter_map(|n| {
                let mean = self.node_traffic_mean(n);
                let node = &self.nodes[n];
                let heaviest = (node.core_base..node.core_base + usize::from(node.cores))
                    .flat_map(|c| self.replicas_on(c))
                    .map(|&r| self.replica_traffic(r.vshard(), self.units(r)))
                    .fold(0.0, f64::max);
                let floor = mean.max(heaviest);
                (floor > 0.0).then(|| self.core_traffic_of(n).fold(0.0, f64::max) / floor)
            })
            .fold(0.0, f64::max)
    }

    /// The most units any vShard's leader replica carries, and the most traffic (units
    /// less bytes); not necessarily of the same vShard.
    fn heaviest_vshard(&self) -> (f64, f64) {
        let Some(scale) = self.scale else {
            return (0.0, 0.0);
        };
        (0..self.frozen.len())
            .filter(|&v| !self.frozen[v])
            .map(|v| {
                let load = &self.loads[v];
                let units = scale.follower_units(load) + scale.leadership_units(load);
                (units, units - scale.bytes_units(load.bytes))
            })
            .fold((0.0, 0.0), |(u, t), (vu, vt)| (vu.max(u), vt.max(t)))
    }

    fn node_sum(&self, n: usize) -> f64 {
        self.cores_of(n).iter().sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn top_replicas_keep_the_heaviest_four_lightest_first() {
        let mut top = TopReplicas::default();
        assert_eq!(top.floor(), f64::NEG_INFINITY);
        assert_eq!(top.heaviest(), 0.0);
        for (v, value) in [3.0, 1.0, 4.0, 1.5, 9.0, 2.0, 6.0, 0.5]
            .into_iter()
            .enumerate()
        {
            top.offer(value, VShardId(v as u32));
        }
        let kept: Vec<(f64, u32)> = top.iter().map(|(x, v)| (x, v.0)).collect();
        assert_eq!(kept, vec![(3.0, 0), (4.0, 2), (6.0, 6), (9.0, 4)]);
        assert_eq!(top.floor(), 3.0);
        assert_eq!(top.heaviest(), 9.0);
        // A tie with the lightest kept is not kept (as `Heaviest::offer` does).
        top.offer(3.0, VShardId(99));
        assert!(top.iter().all(|(_, v)| v.0 != 99));
    }
}
