//! HyStart++ (RFC 9406): leave slow start when the RTT starts to climb, before the bottleneck
//! queue overflows.
//!
//! Slow start doubles the window every round trip; by the time the first drop is seen the window
//! is up to twice what the path holds, and the loss of half a window follows (hundreds of
//! retransmissions on a fast path with a modest queue). HyStart++ watches the minimum RTT of each
//! round: when it exceeds the previous round's by `clamp(min_rtt / 8, 4 ms, 16 ms)` a queue is
//! building, and growth slows to a quarter (conservative slow start, CSS) for up to five rounds.
//! If the RTT falls back it was a false alarm and slow start resumes; otherwise congestion
//! avoidance begins at the window reached.

use std::time::Duration;

use super::Ack;

const MIN_RTT_THRESH: Duration = Duration::from_millis(4);
const MAX_RTT_THRESH: Duration = Duration::from_millis(16);
const MIN_RTT_DIVISOR: u32 = 8;
const N_RTT_SAMPLE: u32 = 8;
/// Growth during CSS is the acknowledged bytes divided by this.
pub const CSS_GROWTH_DIVISOR: u64 = 4;
const CSS_ROUNDS: u32 = 5;

/// What slow start should do with this ACK.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Grow by the bytes acknowledged.
    SlowStart,
    /// Grow by a quarter of them.
    Conservative,
    /// End slow start here (`ssthresh = cwnd`).
    Exit,
}

#[derive(Debug, Clone, Copy)]
struct Css {
    baseline: Duration,
    rounds: u32,
}

/// HyStart++ state of one slow start.
#[derive(Debug, Clone, Default)]
pub struct HyStart {
    last_round_min: Option<Duration>,
    round_min: Option<Duration>,
    samples: u32,
    css: Option<Css>,
}

impl HyStart {
    /// Feeds one ACK received in slow start.
    pub fn on_ack(&mut self, ack: &Ack) -> Phase {
        if ack.round_start {
            if let Some(css) = &mut self.css {
                css.rounds += 1;
                if css.rounds >= CSS_ROUNDS {
                    *self = Self::default();
                    return Phase::Exit;
                }
            }
            self.last_round_min = self.round_min.take();
            self.samples = 0;
        }
        if let Some(rtt) = ack.rtt {
            self.round_min = Some(self.round_min.map_or(rtt, |m| m.min(rtt)));
            self.samples += 1;
        }
        if self.samples >= N_RTT_SAMPLE {
            if let Some(cur) = self.round_min {
                match self.css {
                    None => {
                        if let Some(last) = self.last_round_min {
                            let thresh =
                                (last / MIN_RTT_DIVISOR).clamp(MIN_RTT_THRESH, MAX_RTT_THRESH);
                            if cur >= last + thresh {
                                self.css = Some(Css {
                                    baseline: cur,
                                    rounds: 0,
                                });
                            }
                        }
                    }
                    Some(css) if cur < css.baseline => self.css = None,
                    Some(_) => {}
                }
            }
        }
        if self.css.is_some() {
            Phase::Conservative
        } else {
            Phase::SlowStart
        }
    }

    /// Forgets everything (a loss ended slow start; the next one starts afresh).
    pub fn reset(&mut self) {
        *self = Self::default();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ack(rtt_ms: u64, round_start: bool) -> Ack {
        Ack {
            bytes: 1000,
            rtt: Some(Duration::from_millis(rtt_ms)),
            min_rtt: None,
            prior_in_flight: 0,
            cwnd_limited: true,
            round_start,
            rate: None,
            lost: 0,
        }
    }

    fn round(h: &mut HyStart, rtt_ms: u64) -> Phase {
        let mut p = h.on_ack(&ack(rtt_ms, true));
        for _ in 0..9 {
            p = h.on_ack(&ack(rtt_ms, false));
        }
        p
    }

    #[test]
    fn a_rising_rtt_slows_growth_then_ends_slow_start() {
        let mut h = HyStart::default();
        assert_eq!(round(&mut h, 30), Phase::SlowStart);
        assert_eq!(
            round(&mut h, 33),
            Phase::SlowStart,
            "+3 ms is below the 4 ms threshold"
        );
        assert_eq!(
            round(&mut h, 38),
            Phase::Conservative,
            "+5 ms over the last round"
        );
        for _ in 0..4 {
            assert_eq!(round(&mut h, 38), Phase::Conservative);
        }
        assert_eq!(
            h.on_ack(&ack(38, true)),
            Phase::Exit,
            "after five CSS rounds"
        );
    }

    #[test]
    fn a_falling_rtt_during_css_resumes_slow_start() {
        let mut h = HyStart::default();
        round(&mut h, 30);
        assert_eq!(round(&mut h, 40), Phase::Conservative);
        assert_eq!(round(&mut h, 31), Phase::SlowStart);
    }
}
