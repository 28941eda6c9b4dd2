//! Fixtures shared by the criterion benchmarks (`benches/`) and `nodedb-perf`: in-process
//! nodes over loopback QUIC with mTLS and write-ahead logs, a loaded vShard moved between
//! them, and raw QUIC bulk transfers between two executors, the transport's ceiling for
//! the same bytes. Real code paths only: nothing here is a shortcut around the runtime.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use crate::ids::{CoreAddress, CoreId, GroupId, NodeId};
use crate::node::BalanceConfig;
use crate::runtime::client::KvClient;
use crate::runtime::cores::CoreLayout;
use crate::runtime::demo::free_base_port;
use crate::runtime::executor::{CorePlacement, spawn_executor};
use crate::runtime::node::{ClusterSpec, Node, NodeConfig};
use crate::runtime::quic::{EndpointOptions, QuicEndpoint};
use crate::runtime::tls::{self, ALPN_PEER, TlsMode};

/// The datagram size every fixture uses.
pub const MTU: u16 = 1452;
/// Bytes of each value a fixture loads.
pub const VALUE_BYTES: usize = 4096;

/// Nodes of one core each, one group, started in this process; `admin` is an operator's
/// certificate for a client.
pub struct Cluster {
    pub nodes: Vec<Node>,
    pub spec: ClusterSpec,
    pub admin: TlsMode,
    dir: PathBuf,
}

impl Cluster {
    /// `nodes` nodes (ids 1..), one group of `replicas` replicas, logs under `dir` (which
    /// must support O_DIRECT), no rebalancer and no snapshot throttle unless `snapshot_rate`.
    pub fn start(
        dir: &Path,
        nodes: u64,
        replicas: u16,
        snapshot_rate: Option<u64>,
    ) -> Result<Cluster, String> {
        Cluster::start_groups(dir, nodes, 1, replicas, snapshot_rate)
    }

    /// As `start`, with `groups` groups (a power of two).
    pub fn start_groups(
        dir: &Path,
        nodes: u64,
        groups: u32,
        replicas: u16,
        snapshot_rate: Option<u64>,
    ) -> Result<Cluster, String> {
        let _ = std::fs::remove_dir_all(dir);
        std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        let ca = tls::generate_ca("bench").map_err(|e| e.to_string())?;
        let addresses: Vec<(NodeId, SocketAddr)> = (1..=nodes)
            .map(|n| {
                free_base_port(1)
                    .map(|p| (NodeId(n), SocketAddr::from(([127, 0, 0, 1], p))))
                    .map_err(|e| e.to_string())
            })
            .collect::<Result<_, _>>()?;
        let spec = ClusterSpec {
            nodes: addresses,
            cores: 1,
            groups,
            replicas,
        };
        let mut running = Vec::new();
        for n in 1..=nodes {
            let identity = tls::issue_node_cert(&ca, NodeId(n), &["127.0.0.1".into()])
                .map_err(|e| e.to_string())?;
            running.push(
                Node::start(NodeConfig {
                    joined: None,
                    quiesce: true,
                    node: NodeId(n),
                    spec: spec.clone(),
                    data_dir: dir.join(format!("node-{n}")),
                    tls: TlsMode::Mutual {
                        ca_cert_pem: ca.cert_pem.clone(),
                        identity,
                    },
                    layout: CoreLayout::Unbound,
                    mtu: MTU,
                    snapshot_rate,
                    metrics_addr: None,
                    // The benchmark moves the vShard itself.
                    balance: BalanceConfig {
                        enabled: false,
                        ..Default::default()
                    },
                })
                .map_err(|e| e.to_string())?,
            );
        }
        let admin = TlsMode::Mutual {
            ca_cert_pem: ca.cert_pem.clone(),
            identity: tls::issue_admin_cert(&ca, "bench").map_err(|e| e.to_string())?,
        };
        Ok(Cluster {
            nodes: running,
            spec,
            admin,
            dir: dir.to_owned(),
        })
    }

    /// Runs `f` with a client of the cluster on an executor of its own.
    pub fn with_client<T, F, Fut>(&self, f: F) -> Result<T, String>
    where
        T: Send + 'static,
        F: FnOnce(Rc<KvClient>) -> Fut + Send + 'static,
        Fut: std::future::Future<Output = Result<T, String>>,
    {
        with_client(self.spec.clone(), self.admin.clone(), f)
    }

    /// Stops every node and removes the logs; the first node failure, if any.
    pub fn shutdown(self) -> Result<(), String> {
        let failures: Vec<String> = self.nodes.iter().filter_map(Node::failure).collect();
        for node in self.nodes {
            let _ = node.shutdown();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
        if failures.is_empty() {
            Ok(())
        } else {
            Err(failures.join("; "))
        }
    }
}

/// Runs `f` with a client of the cluster `spec` (any nodes: in this process or not) on an
/// executor of its own.
pub fn with_client<T, F, Fut>(spec: ClusterSpec, tls: TlsMode, f: F) -> Result<T, String>
where
    T: Send + 'static,
    F: FnOnce(Rc<KvClient>) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = Result<T, String>>,
{
    spawn_executor("bench-client", CorePlacement::Unbound, move || async move {
        let client = Rc::new(KvClient::new(spec, tls, MTU).map_err(|e| e.to_string())?);
        let result = f(client.clone()).await;
        client.shutdown().await;
        result
    })
    .map_err(|e| e.to_string())?
    .join()
    .map_err(|e| e.to_string())?
}

/// The group the fixtures load and move.
pub const GROUP: GroupId = GroupId(1);

/// Loads `bytes` of `VALUE_BYTES` values, 16 writers at once (into the group, or spread
/// over the groups by the key hash); the bytes stored.
pub async fn load(client: &Rc<KvClient>, bytes: u64) -> Result<u64, String> {
    let values = bytes / VALUE_BYTES as u64;
    let next = Rc::new(std::cell::Cell::new(0u64));
    let mut loaders = Vec::new();
    for _ in 0..16 {
        let (client, next) = (client.clone(), next.clone());
        loaders.push(glommio::spawn_local(async move {
            let value = vec![0x5au8; VALUE_BYTES];
            loop {
                let i = next.get();
                if i >= values {
                    return Ok::<(), String>(());
                }
                next.set(i + 1);
                client
                    .put(format!("load-{i:08}").as_bytes(), &value)
                    .await
                    .map_err(|e| format!("loading: {e}"))?;
            }
        }));
    }
    for l in loaders {
        l.await?;
    }
    Ok(values * VALUE_BYTES as u64)
}

/// The group's replicas in the placement table (Raft id, core).
pub async fn replicas(client: &KvClient) -> Result<Vec<(u64, CoreAddress)>, String> {
    replicas_of(client, GROUP).await
}

/// `group`'s replicas in the placement table (Raft id, core).
pub async fn replicas_of(
    client: &KvClient,
    group: GroupId,
) -> Result<Vec<(u64, CoreAddress)>, String> {
    let (_, groups) = client.routing().await.map_err(|e| e.to_string())?;
    let (_, replicas) = groups
        .into_iter()
        .find(|(g, _)| *g == group)
        .ok_or("no group")?;
    Ok(replicas)
}

/// Moves the group's replica on `from` to core 0 of `to` and waits until the placement
/// table shows it done (polled every millisecond): the move's wall time.
pub async fn move_replica(client: &KvClient, from: NodeId, to: NodeId) -> Result<Duration, String> {
    move_replica_of(client, GROUP, from, to).await
}

/// As `move_replica`, for `group`.
pub async fn move_replica_of(
    client: &KvClient,
    group: GroupId,
    from: NodeId,
    to: NodeId,
) -> Result<Duration, String> {
    let count = replicas_of(client, group).await?.len();
    let started = Instant::now();
    client
        .move_replica(group, from, CoreAddress::new(to, CoreId(0)))
        .await
        .map_err(|e| format!("starting the move of group {}: {e}", group.0))?;
    let deadline = started + Duration::from_secs(600);
    loop {
        let now = replicas_of(client, group).await?;
        if now.len() == count && !now.iter().any(|(_, a)| a.node == from) {
            return Ok(started.elapsed());
        }
        if Instant::now() > deadline {
            return Err("the move did not finish in 600 s".into());
        }
        glommio::timer::sleep(Duration::from_millis(1)).await;
    }
}

/// Two certificates of one CA for a raw QUIC transfer: a server's and a client's.
pub struct QuicPair {
    pub server: TlsMode,
    pub client: TlsMode,
}

impl QuicPair {
    pub fn new() -> Result<QuicPair, String> {
        let ca = tls::generate_ca("bench").map_err(|e| e.to_string())?;
        let node = |id| {
            tls::issue_node_cert(&ca, NodeId(id), &["127.0.0.1".into()]).map_err(|e| e.to_string())
        };
        let mode = |identity| TlsMode::Mutual {
            ca_cert_pem: ca.cert_pem.clone(),
            identity,
        };
        Ok(QuicPair {
            server: mode(node(1)?),
            client: mode(node(2)?),
        })
    }
}

/// Sends `bytes` over one QUIC stream from an executor at `client_cpu` to one at
/// `server_cpu` (loopback, `mtu`-byte datagrams, with or without GSO/GRO): the time from
/// the first byte written to the last byte read.
pub fn quic_bulk(
    certs: &QuicPair,
    bytes: u64,
    mtu: u16,
    offload: bool,
    (server_cpu, client_cpu): (CorePlacement, CorePlacement),
) -> Result<Duration, String> {
    const WRITE_BYTES: usize = 1 << 20;
    let (addr_tx, addr_rx) = mpsc::sync_channel::<SocketAddr>(1);
    let (done_tx, done_rx) = mpsc::sync_channel::<Result<(Instant, u64), String>>(1);
    let (start_tx, start_rx) = mpsc::sync_channel::<Instant>(1);
    let options = |tls: TlsMode, server| EndpointOptions {
        bind: SocketAddr::from(([127, 0, 0, 1], 0)),
        tls,
        segmentation_offload: offload,
        mtu,
        server,
    };
    let server_options = options(certs.server.clone(), true);
    let client_tls = certs.client.clone();
    let client_options = options(client_tls.clone(), false);
    let server = spawn_executor("bulk-server", server_cpu, move || async move {
        let result = async {
            let endpoint = QuicEndpoint::bind(server_options).map_err(|e| e.to_string())?;
            addr_tx
                .send(endpoint.local_addr().map_err(|e| e.to_string())?)
                .map_err(|e| e.to_string())?;
            let conn = endpoint.accept().await.ok_or("no connection")?;
            let mut stream = conn.accept_uni().await.map_err(|e| e.to_string())?;
            let mut received = 0u64;
            while let Some(chunk) = stream
                .read_chunk(usize::MAX)
                .await
                .map_err(|e| e.to_string())?
            {
                received += chunk.len() as u64;
            }
            let end = Instant::now();
            if std::env::var_os("NODEDB_PERF_DEBUG").is_some() {
                eprintln!("server stats: {:?}", endpoint.stats());
            }
            conn.close(0, b"done");
            endpoint.shutdown().await;
            Ok((end, received))
        }
        .await;
        let _ = done_tx.send(result);
    })
    .map_err(|e| e.to_string())?;
    let addr = addr_rx
        .recv_timeout(Duration::from_secs(30))
        .map_err(|e| format!("server did not start: {e}"))?;
    let client = spawn_executor("bulk-client", client_cpu, move || async move {
        let endpoint = QuicEndpoint::bind(client_options).map_err(|e| e.to_string())?;
        let conn = endpoint
            .connect(
                addr,
                &tls::node_server_name(NodeId(1)),
                &client_tls,
                ALPN_PEER,
            )
            .await
            .map_err(|e| e.to_string())?;
        let mut stream = conn.open_uni().await.map_err(|e| e.to_string())?;
        let buf = vec![0x5au8; WRITE_BYTES];
        let _ = start_tx.send(Instant::now());
        let mut sent = 0u64;
        while sent < bytes {
            let n = (bytes - sent).min(WRITE_BYTES as u64) as usize;
            stream
                .write_all(&buf[..n])
                .await
                .map_err(|e| e.to_string())?;
            sent += n as u64;
        }
        stream.finish().map_err(|e| e.to_string())?;
        conn.closed().await;
        if std::env::var_os("NODEDB_PERF_DEBUG").is_some() {
            eprintln!("client stats: {:?}", endpoint.stats());
        }
        endpoint.shutdown().await;
        Ok::<_, String>(())
    })
    .map_err(|e| e.to_string())?;
    let start = start_rx
        .recv_timeout(Duration::from_secs(30))
        .map_err(|e| format!("client did not start: {e}"))?;
    let (end, received) = done_rx
        .recv_timeout(Duration::from_secs(300))
        .map_err(|e| e.to_string())??;
    client.join().map_err(|e| e.to_string())??;
    server.join().map_err(|e| e.to_string())?;
    if received != bytes {
        return Err(format!("received {received} of {bytes} bytes"));
    }
    Ok(end - start)
}
