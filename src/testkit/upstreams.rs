//! A fake upstream set for unit tests of the proxy: an [`Upstreams`] whose connections are
//! scripted [`Steps`] streams and whose connect failures are chosen by the test.
//!
//! Each `connect` or `connect_new` call takes the next scripted answer in order; the calls and
//! releases are recorded, so a test can tell "retried once on a new connection" from "answered
//! with a 502", and "handed back to the pool" from "dropped".

use std::cell::RefCell;
use std::collections::VecDeque;
use std::rc::Rc;

use super::script::{Read, Record, Steps};
use crate::upstream::{Pooled, Target, UpstreamError, Upstreams};

/// What the code under test asked of the upstream set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Call {
    /// [`Upstreams::connect`]: a pooled connection if any, else a new one.
    Connect(Target),
    /// [`Upstreams::connect_new`]: never a pooled one.
    ConnectNew(Target),
    /// [`Upstreams::release`]: the connection went back to the pool.
    Release(Target),
}

/// Scripted upstream connections, handed out in order.
#[derive(Debug, Default)]
pub(crate) struct FakeUpstreams {
    next: RefCell<VecDeque<Result<(Steps, u32), UpstreamError>>>,
    /// Every call, in order.
    pub calls: RefCell<Vec<Call>>,
}

impl FakeUpstreams {
    /// The next connection is a new one that reads `reads`; returns what it will record.
    pub fn fresh(&self, reads: impl IntoIterator<Item = Read>) -> Rc<RefCell<Record>> {
        self.push(Steps::new(reads), 0)
    }

    /// The next connection comes from the pool (it carried an exchange before) and reads `reads`.
    pub fn pooled(&self, reads: impl IntoIterator<Item = Read>) -> Rc<RefCell<Record>> {
        self.push(Steps::new(reads), 1)
    }

    /// The next connect attempt fails with `e`.
    pub fn fails(&self, e: UpstreamError) {
        self.next.borrow_mut().push_back(Err(e));
    }

    /// The next connection is a new one scripted as `s` (e.g. [`Steps::clocked`]).
    pub fn fresh_steps(&self, s: Steps) -> Rc<RefCell<Record>> {
        self.push(s, 0)
    }

    fn push(&self, s: Steps, exchanges: u32) -> Rc<RefCell<Record>> {
        let record = s.record();
        self.next.borrow_mut().push_back(Ok((s, exchanges)));
        record
    }

    /// The calls so far.
    pub fn calls(&self) -> Vec<Call> {
        self.calls.borrow().clone()
    }

    fn take(&self, target: &Target) -> Result<Pooled<Steps>, UpstreamError> {
        let next = self.next.borrow_mut().pop_front();
        match next {
            Some(Ok((s, exchanges))) => Ok(Pooled::new(s, target.clone(), exchanges)),
            Some(Err(e)) => Err(e),
            None => panic!("the test scripted no more upstream connections (to {target})"),
        }
    }
}

impl Upstreams for FakeUpstreams {
    type Conn = Steps;

    async fn connect(&self, target: &Target) -> Result<Pooled<Steps>, UpstreamError> {
        self.calls.borrow_mut().push(Call::Connect(target.clone()));
        self.take(target)
    }

    async fn connect_new(&self, target: &Target) -> Result<Pooled<Steps>, UpstreamError> {
        self.calls
            .borrow_mut()
            .push(Call::ConnectNew(target.clone()));
        self.take(target)
    }

    fn release(&self, target: &Target, _: Pooled<Steps>) {
        self.calls.borrow_mut().push(Call::Release(target.clone()));
    }
}
