//! The gateway's connections through the tunnel: opening one to a broker (retried when
//! refused, bounded by `connect_timeout`, abandoned when the broker leaves rotation) and
//! [`TunnelConn`], the async byte stream over a netstack connection.

use super::*;

/// Opens a connection to broker `id` through the tunnel; fails when it is not established
/// within `connect_timeout` or, with `watch` (requests, not health checks, which decide
/// rotation), when the broker leaves rotation meanwhile.
pub(super) async fn open(gw: &Rc<Gw>, id: BrokerId, watch: bool) -> io::Result<TunnelConn> {
    let timeout = gw.config.gateway.connect_timeout;
    let attempts = async {
        // A refused SYN is retried at once from the next port: with a connection per request
        // the broker still holds recent ports of ours in TIME-WAIT and resets a SYN that lands
        // on one (about 1.6 % of connections at 6,000 req/s on loopback).
        let mut refused = 0;
        loop {
            match open_once(gw, id).await {
                Err(e)
                    if e.kind() == io::ErrorKind::ConnectionRefused
                        && refused < REFUSED_RETRIES =>
                {
                    refused += 1;
                }
                r => return r,
            }
        }
    };
    future::or(
        attempts,
        future::or(
            async {
                glommio::timer::sleep(timeout).await;
                Err(io::ErrorKind::TimedOut.into())
            },
            async {
                if watch {
                    left_rotation(gw, id).await;
                } else {
                    future::pending::<()>().await;
                }
                Err(io::Error::other("broker left rotation"))
            },
        ),
    )
    .await
}

/// How many refused connection attempts [`open`] retries at once.
const REFUSED_RETRIES: u32 = 8;

/// One connection attempt to broker `id`: until established or refused (no timeout here).
async fn open_once(gw: &Rc<Gw>, id: BrokerId) -> io::Result<TunnelConn> {
    let addr = gw.brokers[id.0].addr;
    let conn_id = gw
        .set
        .borrow_mut()
        .connect(addr)
        .map_err(|e| io::Error::other(e.to_string()))?;
    gw.kick();
    let conn = TunnelConn::new(gw.clone(), conn_id);
    future::poll_fn(|cx| {
        let mut set = gw.set.borrow_mut();
        match set.state(conn_id) {
            State::Established => Poll::Ready(Ok(())),
            State::SynSent | State::SynReceived => {
                match set.register_send_waker(conn_id, cx.waker()) {
                    Ok(()) => Poll::Pending,
                    Err(e) => Poll::Ready(Err(io::Error::other(e.to_string()))),
                }
            }
            other => Poll::Ready(Err(io::Error::new(
                io::ErrorKind::ConnectionRefused,
                format!("connection {other}"),
            ))),
        }
    })
    .await?;
    Ok(conn)
}

/// Resolves once broker `id` is out of rotation.
pub(super) async fn left_rotation(gw: &Gw, id: BrokerId) {
    while gw.bal.borrow().healthy(id) {
        glommio::timer::sleep(WATCH_INTERVAL).await;
    }
}

/// A tunnel TCP connection as an async byte stream (as `runtime::shard`'s).
pub(super) struct TunnelConn {
    gw: Rc<Gw>,
    id: ConnId,
    closed: bool,
}

impl TunnelConn {
    /// The stream over netstack connection `id` (opened by [`open`], or accepted by the
    /// heartbeat responder); dropped unfinished, it is reset.
    pub(super) fn new(gw: Rc<Gw>, id: ConnId) -> Self {
        Self {
            gw,
            id,
            closed: false,
        }
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

impl AsyncRead for TunnelConn {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        let mut set = self.gw.set.borrow_mut();
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

impl AsyncWrite for TunnelConn {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let mut set = self.gw.set.borrow_mut();
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
            let _ = self.gw.set.borrow_mut().close(self.id);
        }
        Poll::Ready(Ok(()))
    }
}

impl Drop for TunnelConn {
    fn drop(&mut self) {
        if !self.closed {
            // Dropped mid-exchange: a reset, so that the broker does not wait on it.
            let _ = self.gw.set.borrow_mut().abort(self.id);
        }
    }
}
