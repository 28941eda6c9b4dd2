//! Per-core counters and gauges of a running node, and their Prometheus text.
//!
//! Each core's loop is the only writer of its `CoreMetrics` (relaxed atomic adds, never a
//! lock); a scraper reads them from any thread. Every series is always exposed, zeros
//! included, labelled `node` and `core`, so dashboards never see a series appear late.

use std::fmt::Write as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::ids::NodeId;
use crate::metrics::load_slots::{CoreLoadRecord, LoadSlots, SlotWriter};
use crate::metrics::loops::LoopMetrics;

/// Monotonic counters of one core.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CoreCounter {
    /// Client requests this core took (after forwarding to the group's core).
    ClientRequests,
    /// Client requests answered with an error (refused, timed out, shutting down).
    ClientErrors,
    /// Client requests answered `NotLeader` (the client retries elsewhere).
    ClientRedirects,
    /// Requests refused because the sender's certificate does not allow them.
    ClientRefusals,
    /// Client writes applied and acknowledged.
    WritesAcked,
    /// Linearizable client reads answered.
    ReadsServed,
    /// Write-ahead log batches made durable (one write + fdatasync each).
    WalBatches,
    /// Group records in those batches (a group's entries, hard state or snapshot: one each).
    WalRecords,
    /// Groups whose replica here became leader, and those whose replica here stopped
    /// leading (stepped down, deposed, handed over).
    LeadershipsWon,
    LeadershipsLost,
    /// Raft messages received from peers.
    RaftMessagesIn,
    /// Raft messages from peers refused before stepping (see `replication::screen`).
    RaftMessagesRefused,
    /// Raft messages sent to peers.
    RaftMessagesOut,
    /// Snapshots streamed to lagging replicas.
    SnapshotsSent,
    /// Bytes of snapshot data streamed to peers (replica moves and catch-ups).
    SnapshotBytesSent,
    /// Snapshot files the core's log task began to write (compactions of large states,
    /// received snapshots written ahead of their install), and those it finished (written
    /// or failed): the difference is the files being written.
    SnapshotFilesStarted,
    SnapshotFilesFinished,
    /// Write-ahead log checkpoints put in place (the log rewritten as its live content).
    WalCheckpoints,
    /// Turns of the core loop.
    LoopTurns,
    /// UDP datagrams the core's QUIC endpoint sent.
    QuicDatagramsSent,
    /// `sendmsg` calls of the endpoint (with GSO, one call carries several datagrams).
    QuicSendCalls,
    /// UDP datagrams the endpoint received.
    QuicDatagramsReceived,
    /// Sends that found the socket buffer full and were retried.
    QuicSendWouldBlock,
    /// TLS handshakes the core's endpoint refused: the peer's certificate did not verify.
    TlsHandshakesRefused,
    /// Replica move steps the migration executor decided from a leader's view (core 0).
    MoveSteps,
    /// Replica moves the migration executor ended, moved or abandoned (core 0).
    MovesEnded,
    /// Replica moves the migration executor gave up (abandoned: the target failed) (core 0).
    MovesAbandoned,
    /// Replica moves the rebalancer started while this core coordinated (core 0).
    RebalancerReplicaMoves,
    /// Leader transfers the rebalancer asked for, and those not taken (core 0).
    RebalancerLeaderTransfers,
    RebalancerLeaderTransfersFailed,
    /// Load reports this core took as coordinator, and those it refused (core 0).
    LoadReportsReceived,
    LoadReportsRefused,
    /// Failure-detector probes sent, and those neither the member nor any helper answered
    /// within the probe period (core 0).
    LivenessProbes,
    LivenessProbesFailed,
    /// Probes unanswered in the period while the member's Raft traffic still arrived: not
    /// counted against it (core 0).
    LivenessProbesExcused,
    /// Milliseconds the failure detector was called late and did not count against others
    /// (its process paused, its core stalled, its clock jumped; core 0).
    LivenessBlindMillis,
}

impl CoreCounter {
    pub const ALL: [CoreCounter; 36] = [
        CoreCounter::ClientRequests,
        CoreCounter::ClientErrors,
        CoreCounter::ClientRedirects,
        CoreCounter::ClientRefusals,
        CoreCounter::WritesAcked,
        CoreCounter::ReadsServed,
        CoreCounter::WalBatches,
        CoreCounter::WalRecords,
        CoreCounter::LeadershipsWon,
        CoreCounter::LeadershipsLost,
        CoreCounter::RaftMessagesIn,
        CoreCounter::RaftMessagesRefused,
        CoreCounter::RaftMessagesOut,
        CoreCounter::SnapshotsSent,
        CoreCounter::SnapshotBytesSent,
        CoreCounter::SnapshotFilesStarted,
        CoreCounter::SnapshotFilesFinished,
        CoreCounter::WalCheckpoints,
        CoreCounter::LoopTurns,
        CoreCounter::QuicDatagramsSent,
        CoreCounter::QuicSendCalls,
        CoreCounter::QuicDatagramsReceived,
        CoreCounter::QuicSendWouldBlock,
        CoreCounter::TlsHandshakesRefused,
        CoreCounter::MoveSteps,
        CoreCounter::MovesEnded,
        CoreCounter::MovesAbandoned,
        CoreCounter::RebalancerReplicaMoves,
        CoreCounter::RebalancerLeaderTransfers,
        CoreCounter::RebalancerLeaderTransfersFailed,
        CoreCounter::LoadReportsReceived,
        CoreCounter::LoadReportsRefused,
        CoreCounter::LivenessProbes,
        CoreCounter::LivenessProbesFailed,
        CoreCounter::LivenessProbesExcused,
        CoreCounter::LivenessBlindMillis,
    ];

    /// What one counted unit is in the exported unit (milliseconds exported as seconds,
    /// Prometheus's base unit).
    fn scale(self) -> f64 {
        match self {
            CoreCounter::LivenessBlindMillis => 1e-3,
            _ => 1.0,
        }
    }

    /// Whether the core loop's shell counts this itself (its turns, its transport); the
    /// node core counts the others.
    pub fn counted_by_shell(self) -> bool {
        matches!(
            self,
            CoreCounter::LoopTurns
                | CoreCounter::SnapshotBytesSent
                | CoreCounter::SnapshotFilesStarted
                | CoreCounter::SnapshotFilesFinished
                | CoreCounter::WalCheckpoints
                | CoreCounter::QuicDatagramsSent
                | CoreCounter::QuicSendCalls
                | CoreCounter::QuicDatagramsReceived
                | CoreCounter::QuicSendWouldBlock
                | CoreCounter::TlsHandshakesRefused
        )
    }

    /// The series' name without the `nodedb_core_` prefix (`wal_batches_total`).
    pub fn name(self) -> &'static str {
        self.name_and_help().0
    }

    fn name_and_help(self) -> (&'static str, &'static str) {
        match self {
            CoreCounter::ClientRequests => ("client_requests_total", "Client requests taken."),
            CoreCounter::ClientErrors => (
                "client_errors_total",
                "Client requests answered with an error.",
            ),
            CoreCounter::ClientRedirects => (
                "client_redirects_total",
                "Client requests answered NotLeader.",
            ),
            CoreCounter::ClientRefusals => (
                "client_refusals_total",
                "Requests refused because the sender's certificate does not allow them.",
            ),
            CoreCounter::WritesAcked => ("writes_acked_total", "Client writes acknowledged."),
            CoreCounter::ReadsServed => ("reads_served_total", "Linearizable reads answered."),
            CoreCounter::WalBatches => (
                "wal_batches_total",
                "Write-ahead log batches made durable (one fdatasync each).",
            ),
            CoreCounter::WalRecords => (
                "wal_records_total",
                "Group records (entries, hard state, snapshot) in durable log batches.",
            ),
            CoreCounter::LeadershipsWon => (
                "raft_leaderships_won_total",
                "Groups whose replica on this core became leader.",
            ),
            CoreCounter::LeadershipsLost => (
                "raft_leaderships_lost_total",
                "Groups whose replica on this core stopped leading (stepped down, deposed, \
                 handed over).",
            ),
            CoreCounter::RaftMessagesIn => {
                ("raft_messages_received_total", "Raft messages received.")
            }
            CoreCounter::RaftMessagesRefused => (
                "raft_messages_refused_total",
                "Raft messages from peers refused before stepping (forged or malformed).",
            ),
            CoreCounter::RaftMessagesOut => ("raft_messages_sent_total", "Raft messages sent."),
            CoreCounter::SnapshotsSent => ("snapshots_sent_total", "Snapshots streamed to peers."),
            CoreCounter::SnapshotBytesSent => (
                "snapshot_bytes_sent_total",
                "Bytes of snapshot data streamed to peers (moves, catch-ups).",
            ),
            CoreCounter::SnapshotFilesStarted => (
                "snapshot_files_started_total",
                "Snapshot files the log task began to write (compactions, received snapshots).",
            ),
            CoreCounter::SnapshotFilesFinished => (
                "snapshot_files_finished_total",
                "Snapshot files the log task finished writing (or failed to).",
            ),
            CoreCounter::WalCheckpoints => (
                "wal_checkpoints_total",
                "Write-ahead log checkpoints put in place (the log rewritten as its live content).",
            ),
            CoreCounter::LoopTurns => ("loop_turns_total", "Turns of the core loop."),
            CoreCounter::QuicDatagramsSent => ("quic_datagrams_sent_total", "UDP datagrams sent."),
            CoreCounter::QuicSendCalls => (
                "quic_send_calls_total",
                "sendmsg calls (one carries several datagrams with GSO).",
            ),
            CoreCounter::QuicDatagramsReceived => {
                ("quic_datagrams_received_total", "UDP datagrams received.")
            }
            CoreCounter::QuicSendWouldBlock => (
                "quic_send_would_block_total",
                "Sends that found the socket buffer full and were retried.",
            ),
            CoreCounter::TlsHandshakesRefused => (
                "tls_handshakes_refused_total",
                "TLS handshakes refused because the peer's certificate did not verify.",
            ),
            CoreCounter::MoveSteps => (
                "replica_move_steps_total",
                "Replica move steps the migration executor decided from a leader's view.",
            ),
            CoreCounter::MovesEnded => (
                "replica_moves_ended_total",
                "Replica moves the migration executor ended (moved or abandoned).",
            ),
            CoreCounter::MovesAbandoned => (
                "replica_moves_abandoned_total",
                "Replica moves the migration executor gave up (the target failed).",
            ),
            CoreCounter::RebalancerReplicaMoves => (
                "rebalancer_replica_moves_started_total",
                "Replica moves the rebalancer started while this core coordinated.",
            ),
            CoreCounter::RebalancerLeaderTransfers => (
                "rebalancer_leader_transfers_total",
                "Leader transfers the rebalancer asked for while this core coordinated.",
            ),
            CoreCounter::RebalancerLeaderTransfersFailed => (
                "rebalancer_leader_transfers_failed_total",
                "Leader transfers the rebalancer asked for that the leader did not take.",
            ),
            CoreCounter::LoadReportsReceived => (
                "load_reports_received_total",
                "Node load reports this core took as the rebalancer's coordinator.",
            ),
            CoreCounter::LoadReportsRefused => (
                "load_reports_refused_total",
                "Node load reports refused (malformed figures, unknown node).",
            ),
            CoreCounter::LivenessProbes => (
                "liveness_probes_total",
                "Failure-detector probes sent to other nodes (core 0).",
            ),
            CoreCounter::LivenessProbesFailed => (
                "liveness_probes_failed_total",
                "Probes answered neither directly nor through other nodes in the probe period.",
            ),
            CoreCounter::LivenessProbesExcused => (
                "liveness_probes_excused_total",
                "Probes unanswered in the probe period while the member's Raft traffic still \
                 arrived (it runs, late): not counted against it.",
            ),
            CoreCounter::LivenessBlindMillis => (
                "liveness_blind_seconds_total",
                "Time the failure detector ran late (a pause, a stalled core, a clock jump) and \
                 did not count against other nodes.",
            ),
        }
    }
}

/// Current values of one core.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CoreGauge {
    /// Groups this core leads.
    LeaderGroups,
    /// Client requests waiting for a commit or a read index.
    PendingRequests,
    /// 1 when the endpoint sends with GSO (segmentation offload), 0 when it fell back.
    QuicGsoActive,
    /// 1 once the core stopped with an error (its groups are not served).
    Failed,
    /// Raft group replicas this core hosts (its placement-table share, plus the metadata
    /// group on core 0).
    Replicas,
    /// Other nodes this node's failure detector holds alive, suspect and dead (core 0).
    MembersAlive,
    MembersSuspect,
    MembersDead,
    /// The last direct probe's round trip and the largest so far, stored in nanoseconds and
    /// exported in seconds (core 0).
    ProbeRttNanos,
    ProbeRttMaxNanos,
    /// Groups whose replica here is quiesced (neither ticks nor heartbeats), counted once
    /// per load tick.
    QuiescedGroups,
    /// Groups hosted here whose replica knows no leader, counted once per load tick (1
    /// until the first count: not known to be ready).
    LeaderlessGroups,
    /// The most committed entries a replica here has not applied yet, over its groups
    /// (once per load tick).
    ApplyLagMax,
    /// The most entries a voter trails its leader's log by, over the groups led here
    /// (once per load tick; learners being caught up for a move are not counted).
    FollowerLagMax,
}

impl CoreGauge {
    pub const ALL: [CoreGauge; 14] = [
        CoreGauge::LeaderGroups,
        CoreGauge::PendingRequests,
        CoreGauge::QuicGsoActive,
        CoreGauge::Failed,
        CoreGauge::Replicas,
        CoreGauge::MembersAlive,
        CoreGauge::MembersSuspect,
        CoreGauge::MembersDead,
        CoreGauge::ProbeRttNanos,
        CoreGauge::ProbeRttMaxNanos,
        CoreGauge::QuiescedGroups,
        CoreGauge::LeaderlessGroups,
        CoreGauge::ApplyLagMax,
        CoreGauge::FollowerLagMax,
    ];

    /// What one stored unit is in the exported unit (nanoseconds exported as seconds).
    fn scale(self) -> f64 {
        match self {
            CoreGauge::ProbeRttNanos | CoreGauge::ProbeRttMaxNanos => 1e-9,
            _ => 1.0,
        }
    }

    fn name_and_help(self) -> (&'static str, &'static str) {
        match self {
            CoreGauge::LeaderGroups => ("leader_groups", "Groups this core leads."),
            CoreGauge::PendingRequests => (
                "pending_requests",
                "Client requests waiting for a commit or a read index.",
            ),
            CoreGauge::QuicGsoActive => (
                "quic_gso_active",
                "1 when the QUIC endpoint sends with GSO, 0 when it fell back.",
            ),
            CoreGauge::Failed => (
                "failed",
                "1 once the core stopped with an error; its groups are not served.",
            ),
            CoreGauge::Replicas => ("replicas", "Raft group replicas this core hosts."),
            CoreGauge::MembersAlive => (
                "liveness_members_alive",
                "Other nodes the failure detector holds alive (core 0).",
            ),
            CoreGauge::MembersSuspect => (
                "liveness_members_suspect",
                "Other nodes the failure detector suspects (core 0).",
            ),
            CoreGauge::MembersDead => (
                "liveness_members_dead",
                "Other nodes the failure detector holds dead (core 0).",
            ),
            CoreGauge::ProbeRttNanos => (
                "liveness_probe_rtt_seconds",
                "Round trip of the last direct failure-detector probe (core 0).",
            ),
            CoreGauge::ProbeRttMaxNanos => (
                "liveness_probe_rtt_max_seconds",
                "Largest direct probe round trip since the node started (core 0).",
            ),
            CoreGauge::QuiescedGroups => (
                "quiesced_groups",
                "Groups whose replica on this core is quiesced: no ticks, no heartbeats (counted once a second).",
            ),
            CoreGauge::LeaderlessGroups => (
                "leaderless_groups",
                "Groups hosted on this core whose replica knows no leader (counted once a second).",
            ),
            CoreGauge::ApplyLagMax => (
                "raft_apply_lag_max_entries",
                "The most committed entries a replica on this core has yet to apply, over its \
                 groups (once a second).",
            ),
            CoreGauge::FollowerLagMax => (
                "raft_follower_lag_max_entries",
                "The most entries a voter trails its leader's log by, over the groups led on \
                 this core (once a second; learners catching up for a move not counted).",
            ),
        }
    }
}

/// A load gauge: its name, its help, and how to read it from a core's record.
type LoadSeries = (&'static str, &'static str, fn(&CoreLoadRecord) -> f64);

/// Upper bounds (µs) of the loop-turn histogram's buckets; one more bucket counts the
/// rest (`+Inf`). From well under a fast turn to a second, so a stall shows in its order of
/// magnitude.
pub const LOOP_TURN_BUCKETS_US: [u64; 15] = [
    50, 100, 250, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 500_000,
    1_000_000, 2_500_000,
];

/// Durations in the buckets of `LOOP_TURN_BUCKETS_US`, lock-free: how long the core loop's
/// turns take (from the start of a turn — timers, then the work that arrived, log writes,
/// transmits — to the moment it waits again; everything that reaches the core meanwhile
/// waits for the next turn, so the longest turn bounds how long the core stalled a
/// request), how long a batch of log writes takes to be durable, how long a request
/// waits for its answer.
#[derive(Debug, Default)]
pub struct TimeHistogram {
    buckets: [AtomicU64; LOOP_TURN_BUCKETS_US.len() + 1],
    sum_ns: AtomicU64,
    max_ns: AtomicU64,
    /// The longest turn since `take_recent_max` last read it.
    recent_max_ns: AtomicU64,
}

/// The bucket of `TimeHistogram` a duration of `ns` nanoseconds counts in.
fn bucket_of(ns: u64) -> usize {
    let us = ns / 1_000;
    LOOP_TURN_BUCKETS_US
        .iter()
        .position(|b| us <= *b)
        .unwrap_or(LOOP_TURN_BUCKETS_US.len())
}

/// A histogram in `TimeHistogram`'s buckets that one owner fills with plain counts (the
/// sans-IO node core), and a shell copies into the shared one (`TimeHistogram::mirror`),
/// as it copies the core's counters.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LocalTimeHistogram {
    buckets: [u64; LOOP_TURN_BUCKETS_US.len() + 1],
    sum_ns: u64,
    max_ns: u64,
}

impl LocalTimeHistogram {
    pub fn observe(&mut self, took: std::time::Duration) {
        let ns = u64::try_from(took.as_nanos()).unwrap_or(u64::MAX);
        self.buckets[bucket_of(ns)] += 1;
        self.sum_ns = self.sum_ns.saturating_add(ns);
        self.max_ns = self.max_ns.max(ns);
    }

    /// Samples counted so far.
    pub fn count(&self) -> u64 {
        self.buckets.iter().sum()
    }
}

impl TimeHistogram {
    /// Takes `local`'s counts as its own (they only grow).
    pub fn mirror(&self, local: &LocalTimeHistogram) {
        for (shared, n) in self.buckets.iter().zip(local.buckets) {
            shared.store(n, Ordering::Relaxed);
        }
        self.sum_ns.store(local.sum_ns, Ordering::Relaxed);
        self.max_ns.store(local.max_ns, Ordering::Relaxed);
    }

    pub fn observe(&self, turn: std::time::Duration) {
        let ns = u64::try_from(turn.as_nanos()).unwrap_or(u64::MAX);
        self.buckets[bucket_of(ns)].fetch_add(1, Ordering::Relaxed);
        self.sum_ns.fetch_add(ns, Ordering::Relaxed);
        self.max_ns.fetch_max(ns, Ordering::Relaxed);
        self.recent_max_ns.fetch_max(ns, Ordering::Relaxed);
    }

    /// The longest turn since this was last called (benchmarks read it around a phase).
    pub fn take_recent_max(&self) -> std::time::Duration {
        std::time::Duration::from_nanos(self.recent_max_ns.swap(0, Ordering::Relaxed))
    }

    /// The longest turn since the core started.
    pub fn max(&self) -> std::time::Duration {
        std::time::Duration::from_nanos(self.max_ns.load(Ordering::Relaxed))
    }

    /// Turns counted so far.
    pub fn count(&self) -> u64 {
        self.buckets.iter().map(|b| b.load(Ordering::Relaxed)).sum()
    }
}

/// The metrics of one core.
#[derive(Debug)]
pub struct CoreMetrics {
    counters: [AtomicU64; CoreCounter::ALL.len()],
    gauges: [AtomicU64; CoreGauge::ALL.len()],
    pub loop_turns: TimeHistogram,
    /// The CPU time of each loop turn (the thread's own clock): a turn far longer than its
    /// CPU time waited for the machine (preempted), not for the core's own work.
    pub loop_turn_cpu: TimeHistogram,
    /// How long each batch of log writes took to become durable (one write with the data
    /// synced: the group commit of every group on the core).
    pub wal_write: TimeHistogram,
    /// How long client requests waited for their answer on this core, from the whole
    /// request read to the answer ready, by `RequestKind`.
    pub requests: [TimeHistogram; RequestKind::ALL.len()],
    /// How long writes this core's leader replicas took from the request taken to its
    /// entry committed and applied (a quorum's durable append; mirrored from the core).
    pub raft_commit: TimeHistogram,
}

impl Default for CoreMetrics {
    fn default() -> CoreMetrics {
        CoreMetrics {
            // More counters than the arrays `Default` covers (32).
            counters: std::array::from_fn(|_| AtomicU64::new(0)),
            gauges: Default::default(),
            loop_turns: TimeHistogram::default(),
            loop_turn_cpu: TimeHistogram::default(),
            wal_write: TimeHistogram::default(),
            requests: Default::default(),
            raft_commit: TimeHistogram::default(),
        }
    }
}

/// What a client request does, for the request latency histogram's `op` label.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RequestKind {
    /// Get and scan.
    Read,
    /// Put, delete, metadata commands (anything proposed to a group's log).
    Write,
    /// Routing, status, membership views and changes, load reports: the cluster's own
    /// traffic and operators'.
    Admin,
}

impl RequestKind {
    pub const ALL: [RequestKind; 3] = [RequestKind::Read, RequestKind::Write, RequestKind::Admin];

    pub fn label(self) -> &'static str {
        match self {
            RequestKind::Read => "read",
            RequestKind::Write => "write",
            RequestKind::Admin => "admin",
        }
    }
}

impl CoreMetrics {
    pub fn add(&self, counter: CoreCounter, n: u64) {
        self.counters[counter as usize].fetch_add(n, Ordering::Relaxed);
    }

    /// Mirrors a counter whose owner keeps its own running total (the transport's stats):
    /// stores `total` instead of adding to it.
    pub fn mirror(&self, counter: CoreCounter, total: u64) {
        self.counters[counter as usize].store(total, Ordering::Relaxed);
    }

    pub fn set(&self, gauge: CoreGauge, value: u64) {
        self.gauges[gauge as usize].store(value, Ordering::Relaxed);
    }

    pub fn counter(&self, counter: CoreCounter) -> u64 {
        self.counters[counter as usize].load(Ordering::Relaxed)
    }

    pub fn gauge(&self, gauge: CoreGauge) -> u64 {
        self.gauges[gauge as usize].load(Ordering::Relaxed)
    }
}

/// The metrics of every core of one node.
#[derive(Debug)]
pub struct NodeMetrics {
    node: NodeId,
    cores: Vec<CoreMetrics>,
    /// Each core's load as it last published it (exposed as `nodedb_core_load_*`).
    load: Arc<LoadSlots>,
    /// The rebalancer's loop series (its coordinator is core 0), set when core 0 starts.
    rebalancer: std::sync::OnceLock<Arc<LoopMetrics>>,
    /// Node and core max / mean of the load, as f64 bits: set by core 0 while it
    /// coordinates, 0 otherwise.
    imbalance: [AtomicU64; 2],
    /// Each other node and whether core 0's failure detector holds it alive (`set_peers`).
    peers: std::sync::Mutex<Vec<(NodeId, bool)>>,
}

impl NodeMetrics {
    /// Metrics for `cores` cores, and the writers of their load slots, in core order.
    pub fn new(node: NodeId, cores: u16) -> (NodeMetrics, Vec<SlotWriter>) {
        let (load, writers) = LoadSlots::new(usize::from(cores));
        let metrics = NodeMetrics {
            node,
            cores: (0..cores).map(|_| CoreMetrics::default()).collect(),
            load,
            rebalancer: std::sync::OnceLock::new(),
            imbalance: [AtomicU64::new(0), AtomicU64::new(0)],
            peers: std::sync::Mutex::new(Vec::new()),
        };
        (metrics, writers)
    }

    /// The cores' load slots.
    pub fn load(&self) -> &Arc<LoadSlots> {
        &self.load
    }

    /// Exposes the rebalancer loop's series (once; later calls are ignored).
    pub fn set_rebalancer(&self, metrics: Arc<LoopMetrics>) {
        let _ = self.rebalancer.set(metrics);
    }

    /// Node and core max / mean of the cluster's load (the coordinator's view; 0 on other
    /// nodes).
    /// The other nodes and whether the failure detector holds each alive (core 0, each
    /// turn: the list is rewritten in place).
    pub fn set_peers(&self, peers: impl Iterator<Item = (NodeId, bool)>) {
        let mut list = self.peers.lock().unwrap_or_else(|e| e.into_inner());
        list.clear();
        list.extend(peers);
    }

    pub fn set_imbalance(&self, node: f64, core: f64) {
        self.imbalance[0].store(node.to_bits(), Ordering::Relaxed);
        self.imbalance[1].store(core.to_bits(), Ordering::Relaxed);
    }

    pub fn imbalance(&self) -> (f64, f64) {
        (
            f64::from_bits(self.imbalance[0].load(Ordering::Relaxed)),
            f64::from_bits(self.imbalance[1].load(Ordering::Relaxed)),
        )
    }

    /// The metrics of `core`; panics on a core the node does not have (a programming error:
    /// cores are numbered from the node's own configuration).
    pub fn core(&self, core: u16) -> &CoreMetrics {
        &self.cores[usize::from(core)]
    }

    /// How many cores the node has.
    pub fn core_count(&self) -> u16 {
        self.cores.len() as u16
    }

    /// A counter summed over every core.
    pub fn total(&self, counter: CoreCounter) -> u64 {
        self.cores.iter().map(|c| c.counter(counter)).sum()
    }

    /// A gauge summed over every core.
    pub fn gauge_total(&self, gauge: CoreGauge) -> u64 {
        self.cores.iter().map(|c| c.gauge(gauge)).sum()
    }

    /// One histogram's samples for every core: `nodedb_core_{name}` with the node and core
    /// labels, then `extra` (`,op="read"`), buckets in seconds.
    fn render_histogram(
        &self,
        out: &mut String,
        name: &str,
        extra: &str,
        histogram: &dyn Fn(&CoreMetrics) -> &TimeHistogram,
    ) {
        let node = self.node.0;
        for (core, m) in self.cores.iter().enumerate() {
            let (labels, h) = (
                format!("node=\"{node}\",core=\"{core}\"{extra}"),
                histogram(m),
            );
            let mut cumulative = 0;
            for (i, bound) in LOOP_TURN_BUCKETS_US.iter().enumerate() {
                cumulative += h.buckets[i].load(Ordering::Relaxed);
                let le = *bound as f64 / 1e6;
                let _ = writeln!(
                    out,
                    "nodedb_core_{name}_bucket{{{labels},le=\"{le}\"}} {cumulative}"
                );
            }
            cumulative += h.buckets[LOOP_TURN_BUCKETS_US.len()].load(Ordering::Relaxed);
            let sum = h.sum_ns.load(Ordering::Relaxed) as f64 / 1e9;
            let _ = writeln!(
                out,
                "nodedb_core_{name}_bucket{{{labels},le=\"+Inf\"}} {cumulative}"
            );
            let _ = writeln!(out, "nodedb_core_{name}_sum{{{labels}}} {sum}");
            let _ = writeln!(out, "nodedb_core_{name}_count{{{labels}}} {cumulative}");
        }
    }

    /// The Prometheus text exposition (format 0.0.4), every series named `nodedb_core_*`.
    pub fn render_prometheus(&self) -> String {
        let mut out = String::new();
        let node = self.node.0;
        let mut series =
            |name: &str, help: &str, kind: &str, value: &dyn Fn(&CoreMetrics) -> f64| {
                // Writing to a String cannot fail.
                let _ = writeln!(out, "# HELP nodedb_core_{name} {help}");
                let _ = writeln!(out, "# TYPE nodedb_core_{name} {kind}");
                for (core, m) in self.cores.iter().enumerate() {
                    let _ = writeln!(
                        out,
                        "nodedb_core_{name}{{node=\"{node}\",core=\"{core}\"}} {}",
                        value(m)
                    );
                }
            };
        for c in CoreCounter::ALL {
            let (name, help) = c.name_and_help();
            series(name, help, "counter", &|m| m.counter(c) as f64 * c.scale());
        }
        for g in CoreGauge::ALL {
            let (name, help) = g.name_and_help();
            series(name, help, "gauge", &|m| m.gauge(g) as f64 * g.scale());
        }
        let histogram = |out: &mut String,
                         name: &str,
                         help: &str,
                         turns: &dyn Fn(&CoreMetrics) -> &TimeHistogram| {
            let _ = writeln!(out, "# HELP nodedb_core_{name} {help}");
            let _ = writeln!(out, "# TYPE nodedb_core_{name} histogram");
            self.render_histogram(&mut *out, name, "", turns);
        };
        histogram(
            &mut out,
            "loop_turn_seconds",
            "Duration of the core loop's turns, and of the log writes made on the core's \
             thread (work that arrives meanwhile waits).",
            &|m| &m.loop_turns,
        );
        histogram(
            &mut out,
            "loop_turn_cpu_seconds",
            "CPU time of the core loop's turns (the thread's own clock): a turn much longer \
             than its CPU time was preempted by the machine.",
            &|m| &m.loop_turn_cpu,
        );
        histogram(
            &mut out,
            "wal_write_seconds",
            "Time for one batch of log writes to become durable (a synced write: the group \
             commit of every group on the core).",
            &|m| &m.wal_write,
        );
        histogram(
            &mut out,
            "raft_commit_seconds",
            "Time from a write taken by a leader replica on the core to its entry committed \
             (appended durably by a quorum) and applied there.",
            &|m| &m.raft_commit,
        );
        let _ = writeln!(
            out,
            "# HELP nodedb_core_request_seconds Time from a client request read to its answer \
             ready, by op: read (get, scan), write (anything proposed to a log), admin \
             (routing, status, membership, load reports); every answer counts, a redirect to \
             the leader too."
        );
        let _ = writeln!(out, "# TYPE nodedb_core_request_seconds histogram");
        for kind in RequestKind::ALL {
            let label = format!(",op=\"{}\"", kind.label());
            self.render_histogram(&mut out, "request_seconds", &label, &|m| {
                &m.requests[kind as usize]
            });
        }
        let _ = writeln!(
            out,
            "# HELP nodedb_core_loop_turn_max_seconds The longest turn of the core loop since \
             the node started."
        );
        let _ = writeln!(out, "# TYPE nodedb_core_loop_turn_max_seconds gauge");
        for (core, m) in self.cores.iter().enumerate() {
            let _ = writeln!(
                out,
                "nodedb_core_loop_turn_max_seconds{{node=\"{node}\",core=\"{core}\"}} {}",
                m.loop_turns.max().as_secs_f64()
            );
        }
        // The load each core last published (a contended slot shows its previous value
        // next scrape; it is skipped here).
        let records: Vec<(usize, CoreLoadRecord)> = (0..self.load.len())
            .filter_map(|c| Some((c, self.load.read(c).ok()?)))
            .collect();
        let loads: [LoadSeries; 7] = [
            (
                "load_busy_ratio",
                "Share of the last load tick the core's executor was running tasks.",
                |r| r.cpu_busy,
            ),
            (
                "load_reads_per_second",
                "Reads taken by the core, decayed rate.",
                |r| r.reads_per_sec,
            ),
            (
                "load_writes_per_second",
                "Writes taken by the core, decayed rate.",
                |r| r.writes_per_sec,
            ),
            (
                "load_migration_bytes_per_second",
                "Snapshot bytes the core streamed to peers (moves, catch-ups), per second.",
                |r| r.migration_bytes_per_sec,
            ),
            (
                "load_bytes_stored",
                "Bytes of keys and values in the core's replicas.",
                |r| r.bytes_stored as f64,
            ),
            (
                "load_p95_latency_seconds",
                "95th percentile of the requests the core served in the last load tick.",
                |r| r.p95_latency_us / 1e6,
            ),
            (
                "load_p99_latency_seconds",
                "99th percentile of the requests the core served in the last load tick.",
                |r| r.p99_latency_us / 1e6,
            ),
        ];
        for (name, help, value) in loads {
            let _ = writeln!(out, "# HELP nodedb_core_{name} {help}");
            let _ = writeln!(out, "# TYPE nodedb_core_{name} gauge");
            for (core, r) in &records {
                let _ = writeln!(
                    out,
                    "nodedb_core_{name}{{node=\"{node}\",core=\"{core}\"}} {}",
                    value(r)
                );
            }
        }
        let (node_imbalance, core_imbalance) = self.imbalance();
        for (name, help, value) in [
            (
                "node_max_over_mean",
                "The most loaded node's score over the mean, from the coordinator's reports (0 on other nodes).",
                node_imbalance,
            ),
            (
                "core_max_over_mean",
                "The most loaded core's score over the mean, from the coordinator's reports (0 on other nodes).",
                core_imbalance,
            ),
        ] {
            let _ = writeln!(out, "# HELP nodedb_rebalancer_{name} {help}");
            let _ = writeln!(out, "# TYPE nodedb_rebalancer_{name} gauge");
            let _ = writeln!(out, "nodedb_rebalancer_{name}{{node=\"{node}\"}} {value}");
        }
        let _ = writeln!(
            out,
            "# HELP nodedb_peer_up 1 while this node's failure detector holds the peer node \
             alive, 0 while it suspects it or holds it dead."
        );
        let _ = writeln!(out, "# TYPE nodedb_peer_up gauge");
        for (peer, up) in self.peers.lock().unwrap_or_else(|e| e.into_inner()).iter() {
            let _ = writeln!(
                out,
                "nodedb_peer_up{{node=\"{node}\",peer=\"{}\"}} {}",
                peer.0,
                u8::from(*up)
            );
        }
        if let Some(l) = self.rebalancer.get() {
            l.render_prefixed("nodedb_", node, &mut out);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_series_is_exposed_per_core_with_its_value() {
        let (m, mut slots) = NodeMetrics::new(NodeId(3), 2);
        slots[1].publish(&CoreLoadRecord {
            cpu_busy: 0.25,
            writes_per_sec: 12.5,
            p99_latency_us: 1500.0,
            ..CoreLoadRecord::default()
        });
        m.core(1).add(CoreCounter::WritesAcked, 5);
        m.core(0).add(CoreCounter::WritesAcked, 2);
        m.core(1).set(CoreGauge::LeaderGroups, 4);
        assert_eq!(m.total(CoreCounter::WritesAcked), 7);
        assert_eq!(m.gauge_total(CoreGauge::LeaderGroups), 4);
        let text = m.render_prometheus();
        for line in [
            "nodedb_core_writes_acked_total{node=\"3\",core=\"0\"} 2",
            "nodedb_core_writes_acked_total{node=\"3\",core=\"1\"} 5",
            "nodedb_core_leader_groups{node=\"3\",core=\"1\"} 4",
            "nodedb_core_leader_groups{node=\"3\",core=\"0\"} 0",
            "nodedb_core_load_busy_ratio{node=\"3\",core=\"1\"} 0.25",
            "nodedb_core_load_writes_per_second{node=\"3\",core=\"1\"} 12.5",
            "nodedb_core_load_p99_latency_seconds{node=\"3\",core=\"1\"} 0.0015",
            "nodedb_core_load_busy_ratio{node=\"3\",core=\"0\"} 0",
            "# TYPE nodedb_core_load_bytes_stored gauge",
            "nodedb_core_wal_batches_total{node=\"3\",core=\"1\"} 0",
            "# TYPE nodedb_core_pending_requests gauge",
            "# TYPE nodedb_core_loop_turns_total counter",
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "missing {line:?} in\n{text}"
            );
        }
        let samples = text.lines().filter(|l| !l.starts_with('#')).count();
        // Seven load series per core besides the counters and gauges, the histograms
        // (their buckets, +Inf, sum and count) of loop turns' wall and CPU time, of log
        // writes, of Raft commits and of requests of each kind, the longest turn, and the two imbalance
        // gauges of the node.
        let histograms = 4 + RequestKind::ALL.len();
        let histogram = histograms * (LOOP_TURN_BUCKETS_US.len() + 3) + 1;
        assert_eq!(
            samples,
            2 * (CoreCounter::ALL.len() + CoreGauge::ALL.len() + 7 + histogram) + 2
        );
    }

    #[test]
    fn loop_turns_fill_cumulative_buckets_and_keep_the_longest() {
        use std::time::Duration;
        let (m, _) = NodeMetrics::new(NodeId(1), 1);
        let turns = &m.core(0).loop_turns;
        for us in [10, 60, 60, 4_000, 3_000_000] {
            turns.observe(Duration::from_micros(us));
        }
        assert_eq!(turns.count(), 5);
        assert_eq!(turns.max(), Duration::from_secs(3));
        assert_eq!(turns.take_recent_max(), Duration::from_secs(3));
        assert_eq!(turns.take_recent_max(), Duration::ZERO, "taken");
        turns.observe(Duration::from_micros(200));
        assert_eq!(turns.take_recent_max(), Duration::from_micros(200));
        m.core(0).loop_turn_cpu.observe(Duration::from_micros(70));
        m.core(0).wal_write.observe(Duration::from_micros(300));
        m.core(0).requests[RequestKind::Write as usize].observe(Duration::from_millis(3));
        let mut commits = LocalTimeHistogram::default();
        commits.observe(Duration::from_micros(700));
        commits.observe(Duration::from_millis(20));
        m.core(0).raft_commit.mirror(&commits);
        // Mirrored again after one more: the counts are the core's, not added twice.
        commits.observe(Duration::from_micros(40));
        m.core(0).raft_commit.mirror(&commits);
        m.set_peers([(NodeId(2), true), (NodeId(3), false)].into_iter());
        let text = m.render_prometheus();
        for line in [
            "nodedb_core_loop_turn_seconds_bucket{node=\"1\",core=\"0\",le=\"0.00005\"} 1",
            "nodedb_core_loop_turn_seconds_bucket{node=\"1\",core=\"0\",le=\"0.0001\"} 3",
            "nodedb_core_loop_turn_seconds_bucket{node=\"1\",core=\"0\",le=\"0.005\"} 5",
            "nodedb_core_loop_turn_seconds_bucket{node=\"1\",core=\"0\",le=\"2.5\"} 5",
            "nodedb_core_loop_turn_seconds_bucket{node=\"1\",core=\"0\",le=\"+Inf\"} 6",
            "nodedb_core_loop_turn_seconds_count{node=\"1\",core=\"0\"} 6",
            "nodedb_core_loop_turn_max_seconds{node=\"1\",core=\"0\"} 3",
            "nodedb_core_loop_turn_cpu_seconds_bucket{node=\"1\",core=\"0\",le=\"0.00005\"} 0",
            "nodedb_core_loop_turn_cpu_seconds_bucket{node=\"1\",core=\"0\",le=\"0.0001\"} 1",
            "nodedb_core_loop_turn_cpu_seconds_count{node=\"1\",core=\"0\"} 1",
            "# TYPE nodedb_core_wal_write_seconds histogram",
            "nodedb_core_wal_write_seconds_bucket{node=\"1\",core=\"0\",le=\"0.00025\"} 0",
            "nodedb_core_wal_write_seconds_bucket{node=\"1\",core=\"0\",le=\"0.0005\"} 1",
            "# TYPE nodedb_core_request_seconds histogram",
            "nodedb_core_request_seconds_bucket{node=\"1\",core=\"0\",op=\"write\",le=\"0.0025\"} 0",
            "nodedb_core_request_seconds_bucket{node=\"1\",core=\"0\",op=\"write\",le=\"0.005\"} 1",
            "nodedb_core_request_seconds_sum{node=\"1\",core=\"0\",op=\"write\"} 0.003",
            "nodedb_core_request_seconds_count{node=\"1\",core=\"0\",op=\"read\"} 0",
            "# TYPE nodedb_core_raft_commit_seconds histogram",
            "nodedb_core_raft_commit_seconds_bucket{node=\"1\",core=\"0\",le=\"0.00005\"} 1",
            "nodedb_core_raft_commit_seconds_bucket{node=\"1\",core=\"0\",le=\"0.001\"} 2",
            "nodedb_core_raft_commit_seconds_bucket{node=\"1\",core=\"0\",le=\"0.025\"} 3",
            "nodedb_core_raft_commit_seconds_count{node=\"1\",core=\"0\"} 3",
            "nodedb_peer_up{node=\"1\",peer=\"2\"} 1",
            "nodedb_peer_up{node=\"1\",peer=\"3\"} 0",
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "missing {line:?} in\n{text}"
            );
        }
    }
}
