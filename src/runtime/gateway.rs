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
//! routed ([`crate::gateway::route`]), and sent on a new TCP connection through the tunnel to a
//! broker [`Balancer::pick`]s, as `METHOD /proxy/<URL>` (the target byte for byte) with
//! `Connection: close`. The request body follows, streamed; then the response is streamed
//! back with `X-Wgbroker-Broker: <tenant>/<address>` added. A connection per request costs a
//! handshake inside the tunnel (one round trip) but needs no pool and no framing of the
//! response: it ends when the broker closes. The client's own connection is kept alive when
//! the response is delimited (`Content-Length`, chunked).
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
use std::pin::Pin;
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use futures_lite::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, future};
use glommio::net::{TcpListener, TcpStream, UdpSocket};

use crate::config::gateway::GatewayConfig;
use crate::gateway::balance::{Balancer, BrokerId, Event, Next, Outcome, Retry, TenantId};
use crate::gateway::route::{Route, route};
use crate::http::{BodyFraming, ChunkedDecoder, Limits, RequestHead, parse_head};
use crate::netstack::{ConnError, ConnId, StackConfig, StackSet, State};
use crate::packet::BufPool;
use crate::tunnel::{PeerId, PeerTable, Received, Sent, TICK_INTERVAL, required_buffer_len};

/// Longest front-door request head.
const MAX_HEAD: usize = 16 << 10;
/// Most headers in a front-door request.
const MAX_HEADERS: usize = 100;
/// Time for a request head to arrive, and for an idle keep-alive connection to send the next.
const HEAD_TIMEOUT: Duration = Duration::from_secs(30);
/// Time a broker may take to start its response (its own upstream timeout is 60 s).
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(75);
/// Time a body may stall in either direction.
const BODY_TIMEOUT: Duration = Duration::from_secs(60);
/// How often an attempt in flight looks whether its broker left rotation.
const WATCH_INTERVAL: Duration = Duration::from_millis(50);
/// Longest park of the driver.
const MAX_PARK: Duration = Duration::from_millis(100);
/// The header naming the broker that served a request.
pub const BROKER_HEADER: &str = "X-Wgbroker-Broker";

/// Counters of one broker, read by the control thread (`/metrics`).
#[derive(Debug, Default)]
pub struct BrokerCounters {
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
}

/// What the gateway publishes for the control thread.
#[derive(Debug)]
pub struct GatewayStatus {
    /// The executor runs and its sockets are bound.
    pub running: AtomicBool,
    /// Per broker, in [`BrokerId`] order.
    pub brokers: Vec<BrokerCounters>,
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
    fn new(brokers: usize) -> Self {
        Self {
            running: AtomicBool::new(false),
            brokers: (0..brokers)
                .map(|_| BrokerCounters {
                    handshake_age_ms: AtomicU64::new(u64::MAX),
                    ..BrokerCounters::default()
                })
                .collect(),
            not_found: AtomicU64::new(0),
            unavailable: AtomicU64::new(0),
            malformed: AtomicU64::new(0),
            heartbeats: AtomicU64::new(0),
            tunnel_dropped: AtomicU64::new(0),
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
}

impl GatewayHandle {
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
    #[error("front door {addr}: {source}")]
    Front { addr: SocketAddr, source: io::Error },
    #[error("tunnel: {0}")]
    Tunnel(String),
    #[error("executor: {0}")]
    Executor(String),
}

/// Binds the sockets and starts the gateway's executor.
pub fn start_gateway(config: &GatewayConfig) -> Result<GatewayHandle, GatewayStartError> {
    let g = &config.gateway;
    let udp = std::net::UdpSocket::bind(g.listen).map_err(|source| GatewayStartError::Udp {
        addr: g.listen,
        source,
    })?;
    let udp_addr = udp.local_addr().map_err(|source| GatewayStartError::Udp {
        addr: g.listen,
        source,
    })?;
    {
        let s = socket2::SockRef::from(&udp);
        let _ = s.set_recv_buffer_size(config.runtime.udp_recv_buffer);
        let _ = s.set_send_buffer_size(config.runtime.udp_send_buffer);
    }
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
        backlog: 4,
        rx_buffer: config.runtime.tcp_rx_buffer,
        tx_buffer: config.runtime.tcp_tx_buffer,
        stacks: 4,
        max_sockets_per_stack: 1024,
        ..StackConfig::default()
    };
    let mut seed = [0u8; 8];
    let _ = getrandom::fill(&mut seed);
    let set = StackSet::new(&stack, now, u64::from_le_bytes(seed))
        .map_err(|e| GatewayStartError::Tunnel(e.to_string()))?;
    let status = Arc::new(GatewayStatus::new(config.brokers().count()));
    let stop = Arc::new(AtomicBool::new(false));
    let seed = Seed {
        config: config.clone(),
        udp: socket2::Socket::from(udp),
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
    })
}

/// Everything the executor builds its state from (all `Send`).
struct Seed {
    config: GatewayConfig,
    udp: socket2::Socket,
    front: socket2::Socket,
    table: PeerTable,
    set: StackSet,
    mtu: usize,
}

/// One broker as the runtime addresses it.
#[derive(Debug)]
struct BrokerAddr {
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
    tenants: HashMap<String, TenantId>,
    brokers: Vec<BrokerAddr>,
    status: Arc<GatewayStatus>,
    stop: Arc<AtomicBool>,
    kicked: Cell<bool>,
    driver: RefCell<Option<Waker>>,
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

    /// Publishes the balancer's rotation changes (log lines, `healthy` gauges).
    fn publish_events(&self) {
        loop {
            let ev = self.bal.borrow_mut().poll_event();
            match ev {
                Some(Event::Up(id)) => {
                    self.counters(id).healthy.store(true, Ordering::Relaxed);
                    tracing::info!(event = "gateway.broker_up", broker = %self.brokers[id.0].label);
                }
                Some(Event::Down(id, why)) => {
                    self.counters(id).healthy.store(false, Ordering::Relaxed);
                    tracing::warn!(event = "gateway.broker_down", broker = %self.brokers[id.0].label, reason = why.as_str());
                }
                None => break,
            }
        }
    }

    fn counters(&self, id: BrokerId) -> &BrokerCounters {
        &self.status.brokers[id.0]
    }
}

async fn run(seed: Seed, status: Arc<GatewayStatus>, stop: Arc<AtomicBool>) {
    let now = Instant::now();
    let c = seed.config;
    let mut tenants = HashMap::new();
    let mut brokers = Vec::new();
    let peers: Vec<PeerId> = seed.table.peers().collect();
    for (t, tenant) in c.tenant.iter().enumerate() {
        tenants.insert(tenant.name.clone(), TenantId(t));
        for b in &tenant.broker {
            brokers.push(BrokerAddr {
                addr: SocketAddr::new(b.address, c.gateway.broker_port),
                label: format!("{}/{}", tenant.name, b.address),
                peer: peers[brokers.len()],
            });
        }
    }
    let capacity = (seed.mtu + crate::tunnel::DATA_OVERHEAD + 63) & !63;
    use std::os::fd::{FromRawFd, IntoRawFd};
    // SAFETY: `into_raw_fd` gives up the socket's only owner, so the listener built from the
    // descriptor is its sole owner and closes it exactly once.
    #[allow(unsafe_code)]
    let front = unsafe { TcpListener::from_raw_fd(seed.front.into_raw_fd()) };
    let gw = Rc::new(Gw {
        bal: RefCell::new(Balancer::new(&c, now)),
        config: c,
        udp: UdpSocket::from(seed.udp),
        table: RefCell::new(seed.table),
        set: RefCell::new(seed.set),
        pool: RefCell::new(BufPool::new(capacity, 4096)),
        tenants,
        brokers,
        status,
        stop,
        kicked: Cell::new(false),
        driver: RefCell::new(None),
    });
    gw.status.running.store(true, Ordering::Relaxed);
    glommio::spawn_local(rx_loop(gw.clone())).detach();
    glommio::spawn_local(front_loop(gw.clone(), front)).detach();
    glommio::spawn_local(timer_loop(gw.clone())).detach();
    driver_loop(gw.clone()).await;
    gw.status.running.store(false, Ordering::Relaxed);
}

/// Sends a datagram; a failure is for WireGuard's timers to recover from.
async fn send_datagram(gw: &Gw, d: &[u8], to: SocketAddr) {
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
        let mut buf = gw.pool.borrow_mut().take();
        let received =
            gw.table
                .borrow_mut()
                .receive(Instant::now(), from, &datagram[..n], buf.space());
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
                send_datagram(&gw, buf.as_slice(), to).await;
                gw.pool.borrow_mut().give(buf);
                if let Some(peer) = peer {
                    loop {
                        let next = gw
                            .table
                            .borrow_mut()
                            .flush(peer, &mut scratch)
                            .map(|t| (t.to, t.datagram.len()));
                        match next {
                            Some((to, len)) => send_datagram(&gw, &scratch[..len], to).await,
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
        if now >= next_tick {
            let mut queued = Vec::new();
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
            for (i, b) in gw.brokers.iter().enumerate() {
                let age = table.peer_status(b.peer).and_then(|s| s.handshake_age(now));
                bal.set_session(BrokerId(i), age);
                let ms = age.map_or(u64::MAX, |a| {
                    u64::try_from(a.as_millis()).unwrap_or(u64::MAX)
                });
                gw.status.brokers[i]
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
    let result = future::or(
        async {
            let r: io::Result<u16> = async {
                let mut conn = open(&gw, id, false).await?;
                let req = format!(
                    "GET /healthcheck HTTP/1.1\r\nHost: {}\r\nUser-Agent: wgbroker-gateway\r\nConnection: close\r\n\r\n",
                    gw.brokers[id.0].addr.ip()
                );
                conn.write_all(req.as_bytes()).await?;
                let (head, _) = read_response_head(&mut conn, Vec::new()).await?;
                let _ = conn.close().await;
                Ok(head.status)
            }
            .await;
            if let Err(e) = &r {
                tracing::debug!(event = "gateway.check_failed", broker = %gw.brokers[id.0].label, error = %e);
            }
            Some(r.ok() == Some(200))
        },
        async {
            glommio::timer::sleep(timeout).await;
            None
        },
    )
    .await;
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
    let mut conn = TunnelConn {
        gw: gw.clone(),
        id,
        closed: false,
    };
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

/// Opens a connection to broker `id` through the tunnel; fails when it is not established
/// within `connect_timeout` or, with `watch` (requests, not health checks, which decide
/// rotation), when the broker leaves rotation meanwhile.
async fn open(gw: &Rc<Gw>, id: BrokerId, watch: bool) -> io::Result<TunnelConn> {
    let timeout = gw.config.gateway.connect_timeout;
    let attempts = async {
        // A refused SYN is retried at once from the next port: with a connection per request
        // the broker still holds recent ports of ours in TIME-WAIT and resets a SYN that lands
        // on one (about 1.6 % of connections at 6,000 req/s on loopback).
        let mut refused = 0;
        loop {
            match open_once(gw, id).await {
                Err(e)
                    if e.kind() == io::ErrorKind::ConnectionRefused
                        && refused < REFUSED_RETRIES =>
                {
                    refused += 1;
                }
                r => return r,
            }
        }
    };
    future::or(
        attempts,
        future::or(
            async {
                glommio::timer::sleep(timeout).await;
                Err(io::ErrorKind::TimedOut.into())
            },
            async {
                if watch {
                    left_rotation(gw, id).await;
                } else {
                    future::pending::<()>().await;
                }
                Err(io::Error::other("broker left rotation"))
            },
        ),
    )
    .await
}

/// How many refused connection attempts [`open`] retries at once.
const REFUSED_RETRIES: u32 = 8;

/// One connection attempt to broker `id`: until established or refused (no timeout here).
async fn open_once(gw: &Rc<Gw>, id: BrokerId) -> io::Result<TunnelConn> {
    let addr = gw.brokers[id.0].addr;
    let conn_id = gw
        .set
        .borrow_mut()
        .connect(addr)
        .map_err(|e| io::Error::other(e.to_string()))?;
    gw.kick();
    let conn = TunnelConn {
        gw: gw.clone(),
        id: conn_id,
        closed: false,
    };
    future::poll_fn(|cx| {
        let mut set = gw.set.borrow_mut();
        match set.state(conn_id) {
            State::Established => Poll::Ready(Ok(())),
            State::SynSent | State::SynReceived => {
                match set.register_send_waker(conn_id, cx.waker()) {
                    Ok(()) => Poll::Pending,
                    Err(e) => Poll::Ready(Err(io::Error::other(e.to_string()))),
                }
            }
            other => Poll::Ready(Err(io::Error::new(
                io::ErrorKind::ConnectionRefused,
                format!("connection {other}"),
            ))),
        }
    })
    .await?;
    Ok(conn)
}

/// Resolves once broker `id` is out of rotation.
async fn left_rotation(gw: &Gw, id: BrokerId) {
    while gw.bal.borrow().healthy(id) {
        glommio::timer::sleep(WATCH_INTERVAL).await;
    }
}

/// A tunnel TCP connection as an async byte stream (as `runtime::shard`'s).
struct TunnelConn {
    gw: Rc<Gw>,
    id: ConnId,
    closed: bool,
}

fn io_error(e: ConnError) -> io::Error {
    let kind = match e {
        ConnError::Gone => io::ErrorKind::ConnectionReset,
        ConnError::InvalidState => io::ErrorKind::BrokenPipe,
        ConnError::Finished => io::ErrorKind::UnexpectedEof,
    };
    io::Error::new(kind, e)
}

impl AsyncRead for TunnelConn {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        let mut set = self.gw.set.borrow_mut();
        match set.recv_slice(self.id, buf) {
            Ok(0) if !buf.is_empty() => {
                if !set.may_recv(self.id) {
                    return Poll::Ready(Ok(0));
                }
                match set.register_recv_waker(self.id, cx.waker()) {
                    Ok(()) => Poll::Pending,
                    Err(e) => Poll::Ready(Err(io_error(e))),
                }
            }
            Ok(n) => Poll::Ready(Ok(n)),
            Err(ConnError::Finished) => Poll::Ready(Ok(0)),
            Err(e) => Poll::Ready(Err(io_error(e))),
        }
    }
}

impl AsyncWrite for TunnelConn {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let mut set = self.gw.set.borrow_mut();
        match set.send_slice(self.id, data) {
            Ok(0) if !data.is_empty() => {
                if !set.may_send(self.id) {
                    return Poll::Ready(Err(io::ErrorKind::BrokenPipe.into()));
                }
                match set.register_send_waker(self.id, cx.waker()) {
                    Ok(()) => Poll::Pending,
                    Err(e) => Poll::Ready(Err(io_error(e))),
                }
            }
            Ok(n) => Poll::Ready(Ok(n)),
            Err(e) => Poll::Ready(Err(io_error(e))),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_close(mut self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        if !self.closed {
            self.closed = true;
            let _ = self.gw.set.borrow_mut().close(self.id);
        }
        Poll::Ready(Ok(()))
    }
}

impl Drop for TunnelConn {
    fn drop(&mut self) {
        if !self.closed {
            // Dropped mid-exchange: a reset, so that the broker does not wait on it.
            let _ = self.gw.set.borrow_mut().abort(self.id);
        }
    }
}

/// Reads until `buf` holds a complete, valid request head; returns it and its length.
async fn read_request_head<S: AsyncRead + Unpin>(
    conn: &mut S,
    buf: &mut Vec<u8>,
) -> Result<(RequestHead, usize), HeadFailure> {
    let limits = Limits {
        max_head_bytes: MAX_HEAD,
        max_headers: MAX_HEADERS,
    };
    let mut head = RequestHead::default();
    loop {
        if !buf.is_empty() {
            match parse_head(buf, &limits, &mut head) {
                Ok(Some(len)) => return Ok((head, len)),
                Ok(None) => {}
                Err(e) => return Err(HeadFailure::Bad(e.status(), e.to_string())),
            }
        }
        if buf.len() >= MAX_HEAD {
            return Err(HeadFailure::Bad(431, "request head too large".into()));
        }
        let mut chunk = [0u8; 4096];
        let n = conn
            .read(&mut chunk)
            .await
            .map_err(|_| HeadFailure::Closed)?;
        if n == 0 {
            return Err(HeadFailure::Closed);
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// Why no request head was read.
#[derive(Debug)]
enum HeadFailure {
    /// The client closed or reset.
    Closed,
    /// Not a valid head: the status and the reason.
    Bad(u16, String),
}

/// A response head from a broker.
#[derive(Debug)]
struct ResponseHead {
    status: u16,
    /// The head as received, without `Connection`/`Keep-Alive` lines and the blank line.
    lines: Vec<u8>,
    /// The body's length is known from the head (`Content-Length`, chunked, or none by status).
    delimited: bool,
}

/// Reads a response head from `conn` (after `buf`'s bytes); returns it and the body bytes that
/// came with it. An empty read before the head completes is an error.
async fn read_response_head<S: AsyncRead + Unpin>(
    conn: &mut S,
    mut buf: Vec<u8>,
) -> io::Result<(ResponseHead, Vec<u8>)> {
    loop {
        let mut headers = [httparse::EMPTY_HEADER; 100];
        let mut resp = httparse::Response::new(&mut headers);
        match resp.parse(&buf) {
            Ok(httparse::Status::Complete(len)) => {
                let status = resp.code.unwrap_or(0);
                let mut lines =
                    format!("HTTP/1.1 {} {}\r\n", status, resp.reason.unwrap_or("")).into_bytes();
                let mut delimited = matches!(status, 100..=199 | 204 | 304);
                for h in resp.headers.iter() {
                    if h.name.eq_ignore_ascii_case("connection")
                        || h.name.eq_ignore_ascii_case("keep-alive")
                    {
                        continue;
                    }
                    if h.name.eq_ignore_ascii_case("content-length")
                        || h.name.eq_ignore_ascii_case("transfer-encoding")
                    {
                        delimited = true;
                    }
                    lines.extend_from_slice(h.name.as_bytes());
                    lines.extend_from_slice(b": ");
                    lines.extend_from_slice(h.value);
                    lines.extend_from_slice(b"\r\n");
                }
                let rest = buf.split_off(len);
                return Ok((
                    ResponseHead {
                        status,
                        lines,
                        delimited,
                    },
                    rest,
                ));
            }
            Ok(httparse::Status::Partial) if buf.len() < MAX_HEAD => {}
            Ok(httparse::Status::Partial) => {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    "response head too large",
                ));
            }
            Err(e) => return Err(io::Error::new(io::ErrorKind::InvalidData, e.to_string())),
        }
        let mut chunk = [0u8; 4096];
        let n = conn.read(&mut chunk).await?;
        if n == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// Accepts front-door connections. No timeout around `accept`: a cancelled accept could lose a
/// connection the kernel had already taken; the task ends with the executor.
async fn front_loop(gw: Rc<Gw>, listener: TcpListener) {
    loop {
        match listener.accept().await {
            Ok(stream) => {
                let _ = stream.set_nodelay(true);
                glommio::spawn_local(front_conn(gw.clone(), stream)).detach();
            }
            Err(e) => {
                tracing::warn!(event = "gateway.accept_error", error = %e);
                glommio::timer::sleep(Duration::from_millis(10)).await;
            }
        }
    }
}

/// A small JSON answer from the gateway itself.
async fn answer<S: AsyncWrite + Unpin>(
    client: &mut S,
    status: u16,
    body: &serde_json::Value,
    close: bool,
) -> io::Result<()> {
    let body = body.to_string();
    let head = format!(
        "HTTP/1.1 {status} {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n{}\r\n",
        crate::http::reason_phrase(status),
        body.len(),
        if close { "Connection: close\r\n" } else { "" }
    );
    client.write_all(head.as_bytes()).await?;
    client.write_all(body.as_bytes()).await?;
    client.flush().await
}

/// Serves one front-door connection, request after request.
async fn front_conn(gw: Rc<Gw>, mut client: TcpStream) {
    let mut buf: Vec<u8> = Vec::new();
    loop {
        let head = future::or(
            async { Some(read_request_head(&mut client, &mut buf).await) },
            async {
                glommio::timer::sleep(HEAD_TIMEOUT).await;
                None
            },
        )
        .await;
        let (head, head_len) = match head {
            None | Some(Err(HeadFailure::Closed)) => return,
            Some(Err(HeadFailure::Bad(status, reason))) => {
                gw.status.malformed.fetch_add(1, Ordering::Relaxed);
                let _ = answer(
                    &mut client,
                    status,
                    &serde_json::json!({ "error": reason }),
                    true,
                )
                .await;
                return;
            }
            Some(Ok(h)) => h,
        };
        let keep = match serve_one(&gw, &mut client, &head, &mut buf, head_len).await {
            Ok(keep) => keep && head.keep_alive,
            Err(_) => false,
        };
        if !keep {
            let _ = client.close().await;
            return;
        }
    }
}

/// Serves the request whose head is at the start of `buf`; leaves in `buf` what the client sent
/// after its body. `Ok(false)`: the connection must close.
async fn serve_one(
    gw: &Rc<Gw>,
    client: &mut TcpStream,
    head: &RequestHead,
    buf: &mut Vec<u8>,
    head_len: usize,
) -> io::Result<bool> {
    let target = head.target(buf).to_owned();
    let (tenant_name, broker_target) = match route(&target) {
        Route::Tenant { tenant, target } => (tenant.to_owned(), target.to_owned()),
        Route::NotFound => {
            gw.status.not_found.fetch_add(1, Ordering::Relaxed);
            answer(
                client,
                404,
                &serde_json::json!({ "error": "not found" }),
                head.body != BodyFraming::None,
            )
            .await?;
            return Ok(head.body == BodyFraming::None);
        }
    };
    let Some(&tenant) = gw.tenants.get(&tenant_name) else {
        gw.status.not_found.fetch_add(1, Ordering::Relaxed);
        answer(
            client,
            404,
            &serde_json::json!({ "error": "unknown tenant" }),
            head.body != BodyFraming::None,
        )
        .await?;
        return Ok(head.body == BodyFraming::None);
    };
    if head.expect_continue && head.body != BodyFraming::None {
        client.write_all(b"HTTP/1.1 100 Continue\r\n\r\n").await?;
    }
    let method = head.method_str(buf).to_owned();
    let mut upstream_head = format!("{method} {broker_target} HTTP/1.1\r\n").into_bytes();
    for (name, value) in head.headers(buf) {
        if [
            "connection",
            "keep-alive",
            "proxy-connection",
            "expect",
            "te",
            "upgrade",
        ]
        .iter()
        .any(|h| name.eq_ignore_ascii_case(h))
        {
            continue;
        }
        upstream_head.extend_from_slice(name.as_bytes());
        upstream_head.extend_from_slice(b": ");
        upstream_head.extend_from_slice(value);
        upstream_head.extend_from_slice(b"\r\n");
    }
    upstream_head.extend_from_slice(b"Connection: close\r\n\r\n");
    buf.drain(..head_len);
    let mut retry = Retry::new(&method, head.body == BodyFraming::None);
    let idempotent = crate::gateway::balance::is_idempotent(&method);
    let mut body = Some(BodyReader::new(head.body));
    loop {
        let picked = {
            let mut bal = gw.bal.borrow_mut();
            bal.pick(tenant, retry.tried()).or_else(|| {
                retry
                    .may_try_again()
                    .then(|| bal.pick(tenant, &[]))
                    .flatten()
            })
        };
        let Some(id) = picked else {
            gw.status.unavailable.fetch_add(1, Ordering::Relaxed);
            let body_left = body.as_ref().is_some_and(|b| !b.done());
            answer(
                client,
                503,
                &serde_json::json!({ "error": "no healthy broker", "tenant": tenant_name }),
                body_left,
            )
            .await?;
            return Ok(!body_left);
        };
        retry.attempt(id);
        gw.counters(id).requests.fetch_add(1, Ordering::Relaxed);
        let started = Instant::now();
        let attempt = attempt(gw, id, &upstream_head, &mut body, client, buf, idempotent).await;
        let outcome = match &attempt {
            Ok(_) => Outcome::Answered,
            Err(f) => f.outcome(),
        };
        gw.bal.borrow_mut().finish(id, outcome, Instant::now());
        gw.publish_events();
        match attempt {
            Ok(keep) => {
                let c = gw.counters(id);
                c.answered.fetch_add(1, Ordering::Relaxed);
                c.latency_us.fetch_add(
                    u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX),
                    Ordering::Relaxed,
                );
                return Ok(keep);
            }
            Err(failure) => {
                gw.counters(id).errors.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(event = "gateway.attempt_failed", broker = %gw.brokers[id.0].label, ?failure);
                if let AttemptFailure::Client(e) = failure {
                    return Err(e);
                }
                if outcome == Outcome::DiedAfterResponse {
                    return Ok(false);
                }
                if retry.after(outcome) == Next::GiveUp {
                    answer(
                        client,
                        502,
                        &serde_json::json!({ "error": "broker failed before answering", "tenant": tenant_name }),
                        true,
                    )
                    .await?;
                    return Ok(false);
                }
            }
        }
    }
}

/// How an attempt failed.
#[derive(Debug)]
enum AttemptFailure {
    /// No connection to the broker (nothing was sent).
    Connect(#[allow(dead_code)] io::Error),
    /// The broker broke off or left rotation before the response head.
    BeforeResponse(#[allow(dead_code)] io::Error),
    /// The response had started.
    AfterResponse(#[allow(dead_code)] io::Error),
    /// The client went away or sent a malformed body.
    Client(io::Error),
}

impl AttemptFailure {
    fn outcome(&self) -> Outcome {
        match self {
            AttemptFailure::Connect(_) => Outcome::ConnectFailed,
            AttemptFailure::BeforeResponse(_) => Outcome::DiedBeforeResponse,
            // A client failure says nothing about the broker.
            AttemptFailure::AfterResponse(_) => Outcome::DiedAfterResponse,
            AttemptFailure::Client(_) => Outcome::Answered,
        }
    }
}

/// One attempt on broker `id`: connect, send the head and the body, stream the response back.
/// `Ok(keep)`: answered; `keep` says whether the client connection may carry another request.
#[allow(clippy::too_many_arguments)]
async fn attempt(
    gw: &Rc<Gw>,
    id: BrokerId,
    upstream_head: &[u8],
    body: &mut Option<BodyReader>,
    client: &mut TcpStream,
    buf: &mut Vec<u8>,
    idempotent: bool,
) -> Result<bool, AttemptFailure> {
    let mut conn = open(gw, id, true).await.map_err(AttemptFailure::Connect)?;
    conn.write_all(upstream_head)
        .await
        .map_err(AttemptFailure::BeforeResponse)?;
    // The body, streamed from the client: what came with the head first.
    if let Some(reader) = body.as_mut() {
        reader.pump(client, buf, &mut conn).await?;
    }
    let head = future::or(
        async {
            read_response_head(&mut conn, Vec::new())
                .await
                .map_err(AttemptFailure::BeforeResponse)
        },
        async {
            if idempotent {
                left_rotation(gw, id).await;
                Err(AttemptFailure::BeforeResponse(io::Error::other(
                    "broker left rotation",
                )))
            } else {
                glommio::timer::sleep(RESPONSE_TIMEOUT).await;
                Err(AttemptFailure::BeforeResponse(
                    io::ErrorKind::TimedOut.into(),
                ))
            }
        },
    );
    let head = future::or(head, async {
        glommio::timer::sleep(RESPONSE_TIMEOUT).await;
        Err(AttemptFailure::BeforeResponse(
            io::ErrorKind::TimedOut.into(),
        ))
    })
    .await;
    let (resp, early) = head?;
    let close = !resp.delimited;
    let mut out = resp.lines;
    out.extend_from_slice(BROKER_HEADER.as_bytes());
    out.extend_from_slice(b": ");
    out.extend_from_slice(gw.brokers[id.0].label.as_bytes());
    out.extend_from_slice(b"\r\n");
    if close {
        out.extend_from_slice(b"Connection: close\r\n");
    }
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(&early);
    client
        .write_all(&out)
        .await
        .map_err(AttemptFailure::Client)?;
    let mut chunk = vec![0u8; 16 << 10];
    loop {
        let n = future::or(
            async {
                conn.read(&mut chunk)
                    .await
                    .map_err(AttemptFailure::AfterResponse)
            },
            async {
                glommio::timer::sleep(BODY_TIMEOUT).await;
                Err(AttemptFailure::AfterResponse(
                    io::ErrorKind::TimedOut.into(),
                ))
            },
        )
        .await?;
        if n == 0 {
            break;
        }
        client
            .write_all(&chunk[..n])
            .await
            .map_err(AttemptFailure::Client)?;
    }
    client.flush().await.map_err(AttemptFailure::Client)?;
    let _ = conn.close().await;
    Ok(!close)
}

/// Streams a request body from the client to a broker, by its framing.
#[derive(Debug)]
struct BodyReader {
    framing: BodyFraming,
    /// `Length`: bytes left; chunked: unused.
    left: u64,
    chunked: ChunkedDecoder,
    finished: bool,
}

impl BodyReader {
    fn new(framing: BodyFraming) -> Self {
        Self {
            framing,
            left: match framing {
                BodyFraming::Length(n) => n,
                _ => 0,
            },
            chunked: ChunkedDecoder::new(),
            finished: framing == BodyFraming::None || framing == BodyFraming::Length(0),
        }
    }

    fn done(&self) -> bool {
        self.finished
    }

    /// How many of `input`'s bytes belong to the body; marks the end.
    fn take(&mut self, input: &[u8]) -> io::Result<usize> {
        match self.framing {
            BodyFraming::None => {
                self.finished = true;
                Ok(0)
            }
            BodyFraming::Length(_) => {
                let n = usize::try_from(self.left)
                    .unwrap_or(usize::MAX)
                    .min(input.len());
                self.left -= n as u64;
                self.finished = self.left == 0;
                Ok(n)
            }
            BodyFraming::Chunked => {
                let mut used = 0;
                while used < input.len() && !self.chunked.is_done() {
                    let d = self
                        .chunked
                        .decode(&input[used..])
                        .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
                    used += d.consumed;
                    if d.consumed == 0 {
                        break;
                    }
                }
                self.finished = self.chunked.is_done();
                Ok(used)
            }
        }
    }

    /// Moves the body from `buf` (bytes already read) and then `client` to `conn`.
    async fn pump(
        &mut self,
        client: &mut TcpStream,
        buf: &mut Vec<u8>,
        conn: &mut TunnelConn,
    ) -> Result<(), AttemptFailure> {
        let mut chunk = vec![0u8; 16 << 10];
        loop {
            if !buf.is_empty() && !self.finished {
                let n = self.take(buf).map_err(AttemptFailure::Client)?;
                conn.write_all(&buf[..n])
                    .await
                    .map_err(AttemptFailure::BeforeResponse)?;
                buf.drain(..n);
            }
            if self.finished {
                return Ok(());
            }
            let n = future::or(
                async {
                    client
                        .read(&mut chunk)
                        .await
                        .map_err(AttemptFailure::Client)
                },
                async {
                    glommio::timer::sleep(BODY_TIMEOUT).await;
                    Err(AttemptFailure::Client(io::ErrorKind::TimedOut.into()))
                },
            )
            .await?;
            if n == 0 {
                return Err(AttemptFailure::Client(io::ErrorKind::UnexpectedEof.into()));
            }
            buf.extend_from_slice(&chunk[..n]);
        }
    }
}
