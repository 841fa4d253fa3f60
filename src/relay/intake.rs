//! One webhook, from a received request to the answer: [`Relays::decide`], then (when accepted)
//! the spool, then the status line and body the SCM gets. No sockets here: the runtime reads the
//! request and writes the answer; this is where the answer is chosen, so it is tested without a
//! network. Also the counters and log events of the intake side.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use super::spool::{AppendError, Event, Spool};
use super::{Relays, Verdict, Webhook};

/// What the SCM is told after a full spool or a disk error (seconds).
pub const RETRY_AFTER: Duration = Duration::from_secs(30);

/// Counters of one relay (exported on `/metrics` with `relay="<name>"`).
#[derive(Debug, Default)]
pub struct RelayCounters {
    pub accepted: AtomicU64,
    /// Filtered out, by what filtered: `events`, `touches`, `when`.
    pub filtered_events: AtomicU64,
    pub filtered_touches: AtomicU64,
    pub filtered_when: AtomicU64,
    /// Refused: 401.
    pub unauthenticated: AtomicU64,
    /// Refused: 400, 405, 413.
    pub malformed: AtomicU64,
    /// Answered 503 (spool full or unwritable).
    pub spool_refused: AtomicU64,
    pub delivered: AtomicU64,
    /// Failed delivery attempts (each one is retried).
    pub retries: AtomicU64,
}

/// Each relay's name and counters.
pub type PerRelay = Vec<(String, Arc<RelayCounters>)>;

/// Counters of every relay and of the listener.
#[derive(Debug)]
pub struct Stats {
    /// Each configured relay's counters, by name, in configuration order; a reload keeps the
    /// counters of a relay it keeps ([`Stats::follow`]).
    relays: RwLock<Arc<PerRelay>>,
    /// Requests for no relay (404).
    pub unknown: AtomicU64,
    /// The spool, as of the last append or removal: bytes, events, and when the oldest waiting
    /// event was accepted (Unix ms, 0 = none).
    pub spool_bytes: AtomicU64,
    pub spool_events: AtomicU64,
    pub oldest_received_ms: AtomicU64,
}

impl Stats {
    pub fn new(relays: &Relays) -> Self {
        Self {
            relays: RwLock::new(Arc::new(
                relays
                    .relays
                    .iter()
                    .map(|r| (r.name.clone(), Arc::default()))
                    .collect(),
            )),
            unknown: AtomicU64::new(0),
            spool_bytes: AtomicU64::new(0),
            spool_events: AtomicU64::new(0),
            oldest_received_ms: AtomicU64::new(0),
        }
    }

    /// Every configured relay's counters, in configuration order.
    pub fn relays(&self) -> Arc<PerRelay> {
        match self.relays.read() {
            Ok(r) => r.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// The counters of relay `name`, while it is configured.
    pub fn counters(&self, name: &str) -> Option<Arc<RelayCounters>> {
        self.relays()
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, c)| c.clone())
    }

    /// Follows a reload: a kept relay keeps its counters (they only grow), a new one starts at
    /// zero, a removed one leaves `/metrics`.
    pub fn follow(&self, relays: &Relays) {
        let old = self.relays();
        let new: Vec<_> = relays
            .relays
            .iter()
            .map(|r| {
                let kept = old
                    .iter()
                    .find(|(n, _)| *n == r.name)
                    .map(|(_, c)| c.clone());
                (r.name.clone(), kept.unwrap_or_default())
            })
            .collect();
        match self.relays.write() {
            Ok(mut r) => *r = Arc::new(new),
            Err(poisoned) => *poisoned.into_inner() = Arc::new(new),
        }
    }

    /// Publishes the spool's gauges.
    pub fn observe(&self, spool: &Spool) {
        let (bytes, events, oldest) = spool.gauges();
        self.spool_bytes.store(bytes, Ordering::Relaxed);
        self.spool_events.store(events, Ordering::Relaxed);
        self.oldest_received_ms
            .store(oldest.unwrap_or(0), Ordering::Relaxed);
    }
}

/// The answer to the SCM.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    pub status: u16,
    /// Seconds for a `Retry-After` header (503 only).
    pub retry_after: Option<u64>,
    /// A JSON body.
    pub body: String,
}

fn bump(c: &AtomicU64) {
    c.fetch_add(1, Ordering::Relaxed);
}

/// Decides `w`, spools it when accepted, counts and logs it, and says what to answer.
/// `now_ms` is the Unix time in milliseconds (stored with the event for the oldest-age gauge).
pub fn intake(
    relays: &Relays,
    spool: &Spool,
    stats: &Stats,
    w: &Webhook<'_>,
    now_ms: u64,
) -> Answer {
    let verdict = relays.decide(w);
    let name = |i: usize| relays.relays.get(i).map_or("", |r| r.name.as_str());
    let counters = |i: usize| stats.counters(name(i));
    match &verdict {
        Verdict::Accept(a) => {
            let ev = Event {
                received_ms: now_ms,
                event: a.event.clone(),
                delivery: a.delivery.clone(),
                headers: a.headers.clone(),
                body: w.body.to_vec(),
            };
            let appended = spool.append(name(a.relay), &ev);
            stats.observe(spool);
            match appended {
                Ok(entry) => {
                    if let Some(c) = counters(a.relay) {
                        bump(&c.accepted);
                    }
                    tracing::info!(
                        event = "relay.accepted",
                        relay = name(a.relay),
                        webhook_event = a.event.as_deref().unwrap_or(""),
                        delivery = a.delivery.as_deref().unwrap_or(""),
                        bytes = w.body.len(),
                        seq = entry.seq,
                    );
                    Answer {
                        status: 202,
                        retry_after: None,
                        body: verdict.body(),
                    }
                }
                Err(e) => {
                    if let Some(c) = counters(a.relay) {
                        bump(&c.spool_refused);
                    }
                    let reason = match &e {
                        AppendError::Full { .. } => "the spool is full",
                        AppendError::Io(_) => "the spool cannot be written",
                    };
                    tracing::warn!(
                        event = "relay.spool_refused",
                        relay = name(a.relay),
                        delivery = a.delivery.as_deref().unwrap_or(""),
                        error = %e,
                    );
                    Answer {
                        status: 503,
                        retry_after: Some(RETRY_AFTER.as_secs()),
                        body: serde_json::json!({ "error": reason }).to_string(),
                    }
                }
            }
        }
        Verdict::Filtered { relay, reason } => {
            if let Some(c) = counters(*relay) {
                let which = if reason.starts_with("events") {
                    &c.filtered_events
                } else if reason.starts_with("touches") {
                    &c.filtered_touches
                } else {
                    &c.filtered_when
                };
                bump(which);
            }
            tracing::info!(event = "relay.filtered", relay = name(*relay), reason = %reason);
            Answer {
                status: 200,
                retry_after: None,
                body: verdict.body(),
            }
        }
        Verdict::Refused { status, reason } => {
            match (relays.route(w.path).and_then(counters), status) {
                (None, _) => bump(&stats.unknown),
                (Some(c), 401) => bump(&c.unauthenticated),
                (Some(c), _) => bump(&c.malformed),
            }
            tracing::warn!(
                event = "relay.refused",
                relay = relays.route(w.path).map_or("", name),
                status = *status,
                reason = %reason,
            );
            Answer {
                status: *status,
                retry_after: None,
                body: verdict.body(),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;
    use crate::relay::{Outbound, RelaySpec, WebhookScm};

    fn relays(dir: PathBuf) -> Relays {
        Relays::compile(&Outbound {
            listen: "127.0.0.1:1".parse().expect("addr"),
            spool_dir: dir,
            spool_max: 1 << 20,
            max_body: 1 << 16,
            retry_min: Outbound::DEFAULT_RETRY_MIN,
            retry_max: Outbound::DEFAULT_RETRY_MAX,
            delivery_timeout: Outbound::DEFAULT_DELIVERY_TIMEOUT,
            relay: vec![RelaySpec {
                name: "r".into(),
                destination_url: "http://127.0.0.1:9/in".into(),
                scm: WebhookScm::None,
                secret: None,
                secret_unavailable: None,
                events: vec!["push".into()],
                touches: Vec::new(),
                when: Vec::new(),
            }],
        })
        .expect("compiles")
    }

    fn hook<'a>(headers: &'a [(&'a str, &'a [u8])], body: &'a [u8]) -> Webhook<'a> {
        Webhook {
            method: "POST",
            path: "/relay/r",
            headers,
            body,
        }
    }

    #[test]
    fn accepted_means_spooled_and_a_full_spool_answers_503_with_retry_after() {
        let dir = tempfile::tempdir().expect("tempdir");
        let r = relays(dir.path().to_owned());
        let stats = Stats::new(&r);
        let body = vec![b'x'; 300];
        let h: [(&str, &[u8]); 1] = [("X-GitHub-Event", b"push")];
        // Room for exactly two events.
        let one = {
            let (probe, _) = Spool::open(&dir.path().join("probe"), 1 << 20).expect("open");
            let ev = Event {
                received_ms: 1,
                event: Some("push".into()),
                delivery: None,
                headers: vec![("X-GitHub-Event".into(), b"push".to_vec())],
                body: body.clone(),
            };
            probe.append("r", &ev).expect("append").size
        };
        let (spool, _) = Spool::open(&dir.path().join("spool"), 2 * one).expect("open");
        for _ in 0..2 {
            let a = intake(&r, &spool, &stats, &hook(&h, &body), 1);
            assert_eq!((a.status, a.retry_after), (202, None), "{a:?}");
        }
        let a = intake(&r, &spool, &stats, &hook(&h, &body), 1);
        assert_eq!((a.status, a.retry_after), (503, Some(30)), "{a:?}");
        assert_eq!(spool.pending("r"), 2, "nothing accepted was lost");
        let c = stats.counters("r").expect("relay r is counted");
        assert_eq!(c.accepted.load(Ordering::Relaxed), 2);
        assert_eq!(c.spool_refused.load(Ordering::Relaxed), 1);

        let other: [(&str, &[u8]); 1] = [("X-GitHub-Event", b"issues")];
        let a = intake(&r, &spool, &stats, &hook(&other, &body), 1);
        assert_eq!(a.status, 200);
        assert_eq!(c.filtered_events.load(Ordering::Relaxed), 1);
        let lost = Webhook {
            path: "/relay/nope",
            ..hook(&h, &body)
        };
        assert_eq!(intake(&r, &spool, &stats, &lost, 1).status, 404);
        assert_eq!(stats.unknown.load(Ordering::Relaxed), 1);
    }
}
