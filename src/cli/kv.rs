//! `nodedb-cluster kv`: put, get or delete a key in a running cluster; show its placement
//! table and the rebalancer's status; move a replica or give a move up.

use std::io::{Read, Write};
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Subcommand;
use nodedb_cluster::client::call::CallError;
use nodedb_cluster::cluster::placement::PendingMove;
use nodedb_cluster::ids::{CoreAddress, CoreId, GroupId, NodeId};
use nodedb_cluster::runtime::client::{ClientError, KvClient, cluster_info_at};
use nodedb_cluster::runtime::config::{DEFAULT_MTU, LoadedConfig, mutual_tls};
use nodedb_cluster::runtime::executor::{CorePlacement, spawn_executor};
use nodedb_cluster::runtime::node::ClusterSpec;
use nodedb_cluster::runtime::tls::TlsMode;

#[derive(Subcommand, Debug)]
pub enum KvCommandArg {
    /// Set KEY to VALUE; VALUE `-` reads it from stdin, `--value-file` from a file (any
    /// bytes, up to the server's 1 MiB limit).
    Put {
        key: String,
        #[arg(required_unless_present = "value_file", conflicts_with = "value_file")]
        value: Option<String>,
        /// Read the value from this file.
        #[arg(long, value_name = "FILE")]
        value_file: Option<PathBuf>,
    },
    /// Print KEY's value (linearizable read) and a newline; exit status 3 if it does not
    /// exist.
    Get {
        key: String,
        /// Print the value's bytes exactly, with no newline (binary values).
        #[arg(long, conflicts_with = "hex")]
        raw: bool,
        /// Print the value in hexadecimal.
        #[arg(long)]
        hex: bool,
    },
    /// Delete KEY; exit status 3 if it did not exist.
    Del { key: String },
    /// Print the placement table: its epoch, the nodes and their states, and each group's
    /// replicas as nNODE/cCORE, the leader marked * (as its node last reported). `--json`
    /// adds the Raft replica ids.
    Placement,
    /// Move GROUP's replica on node FROM to core CORE of node NODE (`--to NODE:CORE`). The
    /// move is recorded in the placement table and carried out by the metadata leader;
    /// `placement` shows when it is done.
    Move {
        #[arg(long)]
        group: u64,
        #[arg(long)]
        from: u64,
        #[arg(long, value_parser = parse_core_address)]
        to: CoreAddress,
    },
    /// Give up GROUP's move (its target node is gone for good): the new replica is taken
    /// out again, unless the old one already left.
    AbandonMove {
        #[arg(long)]
        group: u64,
    },
    /// Drain NODE for removal: the rebalancer moves every replica off it, then marks it
    /// Decommissioned; `status` says when it is safe to stop. Needs an admin certificate.
    Decommission {
        #[arg(long)]
        node: u64,
    },
    /// Undo a drain that has not finished: NODE is Active again.
    Recommission {
        #[arg(long)]
        node: u64,
    },
    /// Print the rebalancer's view from its coordinator (the metadata leader): each node's
    /// state and report age, each core's load, the imbalance, moves in flight and the last
    /// sweep.
    Status,
}

/// `kv status` as a table.
fn status_table(s: &nodedb_cluster::node::BalancerStatus) -> String {
    let mut t = format!(
        "coordinator node {}, rebalancer {} (every {:.0} s)\n",
        s.coordinator,
        if s.rebalance_enabled { "on" } else { "off" },
        s.interval_seconds
    );
    t.push_str(&format!(
        "node max/mean {:.3}   core max/mean {:.3}   replica moves in flight {}   leader transfers in flight {}\n",
        s.node_max_over_mean, s.core_max_over_mean, s.replica_moves_in_flight, s.leader_transfers_in_flight
    ));
    if !s.under_replicated_groups.is_empty() {
        t.push_str(&format!(
            "under-replicated groups (a replica on a node not heard from, Down or decommissioned): {:?}; repairs under way {}\n",
            s.under_replicated_groups, s.repairs_in_flight
        ));
    }
    t.push_str(&format!(
        "last sweep {}, planned {} move(s){}{}; started {} replica moves and {} leader transfers ({} not taken)\n",
        s.last_sweep_seconds_ago
            .map_or("never".into(), |a| format!("{a:.1} s ago")),
        s.last_plan_moves,
        s.last_plan_status
            .as_deref()
            .map_or(String::new(), |p| format!(" ({p})")),
        s.last_skip
            .as_deref()
            .map_or(String::new(), |r| format!(", skipped: {r}")),
        s.stats.replica_moves_started,
        s.stats.leader_transfers_started,
        s.stats.leader_transfers_failed
    ));
    let state_of = |n: &nodedb_cluster::node::NodeStatus| match n.state.as_str() {
        "Draining" => format!("Draining ({} left)", n.replicas_placed),
        "Down" => format!("Down ({} to replace)", n.replicas_placed),
        _ if n.safe_to_stop => "Decommissioned (safe to stop)".to_owned(),
        _ => n.state.clone(),
    };
    let w = s
        .nodes
        .iter()
        .map(|n| state_of(n).len())
        .fold(15, usize::max);
    t.push_str(&format!(
        "node  {:<w$} report  core  busy   ops/s      bytes  replicas  leaders  p99 ms\n",
        "state"
    ));
    for n in &s.nodes {
        let age = match (n.report_age_seconds, n.fresh) {
            (None, _) => "never".to_owned(),
            (Some(a), true) => format!("{a:.1} s"),
            (Some(a), false) => format!("{a:.0} s!"),
        };
        let state = state_of(n);
        if n.cores.is_empty() {
            t.push_str(&format!("{:<5} {:<w$} {:>6}\n", n.id, state, age));
        }
        for (i, c) in n.cores.iter().enumerate() {
            let (node, state, age) = if i == 0 {
                (n.id.to_string(), state.clone(), age.clone())
            } else {
                (String::new(), String::new(), String::new())
            };
            t.push_str(&format!(
                "{node:<5} {state:<w$} {age:>6}  {:>4}  {:>4.2}  {:>6.0}  {:>9}  {:>8}  {:>7}  {:>6.1}\n",
                c.core,
                c.busy,
                c.ops_per_second,
                c.bytes,
                c.replicas,
                c.leaders,
                c.p99_latency_us / 1000.0
            ));
        }
    }
    t.trim_end().to_owned()
}

/// `NODE:CORE`, e.g. `4:1`.
fn parse_core_address(text: &str) -> Result<CoreAddress, String> {
    let (node, core) = text
        .split_once(':')
        .ok_or_else(|| format!("{text:?} is not NODE:CORE"))?;
    Ok(CoreAddress {
        node: NodeId(node.parse().map_err(|e| format!("node {node:?}: {e}"))?),
        core: CoreId(core.parse().map_err(|e| format!("core {core:?}: {e}"))?),
    })
}

/// What a `kv` operation printed, or why it did not succeed.
enum Outcome {
    /// Bytes for stdout.
    Printed(Vec<u8>),
    /// The key does not exist: a message for stderr, or the JSON object for stdout.
    NotFound(String),
}

/// Exit status for a key that does not exist (`get`, `del`).
const EXIT_NOT_FOUND: u8 = 3;
/// Exit status for no answer within `--timeout`.
const EXIT_TIMEOUT: u8 = 4;
/// How much sooner than `--timeout` the client's own calls end, for their outcome to
/// reach the process before it stops waiting.
const CALL_DEADLINE_MARGIN: Duration = Duration::from_millis(300);

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A value as JSON: text when it is UTF-8, else hexadecimal.
fn json_value(value: &[u8]) -> serde_json::Value {
    match std::str::from_utf8(value) {
        Ok(text) => serde_json::json!({ "value": text, "bytes": value.len() }),
        Err(_) => serde_json::json!({ "value_hex": hex(value), "bytes": value.len() }),
    }
}

/// The value `put` sends: the argument, stdin (`-`) or a file.
fn read_value(value: Option<String>, file: Option<PathBuf>) -> Result<Vec<u8>, String> {
    match (value.as_deref(), file) {
        (_, Some(path)) => {
            std::fs::read(&path).map_err(|e| format!("cannot read {}: {e}", path.display()))
        }
        (Some("-"), None) => {
            let mut bytes = Vec::new();
            std::io::stdin()
                .read_to_end(&mut bytes)
                .map_err(|e| format!("cannot read the value from stdin: {e}"))?;
            Ok(bytes)
        }
        (Some(text), None) => Ok(text.as_bytes().to_vec()),
        (None, None) => Err("put needs a VALUE, `-` (stdin) or --value-file".to_owned()),
    }
}

/// Writes to stdout; a reader that went away (`kv get k | head -c 1`) is not an error.
fn print_out(bytes: &[u8]) -> ExitCode {
    let mut out = std::io::stdout().lock();
    match out.write_all(bytes).and_then(|()| out.flush()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: cannot write to stdout: {e}");
            ExitCode::FAILURE
        }
    }
}

fn line(text: impl Into<String>) -> Outcome {
    let mut text = text.into();
    text.push('\n');
    Outcome::Printed(text.into_bytes())
}

fn json_line(value: serde_json::Value) -> Outcome {
    line(value.to_string())
}

/// Where `kv` finds the cluster.
pub enum Target {
    /// A client file (`--config`).
    Config(PathBuf),
    /// Nodes to ask for the cluster's layout, and this client's certificates
    /// (`--endpoints`, `--ca`, `--cert`, `--key`, `--insecure`).
    Endpoints {
        endpoints: Vec<String>,
        ca: Option<PathBuf>,
        cert: Option<PathBuf>,
        key: Option<PathBuf>,
        insecure: bool,
    },
}

/// What the client knows of the cluster before it starts.
enum Layout {
    /// The spec a client file gives.
    Known(ClusterSpec),
    /// Nodes to ask for it.
    Ask(Vec<SocketAddr>),
}

/// What the client starts from.
struct Setup {
    layout: Layout,
    tls: TlsMode,
    mtu: u16,
    /// Where the addresses came from, for the timeout's message.
    source: String,
}

impl Setup {
    fn new(target: Target) -> Result<Setup, String> {
        match target {
            Target::Config(path) => {
                let config = LoadedConfig::load(&path).map_err(|e| e.to_string())?;
                Ok(Setup {
                    layout: Layout::Known(config.spec),
                    tls: config.tls,
                    mtu: config.mtu,
                    source: format!("the addresses in {}", path.display()),
                })
            }
            Target::Endpoints {
                endpoints,
                ca,
                cert,
                key,
                insecure,
            } => {
                let tls = match (insecure, ca, cert, key) {
                    (true, ..) => TlsMode::Insecure,
                    (false, Some(ca), Some(cert), Some(key)) => mutual_tls(&ca, &cert, &key)
                        .map_err(|e| format!("--ca/--cert/--key: {e}"))?,
                    _ => {
                        return Err(
                            "--endpoints needs --ca, --cert and --key (the cluster's CA and \
                                    this client's certificate and key), or --insecure"
                                .to_owned(),
                        );
                    }
                };
                let mut addrs = Vec::new();
                for endpoint in endpoints.iter().map(|e| e.trim()).filter(|e| !e.is_empty()) {
                    let resolved = endpoint.to_socket_addrs().map_err(|e| {
                        format!("--endpoints: {endpoint}: {e} (expected HOST:PORT)")
                    })?;
                    addrs.extend(resolved);
                }
                if addrs.is_empty() {
                    return Err("--endpoints names no address (expected HOST:PORT,...)".to_owned());
                }
                Ok(Setup {
                    layout: Layout::Ask(addrs),
                    tls,
                    mtu: DEFAULT_MTU,
                    source: format!("--endpoints {}", endpoints.join(",")),
                })
            }
        }
    }

    /// The cluster's spec: the file's, or the one the first node of `endpoints` to answer
    /// describes. All are asked at once, so a dead endpoint costs nothing while another
    /// answers. A refused handshake ends the search at once (every node of a cluster has
    /// the same CA).
    async fn spec(&self) -> Result<ClusterSpec, String> {
        let endpoints = match &self.layout {
            Layout::Known(spec) => return Ok(spec.clone()),
            Layout::Ask(endpoints) => endpoints,
        };
        let (answers, answered) = async_channel::unbounded();
        for &addr in endpoints {
            let (answers, tls, mtu) = (answers.clone(), self.tls.clone(), self.mtu);
            glommio::spawn_local(async move {
                let _ = answers
                    .send((addr, cluster_info_at(addr, &tls, mtu).await))
                    .await;
            })
            .detach();
        }
        drop(answers);
        let mut failures = Vec::new();
        while let Ok((addr, answer)) = answered.recv().await {
            match answer {
                Ok(info) => return Ok(info.spec()),
                Err(e @ ClientError::Call(CallError::HandshakeRefused(_))) => {
                    return Err(e.to_string());
                }
                // Its messages name the address ("connecting to …: timed out").
                Err(ClientError::Protocol(why)) => failures.push(why),
                Err(e) => failures.push(format!("{addr}: {e}")),
            }
        }
        Err(format!(
            "no node at --endpoints described the cluster: {}",
            failures.join("; ")
        ))
    }
}

/// Runs one `kv` operation against the cluster `target` names, giving up after
/// `timeout_secs` without an answer.
pub fn run(target: Target, timeout_secs: f64, json: bool, op: KvCommandArg) -> ExitCode {
    let setup = match Setup::new(target) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    let timeout = match Duration::try_from_secs_f64(timeout_secs) {
        Ok(t) if !t.is_zero() => t,
        _ => {
            eprintln!("error: --timeout must be a positive number of seconds, not {timeout_secs}");
            return ExitCode::from(2);
        }
    };
    // A put's value is read before the clock starts (stdin may be slow to end).
    let op = match op {
        KvCommandArg::Put {
            key,
            value,
            value_file,
        } => match read_value(value, value_file) {
            Ok(value) => Op::Put { key, value },
            Err(e) => {
                eprintln!("error: {e}");
                return ExitCode::from(2);
            }
        },
        other => Op::Other(other),
    };
    let (done, outcome) = std::sync::mpsc::channel();
    let source = setup.source.clone();
    let spawned = spawn_executor("kv-client", CorePlacement::Unbound, move || async move {
        let _ = execute(setup, json, op, timeout, done).await;
    });
    if let Err(e) = spawned {
        eprintln!("error: {e}");
        return ExitCode::FAILURE;
    }
    // The client retries while a cluster elects or moves leaders; the timeout bounds it
    // all. On a timeout the process exits with the client thread still trying.
    match outcome.recv_timeout(timeout) {
        Ok(Ok(Outcome::Printed(bytes))) => print_out(&bytes),
        Ok(Ok(Outcome::NotFound(message))) => {
            if json {
                print_out(format!("{message}\n").as_bytes());
            } else {
                eprintln!("{message}");
            }
            ExitCode::from(EXIT_NOT_FOUND)
        }
        Ok(Err(Failed::Timeout(why))) => {
            eprintln!(
                "error: no answer from the cluster within {timeout_secs} s (--timeout): {why}"
            );
            ExitCode::from(EXIT_TIMEOUT)
        }
        Ok(Err(Failed::Error(e))) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
        Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
            eprintln!(
                "error: no answer from the cluster within {timeout_secs} s (--timeout); are its nodes running and reachable at {source}?"
            );
            ExitCode::from(EXIT_TIMEOUT)
        }
        Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {
            eprintln!("error: the client stopped without an answer");
            ExitCode::FAILURE
        }
    }
}

/// An operation, its value already read.
enum Op {
    Put { key: String, value: Vec<u8> },
    Other(KvCommandArg),
}

/// Why a command failed: its deadline passed with no answer (exit 4, with the last reason
/// the client met: no leader, no majority of the metadata group, no connection), or
/// anything else (exit 1).
enum Failed {
    Timeout(String),
    Error(String),
}

/// Runs `op` and sends its outcome on `done`.
async fn execute(
    setup: Setup,
    json: bool,
    op: Op,
    timeout: Duration,
    done: std::sync::mpsc::Sender<Result<Outcome, Failed>>,
) -> Result<(), std::sync::mpsc::SendError<Result<Outcome, Failed>>> {
    let spec = match setup.spec().await {
        Ok(spec) => spec,
        Err(e) => return done.send(Err(Failed::Error(e))),
    };
    let client = match KvClient::new(spec, setup.tls.clone(), setup.mtu) {
        Ok(client) => client,
        Err(e) => return done.send(Err(Failed::Error(e.to_string()))),
    };
    // The client gives up just before `--timeout`, with the last reason it met (no
    // leader, no majority of the metadata group) rather than a bare timeout.
    client.set_deadline(
        timeout
            .saturating_sub(CALL_DEADLINE_MARGIN)
            .max(timeout / 2),
    );
    let result = match op {
        Op::Put { key, value } => client.put(key.as_bytes(), &value).await.map(|()| {
            if json {
                json_line(serde_json::json!({ "ok": true, "key": key, "bytes": value.len() }))
            } else {
                line("OK")
            }
        }),
        Op::Other(op) => other(&client, json, op).await,
    };
    match result {
        // Connections closed cleanly before the answer goes out: the process exits once
        // it is printed.
        Ok(outcome) => {
            client.shutdown().await;
            done.send(Ok(outcome))
        }
        // A failure is told at once: closing a connection still being set up can take
        // longer than the `--timeout` left.
        Err(e) => {
            let failed = match e {
                ClientError::Call(CallError::NoLeader { .. }) => Failed::Timeout(e.to_string()),
                e => Failed::Error(e.to_string()),
            };
            let sent = done.send(Err(failed));
            client.shutdown().await;
            sent
        }
    }
}

async fn other(
    client: &KvClient,
    json: bool,
    op: KvCommandArg,
) -> Result<Outcome, nodedb_cluster::runtime::client::ClientError> {
    let not_found = |key: &str| {
        Outcome::NotFound(if json {
            serde_json::json!({ "ok": false, "key": key, "found": false }).to_string()
        } else {
            format!("error: key {key:?} not found")
        })
    };
    Ok(match op {
        KvCommandArg::Put { .. } => unreachable!("put is handled with its value read"),
        KvCommandArg::Get {
            key,
            raw,
            hex: as_hex,
        } => match client.get(key.as_bytes()).await? {
            None => not_found(&key),
            Some(value) if json => {
                let mut object = json_value(&value);
                object["ok"] = true.into();
                object["key"] = key.into();
                object["found"] = true.into();
                json_line(object)
            }
            Some(value) if raw => Outcome::Printed(value),
            Some(value) if as_hex => line(hex(&value)),
            Some(mut value) => {
                value.push(b'\n');
                Outcome::Printed(value)
            }
        },
        KvCommandArg::Del { key } => {
            if !client.delete(key.as_bytes()).await? {
                not_found(&key)
            } else if json {
                json_line(serde_json::json!({ "ok": true, "key": key, "deleted": true }))
            } else {
                line("deleted")
            }
        }
        KvCommandArg::Placement => {
            let (epoch, groups) = client.routing().await?;
            let moves = client.moves().await?;
            // Leaders and node states come from the coordinator; without one (no metadata
            // leader yet) the table is still worth printing.
            let status = client.status().await.ok();
            let at = |a: &CoreAddress| format!("n{}/c{}", a.node.0, a.core.0);
            let leader_node = |group: GroupId| {
                let node = status
                    .as_ref()?
                    .leaders
                    .get(usize::try_from(group.0).ok()?.checked_sub(1)?)
                    .copied()?;
                (node != 0).then_some(node)
            };
            let leader_core = |group: GroupId| {
                status
                    .as_ref()?
                    .leader_cores
                    .get(usize::try_from(group.0).ok()?.checked_sub(1)?)
                    .copied()?
            };
            // The leader's replica: the one on the core its node reported, else the node's
            // only one. Where the node holds two (a move between its cores) and its report
            // names neither core (a node of an earlier version, or a report from before
            // the move), the leader is one of the two.
            let leader_of = |group: GroupId, replicas: &[(u64, CoreAddress)]| {
                let node = leader_node(group)?;
                let on_node: Vec<usize> = (0..replicas.len())
                    .filter(|i| replicas[*i].1.node.0 == node)
                    .collect();
                leader_core(group)
                    .and_then(|core| {
                        on_node
                            .iter()
                            .copied()
                            .find(|i| replicas[*i].1.core.0 == core)
                    })
                    .or_else(|| (on_node.len() == 1).then(|| on_node[0]))
            };
            let leader_ambiguous = |group: GroupId, replicas: &[(u64, CoreAddress)], i: usize| {
                leader_of(group, replicas).is_none()
                    && leader_node(group) == Some(replicas[i].1.node.0)
            };
            let move_text = |replicas: &[(u64, CoreAddress)], m: &PendingMove| {
                let from = replicas
                    .iter()
                    .find(|(id, _)| *id == m.from.0)
                    .map_or_else(|| format!("replica {}", m.from.0), |(_, a)| at(a));
                (from, at(&m.to))
            };
            if json {
                let groups: Vec<serde_json::Value> = groups
                    .iter()
                    .map(|(group, replicas)| {
                        let moving = moves.iter().find(|(g, _)| g == group).map(|(_, m)| {
                            let (from, to) = move_text(replicas, m);
                            serde_json::json!({
                                "from": from,
                                "from_replica": m.from.0,
                                "new_replica": m.new.0,
                                "to": to,
                                "abandon": m.abandon,
                            })
                        });
                        serde_json::json!({
                            "group": group.0,
                            "replicas": replicas.iter().map(|(replica, a)| serde_json::json!({
                                "replica": replica,
                                "at": at(a),
                            })).collect::<Vec<_>>(),
                            "leader": leader_of(*group, replicas).map(|i| at(&replicas[i].1)),
                            "leader_node": leader_node(*group).map(|n| format!("n{n}")),
                            "moving": moving,
                        })
                    })
                    .collect();
                let nodes = status.as_ref().map(|s| {
                    s.nodes
                        .iter()
                        .map(|n| serde_json::json!({ "node": format!("n{}", n.id), "state": n.state, "fresh": n.fresh }))
                        .collect::<Vec<_>>()
                });
                json_line(serde_json::json!({ "epoch": epoch, "nodes": nodes, "groups": groups }))
            } else {
                let mut text = format!("placement epoch {epoch}");
                match &status {
                    Some(s) => {
                        text.push_str(
                            "; * marks the leader, as its node last reported ((*): one of the \
                             two replicas on the leader's node, during a move between its \
                             cores, when its report does not say which)\nnodes:",
                        );
                        let nodes: Vec<String> = s
                            .nodes
                            .iter()
                            .map(|n| {
                                let stale = if n.fresh { "" } else { " (no recent report)" };
                                format!(" n{} {}{stale}", n.id, n.state)
                            })
                            .collect();
                        text.push_str(&nodes.join(","));
                    }
                    None => {
                        text.push_str(" (no coordinator answered: leaders and node states unknown)")
                    }
                }
                for (group, replicas) in &groups {
                    text.push_str(&format!("\ngroup {}:", group.0));
                    let leader = leader_of(*group, replicas);
                    for (i, (_, a)) in replicas.iter().enumerate() {
                        let mark = if leader == Some(i) {
                            "*"
                        } else if leader_ambiguous(*group, replicas, i) {
                            "(*)"
                        } else {
                            ""
                        };
                        text.push_str(&format!(" {}{mark}", at(a)));
                    }
                    if let Some((_, m)) = moves.iter().find(|(g, _)| g == group) {
                        let (from, to) = move_text(replicas, m);
                        text.push_str(&format!(
                            " (moving {from} to {to}{})",
                            if m.abandon { ", abandoning" } else { "" }
                        ));
                    }
                }
                line(text)
            }
        }
        KvCommandArg::Move { group, from, to } => {
            client
                .move_replica(GroupId(group), NodeId(from), to)
                .await?;
            done(json, "move recorded")
        }
        KvCommandArg::AbandonMove { group } => {
            client.abandon_move(GroupId(group)).await?;
            done(json, "abandon recorded")
        }
        KvCommandArg::Decommission { node } => {
            client.decommission(NodeId(node)).await?;
            done(
                json,
                &format!(
                    "node {node} is draining; `kv status` shows it Decommissioned (safe to stop) once its replicas have moved"
                ),
            )
        }
        KvCommandArg::Recommission { node } => {
            client.recommission(NodeId(node)).await?;
            done(json, &format!("node {node} is active"))
        }
        KvCommandArg::Status => {
            let s = client.status().await?;
            if json {
                line(serde_json::to_string(&s).unwrap_or_default())
            } else {
                line(status_table(&s))
            }
        }
    })
}

/// A command's confirmation, as text or as `{"ok":true,"message":...}`.
fn done(json: bool, message: &str) -> Outcome {
    if json {
        json_line(serde_json::json!({ "ok": true, "message": message }))
    } else {
        line(message)
    }
}
