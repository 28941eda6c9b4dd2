//! One QUIC endpoint per core: quinn-proto driven by glommio tasks on one UDP socket.
//!
//! quinn-proto is sans-IO; this module moves its datagrams and time. Per endpoint:
//! - a **receive task** waits for readability with a `MSG_PEEK` (cancel-safe: it never
//!   consumes a datagram), then drains the socket with quinn-udp (`recvmmsg` + GRO) and
//!   feeds every datagram to the endpoint; it is never cancelled, so no datagram is lost;
//! - a **driver task** runs timers (`poll_timeout`), relays endpoint events, flushes
//!   transmits with quinn-udp (GSO: up to `max_gso_segments` datagrams per `sendmsg`), and
//!   wakes the streams and handshakes waiting on it.
//!
//! With segmentation offload off (or when the kernel lacks it — logged and counted) every
//! datagram is one `sendmsg`. The datagram size is fixed by `EndpointOptions::mtu`, so
//! comparisons never profit from loopback's 64 KiB MTU.
//!
//! Everything lives on one executor (`Rc`, not `Arc`): the endpoint belongs to its core.

use std::cell::{Cell, RefCell};
use std::collections::{HashMap, VecDeque};
use std::future::poll_fn;
use std::io::{self, IoSliceMut};
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, IntoRawFd};
use std::rc::{Rc, Weak};
use std::sync::Arc;
use std::task::{Poll, Waker};
use std::time::Instant;

use bytes::{Bytes, BytesMut};
use futures_lite::future;
use quinn_proto::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use quinn_proto::{
    AckFrequencyConfig, ClientConfig, ConnectionError, ConnectionHandle, DatagramEvent, Dir,
    EndpointConfig, Event, IdleTimeout, ServerConfig, StreamEvent, StreamId, TransportConfig,
    VarInt,
};
use thiserror::Error;
use tracing::{debug, info, warn};

use crate::constants::{
    QUIC_ACK_ELICITING_THRESHOLD, QUIC_CLIENT_IDLE_TIMEOUT, QUIC_CLIENT_KEEP_ALIVE_INTERVAL,
    QUIC_CONNECTIONS_MAX, QUIC_IDLE_TIMEOUT, QUIC_KEEP_ALIVE_INTERVAL, QUIC_MAX_STREAMS,
    QUIC_RECV_BATCH, QUIC_RECV_BUFFER_BYTES, QUIC_RECV_ROUNDS_PER_TURN, QUIC_RECV_SLOT_BYTES,
    QUIC_SEND_BUFFER_BYTES, QUIC_SEND_RETRY, QUIC_SHUTDOWN_GRACE, QUIC_STREAM_WINDOW_BYTES,
};
use crate::runtime::tls::{self, TlsError, TlsMode};

/// Largest UDP payload over IPv4 (65 535 − 8 UDP − 20 IP header bytes).
const UDP_PAYLOAD_MAX_BYTES: usize = 65_507;

/// A transport failure.
#[derive(Debug, Error)]
pub enum TransportError {
    /// The UDP socket could not be created or bound.
    #[error("cannot bind UDP {addr}: {source}")]
    Bind { addr: SocketAddr, source: io::Error },
    /// The TLS configuration is unusable.
    #[error(transparent)]
    Tls(#[from] TlsError),
    /// quinn refused the TLS configuration (e.g. no TLS 1.3 suite).
    #[error("QUIC crypto configuration rejected: {0}")]
    Crypto(String),
    /// The connection could not be started.
    #[error("cannot connect to {addr}: {reason}")]
    Connect { addr: SocketAddr, reason: String },
    /// The connection closed (or never completed its handshake).
    #[error("connection closed: {0}")]
    Closed(#[from] ConnectionError),
    /// The peer reset or stopped the stream.
    #[error("stream {0} was reset or stopped by the peer")]
    StreamReset(StreamId),
    /// The endpoint has been shut down.
    #[error("the endpoint is shut down")]
    EndpointClosed,
}

impl TransportError {
    /// How the TLS handshake was refused, if that is what ended the connection. The same
    /// certificates will be refused again: a client reports it rather than retrying.
    pub fn handshake_refusal(&self) -> Option<HandshakeRefusal> {
        match self {
            TransportError::Closed(e) => HandshakeRefusal::of(e),
            _ => None,
        }
    }
}

/// A TLS handshake one side refused (a QUIC CRYPTO_ERROR: an alert).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HandshakeRefusal {
    /// The peer did not accept this side's certificate (or its absence).
    ByPeer(String),
    /// This side did not accept the peer's certificate.
    Here(String),
}

impl HandshakeRefusal {
    /// Whether a QUIC error code is a TLS alert about a certificate: QUIC carries an alert
    /// as 0x100 + its code (RFC 9001, 4.8), and of the alerts only these say a certificate
    /// was refused (RFC 8446, 6.2): bad_certificate (42), unsupported_certificate (43),
    /// certificate_revoked (44), certificate_expired (45), certificate_unknown (46),
    /// unknown_ca (48), access_denied (49), decrypt_error (51: a signature that does not
    /// verify) and certificate_required (116). Other alerts (no common ALPN, protocol
    /// version, internal error) are not about certificates, and are not called so.
    fn is_crypto(code: u64) -> bool {
        code.checked_sub(0x100)
            .is_some_and(|alert| matches!(alert, 42..=46 | 48 | 49 | 51 | 116))
    }

    pub fn of(e: &ConnectionError) -> Option<HandshakeRefusal> {
        match e {
            ConnectionError::TransportError(t) if Self::is_crypto(t.code.into()) => {
                Some(HandshakeRefusal::Here(t.reason.clone()))
            }
            ConnectionError::ConnectionClosed(c) if Self::is_crypto(c.error_code.into()) => Some(
                HandshakeRefusal::ByPeer(String::from_utf8_lossy(&c.reason).into_owned()),
            ),
            _ => None,
        }
    }
}

/// Settings of one endpoint.
#[derive(Clone)]
pub struct EndpointOptions {
    pub bind: SocketAddr,
    pub tls: TlsMode,
    /// Use GSO/GRO through quinn-udp; when false, one `sendmsg` per datagram.
    pub segmentation_offload: bool,
    /// UDP payload size of every datagram (no path MTU discovery).
    pub mtu: u16,
    /// Accept incoming connections (a node); clients set false.
    pub server: bool,
}

/// Counters of one endpoint.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EndpointStats {
    pub datagrams_sent: u64,
    /// `sendmsg` calls; with GSO one call carries several datagrams.
    pub send_calls: u64,
    pub datagrams_received: u64,
    pub recv_calls: u64,
    /// Sends that found the socket buffer full and were retried.
    pub send_would_block: u64,
    /// Whether GSO is in use (false when asked off or the kernel lacks it).
    pub gso_active: bool,
    pub max_gso_segments: u64,
    pub insecure: bool,
    /// Driver turns, and how many of them a timer (not new work) started.
    pub driver_turns: u64,
    pub timer_wakes: u64,
    /// TLS handshakes this endpoint refused: the peer's certificate did not verify.
    pub handshakes_refused: u64,
    /// Connections the endpoint holds now (open, closing, or drained with a handle left).
    pub connections: u64,
}

/// A wake-up flag for the driver task (single executor).
#[derive(Default)]
struct Notify {
    pending: Cell<bool>,
    waker: RefCell<Option<Waker>>,
}

impl Notify {
    fn notify(&self) {
        self.pending.set(true);
        if let Some(w) = self.waker.borrow_mut().take() {
            w.wake();
        }
    }

    async fn wait(&self) {
        poll_fn(|cx| {
            if self.pending.replace(false) {
                Poll::Ready(())
            } else {
                *self.waker.borrow_mut() = Some(cx.waker().clone());
                Poll::Pending
            }
        })
        .await
    }
}

/// State of one connection kept beside quinn's.
struct Conn {
    conn: quinn_proto::Connection,
    connected: bool,
    lost: Option<ConnectionError>,
    /// Waiters for the handshake, new streams, readable or writable streams.
    wakers: Vec<Waker>,
    incoming_uni: VecDeque<StreamId>,
    incoming_bi: VecDeque<StreamId>,
    accepted_by_server: bool,
    /// quinn's handle for this connection (for endpoint events).
    quinn_handle: ConnectionHandle,
    /// Shared with every `Connection` handle: the entry is removed once the connection is
    /// drained and no handle is left (so a long-running endpoint does not accumulate them).
    handles: Rc<()>,
}

impl Conn {
    fn new(
        conn: quinn_proto::Connection,
        quinn_handle: ConnectionHandle,
        accepted_by_server: bool,
    ) -> Conn {
        Conn {
            conn,
            quinn_handle,
            connected: false,
            lost: None,
            wakers: Vec::new(),
            incoming_uni: VecDeque::new(),
            incoming_bi: VecDeque::new(),
            accepted_by_server,
            handles: Rc::new(()),
        }
    }

    fn wake_all(&mut self) {
        for w in self.wakers.drain(..) {
            w.wake();
        }
    }
}

/// How datagrams leave and enter the socket.
enum DatagramIo {
    /// quinn-udp: GSO on send, GRO + `recvmmsg` on receive.
    Offload(quinn_udp::UdpSocketState),
    /// One `sendmsg`/`recvmsg` per datagram.
    Plain,
}

struct Inner {
    endpoint: quinn_proto::Endpoint,
    server_config: Option<Arc<ServerConfig>>,
    /// Our connections by our own id: quinn reuses its `ConnectionHandle`s once a
    /// connection drains, while handles to the old connection may still exist.
    /// Boxed: `drive` takes each out of the map and puts it back, and a quinn connection
    /// is kilobytes (moving it twice per drive was 2.6 % of a move's source core).
    conns: HashMap<ConnId, Box<Conn>>,
    /// quinn's handle of each live connection → our id.
    by_handle: HashMap<ConnectionHandle, ConnId>,
    next_conn: u64,
    accept_queue: VecDeque<ConnId>,
    accept_wakers: Vec<Waker>,
    socket: Rc<glommio::net::UdpSocket>,
    io: DatagramIo,
    max_segments: usize,
    send_buf: Vec<u8>,
    /// A transmit that found the socket full: retried before anything else is sent.
    blocked: Option<(quinn_proto::Transmit, Vec<u8>)>,
    stats: EndpointStats,
    closed: bool,
    /// When a refused handshake was last logged, and how many were refused since.
    refusals_logged: Option<(Instant, u64)>,
    /// The driver task has exited (every connection drained after shutdown).
    driver_done: bool,
    shutdown_wakers: Vec<Waker>,
}

/// A QUIC endpoint owned by the current glommio executor.
#[derive(Clone)]
pub struct QuicEndpoint {
    inner: Rc<RefCell<Inner>>,
    notify: Rc<Notify>,
}

/// One connection of a [`QuicEndpoint`].
#[derive(Clone)]
pub struct Connection {
    endpoint: QuicEndpoint,
    handle: ConnId,
    /// Keeps the endpoint's entry for this connection alive.
    _alive: Rc<()>,
}

/// The sending half of a stream.
pub struct SendStream {
    conn: Connection,
    id: StreamId,
}

/// The receiving half of a stream.
pub struct RecvStream {
    conn: Connection,
    id: StreamId,
}

/// Transport settings; `client` connections (a client endpoint's, which accepts none) have
/// a short idle timeout: a client must notice a node that died with its request in a couple
/// of seconds, not 30 (the idle timeout in force is the smaller of the two sides').
fn transport_config(mtu: u16, client: bool) -> Arc<TransportConfig> {
    let mut t = TransportConfig::default();
    t.initial_mtu(mtu);
    t.min_mtu(mtu);
    t.mtu_discovery_config(None);
    let (keep_alive, idle) = if client {
        (QUIC_CLIENT_KEEP_ALIVE_INTERVAL, QUIC_CLIENT_IDLE_TIMEOUT)
    } else {
        (QUIC_KEEP_ALIVE_INTERVAL, QUIC_IDLE_TIMEOUT)
    };
    t.keep_alive_interval(Some(keep_alive));
    t.max_idle_timeout(Some(
        IdleTimeout::try_from(idle).expect("idle timeout fits a VarInt"),
    ));
    t.stream_receive_window(VarInt::from_u32(QUIC_STREAM_WINDOW_BYTES));
    t.receive_window(VarInt::from_u32(QUIC_STREAM_WINDOW_BYTES.saturating_mul(4)));
    t.send_window(u64::from(QUIC_STREAM_WINDOW_BYTES) * 4);
    t.max_concurrent_uni_streams(VarInt::from_u32(QUIC_MAX_STREAMS));
    t.max_concurrent_bidi_streams(VarInt::from_u32(QUIC_MAX_STREAMS));
    let mut acks = AckFrequencyConfig::default();
    acks.ack_eliciting_threshold(VarInt::from_u32(QUIC_ACK_ELICITING_THRESHOLD));
    t.ack_frequency_config(Some(acks));
    Arc::new(t)
}

fn borrowed(socket: &glommio::net::UdpSocket) -> BorrowedFd<'_> {
    // SAFETY: the fd belongs to `socket`, which outlives the returned borrow.
    unsafe { BorrowedFd::borrow_raw(socket.as_raw_fd()) }
}

impl QuicEndpoint {
    /// Binds the endpoint and spawns its receive and driver tasks on the current executor.
    pub fn bind(options: EndpointOptions) -> Result<QuicEndpoint, TransportError> {
        let bind_err = |source| TransportError::Bind {
            addr: options.bind,
            source,
        };
        let domain = socket2::Domain::for_address(options.bind);
        let raw = socket2::Socket::new(domain, socket2::Type::DGRAM, Some(socket2::Protocol::UDP))
            .map_err(bind_err)?;
        raw.set_nonblocking(true).map_err(bind_err)?;
        raw.bind(&options.bind.into()).map_err(bind_err)?;
        // Best effort: the kernel caps these at net.core.{r,w}mem_max.
        let _ = raw.set_send_buffer_size(QUIC_SEND_BUFFER_BYTES);
        let _ = raw.set_recv_buffer_size(QUIC_RECV_BUFFER_BYTES);
        // SAFETY: `into_raw_fd` hands over sole ownership of a valid, bound UDP socket fd.
        let socket = Rc::new(unsafe { glommio::net::UdpSocket::from_raw_fd(raw.into_raw_fd()) });

        let (io, max_segments) = if options.segmentation_offload {
            let state =
                quinn_udp::UdpSocketState::new((&borrowed(&socket)).into()).map_err(bind_err)?;
            // One GSO send is one UDP datagram to the kernel: at most 65 507 payload bytes,
            // or the send fails with EMSGSIZE (and the loss collapses the window).
            let by_size = UDP_PAYLOAD_MAX_BYTES / usize::from(options.mtu.max(1));
            let segments = state.max_gso_segments().min(by_size);
            if segments <= 1 {
                warn!(addr = %options.bind, "the kernel offers no UDP GSO: one sendmsg per datagram");
            }
            (DatagramIo::Offload(state), segments.max(1))
        } else {
            (DatagramIo::Plain, 1)
        };
        if options.tls.is_insecure() {
            warn!(addr = %options.bind, "QUIC endpoint in INSECURE mode: peers are not authenticated");
        }
        let server_config = if options.server {
            let crypto = QuicServerConfig::try_from(tls::server_config(&options.tls)?)
                .map_err(|e| TransportError::Crypto(e.to_string()))?;
            let mut config = ServerConfig::with_crypto(Arc::new(crypto));
            config.transport_config(transport_config(options.mtu, false));
            Some(Arc::new(config))
        } else {
            None
        };
        let mut endpoint_config = EndpointConfig::default();
        endpoint_config
            .max_udp_payload_size(options.mtu)
            .map_err(|e| TransportError::Crypto(e.to_string()))?;
        let endpoint = quinn_proto::Endpoint::new(
            Arc::new(endpoint_config),
            server_config.clone(),
            false,
            None,
        );
        let stats = EndpointStats {
            gso_active: max_segments > 1,
            max_gso_segments: max_segments as u64,
            insecure: options.tls.is_insecure(),
            ..EndpointStats::default()
        };
        let inner = Inner {
            endpoint,
            server_config,
            conns: HashMap::new(),
            by_handle: HashMap::new(),
            next_conn: 0,
            accept_queue: VecDeque::new(),
            accept_wakers: Vec::new(),
            socket,
            io,
            max_segments,
            send_buf: Vec::new(),
            blocked: None,
            stats,
            closed: false,
            refusals_logged: None,
            driver_done: false,
            shutdown_wakers: Vec::new(),
        };
        let endpoint = QuicEndpoint {
            inner: Rc::new(RefCell::new(inner)),
            notify: Rc::new(Notify::default()),
        };
        let socket = endpoint.inner.borrow().socket.clone();
        glommio::spawn_local(receive_task(
            socket,
            Rc::downgrade(&endpoint.inner),
            endpoint.notify.clone(),
        ))
        .detach();
        glommio::spawn_local(driver_task(
            Rc::downgrade(&endpoint.inner),
            endpoint.notify.clone(),
        ))
        .detach();
        Ok(endpoint)
    }

    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.inner
            .borrow()
            .socket
            .local_addr()
            .map_err(|e| io::Error::other(e.to_string()))
    }

    pub fn stats(&self) -> EndpointStats {
        let inner = self.inner.borrow();
        EndpointStats {
            connections: inner.conns.len() as u64,
            ..inner.stats
        }
    }

    /// Connects to `addr`, verifying its certificate names `server_name`, speaking `alpn`
    /// with `tls` credentials; resolves once the handshake completes.
    pub async fn connect(
        &self,
        addr: SocketAddr,
        server_name: &str,
        tls: &TlsMode,
        alpn: &[u8],
    ) -> Result<Connection, TransportError> {
        let crypto = QuicClientConfig::try_from(tls::client_config(tls, alpn)?)
            .map_err(|e| TransportError::Crypto(e.to_string()))?;
        self.connect_with(addr, server_name, Arc::new(crypto)).await
    }

    /// Connects with an explicit rustls client configuration (tests use it to present no
    /// certificate).
    pub async fn connect_with(
        &self,
        addr: SocketAddr,
        server_name: &str,
        crypto: Arc<QuicClientConfig>,
    ) -> Result<Connection, TransportError> {
        let handle = {
            let mut inner = self.inner.borrow_mut();
            if inner.closed {
                return Err(TransportError::EndpointClosed);
            }
            let mut config = ClientConfig::new(crypto);
            let mtu = inner.endpoint.config().get_max_udp_payload_size() as u16;
            config.transport_config(transport_config(mtu, inner.server_config.is_none()));
            let (handle, conn) = inner
                .endpoint
                .connect(Instant::now(), config, addr, server_name)
                .map_err(|e| TransportError::Connect {
                    addr,
                    reason: e.to_string(),
                })?;
            let id = inner.add_conn(handle, conn, false);
            let alive = inner.conns[&id].handles.clone();
            (id, alive)
        };
        let (handle, alive) = handle;
        self.notify.notify();
        let connection = Connection {
            endpoint: self.clone(),
            handle,
            _alive: alive,
        };
        connection.established().await?;
        Ok(connection)
    }

    /// The next incoming connection whose handshake completed; `None` once shut down.
    pub async fn accept(&self) -> Option<Connection> {
        poll_fn(|cx| {
            let mut inner = self.inner.borrow_mut();
            while let Some(handle) = inner.accept_queue.pop_front() {
                if let Some(entry) = inner.conns.get(&handle) {
                    let alive = entry.handles.clone();
                    return Poll::Ready(Some(Connection {
                        endpoint: self.clone(),
                        handle,
                        _alive: alive,
                    }));
                }
            }
            if inner.closed {
                return Poll::Ready(None);
            }
            inner.accept_wakers.push(cx.waker().clone());
            Poll::Pending
        })
        .await
    }

    /// Closes every connection, lets the driver send the closes, and stops the tasks.
    /// Waits at most `QUIC_SHUTDOWN_GRACE` for connections to drain.
    pub async fn shutdown(&self) {
        {
            let mut inner = self.inner.borrow_mut();
            let now = Instant::now();
            for c in inner.conns.values_mut() {
                c.conn
                    .close(now, VarInt::from_u32(0), Bytes::from_static(b"shutdown"));
            }
            inner.closed = true;
            for w in inner.accept_wakers.drain(..) {
                w.wake();
            }
        }
        self.notify.notify();
        let drained = poll_fn(|cx| {
            let mut inner = self.inner.borrow_mut();
            if inner.driver_done {
                return Poll::Ready(());
            }
            inner.shutdown_wakers.push(cx.waker().clone());
            Poll::Pending
        });
        future::or(drained, glommio::timer::sleep(QUIC_SHUTDOWN_GRACE)).await;
        self.release_port();
    }

    /// Frees the UDP port now, whatever still holds this endpoint. Tasks parked on a
    /// connection (a stream read, a snapshot send) keep the endpoint's state — and with
    /// it the socket — alive past its executor: a node restarted in the same process then
    /// could not bind its port ("address in use", for the life of the process). The fd
    /// number is pointed at a fresh unbound socket, and the wait the receive task has in
    /// flight on the bound one (which holds it open until it completes) is completed with
    /// one datagram.
    fn release_port(&self) {
        let inner = self.inner.borrow();
        let socket = &inner.socket;
        let Ok(addr) = socket.local_addr() else {
            return;
        };
        let fresh = match socket2::Socket::new(
            socket2::Domain::for_address(addr),
            socket2::Type::DGRAM,
            None,
        ) {
            Ok(fresh) => fresh,
            Err(e) => {
                warn!(%addr, error = %e, "no socket to release the endpoint's port with");
                return;
            }
        };
        // SAFETY: both fds are open and owned by live objects; `dup2` atomically makes the
        // endpoint's fd number refer to the unbound socket (dropping its reference to the
        // bound one), and the endpoint's socket object still owns and later closes it.
        if unsafe { libc::dup2(fresh.as_raw_fd(), socket.as_raw_fd()) } < 0 {
            warn!(%addr, error = %io::Error::last_os_error(), "could not release the endpoint's port");
            return;
        }
        let target = match addr.ip() {
            ip if ip.is_unspecified() && addr.is_ipv4() => {
                SocketAddr::from((std::net::Ipv4Addr::LOCALHOST, addr.port()))
            }
            ip if ip.is_unspecified() => {
                SocketAddr::from((std::net::Ipv6Addr::LOCALHOST, addr.port()))
            }
            _ => addr,
        };
        let from = SocketAddr::new(
            if target.is_ipv4() {
                std::net::Ipv4Addr::UNSPECIFIED.into()
            } else {
                std::net::Ipv6Addr::UNSPECIFIED.into()
            },
            0,
        );
        if let Ok(poke) = std::net::UdpSocket::bind(from) {
            let _ = poke.send_to(&[0], target);
        }
    }
}

impl Connection {
    /// The ALPN protocol agreed in the handshake.
    pub fn alpn(&self) -> Option<Vec<u8>> {
        self.with(|c| {
            c.conn
                .crypto_session()
                .handshake_data()
                .and_then(|d| {
                    d.downcast::<quinn_proto::crypto::rustls::HandshakeData>()
                        .ok()
                })
                .and_then(|d| d.protocol)
        })
    }

    pub fn remote_address(&self) -> SocketAddr {
        self.with(|c| c.conn.remote_address())
    }

    /// The peer's certificate chain (DER), when it presented one.
    pub fn peer_certificates(&self) -> Vec<Vec<u8>> {
        self.with(|c| {
            c.conn
                .crypto_session()
                .peer_identity()
                .and_then(|any| {
                    any.downcast::<Vec<rustls::pki_types::CertificateDer<'static>>>()
                        .ok()
                })
                .map(|certs| certs.iter().map(|c| c.to_vec()).collect())
                .unwrap_or_default()
        })
    }

    /// Whether this side accepted the connection (it is the server).
    pub fn is_incoming(&self) -> bool {
        self.with(|c| c.accepted_by_server)
    }

    fn with<T>(&self, f: impl FnOnce(&mut Conn) -> T) -> T {
        let mut inner = self.endpoint.inner.borrow_mut();
        let conn = inner
            .conns
            .get_mut(&self.handle)
            .expect("a Connection handle keeps its entry until drained");
        f(conn)
    }

    /// Polls `f` on this connection until it returns `Some`, registering for wake-ups.
    async fn wait_for<T>(
        &self,
        mut f: impl FnMut(&mut Conn) -> Option<Result<T, TransportError>>,
    ) -> Result<T, TransportError> {
        poll_fn(|cx| {
            let mut inner = self.endpoint.inner.borrow_mut();
            let Some(conn) = inner.conns.get_mut(&self.handle) else {
                return Poll::Ready(Err(TransportError::EndpointClosed));
            };
            if let Some(result) = f(conn) {
                return Poll::Ready(result);
            }
            if let Some(reason) = conn.lost.clone() {
                return Poll::Ready(Err(TransportError::Closed(reason)));
            }
            conn.wakers.push(cx.waker().clone());
            Poll::Pending
        })
        .await
    }

    async fn established(&self) -> Result<(), TransportError> {
        self.wait_for(|c| c.connected.then_some(Ok(()))).await
    }

    /// Opens a unidirectional stream, waiting while the peer's stream limit is reached.
    pub async fn open_uni(&self) -> Result<SendStream, TransportError> {
        let id = self
            .wait_for(|c| c.conn.streams().open(Dir::Uni).map(Ok))
            .await?;
        Ok(SendStream {
            conn: self.clone(),
            id,
        })
    }

    /// Opens a bidirectional stream.
    pub async fn open_bi(&self) -> Result<(SendStream, RecvStream), TransportError> {
        let id = self
            .wait_for(|c| c.conn.streams().open(Dir::Bi).map(Ok))
            .await?;
        Ok((
            SendStream {
                conn: self.clone(),
                id,
            },
            RecvStream {
                conn: self.clone(),
                id,
            },
        ))
    }

    /// The next unidirectional stream the peer opened.
    pub async fn accept_uni(&self) -> Result<RecvStream, TransportError> {
        let id = self
            .wait_for(|c| c.incoming_uni.pop_front().map(Ok))
            .await?;
        Ok(RecvStream {
            conn: self.clone(),
            id,
        })
    }

    /// The next bidirectional stream the peer opened.
    pub async fn accept_bi(&self) -> Result<(SendStream, RecvStream), TransportError> {
        let id = self.wait_for(|c| c.incoming_bi.pop_front().map(Ok)).await?;
        Ok((
            SendStream {
                conn: self.clone(),
                id,
            },
            RecvStream {
                conn: self.clone(),
                id,
            },
        ))
    }

    /// Resolves when the connection is closed, with the reason.
    pub async fn closed(&self) -> ConnectionError {
        match self.wait_for(|_| None::<Result<(), TransportError>>).await {
            Err(TransportError::Closed(reason)) => reason,
            _ => ConnectionError::LocallyClosed,
        }
    }

    /// Closes the connection with an application error code.
    pub fn close(&self, code: u32, reason: &[u8]) {
        self.with(|c| {
            c.conn.close(
                Instant::now(),
                VarInt::from_u32(code),
                Bytes::copy_from_slice(reason),
            )
        });
        self.endpoint.notify.notify();
    }
}

impl SendStream {
    /// Writes all of `data`, waiting for flow-control credit as needed.
    pub async fn write_all(&mut self, mut data: &[u8]) -> Result<(), TransportError> {
        while !data.is_empty() {
            let id = self.id;
            let written = self
                .conn
                .wait_for(|c| match c.conn.send_stream(id).write(data) {
                    Ok(n) => Some(Ok(n)),
                    Err(quinn_proto::WriteError::Blocked) => None,
                    Err(_) => Some(Err(TransportError::StreamReset(id))),
                })
                .await?;
            data = &data[written..];
            self.conn.endpoint.notify.notify();
        }
        Ok(())
    }

    /// Ends the stream: the peer reads to its end.
    pub fn finish(&mut self) -> Result<(), TransportError> {
        let id = self.id;
        let result = self.conn.with(|c| c.conn.send_stream(id).finish());
        self.conn.endpoint.notify.notify();
        result.map_err(|_| TransportError::StreamReset(id))
    }

    pub fn id(&self) -> StreamId {
        self.id
    }

    /// Sets the stream's send priority: higher goes first when several streams have data.
    pub fn set_priority(&mut self, priority: i32) -> Result<(), TransportError> {
        let id = self.id;
        self.conn
            .with(|c| c.conn.send_stream(id).set_priority(priority))
            .map_err(|_| TransportError::StreamReset(id))
    }
}

impl RecvStream {
    /// The next chunk of at most `max` bytes; `None` at the end of the stream.
    pub async fn read_chunk(&mut self, max: usize) -> Result<Option<Bytes>, TransportError> {
        let id = self.id;
        let endpoint = self.conn.endpoint.notify.clone();
        self.conn
            .wait_for(|c| {
                let mut stream = c.conn.recv_stream(id);
                let mut chunks = match stream.read(true) {
                    Ok(chunks) => chunks,
                    Err(_) => return Some(Err(TransportError::StreamReset(id))),
                };
                let result = match chunks.next(max) {
                    Ok(Some(chunk)) => Some(Ok(Some(chunk.bytes))),
                    Ok(None) => Some(Ok(None)),
                    Err(quinn_proto::ReadError::Blocked) => None,
                    Err(quinn_proto::ReadError::Reset(_)) => {
                        Some(Err(TransportError::StreamReset(id)))
                    }
                };
                if chunks.finalize().should_transmit() {
                    // Flow-control credit to send: let the driver run.
                    endpoint.notify();
                }
                result
            })
            .await
    }

    pub fn id(&self) -> StreamId {
        self.id
    }

    /// Asks the peer to stop sending on this stream (it sees `code`); what it already sent
    /// is discarded.
    pub fn stop(&mut self, code: u32) {
        let id = self.id;
        let _ = self
            .conn
            .with(|c| c.conn.recv_stream(id).stop(VarInt::from_u32(code)));
        self.conn.endpoint.notify.notify();
    }
}

/// Waits for readability, then drains the socket into the endpoint. Never cancelled.
async fn receive_task(
    socket: Rc<glommio::net::UdpSocket>,
    inner: Weak<RefCell<Inner>>,
    notify: Rc<Notify>,
) {
    let mut storage = vec![0u8; QUIC_RECV_BATCH * QUIC_RECV_SLOT_BYTES];
    let mut meta = vec![quinn_udp::RecvMeta::default(); QUIC_RECV_BATCH];
    let mut peek = [0u8; 1];
    loop {
        // `peek_from` consumes nothing, so waiting here loses no datagram whatever happens.
        if let Err(e) = socket.peek_from(&mut peek).await {
            debug!(error = %e, "UDP peek failed");
        }
        let closed = {
            let Some(rc) = inner.upgrade() else { return };
            let mut guard = rc.borrow_mut();
            if !guard.closed {
                drain_socket(&mut guard, &socket, &mut storage, &mut meta);
            }
            guard.closed
        };
        if closed {
            return;
        }
        notify.notify();
        // `peek_from` completes without suspending while data is queued: yield explicitly.
        future::yield_now().await;
    }
}

/// Feeds what the socket holds to the endpoint. Bounded: a busy socket must not starve the
/// driver (ACKs, flow-control credit) or the application tasks of this core.
fn drain_socket(
    inner: &mut Inner,
    socket: &glommio::net::UdpSocket,
    storage: &mut [u8],
    meta: &mut [quinn_udp::RecvMeta],
) {
    for _ in 0..QUIC_RECV_ROUNDS_PER_TURN {
        match recv_batch(inner, socket, storage, meta) {
            Ok(0) => return,
            Ok(n) => {
                let now = Instant::now();
                for (i, m) in meta[..n].iter().enumerate() {
                    let start = i * QUIC_RECV_SLOT_BYTES;
                    handle_received(inner, now, m, &storage[start..start + m.len]);
                }
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
            Err(e) => {
                debug!(error = %e, "UDP receive failed");
                return;
            }
        }
    }
}

/// Receives up to `QUIC_RECV_BATCH` datagrams (each possibly a GRO super-datagram).
fn recv_batch(
    inner: &mut Inner,
    socket: &glommio::net::UdpSocket,
    storage: &mut [u8],
    meta: &mut [quinn_udp::RecvMeta],
) -> io::Result<usize> {
    match &inner.io {
        DatagramIo::Offload(state) => {
            let mut slices: Vec<IoSliceMut<'_>> = storage
                .chunks_mut(QUIC_RECV_SLOT_BYTES)
                .map(IoSliceMut::new)
                .collect();
            let n = state.recv((&borrowed(socket)).into(), &mut slices, meta)?;
            inner.stats.recv_calls += 1;
            Ok(n)
        }
        DatagramIo::Plain => {
            let fd = borrowed(socket);
            let sock = socket2::SockRef::from(&fd);
            let buf = &mut storage[..QUIC_RECV_SLOT_BYTES];
            // SAFETY: `MaybeUninit<u8>` has the layout of `u8`; the buffer is initialised.
            let uninit = unsafe { &mut *(buf as *mut [u8] as *mut [std::mem::MaybeUninit<u8>]) };
            let (len, addr) = sock.recv_from(uninit)?;
            let addr = addr
                .as_socket()
                .ok_or_else(|| io::Error::other("non-IP peer address"))?;
            inner.stats.recv_calls += 1;
            meta[0] = quinn_udp::RecvMeta {
                addr,
                len,
                stride: len,
                ecn: None,
                dst_ip: None,
            };
            Ok(1)
        }
    }
}

/// Feeds one received buffer (split into `stride`-sized datagrams) to the endpoint.
fn handle_received(inner: &mut Inner, now: Instant, meta: &quinn_udp::RecvMeta, data: &[u8]) {
    let stride = meta.stride.max(1);
    for datagram in data.chunks(stride) {
        inner.stats.datagrams_received += 1;
        let ecn = meta
            .ecn
            .and_then(|e| quinn_proto::EcnCodepoint::from_bits(e as u8));
        let mut response = Vec::new();
        let event = inner.endpoint.handle(
            now,
            meta.addr,
            meta.dst_ip,
            ecn,
            BytesMut::from(datagram),
            &mut response,
        );
        match event {
            Some(DatagramEvent::ConnectionEvent(handle, event)) => {
                let id = inner.by_handle.get(&handle).copied();
                if let Some(c) = id.and_then(|id| inner.conns.get_mut(&id)) {
                    c.conn.handle_event(event);
                }
            }
            Some(DatagramEvent::NewConnection(incoming)) => {
                if inner.closed
                    || inner.server_config.is_none()
                    || inner.conns.len() >= QUIC_CONNECTIONS_MAX
                {
                    let transmit = inner.endpoint.refuse(incoming, &mut response);
                    inner.queue_response(transmit, response);
                    continue;
                }
                // Address validation first: an Initial from an address that has not echoed
                // a Retry token costs one stateless reply and no handshake state, so a
                // flood of Initials (spoofed or not) cannot grow memory.
                if incoming.may_retry() {
                    match inner.endpoint.retry(incoming, &mut response) {
                        Ok(transmit) => inner.queue_response(transmit, response),
                        Err(e) => inner.endpoint.ignore(e.into_incoming()),
                    }
                    continue;
                }
                match inner.endpoint.accept(incoming, now, &mut response, None) {
                    Ok((handle, conn)) => {
                        inner.add_conn(handle, conn, true);
                    }
                    Err(e) => {
                        debug!(error = %e.cause, "incoming connection refused");
                        if let Some(transmit) = e.response {
                            inner.queue_response(transmit, response);
                        }
                    }
                }
            }
            Some(DatagramEvent::Response(transmit)) => inner.queue_response(transmit, response),
            None => {}
        }
    }
}

/// Our id of a connection, never reused (unlike quinn's `ConnectionHandle`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
struct ConnId(u64);

/// At most one log line per this interval about refused handshakes: a peer retrying with a
/// bad certificate, or a flood of them, must not flood the log.
const REFUSAL_LOG_INTERVAL: std::time::Duration = std::time::Duration::from_secs(10);

impl Inner {
    /// Counts a TLS handshake this endpoint refused and logs it, rate-limited: the first at
    /// once, then one line per `REFUSAL_LOG_INTERVAL` that says how many came since.
    fn note_refused_handshake(&mut self, from: SocketAddr, why: &str) {
        self.stats.handshakes_refused += 1;
        let now = Instant::now();
        match &mut self.refusals_logged {
            Some((at, since)) if now.duration_since(*at) < REFUSAL_LOG_INTERVAL => *since += 1,
            logged => {
                let before = logged.map_or(0, |(_, since)| since);
                info!(
                    peer = %from,
                    reason = why,
                    refused_since_last_line = before,
                    "refused a TLS handshake: the peer's certificate did not verify (not issued by this cluster's CA, expired, or for the wrong role)"
                );
                *logged = Some((now, 0));
            }
        }
    }

    fn add_conn(
        &mut self,
        handle: ConnectionHandle,
        conn: quinn_proto::Connection,
        accepted: bool,
    ) -> ConnId {
        let id = ConnId(self.next_conn);
        self.next_conn += 1;
        self.by_handle.insert(handle, id);
        self.conns
            .insert(id, Box::new(Conn::new(conn, handle, accepted)));
        id
    }

    /// Sends a stateless response now (best effort: it is retried by the peer if lost).
    fn queue_response(&mut self, transmit: quinn_proto::Transmit, buf: Vec<u8>) {
        if self.send(&transmit, &buf[..transmit.size]).is_err() {
            debug!("dropped a stateless response");
        }
    }

    fn send(&mut self, t: &quinn_proto::Transmit, contents: &[u8]) -> io::Result<()> {
        let segments = t.segment_size.map_or(1, |s| contents.len().div_ceil(s)) as u64;
        let socket = borrowed(&self.socket);
        match &self.io {
            DatagramIo::Offload(state) => {
                let transmit = quinn_udp::Transmit {
                    destination: t.destination,
                    ecn: t.ecn.map(|e| {
                        quinn_udp::EcnCodepoint::from_bits(e as u8).expect("same ECN codepoints")
                    }),
                    contents,
                    segment_size: t.segment_size,
                    src_ip: t.src_ip,
                };
                state.try_send((&socket).into(), &transmit)?;
            }
            DatagramIo::Plain => {
                let sock = socket2::SockRef::from(&socket);
                sock.send_to(contents, &t.destination.into())?;
            }
        }
        self.stats.send_calls += 1;
        self.stats.datagrams_sent += segments;
        Ok(())
    }

    /// One turn of the driver: timers, endpoint events, transmits, application events.
    /// Returns the next deadline, and whether the socket was full (retry soon).
    fn drive(&mut self, now: Instant) -> (Option<Instant>, bool) {
        if let Some((t, buf)) = self.blocked.take() {
            match self.send(&t, &buf[..t.size]) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    self.stats.send_would_block += 1;
                    self.blocked = Some((t, buf));
                    return (None, true);
                }
                Err(e) => debug!(error = %e, "UDP send failed"),
            }
        }
        let handles: Vec<ConnId> = self.conns.keys().copied().collect();
        let mut deadline: Option<Instant> = None;
        let mut drained = Vec::new();
        for handle in handles {
            let Some(mut c) = self.conns.remove(&handle) else {
                continue;
            };
            // A connection this endpoint opened that no handle holds any more can never be
            // used again: close it. Left open, its keep-alives would hold it (and its peer's
            // side) forever, and every turn of both drivers would poll it.
            if !c.accepted_by_server && Rc::strong_count(&c.handles) == 1 && !c.conn.is_closed() {
                c.conn
                    .close(now, VarInt::from_u32(0), Bytes::from_static(b"unused"));
            }
            if c.conn.poll_timeout().is_some_and(|t| t <= now) {
                c.conn.handle_timeout(now);
            }
            while let Some(event) = c.conn.poll_endpoint_events() {
                if let Some(reply) = self.endpoint.handle_event(c.quinn_handle, event) {
                    c.conn.handle_event(reply);
                }
            }
            let mut woke = false;
            while let Some(event) = c.conn.poll() {
                woke = true;
                match event {
                    Event::Connected => {
                        c.connected = true;
                        if c.accepted_by_server {
                            self.accept_queue.push_back(handle);
                            for w in self.accept_wakers.drain(..) {
                                w.wake();
                            }
                        }
                    }
                    Event::ConnectionLost { reason } => {
                        if !c.connected
                            && let Some(HandshakeRefusal::Here(why)) = HandshakeRefusal::of(&reason)
                        {
                            self.note_refused_handshake(c.conn.remote_address(), &why);
                        }
                        debug!(%reason, "connection lost");
                        c.lost = Some(reason);
                    }
                    Event::Stream(StreamEvent::Opened { dir }) => {
                        while let Some(id) = c.conn.streams().accept(dir) {
                            match dir {
                                Dir::Uni => c.incoming_uni.push_back(id),
                                Dir::Bi => c.incoming_bi.push_back(id),
                            }
                        }
                    }
                    _ => {}
                }
            }
            let mut blocked = false;
            if self.blocked.is_none() {
                loop {
                    self.send_buf.clear();
                    let Some(t) = c
                        .conn
                        .poll_transmit(now, self.max_segments, &mut self.send_buf)
                    else {
                        break;
                    };
                    let buf = std::mem::take(&mut self.send_buf);
                    match self.send(&t, &buf[..t.size]) {
                        Ok(()) => self.send_buf = buf,
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                            self.stats.send_would_block += 1;
                            self.blocked = Some((t, buf));
                            blocked = true;
                            break;
                        }
                        Err(e) => {
                            debug!(error = %e, "UDP send failed");
                            self.send_buf = buf;
                        }
                    }
                }
            }
            // Waiters re-check their condition (handshake, stream credit, data) and wait
            // again if it does not hold; a spurious wake costs one poll.
            let _ = (woke, blocked);
            c.wake_all();
            if let Some(t) = c.conn.poll_timeout() {
                deadline = Some(deadline.map_or(t, |d: Instant| d.min(t)));
            }
            if c.conn.is_drained() {
                drained.push(handle);
                c.wake_all();
            }
            self.conns.insert(handle, c);
        }
        for handle in drained {
            // A drained connection stays visible (as lost) while handles may look at it, and
            // goes once the last handle is gone.
            if let Some(c) = self.conns.get_mut(&handle) {
                if c.lost.is_none() {
                    c.lost = Some(ConnectionError::LocallyClosed);
                }
                // quinn has forgotten the connection and may reuse its handle.
                if self.by_handle.get(&c.quinn_handle) == Some(&handle) {
                    self.by_handle.remove(&c.quinn_handle);
                }
                if Rc::strong_count(&c.handles) == 1 {
                    self.conns.remove(&handle);
                }
            }
        }
        (deadline, self.blocked.is_some())
    }
}

/// Runs `Inner::drive` whenever notified or a timer expires.
async fn driver_task(inner: Weak<RefCell<Inner>>, notify: Rc<Notify>) {
    loop {
        let Some(rc) = inner.upgrade() else { return };
        let (deadline, socket_full, closed) = {
            let mut guard = rc.borrow_mut();
            let (deadline, full) = guard.drive(Instant::now());
            (
                deadline,
                full,
                guard.closed
                    && guard
                        .conns
                        .values()
                        .all(|c| c.conn.is_drained() || c.lost.is_some()),
            )
        };
        if closed {
            let mut guard = rc.borrow_mut();
            guard.driver_done = true;
            for w in guard.shutdown_wakers.drain(..) {
                w.wake();
            }
            return;
        }
        drop(rc);
        let wait = if socket_full {
            QUIC_SEND_RETRY
        } else {
            deadline.map_or(QUIC_IDLE_TIMEOUT, |d| {
                d.saturating_duration_since(Instant::now())
            })
        };
        let by_timer = future::or(
            async {
                notify.wait().await;
                false
            },
            async {
                glommio::timer::sleep(wait).await;
                true
            },
        )
        .await;
        if let Some(rc) = inner.upgrade() {
            let mut guard = rc.borrow_mut();
            guard.stats.driver_turns += 1;
            guard.stats.timer_wakes += u64::from(by_timer);
        }
    }
}
