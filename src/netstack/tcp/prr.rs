//! Proportional Rate Reduction (RFC 6937, as revised by RFC 9937) for fast recovery.
//!
//! When a loss episode begins the controller sets `ssthresh` (say 70 % of the window). Halving the
//! flight at once (Reno) would stall the ACK clock; sending one segment per ACK (RFC 6675's
//! `pipe < cwnd` rule alone) bursts or starves depending on how many ACKs survive. PRR spreads
//! the reduction over the recovery round trip: for every byte the peer reports delivered, send
//! `ssthresh / RecoverFS` bytes while the flight is above `ssthresh`, and once it has fallen below
//! (more losses than the cut), grow it back towards `ssthresh` no faster than slow start
//! (PRR-SSRB). The result is a window that lands on `ssthresh` when recovery ends, with
//! retransmissions clocked out by the ACKs that arrive.

/// PRR state for one recovery episode.
#[derive(Debug, Clone, Default)]
pub(crate) struct Prr {
    /// Bytes in flight when recovery began (RFC 9937 uses `pipe`).
    recover_fs: u64,
    /// Bytes delivered to the peer since recovery began.
    delivered: u64,
    /// Bytes sent since recovery began.
    out: u64,
    ssthresh: u64,
}

impl Prr {
    /// Starts an episode: `pipe` bytes in flight, the controller's new `ssthresh`.
    pub fn start(pipe: u64, ssthresh: u64) -> Self {
        Self {
            recover_fs: pipe.max(1),
            delivered: 0,
            out: 0,
            ssthresh,
        }
    }

    /// Bytes sent during recovery (retransmissions and new data).
    pub fn on_sent(&mut self, bytes: u64) {
        self.out += bytes;
    }

    /// One ACK reported `delivered` bytes (cumulatively or by SACK); `pipe` is the flight after
    /// processing it. Returns how many bytes may be sent now (`sndcnt`); the connection's
    /// window for the moment is `pipe + sndcnt`.
    pub fn on_ack(&mut self, delivered: u64, pipe: u64, mss: u64) -> u64 {
        self.delivered += delivered;
        let sndcnt = if pipe > self.ssthresh {
            // Proportional part: ceil(delivered · ssthresh / RecoverFS) − out.
            let target = (u128::from(self.delivered) * u128::from(self.ssthresh))
                .div_ceil(u128::from(self.recover_fs));
            u64::try_from(target)
                .unwrap_or(u64::MAX)
                .saturating_sub(self.out)
        } else {
            // Slow-start reduction bound: catch up to ssthresh, at most one MSS beyond what
            // was delivered.
            let limit = self.delivered.saturating_sub(self.out).max(delivered) + mss;
            (self.ssthresh - pipe).min(limit)
        };
        // Always allow the fast retransmit itself.
        if self.out == 0 && sndcnt == 0 {
            return mss;
        }
        sndcnt
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_loss_in_twenty_segments_sends_seven_for_every_ten_delivered() {
        // Twenty 1000-byte segments in flight, one lost, ssthresh 70 %.
        let mss = 1000;
        let mut prr = Prr::start(20_000, 14_000);
        let mut pipe = 19_000; // the lost one is no longer counted
        let mut sent = 0;
        for _ in 0..19 {
            pipe -= 1000; // one SACK
            let n = prr.on_ack(1000, pipe, mss);
            // Send whole segments only, as the connection does.
            let k = n / 1000 * 1000;
            prr.on_sent(k);
            pipe += k;
            sent += k;
        }
        // 19 segments delivered · 0.7 ≈ 13.3: the reduction is spread, not front-loaded.
        assert!((13_000..=14_000).contains(&sent), "sent {sent}");
        assert!(pipe <= 14_000);
    }

    #[test]
    fn heavy_loss_grows_back_like_slow_start_and_the_first_ack_may_retransmit() {
        let mss = 1000;
        let mut prr = Prr::start(20_000, 14_000);
        // Half the window lost: pipe far below ssthresh.
        assert_eq!(
            prr.on_ack(0, 10_000, mss),
            mss,
            "fast retransmit always allowed"
        );
        prr.on_sent(1000);
        let n = prr.on_ack(1000, 10_000, mss);
        assert_eq!(n, 2000, "at most delivered + one MSS per ACK");
    }
}
