//! The physical floor of one commit on this machine: two 4 KiB O_DIRECT writes with
//! `fdatasync`, on two files, in parallel (the leader's and the quorum follower's log
//! writes), then one round trip on an open QUIC connection with mTLS (the client's request
//! and answer). Measured on the same disk and loopback as the cluster, in the same run.
//!
//! Each sample is one such sequence; the write pair and the round trip are also reported
//! alone.

use std::path::Path;
use std::time::{Duration, Instant};

use glommio::io::DmaFile;
use hdrhistogram::Histogram;
use nodedb_cluster::runtime::executor::{CorePlacement, spawn_executor};
use nodedb_cluster::wire::frame::{FrameKind, encode_frame};

use crate::rpc::{Echo, call, connect_echo, echo_server};

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
    // Unbound, as the benchmark's nodes are.
    let Echo {
        addr,
        client_tls,
        server,
    } = echo_server("floor-server", CorePlacement::Unbound)?;
    let paths = [dir.join("floor-a"), dir.join("floor-b")];
    let files = paths.clone();
    let client = spawn_executor("floor-client", CorePlacement::Unbound, move || async move {
        let (endpoint, conn) = connect_echo(addr, &client_tls).await?;
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
