//! The node's Prometheus endpoint: `GET /metrics` over plain HTTP/1.x on its own thread.
//!
//! A scrape runs on these threads, never on a core's executor, so a slow or stuck scraper
//! cannot stall Raft or client traffic; it only reads the cores' relaxed atomic counters.
//! Each connection gets its own thread, up to [`CONNECTIONS_MAX`] at once (more are
//! answered 503 at once), and must send its request within [`REQUEST_DEADLINE`] in all:
//! a client trickling bytes blocks neither the scrapes beside it nor, for long, itself.
//! `GET /health` answers 200 while every core runs (none failed, each turned its loop in
//! the last [`CORE_STALL`]), else 503 with the reason; `GET /ready` answers 200 once the
//! node is healthy and every group it hosts knows its leader (counted once a second), else
//! 503 with what is missing. Anything else is answered 404 or 400.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use tracing::debug;

use crate::metrics::cores::NodeMetrics;

/// Longest request head read (request line and headers).
const REQUEST_HEAD_MAX_BYTES: usize = 8 * 1024;
/// A scraper that sends or reads nothing for this long is dropped.
const SOCKET_TIMEOUT: Duration = Duration::from_secs(2);
/// The whole request head must arrive within this, however it trickles in.
pub const REQUEST_DEADLINE: Duration = Duration::from_secs(5);
/// Connections served at once.
pub const CONNECTIONS_MAX: usize = 16;
/// A core whose loop turned no turn for this long is stalled (`/health`); an idle core
/// turns at least every `NODE_LOOP_IDLE` (100 ms).
pub const CORE_STALL: Duration = Duration::from_secs(2);

/// What `/health` remembers of each core: its loop-turn count and when that last changed.
#[derive(Default)]
struct CoreProgress(std::sync::Mutex<Vec<(u64, Instant)>>);

impl CoreProgress {
    /// Every core runs: none failed, and each turned its loop within `CORE_STALL`.
    fn health(&self, metrics: &NodeMetrics) -> Result<String, String> {
        use crate::metrics::cores::CoreGauge;
        let now = Instant::now();
        let cores = metrics.core_count();
        let mut seen = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if seen.len() != usize::from(cores) {
            *seen = vec![(0, now); usize::from(cores)];
        }
        for core in 0..cores {
            let m = metrics.core(core);
            if m.gauge(CoreGauge::Failed) != 0 {
                return Err(format!("core {core} failed"));
            }
            let turns = m.loop_turns.count();
            let (last, since) = &mut seen[usize::from(core)];
            if turns != *last {
                (*last, *since) = (turns, now);
            } else if now - *since > CORE_STALL {
                return Err(format!(
                    "core {core} has not turned its loop for {:.1} s",
                    (now - *since).as_secs_f64()
                ));
            }
        }
        Ok(format!("ok: {cores} core(s) running\n"))
    }

    /// Healthy, and every group hosted here knows its leader.
    fn ready(&self, metrics: &NodeMetrics) -> Result<String, String> {
        use crate::metrics::cores::CoreGauge;
        self.health(metrics)?;
        match metrics.gauge_total(CoreGauge::LeaderlessGroups) {
            0 => Ok("ready\n".into()),
            n => Err(format!("{n} group(s) hosted here know no leader yet")),
        }
    }
}

/// A running metrics endpoint; stopped when dropped.
pub struct MetricsServer {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl MetricsServer {
    /// Binds `addr` (port 0 picks a free port) and serves `metrics` from a new thread.
    pub fn start(addr: SocketAddr, metrics: Arc<NodeMetrics>) -> std::io::Result<MetricsServer> {
        let listener = TcpListener::bind(addr)?;
        let addr = listener.local_addr()?;
        let stop = Arc::new(AtomicBool::new(false));
        let thread = std::thread::Builder::new()
            .name("metrics-http".into())
            .spawn({
                let stop = stop.clone();
                move || {
                    let active = Arc::new(AtomicUsize::new(0));
                    let progress = Arc::new(CoreProgress::default());
                    for stream in listener.incoming() {
                        if stop.load(Ordering::Acquire) {
                            break;
                        }
                        let mut stream = match stream {
                            Ok(stream) => stream,
                            Err(e) => {
                                debug!(error = %e, "metrics accept failed");
                                continue;
                            }
                        };
                        if active.load(Ordering::Acquire) >= CONNECTIONS_MAX {
                            let _ = stream.set_write_timeout(Some(SOCKET_TIMEOUT));
                            let _ = respond(&mut stream, "503 Service Unavailable", "busy\n");
                            continue;
                        }
                        // Given back when the connection's thread ends, or with the closure
                        // when the thread cannot start.
                        let slot = Active::take(&active);
                        let (metrics, progress) = (metrics.clone(), progress.clone());
                        let spawned = std::thread::Builder::new()
                            .name("metrics-conn".into())
                            .spawn(move || {
                                let _slot = slot;
                                if let Err(e) = serve(stream, &metrics, &progress) {
                                    debug!(error = %e, "metrics request failed");
                                }
                            });
                        if let Err(e) = spawned {
                            debug!(error = %e, "metrics connection thread not started");
                        }
                    }
                }
            })?;
        Ok(MetricsServer {
            addr,
            stop,
            thread: Some(thread),
        })
    }

    /// The address it listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }
}

impl Drop for MetricsServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        // Wake the blocking accept; if the connection fails the thread is past accepting.
        let _ = TcpStream::connect_timeout(&self.addr, SOCKET_TIMEOUT);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// One of the `CONNECTIONS_MAX` connection places, held while it is served.
struct Active(Arc<AtomicUsize>);

impl Active {
    fn take(count: &Arc<AtomicUsize>) -> Active {
        count.fetch_add(1, Ordering::AcqRel);
        Active(count.clone())
    }
}

impl Drop for Active {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

fn serve(
    mut stream: TcpStream,
    metrics: &NodeMetrics,
    progress: &CoreProgress,
) -> std::io::Result<()> {
    stream.set_write_timeout(Some(SOCKET_TIMEOUT))?;
    let deadline = Instant::now() + REQUEST_DEADLINE;
    let mut head = Vec::with_capacity(512);
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return respond(&mut stream, "408 Request Timeout", "");
        }
        stream.set_read_timeout(Some(left.min(SOCKET_TIMEOUT)))?;
        let n = stream.read(&mut buf)?;
        if n == 0 {
            break;
        }
        head.extend_from_slice(&buf[..n]);
        if head.len() > REQUEST_HEAD_MAX_BYTES {
            return respond(&mut stream, "431 Request Header Fields Too Large", "");
        }
    }
    let line = head
        .split(|b| *b == b'\r' || *b == b'\n')
        .next()
        .unwrap_or(&[]);
    let mut parts = line.split(|b| *b == b' ');
    match (parts.next(), parts.next()) {
        (Some(b"GET"), Some(b"/metrics")) => {
            respond(&mut stream, "200 OK", &metrics.render_prometheus())
        }
        (Some(b"GET"), Some(path @ (b"/health" | b"/ready"))) => {
            let state = if path == b"/health" {
                progress.health(metrics)
            } else {
                progress.ready(metrics)
            };
            match state {
                Ok(text) => respond(&mut stream, "200 OK", &text),
                Err(why) => respond(&mut stream, "503 Service Unavailable", &format!("{why}\n")),
            }
        }
        (Some(_), Some(_)) => respond(
            &mut stream,
            "404 Not Found",
            "served: /metrics, /health, /ready\n",
        ),
        _ => respond(&mut stream, "400 Bad Request", "not an HTTP request\n"),
    }
}

fn respond(stream: &mut TcpStream, status: &str, body: &str) -> std::io::Result<()> {
    let head = format!(
        "HTTP/1.1 {status}\r\nContent-Type: text/plain; version=0.0.4; charset=utf-8\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes())?;
    stream.write_all(body.as_bytes())?;
    stream.flush()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::NodeId;
    use crate::metrics::cores::CoreCounter;

    fn get(addr: SocketAddr, request: &str) -> String {
        let mut s = TcpStream::connect(addr).unwrap();
        s.write_all(request.as_bytes()).unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).unwrap();
        out
    }

    #[test]
    fn serves_the_exposition_and_refuses_other_paths() {
        let metrics = Arc::new(NodeMetrics::new(NodeId(1), 1).0);
        metrics.core(0).add(CoreCounter::WalBatches, 9);
        let server = MetricsServer::start("127.0.0.1:0".parse().unwrap(), metrics).unwrap();
        let ok = get(
            server.local_addr(),
            "GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n",
        );
        assert!(ok.starts_with("HTTP/1.1 200 OK"), "{ok}");
        assert!(
            ok.contains("nodedb_core_wal_batches_total{node=\"1\",core=\"0\"} 9"),
            "{ok}"
        );
        let other = get(server.local_addr(), "GET / HTTP/1.1\r\n\r\n");
        assert!(other.starts_with("HTTP/1.1 404"), "{other}");
        let junk = get(server.local_addr(), "\r\n\r\n");
        assert!(junk.starts_with("HTTP/1.1 400"), "{junk}");
        drop(server);
    }

    /// A client that sends one byte and then nothing (or one a second) holds its own
    /// connection only; a scrape beside it is answered.
    #[test]
    fn health_and_ready_answer_503_with_the_reason() {
        use crate::metrics::cores::CoreGauge;
        let metrics = Arc::new(NodeMetrics::new(NodeId(1), 2).0);
        let server = MetricsServer::start("127.0.0.1:0".parse().unwrap(), metrics.clone()).unwrap();
        let ask = |path: &str| get(server.local_addr(), &format!("GET {path} HTTP/1.1\r\n\r\n"));
        assert!(
            ask("/health").starts_with("HTTP/1.1 200"),
            "{}",
            ask("/health")
        );
        assert!(ask("/ready").starts_with("HTTP/1.1 200"));
        metrics.core(1).set(CoreGauge::LeaderlessGroups, 3);
        let not_ready = ask("/ready");
        assert!(not_ready.starts_with("HTTP/1.1 503"), "{not_ready}");
        assert!(not_ready.contains("3 group(s) hosted here know no leader yet"));
        assert!(ask("/health").starts_with("HTTP/1.1 200"));
        metrics.core(0).set(CoreGauge::Failed, 1);
        let sick = ask("/health");
        assert!(
            sick.starts_with("HTTP/1.1 503") && sick.contains("core 0 failed"),
            "{sick}"
        );
        assert!(ask("/ready").contains("core 0 failed"));
        drop(server);
    }

    #[test]
    fn a_slow_client_does_not_block_a_scrape() {
        let metrics = Arc::new(NodeMetrics::new(NodeId(1), 1).0);
        let server = MetricsServer::start("127.0.0.1:0".parse().unwrap(), metrics).unwrap();
        let mut slow = TcpStream::connect(server.local_addr()).unwrap();
        let done = Arc::new(AtomicBool::new(false));
        let trickle = std::thread::spawn({
            let done = done.clone();
            move || {
                // One byte every half second, never a whole request head.
                for _ in 0..40 {
                    if done.load(Ordering::Acquire) || slow.write_all(b"G").is_err() {
                        break;
                    }
                    std::thread::sleep(Duration::from_millis(500));
                }
            }
        });
        let mut scrape = TcpStream::connect(server.local_addr()).unwrap();
        // Bounded: if the scrape waited behind the slow client, the read fails instead of
        // the test hanging.
        scrape.set_read_timeout(Some(REQUEST_DEADLINE / 2)).unwrap();
        scrape
            .write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
            .unwrap();
        let mut out = String::new();
        scrape.read_to_string(&mut out).unwrap();
        done.store(true, Ordering::Release);
        trickle.join().unwrap();
        assert!(out.starts_with("HTTP/1.1 200 OK"), "{out}");
    }
}
