//! `nodedb-cluster start`: runs a node from its configuration file until it is stopped, its
//! `--run-for` ends, or a core fails (then it exits non-zero with the reason). With
//! `--join HOST:PORT`, a new node first joins the running cluster (`runtime::join`).

use std::net::SocketAddr;
use std::path::Path;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use nodedb_cluster::runtime::config::LoadedConfig;
use nodedb_cluster::runtime::node::Node;

/// How often `start` checks that every core still runs.
const NODE_WATCH_INTERVAL: Duration = Duration::from_millis(100);

/// Runs the node `path` describes; with `join`, first joins the cluster the node at that
/// address belongs to (`runtime::join`).
pub fn run(path: &Path, run_for: Option<f64>, join: Option<SocketAddr>) -> ExitCode {
    let node_config = match LoadedConfig::load(path).and_then(|c| c.node_config(path)) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    let node_config = match nodedb_cluster::runtime::join::prepare(node_config, join) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    let node_id = node_config.node;
    let node = match Node::start(node_config) {
        Ok(node) => node,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    let deadline = match run_for {
        Some(seconds) if seconds.is_finite() && seconds >= 0.0 => {
            Some(Instant::now() + Duration::from_secs_f64(seconds))
        }
        Some(_) => {
            eprintln!("error: --run-for must be a non-negative number of seconds");
            let _ = node.shutdown();
            return ExitCode::from(2);
        }
        None => None,
    };
    eprintln!("node {} running", node_id.0);
    // The cores run on their own threads; this one watches for a core that stopped with
    // an error (a node that silently serves only some of its groups helps nobody: exit,
    // and let the supervisor restart it or the operator see why).
    let failure = loop {
        if let Some(failure) = node.failure() {
            break Some(failure);
        }
        let left = deadline.map(|d| d.saturating_duration_since(Instant::now()));
        if left == Some(Duration::ZERO) {
            break None;
        }
        std::thread::park_timeout(left.map_or(NODE_WATCH_INTERVAL, |l| l.min(NODE_WATCH_INTERVAL)));
    };
    let stopped = node.shutdown();
    match (failure, stopped) {
        (Some(failure), _) => {
            eprintln!("error: {failure}; node stopped");
            ExitCode::FAILURE
        }
        (None, Err(e)) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
        (None, Ok(())) => ExitCode::SUCCESS,
    }
}
