//! Virtual time for unit tests of code that races I/O against a [`Timer`]: a [`FakeClock`] is
//! the timer, and a scripted stream's [`Read::Pause`](super::script::Read::Pause) waits on it.
//!
//! Time stands still while anything can make progress and jumps to the next thing due when
//! nothing can, so a test says "the upstream answers 12 s later" and runs in no time. The jump
//! is made by a sleep that is polled and not due: in `future::or(read, sleep)` the read is
//! polled first, so a read that is ready never loses to a timer, and a read that waits on a
//! pause loses only to a sleep due before the pause ends (at the same instant, the read wins).
//! A pause must therefore be raced against a sleep of the same clock, or nothing moves time.

use std::cell::RefCell;
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll};
use std::time::Duration;

use crate::server::Timer;

/// A shared virtual clock; clones see the same time.
#[derive(Debug, Clone, Default)]
pub(crate) struct FakeClock(Rc<RefCell<Inner>>);

#[derive(Debug, Default)]
struct Inner {
    /// Time since the clock was made.
    now: Duration,
    /// When each pending sleep or pause is due, by its id.
    due: Vec<(u64, Duration)>,
    /// The next id.
    next: u64,
}

impl FakeClock {
    /// The time since the clock was made.
    pub fn now(&self) -> Duration {
        self.0.borrow().now
    }

    /// A wait that ends `d` after its first poll; `jumps`: it moves time on when polled early
    /// (a sleep does, a pause does not).
    pub fn wait(&self, d: Duration, jumps: bool) -> Wait {
        Wait {
            clock: self.clone(),
            d,
            jumps,
            entry: None,
        }
    }
}

impl Timer for FakeClock {
    fn sleep(&self, d: Duration) -> impl Future<Output = ()> {
        self.wait(d, true)
    }
}

/// A sleep or a pause of a [`FakeClock`]: due `d` after its first poll.
#[derive(Debug)]
pub(crate) struct Wait {
    clock: FakeClock,
    d: Duration,
    jumps: bool,
    /// Its id and due time, once polled.
    entry: Option<(u64, Duration)>,
}

impl Wait {
    /// Polls without a context: `true` once due (a pause in a scripted read uses this, and
    /// relies on the racing sleep to wake the task).
    pub fn due(&mut self) -> bool {
        let mut inner = self.clock.0.borrow_mut();
        let (id, at) = *self.entry.get_or_insert_with(|| {
            let entry = (inner.next, inner.now + self.d);
            inner.next += 1;
            inner.due.push(entry);
            entry
        });
        if inner.now < at && self.jumps {
            // Nothing else could move: time goes to whatever is due first.
            let first = inner.due.iter().map(|&(_, t)| t).min().unwrap_or(at);
            inner.now = inner.now.max(first);
        }
        if inner.now >= at {
            inner.due.retain(|&(i, _)| i != id);
            true
        } else {
            false
        }
    }
}

impl Future for Wait {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if self.due() {
            Poll::Ready(())
        } else {
            // Time moved to something else due first: let the task poll it.
            cx.waker().wake_by_ref();
            Poll::Pending
        }
    }
}

impl Drop for Wait {
    fn drop(&mut self) {
        if let Some((id, _)) = self.entry {
            self.clock.0.borrow_mut().due.retain(|&(i, _)| i != id);
        }
    }
}

#[cfg(test)]
mod tests {
    use futures_lite::future;

    use super::*;

    fn secs(s: u64) -> Duration {
        Duration::from_secs(s)
    }

    #[test]
    fn a_pause_shorter_than_the_sleep_it_races_wins_at_its_own_time() {
        let clock = FakeClock::default();
        let won = future::block_on(future::or(
            async {
                clock.wait(secs(3), false).await;
                "pause"
            },
            async {
                clock.sleep(secs(5)).await;
                "sleep"
            },
        ));
        assert_eq!((won, clock.now()), ("pause", secs(3)));
    }

    #[test]
    fn a_sleep_shorter_than_the_pause_wins_and_a_dropped_wait_no_longer_counts() {
        let clock = FakeClock::default();
        let won = future::block_on(future::or(
            async {
                clock.wait(secs(8), false).await;
                "pause"
            },
            async {
                clock.sleep(secs(5)).await;
                "sleep"
            },
        ));
        assert_eq!((won, clock.now()), ("sleep", secs(5)));
        // The pause was dropped unfinished: the next sleep is not stopped at its 8 s.
        future::block_on(clock.sleep(secs(10)));
        assert_eq!(clock.now(), secs(15));
    }
}
