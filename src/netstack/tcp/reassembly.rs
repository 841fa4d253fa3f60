//! Receive side: which out-of-order stretches are held, and the SACK blocks that report them.
//!
//! Offsets are absolute stream offsets (`u64`, 0 = the first byte after the peer's SYN), so a
//! read by the application or a wrap of the 32-bit sequence space never moves them. The bytes
//! themselves sit in the receive [`Ring`](super::ring::Ring) at their final positions; this map
//! only records which positions past `RCV.NXT` are filled.
//!
//! * **Bounded.** At most [`MAX_RANGES`] disjoint stretches. A segment that would open one more
//!   is refused (not stored, not acknowledged); the sender retransmits it later. Together with the
//!   window check (no byte past the advertised edge is stored) this bounds a hostile peer's hold
//!   on memory and CPU.
//! * **SACK blocks (RFC 2018).** The first block reports the stretch that the most recent segment
//!   landed in; the others repeat the most recently changed stretches, so each stretch is reported
//!   in several ACKs and one lost ACK does not hide it.
//! * **D-SACK (RFC 2883).** A segment that only carried bytes we already had is reported once, as
//!   the first block of the next ACK; the sender learns that its retransmission was spurious
//!   (RACK widens its reordering window on that signal).

/// Most out-of-order stretches held at once. Random loss opens one per lost segment and keeps
/// it until the repair arrives (an RTT or more), so a window of W segments at loss rate p holds
/// about p·W of them: 3 % of a 1.5 MB BDP's 2-3 BDP flight is about a hundred. A drop-tail
/// queue that a sender's Startup (BBR's 2.89× pacing rate) overflows drops about every other
/// segment of that round: a thousand stretches on a 1.5 MB BDP. A segment refused for want of
/// a stretch is sent again although it arrived (with 32, a third of what arrived at 3 % loss).
/// A stretch costs 24 bytes; SACK blocks are picked in one pass over the stretches.
pub const MAX_RANGES: usize = 1024;

/// Most SACK blocks [`Reassembly::blocks`] fills (the most a TCP header holds).
const MAX_BLOCKS: usize = 4;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Range {
    start: u64,
    end: u64,
    /// When the stretch last grew (a counter): recency order for SACK blocks.
    stamp: u64,
}

/// What [`Reassembly::insert`] did with a segment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Placed {
    /// In order: `RCV.NXT` moves to `next` (past any stretches the segment joined).
    InOrder { next: u64 },
    /// Held out of order.
    OutOfOrder,
    /// Only bytes we already held.
    Duplicate,
    /// Refused: it would open more than [`MAX_RANGES`] stretches.
    Refused,
}

/// Out-of-order map and SACK state. See the module docs.
#[derive(Debug, Default)]
pub(crate) struct Reassembly {
    ranges: Vec<Range>,
    stamp: u64,
    dsack: Option<(u64, u64)>,
}

impl Reassembly {
    /// Whether any out-of-order bytes are held.
    pub fn is_empty(&self) -> bool {
        self.ranges.is_empty()
    }

    /// Number of out-of-order stretches.
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.ranges.len()
    }

    /// Records the bytes `start..end` (already trimmed to the window, `start >= rcv_nxt` unless
    /// the caller passes an old segment, which is reported as a duplicate). The caller stores the
    /// bytes in the ring unless the result is [`Placed::Refused`] or [`Placed::Duplicate`].
    pub fn insert(&mut self, rcv_nxt: u64, start: u64, end: u64) -> Placed {
        if end <= rcv_nxt {
            if end > start {
                self.dsack = Some((start, end));
            }
            return Placed::Duplicate;
        }
        if start < rcv_nxt {
            // Part old, part new: report the old part.
            self.dsack = Some((start, rcv_nxt));
        }
        let start = start.max(rcv_nxt);
        if start == rcv_nxt {
            // Stored stretches are separated by gaps, so only those starting at or before
            // `end` can join, and joining one cannot reach the next.
            let joined = self.ranges.iter().take_while(|r| r.start <= end).count();
            let next = self.ranges[..joined]
                .iter()
                .fold(end, |next, r| next.max(r.end));
            self.ranges.drain(..joined);
            return Placed::InOrder { next };
        }
        // Out of order: find stretches that overlap or touch `start..end`.
        let first = self.ranges.partition_point(|r| r.end < start);
        let last = self.ranges.partition_point(|r| r.start <= end);
        self.stamp += 1;
        if first == last {
            if self.ranges.len() >= MAX_RANGES {
                return Placed::Refused;
            }
            self.ranges.insert(
                first,
                Range {
                    start,
                    end,
                    stamp: self.stamp,
                },
            );
            return Placed::OutOfOrder;
        }
        let covered = self.ranges[first].start <= start && self.ranges[first].end >= end;
        if covered {
            self.dsack = Some((start, end));
            self.ranges[first].stamp = self.stamp;
            return Placed::Duplicate;
        }
        let merged = Range {
            start: start.min(self.ranges[first].start),
            end: end.max(self.ranges[last - 1].end),
            stamp: self.stamp,
        };
        self.ranges.drain(first + 1..last);
        self.ranges[first] = merged;
        Placed::OutOfOrder
    }

    /// Forgets every stretch (the connection is done with its receive side).
    pub fn clear(&mut self) {
        self.ranges.clear();
        self.dsack = None;
    }

    /// Fills `out` with the SACK blocks for the next ACK: the pending D-SACK block first (taken:
    /// it is reported once), then the stretches, most recently changed first, at most
    /// [`MAX_BLOCKS`] in all. Returns how many were written.
    pub fn blocks(&mut self, out: &mut [(u64, u64)]) -> usize {
        let mut n = 0;
        if let Some(d) = self.dsack.take() {
            if let Some(slot) = out.first_mut() {
                *slot = d;
                n = 1;
            }
        }
        // One pass keeps the newest few, newest first (stamps are unique).
        let want = out.len().min(MAX_BLOCKS).saturating_sub(n);
        let mut best: [Option<&Range>; MAX_BLOCKS] = [None; MAX_BLOCKS];
        let best = &mut best[..want];
        for r in &self.ranges {
            if best
                .last()
                .copied()
                .flatten()
                .is_some_and(|w| w.stamp > r.stamp)
            {
                continue;
            }
            let mut carry = Some(r);
            for slot in best.iter_mut() {
                let Some(c) = carry else { break };
                if slot.is_none_or(|s| c.stamp > s.stamp) {
                    carry = slot.replace(c);
                }
            }
        }
        for r in best.iter().flatten() {
            out[n] = (r.start, r.end);
            n += 1;
        }
        n
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn blocks(r: &mut Reassembly) -> Vec<(u64, u64)> {
        let mut out = [(0, 0); 3];
        let n = r.blocks(&mut out);
        out[..n].to_vec()
    }

    #[test]
    fn holes_fill_in_any_order_and_rcv_nxt_jumps_past_joined_stretches() {
        let mut r = Reassembly::default();
        assert_eq!(r.insert(0, 1000, 2000), Placed::OutOfOrder);
        assert_eq!(r.insert(0, 3000, 4000), Placed::OutOfOrder);
        assert_eq!(r.insert(0, 2000, 3000), Placed::OutOfOrder, "joins both");
        assert_eq!(r.len(), 1);
        assert_eq!(r.insert(0, 0, 1000), Placed::InOrder { next: 4000 });
        assert!(r.is_empty());
    }

    #[test]
    fn rfc2018_order_most_recent_first() {
        // RFC 2018 section 5 example: segments 5000.. in 500-byte pieces, the first lost and
        // every other one after it dropped.
        let mut r = Reassembly::default();
        let base = 5000;
        assert_eq!(r.insert(base, 5500, 6000), Placed::OutOfOrder);
        assert_eq!(blocks(&mut r), vec![(5500, 6000)]);
        r.insert(base, 6500, 7000);
        assert_eq!(blocks(&mut r), vec![(6500, 7000), (5500, 6000)]);
        r.insert(base, 7500, 8000);
        assert_eq!(
            blocks(&mut r),
            vec![(7500, 8000), (6500, 7000), (5500, 6000)]
        );
        // Filling 6000..6500 joins the first two stretches; that stretch is now the newest.
        r.insert(base, 6000, 6500);
        assert_eq!(blocks(&mut r), vec![(5500, 7000), (7500, 8000)]);
    }

    #[test]
    fn duplicates_are_reported_once_as_dsack() {
        let mut r = Reassembly::default();
        r.insert(0, 2000, 3000);
        assert_eq!(r.insert(1000, 0, 500), Placed::Duplicate, "already read");
        assert_eq!(blocks(&mut r), vec![(0, 500), (2000, 3000)]);
        assert_eq!(blocks(&mut r), vec![(2000, 3000)], "D-SACK reported once");
        assert_eq!(r.insert(1000, 2200, 2800), Placed::Duplicate);
        assert_eq!(blocks(&mut r), vec![(2200, 2800), (2000, 3000)]);
    }

    #[test]
    fn blocks_are_the_newest_stretches_wherever_they_lie() {
        let mut r = Reassembly::default();
        // Stretches at 10 000, 9 000, ... 1 000 (each newer one lower), then 5 000 grows.
        for i in (1..=10u64).rev() {
            r.insert(0, i * 1000, i * 1000 + 100);
        }
        r.insert(0, 5100, 5200);
        assert_eq!(
            blocks(&mut r),
            vec![(5000, 5200), (1000, 1100), (2000, 2100)]
        );
        // A D-SACK goes first, and the newest stretches fill what is left.
        assert_eq!(r.insert(0, 5000, 5100), Placed::Duplicate);
        assert_eq!(
            blocks(&mut r),
            vec![(5000, 5100), (5000, 5200), (1000, 1100)]
        );
    }

    #[test]
    fn the_number_of_stretches_is_bounded() {
        let mut r = Reassembly::default();
        for i in 0..MAX_RANGES as u64 {
            assert_eq!(r.insert(0, 100 + i * 10, 105 + i * 10), Placed::OutOfOrder);
        }
        assert_eq!(r.insert(0, 100_000, 100_001), Placed::Refused);
        // Growing an existing stretch is still fine.
        assert_eq!(r.insert(0, 105, 107), Placed::OutOfOrder);
        assert_eq!(r.len(), MAX_RANGES);
    }
}
