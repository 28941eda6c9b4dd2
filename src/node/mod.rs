//! One core of a running node, sans-IO: the logic the glommio loop (`runtime::node`) and the
//! simulator (`sim`) both drive.
//!
//! A [`NodeCore`] owns the core's [`RaftHost`] and state machines, decides what the core
//! hosts from the placement table ([`hosting`]), routes, forwards, answers and expires
//! client requests, and on core 0 runs the metadata group's duties: the bootstrap of a new
//! cluster, handing every table the group applies to the node's cores, and the migration
//! executor ([`mover`]). It names no clock, socket, file or executor.
//!
//! The grammar is quinn-proto's. Inputs: [`NodeCore::handle_timeout`] (time passes),
//! [`NodeCore::handle_request`] (a client request), [`NodeCore::handle_mail`] (from
//! another core of the node), [`NodeCore::handle_raft_batch`] and
//! [`NodeCore::handle_snapshot_chunk`] (bytes from peers), [`NodeCore::handle_persisted`],
//! [`NodeCore::handle_snapshot_sent`] and [`NodeCore::handle_call_reply`] (what came of
//! outputs). Outputs, to drain after every input, in this order:
//!
//! 1. [`NodeCore::poll_log`]: log writes, one at a time — a group to drop, or a batch to
//!    make durable (write + fsync), then `handle_persisted`. Nothing else is handed out
//!    while a batch is in flight, so drops and batches reach the log in order.
//! 2. [`NodeCore::poll_mail`]: requests and tables for the node's other cores (mail the
//!    shell cannot deliver goes back with `handle_mail_refused`).
//! 3. [`NodeCore::poll_reply`]: answers to clients, each with its reply handle `R`.
//! 4. [`NodeCore::poll_transmit`]: one Raft batch per peer core, and snapshot data to
//!    stream out of band (report with `handle_snapshot_sent`).
//! 5. [`NodeCore::poll_call`]: the migration executor's requests to other cores (answer
//!    with `handle_call_reply`).
//!
//! and [`NodeCore::poll_timeout`] says when to call `handle_timeout` next.
//! [`NodeCore::poll_load`] gives the core's load once per load tick ([`load`]); the shell
//! adds what only it can measure (busy fraction, migration rate), publishes it, and hands it
//! back with [`NodeCore::handle_load`], which takes it to core 0's balancer ([`balancer`]:
//! the node's load reports and, on the metadata leader, the rebalancer).
//!
//! Why a table is handed out only after the batch that applied it is durable: the metadata
//! group applies an entry before its commit index is durable here; handing out the table
//! later means a restart never replays a table older than one a core acted on.

mod balancer;
pub mod cell;
mod hosting;
pub mod liveness;
pub mod load;
mod mover;
mod trace;

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use thiserror::Error;
use tracing::{debug, info, warn};

use crate::balance::report::NodeReport;
use crate::client::call::Failure;
use crate::cluster::metadata::{MetadataCommand, MetadataStore};
use crate::cluster::placement::{PlacementError, PlacementTable};
use crate::cluster::spec::{ClusterInfo, ClusterSpec};
use crate::cluster::topology::{ClusterTopology, NodeState};
use crate::cluster::vshard::{VShardCountError, VShardMap};
use crate::constants::{
    CLIENT_PENDING_MAX, CLIENT_REQUEST_TIMEOUT, LOAD_TICK, RAFT_BATCH_BYTES_MAX,
    RAFT_BATCH_MESSAGES_MAX, SNAPSHOT_MAX_BYTES, SNAPSHOT_RESTORE_BYTES_PER_TURN,
    SNAPSHOT_TRANSFER_TIMEOUT, SNAPSHOT_TRANSFERS_MAX,
};
use crate::ids::{CoreAddress, CoreId, Epoch, GroupId, NodeId, ReplicaId, Role};
use crate::metrics::cores::{CoreCounter, LocalTimeHistogram};
use crate::node::balancer::Balancer;
pub use crate::node::balancer::{BalanceConfig, BalancerStats, BalancerStatus, NodeStatus};
use crate::node::cell::Cell;
use crate::node::hosting::Hosting;
use crate::node::liveness::{Liveness, MemberState};
use crate::node::load::{CoreLoad, GroupCounts, LoadMeter};
use crate::node::mover::Mover;
use crate::node::trace::Traces;
use crate::replication::kv::{KvCommand, KvResponse, KvRestore, StateMachine};
use crate::replication::raft_host::{
    Discarded, HostError, HostEvent, MembershipChange, PersistBatch, PersistedGroup, ProposalToken,
    RaftHost, SnapshotPolicy,
};
use crate::replication::replica_move::leader_view;
use crate::replication::snapshot_transfer::{
    ChunkHeader, SnapshotAssembler, SnapshotStream, TransferError, chunk_header, split,
};
use crate::time::Time;
use crate::wire::codec::DecodeError;
use crate::wire::kv_rpc::{KvOp, KvReply, KvRequest, KvResponseFrame};
use crate::wire::raft::{decode_batch, encode_batch};
use raft::eraftpb::MessageType;

/// Whether a snapshot's data for `group` decodes as its state machine's.
fn check_snapshot(group: GroupId, data: &bytes::Bytes) -> Result<(), DecodeError> {
    if group == GroupId::METADATA {
        // Small: decoded whole into a scratch store.
        MetadataStore::new().restore(0, data)
    } else {
        crate::replication::kv::check_snapshot(data)
    }
}

/// A deliberate bug in the node core's request path, to show that the simulator catches
/// it. Only the simulator sets one.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
pub enum NodeBug {
    /// Answer a read from whatever replica the request reached, without ReadIndex.
    ReadWithoutReadIndex,
    /// Acknowledge a put as soon as it is proposed, before it commits.
    AckWriteBeforeCommit,
}

/// How to run one core.
#[derive(Clone, Debug)]
pub struct CoreConfig {
    pub local: CoreAddress,
    pub spec: ClusterSpec,
    /// Report every applied entry and every leader as [`Audit`] events (the simulator's
    /// checkers; off in nodes).
    pub audit: bool,
    /// Simulation only.
    pub bug: Option<NodeBug>,
    /// The rebalancer's settings (used on core 0).
    pub balance: BalanceConfig,
    /// The failure detector's starting incarnation (core 0): above any this node's earlier
    /// processes used (the runtime: wall-clock milliseconds at start).
    pub incarnation: u64,
    /// The node joined a running cluster (`start --join`): `spec` is the one the cluster
    /// was bootstrapped with, which does not list this node. Its core 0 is a learner of
    /// the metadata group ([`ReplicaId::metadata_learner`]) and never hosts the spec's
    /// initial placement or bootstraps.
    pub joined: bool,
    /// When groups compact their logs and which snapshots are large (kept as views, and
    /// written to files of their own, a received one ahead of its install). Nodes use the
    /// default; the simulator small values, so its runs take those paths.
    pub snapshots: SnapshotPolicy,
    /// Idle groups quiesce ([`RaftHost::set_quiesce`]); a follower whose leader's node the
    /// failure detector (core 0) suspects is woken on every core of the node.
    pub quiesce: bool,
}

/// A core that cannot start or go on.
#[derive(Debug, Error)]
pub enum CoreError {
    /// The node is not in the cluster spec.
    #[error("node {0} is not in the cluster spec")]
    NotInSpec(crate::ids::NodeId),
    /// The spec places nothing (no nodes, a bad replica or group count).
    #[error("the cluster spec: {0}")]
    Placement(#[from] PlacementError),
    /// A group could not be hosted (its logged state does not load).
    #[error("hosting a group: {0}")]
    Host(#[from] HostError),
    /// The spec's groups count is not one keys can be hashed to.
    #[error("the cluster spec: {0}")]
    Groups(#[from] VShardCountError),
}

/// What a core sends the node's other cores.
#[derive(Debug)]
pub enum Mail<R> {
    /// A client request for a group the receiving core hosts, with where to answer and
    /// the role of its sender.
    Request {
        request: KvRequest,
        reply: R,
        role: Role,
    },
    /// Core 0's latest placement table.
    Table(Arc<PlacementTable>),
    /// A core's load over its last tick, for core 0's report.
    Load { core: CoreId, load: CoreLoad },
    /// Core 0's failure detector suspects this node (`true`: wake the quiesced followers
    /// whose leader is there, so that they elect another) or holds it alive again.
    Suspected(NodeId, bool),
}

/// A write to the core's log.
#[derive(Debug, PartialEq)]
#[must_use]
pub enum LogWrite {
    /// Remove every record of this group (its replica left the core).
    Drop(GroupId),
    /// Make this batch durable (one durable write), then `handle_persisted(now, id)`.
    Persist(PersistBatch),
    /// Write a received snapshot's data to a file of its own, durably, in the background
    /// (nothing else waits for it), then `handle_snapshot_file_written`. Raft installs the
    /// snapshot only then, and the batch that makes the install durable names the file
    /// instead of carrying the vShard: a large install holds no batch of the core's other
    /// groups behind its write.
    SnapshotFile(SnapshotFileWrite),
    /// A large vShard snapshot arriving in chunks: its file is begun, given each chunk as
    /// it arrives, and ended (then made durable, then `handle_snapshot_file_written`), so
    /// the file is written at the stream's pace, not after it.
    SnapshotFileBegin {
        group: GroupId,
        index: u64,
        term: u64,
        /// The snapshot's size: the file's room is reserved at once.
        bytes: u64,
    },
    SnapshotFilePiece {
        group: GroupId,
        index: u64,
        piece: bytes::Bytes,
    },
    SnapshotFileEnd {
        group: GroupId,
        index: u64,
    },
    /// A begun file will not be ended (its stream broke off or stalled): it is deleted,
    /// and nothing is reported.
    SnapshotFileAbandon {
        group: GroupId,
        index: u64,
        term: u64,
    },
}

/// A received snapshot's data, to write ahead of its install ([`LogWrite::SnapshotFile`]).
#[derive(Clone, Debug, PartialEq)]
pub struct SnapshotFileWrite {
    pub group: GroupId,
    pub index: u64,
    pub term: u64,
    pub data: bytes::Bytes,
}

/// Bytes for a peer core.
#[derive(Debug, PartialEq)]
#[must_use]
pub enum Transmit {
    /// This turn's Raft messages for the core at `to`: a `RaftBatch` frame's payload.
    Raft { to: CoreAddress, payload: Vec<u8> },
    /// A snapshot's data for `replica` of `group`, to stream in order on a bulk stream
    /// (`BulkChunk` frames, made one at a time by `SnapshotStream::chunk`); report the
    /// outcome with `handle_snapshot_sent`.
    Snapshot {
        to: CoreAddress,
        group: GroupId,
        replica: ReplicaId,
        stream: SnapshotStream,
    },
    /// A failure-detector message for core 0 of another node: a `Ping` frame's payload.
    /// Best effort: one that cannot be sent is dropped (the detector's timeouts cover it).
    Liveness { to: CoreAddress, payload: Vec<u8> },
}

/// A request the core sends another core as a client (the migration executor's).
#[derive(Debug, PartialEq)]
pub struct OutgoingCall {
    pub to: CoreAddress,
    pub request: KvRequest,
}

/// What checkers learn from a core with `audit` on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Audit {
    /// `replica` became the leader of `group` in `term`.
    Leader {
        group: GroupId,
        replica: ReplicaId,
        term: u64,
    },
    /// This core applied the entry at `index` of `group`.
    Applied {
        group: GroupId,
        index: u64,
        term: u64,
        digest: u64,
    },
}

/// What a request taken here waits for.
enum Wait {
    /// Its proposal to apply.
    Commit,
    /// Its read index to be applied here; then `op` is answered from the state machine.
    ReadIndex(KvOp),
}

/// A client request taken here, waiting for its commit or read index.
enum Pending<R> {
    Write {
        id: u64,
        reply: R,
        since: Time,
    },
    Read {
        id: u64,
        group: GroupId,
        op: KvOp,
        reply: R,
        since: Time,
    },
    /// An `end_move` the migration executor proposed.
    EndMove(GroupId),
}

/// Core 0's duties for the metadata group.
struct Coordinator {
    /// The table last handed out, and the cores still to receive it.
    distributed: Option<Arc<PlacementTable>>,
    undelivered: BTreeSet<CoreId>,
    /// Cores whose inbox was full: given the table again at the next timeout.
    refused: BTreeSet<CoreId>,
    /// The store's epoch last seen, and the batch whose fsync makes its table durable.
    seen_epoch: Epoch,
    distribute_after: Option<u64>,
    bootstrap_asked: Option<Time>,
    mover: Mover,
    balancer: Balancer,
    liveness: Liveness,
    /// The topology version the detector's member list follows.
    members_version: Option<Epoch>,
    /// How long a node stays dead before the metadata leader records it `Down`.
    dead_after: Duration,
    leading: bool,
    /// When this core, leading the metadata group, last proposed a join step.
    join_asked: Option<Time>,
    /// The nodes the failure detector suspected (or found dead) when last looked at: a
    /// node newly among them wakes the quiesced groups it leads, on every core.
    suspected: BTreeSet<NodeId>,
    /// `Mail::Suspected` another core's full inbox refused, sent again on the next turn.
    wakes_refused: Vec<(CoreId, NodeId, bool)>,
}

/// How long the metadata leader waits before proposing the same join step again.
const JOIN_RETRY: Duration = Duration::from_secs(1);

/// Memory to free ([`NodeCore::poll_garbage`]).
pub struct Garbage {
    _held: Box<dyn Send>,
}

/// A received snapshot on its way to Raft: its file is written ahead, its state decoded.
struct WritingAhead {
    from: NodeId,
    /// The snapshot's Raft message; `None` while a streamed snapshot waits for it.
    message: Option<raft::eraftpb::Message>,
    /// A vShard's state, decoded a piece per turn (`None` for the metadata group, whose
    /// data was checked whole on arrival and is decoded at install).
    restore: Option<KvRestore>,
    /// Its file is durable.
    written: bool,
    /// A snapshot streamed into its file and state as its chunks arrive: how far it has
    /// come, when it last did, and its term (`None` for one received whole).
    stream: Option<Streaming>,
}

/// Where a streamed snapshot stands.
struct Streaming {
    term: u64,
    received: u64,
    total: u64,
    last_progress: Time,
}

/// One core of a node. `R` is the shell's handle for answering a client.
pub struct NodeCore<R> {
    local: CoreAddress,
    spec: ClusterSpec,
    /// Which group each key belongs to (the spec's groups count).
    keys: VShardMap,
    /// This core's load, for the rebalancer.
    load: LoadMeter,
    host: RaftHost<Cell>,
    hosting: Hosting,
    assembler: SnapshotAssembler,
    /// Received snapshots whose files are being written ahead (`LogWrite::SnapshotFile`)
    /// and whose state is being decoded: (group, index) → what Raft gets once both are done.
    writing_ahead: BTreeMap<(GroupId, u64), WritingAhead>,
    /// Streamed snapshots given up whose file writer has not reported yet.
    closing: std::collections::BTreeSet<(GroupId, u64)>,
    /// `CoreConfig::snapshots.large_bytes`.
    large_snapshot_bytes: usize,
    /// What the host discarded, not yet handed out (`poll_garbage`).
    garbage: Vec<Discarded<Cell>>,
    pending: BTreeMap<u64, Pending<R>>,
    /// Stage timing of the traced writes among them.
    traces: Traces,
    /// Tokens in the order they were issued, with when: expiry of abandoned requests.
    issued: VecDeque<(u64, Time)>,
    next_token: u64,
    now: Time,
    replies: VecDeque<(R, KvResponseFrame)>,
    mail: VecDeque<(CoreId, Mail<R>)>,
    log: VecDeque<LogWrite>,
    /// The batch being made durable.
    in_flight: Option<u64>,
    transmits: VecDeque<Transmit>,
    /// The migration executor's requests, ready to go.
    calls: VecDeque<(CoreAddress, KvRequest)>,
    audit: Option<VecDeque<Audit>>,
    coordinator: Option<Coordinator>,
    counters: [u64; CoreCounter::ALL.len()],
    /// Writes led here, from taken to committed and applied (`commit_latency`).
    commit_latency: LocalTimeHistogram,
    /// When the next leadership line may be logged, and the counts it last logged.
    leaderships_logged: (Option<Time>, (u64, u64)),
    bug: Option<NodeBug>,
    /// The first error that stopped the core.
    failure: Option<String>,
}

impl<R> NodeCore<R> {
    /// A core rebuilt from what its log held (`recovered`; empty for a new node).
    pub fn new(
        config: CoreConfig,
        mut recovered: BTreeMap<GroupId, PersistedGroup>,
    ) -> Result<NodeCore<R>, CoreError> {
        let local = config.local;
        let mut host = RaftHost::new(local);
        // Snapshots stream out of band: the shell reports when they are through.
        host.set_owner_reports_snapshots(true);
        host.set_audit(config.audit);
        host.set_snapshot_policy(config.snapshots);
        host.set_quiesce(config.quiesce);
        let mut coordinator = None;
        let mut log = VecDeque::new();
        let hosting = if local.core == CoreId(0) {
            let voters = config.spec.metadata_voters();
            for (r, at) in &voters {
                host.set_address(*r, *at);
            }
            let own = if config.joined {
                ReplicaId::metadata_learner(local.node)
            } else {
                voters
                    .iter()
                    .find(|(_, at)| *at == local)
                    .map(|(r, _)| *r)
                    .ok_or(CoreError::NotInSpec(local.node))?
            };
            let ids: Vec<ReplicaId> = voters.iter().map(|(r, _)| *r).collect();
            let persisted = recovered.remove(&GroupId::METADATA);
            // A brand-new node (no metadata log) hosts the spec's placement until the
            // metadata group has a table; a restarted one waits for its own replay. A node
            // that joined hosts what the metadata group's table gives it, once it has it.
            let empty = persisted
                .as_ref()
                .is_none_or(|p| p.entries.is_empty() && p.snapshot.is_none());
            let fresh = empty && !config.joined;
            if config.joined && empty {
                host.add_joining_group(
                    GroupId::METADATA,
                    own,
                    &ids,
                    &[],
                    Cell::Meta(MetadataStore::new()),
                )?;
            } else {
                host.add_group(
                    GroupId::METADATA,
                    own,
                    &ids,
                    persisted,
                    Cell::Meta(MetadataStore::new()),
                )?;
            }
            let mut hosting = Hosting::new(local, std::mem::take(&mut recovered));
            let mut c = Coordinator {
                distributed: None,
                undelivered: BTreeSet::new(),
                refused: BTreeSet::new(),
                seen_epoch: Epoch(0),
                distribute_after: None,
                bootstrap_asked: None,
                mover: Mover::new(&config.spec)?,
                balancer: Balancer::new(&config.spec, local.node, config.balance)?,
                liveness: Liveness::new(local.node, config.incarnation, 0),
                members_version: None,
                dead_after: config.balance.dead_after,
                leading: false,
                join_asked: None,
                suspected: BTreeSet::new(),
                wakes_refused: Vec::new(),
            };
            if fresh {
                let table = Arc::new(config.spec.initial_table()?);
                hosting.apply(table.clone(), &mut host, &mut log)?;
                c.mover.on_table(&table);
                c.balancer.on_table(&table, Time::ZERO);
                c.undelivered = (1..config.spec.cores).map(CoreId).collect();
                c.distributed = Some(table);
            }
            coordinator = Some(c);
            hosting
        } else {
            Hosting::new(local, recovered)
        };
        Ok(NodeCore {
            local,
            keys: VShardMap::new(config.spec.groups)?,
            load: LoadMeter::new(),
            spec: config.spec,
            host,
            hosting,
            assembler: SnapshotAssembler::new(),
            writing_ahead: BTreeMap::new(),
            closing: std::collections::BTreeSet::new(),
            garbage: Vec::new(),
            large_snapshot_bytes: config.snapshots.large_bytes,
            pending: BTreeMap::new(),
            traces: Traces::default(),
            issued: VecDeque::new(),
            next_token: 1,
            now: Time::ZERO,
            replies: VecDeque::new(),
            mail: VecDeque::new(),
            log,
            in_flight: None,
            transmits: VecDeque::new(),
            calls: VecDeque::new(),
            audit: config.audit.then(VecDeque::new),
            coordinator,
            counters: [0; CoreCounter::ALL.len()],
            commit_latency: LocalTimeHistogram::default(),
            leaderships_logged: (None, (0, 0)),
            bug: config.bug,
            failure: None,
        })
    }

    // ---- inputs -------------------------------------------------------------------------

    /// Time passed: Raft ticks, requests that waited too long are answered, the migration
    /// executor and the bootstrap take their next step.
    pub fn handle_timeout(&mut self, now: Time) {
        self.now = now;
        self.restore_ahead();
        self.host.handle_tick(now);
        self.assembler.expire(now);
        self.expire_streams(now);
        self.expire_requests(now);
        self.coordinate(now);
        self.load.tick(now, &self.host);
        self.log_leaderships(now);
    }

    /// One line a second at most for the leaderships won and lost here: at start-up, or
    /// when a node fails, thousands of groups elect, and a line each would drown the rest.
    fn log_leaderships(&mut self, now: Time) {
        let (due, logged) = &mut self.leaderships_logged;
        if due.is_some_and(|due| now < due) {
            return;
        }
        *due = Some(now + LOAD_TICK);
        let (won, lost) = self.host.leaderships();
        let (won_then, lost_then) = std::mem::replace(logged, (won, lost));
        if (won, lost) != (won_then, lost_then) {
            info!(
                node = self.local.node.0,
                core = self.local.core.0,
                won = won - won_then,
                lost = lost - lost_then,
                leading = self.host.leader_count(),
                "leaderships changed here since the last such line"
            );
        }
    }

    /// This core's load over the load tick that last ended (`LOAD_TICK`), once per tick.
    pub fn poll_load(&mut self) -> Option<CoreLoad> {
        self.load.take()
    }

    /// The load `poll_load` gave, with the shell's busy fraction and migration rate filled
    /// in: it goes to core 0 for the node's load report.
    pub fn handle_load(&mut self, load: CoreLoad) {
        match self.coordinator.as_mut() {
            Some(c) => c.balancer.on_core_load(self.local.core, load),
            None => {
                let core = self.local.core;
                self.mail.push_back((CoreId(0), Mail::Load { core, load }));
            }
        }
    }

    /// A request from a holder of `role`, answered through `reply` (now, or after a commit
    /// or read index).
    pub fn handle_request(&mut self, now: Time, request: KvRequest, reply: R, role: Role) {
        self.now = now;
        if let Err(answer) = check_op(&request) {
            return self.answer(reply, request.id, answer);
        }
        if self.host.replica_id(request.group).is_some() {
            return self.take(request, reply, role);
        }
        match self.hosting.home(request.group) {
            Some(home) if home != self.local.core => {
                // Right node, wrong core: hand it over.
                let mail = Mail::Request {
                    request,
                    reply,
                    role,
                };
                self.mail.push_back((home, mail));
            }
            _ => self.not_here(request, reply),
        }
    }

    /// Mail from another core of this node.
    pub fn handle_mail(&mut self, now: Time, mail: Mail<R>) {
        self.now = now;
        match mail {
            // Forwarded once: if this core does not host the group either, the node is
            // behind or the client's table is stale.
            Mail::Request {
                request,
                reply,
                role,
            } => {
                if self.host.replica_id(request.group).is_some() {
                    self.take(request, reply, role);
                } else {
                    self.not_here(request, reply);
                }
            }
            Mail::Table(table) => self.apply_table(table),
            Mail::Load { core, load } => {
                if let Some(c) = self.coordinator.as_mut() {
                    c.balancer.on_core_load(core, load);
                }
            }
            Mail::Suspected(node, true) => self.wake_followers_of(node),
            Mail::Suspected(node, false) => self.node_recovered(node),
        }
    }

    /// Wakes this core's quiesced followers whose leader is on `node`.
    fn wake_followers_of(&mut self, node: NodeId) {
        let woken = self.host.wake_followers_of(node);
        self.log_woken(
            node,
            woken,
            "woke quiesced groups led from a suspected node",
        );
    }

    fn node_recovered(&mut self, node: NodeId) {
        let woken = self.host.node_recovered(node);
        let what = "woke quiesced leaders to catch up their replicas on a recovered node";
        self.log_woken(node, woken, what);
    }

    fn log_woken(&self, node: NodeId, groups: usize, what: &str) {
        if groups > 0 {
            info!(core = self.local.core.0, node = node.0, groups, "{what}");
        }
    }

    /// Mail this core handed out could not be delivered (the other core's inbox is full).
    pub fn handle_mail_refused(&mut self, core: CoreId, mail: Mail<R>) {
        match mail {
            Mail::Request { request, reply, .. } => {
                let answer = KvReply::Error(format!("busy: core {} cannot take more", core.0));
                self.answer(reply, request.id, answer);
            }
            Mail::Table(_) => {
                if let Some(c) = self.coordinator.as_mut() {
                    c.refused.insert(core);
                }
            }
            // The next tick's load replaces it.
            Mail::Load { .. } => {}
            Mail::Suspected(node, suspected) => {
                if let Some(c) = self.coordinator.as_mut() {
                    c.wakes_refused.push((core, node, suspected));
                }
            }
        }
    }

    /// A `RaftBatch` payload from a peer. Malformed bytes are refused whole.
    pub fn handle_raft_batch(
        &mut self,
        now: Time,
        from: NodeId,
        payload: &[u8],
    ) -> Result<(), DecodeError> {
        self.now = now;
        if let Some(c) = self.coordinator.as_mut() {
            c.liveness.heard_from(now, from);
        }
        for (group, message) in decode_batch(payload)? {
            let group = GroupId(group);
            // While a snapshot of the group is written ahead, the replica's log is the one
            // the snapshot replaces: it would reject the leader's appends, and the leader
            // would answer with the snapshot again. Those wait for the install instead (a
            // follower that does not answer for a while is one Raft expects).
            // (A snapshot still streaming in lets them through: it may never complete.)
            if self
                .writing_ahead
                .range((group, 0)..=(group, u64::MAX))
                .any(|(_, w)| w.message.is_some())
                && matches!(
                    message.get_msg_type(),
                    MessageType::MsgAppend | MessageType::MsgHeartbeat
                )
            {
                continue;
            }
            // The message of a snapshot streaming in joins it there.
            if message.get_msg_type() == MessageType::MsgSnapshot {
                let key = (group, message.get_snapshot().get_metadata().index);
                if let Some(w) = self
                    .writing_ahead
                    .get_mut(&key)
                    .filter(|w| w.stream.is_some())
                {
                    w.from = from;
                    w.message.get_or_insert(message);
                    self.install_if_ready(key);
                    continue;
                }
            }
            // A snapshot waits here until its data is in.
            if let Some(message) = self.assembler.on_message(now, group, message) {
                self.deliver(group, from, message);
            }
        }
        if !self.traces.is_empty() {
            self.traces.on_progress(now, &self.host);
        }
        Ok(())
    }

    /// A message the assembler let through (a snapshot now whole, or any other): a large
    /// snapshot's file is written ahead first ([`LogWrite::SnapshotFile`]).
    fn deliver(&mut self, group: GroupId, from: NodeId, message: raft::eraftpb::Message) {
        let is_snapshot = message.get_msg_type() == MessageType::MsgSnapshot;
        let large = is_snapshot && message.get_snapshot().data.len() >= self.large_snapshot_bytes;
        // A large vShard snapshot is checked as it is decoded ahead (below).
        let decoded_ahead = large && self.host.state_machine(group).and_then(Cell::kv).is_some();
        // raft-rs takes a snapshot's metadata as installed before the state machine reads
        // its data: data that does not decode must never reach it (the replica would
        // record the snapshot's commit index over a log that lacks it).
        if is_snapshot
            && !decoded_ahead
            && let Err(e) = check_snapshot(group, &message.get_snapshot().data)
        {
            return self.refuse_snapshot(group, from, &e);
        }
        if !large {
            return self.step_raft(group, from, message);
        }
        let meta = message.get_snapshot().get_metadata();
        let (index, term) = (meta.index, meta.term);
        let key = (group, index);
        if let Some(waiting) = self.writing_ahead.get_mut(&key) {
            // Sent again while its file is written: the same snapshot, one file.
            waiting.from = from;
            return;
        }
        if self.writing_ahead.len() >= SNAPSHOT_TRANSFERS_MAX {
            debug!(
                group = group.0,
                "snapshot dropped: too many being written; the leader sends it again"
            );
            return;
        }
        let data = message.get_snapshot().data.clone();
        // A vShard's state is decoded a piece per turn (`restore_ahead`) while its file is
        // written, so installing it is O(1) on the core.
        let restore = match self.host.state_machine(group).and_then(Cell::kv) {
            Some(store) => match store.restore_from(index, data.clone()) {
                Ok(restore) => Some(restore),
                Err(e) => return self.refuse_snapshot(group, from, &e),
            },
            None => None,
        };
        self.log
            .push_back(LogWrite::SnapshotFile(SnapshotFileWrite {
                group,
                index,
                term,
                data,
            }));
        self.writing_ahead.insert(
            key,
            WritingAhead {
                from,
                message: Some(message),
                restore,
                written: false,
                stream: None,
            },
        );
    }

    fn refuse_snapshot(&mut self, group: GroupId, from: NodeId, e: &dyn std::fmt::Display) {
        self.count(CoreCounter::RaftMessagesRefused, 1);
        warn!(group = group.0, peer = from.0, error = %e, "snapshot refused: its data does not decode");
    }

    /// The file of a snapshot received for `group` at `index` ([`LogWrite::SnapshotFile`])
    /// is durable (`written`), or could not be written: Raft gets the snapshot once its
    /// state is decoded too, or it is dropped (the leader sends it again).
    pub fn handle_snapshot_file_written(
        &mut self,
        now: Time,
        group: GroupId,
        index: u64,
        written: bool,
    ) {
        self.now = now;
        let key = (group, index);
        if self.closing.remove(&key) {
            return;
        }
        if !written {
            if self.writing_ahead.remove(&key).is_some() {
                debug!(
                    group = group.0,
                    index, "snapshot dropped: its file could not be written"
                );
            }
            return;
        }
        if let Some(waiting) = self.writing_ahead.get_mut(&key) {
            waiting.written = true;
        }
        self.install_if_ready(key);
    }

    /// Decodes the states of snapshots written ahead, `SNAPSHOT_RESTORE_BYTES_PER_TURN`
    /// each per call; installs those whose file is durable and whose state is whole. A
    /// snapshot that does not decode is dropped before Raft sees it.
    fn restore_ahead(&mut self) {
        let keys: Vec<(GroupId, u64)> = self
            .writing_ahead
            .iter()
            .filter(|(_, w)| w.restore.as_ref().is_some_and(KvRestore::can_step))
            .map(|(k, _)| *k)
            .collect();
        for key in keys {
            let Some(w) = self.writing_ahead.get_mut(&key) else {
                continue;
            };
            let Some(restore) = w.restore.as_mut() else {
                continue;
            };
            match restore.step(SNAPSHOT_RESTORE_BYTES_PER_TURN) {
                Ok(false) => {}
                Ok(true) => self.install_if_ready(key),
                Err(e) => {
                    let from = w.from;
                    self.drop_written_ahead(key);
                    self.refuse_snapshot(key.0, from, &e);
                }
            }
        }
    }

    /// Forgets a snapshot being written ahead; a streamed one's file is abandoned (its
    /// writer may still be at work).
    fn drop_written_ahead(&mut self, key: (GroupId, u64)) {
        let Some(w) = self.writing_ahead.remove(&key) else {
            return;
        };
        if let Some(stream) = w.stream
            && !w.written
        {
            let (group, index) = key;
            self.log.push_back(LogWrite::SnapshotFileAbandon {
                group,
                index,
                term: stream.term,
            });
            // Its writer reports once more (written, failed or abandoned): until then no
            // new stream of the same snapshot begins, so that report is not taken for it.
            self.closing.insert(key);
        }
    }

    /// Whether a snapshot written ahead still has state to decode (the core wants another
    /// turn at once).
    fn restoring(&self) -> bool {
        self.writing_ahead
            .values()
            .any(|w| w.restore.as_ref().is_some_and(KvRestore::can_step))
    }

    /// Hands Raft the snapshot at `key` if its file is durable and its state decoded.
    fn install_if_ready(&mut self, key: (GroupId, u64)) {
        let ready = self.writing_ahead.get(&key).is_some_and(|w| {
            w.written && w.message.is_some() && w.restore.as_ref().is_none_or(KvRestore::done)
        });
        if !ready {
            return;
        }
        let Some(w) = self.writing_ahead.remove(&key) else {
            return;
        };
        let Some(message) = w.message else {
            return;
        };
        let (group, index) = key;
        if let Some(restore) = w.restore {
            match restore.finish() {
                Ok(store) => self.host.prepare_restore(group, index, Cell::Kv(store)),
                Err(e) => return self.refuse_snapshot(group, w.from, &e),
            }
        }
        self.step_raft(group, w.from, message);
    }

    /// A `BulkChunk` payload: part of a snapshot streamed out of band. A streamed
    /// snapshot's state keeps slices of `payload` itself, not copies: hand it a buffer
    /// without spare capacity.
    pub fn handle_snapshot_chunk(
        &mut self,
        now: Time,
        from: NodeId,
        payload: bytes::Bytes,
    ) -> Result<(), TransferError> {
        self.now = now;
        let header = chunk_header(&payload)?;
        if self.streams_in(&header) {
            return self.stream_chunk(from, header, &payload);
        }
        if let Some((group, message)) = self.assembler.on_chunk(now, &payload)? {
            debug!(group = group.0, from = from.0, "snapshot received whole");
            self.deliver(group, from, message);
        }
        Ok(())
    }

    /// Whether a chunk belongs to a snapshot decoded and written as it arrives: a large
    /// one of a vShard hosted here, begun (its first chunk) or under way. Any other is
    /// assembled whole first.
    fn streams_in(&self, h: &ChunkHeader) -> bool {
        let key = (h.group, h.index);
        if let Some(w) = self.writing_ahead.get(&key) {
            return w.stream.is_some();
        }
        h.offset == 0
            && h.total >= self.large_snapshot_bytes as u64
            && !self.closing.contains(&key)
            && self
                .host
                .state_machine(h.group)
                .and_then(Cell::kv)
                .is_some()
    }

    /// One chunk of a streamed snapshot: to its file, and to its state's decoder.
    fn stream_chunk(
        &mut self,
        from: NodeId,
        h: ChunkHeader,
        payload: &bytes::Bytes,
    ) -> Result<(), TransferError> {
        let ChunkHeader {
            group,
            index,
            term,
            total,
            offset,
            data,
        } = h;
        if total > SNAPSHOT_MAX_BYTES {
            return Err(TransferError::TooLarge(total));
        }
        let key = (group, index);
        if !self.writing_ahead.contains_key(&key) {
            if self.writing_ahead.len() + self.assembler.in_progress() >= SNAPSHOT_TRANSFERS_MAX {
                return Err(TransferError::Busy);
            }
            let Some(store) = self.host.state_machine(group).and_then(Cell::kv) else {
                return Ok(());
            };
            let restore = store.restore_streaming(index);
            // Its message may have come first, and waits in the assembler.
            let message = self.assembler.take_message(group, index);
            self.log.push_back(LogWrite::SnapshotFileBegin {
                group,
                index,
                term,
                bytes: total,
            });
            self.writing_ahead.insert(
                key,
                WritingAhead {
                    from,
                    message,
                    restore: Some(restore),
                    written: false,
                    stream: Some(Streaming {
                        term,
                        received: 0,
                        total,
                        last_progress: self.now,
                    }),
                },
            );
        }
        let w = self.writing_ahead.get_mut(&key).expect("inserted above");
        let stream = w.stream.as_mut().expect("streams_in checked");
        if stream.received == stream.total {
            // Sent again while its file is written: the same snapshot, one file.
            w.from = from;
            return Ok(());
        }
        let expected = stream.received;
        if offset != expected
            || total != stream.total
            || term != stream.term
            || expected + data.len() as u64 > total
        {
            // A chunk out of place (the leader began again): this transfer is over.
            let stream_total = stream.total;
            self.drop_written_ahead(key);
            return Err(TransferError::OutOfOrder {
                offset,
                expected,
                total: stream_total,
            });
        }
        // The chunk's own buffer becomes the state's memory: no copy.
        let piece = payload.slice(data);
        stream.received += piece.len() as u64;
        stream.last_progress = self.now;
        w.from = from;
        let whole = stream.received == total;
        if let Some(restore) = w.restore.as_mut() {
            restore.feed(piece.clone());
            if whole {
                restore.end();
            }
        }
        self.log.push_back(LogWrite::SnapshotFilePiece {
            group,
            index,
            piece,
        });
        if whole {
            debug!(group = group.0, from = from.0, "snapshot streamed in whole");
            self.log
                .push_back(LogWrite::SnapshotFileEnd { group, index });
        }
        Ok(())
    }

    /// Gives up streamed snapshots that received nothing for `SNAPSHOT_TRANSFER_TIMEOUT`
    /// (their leader sends again), as the assembler does with whole ones.
    fn expire_streams(&mut self, now: Time) {
        let idle: Vec<(GroupId, u64)> = self
            .writing_ahead
            .iter()
            .filter(|(_, w)| {
                w.stream.as_ref().is_some_and(|s| {
                    (s.received < s.total || w.message.is_none())
                        && now.saturating_since(s.last_progress) >= SNAPSHOT_TRANSFER_TIMEOUT
                })
            })
            .map(|(k, _)| *k)
            .collect();
        for key in idle {
            debug!(
                group = key.0.0,
                index = key.1,
                "streamed snapshot given up: idle"
            );
            self.drop_written_ahead(key);
        }
    }

    /// A `Ping` payload: a failure-detector message from core 0 of node `from`. Other cores
    /// have no detector and ignore it; malformed bytes are refused whole.
    pub fn handle_liveness(
        &mut self,
        now: Time,
        from: NodeId,
        payload: &[u8],
    ) -> Result<(), DecodeError> {
        self.now = now;
        let message = liveness::Message::decode(payload)?;
        if let Some(c) = self.coordinator.as_mut() {
            c.liveness.handle_message(now, from, message);
        }
        Ok(())
    }

    /// The snapshot of `group` for `replica` was streamed in full (or failed: it is then
    /// sent again).
    pub fn handle_snapshot_sent(&mut self, group: GroupId, replica: ReplicaId, delivered: bool) {
        self.host.report_snapshot(group, replica, delivered);
    }

    /// The batch `id` handed out by `poll_log` is durable.
    pub fn handle_persisted(&mut self, now: Time, id: u64) {
        self.now = now;
        if self.in_flight == Some(id) {
            self.in_flight = None;
        }
        self.host.handle_persisted(id);
        if !self.traces.is_empty() {
            self.traces.on_durable(id, now, &self.host);
        }
        self.count(CoreCounter::WalBatches, 1);
        let due = self
            .coordinator
            .as_ref()
            .is_some_and(|c| c.distribute_after == Some(id));
        if due {
            self.distribute();
        }
    }

    /// What came of a request `poll_call` handed out.
    pub fn handle_call_reply(&mut self, now: Time, id: u64, reply: Result<KvReply, Failure>) {
        self.now = now;
        let store = self
            .host
            .state_machine(GroupId::METADATA)
            .and_then(Cell::meta);
        if let Some(c) = self.coordinator.as_mut()
            && Balancer::owns_call(id)
        {
            c.balancer.handle_reply(now, id, reply);
        } else if let (Some(c), Some(store)) = (self.coordinator.as_mut(), store) {
            c.mover.handle_reply(now, id, reply, store);
        }
        self.propose_move_ends();
    }

    /// The node is stopping: every waiting client hears that its outcome is unknown.
    pub fn shutdown(&mut self) {
        for (_, p) in std::mem::take(&mut self.pending) {
            if let Pending::Write { id, reply, .. } | Pending::Read { id, reply, .. } = p {
                self.count(CoreCounter::ClientErrors, 1);
                let answer = KvReply::Unknown("the node is shutting down".into());
                self.replies
                    .push_back((reply, KvResponseFrame::new(id, answer)));
            }
        }
    }

    // ---- outputs ------------------------------------------------------------------------

    /// The next log write (see the module documentation for the order).
    pub fn poll_log(&mut self) -> Option<LogWrite> {
        if self.in_flight.is_some() || self.failure.is_some() {
            return None;
        }
        if let Some(write) = self.log.pop_front() {
            return Some(write);
        }
        let batch = self.host.poll_persist();
        self.drain_host_events();
        match batch {
            Some(batch) => {
                self.in_flight = Some(batch.id);
                self.count(CoreCounter::WalRecords, batch.writes.len() as u64);
                if !self.traces.is_empty() {
                    self.traces.on_batch(batch.id, self.now);
                }
                self.note_table_change(Some(batch.id));
                Some(LogWrite::Persist(batch))
            }
            None => {
                // Entries applied without a batch had their commit durable already.
                self.note_table_change(None);
                self.log.pop_front()
            }
        }
    }

    /// The next thing to free: what a removed replica or a replaced state left behind.
    /// Freeing a large vShard takes tens of milliseconds (37 ms for 512 MiB on the
    /// development VM), so a shell drops it off the core; dropping it here is as correct.
    pub fn poll_garbage(&mut self) -> Option<Garbage> {
        if self.garbage.is_empty() {
            self.garbage = self.host.take_discarded();
        }
        self.garbage.pop().map(|d| Garbage { _held: Box::new(d) })
    }

    /// The next answer to a client.
    pub fn poll_reply(&mut self) -> Option<(R, KvResponseFrame)> {
        self.replies.pop_front()
    }

    /// The next mail for another core of this node.
    pub fn poll_mail(&mut self) -> Option<(CoreId, Mail<R>)> {
        if let Some(mail) = self.mail.pop_front() {
            return Some(mail);
        }
        let c = self.coordinator.as_mut()?;
        let table = c.distributed.clone()?;
        let core = c.undelivered.pop_first()?;
        Some((core, Mail::Table(table)))
    }

    /// The node is stopping: hands leadership of every group this core leads to another
    /// replica (`RaftHost::hand_off_leaderships`); returns how many transfers began. The
    /// shell calls it again while leaderships remain (a transfer whose target did not
    /// catch up in an election timeout is given up by raft-rs).
    pub fn hand_off_leaderships(&mut self) -> usize {
        self.host.hand_off_leaderships()
    }

    /// The next bytes for a peer core: this turn's Raft messages, one batch per peer.
    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        if self.transmits.is_empty() {
            self.gather_transmits();
        }
        self.transmits.pop_front()
    }

    /// The next request of the migration executor.
    pub fn poll_call(&mut self) -> Option<OutgoingCall> {
        if self.calls.is_empty()
            && let Some(c) = self.coordinator.as_mut()
        {
            self.calls.extend(c.mover.take_sends());
            self.calls.extend(c.balancer.take_sends());
        }
        let (to, request) = self.calls.pop_front()?;
        Some(OutgoingCall { to, request })
    }

    /// The next audit event (with `audit` on).
    pub fn poll_audit(&mut self) -> Option<Audit> {
        self.audit.as_mut()?.pop_front()
    }

    /// When `handle_timeout` is next due.
    pub fn poll_timeout(&self) -> Option<Time> {
        let expiry = self
            .issued
            .front()
            .map(|(_, at)| *at + CLIENT_REQUEST_TIMEOUT);
        let mover = self
            .coordinator
            .as_ref()
            .filter(|c| c.leading)
            .and_then(|c| c.mover.poll_timeout());
        let balancer = self
            .coordinator
            .as_ref()
            .and_then(|c| c.balancer.poll_timeout());
        let liveness = self
            .coordinator
            .as_ref()
            .and_then(|c| c.liveness.poll_timeout());
        let restoring = self.restoring().then_some(self.now);
        [
            self.host.next_tick(),
            expiry,
            mover,
            balancer,
            liveness,
            restoring,
        ]
        .into_iter()
        .flatten()
        .min()
    }

    // ---- state for the shell, metrics and checkers -----------------------------------------

    /// The first error that stopped this core; the shell stops the node on it.
    pub fn failure(&self) -> Option<&str> {
        self.failure.as_deref()
    }

    pub fn host(&self) -> &RaftHost<Cell> {
        &self.host
    }

    /// The latest placement table this core applied.
    pub fn table(&self) -> Option<&Arc<PlacementTable>> {
        self.hosting.table()
    }

    /// The metadata group's state on this core (core 0 only).
    pub fn metadata(&self) -> Option<&MetadataStore> {
        self.host
            .state_machine(GroupId::METADATA)
            .and_then(Cell::meta)
    }

    /// What this node knows of the cluster (`KvOp::Cluster`): the spec it was
    /// bootstrapped with and the members its metadata replica records.
    pub fn cluster_info(&self) -> ClusterInfo {
        ClusterInfo {
            founders: self.spec.nodes.clone(),
            cores: self.spec.cores,
            groups: self.spec.groups,
            replicas: self.spec.replicas,
            nodes: self
                .metadata()
                .map(|m| m.topology().nodes().cloned().collect())
                .unwrap_or_default(),
        }
    }

    /// The failure detector (core 0).
    pub fn liveness(&self) -> Option<&Liveness> {
        self.coordinator.as_ref().map(|c| &c.liveness)
    }

    /// How long the writes this core's leader replicas answered took from taken to
    /// committed and applied (cumulative, for the shell to mirror).
    pub fn commit_latency(&self) -> &LocalTimeHistogram {
        &self.commit_latency
    }

    pub fn counter(&self, counter: CoreCounter) -> u64 {
        let mover = self.coordinator.as_ref().map(|c| &c.mover);
        let probes = self.liveness().map(|l| l.stats);
        let stats = self.balancer_stats();
        let stat = |f: fn(&BalancerStats) -> u64| stats.map_or(0, f);
        match counter {
            CoreCounter::LeadershipsWon => self.host.leaderships().0,
            CoreCounter::LeadershipsLost => self.host.leaderships().1,
            CoreCounter::MoveSteps => mover.map_or(0, |m| m.steps),
            CoreCounter::MovesEnded => mover.map_or(0, |m| m.ended),
            CoreCounter::MovesAbandoned => mover.map_or(0, |m| m.abandoned),
            CoreCounter::RebalancerReplicaMoves => stat(|s| s.replica_moves_started),
            CoreCounter::RebalancerLeaderTransfers => stat(|s| s.leader_transfers_started),
            CoreCounter::RebalancerLeaderTransfersFailed => stat(|s| s.leader_transfers_failed),
            CoreCounter::LoadReportsReceived => stat(|s| s.reports_received),
            CoreCounter::LoadReportsRefused => stat(|s| s.reports_refused),
            CoreCounter::LivenessProbes => probes.map_or(0, |p| p.probes),
            CoreCounter::LivenessProbesFailed => probes.map_or(0, |p| p.probes_failed),
            CoreCounter::LivenessProbesExcused => probes.map_or(0, |p| p.probes_excused),
            CoreCounter::LivenessBlindMillis => {
                probes.map_or(0, |p| p.blind_time.as_millis() as u64)
            }
            counter => self.counters[counter as usize],
        }
    }

    /// The rebalancer's view, where this core coordinates (core 0 of the metadata leader).
    pub fn balancer_status(&self) -> Option<BalancerStatus> {
        let c = self.coordinator.as_ref().filter(|c| c.leading)?;
        Some(c.balancer.status(self.now, self.metadata()?))
    }

    /// What this core's balancer has done (core 0; counts while it coordinated).
    pub fn balancer_stats(&self) -> Option<&BalancerStats> {
        Some(&self.coordinator.as_ref()?.balancer.stats)
    }

    /// Node and core max / mean of the coordinator's last sweep (core 0 of the leader).
    pub fn imbalance(&self) -> Option<(f64, f64)> {
        let c = self.coordinator.as_ref().filter(|c| c.leading)?;
        Some(c.balancer.imbalance())
    }

    /// The best node max / mean reachable (the heaviest vShard cannot be split), as the
    /// coordinator last computed it (core 0 of the leader).
    pub fn node_bound(&self) -> Option<f64> {
        let c = self.coordinator.as_ref().filter(|c| c.leading)?;
        Some(c.balancer.node_bound())
    }

    /// The rebalancer loop's metrics (core 0).
    pub fn rebalancer_metrics(&self) -> Option<&Arc<crate::metrics::loops::LoopMetrics>> {
        Some(self.coordinator.as_ref()?.balancer.loop_metrics())
    }

    /// Client requests waiting for a commit or a read index.
    pub fn pending_requests(&self) -> usize {
        self.pending.len()
    }

    /// Groups this core leads.
    pub fn leader_groups(&self) -> usize {
        self.host.leader_count()
    }

    /// Groups whose replica here knows no leader (a walk over the groups).
    pub fn leaderless_groups(&self) -> usize {
        self.host.leaderless_groups()
    }

    /// Groups whose replica here is quiesced (a walk over the groups).
    pub fn quiesced_groups(&self) -> usize {
        self.host.quiesced_groups()
    }

    /// How many groups here slept and how many knew no leader at the last load tick: the
    /// tick's own walk, which it skips while nothing changed (no walk of its own).
    pub fn load_tick_counts(&self) -> GroupCounts {
        self.load.group_counts()
    }

    /// Replicas this core hosts (the metadata group included).
    pub fn replicas(&self) -> usize {
        self.host.group_count()
    }

    // ---- internals ----------------------------------------------------------------------

    fn count(&mut self, counter: CoreCounter, n: u64) {
        self.counters[counter as usize] += n;
    }

    fn answer(&mut self, reply: R, id: u64, answer: KvReply) {
        let counter = match &answer {
            KvReply::Moved { .. } | KvReply::NotLeader(_) => Some(CoreCounter::ClientRedirects),
            KvReply::Error(_) | KvReply::Unknown(_) => Some(CoreCounter::ClientErrors),
            _ => None,
        };
        if let Some(counter) = counter {
            self.count(counter, 1);
        }
        self.replies
            .push_back((reply, KvResponseFrame::new(id, answer)));
    }

    /// A request for a group no core of this node hosts: a stale-epoch redirect (the
    /// client's table, or this node's, is stale), or an error for a group that does not
    /// exist.
    fn not_here(&mut self, request: KvRequest, reply: R) {
        let answer = match self.hosting.table() {
            Some(t) if t.group(request.group).is_none() && t.epoch() > Epoch(0) => {
                KvReply::Error(format!("group {} does not exist", request.group.0))
            }
            t => KvReply::Moved {
                epoch: t.map_or(0, |t| t.epoch().0),
            },
        };
        self.answer(reply, request.id, answer);
    }

    /// Takes a request for a group this core hosts.
    fn take(&mut self, request: KvRequest, reply: R, role: Role) {
        self.count(CoreCounter::ClientRequests, 1);
        let (id, group) = (request.id, request.group);
        if let Err(refusal) = self.permitted(role, group, &request.op) {
            warn!(
                node = self.local.node.0,
                core = self.local.core.0,
                %role,
                group = group.0,
                %refusal,
                "request refused"
            );
            self.count(CoreCounter::ClientRefusals, 1);
            return self.answer(reply, id, KvReply::Forbidden(refusal));
        }
        if self.pending.len() >= CLIENT_PENDING_MAX {
            let answer = KvReply::Error("server busy: too many requests in flight".into());
            return self.answer(reply, id, answer);
        }
        let token = ProposalToken(self.next_token);
        self.next_token += 1;
        if group != GroupId::METADATA {
            let writes = matches!(request.op, KvOp::Write { .. });
            if writes || matches!(request.op, KvOp::Get { .. } | KvOp::Scan { .. }) {
                self.load.on_request(group, writes);
            }
        }
        let since = self.now;
        let traced = request.trace && matches!(request.op, KvOp::Write { .. });
        match self.start(group, request.op, token) {
            Ok(Wait::Commit) => {
                if traced && let Some(index) = self.host.last_index(group) {
                    self.traces.start(token.0, group, index, since);
                }
                self.wait(token, Pending::Write { id, reply, since })
            }
            Ok(Wait::ReadIndex(op)) => self.wait(
                token,
                Pending::Read {
                    id,
                    group,
                    op,
                    reply,
                    since,
                },
            ),
            Err(answer) => self.answer(reply, id, answer),
        }
    }

    /// Whether a holder of `role` may ask `op` of `group`; the reason when not.
    ///
    /// Data reads and writes and the placement table: everyone. Running the cluster — a
    /// group's view, a voter's durable commit, a leader transfer, the operator's metadata
    /// commands (`start_move`, `abandon_move`, `node_state`) — an admin or a node. A
    /// membership change: only a node (the migration executor), and only the changes the
    /// group's recorded move implies. No one may send `bootstrap` or `end_move`: a core
    /// proposes those itself.
    fn permitted(&self, role: Role, group: GroupId, op: &KvOp) -> Result<(), String> {
        let needs_admin = |what: &str| {
            if role.administers() {
                Ok(())
            } else {
                Err(format!("{what} needs an admin or node certificate"))
            }
        };
        match op {
            KvOp::Get { .. }
            | KvOp::Scan { .. }
            | KvOp::Routing
            | KvOp::Moves
            | KvOp::Status
            | KvOp::Cluster => Ok(()),
            KvOp::LoadReport { .. } => match role {
                Role::Node(_) => Ok(()),
                _ => Err("load reports come from nodes".into()),
            },
            KvOp::Write { .. } if group != GroupId::METADATA => Ok(()),
            KvOp::Write { command } => match MetadataCommand::decode(command) {
                // Malformed: refused with its decode error when started.
                Err(_) => Ok(()),
                Ok(MetadataCommand::StartMove { .. }) => needs_admin("start_move"),
                Ok(MetadataCommand::AbandonMove { .. }) => needs_admin("abandon_move"),
                Ok(MetadataCommand::SetNodeState { .. }) => needs_admin("node_state"),
                // A node adds itself (`start --join`); an admin may add any.
                Ok(MetadataCommand::AddNode { node }) => match role {
                    Role::Node(n) if n == node.node_id => Ok(()),
                    Role::Node(n) => Err(format!(
                        "node {n}'s certificate cannot add node {}",
                        node.node_id
                    )),
                    _ => needs_admin("add_node"),
                },
                Ok(c @ (MetadataCommand::Bootstrap { .. } | MetadataCommand::EndMove { .. })) => {
                    Err(format!("{} is proposed by the cluster itself", c.name()))
                }
            },
            KvOp::View { .. } => needs_admin("a group's view"),
            KvOp::DurableCommit => needs_admin("a durable commit index"),
            KvOp::TransferLeader { .. } => needs_admin("a leader transfer"),
            KvOp::ChangeMembership { changes } => {
                if !matches!(role, Role::Node(_)) {
                    return Err(
                        "membership changes come from the migration executor (a node)".into(),
                    );
                }
                let pending = self
                    .hosting
                    .table()
                    .and_then(|t| t.group(group))
                    .and_then(|p| p.moving);
                let Some(m) = pending else {
                    return Err(format!("group {} is not moving a replica", group.0));
                };
                let implied = |c: &MembershipChange| match *c {
                    MembershipChange::AddLearner(r) | MembershipChange::AddVoter(r) => r == m.new,
                    MembershipChange::Remove(r) => r == m.new || r == m.from,
                };
                match changes.iter().find(|c| !implied(c)) {
                    None => Ok(()),
                    Some(c) => Err(format!(
                        "{c:?} is not a step of group {}'s move of replica {} to {}",
                        group.0, m.from.0, m.new.0
                    )),
                }
            }
        }
    }

    /// Starts what `op` asks of the hosted `group`: what it now waits for, or the answer
    /// to give at once (not only errors: admin requests are answered at once).
    fn start(&mut self, group: GroupId, op: KvOp, token: ProposalToken) -> Result<Wait, KvReply> {
        match op {
            KvOp::Write { command } if group == GroupId::METADATA => {
                match MetadataCommand::decode(&command) {
                    Err(e) => Err(KvReply::Error(format!("malformed metadata command: {e}"))),
                    // `permitted` let through only the operator's commands.
                    Ok(_) => self.propose(group, command, token).map(|()| Wait::Commit),
                }
            }
            KvOp::Write { command } => {
                let c = KvCommand::decode(&command)
                    .map_err(|e| KvReply::Error(format!("malformed command: {e}")))?;
                c.validate().map_err(|e| KvReply::Error(e.to_string()))?;
                self.check_owner(c.key(), group)?;
                if self.bug == Some(NodeBug::AckWriteBeforeCommit)
                    && matches!(c, KvCommand::Put { .. })
                {
                    // The bug: the client hears "done" before a quorum has the entry.
                    self.propose(group, command, ProposalToken(0))?;
                    return Err(KvReply::Written(KvResponse::Done.encode()));
                }
                self.propose(group, command, token).map(|()| Wait::Commit)
            }
            KvOp::Get { key } if self.bug == Some(NodeBug::ReadWithoutReadIndex) => {
                self.check_owner(&key, group)?;
                // The bug: answer from this replica's state, whoever it is.
                let value = self
                    .host
                    .state_machine(group)
                    .and_then(Cell::kv)
                    .and_then(|s| s.get(&key).map(<[u8]>::to_vec));
                self.count(CoreCounter::ReadsServed, 1);
                Err(KvReply::Value(value))
            }
            KvOp::Get { ref key } if group != GroupId::METADATA => {
                self.check_owner(key, group)?;
                match self.host.read(group, token) {
                    Ok(()) => Ok(Wait::ReadIndex(op)),
                    Err(e) => Err(self.host_error(e)),
                }
            }
            op @ (KvOp::Get { .. } | KvOp::Scan { .. } | KvOp::Routing | KvOp::Moves) => {
                match self.host.read(group, token) {
                    Ok(()) => Ok(Wait::ReadIndex(op)),
                    Err(e) => Err(self.host_error(e)),
                }
            }
            KvOp::View { new } => {
                self.host
                    .ensure_leader(group)
                    .map_err(|e| self.host_error(e))?;
                let view = self
                    .host
                    .replica_id(group)
                    .and_then(|leader| leader_view(&self.host, group, leader, new));
                Err(view.map_or_else(
                    || KvReply::Error("the leader's view is unavailable".into()),
                    KvReply::View,
                ))
            }
            // Fire and forget: the executor reads the outcome from later views.
            KvOp::ChangeMembership { changes } => {
                let changed = self
                    .host
                    .change_membership(group, &changes, ProposalToken(0));
                changed.map_err(|e| self.host_error(e))?;
                Err(KvReply::Accepted)
            }
            KvOp::TransferLeader { to } => {
                let transferred = self.host.transfer_leader(group, to);
                transferred.map_err(|e| self.host_error(e))?;
                Err(KvReply::Accepted)
            }
            KvOp::DurableCommit => {
                Err(KvReply::Index(self.host.durable_commit(group).unwrap_or(0)))
            }
            KvOp::LoadReport { report } => {
                self.host
                    .ensure_leader(group)
                    .map_err(|e| self.host_error(e))?;
                let report = NodeReport::decode(&report)
                    .map_err(|e| KvReply::Error(format!("malformed load report: {e}")))?;
                let store = self
                    .host
                    .state_machine(GroupId::METADATA)
                    .and_then(Cell::meta)
                    .filter(|m| m.is_bootstrapped())
                    .ok_or_else(not_bootstrapped)?;
                let Some(c) = self.coordinator.as_mut() else {
                    return Err(KvReply::Error("load reports go to core 0".into()));
                };
                match c.balancer.handle_report(self.now, report, store) {
                    Ok(()) => Err(KvReply::Accepted),
                    Err(e) => Err(KvReply::Error(format!("load report refused: {e}"))),
                }
            }
            KvOp::Cluster => {
                let info = self.cluster_info();
                let json = serde_json::to_vec(&info)
                    .map_err(|e| KvReply::Error(format!("cluster: {e}")))?;
                Err(KvReply::Value(Some(json)))
            }
            KvOp::Status => {
                self.host
                    .ensure_leader(group)
                    .map_err(|e| self.host_error(e))?;
                let status = self.balancer_status().ok_or_else(not_bootstrapped)?;
                let json = serde_json::to_vec(&status)
                    .map_err(|e| KvReply::Error(format!("status: {e}")))?;
                Err(KvReply::Value(Some(json)))
            }
        }
    }

    /// A key must be sent to the group it hashes to: a client that counts groups otherwise
    /// (a stale or wrong `groups` setting) would split the keyspace, one key living in two
    /// groups with two values.
    fn check_owner(&self, key: &[u8], group: GroupId) -> Result<(), KvReply> {
        let owner = GroupId(u64::from(self.keys.vshard_of(key).0) + 1);
        if owner == group {
            return Ok(());
        }
        Err(KvReply::Error(format!(
            "the key belongs to group {} of the cluster's {}, not group {}: the client's `groups` setting differs from the cluster's",
            owner.0,
            self.keys.count(),
            group.0
        )))
    }

    /// A request waits under `token` for its commit or read index (or expiry).
    fn wait(&mut self, token: ProposalToken, pending: Pending<R>) {
        self.pending.insert(token.0, pending);
        self.issued.push_back((token.0, self.now));
    }

    /// Proposes `command` on `group` under `token`.
    fn propose(
        &mut self,
        group: GroupId,
        command: Vec<u8>,
        token: ProposalToken,
    ) -> Result<(), KvReply> {
        self.host
            .propose(group, command, token)
            .map_err(|e| self.host_error(e))
    }

    /// The answer to a request the host refused.
    fn host_error(&self, e: HostError) -> KvReply {
        match e {
            HostError::NotLeader { leader, .. } => KvReply::NotLeader(leader),
            HostError::UnknownGroup(_) => KvReply::Moved {
                epoch: self.hosting.table().map_or(0, |t| t.epoch().0),
            },
            e => KvReply::Error(e.to_string()),
        }
    }

    /// Steps a message from a replica on node `from`. One that fails screening is counted
    /// and dropped (logged at debug level only: a hostile peer must not flood the log).
    fn step_raft(&mut self, group: GroupId, from: NodeId, message: raft::eraftpb::Message) {
        self.count(CoreCounter::RaftMessagesIn, 1);
        match self.host.handle_message(group, from, message) {
            Ok(()) => {}
            Err(e @ HostError::Refused { .. }) => {
                self.count(CoreCounter::RaftMessagesRefused, 1);
                debug!(group = group.0, peer = from.0, error = %e, "raft message refused");
            }
            Err(e) => debug!(group = group.0, error = %e, "raft message dropped"),
        }
    }

    /// A proposal lost to a leader change never applies: its client hears, after a while,
    /// that the outcome is unknown.
    fn expire_requests(&mut self, now: Time) {
        while let Some(&(token, at)) = self.issued.front() {
            if now.saturating_since(at) < CLIENT_REQUEST_TIMEOUT {
                break;
            }
            self.issued.pop_front();
            match self.pending.remove(&token) {
                Some(Pending::Write { id, reply, .. } | Pending::Read { id, reply, .. }) => {
                    let answer = KvReply::Unknown("timed out waiting for commit".into());
                    self.answer(reply, id, answer);
                }
                Some(Pending::EndMove(group)) => {
                    if let Some(c) = self.coordinator.as_mut() {
                        c.mover.handle_end_applied(group, false);
                    }
                }
                None => {}
            }
        }
        if !self.traces.is_empty() {
            let pending = &self.pending;
            self.traces.retain(|token| pending.contains_key(&token));
        }
    }

    /// Answers what the host applied or made readable, and records audit events. Tokens
    /// answered meanwhile leave the front of the expiry queue.
    fn drain_host_events(&mut self) {
        self.drain_events();
        while let Some(&(token, _)) = self.issued.front()
            && !self.pending.contains_key(&token)
        {
            self.issued.pop_front();
        }
    }

    fn drain_events(&mut self) {
        while let Some(event) = self.host.poll_event() {
            match event {
                HostEvent::Applied {
                    token, response, ..
                } => match self.pending.remove(&token.0) {
                    Some(Pending::Write { id, reply, since }) => {
                        self.count(CoreCounter::WritesAcked, 1);
                        let took = self.now.saturating_since(since);
                        self.load.on_served(took);
                        self.commit_latency.observe(took);
                        self.replies.push_back((
                            reply,
                            KvResponseFrame {
                                id,
                                reply: KvReply::Written(response),
                                timing: self.traces.finish(token.0, self.now),
                            },
                        ));
                    }
                    Some(Pending::EndMove(group)) => {
                        if let Some(c) = self.coordinator.as_mut() {
                            c.mover
                                .handle_end_applied(group, response.first() == Some(&1));
                        }
                    }
                    // Reads are answered by `ReadReady`; their tokens never apply.
                    Some(Pending::Read { .. }) | None => {}
                },
                HostEvent::ReadReady { group, token } => {
                    if let Some(Pending::Read {
                        id,
                        op,
                        reply,
                        since,
                        ..
                    }) = self.pending.remove(&token.0)
                    {
                        self.count(CoreCounter::ReadsServed, 1);
                        self.load.on_served(self.now.saturating_since(since));
                        let answer = read_answer(self.host.state_machine(group), op);
                        self.replies
                            .push_back((reply, KvResponseFrame::new(id, answer)));
                    }
                }
                HostEvent::LeaderChanged {
                    group,
                    leader,
                    is_self,
                } => {
                    debug!(group = group.0, ?leader, is_self, "leader changed");
                    if !is_self {
                        self.redirect_reads(group);
                    }
                    if let (Some(audit), Some(leader), true) =
                        (self.audit.as_mut(), leader, is_self)
                    {
                        let term = self.host.term(group).unwrap_or(0);
                        audit.push_back(Audit::Leader {
                            group,
                            replica: leader,
                            term,
                        });
                    }
                }
                HostEvent::Committed {
                    group,
                    index,
                    term,
                    digest,
                } => {
                    if let Some(audit) = self.audit.as_mut() {
                        audit.push_back(Audit::Applied {
                            group,
                            index,
                            term,
                            digest,
                        });
                    }
                }
                HostEvent::MembershipChanged {
                    group,
                    voters,
                    learners,
                    joint,
                } => {
                    info!(
                        node = self.local.node.0,
                        core = self.local.core.0,
                        group = group.0,
                        ?voters,
                        ?learners,
                        joint,
                        "membership changed"
                    );
                }
            }
        }
    }

    /// This core no longer leads `group`: Raft dropped the read indexes it was waiting for,
    /// so its pending reads are answered now with a redirect to the new leader (a read has
    /// no effect; the client asks there) rather than after `CLIENT_REQUEST_TIMEOUT`. Writes
    /// keep waiting: an entry proposed here may still commit under the new leader, and is
    /// answered when this replica applies it.
    fn redirect_reads(&mut self, group: GroupId) {
        let tokens: Vec<u64> = self
            .pending
            .iter()
            .filter(|(_, p)| matches!(p, Pending::Read { group: g, .. } if *g == group))
            .map(|(t, _)| *t)
            .collect();
        if tokens.is_empty() {
            return;
        }
        let answer = match self.host.ensure_leader(group) {
            Ok(()) => return,
            Err(e) => self.host_error(e),
        };
        for token in tokens {
            if let Some(Pending::Read { id, reply, .. }) = self.pending.remove(&token) {
                self.answer(reply, id, answer.clone());
            }
        }
    }

    /// Drains the host's messages into one batch per peer core, snapshots split off.
    fn gather_transmits(&mut self) {
        let mut batches = Batches::default();
        while let Some(out) = self.host.poll_transmit() {
            self.count(CoreCounter::RaftMessagesOut, 1);
            let replica = ReplicaId(out.message.to);
            let (message, stream) = split(out.group, out.message, out.view);
            if let Some(stream) = stream {
                self.count(CoreCounter::SnapshotsSent, 1);
                self.transmits.push_back(Transmit::Snapshot {
                    to: out.to,
                    group: out.group,
                    replica,
                    stream,
                });
            }
            if let Some(full) = batches.push(out.to, out.group, message) {
                self.transmits.push_back(full);
            }
        }
        self.transmits.extend(batches.finish());
        if let Some(c) = self.coordinator.as_mut() {
            while let Some((node, message)) = c.liveness.poll_transmit() {
                let to = CoreAddress {
                    node,
                    core: CoreId(0),
                };
                let payload = message.encode();
                self.transmits.push_back(Transmit::Liveness { to, payload });
            }
        }
    }

    /// Core 0: remembers when a table the metadata group applied may be handed out — at
    /// once if its commit was already durable (`batch` is `None`), else after `batch`.
    fn note_table_change(&mut self, batch: Option<u64>) {
        let epoch = self.metadata().map(MetadataStore::epoch);
        let (Some(c), Some(epoch)) = (self.coordinator.as_mut(), epoch) else {
            return;
        };
        if epoch <= c.seen_epoch {
            return;
        }
        c.seen_epoch = epoch;
        match batch {
            Some(id) => c.distribute_after = Some(id),
            None => self.distribute(),
        }
    }

    /// Core 0: hands the metadata group's table to this core's hosting and to every other
    /// core of the node.
    fn distribute(&mut self) {
        let store = self
            .host
            .state_machine(GroupId::METADATA)
            .and_then(Cell::meta);
        let Some(store) = store.filter(|m| m.is_bootstrapped()) else {
            return;
        };
        let table = store.table();
        let now = self.now;
        let c = self.coordinator.as_mut().expect("core 0 coordinates");
        c.distribute_after = None;
        if c.distributed
            .as_ref()
            .is_some_and(|t| t.epoch() >= table.epoch())
        {
            return;
        }
        let table = Arc::new(table.clone());
        c.mover.on_table(&table);
        c.balancer.on_table(&table, now);
        c.distributed = Some(table.clone());
        c.undelivered = (1..self.spec.cores).map(CoreId).collect();
        self.apply_table(table);
    }

    fn apply_table(&mut self, table: Arc<PlacementTable>) {
        if let Err(e) = self.hosting.apply(table, &mut self.host, &mut self.log) {
            self.fail(format!("applying the placement table: {e}"));
        }
    }

    fn fail(&mut self, reason: String) {
        tracing::error!(node = self.local.node.0, core = self.local.core.0, %reason, "core stopped");
        self.failure.get_or_insert(reason);
    }

    /// Core 0's turn: the bootstrap of a new cluster, tables refused by full inboxes, and
    /// the migration executor while this core leads the metadata group.
    fn coordinate(&mut self, now: Time) {
        let leading = self.host.is_leader(GroupId::METADATA);
        let bootstrapped = self.metadata().is_some_and(MetadataStore::is_bootstrapped);
        let Some(c) = self.coordinator.as_mut() else {
            return;
        };
        let refused = std::mem::take(&mut c.refused);
        c.undelivered.extend(refused);
        if c.leading && !leading {
            c.mover.stand_down();
            c.liveness.stand_down();
        }
        c.leading = leading;
        let store = self
            .host
            .state_machine(GroupId::METADATA)
            .and_then(Cell::meta)
            .filter(|s| s.is_bootstrapped());
        // The detector watches every node of the topology not decommissioned (the spec's
        // nodes until the metadata group has a topology).
        let version = store.map(|s| s.topology().version());
        if c.members_version != version || version.is_none() {
            c.members_version = version;
            match store {
                Some(store) => c.liveness.set_members(
                    now,
                    store
                        .topology()
                        .nodes()
                        .filter(|n| n.state != NodeState::Decommissioned)
                        .map(|n| n.node_id),
                ),
                None => c
                    .liveness
                    .set_members(now, self.spec.nodes.iter().map(|(n, _)| *n)),
            }
        }
        c.liveness.handle_timeout(now);
        let suspected: BTreeSet<NodeId> = c
            .liveness
            .states()
            .filter(|(_, s)| *s != MemberState::Alive)
            .map(|(n, _)| n)
            .collect();
        let newly: Vec<NodeId> = suspected.difference(&c.suspected).copied().collect();
        let recovered: Vec<NodeId> = c.suspected.difference(&suspected).copied().collect();
        c.suspected = suspected;
        let cores = self.spec.cores;
        for (core, node, suspected) in std::mem::take(&mut c.wakes_refused) {
            self.mail
                .push_back((core, Mail::Suspected(node, suspected)));
        }
        for (node, suspected) in newly
            .iter()
            .map(|n| (*n, true))
            .chain(recovered.iter().map(|n| (*n, false)))
        {
            for core in (1..cores).map(CoreId) {
                self.mail
                    .push_back((core, Mail::Suspected(node, suspected)));
            }
        }
        let Some(c) = self.coordinator.as_mut() else {
            return;
        };
        if leading && let Some(store) = store {
            let dead_after = c.dead_after;
            for command in c
                .liveness
                .topology_changes(now, store.topology(), dead_after)
            {
                info!(?command, "failure detector: proposing a node state");
                let proposed =
                    self.host
                        .propose(GroupId::METADATA, command.encode(), ProposalToken(0));
                if let Err(e) = proposed {
                    debug!(error = %e, "node state not proposed");
                }
            }
        }
        for node in newly {
            self.wake_followers_of(node);
        }
        for node in recovered {
            self.node_recovered(node);
        }
        let Some(c) = self.coordinator.as_mut() else {
            return;
        };
        let store = self
            .host
            .state_machine(GroupId::METADATA)
            .and_then(Cell::meta);
        let current = self.host.leads_with_current_state(GroupId::METADATA);
        c.balancer.handle_timeout(now, leading, current, store);
        if !leading {
            return;
        }
        if bootstrapped {
            let store = store.expect("core 0 hosts the metadata group");
            c.mover.handle_timeout(now, store);
            self.propose_move_ends();
            self.propose_move_starts();
            self.admit_joined(now);
            return;
        }
        // The first leader bootstraps the cluster's shape (asked again if the proposal was
        // lost to a leader change).
        let due = c
            .bootstrap_asked
            .is_none_or(|t| now.saturating_since(t) > CLIENT_REQUEST_TIMEOUT);
        if !due {
            return;
        }
        c.bootstrap_asked = Some(now);
        match self.spec.bootstrap_command() {
            Ok(command) => {
                let command = command.encode();
                if let Err(e) = self
                    .host
                    .propose(GroupId::METADATA, command, ProposalToken(0))
                {
                    debug!(error = %e, "bootstrap not proposed; retrying");
                }
            }
            Err(e) => self.fail(format!("bootstrap: {e}")),
        }
    }

    /// The metadata leader's part in a join: a node the topology lists as joined but the
    /// metadata group does not is added as a learner; a `Joining` node whose learner has
    /// caught up with the log is made `Active`; a decommissioned one's learner is removed.
    /// Asked again at most once a second while nothing changes (a proposal lost to a
    /// leader change is made again).
    fn admit_joined(&mut self, now: Time) {
        let Some(store) = self.metadata() else {
            return;
        };
        let Some(membership) = self.host.membership(GroupId::METADATA) else {
            return;
        };
        let applied = store.applied_index();
        // Where the learners are (a leader must reach them; idempotent).
        let joined: Vec<NodeId> = store.joined_nodes().collect();
        let mut changes = Vec::new();
        let mut activate = Vec::new();
        for &node in &joined {
            let Some(info) = store.topology().node(node) else {
                continue;
            };
            let learner = ReplicaId::metadata_learner(node);
            if info.state == NodeState::Decommissioned {
                // Gone for good: the leader stops sending it the log.
                if membership.learners.contains(&learner) {
                    changes.push(MembershipChange::Remove(learner));
                }
                continue;
            }
            if !membership.voters.contains(&learner) && !membership.learners.contains(&learner) {
                changes.push(MembershipChange::AddLearner(learner));
            } else if info.state == NodeState::Joining
                && self
                    .host
                    .replication(GroupId::METADATA, learner)
                    .is_some_and(|(matched, _)| matched >= applied)
            {
                activate.push(node);
            }
        }
        for node in joined {
            self.host.set_address(
                ReplicaId::metadata_learner(node),
                CoreAddress::new(node, CoreId(0)),
            );
        }
        let Some(c) = self.coordinator.as_mut() else {
            return;
        };
        if changes.is_empty() && activate.is_empty() {
            return;
        }
        if c.join_asked
            .is_some_and(|t| now.saturating_since(t) < JOIN_RETRY)
        {
            return;
        }
        c.join_asked = Some(now);
        // One membership change at a time (raft-rs drops a second while one is pending).
        if let Some(&change) = changes.first() {
            info!(?change, "admitting a joined node to the metadata group");
            if let Err(e) =
                self.host
                    .change_membership(GroupId::METADATA, &[change], ProposalToken(0))
            {
                debug!(error = %e, "metadata learner not proposed");
            }
        }
        for node in activate {
            info!(
                node = node.0,
                "joined node caught up with the metadata log: making it Active"
            );
            let command = MetadataCommand::SetNodeState {
                node,
                state: NodeState::Active,
            };
            if let Err(e) = self
                .host
                .propose(GroupId::METADATA, command.encode(), ProposalToken(0))
            {
                debug!(error = %e, "node state not proposed");
            }
        }
    }

    /// Proposes the `start_move` commands the rebalancer decided, on this core. Fire and
    /// forget: one that does not apply stops counting against the move limits after
    /// `REBALANCE_PROPOSAL_TIMEOUT`.
    fn propose_move_starts(&mut self) {
        while let Some(command) = self
            .coordinator
            .as_mut()
            .and_then(|c| c.balancer.poll_start())
        {
            if let Err(e) = self.propose(GroupId::METADATA, command.encode(), ProposalToken(0)) {
                debug!(?e, "start_move not proposed");
            }
        }
    }

    /// Proposes the `end_move` commands the executor decided, on this core.
    fn propose_move_ends(&mut self) {
        while let Some((group, command)) =
            self.coordinator.as_mut().and_then(|c| c.mover.poll_end())
        {
            let token = ProposalToken(self.next_token);
            self.next_token += 1;
            match self.propose(GroupId::METADATA, command.encode(), token) {
                Ok(()) => self.wait(token, Pending::EndMove(group)),
                Err(_) => {
                    if let Some(c) = self.coordinator.as_mut() {
                        c.mover.handle_end_applied(group, false);
                    }
                }
            }
        }
    }
}

/// Whether `request`'s op fits its group: group 0 takes routing and moves reads and
/// metadata writes; data groups take everything else.
fn check_op(request: &KvRequest) -> Result<(), KvReply> {
    let is_meta = request.group == GroupId::METADATA;
    let meta_op = matches!(
        request.op,
        KvOp::Routing
            | KvOp::Moves
            | KvOp::Write { .. }
            | KvOp::LoadReport { .. }
            | KvOp::Status
            | KvOp::Cluster
    );
    let data_op = !matches!(
        request.op,
        KvOp::Routing | KvOp::Moves | KvOp::LoadReport { .. } | KvOp::Status | KvOp::Cluster
    );
    if (is_meta && meta_op) || (!is_meta && data_op) {
        Ok(())
    } else {
        Err(KvReply::Error(format!(
            "{:?} is not an operation on group {}",
            request.op, request.group.0
        )))
    }
}

/// The answer to a read once it is linearizable.
fn read_answer(state: Option<&Cell>, op: KvOp) -> KvReply {
    match (state, op) {
        (Some(Cell::Meta(m)), KvOp::Routing) => routing_reply(m),
        (Some(Cell::Meta(m)), KvOp::Moves) => moves_reply(m),
        (Some(Cell::Kv(s)), KvOp::Get { key }) => KvReply::Value(s.get(&key).map(<[u8]>::to_vec)),
        (Some(Cell::Kv(s)), KvOp::Scan { start, end, limit }) => {
            KvReply::Items(s.scan(&start, end.as_deref(), limit as usize))
        }
        _ => KvReply::Error("read lost its group".into()),
    }
}

/// Before the bootstrap applies there is no table to read: the read's outcome is not known
/// yet, and a client asks again (as it does a read whose answer was lost).
fn not_bootstrapped() -> KvReply {
    KvReply::Unknown("the cluster is not bootstrapped yet".into())
}

/// The placement table as the metadata group knows it.
fn routing_reply(m: &MetadataStore) -> KvReply {
    if !m.is_bootstrapped() {
        return not_bootstrapped();
    }
    KvReply::Routing {
        epoch: m.epoch().0,
        groups: m
            .table()
            .groups()
            .map(|(g, p)| (g, p.replicas.iter().map(|r| (r.id.0, r.at)).collect()))
            .collect(),
        nodes: node_addresses(m.topology()),
    }
}

/// Where each node of `topology` listens (nodes whose recorded address does not parse are
/// left out: the metadata group admits only parseable ones).
pub fn node_addresses(topology: &ClusterTopology) -> Vec<(NodeId, SocketAddr)> {
    topology
        .nodes()
        .filter_map(|n| Some((n.node_id, n.addr.parse().ok()?)))
        .collect()
}

/// The replica moves under way, as the metadata group knows them.
fn moves_reply(m: &MetadataStore) -> KvReply {
    if !m.is_bootstrapped() {
        return not_bootstrapped();
    }
    KvReply::Moves(
        m.table()
            .groups()
            .filter_map(|(g, p)| p.moving.map(|mv| (g, mv)))
            .collect(),
    )
}

/// A turn's Raft messages, gathered into one batch frame per peer core, cut into several
/// where a batch would outgrow `RAFT_BATCH_BYTES_MAX` or `RAFT_BATCH_MESSAGES_MAX`: raft-rs
/// may hand out many 1 MiB appends for one follower in a turn, and a frame over
/// `FRAME_PAYLOAD_MAX_BYTES` was refused by the encoder and lost whole.
#[derive(Default)]
struct Batches {
    /// Each peer's batch and its size so far (about: entry data, and a fixed overhead
    /// per message and entry).
    by_peer: BTreeMap<CoreAddress, (Vec<(u64, raft::eraftpb::Message)>, usize)>,
}

impl Batches {
    /// Adds a message; a batch it closed, if any.
    fn push(
        &mut self,
        to: CoreAddress,
        group: GroupId,
        message: raft::eraftpb::Message,
    ) -> Option<Transmit> {
        let size = 64
            + message
                .get_entries()
                .iter()
                .map(|e| e.data.len() + e.context.len() + 32)
                .sum::<usize>();
        let (batch, bytes) = self.by_peer.entry(to).or_default();
        let mut closed = None;
        if !batch.is_empty() && *bytes + size > RAFT_BATCH_BYTES_MAX {
            closed = Some(raft_transmit(to, &std::mem::take(batch)));
            *bytes = 0;
        }
        batch.push((group.0, message));
        *bytes += size;
        if batch.len() == RAFT_BATCH_MESSAGES_MAX {
            // At most one of the two closes a batch: this one holds one message.
            closed = Some(raft_transmit(to, &std::mem::take(batch)));
            *bytes = 0;
        }
        closed
    }

    /// The batches still open.
    fn finish(self) -> impl Iterator<Item = Transmit> {
        self.by_peer
            .into_iter()
            .filter(|(_, (batch, _))| !batch.is_empty())
            .map(|(to, (batch, _))| raft_transmit(to, &batch))
    }
}

fn raft_transmit(to: CoreAddress, messages: &[(u64, raft::eraftpb::Message)]) -> Transmit {
    let mut payload = Vec::new();
    encode_batch(messages.iter().map(|(g, m)| (*g, m)), &mut payload);
    Transmit::Raft { to, payload }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::NodeId;
    use crate::replication::kv::KvStore;
    use std::net::SocketAddr;
    use std::time::Duration;

    /// Delivers a snapshot of `data` for group 1 from node 2, as peers send one: its
    /// message on a Raft batch, its data in chunks.
    fn deliver_snapshot(core: &mut NodeCore<u64>, now: Time, data: Vec<u8>) {
        let mut m = raft::eraftpb::Message::default();
        m.set_msg_type(MessageType::MsgSnapshot);
        let (to, from) = (
            ReplicaId::initial(GroupId(1), 0).0,
            ReplicaId::initial(GroupId(1), 1).0,
        );
        m.to = to;
        m.from = from;
        m.term = 2;
        let meta = m.mut_snapshot().mut_metadata();
        meta.index = 50;
        meta.term = 2;
        meta.mut_conf_state().voters = vec![to, from];
        m.mut_snapshot().data = data.into();
        let (meta, stream) = split(GroupId(1), m, None);
        let mut batch = Vec::new();
        encode_batch(std::iter::once((1u64, &meta)), &mut batch);
        core.handle_raft_batch(now, NodeId(2), &batch).unwrap();
        for chunk in stream.unwrap().chunks() {
            core.handle_snapshot_chunk(now, NodeId(2), chunk.into())
                .unwrap();
        }
    }

    /// A large received vShard snapshot is streamed to the shell, chunk by chunk as it
    /// arrives, to be written ahead of its install; one whose data does not decode is
    /// abandoned as soon as that shows, and never reaches raft-rs.
    #[test]
    fn a_large_snapshot_is_written_as_it_arrives_and_garbage_is_abandoned_before_raft() {
        let mut c = core();
        let now = Time::from_secs(1);
        c.handle_timeout(now);
        // (begun, bytes given, ended, abandoned)
        let streamed = |c: &mut NodeCore<u64>| {
            let (mut begun, mut bytes, mut ended, mut abandoned) = (0, Vec::new(), 0, 0);
            while let Some(write) = c.poll_log() {
                match write {
                    LogWrite::SnapshotFileBegin {
                        group, index, term, ..
                    } => {
                        assert_eq!((group, index, term), (GroupId(1), 50, 2));
                        begun += 1;
                    }
                    LogWrite::SnapshotFilePiece { piece, .. } => bytes.extend_from_slice(&piece),
                    LogWrite::SnapshotFileEnd { .. } => ended += 1,
                    LogWrite::SnapshotFileAbandon { .. } => abandoned += 1,
                    LogWrite::SnapshotFile(_) => panic!("a vShard snapshot assembled whole"),
                    LogWrite::Persist(batch) => c.handle_persisted(now, batch.id),
                    LogWrite::Drop(_) => {}
                }
            }
            (begun, bytes, ended, abandoned)
        };
        streamed(&mut c);
        // 2 MiB that claim a huge first key: abandoned at the first decode.
        deliver_snapshot(&mut c, now, vec![0xff; 2 << 20]);
        c.handle_timeout(now);
        let (begun, _, _, abandoned) = streamed(&mut c);
        assert_eq!((begun, abandoned), (1, 1), "garbage was not abandoned");
        assert!(c.counters[CoreCounter::RaftMessagesRefused as usize] > 0);
        // Its writer's report (abandoned) comes before a new file of it may begin.
        c.handle_snapshot_file_written(now, GroupId(1), 50, false);
        let mut store = KvStore::new();
        for i in 0..600u32 {
            let put = KvCommand::Put {
                key: i.to_be_bytes().to_vec(),
                value: vec![7; 4096],
            };
            store.apply(u64::from(i) + 1, &put.encode());
        }
        let data = store.snapshot();
        deliver_snapshot(&mut c, now, data.clone());
        let (begun, bytes, ended, abandoned) = streamed(&mut c);
        assert_eq!((begun, ended, abandoned), (1, 1, 0));
        assert_eq!(bytes, data, "the file gets every chunk, in order");
        // Sent again while its file is written: still one file.
        deliver_snapshot(&mut c, now, data);
        let (begun, ..) = streamed(&mut c);
        assert_eq!(begun, 0);
    }

    #[test]
    fn a_large_snapshot_is_decoded_a_piece_per_turn_and_installed_once_its_file_is_durable() {
        // Node 2 holds the group's other replica: the one that sends the snapshot.
        let mut c = core_of(2);
        let mut now = Time::from_secs(1);
        c.handle_timeout(now);
        let drain = |c: &mut NodeCore<u64>, now: Time| {
            let mut files = 0;
            while let Some(write) = c.poll_log() {
                match write {
                    LogWrite::SnapshotFile(_) | LogWrite::SnapshotFileEnd { .. } => files += 1,
                    LogWrite::Persist(batch) => c.handle_persisted(now, batch.id),
                    _ => {}
                }
            }
            files
        };
        drain(&mut c, now);
        let keys = |c: &NodeCore<u64>| {
            c.host
                .state_machine(GroupId(1))
                .and_then(Cell::kv)
                .map_or(0, KvStore::len)
        };
        let mut store = KvStore::new();
        for i in 0..1000u32 {
            let put = KvCommand::Put {
                key: i.to_be_bytes().to_vec(),
                value: vec![7; 4096],
            };
            store.apply(u64::from(i) + 1, &put.encode());
        }
        let good = store.snapshot();
        // A valid count, then a last pair cut short: it fails only at the end.
        let mut bad = good.clone();
        bad.truncate(good.len() - 100);
        deliver_snapshot(&mut c, now, bad);
        assert_eq!(
            drain(&mut c, now),
            1,
            "checked while it is decoded, not before"
        );
        c.handle_snapshot_file_written(now, GroupId(1), 50, true);
        for _ in 0..10 {
            now += Duration::from_millis(1);
            c.handle_timeout(now);
            drain(&mut c, now);
        }
        assert_eq!(keys(&c), 0, "a snapshot that does not decode reached Raft");
        assert!(c.counters[CoreCounter::RaftMessagesRefused as usize] > 0);

        deliver_snapshot(&mut c, now, good);
        assert_eq!(drain(&mut c, now), 1);
        // About 4 MiB: decoded over several turns, the core asking for each at once.
        let mut turns = 0;
        while c.restoring() {
            assert_eq!(c.poll_timeout(), Some(now), "a turn at once while decoding");
            now += Duration::from_millis(1);
            c.handle_timeout(now);
            turns += 1;
        }
        assert!(turns >= 3, "decoded in {turns} turns");
        assert_eq!(keys(&c), 0, "installed before its file was durable");
        c.handle_snapshot_file_written(now, GroupId(1), 50, true);
        drain(&mut c, now);
        assert_eq!(keys(&c), 1000);
    }

    /// Heartbeats are coalesced per peer core: a tick's heartbeats of many awake groups to
    /// one peer core (and the answers, which the peer sends in one turn) travel as one
    /// frame, about 25 bytes a group.
    #[test]
    fn a_tick_of_heartbeats_for_many_groups_goes_to_a_peer_core_in_one_frame() {
        let peer = CoreAddress::new(NodeId(2), CoreId(1));
        let other = CoreAddress::new(NodeId(3), CoreId(0));
        let heartbeat = |group: u64| {
            let mut m = raft::eraftpb::Message::default();
            m.set_msg_type(MessageType::MsgHeartbeat);
            m.to = ReplicaId::initial(GroupId(group), 1).0;
            m.from = ReplicaId::initial(GroupId(group), 0).0;
            m.term = 3;
            m.commit = 1_000 + group;
            m
        };
        let mut batches = Batches::default();
        let mut out = Vec::new();
        for group in 1..=10_000u64 {
            out.extend(batches.push(peer, GroupId(group), heartbeat(group)));
            out.extend(batches.push(other, GroupId(group), heartbeat(group)));
        }
        out.extend(batches.finish());
        assert_eq!(out.len(), 2, "one frame per peer core");
        for t in out {
            let Transmit::Raft { payload, .. } = t else {
                panic!("only Raft batches")
            };
            let messages = crate::wire::raft::decode_batch(&payload).unwrap();
            assert_eq!(messages.len(), 10_000);
            assert!(
                payload.len() <= 10_000 * 32,
                "{} bytes for 10 000 heartbeats",
                payload.len()
            );
        }
    }

    #[test]
    fn a_turn_of_large_appends_goes_in_frames_a_peer_accepts_in_order() {
        let (a, b) = (
            CoreAddress::new(NodeId(2), CoreId(0)),
            CoreAddress::new(NodeId(3), CoreId(0)),
        );
        let append = |i: u64, bytes: usize| {
            let mut m = raft::eraftpb::Message::default();
            m.set_msg_type(MessageType::MsgAppend);
            m.index = i;
            let e = raft::eraftpb::Entry {
                index: i + 1,
                data: vec![i as u8; bytes].into(),
                ..Default::default()
            };
            m.entries = vec![e].into();
            m
        };
        let mut batches = Batches::default();
        let mut out = Vec::new();
        for i in 0..12 {
            out.extend(batches.push(a, GroupId(1), append(i, 1 << 20)));
            out.extend(batches.push(b, GroupId(2), append(i, 10)));
        }
        out.extend(batches.finish());
        let mut seen: BTreeMap<CoreAddress, Vec<u64>> = BTreeMap::new();
        for t in out {
            let Transmit::Raft { to, payload } = t else {
                panic!("only Raft batches")
            };
            assert!(payload.len() <= crate::constants::FRAME_PAYLOAD_MAX_BYTES);
            for (_, m) in crate::wire::raft::decode_batch(&payload).unwrap() {
                seen.entry(to).or_default().push(m.index);
            }
        }
        assert_eq!(seen[&a], (0..12).collect::<Vec<_>>());
        assert_eq!(seen[&b], (0..12).collect::<Vec<_>>());
    }

    /// A one-node, one-core cluster's core 0: it hosts the metadata group and group 1.
    fn core() -> NodeCore<u64> {
        core_of(1)
    }

    /// Core 0 of node 1 of a cluster of `nodes` nodes, one core each, with the metadata
    /// group and group 1 replicated on every node.
    fn core_of(nodes: u64) -> NodeCore<u64> {
        let spec = ClusterSpec {
            nodes: (1..=nodes)
                .map(|n| {
                    (
                        NodeId(n),
                        SocketAddr::from(([127, 0, 0, 1], 7000 + n as u16)),
                    )
                })
                .collect(),
            cores: 1,
            groups: 1,
            replicas: nodes as u16,
        };
        let config = CoreConfig {
            local: CoreAddress::new(NodeId(1), CoreId(0)),
            spec,
            audit: false,
            bug: None,
            balance: BalanceConfig::default(),
            incarnation: 1,
            joined: false,
            snapshots: SnapshotPolicy::default(),
            quiesce: true,
        };
        NodeCore::new(config, BTreeMap::new()).unwrap()
    }

    fn ask(core: &mut NodeCore<u64>, id: u64, group: u64, op: KvOp, role: Role) -> KvReply {
        let request = KvRequest {
            id,
            group: GroupId(group),
            op,
            trace: false,
        };
        core.handle_request(Time::from_secs(1), request, id, role);
        let (reply, frame) = core.poll_reply().expect("answered at once");
        assert_eq!((reply, frame.id), (id, id));
        frame.reply
    }

    #[test]
    fn a_client_may_not_run_the_cluster_and_nobody_may_change_membership_outside_a_move() {
        let mut core = core();
        let membership = KvOp::ChangeMembership {
            changes: vec![MembershipChange::Remove(ReplicaId(1))],
        };
        let start_move = KvOp::Write {
            command: MetadataCommand::StartMove {
                group: GroupId(1),
                from: ReplicaId::initial(GroupId(1), 0),
                to: CoreAddress::new(NodeId(1), CoreId(0)),
            }
            .encode(),
        };
        let end_move = KvOp::Write {
            command: MetadataCommand::EndMove {
                group: GroupId(1),
                new: ReplicaId(1 << 48),
                moved: true,
            }
            .encode(),
        };
        let refused = |reply: KvReply, why: &str| match reply {
            KvReply::Forbidden(reason) => assert!(reason.contains(why), "{reason}"),
            other => panic!("expected a refusal, got {other:?}"),
        };
        refused(
            ask(
                &mut core,
                1,
                1,
                KvOp::View { new: ReplicaId(9) },
                Role::Client,
            ),
            "needs an admin or node certificate",
        );
        refused(
            ask(
                &mut core,
                2,
                1,
                KvOp::TransferLeader { to: ReplicaId(9) },
                Role::Client,
            ),
            "needs an admin or node certificate",
        );
        refused(
            ask(&mut core, 3, 0, start_move.clone(), Role::Client),
            "start_move needs",
        );
        // Load reports steer the rebalancer: only nodes send them, not even an operator.
        let report = KvOp::LoadReport {
            report: crate::balance::report::NodeReport {
                node: NodeId(1),
                cores: Vec::new(),
                vshards: Vec::new(),
            }
            .encode(),
        };
        refused(
            ask(&mut core, 30, 0, report.clone(), Role::Client),
            "load reports come from nodes",
        );
        refused(
            ask(&mut core, 31, 0, report, Role::Admin),
            "load reports come from nodes",
        );
        refused(
            ask(&mut core, 4, 1, membership.clone(), Role::Admin),
            "come from the migration executor",
        );
        refused(
            ask(&mut core, 5, 1, membership, Role::Node(NodeId(1))),
            "not moving a replica",
        );
        refused(
            ask(&mut core, 6, 0, end_move, Role::Node(NodeId(1))),
            "proposed by the cluster itself",
        );
        assert_eq!(core.counter(CoreCounter::ClientRefusals), 8);
        // An admin is let through (the group has no leader yet: a redirect, not a refusal).
        assert!(!matches!(
            ask(
                &mut core,
                7,
                1,
                KvOp::View { new: ReplicaId(9) },
                Role::Admin
            ),
            KvReply::Forbidden(_)
        ));
    }

    /// Persists every batch at once and collects the answers, until the core is quiet.
    fn settle(core: &mut NodeCore<u64>, now: Time, answers: &mut Vec<KvResponseFrame>) {
        core.handle_timeout(now);
        loop {
            let mut busy = false;
            while let Some(write) = core.poll_log() {
                match write {
                    LogWrite::Persist(batch) => core.handle_persisted(now, batch.id),
                    LogWrite::SnapshotFile(f) => {
                        core.handle_snapshot_file_written(now, f.group, f.index, true)
                    }
                    LogWrite::SnapshotFileEnd { group, index } => {
                        core.handle_snapshot_file_written(now, group, index, true)
                    }
                    LogWrite::SnapshotFileAbandon { group, index, .. } => {
                        core.handle_snapshot_file_written(now, group, index, false)
                    }
                    _ => {}
                }
                busy = true;
            }
            while let Some((_, frame)) = core.poll_reply() {
                answers.push(frame);
                busy = true;
            }
            while core.poll_mail().is_some() || core.poll_transmit().is_some() {
                busy = true;
            }
            if !busy {
                return;
            }
        }
    }

    #[test]
    fn a_traced_write_is_answered_with_its_stages_and_an_untraced_one_without() {
        let mut core = core();
        let mut answers = Vec::new();
        let mut now = Time::from_secs(1);
        for _ in 0..400 {
            now += Duration::from_millis(10);
            settle(&mut core, now, &mut answers);
        }
        assert!(core.host.is_leader(GroupId(1)));
        for (id, trace) in [(7u64, true), (8, false)] {
            let command = KvCommand::Put {
                key: format!("k{id}").into_bytes(),
                value: vec![1; 10],
            };
            let request = KvRequest {
                id,
                group: GroupId(1),
                op: KvOp::Write {
                    command: command.encode(),
                },
                trace,
            };
            core.handle_request(now, request, id, Role::Client);
            let Some(LogWrite::Persist(batch)) = core.poll_log() else {
                panic!("the write's batch");
            };
            assert!(core.poll_log().is_none(), "one batch in flight");
            // Its fsync takes 3 ms.
            now += Duration::from_millis(3);
            core.handle_persisted(now, batch.id);
            // Applied and answered as the core is polled (with no time passing).
            let mut answer = None;
            for _ in 0..100 {
                if let Some(LogWrite::Persist(batch)) = core.poll_log() {
                    core.handle_persisted(now, batch.id);
                }
                answer = core.poll_reply().filter(|(r, _)| *r == id);
                if answer.is_some() {
                    break;
                }
            }
            let frame = answer.expect("the write is answered").1;
            assert!(matches!(frame.reply, KvReply::Written(_)), "{frame:?}");
            if trace {
                let t = frame.timing.expect("a traced write has its timing");
                assert_eq!(t.batch_wait_us, 0);
                assert_eq!(t.leader_fsync_us, 3_000);
                // The only voter commits with its own fsync.
                assert_eq!((t.commit_wait_us, t.apply_us), (0, 0));
            } else {
                assert_eq!(frame.timing, None);
            }
            now += Duration::from_millis(10);
            settle(&mut core, now, &mut answers);
        }
        assert!(core.traces.is_empty());
    }

    #[test]
    fn a_core_measures_the_requests_of_the_groups_it_leads_once_per_load_tick() {
        let mut core = core();
        let mut answers = Vec::new();
        let mut now = Time::from_secs(1);
        let keys = VShardMap::new(1).unwrap();
        // The single voter elects itself.
        for _ in 0..400 {
            now += Duration::from_millis(10);
            settle(&mut core, now, &mut answers);
        }
        assert!(core.host.is_leader(GroupId(1)));
        let _ = core.poll_load();
        for i in 0..50u64 {
            let key = format!("k{i}").into_bytes();
            assert_eq!(keys.vshard_of(&key).0, 0);
            let command = KvCommand::Put {
                key,
                value: vec![7; 100],
            };
            let request = KvRequest {
                id: 100 + i,
                group: GroupId(1),
                op: KvOp::Write {
                    command: command.encode(),
                },
                trace: false,
            };
            core.handle_request(now, request, i, Role::Client);
            now += Duration::from_millis(10);
            settle(&mut core, now, &mut answers);
        }
        assert!(
            answers
                .iter()
                .filter(|a| matches!(a.reply, KvReply::Written(_)))
                .count()
                == 50,
            "{answers:?}"
        );
        for _ in 0..150 {
            now += Duration::from_millis(10);
            settle(&mut core, now, &mut answers);
        }
        let load = core.poll_load().expect("a load tick ended");
        assert_eq!((load.groups_led, load.replicas), (1, 1));
        assert!(load.writes_per_sec > 1.0, "{load:?}");
        assert_eq!(load.reads_per_sec, 0.0);
        assert!(load.bytes_stored >= 50 * 100, "{load:?}");
        assert!(load.p99_latency_us >= load.p95_latency_us && load.p95_latency_us > 0.0);
        assert_eq!(load.vshards.len(), 1);
        assert_eq!(load.vshards[0].vshard, crate::ids::VShardId(0));
        assert_eq!(load.vshards[0].writes_per_sec, load.writes_per_sec);
        assert!(core.poll_load().is_none(), "once per tick");
        // No requests: the rate decays, it does not drop to zero at once.
        for _ in 0..110 {
            now += Duration::from_millis(10);
            settle(&mut core, now, &mut answers);
        }
        let later = core.poll_load().expect("the next tick");
        assert!(later.writes_per_sec > 0.0 && later.writes_per_sec < load.writes_per_sec);
        // Every write was timed from taken to applied.
        assert_eq!(core.commit_latency().count(), 50);
        // A minute later the rate has decayed to nothing (below `RATE_FLOOR`, dropped):
        // the ticks that skip their walk report the same groups and bytes.
        for _ in 0..6_000 {
            now += Duration::from_millis(10);
            settle(&mut core, now, &mut answers);
        }
        let quiet = core.poll_load().expect("a tick");
        assert!(quiet.writes_per_sec < 1e-3, "{quiet:?}");
        assert_eq!((quiet.groups_led, quiet.replicas), (1, 1));
        assert_eq!(quiet.bytes_stored, load.bytes_stored);
        assert_eq!(core.load_tick_counts().leaderless, 0);
        assert_eq!(core.load_tick_counts().apply_lag_max, 0);
        // The node's reports (every 5 s, from the loads its cores handed in) name the
        // group's leader, node and core: the coordinator's status (what `placement` marks)
        // says so.
        for _ in 0..510 {
            now += Duration::from_millis(10);
            settle(&mut core, now, &mut answers);
            if let Some(load) = core.poll_load() {
                core.handle_load(load);
            }
        }
        let status = core
            .balancer_status()
            .expect("core 0 of the only node coordinates");
        assert_eq!(status.leaders, vec![1], "{status:?}");
        assert_eq!(status.leader_cores, vec![Some(0)]);
    }
}
