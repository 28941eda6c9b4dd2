//! `nodedb-cluster start`: runs a node from its configuration file until it is stopped, its
//! `--run-for` ends, or a core fails (then it exits non-zero with the reason). With
//! `--join HOST:PORT`, a new node first joins the running cluster (`runtime::join`).

use std::net::SocketAddr;
use std::path::Path;
use std::process::ExitCode;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use nodedb_cluster::constants::LEADERSHIP_HANDOFF_BOUND;

use nodedb_cluster::runtime::config::LoadedConfig;
use nodedb_cluster::runtime::node::Node;

/// How often `start` checks that every core still runs.
const NODE_WATCH_INTERVAL: Duration = Duration::from_millis(100);

/// SIGTERM and SIGINT received so far.
static STOP_SIGNALS: AtomicU32 = AtomicU32::new(0);

extern "C" fn on_stop_signal(_: libc::c_int) {
    // An atomic increment is all a signal handler may safely do here.
    STOP_SIGNALS.fetch_add(1, Ordering::Relaxed);
}

/// SIGTERM and SIGINT count in `STOP_SIGNALS` instead of killing the process: the first
/// stops the node gracefully, a second one skips what is left of the leadership hand-off.
fn catch_stop_signals() -> std::io::Result<()> {
    for signal in [libc::SIGTERM, libc::SIGINT] {
        // SAFETY: a zeroed sigaction with a handler that only touches an atomic, installed
        // before any other thread could race on the disposition.
        let installed = unsafe {
            let mut action: libc::sigaction = std::mem::zeroed();
            action.sa_sigaction = on_stop_signal as *const () as libc::sighandler_t;
            action.sa_flags = libc::SA_RESTART;
            libc::sigemptyset(&mut action.sa_mask);
            libc::sigaction(signal, &action, std::ptr::null_mut())
        };
        if installed != 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}

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
    if let Err(e) = catch_stop_signals() {
        eprintln!("error: cannot handle SIGTERM/SIGINT: {e}");
        return ExitCode::FAILURE;
    }
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
    eprintln!("node {node_id} running");
    // The cores run on their own threads; this one watches for a core that stopped with
    // an error (a node that silently serves only some of its groups helps nobody: exit,
    // and let the supervisor restart it or the operator see why).
    let failure = loop {
        if let Some(failure) = node.failure() {
            break Some(failure);
        }
        let left = deadline.map(|d| d.saturating_duration_since(Instant::now()));
        if left == Some(Duration::ZERO) || STOP_SIGNALS.load(Ordering::Relaxed) > 0 {
            break None;
        }
        std::thread::park_timeout(left.map_or(NODE_WATCH_INTERVAL, |l| l.min(NODE_WATCH_INTERVAL)));
    };
    if failure.is_none() && STOP_SIGNALS.load(Ordering::Relaxed) > 0 {
        // A planned stop: the node's groups get new leaders now, not after an election
        // timeout with their clients waiting.
        eprintln!(
            "node {} stopping: handing leadership to other replicas (at most {} s; a second signal stops at once)",
            node_id,
            LEADERSHIP_HANDOFF_BOUND.as_secs()
        );
        let started = Instant::now();
        let (before, left) = node.hand_off_leadership(LEADERSHIP_HANDOFF_BOUND, || {
            STOP_SIGNALS.load(Ordering::Relaxed) > 1
        });
        eprintln!(
            "node {}: {} of its {} led group(s) no longer led here after {:.2} s (handed off, or stepped down with its peers gone), {} still led here; stopping",
            node_id,
            before - left.min(before),
            before,
            started.elapsed().as_secs_f64(),
            left
        );
    }
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
