//! The client's routing decisions, sans-IO: which core to ask for a group, and what an
//! answer teaches. [`Routing`] holds a client's whole routing state and is what every
//! [`crate::client::call::Call`] of that client consults; `KvClient`, the migration
//! executor and the simulator's clients each keep one.
//!
//! A router knows each group's candidate replicas (from the placement table, or a default),
//! remembers the last leader it saw per group, follows `NotLeader` hints at once, and
//! avoids nodes that failed recently (`PeerHealth` with the client policy: backoff from
//! 1 s, 10 s after three failures in a row).

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;

use crate::client::peer_health::{Admission, HealthPolicy, PeerHealth};
use crate::cluster::placement::{PlacementError, PlacementTable};
use crate::cluster::spec::{ClusterSpec, core_address};
use crate::constants::{CLIENT_NODE_BACKOFF, CLIENT_NODE_DOWN_COOLDOWN};
use crate::ids::{CoreAddress, GroupId, NodeId};
use crate::time::Time;

/// What to do after an answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Next {
    /// Done: the answer stands.
    Done,
    /// Ask again at once (a redirect with a hint).
    RetryNow,
    /// Ask again after a short pause (an election may be under way, a node failed).
    RetryLater,
}

/// How a node that fails a client is avoided.
fn client_health() -> PeerHealth {
    PeerHealth::with_policy(HealthPolicy {
        backoff_initial: CLIENT_NODE_BACKOFF,
        backoff_max: CLIENT_NODE_DOWN_COOLDOWN,
        failures_to_open: 3,
        cooldown: CLIENT_NODE_DOWN_COOLDOWN,
    })
}

/// Routing state of one client.
#[derive(Debug, Default)]
pub struct Router {
    leaders: HashMap<GroupId, CoreAddress>,
    health: HashMap<NodeId, PeerHealth>,
    next: usize,
}

impl Router {
    pub fn new() -> Router {
        Router::default()
    }

    /// A router whose first choice among candidates is the `first`-th (modulo their
    /// number), so that many clients spread their first requests.
    pub fn starting_at(first: usize) -> Router {
        Router {
            next: first,
            ..Router::default()
        }
    }

    /// The leader of `group` last seen, if any.
    pub fn leader(&self, group: GroupId) -> Option<CoreAddress> {
        self.leaders.get(&group).copied()
    }

    /// Where to send a request for `group`: its last known leader, else the next of
    /// `candidates` (its replicas) whose node is not being avoided.
    pub fn target(
        &mut self,
        now: Time,
        group: GroupId,
        candidates: &[CoreAddress],
    ) -> Option<CoreAddress> {
        if let Some(leader) = self.leaders.get(&group) {
            return Some(*leader);
        }
        let n = candidates.len();
        if n == 0 {
            return None;
        }
        let start = self.next;
        let pick = (0..n)
            .map(|k| (start + k) % n)
            .find(|&i| {
                self.health
                    .entry(candidates[i].node)
                    .or_insert_with(client_health)
                    .admit(now)
                    == Admission::Attempt
            })
            .unwrap_or(start % n);
        self.next = pick + 1;
        Some(candidates[pick])
    }

    /// `target` answered with a result for `group`: it leads.
    pub fn on_answer(&mut self, group: GroupId, target: CoreAddress) -> Next {
        self.leaders.insert(group, target);
        self.health
            .entry(target.node)
            .or_insert_with(client_health)
            .on_success();
        Next::Done
    }

    /// `target` does not lead `group`; `hint` is who it thinks does.
    pub fn on_not_leader(
        &mut self,
        group: GroupId,
        target: CoreAddress,
        hint: Option<CoreAddress>,
    ) -> Next {
        match hint.filter(|h| *h != target) {
            Some(h) => {
                self.leaders.insert(group, h);
                Next::RetryNow
            }
            None => {
                self.leaders.remove(&group);
                Next::RetryLater
            }
        }
    }

    /// The request to `target` failed (no answer, connection error).
    pub fn on_failure(&mut self, now: Time, group: GroupId, target: CoreAddress) -> Next {
        self.leaders.remove(&group);
        self.health
            .entry(target.node)
            .or_insert_with(client_health)
            .on_failure(now);
        Next::RetryLater
    }

    /// The cached routing for `group` is wrong (the group moved): forget its leader.
    pub fn forget(&mut self, group: GroupId) {
        self.leaders.remove(&group);
    }
}

/// The placement table a client caches: its epoch and each group's replicas. A replica
/// that answers it does not host a group shows the table is stale: it is dropped, the
/// group's cached leader forgotten, and the table fetched again before the next request.
/// A failed fetch is not retried for `CLIENT_NODE_BACKOFF` (the caller routes by a
/// default meanwhile).
#[derive(Debug, Default)]
pub struct PlacementCache {
    table: Option<(u64, HashMap<GroupId, Vec<CoreAddress>>)>,
    failed_at: Option<Time>,
}

impl PlacementCache {
    pub fn new() -> PlacementCache {
        PlacementCache::default()
    }

    /// The cached table's epoch, if a table is cached.
    pub fn epoch(&self) -> Option<u64> {
        self.table.as_ref().map(|(epoch, _)| *epoch)
    }

    /// The replicas of `group` per the cached table.
    pub fn replicas(&self, group: GroupId) -> Option<&[CoreAddress]> {
        self.table
            .as_ref()
            .and_then(|(_, t)| t.get(&group))
            .map(Vec::as_slice)
    }

    /// Whether to fetch the table before the next request.
    pub fn wants_fetch(&self, now: Time) -> bool {
        self.table.is_none()
            && self
                .failed_at
                .is_none_or(|t| now.saturating_since(t) >= CLIENT_NODE_BACKOFF)
    }

    pub fn store(&mut self, epoch: u64, table: HashMap<GroupId, Vec<CoreAddress>>) {
        self.table = Some((epoch, table));
        self.failed_at = None;
    }

    pub fn on_fetch_failed(&mut self, now: Time) {
        self.failed_at = Some(now);
    }

    /// A stale-epoch redirect: `target` hosts no replica of `group` in its node's table at
    /// `epoch`. If the cached table is older (or absent) it is the stale one: drop it and
    /// fetch again. Otherwise that node has not caught up yet (core 0 hands a new table to
    /// the node's other cores a turn later): another replica is tried, without holding it
    /// against the node.
    pub fn on_moved(&mut self, router: &mut Router, group: GroupId, epoch: u64) -> Next {
        if self.epoch().is_none_or(|cached| cached < epoch) {
            self.on_not_hosted(router, group)
        } else {
            router.forget(group);
            Next::RetryLater
        }
    }

    /// A replica of the cached table does not host `group` (it moved).
    pub fn on_not_hosted(&mut self, router: &mut Router, group: GroupId) -> Next {
        self.table = None;
        router.forget(group);
        Next::RetryLater
    }
}

/// A client's routing state: the leader cache and node health ([`Router`]), the cached
/// placement table ([`PlacementCache`]), the spec's initial placement that routes until a
/// table is fetched, and the ids of its requests.
#[derive(Debug)]
pub struct Routing {
    pub router: Router,
    pub table: PlacementCache,
    /// Where a new cluster's replicas are: routes until the metadata group has a table.
    initial: PlacementTable,
    /// The metadata group's replicas (core 0 of every node).
    metadata: Vec<CoreAddress>,
    next_id: u64,
    /// The groups count this client hashes keys with; a table of another count is refused.
    pub groups: u32,
    /// Where each node's core 0 listens: the spec's nodes, then what placement tables
    /// taught (nodes that joined later).
    addresses: BTreeMap<NodeId, SocketAddr>,
    cores: u16,
}

impl Routing {
    /// Routing for a client of the cluster `spec`.
    pub fn new(spec: &ClusterSpec) -> Result<Routing, PlacementError> {
        Ok(Routing {
            router: Router::new(),
            table: PlacementCache::new(),
            initial: spec.initial_table()?,
            metadata: spec.metadata_voters().into_iter().map(|(_, a)| a).collect(),
            next_id: 1,
            groups: spec.groups,
            addresses: spec.nodes.iter().copied().collect(),
            cores: spec.cores,
        })
    }

    /// Where the core at `at` listens, if its node is known.
    pub fn address(&self, at: CoreAddress) -> Option<SocketAddr> {
        if at.core.0 >= self.cores {
            return None;
        }
        core_address(*self.addresses.get(&at.node)?, at.core)
    }

    /// Learns where nodes listen (from a placement table's answer).
    pub fn learn_addresses(&mut self, nodes: &[(NodeId, SocketAddr)]) {
        for &(node, addr) in nodes {
            self.addresses.insert(node, addr);
        }
    }

    /// Like [`Routing::new`], whose first choice among candidates is the `first`-th, so
    /// that many clients spread their first requests.
    pub fn starting_at(spec: &ClusterSpec, first: usize) -> Result<Routing, PlacementError> {
        Ok(Routing {
            router: Router::starting_at(first),
            ..Routing::new(spec)?
        })
    }

    /// Where to send the next request for `group`: its last known leader, else one of its
    /// replicas per the cached table (the initial placement without one).
    pub fn target(&mut self, now: Time, group: GroupId) -> CoreAddress {
        // The common case, without gathering the candidates first.
        if let Some(leader) = self.router.leader(group) {
            return leader;
        }
        let cached = self.table.replicas(group).map(<[CoreAddress]>::to_vec);
        let candidates = cached.unwrap_or_else(|| match self.initial.group(group) {
            Some(p) => p.addresses().collect(),
            None => self.metadata.clone(),
        });
        self.router
            .target(now, group, &candidates)
            .unwrap_or(self.metadata[0])
    }

    /// Routing whose request ids start at `first` (two callers sharing one reply path keep
    /// their ids apart).
    pub fn with_first_id(mut self, first: u64) -> Routing {
        self.next_id = first;
        self
    }

    /// A fresh id for the next request.
    pub fn next_request_id(&mut self) -> u64 {
        let id = self.next_id;
        self.next_id += 1;
        id
    }

    /// Caches the placement table a `Routing` read returned.
    pub fn store_table(&mut self, epoch: u64, groups: &[(GroupId, Vec<(u64, CoreAddress)>)]) {
        let table = groups
            .iter()
            .map(|(g, replicas)| (*g, replicas.iter().map(|(_, a)| *a).collect()))
            .collect();
        self.table.store(epoch, table);
    }

    /// Caches a placement table known locally (a node's own).
    pub fn store_placement(&mut self, table: &PlacementTable) {
        let groups = table
            .groups()
            .map(|(g, p)| (g, p.addresses().collect()))
            .collect();
        self.table.store(table.epoch().0, groups);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::CoreId;
    use std::time::Duration;

    fn at(node: u64) -> CoreAddress {
        CoreAddress {
            node: NodeId(node),
            core: CoreId(1),
        }
    }

    #[test]
    fn hints_are_followed_and_failed_nodes_avoided() {
        let mut r = Router::new();
        let g = GroupId(3);
        let all = [at(1), at(2), at(3)];
        let t = Time::from_secs(1);
        assert_eq!(r.target(t, g, &all), Some(at(1)));
        assert_eq!(r.on_not_leader(g, at(1), Some(at(3))), Next::RetryNow);
        assert_eq!(r.target(t, g, &all), Some(at(3)));
        assert_eq!(r.on_failure(t, g, at(3)), Next::RetryLater);
        // Node 3 is avoided for a while; the others are tried.
        for _ in 0..4 {
            assert_ne!(r.target(t, g, &all), Some(at(3)));
        }
        assert_eq!(r.on_answer(g, at(2)), Next::Done);
        assert_eq!(r.leader(g), Some(at(2)));
        assert_eq!(
            r.target(t, g, &[]),
            Some(at(2)),
            "a known leader needs no candidates"
        );
        r.forget(g);
        assert_eq!(r.target(t, g, &[]), None);
    }

    #[test]
    fn a_stale_table_is_dropped_and_fetched_again_and_failed_fetches_back_off() {
        let (mut cache, mut router) = (PlacementCache::new(), Router::new());
        let g = GroupId(1);
        let t = Time::from_secs(1);
        assert!(cache.wants_fetch(t));
        cache.on_fetch_failed(t);
        assert!(!cache.wants_fetch(t + Duration::from_millis(10)));
        assert!(cache.wants_fetch(t + CLIENT_NODE_BACKOFF));
        cache.store(7, HashMap::from([(g, vec![at(1), at(2)])]));
        assert_eq!(cache.epoch(), Some(7));
        assert_eq!(cache.replicas(g), Some(&[at(1), at(2)][..]));
        assert!(!cache.wants_fetch(t));
        router.on_answer(g, at(1));
        assert_eq!(cache.on_not_hosted(&mut router, g), Next::RetryLater);
        assert_eq!(router.leader(g), None, "the moved leader is forgotten");
        assert!(cache.wants_fetch(t), "and the table fetched again");
    }

    #[test]
    fn a_stale_epoch_redirect_refetches_only_an_older_table() {
        let (mut cache, mut router) = (PlacementCache::new(), Router::new());
        let g = GroupId(1);
        let t = Time::from_secs(1);
        cache.store(7, HashMap::from([(g, vec![at(1), at(2)])]));
        router.on_answer(g, at(1));
        // The node answering is behind (epoch 6 < 7): try another replica, keep the table.
        assert_eq!(cache.on_moved(&mut router, g, 6), Next::RetryLater);
        assert_eq!(cache.epoch(), Some(7));
        assert_eq!(router.leader(g), None);
        // Our table is the stale one: drop it and fetch again.
        router.on_answer(g, at(2));
        assert_eq!(cache.on_moved(&mut router, g, 9), Next::RetryLater);
        assert!(cache.wants_fetch(t));
        assert_eq!(router.leader(g), None);
    }
}
