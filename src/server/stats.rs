//! The counters a shard's connection tasks add to ([`ServerStats`]), and the one place a proxied
//! exchange's outcome is classified for them ([`ServerStats::record_exchange`]).

use super::proxy::{Counted, Outcome};

/// Counters one connection task adds to (owned by the shard, never shared across cores).
#[derive(Debug, Default, Clone)]
pub struct ServerStats {
    pub requests: u64,
    pub healthchecks: u64,
    pub not_found: u64,
    pub rejected: u64,
    pub timeouts: u64,
    pub proxied: u64,
    pub denied: u64,
    pub upstream_errors: u64,
    /// Proxied exchanges the vendor abandoned: its connection went away mid-response, or its
    /// request body stopped or stalled.
    pub vendor_aborted: u64,
    /// Proxied responses by status class: 1xx..5xx at index 0..4.
    pub proxied_by_class: [u64; 5],
    /// Request and response body bytes of proxied exchanges.
    pub bytes_in: u64,
    pub bytes_out: u64,
    /// Latency of proxied exchanges (head received → response done), cumulative-free bucket
    /// counts for the upper bounds in [`LATENCY_BUCKETS_MS`] plus one overflow bucket.
    pub latency_buckets: [u64; LATENCY_BUCKETS_MS.len() + 1],
    /// Sum of those latencies, microseconds.
    pub latency_sum_us: u64,
    /// Pooled tokens set aside after a 401.
    pub tokens_set_aside: u64,
}

/// Upper bounds of the proxied-latency histogram buckets, milliseconds.
pub const LATENCY_BUCKETS_MS: [f64; 12] = [
    1.0, 2.5, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 5000.0, 30000.0,
];

impl ServerStats {
    /// Counts one exchange on `/proxy/`: under its outcome (`proxied`, or what
    /// [`ErrorKind::counted`](super::proxy::ErrorKind::counted) says for a failure), and — when
    /// a rule allowed it and a status went out — in the status classes, bytes and latency.
    pub fn record_exchange(&mut self, o: &Outcome) {
        self.tokens_set_aside += u64::from(o.token_set_aside);
        if o.rule.is_some() && o.status != 0 {
            self.record_proxied(o);
        }
        match o.error.map(|kind| kind.counted()) {
            None => self.proxied += 1,
            Some(Counted::Denied) => self.denied += 1,
            Some(Counted::Malformed) => self.rejected += 1,
            Some(Counted::VendorAborted) => self.vendor_aborted += 1,
            Some(Counted::UpstreamError) => self.upstream_errors += 1,
        }
    }

    /// Records one proxied exchange's status class, bytes and latency.
    fn record_proxied(&mut self, o: &Outcome) {
        if let Some(class) = (o.status / 100).checked_sub(1).filter(|c| *c < 5) {
            self.proxied_by_class[usize::from(class)] += 1;
        }
        self.bytes_in += o.request_bytes;
        self.bytes_out += o.response_bytes;
        let ms = o.elapsed_us as f64 / 1000.0;
        let i = LATENCY_BUCKETS_MS
            .iter()
            .position(|b| ms <= *b)
            .unwrap_or(LATENCY_BUCKETS_MS.len());
        self.latency_buckets[i] += 1;
        self.latency_sum_us += o.elapsed_us;
    }
}
