//! `quic`: bulk throughput of one connection between two cores, ours against stock quinn on
//! tokio and a plain TCP loopback stream, all in one run.
//!
//! Every contender moves the same bytes over loopback on one stream, server on CPU 0 and
//! client on CPU 1 (when the machine has two), with the QUIC datagram size fixed at the same
//! MTU (no path MTU discovery; loopback's 64 KiB MTU would flatter QUIC). Reported per
//! contender: the median MB/s (10^6 bytes per second, first byte written to last byte read)
//! and CPU-seconds per GB (process user + system time over the run, both sides together).

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use nodedb_cluster::ids::NodeId;
use nodedb_cluster::runtime::bench::{QuicPair, quic_bulk};
use nodedb_cluster::runtime::executor::CorePlacement;
use nodedb_cluster::runtime::tls::{self, ALPN_PEER};

/// Bytes per application write (stock quinn and TCP; ours writes as many).
const WRITE_BYTES: usize = 1 << 20;
/// Stream and connection windows, the same for ours and stock quinn.
const STREAM_WINDOW: u32 = 8 << 20;

pub struct Sample {
    pub mb_s: f64,
    pub cpu_s_per_gb: f64,
}

fn cpu_seconds() -> f64 {
    // SAFETY: getrusage writes into the struct we pass and reads nothing else.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut usage) };
    let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    tv(usage.ru_utime) + tv(usage.ru_stime)
}

fn sample(bytes: u64, elapsed: Duration, cpu: f64) -> Sample {
    Sample {
        mb_s: bytes as f64 / elapsed.as_secs_f64() / 1e6,
        cpu_s_per_gb: cpu / (bytes as f64 / 1e9),
    }
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

/// Certificates shared by every QUIC contender (same key type, same verification work).
pub struct Certs(QuicPair);

impl Certs {
    pub fn new() -> Certs {
        Certs(QuicPair::new().expect("certificates"))
    }
}

/// Our endpoint on glommio, with or without GSO/GRO (`runtime::bench::quic_bulk`).
pub fn ours(certs: &Certs, bytes: u64, mtu: u16, offload: bool) -> Result<Sample, String> {
    let cpu_before = cpu_seconds();
    let elapsed = quic_bulk(&certs.0, bytes, mtu, offload, placements())?;
    Ok(sample(bytes, elapsed, cpu_seconds() - cpu_before))
}

fn quinn_transport(mtu: u16) -> Arc<quinn::TransportConfig> {
    let mut t = quinn::TransportConfig::default();
    t.initial_mtu(mtu);
    t.min_mtu(mtu);
    t.mtu_discovery_config(None);
    t.stream_receive_window(quinn::VarInt::from_u32(STREAM_WINDOW));
    t.receive_window(quinn::VarInt::from_u32(STREAM_WINDOW * 4));
    t.send_window(u64::from(STREAM_WINDOW) * 4);
    Arc::new(t)
}

fn current_thread_runtime() -> Result<tokio::runtime::Runtime, String> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())
}

fn pin_to(cpu: CorePlacement) {
    if let CorePlacement::Pinned(cpu) = cpu {
        // SAFETY: a zeroed cpu_set_t is valid; CPU_SET writes inside it.
        unsafe {
            let mut set: libc::cpu_set_t = std::mem::zeroed();
            libc::CPU_SET(cpu, &mut set);
            libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set);
        }
    }
}

/// Stock quinn on a tokio current-thread runtime per side (GSO/GRO as quinn does it).
pub fn stock_quinn(certs: &Certs, bytes: u64, mtu: u16) -> Result<Sample, String> {
    let (server_cpu, client_cpu) = placements();
    let server_crypto = quinn::crypto::rustls::QuicServerConfig::try_from(
        tls::server_config(&certs.0.server).map_err(|e| e.to_string())?,
    )
    .map_err(|e| e.to_string())?;
    let client_crypto = quinn::crypto::rustls::QuicClientConfig::try_from(
        tls::client_config(&certs.0.client, ALPN_PEER).map_err(|e| e.to_string())?,
    )
    .map_err(|e| e.to_string())?;
    let mut server_config = quinn::ServerConfig::with_crypto(Arc::new(server_crypto));
    server_config.transport_config(quinn_transport(mtu));
    let mut client_config = quinn::ClientConfig::new(Arc::new(client_crypto));
    client_config.transport_config(quinn_transport(mtu));
    let mut endpoint_config = quinn::EndpointConfig::default();
    endpoint_config
        .max_udp_payload_size(mtu)
        .map_err(|e| e.to_string())?;

    let (addr_tx, addr_rx) = mpsc::sync_channel::<SocketAddr>(1);
    let cpu_before = cpu_seconds();
    let server_endpoint_config = endpoint_config.clone();
    let server = std::thread::spawn(move || -> Result<(Instant, u64), String> {
        pin_to(server_cpu);
        current_thread_runtime()?.block_on(async move {
            let socket = std::net::UdpSocket::bind("127.0.0.1:0").map_err(|e| e.to_string())?;
            let endpoint = quinn::Endpoint::new(
                server_endpoint_config,
                Some(server_config),
                socket,
                Arc::new(quinn::TokioRuntime),
            )
            .map_err(|e| e.to_string())?;
            addr_tx
                .send(endpoint.local_addr().map_err(|e| e.to_string())?)
                .map_err(|e| e.to_string())?;
            let conn = endpoint
                .accept()
                .await
                .ok_or("no connection")?
                .await
                .map_err(|e| e.to_string())?;
            let mut stream = conn.accept_uni().await.map_err(|e| e.to_string())?;
            let mut received = 0u64;
            while let Some(chunk) = stream
                .read_chunk(usize::MAX, true)
                .await
                .map_err(|e| e.to_string())?
            {
                received += chunk.bytes.len() as u64;
            }
            let end = Instant::now();
            conn.close(0u32.into(), b"done");
            endpoint.wait_idle().await;
            Ok((end, received))
        })
    });
    let addr = addr_rx
        .recv_timeout(Duration::from_secs(30))
        .map_err(|e| format!("quinn server: {e}"))?;
    let client = std::thread::spawn(move || -> Result<Instant, String> {
        pin_to(client_cpu);
        current_thread_runtime()?.block_on(async move {
            let socket = std::net::UdpSocket::bind("127.0.0.1:0").map_err(|e| e.to_string())?;
            let endpoint =
                quinn::Endpoint::new(endpoint_config, None, socket, Arc::new(quinn::TokioRuntime))
                    .map_err(|e| e.to_string())?;
            let conn = endpoint
                .connect_with(client_config, addr, &tls::node_server_name(NodeId(1)))
                .map_err(|e| e.to_string())?
                .await
                .map_err(|e| e.to_string())?;
            let mut stream = conn.open_uni().await.map_err(|e| e.to_string())?;
            let buf = vec![0x5au8; WRITE_BYTES];
            let start = Instant::now();
            let mut sent = 0u64;
            while sent < bytes {
                let n = (bytes - sent).min(WRITE_BYTES as u64) as usize;
                stream
                    .write_all(&buf[..n])
                    .await
                    .map_err(|e| e.to_string())?;
                sent += n as u64;
            }
            stream.finish().map_err(|e| e.to_string())?;
            conn.closed().await;
            endpoint.wait_idle().await;
            Ok(start)
        })
    });
    let start = client.join().map_err(|_| "quinn client panicked")??;
    let (end, received) = server.join().map_err(|_| "quinn server panicked")??;
    let cpu = cpu_seconds() - cpu_before;
    if received != bytes {
        return Err(format!("quinn received {received} of {bytes} bytes"));
    }
    Ok(sample(bytes, end - start, cpu))
}

/// A plain TCP loopback stream between two threads: the kernel's own ceiling.
pub fn tcp(bytes: u64) -> Result<Sample, String> {
    use std::io::{Read, Write};
    let (server_cpu, client_cpu) = placements();
    let listener = TcpListener::bind("127.0.0.1:0").map_err(|e| e.to_string())?;
    let addr = listener.local_addr().map_err(|e| e.to_string())?;
    let cpu_before = cpu_seconds();
    let server = std::thread::spawn(move || -> Result<(Instant, u64), String> {
        pin_to(server_cpu);
        let (mut stream, _) = listener.accept().map_err(|e| e.to_string())?;
        let mut buf = vec![0u8; WRITE_BYTES];
        let mut received = 0u64;
        loop {
            let n = stream.read(&mut buf).map_err(|e| e.to_string())?;
            if n == 0 {
                return Ok((Instant::now(), received));
            }
            received += n as u64;
        }
    });
    let client = std::thread::spawn(move || -> Result<Instant, String> {
        pin_to(client_cpu);
        let mut stream = TcpStream::connect(addr).map_err(|e| e.to_string())?;
        let buf = vec![0x5au8; WRITE_BYTES];
        let start = Instant::now();
        let mut sent = 0u64;
        while sent < bytes {
            let n = (bytes - sent).min(WRITE_BYTES as u64) as usize;
            stream.write_all(&buf[..n]).map_err(|e| e.to_string())?;
            sent += n as u64;
        }
        Ok(start)
    });
    let start = client.join().map_err(|_| "tcp client panicked")??;
    let (end, received) = server.join().map_err(|_| "tcp server panicked")??;
    let cpu = cpu_seconds() - cpu_before;
    if received != bytes {
        return Err(format!("tcp received {received} of {bytes} bytes"));
    }
    Ok(sample(bytes, end - start, cpu))
}
