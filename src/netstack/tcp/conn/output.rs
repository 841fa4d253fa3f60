//! What to send next, written straight into the caller's buffer.
//!
//! Priority on every call: a pending RST; the SYN / SYN-ACK; a lost segment (if the window
//! allows: `pipe < cwnd`, with `cwnd` set by PRR during fast recovery); a tail loss probe; new
//! data (window, Nagle and sender-side silly-window rules); a zero-window or keep-alive probe; a
//! pure ACK (when one is due). Every segment after the handshake carries the ACK, the window,
//! the timestamp and as many SACK blocks as fit under the MTU, so a pending ACK rides on data
//! whenever there is data.

use std::time::{Duration, Instant};

use smoltcp::wire::{TcpControl, TcpRepr, TcpSeqNumber, TcpTimestampRepr};

use super::{Conn, Recovery, RtxTimer, State, Tlp, our_mss};
use crate::netstack::tcp::cc::pacing_quantum;
use crate::netstack::tcp::scoreboard::Segment;
use crate::netstack::tcp::wire;

/// Bytes the options take: timestamps (10) and `blocks` SACK blocks (2 + 8 each), padded.
fn options_len(timestamps: bool, blocks: usize) -> usize {
    let raw = if timestamps { 10 } else { 0 } + if blocks > 0 { 2 + 8 * blocks } else { 0 };
    raw.div_ceil(4) * 4
}

impl Conn {
    /// Writes the next segment to send into `buf` (an IP packet: header, TCP header, payload)
    /// and returns its length, or `None` when nothing is due. Call it until it returns `None`
    /// after every [`handle_segment`](Conn::handle_segment), [`on_timeout`](Conn::on_timeout)
    /// and application call. `buf` should hold the configured MTU; a smaller buffer holds back
    /// segments that do not fit.
    pub fn poll_transmit(&mut self, now: Instant, buf: &mut [u8]) -> Option<usize> {
        if let Some((seq, ack)) = self.rst_pending.take() {
            return self.emit_rst(buf, seq, ack);
        }
        match self.state {
            State::Closed => None,
            State::SynSent | State::SynReceived => {
                if self.syn_pending {
                    self.emit_syn(now, buf)
                } else {
                    None
                }
            }
            State::FinWait2 | State::TimeWait => self.emit_control(now, buf),
            State::Established
            | State::CloseWait
            | State::FinWait1
            | State::Closing
            | State::LastAck => self.emit_next(now, buf),
        }
    }

    fn emit_next(&mut self, now: Instant, buf: &mut [u8]) -> Option<usize> {
        if let Some(at) = self.pace_at.filter(|&t| t > now) {
            // Paced out: only ACKs and probes until `pace_at`. While data waits, the
            // connection asks to be woken half a quantum later, so that a wake-up sends a
            // burst rather than a segment (see `paced`).
            let waits = self.sb.next_lost().is_some() || self.sb.nxt() < self.send_end();
            self.pace_wake = waits.then_some(at + self.pace_slack);
            return self.emit_control(now, buf);
        }
        self.pace_wake = None;
        if let Some(i) = self.sb.next_lost() {
            if self.sb.pipe() < self.cwnd() {
                return self.retransmit(now, buf, i, false);
            }
            self.cwnd_limited = true;
            return self.emit_control(now, buf);
        }
        if self.tlp_pending {
            self.tlp_pending = false;
            if let Some(n) = self.emit_tail_probe(now, buf) {
                return Some(n);
            }
        }
        if let Some((start, end, fin)) = self.next_new_segment(now, true) {
            if let Some(n) = self.emit_new(now, buf, start, end, fin) {
                return Some(n);
            }
        }
        if self.sb.nxt() >= self.written && self.sb.pipe() < self.cwnd() {
            // Everything the application gave us is out and the window is not full: the
            // application limits this flight, and rate samples taken over it say so.
            self.app_limited_until = (self.delivered + self.sb.pipe()).max(1);
        }
        self.emit_control(now, buf)
    }

    /// Pacing, when the controller asks for a rate ([`Bbr`](crate::netstack::tcp::cc::Bbr)):
    /// after `bytes` went out the next data segment may leave `bytes / rate` later. A
    /// connection that was quiet keeps a credit of one quantum ([`pacing_quantum`]: 1 ms at
    /// the rate, at least two segments and at most 64 KiB, as Linux sizes its TSO bursts) —
    /// a token bucket one quantum deep — so that a poll (or a timer that fires late) still
    /// sends a few segments at once, never a whole window. A connection the pacer holds back
    /// is woken when half a quantum has accrued, not when the next segment is due: a wake-up
    /// per segment cost the loss-free LAN a fifth of its bulk rate in timer wake-ups (issue
    /// 19), while half a quantum still absorbs a timer that fires late by that much.
    /// Controllers without a rate (CUBIC, NewReno) stay ACK-clocked: pacing them at
    /// `gain × cwnd / SRTT` was tried and did not help on the LAN while it broke HyStart++'s
    /// per-round delay samples.
    fn paced(&mut self, now: Instant, bytes: u64) {
        let Some(rate) = self.cc.pacing_rate().filter(|&r| r > 0) else {
            self.pace_at = None;
            return;
        };
        let quantum = pacing_quantum(rate, u64::from(self.opts.smss)) as f64;
        let rate = rate as f64;
        let credit = Duration::from_secs_f64(quantum / rate);
        self.pace_slack = credit / 2;
        let floor = now.checked_sub(credit).unwrap_or(now);
        let start = self.pace_at.map_or(floor, |t| t.max(floor));
        self.pace_at = Some(start + Duration::from_secs_f64(bytes as f64 / rate));
    }

    /// Probes and pure ACKs.
    fn emit_control(&mut self, now: Instant, buf: &mut [u8]) -> Option<usize> {
        if self.probe_pending {
            self.probe_pending = false;
            // An already-acknowledged sequence number: the peer answers with an ACK that
            // carries its window (zero-window probe) or proves it is alive (keep-alive).
            let seq = TcpSeqNumber(self.wire_snd(self.sb.una()).0.wrapping_sub(1));
            let repr = self.header(now, TcpControl::None, seq);
            self.stats.probes += 1;
            return self.finish_emit(buf, repr, 0, (&[], &[]));
        }
        if self.ack_now || self.ack_at.is_some_and(|t| t <= now) {
            let seq = self.wire_snd(self.sb.nxt());
            let repr = self.header(now, TcpControl::None, seq);
            return self.finish_emit(buf, repr, 3, (&[], &[]));
        }
        None
    }

    /// The next stretch of new data (and/or the FIN) that may go out now, if any.
    fn next_new_segment(&mut self, now: Instant, respect_cwnd: bool) -> Option<(u64, u64, bool)> {
        let nxt = self.sb.nxt();
        if nxt >= self.send_end() {
            return None;
        }
        let data_left = self.written.saturating_sub(nxt);
        let smss = u64::from(self.opts.smss);
        let mut len = data_left.min(smss);
        if len > 0 {
            let usable = (self.sb.una() + self.snd_wnd).saturating_sub(nxt);
            if usable < len {
                // Sender-side silly window avoidance (RFC 9293 3.8.6.2.1): a partial segment
                // only for half the largest window seen, or when nothing is in flight.
                let ok =
                    usable > 0 && (usable * 2 >= self.max_snd_wnd || self.sb.outstanding() == 0);
                if !ok {
                    if self.sb.outstanding() == 0 && self.rtx_at.is_none() {
                        let at = now + self.persist_interval();
                        self.rtx_at = Some((at, RtxTimer::Persist));
                    }
                    return None;
                }
                len = usable;
            }
            let completes = self.fin_queued && nxt + len == self.written;
            if self.cfg.nagle && len < smss && self.sb.outstanding() > 0 && !completes {
                return None;
            }
        }
        if respect_cwnd && self.sb.pipe() >= self.cwnd() {
            self.cwnd_limited = true;
            return None;
        }
        let fin = self.fin_queued && nxt + len == self.written;
        if len == 0 && !fin {
            return None;
        }
        Some((nxt, nxt + len + u64::from(fin), fin))
    }

    fn emit_new(
        &mut self,
        now: Instant,
        buf: &mut [u8],
        start: u64,
        end: u64,
        fin: bool,
    ) -> Option<usize> {
        let idle = self.sb.outstanding() == 0;
        let n = self.emit_data(now, buf, start, end, fin)?;
        if idle {
            self.first_sent_at = now;
            self.delivered_at = now;
        }
        self.paced(now, end - start);
        let mut seg = Segment::new(start, end, fin, now);
        seg.app_limited = self.app_limited_until != 0;
        seg.delivered = self.delivered;
        seg.delivered_at = self.delivered_at;
        seg.first_sent_at = self.first_sent_at;
        self.sb.push(seg);
        if let Recovery::Fast { .. } = self.recovery {
            self.prr.on_sent(end - start);
        }
        let (pipe, cwnd) = (self.sb.pipe(), self.cwnd());
        if pipe >= cwnd {
            self.cwnd_limited = true;
        }
        if self.sb.una() >= self.max_pipe_end {
            self.max_pipe_prev = self.max_pipe;
            self.max_pipe = 0;
            self.max_pipe_end = self.sb.nxt();
        }
        self.max_pipe = self.max_pipe.max(pipe);
        self.stats.max_in_flight = self.stats.max_in_flight.max(pipe);
        if !matches!(self.rtx_at, Some((_, RtxTimer::Rto))) {
            self.arm_rtx(now);
        }
        Some(n)
    }

    /// Sends segment `i` of the scoreboard again.
    fn retransmit(&mut self, now: Instant, buf: &mut [u8], i: usize, probe: bool) -> Option<usize> {
        let s = *self.sb.get(i)?;
        let n = self.emit_data(now, buf, s.start, s.end, s.fin)?;
        self.paced(now, s.len());
        self.sb
            .on_retransmit(i, now, self.delivered, self.delivered_at);
        self.stats.retransmits += 1;
        if s.is_lost() && !matches!(self.recovery, Recovery::Timeout { .. }) {
            self.stats.fast_retransmits += 1;
        }
        if let Recovery::Fast { .. } = self.recovery {
            self.prr.on_sent(s.len());
        }
        if let (Some(u), Recovery::Timeout { .. }) = (self.rto_undo.as_mut(), self.recovery) {
            u.retrans += 1;
        }
        if i == 0 && !probe {
            self.rtx_at = Some((now + self.rtt.rto(), RtxTimer::Rto));
        }
        Some(n)
    }

    /// RFC 8985 7.3: new data if the peer's window allows, else the last segment again.
    fn emit_tail_probe(&mut self, now: Instant, buf: &mut [u8]) -> Option<usize> {
        let sent = if let Some((start, end, fin)) = self.next_new_segment(now, false) {
            let n = self.emit_new(now, buf, start, end, fin)?;
            self.tlp = Some(Tlp {
                end: self.sb.nxt(),
                retransmission: false,
                probed: (start, end),
                dsacked: false,
            });
            n
        } else {
            let i = self.sb.len().checked_sub(1)?;
            let s = *self.sb.get(i)?;
            let n = self.retransmit(now, buf, i, true)?;
            self.tlp = Some(Tlp {
                end: self.sb.nxt(),
                retransmission: true,
                probed: (s.start, s.end),
                dsacked: false,
            });
            n
        };
        self.stats.tail_loss_probes += 1;
        // After a probe the RTO runs, not another probe.
        self.rtx_at = Some((now + self.rtt.rto(), RtxTimer::Rto));
        Some(sent)
    }

    /// Writes a data segment (first transmission or retransmission) for offsets `start..end`.
    fn emit_data(
        &mut self,
        now: Instant,
        buf: &mut [u8],
        start: u64,
        end: u64,
        fin: bool,
    ) -> Option<usize> {
        let una = self.sb.una();
        if start < una {
            return None;
        }
        let data_end = end - u64::from(fin);
        let len = usize::try_from(data_end.checked_sub(start)?).ok()?;
        let control = if fin {
            TcpControl::Fin
        } else if data_end == self.written {
            TcpControl::Psh
        } else {
            TcpControl::None
        };
        let repr = self.header(now, control, self.wire_snd(start));
        // SACK blocks ride along only where they fit under the MTU.
        let ip = wire::ip_header_len(self.local.ip());
        let room = self.cfg.mtu.saturating_sub(ip + wire::TCP_HEADER + len);
        let blocks = (0..=3)
            .rev()
            .find(|&k| options_len(self.opts.timestamps, k) <= room.min(40))
            .unwrap_or(0);
        let tx = std::mem::take(&mut self.tx);
        let (a, b) = tx.slices((start - una) as usize, len);
        let result = if a.len() + b.len() == len {
            self.finish_emit(buf, repr, blocks, (a, b))
        } else {
            None
        };
        self.tx = tx;
        result
    }

    /// The common header: ACK, window, timestamp.
    fn header(&self, now: Instant, control: TcpControl, seq: TcpSeqNumber) -> TcpRepr<'static> {
        TcpRepr {
            src_port: self.local.port(),
            dst_port: self.remote.port(),
            control,
            seq_number: seq,
            ack_number: Some(self.wire_rcv(self.rcv_nxt)),
            window_len: self.window_field().0,
            window_scale: None,
            max_seg_size: None,
            sack_permitted: false,
            sack_ranges: [None; 3],
            timestamp: self
                .opts
                .timestamps
                .then(|| TcpTimestampRepr::new(self.ts_now(now), self.ts_recent)),
            payload: &[],
        }
    }

    /// The window to advertise (field value, and the right edge it stands for). The edge never
    /// moves back, and moves forward only by at least `min(buffer / 2, MSS)` (receiver-side
    /// silly window avoidance).
    fn window_field(&self) -> (u16, u64) {
        let free = self.rx.free() as u64;
        let cap_edge = self.rcv_nxt + free;
        let current = self.rcv_adv.max(self.rcv_nxt);
        let threshold = (self.rx.limit() as u64 / 2).min(self.rcv_mss).max(1);
        let edge = if cap_edge >= current + threshold {
            cap_edge
        } else {
            current.min(cap_edge)
        };
        let wnd = edge - self.rcv_nxt;
        let shift = if self.opts.window_scaling {
            self.opts.rcv_shift
        } else {
            0
        };
        let field = (wnd >> shift).min(65535);
        (field as u16, self.rcv_nxt + (field << shift))
    }

    /// Adds up to `blocks` SACK blocks, emits, and does the bookkeeping every segment with an
    /// ACK needs.
    fn finish_emit(
        &mut self,
        buf: &mut [u8],
        mut repr: TcpRepr<'static>,
        blocks: usize,
        parts: (&[u8], &[u8]),
    ) -> Option<usize> {
        if self.opts.sack && blocks > 0 {
            let mut out = [(0u64, 0u64); 3];
            let n = self.reasm.blocks(&mut out[..blocks.min(3)]);
            for (slot, &(s, e)) in repr.sack_ranges.iter_mut().zip(&out[..n]) {
                *slot = Some((self.wire_rcv(s).0 as u32, self.wire_rcv(e).0 as u32));
            }
        }
        let n = wire::emit(
            buf,
            self.local.ip(),
            self.remote.ip(),
            self.cfg.hop_limit,
            &repr,
            parts,
        )?;
        let (_, edge) = self.window_field();
        self.rcv_adv = self.rcv_adv.max(edge);
        self.last_ack_sent = self.rcv_nxt;
        self.ack_now = false;
        self.ack_at = None;
        self.unacked = 0;
        self.stats.segments_out += 1;
        self.stats.bytes_out += (parts.0.len() + parts.1.len()) as u64;
        Some(n)
    }

    fn emit_syn(&mut self, now: Instant, buf: &mut [u8]) -> Option<usize> {
        let synack = self.state == State::SynReceived;
        let (ws, sack, ts) = if synack {
            (
                self.opts.window_scaling.then_some(self.opts.rcv_shift),
                self.opts.sack,
                self.opts.timestamps,
            )
        } else {
            (
                self.cfg.window_scaling.then(|| self.cfg.window_shift()),
                self.cfg.sack,
                self.cfg.timestamps,
            )
        };
        let window = self.rx.free().min(65535) as u16;
        let repr = TcpRepr {
            src_port: self.local.port(),
            dst_port: self.remote.port(),
            control: TcpControl::Syn,
            seq_number: self.iss,
            ack_number: synack.then(|| self.wire_rcv(0)),
            window_len: window,
            window_scale: ws,
            max_seg_size: Some(our_mss(&self.cfg, self.local) as u16),
            sack_permitted: sack,
            sack_ranges: [None; 3],
            timestamp: ts.then(|| {
                TcpTimestampRepr::new(self.ts_now(now), if synack { self.ts_recent } else { 0 })
            }),
            payload: &[],
        };
        let n = wire::emit(
            buf,
            self.local.ip(),
            self.remote.ip(),
            self.cfg.hop_limit,
            &repr,
            (&[], &[]),
        )?;
        self.syn_pending = false;
        self.syn_xmits += 1;
        self.syn_sent_at = Some(now);
        self.rtx_at = Some((now + self.rtt.rto(), RtxTimer::Rto));
        self.stats.segments_out += 1;
        if synack {
            self.rcv_adv = u64::from(window);
            self.ack_now = false;
        }
        Some(n)
    }

    fn emit_rst(
        &mut self,
        buf: &mut [u8],
        seq: TcpSeqNumber,
        ack: Option<TcpSeqNumber>,
    ) -> Option<usize> {
        let repr = TcpRepr {
            src_port: self.local.port(),
            dst_port: self.remote.port(),
            control: TcpControl::Rst,
            seq_number: seq,
            ack_number: ack,
            window_len: 0,
            window_scale: None,
            max_seg_size: None,
            sack_permitted: false,
            sack_ranges: [None; 3],
            timestamp: None,
            payload: &[],
        };
        let n = wire::emit(
            buf,
            self.local.ip(),
            self.remote.ip(),
            self.cfg.hop_limit,
            &repr,
            (&[], &[]),
        )?;
        self.stats.segments_out += 1;
        Some(n)
    }
}

#[cfg(test)]
mod tests {
    use super::options_len;

    #[test]
    fn option_space_is_padded_to_words() {
        assert_eq!(options_len(true, 0), 12);
        assert_eq!(options_len(true, 3), 36);
        assert_eq!(options_len(false, 4), 36);
        assert_eq!(options_len(false, 1), 12);
    }
}
