//! The Raft groups hosted by one core, over raft-rs `RawNode`, without I/O.
//!
//! A core hosts one replica of each vShard placed on it. The host is sans-IO in the
//! quinn-proto grammar: `handle_tick(now)`, `handle_message(..)`, `propose(..)` take input;
//! `poll_persist()` yields the log writes of **every** group as one batch (group commit: the
//! runtime makes the batch durable with one write and one fsync); `handle_persisted(batch)`
//! says it is durable; `poll_transmit()` and `poll_event()` drain messages and events.
//!
//! Durability rule: nothing that depends on a write leaves the host before the write is
//! durable. Messages raft-rs marks as needing persistence (votes, append acknowledgements)
//! are held until `handle_persisted`; raft-rs learns that its own log is persisted only then,
//! so a leader never counts a non-durable copy towards a commit; clients hear about a write
//! only when it is applied, which requires a durable quorum.
//!
//! Determinism: each replica's election timeout is fixed (`min = max − 1` in raft-rs'
//! terms), derived from its replica id, because raft-rs randomises with `thread_rng`.
//! raft-rs logs through slog; [`tracing_logger`] forwards it to `tracing`.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::time::Duration;

use std::cell::RefCell;
use std::rc::Rc;

use protobuf::Message as _;
use raft::eraftpb::{
    ConfChangeSingle, ConfChangeTransition, ConfChangeType, ConfChangeV2, ConfState, Entry,
    EntryType, HardState, Message, MessageType, Snapshot,
};
use raft::storage::MemStorage;
use raft::{Config, RawNode, StateRole, Storage};
use thiserror::Error;

use crate::constants::{
    FIRST_CAMPAIGN_TICKS, FIRST_CAMPAIGNS_IN_FLIGHT, RAFT_ELECTION_SPREAD_TICKS,
    RAFT_ELECTION_TICKS, RAFT_HEARTBEAT_TICKS, RAFT_LOG_COMPACT_ENTRIES,
    RAFT_LOG_COMPACT_MAX_BYTES, RAFT_LOG_COMPACT_STATE_FRACTION, RAFT_TICK, RECOVERED_SLEEP_TICKS,
    SNAPSHOT_FILE_BYTES,
};
use crate::ids::{CoreAddress, CoreId, GroupId, NodeId, ReplicaId};
use crate::replication::group_table::GroupTable;
use crate::replication::kv::{KvView, StateMachine};
use crate::replication::screen::{Recipient, Refusal, screen};
use crate::time::Time;

/// One change of a group's membership.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MembershipChange {
    /// A non-voting replica that receives the log (the first step of a replica move).
    AddLearner(ReplicaId),
    /// A voter, or a learner promoted to voter.
    AddVoter(ReplicaId),
    Remove(ReplicaId),
}

/// A group's configuration: who votes, who only receives the log, and whether a joint
/// change (old and new voters both deciding) is under way.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Membership {
    /// The voters (during a joint change, the incoming ones).
    pub voters: Vec<ReplicaId>,
    pub learners: Vec<ReplicaId>,
    pub joint: bool,
}

impl Membership {
    pub fn contains(&self, replica: ReplicaId) -> bool {
        self.voters.contains(&replica) || self.learners.contains(&replica)
    }
}

/// Caller-chosen handle that comes back with the proposal's outcome.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ProposalToken(pub u64);

/// A host operation that did not happen.
#[derive(Debug, Error, PartialEq)]
pub enum HostError {
    /// The group is not hosted on this core.
    #[error("group {0:?} is not hosted here")]
    UnknownGroup(GroupId),
    /// The group already exists.
    #[error("group {0:?} is already hosted here")]
    GroupExists(GroupId),
    /// This replica does not lead the group; `leader` is the best guess of who does.
    #[error("not the leader of {group:?}; try {leader:?}")]
    NotLeader {
        group: GroupId,
        leader: Option<CoreAddress>,
    },
    /// A message for a replica of the group that this core no longer hosts (it left, and
    /// a new replica of the same group may live here now).
    #[error("message for replica {to:?} of {group:?}, which is not hosted here")]
    WrongReplica { group: GroupId, to: ReplicaId },
    /// raft-rs refused the input.
    #[error("raft: {0}")]
    Raft(String),
    /// A message from a peer failed screening and never reached raft-rs.
    #[error("message for {group:?} refused: {refusal}")]
    Refused { group: GroupId, refusal: Refusal },
}

/// What a walk over the groups reports of one ([`RaftHost::group_states`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GroupFlags {
    /// This replica leads the group.
    pub leading: bool,
    /// This replica sleeps (quiescence).
    pub quiesced: bool,
    /// This replica knows no leader.
    pub leaderless: bool,
    /// Entries committed here and not yet applied.
    pub apply_lag: u64,
    /// Where this replica leads: the most entries a voter's log trails its own by.
    pub follower_lag: u64,
}

/// One group's share of a persist batch.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct GroupWrite {
    pub group: GroupId,
    pub hard_state: Option<HardState>,
    pub entries: Vec<Entry>,
    /// A snapshot installed from the leader (metadata and state-machine data).
    pub snapshot: Option<Snapshot>,
}

/// Everything to make durable in one write + fsync.
#[derive(Clone, Debug, PartialEq)]
#[must_use]
pub struct PersistBatch {
    pub id: u64,
    pub writes: Vec<GroupWrite>,
    /// Compactions too large to inline in a log record (`SNAPSHOT_FILE_BYTES`), as views
    /// to encode piece by piece. Nothing waits for them to be durable (the log still holds
    /// the entries they cover): a shell writes each to a file of its own in the background
    /// and records it when it is durable, never after a newer snapshot of the group; one
    /// never written only leaves the log longer. (A small compaction is in `writes`.)
    pub compactions: Vec<Compaction>,
}

/// When a group compacts its log, and what counts as a large snapshot. Nodes use the
/// defaults (`RAFT_LOG_COMPACT_ENTRIES`, `SNAPSHOT_FILE_BYTES`); the simulator uses small
/// values, so that its few writes per group take the snapshot paths under its faults.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SnapshotPolicy {
    /// A log compacts once it holds this many applied entries (and enough bytes).
    pub compact_entries: usize,
    /// A snapshot of at least this many bytes is kept as a view of its vShard and written
    /// to a file of its own (a received one ahead of its install).
    pub large_bytes: usize,
}

impl Default for SnapshotPolicy {
    fn default() -> SnapshotPolicy {
        SnapshotPolicy {
            compact_entries: RAFT_LOG_COMPACT_ENTRIES,
            large_bytes: SNAPSHOT_FILE_BYTES,
        }
    }
}

/// A group's own compaction snapshot, kept as a view of its state machine.
#[derive(Clone, Debug, PartialEq)]
pub struct Compaction {
    pub group: GroupId,
    /// Its metadata (`data` is empty: `view` encodes it).
    pub snapshot: Snapshot,
    pub view: KvView,
}

impl Compaction {
    /// The compaction as a log write with its data encoded whole (for shells that do not
    /// stream it, such as the simulator's disk).
    pub fn to_write(&self) -> GroupWrite {
        let mut snapshot = self.snapshot.clone();
        snapshot.data = self.view.encode().into();
        GroupWrite {
            group: self.group,
            snapshot: Some(snapshot),
            ..GroupWrite::default()
        }
    }
}

/// A message for another core.
#[derive(Clone, Debug, PartialEq)]
pub struct Outgoing {
    pub to: CoreAddress,
    pub group: GroupId,
    pub message: Message,
    /// For a `MsgSnapshot` whose `data` is empty: the view that encodes its data.
    pub view: Option<KvView>,
}

/// Something the host's owner must know.
#[derive(Clone, Debug, PartialEq)]
pub enum HostEvent {
    /// A proposal made here was applied; `response` is the state machine's answer.
    Applied {
        group: GroupId,
        token: ProposalToken,
        index: u64,
        response: Vec<u8>,
    },
    /// The replica here learned who leads the group.
    LeaderChanged {
        group: GroupId,
        leader: Option<ReplicaId>,
        is_self: bool,
    },
    /// An entry this replica applied (only with `set_audit(true)`): replicas of a group
    /// must report the same term and digest for every index.
    Committed {
        group: GroupId,
        index: u64,
        term: u64,
        digest: u64,
    },
    /// The group's configuration changed (at every replica that applied the change).
    MembershipChanged {
        group: GroupId,
        voters: Vec<ReplicaId>,
        learners: Vec<ReplicaId>,
        joint: bool,
    },
    /// A linearizable read asked with `read` may now be served from the state machine:
    /// every write committed before the read was asked has been applied here.
    ReadReady {
        group: GroupId,
        token: ProposalToken,
    },
}

/// What survives a crash for one group: rebuilt from the write-ahead log.
///
/// The entries are a persistent vector: a copy shares them, so a log checkpoint takes the
/// state of every group on the core in O(groups) and encodes it elsewhere. Cloning them
/// one by one (a large vShard keeps up to 64 MiB of log, 8 000–18 000 entries in the
/// migration benchmark) held each replica's core 0.4–4.8 ms when a checkpoint began.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct PersistedGroup {
    pub hard_state: HardState,
    pub entries: imbl::Vector<Entry>,
    pub snapshot: Option<Snapshot>,
}

impl PersistedGroup {
    /// The write that rebuilds this state from nothing: what a checkpoint records.
    pub fn as_write(&self, group: GroupId) -> GroupWrite {
        GroupWrite {
            group,
            hard_state: Some(self.hard_state.clone()),
            entries: self.entries.iter().cloned().collect(),
            snapshot: self.snapshot.clone(),
        }
    }

    /// Folds a write into the persisted state, as a log replay does.
    pub fn apply(&mut self, write: &GroupWrite) {
        if let Some(snapshot) = &write.snapshot {
            let index = snapshot.get_metadata().index;
            // A compaction written in the background may land after a newer snapshot:
            // a snapshot never takes the state back.
            if self
                .snapshot
                .as_ref()
                .is_none_or(|s| s.get_metadata().index < index)
            {
                let covered = self.entries_before(index + 1);
                self.entries = self.entries.split_off(covered);
                self.snapshot = Some(snapshot.clone());
            }
        }
        if let Some(first) = write.entries.first() {
            // A new entry at index i truncates the conflicting suffix from i on. The
            // entries are in index order (each write's follow the kept prefix): a search,
            // not a scan, as a large vShard keeps up to 64 MiB of log here (a scan per
            // append was 7.6 % of a move's source core).
            let kept = self.entries_before(first.index);
            self.entries.truncate(kept);
            self.entries.extend(write.entries.iter().cloned());
        }
        if let Some(hs) = &write.hard_state {
            self.hard_state = hs.clone();
        }
    }

    /// How many kept entries have an index below `index` (they are in index order).
    fn entries_before(&self, index: u64) -> usize {
        // The usual case, an append after the last entry: no search.
        if self.entries.last().is_none_or(|e| e.index < index) {
            return self.entries.len();
        }
        // Never `Equal`: the search ends at the first entry at or past `index`.
        let search = self.entries.binary_search_by(|e| {
            if e.index < index {
                std::cmp::Ordering::Less
            } else {
                std::cmp::Ordering::Greater
            }
        });
        search.unwrap_or_else(|at| at)
    }
}

/// raft-rs' view of a group's storage: the in-memory log (whose durable copy is the
/// write-ahead log) and the latest state-machine snapshot, which raft-rs sends to a
/// follower that fell behind the compacted log.
#[derive(Clone)]
pub struct GroupStorage {
    log: MemStorage,
    snapshot: Rc<RefCell<Option<Snapshot>>>,
    /// When `snapshot`'s data is empty, the view of the state machine that encodes it.
    view: Rc<RefCell<Option<KvView>>>,
    /// The views of the snapshots handed to raft-rs since its messages were last taken:
    /// a compaction may replace the kept one before the message that carries an older
    /// one leaves (`view_at`).
    handed_out: Rc<RefCell<Vec<(u64, KvView)>>>,
    /// raft-rs asked for a snapshot the stored one cannot serve (too old, or taken before
    /// the recipient joined): take a fresh one at the next chance.
    wanted: Rc<std::cell::Cell<bool>>,
    /// The log's first and last index, and its last entry's term, kept beside it
    /// (`refresh_bounds` after every change to the log: all are made here). raft-rs asks
    /// for them several times a message (the last entry's term: to send an append, to
    /// commit, to know a leader committed in its term), and each ask of `MemStorage` takes
    /// its lock, an atomic write to a cache line that is cold at tens of thousands of
    /// groups, then reads the entry, another.
    bounds: Rc<std::cell::Cell<Bounds>>,
}

/// What `GroupStorage` keeps of its log's shape.
#[derive(Clone, Copy, Debug, Default)]
struct Bounds {
    first: u64,
    last: u64,
    /// `MemStorage`'s answer for the term at `last`, when it had one.
    last_term: Option<u64>,
}

impl GroupStorage {
    /// Storage over `log`, with no snapshot yet.
    fn new(log: MemStorage) -> GroupStorage {
        let storage = GroupStorage {
            log,
            snapshot: Rc::default(),
            view: Rc::default(),
            handed_out: Rc::default(),
            wanted: Rc::default(),
            bounds: Rc::default(),
        };
        storage.refresh_bounds();
        storage
    }

    /// Reads the log's first and last index again, after a change to the log.
    fn refresh_bounds(&self) {
        // MemStorage never fails either.
        let first = self.log.first_index().unwrap_or(1);
        let last = self.log.last_index().unwrap_or(0);
        let last_term = self.log.term(last).ok();
        self.bounds.set(Bounds {
            first,
            last,
            last_term,
        });
    }

    /// Keeps `snapshot` (whose state `state_machine` now holds) to serve followers. A large
    /// one is kept as a view of the state machine rather than as its encoded bytes: the
    /// view shares the live state's memory, where the bytes would double it.
    fn keep<S: StateMachine>(&self, snapshot: &Snapshot, state_machine: &S, large: u64) {
        let view = large_view(state_machine, large);
        let mut kept = snapshot.clone();
        if view.is_some() {
            kept.data = Default::default();
        }
        self.set_kept(kept, view);
    }

    /// Sets the snapshot kept for followers: its data, or empty data and the view that
    /// encodes it.
    /// The index of the snapshot kept for followers (0: none).
    fn kept_index(&self) -> u64 {
        self.snapshot
            .borrow()
            .as_ref()
            .map_or(0, |s| s.get_metadata().index)
    }

    fn set_kept(&self, snapshot: Snapshot, view: Option<KvView>) {
        debug_assert!(view.is_none() || snapshot.data.is_empty());
        *self.snapshot.borrow_mut() = Some(snapshot);
        *self.view.borrow_mut() = view;
    }

    /// The view encoding the snapshot at `index` that was handed to raft-rs.
    fn view_at(&self, index: u64) -> Option<KvView> {
        let handed_out = self.handed_out.borrow();
        let found = handed_out.iter().find(|(i, _)| *i == index);
        found.map(|(_, view)| view.clone())
    }
}

/// For a snapshot message without data, the view that encodes it.
fn snapshot_view(storage: &GroupStorage, m: &Message) -> Option<KvView> {
    (m.get_msg_type() == MessageType::MsgSnapshot && m.get_snapshot().data.is_empty())
        .then(|| storage.view_at(m.get_snapshot().get_metadata().index))
        .flatten()
}

/// The state machine's view, when its encoded state is at least `large` bytes.
fn large_view<S: StateMachine>(state_machine: &S, large: u64) -> Option<KvView> {
    state_machine.view().filter(|v| v.encoded_len() >= large)
}

impl Storage for GroupStorage {
    fn initial_state(&self) -> raft::Result<raft::RaftState> {
        self.log.initial_state()
    }

    fn entries(
        &self,
        low: u64,
        high: u64,
        max_size: impl Into<Option<u64>>,
        context: raft::GetEntriesContext,
    ) -> raft::Result<Vec<Entry>> {
        self.log.entries(low, high, max_size, context)
    }

    fn term(&self, idx: u64) -> raft::Result<u64> {
        let bounds = self.bounds.get();
        if idx == bounds.last
            && let Some(term) = bounds.last_term
        {
            return Ok(term);
        }
        self.log.term(idx)
    }

    fn first_index(&self) -> raft::Result<u64> {
        Ok(self.bounds.get().first)
    }

    fn last_index(&self) -> raft::Result<u64> {
        Ok(self.bounds.get().last)
    }

    fn snapshot(&self, request_index: u64, to: u64) -> raft::Result<Snapshot> {
        match &*self.snapshot.borrow() {
            // raft-rs refuses to install a snapshot whose configuration does not name it: a
            // replica that joined after the last compaction (a move's learner) needs a
            // newer one.
            Some(s)
                if s.get_metadata().index >= request_index
                    && conf_names(s.get_metadata().get_conf_state(), to) =>
            {
                let index = s.get_metadata().index;
                if let Some(view) = self.view.borrow().as_ref()
                    && s.data.is_empty()
                    && self.view_at(index).is_none()
                {
                    self.handed_out.borrow_mut().push((index, view.clone()));
                }
                Ok(s.clone())
            }
            _ => {
                self.wanted.set(true);
                Err(raft::Error::Store(
                    raft::StorageError::SnapshotTemporarilyUnavailable,
                ))
            }
        }
    }
}

/// A leader that is handing leadership over (a transfer under way) or that removed itself
/// drops proposals (raft-rs' `ProposalDropped`); the client is told to find the leader
/// again, after a pause, rather than given an error: it is not a failure of the request.
/// No hint: the transferee does not lead yet, and pointing at it would make the client
/// bounce between the two.
fn refuse_while_handing_over<S>(g: &Group<S>, group: GroupId) -> Result<(), HostError> {
    let raft = &g.raw.raft;
    if raft.lead_transferee.is_some() || raft.prs().get(raft.id).is_none() {
        return Err(HostError::NotLeader {
            group,
            leader: None,
        });
    }
    Ok(())
}

/// The log bytes `entries` count for the compaction rule: data plus a fixed overhead each.
fn entries_bytes(entries: &[Entry]) -> u64 {
    entries
        .iter()
        .map(|e| e.data.len() as u64 + e.context.len() as u64 + 32)
        .sum()
}

/// Whether `id` is a voter or learner of `conf` (either half of a joint configuration).
fn conf_names(conf: &ConfState, id: u64) -> bool {
    conf.voters
        .iter()
        .chain(&conf.learners)
        .chain(&conf.voters_outgoing)
        .chain(&conf.learners_next)
        .any(|v| *v == id)
}

struct Group<S> {
    raw: RawNode<GroupStorage>,
    state_machine: S,
    leader: Option<ReplicaId>,
    /// Where its replicas live, as far as looked up (a copy of the directory's entries).
    addresses: Addresses,
    /// Messages that may leave only once the batch holding this group's write is durable.
    /// (A snapshot among them, from a leader that stepped down before its messages were
    /// taken, keeps the view that encodes its data.)
    held: Vec<(Message, Option<KvView>)>,
    /// Reads confirmed by a quorum at a commit index, waiting for it to be applied.
    pending_reads: Vec<(u64, ProposalToken)>,
    /// Reads asked of a new leader before it committed an entry of its term: raft-rs
    /// drops those silently, so they wait here and are asked once it has.
    deferred_reads: Vec<ProposalToken>,
    /// A leader that removed itself asks this voter to campaign, in this term, on its next
    /// few ticks (the voter refuses while it has not applied the removal yet).
    handover: Option<(u64, u64, u8)>,
    /// The term and role the election timeout was last drawn for, and the timeout drawn
    /// (`draw_election_timeout`).
    timeout_drawn: Option<((u64, StateRole), usize)>,
    /// The index of a snapshot installed here and not yet durable. raft-rs counts it
    /// applied only once we say so (after it is durable); until then an election would
    /// read entries from its old applied index on, which the snapshot compacted away, and
    /// raft-rs panics. So the replica neither ticks nor takes `TimeoutNow` meanwhile.
    snapshot_pending: Option<u64>,
    /// A compaction snapshot to write to the log with the next batch (with the view that
    /// encodes its data, when that is large).
    snapshot_to_persist: Option<(Snapshot, Option<KvView>)>,
    /// A state already decoded from a received snapshot (`prepare_restore`), installed
    /// instead of decoding the snapshot's data when raft-rs hands out that snapshot.
    prepared: Option<(u64, S)>,
    /// The commit index this replica's log holds durably (the last persisted hard state's).
    durable_commit: u64,
    /// Its hard state changed in the commit index alone since it was last written. Such a
    /// change is not written on its own (`poll_persist`): it goes with the group's next
    /// write, or with the flush at the next tick while the group is awake.
    commit_unwritten: bool,
    /// Someone asked for the durable commit index (`durable_commit`): the unwritten one is
    /// written with the next batch, asleep or not.
    commit_asked: bool,
    /// Bytes of entries appended to the log since its last compaction (approximate: entry
    /// data plus a fixed overhead each), for the compaction rule.
    log_bytes: u64,
    /// Proposals made here and not yet applied: index → (term, token). An entry applied
    /// at that index with that term is ours; anything else there means ours was lost. The
    /// token alone would not do: a core that restarted hands out tokens from 1 again, and
    /// an entry its earlier incarnation proposed may apply after the restart.
    proposed: BTreeMap<u64, (u64, ProposalToken)>,
    /// Quiesced: not ticked, so a leader sends no heartbeats and a follower never
    /// campaigns, until a message, a proposal or `wake_followers_of` wakes it (see
    /// [`RaftHost::set_quiesce`]).
    quiesced: bool,
    /// The term in which this replica, leading, last told its followers to sleep (its
    /// quiescing heartbeat), while it has sent them nothing unmarked and heard nothing
    /// unmarked from them since: they sleep still, so the group sleeps again without
    /// another round, and a read asks them with marked heartbeats that keep them asleep.
    followers_asleep: Option<u64>,
    /// Since this leader last woke, a read's marked heartbeats told every follower its
    /// commit index again and to sleep on. Only then may it sleep again without a round of
    /// its own: a follower may have restarted meanwhile with an older commit index (the
    /// durable one), and woken for anything else, such as a look at its view, the leader
    /// sends the quiescing round as always, which tells it the commit (simulator seed 847:
    /// a move waited for such a follower to apply its last entry).
    sleep_told: bool,
    /// Ticks left in which this leader, woken from its sleep by a proposal or a read, sends
    /// no plain heartbeat. A write to a sleeping group commits within a round and the
    /// group sleeps again at the second tick after (the first writes the new commit
    /// index): the append or the read's heartbeats went out already and keep the
    /// followers, which campaign only after `RAFT_ELECTION_TICKS`, so a heartbeat round in
    /// between (raft-rs counts the ticks before the sleep too) was nearly always waste.
    quiet_ticks: u8,
    /// The replica led the group when its role was last reported (`poll_persist`).
    leading: bool,
    /// A replica created fresh sleeps waiting for this one, the group's first leader,
    /// to campaign (`start_paced`): its node's suspicion wakes it like a leader's would.
    /// Cleared once raft-rs names a leader.
    expected_leader: Option<ReplicaId>,
}

/// A group's part of the batch being made durable: its ready number, and the commit index
/// of the hard state it writes (if it writes one).
/// A group's part of a batch: raft-rs' number of its ready (none for a flushed commit
/// index), and the commit index the batch writes for it.
type InFlight = (GroupId, Option<u64>, Option<u64>);

/// What a group left behind: a removed replica's state and log, or the state a snapshot
/// replaced. Dropping it frees them.
pub struct Discarded<S> {
    pub state: S,
    pub log: Option<MemStorage>,
}

/// The groups of one core.
pub struct RaftHost<S: StateMachine> {
    local: CoreAddress,
    groups: GroupTable<Group<S>>,
    directory: Directory,
    next_batch: u64,
    /// The batch being made durable: its id and what it holds of each group.
    in_flight: Option<(u64, Vec<InFlight>)>,
    /// Write every group's unwritten commit index with the next batch (set by a tick).
    flush_commits: bool,
    /// What groups left behind (`take_discarded`).
    discarded: Vec<Discarded<S>>,
    outbox: VecDeque<Outgoing>,
    events: VecDeque<HostEvent>,
    last_tick: Option<Time>,
    logger: slog::Logger,
    /// Report every applied entry (`HostEvent::Committed`): for checkers, not production.
    audit: bool,
    /// The owner reports each snapshot's delivery ([`RaftHost::report_snapshot`]) instead
    /// of the host assuming it delivered as soon as its message leaves.
    owner_reports_snapshots: bool,
    snapshots: SnapshotPolicy,
    /// The groups that may have something for `poll_persist` (touched since it last
    /// looked): it visits only these, so a turn costs what changed, not every group here.
    pollable: BTreeSet<GroupId>,
    /// Whether idle groups quiesce ([`RaftHost::set_quiesce`]).
    quiesce: bool,
    /// The groups a tick visits: every group not quiesced (and, until the next tick, some
    /// that just quiesced). A tick costs the groups awake, not every group here.
    awake: BTreeSet<GroupId>,
    /// How many groups this core's replica led when their roles were last reported.
    leading: usize,
    /// Nodes the failure detector suspects (`wake_followers_of`, until `node_recovered`):
    /// a leader quiesces without waiting for its replicas there to catch up.
    suspected: BTreeSet<NodeId>,
    /// Groups whose election this replica is to start, in turn (`start_paced`).
    first_campaigns: VecDeque<GroupId>,
    /// Paced elections under way, with the tick each began.
    campaigning: BTreeMap<GroupId, u64>,
    /// Replicas rebuilt from their logs asleep, waiting for their first leader, with the
    /// tick by which they wake if none was heard of (`wake_unled_sleepers`).
    unled_sleepers: VecDeque<(GroupId, u64)>,
    /// Ticks since this host started.
    ticks: u64,
    /// Counts the calls that may have changed a group (`activity`).
    activity: u64,
    /// Leaderships won and lost here (`leaderships`).
    leaderships: (u64, u64),
}

/// A slog logger whose records go to `tracing` (raft-rs logs through slog).
pub fn tracing_logger() -> slog::Logger {
    slog::Logger::root(TracingDrain, slog::o!())
}

struct TracingDrain;

impl slog::Drain for TracingDrain {
    type Ok = ();
    type Err = slog::Never;

    fn log(&self, record: &slog::Record<'_>, _: &slog::OwnedKVList) -> Result<(), slog::Never> {
        let message = record.msg();
        match record.level() {
            slog::Level::Critical | slog::Level::Error => {
                tracing::error!(target: "raft", "{message}")
            }
            slog::Level::Warning => tracing::warn!(target: "raft", "{message}"),
            slog::Level::Info => tracing::debug!(target: "raft", "{message}"),
            slog::Level::Debug | slog::Level::Trace => tracing::trace!(target: "raft", "{message}"),
        }
        Ok(())
    }
}

/// Context of a proposal entry: who proposed it, and their token.
fn proposal_context(local: CoreAddress, token: ProposalToken) -> Vec<u8> {
    let mut out = Vec::with_capacity(18);
    out.extend_from_slice(&local.node.0.to_le_bytes());
    out.extend_from_slice(&local.core.0.to_le_bytes());
    out.extend_from_slice(&token.0.to_le_bytes());
    out
}

fn parse_context(context: &[u8]) -> Option<(CoreAddress, ProposalToken)> {
    let bytes: &[u8; 18] = context.try_into().ok()?;
    let node = NodeId(u64::from_le_bytes(bytes[..8].try_into().ok()?));
    let core = CoreId(u16::from_le_bytes(bytes[8..10].try_into().ok()?));
    Some((
        CoreAddress { node, core },
        ProposalToken(u64::from_le_bytes(bytes[10..].try_into().ok()?)),
    ))
}

impl<S: StateMachine> RaftHost<S> {
    pub fn new(local: CoreAddress) -> RaftHost<S> {
        RaftHost {
            local,
            groups: GroupTable::new(),
            directory: Directory::default(),
            next_batch: 1,
            in_flight: None,
            flush_commits: false,
            discarded: Vec::new(),
            outbox: VecDeque::new(),
            events: VecDeque::new(),
            last_tick: None,
            logger: tracing_logger(),
            audit: false,
            owner_reports_snapshots: false,
            snapshots: SnapshotPolicy::default(),
            pollable: BTreeSet::new(),
            quiesce: false,
            awake: BTreeSet::new(),
            leading: 0,
            suspected: BTreeSet::new(),
            first_campaigns: VecDeque::new(),
            campaigning: BTreeMap::new(),
            unled_sleepers: VecDeque::new(),
            ticks: 0,
            activity: 0,
            leaderships: (0, 0),
        }
    }

    /// Lets idle groups quiesce (hibernate), or wakes every group and stops it.
    ///
    /// A leader whose group is settled at a tick (everything in its log committed in its
    /// term and applied), with every replica's log matching its own, nothing proposed,
    /// read or handed over, sends each replica a last
    /// heartbeat marked [`QUIESCE_CONTEXT`] and stops ticking the group. A follower that
    /// takes that heartbeat from its leader, in its term, with its own log complete up to
    /// that commit, stops ticking too, so it never campaigns. Any other message for the
    /// group, and any proposal, read or leader transfer, wakes it. A follower whose leader
    /// is on a node the failure detector suspects is woken by its owner
    /// ([`RaftHost::wake_followers_of`]).
    ///
    /// With quiescence on, a leader does not broadcast a commit on its own (raft-rs's
    /// `skip_bcast_commit`): the followers learn it from the next append or heartbeat, and a
    /// write to a sleeping group costs its append round and the quiescing heartbeat, not a
    /// round in between to tell the commit.
    pub fn set_quiesce(&mut self, on: bool) {
        self.quiesce = on;
        for (id, g) in self.groups.iter_mut() {
            g.raw.raft.skip_bcast_commit(on);
            if !on {
                g.quiesced = false;
                self.awake.insert(*id);
            }
        }
    }

    /// Wakes every quiesced follower whose leader is on `node` (the failure detector
    /// suspects it): it ticks again, so it campaigns once its election timeout passes
    /// without a word from the leader, and it sends the leader a heartbeat answer, which
    /// wakes a leader that is alive after all (a suspicion may be false: an overloaded node
    /// answers probes late): its heartbeats then keep the followers, with no new term.
    ///
    /// A sleeping follower that knows no leader yet (its first election, at start or after
    /// a restart, was to come from a replica on `node`, or from nobody named) is not woken
    /// to run its own timer: the group's lowest voter off the suspected nodes joins its
    /// core's paced elections (`start_paced`), the others sleep on a while. Woken
    /// all at once they made an election storm: after a restart of 65 536 groups, with the
    /// CPU saturated by the paced elections, the nodes suspected each other, thousands of
    /// groups a core woke and campaigned within half a second, leaders stepped down for
    /// want of a quorum, and no group had a leader after 300 s. Returns how many woke or
    /// were queued.
    pub fn wake_followers_of(&mut self, node: NodeId) -> usize {
        self.suspected.insert(node);
        let mut woken = 0;
        let mut unled = Vec::new();
        for (id, g) in self.groups.iter_mut() {
            if !g.quiesced || g.raw.raft.state == StateRole::Leader {
                continue;
            }
            let leader_node = g
                .leader
                .or(g.expected_leader)
                .and_then(|r| self.directory.get(&r))
                .map(|a| a.node);
            if leader_node.is_some_and(|n| n != node) {
                continue;
            }
            woken += 1;
            if g.leader.is_none() {
                // One replica campaigns: the lowest voter not on a suspected node. The
                // others sleep on, as replicas rebuilt from their logs do, and wake on
                // their own only if no leader spoke within `RECOVERED_SLEEP_TICKS`.
                let (directory, suspected) = (&self.directory, &self.suspected);
                let chosen = g
                    .raw
                    .raft
                    .prs()
                    .conf()
                    .voters()
                    .ids()
                    .iter()
                    .filter(|r| {
                        directory
                            .get(&ReplicaId(*r))
                            .is_none_or(|a| !suspected.contains(&a.node))
                    })
                    .min();
                if chosen == Some(g.raw.raft.id) {
                    unled.push(*id);
                } else {
                    self.unled_sleepers
                        .push_back((*id, self.ticks + RECOVERED_SLEEP_TICKS));
                }
                continue;
            }
            g.quiesced = false;
            self.awake.insert(*id);
            self.pollable.insert(*id);
            let raft = &mut g.raw.raft;
            if raft.leader_id != raft::INVALID_ID {
                let mut m = Message::default();
                m.set_msg_type(MessageType::MsgHeartbeatResponse);
                m.to = raft.leader_id;
                m.from = raft.id;
                m.term = raft.term;
                m.commit = raft.raft_log.committed;
                raft.msgs.push(m);
            }
        }
        if !unled.is_empty() {
            self.first_campaigns.extend(unled);
            self.start_first_campaigns();
        }
        woken
    }

    /// The failure detector holds `node` alive again: leaders wait for their replicas there
    /// to catch up before quiescing, as for any other.
    ///
    /// A leader that quiesced without waiting for a replica there (it was away) wakes if
    /// that replica's log is behind, so the replica catches up now rather than at the
    /// group's next write. Returns how many woke.
    pub fn node_recovered(&mut self, node: NodeId) -> usize {
        self.suspected.remove(&node);
        let mut woken = 0;
        for (id, g) in self.groups.iter_mut() {
            let raft = &g.raw.raft;
            if !g.quiesced || raft.state != StateRole::Leader {
                continue;
            }
            let last = raft.raft_log.last_index();
            let behind = raft.prs().iter().any(|(r, pr)| {
                pr.matched < last
                    && self
                        .directory
                        .get(&ReplicaId(*r))
                        .is_some_and(|a| a.node == node)
            });
            if behind {
                g.quiesced = false;
                self.awake.insert(*id);
                self.pollable.insert(*id);
                woken += 1;
            }
        }
        woken
    }

    /// Starts a group this replica just created (fresh, with no log, or rebuilt from its
    /// log at restart) whose leader is not known here. `first`, one of its voters (the
    /// same on every replica: the placement's leader hint), starts an election in turn: at
    /// most `FIRST_CAMPAIGNS_IN_FLIGHT` are under way on a core at once, the next starting
    /// as one ends (`handle_tick`). With quiescence on, every other replica, and `first`
    /// while it waits its turn, sleeps until a message wakes it (`first`'s vote requests,
    /// a leader's heartbeat) or `first`'s node is suspected.
    ///
    /// So a cluster's first elections, and those after a whole cluster restarted, are one
    /// round each, led by the replicas the placement meant to lead, paced, with no split
    /// votes and no ticking of the groups waiting: every replica ticking until its
    /// election timeout, tens of thousands per core, all electing at once, was most of a
    /// large cluster's start-up, and its restart. A node restarting alone comes back with
    /// its groups asleep: where `first` is its replica, the pre-vote is refused by
    /// followers that still trust their leader, and wakes it, whose heartbeats then bring
    /// the replica in; elsewhere the replica sleeps until the leader next writes, or wakes
    /// to catch it up (`node_recovered`) if its node was suspected meanwhile.
    ///
    /// Only where `first` and this replica are both voters of the configuration this
    /// replica's log holds; otherwise (a learner, a hint that names a learner or a
    /// replica no longer there) the group starts awake and elects as any other would: a
    /// replica asleep waiting for one that cannot campaign would wait for good (the
    /// simulator caught it: a hint named the learner of a move, and the group never
    /// elected again).
    pub fn start_paced(&mut self, group: GroupId, first: ReplicaId) -> Result<(), HostError> {
        let g = self
            .groups
            .get_mut(&group)
            .ok_or(HostError::UnknownGroup(group))?;
        let voters = g.raw.raft.prs().conf().voters();
        if !voters.contains(first.0) || !voters.contains(g.raw.raft.id) {
            return Ok(());
        }
        if g.raw.raft.id == first.0 {
            self.first_campaigns.push_back(group);
        }
        let first_suspected = self
            .directory
            .get(&first)
            .is_some_and(|a| self.suspected.contains(&a.node));
        if self.quiesce && !first_suspected {
            g.quiesced = true;
            g.expected_leader = Some(first);
            self.awake.remove(&group);
            if g.raw.raft.term > 0 && g.raw.raft.id != first.0 {
                self.unled_sleepers
                    .push_back((group, self.ticks + RECOVERED_SLEEP_TICKS));
            }
        }
        self.start_first_campaigns();
        Ok(())
    }

    /// Wakes the replicas rebuilt from their logs that still know no leader, once their
    /// time is up and this core's paced elections are over. Their group may have slept
    /// under a leader this very restart took away, its other replicas asleep still
    /// trusting it (a restart quicker than the failure detector): without this they would
    /// wait for good (the simulator caught it).
    fn wake_unled_sleepers(&mut self) {
        if !self.first_campaigns.is_empty() || !self.campaigning.is_empty() {
            return;
        }
        while let Some(&(id, due)) = self.unled_sleepers.front() {
            if due > self.ticks {
                break;
            }
            self.unled_sleepers.pop_front();
            if let Some(g) = self.groups.get_mut(&id)
                && g.quiesced
                && g.leader.is_none()
            {
                g.quiesced = false;
                self.awake.insert(id);
                self.pollable.insert(id);
            }
        }
    }

    /// Starts the paced elections whose turn came (`start_paced`). Those under way that
    /// ended are counted out at ticks only: `start_paced` runs for every group a
    /// placement table creates, tens of thousands at start.
    fn start_first_campaigns(&mut self) {
        let ticks = self.ticks;
        while self.campaigning.len() < FIRST_CAMPAIGNS_IN_FLIGHT {
            let Some(id) = self.first_campaigns.pop_front() else {
                break;
            };
            let Some(g) = self.groups.get_mut(&id) else {
                continue;
            };
            // Woken meanwhile and already electing, or led: nothing to start.
            if g.raw.raft.state != StateRole::Follower || g.raw.raft.leader_id != raft::INVALID_ID {
                continue;
            }
            g.quiesced = false;
            self.awake.insert(id);
            self.pollable.insert(id);
            if g.raw.campaign().is_ok() {
                self.campaigning.insert(id, ticks);
            }
        }
    }

    /// How many groups this core's replicas lead (as of the last `poll_persist`): a count
    /// kept up to date, not a walk over the groups, so every turn may ask.
    pub fn leader_count(&self) -> usize {
        self.leading
    }

    /// How many times a replica here became leader, and how many times one stopped
    /// leading, since the host started (as `poll_persist` saw them).
    pub fn leaderships(&self) -> (u64, u64) {
        self.leaderships
    }

    /// How many groups this core hosts.
    pub fn group_count(&self) -> usize {
        self.groups.len()
    }

    /// Every group here in id order, with its state machine and what a walk over all of
    /// them reports (the load tick): one pass.
    pub fn group_states(&self) -> impl Iterator<Item = (GroupId, &S, GroupFlags)> + '_ {
        self.groups
            .iter()
            .map(|(id, g)| (*id, &g.state_machine, flags(g)))
    }

    /// A count that moves whenever a group here other than the metadata group may have
    /// changed (a message stepped, a tick of awake groups, a ready state handled, a group
    /// added or removed); it stays put while they all sleep. A walk over those groups that
    /// saw it unchanged would find what it found before. (The metadata group stays awake
    /// on core 0 while the rebalancer proposes; a walk asks it on its own.)
    pub fn activity(&self) -> u64 {
        self.activity
    }

    /// What a walk reports of `group`, if hosted here.
    pub fn group_flags(&self, group: GroupId) -> Option<GroupFlags> {
        self.groups.get(&group).map(flags)
    }

    /// How many of this core's groups are quiesced.
    pub fn quiesced_groups(&self) -> usize {
        self.groups.values().filter(|g| g.quiesced).count()
    }

    /// How many of this core's groups know no leader (a walk over the groups).
    pub fn leaderless_groups(&self) -> usize {
        self.groups
            .values()
            .filter(|g| g.raw.raft.leader_id == raft::INVALID_ID)
            .count()
    }

    /// How many groups the next tick visits (those awake here).
    pub fn awake_groups(&self) -> usize {
        self.awake.len()
    }

    /// Whether `group` is quiesced here.
    pub fn is_quiesced(&self, group: GroupId) -> bool {
        self.groups.get(&group).is_some_and(|g| g.quiesced)
    }

    /// When groups compact their logs, and which snapshots count as large.
    pub fn set_snapshot_policy(&mut self, policy: SnapshotPolicy) {
        self.snapshots = policy;
    }

    /// Leaves reporting snapshot delivery to the owner, who streams the data out of band:
    /// raft-rs then sends a follower no other snapshot (and no entries) until the owner says
    /// the one under way was delivered or failed. Without it, a slow (throttled) transfer
    /// was followed by another snapshot on the next rejected probe, and another.
    pub fn set_owner_reports_snapshots(&mut self, on: bool) {
        self.owner_reports_snapshots = on;
    }

    /// The snapshot of `group` sent to `to` was delivered in full, or failed (it is then
    /// sent again).
    pub fn report_snapshot(&mut self, group: GroupId, to: ReplicaId, delivered: bool) {
        if let Some(g) = self.groups.get_mut(&group) {
            let status = if delivered {
                raft::SnapshotStatus::Finish
            } else {
                raft::SnapshotStatus::Failure
            };
            g.raw.report_snapshot(to.0, status);
            g.quiesced = false;
            self.awake.insert(group);
            self.pollable.insert(group);
        }
    }

    /// Reports every applied entry as `HostEvent::Committed` (simulation checkers).
    pub fn set_audit(&mut self, on: bool) {
        self.audit = on;
    }

    /// Records where a replica lives, so messages to it can be addressed.
    pub fn set_address(&mut self, replica: ReplicaId, address: CoreAddress) {
        self.directory.insert(replica, address);
    }

    /// Starts hosting `replica` of `group`, either fresh with `voters` as the initial
    /// configuration, or rebuilt from what the log persisted.
    pub fn add_group(
        &mut self,
        group: GroupId,
        replica: ReplicaId,
        voters: &[ReplicaId],
        persisted: Option<PersistedGroup>,
        mut state_machine: S,
    ) -> Result<(), HostError> {
        if self.groups.contains_key(&group) {
            return Err(HostError::GroupExists(group));
        }
        self.activity += 1;
        let log = MemStorage::new();
        let storage = GroupStorage::new(log.clone());
        let raft_err = |e: raft::Error| HostError::Raft(e.to_string());
        let mut applied = 0;
        match persisted {
            Some(p) if p.hard_state.term > 0 || p.snapshot.is_some() || !p.entries.is_empty() => {
                let mut core = log.wl();
                let conf =
                    ConfState::from((voters.iter().map(|r| r.0).collect::<Vec<_>>(), vec![]));
                if let Some(snapshot) = &p.snapshot {
                    core.apply_snapshot(snapshot.clone()).map_err(raft_err)?;
                    state_machine
                        .restore(snapshot.get_metadata().index, &snapshot.data)
                        .map_err(|e| {
                            HostError::Raft(format!("snapshot of {group:?} does not decode: {e}"))
                        })?;
                    applied = snapshot.get_metadata().index;
                    storage.keep(snapshot, &state_machine, self.snapshots.large_bytes as u64);
                } else {
                    core.set_conf_state(conf);
                }
                let entries: Vec<Entry> = p.entries.iter().cloned().collect();
                core.append(&entries).map_err(raft_err)?;
                // A snapshot is of committed entries: the commit index may be older in the
                // log, which writes a new one only with the group's next write.
                let mut hard_state = p.hard_state.clone();
                hard_state.commit = hard_state.commit.max(applied);
                core.set_hardstate(hard_state);
                // Committed entries past the snapshot are re-applied as raft-rs hands them
                // out again (applied stays at the snapshot).
            }
            _ => {
                log.initialize_with_conf_state(ConfState::from((
                    voters.iter().map(|r| r.0).collect::<Vec<_>>(),
                    vec![],
                )));
            }
        }
        self.insert_group(group, replica, applied, storage, state_machine)
    }

    fn insert_group(
        &mut self,
        group: GroupId,
        replica: ReplicaId,
        applied: u64,
        storage: GroupStorage,
        state_machine: S,
    ) -> Result<(), HostError> {
        // Recovery filled the log behind the storage's back.
        storage.refresh_bounds();
        let durable_commit = storage.log.rl().hard_state().commit;
        // A log rebuilt at restart counts what it holds.
        let log_bytes = match (storage.log.first_index(), storage.log.last_index()) {
            (Ok(first), Ok(last)) if last >= first => storage
                .log
                .entries(
                    first,
                    last + 1,
                    u64::MAX,
                    raft::GetEntriesContext::empty(false),
                )
                .map_or(0, |entries| entries_bytes(&entries)),
            _ => 0,
        };
        let mut raw = RawNode::new(&raft_config(replica, applied), storage, &self.logger)
            .map_err(|e| HostError::Raft(e.to_string()))?;
        raw.raft.skip_bcast_commit(self.quiesce);
        let g = Group {
            raw,
            state_machine,
            leader: None,
            held: Vec::new(),
            pending_reads: Vec::new(),
            deferred_reads: Vec::new(),
            handover: None,
            timeout_drawn: None,
            snapshot_pending: None,
            snapshot_to_persist: None,
            prepared: None,
            durable_commit,
            commit_unwritten: false,
            commit_asked: false,
            log_bytes,
            proposed: BTreeMap::new(),
            quiesced: false,
            followers_asleep: None,
            sleep_told: false,
            quiet_ticks: 0,
            addresses: Addresses::default(),
            leading: false,
            expected_leader: None,
        };
        self.groups.insert(group, g);
        self.pollable.insert(group);
        self.awake.insert(group);
        Ok(())
    }

    /// Starts hosting a new replica that joins an existing group as a learner, with an empty
    /// log whose configuration at index 0 is the group's **initial** one (`voters`; pass no
    /// `learners` unless the group started with some) plus itself as a learner. The leader
    /// sends it the entries from index 1, whose configuration changes then replay exactly
    /// as on every other replica, or a snapshot, which carries its own configuration.
    /// Passing the *current* configuration instead would replay those changes on top of
    /// it (re-adding a voter as a learner demotes it in raft-rs): never do that.
    pub fn add_joining_group(
        &mut self,
        group: GroupId,
        replica: ReplicaId,
        voters: &[ReplicaId],
        learners: &[ReplicaId],
        state_machine: S,
    ) -> Result<(), HostError> {
        if self.groups.contains_key(&group) {
            return Err(HostError::GroupExists(group));
        }
        let mut learner_ids: Vec<u64> = learners.iter().map(|r| r.0).collect();
        if !learner_ids.contains(&replica.0) {
            learner_ids.push(replica.0);
        }
        let log = MemStorage::new();
        log.initialize_with_conf_state(ConfState::from((
            voters.iter().map(|r| r.0).collect::<Vec<_>>(),
            learner_ids,
        )));
        let storage = GroupStorage::new(log);
        self.insert_group(group, replica, 0, storage, state_machine)
    }

    /// Stops hosting a group (its replica was removed or moved away). Its part of a batch
    /// in flight is forgotten: a new replica of the group here must not take the old one's
    /// persistence acknowledgement.
    pub fn remove_group(&mut self, group: GroupId) -> bool {
        self.activity += 1;
        if let Some((_, numbers)) = self.in_flight.as_mut() {
            numbers.retain(|(g, ..)| *g != group);
        }
        self.pollable.remove(&group);
        self.awake.remove(&group);
        let Some(g) = self.groups.remove(&group) else {
            return false;
        };
        self.leading -= usize::from(g.leading);
        let log = g.raw.store().log.clone();
        self.discarded.push(Discarded {
            state: g.state_machine,
            log: Some(log),
        });
        true
    }

    /// The states and logs groups left behind (a removed replica, the state a snapshot
    /// replaced): freeing a large vShard's takes tens of milliseconds, which the owner
    /// may spend off the core.
    pub fn take_discarded(&mut self) -> Vec<Discarded<S>> {
        std::mem::take(&mut self.discarded)
    }

    /// When the next Raft tick is due (`None` before the first `handle_tick`).
    pub fn next_tick(&self) -> Option<Time> {
        self.last_tick.map(|t| t + RAFT_TICK)
    }

    pub fn group_ids(&self) -> impl Iterator<Item = GroupId> + '_ {
        self.groups.keys().copied()
    }

    /// `state` is the state of the snapshot at `index` that `group` is about to be handed
    /// (decoded ahead, piece by piece): raft-rs's install of that snapshot takes it as is
    /// rather than decoding the snapshot's data on the spot.
    pub fn prepare_restore(&mut self, group: GroupId, index: u64, state: S) {
        if let Some(g) = self.groups.get_mut(&group) {
            g.prepared = Some((index, state));
        }
    }

    /// The state machine of a hosted group (reads after ReadIndex, tests).
    pub fn state_machine(&self, group: GroupId) -> Option<&S> {
        self.groups.get(&group).map(|g| &g.state_machine)
    }

    /// Whether this replica leads `group`.
    pub fn is_leader(&self, group: GroupId) -> bool {
        self.groups
            .get(&group)
            .is_some_and(|g| g.raw.raft.state == StateRole::Leader)
    }

    /// Whether this replica leads `group` with its state machine up to date: it committed
    /// an entry of its own term (so every entry of earlier terms it holds is committed) and
    /// applied everything committed. Until then a new leader's state may lack commands its
    /// predecessor's term committed.
    pub fn leads_with_current_state(&self, group: GroupId) -> bool {
        self.groups.get(&group).is_some_and(|g| {
            let raft = &g.raw.raft;
            raft.state == StateRole::Leader
                && raft.commit_to_current_term()
                && raft.raft_log.applied >= raft.raft_log.committed
        })
    }

    /// The index of the last entry in this replica's log of `group` (after a proposal at
    /// the leader: the proposal's index).
    pub fn last_index(&self, group: GroupId) -> Option<u64> {
        self.groups
            .get(&group)
            .map(|g| g.raw.raft.raft_log.last_index())
    }

    /// For the leader of `group`: whether the followers holding `index` make a quorum
    /// together with the leader's own copy (whether or not that copy is durable yet), and
    /// whether `index` is committed. `None` where this replica does not lead the group.
    pub fn quorum_holds(&self, group: GroupId, index: u64) -> Option<(bool, bool)> {
        let raft = &self.groups.get(&group)?.raw.raft;
        if raft.state != StateRole::Leader {
            return None;
        }
        let holds =
            |id: &u64| *id == raft.id || raft.prs().get(*id).is_some_and(|p| p.matched >= index);
        // A majority of each configuration (both while joint).
        let majority = |voters: &[u64]| {
            voters.is_empty() || voters.iter().filter(|id| holds(id)).count() > voters.len() / 2
        };
        let conf = raft.prs().conf().to_conf_state();
        Some((
            majority(&conf.voters) && majority(&conf.voters_outgoing),
            raft.raft_log.committed >= index,
        ))
    }

    /// This core's replica of `group`.
    pub fn replica_id(&self, group: GroupId) -> Option<ReplicaId> {
        self.groups.get(&group).map(|g| ReplicaId(g.raw.raft.id))
    }

    /// The commit index of `group` this replica holds durably: a restart here knows at
    /// least this much is committed (a replica move retires the old replica only once
    /// every voter durably knows the configuration that excludes it).
    ///
    /// A commit index not yet written (a sleeping replica's, say) is written with the next
    /// batch: asking again then answers it.
    pub fn durable_commit(&mut self, group: GroupId) -> Option<u64> {
        let g = self.groups.get_mut(&group)?;
        if g.commit_unwritten {
            g.commit_asked = true;
            self.pollable.insert(group);
        }
        Some(g.durable_commit)
    }

    /// A one-line summary of this replica of `group` for debugging: role, term, leader,
    /// commit and applied indexes, last log index, configuration.
    pub fn describe(&self, group: GroupId) -> Option<String> {
        let g = self.groups.get(&group)?;
        let raft = &g.raw.raft;
        Some(format!(
            "replica {} {:?} term {} leader {} commit {} applied {} last {} conf {:?}",
            raft.id,
            raft.state,
            raft.term,
            raft.leader_id,
            raft.raft_log.committed,
            raft.raft_log.applied,
            raft.raft_log.last_index(),
            raft.prs().conf().to_conf_state()
        ))
    }

    /// The current term of `group` here.
    pub fn term(&self, group: GroupId) -> Option<u64> {
        self.groups.get(&group).map(|g| g.raw.raft.term)
    }

    /// The group's configuration as this replica knows it (the leader's is authoritative).
    pub fn membership(&self, group: GroupId) -> Option<Membership> {
        let g = self.groups.get(&group)?;
        let conf = g.raw.raft.prs().conf().to_conf_state();
        let ids = |v: &[u64]| v.iter().map(|r| ReplicaId(*r)).collect::<Vec<_>>();
        Some(Membership {
            voters: ids(&conf.voters),
            learners: ids(&conf.learners),
            joint: !conf.voters_outgoing.is_empty(),
        })
    }

    /// At the leader: how far `replica`'s log is known to match, and the commit index
    /// (a learner is caught up when the first reaches the second). `None` elsewhere.
    pub fn replication(&self, group: GroupId, replica: ReplicaId) -> Option<(u64, u64)> {
        let g = self.groups.get(&group)?;
        if g.raw.raft.state != StateRole::Leader {
            return None;
        }
        let matched = g.raw.raft.prs().get(replica.0)?.matched;
        Some((matched, g.raw.raft.raft_log.committed))
    }

    /// At the leader: the voter best placed to take over from it (recently active, longest
    /// log), for handing leadership over before this replica leaves. `None` elsewhere, or
    /// when it is the only voter.
    pub fn successor(&self, group: GroupId) -> Option<ReplicaId> {
        let g = self.groups.get(&group)?;
        if g.raw.raft.state != StateRole::Leader {
            return None;
        }
        best_voter(&g.raw.raft, &g.raw.raft.prs().conf().to_conf_state().voters).map(ReplicaId)
    }

    /// Advances Raft's logical clock: one tick per `RAFT_TICK` of time since the last call.
    pub fn handle_tick(&mut self, now: Time) {
        let last = *self.last_tick.get_or_insert(now);
        let tick_nanos = RAFT_TICK.as_nanos() as u64;
        let ticks = now.saturating_since(last).as_nanos() as u64 / tick_nanos;
        if ticks == 0 {
            return;
        }
        self.last_tick = Some(last + Duration::from_nanos(ticks * tick_nanos));
        self.ticks += ticks;
        if beyond_metadata(&self.awake)
            || !self.first_campaigns.is_empty()
            || !self.campaigning.is_empty()
            || !self.unled_sleepers.is_empty()
        {
            self.activity += 1;
        }
        if !self.first_campaigns.is_empty() || !self.campaigning.is_empty() {
            let (now, groups) = (self.ticks, &self.groups);
            self.campaigning.retain(|id, began| {
                groups.get(id).is_some_and(|g| {
                    g.raw.raft.leader_id == raft::INVALID_ID
                        && now.saturating_sub(*began) < FIRST_CAMPAIGN_TICKS
                })
            });
            self.start_first_campaigns();
        }
        if !self.unled_sleepers.is_empty() {
            self.wake_unled_sleepers();
        }
        let RaftHost {
            groups,
            awake,
            pollable,
            flush_commits,
            directory,
            suspected,
            quiesce,
            ..
        } = self;
        awake.retain(|id| {
            let Some(group) = groups.get_mut(id) else {
                return false;
            };
            if group.quiesced {
                // A sleeping replica's unwritten commit index waits for its group's next
                // write, or for a question about it (`durable_commit`): at tens of
                // thousands of groups, writing it cost each write three more log records
                // (the leader's, at the tick it sleeps, and each follower's, told the
                // commit by the quiescing heartbeat).
                return false;
            }
            let mut flush = |group: &Group<S>| {
                if group.commit_unwritten && !group.quiesced {
                    *flush_commits = true;
                    pollable.insert(*id);
                }
            };
            if group.snapshot_pending.is_some() {
                flush(group);
                return true;
            }
            let mut ready = false;
            for _ in 0..ticks {
                draw_election_timeout(group);
                ready |= group.raw.tick();
            }
            if group.quiet_ticks > 0 {
                group.quiet_ticks -= 1;
                drop_plain_heartbeats(&mut group.raw.raft.msgs);
            }
            send_handover(group);
            if *quiesce {
                quiesce_if_idle(group, directory, suspected);
            }
            // After the quiescence check: a leader that sleeps now leaves its commit index
            // unwritten too.
            flush(group);
            // A follower's tick that only counts towards its election timeout leaves
            // nothing for `poll_persist`: with tens of thousands of groups awake (at start,
            // before they first elect) visiting each again cost more than the tick.
            if ready || !group.raw.raft.msgs.is_empty() {
                pollable.insert(*id);
            }
            // A leader that slept at this tick leaves the list now, not at the next.
            !group.quiesced
        });
    }

    /// Feeds a message from a replica on `node` to its group, once it passed screening
    /// ([`screen`]): nothing a peer sends can make raft-rs panic.
    pub fn handle_message(
        &mut self,
        group: GroupId,
        node: NodeId,
        message: Message,
    ) -> Result<(), HostError> {
        if group != GroupId::METADATA {
            self.activity += 1;
        }
        let g = self
            .groups
            .get_mut(&group)
            .ok_or(HostError::UnknownGroup(group))?;
        // raft-rs does not check the recipient: a message for an earlier replica of the
        // group on this core would be taken as its own (found by the simulator: a heartbeat
        // carrying the old replica's commit index crashed the new one).
        if message.to != g.raw.raft.id {
            return Err(HostError::WrongReplica {
                group,
                to: ReplicaId(message.to),
            });
        }
        let sender = address_of(&self.directory, &mut g.addresses, ReplicaId(message.from));
        let raft = &g.raw.raft;
        let recipient = Recipient {
            id: raft.id,
            last_index: raft.raft_log.last_index(),
            committed: raft.raft_log.committed,
            // Only appends are checked against it: no log lookup for other messages.
            committed_term: if message.get_msg_type() == MessageType::MsgAppend {
                raft.raft_log.term(raft.raft_log.committed).unwrap_or(0)
            } else {
                0
            },
        };
        screen(&recipient, node, sender, &message)
            .map_err(|refusal| HostError::Refused { group, refusal })?;
        if g.snapshot_pending.is_some() && message.get_msg_type() == MessageType::MsgTimeoutNow {
            // The leader asks again on its next ticks, or another replica is elected.
            return Ok(());
        }
        let quiesce_at = quiesce_commit(&message.context);
        let marked = quiesce_at.is_some();
        let kind = message.get_msg_type();
        // Any message wakes the group but a follower's answer to the leader's last
        // heartbeat before quiescing.
        if !(marked && kind == MessageType::MsgHeartbeatResponse) {
            if g.quiesced && g.raw.raft.state == StateRole::Leader {
                wake_leader(&mut g.raw.raft);
            }
            g.quiesced = false;
            g.followers_asleep = None;
            self.awake.insert(group);
        }
        let (from, term) = (message.from, message.term);
        self.pollable.insert(group);
        g.raw
            .step(message)
            .map_err(|e| HostError::Raft(e.to_string()))?;
        if let Some(leader_commit) = quiesce_at
            && kind == MessageType::MsgHeartbeat
            && self.quiesce
        {
            // Only a follower whose log holds exactly what its leader committed: one
            // behind stays awake (it would otherwise sleep behind until the next write).
            // Nor one whose leader's node is suspected: the suspicion woke the followers
            // once, and no other comes while it lasts (simulator seed 422: two followers
            // slept with their leader on a node already suspected, which then stayed
            // down for good, and the group never elected again).
            let leader_suspected = sender.is_some_and(|a| self.suspected.contains(&a.node));
            let raft = &g.raw.raft;
            g.quiesced = !leader_suspected
                && raft.state == StateRole::Follower
                && raft.leader_id == from
                && raft.term == term
                && raft.raft_log.committed == leader_commit
                && raft.raft_log.last_index() == leader_commit
                && g.snapshot_pending.is_none();
            answer_quiescing_heartbeat(g, from);
            if g.quiesced {
                // Off the tick's list at once: its next visit would only find it asleep
                // (a cold visit per follower per write, at tens of thousands of groups).
                self.awake.remove(&group);
            }
        } else if marked && kind == MessageType::MsgHeartbeat {
            // Quiescence is off here: the answer must wake the leader, which would
            // otherwise sleep while this replica ticks.
            answer_quiescing_heartbeat(g, from);
        }
        Ok(())
    }

    /// The group, if this replica leads it; otherwise who does, as far as known.
    fn leading_group(&mut self, group: GroupId) -> Result<&mut Group<S>, HostError> {
        let g = self
            .groups
            .get_mut(&group)
            .ok_or(HostError::UnknownGroup(group))?;
        if g.raw.raft.state != StateRole::Leader {
            let leader = g.leader.and_then(|r| self.directory.get(&r).copied());
            return Err(HostError::NotLeader { group, leader });
        }
        // Whatever a leader is asked to do wakes its group.
        if g.quiesced {
            g.sleep_told = false;
            wake_leader(&mut g.raw.raft);
        }
        let raft = &g.raw.raft;
        if g.quiesced
            && g.followers_asleep == Some(raft.term)
            && raft.prs().conf().learners().is_empty()
            && raft
                .prs()
                .iter()
                .all(|(_, pr)| pr.matched == raft.raft_log.last_index())
        {
            g.quiet_ticks = WAKE_QUIET_TICKS;
        }
        g.quiesced = false;
        self.awake.insert(group);
        self.pollable.insert(group);
        Ok(g)
    }

    /// `Ok` if this replica leads `group`, else where the leader probably is.
    pub fn ensure_leader(&mut self, group: GroupId) -> Result<(), HostError> {
        self.leading_group(group).map(|_| ())
    }

    /// Proposes a command; its outcome arrives as `HostEvent::Applied` with `token`.
    pub fn propose(
        &mut self,
        group: GroupId,
        command: Vec<u8>,
        token: ProposalToken,
    ) -> Result<(), HostError> {
        let local = self.local;
        let g = self.leading_group(group)?;
        refuse_while_handing_over(g, group)?;
        g.raw
            .propose(proposal_context(local, token), command)
            .map_err(|e| HostError::Raft(e.to_string()))?;
        note_proposal(g, token);
        Ok(())
    }

    /// Proposes a membership change; several changes at once go through joint consensus
    /// (Raft §6) and leave the joint configuration automatically. The outcome arrives as
    /// `HostEvent::Applied` with `token`, and `MembershipChanged` at every replica.
    pub fn change_membership(
        &mut self,
        group: GroupId,
        changes: &[MembershipChange],
        token: ProposalToken,
    ) -> Result<(), HostError> {
        let local = self.local;
        let g = self.leading_group(group)?;
        let mut cc = ConfChangeV2::default();
        cc.set_transition(ConfChangeTransition::Auto);
        cc.changes = changes
            .iter()
            .map(|c| {
                let (kind, id) = match *c {
                    MembershipChange::AddLearner(r) => (ConfChangeType::AddLearnerNode, r),
                    MembershipChange::AddVoter(r) => (ConfChangeType::AddNode, r),
                    MembershipChange::Remove(r) => (ConfChangeType::RemoveNode, r),
                };
                let mut single = ConfChangeSingle::default();
                single.set_change_type(kind);
                single.node_id = id.0;
                single
            })
            .collect::<Vec<_>>()
            .into();
        g.raw
            .propose_conf_change(proposal_context(local, token), cc)
            .map_err(|e| HostError::Raft(e.to_string()))?;
        note_proposal(g, token);
        Ok(())
    }

    /// Asks the leader of `group` to hand leadership to `to` (which must be an up-to-date
    /// voter); it does so once `to` has caught up, then stops proposing.
    pub fn transfer_leader(&mut self, group: GroupId, to: ReplicaId) -> Result<(), HostError> {
        let g = self.leading_group(group)?;
        g.raw.transfer_leader(to.0);
        Ok(())
    }

    /// Hands leadership of every group led here to another voter (its most caught-up one
    /// on a node not suspected), for a node that is about to stop: its groups get a new
    /// leader at once instead of after an election timeout. Skips groups with a transfer
    /// under way and groups with no other voter. Returns how many transfers began.
    pub fn hand_off_leaderships(&mut self) -> usize {
        let mut started = 0;
        for (id, g) in self.groups.iter_mut() {
            let raft = &g.raw.raft;
            if raft.state != StateRole::Leader || raft.lead_transferee.is_some() {
                continue;
            }
            let voters = raft.prs().conf().voters();
            let away = |r: u64| {
                self.directory
                    .get(&ReplicaId(r))
                    .is_some_and(|a| self.suspected.contains(&a.node))
            };
            let target = raft
                .prs()
                .iter()
                .filter(|(r, _)| **r != raft.id && voters.contains(**r) && !away(**r))
                .max_by_key(|(r, pr)| (pr.matched, std::cmp::Reverse(**r)))
                .map(|(r, _)| *r);
            if let Some(to) = target {
                g.quiesced = false;
                self.awake.insert(*id);
                self.pollable.insert(*id);
                g.raw.transfer_leader(to);
                started += 1;
            }
        }
        started
    }

    /// Starts a linearizable read (Raft ReadIndex): `HostEvent::ReadReady` with `token` says
    /// when the state machine here may answer it. Only the leader serves reads.
    ///
    /// A read of a sleeping group whose followers sleep since its quiescing heartbeat, with
    /// nothing under way, marks its heartbeats as quiescing ones: the followers answer it
    /// and sleep on, and the leader sleeps again at its next tick, with no round of its own.
    pub fn read(&mut self, group: GroupId, token: ProposalToken) -> Result<(), HostError> {
        let quiesce = self.quiesce;
        let g = self.leading_group(group)?;
        if g.raw.raft.commit_to_current_term() {
            let raft = &g.raw.raft;
            let context = if quiesce && g.followers_asleep == Some(raft.term) && settled(g) {
                g.sleep_told = true;
                quiescing_context(raft.raft_log.committed, Some(token))
            } else {
                token.0.to_le_bytes().to_vec()
            };
            g.raw.read_index(context);
        } else {
            g.deferred_reads.push(token);
        }
        Ok(())
    }

    /// Asks this replica to start an election now (tests, leader transfer targets).
    pub fn campaign(&mut self, group: GroupId) -> Result<(), HostError> {
        let g = self
            .groups
            .get_mut(&group)
            .ok_or(HostError::UnknownGroup(group))?;
        if g.snapshot_pending.is_some() {
            return Err(HostError::Raft(
                "a snapshot is being made durable here; campaign once it is".into(),
            ));
        }
        g.quiesced = false;
        self.awake.insert(group);
        self.pollable.insert(group);
        g.raw.campaign().map_err(|e| HostError::Raft(e.to_string()))
    }

    /// Collects every group's ready state into one batch to make durable. Returns `None`
    /// while a batch is in flight (the next one accumulates meanwhile) or when there is
    /// nothing to write. Messages that need no persistence go to the outbox at once.
    pub fn poll_persist(&mut self) -> Option<PersistBatch> {
        if self.in_flight.is_some() {
            return None;
        }
        if beyond_metadata(&self.pollable) {
            self.activity += 1;
        }
        let mut writes = Vec::new();
        let mut compactions = Vec::new();
        let mut numbers = Vec::new();
        // A tick asked for every awake group's unwritten commit index (`commit_unwritten`)
        // to be written; a sleeping group's waits (see `handle_tick`) unless asked for.
        let flush = std::mem::take(&mut self.flush_commits);
        let write_commit =
            |g: &Group<S>| g.commit_unwritten && ((flush && !g.quiesced) || g.commit_asked);
        for id in std::mem::take(&mut self.pollable) {
            let local = self.local;
            let Some(g) = self.groups.get_mut(&id) else {
                continue;
            };
            if !g.deferred_reads.is_empty() {
                if g.raw.raft.state != StateRole::Leader {
                    // Deposed before committing: the reads are dropped, as raft-rs drops
                    // pending ReadIndex requests on losing leadership; the client times
                    // out and retries elsewhere.
                    g.deferred_reads.clear();
                } else if g.raw.raft.commit_to_current_term() {
                    for token in std::mem::take(&mut g.deferred_reads) {
                        g.raw.read_index(token.0.to_le_bytes().to_vec());
                    }
                }
                if !g.deferred_reads.is_empty() {
                    // Asked again once the leader commits an entry of its term.
                    self.pollable.insert(id);
                }
            }
            if !g.raw.has_ready() {
                if write_commit(g) {
                    (g.commit_unwritten, g.commit_asked) = (false, false);
                    let hard_state = g.raw.store().log.rl().hard_state().clone();
                    numbers.push((id, None, Some(hard_state.commit)));
                    writes.push(GroupWrite {
                        group: id,
                        hard_state: Some(hard_state),
                        ..GroupWrite::default()
                    });
                }
                continue;
            }
            let mut rd = g.raw.ready();
            if let Some(ss) = rd.ss() {
                let leading = ss.raft_state == StateRole::Leader;
                if leading != g.leading {
                    g.leading = leading;
                    if leading {
                        self.leading += 1;
                        self.leaderships.0 += 1;
                    } else {
                        self.leading -= 1;
                        self.leaderships.1 += 1;
                    }
                }
                let leader = (ss.leader_id != 0).then_some(ReplicaId(ss.leader_id));
                if leader.is_some() {
                    g.expected_leader = None;
                }
                if leader != g.leader {
                    g.leader = leader;
                    let is_self = ss.raft_state == StateRole::Leader;
                    self.events.push_back(HostEvent::LeaderChanged {
                        group: id,
                        leader,
                        is_self,
                    });
                }
            }
            let mut write = GroupWrite {
                group: id,
                ..GroupWrite::default()
            };
            let mut sent_snapshots = Vec::new();
            for m in rd.take_messages() {
                if m.get_msg_type() == MessageType::MsgSnapshot {
                    sent_snapshots.push(m.to);
                }
                if quiesce_commit(&m.context).is_none() {
                    g.followers_asleep = None;
                }
                let view = snapshot_view(g.raw.store(), &m);
                route(
                    &self.directory,
                    &mut g.addresses,
                    &mut self.outbox,
                    id,
                    m,
                    view,
                );
            }
            let mut compaction = None;
            match g.snapshot_to_persist.take() {
                Some((snapshot, None)) => write.snapshot = Some(snapshot),
                Some((snapshot, Some(view))) => {
                    compaction = Some(Compaction {
                        group: id,
                        snapshot,
                        view,
                    })
                }
                None => {}
            }
            if !rd.snapshot().is_empty() {
                let snapshot = rd.snapshot().clone();
                let index = snapshot.get_metadata().index;
                let restored = match g.prepared.take() {
                    Some((at, state)) if at == index => {
                        let old = std::mem::replace(&mut g.state_machine, state);
                        self.discarded.push(Discarded {
                            state: old,
                            log: None,
                        });
                        Ok(())
                    }
                    _ => g.state_machine.restore(index, &snapshot.data),
                };
                tracing::debug!(
                    group = id.0,
                    index,
                    bytes = snapshot.data.len(),
                    "snapshot installed"
                );
                if let Err(e) = restored {
                    tracing::error!(group = id.0, error = %e, "dropping a snapshot that does not decode");
                } else {
                    // MemStorage only fails on an out-of-date snapshot, which raft-rs never hands out.
                    let _ = g.raw.store().log.wl().apply_snapshot(snapshot.clone());
                    g.raw.store().refresh_bounds();
                    g.raw.store().keep(
                        &snapshot,
                        &g.state_machine,
                        self.snapshots.large_bytes as u64,
                    );
                    write.snapshot = Some(snapshot);
                    // An older compaction would only be declined.
                    compaction = None;
                    g.snapshot_pending = Some(index);
                }
            }
            for rs in rd.take_read_states() {
                if let Some(token) = read_token(&rs.request_ctx) {
                    g.pending_reads.push((rs.index, token));
                }
            }
            // Applied only after `advance_append_async` below: applying a joint
            // configuration makes the leader append the entry that leaves it, which must
            // not land between `ready()` and its advance.
            let committed = rd.take_committed_entries();
            if !rd.entries().is_empty() {
                let _ = g.raw.store().log.wl().append(rd.entries());
                g.raw.store().refresh_bounds();
                g.log_bytes += entries_bytes(rd.entries());
                write.entries = rd.entries().clone();
            }
            if let Some(hs) = rd.hs() {
                let before = {
                    let log = g.raw.store().log.rl();
                    (log.hard_state().term, log.hard_state().vote)
                };
                g.raw.store().log.wl().set_hardstate(hs.clone());
                // A new commit index alone needs no write of its own, let alone an fsync:
                // Raft does not need it durable (a replica that restarts with an older one
                // learns the newer from the leader), and writing it cost every write a
                // second fsync on each replica, which the next write waited for. The
                // metadata group's is written at once: cores act on its table only once
                // its commit is durable.
                if (hs.term, hs.vote) != before || id == GroupId::METADATA {
                    write.hard_state = Some(hs.clone());
                } else {
                    g.commit_unwritten = true;
                    // The next tick flushes it, unless the group sleeps by then (a
                    // sleeping replica's waits, see `handle_tick`: not put on the list).
                    if !g.quiesced {
                        self.awake.insert(id);
                    }
                }
            }
            if g.commit_unwritten
                && (write_commit(g) || !write.entries.is_empty() || write.snapshot.is_some())
            {
                write.hard_state = Some(g.raw.store().log.rl().hard_state().clone());
            }
            if write.hard_state.is_some() {
                (g.commit_unwritten, g.commit_asked) = (false, false);
            }
            for m in rd.take_persisted_messages() {
                let view = snapshot_view(g.raw.store(), &m);
                g.held.push((m, view));
            }
            // Every message that carries a handed-out snapshot has been taken.
            g.raw.store().handed_out.borrow_mut().clear();
            numbers.push((
                id,
                Some(rd.number()),
                write.hard_state.as_ref().map(|h| h.commit),
            ));
            g.raw.advance_append_async(rd);
            apply_committed(&mut self.events, local, id, g, committed, self.audit);
            // Applying may have made more ready (a joint configuration's leaving entry):
            // asked here, while the group is at hand, rather than by a later visit.
            if g.raw.has_ready() {
                self.pollable.insert(id);
            }
            // Unless the owner reports delivery, a snapshot travels inside its message:
            // consider it delivered; a lost one shows as a rejected append and is sent again.
            if !self.owner_reports_snapshots {
                for to in sent_snapshots {
                    g.raw.report_snapshot(to, raft::SnapshotStatus::Finish);
                }
            }
            compactions.extend(compaction);
            if write.hard_state.is_some() || !write.entries.is_empty() || write.snapshot.is_some() {
                writes.push(write);
            }
        }
        if numbers.is_empty() {
            return None;
        }
        let id = self.next_batch;
        self.next_batch += 1;
        self.in_flight = Some((id, numbers));
        if writes.is_empty() && compactions.is_empty() {
            // Nothing to make durable: complete at once.
            self.handle_persisted(id);
            return None;
        }
        Some(PersistBatch {
            id,
            writes,
            compactions,
        })
    }

    /// The batch `id` is durable: release what waited for it, and let raft-rs know.
    pub fn handle_persisted(&mut self, id: u64) {
        let Some((in_flight, numbers)) = self.in_flight.take() else {
            return;
        };
        if in_flight != id {
            self.in_flight = Some((in_flight, numbers));
            return;
        }
        for (group, number, commit) in numbers {
            let Some(g) = self.groups.get_mut(&group) else {
                continue;
            };
            if let Some(commit) = commit {
                g.durable_commit = g.durable_commit.max(commit);
            }
            // May commit entries (the leader's own copy now counts): they come out of the
            // next `poll_persist`.
            if let Some(number) = number {
                g.raw.on_persist_ready(number);
            }
            if let Some(index) = g.snapshot_pending.take()
                && g.raw.raft.raft_log.applied < index
            {
                // The state machine holds it already (`poll_persist`).
                g.raw.advance_apply_to(index);
            }
            for (m, view) in std::mem::take(&mut g.held) {
                if quiesce_commit(&m.context).is_none() {
                    g.followers_asleep = None;
                }
                route(
                    &self.directory,
                    &mut g.addresses,
                    &mut self.outbox,
                    group,
                    m,
                    view,
                );
            }
            compact_if_long(g, self.snapshots);
            // Visited again by `poll_persist` only with something to do there: a follower's
            // persisted append leaves nothing (its answer was just routed), and at tens of
            // thousands of groups each visit is a cold lookup. (A commit index to write and
            // a read to ask again put the group on the list themselves.)
            if g.raw.has_ready() || !g.deferred_reads.is_empty() {
                self.pollable.insert(group);
            }
        }
    }

    /// The next message for another core.
    pub fn poll_transmit(&mut self) -> Option<Outgoing> {
        self.outbox.pop_front()
    }

    /// The next event for the owner.
    pub fn poll_event(&mut self) -> Option<HostEvent> {
        self.events.pop_front()
    }
}

/// raft-rs settings of one replica. Election timeouts are fixed and distinct per replica
/// (derived from its id) so runs replay exactly; raft-rs would draw them from `thread_rng`.
fn raft_config(replica: ReplicaId, applied: u64) -> Config {
    Config {
        id: replica.0,
        election_tick: RAFT_ELECTION_TICKS,
        min_election_tick: RAFT_ELECTION_TICKS,
        max_election_tick: RAFT_ELECTION_TICKS + RAFT_ELECTION_SPREAD_TICKS,
        heartbeat_tick: RAFT_HEARTBEAT_TICKS,
        applied,
        max_size_per_msg: 1 << 20,
        max_inflight_msgs: 256,
        check_quorum: true,
        pre_vote: true,
        ..Config::default()
    }
}

/// Draws the replica's election timeout, in `[RAFT_ELECTION_TICKS, RAFT_ELECTION_TICKS +
/// RAFT_ELECTION_SPREAD_TICKS)` ticks, as a hash of the replica id, its term and its role:
/// the same in every replay, and different for each replica and each election, so two
/// replicas whose elections collided once rarely collide again (fixed timeouts per
/// replica, one tick apart, collided election after election under message loss:
/// simulator seed 552). raft-rs draws its own from the thread's random generator on every
/// reset; whenever the role, the term or the value changed since our last draw, ours
/// replaces it before the next tick uses it. The hash takes nothing else (no draw count),
/// so whether a reset of raft-rs happened to draw our value, unnoticed, changes nothing.
fn draw_election_timeout<S>(g: &mut Group<S>) {
    let raft = &mut g.raw.raft;
    let key = (raft.term, raft.state);
    if g.timeout_drawn == Some((key, raft.randomized_election_timeout())) {
        return;
    }
    let hash = crate::rng::mix64(
        raft.id ^ raft.term.rotate_left(24) ^ (raft.state as u64).rotate_left(48),
    );
    let timeout = RAFT_ELECTION_TICKS + (hash % RAFT_ELECTION_SPREAD_TICKS as u64) as usize;
    raft.set_randomized_election_timeout(timeout);
    g.timeout_drawn = Some((key, timeout));
}

/// Where a compaction at `applied` cuts the log: at `applied`, except on a leader, which
/// keeps what a live replica close behind still needs: from just after the lowest index
/// one has matched, but never before the previous snapshot, so at most one compaction's
/// worth more is kept, and a replica that stays behind is given up at the next one. Cut at
/// `applied`, a follower a few entries behind needed the whole vShard as a snapshot: a
/// 768 MiB move under 500 writes/s streamed it twice, once to the learner and once to
/// the replica being moved away. A replica a snapshot is streaming to keeps what follows
/// that snapshot: cut past it, the learner needed a second one once it installed the
/// first (a 512 MiB move streamed 1.4 times its vShard).
fn compact_to<S>(g: &Group<S>, applied: u64) -> u64 {
    let raft = &g.raw.raft;
    if raft.state != StateRole::Leader {
        return applied;
    }
    let first = g.raw.store().kept_index() + 1;
    raft.prs()
        .iter()
        .filter(|(id, _)| **id != raft.id)
        .filter_map(|(_, pr)| match pr.state {
            // A snapshot on its way (a move's learner, silent while it streams): what
            // follows it.
            raft::ProgressState::Snapshot => Some(pr.pending_snapshot + 1),
            // Only replicas heard from within the last election timeout: one that
            // stopped needs a snapshot anyway.
            _ if pr.recent_active => Some(pr.matched + 1),
            _ => None,
        })
        .filter(|&next| next >= first)
        .min()
        .map_or(applied, |next| next.min(applied))
}

/// Snapshots the state machine and drops the applied log once it holds more than
/// `RAFT_LOG_COMPACT_ENTRIES` entries (and enough bytes); the snapshot goes to the log
/// with the next batch (so a restart starts from it) and serves followers that fell
/// behind. A snapshot raft-rs asked for and the log not long is only kept, to be sent.
fn compact_if_long<S: StateMachine>(g: &mut Group<S>, policy: SnapshotPolicy) {
    let applied = g.raw.raft.raft_log.applied;
    // Entries since the last snapshot: a leader's log may start before it (`compact_to`).
    let kept = g.raw.store().kept_index();
    let first = g.raw.store().first_index().unwrap_or(1).max(kept + 1);
    // A snapshot raft-rs asked for and could not get is taken as soon as anything was
    // applied since the stored one.
    let wanted = g.raw.store().wanted.get() && kept < applied;
    let long = applied >= first + policy.compact_entries as u64
        && g.log_bytes
            >= (g.state_machine.bytes_stored() / RAFT_LOG_COMPACT_STATE_FRACTION)
                .min(RAFT_LOG_COMPACT_MAX_BYTES);
    if !long && !wanted {
        return;
    }
    let Ok(term) = g.raw.store().term(applied) else {
        return;
    };
    // A large state is kept as a view (O(1)), encoded later piece by piece as it is
    // written or sent; a small one is encoded now. The core is sans-IO and has no clock:
    // the shell's loop-turn time shows the cost.
    let mut snapshot = Snapshot::default();
    let view = large_view(&g.state_machine, policy.large_bytes as u64);
    if view.is_none() {
        snapshot.data = g.state_machine.snapshot().into();
    }
    tracing::debug!(
        index = applied,
        bytes = view
            .as_ref()
            .map_or(snapshot.data.len() as u64, KvView::encoded_len),
        wanted,
        "snapshot taken"
    );
    let meta = snapshot.mut_metadata();
    meta.index = applied;
    meta.term = term;
    meta.set_conf_state(g.raw.raft.prs().conf().to_conf_state());
    if !long {
        // Taken only to be sent (a move's learner): the log stays whole and nothing is
        // written. Persisted as a compaction, a 128 MiB vShard's file took the leader's
        // disk for 390 ms while the learner wrote its own copy of it; the next compaction
        // (the log long again) persists a newer state anyway.
        g.raw.store().set_kept(snapshot, view);
        g.raw.store().wanted.set(false);
        return;
    }
    let cut = compact_to(g, applied);
    let compacted = g.raw.store().log.wl().compact(cut);
    g.raw.store().refresh_bounds();
    if compacted.is_err() {
        return;
    }
    g.raw.store().set_kept(snapshot.clone(), view.clone());
    g.raw.store().wanted.set(false);
    g.log_bytes = 0;
    g.snapshot_to_persist = Some((snapshot, view));
}

/// Where every replica this core knows lives (`RaftHost::set_address`).
#[derive(Default)]
struct Directory {
    map: HashMap<ReplicaId, CoreAddress>,
    /// Moves when a known replica's address changes: the copies groups keep
    /// ([`Addresses`]) are stale then. A replica added changes no copy (copies hold only
    /// replicas found).
    version: u64,
}

impl Directory {
    fn get(&self, replica: &ReplicaId) -> Option<&CoreAddress> {
        self.map.get(replica)
    }

    fn insert(&mut self, replica: ReplicaId, address: CoreAddress) {
        if self
            .map
            .insert(replica, address)
            .is_some_and(|old| old != address)
        {
            self.version += 1;
        }
    }
}

/// A group's copy of the directory's entries for its own replicas. The directory holds
/// every replica the core knows, three for each of tens of thousands of groups, and a
/// lookup there was a cold cache line, several times per message (screening the sender,
/// addressing each message, checking a leader's or follower's node); a group's members
/// are a handful, kept next to its state.
#[derive(Default)]
struct Addresses {
    /// The directory's `version` these were copied at.
    version: u64,
    entries: [Option<(ReplicaId, CoreAddress)>; ADDRESSES_KEPT],
}

/// Replicas a group keeps addresses for: three voters and a move's two newcomers, with one
/// to spare; past that, lookups go to the directory.
const ADDRESSES_KEPT: usize = 6;

/// Where `replica` lives, from the group's copy when it holds it, else from the directory
/// (and copied, when there is room).
fn address_of(
    directory: &Directory,
    kept: &mut Addresses,
    replica: ReplicaId,
) -> Option<CoreAddress> {
    if kept.version != directory.version {
        *kept = Addresses {
            version: directory.version,
            ..Addresses::default()
        };
    }
    let mut free = None;
    for (i, slot) in kept.entries.iter().enumerate() {
        match slot {
            Some((r, at)) if *r == replica => return Some(*at),
            None if free.is_none() => free = Some(i),
            _ => {}
        }
    }
    let at = *directory.get(&replica)?;
    if let Some(i) = free {
        kept.entries[i] = Some((replica, at));
    }
    Some(at)
}

fn route(
    directory: &Directory,
    kept: &mut Addresses,
    outbox: &mut VecDeque<Outgoing>,
    group: GroupId,
    message: Message,
    view: Option<KvView>,
) {
    match address_of(directory, kept, ReplicaId(message.to)) {
        Some(to) => outbox.push_back(Outgoing {
            to,
            group,
            message,
            view,
        }),
        None => tracing::warn!(
            group = group.0,
            to = message.to,
            "no address for replica; message dropped"
        ),
    }
}

/// Applies a committed configuration change. raft-rs requires its protobuf encoding inside
/// the entry (it parses it itself when the leader proposes); the bytes were written by our
/// own leader and checksummed on every hop, and a parse failure is logged, never a panic.
fn apply_conf_change<S: StateMachine>(
    events: &mut VecDeque<HostEvent>,
    local: CoreAddress,
    group: GroupId,
    g: &mut Group<S>,
    entry: &Entry,
) {
    let cc = match ConfChangeV2::parse_from_bytes(&entry.data) {
        Ok(cc) => cc,
        Err(e) => {
            tracing::error!(group = group.0, index = entry.index, error = %e, "undecodable configuration change");
            return;
        }
    };
    match g.raw.apply_conf_change(&cc) {
        Ok(conf) => {
            g.raw.store().log.wl().set_conf_state(conf.clone());
            step_down_if_removed(g, &conf);
            events.push_back(HostEvent::MembershipChanged {
                group,
                voters: conf.voters.iter().map(|v| ReplicaId(*v)).collect(),
                learners: conf.learners.iter().map(|v| ReplicaId(*v)).collect(),
                joint: !conf.voters_outgoing.is_empty(),
            });
        }
        Err(e) => tracing::warn!(group = group.0, error = %e, "configuration change refused"),
    }
    report_applied(events, local, group, g, entry, Vec::new());
}

/// A leader that applied a configuration without itself must stop leading: raft-rs keeps
/// it leader, and its next step would panic looking for its own progress (found by the
/// simulator: the replica being moved away was elected during the joint phase and applied
/// its own removal). It becomes a follower, which cannot campaign as it is no voter, and
/// tells the most up-to-date remaining voter to start an election on its next ticks.
fn step_down_if_removed<S>(g: &mut Group<S>, conf: &ConfState) {
    let raft = &mut g.raw.raft;
    let id = raft.id;
    if raft.state != StateRole::Leader
        || conf.voters.contains(&id)
        || conf.voters_outgoing.contains(&id)
    {
        return;
    }
    let successor = best_voter(raft, &conf.voters);
    let term = raft.term;
    raft.become_follower(term, raft::INVALID_ID);
    g.handover = successor.map(|to| (to, term, HANDOVER_TICKS));
}

/// Among `voters` other than `raft` itself, the one with the longest log, preferring those
/// raft-rs marks recently active (a voter on a dead node keeps its last `matched` and must
/// not win a tie). `check_quorum` clears every mark once per election timeout, until the
/// next replies: in that window the longest log wins alone.
fn best_voter(raft: &raft::Raft<GroupStorage>, voters: &[u64]) -> Option<u64> {
    voters
        .iter()
        .filter(|r| **r != raft.id)
        .filter_map(|r| raft.prs().get(*r).map(|p| (*r, p)))
        .max_by_key(|(r, p)| (p.recent_active, p.matched, std::cmp::Reverse(*r)))
        .map(|(r, _)| r)
}

/// `handle_tick` calls (each advancing at least one tick) on which a stepped-down leader
/// repeats its `TimeoutNow` (harmless once a newer term exists: its term is then stale).
const HANDOVER_TICKS: u8 = 3;

fn send_handover<S>(g: &mut Group<S>) {
    let Some((to, term, left)) = g.handover else {
        return;
    };
    let raft = &mut g.raw.raft;
    if left == 0 || raft.term != term {
        g.handover = None;
        return;
    }
    let mut m = Message::default();
    m.set_msg_type(MessageType::MsgTimeoutNow);
    m.to = to;
    m.from = raft.id;
    m.term = term;
    raft.msgs.push(m);
    g.handover = Some((to, term, left - 1));
}

/// How the context of a leader's last heartbeat before its group quiesces begins (then the
/// leader's commit index, 8 bytes little-endian), and the followers' answers to it, which
/// carry the same context. A read's heartbeats carry its 8-byte token; those of a read of
/// a sleeping group carry the quiescing context and then the token, so that its followers
/// answer and sleep on.
pub const QUIESCE_CONTEXT: &[u8] = b"nodedb:quiesce";

/// The leader's commit index, if `context` is a quiescing heartbeat's (a read's or not).
fn quiesce_commit(context: &[u8]) -> Option<u64> {
    let rest = context.strip_prefix(QUIESCE_CONTEXT)?;
    if rest.len() != 8 && rest.len() != 16 {
        return None;
    }
    Some(u64::from_le_bytes(rest[..8].try_into().ok()?))
}

/// The read token a ReadIndex context carries: the whole context, or the last 8 bytes of
/// a sleeping group's read (`quiescing_read_context`).
fn read_token(context: &[u8]) -> Option<ProposalToken> {
    let token = match context.strip_prefix(QUIESCE_CONTEXT) {
        Some(rest) if rest.len() == 16 => &rest[8..],
        Some(_) => return None,
        None => context,
    };
    Some(ProposalToken(u64::from_le_bytes(token.try_into().ok()?)))
}

/// The context of a quiescing heartbeat: the mark and the leader's commit index, then the
/// read's token if it is a read's.
fn quiescing_context(committed: u64, token: Option<ProposalToken>) -> Vec<u8> {
    let mut context = Vec::with_capacity(QUIESCE_CONTEXT.len() + 16);
    context.extend_from_slice(QUIESCE_CONTEXT);
    context.extend_from_slice(&committed.to_le_bytes());
    if let Some(token) = token {
        context.extend_from_slice(&token.0.to_le_bytes());
    }
    context
}

/// A leader's group has nothing under way: everything in its log committed in its term
/// and applied, nothing proposed, read, handed over or being made durable. A commit index
/// not yet written does not hold the group awake: the tick that finds it asks for it to
/// be written (`flush_commits`), and a quiesced group stays in the awake set until it is.
/// (It used to: the leader then slept a tick later, one more tick of every replica awake
/// per write where writes are spread over many groups.)
fn settled<S>(g: &Group<S>) -> bool {
    let raft = &g.raw.raft;
    // The role first: most awake replicas a tick visits are followers, and the log's last
    // index is behind a lock in the group's storage, cold at tens of thousands of groups.
    raft.state == StateRole::Leader
        && raft.raft_log.committed == raft.raft_log.last_index()
        && raft.raft_log.applied == raft.raft_log.committed
        && raft.commit_to_current_term()
        && raft.lead_transferee.is_none()
        && !raft.has_pending_conf()
        && raft.pending_read_count() == 0
        && g.pending_reads.is_empty()
        && g.deferred_reads.is_empty()
        && g.held.is_empty()
        && g.handover.is_none()
        && g.snapshot_pending.is_none()
        && g.snapshot_to_persist.is_none()
        && g.proposed.is_empty()
}

/// Quiesces a leader's group at the first tick that finds it settled, with every replica's
/// log caught up (but those on `suspected` nodes): its last heartbeat, marked, tells the
/// followers to quiesce too. A replica on a suspected node that comes back behind
/// campaigns, which wakes the group, and catches up.
///
/// It does not wait for idle ticks first. Where writes are spread over many groups, each
/// write wakes one, and every tick it stayed awake could cost a heartbeat round on top of
/// the quiescing one: waiting five ticks, `demo --groups 16384` did 0.22–0.62 × the
/// operations of `--groups 8`; two ticks, 0.42–0.56 ×. A busy group that sleeps between
/// two writes pays one heartbeat round for it, about what staying awake costs.
fn quiesce_if_idle<S>(g: &mut Group<S>, directory: &Directory, suspected: &BTreeSet<NodeId>) {
    // Only the leader of a settled group decides.
    if !settled(g) {
        return;
    }
    let raft = &g.raw.raft;
    let (last, committed) = (raft.raft_log.last_index(), raft.raft_log.committed);
    let away = |id: u64| {
        directory
            .get(&ReplicaId(id))
            .is_some_and(|a| suspected.contains(&a.node))
    };
    // Where a replica lives is asked only of one behind (a lookup in the directory).
    let caught_up = raft.prs().iter().all(|(id, pr)| {
        *id == raft.id
            || (pr.matched == last && pr.state == raft::ProgressState::Replicate)
            || away(*id)
    });
    if !caught_up {
        return;
    }
    if g.followers_asleep == Some(raft.term) && g.sleep_told {
        // They were told to sleep at this commit index and nothing since woke them, and
        // the read that woke the leader told them both again: the leader sleeps without a
        // round, and without a heartbeat this tick may have queued.
        drop_plain_heartbeats(&mut g.raw.raft.msgs);
        g.quiesced = true;
        return;
    }
    // As raft-rs does for every heartbeat, a replica is told to commit no further than it
    // matched: one on a suspected node may be behind, with entries of an older term at
    // indexes the leader committed differently, which it must never commit. The leader's
    // own commit index rides in the context.
    let peers: Vec<(u64, u64)> = raft
        .prs()
        .iter()
        .filter(|(id, _)| **id != raft.id)
        .map(|(id, pr)| (*id, pr.matched.min(committed)))
        .collect();
    let context = bytes::Bytes::from(quiescing_context(committed, None));
    let raft = &mut g.raw.raft;
    // The quiescing heartbeat says all a plain one this tick would (the same commit
    // index), so a plain one due now is not sent as well.
    drop_plain_heartbeats(&mut raft.msgs);
    for (to, commit) in peers {
        let mut m = Message::default();
        m.set_msg_type(MessageType::MsgHeartbeat);
        m.to = to;
        m.from = raft.id;
        m.term = raft.term;
        m.commit = commit;
        m.context = context.clone();
        raft.msgs.push(m);
    }
    g.followers_asleep = Some(raft.term);
    g.quiesced = true;
}

/// Rewrites a follower's answer to its leader's quiescing heartbeat (raft-rs echoes the
/// context) once the follower decided whether to sleep. Asleep, it does not answer a plain
/// quiescing heartbeat at all: the leader sleeps already and would only drop it. Awake
/// (behind, its leader suspected, or quiescence off here), it answers unmarked, which
/// wakes the leader, so that a round of heartbeats brings it in before the group sleeps;
/// a read's answer keeps its mark, which the read needs, and a plain answer follows it.
fn answer_quiescing_heartbeat<S>(g: &mut Group<S>, leader: u64) {
    let msgs = &mut g.raw.raft.msgs;
    let Some(at) = msgs.iter().rposition(|m| {
        m.get_msg_type() == MessageType::MsgHeartbeatResponse
            && m.to == leader
            && quiesce_commit(&m.context).is_some()
    }) else {
        return;
    };
    let a_read = read_token(&msgs[at].context).is_some();
    match (g.quiesced, a_read) {
        (true, true) => {}
        (true, false) => {
            msgs.remove(at);
        }
        (false, false) => msgs[at].context = bytes::Bytes::new(),
        (false, true) => {
            let mut plain = msgs[at].clone();
            plain.context = bytes::Bytes::new();
            msgs.push(plain);
        }
    }
}

/// A sleeping leader wakes: its next quorum check (`check_quorum`) comes a whole election
/// timeout on. Its followers, asleep, did not answer its last heartbeats, so it heard
/// from none since its last check, which may have been just before it slept; checked at
/// its first tick, before the answers to what woke it arrive, it would step down.
fn wake_leader(raft: &mut raft::Raft<GroupStorage>) {
    if raft.state == StateRole::Leader {
        raft.election_elapsed = 0;
    }
}

/// Ticks after a request wakes a sleeping leader in which it sends no plain heartbeat
/// (`Group::quiet_ticks`): well within the followers' election timeout.
const WAKE_QUIET_TICKS: u8 = RAFT_HEARTBEAT_TICKS as u8;
const _: () = assert!(3 * RAFT_HEARTBEAT_TICKS < RAFT_ELECTION_TICKS);

/// Drops the heartbeats a leader's tick queued that carry no context (a pending read's
/// carry its context, and stay).
fn drop_plain_heartbeats(msgs: &mut Vec<Message>) {
    msgs.retain(|m| m.get_msg_type() != MessageType::MsgHeartbeat || !m.context.is_empty());
}

/// Remembers the entry a proposal just appended: the log's last, in the current term.
fn note_proposal<S>(g: &mut Group<S>, token: ProposalToken) {
    let index = g.raw.raft.raft_log.last_index();
    g.proposed.insert(index, (g.raw.raft.term, token));
}

/// Tells the owner that an entry proposed here was applied, with the state machine's answer
/// (entries proposed elsewhere are answered there). Proposals at or before the entry's
/// index that are not it were lost: they are forgotten.
fn report_applied<S>(
    events: &mut VecDeque<HostEvent>,
    local: CoreAddress,
    group: GroupId,
    g: &mut Group<S>,
    entry: &Entry,
    response: Vec<u8>,
) {
    let ours = g.proposed.remove(&entry.index);
    while g
        .proposed
        .first_key_value()
        .is_some_and(|(index, _)| *index < entry.index)
    {
        g.proposed.pop_first();
    }
    if let Some((proposer, token)) = parse_context(&entry.context)
        && proposer == local
        && ours == Some((entry.term, token))
    {
        events.push_back(HostEvent::Applied {
            group,
            token,
            index: entry.index,
            response,
        });
    }
}

fn flags<S: StateMachine>(g: &Group<S>) -> GroupFlags {
    let raft = &g.raw.raft;
    let leading = raft.state == StateRole::Leader;
    let follower_lag = if leading {
        let last = raft.raft_log.last_index();
        let voters = raft.prs().conf().voters();
        raft.prs()
            .iter()
            .filter(|(id, _)| voters.contains(**id))
            .map(|(_, pr)| last.saturating_sub(pr.matched))
            .max()
            .unwrap_or(0)
    } else {
        0
    };
    GroupFlags {
        leading,
        quiesced: g.quiesced,
        leaderless: raft.leader_id == raft::INVALID_ID,
        apply_lag: raft
            .raft_log
            .committed
            .saturating_sub(raft.raft_log.applied),
        follower_lag,
    }
}

/// Whether `groups` holds one other than the metadata group.
fn beyond_metadata(groups: &BTreeSet<GroupId>) -> bool {
    groups.range(GroupId(1)..).next().is_some()
}

fn apply_committed<S: StateMachine>(
    events: &mut VecDeque<HostEvent>,
    local: CoreAddress,
    group: GroupId,
    g: &mut Group<S>,
    entries: Vec<Entry>,
    audit: bool,
) {
    let mut last = None;
    for entry in entries {
        last = Some(entry.index);
        if audit {
            let digest = entry
                .data
                .iter()
                .fold(crate::rng::mix64(entry.get_entry_type() as u64), |h, b| {
                    crate::rng::mix64(h ^ u64::from(*b))
                });
            events.push_back(HostEvent::Committed {
                group,
                index: entry.index,
                term: entry.term,
                digest,
            });
        }
        if entry.get_entry_type() == EntryType::EntryConfChangeV2 {
            apply_conf_change(events, local, group, g, &entry);
            continue;
        }
        if entry.get_entry_type() != EntryType::EntryNormal || entry.data.is_empty() {
            // Empty entries are leader no-ops; v1 configuration changes are never proposed.
            continue;
        }
        if entry.index <= g.state_machine.applied_index() {
            continue;
        }
        let response = g.state_machine.apply(entry.index, &entry.data);
        report_applied(events, local, group, g, &entry, response);
    }
    if let Some(index) = last {
        g.raw.advance_apply_to(index);
    }
    let applied = g.raw.raft.raft_log.applied;
    g.pending_reads.retain(|(index, token)| {
        let ready = *index <= applied;
        if ready {
            events.push_back(HostEvent::ReadReady {
                group,
                token: *token,
            });
        }
        !ready
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_groups_copy_of_an_address_follows_the_directory() {
        let at = |node, core| CoreAddress {
            node: NodeId(node),
            core: CoreId(core),
        };
        let (a, b) = (at(1, 0), at(2, 1));
        let mut directory = Directory::default();
        let mut kept = Addresses::default();
        assert_eq!(address_of(&directory, &mut kept, ReplicaId(7)), None);
        directory.insert(ReplicaId(7), a);
        assert_eq!(address_of(&directory, &mut kept, ReplicaId(7)), Some(a));
        // A replica added leaves the copies alone; one given a new address drops them.
        directory.insert(ReplicaId(8), b);
        assert_eq!(directory.version, 0);
        assert_eq!(address_of(&directory, &mut kept, ReplicaId(7)), Some(a));
        directory.insert(ReplicaId(7), b);
        assert_eq!(address_of(&directory, &mut kept, ReplicaId(7)), Some(b));
        // More replicas than a copy keeps are still found, from the directory.
        for r in 10..20 {
            directory.insert(ReplicaId(r), at(r, 0));
        }
        for _ in 0..2 {
            for r in 10..20 {
                assert_eq!(
                    address_of(&directory, &mut kept, ReplicaId(r)),
                    Some(at(r, 0))
                );
            }
        }
        assert_eq!(address_of(&directory, &mut kept, ReplicaId(7)), Some(b));
    }

    fn entries(indexes: std::ops::RangeInclusive<u64>, term: u64) -> Vec<Entry> {
        indexes
            .map(|index| Entry {
                index,
                term,
                ..Entry::default()
            })
            .collect()
    }

    /// The storage's kept shape answers as `MemStorage` does, through appends that replace
    /// a suffix, compactions and snapshots.
    #[test]
    fn the_storage_answers_first_last_and_terms_as_its_log_does() {
        let storage = GroupStorage::new(MemStorage::new());
        let same = |storage: &GroupStorage| {
            let log = &storage.log;
            assert_eq!(storage.first_index().unwrap(), log.first_index().unwrap());
            assert_eq!(storage.last_index().unwrap(), log.last_index().unwrap());
            let last = log.last_index().unwrap();
            for idx in 0..=last + 2 {
                assert_eq!(
                    storage.term(idx).ok(),
                    log.term(idx).ok(),
                    "term at {idx} (last {last})"
                );
            }
        };
        same(&storage);
        let change = |f: &dyn Fn(&mut raft::storage::MemStorageCore)| {
            f(&mut storage.log.wl());
            storage.refresh_bounds();
            same(&storage);
        };
        change(&|log| log.append(&entries(1..=10, 1)).unwrap());
        change(&|log| log.append(&entries(8..=9, 2)).unwrap());
        change(&|log| log.compact(5).unwrap());
        change(&|log| {
            let mut snapshot = Snapshot::default();
            snapshot.mut_metadata().index = 20;
            snapshot.mut_metadata().term = 3;
            log.apply_snapshot(snapshot).unwrap()
        });
        change(&|log| log.append(&entries(21..=22, 3)).unwrap());
    }

    fn indexes_and_terms(g: &PersistedGroup) -> Vec<(u64, u64)> {
        g.entries.iter().map(|e| (e.index, e.term)).collect()
    }

    /// Folding writes is what a replay does: a write's entries replace the conflicting
    /// suffix from their first index on, and a snapshot drops the entries it covers.
    #[test]
    fn a_write_replaces_the_conflicting_suffix_and_a_snapshot_drops_what_it_covers() {
        let mut g = PersistedGroup::default();
        let write = |entries: Vec<Entry>, snapshot: Option<u64>| GroupWrite {
            group: GroupId(1),
            hard_state: None,
            entries,
            snapshot: snapshot.map(|index| {
                let mut s = Snapshot::default();
                s.mut_metadata().index = index;
                s
            }),
        };
        g.apply(&write(entries(1..=10, 1), None));
        g.apply(&write(entries(7..=8, 2), None));
        let mut expected: Vec<(u64, u64)> = (1..=6).map(|i| (i, 1)).collect();
        expected.extend([(7, 2), (8, 2)]);
        assert_eq!(indexes_and_terms(&g), expected);
        g.apply(&write(entries(9..=12, 2), None));
        g.apply(&write(Vec::new(), Some(5)));
        assert_eq!(
            indexes_and_terms(&g),
            (6..=12)
                .map(|i| (i, if i < 7 { 1 } else { 2 }))
                .collect::<Vec<_>>()
        );
        // A snapshot past every entry leaves none; an older one changes nothing.
        g.apply(&write(Vec::new(), Some(20)));
        assert!(g.entries.is_empty());
        g.apply(&write(entries(21..=21, 3), Some(4)));
        assert_eq!(indexes_and_terms(&g), vec![(21, 3)]);
        assert_eq!(g.snapshot.as_ref().unwrap().get_metadata().index, 20);
    }
}
