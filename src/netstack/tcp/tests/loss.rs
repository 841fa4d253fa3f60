//! Loss recovery at high random loss and with a receiver that ACKs like Linux (issue 19's
//! 15 ms × 3 % case): what our sender must not do that the kernel does not.

use std::time::Duration;

use super::sim::{LinkConfig, Side, Sim, Transfer, pattern};
use crate::netstack::tcp::{Algorithm, Config};

const MS: Duration = Duration::from_millis(1);

/// Our sender with CUBIC: these scenarios are about a loss-based window (its cut, its undo)
/// and compare with Linux's CUBIC; BBR, the default, does not cut for loss.
fn cubic() -> Config {
    Config {
        congestion: Algorithm::Cubic,
        ..Config::default()
    }
}

/// 15 ms one way, 100 Mbit/s, a queue of 1 MiB, `loss` per packet.
fn path(loss: f64) -> LinkConfig {
    LinkConfig {
        delay: 15 * MS,
        rate: Some(12_500_000),
        queue: 1 << 20,
        loss,
        ..LinkConfig::default()
    }
}

/// Our sender (A) and a receiver (B) that holds a lone segment's ACK for 40 ms, as Linux does
/// (`TCP_DELACK_MIN`; it ACKs every second full segment at once, like ours).
fn to_linux_like_receiver(ab: LinkConfig, ba: LinkConfig, seed: u64) -> Sim {
    let receiver = Config {
        ack_delay: Some(40 * MS),
        ..Config::default()
    };
    Sim::ours_with(&cubic(), &receiver, ab, ba, seed)
}

/// Three segments from A; B ACKs the first two at once, but that ACK is lost, and B holds the
/// third one's ACK 40 ms, longer than the 30 ms RTT: the probe timeout (2 SRTT = 60 ms) fires
/// first and the third segment goes again. With `lose_third` its first transmission is lost
/// too (the probe repairs it). One second later A sends two more segments. Returns A's stats,
/// and its window before and after.
fn probe_crossing_a_delayed_ack(lose_third: bool) -> (crate::netstack::tcp::Stats, u64, u64) {
    let mut first_ack = true;
    let acks = LinkConfig {
        drop: Some(Box::new(move |o| {
            let drop = first_ack && !o.syn;
            first_ack &= o.syn;
            drop
        })),
        ..path(0.0)
    };
    let data = LinkConfig {
        drop: Some(Box::new(move |o| {
            lose_third && !o.again && o.offset == 2 * 1268
        })),
        ..path(0.0)
    };
    let mut sim = to_linux_like_receiver(data, acks, 1);
    assert!(sim.run(Duration::from_secs(1), |s| s.a.is_established()));
    let c = sim.a.conn().expect("ours");
    assert_eq!(c.mss(), 1268);
    let cwnd = c.cwnd();
    let data: Vec<u8> = (0..5 * 1268).map(pattern).collect();
    // The receiving application reads only at the end: its reads would announce the window
    // and ACK the third segment at once.
    for part in [&data[..3 * 1268], &data[3 * 1268..]] {
        assert_eq!(sim.a.send(part), part.len());
        sim.flush();
        assert!(!sim.run(Duration::from_secs(1), |_| false));
    }
    let mut buf = vec![0; data.len() + 1];
    assert_eq!(sim.b.recv(sim.now, &mut buf), Some(data.len()));
    assert_eq!(&buf[..data.len()], &data[..]);
    assert_eq!(sim.link_stats(Side::B).scripted, 1);
    assert_eq!(sim.link_stats(Side::A).scripted, u64::from(lose_third));
    let c = sim.a.conn().expect("ours");
    (c.stats(), cwnd, c.cwnd())
}

#[test]
fn a_probe_that_crosses_a_delayed_ack_does_not_cut_the_window() {
    // The held ACK (everything, the probe included) arrives before the probe's D-SACK:
    // nothing was lost, and the window must stay (RFC 8985 7.4.2; Linux decides only on an
    // ACK beyond the probe, or a D-SACK for it). Linux's 40 ms delayed ACK sits between one
    // and two RTTs only on paths of 20-40 ms RTT: why issue 19's 15 ms case alone was slow.
    let (s, before, after) = probe_crossing_a_delayed_ack(false);
    assert_eq!(s.tail_loss_probes, 1, "the scenario: one probe");
    assert_eq!(s.dsacks, 1, "the probe was a duplicate");
    assert_eq!((s.tlp_recoveries, after), (0, before), "no loss, no cut");
    // When the probe did repair a loss, the next ACK beyond it cuts the window once.
    let (s, before, after) = probe_crossing_a_delayed_ack(true);
    assert_eq!((s.tail_loss_probes, s.dsacks), (1, 0));
    assert_eq!(s.tlp_recoveries, 1);
    assert_eq!(after, before * 7 / 10);
}

#[test]
fn a_timeout_that_a_stalled_ack_path_made_spurious_is_undone() {
    // The ACK path stops for 400 ms (a relay or host busy elsewhere; issue 19's relay ran up
    // to 146 ms late), longer than the RTO (SRTT + 200 ms): the probe and then the RTO fire
    // although nothing was lost. The held ACKs then arrive, echoing the timestamps of the
    // original transmissions (Eifel, RFC 3522): the timeout was spurious, and the window and
    // threshold from before it come back (RFC 4015; Linux's undo). Without that, CUBIC
    // restarts from one segment below a cut threshold.
    let acks = LinkConfig {
        hold: Some((300 * MS, 700 * MS)),
        ..path(0.0)
    };
    let mut sim = Sim::ours(&cubic(), path(0.0), acks, 1);
    sim.tracing = false;
    let mut t = super::sim::Transfer::new(16 << 20);
    let (mut before, mut after) = (None, None);
    let mut last = 0;
    assert!(sim.run(Duration::from_secs(60), |s| {
        t.step(s);
        let c = s.a.conn().expect("ours");
        if c.stats().rtos == 1 && before.is_none() {
            before = Some(last);
        }
        if s.elapsed() >= 715 * MS && after.is_none() {
            after = Some(c.cwnd());
        }
        last = c.cwnd();
        t.read == t.total
    }));
    let s = sim.a.conn().expect("ours").stats();
    assert_eq!(s.rtos, 1, "the scenario: one timeout");
    let (Some(before), Some(after)) = (before, after) else {
        panic!("no timeout");
    };
    assert!(
        after >= before,
        "window {before} before the timeout, {after} once the held ACKs arrived"
    );
}

/// Goodput (bytes per second, from the first data segment until B has read everything) of
/// `total` bytes from A to a Linux-like receiver over 15 ms one way, 100 Mbit/s and `loss`
/// per packet in both directions; prints the counters.
fn goodput_to_linux_like(loss: f64, total: u64, seed: u64) -> f64 {
    let link = || path(loss);
    let mut sim = to_linux_like_receiver(link(), link(), seed);
    sim.tracing = false;
    let mut t = Transfer::new(total);
    let mut start = None;
    assert!(sim.run(Duration::from_secs(600), |s| {
        t.step(s);
        if start.is_none() && t.written > 0 {
            start = Some(s.elapsed());
        }
        t.read == t.total
    }));
    let (Some(start), Some(done)) = (start, t.done_at) else {
        panic!("no transfer");
    };
    let rate = total as f64 / (done - start).as_secs_f64();
    let s = sim.a.conn().expect("ours").stats();
    eprintln!(
        "{:.0} % loss, seed {seed}: {:?}, {:.0} kB/s; retransmits {}, probes {}, RTOs {} \
         (spurious {}), recoveries {}, ACKs {}",
        loss * 100.0,
        done - start,
        rate / 1e3,
        s.retransmits,
        s.tail_loss_probes,
        s.rtos,
        s.spurious_rtos,
        s.recoveries,
        sim.link_stats(Side::B).offered
    );
    rate
}

#[test]
fn cubic_at_three_percent_loss_both_ways_reaches_the_mathis_rate() {
    // The yardstick for a loss-based controller at random loss p: MSS / RTT · 1.22 / √p
    // (Mathis et al.; Reno, which CUBIC's Reno-friendly region matches at this BDP). At
    // 1268-byte segments, 30 ms and 3 %: 298 kB/s, 10 MiB in 35 s. The kernel's CUBIC took
    // 40 s for 9.4-9.9 MB over issue 19's relay at 15 ms × 3 % (both ways), ours 5.9 MB; here
    // ours runs at 1.1-1.3 times the yardstick (seeds 1-4: 0.9 allows for the seed).
    let mathis = 1268.0 / 0.030 * 1.22 / 0.03f64.sqrt();
    for seed in 1..=4 {
        let rate = goodput_to_linux_like(0.03, 4 << 20, seed);
        assert!(
            rate >= 0.9 * mathis,
            "seed {seed}: {rate:.0} B/s, {:.2} of the Mathis rate",
            rate / mathis
        );
    }
}

/// Ten segments, the third lost once; the ACKs dropped are B's `ack_drops` (counted from 1
/// after the SYN-ACK). Returns A's stats and window once all is quiet.
fn fast_recovery_with_ack_drops(ack_drops: &'static [u32]) -> (crate::netstack::tcp::Stats, u64) {
    let mut count = 0u32;
    let acks = LinkConfig {
        drop: Some(Box::new(move |o| {
            count += u32::from(!o.syn);
            !o.syn && ack_drops.contains(&count)
        })),
        ..path(0.0)
    };
    let data = LinkConfig {
        drop: Some(Box::new(|o| !o.again && o.data_index == 2)),
        ..path(0.0)
    };
    let mut sim = Sim::ours(&cubic(), data, acks, 1);
    let mut t = Transfer {
        total: 10 * 1268,
        keep_open: true,
        ..Transfer::default()
    };
    assert!(!sim.run(Duration::from_secs(2), |s| {
        t.step(s);
        false
    }));
    assert_eq!(t.read, t.total);
    let c = sim.a.conn().expect("ours");
    (c.stats(), c.cwnd())
}

#[test]
fn a_timeout_whose_retransmission_comes_back_as_a_duplicate_is_undone() {
    // The third segment is lost and repaired by a fast retransmission; B's ACKs for it (the
    // ACK and the window update that follows when the application reads; B's 9th and 10th
    // packets) are lost, so A's RTO fires and sends the segment a third time. B answers with
    // a D-SACK for it: every retransmission since the timeout was a duplicate, nothing was
    // lost, and A must end where it would have without the lost ACKs (the fast recovery's
    // window), not at one segment.
    let (clean, cwnd) = fast_recovery_with_ack_drops(&[]);
    assert_eq!((clean.recoveries, clean.rtos), (1, 0));
    let (s, after) = fast_recovery_with_ack_drops(&[9, 10]);
    assert_eq!((s.recoveries, s.rtos, s.dsacks), (1, 1, 1), "the scenario");
    assert_eq!((s.spurious_rtos, after), (1, cwnd), "undone");
}
