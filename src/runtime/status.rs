//! What the executors publish for the control thread, tests and (later) metrics: a handful of
//! atomics written at most once per timer tick, never on the per-packet path.

use std::sync::atomic::{AtomicBool, AtomicU16, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// Broker status shared across threads.
#[derive(Debug)]
pub struct Status {
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
    /// Tunnel connections accepted by all shards.
    pub connections: AtomicU64,
    /// Requests answered by all shards.
    pub requests: AtomicU64,
    /// Heartbeats that succeeded / failed since start.
    pub heartbeats_ok: AtomicU64,
    pub heartbeats_failed: AtomicU64,
    /// Whether the newest heartbeat succeeded (true when no heartbeat is configured).
    pub heartbeat_passing: AtomicBool,
    /// Set once every executor has stopped.
    pub stopped: AtomicBool,
}

impl Default for Status {
    fn default() -> Self {
        Self::new()
    }
}

impl Status {
    /// A fresh status.
    pub fn new() -> Self {
        Self {
            started: Instant::now(),
            udp_port: AtomicU16::new(0),
            shards_ready: AtomicUsize::new(0),
            handshakes: AtomicU64::new(0),
            last_handshake_ms: AtomicU64::new(u64::MAX),
            datagrams_dropped: AtomicU64::new(0),
            oversize: AtomicU64::new(0),
            link_drops: AtomicU64::new(0),
            connections: AtomicU64::new(0),
            requests: AtomicU64::new(0),
            heartbeats_ok: AtomicU64::new(0),
            heartbeats_failed: AtomicU64::new(0),
            heartbeat_passing: AtomicBool::new(true),
            stopped: AtomicBool::new(false),
        }
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
