//! `raft`: commit throughput and latency of one 3-replica group, ours over loopback QUIC
//! with fsync against raft-rs in memory with no I/O (the ceiling), in the same run.
//!
//! Ours: the embedded cluster of `demo` with one core per node and one group, closed-loop
//! writers over the KV client (mTLS, write-ahead logs, group commit); with `--processes`,
//! the same cluster as three node processes of the built binary. Ceiling: three of our
//! sans-IO Raft hosts in one thread, messages handed over directly and every persist batch
//! "durable" at once, with the same number of writes in flight. Floor (`floor.rs`): the
//! physical path of one commit on the same disk and loopback.

use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::rc::Rc;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use nodedb_cluster::constants::RAFT_TICK;
use nodedb_cluster::ids::{CoreAddress, GroupId, ReplicaId};
use nodedb_cluster::ids::{CoreId, NodeId};
use nodedb_cluster::metrics::stages::StageHistograms;
use nodedb_cluster::replication::kv::{KvCommand, KvStore};
use nodedb_cluster::replication::raft_host::{HostEvent, ProposalToken, RaftHost};
use nodedb_cluster::runtime::bench;
use nodedb_cluster::runtime::client::KvClient;
use nodedb_cluster::runtime::demo::{self, DemoConfig};
use nodedb_cluster::time::Time;

use crate::procs::{Processes, Shape};

pub struct CommitResult {
    pub commits_per_sec: f64,
    pub p50_us: u64,
    pub p99_us: u64,
    pub p999_us: u64,
    /// With `--stages`: where the writes' time went.
    pub stages: Option<StageHistograms>,
}

/// Ours: `concurrency` closed-loop writers for `seconds`; `stages` traces every write.
pub fn ours(concurrency: usize, seconds: f64, stages: bool) -> Result<CommitResult, String> {
    in_process(DemoConfig {
        concurrency,
        ..one_group(seconds, stages)
    })
}

/// The embedded cluster's shape here: three nodes of one core, one group, writes only.
fn one_group(seconds: f64, stages: bool) -> DemoConfig {
    DemoConfig {
        nodes: 3,
        cores: 1,
        groups: 1,
        duration: Duration::from_secs_f64(seconds),
        write_fraction: 1.0,
        stages: stages.then_some(1),
        ..DemoConfig::default()
    }
}

/// Runs the embedded cluster; its writes' figures, if none failed.
fn in_process(config: DemoConfig) -> Result<CommitResult, String> {
    result_of(demo::run(&config).map_err(|e| e.to_string())?)
}

/// The writes' figures of a demo run that had no failed write.
fn result_of(r: demo::DemoReport) -> Result<CommitResult, String> {
    if r.errors > 0 {
        return Err(format!("{} writes failed", r.errors));
    }
    Ok(CommitResult {
        commits_per_sec: r.writes_per_sec,
        p50_us: r.write_p50_us,
        p99_us: r.write_p99_us,
        p999_us: r.write_p999_us,
        stages: r.stages,
    })
}

/// Ours as three node processes of `binary` (files under `dir`): `concurrency` closed-loop
/// writers of 128-byte values for `seconds`, from a client in this process.
pub fn ours_processes(
    binary: &Path,
    dir: &Path,
    concurrency: usize,
    seconds: f64,
    stages: bool,
) -> Result<CommitResult, String> {
    on_processes(binary, dir, move |client| async move {
        closed_loop(&client, concurrency, seconds, stages).await
    })
}

/// Starts three node processes of `binary` (one core, one group; files under `dir`), runs
/// `load` with a client in this process, and stops them.
fn on_processes<F: Future<Output = Result<CommitResult, String>> + 'static>(
    binary: &Path,
    dir: &Path,
    load: impl FnOnce(Rc<KvClient>) -> F + Send + 'static,
) -> Result<CommitResult, String> {
    let shape = Shape {
        nodes: 3,
        cores: 1,
        groups: 1,
        extra: String::new(),
        metrics: false,
    };
    let cluster = Processes::start(binary, dir, &shape)?;
    let tls = cluster.client_tls(false)?;
    let outcome = bench::with_client(cluster.spec.clone(), tls, load);
    cluster.stop(outcome.is_ok());
    outcome
}

/// Ours, open loop: writes due every `1 / rate` seconds for `seconds`, each latency measured
/// from its due time (a stall counts for every write it delayed: no coordinated omission).
/// In this process, or, with `processes` (binary, dir), against three node processes.
pub fn ours_open_loop(
    processes: Option<(&Path, &Path)>,
    rate: u64,
    seconds: f64,
    stages: bool,
) -> Result<CommitResult, String> {
    let Some((binary, dir)) = processes else {
        return in_process(DemoConfig {
            concurrency: crate::migrate::OPEN_LOOP_WORKERS,
            rate: Some(rate as f64),
            ..one_group(seconds, stages)
        });
    };
    on_processes(binary, dir, move |client| async move {
        ready(&client, stages).await?;
        let length = Duration::from_secs_f64(seconds);
        let h = crate::migrate::write_window(&client, Some(rate), length, None, None).await?;
        Ok(from_client(&client, &h, seconds))
    })
}

/// Waits for the group to take a write (30 s at most); then, with `stages`, traces every
/// write from here on.
async fn ready(client: &Rc<KvClient>, stages: bool) -> Result<(), String> {
    let ready = Instant::now() + Duration::from_secs(30);
    while client.put(b"ready", b"1").await.is_err() {
        if Instant::now() > ready {
            return Err("the group took no write within 30 s".into());
        }
        glommio::timer::sleep(Duration::from_millis(50)).await;
    }
    if stages {
        client.sample_stages(1);
    }
    Ok(())
}

/// Waits for the group to take a write, then runs the writers.
async fn closed_loop(
    client: &Rc<KvClient>,
    concurrency: usize,
    seconds: f64,
    stages: bool,
) -> Result<CommitResult, String> {
    ready(client, stages).await?;
    let histogram = Rc::new(RefCell::new(
        Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("valid bounds"),
    ));
    let errors = Rc::new(Cell::new(0u64));
    let started = Instant::now();
    let deadline = started + Duration::from_secs_f64(seconds);
    let mut writers = Vec::new();
    for w in 0..concurrency as u64 {
        let (client, histogram, errors) = (client.clone(), histogram.clone(), errors.clone());
        writers.push(glommio::spawn_local(async move {
            let value = vec![0x42u8; 128];
            let mut n = 0u64;
            while Instant::now() < deadline {
                let key = format!("key-{}", (w * 7919 + n) % 10_000);
                n += 1;
                let t = Instant::now();
                match client.put(key.as_bytes(), &value).await {
                    Ok(()) => histogram
                        .borrow_mut()
                        .saturating_record(t.elapsed().as_micros() as u64),
                    Err(_) => errors.set(errors.get() + 1),
                }
            }
        }));
    }
    for w in writers {
        w.await;
    }
    let seconds = started.elapsed().as_secs_f64();
    if errors.get() > 0 {
        return Err(format!("{} writes failed", errors.get()));
    }
    Ok(from_client(client, &histogram.borrow(), seconds))
}

/// The figures of a load run from `client`: its latencies `h` over `seconds`, and its
/// stages if it traced them.
fn from_client(client: &KvClient, h: &Histogram<u64>, seconds: f64) -> CommitResult {
    CommitResult {
        commits_per_sec: h.len() as f64 / seconds,
        p50_us: h.value_at_quantile(0.5),
        p99_us: h.value_at_quantile(0.99),
        p999_us: h.value_at_quantile(0.999),
        stages: client.stage_histograms(),
    }
}

/// The ceiling: raft-rs through our host in memory, `in_flight` proposals outstanding.
pub fn in_memory(in_flight: usize, commits: u64) -> Result<CommitResult, String> {
    let group = GroupId(1);
    let address = |i: u64| CoreAddress {
        node: NodeId(i),
        core: CoreId(0),
    };
    let mut hosts: BTreeMap<u64, RaftHost<KvStore>> = BTreeMap::new();
    for i in 1..=3u64 {
        let mut host = RaftHost::new(address(i));
        for r in 1..=3 {
            host.set_address(ReplicaId(r), address(r));
        }
        let voters = [ReplicaId(1), ReplicaId(2), ReplicaId(3)];
        host.add_group(group, ReplicaId(i), &voters, None, KvStore::new())
            .map_err(|e| e.to_string())?;
        hosts.insert(i, host);
    }
    hosts
        .get_mut(&1)
        .expect("host 1")
        .campaign(group)
        .map_err(|e| e.to_string())?;
    let mut now = Time::ZERO;
    let mut started: HashMap<u64, Instant> = HashMap::new();
    let mut histogram = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("valid bounds");
    let (mut next, mut done) = (0u64, 0u64);
    let value = vec![0x42u8; 128];
    let mut begin = None;
    let deadline = Instant::now() + Duration::from_secs(60);
    while done < commits {
        if Instant::now() > deadline {
            return Err("the in-memory group stalled".into());
        }
        let leader = hosts
            .iter()
            .find(|(_, h)| h.is_leader(group))
            .map(|(i, _)| *i);
        if let Some(leader) = leader {
            begin.get_or_insert_with(Instant::now);
            while started.len() < in_flight && next < commits {
                let command = KvCommand::Put {
                    key: format!("k{}", next % 10_000).into_bytes(),
                    value: value.clone(),
                };
                let host = hosts.get_mut(&leader).expect("leader");
                if host
                    .propose(group, command.encode(), ProposalToken(next))
                    .is_err()
                {
                    break;
                }
                started.insert(next, Instant::now());
                next += 1;
            }
        } else {
            now += RAFT_TICK;
            for h in hosts.values_mut() {
                h.handle_tick(now);
            }
        }
        // Persist (instantly), collect messages and events, deliver.
        let mut messages = Vec::new();
        for (&node, host) in hosts.iter_mut() {
            while let Some(batch) = host.poll_persist() {
                host.handle_persisted(batch.id);
            }
            while let Some(out) = host.poll_transmit() {
                messages.push((NodeId(node), out));
            }
            while let Some(event) = host.poll_event() {
                if let HostEvent::Applied { token, .. } = event
                    && let Some(t) = started.remove(&token.0)
                {
                    histogram.saturating_record(t.elapsed().as_micros() as u64);
                    done += 1;
                }
            }
        }
        for (from, mut out) in messages {
            // A large snapshot leaves as a view; in memory it travels whole.
            if let Some(view) = out.view.take() {
                out.message.mut_snapshot().data = view.encode().into();
            }
            if let Some(host) = hosts.get_mut(&out.to.node.0) {
                let _ = host.handle_message(out.group, from, out.message);
            }
        }
    }
    let seconds = begin.map_or(1.0, |b| b.elapsed().as_secs_f64());
    Ok(CommitResult {
        commits_per_sec: done as f64 / seconds,
        p50_us: histogram.value_at_quantile(0.5),
        p99_us: histogram.value_at_quantile(0.99),
        p999_us: histogram.value_at_quantile(0.999),
        stages: None,
    })
}
