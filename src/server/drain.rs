//! The drain signal of one shard: set once on SIGTERM; idle keep-alive connections waiting for
//! their next request wake up and close, busy ones finish their exchange first.
//!
//! Single-threaded. Each connection owns one slot (claimed at start, released at the end), so
//! registering a waker is O(1) and the slot table never outgrows the open connections; when the
//! last connection releases its slot the table is freed, so a burst does not leave it at its
//! peak size.

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
        let mut slots = self.slots.borrow_mut();
        let mut free = self.free.borrow_mut();
        if let Some(s) = slots.get_mut(slot) {
            *s = None;
        }
        free.push(slot);
        if free.len() == slots.len() {
            // No connection left: start again from nothing rather than keep the peak's table.
            *slots = Vec::new();
            *free = Vec::new();
        }
    }

    /// Slots the table has room for (open connections at most, 0 with none).
    pub fn capacity(&self) -> usize {
        self.slots.borrow().capacity()
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

    #[test]
    fn the_table_is_freed_when_the_last_connection_leaves() {
        let d = Drain::default();
        let slots: Vec<usize> = (0..1000).map(|_| d.claim()).collect();
        assert!(d.capacity() >= 1000);
        for &s in &slots[1..] {
            d.release(s);
        }
        assert!(d.capacity() >= 1000, "one connection still open");
        d.release(slots[0]);
        assert_eq!(d.capacity(), 0);
        assert_eq!(d.claim(), 0, "a fresh table");
    }
}
