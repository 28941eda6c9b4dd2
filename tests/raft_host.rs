//! The sans-IO Raft host driven in one thread on a virtual clock: elections, replication
//! with group-commit persistence, crash and restart from the persisted log. The harness is
//! deliberately small; the full simulator (faults, checkers, seeds) builds on the same
//! grammar.

// raft-rs' protobuf messages are built field by field.
#![allow(clippy::field_reassign_with_default)]

use std::collections::{BTreeMap, HashMap, HashSet};

use nodedb_cluster::constants::{FIRST_CAMPAIGN_TICKS, FIRST_CAMPAIGNS_IN_FLIGHT, RAFT_TICK};
use nodedb_cluster::ids::{CoreAddress, GroupId, ReplicaId};
use nodedb_cluster::ids::{CoreId, NodeId};
use nodedb_cluster::replication::kv::{KvCommand, KvResponse, KvStore, StateMachine};
use nodedb_cluster::replication::raft_host::{
    HostError, HostEvent, MembershipChange, Outgoing, PersistedGroup, ProposalToken, RaftHost,
};
use nodedb_cluster::time::Time;
use raft::eraftpb::MessageType;

const GROUP: GroupId = GroupId(1);

fn address(i: u64) -> CoreAddress {
    CoreAddress {
        node: NodeId(i),
        core: CoreId(0),
    }
}

/// Three replicas of one group, a lossless in-order network, and a disk per node that
/// holds exactly what was persisted.
struct Cluster {
    now: Time,
    hosts: BTreeMap<u64, RaftHost<KvStore>>,
    disks: HashMap<u64, PersistedGroup>,
    /// Messages on their way, with the node that sent each.
    in_flight: Vec<(NodeId, Outgoing)>,
    isolated: HashSet<u64>,
    applied: HashMap<u64, Vec<u8>>,
    /// (term, leader replica) pairs ever observed as "is_self" leader.
    leaders: Vec<(u64, u64)>,
    /// Snapshot messages delivered.
    snapshots_delivered: usize,
    /// The last configuration each host applied: (voters, learners, joint).
    confs: HashMap<u64, (Vec<u64>, Vec<u64>, bool)>,
    /// Delivers forged copies of messages alongside the real ones, when set.
    forger: Option<Forger>,
    /// Messages delivered so far.
    delivered: usize,
    /// Tokens of the reads the leaders said may be answered.
    reads_ready: Vec<u64>,
    /// Hosts start with idle groups quiescing.
    quiescing: bool,
}

impl Cluster {
    fn new() -> Cluster {
        let mut c = Cluster {
            now: Time::ZERO,
            hosts: BTreeMap::new(),
            disks: HashMap::new(),
            in_flight: Vec::new(),
            reads_ready: Vec::new(),
            isolated: HashSet::new(),
            applied: HashMap::new(),
            leaders: Vec::new(),
            snapshots_delivered: 0,
            confs: HashMap::new(),
            forger: None,
            delivered: 0,
            quiescing: false,
        };
        for i in 1..=3 {
            c.start(i);
        }
        c
    }

    fn start(&mut self, i: u64) {
        self.start_with(i, &[ReplicaId(1), ReplicaId(2), ReplicaId(3)]);
    }

    /// Starts replica `i` with `voters` as its initial configuration (empty for a replica
    /// that joins an existing group and learns the configuration from the leader).
    fn start_with(&mut self, i: u64, voters: &[ReplicaId]) {
        let mut host = RaftHost::new(address(i));
        host.set_quiesce(self.quiescing);
        for r in 1..=4 {
            host.set_address(ReplicaId(r), address(r));
        }
        host.add_group(
            GROUP,
            ReplicaId(i),
            voters,
            self.disks.get(&i).cloned(),
            KvStore::new(),
        )
        .unwrap();
        self.hosts.insert(i, host);
    }

    /// Crash: the process is gone; only the disk remains.
    fn crash(&mut self, i: u64) {
        self.hosts.remove(&i);
        self.in_flight.retain(|(_, m)| m.to != address(i));
    }

    /// One tick of virtual time, then deliver and persist until quiet.
    fn step(&mut self) {
        self.now += RAFT_TICK;
        for host in self.hosts.values_mut() {
            host.handle_tick(self.now);
        }
        self.quiesce();
    }

    /// Delivers and persists until quiet, with no time passing.
    fn quiesce(&mut self) {
        for _ in 0..100 {
            let mut progressed = false;
            for (&i, host) in self.hosts.iter_mut() {
                while let Some(batch) = host.poll_persist() {
                    let disk = self.disks.entry(i).or_default();
                    for w in &batch.writes {
                        disk.apply(w);
                    }
                    for c in &batch.compactions {
                        disk.apply(&c.to_write());
                    }
                    host.handle_persisted(batch.id);
                    progressed = true;
                }
                while let Some(mut out) = host.poll_transmit() {
                    // A large snapshot leaves as a view; here it travels whole.
                    if let Some(view) = out.view.take() {
                        out.message.mut_snapshot().data = view.encode().into();
                    }
                    if !self.isolated.contains(&i) && !self.isolated.contains(&out.to.node.0) {
                        self.in_flight.push((NodeId(i), out));
                    }
                    progressed = true;
                }
                while let Some(event) = host.poll_event() {
                    match event {
                        HostEvent::Applied {
                            token, response, ..
                        } => {
                            self.applied.insert(token.0, response);
                        }
                        HostEvent::LeaderChanged { is_self: true, .. } => {
                            self.leaders.push((host.term(GROUP).unwrap(), i));
                        }
                        HostEvent::MembershipChanged {
                            voters,
                            learners,
                            joint,
                            ..
                        } => {
                            let ids =
                                |v: Vec<ReplicaId>| v.into_iter().map(|r| r.0).collect::<Vec<_>>();
                            self.confs.insert(i, (ids(voters), ids(learners), joint));
                        }
                        HostEvent::ReadReady { token, .. } => self.reads_ready.push(token.0),
                        HostEvent::LeaderChanged { .. } | HostEvent::Committed { .. } => {}
                    }
                }
            }
            for (from, out) in std::mem::take(&mut self.in_flight) {
                if let Some(host) = self.hosts.get_mut(&out.to.node.0) {
                    if let Some(forger) = self.forger.as_mut() {
                        forger.forge(host, from, &out);
                    }
                    if out.message.get_msg_type() == MessageType::MsgSnapshot {
                        self.snapshots_delivered += 1;
                    }
                    if std::env::var("TRACE").is_ok() {
                        eprintln!(
                            "t={:?} {from:?}->{:?} {:?} ctx{} commit{} idx{} n{}",
                            self.now,
                            out.to.node,
                            out.message.get_msg_type(),
                            out.message.context.len(),
                            out.message.commit,
                            out.message.index,
                            out.message.entries.len()
                        );
                    }
                    let _ = host.handle_message(out.group, from, out.message);
                    self.delivered += 1;
                    progressed = true;
                }
            }
            if !progressed {
                break;
            }
        }
    }

    /// Steps until `done` holds, at most `max_steps` times.
    fn run_until(&mut self, max_steps: usize, mut done: impl FnMut(&Cluster) -> bool) -> bool {
        for _ in 0..max_steps {
            if done(self) {
                return true;
            }
            self.step();
        }
        done(self)
    }

    /// Three replicas whose idle groups quiesce.
    fn quiescing() -> Cluster {
        let mut c = Cluster::new();
        c.quiescing = true;
        for host in c.hosts.values_mut() {
            host.set_quiesce(true);
        }
        c
    }

    /// A quiescing cluster whose group elected a leader, committed one write (token 1,
    /// key "a") and fell asleep on every replica.
    fn asleep() -> Cluster {
        let mut c = Cluster::quiescing();
        assert!(c.run_until(200, |c| c.leader().is_some()));
        assert!(c.put(1, "a", "1"));
        assert!(c.run_until(50, |c| c.applied.len() == 1));
        assert!(c.run_until(20, Cluster::all_quiesced));
        c
    }

    fn all_quiesced(&self) -> bool {
        self.hosts.values().all(|h| h.is_quiesced(GROUP))
    }

    fn leader(&self) -> Option<u64> {
        self.hosts
            .iter()
            .find(|(i, h)| h.is_leader(GROUP) && !self.isolated.contains(i))
            .map(|(i, _)| *i)
    }

    fn put(&mut self, token: u64, key: &str, value: &str) -> bool {
        let leader = self.leader().expect("a leader");
        let command = KvCommand::Put {
            key: key.as_bytes().to_vec(),
            value: value.as_bytes().to_vec(),
        };
        self.hosts
            .get_mut(&leader)
            .unwrap()
            .propose(GROUP, command.encode(), ProposalToken(token))
            .is_ok()
    }

    /// Hosts a joining replica 4 (on a fourth core) and has `leader` add it as a learner,
    /// the change acknowledged under `token`.
    fn add_learner_4(&mut self, leader: u64, token: u64) {
        let mut joining: RaftHost<KvStore> = RaftHost::new(address(4));
        for r in 1..=4 {
            joining.set_address(ReplicaId(r), address(r));
        }
        let voters = [ReplicaId(1), ReplicaId(2), ReplicaId(3)];
        joining
            .add_joining_group(GROUP, ReplicaId(4), &voters, &[], KvStore::new())
            .unwrap();
        self.hosts.insert(4, joining);
        self.hosts
            .get_mut(&leader)
            .unwrap()
            .change_membership(
                GROUP,
                &[MembershipChange::AddLearner(ReplicaId(4))],
                ProposalToken(token),
            )
            .unwrap();
    }

    fn store(&self, i: u64) -> &KvStore {
        self.hosts[&i].state_machine(GROUP).unwrap()
    }

    fn at_most_one_leader_per_term(&self) {
        let mut by_term: BTreeMap<u64, HashSet<u64>> = BTreeMap::new();
        for (term, leader) in &self.leaders {
            by_term.entry(*term).or_default().insert(*leader);
        }
        for (term, leaders) in by_term {
            assert_eq!(leaders.len(), 1, "term {term} had leaders {leaders:?}");
        }
    }
}

#[test]
fn a_leader_is_elected_and_writes_commit_on_every_replica() {
    let mut c = Cluster::new();
    assert!(
        c.run_until(200, |c| c.leader().is_some()),
        "a leader within 20 s of virtual time"
    );
    for t in 0..100 {
        assert!(c.put(t, &format!("k{t}"), &format!("v{t}")));
    }
    assert!(c.run_until(50, |c| c.applied.len() == 100));
    assert!(
        c.applied
            .values()
            .all(|r| KvResponse::decode(r).unwrap() == KvResponse::Done)
    );
    assert!(c.run_until(50, |c| (1..=3).all(|i| c.store(i).len() == 100)));
    assert_eq!(c.store(1), c.store(2));
    assert_eq!(c.store(2), c.store(3));
    c.at_most_one_leader_per_term();
}

#[test]
fn writes_continue_after_the_leader_crashes_and_it_catches_up_from_its_log_on_restart() {
    let mut c = Cluster::new();
    assert!(c.run_until(200, |c| c.leader().is_some()));
    for t in 0..20 {
        c.put(t, &format!("a{t}"), "1");
    }
    assert!(c.run_until(50, |c| c.applied.len() == 20));
    let old_leader = c.leader().unwrap();
    c.crash(old_leader);
    assert!(
        c.run_until(300, |c| c.leader().is_some_and(|l| l != old_leader)),
        "re-election"
    );
    for t in 20..40 {
        assert!(c.put(t, &format!("b{t}"), "2"));
    }
    assert!(
        c.run_until(50, |c| c.applied.len() == 40),
        "the surviving majority commits"
    );
    c.start(old_leader);
    assert!(
        c.run_until(300, |c| c.store(old_leader).len() == 40),
        "the restarted node catches up"
    );
    for i in 1..=3 {
        for t in 0..20 {
            assert_eq!(
                c.store(i).get(format!("a{t}").as_bytes()),
                Some(&b"1"[..]),
                "node {i} a{t}"
            );
        }
        for t in 20..40 {
            assert_eq!(
                c.store(i).get(format!("b{t}").as_bytes()),
                Some(&b"2"[..]),
                "node {i} b{t}"
            );
        }
    }
    c.at_most_one_leader_per_term();
}

#[test]
fn a_new_commit_index_alone_is_written_with_the_next_write_or_at_the_next_tick() {
    let mut c = Cluster::new();
    assert!(c.run_until(200, |c| c.leader().is_some()));
    // Whatever the election left unwritten goes with the next tick.
    c.step();
    let leader = c.leader().unwrap();
    assert!(c.put(1, "a", "1"));
    c.quiesce();
    assert!(c.applied.contains_key(&1), "committed and applied");
    let first = c.hosts[&leader].last_index(GROUP).unwrap();
    for i in 1..=3 {
        let disk = &c.disks[&i];
        assert!(disk.entries.iter().any(|e| e.index == first), "node {i}");
        assert!(
            disk.hard_state.commit < first,
            "node {i} wrote the commit of its entry on its own: {:?}",
            disk.hard_state
        );
    }
    assert!(
        c.hosts
            .get_mut(&leader)
            .unwrap()
            .durable_commit(GROUP)
            .unwrap()
            < first
    );
    // The next write carries it.
    assert!(c.put(2, "b", "2"));
    c.quiesce();
    assert!(c.applied.contains_key(&2));
    let second = c.hosts[&leader].last_index(GROUP).unwrap();
    assert!(c.disks[&leader].hard_state.commit >= first);
    assert!(c.disks[&leader].hard_state.commit < second);
    // The next tick writes the rest, on every replica.
    c.step();
    for i in 1..=3 {
        assert_eq!(c.disks[&i].hard_state.commit, second, "node {i}");
        assert_eq!(
            c.hosts.get_mut(&i).unwrap().durable_commit(GROUP),
            Some(second),
            "node {i}"
        );
    }
    // A replica that restarts from a log without its latest commit index learns it again.
    assert!(c.put(3, "c", "3"));
    c.quiesce();
    let follower = (1..=3).find(|i| *i != leader).unwrap();
    let third = c.hosts[&leader].last_index(GROUP).unwrap();
    assert!(c.disks[&follower].hard_state.commit < third);
    c.crash(follower);
    c.start(follower);
    assert!(c.run_until(50, |c| c.store(follower).get(b"c") == Some(&b"3"[..])));
    c.at_most_one_leader_per_term();
}

#[test]
fn a_restarted_replica_keeps_its_term_and_vote() {
    let mut c = Cluster::new();
    assert!(c.run_until(200, |c| c.leader().is_some()));
    let leader = c.leader().unwrap();
    let follower = (1..=3).find(|i| *i != leader).unwrap();
    let term = c.hosts[&follower].term(GROUP).unwrap();
    let vote = c.disks[&follower].hard_state.vote;
    assert!(term > 0 && vote != 0, "the follower voted in term {term}");
    c.crash(follower);
    c.start(follower);
    assert_eq!(
        c.hosts[&follower].term(GROUP),
        Some(term),
        "term survives the restart"
    );
    assert_eq!(c.disks[&follower].hard_state.vote, vote);
    // With the term and vote kept, no second leader can be elected in a term already used.
    c.isolated.insert(leader);
    assert!(c.run_until(300, |c| c.leader().is_some()));
    c.isolated.clear();
    c.run_until(100, |_| false);
    c.at_most_one_leader_per_term();
}

#[test]
fn an_append_is_acknowledged_only_after_it_is_durable() {
    let mut follower: RaftHost<KvStore> = RaftHost::new(address(2));
    for r in 1..=3 {
        follower.set_address(ReplicaId(r), address(r));
    }
    let voters = [ReplicaId(1), ReplicaId(2), ReplicaId(3)];
    follower
        .add_group(GROUP, ReplicaId(2), &voters, None, KvStore::new())
        .unwrap();
    // Replica 1, leader of term 1, appends one entry.
    let mut append = raft::eraftpb::Message::default();
    append.set_msg_type(MessageType::MsgAppend);
    append.from = 1;
    append.to = 2;
    append.term = 1;
    let mut entry = raft::eraftpb::Entry::default();
    entry.term = 1;
    entry.index = 1;
    entry.data = KvCommand::Put {
        key: b"k".to_vec(),
        value: b"v".to_vec(),
    }
    .encode()
    .into();
    append.entries = vec![entry].into();
    follower.handle_message(GROUP, NodeId(1), append).unwrap();

    let batch = follower
        .poll_persist()
        .expect("the entry and the new term must be persisted");
    assert_eq!(batch.writes[0].entries.len(), 1);
    assert_eq!(
        batch.writes[0].hard_state.as_ref().map(|hs| hs.term),
        Some(1)
    );
    assert!(
        follower.poll_transmit().is_none(),
        "no acknowledgement before the write is durable"
    );
    assert!(
        follower.poll_persist().is_none(),
        "one batch in flight at a time"
    );

    follower.handle_persisted(batch.id);
    let ack = follower.poll_transmit().expect("acknowledged once durable");
    assert_eq!(ack.message.get_msg_type(), MessageType::MsgAppendResponse);
    assert_eq!(
        (ack.to, ack.message.index, ack.message.reject),
        (address(1), 1, false)
    );
    assert_eq!(
        follower.state_machine(GROUP).unwrap().applied_index(),
        0,
        "not applied before commit"
    );
}

#[test]
fn a_follower_behind_the_compacted_log_catches_up_through_a_snapshot() {
    let mut c = Cluster::new();
    assert!(c.run_until(200, |c| c.leader().is_some()));
    let leader = c.leader().unwrap();
    let follower = (1..=3).find(|i| *i != leader).unwrap();
    c.crash(follower);
    // Enough writes for the leader to compact its log past where the follower stopped.
    let writes = nodedb_cluster::constants::RAFT_LOG_COMPACT_ENTRIES as u64 * 2;
    for t in 0..writes {
        assert!(c.put(t, &format!("k{t}"), "v"), "write {t}");
        if t % 100 == 99 {
            c.step();
        }
    }
    assert!(c.run_until(100, |c| c.applied.len() as u64 == writes));
    assert!(
        c.disks[&leader].snapshot.is_some(),
        "the leader compacted and logged a snapshot"
    );
    assert!(
        c.disks[&leader].entries.len() < writes as usize,
        "its persisted log was cut at the snapshot"
    );
    c.start(follower);
    assert!(
        c.run_until(300, |c| c.store(follower).len() as u64 == writes),
        "caught up"
    );
    assert_eq!(c.store(follower), c.store(leader));
    assert!(
        c.snapshots_delivered > 0,
        "through a snapshot, not the (compacted) log"
    );
    assert!(c.disks[&follower].snapshot.is_some());
    // And the follower restarts from its own snapshot + log.
    c.crash(follower);
    c.start(follower);
    assert!(c.run_until(100, |c| c.store(follower).len() as u64 == writes));
}

#[test]
fn a_replica_moves_by_learner_promotion_joint_removal_and_leader_transfer() {
    use nodedb_cluster::replication::raft_host::MembershipChange::{AddVoter, Remove};
    let mut c = Cluster::new();
    assert!(c.run_until(200, |c| c.leader().is_some()));
    for t in 0..50 {
        c.put(t, &format!("k{t}"), "v");
    }
    assert!(c.run_until(50, |c| c.applied.len() == 50));
    let leader = c.leader().unwrap();
    let removed = (1..=3).find(|i| *i != leader).unwrap();

    // 1. A learner on a fourth core receives the log without voting.
    c.add_learner_4(leader, 1000);
    assert!(
        c.run_until(100, |c| c.hosts.contains_key(&4) && c.store(4).len() == 50),
        "the learner caught up"
    );
    assert!(
        c.confs[&leader].1.contains(&4),
        "4 is a learner: {:?}",
        c.confs[&leader]
    );

    // 2. Promote it and remove another replica in one joint change (Raft §6).
    c.hosts
        .get_mut(&leader)
        .unwrap()
        .change_membership(
            GROUP,
            &[AddVoter(ReplicaId(4)), Remove(ReplicaId(removed))],
            ProposalToken(1001),
        )
        .unwrap();
    let mut expected: Vec<u64> = (1..=4).filter(|i| *i != removed).collect();
    expected.sort_unstable();
    assert!(
        c.run_until(100, |c| c.confs.get(&leader).is_some_and(
            |(v, _, joint)| {
                let mut v = v.clone();
                v.sort_unstable();
                v == expected && !joint
            }
        )),
        "left the joint configuration with voters {expected:?}: {:?}",
        c.confs.get(&leader)
    );

    // 3. Hand leadership to the new replica; the removed one goes away; writes continue.
    c.hosts
        .get_mut(&leader)
        .unwrap()
        .transfer_leader(GROUP, ReplicaId(4))
        .unwrap();
    assert!(
        c.run_until(100, |c| c.leader() == Some(4)),
        "leadership moved to the new replica"
    );
    c.crash(removed);
    for t in 50..100 {
        assert!(c.put(t, &format!("k{t}"), "v"));
    }
    assert!(c.run_until(100, |c| (0..100).all(|t| c.applied.contains_key(&t))));
    assert!(
        c.applied.contains_key(&1000) && c.applied.contains_key(&1001),
        "membership changes acknowledged"
    );
    assert!(c.run_until(100, |c| expected.iter().all(|i| c.store(*i).len() == 100)));
    c.at_most_one_leader_per_term();
}

#[test]
fn a_leader_that_removes_itself_steps_down_and_hands_over_at_once() {
    use nodedb_cluster::replication::raft_host::MembershipChange::Remove;
    let mut c = Cluster::new();
    assert!(c.run_until(200, |c| c.leader().is_some()));
    for t in 0..10 {
        c.put(t, &format!("k{t}"), "v");
    }
    assert!(c.run_until(50, |c| c.applied.len() == 10));
    let old = c.leader().unwrap();
    c.hosts
        .get_mut(&old)
        .unwrap()
        .change_membership(GROUP, &[Remove(ReplicaId(old))], ProposalToken(1000))
        .unwrap();
    assert!(
        c.run_until(50, |c| c.confs.get(&old).is_some_and(|v| v.0.len() == 2)),
        "the removal is applied"
    );
    // raft-rs would keep the removed replica leading, and panic on its next step; it
    // steps down and the most up-to-date voter campaigns at once (TimeoutNow), well
    // before an election timeout (10 ticks at the least; 13 without the hand-over).
    assert!(
        c.run_until(3, |c| c.leader().is_some_and(|l| l != old)),
        "another voter leads soon after the removal"
    );
    assert!(!c.hosts[&old].is_leader(GROUP));
    for t in 10..20 {
        assert!(c.put(t, &format!("k{t}"), "v"));
    }
    assert!(c.run_until(50, |c| (0..20).all(|t| c.applied.contains_key(&t))));
    c.at_most_one_leader_per_term();
}

#[test]
fn a_message_for_an_earlier_replica_of_the_group_is_refused() {
    use nodedb_cluster::replication::raft_host::HostError;
    let mut host: RaftHost<KvStore> = RaftHost::new(address(1));
    host.add_group(GROUP, ReplicaId(7), &[ReplicaId(7)], None, KvStore::new())
        .unwrap();
    let mut heartbeat = raft::eraftpb::Message::default();
    heartbeat.set_msg_type(MessageType::MsgHeartbeat);
    heartbeat.to = 4; // the replica of this group that lived here before
    heartbeat.from = 2;
    heartbeat.term = 5;
    heartbeat.commit = 100;
    assert_eq!(
        host.handle_message(GROUP, NodeId(2), heartbeat),
        Err(HostError::WrongReplica {
            group: GROUP,
            to: ReplicaId(4)
        })
    );
    assert_eq!(host.term(GROUP), Some(0), "the message changed nothing");
}

/// A learner that joins after the log was compacted can only catch up through a snapshot,
/// and the stored one predates it: raft-rs refuses to install a snapshot whose
/// configuration does not name the recipient. The host takes a fresh snapshot when
/// raft-rs asks for one it cannot serve. Before, the learner waited for the next
/// compaction — forever, on a group with no more writes.
#[test]
fn a_learner_joining_after_compaction_gets_a_snapshot_that_names_it() {
    let mut c = Cluster::new();
    assert!(c.run_until(200, |c| c.leader().is_some()));
    let writes = nodedb_cluster::constants::RAFT_LOG_COMPACT_ENTRIES as u64 + 100;
    for t in 0..writes {
        assert!(c.put(t, &format!("k{t}"), "v"), "write {t}");
        if t % 100 == 99 {
            c.step();
        }
    }
    assert!(c.run_until(100, |c| c.applied.len() as u64 == writes));
    let leader = c.leader().unwrap();
    assert!(c.disks[&leader].snapshot.is_some(), "the log was compacted");
    c.add_learner_4(leader, 1 << 40);
    // No further writes: only a new snapshot can bring the learner up to date.
    assert!(
        c.run_until(300, |c| c.store(4).len() as u64 == writes),
        "the learner caught up through a snapshot naming it"
    );
    assert!(c.snapshots_delivered > 0);
    for t in 0..writes {
        let key = format!("k{t}");
        assert_eq!(c.store(4).get(key.as_bytes()), Some(&b"v"[..]), "{key}");
    }
}

/// While a leader hands leadership over, raft-rs drops proposals; the host answers
/// `NotLeader` without a hint (the client pauses and finds the new leader) instead of an
/// error the client would report as a failed write.
#[test]
fn a_proposal_during_a_leader_transfer_is_redirected_not_failed() {
    let mut c = Cluster::new();
    assert!(c.run_until(200, |c| c.leader().is_some()));
    let leader = c.leader().unwrap();
    let target = (1..=3).find(|i| *i != leader).unwrap();
    // The target cannot be reached, so the transfer stays under way.
    c.isolated.insert(target);
    c.hosts
        .get_mut(&leader)
        .unwrap()
        .transfer_leader(GROUP, ReplicaId(target))
        .unwrap();
    c.step();
    let command = KvCommand::Put {
        key: b"k".to_vec(),
        value: b"v".to_vec(),
    };
    let refused =
        c.hosts
            .get_mut(&leader)
            .unwrap()
            .propose(GROUP, command.encode(), ProposalToken(1));
    assert_eq!(
        refused,
        Err(HostError::NotLeader {
            group: GROUP,
            leader: None
        })
    );
}

/// A group whose state is large compacts only once its log since the last snapshot is a
/// sizeable fraction of that state: each compaction snapshots the whole state, and doing it
/// every 1 024 entries rewrote a large vShard over and over (64× write amplification for
/// 4 KiB values in a 256 MiB vShard).
#[test]
fn a_large_state_is_not_snapshotted_every_thousand_small_entries() {
    let mut c = Cluster::new();
    assert!(c.run_until(200, |c| c.leader().is_some()));
    let big = vec![b'x'; 1 << 20];
    let mut token = 0u64;
    let mut put = |c: &mut Cluster, key: String, value: &[u8]| {
        let leader = c.leader().expect("a leader");
        let command = KvCommand::Put {
            key: key.into_bytes(),
            value: value.to_vec(),
        };
        c.hosts
            .get_mut(&leader)
            .unwrap()
            .propose(GROUP, command.encode(), ProposalToken(token))
            .unwrap();
        token += 1;
        c.step();
    };
    // 8 MiB of state and enough entries for a first compaction.
    for i in 0..8 {
        put(&mut c, format!("big-{i}"), &big);
    }
    for i in 0..1100 {
        put(&mut c, format!("small-{i}"), b"v");
    }
    let leader = c.leader().unwrap();
    let index = |c: &Cluster| {
        c.disks[&leader]
            .snapshot
            .as_ref()
            .map(|s| s.get_metadata().index)
    };
    let first = index(&c).expect("the first compaction");
    // Then 2 048 small entries: far more than 1 024 entries, far less than a quarter of
    // the state in bytes.
    for i in 0..2048 {
        put(&mut c, format!("more-{i}"), b"v");
    }
    assert_eq!(
        index(&c),
        Some(first),
        "no new snapshot of an 8 MiB state for 2 048 small entries"
    );
    // Another 3 MiB of writes brings the log past a quarter of the (11 MiB) state.
    for i in 8..11 {
        put(&mut c, format!("big-{i}"), &big);
    }
    put(&mut c, "tail".into(), b"v");
    assert!(
        index(&c) > Some(first),
        "compacted once the log reached a quarter of the state"
    );
}

/// A core that restarts hands out proposal tokens from 1 again, and an entry its earlier
/// incarnation proposed may commit after the restart. The host reports `Applied` only for
/// proposals of this incarnation (matched by index and term, not token alone): otherwise
/// a new request holding the same token would be answered with the old entry's outcome.
#[test]
fn an_entry_proposed_before_a_restart_is_not_reported_as_a_new_proposal() {
    let mut c = Cluster::new();
    assert!(c.run_until(200, |c| c.leader().is_some()));
    let leader = c.leader().unwrap();
    // The leader appends an entry nobody else receives, then crashes with it on disk.
    c.isolated.insert(leader);
    let stale = KvCommand::Put {
        key: b"stale".to_vec(),
        value: b"from-the-earlier-incarnation".to_vec(),
    };
    c.hosts
        .get_mut(&leader)
        .unwrap()
        .propose(GROUP, stale.encode(), ProposalToken(7))
        .unwrap();
    c.step();
    c.crash(leader);
    c.isolated.clear();
    c.start(leader);
    // Its log is the longest: it can win an election and commit the entry. It asks until
    // it does (the others refuse while they still count on the old leadership, and
    // their own timeouts are drawn per election).
    let mut committed = false;
    for _ in 0..200 {
        if c.store(leader).get(b"stale").is_some() {
            committed = true;
            break;
        }
        if c.leader().is_none() {
            let _ = c.hosts.get_mut(&leader).unwrap().campaign(GROUP);
        }
        c.step();
    }
    assert!(committed, "the entry commits after the restart");
    assert_eq!(c.leader(), Some(leader));
    assert!(
        !c.applied.contains_key(&7),
        "the restarted host reported the old entry as its own new proposal"
    );
    // Its own new proposals are still reported.
    assert!(c.put(8, "fresh", "now"));
    assert!(c.run_until(50, |c| c.applied.contains_key(&8)));
}

/// SplitMix64: a small deterministic generator for the property tests.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    /// A value from the edges that break arithmetic, or an ordinary small one.
    fn interesting(&mut self) -> u64 {
        match self.below(8) {
            0 => 0,
            1 => 1,
            2 => u64::MAX,
            3 => 1 << 40,
            4 => 1 << 62,
            5 => self.next(),
            _ => self.below(64),
        }
    }
}

/// Sends, alongside real messages, forged ones: mutated copies of them and messages made
/// up from scratch, from the real sender's node or from another node.
struct Forger {
    rng: Rng,
    /// Forgeries per real message, in percent.
    rate: u64,
    accepted: u64,
    refused: u64,
    /// Refused for another reason than screening (unknown group, wrong replica, raft-rs).
    dropped: u64,
}

impl Forger {
    fn new(seed: u64, rate: u64) -> Forger {
        Forger {
            rng: Rng(seed),
            rate,
            accepted: 0,
            refused: 0,
            dropped: 0,
        }
    }

    fn forge(&mut self, host: &mut RaftHost<KvStore>, from: NodeId, real: &Outgoing) {
        while self.rng.below(100) < self.rate {
            let mut message = if self.rng.below(5) == 0 {
                raft::eraftpb::Message::default()
            } else {
                real.message.clone()
            };
            for _ in 0..1 + self.rng.below(3) {
                self.mutate(&mut message);
            }
            let sender = if self.rng.below(5) == 0 {
                NodeId(1 + self.rng.below(4))
            } else {
                from
            };
            match host.handle_message(real.group, sender, message) {
                Ok(()) => self.accepted += 1,
                Err(HostError::Refused { .. }) => self.refused += 1,
                Err(_) => self.dropped += 1,
            }
            if self.rate < 100 {
                break;
            }
        }
    }

    fn mutate(&mut self, m: &mut raft::eraftpb::Message) {
        let rng = &mut self.rng;
        match rng.below(12) {
            0 => m.term = rng.interesting(),
            1 => m.index = rng.interesting(),
            2 => m.commit = rng.interesting(),
            3 => m.log_term = rng.interesting(),
            4 => m.from = rng.below(6),
            5 => m.to = rng.below(6),
            6 => {
                let kinds = [
                    MessageType::MsgHup,
                    MessageType::MsgBeat,
                    MessageType::MsgPropose,
                    MessageType::MsgAppend,
                    MessageType::MsgAppendResponse,
                    MessageType::MsgRequestVote,
                    MessageType::MsgRequestVoteResponse,
                    MessageType::MsgSnapshot,
                    MessageType::MsgHeartbeat,
                    MessageType::MsgHeartbeatResponse,
                    MessageType::MsgUnreachable,
                    MessageType::MsgSnapStatus,
                    MessageType::MsgCheckQuorum,
                    MessageType::MsgTransferLeader,
                    MessageType::MsgTimeoutNow,
                    MessageType::MsgReadIndex,
                    MessageType::MsgReadIndexResp,
                    MessageType::MsgRequestPreVote,
                    MessageType::MsgRequestPreVoteResponse,
                ];
                m.set_msg_type(kinds[rng.below(kinds.len() as u64) as usize]);
            }
            7 => {
                m.reject = !m.reject;
                m.reject_hint = rng.interesting();
            }
            8 => {
                let n = rng.below(4) as usize;
                let mut entries = Vec::new();
                for i in 0..n {
                    let mut e = raft::eraftpb::Entry::default();
                    e.index = match rng.below(3) {
                        0 => rng.interesting(),
                        _ => m.index + 1 + i as u64,
                    };
                    e.term = match rng.below(3) {
                        0 => rng.interesting(),
                        _ => m.term,
                    };
                    e.data = match rng.below(3) {
                        0 => (0..rng.below(40)).map(|_| rng.next() as u8).collect(),
                        _ => KvCommand::Put {
                            key: b"forged".to_vec(),
                            value: b"x".to_vec(),
                        }
                        .encode(),
                    }
                    .into();
                    entries.push(e);
                }
                m.entries = entries.into();
            }
            9 => {
                let meta = m.mut_snapshot().mut_metadata();
                meta.index = rng.interesting();
                meta.term = rng.interesting();
                let conf = meta.mut_conf_state();
                let ids = |rng: &mut Rng| (0..rng.below(4)).map(|_| rng.below(5)).collect();
                conf.voters = ids(rng);
                conf.learners = ids(rng);
                conf.voters_outgoing = ids(rng);
                conf.learners_next = ids(rng);
                conf.auto_leave = rng.below(2) == 0;
                m.mut_snapshot().data = (0..rng.below(40)).map(|_| rng.next() as u8).collect();
            }
            10 => m.request_snapshot = rng.interesting(),
            _ => m.context = (0..rng.below(16)).map(|_| rng.next() as u8).collect(),
        }
    }
}

#[test]
fn a_forged_heartbeat_committing_past_the_log_is_refused_and_the_group_keeps_serving() {
    let mut c = Cluster::new();
    assert!(c.run_until(200, |c| c.leader().is_some()));
    let leader = c.leader().unwrap();
    let follower = (1..=3).find(|&i| i != leader).unwrap();
    let mut heartbeat = raft::eraftpb::Message::default();
    heartbeat.set_msg_type(MessageType::MsgHeartbeat);
    heartbeat.from = leader;
    heartbeat.to = follower;
    heartbeat.term = c.hosts[&leader].term(GROUP).unwrap();
    heartbeat.commit = 1 << 40;
    // The leader's own node sends it: authenticated, yet impossible.
    let answer =
        c.hosts
            .get_mut(&follower)
            .unwrap()
            .handle_message(GROUP, NodeId(leader), heartbeat);
    assert!(
        matches!(answer, Err(HostError::Refused { .. })),
        "{answer:?}"
    );
    for t in 0..5 {
        assert!(c.put(t, &format!("k{t}"), "v"));
    }
    assert!(c.run_until(50, |c| (0..5).all(|t| c.applied.contains_key(&t))));
}

#[test]
fn a_message_in_the_name_of_a_replica_on_another_node_is_refused() {
    let mut c = Cluster::new();
    assert!(c.run_until(200, |c| c.leader().is_some()));
    let leader = c.leader().unwrap();
    let follower = (1..=3).find(|&i| i != leader).unwrap();
    let other = (1..=3).find(|&i| i != leader && i != follower).unwrap();
    let term = c.hosts[&leader].term(GROUP).unwrap();
    // The third node claims to be the leader, in a later term, and to commit nothing.
    let mut heartbeat = raft::eraftpb::Message::default();
    heartbeat.set_msg_type(MessageType::MsgHeartbeat);
    heartbeat.from = leader;
    heartbeat.to = follower;
    heartbeat.term = term + 5;
    let answer =
        c.hosts
            .get_mut(&follower)
            .unwrap()
            .handle_message(GROUP, NodeId(other), heartbeat);
    assert!(
        matches!(answer, Err(HostError::Refused { .. })),
        "{answer:?}"
    );
    assert_eq!(
        c.hosts[&follower].term(GROUP),
        Some(term),
        "nothing changed"
    );
}

/// Thousands of random and mutated messages, delivered next to a running group's real
/// traffic, from the real sender's node or another: raft-rs never panics, screening refuses
/// a share of them, and the rest are stepped.
#[test]
fn random_and_mutated_raft_messages_never_panic_a_host() {
    let mut forged = 0;
    for seed in 0..256u64 {
        let mut c = Cluster::new();
        c.forger = Some(Forger::new(seed, 60));
        let mut token = 0;
        for _ in 0..150 {
            if c.leader().is_some() {
                token += 1;
                c.put(token, &format!("k{token}"), "v");
            }
            c.step();
        }
        let f = c.forger.take().unwrap();
        assert!(
            f.refused > 0 && f.accepted > 0,
            "seed {seed}: {} {}",
            f.refused,
            f.accepted
        );
        forged += f.accepted + f.refused + f.dropped;
    }
    assert!(forged > 100_000, "only {forged} forged messages");
}

#[test]
fn an_idle_group_quiesces_sends_nothing_and_a_write_wakes_it() {
    let mut c = Cluster::quiescing();
    assert!(c.run_until(200, |c| c.leader().is_some()));
    for t in 0..10 {
        assert!(c.put(t, &format!("k{t}"), "v"));
    }
    assert!(c.run_until(50, |c| c.applied.len() == 10));
    assert!(
        c.run_until(20, Cluster::all_quiesced),
        "every replica quiesces within two seconds of idleness"
    );
    let (leader, delivered) = (c.leader(), c.delivered);
    for _ in 0..300 {
        c.step();
    }
    assert_eq!(
        c.delivered, delivered,
        "no message in 30 s of quiescence: no heartbeat, no election"
    );
    assert!(c.all_quiesced());
    assert_eq!(c.leader(), leader);
    // A write wakes the group, commits on every replica, and it quiesces again.
    assert!(c.put(10, "k10", "v"));
    assert!(c.hosts.values().any(|h| !h.is_quiesced(GROUP)));
    assert!(c.run_until(20, |c| c.applied.len() == 11
        && (1..=3).all(|i| c.store(i).len() == 11)));
    assert!(c.run_until(20, Cluster::all_quiesced));
    c.at_most_one_leader_per_term();
}

/// A replica that sleeps does not write its unwritten commit index at the next tick (at
/// tens of thousands of groups that cost each write three more log records: the leader's
/// and the followers', told the commit by the quiescing heartbeat) until its group writes
/// again or someone asks for its durable commit index.
#[test]
fn a_sleeping_replicas_commit_index_waits_for_the_next_write_or_a_question() {
    let mut c = Cluster::asleep();
    let leader = c.leader().unwrap();
    let last = c.hosts[&leader].last_index(GROUP).unwrap();
    for _ in 0..50 {
        c.step();
    }
    assert!(c.all_quiesced());
    for i in 1..=3 {
        assert!(
            c.disks[&i].hard_state.commit < last,
            "sleeping replica {i} wrote its commit index: {:?}",
            c.disks[&i].hard_state
        );
    }
    // Asked, a replica answers what it holds and writes the rest with its next batch.
    let delivered = c.delivered;
    for i in 1..=3 {
        let host = c.hosts.get_mut(&i).unwrap();
        assert!(host.durable_commit(GROUP).unwrap() < last);
        c.quiesce();
        assert_eq!(c.disks[&i].hard_state.commit, last);
        let host = c.hosts.get_mut(&i).unwrap();
        assert_eq!(host.durable_commit(GROUP), Some(last));
    }
    assert!(c.all_quiesced(), "the questions woke nobody");
    assert_eq!(c.delivered, delivered, "nor sent anything");
    // The next write carries it too, and the group sleeps again.
    assert!(c.put(2, "b", "2"));
    assert!(c.run_until(20, Cluster::all_quiesced));
    let second = c.hosts[&leader].last_index(GROUP).unwrap();
    assert!(second > last);
    for i in 1..=3 {
        assert!(c.disks[&i].hard_state.commit >= last, "node {i}");
    }
}

#[test]
fn a_hosts_activity_count_stays_put_while_its_groups_sleep_and_moves_when_one_wakes() {
    let mut c = Cluster::asleep();
    // A commit index still to write keeps a sleeping group on the tick's list a little.
    for _ in 0..5 {
        c.step();
    }
    let activity = |c: &Cluster| -> Vec<u64> { c.hosts.values().map(|h| h.activity()).collect() };
    let before = activity(&c);
    for _ in 0..300 {
        c.step();
    }
    assert_eq!(
        activity(&c),
        before,
        "30 s asleep: a walk over the groups (the load tick) would find nothing new"
    );
    // A write wakes the group on every replica: every host's count moves.
    assert!(c.put(2, "b", "2"));
    assert!(c.run_until(20, |c| (1..=3).all(|i| c.store(i).len() == 2)));
    let after = activity(&c);
    for (b, a) in before.iter().zip(&after) {
        assert!(
            a > b,
            "a host whose group woke kept its count: {before:?} -> {after:?}"
        );
    }
}

#[test]
fn a_write_to_a_sleeping_group_costs_each_replica_one_visit_of_the_tick_walk() {
    let mut c = Cluster::asleep();
    let awake = |c: &Cluster| -> usize { c.hosts.values().map(|h| h.awake_groups()).sum() };
    for _ in 0..5 {
        c.step();
    }
    assert_eq!(awake(&c), 0, "asleep, nothing is on a tick's list");
    assert!(c.put(2, "b", "2"));
    c.quiesce();
    assert_eq!(c.store(c.leader().unwrap()).len(), 2, "committed");
    // Every tick visits the groups on its host's list: count them until all sleep.
    let mut visits = 0;
    let mut steps = 0;
    while !c.all_quiesced() {
        assert!(steps < 20, "the group did not go back to sleep");
        visits += awake(&c);
        c.step();
        steps += 1;
    }
    // A replica leaves the list as it falls asleep (the leader at the tick that finds its
    // group settled, a follower at the heartbeat that tells it so), not at a tick after.
    assert_eq!(awake(&c), 0, "asleep but still on a tick's list");
    assert_eq!(visits, 3, "one visit per replica");
    assert!((1..=3).all(|i| c.store(i).len() == 2), "applied everywhere");
    c.at_most_one_leader_per_term();
}

#[test]
fn a_read_of_a_sleeping_group_takes_one_round_and_leaves_every_replica_asleep() {
    let mut c = Cluster::asleep();
    let leader = c.leader().unwrap();
    let delivered = c.delivered;
    c.hosts
        .get_mut(&leader)
        .unwrap()
        .read(GROUP, ProposalToken(7))
        .unwrap();
    // Delivered with no time passing (a tick would repeat the read's heartbeats).
    c.quiesce();
    assert_eq!(c.reads_ready, [7]);
    // Two heartbeats marked as quiescing ones, and two answers: the followers never woke.
    assert_eq!(c.delivered - delivered, 4);
    for (i, host) in &c.hosts {
        if *i != leader {
            assert!(host.is_quiesced(GROUP), "follower {i} woke");
        }
    }
    // The leader sleeps again at its next tick, sending nothing.
    assert!(c.run_until(2, Cluster::all_quiesced));
    for _ in 0..100 {
        c.step();
    }
    assert_eq!(c.delivered - delivered, 4, "no round after the read");
    // A second read does the same; a write after it wakes the group as before.
    c.hosts
        .get_mut(&leader)
        .unwrap()
        .read(GROUP, ProposalToken(8))
        .unwrap();
    assert!(c.run_until(5, |c| c.reads_ready == [7, 8]));
    assert!(c.run_until(2, Cluster::all_quiesced));
    // A write: two appends and their answers, then two quiescing heartbeats, which
    // followers that sleep do not answer.
    let delivered = c.delivered;
    assert!(c.put(2, "b", "2"));
    assert!(c.run_until(20, |c| (1..=3).all(|i| c.store(i).len() == 2)));
    assert!(c.run_until(20, Cluster::all_quiesced));
    assert_eq!(c.delivered - delivered, 6);
    // And a read after the write is one round again.
    let delivered = c.delivered;
    c.hosts
        .get_mut(&leader)
        .unwrap()
        .read(GROUP, ProposalToken(9))
        .unwrap();
    c.quiesce();
    assert_eq!(c.reads_ready, [7, 8, 9]);
    assert_eq!(c.delivered - delivered, 4);
    assert!(c.run_until(2, Cluster::all_quiesced));
    c.at_most_one_leader_per_term();
}

#[test]
fn quiesced_followers_do_not_campaign_until_the_leaders_node_is_suspected() {
    let mut c = Cluster::asleep();
    let old = c.leader().unwrap();
    c.crash(old);
    for _ in 0..100 {
        c.step();
    }
    assert_eq!(
        c.leader(),
        None,
        "quiesced followers do not notice a dead leader by themselves"
    );
    // The failure detector suspects the leader's node: its followers wake and elect.
    for host in c.hosts.values_mut() {
        assert_eq!(host.wake_followers_of(NodeId(old)), 1);
    }
    assert!(
        c.run_until(20, |c| c.leader().is_some_and(|l| l != old)),
        "a new leader within two seconds of the suspicion"
    );
    assert!(c.put(2, "b", "2"));
    assert!(c.run_until(20, |c| c.applied.len() == 2));
    // Suspecting a follower's node wakes nothing: no group is led from there.
    let leader = c.leader().unwrap();
    assert!(c.run_until(20, Cluster::all_quiesced));
    let follower = (1..=3).find(|i| *i != old && *i != leader).unwrap();
    for host in c.hosts.values_mut() {
        assert_eq!(host.wake_followers_of(NodeId(follower)), 0);
    }
    assert!(c.all_quiesced());
    c.at_most_one_leader_per_term();
}

#[test]
fn a_false_suspicion_wakes_the_followers_but_changes_no_term_or_leader() {
    let mut c = Cluster::asleep();
    let leader = c.leader().unwrap();
    let term = c.hosts[&leader].term(GROUP).unwrap();
    // The leader's node is suspected, but it is alive.
    for (i, host) in c.hosts.iter_mut() {
        let woken = host.wake_followers_of(NodeId(leader));
        assert_eq!(woken, usize::from(*i != leader));
        host.node_recovered(NodeId(leader));
    }
    // The followers time out and ask for pre-votes, which the others refuse while they
    // trust the leader; the woken leader's heartbeats settle them.
    for _ in 0..50 {
        c.step();
    }
    assert_eq!(c.leader(), Some(leader));
    for host in c.hosts.values() {
        assert_eq!(host.term(GROUP), Some(term), "no new term");
    }
    assert!(c.run_until(20, Cluster::all_quiesced));
    c.at_most_one_leader_per_term();
}

#[test]
fn a_follower_does_not_sleep_while_its_leaders_node_is_suspected() {
    let mut c = Cluster::quiescing();
    assert!(c.run_until(200, |c| c.leader().is_some()));
    assert!(c.put(1, "a", "1"));
    assert!(c.run_until(50, |c| c.applied.len() == 1));
    let leader = c.leader().unwrap();
    // Suspected before the group sleeps: nothing to wake yet.
    for host in c.hosts.values_mut() {
        host.wake_followers_of(NodeId(leader));
    }
    // The leader quiesces and tells the followers to, but they stay awake, and their
    // unmarked answers wake the leader, whose heartbeats keep them: no new term while the
    // leader lives (a suspicion may be false), for well over an election timeout.
    for _ in 0..40 {
        c.step();
        for (i, host) in &c.hosts {
            if *i != leader {
                assert!(!host.is_quiesced(GROUP), "follower {i} slept");
            }
        }
        assert_eq!(c.leader(), Some(leader), "the suspected leader was deposed");
    }
    // Its node stays down: the awake followers elect another leader.
    c.crash(leader);
    assert!(
        c.run_until(30, |c| c.leader().is_some_and(|l| l != leader)),
        "a new leader within three seconds"
    );
    c.at_most_one_leader_per_term();
}

/// A quiescing cluster whose group was just created fresh on every replica, with replica
/// `first` to lead it first (`start_paced`); replica `first` is not started when `down`.
fn fresh(first: u64, down: bool) -> Cluster {
    let mut c = Cluster::quiescing();
    if down {
        c.crash(first);
    }
    for host in c.hosts.values_mut() {
        host.start_paced(GROUP, ReplicaId(first)).unwrap();
    }
    c
}

#[test]
fn a_fresh_group_elects_its_first_leader_in_one_exchange_and_the_others_wait_asleep() {
    let mut c = fresh(2, false);
    for i in [1, 3] {
        assert!(c.hosts[&i].is_quiesced(GROUP), "replica {i} waits asleep");
    }
    // No time passes: the first leader's pre-vote and vote rounds alone elect it.
    c.quiesce();
    assert_eq!(c.leader(), Some(2));
    assert!(c.put(1, "a", "1"));
    assert!(c.run_until(20, |c| (1..=3).all(|i| c.store(i).len() == 1)));
    assert!(c.run_until(20, Cluster::all_quiesced));
    c.at_most_one_leader_per_term();
}

#[test]
fn fresh_replicas_whose_first_leader_is_down_elect_once_its_node_is_suspected() {
    let mut c = fresh(2, true);
    let delivered = c.delivered;
    for _ in 0..100 {
        c.step();
    }
    assert_eq!(c.leader(), None, "they wait for replica 2, asleep");
    assert_eq!(c.delivered, delivered, "and send nothing meanwhile");
    for host in c.hosts.values_mut() {
        assert_eq!(host.wake_followers_of(NodeId(2)), 1);
    }
    // One replica campaigns for the group, at once and paced: the lowest voter off the
    // suspected node. The other sleeps on (woken by the election, not by its own timer).
    assert!(!c.hosts[&1].is_quiesced(GROUP), "replica 1 campaigns");
    assert!(c.hosts[&3].is_quiesced(GROUP), "replica 3 sleeps on");
    assert!(
        c.run_until(30, |c| c.leader().is_some()),
        "a leader within three seconds of the suspicion"
    );
    assert_eq!(c.leader(), Some(1));
    assert!(c.put(1, "a", "1"));
    assert!(c.run_until(20, |c| c.applied.len() == 1));
    c.at_most_one_leader_per_term();
}

#[test]
fn a_sleeping_leader_wakes_to_catch_up_a_replica_whose_node_recovered() {
    // Node 3 starts late: suspected meanwhile, so the group sleeps without waiting for it.
    let mut c = fresh(1, false);
    c.crash(3);
    for host in c.hosts.values_mut() {
        host.wake_followers_of(NodeId(3));
    }
    c.quiesce();
    assert_eq!(c.leader(), Some(1));
    assert!(c.put(1, "a", "1"));
    assert!(c.run_until(20, |c| c.applied.len() == 1));
    assert!(c.run_until(30, Cluster::all_quiesced));
    // Its fresh replica waits asleep for the group's first leader, which sleeps too.
    c.start(3);
    c.hosts
        .get_mut(&3)
        .unwrap()
        .start_paced(GROUP, ReplicaId(1))
        .unwrap();
    for _ in 0..30 {
        c.step();
    }
    assert_eq!(c.store(3).len(), 0, "asleep, nobody tells it");
    // Its node is alive again: the leader wakes and brings it up to date.
    let mut woken = 0;
    for host in c.hosts.values_mut() {
        woken += host.node_recovered(NodeId(3));
    }
    assert_eq!(woken, 1, "the leader, whose replica on node 3 is behind");
    assert!(c.run_until(30, |c| c.store(3).len() == 1));
    assert!(c.run_until(30, Cluster::all_quiesced));
    c.at_most_one_leader_per_term();
}

#[test]
fn first_elections_are_paced_a_core_starts_a_bounded_number_at_once() {
    // One host, the first leader of many fresh groups whose other replicas never answer.
    let mut host: RaftHost<KvStore> = RaftHost::new(address(1));
    host.set_quiesce(true);
    for r in 1..=3 {
        host.set_address(ReplicaId(r), address(r));
    }
    let groups = FIRST_CAMPAIGNS_IN_FLIGHT as u64 + 40;
    let voters = [ReplicaId(1), ReplicaId(2), ReplicaId(3)];
    for g in 1..=groups {
        host.add_group(GroupId(g), ReplicaId(1), &voters, None, KvStore::new())
            .unwrap();
        host.start_paced(GroupId(g), ReplicaId(1)).unwrap();
    }
    let electing = |host: &RaftHost<KvStore>| {
        (1..=groups)
            .filter(|g| !host.is_quiesced(GroupId(*g)))
            .count()
    };
    assert_eq!(
        electing(&host),
        FIRST_CAMPAIGNS_IN_FLIGHT,
        "the rest wait asleep"
    );
    // Unanswered, the first ones stop holding their places after a while.
    let mut now = Time::ZERO;
    for _ in 0..FIRST_CAMPAIGN_TICKS - 1 {
        now += RAFT_TICK;
        host.handle_tick(now);
    }
    assert_eq!(electing(&host), FIRST_CAMPAIGNS_IN_FLIGHT);
    for _ in 0..2 {
        now += RAFT_TICK;
        host.handle_tick(now);
    }
    assert_eq!(electing(&host), groups as usize);
}
