//! The BBR-like controller and the pacer, in virtual time: what CUBIC cannot do on the same
//! links (keep the bottleneck busy through random loss, send a window without a burst, keep the
//! bottleneck queue short).

use std::time::Duration;

use super::sim::{LinkConfig, Side, Sim, Transfer};
use crate::netstack::tcp::{Algorithm, Config};

const MS: Duration = Duration::from_millis(1);

fn cfg(alg: Algorithm) -> Config {
    Config {
        congestion: alg,
        ..Config::default()
    }
}

/// Runs until the transfer is read and both sides closed.
fn run(sim: &mut Sim, t: &mut Transfer, limit: Duration) -> bool {
    sim.run(limit, |s| {
        t.step(s);
        t.finished && s.b.is_closed()
    })
}

/// 100 Mbit/s (12.5 MB/s), 15 ms one way (RTT 30 ms, BDP 375 kB), a queue of one BDP, `loss`
/// on both directions.
fn path(loss: f64) -> LinkConfig {
    LinkConfig {
        delay: 15 * MS,
        rate: Some(12_500_000),
        queue: 375_000,
        loss,
        ..LinkConfig::default()
    }
}

/// Goodput of a `total`-byte transfer over `path(loss)`, bytes per second.
fn goodput(alg: Algorithm, loss: f64, total: u64, seed: u64) -> f64 {
    goodput_over(&cfg(alg), &|_| path(loss), total, seed).rate
}

/// What one bulk transfer measured.
#[derive(Debug)]
struct Outcome {
    /// Goodput from the first data segment to the last byte read, bytes per second.
    rate: f64,
    /// The same as a fraction of the bottleneck rate.
    share: f64,
    /// Retransmitted data segments.
    retransmits: u64,
    /// Packets the bottleneck queue dropped (not random loss).
    queue_drops: u64,
    /// Packets A sent that the link lost, randomly or at the queue.
    dropped: u64,
}

/// A `total`-byte transfer from A to B over `link(Side::A)` (A to B) and `link(Side::B)`.
fn goodput_over(cfg: &Config, link: &dyn Fn(Side) -> LinkConfig, total: u64, seed: u64) -> Outcome {
    let (l, bottleneck) = (link(Side::A), link(Side::A).rate.unwrap_or(u64::MAX) as f64);
    let alg = cfg.congestion;
    let mut sim = Sim::ours(cfg, link(Side::A), link(Side::B), seed);
    let mut t = Transfer::new(total);
    assert!(run(&mut sim, &mut t, Duration::from_secs(600)), "{alg:?}");
    let s = sim.a.conn().expect("ours").stats();
    // From the first data segment (a lost SYN costs a 1 s timeout that is not the point here).
    let start = sim.trace.data_sent(Side::A).next().expect("data").at;
    let done = t.done_at.expect("read everything") - start;
    let rate = total as f64 / done.as_secs_f64();
    let queue_drops = sim.link_stats(Side::A).queue_drops;
    eprintln!(
        "{alg:?}, {:?} one way, {:.0} Mbit/s, queue {} B, {:.1} % loss, seed {seed}: {total} \
         bytes in {done:?} = {:.1} % of the bottleneck; retransmits {} (D-SACKed {}), queue \
         drops {queue_drops}, RTOs {}, recoveries {}, max cwnd {}",
        l.delay,
        bottleneck * 8e-6,
        l.queue,
        l.loss * 100.0,
        rate / bottleneck * 100.0,
        s.retransmits,
        s.dsacks,
        s.rtos,
        s.recoveries,
        s.max_cwnd
    );
    Outcome {
        rate,
        share: rate / bottleneck,
        retransmits: s.retransmits,
        queue_drops,
        dropped: queue_drops + sim.link_stats(Side::A).lost,
    }
}

#[test]
fn bbr_keeps_the_bottleneck_busy_through_one_percent_random_loss_where_cubic_does_not() {
    // 16 MiB: about 1.3 s at the bottleneck rate.
    let total = 16 << 20;
    for seed in [1, 2] {
        let bbr = goodput(Algorithm::Bbr, 0.01, total, seed);
        let cubic = goodput(Algorithm::Cubic, 0.01, total, seed);
        // Handshake and startup included: 70 % of the bottleneck end to end.
        assert!(bbr >= 0.70 * 12.5e6, "bbr: {bbr} B/s");
        assert!(cubic < 0.40 * 12.5e6, "cubic: {cubic} B/s");
    }
    // And without loss it is not worse than CUBIC.
    let bbr = goodput(Algorithm::Bbr, 0.0, total, 3);
    let cubic = goodput(Algorithm::Cubic, 0.0, total, 3);
    assert!(bbr >= 0.95 * cubic, "loss-free: bbr {bbr} vs cubic {cubic}");
}

/// Largest number of data segments A sent at one instant after `from`.
fn max_burst_after(sim: &Sim, from: Duration) -> usize {
    let mut best = 0;
    let mut run = (Duration::MAX, 0);
    for e in sim.trace.data_sent(Side::A).filter(|e| e.at >= from) {
        if e.at == run.0 {
            run.1 += 1;
        } else {
            run = (e.at, 1);
        }
        best = best.max(run.1);
    }
    best
}

/// A writes 2 MiB, everything is acknowledged, it stays quiet 200 ms, then writes 4 MiB more:
/// the window the first part opened goes out at once unless something spreads it.
fn burst_after_idle(alg: Algorithm) -> (usize, Duration) {
    let mut sim = Sim::ours(&cfg(alg), path(0.0), path(0.0), 4);
    let mut t = Transfer::new(6 << 20);
    t.keep_open = true;
    let first = 2 << 20;
    let mut t1 = Transfer {
        total: first,
        keep_open: true,
        ..Transfer::default()
    };
    assert!(sim.run(Duration::from_secs(60), |s| {
        t1.step(s);
        t1.read == first && s.a.conn().is_some_and(|c| c.in_flight() == 0)
    }));
    assert_eq!(
        sim.a.next_timeout(sim.now),
        None,
        "nothing to do while quiet"
    );
    sim.now += 200 * MS;
    let quiet = sim.elapsed();
    t.written = first;
    t.read = first;
    assert!(sim.run(Duration::from_secs(60), |s| {
        t.step(s);
        t.read == t.total
    }));
    (max_burst_after(&sim, quiet), sim.elapsed() - quiet)
}

#[test]
fn the_pacer_spreads_a_window_instead_of_sending_it_at_once() {
    let (bbr, bbr_time) = burst_after_idle(Algorithm::Bbr);
    let (cubic, cubic_time) = burst_after_idle(Algorithm::Cubic);
    eprintln!(
        "largest burst after idle: bbr {bbr} in {bbr_time:?}, cubic {cubic} in {cubic_time:?}"
    );
    // One quantum is 1 ms at the pacing rate: at most startup's 2.89 × 12.5 MB/s = 36 kB, 28
    // segments of 1268 bytes, and the one that crosses it. CUBIC sends its whole window.
    assert!(bbr <= 29, "bbr sent {bbr} segments at once");
    assert!(
        cubic > 100,
        "cubic sent at most {cubic} at once: the scenario has no burst"
    );
}

#[test]
fn bbr_keeps_the_bottleneck_queue_near_one_bdp_where_cubic_fills_it() {
    // A deep buffer (4 MiB, eleven BDPs) behind the same 100 Mbit/s, 30 ms path.
    let deep = || LinkConfig {
        queue: 4 << 20,
        ..path(0.0)
    };
    let bdp = 375_000usize;
    let steady = |alg| {
        let mut sim = Sim::ours(&cfg(alg), deep(), deep(), 5);
        sim.tracing = false;
        let mut t = Transfer::new(40 << 20);
        // Startup and its drain are over by then.
        assert!(!sim.run(Duration::from_secs(1), |s| {
            t.step(s);
            false
        }));
        sim.reset_link_stats(Side::A);
        assert!(run(&mut sim, &mut t, Duration::from_secs(60)));
        let q = sim.link_stats(Side::A).max_backlog;
        eprintln!(
            "{alg:?}: largest bottleneck queue after 1 s {q} bytes (BDP {bdp}), done at {:?}",
            t.done_at
        );
        q
    };
    let bbr = steady(Algorithm::Bbr);
    let cubic = steady(Algorithm::Cubic);
    assert!(bbr <= bdp + bdp / 4, "bbr queued {bbr}");
    assert!(cubic > 2 * bdp, "cubic queued only {cubic}");
}

/// 10 MiB over 15 ms one way, 1 Gbit/s, a 4 MiB queue and 0.1 % loss both ways.
fn ten_mib_at_a_tenth_of_a_percent(alg: Algorithm, seed: u64) -> Duration {
    let link = || LinkConfig {
        delay: 15 * MS,
        rate: Some(125_000_000),
        queue: 4 << 20,
        loss: 0.001,
        ..LinkConfig::default()
    };
    let mut sim = Sim::ours(&cfg(alg), link(), link(), seed);
    sim.tracing = false;
    let mut t = Transfer::new(10 << 20);
    assert!(run(&mut sim, &mut t, Duration::from_secs(600)));
    let s = sim.a.conn().expect("ours").stats();
    let done = t.done_at.expect("read");
    eprintln!(
        "{alg:?} seed {seed}: {done:?}; retransmits {}, RTOs {}, recoveries {}, max cwnd {}",
        s.retransmits, s.rtos, s.recoveries, s.max_cwnd
    );
    done
}

#[test]
fn one_lost_segment_early_in_slow_start_costs_cubic_seconds_and_bbr_nothing() {
    // Why 0.1 % loss was so variable (issue 19): CUBIC's first loss cuts the window to 0.7 of
    // what slow start had reached; when that was early (100-300 kB on a 3.75 MB BDP), CUBIC
    // needs seconds to grow back (K = cbrt(0.3 W_max / C)), and the transfer time depends on
    // where the first drop fell. No RTO and no spurious retransmission is involved. The model
    // does not shrink for a random loss, so its time does not depend on the seed.
    let seeds = [2, 4, 5, 6];
    let bbr: Vec<Duration> = seeds
        .iter()
        .map(|&s| ten_mib_at_a_tenth_of_a_percent(Algorithm::Bbr, s))
        .collect();
    let cubic: Vec<Duration> = seeds
        .iter()
        .map(|&s| ten_mib_at_a_tenth_of_a_percent(Algorithm::Cubic, s))
        .collect();
    let (bbr_best, bbr_worst) = (bbr.iter().min(), bbr.iter().max());
    let cubic_worst = cubic.iter().max().copied().unwrap_or_default();
    let (Some(&best), Some(&worst)) = (bbr_best, bbr_worst) else {
        panic!("no runs");
    };
    assert!(worst < best * 3 / 2, "bbr varies: {bbr:?}");
    assert!(cubic_worst > worst * 4, "cubic {cubic:?} vs bbr {bbr:?}");
}

/// 400 Mbit/s (50 MB/s), 15 ms one way: a BDP of 1.5 MB, about 1180 of our 1268-byte segments.
const FAT_RATE: u64 = 50_000_000;
const FAT_BDP: usize = 1_500_000;

/// The long fat path: `queue` bytes of bottleneck queue, `loss` on both directions.
fn fat_path(queue: usize, loss: f64) -> LinkConfig {
    LinkConfig {
        delay: 15 * MS,
        rate: Some(FAT_RATE),
        queue,
        loss,
        ..LinkConfig::default()
    }
}

/// BBR with buffers that do not limit a 1.5 MB BDP: the receiver announces 16 MiB from the
/// start, as a Linux receiver with a large `tcp_rmem` does (our receive autotuning grows with
/// what the application reads per round trip, which random loss holds back; that is the
/// receiver's subject, not the sender's), and the send buffer may grow as far.
fn fat_cfg() -> Config {
    Config {
        congestion: Algorithm::Bbr,
        rx_buffer: 16 << 20,
        rx_buffer_max: 16 << 20,
        tx_buffer_max: 16 << 20,
        ..Config::default()
    }
}

#[test]
fn bbr_startup_ends_promptly_when_it_overflows_a_shallow_queue() {
    // A queue of a quarter BDP and no random loss: Startup's flight (up to 2.89 BDPs) overflows
    // it. The round that overflowed loses far more than 2 % and must end Startup; its drops,
    // about one round's excess over BDP + queue (1-2 BDPs), are what the overshoot may cost.
    // Startup going on for the three rounds of the bandwidth plateau (BBRv1) or, as before,
    // while its round counter waits for the holes to be repaired, drops several BDPs.
    let o = goodput_over(&fat_cfg(), &|_| fat_path(FAT_BDP / 4, 0.0), 16 << 20, 1);
    let bdp_segments = (FAT_BDP / 1268) as u64;
    assert!(
        o.queue_drops <= 3 * bdp_segments,
        "Startup overflowed the queue by {} segments ({:.1} BDP); {o:?}",
        o.queue_drops,
        o.queue_drops as f64 / bdp_segments as f64
    );
    // Every drop costs a retransmission, and one lost again a second: seconds of retransmitting
    // would be many more.
    assert!(o.retransmits <= 4 * bdp_segments, "{o:?}");
    // Drop-tail behind a 2.89x pacing rate drops about every other segment of the overflowing
    // round: the receiver holds a stretch between each two drops, or the segments it refuses
    // are sent again although they arrived.
    assert!(
        o.retransmits <= o.dropped * 5 / 4,
        "{} retransmissions for {} drops; {o:?}",
        o.retransmits,
        o.dropped
    );
}

#[test]
fn the_receiver_keeps_every_segment_that_arrives_through_three_percent_loss() {
    // 3 % loss both ways over a 1.5 MB BDP: a flight of 2-3 BDPs holds about a hundred holes
    // at the receiver. Each segment the link dropped is sent again (once more if the repair is
    // lost too, rarely because of a lost ACK); many more retransmissions mean segments the
    // receiver got but did not keep, each costing the bottleneck twice. The queue (four BDPs)
    // holds all of Startup's flight: only random loss here (the overflow's own holes are
    // `bbr_startup_ends_promptly_when_it_overflows_a_shallow_queue`'s).
    for seed in [1, 2] {
        let o = goodput_over(&fat_cfg(), &|_| fat_path(4 * FAT_BDP, 0.03), 32 << 20, seed);
        assert!(
            o.retransmits <= o.dropped * 5 / 4,
            "seed {seed}: {} retransmissions for {} drops ({:.0} % of the bottleneck); {o:?}",
            o.retransmits,
            o.dropped,
            o.share * 100.0
        );
    }
}

#[test]
fn bbr_keeps_a_long_fat_path_busy_through_three_percent_random_loss() {
    // Linux's BBR (v1, what `perf/wan.sh` compares with) has no loss exit from Startup and
    // does not shrink its model for random loss: on this path 3 % loss costs it about 3 % of
    // the rate plus the repairs (the BBR paper's goodput stays near the link rate up to ~15 %
    // random loss). So a transfer with 3 % loss both ways must come close to the same
    // transfer without loss — Startup included, which is a third of this one. Before: Startup
    // ended after its first round with more than 2 % loss, at a fifth to a half of the BDP,
    // and ProbeBw's 1.25x per cycle had not made that up by the end (seed 1: 52 % of the
    // bottleneck against 69 % without loss).
    let total = 32 << 20;
    let clean = goodput_over(&fat_cfg(), &|_| fat_path(FAT_BDP, 0.0), total, 1);
    for seed in [1, 2, 3] {
        let lossy = goodput_over(&fat_cfg(), &|_| fat_path(FAT_BDP, 0.03), total, seed);
        assert!(
            lossy.share >= 0.85 * clean.share,
            "seed {seed}: {:.0} % of the bottleneck with 3 % loss, {:.0} % without; {lossy:?}",
            lossy.share * 100.0,
            clean.share * 100.0
        );
    }
}

/// A LAN to a busy receiver: 25 µs one way, 1 Gbit/s, and the receiving host handles what
/// arrived only when it wakes up, at random intervals of 0–1 ms (as a CPU-bound host, GRO and
/// wireguard-go's batches do), so ACKs come in clumps and the smallest RTT sample (a segment
/// that arrived just before a wake-up, about 50 µs) is far below the RTT a full pipe needs.
fn clumped_lan(from: Side) -> LinkConfig {
    LinkConfig {
        delay: Duration::from_micros(25),
        rate: Some(125_000_000),
        queue: 4 << 20,
        batch: if from == Side::A {
            Duration::from_micros(500)
        } else {
            Duration::ZERO
        },
        ..LinkConfig::default()
    }
}

#[test]
fn bbr_fills_a_fast_path_whose_acks_come_in_clumps_as_cubic_does() {
    // The LAN bulk gap of issue 19 (bbr 30 % below cubic on the veth): a window of two BDPs
    // at the minimum RTT lets only a sliver out per clump of ACKs (before: 18 % of the link
    // against cubic's 72 %).
    let clumped = |alg| goodput_over(&cfg(alg), &clumped_lan, 64 << 20, 7).rate;
    let bbr = clumped(Algorithm::Bbr);
    let cubic = clumped(Algorithm::Cubic);
    assert!(cubic >= 0.6 * 125e6, "the scenario: cubic {cubic} B/s");
    assert!(
        bbr >= 0.95 * cubic,
        "bbr {bbr} B/s against cubic {cubic} B/s"
    );
}

#[test]
fn the_pacer_wakes_a_connection_per_burst_not_per_segment() {
    // 100 Mbit/s: a quantum is 1 ms at the rate, 12.5 kB, about ten segments. A connection the
    // pacer holds back costs its runtime a timer wake-up each time it is released: one per
    // segment (the CPU cost that held bbr 20 % below cubic on the loss-free LAN) or one per
    // half quantum.
    let mut sim = Sim::ours(&cfg(Algorithm::Bbr), path(0.0), path(0.0), 11);
    sim.tracing = false;
    let total = 32 << 20;
    let mut t = Transfer::new(total);
    assert!(run(&mut sim, &mut t, Duration::from_secs(60)));
    let segments = sim.a.conn().expect("ours").stats().segments_out;
    let per_wake = segments as f64 / sim.a_timer_wakes.max(1) as f64;
    eprintln!(
        "{segments} segments, {} timer wake-ups: {per_wake:.1} segments each",
        sim.a_timer_wakes
    );
    assert!(per_wake >= 4.0, "{per_wake:.2} segments per timer wake-up");
}

#[test]
fn receive_autotuning_keeps_up_with_a_sender_through_three_percent_loss() {
    // The receiver's buffer grows with what the application reads in order per round trip;
    // under random loss a hole holds that back for a repair's round trip while the sender
    // goes on sending, so a window sized from the reads alone stalls the sender. The same
    // transfer with the largest window announced from the start is the yardstick.
    let autotuned = Config::default();
    let fixed = Config {
        rx_buffer: autotuned.rx_buffer_max,
        ..Config::default()
    };
    for seed in [1, 2] {
        let tuned = goodput_over(&autotuned, &|_| fat_path(FAT_BDP, 0.03), 32 << 20, seed);
        let best = goodput_over(&fixed, &|_| fat_path(FAT_BDP, 0.03), 32 << 20, seed);
        assert!(
            tuned.share >= 0.9 * best.share,
            "seed {seed}: {:.0} % of the bottleneck autotuned, {:.0} % with a fixed window",
            tuned.share * 100.0,
            best.share * 100.0
        );
    }
}
