//! The WireGuard peer table: a sans-IO core around one boringtun [`Tunn`] per peer.
//!
//! [`Tunn`]: boringtun::noise::Tunn
//! [`Tunn::parse_incoming_packet`]: boringtun::noise::Tunn::parse_incoming_packet
//!
//! ## Responsibility
//!
//! [`PeerTable`] turns UDP datagrams into authenticated IP packets and IP packets into UDP
//! datagrams, for every configured peer, and tells its caller what to send where. It never owns
//! a socket, never reads a clock for its own decisions (time comes in as `now`), never resolves a
//! name and never allocates per packet: results borrow the caller's output buffer, the way
//! boringtun's `TunnResult<'a>` does. The tunnel-core executor drives it:
//!
//! * [`PeerTable::receive`] for every datagram, then [`PeerTable::flush`] until `None` after a
//!   [`Received::Transmit`];
//! * [`PeerTable::send`] for every IP packet from the local stack (routed by destination through
//!   the allowed IPs, longest prefix first);
//! * [`PeerTable::tick`] every [`TICK_INTERVAL`] (it returns when it wants the next call);
//! * [`PeerTable::initiate_all`] once, when the side that dials is ready to carry traffic;
//! * [`PeerTable::poll_resolve`] / [`PeerTable::set_endpoint`] for DNS, which is I/O and therefore
//!   the runtime's job;
//! * [`PeerTable::poll_event`] for what is worth a log line ([`PeerEvent`]): the table never
//!   logs, and boringtun's own `tracing` lines are filtered out by [`crate::telemetry`].
//!
//! The same table serves both ends of the tunnel. The broker is the **initiator**: each peer (a
//! vendor gateway) has an endpoint, and after `initiate_all` the table keeps a session up with it
//! for as long as the process runs. The vendor-side test kit and load generator are the
//! **responder**: a peer may have no endpoint at all; the table learns it from the peer's first
//! authenticated packet.
//!
//! ## Invariants
//!
//! * Only authenticated packets change state we own: an endpoint moves (roaming) only after
//!   boringtun verified a handshake or decrypted a data packet from the new address.
//! * A packet reaches [`Received::Packet`] only if it decrypted under the peer's session, is a
//!   well-formed IP packet that is not a fragment, and its source address routes back to that
//!   very peer (WireGuard's cryptokey routing; boringtun does not check it).
//! * No input panics: every datagram is classified by type and length
//!   ([`Tunn::parse_incoming_packet`]) and by receiver index before any cryptography, and
//!   everything that fails is [`Received::Dropped`] and counted in [`Counters`].
//! * A peer's local session indices are `(slot ^ salt) << 8 | n` (boringtun puts the `index`
//!   given to `Tunn::new` in the top 24 bits); `receiver_idx >> 8` therefore names the peer
//!   with one XOR and one bounds check. The salt is random per table so that indices of an
//!   earlier process do not land on today's sessions.
//!
//! ## boringtun traps handled here
//!
//! * **Queued packets**: after `decapsulate` returns `WriteToNetwork`, boringtun may hold
//!   packets queued while there was no session; they come out only through repeated
//!   `decapsulate` calls with an empty datagram. That is [`PeerTable::flush`]. A responder's
//!   session only becomes usable when the initiator's first data packet (its keepalive) arrives,
//!   which boringtun answers with `Done`: the table flushes there itself, and `tick` drains
//!   whatever is left.
//! * **Buffer sizes**: `encapsulate` and `decapsulate` panic when the output buffer is shorter
//!   than the input + 32 bytes (or < 148 for a handshake). Every entry point checks
//!   [`required_buffer_len`] first and drops with [`DropReason::BufferTooSmall`] instead.
//! * **Allowed IPs** are not enforced by boringtun: see the invariant above.
//! * **Rate limiter**: one `Arc<RateLimiter>` is shared by every `Tunn`; a shared limiter is
//!   never reset by boringtun, so `tick` calls `reset_count` once a second. Under load boringtun
//!   answers handshakes with cookie replies: they are surfaced as [`Received::Transmit`] with
//!   `peer: None` (the sender is not authenticated).
//! * **Finding the peer of a handshake initiation** needs a Diffie-Hellman
//!   (`parse_handshake_anon`). With more than one peer the table first checks MAC1 and the load
//!   through the shared limiter (cheap), so garbage and floods never reach the DH. The
//!   initiation is then verified again inside `decapsulate`, so it counts twice against the
//!   limiter; the limit is in verifications. A single-peer table (the broker) skips the
//!   anonymous parse and lets `decapsulate` check MAC1 before its own DH.
//! * **Stale clock**: boringtun stamps every event with the time of the last `update_timers`
//!   call, not the current time. A `Tunn` that `tick` skipped (a responder peer with no endpoint
//!   yet) would stamp a new session with its creation time and expire it on the next tick; the
//!   table refreshes a peer's timers before its first use after such a gap (with a buffer too
//!   small for a handshake initiation, so the refresh cannot burn a DH for nothing).
//! * **Giving up**: boringtun stops retrying a handshake after 90 s (`REKEY_ATTEMPT_TIME`) and
//!   then stays silent, persistent keepalives included, until a packet is queued. For a dialed
//!   peer `tick` starts a fresh handshake whenever there is no session, so a broker keeps
//!   knocking for as long as the gateway is unreachable (one initiation every 5 s, boringtun's
//!   `REKEY_TIMEOUT`), and asks for the gateway's name to be re-resolved after
//!   [`RESOLVE_AFTER_FAILED_HANDSHAKES`] unanswered initiations (at most every
//!   [`RESOLVE_INTERVAL`]).
//! * **Dead sessions**: a gateway that restarts forgets its sessions, cannot initiate (it does
//!   not know where the broker is) and silently drops our packets; boringtun's own rule (data
//!   sent, nothing back for 15 s) ignores keepalives and its rekey waits up to 120 s. For a
//!   dialed peer the table therefore notes the first packet it sends (data or keepalive, the
//!   keepalive that confirms our own handshake excepted) after the last authenticated one it
//!   received; when [`NO_REPLY_TIMEOUT`] passes without any authenticated packet, it starts a
//!   fresh handshake (the handshake is the probe: a live peer answers it at once, a restarted
//!   one too; [`Counters::liveness_probes`]) and, until one completes, retries every
//!   [`RECOVERY_RETRY`] plus up to as much random jitter, instead of boringtun's 5 s. A probe
//!   unanswered at its first retry is a dead session: [`PeerEvent::SessionRestart`],
//!   [`Counters::session_restarts`]. The runtime may also ask for it
//!   ([`PeerTable::restart_session`], on a failed heartbeat). The old session keeps carrying
//!   traffic until the new one is up, so a live but quiet peer loses nothing.
//! * **Idle tunnels**: a keepalive is never answered, so a broker with nothing to send would
//!   notice a restarted gateway only at its next keepalive. With [`PeerTable::set_idle_probe`]
//!   a dialed peer that sent nothing authenticated for [`IDLE_PROBE_INTERVAL`] is sent an ICMP
//!   echo request (built by the table, see `echo`), which a live gateway answers (its kernel, or
//!   this table on the gateway's side: an echo request to an address no peer's allowed IPs
//!   cover is answered here, never handed to the stack); the answer clears the silence, an
//!   unanswered echo starts the handshake probe above. Two echoes in a row unanswered while
//!   the handshakes after them were answered: the peer does not answer echoes, the probe is
//!   off for it ([`PeerEvent::IdleProbeOff`]) and a peer that never sends on its own costs a
//!   handshake per keepalive interval, as without the probe.
//! * **Own clock**: boringtun's retransmission and rekey timers read the system clock, not
//!   `now`; the table's own decisions (limiter reset, resolution throttle, handshake age) use
//!   `now`.

mod echo;
mod liveness;
mod peer;
mod reconfigure;
mod route;
mod table;
#[cfg(test)]
mod tests;

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use ipnet::IpNet;

use crate::config::Endpoint;
use crate::keys::PublicKey;
use crate::packet::Flow;

pub use table::PeerTable;

/// How often [`PeerTable::tick`] wants to run (boringtun's timers have one-second resolution;
/// WireGuard implementations drive them every 100–250 ms).
pub const TICK_INTERVAL: Duration = Duration::from_millis(100);

/// Bytes a data packet grows by when encrypted (header 16 + Poly1305 tag 16).
pub const DATA_OVERHEAD: usize = 32;

/// The smallest output buffer any entry point accepts: a handshake initiation is 148 bytes.
pub const MIN_BUFFER_LEN: usize = 148;

/// Unanswered handshake initiations in a row after which a peer with an
/// [`PeerSpec::endpoint_name`] is queued for DNS re-resolution (at 5 s per retry: ~15 s of
/// silence).
pub const RESOLVE_AFTER_FAILED_HANDSHAKES: u32 = 3;

/// The shortest interval between two re-resolution requests for one peer.
pub const RESOLVE_INTERVAL: Duration = Duration::from_secs(30);

/// How long a dialed peer may stay silent after we sent it something (data or a keepalive)
/// before the table suspects a dead session and starts a fresh handshake. A live peer answers
/// data within a round trip (a TCP acknowledgement) and a handshake at once; keepalives are never
/// answered, so on a tunnel the peer keeps quiet this costs a handshake per keepalive.
pub const NO_REPLY_TIMEOUT: Duration = Duration::from_secs(2);

/// How long a dialed peer may send nothing authenticated before an idle tunnel is probed with
/// an ICMP echo ([`PeerTable::set_idle_probe`]). With [`NO_REPLY_TIMEOUT`] for its answer, an
/// idle broker notices a restarted gateway within about 4 s.
pub const IDLE_PROBE_INTERVAL: Duration = Duration::from_secs(2);

/// While a restarted session waits for its handshake, initiations are repeated after this long
/// plus a random jitter of up to as much again (1–2 s; boringtun alone waits 5 s), so that the
/// gateway is reached within about 2 s of being back, and brokers restarted together do not
/// knock in step.
pub const RECOVERY_RETRY: Duration = Duration::from_secs(1);

/// Most [`PeerEvent`]s held for [`PeerTable::poll_event`]; beyond that new ones are dropped
/// (counted in [`Counters::events_dropped`]), so a caller that never polls (the test kit's
/// gateway) costs a few bytes, not a growing queue.
pub const MAX_PENDING_EVENTS: usize = 64;

/// Handshake messages verified per second (across all peers) before the table answers with
/// cookie replies instead of doing Diffie-Hellman. boringtun's device uses the same value.
pub const DEFAULT_HANDSHAKE_RATE_LIMIT: u64 = 100;

/// The most peers a table can hold: boringtun keeps 24 bits of a session index for the peer.
pub const MAX_PEERS: usize = 1 << 24;

/// The output buffer length every entry point needs for packets of up to `max_packet` bytes:
/// `max(max_packet + DATA_OVERHEAD, MIN_BUFFER_LEN)`. [`PeerTable::receive`] needs at least the
/// datagram's length (and [`MIN_BUFFER_LEN`]).
pub const fn required_buffer_len(max_packet: usize) -> usize {
    let n = max_packet.saturating_add(DATA_OVERHEAD);
    if n < MIN_BUFFER_LEN {
        MIN_BUFFER_LEN
    } else {
        n
    }
}

/// One peer as configured. Its `Debug` leaves the pre-shared key out.
#[derive(Clone)]
pub struct PeerSpec {
    /// The peer's static public key; unique in a table.
    pub public_key: PublicKey,
    /// Optional pre-shared key mixed into the handshake (`wg`'s `PresharedKey`).
    pub preshared_key: Option<[u8; 32]>,
    /// Where to reach the peer, if known. `None` on the responder side: the table learns it from
    /// the peer's first authenticated packet. A peer with an `endpoint_name` but no address yet
    /// is queued for resolution at once (see [`PeerTable::poll_resolve`]).
    pub endpoint: Option<SocketAddr>,
    /// The DNS name behind `endpoint`, re-resolved when handshakes keep failing.
    pub endpoint_name: Option<Endpoint>,
    /// Inner addresses routed to this peer and accepted from it.
    pub allowed_ips: Vec<IpNet>,
    /// Seconds between keepalives when the tunnel is otherwise idle; 0 = off.
    pub persistent_keepalive: u16,
}

impl fmt::Debug for PeerSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PeerSpec")
            .field("public_key", &self.public_key)
            .field("preshared_key", &self.preshared_key.map(|_| "<secret>"))
            .field("endpoint", &self.endpoint)
            .field("endpoint_name", &self.endpoint_name)
            .field("allowed_ips", &self.allowed_ips)
            .field("persistent_keepalive", &self.persistent_keepalive)
            .finish()
    }
}

/// Where the table sends its idle probe (see [`PeerTable::set_idle_probe`]): an ICMP echo
/// request from this side's tunnel address to an address of the dialed peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IdleProbe {
    /// This side's own tunnel address (the echo's source; the peer routes its answer to it).
    pub from: IpAddr,
    /// An address on the peer's side known to answer (the heartbeat's host), used for the peer
    /// whose allowed IPs cover it; any other peer gets the first host of its first allowed-IPs
    /// entry (the address itself for a `/32` or `/128`, otherwise the network's first host).
    pub prefer: Option<IpAddr>,
}

/// A peer's handle in one [`PeerTable`]: its position in the `peers` given to
/// [`PeerTable::new`] (a peer added by [`PeerTable::reconfigure`] takes a free slot). A kept
/// peer keeps its handle across reconfigurations; the handle of a removed one names nothing
/// (methods return `None`), as do handles of another table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PeerId(u32);

impl PeerId {
    /// The peer's slot: its position in the list given to [`PeerTable::new`], or the slot
    /// [`PeerTable::reconfigure`] gave it.
    pub fn index(self) -> usize {
        self.0 as usize
    }
}

impl fmt::Display for PeerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "peer#{}", self.0)
    }
}

/// A datagram to send to a peer.
#[derive(Debug)]
pub struct Transmit<'o> {
    /// The peer it is for.
    pub peer: PeerId,
    /// The peer's endpoint.
    pub to: SocketAddr,
    /// The datagram, in the caller's output buffer.
    pub datagram: &'o mut [u8],
}

/// What to do after [`PeerTable::receive`].
#[derive(Debug)]
pub enum Received<'o> {
    /// A decrypted IP packet whose inner source address routes to `peer`: hand it to the
    /// stack (`flow.hash()` picks the shard).
    Packet {
        /// The peer it came from.
        peer: PeerId,
        /// Addresses, protocol and ports of the packet, already parsed.
        flow: Flow,
        /// The IP packet, in the caller's output buffer, trimmed to its IP length.
        packet: &'o mut [u8],
    },
    /// Send `datagram` to `to` (a handshake response, a cookie reply, a keepalive, queued
    /// data); then, if `peer` is `Some`, call [`PeerTable::flush`] until it returns `None`.
    Transmit {
        /// The authenticated peer, or `None` for a cookie reply (the sender is unauthenticated).
        peer: Option<PeerId>,
        /// Where to send it: the datagram's source address.
        to: SocketAddr,
        /// The datagram, in the caller's output buffer.
        datagram: &'o mut [u8],
    },
    /// Nothing to do (a keepalive, an accepted cookie).
    Done,
    /// Dropped and counted; never an error the caller must handle.
    Dropped(DropReason),
}

/// Something that happened to a peer and deserves a log line; the runtime logs it (rate-limited)
/// as the broker's own event. Taken with [`PeerTable::poll_event`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum PeerEvent {
    /// A handshake initiation went unanswered for boringtun's `REKEY_TIMEOUT` (5 s) and another
    /// one is being sent to `endpoint` (what boringtun itself logs as `HANDSHAKE(REKEY_TIMEOUT)`).
    HandshakeTimeout {
        peer: PeerId,
        endpoint: SocketAddr,
        /// Initiations in a row that got no answer, since the last completed handshake.
        unanswered: u32,
    },
    /// The session with a dialed peer is dead: a fresh handshake, started because of `reason`,
    /// went unanswered and is now retried every 1–2 s until one completes. (A probe the peer
    /// answers at once, as a live but quiet peer or an already restarted one does, is counted in
    /// [`Counters::liveness_probes`] and reported nowhere else.)
    SessionRestart {
        peer: PeerId,
        endpoint: SocketAddr,
        reason: RestartReason,
    },
    /// Two idle probes in a row went unanswered although the handshake that followed each was
    /// answered at once: the peer does not answer ICMP echoes at `to`. Idle probes stop for this
    /// peer (until the table is built again); a restart is then noticed at its next keepalive.
    IdleProbeOff { peer: PeerId, to: IpAddr },
}

/// Why [`PeerEvent::SessionRestart`] started a fresh handshake.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum RestartReason {
    /// Nothing authenticated arrived for `silent_for` (at least [`NO_REPLY_TIMEOUT`]) after we
    /// sent the peer data or a keepalive.
    NoReply {
        /// Since the first unanswered packet we sent.
        silent_for: Duration,
    },
    /// The runtime asked ([`PeerTable::restart_session`]): the heartbeat through the tunnel
    /// failed.
    HeartbeatFailed,
}

impl RestartReason {
    /// A short stable name for logs and metrics labels.
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::NoReply { .. } => "no_reply",
            Self::HeartbeatFailed => "heartbeat_failed",
        }
    }
}

/// What to do after [`PeerTable::send`].
#[derive(Debug)]
pub enum Sent<'o> {
    /// Send this datagram: the encrypted packet, or — when there was no session — a handshake
    /// initiation, the packet itself waiting in boringtun's queue until the handshake completes
    /// (it comes out of [`PeerTable::flush`] then).
    Transmit(Transmit<'o>),
    /// No session yet and a handshake already in flight: the packet waits in boringtun's queue
    /// (at most 256 packets per peer; beyond that boringtun drops silently).
    Queued {
        /// The peer the packet is for.
        peer: PeerId,
    },
    /// Dropped and counted.
    Dropped(DropReason),
}

/// Why a datagram or packet was dropped. Every reason has a counter in [`Counters`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum DropReason {
    /// Not a WireGuard message: wrong type or length. No cryptography was spent.
    Garbage,
    /// The receiver index names no peer of this table. No cryptography was spent.
    UnknownIndex,
    /// A valid handshake initiation from a static key that is not a configured peer.
    UnknownPeer,
    /// The peer exists but has no session under that index (stale or expired), or the message
    /// answers a handshake that is no longer in flight.
    NoSession,
    /// A MAC, an AEAD tag or a timestamp did not verify.
    Unauthenticated,
    /// A replayed message: a data counter already seen or too old, or a handshake initiation
    /// whose timestamp is not newer than the last one.
    Replay,
    /// A handshake refused under load without a source address to send a cookie to.
    UnderLoad,
    /// The decrypted packet's source address does not route to the peer that sent it.
    BadSource,
    /// The decrypted packet is an IP fragment (the broker does not reassemble).
    Fragment,
    /// The decrypted (or outgoing) packet is not a well-formed IPv4/IPv6 packet.
    Malformed,
    /// An outgoing packet's destination matches no peer's allowed IPs.
    NoRoute,
    /// An outgoing packet is for a peer whose endpoint is not known yet.
    NoEndpoint,
    /// The caller's output buffer is shorter than [`required_buffer_len`].
    BufferTooSmall,
}

/// Table-wide counters (plain `u64`: the table lives on one core; the runtime exports them).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Counters {
    /// Datagrams given to [`PeerTable::receive`].
    pub datagrams_received: u64,
    /// Authenticated IP packets delivered ([`Received::Packet`]).
    pub packets_received: u64,
    /// Authenticated keepalives received.
    pub keepalives_received: u64,
    /// Cookie replies received and accepted.
    pub cookies_received: u64,
    /// Handshakes completed, either role.
    pub handshakes_completed: u64,
    /// Handshake initiations sent (first attempts and retries).
    pub handshake_initiations_sent: u64,
    /// Handshake responses sent.
    pub handshake_responses_sent: u64,
    /// Cookie replies sent (we were under load).
    pub cookies_sent: u64,
    /// Data datagrams sent (excluding keepalives).
    pub data_sent: u64,
    /// Keepalives sent.
    pub keepalives_sent: u64,
    /// Packets queued in boringtun waiting for a handshake.
    pub queued: u64,
    /// Endpoints learned from a peer that had none.
    pub endpoints_learned: u64,
    /// Endpoint changes because a peer's authenticated packet came from a new address.
    pub roams: u64,
    /// DNS re-resolutions requested through [`PeerTable::poll_resolve`].
    pub resolutions_requested: u64,
    /// Something was due to a peer whose endpoint is not known (dropped).
    pub no_endpoint: u64,
    /// Handshake initiations that went unanswered and were retried ([`PeerEvent::HandshakeTimeout`]).
    pub handshake_timeouts: u64,
    /// Fresh handshakes started to probe a session that looked dead (nothing answered for
    /// [`NO_REPLY_TIMEOUT`], or [`PeerTable::restart_session`]); most are answered at once.
    pub liveness_probes: u64,
    /// Probes whose first initiation went unanswered: the session was dead and is being
    /// re-established ([`PeerEvent::SessionRestart`]).
    pub session_restarts: u64,
    /// ICMP echo requests sent to probe an idle dialed peer ([`PeerTable::set_idle_probe`]).
    pub idle_probes: u64,
    /// Answers to those probes (taken by the table, never handed to the stack).
    pub idle_probe_replies: u64,
    /// ICMP echo requests from a peer to this side answered by the table.
    pub echo_replies_sent: u64,
    /// [`PeerEvent`]s dropped because [`MAX_PENDING_EVENTS`] were waiting.
    pub events_dropped: u64,
    /// See [`DropReason::Garbage`].
    pub garbage: u64,
    /// See [`DropReason::UnknownIndex`].
    pub unknown_index: u64,
    /// See [`DropReason::UnknownPeer`].
    pub unknown_peer: u64,
    /// See [`DropReason::NoSession`].
    pub no_session: u64,
    /// See [`DropReason::Unauthenticated`].
    pub unauthenticated: u64,
    /// See [`DropReason::Replay`].
    pub replays: u64,
    /// See [`DropReason::UnderLoad`].
    pub under_load: u64,
    /// See [`DropReason::BadSource`].
    pub bad_source: u64,
    /// See [`DropReason::Fragment`].
    pub fragments: u64,
    /// See [`DropReason::Malformed`].
    pub malformed: u64,
    /// See [`DropReason::NoRoute`].
    pub no_route: u64,
    /// See [`DropReason::BufferTooSmall`].
    pub buffer_too_small: u64,
}

impl Counters {
    fn count_drop(&mut self, reason: DropReason) {
        let c = match reason {
            DropReason::Garbage => &mut self.garbage,
            DropReason::UnknownIndex => &mut self.unknown_index,
            DropReason::UnknownPeer => &mut self.unknown_peer,
            DropReason::NoSession => &mut self.no_session,
            DropReason::Unauthenticated => &mut self.unauthenticated,
            DropReason::Replay => &mut self.replays,
            DropReason::UnderLoad => &mut self.under_load,
            DropReason::BadSource => &mut self.bad_source,
            DropReason::Fragment => &mut self.fragments,
            DropReason::Malformed => &mut self.malformed,
            DropReason::NoRoute => &mut self.no_route,
            DropReason::NoEndpoint => &mut self.no_endpoint,
            DropReason::BufferTooSmall => &mut self.buffer_too_small,
        };
        *c += 1;
    }

    /// Everything dropped, all reasons together.
    pub fn dropped(&self) -> u64 {
        self.garbage
            + self.unknown_index
            + self.unknown_peer
            + self.no_session
            + self.unauthenticated
            + self.replays
            + self.under_load
            + self.bad_source
            + self.fragments
            + self.malformed
            + self.no_route
            + self.no_endpoint
            + self.buffer_too_small
    }
}

/// A snapshot of one peer, for `wg show`-style status, metrics and readiness.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct PeerStatus {
    /// The peer's static public key.
    pub public_key: PublicKey,
    /// Where datagrams for the peer go now (configured, resolved or learned).
    pub endpoint: Option<SocketAddr>,
    /// The DNS name re-resolved for this peer, if any.
    pub endpoint_name: Option<Endpoint>,
    /// When the last handshake completed (the caller's clock); see [`PeerStatus::handshake_age`].
    pub last_handshake: Option<Instant>,
    /// Handshakes completed with this peer.
    pub handshakes: u64,
    /// Handshake initiations sent since the last completed handshake (0 when healthy).
    pub handshake_attempts: u32,
    /// Authenticated IP packets received from the peer.
    pub rx_packets: u64,
    /// Bytes of those IP packets.
    pub rx_bytes: u64,
    /// IP packets encrypted and handed out for the peer.
    pub tx_packets: u64,
    /// Bytes of those IP packets.
    pub tx_bytes: u64,
}

impl PeerStatus {
    /// How long ago the last handshake completed, if one did.
    pub fn handshake_age(&self, now: Instant) -> Option<Duration> {
        self.last_handshake
            .map(|t| now.saturating_duration_since(t))
    }
}

/// What [`PeerTable::reconfigure`] did, by public key (for the reload's log line).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PeerChanges {
    pub added: Vec<PublicKey>,
    pub removed: Vec<PublicKey>,
    /// Kept their session; endpoint, keepalive, allowed IPs or pre-shared key changed.
    pub changed: Vec<PublicKey>,
}

impl PeerChanges {
    /// True when nothing changed.
    pub fn is_empty(&self) -> bool {
        self.added.is_empty() && self.removed.is_empty() && self.changed.is_empty()
    }
}

/// Why a [`PeerTable`] could not be built.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PeerTableError {
    /// Two peers share a public key (handshakes could not tell them apart).
    #[error("peer {0} is listed more than once")]
    DuplicatePeer(PublicKey),
    /// A peer has the table's own public key.
    #[error("peer {0} is this side's own public key")]
    OwnKey(PublicKey),
    /// Two peers were given the same allowed-IPs prefix.
    #[error("allowed IP {net} is given to both peer {first} and peer {second}")]
    DuplicateAllowedIp {
        /// The prefix, host bits cleared.
        net: IpNet,
        /// The peer that has it first.
        first: PublicKey,
        /// The peer it was given to again.
        second: PublicKey,
    },
    /// More than [`MAX_PEERS`] peers.
    #[error("{0} peers is more than the {MAX_PEERS} a table can hold")]
    TooManyPeers(usize),
}
