//! The balancer's acceptance targets, asserted through the evaluation harness: for every
//! scenario and a range of sizes (up to 16 nodes × 8 cores × 16 384 vShards, zipf 0.99):
//! - node max/mean ≤ 1.10 × max(1, bound) and core max/mean ≤ 1.15 × max(1, core bound);
//! - sweeps to converge ≤ ceil(moves / 10) + 2, then 10 more sweeps plan nothing;
//! - no reversed move; no vShard's replicas moved twice (outside drain);
//! - new-node and drain copy at most 1.2 × the bytes that must move.
//!
//! `HarnessReport::violations` states the targets; these tests run it over the matrix.

use std::time::Duration;

use nodedb_cluster::balance::harness::{self, HarnessConfig, HarnessReport, Scenario};

fn run(nodes: usize, cores: u16, vshards: u32, scenario: Scenario, seed: u64) -> HarnessReport {
    let mut config = HarnessConfig::new(nodes, cores, vshards, scenario);
    config.seed = seed;
    // A constant clock keeps the report deterministic; timing belongs to the benchmark.
    harness::run(&config, &mut || Duration::ZERO).expect("harness run")
}

fn assert_targets(r: &HarnessReport) {
    let violations = r.violations();
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

#[test]
fn every_scenario_meets_the_targets_on_small_clusters() {
    for scenario in Scenario::ALL {
        for (nodes, cores, vshards) in [(3, 1, 256), (4, 2, 1024), (5, 4, 1024)] {
            for seed in [1, 2, 3] {
                assert_targets(&run(nodes, cores, vshards, scenario, seed));
            }
        }
    }
}

#[test]
fn every_scenario_meets_the_targets_on_a_medium_cluster() {
    for scenario in Scenario::ALL {
        assert_targets(&run(8, 4, 4096, scenario, 7));
    }
}

#[test]
fn every_scenario_meets_the_targets_at_16_nodes_8_cores_16384_vshards() {
    for scenario in Scenario::ALL {
        assert_targets(&run(16, 8, 16_384, scenario, 1));
    }
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
    let joined = run(6, 2, 2048, Scenario::NewNode, 4);
    assert!(
        joined.bytes_moved > joined.bytes_must_move / 2,
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
