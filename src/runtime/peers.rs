//! Connections from one core to the cores of other nodes, opened on demand.
//!
//! Per peer core: one QUIC connection, one long-lived **control stream** (high priority)
//! carrying batched frames — callers `queue` frames during a loop turn and `flush` writes each
//! peer's batch in one write — and short-lived **bulk streams** (low priority) for snapshots
//! and migration, so bulk bytes never delay control frames. Requests use one bidirectional
//! stream each. Connection attempts follow `PeerHealth`: exponential backoff, then a circuit
//! breaker that fails fast. Control frames queued for a peer whose connection fails are
//! dropped and reported: Raft retransmits what it still needs.
//!
//! Every stream starts with a `Hello` frame naming the sender's node and core and the stream
//! class, so the receiver can route frames without trusting anything else.

use std::cell::RefCell;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::Duration;

use futures_lite::future;
use thiserror::Error;
use tracing::{debug, info, warn};

use crate::client::peer_health::{Admission, PeerHealth};
use crate::cluster::spec::core_address;
use crate::constants::{PEER_CONNECT_TIMEOUT, PEER_OUTBOX_MAX_BYTES};
use crate::ids::{CoreAddress, CoreId, NodeId, Role};
use crate::runtime::clock::MonotonicClock;
use crate::runtime::quic::{Connection, QuicEndpoint, RecvStream, SendStream, TransportError};
use crate::runtime::tls::{self, ALPN_PEER, TlsMode};
use crate::time::Time;
use crate::wire::frame::{Frame, FrameDecoder, FrameError, FrameKind, encode_frame};

/// What a stream carries; sent in its `Hello` frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum StreamClass {
    Control = 1,
    Bulk = 2,
}

const CONTROL_PRIORITY: i32 = 100;
const BULK_PRIORITY: i32 = 0;
const HELLO_BYTES: usize = 31;

/// What every node of one cluster agrees on, carried in each stream's `Hello`: a node of
/// another cluster (another CA) or one configured with another groups count (it would
/// hash keys to other groups) is refused before anything it sends is used.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ClusterShape {
    /// The cluster's id (`TlsMode::cluster_id`).
    pub cluster: u64,
    pub groups: u32,
}

/// A stream's `Hello`: who sends, what the stream carries, and the sender's cluster.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Hello {
    pub from: CoreAddress,
    pub class: StreamClass,
    pub shape: ClusterShape,
    /// Differs each time the sender's process starts (`Peers::incarnation`): a new value
    /// tells the receiver that its own connection to the sender is to a process that is
    /// gone.
    pub incarnation: u64,
}

impl Hello {
    /// The payload: node (u64 LE), core (u16 LE), class (u8), cluster (u64 LE), groups
    /// (u32 LE), incarnation (u64 LE).
    pub fn encode(&self) -> [u8; HELLO_BYTES] {
        let mut out = [0u8; HELLO_BYTES];
        out[..8].copy_from_slice(&self.from.node.0.to_le_bytes());
        out[8..10].copy_from_slice(&self.from.core.0.to_le_bytes());
        out[10] = self.class as u8;
        out[11..19].copy_from_slice(&self.shape.cluster.to_le_bytes());
        out[19..23].copy_from_slice(&self.shape.groups.to_le_bytes());
        out[23..31].copy_from_slice(&self.incarnation.to_le_bytes());
        out
    }

    /// Decodes a payload; `None` when malformed.
    pub fn parse(payload: &[u8]) -> Option<Hello> {
        let bytes: &[u8; HELLO_BYTES] = payload.try_into().ok()?;
        let node = NodeId(u64::from_le_bytes(bytes[..8].try_into().ok()?));
        let core = CoreId(u16::from_le_bytes(bytes[8..10].try_into().ok()?));
        let class = match bytes[10] {
            1 => StreamClass::Control,
            2 => StreamClass::Bulk,
            _ => return None,
        };
        let shape = ClusterShape {
            cluster: u64::from_le_bytes(bytes[11..19].try_into().ok()?),
            groups: u32::from_le_bytes(bytes[19..23].try_into().ok()?),
        };
        Some(Hello {
            from: CoreAddress { node, core },
            class,
            shape,
            incarnation: u64::from_le_bytes(bytes[23..31].try_into().ok()?),
        })
    }
}

/// A peer operation that did not happen.
#[derive(Debug, Error)]
pub enum PeerError {
    /// The peer was never added.
    #[error("unknown peer {0}")]
    UnknownPeer(CoreAddress),
    /// The peer's outbox is full: the caller must slow down.
    #[error("outbox for {peer} is full ({queued} bytes queued)")]
    Backpressure { peer: CoreAddress, queued: usize },
    /// Backing off after failures, or the circuit breaker is open.
    #[error("peer {peer} is unavailable ({why})")]
    Unavailable {
        peer: CoreAddress,
        why: &'static str,
    },
    /// The connection attempt did not complete in time.
    #[error("connecting to {peer} at {addr} timed out")]
    ConnectTimeout { peer: CoreAddress, addr: SocketAddr },
    #[error("peer {peer}: {source}")]
    Transport {
        peer: CoreAddress,
        source: TransportError,
    },
    #[error(transparent)]
    Frame(#[from] FrameError),
}

/// Counters of a `Peers`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PeerStats {
    pub connect_attempts: u64,
    pub connect_failures: u64,
    pub frames_queued: u64,
    /// Control-stream writes: one per peer per flush.
    pub control_writes: u64,
    pub frames_dropped: u64,
}

struct Slot {
    addr: SocketAddr,
    health: PeerHealth,
    conn: Option<Connection>,
    control: Option<SendStream>,
    /// A background task is establishing the connection and control stream.
    connecting: bool,
    outbox: Vec<u8>,
    outbox_frames: u64,
    /// `PeerNodes::restarts` of the peer's node when this slot last connected or caught
    /// up with a restart: a higher count means `conn` may lead to a process that is gone.
    restarts_seen: u64,
}

impl Slot {
    fn new(addr: SocketAddr) -> Slot {
        Slot {
            addr,
            health: PeerHealth::new(),
            conn: None,
            control: None,
            connecting: false,
            outbox: Vec::new(),
            outbox_frames: 0,
            restarts_seen: 0,
        }
    }
}

/// Whether `peer`'s node restarted since `slot` last looked (any core of this node may have
/// heard it: a process's cores share its incarnation); if so, the slot's connection, which
/// may lead to the old process, is dropped so that the next send connects to the new one.
fn catch_up_with_restarts(peer: CoreAddress, slot: &mut Slot, restarts: u64) -> bool {
    if restarts <= slot.restarts_seen {
        return false;
    }
    slot.restarts_seen = restarts;
    if let Some(conn) = slot.conn.take() {
        conn.close(0, b"peer restarted");
        debug!(%peer, "peer restarted: its old connection is dropped");
    }
    slot.control = None;
    true
}

/// What the cores of one node know of their peers' processes, shared by those cores
/// (threads): the last incarnation any of them heard from each peer node, and how many
/// times it changed. A core learns a peer process restarted only from a `Hello` that
/// process sends it, and a core that only ever sends to a peer core hears none: without
/// this, its connection to the dead process stayed in use, losing every frame, until the
/// QUIC idle timeout (30 s), while the core beside it had long reconnected.
///
/// It also holds where each node listens, as core 0 reads it from the metadata group's
/// topology: a node that joined after this one started is reached through it.
#[derive(Debug, Default)]
pub struct PeerNodes {
    nodes: std::sync::Mutex<HashMap<NodeId, (u64, u64)>>,
    addresses: std::sync::Mutex<HashMap<NodeId, SocketAddr>>,
}

impl PeerNodes {
    /// Notes a `Hello` from `node`'s process `incarnation`; returns the node's restarts.
    fn heard(&self, node: NodeId, incarnation: u64) -> u64 {
        let mut nodes = self.nodes.lock().unwrap_or_else(|e| e.into_inner());
        let entry = nodes.entry(node).or_insert((incarnation, 0));
        if entry.0 != incarnation {
            *entry = (incarnation, entry.1 + 1);
        }
        entry.1
    }

    /// Records where `node`'s core 0 listens (its core `i` on the port plus `i`).
    pub fn learn_address(&self, node: NodeId, base: SocketAddr) {
        let mut addresses = self.addresses.lock().unwrap_or_else(|e| e.into_inner());
        addresses.insert(node, base);
    }

    /// Where `node`'s core 0 listens, if known.
    pub fn address(&self, node: NodeId) -> Option<SocketAddr> {
        let addresses = self.addresses.lock().unwrap_or_else(|e| e.into_inner());
        addresses.get(&node).copied()
    }

    /// How many times `node`'s process was seen to restart.
    pub fn restarts(&self, node: NodeId) -> u64 {
        let nodes = self.nodes.lock().unwrap_or_else(|e| e.into_inner());
        nodes.get(&node).map_or(0, |e| e.1)
    }
}

struct Shared {
    endpoint: QuicEndpoint,
    tls: TlsMode,
    local: CoreAddress,
    shape: ClusterShape,
    clock: MonotonicClock,
    connect_timeout: Duration,
    slots: HashMap<CoreAddress, Slot>,
    stats: PeerStats,
    incarnation: u64,
    nodes: std::sync::Arc<PeerNodes>,
}

impl Shared {
    /// Makes a slot for `peer` if it has none and its node's address is known (a node that
    /// joined after this core started).
    fn learn_slot(&mut self, peer: CoreAddress) {
        if peer == self.local || self.slots.contains_key(&peer) {
            return;
        }
        if let Some(addr) = self
            .nodes
            .address(peer.node)
            .and_then(|base| core_address(base, peer.core))
        {
            self.slots.insert(peer, Slot::new(addr));
        }
    }
}

/// The peer connections of one core.
#[derive(Clone)]
pub struct Peers {
    shared: Rc<RefCell<Shared>>,
}

impl Peers {
    /// Peers reached from `endpoint` as `local`, authenticating with `tls`.
    pub fn new(endpoint: QuicEndpoint, tls: TlsMode, local: CoreAddress) -> Peers {
        let shared = Shared {
            endpoint,
            tls,
            local,
            shape: ClusterShape::default(),
            clock: MonotonicClock::new(),
            connect_timeout: PEER_CONNECT_TIMEOUT,
            slots: HashMap::new(),
            stats: PeerStats::default(),
            incarnation: process_incarnation(),
            nodes: std::sync::Arc::default(),
        };
        Peers {
            shared: Rc::new(RefCell::new(shared)),
        }
    }

    /// The cluster this core's streams say they belong to (default: id 0, 0 groups).
    pub fn set_shape(&self, shape: ClusterShape) {
        self.shared.borrow_mut().shape = shape;
    }

    /// Shares what this core learns of peer processes with the other cores of its node
    /// (each core's `Peers` gets the same `PeerNodes`).
    pub fn set_peer_nodes(&self, nodes: std::sync::Arc<PeerNodes>) {
        self.shared.borrow_mut().nodes = nodes;
    }

    /// Overrides the connect timeout (tests use a short one).
    pub fn set_connect_timeout(&self, timeout: Duration) {
        self.shared.borrow_mut().connect_timeout = timeout;
    }

    /// Registers (or re-addresses) a peer core.
    pub fn add_peer(&self, peer: CoreAddress, addr: SocketAddr) {
        let mut shared = self.shared.borrow_mut();
        let slot = shared.slots.entry(peer).or_insert_with(|| Slot::new(addr));
        if slot.addr != addr {
            slot.addr = addr;
            slot.conn = None;
            slot.control = None;
        }
    }

    pub fn stats(&self) -> PeerStats {
        self.shared.borrow().stats
    }

    /// This process's incarnation, as its `Hello`s carry it.
    pub fn incarnation(&self) -> u64 {
        self.shared.borrow().incarnation
    }

    /// Overrides the incarnation (tests: a restart within one process).
    pub fn set_incarnation(&self, incarnation: u64) {
        self.shared.borrow_mut().incarnation = incarnation;
    }

    /// A stream from `peer` passed its `Hello` (authenticated: the certificate names its
    /// node) with `incarnation`. Two things follow:
    /// - a new incarnation means the peer's process restarted: this core's connection to it
    ///   leads to a process that is gone, and would be noticed only at the QUIC idle
    ///   timeout (30 s) while every frame sent on it is lost. It is dropped, so the next
    ///   send connects to the new process;
    /// - a peer this core had given up on for a while (backing off, or its breaker open) is
    ///   back: the next send connects at once instead of after the cool-down (10 s).
    ///
    /// Without these a node restarted within a few seconds stayed unreachable from its
    /// peers for up to 30 s, and groups that needed its vote could not elect meanwhile.
    pub fn heard_from(&self, peer: CoreAddress, incarnation: u64) {
        let mut shared = self.shared.borrow_mut();
        let restarts = shared.nodes.heard(peer.node, incarnation);
        let Some(slot) = shared.slots.get_mut(&peer) else {
            return;
        };
        let restarted = catch_up_with_restarts(peer, slot, restarts);
        let given_up =
            slot.conn.is_none() && !slot.connecting && slot.health.consecutive_failures() > 0;
        if restarted || given_up {
            slot.health.on_success();
        }
    }

    /// The breaker state of a peer, for metrics and tests.
    pub fn health(&self, peer: CoreAddress) -> Option<PeerHealth> {
        self.shared
            .borrow()
            .slots
            .get(&peer)
            .map(|s| s.health.clone())
    }

    /// Queues a control frame for `peer`; it leaves with the next `flush`.
    pub fn queue(
        &self,
        peer: CoreAddress,
        kind: FrameKind,
        payload: &[u8],
    ) -> Result<(), PeerError> {
        let mut shared = self.shared.borrow_mut();
        shared.learn_slot(peer);
        let slot = shared
            .slots
            .get_mut(&peer)
            .ok_or(PeerError::UnknownPeer(peer))?;
        if slot.outbox.len() + payload.len() > PEER_OUTBOX_MAX_BYTES {
            return Err(PeerError::Backpressure {
                peer,
                queued: slot.outbox.len(),
            });
        }
        encode_frame(kind, 0, payload, &mut slot.outbox)?;
        slot.outbox_frames += 1;
        shared.stats.frames_queued += 1;
        Ok(())
    }

    /// Writes every peer's queued frames, one write per peer. Returns the peers that failed
    /// (their frames are dropped and counted).
    pub async fn flush(&self) -> Vec<(CoreAddress, PeerError)> {
        let pending: Vec<CoreAddress> = {
            let shared = self.shared.borrow();
            let mut keys: Vec<CoreAddress> = shared
                .slots
                .iter()
                .filter(|(_, s)| !s.outbox.is_empty())
                .map(|(k, _)| *k)
                .collect();
            keys.sort_unstable();
            keys
        };
        let mut failures = Vec::new();
        for peer in pending {
            if let Err(e) = self.flush_peer(peer).await {
                let mut shared = self.shared.borrow_mut();
                if let Some(slot) = shared.slots.get_mut(&peer) {
                    let dropped = std::mem::take(&mut slot.outbox_frames);
                    slot.outbox.clear();
                    shared.stats.frames_dropped += dropped;
                }
                failures.push((peer, e));
            }
        }
        failures
    }

    async fn flush_peer(&self, peer: CoreAddress) -> Result<(), PeerError> {
        // Never wait for a handshake here: the caller is a core's loop. Connect in the
        // background; this turn's frames are dropped (Raft retransmits).
        let existing = {
            let mut shared = self.shared.borrow_mut();
            let restarts = shared.nodes.restarts(peer.node);
            let slot = shared
                .slots
                .get_mut(&peer)
                .ok_or(PeerError::UnknownPeer(peer))?;
            if catch_up_with_restarts(peer, slot, restarts) {
                slot.health.on_success();
            }
            slot.control.take()
        };
        let Some(mut control) = existing else {
            return Err(self.connect_in_background(peer));
        };
        let batch = {
            let mut shared = self.shared.borrow_mut();
            let slot = shared
                .slots
                .get_mut(&peer)
                .ok_or(PeerError::UnknownPeer(peer))?;
            slot.outbox_frames = 0;
            std::mem::take(&mut slot.outbox)
        };
        let result = control.write_all(&batch).await;
        self.shared.borrow_mut().stats.control_writes += 1;
        match result {
            Ok(()) => {
                let mut shared = self.shared.borrow_mut();
                let slot = shared
                    .slots
                    .get_mut(&peer)
                    .ok_or(PeerError::UnknownPeer(peer))?;
                slot.control = Some(control);
                // Reuse the allocation for the next batch.
                if slot.outbox.is_empty() {
                    let mut batch = batch;
                    batch.clear();
                    slot.outbox = batch;
                }
                Ok(())
            }
            Err(source) => {
                self.connection_failed(peer);
                Err(PeerError::Transport { peer, source })
            }
        }
    }

    /// Starts establishing `peer`'s connection and control stream, unless a previous attempt
    /// is still running or the peer's health says to wait; returns why nothing was sent.
    fn connect_in_background(&self, peer: CoreAddress) -> PeerError {
        {
            let mut shared = self.shared.borrow_mut();
            let now = shared.clock.now();
            let Some(slot) = shared.slots.get_mut(&peer) else {
                return PeerError::UnknownPeer(peer);
            };
            if slot.connecting {
                return PeerError::Unavailable {
                    peer,
                    why: "connecting",
                };
            }
            // Peek at the health without consuming a half-open probe: `connection` admits.
            let mut probe = slot.health.clone();
            match probe.admit(now) {
                Admission::Attempt => {}
                Admission::RetryAt(_) => {
                    return PeerError::Unavailable {
                        peer,
                        why: "backing off",
                    };
                }
                Admission::Open => {
                    return PeerError::Unavailable {
                        peer,
                        why: "circuit breaker open",
                    };
                }
            }
            slot.connecting = true;
        }
        let this = self.clone();
        glommio::spawn_local(async move {
            let result = this.control_stream(peer).await;
            let mut shared = this.shared.borrow_mut();
            if let Some(slot) = shared.slots.get_mut(&peer) {
                slot.connecting = false;
                match result {
                    Ok(stream) => slot.control = Some(stream),
                    Err(e) => debug!(%peer, error = %e, "peer connection attempt failed"),
                }
            }
        })
        .detach();
        PeerError::Unavailable {
            peer,
            why: "connecting",
        }
    }

    /// Establishes `peer`'s connection and control stream now, waiting for the handshake
    /// (start-up and tests; a core's loop uses `flush`, which never waits).
    pub async fn connect(&self, peer: CoreAddress) -> Result<(), PeerError> {
        if self
            .shared
            .borrow()
            .slots
            .get(&peer)
            .is_some_and(|s| s.control.is_some())
        {
            return Ok(());
        }
        let stream = self.control_stream(peer).await?;
        if let Some(slot) = self.shared.borrow_mut().slots.get_mut(&peer) {
            slot.control = Some(stream);
        }
        Ok(())
    }

    /// The peer's control stream, connecting and opening it if needed.
    async fn control_stream(&self, peer: CoreAddress) -> Result<SendStream, PeerError> {
        if let Some(stream) = self
            .shared
            .borrow_mut()
            .slots
            .get_mut(&peer)
            .and_then(|s| s.control.take())
        {
            return Ok(stream);
        }
        self.open_stream(peer, StreamClass::Control, CONTROL_PRIORITY)
            .await
    }

    /// Opens a low-priority bulk stream to `peer` (already introduced with its `Hello`).
    pub async fn open_bulk(&self, peer: CoreAddress) -> Result<SendStream, PeerError> {
        self.open_stream(peer, StreamClass::Bulk, BULK_PRIORITY)
            .await
    }

    async fn open_stream(
        &self,
        peer: CoreAddress,
        class: StreamClass,
        priority: i32,
    ) -> Result<SendStream, PeerError> {
        let conn = self.connection(peer).await?;
        let (local, shape) = {
            let shared = self.shared.borrow();
            (shared.local, shared.shape)
        };
        let opened = async {
            let mut stream = conn.open_uni().await?;
            stream.set_priority(priority)?;
            let mut first = Vec::new();
            let hello = Hello {
                from: local,
                class,
                shape,
                incarnation: self.incarnation(),
            };
            encode_frame(FrameKind::Hello, 0, &hello.encode(), &mut first)
                .expect("a hello is small");
            stream.write_all(&first).await?;
            Ok::<_, TransportError>(stream)
        };
        match opened.await {
            Ok(stream) => Ok(stream),
            Err(source) => {
                self.connection_failed(peer);
                Err(PeerError::Transport { peer, source })
            }
        }
    }

    /// An established connection failed: forget it and count the failure.
    fn connection_failed(&self, peer: CoreAddress) {
        let mut shared = self.shared.borrow_mut();
        let now = shared.clock.now();
        if let Some(slot) = shared.slots.get_mut(&peer) {
            slot.conn = None;
            slot.control = None;
            slot.health.on_failure(now);
        }
    }

    /// The connection to `peer`, opened on demand under the peer's backoff and breaker.
    pub async fn connection(&self, peer: CoreAddress) -> Result<Connection, PeerError> {
        let (addr, endpoint, tls, timeout) = {
            let mut shared = self.shared.borrow_mut();
            let now = shared.clock.now();
            shared.learn_slot(peer);
            let slot = shared
                .slots
                .get_mut(&peer)
                .ok_or(PeerError::UnknownPeer(peer))?;
            if let Some(conn) = &slot.conn {
                return Ok(conn.clone());
            }
            match slot.health.admit(now) {
                Admission::Attempt => {}
                Admission::RetryAt(_) => {
                    return Err(PeerError::Unavailable {
                        peer,
                        why: "backing off",
                    });
                }
                Admission::Open => {
                    return Err(PeerError::Unavailable {
                        peer,
                        why: "circuit breaker open",
                    });
                }
            }
            let addr = slot.addr;
            shared.stats.connect_attempts += 1;
            (
                addr,
                shared.endpoint.clone(),
                shared.tls.clone(),
                shared.connect_timeout,
            )
        };
        let server_name = tls::node_server_name(peer.node);
        let attempt = async { Some(endpoint.connect(addr, &server_name, &tls, ALPN_PEER).await) };
        let timed_out = async {
            glommio::timer::sleep(timeout).await;
            None
        };
        let outcome = future::or(attempt, timed_out).await;
        let mut shared = self.shared.borrow_mut();
        let now: Time = shared.clock.now();
        let failed = !matches!(outcome, Some(Ok(_)));
        if failed {
            shared.stats.connect_failures += 1;
        }
        let restarts = shared.nodes.restarts(peer.node);
        let slot = shared
            .slots
            .get_mut(&peer)
            .ok_or(PeerError::UnknownPeer(peer))?;
        match outcome {
            Some(Ok(conn)) => {
                info!(%peer, %addr, "peer connected");
                slot.health.on_success();
                slot.conn = Some(conn.clone());
                slot.restarts_seen = restarts;
                Ok(conn)
            }
            Some(Err(source)) => {
                slot.health.on_failure(now);
                debug!(%peer, error = %source, "peer connection failed");
                Err(PeerError::Transport { peer, source })
            }
            None => {
                slot.health.on_failure(now);
                Err(PeerError::ConnectTimeout { peer, addr })
            }
        }
    }
}

/// This process's incarnation: different at every start (the start time in nanoseconds,
/// mixed with the process id), the same for every core of the process.
pub fn process_incarnation() -> u64 {
    static INCARNATION: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    *INCARNATION.get_or_init(|| {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        crate::rng::mix64(nanos ^ (u64::from(std::process::id()) << 32))
    })
}

/// Why a peer connection or stream was refused.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum PeerRefusal {
    /// The peer protocol is for nodes; this certificate's holder is not one.
    #[error("the peer protocol needs a node certificate; this one is a {0}'s")]
    NotANode(Role),
    /// The certificate does not parse or names several roles.
    #[error("unusable certificate: {0}")]
    BadCertificate(String),
    /// A stream's `Hello` claims another node than the certificate names.
    #[error("hello claims node {claimed}, the certificate names node {certified}")]
    WrongNode { claimed: NodeId, certified: NodeId },
    /// The sender belongs to another cluster, or counts groups otherwise.
    #[error(
        "the peer's cluster is {theirs:?} but this node's is {ours:?} (cluster id from the CA, groups from the configuration)"
    )]
    WrongCluster {
        theirs: ClusterShape,
        ours: ClusterShape,
    },
    /// A stream that does not start with a valid `Hello`, or carries bad frames.
    #[error("{0}")]
    BadStream(String),
    /// The connection ended while a stream was read (the peer stopped or went away): not
    /// the peer's fault.
    #[error("connection lost: {0}")]
    Lost(String),
}

/// The node an accepted peer connection may speak for: the one its certificate names
/// (`None` in the insecure mode, which authenticates nobody: any `Hello` is taken).
pub fn peer_node(conn: &Connection) -> Result<Option<NodeId>, PeerRefusal> {
    match tls::role_of(&conn.peer_certificates()) {
        Ok(None) => Ok(None),
        Ok(Some(Role::Node(node))) => Ok(Some(node)),
        Ok(Some(role)) => Err(PeerRefusal::NotANode(role)),
        Err(e) => Err(PeerRefusal::BadCertificate(e.to_string())),
    }
}

/// Reads every unidirectional stream of an accepted peer connection, passing each frame to
/// `on_frame` with the sender and stream class from the stream's `Hello`. A connection whose
/// certificate is not a node's is closed at once; a stream whose first frame is not a valid
/// `Hello` for the node the certificate names, or whose bytes are not valid frames, is
/// abandoned and the connection closed: bad bytes from a peer never reach the handler.
pub async fn receive_streams<F>(conn: Connection, shape: ClusterShape, on_frame: F)
where
    F: FnMut(CoreAddress, StreamClass, Frame) + 'static,
{
    receive_peer_streams(conn, shape, |_, _| {}, on_frame).await;
}

/// Like [`receive_streams`], calling `on_hello` with the sender and its incarnation once
/// each stream's `Hello` is accepted (before any of its frames).
pub async fn receive_peer_streams<H, F>(
    conn: Connection,
    shape: ClusterShape,
    on_hello: H,
    on_frame: F,
) where
    H: FnMut(CoreAddress, u64) + 'static,
    F: FnMut(CoreAddress, StreamClass, Frame) + 'static,
{
    let certified = match peer_node(&conn) {
        Ok(node) => node,
        Err(refusal) => {
            warn!(remote = %conn.remote_address(), %refusal, "peer connection refused");
            conn.close(3, refusal.to_string().as_bytes());
            return;
        }
    };
    let handler = Rc::new(RefCell::new(on_frame));
    let on_hello = Rc::new(RefCell::new(on_hello));
    while let Ok(stream) = conn.accept_uni().await {
        let (handler, on_hello, conn) = (handler.clone(), on_hello.clone(), conn.clone());
        glommio::spawn_local(async move {
            match read_stream(stream, certified, shape, &on_hello, &handler).await {
                Ok(()) => {}
                Err(PeerRefusal::Lost(reason)) => {
                    info!(remote = %conn.remote_address(), %reason, "peer connection lost");
                }
                Err(refusal) => {
                    warn!(remote = %conn.remote_address(), %refusal, "closing a peer connection that sent a bad stream");
                    conn.close(1, refusal.to_string().as_bytes());
                }
            }
        })
        .detach();
    }
}

async fn read_stream<H, F>(
    mut stream: RecvStream,
    certified: Option<NodeId>,
    shape: ClusterShape,
    on_hello: &Rc<RefCell<H>>,
    handler: &Rc<RefCell<F>>,
) -> Result<(), PeerRefusal>
where
    H: FnMut(CoreAddress, u64),
    F: FnMut(CoreAddress, StreamClass, Frame),
{
    let mut decoder = FrameDecoder::for_peer();
    let mut origin: Option<(CoreAddress, StreamClass)> = None;
    let mut bad: Option<PeerRefusal> = None;
    let stream_error = |e: String| PeerRefusal::BadStream(e);
    while let Some(chunk) = stream
        .read_chunk(usize::MAX)
        .await
        .map_err(|e| PeerRefusal::Lost(e.to_string()))?
    {
        decoder
            .decode(&chunk, |frame| {
                if bad.is_some() {
                    return;
                }
                match origin {
                    None if frame.kind == FrameKind::Hello => match Hello::parse(&frame.payload) {
                        Some(h) if certified.is_some_and(|n| n != h.from.node) => {
                            bad = Some(PeerRefusal::WrongNode {
                                claimed: h.from.node,
                                certified: certified.unwrap_or(h.from.node),
                            });
                        }
                        Some(h) if h.shape != shape => {
                            bad = Some(PeerRefusal::WrongCluster {
                                theirs: h.shape,
                                ours: shape,
                            });
                        }
                        Some(h) => {
                            (on_hello.borrow_mut())(h.from, h.incarnation);
                            origin = Some((h.from, h.class));
                        }
                        None => bad = Some(stream_error("malformed hello".into())),
                    },
                    None => bad = Some(stream_error("stream does not start with hello".into())),
                    Some((peer, class)) => (handler.borrow_mut())(peer, class, frame),
                }
            })
            .map_err(|e| stream_error(e.to_string()))?;
        if let Some(refusal) = bad {
            return Err(refusal);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_peer_node_restart_is_counted_once_per_new_incarnation_for_every_core() {
        let nodes = PeerNodes::default();
        let (n2, n3) = (NodeId(2), NodeId(3));
        // The first incarnation heard is no restart; hearing it again changes nothing.
        assert_eq!(nodes.heard(n2, 7), 0);
        assert_eq!(nodes.heard(n2, 7), 0);
        assert_eq!(nodes.restarts(n3), 0);
        // Another core hears the new process: every core sees the count move.
        assert_eq!(nodes.heard(n2, 8), 1);
        assert_eq!(nodes.restarts(n2), 1);
        assert_eq!(nodes.heard(n2, 8), 1);
        assert_eq!(nodes.heard(n2, 9), 2);
        assert_eq!(nodes.restarts(n3), 0, "other nodes are untouched");
    }
}
