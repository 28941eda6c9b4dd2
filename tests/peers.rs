//! Peer connections: control frames queued during a loop turn leave in one write per peer
//! on one long-lived control stream, in order; bulk streams are separate; an unreachable
//! peer is backed off and then failed fast by its circuit breaker.

use std::cell::RefCell;
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::Duration;

use nodedb_cluster::client::peer_health::BreakerState;
use nodedb_cluster::ids::{CoreAddress, CoreId, NodeId};
use nodedb_cluster::runtime::executor::{CorePlacement, spawn_executor};
use nodedb_cluster::runtime::peers::{
    ClusterShape, Hello, PeerError, Peers, StreamClass, receive_streams,
};
use nodedb_cluster::runtime::quic::{EndpointOptions, QuicEndpoint};
use nodedb_cluster::runtime::tls::{CertifiedKeyPem, TlsMode, generate_ca, issue_node_cert};
use nodedb_cluster::wire::frame::FrameKind;

fn node_tls(ca: &CertifiedKeyPem, node: u64) -> TlsMode {
    let identity = issue_node_cert(ca, NodeId(node), &["127.0.0.1".into()]).unwrap();
    TlsMode::Mutual {
        ca_cert_pem: ca.cert_pem.clone(),
        identity,
    }
}

fn endpoint(tls: TlsMode) -> QuicEndpoint {
    QuicEndpoint::bind(EndpointOptions {
        bind: "127.0.0.1:0".parse().unwrap(),
        tls,
        segmentation_offload: true,
        mtu: 1452,
        server: true,
    })
    .unwrap()
}

const A: CoreAddress = CoreAddress {
    node: NodeId(1),
    core: CoreId(0),
};
const B: CoreAddress = CoreAddress {
    node: NodeId(2),
    core: CoreId(3),
};

type Received = Rc<RefCell<Vec<(CoreAddress, StreamClass, u32)>>>;

#[test]
fn batched_control_frames_arrive_in_order_on_one_stream_per_peer() {
    let ca = generate_ca("test").unwrap();
    let (tls_a, tls_b) = (node_tls(&ca, 1), node_tls(&ca, 2));
    let received = spawn_executor("peers-test", CorePlacement::Unbound, move || async move {
        let node_b = endpoint(tls_b);
        let b_addr: SocketAddr = node_b.local_addr().unwrap();
        let received: Received = Rc::default();
        let sink = received.clone();
        let server = node_b.clone();
        glommio::spawn_local(async move {
            while let Some(conn) = server.accept().await {
                let sink = sink.clone();
                glommio::spawn_local(receive_streams(
                    conn,
                    ClusterShape::default(),
                    move |peer, class, frame| {
                        let n = u32::from_le_bytes(frame.payload[..4].try_into().unwrap());
                        sink.borrow_mut().push((peer, class, n));
                    },
                ))
                .detach();
            }
        })
        .detach();

        let peers = Peers::new(endpoint(tls_a.clone()), tls_a, A);
        peers.add_peer(B, b_addr);
        peers.connect(B).await.unwrap();
        for turn in 0..10u32 {
            for i in 0..100u32 {
                peers
                    .queue(B, FrameKind::RaftBatch, &(turn * 100 + i).to_le_bytes())
                    .unwrap();
            }
            assert!(peers.flush().await.is_empty());
        }
        let mut bulk = peers.open_bulk(B).await.unwrap();
        let mut chunk = Vec::new();
        nodedb_cluster::wire::frame::encode_frame(
            FrameKind::BulkChunk,
            0,
            &7777u32.to_le_bytes(),
            &mut chunk,
        )
        .unwrap();
        bulk.write_all(&chunk).await.unwrap();
        bulk.finish().unwrap();
        // Wait (bounded) until everything arrived.
        for _ in 0..2000 {
            if received.borrow().len() == 1001 {
                break;
            }
            glommio::timer::sleep(Duration::from_millis(5)).await;
        }
        let stats = peers.stats();
        assert_eq!(stats.connect_attempts, 1, "one connection, reused");
        assert_eq!(stats.control_writes, 10, "one write per peer per flush");
        assert_eq!(stats.frames_queued, 1000);
        node_b.shutdown().await;
        received.take()
    })
    .unwrap()
    .join()
    .unwrap();
    assert_eq!(received.len(), 1001);
    let control: Vec<u32> = received
        .iter()
        .filter(|(_, class, _)| *class == StreamClass::Control)
        .map(|(_, _, n)| *n)
        .collect();
    assert_eq!(control, (0..1000).collect::<Vec<_>>(), "in order");
    assert!(
        received.iter().all(|(peer, _, _)| *peer == A),
        "the hello names the sender"
    );
    assert!(received.contains(&(A, StreamClass::Bulk, 7777)));
}

#[test]
fn an_unreachable_peer_is_backed_off_then_failed_fast() {
    let ca = generate_ca("test").unwrap();
    let tls_a = node_tls(&ca, 1);
    spawn_executor("peers-down", CorePlacement::Unbound, move || async move {
        // A bound socket that never answers: connection attempts time out.
        let silent = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let peers = Peers::new(endpoint(tls_a.clone()), tls_a, A);
        peers.set_connect_timeout(Duration::from_millis(50));
        peers.add_peer(B, silent.local_addr().unwrap());
        assert!(matches!(
            peers.queue(
                CoreAddress {
                    node: NodeId(9),
                    core: CoreId(0)
                },
                FrameKind::Ping,
                b""
            ),
            Err(PeerError::UnknownPeer(_))
        ));
        let mut saw_backoff = false;
        // Bounded: five timeouts plus backoffs of 0.1 + 0.2 + 0.4 + 0.8 s.
        for _ in 0..2000 {
            peers.queue(B, FrameKind::Ping, b"ping").unwrap();
            let failures = peers.flush().await;
            assert_eq!(failures.len(), 1);
            match &failures[0].1 {
                PeerError::Unavailable {
                    why: "backing off", ..
                } => saw_backoff = true,
                PeerError::Unavailable {
                    why: "circuit breaker open",
                    ..
                } => break,
                // The attempt runs in the background; flushing never waits for it.
                PeerError::Unavailable {
                    why: "connecting", ..
                } => {}
                other => panic!("unexpected {other}"),
            }
            glommio::timer::sleep(Duration::from_millis(10)).await;
        }
        assert!(saw_backoff);
        assert!(matches!(
            peers.health(B).unwrap().state(),
            BreakerState::Open { .. }
        ));
        let attempts = peers.stats().connect_attempts;
        assert_eq!(attempts, 5, "the breaker opened after five failed attempts");
        // While open, sends fail fast without new attempts.
        peers.queue(B, FrameKind::Ping, b"ping").unwrap();
        assert!(matches!(
            peers.flush().await[0].1,
            PeerError::Unavailable { .. }
        ));
        assert_eq!(peers.stats().connect_attempts, attempts);
        assert!(peers.stats().frames_dropped >= 6);
    })
    .unwrap()
    .join()
    .unwrap();
}

/// A peer that was given up on (breaker open) and then is heard from again is reached at
/// once, not after the cool-down: a node restarted within a few seconds must be able to vote.
#[test]
fn a_peer_heard_from_again_is_reconnected_before_its_cool_down_ends() {
    let ca = generate_ca("test").unwrap();
    let (tls_a, tls_b) = (node_tls(&ca, 1), node_tls(&ca, 2));
    spawn_executor("peers-back", CorePlacement::Unbound, move || async move {
        let silent = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let peers = Peers::new(endpoint(tls_a.clone()), tls_a, A);
        peers.set_connect_timeout(Duration::from_millis(50));
        peers.add_peer(B, silent.local_addr().unwrap());
        for _ in 0..2000 {
            peers.queue(B, FrameKind::Ping, b"ping").unwrap();
            peers.flush().await;
            if matches!(peers.health(B).unwrap().state(), BreakerState::Open { .. }) {
                break;
            }
            glommio::timer::sleep(Duration::from_millis(10)).await;
        }
        assert!(matches!(
            peers.health(B).unwrap().state(),
            BreakerState::Open { .. }
        ));
        // B comes back (at a new address here) and its first message reaches A.
        let (node_b, b_addr, delivered) = counting_receiver(tls_b);
        peers.add_peer(B, b_addr);
        peers.queue(B, FrameKind::Ping, b"ping").unwrap();
        assert!(
            matches!(peers.flush().await[0].1, PeerError::Unavailable { .. }),
            "still open: nothing was heard from B yet"
        );
        peers.heard_from(B, 7);
        assert_eq!(peers.health(B).unwrap().state(), BreakerState::Closed);
        // Well inside the 10 s cool-down, the next sends get through.
        for _ in 0..500 {
            peers.queue(B, FrameKind::Ping, b"ping").unwrap();
            peers.flush().await;
            if *delivered.borrow() > 0 {
                break;
            }
            glommio::timer::sleep(Duration::from_millis(10)).await;
        }
        assert!(
            *delivered.borrow() > 0,
            "a frame reached B after it was heard from"
        );
        node_b.shutdown().await;
    })
    .unwrap()
    .join()
    .unwrap();
}

/// A peer whose process restarted (a new incarnation in its `Hello`) is reached on a new
/// connection at once: the old one leads to a process that is gone, and would be noticed
/// only at the QUIC idle timeout (30 s) while every frame sent on it is lost. The same
/// incarnation keeps the connection.
#[test]
fn a_restarted_peer_gets_a_new_connection_at_once() {
    let ca = generate_ca("test").unwrap();
    let (tls_a, tls_b) = (node_tls(&ca, 1), node_tls(&ca, 2));
    spawn_executor(
        "peers-restart",
        CorePlacement::Unbound,
        move || async move {
            let (node_b, b_addr, delivered) = counting_receiver(tls_b);
            let peers = Peers::new(endpoint(tls_a.clone()), tls_a, A);
            peers.add_peer(B, b_addr);
            peers.heard_from(B, 1);
            let mut sent = 0;
            let mut send_and_wait = async |peers: &Peers| {
                sent += 1;
                for _ in 0..500 {
                    peers.queue(B, FrameKind::Ping, b"ping").unwrap();
                    peers.flush().await;
                    if *delivered.borrow() >= sent {
                        return;
                    }
                    glommio::timer::sleep(Duration::from_millis(10)).await;
                }
                panic!("no frame reached B");
            };
            send_and_wait(&peers).await;
            assert_eq!(peers.stats().connect_attempts, 1);
            peers.heard_from(B, 1);
            send_and_wait(&peers).await;
            assert_eq!(
                peers.stats().connect_attempts,
                1,
                "same incarnation: same connection"
            );
            peers.heard_from(B, 2);
            send_and_wait(&peers).await;
            assert_eq!(
                peers.stats().connect_attempts,
                2,
                "a restart: a new connection"
            );
            node_b.shutdown().await;
        },
    )
    .unwrap()
    .join()
    .unwrap();
}

/// Node 2's endpoint (on the calling executor), receiving peer connections with
/// `receive_streams` and counting the frames that reach the handler.
fn counting_receiver(tls: TlsMode) -> (QuicEndpoint, SocketAddr, Rc<RefCell<usize>>) {
    let node_b = endpoint(tls);
    let b_addr = node_b.local_addr().unwrap();
    let delivered = Rc::new(RefCell::new(0usize));
    let sink = delivered.clone();
    let server = node_b.clone();
    glommio::spawn_local(async move {
        while let Some(conn) = server.accept().await {
            let sink = sink.clone();
            glommio::spawn_local(receive_streams(
                conn,
                ClusterShape::default(),
                move |_, _, _| *sink.borrow_mut() += 1,
            ))
            .detach();
        }
    })
    .detach();
    (node_b, b_addr, delivered)
}

#[test]
fn a_stream_of_bad_bytes_closes_the_connection_and_reaches_no_handler() {
    use nodedb_cluster::runtime::tls::{self, ALPN_PEER};
    let ca = generate_ca("test").unwrap();
    let (tls_a, tls_b) = (node_tls(&ca, 1), node_tls(&ca, 2));
    spawn_executor("peers-bad", CorePlacement::Unbound, move || async move {
        let (node_b, b_addr, delivered) = counting_receiver(tls_b);
        let node_a = endpoint(tls_a.clone());
        let conn = node_a
            .connect(b_addr, &tls::node_server_name(NodeId(2)), &tls_a, ALPN_PEER)
            .await
            .unwrap();
        let mut stream = conn.open_uni().await.unwrap();
        stream
            .write_all(b"GET / HTTP/1.1\r\n\r\n not our protocol at all")
            .await
            .unwrap();
        stream.finish().unwrap();
        let reason = conn.closed().await;
        assert!(format!("{reason}").contains("bad frame magic"), "{reason}");
        assert_eq!(*delivered.borrow(), 0);
        node_b.shutdown().await;
        node_a.shutdown().await;
    })
    .unwrap()
    .join()
    .unwrap();
}

/// Sends one stream from `sender` to node 2's endpoint, which receives with
/// `receive_streams`: a `Hello` claiming `claimed`, then one control frame. Returns why the
/// connection was closed and how many frames reached the handler.
fn claim_on_the_peer_protocol(
    ca: &CertifiedKeyPem,
    sender: TlsMode,
    claimed: CoreAddress,
) -> (String, usize) {
    claim_shape_on_the_peer_protocol(ca, sender, claimed, ClusterShape::default())
}

/// Like `claim_on_the_peer_protocol`, the `Hello` naming the cluster `shape` (node 2
/// expects the default one).
fn claim_shape_on_the_peer_protocol(
    ca: &CertifiedKeyPem,
    sender: TlsMode,
    claimed: CoreAddress,
    shape: ClusterShape,
) -> (String, usize) {
    use nodedb_cluster::runtime::tls::{self, ALPN_PEER};
    use nodedb_cluster::wire::frame::encode_frame;
    let tls_b = node_tls(ca, 2);
    spawn_executor("peers-claim", CorePlacement::Unbound, move || async move {
        let (node_b, b_addr, delivered) = counting_receiver(tls_b);
        let from = endpoint(sender.clone());
        let conn = from
            .connect(
                b_addr,
                &tls::node_server_name(NodeId(2)),
                &sender,
                ALPN_PEER,
            )
            .await
            .unwrap();
        let hello = Hello {
            from: claimed,
            class: StreamClass::Control,
            shape,
            incarnation: 1,
        };
        let mut bytes = Vec::new();
        encode_frame(FrameKind::Hello, 0, &hello.encode(), &mut bytes).unwrap();
        encode_frame(FrameKind::RaftBatch, 0, b"forged", &mut bytes).unwrap();
        if let Ok(mut stream) = conn.open_uni().await {
            let _ = stream.write_all(&bytes).await;
            let _ = stream.finish();
        }
        // Either the receiver closes the connection, or the frame arrives.
        let arrived = async {
            while *delivered.borrow() == 0 {
                glommio::timer::sleep(Duration::from_millis(5)).await;
            }
            String::from("open")
        };
        let closed = async { format!("{}", conn.closed().await) };
        let reason = futures_lite::future::or(closed, arrived).await;
        let n = *delivered.borrow();
        node_b.shutdown().await;
        from.shutdown().await;
        (reason, n)
    })
    .unwrap()
    .join()
    .unwrap()
}

#[test]
fn a_client_or_admin_certificate_on_the_peer_protocol_is_refused() {
    use nodedb_cluster::runtime::tls::{issue_admin_cert, issue_client_cert};
    let ca = generate_ca("test").unwrap();
    for identity in [
        issue_client_cert(&ca, "node-1").unwrap(),
        issue_admin_cert(&ca, "ops").unwrap(),
    ] {
        let sender = TlsMode::Mutual {
            ca_cert_pem: ca.cert_pem.clone(),
            identity,
        };
        let (reason, delivered) = claim_on_the_peer_protocol(&ca, sender, A);
        assert!(reason.contains("needs a node certificate"), "{reason}");
        assert_eq!(delivered, 0, "no frame reached the handler");
    }
}

#[test]
fn a_node_that_claims_another_node_in_its_hello_is_refused() {
    let ca = generate_ca("test").unwrap();
    let claimed = CoreAddress {
        node: NodeId(3),
        core: CoreId(0),
    };
    let (reason, delivered) = claim_on_the_peer_protocol(&ca, node_tls(&ca, 1), claimed);
    assert!(reason.contains("hello claims node n3"), "{reason}");
    assert_eq!(delivered, 0);
    // Claiming itself, node 1 gets its frame through.
    let (_, delivered) = claim_on_the_peer_protocol(&ca, node_tls(&ca, 1), A);
    assert_eq!(delivered, 1);
}

#[test]
fn a_node_of_another_cluster_or_groups_count_is_refused() {
    let ca = generate_ca("test").unwrap();
    for shape in [
        ClusterShape {
            cluster: 7,
            groups: 0,
        },
        ClusterShape {
            cluster: 0,
            groups: 8,
        },
    ] {
        let (reason, delivered) = claim_shape_on_the_peer_protocol(&ca, node_tls(&ca, 1), A, shape);
        assert!(reason.contains("the peer's cluster is"), "{reason}");
        assert_eq!(delivered, 0, "no frame reached the handler");
    }
}
