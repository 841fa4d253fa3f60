//! The runtime seam: the only module that imports glommio.
//!
//! It owns threads, CPU placement, io_uring rings, the UDP socket and the links between
//! executors; it drives the sans-IO cores ([`crate::tunnel`], [`crate::netstack`]) and runs the
//! in-tunnel HTTP server's connection tasks ([`crate::server`]: async code over any
//! `AsyncRead + AsyncWrite` and a timer, which the runtime supplies):
//!
//! * the **tunnel core** executor (pinned) owns the UDP socket and the [`PeerTable`];
//! * one **shard** executor per remaining CPU owns a [`StackSet`] and the connection tasks;
//! * with one CPU, both run on one executor, linked by local channels;
//! * the caller's thread is the control thread: it owns signals (glommio has none) and stops the
//!   executors through [`BrokerHandle::stop`].
//!
//! Before any executor starts, [`prepare`] does everything that can fail because of the
//! configuration, the environment or the host (and binds the sockets); `wgbroker check` runs the
//! same function, so what `run` refuses, `check` refuses too. [`StartError::cause`] says whether a
//! failure is the configuration's, the host's, or temporary.
//!
//! Start-up order: the tunnel core binds its socket, waits until every shard has armed its
//! listeners, and only then initiates handshakes — so the first handshake completes when the
//! broker can already answer. [`start`] returns only once every executor has reported that it
//! runs; one that cannot be created or built fails the start with its own error
//! ([`StartError::Executor`]) after the others are stopped, so `run` never announces a broker
//! that is missing an executor.

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
    /// A socket the configuration names (the UDP port, the admin listener) cannot be bound.
    #[error("{what}: {source}")]
    Bind {
        /// The socket and address, e.g. `admin listener 127.0.0.1:9000`.
        what: String,
        source: std::io::Error,
    },
    /// Creating a socket or spawning an executor failed.
    #[error("{0}")]
    Io(String),
    /// A peer's endpoint is an IPv6 address and this host has no IPv6.
    #[error("{0}")]
    NoIpv6(String),
    /// An executor could not be created, or failed before it was running (its rings, its CPU,
    /// its stacks...); every other executor has been stopped.
    #[error("executor {name} could not start: {error}")]
    Executor { name: String, error: String },
}

/// What a [`StartError`] asks of whoever runs the broker; `run` and `check` turn it into their
/// exit status, and the systemd unit restarts the broker only on [`Cause::Temporary`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cause {
    /// The configuration, or the environment it reads (`HTTPS_PROXY`), cannot work: a CA file
    /// without a certificate, an unsupported proxy, CPUs this process may not use, peers the
    /// tunnel refuses, an address that needs a privilege. Starting again will not help.
    Config,
    /// The host cannot run the broker (io_uring, the locked-memory limit). Starting again will
    /// not help either.
    Host,
    /// May pass on its own: an address in use or not assigned (yet), a thread or socket the
    /// system could not create right now.
    Temporary,
}

impl StartError {
    /// Whether this is worth retrying, and whose to fix.
    pub fn cause(&self) -> Cause {
        match self {
            Self::Preflight(_) => Cause::Host,
            Self::Placement(_) | Self::Peers(_) | Self::Stack(_) | Self::Upstream(_) => {
                Cause::Config
            }
            // An address that needs a privilege the broker does not have (a port below 1024).
            Self::Bind { source, .. } if source.kind() == std::io::ErrorKind::PermissionDenied => {
                Cause::Config
            }
            Self::Bind { .. } | Self::Io(_) => Cause::Temporary,
            // The configuration asks for IPv6 on a host without it.
            Self::NoIpv6(_) => Cause::Config,
            // Its rings, its CPU, its stacks: what the host gives this process.
            Self::Executor { .. } => Cause::Host,
        }
    }
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
fn initial_endpoint(ep: &crate::config::Endpoint, ipv6_socket: bool) -> Option<SocketAddr> {
    if let Ok(ip) = ep.host.parse::<IpAddr>() {
        return Some(udp::canonical(SocketAddr::new(ip, ep.port)));
    }
    usable_address(
        (ep.host.as_str(), ep.port).to_socket_addrs().ok()?,
        ipv6_socket,
    )
}

/// The first of a name's addresses (in the resolver's order of preference) that the tunnel
/// socket can reach: any with a dual-stack socket, IPv4 ones only without IPv6.
pub(crate) fn usable_address(
    addrs: impl IntoIterator<Item = SocketAddr>,
    ipv6_socket: bool,
) -> Option<SocketAddr> {
    addrs
        .into_iter()
        .map(udp::canonical)
        .find(|a| ipv6_socket || a.is_ipv4())
}

fn peer_specs(c: &Config, ipv6_socket: bool) -> Vec<PeerSpec> {
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
                endpoint: initial_endpoint(&p.endpoint, ipv6_socket),
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

/// The broker's UDP socket with its buffers requested, not bound yet; whether it is IPv6; and the
/// buffers the kernel granted below the request.
///
/// Dual-stack whenever the host has IPv6 (an `AF_INET6` socket with `IPV6_V6ONLY` off, bound to
/// `[::]`): a gateway is then reached over whichever family its address has — a literal, or what
/// its name resolves to at start or later — IPv4 peers through their v4-mapped addresses (see
/// `udp::on_socket`). Without IPv6 on the host (the kernel refuses `AF_INET6`), IPv4 only: an IPv6
/// endpoint literal is then an error, and names are resolved to their IPv4 addresses.
fn udp_socket(
    c: &Config,
) -> Result<(socket2::Socket, bool, Vec<preflight::BufferShortfall>), StartError> {
    use socket2::{Domain, Protocol, Socket, Type};
    let io = |what: &str, e: std::io::Error| StartError::Io(format!("UDP socket: {what}: {e}"));
    let (s, v6) = match Socket::new(Domain::IPV6, Type::DGRAM, Some(Protocol::UDP)) {
        Ok(s) => {
            s.set_only_v6(false).map_err(|e| io("dual-stack", e))?;
            (s, true)
        }
        Err(e) if e.raw_os_error() == Some(libc::EAFNOSUPPORT) => {
            if let Some(p) = c
                .wireguard
                .peers
                .iter()
                .find(|p| p.endpoint.host.parse::<Ipv6Addr>().is_ok())
            {
                return Err(StartError::NoIpv6(format!(
                    "peer endpoint {} is an IPv6 address, but this host has no IPv6 ({e})",
                    p.endpoint
                )));
            }
            tracing::info!(
                event = "wireguard.ipv4_only",
                "the host has no IPv6: gateways are reached over IPv4 only"
            );
            let s = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP))
                .map_err(|e| io("create", e))?;
            (s, false)
        }
        Err(e) => return Err(io("create", e)),
    };
    // Buffer sizes are a request: the kernel caps them at net.core.{r,w}mem_max without an
    // error, and reports twice what it granted (its bookkeeping overhead).
    let _ = s.set_recv_buffer_size(c.runtime.udp_recv_buffer);
    let _ = s.set_send_buffer_size(c.runtime.udp_send_buffer);
    let granted = |got: std::io::Result<usize>| got.ok().map(|b| b / 2);
    let shortfalls = preflight::udp_buffer_shortfalls(
        c.runtime.udp_recv_buffer,
        c.runtime.udp_send_buffer,
        granted(s.recv_buffer_size()),
        granted(s.send_buffer_size()),
    );
    s.set_nonblocking(true).map_err(|e| io("nonblocking", e))?;
    Ok((s, v6, shortfalls))
}

/// The local address of the UDP socket: any address of its family, `[wireguard] listen_port`.
fn udp_addr(c: &Config, v6: bool) -> SocketAddr {
    let any = if v6 {
        IpAddr::V6(Ipv6Addr::UNSPECIFIED)
    } else {
        IpAddr::V4(Ipv4Addr::UNSPECIFIED)
    };
    SocketAddr::new(any, c.wireguard.listen_port)
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

/// The checks of the host alone: the io_uring sysctl, the memlock limit, and an io_uring
/// executor that can be built.
fn host_can_run(c: &Config) -> Result<(), StartError> {
    preflight::check_limits()?;
    probe_io_uring(c)
}

/// The executor of the combined layout (tunnel core and the one shard), and the tunnel core's in
/// the split layout; shards are `wgbroker-shard<i>`.
const CORE_EXECUTOR: &str = "wgbroker-core";
const TUNNEL_EXECUTOR: &str = "wgbroker-tunnel";

/// How long [`start`] waits for every executor to report that it runs (a healthy start takes
/// milliseconds).
pub const START_TIMEOUT: Duration = Duration::from_secs(10);

/// An executor's name and how its start went.
type Report = (String, Result<(), String>);

/// One executor's start-up report to [`start`], sent once: when the executor runs (its state
/// built, its listeners armed) or when it fails. Dropped unsent, it reports a failure: that is how
/// an executor glommio could not create is noticed (glommio drops the start-up closure holding
/// it), and one whose future ended or unwound early.
struct StartReport {
    name: String,
    tx: Option<std::sync::mpsc::Sender<Report>>,
}

impl StartReport {
    fn new(name: &str, tx: std::sync::mpsc::Sender<Report>) -> Self {
        Self {
            name: name.to_owned(),
            tx: Some(tx),
        }
    }

    /// The executor runs.
    fn ready(mut self) {
        self.send(Ok(()));
    }

    /// The executor cannot run, for `error`.
    fn failed(mut self, error: String) {
        tracing::error!(event = "runtime.error", executor = %self.name, error = %error);
        self.send(Err(error));
    }

    fn send(&mut self, result: Result<(), String>) {
        if let Some(tx) = self.tx.take() {
            let _ = tx.send((self.name.clone(), result));
        }
    }
}

impl Drop for StartReport {
    fn drop(&mut self) {
        self.send(Err("it ended before it was running".into()));
    }
}

/// The executors [`start`] has spawned, by name, until they all run.
#[derive(Default)]
struct Started {
    names: Vec<String>,
    joins: Vec<glommio::ExecutorJoinHandle<()>>,
}

impl Started {
    /// Records a spawned executor; a spawn that failed stops (and joins) the ones before it.
    fn add(
        &mut self,
        name: &str,
        spawned: glommio::Result<glommio::ExecutorJoinHandle<()>, ()>,
        stop: &AtomicBool,
    ) -> Result<(), StartError> {
        match spawned {
            Ok(j) => {
                self.names.push(name.to_owned());
                self.joins.push(j);
                Ok(())
            }
            Err(e) => {
                self.stop_all(stop);
                Err(StartError::Executor {
                    name: name.to_owned(),
                    error: e.to_string(),
                })
            }
        }
    }

    /// Waits until every executor reports that it runs. The first failure stops and joins them
    /// all and is returned, with the executor's own error when it has one (glommio's, for an
    /// executor it could not create) rather than the report's.
    fn wait_running(
        &mut self,
        reports: &std::sync::mpsc::Receiver<Report>,
        stop: &AtomicBool,
        timeout: Duration,
    ) -> Result<(), StartError> {
        use std::sync::mpsc::RecvTimeoutError;
        let deadline = Instant::now() + timeout;
        let mut running: Vec<String> = Vec::with_capacity(self.names.len());
        while running.len() < self.names.len() {
            match reports.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
                Ok((name, Ok(()))) => running.push(name),
                Ok((name, Err(reported))) => {
                    let joined = self.stop_all(stop);
                    let error = joined
                        .into_iter()
                        .find_map(|(n, r)| (n == name).then_some(r).and_then(Result::err))
                        .unwrap_or(reported);
                    return Err(StartError::Executor { name, error });
                }
                Err(RecvTimeoutError::Timeout | RecvTimeoutError::Disconnected) => {
                    // Not joined: an executor that does not report may not notice `stop` either.
                    stop.store(true, Ordering::Relaxed);
                    let late: Vec<&str> = self
                        .names
                        .iter()
                        .filter(|n| !running.contains(n))
                        .map(String::as_str)
                        .collect();
                    return Err(StartError::Executor {
                        name: late.join(", "),
                        error: format!("not running after {} s", timeout.as_secs()),
                    });
                }
            }
        }
        Ok(())
    }

    /// Stops every executor and waits for them; each one's outcome by name.
    fn stop_all(&mut self, stop: &AtomicBool) -> Vec<(String, Result<(), String>)> {
        stop.store(true, Ordering::Relaxed);
        self.names
            .drain(..)
            .zip(self.joins.drain(..))
            .map(|(n, j)| (n, j.join().map_err(|e| e.to_string())))
            .collect()
    }

    fn into_joins(self) -> Vec<glommio::ExecutorJoinHandle<()>> {
        self.joins
    }
}

/// Runs `fut` until it completes, or gives up (`None`) once `stop` is set: an executor waiting for
/// a peer executor that never comes (it failed) leaves when [`start`] stops everything.
async fn until_stopped<T>(
    fut: impl std::future::Future<Output = T>,
    stop: &AtomicBool,
) -> Option<T> {
    futures_lite::future::or(async { Some(fut.await) }, async {
        while !stop.load(Ordering::Relaxed) {
            glommio::timer::sleep(Duration::from_millis(5)).await;
        }
        None
    })
    .await
}

/// Why [`prepare`] runs: to start, or for `wgbroker check`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Purpose {
    /// Everything must hold.
    Start,
    /// An address that cannot be bound for a temporary reason (in use, not assigned yet) is a
    /// finding, not an error: an operator checks a changed configuration while the broker runs
    /// and holds its ports, and under systemd `run` fails with the temporary status, which the
    /// unit restarts on, while a failed `ExecStartPre=` is not restarted.
    Check,
}

/// Everything [`start`] does before it spawns an executor that can fail because of the
/// configuration, the environment or the host, done once, in one place:
///
/// 1. the host: the io_uring sysctl, the memlock limit, an io_uring executor ([`Cause::Host`]);
/// 2. the executor layout from `[runtime]` and the CPUs this process may use;
/// 3. each shard's stack configuration;
/// 4. the WireGuard peer table (duplicate keys, allowed IPs given to two peers, ...);
/// 5. the upstream TLS roots (`[upstream] ca_files` read and parsed) and the proxy settings
///    (`[upstream] proxy` or `HTTPS_PROXY`/`HTTP_PROXY`/`NO_PROXY` from the environment);
/// 6. the UDP socket bound to `[wireguard] listen_port`, and the admin listener bound.
///
/// `wgbroker check` runs exactly this and drops the result (closing the sockets), so the unit's
/// `ExecStartPre=wgbroker check` refuses whatever `run` would refuse, with the same message and
/// status — except an address that cannot be bound for now, which `check` reports as a warning
/// ([`Purpose::Check`]).
pub fn prepare(loaded: &Loaded, purpose: Purpose) -> Result<Prepared, StartError> {
    let c = &loaded.config;
    host_can_run(c)?;
    let plan =
        placement::plan(&c.runtime, &placement::available_cpus()).map_err(StartError::Placement)?;
    let shards = plan.shards.len();
    let stacks = stacks_per_shard(c, shards);
    let stack_configs: Vec<StackConfig> = (0..shards)
        .map(|i| stack_config(c, i, shards, stacks))
        .collect();
    for s in &stack_configs {
        s.validate()?;
    }
    let (udp, ipv6_socket, udp_shortfalls) = udp_socket(c)?;
    let table = PeerTable::new(
        &c.wireguard.private_key,
        peer_specs(c, ipv6_socket),
        Instant::now(),
    )?;
    let tls = crate::upstream::tls::client_config(&c.upstream).map_err(StartError::Upstream)?;
    let proxy = crate::upstream::proxy::ProxySettings::from_config(&c.upstream, &|k: &str| {
        std::env::var(k).ok()
    })
    .map_err(StartError::Upstream)?;

    let mut bind_warnings = Vec::new();
    let mut bound = |r: std::io::Result<()>, what: String| {
        let Err(source) = r else { return Ok(()) };
        let e = StartError::Bind { what, source };
        if purpose == Purpose::Check && e.cause() == Cause::Temporary {
            bind_warnings.push(e.to_string());
            return Ok(());
        }
        Err(e)
    };
    let addr = udp_addr(c, ipv6_socket);
    bound(
        udp.bind(&addr.into()),
        format!("UDP socket {addr} ([wireguard] listen_port)"),
    )?;
    let admin = if c.admin.enabled {
        let what = format!("admin listener {}", c.admin.listen);
        match std::net::TcpListener::bind(c.admin.listen) {
            Ok(l) => Some(l),
            Err(e) => {
                bound(Err(e), what)?;
                None
            }
        }
    } else {
        None
    };
    Ok(Prepared {
        plan,
        stacks,
        stack_configs,
        table,
        udp,
        ipv6_socket,
        admin,
        tls,
        proxy,
        udp_shortfalls,
        bind_warnings,
    })
}

/// What [`prepare`] built: what [`start`] runs on, or what `check` reports and drops.
pub struct Prepared {
    plan: placement::Plan,
    stacks: usize,
    stack_configs: Vec<StackConfig>,
    table: PeerTable,
    udp: socket2::Socket,
    /// Whether `udp` is an IPv6 (dual-stack) socket.
    ipv6_socket: bool,
    admin: Option<std::net::TcpListener>,
    tls: Arc<rustls::ClientConfig>,
    proxy: crate::upstream::proxy::ProxySettings,
    /// UDP buffers the kernel grants below `[runtime]`'s request (a warning, not an error).
    pub udp_shortfalls: Vec<preflight::BufferShortfall>,
    /// Addresses that cannot be bound now, in use or not assigned ([`Purpose::Check`] only).
    pub bind_warnings: Vec<String>,
}

impl std::fmt::Debug for Prepared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Prepared")
            .field("plan", &self.plan)
            .field("stacks", &self.stacks)
            .field("udp", &self.udp)
            .field("admin", &self.admin)
            .field("proxy", &self.proxy)
            .field("udp_shortfalls", &self.udp_shortfalls)
            .field("bind_warnings", &self.bind_warnings)
            .finish_non_exhaustive()
    }
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

/// Starts the broker described by `loaded`; returns once every executor is running (its state
/// built, its listeners armed). An executor that cannot start fails the whole start with its
/// error ([`StartError::Executor`]), after the others have been stopped.
pub fn start(loaded: &Loaded) -> Result<BrokerHandle, StartError> {
    let c = &loaded.config;
    let Prepared {
        plan,
        stacks,
        stack_configs,
        table,
        udp,
        ipv6_socket,
        admin,
        tls,
        proxy,
        udp_shortfalls,
        bind_warnings: _,
    } = prepare(loaded, Purpose::Start)?;
    for f in udp_shortfalls {
        tracing::warn!(
            event = "runtime.udp_buffer",
            key = f.key,
            requested = f.requested,
            granted = f.granted,
            "{f}"
        );
    }
    if !preflight::disable_transparent_huge_pages() {
        tracing::debug!(
            event = "runtime.thp_enabled",
            "PR_SET_THP_DISABLE refused; socket buffers may use huge pages"
        );
    }
    let shards = plan.shards.len();
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
    let seeds: Vec<ShardSeed> = stack_configs
        .into_iter()
        .enumerate()
        .map(|(i, stack)| ShardSeed {
            index: i,
            rules: rules.clone(),
            upstream: c.upstream.clone(),
            scrubber: scrubber.clone(),
            tls: tls.clone(),
            proxy: proxy.clone(),
            stack,
            server,
            seed: random_u64(),
            id_prefix,
            buf_capacity: cap,
        })
        .collect();
    let capacity = c.runtime.channel_capacity;
    let heartbeat = c
        .heartbeat
        .as_ref()
        .map(|hb| shard::HeartbeatTarget::from_config(hb, &tls));
    if heartbeat.is_some() {
        status.set_heartbeat_failing("no heartbeat has completed yet");
    }
    // Every executor reports here once it runs (or why it does not); `start` returns only when
    // all of them do, so that a broker missing one is never announced as started.
    let (report_tx, report_rx) = std::sync::mpsc::channel();
    let report = |name: &str| StartReport::new(name, report_tx.clone());
    let mut started = Started::default();

    if plan.combined {
        let seed = seeds
            .into_iter()
            .next()
            .ok_or_else(|| StartError::Io("no shard".into()))?;
        let (status2, stop2) = (status.clone(), stop.clone());
        let rep = report(CORE_EXECUTOR);
        let j = builder(CORE_EXECUTOR, plan.tunnel_cpu, c).spawn(move || async move {
            let (to_shard, shard_rx) = link::local(capacity);
            let (to_tunnel, tunnel_rx) = link::local(capacity);
            let shard = match seed.build(to_tunnel, status2.clone()) {
                Ok(s) => Rc::new(s),
                Err(e) => return rep.failed(e.to_string()),
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
                ipv6_socket,
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
            rep.ready();
            tunnel_core::timer_loop(core, stop2).await;
            driver.await;
        });
        started.add(CORE_EXECUTOR, j, &stop)?;
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
            let rep = report(&name);
            let j = builder(&name, cpu, c).spawn(move || async move {
                // Both directions at once: a connect waits for its peer end (or for `start`
                // to give up when the tunnel executor never comes).
                let links =
                    futures_lite::future::zip(to_tunnel_tx.connect(), to_shard_rx.connect());
                let Some((to_tunnel, from_tunnel)) = until_stopped(links, &stop2).await else {
                    return; // `start` gave up on another executor; `rep` reports on drop
                };
                let shard = match seed.build(to_tunnel, status2.clone()) {
                    Ok(s) => Rc::new(s),
                    Err(e) => return rep.failed(e.to_string()),
                };
                status2.shards_ready.fetch_add(1, Ordering::Relaxed);
                glommio::spawn_local(shard::ingress_loop(shard.clone(), from_tunnel)).detach();
                if let Some(hb) = heartbeat {
                    glommio::spawn_local(shard::heartbeat_loop(shard.clone(), hb, stop2.clone()))
                        .detach();
                }
                rep.ready();
                shard::driver_loop(shard, stop2).await;
            });
            started.add(&name, j, &stop)?;
        }
        let (status2, stop2) = (status.clone(), stop.clone());
        let rep = report(TUNNEL_EXECUTOR);
        let j = builder(TUNNEL_EXECUTOR, plan.tunnel_cpu, c).spawn(move || async move {
            let mut to_shards = Vec::with_capacity(core_ends.len());
            let mut from_shards = Vec::with_capacity(core_ends.len());
            for (tx, rx) in core_ends {
                let links = futures_lite::future::zip(tx.connect(), rx.connect());
                let Some((tx, rx)) = until_stopped(links, &stop2).await else {
                    return; // `start` gave up on another executor; `rep` reports on drop
                };
                to_shards.push(tx);
                from_shards.push(rx);
            }
            // Handshakes start only once every shard listens.
            while status2.shards_ready.load(Ordering::Relaxed) < shards {
                if stop2.load(Ordering::Relaxed) {
                    return; // `start` gave up on another executor; `rep` reports on drop
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
                ipv6_socket,
                io: Default::default(),
            });
            for (i, rx) in from_shards.into_iter().enumerate() {
                glommio::spawn_local(tunnel_core::egress_loop(core.clone(), rx, i)).detach();
            }
            glommio::spawn_local(tunnel_core::rx_loop(core.clone())).detach();
            rep.ready();
            tunnel_core::timer_loop(core, stop2).await;
        });
        started.add(TUNNEL_EXECUTOR, j, &stop)?;
    }
    drop(report_tx);
    started.wait_running(&report_rx, &stop, START_TIMEOUT)?;
    let joins = started.into_joins();
    if let Some(listener) = admin {
        match crate::admin::serve(listener, status.clone(), stop.clone()) {
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

#[cfg(test)]
mod tests {
    use super::*;

    fn small() -> LocalExecutorBuilder {
        LocalExecutorBuilder::new(Placement::Unbound).io_memory(64 << 10)
    }

    #[test]
    fn the_first_executor_that_fails_fails_the_start_and_the_others_are_stopped() {
        let stop = Arc::new(AtomicBool::new(false));
        let (tx, rx) = std::sync::mpsc::channel();
        let mut started = Started::default();
        let (rep, stop2) = (StartReport::new("runs", tx.clone()), stop.clone());
        let spawned = small().spawn(move || async move {
            rep.ready();
            while !stop2.load(Ordering::Relaxed) {
                glommio::timer::sleep(Duration::from_millis(5)).await;
            }
        });
        started.add("runs", spawned, &stop).expect("spawned");
        let rep = StartReport::new("fails", tx.clone());
        let spawned = small().spawn(move || async move { rep.failed("no stacks".into()) });
        started.add("fails", spawned, &stop).expect("spawned");
        drop(tx);
        match started.wait_running(&rx, &stop, Duration::from_secs(10)) {
            Err(StartError::Executor { name, error }) => {
                assert_eq!((name.as_str(), error.as_str()), ("fails", "no stacks"));
            }
            other => panic!("{other:?}"),
        }
        assert!(
            stop.load(Ordering::Relaxed),
            "the running one was told to stop"
        );
        assert!(started.joins.is_empty(), "and was joined");
    }

    #[test]
    fn an_executor_that_ends_without_reporting_is_a_failed_start() {
        let stop = AtomicBool::new(false);
        let (tx, rx) = std::sync::mpsc::channel();
        let mut started = Started::default();
        let rep = StartReport::new("silent", tx);
        let spawned = small().spawn(move || async move { drop(rep) });
        started.add("silent", spawned, &stop).expect("spawned");
        let e = started
            .wait_running(&rx, &stop, Duration::from_secs(10))
            .expect_err("it never ran");
        assert_eq!(
            e.to_string(),
            "executor silent could not start: it ended before it was running"
        );
    }

    #[test]
    fn executors_that_all_report_running_make_a_start() {
        let stop = Arc::new(AtomicBool::new(false));
        let (tx, rx) = std::sync::mpsc::channel();
        let mut started = Started::default();
        for name in ["a", "b"] {
            let (rep, stop2) = (StartReport::new(name, tx.clone()), stop.clone());
            let spawned = small().spawn(move || async move {
                rep.ready();
                while !stop2.load(Ordering::Relaxed) {
                    glommio::timer::sleep(Duration::from_millis(5)).await;
                }
            });
            started.add(name, spawned, &stop).expect("spawned");
        }
        started
            .wait_running(&rx, &stop, Duration::from_secs(10))
            .expect("both run");
        assert!(!stop.load(Ordering::Relaxed));
        stop.store(true, Ordering::Relaxed);
        for j in started.into_joins() {
            j.join().expect("clean stop");
        }
    }
}
