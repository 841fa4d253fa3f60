//! The runtime seam: the only module that imports glommio.
//!
//! It owns threads, CPU placement, io_uring rings, the UDP socket and the links between
//! executors, and drives the sans-IO cores ([`crate::tunnel`], [`crate::netstack`],
//! [`crate::server`]):
//!
//! * the **tunnel core** executor (pinned) owns the UDP socket and the [`PeerTable`];
//! * one **shard** executor per remaining CPU owns a [`StackSet`] and the connection tasks;
//! * with one CPU, both run on one executor, linked by local channels;
//! * the caller's thread is the control thread: it owns signals (glommio has none) and stops the
//!   executors through [`BrokerHandle::stop`].
//!
//! Start-up order: the tunnel core binds its socket, waits until every shard has armed its
//! listeners, and only then initiates handshakes — so the first handshake completes when the
//! broker can already answer.

pub mod alloc;
pub(crate) mod link;
pub mod placement;
pub mod preflight;
mod shard;
pub mod status;
mod tunnel_core;
pub(crate) mod udp;
pub mod upstream;

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, ToSocketAddrs};
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use glommio::{LocalExecutorBuilder, Placement};

pub use status::Status;

use crate::config::{Config, Loaded};
use crate::netstack::{StackConfig, StackSet};
use crate::packet::BufPool;
use crate::server::{RequestIds, ServerConfig, ServerCtx};
use crate::tunnel::{PeerSpec, PeerTable};

/// Why the broker could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StartError {
    /// io_uring or memlock preconditions fail; the message names the fix.
    #[error(transparent)]
    Preflight(#[from] preflight::PreflightError),
    /// The executor layout cannot be built from `[runtime]`.
    #[error("runtime placement: {0}")]
    Placement(String),
    /// The peer table refused the configuration.
    #[error("wireguard: {0}")]
    Peers(#[from] crate::tunnel::PeerTableError),
    /// The stack configuration derived from the config is invalid.
    #[error("netstack: {0}")]
    Stack(#[from] crate::netstack::ConfigError),
    /// The upstream TLS or proxy settings are unusable.
    #[error("upstream: {0}")]
    Upstream(String),
    /// Binding the UDP socket or spawning an executor failed.
    #[error("{0}")]
    Io(String),
}

/// A running broker.
#[derive(Debug)]
pub struct BrokerHandle {
    stop: Arc<AtomicBool>,
    status: Arc<Status>,
    joins: Vec<glommio::ExecutorJoinHandle<()>>,
}

impl BrokerHandle {
    /// Shared status (handshakes, connections, ...).
    pub fn status(&self) -> &Arc<Status> {
        &self.status
    }

    /// Asks every executor to stop (they notice within ~100 ms).
    pub fn stop(&self) {
        self.stop.store(true, Ordering::Relaxed);
    }

    /// A flag that stops the broker when set (for signal handlers).
    pub fn stop_flag(&self) -> Arc<AtomicBool> {
        self.stop.clone()
    }

    /// Waits for every executor to finish.
    pub fn join(self) -> Result<(), String> {
        let mut first_err = None;
        for j in self.joins {
            if let Err(e) = j.join() {
                first_err.get_or_insert_with(|| e.to_string());
            }
        }
        self.status.stopped.store(true, Ordering::Relaxed);
        first_err.map_or(Ok(()), Err)
    }

    /// Swaps the allowlist and the log scrubber of `loaded` into every shard at a safe point,
    /// without touching the tunnel or open connections; waits (up to 2 s) until every shard
    /// runs it. Other sections (WireGuard, inbound, runtime, upstream, admin) need a restart.
    pub fn reload(&self, loaded: &Loaded) -> Result<(), String> {
        let c = &loaded.config;
        let generation = self.status.publish_reload(status::ReloadPayload {
            rules: c.rules(),
            secrets: ServerConfig::secrets(c),
        });
        let until = Instant::now() + Duration::from_secs(2);
        while !self.status.reload_applied(generation) {
            if Instant::now() >= until {
                return Err("not every shard applied the new configuration within 2 s".into());
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        Ok(())
    }

    /// Drains: stops accepting tunnel connections, closes idle ones, lets in-flight exchanges
    /// finish until every connection is gone or `deadline` passes, then stops and waits.
    /// Returns how many connections were still open at the deadline.
    pub fn drain(self, deadline: Duration) -> Result<u64, String> {
        self.status.draining.store(true, Ordering::Relaxed);
        let until = Instant::now() + deadline;
        // Shards notice within one driver iteration (at most ~100 ms).
        std::thread::sleep(Duration::from_millis(150).min(deadline));
        while self.status.active_connections() > 0 && Instant::now() < until {
            std::thread::sleep(Duration::from_millis(20));
        }
        let left = self.status.active_connections();
        self.shutdown().map(|()| left)
    }

    /// Stops and waits.
    pub fn shutdown(self) -> Result<(), String> {
        self.stop();
        self.join()
    }
}

/// Packet buffer capacity: the MTU rounded up, plus WireGuard's overhead so a buffer can hold a
/// datagram being decrypted in place.
fn buf_capacity(mtu: u16) -> usize {
    (usize::from(mtu) + crate::tunnel::DATA_OVERHEAD + 63) & !63
}

/// Resolves a peer endpoint now (at start-up); a name that does not resolve yet is left to the
/// peer table's re-resolution.
fn initial_endpoint(ep: &crate::config::Endpoint) -> Option<SocketAddr> {
    if let Ok(ip) = ep.host.parse::<IpAddr>() {
        return Some(SocketAddr::new(ip, ep.port));
    }
    (ep.host.as_str(), ep.port).to_socket_addrs().ok()?.next()
}

fn peer_specs(c: &Config) -> Vec<PeerSpec> {
    c.wireguard
        .peers
        .iter()
        .map(|p| {
            let psk = p
                .preshared_key
                .as_ref()
                .and_then(|k| crate::keys::decode32(k.value.expose()).ok());
            let is_name = p.endpoint.host.parse::<IpAddr>().is_err();
            PeerSpec {
                public_key: p.public_key,
                preshared_key: psk,
                endpoint: initial_endpoint(&p.endpoint),
                endpoint_name: is_name.then(|| p.endpoint.clone()),
                allowed_ips: p.allowed_ips.clone(),
                persistent_keepalive: p.persistent_keepalive,
            }
        })
        .collect()
}

/// Stacks per shard when `stacks_per_shard = 0`: enough that no stack holds more than a few
/// hundred sockets at `max_connections`.
fn stacks_per_shard(c: &Config, shards: usize) -> usize {
    match c.runtime.stacks_per_shard {
        0 => (c.runtime.max_connections / shards.max(1))
            .div_ceil(256)
            .clamp(1, 256),
        n => n,
    }
}

fn stack_config(c: &Config, shard: usize, shards: usize, stacks: usize) -> StackConfig {
    let per_stack = c.runtime.max_connections / (shards * stacks).max(1) + c.runtime.listen_backlog;
    StackConfig {
        address: c.wireguard.address,
        mtu: usize::from(c.wireguard.mtu),
        listen_port: c.inbound.listen_port,
        backlog: c.runtime.listen_backlog,
        rx_buffer: c.runtime.tcp_rx_buffer,
        tx_buffer: c.runtime.tcp_tx_buffer,
        ack_delay: (!c.runtime.tcp_ack_delay.is_zero()).then_some(c.runtime.tcp_ack_delay),
        max_sockets_per_stack: per_stack.max(c.runtime.listen_backlog + 1),
        stacks,
        shard_index: shard,
        shards,
        ..StackConfig::default()
    }
}

fn random_u64() -> u64 {
    let mut b = [0u8; 8];
    let _ = getrandom::fill(&mut b);
    u64::from_le_bytes(b)
}

fn bind_udp(c: &Config) -> Result<socket2::Socket, StartError> {
    use socket2::{Domain, Protocol, Socket, Type};
    // Dual-stack when any peer endpoint is IPv6; IPv4 otherwise.
    let v6 = c
        .wireguard
        .peers
        .iter()
        .any(|p| p.endpoint.host.contains(':'));
    let (domain, addr) = if v6 {
        (
            Domain::IPV6,
            SocketAddr::new(IpAddr::V6(Ipv6Addr::UNSPECIFIED), c.wireguard.listen_port),
        )
    } else {
        (
            Domain::IPV4,
            SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), c.wireguard.listen_port),
        )
    };
    let io = |what: &str, e: std::io::Error| StartError::Io(format!("UDP socket: {what}: {e}"));
    let s = Socket::new(domain, Type::DGRAM, Some(Protocol::UDP)).map_err(|e| io("create", e))?;
    if v6 {
        s.set_only_v6(false).map_err(|e| io("dual-stack", e))?;
    }
    // Buffer sizes are a request: the kernel caps them at net.core.{r,w}mem_max without an
    // error, and reports twice what it granted (its bookkeeping overhead).
    let _ = s.set_recv_buffer_size(c.runtime.udp_recv_buffer);
    let _ = s.set_send_buffer_size(c.runtime.udp_send_buffer);
    let granted = |got: std::io::Result<usize>| got.ok().map(|b| b / 2);
    for f in preflight::udp_buffer_shortfalls(
        c.runtime.udp_recv_buffer,
        c.runtime.udp_send_buffer,
        granted(s.recv_buffer_size()),
        granted(s.send_buffer_size()),
    ) {
        tracing::warn!(
            event = "runtime.udp_buffer",
            key = f.key,
            requested = f.requested,
            granted = f.granted,
            "{f}"
        );
    }
    s.bind(&addr.into())
        .map_err(|e| io(&format!("bind {addr}"), e))?;
    s.set_nonblocking(true).map_err(|e| io("nonblocking", e))?;
    Ok(s)
}

fn builder(name: &str, cpu: Option<usize>, c: &Config) -> LocalExecutorBuilder {
    let placement = match cpu {
        Some(cpu) => Placement::Fixed(cpu),
        None => Placement::Unbound,
    };
    LocalExecutorBuilder::new(placement)
        .name(name)
        .ring_depth(c.runtime.ring_depth)
        .io_memory(c.runtime.io_memory)
        .spin_before_park(c.runtime.spin_before_park)
        .preempt_timer(c.runtime.preempt_timer)
}

/// Builds (and drops) one executor on the calling thread, so that a kernel without io_uring, a
/// seccomp profile that forbids it or a ring that cannot be allocated is reported as a clear
/// error here instead of a panic inside an executor thread.
fn probe_io_uring(c: &Config) -> Result<(), StartError> {
    let probe = std::thread::Builder::new()
        .name("wgbroker-probe".into())
        .spawn({
            let depth = c.runtime.ring_depth;
            move || {
                std::panic::catch_unwind(|| {
                    LocalExecutorBuilder::new(Placement::Unbound)
                        .ring_depth(depth)
                        .io_memory(64 << 10)
                        .make()
                        .map(drop)
                        .map_err(|e| e.to_string())
                })
                .unwrap_or_else(|_| Err("the io_uring set-up panicked".into()))
            }
        })
        .map_err(|e| StartError::Io(format!("cannot start a thread: {e}")))?;
    match probe.join() {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(preflight::PreflightError::IoUringUnavailable(e).into()),
        Err(_) => {
            Err(preflight::PreflightError::IoUringUnavailable("probe thread failed".into()).into())
        }
    }
}

/// What `wgbroker check` verifies of the host before a start: the io_uring sysctl, the
/// locked-memory limit and an io_uring executor (errors), and the UDP buffers the kernel will
/// grant (findings, returned).
pub fn host_check(c: &Config) -> Result<Vec<preflight::BufferShortfall>, StartError> {
    host_can_run(c)?;
    let (rmem_max, wmem_max) = preflight::udp_buffer_caps();
    Ok(preflight::udp_buffer_shortfalls(
        c.runtime.udp_recv_buffer,
        c.runtime.udp_send_buffer,
        rmem_max,
        wmem_max,
    ))
}

/// The checks `start` and `check` share: the io_uring sysctl, the memlock limit, and an
/// io_uring executor that can be built.
fn host_can_run(c: &Config) -> Result<(), StartError> {
    preflight::check_limits()?;
    probe_io_uring(c)
}

/// Everything one shard executor needs, built on the control thread (all `Send`).
struct ShardSeed {
    index: usize,
    /// Every rule in decision order; each shard compiles its own allowlist (no sharing).
    rules: Vec<crate::allowlist::RuleSpec>,
    stack: StackConfig,
    server: ServerConfig,
    seed: u64,
    id_prefix: u32,
    buf_capacity: usize,
    upstream: crate::config::Upstream,
    scrubber: crate::server::scrub::Scrubber,
    tls: Arc<rustls::ClientConfig>,
    proxy: crate::upstream::proxy::ProxySettings,
}

impl ShardSeed {
    fn build(self, to_tunnel: link::Tx, status: Arc<Status>) -> Result<shard::Shard, StartError> {
        let set = StackSet::new(&self.stack, Instant::now(), self.seed)?;
        let pool = BufPool::new(self.buf_capacity, 4096);
        let ids = RequestIds::new(
            self.id_prefix,
            u16::try_from(self.index).unwrap_or(u16::MAX),
        );
        let allowlist = crate::allowlist::Allowlist::compile(self.rules)
            .map_err(|e| StartError::Io(format!("allowlist: {} error(s)", e.len())))?;
        let upstreams = upstream::ShardUpstreams::new(&self.upstream, self.tls, self.proxy);
        Ok(shard::Shard::new(
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

/// Starts the broker described by `loaded`; returns once every executor is running.
pub fn start(loaded: &Loaded) -> Result<BrokerHandle, StartError> {
    let c = &loaded.config;
    host_can_run(c)?;
    if !preflight::disable_transparent_huge_pages() {
        tracing::debug!(
            event = "runtime.thp_enabled",
            "PR_SET_THP_DISABLE refused; socket buffers may use huge pages"
        );
    }
    let plan =
        placement::plan(&c.runtime, &placement::available_cpus()).map_err(StartError::Placement)?;
    let shards = plan.shards.len();
    let stacks = stacks_per_shard(c, shards);
    let table = PeerTable::new(&c.wireguard.private_key, peer_specs(c), Instant::now())?;
    let udp = bind_udp(c)?;
    let status = Arc::new(Status::new(shards));
    if let Ok(local) = udp.local_addr() {
        if let Some(a) = local.as_socket() {
            status.udp_port.store(a.port(), Ordering::Relaxed);
        }
    }
    let stop = Arc::new(AtomicBool::new(false));
    let cap = buf_capacity(c.wireguard.mtu);
    let gso = c.runtime.udp_gso;
    let id_prefix = random_u64() as u32;
    let server = ServerConfig::from_config(c);
    let rules = c.rules();
    let secrets = ServerConfig::secrets(c);
    let scrubber = crate::server::scrub::Scrubber::new(secrets.iter().map(String::as_str));
    let tls = crate::upstream::tls::client_config(&c.upstream).map_err(StartError::Upstream)?;
    let proxy = crate::upstream::proxy::ProxySettings::from_config(&c.upstream, &|k: &str| {
        std::env::var(k).ok()
    })
    .map_err(StartError::Upstream)?;
    let seeds: Vec<ShardSeed> = (0..shards)
        .map(|i| ShardSeed {
            index: i,
            rules: rules.clone(),
            upstream: c.upstream.clone(),
            scrubber: scrubber.clone(),
            tls: tls.clone(),
            proxy: proxy.clone(),
            stack: stack_config(c, i, shards, stacks),
            server,
            seed: random_u64(),
            id_prefix,
            buf_capacity: cap,
        })
        .collect();
    // Validate stack configs here so that errors surface before any thread starts.
    for s in &seeds {
        s.stack.validate()?;
    }
    let capacity = c.runtime.channel_capacity;
    let heartbeat = c
        .heartbeat
        .as_ref()
        .and_then(shard::HeartbeatTarget::from_config);
    if heartbeat.is_some() {
        status.heartbeat_passing.store(false, Ordering::Relaxed);
    }
    let mut joins = Vec::new();

    if plan.combined {
        let seed = seeds
            .into_iter()
            .next()
            .ok_or_else(|| StartError::Io("no shard".into()))?;
        let (status2, stop2) = (status.clone(), stop.clone());
        let j = builder("wgbroker-core", plan.tunnel_cpu, c)
            .spawn(move || async move {
                let (to_shard, shard_rx) = link::local(capacity);
                let (to_tunnel, tunnel_rx) = link::local(capacity);
                let shard = match seed.build(to_tunnel, status2.clone()) {
                    Ok(s) => Rc::new(s),
                    Err(e) => {
                        tracing::error!(event = "runtime.error", error = %e);
                        return;
                    }
                };
                status2.shards_ready.fetch_add(1, Ordering::Relaxed);
                let core = Rc::new(tunnel_core::TunnelCore {
                    table: std::cell::RefCell::new(table),
                    udp: glommio::net::UdpSocket::from(udp),
                    to_shards: vec![to_shard],
                    pool: std::cell::RefCell::new(BufPool::new(cap, 4096)),
                    shards: 1,
                    stacks,
                    status: status2,
                    gso,
                    io: Default::default(),
                });
                glommio::spawn_local(shard::ingress_loop(shard.clone(), shard_rx)).detach();
                if let Some(hb) = heartbeat.clone() {
                    glommio::spawn_local(shard::heartbeat_loop(shard.clone(), hb, stop2.clone()))
                        .detach();
                }
                let driver = glommio::spawn_local(shard::driver_loop(shard, stop2.clone()));
                glommio::spawn_local(tunnel_core::egress_loop(core.clone(), tunnel_rx, 0)).detach();
                glommio::spawn_local(tunnel_core::rx_loop(core.clone())).detach();
                tunnel_core::timer_loop(core, stop2).await;
                driver.await;
            })
            .map_err(|e| StartError::Io(format!("cannot start the executor: {e}")))?;
        joins.push(j);
    } else {
        let mut core_ends = Vec::with_capacity(shards);
        for (seed, cpu) in seeds.into_iter().zip(plan.shards.iter().copied()) {
            let (to_shard_tx, to_shard_rx) = link::shared(capacity);
            let (to_tunnel_tx, to_tunnel_rx) = link::shared(capacity);
            core_ends.push((to_shard_tx, to_tunnel_rx));
            let (status2, stop2) = (status.clone(), stop.clone());
            let name = format!("wgbroker-shard{}", seed.index);
            // The heartbeat runs on the first shard only.
            let heartbeat = if seed.index == 0 {
                heartbeat.clone()
            } else {
                None
            };
            let j = builder(&name, cpu, c)
                .spawn(move || async move {
                    // Both directions at once: a connect waits for its peer end.
                    let (to_tunnel, from_tunnel) =
                        futures_lite::future::zip(to_tunnel_tx.connect(), to_shard_rx.connect())
                            .await;
                    let shard = match seed.build(to_tunnel, status2.clone()) {
                        Ok(s) => Rc::new(s),
                        Err(e) => {
                            tracing::error!(event = "runtime.error", error = %e);
                            return;
                        }
                    };
                    status2.shards_ready.fetch_add(1, Ordering::Relaxed);
                    glommio::spawn_local(shard::ingress_loop(shard.clone(), from_tunnel)).detach();
                    if let Some(hb) = heartbeat {
                        glommio::spawn_local(shard::heartbeat_loop(
                            shard.clone(),
                            hb,
                            stop2.clone(),
                        ))
                        .detach();
                    }
                    shard::driver_loop(shard, stop2).await;
                })
                .map_err(|e| StartError::Io(format!("cannot start shard executor: {e}")))?;
            joins.push(j);
        }
        let (status2, stop2) = (status.clone(), stop.clone());
        let j = builder("wgbroker-tunnel", plan.tunnel_cpu, c)
            .spawn(move || async move {
                let mut to_shards = Vec::with_capacity(core_ends.len());
                let mut from_shards = Vec::with_capacity(core_ends.len());
                for (tx, rx) in core_ends {
                    let (tx, rx) = futures_lite::future::zip(tx.connect(), rx.connect()).await;
                    to_shards.push(tx);
                    from_shards.push(rx);
                }
                // Handshakes start only once every shard listens.
                while status2.shards_ready.load(Ordering::Relaxed) < shards {
                    if stop2.load(Ordering::Relaxed) {
                        return;
                    }
                    glommio::timer::sleep(Duration::from_millis(1)).await;
                }
                let core = Rc::new(tunnel_core::TunnelCore {
                    table: std::cell::RefCell::new(table),
                    udp: glommio::net::UdpSocket::from(udp),
                    to_shards,
                    pool: std::cell::RefCell::new(BufPool::new(cap, 4096)),
                    shards,
                    stacks,
                    status: status2,
                    gso,
                    io: Default::default(),
                });
                for (i, rx) in from_shards.into_iter().enumerate() {
                    glommio::spawn_local(tunnel_core::egress_loop(core.clone(), rx, i)).detach();
                }
                glommio::spawn_local(tunnel_core::rx_loop(core.clone())).detach();
                tunnel_core::timer_loop(core, stop2).await;
            })
            .map_err(|e| StartError::Io(format!("cannot start the tunnel executor: {e}")))?;
        joins.push(j);
    }
    if c.admin.enabled {
        match crate::admin::spawn(c.admin.listen, status.clone(), stop.clone()) {
            Ok(addr) => status.admin_port.store(addr.port(), Ordering::Relaxed),
            Err(e) => {
                stop.store(true, Ordering::Relaxed);
                for j in joins {
                    let _ = j.join();
                }
                return Err(StartError::Io(format!(
                    "admin listener {}: {e}",
                    c.admin.listen
                )));
            }
        }
    }
    Ok(BrokerHandle {
        stop,
        status,
        joins,
    })
}
