//! Send side: every segment in flight, with what the peer said about it (RFC 6675 scoreboard).
//!
//! Each transmitted segment keeps its boundaries for life: a retransmission resends exactly the
//! same stretch, so the peer's SACK blocks (which report whole segments as received) line up with
//! our entries and a segment is either wholly SACKed or not. Offsets are absolute sequence offsets
//! (`u64`; 0 = the first data byte, the FIN takes one unit after the last byte), so sequence-space
//! wrap never reaches this module.
//!
//! Per segment the board keeps three flags:
//! * `SACKED` — the peer holds it; it is never sent again (unless the peer reneges, which the
//!   connection detects and answers with [`Scoreboard::clear_sacks`]);
//! * `LOST` — RACK, the duplicate-ACK rule or the RTO decided it must be resent;
//! * `RETRANS` — a retransmission of a lost segment is in flight.
//!
//! From them the board keeps byte totals so that `pipe` (RFC 6675's estimate of bytes in the
//! network) is O(1): `outstanding − sacked − lost + retransmitted`. The next segment to
//! retransmit ([`Scoreboard::next_lost`]) is found from a hint, so recovery over thousands of
//! segments does not rescan the queue for every retransmission.

use std::collections::VecDeque;
use std::time::Instant;

const SACKED: u8 = 1;
const LOST: u8 = 2;
const RETRANS: u8 = 4;

/// One transmitted segment.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Segment {
    /// First sequence offset.
    pub start: u64,
    /// One past the last sequence offset (the FIN unit included).
    pub end: u64,
    /// Carries the FIN.
    pub fin: bool,
    /// Last transmission.
    pub sent_at: Instant,
    /// Transmissions so far (1 = never retransmitted).
    pub xmits: u16,
    flags: u8,
    /// Bytes the connection had seen delivered when this segment was (last) sent.
    pub delivered: u64,
    /// When the connection last saw a delivery, as of this segment's send.
    pub delivered_at: Instant,
    /// Send time of the earliest segment in flight when this one was sent.
    pub first_sent_at: Instant,
    /// The flight was application-limited when this segment was sent.
    pub app_limited: bool,
}

impl Segment {
    /// A first transmission of `start..end` at `now` (no delivery state yet).
    pub fn new(start: u64, end: u64, fin: bool, now: Instant) -> Self {
        Self {
            start,
            end,
            fin,
            sent_at: now,
            xmits: 1,
            flags: 0,
            delivered: 0,
            delivered_at: now,
            first_sent_at: now,
            app_limited: false,
        }
    }

    /// Sequence units covered (payload bytes, plus one for the FIN).
    pub fn len(&self) -> u64 {
        self.end - self.start
    }

    pub fn is_sacked(&self) -> bool {
        self.flags & SACKED != 0
    }

    pub fn is_lost(&self) -> bool {
        self.flags & LOST != 0
    }

    /// A retransmission of this (lost) segment is in flight.
    pub fn is_retrans_in_flight(&self) -> bool {
        self.flags & RETRANS != 0
    }

    fn weights(&self) -> (u64, u64, u64) {
        let n = self.len();
        let w = |f: u8| if self.flags & f != 0 { n } else { 0 };
        (w(SACKED), w(LOST), w(RETRANS))
    }
}

/// What a cumulative ACK removed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Acked {
    /// Sequence units newly delivered (not counting units already SACKed).
    pub newly: u64,
    /// Whole segments removed.
    pub segments: u32,
    /// The FIN was among them.
    pub fin: bool,
}

/// The scoreboard. See the module docs.
#[derive(Debug)]
pub(crate) struct Scoreboard {
    segs: VecDeque<Segment>,
    una: u64,
    nxt: u64,
    sacked: u64,
    lost: u64,
    retrans: u64,
    sacked_segs: u32,
    /// No segment below this offset is lost and not yet retransmitted.
    lost_hint: u64,
}

impl Scoreboard {
    pub fn new() -> Self {
        Self {
            segs: VecDeque::new(),
            una: 0,
            nxt: 0,
            sacked: 0,
            lost: 0,
            retrans: 0,
            sacked_segs: 0,
            lost_hint: u64::MAX,
        }
    }

    /// Lowest unacknowledged offset (`SND.UNA`).
    pub fn una(&self) -> u64 {
        self.una
    }

    /// One past the highest offset sent (`SND.NXT`, in offsets).
    pub fn nxt(&self) -> u64 {
        self.nxt
    }

    /// Sequence units sent and not cumulatively acknowledged.
    pub fn outstanding(&self) -> u64 {
        self.nxt - self.una
    }

    /// RFC 6675 `pipe`: units believed to be in the network.
    pub fn pipe(&self) -> u64 {
        (self.outstanding() + self.retrans).saturating_sub(self.sacked + self.lost)
    }

    #[cfg(test)]
    pub fn sacked_bytes(&self) -> u64 {
        self.sacked
    }

    /// Segments currently SACKed.
    pub fn sacked_segments(&self) -> u32 {
        self.sacked_segs
    }

    pub fn len(&self) -> usize {
        self.segs.len()
    }

    pub fn get(&self, i: usize) -> Option<&Segment> {
        self.segs.get(i)
    }

    /// Index of the first segment whose end is past `offset`.
    pub fn index_after(&self, offset: u64) -> usize {
        self.segs.partition_point(|s| s.end <= offset)
    }

    fn uncount(&mut self, i: usize) {
        let (s, l, r) = self.segs[i].weights();
        self.sacked -= s;
        self.lost -= l;
        self.retrans -= r;
        if s > 0 {
            self.sacked_segs -= 1;
        }
    }

    fn count(&mut self, i: usize) {
        let (s, l, r) = self.segs[i].weights();
        self.sacked += s;
        self.lost += l;
        self.retrans += r;
        if s > 0 {
            self.sacked_segs += 1;
        }
    }

    fn set_flags(&mut self, i: usize, flags: u8) {
        self.uncount(i);
        self.segs[i].flags = flags;
        self.count(i);
    }

    /// Records a first transmission. It must start at [`nxt`](Scoreboard::nxt); anything else is
    /// ignored (the connection only ever appends).
    pub fn push(&mut self, seg: Segment) {
        if seg.start != self.nxt || seg.end <= seg.start {
            return;
        }
        self.nxt = seg.end;
        self.segs.push_back(Segment { flags: 0, ..seg });
    }

    /// Records a retransmission of segment `i` at `now`, stamped with the delivery state.
    pub fn on_retransmit(&mut self, i: usize, now: Instant, delivered: u64, delivered_at: Instant) {
        let Some(seg) = self.segs.get(i) else { return };
        let flags = if seg.is_lost() {
            seg.flags | RETRANS
        } else {
            seg.flags
        };
        self.set_flags(i, flags);
        let seg = &mut self.segs[i];
        seg.sent_at = now;
        seg.xmits = seg.xmits.saturating_add(1);
        seg.delivered = delivered;
        seg.delivered_at = delivered_at;
        seg.first_sent_at = now;
    }

    /// Cumulative ACK up to `cum` (the caller checked `una < cum <= nxt`). `visit` sees every
    /// segment (or acknowledged front part of one) delivered by this ACK that was not SACKed
    /// before.
    pub fn ack(&mut self, cum: u64, mut visit: impl FnMut(&Segment)) -> Acked {
        let cum = cum.min(self.nxt);
        let mut out = Acked::default();
        if cum <= self.una {
            return out;
        }
        while let Some(front) = self.segs.front() {
            if front.end <= cum {
                self.uncount(0);
                if let Some(seg) = self.segs.pop_front() {
                    if !seg.is_sacked() {
                        out.newly += seg.len();
                        visit(&seg);
                    }
                    out.fin |= seg.fin;
                    out.segments += 1;
                }
                continue;
            }
            if front.start < cum {
                // The peer acknowledged part of a segment: keep the rest as its own entry.
                self.uncount(0);
                let done = Segment {
                    end: cum,
                    fin: false,
                    ..self.segs[0]
                };
                if !done.is_sacked() {
                    out.newly += done.len();
                    visit(&done);
                }
                self.segs[0].start = cum;
                self.count(0);
            }
            break;
        }
        self.una = cum;
        out
    }

    /// Marks the segments wholly inside `start..end` as SACKed; returns the units newly SACKed.
    /// `visit` sees each newly SACKed segment. Blocks outside `una..nxt` are ignored.
    pub fn sack(&mut self, start: u64, end: u64, mut visit: impl FnMut(&Segment)) -> u64 {
        let start = start.max(self.una);
        let end = end.min(self.nxt);
        if start >= end {
            return 0;
        }
        let mut newly = 0;
        let mut i = self.index_after(start);
        while i < self.segs.len() && self.segs[i].start < end {
            let s = self.segs[i];
            // A receiver only takes a FIN in order, so SACK blocks never cover the FIN unit:
            // the segment counts as held when its data is.
            let data_end = s.end - u64::from(s.fin);
            if !s.is_sacked() && s.start >= start && data_end <= end && data_end > s.start {
                self.set_flags(i, SACKED);
                newly += s.len();
                visit(&self.segs[i]);
            }
            i += 1;
        }
        newly
    }

    /// Marks segment `i` lost (a lost retransmission becomes eligible again). Returns whether it
    /// changed: SACKed segments and lost ones not yet resent are left alone.
    pub fn mark_lost(&mut self, i: usize) -> bool {
        let Some(seg) = self.segs.get(i) else {
            return false;
        };
        if seg.is_sacked() || (seg.is_lost() && !seg.is_retrans_in_flight()) {
            return false;
        }
        let start = seg.start;
        self.set_flags(i, LOST);
        self.lost_hint = self.lost_hint.min(start);
        true
    }

    /// Marks every segment not SACKed as lost (retransmission timeout).
    pub fn mark_all_lost(&mut self) -> u32 {
        let mut n = 0;
        for i in 0..self.segs.len() {
            if self.mark_lost(i) {
                n += 1;
            }
        }
        n
    }

    /// Forgets every SACK (the peer reneged: it acknowledged up to a segment it had SACKed and
    /// then stopped, so those bytes must be sent again).
    pub fn clear_sacks(&mut self) {
        for i in 0..self.segs.len() {
            if self.segs[i].is_sacked() {
                self.set_flags(i, 0);
            }
        }
    }

    /// Forgets every loss mark (a retransmission timeout proved spurious): the segments count
    /// as in flight again, once each, whether or not they were resent since.
    pub fn clear_lost(&mut self) {
        for i in 0..self.segs.len() {
            if self.segs[i].flags & (LOST | RETRANS) != 0 {
                let keep = self.segs[i].flags & SACKED;
                self.set_flags(i, keep);
            }
        }
        self.lost_hint = u64::MAX;
    }

    /// The first segment that is lost and not yet retransmitted (RFC 6675 NextSeg rule 1).
    pub fn next_lost(&mut self) -> Option<usize> {
        if self.lost_hint == u64::MAX {
            return None;
        }
        let from = self.index_after(self.lost_hint);
        let found = (from..self.segs.len()).find(|&i| {
            let s = &self.segs[i];
            s.is_lost() && !s.is_retrans_in_flight() && !s.is_sacked()
        });
        self.lost_hint = match found {
            Some(i) => self.segs[i].start,
            None => u64::MAX,
        };
        found
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seg(start: u64, end: u64, at: Instant) -> Segment {
        Segment::new(start, end, false, at)
    }

    fn board(n: u64) -> (Scoreboard, Instant) {
        let t0 = Instant::now();
        let mut b = Scoreboard::new();
        for i in 0..n {
            b.push(seg(i * 1000, (i + 1) * 1000, t0));
        }
        (b, t0)
    }

    #[test]
    fn pipe_follows_sack_loss_and_retransmission() {
        let (mut b, t0) = board(10);
        assert_eq!(b.pipe(), 10_000);
        // Segments 2 and 3 lost; 4..10 SACKed.
        assert_eq!(b.sack(4000, 10_000, |_| {}), 6000);
        assert_eq!(b.pipe(), 4000);
        assert!(b.mark_lost(2) && b.mark_lost(3));
        assert!(!b.mark_lost(5), "SACKed segments are never lost");
        assert_eq!(b.pipe(), 2000);
        assert_eq!(b.next_lost(), Some(2));
        b.on_retransmit(2, t0, 0, t0);
        assert_eq!(b.pipe(), 3000, "a retransmission is in flight again");
        assert_eq!(b.next_lost(), Some(3));
        b.on_retransmit(3, t0, 0, t0);
        assert_eq!(b.next_lost(), None);
        // The retransmission of 2 is lost too: eligible again.
        assert!(b.mark_lost(2));
        assert_eq!(b.next_lost(), Some(2));
        let acked = b.ack(10_000, |_| {});
        assert_eq!(acked.newly, 4000, "SACKed bytes were delivered before");
        assert_eq!((b.pipe(), b.outstanding(), b.sacked_bytes()), (0, 0, 0));
    }

    #[test]
    fn sack_marks_only_whole_segments_and_ack_trims_partial_ones() {
        let (mut b, _) = board(4);
        assert_eq!(b.sack(1500, 3000, |_| {}), 1000, "only 2000..3000 is whole");
        assert_eq!(b.sacked_segments(), 1);
        let mut seen = Vec::new();
        let acked = b.ack(500, |s| seen.push((s.start, s.end)));
        assert_eq!(acked.newly, 500);
        assert_eq!(seen, vec![(0, 500)]);
        assert_eq!(b.get(0).map(|s| (s.start, s.end)), Some((500, 1000)));
        assert_eq!(b.outstanding(), 3500);
        assert_eq!(
            b.sack(0, 99_999, |_| {}),
            500 + 1000 + 1000,
            "clamped to una..nxt"
        );
    }

    #[test]
    fn a_fin_segment_is_sacked_by_its_data() {
        let t0 = Instant::now();
        let mut b = Scoreboard::new();
        b.push(Segment::new(0, 1000, false, t0));
        b.push(Segment::new(1000, 2001, true, t0));
        assert_eq!(b.sack(1000, 2000, |_| {}), 1001);
        assert_eq!(b.pipe(), 1000);
    }

    #[test]
    fn reneging_forgets_sacks() {
        let (mut b, _) = board(3);
        b.sack(1000, 3000, |_| {});
        b.clear_sacks();
        assert_eq!(b.sacked_bytes(), 0);
        assert_eq!(b.mark_all_lost(), 3);
        assert_eq!(b.pipe(), 0);
        assert_eq!(b.next_lost(), Some(0));
    }

    #[test]
    fn pushes_that_do_not_continue_the_stream_are_ignored() {
        let (mut b, t0) = board(2);
        b.push(seg(5000, 6000, t0));
        b.push(seg(2000, 2000, t0));
        assert_eq!(b.len(), 2);
        assert_eq!(b.nxt(), 2000);
    }
}
