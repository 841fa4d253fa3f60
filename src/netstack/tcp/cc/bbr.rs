//! A model-based controller in the manner of BBR (v1, draft-cardwell-iccrg-bbr-congestion-control
//! 00/02, with two BBRv2/v3 elements): instead of reading loss as congestion it measures the path —
//! the bottleneck bandwidth (a windowed maximum of delivery-rate samples) and the propagation
//! delay (a windowed minimum of RTT samples) — and sends at that rate with about one
//! bandwidth-delay product (BDP) in flight.
//!
//! ```text
//!   Startup ──(bw grew < 25 % for 3 rounds, ──► Drain ──(in flight ≤ BDP)──► ProbeBw ◄───────┐
//!      ▲       or a round's loss jumped)           pacing 1/2.89          gains 1.25, 0.75,  │
//!      │  pacing 2.89×, cwnd 2.89×BDP                                     1×6, one phase per │
//!      │                                                                  min RTT            │
//!      └──────── ProbeRtt (no new min RTT for 10 s: cwnd ½ BDP for 200 ms + a round) ────────┘
//! ```
//!
//! * **Bandwidth**: every ACK's [`RateSample`](super::RateSample) (bytes delivered between a
//!   segment's send and its ACK over the longer of the two intervals, `tcp_rate`'s rule) feeds a
//!   max filter over the last 10 round trips. A round trip ends when a segment sent after it
//!   began is acknowledged, selectively or cumulatively (tcp_bbr's packet-timed round, from the
//!   sample's [`prior_delivered`](super::RateSample::prior_delivered)): under random loss the
//!   cumulative ACK stays behind a hole for as long as its repair takes, and rounds counted by
//!   it stretched to ten RTTs while Startup overflowed a queue. Samples taken while the
//!   application limited the flight only count when they raise the estimate (they
//!   underestimate the path otherwise); samples over an interval shorter than the minimum RTT
//!   are discarded (ACK compression).
//! * **RTT**: the minimum RTT sample of the last 10 s. When it has not been renewed for 10 s the
//!   connection enters ProbeRtt to drain the queue and measure it again.
//! * **Output**: pacing rate `gain × bw` (the connection's pacer enforces it, see
//!   `conn/output.rs`) and `cwnd = cwnd_gain × BDP + 3 pacing quanta + the ACK aggregation`
//!   (room for the pacer's bursts and for ACKs that come back in clumps, see
//!   [`AckAggregation`]: without it a busy LAN receiver kept the window at a sliver); the window grows towards that target by what each ACK delivered, so
//!   after a timeout it climbs back within a few round trips instead of jumping.
//! * **Loss** is not a congestion signal: a fast recovery or a repaired tail probe changes
//!   neither the model nor, once it is over, the window (the connection leaves PRR out for a
//!   controller whose [`keeps_window_in_recovery`](super::Controller::keeps_window_in_recovery)
//!   is true), so 1 % random loss costs 1 % of the rate, not most of it as with CUBIC. During
//!   a recovery the window does what Linux BBRv1's does: bytes marked lost leave it as they
//!   left the flight, and for the first round only what the ACKs deliver goes out (packet
//!   conservation); the window from before is given back at the end. Otherwise every segment
//!   marked lost freed room at once and the repairs went out at Startup's 2.89x pacing rate
//!   into the queue that had just overflowed, to be dropped again. The 1.25× probing
//!   phase lasts one min RTT and then ends at the first loss or once its extra quarter is in
//!   flight (tcp_bbr's rule: without loss it may push on until the quarter fits). A
//!   retransmission timeout collapses the window to one segment (the path may have changed);
//!   the model survives it.
//! * **Startup's loss exit**: BBRv1 leaves Startup only on the bandwidth plateau, three rounds
//!   after the pipe is full: against a queue smaller than its 2.89×BDP flight it overshoots
//!   for those rounds and spends seconds retransmitting. BBRv3 also leaves after a round that
//!   lost more than 2 % (in at least six segments), which random loss above 2 % triggers in
//!   the first rounds: Startup ended at a fifth of the BDP and ProbeBw's 1.25× per cycle took
//!   seconds to make it up. Here a round ends Startup when it lost more than 2 % in at least six
//!   segments *and* more than three times the loss rate of Startup's earlier rounds (their
//!   losses counted three more, so that a few clean rounds of tens of segments do not set the
//!   bar at zero). Random loss is steady from round to round — at 3 % a round of 100 segments
//!   exceeds 9 % about once in a thousand — while the round that overflows a queue loses the
//!   flight's excess over BDP + queue, a fifth to a half of what it sent. On a clean path the
//!   earlier rate is zero and the rule is BBRv3's; on a lossy one it can only end Startup
//!   sooner than BBRv1 would, never later. Alternatives measured and left: requiring a
//!   bandwidth plateau with the loss delays the exit a round and more with a shallow queue
//!   (the estimate still grows while the queue overflows); BBRv3's `inflight_hi` from the
//!   overflowing flight needs the rest of v3's bounds.
//!
//! Taken from BBRv2/v3: the ProbeRtt window is half the BDP rather than four segments (less
//! rate lost every 10 s), and the loss exit from Startup above. Not built: BBRv2's
//! `inflight_hi` / `inflight_lo` bounds from loss and ECN rates (so on a shallow-buffered
//! bottleneck shared with other flows this controller loses more than CUBIC would — BBRv1's
//! known weakness), ACK-aggregation (`extra_acked`) estimation, and the randomised initial
//! ProbeBw phase (we start in a cruise phase deterministically).
//!
//! Why our own: the only maintained Rust implementations we found are QUIC's (`quinn-proto`'s
//! `congestion::Bbr`, `s2n-quic`'s BBRv2), bound to their crates' path and packet-number types;
//! our TCP's controller trait takes byte counts, rate samples from our scoreboard and our clock.
//! We read the IETF drafts (BBR, delivery-rate estimation); the code is ours.

use std::time::{Duration, Instant};

use super::{Ack, AckAggregation, Controller, pacing_quantum};

/// Startup's pacing and window gain: 2/ln 2, the smallest gain that doubles the delivery rate
/// every round trip.
const HIGH_GAIN: f64 = 2.885;
/// ProbeBw's window gain.
const CWND_GAIN: f64 = 2.0;
/// ProbeBw's pacing gains, one phase per min RTT.
const CYCLE: [f64; 8] = [1.25, 0.75, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0];
/// The phase a fresh ProbeBw starts in (a cruise phase).
const FIRST_PHASE: usize = 2;
/// Round trips the bandwidth max filter spans.
const BW_ROUNDS: usize = 10;
/// How long a min-RTT sample stays valid before ProbeRtt re-measures it.
const MIN_RTT_WINDOW: Duration = Duration::from_secs(10);
/// How long ProbeRtt holds the small window.
const PROBE_RTT_TIME: Duration = Duration::from_millis(200);
/// Startup ends after this many rounds without 25 % bandwidth growth.
const FULL_BW_ROUNDS: u32 = 3;
/// An RTT sample above the minimum by more than `1 / QUEUE_FRACTION` of it shows a standing
/// queue at the bottleneck (a loss then is an overflow, not random).
const QUEUE_FRACTION: u32 = 4;
/// The smallest window, segments.
const MIN_CWND_SEGMENTS: u64 = 4;
/// Startup also ends after a round that lost more than 1/50 of what it delivered, in at least
/// [`STARTUP_LOSSES`] segments (BBRv2/v3), and more than [`STARTUP_LOSS_JUMP`] times the loss
/// rate of Startup's earlier rounds: the queue overflowed (see the module docs).
const STARTUP_LOSS_DIVISOR: u64 = 50;
const STARTUP_LOSSES: u64 = 6;
/// How many times the earlier rounds' loss rate a round must lose to be an overflow: random
/// loss is steady, so its rounds stay near the rate (binomial spread: at 3 % a 100-segment
/// round exceeds 9 % about once in a thousand), while the round that overflows a queue loses
/// the flight's excess over BDP + queue, a fifth to a half of what it sent.
const STARTUP_LOSS_JUMP: u64 = 3;
/// Losses added to the earlier rounds' count before the comparison, so that a few clean early
/// rounds (tens of segments, where 3 % loss shows no loss at all one time in eight) do not
/// make the next one's random loss look like a jump.
const STARTUP_LOSS_PRIOR: u64 = 3;

/// The controller's phase. See the module docs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Startup,
    Drain,
    ProbeBw,
    ProbeRtt,
}

/// A BBR-like model-based controller. See the module docs.
#[derive(Debug, Clone)]
pub struct Bbr {
    mss: u64,
    initial_window: u64,
    cwnd: u64,
    mode: Mode,
    /// Per-round maximum delivery rate of the last [`BW_ROUNDS`] rounds, bytes/s.
    bw_rounds: [u64; BW_ROUNDS],
    round: u64,
    /// The delivered count at which the current round ends: a round is over once a segment
    /// sent after it began is acknowledged (see [`Bbr::on_ack`]).
    next_round_delivered: u64,
    min_rtt: Option<Duration>,
    min_rtt_at: Option<Instant>,
    /// Startup's full-pipe detection.
    full_bw: u64,
    full_bw_rounds: u32,
    filled_pipe: bool,
    /// ProbeBw phase and when it began.
    phase: usize,
    phase_at: Option<Instant>,
    /// A loss was reported in the current ProbeBw phase.
    loss_in_phase: bool,
    /// ProbeRtt: when the small window may end (once it was reached), and the round it must
    /// outlast; the window to restore.
    probe_rtt_done: Option<Instant>,
    probe_rtt_round: u64,
    prior_cwnd: u64,
    /// A rate guess from the first RTT sample, until a bandwidth sample exists.
    initial_rate: Option<u64>,
    /// This round's delivered bytes and segments marked lost (startup's loss exit).
    round_delivered: u64,
    round_lost: u64,
    /// Data acknowledged in clumps beyond the model: room the window keeps for it.
    aggregation: AckAggregation,
    /// The same, summed over Startup's earlier rounds: the path's random loss rate.
    startup_delivered: u64,
    startup_lost: u64,
    /// In a fast recovery: the window to give back when it ends.
    recovery_prior_cwnd: Option<u64>,
    /// Packet conservation holds until then (see [`Bbr::on_congestion_event`]).
    conservation_until: Option<Instant>,
    /// The latest RTT sample: how long a round trip takes now, queue included.
    last_rtt: Option<Duration>,
    /// Bytes marked lost since the last ACK was processed (no longer in flight).
    lost_since_ack: u64,
}

impl Bbr {
    /// A controller for `mss`-byte segments starting at `initial_window` bytes.
    pub fn new(mss: u32, initial_window: u64) -> Self {
        let mss = u64::from(mss.max(1));
        let iw = initial_window.max(MIN_CWND_SEGMENTS * mss);
        Self {
            mss,
            initial_window: iw,
            cwnd: iw,
            mode: Mode::Startup,
            bw_rounds: [0; BW_ROUNDS],
            round: 0,
            next_round_delivered: 0,
            min_rtt: None,
            min_rtt_at: None,
            full_bw: 0,
            full_bw_rounds: 0,
            filled_pipe: false,
            phase: FIRST_PHASE,
            phase_at: None,
            loss_in_phase: false,
            probe_rtt_done: None,
            probe_rtt_round: 0,
            prior_cwnd: 0,
            initial_rate: None,
            round_delivered: 0,
            round_lost: 0,
            aggregation: AckAggregation::default(),
            startup_delivered: 0,
            startup_lost: 0,
            recovery_prior_cwnd: None,
            conservation_until: None,
            last_rtt: None,
            lost_since_ack: 0,
        }
    }

    /// The phase (for tests and stats).
    pub fn mode(&self) -> Mode {
        self.mode
    }

    /// The bottleneck bandwidth estimate, bytes per second (0 before the first sample).
    pub fn bandwidth(&self) -> u64 {
        self.bw_rounds.iter().copied().max().unwrap_or(0)
    }

    /// The bandwidth-delay product, bytes, once both are measured.
    fn bdp(&self) -> Option<u64> {
        let rtt = self.min_rtt?;
        let bw = self.bandwidth();
        (bw > 0).then_some((bw as f64 * rtt.as_secs_f64()) as u64)
    }

    fn pacing_gain(&self) -> f64 {
        match self.mode {
            Mode::Startup => HIGH_GAIN,
            Mode::Drain => 1.0 / HIGH_GAIN,
            Mode::ProbeBw => CYCLE[self.phase],
            Mode::ProbeRtt => 1.0,
        }
    }

    fn cwnd_gain(&self) -> f64 {
        match self.mode {
            Mode::Startup | Mode::Drain => HIGH_GAIN,
            _ => CWND_GAIN,
        }
    }

    fn min_cwnd(&self) -> u64 {
        MIN_CWND_SEGMENTS * self.mss
    }

    /// The window the model asks for: `gain × BDP` plus room for three pacing quanta (the
    /// bursts the pacer lets out; Linux's quantization budget) and, once the pipe was filled,
    /// for the ACKs the path aggregates ([`AckAggregation`]). Before a model exists: the
    /// initial window.
    fn target_cwnd(&self, gain: f64) -> u64 {
        let Some(bdp) = self.bdp() else {
            return self.initial_window;
        };
        let rate = self.pacing_rate().unwrap_or(0);
        let mut target = (gain * bdp as f64) as u64 + 3 * pacing_quantum(rate, self.mss);
        if self.filled_pipe {
            target += self.aggregation.extra(self.bandwidth());
        }
        target.max(self.min_cwnd())
    }

    fn update_bandwidth(&mut self, ack: &Ack) {
        let Some(rs) = ack.rate else { return };
        // Shorter than the minimum RTT: ACK compression, not the path (tcp_rate).
        if self.min_rtt.is_some_and(|m| rs.interval < m) {
            return;
        }
        let bw = rs.bytes_per_sec();
        if rs.app_limited && bw < self.bandwidth() {
            return;
        }
        let slot = &mut self.bw_rounds[(self.round % BW_ROUNDS as u64) as usize];
        *slot = (*slot).max(bw);
    }

    fn update_min_rtt(&mut self, now: Instant, ack: &Ack) -> bool {
        let expired = self
            .min_rtt_at
            .is_some_and(|t| now.saturating_duration_since(t) > MIN_RTT_WINDOW);
        if let Some(r) = ack.rtt.filter(|r| !r.is_zero()) {
            if expired || self.min_rtt.is_none_or(|m| r <= m) {
                self.min_rtt = Some(r);
                self.min_rtt_at = Some(now);
                if self.initial_rate.is_none() {
                    let rate = HIGH_GAIN * self.initial_window as f64 / r.as_secs_f64();
                    self.initial_rate = Some(rate as u64);
                }
            }
        }
        expired
    }

    /// Startup's exit test, once per round on samples the network (not the application)
    /// limited: the pipe is full when three rounds in a row raised the bandwidth by less than
    /// a quarter.
    fn check_full_pipe(&mut self, ack: &Ack, round_start: bool) {
        if self.filled_pipe || !round_start {
            return;
        }
        if self.queue_overflowed() {
            self.filled_pipe = true;
            return;
        }
        if ack.rate.is_none_or(|r| r.app_limited) {
            return;
        }
        let bw = self.bandwidth();
        if bw as f64 >= self.full_bw as f64 * 1.25 {
            self.full_bw = bw;
            self.full_bw_rounds = 0;
            return;
        }
        self.full_bw_rounds += 1;
        if self.full_bw_rounds >= FULL_BW_ROUNDS {
            self.filled_pipe = true;
        }
    }

    /// Whether the round that just ended lost enough to say Startup overflowed the bottleneck
    /// queue, rather than met the path's random loss (see the module docs); adds the round to
    /// Startup's loss history.
    fn queue_overflowed(&mut self) -> bool {
        let (lost, delivered) = (self.round_lost, self.round_delivered);
        let high = lost >= STARTUP_LOSSES && lost * self.mss * STARTUP_LOSS_DIVISOR > delivered;
        // lost / delivered > JUMP × (earlier lost + PRIOR) / earlier delivered (the segment
        // size cancels).
        let jump = u128::from(lost) * u128::from(self.startup_delivered)
            > u128::from(STARTUP_LOSS_JUMP * (self.startup_lost + STARTUP_LOSS_PRIOR))
                * u128::from(delivered);
        self.startup_lost += lost;
        self.startup_delivered += delivered;
        high && jump
    }

    fn enter_probe_bw(&mut self, now: Instant) {
        self.mode = Mode::ProbeBw;
        self.phase = FIRST_PHASE;
        self.phase_at = Some(now);
        self.loss_in_phase = false;
    }

    fn advance_phase(&mut self, now: Instant, in_flight: u64) {
        let Some(rtt) = self.min_rtt else { return };
        let elapsed = self
            .phase_at
            .is_none_or(|t| now.saturating_duration_since(t) > rtt);
        let bdp = self.bdp().unwrap_or(self.initial_window);
        let gain = CYCLE[self.phase];
        let next = if gain > 1.0 {
            // Probe up until the extra quarter is in flight, or a loss says it does not fit.
            elapsed && (self.loss_in_phase || in_flight as f64 >= gain * bdp as f64)
        } else if gain < 1.0 {
            // Drain the probe's queue: done once the flight is down to the BDP.
            elapsed || in_flight <= bdp
        } else {
            elapsed
        };
        if next {
            self.phase = (self.phase + 1) % CYCLE.len();
            self.phase_at = Some(now);
            self.loss_in_phase = false;
        }
    }

    fn probe_rtt(&mut self, now: Instant, in_flight: u64) {
        let target = self.probe_rtt_cwnd();
        if self.probe_rtt_done.is_none() && in_flight <= target {
            self.probe_rtt_done = Some(now + PROBE_RTT_TIME);
            self.probe_rtt_round = self.round + 1;
            return;
        }
        if self
            .probe_rtt_done
            .is_some_and(|t| now >= t && self.round >= self.probe_rtt_round)
        {
            self.min_rtt_at = Some(now);
            self.probe_rtt_done = None;
            self.cwnd = self.cwnd.max(self.prior_cwnd);
            if self.filled_pipe {
                self.enter_probe_bw(now);
            } else {
                self.mode = Mode::Startup;
            }
        }
    }

    /// ProbeRtt's window: half the BDP (BBRv2) plus three segments, at least the minimum.
    fn probe_rtt_cwnd(&self) -> u64 {
        match self.bdp() {
            Some(bdp) => (bdp / 2 + 3 * self.mss).max(self.min_cwnd()),
            None => self.initial_window,
        }
    }
}

impl Controller for Bbr {
    fn on_ack(&mut self, now: Instant, ack: &Ack) {
        // A round trip ends when a segment sent after it began is acknowledged (tcp_bbr's
        // packet-timed round), selectively or not. The connection's `round_start` waits for the
        // cumulative ACK instead, which a hole holds back for as long as its repair takes.
        let round_start = ack
            .rate
            .is_some_and(|rs| rs.prior_delivered >= self.next_round_delivered);
        if let Some(rs) = ack.rate.filter(|_| round_start) {
            self.next_round_delivered = rs.prior_delivered + rs.delivered;
        }
        if round_start {
            self.round += 1;
            let slot = (self.round % BW_ROUNDS as u64) as usize;
            self.bw_rounds[slot] = 0;
        }
        let in_flight = ack.prior_in_flight.saturating_sub(ack.bytes);
        self.update_bandwidth(ack);
        self.aggregation
            .on_ack(now, ack.bytes, self.bandwidth(), self.cwnd, round_start);
        let expired = self.update_min_rtt(now, ack);
        self.check_full_pipe(ack, round_start);
        if round_start {
            self.round_delivered = 0;
            self.round_lost = 0;
        }
        self.round_delivered += ack.bytes;
        self.round_lost += u64::from(ack.lost);

        match self.mode {
            Mode::Startup if self.filled_pipe => self.mode = Mode::Drain,
            _ => {}
        }
        if self.mode == Mode::Drain && in_flight <= self.target_cwnd(1.0) {
            self.enter_probe_bw(now);
        }
        if self.mode == Mode::ProbeBw {
            self.advance_phase(now, in_flight);
        }
        if expired && self.mode != Mode::ProbeRtt {
            self.mode = Mode::ProbeRtt;
            self.prior_cwnd = self.cwnd;
            self.probe_rtt_done = None;
        }
        if self.mode == Mode::ProbeRtt {
            self.probe_rtt(now, in_flight);
        }

        // The window follows the model, growing by what was delivered; in the first round of
        // a recovery it only lets out what this ACK delivered (packet conservation).
        if let Some(r) = ack.rtt.filter(|r| !r.is_zero()) {
            self.last_rtt = Some(r);
        }
        if self.conservation_until.is_some_and(|t| now >= t) {
            self.conservation_until = None;
        }
        let target = self.target_cwnd(self.cwnd_gain());
        // `prior_in_flight` counted the bytes this ACK marked lost (a reordering timer's marks
        // before it were already out of it: subtracting them again only holds the window).
        let lost = std::mem::take(&mut self.lost_since_ack);
        if self.conservation_until.is_some() {
            self.cwnd = self.cwnd.max(in_flight.saturating_sub(lost) + ack.bytes);
        } else if self.filled_pipe {
            self.cwnd = (self.cwnd + ack.bytes).min(target);
        } else if self.cwnd < target || self.cwnd < self.initial_window {
            self.cwnd += ack.bytes;
        }
        self.cwnd = self.cwnd.max(self.min_cwnd());
    }

    /// Not a reason to slow down (see the module docs): it ends an up-probe. When the path
    /// shows a standing queue (the latest RTT sample exceeds the minimum by a quarter), the
    /// loss is an overflow and the queue that dropped the originals is still full, so a repair
    /// sent faster than it drains is dropped too: for the recovery's first round trip (that
    /// RTT) the window lets out only what the ACKs deliver, at most what is in flight now
    /// (Linux BBRv1's packet conservation). The queue keeps the bottleneck busy meanwhile.
    /// Without a queue the loss is random: conservation would only stall Startup's growth for
    /// a round (seconds over a long fat path at 0.1 % loss), so the window keeps growing. The
    /// round is timed, not counted by ACKs: the cumulative ACK stalls behind the holes for the
    /// whole recovery.
    fn on_congestion_event(&mut self, now: Instant, in_flight: u64) {
        self.loss_in_phase = true;
        if self.recovery_prior_cwnd.is_some() {
            return;
        }
        // `in_flight` is from before this ACK's (or this timer's) marks, which `on_lost` has
        // already taken out of the window.
        let lost = self.lost_since_ack;
        self.recovery_prior_cwnd = Some(self.cwnd + lost);
        let (Some(rtt), Some(min)) = (self.last_rtt, self.min_rtt) else {
            return;
        };
        if rtt > min + min / QUEUE_FRACTION {
            self.conservation_until = Some(now + rtt);
            let in_flight = in_flight.saturating_sub(lost);
            self.cwnd = self.cwnd.min(in_flight).max(self.min_cwnd());
        }
    }

    /// The lost bytes leave the window as they left the flight (Linux BBRv1 subtracts each
    /// ACK's losses), so the repairs go out as ACKs make room, not in one burst at the pacing
    /// rate. [`on_recovery_end`](Controller::on_recovery_end) gives the window back.
    fn on_lost(&mut self, _now: Instant, bytes: u64) {
        self.cwnd = self.cwnd.saturating_sub(bytes).max(self.min_cwnd());
        self.lost_since_ack += bytes;
    }

    fn on_recovery_end(&mut self, _now: Instant) {
        if let Some(prior) = self.recovery_prior_cwnd.take() {
            self.cwnd = self.cwnd.max(prior);
        }
        self.conservation_until = None;
    }

    fn on_rto(&mut self, _now: Instant, _new_episode: bool) {
        // The path may have changed under us: start from one segment again and let the
        // window grow back by what is delivered; the model stays.
        self.cwnd = self.mss;
        self.recovery_prior_cwnd = None;
        self.conservation_until = None;
    }

    fn window(&self) -> u64 {
        if self.mode == Mode::ProbeRtt {
            self.cwnd.min(self.probe_rtt_cwnd())
        } else {
            self.cwnd
        }
    }

    fn ssthresh(&self) -> u64 {
        u64::MAX
    }

    fn pacing_rate(&self) -> Option<u64> {
        let bw = self.bandwidth();
        if bw == 0 {
            return self.initial_rate;
        }
        // v1 paces 1 % below the estimate in steady state so that a queue it built drains.
        let margin = if self.mode == Mode::Startup {
            1.0
        } else {
            0.99
        };
        Some((self.pacing_gain() * margin * bw as f64) as u64)
    }

    fn keeps_window_in_recovery(&self) -> bool {
        true
    }

    fn name(&self) -> &'static str {
        "bbr"
    }
}

#[cfg(test)]
mod tests {
    use std::cell::Cell;

    use super::super::RateSample;
    use super::*;

    const MSS: u64 = 1000;

    thread_local! {
        /// Rounds begun by [`ack`] in this test, for its segments' delivered stamps.
        static ROUNDS: Cell<u64> = const { Cell::new(1) };
    }

    /// An ACK of `bytes` delivering at `bw` bytes/s over a 30 ms RTT; with `round_start` its
    /// segment was sent after everything acknowledged before it (a new round), otherwise in
    /// the current round.
    fn ack(bytes: u64, bw: u64, round_start: bool, in_flight: u64) -> Ack {
        let interval = Duration::from_millis(30);
        let round = ROUNDS.get() + u64::from(round_start);
        ROUNDS.set(round);
        Ack {
            bytes,
            rtt: Some(interval),
            min_rtt: Some(interval),
            prior_in_flight: in_flight + bytes,
            cwnd_limited: true,
            round_start,
            rate: Some(RateSample {
                delivered: (bw as f64 * interval.as_secs_f64()) as u64,
                interval,
                // Far apart, so that no round's deliveries reach the next one's stamp.
                prior_delivered: round << 40,
                app_limited: false,
            }),
            lost: 0,
        }
    }

    #[test]
    fn startup_ends_when_bandwidth_stops_growing_and_the_window_settles_near_the_bdp() {
        let t0 = Instant::now();
        let mut c = Bbr::new(MSS as u32, 10 * MSS);
        let mut now = t0;
        let mut bw = 100_000;
        for round in 0..20 {
            // Doubling until 1 MB/s, then flat.
            bw = (bw * 2).min(1_000_000);
            now += Duration::from_millis(30);
            c.on_ack(now, &ack(MSS, bw, true, 30 * MSS));
            for _ in 0..20 {
                c.on_ack(now, &ack(MSS, bw, false, 30 * MSS));
            }
            if round < 3 {
                assert_eq!(c.mode(), Mode::Startup);
            }
        }
        assert_eq!(c.mode(), Mode::ProbeBw, "startup and drain are over");
        assert_eq!(c.bandwidth(), 1_000_000);
        // BDP = 1 MB/s × 30 ms = 30 kB; cwnd = 2 × BDP + three pacing quanta (two segments
        // each at this rate) + the aggregation: each round's 21 ACKs arrive at one instant,
        // 21 kB the model (1 kB per ms) does not explain.
        assert_eq!(c.window(), 60_000 + 6_000 + 21_000);
        let rate = c.pacing_rate().expect("a rate");
        assert!((740_000..=1_250_000).contains(&rate), "{rate}");
    }

    /// One Startup round of `segments` one-segment ACKs at `bw`, `lost` of them reporting a
    /// segment marked lost.
    fn round(c: &mut Bbr, now: &mut Instant, bw: u64, segments: u64, lost: u64) {
        *now += Duration::from_millis(30);
        for i in 0..segments {
            let mut a = ack(MSS, bw, i == 0, segments * MSS);
            a.lost = u32::from(i < lost);
            c.on_ack(*now, &a);
        }
    }

    #[test]
    fn steady_random_loss_does_not_end_startup_a_jump_in_loss_does() {
        let mut now = Instant::now();
        let mut c = Bbr::new(MSS as u32, 10 * MSS);
        // Bandwidth and flight doubling every round, 3 % of each round lost (rounded up): from
        // 200 segments on, more than 2 % in at least six.
        let mut bw = 100_000;
        for r in 0..8 {
            let segments = 20 << r;
            round(&mut c, &mut now, bw, segments, (segments * 3).div_ceil(100));
            assert_eq!(c.mode(), Mode::Startup, "round {r}");
            bw *= 2;
        }
        // The queue overflows: a fifth of the round is lost.
        round(&mut c, &mut now, bw, 5120, 1024);
        round(&mut c, &mut now, bw, 10, 0);
        assert_ne!(c.mode(), Mode::Startup, "an overflow ends Startup");

        // Without random loss before it, 5 % of a round is a jump.
        let mut c = Bbr::new(MSS as u32, 10 * MSS);
        let mut bw = 100_000;
        for r in 0..4 {
            round(&mut c, &mut now, bw, 20 << r, 0);
            bw *= 2;
        }
        round(&mut c, &mut now, bw, 200, 10);
        round(&mut c, &mut now, bw, 10, 0);
        assert_ne!(
            c.mode(),
            Mode::Startup,
            "a clean path's first losses end Startup"
        );
    }

    #[test]
    fn loss_does_not_shrink_the_window_or_the_model() {
        let t0 = Instant::now();
        let mut c = Bbr::new(MSS as u32, 10 * MSS);
        let mut now = t0;
        for _ in 0..20 {
            now += Duration::from_millis(30);
            c.on_ack(now, &ack(MSS, 1_000_000, true, 30 * MSS));
            for _ in 0..40 {
                c.on_ack(now, &ack(MSS, 1_000_000, false, 30 * MSS));
            }
        }
        let (w, bw) = (c.window(), c.bandwidth());
        c.on_congestion_event(now, 60 * MSS);
        c.on_recovery_end(now);
        assert_eq!((c.window(), c.bandwidth()), (w, bw));
        assert!(c.keeps_window_in_recovery());
    }

    #[test]
    fn a_loss_over_a_standing_queue_sends_only_what_is_delivered_for_a_round() {
        let t0 = Instant::now();
        let mut now = t0;
        for queued in [false, true] {
            let mut c = Bbr::new(MSS as u32, 10 * MSS);
            for _ in 0..20 {
                now += Duration::from_millis(30);
                c.on_ack(now, &ack(MSS, 1_000_000, true, 80 * MSS));
                for _ in 0..40 {
                    c.on_ack(now, &ack(MSS, 1_000_000, false, 80 * MSS));
                }
            }
            let w = c.window();
            assert!(w > 60 * MSS, "{w}");
            // RTT 60 ms over a 30 ms minimum: a queue; 30 ms: none.
            let mut a = ack(MSS, 1_000_000, false, 59 * MSS);
            a.rtt = Some(Duration::from_millis(if queued { 60 } else { 30 }));
            c.on_ack(now, &a);
            // The next ACK delivers one segment and marks two lost, 60 in flight before it.
            c.on_lost(now, 2 * MSS);
            c.on_congestion_event(now, 60 * MSS);
            c.on_ack(now, &ack(MSS, 1_000_000, false, 59 * MSS));
            if queued {
                // 57 left in flight: room for the one delivered, not for the two lost.
                assert_eq!(c.window(), 58 * MSS);
                c.on_ack(
                    now + Duration::from_millis(10),
                    &ack(MSS, 1_000_000, false, 57 * MSS),
                );
                assert_eq!(c.window(), 58 * MSS, "still the first round");
            } else {
                assert_eq!(c.window(), w - MSS, "two lost out, one delivered back in");
            }
            c.on_recovery_end(now + Duration::from_millis(100));
            assert_eq!(c.window(), w, "the window is given back");
        }
    }

    #[test]
    fn app_limited_samples_do_not_lower_the_estimate() {
        let t0 = Instant::now();
        let mut c = Bbr::new(MSS as u32, 10 * MSS);
        c.on_ack(t0, &ack(MSS, 1_000_000, true, 10 * MSS));
        let mut slow = ack(MSS, 10_000, true, MSS);
        if let Some(r) = slow.rate.as_mut() {
            r.app_limited = true;
        }
        // Within the filter's ten rounds.
        for i in 1..=5 {
            c.on_ack(t0 + Duration::from_millis(30 * i), &slow);
        }
        assert_eq!(c.bandwidth(), 1_000_000);
    }

    #[test]
    fn probe_rtt_after_ten_seconds_without_a_new_minimum() {
        let t0 = Instant::now();
        let mut c = Bbr::new(MSS as u32, 10 * MSS);
        let mut now = t0;
        for _ in 0..20 {
            now += Duration::from_millis(30);
            c.on_ack(now, &ack(MSS, 1_000_000, true, 30 * MSS));
        }
        let mut entered = None;
        for i in 0..600 {
            now += Duration::from_millis(30);
            let mut a = ack(MSS, 1_000_000, true, 0);
            // RTT samples above the minimum from now on.
            a.rtt = Some(Duration::from_millis(40));
            c.on_ack(now, &a);
            if c.mode() == Mode::ProbeRtt && entered.is_none() {
                entered = Some(i);
                // Half the 40 kB BDP plus three segments.
                assert_eq!(c.window(), 23 * MSS);
            }
            if entered.is_some() && c.mode() == Mode::ProbeBw {
                return;
            }
        }
        panic!("ProbeRtt entered at {entered:?} and never left");
    }
}
