//! The idle-connection pool's decisions, without sockets and without a clock: which idle
//! connection a request gets, which idle connections are closed and when, how many are kept.
//!
//! Responsibility: the bookkeeping of one shard's keep-alive connections, per [`Target`] (scheme,
//! host and port). Every operation is given the time (`now`) by its caller; nothing here reads a
//! clock, touches a socket or drops a connection. The runtime (`runtime::upstream`) owns the rest:
//! it reads the clock once per operation, supplies the liveness check (a non-blocking peek that
//! finds the connection still open and silent) as the `is_open` predicate, and closes the
//! connections this pool hands back. That keeps every decision below testable with a fake clock
//! and fake connections (the tests at the end use numbers for connections).
//!
//! Policy (the README's `[upstream]` section, `idle_timeout` and `pool_max_idle_per_host`):
//! * **checkout is newest first (LIFO)**: the most recently used connection is the likeliest to
//!   still be open, and the older ones are left to age out, so a quiet period shrinks the pool;
//! * **eviction is oldest first (FIFO)**: a release that takes a target over
//!   `pool_max_idle_per_host` closes the connection idle the longest; a limit of 0 keeps nothing;
//! * **expiry**: a connection idle for `idle_timeout` *or longer* is never handed out (at exactly
//!   `idle_timeout` it is expired); [`Pool::checkout`] closes the stale ones it meets,
//!   [`Pool::expire`] (the runtime's periodic sweep) closes every stale or dead one;
//! * a connection the liveness check rejects is closed ("dead"), never handed out.
//!
//! Invariants:
//! * a connection is filed only under the [`Target`] it was opened for ([`Pooled::target`]);
//! * each target's list is in the order its connections became idle (oldest first), because the
//!   `now` given to successive calls never goes backwards (it comes from [`Instant::now`]);
//! * no target is kept with an empty list, and no list is longer than `pool_max_idle_per_host`;
//! * a connection leaving the pool is returned to the caller, which closes it by dropping it:
//!   closing is I/O, and the caller decides when (the runtime drops them after its `RefCell`
//!   borrow of the pool ends).

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::time::{Duration, Instant};

use super::{Pooled, Target};

/// Pool counters (per shard; read them for metrics or tests).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PoolStats {
    /// New TCP connections established (through the proxy's tunnel when there is one), before
    /// any TLS handshake. Counted by the runtime, which dials ([`Pool::count_opened`]).
    pub opened: u64,
    /// Connections handed out from the idle pool.
    pub reused: u64,
    /// Idle connections closed because they had been idle for `idle_timeout` or longer.
    pub expired: u64,
    /// Idle connections closed because the liveness check rejected them (the peer had closed
    /// them or sent unsolicited bytes).
    pub dead: u64,
    /// Idle connections closed because the per-target limit was reached.
    pub evicted: u64,
}

/// What [`Pool::checkout`] found.
#[derive(Debug)]
pub struct Checkout<C> {
    /// The idle connection to use, if one was fresh and open.
    pub found: Option<Pooled<C>>,
    /// Connections the checkout took out of the pool as stale or dead: the caller closes them.
    pub closed: Vec<C>,
}

/// An idle connection, when it became idle, and how many exchanges it carried.
struct Idle<C> {
    conn: C,
    since: Instant,
    exchanges: u32,
}

impl<C> Idle<C> {
    /// True when the connection must not be handed out at `now`: idle for `idle_timeout` or
    /// longer. The one place the boundary is decided.
    fn is_stale(&self, now: Instant, idle_timeout: Duration) -> bool {
        now.saturating_duration_since(self.since) >= idle_timeout
    }
}

/// One shard's idle connections, per [`Target`]. `C` is the connection (a socket in the runtime,
/// anything in tests).
pub struct Pool<C> {
    idle_timeout: Duration,
    max_idle: usize,
    idle: HashMap<Target, VecDeque<Idle<C>>>,
    stats: PoolStats,
}

impl<C> fmt::Debug for Pool<C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Pool")
            .field("idle_timeout", &self.idle_timeout)
            .field("max_idle", &self.max_idle)
            .field("targets", &self.idle.len())
            .field("stats", &self.stats)
            .finish()
    }
}

impl<C> Pool<C> {
    /// An empty pool: connections idle for `idle_timeout` or longer are expired, at most
    /// `max_idle` are kept per target (0: none is kept).
    pub fn new(idle_timeout: Duration, max_idle: usize) -> Self {
        Self {
            idle_timeout,
            max_idle,
            idle: HashMap::new(),
            stats: PoolStats::default(),
        }
    }

    /// The counters so far.
    pub fn stats(&self) -> PoolStats {
        self.stats
    }

    /// New limits (a reload): every idle connection is let go — it was opened under the old
    /// TLS and proxy settings — and returned for closing; the counters go on.
    pub fn reconfigure(&mut self, idle_timeout: Duration, max_idle: usize) -> Vec<C> {
        self.idle_timeout = idle_timeout;
        self.max_idle = max_idle;
        self.idle
            .drain()
            .flat_map(|(_, list)| list.into_iter().map(|i| i.conn))
            .collect()
    }

    /// Counts a connection the runtime opened (the pool never opens one itself).
    pub fn count_opened(&mut self) {
        self.stats.opened += 1;
    }

    /// Idle connections currently pooled for `target`.
    pub fn idle_count(&self, target: &Target) -> usize {
        self.idle.get(target).map_or(0, VecDeque::len)
    }

    /// How often the runtime should call [`Pool::expire`]: half the idle timeout, between one
    /// second and thirty (often enough that a stale connection does not linger much past its
    /// timeout, rarely enough that the sweep's peeks cost nothing).
    pub fn sweep_period(&self) -> Duration {
        (self.idle_timeout / 2).clamp(Duration::from_secs(1), Duration::from_secs(30))
    }

    /// The newest idle connection to `target` that is fresh at `now` and passes `is_open`, if any.
    ///
    /// Walks the target's list newest first: a dead connection is closed and the next tried; the
    /// first stale one ends the walk and is closed with everything older (the list is in the
    /// order connections became idle, so all of those are stale too). `is_open` is asked only
    /// about fresh connections.
    pub fn checkout(
        &mut self,
        target: &Target,
        now: Instant,
        mut is_open: impl FnMut(&C) -> bool,
    ) -> Checkout<C> {
        let mut closed = Vec::new();
        let Some(list) = self.idle.get_mut(target) else {
            return Checkout {
                found: None,
                closed,
            };
        };
        let mut found = None;
        while let Some(c) = list.pop_back() {
            if c.is_stale(now, self.idle_timeout) {
                self.stats.expired += 1 + list.len() as u64;
                closed.push(c.conn);
                closed.extend(list.drain(..).map(|c| c.conn));
                break;
            }
            if is_open(&c.conn) {
                found = Some(c);
                break;
            }
            self.stats.dead += 1;
            closed.push(c.conn);
        }
        if list.is_empty() {
            self.idle.remove(target);
        }
        self.stats.reused += u64::from(found.is_some());
        let found = found.map(|c| Pooled::new(c.conn, target.clone(), c.exchanges));
        Checkout { found, closed }
    }

    /// Files a connection whose last exchange ended cleanly as idle under `target` since `now`.
    ///
    /// Returns the connection the caller must close, if any: `conn` itself when it was opened
    /// for another target or the limit is 0 (not counted as an eviction), else the target's
    /// oldest idle connection when this one took the list over the limit.
    pub fn release(&mut self, target: &Target, conn: Pooled<C>, now: Instant) -> Option<C> {
        let (conn, own, exchanges) = conn.into_parts();
        if own != *target || self.max_idle == 0 {
            return Some(conn);
        }
        let list = self.idle.entry(own).or_default();
        list.push_back(Idle {
            conn,
            since: now,
            exchanges: exchanges.saturating_add(1),
        });
        if list.len() <= self.max_idle {
            return None;
        }
        self.stats.evicted += 1;
        list.pop_front().map(|c| c.conn)
    }

    /// Takes out every idle connection that is stale at `now` or fails `is_open`, and forgets
    /// targets left with nothing idle. Returns the connections the caller must close. `is_open`
    /// is asked only about fresh connections.
    pub fn expire(&mut self, now: Instant, mut is_open: impl FnMut(&C) -> bool) -> Vec<C> {
        let mut closed = Vec::new();
        let (mut expired, mut dead) = (0u64, 0u64);
        for list in self.idle.values_mut() {
            let mut kept = VecDeque::with_capacity(list.len());
            for c in list.drain(..) {
                if c.is_stale(now, self.idle_timeout) {
                    expired += 1;
                    closed.push(c.conn);
                } else if !is_open(&c.conn) {
                    dead += 1;
                    closed.push(c.conn);
                } else {
                    kept.push_back(c);
                }
            }
            *list = kept;
        }
        self.idle.retain(|_, list| !list.is_empty());
        self.stats.expired += expired;
        self.stats.dead += dead;
        closed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Connections are numbers; the fake liveness check says every one is open.
    type Conn = u32;

    const IDLE: Duration = Duration::from_secs(90);

    fn open(_: &Conn) -> bool {
        true
    }

    fn target(host: &str) -> Target {
        Target::new(true, host, 443)
    }

    /// A fresh connection `id` to `t` (as the runtime hands out after dialling).
    fn new_conn(id: Conn, t: &Target) -> Pooled<Conn> {
        Pooled::new(id, t.clone(), 0)
    }

    /// The fake clock: `secs` after a fixed origin.
    struct Clock(Instant);

    impl Clock {
        fn new() -> Self {
            Self(Instant::now())
        }

        fn at(&self, secs: u64) -> Instant {
            self.0 + Duration::from_secs(secs)
        }
    }

    /// The id checkout found at `now`, if any (all connections open).
    fn take(pool: &mut Pool<Conn>, t: &Target, now: Instant) -> Option<Conn> {
        pool.checkout(t, now, open).found.map(|p| p.conn)
    }

    #[test]
    fn checkout_misses_an_empty_pool_without_asking_liveness() {
        let mut pool = Pool::<Conn>::new(IDLE, 4);
        let c = pool.checkout(&target("a"), Clock::new().at(0), |_| {
            panic!("nothing to check")
        });
        assert!(c.found.is_none() && c.closed.is_empty());
        assert_eq!(pool.stats(), PoolStats::default());
    }

    #[test]
    fn checkout_hits_a_released_connection_and_counts_its_exchanges() {
        let clock = Clock::new();
        let mut pool = Pool::new(IDLE, 4);
        let t = target("a");
        assert_eq!(pool.release(&t, new_conn(7, &t), clock.at(0)), None);
        assert_eq!(pool.idle_count(&t), 1);
        let c = pool.checkout(&t, clock.at(1), open);
        let p = c.found.expect("hit");
        assert_eq!((p.conn, p.reused, p.exchanges()), (7, true, 1));
        assert_eq!(p.target(), &t);
        assert!(c.closed.is_empty());
        assert_eq!(pool.idle_count(&t), 0);
        assert_eq!(
            pool.idle.len(),
            0,
            "a target with nothing idle is forgotten"
        );
        assert_eq!(pool.stats().reused, 1);
        // Back again after its second exchange.
        assert_eq!(pool.release(&t, p, clock.at(2)), None);
        let p = pool.checkout(&t, clock.at(3), open).found.expect("hit");
        assert_eq!(p.exchanges(), 2);
    }

    #[test]
    fn checkout_hands_out_the_newest_first() {
        let clock = Clock::new();
        let mut pool = Pool::new(IDLE, 4);
        let t = target("a");
        for (id, at) in [(1, 0), (2, 1), (3, 2)] {
            pool.release(&t, new_conn(id, &t), clock.at(at));
        }
        let order: Vec<_> = (0..4).map(|_| take(&mut pool, &t, clock.at(3))).collect();
        assert_eq!(order, [Some(3), Some(2), Some(1), None]);
    }

    #[test]
    fn targets_differing_in_scheme_host_or_port_never_share() {
        let clock = Clock::new();
        let mut pool = Pool::new(IDLE, 4);
        let t = Target::new(true, "a", 443);
        let others = [
            Target::new(false, "a", 443),
            Target::new(true, "b", 443),
            Target::new(true, "a", 8443),
        ];
        pool.release(&t, new_conn(1, &t), clock.at(0));
        for other in &others {
            assert_eq!(take(&mut pool, other, clock.at(1)), None, "{other}");
        }
        assert_eq!(pool.idle_count(&t), 1, "a miss elsewhere leaves it alone");
        for (id, other) in (2..).zip(&others) {
            pool.release(other, new_conn(id, other), clock.at(1));
        }
        assert_eq!(take(&mut pool, &t, clock.at(2)), Some(1));
        for (id, other) in (2..).zip(&others) {
            assert_eq!(take(&mut pool, other, clock.at(2)), Some(id), "{other}");
        }
    }

    #[test]
    fn release_under_another_target_hands_the_connection_back() {
        let clock = Clock::new();
        let mut pool = Pool::new(IDLE, 4);
        let (t, other) = (target("a"), target("b"));
        assert_eq!(pool.release(&other, new_conn(1, &t), clock.at(0)), Some(1));
        assert_eq!((pool.idle_count(&t), pool.idle_count(&other)), (0, 0));
        assert_eq!(pool.stats(), PoolStats::default());
    }

    #[test]
    fn release_keeps_up_to_the_limit_then_closes_the_oldest() {
        let clock = Clock::new();
        let mut pool = Pool::new(IDLE, 2);
        let t = target("a");
        assert_eq!(pool.release(&t, new_conn(1, &t), clock.at(0)), None);
        assert_eq!(pool.release(&t, new_conn(2, &t), clock.at(1)), None);
        assert_eq!(pool.release(&t, new_conn(3, &t), clock.at(2)), Some(1));
        assert_eq!(pool.idle_count(&t), 2);
        assert_eq!(pool.stats().evicted, 1);
        // The limit is per target: another target's list is not affected.
        let u = target("b");
        assert_eq!(pool.release(&u, new_conn(4, &u), clock.at(3)), None);
        assert_eq!((pool.idle_count(&t), pool.idle_count(&u)), (2, 1));
        assert_eq!(take(&mut pool, &t, clock.at(4)), Some(3));
        assert_eq!(take(&mut pool, &t, clock.at(4)), Some(2));
    }

    #[test]
    fn a_limit_of_zero_keeps_nothing_and_evicts_nothing() {
        let mut pool = Pool::new(IDLE, 0);
        let t = target("a");
        assert_eq!(
            pool.release(&t, new_conn(1, &t), Clock::new().at(0)),
            Some(1)
        );
        assert_eq!(pool.idle_count(&t), 0);
        assert_eq!(pool.stats().evicted, 0);
    }

    #[test]
    fn checkout_expires_exactly_at_the_idle_timeout() {
        let clock = Clock::new();
        let mut pool = Pool::new(IDLE, 4);
        let t = target("a");
        pool.release(&t, new_conn(1, &t), clock.at(0));
        let just_before = clock.at(0) + IDLE - Duration::from_nanos(1);
        let p = pool
            .checkout(&t, just_before, open)
            .found
            .expect("still fresh");
        pool.release(&t, p, clock.at(10));
        let c = pool.checkout(&t, clock.at(10) + IDLE, open);
        assert!(c.found.is_none(), "handed out at exactly idle_timeout");
        assert_eq!(c.closed, [1]);
        assert_eq!(pool.stats().expired, 1);
        assert_eq!(pool.idle_count(&t), 0);
    }

    #[test]
    fn a_stale_newest_connection_expires_every_older_one_without_peeking() {
        let clock = Clock::new();
        let mut pool = Pool::new(IDLE, 4);
        let t = target("a");
        for (id, at) in [(1, 0), (2, 5), (3, 10)] {
            pool.release(&t, new_conn(id, &t), clock.at(at));
        }
        let mut c = pool.checkout(&t, clock.at(10) + IDLE, |_| {
            panic!("a stale one was peeked")
        });
        assert!(c.found.is_none());
        c.closed.sort_unstable();
        assert_eq!(c.closed, [1, 2, 3]);
        assert_eq!(pool.stats().expired, 3);
        assert_eq!(pool.idle_count(&t), 0);
    }

    #[test]
    fn checkout_closes_dead_connections_and_hands_out_the_next_open_one() {
        let clock = Clock::new();
        let mut pool = Pool::new(IDLE, 4);
        let t = target("a");
        for (id, at) in [(1, 0), (2, 1), (3, 2)] {
            pool.release(&t, new_conn(id, &t), clock.at(at));
        }
        let mut peeked = Vec::new();
        let c = pool.checkout(&t, clock.at(3), |&id| {
            peeked.push(id);
            id == 1
        });
        assert_eq!(c.found.map(|p| p.conn), Some(1));
        assert_eq!(c.closed, [3, 2]);
        assert_eq!(peeked, [3, 2, 1]);
        assert_eq!((pool.stats().dead, pool.stats().reused), (2, 1));
    }

    #[test]
    fn idle_timeout_zero_expires_at_once() {
        let clock = Clock::new();
        let mut pool = Pool::new(Duration::ZERO, 4);
        let t = target("a");
        pool.release(&t, new_conn(1, &t), clock.at(0));
        assert_eq!(pool.idle_count(&t), 1);
        assert_eq!(take(&mut pool, &t, clock.at(0)), None);
        assert_eq!(pool.stats().expired, 1);
    }

    #[test]
    fn expire_closes_stale_and_dead_keeps_the_rest_and_forgets_empty_targets() {
        let clock = Clock::new();
        let mut pool = Pool::new(IDLE, 4);
        let (t, u) = (target("a"), target("b"));
        pool.release(&t, new_conn(1, &t), clock.at(0)); // stale at 90
        pool.release(&t, new_conn(2, &t), clock.at(1)); // fresh until 91
        pool.release(&t, new_conn(3, &t), clock.at(2)); // dead
        pool.release(&u, new_conn(4, &u), clock.at(0)); // stale at 90
        let mut peeked = Vec::new();
        let mut closed = pool.expire(clock.at(0) + IDLE, |&id| {
            peeked.push(id);
            id != 3
        });
        closed.sort_unstable();
        assert_eq!(closed, [1, 3, 4]);
        peeked.sort_unstable();
        assert_eq!(peeked, [2, 3], "stale connections are not peeked");
        assert_eq!((pool.stats().expired, pool.stats().dead), (2, 1));
        assert_eq!((pool.idle_count(&t), pool.idle_count(&u)), (1, 0));
        assert_eq!(
            pool.idle.len(),
            1,
            "a target with nothing idle is forgotten"
        );
        // Exactly at its own boundary the survivor goes too.
        assert_eq!(pool.expire(clock.at(1) + IDLE, open), [2]);
        assert!(pool.idle.is_empty());
    }

    #[test]
    fn expire_before_the_timeout_keeps_open_connections() {
        let clock = Clock::new();
        let mut pool = Pool::new(IDLE, 4);
        let t = target("a");
        pool.release(&t, new_conn(1, &t), clock.at(0));
        let before = clock.at(0) + IDLE - Duration::from_nanos(1);
        assert!(pool.expire(before, open).is_empty());
        assert_eq!(pool.idle_count(&t), 1);
        assert_eq!(pool.stats(), PoolStats::default());
    }

    #[test]
    fn sweep_period_is_half_the_timeout_within_one_and_thirty_seconds() {
        let period = |secs| Pool::<Conn>::new(Duration::from_secs(secs), 1).sweep_period();
        assert_eq!(period(90), Duration::from_secs(30));
        assert_eq!(period(20), Duration::from_secs(10));
        assert_eq!(period(1), Duration::from_secs(1));
        assert_eq!(period(0), Duration::from_secs(1));
    }
}
