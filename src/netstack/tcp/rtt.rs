//! Round-trip time: smoothed estimate and retransmission timeout (RFC 6298), and a windowed
//! minimum for RACK and the controllers.
//!
//! The connection decides what counts as a sample (Karn's rule: never an ACK that may answer a
//! retransmission, unless a timestamp echo says which transmission it answers) and feeds it here.
//!
//! ## The RTO floor
//!
//! RFC 6298 clamps the RTO to at least 1 s; that floor is what stalls smoltcp for a second on
//! every tail loss. Linux instead puts its 200 ms floor on the *variance term*:
//! `RTO = SRTT + max(4·RTTVAR, min_rto)`. On a 30 ms path that gives ~230 ms (not 1 s), and on a
//! 300 ms path ~500 ms rather than a bare 200 ms that a little queueing would fire spuriously. We
//! do the same, then clamp to `[min_rto, max_rto]` (so the RTO itself is never below the floor),
//! and double it per back-off.

use std::time::{Duration, Instant};

/// Clock granularity G of RFC 6298: our clock is the caller's `Instant` (microseconds or better).
const GRANULARITY: Duration = Duration::from_millis(1);

/// RTT estimator and RTO. See the module docs.
#[derive(Debug, Clone)]
pub(crate) struct RttEstimator {
    srtt: Option<Duration>,
    rttvar: Duration,
    latest: Duration,
    min: MinFilter,
    backoff: u32,
    initial_rto: Duration,
    min_rto: Duration,
    max_rto: Duration,
}

impl RttEstimator {
    pub fn new(initial_rto: Duration, min_rto: Duration, max_rto: Duration) -> Self {
        Self {
            srtt: None,
            rttvar: Duration::ZERO,
            latest: Duration::ZERO,
            min: MinFilter::new(Duration::from_secs(300)),
            backoff: 0,
            initial_rto,
            min_rto,
            max_rto,
        }
    }

    /// Takes one RTT measurement (RFC 6298 2.2/2.3).
    pub fn on_sample(&mut self, now: Instant, rtt: Duration) {
        let rtt = rtt.max(Duration::from_micros(1));
        self.latest = rtt;
        self.min.update(now, rtt);
        match self.srtt {
            None => {
                self.srtt = Some(rtt);
                self.rttvar = rtt / 2;
            }
            Some(srtt) => {
                let err = srtt.abs_diff(rtt);
                self.rttvar = (self.rttvar * 3 + err) / 4;
                self.srtt = Some((srtt * 7 + rtt) / 8);
            }
        }
    }

    /// The smoothed RTT, once there is a sample.
    pub fn srtt(&self) -> Option<Duration> {
        self.srtt
    }

    /// The smallest sample of the last five minutes.
    pub fn min_rtt(&self) -> Option<Duration> {
        self.min.get()
    }

    /// The RTO without back-off.
    pub fn base_rto(&self) -> Duration {
        let rto = match self.srtt {
            None => self.initial_rto,
            Some(srtt) => srtt + (self.rttvar * 4).max(GRANULARITY).max(self.min_rto),
        };
        rto.clamp(self.min_rto, self.max_rto)
    }

    /// The RTO with the current exponential back-off applied.
    pub fn rto(&self) -> Duration {
        let base = self.base_rto();
        let factor = 1u32 << self.backoff.min(16);
        base.saturating_mul(factor).min(self.max_rto)
    }

    /// Doubles the RTO (RFC 6298 5.5).
    pub fn back_off(&mut self) {
        self.backoff = self.backoff.saturating_add(1);
    }

    /// Ends the back-off (an ACK for new data arrived).
    pub fn reset_backoff(&mut self) {
        self.backoff = 0;
    }
}

/// Minimum over a sliding time window, kept in at most five buckets (one per quarter window and
/// the current one), so it stays exact to a quarter window and O(1) in memory.
#[derive(Debug, Clone)]
pub(crate) struct MinFilter {
    window: Duration,
    buckets: [Option<(Instant, Duration)>; 5],
}

impl MinFilter {
    pub fn new(window: Duration) -> Self {
        Self {
            window,
            buckets: [None; 5],
        }
    }

    pub fn update(&mut self, now: Instant, sample: Duration) {
        // Expire buckets that began more than a window ago.
        for b in &mut self.buckets {
            if b.is_some_and(|(t, _)| now.saturating_duration_since(t) > self.window) {
                *b = None;
            }
        }
        let quarter = self.window / 4;
        let newest = self
            .buckets
            .iter_mut()
            .flatten()
            .max_by_key(|(t, _)| *t)
            .filter(|(t, _)| now.saturating_duration_since(*t) < quarter);
        if let Some((_, min)) = newest {
            *min = (*min).min(sample);
            return;
        }
        // A new bucket: take a free slot, or the oldest one.
        let slot = self
            .buckets
            .iter()
            .position(Option::is_none)
            .or_else(|| {
                self.buckets
                    .iter()
                    .enumerate()
                    .min_by_key(|(_, b)| b.map(|(t, _)| t))
                    .map(|(i, _)| i)
            })
            .unwrap_or(0);
        self.buckets[slot] = Some((now, sample));
    }

    pub fn get(&self) -> Option<Duration> {
        self.buckets.iter().flatten().map(|&(_, d)| d).min()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    fn est() -> RttEstimator {
        RttEstimator::new(Duration::from_secs(1), 200 * MS, Duration::from_secs(60))
    }

    #[test]
    fn first_sample_sets_srtt_and_half_variance() {
        let t0 = Instant::now();
        let mut e = est();
        assert_eq!(
            e.rto(),
            Duration::from_secs(1),
            "initial RTO before any sample"
        );
        e.on_sample(t0, 30 * MS);
        assert_eq!(e.srtt(), Some(30 * MS));
        // 30 + max(4 * 15, 200) = 230 ms: the floor sits on the variance term.
        assert_eq!(e.rto(), 230 * MS);
        for i in 0..50 {
            e.on_sample(t0 + i * MS, 30 * MS);
        }
        assert!(e.rto() >= 200 * MS && e.rto() <= 231 * MS, "{:?}", e.rto());
    }

    #[test]
    fn variance_dominates_on_jittery_paths_and_backoff_doubles_to_the_cap() {
        let t0 = Instant::now();
        let mut e = est();
        for i in 0..40 {
            let rtt = if i % 2 == 0 { 100 * MS } else { 400 * MS };
            e.on_sample(t0, rtt);
        }
        assert!(
            e.rto() > 600 * MS,
            "4·RTTVAR above the floor: {:?}",
            e.rto()
        );
        let base = e.rto();
        e.back_off();
        assert_eq!(e.rto(), (base * 2).min(Duration::from_secs(60)));
        for _ in 0..20 {
            e.back_off();
        }
        assert_eq!(e.rto(), Duration::from_secs(60));
        e.reset_backoff();
        assert_eq!(e.rto(), base);
    }

    #[test]
    fn min_filter_forgets_old_minimums() {
        let t0 = Instant::now();
        let mut f = MinFilter::new(Duration::from_secs(10));
        f.update(t0, 5 * MS);
        f.update(t0 + Duration::from_secs(1), 9 * MS);
        assert_eq!(f.get(), Some(5 * MS));
        f.update(t0 + Duration::from_secs(4), 8 * MS);
        f.update(t0 + Duration::from_secs(7), 7 * MS);
        assert_eq!(f.get(), Some(5 * MS));
        // 11 s later the 5 ms bucket (started at t0) is gone; 8 ms (4 s) and 7 ms remain.
        f.update(t0 + Duration::from_secs(11), 12 * MS);
        assert_eq!(f.get(), Some(7 * MS));
        f.update(t0 + Duration::from_secs(40), 20 * MS);
        assert_eq!(f.get(), Some(20 * MS));
    }
}
