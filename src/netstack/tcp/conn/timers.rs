//! Timers: one retransmission slot (RTO, tail loss probe or zero-window probe — only one runs at
//! a time), the RACK reordering timer, the delayed ACK, keep-alive, the idle timeout and
//! `TIME-WAIT`. [`Conn::poll_timeout`] is the earliest of them; [`Conn::on_timeout`] runs every
//! one that is due.

use std::time::{Duration, Instant};

use super::{CloseReason, Conn, Recovery, RtoUndo, RtxTimer, State};
use crate::netstack::tcp::rack::probe_timeout;

impl Conn {
    /// The next instant [`on_timeout`](Conn::on_timeout) has work, if any.
    pub fn poll_timeout(&self) -> Option<Instant> {
        [
            self.rtx_at.map(|(t, _)| t),
            self.reorder_at,
            self.ack_at,
            self.keepalive_at,
            self.time_wait_until,
            self.idle_deadline(),
            self.pace_wake,
        ]
        .into_iter()
        .flatten()
        .min()
    }

    fn idle_deadline(&self) -> Option<Instant> {
        match (self.cfg.idle_timeout, self.state) {
            (_, State::Closed | State::TimeWait) | (None, _) => None,
            (Some(t), _) => Some(self.last_recv + t),
        }
    }

    /// Runs every timer due at `now`. Calling it early does nothing.
    pub fn on_timeout(&mut self, now: Instant) {
        if self.state == State::Closed {
            return;
        }
        if self.time_wait_until.is_some_and(|t| t <= now) {
            self.finish(CloseReason::Done);
            return;
        }
        if self.idle_deadline().is_some_and(|t| t <= now) {
            self.reset(CloseReason::TimedOut);
            return;
        }
        if self.ack_at.is_some_and(|t| t <= now) {
            self.ack_at = None;
            self.ack_now = true;
        }
        if self.pace_wake.is_some_and(|t| t <= now) {
            // The paced data goes out on the next `poll_transmit`.
            self.pace_wake = None;
        }
        if self.reorder_at.is_some_and(|t| t <= now) {
            self.reorder_at = None;
            self.on_reorder_timeout(now);
        }
        if let Some((at, kind)) = self.rtx_at {
            if at <= now {
                self.rtx_at = None;
                match kind {
                    RtxTimer::Rto => self.on_rto(now),
                    RtxTimer::Probe => self.on_probe_timeout(now),
                    RtxTimer::Persist => self.on_persist_timeout(now),
                }
            }
        }
        if self.keepalive_at.is_some_and(|t| t <= now) {
            if self.sb.outstanding() == 0 && self.tx.is_empty() {
                self.probe_pending = true;
            }
            self.keepalive_at = self.cfg.keep_alive.map(|k| now + k);
        }
    }

    /// Resets the connection for `reason` (an RST goes out if the peer may know us).
    pub(super) fn reset(&mut self, reason: CloseReason) {
        if !matches!(self.state, State::SynSent | State::TimeWait | State::Closed) {
            let ack = Some(self.wire_rcv(self.rcv_nxt));
            self.rst_pending = Some((self.wire_snd(self.sb.nxt()), ack));
        }
        self.finish(reason);
    }

    /// (Re)starts the retransmission slot after new data went out or an ACK moved `SND.UNA`:
    /// a tail loss probe when RFC 8985 7.2 allows one, else the RTO.
    pub(super) fn arm_rtx(&mut self, now: Instant) {
        if self.sb.outstanding() == 0 {
            self.rtx_at = None;
            return;
        }
        let rto = self.rtt.rto();
        let probe_ok = self.opts.sack
            && self.recovery == Recovery::Open
            && self.sb.sacked_segments() == 0
            && self.tlp.is_none();
        self.rtx_at = Some(if probe_ok {
            let pto = probe_timeout(self.rtt.srtt(), self.sb.len() == 1, rto);
            (now + pto, RtxTimer::Probe)
        } else {
            (now + rto, RtxTimer::Rto)
        });
    }

    /// Zero-window probe interval: the RTO, doubled per unanswered probe.
    pub(super) fn persist_interval(&self) -> Duration {
        let factor = 1u32 << self.persist_backoff.min(16);
        self.rtt
            .base_rto()
            .saturating_mul(factor)
            .min(self.cfg.max_rto)
    }

    fn on_rto(&mut self, now: Instant) {
        match self.state {
            State::SynSent | State::SynReceived => {
                if self.syn_xmits >= self.cfg.syn_retries {
                    self.reset(CloseReason::TimedOut);
                    return;
                }
                self.rtt.back_off();
                self.syn_pending = true;
            }
            _ => {
                if self.sb.outstanding() == 0 {
                    return;
                }
                self.rto_count += 1;
                if self.rto_count > self.cfg.max_retransmits {
                    self.reset(CloseReason::TimedOut);
                    return;
                }
                self.stats.rtos += 1;
                // The peer acknowledged up to a segment it had SACKed and no further: it
                // reneged (dropped out-of-order data), so everything must go again.
                if self.sb.get(0).is_some_and(|s| s.is_sacked()) {
                    self.sb.clear_sacks();
                    self.stats.renegings += 1;
                }
                let new_episode = self.recovery == Recovery::Open;
                if !matches!(self.recovery, Recovery::Timeout { .. }) {
                    // The first timeout of an episode: remember what it changes.
                    self.rto_undo = Some(RtoUndo {
                        at: now,
                        cwnd: self.cc.window(),
                        ssthresh: self.cc.ssthresh(),
                        fast_point: match self.recovery {
                            Recovery::Fast { point } => Some(point),
                            _ => None,
                        },
                        retrans: 0,
                        ended: None,
                    });
                }
                self.cc.on_rto(now, new_episode);
                self.sb.mark_all_lost();
                self.recovery = Recovery::Timeout {
                    point: self.sb.nxt(),
                };
                self.rtt.back_off();
                self.tlp = None;
                self.tlp_pending = false;
                self.reorder_at = None;
                self.dupacks = 0;
                self.rtx_at = Some((now + self.rtt.rto(), RtxTimer::Rto));
            }
        }
    }

    fn on_probe_timeout(&mut self, now: Instant) {
        if self.sb.outstanding() == 0 {
            return;
        }
        self.tlp_pending = true;
        // Armed now so that an unsendable probe still leaves the RTO running.
        self.rtx_at = Some((now + self.rtt.rto(), RtxTimer::Rto));
    }

    fn on_persist_timeout(&mut self, now: Instant) {
        if self.sb.outstanding() > 0 || self.sb.nxt() >= self.send_end() {
            return;
        }
        self.probe_pending = true;
        self.persist_backoff = self.persist_backoff.saturating_add(1);
        self.rtx_at = Some((now + self.persist_interval(), RtxTimer::Persist));
    }

    fn on_reorder_timeout(&mut self, now: Instant) {
        if !self.opts.sack {
            return;
        }
        let prior_pipe = self.sb.pipe();
        let (lost, wait) = self.rack.detect_loss(now, &mut self.sb);
        self.reorder_at = wait.map(|w| now + w);
        if lost > 0 {
            self.cc
                .on_lost(now, prior_pipe.saturating_sub(self.sb.pipe()));
        }
        if lost > 0 && self.recovery == Recovery::Open {
            self.enter_fast_recovery(now, prior_pipe);
        }
        if let Recovery::Fast { .. } = self.recovery {
            let pipe = self.sb.pipe();
            let mss = u64::from(self.opts.smss);
            self.recovery_cwnd = pipe + self.prr.on_ack(0, pipe, mss);
        }
    }
}
