//! A shard: its smoltcp stacks, the driver task that polls them, and one task per tunnel
//! connection running the in-tunnel HTTP server. [`start`] builds one on its executor, in either
//! layout (a shard executor of its own, or the combined executor next to the tunnel core).
//!
//! Wake-ups: the ingress task kicks the driver when packets arrive; connection tasks wake it
//! through the stack set's poll waker when they queue or consume data; otherwise the driver
//! sleeps until smoltcp's next timer. It never busy-loops.

use std::cell::{Cell, RefCell};
use std::future::Future;
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Poll, Waker};
use std::time::{Duration, Instant};

use futures_lite::{AsyncRead, AsyncWrite, future};

use super::error::ExecutorError;
use super::link::{Msg, Rx, Tx};
use crate::netstack::{ConnId, StackConfig, StackSet};
use crate::packet::{BufPool, PacketBuf};
use crate::server::{self, RequestIds, ServerConfig, ServerCtx};
use crate::status::Status;
use crate::telemetry::{LogThrottle, REPEAT_INTERVAL};

/// Longest the driver sleeps, so that it notices `stop` promptly. Its timer also bounds a stall
/// of glommio 0.9's own: an executor that parks with a runnable task queue when its preemption
/// timer fired before the queue ran (see `benches/hotpath/handoff.rs`); any I/O ends it sooner.
const MAX_PARK: Duration = Duration::from_millis(100);

/// One shard's state (single-threaded).
pub(super) struct Shard {
    /// This shard's index (0-based).
    pub index: usize,
    pub set: RefCell<StackSet>,
    pub upstreams: super::upstream::ShardUpstreams,
    pub pool: RefCell<BufPool>,
    pub to_tunnel: Tx,
    pub server: ServerCtx,
    pub status: Arc<Status>,
    kicked: Cell<bool>,
    driver: RefCell<Option<Waker>>,
    /// Open connection tasks on this shard.
    active: Cell<u64>,
    /// The reload generation this shard runs.
    applied: Cell<u64>,
    /// The heartbeat target (shard 0 runs the loop; a reload replaces it, or sets or clears it).
    heartbeat: RefCell<Option<Rc<HeartbeatTarget>>>,
    /// Bumped when a reload replaced `heartbeat`: the loop stops waiting and starts over.
    heartbeat_generation: Cell<u64>,
}

impl std::fmt::Debug for Shard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shard").finish_non_exhaustive()
    }
}

impl Shard {
    pub fn new(
        index: usize,
        set: StackSet,
        upstreams: super::upstream::ShardUpstreams,
        pool: BufPool,
        to_tunnel: Tx,
        server: ServerCtx,
        status: Arc<Status>,
    ) -> Self {
        Self {
            index,
            set: RefCell::new(set),
            upstreams,
            pool: RefCell::new(pool),
            to_tunnel,
            server,
            status,
            kicked: Cell::new(false),
            driver: RefCell::new(None),
            active: Cell::new(0),
            applied: Cell::new(0),
            heartbeat: RefCell::new(None),
            heartbeat_generation: Cell::new(0),
        }
    }

    fn kick(&self) {
        self.kicked.set(true);
        if let Some(w) = self.driver.borrow_mut().take() {
            w.wake();
        }
    }

    /// Resolves when kicked (packets arrived) or when the stack set wants a poll (a connection
    /// task queued or consumed data: the set wakes us through its poll waker, and `poll_delay`
    /// then reads zero). Checking the set on every wake-up is what makes that waker count: a
    /// wake without a kick would otherwise park the driver again until its timer.
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
}

/// Everything one shard needs, built on the control thread (all `Send`) and moved to its
/// executor, where [`start`] builds the shard from it.
pub(super) struct ShardSeed {
    pub index: usize,
    /// Every rule in decision order; each shard compiles its own allowlist (no sharing).
    pub rules: Vec<crate::allowlist::RuleSpec>,
    pub stack: StackConfig,
    pub server: ServerConfig,
    /// Seeds the stacks' initial sequence numbers and ports.
    pub seed: u64,
    /// The process's request-id prefix (request ids are unique across shards and restarts).
    pub id_prefix: u32,
    pub buf_capacity: usize,
    pub upstream: crate::config::Upstream,
    pub scrubber: server::scrub::Scrubber,
    pub tls: Arc<rustls::ClientConfig>,
    pub proxy: crate::upstream::proxy::ProxySettings,
    /// The heartbeat this shard runs (shard 0 only, when one is configured).
    pub heartbeat: Option<HeartbeatTarget>,
    /// Whether this shard runs the heartbeat loop (shard 0), configured or not: a reload may
    /// add one.
    pub runs_heartbeat: bool,
    /// The webhook deliveries this shard runs (shard 0 only, with `[outbound]`).
    pub outbound: Option<Arc<super::outbound::Shared>>,
}

impl ShardSeed {
    /// The shard's state; `to_tunnel` is its link to the tunnel core.
    fn build(self, to_tunnel: Tx, status: Arc<Status>) -> Result<Shard, ExecutorError> {
        let set = StackSet::new(&self.stack, Instant::now(), self.seed)?;
        let pool = BufPool::new(self.buf_capacity, 4096);
        let ids = RequestIds::new(
            self.id_prefix,
            u16::try_from(self.index).unwrap_or(u16::MAX),
        );
        let allowlist =
            crate::allowlist::Allowlist::compile(self.rules).map_err(ExecutorError::Allowlist)?;
        let upstreams = super::upstream::ShardUpstreams::new(&self.upstream, self.tls, self.proxy);
        Ok(Shard::new(
            self.index,
            set,
            upstreams,
            pool,
            to_tunnel,
            ServerCtx::new(self.server, allowlist, self.scrubber, ids),
            status,
        ))
    }
}

/// Starts a shard on the current executor, in either layout: builds its state from `seed`
/// (its stacks listen from then on, which `status.shards_ready` counts), and spawns its ingress
/// task (packets from the tunnel core on `from_tunnel`), its heartbeat if it runs one, and its
/// driver. Returns the driver task, which ends once `stop` is set.
pub(super) fn start(
    mut seed: ShardSeed,
    to_tunnel: Tx,
    from_tunnel: Rx,
    status: &Arc<Status>,
    stop: &Arc<AtomicBool>,
) -> Result<glommio::Task<()>, ExecutorError> {
    let heartbeat = seed.heartbeat.take();
    let runs_heartbeat = seed.runs_heartbeat;
    let outbound = seed.outbound.take();
    let shard = seed.build(to_tunnel, status.clone())?;
    *shard.heartbeat.borrow_mut() = heartbeat.map(Rc::new);
    let shard = Rc::new(shard);
    status.shards_ready.fetch_add(1, Ordering::Relaxed);
    glommio::spawn_local(ingress_loop(shard.clone(), from_tunnel)).detach();
    if runs_heartbeat {
        glommio::spawn_local(heartbeat_loop(shard.clone(), stop.clone())).detach();
    }
    if let Some(o) = outbound {
        super::outbound::spawn_deliveries(&shard, &o, stop);
    }
    Ok(glommio::spawn_local(driver_loop(shard, stop.clone())))
}

/// Moves packets from the tunnel core into the stacks.
async fn ingress_loop(shard: Rc<Shard>, from_tunnel: Rx) {
    while let Some(msg) = from_tunnel.recv().await {
        match msg {
            Msg::Packet(p) => {
                // A dropped packet's buffer lands on the spent list too; the driver sends it home.
                let _ = shard.set.borrow_mut().ingest(p);
                shard.kick();
            }
            Msg::Home(b) => shard.pool.borrow_mut().give(b),
        }
    }
}

/// Polls the stacks, starts connection tasks, hands packets to the tunnel core.
async fn driver_loop(shard: Rc<Shard>, stop: Arc<AtomicBool>) {
    let period = shard.upstreams.sweep_period();
    glommio::spawn_local(super::upstream::ShardUpstreams::sweep_every(
        Rc::downgrade(&shard),
        |s: &Shard| &s.upstreams,
        period,
    ))
    .detach();
    let mut spent: Vec<PacketBuf> = Vec::with_capacity(256);
    let mut accepted: Vec<ConnId> = Vec::with_capacity(64);
    let beat_index = 1 + shard.index;
    let mut last_beat = Instant::now();
    let mut reclaim = super::alloc::Reclaim::default();
    loop {
        let now = Instant::now();
        let generation = shard.status.reload_generation();
        if generation != shard.applied.get() {
            apply_reload(&shard, generation);
        }
        if shard.status.draining.load(Ordering::Relaxed) && !shard.server.drain.is_set() {
            shard.set.borrow_mut().stop_accepting();
            shard.server.drain.set();
            tracing::info!(
                event = "shard.drain",
                shard = shard.index,
                open = shard.active.get()
            );
        }
        if now.duration_since(last_beat) >= MAX_PARK {
            shard.status.beat(beat_index);
            shard
                .status
                .set_requests(shard.index, shard.server.stats.borrow().requests);
            shard
                .status
                .set_shard_stats(shard.index, &shard.server.stats.borrow());
            // What traffic left goes back once it stops: spare sockets and grown tables of quiet
            // stacks, packet buffers on the free list (bit by bit), and what the burst's
            // connections freed (to the kernel, as they drain).
            shard.set.borrow_mut().trim();
            let idle_buffers = {
                let mut pool = shard.pool.borrow_mut();
                pool.trim();
                pool.idle()
            };
            shard.status.set_shard_tables(shard.index, {
                let set = shard.set.borrow();
                super::status::TunnelTables::of(set.stack_stats(), set.counters(), idle_buffers)
            });
            let open = usize::try_from(shard.active.get()).unwrap_or(usize::MAX);
            if reclaim.due(open.saturating_add(idle_buffers)) {
                super::alloc::collect();
            }
            last_beat = now;
        }
        {
            let mut set = shard.set.borrow_mut();
            set.poll(now, &mut shard.pool.borrow_mut());
            while let Some(id) = set.accept() {
                accepted.push(id);
            }
            spent.extend(set.drain_spent());
        }
        // glommio runs a spawned task right away: spawn only with no borrow held.
        for id in accepted.drain(..) {
            shard.status.connections.fetch_add(1, Ordering::Relaxed);
            glommio::spawn_local(connection(shard.clone(), id)).detach();
        }
        for b in spent.drain(..) {
            let _ = shard.to_tunnel.try_send(Msg::Home(b));
        }
        loop {
            let next = shard.set.borrow_mut().pop_tx();
            match next {
                Some(p) => {
                    if !shard.to_tunnel.send(Msg::Packet(p)).await {
                        return;
                    }
                }
                None => break,
            }
        }
        if stop.load(Ordering::Relaxed) {
            return;
        }
        let delay = shard.set.borrow().poll_delay(Instant::now());
        if delay == Some(Duration::ZERO) {
            // More work right away (smoltcp held data back, or a connection touched a stack);
            // let other tasks run first.
            glommio::yield_if_needed().await;
            futures_lite::future::yield_now().await;
            continue;
        }
        let park = delay.unwrap_or(MAX_PARK).min(MAX_PARK);
        future::or(shard.kicked(), glommio::timer::sleep(park)).await;
    }
}

/// Swaps in the newest configuration at a safe point (between driver iterations): requests
/// already being served keep the allowlist they started with (they hold its `Rc`), new ones
/// use the new one; tunnel connections opened from now on take the new `[netstack]`. Nothing
/// about the tunnel or open connections changes.
fn apply_reload(shard: &Shard, generation: u64) {
    if let Some(p) = shard.status.reload_payload() {
        match crate::allowlist::Allowlist::compile(p.rules.clone()) {
            Ok(a) => {
                *shard.server.allowlist.borrow_mut() = Rc::new(a);
                shard.server.cfg.set(p.server);
                *shard.server.scrubber.borrow_mut() = Rc::new(crate::server::scrub::Scrubber::new(
                    p.secrets.iter().map(String::as_str),
                ));
                if let Some(u) = &p.upstream {
                    shard
                        .upstreams
                        .reconfigure(&u.config, u.tls.clone(), u.proxy.clone());
                }
                shard.set.borrow_mut().retune(
                    super::prepare::algorithm(p.netstack.congestion),
                    p.netstack.rx_buffer_max,
                    p.netstack.tx_buffer_max,
                );
                if let Some(h) = &p.heartbeat {
                    *shard.heartbeat.borrow_mut() = h
                        .config
                        .as_ref()
                        .map(|hb| Rc::new(HeartbeatTarget::from_config(hb, &h.tls)));
                    shard
                        .heartbeat_generation
                        .set(shard.heartbeat_generation.get() + 1);
                }
                tracing::info!(
                    event = "config.applied",
                    shard = shard.index,
                    generation,
                    rules = p.rules.len()
                );
            }
            // The control thread compiled the same rules before publishing them; this cannot
            // fail short of a bug, and the old configuration stays.
            Err(e) => tracing::error!(
                event = "config.apply_failed",
                shard = shard.index,
                errors = e.len()
            ),
        }
    }
    shard.applied.set(generation);
    shard.status.ack_reload(shard.index, generation);
}

/// glommio's timer for the server.
struct GlommioTimer;

impl server::Timer for GlommioTimer {
    fn sleep(&self, d: Duration) -> impl Future<Output = ()> {
        glommio::timer::sleep(d)
    }
}

async fn connection(shard: Rc<Shard>, id: ConnId) {
    let peer = shard.set.borrow().remote_addr(id).map(|a| a.ip());
    shard.active.set(shard.active.get() + 1);
    shard.status.set_active(shard.index, shard.active.get());
    let mut conn = TunnelConn::new(shard.clone(), id, super::tunnel_stream::OnDrop::Close);
    server::serve(
        &mut conn,
        &shard.server,
        &GlommioTimer,
        &shard.upstreams,
        peer,
    )
    .await;
    drop(conn);
    shard.active.set(shard.active.get().saturating_sub(1));
    shard.status.set_active(shard.index, shard.active.get());
}

/// A tunnel TCP connection of this shard as an async byte stream; dropped unclosed, it closes
/// in order.
pub(super) type TunnelConn = super::tunnel_stream::TunnelStream<Shard>;

impl super::tunnel_stream::OwnsSet for Shard {
    fn set(&self) -> &RefCell<StackSet> {
        &self.set
    }
}

/// Where the heartbeat goes: an address inside the tunnel, the request target, and for an
/// `https://` URL the TLS configuration and the name the certificate must carry.
#[derive(Clone)]
pub(super) struct HeartbeatTarget {
    pub addr: std::net::SocketAddr,
    pub host: String,
    pub path: String,
    pub interval: Duration,
    pub timeout: Duration,
    /// `https://`: the upstream's client configuration (same trust roots: the webpki set, the
    /// system store and `[upstream] ca_files`) and the URL's IP address as the server name
    /// (rustls checks it against the certificate's IP SANs; no SNI is sent for an address).
    pub tls: Option<(
        Arc<rustls::ClientConfig>,
        rustls::pki_types::ServerName<'static>,
    )>,
}

impl std::fmt::Debug for HeartbeatTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HeartbeatTarget")
            .field("addr", &self.addr)
            .field("path", &self.path)
            .field("tls", &self.tls.is_some())
            .finish_non_exhaustive()
    }
}

impl HeartbeatTarget {
    /// From `[heartbeat]` (its URL was taken apart and validated at load); `tls` is the
    /// upstream client configuration, used for an `https://` URL.
    pub fn from_config(hb: &crate::config::Heartbeat, tls: &Arc<rustls::ClientConfig>) -> Self {
        let t = &hb.target;
        Self {
            addr: t.addr,
            host: t.authority.clone(),
            path: t.path.clone(),
            interval: hb.interval,
            timeout: hb.timeout,
            tls: t.tls.then(|| {
                (
                    tls.clone(),
                    rustls::pki_types::ServerName::IpAddress(t.addr.ip().into()),
                )
            }),
        }
    }
}

/// GETs the heartbeat URL through the tunnel every interval; publishes the result. The target
/// is read afresh each time (a reload may replace, add or remove it; a replacement ends the
/// current wait: the new heartbeat goes out a second later).
async fn heartbeat_loop(shard: Rc<Shard>, stop: Arc<AtomicBool>) {
    // The first check soon after start (the handshake needs a moment), then every interval.
    const SOON: Duration = Duration::from_secs(1);
    let mut wait = SOON;
    // A failing heartbeat is logged at once, then at most once a minute (`/readyz` and the
    // metrics have every failure).
    let mut throttle = LogThrottle::new(REPEAT_INTERVAL);
    loop {
        let generation = shard.heartbeat_generation.get();
        let mut slept = Duration::ZERO;
        while slept < wait {
            if stop.load(Ordering::Relaxed) {
                return;
            }
            if shard.heartbeat_generation.get() != generation {
                wait = SOON;
                slept = Duration::ZERO;
                break;
            }
            let step = MAX_PARK.min(wait - slept);
            glommio::timer::sleep(step).await;
            slept += step;
        }
        if slept < wait {
            continue;
        }
        let target = shard.heartbeat.borrow().clone();
        let Some(target) = target else {
            wait = SOON;
            continue;
        };
        wait = target.interval;
        let result = future::or(heartbeat_once(&shard, &target), async {
            glommio::timer::sleep(target.timeout).await;
            Err("timed out".to_owned())
        })
        .await;
        match result {
            Ok(status) if (200..300).contains(&status) => {
                shard.status.heartbeats_ok.fetch_add(1, Ordering::Relaxed);
                let suppressed = throttle.reset();
                if !shard.status.heartbeat_passing.swap(true, Ordering::Relaxed) {
                    tracing::info!(
                        event = "heartbeat.recovered",
                        url_host = %target.host,
                        failures_not_logged = suppressed
                    );
                }
            }
            other => {
                let reason = match other {
                    Ok(status) => format!("status {status}"),
                    Err(e) => e,
                };
                shard
                    .status
                    .heartbeats_failed
                    .fetch_add(1, Ordering::Relaxed);
                shard.status.set_heartbeat_failing(&reason);
                if let Some(suppressed) = throttle.admit(Instant::now()) {
                    tracing::warn!(
                        event = "heartbeat.failure",
                        url_host = %target.host,
                        reason = %reason,
                        suppressed
                    );
                }
            }
        }
    }
}

async fn heartbeat_once(shard: &Rc<Shard>, target: &HeartbeatTarget) -> Result<u16, String> {
    let conn = tunnel_connect(shard, target.addr).await?;
    match &target.tls {
        None => heartbeat_exchange(conn, target).await,
        Some((config, name)) => {
            let tls = futures_rustls::TlsConnector::from(config.clone())
                .connect(name.clone(), conn)
                .await
                .map_err(|e| format!("TLS: {e}"))?;
            heartbeat_exchange(tls, target).await
        }
    }
}

/// A TCP connection through the tunnel to `addr` (an address some peer routes), established;
/// the heartbeat and the webhook relay's deliveries dial with it.
pub(super) async fn tunnel_connect(
    shard: &Rc<Shard>,
    addr: std::net::SocketAddr,
) -> Result<TunnelConn, String> {
    let id = shard
        .set
        .borrow_mut()
        .connect(addr)
        .map_err(|e| format!("connect: {e}"))?;
    shard.kick();
    let conn = TunnelConn::new(shard.clone(), id, super::tunnel_stream::OnDrop::Close);
    // Wait for the handshake: smoltcp wakes the send waker on every state change.
    future::poll_fn(|cx| {
        let mut set = shard.set.borrow_mut();
        match set.state(id) {
            crate::netstack::State::Established => Poll::Ready(Ok(())),
            crate::netstack::State::SynSent | crate::netstack::State::SynReceived => {
                match set.register_send_waker(id, cx.waker()) {
                    Ok(()) => Poll::Pending,
                    Err(e) => Poll::Ready(Err(format!("connect: {e}"))),
                }
            }
            other => Poll::Ready(Err(format!("connection {other}"))),
        }
    })
    .await?;
    Ok(conn)
}

/// Sends the heartbeat request on `conn` and returns the response's status code.
async fn heartbeat_exchange<S>(mut conn: S, target: &HeartbeatTarget) -> Result<u16, String>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    use futures_lite::{AsyncReadExt, AsyncWriteExt};
    let request = format!(
        "GET {} HTTP/1.1\r\nHost: {}\r\nUser-Agent: wgbroker/{}\r\nConnection: close\r\n\r\n",
        target.path,
        target.host,
        env!("CARGO_PKG_VERSION")
    );
    conn.write_all(request.as_bytes())
        .await
        .map_err(|e| format!("write: {e}"))?;
    conn.flush().await.map_err(|e| format!("write: {e}"))?;
    let mut buf = [0u8; 1024];
    let mut filled = 0;
    loop {
        let n = conn
            .read(&mut buf[filled..])
            .await
            .map_err(|e| format!("read: {e}"))?;
        if n == 0 {
            return Err("closed before a status line".into());
        }
        filled += n;
        let mut headers = [httparse::EMPTY_HEADER; 32];
        let mut resp = httparse::Response::new(&mut headers);
        match resp.parse(&buf[..filled]) {
            Ok(_) if resp.code.is_some() => {
                let _ = conn.close().await;
                return Ok(resp.code.unwrap_or(0));
            }
            Ok(_) if filled < buf.len() => {}
            Ok(_) => return Err("response head too large".into()),
            Err(_) => return Err("malformed response".into()),
        }
    }
}
