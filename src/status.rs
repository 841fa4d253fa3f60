//! What the executors publish for the control thread, the admin listener (`/metrics`, `/readyz`)
//! and tests: a handful of atomics written at most once per timer tick, never on the per-packet path.
//!
//! A leaf of the application: the runtime writes it, the service, the watchdog and the admin
//! listener read it, and none of them needs the others to do so.

use std::sync::atomic::{AtomicBool, AtomicU16, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

/// A configuration to swap into every shard (the parts that apply without a restart).
#[derive(Debug)]
pub struct ReloadPayload {
    /// Every rule in decision order; each shard compiles its own allowlist from them.
    pub rules: Vec<crate::allowlist::RuleSpec>,
    /// Secret values for the log scrubber.
    pub secrets: Vec<String>,
    /// `[inbound]` timeouts and limits, `[upstream] response_timeout`, `[log] body_limit`:
    /// connections opened from now on take them.
    pub server: crate::server::ServerConfig,
    /// New `[upstream]` settings (TLS built from its CA files, the proxy decided), when they
    /// changed: shards open new connections with them.
    pub upstream: Option<UpstreamReload>,
    /// The heartbeat to run from now on (`config: None`: none), when it changed.
    pub heartbeat: Option<HeartbeatReload>,
    /// `[netstack]`: tunnel connections opened from now on take it.
    pub netstack: crate::config::Netstack,
}

/// `[heartbeat]` as shard 0 applies it, with the TLS settings an `https://` one is verified with.
#[derive(Debug, Clone)]
pub struct HeartbeatReload {
    pub config: Option<crate::config::Heartbeat>,
    pub tls: Arc<rustls::ClientConfig>,
}

/// `[upstream]` as a shard applies it.
#[derive(Debug, Clone)]
pub struct UpstreamReload {
    pub config: crate::config::Upstream,
    pub tls: Arc<rustls::ClientConfig>,
    pub proxy: crate::upstream::proxy::ProxySettings,
}
use std::time::{Duration, Instant};

/// What a shard's tunnel TCP termination holds (connections by role, the size of its tables,
/// buffer memory, idle packet buffers) and what its connections counted so far. Within a second
/// or two of the last connection going every gauge is back to its value on a fresh broker
/// (nothing a burst made is kept), which `/metrics` shows.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct TunnelTables {
    /// Handshakes in progress.
    pub handshakes: usize,
    /// Accepted and client connections, `TIME-WAIT` included.
    pub connections: usize,
    /// Of those, in `TIME-WAIT`.
    pub time_wait: usize,
    /// Connection slab slots, empty ones included.
    pub socket_slots: usize,
    /// Entries the connection maps and timer heaps have room for.
    pub table_capacity: usize,
    /// Bytes the connections' send and receive buffers hold.
    pub buffer_bytes: usize,
    /// Packet buffers on the shard's free list.
    pub idle_buffers: usize,
    /// Counters of finished connections: retransmitted segments, of which found lost without a
    /// timeout, tail loss probes, of which repaired a loss, retransmission timeouts, of which
    /// found spurious and undone.
    pub retransmits: u64,
    pub fast_retransmits: u64,
    pub tail_loss_probes: u64,
    pub tlp_recoveries: u64,
    pub rtos: u64,
    pub spurious_rtos: u64,
    /// SYNs refused (stack full, backlog full, draining).
    pub syns_refused: u64,
}

impl TunnelTables {
    /// A shard's figures from its stacks, their counters and its packet pool.
    pub fn of(
        stacks: impl Iterator<Item = crate::netstack::StackStats>,
        counters: &crate::netstack::Counters,
        idle_buffers: usize,
    ) -> Self {
        let own = Self {
            idle_buffers,
            retransmits: counters.retransmits,
            fast_retransmits: counters.fast_retransmits,
            tail_loss_probes: counters.tail_loss_probes,
            tlp_recoveries: counters.tlp_recoveries,
            rtos: counters.rtos,
            spurious_rtos: counters.spurious_rtos,
            syns_refused: counters.syn_reset_full + counters.syn_backlog_full,
            ..Self::default()
        };
        stacks.map(Self::of_stack).fold(own, |t, s| t.plus(&s))
    }

    /// One stack's figures under this struct's names (`slots` is `socket_slots`).
    fn of_stack(s: crate::netstack::StackStats) -> Self {
        Self {
            handshakes: s.handshakes,
            connections: s.connections,
            time_wait: s.time_wait,
            socket_slots: s.slots,
            table_capacity: s.table_capacity,
            buffer_bytes: s.buffer_bytes,
            ..Self::default()
        }
    }

    fn plus(&self, o: &Self) -> Self {
        Self {
            handshakes: self.handshakes + o.handshakes,
            connections: self.connections + o.connections,
            time_wait: self.time_wait + o.time_wait,
            socket_slots: self.socket_slots + o.socket_slots,
            table_capacity: self.table_capacity + o.table_capacity,
            buffer_bytes: self.buffer_bytes + o.buffer_bytes,
            idle_buffers: self.idle_buffers + o.idle_buffers,
            retransmits: self.retransmits + o.retransmits,
            fast_retransmits: self.fast_retransmits + o.fast_retransmits,
            tail_loss_probes: self.tail_loss_probes + o.tail_loss_probes,
            tlp_recoveries: self.tlp_recoveries + o.tlp_recoveries,
            rtos: self.rtos + o.rtos,
            spurious_rtos: self.spurious_rtos + o.spurious_rtos,
            syns_refused: self.syns_refused + o.syns_refused,
        }
    }
}

/// Broker status shared across threads.
#[derive(Debug)]
pub struct Status {
    /// The webhook relay's counters and spool gauges (set once at start, with `[outbound]`).
    pub outbound: std::sync::OnceLock<Arc<crate::relay::intake::Stats>>,
    started: Instant,
    /// Local UDP port of the tunnel socket (0 until bound).
    pub udp_port: AtomicU16,
    /// Shards that have their listeners armed.
    pub shards_ready: AtomicUsize,
    /// Handshakes completed with any peer.
    pub handshakes: AtomicU64,
    /// Milliseconds since start of the newest handshake, `u64::MAX` = none yet.
    last_handshake_ms: AtomicU64,
    /// Datagrams dropped by the peer table (garbage, replays, bad source, ...).
    pub datagrams_dropped: AtomicU64,
    /// Datagrams larger than the tunnel MTU allows, dropped unread.
    pub oversize: AtomicU64,
    /// Decrypted packets dropped because a shard's link was full.
    pub link_drops: AtomicU64,
    /// `recvmmsg` calls that returned datagrams, `sendmmsg` batches sent, and datagrams the
    /// kernel refused with a hard error (datagrams per batch = datagrams / batches); counted on
    /// the tunnel core and published with its 100 ms timer tick.
    pub rx_batches: AtomicU64,
    pub tx_batches: AtomicU64,
    pub send_errors: AtomicU64,
    /// WireGuard peers of the tunnel core (set at start).
    pub peers: AtomicU64,
    /// Peers whose datagrams travel on a stream now, TCP or TLS (the rest use UDP).
    pub stream_peers: AtomicU64,
    /// Of `stream_peers`, those on a TLS stream.
    pub tls_peers: AtomicU64,
    /// Carrier changes, by [`crate::transport::SwitchReason`] (index).
    pub transport_switches: [AtomicU64; crate::transport::SwitchReason::ALL.len()],
    /// Frames dropped because a stream's send queue was full.
    pub stream_queue_drops: AtomicU64,
    /// Tunnel connections accepted by all shards.
    pub connections: AtomicU64,
    /// Requests answered, per shard (each shard publishes its own count with its beat).
    shard_requests: Vec<AtomicU64>,
    /// Dead WireGuard sessions re-established with a fresh handshake, by what noticed them
    /// (nothing answered for 2 s / a failed heartbeat); counted by the tunnel core.
    pub session_restarts_no_reply: AtomicU64,
    pub session_restarts_heartbeat: AtomicU64,
    /// Fresh handshakes sent to probe a session that looked dead (most answered at once).
    pub liveness_probes: AtomicU64,
    /// ICMP echoes sent to probe an idle tunnel, and the answers to them.
    pub idle_probes: AtomicU64,
    pub idle_probe_replies: AtomicU64,
    /// Heartbeats that succeeded / failed since start.
    pub heartbeats_ok: AtomicU64,
    pub heartbeats_failed: AtomicU64,
    /// Whether the newest heartbeat succeeded (true when no heartbeat is configured).
    pub heartbeat_passing: AtomicBool,
    /// Why the newest heartbeat failed (shown by `/readyz`); written once per heartbeat.
    heartbeat_failure: Mutex<String>,
    /// Set once every executor has stopped.
    pub stopped: AtomicBool,
    /// Port of the admin listener (0 when disabled or not bound).
    pub admin_port: AtomicU16,
    /// Port of the `[outbound]` webhook listener (0 when none).
    pub outbound_port: AtomicU16,
    /// Set to drain: shards stop accepting, idle connections close, busy ones finish.
    pub draining: AtomicBool,
    /// Open tunnel connections per shard (published when one opens or closes).
    shard_active: Vec<AtomicU64>,
    /// Bumped by [`Status::publish_reload`]; shards compare it once per driver iteration.
    reload_generation: AtomicU64,
    reload_payload: Mutex<Option<Arc<ReloadPayload>>>,
    /// New peers for the tunnel core (a reload changed `[[wireguard.peers]]`), taken by its
    /// timer tick.
    pending_peers: Mutex<Option<PendingPeers>>,
    /// The reload generation each shard has applied.
    reload_applied: Vec<AtomicU64>,
    /// Each shard's server counters, copied in with its beat (~100 ms) and merged at scrape.
    shard_stats: Vec<Mutex<crate::server::ServerStats>>,
    /// What each shard's tunnel TCP termination holds, copied in with its beat.
    shard_tables: Vec<Mutex<TunnelTables>>,
    /// One progress counter per executor role (index 0: tunnel core, 1..: shards), bumped about
    /// every 100 ms by each executor's loop; the watchdog feeds systemd only while all advance.
    beats: Vec<AtomicU64>,
}

impl Default for Status {
    fn default() -> Self {
        Self::new(1)
    }
}

/// A reload's `[[wireguard.peers]]` for the tunnel core: the peer table's specs and, apart (the
/// table stays transport-agnostic), the stream transport of each peer that uses one.
#[derive(Debug)]
pub struct PendingPeers {
    pub specs: Vec<crate::tunnel::PeerSpec>,
    /// `(peer, plan)` for every peer whose transport opens streams (none with `udp`).
    pub streams: Vec<(crate::keys::PublicKey, crate::config::StreamPlan)>,
}

impl Status {
    /// A fresh status for a tunnel core and `shards` shards.
    pub fn new(shards: usize) -> Self {
        Self {
            outbound: std::sync::OnceLock::new(),
            beats: (0..=shards).map(|_| AtomicU64::new(0)).collect(),
            started: Instant::now(),
            udp_port: AtomicU16::new(0),
            shards_ready: AtomicUsize::new(0),
            handshakes: AtomicU64::new(0),
            last_handshake_ms: AtomicU64::new(u64::MAX),
            datagrams_dropped: AtomicU64::new(0),
            oversize: AtomicU64::new(0),
            link_drops: AtomicU64::new(0),
            rx_batches: AtomicU64::new(0),
            tx_batches: AtomicU64::new(0),
            send_errors: AtomicU64::new(0),
            peers: AtomicU64::new(0),
            stream_peers: AtomicU64::new(0),
            tls_peers: AtomicU64::new(0),
            transport_switches: Default::default(),
            stream_queue_drops: AtomicU64::new(0),
            connections: AtomicU64::new(0),
            shard_requests: (0..shards).map(|_| AtomicU64::new(0)).collect(),
            session_restarts_no_reply: AtomicU64::new(0),
            session_restarts_heartbeat: AtomicU64::new(0),
            liveness_probes: AtomicU64::new(0),
            idle_probes: AtomicU64::new(0),
            idle_probe_replies: AtomicU64::new(0),
            heartbeats_ok: AtomicU64::new(0),
            heartbeats_failed: AtomicU64::new(0),
            heartbeat_passing: AtomicBool::new(true),
            heartbeat_failure: Mutex::new(String::new()),
            stopped: AtomicBool::new(false),
            admin_port: AtomicU16::new(0),
            outbound_port: AtomicU16::new(0),
            draining: AtomicBool::new(false),
            shard_active: (0..shards).map(|_| AtomicU64::new(0)).collect(),
            reload_generation: AtomicU64::new(0),
            pending_peers: Mutex::new(None),
            reload_payload: Mutex::new(None),
            reload_applied: (0..shards).map(|_| AtomicU64::new(0)).collect(),
            shard_stats: (0..shards)
                .map(|_| Mutex::new(Default::default()))
                .collect(),
            shard_tables: (0..shards)
                .map(|_| Mutex::new(Default::default()))
                .collect(),
        }
    }

    /// Executor `i` made progress (0 = tunnel core, 1.. = shards).
    pub fn beat(&self, i: usize) {
        if let Some(b) = self.beats.get(i) {
            b.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Shard `shard` has answered `n` requests in all.
    pub fn set_requests(&self, shard: usize, n: u64) {
        store(&self.shard_requests, shard, n);
    }

    /// Shard `shard` publishes its server counters (once per beat, not per request).
    pub fn set_shard_stats(&self, shard: usize, stats: &crate::server::ServerStats) {
        if let Some(slot) = self.shard_stats.get(shard) {
            if let Ok(mut s) = slot.lock() {
                s.clone_from(stats);
            }
        }
    }

    /// The server counters of every shard, as of their last beat.
    pub fn shard_stats(&self) -> Vec<crate::server::ServerStats> {
        self.shard_stats
            .iter()
            .map(|s| s.lock().map(|g| g.clone()).unwrap_or_default())
            .collect()
    }

    /// Shard `shard` publishes what its stacks and packet pool hold (once per beat).
    pub fn set_shard_tables(&self, shard: usize, tables: TunnelTables) {
        if let Some(slot) = self.shard_tables.get(shard) {
            if let Ok(mut t) = slot.lock() {
                *t = tables;
            }
        }
    }

    /// What every shard's stacks and packet pool hold, summed, as of their last beat.
    pub fn tunnel_tables(&self) -> TunnelTables {
        self.shard_tables
            .iter()
            .filter_map(|t| t.lock().ok().map(|g| *g))
            .fold(TunnelTables::default(), |a, b| a.plus(&b))
    }

    /// Leaves new peers for the tunnel core (the latest wins if it has not taken the last).
    pub fn set_pending_peers(&self, peers: PendingPeers) {
        if let Ok(mut p) = self.pending_peers.lock() {
            *p = Some(peers);
        }
    }

    /// The peers a reload left for the tunnel core, once.
    pub fn take_pending_peers(&self) -> Option<PendingPeers> {
        self.pending_peers.lock().ok()?.take()
    }

    /// Offers a new configuration to every shard; returns its generation.
    pub fn publish_reload(&self, payload: ReloadPayload) -> u64 {
        if let Ok(mut slot) = self.reload_payload.lock() {
            *slot = Some(Arc::new(payload));
        }
        self.reload_generation.fetch_add(1, Ordering::Release) + 1
    }

    /// The newest reload generation (0: none).
    pub fn reload_generation(&self) -> u64 {
        self.reload_generation.load(Ordering::Acquire)
    }

    /// The newest reload payload.
    pub fn reload_payload(&self) -> Option<Arc<ReloadPayload>> {
        self.reload_payload.lock().ok().and_then(|p| p.clone())
    }

    /// Shard `shard` has applied generation `generation`.
    pub fn ack_reload(&self, shard: usize, generation: u64) {
        if let Some(a) = self.reload_applied.get(shard) {
            a.store(generation, Ordering::Release);
        }
    }

    /// Whether every shard applied generation `generation` (or a newer one).
    pub fn reload_applied(&self, generation: u64) -> bool {
        self.reload_applied
            .iter()
            .all(|a| a.load(Ordering::Acquire) >= generation)
    }

    /// Shard `shard` has `n` open connections.
    pub fn set_active(&self, shard: usize, n: u64) {
        store(&self.shard_active, shard, n);
    }

    /// Open tunnel connections across shards.
    pub fn active_connections(&self) -> u64 {
        loads(&self.shard_active).sum()
    }

    /// Requests answered per shard (as of their last beat).
    pub fn requests_per_shard(&self) -> Vec<u64> {
        loads(&self.shard_requests).collect()
    }

    /// Requests answered by all shards (as of their last beat).
    pub fn requests(&self) -> u64 {
        loads(&self.shard_requests).sum()
    }

    /// The progress counters, in executor order.
    pub fn beats(&self) -> Vec<u64> {
        loads(&self.beats).collect()
    }

    /// The heartbeat failed (or has not passed yet) for `reason`.
    pub fn set_heartbeat_failing(&self, reason: &str) {
        if let Ok(mut r) = self.heartbeat_failure.lock() {
            reason.clone_into(&mut r);
        }
        self.heartbeat_passing.store(false, Ordering::Relaxed);
    }

    /// Why the heartbeat is failing (empty when it passes or none is configured).
    pub fn heartbeat_failure(&self) -> String {
        if self.heartbeat_passing.load(Ordering::Relaxed) {
            return String::new();
        }
        self.heartbeat_failure
            .lock()
            .map(|r| r.clone())
            .unwrap_or_default()
    }

    /// Records a handshake completed at `at`.
    pub fn set_last_handshake(&self, at: Instant) {
        let ms = at.saturating_duration_since(self.started).as_millis();
        self.last_handshake_ms
            .store(u64::try_from(ms).unwrap_or(u64::MAX - 1), Ordering::Relaxed);
    }

    /// Age of the newest handshake, if any.
    pub fn handshake_age(&self) -> Option<Duration> {
        match self.last_handshake_ms.load(Ordering::Relaxed) {
            u64::MAX => None,
            ms => Some(
                self.started
                    .elapsed()
                    .saturating_sub(Duration::from_millis(ms)),
            ),
        }
    }
}

/// Every per-executor counter of `cells`, in order (written once per beat; `Relaxed` is enough
/// for figures that are read as a snapshot).
fn loads(cells: &[AtomicU64]) -> impl Iterator<Item = u64> + '_ {
    cells.iter().map(|c| c.load(Ordering::Relaxed))
}

/// Sets executor `i`'s counter in `cells`; an index out of range is ignored.
fn store(cells: &[AtomicU64], i: usize, n: u64) {
    if let Some(c) = cells.get(i) {
        c.store(n, Ordering::Relaxed);
    }
}
