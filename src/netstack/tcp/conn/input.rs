//! Segment arrival (RFC 9293 3.10.7) and the ACK processing that drives loss recovery.
//!
//! Order of checks for a synchronized connection, each able to end processing:
//! PAWS (RFC 7323) → acceptability against the receive window → RST (RFC 5961: only an exact
//! `RCV.NXT` match resets; others earn a challenge ACK) → SYN (challenge ACK) → ACK (too new:
//! ACK and drop; too old: challenge and drop) → window update → SACK / cumulative ACK, RTT,
//! RACK, recovery, congestion control → data and FIN.
//!
//! A challenge or duplicate ACK for a segment without data is rate-limited to one per
//! [`CHALLENGE_INTERVAL`]: two desynchronised ends must not ACK each other in a loop. ACKs for
//! segments with data (retransmissions whose ACK was lost, window probes) are never limited.

use std::time::{Duration, Instant};

use smoltcp::wire::{TcpControl, TcpRepr};

use super::{
    BW_ROUNDS, CloseReason, Conn, Recovery, RtxTimer, SLOW_START_LAG, State, TX_BDP_FACTOR,
    rate_interval,
};
use crate::netstack::tcp::cc::{Ack, RateSample};
use crate::netstack::tcp::prr::Prr;
use crate::netstack::tcp::rack::{DUP_THRESH, Rack};
use crate::netstack::tcp::reassembly::Placed;
use crate::netstack::tcp::scoreboard::Segment;

/// Least time between two challenge ACKs (RFC 5961 section 7).
pub(super) const CHALLENGE_INTERVAL: Duration = Duration::from_millis(500);

/// What the segments delivered by one ACK told us.
#[derive(Debug, Default)]
struct Delivery {
    /// The most recently sent delivered segment.
    newest: Option<Segment>,
    /// RTT of the most recently sent delivered segment that was never retransmitted.
    rtt: Option<Duration>,
    rtt_sent_at: Option<Instant>,
}

/// Records one delivered segment for RACK, the RTT and the delivery rate.
fn note_delivery(
    d: &mut Delivery,
    rack: &mut Rack,
    now: Instant,
    seg: &Segment,
    spurious: impl Fn(&Segment) -> bool,
) {
    rack.on_delivered(now, seg, spurious(seg));
    if seg.xmits == 1 && d.rtt_sent_at.is_none_or(|t| seg.sent_at > t) {
        d.rtt = Some(now.saturating_duration_since(seg.sent_at));
        d.rtt_sent_at = Some(seg.sent_at);
    }
    if d.newest.is_none_or(|n| seg.sent_at >= n.sent_at) {
        d.newest = Some(*seg);
    }
}

impl Conn {
    /// Processes one segment the peer sent us. Any [`TcpRepr`] is accepted; what is invalid
    /// for the state is dropped (and counted in [`Stats::dropped`](super::Stats)).
    pub fn handle_segment(&mut self, now: Instant, seg: &TcpRepr<'_>) {
        self.stats.segments_in += 1;
        if seg.src_port != self.remote.port() || seg.dst_port != self.local.port() {
            self.stats.dropped += 1;
            return;
        }
        match self.state {
            State::Closed => {}
            State::SynSent => self.on_syn_sent(now, seg),
            _ => self.on_synchronized(now, seg),
        }
    }

    fn challenge_ack(&mut self, now: Instant) {
        if self
            .last_challenge
            .is_none_or(|t| now.saturating_duration_since(t) >= CHALLENGE_INTERVAL)
        {
            self.last_challenge = Some(now);
            self.ack_now = true;
        }
    }

    /// `SYN-SENT`: wait for the SYN-ACK (or a SYN: simultaneous open).
    fn on_syn_sent(&mut self, now: Instant, seg: &TcpRepr<'_>) {
        let ack_ok = seg.ack_number.map(|a| a == self.wire_snd(0));
        if ack_ok == Some(false) {
            // An ACK for something we never sent: reset it (unless it is a reset).
            if seg.control != TcpControl::Rst {
                if let Some(a) = seg.ack_number {
                    self.rst_pending = Some((a, None));
                }
            }
            self.stats.dropped += 1;
            return;
        }
        if seg.control == TcpControl::Rst {
            if ack_ok == Some(true) {
                self.finish(CloseReason::Refused);
            }
            return;
        }
        if seg.control != TcpControl::Syn {
            self.stats.dropped += 1;
            return;
        }
        self.take_syn_options(seg);
        self.last_recv = now;
        if ack_ok == Some(true) {
            self.syn_acked(now, seg);
            self.ack_now = true;
        } else {
            // Simultaneous open: answer with SYN-ACK.
            self.state = State::SynReceived;
            self.syn_pending = true;
        }
    }

    /// Our SYN was acknowledged: the connection is established.
    fn syn_acked(&mut self, now: Instant, seg: &TcpRepr<'_>) {
        let echo = seg
            .timestamp
            .filter(|_| self.opts.timestamps && self.syn_xmits > 1)
            .and_then(|t| self.ts_age(now, t.tsecr));
        let sample = match self.syn_sent_at {
            Some(t) if self.syn_xmits == 1 => Some(now.saturating_duration_since(t)),
            _ => echo,
        };
        if let Some(rtt) = sample {
            self.rtt.on_sample(now, rtt);
        }
        self.rtt.reset_backoff();
        self.syn_pending = false;
        self.rtx_at = None;
        self.state = if self.fin_queued {
            State::FinWait1
        } else {
            State::Established
        };
        self.arm_keepalive(now);
    }

    pub(super) fn arm_keepalive(&mut self, now: Instant) {
        self.keepalive_at = match self.cfg.keep_alive {
            Some(k) if matches!(self.state, State::Established | State::CloseWait) => Some(now + k),
            _ => None,
        };
    }

    /// Every state after the handshake's first SYN: RFC 9293 3.10.7.4.
    fn on_synchronized(&mut self, now: Instant, seg: &TcpRepr<'_>) {
        if self.state == State::SynReceived
            && seg.control == TcpControl::Syn
            && seg.ack_number.is_none()
        {
            // The peer did not get our SYN-ACK and sent its SYN again.
            if seg.seq_number == self.irs {
                self.syn_pending = true;
            }
            return;
        }
        let seq = self.rcv_offset(seg.seq_number);
        let len = seg.segment_len() as i64;
        let rst = seg.control == TcpControl::Rst;

        // PAWS (RFC 7323 5): an older timestamp than the last in-order one is a stale segment.
        if self.opts.timestamps && !rst {
            if let Some(ts) = seg.timestamp {
                if (ts.tsval.wrapping_sub(self.ts_recent) as i32) < 0 {
                    self.stats.dropped += 1;
                    if len > 0 {
                        self.ack_now = true;
                    } else {
                        self.challenge_ack(now);
                    }
                    return;
                }
            }
        }

        // Acceptability: the segment must touch RCV.NXT.. RCV.NXT + RCV.WND (zero-length
        // segments at RCV.NXT always pass, so ACKs get through a closed window).
        let wnd = self.rx.free() as i64;
        let nxt = self.rcv_nxt as i64;
        let acceptable = seq <= nxt + wnd && seq + len >= nxt;
        if !acceptable {
            if rst {
                return;
            }
            self.stats.dropped += 1;
            if self.state == State::TimeWait {
                self.time_wait_until = Some(now + self.cfg.time_wait);
            }
            if len > 0 {
                if seq + len <= nxt && seq >= 0 {
                    // Old data again: report it (D-SACK).
                    self.reasm
                        .insert(self.rcv_nxt, seq as u64, (seq + len) as u64);
                }
                self.ack_now = true;
            } else {
                self.challenge_ack(now);
            }
            return;
        }

        // RFC 7323 4.3: remember the timestamp of the segment at the left window edge.
        if let Some(ts) = seg.timestamp {
            if self.opts.timestamps && seq <= self.last_ack_sent as i64 {
                self.ts_recent = ts.tsval;
            }
        }

        if rst {
            if seq == nxt {
                self.finish(CloseReason::Reset);
            } else {
                self.challenge_ack(now);
            }
            return;
        }
        if seg.control == TcpControl::Syn {
            // RFC 5961 4.2.
            self.challenge_ack(now);
            return;
        }
        let Some(ack) = seg.ack_number else {
            self.stats.dropped += 1;
            return;
        };
        self.last_recv = now;
        if self.keepalive_at.is_some() {
            self.arm_keepalive(now);
        }

        if self.state == State::SynReceived {
            if self.snd_offset(ack.0 as u32) != 0 {
                self.rst_pending = Some((ack, None));
                self.stats.dropped += 1;
                return;
            }
            self.syn_acked(now, seg);
            self.snd_wnd = u64::from(seg.window_len) << self.opts.snd_shift;
            self.max_snd_wnd = self.max_snd_wnd.max(self.snd_wnd);
            self.snd_wl1 = seq;
            self.snd_wl2 = 0;
        }

        if !self.process_ack(now, seg, seq, ack.0 as u32) {
            return;
        }
        if self.state == State::Closed || (self.state == State::TimeWait && len == 0) {
            return;
        }
        if !seg.payload.is_empty() || seg.control == TcpControl::Fin {
            self.handle_data(now, seg, seq);
        }
    }

    /// The ACK field: window update, SACK and cumulative ACK, loss detection and congestion
    /// control. Returns `false` when the segment must be dropped.
    fn process_ack(&mut self, now: Instant, seg: &TcpRepr<'_>, seq: i64, ack: u32) -> bool {
        let a = self.snd_offset(ack);
        let una = self.sb.una();
        let nxt = self.sb.nxt();
        if a > nxt as i64 {
            // Acknowledges something never sent.
            self.stats.dropped += 1;
            self.challenge_ack(now);
            return false;
        }
        let oldest = una as i64 - self.max_snd_wnd.max(65535) as i64;
        if a < oldest {
            // RFC 5961 5.2: far below SND.UNA, a blind injection or a very stale segment.
            self.stats.dropped += 1;
            self.challenge_ack(now);
            return false;
        }
        if a < una as i64 {
            // An old duplicate: the data may still be new.
            return true;
        }
        let a = a as u64;

        // Window update (RFC 9293 3.10.7.4, fifth check).
        let window = u64::from(seg.window_len) << self.opts.snd_shift;
        let mut window_changed = false;
        if self.snd_wl1 < seq || (self.snd_wl1 == seq && self.snd_wl2 <= a) {
            window_changed = window != self.snd_wnd;
            self.snd_wnd = window;
            self.max_snd_wnd = self.max_snd_wnd.max(window);
            self.snd_wl1 = seq;
            self.snd_wl2 = a;
            if window > 0 && matches!(self.rtx_at, Some((_, RtxTimer::Persist))) {
                self.rtx_at = None;
                self.persist_backoff = 0;
            }
        }
        self.on_ack(now, seg, a, window_changed);
        true
    }

    /// Loss recovery on one acceptable ACK (RFC 6675 / RFC 8985 / RFC 6937 / RFC 6298).
    fn on_ack(&mut self, now: Instant, seg: &TcpRepr<'_>, a: u64, window_changed: bool) {
        let prior_una = self.sb.una();
        let prior_pipe = self.sb.pipe();
        let nxt = self.sb.nxt();

        // SACK blocks as offsets; the first may be a D-SACK (RFC 2883 4).
        let mut blocks = [(0u64, 0u64); 3];
        let mut nblocks = 0;
        let mut dsack: Option<(u64, u64)> = None;
        if self.opts.sack {
            let ranges = seg.sack_ranges;
            for (i, r) in ranges.iter().enumerate() {
                let Some((l, r)) = *r else { continue };
                let (s, e) = (self.snd_offset(l), self.snd_offset(r));
                if s < 0 || s >= e || e > nxt as i64 {
                    continue;
                }
                let (s, e) = (s as u64, e as u64);
                if i == 0 {
                    let inside_next = ranges[1].is_some_and(|(l2, r2)| {
                        let (s2, e2) = (self.snd_offset(l2), self.snd_offset(r2));
                        s2 <= s as i64 && e as i64 <= e2
                    });
                    if e <= a || inside_next {
                        dsack = Some((s, e));
                        self.stats.dsacks += 1;
                        continue;
                    }
                }
                if s >= a {
                    blocks[nblocks] = (s, e);
                    nblocks += 1;
                }
            }
        }

        // Deliveries.
        let mut d = Delivery::default();
        let min_rtt = self.rtt.min_rtt().unwrap_or(Duration::ZERO);
        let echo = seg
            .timestamp
            .filter(|t| self.opts.timestamps && t.tsecr != 0)
            .map(|t| t.tsecr);
        // A retransmitted segment delivered sooner than any RTT seen may be its earlier
        // transmission arriving late: then it says nothing about time (RFC 8985 6.2 step 2).
        // The RFC's other test, a timestamp echo older than the retransmission, is not used: a
        // receiver echoes the timestamp of the last *in-order* segment (RFC 7323 4.3), so a
        // retransmission that lands above a hole always carries an older echo, and RACK would
        // never learn from the very probes meant to trigger it. Linux omits it likewise.
        let spurious = |s: &Segment| now.saturating_duration_since(s.sent_at) < min_rtt;
        // For the cumulative part the echo test is sound: the echo is the timestamp of the
        // segment that moved `RCV.NXT`, so an echo older than a retransmission it covers means
        // an earlier copy was delivered (after a spurious timeout, the originals' ACKs).
        let echoed_before = echo.and_then(|e| self.ts_sent_before(now, e));
        let cum_spurious =
            |s: &Segment| spurious(s) || echoed_before.is_some_and(|t| t <= s.sent_at);
        // In offset order (cumulative ACK first, then the blocks from the lowest): RACK takes a
        // segment delivered below the highest one delivered *before this ACK* as reordered.
        let acked = if a > prior_una {
            self.sb.ack(a, |seg| {
                note_delivery(&mut d, &mut self.rack, now, seg, cum_spurious)
            })
        } else {
            Default::default()
        };
        let mut newly = 0;
        blocks[..nblocks].sort_unstable();
        for &(s, e) in &blocks[..nblocks] {
            newly += self.sb.sack(s, e, |seg| {
                note_delivery(&mut d, &mut self.rack, now, seg, spurious)
            });
        }
        newly += acked.newly;

        // Free acknowledged bytes.
        let data_acked = a.min(self.written) - prior_una.min(self.written);
        self.tx.consume(data_acked as usize);
        if self.tx.is_empty() {
            self.tx.release_if_idle(self.cfg.buffer_keep);
        }

        // RTT (RFC 6298 with Karn's rule; timestamps disambiguate retransmissions).
        let mut sample = d.rtt;
        if a > prior_una {
            self.rtt.reset_backoff();
            self.rto_count = 0;
            self.dupacks = 0;
            if sample.is_none() {
                sample = echo.and_then(|e| self.ts_age(now, e));
            }
        }
        if let Some(r) = sample {
            self.rtt.on_sample(now, r);
        }

        // Delivery rate.
        let mut rate = None;
        if newly > 0 {
            self.delivered += newly;
            self.delivered_at = now;
            if self.app_limited_until != 0 && self.delivered > self.app_limited_until {
                self.app_limited_until = 0;
            }
            if let Some(n) = d.newest {
                self.first_sent_at = n.sent_at;
                let interval = rate_interval(now, &n);
                if !interval.is_zero() {
                    rate = Some(RateSample {
                        delivered: self.delivered - n.delivered,
                        interval,
                        prior_delivered: n.delivered,
                        app_limited: n.app_limited,
                    });
                }
            }
        }

        // Round trips, for "was the window used".
        let round_start = a >= self.round_end;
        if round_start {
            self.cwnd_limited_prev = self.cwnd_limited;
            self.cwnd_limited = false;
            self.round_end = self.sb.nxt();
        }

        // Peers without SACK: duplicate ACKs (RFC 5681) and partial ACKs (RFC 6582).
        let dup = a == prior_una
            && newly == 0
            && seg.payload.is_empty()
            && seg.control != TcpControl::Fin
            && !window_changed
            && self.sb.outstanding() > 0;
        if !self.opts.sack {
            if dup {
                self.dupacks += 1;
                if self.dupacks == DUP_THRESH {
                    self.sb.mark_lost(0);
                }
            } else if a > prior_una {
                if let Recovery::Fast { point } = self.recovery {
                    if a < point {
                        self.sb.mark_lost(0);
                    }
                }
            }
        }

        self.check_rto_undo(now, a, prior_una, echoed_before, dsack);

        // Leave recovery once everything outstanding at its start is acknowledged.
        let mut exited = false;
        match self.recovery {
            Recovery::Fast { point } if a >= point => {
                self.cc.on_recovery_end(now);
                self.recovery = Recovery::Open;
                exited = true;
            }
            Recovery::Timeout { point } if a >= point => {
                self.recovery = Recovery::Open;
                exited = true;
                if let Some(u) = self.rto_undo.as_mut() {
                    u.ended = Some(self.sb.nxt());
                }
            }
            _ => {}
        }

        // RACK (RFC 8985 6.2 steps 4 and 5).
        self.rack.update_reo_wnd(
            self.sb.una(),
            self.sb.nxt(),
            dsack.is_some(),
            exited,
            self.recovery != Recovery::Open,
            self.sb.sacked_segments(),
            self.rtt.min_rtt(),
            self.rtt.srtt(),
        );
        let mut lost = 0;
        if self.opts.sack {
            let pipe = self.sb.pipe();
            let (marked, wait) = self.rack.detect_loss(now, &mut self.sb);
            if marked > 0 {
                self.cc.on_lost(now, pipe.saturating_sub(self.sb.pipe()));
            }
            lost = marked;
            self.reorder_at = wait.map(|w| now + w);
        }

        let pure_dup = a == prior_una && newly == 0 && seg.payload.is_empty() && !window_changed;
        self.process_tlp_ack(now, dsack, pure_dup, prior_pipe);

        if self.recovery == Recovery::Open && self.sb.next_lost().is_some() {
            self.enter_fast_recovery(now, prior_pipe);
        }

        let mss = u64::from(self.opts.smss);
        match self.recovery {
            Recovery::Fast { .. } if !self.cc.keeps_window_in_recovery() => {
                let reported = if !self.opts.sack && dup { mss } else { newly };
                let pipe = self.sb.pipe();
                self.recovery_cwnd = pipe + self.prr.on_ack(reported, pipe, mss);
            }
            _ if newly > 0 => {
                let cwnd = self.cc.window();
                // RFC 7661: only a window that was used may grow. In slow start that means a
                // flight of at least half the grown window in this or the last round trip
                // (Linux's rule, which lets applications that write in bursts ramp up);
                // afterwards, the window having been full in this or the last round trip.
                let cwnd_limited = if cwnd < self.cc.ssthresh() {
                    cwnd + newly <= 2 * self.max_pipe.max(self.max_pipe_prev)
                } else {
                    self.cwnd_limited || self.cwnd_limited_prev
                };
                let ack = Ack {
                    bytes: newly,
                    rtt: sample,
                    min_rtt: self.rtt.min_rtt(),
                    prior_in_flight: prior_pipe,
                    cwnd_limited,
                    round_start,
                    rate,
                    lost,
                };
                self.cc.on_ack(now, &ack);
            }
            _ => {}
        }
        self.stats.max_cwnd = self.stats.max_cwnd.max(self.cwnd());

        // The send buffer follows the measured bandwidth-delay product, not the window alone:
        // twice the smaller of the congestion window and twice the BDP (see `tx_target`). On
        // a loss-free path with a deep queue the window keeps growing into the queue; a buffer
        // sized from it would let megabytes wait in front of a 0.05 ms path (issue 19's LAN
        // bulk p99). The BDP (largest recent delivery rate × minimum RTT) stays at what the
        // path holds, while a long fat path still grows the buffer to its BDP and beyond.
        if round_start {
            self.rounds += 1;
            self.bw_rounds[(self.rounds % BW_ROUNDS as u64) as usize] = 0;
        }
        if let Some(rs) = rate {
            self.on_rate_sample(&rs);
        }
        let target = usize::try_from(self.tx_target())
            .unwrap_or(usize::MAX)
            .clamp(self.cfg.tx_buffer, self.cfg.tx_buffer_max);
        self.tx.grow_limit(target);
        self.stats.max_tx_buffer = self.stats.max_tx_buffer.max(self.tx.limit() as u64);

        // Timers.
        if self.sb.outstanding() == 0 {
            if !matches!(self.rtx_at, Some((_, RtxTimer::Persist))) {
                self.rtx_at = None;
            }
            self.reorder_at = None;
        } else if a > prior_una {
            self.arm_rtx(now);
        }

        if acked.fin {
            self.on_fin_acked(now);
        }
    }

    /// Spurious retransmission timeouts (RFC 3522 / RFC 4015, as Linux undoes them): during
    /// the timeout's recovery, an ACK advancing `SND.UNA` with an echo older than the timeout
    /// answers an original transmission (the ACK path stalled, nothing was lost); and once
    /// D-SACKs have reported every retransmission since the timeout as a duplicate (the ACK
    /// that would have stopped it was lost), nothing was lost either. Then the controller
    /// gets its window and threshold back, the loss marks go (no go-back-N of delivered
    /// data; RACK marks again what really is lost), and an interrupted fast recovery resumes.
    /// The record lives until one round after the timeout's recovery ended.
    fn check_rto_undo(
        &mut self,
        now: Instant,
        a: u64,
        prior_una: u64,
        echoed_before: Option<Instant>,
        dsack: Option<(u64, u64)>,
    ) {
        let Some(mut u) = self.rto_undo.take() else {
            return;
        };
        if u.ended.is_some_and(|end| a > end) {
            return;
        }
        let timeout = matches!(self.recovery, Recovery::Timeout { .. });
        let eifel = timeout && a > prior_una && echoed_before.is_some_and(|t| t <= u.at);
        let mut dsacked = false;
        if let Some((s, e)) = dsack.filter(|_| u.retrans > 0) {
            let segs = (e - s).div_ceil(u64::from(self.opts.smss).max(1));
            u.retrans = u
                .retrans
                .saturating_sub(u32::try_from(segs).unwrap_or(u32::MAX));
            dsacked = u.retrans == 0;
        }
        if !eifel && !dsacked {
            self.rto_undo = Some(u);
            return;
        }
        self.stats.spurious_rtos += 1;
        self.sb.clear_lost();
        let una = self.sb.una();
        match u.fast_point {
            Some(point) if timeout && una < point => {
                self.cc.on_rto_undone(now, u.cwnd, u.ssthresh);
                self.recovery = Recovery::Fast { point };
            }
            // The interrupted fast recovery is over: its reduction stands.
            Some(_) => self.cc.on_rto_undone(now, u.ssthresh, u.ssthresh),
            None => self.cc.on_rto_undone(now, u.cwnd, u.ssthresh),
        }
        if timeout && una >= u.fast_point.unwrap_or(0) {
            self.recovery = Recovery::Open;
        }
    }

    /// The tail loss probe episode on one ACK (RFC 8985 7.4.2, decided as Linux does). Once
    /// `SND.UNA` reaches the probe's end: a probe of new data, a D-SACK for the probed segment
    /// or a pure duplicate ACK (both copies arrived) end the episode with nothing lost; an ACK
    /// *beyond* the probe without that D-SACK means the probe repaired a loss: the window is
    /// cut once, without a recovery. An ACK reaching exactly the probe's end decides nothing:
    /// it may be the original's ACK, held by the receiver's delayed-ACK timer (Linux: 40 ms)
    /// longer than the RTT so that the probe fired; the probe's D-SACK is then still on its way
    /// (issue 19: at 15 ms × 3 % every such crossing cost 30 % of the window). The episode
    /// stays open, and no new probe goes out, until something decides it.
    fn process_tlp_ack(
        &mut self,
        now: Instant,
        dsack: Option<(u64, u64)>,
        pure_dup: bool,
        prior_pipe: u64,
    ) {
        let Some(mut t) = self.tlp.take() else { return };
        if dsack.is_some_and(|(s, e)| s <= t.probed.0 && t.probed.1 <= e) {
            t.dsacked = true;
        }
        let una = self.sb.una();
        if una < t.end {
            self.tlp = Some(t);
        } else if !t.retransmission || t.dsacked || (una == t.end && pure_dup) {
            // Nothing was lost.
        } else if una > t.end {
            if self.recovery == Recovery::Open {
                // The probe repaired a loss: react as to one loss, without a recovery.
                self.cc.on_congestion_event(now, prior_pipe);
                self.cc.on_recovery_end(now);
                self.stats.tlp_recoveries += 1;
            }
        } else {
            self.tlp = Some(t);
        }
    }

    /// Feeds one delivery-rate sample to the send buffer's bandwidth filter. Samples shorter
    /// than the minimum RTT (ACK compression) are skipped, as are application-limited samples
    /// below the current maximum (they underestimate the path).
    fn on_rate_sample(&mut self, rs: &RateSample) {
        if self.rtt.min_rtt().is_some_and(|m| rs.interval < m) {
            return;
        }
        let bw = rs.bytes_per_sec();
        if rs.app_limited && bw < self.max_bw() {
            return;
        }
        let slot = &mut self.bw_rounds[(self.rounds % BW_ROUNDS as u64) as usize];
        *slot = (*slot).max(bw);
    }

    /// The largest delivery rate (bytes/s) of the last [`BW_ROUNDS`] rounds.
    fn max_bw(&self) -> u64 {
        self.bw_rounds.iter().copied().max().unwrap_or(0)
    }

    /// What the send buffer may grow to (before the configured bounds):
    /// `TX_BDP_FACTOR × min(cwnd, SLOW_START_LAG × bandwidth × min RTT)`; 0 until the RTT is
    /// measured. With both factors 2 this is Linux's twice-the-window while the window tracks
    /// the path, and at most four BDPs when the window only fills a queue.
    fn tx_target(&self) -> u64 {
        let Some(min_rtt) = self.rtt.min_rtt() else {
            return 0;
        };
        let bdp = u128::from(self.max_bw()) * min_rtt.as_micros() / 1_000_000;
        let bdp = u64::try_from(bdp).unwrap_or(u64::MAX);
        self.cc
            .window()
            .min(bdp.saturating_mul(SLOW_START_LAG))
            .saturating_mul(TX_BDP_FACTOR)
    }

    /// The first loss of a window: cut the window and start PRR.
    pub(super) fn enter_fast_recovery(&mut self, now: Instant, prior_pipe: u64) {
        self.rto_undo = None;
        self.cc.on_congestion_event(now, prior_pipe);
        self.prr = Prr::start(prior_pipe, self.cc.ssthresh());
        self.recovery = Recovery::Fast {
            point: self.sb.nxt(),
        };
        let pipe = self.sb.pipe();
        self.recovery_cwnd = pipe;
        self.stats.recoveries += 1;
        self.tlp_pending = false;
        if matches!(self.rtx_at, Some((_, RtxTimer::Probe))) {
            self.rtx_at = Some((now + self.rtt.rto(), RtxTimer::Rto));
        }
    }

    /// Our FIN was acknowledged.
    fn on_fin_acked(&mut self, now: Instant) {
        match self.state {
            State::FinWait1 => self.state = State::FinWait2,
            State::Closing => self.enter_time_wait(now),
            State::LastAck => self.finish(CloseReason::Done),
            _ => {}
        }
    }

    pub(super) fn enter_time_wait(&mut self, now: Instant) {
        self.state = State::TimeWait;
        self.time_wait_until = Some(now + self.cfg.time_wait);
        self.rtx_at = None;
        self.reorder_at = None;
        self.keepalive_at = None;
        self.tlp = None;
        self.tlp_pending = false;
        self.tx = crate::netstack::tcp::ring::Ring::new(0);
    }

    /// Payload and FIN (RFC 9293 3.10.7.4, seventh and eighth checks).
    fn handle_data(&mut self, now: Instant, seg: &TcpRepr<'_>, seq: i64) {
        let fin = seg.control == TcpControl::Fin;
        let payload = seg.payload;
        if !self.state_receives() {
            // The peer already sent its FIN: anything now is a retransmission.
            let end = seq + payload.len() as i64;
            if !payload.is_empty() && seq >= 0 && end as u64 <= self.rcv_nxt {
                self.reasm.insert(self.rcv_nxt, seq as u64, end as u64);
            }
            self.ack_now = true;
            if self.state == State::TimeWait {
                self.time_wait_until = Some(now + self.cfg.time_wait);
            }
            return;
        }
        let len = payload.len() as u64;
        let start = seq.max(0) as u64;
        let skip = (start as i64 - seq) as u64;
        let end = start + len.saturating_sub(skip);
        // What fits: the ring's limit, and nothing past a FIN already seen.
        let read_from = self.rcv_nxt - self.rx.len() as u64;
        let room_end = read_from + self.rx.limit() as u64;
        let take_end = end.min(room_end).min(self.peer_fin.unwrap_or(u64::MAX));
        let fin_taken = fin && take_end == end;

        if len > 0 {
            self.rcv_mss = self.rcv_mss.max(len).min(u64::from(u16::MAX));
            if take_end <= start {
                // Beyond the window (or a zero window): ACK so the peer learns our window.
                if end <= self.rcv_nxt {
                    self.reasm.insert(self.rcv_nxt, start, end);
                }
                self.ack_now = true;
            } else {
                let had_holes = !self.reasm.is_empty();
                match self.reasm.insert(self.rcv_nxt, start, take_end) {
                    Placed::InOrder { next } => {
                        let from = self.rcv_nxt.max(start);
                        let bytes = &payload[(skip + from - start) as usize..]
                            [..(take_end - from) as usize];
                        self.rx.write_at((from - read_from) as usize, bytes);
                        self.rx.commit((next - self.rcv_nxt) as usize);
                        let got = next - self.rcv_nxt;
                        self.rcv_nxt = next;
                        self.unacked += got;
                        // At once: filling a hole, leaving one, every second full segment,
                        // or no delay configured. Else within the ACK delay.
                        if had_holes
                            || !self.reasm.is_empty()
                            || self.unacked >= 2 * self.rcv_mss
                            || self.cfg.ack_delay.is_none()
                        {
                            self.ack_now = true;
                        } else if let Some(delay) = self.cfg.ack_delay {
                            self.ack_at.get_or_insert(now + delay);
                        }
                    }
                    Placed::OutOfOrder => {
                        let from = start.max(self.rcv_nxt);
                        let bytes = &payload[(skip + from - start) as usize..]
                            [..(take_end - from) as usize];
                        self.rx.write_at((from - read_from) as usize, bytes);
                        self.stats.out_of_order += 1;
                        self.ack_now = true;
                        self.grow_for_out_of_order(take_end - read_from);
                    }
                    Placed::Duplicate | Placed::Refused => self.ack_now = true,
                }
            }
            self.sample_receive_rtt(now, seg);
        }
        if fin_taken && self.peer_fin.is_none() {
            self.peer_fin = Some(end);
        }
        if fin {
            self.ack_now = true;
        }
        self.check_peer_fin(now);
    }

    /// Consumes the peer's FIN once every byte before it has arrived.
    fn check_peer_fin(&mut self, now: Instant) {
        let Some(f) = self.peer_fin else { return };
        if self.rcv_nxt != f {
            return;
        }
        self.rcv_nxt += 1;
        self.ack_now = true;
        match self.state {
            State::Established => self.state = State::CloseWait,
            State::FinWait1 => {
                if self.fin_queued && self.sb.una() >= self.send_end() {
                    self.enter_time_wait(now);
                } else {
                    self.state = State::Closing;
                }
            }
            State::FinWait2 => self.enter_time_wait(now),
            _ => {}
        }
        self.keepalive_at = None;
        self.arm_keepalive(now);
    }

    /// A receive-side RTT sample for buffer autotuning: the age of the timestamp the peer
    /// echoes, or without timestamps the time one window of data takes to arrive.
    fn sample_receive_rtt(&mut self, now: Instant, seg: &TcpRepr<'_>) {
        let sample = if self.opts.timestamps {
            seg.timestamp
                .filter(|t| t.tsecr != 0)
                .and_then(|t| self.ts_age(now, t.tsecr))
        } else {
            match self.tune.probe {
                Some((edge, since)) if self.rcv_nxt >= edge => {
                    self.tune.probe = None;
                    Some(now.saturating_duration_since(since))
                }
                Some(_) => None,
                None => {
                    self.tune.probe = Some((self.rcv_nxt + self.rx.free() as u64, now));
                    None
                }
            }
        };
        if let Some(s) = sample {
            let s = s.max(Duration::from_millis(1));
            self.tune.rtt = Some(match self.tune.rtt {
                Some(old) if s >= old => (old * 7 + s) / 8,
                _ => s,
            });
        }
    }
}
