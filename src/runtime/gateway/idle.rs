//! The gateway's idle keep-alive connections to its brokers: the executor's side of
//! [`crate::gateway::pool`] (which connections are kept, for how long) — whether one is still
//! usable, closing them, the `idle` gauges.

use super::*;

impl Gw {
    /// An idle kept-alive connection to broker `id` that is still open, for a request; those
    /// found expired or closed by the broker on the way are closed.
    pub(super) fn take_idle(self: &Rc<Self>, id: BrokerId) -> Option<TunnelConn> {
        let now = Instant::now();
        let mut closing = Vec::new();
        let found = loop {
            let Some(c) = self.idle.borrow_mut().take(id, now, &mut closing) else {
                break None;
            };
            if self.reusable(c) {
                break Some(c);
            }
            self.counters(id)
                .idle_closed_by_broker
                .fetch_add(1, Ordering::Relaxed);
            closing.push(c);
        };
        self.close_idle(closing);
        self.publish_idle(id);
        let c = found?;
        self.counters(id)
            .connections_reused
            .fetch_add(1, Ordering::Relaxed);
        Some(conn::stream(self.clone(), c))
    }

    /// Keeps `conn`, whose exchange with broker `id` ended cleanly, for the next request; closes
    /// it when the broker is out of rotation (or removed) or the pool is full.
    pub(super) fn put_idle(&self, id: BrokerId, conn: TunnelConn) {
        if !self.bal.borrow().healthy(id) || !self.reusable(conn.id()) {
            drop(conn);
            return;
        }
        let c = conn.into_id();
        let refused = self.idle.borrow_mut().put(id, c, Instant::now()).err();
        self.close_idle(refused.into_iter().collect());
        self.publish_idle(id);
    }

    /// Whether an idle connection is still open both ways with nothing unread: the broker has
    /// not closed it (no FIN, no reset) nor sent anything out of turn.
    fn reusable(&self, c: ConnId) -> bool {
        let set = self.set.borrow();
        set.state(c) == State::Established && !set.can_recv(c)
    }

    /// Closes idle connections (FIN: the broker's server ends them in order).
    fn close_idle(&self, conns: Vec<ConnId>) {
        if conns.is_empty() {
            return;
        }
        {
            let mut set = self.set.borrow_mut();
            for c in conns {
                let _ = set.close(c);
            }
        }
        self.kick();
    }

    /// Closes broker `id`'s idle connections (out of rotation, removed, draining).
    pub(super) fn drop_idle(&self, id: BrokerId) {
        let mut out = Vec::new();
        self.idle.borrow_mut().remove_broker(id, &mut out);
        self.close_idle(out);
        self.publish_idle(id);
    }

    /// Closes idle connections past the idle timeout or closed by their broker meanwhile.
    pub(super) fn expire_idle(&self, now: Instant) {
        if self.idle.borrow().total() == 0 {
            return;
        }
        let mut out = Vec::new();
        let mut closed_by_broker = Vec::new();
        self.idle.borrow_mut().expire(
            now,
            &mut |id, &c| {
                let keep = self.reusable(c);
                if !keep {
                    closed_by_broker.push(id);
                }
                keep
            },
            &mut out,
        );
        if out.is_empty() {
            return;
        }
        self.close_idle(out);
        for id in closed_by_broker {
            self.counters(id)
                .idle_closed_by_broker
                .fetch_add(1, Ordering::Relaxed);
        }
        for i in 0..self.brokers.borrow().len() {
            self.publish_idle(BrokerId(i));
        }
    }

    /// Broker `id`'s `idle` gauge.
    fn publish_idle(&self, id: BrokerId) {
        let n = self.idle.borrow().idle(id) as u64;
        self.counters(id).idle.store(n, Ordering::Relaxed);
    }
}
