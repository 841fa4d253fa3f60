//! The table's own keepalives and the dead-session rule (see the module documentation of
//! [`crate::tunnel`]): a dialed peer that answers nothing for [`NO_REPLY_TIMEOUT`] is probed
//! with a fresh handshake, retried every 1–2 s until one completes.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use super::peer::Recovery;
use super::table::{Outcome, settle};
use super::{NO_REPLY_TIMEOUT, PeerEvent, PeerId, PeerTable, RECOVERY_RETRY, RestartReason};

impl PeerTable {
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
                    self.start_recovery(slot, RestartReason::NoReply { silent_for }, out, emit);
                }
            }
            _ => {}
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
