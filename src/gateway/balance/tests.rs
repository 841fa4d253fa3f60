//! The balancer on a fake clock: `Instant`s built from one epoch plus offsets.

use std::time::{Duration, Instant};

use super::*;
use crate::keys::PrivateKey;

const MS: Duration = Duration::from_millis(1);
const SEC: Duration = Duration::from_secs(1);

// Tenant 0 ("a") with two brokers, tenant 1 ("b") with one: brokers 0, 1 and 2 (keys
// `[1;32]`, `[2;32]`, `[3;32]`).
use super::super::tests::config;

const A: TenantId = TenantId(0);
const B: TenantId = TenantId(1);

/// Every broker with a session and a passing first check at `now`.
fn all_up(now: Instant) -> Balancer {
    let mut b = Balancer::new(&config(), now);
    for i in 0..b.len() {
        b.set_session(BrokerId(i), Some(SEC));
    }
    while let Some(id) = b.poll_check(now) {
        b.check_done(id, true);
    }
    b
}

#[test]
fn a_broker_joins_rotation_with_a_session_and_a_passing_check() {
    let t0 = Instant::now();
    let mut b = Balancer::new(&config(), t0);
    assert_eq!(b.pick(A, &[]), None, "nothing is checked yet");
    assert_eq!(
        b.status(BrokerId(0)).and_then(|s| s.down),
        Some(Down::NoSession)
    );
    b.set_session(BrokerId(0), Some(5 * SEC));
    assert_eq!(
        b.status(BrokerId(0)).and_then(|s| s.down),
        Some(Down::Unchecked)
    );
    let due: Vec<BrokerId> = std::iter::from_fn(|| b.poll_check(t0)).collect();
    assert_eq!(due, [BrokerId(0), BrokerId(1), BrokerId(2)]);
    b.check_done(BrokerId(0), true);
    b.check_done(BrokerId(1), true); // no session: still out
    assert_eq!(b.poll_event(), Some(Event::Up(BrokerId(0))));
    assert_eq!(b.poll_event(), None);
    assert_eq!(b.pick(A, &[]), Some(BrokerId(0)));
    assert_eq!(
        b.pick(A, &[]),
        Some(BrokerId(0)),
        "the only one in rotation"
    );
}

#[test]
fn a_stale_session_takes_a_broker_out() {
    let t0 = Instant::now();
    let mut b = all_up(t0);
    b.set_session(BrokerId(0), Some(SESSION_MAX_AGE));
    assert_eq!(
        b.status(BrokerId(0)).and_then(|s| s.down),
        Some(Down::NoSession)
    );
    b.set_session(BrokerId(1), None);
    assert_eq!(b.pick(A, &[]), None);
    b.set_session(BrokerId(1), Some(SESSION_MAX_AGE - MS));
    assert_eq!(b.pick(A, &[]), Some(BrokerId(1)));
}

#[test]
fn least_outstanding_wins_and_ties_rotate() {
    let t0 = Instant::now();
    let mut b = all_up(t0);
    // Sequential requests alternate.
    let mut seq = Vec::new();
    for _ in 0..4 {
        let id = b.pick(A, &[]).expect("healthy");
        b.finish(id, Outcome::Answered, t0);
        seq.push(id.0);
    }
    assert_eq!(seq, [0, 1, 0, 1]);
    // Two held on broker 0: the next two go to broker 1, then they tie.
    assert_eq!(b.pick(A, &[BrokerId(1)]), Some(BrokerId(0)));
    assert_eq!(b.pick(A, &[BrokerId(1)]), Some(BrokerId(0)));
    assert_eq!(b.pick(A, &[]), Some(BrokerId(1)));
    assert_eq!(b.pick(A, &[]), Some(BrokerId(1)));
    let outstanding = |b: &Balancer, i: usize| b.status(BrokerId(i)).map(|s| s.outstanding);
    assert_eq!((outstanding(&b, 0), outstanding(&b, 1)), (Some(2), Some(2)));
    b.finish(BrokerId(0), Outcome::Answered, t0);
    assert_eq!(b.pick(A, &[]), Some(BrokerId(0)), "the one with fewer");
}

#[test]
fn a_tenant_is_only_ever_given_its_own_brokers() {
    let t0 = Instant::now();
    let mut b = all_up(t0);
    for _ in 0..10 {
        let id = b.pick(B, &[]).expect("b has a broker");
        assert_eq!(id, BrokerId(2));
    }
    b.set_session(BrokerId(2), None);
    assert_eq!(
        b.pick(B, &[]),
        None,
        "A's healthy brokers are never B's fallback"
    );
    for _ in 0..10 {
        let id = b.pick(A, &[]).expect("a has brokers");
        assert_ne!(id, BrokerId(2));
    }
    assert_eq!(b.pick(TenantId(7), &[]), None);
}

#[test]
fn exclude_skips_brokers_already_tried() {
    let t0 = Instant::now();
    let mut b = all_up(t0);
    let first = b.pick(A, &[]).expect("healthy");
    let second = b.pick(A, &[first]).expect("another");
    assert_ne!(first, second);
    assert_eq!(b.pick(A, &[first, second]), None);
}

/// Drives one broker whose process stops answering at `death` (checks before it pass at once,
/// later ones never answer) and returns when it left rotation.
fn time_out_of_rotation(death: Duration) -> Duration {
    let t0 = Instant::now();
    let mut b = all_up(t0);
    let mut now = t0;
    while now < t0 + 10 * SEC {
        now += 10 * MS;
        b.tick(now);
        while let Some(id) = b.poll_check(now) {
            if id != BrokerId(0) || now < t0 + death {
                b.check_done(id, true);
            }
        }
        if !b.healthy(BrokerId(0)) {
            return now - t0;
        }
    }
    panic!("broker 0 never left rotation");
}

#[test]
fn a_dead_broker_is_out_of_rotation_within_two_seconds() {
    for death_ms in [0u64, 10, 250, 500, 990, 1000, 1010, 3333] {
        let death = Duration::from_millis(death_ms);
        let out = time_out_of_rotation(death);
        assert!(out > death, "out at {out:?}, before it died at {death:?}");
        assert!(
            out - death <= 2 * SEC,
            "died at {death:?}, out of rotation only at {out:?}"
        );
    }
}

#[test]
fn deadlines_say_when_to_tick() {
    let t0 = Instant::now();
    let mut b = all_up(t0);
    assert_eq!(b.next_deadline(), Some(t0 + SEC), "the next checks");
    let id = b.poll_check(t0 + SEC).expect("due");
    assert_eq!(b.next_deadline(), Some(t0 + SEC), "the others are due too");
    while b.poll_check(t0 + SEC).is_some() {}
    assert_eq!(b.next_deadline(), Some(t0 + 2 * SEC), "the checks' timeout");
    b.check_done(id, true);
    b.tick(t0 + 2 * SEC);
    assert!(b.healthy(id));
    assert!(!b.healthy(BrokerId(1)), "its check timed out");
}

#[test]
fn a_late_answer_does_not_bring_back_a_timed_out_broker() {
    let t0 = Instant::now();
    let mut b = all_up(t0);
    let id = b.poll_check(t0 + SEC).expect("due");
    b.tick(t0 + 2 * SEC);
    assert!(!b.healthy(id));
    b.check_done(id, true);
    assert!(!b.healthy(id), "the answer came after the timeout");
    let again = std::iter::from_fn(|| b.poll_check(t0 + 2 * SEC)).find(|&i| i == id);
    assert_eq!(again, Some(id));
    b.check_done(id, true);
    assert!(b.healthy(id));
}

#[test]
fn a_failed_request_asks_for_a_check_at_once_and_the_check_decides() {
    let t0 = Instant::now();
    let mut b = all_up(t0);
    while b.poll_event().is_some() {}
    let id = b.pick(B, &[]).expect("healthy");
    // One refused connection (a stray reset) does not take a tenant's only broker away.
    b.finish(id, Outcome::ConnectFailed, t0 + 10 * MS);
    assert_eq!(b.poll_event(), None);
    assert_eq!(b.status(id).map(|s| s.outstanding), Some(0));
    assert_eq!(b.pick(B, &[]), Some(id), "still in rotation");
    b.finish(id, Outcome::Answered, t0 + 20 * MS);
    // Its check is due now, not a second after the last one.
    assert_eq!(b.next_deadline(), Some(t0 + 10 * MS));
    let due: Vec<BrokerId> = std::iter::from_fn(|| b.poll_check(t0 + 10 * MS)).collect();
    assert_eq!(due, [id]);
    b.check_done(id, false);
    assert_eq!(b.poll_event(), Some(Event::Down(id, Down::CheckFailed)));
    assert_eq!(b.pick(B, &[]), None);
}

#[test]
fn retries_follow_the_rules() {
    // Connect failures: another broker each time.
    let mut r = Retry::new("POST", false);
    assert_eq!(r.after(Outcome::ConnectFailed), Next::TryAnother);
    assert_eq!(r.after(Outcome::ConnectFailed), Next::TryAnother);
    // With no untried broker left, a broker whose connection was refused may be tried again,
    // twice at most (nothing of the request reached it).
    assert!(r.may_try_again());
    assert_eq!(r.after(Outcome::ConnectFailed), Next::TryAnother);
    assert!(!r.may_try_again(), "three refused connections");
    // A POST that may have reached the broker: never.
    assert_eq!(r.after(Outcome::DiedBeforeResponse), Next::GiveUp);
    // An idempotent, replayable request whose broker died before answering: once.
    let mut r = Retry::new("GET", true);
    assert!(!r.may_try_again(), "nothing failed yet");
    assert_eq!(r.after(Outcome::DiedBeforeResponse), Next::TryAnother);
    assert!(!r.may_try_again(), "the broker may have seen it");
    assert_eq!(r.after(Outcome::DiedBeforeResponse), Next::GiveUp);
    assert_eq!(r.after(Outcome::ConnectFailed), Next::TryAnother);
    // A response that had started: never.
    assert_eq!(
        Retry::new("GET", true).after(Outcome::DiedAfterResponse),
        Next::GiveUp
    );
    // An idempotent method whose body was streamed away: never.
    assert_eq!(
        Retry::new("PUT", false).after(Outcome::DiedBeforeResponse),
        Next::GiveUp
    );
    assert_eq!(
        Retry::new("Get", true).after(Outcome::DiedBeforeResponse),
        Next::GiveUp
    );
}

/// Issue 16, the pool: a kept-alive connection that breaks after the request's bytes were
/// written and before any response byte may have carried the request to the broker (or may
/// only have been closed by it while idle: the gateway cannot tell once the bytes are out).
#[test]
fn a_reused_connection_breaking_before_the_response_retries_only_idempotent_requests() {
    // A POST whose bytes were sent on a reused connection: never again, on no broker.
    let mut r = Retry::new("POST", true);
    r.attempt(BrokerId(0));
    assert_eq!(r.after(Outcome::ReusedDiedBeforeResponse), Next::GiveUp);
    // A GET: once, and the same broker may serve it (on a fresh connection): its connection,
    // not the broker, may be what failed.
    let mut r = Retry::new("GET", true);
    r.attempt(BrokerId(0));
    assert_eq!(r.after(Outcome::ReusedDiedBeforeResponse), Next::TryAnother);
    assert!(r.tried().is_empty(), "broker 0 may be picked again");
    r.attempt(BrokerId(0));
    assert_eq!(
        r.after(Outcome::ReusedDiedBeforeResponse),
        Next::GiveUp,
        "once"
    );
    // The once is shared with a broker's death.
    let mut r = Retry::new("GET", true);
    r.attempt(BrokerId(0));
    assert_eq!(r.after(Outcome::DiedBeforeResponse), Next::TryAnother);
    r.attempt(BrokerId(1));
    assert_eq!(r.after(Outcome::ReusedDiedBeforeResponse), Next::GiveUp);
    // A body streamed away: never.
    let mut r = Retry::new("PUT", false);
    r.attempt(BrokerId(0));
    assert_eq!(r.after(Outcome::ReusedDiedBeforeResponse), Next::GiveUp);
}

/// Issue 18: after a gateway restart the first checks start before any broker has dialed in
/// (no session: they cannot pass and only time out). A session that comes up makes the broker's
/// check due at once instead of after that timeout and the next interval.
#[test]
fn a_session_coming_up_makes_the_check_due_at_once() {
    let t0 = Instant::now();
    let mut b = Balancer::new(&config(), t0);
    let due: Vec<BrokerId> = std::iter::from_fn(|| b.poll_check(t0)).collect();
    assert_eq!(due.len(), 3, "checks in flight, no session yet");
    let t1 = t0 + 300 * MS;
    b.set_session(BrokerId(1), Some(MS));
    assert_eq!(b.poll_check(t1), Some(BrokerId(1)), "checked again at once");
    assert_eq!(b.poll_check(t1), None, "the others still wait");
    b.check_done(BrokerId(1), true);
    assert!(b.healthy(BrokerId(1)));
    // A session that stays up changes nothing.
    b.set_session(BrokerId(1), Some(SEC));
    assert_eq!(b.poll_check(t1 + 10 * MS), None);
}

/// `config()` edited: tenant "a" keeps only its second broker, tenant "b" is gone, tenant "c"
/// with broker `[4;32]` at 10.77.3.2 is new.
fn reloaded() -> GatewayConfig {
    let mut c = config();
    let mut extra = config();
    c.tenant[0].broker.remove(0);
    c.tenant.remove(1);
    let mut t = extra.tenant.remove(1);
    t.name = "c".into();
    t.broker[0].public_key = PrivateKey::from_bytes([4; 32]).public_key();
    t.broker[0].address = "10.77.3.2".parse().expect("address");
    c.tenant.push(t);
    c
}

#[test]
fn a_reload_drains_removed_brokers_and_adds_new_ones_out_of_rotation() {
    let t0 = Instant::now();
    let mut b = all_up(t0);
    let held = b.pick(A, &[]).expect("healthy");
    assert_eq!(held, BrokerId(0));
    let r = b.reconfigure(&reloaded(), t0);
    // Kept brokers keep their ids and state; the new one gets a fresh id.
    assert_eq!(r.tenants, [A, TenantId(2)]);
    let new = r.added[0];
    assert_eq!(r.brokers, [BrokerId(1), new]);
    assert_eq!(r.removed, [BrokerId(0), BrokerId(2)]);
    assert_eq!(new, BrokerId(2), "b's idle broker's slot is free at once");
    assert_eq!(b.tenant("a"), Some(A));
    assert_eq!(b.tenant("b"), None, "a removed tenant is not found");
    assert_eq!(b.tenant("c"), Some(TenantId(2)));
    assert!(b.healthy(BrokerId(1)), "a kept broker stays in rotation");
    // The removed broker takes no new request; the one in flight finishes on it.
    for _ in 0..4 {
        let id = b.pick(A, &[]).expect("the kept one");
        assert_eq!(id, BrokerId(1));
        b.finish(id, Outcome::Answered, t0);
    }
    assert_eq!(b.pick(B, &[]), None, "a removed tenant has no broker");
    assert_eq!(b.status(BrokerId(0)).map(|s| s.outstanding), Some(1));
    b.finish(held, Outcome::Answered, t0);
    // The new broker joins when its check passes, and only for its own tenant.
    let c = TenantId(2);
    assert_eq!(b.pick(c, &[]), None, "not checked yet");
    assert!(!b.healthy(new), "a reused slot starts out of rotation");
    b.set_session(new, Some(SEC));
    let due: Vec<BrokerId> = std::iter::from_fn(|| b.poll_check(t0 + SEC)).collect();
    assert!(due.contains(&new), "{due:?}");
    assert!(!due.contains(&BrokerId(0)), "removed: not checked");
    b.check_done(new, true);
    assert_eq!(b.pick(c, &[]), Some(new));
    assert_eq!(b.len(), 3, "the drained slot is free, nothing grew");
    assert_eq!(
        b.pick(A, &[BrokerId(1)]),
        None,
        "never another tenant's broker"
    );
}

/// A removed broker drains its requests, not its health check: a dead broker's checks run
/// until they time out, back to back, and holding its slot for them refused almost every
/// reload that gives its key or address to another broker (seen with SIGHUP end to end).
#[test]
fn a_removed_broker_with_only_a_check_in_flight_is_freed_at_once() {
    let t0 = Instant::now();
    let mut b = all_up(t0);
    let due: Vec<BrokerId> = std::iter::from_fn(|| b.poll_check(t0 + SEC)).collect();
    assert!(due.contains(&BrokerId(2)), "{due:?}");
    let mut c = config();
    c.tenant.remove(1);
    let r = b.reconfigure(&c, t0 + SEC);
    assert_eq!(r.removed, [BrokerId(2)]);
    assert!(!b.is_draining(BrokerId(2)), "no request in flight: free");
    // Its slot taken by another broker; the removed one's late result is not the newcomer's.
    let mut newcomer = config();
    newcomer.tenant[1].broker[0].public_key = PrivateKey::from_bytes([9; 32]).public_key();
    let r = b.reconfigure(&newcomer, t0 + SEC);
    assert_eq!(r.added, [BrokerId(2)]);
    b.check_done(BrokerId(2), true);
    assert!(!b.healthy(BrokerId(2)), "joins on its own check only");
}

#[test]
fn a_broker_moved_to_another_tenant_is_a_new_broker() {
    let t0 = Instant::now();
    let mut b = all_up(t0);
    let mut c = config();
    let moved = c.tenant[0].broker.remove(1);
    c.tenant[1].broker.push(moved);
    let r = b.reconfigure(&c, t0);
    assert_eq!(r.removed, [BrokerId(1)]);
    let moved = r.added[0];
    assert_eq!(r.brokers, [BrokerId(0), BrokerId(2), moved]);
    assert!(
        !b.healthy(moved),
        "checked again before it serves its new tenant"
    );
    for _ in 0..4 {
        assert_eq!(b.pick(A, &[]), Some(BrokerId(0)));
        assert_eq!(b.pick(B, &[]), Some(BrokerId(2)));
    }
}

#[test]
fn a_drained_slot_is_reused_and_a_tenant_name_keeps_its_id() {
    let t0 = Instant::now();
    let mut b = all_up(t0);
    let c_broker = b.reconfigure(&reloaded(), t0).added[0];
    // Back to the first configuration: "b" gets its old id back, its broker a drained slot.
    let r = b.reconfigure(&config(), t0);
    assert_eq!(r.tenants, [A, B]);
    assert_eq!(b.tenant("c"), None);
    assert_eq!(b.len(), 3, "slots reused, not grown: {:?}", r.brokers);
    assert_eq!(r.removed, [c_broker]);
}
