//! The KV client: key → vShard → group → leader `(node, core)`, over QUIC with mTLS.
//!
//! The client caches the leader of each group; a `NotLeader` answer updates the cache from
//! its hint (or forgets the entry and tries the next node), a failed connection forgets the
//! connection and the cached leader. Every request is bounded in attempts and time.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::net::SocketAddr;

use futures_lite::future;
use thiserror::Error;

use crate::client::routing::{Next, PlacementCache, Router};
use crate::cluster::metadata::MetadataCommand;
use crate::cluster::placement::PlacementTable;
use crate::cluster::spec::ClusterSpec;
use crate::cluster::vshard::{VShardCountError, VShardMap};
use crate::constants::{
    CLIENT_ATTEMPTS_MAX, CLIENT_CONNECT_TIMEOUT, CLIENT_REQUEST_TIMEOUT, CLIENT_RETRY_BACKOFF,
};
use crate::ids::{CoreAddress, GroupId, ReplicaId};
use crate::ids::{CoreId, NodeId};
use crate::replication::kv::{KvCommand, KvError, KvResponse};
use crate::runtime::clock::MonotonicClock;
use crate::runtime::quic::{Connection, EndpointOptions, QuicEndpoint, TransportError};
use crate::runtime::tls::{self, ALPN_CLIENT, TlsMode};
use crate::wire::frame::{FrameDecoder, FrameKind, encode_frame};
use crate::wire::kv_rpc::{KvOp, KvReply, KvRequest, KvResponseFrame};

/// A request that did not succeed.
#[derive(Debug, Error)]
pub enum ClientError {
    /// The request itself is invalid (empty or oversized key or value).
    #[error("invalid request: {0}")]
    Invalid(#[from] KvError),
    /// The cluster spec's group count is not a power of two.
    #[error(transparent)]
    Spec(#[from] VShardCountError),
    /// No leader answered within the attempt budget.
    #[error("no leader for group {group} after {attempts} attempts (last error: {last})")]
    NoLeader {
        group: u64,
        attempts: usize,
        last: String,
    },
    /// The server answered with an error (the outcome of a write may be unknown).
    #[error("server error: {0}")]
    Server(String),
    /// The endpoint could not be created.
    #[error(transparent)]
    Transport(#[from] TransportError),
    /// The server's answer does not fit the request.
    #[error("unexpected reply: {0}")]
    Protocol(String),
}

/// A client of one cluster; lives on one glommio executor.
pub struct KvClient {
    endpoint: QuicEndpoint,
    tls: TlsMode,
    spec: ClusterSpec,
    /// Where a new cluster's replicas are: routes until the placement table is fetched.
    initial: PlacementTable,
    map: VShardMap,
    conns: RefCell<HashMap<SocketAddr, Connection>>,
    next_id: Cell<u64>,
    /// Leader cache, redirects and node health (sans-IO, shared with the simulator).
    router: RefCell<Router>,
    /// The placement table with its epoch (sans-IO, shared with the simulator).
    placement: RefCell<PlacementCache>,
    clock: MonotonicClock,
}

impl KvClient {
    /// A client for the cluster `spec`, authenticating with `tls` (a client certificate).
    pub fn new(spec: ClusterSpec, tls: TlsMode, mtu: u16) -> Result<KvClient, ClientError> {
        let map = VShardMap::new(spec.groups)?;
        let initial = spec
            .initial_table()
            .map_err(|e| ClientError::Protocol(format!("the cluster spec: {e}")))?;
        // Loopback clusters are reached from loopback; others from any local address.
        let ip = match spec.nodes.first().map(|(_, a)| a.ip()) {
            Some(ip) if ip.is_loopback() => ip,
            Some(std::net::IpAddr::V6(_)) => std::net::Ipv6Addr::UNSPECIFIED.into(),
            _ => std::net::Ipv4Addr::UNSPECIFIED.into(),
        };
        let endpoint = QuicEndpoint::bind(EndpointOptions {
            bind: SocketAddr::new(ip, 0),
            tls: tls.clone(),
            segmentation_offload: true,
            mtu,
            server: false,
        })?;
        Ok(KvClient {
            endpoint,
            tls,
            spec,
            initial,
            map,
            conns: RefCell::default(),
            next_id: Cell::new(1),
            router: RefCell::new(Router::new()),
            placement: RefCell::new(PlacementCache::new()),
            clock: MonotonicClock::new(),
        })
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
                    KvResponse::Rejected(reason) => Err(ClientError::Server(reason)),
                    r => Ok(r),
                }
            }
            other => Err(ClientError::Protocol(format!("{other:?}"))),
        }
    }

    fn pick_target(&self, group: GroupId) -> CoreAddress {
        // The group's replicas from the cached placement table, else from the spec's
        // initial placement (the metadata group on core 0 of every node).
        let candidates: Vec<CoreAddress> = self
            .placement
            .borrow()
            .replicas(group)
            .map(<[CoreAddress]>::to_vec)
            .unwrap_or_else(|| match self.initial.group(group) {
                Some(p) => p.addresses().collect(),
                None => self
                    .spec
                    .metadata_voters()
                    .into_iter()
                    .map(|(_, a)| a)
                    .collect(),
            });
        self.router
            .borrow_mut()
            .target(self.clock.now(), group, &candidates)
            .unwrap_or(CoreAddress {
                node: self.spec.nodes[0].0,
                core: CoreId(0),
            })
    }

    /// Fetches the placement table once (and again after a routing error); until the
    /// cluster is bootstrapped the static spec routes.
    async fn ensure_routing(&self, group: GroupId) {
        // After a failed fetch, the spec routes for a while rather than asking every time.
        if group == crate::runtime::node::METADATA_GROUP
            || !self.placement.borrow().wants_fetch(self.clock.now())
        {
            return;
        }
        // Boxed: the fetch is itself a routed call, which ensures routing before each try.
        let fetch: std::pin::Pin<Box<dyn Future<Output = _> + '_>> = Box::pin(self.routing());
        if fetch.await.is_err() {
            self.placement
                .borrow_mut()
                .on_fetch_failed(self.clock.now());
        }
    }

    /// The epoch of the cached placement table, if one was fetched.
    pub fn routing_epoch(&self) -> Option<u64> {
        self.placement.borrow().epoch()
    }

    /// Sends an admin request (`View`, `ChangeMembership`, `TransferLeader`) to the leader of
    /// `group`, following redirects. An error answer is `ClientError::Server`.
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
            .ok_or_else(|| ClientError::Server(format!("group {} does not exist", group.0)))?
            .1
            .iter()
            .find(|(_, a)| a.node == from)
            .map(|(r, _)| ReplicaId(*r))
            .ok_or_else(|| {
                ClientError::Server(format!("node {from} holds no replica of group {}", group.0))
            })?;
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

    /// Proposes a metadata command; a refused one is `ClientError::Server` with the reason.
    async fn propose_metadata(&self, command: MetadataCommand) -> Result<(), ClientError> {
        let op = KvOp::Write {
            command: command.encode(),
        };
        match self.call(crate::runtime::node::METADATA_GROUP, op).await? {
            KvReply::Written(response) => match response.split_first() {
                Some((1, _)) => Ok(()),
                Some((0, reason)) => {
                    let mut r = crate::wire::codec::Reader::new(reason);
                    let reason = r
                        .bytes("reason", crate::constants::METADATA_REASON_MAX_BYTES)
                        .map(|b| String::from_utf8_lossy(b).into_owned())
                        .unwrap_or_else(|e| format!("(unreadable reason: {e})"));
                    Err(ClientError::Server(format!("refused: {reason}")))
                }
                _ => Err(ClientError::Protocol(format!("{response:?}"))),
            },
            other => Err(ClientError::Protocol(format!("{other:?}"))),
        }
    }

    /// Sends `op` to the leader of `group`, following redirects.
    async fn call(&self, group: GroupId, op: KvOp) -> Result<KvReply, ClientError> {
        let mut last = String::from("no attempt");
        let mut pause = false;
        for _ in 0..CLIENT_ATTEMPTS_MAX {
            // A redirect with a hint is followed at once; anything else waits a little
            // (an election may be under way).
            if pause {
                glommio::timer::sleep(CLIENT_RETRY_BACKOFF).await;
            }
            // Route by the current table: fetched first, and again after a stale-epoch
            // redirect dropped it.
            self.ensure_routing(group).await;
            let target = self.pick_target(group);
            let id = self.next_id.get();
            self.next_id.set(id + 1);
            let request = KvRequest {
                id,
                group,
                op: op.clone(),
            };
            let next = match self.request(target, &request).await {
                Ok(KvReply::NotLeader(hint)) => {
                    last = format!("{}/{} is not the leader", target.node, target.core);
                    self.router.borrow_mut().on_not_leader(group, target, hint)
                }
                Ok(KvReply::Moved { epoch }) => {
                    // A stale-epoch redirect: fetch the table again if ours is older,
                    // else that node is behind and another replica is tried.
                    last = format!(
                        "{}/{} does not host group {} at epoch {epoch}",
                        target.node, target.core, group.0
                    );
                    self.placement.borrow_mut().on_moved(
                        &mut self.router.borrow_mut(),
                        self.clock.now(),
                        group,
                        target,
                        epoch,
                    )
                }
                Ok(KvReply::Error(message)) => return Err(ClientError::Server(message)),
                Ok(reply) => {
                    self.router.borrow_mut().on_answer(group, target);
                    return Ok(reply);
                }
                Err(e) => {
                    last = e;
                    self.router
                        .borrow_mut()
                        .on_failure(self.clock.now(), group, target)
                }
            };
            pause = next != Next::RetryNow;
        }
        Err(ClientError::NoLeader {
            group: group.0,
            attempts: CLIENT_ATTEMPTS_MAX,
            last,
        })
    }

    async fn connection(&self, node: NodeId, addr: SocketAddr) -> Result<Connection, String> {
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
            Some(result) => result.map_err(|e| e.to_string())?,
            None => return Err(format!("connecting to {addr} timed out")),
        };
        self.conns.borrow_mut().insert(addr, conn.clone());
        Ok(conn)
    }

    /// One request on its own stream, bounded by `CLIENT_REQUEST_TIMEOUT`.
    async fn request(&self, target: CoreAddress, request: &KvRequest) -> Result<KvReply, String> {
        let addr = self
            .spec
            .address(target.node, target.core)
            .ok_or("hint names an unknown node")?;
        let exchange = async {
            let conn = self.connection(target.node, addr).await?;
            let result = async {
                let (mut send, mut recv) = conn.open_bi().await.map_err(|e| e.to_string())?;
                let mut out = Vec::new();
                encode_frame(FrameKind::Request, 0, &request.encode(), &mut out)
                    .map_err(|e| e.to_string())?;
                send.write_all(&out).await.map_err(|e| e.to_string())?;
                send.finish().map_err(|e| e.to_string())?;
                let mut decoder = FrameDecoder::new();
                let mut frame = None;
                while let Some(chunk) = recv
                    .read_chunk(usize::MAX)
                    .await
                    .map_err(|e| e.to_string())?
                {
                    decoder
                        .decode(&chunk, |f| frame = Some(f))
                        .map_err(|e| e.to_string())?;
                }
                let frame = frame.ok_or("the server closed the stream without an answer")?;
                let response =
                    KvResponseFrame::decode(&frame.payload).map_err(|e| e.to_string())?;
                Ok::<_, String>(response.reply)
            }
            .await;
            if result.is_err() {
                self.conns.borrow_mut().remove(&addr);
            }
            result
        };
        let timeout = async {
            glommio::timer::sleep(CLIENT_REQUEST_TIMEOUT).await;
            Err(format!(
                "no answer from {addr} within {CLIENT_REQUEST_TIMEOUT:?}"
            ))
        };
        future::or(exchange, timeout).await
    }

    /// The cluster's placement table from the metadata group (a linearizable read): its
    /// epoch and each group's replicas as `(Raft id, node/core)`. The client caches it and
    /// routes by it.
    pub async fn routing(
        &self,
    ) -> Result<(u64, Vec<(GroupId, Vec<(u64, CoreAddress)>)>), ClientError> {
        match self
            .call(crate::runtime::node::METADATA_GROUP, KvOp::Routing)
            .await?
        {
            KvReply::Routing { epoch, groups } => {
                // Cache it: requests route by this table from now on.
                let table = groups
                    .iter()
                    .map(|(g, replicas)| (*g, replicas.iter().map(|(_, a)| *a).collect()))
                    .collect();
                self.placement.borrow_mut().store(epoch, table);
                Ok((epoch, groups))
            }
            other => Err(ClientError::Protocol(format!("{other:?}"))),
        }
    }

    /// The replica moves under way (a linearizable read of the metadata group).
    pub async fn moves(
        &self,
    ) -> Result<Vec<(GroupId, crate::cluster::placement::PendingMove)>, ClientError> {
        match self
            .call(crate::runtime::node::METADATA_GROUP, KvOp::Moves)
            .await?
        {
            KvReply::Moves(moves) => Ok(moves),
            other => Err(ClientError::Protocol(format!("{other:?}"))),
        }
    }

    /// The leader of `group` this client last saw, if any.
    pub fn cached_leader(&self, group: GroupId) -> Option<CoreAddress> {
        self.router.borrow().leader(group)
    }

    /// Sends one request to one specific core, without redirects (diagnostics and tests).
    pub async fn call_at(
        &self,
        target: CoreAddress,
        group: GroupId,
        op: KvOp,
    ) -> Result<KvReply, ClientError> {
        let id = self.next_id.get();
        self.next_id.set(id + 1);
        self.request(target, &KvRequest { id, group, op })
            .await
            .map_err(ClientError::Server)
    }

    /// Closes the client's connections.
    pub async fn shutdown(&self) {
        self.endpoint.shutdown().await;
    }
}
