//! Joining a running cluster: `nodedb-cluster start --config node.toml --join HOST:PORT`.
//!
//! A node that joins is not in the other nodes' `[[nodes]]`; its own file needs only its
//! id, its address (its own `[[nodes]]` entry), a data directory and its certificate, whose
//! node role names the same id. Joining takes three steps, before any core starts:
//!
//! 1. Ask the node at `HOST:PORT` what it knows of the cluster (`KvOp::Cluster`): the nodes
//!    the cluster was bootstrapped with, its cores, groups and replicas, and its members
//!    now. Any node of the cluster will do; its certificate must be a node's of the same
//!    CA, whatever its id.
//! 2. Propose `add_node` for itself to the metadata group. The metadata state machine
//!    refuses an id or address already taken and another core count, with the reason; a
//!    repeated request for the same node, address and cores is accepted (a node that died
//!    between its request and its answer asks again).
//! 3. Record what it learned in the data directory ([`JOINED_FILE`]) and start. From then
//!    on the node starts from that record, with or without `--join`.
//!
//! Once running, its core 0 is a learner of the metadata group; the metadata leader adds
//! it (`ReplicaId::metadata_learner`), and makes the node `Active` once its copy of the
//! metadata log has caught up. The rebalancer then moves its share of replicas and leaders
//! to it.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use thiserror::Error;
use tracing::info;

use crate::cluster::spec::ClusterInfo;
use crate::cluster::topology::{NodeInfo, NodeState};
use crate::runtime::client::{ClientError, KvClient, cluster_info_at};
use crate::runtime::executor::{CorePlacement, spawn_executor};
use crate::runtime::node::NodeConfig;

/// The file in a joined node's data directory that records the cluster it joined.
pub const JOINED_FILE: &str = "joined.json";

/// A join that could not be made or resumed.
#[derive(Debug, Error)]
pub enum JoinError {
    #[error("data directory file {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} is damaged ({message}); refusing to guess which cluster this node joined")]
    Damaged { path: PathBuf, message: String },
    /// The node's configuration does not fit the cluster it asked to join.
    #[error("{0}")]
    Misfit(String),
    #[error("joining through {seed}: {source}")]
    Client {
        seed: SocketAddr,
        source: ClientError,
    },
    #[error("joining: {0}")]
    Runtime(String),
}

/// The cluster the node whose data directory is `data_dir` joined; `None` when it did not
/// join one (it is one of the nodes its cluster was bootstrapped with, or new).
pub fn recorded(data_dir: &Path) -> Result<Option<ClusterInfo>, JoinError> {
    let path = data_dir.join(JOINED_FILE);
    let text = match std::fs::read(&path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => return Err(JoinError::Io { path, source }),
    };
    serde_json::from_slice(&text)
        .map(Some)
        .map_err(|e| JoinError::Damaged {
            path,
            message: e.to_string(),
        })
}

/// The configuration to start `config`'s node with: as it is for a node of the cluster's
/// own `[[nodes]]`; for a node that joined, the cluster it recorded; for a new node with
/// `seed`, the cluster it joins now through `seed` (module documentation).
pub fn prepare(mut config: NodeConfig, seed: Option<SocketAddr>) -> Result<NodeConfig, JoinError> {
    let listen = config.spec.address(config.node, crate::ids::CoreId(0));
    if let Some(info) = recorded(&config.data_dir)? {
        let Some(listen) = listen else {
            return Err(JoinError::Misfit(format!(
                "node {} is not in its own [[nodes]]: its address is needed",
                config.node
            )));
        };
        if seed.is_some() {
            info!(
                node = config.node.0,
                "already joined (its data directory says so); --join is not needed"
            );
        }
        config.spec = info.spec();
        config.joined = Some(listen);
        return Ok(config);
    }
    let Some(seed) = seed else {
        return Ok(config);
    };
    let Some(listen) = listen else {
        return Err(JoinError::Misfit(format!(
            "node_id = {} needs its own [[nodes]] entry (its address) to join",
            config.node
        )));
    };
    let (node, cores, tls, mtu) = (
        config.node,
        config.spec.cores,
        config.tls.clone(),
        config.mtu,
    );
    let joined = spawn_executor("join", CorePlacement::Unbound, move || async move {
        let info = cluster_info_at(seed, &tls, mtu)
            .await
            .map_err(|source| JoinError::Client { seed, source })?;
        check_fit(node, listen, cores, &info)?;
        let client = KvClient::new(info.spec(), tls.clone(), mtu)
            .map_err(|source| JoinError::Client { seed, source })?;
        client.learn_addresses(
            &info
                .nodes
                .iter()
                .filter_map(|n| Some((n.node_id, n.addr.parse().ok()?)))
                .collect::<Vec<_>>(),
        );
        let added = client
            .add_node(NodeInfo {
                node_id: node,
                addr: listen.to_string(),
                cores,
                state: NodeState::Joining,
            })
            .await;
        client.shutdown().await;
        added.map_err(|source| JoinError::Client { seed, source })?;
        Ok::<_, JoinError>(info)
    })
    .map_err(|e| JoinError::Runtime(e.to_string()))?
    .join()
    .map_err(|e| JoinError::Runtime(e.to_string()))??;
    record(&config.data_dir, &joined)?;
    info!(node = config.node.0, %seed, "joined the cluster");
    config.spec = joined.spec();
    config.joined = Some(listen);
    Ok(config)
}

/// Whether node `node`, listening on `listen` with `cores` cores, can join the cluster
/// `info` describes.
fn check_fit(
    node: crate::ids::NodeId,
    listen: SocketAddr,
    cores: u16,
    info: &ClusterInfo,
) -> Result<(), JoinError> {
    if info.founders.iter().any(|(n, _)| *n == node) {
        return Err(JoinError::Misfit(format!(
            "node {node} is one of the nodes the cluster was bootstrapped with: start it \
             without --join (with the cluster's [[nodes]])"
        )));
    }
    if info.nodes.is_empty() {
        return Err(JoinError::Misfit(
            "the cluster is not bootstrapped yet: start its first nodes, then join".into(),
        ));
    }
    if cores != info.cores {
        return Err(JoinError::Misfit(format!(
            "this node has cores = {cores}, but the cluster's nodes run {}: every node runs \
             the same number of cores",
            info.cores
        )));
    }
    if let Some(other) = info
        .nodes
        .iter()
        .find(|n| n.node_id != node && n.addr == listen.to_string())
    {
        return Err(JoinError::Misfit(format!(
            "address {listen} is already node {}'s",
            other.node_id
        )));
    }
    Ok(())
}

/// Writes `info` to `data_dir`'s [`JOINED_FILE`] durably (a temporary file, synced, then
/// renamed over it, and the directory synced).
fn record(data_dir: &Path, info: &ClusterInfo) -> Result<(), JoinError> {
    use std::io::Write;
    let path = data_dir.join(JOINED_FILE);
    let io = |source| JoinError::Io {
        path: path.clone(),
        source,
    };
    std::fs::create_dir_all(data_dir).map_err(io)?;
    let tmp = data_dir.join(format!("{JOINED_FILE}.tmp"));
    let text = serde_json::to_vec_pretty(info)
        .map_err(|e| JoinError::Runtime(format!("encoding {JOINED_FILE}: {e}")))?;
    let mut file = std::fs::File::create(&tmp).map_err(io)?;
    file.write_all(&text).map_err(io)?;
    file.sync_all().map_err(io)?;
    std::fs::rename(&tmp, &path).map_err(io)?;
    std::fs::File::open(data_dir)
        .and_then(|d| d.sync_all())
        .map_err(io)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::NodeId;

    fn info() -> ClusterInfo {
        ClusterInfo {
            founders: vec![(NodeId(1), "127.0.0.1:7100".parse().unwrap())],
            cores: 2,
            groups: 8,
            replicas: 1,
            nodes: vec![NodeInfo {
                node_id: NodeId(1),
                addr: "127.0.0.1:7100".into(),
                cores: 2,
                state: NodeState::Active,
            }],
        }
    }

    #[test]
    fn a_node_that_does_not_fit_the_cluster_is_told_why() {
        let at = |p: u16| SocketAddr::from(([127, 0, 0, 1], p));
        assert!(check_fit(NodeId(5), at(7500), 2, &info()).is_ok());
        let founder = check_fit(NodeId(1), at(7500), 2, &info()).unwrap_err();
        assert!(founder.to_string().contains("without --join"), "{founder}");
        let cores = check_fit(NodeId(5), at(7500), 4, &info()).unwrap_err();
        assert!(cores.to_string().contains("cores = 4"), "{cores}");
        let taken = check_fit(NodeId(5), at(7100), 2, &info()).unwrap_err();
        assert!(taken.to_string().contains("already node n1's"), "{taken}");
        let mut empty = info();
        empty.nodes.clear();
        let early = check_fit(NodeId(5), at(7500), 2, &empty).unwrap_err();
        assert!(early.to_string().contains("not bootstrapped"), "{early}");
    }

    #[test]
    fn the_record_survives_a_round_trip_and_damage_is_refused() {
        let dir = std::env::temp_dir().join(format!("nodedb-join-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        assert!(recorded(&dir).unwrap().is_none());
        record(&dir, &info()).unwrap();
        assert_eq!(recorded(&dir).unwrap(), Some(info()));
        std::fs::write(dir.join(JOINED_FILE), b"{ not json").unwrap();
        assert!(matches!(recorded(&dir), Err(JoinError::Damaged { .. })));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
