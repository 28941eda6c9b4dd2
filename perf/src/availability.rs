//! `availability`: how long each group answers nothing when a node is killed, paused or
//! restarted, measured on nodes that run as separate processes of the built binary.
//!
//! The nodes (`nodes` × `cores`, `groups` groups of three replicas, mTLS, write-ahead
//! logs, rebalancer off so that only the fault moves leaders) are started from files the
//! tool writes, as an operator would. One closed-loop writer per group writes a key of that
//! group and notes when each write is acknowledged. After every group has answered, and a
//! baseline, the faults run on the wall clock:
//!
//! - `kill`: node 2 gets SIGKILL and is started again `down` seconds later;
//! - `pause`: node 2 gets SIGSTOP and SIGCONT `down` seconds later;
//! - `rolling`: every node in turn is killed and started again at once, `every` seconds
//!   apart.
//!
//! A group's unavailability in a fault's window (from the fault until the next fault, or
//! the end of the run `settle` seconds after the last) is its longest stretch without an
//! acknowledged write — from the window's start to its first write, between writes, and
//! from its last write to the window's end. Reported per fault: the longest over groups
//! and the 99th percentile over groups (nearest rank).

use std::cell::RefCell;
use std::path::PathBuf;
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use nodedb_cluster::ids::GroupId;
use nodedb_cluster::runtime::client::KvClient;
use nodedb_cluster::runtime::executor::{CorePlacement, spawn_executor};
use nodedb_cluster::runtime::node::ClusterSpec;
use nodedb_cluster::runtime::tls::TlsMode;

use crate::procs::{Processes, Shape};

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Fault {
    Kill,
    Pause,
    Rolling,
}

pub struct Options {
    pub fault: Fault,
    pub nodes: u64,
    pub cores: u16,
    pub groups: u32,
    pub down: Duration,
    pub every: Duration,
    pub settle: Duration,
    pub binary: PathBuf,
    pub dir: PathBuf,
}

/// One fault and what the groups felt of it.
pub struct FaultResult {
    pub kind: &'static str,
    pub node: u64,
    /// Seconds from the end of the baseline.
    pub at_seconds: f64,
    pub max_unavailable_ms: f64,
    pub p99_unavailable_ms: f64,
    pub worst_group: u64,
}

pub struct AvailabilityResult {
    pub baseline_max_unavailable_ms: f64,
    pub faults: Vec<FaultResult>,
    pub writes_ok: u64,
    pub writes_failed: u64,
}

const BASELINE: Duration = Duration::from_secs(3);
const READY_WITHIN: Duration = Duration::from_secs(60);
/// The node every single-node fault hits (never the only metadata voter left: with three
/// or more nodes, the others keep a quorum).
const FAULTY: u64 = 2;

pub fn run(o: &Options) -> Result<AvailabilityResult, String> {
    let shape = Shape {
        nodes: o.nodes,
        cores: o.cores,
        groups: o.groups,
        extra: String::new(),
        metrics: false,
    };
    let mut cluster = Processes::start(&o.binary, &o.dir, &shape)?;
    let outcome = cluster
        .client_tls(false)
        .and_then(|tls| measure(o, cluster.spec.clone(), tls, &mut cluster));
    cluster.stop(outcome.is_ok());
    outcome
}

fn measure(
    o: &Options,
    spec: ClusterSpec,
    client_tls: TlsMode,
    nodes: &mut Processes,
) -> Result<AvailabilityResult, String> {
    let groups = o.groups;
    let (ready, stop) = (
        Arc::new(AtomicBool::new(false)),
        Arc::new(AtomicBool::new(false)),
    );
    let client = {
        let (ready, stop) = (ready.clone(), stop.clone());
        spawn_executor("availability", CorePlacement::Unbound, move || async move {
            write_until_stopped(spec, client_tls, groups, ready, stop).await
        })
        .map_err(|e| e.to_string())?
    };
    let deadline = Instant::now() + READY_WITHIN;
    while !ready.load(Ordering::Acquire) {
        if Instant::now() > deadline {
            stop.store(true, Ordering::Release);
            let reason = match client.join() {
                Ok(Err(e)) => e,
                _ => format!("not every group answered within {READY_WITHIN:?}"),
            };
            return Err(reason);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let base = Instant::now();
    std::thread::sleep(BASELINE);
    // (kind, node, start)
    let mut events: Vec<(&'static str, u64, Instant)> = Vec::new();
    match o.fault {
        Fault::Kill | Fault::Pause => {
            let at = Instant::now();
            if o.fault == Fault::Kill {
                events.push(("kill", FAULTY, at));
                nodes.kill(FAULTY);
                std::thread::sleep(o.down);
                nodes.restart(FAULTY)?;
            } else {
                events.push(("pause", FAULTY, at));
                nodes.signal(FAULTY, libc::SIGSTOP);
                std::thread::sleep(o.down);
                nodes.signal(FAULTY, libc::SIGCONT);
            }
        }
        Fault::Rolling => {
            for n in 1..=o.nodes {
                if n > 1 {
                    std::thread::sleep(o.every);
                }
                events.push(("restart", n, Instant::now()));
                nodes.restart(n)?;
            }
        }
    }
    std::thread::sleep(o.settle);
    let end = Instant::now();
    stop.store(true, Ordering::Release);
    let (acks, writes_ok, writes_failed) =
        client.join().map_err(|e| e.to_string()).and_then(|r| r)?;
    let mut faults = Vec::new();
    for (i, &(kind, node, at)) in events.iter().enumerate() {
        let until = events.get(i + 1).map_or(end, |e| e.2);
        let (max, p99, worst) = window(&acks, at, until);
        faults.push(FaultResult {
            kind,
            node,
            at_seconds: at.saturating_duration_since(base).as_secs_f64() - BASELINE.as_secs_f64(),
            max_unavailable_ms: max,
            p99_unavailable_ms: p99,
            worst_group: worst,
        });
    }
    let first = events.first().map_or(end, |e| e.2);
    let (baseline_max_unavailable_ms, _, _) = window(&acks, base, first);
    Ok(AvailabilityResult {
        baseline_max_unavailable_ms,
        faults,
        writes_ok,
        writes_failed,
    })
}

/// The longest stretch without an acknowledged write of each group within `[from, until)`:
/// the longest over groups, the 99th percentile over groups, and the worst group.
fn window(acks: &[Vec<Instant>], from: Instant, until: Instant) -> (f64, f64, u64) {
    let mut worst: Vec<(f64, u64)> = acks
        .iter()
        .enumerate()
        .map(|(g, times)| {
            let mut last = from;
            let mut longest = Duration::ZERO;
            for &t in times.iter().filter(|&&t| t >= from && t < until) {
                longest = longest.max(t - last);
                last = t;
            }
            longest = longest.max(until.saturating_duration_since(last));
            (longest.as_secs_f64() * 1e3, g as u64 + 1)
        })
        .collect();
    worst.sort_by(|a, b| a.0.total_cmp(&b.0));
    let Some(&(max, group)) = worst.last() else {
        return (0.0, 0.0, 0);
    };
    // Nearest rank: the smallest value at or above 99 % of the groups.
    let rank = (worst.len() * 99).div_ceil(100).max(1);
    (max, worst[rank - 1].0, group)
}

/// Acknowledgement times of every group's writes, writes acknowledged, writes failed.
type Acks = (Vec<Vec<Instant>>, u64, u64);

async fn write_until_stopped(
    spec: ClusterSpec,
    tls: TlsMode,
    groups: u32,
    ready: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
) -> Result<Acks, String> {
    let client = Rc::new(KvClient::new(spec, tls, 1452).map_err(|e| e.to_string())?);
    let acks: Rc<RefCell<Vec<Vec<Instant>>>> =
        Rc::new(RefCell::new(vec![Vec::new(); groups as usize]));
    let counts = Rc::new(RefCell::new((0u64, 0u64)));
    let mut writers = Vec::new();
    for g in 1..=u64::from(groups) {
        let key = (0..)
            .map(|i| format!("avail-{i}"))
            .find(|k| client.group_of(k.as_bytes()) == GroupId(g))
            .expect("every group has keys");
        let (client, acks, counts, stop) =
            (client.clone(), acks.clone(), counts.clone(), stop.clone());
        writers.push(glommio::spawn_local(async move {
            let mut i = 0u64;
            while !stop.load(Ordering::Acquire) {
                i += 1;
                let ok = client
                    .put(key.as_bytes(), i.to_string().as_bytes())
                    .await
                    .is_ok();
                let mut c = counts.borrow_mut();
                if ok {
                    c.0 += 1;
                    acks.borrow_mut()[(g - 1) as usize].push(Instant::now());
                } else {
                    c.1 += 1;
                }
            }
        }));
    }
    // Ready once every group has answered.
    while !stop.load(Ordering::Acquire) {
        if acks.borrow().iter().all(|a| !a.is_empty()) {
            ready.store(true, Ordering::Release);
            break;
        }
        glommio::timer::sleep(Duration::from_millis(10)).await;
    }
    for w in writers {
        w.await;
    }
    client.shutdown().await;
    let (ok, failed) = *counts.borrow();
    let acks = std::mem::take(&mut *acks.borrow_mut());
    Ok((acks, ok, failed))
}
