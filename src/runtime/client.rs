//! The KV client: key → vShard → group → leader `(node, core)`, over QUIC with mTLS.
//!
//! A thin driver of the sans-IO [`Call`]: the call decides where each attempt goes and
//! what each answer means (leader cache, redirects, stale-epoch refetches, unknown
//! outcomes); this module moves its requests over QUIC, one stream per request, and sleeps
//! when it says to wait. A failed connection is forgotten. Every request is bounded in
//! attempts and time.

use std::cell::RefCell;
use std::collections::HashMap;
use std::net::SocketAddr;

use futures_lite::future;
use thiserror::Error;

use crate::client::call::{Call, CallError, CallPolicy, CallStep, Failure};
use crate::client::routing::Routing;
use crate::cluster::metadata::MetadataCommand;
use crate::cluster::placement::PlacementError;
use crate::cluster::spec::{ClusterInfo, ClusterSpec};
use crate::cluster::topology::NodeInfo;
use crate::cluster::vshard::{VShardCountError, VShardMap};
use crate::constants::{CLIENT_CONNECT_TIMEOUT, CLIENT_REQUEST_TIMEOUT};
use crate::ids::{CoreAddress, GroupId, NodeId, ReplicaId};
use crate::metrics::stages::StageHistograms;
use crate::replication::kv::{KvCommand, KvError, KvResponse};
use crate::runtime::clock::MonotonicClock;
use crate::runtime::quic::{
    Connection, EndpointOptions, HandshakeRefusal, QuicEndpoint, TransportError,
};
use crate::runtime::tls::{self, ALPN_CLIENT, TlsMode};
use crate::wire::frame::{FrameDecoder, FrameKind, encode_frame};
use crate::wire::kv_rpc::{KvOp, KvReply, KvRequest, KvResponseFrame, ServerTiming};

/// A request that did not succeed.
#[derive(Debug, Error)]
pub enum ClientError {
    /// The request itself is invalid (empty or oversized key or value).
    #[error("invalid request: {0}")]
    Invalid(#[from] KvError),
    /// The cluster spec's group count is not a power of two.
    #[error(transparent)]
    Spec(#[from] VShardCountError),
    /// The cluster spec places no replica (no nodes, a bad replica count).
    #[error("the cluster spec: {0}")]
    Placement(#[from] PlacementError),
    /// The request failed (no leader, refused, or with an unknown outcome).
    #[error(transparent)]
    Call(#[from] CallError),
    /// The endpoint could not be created.
    #[error(transparent)]
    Transport(#[from] TransportError),
    /// The server's answer does not fit the request.
    #[error("unexpected reply: {0}")]
    Protocol(String),
}

/// The server refused the request; it had no effect.
fn refused(message: String) -> ClientError {
    ClientError::Call(CallError::Server(message))
}

/// A client of one cluster; lives on one glommio executor.
pub struct KvClient {
    endpoint: QuicEndpoint,
    tls: TlsMode,
    map: VShardMap,
    conns: RefCell<HashMap<SocketAddr, Connection>>,
    /// Leader cache, node health, the placement table (sans-IO, shared by every call).
    routing: RefCell<Routing>,
    clock: MonotonicClock,
    /// Stage timing of sampled writes (`sample_stages`).
    stages: RefCell<Option<StageSampler>>,
    /// How persistent each call is (`set_give_up_after`).
    policy: std::cell::Cell<CallPolicy>,
}

/// Which writes a client asks to trace, and what their answers said.
struct StageSampler {
    every: u64,
    writes: u64,
    histograms: StageHistograms,
}

impl KvClient {
    /// A client for the cluster `spec`, authenticating with `tls` (a client certificate).
    pub fn new(spec: ClusterSpec, tls: TlsMode, mtu: u16) -> Result<KvClient, ClientError> {
        let map = VShardMap::new(spec.groups)?;
        let routing = Routing::new(&spec)?;
        let towards = spec
            .nodes
            .first()
            .map_or(SocketAddr::from(([0, 0, 0, 0], 0)), |(_, a)| *a);
        let endpoint = client_endpoint(towards, &tls, mtu)?;
        Ok(KvClient {
            endpoint,
            tls,
            map,
            conns: RefCell::default(),
            routing: RefCell::new(routing),
            clock: MonotonicClock::new(),
            stages: RefCell::new(None),
            policy: std::cell::Cell::new(CallPolicy::default()),
        })
    }

    /// Ends every call `after` its first attempt, a request still awaited then included
    /// (`CallPolicy::hard_deadline`), with the last reason it met: no leader, no majority
    /// of the metadata group, a write's unknown outcome. Unless set, a call starts no
    /// attempt after `CLIENT_CALL_TIMEOUT` and awaits the last one's answer.
    pub fn set_deadline(&self, after: std::time::Duration) {
        let mut policy = self.policy.get();
        policy.give_up_after = after;
        policy.hard_deadline = true;
        self.policy.set(policy);
    }

    /// Asks every `every`-th write (the first included) for its server timing and keeps
    /// the stages in histograms (`stage_histograms`). A write costs the server a few
    /// timestamps more when traced; others cost nothing.
    pub fn sample_stages(&self, every: u64) {
        *self.stages.borrow_mut() = Some(StageSampler {
            every: every.max(1),
            writes: 0,
            histograms: StageHistograms::new(),
        });
    }

    /// The stages of the writes sampled so far, if sampling is on.
    pub fn stage_histograms(&self) -> Option<StageHistograms> {
        self.stages.borrow().as_ref().map(|s| s.histograms.clone())
    }

    /// Whether to trace this attempt of a call: a write, when its turn comes.
    fn trace(&self, request: &KvRequest) -> bool {
        let mut stages = self.stages.borrow_mut();
        match stages.as_mut() {
            Some(s) if matches!(request.op, KvOp::Write { .. }) => {
                s.writes += 1;
                (s.writes - 1) % s.every == 0
            }
            _ => false,
        }
    }

    /// The group that owns `key`: its vShard's group (`vshard + 1`).
    pub fn group_of(&self, key: &[u8]) -> GroupId {
        GroupId(u64::from(self.map.vshard_of(key).0) + 1)
    }

    pub async fn put(&self, key: &[u8], value: &[u8]) -> Result<(), ClientError> {
        let command = KvCommand::Put {
            key: key.to_vec(),
            value: value.to_vec(),
        };
        match self.write(key, command).await? {
            KvResponse::Done => Ok(()),
            other => Err(ClientError::Protocol(format!("{other:?}"))),
        }
    }

    pub async fn delete(&self, key: &[u8]) -> Result<bool, ClientError> {
        match self
            .write(key, KvCommand::Delete { key: key.to_vec() })
            .await?
        {
            KvResponse::Deleted(existed) => Ok(existed),
            other => Err(ClientError::Protocol(format!("{other:?}"))),
        }
    }

    /// Sets `key` to `new` only if it holds `expected`; returns whether it did and what it found.
    pub async fn compare_and_set(
        &self,
        key: &[u8],
        expected: Option<&[u8]>,
        new: Option<&[u8]>,
    ) -> Result<(bool, Option<Vec<u8>>), ClientError> {
        let command = KvCommand::CompareAndSet {
            key: key.to_vec(),
            expected: expected.map(<[u8]>::to_vec),
            new: new.map(<[u8]>::to_vec),
        };
        match self.write(key, command).await? {
            KvResponse::Cas { applied, found } => Ok((applied, found)),
            other => Err(ClientError::Protocol(format!("{other:?}"))),
        }
    }

    /// A linearizable read of `key`.
    pub async fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, ClientError> {
        KvCommand::Delete { key: key.to_vec() }.validate()?;
        match self
            .call(self.group_of(key), KvOp::Get { key: key.to_vec() })
            .await?
        {
            KvReply::Value(v) => Ok(v),
            other => Err(ClientError::Protocol(format!("{other:?}"))),
        }
    }

    async fn write(&self, key: &[u8], command: KvCommand) -> Result<KvResponse, ClientError> {
        command.validate()?;
        match self
            .call(
                self.group_of(key),
                KvOp::Write {
                    command: command.encode(),
                },
            )
            .await?
        {
            KvReply::Written(bytes) => {
                let response =
                    KvResponse::decode(&bytes).map_err(|e| ClientError::Protocol(e.to_string()))?;
                match response {
                    KvResponse::Rejected(reason) => Err(refused(reason)),
                    r => Ok(r),
                }
            }
            other => Err(ClientError::Protocol(format!("{other:?}"))),
        }
    }

    /// The epoch of the cached placement table, if one was fetched.
    pub fn routing_epoch(&self) -> Option<u64> {
        self.routing.borrow().table.epoch()
    }

    /// Sends an admin request (`View`, `ChangeMembership`, `TransferLeader`) to the leader of
    /// `group`, following redirects. An error answer is `CallError::Server`.
    pub async fn admin(&self, group: GroupId, op: KvOp) -> Result<KvReply, ClientError> {
        self.call(group, op).await
    }

    /// Starts moving `group`'s replica on node `from` to the core at `to`: the move is
    /// recorded in the placement table, and the metadata leader's migration executor
    /// carries it out (learner, catch-up, joint change, retirement of the old replica).
    /// Returns once the move is recorded; `routing` shows when it ended (the old replica is
    /// gone from the table).
    pub async fn move_replica(
        &self,
        group: GroupId,
        from: NodeId,
        to: CoreAddress,
    ) -> Result<(), ClientError> {
        let (_, groups) = self.routing().await?;
        let replica = groups
            .iter()
            .find(|(g, _)| *g == group)
            .ok_or_else(|| refused(format!("group {} does not exist", group.0)))?
            .1
            .iter()
            .find(|(_, a)| a.node == from)
            .map(|(r, _)| ReplicaId(*r))
            .ok_or_else(|| refused(format!("node {from} holds no replica of group {}", group.0)))?;
        self.propose_metadata(MetadataCommand::StartMove {
            group,
            from: replica,
            to,
        })
        .await
    }

    /// Asks the metadata leader to give up `group`'s move: the new replica is taken out of
    /// the group again, unless the old one already left (the move then completes). For a
    /// move whose target node is gone for good.
    pub async fn abandon_move(&self, group: GroupId) -> Result<(), ClientError> {
        self.propose_metadata(MetadataCommand::AbandonMove { group })
            .await
    }

    /// Starts draining `node`: the rebalancer moves every replica off it, and it becomes
    /// `Decommissioned` once nothing is placed on it (`status` then says it is safe to
    /// stop). Refused for an unknown node, a node that is not active, or a drain that would
    /// leave too few nodes for the replica count or for the metadata group's quorum.
    pub async fn decommission(&self, node: NodeId) -> Result<(), ClientError> {
        self.propose_metadata(MetadataCommand::SetNodeState {
            node,
            state: crate::cluster::topology::NodeState::Draining,
        })
        .await
    }

    /// Ends `node`'s drain before it finishes: the node is active again (its remaining
    /// replicas stay; the rebalancer may move load back to it). Refused once the node is
    /// decommissioned.
    pub async fn recommission(&self, node: NodeId) -> Result<(), ClientError> {
        self.propose_metadata(MetadataCommand::SetNodeState {
            node,
            state: crate::cluster::topology::NodeState::Active,
        })
        .await
    }

    /// Adds `node` to the running cluster (`start --join`): it enters the topology as
    /// `Joining`. Refused for an id or address already taken, or another core count.
    /// Asking again for the same node, address and cores is not an error.
    pub async fn add_node(&self, node: NodeInfo) -> Result<(), ClientError> {
        self.propose_metadata(MetadataCommand::AddNode { node })
            .await
    }

    /// Proposes a metadata command; a refused one is `CallError::Server` with the reason.
    async fn propose_metadata(&self, command: MetadataCommand) -> Result<(), ClientError> {
        let op = KvOp::Write {
            command: command.encode(),
        };
        match self.call(GroupId::METADATA, op).await? {
            KvReply::Written(response) => match response.split_first() {
                Some((1, _)) => Ok(()),
                Some((0, reason)) => {
                    let mut r = crate::wire::codec::Reader::new(reason);
                    let reason = r
                        .bytes("reason", crate::constants::METADATA_REASON_MAX_BYTES)
                        .map(|b| String::from_utf8_lossy(b).into_owned())
                        .unwrap_or_else(|e| format!("(unreadable reason: {e})"));
                    Err(refused(format!("refused: {reason}")))
                }
                _ => Err(ClientError::Protocol(format!("{response:?}"))),
            },
            other => Err(ClientError::Protocol(format!("{other:?}"))),
        }
    }

    /// Sends `op` to the leader of `group`, following redirects.
    async fn call(&self, group: GroupId, op: KvOp) -> Result<KvReply, ClientError> {
        self.drive(Call::new(group, op, self.policy.get())).await
    }

    /// Carries out a call's steps until it is over.
    async fn drive(&self, mut call: Call) -> Result<KvReply, ClientError> {
        loop {
            let step = call.poll(self.clock.now(), &mut self.routing.borrow_mut());
            match step {
                CallStep::Send {
                    target,
                    mut request,
                } => {
                    request.trace = self.trace(&request);
                    // The clock is read for a traced attempt only.
                    let sent = request.trace.then(|| self.clock.now());
                    // The call's own deadline for this request (`CallPolicy`).
                    let wait = call
                        .poll_timeout()
                        .map_or(CLIENT_REQUEST_TIMEOUT, |deadline| {
                            deadline.saturating_since(self.clock.now())
                        });
                    let result = self.exchange_timed(target, &request, wait).await;
                    let (now, routing) = (self.clock.now(), &mut *self.routing.borrow_mut());
                    match result {
                        Ok((reply, timing)) => {
                            if let (Some(t), Some(sent), KvReply::Written(_)) =
                                (timing, sent, &reply)
                                && let Some(s) = self.stages.borrow_mut().as_mut()
                            {
                                s.histograms.record(now.saturating_since(sent), &t);
                            }
                            call.handle_reply(now, routing, request.id, reply)
                        }
                        Err(failure) => call.handle_failure(now, routing, request.id, failure),
                    }
                }
                CallStep::Wait(until) => {
                    glommio::timer::sleep(until.saturating_since(self.clock.now())).await;
                }
                CallStep::Done(outcome) => return Ok(outcome?),
            }
        }
    }

    async fn connection(&self, node: NodeId, addr: SocketAddr) -> Result<Connection, Failure> {
        if let Some(conn) = self.conns.borrow().get(&addr) {
            return Ok(conn.clone());
        }
        let name = tls::node_server_name(node);
        let connect = async {
            Some(
                self.endpoint
                    .connect(addr, &name, &self.tls, ALPN_CLIENT)
                    .await,
            )
        };
        let timeout = async {
            glommio::timer::sleep(CLIENT_CONNECT_TIMEOUT).await;
            None
        };
        let conn = match future::or(connect, timeout).await {
            Some(result) => result.map_err(|e| not_sent(addr, e))?,
            None => return Err(Failure::NotSent(format!("connecting to {addr} timed out"))),
        };
        // Callers that found no connection all connect; the first to finish keeps its
        // connection and the others use it (theirs closes once dropped: the endpoint
        // closes a connection nobody holds).
        Ok(self.conns.borrow_mut().entry(addr).or_insert(conn).clone())
    }

    /// One request to the core at `target` on its own stream, bounded by
    /// `CLIENT_REQUEST_TIMEOUT`. A request that fails before its stream is finished never
    /// reached a server (`NotSent`); after that, a server may have acted on it (`Lost`).
    pub async fn exchange(
        &self,
        target: CoreAddress,
        request: &KvRequest,
    ) -> Result<KvReply, Failure> {
        Ok(self
            .exchange_timed(target, request, CLIENT_REQUEST_TIMEOUT)
            .await?
            .0)
    }

    /// `exchange`, with the server's timing of a traced write.
    async fn exchange_timed(
        &self,
        target: CoreAddress,
        request: &KvRequest,
        wait: std::time::Duration,
    ) -> Result<(KvReply, Option<ServerTiming>), Failure> {
        let addr = self.routing.borrow().address(target).ok_or_else(|| {
            Failure::NotSent(format!(
                "{target} (node {}, core {}) is neither in this client's configuration nor in \
                 the placement tables it fetched",
                target.node, target.core
            ))
        })?;
        let exchange = async {
            let conn = self.connection(target.node, addr).await?;
            let result = request_on(&conn, request).await;
            if result.is_err() {
                self.conns.borrow_mut().remove(&addr);
            }
            result
        };
        let timeout = async {
            glommio::timer::sleep(wait).await;
            Err(Failure::Lost(format!(
                "no answer from {addr} within {wait:?}"
            )))
        };
        future::or(exchange, timeout).await
    }

    /// The cluster's placement table from the metadata group (a linearizable read): its
    /// epoch and each group's replicas as `(Raft id, node/core)`. The client caches it and
    /// routes by it.
    pub async fn routing(
        &self,
    ) -> Result<(u64, Vec<(GroupId, Vec<(u64, CoreAddress)>)>), ClientError> {
        match self.call(GroupId::METADATA, KvOp::Routing).await? {
            // The call cached it: requests route by this table from now on.
            KvReply::Routing { epoch, groups, .. } => Ok((epoch, groups)),
            other => Err(ClientError::Protocol(format!("{other:?}"))),
        }
    }

    /// The replica moves under way (a linearizable read of the metadata group).
    pub async fn moves(
        &self,
    ) -> Result<Vec<(GroupId, crate::cluster::placement::PendingMove)>, ClientError> {
        match self.call(GroupId::METADATA, KvOp::Moves).await? {
            KvReply::Moves(moves) => Ok(moves),
            other => Err(ClientError::Protocol(format!("{other:?}"))),
        }
    }

    /// The rebalancer's view of the cluster, from the coordinator (`kv status`).
    pub async fn status(&self) -> Result<crate::node::BalancerStatus, ClientError> {
        match self.call(GroupId::METADATA, KvOp::Status).await? {
            KvReply::Value(Some(json)) => serde_json::from_slice(&json)
                .map_err(|e| ClientError::Protocol(format!("status: {e}"))),
            other => Err(ClientError::Protocol(format!("{other:?}"))),
        }
    }

    /// Learns where nodes listen (nodes that joined after this client's spec was written).
    pub fn learn_addresses(&self, nodes: &[(NodeId, SocketAddr)]) {
        self.routing.borrow_mut().learn_addresses(nodes);
    }

    /// The leader of `group` this client last saw, if any.
    pub fn cached_leader(&self, group: GroupId) -> Option<CoreAddress> {
        self.routing.borrow().router.leader(group)
    }

    /// Sends one request to one specific core, without redirects (diagnostics and tests).
    pub async fn call_at(
        &self,
        target: CoreAddress,
        group: GroupId,
        op: KvOp,
    ) -> Result<KvReply, ClientError> {
        self.drive(Call::pinned(target, group, op, CallPolicy::default()))
            .await
    }

    /// Closes the client's connections.
    pub async fn shutdown(&self) {
        self.endpoint.shutdown().await;
    }
}

/// One request on its own stream of `conn`. A request that fails before its stream is
/// finished never reached the server (`NotSent`); after that, it may have (`Lost`).
/// A request that could not be sent: refused outright when the TLS handshake was.
fn not_sent(addr: SocketAddr, e: TransportError) -> Failure {
    refusal(addr, &e).unwrap_or_else(|| Failure::NotSent(e.to_string()))
}

/// What a refused TLS handshake with the node at `addr` means for this client.
fn refusal(addr: SocketAddr, e: &TransportError) -> Option<Failure> {
    Some(Failure::Refused(match e.handshake_refusal()? {
        HandshakeRefusal::ByPeer(why) => format!(
            "the node at {addr} refused this client's certificate ({why}): it must be issued \
             by the cluster's CA (`nodedb-cluster certs client`) and be the one the client \
             file's [tls] section (or --cert and --key) names"
        ),
        HandshakeRefusal::Here(why) => format!(
            "this client refused the certificate of the node at {addr} ({why}): the client \
             file's [tls] ca_cert (or --ca) must be the cluster's CA (ca.pem), and the address \
             must be that node's"
        ),
    }))
}

async fn request_on(
    conn: &Connection,
    request: &KvRequest,
) -> Result<(KvReply, Option<ServerTiming>), Failure> {
    let addr = conn.remote_address();
    let not_sent = |e: TransportError| not_sent(addr, e);
    let (mut send, mut recv) = conn.open_bi().await.map_err(not_sent)?;
    let mut out = Vec::new();
    encode_frame(FrameKind::Request, 0, &request.encode(), &mut out)
        .map_err(|e| Failure::NotSent(e.to_string()))?;
    send.write_all(&out).await.map_err(not_sent)?;
    send.finish().map_err(not_sent)?;
    let lost = |e: String| Failure::Lost(e);
    let mut decoder = FrameDecoder::new();
    let mut frame = None;
    while let Some(chunk) = recv
        .read_chunk(usize::MAX)
        .await
        .map_err(|e| refusal(addr, &e).unwrap_or_else(|| lost(e.to_string())))?
    {
        decoder
            .decode(&chunk, |f| frame = Some(f))
            .map_err(|e| lost(e.to_string()))?;
    }
    let frame =
        frame.ok_or_else(|| lost("the server closed the stream without an answer".into()))?;
    let response = KvResponseFrame::decode(&frame.payload).map_err(|e| lost(e.to_string()))?;
    Ok((response.reply, response.timing))
}

/// A client's endpoint for reaching nodes like `towards`: loopback clusters are reached
/// from loopback, others from any local address of the same family.
fn client_endpoint(
    towards: SocketAddr,
    tls: &TlsMode,
    mtu: u16,
) -> Result<QuicEndpoint, ClientError> {
    let ip: std::net::IpAddr = if towards.ip().is_loopback() {
        towards.ip()
    } else if towards.is_ipv6() {
        std::net::Ipv6Addr::UNSPECIFIED.into()
    } else {
        std::net::Ipv4Addr::UNSPECIFIED.into()
    };
    Ok(QuicEndpoint::bind(EndpointOptions {
        bind: SocketAddr::new(ip, 0),
        tls: tls.clone(),
        segmentation_offload: true,
        mtu,
        server: false,
    })?)
}

/// Asks whichever node of the cluster listens at `addr` (its id unknown: its certificate
/// must be a node's of the cluster CA) what it knows of the cluster: the first step of
/// `start --join`.
pub async fn cluster_info_at(
    addr: SocketAddr,
    tls: &TlsMode,
    mtu: u16,
) -> Result<ClusterInfo, ClientError> {
    let endpoint = client_endpoint(addr, tls, mtu)?;
    let ask = async {
        let conn = endpoint
            .connect(addr, tls::ANY_NODE_SERVER_NAME, tls, ALPN_CLIENT)
            .await
            .map_err(|e| match refusal(addr, &e) {
                Some(Failure::Refused(why)) => ClientError::Call(CallError::HandshakeRefused(why)),
                _ => ClientError::Protocol(format!("connecting to {addr}: {e}")),
            })?;
        let request = KvRequest {
            id: 1,
            group: GroupId::METADATA,
            op: KvOp::Cluster,
            trace: false,
        };
        match request_on(&conn, &request).await.map(|(reply, _)| reply) {
            Ok(KvReply::Value(Some(json))) => serde_json::from_slice::<ClusterInfo>(&json)
                .map_err(|e| ClientError::Protocol(format!("{addr}'s cluster description: {e}"))),
            Ok(KvReply::Forbidden(why)) => Err(refused(format!("{addr} refused: {why}"))),
            Ok(other) => Err(ClientError::Protocol(format!("{addr} answered {other:?}"))),
            Err(Failure::Refused(why)) => Err(ClientError::Call(CallError::HandshakeRefused(why))),
            Err(Failure::NotSent(e) | Failure::Lost(e)) => {
                Err(ClientError::Protocol(format!("asking {addr}: {e}")))
            }
        }
    };
    let timeout = async {
        glommio::timer::sleep(CLIENT_REQUEST_TIMEOUT).await;
        Err(ClientError::Protocol(format!(
            "no answer from {addr} within {CLIENT_REQUEST_TIMEOUT:?}"
        )))
    };
    let outcome = future::or(ask, timeout).await;
    endpoint.shutdown().await;
    outcome
}
