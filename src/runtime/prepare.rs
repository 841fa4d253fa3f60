//! Everything [`super::start`] does before it spawns an executor that can fail because of the
//! configuration, the environment or the host, in one place: [`prepare`]. `wgbroker check` runs
//! the same function, so what `run` refuses, `check` refuses too.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, ToSocketAddrs};
use std::sync::Arc;
use std::time::Instant;

use glommio::{LocalExecutorBuilder, Placement};

use super::error::{Cause, StartError};
use super::{placement, preflight, udp};
use crate::config::{Config, Loaded};
use crate::netstack::StackConfig;
use crate::tunnel::{IdleProbe, PeerSpec, PeerTable};

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

impl Purpose {
    /// What binding `what` came to: `Ok` when it is bound, or — for [`Purpose::Check`] — when it
    /// cannot be bound for now (in use, not assigned yet), which is then noted in `warnings`;
    /// [`StartError::Bind`] otherwise.
    pub fn bound(
        self,
        result: std::io::Result<()>,
        what: impl FnOnce() -> String,
        warnings: &mut Vec<StartError>,
    ) -> Result<(), StartError> {
        let Err(source) = result else { return Ok(()) };
        let e = StartError::Bind {
            what: what(),
            source,
        };
        if self == Purpose::Check && e.cause() == Cause::Temporary {
            warnings.push(e);
            return Ok(());
        }
        Err(e)
    }
}

/// Everything [`super::start`] does before it spawns an executor that can fail because of the
/// configuration, the environment or the host, done once, in one place:
///
/// 1. the host: the io_uring sysctl, the memlock limit, an io_uring executor ([`Cause::Host`]);
/// 2. the executor layout from `[runtime]` and the CPUs this process may use;
/// 3. each shard's stack configuration;
/// 4. the WireGuard peer table (duplicate keys, allowed IPs given to two peers, ...);
/// 5. the upstream TLS roots (`[upstream] ca_files` read and parsed) and the proxy settings
///    (`[upstream] proxy` or `HTTPS_PROXY`/`HTTP_PROXY`/`NO_PROXY` from the environment);
/// 6. the UDP socket bound to `[wireguard] listen_port`;
/// 7. the webhook listener bound to `[outbound] listen`.
///
/// (The admin listener is the application's: `service::prepare` binds it after this, with
/// [`Purpose::bound`].)
///
/// `wgbroker check` runs exactly this and drops the result (closing the sockets), so the unit's
/// `ExecStartPre=wgbroker check` refuses whatever `run` would refuse, with the same message and
/// status — except an address that cannot be bound for now, which `check` reports as a warning
/// ([`Purpose::Check`]).
pub fn prepare(loaded: &Loaded, purpose: Purpose) -> Result<Prepared, StartError> {
    let c = &loaded.config;
    host_can_run(c)?;
    let plan = placement::plan(&c.runtime, &placement::available_cpus())?;
    let shards = plan.shards.len();
    let stacks = stacks_per_shard(c, shards);
    let stack_configs: Vec<StackConfig> = (0..shards)
        .map(|i| stack_config(c, i, shards, stacks))
        .collect();
    for s in &stack_configs {
        s.validate()?;
    }
    let (udp, ipv6_socket, udp_shortfalls) = udp_socket(c)?;
    let mut table = PeerTable::new(
        &c.wireguard.private_key,
        peer_specs(c, ipv6_socket),
        Instant::now(),
    )?;
    // An idle tunnel is probed with an ICMP echo from our tunnel address, to the heartbeat's
    // host when a gateway's allowed IPs cover it (see `tunnel::IdleProbe`).
    table.set_idle_probe(Some(IdleProbe {
        from: c.wireguard.address,
        prefer: c.heartbeat.as_ref().map(|h| h.target.addr.ip()),
    }));
    let tls = crate::upstream::tls::client_config(&c.upstream).map_err(StartError::Upstream)?;
    let proxy = crate::upstream::proxy::ProxySettings::from_config(&c.upstream, &|k: &str| {
        std::env::var(k).ok()
    })
    .map_err(StartError::Upstream)?;
    let stream_settings = stream_settings(c).map_err(StartError::Upstream)?;

    let mut bind_warnings = Vec::new();
    let addr = udp_addr(c, ipv6_socket);
    purpose.bound(
        udp.bind(&addr.into()),
        || format!("UDP socket {addr} ([wireguard] listen_port)"),
        &mut bind_warnings,
    )?;
    let mut outbound_listener = None;
    if let Some(o) = &c.outbound {
        let bound = std::net::TcpListener::bind(o.listen);
        let result = bound
            .as_ref()
            .map(|_| ())
            .map_err(|e| std::io::Error::new(e.kind(), e.to_string()));
        purpose.bound(
            result,
            || format!("outbound listener {} ([outbound] listen)", o.listen),
            &mut bind_warnings,
        )?;
        outbound_listener = bound.ok();
    }
    Ok(Prepared {
        plan,
        stacks,
        stack_configs,
        table,
        udp,
        ipv6_socket,
        tls,
        proxy,
        stream_settings,
        udp_shortfalls,
        bind_warnings,
        outbound_listener,
    })
}

/// What the WireGuard stream transports connect with: the `tls` transport's client
/// configuration (system roots plus `[wireguard] ca_files`) and the proxy (`[wireguard] proxy`,
/// else the upstreams'). With `transport = "udp"` no stream is opened: nothing is read.
fn stream_settings(c: &crate::config::Config) -> Result<super::stream::StreamSettings, String> {
    let w = &c.wireguard;
    if !w.transport.uses_stream() {
        return Ok(super::stream::StreamSettings {
            tls: crate::upstream::tls::client_config_with_roots(
                rustls::RootCertStore::empty(),
                crate::config::TlsVersion::V1_3,
            )?,
            proxy: crate::upstream::proxy::ProxySettings::direct(),
        });
    }
    Ok(super::stream::StreamSettings {
        tls: crate::upstream::tls::stream_client_config(&w.ca_files)?,
        proxy: crate::upstream::proxy::ProxySettings::for_streams(
            w.proxy.as_deref(),
            &c.upstream,
            &|k: &str| std::env::var(k).ok(),
        )?,
    })
}

/// What [`prepare`] built: what [`super::start`] runs on, or what `check` reports and drops.
/// Dropping it closes the sockets.
pub struct Prepared {
    pub(super) plan: placement::Plan,
    pub(super) stacks: usize,
    pub(super) stack_configs: Vec<StackConfig>,
    pub(super) table: PeerTable,
    pub(super) udp: socket2::Socket,
    /// Whether `udp` is an IPv6 (dual-stack) socket.
    pub(super) ipv6_socket: bool,
    pub(super) tls: Arc<rustls::ClientConfig>,
    pub(super) proxy: crate::upstream::proxy::ProxySettings,
    /// The stream transports' TLS configuration and proxy.
    pub(super) stream_settings: super::stream::StreamSettings,
    /// UDP buffers the kernel grants below `[runtime]`'s request (a warning, not an error).
    pub udp_shortfalls: Vec<preflight::BufferShortfall>,
    /// Addresses that cannot be bound now, in use or not assigned ([`Purpose::Check`] only):
    /// each a [`StartError::Bind`].
    pub bind_warnings: Vec<StartError>,
    /// The `[outbound] listen` socket (kernel TCP), bound here so `check` refuses what `run`
    /// would; none without `[outbound]` (or, for `check`, when it is in use).
    pub(super) outbound_listener: Option<std::net::TcpListener>,
}

impl std::fmt::Debug for Prepared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Prepared")
            .field("plan", &self.plan)
            .field("stacks", &self.stacks)
            .field("udp", &self.udp)
            .field("proxy", &self.proxy)
            .field("udp_shortfalls", &self.udp_shortfalls)
            .field("bind_warnings", &self.bind_warnings)
            .finish_non_exhaustive()
    }
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

/// Each peer's stream transport, for the peers whose `[wireguard] transport` opens streams (none
/// with `udp`): what the tunnel core runs a supervisor for, at start and after a reload.
pub(super) fn stream_plans(c: &Config) -> Vec<(crate::keys::PublicKey, crate::config::StreamPlan)> {
    let transport = c.wireguard.transport;
    if !transport.uses_stream() {
        return Vec::new();
    }
    c.wireguard
        .peers
        .iter()
        .map(|p| (p.public_key, p.stream_plan(transport)))
        .collect()
}

pub(super) fn peer_specs(c: &Config, ipv6_socket: bool) -> Vec<PeerSpec> {
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

/// The netstack's controller for `[netstack] congestion`.
pub(super) fn algorithm(c: crate::config::Congestion) -> crate::netstack::tcp::Algorithm {
    match c {
        crate::config::Congestion::Cubic => crate::netstack::tcp::Algorithm::Cubic,
        crate::config::Congestion::NewReno => crate::netstack::tcp::Algorithm::NewReno,
        crate::config::Congestion::Bbr => crate::netstack::tcp::Algorithm::Bbr,
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
        ..with_netstack(&c.netstack, StackConfig::default())
    }
}

/// `stack` with `[netstack]`'s settings: the broker's shards and the gateway share them.
pub(crate) fn with_netstack(n: &crate::config::Netstack, stack: StackConfig) -> StackConfig {
    StackConfig {
        rx_buffer_max: n.rx_buffer_max,
        tx_buffer_max: n.tx_buffer_max,
        congestion: algorithm(n.congestion),
        ..stack
    }
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
    let io = |what: &str, source: std::io::Error| StartError::Os {
        what: what.to_owned(),
        source,
    };
    let (s, v6) = match Socket::new(Domain::IPV6, Type::DGRAM, Some(Protocol::UDP)) {
        Ok(s) => {
            s.set_only_v6(false)
                .map_err(|e| io("UDP socket: dual-stack", e))?;
            (s, true)
        }
        Err(e) if e.raw_os_error() == Some(libc::EAFNOSUPPORT) => {
            if let Some(p) = c
                .wireguard
                .peers
                .iter()
                .find(|p| p.endpoint.host.parse::<Ipv6Addr>().is_ok())
            {
                return Err(StartError::NoIpv6 {
                    endpoint: p.endpoint.to_string(),
                    source: e,
                });
            }
            tracing::info!(
                event = "wireguard.ipv4_only",
                "the host has no IPv6: gateways are reached over IPv4 only"
            );
            let s = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP))
                .map_err(|e| io("UDP socket: create", e))?;
            (s, false)
        }
        Err(e) => return Err(io("UDP socket: create", e)),
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
    s.set_nonblocking(true)
        .map_err(|e| io("UDP socket: nonblocking", e))?;
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
                        .map_err(std::io::Error::from)
                })
                .unwrap_or_else(|_| Err(std::io::Error::other("the io_uring set-up panicked")))
            }
        })
        .map_err(|source| StartError::Os {
            what: "cannot start a thread".into(),
            source,
        })?;
    let unavailable = |e| StartError::from(preflight::PreflightError::IoUringUnavailable(e));
    match probe.join() {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(unavailable(e)),
        Err(_) => Err(unavailable(std::io::Error::other("probe thread failed"))),
    }
}

/// The checks of the host alone: the io_uring sysctl, the memlock limit, and an io_uring
/// executor that can be built.
fn host_can_run(c: &Config) -> Result<(), StartError> {
    preflight::check_limits()?;
    probe_io_uring(c)
}
