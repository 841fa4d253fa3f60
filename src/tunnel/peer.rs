//! One peer: its boringtun [`Tunn`], where to reach it, and the bookkeeping boringtun does not do
//! (handshake attempts in a row, DNS re-resolution throttle, traffic counters).

use std::fmt;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use boringtun::noise::Tunn;

use super::{PeerStatus, RESOLVE_AFTER_FAILED_HANDSHAKES, RESOLVE_INTERVAL};
use crate::config::Endpoint;
use crate::keys::PublicKey;

/// Size of the scratch buffer used to refresh a stale peer's timers: one byte too small for a
/// handshake initiation, so that the refresh can never make boringtun generate an ephemeral key
/// and run Diffie-Hellman for a message that would be thrown away (a keepalive, 32 bytes, fits).
pub(super) const REFRESH_SCRATCH_LEN: usize = 147;

/// A fresh handshake started because the session looked dead, until one completes.
#[derive(Debug, Clone, Copy)]
pub(super) struct Recovery {
    /// When the next initiation is due.
    pub(super) due: Instant,
    /// What started it.
    pub(super) reason: super::RestartReason,
    /// Whether the first initiation went unanswered and the restart was reported.
    pub(super) reported: bool,
}

pub(super) struct Peer {
    pub(super) tunn: Tunn,
    pub(super) public_key: PublicKey,
    /// Where datagrams for this peer go: configured, resolved, or learned from the peer.
    pub(super) endpoint: Option<SocketAddr>,
    /// A DNS name to re-resolve when handshakes keep failing.
    pub(super) endpoint_name: Option<Endpoint>,
    /// Set by `initiate_all`: keep a session up with this peer (re-initiate whenever there is
    /// none, even after boringtun gave up).
    pub(super) dial: bool,
    /// True when `tick` has not driven this peer's timers since its last use: boringtun stamps
    /// events with the time of the last `update_timers` call, so it must be refreshed first.
    pub(super) stale: bool,
    /// boringtun may hold packets queued while no session existed.
    pub(super) maybe_queued: bool,
    /// Handshake initiations sent since the last completed handshake.
    pub(super) attempts: u32,
    pub(super) last_handshake: Option<Instant>,
    pub(super) resolve_pending: bool,
    /// The first packet (data or keepalive) sent to the peer after the last authenticated one
    /// received from it; `None` while everything we sent has been answered.
    pub(super) unanswered_since: Option<Instant>,
    /// Set while a probed (restarted) session waits for its handshake.
    pub(super) recovery: Option<Recovery>,
    /// When the last authenticated packet (of any kind) came from the peer.
    pub(super) last_received: Option<Instant>,
    /// The idle probe (an ICMP echo) sent since the last authenticated packet, to this address.
    pub(super) probe_outstanding: Option<std::net::IpAddr>,
    /// Idle probes in a row that went unanswered (reset by an answer).
    pub(super) probe_misses: u8,
    /// The peer does not answer idle probes: none are sent to it any more.
    pub(super) probe_off: bool,
    /// Sequence number of the next idle probe.
    pub(super) probe_seq: u16,
    /// The configured endpoint (what a reload compares against; `endpoint` may have moved).
    pub(super) configured_endpoint: Option<SocketAddr>,
    /// Our own persistent keepalive (boringtun's cannot be changed on a live `Tunn`): an empty
    /// data packet when nothing was sent to the peer for this long. `None` = off.
    pub(super) keepalive: Option<Duration>,
    /// When anything (handshake message, data, keepalive) was last sent to the peer.
    pub(super) last_sent: Option<Instant>,
    /// As configured (a reload compares them; the table's routes are built from the specs).
    pub(super) preshared_key: Option<[u8; 32]>,
    pub(super) allowed_ips: Vec<ipnet::IpNet>,
    pub(super) last_resolve_request: Option<Instant>,
    pub(super) handshakes: u64,
    pub(super) rx_packets: u64,
    pub(super) rx_bytes: u64,
    pub(super) tx_packets: u64,
    pub(super) tx_bytes: u64,
}

impl Peer {
    pub(super) fn new(
        tunn: Tunn,
        public_key: PublicKey,
        endpoint: Option<SocketAddr>,
        endpoint_name: Option<Endpoint>,
        keepalive: u16,
    ) -> Self {
        Self {
            tunn,
            public_key,
            endpoint,
            endpoint_name,
            configured_endpoint: endpoint,
            keepalive: (keepalive > 0).then(|| Duration::from_secs(u64::from(keepalive))),
            last_sent: None,
            preshared_key: None,
            allowed_ips: Vec::new(),
            dial: false,
            stale: true,
            maybe_queued: false,
            attempts: 0,
            last_handshake: None,
            resolve_pending: false,
            unanswered_since: None,
            recovery: None,
            last_received: None,
            probe_outstanding: None,
            probe_misses: 0,
            probe_off: false,
            probe_seq: 0,
            last_resolve_request: None,
            handshakes: 0,
            rx_packets: 0,
            rx_bytes: 0,
            tx_packets: 0,
            tx_bytes: 0,
        }
    }

    /// Brings boringtun's notion of "now" up to date before the first event after a period in
    /// which `tick` skipped this peer (no endpoint) or before the first tick at all. Without it a
    /// session established on a long-idle `Tunn` is stamped with the creation time and expired by
    /// the next `update_timers` call (REJECT_AFTER_TIME is counted from that stamp).
    pub(super) fn refresh_if_stale(&mut self) {
        if self.stale {
            let mut scratch = [0u8; REFRESH_SCRATCH_LEN];
            // Whatever this produces (an expiry, a keepalive that could not be delivered) is
            // deliberately dropped: the peer had no endpoint or no session to use it.
            let _ = self.tunn.update_timers(&mut scratch);
            self.stale = false;
        }
    }

    /// Whether our own keepalive is due at `now`: on, a session to carry it, and nothing sent
    /// for the interval (a first one counts from the first thing ever sent).
    pub(super) fn keepalive_due(&self, now: Instant) -> bool {
        match (self.keepalive, self.last_sent) {
            (Some(k), Some(t)) => self.has_session() && now.saturating_duration_since(t) >= k,
            _ => false,
        }
    }

    /// Whether boringtun has a current session with this peer (one that `encapsulate` uses).
    pub(super) fn has_session(&self) -> bool {
        self.tunn.time_since_last_handshake().is_some()
    }

    /// Records a handshake initiation sent to this peer. Returns true when the attempts before
    /// it went unanswered often enough that the endpoint's DNS name should be re-resolved.
    pub(super) fn note_initiation(&mut self) -> bool {
        self.attempts = self.attempts.saturating_add(1);
        // `attempts - 1` earlier initiations went unanswered.
        self.attempts > RESOLVE_AFTER_FAILED_HANDSHAKES
    }

    /// Records an authenticated packet from the peer at `now`: it is alive, whatever we sent is
    /// answered.
    pub(super) fn note_alive(&mut self, now: Instant) {
        self.unanswered_since = None;
        self.recovery = None;
        self.probe_outstanding = None;
        self.last_received = Some(now);
    }

    /// Records a data packet or keepalive sent to the peer at `now`.
    pub(super) fn note_sent(&mut self, now: Instant) {
        if self.unanswered_since.is_none() {
            self.unanswered_since = Some(now);
        }
    }

    /// Records a completed handshake (either role).
    pub(super) fn note_handshake(&mut self, now: Instant) {
        self.attempts = 0;
        self.last_handshake = Some(now);
        self.handshakes += 1;
    }

    /// Whether a resolution may be requested now: there is a name, none is pending, and the
    /// last request is at least [`RESOLVE_INTERVAL`] old.
    pub(super) fn may_request_resolve(&self, now: Instant) -> bool {
        self.endpoint_name.is_some()
            && !self.resolve_pending
            && self
                .last_resolve_request
                .is_none_or(|t| now.saturating_duration_since(t) >= RESOLVE_INTERVAL)
    }

    /// Whether the last handshake is recent enough that a missing "current" session is just the
    /// responder waiting for the initiator's first data packet, not a dead tunnel.
    pub(super) fn handshake_within(&self, now: Instant, window: Duration) -> bool {
        self.last_handshake
            .is_some_and(|t| now.saturating_duration_since(t) < window)
    }

    pub(super) fn status(&self) -> PeerStatus {
        PeerStatus {
            public_key: self.public_key,
            endpoint: self.endpoint,
            endpoint_name: self.endpoint_name.clone(),
            last_handshake: self.last_handshake,
            handshakes: self.handshakes,
            handshake_attempts: self.attempts,
            rx_packets: self.rx_packets,
            rx_bytes: self.rx_bytes,
            tx_packets: self.tx_packets,
            tx_bytes: self.tx_bytes,
        }
    }
}

impl fmt::Debug for Peer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // `Tunn` has no Debug (and holds key material): leave it out.
        f.debug_struct("Peer")
            .field("public_key", &self.public_key)
            .field("endpoint", &self.endpoint)
            .field("endpoint_name", &self.endpoint_name)
            .field("dial", &self.dial)
            .field("attempts", &self.attempts)
            .field("last_handshake", &self.last_handshake)
            .field("resolve_pending", &self.resolve_pending)
            .field("unanswered_since", &self.unanswered_since)
            .field("recovery", &self.recovery)
            .field("keepalive", &self.keepalive)
            .finish_non_exhaustive()
    }
}

/// The table's peers by slot: a removed peer leaves a hole (`None`) so that every other peer
/// keeps its slot, its [`PeerId`](super::PeerId) and the session indices derived from it; a
/// later peer may take the hole.
#[derive(Debug, Default)]
pub(super) struct Slots(Vec<Option<Box<Peer>>>);

impl Slots {
    pub(super) fn with_capacity(n: usize) -> Self {
        Self(Vec::with_capacity(n))
    }

    /// The peer in `slot`, if the slot holds one.
    pub(super) fn get(&self, slot: usize) -> Option<&Peer> {
        self.0.get(slot)?.as_deref()
    }

    pub(super) fn get_mut(&mut self, slot: usize) -> Option<&mut Peer> {
        self.0.get_mut(slot)?.as_deref_mut()
    }

    /// Slots in use or free: every slot index is below this.
    pub(super) fn len(&self) -> usize {
        self.0.len()
    }

    /// The slots that hold a peer, in order.
    pub(super) fn live(&self) -> impl Iterator<Item = usize> + '_ {
        self.0
            .iter()
            .enumerate()
            .filter_map(|(i, p)| p.is_some().then_some(i))
    }

    /// The slot the next [`Slots::put`] fills, skipping `reserved` ones (freed by the same
    /// change).
    pub(super) fn next_free(&self, skip: &dyn Fn(usize) -> bool) -> usize {
        self.0
            .iter()
            .enumerate()
            .position(|(i, p)| p.is_none() && !skip(i))
            .unwrap_or(self.0.len())
    }

    /// Puts `peer` in `slot` (at most one past the end).
    pub(super) fn put(&mut self, slot: usize, peer: Peer) {
        if slot >= self.0.len() {
            self.0.resize_with(slot + 1, || None);
        }
        if let Some(s) = self.0.get_mut(slot) {
            *s = Some(Box::new(peer));
        }
    }

    /// Empties `slot`.
    pub(super) fn remove(&mut self, slot: usize) -> Option<Box<Peer>> {
        self.0.get_mut(slot)?.take()
    }
}
