//! NewReno (RFC 5681, RFC 6582): slow start, then one segment per window of bytes acknowledged;
//! halve on loss. The reference controller, and what a connection falls back to when asked.

use std::time::Instant;

use super::{Ack, Controller, slow_start};

/// NewReno congestion control, byte-counted.
#[derive(Debug, Clone)]
pub struct NewReno {
    mss: u64,
    cwnd: u64,
    ssthresh: u64,
    /// Bytes acknowledged in congestion avoidance not yet turned into window.
    acc: u64,
}

impl NewReno {
    /// A controller for `mss`-byte segments starting at `initial_window` bytes.
    pub fn new(mss: u32, initial_window: u64) -> Self {
        let mss = u64::from(mss.max(1));
        Self {
            mss,
            cwnd: initial_window.max(mss),
            ssthresh: u64::MAX,
            acc: 0,
        }
    }

    fn cut(&mut self, base: u64) {
        self.ssthresh = (base / 2).max(2 * self.mss);
        self.acc = 0;
    }
}

impl Controller for NewReno {
    fn on_ack(&mut self, _now: Instant, ack: &Ack) {
        if !ack.cwnd_limited {
            return;
        }
        let mut left = ack.bytes;
        if self.cwnd < self.ssthresh {
            left = slow_start(&mut self.cwnd, self.ssthresh, left);
        }
        // Congestion avoidance: one MSS per cwnd bytes acknowledged.
        self.acc += left;
        while self.acc >= self.cwnd {
            self.acc -= self.cwnd;
            self.cwnd += self.mss;
        }
    }

    fn on_congestion_event(&mut self, _now: Instant, in_flight: u64) {
        self.cut(in_flight.max(self.mss));
    }

    fn on_recovery_end(&mut self, _now: Instant) {
        if self.ssthresh != u64::MAX {
            self.cwnd = self.ssthresh;
        }
    }

    fn on_rto(&mut self, _now: Instant, new_episode: bool) {
        if new_episode {
            self.cut(self.cwnd);
        }
        self.cwnd = self.mss;
    }

    fn on_rto_undone(&mut self, _now: Instant, cwnd: u64, ssthresh: u64) {
        self.cwnd = self.cwnd.max(cwnd);
        self.ssthresh = self.ssthresh.max(ssthresh);
    }

    fn window(&self) -> u64 {
        self.cwnd
    }

    fn ssthresh(&self) -> u64 {
        self.ssthresh
    }

    fn name(&self) -> &'static str {
        "newreno"
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::ack;
    use super::*;

    #[test]
    fn congestion_avoidance_adds_one_segment_per_window() {
        let t0 = Instant::now();
        let mut c = NewReno::new(1000, 10_000);
        c.on_congestion_event(t0, 20_000);
        c.on_recovery_end(t0);
        assert_eq!(c.window(), 10_000);
        // One window's worth of bytes, in any ACK pattern, adds one MSS.
        c.on_ack(t0, &ack(4000, true));
        c.on_ack(t0, &ack(5999, true));
        assert_eq!(c.window(), 10_000);
        c.on_ack(t0, &ack(1, true));
        assert_eq!(c.window(), 11_000);
    }
}
