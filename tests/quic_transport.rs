//! Two nodes in one process exchange frames over real QUIC on loopback with mTLS; peers
//! with certificates from another CA, and clients without one, are refused; the insecure
//! mode works only when asked for.

use std::net::SocketAddr;
use std::time::Duration;

use nodedb_cluster::ids::NodeId;
use nodedb_cluster::runtime::executor::{CorePlacement, spawn_executor};
use nodedb_cluster::runtime::quic::{EndpointOptions, QuicEndpoint, TransportError};
use nodedb_cluster::runtime::tls::{
    self, ALPN_CLIENT, ALPN_PEER, CertifiedKeyPem, TlsMode, generate_ca, issue_client_cert,
    issue_node_cert,
};
use nodedb_cluster::wire::frame::{FrameDecoder, FrameKind, encode_frame};

fn mutual(ca: &CertifiedKeyPem, identity: CertifiedKeyPem) -> TlsMode {
    TlsMode::Mutual {
        ca_cert_pem: ca.cert_pem.clone(),
        identity,
    }
}

fn node_tls(ca: &CertifiedKeyPem, node: u64) -> TlsMode {
    mutual(
        ca,
        issue_node_cert(ca, NodeId(node), &["127.0.0.1".into()]).unwrap(),
    )
}

fn options(tls: TlsMode, server: bool) -> EndpointOptions {
    EndpointOptions {
        bind: "127.0.0.1:0".parse().unwrap(),
        tls,
        segmentation_offload: true,
        mtu: 1452,
        server,
    }
}

/// Runs `test` on a fresh unbound executor and returns its result.
fn on_executor<T: Send + 'static, F: Future<Output = T> + 'static>(
    make: impl FnOnce() -> F + Send + 'static,
) -> T {
    spawn_executor("quic-test", CorePlacement::Unbound, make)
        .unwrap()
        .join()
        .unwrap()
}

/// Frames received on every uni stream of the first accepted connection.
async fn serve_frames(server: QuicEndpoint, expected_streams: usize) -> Vec<Vec<u8>> {
    let conn = server.accept().await.expect("a connection");
    assert_eq!(conn.alpn().as_deref(), Some(ALPN_PEER));
    assert!(
        !conn.peer_certificates().is_empty(),
        "mTLS: the peer presented its certificate"
    );
    let mut payloads = Vec::new();
    for _ in 0..expected_streams {
        let mut stream = conn.accept_uni().await.unwrap();
        let mut decoder = FrameDecoder::new();
        while let Some(chunk) = stream.read_chunk(64 * 1024).await.unwrap() {
            decoder
                .decode(&chunk, |f| payloads.push(f.payload))
                .unwrap();
        }
        assert!(decoder.is_idle());
    }
    payloads
}

#[test]
fn two_nodes_exchange_frames_over_mutual_tls() {
    let ca = generate_ca("test").unwrap();
    let (tls_a, tls_b) = (node_tls(&ca, 1), node_tls(&ca, 2));
    let payloads = on_executor(move || async move {
        let server = QuicEndpoint::bind(options(tls_a, true)).unwrap();
        let addr = server.local_addr().unwrap();
        let client = QuicEndpoint::bind(options(tls_b.clone(), true)).unwrap();
        let served = glommio::spawn_local(serve_frames(server.clone(), 2));
        let conn = client
            .connect(addr, &tls::node_server_name(NodeId(1)), &tls_b, ALPN_PEER)
            .await
            .unwrap();
        for stream_no in 0..2u8 {
            let mut stream = conn.open_uni().await.unwrap();
            let mut batch = Vec::new();
            for i in 0..100u32 {
                let payload = vec![stream_no; (i as usize * 97) % 5000];
                encode_frame(FrameKind::Message, 0, &payload, &mut batch).unwrap();
            }
            stream.write_all(&batch).await.unwrap();
            stream.finish().unwrap();
        }
        let payloads = served.await;
        let stats = client.stats();
        assert!(stats.datagrams_sent > 0 && !stats.insecure);
        client.shutdown().await;
        server.shutdown().await;
        payloads
    });
    assert_eq!(payloads.len(), 200);
    for (i, p) in payloads.iter().enumerate() {
        assert_eq!(p.len(), ((i % 100) * 97) % 5000, "frame {i}");
    }
}

/// A connection an endpoint opened and nobody holds any more is closed, on both sides:
/// a client whose callers raced to connect (each opening one, one kept) left the others
/// open, held by keep-alives, and every turn of both endpoints' drivers polled them.
#[test]
fn a_connection_nobody_holds_is_closed_on_both_sides() {
    use futures_lite::future;
    let ca = generate_ca("test").unwrap();
    let (tls_a, tls_b) = (node_tls(&ca, 1), node_tls(&ca, 2));
    let (closed, left, received) = on_executor(move || async move {
        let server = QuicEndpoint::bind(options(tls_a, true)).unwrap();
        let addr = server.local_addr().unwrap();
        let client = QuicEndpoint::bind(options(tls_b.clone(), true)).unwrap();
        let accepted = glommio::spawn_local({
            let server = server.clone();
            async move {
                [
                    server.accept().await.unwrap(),
                    server.accept().await.unwrap(),
                ]
            }
        });
        let name = tls::node_server_name(NodeId(1));
        let kept = client
            .connect(addr, &name, &tls_b, ALPN_PEER)
            .await
            .unwrap();
        let unused = client
            .connect(addr, &name, &tls_b, ALPN_PEER)
            .await
            .unwrap();
        let on_server = accepted.await;
        assert_eq!(client.stats().connections, 2);
        drop(unused);
        // One of the server's two connections closes, within a bound: which one?
        let closed = future::or(
            future::or(async { Some((0, on_server[0].closed().await)) }, async {
                Some((1, on_server[1].closed().await))
            }),
            async {
                glommio::timer::sleep(Duration::from_secs(10)).await;
                None
            },
        )
        .await;
        // The client endpoint forgets it once drained.
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while client.stats().connections > 1 && std::time::Instant::now() < deadline {
            glommio::timer::sleep(Duration::from_millis(10)).await;
        }
        let left = client.stats().connections;
        // The other one still carries frames.
        let mut received = Vec::new();
        if let Some((index, _)) = closed {
            let mut stream = kept.open_uni().await.unwrap();
            let mut batch = Vec::new();
            encode_frame(FrameKind::Message, 0, b"still here", &mut batch).unwrap();
            stream.write_all(&batch).await.unwrap();
            stream.finish().unwrap();
            let mut incoming = on_server[1 - index].accept_uni().await.unwrap();
            let mut decoder = FrameDecoder::new();
            while let Some(chunk) = incoming.read_chunk(4096).await.unwrap() {
                decoder
                    .decode(&chunk, |f| received.push(f.payload))
                    .unwrap();
            }
        }
        client.shutdown().await;
        server.shutdown().await;
        (closed.is_some(), left, received)
    });
    assert!(closed, "the server never saw the unused connection close");
    assert_eq!(
        left, 1,
        "the client endpoint still holds the unused connection"
    );
    assert_eq!(
        received,
        vec![b"still here".to_vec()],
        "the connection held must stay usable"
    );
}

#[test]
fn a_peer_with_a_certificate_from_another_ca_is_refused() {
    let ca = generate_ca("test").unwrap();
    let rogue_ca = generate_ca("rogue").unwrap();
    let tls_server = node_tls(&ca, 1);
    let tls_rogue = node_tls(&rogue_ca, 2);
    let result = on_executor(move || async move {
        let server = QuicEndpoint::bind(options(tls_server, true)).unwrap();
        let addr = server.local_addr().unwrap();
        let client = QuicEndpoint::bind(options(tls_rogue.clone(), false)).unwrap();
        let result = client
            .connect(
                addr,
                &tls::node_server_name(NodeId(1)),
                &tls_rogue,
                ALPN_PEER,
            )
            .await;
        client.shutdown().await;
        server.shutdown().await;
        result.map(|_| ()).map_err(|e| e.to_string())
    });
    let err = result.unwrap_err();
    assert!(err.contains("connection closed"), "{err}");
}

#[test]
fn a_client_without_a_certificate_is_refused() {
    let ca = generate_ca("test").unwrap();
    let tls_server = node_tls(&ca, 1);
    let ca_pem = ca.cert_pem.clone();
    let outcome = on_executor(move || async move {
        let server = QuicEndpoint::bind(options(tls_server, true)).unwrap();
        let addr = server.local_addr().unwrap();
        let client = QuicEndpoint::bind(options(TlsMode::Insecure, false)).unwrap();
        let crypto = tls::client_config_without_certificate(&ca_pem, ALPN_CLIENT).unwrap();
        let crypto = quinn_proto::crypto::rustls::QuicClientConfig::try_from(crypto).unwrap();
        let result = client
            .connect_with(
                addr,
                &tls::node_server_name(NodeId(1)),
                std::sync::Arc::new(crypto),
            )
            .await;
        // TLS 1.3: the client may finish its side before the server rejects it, so a
        // "successful" connect must still be closed by the server without accepting it.
        let outcome: Result<(), String> = match result {
            Err(e) => Err(e.to_string()),
            Ok(conn) => {
                let reason = futures_lite::future::or(async { Some(conn.closed().await) }, async {
                    glommio::timer::sleep(Duration::from_secs(10)).await;
                    None
                })
                .await;
                Err(format!("closed after handshake: {reason:?}"))
            }
        };
        client.shutdown().await;
        server.shutdown().await;
        outcome
    });
    let err = outcome.unwrap_err();
    assert!(
        err.contains("peer sent no certificates"),
        "the server must refuse a certificate-less client: {err}"
    );
}

#[test]
fn insecure_mode_works_only_when_both_sides_ask_for_it() {
    let ca = generate_ca("test").unwrap();
    let tls_secure = node_tls(&ca, 1);
    on_executor(move || async move {
        let insecure_server = QuicEndpoint::bind(options(TlsMode::Insecure, true)).unwrap();
        let addr: SocketAddr = insecure_server.local_addr().unwrap();
        assert!(insecure_server.stats().insecure);
        let client = QuicEndpoint::bind(options(TlsMode::Insecure, false)).unwrap();
        let conn = client
            .connect(addr, "anything", &TlsMode::Insecure, ALPN_PEER)
            .await
            .unwrap();
        assert_eq!(conn.alpn().as_deref(), Some(ALPN_PEER));
        // A node in the default (mutual) mode refuses the insecure server's certificate.
        let secure_client = QuicEndpoint::bind(options(tls_secure.clone(), false)).unwrap();
        let refused = secure_client
            .connect(addr, "anything", &tls_secure, ALPN_PEER)
            .await;
        assert!(
            matches!(refused, Err(TransportError::Closed(_))),
            "a secure node must refuse"
        );
        for e in [insecure_server, client, secure_client] {
            e.shutdown().await;
        }
    });
}

#[test]
fn client_certificates_are_accepted_on_the_client_alpn() {
    let ca = generate_ca("test").unwrap();
    let tls_server = node_tls(&ca, 1);
    let tls_client = mutual(&ca, issue_client_cert(&ca, "app-1").unwrap());
    on_executor(move || async move {
        let server = QuicEndpoint::bind(options(tls_server, true)).unwrap();
        let addr = server.local_addr().unwrap();
        let client = QuicEndpoint::bind(options(tls_client.clone(), false)).unwrap();
        let accepted = glommio::spawn_local({
            let server = server.clone();
            async move { server.accept().await.unwrap().alpn() }
        });
        let conn = client
            .connect(
                addr,
                &tls::node_server_name(NodeId(1)),
                &tls_client,
                ALPN_CLIENT,
            )
            .await
            .unwrap();
        assert_eq!(conn.alpn().as_deref(), Some(ALPN_CLIENT));
        assert_eq!(accepted.await.as_deref(), Some(ALPN_CLIENT));
        client.shutdown().await;
        server.shutdown().await;
    });
}

#[test]
fn nodes_on_separate_executors_exchange_frames() {
    let ca = generate_ca("test").unwrap();
    let (tls_a, tls_b) = (node_tls(&ca, 1), node_tls(&ca, 2));
    let (addr_tx, addr_rx) = std::sync::mpsc::sync_channel::<SocketAddr>(1);
    let node_a = spawn_executor(
        "node-1-core-0",
        CorePlacement::Unbound,
        move || async move {
            let server = QuicEndpoint::bind(options(tls_a, true)).unwrap();
            addr_tx.send(server.local_addr().unwrap()).unwrap();
            let payloads = serve_frames(server.clone(), 1).await;
            server.shutdown().await;
            payloads
        },
    )
    .unwrap();
    let addr = addr_rx.recv_timeout(Duration::from_secs(20)).unwrap();
    let node_b = spawn_executor(
        "node-2-core-0",
        CorePlacement::Unbound,
        move || async move {
            let client = QuicEndpoint::bind(options(tls_b.clone(), true)).unwrap();
            let conn = client
                .connect(addr, &tls::node_server_name(NodeId(1)), &tls_b, ALPN_PEER)
                .await
                .unwrap();
            let mut stream = conn.open_uni().await.unwrap();
            let mut batch = Vec::new();
            for i in 0..1000u32 {
                encode_frame(FrameKind::RaftBatch, 0, &i.to_le_bytes(), &mut batch).unwrap();
            }
            stream.write_all(&batch).await.unwrap();
            stream.finish().unwrap();
            conn.closed().await;
            client.shutdown().await;
        },
    )
    .unwrap();
    let payloads = node_a.join().unwrap();
    node_b.join().unwrap();
    let received: Vec<u32> = payloads
        .iter()
        .map(|p| u32::from_le_bytes(p[..4].try_into().unwrap()))
        .collect();
    assert_eq!(received, (0..1000).collect::<Vec<_>>());
}
