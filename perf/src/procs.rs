//! Clusters of separate node processes, started from the built `nodedb-cluster` binary with
//! files the tool writes, as an operator would: a CA, node certificates, a client's and an
//! admin's certificate, one TOML file per node (`layout = "unbound"`, rebalancer off, mTLS),
//! each node's log in `node-N.log`. Used where a figure should come from the shape people
//! deploy: memory per process, nodes killed and paused.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use nodedb_cluster::ids::NodeId;
use nodedb_cluster::runtime::demo::free_base_port;
use nodedb_cluster::runtime::node::ClusterSpec;
use nodedb_cluster::runtime::tls::{self, CertifiedKeyPem, TlsMode};

/// The `nodedb-cluster` binary next to this one (both in `target/release`), if it is there.
pub fn default_binary() -> PathBuf {
    std::env::current_exe()
        .ok()
        .and_then(|p| p.parent().map(|d| d.join("nodedb-cluster")))
        .unwrap_or_else(|| PathBuf::from("target/release/nodedb-cluster"))
}

/// The shape of a cluster to start.
pub struct Shape {
    pub nodes: u64,
    pub cores: u16,
    pub groups: u32,
    /// Lines added to every node file (`snapshot_rate_bytes_per_sec = …`).
    pub extra: String,
    /// Serve Prometheus metrics from every node (`metrics_addr`, a free port each).
    pub metrics: bool,
}

/// Node processes of one cluster; killed when dropped.
pub struct Processes {
    pub dir: PathBuf,
    pub spec: ClusterSpec,
    binary: PathBuf,
    /// Node `n` is `nodes[n - 1]`.
    pub nodes: Vec<Child>,
    /// Where node `n` serves metrics, if asked.
    pub metrics: Vec<Option<SocketAddr>>,
}

impl Processes {
    /// Writes the files under `dir` (emptied first) and starts every node.
    pub fn start(binary: &Path, dir: &Path, shape: &Shape) -> Result<Processes, String> {
        if !binary.is_file() {
            return Err(format!(
                "{} not found: build it first (`cargo build --release`) or pass --binary",
                binary.display()
            ));
        }
        let _ = std::fs::remove_dir_all(dir);
        std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        let (spec, metrics) = write_cluster(dir, shape)?;
        let mut p = Processes {
            dir: dir.to_owned(),
            spec,
            binary: binary.to_owned(),
            nodes: Vec::new(),
            metrics,
        };
        for n in 1..=shape.nodes {
            let child = p.spawn(n)?;
            p.nodes.push(child);
        }
        Ok(p)
    }

    /// The client's certificate (`admin`: the operator's, which may move replicas).
    pub fn client_tls(&self, admin: bool) -> Result<TlsMode, String> {
        let name = if admin { "admin" } else { "client" };
        Ok(TlsMode::Mutual {
            ca_cert_pem: read(&self.dir.join("ca.pem"))?,
            identity: CertifiedKeyPem {
                cert_pem: read(&self.dir.join(format!("{name}.pem")))?,
                key_pem: read(&self.dir.join(format!("{name}.key")))?,
            },
        })
    }

    /// Node `n`'s process id.
    pub fn pid(&self, n: u64) -> u32 {
        self.nodes[(n - 1) as usize].id()
    }

    /// Kills node `n` (SIGKILL) and waits for it.
    pub fn kill(&mut self, n: u64) {
        let child = &mut self.nodes[(n - 1) as usize];
        let _ = child.kill();
        let _ = child.wait();
    }

    /// Starts node `n` again from its files.
    pub fn restart(&mut self, n: u64) -> Result<(), String> {
        self.kill(n);
        let child = self.spawn(n)?;
        self.nodes[(n - 1) as usize] = child;
        Ok(())
    }

    /// Sends `sig` to node `n`.
    pub fn signal(&self, n: u64, sig: libc::c_int) {
        if let Ok(pid) = libc::pid_t::try_from(self.pid(n)) {
            // SAFETY: `kill` has no memory effects; the pid is our own child's.
            unsafe {
                libc::kill(pid, sig);
            }
        }
    }

    /// Stops every node; removes the files when `clean`.
    pub fn stop(mut self, clean: bool) {
        self.stop_all();
        if clean {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }

    fn stop_all(&mut self) {
        for n in 1..=self.nodes.len() as u64 {
            // A paused node must run again to die promptly.
            self.signal(n, libc::SIGCONT);
            self.kill(n);
        }
    }

    fn spawn(&self, n: u64) -> Result<Child, String> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join(format!("node-{n}.log")))
            .map_err(|e| e.to_string())?;
        let err = log.try_clone().map_err(|e| e.to_string())?;
        let mut command = Command::new(&self.binary);
        // A node dies with the thread that started it (this process's main thread: every
        // start and restart is made there), so a benchmark stopped by a signal leaves no
        // node running; `Drop` only runs on a normal exit.
        // SAFETY: `prctl` is async-signal-safe, and the closure touches nothing else.
        unsafe {
            use std::os::unix::process::CommandExt;
            command.pre_exec(|| {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        command
            .current_dir(&self.dir)
            .args(["start", "--config", &format!("node-{n}.toml")])
            .stdout(Stdio::from(log))
            .stderr(Stdio::from(err))
            .spawn()
            .map_err(|e| format!("starting {}: {e}", self.binary.display()))
    }
}

impl Drop for Processes {
    fn drop(&mut self) {
        self.stop_all();
    }
}

/// Resident memory of process `pid`, bytes (`/proc/PID/statm`; 0 where unreadable).
pub fn rss_bytes(pid: u32) -> u64 {
    let pages = std::fs::read_to_string(format!("/proc/{pid}/statm"))
        .ok()
        .and_then(|s| s.split_whitespace().nth(1)?.parse::<u64>().ok())
        .unwrap_or(0);
    // SAFETY: sysconf reads a constant of the system.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    pages * u64::try_from(page).unwrap_or(4096)
}

/// `GET /metrics` of a node: the Prometheus text.
pub fn scrape(addr: SocketAddr) -> Result<String, String> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2))
        .map_err(|e| format!("metrics at {addr}: {e}"))?;
    s.set_read_timeout(Some(Duration::from_secs(2)))
        .map_err(|e| e.to_string())?;
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .map_err(|e| format!("metrics at {addr}: {e}"))?;
    let mut text = String::new();
    s.read_to_string(&mut text)
        .map_err(|e| format!("metrics at {addr}: {e}"))?;
    let body = text.split_once("\r\n\r\n").map_or("", |(_, b)| b);
    Ok(body.to_owned())
}

/// Every sample of the series `name` (labels ignored), with its labels.
pub fn samples<'a>(text: &'a str, name: &str) -> Vec<(&'a str, f64)> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            let (n, labels) = series.split_once('{').unwrap_or((series, ""));
            (n == name).then(|| value.parse().ok().map(|v| (labels, v)))?
        })
        .collect()
}

fn read(path: &Path) -> Result<String, String> {
    std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))
}

fn write_private(path: &Path, text: &str) -> Result<(), String> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .and_then(|mut f| f.write_all(text.as_bytes()))
        .map_err(|e| format!("{}: {e}", path.display()))
}

/// Certificates and node files in `dir`; the cluster's shape for a client, and where each
/// node serves metrics.
fn write_cluster(
    dir: &Path,
    shape: &Shape,
) -> Result<(ClusterSpec, Vec<Option<SocketAddr>>), String> {
    let ca = tls::generate_ca("nodedb-perf").map_err(|e| e.to_string())?;
    write_private(&dir.join("ca.pem"), &ca.cert_pem)?;
    let client = tls::issue_client_cert(&ca, "nodedb-perf").map_err(|e| e.to_string())?;
    write_private(&dir.join("client.pem"), &client.cert_pem)?;
    write_private(&dir.join("client.key"), &client.key_pem)?;
    let admin = tls::issue_admin_cert(&ca, "nodedb-perf").map_err(|e| e.to_string())?;
    write_private(&dir.join("admin.pem"), &admin.cert_pem)?;
    write_private(&dir.join("admin.key"), &admin.key_pem)?;
    let port = |cores| {
        free_base_port(cores)
            .map(|p| SocketAddr::from(([127, 0, 0, 1], p)))
            .map_err(|e| e.to_string())
    };
    let addrs: Vec<(NodeId, SocketAddr)> = (1..=shape.nodes)
        .map(|n| port(shape.cores).map(|a| (NodeId(n), a)))
        .collect::<Result<_, _>>()?;
    let metrics: Vec<Option<SocketAddr>> = (1..=shape.nodes)
        .map(|_| shape.metrics.then(|| port(1)).transpose())
        .collect::<Result<_, _>>()?;
    let table: String = addrs
        .iter()
        .map(|(n, a)| format!("[[nodes]]\nid = {}\naddr = \"{a}\"\n", n.0))
        .collect();
    let (cores, groups, extra) = (shape.cores, shape.groups, &shape.extra);
    for ((n, _), metrics) in addrs.iter().zip(&metrics) {
        let id = n.0;
        let cert =
            tls::issue_node_cert(&ca, *n, &["127.0.0.1".into()]).map_err(|e| e.to_string())?;
        write_private(&dir.join(format!("node-{id}.pem")), &cert.cert_pem)?;
        write_private(&dir.join(format!("node-{id}.key")), &cert.key_pem)?;
        let metrics = metrics.map_or(String::new(), |m| format!("metrics_addr = \"{m}\"\n"));
        let file = format!(
            "node_id = {id}\ndata_dir = \"data-{id}\"\ncores = {cores}\ngroups = {groups}\nreplicas = 3\n\
             layout = \"unbound\"\nrebalance = false\n{metrics}{extra}\n\n[tls]\nca_cert = \"ca.pem\"\n\
             cert = \"node-{id}.pem\"\nkey = \"node-{id}.key\"\n\n{table}"
        );
        std::fs::write(dir.join(format!("node-{id}.toml")), file)
            .map_err(|e| format!("{}: {e}", dir.display()))?;
    }
    let spec = ClusterSpec {
        nodes: addrs,
        cores,
        groups,
        replicas: 3,
    };
    Ok((spec, metrics))
}
