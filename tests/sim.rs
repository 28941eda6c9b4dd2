//! The deterministic simulator: many seeds pass every checker; a seed replays exactly; and
//! the checkers catch each deliberately injected bug for some seed.
//!
//! Replay a failing seed with `SEED=<n> cargo test --release --test sim` or
//! `nodedb-cluster sim --seed <n>`.

use nodedb_cluster::sim::{Bug, SimOptions, run};

fn seeds() -> Vec<u64> {
    match std::env::var("SEED") {
        Ok(s) => vec![s.parse().expect("SEED must be a number")],
        Err(_) => (1..=1000).collect(),
    }
}

#[test]
fn a_thousand_seeds_pass_every_checker() {
    let mut failures = Vec::new();
    let (mut ops, mut torn, mut refused, mut moves, mut stale) = (0, 0, 0, 0, 0);
    let (mut unchecked, mut hostile) = (0, 0);
    let (mut transfers, mut rebalanced) = (0, 0);
    let (mut decommissioned, mut recommissioned) = (0, 0);
    let (mut marked_down, mut back_active) = (0, 0);
    let (mut joins_active, mut joined_replicas) = (0, 0);
    let mut while_quiesced = [0u64; 4];
    for seed in seeds() {
        let report = run(&SimOptions::new(seed));
        ops += report.ops_completed;
        torn += report.torn_writes;
        refused += report.corruptions_refused;
        moves += report.moves_finished;
        stale += report.stale_routes;
        unchecked += report.unchecked_keys;
        hostile += report.hostile_refused;
        transfers += report.rebalancer_transfers;
        rebalanced += report.rebalancer_moves;
        decommissioned += report.drains_decommissioned;
        recommissioned += report.drains_recommissioned;
        marked_down += report.nodes_marked_down;
        back_active += report.nodes_back_active;
        joins_active += report.joins_active;
        joined_replicas += report.joined_replicas;
        for (total, n) in while_quiesced.iter_mut().zip(report.faults_while_quiesced) {
            *total += n;
        }
        if !report.violations.is_empty() {
            failures.push(format!(
                "seed {seed}: {:?} (faults {:?}); replay with SEED={seed} cargo test --release --test sim",
                report.violations, report.faults
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    assert_eq!(
        unchecked, 0,
        "keys whose linearizability search ran out of budget were not checked"
    );
    if std::env::var("SEED").is_err() {
        assert!(ops > 1000, "the clients did real work: {ops} ops");
        // Every kind of fault struck some run while groups slept.
        for (kind, n) in ["crash", "clock jump", "pause", "partition"]
            .iter()
            .zip(while_quiesced)
        {
            assert!(n > 0, "no {kind} struck while a replica was quiesced");
        }
        // The faults that need the byte-level log and the membership driver did happen.
        assert!(torn > 0, "no crash tore a write");
        assert!(refused > 0, "no damaged log was refused");
        assert!(moves > 0, "no replica moved");
        assert!(
            stale > 0,
            "no client was told its placement table was stale"
        );
        assert!(hostile > 0, "no hostile request was refused");
        // The rebalancer in the simulated nodes acted on the skewed load, under faults
        // (its move limits and no flapping are checked per seed).
        assert!(transfers > 0, "the rebalancer transferred no leader");
        assert!(rebalanced > 0, "the rebalancer moved no replica");
        // Operators drained healthy nodes under faults: some drains ran to the end (the
        // run settles only once no node is left draining and a decommissioned one holds
        // nothing), and some were undone.
        assert!(decommissioned > 0, "no drained node was decommissioned");
        assert!(recommissioned > 0, "no drain was undone");
        // Nodes crashed or cut off for longer than `dead_after` were recorded `Down` (the
        // run settles only with no replica left on a `Down` node: they were replaced), and
        // came back `Active` once heard again.
        assert!(
            marked_down > 0,
            "the failure detector recorded no node Down"
        );
        assert!(back_active > 0, "no Down node came back Active");
        // New nodes joined under faults (a run settles only once a joined node that did
        // not fail is past `Joining`), and the rebalancer gave them replicas.
        assert!(joins_active > 0, "no joined node became Active");
        assert!(joined_replicas > 0, "no joined node got a replica");
    }
}

#[test]
fn the_same_seed_gives_the_same_trace() {
    let a = run(&SimOptions::new(42));
    let b = run(&SimOptions::new(42));
    assert_eq!(a.trace_hash, b.trace_hash);
    assert_eq!(a.ops_completed, b.ops_completed);
    assert_ne!(a.trace_hash, run(&SimOptions::new(43)).trace_hash);
}

/// Runs seeds with `bug` until a checker objects; returns the first such seed.
/// The first seed, of up to 1 000, whose run with `bug` reports a violation. Some bugs
/// need a rare coincidence: acknowledging before the fsync is caught in 9 of the first
/// 1 000 seeds (first at 435), since a crash must take an acknowledged, unsynced entry
/// from a replica the next leader then counts on.
fn first_violation(bug: Bug) -> Option<u64> {
    (1..=1_000).find(|seed| {
        let mut options = SimOptions::new(*seed);
        options.bug = Some(bug);
        !run(&options).violations.is_empty()
    })
}

#[test]
fn acknowledging_before_fsync_is_caught() {
    assert!(first_violation(Bug::AckBeforeFsync).is_some());
}

#[test]
fn forgetting_the_term_and_vote_on_restart_is_caught() {
    assert!(first_violation(Bug::ForgetVote).is_some());
}

/// The node core's request path serves a read from whatever replica it reached, without
/// ReadIndex: the simulator, which drives that very code, finds a stale read.
#[test]
fn a_node_core_that_reads_without_a_read_index_is_caught_as_non_linearizable() {
    assert_caught_as_non_linearizable(Bug::StaleRead);
}

/// The node core's request path acknowledges a put when it is proposed, before a quorum
/// has it: a leader that loses leadership then loses an acknowledged write.
#[test]
fn a_node_core_that_acknowledges_a_write_before_it_commits_is_caught() {
    assert_caught_as_non_linearizable(Bug::EarlyWriteAck);
}

fn assert_caught_as_non_linearizable(bug: Bug) {
    let seed = first_violation(bug).unwrap_or_else(|| panic!("{bug:?} is caught"));
    let mut options = SimOptions::new(seed);
    options.bug = Some(bug);
    let report = run(&options);
    assert!(
        report
            .violations
            .iter()
            .any(|v| v.contains("not linearizable")),
        "{:?}",
        report.violations
    );
    // Without the bug, the same seed passes: the violation is the bug's.
    let clean = run(&SimOptions::new(seed));
    assert!(clean.violations.is_empty(), "{:?}", clean.violations);
}
