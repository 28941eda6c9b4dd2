//! Failure detection between nodes, SWIM-style and sans-IO (Das, Gupta and Motivala,
//! "SWIM", 2002, with the Lifeguard-era refinements most implementations share).
//!
//! Core 0 of every node runs one [`Liveness`]. Every `LIVENESS_PROBE_INTERVAL` it probes
//! one member, taking them in a shuffled round: a direct `Ping`; if no `Ack` comes within
//! `LIVENESS_PROBE_TIMEOUT`, a `PingReq` to `LIVENESS_INDIRECT_PROBES` other members, who
//! ping the target for it and pass its `Ack` on. A member that answers neither way by the
//! end of the period becomes **Suspect**; a suspect that does not refute within the
//! suspicion timeout becomes **Dead**. Every message carries a few recent state changes
//! (gossip), each sent a bounded number of times, so every member's view converges without
//! a message of its own.
//!
//! Incarnations order what is said about a member: only the member raises its own. A
//! member that hears it is suspected or dead at its current incarnation **refutes**: it
//! raises its incarnation and gossips that it is alive, which overrides the older claim
//! everywhere. A restarted process starts from an incarnation the shell gives it (the
//! runtime: milliseconds of wall-clock time), above any it had before.
//!
//! Precedence, for member `m` at known incarnation `j` and a claim at incarnation `i`:
//! Alive(i) wins if `i > j`; Suspect(i) wins over Alive(j) if `i >= j` and over
//! Suspect(j) or Dead(j) if `i > j`; Dead(i) wins over Alive or Suspect if `i >= j`.
//! Hearing anything directly from `m` (its ping or its ack) is a claim Alive at the
//! incarnation it carries; if `m` is still held suspect or dead at that incarnation, the
//! claim goes out to it again so that it refutes (the gossip about it may have died out
//! while it was away).
//!
//! The node acts on the view in one place: the metadata leader's core 0 records a member
//! dead for `dead_after`, not heard from for as long, and silent to one more probe, as
//! `Down` in the topology, and a `Down` member heard alive again as `Active`
//! ([`Liveness::topology_changes`]). The view itself decides nothing else.
//!
//! Two guards keep an observer's own trouble from becoming an accusation. Time it could
//! not watch (called late: a pause, a stalled core, a clock jump ahead) is discounted from
//! every clock it keeps. And a member whose own messages still arrive (a one-way cut, where
//! our claims cannot reach it to be refuted) is never recorded `Down`, however long its
//! suspicion has stood.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use crate::cluster::metadata::MetadataCommand;
use crate::cluster::topology::{ClusterTopology, NodeState};
use crate::constants::{
    LIVENESS_CONFIRM_WITHIN, LIVENESS_GOSSIP_PER_MESSAGE, LIVENESS_GOSSIP_RETRANSMIT_MULTIPLIER,
    LIVENESS_INDIRECT_PROBES, LIVENESS_PROBE_INTERVAL, LIVENESS_PROBE_TIMEOUT,
    LIVENESS_STALL_SLACK, LIVENESS_STARTUP_GRACE, LIVENESS_SUSPICION_MULTIPLIER,
    REBALANCE_PROPOSAL_TIMEOUT,
};
use crate::ids::NodeId;
use crate::rng::Rng;
use crate::time::Time;
use crate::wire::codec::{DecodeError, Reader, put_varint};

/// What a node believes of a member.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum MemberState {
    Alive,
    Suspect,
    Dead,
}

impl MemberState {
    pub const ALL: [MemberState; 3] = [MemberState::Alive, MemberState::Suspect, MemberState::Dead];

    pub fn name(self) -> &'static str {
        match self {
            MemberState::Alive => "alive",
            MemberState::Suspect => "suspect",
            MemberState::Dead => "dead",
        }
    }

    fn code(self) -> u8 {
        match self {
            MemberState::Alive => 0,
            MemberState::Suspect => 1,
            MemberState::Dead => 2,
        }
    }

    fn from_code(code: u8) -> Result<MemberState, DecodeError> {
        Ok(match code {
            0 => MemberState::Alive,
            1 => MemberState::Suspect,
            2 => MemberState::Dead,
            v => {
                return Err(DecodeError::BadEnum {
                    what: "member state",
                    value: v.into(),
                });
            }
        })
    }
}

/// A claim about one member, as gossip carries it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Update {
    pub node: NodeId,
    pub state: MemberState,
    pub incarnation: u64,
}

/// A failure-detector message (the payload of a `Ping` frame).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Message {
    pub kind: MessageKind,
    /// The probe this message belongs to (the sender's numbering for `Ping` and `PingReq`;
    /// an `Ack` carries the number of the `Ping` or `PingReq` it answers).
    pub seq: u64,
    /// The sender's own incarnation.
    pub incarnation: u64,
    pub gossip: Vec<Update>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MessageKind {
    Ping,
    Ack,
    /// Ping `target` on my behalf and pass its ack on.
    PingReq {
        target: NodeId,
    },
}

impl Message {
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(16 + self.gossip.len() * 12);
        match self.kind {
            MessageKind::Ping => out.push(1),
            MessageKind::Ack => out.push(2),
            MessageKind::PingReq { target } => {
                out.push(3);
                put_varint(&mut out, target.0);
            }
        }
        put_varint(&mut out, self.seq);
        put_varint(&mut out, self.incarnation);
        put_varint(&mut out, self.gossip.len() as u64);
        for u in &self.gossip {
            put_varint(&mut out, u.node.0);
            out.push(u.state.code());
            put_varint(&mut out, u.incarnation);
        }
        out
    }

    /// Decodes untrusted bytes; never panics.
    pub fn decode(bytes: &[u8]) -> Result<Message, DecodeError> {
        let mut r = Reader::new(bytes);
        let kind = match r.u8("liveness kind")? {
            1 => MessageKind::Ping,
            2 => MessageKind::Ack,
            3 => MessageKind::PingReq {
                target: NodeId(r.varint("ping-req target")?),
            },
            v => {
                return Err(DecodeError::BadEnum {
                    what: "liveness kind",
                    value: v.into(),
                });
            }
        };
        let seq = r.varint("seq")?;
        let incarnation = r.varint("incarnation")?;
        let count = r.count("gossip", LIVENESS_GOSSIP_PER_MESSAGE)?;
        let mut gossip = Vec::with_capacity(count);
        for _ in 0..count {
            gossip.push(Update {
                node: NodeId(r.varint("gossip node")?),
                state: MemberState::from_code(r.u8("gossip state")?)?,
                incarnation: r.varint("gossip incarnation")?,
            });
        }
        r.finish()?;
        Ok(Message {
            kind,
            seq,
            incarnation,
            gossip,
        })
    }
}

/// One member as this node sees it.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Member {
    pub state: MemberState,
    pub incarnation: u64,
    /// When it entered `state` here.
    pub since: Time,
    /// When a message came from it directly (its ping, ack or relay request), or its ack
    /// to our probe through another member.
    pub heard: Time,
    /// When our last probe of it went unanswered both ways.
    pub failed: Option<Time>,
    /// When other traffic of its last reached this node (`heard_from`: Raft batches).
    pub traffic: Option<Time>,
    /// Whether it was heard from at all, directly or not, since this process started.
    pub heard_once: bool,
}

/// The probe of this period.
struct Probe {
    target: NodeId,
    seq: u64,
    sent: Time,
    indirect: bool,
}

/// A `PingReq` this node carries out: its own ping `seq` stands for `(requester, seq)`.
struct Relay {
    requester: NodeId,
    seq: u64,
    until: Time,
}

/// Counters for metrics.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct LivenessStats {
    pub probes: u64,
    pub probes_failed: u64,
    /// Probes unanswered while the member's other traffic arrived (`heard_from`).
    pub probes_excused: u64,
    pub indirect_probes: u64,
    pub refutations: u64,
    /// The last direct probe's round trip, and the largest since the process started.
    pub last_rtt: Option<Duration>,
    pub max_rtt: Duration,
    /// Time this detector was called late and discounted (`discount_blind_time`).
    pub blind_time: Duration,
}

/// A node's failure detector (core 0).
pub struct Liveness {
    local: NodeId,
    incarnation: u64,
    members: BTreeMap<NodeId, Member>,
    /// The probe order of this round (shuffled each round).
    round: Vec<NodeId>,
    probe: Option<Probe>,
    next_probe: Time,
    relays: BTreeMap<u64, Relay>,
    next_seq: u64,
    /// Changes still to gossip, with how many times each went out.
    gossip: Vec<(Update, u32)>,
    out: Vec<(NodeId, Message)>,
    rng: Rng,
    /// Topology proposals made, by node: not asked again before they time out.
    asked: BTreeMap<NodeId, Time>,
    /// When the shell was asked to call next (`poll_timeout` after the last call).
    due: Option<Time>,
    /// When this detector was first given members (`LIVENESS_STARTUP_GRACE`).
    started: Option<Time>,
    pub stats: LivenessStats,
}

impl Liveness {
    /// `incarnation`: above any this node's earlier processes used.
    pub fn new(local: NodeId, incarnation: u64, seed: u64) -> Liveness {
        Liveness {
            local,
            incarnation,
            members: BTreeMap::new(),
            round: Vec::new(),
            probe: None,
            next_probe: Time::ZERO,
            relays: BTreeMap::new(),
            next_seq: 1,
            gossip: Vec::new(),
            out: Vec::new(),
            rng: Rng::new(seed ^ local.0.rotate_left(32) ^ incarnation),
            asked: BTreeMap::new(),
            due: None,
            started: None,
            stats: LivenessStats::default(),
        }
    }

    pub fn incarnation(&self) -> u64 {
        self.incarnation
    }

    pub fn member(&self, node: NodeId) -> Option<&Member> {
        self.members.get(&node)
    }

    /// Every member's state, by node.
    pub fn states(&self) -> impl Iterator<Item = (NodeId, MemberState)> + '_ {
        self.members.iter().map(|(n, m)| (*n, m.state))
    }

    /// How many members are in each state (Alive, Suspect, Dead).
    pub fn counts(&self) -> [usize; 3] {
        let mut counts = [0; 3];
        for m in self.members.values() {
            counts[usize::from(m.state.code())] += 1;
        }
        counts
    }

    /// Keeps the member list equal to `nodes` (this node aside): a new member starts
    /// alive, as of `now`; one no longer listed is forgotten.
    pub fn set_members(&mut self, now: Time, nodes: impl IntoIterator<Item = NodeId>) {
        self.started.get_or_insert(now);
        let listed: BTreeSet<NodeId> = nodes.into_iter().filter(|n| *n != self.local).collect();
        self.members.retain(|n, _| listed.contains(n));
        for node in listed {
            self.members.entry(node).or_insert(Member {
                state: MemberState::Alive,
                incarnation: 0,
                since: now,
                heard: now,
                failed: None,
                traffic: None,
                heard_once: false,
            });
        }
        self.round.retain(|n| self.members.contains_key(n));
        if self
            .probe
            .as_ref()
            .is_some_and(|p| !self.members.contains_key(&p.target))
        {
            self.probe = None;
        }
    }

    /// Time passed: the next probe, an indirect probe, a failed probe, suspicions that
    /// ran out.
    pub fn handle_timeout(&mut self, now: Time) {
        self.discount_blind_time(now);
        if let Some(p) = &self.probe {
            let (target, seq, sent) = (p.target, p.seq, p.sent);
            if !p.indirect && now.saturating_since(sent) >= LIVENESS_PROBE_TIMEOUT {
                self.probe.as_mut().expect("checked").indirect = true;
                self.ask_others(target, seq);
            }
            if now.saturating_since(sent) >= LIVENESS_PROBE_INTERVAL {
                self.probe = None;
                let member = self.members.get(&target);
                let starting = self
                    .started
                    .is_some_and(|s| now.saturating_since(s) < LIVENESS_STARTUP_GRACE);
                if member.and_then(|m| m.traffic) >= Some(sent)
                    || (starting && member.is_some_and(|m| !m.heard_once))
                {
                    // Unanswered, but its other traffic reached us since the probe: it
                    // runs, only late (a saturated CPU), and suspecting it would wake
                    // every group it leads on top of that load. Or this process has just
                    // started and never heard from it: it may be starting too (replaying
                    // its log, connecting).
                    self.stats.probes_excused += 1;
                } else {
                    self.stats.probes_failed += 1;
                    if let Some(m) = self.members.get_mut(&target) {
                        m.failed = Some(now);
                    }
                    self.suspect(now, target);
                }
            }
        }
        let timeout = self.suspicion_timeout();
        let expired: Vec<(NodeId, u64)> = self
            .members
            .iter()
            .filter(|(_, m)| m.state == MemberState::Suspect)
            .filter(|(_, m)| now.saturating_since(m.since) >= timeout)
            .map(|(n, m)| (*n, m.incarnation))
            .collect();
        for (node, incarnation) in expired {
            self.apply(
                now,
                Update {
                    node,
                    state: MemberState::Dead,
                    incarnation,
                },
            );
        }
        self.relays.retain(|_, r| now < r.until);
        if self.probe.is_none() && now >= self.next_probe {
            self.next_probe = now + LIVENESS_PROBE_INTERVAL;
            if let Some(target) = self.next_target() {
                let seq = self.seq();
                self.probe = Some(Probe {
                    target,
                    seq,
                    sent: now,
                    indirect: false,
                });
                self.stats.probes += 1;
                self.send(target, MessageKind::Ping, seq);
            }
        }
        self.due = self.poll_timeout().map(|t| t.max(now));
    }

    /// When `handle_timeout` is next due.
    pub fn poll_timeout(&self) -> Option<Time> {
        if self.members.is_empty() {
            return None;
        }
        let probe = self.probe.as_ref().map(|p| {
            if p.indirect {
                p.sent + LIVENESS_PROBE_INTERVAL
            } else {
                p.sent + LIVENESS_PROBE_TIMEOUT
            }
        });
        let timeout = self.suspicion_timeout();
        let suspicion = self
            .members
            .values()
            .filter(|m| m.state == MemberState::Suspect)
            .map(|m| m.since + timeout)
            .min();
        [Some(self.next_probe), probe, suspicion]
            .into_iter()
            .flatten()
            .min()
    }

    /// Other traffic from `from` reached this node (the shell: a Raft batch). A probe of
    /// it that goes unanswered while such traffic arrives does not make it suspect: the
    /// process runs, its answer is only late. The traffic says nothing of its
    /// incarnation, so it refutes no claim; only the member's own messages do that.
    pub fn heard_from(&mut self, now: Time, from: NodeId) {
        if let Some(m) = self.members.get_mut(&from) {
            m.traffic = Some(now);
            m.heard_once = true;
        }
    }

    /// A message from `from` (the transport says who; a node certificate in nodes).
    pub fn handle_message(&mut self, now: Time, from: NodeId, message: Message) {
        if from == self.local || !self.members.contains_key(&from) {
            return;
        }
        self.discount_blind_time(now);
        if let Some(m) = self.members.get_mut(&from) {
            m.heard = now;
            m.heard_once = true;
        }
        // Direct word from the member: it is alive at the incarnation it says.
        self.apply(
            now,
            Update {
                node: from,
                state: MemberState::Alive,
                incarnation: message.incarnation,
            },
        );
        for update in message.gossip {
            self.apply(now, update);
        }
        // Heard from a member still held suspect or dead at the incarnation it speaks with:
        // tell it so (the claim goes out first again), and it refutes.
        if let Some(m) = self.members.get(&from)
            && m.state != MemberState::Alive
        {
            let claim = Update {
                node: from,
                state: m.state,
                incarnation: m.incarnation,
            };
            self.enqueue(claim);
        }
        match message.kind {
            MessageKind::Ping => self.send(from, MessageKind::Ack, message.seq),
            MessageKind::PingReq { target } => {
                if self.members.contains_key(&target) {
                    let seq = self.seq();
                    self.relays.insert(
                        seq,
                        Relay {
                            requester: from,
                            seq: message.seq,
                            until: now + LIVENESS_PROBE_INTERVAL,
                        },
                    );
                    self.send(target, MessageKind::Ping, seq);
                }
            }
            MessageKind::Ack => {
                if let Some(relay) = self.relays.remove(&message.seq) {
                    self.send(relay.requester, MessageKind::Ack, relay.seq);
                } else if let Some(p) = self.probe.take_if(|p| p.seq == message.seq) {
                    if from == p.target {
                        let rtt = now.saturating_since(p.sent);
                        self.stats.last_rtt = Some(rtt);
                        self.stats.max_rtt = self.stats.max_rtt.max(rtt);
                    } else {
                        self.stats.indirect_probes += 1;
                    }
                    if let Some(m) = self.members.get_mut(&p.target) {
                        m.heard = now;
                        m.heard_once = true;
                    }
                }
            }
        }
        self.due = self.poll_timeout().map(|t| t.max(now));
    }

    /// The next message to send, and to which node's core 0.
    pub fn poll_transmit(&mut self) -> Option<(NodeId, Message)> {
        self.out.pop()
    }

    /// The topology commands the metadata leader should propose now: `Down` for an active
    /// member dead here for `dead_after`, silent for as long, and not answering a probe
    /// made after that (it is probed next if the last one is older), `Active` for a `Down` one alive here. A command
    /// is not asked again for the same node within `REBALANCE_PROPOSAL_TIMEOUT`.
    pub fn topology_changes(
        &mut self,
        now: Time,
        topology: &ClusterTopology,
        dead_after: Duration,
    ) -> Vec<MetadataCommand> {
        self.asked
            .retain(|_, at| now.saturating_since(*at) < REBALANCE_PROPOSAL_TIMEOUT);
        // A decommissioned node is nobody's member any more: the others ignore its probes,
        // and what it sees of them says nothing.
        let member = topology
            .node(self.local)
            .is_some_and(|n| n.state != NodeState::Decommissioned);
        if !member {
            return Vec::new();
        }
        // A node that hears from no majority may be the one cut off: it records nobody
        // `Down` (it could not commit that anyway without a quorum, but a leader keeps
        // its quorum through Raft traffic that the detector does not see).
        let [alive, ..] = self.counts();
        let majority = 2 * (alive + 1) > self.members.len() + 1;
        let mut commands = Vec::new();
        for info in topology.nodes() {
            if self.asked.contains_key(&info.node_id) {
                continue;
            }
            // The leader itself is alive, whatever an earlier leader recorded.
            let own = Member {
                state: MemberState::Alive,
                incarnation: self.incarnation,
                since: Time::ZERO,
                heard: Time::ZERO,
                failed: None,
                traffic: None,
                heard_once: true,
            };
            let m = match self.members.get(&info.node_id) {
                Some(m) => m,
                None if info.node_id == self.local => &own,
                None => continue,
            };
            let state = match (info.state, m.state) {
                (NodeState::Active, MemberState::Dead)
                    if majority
                        && now.saturating_since(m.since) >= dead_after
                        && now.saturating_since(m.heard) >= dead_after =>
                {
                    // Confirmed by a probe of our own that failed since the grace ran
                    // out, and recently: a member that came back while the suspicion
                    // stood answers it instead.
                    let due = m.since.max(m.heard) + dead_after;
                    let confirmed = m.failed.is_some_and(|f| {
                        f >= due && now.saturating_since(f) <= LIVENESS_CONFIRM_WITHIN
                    });
                    if !confirmed {
                        let node = info.node_id;
                        self.probe_next(node);
                        continue;
                    }
                    NodeState::Down
                }
                (NodeState::Down, MemberState::Alive) => NodeState::Active,
                _ => continue,
            };
            self.asked.insert(info.node_id, now);
            commands.push(MetadataCommand::SetNodeState {
                node: info.node_id,
                state,
            });
        }
        commands
    }

    /// This core stopped leading the metadata group: proposals it made are not its to
    /// follow any more.
    pub fn stand_down(&mut self) {
        self.asked.clear();
    }

    // ---- internals ---------------------------------------------------------------------

    /// Time this node could not watch does not count against anyone. Called later than it
    /// asked by more than `LIVENESS_STALL_SLACK` (its process paused, its core stalled, or
    /// its clock jumped ahead), it moves every clock it keeps forward by the lateness: the
    /// probe in flight, suspicions, deaths and silences. The replies that arrived meanwhile
    /// are still queued; without this, a stalled observer would find its own probe timed
    /// out and every suspect past its deadline before reading them (Lifeguard's point: a
    /// detector that is itself unhealthy must not accuse others).
    fn discount_blind_time(&mut self, now: Time) {
        let Some(due) = self.due.take() else {
            return;
        };
        let late = now.saturating_since(due);
        if late <= LIVENESS_STALL_SLACK {
            return;
        }
        self.stats.blind_time += late;
        let shift = |t: &mut Time| *t = (*t + late).min(now);
        if let Some(p) = &mut self.probe {
            shift(&mut p.sent);
        }
        for m in self.members.values_mut() {
            if m.state != MemberState::Alive {
                shift(&mut m.since);
            }
            shift(&mut m.heard);
        }
    }

    fn seq(&mut self) -> u64 {
        let seq = self.next_seq;
        self.next_seq += 1;
        seq
    }

    /// Suspicion lasts `LIVENESS_SUSPICION_MULTIPLIER × max(1, log10 n)` probe periods: a
    /// larger cluster needs longer for a refutation to spread.
    fn suspicion_timeout(&self) -> Duration {
        let n = (self.members.len() + 1) as f64;
        LIVENESS_PROBE_INTERVAL.mul_f64(LIVENESS_SUSPICION_MULTIPLIER * n.log10().max(1.0))
    }

    /// How many times one change goes out: `multiplier × ceil(log10(n + 1))`.
    fn retransmits(&self) -> u32 {
        let n = (self.members.len() + 2) as f64;
        LIVENESS_GOSSIP_RETRANSMIT_MULTIPLIER * n.log10().ceil().max(1.0) as u32
    }

    fn next_target(&mut self) -> Option<NodeId> {
        while let Some(node) = self.round.pop() {
            if self.members.contains_key(&node) {
                return Some(node);
            }
        }
        self.round = self.members.keys().copied().collect();
        self.rng.shuffle(&mut self.round);
        self.round.pop()
    }

    /// `node` is probed next (unless it is being probed now).
    fn probe_next(&mut self, node: NodeId) {
        if self.probe.as_ref().is_some_and(|p| p.target == node) {
            return;
        }
        self.round.retain(|n| *n != node);
        self.round.push(node);
    }

    fn ask_others(&mut self, target: NodeId, seq: u64) {
        let mut helpers: Vec<NodeId> = self
            .members
            .iter()
            .filter(|(n, m)| **n != target && m.state == MemberState::Alive)
            .map(|(n, _)| *n)
            .collect();
        self.rng.shuffle(&mut helpers);
        helpers.truncate(LIVENESS_INDIRECT_PROBES);
        for helper in helpers {
            self.send(helper, MessageKind::PingReq { target }, seq);
        }
    }

    fn suspect(&mut self, now: Time, node: NodeId) {
        if let Some(m) = self.members.get(&node)
            && m.state == MemberState::Alive
        {
            let incarnation = m.incarnation;
            self.apply(
                now,
                Update {
                    node,
                    state: MemberState::Suspect,
                    incarnation,
                },
            );
        }
    }

    /// Takes in a claim; a winning one changes the view and is gossiped on.
    fn apply(&mut self, now: Time, update: Update) {
        if update.node == self.local {
            if update.state != MemberState::Alive && update.incarnation >= self.incarnation {
                self.incarnation = update.incarnation + 1;
                self.stats.refutations += 1;
                let alive = Update {
                    node: self.local,
                    state: MemberState::Alive,
                    incarnation: self.incarnation,
                };
                self.enqueue(alive);
            }
            return;
        }
        let Some(m) = self.members.get_mut(&update.node) else {
            return;
        };
        let (i, j) = (update.incarnation, m.incarnation);
        let wins = match (update.state, m.state) {
            (MemberState::Alive, _) => i > j,
            (MemberState::Suspect, MemberState::Alive) => i >= j,
            (MemberState::Suspect, _) => i > j,
            (MemberState::Dead, MemberState::Dead) => i > j,
            (MemberState::Dead, _) => i >= j,
        };
        if !wins {
            return;
        }
        if m.state != update.state {
            m.since = now;
        }
        m.state = update.state;
        m.incarnation = i;
        self.enqueue(update);
    }

    fn enqueue(&mut self, update: Update) {
        self.gossip.retain(|(u, _)| u.node != update.node);
        self.gossip.push((update, 0));
    }

    fn send(&mut self, to: NodeId, kind: MessageKind, seq: u64) {
        // The changes sent the fewest times go first.
        self.gossip.sort_by_key(|(_, sent)| *sent);
        let limit = self.retransmits();
        let mut gossip = Vec::new();
        for (update, sent) in self.gossip.iter_mut().take(LIVENESS_GOSSIP_PER_MESSAGE) {
            gossip.push(*update);
            *sent += 1;
        }
        self.gossip.retain(|(_, sent)| *sent < limit);
        self.out.push((
            to,
            Message {
                kind,
                seq,
                incarnation: self.incarnation,
                gossip,
            },
        ));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: NodeId = NodeId(1);
    const B: NodeId = NodeId(2);
    const C: NodeId = NodeId(3);

    fn at(ms: u64) -> Time {
        Time::ZERO + Duration::from_millis(ms)
    }

    /// Three detectors wired together; `down` nodes neither receive nor send.
    struct Net {
        nodes: Vec<Liveness>,
        down: BTreeSet<NodeId>,
    }

    impl Net {
        fn new(n: u64) -> Net {
            let ids: Vec<NodeId> = (1..=n).map(NodeId).collect();
            let nodes = ids
                .iter()
                .map(|id| {
                    let mut l = Liveness::new(*id, 100, 7);
                    l.set_members(Time::ZERO, ids.iter().copied());
                    l
                })
                .collect();
            Net {
                nodes,
                down: BTreeSet::new(),
            }
        }

        fn node(&self, id: NodeId) -> &Liveness {
            &self.nodes[(id.0 - 1) as usize]
        }

        /// Runs `ms` milliseconds in 10 ms steps, delivering messages within the step.
        fn run(&mut self, from_ms: u64, ms: u64) {
            for t in (from_ms..from_ms + ms).step_by(10) {
                for i in 0..self.nodes.len() {
                    let id = NodeId(i as u64 + 1);
                    if !self.down.contains(&id) {
                        self.nodes[i].handle_timeout(at(t));
                    }
                }
                loop {
                    let mut sent = Vec::new();
                    for (i, l) in self.nodes.iter_mut().enumerate() {
                        while let Some((to, m)) = l.poll_transmit() {
                            sent.push((NodeId(i as u64 + 1), to, m));
                        }
                    }
                    if sent.is_empty() {
                        break;
                    }
                    for (from, to, m) in sent {
                        if self.down.contains(&from) || self.down.contains(&to) {
                            continue;
                        }
                        let bytes = m.encode();
                        let m = Message::decode(&bytes).unwrap();
                        self.nodes[(to.0 - 1) as usize].handle_message(at(t), from, m);
                    }
                }
            }
        }
    }

    #[test]
    fn a_healthy_cluster_suspects_nobody() {
        let mut net = Net::new(4);
        net.run(0, 30_000);
        for l in &net.nodes {
            assert_eq!(l.counts(), [3, 0, 0]);
            assert!(l.stats.probes >= 25, "{:?}", l.stats);
            assert_eq!(l.stats.probes_failed, 0);
        }
    }

    #[test]
    fn a_silent_member_becomes_suspect_then_dead_everywhere_and_comes_back_alive() {
        let mut net = Net::new(4);
        net.run(0, 2_000);
        net.down.insert(C);
        net.run(2_000, 15_000);
        for id in [A, B, NodeId(4)] {
            let m = net.node(id).member(C).unwrap();
            assert_eq!(m.state, MemberState::Dead, "on {id}");
            assert!(
                net.node(id)
                    .member(A)
                    .is_none_or(|m| m.state == MemberState::Alive)
            );
        }
        // C was never told it was dead: it refutes the claim when it hears it, at a higher
        // incarnation, and every view takes it back.
        net.down.clear();
        net.run(17_000, 10_000);
        assert!(net.node(C).stats.refutations >= 1);
        for id in [A, B, NodeId(4)] {
            assert_eq!(net.node(id).member(C).unwrap().state, MemberState::Alive);
        }
    }

    #[test]
    fn a_member_never_heard_from_is_suspected_only_after_the_startup_grace() {
        // B's process is not up yet when A's starts.
        let mut net = Net::new(2);
        net.down.insert(B);
        let grace = LIVENESS_STARTUP_GRACE.as_millis() as u64;
        net.run(0, grace - 100);
        assert_eq!(net.node(A).member(B).unwrap().state, MemberState::Alive);
        assert!(net.node(A).stats.probes_excused >= 1);
        net.run(grace - 100, 3_000);
        assert_ne!(net.node(A).member(B).unwrap().state, MemberState::Alive);
    }

    #[test]
    fn a_member_whose_raft_traffic_arrives_is_not_suspected_for_late_probes() {
        // B's detector answers nothing (a saturated CPU), but its Raft batches reach A.
        let mut net = Net::new(2);
        net.down.insert(B);
        for t in (0..10_000u64).step_by(100) {
            net.nodes[0].heard_from(at(t), B);
            net.run(t, 100);
        }
        let a = net.node(A);
        assert_eq!(a.member(B).unwrap().state, MemberState::Alive);
        assert_eq!(a.stats.probes_failed, 0);
        assert!(a.stats.probes_excused >= 5, "{:?}", a.stats);
        // The traffic stops too: B is suspected within a probe period or two.
        net.run(10_000, 3_000);
        assert_ne!(net.node(A).member(B).unwrap().state, MemberState::Alive);
        assert!(net.node(A).stats.probes_failed >= 1);
    }

    #[test]
    fn a_member_that_misses_direct_probes_but_answers_through_others_stays_alive() {
        // A cannot reach C directly; B and D can.
        let mut net = Net::new(4);
        let mut l = std::mem::replace(&mut net.nodes[0], Liveness::new(A, 0, 0));
        for t in (0..20_000u64).step_by(10) {
            l.handle_timeout(at(t));
            for n in net.nodes.iter_mut().skip(1) {
                n.handle_timeout(at(t));
            }
            loop {
                let mut sent = Vec::new();
                while let Some((to, m)) = l.poll_transmit() {
                    sent.push((A, to, m));
                }
                for (i, n) in net.nodes.iter_mut().enumerate().skip(1) {
                    while let Some((to, m)) = n.poll_transmit() {
                        sent.push((NodeId(i as u64 + 1), to, m));
                    }
                }
                if sent.is_empty() {
                    break;
                }
                for (from, to, m) in sent {
                    if (from, to) == (A, C) || (from, to) == (C, A) {
                        continue;
                    }
                    if to == A {
                        l.handle_message(at(t), from, m);
                    } else {
                        net.nodes[(to.0 - 1) as usize].handle_message(at(t), from, m);
                    }
                }
            }
        }
        assert_eq!(l.member(C).unwrap().state, MemberState::Alive);
        assert!(l.stats.indirect_probes >= 1, "{:?}", l.stats);
    }

    #[test]
    fn incarnations_order_claims() {
        let mut l = Liveness::new(A, 5, 1);
        l.set_members(at(0), [A, B]);
        let claim = |state, incarnation| Update {
            node: B,
            state,
            incarnation,
        };
        l.apply(at(1), claim(MemberState::Suspect, 0));
        assert_eq!(l.member(B).unwrap().state, MemberState::Suspect);
        l.apply(at(2), claim(MemberState::Alive, 0));
        assert_eq!(
            l.member(B).unwrap().state,
            MemberState::Suspect,
            "same incarnation"
        );
        l.apply(at(3), claim(MemberState::Alive, 1));
        assert_eq!(l.member(B).unwrap().state, MemberState::Alive);
        l.apply(at(4), claim(MemberState::Dead, 1));
        assert_eq!(l.member(B).unwrap().state, MemberState::Dead);
        l.apply(at(5), claim(MemberState::Suspect, 1));
        assert_eq!(l.member(B).unwrap().state, MemberState::Dead);
        l.apply(at(6), claim(MemberState::Alive, 2));
        assert_eq!(l.member(B).unwrap().state, MemberState::Alive);
        assert_eq!(l.member(B).unwrap().since, at(6));
        // About itself, a node refutes anything but alive at or above its incarnation.
        l.apply(
            at(7),
            Update {
                node: A,
                state: MemberState::Suspect,
                incarnation: 5,
            },
        );
        assert_eq!(l.incarnation(), 6);
        l.apply(
            at(8),
            Update {
                node: A,
                state: MemberState::Dead,
                incarnation: 2,
            },
        );
        assert_eq!(l.incarnation(), 6, "an old claim needs no answer");
    }

    #[test]
    fn hostile_bytes_decode_to_errors() {
        let m = Message {
            kind: MessageKind::PingReq { target: C },
            seq: 9,
            incarnation: 1 << 40,
            gossip: vec![Update {
                node: B,
                state: MemberState::Dead,
                incarnation: 3,
            }],
        };
        let bytes = m.encode();
        assert_eq!(Message::decode(&bytes).unwrap(), m);
        for cut in 0..bytes.len() {
            assert!(Message::decode(&bytes[..cut]).is_err());
        }
        assert!(Message::decode(&[9]).is_err());
        let mut long = bytes.clone();
        long.push(0);
        assert!(Message::decode(&long).is_err());
        let mut bad_state = Message::encode(&Message {
            gossip: vec![],
            ..m.clone()
        });
        bad_state.pop();
        bad_state.extend([1, 2, 7, 0]);
        assert!(Message::decode(&bad_state).is_err());
        let mut r = Rng::new(3);
        for _ in 0..2000 {
            let len = r.below(40) as usize;
            let junk: Vec<u8> = (0..len).map(|_| r.next_u64() as u8).collect();
            let _ = Message::decode(&junk);
        }
    }

    #[test]
    fn the_leader_proposes_down_after_the_grace_and_active_on_return() {
        let mut t = three_active();
        let mut l = a_holding_c_dead_since_one_second();
        let grace = Duration::from_secs(5);
        assert!(l.topology_changes(at(5999), &t, grace).is_empty());
        // Due, but first confirmed by a probe of its own: C is probed next.
        assert!(l.topology_changes(at(6000), &t, grace).is_empty());
        l.handle_timeout(at(6000));
        let (to, _) = l.poll_transmit().expect("a probe");
        assert_eq!(to, C);
        let down = MetadataCommand::SetNodeState {
            node: C,
            state: NodeState::Down,
        };
        tick(&mut l, 6010, 6990);
        assert!(l.topology_changes(at(6990), &t, grace).is_empty());
        tick(&mut l, 7000, 7000);
        assert_eq!(l.member(C).unwrap().failed, Some(at(7000)));
        assert_eq!(l.topology_changes(at(7000), &t, grace), vec![down]);
        assert!(
            l.topology_changes(at(7001), &t, grace).is_empty(),
            "asked once"
        );
        t.set_state(C, NodeState::Down).unwrap();
        l.apply(
            at(7500),
            Update {
                node: C,
                state: MemberState::Alive,
                incarnation: 1,
            },
        );
        let up = MetadataCommand::SetNodeState {
            node: C,
            state: NodeState::Active,
        };
        let later = at(7000) + REBALANCE_PROPOSAL_TIMEOUT;
        assert_eq!(l.topology_changes(later, &t, grace), vec![up]);
    }

    /// Calls `l` every 10 ms from `from` to `to` (inclusive); B answers its pings, nobody
    /// else hears anything.
    fn tick(l: &mut Liveness, from: u64, to: u64) {
        for ms in (from..=to).step_by(10) {
            l.handle_timeout(at(ms));
            while let Some((to, m)) = l.poll_transmit() {
                if to == B && m.kind == MessageKind::Ping {
                    let ack = Message {
                        kind: MessageKind::Ack,
                        seq: m.seq,
                        incarnation: 0,
                        gossip: vec![],
                    };
                    l.handle_message(at(ms), B, ack);
                }
            }
        }
    }

    /// A's detector, with B and C as members and C dead since 1 s.
    fn a_holding_c_dead_since_one_second() -> Liveness {
        let mut l = Liveness::new(A, 1, 1);
        l.set_members(at(0), [A, B, C]);
        l.apply(
            at(1000),
            Update {
                node: C,
                state: MemberState::Dead,
                incarnation: 0,
            },
        );
        l
    }

    fn three_active() -> ClusterTopology {
        let mut t = ClusterTopology::new();
        for id in [A, B, C] {
            t.add_node(crate::cluster::topology::NodeInfo {
                node_id: id,
                addr: format!("127.0.0.1:{}", 7000 + id.0),
                cores: 1,
                state: NodeState::Active,
            })
            .unwrap();
        }
        t
    }

    /// Seed 774's shape, by hand: the observer is called late (its process paused, or its
    /// clock jumped ahead) with a probe in flight and a member under suspicion.
    #[test]
    fn time_the_observer_could_not_watch_does_not_count_against_others() {
        let start = |l: &mut Liveness| {
            l.set_members(at(0), [A, B, C]);
            l.apply(
                at(0),
                Update {
                    node: C,
                    state: MemberState::Suspect,
                    incarnation: 0,
                },
            );
            l.handle_timeout(at(0));
            let (to, ping) = l.poll_transmit().expect("the first probe");
            assert_eq!(ping.kind, MessageKind::Ping);
            (to, ping.seq)
        };
        // On time, a probe unanswered for a period fails and the suspect dies.
        let mut steady = Liveness::new(A, 1, 5);
        let (target, _) = start(&mut steady);
        for ms in (10..=6000).step_by(10) {
            steady.handle_timeout(at(ms));
        }
        assert!(steady.stats.probes_failed >= 1);
        assert_eq!(steady.member(C).unwrap().state, MemberState::Dead);
        // Called 6 s late: neither happens, and the ack that waited in the queue counts.
        let mut stalled = Liveness::new(A, 1, 5);
        let (same, seq) = start(&mut stalled);
        assert_eq!(same, target);
        stalled.handle_timeout(at(6000));
        assert_eq!(stalled.stats.probes_failed, 0);
        assert_eq!(stalled.stats.blind_time, Duration::from_millis(5500));
        let ack = Message {
            kind: MessageKind::Ack,
            seq,
            incarnation: 0,
            gossip: vec![],
        };
        stalled.handle_message(at(6000), target, ack);
        assert!(stalled.probe.is_none(), "the queued ack answered the probe");
        assert_eq!(stalled.member(C).unwrap().state, MemberState::Suspect);
        assert_eq!(stalled.member(C).unwrap().since, at(5500));
    }

    /// A member whose own messages arrive is not recorded `Down`, even held dead: a
    /// one-way cut keeps our claims from reaching it, so it cannot refute them.
    #[test]
    fn a_member_still_heard_from_is_not_recorded_down() {
        let t = three_active();
        let mut l = a_holding_c_dead_since_one_second();
        // C's ping at its old incarnation: alive news it cannot make win, but news.
        let ping = Message {
            kind: MessageKind::Ping,
            seq: 9,
            incarnation: 0,
            gossip: vec![],
        };
        l.handle_message(at(4000), C, ping);
        assert_eq!(l.member(C).unwrap().state, MemberState::Dead);
        while l.poll_transmit().is_some() {}
        let grace = Duration::from_secs(5);
        // Dead for the grace at 6 s, but heard from at 4 s: nothing, and no probe asked.
        tick(&mut l, 4010, 8990);
        assert!(l.topology_changes(at(8990), &t, grace).is_empty());
        // Silent for the grace at 9 s: confirmed by a probe, then recorded.
        assert!(l.topology_changes(at(9000), &t, grace).is_empty());
        tick(&mut l, 9000, 11_000);
        let down = MetadataCommand::SetNodeState {
            node: C,
            state: NodeState::Down,
        };
        assert_eq!(l.topology_changes(at(11_000), &t, grace), vec![down]);
    }
}
