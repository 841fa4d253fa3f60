//! RACK-TLP (RFC 8985): time-based loss detection and the tail loss probe.
//!
//! **RACK** marks a segment lost when a segment sent *after* it has been delivered and more
//! than one RTT plus a reordering allowance (`reo_wnd`) has passed since it was sent. Unlike
//! counting three duplicate ACKs it works for the last segments of a flight, for lost
//! retransmissions and with any number of losses per window; unlike the RTO it acts within about
//! one RTT. When the allowance has not yet elapsed for some segment, [`Rack::detect_loss`] says
//! when to look again (the reordering timer).
//!
//! **TLP** covers the case where nothing after the lost segment is delivered (the tail of a
//! flight, or a whole flight): two SRTTs after the last transmission, with no ACK, the sender
//! sends one probe — new data if it may, else the last segment again — so that the ACK it
//! elicits (with SACK) lets RACK find the loss, instead of waiting for the RTO.
//!
//! The connection owns the timers and the decisions about what to send; this module keeps the
//! RACK state and runs the RFC's steps over the [`Scoreboard`].

use std::time::{Duration, Instant};

use super::scoreboard::{Scoreboard, Segment};

/// Classic duplicate threshold (RFC 5681): with no reordering seen, this many SACKed segments
/// above a hole make RACK drop its reordering allowance.
pub const DUP_THRESH: u32 = 3;

/// Worst-case delayed-ACK time of the peer (RFC 8985 `WCDelAckT`), added to the probe timeout
/// when only one segment is in flight (the peer may be holding its ACK for a second segment).
pub const WC_DEL_ACK: Duration = Duration::from_millis(200);

/// Recoveries over which a widened reordering window persists (RFC 8985 `reo_wnd_persist`).
const REO_WND_PERSIST: u32 = 16;

/// RACK state (RFC 8985 section 6.1).
#[derive(Debug, Clone)]
pub(crate) struct Rack {
    /// Send time and end offset of the most recently sent segment known delivered.
    xmit_ts: Option<Instant>,
    end: u64,
    /// RTT of that segment.
    rtt: Duration,
    /// Highest end offset delivered (`RACK.fack`).
    fack: u64,
    /// Reordering was observed.
    reordering_seen: bool,
    /// The round (by `SND.NXT`) in which a D-SACK last widened the window.
    dsack_round: Option<u64>,
    reo_wnd_mult: u32,
    reo_wnd_persist: u32,
    reo_wnd: Duration,
}

impl Default for Rack {
    fn default() -> Self {
        Self {
            xmit_ts: None,
            end: 0,
            rtt: Duration::ZERO,
            fack: 0,
            reordering_seen: false,
            dsack_round: None,
            reo_wnd_mult: 1,
            reo_wnd_persist: 0,
            reo_wnd: Duration::ZERO,
        }
    }
}

/// Whether a segment sent at `t1` ending at `e1` was sent after one sent at `t2` ending at `e2`.
fn sent_after(t1: Instant, e1: u64, t2: Instant, e2: u64) -> bool {
    t1 > t2 || (t1 == t2 && e1 > e2)
}

impl Rack {
    /// Step 2 and 3 for one newly delivered segment. `spurious` is the caller's verdict that the
    /// ACK may answer an earlier transmission than the last (a retransmitted segment whose
    /// timestamp echo predates the retransmission, or whose RTT would be below the minimum): then
    /// the segment says nothing about time.
    pub fn on_delivered(&mut self, now: Instant, seg: &Segment, spurious: bool) {
        // Step 3: reordering — a never-retransmitted segment delivered below the highest
        // delivered offset arrived out of order.
        if seg.end > self.fack {
            self.fack = seg.end;
        } else if seg.end < self.fack && seg.xmits == 1 {
            self.reordering_seen = true;
        }
        if seg.xmits > 1 && spurious {
            return;
        }
        // Segments are visited in offset order, the RFC walks them by send time: keeping the
        // RTT of the most recently sent one gives the same result.
        match self.xmit_ts {
            Some(t) if !sent_after(seg.sent_at, seg.end, t, self.end) => {}
            _ => {
                self.rtt = now.saturating_duration_since(seg.sent_at);
                self.xmit_ts = Some(seg.sent_at);
                self.end = seg.end;
            }
        }
    }

    /// Step 4: the reordering window for this ACK.
    #[allow(clippy::too_many_arguments)]
    pub fn update_reo_wnd(
        &mut self,
        snd_una: u64,
        snd_nxt: u64,
        dsack: bool,
        exited_recovery: bool,
        in_recovery: bool,
        sacked_segments: u32,
        min_rtt: Option<Duration>,
        srtt: Option<Duration>,
    ) {
        if self.dsack_round.is_some_and(|r| snd_una >= r) {
            self.dsack_round = None;
        }
        if self.dsack_round.is_none() && dsack {
            self.dsack_round = Some(snd_nxt);
            self.reo_wnd_mult = self.reo_wnd_mult.saturating_add(1);
            self.reo_wnd_persist = REO_WND_PERSIST;
        } else if exited_recovery {
            self.reo_wnd_persist = self.reo_wnd_persist.saturating_sub(1);
            if self.reo_wnd_persist == 0 {
                self.reo_wnd_mult = 1;
            }
        }
        if !self.reordering_seen && (in_recovery || sacked_segments >= DUP_THRESH) {
            self.reo_wnd = Duration::ZERO;
            return;
        }
        let base = min_rtt.unwrap_or(Duration::ZERO) / 4 * self.reo_wnd_mult;
        self.reo_wnd = match srtt {
            Some(s) => base.min(s),
            None => base,
        };
    }

    /// Step 5: marks lost every segment sent before the most recently delivered one whose time
    /// (`RACK.rtt + reo_wnd` since it was sent) is up. Returns how many were newly marked and,
    /// if some segment's time is not up yet, how long until it is (the reordering timer).
    pub fn detect_loss(&self, now: Instant, sb: &mut Scoreboard) -> (u32, Option<Duration>) {
        let Some(rack_ts) = self.xmit_ts else {
            return (0, None);
        };
        let mut marked = 0;
        let mut wait: Option<Duration> = None;
        for i in 0..sb.len() {
            let Some(seg) = sb.get(i) else { break };
            if !sent_after(rack_ts, self.end, seg.sent_at, seg.end) {
                if seg.xmits == 1 {
                    // Original transmissions go out in offset order: nothing further was sent
                    // before the delivered segment either.
                    break;
                }
                continue;
            }
            if seg.is_sacked() || (seg.is_lost() && !seg.is_retrans_in_flight()) {
                continue;
            }
            let deadline = seg.sent_at + self.rtt + self.reo_wnd;
            if deadline <= now {
                if sb.mark_lost(i) {
                    marked += 1;
                }
            } else {
                let left = deadline - now;
                wait = Some(wait.map_or(left, |w| w.max(left)));
            }
        }
        (marked, wait)
    }

    /// The reordering allowance in force.
    #[cfg(test)]
    pub fn reo_wnd(&self) -> Duration {
        self.reo_wnd
    }

    /// Whether reordering has been seen on this connection.
    #[cfg(test)]
    pub fn reordering_seen(&self) -> bool {
        self.reordering_seen
    }
}

/// The probe timeout (RFC 8985 7.2): two SRTTs, plus the peer's worst-case delayed ACK when a
/// single segment is in flight, never later than the RTO would fire.
pub(crate) fn probe_timeout(
    srtt: Option<Duration>,
    single_segment: bool,
    rto: Duration,
) -> Duration {
    let pto = match srtt {
        Some(s) => {
            let p = s * 2;
            if single_segment { p + WC_DEL_ACK } else { p }
        }
        None => Duration::from_secs(1),
    };
    pto.min(rto)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    fn sent(sb: &mut Scoreboard, t: Instant, n: u64) {
        for i in 0..n {
            sb.push(Segment::new(
                i * 1000,
                (i + 1) * 1000,
                false,
                t + MS * i as u32,
            ));
        }
    }

    #[test]
    fn a_segment_is_lost_once_a_later_one_is_delivered_and_rtt_plus_reo_wnd_passed() {
        let t0 = Instant::now();
        let mut sb = Scoreboard::new();
        sent(&mut sb, t0, 10);
        let mut rack = Rack::default();
        // Segments 3..10 SACKed at t0 + 40 ms; 0..3 missing.
        let now = t0 + 40 * MS;
        let mut delivered = Vec::new();
        sb.sack(3000, 10_000, |s| delivered.push(*s));
        for s in &delivered {
            rack.on_delivered(now, s, false);
        }
        assert_eq!(
            rack.rtt,
            31 * MS,
            "RTT of the most recently sent delivered segment"
        );
        rack.update_reo_wnd(
            0,
            10_000,
            false,
            false,
            false,
            7,
            Some(30 * MS),
            Some(30 * MS),
        );
        assert_eq!(
            rack.reo_wnd(),
            Duration::ZERO,
            "seven SACKed, no reordering seen"
        );
        let (lost, wait) = rack.detect_loss(now, &mut sb);
        assert_eq!((lost, wait), (3, None));
        assert_eq!(sb.next_lost(), Some(0));
    }

    #[test]
    fn reordering_widens_the_window_and_arms_the_timer() {
        let t0 = Instant::now();
        let mut sb = Scoreboard::new();
        sent(&mut sb, t0, 10);
        let mut rack = Rack::default();
        let now = t0 + 40 * MS;
        let mut delivered = Vec::new();
        sb.sack(5000, 6000, |s| delivered.push(*s));
        sb.sack(2000, 3000, |s| delivered.push(*s));
        for s in &delivered {
            rack.on_delivered(now, s, false);
        }
        assert!(
            rack.reordering_seen(),
            "2000..3000 arrived after 5000..6000"
        );
        rack.update_reo_wnd(
            0,
            10_000,
            false,
            false,
            false,
            2,
            Some(32 * MS),
            Some(40 * MS),
        );
        assert_eq!(rack.reo_wnd(), 8 * MS, "min_rtt / 4");
        // Segment 0 sent at t0: deadline t0 + 35 + 8 = 43 ms; segment 4 at t0 + 4 ms: 47 ms.
        let (lost, wait) = rack.detect_loss(now, &mut sb);
        assert_eq!(lost, 0);
        assert_eq!(
            wait,
            Some(7 * MS),
            "the last candidate, segment 4, is due in 7 ms"
        );
        let (lost, _) = rack.detect_loss(now + 7 * MS, &mut sb);
        assert_eq!(lost, 4, "segments 0, 1, 3 and 4");
    }

    #[test]
    fn dsack_widens_the_window_for_sixteen_recoveries() {
        let mut rack = Rack {
            reordering_seen: true,
            ..Rack::default()
        };
        let min = Some(40 * MS);
        rack.update_reo_wnd(0, 100, true, false, false, 0, min, Some(100 * MS));
        assert_eq!(rack.reo_wnd(), 20 * MS);
        for _ in 0..15 {
            rack.update_reo_wnd(200, 300, false, true, false, 0, min, Some(100 * MS));
        }
        assert_eq!(rack.reo_wnd(), 20 * MS);
        rack.update_reo_wnd(200, 300, false, true, false, 0, min, Some(100 * MS));
        assert_eq!(rack.reo_wnd(), 10 * MS);
    }

    #[test]
    fn probe_timeout_is_two_srtt_capped_by_the_rto() {
        let rto = 230 * MS;
        assert_eq!(probe_timeout(Some(30 * MS), false, rto), 60 * MS);
        assert_eq!(probe_timeout(Some(30 * MS), true, rto), 230 * MS);
        assert_eq!(probe_timeout(Some(10 * MS), true, rto), 220 * MS);
        assert_eq!(probe_timeout(None, false, rto), 230 * MS);
    }
}
