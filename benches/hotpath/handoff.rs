//! Moving [`PacketBuf`]s between executors over the runtime's links (`runtime::link`, reached
//! through `wgbroker::bench_support::link`), the way the tunnel core and a shard do it: the core
//! sends `Msg::Packet(buf)` and the shard sends the buffer back as `Msg::Home(buf)`, over two
//! bounded SPSC rings of the default `[runtime] channel_capacity` (1024).
//!
//! * `shared/*`: two executors on two threads (pinned to CPUs 0 and 1 when there are two),
//!   glommio `shared_channel`s, `spin_before_park` = 0 as configured by default: an idle
//!   receiver parks and has to be woken;
//! * `shared-spin/*`: the same with `spin_before_park` = 50 µs on both executors: a receiver
//!   that got a message less than 50 µs ago is still spinning and needs no wake-up;
//! * `local/*`: one executor (the one-CPU layout), `local_channel`s between two tasks.
//!
//! `pingpong` sends one packet and waits for its buffer to come home (latency of a round trip);
//! `batchN` sends N packets, then waits for all N buffers (throughput when packets arrive in
//! bursts, as a `recvmmsg` batch would deliver them). Times are per packet. The executors are
//! built per measurement (untimed); only the packet loop is timed.
//!
//! **Backstop.** With `spin_before_park` set, glommio 0.9 has been seen to lose a cross-executor
//! wake-up: both executors parked in `io_cqring_wait` with a packet in the ring, for good. The
//! likely mechanism, read in glommio 0.9.0's `executor/mod.rs`: `run_task_queues` returns
//! `false` ("nothing ran") when `need_preempt()` is already true before it runs a queue, e.g.
//! because the preemption timer armed by the previous `poll_io` fired while the thread was not
//! running; the caller takes that for "idle" and parks, the park consumes the timer's
//! completion (which wakes no task) and sleeps with a runnable queue. glommio/glommio PR #53
//! fixes it upstream; no release on crates.io has the fix yet. The broker's own loops have
//! timers (100 ms) that end such a stall, and any I/O completion ends it sooner; a benchmark
//! has none and would hang. So a pending receive is also re-polled every [`BACKSTOP`], and two
//! things are reported on stderr: *rescues*, receives that had waited at least [`RESCUE_AFTER`]
//! and completed on such a re-poll (on an idle machine: the message sat in the ring and no
//! wake-up came), and *stalls*, batches that took longer than half a backstop. On a busy
//! machine both also count threads the kernel did not run for that long (stalls happen in
//! `local/*` too), so read them on an idle one.

use std::cell::{Cell, RefCell};
use std::future::poll_fn;
use std::pin::pin;
use std::rc::Rc;
use std::task::{Poll, Waker};
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, Throughput};
use futures_lite::future;
use glommio::{LocalExecutorBuilder, Placement};
use wgbroker::bench_support::link::{self, Msg, Rx, Tx};
use wgbroker::packet::BufPool;

/// `[runtime] channel_capacity` default.
const CAPACITY: usize = 1024;
/// Packets sent before waiting for their buffers; 1 is a ping-pong.
const BATCHES: [usize; 3] = [1, 16, 256];
/// Buffer capacity: the MTU plus WireGuard's overhead, as the tunnel core's pool.
const BUF: usize = 1420 + 32;
/// Bytes of the packet each buffer carries (does not matter: nothing is copied).
const PACKET: usize = 600;
/// How often a pending receive is re-polled regardless of wake-ups (see the module docs).
const BACKSTOP: Duration = Duration::from_millis(10);
/// A receive the backstop completed after it waited this long counts as a rescue: a whole tick
/// went by with the message in the ring. (Shorter waits are ambiguous on a busy machine: a
/// thread the kernel did not run for a while wakes to its timer and its message at once.)
const RESCUE_AFTER: Duration = BACKSTOP;

/// The waker of the receive in progress, for the backstop ticker.
#[derive(Default)]
struct Kick {
    waker: RefCell<Option<Waker>>,
    /// The ticker woke the receive since its last poll.
    kicked: Cell<bool>,
    /// Receives pending for [`RESCUE_AFTER`] or more that completed on a poll the ticker asked
    /// for.
    rescues: Cell<u64>,
}

/// Wakes the pending receive every [`BACKSTOP`]; runs until its task is dropped.
async fn ticker(kick: Rc<Kick>) {
    loop {
        glommio::timer::sleep(BACKSTOP).await;
        if let Some(w) = kick.waker.borrow_mut().take() {
            kick.kicked.set(true);
            w.wake();
        }
    }
}

/// `rx.recv()`, also re-polled whenever the ticker of `kick` (if any) fires.
async fn recv(rx: &Rx, kick: Option<&Kick>) -> Option<Msg> {
    let Some(kick) = kick else {
        return rx.recv().await;
    };
    let mut next = pin!(rx.recv());
    let mut pending_since: Option<Instant> = None;
    poll_fn(|cx| {
        let kicked = kick.kicked.replace(false);
        match next.as_mut().poll(cx) {
            Poll::Ready(m) => {
                if kicked && pending_since.is_some_and(|t| t.elapsed() >= RESCUE_AFTER) {
                    kick.rescues.set(kick.rescues.get() + 1);
                }
                Poll::Ready(m)
            }
            Poll::Pending => {
                pending_since.get_or_insert_with(Instant::now);
                *kick.waker.borrow_mut() = Some(cx.waker().clone());
                Poll::Pending
            }
        }
    })
    .await
}

fn batch_name(batch: usize) -> String {
    if batch == 1 {
        "pingpong".to_owned()
    } else {
        format!("batch{batch}")
    }
}

fn executor(name: &str, cpu: usize, spin: Duration) -> LocalExecutorBuilder {
    let two_cpus = std::thread::available_parallelism().is_ok_and(|n| n.get() >= 2);
    let placement = if two_cpus {
        Placement::Fixed(cpu)
    } else {
        Placement::Unbound
    };
    // The runtime's `[runtime]` defaults, with the spin under test.
    LocalExecutorBuilder::new(placement)
        .name(name)
        .ring_depth(128)
        .io_memory(256 << 10)
        .spin_before_park(spin)
}

/// What one measurement saw.
struct Run {
    elapsed: Duration,
    /// Batches that took longer than half a [`BACKSTOP`].
    stalls: u64,
    /// Receives (on both sides) that only the backstop completed.
    rescues: u64,
}

/// The tunnel core's side: sends `iters` packets in batches of `batch` and waits for each
/// batch's buffers to come home.
async fn drive(tx: &Tx, rx: &Rx, kick: Option<&Kick>, iters: u64, batch: usize) -> Run {
    let mut pool = BufPool::new(BUF, 4096);
    // Warm the pool: a batch never allocates.
    let warm: Vec<_> = (0..batch).map(|_| pool.take()).collect();
    warm.into_iter().for_each(|b| pool.give(b));

    let mut stalls = 0;
    let start = Instant::now();
    let mut left = iters;
    while left > 0 {
        let k = left.min(batch as u64);
        let sent = Instant::now();
        for _ in 0..k {
            let mut p = pool.take();
            p.set_len(PACKET);
            assert!(tx.send(Msg::Packet(p)).await, "the shard is gone");
        }
        for _ in 0..k {
            match recv(rx, kick).await {
                Some(Msg::Home(b)) => pool.give(b),
                other => panic!("expected a buffer coming home, got {other:?}"),
            }
        }
        if sent.elapsed() > BACKSTOP / 2 {
            stalls += 1;
        }
        left -= k;
    }
    Run {
        elapsed: start.elapsed(),
        stalls,
        rescues: kick.map_or(0, |k| k.rescues.get()),
    }
}

/// The shard's side: every packet's buffer goes straight home; returns when the core's end
/// closes.
async fn echo(tx: Tx, rx: Rx, kick: Option<&Kick>) {
    while let Some(m) = recv(&rx, kick).await {
        if let Msg::Packet(p) = m {
            if !tx.send(Msg::Home(p)).await {
                return;
            }
        }
    }
}

/// Two executors, shared channels.
fn shared(iters: u64, batch: usize, spin: Duration) -> Run {
    let (to_shard, from_core) = link::shared(CAPACITY);
    let (to_core, from_shard) = link::shared(CAPACITY);
    let shard = executor("bench-shard", 1, spin)
        .spawn(move || async move {
            let (tx, rx) = future::zip(to_core.connect(), from_core.connect()).await;
            let kick = Rc::new(Kick::default());
            let _ticker = glommio::spawn_local(ticker(kick.clone()));
            echo(tx, rx, Some(&kick)).await;
            kick.rescues.get()
        })
        .expect("the shard executor starts");
    let core = executor("bench-core", 0, spin)
        .spawn(move || async move {
            let (tx, rx) = future::zip(to_shard.connect(), from_shard.connect()).await;
            let kick = Rc::new(Kick::default());
            let _ticker = glommio::spawn_local(ticker(kick.clone()));
            let run = drive(&tx, &rx, Some(&kick), iters, batch).await;
            drop(tx);
            run
        })
        .expect("the core executor starts");
    let mut run = core.join().expect("the core executor ran");
    run.rescues += shard.join().expect("the shard executor ran");
    run
}

/// One executor, local channels between two tasks (no cross-thread wake-ups: no backstop).
fn local(iters: u64, batch: usize) -> Run {
    executor("bench-combined", 0, Duration::ZERO)
        .spawn(move || async move {
            let (to_shard, from_core) = link::local(CAPACITY);
            let (to_core, from_shard) = link::local(CAPACITY);
            let shard = glommio::spawn_local(echo(to_core, from_core, None));
            let run = drive(&to_shard, &from_shard, None, iters, batch).await;
            drop(to_shard);
            shard.await;
            run
        })
        .expect("the executor starts")
        .join()
        .expect("the executor ran")
}

/// The time of one measurement, with its stalls reported.
fn timed(label: &str, run: Run) -> Duration {
    if run.stalls > 0 || run.rescues > 0 {
        eprintln!(
            "{label}: {} receive(s) waited >= {RESCUE_AFTER:?} and were completed by the \
             {BACKSTOP:?} backstop (lost wake-up, or descheduled), {} batch(es) took > {:?}",
            run.rescues,
            run.stalls,
            BACKSTOP / 2
        );
    }
    run.elapsed
}

pub fn benches(c: &mut Criterion) {
    let mut group = c.benchmark_group("handoff");
    group.throughput(Throughput::Elements(1));
    for batch in BATCHES {
        let name = batch_name(batch);
        let spin = Duration::from_micros(50);
        for (variant, spin) in [("shared", Duration::ZERO), ("shared-spin", spin)] {
            let label = format!("handoff/{variant}/{name}");
            group.bench_function(BenchmarkId::new(variant, &name), |b| {
                b.iter_custom(|iters| timed(&label, shared(iters, batch, spin)))
            });
        }
        let label = format!("handoff/local/{name}");
        group.bench_function(BenchmarkId::new("local", &name), |b| {
            b.iter_custom(|iters| timed(&label, local(iters, batch)))
        });
    }
    group.finish();
}
