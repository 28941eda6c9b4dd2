//! `rpc`: small-message request/response over our QUIC endpoint: rate and latency.
//!
//! A server core answers every request stream with a response of the same size; a client
//! core runs `concurrency` closed-loop callers, each opening one bidirectional stream per
//! request (a frame out, a frame back). Latency is measured per request into an
//! HdrHistogram (microseconds): p50, p99, p99.9 and max, with the achieved rate.

use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use nodedb_cluster::ids::NodeId;
use nodedb_cluster::runtime::executor::{CorePlacement, ExecutorHandle, spawn_executor};
use nodedb_cluster::runtime::quic::{Connection, EndpointOptions, QuicEndpoint};
use nodedb_cluster::runtime::tls::{self, ALPN_CLIENT, TlsMode};
use nodedb_cluster::wire::frame::{FrameDecoder, FrameKind, encode_frame};

pub struct RpcResult {
    pub requests: u64,
    pub seconds: f64,
    pub histogram: Histogram<u64>,
}

fn placements() -> (CorePlacement, CorePlacement) {
    match std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
    {
        n if n >= 2 => (CorePlacement::Pinned(0), CorePlacement::Pinned(1)),
        _ => (CorePlacement::Unbound, CorePlacement::Unbound),
    }
}

/// Reads one whole frame from a stream (the stream ends after it).
pub(crate) async fn read_frame(
    stream: &mut nodedb_cluster::runtime::quic::RecvStream,
) -> Result<Vec<u8>, String> {
    let mut decoder = FrameDecoder::new();
    let mut frame = None;
    while let Some(chunk) = stream
        .read_chunk(usize::MAX)
        .await
        .map_err(|e| e.to_string())?
    {
        decoder
            .decode(&chunk, |f| frame = Some(f.payload))
            .map_err(|e| e.to_string())?;
    }
    frame.ok_or_else(|| "stream ended without a frame".into())
}

pub(crate) async fn call(conn: &Connection, request: &[u8]) -> Result<Vec<u8>, String> {
    let (mut send, mut recv) = conn.open_bi().await.map_err(|e| e.to_string())?;
    send.write_all(request).await.map_err(|e| e.to_string())?;
    send.finish().map_err(|e| e.to_string())?;
    read_frame(&mut recv).await
}

/// A server core that answers every request stream of one connection with a response
/// frame holding the request's payload, and what a client needs to reach it.
pub(crate) struct Echo {
    pub addr: SocketAddr,
    pub client_tls: TlsMode,
    pub server: ExecutorHandle<Result<(), String>>,
}

/// Endpoint options on loopback with `tls` (mTLS, GSO, 1452-byte datagrams).
pub(crate) fn loopback_options(tls: TlsMode, server: bool) -> EndpointOptions {
    EndpointOptions {
        bind: "127.0.0.1:0".parse().expect("literal"),
        tls,
        segmentation_offload: true,
        mtu: 1452,
        server,
    }
}

/// Starts an echo server on `placement`, with certificates of a CA of its own.
pub(crate) fn echo_server(name: &str, placement: CorePlacement) -> Result<Echo, String> {
    let ca = tls::generate_ca("bench").map_err(|e| e.to_string())?;
    let mode = |identity| TlsMode::Mutual {
        ca_cert_pem: ca.cert_pem.clone(),
        identity,
    };
    let server_tls = mode(tls::issue_node_cert(&ca, NodeId(1), &[]).map_err(|e| e.to_string())?);
    let client_tls = mode(tls::issue_client_cert(&ca, "bench").map_err(|e| e.to_string())?);
    let (addr_tx, addr_rx) = mpsc::sync_channel::<SocketAddr>(1);
    let server_options = loopback_options(server_tls, true);
    let server = spawn_executor(name, placement, move || async move {
        let endpoint = QuicEndpoint::bind(server_options).map_err(|e| e.to_string())?;
        addr_tx
            .send(endpoint.local_addr().map_err(|e| e.to_string())?)
            .map_err(|e| e.to_string())?;
        let conn = endpoint.accept().await.ok_or("no connection")?;
        // Answer every stream until the client closes the connection.
        while let Ok((mut send, mut recv)) = conn.accept_bi().await {
            glommio::spawn_local(async move {
                if let Ok(request) = read_frame(&mut recv).await {
                    let mut response = Vec::with_capacity(request.len() + 16);
                    if encode_frame(FrameKind::Response, 0, &request, &mut response).is_ok()
                        && send.write_all(&response).await.is_ok()
                    {
                        let _ = send.finish();
                    }
                }
            })
            .detach();
        }
        endpoint.shutdown().await;
        Ok::<_, String>(())
    })
    .map_err(|e| e.to_string())?;
    let addr = addr_rx
        .recv_timeout(Duration::from_secs(30))
        .map_err(|e| format!("{name}: {e}"))?;
    Ok(Echo {
        addr,
        client_tls,
        server,
    })
}

/// A client endpoint on the calling executor, connected to the echo server at `addr`.
pub(crate) async fn connect_echo(
    addr: SocketAddr,
    client_tls: &TlsMode,
) -> Result<(QuicEndpoint, Connection), String> {
    let endpoint = QuicEndpoint::bind(loopback_options(client_tls.clone(), false))
        .map_err(|e| e.to_string())?;
    let conn = endpoint
        .connect(
            addr,
            &tls::node_server_name(NodeId(1)),
            client_tls,
            ALPN_CLIENT,
        )
        .await
        .map_err(|e| e.to_string())?;
    Ok((endpoint, conn))
}

pub fn run(requests: u64, concurrency: usize, payload_bytes: usize) -> Result<RpcResult, String> {
    let (server_cpu, client_cpu) = placements();
    let Echo {
        addr,
        client_tls,
        server,
    } = echo_server("rpc-server", server_cpu)?;
    let client = spawn_executor("rpc-client", client_cpu, move || async move {
        let (endpoint, conn) = connect_echo(addr, &client_tls).await?;
        let mut request = Vec::new();
        encode_frame(
            FrameKind::Request,
            0,
            &vec![7u8; payload_bytes],
            &mut request,
        )
        .map_err(|e| e.to_string())?;
        let request = Rc::new(request);
        let per_caller = requests.div_ceil(concurrency as u64);
        let started = Instant::now();
        let mut callers = Vec::new();
        for _ in 0..concurrency {
            let (conn, request) = (conn.clone(), request.clone());
            callers.push(glommio::spawn_local(async move {
                let mut histogram =
                    Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("valid bounds");
                for _ in 0..per_caller {
                    let t = Instant::now();
                    let response = call(&conn, &request).await?;
                    if response.len() != payload_bytes {
                        return Err(format!("response of {} bytes", response.len()));
                    }
                    histogram.saturating_record(t.elapsed().as_micros() as u64);
                }
                Ok::<_, String>(histogram)
            }));
        }
        let mut histogram =
            Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("valid bounds");
        for caller in callers {
            histogram.add(caller.await?).map_err(|e| e.to_string())?;
        }
        let seconds = started.elapsed().as_secs_f64();
        conn.close(0, b"done");
        endpoint.shutdown().await;
        Ok::<_, String>(RpcResult {
            requests: per_caller * concurrency as u64,
            seconds,
            histogram,
        })
    })
    .map_err(|e| e.to_string())?;
    let result = client.join().map_err(|e| e.to_string())??;
    server.join().map_err(|e| e.to_string())??;
    Ok(result)
}
