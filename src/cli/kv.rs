//! `nodedb-cluster kv`: put, get or delete a key in a running cluster; show its placement
//! table and the rebalancer's status; move a replica or give a move up.

use std::path::Path;
use std::process::ExitCode;

use clap::Subcommand;
use nodedb_cluster::ids::{CoreAddress, CoreId, GroupId, NodeId};
use nodedb_cluster::runtime::client::KvClient;
use nodedb_cluster::runtime::config::LoadedConfig;
use nodedb_cluster::runtime::executor::{CorePlacement, spawn_executor};

#[derive(Subcommand, Debug)]
pub enum KvCommandArg {
    /// Set KEY to VALUE.
    Put { key: String, value: String },
    /// Print KEY's value (linearizable read).
    Get { key: String },
    /// Delete KEY.
    Del { key: String },
    /// Print the placement table: its epoch and each group's replicas (id@node/core).
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
    Status {
        /// Print one JSON object.
        #[arg(long)]
        json: bool,
    },
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

/// Runs one `kv` operation against the cluster `path` describes.
pub fn run(path: &Path, op: KvCommandArg) -> ExitCode {
    let config = match LoadedConfig::load(path) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    let outcome = spawn_executor("kv-client", CorePlacement::Unbound, move || async move {
        let client = KvClient::new(config.spec.clone(), config.tls.clone(), config.mtu)
            .map_err(|e| e.to_string())?;
        let result = match op {
            KvCommandArg::Put { key, value } => client
                .put(key.as_bytes(), value.as_bytes())
                .await
                .map(|()| "OK".to_owned()),
            KvCommandArg::Get { key } => client.get(key.as_bytes()).await.map(|v| {
                v.map_or_else(
                    || "(not found)".to_owned(),
                    |v| String::from_utf8_lossy(&v).into_owned(),
                )
            }),
            KvCommandArg::Del { key } => client
                .delete(key.as_bytes())
                .await
                .map(|existed| if existed { "deleted" } else { "(not found)" }.to_owned()),
            KvCommandArg::Placement => match (client.routing().await, client.moves().await) {
                (Ok((epoch, groups)), Ok(moves)) => {
                    let mut text = format!("epoch {epoch}");
                    for (group, replicas) in groups {
                        text.push_str(&format!("\ngroup {}:", group.0));
                        for (replica, at) in replicas {
                            text.push_str(&format!(" {replica}@{}/{}", at.node.0, at.core.0));
                        }
                        if let Some((_, m)) = moves.iter().find(|(g, _)| *g == group) {
                            text.push_str(&format!(
                                " (moving {} to {}@{}/{}{})",
                                m.from.0,
                                m.new.0,
                                m.to.node.0,
                                m.to.core.0,
                                if m.abandon { ", abandoning" } else { "" }
                            ));
                        }
                    }
                    Ok(text)
                }
                (Err(e), _) | (_, Err(e)) => Err(e),
            },
            KvCommandArg::Move { group, from, to } => client
                .move_replica(GroupId(group), NodeId(from), to)
                .await
                .map(|()| "move recorded".to_owned()),
            KvCommandArg::AbandonMove { group } => client
                .abandon_move(GroupId(group))
                .await
                .map(|()| "abandon recorded".to_owned()),
            KvCommandArg::Decommission { node } => {
                client.decommission(NodeId(node)).await.map(|()| {
                    format!(
                        "node {node} is draining; `kv status` shows it Decommissioned (safe to stop) once its replicas have moved"
                    )
                })
            }
            KvCommandArg::Recommission { node } => client
                .recommission(NodeId(node))
                .await
                .map(|()| format!("node {node} is active")),
            KvCommandArg::Status { json } => client.status().await.map(|s| {
                if json {
                    serde_json::to_string(&s).unwrap_or_default()
                } else {
                    status_table(&s)
                }
            }),
        };
        client.shutdown().await;
        result.map_err(|e| e.to_string())
    })
    .map_err(|e| e.to_string())
    .and_then(|h| h.join().map_err(|e| e.to_string()))
    .and_then(|r| r);
    match outcome {
        Ok(text) => {
            println!("{text}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
