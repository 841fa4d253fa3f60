//! When to (re)try a relay's delivery: capped exponential back-off, sans-IO (given `now`).
//!
//! Each relay delivers its spool in order, one event at a time: the head event is retried until
//! the vendor answers 2xx, and the next one waits behind it (per-relay order is the promise, so a
//! failing head blocks its relay; other relays go on). After the `n`-th consecutive failure the
//! next attempt waits `retry_min * 2^(n-1)`, at most `retry_max`; a `Retry-After` the vendor sends
//! (429, 503) is honoured when longer, still capped by `retry_max`. A success resets the back-off.
//!
//! What counts as a failure is decided here too ([`Outcome::of_status`]): only a 2xx delivers.
//! A 4xx is retried like a 5xx — dropping an accepted event on a vendor's 400 would lose it, and
//! a 4xx is usually a vendor-side misconfiguration that gets fixed — but it is reported as such,
//! so an operator sees a relay stuck on one event (the spool's oldest age grows).

use std::time::{Duration, Instant};

/// What one delivery attempt came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// 2xx: drop the event from the spool.
    Delivered,
    /// Connection failure, timeout, 5xx: retry.
    Unavailable,
    /// 4xx (or another non-2xx): retry, but it is the vendor refusing this event.
    Refused,
}

impl Outcome {
    /// The outcome of a response status.
    pub fn of_status(status: u16) -> Outcome {
        match status {
            200..=299 => Outcome::Delivered,
            400..=499 if status != 408 && status != 429 => Outcome::Refused,
            _ => Outcome::Unavailable,
        }
    }
}

/// One relay's back-off state.
#[derive(Debug, Clone)]
pub struct Backoff {
    min: Duration,
    max: Duration,
    /// Consecutive failures of the current head.
    failures: u32,
    /// Not before this instant (none: now).
    not_before: Option<Instant>,
}

impl Backoff {
    pub fn new(min: Duration, max: Duration) -> Self {
        Self {
            min,
            max: max.max(min),
            failures: 0,
            not_before: None,
        }
    }

    /// Whether an attempt may start at `now`.
    pub fn ready(&self, now: Instant) -> bool {
        self.not_before.is_none_or(|t| now >= t)
    }

    /// When the next attempt may start (none: at once).
    pub fn next_attempt(&self) -> Option<Instant> {
        self.not_before
    }

    /// Consecutive failures so far.
    pub fn failures(&self) -> u32 {
        self.failures
    }

    /// Records a success: the next event goes at once.
    pub fn succeeded(&mut self) {
        self.failures = 0;
        self.not_before = None;
    }

    /// Records a failure at `now`; returns the delay before the next attempt.
    pub fn failed(&mut self, now: Instant, retry_after: Option<Duration>) -> Duration {
        self.failures = self.failures.saturating_add(1);
        let shift = (self.failures - 1).min(31);
        let exp = self
            .min
            .checked_mul(1u32 << shift)
            .unwrap_or(self.max)
            .min(self.max);
        let delay = retry_after.map_or(exp, |r| r.max(exp)).min(self.max);
        self.not_before = Some(now + delay);
        delay
    }
}

/// `Retry-After` as delay-seconds (an HTTP date is ignored: the back-off applies).
pub fn parse_retry_after(v: &[u8]) -> Option<Duration> {
    let s = std::str::from_utf8(crate::http::trim_ows(v)).ok()?;
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some(Duration::from_secs(s.parse().unwrap_or(u64::MAX)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_up_to_the_cap_and_resets_on_success() {
        let t0 = Instant::now();
        let mut b = Backoff::new(Duration::from_secs(1), Duration::from_secs(10));
        assert!(b.ready(t0));
        let delays: Vec<u64> = (0..6).map(|_| b.failed(t0, None).as_secs()).collect();
        assert_eq!(delays, [1, 2, 4, 8, 10, 10]);
        assert!(!b.ready(t0 + Duration::from_secs(9)));
        assert!(b.ready(t0 + Duration::from_secs(10)));
        b.succeeded();
        assert!(b.ready(t0));
        assert_eq!(b.failed(t0, None), Duration::from_secs(1));
    }

    #[test]
    fn retry_after_is_honoured_within_the_cap() {
        let t0 = Instant::now();
        let mut b = Backoff::new(Duration::from_secs(1), Duration::from_secs(60));
        assert_eq!(b.failed(t0, Some(Duration::from_secs(30))).as_secs(), 30);
        assert_eq!(b.failed(t0, Some(Duration::from_secs(1))).as_secs(), 2);
        assert_eq!(b.failed(t0, Some(Duration::from_secs(3600))).as_secs(), 60);
    }

    #[test]
    fn many_failures_never_overflow() {
        let t0 = Instant::now();
        let mut b = Backoff::new(Duration::from_secs(1), Duration::from_secs(300));
        for _ in 0..100 {
            assert!(b.failed(t0, None) <= Duration::from_secs(300));
        }
        assert_eq!(b.failures(), 100);
    }

    #[test]
    fn only_2xx_delivers() {
        assert_eq!(Outcome::of_status(200), Outcome::Delivered);
        assert_eq!(Outcome::of_status(204), Outcome::Delivered);
        assert_eq!(Outcome::of_status(301), Outcome::Unavailable);
        assert_eq!(Outcome::of_status(400), Outcome::Refused);
        assert_eq!(Outcome::of_status(429), Outcome::Unavailable);
        assert_eq!(Outcome::of_status(503), Outcome::Unavailable);
        assert_eq!(parse_retry_after(b" 120 "), Some(Duration::from_secs(120)));
        assert_eq!(parse_retry_after(b"Wed, 21 Oct 2015 07:28:00 GMT"), None);
    }
}
