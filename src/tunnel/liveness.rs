//! The table's own keepalives and the dead-session rule (see the module documentation of
//! [`crate::tunnel`]): a dialed peer that answers nothing for [`NO_REPLY_TIMEOUT`] is probed
//! with a fresh handshake, retried every 1–2 s until one completes.

use std::net::{IpAddr, SocketAddr};

use ipnet::IpNet;
use std::time::{Duration, Instant};

use super::echo;
use super::peer::Recovery;
use super::table::{Outcome, settle};
use super::{
    IDLE_PROBE_INTERVAL, IdleProbe, NO_REPLY_TIMEOUT, PeerEvent, PeerId, PeerTable, RECOVERY_RETRY,
    RestartReason,
};

impl PeerTable {
    /// Probes every dialed peer that has a session and a persistent keepalive with an ICMP
    /// echo request (see [`IdleProbe`]) once nothing authenticated came from it for
    /// [`IDLE_PROBE_INTERVAL`]; `None` turns the probe off.
    pub fn set_idle_probe(&mut self, probe: Option<IdleProbe>) {
        self.idle_probe = probe;
    }

    /// Sends our own persistent keepalive (an empty data packet) to `slot` at `to`.
    pub(super) fn keepalive(
        &mut self,
        slot: usize,
        to: SocketAddr,
        out: &mut [u8],
        emit: &mut dyn FnMut(PeerId, SocketAddr, &[u8]),
    ) {
        let Some(p) = self.peers.get_mut(slot) else {
            return;
        };
        let base = out.as_ptr().addr();
        if let Outcome::Network(range) = settle(base, p.tunn.encapsulate(&[], &mut *out)) {
            self.emit_range(slot, to, out, range, emit);
        }
    }

    /// The dead-session rule for a dialed peer (see the module documentation): a recovery in
    /// progress retries when due (and, at its first retry, reports the restart: the probe went
    /// unanswered); otherwise a packet unanswered for [`NO_REPLY_TIMEOUT`] starts one.
    pub(super) fn check_liveness(
        &mut self,
        slot: usize,
        now: Instant,
        out: &mut [u8],
        emit: &mut dyn FnMut(PeerId, SocketAddr, &[u8]),
    ) {
        let Some(p) = self.peers.get(slot) else {
            return;
        };
        match (p.recovery, p.unanswered_since) {
            (Some(r), _) if now >= r.due => {
                let due = now + self.retry_delay();
                let Some(p) = self.peers.get_mut(slot) else {
                    return;
                };
                p.recovery = Some(Recovery {
                    due,
                    reported: true,
                    ..r
                });
                if let (false, Some(endpoint)) = (r.reported, p.endpoint) {
                    self.counters.session_restarts += 1;
                    self.push_event(PeerEvent::SessionRestart {
                        peer: PeerId(slot as u32),
                        endpoint,
                        reason: r.reason,
                    });
                }
                self.initiate(slot, out, emit, true);
            }
            (None, Some(since)) => {
                let silent_for = now.saturating_duration_since(since);
                if silent_for >= NO_REPLY_TIMEOUT {
                    self.note_probe_miss(slot);
                    self.start_recovery(slot, RestartReason::NoReply { silent_for }, out, emit);
                }
            }
            _ => {}
        }
    }

    /// Sends `slot` (a dialed peer at `to`) an idle probe when it is due: the probe is on, the
    /// peer keeps a session with keepalives on, nothing we sent is waiting for an answer, no
    /// recovery is under way, and nothing authenticated came from it for
    /// [`IDLE_PROBE_INTERVAL`]. An answer clears `unanswered_since` like any authenticated
    /// packet; silence starts the dead-session rule ([`NO_REPLY_TIMEOUT`], then a handshake).
    pub(super) fn idle_probe(
        &mut self,
        slot: usize,
        now: Instant,
        to: SocketAddr,
        out: &mut [u8],
        emit: &mut dyn FnMut(PeerId, SocketAddr, &[u8]),
    ) {
        let Some(probe) = self.idle_probe else {
            return;
        };
        let Some(p) = self.peers.get_mut(slot) else {
            return;
        };
        let due = !p.probe_off
            && p.keepalive.is_some()
            && p.recovery.is_none()
            && p.unanswered_since.is_none()
            && p.has_session()
            && p.last_received
                .is_some_and(|t| now.saturating_duration_since(t) >= IDLE_PROBE_INTERVAL);
        if !due {
            return;
        }
        let Some(target) = probe_target(&p.allowed_ips, probe) else {
            return;
        };
        let mut request = [0u8; 96];
        let Some(n) = echo::request(probe.from, target, p.probe_seq, &mut request) else {
            return;
        };
        p.probe_seq = p.probe_seq.wrapping_add(1);
        let base = out.as_ptr().addr();
        let outcome = settle(base, p.tunn.encapsulate(&request[..n], &mut *out));
        if let Outcome::Network(range) = outcome {
            p.probe_outstanding = Some(target);
            self.counters.idle_probes += 1;
            self.emit_range(slot, to, out, range, emit);
        }
    }

    /// The silence that starts a recovery began with our idle probe unanswered: count it, and
    /// after two in a row (each followed by a handshake the peer answered, or the second would
    /// not have been sent) stop probing a peer that evidently does not answer echoes.
    fn note_probe_miss(&mut self, slot: usize) {
        let Some(p) = self.peers.get_mut(slot) else {
            return;
        };
        let Some(to) = p.probe_outstanding.take() else {
            return;
        };
        p.probe_misses = p.probe_misses.saturating_add(1);
        if p.probe_misses >= 2 && !p.probe_off {
            p.probe_off = true;
            self.push_event(PeerEvent::IdleProbeOff {
                peer: PeerId(slot as u32),
                to,
            });
        }
    }

    /// Probes `slot` with a fresh handshake now; until one completes it is retried every 1–2 s
    /// (and reported as a restart at the first retry).
    fn start_recovery(
        &mut self,
        slot: usize,
        reason: RestartReason,
        out: &mut [u8],
        emit: &mut dyn FnMut(PeerId, SocketAddr, &[u8]),
    ) {
        let due = self.now + self.retry_delay();
        let Some(p) = self.peers.get_mut(slot) else {
            return;
        };
        if p.endpoint.is_none() {
            return;
        }
        p.recovery = Some(Recovery {
            due,
            reason,
            reported: false,
        });
        self.counters.liveness_probes += 1;
        self.initiate(slot, out, emit, true);
    }

    /// [`RECOVERY_RETRY`] plus a random jitter of up to as much again.
    fn retry_delay(&mut self) -> Duration {
        // xorshift64: spreading retries needs no more than this.
        let mut x = self.jitter_state;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.jitter_state = x;
        let span = RECOVERY_RETRY.as_millis().max(1) as u64;
        RECOVERY_RETRY + Duration::from_millis(x % span)
    }

    /// Probes a dialed `peer` with a fresh handshake now, as after [`NO_REPLY_TIMEOUT`] of
    /// silence, for a reason the runtime saw (a failed heartbeat through the tunnel); then
    /// retries it every 1–2 s until one completes (reported as a [`PeerEvent::SessionRestart`]
    /// at the first retry). The current session keeps carrying traffic
    /// meanwhile. Does nothing (returns false) for a peer the table does not dial, one without an
    /// endpoint, or one whose recovery is already under way.
    pub fn restart_session(
        &mut self,
        peer: PeerId,
        now: Instant,
        reason: RestartReason,
        out: &mut [u8],
        emit: &mut dyn FnMut(PeerId, SocketAddr, &[u8]),
    ) -> bool {
        self.now = now;
        let slot = peer.index();
        let eligible = self
            .peers
            .get(slot)
            .is_some_and(|p| p.dial && p.endpoint.is_some() && p.recovery.is_none());
        if eligible {
            self.start_recovery(slot, reason, out, emit);
        }
        eligible
    }
}

/// Where the idle probe for a peer with `allowed` IPs goes (see [`IdleProbe`]): the preferred
/// address when the peer's allowed IPs cover it, otherwise the first host of the first entry
/// of the probe's family; `None` when the peer has none.
fn probe_target(allowed: &[IpNet], probe: IdleProbe) -> Option<IpAddr> {
    if let Some(a) = probe
        .prefer
        .filter(|a| allowed.iter().any(|n| n.contains(a)))
    {
        return Some(a);
    }
    let net = allowed
        .iter()
        .find(|n| n.addr().is_ipv4() == probe.from.is_ipv4())?;
    if net.prefix_len() == net.max_prefix_len() {
        return Some(net.addr());
    }
    Some(match net.network() {
        IpAddr::V4(a) => IpAddr::from(std::net::Ipv4Addr::from(u32::from(a).wrapping_add(1))),
        IpAddr::V6(a) => IpAddr::from(std::net::Ipv6Addr::from(u128::from(a).wrapping_add(1))),
    })
}
