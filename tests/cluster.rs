//! Three nodes in one process over real QUIC with mTLS, each with two cores, a write-ahead
//! log per core and eight vShard groups: writes and reads succeed; a node is stopped and
//! writes continue after re-election; it restarts from its logs and catches up; every
//! acknowledged write is readable afterwards; a group whose log was compacted meanwhile is
//! caught up through a snapshot streamed on a bulk stream.

use std::io::{Read, Write};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use nodedb_cluster::ids::{CoreAddress, GroupId};
use nodedb_cluster::ids::{CoreId, NodeId};
use nodedb_cluster::metrics::cores::CoreCounter;
use nodedb_cluster::node::BalanceConfig;
use nodedb_cluster::runtime::client::KvClient;
use nodedb_cluster::runtime::cores::CoreLayout;
use nodedb_cluster::runtime::demo::free_base_port;
use nodedb_cluster::runtime::executor::{CorePlacement, spawn_executor};
use nodedb_cluster::runtime::node::{ClusterSpec, Node, NodeConfig};
use nodedb_cluster::runtime::tls::{
    CertifiedKeyPem, TlsMode, generate_ca, issue_admin_cert, issue_node_cert,
};
use nodedb_cluster::wire::kv_rpc::{KvOp, KvReply};

const CORES: u16 = 2;

struct Harness {
    ca: CertifiedKeyPem,
    spec: ClusterSpec,
    dir: PathBuf,
    snapshot_rate: Option<u64>,
    /// Off unless a test is about the rebalancer: the others move replicas themselves.
    balance: BalanceConfig,
}

impl Harness {
    fn new() -> Harness {
        Harness::named("main")
    }

    /// A cluster whose files live in a directory of its own (tests run side by side).
    fn named(name: &str) -> Harness {
        Harness::sized(name, 3)
    }

    /// `nodes` nodes; every group has three replicas.
    fn sized(name: &str, nodes: u64) -> Harness {
        let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
            .join(format!("cluster-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let nodes = (1..=nodes)
            .map(|n| {
                (
                    NodeId(n),
                    SocketAddr::from(([127, 0, 0, 1], free_base_port(CORES).unwrap())),
                )
            })
            .collect();
        Harness {
            ca: generate_ca("test").unwrap(),
            spec: ClusterSpec {
                nodes,
                cores: CORES,
                groups: 8,
                replicas: 3,
            },
            dir,
            snapshot_rate: nodedb_cluster::constants::SNAPSHOT_RATE_BYTES_PER_SEC,
            balance: BalanceConfig {
                enabled: false,
                ..BalanceConfig::default()
            },
        }
    }

    fn start(&self, node: u64) -> Node {
        let identity = issue_node_cert(&self.ca, NodeId(node), &["127.0.0.1".into()]).unwrap();
        Node::start(NodeConfig {
            joined: None,
            quiesce: true,
            node: NodeId(node),
            spec: self.spec.clone(),
            data_dir: self.dir.join(format!("node-{node}")),
            tls: TlsMode::Mutual {
                ca_cert_pem: self.ca.cert_pem.clone(),
                identity,
            },
            layout: CoreLayout::Unbound,
            mtu: 1452,
            snapshot_rate: self.snapshot_rate,
            metrics_addr: Some(SocketAddr::from(([127, 0, 0, 1], 0))),
            balance: self.balance,
        })
        .unwrap()
    }

    /// Stops the nodes still running and removes the cluster's files.
    fn stop(&self, nodes: impl IntoIterator<Item = Node>) {
        for node in nodes {
            node.shutdown().unwrap();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }

    /// The tests' client runs the cluster too (moves, views): an admin certificate.
    fn client_tls(&self) -> TlsMode {
        TlsMode::Mutual {
            ca_cert_pem: self.ca.cert_pem.clone(),
            identity: issue_admin_cert(&self.ca, "test").unwrap(),
        }
    }
}

/// Runs a client session on its own executor.
fn with_client<T: Send + 'static, F: Future<Output = T> + 'static>(
    h: &Harness,
    session: impl FnOnce(KvClient) -> F + Send + 'static,
) -> T {
    let (spec, tls) = (h.spec.clone(), h.client_tls());
    spawn_executor("client", CorePlacement::Unbound, move || async move {
        let client = KvClient::new(spec, tls, 1452).unwrap();
        session(client).await
    })
    .unwrap()
    .join()
    .unwrap()
}

/// The first `n` keys named `<prefix>-<i>` that fall in `group`.
fn keys_in(c: &KvClient, prefix: &str, group: GroupId, n: usize) -> Vec<String> {
    (0..)
        .map(|i| format!("{prefix}-{i}"))
        .filter(|k| c.group_of(k.as_bytes()) == group)
        .take(n)
        .collect()
}

/// Enough keys of `group` for its leader to compact its log: a replica that missed them
/// can only catch up through a snapshot.
fn compacting_keys(c: &KvClient, prefix: &str, group: GroupId) -> Vec<String> {
    keys_in(
        c,
        prefix,
        group,
        // Two compactions: a leader keeps the entries a replica that stopped still needs
        // through one (`raft_host::compact_to`).
        2 * nodedb_cluster::constants::RAFT_LOG_COMPACT_ENTRIES + 300,
    )
}

/// Writes every key with itself as the value, eight writers at a time.
async fn put_all(client: &std::rc::Rc<KvClient>, keys: &[String]) {
    let mut writers = Vec::new();
    for part in keys.chunks(keys.len().div_ceil(8)) {
        let (client, part) = (client.clone(), part.to_vec());
        writers.push(glommio::spawn_local(async move {
            for k in part {
                client.put(k.as_bytes(), k.as_bytes()).await.unwrap();
            }
        }));
    }
    for w in writers {
        w.await;
    }
}

/// How often a waiting test looks at its condition again.
const POLL: Duration = Duration::from_millis(20);

/// Blocks the test thread until `done` holds; fails after `within`.
fn wait_until(what: &str, within: Duration, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(POLL);
    }
}

/// On a client's executor: asks `check` again until it gives `Some`; fails after `within`.
async fn eventually<T, F: Future<Output = Option<T>>>(
    what: &str,
    within: Duration,
    mut check: impl FnMut() -> F,
) -> T {
    let deadline = Instant::now() + within;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        glommio::timer::sleep(POLL).await;
    }
}

/// Waits until the group's replicas in the table satisfy `done`, and returns them.
async fn replicas_until(
    c: &KvClient,
    what: &str,
    within: Duration,
    group: GroupId,
    done: impl Fn(&[(u64, CoreAddress)]) -> bool,
) -> Vec<(u64, CoreAddress)> {
    let done = &done;
    eventually(what, within, move || async move {
        let replicas = replicas_of(c, group).await;
        done(&replicas).then_some(replicas)
    })
    .await
}

/// The replicas of `group` in the cluster's placement table.
async fn replicas_of(c: &KvClient, group: GroupId) -> Vec<(u64, CoreAddress)> {
    let (_, groups) = c.routing().await.unwrap();
    groups.into_iter().find(|(g, _)| *g == group).unwrap().1
}

/// Bytes per second for snapshot streams in the restart test: the hot group's snapshot
/// (about 18 KB) then streams for about 3.5 s beyond the bucket's one-second burst. Before
/// the send task reported delivery, raft-rs sent a new snapshot on every rejected probe
/// meanwhile: 1 201 of them for this one catch-up.
const SNAPSHOT_TEST_RATE: u64 = 4 * 1024;

#[test]
fn writes_survive_a_node_stop_and_its_restart_from_the_log() {
    // Snapshots are throttled so that catching up takes a while: one snapshot must
    // suffice, not one per rejected probe while the first is still streaming.
    let h = Harness {
        snapshot_rate: Some(SNAPSHOT_TEST_RATE),
        ..Harness::new()
    };
    let mut nodes: Vec<Option<Node>> = (1..=3).map(|n| Some(h.start(n))).collect();

    // Writes and reads succeed (the first ones wait for the elections).
    let (acked, leader_node) = with_client(&h, |c| async move {
        let mut acked = Vec::new();
        for i in 0..100u32 {
            let key = format!("before-{i}");
            c.put(key.as_bytes(), &i.to_le_bytes()).await.unwrap();
            acked.push(key);
        }
        assert_eq!(
            c.get(b"before-7").await.unwrap(),
            Some(7u32.to_le_bytes().to_vec())
        );
        assert_eq!(c.get(b"missing").await.unwrap(), None);
        // Bad input gets a typed error before it reaches the log.
        let huge = vec![0u8; nodedb_cluster::constants::KV_VALUE_MAX_BYTES + 1];
        assert!(matches!(
            c.put(b"huge", &huge).await,
            Err(nodedb_cluster::runtime::client::ClientError::Invalid(_))
        ));
        assert!(matches!(
            c.put(b"", b"v").await,
            Err(nodedb_cluster::runtime::client::ClientError::Invalid(_))
        ));
        let (applied, _) = c
            .compare_and_set(b"before-1", Some(&1u32.to_le_bytes()), Some(b"x"))
            .await
            .unwrap();
        assert!(applied);
        // A request at the wrong core of the right node is forwarded to the right core;
        // a group that does not exist is a typed error.
        let group = c.group_of(b"before-7");
        let leader = c
            .cached_leader(group)
            .expect("the client learned the leader");
        let wrong_core = CoreId((leader.core.0 + 1) % CORES);
        let reply = c
            .call_at(
                CoreAddress {
                    node: leader.node,
                    core: wrong_core,
                },
                group,
                KvOp::Get {
                    key: b"before-7".to_vec(),
                },
            )
            .await
            .unwrap();
        assert_eq!(reply, KvReply::Value(Some(7u32.to_le_bytes().to_vec())));
        let reply = c
            .call_at(leader, GroupId(99), KvOp::Get { key: b"k".to_vec() })
            .await
            .unwrap();
        assert!(
            matches!(reply, KvReply::Error(ref m) if m.contains("does not exist")),
            "{reply:?}"
        );
        // The metadata group bootstrapped the cluster's shape: every group, three replicas.
        let (epoch, groups) = c.routing().await.unwrap();
        assert!(epoch >= 1);
        assert_eq!(groups.len(), 8);
        assert!(
            groups.iter().all(|(_, replicas)| replicas.len() == 3),
            "{groups:?}"
        );
        // The client routes by that table (fetched with its epoch) from now on.
        c.put(b"routed", b"1").await.unwrap();
        assert_eq!(c.routing_epoch(), Some(epoch));
        c.shutdown().await;
        (acked, leader.node.0)
    });
    assert_eq!(acked.len(), 100);

    // The nodes counted what they did, and serve it to Prometheus.
    let live = || nodes.iter().flatten();
    let total = |c: CoreCounter| live().map(|n| n.metrics().total(c)).sum::<u64>();
    assert!(
        total(CoreCounter::WritesAcked) >= 101,
        "100 puts and one more were acked"
    );
    assert!(total(CoreCounter::ReadsServed) >= 3);
    assert!(
        total(CoreCounter::ClientErrors) >= 1,
        "the unknown group was an error"
    );
    assert!(live().all(|n| n.metrics().total(CoreCounter::WalBatches) > 0));
    assert!(live().all(|n| n.metrics().total(CoreCounter::RaftMessagesIn) > 0));
    assert!(live().all(|n| n.metrics().total(CoreCounter::QuicDatagramsReceived) > 0));
    assert!(
        live().all(|n| n.metrics().total(CoreCounter::QuicSendCalls)
            <= n.metrics().total(CoreCounter::QuicDatagramsSent)),
        "a send call carries at least one datagram"
    );
    let scrape = {
        let addr = nodes[0].as_ref().unwrap().metrics_addr().unwrap();
        let mut s = std::net::TcpStream::connect(addr).unwrap();
        s.write_all(b"GET /metrics HTTP/1.1\r\nHost: n1\r\n\r\n")
            .unwrap();
        let mut text = String::new();
        s.read_to_string(&mut text).unwrap();
        text
    };
    assert!(scrape.starts_with("HTTP/1.1 200 OK"), "{scrape}");
    let acked_on_node_1: u64 = scrape
        .lines()
        .filter(|l| l.starts_with("nodedb_core_writes_acked_total{node=\"1\""))
        .map(|l| l.rsplit(' ').next().unwrap().parse::<u64>().unwrap())
        .sum();
    assert_eq!(
        acked_on_node_1,
        nodes[0]
            .as_ref()
            .unwrap()
            .metrics()
            .total(CoreCounter::WritesAcked),
        "the endpoint serves the node's counters"
    );

    // A node that leads a group stops; the other two elect leaders where needed and keep
    // accepting writes.
    let stopped = leader_node;
    let other = (1..=3).find(|n| *n != stopped).unwrap();
    nodes[stopped as usize - 1]
        .take()
        .unwrap()
        .shutdown()
        .unwrap();
    let hot_keys = with_client(&h, |c| async move {
        for i in 0..100u32 {
            c.put(format!("during-{i}").as_bytes(), &i.to_le_bytes())
                .await
                .unwrap();
        }
        // Enough writes to one group that its leader compacts its log past where the stopped
        // node stopped: it can then only catch up through a snapshot (sent out of band).
        let group = c.group_of(b"hot-0");
        let keys = compacting_keys(&c, "hot", group);
        let client = std::rc::Rc::new(c);
        put_all(&client, &keys).await;
        client.shutdown().await;
        keys
    });

    // The stopped node restarts from its logs; another stops, so every group needs the
    // restarted node in its quorum: it can only serve if it caught up.
    nodes[stopped as usize - 1] = Some(h.start(stopped));
    nodes[other as usize - 1]
        .take()
        .unwrap()
        .shutdown()
        .unwrap();
    with_client(&h, move |c| async move {
        for i in 0..100u32 {
            let key = if i == 1 {
                b"x".to_vec()
            } else {
                i.to_le_bytes().to_vec()
            };
            assert_eq!(
                c.get(format!("before-{i}").as_bytes()).await.unwrap(),
                Some(key),
                "before-{i}"
            );
            assert_eq!(
                c.get(format!("during-{i}").as_bytes()).await.unwrap(),
                Some(i.to_le_bytes().to_vec()),
                "during-{i}"
            );
        }
        for k in &hot_keys {
            assert_eq!(
                c.get(k.as_bytes()).await.unwrap(),
                Some(k.as_bytes().to_vec()),
                "{k}"
            );
        }
        // A write to the hot group commits only with the restarted node's acknowledgement,
        // which it can give only after installing the snapshot. That streams at 4 KiB/s, so
        // an attempt may time out first (an unknown outcome); the same value again is
        // harmless.
        let deadline = Instant::now() + Duration::from_secs(60);
        while let Err(e) = c.put(hot_keys[0].as_bytes(), b"again").await {
            let unknown = matches!(
                e,
                nodedb_cluster::runtime::client::ClientError::Call(
                    nodedb_cluster::client::call::CallError::Unknown(_)
                )
            );
            assert!(unknown && Instant::now() < deadline, "{e}");
        }
        assert_eq!(
            c.get(hot_keys[0].as_bytes()).await.unwrap(),
            Some(b"again".to_vec())
        );
        c.put(b"after", b"1").await.unwrap();
        c.shutdown().await;
    });
    let snapshots: u64 = nodes
        .iter()
        .flatten()
        .map(|n| n.metrics().total(CoreCounter::SnapshotsSent))
        .sum();
    assert!(
        (1..=2).contains(&snapshots),
        "the catch-up took {snapshots} snapshots"
    );
    // The streamed bytes reach the cores' load (counted once per load tick).
    wait_until(
        "the snapshot's bytes counted",
        Duration::from_secs(5),
        || {
            nodes
                .iter()
                .flatten()
                .map(|n| n.metrics().total(CoreCounter::SnapshotBytesSent))
                .sum::<u64>()
                > 0
        },
    );
    h.stop(nodes.into_iter().flatten());
}

/// A vShard larger than a log record (64 MiB): its snapshot goes to a file of its own, and
/// a node that missed everything catches up through it, streamed. Before snapshots had
/// files, the core holding it stopped at its first compaction (`RecordTooLarge`). (Node 3
/// starts only once the data is in. Restarting from a snapshot file is covered in
/// `tests/wal.rs`.)
#[test]
fn a_vshard_larger_than_a_log_record_is_snapshotted_and_streamed() {
    const BIG: usize = 80;
    let h = Harness::named("large");
    let mut nodes: Vec<Option<Node>> = vec![Some(h.start(1)), Some(h.start(2)), None];
    let keys = with_client(&h, |c| async move {
        let group = c.group_of(b"big-0");
        let keys = keys_in(
            &c,
            "big",
            group,
            BIG + nodedb_cluster::constants::RAFT_LOG_COMPACT_ENTRIES + 100,
        );
        for (i, k) in keys.iter().enumerate() {
            // 80 values of 1 MiB, then small writes until the log is compacted.
            c.put(k.as_bytes(), &expected_value(i, k)).await.unwrap();
        }
        c.shutdown().await;
        keys
    });
    // Node 3 comes up while node 1 stops: the group commits only once node 2 has streamed
    // it the snapshot.
    nodes[2] = Some(h.start(3));
    nodes[0].take().unwrap().shutdown().unwrap();
    check_large_group(&h, &nodes, std::sync::Arc::new(keys), "after-stream");
    h.stop(nodes.into_iter().flatten());
}

/// The value the large-vShard test writes at position `i` (key `k`).
fn expected_value(i: usize, k: &str) -> Vec<u8> {
    if i < 80 {
        vec![i as u8; nodedb_cluster::constants::KV_VALUE_MAX_BYTES]
    } else {
        k.as_bytes().to_vec()
    }
}

/// A write to the large group commits (within a bound) and a sample of its keys reads back;
/// no node's core failed.
fn check_large_group(
    h: &Harness,
    nodes: &[Option<Node>],
    keys: std::sync::Arc<Vec<String>>,
    marker: &'static str,
) {
    let committed = with_client(h, move |c| async move {
        // Installing 80 MiB and replaying the rest can outlast one call's retries.
        let deadline = Instant::now() + Duration::from_secs(120);
        while let Err(e) = c.put(keys[0].as_bytes(), marker.as_bytes()).await {
            if Instant::now() > deadline {
                c.shutdown().await;
                return Err(format!("no commit after 120 s: {e}"));
            }
        }
        for (i, k) in keys.iter().enumerate().skip(1).step_by(7) {
            assert_eq!(
                c.get(k.as_bytes()).await.unwrap(),
                Some(expected_value(i, k)),
                "{k}"
            );
        }
        c.shutdown().await;
        Ok(())
    });
    let failures: Vec<String> = nodes.iter().flatten().filter_map(Node::failure).collect();
    assert!(
        committed.is_ok(),
        "{committed:?}; node failures: {failures:?}"
    );
    assert!(failures.is_empty(), "{failures:?}");
}

/// A replica moves to the other core of its node while clients write to its group and a
/// node is down. The move is recorded in the placement table; the metadata leader's
/// executor adds the new replica as a learner, promotes it and removes the old one in one
/// joint change (both configurations have a quorum without the stopped node), and retires
/// the old replica only once every voter durably knows the change — so not before the
/// stopped node is back. Every acknowledged write is readable afterwards, and after node 1
/// restarts it hosts the new replica, from its log, where the table places it.
#[test]
fn a_replica_moves_to_another_core_while_clients_write_and_a_node_is_down() {
    use nodedb_cluster::ids::ReplicaId;
    use std::cell::{Cell, RefCell};
    use std::rc::Rc;
    let h = Harness::named("move");
    let mut nodes: Vec<Option<Node>> = (1..=3).map(|n| Some(h.start(n))).collect();

    let before = with_client(&h, |c| async move {
        let mut acked = Vec::new();
        for i in 0..50 {
            let k = format!("before-{i}");
            c.put(k.as_bytes(), k.as_bytes()).await.unwrap();
            acked.push(k);
        }
        c.shutdown().await;
        acked
    });
    nodes[2].take().unwrap().shutdown().unwrap();
    let executors: Vec<_> = nodes
        .iter()
        .flatten()
        .map(|n| n.metrics().clone())
        .collect();
    let replicas_on = |metrics: &nodedb_cluster::metrics::cores::NodeMetrics, core: CoreId| {
        metrics
            .core(core.0)
            .gauge(nodedb_cluster::metrics::cores::CoreGauge::Replicas)
    };
    let hosted_before: Vec<u64> = (0..CORES)
        .map(|c| replicas_on(nodes[0].as_ref().unwrap().metrics(), CoreId(c)))
        .collect();

    // The move runs while writers write to the group.
    let (group, from, to, new, during) = with_client(&h, |c| async move {
        let c = Rc::new(c);
        let group = c.group_of(b"move-0");
        let from = replicas_of(&c, group)
            .await
            .into_iter()
            .map(|(_, a)| a)
            .find(|a| a.node == NodeId(1))
            .expect("every node holds a replica of every group");
        let to = CoreAddress {
            node: NodeId(1),
            core: CoreId((from.core.0 + 1) % CORES),
        };
        let keys = keys_in(&c, "move", group, 300);
        let acked = Rc::new(RefCell::new(Vec::new()));
        let next = Rc::new(Cell::new(0usize));
        let mut writers = Vec::new();
        for _ in 0..4 {
            let (c, keys, acked, next) = (c.clone(), keys.clone(), acked.clone(), next.clone());
            writers.push(glommio::spawn_local(async move {
                loop {
                    let i = next.get();
                    if i == keys.len() {
                        break;
                    }
                    next.set(i + 1);
                    if c.put(keys[i].as_bytes(), keys[i].as_bytes()).await.is_ok() {
                        acked.borrow_mut().push(keys[i].clone());
                    }
                }
            }));
        }
        let some_acked = &acked;
        eventually(
            "the first writes",
            Duration::from_secs(60),
            move || async move { (some_acked.borrow().len() >= 20).then_some(()) },
        )
        .await;
        c.move_replica(group, NodeId(1), to).await.unwrap();
        // A second move of the group is refused while this one runs.
        let refused = c.move_replica(group, NodeId(2), to).await;
        assert!(
            matches!(&refused, Err(nodedb_cluster::runtime::client::ClientError::Call(nodedb_cluster::client::call::CallError::Server(m))) if m.contains("already moving")),
            "{refused:?}"
        );
        let within = Duration::from_secs(60);
        let replicas = replicas_until(&c, "the new replica", within, group, |r| r.len() == 4).await;
        let new = ReplicaId(replicas.iter().find(|(_, a)| *a == to).unwrap().0);
        // The membership change completes without node 3.
        let client = &*c;
        eventually("the new replica as a voter", within, move || async move {
            match client.admin(group, KvOp::View { new }).await {
                Ok(KvReply::View(view))
                    if view.membership.voters.contains(&new)
                        && !view.membership.joint
                        && view.membership.voters.len() == 3 =>
                {
                    Some(())
                }
                _ => None,
            }
        })
        .await;
        for w in writers {
            w.await;
        }
        // Node 3 cannot confirm it knows the change: however many steps the executor
        // takes, the old replica stays in the table.
        let steps = || {
            executors
                .iter()
                .map(|m| m.core(0).counter(CoreCounter::MoveSteps))
                .sum::<u64>()
        };
        let start = steps();
        let (steps, client) = (&steps, &*c);
        eventually("ten executor steps", within, move || async move {
            let replicas = replicas_of(client, group).await;
            assert!(
                replicas.iter().any(|(_, a)| *a == from) && replicas.len() == 4,
                "the old replica must be kept while node 3 is down: {replicas:?}"
            );
            (steps() >= start + 10).then_some(())
        })
        .await;
        c.shutdown().await;
        let acked = acked.borrow().clone();
        (group, from, to, new, acked)
    });
    assert!(
        during.len() >= 250,
        "writes during the move: {} of 300 acknowledged",
        during.len()
    );

    let sample: Vec<String> = during.iter().take(20).cloned().collect();
    // Node 3 returns; the executor retires the old replica.
    nodes[2] = Some(h.start(3));
    with_client(&h, move |c| async move {
        let retired = |r: &[(u64, CoreAddress)]| r.len() == 3 && !r.iter().any(|(_, a)| *a == from);
        let within = Duration::from_secs(60);
        let replicas =
            replicas_until(&c, "the old replica's retirement", within, group, retired).await;
        assert!(replicas.contains(&(new.0, to)), "{replicas:?}");
        for k in before.iter().chain(&during) {
            assert_eq!(
                c.get(k.as_bytes()).await.unwrap(),
                Some(k.as_bytes().to_vec()),
                "{k}"
            );
        }
        c.put(b"move-after", b"1").await.unwrap();
        c.shutdown().await;
    });
    // Node 1's cores host what the table says: one replica fewer on the old core, one more
    // on the new (the old one was dropped from its core and its log).
    let hosted = |nodes: &[Option<Node>]| -> Vec<u64> {
        (0..CORES)
            .map(|c| replicas_on(nodes[0].as_ref().unwrap().metrics(), CoreId(c)))
            .collect()
    };
    let mut hosted_after = hosted_before.clone();
    hosted_after[usize::from(from.core.0)] -= 1;
    hosted_after[usize::from(to.core.0)] += 1;
    wait_until(
        "node 1 to host the moved replica's core change",
        Duration::from_secs(30),
        || hosted(&nodes) == hosted_after,
    );
    // Node 1 restarts: from its logs and its own metadata log it hosts the new replica on
    // the new core and not the old one. With node 2 down, the group's quorum needs that
    // recovered replica.
    nodes[0].take().unwrap().shutdown().unwrap();
    nodes[0] = Some(h.start(1));
    wait_until(
        "restarted node 1 to host as before",
        Duration::from_secs(30),
        || hosted(&nodes) == hosted_after,
    );
    nodes[1].take().unwrap().shutdown().unwrap();
    with_client(&h, move |c| async move {
        for k in &sample {
            assert_eq!(
                c.get(k.as_bytes()).await.unwrap(),
                Some(k.as_bytes().to_vec()),
                "{k}"
            );
        }
        let key = keys_in(&c, "move-restarted", group, 1).remove(0);
        c.put(key.as_bytes(), b"1").await.unwrap();
        c.shutdown().await;
    });
    h.stop(nodes.into_iter().flatten());
}

/// A node stopped and started again in the same process binds its ports again, also
/// while a throttled snapshot was streaming to it. Before `QuicEndpoint::shutdown`
/// released the port itself, tasks parked on the old connections kept the socket open for
/// the life of the process, and the restart failed with "address in use" (every time in
/// this test).
#[test]
fn a_node_restarts_in_the_same_process_right_after_it_stopped() {
    let h = Harness {
        snapshot_rate: Some(SNAPSHOT_TEST_RATE),
        ..Harness::named("restart")
    };
    let mut nodes: Vec<Option<Node>> = (1..=3).map(|n| Some(h.start(n))).collect();
    nodes[2].take().unwrap().shutdown().unwrap();
    // Enough writes to one group that node 3 can only catch up through a snapshot.
    with_client(&h, move |c| async move {
        let group = c.group_of(b"hot-0");
        let keys = compacting_keys(&c, "hot", group);
        let client = std::rc::Rc::new(c);
        put_all(&client, &keys).await;
        client.shutdown().await;
    });
    for round in 0..4 {
        let node = h.start(3);
        // Each core binds its port before its first loop turn, or fails.
        let (started, within) = (Instant::now(), Duration::from_secs(30));
        wait_until("the cores to start", within, || {
            node.failure().is_some()
                || (0..CORES).all(|c| node.metrics().core(c).counter(CoreCounter::LoopTurns) > 0)
        });
        assert_eq!(node.failure(), None, "round {round}");
        // Stop once the catch-up traffic has started, i.e. mid-transfer.
        wait_until("traffic", within.saturating_sub(started.elapsed()), || {
            node.metrics().total(CoreCounter::RaftMessagesIn) > 0
        });
        node.shutdown().unwrap();
    }
    h.stop(nodes.into_iter().flatten());
}

/// In a cluster of four nodes, the replica that leads a group moves to the node that does
/// not hold the group: it hands leadership over first, and a client that cached the old
/// table follows the old node's stale-epoch redirect (`Moved`) to the new table.
#[test]
fn a_leading_replica_moves_to_another_node_and_clients_follow_the_stale_epoch_redirect() {
    let h = Harness::sized("move-node", 4);
    let nodes: Vec<Node> = (1..=4).map(|n| h.start(n)).collect();
    let (spec, tls) = (h.spec.clone(), h.client_tls());
    with_client(&h, |c| async move {
        let keys: Vec<String> = (0..100).map(|i| format!("k-{i}")).collect();
        for k in &keys {
            c.put(k.as_bytes(), k.as_bytes()).await.unwrap();
        }
        // A second client caches the table and the group's leader before the move.
        let stale = KvClient::new(spec, tls, 1452).unwrap();
        assert_eq!(stale.get(b"k-0").await.unwrap(), Some(b"k-0".to_vec()));
        let stale_epoch = stale.routing_epoch().unwrap();
        let group = c.group_of(b"k-0");
        let (epoch, groups) = c.routing().await.unwrap();
        let replicas = groups.iter().find(|(g, _)| *g == group).unwrap().1.clone();
        assert_eq!(replicas.len(), 3);
        let leader = c.cached_leader(group).expect("the client knows the leader");
        let spare = (1..=4)
            .map(NodeId)
            .find(|n| !replicas.iter().any(|(_, a)| a.node == *n))
            .unwrap();
        let to = CoreAddress {
            node: spare,
            core: leader.core,
        };
        assert_eq!(stale.cached_leader(group), Some(leader));
        c.move_replica(group, leader.node, to).await.unwrap();
        let client = &c;
        let moved = eventually("the move", Duration::from_secs(60), move || async move {
            let (e, groups) = client.routing().await.unwrap();
            let now = &groups.iter().find(|(g, _)| *g == group).unwrap().1;
            if now.len() == 3 && !now.iter().any(|(_, a)| a.node == leader.node) {
                assert!(now.iter().any(|(_, a)| *a == to), "{now:?}");
                return Some(e);
            }
            // Writes go on during the move.
            client.put(b"k-0", b"during").await.unwrap();
            None
        })
        .await;
        assert!(
            moved >= epoch + 2,
            "start and end of the move each bump the epoch"
        );
        // The old node no longer hosts the group: a stale-epoch redirect, once its own
        // table has the move.
        let redirect = eventually(
            "a redirect from the old node",
            Duration::from_secs(30),
            move || async move {
                let key = b"k-0".to_vec();
                match client
                    .call_at(leader, group, KvOp::Get { key })
                    .await
                    .unwrap()
                {
                    KvReply::Moved { epoch } => Some(epoch),
                    _ => None,
                }
            },
        )
        .await;
        assert!(
            redirect >= moved,
            "redirect at epoch {redirect}, table at {moved}"
        );
        // The stale client asks the old node first, is redirected, fetches the new table
        // and reads from the group's new leader.
        assert_eq!(stale.get(b"k-0").await.unwrap(), Some(b"during".to_vec()));
        assert!(stale.routing_epoch().unwrap() > stale_epoch);
        assert_ne!(
            stale.cached_leader(group).map(|a| a.node),
            Some(leader.node)
        );
        for k in &keys[1..] {
            assert_eq!(
                c.get(k.as_bytes()).await.unwrap(),
                Some(k.as_bytes().to_vec())
            );
        }
        stale.shutdown().await;
        c.shutdown().await;
    });
    h.stop(nodes);
}

/// The metadata leader stops in the middle of a move: another node's executor resumes the
/// move from the table and finishes it. (The group's log is compacted and snapshots are
/// throttled, so the new replica needs seconds to catch up: the move cannot be over before
/// the leader stops.)
#[test]
fn a_new_metadata_leader_resumes_a_move_its_predecessor_started() {
    const METADATA_GROUP: GroupId = GroupId::METADATA;

    let mut h = Harness {
        snapshot_rate: Some(SNAPSHOT_TEST_RATE),
        ..Harness::sized("move-resume", 4)
    };
    // Sixteen groups of three replicas on four nodes: every node lacks some group.
    h.spec.groups = 16;
    let mut nodes: Vec<Option<Node>> = (1..=4).map(|n| Some(h.start(n))).collect();
    // A group the metadata leader holds no replica of, with a compacted log.
    let (group, meta_leader, from, to) = with_client(&h, |c| async move {
        let (_, groups) = c.routing().await.unwrap();
        let meta_leader = c.cached_leader(METADATA_GROUP).unwrap().node;
        let (group, replicas) = groups
            .iter()
            .find(|(_, r)| !r.iter().any(|(_, a)| a.node == meta_leader))
            .unwrap()
            .clone();
        let keys = compacting_keys(&c, "resume", group);
        let client = std::rc::Rc::new(c);
        put_all(&client, &keys).await;
        let from = replicas[0].1;
        let to = CoreAddress {
            node: from.node,
            core: CoreId((from.core.0 + 1) % CORES),
        };
        client.move_replica(group, from.node, to).await.unwrap();
        client.shutdown().await;
        (group, meta_leader, from, to)
    });
    let stopped = nodes[meta_leader.0 as usize - 1].take().unwrap();
    let ended_by_stopped = stopped.metrics().core(0).counter(CoreCounter::MovesEnded);
    stopped.shutdown().unwrap();
    assert_eq!(ended_by_stopped, 0, "the move was still under way");
    with_client(&h, move |c| async move {
        let done = |r: &[(u64, CoreAddress)]| r.len() == 3 && !r.iter().any(|(_, a)| *a == from);
        let now =
            replicas_until(&c, "the resumed move", Duration::from_secs(60), group, done).await;
        assert!(now.iter().any(|(_, a)| *a == to), "{now:?}");
        // The group serves from its new configuration, its data intact.
        for k in keys_in(&c, "resume", group, 100) {
            assert_eq!(
                c.get(k.as_bytes()).await.unwrap(),
                Some(k.clone().into_bytes()),
                "{k}"
            );
        }
        c.put(b"resume-after", b"1").await.unwrap();
        c.shutdown().await;
    });
    let ended: u64 = nodes
        .iter()
        .flatten()
        .map(|n| n.metrics().core(0).counter(CoreCounter::MovesEnded))
        .sum();
    assert_eq!(ended, 1, "another node's executor ended the move");
    h.stop(nodes.into_iter().flatten());
}

/// A move to a node that is down waits for it; an operator abandons it, and the executor
/// takes the new replica out of the group again and removes it from the table.
#[test]
fn a_move_to_a_node_that_is_down_is_abandoned_on_request() {
    let h = Harness::sized("move-abandon", 4);
    let mut nodes: Vec<Option<Node>> = (1..=4).map(|n| Some(h.start(n))).collect();
    // Group 4 starts on three of the four nodes; the spare stops.
    let group = GroupId(4);
    let before = with_client(&h, move |c| async move {
        let replicas = replicas_of(&c, group).await;
        c.shutdown().await;
        replicas
    });
    let spare = (1..=4)
        .map(NodeId)
        .find(|n| !before.iter().any(|(_, a)| a.node == *n))
        .expect("three replicas on four nodes leave a spare");
    let source = before[0].1.node;
    nodes[spare.0 as usize - 1]
        .take()
        .unwrap()
        .shutdown()
        .unwrap();
    with_client(&h, move |c| async move {
        let refused = c.abandon_move(group).await;
        assert!(
            matches!(&refused, Err(nodedb_cluster::runtime::client::ClientError::Call(nodedb_cluster::client::call::CallError::Server(m))) if m.contains("not moving")),
            "{refused:?}"
        );
        let to = CoreAddress {
            node: spare,
            core: CoreId(0),
        };
        c.move_replica(group, source, to).await.unwrap();
        assert_eq!(
            replicas_of(&c, group).await.len(),
            4,
            "the new replica is placed"
        );
        let moves = c.moves().await.unwrap();
        assert_eq!(moves.len(), 1, "{moves:?}");
        assert_eq!(
            (moves[0].0, moves[0].1.to, moves[0].1.abandon),
            (group, to, false)
        );
        // It cannot catch up while its node is down; the group keeps serving meanwhile.
        let key = keys_in(&c, "abandon", group, 1).remove(0);
        c.put(key.as_bytes(), b"1").await.unwrap();
        c.abandon_move(group).await.unwrap();
        let moves = c.moves().await.unwrap();
        assert!(
            moves.is_empty() || moves[0].1.abandon,
            "the move is being abandoned, or already was: {moves:?}"
        );
        replicas_until(
            &c,
            "the abandoned move",
            Duration::from_secs(60),
            group,
            |r| r == before.as_slice(),
        )
        .await;
        // Out of the configuration too: the leader's view no longer names it.
        let new = nodedb_cluster::ids::ReplicaId(nodedb_cluster::ids::ReplicaId::MOVED_FROM);
        match c.admin(group, KvOp::View { new }).await.unwrap() {
            KvReply::View(view) => {
                assert!(!view.membership.contains(new), "{view:?}");
                assert_eq!(view.membership.voters.len(), 3, "{view:?}");
            }
            other => panic!("{other:?}"),
        }
        c.put(key.as_bytes(), b"2").await.unwrap();
        assert_eq!(c.get(key.as_bytes()).await.unwrap(), Some(b"2".to_vec()));
        assert!(
            c.moves().await.unwrap().is_empty(),
            "no move left in the table"
        );
        c.shutdown().await;
    });
    h.stop(nodes.into_iter().flatten());
}

/// A bare QUIC client endpoint (no `KvClient`): tests that speak the wire protocol by hand.
fn raw_client_endpoint(tls: &TlsMode) -> nodedb_cluster::runtime::quic::QuicEndpoint {
    use nodedb_cluster::runtime::quic::{EndpointOptions, QuicEndpoint};
    QuicEndpoint::bind(EndpointOptions {
        bind: "127.0.0.1:0".parse().unwrap(),
        tls: tls.clone(),
        segmentation_offload: true,
        mtu: 1452,
        server: false,
    })
    .unwrap()
}

/// Bytes that are no request frame get an error frame back, not silence (the client would
/// otherwise wait out its timeout); the node keeps serving.
#[test]
fn a_malformed_request_is_answered_with_an_error_frame() {
    use nodedb_cluster::runtime::tls::{self, ALPN_CLIENT};
    use nodedb_cluster::wire::frame::FrameDecoder;
    use nodedb_cluster::wire::kv_rpc::KvResponseFrame;
    let h = Harness::sized("malformed", 1);
    let node = h.start(1);
    let addr = h.spec.address(NodeId(1), CoreId(0)).unwrap();
    let tls = h.client_tls();
    let answer = spawn_executor("hostile", CorePlacement::Unbound, move || async move {
        let endpoint = raw_client_endpoint(&tls);
        let conn = endpoint
            .connect(addr, &tls::node_server_name(NodeId(1)), &tls, ALPN_CLIENT)
            .await
            .unwrap();
        let (mut send, mut recv) = conn.open_bi().await.unwrap();
        send.write_all(b"GET / HTTP/1.1\r\n\r\nnot a frame")
            .await
            .unwrap();
        send.finish().unwrap();
        let mut decoder = FrameDecoder::new();
        let mut frame = None;
        while let Ok(Some(chunk)) = recv.read_chunk(usize::MAX).await {
            decoder.decode(&chunk, |f| frame = Some(f)).unwrap();
        }
        endpoint.shutdown().await;
        frame.map(|f| KvResponseFrame::decode(&f.payload).unwrap())
    })
    .unwrap()
    .join()
    .unwrap();
    let reply = answer.expect("an answer frame").reply;
    assert!(
        matches!(&reply, KvReply::Error(why) if why.contains("malformed request frame")),
        "{reply:?}"
    );
    assert!(node.failure().is_none());
    h.stop([node]);
}

/// One certificate may hold `CONNECTIONS_PER_IDENTITY_MAX` connections to a core; the next
/// is closed with the reason, and another certificate still gets in.
#[test]
fn one_certificate_cannot_take_every_connection() {
    use nodedb_cluster::constants::CONNECTIONS_PER_IDENTITY_MAX;
    use nodedb_cluster::runtime::tls::{self, ALPN_CLIENT, issue_client_cert};
    let h = Harness::sized("per-identity", 1);
    let node = h.start(1);
    let addr = h.spec.address(NodeId(1), CoreId(0)).unwrap();
    let tls = h.client_tls();
    let other = TlsMode::Mutual {
        ca_cert_pem: h.ca.cert_pem.clone(),
        identity: issue_client_cert(&h.ca, "other").unwrap(),
    };
    let (reason, other_ok) = spawn_executor("greedy", CorePlacement::Unbound, move || async move {
        let endpoint = raw_client_endpoint(&tls);
        let name = tls::node_server_name(NodeId(1));
        let mut held = Vec::new();
        for _ in 0..CONNECTIONS_PER_IDENTITY_MAX {
            held.push(
                endpoint
                    .connect(addr, &name, &tls, ALPN_CLIENT)
                    .await
                    .unwrap(),
            );
        }
        let extra = endpoint
            .connect(addr, &name, &tls, ALPN_CLIENT)
            .await
            .unwrap();
        let reason = format!("{}", extra.closed().await);
        // Served: a request on it is answered (an empty stream gets an error frame).
        let other_conn = endpoint
            .connect(addr, &name, &other, ALPN_CLIENT)
            .await
            .unwrap();
        let (mut send, mut recv) = other_conn.open_bi().await.unwrap();
        send.finish().unwrap();
        let mut answered = 0;
        while let Ok(Some(chunk)) = recv.read_chunk(usize::MAX).await {
            answered += chunk.len();
        }
        let other_ok = answered > 0;
        drop(held);
        endpoint.shutdown().await;
        (reason, other_ok)
    })
    .unwrap()
    .join()
    .unwrap();
    assert!(
        reason.contains("too many connections for this certificate"),
        "{reason}"
    );
    assert!(other_ok, "another certificate is still served");
    h.stop([node]);
}

/// Every core publishes its load to its node's load slots once per load tick: after writes,
/// the cores that lead groups report write rates, and together they lead every group.
#[test]
fn every_core_publishes_its_load_once_per_tick() {
    let h = Harness::named("load");
    let nodes: Vec<Node> = (1..=3).map(|n| h.start(n)).collect();
    with_client(&h, |c| async move {
        for i in 0..200u32 {
            c.put(format!("load-{i}").as_bytes(), &i.to_le_bytes())
                .await
                .unwrap();
        }
    });
    let records = || {
        nodes
            .iter()
            .flat_map(|n| (0..usize::from(CORES)).map(move |c| n.load().read(c).unwrap()))
            .collect::<Vec<_>>()
    };
    wait_until(
        "every group's leader reporting",
        Duration::from_secs(10),
        || {
            let r = records();
            r.iter().all(|r| r.generation > 0)
                && r.iter().map(|r| r.groups_led).sum::<u32>() == 8
                && r.iter().map(|r| r.writes_per_sec).sum::<f64>() > 1.0
        },
    );
    let all = records();
    for r in &all {
        assert!((0.0..=1.0).contains(&r.cpu_busy), "{r:?}");
        assert!(r.p99_latency_us >= r.p95_latency_us, "{r:?}");
    }
    assert_eq!(
        all.iter().map(|r| r.replicas).sum::<u32>(),
        24,
        "8 groups × 3 replicas"
    );
    h.stop(nodes);
}

/// The rebalancer in the nodes, end to end: three nodes, 60 % of the requests (four reads to
/// one write) on three groups one node leads; the coordinator's sweeps spread it (here by
/// leader transfers, as with three replicas on three nodes every node holds every group;
/// and between cores by copies) until node max / mean is within 1.15, within ten sweep
/// intervals of the load starting (sweeps kicked by a finished move come on top), with no
/// client error; every acknowledged write is readable afterwards.
#[test]
fn the_rebalancer_in_the_nodes_spreads_a_skewed_load() {
    // `RUST_LOG=nodedb_cluster::node::balancer=info` shows each move the coordinator starts.
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
    let mut h = Harness::named("rebalance");
    h.balance = BalanceConfig {
        interval: Duration::from_secs(2),
        report_interval: Duration::from_secs(1),
        ..BalanceConfig::default()
    };
    let nodes: Vec<Node> = (1..=3).map(|n| h.start(n)).collect();
    let outcome = with_client(&h, |c| async move {
        let c = std::rc::Rc::new(c);
        // Every group takes a write; the client's leader cache then knows each leader.
        for g in 1..=8 {
            let key = keys_in(&c, "ready", GroupId(g), 1).remove(0);
            eventually("a leader for every group", Duration::from_secs(30), || {
                let (c, key) = (c.clone(), key.clone());
                async move { c.put(key.as_bytes(), b"1").await.ok() }
            })
            .await;
        }
        let mut led: std::collections::BTreeMap<NodeId, Vec<u64>> = Default::default();
        for g in 1..=8 {
            let leader = c.cached_leader(GroupId(g)).unwrap();
            led.entry(leader.node).or_default().push(g);
        }
        // Three of the groups the busiest leader leads (with 8 groups on 3 nodes one leads at
        // least three): one hot group per node is a balanced placement. With four hot groups
        // of eight the best placement is about 1.15, the bound itself, and the test measured
        // the load's granularity rather than the rebalancer.
        let hot: Vec<u64> = led
            .values()
            .max_by_key(|g| g.len())
            .unwrap()
            .iter()
            .take(3)
            .copied()
            .collect();
        let keys: Vec<String> = (0..2_000).map(|i| format!("skew-{i}")).collect();
        let hot_keys: Vec<String> = keys
            .iter()
            .filter(|k| hot.contains(&c.group_of(k.as_bytes()).0))
            .cloned()
            .collect();
        let before = c.status().await.unwrap().stats;
        let stop = std::rc::Rc::new(std::cell::Cell::new(false));
        let acked = std::rc::Rc::new(std::cell::RefCell::new(std::collections::BTreeMap::<
            String,
            Vec<u8>,
        >::new()));
        let errors = std::rc::Rc::new(std::cell::Cell::new(0u64));
        let mut workers = Vec::new();
        for w in 0..12u64 {
            let (c, stop, acked, errors) = (c.clone(), stop.clone(), acked.clone(), errors.clone());
            // Each key has one writer, so its last acknowledged value is the one it holds.
            let own = |k: &String| k["skew-".len()..].parse::<u64>().unwrap() % 12 == w;
            let (keys, hot_keys): (Vec<String>, Vec<String>) = (
                keys.iter().filter(|k| own(k)).cloned().collect(),
                hot_keys.iter().filter(|k| own(k)).cloned().collect(),
            );
            workers.push(glommio::spawn_local(async move {
                let mut rng = nodedb_cluster::rng::Rng::new(w);
                let mut n = 0u64;
                while !stop.get() {
                    let pool = if rng.below(10) < 6 { &hot_keys } else { &keys };
                    let key = &pool[rng.below(pool.len() as u64) as usize];
                    // Four reads to one write: a write costs every replica, a read only the
                    // leader, so reads are what a leader transfer can spread.
                    if rng.below(5) == 0 {
                        n += 1;
                        let value = format!("w{w}-{n}").into_bytes();
                        match c.put(key.as_bytes(), &value).await {
                            Ok(()) => {
                                acked.borrow_mut().insert(key.clone(), value);
                            }
                            Err(_) => errors.set(errors.get() + 1),
                        }
                    } else if c.get(key.as_bytes()).await.is_err() {
                        errors.set(errors.get() + 1);
                    }
                }
            }));
        }
        // Skewed first, then balanced for three samples in a row.
        let mut initial: f64 = 0.0;
        let mut calm = 0;
        let mut first_move: Option<Instant> = None;
        let deadline = Instant::now() + Duration::from_secs(90);
        let converged = loop {
            if Instant::now() > deadline {
                let last = c.status().await;
                panic!(
                    "node max / mean not within 1.15 after 90 s (initial {initial:.3}): {last:?}"
                );
            }
            glommio::timer::sleep(Duration::from_millis(250)).await;
            let Ok(status) = c.status().await else {
                continue;
            };
            // Moves since the load began: one made while the cluster started (before the
            // load) would end the window for the initial skew before the load was reported.
            let moves = (status.stats.leader_transfers_started
                + status.stats.replica_moves_started)
                .saturating_sub(before.leader_transfers_started + before.replica_moves_started);
            if moves > 0 {
                first_move.get_or_insert_with(Instant::now);
            }
            // Reports lag the load by up to a report interval: the samples right after the
            // first move still show the load it answered.
            if first_move.is_none_or(|t| t.elapsed() <= Duration::from_secs(1)) {
                initial = initial.max(status.node_max_over_mean);
            }
            let fresh = status.nodes.iter().all(|n| n.fresh);
            let balanced = status.node_max_over_mean > 0.0 && status.node_max_over_mean <= 1.15;
            calm = if moves > 0 && fresh && balanced {
                calm + 1
            } else {
                0
            };
            if calm >= 3 {
                break status;
            }
        };
        stop.set(true);
        for w in workers {
            w.await;
        }
        // Every acknowledged write reads back: each key holds its last acknowledged value.
        let acked = acked.borrow().clone();
        let mut unreadable = 0;
        for (key, value) in &acked {
            if c.get(key.as_bytes()).await.unwrap().as_ref() != Some(value) {
                unreadable += 1;
            }
        }
        (
            initial,
            converged,
            before,
            errors.get(),
            acked.len(),
            unreadable,
        )
    });
    let (initial, status, before, errors, acked, unreadable) = outcome;
    // What the rebalancer itself answered counts too: samples from outside may miss it.
    let initial = initial.max(status.stats.worst_planned_node_max_over_mean);
    let sweeps = status.stats.sweeps - before.sweeps;
    // Sweeps kicked by a finished move (a copy between cores ends in well under a second
    // here) or a hot report come on top of the interval's: the bound counts intervals.
    let kicked = status.stats.kicked_sweeps - before.kicked_sweeps;
    let moves = (status.stats.leader_transfers_started + status.stats.replica_moves_started)
        .saturating_sub(before.leader_transfers_started + before.replica_moves_started);
    eprintln!(
        "initial node max/mean {initial:.3}, converged to {:.3} after {sweeps} sweeps ({kicked} kicked), {moves} moves ({} before the load), {acked} keys written",
        status.node_max_over_mean,
        before.leader_transfers_started + before.replica_moves_started
    );
    // Steady state of this load is about 1.7 (reads 0.8 of the requests, 0.75 of them to the
    // hot node's groups; writes count on every replica). The coordinator may act on the
    // first reports of the load step, so the bound leaves a margin.
    assert!(initial > 1.25, "the load was not skewed: {initial}");
    assert!(moves > 0, "the rebalancer moved nothing: {status:?}");
    assert!(
        sweeps - kicked <= 10,
        "took {sweeps} sweeps, {kicked} of them kicked: {status:?}"
    );
    assert_eq!(errors, 0, "client errors during the moves");
    assert!(acked > 100, "the load wrote {acked} keys");
    assert_eq!(unreadable, 0, "acknowledged writes missing");
    h.stop(nodes);
}
