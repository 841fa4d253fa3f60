//! The drain signal of one shard: set once on SIGTERM; idle keep-alive connections waiting for
//! their next request wake up and close, busy ones finish their exchange first.
//!
//! Single-threaded. Each connection owns one slot (claimed at start, released at the end), so
//! registering a waker is O(1) and the slot table never outgrows the open connections.

use std::cell::{Cell, RefCell};
use std::future::Future;
use std::task::{Poll, Waker};

/// A one-shot latch with one waker slot per connection.
#[derive(Debug, Default)]
pub struct Drain {
    set: Cell<bool>,
    slots: RefCell<Vec<Option<Waker>>>,
    free: RefCell<Vec<usize>>,
}

impl Drain {
    /// Whether draining has begun.
    pub fn is_set(&self) -> bool {
        self.set.get()
    }

    /// Begins draining: wakes every waiting connection.
    pub fn set(&self) {
        self.set.set(true);
        let wakers: Vec<Waker> = self
            .slots
            .borrow_mut()
            .iter_mut()
            .filter_map(Option::take)
            .collect();
        for w in wakers {
            w.wake();
        }
    }

    /// A slot for one connection; give it back with [`Drain::release`].
    pub fn claim(&self) -> usize {
        if let Some(i) = self.free.borrow_mut().pop() {
            return i;
        }
        let mut slots = self.slots.borrow_mut();
        slots.push(None);
        slots.len() - 1
    }

    /// Gives a slot back.
    pub fn release(&self, slot: usize) {
        if let Some(s) = self.slots.borrow_mut().get_mut(slot) {
            *s = None;
        }
        self.free.borrow_mut().push(slot);
    }

    /// Resolves once draining has begun.
    pub fn wait(&self, slot: usize) -> impl Future<Output = ()> + '_ {
        futures_lite::future::poll_fn(move |cx| {
            if self.set.get() {
                return Poll::Ready(());
            }
            if let Some(s) = self.slots.borrow_mut().get_mut(slot) {
                match s {
                    Some(w) if w.will_wake(cx.waker()) => {}
                    _ => *s = Some(cx.waker().clone()),
                }
            }
            Poll::Pending
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_are_reused_and_set_releases_waiters() {
        let d = Drain::default();
        let a = d.claim();
        let b = d.claim();
        d.release(a);
        assert_eq!(d.claim(), a, "slot reused");
        let mut fut = Box::pin(d.wait(b));
        let waker = futures_lite::future::block_on(futures_lite::future::poll_fn(|cx| {
            Poll::Ready(cx.waker().clone())
        }));
        let mut cx = std::task::Context::from_waker(&waker);
        assert!(fut.as_mut().poll(&mut cx).is_pending());
        d.set();
        assert!(fut.as_mut().poll(&mut cx).is_ready());
        assert!(d.is_set());
    }
}
