//! CUBIC (RFC 9438): after a loss the window follows a cubic curve in *time* since the loss,
//! plateauing near the window where the loss happened (`W_max`) and probing beyond it, so a long
//! fat path refills in seconds rather than the minutes Reno's one segment per RTT needs.
//!
//! Window sizes are kept in bytes as `f64` (the cubic is defined in segments; we scale by the MSS)
//! so that fractional growth per ACK accumulates instead of rounding away. Constants are the RFC's:
//! `C = 0.4`, `β = 0.7`, fast convergence on, the Reno-friendly estimate `W_est` with
//! `α = 3(1-β)/(1+β)` until it passes the window before the loss, then 1.

use std::time::{Duration, Instant};

use super::hystart::{CSS_GROWTH_DIVISOR, HyStart, Phase};
use super::{Ack, Controller, slow_start};

const C: f64 = 0.4;
const BETA: f64 = 0.7;

/// CUBIC congestion control. See the module docs.
#[derive(Debug, Clone)]
pub struct Cubic {
    mss: f64,
    cwnd: f64,
    ssthresh: u64,
    /// Window (bytes) just before the last reduction.
    w_max: f64,
    /// Window before the last reduction, for the Reno-friendly α switch.
    cwnd_prior: f64,
    /// Start of the current congestion-avoidance epoch.
    epoch: Option<Instant>,
    /// Seconds from the epoch until the cubic reaches `w_max`.
    k: f64,
    /// Reno-friendly window estimate, bytes.
    w_est: f64,
    /// When `on_ack` last ran (to skip periods the window was not used).
    last_ack: Option<Instant>,
    /// Slow-start exit before the queue overflows.
    hystart: HyStart,
    /// The ACK train of this round: when its first ACK came, and its latest one.
    train: Option<(Instant, Instant)>,
}

impl Cubic {
    /// A controller for `mss`-byte segments starting at `initial_window` bytes.
    pub fn new(mss: u32, initial_window: u64) -> Self {
        let mss = f64::from(mss.max(1));
        let cwnd = (initial_window as f64).max(mss);
        Self {
            mss,
            cwnd,
            ssthresh: u64::MAX,
            w_max: 0.0,
            cwnd_prior: 0.0,
            epoch: None,
            k: 0.0,
            w_est: cwnd,
            last_ack: None,
            hystart: HyStart::default(),
            train: None,
        }
    }

    /// ACK-train detection (Linux CUBIC's HyStart, which HyStart++'s delay rule lacks): in slow
    /// start the ACKs of one round arrive back to back, spaced by the bottleneck's
    /// serialisation time; once such a train lasts longer than half the minimum RTT the window
    /// fills the path, and doubling it again only fills queues. On a LAN (a round trip of
    /// 0.1 ms) the delay rule never fires — its threshold is at least 4 ms — and slow start
    /// ran until a queue overflowed by megabytes: hundreds of segments lost at once, and
    /// retransmission timeouts. Returns whether slow start should end here.
    fn ack_train_full(&mut self, now: Instant, ack: &Ack) -> bool {
        const SPACING: Duration = Duration::from_millis(2);
        const LOW_WINDOW: f64 = 16.0;
        let Some(min_rtt) = ack.min_rtt.or(ack.rtt) else {
            return false;
        };
        if ack.round_start || self.train.is_none() {
            self.train = Some((now, now));
            return false;
        }
        let Some((start, last)) = self.train else {
            return false;
        };
        if now.saturating_duration_since(last) > SPACING {
            // The train broke: the rest of this round is not back to back.
            return false;
        }
        self.train = Some((start, now));
        self.cwnd >= LOW_WINDOW * self.mss && now.saturating_duration_since(start) > min_rtt / 2
    }

    /// The cubic window (bytes) `t` seconds into the epoch.
    fn w_cubic(&self, t: f64) -> f64 {
        let d = t - self.k;
        C * d * d * d * self.mss + self.w_max
    }

    fn reduce(&mut self) {
        // Fast convergence: a flow whose window keeps falling releases bandwidth sooner.
        self.w_max = if self.cwnd < self.w_max {
            self.cwnd * (1.0 + BETA) / 2.0
        } else {
            self.cwnd
        };
        self.cwnd_prior = self.cwnd;
        let floor = 2.0 * self.mss;
        self.ssthresh = (self.cwnd * BETA).max(floor) as u64;
        self.epoch = None;
        self.hystart.reset();
        self.train = None;
    }

    fn congestion_avoidance(&mut self, now: Instant, acked: f64, rtt: Duration) {
        let epoch = *self.epoch.get_or_insert_with(|| {
            self.k = if self.cwnd < self.w_max {
                ((self.w_max - self.cwnd) / self.mss / C).cbrt()
            } else {
                self.w_max = self.cwnd;
                0.0
            };
            self.w_est = self.cwnd;
            now
        });
        let t = now.saturating_duration_since(epoch).as_secs_f64();
        // Reno-friendly region (RFC 9438 4.3).
        let alpha = if self.w_est >= self.cwnd_prior {
            1.0
        } else {
            3.0 * (1.0 - BETA) / (1.0 + BETA)
        };
        self.w_est += alpha * acked / self.cwnd * self.mss;
        let cubic_now = self.w_cubic(t);
        if cubic_now < self.w_est {
            self.cwnd = self.cwnd.max(self.w_est);
            return;
        }
        // Concave / convex regions (RFC 9438 4.4, 4.5): aim one RTT ahead, at most 1.5x.
        let target = self
            .w_cubic(t + rtt.as_secs_f64())
            .clamp(self.cwnd, 1.5 * self.cwnd);
        self.cwnd += (target - self.cwnd) / self.cwnd * acked;
    }
}

impl Controller for Cubic {
    fn on_ack(&mut self, now: Instant, ack: &Ack) {
        let last = self.last_ack.replace(now);
        let in_slow_start = (self.cwnd as u64) < self.ssthresh;
        let mut phase = if in_slow_start {
            self.hystart.on_ack(ack)
        } else {
            Phase::SlowStart
        };
        if in_slow_start && ack.cwnd_limited && self.ack_train_full(now, ack) {
            phase = Phase::Exit;
        }
        if phase == Phase::Exit {
            self.ssthresh = self.cwnd as u64;
        }
        if !ack.cwnd_limited {
            // Time the window was not used does not count towards the cubic's growth
            // (RFC 9438 5.8: an application-limited sender must not jump when it resumes).
            if let (Some(epoch), Some(last)) = (self.epoch.as_mut(), last) {
                *epoch += now.saturating_duration_since(last);
            }
            return;
        }
        let mut left = ack.bytes;
        if (self.cwnd as u64) < self.ssthresh {
            let mut w = self.cwnd as u64;
            left = if phase == Phase::Conservative {
                slow_start(&mut w, self.ssthresh, left / CSS_GROWTH_DIVISOR);
                0
            } else {
                slow_start(&mut w, self.ssthresh, left)
            };
            self.cwnd = self.cwnd.max(w as f64);
            if left == 0 {
                return;
            }
        }
        let rtt = ack.min_rtt.or(ack.rtt).unwrap_or(Duration::ZERO);
        self.congestion_avoidance(now, left as f64, rtt);
    }

    fn on_congestion_event(&mut self, _now: Instant, _in_flight: u64) {
        self.reduce();
    }

    fn on_recovery_end(&mut self, _now: Instant) {
        if self.ssthresh != u64::MAX {
            self.cwnd = self.ssthresh as f64;
        }
    }

    fn on_rto(&mut self, _now: Instant, new_episode: bool) {
        if new_episode {
            self.reduce();
        }
        self.epoch = None;
        self.cwnd = self.mss;
    }

    fn on_rto_undone(&mut self, _now: Instant, cwnd: u64, ssthresh: u64) {
        // As Linux: window and threshold come back; `W_max` stays where the timeout put it
        // and a new epoch starts from the restored window.
        self.cwnd = self.cwnd.max(cwnd as f64);
        self.ssthresh = self.ssthresh.max(ssthresh);
        self.epoch = None;
    }

    fn window(&self) -> u64 {
        self.cwnd as u64
    }

    fn ssthresh(&self) -> u64 {
        self.ssthresh
    }

    fn name(&self) -> &'static str {
        "cubic"
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::ack;
    use super::*;

    #[test]
    fn window_returns_to_w_max_after_k_seconds_then_probes_beyond() {
        let t0 = Instant::now();
        let mss = 1000;
        let mut c = Cubic::new(mss, 1_000_000);
        c.on_congestion_event(t0, 1_000_000);
        c.on_recovery_end(t0);
        assert_eq!(c.window(), 700_000);
        // K = cbrt(300 segments / 0.4) ≈ 9.09 s.
        let mut now = t0;
        let step = Duration::from_millis(10);
        let mut at = std::collections::BTreeMap::new();
        for i in 1..=2000u64 {
            now += step;
            // One window's worth per 30 ms RTT ≈ cwnd/3 per 10 ms step.
            let w = c.window();
            c.on_ack(now, &ack(w / 3, true));
            at.insert(i * 10, c.window());
        }
        // W_cubic(4.5 s) = 1e6 - 0.4·(4.59)³·1000 ≈ 961 kB: concave, slowing towards W_max.
        let mid = at[&4500];
        assert!((940_000..980_000).contains(&mid), "at 4.5 s: {mid}");
        let k = at[&9100];
        assert!((990_000..1_010_000).contains(&k), "at K: {k}");
        assert!(
            at[&20_000] > 1_300_000,
            "probes past W_max: {}",
            at[&20_000]
        );
    }

    #[test]
    fn a_long_ack_train_ends_slow_start_on_a_short_path() {
        // 1 ms round trip; a round's ACKs 50 µs apart: after 0.5 ms of back-to-back ACKs the
        // window fills the path.
        let t0 = Instant::now();
        let mss = 1000;
        let mut c = Cubic::new(mss, 20_000);
        let mut a = ack(1000, true);
        a.min_rtt = Some(Duration::from_millis(1));
        a.round_start = true;
        c.on_ack(t0, &a);
        a.round_start = false;
        let mut now = t0;
        let mut exited_at = None;
        for i in 1..=40u32 {
            now += Duration::from_micros(50);
            c.on_ack(now, &a);
            if exited_at.is_none() && c.ssthresh() != u64::MAX {
                exited_at = Some(i);
            }
        }
        assert_eq!(
            exited_at,
            Some(11),
            "the train passes 0.5 ms at its 11th ACK"
        );
        // ACKs spread over the round (a path that is not full) do not end slow start.
        let mut c = Cubic::new(mss, 20_000);
        a.round_start = true;
        c.on_ack(t0, &a);
        a.round_start = false;
        let mut now = t0;
        for _ in 0..40 {
            now += Duration::from_millis(3);
            c.on_ack(now, &a);
        }
        assert_eq!(c.ssthresh(), u64::MAX);
    }

    #[test]
    fn fast_convergence_lowers_w_max_when_losses_come_sooner() {
        let t0 = Instant::now();
        let mut c = Cubic::new(1000, 100_000);
        c.on_congestion_event(t0, 100_000);
        c.on_recovery_end(t0);
        c.on_congestion_event(t0, 70_000);
        // Second loss below the previous W_max: W_max = 70k * (1 + 0.7) / 2.
        assert_eq!(c.w_max as u64, 59_500);
        assert_eq!(c.ssthresh(), 49_000);
    }
}
