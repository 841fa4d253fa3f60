//! Which broker serves a request, which brokers are healthy, and whether a failed attempt is
//! tried again: a sans-IO core with time passed in.
//!
//! ## Health
//!
//! A broker is in rotation when both hold:
//!
//! * its WireGuard session is up: the runtime reports the age of the last handshake
//!   ([`Balancer::set_session`]); none, or one older than [`SESSION_MAX_AGE`] (WireGuard's
//!   `REJECT_AFTER_TIME`: the session can no longer carry data), is down;
//! * its last health check passed. [`Balancer::poll_check`] hands out a broker whose check is due
//!   (every `health_interval`); the runtime sends `GET /healthcheck` through the tunnel and
//!   reports [`Balancer::check_done`]. A check that has not answered within `health_timeout`
//!   fails at [`Balancer::tick`]. With the defaults (1 s, 1 s) a broker that dies is out of
//!   rotation within 2 s: the next check starts at most 1 s later and fails at most 1 s after.
//!
//! A failure seen by a real request ([`Outcome::ConnectFailed`], [`Outcome::DiedBeforeResponse`],
//! [`Outcome::DiedAfterResponse`]) makes the broker's check due at once: under load a dead
//! broker is out about `health_timeout` after its first failed request. It does not take the
//! broker out by itself: a stray reset (a port still in `TIME-WAIT` at the broker) would
//! otherwise take a tenant's only broker away until the next check.
//!
//! A broker starts out of rotation: it joins when its first check passes.
//!
//! ## Balance
//!
//! Least outstanding requests among the tenant's healthy brokers; ties go round-robin from the
//! broker after the last one picked, so that light, sequential load still spreads.
//!
//! ## Retries ([`Retry`])
//!
//! * the connection to the broker could not be opened (nothing was sent): try another healthy
//!   broker of the tenant, each broker at most once;
//! * the broker died before any byte of its response, the method is idempotent and the request
//!   can be sent again (its body is empty or still held whole): once, on another broker;
//! * a connection kept alive from an earlier request ([`super::pool`]) broke before any byte of
//!   the response: under the same rule (idempotent, replayable, once), but the same broker may
//!   serve it again, on a fresh connection — the connection, not the broker, may be what
//!   failed. A pooled connection found closed *before* any byte was written is no attempt at
//!   all: the runtime takes another or opens one;
//! * anything else is not retried: the broker may have acted on it.

use std::time::{Duration, Instant};

use crate::config::gateway::{GatewayConfig, TenantBroker};

/// What [`Balancer::reconfigure`] did, for the runtime to follow (addresses, counters, logs).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Reconfigured {
    /// Each configured tenant's id, in file order.
    pub tenants: Vec<TenantId>,
    /// Each configured broker's id, in [`GatewayConfig::brokers`] order.
    pub brokers: Vec<BrokerId>,
    /// Brokers that got a slot (new ones, or a reused free slot).
    pub added: Vec<BrokerId>,
    /// Brokers no longer configured (now draining or free).
    pub removed: Vec<BrokerId>,
}

/// WireGuard's `REJECT_AFTER_TIME`: a session older than this carries no data.
pub const SESSION_MAX_AGE: Duration = Duration::from_secs(180);

/// A tenant, by its position in the configuration.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct TenantId(pub usize);

/// A broker, by its position in [`Balancer`]'s list (all tenants' brokers, in file order).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BrokerId(pub usize);

/// How an attempt on a broker ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The broker answered (whatever the status: a broker's 403 or 502 is an answer).
    Answered,
    /// The connection could not be opened: nothing of the request reached the broker.
    ConnectFailed,
    /// The connection broke, or timed out, before the first byte of the response.
    DiedBeforeResponse,
    /// The connection broke after the response had started.
    DiedAfterResponse,
    /// A kept-alive connection taken from the pool ([`super::pool`]) broke, or its broker
    /// left rotation, after the request's bytes were written and before the first byte of
    /// the response: the broker may have acted on it, or may only have closed the idle
    /// connection as the request crossed its close.
    ReusedDiedBeforeResponse,
}

/// Why a broker is out of rotation (for `/metrics`, logs and the 503 body).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Down {
    /// No check has passed yet.
    Unchecked,
    /// No WireGuard session, or one too old to carry data.
    NoSession,
    /// The last health check failed or timed out.
    CheckFailed,
}

impl Down {
    /// A short name.
    pub fn as_str(self) -> &'static str {
        match self {
            Down::Unchecked => "not checked yet",
            Down::NoSession => "no WireGuard session",
            Down::CheckFailed => "health check failed",
        }
    }
}

/// A change of a broker's rotation state, worth a log line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    Up(BrokerId),
    Down(BrokerId, Down),
}

/// Where a broker's slot stands after reloads ([`Balancer::reconfigure`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Slot {
    /// Configured: in its tenant's list, checked, picked when healthy.
    Live,
    /// Removed by a reload with requests still in flight: no new request, no check; the slot
    /// is freed when the last one finishes.
    Draining,
    /// Nothing: the next added broker may take it.
    Free,
}

/// One broker's state.
#[derive(Debug, Clone)]
struct Broker {
    tenant: TenantId,
    /// Its identity across reloads: public key and tunnel address.
    key: [u8; 32],
    address: std::net::IpAddr,
    slot: Slot,
    outstanding: u32,
    session_up: bool,
    /// `None`: healthy by its checks; otherwise why not.
    check_down: Option<Down>,
    /// When the check in flight started.
    checking: Option<Instant>,
    next_check: Instant,
}

impl Broker {
    fn fresh(tenant: TenantId, b: &TenantBroker, now: Instant) -> Self {
        Broker {
            tenant,
            key: *b.public_key.as_bytes(),
            address: b.address,
            slot: Slot::Live,
            outstanding: 0,
            session_up: false,
            check_down: Some(Down::Unchecked),
            checking: None,
            next_check: now,
        }
    }

    /// A draining broker whose last request has finished frees its slot. A health check in
    /// flight does not hold it (its result no longer matters, and a dead broker's checks run
    /// back to back until they time out): it is forgotten, so its late result is ignored.
    fn settle(&mut self) {
        if self.slot == Slot::Draining && self.outstanding == 0 {
            self.slot = Slot::Free;
            self.checking = None;
        }
    }

    fn down(&self) -> Option<Down> {
        if !self.session_up {
            return Some(Down::NoSession);
        }
        self.check_down
    }
}

/// What a broker looks like from outside ([`Balancer::status`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BrokerStatus {
    pub tenant: TenantId,
    pub outstanding: u32,
    /// `None` in rotation.
    pub down: Option<Down>,
}

/// The health and balance state of every broker of every tenant.
#[derive(Debug, Clone)]
pub struct Balancer {
    /// Every tenant name ever configured, by [`TenantId`]: a name keeps its id across reloads
    /// (a removed tenant's id is never given to another name, so a request in flight for it
    /// can never be retried on another tenant's broker).
    names: Vec<String>,
    /// Each tenant's brokers, in file order; empty for a tenant no longer configured.
    tenants: Vec<Vec<BrokerId>>,
    /// Whether the tenant is configured now.
    live: Vec<bool>,
    /// Per tenant, the broker after which the next tie-break starts.
    cursor: Vec<usize>,
    brokers: Vec<Broker>,
    interval: Duration,
    timeout: Duration,
    events: std::collections::VecDeque<Event>,
}

impl Balancer {
    /// Every broker of `config`, out of rotation, its first check due at `now`.
    pub fn new(config: &GatewayConfig, now: Instant) -> Self {
        let mut b = Self {
            names: Vec::new(),
            tenants: Vec::new(),
            live: Vec::new(),
            cursor: Vec::new(),
            brokers: Vec::new(),
            interval: config.gateway.health_interval,
            timeout: config.gateway.health_timeout,
            events: std::collections::VecDeque::new(),
        };
        b.reconfigure(config, now);
        b
    }

    /// Applies a reload's tenants and brokers (SIGHUP), without disturbing what it keeps:
    ///
    /// * a tenant is its name: a kept name keeps its [`TenantId`]; a new name gets a new id
    ///   (or its old one, when it was configured before); a removed one has no brokers and
    ///   [`Balancer::tenant`] no longer finds it;
    /// * a broker is its tenant, public key and tunnel address: a kept one keeps its
    ///   [`BrokerId`], health and outstanding requests; a new one (a moved or readdressed one
    ///   included) starts out of rotation with its check due at `now`, in a free slot if there
    ///   is one; a removed one drains: no new request and no check, the requests in flight
    ///   finish, then its slot is free.
    ///
    /// The health timers (`health_interval`, `health_timeout`) stay those of [`Balancer::new`]:
    /// the runtime's checks use them too, and they change only at a restart.
    pub fn reconfigure(&mut self, config: &GatewayConfig, now: Instant) -> Reconfigured {
        let mut out = Reconfigured::default();
        let mut kept = vec![false; self.brokers.len()];
        let mut lists = Vec::with_capacity(config.tenant.len());
        // Kept brokers first, so that new ones cannot take a slot a kept one still holds.
        for tenant in &config.tenant {
            let t = match self.names.iter().position(|n| *n == tenant.name) {
                Some(t) => TenantId(t),
                None => {
                    self.names.push(tenant.name.clone());
                    self.tenants.push(Vec::new());
                    self.live.push(false);
                    self.cursor.push(0);
                    TenantId(self.names.len() - 1)
                }
            };
            let ids: Vec<Option<BrokerId>> = tenant
                .broker
                .iter()
                .map(|b| {
                    let i = self.brokers.iter().position(|x| {
                        x.slot == Slot::Live
                            && x.tenant == t
                            && x.key == *b.public_key.as_bytes()
                            && x.address == b.address
                    })?;
                    kept[i] = true;
                    Some(BrokerId(i))
                })
                .collect();
            out.tenants.push(t);
            lists.push((t, ids));
        }
        // Removed: drain.
        for (i, b) in self.brokers.iter_mut().enumerate() {
            if b.slot == Slot::Live && !kept[i] {
                b.slot = Slot::Draining;
                b.settle();
                out.removed.push(BrokerId(i));
            }
        }
        for live in &mut self.live {
            *live = false;
        }
        for ((t, ids), tenant) in lists.into_iter().zip(&config.tenant) {
            let mut list = Vec::with_capacity(ids.len());
            for (id, b) in ids.into_iter().zip(&tenant.broker) {
                let id = match id {
                    Some(id) => id,
                    None => {
                        let fresh = Broker::fresh(t, b, now);
                        let id = match self.brokers.iter().position(|x| x.slot == Slot::Free) {
                            Some(i) => {
                                self.brokers[i] = fresh;
                                BrokerId(i)
                            }
                            None => {
                                self.brokers.push(fresh);
                                BrokerId(self.brokers.len() - 1)
                            }
                        };
                        out.added.push(id);
                        id
                    }
                };
                list.push(id);
                out.brokers.push(id);
            }
            if let Some(c) = self.cursor.get_mut(t.0) {
                *c = 0;
            }
            self.tenants[t.0] = list;
            self.live[t.0] = true;
        }
        for (t, live) in self.live.iter().enumerate() {
            if !live {
                self.tenants[t].clear();
            }
        }
        out
    }

    /// The configured tenant named `name`.
    pub fn tenant(&self, name: &str) -> Option<TenantId> {
        let t = self.names.iter().position(|n| n == name)?;
        self.live[t].then_some(TenantId(t))
    }

    /// Whether `id` was removed by a reload and still has requests in flight.
    pub fn is_draining(&self, id: BrokerId) -> bool {
        self.brokers
            .get(id.0)
            .is_some_and(|b| b.slot == Slot::Draining)
    }

    /// Whether `id` is a configured broker (not draining, not a free slot).
    pub fn is_live(&self, id: BrokerId) -> bool {
        self.brokers.get(id.0).is_some_and(|b| b.slot == Slot::Live)
    }

    /// How many broker slots there are (ids are `0..len`; see [`Balancer::is_live`]).
    pub fn len(&self) -> usize {
        self.brokers.len()
    }

    /// True without brokers.
    pub fn is_empty(&self) -> bool {
        self.brokers.is_empty()
    }

    /// The brokers of `tenant`.
    pub fn brokers_of(&self, tenant: TenantId) -> &[BrokerId] {
        self.tenants.get(tenant.0).map_or(&[], Vec::as_slice)
    }

    /// A broker's state; `None` for an id that is not one.
    pub fn status(&self, id: BrokerId) -> Option<BrokerStatus> {
        self.brokers.get(id.0).map(|b| BrokerStatus {
            tenant: b.tenant,
            outstanding: b.outstanding,
            down: b.down(),
        })
    }

    /// Whether `id` is in rotation.
    pub fn healthy(&self, id: BrokerId) -> bool {
        self.brokers
            .get(id.0)
            .is_some_and(|b| b.slot == Slot::Live && b.down().is_none())
    }

    /// The next rotation change, if any.
    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// Applies `change` to broker `id`, noting an event when it enters or leaves rotation.
    fn update(&mut self, id: BrokerId, change: impl FnOnce(&mut Broker)) {
        let Some(b) = self.brokers.get_mut(id.0) else {
            return;
        };
        let before = b.down();
        change(b);
        let after = b.down();
        match (before, after) {
            (Some(_), None) => self.events.push_back(Event::Up(id)),
            (None, Some(why)) => self.events.push_back(Event::Down(id, why)),
            _ => {}
        }
    }

    /// The tunnel's view of broker `id`: the age of its last handshake, `None` without one.
    pub fn set_session(&mut self, id: BrokerId, handshake_age: Option<Duration>) {
        let up = handshake_age.is_some_and(|a| a < SESSION_MAX_AGE);
        let interval = self.interval;
        self.update(id, |b| {
            if up && !b.session_up {
                // A broker that just (re)dialed in, after a gateway restart say: a check that
                // started without a session cannot pass and would only time out. Check again
                // at once (the last check started at `next_check - interval`, not later than
                // now) rather than after that timeout and the next interval.
                match b.checking.take() {
                    Some(started) => b.next_check = started,
                    None => {
                        b.next_check = b.next_check.checked_sub(interval).unwrap_or(b.next_check)
                    }
                }
            }
            b.session_up = up;
        });
    }

    /// Picks the healthy broker of `tenant` with the fewest outstanding requests, skipping
    /// `exclude` (brokers already tried), and counts the request as outstanding on it until
    /// [`Balancer::finish`]. `None`: no healthy broker is left.
    pub fn pick(&mut self, tenant: TenantId, exclude: &[BrokerId]) -> Option<BrokerId> {
        let ids = self.tenants.get(tenant.0)?;
        let n = ids.len();
        let start = self.cursor.get(tenant.0).copied().unwrap_or(0);
        let mut best: Option<(u32, usize)> = None;
        for k in 0..n {
            let i = (start + k) % n;
            let id = ids[i];
            let b = &self.brokers[id.0];
            if b.slot != Slot::Live || b.down().is_some() || exclude.contains(&id) {
                continue;
            }
            if best.is_none_or(|(o, _)| b.outstanding < o) {
                best = Some((b.outstanding, i));
            }
        }
        let (_, i) = best?;
        let id = ids[i];
        if let Some(c) = self.cursor.get_mut(tenant.0) {
            *c = (i + 1) % n;
        }
        self.brokers[id.0].outstanding += 1;
        Some(id)
    }

    /// Ends a request [`Balancer::pick`] gave to `id` at `now`. A failure does not take the
    /// broker out by itself (one stray reset must not take a tenant's only broker away): it
    /// makes the broker's health check due at once, and the check decides.
    pub fn finish(&mut self, id: BrokerId, outcome: Outcome, now: Instant) {
        if let Some(b) = self.brokers.get_mut(id.0) {
            b.outstanding = b.outstanding.saturating_sub(1);
            if outcome != Outcome::Answered && b.checking.is_none() {
                b.next_check = b.next_check.min(now);
            }
            b.settle();
        }
    }

    /// A broker whose health check is due at `now`, marked as checking; call until `None`.
    pub fn poll_check(&mut self, now: Instant) -> Option<BrokerId> {
        let i = self
            .brokers
            .iter()
            .position(|b| b.slot == Slot::Live && b.checking.is_none() && b.next_check <= now)?;
        let b = &mut self.brokers[i];
        b.checking = Some(now);
        b.next_check = now + self.interval;
        Some(BrokerId(i))
    }

    /// The result of the check [`Balancer::poll_check`] handed out for `id`. A result after
    /// the check timed out is ignored (the next check decides).
    pub fn check_done(&mut self, id: BrokerId, passed: bool) {
        if self.brokers.get(id.0).is_none_or(|b| b.checking.is_none()) {
            return;
        }
        if let Some(b) = self.brokers.get_mut(id.0)
            && b.slot != Slot::Live
        {
            b.checking = None;
            b.settle();
            return;
        }
        self.update(id, |b| {
            b.checking = None;
            b.check_down = if passed {
                None
            } else {
                Some(Down::CheckFailed)
            };
        });
    }

    /// Fails the checks that have taken longer than the timeout.
    pub fn tick(&mut self, now: Instant) {
        for i in 0..self.brokers.len() {
            let late = self.brokers[i]
                .checking
                .is_some_and(|t| now.saturating_duration_since(t) >= self.timeout);
            if late {
                self.update(BrokerId(i), |b| {
                    b.checking = None;
                    b.check_down = Some(Down::CheckFailed);
                    b.settle();
                });
            }
        }
    }

    /// When [`Balancer::tick`] or [`Balancer::poll_check`] next has something to do.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.brokers
            .iter()
            .filter(|b| b.slot != Slot::Free)
            .map(|b| match b.checking {
                Some(t) => t + self.timeout,
                None => b.next_check,
            })
            .min()
    }
}

/// What the front door does after an attempt failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Next {
    /// Pick another broker (excluding [`Retry::tried`]) and send the request again.
    TryAnother,
    /// Answer the client with the failure.
    GiveUp,
}

/// The retry rules for one request (see the module).
#[derive(Debug, Clone)]
pub struct Retry {
    idempotent: bool,
    tried: Vec<BrokerId>,
    retried_after_death: bool,
    /// Attempts whose connection could not be opened.
    refused: u8,
}

impl Retry {
    /// A request with `method`. `replayable`: its body is empty or still held whole, so it can
    /// be sent again.
    pub fn new(method: &str, replayable: bool) -> Self {
        Self {
            idempotent: replayable && is_idempotent(method),
            tried: Vec::new(),
            retried_after_death: false,
            refused: 0,
        }
    }

    /// The brokers tried so far, for [`Balancer::pick`]'s `exclude`.
    pub fn tried(&self) -> &[BrokerId] {
        &self.tried
    }

    /// Notes an attempt on `broker`.
    pub fn attempt(&mut self, broker: BrokerId) {
        self.tried.push(broker);
    }

    /// When every broker was tried: whether one may be tried again. Only when every failure so
    /// far was a refused connection (nothing reached a broker), and at most twice: a refusal
    /// can be a stray reset (the broker still holds the port in `TIME-WAIT`).
    pub fn may_try_again(&self) -> bool {
        (1..=2).contains(&self.refused) && !self.retried_after_death
    }

    /// Whether to try again after an attempt ended with `outcome`.
    pub fn after(&mut self, outcome: Outcome) -> Next {
        match outcome {
            Outcome::ConnectFailed => {
                self.refused = self.refused.saturating_add(1);
                Next::TryAnother
            }
            Outcome::DiedBeforeResponse if self.idempotent && !self.retried_after_death => {
                self.retried_after_death = true;
                Next::TryAnother
            }
            // The same broker may serve the retry (on a fresh connection).
            Outcome::ReusedDiedBeforeResponse if self.idempotent && !self.retried_after_death => {
                self.retried_after_death = true;
                self.tried.pop();
                Next::TryAnother
            }
            _ => Next::GiveUp,
        }
    }
}

/// RFC 9110 9.2.2: the methods whose repetition has the effect of one request.
pub fn is_idempotent(method: &str) -> bool {
    matches!(
        method,
        "GET" | "HEAD" | "OPTIONS" | "TRACE" | "PUT" | "DELETE"
    )
}

#[cfg(test)]
mod tests;
