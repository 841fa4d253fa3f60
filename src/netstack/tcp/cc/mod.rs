//! Congestion control: how much may be in flight, decided from ACK feedback.
//!
//! A [`Controller`] only decides the congestion window *outside* loss recovery and how far to cut
//! it when a loss episode begins; the connection runs the recovery itself (PRR,
//! [`super::prr`]) and hands the window back at its end. That split is the one gVisor and Linux
//! use, and it keeps every controller small:
//!
//! * [`Controller::on_ack`] — data was delivered (cumulatively or selectively acknowledged) while
//!   not in recovery: grow. The bytes are counted, not the ACKs (appropriate byte counting,
//!   RFC 3465): a receiver behind GRO acknowledges dozens of segments at once, and growing per
//!   ACK would starve the window. The sample says whether the flight was limited by the window
//!   (RFC 7661): a window that was not used must not grow, or it climbs without bound on an
//!   application- or receiver-limited connection.
//! * [`Controller::on_congestion_event`] — the first loss of a window was detected: set
//!   `ssthresh` (the window recovery converges to).
//! * [`Controller::on_recovery_end`] — recovery finished: the window becomes `ssthresh`.
//! * [`Controller::on_rto`] — the retransmission timer fired: the window collapses to one
//!   segment (RFC 5681), `ssthresh` is cut if this starts a new episode;
//!   [`Controller::on_rto_undone`] restores both when the timeout proves spurious.
//!
//! The [`Ack`] sample also carries the delivery-rate sample ([`RateSample`]) and the trait a
//! pacing rate: [`Bbr`] uses both, and says with [`Controller::keeps_window_in_recovery`] that
//! loss recovery must not cut its window.

mod aggregation;
mod bbr;
mod cubic;
mod hystart;
mod new_reno;

use std::fmt;
use std::time::{Duration, Instant};

pub use aggregation::AckAggregation;
pub use bbr::{Bbr, Mode as BbrMode};

/// The most a paced connection sends at once: 1 ms at `rate` bytes/s, at least two segments
/// of `mss` and at most 64 KiB (as Linux sizes its TSO bursts). The pacer (`conn/output.rs`)
/// lets a quiet connection send one such quantum at once; BBR keeps room for three in its
/// window, as Linux's `bbr_quantization_budget`, so that bursts never starve the flight.
pub fn pacing_quantum(rate: u64, mss: u64) -> u64 {
    let floor = 2 * mss;
    ((rate as f64 * 1e-3) as u64).clamp(floor, floor.max(65536))
}
pub use cubic::Cubic;
pub use new_reno::NewReno;

/// Which controller a connection runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum Algorithm {
    /// CUBIC (RFC 9438), Linux's default: fills long fat paths quickly after a loss.
    Cubic,
    /// NewReno (RFC 5681 / RFC 6582): the simple reference.
    NewReno,
    /// BBR-like (model-based, paced; see [`Bbr`]): random loss costs what it loses, not the
    /// window. The default (issue 19: within the target of every WAN case where CUBIC was
    /// not, and on par with it on the loss-free LAN).
    #[default]
    Bbr,
}

impl Algorithm {
    /// A fresh controller for a connection whose segments carry `mss` payload bytes and whose
    /// initial window is `initial_window` bytes.
    pub fn build(self, mss: u32, initial_window: u64) -> Box<dyn Controller> {
        match self {
            Algorithm::Cubic => Box::new(Cubic::new(mss, initial_window)),
            Algorithm::NewReno => Box::new(NewReno::new(mss, initial_window)),
            Algorithm::Bbr => Box::new(Bbr::new(mss, initial_window)),
        }
    }
}

/// A delivery-rate sample (the `tcp_rate` idea: bytes delivered between sending a segment and
/// its acknowledgement, over the longer of the send and ACK intervals).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateSample {
    /// Bytes delivered over `interval`.
    pub delivered: u64,
    /// The interval the bytes were delivered over.
    pub interval: Duration,
    /// The connection's delivered count when the sampled segment was sent (so
    /// `prior_delivered + delivered` is the count now): a controller that counts round trips
    /// by delivery, as BBR does, knows from it whether the segment was sent in this round.
    pub prior_delivered: u64,
    /// The sample was taken while the application (not the network) limited the flight; such a
    /// sample underestimates the path.
    pub app_limited: bool,
}

impl RateSample {
    /// Bytes per second.
    pub fn bytes_per_sec(&self) -> u64 {
        let us = self.interval.as_micros().max(1);
        u64::try_from(u128::from(self.delivered) * 1_000_000 / us).unwrap_or(u64::MAX)
    }
}

/// What one ACK delivered (see the module docs).
#[derive(Debug, Clone, Copy)]
pub struct Ack {
    /// Bytes newly acknowledged, cumulatively or by SACK.
    pub bytes: u64,
    /// RTT sample from this ACK, if it gave one.
    pub rtt: Option<Duration>,
    /// The smallest RTT seen recently.
    pub min_rtt: Option<Duration>,
    /// Bytes in flight before this ACK was processed.
    pub prior_in_flight: u64,
    /// Whether the window limited the flight in the last round trip (RFC 7661).
    pub cwnd_limited: bool,
    /// This ACK began a new round trip (it acknowledged what was `SND.NXT` when the last
    /// round began): per-round logic such as HyStart++ keys on it.
    pub round_start: bool,
    /// Delivery-rate sample, if this ACK gave one.
    pub rate: Option<RateSample>,
    /// Segments this ACK made RACK mark lost.
    pub lost: u32,
}

/// A congestion controller. See the module docs for the contract.
pub trait Controller: fmt::Debug + Send {
    /// Data delivered outside recovery.
    fn on_ack(&mut self, now: Instant, ack: &Ack);
    /// The first loss of a window was detected (fast recovery, or a lost tail probe).
    fn on_congestion_event(&mut self, now: Instant, in_flight: u64);
    /// Recovery ended: the window becomes `ssthresh`.
    fn on_recovery_end(&mut self, now: Instant);
    /// Loss detection marked `bytes` more as lost (by an ACK or by RACK's reordering timer),
    /// before any [`on_congestion_event`](Controller::on_congestion_event) for them. Those bytes
    /// left `pipe`, so a window kept as it was would let the sender put them back at once, on
    /// top of what the ACKs clock out. A controller whose window PRR does not steer (see
    /// [`keeps_window_in_recovery`](Controller::keeps_window_in_recovery)) takes them out of
    /// its window here; the others leave this to PRR.
    fn on_lost(&mut self, _now: Instant, _bytes: u64) {}
    /// The retransmission timer fired. `new_episode` is false when recovery was already under
    /// way for this window (then `ssthresh` stays).
    fn on_rto(&mut self, now: Instant, new_episode: bool);
    /// The last retransmission timeout was spurious (RFC 4015): the window and threshold go
    /// back to at least `cwnd` and `ssthresh`, what they were before it. The default keeps
    /// what the controller has (a model-based window regrows from its model).
    fn on_rto_undone(&mut self, _now: Instant, _cwnd: u64, _ssthresh: u64) {}
    /// Congestion window, bytes.
    fn window(&self) -> u64;
    /// Slow-start threshold, bytes (`u64::MAX` before the first loss).
    fn ssthresh(&self) -> u64;
    /// Bytes per second the sender should pace at; `None` sends at ACK clock.
    fn pacing_rate(&self) -> Option<u64> {
        None
    }
    /// A model-based controller keeps its window through fast recovery: the connection then
    /// skips PRR's reduction and keeps calling [`on_ack`](Controller::on_ack) during recovery
    /// (the controller paces its repairs itself, see [`on_lost`](Controller::on_lost)).
    fn keeps_window_in_recovery(&self) -> bool {
        false
    }
    /// The name (for stats).
    fn name(&self) -> &'static str;
}

/// Slow start by bytes: grows `cwnd` by what was acknowledged, not past `ssthresh`; returns the
/// bytes left over once `ssthresh` is reached (to be spent in congestion avoidance).
pub(crate) fn slow_start(cwnd: &mut u64, ssthresh: u64, acked: u64) -> u64 {
    let room = ssthresh.saturating_sub(*cwnd);
    let used = acked.min(room);
    *cwnd += used;
    acked - used
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(super) fn ack(bytes: u64, limited: bool) -> Ack {
        Ack {
            bytes,
            rtt: Some(Duration::from_millis(30)),
            min_rtt: Some(Duration::from_millis(30)),
            prior_in_flight: 0,
            cwnd_limited: limited,
            round_start: false,
            rate: None,
            lost: 0,
        }
    }

    #[test]
    fn byte_counting_grows_by_bytes_not_acks() {
        for alg in [Algorithm::Cubic, Algorithm::NewReno] {
            let t0 = Instant::now();
            let mut a = alg.build(1000, 10_000);
            let mut b = alg.build(1000, 10_000);
            // Ten ACKs of one segment each, or one stretch ACK of ten segments (GRO).
            for _ in 0..10 {
                a.on_ack(t0, &ack(1000, true));
            }
            b.on_ack(t0, &ack(10_000, true));
            assert_eq!(a.window(), 20_000, "{alg:?}: slow start doubles");
            assert_eq!(
                b.window(),
                a.window(),
                "{alg:?}: a stretch ACK grows the same"
            );
        }
    }

    #[test]
    fn a_window_that_was_not_used_does_not_grow() {
        for alg in [Algorithm::Cubic, Algorithm::NewReno] {
            let t0 = Instant::now();
            let mut c = alg.build(1000, 10_000);
            for i in 0..100 {
                c.on_ack(t0 + Duration::from_millis(i), &ack(1000, false));
            }
            assert_eq!(c.window(), 10_000, "{alg:?}");
        }
    }

    #[test]
    fn loss_cuts_and_recovery_end_settles_on_ssthresh_rto_collapses() {
        for (alg, beta) in [(Algorithm::Cubic, 0.7), (Algorithm::NewReno, 0.5)] {
            let t0 = Instant::now();
            let mut c = alg.build(1000, 100_000);
            c.on_congestion_event(t0, 100_000);
            let expect = (100_000.0 * beta) as u64;
            assert_eq!(c.ssthresh(), expect, "{alg:?}");
            c.on_recovery_end(t0);
            assert_eq!(c.window(), expect, "{alg:?}");
            c.on_rto(t0, false);
            assert_eq!(c.window(), 1000, "{alg:?}: one segment after RTO");
            assert_eq!(c.ssthresh(), expect, "{alg:?}: same episode keeps ssthresh");
            c.on_rto(t0, true);
            assert!(c.ssthresh() >= 2000, "{alg:?}: floor of two segments");
        }
    }

    #[test]
    fn an_undone_timeout_gives_back_the_window_and_threshold_it_took() {
        for alg in [Algorithm::Cubic, Algorithm::NewReno] {
            let t0 = Instant::now();
            let mut c = alg.build(1000, 100_000);
            c.on_rto(t0, true);
            assert_eq!(c.window(), 1000, "{alg:?}");
            assert!(c.ssthresh() < u64::MAX, "{alg:?}");
            c.on_rto_undone(t0, 100_000, u64::MAX);
            assert_eq!((c.window(), c.ssthresh()), (100_000, u64::MAX), "{alg:?}");
            // Slow start goes on from there.
            c.on_ack(t0, &ack(10_000, true));
            assert_eq!(c.window(), 110_000, "{alg:?}");
        }
    }
}
