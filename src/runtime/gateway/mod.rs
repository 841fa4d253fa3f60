//! `wgbroker gateway`'s I/O: one executor running the tunnel (every broker's peer, one
//! netstack at the gateway's address), the front door (HTTP/1.1 on kernel TCP), the health
//! checks and the heartbeat responder. The decisions are [`crate::gateway`]'s.
//!
//! ## Tasks
//!
//! | task | does |
//! |---|---|
//! | `rx_loop` | receives datagrams, decrypts them ([`PeerTable`], cryptokey routing), feeds the netstack |
//! | `driver_loop` | polls the netstack, encrypts what it sends, accepts heartbeat connections |
//! | `timer_loop` | WireGuard timers, the brokers' session ages into the balancer, health checks due, check timeouts |
//! | `front_loop` | accepts front-door connections; `front_conn` serves each |
//! | `check` | one health check: `GET /healthcheck` to a broker through the tunnel |
//! | `heartbeat` | answers `GET /heartbeat` from a broker (200) inside the tunnel |
//!
//! ## One executor
//!
//! Everything runs on one glommio executor: the balancer is one `RefCell` that every request
//! and check touches, and on the 2-CPU machines this was built on, a second executor costs
//! more in hand-offs than it gains (see [`super::placement`]). Scaling out is running several
//! gateways, each listed as a peer by every broker (README, "Gateway").
//!
//! ## A request on the front door
//!
//! The head is parsed and validated by the broker's own parser ([`crate::http::parse_head`]),
//! routed ([`crate::gateway::route`]), and sent through the tunnel to a broker
//! [`Balancer::pick`]s, as `METHOD /proxy/<URL>` (the target byte for byte), on an idle
//! keep-alive connection to that broker ([`crate::gateway::pool`]) or a new one. The request
//! body follows, streamed; then the response is streamed back with
//! `X-Wgbroker-Broker: <tenant>/<address>` added, read to its end by its framing
//! (`Content-Length`, chunked, none for `HEAD`/204/304), after which the connection goes back
//! to the pool — unless the broker said `Connection: close`, the response runs until close, the
//! request body was not sent whole, or anything followed the response. A connection per request
//! cost a TCP handshake inside the tunnel and about twice the datagrams per request (5.2k
//! req/s through gateway + broker where the broker alone served 37k). The client's own
//! connection is kept alive when the response is delimited.
//!
//! A kept-alive connection is checked before each use, with no await between the check and the
//! write of the head: still `ESTABLISHED`, nothing unread (a broker that closed it while idle
//! sent a FIN). One found closed is discarded and the request takes another or a new one; the
//! timer loop also sweeps the pool every turn. A close that crosses the request on the wire
//! cannot be told from a broker that received the request and died: after the request's bytes
//! went out it is [`Outcome::ReusedDiedBeforeResponse`], retried only by the idempotent rule.
//!
//! Failures follow [`Retry`]: a connection that cannot be opened (within `connect_timeout`, or
//! its broker leaves rotation meanwhile) goes to another broker; an idempotent request without
//! a body whose broker leaves rotation or breaks off before any response byte is sent once
//! more. A dead broker sends no reset (its netstack died with it): leaving rotation is the
//! signal, and in-flight attempts watch for it.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::task::{Poll, Waker};
use std::time::{Duration, Instant};

use futures_lite::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, future};
use glommio::net::{TcpListener, TcpStream, UdpSocket};

use super::stream::StreamOut;

use crate::config::gateway::GatewayConfig;
use crate::gateway::balance::{Balancer, BrokerId, Event, Next, Outcome, Retry, TenantId};
use crate::gateway::pool::{Pool, PoolLimits};
use crate::gateway::route::{Route, route};
use crate::http::{BodyFraming, ChunkedDecoder, Limits, RequestHead, parse_head};
use crate::netstack::{ConnId, StackConfig, StackSet, State};
use crate::packet::BufPool;
use crate::tunnel::{PeerId, PeerTable, Received, Sent, TICK_INTERVAL, required_buffer_len};

/// Longest front-door request head.
const MAX_HEAD: usize = 16 << 10;
/// Most headers in a front-door request.
const MAX_HEADERS: usize = 100;
/// How often an attempt in flight looks whether its broker left rotation.
const WATCH_INTERVAL: Duration = Duration::from_millis(50);
/// Longest park of the driver.
const MAX_PARK: Duration = Duration::from_millis(100);
/// The header naming the broker that served a request.
pub const BROKER_HEADER: &str = "X-Wgbroker-Broker";

/// Counters of one broker, read by the control thread (`/metrics`). A reload that adds a
/// broker gives it fresh counters; a removed one's are no longer exported.
#[derive(Debug, Default)]
pub struct BrokerCounters {
    /// Its tenant's name and tunnel address (the metrics' labels).
    pub tenant: String,
    pub address: String,
    /// Exported: configured, or removed by a reload and still draining.
    pub live: AtomicBool,
    /// Removed by a reload, with requests still in flight.
    pub draining: AtomicBool,
    /// Attempts sent to it.
    pub requests: AtomicU64,
    /// Attempts that failed (connect, broke off).
    pub errors: AtomicU64,
    /// Sum of the times to the response head of answered attempts, microseconds.
    pub latency_us: AtomicU64,
    /// Answered attempts.
    pub answered: AtomicU64,
    /// Age of the last handshake, milliseconds; `u64::MAX` without one.
    pub handshake_age_ms: AtomicU64,
    /// In rotation.
    pub healthy: AtomicBool,
    /// Health checks that failed.
    pub checks_failed: AtomicU64,
    /// Tunnel connections opened for requests (health checks open their own).
    pub connections_opened: AtomicU64,
    /// Attempts sent on a connection kept alive from an earlier request.
    pub connections_reused: AtomicU64,
    /// Idle kept-alive connections now.
    pub idle: AtomicU64,
    /// Idle kept-alive connections found closed by the broker (discarded before any byte of a
    /// request was written to them).
    pub idle_closed_by_broker: AtomicU64,
}

/// What the gateway publishes for the control thread.
#[derive(Debug)]
pub struct GatewayStatus {
    /// The executor runs and its sockets are bound.
    pub running: AtomicBool,
    /// Per broker slot, in [`BrokerId`] order (see [`GatewayStatus::broker`]).
    brokers: std::sync::RwLock<Vec<Arc<BrokerCounters>>>,
    /// A reloaded configuration the executor has yet to apply ([`GatewayHandle::reload`]).
    pending: std::sync::Mutex<Option<GatewayConfig>>,
    /// Reloads applied.
    pub reloads: AtomicU64,
    /// Reloads refused (`gateway.reload_refused`: nothing of them applied).
    pub reloads_refused: AtomicU64,
    /// Front-door requests for no tenant or an unknown one (404).
    pub not_found: AtomicU64,
    /// Front-door requests answered 503 (no healthy broker).
    pub unavailable: AtomicU64,
    /// Front-door requests refused as malformed (4xx before routing).
    pub malformed: AtomicU64,
    /// Heartbeats answered inside the tunnel.
    pub heartbeats: AtomicU64,
    /// Packets the tunnel dropped (bad source, replay, garbage).
    pub tunnel_dropped: AtomicU64,
}

impl GatewayStatus {
    fn new() -> Self {
        Self {
            running: AtomicBool::new(false),
            brokers: std::sync::RwLock::new(Vec::new()),
            pending: std::sync::Mutex::new(None),
            reloads: AtomicU64::new(0),
            reloads_refused: AtomicU64::new(0),
            not_found: AtomicU64::new(0),
            unavailable: AtomicU64::new(0),
            malformed: AtomicU64::new(0),
            heartbeats: AtomicU64::new(0),
            tunnel_dropped: AtomicU64::new(0),
        }
    }
}

impl GatewayStatus {
    /// The counters of broker slot `i` (configured or draining).
    pub fn broker(&self, i: usize) -> Option<Arc<BrokerCounters>> {
        self.brokers.read().ok()?.get(i).cloned()
    }

    /// Every configured broker's counters, in [`BrokerId`] order.
    pub fn live_brokers(&self) -> Vec<Arc<BrokerCounters>> {
        self.brokers.read().map_or_else(
            |_| Vec::new(),
            |v| {
                v.iter()
                    .filter(|c| c.live.load(Ordering::Relaxed))
                    .cloned()
                    .collect()
            },
        )
    }

    /// Fresh counters for slot `i`, labelled `tenant` and `address`.
    fn set_broker(&self, i: usize, tenant: &str, address: std::net::IpAddr) {
        let c = Arc::new(BrokerCounters {
            tenant: tenant.to_owned(),
            address: address.to_string(),
            live: AtomicBool::new(true),
            handshake_age_ms: AtomicU64::new(u64::MAX),
            ..BrokerCounters::default()
        });
        if let Ok(mut v) = self.brokers.write() {
            if i < v.len() {
                v[i] = c;
            } else {
                v.push(c);
            }
        }
    }

    fn retire_broker(&self, i: usize) {
        if let Some(c) = self.broker(i) {
            c.live.store(false, Ordering::Relaxed);
        }
    }
}

/// A running gateway.
#[derive(Debug)]
pub struct GatewayHandle {
    stop: Arc<AtomicBool>,
    join: Option<glommio::ExecutorJoinHandle<()>>,
    pub status: Arc<GatewayStatus>,
    /// Where WireGuard listens (the port, when 0 was asked for).
    pub udp_addr: SocketAddr,
    /// Where the front door listens.
    pub front_addr: SocketAddr,
    /// Where the brokers' `tls` transport is accepted (`[gateway] tls_listen`), if it is.
    pub tls_addr: Option<SocketAddr>,
}

impl GatewayHandle {
    /// Hands a reloaded configuration to the executor, which applies its tenants and brokers
    /// at its next timer turn (within [`MAX_PARK`]); see [`apply_reload`]. What cannot change
    /// live (`[gateway]`, `[admin]`, `[runtime]`, `[log]`) is the caller's to report.
    pub fn reload(&self, config: GatewayConfig) {
        if let Ok(mut p) = self.status.pending.lock() {
            *p = Some(config);
        }
    }

    /// Stops the executor and waits for it.
    pub fn stop(mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(j) = self.join.take() {
            let _ = j.join();
        }
    }
}

impl Drop for GatewayHandle {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(j) = self.join.take() {
            let _ = j.join();
        }
    }
}

/// Why the gateway could not start.
#[derive(Debug, thiserror::Error)]
pub enum GatewayStartError {
    #[error("WireGuard socket {addr}: {source}")]
    Udp { addr: SocketAddr, source: io::Error },
    #[error("WireGuard TCP transport listener {addr} (the UDP port, over TCP): {source}")]
    Streams { addr: SocketAddr, source: io::Error },
    #[error("WireGuard TLS transport listener {addr} (gateway.tls_listen): {source}")]
    TlsListen { addr: SocketAddr, source: io::Error },
    #[error("gateway.tls_cert / gateway.tls_key: {0}")]
    TlsCertificate(String),
    #[error("front door {addr}: {source}")]
    Front { addr: SocketAddr, source: io::Error },
    #[error("tunnel: {0}")]
    Tunnel(String),
    #[error("executor: {0}")]
    Executor(String),
}

/// The WireGuard UDP socket and the stream transports' TCP listener ([`crate::transport`]) on
/// the same port. With port 0 the kernel picks the UDP port, and that number may be taken on
/// the TCP side (another process's connection): then both are dropped and the pair is tried
/// again, up to [`PORT_PAIR_TRIES`] times.
fn wireguard_sockets(
    listen: SocketAddr,
) -> Result<(std::net::UdpSocket, SocketAddr, std::net::TcpListener), GatewayStartError> {
    let mut tries = 0;
    loop {
        tries += 1;
        let udp = std::net::UdpSocket::bind(listen).map_err(|source| GatewayStartError::Udp {
            addr: listen,
            source,
        })?;
        let udp_addr = udp.local_addr().map_err(|source| GatewayStartError::Udp {
            addr: listen,
            source,
        })?;
        match std::net::TcpListener::bind(udp_addr) {
            Ok(streams) => return Ok((udp, udp_addr, streams)),
            Err(e)
                if listen.port() == 0
                    && e.kind() == io::ErrorKind::AddrInUse
                    && tries < PORT_PAIR_TRIES => {}
            Err(source) => {
                return Err(GatewayStartError::Streams {
                    addr: udp_addr,
                    source,
                });
            }
        }
    }
}

/// How many kernel-picked UDP ports [`wireguard_sockets`] tries before giving up.
const PORT_PAIR_TRIES: u32 = 16;

/// Binds the sockets and starts the gateway's executor.
pub fn start_gateway(config: &GatewayConfig) -> Result<GatewayHandle, GatewayStartError> {
    let g = &config.gateway;
    let (udp, udp_addr, streams) = wireguard_sockets(g.listen)?;
    {
        let s = socket2::SockRef::from(&udp);
        let _ = s.set_recv_buffer_size(config.runtime.udp_recv_buffer);
        let _ = s.set_send_buffer_size(config.runtime.udp_send_buffer);
    }
    let tls = streams::tls_listener(g)?;
    let tls_addr = tls.as_ref().map(|t| t.2);
    let front =
        std::net::TcpListener::bind(g.front).map_err(|source| GatewayStartError::Front {
            addr: g.front,
            source,
        })?;
    let front_addr = front
        .local_addr()
        .map_err(|source| GatewayStartError::Front {
            addr: g.front,
            source,
        })?;
    let now = Instant::now();
    let table = PeerTable::new(&g.private_key, crate::gateway::peer_specs(config), now)
        .map_err(|e| GatewayStartError::Tunnel(e.to_string()))?;
    let mtu = usize::from(g.mtu);
    let stack = StackConfig {
        address: g.address,
        mtu,
        listen_port: 80,
        // Half-open handshakes per table (brokers' heartbeats): `[runtime] listen_backlog`, so
        // a fleet whose heartbeats arrive in one round trip is not made to resend SYNs.
        backlog: config.runtime.listen_backlog.min(1024),
        rx_buffer: config.runtime.tcp_rx_buffer,
        tx_buffer: config.runtime.tcp_tx_buffer,
        stacks: 4,
        max_sockets_per_stack: 1024,
        // `[netstack]`: congestion control and buffer ceilings, as the broker's.
        ..crate::runtime::prepare::with_netstack(&config.netstack, StackConfig::default())
    };
    let mut seed = [0u8; 8];
    let _ = getrandom::fill(&mut seed);
    let set = StackSet::new(&stack, now, u64::from_le_bytes(seed))
        .map_err(|e| GatewayStartError::Tunnel(e.to_string()))?;
    let status = Arc::new(GatewayStatus::new());
    let stop = Arc::new(AtomicBool::new(false));
    let seed = Seed {
        config: config.clone(),
        udp: socket2::Socket::from(udp),
        streams: socket2::Socket::from(streams),
        tls: tls.map(|(l, c, _)| (l, c)),
        front: socket2::Socket::from(front),
        table,
        set,
        mtu,
    };
    let (st, sp) = (status.clone(), stop.clone());
    let join = glommio::LocalExecutorBuilder::new(glommio::Placement::Unbound)
        .name("wgbroker-gateway")
        .io_memory(256 << 10)
        .ring_depth(config.runtime.ring_depth)
        .spawn(move || async move { run(seed, st, sp).await })
        .map_err(|e| GatewayStartError::Executor(e.to_string()))?;
    Ok(GatewayHandle {
        stop,
        join: Some(join),
        status,
        udp_addr,
        front_addr,
        tls_addr,
    })
}

/// Everything the executor builds its state from (all `Send`).
struct Seed {
    config: GatewayConfig,
    udp: socket2::Socket,
    /// The stream transport's listener, on the UDP port.
    streams: socket2::Socket,
    /// The `tls` transport's listener and certificate (`[gateway] tls_listen`).
    tls: Option<(socket2::Socket, Arc<rustls::ServerConfig>)>,
    front: socket2::Socket,
    table: PeerTable,
    set: StackSet,
    mtu: usize,
}

/// One broker as the runtime addresses it.
#[derive(Debug, Clone)]
struct BrokerAddr {
    /// Its WireGuard peer, as configured (kept while it drains).
    spec: crate::tunnel::PeerSpec,
    /// Where its HTTP endpoint is inside the tunnel.
    addr: SocketAddr,
    /// `<tenant>/<address>`: the value of [`BROKER_HEADER`].
    label: String,
    peer: PeerId,
}

/// The executor's state.
struct Gw {
    config: GatewayConfig,
    udp: UdpSocket,
    table: RefCell<PeerTable>,
    set: RefCell<StackSet>,
    pool: RefCell<BufPool>,
    bal: RefCell<Balancer>,
    /// By [`BrokerId`] slot; a free slot keeps its last broker's entry.
    brokers: RefCell<Vec<BrokerAddr>>,
    /// The tenants and brokers in force (the last reload applied).
    current: RefCell<GatewayConfig>,
    /// Brokers removed by a reload whose requests are still in flight: their peers stay in
    /// the table until they finish.
    draining: RefCell<Vec<BrokerId>>,
    status: Arc<GatewayStatus>,
    stop: Arc<AtomicBool>,
    kicked: Cell<bool>,
    driver: RefCell<Option<Waker>>,
    /// Brokers' stream transport connections, by remote address: what the table sends to one of
    /// these addresses goes down that connection.
    streams: RefCell<HashMap<SocketAddr, Rc<StreamOut>>>,
    /// Idle keep-alive connections to brokers ([`crate::gateway::pool`]).
    idle: RefCell<Pool<ConnId>>,
}

impl Gw {
    /// Wakes the driver (packets arrived, a connection was opened).
    fn kick(&self) {
        self.kicked.set(true);
        if let Some(w) = self.driver.borrow_mut().take() {
            w.wake();
        }
    }

    /// Resolves when kicked or when the netstack wants a poll (see `runtime::shard`).
    fn kicked(&self) -> impl Future<Output = ()> + '_ {
        future::poll_fn(move |cx| {
            if self.kicked.replace(false) {
                return Poll::Ready(());
            }
            let mut set = self.set.borrow_mut();
            if set.poll_delay(Instant::now()) == Some(Duration::ZERO) {
                return Poll::Ready(());
            }
            *self.driver.borrow_mut() = Some(cx.waker().clone());
            set.set_poll_waker(cx.waker());
            Poll::Pending
        })
    }

    fn stopped(&self) -> bool {
        self.stop.load(Ordering::Relaxed)
    }

    /// Publishes the balancer's rotation changes (log lines, `healthy` gauges); a broker out of
    /// rotation loses its idle connections.
    fn publish_events(&self) {
        loop {
            let ev = self.bal.borrow_mut().poll_event();
            match ev {
                Some(Event::Up(id)) => {
                    self.counters(id).healthy.store(true, Ordering::Relaxed);
                    tracing::info!(event = "gateway.broker_up", broker = %self.label(id));
                }
                Some(Event::Down(id, why)) => {
                    self.drop_idle(id);
                    self.counters(id).healthy.store(false, Ordering::Relaxed);
                    tracing::warn!(event = "gateway.broker_down", broker = %self.label(id), reason = why.as_str());
                }
                None => break,
            }
        }
    }

    /// Broker `id`'s counters (fresh, unexported ones for an id that is no slot).
    fn counters(&self, id: BrokerId) -> Arc<BrokerCounters> {
        self.status.broker(id.0).unwrap_or_default()
    }

    /// `<tenant>/<address>` of broker `id`.
    fn label(&self, id: BrokerId) -> String {
        self.brokers
            .borrow()
            .get(id.0)
            .map_or_else(String::new, |b| b.label.clone())
    }

    /// Broker `id`'s key and tunnel address: what a slot holds now.
    fn broker_identity(&self, id: BrokerId) -> Option<(crate::keys::PublicKey, SocketAddr)> {
        self.brokers
            .borrow()
            .get(id.0)
            .map(|b| (b.spec.public_key, b.addr))
    }

    /// Where broker `id`'s HTTP endpoint is inside the tunnel.
    fn broker_addr(&self, id: BrokerId) -> Option<SocketAddr> {
        self.brokers.borrow().get(id.0).map(|b| b.addr)
    }
}

async fn run(seed: Seed, status: Arc<GatewayStatus>, stop: Arc<AtomicBool>) {
    let now = Instant::now();
    let c = seed.config;
    let mut brokers = Vec::new();
    let peers: Vec<PeerId> = seed.table.peers().collect();
    let specs = crate::gateway::peer_specs(&c);
    for (((t, b), spec), peer) in c.brokers().zip(specs).zip(peers) {
        let tenant = &c.tenant[t].name;
        status.set_broker(brokers.len(), tenant, b.address);
        brokers.push(BrokerAddr {
            spec,
            addr: SocketAddr::new(b.address, c.gateway.broker_port),
            label: format!("{tenant}/{}", b.address),
            peer,
        });
    }
    let capacity = (seed.mtu + crate::tunnel::DATA_OVERHEAD + 63) & !63;
    use std::os::fd::{FromRawFd, IntoRawFd};
    // SAFETY: `into_raw_fd` gives up the socket's only owner, so the listener built from the
    // descriptor is its sole owner and closes it exactly once.
    #[allow(unsafe_code)]
    let front = unsafe { TcpListener::from_raw_fd(seed.front.into_raw_fd()) };
    // SAFETY: as for `front`: the listener becomes the descriptor's only owner.
    #[allow(unsafe_code)]
    let streams = unsafe { TcpListener::from_raw_fd(seed.streams.into_raw_fd()) };
    let c_pool = (
        c.gateway.pool_idle_per_broker,
        c.gateway.pool_idle_total,
        c.gateway.pool_idle_timeout,
    );
    let gw = Rc::new(Gw {
        bal: RefCell::new(Balancer::new(&c, now)),
        current: RefCell::new(c.clone()),
        draining: RefCell::new(Vec::new()),
        config: c,
        udp: UdpSocket::from(seed.udp),
        table: RefCell::new(seed.table),
        set: RefCell::new(seed.set),
        pool: RefCell::new(BufPool::new(capacity, 4096)),
        brokers: RefCell::new(brokers),
        status,
        stop,
        kicked: Cell::new(false),
        driver: RefCell::new(None),
        streams: RefCell::new(HashMap::new()),
        idle: RefCell::new(Pool::new(PoolLimits {
            per_broker: c_pool.0,
            total: c_pool.1,
            idle_timeout: c_pool.2,
        })),
    });
    gw.status.running.store(true, Ordering::Relaxed);
    glommio::spawn_local(rx_loop(gw.clone())).detach();
    glommio::spawn_local(front_loop(gw.clone(), front)).detach();
    glommio::spawn_local(stream_accept_loop(gw.clone(), streams, None)).detach();
    if let Some((listener, config)) = seed.tls {
        // SAFETY: as for `front`: the listener becomes the descriptor's only owner.
        #[allow(unsafe_code)]
        let listener = unsafe { TcpListener::from_raw_fd(listener.into_raw_fd()) };
        let acceptor = futures_rustls::TlsAcceptor::from(config);
        glommio::spawn_local(stream_accept_loop(gw.clone(), listener, Some(acceptor))).detach();
    }
    glommio::spawn_local(timer_loop(gw.clone())).detach();
    driver_loop(gw.clone()).await;
    gw.status.running.store(false, Ordering::Relaxed);
}

/// Sends a datagram; a failure is for WireGuard's timers to recover from.
async fn send_datagram(gw: &Gw, d: &[u8], to: SocketAddr) {
    let stream = gw.streams.borrow().get(&to).cloned();
    if let Some(out) = stream {
        // A full queue drops it, as a full socket buffer would.
        let _ = out.push(d);
        return;
    }
    if let Err(e) = gw.udp.send_to(d, to).await {
        tracing::debug!(event = "wireguard.send_error", %to, error = %e);
    }
}

async fn rx_loop(gw: Rc<Gw>) {
    let capacity = gw.pool.borrow().buf_capacity();
    let mut datagram = vec![0u8; capacity + 1];
    let mut scratch = vec![0u8; required_buffer_len(capacity)];
    while !gw.stopped() {
        let (n, from) = match gw.udp.recv_from(&mut datagram).await {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(event = "wireguard.recv_error", error = %e);
                glommio::timer::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        if n > capacity {
            continue;
        }
        handle_datagram(&gw, from, &datagram[..n], &mut scratch).await;
    }
}

/// One datagram from `from` (on the UDP socket, or off a broker's stream): into the stack, or
/// what the table answers back out.
async fn handle_datagram(gw: &Rc<Gw>, from: SocketAddr, datagram: &[u8], scratch: &mut [u8]) {
    let mut buf = gw.pool.borrow_mut().take();
    let received = gw
        .table
        .borrow_mut()
        .receive(Instant::now(), from, datagram, buf.space());
    match received {
        Received::Packet { packet, .. } => {
            let len = packet.len();
            buf.set_len(len);
            let _ = gw.set.borrow_mut().ingest(buf);
            gw.kick();
        }
        Received::Transmit {
            peer,
            to,
            datagram: reply,
        } => {
            let len = reply.len();
            buf.set_len(len);
            send_datagram(gw, buf.as_slice(), to).await;
            gw.pool.borrow_mut().give(buf);
            if let Some(peer) = peer {
                loop {
                    let next = gw
                        .table
                        .borrow_mut()
                        .flush(peer, &mut *scratch)
                        .map(|t| (t.to, t.datagram.len()));
                    match next {
                        Some((to, len)) => send_datagram(gw, &scratch[..len], to).await,
                        None => break,
                    }
                }
            }
        }
        Received::Done => gw.pool.borrow_mut().give(buf),
        Received::Dropped(reason) => {
            gw.status.tunnel_dropped.fetch_add(1, Ordering::Relaxed);
            tracing::trace!(event = "wireguard.drop", ?reason, %from);
            gw.pool.borrow_mut().give(buf);
        }
    }
}

/// Polls the netstack, accepts heartbeat connections, encrypts and sends its packets.
async fn driver_loop(gw: Rc<Gw>) {
    let capacity = gw.pool.borrow().buf_capacity();
    let mut out = vec![0u8; required_buffer_len(capacity)];
    let mut accepted = Vec::new();
    while !gw.stopped() {
        let now = Instant::now();
        {
            let mut set = gw.set.borrow_mut();
            set.poll(now, &mut gw.pool.borrow_mut());
            while let Some(id) = set.accept() {
                accepted.push(id);
            }
            let spent: Vec<_> = set.drain_spent().collect();
            let mut pool = gw.pool.borrow_mut();
            for b in spent {
                pool.give(b);
            }
        }
        for id in accepted.drain(..) {
            glommio::spawn_local(heartbeat(gw.clone(), id)).detach();
        }
        loop {
            let Some(p) = gw.set.borrow_mut().pop_tx() else {
                break;
            };
            let sent = match gw.table.borrow_mut().send(now, p.as_slice(), &mut out) {
                Sent::Transmit(t) => Some((t.to, t.datagram.len())),
                _ => None,
            };
            gw.pool.borrow_mut().give(p);
            if let Some((to, len)) = sent {
                send_datagram(&gw, &out[..len], to).await;
            }
        }
        let delay = gw.set.borrow().poll_delay(Instant::now());
        if delay == Some(Duration::ZERO) {
            futures_lite::future::yield_now().await;
            continue;
        }
        let park = delay.unwrap_or(MAX_PARK).min(MAX_PARK);
        future::or(gw.kicked(), glommio::timer::sleep(park)).await;
    }
}

/// WireGuard timers, session ages, health checks.
async fn timer_loop(gw: Rc<Gw>) {
    let mut out = vec![0u8; required_buffer_len(gw.pool.borrow().buf_capacity())];
    let mut next_tick = Instant::now();
    while !gw.stopped() {
        let now = Instant::now();
        let pending = gw.status.pending.lock().ok().and_then(|mut p| p.take());
        let mut queued = Vec::new();
        if let Some(new) = pending {
            match apply_reload(&gw, new, now, &mut out) {
                Ok(q) => {
                    queued = q;
                    gw.status.reloads.fetch_add(1, Ordering::Relaxed);
                    tracing::info!(event = "gateway.reloaded");
                }
                Err(e) => {
                    gw.status.reloads_refused.fetch_add(1, Ordering::Relaxed);
                    tracing::error!(event = "gateway.reload_refused", error = %e);
                }
            }
        }
        queued.extend(settle_drained(&gw, now, &mut out));
        gw.expire_idle(now);
        for (to, d) in queued.drain(..) {
            send_datagram(&gw, &d, to).await;
        }
        if now >= next_tick {
            next_tick = gw
                .table
                .borrow_mut()
                .tick(now, &mut out, &mut |_, to, d| queued.push((to, d.to_vec())))
                .min(now + TICK_INTERVAL);
            for (to, d) in queued {
                send_datagram(&gw, &d, to).await;
            }
            let table = gw.table.borrow();
            let mut bal = gw.bal.borrow_mut();
            for (i, b) in gw.brokers.borrow().iter().enumerate() {
                let id = BrokerId(i);
                if !bal.is_live(id) {
                    continue;
                }
                let age = table.peer_status(b.peer).and_then(|s| s.handshake_age(now));
                bal.set_session(id, age);
                let ms = age.map_or(u64::MAX, |a| {
                    u64::try_from(a.as_millis()).unwrap_or(u64::MAX)
                });
                gw.counters(id)
                    .handshake_age_ms
                    .store(ms, Ordering::Relaxed);
            }
            gw.status
                .tunnel_dropped
                .store(table.counters().dropped(), Ordering::Relaxed);
        }
        let due: Vec<BrokerId> = {
            let mut bal = gw.bal.borrow_mut();
            bal.tick(now);
            std::iter::from_fn(|| bal.poll_check(now)).collect()
        };
        for id in due {
            glommio::spawn_local(check(gw.clone(), id)).detach();
        }
        gw.publish_events();
        let next = gw
            .bal
            .borrow()
            .next_deadline()
            .map_or(next_tick, |d| d.min(next_tick));
        let wait = next
            .saturating_duration_since(Instant::now())
            .clamp(Duration::from_millis(1), MAX_PARK);
        glommio::timer::sleep(wait).await;
    }
}

/// One health check of broker `id`: `GET /healthcheck` answered 200 passes.
async fn check(gw: Rc<Gw>, id: BrokerId) {
    let timeout = gw.config.gateway.health_timeout;
    // Which broker is checked: a reload may free the slot meanwhile and give it to another.
    let checked = gw.broker_identity(id);
    let result = future::or(
        async {
            let r: io::Result<u16> = async {
                let host = gw.broker_addr(id).ok_or_else(|| io::Error::other("no such broker"))?.ip();
                let mut conn = open(&gw, id, false).await?;
                let req = format!(
                    "GET /healthcheck HTTP/1.1\r\nHost: {host}\r\nUser-Agent: wgbroker-gateway\r\nConnection: close\r\n\r\n"
                );
                conn.write_all(req.as_bytes()).await?;
                let (head, _) = read_response_head(&mut conn, Vec::new()).await?;
                let _ = conn.close().await;
                Ok(head.status)
            }
            .await;
            if let Err(e) = &r {
                tracing::debug!(event = "gateway.check_failed", broker = %gw.label(id), error = %e);
            }
            Some(r.ok() == Some(200))
        },
        async {
            glommio::timer::sleep(timeout).await;
            None
        },
    )
    .await;
    if gw.broker_identity(id) != checked {
        return;
    }
    let passed = result == Some(true);
    if !passed {
        gw.counters(id)
            .checks_failed
            .fetch_add(1, Ordering::Relaxed);
    }
    gw.bal.borrow_mut().check_done(id, passed);
    gw.publish_events();
}

/// Answers `GET /heartbeat` inside the tunnel with 200, anything else with 404; one request
/// per connection.
async fn heartbeat(gw: Rc<Gw>, id: ConnId) {
    let mut conn = conn::stream(gw.clone(), id);
    let mut buf = Vec::new();
    let served = future::or(
        async {
            let (head, _) = read_request_head(&mut conn, &mut buf).await.ok()?;
            let target = head.target(&buf);
            let path = target.split('?').next().unwrap_or(target);
            let ok = path == "/heartbeat" && matches!(head.method_str(&buf), "GET" | "HEAD");
            let answer: &[u8] = if ok {
                b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 3\r\nConnection: close\r\n\r\nok\n"
            } else {
                b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
            };
            conn.write_all(answer).await.ok()?;
            Some(ok)
        },
        async {
            glommio::timer::sleep(Duration::from_secs(10)).await;
            None
        },
    )
    .await;
    if served == Some(true) {
        gw.status.heartbeats.fetch_add(1, Ordering::Relaxed);
    }
    let _ = conn.close().await;
}

mod conn;
mod front;
mod heads;
mod idle;
mod reload;
mod streams;

use conn::{TunnelConn, died, open};
use front::front_loop;
use heads::{HeadFailure, ResponseBody, ResponseHead, read_request_head, read_response_head};
use reload::{apply_reload, settle_drained};
use streams::stream_accept_loop;
