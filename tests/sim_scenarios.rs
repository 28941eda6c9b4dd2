//! Scenarios that read like specifications, on the simulator's vocabulary: `isolate`,
//! `cut`, `heal`, `crash`, `restart`, `slow_fsync`. Each ends with every checker clean.

use std::time::Duration;

use nodedb_cluster::sim::Scenario;
use nodedb_cluster::sim::linearizability::RegisterOp;

const SECOND: Duration = Duration::from_secs(1);

fn value(v: &str) -> Option<Vec<u8>> {
    Some(v.as_bytes().to_vec())
}

/// The node of four that holds no replica of the group (three replicas).
fn spare(s: &Scenario) -> u64 {
    let replicas = s.replicas();
    (1..=4)
        .find(|n| !replicas.contains(n))
        .expect("a spare node")
}

/// A node other than `not` that holds a replica.
fn follower(s: &Scenario, not: u64) -> u64 {
    s.replicas()
        .into_iter()
        .find(|n| *n != not)
        .expect("another replica")
}

fn elected(s: &mut Scenario) -> u64 {
    assert!(
        s.run_until(10 * SECOND, |s| s.leader().is_some()),
        "a leader within 10 s"
    );
    s.leader().unwrap()
}

/// Reads `key` through the current leader and returns what it found.
fn read_through_leader(s: &mut Scenario, key: u64) -> Option<Vec<u8>> {
    let read = s.get(s.leader().expect("a leader to read through"), key);
    assert!(s.run_until(5 * SECOND, |s| s.result(read).is_some()));
    match s.result(read) {
        Some(RegisterOp::Get { found }) => found.clone(),
        other => panic!("a read completed as {other:?}"),
    }
}

#[test]
fn a_leader_isolated_in_the_minority_cannot_commit_while_the_majority_does() {
    let mut s = Scenario::new(3);
    let old = elected(&mut s);
    s.isolate(old);
    // The isolated leader accepts the proposal but can never commit it.
    let lost = s.put(old, 0, "to-the-minority");
    assert!(
        s.run_until(10 * SECOND, |s| s.leader().is_some_and(|l| l != old)),
        "the majority elects another leader"
    );
    let new = s.leader().filter(|l| *l != old).unwrap();
    let kept = s.put(new, 0, "to-the-majority");
    assert!(s.run_until(5 * SECOND, |s| s.result(kept).is_some()));
    assert!(s.result(lost).is_none(), "the minority never acknowledges");
    s.heal();
    s.run_for(5 * SECOND);
    assert_eq!(read_through_leader(&mut s, 0), value("to-the-majority"));
    assert!(s.violations().is_empty(), "{:?}", s.violations());
}

#[test]
fn a_follower_that_crashes_loses_its_unsynced_tail_but_no_acknowledged_write() {
    let mut s = Scenario::new(3);
    let leader = elected(&mut s);
    let follower = (1..=3).find(|n| *n != leader).unwrap();
    let first = s.put(leader, 0, "synced");
    assert!(s.run_until(5 * SECOND, |s| s.result(first).is_some()));
    // Fsyncs now take a while: the follower's next writes sit unsynced when it crashes.
    s.slow_fsync(Duration::from_millis(500));
    let second = s.put(leader, 0, "in-flight");
    s.run_for(Duration::from_millis(100));
    s.crash(follower);
    s.slow_fsync(Duration::ZERO);
    assert!(
        s.run_until(5 * SECOND, |s| s.result(second).is_some()),
        "the other follower completes the quorum"
    );
    s.restart(follower);
    s.run_for(5 * SECOND);
    assert_eq!(read_through_leader(&mut s, 0), value("in-flight"));
    assert!(s.violations().is_empty(), "{:?}", s.violations());
}

#[test]
fn a_partition_that_heals_during_a_leader_transfer_leaves_one_leader_per_term() {
    let mut s = Scenario::new(3);
    let leader = elected(&mut s);
    let target = (1..=3).find(|n| *n != leader).unwrap();
    let bystander = (1..=3).find(|n| *n != leader && *n != target).unwrap();
    s.cut(target, bystander);
    s.transfer_leader(target);
    s.run_for(Duration::from_millis(300));
    s.heal();
    assert!(s.run_until(10 * SECOND, |s| s.leader().is_some()));
    let w = s.put(s.leader().unwrap(), 0, "after-transfer");
    assert!(s.run_until(5 * SECOND, |s| s.result(w).is_some()));
    assert!(s.violations().is_empty(), "{:?}", s.violations());
}

#[test]
fn a_one_way_partition_does_not_stop_progress_forever() {
    let mut s = Scenario::new(3);
    let leader = elected(&mut s);
    let follower = (1..=3).find(|n| *n != leader).unwrap();
    // The leader still hears the follower but cannot reach it.
    s.cut(leader, follower);
    for i in 0..10 {
        let w = s.put(s.leader().unwrap_or(leader), 0, &format!("v{i}"));
        s.run_until(3 * SECOND, |s| s.result(w).is_some() || !s.pending(w));
    }
    s.heal();
    s.run_for(5 * SECOND);
    let w = s.put(s.leader().unwrap(), 0, "healed");
    assert!(s.run_until(5 * SECOND, |s| s.result(w).is_some()));
    assert!(s.violations().is_empty(), "{:?}", s.violations());
}

#[test]
fn a_replica_moves_to_a_spare_node_while_clients_write_and_keeps_every_write() {
    let mut s = Scenario::with_replicas(4, 3);
    let leader = elected(&mut s);
    let before = s.put(leader, 0, "before-the-move");
    assert!(s.run_until(5 * SECOND, |s| s.result(before).is_some()));
    let spare = spare(&s);
    // The leader's own replica moves: it must hand leadership over before it leaves.
    s.move_replica(leader, spare);
    let during = s.put(leader, 1, "during-the-move");
    assert!(
        s.run_until(30 * SECOND, |s| !s.moving()),
        "the move finishes"
    );
    assert!(
        s.result(during).is_some(),
        "a write during the move commits"
    );
    let replicas = s.replicas();
    assert_eq!(replicas.len(), 3, "{replicas:?}");
    assert!(
        replicas.contains(&spare) && !replicas.contains(&leader),
        "{replicas:?}"
    );
    // The new replica holds everything: let it lead and read through it.
    elected(&mut s);
    s.transfer_leader(spare);
    assert!(s.run_until(10 * SECOND, |s| s.leader() == Some(spare)));
    assert_eq!(read_through_leader(&mut s, 0), value("before-the-move"));
    assert_eq!(read_through_leader(&mut s, 1), value("during-the-move"));
    assert!(s.violations().is_empty(), "{:?}", s.violations());
}

#[test]
fn a_node_whose_log_is_damaged_refuses_to_start_and_its_replica_is_replaced() {
    let mut s = Scenario::with_replicas(4, 3);
    let leader = elected(&mut s);
    for i in 0..5 {
        let w = s.put(leader, 0, &format!("v{i}"));
        assert!(s.run_until(5 * SECOND, |s| s.result(w).is_some()));
    }
    let victim = follower(&s, leader);
    let spare = spare(&s);
    assert!(
        s.corrupt_disk(victim),
        "the follower's log holds synced records"
    );
    s.crash(victim);
    s.restart(victim);
    assert!(s.failed(victim), "a damaged log is refused, never replayed");
    assert!(
        s.run_until(30 * SECOND, |s| !s.moving()
            && s.replicas().contains(&spare)),
        "the failed node's replica is replaced on the spare"
    );
    assert!(!s.replicas().contains(&victim));
    elected(&mut s);
    s.transfer_leader(spare);
    assert!(s.run_until(10 * SECOND, |s| s.leader() == Some(spare)));
    assert_eq!(read_through_leader(&mut s, 0), value("v4"));
    assert!(s.violations().is_empty(), "{:?}", s.violations());
}

#[test]
fn a_leader_that_moves_away_while_a_voter_is_down_hands_over_to_a_live_one() {
    let mut s = Scenario::with_replicas(4, 3);
    let old = elected(&mut s);
    let w = s.put(old, 0, "x");
    assert!(s.run_until(5 * SECOND, |s| s.result(w).is_some()));
    // The hand-over must go to the voter the leader still hears from.
    let dead = follower(&s, old);
    let spare = spare(&s);
    s.crash(dead);
    s.move_replica(old, spare);
    assert!(
        s.run_until(30 * SECOND, |s| s.leader().is_some_and(|l| l != old)),
        "leadership left the moving replica while a voter was down"
    );
    s.restart(dead);
    assert!(
        s.run_until(30 * SECOND, |s| !s.moving()),
        "the move finishes"
    );
    let replicas = s.replicas();
    assert!(
        replicas.contains(&spare) && !replicas.contains(&old),
        "{replicas:?}"
    );
    // The moved replica led: its leadership goes on to the new replica.
    assert!(
        s.run_until(10 * SECOND, |s| s.leader() == Some(spare)),
        "the new replica leads, as the planner counts a copy of a leader"
    );
    assert_eq!(read_through_leader(&mut s, 0), value("x"));
    assert!(s.violations().is_empty(), "{:?}", s.violations());
}

/// The rebalancer in the simulated nodes, under a steady skewed load: a node crashes and
/// restarts, another is cut off and comes back; once the faults stop the cluster converges
/// (node max / mean within 1.15, from the nodes' own reports) and then plans nothing; every
/// checker (linearizability included) stays quiet.
#[test]
fn the_rebalancer_converges_after_faults_stop_and_then_plans_nothing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
    let mut s = Scenario::balancing(3, 2, 8, 7);
    s.run_with_load(Duration::from_secs(5), 24, &[], 0.0);
    let hot = s.groups_led_by_busiest_node();
    assert!(hot.len() >= 3, "eight groups over three nodes: {hot:?}");
    s.run_with_load(Duration::from_secs(5), 24, &hot, 0.6);
    s.crash(2);
    s.run_with_load(Duration::from_secs(3), 24, &hot, 0.6);
    s.restart(2);
    s.isolate(3);
    s.run_with_load(Duration::from_secs(3), 24, &hot, 0.6);
    s.heal();
    s.run_with_load(Duration::from_secs(40), 24, &hot, 0.6);
    let (node, core) = s.imbalance().expect("a coordinator with reports");
    eprintln!(
        "node max/mean {node:.3}, core max/mean {core:.3}: {:?}",
        s.rebalancer_status()
    );
    assert!(
        node <= 1.15,
        "node max/mean {node:.3} after 40 s without faults"
    );
    let dispatched = s.rebalancer_dispatches();
    assert!(dispatched > 0, "the rebalancer moved nothing");
    s.run_with_load(Duration::from_secs(20), 24, &hot, 0.6);
    assert_eq!(
        s.rebalancer_dispatches(),
        dispatched,
        "moves under a steady load after converging (flapping)"
    );
    assert_eq!(s.violations(), Vec::<String>::new());
}

/// An idle group: elected, one write committed, then every replica quiesced.
fn asleep(s: &mut Scenario) -> u64 {
    let leader = elected(s);
    let first = s.put(leader, 0, "before");
    assert!(s.run_until(5 * SECOND, |s| s.result(first).is_some()));
    assert!(
        s.run_until(5 * SECOND, |s| (1..=3).all(|n| s.quiesced(n))),
        "every replica quiesces once the group is idle"
    );
    s.leader().expect("still led while asleep")
}

/// After a fault that took the sleeping group's leader away: another is elected within
/// the bound, takes a write, and serves what was written before.
fn replaced_within_bound(s: &mut Scenario, old: u64, bound: Duration) -> u64 {
    assert!(
        s.run_until(bound, |s| s.leader().is_some_and(|l| l != old)),
        "a new leader within {bound:?}: the failure detector wakes the sleeping followers"
    );
    let new = s.leader().unwrap();
    let after = s.put(new, 0, "after");
    assert!(s.run_until(5 * SECOND, |s| s.result(after).is_some()));
    new
}

/// Once the network heals and things settle, the group serves the write made after the
/// fault, and every checker is clean.
fn serves_the_last_write(s: &mut Scenario) {
    s.heal();
    s.run_for(5 * SECOND);
    assert_eq!(read_through_leader(s, 0), value("after"));
    assert!(s.violations().is_empty(), "{:?}", s.violations());
}

#[test]
fn a_sleeping_groups_leader_that_crashes_is_replaced() {
    let mut s = Scenario::new(3);
    let old = asleep(&mut s);
    s.crash(old);
    replaced_within_bound(&mut s, old, 10 * SECOND);
    assert_eq!(read_through_leader(&mut s, 0), value("after"));
    s.restart(old);
    s.run_for(5 * SECOND);
    assert!(s.violations().is_empty(), "{:?}", s.violations());
}

#[test]
fn a_sleeping_groups_leader_cut_off_is_replaced_and_follows_after_healing() {
    let mut s = Scenario::new(3);
    let old = asleep(&mut s);
    s.isolate(old);
    replaced_within_bound(&mut s, old, 10 * SECOND);
    serves_the_last_write(&mut s);
}

#[test]
fn a_sleeping_groups_leader_whose_words_are_lost_is_replaced() {
    // Its messages to the others are lost; theirs still reach it.
    let mut s = Scenario::new(3);
    let old = asleep(&mut s);
    for other in (1..=3).filter(|n| *n != old) {
        s.cut(old, other);
    }
    replaced_within_bound(&mut s, old, 10 * SECOND);
    serves_the_last_write(&mut s);
}

#[test]
fn a_sleeping_groups_leader_paused_for_seconds_is_replaced_and_the_history_holds() {
    let mut s = Scenario::new(3);
    let old = asleep(&mut s);
    s.pause(old, 8 * SECOND);
    replaced_within_bound(&mut s, old, 8 * SECOND);
    serves_the_last_write(&mut s);
}

#[test]
fn clock_jumps_on_a_sleeping_group_leave_it_serving() {
    let mut s = Scenario::new(3);
    let leader = asleep(&mut s);
    for n in 1..=3 {
        s.jump_clock(n, 3 * SECOND);
        s.run_for(SECOND);
    }
    let leader = s.leader().unwrap_or(leader);
    let after = s.put(leader, 0, "after");
    assert!(s.run_until(10 * SECOND, |s| s.result(after).is_some()));
    assert_eq!(read_through_leader(&mut s, 0), value("after"));
    assert!(s.violations().is_empty(), "{:?}", s.violations());
}
