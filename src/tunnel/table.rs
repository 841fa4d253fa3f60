//! [`PeerTable`]: the entry points the tunnel core calls, and the translation of boringtun's
//! results into [`Received`] / [`Sent`] / transmits.

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::net::SocketAddr;
use std::ops::Range;
use std::sync::Arc;
use std::time::{Duration, Instant};

use boringtun::noise::errors::WireGuardError;
use boringtun::noise::handshake::parse_handshake_anon;
use boringtun::noise::rate_limiter::RateLimiter;
use boringtun::noise::{Packet, Tunn, TunnResult};
use boringtun::x25519;

use super::echo::{self, Echo};
use super::peer::{Peer, Slots};
use super::route::Routes;
use super::{
    Counters, DATA_OVERHEAD, DEFAULT_HANDSHAKE_RATE_LIMIT, DropReason, MAX_PEERS,
    MAX_PENDING_EVENTS, MIN_BUFFER_LEN, PeerEvent, PeerId, PeerSpec, PeerStatus, PeerTableError,
    Received, Sent, TICK_INTERVAL, Transmit, required_buffer_len,
};
use crate::config::Endpoint;
use crate::keys::{PrivateKey, PublicKey};
use crate::packet::{Flow, FlowError};
use ipnet::IpNet;

/// WireGuard message types (first byte; the next three are reserved zeros).
const MSG_INIT: u8 = 1;
const MSG_RESPONSE: u8 = 2;
const MSG_COOKIE: u8 = 3;
const MSG_DATA: u8 = 4;

/// After a handshake completes as responder, boringtun has no *current* session until the
/// initiator's first data packet arrives. Within this window (boringtun's `REKEY_TIMEOUT`) a
/// dialed peer without a current session is not re-initiated.
const HANDSHAKE_GRACE: Duration = Duration::from_secs(5);

/// More than boringtun's queue can hold (256): bounds the drain loop in `tick`.
const MAX_DRAIN: usize = 257;

/// The sans-IO WireGuard peer table. See the [module documentation](super).
pub struct PeerTable {
    pub(super) static_private: x25519::StaticSecret,
    pub(super) static_public: x25519::PublicKey,
    /// Shared by every `Tunn`; reset by `tick` once a second.
    pub(super) rate_limiter: Arc<RateLimiter>,
    /// This side's public key (no peer may have it).
    pub(super) own: PublicKey,
    pub(super) peers: Slots,
    /// The slot of the only peer, when there is exactly one (a handshake initiation can then
    /// only be for it: no anonymous parse needed).
    pub(super) single: Option<usize>,
    /// Set by `initiate_all`: peers added later are dialed too.
    pub(super) dialing: bool,
    pub(super) by_key: HashMap<[u8; 32], usize>,
    pub(super) routes: Routes,
    /// XORed into peer slots to form boringtun's 24-bit peer index.
    pub(super) salt: u32,
    pub(super) counters: Counters,
    pub(super) resolve_queue: VecDeque<PeerId>,
    /// What the runtime should log, oldest first (at most [`MAX_PENDING_EVENTS`]).
    pub(super) events: VecDeque<PeerEvent>,
    pub(super) next_rate_reset: Instant,
    /// The latest `now` given to any entry point (for `flush`, which takes none).
    pub(super) now: Instant,
    /// The longest packet ever given to `send`: boringtun may have queued one that long, and
    /// draining the queue needs a buffer that fits it.
    pub(super) largest_packet: usize,
    /// xorshift state for the jitter of recovery retries (not for anything secret).
    pub(super) jitter_state: u64,
    /// Set by [`PeerTable::set_idle_probe`]: dialed peers are probed with an ICMP echo while
    /// idle.
    pub(super) idle_probe: Option<super::IdleProbe>,
}

/// A boringtun result with the borrow of the output buffer replaced by the range it covers,
/// so that the buffer can be borrowed again (or re-sliced for the caller) afterwards.
pub(super) enum Outcome {
    Network(Range<usize>),
    Tunnel(Range<usize>),
    Done,
    Err(WireGuardError),
}

fn span(base: usize, b: &[u8]) -> Range<usize> {
    // `b` is a sub-slice of the buffer starting at `base`; a range that does not fit (which
    // cannot happen) makes the caller's `get`/`get_mut` return `None` instead of panicking.
    let start = b.as_ptr().addr().wrapping_sub(base);
    start..start.wrapping_add(b.len())
}

pub(super) fn settle(base: usize, r: TunnResult<'_>) -> Outcome {
    match r {
        TunnResult::Done => Outcome::Done,
        TunnResult::Err(e) => Outcome::Err(e),
        TunnResult::WriteToNetwork(b) => Outcome::Network(span(base, b)),
        TunnResult::WriteToTunnelV4(b, _) | TunnResult::WriteToTunnelV6(b, _) => {
            Outcome::Tunnel(span(base, b))
        }
    }
}

fn drop_reason(e: &WireGuardError) -> DropReason {
    use WireGuardError as E;
    match e {
        E::WrongKey => DropReason::UnknownPeer,
        E::DuplicateCounter | E::InvalidCounter | E::WrongTai64nTimestamp => DropReason::Replay,
        E::NoCurrentSession | E::WrongIndex | E::UnexpectedPacket | E::ConnectionExpired => {
            DropReason::NoSession
        }
        E::InvalidMac | E::InvalidAeadTag | E::InvalidTai64nTimestamp | E::LockFailed => {
            DropReason::Unauthenticated
        }
        E::UnderLoad => DropReason::UnderLoad,
        E::DestinationBufferTooSmall => DropReason::BufferTooSmall,
        // Length and type were checked before boringtun saw the datagram, so for a data packet
        // this means "decrypted, but not an IP packet".
        E::InvalidPacket => DropReason::Malformed,
        E::IncorrectPacketLength | E::WrongPacketType => DropReason::Garbage,
    }
}

/// The kind of an incoming message, kept after the parsed view (which borrows the datagram).
#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Init,
    Response,
    Cookie,
    Data,
}

/// How the sender of a handshake initiation was identified.
enum Initiator {
    Slot(usize),
    /// The shared limiter wrote a cookie reply at this range of the output buffer.
    Cookie(Range<usize>),
    Drop(DropReason),
}

/// A non-zero seed for the jitter generator (a failing RNG gives a fixed one: the jitter then
/// repeats between processes, which costs only its spreading effect).
fn jitter_seed() -> u64 {
    let mut b = [0u8; 8];
    let _ = getrandom::fill(&mut b);
    u64::from_le_bytes(b) | 1
}

fn random_salt() -> u32 {
    let mut b = [0u8; 4];
    // A failing RNG leaves the salt at 0: indices are then predictable, which costs nothing
    // but the protection against stale indices of an earlier process.
    let _ = getrandom::fill(&mut b);
    u32::from_le_bytes(b) & 0x00ff_ffff
}

impl PeerTable {
    /// A table for the side holding `private`, with `peers` in order ([`PeerId::index`] is the
    /// position in `peers`), and [`DEFAULT_HANDSHAKE_RATE_LIMIT`].
    ///
    /// Peers with an `endpoint_name` but no `endpoint` are queued for resolution at once.
    pub fn new(
        private: &PrivateKey,
        peers: Vec<PeerSpec>,
        now: Instant,
    ) -> Result<Self, PeerTableError> {
        Self::with_handshake_rate_limit(private, peers, now, DEFAULT_HANDSHAKE_RATE_LIMIT)
    }

    /// Like [`PeerTable::new`], with `limit` handshake verifications per second (all peers
    /// together) before the table answers with cookie replies. Lower protects the CPU of a
    /// responder under a handshake flood; higher lets more peers reconnect at once.
    pub fn with_handshake_rate_limit(
        private: &PrivateKey,
        peers: Vec<PeerSpec>,
        now: Instant,
        limit: u64,
    ) -> Result<Self, PeerTableError> {
        if peers.len() > MAX_PEERS {
            return Err(PeerTableError::TooManyPeers(peers.len()));
        }
        let static_private = private.to_x25519();
        let static_public = x25519::PublicKey::from(&static_private);
        let own = private.public_key();
        let rate_limiter = Arc::new(RateLimiter::new(&static_public, limit));
        let salt = random_salt();

        let mut table = Self {
            static_private,
            static_public,
            rate_limiter,
            own,
            peers: Slots::with_capacity(peers.len()),
            single: None,
            dialing: false,
            by_key: HashMap::with_capacity(peers.len()),
            routes: Routes::default(),
            salt,
            counters: Counters::default(),
            resolve_queue: VecDeque::new(),
            events: VecDeque::new(),
            next_rate_reset: now + Duration::from_secs(1),
            now,
            largest_packet: 0,
            jitter_state: jitter_seed(),
            idle_probe: None,
        };
        for (slot, spec) in peers.into_iter().enumerate() {
            table.add(slot, spec, now)?;
        }
        table.single = table.single_slot();
        Ok(table)
    }

    pub(super) fn single_slot(&self) -> Option<usize> {
        let mut live = self.peers.live();
        match (live.next(), live.next()) {
            (Some(slot), None) => Some(slot),
            _ => None,
        }
    }

    fn add(&mut self, slot: usize, spec: PeerSpec, now: Instant) -> Result<(), PeerTableError> {
        let index = Self::index_of(slot)?;
        if spec.public_key == self.own {
            return Err(PeerTableError::OwnKey(spec.public_key));
        }
        if self
            .by_key
            .insert(*spec.public_key.as_bytes(), slot)
            .is_some()
        {
            return Err(PeerTableError::DuplicatePeer(spec.public_key));
        }
        let id = PeerId(index);
        for net in &spec.allowed_ips {
            self.routes.insert(*net, id).map_err(|c| {
                let first = self
                    .peers
                    .get(c.owner.index())
                    .map_or(spec.public_key, |p| p.public_key);
                PeerTableError::DuplicateAllowedIp {
                    net: c.net,
                    first,
                    second: spec.public_key,
                }
            })?;
        }
        self.install(slot, index, spec, now);
        Ok(())
    }

    pub(super) fn index_of(slot: usize) -> Result<u32, PeerTableError> {
        u32::try_from(slot)
            .ok()
            .filter(|&i| (i as usize) < MAX_PEERS)
            .ok_or(PeerTableError::TooManyPeers(slot + 1))
    }

    /// Builds the peer of `spec` (a fresh `Tunn`: no session) into `slot`; asks for its
    /// endpoint to be resolved when it has only a name.
    pub(super) fn install(&mut self, slot: usize, index: u32, spec: PeerSpec, now: Instant) {
        // Keepalives are ours (`Peer::keepalive`): boringtun's interval cannot be changed on a
        // live `Tunn`, and a reload must be able to.
        let tunn = Tunn::new(
            self.static_private.clone(),
            spec.public_key.to_x25519(),
            spec.preshared_key,
            None,
            index ^ self.salt,
            Some(Arc::clone(&self.rate_limiter)),
        );
        let wants_address = spec.endpoint.is_none() && spec.endpoint_name.is_some();
        let mut peer = Peer::new(
            tunn,
            spec.public_key,
            spec.endpoint,
            spec.endpoint_name,
            spec.persistent_keepalive,
        );
        peer.preshared_key = spec.preshared_key;
        peer.allowed_ips = spec.allowed_ips.iter().map(IpNet::trunc).collect();
        self.peers.put(slot, peer);
        if wants_address {
            self.request_resolve(slot, now);
        }
    }

    /// Dials `slot` from now on (see [`PeerTable::initiate_all`]).
    pub(super) fn dial(
        &mut self,
        slot: usize,
        out: &mut [u8],
        emit: &mut dyn FnMut(PeerId, SocketAddr, &[u8]),
    ) {
        let now = self.now;
        let Some(p) = self.peers.get_mut(slot) else {
            return;
        };
        if p.endpoint.is_none() && p.endpoint_name.is_none() {
            return;
        }
        p.dial = true;
        if p.endpoint.is_none() {
            self.request_resolve(slot, now);
        } else if !p.has_session() {
            self.initiate(slot, out, emit, false);
        }
    }

    /// A UDP datagram arrived from `from`. `out` must hold at least `datagram.len()` and
    /// [`MIN_BUFFER_LEN`] bytes; whatever is returned lives in it.
    ///
    /// Classifies the datagram by type, length and receiver index before any cryptography;
    /// everything that fails is dropped and counted.
    pub fn receive<'o>(
        &mut self,
        now: Instant,
        from: SocketAddr,
        datagram: &[u8],
        out: &'o mut [u8],
    ) -> Received<'o> {
        self.now = now;
        self.counters.datagrams_received += 1;
        if out.len() < datagram.len().max(MIN_BUFFER_LEN) {
            return self.dropped_rx(DropReason::BufferTooSmall);
        }
        let Ok(packet) = Tunn::parse_incoming_packet(datagram) else {
            return self.dropped_rx(DropReason::Garbage);
        };
        let (kind, slot) = match packet {
            Packet::HandshakeInit(_) => match self.initiator(from, datagram, out) {
                Initiator::Slot(slot) => (Kind::Init, Some(slot)),
                Initiator::Cookie(range) => {
                    self.counters.cookies_sent += 1;
                    return match out.get_mut(range) {
                        Some(datagram) => Received::Transmit {
                            peer: None,
                            to: from,
                            datagram,
                        },
                        None => self.dropped_rx(DropReason::BufferTooSmall),
                    };
                }
                Initiator::Drop(reason) => return self.dropped_rx(reason),
            },
            Packet::HandshakeResponse(p) => (Kind::Response, self.slot_of(p.receiver_idx)),
            Packet::PacketCookieReply(p) => (Kind::Cookie, self.slot_of(p.receiver_idx)),
            Packet::PacketData(p) => (Kind::Data, self.slot_of(p.receiver_idx)),
        };
        let Some((slot, peer)) = slot.and_then(|s| Some((s, self.peers.get_mut(s)?))) else {
            return self.dropped_rx(DropReason::UnknownIndex);
        };
        let id = PeerId(slot as u32);

        peer.refresh_if_stale();
        let base = out.as_ptr().addr();
        let outcome = settle(
            base,
            peer.tunn.decapsulate(Some(from.ip()), datagram, &mut *out),
        );

        match outcome {
            Outcome::Err(e) => {
                let reason = drop_reason(&e);
                if kind == Kind::Data && reason == DropReason::Malformed {
                    // It decrypted: the sender is authenticated even if its payload is junk.
                    self.authenticated(slot, from);
                }
                self.dropped_rx(reason)
            }
            Outcome::Network(range) => {
                let Some(datagram) = out.get_mut(range) else {
                    return self.dropped_rx(DropReason::BufferTooSmall);
                };
                let ty = datagram.first().copied();
                self.account_emit(slot, datagram);
                if ty == Some(MSG_COOKIE) {
                    // We are under load: the sender has not proven anything yet.
                    return Received::Transmit {
                        peer: None,
                        to: from,
                        datagram,
                    };
                }
                // A response to an initiation, or the keepalive that confirms a response:
                // either way boringtun authenticated the message and established a session.
                if (kind, ty) == (Kind::Init, Some(MSG_RESPONSE))
                    || (kind, ty) == (Kind::Response, Some(MSG_DATA))
                {
                    self.authenticated(slot, from);
                    self.handshake_completed(slot, now);
                }
                Received::Transmit {
                    peer: Some(id),
                    to: from,
                    datagram,
                }
            }
            Outcome::Done => match kind {
                Kind::Data => {
                    self.authenticated(slot, from);
                    self.counters.keepalives_received += 1;
                    // A responder's session becomes current with this first data packet:
                    // release whatever was queued while waiting for it (if `out` is too short
                    // for the queue, `tick` drains it instead).
                    if out.len() < required_buffer_len(self.largest_packet) {
                        return Received::Done;
                    }
                    match self.flush(id, out) {
                        Some(t) => Received::Transmit {
                            peer: Some(id),
                            to: t.to,
                            datagram: t.datagram,
                        },
                        None => Received::Done,
                    }
                }
                Kind::Cookie => {
                    self.counters.cookies_received += 1;
                    Received::Done
                }
                Kind::Init | Kind::Response => Received::Done,
            },
            Outcome::Tunnel(range) => {
                self.authenticated(slot, from);
                let Some(packet) = out.get(range.clone()) else {
                    return self.dropped_rx(DropReason::BufferTooSmall);
                };
                let flow = match Flow::parse(packet) {
                    Ok(flow) => flow,
                    Err(FlowError::Fragment) => return self.dropped_rx(DropReason::Fragment),
                    Err(_) => return self.dropped_rx(DropReason::Malformed),
                };
                if self.routes.lookup(flow.src) != Some(id) {
                    return self.dropped_rx(DropReason::BadSource);
                }
                match echo::classify(packet) {
                    Some(Echo::Reply {
                        ident: echo::PROBE_IDENT,
                    }) if self.idle_probe.is_some() => {
                        // The answer to our idle probe: it has done its work (`authenticated`).
                        self.counters.idle_probe_replies += 1;
                        if let Some(p) = self.peers.get_mut(slot) {
                            p.probe_misses = 0;
                        }
                        return Received::Done;
                    }
                    Some(Echo::Request)
                        if packet.len() <= echo::MAX_ECHO_LEN
                            && self.routes.lookup(flow.dst).is_none() =>
                    {
                        let mut copy = [0u8; echo::MAX_ECHO_LEN];
                        let n = packet.len();
                        copy[..n].copy_from_slice(packet);
                        return self.answer_echo(slot, &mut copy[..n], out);
                    }
                    _ => {}
                }
                let Some(packet) = out.get_mut(range) else {
                    return self.dropped_rx(DropReason::BufferTooSmall);
                };
                self.counters.packets_received += 1;
                if let Some(p) = self.peers.get_mut(slot) {
                    p.rx_packets += 1;
                    p.rx_bytes += packet.len() as u64;
                }
                Received::Packet {
                    peer: id,
                    flow,
                    packet,
                }
            }
        }
    }

    /// Finds the peer of a handshake initiation. With one peer there is nothing to find (its
    /// `decapsulate` checks MAC1 before any DH). With several, MAC1 and the load are checked
    /// through the shared limiter before the DH of `parse_handshake_anon`.
    fn initiator(&self, from: SocketAddr, datagram: &[u8], out: &mut [u8]) -> Initiator {
        if let Some(slot) = self.single {
            return Initiator::Slot(slot);
        }
        let base = out.as_ptr().addr();
        let init = match self
            .rate_limiter
            .verify_packet(Some(from.ip()), datagram, out)
        {
            Ok(Packet::HandshakeInit(init)) => init,
            Ok(_) => return Initiator::Drop(DropReason::Garbage),
            Err(TunnResult::WriteToNetwork(cookie)) => {
                return Initiator::Cookie(span(base, cookie));
            }
            Err(TunnResult::Err(e)) => return Initiator::Drop(drop_reason(&e)),
            Err(_) => return Initiator::Drop(DropReason::Unauthenticated),
        };
        match parse_handshake_anon(&self.static_private, &self.static_public, &init) {
            Ok(half) => match self.by_key.get(&half.peer_static_public) {
                Some(&slot) => Initiator::Slot(slot),
                None => Initiator::Drop(DropReason::UnknownPeer),
            },
            Err(_) => Initiator::Drop(DropReason::Unauthenticated),
        }
    }

    /// The slot named by a receiver index, if it is one of ours.
    fn slot_of(&self, receiver_idx: u32) -> Option<usize> {
        let slot = ((receiver_idx >> 8) ^ self.salt) as usize;
        (slot < self.peers.len()).then_some(slot)
    }

    pub(super) fn dropped_rx<'o>(&mut self, reason: DropReason) -> Received<'o> {
        self.counters.count_drop(reason);
        Received::Dropped(reason)
    }

    fn dropped_tx<'o>(&mut self, reason: DropReason) -> Sent<'o> {
        self.counters.count_drop(reason);
        Sent::Dropped(reason)
    }

    /// An authenticated message from `slot` came from `from`: learn or follow the endpoint.
    fn authenticated(&mut self, slot: usize, from: SocketAddr) {
        let now = self.now;
        let Some(p) = self.peers.get_mut(slot) else {
            return;
        };
        p.note_alive(now);
        match p.endpoint {
            Some(a) if a == from => return,
            Some(_) => self.counters.roams += 1,
            None => self.counters.endpoints_learned += 1,
        }
        p.endpoint = Some(from);
    }

    fn handshake_completed(&mut self, slot: usize, now: Instant) {
        if let Some(p) = self.peers.get_mut(slot) {
            p.note_handshake(now);
            self.counters.handshakes_completed += 1;
        }
    }

    /// Counts a datagram about to leave for `slot`, by message type; notes handshake attempts
    /// (and asks for re-resolution when they keep failing).
    pub(super) fn account_emit(&mut self, slot: usize, datagram: &[u8]) {
        let now = self.now;
        if let Some(p) = self.peers.get_mut(slot) {
            p.last_sent = Some(now);
        }
        match datagram.first().copied() {
            Some(MSG_INIT) => {
                self.counters.handshake_initiations_sent += 1;
                let Some(p) = self.peers.get_mut(slot) else {
                    return;
                };
                // An initiation from boringtun's timers may come with a keepalive queued
                // behind it (persistent keepalive without a session): let flush look.
                p.maybe_queued = true;
                let resolve = p.note_initiation();
                // A second initiation before any answer: the first one timed out (boringtun
                // re-initiates only after REKEY_TIMEOUT, the table only once boringtun gave up).
                let unanswered = p.attempts.saturating_sub(1);
                if let (true, Some(endpoint)) = (unanswered > 0, p.endpoint) {
                    self.counters.handshake_timeouts += 1;
                    self.push_event(PeerEvent::HandshakeTimeout {
                        peer: PeerId(slot as u32),
                        endpoint,
                        unanswered,
                    });
                }
                if resolve {
                    self.request_resolve(slot, self.now);
                }
            }
            Some(MSG_RESPONSE) => self.counters.handshake_responses_sent += 1,
            Some(MSG_COOKIE) => self.counters.cookies_sent += 1,
            Some(MSG_DATA) => {
                let now = self.now;
                if let Some(p) = self.peers.get_mut(slot) {
                    p.note_sent(now);
                }
                let inner = datagram.len().saturating_sub(DATA_OVERHEAD);
                if inner == 0 {
                    self.counters.keepalives_sent += 1;
                } else {
                    self.counters.data_sent += 1;
                    if let Some(p) = self.peers.get_mut(slot) {
                        p.tx_packets += 1;
                        p.tx_bytes += inner as u64;
                    }
                }
            }
            _ => {}
        }
    }

    pub(super) fn push_event(&mut self, event: PeerEvent) {
        if self.events.len() < MAX_PENDING_EVENTS {
            self.events.push_back(event);
        } else {
            self.counters.events_dropped += 1;
        }
    }

    /// The oldest event not yet taken, for the runtime to log (see [`PeerEvent`]). Cheap; call
    /// after [`PeerTable::tick`].
    pub fn poll_event(&mut self) -> Option<PeerEvent> {
        self.events.pop_front()
    }

    pub(super) fn request_resolve(&mut self, slot: usize, now: Instant) {
        let Some(p) = self.peers.get_mut(slot) else {
            return;
        };
        if p.may_request_resolve(now) {
            p.resolve_pending = true;
            p.last_resolve_request = Some(now);
            self.resolve_queue.push_back(PeerId(slot as u32));
            self.counters.resolutions_requested += 1;
        }
    }

    /// After a [`Received::Transmit`] naming a peer (or [`Sent::Transmit`] of a handshake),
    /// call until `None` to drain the packets boringtun queued while there was no session.
    /// Cheap when nothing is queued. `out` must fit the longest packet ever given to
    /// [`PeerTable::send`] ([`required_buffer_len`]); a shorter one returns `None` (counted)
    /// and `tick` drains later.
    pub fn flush<'o>(&mut self, peer: PeerId, out: &'o mut [u8]) -> Option<Transmit<'o>> {
        let slot = peer.index();
        let required = required_buffer_len(self.largest_packet);
        let base = out.as_ptr().addr();
        let (to, outcome) = {
            let p = self.peers.get_mut(slot)?;
            let to = p.endpoint?;
            // Without a current session boringtun would take a packet off the queue, put it
            // back at the end and perhaps start a handshake: nothing to flush yet.
            if !p.maybe_queued || !p.has_session() {
                return None;
            }
            if out.len() < required {
                self.counters.buffer_too_small += 1;
                return None;
            }
            (to, settle(base, p.tunn.decapsulate(None, &[], &mut *out)))
        };
        match outcome {
            Outcome::Network(range) => {
                let datagram = out.get_mut(range)?;
                self.account_emit(slot, datagram);
                Some(Transmit { peer, to, datagram })
            }
            _ => {
                if let Some(p) = self.peers.get_mut(slot) {
                    p.maybe_queued = false;
                }
                None
            }
        }
    }

    /// An IP packet from the local stack: routed by destination address through the allowed
    /// IPs (longest prefix), encrypted into `out`, which must hold
    /// [`required_buffer_len`]`(packet.len())` bytes.
    ///
    /// Without a session boringtun queues the packet and the result is a handshake initiation
    /// ([`Sent::Transmit`]) or, when one is in flight already, [`Sent::Queued`].
    pub fn send<'o>(&mut self, now: Instant, packet: &[u8], out: &'o mut [u8]) -> Sent<'o> {
        self.now = now;
        if out.len() < required_buffer_len(packet.len()) {
            return self.dropped_tx(DropReason::BufferTooSmall);
        }
        let flow = match Flow::parse(packet) {
            Ok(flow) => flow,
            Err(FlowError::Fragment) => return self.dropped_tx(DropReason::Fragment),
            Err(_) => return self.dropped_tx(DropReason::Malformed),
        };
        let Some(id) = self.routes.lookup(flow.dst) else {
            return self.dropped_tx(DropReason::NoRoute);
        };
        let slot = id.index();
        let Some(p) = self.peers.get_mut(slot) else {
            return self.dropped_tx(DropReason::NoRoute);
        };
        let Some(to) = p.endpoint else {
            if p.dial {
                self.request_resolve(slot, now);
            }
            return self.dropped_tx(DropReason::NoEndpoint);
        };
        p.refresh_if_stale();
        self.largest_packet = self.largest_packet.max(packet.len());
        let base = out.as_ptr().addr();
        let outcome = settle(base, p.tunn.encapsulate(packet, &mut *out));
        match outcome {
            Outcome::Network(range) => {
                let Some(datagram) = out.get_mut(range) else {
                    return self.dropped_tx(DropReason::BufferTooSmall);
                };
                if datagram.first() == Some(&MSG_INIT) {
                    self.counters.queued += 1;
                }
                self.account_emit(slot, datagram);
                Sent::Transmit(Transmit {
                    peer: id,
                    to,
                    datagram,
                })
            }
            // Queued; a handshake is in flight (`Done`) or could not be formatted (`Err`,
            // only for a short buffer, excluded above): the timers retry it.
            Outcome::Done | Outcome::Err(_) | Outcome::Tunnel(_) => {
                p.maybe_queued = true;
                self.counters.queued += 1;
                Sent::Queued { peer: id }
            }
        }
    }

    /// Drives timers; call every [`TICK_INTERVAL`] (returns when the next call is due).
    ///
    /// Emits, through `emit(peer, to, datagram)`: boringtun's handshake retransmissions, rekeys
    /// and keepalives; a fresh handshake for every dialed peer that has no session (boringtun
    /// gives up after 90 s; the table does not); packets still queued behind a completed
    /// handshake. Resets the shared rate limiter once per second. Peers without an endpoint
    /// cannot be sent to: their timers are left alone and a dialed one with an
    /// `endpoint_name` is queued for resolution. `out` must hold [`MIN_BUFFER_LEN`] bytes
    /// (and [`required_buffer_len`] of the longest packet sent, for the queue drain).
    pub fn tick(
        &mut self,
        now: Instant,
        out: &mut [u8],
        emit: &mut dyn FnMut(PeerId, SocketAddr, &[u8]),
    ) -> Instant {
        self.now = now;
        if now >= self.next_rate_reset {
            // boringtun resets only a limiter it owns; ours is shared.
            self.rate_limiter.reset_count();
            self.next_rate_reset = now + Duration::from_secs(1);
        }
        if out.len() < MIN_BUFFER_LEN {
            self.counters.buffer_too_small += 1;
            return now + TICK_INTERVAL;
        }
        for slot in 0..self.peers.len() {
            self.tick_peer(slot, now, out, emit);
        }
        now + TICK_INTERVAL
    }

    fn tick_peer(
        &mut self,
        slot: usize,
        now: Instant,
        out: &mut [u8],
        emit: &mut dyn FnMut(PeerId, SocketAddr, &[u8]),
    ) {
        let Some(p) = self.peers.get_mut(slot) else {
            return;
        };
        let Some(to) = p.endpoint else {
            // Nothing could be delivered: do not let boringtun run handshakes into the void
            // (its clock is refreshed before this peer's next use instead).
            p.stale = true;
            if p.dial {
                self.request_resolve(slot, now);
            }
            return;
        };
        let base = out.as_ptr().addr();
        let outcome = settle(base, p.tunn.update_timers(&mut *out));
        p.stale = false;
        // `Err(ConnectionExpired)`: boringtun gave up (or the peer was idle for 9 minutes);
        // a dialed peer gets a fresh handshake below, any other waits for traffic.
        if let Outcome::Network(range) = outcome {
            self.emit_range(slot, to, out, range, emit);
        }

        let Some(p) = self.peers.get(slot) else {
            return;
        };
        if p.dial && !p.has_session() && !p.handshake_within(now, HANDSHAKE_GRACE) {
            // Returns nothing while boringtun's own attempt is in flight.
            self.initiate(slot, out, emit, false);
        }

        if self.peers.get(slot).is_some_and(|p| p.dial) {
            self.check_liveness(slot, now, out, emit);
            self.idle_probe(slot, now, to, out, emit);
        }

        if self.peers.get(slot).is_some_and(|p| p.keepalive_due(now)) {
            self.keepalive(slot, to, out, emit);
        }

        if self.peers.get(slot).is_some_and(|p| p.maybe_queued)
            && out.len() >= required_buffer_len(self.largest_packet)
        {
            let peer = PeerId(slot as u32);
            for _ in 0..MAX_DRAIN {
                match self.flush(peer, out) {
                    Some(t) => emit(t.peer, t.to, t.datagram),
                    None => break,
                }
            }
        }
    }

    pub(super) fn emit_range(
        &mut self,
        slot: usize,
        to: SocketAddr,
        out: &[u8],
        range: Range<usize>,
        emit: &mut dyn FnMut(PeerId, SocketAddr, &[u8]),
    ) {
        if let Some(datagram) = out.get(range) {
            self.account_emit(slot, datagram);
            emit(PeerId(slot as u32), to, datagram);
        }
    }

    /// Formats a handshake initiation for `slot` and emits it. `force` starts a new one even
    /// while one is in flight (what boringtun's timers do on `REKEY_TIMEOUT`).
    pub(super) fn initiate(
        &mut self,
        slot: usize,
        out: &mut [u8],
        emit: &mut dyn FnMut(PeerId, SocketAddr, &[u8]),
        force: bool,
    ) {
        let now = self.now;
        let Some(p) = self.peers.get_mut(slot) else {
            return;
        };
        let Some(to) = p.endpoint else {
            self.counters.no_endpoint += 1;
            self.request_resolve(slot, now);
            return;
        };
        if out.len() < MIN_BUFFER_LEN {
            self.counters.buffer_too_small += 1;
            return;
        }
        p.refresh_if_stale();
        let base = out.as_ptr().addr();
        if let Outcome::Network(range) =
            settle(base, p.tunn.format_handshake_initiation(&mut *out, force))
        {
            self.emit_range(slot, to, out, range, emit);
        }
    }

    /// Starts handshakes now towards every peer with a known endpoint, and from now on keeps a
    /// session up with every peer that has an endpoint or an `endpoint_name` (those without an
    /// address yet are queued for resolution). The broker calls this once its shards listen;
    /// a pure responder never needs to.
    pub fn initiate_all(
        &mut self,
        now: Instant,
        out: &mut [u8],
        emit: &mut dyn FnMut(PeerId, SocketAddr, &[u8]),
    ) {
        self.now = now;
        self.dialing = true;
        for slot in 0..self.peers.len() {
            self.dial(slot, out, emit);
        }
    }

    /// Sends a fresh handshake initiation to `peer` now, even while one is in flight (the
    /// runtime moved the peer to another transport: the initiation in flight went where no
    /// answer will come from). Does nothing for a peer without an endpoint or not dialed.
    pub fn initiate_now(
        &mut self,
        peer: PeerId,
        now: Instant,
        out: &mut [u8],
        emit: &mut dyn FnMut(PeerId, SocketAddr, &[u8]),
    ) {
        self.now = now;
        let slot = peer.index();
        if self.peers.get(slot).is_some_and(|p| p.dial) {
            self.initiate(slot, out, emit, true);
        }
    }

    /// The next peer whose endpoint name should be (re-)resolved, with the name. DNS is I/O:
    /// the runtime resolves it and calls [`PeerTable::set_endpoint`]. Each peer is yielded at
    /// most once per [`RESOLVE_INTERVAL`](super::RESOLVE_INTERVAL).
    pub fn poll_resolve(&mut self) -> Option<(PeerId, Endpoint)> {
        while let Some(id) = self.resolve_queue.pop_front() {
            if let Some(p) = self.peers.get_mut(id.index()) {
                p.resolve_pending = false;
                if let Some(name) = &p.endpoint_name {
                    return Some((id, name.clone()));
                }
            }
        }
        None
    }

    /// Sets where `peer`'s datagrams go (a resolved name, or an operator's change). The next
    /// transmission — boringtun's next handshake retry included — goes there; a changed
    /// address restarts the count of failed handshakes. Returns whether the address changed.
    pub fn set_endpoint(&mut self, peer: PeerId, addr: SocketAddr) -> bool {
        let Some(p) = self.peers.get_mut(peer.index()) else {
            return false;
        };
        if p.endpoint == Some(addr) {
            return false;
        }
        p.endpoint = Some(addr);
        p.attempts = 0;
        true
    }

    /// A snapshot of `peer`, or `None` for a handle of another table.
    pub fn peer_status(&self, peer: PeerId) -> Option<PeerStatus> {
        self.peers.get(peer.index()).map(Peer::status)
    }

    /// The handle of the peer with this public key.
    pub fn peer_id(&self, public_key: &PublicKey) -> Option<PeerId> {
        self.by_key
            .get(public_key.as_bytes())
            .map(|&slot| PeerId(slot as u32))
    }

    /// Table-wide counters.
    pub fn counters(&self) -> &Counters {
        &self.counters
    }

    /// Every peer's handle, in configuration order.
    pub fn peers(&self) -> impl Iterator<Item = PeerId> + use<> {
        let live: Vec<PeerId> = self.peers.live().map(|s| PeerId(s as u32)).collect();
        live.into_iter()
    }

    /// Test seam: what boringtun's timers do on `REKEY_TIMEOUT` (a forced retransmission),
    /// without waiting 5 s of boringtun's own clock.
    #[cfg(test)]
    pub(super) fn retransmit_initiation(
        &mut self,
        peer: PeerId,
        now: Instant,
        out: &mut [u8],
        emit: &mut dyn FnMut(PeerId, SocketAddr, &[u8]),
    ) {
        self.now = now;
        self.initiate(peer.index(), out, emit, true);
    }

    /// Test seam: encrypts `packet` for `peer` without the checks of `send` (to deliver what
    /// a misbehaving peer could send, such as an inner fragment).
    #[cfg(test)]
    pub(super) fn seal_unchecked(&mut self, peer: PeerId, packet: &[u8]) -> Option<Vec<u8>> {
        let mut out = vec![0u8; required_buffer_len(packet.len())];
        match self
            .peers
            .get_mut(peer.index())?
            .tunn
            .encapsulate(packet, &mut out)
        {
            TunnResult::WriteToNetwork(d) => Some(d.to_vec()),
            _ => None,
        }
    }

    #[cfg(test)]
    pub(super) fn salt(&self) -> u32 {
        self.salt
    }
}

impl fmt::Debug for PeerTable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Keys and boringtun state (no Debug, key material) are left out.
        f.debug_struct("PeerTable")
            .field("peers", &self.peers)
            .field("routes", &self.routes)
            .field("counters", &self.counters)
            .field("resolve_queue", &self.resolve_queue)
            .field("largest_packet", &self.largest_packet)
            .finish_non_exhaustive()
    }
}
