//! A tunnel TCP connection as an async byte stream, for whichever executor owns the
//! [`StackSet`]: a broker shard (proxied requests, heartbeat, webhook deliveries) or the
//! gateway (front-door forwards, health checks).
//!
//! Reads and writes go straight to the set's connection buffers; a call that cannot make
//! progress registers the task's waker with the connection, which the set wakes on new data,
//! freed send buffer or a state change. Queued data goes out on the owner's next poll, which
//! the write already requested, so `poll_flush` has nothing to wait for.

use std::cell::RefCell;
use std::io;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll};

use futures_lite::{AsyncRead, AsyncWrite};

use crate::netstack::{ConnError, ConnId, StackSet};

/// The executor state a [`TunnelStream`] reaches its connection through.
pub(super) trait OwnsSet {
    fn set(&self) -> &RefCell<StackSet>;
}

/// What dropping a stream that was not closed does to its connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum OnDrop {
    /// FIN after what is queued (a broker's served connection ends in order).
    Close,
    /// RST (a gateway forward abandoned mid-exchange: the broker must not wait on it).
    Abort,
}

/// An async byte stream over netstack connection `id`.
pub(super) struct TunnelStream<O: OwnsSet> {
    owner: Rc<O>,
    id: ConnId,
    closed: bool,
    on_drop: OnDrop,
}

impl<O: OwnsSet> TunnelStream<O> {
    pub(super) fn new(owner: Rc<O>, id: ConnId, on_drop: OnDrop) -> Self {
        Self {
            owner,
            id,
            closed: false,
            on_drop,
        }
    }
}

impl<O: OwnsSet> TunnelStream<O> {
    /// The netstack connection.
    pub(super) fn id(&self) -> ConnId {
        self.id
    }

    /// Gives up the stream and leaves its connection as it is (open), for its owner to keep
    /// (the gateway's pool of idle connections) and to close itself.
    pub(super) fn into_id(mut self) -> ConnId {
        self.closed = true;
        self.id
    }
}

fn io_error(e: ConnError) -> io::Error {
    let kind = match e {
        ConnError::Gone => io::ErrorKind::ConnectionReset,
        ConnError::InvalidState => io::ErrorKind::BrokenPipe,
        ConnError::Finished => io::ErrorKind::UnexpectedEof,
    };
    io::Error::new(kind, e)
}

impl<O: OwnsSet> AsyncRead for TunnelStream<O> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        let mut set = self.owner.set().borrow_mut();
        match set.recv_slice(self.id, buf) {
            Ok(0) if !buf.is_empty() => {
                if !set.may_recv(self.id) {
                    return Poll::Ready(Ok(0));
                }
                match set.register_recv_waker(self.id, cx.waker()) {
                    Ok(()) => Poll::Pending,
                    Err(e) => Poll::Ready(Err(io_error(e))),
                }
            }
            Ok(n) => Poll::Ready(Ok(n)),
            Err(ConnError::Finished) => Poll::Ready(Ok(0)),
            Err(e) => Poll::Ready(Err(io_error(e))),
        }
    }
}

impl<O: OwnsSet> AsyncWrite for TunnelStream<O> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let mut set = self.owner.set().borrow_mut();
        match set.send_slice(self.id, data) {
            Ok(0) if !data.is_empty() => {
                if !set.may_send(self.id) {
                    return Poll::Ready(Err(io::ErrorKind::BrokenPipe.into()));
                }
                match set.register_send_waker(self.id, cx.waker()) {
                    Ok(()) => Poll::Pending,
                    Err(e) => Poll::Ready(Err(io_error(e))),
                }
            }
            Ok(n) => Poll::Ready(Ok(n)),
            Err(e) => Poll::Ready(Err(io_error(e))),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_close(mut self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        if !self.closed {
            self.closed = true;
            let _ = self.owner.set().borrow_mut().close(self.id);
        }
        Poll::Ready(Ok(()))
    }
}

impl<O: OwnsSet> Drop for TunnelStream<O> {
    fn drop(&mut self) {
        if self.closed {
            return;
        }
        let mut set = self.owner.set().borrow_mut();
        let _ = match self.on_drop {
            OnDrop::Close => set.close(self.id),
            OnDrop::Abort => set.abort(self.id),
        };
    }
}
