//! A WAN in a box: per-datagram delay, jitter, loss, duplication and reordering, seeded.
//!
//! Sans-IO: [`Impair::offer`] takes a datagram with the time it arrived, [`Impair::next_due`] says
//! when the next one leaves and [`Impair::pop_due`] hands it back then. The caller owns the socket,
//! the clock and the buffers (the datagram is an opaque `T`; a dropped one is handed back at once
//! so that its buffer can be reused). One `Impair` is one direction of a path: give each direction
//! its own, with its own seed stream ([`ImpairSpec::stream_seed`]), so that loss in one direction
//! does not shift the pattern of the other.
//!
//! Users: the load tester's gateway (`wgbroker loadtest --delay/--loss/...`, between the test
//! kit's gateway and the broker), the hidden `wgbroker relay` that `perf/wan.sh` puts between a
//! wireguard-go vendor and the brokers, and any deterministic simulator (nothing here reads a
//! clock: `now` can be a fake one).
//!
//! ## The model, per datagram, in this order
//!
//! 1. **loss**: dropped with probability `loss` (counted as `lost`).
//! 2. **queue limit**: a datagram that would take the queue past `queue_datagrams` or
//!    `queue_bytes` is dropped and counted apart (`overflow`), so that `lost` stays exactly the
//!    asked-for random loss. The queue is the delay line itself (this is not a bottleneck
//!    buffer: there is no rate limit); the defaults hold 50 ms of 600 MB/s.
//! 3. **delay**: due at `arrival + delay + u`, `u` uniform in `[-jitter, +jitter]` (never before
//!    its arrival) — and never before the datagram queued before it: a path is a FIFO, so jitter
//!    varies the delay without reordering (as a real queue does; netem's jitter reorders).
//! 4. **reorder**: with probability `reorder` the datagram is held back a further `reorder_by`,
//!    outside the FIFO: the datagrams behind it overtake it.
//! 5. **duplicate**: with probability `duplicate` a copy leaves right after it.
//!
//! Every datagram draws the same four random numbers (loss, jitter, reorder, duplicate) whatever
//! the knobs, so that the n-th datagram of a direction is lost or kept the same way in two runs
//! with one seed, whatever the other knobs say. (A run over real sockets still differs in *which*
//! bytes the n-th datagram carries: timing decides that.)
//!
//! ## Random numbers
//!
//! SplitMix64 (Steele, Lea and Flood, 2014; the generator that seeds xoshiro): ten lines, fast,
//! good enough for Bernoulli draws, and ours — so a `--seed` replays the same pattern in every
//! future build. A crate's generator may change its output between releases (`rand`'s `StdRng`
//! reserves the right), and the crate has no random-number dependency to reuse.

use std::collections::BinaryHeap;
use std::time::{Duration, Instant};

use serde::Serialize;

/// Longest `delay`, `jitter` or `reorder_by` accepted.
pub const MAX_DELAY: Duration = Duration::from_secs(10);

/// SplitMix64: a 64-bit state advanced by a constant, output through a bit mixer.
#[derive(Debug, Clone)]
pub struct SplitMix64(u64);

impl SplitMix64 {
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
}

/// Whether a uniform 64-bit draw `x` falls under probability `p` (0 never, 1 always).
fn hit(x: u64, p: f64) -> bool {
    if p <= 0.0 {
        false
    } else if p >= 1.0 {
        true
    } else {
        // x / 2^64 < p, without the rounding of converting x.
        x < (p * 18_446_744_073_709_551_616.0) as u64
    }
}

/// What to do to each datagram of a direction.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ImpairSpec {
    /// Fixed one-way delay added to every datagram.
    pub delay: Duration,
    /// Each datagram's delay is drawn uniformly from `delay ± jitter` (order kept).
    pub jitter: Duration,
    /// Probability (0..=1) that a datagram is dropped.
    pub loss: f64,
    /// Probability (0..=1) that a datagram is sent twice.
    pub duplicate: f64,
    /// Probability (0..=1) that a datagram is held back `reorder_by` and overtaken.
    pub reorder: f64,
    /// How long a reordered datagram is held back beyond its due time.
    pub reorder_by: Duration,
    /// Seed of the random draws (see [`ImpairSpec::stream_seed`]).
    pub seed: u64,
    /// Most datagrams waiting in one direction.
    pub queue_datagrams: usize,
    /// Most bytes waiting in one direction.
    pub queue_bytes: usize,
}

impl Default for ImpairSpec {
    /// A clean path: nothing delayed, dropped or reordered; 1 ms reorder hold; queue limits of
    /// 32,768 datagrams and 32 MiB per direction.
    fn default() -> Self {
        Self {
            delay: Duration::ZERO,
            jitter: Duration::ZERO,
            loss: 0.0,
            duplicate: 0.0,
            reorder: 0.0,
            reorder_by: Duration::from_millis(1),
            seed: 0,
            queue_datagrams: 32 * 1024,
            queue_bytes: 32 << 20,
        }
    }
}

impl ImpairSpec {
    /// Whether any datagram would be delayed, dropped, duplicated or reordered.
    pub fn is_active(&self) -> bool {
        !self.delay.is_zero()
            || !self.jitter.is_zero()
            || self.loss > 0.0
            || self.duplicate > 0.0
            || self.reorder > 0.0
    }

    /// Checks the ranges; the message names the knob.
    pub fn validate(&self) -> Result<(), String> {
        for (name, p) in [
            ("loss", self.loss),
            ("duplicate", self.duplicate),
            ("reorder", self.reorder),
        ] {
            if !(0.0..=1.0).contains(&p) {
                return Err(format!("{name} must be between 0% and 100%"));
            }
        }
        for (name, d) in [
            ("delay", self.delay),
            ("jitter", self.jitter),
            ("reorder-by", self.reorder_by),
        ] {
            if d > MAX_DELAY {
                return Err(format!("{name} must be at most 10s"));
            }
        }
        if self.queue_datagrams == 0 || self.queue_bytes == 0 {
            return Err("the queue limits must be at least 1".into());
        }
        Ok(())
    }

    /// The seed of stream `n` (a direction, a pipe): independent streams from one `seed`.
    pub fn stream_seed(&self, n: u64) -> u64 {
        SplitMix64::new(self.seed ^ n.wrapping_mul(0xd1b5_4a32_d192_ed03)).next_u64()
    }

    /// One line for a report: `delay 15ms ±2ms, loss 0.1%, duplicate 0%, reorder 0%, seed 7`.
    pub fn summary(&self) -> String {
        let ms = |d: Duration| {
            let v = d.as_secs_f64() * 1e3;
            if v == v.trunc() {
                format!("{v:.0}ms")
            } else {
                format!("{v}ms")
            }
        };
        let mut s = format!("delay {}", ms(self.delay));
        if !self.jitter.is_zero() {
            s.push_str(&format!(" ±{}", ms(self.jitter)));
        }
        s.push_str(&format!(
            ", loss {}, duplicate {}, reorder {}",
            percent(self.loss),
            percent(self.duplicate),
            percent(self.reorder)
        ));
        if self.reorder > 0.0 {
            s.push_str(&format!(" by {}", ms(self.reorder_by)));
        }
        s.push_str(&format!(", seed {}", self.seed));
        s
    }
}

/// `0.001` → `"0.1%"`.
pub fn percent(p: f64) -> String {
    let v = p * 100.0;
    // Up to 4 decimals, without trailing zeros.
    let s = format!("{v:.4}");
    let s = s.trim_end_matches('0').trim_end_matches('.');
    format!("{s}%")
}

/// Parses a percentage such as `0.1%` or `3%` into a probability (`0.001`, `0.03`). The `%` is
/// required: `0.01` alone could mean 1 % or 0.01 %.
pub fn parse_percent(s: &str) -> Result<f64, String> {
    let t = s.trim();
    let Some(num) = t.strip_suffix('%') else {
        return Err(format!("{s:?}: give a percentage, e.g. 0.1% or 3%"));
    };
    let v: f64 = num
        .trim()
        .parse()
        .map_err(|_| format!("{s:?} is not a percentage (e.g. 0.1%)"))?;
    if !v.is_finite() || !(0.0..=100.0).contains(&v) {
        return Err(format!("{s:?} must be between 0% and 100%"));
    }
    Ok(v / 100.0)
}

/// What happened to a direction's datagrams.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct ImpairStats {
    /// Datagrams offered.
    pub offered: u64,
    /// Datagrams handed back by [`Impair::pop_due`] (duplicates included).
    pub delivered: u64,
    /// Dropped by the random loss.
    pub lost: u64,
    /// Dropped because the queue was at its limit (not part of `lost`).
    pub overflow: u64,
    /// Extra copies queued.
    pub duplicated: u64,
    /// Datagrams held back to be overtaken.
    pub reordered: u64,
    /// Most datagrams waiting at once.
    pub max_queued: u64,
}

impl ImpairStats {
    /// Adds another direction's or thread's counters (`max_queued`: the larger).
    pub fn add(&mut self, o: &ImpairStats) {
        self.offered += o.offered;
        self.delivered += o.delivered;
        self.lost += o.lost;
        self.overflow += o.overflow;
        self.duplicated += o.duplicated;
        self.reordered += o.reordered;
        self.max_queued = self.max_queued.max(o.max_queued);
    }
}

/// A queued datagram, ordered by due time, then by arrival.
#[derive(Debug)]
struct Entry<T> {
    due: Instant,
    seq: u64,
    len: usize,
    item: T,
}

impl<T> PartialEq for Entry<T> {
    fn eq(&self, o: &Self) -> bool {
        (self.due, self.seq) == (o.due, o.seq)
    }
}

impl<T> Eq for Entry<T> {}

impl<T> PartialOrd for Entry<T> {
    fn partial_cmp(&self, o: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(o))
    }
}

impl<T> Ord for Entry<T> {
    /// Reversed: the max-heap's top is the earliest due, first queued.
    fn cmp(&self, o: &Self) -> std::cmp::Ordering {
        (o.due, o.seq).cmp(&(self.due, self.seq))
    }
}

/// One direction of an impaired path.
#[derive(Debug)]
pub struct Impair<T> {
    spec: ImpairSpec,
    rng: SplitMix64,
    queue: BinaryHeap<Entry<T>>,
    seq: u64,
    bytes: usize,
    /// Due time of the last datagram queued in order (jitter never lets one overtake it).
    fifo_due: Option<Instant>,
    stats: ImpairStats,
}

impl<T: Clone> Impair<T> {
    /// A direction drawing from `seed` (use [`ImpairSpec::stream_seed`]); `spec.seed` is only
    /// reported.
    pub fn new(spec: ImpairSpec, seed: u64) -> Self {
        Self {
            spec,
            rng: SplitMix64::new(seed),
            queue: BinaryHeap::new(),
            seq: 0,
            bytes: 0,
            fifo_due: None,
            stats: ImpairStats::default(),
        }
    }

    pub fn spec(&self) -> &ImpairSpec {
        &self.spec
    }

    pub fn stats(&self) -> ImpairStats {
        self.stats
    }

    /// Datagrams waiting.
    pub fn len(&self) -> usize {
        self.queue.len()
    }

    pub fn is_empty(&self) -> bool {
        self.queue.is_empty()
    }

    /// When the next datagram is due (`None`: nothing waits).
    pub fn next_due(&self) -> Option<Instant> {
        self.queue.peek().map(|e| e.due)
    }

    /// Takes a datagram of `len` bytes that arrived at `now`. Returns it back when it is dropped
    /// (lost or over the queue limit: [`Impair::stats`] says which), so that its buffer can be
    /// reused; otherwise it waits for [`Impair::pop_due`].
    pub fn offer(&mut self, now: Instant, len: usize, item: T) -> Option<T> {
        self.stats.offered += 1;
        let r_loss = self.rng.next_u64();
        let r_jitter = self.rng.next_u64();
        let r_reorder = self.rng.next_u64();
        let r_dup = self.rng.next_u64();
        if hit(r_loss, self.spec.loss) {
            self.stats.lost += 1;
            return Some(item);
        }
        if !self.has_room(len) {
            self.stats.overflow += 1;
            return Some(item);
        }
        let mut due = now + self.spec.delay;
        if !self.spec.jitter.is_zero() {
            let j = u64::try_from(self.spec.jitter.as_nanos()).unwrap_or(u64::MAX / 4);
            // Uniform in [0, 2j], then shifted down by j (never before `now`).
            let u = r_jitter % (2 * j + 1);
            due = if u >= j {
                due + Duration::from_nanos(u - j)
            } else {
                due.checked_sub(Duration::from_nanos(j - u))
                    .map_or(now, |d| d.max(now))
            };
        }
        if hit(r_reorder, self.spec.reorder) {
            self.stats.reordered += 1;
            due += self.spec.reorder_by;
        } else {
            if let Some(last) = self.fifo_due {
                due = due.max(last);
            }
            self.fifo_due = Some(due);
        }
        let copy =
            (hit(r_dup, self.spec.duplicate) && self.has_room(2 * len)).then(|| item.clone());
        self.push(due, len, item);
        if let Some(c) = copy {
            self.stats.duplicated += 1;
            self.push(due, len, c);
        }
        None
    }

    fn has_room(&self, len: usize) -> bool {
        self.queue.len() < self.spec.queue_datagrams
            && self.bytes.saturating_add(len) <= self.spec.queue_bytes
    }

    fn push(&mut self, due: Instant, len: usize, item: T) {
        self.seq += 1;
        self.bytes += len;
        self.queue.push(Entry {
            due,
            seq: self.seq,
            len,
            item,
        });
        self.stats.max_queued = self.stats.max_queued.max(self.queue.len() as u64);
    }

    /// The next datagram due at or before `now`, with its due time (the caller may measure how
    /// late it sends it).
    pub fn pop_due(&mut self, now: Instant) -> Option<(Instant, T)> {
        if self.queue.peek()?.due > now {
            return None;
        }
        let e = self.queue.pop()?;
        self.bytes -= e.len;
        self.stats.delivered += 1;
        Some((e.due, e.item))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    /// Offers `n` one-byte datagrams numbered 0.. at `t0 + i * gap`, collecting whatever is
    /// due along the way and at the end: (number, delivered at).
    fn run(spec: ImpairSpec, n: u32, gap: Duration) -> (Vec<(u32, Instant)>, ImpairStats, Instant) {
        let t0 = Instant::now();
        let mut imp = Impair::new(spec, spec.stream_seed(1));
        let mut out = Vec::new();
        for i in 0..n {
            let now = t0 + gap * i;
            while let Some((due, d)) = imp.pop_due(now) {
                assert!(due <= now);
                out.push((d, due));
            }
            let _ = imp.offer(now, 1, i);
        }
        while let Some(due) = imp.next_due() {
            let (at, d) = imp.pop_due(due).expect("due now");
            assert_eq!(at, due);
            out.push((d, due));
        }
        (out, imp.stats(), t0)
    }

    #[test]
    fn a_clean_spec_passes_everything_at_once_in_order() {
        let spec = ImpairSpec::default();
        assert!(!spec.is_active());
        let (out, st, t0) = run(spec, 100, ms(1));
        assert_eq!(out.len(), 100);
        for (i, (d, at)) in out.iter().enumerate() {
            assert_eq!(*d, i as u32);
            assert_eq!(*at, t0 + ms(1) * i as u32);
        }
        assert_eq!((st.offered, st.delivered, st.lost), (100, 100, 0));
    }

    #[test]
    fn delay_holds_each_datagram_exactly_that_long() {
        let spec = ImpairSpec {
            delay: ms(15),
            ..ImpairSpec::default()
        };
        let t0 = Instant::now();
        let mut imp = Impair::new(spec, 1);
        assert_eq!(imp.offer(t0, 1400, "a"), None);
        assert_eq!(imp.offer(t0 + ms(2), 1400, "b"), None);
        assert_eq!(imp.next_due(), Some(t0 + ms(15)));
        assert!(imp.pop_due(t0 + ms(14)).is_none(), "not before its time");
        assert_eq!(imp.pop_due(t0 + ms(15)), Some((t0 + ms(15), "a")));
        assert!(imp.pop_due(t0 + ms(16)).is_none());
        assert_eq!(imp.pop_due(t0 + ms(20)), Some((t0 + ms(17), "b")));
        assert!(imp.is_empty() && imp.next_due().is_none());
    }

    #[test]
    fn loss_drops_the_asked_share_and_the_same_datagrams_for_a_seed() {
        let spec = ImpairSpec {
            loss: 0.01,
            seed: 42,
            ..ImpairSpec::default()
        };
        let (out, st, _) = run(spec, 200_000, Duration::from_micros(10));
        assert_eq!(st.lost + st.delivered, 200_000);
        assert_eq!(out.len() as u64, st.delivered);
        // Binomial(200k, 1 %): mean 2,000, sd 44.5; ±5 sd.
        assert!((1_777..=2_223).contains(&st.lost), "lost {}", st.lost);
        let kept: Vec<u32> = out.iter().map(|(d, _)| *d).collect();
        assert!(kept.windows(2).all(|w| w[0] < w[1]), "order kept");
        // Same seed, same datagrams lost; another seed, others.
        let (again, _, _) = run(spec, 200_000, Duration::from_micros(10));
        assert_eq!(kept, again.iter().map(|(d, _)| *d).collect::<Vec<_>>());
        let (other, _, _) = run(
            ImpairSpec { seed: 43, ..spec },
            200_000,
            Duration::from_micros(10),
        );
        assert_ne!(kept, other.iter().map(|(d, _)| *d).collect::<Vec<_>>());
    }

    #[test]
    fn the_loss_pattern_does_not_depend_on_the_other_knobs() {
        let spec = ImpairSpec {
            loss: 0.05,
            seed: 7,
            ..ImpairSpec::default()
        };
        let kept = |s: ImpairSpec| {
            let (out, _, _) = run(s, 5_000, ms(1));
            let mut v: Vec<u32> = out.iter().map(|(d, _)| *d).collect();
            v.sort_unstable();
            v.dedup();
            v
        };
        let base = kept(spec);
        let busy = kept(ImpairSpec {
            delay: ms(30),
            jitter: ms(5),
            reorder: 0.2,
            duplicate: 0.1,
            ..spec
        });
        assert_eq!(base, busy);
    }

    #[test]
    fn jitter_varies_the_delay_within_bounds_but_keeps_the_order() {
        let spec = ImpairSpec {
            delay: ms(20),
            jitter: ms(5),
            seed: 3,
            ..ImpairSpec::default()
        };
        let gap = ms(1);
        let (out, st, t0) = run(spec, 2_000, gap);
        assert_eq!(st.delivered, 2_000);
        let mut delays = Vec::new();
        for (i, (d, at)) in out.iter().enumerate() {
            assert_eq!(*d, i as u32, "jitter alone never reorders");
            let sent = t0 + gap * *d;
            delays.push(at.duration_since(sent));
        }
        // Each delay within 20 ± 5 ms, except that order-keeping may push one past +5 ms by at
        // most the previous datagram's lead (< 1 ms gap + 10 ms spread).
        assert!(delays.iter().all(|d| *d >= ms(15) && *d <= ms(25)));
        let distinct: std::collections::BTreeSet<_> = delays.iter().collect();
        assert!(distinct.len() > 100, "delays vary: {}", distinct.len());
    }

    #[test]
    fn a_reordered_datagram_is_overtaken_by_the_ones_behind_it() {
        let spec = ImpairSpec {
            delay: ms(10),
            reorder: 0.1,
            reorder_by: ms(3),
            seed: 11,
            ..ImpairSpec::default()
        };
        let (out, st, t0) = run(spec, 1_000, ms(1));
        assert_eq!(st.delivered, 1_000);
        assert!((50..=150).contains(&st.reordered), "{}", st.reordered);
        let order: Vec<u32> = out.iter().map(|(d, _)| *d).collect();
        let late: Vec<u32> = out
            .iter()
            .filter(|(d, at)| at.duration_since(t0 + ms(1) * *d) == ms(13))
            .map(|(d, _)| *d)
            .collect();
        assert_eq!(late.len() as u64, st.reordered);
        for d in &late {
            // Datagrams d+1 and d+2 left at 11 and 12 ms after d: before it.
            let pos = |x: u32| order.iter().position(|y| *y == x);
            if let (Some(p), Some(q)) = (pos(*d), pos(d + 1)) {
                if !late.contains(&(d + 1)) {
                    assert!(q < p, "{} overtakes {d}", d + 1);
                }
            }
        }
        let mut sorted = order.clone();
        sorted.sort_unstable();
        assert_eq!(sorted, (0..1_000).collect::<Vec<_>>(), "nothing lost");
    }

    #[test]
    fn duplicates_follow_their_original() {
        let spec = ImpairSpec {
            delay: ms(5),
            duplicate: 0.25,
            seed: 5,
            ..ImpairSpec::default()
        };
        let (out, st, _) = run(spec, 1_000, ms(1));
        assert!((150..=350).contains(&st.duplicated), "{}", st.duplicated);
        assert_eq!(st.delivered, 1_000 + st.duplicated);
        let order: Vec<u32> = out.iter().map(|(d, _)| *d).collect();
        assert!(order.windows(2).all(|w| w[0] <= w[1]));
        let twice = order.windows(2).filter(|w| w[0] == w[1]).count() as u64;
        assert_eq!(twice, st.duplicated);
    }

    #[test]
    fn the_queue_limit_drops_apart_from_the_loss() {
        let spec = ImpairSpec {
            delay: ms(100),
            queue_datagrams: 10,
            queue_bytes: 1 << 20,
            ..ImpairSpec::default()
        };
        let t0 = Instant::now();
        let mut imp = Impair::new(spec, 0);
        for i in 0..15u32 {
            let back = imp.offer(t0, 100, i);
            assert_eq!(back.is_some(), i >= 10, "datagram {i}");
        }
        let st = imp.stats();
        assert_eq!((st.overflow, st.lost, st.max_queued), (5, 0, 10));
        // By bytes too.
        let mut imp = Impair::new(
            ImpairSpec {
                queue_bytes: 3_000,
                ..spec
            },
            0,
        );
        assert!(imp.offer(t0, 1_400, 0).is_none() && imp.offer(t0, 1_400, 1).is_none());
        assert_eq!(imp.offer(t0, 1_400, 2), Some(2));
        assert!(imp.offer(t0, 200, 3).is_none());
        assert_eq!(imp.stats().overflow, 1);
        // Room again once some left.
        while imp.pop_due(t0 + ms(100)).is_some() {}
        assert!(imp.offer(t0 + ms(100), 1_400, 4).is_none());
    }

    #[test]
    fn percentages_parse_and_print() {
        assert_eq!(parse_percent("0.1%"), Ok(0.001));
        assert_eq!(parse_percent(" 3 % "), Ok(0.03));
        assert_eq!(parse_percent("100%"), Ok(1.0));
        assert!(parse_percent("0.01").is_err(), "the % is required");
        assert!(parse_percent("-1%").is_err());
        assert!(parse_percent("101%").is_err());
        assert!(parse_percent("lots%").is_err());
        assert_eq!(percent(0.001), "0.1%");
        assert_eq!(percent(0.03), "3%");
        assert_eq!(percent(0.0), "0%");
        let s = ImpairSpec {
            delay: ms(15),
            jitter: Duration::from_micros(500),
            loss: 0.005,
            seed: 9,
            ..ImpairSpec::default()
        };
        assert_eq!(
            s.summary(),
            "delay 15ms ±0.5ms, loss 0.5%, duplicate 0%, reorder 0%, seed 9"
        );
        assert!(s.is_active() && s.validate().is_ok());
        assert!(ImpairSpec { loss: 1.5, ..s }.validate().is_err());
        assert!(
            ImpairSpec {
                delay: Duration::from_secs(11),
                ..s
            }
            .validate()
            .is_err()
        );
    }

    #[test]
    fn splitmix_matches_its_reference_output() {
        // First outputs for seed 1234567 of the published reference implementation.
        let mut r = SplitMix64::new(1_234_567);
        assert_eq!(r.next_u64(), 6_457_827_717_110_365_317);
        assert_eq!(r.next_u64(), 3_203_168_211_198_807_973);
        assert!(hit(0, 1e-9) && !hit(u64::MAX, 0.999_999) && hit(u64::MAX, 1.0) && !hit(0, 0.0));
    }
}
