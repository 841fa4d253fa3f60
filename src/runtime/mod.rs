//! The runtime seam: the only module that imports glommio.
//!
//! It owns threads, CPU placement, io_uring rings, the UDP socket and the links between
//! executors; it drives the sans-IO cores ([`crate::tunnel`], [`crate::netstack`]) and runs the
//! in-tunnel HTTP server's connection tasks ([`crate::server`]: async code over any
//! `AsyncRead + AsyncWrite` and a timer, which the runtime supplies):
//!
//! * the **tunnel core** executor (pinned) owns the UDP socket and the
//!   [`PeerTable`](crate::tunnel::PeerTable);
//! * one **shard** executor per remaining CPU owns a [`StackSet`](crate::netstack::StackSet)
//!   and the connection tasks;
//! * with one or two CPUs, both run on one executor, linked by local channels;
//! * the caller's thread is the control thread: it owns signals (glommio has none) and stops the
//!   executors through [`BrokerHandle::stop`].
//!
//! It knows nothing of the application around it: the admin listener, signals, systemd and
//! reloads are [`crate::service`]'s.
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
//!
//! | file | where it happens |
//! |---|---|
//! | `mod.rs` | [`start`]: the seeds, the two executor layouts; [`BrokerHandle`]: stop, reload, drain |
//! | `prepare.rs` | [`prepare`]: everything that can fail before an executor runs (`check` too) |
//! | `error.rs` | [`StartError`] and its [`Cause`] (the exit status), [`ExecutorError`] |
//! | `barrier.rs` | the start barrier: each executor reports that it runs, or why not |
//! | `shard.rs` | a shard: built by `shard::start` in either layout; its driver, ingress, connections, heartbeat |
//! | `tunnel_core.rs` | the tunnel core: built by `tunnel_core::start` in either layout; receive, egress, timers |
//! | `link.rs` | packet channels between the tunnel core and the shards (local or cross-executor) |
//! | `udp.rs` | batched UDP I/O: `recvmmsg`, `sendmmsg`, GSO |
//! | `placement.rs` | which executor runs on which CPU, combined or split |
//! | `preflight.rs` | io_uring and memlock checks, UDP buffer caps |
//! | `gateway.rs` | `wgbroker gateway`: one executor with the tunnel to every broker, the front door, health checks |
//! | `upstream.rs` | a shard's upstream connections: DNS, dialling, TLS, pools |
//! | `outbound.rs` | the webhook relay: its listener executor, the deliveries on shard 0 |

pub mod alloc;
mod barrier;
mod error;
pub mod gateway;
pub(crate) mod link;
mod outbound;
pub mod placement;
pub mod preflight;
mod prepare;
mod shard;
mod stream;
mod tunnel_core;
mod tunnel_stream;
pub(crate) mod udp;
pub mod upstream;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use glommio::{ExecutorJoinHandle, LocalExecutorBuilder, Placement};

pub use barrier::START_TIMEOUT;
pub use error::{Cause, ExecutorError, ExecutorFailed, ReloadTimedOut, StartError};
pub use prepare::{Prepared, Purpose, prepare};

use crate::config::{Config, Loaded};
use crate::netstack::StackConfig;
use crate::server::ServerConfig;
use crate::status::{self, Status};
use barrier::{Barrier, until_stopped};
use shard::{HeartbeatTarget, ShardSeed};
use tunnel_core::CoreSeed;

/// A running broker.
#[derive(Debug)]
pub struct BrokerHandle {
    stop: Arc<AtomicBool>,
    status: Arc<Status>,
    /// The `[upstream]` the shards run with and its CA files' contents, to tell whether a
    /// reload changes it (a CA file may change under the same path).
    upstream: std::sync::Mutex<(crate::config::Upstream, Vec<Vec<u8>>)>,
    /// The `[heartbeat]` shard 0 runs, and the TLS settings an `https://` one is verified with.
    heartbeat: std::sync::Mutex<(Option<crate::config::Heartbeat>, Arc<rustls::ClientConfig>)>,
    /// The `[[wireguard.peers]]` the tunnel core runs, to tell whether a reload changes them,
    /// and whether the UDP socket is dual-stack (how their endpoints are resolved).
    peers: std::sync::Mutex<Vec<crate::config::Peer>>,
    ipv6_socket: bool,
    /// The webhook relay's state, when `[outbound]` is configured (a reload swaps its relays).
    outbound: Option<Arc<outbound::Shared>>,
    /// Each executor by its thread name.
    joins: Vec<(String, ExecutorJoinHandle<()>)>,
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

    /// Waits for every executor to finish; the first that ended with an error, if any.
    pub fn join(self) -> Result<(), ExecutorFailed> {
        let mut first_err = None;
        for (name, j) in self.joins {
            if let Err(e) = j.join() {
                first_err.get_or_insert_with(|| ExecutorFailed {
                    name,
                    source: std::io::Error::from(e),
                });
            }
        }
        self.status.stopped.store(true, Ordering::Relaxed);
        first_err.map_or(Ok(()), Err)
    }

    /// Swaps the allowlist, the log scrubber and (when it changed, CA file contents included)
    /// `[upstream]` of `loaded` into every shard at a safe point, without touching the tunnel
    /// or open connections; waits (up to 2 s) until every shard runs it. Upstream settings that
    /// cannot be built (an unreadable CA file) stay as they were, logged as an error; see
    /// [`crate::config::reload`] for what needs a restart.
    pub fn reload(&self, loaded: &Loaded) -> Result<(), ReloadTimedOut> {
        const WITHIN: Duration = Duration::from_secs(2);
        let c = &loaded.config;
        let upstream = self.upstream_change(&c.upstream);
        let heartbeat = self.heartbeat_change(c.heartbeat.as_ref(), upstream.as_ref());
        self.peers_change(c);
        if let Some(o) = &self.outbound {
            if let Err(e) = o.reload(c, upstream.as_ref().map(|u| u.tls.clone())) {
                tracing::error!(event = "relay.reload_failed", error = %e, "the webhook relays stay as they were");
            }
        }
        let generation = self.status.publish_reload(status::ReloadPayload {
            rules: c.rules(),
            secrets: ServerConfig::secrets(c),
            server: ServerConfig::from_config(c),
            upstream,
            heartbeat,
            netstack: c.netstack.clone(),
        });
        let until = Instant::now() + WITHIN;
        while !self.status.reload_applied(generation) {
            if Instant::now() >= until {
                return Err(ReloadTimedOut { within: WITHIN });
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        Ok(())
    }

    /// Hands the tunnel core the new `[[wireguard.peers]]` when they changed (names resolved
    /// here, on the control thread); it applies them at its next timer tick (~100 ms) with
    /// [`crate::tunnel::PeerTable::reconfigure`], keeping the session of every peer it keeps,
    /// and makes each peer's stream supervisor follow its new stream plan (started for an added
    /// peer, stopped for a removed one, restarted for a changed one; see `stream::follow`).
    fn peers_change(&self, c: &Config) {
        let Ok(mut current) = self.peers.lock() else {
            return;
        };
        if *current == c.wireguard.peers {
            return;
        }
        *current = c.wireguard.peers.clone();
        self.status.set_pending_peers(status::PendingPeers {
            specs: prepare::peer_specs(c, self.ipv6_socket),
            streams: prepare::stream_plans(c),
        });
    }

    /// The heartbeat to run from now on, when it (or the TLS settings it is verified with)
    /// changed; the readiness it reports follows: a new heartbeat is failing until it passes, a
    /// removed one no longer holds readiness back.
    fn heartbeat_change(
        &self,
        new: Option<&crate::config::Heartbeat>,
        upstream: Option<&status::UpstreamReload>,
    ) -> Option<status::HeartbeatReload> {
        let mut current = self.heartbeat.lock().ok()?;
        let tls_changed = upstream.is_some();
        if let Some(u) = upstream {
            current.1 = u.tls.clone();
        }
        if current.0.as_ref() == new && !tls_changed {
            return None;
        }
        match (current.0.is_some(), new.is_some()) {
            (_, true) if current.0.as_ref() != new => self
                .status
                .set_heartbeat_failing("no heartbeat has completed yet"),
            (true, false) => self.status.heartbeat_passing.store(true, Ordering::Relaxed),
            _ => {}
        }
        current.0 = new.cloned();
        Some(status::HeartbeatReload {
            config: new.cloned(),
            tls: current.1.clone(),
        })
    }

    /// `new` as the shards apply it, when it differs from what they run (recorded as theirs).
    fn upstream_change(&self, new: &crate::config::Upstream) -> Option<status::UpstreamReload> {
        let cas = ca_contents(new);
        let mut current = self.upstream.lock().ok()?;
        if current.0 == *new && current.1 == cas {
            return None;
        }
        let built = crate::upstream::tls::client_config(new).and_then(|tls| {
            crate::upstream::proxy::ProxySettings::from_config(new, &|k: &str| {
                std::env::var(k).ok()
            })
            .map(|proxy| (tls, proxy))
        });
        match built {
            Ok((tls, proxy)) => {
                *current = (new.clone(), cas);
                Some(status::UpstreamReload {
                    config: new.clone(),
                    tls,
                    proxy,
                })
            }
            Err(e) => {
                tracing::error!(event = "config.reload", section = "upstream", error = %e, "kept the running [upstream] settings");
                None
            }
        }
    }

    /// Drains: stops accepting tunnel connections, closes idle ones, lets in-flight exchanges
    /// finish until every connection is gone or `deadline` passes, then stops and waits.
    /// Returns how many connections were still open at the deadline.
    pub fn drain(self, deadline: Duration) -> Result<u64, ExecutorFailed> {
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
    pub fn shutdown(self) -> Result<(), ExecutorFailed> {
        self.stop();
        self.join()
    }
}

/// The contents of `[upstream] ca_files` (empty for one that cannot be read: building the TLS
/// settings reports it).
fn ca_contents(u: &crate::config::Upstream) -> Vec<Vec<u8>> {
    u.ca_files
        .iter()
        .map(|f| std::fs::read(f).unwrap_or_default())
        .collect()
}

/// Starts the broker described by `loaded` on what [`prepare`] made of it; returns once every
/// executor is running (its state built, its listeners armed). An executor that cannot start
/// fails the whole start with its error ([`StartError::Executor`]), after the others have been
/// stopped.
pub fn start(loaded: &Loaded, prepared: Prepared) -> Result<BrokerHandle, StartError> {
    let c = &loaded.config;
    let Prepared {
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
        bind_warnings: _,
        outbound_listener,
    } = prepared;
    log_host_notes(&udp_shortfalls);
    let status = Arc::new(Status::new(plan.shards.len()));
    if let Some(a) = udp.local_addr().ok().and_then(|a| a.as_socket()) {
        status.udp_port.store(a.port(), Ordering::Relaxed);
    }
    let heartbeat = c
        .heartbeat
        .as_ref()
        .map(|hb| HeartbeatTarget::from_config(hb, &tls));
    if heartbeat.is_some() {
        status.set_heartbeat_failing("no heartbeat has completed yet");
    }
    let outbound = match &c.outbound {
        Some(o) => Some(outbound::open(c, o, &tls)?),
        None => None,
    };
    if let Some(o) = &outbound {
        let _ = status.outbound.set(o.stats.clone());
    }
    let mut seeds = shard_seeds(c, stack_configs, &tls, &proxy, heartbeat);
    if let Some(first) = seeds.first_mut() {
        first.outbound = outbound.clone();
    }
    let core = CoreSeed {
        table,
        udp,
        shards: plan.shards.len(),
        stacks,
        buf_capacity: buf_capacity(c.wireguard.mtu),
        gso: c.runtime.udp_gso,
        ipv6_socket,
        streams: prepare::stream_plans(c),
        stream_settings,
    };
    let stop = Arc::new(AtomicBool::new(false));
    let layout = Layout {
        config: c,
        status: status.clone(),
        stop: stop.clone(),
    };
    // Every executor reports to the barrier once it runs (or why it does not).
    let mut barrier = Barrier::new(stop.clone());
    if plan.combined {
        layout.combined(&mut barrier, plan.tunnel_cpu, seeds, core)?;
    } else {
        layout.split(&mut barrier, &plan, seeds, core)?;
    }
    if let (Some(shared), Some(listener)) = (outbound.clone(), outbound_listener) {
        if let Ok(a) = listener.local_addr() {
            status.outbound_port.store(a.port(), Ordering::Relaxed);
            tracing::info!(event = "relay.listening", addr = %a, relays = shared.stats.relays().len());
        }
        layout.outbound(&mut barrier, listener, shared)?;
    }
    let joins = barrier.wait_running(START_TIMEOUT)?;
    Ok(BrokerHandle {
        stop,
        status,
        upstream: std::sync::Mutex::new((c.upstream.clone(), ca_contents(&c.upstream))),
        heartbeat: std::sync::Mutex::new((c.heartbeat.clone(), tls.clone())),
        peers: std::sync::Mutex::new(c.wireguard.peers.clone()),
        ipv6_socket,
        outbound,
        joins,
    })
}

/// What the host grants below the configuration's request: logged, not fatal.
fn log_host_notes(udp_shortfalls: &[preflight::BufferShortfall]) {
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
}

/// One [`ShardSeed`] per stack configuration (one per shard); shard 0 runs the heartbeat.
fn shard_seeds(
    c: &Config,
    stack_configs: Vec<StackConfig>,
    tls: &Arc<rustls::ClientConfig>,
    proxy: &crate::upstream::proxy::ProxySettings,
    heartbeat: Option<HeartbeatTarget>,
) -> Vec<ShardSeed> {
    let id_prefix = random_u64() as u32;
    let server = ServerConfig::from_config(c);
    let rules = c.rules();
    let secrets = ServerConfig::secrets(c);
    let scrubber = crate::server::scrub::Scrubber::new(secrets.iter().map(String::as_str));
    let mut heartbeat = heartbeat;
    stack_configs
        .into_iter()
        .enumerate()
        .map(|(index, stack)| ShardSeed {
            index,
            rules: rules.clone(),
            upstream: c.upstream.clone(),
            scrubber: scrubber.clone(),
            tls: tls.clone(),
            proxy: proxy.clone(),
            stack,
            server,
            seed: random_u64(),
            id_prefix,
            buf_capacity: buf_capacity(c.wireguard.mtu),
            heartbeat: heartbeat.take(),
            runs_heartbeat: index == 0,
            outbound: None,
        })
        .collect()
}

/// The executor of the combined layout (tunnel core and shard), and the tunnel core's in the
/// split layout; shards are `wgbroker-shard<i>`.
const CORE_EXECUTOR: &str = "wgbroker-core";
const TUNNEL_EXECUTOR: &str = "wgbroker-tunnel";

/// The two executor layouts [`placement::plan`] chooses between. Each executor starts the same
/// way: its links, then [`shard::start`] or [`tunnel_core::start`] (or both), then it reports to
/// the barrier that it runs and runs until `stop`.
struct Layout<'a> {
    config: &'a Config,
    status: Arc<Status>,
    stop: Arc<AtomicBool>,
}

impl Layout<'_> {
    fn builder(&self, cpu: Option<usize>) -> LocalExecutorBuilder {
        let rt = &self.config.runtime;
        let placement = match cpu {
            Some(cpu) => Placement::Fixed(cpu),
            None => Placement::Unbound,
        };
        LocalExecutorBuilder::new(placement)
            .ring_depth(rt.ring_depth)
            .io_memory(rt.io_memory)
            .spin_before_park(rt.spin_before_park)
            .preempt_timer(rt.preempt_timer)
    }

    /// One executor (on one or two CPUs): the tunnel core and the shard (every shard the plan
    /// has: one), linked by local channels — no cross-core wake-ups (see [`placement`]).
    fn combined(
        &self,
        barrier: &mut Barrier,
        cpu: Option<usize>,
        seeds: Vec<ShardSeed>,
        core: CoreSeed,
    ) -> Result<(), StartError> {
        let (status, stop) = (self.status.clone(), self.stop.clone());
        let capacity = self.config.runtime.channel_capacity;
        barrier.spawn(CORE_EXECUTOR, self.builder(cpu), move |rep| async move {
            let (mut to_shards, mut from_shards) = (Vec::new(), Vec::new());
            let mut drivers = Vec::new();
            for seed in seeds {
                let (to_shard, from_tunnel) = link::local(capacity);
                let (to_tunnel, from_shard) = link::local(capacity);
                match shard::start(seed, to_tunnel, from_tunnel, &status, &stop) {
                    Ok(driver) => drivers.push(driver),
                    Err(e) => return rep.failed(e),
                }
                to_shards.push(to_shard);
                from_shards.push(from_shard);
            }
            if !run_core(rep, core, to_shards, from_shards, status, stop).await {
                return;
            }
            for driver in drivers {
                driver.await;
            }
        })
    }

    /// The tunnel core on its executor, one executor per shard, linked by cross-executor
    /// channels that each side connects on its own executor.
    fn split(
        &self,
        barrier: &mut Barrier,
        plan: &placement::Plan,
        seeds: Vec<ShardSeed>,
        core: CoreSeed,
    ) -> Result<(), StartError> {
        let capacity = self.config.runtime.channel_capacity;
        let mut core_ends = Vec::with_capacity(seeds.len());
        for (seed, cpu) in seeds.into_iter().zip(plan.shards.iter().copied()) {
            let (to_shard, from_tunnel) = link::shared(capacity);
            let (to_tunnel, from_shard) = link::shared(capacity);
            core_ends.push((to_shard, from_shard));
            let (status, stop) = (self.status.clone(), self.stop.clone());
            let name = format!("wgbroker-shard{}", seed.index);
            barrier.spawn(&name, self.builder(cpu), move |rep| async move {
                // Both directions at once: a connect waits for its peer end (or for the
                // barrier to give up when the tunnel executor never comes).
                let links = futures_lite::future::zip(to_tunnel.connect(), from_tunnel.connect());
                let Some((to_tunnel, from_tunnel)) = until_stopped(links, &stop).await else {
                    return; // the start failed elsewhere; `rep` reports on drop
                };
                match shard::start(seed, to_tunnel, from_tunnel, &status, &stop) {
                    Ok(driver) => {
                        rep.ready();
                        driver.await;
                    }
                    Err(e) => rep.failed(e),
                }
            })?;
        }
        let (status, stop) = (self.status.clone(), self.stop.clone());
        barrier.spawn(
            TUNNEL_EXECUTOR,
            self.builder(plan.tunnel_cpu),
            move |rep| async move {
                let (mut to_shards, mut from_shards) = (Vec::new(), Vec::new());
                for (tx, rx) in core_ends {
                    let links = futures_lite::future::zip(tx.connect(), rx.connect());
                    let Some((tx, rx)) = until_stopped(links, &stop).await else {
                        return; // the start failed elsewhere; `rep` reports on drop
                    };
                    to_shards.push(tx);
                    from_shards.push(rx);
                }
                run_core(rep, core, to_shards, from_shards, status, stop).await;
            },
        )
    }
}

/// Runs the tunnel core on the current executor, linked to the shards: reports `rep` ready once
/// the core runs, then drives its timers until the broker stops. `false` when it was stopped
/// before it ran (the start failed elsewhere; `rep` reports that on drop).
async fn run_core(
    rep: barrier::StartReport,
    core: CoreSeed,
    to_shards: Vec<link::Tx>,
    from_shards: Vec<link::Rx>,
    status: Arc<Status>,
    stop: Arc<AtomicBool>,
) -> bool {
    let Some(timers) = tunnel_core::start(core, to_shards, from_shards, status, stop).await else {
        return false;
    };
    rep.ready();
    timers.await;
    true
}

impl Layout<'_> {
    /// The webhook listener's executor (unpinned: it waits on the SCM and on `fsync`, and must
    /// never take a CPU from the data plane).
    fn outbound(
        &self,
        barrier: &mut Barrier,
        listener: std::net::TcpListener,
        shared: Arc<outbound::Shared>,
    ) -> Result<(), StartError> {
        let stop = self.stop.clone();
        barrier.spawn(
            OUTBOUND_EXECUTOR,
            self.builder(None),
            move |rep| async move {
                let listener = match outbound::listener(listener) {
                    Ok(l) => l,
                    Err(e) => return rep.failed(ExecutorError::Os(e)),
                };
                rep.ready();
                outbound::serve(listener, shared, stop).await;
            },
        )
    }
}

/// The webhook listener's executor.
const OUTBOUND_EXECUTOR: &str = "wgbroker-outbound";

/// Packet buffer capacity: the MTU rounded up, plus WireGuard's overhead so a buffer can hold a
/// datagram being decrypted in place.
fn buf_capacity(mtu: u16) -> usize {
    (usize::from(mtu) + crate::tunnel::DATA_OVERHEAD + 63) & !63
}

fn random_u64() -> u64 {
    let mut b = [0u8; 8];
    let _ = getrandom::fill(&mut b);
    u64::from_le_bytes(b)
}
