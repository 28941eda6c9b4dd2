//! The node and client configuration file (TOML), checked strictly.
//!
//! ```toml
//! node_id = 1                    # this node (omit in a client-only file)
//! data_dir = "/var/lib/nodedb"   # write-ahead logs (omit in a client-only file)
//! cores = 2                      # executors per node, the same on every node
//! groups = 8                     # vShard groups, a power of two, the same everywhere
//! replicas = 3                   # replicas per group (default 3, or every node if fewer)
//! layout = "pinned"              # or "unbound" (several nodes on one machine)
//! first_cpu = 0                  # with "pinned": core i runs on CPU first_cpu + i
//! mtu = 1452                     # QUIC datagram size
//! # snapshot_rate_bytes_per_sec = 104857600 # per core (default 100 MiB/s), or "unlimited"
//! # metrics_addr = "127.0.0.1:9100"         # Prometheus `GET /metrics`; omit for none
//! # rebalance = true             # the load-based rebalancer (default on)
//! # rebalance_interval_secs = 30 # its sweep period
//! # max_moves_per_node = 2       # replica moves touching one node at once
//! # max_moves_in_flight = 8      # moves of either kind under way in the cluster
//! # dead_after_secs = 300        # a node dead this long is marked Down and its replicas
//!                                # are replaced elsewhere
//! # quiesce = true               # idle groups stop ticking and heartbeating (default on)
//!
//! [tls]                          # mutual TLS with the cluster CA (see `certs`)
//! ca_cert = "certs/ca.pem"
//! cert = "certs/node-1.pem"
//! key = "certs/node-1.key"
//! # insecure = true              # development only: encrypted, nobody authenticated
//!
//! [[nodes]]                      # every node: id and IP + base port (core i: base + i)
//! id = 1
//! addr = "127.0.0.1:7100"
//! ```
//!
//! A node that joins a running cluster (`start --join HOST:PORT`, see `runtime::join`)
//! lists only itself in `[[nodes]]`: its id and address. Its `cores` must be the
//! cluster's; `groups` and `replicas` are learned from the cluster (leave `replicas` out:
//! with one node listed, more than one is refused), and the rebalancer settings,
//! `dead_after_secs` and the rest are its own.
//!
//! Unknown fields, a missing section or an invalid value are errors that name the field;
//! nothing is silently defaulted except the documented defaults.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use thiserror::Error;

use crate::constants::{CORES_PER_NODE_MAX, SNAPSHOT_RATE_BYTES_PER_SEC};
use crate::ids::NodeId;
use crate::node::BalanceConfig;
use crate::runtime::cores::CoreLayout;
use crate::runtime::node::{ClusterSpec, NodeConfig};
use crate::runtime::tls::{self, TlsMode};

/// A configuration that cannot be used.
#[derive(Debug, Error)]
pub enum ConfigError {
    #[error("{path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    /// Syntax errors and unknown or mistyped fields, with their position.
    #[error("{path}: {message}")]
    Parse { path: PathBuf, message: String },
    /// A value out of range, or a required field missing for this use.
    #[error("{path}: {message}")]
    Invalid { path: PathBuf, message: String },
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TlsSection {
    ca_cert: Option<PathBuf>,
    cert: Option<PathBuf>,
    key: Option<PathBuf>,
    #[serde(default)]
    insecure: bool,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct NodeEntry {
    id: u64,
    addr: SocketAddr,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "lowercase")]
enum LayoutName {
    Pinned,
    Unbound,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ConfigFile {
    node_id: Option<u64>,
    data_dir: Option<PathBuf>,
    #[serde(default = "default_cores")]
    cores: u16,
    #[serde(default = "default_groups")]
    groups: u32,
    /// Replicas per group; defaults to three, or every node in a smaller cluster.
    replicas: Option<u16>,
    layout: Option<LayoutName>,
    #[serde(default)]
    first_cpu: usize,
    #[serde(default = "default_mtu")]
    mtu: u16,
    snapshot_rate_bytes_per_sec: Option<RateSetting>,
    metrics_addr: Option<SocketAddr>,
    #[serde(default = "default_true")]
    rebalance: bool,
    rebalance_interval_secs: Option<u64>,
    max_moves_per_node: Option<usize>,
    max_moves_in_flight: Option<usize>,
    dead_after_secs: Option<u64>,
    #[serde(default = "default_true")]
    quiesce: bool,
    tls: TlsSection,
    nodes: Vec<NodeEntry>,
}

fn default_true() -> bool {
    true
}

/// A rate in bytes per second, or the word `"unlimited"`.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum RateSetting {
    Bytes(u64),
    Word(String),
}

fn default_cores() -> u16 {
    1
}

fn default_groups() -> u32 {
    8
}

/// Replicas per group unless the file says otherwise (fewer in a smaller cluster).
pub const DEFAULT_REPLICAS: u16 = 3;

/// The QUIC datagram size when a file does not set `mtu`.
pub const DEFAULT_MTU: u16 = 1452;

fn default_mtu() -> u16 {
    DEFAULT_MTU
}

/// Mutual TLS from three PEM files: the cluster's CA, and a certificate with its key (what
/// a `[tls]` section names, and what `kv --ca/--cert/--key` take).
pub fn mutual_tls(ca: &Path, cert: &Path, key: &Path) -> Result<TlsMode, String> {
    let ca_cert_pem =
        std::fs::read_to_string(ca).map_err(|e| format!("ca_cert {}: {e}", ca.display()))?;
    let identity = tls::read_pem_pair(cert, key).map_err(|e| e.to_string())?;
    Ok(TlsMode::Mutual {
        ca_cert_pem,
        identity,
    })
}

/// A parsed, validated configuration.
#[derive(Clone)]
pub struct LoadedConfig {
    pub spec: ClusterSpec,
    pub tls: TlsMode,
    pub node: Option<NodeId>,
    pub data_dir: Option<PathBuf>,
    pub layout: CoreLayout,
    pub mtu: u16,
    /// Snapshot send rate per core in bytes per second; `None` is unlimited.
    pub snapshot_rate: Option<u64>,
    /// Where the node serves Prometheus metrics; `None` serves none.
    pub metrics_addr: Option<SocketAddr>,
    pub balance: BalanceConfig,
    /// Idle groups quiesce (`quiesce`, default on).
    pub quiesce: bool,
}

impl LoadedConfig {
    /// Reads and checks `path`. Relative certificate paths are relative to the file.
    pub fn load(path: &Path) -> Result<LoadedConfig, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        LoadedConfig::parse(path, &text)
    }

    /// Parses and checks configuration text (`path` names it in errors and anchors
    /// relative paths).
    pub fn parse(path: &Path, text: &str) -> Result<LoadedConfig, ConfigError> {
        let invalid = |message: String| ConfigError::Invalid {
            path: path.to_owned(),
            message,
        };
        let file: ConfigFile = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: path.to_owned(),
            message: e.to_string(),
        })?;
        if file.cores == 0 || file.cores > CORES_PER_NODE_MAX {
            return Err(invalid(format!(
                "cores = {} is outside 1..={CORES_PER_NODE_MAX}",
                file.cores
            )));
        }
        if !file.groups.is_power_of_two() || file.groups > crate::constants::NODE_GROUPS_MAX {
            return Err(invalid(format!(
                "groups = {} must be a power of two up to 65536",
                file.groups
            )));
        }
        if !(1200..=65_527).contains(&file.mtu) {
            return Err(invalid(format!(
                "mtu = {} is outside 1200..=65527",
                file.mtu
            )));
        }
        let snapshot_rate = match &file.snapshot_rate_bytes_per_sec {
            None => SNAPSHOT_RATE_BYTES_PER_SEC,
            Some(RateSetting::Bytes(0)) => {
                return Err(invalid(
                    "snapshot_rate_bytes_per_sec = 0 would stop every snapshot; \
                     write \"unlimited\" for no limit"
                        .into(),
                ));
            }
            Some(RateSetting::Bytes(rate)) => Some(*rate),
            Some(RateSetting::Word(w)) if w == "unlimited" => None,
            Some(RateSetting::Word(w)) => {
                return Err(invalid(format!(
                    "snapshot_rate_bytes_per_sec = {w:?}: expected bytes per second or \
                     \"unlimited\""
                )));
            }
        };
        let mut balance = BalanceConfig {
            enabled: file.rebalance,
            ..BalanceConfig::default()
        };
        if let Some(secs) = file.rebalance_interval_secs {
            if !(1..=86_400).contains(&secs) {
                return Err(invalid(format!(
                    "rebalance_interval_secs = {secs} is outside 1..=86400"
                )));
            }
            balance.interval = std::time::Duration::from_secs(secs);
        }
        if let Some(secs) = file.dead_after_secs {
            if !(1..=604_800).contains(&secs) {
                return Err(invalid(format!(
                    "dead_after_secs = {secs} is outside 1..=604800"
                )));
            }
            balance.dead_after = std::time::Duration::from_secs(secs);
        }
        for (name, value, slot) in [
            (
                "max_moves_per_node",
                file.max_moves_per_node,
                &mut balance.max_moves_per_node,
            ),
            (
                "max_moves_in_flight",
                file.max_moves_in_flight,
                &mut balance.max_moves_in_flight,
            ),
        ] {
            if let Some(v) = value {
                if !(1..=1024).contains(&v) {
                    return Err(invalid(format!("{name} = {v} is outside 1..=1024")));
                }
                *slot = v;
            }
        }
        if file.nodes.is_empty() {
            return Err(invalid("[[nodes]] lists no node".into()));
        }
        let replicas = file
            .replicas
            .unwrap_or(DEFAULT_REPLICAS.min(file.nodes.len() as u16));
        if replicas == 0 || usize::from(replicas) > file.nodes.len() {
            return Err(invalid(format!(
                "replicas = {replicas} must be between 1 and the {} nodes listed{}",
                file.nodes.len(),
                if file.nodes.len() == 1 {
                    " (a node that joins with --join lists only itself: leave replicas out)"
                } else {
                    ""
                }
            )));
        }
        let mut ids: Vec<u64> = file.nodes.iter().map(|n| n.id).collect();
        ids.sort_unstable();
        if ids.windows(2).any(|w| w[0] == w[1])
            || ids.contains(&0)
            || ids.iter().any(|id| *id > NodeId::MAX)
        {
            return Err(invalid(format!(
                "[[nodes]] ids must be distinct and within 1..={}",
                NodeId::MAX
            )));
        }
        for n in &file.nodes {
            if u32::from(n.addr.port()) + u32::from(file.cores) > u32::from(u16::MAX) {
                return Err(invalid(format!(
                    "node {}: base port {} leaves no room for {} cores",
                    n.id,
                    n.addr.port(),
                    file.cores
                )));
            }
        }
        if let Some(id) = file.node_id
            && !ids.contains(&id)
        {
            return Err(invalid(format!(
                "node_id = {id} is not listed in [[nodes]]"
            )));
        }
        let base = path.parent().unwrap_or(Path::new("."));
        let resolve = |p: &Path| {
            if p.is_absolute() {
                p.to_owned()
            } else {
                base.join(p)
            }
        };
        let tls = if file.tls.insecure {
            if file.tls.ca_cert.is_some() || file.tls.cert.is_some() {
                return Err(invalid(
                    "[tls] insecure = true cannot be combined with certificates".into(),
                ));
            }
            TlsMode::Insecure
        } else {
            let need = |field: &Option<PathBuf>, name: &str| {
                field.as_deref().map(resolve).ok_or_else(|| {
                    invalid(format!("[tls] {name} is required (or insecure = true)"))
                })
            };
            let (ca, cert, key) = (
                need(&file.tls.ca_cert, "ca_cert")?,
                need(&file.tls.cert, "cert")?,
                need(&file.tls.key, "key")?,
            );
            mutual_tls(&ca, &cert, &key).map_err(|e| invalid(format!("[tls] {e}")))?
        };
        let layout = match file.layout.unwrap_or(LayoutName::Pinned) {
            LayoutName::Pinned => CoreLayout::Pinned {
                first_cpu: file.first_cpu,
            },
            LayoutName::Unbound => CoreLayout::Unbound,
        };
        Ok(LoadedConfig {
            spec: ClusterSpec {
                nodes: file.nodes.iter().map(|n| (NodeId(n.id), n.addr)).collect(),
                cores: file.cores,
                groups: file.groups,
                replicas,
            },
            tls,
            node: file.node_id.map(NodeId),
            data_dir: file.data_dir.map(|d| resolve(&d)),
            layout,
            mtu: file.mtu,
            snapshot_rate,
            metrics_addr: file.metrics_addr,
            balance,
            quiesce: file.quiesce,
        })
    }

    /// The node configuration, when the file describes a node.
    pub fn node_config(&self, path: &Path) -> Result<NodeConfig, ConfigError> {
        let invalid = |message: &str| ConfigError::Invalid {
            path: path.to_owned(),
            message: message.into(),
        };
        Ok(NodeConfig {
            joined: None,
            node: self
                .node
                .ok_or_else(|| invalid("node_id is required to start a node"))?,
            spec: self.spec.clone(),
            data_dir: self
                .data_dir
                .clone()
                .ok_or_else(|| invalid("data_dir is required to start a node"))?,
            tls: self.tls.clone(),
            layout: self.layout,
            mtu: self.mtu,
            snapshot_rate: self.snapshot_rate,
            metrics_addr: self.metrics_addr,
            balance: self.balance,
            quiesce: self.quiesce,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
node_id = 2
data_dir = "data"
cores = 2
groups = 8
layout = "unbound"

[tls]
insecure = true

[[nodes]]
id = 1
addr = "127.0.0.1:7100"

[[nodes]]
id = 2
addr = "127.0.0.1:7200"
"#;

    fn parse(text: &str) -> Result<LoadedConfig, ConfigError> {
        LoadedConfig::parse(Path::new("/etc/nodedb/node.toml"), text)
    }

    #[test]
    fn a_valid_file_parses_with_relative_paths_anchored_at_the_file() {
        let c = parse(GOOD).unwrap();
        assert_eq!(c.node, Some(NodeId(2)));
        assert_eq!(c.data_dir.as_deref(), Some(Path::new("/etc/nodedb/data")));
        assert_eq!(c.spec.cores, 2);
        assert_eq!(
            usize::from(c.spec.replicas),
            c.spec.nodes.len().min(3),
            "three replicas, or every node if fewer"
        );
        assert!(c.tls.is_insecure());
        assert!(c.node_config(Path::new("x")).is_ok());
        assert_eq!(
            c.snapshot_rate,
            Some(100 << 20),
            "snapshots go at 100 MiB/s per core by default"
        );
        assert_eq!(c.metrics_addr, None, "no metrics endpoint unless asked");
        let with =
            parse(&GOOD.replace("cores = 2", "cores = 2\nmetrics_addr = \"127.0.0.1:9100\""))
                .unwrap();
        assert_eq!(with.metrics_addr, Some("127.0.0.1:9100".parse().unwrap()));
    }

    #[test]
    fn the_rebalancer_settings_reach_the_node_and_out_of_range_ones_are_refused() {
        let c = parse(GOOD).unwrap().node_config(Path::new("x")).unwrap();
        assert_eq!(c.balance, BalanceConfig::default(), "on, with the defaults");
        let text = GOOD.replace(
            "cores = 2",
            "cores = 2\nrebalance = false\nrebalance_interval_secs = 7\nmax_moves_per_node = 1\nmax_moves_in_flight = 3\ndead_after_secs = 4",
        );
        let b = parse(&text).unwrap().balance;
        assert!(!b.enabled);
        assert_eq!(b.interval, std::time::Duration::from_secs(7));
        assert_eq!((b.max_moves_per_node, b.max_moves_in_flight), (1, 3));
        assert_eq!(b.dead_after, std::time::Duration::from_secs(4));
        for (line, field) in [
            ("rebalance_interval_secs = 0", "rebalance_interval_secs"),
            ("max_moves_per_node = 0", "max_moves_per_node"),
            ("max_moves_in_flight = 5000", "max_moves_in_flight"),
            ("dead_after_secs = 0", "dead_after_secs"),
        ] {
            let err = parse(&GOOD.replace("cores = 2", &format!("cores = 2\n{line}")))
                .err()
                .expect("refused")
                .to_string();
            assert!(err.contains(field), "{err}");
        }
    }

    #[test]
    fn the_snapshot_rate_reaches_the_node_unlimited_is_a_word_and_zero_is_refused() {
        let text = GOOD.replace(
            "cores = 2",
            "cores = 2\nsnapshot_rate_bytes_per_sec = 1048576",
        );
        let c = parse(&text).unwrap();
        assert_eq!(
            c.node_config(Path::new("x")).unwrap().snapshot_rate,
            Some(1 << 20)
        );
        let err = parse(&GOOD.replace("cores = 2", "cores = 2\nsnapshot_rate_bytes_per_sec = 0"))
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("snapshot_rate_bytes_per_sec"), "{err}");
        assert!(err.contains("unlimited"), "{err}");
        let unlimited = GOOD.replace(
            "cores = 2",
            "cores = 2\nsnapshot_rate_bytes_per_sec = \"unlimited\"",
        );
        assert_eq!(parse(&unlimited).unwrap().snapshot_rate, None);
        let err = parse(&GOOD.replace(
            "cores = 2",
            "cores = 2\nsnapshot_rate_bytes_per_sec = \"fast\"",
        ))
        .err()
        .unwrap()
        .to_string();
        assert!(
            err.contains("\"fast\"") && err.contains("unlimited"),
            "{err}"
        );
        let err = parse(&GOOD.replace("cores = 2", "cores = 2\nsnapshot_rate_bytes_per_sec = -5"))
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("snapshot_rate_bytes_per_sec"), "{err}");
    }

    #[test]
    fn unknown_fields_and_bad_values_are_named() {
        let err = parse(&GOOD.replace("cores = 2", "cores = 2\ncoress = 3"))
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("coress"), "{err}");
        let err = parse(&GOOD.replace("groups = 8", "groups = 6"))
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("power of two"), "{err}");
        let err = parse(&GOOD.replace("groups = 8", "groups = 8\nreplicas = 0"))
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("replicas = 0"), "{err}");
        let err = parse(&GOOD.replace("node_id = 2", "node_id = 9"))
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("not listed"), "{err}");
        let err = parse(&GOOD.replace("insecure = true", ""))
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("ca_cert is required"), "{err}");
        let err = parse(&GOOD.replace("\"127.0.0.1:7200\"", "\"nowhere\""))
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("addr") || err.contains("invalid"), "{err}");
        let err = parse("cores = [").err().unwrap().to_string();
        assert!(err.contains("node.toml"), "{err}");
    }
}
