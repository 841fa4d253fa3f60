//! Token pools: one request header whose value is one of several tokens, taken round-robin per
//! request, so that a large organisation spreads its SCM rate limit over several tokens.
//!
//! A token the upstream answers `401` to is set aside for [`SET_ASIDE`]: the next requests use
//! the others (when every token is set aside, round-robin goes on over all of them, so an
//! upstream that rejects everything still gets the vendor's requests and says why). A request
//! is never retried with another token: the `401` goes back to the vendor as it came.
//!
//! Sans-IO: time comes in as `now`; the state is atomics, shared by every shard through the
//! `Arc` in [`RuleSpec::token_pool`](super::RuleSpec::token_pool) (one pool for all the rules an
//! `[[scm]]` entry generates, so they share the rotation).

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::secret::Secret;

/// How long a token the upstream rejected (401) stays out of the rotation.
pub const SET_ASIDE: Duration = Duration::from_secs(60);

/// Several values for one request header.
#[derive(Debug)]
pub struct TokenPool {
    header: String,
    values: Vec<Secret>,
    next: AtomicUsize,
    /// Per value: milliseconds since `epoch` until which it is set aside (0: in rotation).
    aside_until: Vec<AtomicU64>,
    epoch: Instant,
    set_aside: Duration,
}

impl TokenPool {
    /// A pool of `values` (at least one) for `header`.
    pub fn new(header: impl Into<String>, values: Vec<Secret>, set_aside: Duration) -> Self {
        let aside_until = values.iter().map(|_| AtomicU64::new(0)).collect();
        Self {
            header: header.into(),
            values,
            next: AtomicUsize::new(0),
            aside_until,
            epoch: Instant::now(),
            set_aside,
        }
    }

    /// The header the tokens go in.
    pub fn header(&self) -> &str {
        &self.header
    }

    /// The values, in configuration order.
    pub fn values(&self) -> &[Secret] {
        &self.values
    }

    fn ms(&self, t: Instant) -> u64 {
        u64::try_from(t.saturating_duration_since(self.epoch).as_millis()).unwrap_or(u64::MAX)
    }

    /// The token for the next request: round-robin over those not set aside at `now`.
    /// Returns its index (for [`TokenPool::reject`]) and value.
    pub fn pick(&self, now: Instant) -> (usize, &Secret) {
        let n = self.values.len().max(1);
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        let now_ms = self.ms(now);
        let i = (0..n)
            .map(|k| (start + k) % n)
            .find(|&i| {
                self.aside_until
                    .get(i)
                    .is_some_and(|u| u.load(Ordering::Relaxed) <= now_ms)
            })
            .unwrap_or(start % n);
        if i != start % n {
            // Skipped set-aside tokens: the next request starts after the one used.
            let _ = self.next.compare_exchange(
                start.wrapping_add(1),
                i + 1,
                Ordering::Relaxed,
                Ordering::Relaxed,
            );
        }
        (i, &self.values[i.min(self.values.len() - 1)])
    }

    /// The upstream answered `401` to token `i` at `now`: set it aside. Returns whether it was
    /// in rotation until now (so one rejection is counted and logged once).
    pub fn reject(&self, i: usize, now: Instant) -> bool {
        let Some(u) = self.aside_until.get(i) else {
            return false;
        };
        let now_ms = self.ms(now);
        let until =
            now_ms.saturating_add(u64::try_from(self.set_aside.as_millis()).unwrap_or(u64::MAX));
        let before = u.swap(until, Ordering::Relaxed);
        before <= now_ms
    }

    /// How many tokens are set aside at `now`.
    pub fn set_aside_count(&self, now: Instant) -> usize {
        let now_ms = self.ms(now);
        self.aside_until
            .iter()
            .filter(|u| u.load(Ordering::Relaxed) > now_ms)
            .count()
    }
}

/// Two pools are the same configuration when header and tokens are (their state aside).
impl PartialEq for TokenPool {
    fn eq(&self, other: &Self) -> bool {
        self.header == other.header && self.values == other.values
    }
}

impl Eq for TokenPool {}

/// `{ Header = [source, ...] }`: each token by its source, never its value.
impl Serialize for TokenPool {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut m = s.serialize_map(Some(1))?;
        m.serialize_entry(&self.header, &self.values)?;
        m.end()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pool(n: usize) -> TokenPool {
        let values = (0..n).map(|i| Secret::new(format!("t{i}"))).collect();
        TokenPool::new("Authorization", values, SET_ASIDE)
    }

    #[test]
    fn requests_spread_evenly_over_the_tokens() {
        let p = pool(3);
        let now = Instant::now();
        let mut counts = [0usize; 3];
        for _ in 0..300 {
            counts[p.pick(now).0] += 1;
        }
        assert_eq!(counts, [100, 100, 100]);
    }

    #[test]
    fn a_rejected_token_is_set_aside_for_a_while_then_returns() {
        let p = pool(3);
        let now = Instant::now();
        assert!(p.reject(1, now), "newly set aside");
        assert!(!p.reject(1, now), "already aside: counted once");
        let mut counts = [0usize; 3];
        for _ in 0..100 {
            counts[p.pick(now).0] += 1;
        }
        assert_eq!(counts[1], 0, "{counts:?}");
        assert_eq!(counts[0], 50);
        assert_eq!(p.set_aside_count(now), 1);
        let later = now + SET_ASIDE + Duration::from_millis(1);
        assert_eq!(p.set_aside_count(later), 0);
        let used: Vec<usize> = (0..3).map(|_| p.pick(later).0).collect();
        assert!(used.contains(&1), "{used:?}");
    }

    #[test]
    fn with_every_token_aside_the_rotation_goes_on() {
        let p = pool(2);
        let now = Instant::now();
        p.reject(0, now);
        p.reject(1, now);
        let used: Vec<usize> = (0..4).map(|_| p.pick(now).0).collect();
        assert!(used.contains(&0) && used.contains(&1), "{used:?}");
    }

    #[test]
    fn a_pool_shows_its_sources_never_its_values() {
        let p = pool(2);
        let shown = toml::to_string(&p).expect("serializes");
        assert!(!shown.contains("t0") && !shown.contains("t1"), "{shown}");
        assert!(shown.contains("Authorization"), "{shown}");
    }
}

#[cfg(test)]
mod config_tests {
    use crate::config::{LoadMode, load_str};

    const WG: &str = "[wireguard]\nprivate_key = \"yAnz5TF+lXXJte14tji3zlMNq+hd2rYUIgJBgB3fBmk=\"\n\
        address = \"10.77.0.2\"\n[[wireguard.peers]]\n\
        public_key = \"xTIBA5rboUvnH4htodjb6e697QjLERt1NAB4mZqp8Dg=\"\n\
        endpoint = \"gw.example:51820\"\nallowed_ips = [\"10.77.0.1/32\"]\n";

    fn load(extra: &str) -> Result<crate::config::Loaded, Vec<String>> {
        let env = |k: &str| Some(format!("value-of-{k}"));
        load_str(
            &[("p.toml".into(), format!("{WG}{extra}"))],
            LoadMode::Full,
            &env,
        )
        .map_err(|e| {
            e.0.iter()
                .map(|e| format!("{}: {}", e.key, e.message))
                .collect()
        })
    }

    #[test]
    fn scm_tokens_and_header_arrays_become_pools() {
        let l = load(
            "[[scm]]\ntype = \"gitlab\"\nbase_url = \"https://gl.example.com/api/v4\"\n\
             tokens = [{ env = \"A\" }, { env = \"B\" }]\n\
             [[allow]]\nurl = \"https://jira.example.com/*\"\nmethods = [\"GET\"]\n\
             set_request_headers = { Authorization = [\"Bearer x\", \"Bearer y\"], X-Other = \"z\" }\n",
        )
        .expect("loads");
        let rules = l.config.rules();
        let user = rules[0].token_pool.as_ref().expect("a pool on the rule");
        assert_eq!((user.header(), user.values().len()), ("Authorization", 2));
        assert_eq!(
            rules[0].set_request_headers.len(),
            1,
            "the single header stays"
        );
        let scm: Vec<_> = rules[1..].iter().map(|r| r.token_pool.clone()).collect();
        let first = scm[0].as_ref().expect("generated rules share a pool");
        assert_eq!(first.header(), "PRIVATE-TOKEN");
        assert!(
            scm.iter()
                .all(|p| p.as_ref().is_some_and(|p| std::sync::Arc::ptr_eq(p, first)))
        );
        let dumped = crate::config::dump::render(&l.config);
        assert!(!dumped.contains("value-of-"), "{dumped}");
        assert!(
            dumped.contains("[[scm.tokens]]\nenv = \"A\"\n\n[[scm.tokens]]\nenv = \"B\""),
            "{dumped}"
        );
    }

    #[test]
    fn a_pool_needs_two_tokens_and_not_token_too() {
        let e = load(
            "[[scm]]\ntype = \"gitlab\"\nbase_url = \"https://gl.example.com/api/v4\"\n\
             token = \"t\"\ntokens = [\"a\", \"b\"]\n\
             [[scm]]\ntype = \"github\"\nbase_url = \"https://gh.example.com/api/v3\"\ntokens = [\"a\"]\n",
        )
        .expect_err("refused");
        assert!(
            e.iter()
                .any(|e| e.starts_with("scm[0].tokens: give `token` or `tokens`")),
            "{e:?}"
        );
        assert!(
            e.iter()
                .any(|e| e.starts_with("scm[1].tokens: expected an array of two or more")),
            "{e:?}"
        );
    }
}
