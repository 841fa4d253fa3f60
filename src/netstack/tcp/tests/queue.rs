//! A bottleneck with a tail-drop queue, in virtual time: whatever the controller's overshoot
//! costs, the sender re-sends only what the path dropped.
//!
//! A paced sender that overfills a full queue loses every second or third segment of the
//! overshoot, not one contiguous stretch: the receiver then holds dozens of out-of-order
//! stretches at once, and every segment it stores must be SACKed, or the sender takes it for
//! lost and sends it again.

use std::collections::HashSet;
use std::time::Duration;

use super::sim::{LinkConfig, Side, Sim, Trace, Transfer};
use crate::netstack::tcp::{Algorithm, Config, Stats};

const MS: Duration = Duration::from_millis(1);

/// 20 MB/s, 15 ms one way (RTT 30 ms, BDP 600 kB), a tail-drop queue of `queue` bytes.
fn bottleneck(queue: usize) -> LinkConfig {
    LinkConfig {
        delay: 15 * MS,
        rate: Some(20_000_000),
        queue,
        ..LinkConfig::default()
    }
}

/// An 8 MiB download from A to B with `alg` over [`bottleneck`]`(queue)` both ways.
fn download(alg: Algorithm, queue: usize, seed: u64) -> (Sim, Stats) {
    let cfg = Config {
        congestion: alg,
        ..Config::default()
    };
    let mut sim = Sim::ours(&cfg, bottleneck(queue), bottleneck(queue), seed);
    let mut t = Transfer::new(8 << 20);
    let done = sim.run(Duration::from_secs(60), |s| {
        t.step(s);
        t.finished && s.b.is_closed()
    });
    assert!(done, "{alg:?} over a {queue}-byte queue did not finish");
    let stats = sim.a.conn().expect("ours").stats();
    (sim, stats)
}

/// A's data segments sent again after a copy of the same stretch had reached B: whatever the
/// reason, the sender spent the bottleneck on data the receiver already had.
fn resent_after_arrival(trace: &Trace) -> usize {
    let mut arrived = HashSet::new();
    let mut resent = 0;
    for e in trace
        .entries
        .iter()
        .filter(|e| e.from == Side::A && e.len > 0)
    {
        if e.arrived {
            arrived.insert((e.offset, e.len));
        } else if arrived.contains(&(e.offset, e.len)) {
            resent += 1;
        }
    }
    resent
}

/// Data segments A offered to the link that the link dropped.
fn dropped(trace: &Trace) -> usize {
    trace.data_sent(Side::A).filter(|e| e.dropped).count()
}

/// Two BDPs of queue: BBR's Startup overshoots into it (kernel BBRv1 does too) and loses a few
/// percent of a round. Every retransmission must answer a drop: a segment that reached the
/// receiver is never needed again (the link neither reorders nor duplicates), so the count of
/// re-sent delivered segments must be zero, and retransmissions can be at most the drops. The
/// same holds for both controllers over half a BDP and one BDP of queue.
#[test]
fn bbr_over_a_two_bdp_queue_resends_only_what_the_queue_dropped() {
    let cases = [
        (Algorithm::Bbr, 1_200_000),
        (Algorithm::Bbr, 600_000),
        (Algorithm::Bbr, 300_000),
        (Algorithm::Cubic, 600_000),
        (Algorithm::Cubic, 300_000),
    ];
    for (alg, queue) in cases {
        let (sim, stats) = download(alg, queue, 6);
        let wasted = resent_after_arrival(&sim.trace);
        let drops = dropped(&sim.trace);
        assert_eq!(
            wasted, 0,
            "{alg:?}, {queue}-byte queue: {wasted} segments sent again after reaching B \
             ({drops} dropped): {stats:?}"
        );
        assert!(
            stats.retransmits <= drops as u64,
            "{alg:?}, {queue}-byte queue: {} retransmissions for {drops} drops: {stats:?}",
            stats.retransmits
        );
    }
}

/// Retransmissions the link dropped: data segments A sent again and lost again.
fn dropped_retransmissions(trace: &Trace) -> usize {
    let mut seen = HashSet::new();
    trace
        .data_sent(Side::A)
        .filter(|e| !seen.insert((e.offset, e.len)) && e.dropped)
        .count()
}

/// A repair sent into the queue that dropped the original is lost again unless the sender
/// sends no faster than the queue drains: in the first round of a recovery, as many bytes as
/// the ACKs report delivered (packet conservation, RFC 5681's and Linux BBRv1's rule), not
/// those plus every segment just marked lost at Startup's 2.89 x pacing rate. Then each
/// retransmission takes the place of a departed segment in the queue and gets through.
/// CUBIC (PRR) loses none of its repairs here; BBR may lose a few (at most a tenth) when
/// Startup, still running after that round, refills the queue before its exit rule fires.
#[test]
fn bbr_retransmissions_do_not_overflow_the_queue_that_dropped_the_originals() {
    for queue in [300_000, 600_000, 1_200_000] {
        let (sim, stats) = download(Algorithm::Bbr, queue, 6);
        let lost_again = dropped_retransmissions(&sim.trace);
        assert!(
            lost_again * 10 <= stats.retransmits as usize,
            "{queue}-byte queue: {lost_again} of {} retransmissions dropped: {stats:?}",
            stats.retransmits
        );
    }
}
