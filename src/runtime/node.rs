//! A running node: one glommio loop per core, carrying a sans-IO [`NodeCore`]'s inputs and
//! outputs — QUIC, the write-ahead log, timers and metrics — and nothing else.
//!
//! Each turn of [`core_loop`] hands the core the time and whatever arrived (Raft batches,
//! snapshot chunks, client requests, mail from the node's other cores, answers to the
//! migration executor's requests), then carries out what it polls, in its order: log
//! writes (handed to the log task, `runtime::log_writer`, which makes them durable beside
//! the loop: one record and one fsync per batch, group commit), mail, answers, one Raft batch
//! per peer core and snapshot streams, the executor's requests. It then sleeps until the
//! core's next timeout or new input. Accept and receive tasks run beside the loop and hand
//! it work through a local queue. What the core decides — hosting, routing, the metadata
//! group, replica moves — is in `crate::node`, which the simulator drives too.

use std::cell::{Cell, RefCell};
use std::collections::{HashMap, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::panic::AssertUnwindSafe;
use std::path::PathBuf;
use std::rc::Rc;
use std::sync::Arc;

use futures_lite::{FutureExt, future};
use thiserror::Error;
use tracing::{debug, info, warn};

use crate::client::call::Failure;
pub use crate::cluster::spec::ClusterSpec;
use crate::cluster::spec::core_address;
use crate::cluster::vshard::fnv1a64;
use crate::constants::{
    CLIENT_CONNECTION_BUFFER_BYTES, CONNECTIONS_PER_IDENTITY_MAX, LEADERSHIP_HANDOFF_RETRY,
    NODE_LOOP_IDLE, REPLY_CHANNEL_CAPACITY, SLOW_LOOP_TURN, SNAPSHOT_CHUNKS_PER_TURN,
    SNAPSHOT_TRANSFER_TIMEOUT,
};
use crate::ids::{CoreAddress, CoreId, GroupId, NodeId, ReplicaId, Role};
use crate::metrics::cores::{CoreCounter, CoreGauge, CoreMetrics, NodeMetrics, RequestKind};
use crate::metrics::load_slots::{CoreLoadRecord, LoadSlots, SlotWriter};
use crate::node::load::CoreLoad;
use crate::node::{
    BalanceConfig, CoreConfig, CoreError, Garbage, LogWrite, Mail, NodeCore, OutgoingCall,
    Transmit, node_addresses,
};
use crate::replication::raft_host::SnapshotPolicy;
use crate::replication::snapshot_transfer::{SnapshotStream, TokenBucket};
use crate::runtime::client::KvClient;
use crate::runtime::clock::MonotonicClock;
use crate::runtime::cores::{CoreContext, CoreLayout, CoreRuntime, CoreRuntimeConfig};
use crate::runtime::datadir::{DataDir, DataDirError, Identity};
use crate::runtime::executor::RuntimeError;
use crate::runtime::log_writer::{LogDone, LogJob, LogWriter};
use crate::runtime::metrics_http::MetricsServer;
use crate::runtime::peers::{ClusterShape, PeerNodes, Peers, StreamClass, receive_peer_streams};
use crate::runtime::quic::{
    Connection, EndpointOptions, QuicEndpoint, RecvStream, SendStream, TransportError,
};
use crate::runtime::threads::{self, thread_cpu};
use crate::runtime::tls::{self, ALPN_CLIENT, ALPN_PEER, TlsMode};
use crate::runtime::wal::{WalFile, WalIoError};
use crate::time::Time;
use crate::wire::frame::{FrameDecoder, FrameKind, encode_frame};
use crate::wire::kv_rpc::{KvOp, KvReply, KvRequest, KvResponseFrame};

/// How to run one node.
#[derive(Clone)]
pub struct NodeConfig {
    pub node: NodeId,
    pub spec: ClusterSpec,
    pub data_dir: PathBuf,
    pub tls: TlsMode,
    pub layout: CoreLayout,
    /// Datagram size of the QUIC endpoints.
    pub mtu: u16,
    /// Snapshot send rate per core in bytes per second; `None` is unlimited
    /// (`constants::SNAPSHOT_RATE_BYTES_PER_SEC`, the default).
    pub snapshot_rate: Option<u64>,
    /// Where to serve Prometheus metrics over HTTP (`GET /metrics`); `None` serves none.
    pub metrics_addr: Option<SocketAddr>,
    /// The rebalancer: on or off, its interval and move limits.
    pub balance: BalanceConfig,
    /// Set when the node joined a running cluster (`start --join`): where its core 0
    /// listens, since `spec` (the nodes the cluster was bootstrapped with) does not list it.
    pub joined: Option<SocketAddr>,
    /// Idle groups quiesce: they stop ticking and heartbeating until something happens
    /// to them (`RaftHost::set_quiesce`). On by default.
    pub quiesce: bool,
}

impl NodeConfig {
    /// Where this node's core 0 listens (its core `i` on the port plus `i`).
    pub fn listen(&self) -> Option<SocketAddr> {
        self.joined
            .or_else(|| self.spec.address(self.node, CoreId(0)))
    }
}

/// One info line with who this node is and how it is set up: what an operator checks
/// first when a node behaves unlike its peers (a wrong file, a wrong data directory).
fn log_identity(config: &NodeConfig, cluster: u64) {
    let listen = config.listen().map(|a| a.to_string()).unwrap_or_default();
    let metrics = config
        .metrics_addr
        .map_or_else(|| "off".to_owned(), |a| a.to_string());
    let layout = match config.layout {
        CoreLayout::Pinned { first_cpu } => format!("pinned from cpu {first_cpu}"),
        CoreLayout::Unbound => "unbound".to_owned(),
    };
    let tls = if config.tls.is_insecure() {
        "insecure"
    } else {
        "mutual"
    };
    let rebalance = if config.balance.enabled {
        format!("every {} s", config.balance.interval.as_secs_f64())
    } else {
        "off".to_owned()
    };
    info!(
        node = %format_args!("n{}", config.node.0),
        cluster = %format_args!("{cluster:016x}"),
        cores = config.spec.cores,
        layout = %layout,
        listen = %listen,
        joined = config.joined.is_some(),
        // Absolute, as opened (the file may name it relative to where the node started).
        data_dir = %std::fs::canonicalize(&config.data_dir)
            .unwrap_or_else(|_| config.data_dir.clone())
            .display(),
        metrics = %metrics,
        tls = %tls,
        nodes = config.spec.nodes.len(),
        groups = config.spec.groups,
        replicas = config.spec.replicas,
        quiesce = config.quiesce,
        rebalance = %rebalance,
        "node starting"
    );
}

/// A node that could not start.
#[derive(Debug, Error)]
pub enum NodeError {
    #[error("node {0} is not in the cluster spec")]
    NotInSpec(NodeId),
    #[error("listen IP {0} is not a loopback or local address this build can bind")]
    BadAddress(IpAddr),
    #[error("metrics endpoint {addr}: {source}")]
    Metrics {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error(transparent)]
    Runtime(#[from] RuntimeError),
    #[error(transparent)]
    DataDir(#[from] DataDirError),
    #[error("the cluster CA: {0}")]
    Tls(#[from] tls::TlsError),
}

/// Why a core stopped.
#[derive(Debug, Error)]
enum CoreLoopError {
    #[error("its QUIC endpoint: {0}")]
    Transport(#[from] TransportError),
    #[error("its data directory {path}: {source}")]
    DataDir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("its write-ahead log: {0}")]
    Wal(#[from] WalIoError),
    #[error(transparent)]
    Core(#[from] CoreError),
    #[error("{0}")]
    Failed(String),
}

/// A running node; `shutdown` stops every core.
pub struct Node {
    runtime: CoreRuntime<()>,
    /// Set by `hand_off_leadership`: every core hands its leaderships away.
    leaving: Arc<std::sync::atomic::AtomicBool>,
    metrics: Arc<NodeMetrics>,
    http: Option<MetricsServer>,
    /// The first error a core stopped with, if any.
    failure: Arc<std::sync::Mutex<Option<String>>>,
    /// The locked data directory, released once every core has stopped.
    _data_dir: DataDir,
}

impl Node {
    pub fn start(config: NodeConfig) -> Result<Node, NodeError> {
        if config.listen().is_none() {
            return Err(NodeError::NotInSpec(config.node));
        }
        // Everything the node writes is its owner's alone: directories 0700, files 0600.
        // SAFETY: umask only sets the process's file-creation mask.
        unsafe { libc::umask(0o077) };
        let cluster = config.tls.cluster_id()?;
        let identity = Identity::of(cluster, config.node, &config.spec);
        // What every stream to a peer says of this cluster (and checks of the peer's).
        let shape = ClusterShape {
            cluster,
            groups: config.spec.groups,
        };
        let data_dir = DataDir::open(&config.data_dir, &identity)?;
        log_identity(&config, cluster);
        let (metrics, writers) = NodeMetrics::new(config.node, config.spec.cores);
        let metrics = Arc::new(metrics);
        let http = config
            .metrics_addr
            .map(|addr| {
                MetricsServer::start(addr, metrics.clone())
                    .map_err(|source| NodeError::Metrics { addr, source })
            })
            .transpose()?;
        let runtime_config = CoreRuntimeConfig {
            name: format!("node-{}", config.node.0),
            cores: config.spec.cores,
            layout: config.layout,
        };
        let config = Arc::new(config);
        let failure = Arc::new(std::sync::Mutex::new(None));
        // Each core takes its own load slot's writer when it starts.
        let writers: Arc<std::sync::Mutex<Vec<Option<SlotWriter>>>> = Arc::new(
            std::sync::Mutex::new(writers.into_iter().map(Some).collect()),
        );
        let leaving = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let shared = NodeShared {
            leaving: leaving.clone(),
            peer_nodes: Arc::new(PeerNodes::default()),
            reaper: Reaper::start(config.node),
            // One clock for the node's cores: a request taken by one core and served by
            // another is timed across both.
            clock: MonotonicClock::new(),
        };
        let runtime = CoreRuntime::start(&runtime_config, {
            let (metrics, failure) = (metrics.clone(), failure.clone());
            move |ctx: CoreContext<Mail<Reply>>| {
                let (config, metrics, failure) = (config.clone(), metrics.clone(), failure.clone());
                let shared = shared.clone();
                let core = ctx.core();
                let writer = writers
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .get_mut(usize::from(core.0))
                    .and_then(Option::take);
                async move {
                    // A panic is caught here, where the core's loop ends, so that it stops
                    // the node like any other failure instead of leaving a silent thread.
                    let run = AssertUnwindSafe(core_loop(
                        ctx,
                        config,
                        shape,
                        metrics.clone(),
                        writer,
                        shared,
                    ));
                    let reason = match run.catch_unwind().await {
                        Ok(Ok(())) => return,
                        Ok(Err(e)) => format!("core {} stopped: {e}", core.0),
                        Err(panic) => format!("core {} panicked: {}", core.0, panic_text(&*panic)),
                    };
                    tracing::error!(core = core.0, %reason, "core stopped");
                    metrics.core(core.0).set(CoreGauge::Failed, 1);
                    let mut first = failure.lock().unwrap_or_else(|p| p.into_inner());
                    first.get_or_insert(reason);
                }
            }
        })?;
        Ok(Node {
            runtime,
            leaving,
            metrics,
            http,
            failure,
            _data_dir: data_dir,
        })
    }

    /// The first error a core stopped with: the node no longer serves that core's groups
    /// and should be stopped (`nodedb-cluster start` exits on it).
    pub fn failure(&self) -> Option<String> {
        self.failure
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Each core's load as it last published it (every `LOAD_TICK`).
    pub fn load(&self) -> &Arc<LoadSlots> {
        self.metrics.load()
    }

    /// The node's per-core counters (also served at `metrics_addr`).
    pub fn metrics(&self) -> &Arc<NodeMetrics> {
        &self.metrics
    }

    /// Where the metrics endpoint listens, when one was configured.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.http.as_ref().map(MetricsServer::local_addr)
    }

    /// Before a planned stop: asks every core to hand leadership of its groups to other
    /// replicas (again every `LEADERSHIP_HANDOFF_RETRY` while some remain), and waits until
    /// the node leads no group or `bound` passes. Returns how many groups it led when asked
    /// and how many it still leads. The node keeps serving meanwhile; clients follow the
    /// new leaders without an election timeout's outage.
    /// `give_up()` ends the wait early (a second stop signal).
    pub fn hand_off_leadership(
        &self,
        bound: std::time::Duration,
        give_up: impl Fn() -> bool,
    ) -> (u64, u64) {
        let leading = || self.metrics.gauge_total(CoreGauge::LeaderGroups);
        let before = leading();
        self.leaving
            .store(true, std::sync::atomic::Ordering::Release);
        let deadline = std::time::Instant::now() + bound;
        // The gauges are published every loop turn (at least every `NODE_LOOP_IDLE`).
        while leading() > 0
            && std::time::Instant::now() < deadline
            && self.failure().is_none()
            && !give_up()
        {
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        (before, leading())
    }

    pub fn shutdown(self) -> Result<(), RuntimeError> {
        drop(self.http);
        self.runtime.shutdown().map(|_| ())
    }
}

/// The share of wall time the core's executor spends running tasks (its loop, QUIC, the
/// requests it serves) rather than sleeping, from glommio's own accounting.
struct BusyMeter {
    window_started: std::time::Instant,
}

impl BusyMeter {
    fn new() -> BusyMeter {
        // Start the first window clean.
        let _ = glommio::executor().executor_stats();
        BusyMeter {
            window_started: std::time::Instant::now(),
        }
    }

    /// Busy time over wall time since the last call, in `0.0..=1.0`, and that wall time.
    /// (glommio hands out the runtime since its previous call; only this meter asks.)
    fn fraction_since_last(&mut self) -> (f64, std::time::Duration) {
        let runtime = glommio::executor().executor_stats().executor_runtime();
        let now = std::time::Instant::now();
        let window = now - std::mem::replace(&mut self.window_started, now);
        if window.is_zero() {
            return (0.0, window);
        }
        let busy = (runtime.as_secs_f64() / window.as_secs_f64()).clamp(0.0, 1.0);
        (busy, window)
    }
}

/// Publishes a core's load to its slot (lock-free for the readers).
fn publish_load(slot: &mut SlotWriter, local: CoreAddress, load: &CoreLoad) {
    let previous = slot.generation();
    slot.publish(&CoreLoadRecord {
        node_id: local.node.0,
        core: u32::from(local.core.0),
        groups_led: load.groups_led,
        replicas: load.replicas,
        _reserved: 0,
        bytes_stored: load.bytes_stored,
        reads_per_sec: load.reads_per_sec,
        writes_per_sec: load.writes_per_sec,
        p95_latency_us: load.p95_latency_us,
        p99_latency_us: load.p99_latency_us,
        cpu_busy: load.busy,
        migration_bytes_per_sec: load.migration_bytes_per_sec,
        published_at_ns: load.at.as_nanos(),
        generation: previous + 1,
    });
}

/// Fault injection for tests of the failure path: a core whose number this environment
/// variable holds panics on its first turn. Never set it in production.
pub const INJECT_PANIC_VAR: &str = "NODEDB_INJECT_PANIC";

fn panic_injected(core: CoreId) -> bool {
    std::env::var(INJECT_PANIC_VAR)
        .ok()
        .and_then(|v| v.parse::<u16>().ok())
        == Some(core.0)
}

/// The message a panic carried, when it is text.
fn panic_text(payload: &(dyn std::any::Any + Send)) -> &str {
    payload
        .downcast_ref::<&str>()
        .copied()
        .or_else(|| payload.downcast_ref::<String>().map(String::as_str))
        .unwrap_or("(no message)")
}

/// Where a client's answer goes: the task serving its stream waits on the other end.
/// Where a core answers a client request: the channel to the request's connection task,
/// with when that task read the request and when a core loop took it (the queue stage of
/// a traced write, on the node's one clock).
#[derive(Debug)]
struct Reply {
    tx: async_channel::Sender<KvResponseFrame>,
    received: Time,
    taken: Time,
}

impl Reply {
    /// Sends the core's answer, with its queue stage if it carries timing.
    fn send(self, mut frame: KvResponseFrame) {
        if let Some(t) = frame.timing.as_mut() {
            t.queue_us = micros_between(self.received, self.taken);
        }
        let _ = self.tx.try_send(frame);
    }
}

fn micros_between(from: Time, to: Time) -> u32 {
    u32::try_from(to.saturating_since(from).as_micros()).unwrap_or(u32::MAX)
}

/// Work handed from the receive tasks to the core loop.
enum Work {
    /// A `RaftBatch` frame's payload from a peer core.
    RaftBatch(CoreAddress, Vec<u8>),
    /// A `BulkChunk` frame's payload: part of a snapshot.
    SnapshotChunk(CoreAddress, Vec<u8>),
    /// A `Ping` frame's payload: a failure-detector message.
    Liveness(CoreAddress, Vec<u8>),
    /// The snapshot of a group sent to a replica was streamed in full (or failed).
    SnapshotSent {
        group: GroupId,
        replica: ReplicaId,
        delivered: bool,
    },
    /// A client request, where to answer it, and its sender's role.
    Request(KvRequest, Reply, Role),
    Mail(Mail<Reply>),
    /// What came of one of the migration executor's requests.
    CallReply(u64, Result<KvReply, Failure>),
    /// What the log task, or a snapshot file writer it started, finished.
    Log(LogDone),
}

/// The local queue between the receive tasks and the loop.
#[derive(Default)]
struct Inbox {
    work: RefCell<VecDeque<Work>>,
    waker: RefCell<Option<std::task::Waker>>,
}

impl Inbox {
    fn push(&self, work: Work) {
        self.work.borrow_mut().push_back(work);
        if let Some(w) = self.waker.borrow_mut().take() {
            w.wake();
        }
    }

    /// This turn's work: everything queued, except snapshot chunks past the first
    /// `SNAPSHOT_CHUNKS_PER_TURN`, which wait, in order, for the next turns (which come at
    /// once). A move's bulk then yields to requests and Raft traffic: a turn that took
    /// every chunk queued took 20–40 ms.
    fn take_turn(&self) -> Vec<Work> {
        let mut queue = self.work.borrow_mut();
        let mut taken = Vec::with_capacity(queue.len());
        let mut later = VecDeque::new();
        let mut chunks = 0;
        for w in queue.drain(..) {
            if matches!(w, Work::SnapshotChunk(..)) {
                if chunks == SNAPSHOT_CHUNKS_PER_TURN {
                    later.push_back(w);
                    continue;
                }
                chunks += 1;
            }
            taken.push(w);
        }
        *queue = later;
        taken
    }

    /// Waits for work, or for `timeout` to pass.
    async fn wait(&self, timeout: std::time::Duration) {
        let ready = std::future::poll_fn(|cx| {
            if self.work.borrow().is_empty() {
                *self.waker.borrow_mut() = Some(cx.waker().clone());
                std::task::Poll::Pending
            } else {
                std::task::Poll::Ready(())
            }
        });
        future::or(ready, glommio::timer::sleep(timeout)).await;
    }
}

/// What a node's cores share.
#[derive(Clone)]
struct NodeShared {
    /// What any core hears of a peer process restarting, every core acts on.
    peer_nodes: Arc<PeerNodes>,
    reaper: Reaper,
    clock: MonotonicClock,
    /// Set when the node is about to stop: cores hand their leaderships away.
    leaving: Arc<std::sync::atomic::AtomicBool>,
}

async fn core_loop(
    ctx: CoreContext<Mail<Reply>>,
    config: Arc<NodeConfig>,
    shape: ClusterShape,
    node_metrics: Arc<NodeMetrics>,
    mut load_slot: Option<SlotWriter>,
    shared: NodeShared,
) -> Result<(), CoreLoopError> {
    let NodeShared {
        peer_nodes,
        reaper,
        clock,
        leaving,
    } = shared;
    // When the core last handed its leaderships away (the node is stopping).
    let mut handed_off: Option<std::time::Instant> = None;
    let ctx = Rc::new(ctx);
    let spec = &config.spec;
    let local = CoreAddress::new(config.node, ctx.core());
    let metrics = node_metrics.core(local.core.0);
    // Not known to be ready until the first count (`/ready`).
    metrics.set(CoreGauge::LeaderlessGroups, 1);
    let bind = config
        .listen()
        .and_then(|base| core_address(base, local.core))
        .ok_or_else(|| CoreLoopError::Failed("the node is not in the cluster spec".into()))?;
    let endpoint = QuicEndpoint::bind(EndpointOptions {
        bind,
        tls: config.tls.clone(),
        segmentation_offload: true,
        mtu: config.mtu,
        server: true,
    })?;
    std::fs::create_dir_all(&config.data_dir).map_err(|source| CoreLoopError::DataDir {
        path: config.data_dir.clone(),
        source,
    })?;
    let wal_path = config
        .data_dir
        .join(format!("node-{}-core-{}.wal", local.node.0, local.core.0));
    let (wal, recovered) = WalFile::open(&wal_path).await?;
    info!(node = local.node.0, core = local.core.0, %bind, records = recovered.records, "core started");
    let core_config = CoreConfig {
        local,
        spec: spec.clone(),
        audit: false,
        bug: None,
        balance: config.balance,
        incarnation: liveness_incarnation(),
        joined: config.joined.is_some(),
        snapshots: SnapshotPolicy::default(),
        quiesce: config.quiesce,
    };
    let mut node: NodeCore<Reply> = NodeCore::new(core_config, recovered.groups)?;

    let peers = Peers::new(endpoint.clone(), config.tls.clone(), local);
    peers.set_shape(shape);
    peers.set_peer_nodes(peer_nodes.clone());
    for &(node, base) in &spec.nodes {
        peer_nodes.learn_address(node, base);
    }
    // Nodes that joined since the spec was written: core 0 learns them from the metadata
    // group's topology, every core reaches them through `peer_nodes`.
    let mut topology_seen = None;
    // Any core may come to host a replica that talks to any core of another node (a moved
    // replica): every core of every node is a peer, connected on first use.
    for (peer_node, _) in &spec.nodes {
        for c in (0..spec.cores).map(CoreId) {
            let peer = CoreAddress::new(*peer_node, c);
            if peer != local
                && let Some(addr) = spec.address(peer.node, peer.core)
            {
                peers.add_peer(peer, addr);
            }
        }
    }
    let inbox = Rc::new(Inbox::default());
    let log = LogWriter::start(wal, {
        let inbox = inbox.clone();
        Rc::new(move |done| inbox.push(Work::Log(done)))
    });
    let bucket = Rc::new(RefCell::new(TokenBucket::new(config.snapshot_rate)));
    let accept = glommio::spawn_local(accept_loop(
        endpoint.clone(),
        inbox.clone(),
        shape,
        peers.clone(),
        Rc::new(RequestClock {
            clock,
            metrics: node_metrics.clone(),
            core: local.core.0,
        }),
    ));
    // Requests other cores of this node forwarded here, and core 0's tables.
    let mail = glommio::spawn_local({
        let (ctx, inbox) = (ctx.clone(), inbox.clone());
        async move {
            while let Some(mail) = ctx.recv().await {
                inbox.push(Work::Mail(mail));
            }
        }
    });
    // The migration executor's requests go out through a client of this core, made on
    // first use and authenticated with the node's certificate.
    let caller: Rc<RefCell<Option<Rc<KvClient>>>> = Rc::default();
    let inject_panic = panic_injected(local.core);
    let mut busy = BusyMeter::new();
    // Snapshot bytes this core streamed to peers (replica moves and catch-ups), for its
    // published load.
    let migrated: Rc<Cell<u64>> = Rc::default();
    if let Some(rebalancer) = node.rebalancer_metrics() {
        node_metrics.set_rebalancer(rebalancer.clone());
    }
    while !ctx.stopping() {
        metrics.add(CoreCounter::LoopTurns, 1);
        let now = clock.now();
        let sweeps = node.balancer_stats().map_or(0, |s| s.sweeps);
        let turn = std::time::Instant::now();
        let mut phases = TurnPhases::new(turn);
        node.handle_timeout(now);
        if leaving.load(std::sync::atomic::Ordering::Acquire)
            && node.leader_groups() > 0
            && handed_off.is_none_or(|t| t.elapsed() >= LEADERSHIP_HANDOFF_RETRY)
        {
            handed_off = Some(std::time::Instant::now());
            let started = node.hand_off_leaderships();
            info!(
                node = local.node.0,
                core = local.core.0,
                leading = node.leader_groups(),
                transfers = started,
                "stopping: handing leadership to other replicas"
            );
        }
        if node.balancer_stats().is_some_and(|s| s.sweeps > sweeps)
            && let Some(rebalancer) = node.rebalancer_metrics()
        {
            // The rebalancer swept during this timeout: its duration is the sweep's.
            rebalancer.set_last_duration(turn.elapsed());
        }
        if let Some(l) = node.liveness() {
            let up = |(peer, state)| (peer, state == crate::node::liveness::MemberState::Alive);
            node_metrics.set_peers(l.states().map(up));
        }
        if let Some((n, c)) = node.imbalance() {
            node_metrics.set_imbalance(n, c);
        } else if local.core == CoreId(0) {
            node_metrics.set_imbalance(0.0, 0.0);
        }
        if inject_panic {
            panic!("injected by {INJECT_PANIC_VAR}");
        }
        let work = inbox.take_turn();
        phases.work_items = work.len();
        for w in work {
            if let Work::SnapshotChunk(_, chunk) = &w {
                phases.chunk_bytes += chunk.len();
            }
            match w {
                Work::Log(done) => {
                    // A blocking log write held the core like a turn of its own.
                    if let LogDone::Persisted {
                        blocked,
                        checkpoints,
                        durable,
                        ..
                    } = &done
                    {
                        if let Some(took) = durable {
                            metrics.wal_write.observe(*took);
                        }
                        if !blocked.is_zero() {
                            metrics.loop_turns.observe(*blocked);
                        }
                        if *checkpoints > 0 {
                            metrics.add(CoreCounter::WalCheckpoints, *checkpoints);
                        }
                    }
                    if matches!(
                        done,
                        LogDone::CompactionWritten { .. }
                            | LogDone::WrittenAhead { .. }
                            | LogDone::WriteAheadAbandoned { .. }
                    ) {
                        metrics.add(CoreCounter::SnapshotFilesFinished, 1);
                    }
                    take_log_report(&mut node, &log, now, done)?
                }
                w => feed(&mut node, now, w),
            }
        }
        if let Some(topology) = node.metadata().map(|m| m.topology())
            && topology_seen != Some(topology.version())
        {
            topology_seen = Some(topology.version());
            for (n, base) in node_addresses(topology) {
                if n != local.node {
                    peer_nodes.learn_address(n, base);
                }
            }
        }
        phases.mark(Phase::Work);
        // Handed to the log task: the loop does not wait for the write.
        while let Some(write) = node.poll_log() {
            let files = match &write {
                LogWrite::SnapshotFile(_) | LogWrite::SnapshotFileBegin { .. } => 1,
                LogWrite::Persist(batch) => batch.compactions.len() as u64,
                _ => 0,
            };
            if files > 0 {
                metrics.add(CoreCounter::SnapshotFilesStarted, files);
            }
            log.submit(match write {
                LogWrite::Drop(group) => LogJob::Drop(group),
                LogWrite::SnapshotFile(received) => LogJob::WriteAhead(received),
                LogWrite::Persist(batch) => LogJob::Persist(batch),
                LogWrite::SnapshotFileBegin {
                    group,
                    index,
                    term,
                    bytes,
                } => LogJob::StreamBegin {
                    group,
                    index,
                    term,
                    bytes,
                },
                LogWrite::SnapshotFilePiece {
                    group,
                    index,
                    piece,
                } => LogJob::StreamPiece {
                    group,
                    index,
                    piece,
                },
                LogWrite::SnapshotFileEnd { group, index } => LogJob::StreamEnd { group, index },
                LogWrite::SnapshotFileAbandon { group, index, term } => {
                    LogJob::StreamAbandon { group, index, term }
                }
            });
        }
        while let Some(garbage) = node.poll_garbage() {
            reaper.free(garbage);
        }
        phases.mark(Phase::Log);
        if let Some(reason) = node.failure() {
            return Err(CoreLoopError::Failed(reason.to_owned()));
        }
        while let Some((core, mail)) = node.poll_mail() {
            // A full inbox hands the mail back: a request is answered busy, a table is
            // handed out again next turn.
            if let Err((e, mail)) = ctx.try_send(core, mail) {
                debug!(core = core.0, error = %e, "mail refused");
                node.handle_mail_refused(core, mail);
            }
        }
        while let Some((reply, frame)) = node.poll_reply() {
            reply.send(frame);
        }
        while let Some(transmit) = node.poll_transmit() {
            match transmit {
                Transmit::Raft { to, payload } => {
                    if let Err(e) = peers.queue(to, FrameKind::RaftBatch, &payload) {
                        debug!(peer = %to, error = %e, "raft batch not queued");
                    }
                }
                Transmit::Liveness { to, payload } => {
                    if let Err(e) = peers.queue(to, FrameKind::Ping, &payload) {
                        debug!(peer = %to, error = %e, "liveness message not queued");
                    }
                }
                // Snapshot data goes out of band, on a throttled bulk stream.
                Transmit::Snapshot {
                    to,
                    group,
                    replica,
                    stream,
                } => {
                    let send = send_snapshot(
                        peers.clone(),
                        to,
                        stream,
                        bucket.clone(),
                        clock,
                        migrated.clone(),
                        (node_metrics.clone(), local.core.0),
                    );
                    let inbox = inbox.clone();
                    glommio::spawn_local(async move {
                        let delivered = send.await;
                        inbox.push(Work::SnapshotSent {
                            group,
                            replica,
                            delivered,
                        });
                    })
                    .detach();
                }
            }
        }
        while let Some(call) = node.poll_call() {
            glommio::spawn_local(send_call(
                call,
                caller.clone(),
                config.clone(),
                inbox.clone(),
                peer_nodes.clone(),
            ))
            .detach();
        }
        phases.mark(Phase::Transmit);
        for (peer, e) in peers.flush().await {
            debug!(%peer, error = %e, "raft batch not sent");
        }
        phases.mark(Phase::Flush);
        publish(&node, metrics, &endpoint);
        let load = node.poll_load();
        if load.is_some() {
            // Counted by the load tick's walk over the core's groups.
            let counts = node.load_tick_counts();
            metrics.set(CoreGauge::QuiescedGroups, counts.quiesced as u64);
            metrics.set(CoreGauge::LeaderlessGroups, counts.leaderless as u64);
            metrics.set(CoreGauge::ApplyLagMax, counts.apply_lag_max);
            metrics.set(CoreGauge::FollowerLagMax, counts.follower_lag_max);
        }
        if let Some(load) = load
            && let Some(slot) = load_slot.as_mut()
        {
            let (busy, window) = busy.fraction_since_last();
            let sent = migrated.take();
            let migration = sent as f64 / window.as_secs_f64().max(1e-3);
            let mut load = load;
            load.busy = busy;
            load.migration_bytes_per_sec = migration;
            publish_load(slot, local, &load);
            node.handle_load(load);
        }
        let idle = node.poll_timeout().map_or(NODE_LOOP_IDLE, |t| {
            t.saturating_since(clock.now()).min(NODE_LOOP_IDLE)
        });
        let took = turn.elapsed();
        metrics.loop_turns.observe(took);
        metrics
            .loop_turn_cpu
            .observe(thread_cpu().saturating_sub(phases.cpu));
        phases.report(took, local);
        inbox.wait(idle).await;
    }
    node.shutdown();
    while let Some((reply, frame)) = node.poll_reply() {
        reply.send(frame);
    }
    publish(&node, metrics, &endpoint);
    metrics.set(CoreGauge::LeaderGroups, 0);
    drop(accept);
    drop(mail);
    endpoint.shutdown().await;
    log.close().await?;
    Ok(())
}

/// Frees what the node's cores discard (a removed replica's vShard, the state a snapshot
/// replaced) on a thread of its own, at the background priority (`threads`): freeing 512 MiB
/// of small allocations took a core 37 ms. Where the thread cannot be started, cores free it
/// themselves.
#[derive(Clone)]
struct Reaper(Option<std::sync::mpsc::Sender<Garbage>>);

impl Reaper {
    fn start(node: NodeId) -> Reaper {
        let (tx, rx) = std::sync::mpsc::channel::<Garbage>();
        let spawned = std::thread::Builder::new()
            .name(format!("node-{}-reaper", node.0))
            // Ends when every core has dropped its sender.
            .spawn(move || {
                threads::lower_this_thread();
                rx.into_iter().for_each(drop)
            });
        match spawned {
            Ok(_) => Reaper(Some(tx)),
            Err(e) => {
                warn!(error = %e, "no reaper thread: cores free discarded vShards themselves");
                Reaper(None)
            }
        }
    }

    fn free(&self, garbage: Garbage) {
        if let Some(tx) = &self.0 {
            // A reaper gone (it never panics) hands it back: freed here.
            let _ = tx.send(garbage);
        }
    }
}

/// Where a core-loop turn spent its time, reported (at debug level) when the turn took
/// longer than `SLOW_LOOP_TURN`: the first thing to ask of a tail is which core stalled,
/// the next is on what.
struct TurnPhases {
    started: std::time::Instant,
    last: std::time::Instant,
    took: [std::time::Duration; 4],
    work_items: usize,
    chunk_bytes: usize,
    /// The thread's CPU time at the start (`loop_turn_cpu`): a turn much longer than its
    /// CPU time was preempted, not busy. The price: two `clock_gettime` system calls per
    /// turn, 0.53 µs each on the development VM (about 0.5 % of a core at 5 000 turns a
    /// second). Sampling, or the thread clock through `perf_event` without a system call,
    /// would make it cheaper.
    cpu: std::time::Duration,
}

#[derive(Clone, Copy)]
enum Phase {
    /// Timers and the inbox's work (Raft batches, requests, chunks).
    Work,
    /// Log writes handed out (and the Raft ready that makes them).
    Log,
    /// Mail, answers, Raft batches queued, snapshot streams and calls started.
    Transmit,
    /// The QUIC flush.
    Flush,
}

impl TurnPhases {
    fn new(started: std::time::Instant) -> TurnPhases {
        TurnPhases {
            cpu: thread_cpu(),
            started,
            last: started,
            took: Default::default(),
            work_items: 0,
            chunk_bytes: 0,
        }
    }

    fn mark(&mut self, phase: Phase) {
        let now = std::time::Instant::now();
        self.took[phase as usize] = now - self.last;
        self.last = now;
    }

    fn report(&self, took: std::time::Duration, at: CoreAddress) {
        if took < SLOW_LOOP_TURN {
            return;
        }
        let us = |d: std::time::Duration| d.as_micros() as u64;
        debug!(
            node = at.node.0,
            core = at.core.0,
            took_us = us(took),
            cpu_us = us(thread_cpu().saturating_sub(self.cpu)),
            work_us = us(self.took[Phase::Work as usize]),
            log_us = us(self.took[Phase::Log as usize]),
            transmit_us = us(self.took[Phase::Transmit as usize]),
            flush_us = us(self.took[Phase::Flush as usize]),
            rest_us = us(took.saturating_sub(self.last - self.started)),
            work_items = self.work_items,
            chunk_bytes = self.chunk_bytes,
            "slow core loop turn"
        );
    }
}

/// Hands one piece of work to the core.
fn feed(node: &mut NodeCore<Reply>, now: Time, work: Work) {
    match work {
        Work::RaftBatch(peer, payload) => {
            if let Err(e) = node.handle_raft_batch(now, peer.node, &payload) {
                warn!(%peer, error = %e, "malformed raft batch dropped");
            }
        }
        Work::SnapshotChunk(peer, payload) => {
            if let Err(e) = node.handle_snapshot_chunk(now, peer.node, payload.into()) {
                warn!(%peer, error = %e, "snapshot chunk refused");
            }
        }
        Work::Liveness(peer, payload) => {
            if let Err(e) = node.handle_liveness(now, peer.node, &payload) {
                warn!(%peer, error = %e, "malformed liveness message dropped");
            }
        }
        Work::SnapshotSent {
            group,
            replica,
            delivered,
        } => node.handle_snapshot_sent(group, replica, delivered),
        Work::Request(request, mut reply, role) => {
            reply.taken = now;
            node.handle_request(now, request, reply, role)
        }
        Work::Mail(mut mail) => {
            // A request another core took first counts as taken here (its queue stage
            // includes the hop between the cores).
            if let Mail::Request { reply, .. } = &mut mail {
                reply.taken = now;
            }
            node.handle_mail(now, mail)
        }
        Work::CallReply(id, result) => node.handle_call_reply(now, id, result),
        // The loop takes these itself (they need the log).
        Work::Log(_) => {}
    }
}

/// The failure detector's incarnation for this process: wall-clock milliseconds at its
/// start, so a restarted node outranks what was said of its earlier process (a clock set
/// back across a restart is refuted the usual way, one increment at a time).
fn liveness_incarnation() -> u64 {
    static START: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    *START.get_or_init(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64)
    })
}

/// Mirrors the core's counters and gauges, and the transport's, into the node's metrics.
fn publish(node: &NodeCore<Reply>, metrics: &CoreMetrics, endpoint: &QuicEndpoint) {
    for counter in CoreCounter::ALL
        .into_iter()
        .filter(|c| !c.counted_by_shell())
    {
        metrics.mirror(counter, node.counter(counter));
    }
    metrics.raft_commit.mirror(node.commit_latency());
    metrics.set(CoreGauge::PendingRequests, node.pending_requests() as u64);
    metrics.set(CoreGauge::LeaderGroups, node.leader_groups() as u64);
    metrics.set(CoreGauge::Replicas, node.replicas() as u64);
    if let Some(l) = node.liveness() {
        let [alive, suspect, dead] = l.counts();
        metrics.set(CoreGauge::MembersAlive, alive as u64);
        metrics.set(CoreGauge::MembersSuspect, suspect as u64);
        metrics.set(CoreGauge::MembersDead, dead as u64);
        let ns = |d: std::time::Duration| d.as_nanos() as u64;
        metrics.set(CoreGauge::ProbeRttNanos, l.stats.last_rtt.map_or(0, ns));
        metrics.set(CoreGauge::ProbeRttMaxNanos, ns(l.stats.max_rtt));
    }
    let quic = endpoint.stats();
    metrics.mirror(CoreCounter::QuicDatagramsSent, quic.datagrams_sent);
    metrics.mirror(CoreCounter::QuicSendCalls, quic.send_calls);
    metrics.mirror(CoreCounter::QuicDatagramsReceived, quic.datagrams_received);
    metrics.mirror(CoreCounter::QuicSendWouldBlock, quic.send_would_block);
    metrics.mirror(CoreCounter::TlsHandshakesRefused, quic.handshakes_refused);
    metrics.set(CoreGauge::QuicGsoActive, u64::from(quic.gso_active));
}

/// Sends one of the migration executor's requests and hands its outcome to the loop.
async fn send_call(
    call: OutgoingCall,
    caller: Rc<RefCell<Option<Rc<KvClient>>>>,
    config: Arc<NodeConfig>,
    inbox: Rc<Inbox>,
    peer_nodes: Arc<PeerNodes>,
) {
    let client = caller.borrow().clone();
    let client = match client {
        Some(c) => c,
        None => match KvClient::new(config.spec.clone(), config.tls.clone(), config.mtu) {
            Ok(c) => {
                let c = Rc::new(c);
                *caller.borrow_mut() = Some(c.clone());
                c
            }
            Err(e) => {
                let failure = Failure::NotSent(format!("no client: {e}"));
                inbox.push(Work::CallReply(call.request.id, Err(failure)));
                return;
            }
        },
    };
    if let Some(base) = peer_nodes.address(call.to.node) {
        client.learn_addresses(&[(call.to.node, base)]);
    }
    let result = client.exchange(call.to, &call.request).await;
    inbox.push(Work::CallReply(call.request.id, result));
}

/// Takes a report of the log task: a durable batch goes to the core; a file written in
/// the background is recorded in the log (in the order of the core's writes); a failed
/// log stops the core.
fn take_log_report(
    node: &mut NodeCore<Reply>,
    log: &LogWriter,
    now: Time,
    done: LogDone,
) -> Result<(), CoreLoopError> {
    match done {
        LogDone::Persisted { id, .. } => node.handle_persisted(now, id),
        LogDone::CompactionWritten {
            group,
            snapshot,
            result,
        } => log.submit(LogJob::RecordCompaction {
            group,
            snapshot,
            file: result?,
        }),
        LogDone::WrittenAhead {
            group,
            index,
            term,
            result,
        } => {
            let written = match result {
                Ok(file) => {
                    log.submit(LogJob::Adopt {
                        group,
                        index,
                        term,
                        file,
                    });
                    true
                }
                Err(e) => {
                    warn!(group = group.0, index, error = %e, "a received snapshot could not be written; the leader will send it again");
                    log.submit(LogJob::Abandon { group, index, term });
                    false
                }
            };
            node.handle_snapshot_file_written(now, group, index, written);
        }
        LogDone::WriteAheadAbandoned { group, index } => {
            node.handle_snapshot_file_written(now, group, index, false)
        }
        LogDone::Failed(e) => return Err(e.into()),
    }
    Ok(())
}

/// Sends snapshot data on a bulk stream, chunk by chunk, within the core's rate limit.
/// Returns whether all of it was written and the stream finished (the core is told either
/// way). A stream that makes no progress for `SNAPSHOT_TRANSFER_TIMEOUT` (a peer that
/// stopped reading) counts as failed, so raft-rs sends again rather than waiting forever.
async fn send_snapshot(
    peers: Peers,
    peer: CoreAddress,
    snapshot: SnapshotStream,
    bucket: Rc<RefCell<TokenBucket>>,
    clock: MonotonicClock,
    migrated: Rc<Cell<u64>>,
    (metrics, core): (Arc<NodeMetrics>, u16),
) -> bool {
    let opened = glommio::timer::timeout(SNAPSHOT_TRANSFER_TIMEOUT, async {
        Ok(peers.open_bulk(peer).await)
    })
    .await;
    let mut stream = match opened {
        Ok(Ok(stream)) => stream,
        Ok(Err(e)) => {
            debug!(%peer, error = %e, "snapshot not sent; the leader will send it again");
            return false;
        }
        Err(_) => {
            debug!(%peer, "no bulk stream in time; the leader will send the snapshot again");
            return false;
        }
    };
    let (started, bytes) = (std::time::Instant::now(), snapshot.data_bytes());
    debug!(%peer, bytes, "snapshot stream opened");
    // Each chunk is cut from the snapshot only when its turn comes.
    for chunk in snapshot.chunks() {
        // The chunk's tokens are taken (owed) either way: wait until they are paid, then
        // send. Taking them again after the wait, as this once did, owed them again on
        // every call, and a snapshot larger than the burst never went out at all.
        let owed = bucket.borrow_mut().take(clock.now(), chunk.len() as u64);
        if let Err(wait) = owed {
            glommio::timer::sleep(wait).await;
        }
        let mut frame = Vec::with_capacity(chunk.len() + 16);
        if encode_frame(FrameKind::BulkChunk, 0, &chunk, &mut frame).is_err() {
            return false;
        }
        let written = glommio::timer::timeout(SNAPSHOT_TRANSFER_TIMEOUT, async {
            Ok(stream.write_all(&frame).await)
        })
        .await;
        if !matches!(written, Ok(Ok(()))) {
            debug!(%peer, "snapshot stream failed; the leader will send it again");
            return false;
        }
        migrated.set(migrated.get() + chunk.len() as u64);
        // Counted as it goes, so a sampler sees the stream's pace (benchmarks measure the
        // throttle with it).
        metrics
            .core(core)
            .add(CoreCounter::SnapshotBytesSent, chunk.len() as u64);
        // A write the stream's buffer takes at once does not suspend: without this, a
        // burst's worth of chunks (cut, framed and written) held the core for 30 ms.
        future::yield_now().await;
    }
    debug!(%peer, bytes, took_us = started.elapsed().as_micros() as u64, "snapshot stream written");
    stream.finish().is_ok()
}

/// Accepts connections: peers' streams carry Raft batches and snapshot chunks, clients'
/// streams requests.
/// What a client request's task times itself with: the clock, and the core's request
/// latency histograms (`CoreMetrics::requests`). Shared by the core's request tasks through
/// an `Rc`: cloning the `Arc` of the node's metrics per request would bounce its count's
/// cache line between the cores.
#[derive(Clone)]
struct RequestClock {
    clock: MonotonicClock,
    metrics: Arc<NodeMetrics>,
    core: u16,
}

impl RequestClock {
    fn kind(op: &KvOp) -> RequestKind {
        match op {
            KvOp::Get { .. } | KvOp::Scan { .. } => RequestKind::Read,
            KvOp::Write { .. } => RequestKind::Write,
            _ => RequestKind::Admin,
        }
    }

    fn observe(&self, kind: RequestKind, since: Time) {
        let took = self.clock.now().saturating_since(since);
        self.metrics.core(self.core).requests[kind as usize].observe(took);
    }
}

async fn accept_loop(
    endpoint: QuicEndpoint,
    inbox: Rc<Inbox>,
    shape: ClusterShape,
    peers: Peers,
    timing: Rc<RequestClock>,
) {
    let per_identity: Rc<RefCell<HashMap<u64, usize>>> = Rc::default();
    while let Some(conn) = endpoint.accept().await {
        let (inbox, peers) = (inbox.clone(), peers.clone());
        // One certificate holds at most `CONNECTIONS_PER_IDENTITY_MAX` connections here,
        // so one leaked or hostile key cannot take the endpoint's whole connection budget.
        // (The insecure mode has no certificates to count.)
        let identity = conn.peer_certificates().first().map(|c| fnv1a64(c));
        let held = identity.map_or(0, |i| *per_identity.borrow().get(&i).unwrap_or(&0));
        if held >= CONNECTIONS_PER_IDENTITY_MAX {
            warn!(remote = %conn.remote_address(), held, "connection refused: too many for one certificate");
            conn.close(4, b"too many connections for this certificate");
            continue;
        }
        let release = identity.map(|identity| {
            *per_identity.borrow_mut().entry(identity).or_default() += 1;
            IdentitySlot {
                counts: per_identity.clone(),
                identity,
            }
        });
        match conn.alpn().as_deref() {
            Some(ALPN_PEER) => {
                glommio::spawn_local(async move {
                    let _release = release;
                    let on_hello = move |peer, incarnation| peers.heard_from(peer, incarnation);
                    receive_peer_streams(conn, shape, on_hello, move |peer, class, frame| match (class, frame.kind) {
                        (StreamClass::Control, FrameKind::RaftBatch) => {
                            inbox.push(Work::RaftBatch(peer, frame.payload))
                        }
                        (StreamClass::Control, FrameKind::Ping) => {
                            inbox.push(Work::Liveness(peer, frame.payload))
                        }
                        (StreamClass::Bulk, FrameKind::BulkChunk) => {
                            inbox.push(Work::SnapshotChunk(peer, frame.payload))
                        }
                        _ => debug!(%peer, kind = ?frame.kind, "unexpected frame on a peer stream"),
                    })
                    .await
                })
                .detach();
            }
            Some(ALPN_CLIENT) => {
                let timing = timing.clone();
                glommio::spawn_local(async move {
                    let _release = release;
                    serve_client(conn, inbox, timing).await
                })
                .detach();
            }
            _ => conn.close(2, b"unknown ALPN"),
        }
    }
}

/// A connection's place in its certificate's count, given back when it ends.
struct IdentitySlot {
    counts: Rc<RefCell<HashMap<u64, usize>>>,
    identity: u64,
}

impl Drop for IdentitySlot {
    fn drop(&mut self) {
        let mut counts = self.counts.borrow_mut();
        if let Some(n) = counts.get_mut(&self.identity) {
            *n -= 1;
            if *n == 0 {
                counts.remove(&self.identity);
            }
        }
    }
}

/// Serves a client connection's requests with the role its certificate carries (in the
/// insecure mode, which authenticates nobody, everyone is an admin).
async fn serve_client(conn: Connection, inbox: Rc<Inbox>, timing: Rc<RequestClock>) {
    let role = match tls::role_of(&conn.peer_certificates()) {
        Ok(role) => role.unwrap_or(Role::Admin),
        Err(e) => {
            warn!(remote = %conn.remote_address(), error = %e, "client connection refused");
            conn.close(3, e.to_string().as_bytes());
            return;
        }
    };
    // Bytes held in partial requests across the connection's streams, bounded.
    let buffered = Rc::new(Cell::new(0usize));
    while let Ok((send, recv)) = conn.accept_bi().await {
        glommio::spawn_local(serve_request(
            send,
            recv,
            inbox.clone(),
            role,
            buffered.clone(),
            timing.clone(),
        ))
        .detach();
    }
}

/// A stream's share of its connection's buffered bytes, given back when it ends.
struct Buffered {
    total: Rc<Cell<usize>>,
    mine: usize,
}

impl Buffered {
    /// Counts `n` more bytes; false once the connection holds more than it may.
    fn add(&mut self, n: usize) -> bool {
        self.mine += n;
        self.total.set(self.total.get() + n);
        self.total.get() <= CLIENT_CONNECTION_BUFFER_BYTES
    }
}

impl Drop for Buffered {
    fn drop(&mut self) {
        self.total.set(self.total.get() - self.mine);
    }
}

/// QUIC application error code a server stops a request stream with after answering it
/// with an error (malformed, oversized, over the connection's budget).
const STREAM_REFUSED: u32 = 1;

/// One request per stream: a request frame in, a response frame out. A malformed or
/// oversized request, or one past the connection's buffer budget, is answered with an
/// error frame (id 0: its id is unknown) and the rest of the stream refused.
async fn serve_request(
    mut send: SendStream,
    mut recv: RecvStream,
    inbox: Rc<Inbox>,
    role: Role,
    buffered: Rc<Cell<usize>>,
    timing: Rc<RequestClock>,
) {
    let clock = timing.clock;
    let mut budget = Buffered {
        total: buffered,
        mine: 0,
    };
    let mut decoder = FrameDecoder::new();
    let mut request = None;
    let mut frames = 0;
    let refusal = loop {
        match recv.read_chunk(usize::MAX).await {
            Ok(Some(chunk)) => {
                if !budget.add(chunk.len()) {
                    break Some(format!(
                        "the connection holds more than {CLIENT_CONNECTION_BUFFER_BYTES} bytes of unfinished requests"
                    ));
                }
                if let Err(e) = decoder.decode(&chunk, |f| {
                    frames += 1;
                    request.get_or_insert(f);
                }) {
                    break Some(format!("malformed request frame: {e}"));
                }
                // One request per stream, read to the stream's end (which frees the
                // stream for the connection's stream count).
                if frames > 1 {
                    break Some("one request per stream".into());
                }
            }
            Ok(None) if request.is_none() => {
                break Some("the stream ended before a whole request frame".into());
            }
            Ok(None) => break None,
            Err(_) => return,
        }
    };
    drop(decoder);
    let reply = match (refusal, request.map(|f| KvRequest::decode(&f.payload))) {
        (Some(why), _) => {
            recv.stop(STREAM_REFUSED);
            KvResponseFrame::new(0, KvReply::Error(why))
        }
        (None, Some(Ok(request))) => {
            drop(budget);
            let (tx, rx) = async_channel::bounded(REPLY_CHANNEL_CAPACITY);
            let received = clock.now();
            let kind = RequestClock::kind(&request.op);
            let reply = Reply {
                tx,
                received,
                taken: received,
            };
            inbox.push(Work::Request(request, reply, role));
            match rx.recv().await {
                Ok(mut reply) => {
                    timing.observe(kind, received);
                    if let Some(t) = reply.timing.as_mut() {
                        // The rest of the server's time, up to the response's write.
                        t.total_us = micros_between(received, clock.now());
                        let core = [
                            t.queue_us,
                            t.batch_wait_us,
                            t.leader_fsync_us,
                            t.commit_wait_us,
                            t.apply_us,
                        ]
                        .iter()
                        .fold(0u32, |sum, &us| sum.saturating_add(us));
                        t.reply_us = t.total_us.saturating_sub(core);
                    }
                    reply
                }
                Err(_) => return,
            }
        }
        (None, Some(Err(e))) => {
            KvResponseFrame::new(0, KvReply::Error(format!("malformed request: {e}")))
        }
        (None, None) => return,
    };
    if send.write_all(&response_bytes(&reply)).await.is_ok() {
        let _ = send.finish();
    }
}

/// The response frame for `reply`; a reply too large for one frame (a scan over large
/// values) becomes an error naming the sizes, so the client hears why instead of waiting.
fn response_bytes(reply: &KvResponseFrame) -> Vec<u8> {
    let payload = reply.encode();
    let mut out = Vec::new();
    if let Err(e) = encode_frame(FrameKind::Response, 0, &payload, &mut out) {
        let refusal = KvResponseFrame::new(
            reply.id,
            KvReply::Error(format!(
                "the reply does not fit one frame ({e}); ask for less (a smaller scan limit)"
            )),
        );
        out.clear();
        encode_frame(FrameKind::Response, 0, &refusal.encode(), &mut out)
            .expect("an error reply fits a frame");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::constants::FRAME_PAYLOAD_MAX_BYTES;
    use crate::wire::frame::FrameDecoder;

    #[test]
    fn a_reply_over_the_frame_limit_is_answered_with_an_error() {
        let big = KvResponseFrame::new(
            9,
            KvReply::Items(vec![(b"k".to_vec(), vec![0u8; FRAME_PAYLOAD_MAX_BYTES])]),
        );
        let mut frames = Vec::new();
        FrameDecoder::new()
            .decode(&response_bytes(&big), |f| frames.push(f))
            .unwrap();
        let answer = KvResponseFrame::decode(&frames[0].payload).unwrap();
        assert_eq!(
            answer.id, 9,
            "the client can match the answer to its request"
        );
        assert!(
            matches!(&answer.reply, KvReply::Error(why) if why.contains("does not fit one frame")),
            "{:?}",
            answer.reply
        );
    }
}
