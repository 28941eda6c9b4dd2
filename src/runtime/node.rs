//! A running node: one loop per core driving its Raft host, write-ahead log, peers and
//! client service.
//!
//! Each core runs [`core_loop`]: every turn it advances Raft's clock, feeds the Raft
//! messages and client requests that arrived, makes the turn's log writes of every group
//! durable with one record (group commit), answers the clients whose writes were applied
//! or whose reads became linearizable, and sends each peer core its Raft messages as one
//! batch frame. Only the accept/receive tasks run beside it; they hand work to the loop
//! through a local queue.
//!
//! What a core hosts comes from the placement table of the metadata group (group 0, on
//! core 0 of every node): core 0 hands each table it applies to every core of its node,
//! and each core creates the replicas the table places on it and drops the others (see
//! [`Hosting`]). A new cluster's table is its static spec: group `g` on core `g % cores`
//! of `replicas` nodes (`ClusterSpec::nodes_of`), its replica on node `n` with Raft id
//! `(g << 16) | n`. Core 0 of the
//! metadata group's leader also runs the migration executor ([`crate::runtime::mover`]),
//! which carries out the replica moves recorded in the table.

use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use futures_lite::future;
use thiserror::Error;
use tracing::{debug, info, warn};

use crate::cluster::metadata::{Cell, MetadataCommand, MetadataStore};
use crate::cluster::placement::PlacementTable;
pub use crate::cluster::spec::ClusterSpec;
use crate::constants::{
    CLIENT_PENDING_MAX, CLIENT_REQUEST_TIMEOUT, NODE_LOOP_IDLE, REPLY_CHANNEL_CAPACITY,
    SNAPSHOT_TRANSFER_TIMEOUT,
};
use crate::ids::{CoreAddress, GroupId, ReplicaId};
use crate::ids::{CoreId, Epoch, NodeId};
use crate::metrics::cores::{CoreCounter, CoreGauge, NodeMetrics};
use crate::replication::kv::{KvCommand, KvStore};
use crate::replication::raft_host::{
    HostError, HostEvent, PersistedGroup, ProposalToken, RaftHost,
};
use crate::replication::replica_move::leader_view;
use crate::replication::snapshot_transfer::{SnapshotAssembler, TokenBucket, split};
use crate::runtime::clock::MonotonicClock;
use crate::runtime::cores::{CoreContext, CoreLayout, CoreRuntime, CoreRuntimeConfig};
use crate::runtime::executor::RuntimeError;
use crate::runtime::metrics_http::MetricsServer;
use crate::runtime::mover::{self, MoverShared};
use crate::runtime::peers::{PeerKey, Peers, StreamClass, receive_streams};
use crate::runtime::quic::{Connection, EndpointOptions, QuicEndpoint, RecvStream, SendStream};
use crate::runtime::tls::{ALPN_CLIENT, ALPN_PEER, TlsMode};
use crate::runtime::wal::WalFile;
use crate::wire::frame::{FrameDecoder, FrameKind, encode_frame};
use crate::wire::kv_rpc::{KvOp, KvReply, KvRequest, KvResponseFrame};
use crate::wire::raft::{decode_batch, encode_batch};

/// The metadata group: topology and placement (hosted on core 0 of every node).
pub const METADATA_GROUP: GroupId = GroupId(0);

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
}

/// A running node; `shutdown` stops every core.
pub struct Node {
    runtime: CoreRuntime<()>,
    metrics: Arc<NodeMetrics>,
    http: Option<MetricsServer>,
    /// The first error a core stopped with, if any.
    failure: Arc<std::sync::Mutex<Option<String>>>,
}

impl Node {
    pub fn start(config: NodeConfig) -> Result<Node, NodeError> {
        if config.spec.address(config.node, CoreId(0)).is_none() {
            return Err(NodeError::NotInSpec(config.node));
        }
        let metrics = Arc::new(NodeMetrics::new(config.node, config.spec.cores));
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
        let runtime = CoreRuntime::start(&runtime_config, {
            let (metrics, failure) = (metrics.clone(), failure.clone());
            move |ctx: CoreContext<CoreMail>| {
                let (config, metrics, failure) = (config.clone(), metrics.clone(), failure.clone());
                let core = ctx.core();
                async move {
                    if let Err(e) = core_loop(ctx, config, metrics.clone()).await {
                        tracing::error!(core = core.0, error = %e, "core stopped with an error");
                        metrics.core(core.0).set(CoreGauge::Failed, 1);
                        let mut first = failure.lock().unwrap_or_else(|p| p.into_inner());
                        first.get_or_insert_with(|| format!("core {} stopped: {e}", core.0));
                    }
                }
            }
        })?;
        Ok(Node {
            runtime,
            metrics,
            http,
            failure,
        })
    }

    /// The node's per-core counters (also served at `metrics_addr`).
    /// The first error a core stopped with: the node no longer serves that core's groups
    /// and should be stopped (`nodedb-cluster start` exits on it).
    pub fn failure(&self) -> Option<String> {
        self.failure
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    pub fn metrics(&self) -> &Arc<NodeMetrics> {
        &self.metrics
    }

    /// Where the metrics endpoint listens, when one was configured.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.http.as_ref().map(MetricsServer::local_addr)
    }

    pub fn shutdown(self) -> Result<(), RuntimeError> {
        drop(self.http);
        self.runtime.shutdown().map(|_| ())
    }
}

/// Work handed from the receive tasks to the core loop.
enum Work {
    Raft(GroupId, raft::eraftpb::Message),
    /// The snapshot of a group sent to a replica was streamed in full (or failed).
    SnapshotSent {
        group: GroupId,
        to: ReplicaId,
        delivered: bool,
    },
    /// A client request; `trusted` ones come from this node's migration executor and may
    /// change the placement table in any way (network clients may only start moves).
    Client {
        request: KvRequest,
        reply: async_channel::Sender<KvResponseFrame>,
        trusted: bool,
    },
    /// A new placement table from core 0.
    Placement(Arc<PlacementTable>),
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

    async fn wait(&self, timeout: Duration) {
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

/// A client waiting for its write to apply or its read to become linearizable.
enum Pending {
    Write(u64, async_channel::Sender<KvResponseFrame>),
    Read(u64, KvOp, async_channel::Sender<KvResponseFrame>),
}

impl Pending {
    fn answer(self, reply: KvReply) {
        let (id, tx) = match self {
            Pending::Write(id, tx) | Pending::Read(id, _, tx) => (id, tx),
        };
        let _ = tx.try_send(KvResponseFrame { id, reply });
    }
}

/// What the cores of a node send each other.
enum CoreMail {
    /// A client request handed to the core that hosts its group, with where to answer.
    Request {
        request: KvRequest,
        reply: async_channel::Sender<KvResponseFrame>,
        trusted: bool,
    },
    /// Core 0's latest placement table.
    Placement(Arc<PlacementTable>),
}

/// What a core hosts: the replicas its latest placement table places on it, plus the
/// metadata group on core 0.
struct Hosting {
    local: CoreAddress,
    /// The latest table this core applied; `None` until core 0 sends one.
    table: Option<Arc<PlacementTable>>,
    /// Groups the log held at start that no table has claimed yet.
    recovered: BTreeMap<GroupId, PersistedGroup>,
}

impl Hosting {
    /// Hosts exactly what `table` places on this core: creates the missing replicas (from
    /// their state in the log if it has one, as a voter of the initial configuration if
    /// the replica is one, else as a joining learner) and drops the others from the host
    /// and the log. An older table than the one applied is ignored.
    async fn apply(
        &mut self,
        table: Arc<PlacementTable>,
        host: &mut RaftHost<Cell>,
        wal: &mut WalFile,
    ) -> Result<(), String> {
        if self
            .table
            .as_ref()
            .is_some_and(|t| t.epoch() >= table.epoch())
        {
            return Ok(());
        }
        for (_, p) in table.iter() {
            for r in &p.replicas {
                host.set_address(r.id, r.at);
            }
        }
        let want: BTreeMap<GroupId, ReplicaId> = table.hosted_at(self.local).collect();
        let hosted: Vec<GroupId> = host.group_ids().filter(|g| *g != METADATA_GROUP).collect();
        for group in hosted {
            if want.get(&group).copied() != host.replica_id(group) {
                host.remove_group(group);
                wal.drop_group(group).await.map_err(|e| e.to_string())?;
                info!(
                    core = self.local.core.0,
                    group = group.0,
                    "replica dropped: the placement table moved it away"
                );
            }
        }
        let unclaimed: Vec<GroupId> = self
            .recovered
            .keys()
            .copied()
            .filter(|g| !want.contains_key(g))
            .collect();
        for group in unclaimed {
            self.recovered.remove(&group);
            wal.drop_group(group).await.map_err(|e| e.to_string())?;
            info!(
                core = self.local.core.0,
                group = group.0,
                "logged replica dropped: the placement table no longer places it here"
            );
        }
        for (&group, &replica) in &want {
            if host.replica_id(group).is_some() {
                continue;
            }
            let initial = &table
                .group(group)
                .expect("hosted groups are in the table")
                .initial;
            let state = Cell::Kv(KvStore::new());
            let added = match self.recovered.remove(&group) {
                Some(persisted) => host.add_group(group, replica, initial, Some(persisted), state),
                None if initial.contains(&replica) => {
                    host.add_group(group, replica, initial, None, state)
                }
                None => {
                    info!(
                        core = self.local.core.0,
                        group = group.0,
                        replica = replica.0,
                        "joining replica created"
                    );
                    host.add_joining_group(group, replica, initial, &[], state)
                }
            };
            added.map_err(|e| e.to_string())?;
        }
        self.table = Some(table);
        Ok(())
    }

    /// The core of this node that hosts a replica of `group` per the table, if any.
    fn home(&self, group: GroupId) -> Option<CoreId> {
        let table = self.table.as_ref()?;
        table
            .group(group)?
            .replica_on(self.local.node)
            .map(|a| a.core)
    }
}

async fn core_loop(
    ctx: CoreContext<CoreMail>,
    config: Arc<NodeConfig>,
    node_metrics: Arc<NodeMetrics>,
) -> Result<(), String> {
    let ctx = Rc::new(ctx);
    let spec = &config.spec;
    let core = ctx.core();
    let metrics = node_metrics.core(core.0);
    let local = CoreAddress {
        node: config.node,
        core,
    };
    let bind = spec.address(config.node, core).ok_or("node not in spec")?;
    let endpoint = QuicEndpoint::bind(EndpointOptions {
        bind,
        tls: config.tls.clone(),
        segmentation_offload: true,
        mtu: config.mtu,
        server: true,
    })
    .map_err(|e| e.to_string())?;
    std::fs::create_dir_all(&config.data_dir)
        .map_err(|e| format!("{}: {e}", config.data_dir.display()))?;
    let wal_path = config
        .data_dir
        .join(format!("node-{}-core-{}.wal", config.node.0, core.0));
    let (mut wal, mut recovered) = WalFile::open(&wal_path).await.map_err(|e| e.to_string())?;

    let mut host: RaftHost<Cell> = RaftHost::new(local);
    // Snapshots stream out of band: the send task reports when they are through.
    host.set_owner_reports_snapshots(true);
    let peers = Peers::new(
        endpoint.clone(),
        config.tls.clone(),
        PeerKey {
            node: config.node,
            core,
        },
    );
    // Any core may come to host a replica that talks to any core of another node (a moved
    // replica): every core of every node is a peer, connected on first use.
    for (node, _) in &spec.nodes {
        for c in 0..spec.cores {
            let peer = PeerKey {
                node: *node,
                core: CoreId(c),
            };
            if (peer.node, peer.core) != (config.node, core) {
                let addr = spec
                    .address(*node, peer.core)
                    .ok_or("node without address")?;
                peers.add_peer(peer, addr);
            }
        }
    }
    // A brand-new node (no metadata log) hosts the spec's placement until the metadata
    // group has a table; one with a log waits for its own replay of it.
    let fresh = recovered
        .groups
        .get(&METADATA_GROUP)
        .is_none_or(|p| p.entries.is_empty() && p.snapshot.is_none());
    // Core 0 of every node hosts a replica of the metadata group (group 0).
    if core == CoreId(0) {
        let voters = spec.metadata_voters();
        for (r, at) in &voters {
            host.set_address(*r, *at);
        }
        let own = voters
            .iter()
            .find(|(_, at)| at.node == config.node)
            .map(|(r, _)| *r)
            .ok_or("node not in spec")?;
        let voters: Vec<ReplicaId> = voters.iter().map(|(r, _)| *r).collect();
        let persisted = recovered.groups.remove(&METADATA_GROUP);
        host.add_group(
            METADATA_GROUP,
            own,
            &voters,
            persisted,
            Cell::Meta(MetadataStore::new()),
        )
        .map_err(|e| e.to_string())?;
    }
    let mut bootstrap_asked: Option<crate::time::Time> = None;
    info!(node = config.node.0, core = core.0, %bind, records = recovered.records, "core started");
    let mut hosting = Hosting {
        local,
        table: None,
        recovered: recovered.groups,
    };
    // Core 0: the table last handed out, and the cores still to receive it.
    let mut distributed: Option<Arc<PlacementTable>> = None;
    let mut undelivered: Vec<CoreId> = Vec::new();

    let inbox = Rc::new(Inbox::default());
    let clock = MonotonicClock::new();
    let assembler = Rc::new(RefCell::new(SnapshotAssembler::new()));
    let bucket = Rc::new(RefCell::new(TokenBucket::new(config.snapshot_rate)));
    let accept = glommio::spawn_local(accept_loop(
        endpoint.clone(),
        inbox.clone(),
        assembler.clone(),
        clock,
    ));
    // Requests other cores of this node forwarded here, and core 0's tables, join the
    // local queue.
    let forwarded = glommio::spawn_local({
        let (ctx, inbox) = (ctx.clone(), inbox.clone());
        async move {
            while let Some(mail) = ctx.recv().await {
                inbox.push(match mail {
                    CoreMail::Request {
                        request,
                        reply,
                        trusted,
                    } => Work::Client {
                        request,
                        reply,
                        trusted,
                    },
                    CoreMail::Placement(table) => Work::Placement(table),
                });
            }
        }
    });
    // Core 0 runs the migration executor; it acts while this core leads the metadata group.
    let mover_shared = Rc::new(MoverShared::default());
    let mover = (core == CoreId(0)).then(|| {
        let inbox = inbox.clone();
        let submit = move |request: KvRequest| {
            let (tx, rx) = async_channel::bounded(REPLY_CHANNEL_CAPACITY);
            inbox.push(Work::Client {
                request,
                reply: tx,
                trusted: true,
            });
            rx
        };
        glommio::spawn_local(mover::run(
            mover_shared.clone(),
            config.clone(),
            node_metrics.clone(),
            Rc::new(submit),
        ))
    });
    let mut pending: HashMap<u64, Pending> = HashMap::new();
    // Tokens in the order they were issued, with when: for expiring abandoned requests.
    let mut issued: VecDeque<(u64, crate::time::Time)> = VecDeque::new();
    let mut next_token = 1u64;
    while !ctx.stopping() {
        metrics.add(CoreCounter::LoopTurns, 1);
        host.handle_tick(clock.now());
        let work: Vec<Work> = inbox.work.borrow_mut().drain(..).collect();
        for w in work {
            match w {
                Work::SnapshotSent {
                    group,
                    to,
                    delivered,
                } => host.report_snapshot(group, to, delivered),
                Work::Raft(group, message) => {
                    metrics.add(CoreCounter::RaftMessagesIn, 1);
                    if let Err(e) = host.handle_message(group, message) {
                        debug!(group = group.0, error = %e, "raft message dropped");
                    }
                }
                Work::Placement(table) => hosting.apply(table, &mut host, &mut wal).await?,
                Work::Client {
                    request,
                    reply,
                    trusted,
                } => {
                    let Some(request) =
                        route_request(&ctx, &hosting, &host, metrics, request, &reply, trusted)
                    else {
                        continue;
                    };
                    let token = ProposalToken(next_token);
                    next_token += 1;
                    issued.push_back((token.0, clock.now()));
                    metrics.add(CoreCounter::ClientRequests, 1);
                    match handle_request(&mut host, &mut pending, token, request, reply, trusted) {
                        Taken::Pending | Taken::Answered => {}
                        Taken::Redirected => metrics.add(CoreCounter::ClientRedirects, 1),
                        Taken::Refused => metrics.add(CoreCounter::ClientErrors, 1),
                    }
                }
            }
        }
        let batches = wal.persist(&mut host).await.map_err(|e| e.to_string())?;
        metrics.add(CoreCounter::WalBatches, batches as u64);
        // The metadata group's first leader bootstraps the cluster's shape (once; asked
        // again if the proposal was lost to a leader change).
        if core == CoreId(0) && host.is_leader(METADATA_GROUP) {
            let bootstrapped = host
                .state_machine(METADATA_GROUP)
                .and_then(Cell::meta)
                .is_some_and(MetadataStore::is_bootstrapped);
            let now = clock.now();
            let retry =
                bootstrap_asked.is_none_or(|t| now.saturating_since(t) > CLIENT_REQUEST_TIMEOUT);
            if !bootstrapped && retry {
                let command = spec
                    .bootstrap_command()
                    .map_err(|e| e.to_string())?
                    .encode();
                if host
                    .propose(METADATA_GROUP, command, ProposalToken(0))
                    .is_ok()
                {
                    bootstrap_asked = Some(now);
                }
            }
        }
        if core == CoreId(0) {
            let meta = host.state_machine(METADATA_GROUP).and_then(Cell::meta);
            let newer = match meta {
                Some(m) if m.is_bootstrapped() => distributed
                    .as_ref()
                    .is_none_or(|t| t.epoch() < m.epoch())
                    .then(|| m.table().clone()),
                _ if fresh && distributed.is_none() => {
                    Some(spec.initial_table().map_err(|e| e.to_string())?)
                }
                _ => None,
            };
            if let Some(table) = newer {
                distributed = Some(Arc::new(table));
                undelivered = (1..spec.cores).map(CoreId).collect();
                hosting
                    .apply(distributed.clone().expect("just set"), &mut host, &mut wal)
                    .await?;
                *mover_shared.table.borrow_mut() = distributed.clone();
            }
            if let Some(table) = &distributed {
                // A full inbox is retried next turn: every core gets every table.
                undelivered.retain(|c| {
                    ctx.try_send(*c, CoreMail::Placement(table.clone()))
                        .is_err()
                });
            }
            mover_shared.leader.set(host.is_leader(METADATA_GROUP));
        }
        while let Some(event) = host.poll_event() {
            match event {
                HostEvent::Applied {
                    token, response, ..
                } => {
                    if let Some(Pending::Write(id, reply)) = pending.remove(&token.0) {
                        metrics.add(CoreCounter::WritesAcked, 1);
                        let _ = reply.try_send(KvResponseFrame {
                            id,
                            reply: KvReply::Written(response),
                        });
                    }
                }
                HostEvent::ReadReady { group, token } => {
                    if let Some(Pending::Read(id, op, reply)) = pending.remove(&token.0) {
                        metrics.add(CoreCounter::ReadsServed, 1);
                        let store = host.state_machine(group).and_then(Cell::kv);
                        let answer = match (store, op) {
                            (_, KvOp::Routing) => {
                                routing_reply(host.state_machine(group).and_then(Cell::meta))
                            }
                            (_, KvOp::Moves) => {
                                moves_reply(host.state_machine(group).and_then(Cell::meta))
                            }
                            (Some(s), KvOp::Get { key }) => {
                                KvReply::Value(s.get(&key).map(<[u8]>::to_vec))
                            }
                            (Some(s), KvOp::Scan { start, end, limit }) => {
                                KvReply::Items(s.scan(&start, end.as_deref(), limit as usize))
                            }
                            _ => KvReply::Error("read lost its group".into()),
                        };
                        let _ = reply.try_send(KvResponseFrame { id, reply: answer });
                    }
                }
                HostEvent::LeaderChanged { group, is_self, .. } => {
                    debug!(group = group.0, is_self, "leader changed");
                }
                // Only reported in audit mode (simulation), which nodes do not enable.
                HostEvent::Committed { .. } => {}
                HostEvent::MembershipChanged {
                    group,
                    voters,
                    learners,
                    joint,
                } => {
                    info!(
                        group = group.0,
                        ?voters,
                        ?learners,
                        joint,
                        "membership changed"
                    );
                }
            }
        }
        // One batch frame per peer core per turn.
        let mut by_peer: BTreeMap<PeerKey, Vec<(u64, raft::eraftpb::Message)>> = BTreeMap::new();
        while let Some(out) = host.poll_transmit() {
            let peer = PeerKey {
                node: out.to.node,
                core: out.to.core,
            };
            // Snapshot data goes out of band, on a throttled bulk stream.
            metrics.add(CoreCounter::RaftMessagesOut, 1);
            let to = ReplicaId(out.message.to);
            let (message, chunks) = split(out.group, out.message);
            if !chunks.is_empty() {
                metrics.add(CoreCounter::SnapshotsSent, 1);
                let (inbox, group) = (inbox.clone(), out.group);
                let send = send_snapshot(peers.clone(), peer, chunks, bucket.clone(), clock);
                glommio::spawn_local(async move {
                    let delivered = send.await;
                    inbox.push(Work::SnapshotSent {
                        group,
                        to,
                        delivered,
                    });
                })
                .detach();
            }
            by_peer
                .entry(peer)
                .or_default()
                .push((out.group.0, message));
        }
        assembler.borrow_mut().expire(clock.now());
        for (peer, messages) in by_peer {
            let mut payload = Vec::new();
            encode_batch(messages.iter().map(|(g, m)| (*g, m)), &mut payload);
            if let Err(e) = peers.queue(peer, FrameKind::RaftBatch, &payload) {
                debug!(%peer, error = %e, "raft batch not queued");
            }
        }
        for (peer, e) in peers.flush().await {
            debug!(%peer, error = %e, "raft batch not sent");
        }
        // A proposal lost to a leader change never applies: answer it after a while, with an
        // outcome the client must treat as unknown.
        let now = clock.now();
        while let Some(&(token, at)) = issued.front() {
            if now.saturating_since(at) < CLIENT_REQUEST_TIMEOUT {
                break;
            }
            issued.pop_front();
            if let Some(p) = pending.remove(&token) {
                metrics.add(CoreCounter::ClientErrors, 1);
                p.answer(KvReply::Unknown(
                    "timed out waiting for commit; the outcome is unknown".into(),
                ));
            }
        }
        metrics.set(CoreGauge::PendingRequests, pending.len() as u64);
        let leading = host.group_ids().filter(|g| host.is_leader(*g)).count();
        metrics.set(CoreGauge::LeaderGroups, leading as u64);
        metrics.set(CoreGauge::Replicas, host.group_ids().count() as u64);
        let quic = endpoint.stats();
        metrics.mirror(CoreCounter::QuicDatagramsSent, quic.datagrams_sent);
        metrics.mirror(CoreCounter::QuicSendCalls, quic.send_calls);
        metrics.mirror(CoreCounter::QuicDatagramsReceived, quic.datagrams_received);
        metrics.mirror(CoreCounter::QuicSendWouldBlock, quic.send_would_block);
        metrics.set(CoreGauge::QuicGsoActive, u64::from(quic.gso_active));
        inbox.wait(NODE_LOOP_IDLE).await;
    }
    metrics.set(CoreGauge::LeaderGroups, 0);
    for (_, p) in pending.drain() {
        metrics.add(CoreCounter::ClientErrors, 1);
        p.answer(KvReply::Unknown(
            "the node is shutting down; the outcome is unknown".into(),
        ));
    }
    drop(accept);
    drop(forwarded);
    drop(mover);
    endpoint.shutdown().await;
    wal.close().await.map_err(|e| e.to_string())?;
    Ok(())
}

/// The placement table as the metadata group knows it.
fn routing_reply(meta: Option<&MetadataStore>) -> KvReply {
    match meta {
        Some(m) if m.is_bootstrapped() => KvReply::Routing {
            epoch: m.epoch().0,
            groups: m
                .table()
                .groups()
                .map(|(g, p)| (g, p.replicas.iter().map(|r| (r.id.0, r.at)).collect()))
                .collect(),
        },
        Some(_) => KvReply::Error("the cluster is not bootstrapped yet; retry".into()),
        None => KvReply::Error("no metadata group on this core".into()),
    }
}

/// The replica moves under way, as the metadata group knows them.
fn moves_reply(meta: Option<&MetadataStore>) -> KvReply {
    match meta {
        Some(m) if m.is_bootstrapped() => KvReply::Moves(
            m.table()
                .groups()
                .filter_map(|(g, p)| p.moving.map(|mv| (g, mv)))
                .collect(),
        ),
        Some(_) => KvReply::Error("the cluster is not bootstrapped yet; retry".into()),
        None => KvReply::Error("no metadata group on this core".into()),
    }
}

/// Decides where a client request goes: `Some` if this core takes it; otherwise it was
/// forwarded to the core of this node that hosts the group, or answered (a stale-epoch
/// redirect when no core here hosts it, or an error).
fn route_request(
    ctx: &CoreContext<CoreMail>,
    hosting: &Hosting,
    host: &RaftHost<Cell>,
    metrics: &crate::metrics::cores::CoreMetrics,
    request: KvRequest,
    reply: &async_channel::Sender<KvResponseFrame>,
    trusted: bool,
) -> Option<KvRequest> {
    let (id, group) = (request.id, request.group);
    let answer = |metrics: &crate::metrics::cores::CoreMetrics, answer: KvReply| {
        let counter = if matches!(answer, KvReply::Moved { .. }) {
            CoreCounter::ClientRedirects
        } else {
            CoreCounter::ClientErrors
        };
        metrics.add(counter, 1);
        let _ = reply.try_send(KvResponseFrame { id, reply: answer });
    };
    let is_meta = group == METADATA_GROUP;
    let meta_op = matches!(request.op, KvOp::Routing | KvOp::Moves | KvOp::Write { .. });
    let data_op = !matches!(request.op, KvOp::Routing | KvOp::Moves);
    if (is_meta && !meta_op) || (!is_meta && !data_op) {
        answer(
            metrics,
            KvReply::Error(format!(
                "{:?} is not an operation on group {}",
                request.op, group.0
            )),
        );
        return None;
    }
    if host.replica_id(group).is_some() {
        return Some(request);
    }
    let home = if is_meta {
        Some(CoreId(0))
    } else {
        hosting.home(group)
    };
    match home {
        Some(home) if home != ctx.core() => {
            // Right node, wrong core: hand it over through the core's inbox.
            let mail = CoreMail::Request {
                request,
                reply: reply.clone(),
                trusted,
            };
            if let Err(e) = ctx.try_send(home, mail) {
                answer(metrics, KvReply::Error(format!("busy: {e}")));
            }
        }
        _ => match &hosting.table {
            Some(t) if t.group(group).is_none() && t.epoch() > Epoch(0) => {
                answer(
                    metrics,
                    KvReply::Error(format!("group {} does not exist", group.0)),
                );
            }
            // Not here (any more): the client's table is stale, or this node's is.
            t => answer(
                metrics,
                KvReply::Moved {
                    epoch: t.as_ref().map_or(0, |t| t.epoch().0),
                },
            ),
        },
    }
    None
}

/// What became of a client request a core took.
enum Taken {
    /// Waiting for its commit or read index.
    Pending,
    /// Answered `NotLeader`.
    Redirected,
    /// Answered with an error.
    Refused,
    /// Answered at once (an admin request).
    Answered,
}

fn handle_request(
    host: &mut RaftHost<Cell>,
    pending: &mut HashMap<u64, Pending>,
    token: ProposalToken,
    request: KvRequest,
    reply: async_channel::Sender<KvResponseFrame>,
    trusted: bool,
) -> Taken {
    let (id, group) = (request.id, request.group);
    let refuse = |reply: &async_channel::Sender<KvResponseFrame>, answer: KvReply| {
        let redirect = matches!(answer, KvReply::NotLeader(_));
        let _ = reply.try_send(KvResponseFrame { id, reply: answer });
        if redirect {
            Taken::Redirected
        } else {
            Taken::Refused
        }
    };
    if pending.len() >= CLIENT_PENDING_MAX {
        return refuse(
            &reply,
            KvReply::Error("server busy: too many requests in flight".into()),
        );
    }
    let accepted = |result: Result<(), HostError>| {
        result.map(|()| {
            let _ = reply.try_send(KvResponseFrame {
                id,
                reply: KvReply::Accepted,
            });
            None
        })
    };
    let result = match &request.op {
        KvOp::Write { command } if group == METADATA_GROUP => {
            match MetadataCommand::decode(command) {
                Err(e) => {
                    return refuse(
                        &reply,
                        KvReply::Error(format!("malformed metadata command: {e}")),
                    );
                }
                Ok(MetadataCommand::StartMove { .. } | MetadataCommand::AbandonMove { .. }) => {}
                Ok(_) if trusted => {}
                Ok(c) => {
                    return refuse(
                        &reply,
                        KvReply::Error(format!("clients may only start replica moves, not {c:?}")),
                    );
                }
            }
            host.propose(group, command.clone(), token)
                .map(|_| Some(Pending::Write(id, reply.clone())))
        }
        KvOp::Write { command } => match KvCommand::decode(command) {
            Err(e) => return refuse(&reply, KvReply::Error(format!("malformed command: {e}"))),
            Ok(c) => match c.validate() {
                Err(e) => return refuse(&reply, KvReply::Error(e.to_string())),
                Ok(()) => host
                    .propose(group, command.clone(), token)
                    .map(|_| Some(Pending::Write(id, reply.clone()))),
            },
        },
        KvOp::Get { .. } | KvOp::Scan { .. } | KvOp::Routing | KvOp::Moves => host
            .read(group, token)
            .map(|_| Some(Pending::Read(id, request.op.clone(), reply.clone()))),
        KvOp::View { new } => host.ensure_leader(group).map(|()| {
            let view = host
                .replica_id(group)
                .and_then(|leader| leader_view(host, group, leader, *new));
            let answer = view.map_or_else(
                || KvReply::Error("the leader's view is unavailable".into()),
                KvReply::View,
            );
            let _ = reply.try_send(KvResponseFrame { id, reply: answer });
            None
        }),
        // Fire and forget: the executor reads the outcome from later views.
        KvOp::ChangeMembership { changes } => {
            accepted(host.change_membership(group, changes, ProposalToken(0)))
        }
        KvOp::TransferLeader { to } => accepted(host.transfer_leader(group, *to)),
        KvOp::DurableCommit => {
            let index = host.durable_commit(group).unwrap_or(0);
            let _ = reply.try_send(KvResponseFrame {
                id,
                reply: KvReply::Index(index),
            });
            Ok(None)
        }
    };
    match result {
        Ok(Some(p)) => {
            pending.insert(token.0, p);
            Taken::Pending
        }
        Ok(None) => Taken::Answered,
        Err(HostError::NotLeader { leader, .. }) => refuse(&reply, KvReply::NotLeader(leader)),
        Err(HostError::UnknownGroup(_)) => refuse(&reply, KvReply::Moved { epoch: 0 }),
        Err(e) => refuse(&reply, KvReply::Error(e.to_string())),
    }
}

/// Sends snapshot data on a bulk stream, chunk by chunk, within the core's rate limit.
/// Returns whether all of it was written and the stream finished (the host is told either
/// way). A stream that makes no progress for `SNAPSHOT_TRANSFER_TIMEOUT` (a peer that stopped
/// reading) counts as failed, so raft-rs sends again rather than waiting forever.
async fn send_snapshot(
    peers: Peers,
    peer: PeerKey,
    chunks: Vec<Vec<u8>>,
    bucket: Rc<RefCell<TokenBucket>>,
    clock: MonotonicClock,
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
    for chunk in chunks {
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
    }
    stream.finish().is_ok()
}

/// Accepts connections: peers' streams carry Raft batches, clients' streams requests.
async fn accept_loop(
    endpoint: QuicEndpoint,
    inbox: Rc<Inbox>,
    assembler: Rc<RefCell<SnapshotAssembler>>,
    clock: MonotonicClock,
) {
    while let Some(conn) = endpoint.accept().await {
        let inbox = inbox.clone();
        match conn.alpn().as_deref() {
            Some(ALPN_PEER) => {
                let assembler = assembler.clone();
                glommio::spawn_local(receive_streams(conn, move |peer, class, frame| {
                    match (class, frame.kind) {
                        (StreamClass::Control, FrameKind::RaftBatch) => {
                            match decode_batch(&frame.payload) {
                                Ok(messages) => {
                                    for (group, message) in messages {
                                        let group = GroupId(group);
                                        // A snapshot waits here until its data is in.
                                        if let Some(message) = assembler.borrow_mut().on_message(
                                            clock.now(),
                                            group,
                                            message,
                                        ) {
                                            inbox.push(Work::Raft(group, message));
                                        }
                                    }
                                }
                                Err(e) => warn!(%peer, error = %e, "malformed raft batch dropped"),
                            }
                        }
                        (StreamClass::Bulk, FrameKind::BulkChunk) => {
                            match assembler.borrow_mut().on_chunk(clock.now(), &frame.payload) {
                                Ok(Some((group, message))) => {
                                    inbox.push(Work::Raft(group, message))
                                }
                                Ok(None) => {}
                                Err(e) => warn!(%peer, error = %e, "snapshot chunk refused"),
                            }
                        }
                        _ => debug!(%peer, kind = ?frame.kind, "unexpected frame on a peer stream"),
                    }
                }))
                .detach();
            }
            Some(ALPN_CLIENT) => {
                glommio::spawn_local(serve_client(conn, inbox)).detach();
            }
            _ => conn.close(2, b"unknown ALPN"),
        }
    }
}

async fn serve_client(conn: Connection, inbox: Rc<Inbox>) {
    while let Ok((send, recv)) = conn.accept_bi().await {
        glommio::spawn_local(serve_request(send, recv, inbox.clone())).detach();
    }
}

/// One request per stream: a request frame in, a response frame out.
async fn serve_request(mut send: SendStream, mut recv: RecvStream, inbox: Rc<Inbox>) {
    let mut decoder = FrameDecoder::new();
    let mut request = None;
    loop {
        match recv.read_chunk(usize::MAX).await {
            Ok(Some(chunk)) => {
                if decoder.decode(&chunk, |f| request = Some(f)).is_err() {
                    return;
                }
            }
            Ok(None) => break,
            Err(_) => return,
        }
    }
    let reply = match request.map(|f| KvRequest::decode(&f.payload)) {
        Some(Ok(request)) => {
            let (tx, rx) = async_channel::bounded(REPLY_CHANNEL_CAPACITY);
            inbox.push(Work::Client {
                request,
                reply: tx,
                trusted: false,
            });
            match rx.recv().await {
                Ok(reply) => reply,
                Err(_) => return,
            }
        }
        Some(Err(e)) => KvResponseFrame {
            id: 0,
            reply: KvReply::Error(format!("malformed request: {e}")),
        },
        None => return,
    };
    let mut out = Vec::new();
    if encode_frame(FrameKind::Response, 0, &reply.encode(), &mut out).is_ok()
        && send.write_all(&out).await.is_ok()
    {
        let _ = send.finish();
    }
}
