//! Thread-per-core transport: two nodes of two cores each, every core with its own QUIC
//! endpoint on `base_port + core`, each core of node 1 talking to the same core of node 2.

use std::net::SocketAddr;
use std::sync::mpsc;
use std::time::Duration;

use nodedb_cluster::ids::{CoreAddress, CoreId, NodeId};
use nodedb_cluster::runtime::cores::{CoreLayout, CoreRuntime, CoreRuntimeConfig};
use nodedb_cluster::runtime::demo::free_base_port;
use nodedb_cluster::runtime::peers::{ClusterShape, Peers, StreamClass, receive_streams};
use nodedb_cluster::runtime::quic::{EndpointOptions, QuicEndpoint};
use nodedb_cluster::runtime::tls::{TlsMode, generate_ca, issue_node_cert};
use nodedb_cluster::wire::frame::FrameKind;

const CORES: u16 = 2;
const FRAMES: u32 = 200;

fn addr(base: u16, core: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], base + core))
}

#[test]
fn each_core_owns_an_endpoint_and_reaches_its_peer_core() {
    let ca = generate_ca("test").unwrap();
    let tls = |node| TlsMode::Mutual {
        ca_cert_pem: ca.cert_pem.clone(),
        identity: issue_node_cert(&ca, NodeId(node), &["127.0.0.1".into()]).unwrap(),
    };
    let (tls1, tls2) = (tls(1), tls(2));
    let (base1, base2) = (
        free_base_port(CORES).unwrap(),
        free_base_port(CORES).unwrap(),
    );
    let (report_tx, report_rx) = mpsc::channel::<(u16, CoreAddress, u32)>();

    // Node 2: every core serves its endpoint and reports what it receives.
    let config2 = CoreRuntimeConfig {
        name: "node-2".into(),
        cores: CORES,
        layout: CoreLayout::Unbound,
    };
    let node2 = CoreRuntime::start(
        &config2,
        move |ctx: nodedb_cluster::runtime::cores::CoreContext<()>| {
            let (tls, report) = (tls2.clone(), report_tx.clone());
            async move {
                let core = ctx.core().0;
                let options = EndpointOptions {
                    bind: addr(base2, core),
                    tls,
                    segmentation_offload: true,
                    mtu: 1452,
                    server: true,
                };
                let endpoint = QuicEndpoint::bind(options).unwrap();
                let server = endpoint.clone();
                glommio::spawn_local(async move {
                    while let Some(conn) = server.accept().await {
                        let report = report.clone();
                        glommio::spawn_local(receive_streams(
                            conn,
                            ClusterShape::default(),
                            move |peer, class, frame| {
                                assert_eq!(class, StreamClass::Control);
                                let n = u32::from_le_bytes(frame.payload[..4].try_into().unwrap());
                                report.send((core, peer, n)).unwrap();
                            },
                        ))
                        .detach();
                    }
                })
                .detach();
                ctx.recv().await; // until shutdown
                endpoint.shutdown().await;
            }
        },
    )
    .unwrap();

    // Node 1: every core sends FRAMES frames to the same core of node 2.
    let config1 = CoreRuntimeConfig {
        name: "node-1".into(),
        cores: CORES,
        layout: CoreLayout::Unbound,
    };
    let node1 = CoreRuntime::start(
        &config1,
        move |ctx: nodedb_cluster::runtime::cores::CoreContext<()>| {
            let tls = tls1.clone();
            async move {
                let core = ctx.core().0;
                let options = EndpointOptions {
                    bind: addr(base1, core),
                    tls: tls.clone(),
                    segmentation_offload: true,
                    mtu: 1452,
                    server: true,
                };
                let endpoint = QuicEndpoint::bind(options).unwrap();
                assert_eq!(
                    endpoint.local_addr().unwrap().port(),
                    base1 + core,
                    "core i binds base_port + i"
                );
                let peers = Peers::new(
                    endpoint.clone(),
                    tls,
                    CoreAddress {
                        node: NodeId(1),
                        core: CoreId(core),
                    },
                );
                let target = CoreAddress {
                    node: NodeId(2),
                    core: CoreId(core),
                };
                peers.add_peer(target, addr(base2, core));
                peers.connect(target).await.unwrap();
                for i in 0..FRAMES {
                    peers
                        .queue(target, FrameKind::RaftBatch, &i.to_le_bytes())
                        .unwrap();
                    if i % 50 == 49 {
                        assert!(peers.flush().await.is_empty());
                    }
                }
                ctx.recv().await; // until shutdown
                endpoint.shutdown().await;
            }
        },
    )
    .unwrap();

    let mut per_core = vec![Vec::new(); CORES as usize];
    for _ in 0..FRAMES * u32::from(CORES) {
        let (core, from, n) = report_rx
            .recv_timeout(Duration::from_secs(30))
            .expect("every frame arrives");
        assert_eq!(
            from,
            CoreAddress {
                node: NodeId(1),
                core: CoreId(core)
            },
            "core i talks to core i"
        );
        per_core[core as usize].push(n);
    }
    for frames in &per_core {
        assert_eq!(frames, &(0..FRAMES).collect::<Vec<_>>());
    }
    node1.shutdown().unwrap();
    node2.shutdown().unwrap();
}
