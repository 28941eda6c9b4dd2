//! The physical floor of one commit on this machine: two 4 KiB O_DIRECT writes with
//! `fdatasync`, on two files, in parallel (the leader's and the quorum follower's log
//! writes), then one round trip on an open QUIC connection with mTLS (the client's request
//! and answer). Measured on the same disk and loopback as the cluster, in the same run.
//!
//! Each sample is one such sequence; the write pair and the round trip are also reported
//! alone.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use glommio::io::DmaFile;
use hdrhistogram::Histogram;
use nodedb_cluster::ids::NodeId;
use nodedb_cluster::runtime::executor::{CorePlacement, spawn_executor};
use nodedb_cluster::runtime::quic::{EndpointOptions, QuicEndpoint};
use nodedb_cluster::runtime::tls::{self, ALPN_CLIENT, TlsMode};
use nodedb_cluster::wire::frame::{FrameKind, encode_frame};

use crate::rpc::{call, read_frame};

/// One write's size: a small record's block.
const WRITE_BYTES: usize = 4096;
/// The region each file cycles through, appending as a log does.
const FILE_BYTES: u64 = 64 << 20;
/// The request and answer of the round trip: about a small write's.
const MESSAGE_BYTES: usize = 200;

pub struct Floor {
    pub samples: u64,
    /// The whole sequence: write pair, then round trip.
    pub commit: Histogram<u64>,
    pub write_pair: Histogram<u64>,
    pub round_trip: Histogram<u64>,
}

/// One 4 KiB write at `at`, made durable.
async fn write_durably(file: &DmaFile, at: u64) -> Result<(), String> {
    let mut buffer = file.alloc_dma_buffer(WRITE_BYTES);
    buffer.as_bytes_mut().fill(0x5a);
    file.write_at(buffer, at).await.map_err(|e| e.to_string())?;
    file.fdatasync().await.map_err(|e| e.to_string())
}

fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000, 3).expect("valid bounds")
}

/// Runs the floor for about `seconds`, with its two files in `dir`.
pub fn measure(dir: &Path, seconds: f64) -> Result<Floor, String> {
    std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let ca = tls::generate_ca("floor").map_err(|e| e.to_string())?;
    let mode = |identity| TlsMode::Mutual {
        ca_cert_pem: ca.cert_pem.clone(),
        identity,
    };
    let server_tls = mode(tls::issue_node_cert(&ca, NodeId(1), &[]).map_err(|e| e.to_string())?);
    let client_tls = mode(tls::issue_client_cert(&ca, "floor").map_err(|e| e.to_string())?);
    let options = |tls, server| EndpointOptions {
        bind: "127.0.0.1:0".parse().expect("literal"),
        tls,
        segmentation_offload: true,
        mtu: 1452,
        server,
    };
    let (addr_tx, addr_rx) = mpsc::sync_channel::<SocketAddr>(1);
    let server_options = options(server_tls, true);
    // Unbound, as the benchmark's nodes are.
    let server = spawn_executor("floor-server", CorePlacement::Unbound, move || async move {
        let endpoint = QuicEndpoint::bind(server_options).map_err(|e| e.to_string())?;
        addr_tx
            .send(endpoint.local_addr().map_err(|e| e.to_string())?)
            .map_err(|e| e.to_string())?;
        let conn = endpoint.accept().await.ok_or("no connection")?;
        while let Ok((mut send, mut recv)) = conn.accept_bi().await {
            if let Ok(request) = read_frame(&mut recv).await {
                let mut response = Vec::with_capacity(request.len() + 16);
                if encode_frame(FrameKind::Response, 0, &request, &mut response).is_ok()
                    && send.write_all(&response).await.is_ok()
                {
                    let _ = send.finish();
                }
            }
        }
        endpoint.shutdown().await;
        Ok::<_, String>(())
    })
    .map_err(|e| e.to_string())?;
    let addr = addr_rx
        .recv_timeout(Duration::from_secs(30))
        .map_err(|e| format!("floor server: {e}"))?;
    let client_options = options(client_tls.clone(), false);
    let paths = [dir.join("floor-a"), dir.join("floor-b")];
    let files = paths.clone();
    let client = spawn_executor("floor-client", CorePlacement::Unbound, move || async move {
        let endpoint = QuicEndpoint::bind(client_options).map_err(|e| e.to_string())?;
        let conn = endpoint
            .connect(
                addr,
                &tls::node_server_name(NodeId(1)),
                &client_tls,
                ALPN_CLIENT,
            )
            .await
            .map_err(|e| e.to_string())?;
        let open = |path: &std::path::PathBuf| {
            let path = path.clone();
            async move {
                DmaFile::create(&path)
                    .await
                    .map_err(|e| format!("{}: {e}", path.display()))
            }
        };
        let (a, b) = (open(&files[0]).await?, open(&files[1]).await?);
        let mut request = Vec::new();
        encode_frame(FrameKind::Request, 0, &[7u8; MESSAGE_BYTES], &mut request)
            .map_err(|e| e.to_string())?;
        let mut floor = Floor {
            samples: 0,
            commit: histogram(),
            write_pair: histogram(),
            round_trip: histogram(),
        };
        let micros = |d: Duration| u64::try_from(d.as_micros()).unwrap_or(u64::MAX);
        let deadline = Instant::now() + Duration::from_secs_f64(seconds);
        let mut at = 0u64;
        while Instant::now() < deadline {
            let started = Instant::now();
            let (ra, rb) =
                futures_lite::future::zip(write_durably(&a, at), write_durably(&b, at)).await;
            ra?;
            rb?;
            let written = Instant::now();
            let answer = call(&conn, &request).await?;
            if answer.len() != MESSAGE_BYTES {
                return Err(format!("an answer of {} bytes", answer.len()));
            }
            let done = Instant::now();
            floor
                .write_pair
                .saturating_record(micros(written - started));
            floor.round_trip.saturating_record(micros(done - written));
            floor.commit.saturating_record(micros(done - started));
            floor.samples += 1;
            at = (at + WRITE_BYTES as u64) % FILE_BYTES;
        }
        conn.close(0, b"done");
        endpoint.shutdown().await;
        let _ = a.close().await;
        let _ = b.close().await;
        Ok::<_, String>(floor)
    })
    .map_err(|e| e.to_string())?;
    let result = client.join().map_err(|e| e.to_string())?;
    let _ = server.join();
    for path in &paths {
        let _ = std::fs::remove_file(path);
    }
    result
}
