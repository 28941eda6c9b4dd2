//! A node's data directory: one process at a time (a `flock` on `LOCK`), private to its
//! owner (0700, files 0600 through the process umask), and the identity it was created
//! for (`IDENTITY`), which a later configuration may not contradict.
//!
//! The identity records what the data on disk depends on: the cluster (its id, derived
//! from the CA), this node's id, its cores (each core's log holds that core's replicas),
//! the groups count (the key → group hash), the replicas per group and the ids of the
//! nodes the cluster started with (they make up the metadata group's initial voters). A
//! configuration that says otherwise is refused at start, naming both values: a node's
//! shape does not change by editing a file; membership changes by join and decommission.
//! Node addresses are not recorded: a node may move to another address.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};

use thiserror::Error;

use crate::cluster::spec::ClusterSpec;
use crate::ids::NodeId;

/// The name of the identity file in a data directory.
pub const IDENTITY_FILE: &str = "IDENTITY";
/// The name of the lock file in a data directory.
pub const LOCK_FILE: &str = "LOCK";

/// What a data directory was created for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Identity {
    pub cluster: u64,
    pub node: NodeId,
    pub cores: u16,
    pub groups: u32,
    pub replicas: u16,
    /// The ids of the nodes the cluster started with, ascending.
    pub nodes: Vec<u64>,
}

impl Identity {
    /// The identity a node of `spec` in cluster `cluster` has.
    pub fn of(cluster: u64, node: NodeId, spec: &ClusterSpec) -> Identity {
        let mut nodes: Vec<u64> = spec.nodes.iter().map(|(id, _)| id.0).collect();
        nodes.sort_unstable();
        Identity {
            cluster,
            node,
            cores: spec.cores,
            groups: spec.groups,
            replicas: spec.replicas,
            nodes,
        }
    }

    fn encode(&self) -> String {
        let nodes: Vec<String> = self.nodes.iter().map(u64::to_string).collect();
        format!(
            "# nodedb-cluster data directory identity: written once, checked at every start.\n\
             # Do not edit. A node's shape changes only by decommissioning it and joining anew.\n\
             cluster_id = \"{:016x}\"\nnode_id = {}\ncores = {}\ngroups = {}\nreplicas = {}\nnodes = [{}]\n",
            self.cluster,
            self.node.0,
            self.cores,
            self.groups,
            self.replicas,
            nodes.join(", ")
        )
    }

    fn decode(text: &str) -> Result<Identity, String> {
        #[derive(serde::Deserialize)]
        #[serde(deny_unknown_fields)]
        struct File {
            cluster_id: String,
            node_id: u64,
            cores: u16,
            groups: u32,
            replicas: u16,
            nodes: Vec<u64>,
        }
        let f: File = toml::from_str(text).map_err(|e| e.to_string())?;
        let cluster = u64::from_str_radix(&f.cluster_id, 16)
            .map_err(|e| format!("cluster_id {:?}: {e}", f.cluster_id))?;
        Ok(Identity {
            cluster,
            node: NodeId(f.node_id),
            cores: f.cores,
            groups: f.groups,
            replicas: f.replicas,
            nodes: f.nodes,
        })
    }

    /// The first field in which `configured` differs from `self`: (name, recorded,
    /// configured).
    fn difference(&self, configured: &Identity) -> Option<(&'static str, String, String)> {
        let fields: [(&'static str, String, String); 6] = [
            (
                "cluster (the CA's id)",
                format!("{:016x}", self.cluster),
                format!("{:016x}", configured.cluster),
            ),
            (
                "node_id",
                self.node.0.to_string(),
                configured.node.0.to_string(),
            ),
            (
                "[[nodes]] ids",
                format!("{:?}", self.nodes),
                format!("{:?}", configured.nodes),
            ),
            (
                "cores",
                self.cores.to_string(),
                configured.cores.to_string(),
            ),
            (
                "groups",
                self.groups.to_string(),
                configured.groups.to_string(),
            ),
            (
                "replicas",
                self.replicas.to_string(),
                configured.replicas.to_string(),
            ),
        ];
        fields.into_iter().find(|(_, a, b)| a != b)
    }
}

/// Why a data directory cannot be used.
#[derive(Debug, Error)]
pub enum DataDirError {
    #[error("data directory {path}: {operation}: {source}")]
    Io {
        path: PathBuf,
        operation: &'static str,
        source: std::io::Error,
    },
    /// Another process holds the directory's lock.
    #[error(
        "data directory {path} is in use by another process (it holds {LOCK_FILE}); one node per data directory"
    )]
    Locked { path: PathBuf },
    /// The configuration contradicts what the directory was created for.
    #[error(
        "data directory {path} belongs to a node with {field} = {recorded}, but the configuration says {configured}. \
         Restore the original configuration; a node's shape and the cluster's membership change only by \
         decommissioning the node and joining a new one (with an empty data directory)"
    )]
    Mismatch {
        path: PathBuf,
        field: &'static str,
        recorded: String,
        configured: String,
    },
    /// The identity file does not parse.
    #[error("data directory {path}: {IDENTITY_FILE} is damaged ({message}); refusing to guess")]
    Damaged { path: PathBuf, message: String },
    /// Logs without an identity: not a directory this version created, nor an empty one.
    #[error(
        "data directory {path} holds write-ahead logs but no {IDENTITY_FILE}; refusing to adopt it"
    )]
    Unclaimed { path: PathBuf },
}

/// An open, locked data directory; the lock is held until this is dropped.
#[derive(Debug)]
pub struct DataDir {
    path: PathBuf,
    _lock: File,
}

impl DataDir {
    /// Creates (0700) or opens `path`, takes its lock, and checks or records `identity`.
    pub fn open(path: &Path, identity: &Identity) -> Result<DataDir, DataDirError> {
        let io = |operation: &'static str| {
            let path = path.to_owned();
            move |source| DataDirError::Io {
                path,
                operation,
                source,
            }
        };
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(path)
            .map_err(io("create"))?;
        // A directory made by hand (or by an older version) is made private too.
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o700))
            .map_err(io("set permissions"))?;
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(0o600)
            .open(path.join(LOCK_FILE))
            .map_err(io("open lock"))?;
        // SAFETY: flock on a descriptor this function owns.
        if unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
            let e = std::io::Error::last_os_error();
            return Err(if e.raw_os_error() == Some(libc::EWOULDBLOCK) {
                DataDirError::Locked {
                    path: path.to_owned(),
                }
            } else {
                io("lock")(e)
            });
        }
        let file = path.join(IDENTITY_FILE);
        match std::fs::read_to_string(&file) {
            Ok(text) => {
                let recorded =
                    Identity::decode(&text).map_err(|message| DataDirError::Damaged {
                        path: path.to_owned(),
                        message,
                    })?;
                if let Some((field, recorded, configured)) = recorded.difference(identity) {
                    return Err(DataDirError::Mismatch {
                        path: path.to_owned(),
                        field,
                        recorded,
                        configured,
                    });
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let has_logs = std::fs::read_dir(path)
                    .map_err(io("list"))?
                    .filter_map(Result::ok)
                    .any(|e| e.file_name().to_string_lossy().ends_with(".wal"));
                if has_logs {
                    return Err(DataDirError::Unclaimed {
                        path: path.to_owned(),
                    });
                }
                write_durably(path, &file, identity.encode().as_bytes())
                    .map_err(io("write identity"))?;
            }
            Err(e) => return Err(io("read identity")(e)),
        }
        Ok(DataDir {
            path: path.to_owned(),
            _lock: lock,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// Writes `file` in `dir` so that a crash leaves either nothing or all of it: a temporary
/// file, synced, renamed into place, and the directory synced.
fn write_durably(dir: &Path, file: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let tmp = file.with_extension("tmp");
    let mut f = OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .mode(0o600)
        .open(&tmp)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    std::fs::rename(&tmp, file)?;
    File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::SocketAddr;

    fn spec(nodes: &[u64], groups: u32) -> ClusterSpec {
        ClusterSpec {
            nodes: nodes
                .iter()
                .map(|n| (NodeId(*n), SocketAddr::from(([127, 0, 0, 1], 7000))))
                .collect(),
            cores: 2,
            groups,
            replicas: 3,
        }
    }

    #[test]
    fn an_identity_reads_back_as_written() {
        let id = Identity::of(0xdead_beef, NodeId(2), &spec(&[3, 1, 2], 8));
        assert_eq!(Identity::decode(&id.encode()), Ok(id));
    }

    #[test]
    fn a_changed_shape_is_named_with_both_values() {
        let dir = std::env::temp_dir().join(format!("datadir-unit-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let first = Identity::of(7, NodeId(1), &spec(&[1, 2, 3], 8));
        drop(DataDir::open(&dir, &first).unwrap());
        let mode = std::fs::metadata(&dir).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o700);
        let held = DataDir::open(&dir, &first).unwrap();
        assert!(matches!(
            DataDir::open(&dir, &first),
            Err(DataDirError::Locked { .. })
        ));
        drop(held);
        let alone = Identity::of(7, NodeId(1), &spec(&[1], 8));
        let e = DataDir::open(&dir, &alone).unwrap_err().to_string();
        assert!(
            e.contains("[[nodes]] ids = [1, 2, 3]") && e.contains("says [1]"),
            "{e}"
        );
        let fewer = Identity::of(7, NodeId(1), &spec(&[1, 2, 3], 4));
        let e = DataDir::open(&dir, &fewer).unwrap_err().to_string();
        assert!(e.contains("groups = 8") && e.contains("says 4"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
