//! Every bound and default of the crate, in one place, with the reason beside it.
//!
//! Related limits are tied together by compile-time assertions so that changing one cannot
//! silently break another.

use std::time::Duration;

// ---- vShards and placement -------------------------------------------------------------

/// Default number of vShards in a cluster. A power of two so `key -> vShard` is a shift of
/// the hash; 1024 keeps a vShard small enough to move in seconds on a 10-node cluster.
pub const VSHARD_COUNT_DEFAULT: u32 = 1024;

/// Largest supported vShard count (2^20). Placement holds one entry per vShard in memory on
/// every node; a million entries of ~64 bytes is the most we accept there.
pub const VSHARD_COUNT_MAX: u32 = 1 << 20;

/// Default replication factor, capped by the number of nodes that can hold replicas.
pub const REPLICATION_FACTOR_DEFAULT: usize = 3;

/// Largest replication factor: Raft quorum cost grows with it and 7 tolerates 3 failures.
pub const REPLICATION_FACTOR_MAX: usize = 7;

/// Most nodes in one cluster. Bounds per-node arrays in the planner and the topology.
pub const NODES_MAX: usize = 1024;

/// Most cores per node. Matches the largest machines we expect; bounds per-core arrays.
pub const CORES_PER_NODE_MAX: u16 = 256;

/// Most data groups a running cluster has (the node file's `groups`). Bounds a node's load
/// report: one sample per led group.
pub const NODE_GROUPS_MAX: u32 = 1 << 16;

const _: () = assert!(VSHARD_COUNT_DEFAULT.is_power_of_two());
const _: () = assert!(NODE_GROUPS_MAX <= VSHARD_COUNT_MAX);
const _: () = assert!(VSHARD_COUNT_MAX.is_power_of_two());
const _: () = assert!(VSHARD_COUNT_DEFAULT <= VSHARD_COUNT_MAX);
const _: () = assert!(REPLICATION_FACTOR_DEFAULT <= REPLICATION_FACTOR_MAX);

// ---- Rebalancer ---------------------------------------------------------------------------

/// A sweep is triggered when `max − min` of node scores exceeds this fraction of the mean
/// (the original NodeDB default: 20 %).
pub const REBALANCE_TRIGGER_SPREAD: f64 = 0.20;

/// A sweep is also triggered when the hottest node exceeds the mean by this fraction: in a
/// 16-node cluster a node at +15 % barely moves `max − min`, yet it is the bottleneck. Below
/// the 10 % a converged cluster promises, so a cluster at rest is always within it.
pub const REBALANCE_TRIGGER_EXCESS: f64 = 0.08;

/// A core exceeding the mean core by this fraction triggers core balancing. Looser than the
/// node excess: a core's load is a sum of fewer vShards, so it is noisier.
pub const REBALANCE_CORE_TRIGGER_EXCESS: f64 = 0.12;

/// Once triggered, balancing continues (across sweeps) until the spread of the nodes that
/// can still be improved is within this fraction of the mean. Lower than the trigger so the
/// planner has hysteresis and does not flap around the trigger.
pub const REBALANCE_TARGET_SPREAD: f64 = 0.05;

/// In an idle cluster (no data or traffic above the significance floors) the planner
/// balances replica counts alone instead of load (leadership follows load, once there is
/// some), and starts only when the counts of two nodes differ by this fraction of the
/// mean: a node that joined, or came back empty after its replicas were replaced, starts a
/// run; the few replicas by which a fresh cluster's placement rule leaves nodes apart do
/// not.
pub const REBALANCE_IDLE_TRIGGER_SPREAD: f64 = 0.5;

/// Cores inside one node are balanced until their spread is within this fraction of the
/// mean core score. Looser than the node target: a core move copies data too.
pub const REBALANCE_CORE_TARGET_SPREAD: f64 = 0.10;

const _: () = assert!(REBALANCE_TARGET_SPREAD < REBALANCE_TRIGGER_SPREAD);
const _: () = assert!(REBALANCE_TARGET_SPREAD < REBALANCE_TRIGGER_EXCESS);
const _: () = assert!(REBALANCE_TRIGGER_EXCESS < REBALANCE_CORE_TRIGGER_EXCESS);
const _: () = assert!(REBALANCE_CORE_TARGET_SPREAD < 2.0 * REBALANCE_TRIGGER_SPREAD);

/// Leader transfers one sweep may start, per node of the cluster (the original capped moves
/// of any kind at 10 per sweep). A transfer copies nothing and ends within an election
/// timeout, so transfers are the first tool for load and their budget grows with the
/// cluster; per node, because each costs an election round in one group and the hot node
/// sheds most of them.
pub const REBALANCE_LEADER_TRANSFERS_PER_NODE: usize = 16;

/// Period of the rebalancer sweep (original: 30 s). Long enough for a wave of moves to
/// finish and for the load metrics to reflect them.
pub const REBALANCE_INTERVAL: Duration = Duration::from_secs(30);

/// A vShard that was moved is not moved again for this long, so no move is reversed while
/// the metrics still reflect the old placement, and load that shifts back and forth within
/// the hour does not make data follow it.
pub const REBALANCE_COOLDOWN: Duration = Duration::from_secs(3600);

/// Skip a sweep while any node's CPU utilisation exceeds this fraction: migration costs CPU
/// and would make an overloaded node slower (original: 0.80).
pub const REBALANCE_CPU_BACKPRESSURE: f64 = 0.80;

/// A leader transfer is preferred over a replica move when it achieves at least this
/// fraction of the replica move's improvement: it moves no data and finishes in one round
/// trip.
pub const REBALANCE_LEADER_TRANSFER_PREFERENCE: f64 = 0.5;

/// A replica move between the cores of one node must carry at least this part of the mean
/// traffic per byte stored of replicas in its role (followers, or leaders). A core move is for traffic (the cores of a node
/// share its disk), and copying a vShard of the long tail of a Zipf load, which carries
/// almost nothing but its bytes, trims a hot core by a hundredth of a per cent.
pub const REBALANCE_CORE_MOVE_MIN_DENSITY: f64 = 0.5;

/// Improvements smaller than this (in units of the mean score) are not worth a move; guards
/// the greedy loop against floating-point dust.
pub const REBALANCE_MIN_IMPROVEMENT: f64 = 1e-6;

/// How often core 0 of every node reports its node's load to the coordinator.
pub const LOAD_REPORT_INTERVAL: Duration = Duration::from_secs(5);

/// A node whose last report is older than this many report intervals has unknown load: the
/// planner moves nothing onto or off it.
pub const LOAD_REPORT_STALE_INTERVALS: u32 = 3;

/// Replica moves (data copies) touching one node at once, as source or target (original
/// NodeDB: one per vShard; TiKV's store limit and CockroachDB's snapshot concurrency are of
/// the same order). Each copies a whole vShard through that node's disk and network.
pub const REBALANCE_MAX_MOVES_PER_NODE: usize = 2;

/// Replica moves in flight in the whole cluster at once. Leader transfers are bounded per
/// sweep instead (`REBALANCE_LEADER_TRANSFERS_PER_NODE`).
pub const REBALANCE_MAX_MOVES_IN_FLIGHT: usize = 8;

/// A `start_move` the coordinator proposed counts against the move limits until the table
/// shows it or this long has passed (a proposal lost to a leader change never applies).
pub const REBALANCE_PROPOSAL_TIMEOUT: Duration = Duration::from_secs(5);

/// In running nodes, a rate dimension whose mean per core is below this (requests per
/// second) is noise, not load, and is not balanced: at a few requests a second the rates
/// jump by more than the planner's triggers from one tick to the next, and moving data
/// for that load would cost more than it could save.
pub const REBALANCE_SIGNIFICANT_RATE_PER_CORE: f64 = 20.0;
/// Likewise for stored bytes per core: below 64 MiB a core's data moves in well under a
/// second and its imbalance costs nothing.
pub const REBALANCE_SIGNIFICANT_BYTES_PER_CORE: f64 = (64u64 << 20) as f64;

/// Capacity of the rebalancer's kick channel. One pending kick is enough: kicks coalesce,
/// a second kick before the sweep runs asks for nothing new.
pub const REBALANCE_KICK_CHANNEL_CAPACITY: usize = 1;

// ---- Metrics -----------------------------------------------------------------------------

/// Most loops registered in one metrics registry; each costs a few atomics.
pub const METRICS_LOOPS_MAX: usize = 64;

// ---- Runtime -----------------------------------------------------------------------------

/// io_uring registered-buffer memory per executor. glommio's default (10 MiB) exceeds a
/// typical 8 MiB `RLIMIT_MEMLOCK` once two executors run; 1 MiB lets eight fit.
pub const RUNTIME_IO_MEMORY_BYTES: usize = 1 << 20;

/// glommio refuses to start below this `RLIMIT_MEMLOCK` (its own hard minimum).
pub const RUNTIME_MEMLOCK_MIN_BYTES: u64 = 512 * 1024;

const _: () = assert!(RUNTIME_IO_MEMORY_BYTES as u64 >= RUNTIME_MEMLOCK_MIN_BYTES);

// ---- Wire --------------------------------------------------------------------------------

/// Largest frame payload. A Raft batch or snapshot chunk is at most 1 MiB by construction;
/// 4 MiB leaves room and caps what a hostile peer can make us buffer per stream.
pub const FRAME_PAYLOAD_MAX_BYTES: usize = 4 << 20;
/// On a peer's stream (`FrameDecoder::for_peer`), a payload buffer starts at this size and
/// a payload that goes past it gets its whole declared length reserved at once: a node
/// must send this much before its header's claim is believed, and the claim reserves
/// address space, not memory (pages are touched only as bytes are written). Clients' claims
/// are never believed: their buffers double as bytes arrive.
pub const FRAME_PAYLOAD_EAGER_BYTES: usize = 64 << 10;

// A report carries at most one ~40-byte sample per group and 256 core rows of ~100 bytes.
const _: () = assert!(
    (NODE_GROUPS_MAX as usize) * 40 + (CORES_PER_NODE_MAX as usize) * 100 + 64
        < FRAME_PAYLOAD_MAX_BYTES
);

// ---- Load slots --------------------------------------------------------------------------

/// A reader gives up on a slot after this many collisions with its writer. A core publishes
/// once per tick, so even one retry is rare; the bound keeps a reader from spinning forever
/// on a writer stuck in a loop.
pub const LOAD_SLOT_READ_RETRIES_MAX: usize = 1024;

// ---- QUIC transport ----------------------------------------------------------------------

/// A keep-alive every 5 s keeps NAT and idle timers from closing a quiet peer connection.
pub const QUIC_KEEP_ALIVE_INTERVAL: std::time::Duration = std::time::Duration::from_secs(5);

/// A peer silent for 30 s (six missed keep-alives) is gone; its connection is closed.
pub const QUIC_IDLE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// A client's connection to a node: a keep-alive every 250 ms, and a node silent for 1.5 s
/// (six missed keep-alives) is gone. A request in flight to a node that died then fails
/// in 1.5 s, and the client routes elsewhere, instead of waiting out
/// `CLIENT_REQUEST_TIMEOUT`. The keep-alives cost one small datagram per connection every
/// 250 ms, and only while the client holds the connection.
pub const QUIC_CLIENT_KEEP_ALIVE_INTERVAL: std::time::Duration =
    std::time::Duration::from_millis(250);
pub const QUIC_CLIENT_IDLE_TIMEOUT: std::time::Duration = std::time::Duration::from_millis(1500);

/// Per-stream receive window. 8 MiB covers the bandwidth-delay product of 10 Gbit/s at
/// 6 ms, far above a LAN's, and bounds what one stream can make us buffer.
pub const QUIC_STREAM_WINDOW_BYTES: u32 = 8 << 20;

/// Ack-eliciting packets a peer may receive from us before it must acknowledge them (QUIC's
/// ACK frequency extension, asked of peers that support it; quinn's default is 1: an ACK
/// for every second packet). Raft traffic is request and answer between core pairs, and an
/// answer carries its ACK; what is left is pure-ACK datagrams, and at 16 384 groups, with
/// the traffic spread over every core pair, they were 0.7 of the 3.95 datagrams each
/// operation cost (`demo --groups 16384`: 3.95 → 3.05 datagrams and 293 → 229–238 µs of
/// CPU per operation at 8; at 2 and 4, 3.5 and 3.2 datagrams). The peer still acknowledges
/// within its ACK delay, which the extension bounds by the path's round trip, so loss
/// recovery is not slowed; bulk snapshot streams measured the same (see README, *Scale*).
pub const QUIC_ACK_ELICITING_THRESHOLD: u32 = 8;

/// Concurrent streams a peer may open in each direction: one control stream, a few bulk
/// streams and the client request streams of one connection.
pub const QUIC_MAX_STREAMS: u32 = 256;

/// Connections one core's endpoint holds at once; more are refused (CONNECTION_REFUSED).
/// Peers need `nodes × cores` of them, clients the rest.
pub const QUIC_CONNECTIONS_MAX: usize = 1024;

/// Connections one certificate may hold on one core's endpoint (a node needs one per
/// peer core; a client process one per core it talks to, a few for tools).
pub const CONNECTIONS_PER_IDENTITY_MAX: usize = 64;

/// Bytes of unfinished requests one client connection may have a server hold, across its
/// streams (without it, 256 streams × a 4 MiB frame each). A request past it is answered
/// with an error and its stream stopped.
pub const CLIENT_CONNECTION_BUFFER_BYTES: usize = 8 << 20;

/// Datagram buffers drained per receive call; with GRO each can hold many datagrams.
pub const QUIC_RECV_BATCH: usize = 8;

/// Size of one receive buffer: the largest GRO super-datagram the kernel delivers.
pub const QUIC_RECV_SLOT_BYTES: usize = 64 * 1024;

/// Socket buffer sizes asked of the kernel (capped by `net.core.{w,r}mem_max`).
pub const QUIC_SEND_BUFFER_BYTES: usize = 4 << 20;
pub const QUIC_RECV_BUFFER_BYTES: usize = 4 << 20;

/// When the socket's send buffer is full, the driver retries after this long (glommio
/// offers no writability wait on a raw fd; the buffer drains in microseconds on loopback).
pub const QUIC_SEND_RETRY: std::time::Duration = std::time::Duration::from_micros(50);

const _: () = assert!(QUIC_KEEP_ALIVE_INTERVAL.as_secs() * 2 < QUIC_IDLE_TIMEOUT.as_secs());

/// How long an endpoint's shutdown waits for its connections to send their close and drain
/// (three probe timeouts on a LAN are milliseconds; a lost peer must not hold us longer).
pub const QUIC_SHUTDOWN_GRACE: std::time::Duration = std::time::Duration::from_secs(1);

/// Receive calls per turn of the receive task before it yields to the driver and the
/// application tasks: 4 × 8 buffers × up to 64 KiB is ~2 MiB between yields.
pub const QUIC_RECV_ROUNDS_PER_TURN: usize = 4;

/// Messages queued for one core from the other cores of its node. Enough for a burst of
/// one loop turn's forwarded requests from every core; a full inbox pushes back on senders.
pub const CORE_INBOX_CAPACITY: usize = 1024;

// ---- Certificates ------------------------------------------------------------------------

/// A node, admin or client certificate is valid this long from its issue: long enough
/// that rotation is a yearly chore, short enough that a lost key does not stay good for
/// ever (rcgen's default is the year 4096).
pub const CERT_VALIDITY_DAYS: u32 = 365;
/// The cluster CA is valid this long: every certificate it signs stops being trusted with
/// it, so it outlives them by years.
pub const CA_VALIDITY_DAYS: u32 = 3650;

const _: () = assert!(CERT_VALIDITY_DAYS < CA_VALIDITY_DAYS);

// ---- Peers -------------------------------------------------------------------------------

/// First reconnect delay after a failure; doubles per consecutive failure.
pub const PEER_BACKOFF_INITIAL: std::time::Duration = std::time::Duration::from_millis(100);
/// Longest reconnect delay.
pub const PEER_BACKOFF_MAX: std::time::Duration = std::time::Duration::from_secs(5);
/// Consecutive failures that open a peer's circuit breaker (original NodeDB: 5).
pub const PEER_BREAKER_FAILURES: u32 = 5;
/// How long an open breaker fails fast before one probe (original NodeDB: 10 s).
pub const PEER_BREAKER_COOLDOWN: std::time::Duration = std::time::Duration::from_secs(10);
/// A connection attempt that has not completed its handshake by then has failed.
pub const PEER_CONNECT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(2);
/// Control-frame bytes queued for one peer between flushes. Beyond it, senders get
/// back-pressure instead of growing the queue: a slow peer must not eat our memory.
pub const PEER_OUTBOX_MAX_BYTES: usize = 8 << 20;

const _: () = assert!(PEER_BACKOFF_INITIAL.as_millis() < PEER_BACKOFF_MAX.as_millis());
const _: () = assert!(PEER_BACKOFF_MAX.as_secs() <= PEER_BREAKER_COOLDOWN.as_secs());

// ---- Raft --------------------------------------------------------------------------------

/// Entries in one Raft message. raft-rs bounds an append by the bytes of its entries
/// (`max_size_per_msg`, 1 MiB), not by their count, and counts an entry holding a small
/// command as a few bytes: the limit must take 1 MiB of the smallest entries (4 bytes
/// each), or a follower catching up on small writes refuses every append the leader
/// sends it. (It was 4096: a learner that had to catch up 25 643 entries after a 12 s
/// move under 500 writes/s never did.) The decoder also refuses a count the remaining
/// bytes cannot hold, and reserves memory as entries actually decode.
pub const RAFT_ENTRIES_PER_MESSAGE_MAX: usize = (1 << 20) / 4;
/// Messages in one batch frame (one loop turn's traffic from one core to another).
pub const RAFT_BATCH_MESSAGES_MAX: usize = 65_536;
/// About the most bytes of one batch frame: a turn's traffic to one peer past it goes in
/// several frames. One frame may carry at most `FRAME_PAYLOAD_MAX_BYTES` (4 MiB), and raft-rs
/// may hand out many 1 MiB appends to one follower in a turn: a batch over the frame limit
/// was refused by the encoder and lost whole (raft-rs then probed and sent again).
pub const RAFT_BATCH_BYTES_MAX: usize = 2 << 20;
/// Replica ids in one conf-state list; replication factors are at most 7, joint
/// configurations double that.
pub const RAFT_CONF_IDS_MAX: usize = 64;

// ---- KV ----------------------------------------------------------------------------------

/// Longest key: keys are routing and index material, not payload.
pub const KV_KEY_MAX_BYTES: usize = 4 << 10;
/// Largest value: fits one Raft entry well under the frame bound.
pub const KV_VALUE_MAX_BYTES: usize = 1 << 20;
/// Most a vShard may hold, as its snapshot would encode it (keys, values and their length
/// prefixes): a write past it is refused, identically on every replica. Its state, its
/// snapshot and a snapshot in transfer are each held in memory whole; this bounds them
/// (and the time a compaction or a snapshot install holds its core).
pub const VSHARD_STATE_MAX_BYTES: u64 = 1 << 30;
/// A snapshot at least this large is kept in a file of its own, the log recording only
/// its metadata and checksum: the log's record size does not bound a vShard, and a
/// checkpoint does not rewrite it. Smaller ones stay inline (fewer files).
pub const SNAPSHOT_FILE_BYTES: usize = 1 << 20;
/// Most pairs one scan returns; a client pages through larger ranges.
pub const KV_SCAN_MAX_ITEMS: usize = 10_000;

const _: () = assert!(KV_KEY_MAX_BYTES + KV_VALUE_MAX_BYTES + 64 < FRAME_PAYLOAD_MAX_BYTES);
const _: () = assert!(SNAPSHOT_FILE_BYTES < WAL_RECORD_MAX_BYTES / 4);
const _: () = assert!(VSHARD_STATE_MAX_BYTES < SNAPSHOT_MAX_BYTES);

/// Raft's logical clock period. Election and heartbeat timeouts are counted in ticks.
pub const RAFT_TICK: std::time::Duration = std::time::Duration::from_millis(100);
/// Base election timeout in ticks (1 s); each election draws a timeout in `[base, base +
/// RAFT_ELECTION_SPREAD_TICKS)` from a hash of the replica, its term and its role, so
/// timeouts differ per replica and per election (fewer split votes) yet replay identically.
pub const RAFT_ELECTION_TICKS: usize = 10;
/// How far above the base an election timeout may be drawn: half the base, so a dead
/// leader is noticed within 1.5 s. A base's worth (etcd's choice) left groups without an
/// answer for up to 3.04, 2.22 and 3.01 s in three rolling restarts on the development VM
/// (`nodedb-perf availability --fault rolling`); half gave 1.79, 1.79 and 1.57 s.
pub const RAFT_ELECTION_SPREAD_TICKS: usize = RAFT_ELECTION_TICKS / 2;
/// Heartbeat period in ticks (200 ms), well under the election timeout.
pub const RAFT_HEARTBEAT_TICKS: usize = 2;

const _: () = assert!(RAFT_HEARTBEAT_TICKS * 3 < RAFT_ELECTION_TICKS);

/// A stopping node's core hands its remaining leaderships away again after this long
/// (raft-rs gives a transfer up after an election timeout if its target did not catch up).
pub const LEADERSHIP_HANDOFF_RETRY: std::time::Duration = std::time::Duration::from_millis(500);
/// How long a stopping node (SIGTERM, SIGINT) waits for its leaderships to move before it
/// stops anyway.
pub const LEADERSHIP_HANDOFF_BOUND: std::time::Duration = std::time::Duration::from_secs(5);

/// First elections a core has under way at once (`RaftHost::start_paced`); the others
/// wait their turn. All at once, 16 384 groups over three nodes of two cores saturated the
/// CPU for seconds: answers came later than a leader's check of its quorum, thousands of
/// new leaders stepped down and elected again, and start-up took 20–40 s.
pub const FIRST_CAMPAIGNS_IN_FLIGHT: usize = 256;

/// Ticks after which a first election still under way stops holding its place among
/// `FIRST_CAMPAIGNS_IN_FLIGHT` (raft-rs retries it on its own timeout).
pub const FIRST_CAMPAIGN_TICKS: u64 = 20;

/// Ticks a replica rebuilt from its log sleeps at most, waiting for a leader, before it
/// ticks on its own (once its core's paced elections are over).
pub const RECOVERED_SLEEP_TICKS: u64 = 30;

// ---- Write-ahead log ---------------------------------------------------------------------

/// Alignment and padding unit of WAL records: the O_DIRECT block size of common devices.
/// A record never shares a block with an earlier one, so a torn write cannot damage
/// acknowledged data.
pub const WAL_BLOCK_BYTES: usize = 4096;

/// A log record up to this size is written with a blocking `pwrite` on the core's thread
/// (the log is `O_DIRECT | O_DSYNC`), larger ones through io_uring. io_uring cannot issue
/// a durable write that extends the file without blocking, so it hands each one to a
/// kernel worker thread; waking that thread on a busy machine cost the tail more than the
/// write itself (development VM, 1 writer, nodes as processes: write p99 6.4–9.3 → 2.2–2.5
/// ms; the disk's own p99 was under 0.2 ms). Blocking the core for one record's write is
/// the smaller cost up to about a quarter of a millisecond of transfer.
pub const WAL_BLOCKING_WRITE_BYTES: usize = 256 << 10;
/// Largest WAL record (one persist batch). A batch is bounded by raft-rs' ready sizes; this
/// keeps the recovery buffer bounded too.
pub const WAL_RECORD_MAX_BYTES: usize = 64 << 20;

// ---- Node --------------------------------------------------------------------------------

/// Client requests one core keeps waiting for commit or ReadIndex; beyond it, new requests
/// are refused as busy (back-pressure) instead of queueing without bound.
pub const CLIENT_PENDING_MAX: usize = 16_384;
/// A request not answered by then (its leader lost leadership mid-flight) is answered with
/// an unknown outcome, so neither side waits forever.
pub const CLIENT_REQUEST_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);
/// How often each core folds its request counts into load rates and publishes its load.
pub const LOAD_TICK: std::time::Duration = std::time::Duration::from_secs(1);
/// Time constant of the decayed request rates: a step change in load shows ~63 % after
/// this long.
pub const LOAD_RATE_DECAY: std::time::Duration = std::time::Duration::from_secs(3);
/// The longest a core loop sleeps with no work: bounds shutdown latency and the retry of
/// whatever waits for a turn without waking the loop (a peer's queued batch whose
/// connection is not up yet). Every input wakes the loop, and the core's own timers
/// (`NodeCore::poll_timeout`: the next Raft tick at the latest) end the sleep earlier.
/// It was 5 ms: idle, three node processes of two cores each then woke 6 600 times a
/// second and used 0.09 of a CPU between them.
pub const NODE_LOOP_IDLE: std::time::Duration = RAFT_TICK;
/// Attempts a client makes for one request at most (redirects and retries included); the
/// call's time budget, `CLIENT_CALL_TIMEOUT`, usually ends it first.
pub const CLIENT_ATTEMPTS_MAX: usize = 400;
/// A client's call starts no attempt this long after its first. An election takes one to
/// two seconds once a leader's silence is noticed, longer on a loaded machine and when a
/// restarted node's groups elect at once; forty attempts 50 ms apart (about 2 s) gave up
/// inside a single election in a process test on a loaded 2-vCPU VM.
pub const CLIENT_CALL_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);
/// Redirects with a hint a call follows at once before it pauses `CLIENT_RETRY_BACKOFF`.
pub const CLIENT_REDIRECTS_IN_A_ROW: usize = 3;
/// A snapshot file is written in O_DIRECT writes of this size (each copied once into an
/// aligned buffer): bounds the extra memory a write of a 1 GiB vShard takes, and how long
/// one write holds the disk queue ahead of the log's own.
pub const SNAPSHOT_FILE_WRITE_BYTES: usize = 1 << 20;
/// Writes of one received snapshot's file under way at once: the disk is kept busy while
/// the next block is filled. One at a time, each 1 MiB write waited about 2.8 ms on the
/// development VM, and an unthrottled 128 MiB move's learner installed its snapshot 147 ms
/// after the last chunk (72 ms with four). At a throttled rate a write ends long before the
/// next begins, so this matters only to a move faster than one write's latency allows.
pub const SNAPSHOT_FILE_WRITES_IN_FLIGHT: usize = 4;

/// The longest reason a refused metadata command's answer carries that a client reads.
pub const METADATA_REASON_MAX_BYTES: usize = 4096;

/// How often the migration executor takes each recorded replica move one step (each step
/// is one leader view request, plus the action it decides). 10 ms: a move waits for its
/// next step twice (after the learner caught up, after the joint change), and at 50 ms
/// those waits were about 100 ms of a 16 MiB move's 260 ms; a view request is small, so a
/// hundred a second per move under way costs little.
pub const MOVE_STEP_INTERVAL: std::time::Duration = std::time::Duration::from_millis(10);
/// One of the migration executor's requests (a leader's view, a voter's durable commit
/// index, a membership change) is lost after this long; a later step asks again: they are answered at once, so silence means a lost message or a node that is
/// down, and a client's five seconds would stall a move by five seconds per lost message.
/// Above twice the worst one-way delay the simulator draws (150 ms) plus a busy turn.
pub const MOVE_REQUEST_TIMEOUT: std::time::Duration = std::time::Duration::from_millis(500);
/// Requests one call of the migration executor sends at most: a redirect or two to the
/// leader and one loss. The next step (10 ms later) starts a new call anyway.
pub const MOVE_CALL_ATTEMPTS: usize = 4;

/// Pause between a client's attempts: an election takes about a second, so 40 attempts at
/// 50 ms cover two elections.
pub const CLIENT_RETRY_BACKOFF: std::time::Duration = std::time::Duration::from_millis(50);
/// A client's QUIC handshake with a node: one round trip on a LAN; a dead node's silence
/// must not cost more than this.
pub const CLIENT_CONNECT_TIMEOUT: std::time::Duration = std::time::Duration::from_millis(500);
/// A client avoids a node that just failed it for this long, doubling per failure.
pub const CLIENT_NODE_BACKOFF: std::time::Duration = std::time::Duration::from_secs(1);
/// ... up to this, and this long after three failures in a row.
pub const CLIENT_NODE_DOWN_COOLDOWN: std::time::Duration = std::time::Duration::from_secs(10);
/// A group's log is compacted (state-machine snapshot, applied entries dropped) once it
/// holds this many applied entries **and** enough log bytes (below): bounds memory and
/// replay, while a follower a little behind still catches up from the log rather than a
/// snapshot.
pub const RAFT_LOG_COMPACT_ENTRIES: usize = 1024;
/// ... and once the log's bytes since the last snapshot reach a quarter of the state's
/// size (`RAFT_LOG_COMPACT_STATE_FRACTION`) or this many bytes, whichever is smaller. A
/// snapshot costs the whole state (serialised on the core, written to disk), so compacting
/// every 1 024 entries made a large vShard rewrite itself over and over: a 256 MiB vShard
/// written with 4 KiB values was snapshotted (256 MiB each) every 4 MiB of writes, 64×
/// write amplification. Now at most 4× (and 16× for a full 1 GiB vShard, where the cap
/// bounds the log kept in memory).
pub const RAFT_LOG_COMPACT_MAX_BYTES: u64 = 64 << 20;
/// See `RAFT_LOG_COMPACT_MAX_BYTES`: the log since the last snapshot may grow to this
/// fraction (1/N) of the state before it is compacted.
pub const RAFT_LOG_COMPACT_STATE_FRACTION: u64 = 4;
/// A learner being moved in is promoted once its log is within this many entries of the
/// commit index: close enough that the new voter does not stall commits while it catches
/// up, loose enough that a steady write load cannot keep it "behind" forever.
pub const LEARNER_CAUGHT_UP_ENTRIES: u64 = 8;
/// A reply channel carries exactly one answer.
pub const REPLY_CHANNEL_CAPACITY: usize = 1;
/// The write-ahead log is rewritten as a checkpoint (snapshots and the entries after them)
/// once it exceeds this size and twice its last checkpoint: disk use stays within about
/// twice the live state plus this.
pub const WAL_REWRITE_BYTES: u64 = 64 << 20;
/// A checkpoint (written off the core, in the background) is pushed to the disk this many
/// bytes at a time, each range waited for before the next is written: a log append queued
/// behind it waits for one range, not for the whole checkpoint.
pub const WAL_CHECKPOINT_FLUSH_BYTES: usize = 256 << 10;
/// The log's background writes (a checkpoint, the zeros ahead of the appends) go to the
/// disk no faster than this. Unpaced, a 64 MiB checkpoint took the development VM's disk
/// for 150–220 ms, and a 4 KiB durable append made meanwhile waited p99 10–12 ms (0.2–0.6
/// ms alone); paced to about 100 MiB/s in 256 KiB ranges, p99 0.6 ms, max 6 ms
/// (`docs/experiments.md`). A 64 MiB checkpoint then takes half a second.
pub const WAL_BACKGROUND_WRITE_BYTES_PER_SEC: u64 = 128 << 20;
/// The log is kept written with zeros this far past its last record, ahead of the appends
/// (by glommio's blocking thread, in the background): an `O_DIRECT | O_DSYNC` append into
/// blocks the file already has is a pure data write, while one that extends the file also
/// makes its new size durable (an inode write on every commit). A standalone 4 KiB durable
/// write on the development VM: p50 124–149 µs overwriting against 200–267 µs appending.
/// Disk use grows by at most this much per core.
pub const WAL_ZERO_AHEAD_BYTES: u64 = 4 << 20;
/// A file no longer needed (an old snapshot file, a log a checkpoint replaced) is freed
/// this many bytes at a time, each step durable on its own (`runtime::discard`): with
/// `discard` mounts every freed block is trimmed, and durable log writes wait behind the
/// trims at the device (30–60 ms for 512 MiB freed at once on the development
/// VM; a 4 KiB `O_DSYNC` append's longest wait was 70 ms beside an unlink and 5–7 ms
/// beside steps of 8 MiB, in a Python test on the same disk).
pub const DISCARD_STEP_BYTES: u64 = 8 << 20;
/// ... with this pause between steps: 512 MiB is freed in about half a second.
pub const DISCARD_STEP_PAUSE: std::time::Duration = std::time::Duration::from_millis(5);

// ---- Snapshot transfer -------------------------------------------------------------------

/// Bytes of a bulk frame's payload (a snapshot chunk, its header included) a node sends: a
/// power of two, since the receiver keeps the payload's buffer as the vShard's memory and
/// an allocator rounds other sizes up (README, *Migration*). The receiver decodes and
/// hands each chunk to its file in one turn of its core: a 1 MiB chunk took 3–10 ms of CPU
/// there on the development VM (a third of it the vShard's fresh memory touched for the
/// first time), and 256 KiB ones cut the longest turn by CPU time during a 512 MiB move
/// from the 10–25 ms histogram buckets to 10 ms, and during an unthrottled 128 MiB move
/// from 5 ms to 1 ms, with moves no slower (two interleaved pairs; README, *Migration*).
pub const SNAPSHOT_CHUNK_BYTES: usize = 256 << 10;
/// The largest chunk a node accepts: what nodes sent before `SNAPSHOT_CHUNK_BYTES` was cut
/// to 256 KiB, so that a cluster upgraded one node at a time keeps moving vShards.
pub const SNAPSHOT_CHUNK_MAX_BYTES: usize = 1 << 20;
/// Largest snapshot a replica accepts (one vShard's state): bounds the assembly buffer.
pub const SNAPSHOT_MAX_BYTES: u64 = 4 << 30;
/// Snapshot transfers one core assembles at once.
pub const SNAPSHOT_TRANSFERS_MAX: usize = 8;
/// An incomplete transfer is dropped after this long; the leader sends it again.
pub const SNAPSHOT_TRANSFER_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(60);
/// Default snapshot send rate per core, bytes per second: 100 MiB/s, the default of TiKV
/// (`snap-io-max-bytes-per-sec`) and Redpanda. With the default move limits a core sends one
/// snapshot at a time, so this is also the rate of one move. A node file may set another
/// rate or `"unlimited"`; the benchmarks run unlimited unless told otherwise.
pub const SNAPSHOT_RATE_BYTES_PER_SEC: Option<u64> = Some(100 << 20);
/// The snapshot throttle's burst, what it sends at once after a quiet spell, as time at
/// its rate. Every move starts with a burst, so the rate measured over a 10 s move
/// overshoots by burst / 10 s: 1 % (a second's burst, as this once was, gave 10 %). A
/// chunk larger than the burst is sent on credit and paid for by waiting.
pub const SNAPSHOT_RATE_BURST: std::time::Duration = std::time::Duration::from_millis(100);

const _: () = assert!(SNAPSHOT_CHUNK_BYTES <= SNAPSHOT_CHUNK_MAX_BYTES);
const _: () = assert!(SNAPSHOT_CHUNK_MAX_BYTES + 64 < FRAME_PAYLOAD_MAX_BYTES);

// ---- Failure detection (node::liveness) ------------------------------------------------

/// One probe per node per period (NodeDB and memberlist: 1 s).
pub const LIVENESS_PROBE_INTERVAL: Duration = Duration::from_secs(1);
/// A direct probe unanswered this long is retried through other members (NodeDB: 500 ms).
/// Well above a loaded loopback or LAN round trip, and half the period, so the indirect
/// probes have time to answer.
pub const LIVENESS_PROBE_TIMEOUT: Duration = Duration::from_millis(500);
/// A detector called this much later than it asked was not watching (a paused process,
/// a stalled core, a clock jump): it discounts the whole lateness. Above the lateness of
/// a busy loop turn, well below a probe timeout.
pub const LIVENESS_STALL_SLACK: Duration = Duration::from_millis(100);
/// The metadata leader records a member `Down` only if its own probe of the member failed
/// this recently (it probes it next otherwise): two periods, one to wait for its turn and
/// one for the probe.
pub const LIVENESS_CONFIRM_WITHIN: Duration = Duration::from_secs(2);
/// For this long after its process starts, a node does not suspect a member it has not
/// heard from at all yet: the member may be starting too (a whole cluster restarted:
/// suspicions one probe after start woke thousands of sleeping groups to elect).
pub const LIVENESS_STARTUP_GRACE: Duration = Duration::from_secs(5);
/// Members asked to probe a silent member on our behalf (NodeDB's and SWIM's k = 3).
pub const LIVENESS_INDIRECT_PROBES: usize = 3;
/// A suspect becomes dead after this many probe periods, times `max(1, log10 n)` (NodeDB:
/// × 4): long enough for a paused or briefly unreachable process to hear and refute.
pub const LIVENESS_SUSPICION_MULTIPLIER: f64 = 4.0;
/// State changes piggybacked on one message; bounds a message at about 200 bytes.
pub const LIVENESS_GOSSIP_PER_MESSAGE: usize = 8;
/// Each change is gossiped this many times, times `ceil(log10(n + 1))` (memberlist: 4).
pub const LIVENESS_GOSSIP_RETRANSMIT_MULTIPLIER: u32 = 4;
/// A node dead this long is recorded `Down` and its replicas are replaced (CockroachDB's
/// `server.time_until_store_dead`: 5 min). Long enough that a restart or a reboot does not
/// start copying every replica the node held.
pub const NODE_DEAD_AFTER: Duration = Duration::from_secs(300);

const _: () =
    assert!(LIVENESS_PROBE_TIMEOUT.as_millis() * 2 <= LIVENESS_PROBE_INTERVAL.as_millis());

/// A core-loop turn longer than this is logged (debug level) with where its time went.
pub const SLOW_LOOP_TURN: Duration = Duration::from_millis(5);

/// Bytes of a received vShard snapshot decoded into its new state per core-loop turn while
/// its file is written ahead (about 0.1 ms of work for 4 KiB values): its install then
/// costs the core nothing, where decoding 512 MiB at once held it for 50–60 ms.
pub const SNAPSHOT_RESTORE_BYTES_PER_TURN: usize = 1 << 20;

/// Snapshot chunks a core loop takes per turn (the rest wait for the next turns, which
/// come at once): each costs 1–3 ms of copying into fresh memory on the development VM.
pub const SNAPSHOT_CHUNKS_PER_TURN: usize = 1;

/// The nice value of a node's bulk background work (writing a log checkpoint, freeing a
/// discarded vShard): the lowest priority, so a core that wants its CPU takes it at once.
pub const BACKGROUND_NICE: i32 = 19;
