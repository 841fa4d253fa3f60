//! Idle keep-alive connections from the gateway to its brokers, kept for the next request: a
//! sans-IO core with time passed in, generic over the connection it holds.
//!
//! Without it every front-door request paid a TCP handshake inside the tunnel (one round trip
//! and a SYN's worth of state on both netstacks), and the broker's ports in `TIME-WAIT` reset
//! some of the SYNs; last measured, gateway + broker served 5.2k req/s where the broker alone
//! served 37k.
//!
//! ## Rules
//!
//! * **Bounded**: at most `per_broker` idle connections for one broker and `total` for all;
//!   a connection that would exceed either is refused by [`Pool::put`] and the caller closes it.
//! * **Idle timeout**: a connection idle longer than `idle_timeout` is not handed out again;
//!   [`Pool::expire`] returns the expired ones for the caller to close. Keep it below the
//!   brokers' `[inbound] idle_timeout` (60 s by default), so that the gateway, not the broker,
//!   is the one that closes an idle connection: a broker's close that crosses a request on the
//!   wire fails that request's attempt.
//! * **Most recently used first** ([`Pool::take`]): under light load the same few connections
//!   stay warm, and the rest age out.
//! * **Per broker**: a connection is only ever handed out for the broker it was opened to (the
//!   tunnel address it is connected to *is* the broker), and [`Pool::remove_broker`] empties a
//!   broker's list when it leaves rotation, is removed by a reload or drains.
//!
//! Whether a connection handed out is still usable (not closed by the broker while idle) is the
//! runtime's to check before writing to it; see `runtime::gateway`'s retry rules for what
//! happens when it turns out closed.

use std::time::{Duration, Instant};

use super::balance::BrokerId;

/// The pool's bounds and idle timeout (`[gateway] pool_*`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PoolLimits {
    /// Most idle connections kept for one broker; 0 disables the pool.
    pub per_broker: usize,
    /// Most idle connections kept for all brokers together.
    pub total: usize,
    /// Idle connections older than this are closed.
    pub idle_timeout: Duration,
}

/// Idle connections by broker, most recently used last.
#[derive(Debug)]
pub struct Pool<C> {
    limits: PoolLimits,
    /// By [`BrokerId`] slot: `(connection, idle since)`.
    idle: Vec<Vec<(C, Instant)>>,
    total: usize,
}

impl<C> Pool<C> {
    pub fn new(limits: PoolLimits) -> Self {
        Self {
            limits,
            idle: Vec::new(),
            total: 0,
        }
    }

    /// The most recently returned idle connection to `broker` that has not expired at `now`;
    /// expired ones on the way are handed to `expired` (the caller closes them).
    pub fn take(&mut self, broker: BrokerId, now: Instant, expired: &mut Vec<C>) -> Option<C> {
        let list = self.idle.get_mut(broker.0)?;
        // Most recent last: once one has expired, every older one has too.
        let (c, since) = list.pop()?;
        self.total -= 1;
        if now.saturating_duration_since(since) < self.limits.idle_timeout {
            return Some(c);
        }
        expired.push(c);
        self.total -= list.len();
        expired.extend(list.drain(..).map(|(c, _)| c));
        None
    }

    /// Keeps `conn` to `broker`, idle since `now`; gives it back when a bound is reached.
    pub fn put(&mut self, broker: BrokerId, conn: C, now: Instant) -> Result<(), C> {
        if self.total >= self.limits.total {
            return Err(conn);
        }
        if self.idle.len() <= broker.0 {
            self.idle.resize_with(broker.0 + 1, Vec::new);
        }
        let list = &mut self.idle[broker.0];
        if list.len() >= self.limits.per_broker {
            return Err(conn);
        }
        list.push((conn, now));
        self.total += 1;
        Ok(())
    }

    /// Removes the connections idle since before `now - idle_timeout`, and those `keep`
    /// refuses (closed by the broker meanwhile), into `out`.
    pub fn expire(
        &mut self,
        now: Instant,
        keep: &mut dyn FnMut(BrokerId, &C) -> bool,
        out: &mut Vec<C>,
    ) {
        let timeout = self.limits.idle_timeout;
        for (i, list) in self.idle.iter_mut().enumerate() {
            let before = list.len();
            let mut k = 0;
            while k < list.len() {
                let (c, since) = &list[k];
                if now.saturating_duration_since(*since) >= timeout || !keep(BrokerId(i), c) {
                    out.push(list.remove(k).0);
                } else {
                    k += 1;
                }
            }
            self.total -= before - list.len();
        }
    }

    /// Every idle connection to `broker`, into `out` (it left rotation, was removed or drains).
    pub fn remove_broker(&mut self, broker: BrokerId, out: &mut Vec<C>) {
        if let Some(list) = self.idle.get_mut(broker.0) {
            self.total -= list.len();
            out.extend(list.drain(..).map(|(c, _)| c));
        }
    }

    /// Idle connections to `broker`.
    pub fn idle(&self, broker: BrokerId) -> usize {
        self.idle.get(broker.0).map_or(0, Vec::len)
    }

    /// Idle connections to all brokers.
    pub fn total(&self) -> usize {
        self.total
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEC: Duration = Duration::from_secs(1);

    fn pool(per_broker: usize, total: usize) -> Pool<u32> {
        Pool::new(PoolLimits {
            per_broker,
            total,
            idle_timeout: 10 * SEC,
        })
    }

    #[test]
    fn a_returned_connection_is_handed_out_again_for_its_broker_only() {
        let t0 = Instant::now();
        let mut p = pool(4, 16);
        let mut expired = Vec::new();
        assert_eq!(p.take(BrokerId(0), t0, &mut expired), None);
        p.put(BrokerId(0), 7, t0).expect("room");
        assert_eq!(p.take(BrokerId(1), t0, &mut expired), None);
        assert_eq!(p.take(BrokerId(0), t0 + SEC, &mut expired), Some(7));
        assert_eq!(p.take(BrokerId(0), t0 + SEC, &mut expired), None);
        assert!(expired.is_empty());
        assert_eq!(p.total(), 0);
    }

    #[test]
    fn the_most_recently_used_connection_goes_first() {
        let t0 = Instant::now();
        let mut p = pool(4, 16);
        let mut expired = Vec::new();
        p.put(BrokerId(0), 1, t0).expect("room");
        p.put(BrokerId(0), 2, t0 + SEC).expect("room");
        assert_eq!(p.take(BrokerId(0), t0 + SEC, &mut expired), Some(2));
        assert_eq!(p.take(BrokerId(0), t0 + SEC, &mut expired), Some(1));
    }

    #[test]
    fn both_bounds_refuse_a_connection_and_give_it_back() {
        let t0 = Instant::now();
        let mut p = pool(2, 3);
        assert_eq!(p.put(BrokerId(0), 1, t0), Ok(()));
        assert_eq!(p.put(BrokerId(0), 2, t0), Ok(()));
        assert_eq!(p.put(BrokerId(0), 3, t0), Err(3), "per broker");
        assert_eq!(p.put(BrokerId(1), 4, t0), Ok(()));
        assert_eq!(p.put(BrokerId(2), 5, t0), Err(5), "in total");
        assert_eq!(
            (p.idle(BrokerId(0)), p.idle(BrokerId(1)), p.total()),
            (2, 1, 3)
        );
        assert_eq!(pool(0, 16).put(BrokerId(0), 1, t0), Err(1), "0 disables");
    }

    #[test]
    fn an_expired_connection_is_not_handed_out_but_returned_to_be_closed() {
        let t0 = Instant::now();
        let mut p = pool(4, 16);
        let mut expired = Vec::new();
        p.put(BrokerId(0), 1, t0).expect("room");
        p.put(BrokerId(0), 2, t0 + 5 * SEC).expect("room");
        assert_eq!(p.take(BrokerId(0), t0 + 16 * SEC, &mut expired), None);
        expired.sort_unstable();
        assert_eq!(expired, vec![1, 2]);
        assert_eq!(p.total(), 0);
    }

    #[test]
    fn expire_removes_old_connections_and_those_the_caller_finds_closed() {
        let t0 = Instant::now();
        let mut p = pool(4, 16);
        p.put(BrokerId(0), 1, t0).expect("room");
        p.put(BrokerId(0), 2, t0 + 5 * SEC).expect("room");
        p.put(BrokerId(1), 3, t0 + 5 * SEC).expect("room");
        let mut out = Vec::new();
        p.expire(t0 + 11 * SEC, &mut |_, &c| c != 3, &mut out);
        out.sort_unstable();
        assert_eq!(out, vec![1, 3]);
        assert_eq!(
            (p.idle(BrokerId(0)), p.idle(BrokerId(1)), p.total()),
            (1, 0, 1)
        );
    }

    #[test]
    fn removing_a_broker_returns_all_its_connections_and_frees_room() {
        let t0 = Instant::now();
        let mut p = pool(4, 2);
        p.put(BrokerId(0), 1, t0).expect("room");
        p.put(BrokerId(0), 2, t0).expect("room");
        let mut out = Vec::new();
        p.remove_broker(BrokerId(0), &mut out);
        assert_eq!(out, vec![1, 2]);
        assert_eq!(p.total(), 0);
        assert_eq!(p.put(BrokerId(1), 3, t0), Ok(()));
    }
}
