//! ACK aggregation: how much more a path acknowledges in a burst than its bandwidth explains.
//!
//! A model-based window of `gain × bandwidth × min RTT` assumes ACKs come back as smoothly as
//! the data left. They do not when the receiving host works in bursts (GRO, a busy CPU,
//! wireguard-go reading dozens of datagrams per wake-up, a Wi-Fi or cellular hop): nothing is
//! acknowledged for a while, then a clump. The smallest RTT sample is then a segment that
//! arrived just before a wake-up, far below the time a full pipe must cover, and a window of two
//! such BDPs lets only a sliver out per clump. Measured on the loss-free veth (issue 19): min
//! RTT 70–130 µs against 300–1000 µs typical, a 10–50 kB window, bulk 30 % below CUBIC.
//!
//! The estimate (the idea of Linux's BBR `extra_acked`; the code is ours): an *epoch* starts
//! when ACKs fall behind what the bandwidth estimate would have delivered since the epoch
//! began; within an epoch, `extra = acked − bandwidth × elapsed` is what arrived beyond the
//! model. Its maximum over the last [`WINDOW_ROUNDS`]–2×[`WINDOW_ROUNDS`] round trips (two
//! alternating slots), capped by the window that was in use (no more can have been aggregated)
//! and by [`MAX_TIME`] worth of bandwidth, is room the window needs on top of the BDP so that
//! the sender keeps sending while the next clump is on its way.

use std::time::{Duration, Instant};

/// Round trips one slot of the max filter covers.
const WINDOW_ROUNDS: u64 = 5;
/// The cap: at most this long at the estimated bandwidth (Linux uses 100 ms too: a burst
/// longer than that is an outage, not aggregation).
const MAX_TIME: Duration = Duration::from_millis(100);

/// The windowed maximum of the data acknowledged beyond the bandwidth model. See the module
/// docs.
#[derive(Debug, Clone, Default)]
pub struct AckAggregation {
    epoch_start: Option<Instant>,
    epoch_acked: u64,
    /// Two slots; `slot` is written, the other is the previous window.
    max: [u64; 2],
    slot: usize,
    slot_rounds: u64,
}

impl AckAggregation {
    /// Feeds one ACK: `acked` bytes newly acknowledged at `now`, under bandwidth estimate `bw`
    /// (bytes/s) and window `cwnd`; `round_start` when this ACK began a round trip.
    pub fn on_ack(&mut self, now: Instant, acked: u64, bw: u64, cwnd: u64, round_start: bool) {
        if round_start {
            self.slot_rounds += 1;
            if self.slot_rounds >= WINDOW_ROUNDS {
                self.slot_rounds = 0;
                self.slot ^= 1;
                self.max[self.slot] = 0;
            }
        }
        if bw == 0 || acked == 0 {
            return;
        }
        let start = *self.epoch_start.get_or_insert(now);
        let elapsed = now.saturating_duration_since(start).as_secs_f64();
        let mut expected = (bw as f64 * elapsed) as u64;
        if self.epoch_acked <= expected {
            // ACKs are not ahead of the model: a new epoch starts here.
            self.epoch_start = Some(now);
            self.epoch_acked = 0;
            expected = 0;
        }
        self.epoch_acked = self.epoch_acked.saturating_add(acked);
        let extra = self.epoch_acked.saturating_sub(expected).min(cwnd);
        self.max[self.slot] = self.max[self.slot].max(extra);
    }

    /// Bytes the window needs on top of the BDP, at bandwidth `bw` bytes/s.
    pub fn extra(&self, bw: u64) -> u64 {
        let cap = (bw as f64 * MAX_TIME.as_secs_f64()) as u64;
        self.max[0].max(self.max[1]).min(cap)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BW: u64 = 100_000_000; // 100 MB/s: 100 kB per ms

    #[test]
    fn smooth_acks_at_the_model_rate_need_nothing_extra() {
        let t0 = Instant::now();
        let mut a = AckAggregation::default();
        // 10 kB every 100 µs = 100 MB/s, exactly the estimate.
        for i in 0..1000u64 {
            let now = t0 + Duration::from_micros(100 * i);
            a.on_ack(now, 10_000, BW, 1 << 20, i % 10 == 0);
        }
        // One ACK's worth at most (an epoch's first ACK counts whole).
        assert!(a.extra(BW) <= 10_000, "{}", a.extra(BW));
    }

    #[test]
    fn a_clump_every_millisecond_is_measured_and_capped_by_the_window() {
        let t0 = Instant::now();
        // Nothing for 1 ms, then the millisecond's 100 kB at once: the rate is the model's,
        // but the window must hold a whole clump on top of the BDP.
        let mut a = AckAggregation::default();
        for i in 0..100u64 {
            a.on_ack(t0 + Duration::from_millis(i), 100_000, BW, 1 << 20, true);
        }
        assert_eq!(a.extra(BW), 100_000);
        // The window caps it: no more than was in flight can have been held back.
        let mut b = AckAggregation::default();
        for i in 0..100u64 {
            b.on_ack(t0 + Duration::from_millis(i), 100_000, BW, 40_000, true);
        }
        assert_eq!(b.extra(BW), 40_000);
        // And so does 100 ms at the bandwidth.
        assert_eq!(a.extra(500_000), 50_000);
    }

    #[test]
    fn an_old_clump_is_forgotten_after_two_windows_of_rounds() {
        let t0 = Instant::now();
        let mut a = AckAggregation::default();
        a.on_ack(t0, 500_000, BW, 1 << 20, true);
        assert_eq!(a.extra(BW), 500_000);
        for i in 1..=2 * WINDOW_ROUNDS {
            let now = t0 + Duration::from_millis(10 * i);
            // Smooth: 1 MB per 10 ms would be 100 MB/s; these ACKs are below it.
            a.on_ack(now, 1000, BW, 1 << 20, true);
        }
        assert!(a.extra(BW) <= 1000, "{}", a.extra(BW));
    }
}
